// Compiled by test/types.test.ts as an ESM consumer of the packed package (tsc --strict, skipLibCheck false).
import { PGlite } from "@electric-sql/pglite";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { drizzle } from "drizzle-orm/node-postgres";
import { bigserial, integer, pgTable, text, uuid, type PgColumn } from "drizzle-orm/pg-core";
import express from "express";
import type { Store } from "express-session";
import { expectTypeOf } from "expect-type";
import type pg from "pg";
import {
  createSessionTable,
  reap,
  sessionMiddleware,
  sessions,
  SessionStore,
  SessionStoreError,
  type IssuedToken,
  type ReapArgs,
  type ReapResult,
  type SessionQuery,
  type SessionRecord,
  type SessionStoreErrorCode,
  type SessionTable,
  type UserId,
} from "connect-drizzle";

// --- The default table's columns are typed (not `any`).
expectTypeOf(sessions.userId).toExtend<PgColumn>();
expectTypeOf(sessions.userId._.data).toEqualTypeOf<string>();
expectTypeOf(sessions.userId._.notNull).toEqualTypeOf<false>();
expectTypeOf<typeof sessions.$inferSelect.userId>().toEqualTypeOf<string | null>();
// @ts-expect-error a column the table does not have
sessions.doesNotExist;
expectTypeOf<typeof sessions.$inferSelect>().toEqualTypeOf<{
  key: string;
  handle: string;
  userId: string | null;
  data: unknown;
  expiresAt: Date;
  absoluteExpiresAt: Date | null;
  createdAt: Date;
  lastSeenAt: Date;
  label: string | null;
  userAgent: string | null;
  ip: string | null;
  endedAt: Date | null;
  endReason: string | null;
  version: number;
  authenticatedAt: Date | null;
  previousKeys: unknown;
  rotatedAt: Date | null;
}>();
// Which columns an insert needs: the defaults (created_at, last_seen_at, version) and nullable ones are optional.
expectTypeOf<keyof typeof sessions.$inferInsert>().toEqualTypeOf<keyof typeof sessions.$inferSelect>();
expectTypeOf<typeof sessions.$inferInsert>().toExtend<{ key: string; handle: string; data: unknown; expiresAt: Date }>();
expectTypeOf<{ key: string; handle: string; data: unknown; expiresAt: Date }>().toExtend<typeof sessions.$inferInsert>();

// --- createSessionTable: the user id column's type, a reference to the app's users.
const users = pgTable("users", { id: integer("id").primaryKey(), email: text("email").notNull() });
const accounts = pgTable("accounts", { id: uuid("id").primaryKey().defaultRandom() });
const members = pgTable("members", { id: bigserial("id", { mode: "number" }).primaryKey() });
expectTypeOf(createSessionTable("auth_sessions", { schema: "auth" })).toEqualTypeOf<SessionTable<"text">>();
const byInteger = createSessionTable("sessions", { userIdType: "integer", references: () => users.id });
expectTypeOf(byInteger).toEqualTypeOf<SessionTable<"integer">>();
expectTypeOf<typeof byInteger.$inferSelect.userId>().toEqualTypeOf<number | null>();
const byUuid = createSessionTable("sessions", { userIdType: "uuid", references: () => accounts.id, onDelete: "cascade" });
expectTypeOf<typeof byUuid.$inferSelect.userId>().toEqualTypeOf<string | null>();
const byBigint = createSessionTable("sessions", { userIdType: "bigint", references: () => members.id, onDelete: "restrict" });
expectTypeOf<typeof byBigint.$inferSelect.userId>().toEqualTypeOf<number | null>();
// @ts-expect-error not a user id type
createSessionTable("sessions", { userIdType: "varchar" });
// @ts-expect-error not a foreign key action
createSessionTable("sessions", { references: () => users.id, onDelete: "drop" });
// @ts-expect-error a reference is a function returning the column, not the column
createSessionTable("sessions", { references: users.id });
// @ts-expect-error the table has no such column
byInteger.doesNotExist;

// --- SessionStore options.
declare const pool: pg.Pool;
const db = drizzle({ client: pool });
const store = new SessionStore({ db, table: byInteger, userId: (session) => (session as { userId?: number }).userId });
new SessionStore({ db: drizzlePglite({ client: new PGlite() }), table: byUuid, secrets: ["new", "old"], cache: { max: 100 }, reaper: false });
new SessionStore({ db, idleTimeout: 30 * 60_000, absoluteTimeout: 12 * 3_600_000, retainEnded: 86_400_000, versioned: true });
// @ts-expect-error `db` is required
new SessionStore({ table: sessions });
// @ts-expect-error a misspelt option
new SessionStore({ db, idelTimeout: 1_000 });
// @ts-expect-error a duration is a number of milliseconds
new SessionStore({ db, ttl: "1d" });
// @ts-expect-error not a drizzle table
new SessionStore({ db, table: "sessions" });
expectTypeOf(store).toExtend<Store>();

