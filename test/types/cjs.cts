// Compiled by test/types.test.ts as a CommonJS consumer (a .cts file: `require` resolves index.d.cts).
import { drizzle } from "drizzle-orm/node-postgres";
import { integer, pgTable, type PgColumn } from "drizzle-orm/pg-core";
import { expectTypeOf } from "expect-type";
import pg = require("pg");
import { createSessionTable, reap, sessionMiddleware, sessions, SessionStore, type ReapResult, type SessionRecord, type SessionTable } from "connect-drizzle";

expectTypeOf(sessions.userId).toExtend<PgColumn>();
expectTypeOf<typeof sessions.$inferSelect.userId>().toEqualTypeOf<string | null>();
// @ts-expect-error a column the table does not have
sessions.doesNotExist;

const users = pgTable("users", { id: integer("id").primaryKey() });
const table = createSessionTable("sessions", { userIdType: "integer", references: () => users.id });
expectTypeOf(table).toEqualTypeOf<SessionTable<"integer">>();
expectTypeOf<typeof table.$inferSelect.userId>().toEqualTypeOf<number | null>();

declare const pool: pg.Pool;
const db = drizzle({ client: pool });
const store = new SessionStore({ db, table });
expectTypeOf(store.list({ userId: 1 })).toEqualTypeOf<Promise<SessionRecord[]>>();
expectTypeOf(store.revokeUser(1n)).toEqualTypeOf<Promise<number>>();
expectTypeOf(reap({ db, table })).toEqualTypeOf<Promise<ReapResult>>();
expectTypeOf(sessionMiddleware({ store, secret: "s" }).store).toEqualTypeOf<SessionStore>();
store.on("reap", (result) => expectTypeOf(result).toEqualTypeOf<ReapResult>());
// @ts-expect-error a misspelt event name
store.on("raep", () => {});
// @ts-expect-error a misspelt option
new SessionStore({ db, tabel: table });
