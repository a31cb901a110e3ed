import { randomUUID } from "node:crypto";
import { eq, sql } from "drizzle-orm";
import { bigint, getTableConfig, integer, pgSchema, text, uuid } from "drizzle-orm/pg-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createSessionTable, SessionStore, type UserIdType } from "../src/index.js";
import { drivers, drizzleMajor, openDb, sessionData, type TestDb } from "./support/db.js";

const HOUR = 3_600_000;

/**
 * What the app's drizzle-kit generates for a schema: drizzle-kit 0.31's `drizzle-kit/api` beside drizzle-orm
 * 0.x, drizzle-kit 1.0's `drizzle-kit/api-postgres` beside drizzle-orm 1.0 (0.31 refuses to run with 1.0).
 */
async function drizzleKitDdl(imports: Record<string, unknown>): Promise<string[]> {
  const api = drizzleMajor >= 1 ? "drizzle-kit/api-postgres" : "drizzle-kit/api";
  const kit: any = await import(/* @vite-ignore */ api);
  return kit.generateMigration(await kit.generateDrizzleJson({}), await kit.generateDrizzleJson(imports));
}

/** For each type of user id: the users table's id column, and two ids of that type. */
const userIds: Record<UserIdType, { column: () => any; ids: () => [string | number, string | number] }> = {
  text: { column: () => text("id").primaryKey(), ids: () => ["ann", "bob"] },
  integer: { column: () => integer("id").primaryKey(), ids: () => [7, 8] },
  bigint: { column: () => bigint("id", { mode: "number" }).primaryKey(), ids: () => [2 ** 40 + 1, 2 ** 40 + 2] },
  uuid: { column: () => uuid("id").primaryKey(), ids: () => [randomUUID(), randomUUID()] },
};

/** A users table and a sessions table whose user_id references it, in a Postgres schema of their own. */
function appSchema(schema: string, type: UserIdType) {
  const namespace = pgSchema(schema);
  const users = namespace.table("users", { id: userIds[type].column() });
  const sessions = createSessionTable("sessions", { schema, userIdType: type, references: () => users.id });
  return { namespace, users, sessions };
}

describe("createSessionTable with a user id type and a reference to the app's users", () => {
  it("defaults: user_id is text without a foreign key; a reference deletes on cascade unless onDelete says otherwise", () => {
    const users = pgSchema("app").table("users", { id: integer("id").primaryKey() });
    const plain = getTableConfig(createSessionTable("sessions"));
    expect(plain.columns.find((c) => c.name === "user_id")!.getSQLType()).toBe("text");
    expect(plain.foreignKeys).toEqual([]);
    const cascading = getTableConfig(createSessionTable("sessions", { userIdType: "integer", references: () => users.id }));
    expect(cascading.columns.find((c) => c.name === "user_id")!.getSQLType()).toBe("integer");
    expect(cascading.foreignKeys.map((fk) => fk.onDelete)).toEqual(["cascade"]);
    const restricting = getTableConfig(createSessionTable("sessions", { userIdType: "integer", references: () => users.id, onDelete: "restrict" }));
    expect(restricting.foreignKeys.map((fk) => fk.onDelete)).toEqual(["restrict"]);
  });

  it("rejects an unknown user id type and a reference that is not a function, saying what to pass", () => {
    expect(() => createSessionTable("sessions", { userIdType: "varchar" as any })).toThrow(
      /connect-drizzle: `userIdType` must be "text", "integer", "bigint" or "uuid" \(got a string\)/,
    );
    const users = pgSchema("app").table("users", { id: integer("id").primaryKey() });
    expect(() => createSessionTable("sessions", { userIdType: "integer", references: users.id as any })).toThrow(
      /connect-drizzle: `references` must be a function/,
    );
  });
});