// --- The records API.
expectTypeOf(store.list).parameter(0).toEqualTypeOf<SessionQuery>();
expectTypeOf(store.list).returns.toEqualTypeOf<Promise<SessionRecord[]>>();
expectTypeOf(store.count).returns.toEqualTypeOf<Promise<number>>();
expectTypeOf<SessionQuery["userId"]>().toEqualTypeOf<UserId>();
expectTypeOf<UserId>().toEqualTypeOf<string | number | bigint>();
expectTypeOf(store.handleOf).toEqualTypeOf<(sessionId: string) => Promise<string | null>>();
expectTypeOf(store.revoke).returns.toEqualTypeOf<Promise<boolean>>();
expectTypeOf(store.revokeUser).parameter(0).toEqualTypeOf<UserId>();
expectTypeOf(store.revokeUser).returns.toEqualTypeOf<Promise<number>>();
expectTypeOf(store.extend).returns.toEqualTypeOf<Promise<boolean>>();
expectTypeOf<SessionRecord["userId"]>().toEqualTypeOf<string | null>();
expectTypeOf<SessionRecord["status"]>().toEqualTypeOf<"active" | "expired" | "ended">();
await store.list({ userId: 42, status: "all", current: "sid", limit: 10 });
await store.count({ userId: 42n, status: "ended" });
await store.revokeUser(42, { except: ["sid", "handle"], reason: "revoked" });
await store.revoke("handle", { userId: "u1", reason: "logout" });
await store.revoke("handle", { anyOwner: true });
await store.extend("handle", new Date(), { userId: 7, beyondAbsolute: true });
// @ts-expect-error revoke needs a scope
await store.revoke("handle");
// @ts-expect-error an owner scope needs a user id, not null
await store.revoke("handle", { userId: null });
// @ts-expect-error one scope or the other, not both
await store.revoke("handle", { userId: 1, anyOwner: true });
// @ts-expect-error not a status
await store.list({ userId: 1, status: "live" });
// @ts-expect-error not an end reason
await store.revokeUser(1, { reason: "banned" });
// @ts-expect-error `until` is a Date
await store.extend("handle", 60_000, { userId: 1 });

// --- Events: typed names and listener arguments.
store.on("reap", (result) => expectTypeOf(result).toEqualTypeOf<ReapResult>());
store.once("error", (error) => expectTypeOf(error).toEqualTypeOf<Error>());
store.on("disconnect", () => {});
const onReap = (result: ReapResult) => void result.deleted;
store.on("reap", onReap).off("reap", onReap);
expectTypeOf(store.on("connect", () => {})).toEqualTypeOf<SessionStore>();
// @ts-expect-error a misspelt event name
store.on("raep", () => {});
// @ts-expect-error a misspelt event name
store.once("eror", () => {});
// @ts-expect-error a misspelt event name
store.off("reaped", onReap);
// @ts-expect-error the listener's argument is a ReapResult, not a string
store.on("reap", (result: string) => void result);
// @ts-expect-error the reap event carries a ReapResult
store.emit("reap", "done");
expectTypeOf(store.emit("error", new Error("x"))).toEqualTypeOf<boolean>();

// --- reap, from a job.
expectTypeOf(reap).parameter(0).toEqualTypeOf<ReapArgs>();
expectTypeOf(reap).returns.toEqualTypeOf<Promise<ReapResult>>();
expectTypeOf(store.reap).returns.toEqualTypeOf<Promise<ReapResult>>();
const result = await reap({ db, table: byInteger, retainEnded: 0, batchSize: 1_000, timeout: 10_000 });
expectTypeOf(result.deleted).toEqualTypeOf<number>();
// @ts-expect-error reap needs the database
await reap({ table: sessions });

// --- sessionMiddleware.
const app = express();
const middleware = sessionMiddleware({ store, secret: "s", header: "authorization", headerRoutes: ["/api"], cookie: { maxAge: 60_000 } });
app.use(middleware);
expectTypeOf(middleware.store).toEqualTypeOf<SessionStore>();
expectTypeOf(middleware.issueToken).returns.toEqualTypeOf<Promise<IssuedToken>>();
expectTypeOf<IssuedToken>().toEqualTypeOf<{ token: string; handle: string; expiresAt: Date }>();
// @ts-expect-error the store is required
sessionMiddleware({ secret: "s" });

// --- Errors.
declare const error: unknown;
if (error instanceof SessionStoreError) expectTypeOf(error.code).toEqualTypeOf<SessionStoreErrorCode>();
