import { sql } from "drizzle-orm";
import {
  index,
  integer,
  jsonb,
  pgSchema,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
} from "drizzle-orm/pg-core";

const instant = (name: string) => timestamp(name, { withTimezone: true, precision: 3, mode: "date" });

function sessionColumns() {
  return {
    /** Keyed hash of the session id (SHA-256, or HMAC-SHA-256 with `secrets`), base64url. The plain id is never stored. */
    key: text("key").primaryKey(),
    /** Random public identifier of the session, safe to show in a page or URL; stable for the session's life. */
    handle: text("handle").notNull(),
    /** Owner, found in the session data by the store's `userId` option. */
    userId: text("user_id"),
    /** The express-session data, cookie included. Emptied when the session ends. */
    data: jsonb("data").notNull(),
    /** Idle expiry: renewed by activity (rolling cookie, touch, `idleTimeout`). */
    expiresAt: instant("expires_at").notNull(),
    /** Absolute expiry: fixed at creation from `absoluteTimeout`, never renewed. Null when unset. */
    absoluteExpiresAt: instant("absolute_expires_at"),
    createdAt: instant("created_at").notNull().defaultNow(),
    lastSeenAt: instant("last_seen_at").notNull().defaultNow(),
    /** A name for the session shown in listings ("CLI token", "Work laptop"), from the store's `label` option. */
    label: text("label"),
    userAgent: text("user_agent"),
    ip: text("ip"),
    /** Set when the session ends (logout, revoked, expired, rotated) with `retainEnded`: the row is then a record kept for history (without it the row is deleted). */
    endedAt: instant("ended_at"),
    endReason: text("end_reason"),
    /** Incremented on every write; lets a save detect a concurrent change. */
    version: integer("version").notNull().default(1),
  };
}

function sessionIndexes(name: string) {
  return (t: { handle: any; userId: any; lastSeenAt: any; expiresAt: any; endedAt: any }) => [
    uniqueIndex(`${name}_handle_idx`).on(t.handle),
    index(`${name}_user_idx`).on(t.userId, t.lastSeenAt.desc()).where(sql`${t.userId} is not null`),
    index(`${name}_expires_idx`).on(t.expiresAt),
    index(`${name}_ended_idx`).on(t.endedAt).where(sql`${t.endedAt} is not null`),
  ];
}

/** Options of {@link createSessionTable}. */
export interface SessionTableOptions {
  /**
   * Postgres schema (namespace) that holds the table.
   * @default undefined (the connection's search_path, normally `public`)
   */
  schema?: string;
}

/**
 * Builds the sessions table under a custom name and/or Postgres schema. Import the result into
 * your own drizzle schema so drizzle-kit generates it, and pass it to `new SessionStore({ table })`.
 *
 * @example
 * export const authSessions = createSessionTable("auth_sessions", { schema: "auth" });
 */
export function createSessionTable(name: string, options: SessionTableOptions = {}) {
  if (typeof name !== "string" || name.length === 0) {
    throw new TypeError("connect-drizzle: createSessionTable needs a non-empty table name");
  }
  const table = options.schema
    ? pgSchema(options.schema).table(name, sessionColumns(), sessionIndexes(name))
    : pgTable(name, sessionColumns(), sessionIndexes(name));
  // pgSchema(...).table and pgTable differ only in the literal type of `schema`; one type serves both.
  return table as unknown as ReturnType<typeof pgTable<string, ReturnType<typeof sessionColumns>>>;
}

/** The sessions table of a {@link SessionStore}, as built by {@link createSessionTable}. */
export type SessionTable = ReturnType<typeof createSessionTable>;

/** The default table, `sessions`, created by the migrations in `drizzle/`. */
export const sessions: SessionTable = createSessionTable("sessions");