describe("the read cache and a table the database deletes from itself", () => {
  it("refuses `cache` on a table whose user_id references users on delete cascade (those ends send no NOTIFY), and accepts set null", async () => {
    const t = await openDb("pglite");
    try {
      const users = pgSchema(t.schema).table("users", { id: integer("id").primaryKey() });
      const cascading = createSessionTable("sessions", { schema: t.schema, userIdType: "integer", references: () => users.id });
      expect(() => new SessionStore({ db: t.db, table: cascading, cache: {}, reaper: false })).toThrow(
        /connect-drizzle: `cache` cannot be correct on a table whose rows the database deletes itself \(user_id -> "users", on delete cascade\).*onDelete: "set null".*revokeUser/,
      );
      // Without the cache the same table is fine: every instance reads the database.
      await new SessionStore({ db: t.db, table: cascading, reaper: false }).close();
      const nulling = createSessionTable("sessions", { schema: t.schema, userIdType: "integer", references: () => users.id, onDelete: "set null" });
      await new SessionStore({ db: t.db, table: nulling, cache: {}, reaper: false }).close();
    } finally {
      await t.close();
    }
  });
});

describe.each(drivers)("a session table referencing the app's users, created by drizzle-kit, on %s", (driver) => {
  let t: TestDb;
  const schemas: string[] = [];
  beforeAll(async () => {
    t = await openDb(driver);
  });
  afterAll(async () => {
    for (const schema of schemas) await t?.raw(`drop schema if exists "${schema}" cascade`).catch(() => {});
    await t?.close();
  });

  it.each(Object.keys(userIds) as UserIdType[])("user_id %s: login, list, count, revokeUser; deleting the user ends their sessions", async (type) => {
    const schema = `${t.schema}_${type}`;
    schemas.push(schema);
    const { namespace, users, sessions } = appSchema(schema, type);
    // What drizzle-kit generates for an app's schema holding both tables.
    const statements = await drizzleKitDdl({ namespace, users, sessions });
    expect(statements.join("\n")).toMatch(/REFERENCES .*"users"\("id"\) ON DELETE cascade/i);
    for (const statement of statements) await t.db.execute(sql.raw(statement));

    const [ann, bob] = userIds[type].ids();
    await t.db.insert(users).values([{ id: ann }, { id: bob }]);
    const store = new SessionStore({ db: t.db, table: sessions, reaper: false });
    await store.set("ann-laptop", sessionData(HOUR, { passport: { user: ann } }));
    await store.set("ann-phone", sessionData(HOUR, { passport: { user: ann } }));
    await store.set("ann-tablet", sessionData(HOUR, { passport: { user: ann } }));
    await store.set("bob-laptop", sessionData(HOUR, { passport: { user: bob } }));

    const listed = await store.list({ userId: ann });
    expect(listed.map((r) => r.userId)).toEqual([String(ann), String(ann), String(ann)]);
    expect(await store.count({ userId: ann })).toBe(3);
    if (typeof ann === "number") expect(await store.count({ userId: BigInt(ann) })).toBe(3);
    expect(await store.revoke(listed[0]!.handle, { userId: ann })).toBe(true);
    expect(await store.revokeUser(ann, { except: "ann-laptop" })).toBe(1);
    expect(await store.count({ userId: ann })).toBe(1);
    // A save of a loaded session (the owner column is written again) works on the column's type too.
    const loaded = (await store.get("ann-laptop"))!;
    (loaded as any).seen = true;
    await store.set("ann-laptop", loaded);
    expect(((await store.get("ann-laptop")) as any).seen).toBe(true);

    await t.db.delete(users).where(eq(users.id, ann));
    expect(await t.db.select({ key: sessions.key }).from(sessions).where(eq(sessions.userId, ann))).toEqual([]);
    expect(await store.get("ann-laptop")).toBeNull();
    expect(await store.count({ userId: ann, status: "all" })).toBe(0);
    expect(await store.get("bob-laptop")).not.toBeNull();
    expect(await store.count({ userId: bob })).toBe(1);
  });
});
