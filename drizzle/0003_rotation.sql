ALTER TABLE "sessions" DROP CONSTRAINT "sessions_end_reason_check";--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "previous_keys" jsonb;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "rotated_at" timestamp (3) with time zone;--> statement-breakpoint
CREATE INDEX "sessions_previous_keys_idx" ON "sessions" USING gin ("previous_keys") WITH (fastupdate=false) WHERE "sessions"."previous_keys" is not null;--> statement-breakpoint
ALTER TABLE "sessions" ADD CONSTRAINT "sessions_end_reason_check" CHECK ("sessions"."end_reason" in ('logout', 'revoked', 'expired', 'rotated', 'evicted', 'reused', 'binding'));