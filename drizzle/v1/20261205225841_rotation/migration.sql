ALTER TABLE "sessions" DROP CONSTRAINT "sessions_end_reason_check";--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "previous_key" text;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "previous_key_until" timestamp (3) with time zone;--> statement-breakpoint
ALTER TABLE "sessions" ADD COLUMN "rotated_at" timestamp (3) with time zone;--> statement-breakpoint
CREATE UNIQUE INDEX "sessions_previous_key_idx" ON "sessions" USING btree ("previous_key") WHERE "sessions"."previous_key" is not null;--> statement-breakpoint
ALTER TABLE "sessions" ADD CONSTRAINT "sessions_end_reason_check" CHECK ("sessions"."end_reason" in ('logout', 'revoked', 'expired', 'rotated', 'evicted', 'reused', 'binding'));