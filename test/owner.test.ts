import { inspect } from "node:util";
import { getTableConfig } from "drizzle-orm/pg-core";
import { afterEach, describe, expect, it } from "vitest";
import { sql } from "drizzle-orm";
import { SessionStore, SessionStoreError, type SessionTable } from "../src/index.js";
import { databaseError } from "./support/internals.js";
import { drivers, sessionData, typedTable, type TestDb, useTestDb } from "./support/db.js";

const HOUR = 3_600_000;

/** Every way an app shows an error (its message, stack, a JSON log line, console.error) and its cause, none holding `value`. */
function expectWithout(error: any, value: string): void {
  for (const e of [error, error?.cause]) {
    if (e === undefined) continue;
    for (const text of [String(e.message), String(e.stack), JSON.stringify(e), inspect(e, { depth: 10 })]) expect(text).not.toContain(value);
  }
}

describe.each(drivers)("a user id that does not fit the user_id column on %s", (driver) => {
  let t: TestDb;
  const stores: SessionStore[] = [];
  useTestDb(driver, (db) => void (t = db));
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });

  const storeOn = (table: SessionTable, options: { maxSessionsPerUser?: number } = {}) => {
    const store = new SessionStore({ db: t.db, table, reaper: false, ...options });
    stores.push(store);
    return store;
  };
  const rows = async (table: SessionTable) => {
    const name = getTableConfig(table).name;
    return Number((await t.raw(`select count(*)::int as n from "${t.schema}"."${name}"`))[0].n);
  };

  /** A save of each owner, as a new session and as a loaded one that gains it, fails naming the type, never the value. */
  async function expectRefused(table: SessionTable, type: string, owners: string[]): Promise<void> {
    for (const store of [storeOn(table), storeOn(table, { maxSessionsPerUser: 2 })]) {
      for (const owner of owners) {
        const errors = [await store.set("new-session", sessionData(HOUR, { passport: { user: owner } })).catch((e) => e)];
        await store.set("anonymous", sessionData(HOUR, { views: 1 }));
        const loaded: any = await store.get("anonymous");
        loaded.passport = { user: owner };
        errors.push(await store.set("anonymous", loaded).catch((e) => e));
        for (const error of errors) {
          expect(error).toBeInstanceOf(SessionStoreError);
          expect(error.code).toBe("INVALID_USER_ID");
          expect(error.message).toMatch(new RegExp(`^connect-drizzle: the user id found by the \`userId\` option does not fit the column's type ${type}`));
          expect(error.message).toMatch(/userIdType/);
          expectWithout(error, owner);
        }
        expect(await store.get("new-session")).toBeNull();
        expect(((await store.get("anonymous")) as any).passport).toBeUndefined();
      }
    }
    expect(await rows(table)).toBe(1);
  }

  it("a save whose owner does not fit an integer user_id fails with INVALID_USER_ID, naming the problem and not the value", async () => {
    const table = await typedTable(t, "integer");
    await expectRefused(table, "integer", ["bob@example.com", "2147483648", "-2147483649", "7.5", "12abc"]);
    // What does fit is saved.
    const store = storeOn(table);
    await store.set("ok", sessionData(HOUR, { passport: { user: 7 } }));
    await store.set("ok-negative", sessionData(HOUR, { passport: { user: "-2147483648" } }));
    expect(await store.count({ userId: 7 })).toBe(1);
  });

  it("a save whose owner does not fit a bigint user_id fails with INVALID_USER_ID", async () => {
    const table = await typedTable(t, "bigint");
    await expectRefused(table, "bigint", ["9223372036854775808", "bob@example.com"]);
    await storeOn(table).set("ok", sessionData(HOUR, { passport: { user: "9223372036854775807" } }));
  });

  it("a save whose owner does not fit a uuid user_id fails with INVALID_USER_ID, naming the problem and not the value", async () => {
    const table = await typedTable(t, "uuid");
    await expectRefused(table, "uuid", ["not-a-uuid-at-all", "a0eebc99-9c0b-4ef8-bb6d", "a0eebc999c0b4ef8bb6d6bb9bd380a11"]);
    const store = storeOn(table);
    await store.set("ok", sessionData(HOUR, { passport: { user: "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11" } }));
    expect(await store.count({ userId: "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" })).toBe(1);
  });

  it("list, count, revoke, revokeUser and extend with a user id that does not fit the column fail with INVALID_USER_ID, without the value", async () => {
    const table = await typedTable(t, "integer");
    const store = storeOn(table);
    await store.set("ann", sessionData(HOUR, { passport: { user: 7 } }));
    const [record] = await store.list({ userId: 7 });
    const bad = "bob@example.com";
    const calls: Array<[string, () => Promise<unknown>]> = [
      ["list", () => store.list({ userId: bad })],
      ["count", () => store.count({ userId: bad, status: "all" })],
      ["revoke", () => store.revoke(record!.handle, { userId: bad })],
      ["revokeUser", () => store.revokeUser(bad)],
      ["extend", () => store.extend(record!.handle, new Date(Date.now() + HOUR), { userId: bad })],
    ];
    for (const [method, call] of calls) {
      const error: any = await call().catch((e) => e);
      expect(error, method).toBeInstanceOf(SessionStoreError);
      expect(error.code).toBe("INVALID_USER_ID");
      expect(error.message).toMatch(new RegExp(`^connect-drizzle: ${method} got a user id that does not fit the column's type integer`));
      expectWithout(error, bad);
    }
    // Nothing was changed; an id of the right type still works.
    expect(await store.count({ userId: "7" })).toBe(1);
  });

  it("a Postgres data error never carries the value it quotes, in the error or its cause; a value no column type takes is no session data problem", async () => {
    const refused: Array<[string, string, RegExp]> = [
      ["integer", "bob@example.com", /^connect-drizzle: probe failed: invalid input syntax for type integer.*\(22P02\)$/],
      ["integer", "99999999999", /is out of range for type integer \(22003\)$/],
      ["uuid", "not-a-uuid-at-all", /invalid input syntax for type uuid.*\(22P02\)$/],
      ["timestamptz", "secret-instant", /invalid input syntax for type timestamp with time zone.*\(22007\)$/],
    ];
    for (const [type, value, message] of refused) {
      const thrown = await t.db.execute(sql`select ${value}::text::${sql.raw(type)} as v`).catch((e) => e);
      const error = databaseError(thrown, "sessions", "probe");
      expect(error.code).toBe("DATABASE");
      expect(error.message).toMatch(message);
      expect(error.message).not.toMatch(/NUL|jsonb/);
      expectWithout(error, value);
    }
    // A unique violation's value is in its detail, which is never copied.
    await t.raw(`insert into $table (key, handle, data, expires_at) values ('secret-key-1', 'h1', '{}', now())`);
    const duplicate = await t.raw(`insert into $table (key, handle, data, expires_at) values ('secret-key-1', 'h2', '{}', now())`).catch((e) => e);
    const error = databaseError(duplicate, "sessions", "probe");
    expect(error.message).toMatch(/duplicate key value violates unique constraint .*\(23505\)/);
    expectWithout(error, "secret-key-1");
  });
});
