import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import PGStore from "connect-pg-simple";
import express from "express";
import session from "express-session";
import pg from "pg";
import request from "supertest";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  createSessionTable,
  IMPORTED_COLUMN,
  importConnectPgSimple,
  SessionStore,
  SessionStoreError,
  sessionMiddleware,
  type UserIdType,
} from "../src/index.js";
import { cookieOf, testApp } from "./support/app.js";
import { DATABASE_URL, drivers, openDb, type TestDb } from "./support/db.js";

const require = createRequire(import.meta.url);

/** The sid inside an express-session cookie (`connect.sid=s%3A<sid>.<signature>`). */
function sidOf(cookie: string): string {
  const value = decodeURIComponent(cookie.slice(cookie.indexOf("=") + 1));
  return value.slice(2, value.lastIndexOf("."));
}

const cli = join(import.meta.dirname, "..", "src", "cli.ts");
/** What the CLI says on stderr when an import is given no secrets: the easiest way to log everyone out. */
const NO_SECRETS_NOTE =
  /^connect-drizzle: no --secret and no SESSION_STORE_SECRETS: sessions are keyed with SHA-256, as a store without `secrets` keys them\. If your SessionStore has `secrets`, give the import the same ones.*\n$/;
const tsx = join(import.meta.dirname, "..", "node_modules", ".bin", "tsx");
const runCli = (args: string[], env: Record<string, string | undefined> = {}) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(tsx, [cli, ...args], { env: { ...process.env, DATABASE_URL, SESSION_STORE_SECRETS: undefined, ...env } }, (error, stdout, stderr) =>
      resolve({ code: error ? Number((error as any).code ?? 1) : 0, stdout, stderr }),
    );
  });

describe.skipIf(!DATABASE_URL)("moving from connect-pg-simple (needs DATABASE_URL: connect-pg-simple runs only on a real Postgres)", () => {
  let t: TestDb;
  let pool: pg.Pool;
  let legacy: InstanceType<ReturnType<typeof PGStore>>;
  /** The cookies of the sessions connect-pg-simple holds before each test. */
  let ann: string;
  let anon: string;
  let bob: string;
  const old = () => `"${t.schema}"."session"`;

  beforeAll(async () => {
    t = await openDb("node-postgres");
    pool = new pg.Pool({ connectionString: DATABASE_URL, max: 4 });
    const Store = PGStore(session);
    legacy = new Store({ pool, schemaName: t.schema, pruneSessionInterval: false });
  });

  afterAll(async () => {
    await legacy?.close();
    await pool?.end();
    await t?.close();
  });

  /** The app as it ran with connect-pg-simple: plain express-session, cookie `connect.sid`, secret "test secret". */
  beforeEach(async () => {
    await t.raw(`delete from $table`);
    // connect-pg-simple's own table.sql, as its createTableIfMissing runs it.
    await t.raw(`drop table if exists ${old()}; ${readFileSync(require.resolve("connect-pg-simple/table.sql"), "utf8").replaceAll('"session"', old())}`);
    const before = testApp(legacy as any);
    const login = async (user: string) => {
      const res = await request(before).post("/login").send({ username: user, password: "pw" });
      expect(res.status).toBe(200);
      return cookieOf(res)!;
    };
    ann = await login("ann");
    expect((await request(before).post("/count").set("Cookie", ann)).body).toEqual({ views: 1 });
    anon = cookieOf(await request(before).post("/count"))!;
    bob = await login("bob");
    expect((await request(before).get("/me").set("Cookie", ann)).body).toEqual({ user: "ann" });
    await t.raw(`update ${old()} set expire = now() - interval '1 minute' where sid = '${sidOf(bob)}'`);
    expect(await t.raw(`select count(*)::int as n from ${old()}`)).toEqual([{ n: 3 }]);
  });

  const store = (secrets?: string[]) => new SessionStore({ db: t.db, table: t.table, reaper: false, ...(secrets ? { secrets } : {}) });

  it("keeps everyone logged in: after the import, the app on connect-drizzle with the same cookie name and secret serves the same sessions", async () => {
    const result = await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    expect(result).toMatchObject({ imported: 2, skipped: 0, expired: 1, invalid: 0, batches: 1, dryRun: false });

    // Data, expiry and owner as connect-pg-simple had them.
    const [copy] = await t.raw(
      `select n.data = o.sess::jsonb as same_data, abs(extract(epoch from n.expires_at - o.expire::timestamptz)) < 0.001 as same_expiry, n.user_id
       from $table n, ${old()} o where o.sid = '${sidOf(ann)}' and n.user_id is not null`,
    );
    expect(copy).toEqual({ same_data: true, same_expiry: true, user_id: "ann" });

    const drizzleStore = store();
    const after = testApp(drizzleStore);
    expect((await request(after).get("/me").set("Cookie", ann)).body).toEqual({ user: "ann" });
    expect((await request(after).get("/count").set("Cookie", ann)).body).toEqual({ views: 1 });
    expect((await request(after).get("/count").set("Cookie", anon)).body).toEqual({ views: 1 });
    // The expired session was not copied: its cookie opens nothing.
    expect((await request(after).get("/me").set("Cookie", bob)).status).toBe(401);
    expect(await drizzleStore.list({ userId: "bob", status: "all" })).toEqual([]);

    const [record] = await drizzleStore.list({ userId: "ann" });
    expect(record).toMatchObject({ userId: "ann", status: "active" });
    expect(await drizzleStore.handleOf(sidOf(ann))).toBe(record!.handle);
    expect(await drizzleStore.length()).toBe(2);
    // The old table is left in place, its rows marked.
    expect(await t.raw(`select count(*)::int as n, count(${IMPORTED_COLUMN})::int as marked from ${old()}`)).toEqual([{ n: 3, marked: 2 }]);
    await drizzleStore.close();
  });

  it("a second run imports nothing, and never brings back a session that ended after the first", async () => {
    await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    const drizzleStore = store();
    const after = testApp(drizzleStore);
    expect((await request(after).post("/logout").set("Cookie", ann)).status).toBe(200);
    expect((await request(after).get("/me").set("Cookie", ann)).status).toBe(401);

    const again = await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    expect(again).toMatchObject({ imported: 0, skipped: 2, expired: 1 });
    // The logged-out session's row was deleted by the logout; the old row is still there, and stays unused.
    expect((await request(after).get("/me").set("Cookie", ann)).status).toBe(401);
    expect(await drizzleStore.list({ userId: "ann", status: "all" })).toEqual([]);
    await drizzleStore.close();
  });

  it("never overwrites a session already in the sessions table", async () => {
    const drizzleStore = store();
    const now = new Date(Date.now() + 3_600_000).toISOString();
    await drizzleStore.set(sidOf(anon), { cookie: { originalMaxAge: 3_600_000, expires: now, httpOnly: true, path: "/" }, views: 99 } as any);

    const result = await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    expect(result).toMatchObject({ imported: 1, skipped: 1, expired: 1 });
    expect((await request(testApp(drizzleStore)).get("/count").set("Cookie", anon)).body).toEqual({ views: 99 });
    await drizzleStore.close();
  });

  it("copies each session once when several instances import at the same time, in batches of any size", async () => {
    const other = new pg.Pool({ connectionString: DATABASE_URL, max: 2 });
    try {
      const { drizzle } = await import("drizzle-orm/node-postgres");
      const runs = await Promise.all([
        importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema, batchSize: 1 }),
        importConnectPgSimple({ db: drizzle({ client: other }), table: t.table, fromSchema: t.schema, batchSize: 1 }),
      ]);
      expect(runs[0]!.imported + runs[1]!.imported).toBe(2);
      expect(runs[0]!.imported + runs[0]!.skipped).toBe(2);
      expect(runs.every((r) => r.expired === 1 && r.batches === 3)).toBe(true);
      expect(await t.raw(`select count(*)::int as n from $table`)).toEqual([{ n: 2 }]);
    } finally {
      await other.end();
    }
  });

  it('with sessionMiddleware, the imported sessions are found only under the old cookie name (name: "connect.sid")', async () => {
    await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    const drizzleStore = store();
    const appWith = (name?: string) =>
      express()
        .use(sessionMiddleware({ store: drizzleStore, secret: "test secret", ...(name ? { name } : {}) }))
        .get("/me", (req, res) => void res.json({ user: (req.session as any).passport?.user ?? null }));
    expect((await request(appWith("connect.sid")).get("/me").set("Cookie", ann)).body).toEqual({ user: "ann" });
    // Its default name (`sid` here, `__Host-sid` in production) does not read connect.sid: logged out.
    expect((await request(appWith()).get("/me").set("Cookie", ann)).body).toEqual({ user: null });
    await drizzleStore.close();
  });

  describe("npx connect-drizzle import-pg-simple", () => {
    it("imports with --secret, keyed so that a store with that secret finds the sessions and one without it does not", async () => {
      const out = await runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--secret", "s1", "--secret", "s0"]);
      expect(out.stderr).toBe("");
      expect(out.code).toBe(0);
      const lines = out.stdout.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(JSON.parse(lines[0]!)).toMatchObject({
        imported: 2,
        skipped: 0,
        expired: 1,
        invalid: 0,
        batches: 1,
        dryRun: false,
        durationMs: expect.any(Number),
      });

      const withSecret = store(["s1"]);
      const withoutSecret = store();
      expect(await withSecret.get(sidOf(ann))).toMatchObject({ passport: { user: "ann" } });
      expect(await withoutSecret.get(sidOf(ann))).toBeNull();
      expect((await request(testApp(withSecret)).get("/me").set("Cookie", ann)).body).toEqual({ user: "ann" });
      expect((await withSecret.list({ userId: "ann" })).map((r) => r.userId)).toEqual(["ann"]);
      await withSecret.close();
      await withoutSecret.close();

      const again = await runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--secret", "s1"]);
      expect(JSON.parse(again.stdout)).toMatchObject({ imported: 0, skipped: 2, expired: 1 });
    });

    it("--check-cookie says whether the app would find a browser's session; an import run with the wrong secrets is found out, and --redo copies again", async () => {
      const check = (cookie: string, env: Record<string, string> = {}) =>
        runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--check-cookie", cookie], { SESSION_SECRET: "test secret", ...env });
      // Before any import: the session is in the old table only.
      const before = await check(ann, { SESSION_STORE_SECRETS: "s1" });
      expect(before.code).toBe(0);
      expect(JSON.parse(before.stdout)).toEqual({ cookie: "valid", inOldTable: true, copied: false, found: false });

      // The import forgot the store's secrets: the app (secrets ["s1"]) finds none of the copies, and the check says so.
      const wrong = await runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema]);
      expect(wrong.stderr).toMatch(NO_SECRETS_NOTE);
      expect(JSON.parse(wrong.stdout)).toMatchObject({ imported: 2 });
      expect(JSON.parse((await check(ann, { SESSION_STORE_SECRETS: "s1" })).stdout)).toEqual({ cookie: "valid", inOldTable: true, copied: true, found: false });
      // A plain rerun copies nothing more: the rows are marked as copied.
      const rerun = await runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--secret", "s1"]);
      expect(JSON.parse(rerun.stdout)).toMatchObject({ imported: 0, skipped: 2 });

      // --redo with the right secrets: the app finds them, under the cookie as the browser holds it (URL-encoded, with its name, or decoded).
      const redo = await runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--secret", "s1", "--redo"]);
      expect(redo.stderr).toBe("");
      expect(JSON.parse(redo.stdout)).toMatchObject({ imported: 2, skipped: 0, expired: 1 });
      const value = ann.slice(ann.indexOf("=") + 1);
      for (const cookie of [ann, value, decodeURIComponent(value)]) {
        expect(JSON.parse((await check(cookie, { SESSION_STORE_SECRETS: "s1" })).stdout)).toEqual({
          cookie: "valid",
          inOldTable: true,
          copied: true,
          found: true,
        });
      }
      const app = store(["s1"]);
      expect((await request(testApp(app)).get("/me").set("Cookie", ann)).body).toEqual({ user: "ann" });
      await app.close();

      // A cookie signed with another secret, or no signed cookie at all, is no session: said as such.
      expect(JSON.parse((await check(ann, { SESSION_SECRET: "another secret", SESSION_STORE_SECRETS: "s1" })).stdout)).toMatchObject({
        cookie: expect.stringMatching(/^bad signature/),
        found: false,
      });
      expect(JSON.parse((await check("not-a-cookie", { SESSION_STORE_SECRETS: "s1" })).stdout)).toMatchObject({
        cookie: expect.stringMatching(/^not signed/),
        found: false,
      });
      // Without the cookie secret the check cannot verify anything: refused, saying what to set.
      const unsigned = await runCli(["import-pg-simple", "--from-schema", t.schema, "--check-cookie", ann], { SESSION_SECRET: "" });
      expect(unsigned.code).toBe(1);
      expect(unsigned.stderr).toMatch(/--check-cookie needs the app's cookie secret .* in SESSION_SECRET/);
      // Ten CLI processes, each starting tsx: on a loaded 2-core machine that is more than the default 30 s.
    }, 120_000);

    it("npx connect-drizzle migrate creates the sessions table where the connection's search_path points, and a rerun changes nothing", async () => {
      const schema = `${t.schema}_cli`;
      await t.raw(`create schema "${schema}"`);
      try {
        const url = new URL(DATABASE_URL!);
        url.searchParams.set("options", `-c search_path=${schema}`);
        for (let run = 0; run < 2; run++) {
          const out = await runCli(["migrate", "--migrations-schema", schema], { DATABASE_URL: url.toString() });
          expect(out.stderr).toBe("");
          expect(JSON.parse(out.stdout)).toMatchObject({ migrated: true, durationMs: expect.any(Number) });
        }
        const [found] = await t.raw(`select count(*)::int as n from information_schema.columns where table_schema = '${schema}' and table_name = 'sessions'`);
        expect(found.n).toBeGreaterThan(10);
        const bad = await runCli(["migrate", "--schema", "x"]);
        expect(bad.code).toBe(1);
        expect(bad.stderr).toMatch(/--schema is not an option of "migrate"/);
      } finally {
        await t.raw(`drop schema "${schema}" cascade`);
      }
    });

    it("takes the secrets from SESSION_STORE_SECRETS, and the owner from --user-id-path", async () => {
      await t.raw(`delete from ${old()}`);
      const cookie = { originalMaxAge: 3_600_000, expires: new Date(Date.now() + 3_600_000).toISOString(), httpOnly: true, path: "/" };
      await new Promise<void>((resolve, reject) => legacy.set("carol-sid", { cookie, account: { id: 7 } } as any, (e) => (e ? reject(e) : resolve())));
      const out = await runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--user-id-path", "account.id"], {
        SESSION_STORE_SECRETS: "new,old",
      });
      expect(out.stderr).toBe("");
      expect(JSON.parse(out.stdout)).toMatchObject({ imported: 1 });
      const withSecrets = store(["new", "old"]);
      expect((await withSecrets.list({ userId: "7" })).length).toBe(1);
      expect(await withSecrets.get("carol-sid")).toMatchObject({ account: { id: 7 } });
      expect(await store(["new"]).get("carol-sid")).not.toBeNull(); // keyed with the first secret
      await withSecrets.close();
    });

    it("--dry-run counts and changes nothing, not even the old table", async () => {
      const out = await runCli(["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--dry-run"]);
      expect(out.stderr).toMatch(NO_SECRETS_NOTE);
      expect(JSON.parse(out.stdout)).toMatchObject({ imported: 2, skipped: 0, expired: 1, dryRun: true });
      expect(await t.raw(`select count(*)::int as n from $table`)).toEqual([{ n: 0 }]);
      const columns = await t.raw(
        `select column_name from information_schema.columns where table_schema = '${t.schema}' and table_name = 'session' order by 1`,
      );
      expect(columns.map((c: any) => c.column_name)).toEqual(["expire", "sess", "sid"]);
    });

    it("--user-id-type integer copies into a table whose user_id is integer, and prints the sessions it left out, by reason", async () => {
      await t.raw(`create table "${t.schema}"."sessions_int" (like $table including all)`);
      await t.raw(`alter table "${t.schema}"."sessions_int" alter column user_id type integer using null`);
      const cookie = { originalMaxAge: 3_600_000, expires: new Date(Date.now() + 3_600_000).toISOString(), httpOnly: true, path: "/" };
      const put = (sid: string, sess: object) => new Promise<void>((resolve, reject) => legacy.set(sid, sess as any, (e) => (e ? reject(e) : resolve())));
      await put("seven-sid", { cookie, passport: { user: 7 } });
      await put("nul-sid", { cookie, note: "a\u0000b" });
      const args = ["import-pg-simple", "--from-schema", t.schema, "--schema", t.schema, "--table", "sessions_int"];

      // Without the flag the table is taken as text: the copy fails as a whole, saying what to pass.
      const untyped = await runCli(args);
      expect(untyped).toMatchObject({ code: 1, stdout: "" });
      expect(untyped.stderr).toMatch(/connect-drizzle: .*"user_id" is of type integer.*--user-id-type/);
      expect(untyped.stderr).not.toMatch(/\bann\b|\bseven\b/);
      expect((await runCli([...args, "--user-id-type", "varchar"])).stderr).toMatch(/--user-id-type must be text, integer, bigint or uuid/);

      const out = await runCli([...args, "--user-id-type", "integer"]);
      expect(out.stderr).toMatch(NO_SECRETS_NOTE);
      expect(JSON.parse(out.stdout)).toMatchObject({ imported: 2, skipped: 0, expired: 1, invalid: 2, invalidReasons: { session: 0, owner: 1, data: 1 } });
      // ann's owner is not an integer: her session is left out; the anonymous one and user 7's are copied.
      expect(await t.raw(`select user_id from "${t.schema}"."sessions_int" order by user_id nulls last`)).toEqual([{ user_id: 7 }, { user_id: null }]);
      expect(out.stdout).not.toMatch(/\bann\b|\bseven\b|nul-sid/);
    });

    it("exits 1 with what to do when the old table is not there, or with a bad flag", async () => {
      const missing = await runCli(["import-pg-simple", "--from-schema", t.schema, "--from-table", "sessions_old", "--schema", t.schema]);
      expect(missing).toMatchObject({ code: 1, stdout: "" });
      expect(missing.stderr).toMatch(/connect-pg-simple's table "[^"]+"\."sessions_old" not found; name the table your PGStore used/);
      const badFlag = await runCli(["import-pg-simple", "--retain-ended", "5"]);
      expect(badFlag.code).toBe(1);
      expect(badFlag.stderr).toMatch(/--retain-ended is not an option of "import-pg-simple"/);
      const badBatch = await runCli(["import-pg-simple", "--batch-size", "0"]);
      expect(badBatch.stderr).toMatch(/--batch-size must be a positive whole number \(got "0"\)/);
    });
  });
});

/** connect-pg-simple's own table.sql, as its createTableIfMissing runs it, as `qualified`. */
const pgSimpleTable = (qualified: string) => readFileSync(require.resolve("connect-pg-simple/table.sql"), "utf8").replaceAll('"session"', qualified);

/** A session as connect-pg-simple's `sess` column holds it (JSON text), unexpired, with `extra` JSON members (`,"a":1`). */
const sessText = (extra = "") =>
  `{"cookie":{"originalMaxAge":3600000,"expires":"${new Date(Date.now() + 3_600_000).toISOString()}","httpOnly":true,"path":"/"}${extra}}`;

describe.each(drivers)("importing connect-pg-simple rows that do not fit the sessions table, on %s", (driver) => {
  let t: TestDb;
  const old = () => `"${t.schema}"."session"`;
  const store = (table = t.table) => new SessionStore({ db: t.db, table, reaper: false });

  beforeAll(async () => {
    t = await openDb(driver);
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(async () => {
    await t.raw(`delete from $table`);
    await t.raw(`drop table if exists ${old()}`);
    for (const statement of pgSimpleTable(old())
      .split(";")
      .filter((s) => s.trim()))
      await t.raw(statement);
  });

  /** Rows of connect-pg-simple's table: [sid, sess JSON text as stored (escapes and all)], unexpired. */
  async function oldRows(rows: Array<[string, string]>): Promise<void> {
    const values = rows.map(([sid, sess]) => `('${sid}', '${sess.replaceAll("'", "''")}', now() + interval '1 hour')`);
    await t.raw(`insert into ${old()} (sid, sess, expire) values ${values.join(", ")}`);
  }

  /**
   * A sessions table of the same columns as the shipped one but for `user_id`, of `type`, and its
   * drizzle definition (createSessionTable with that userIdType).
   */
  async function typedTable(type: UserIdType) {
    const name = `sessions_${type}`;
    const qualified = `"${t.schema}"."${name}"`;
    await t.raw(`drop table if exists ${qualified}`);
    await t.raw(`create table ${qualified} (like $table including all)`);
    await t.raw(`alter table ${qualified} alter column user_id type ${type} using null`);
    return { table: createSessionTable(name, { schema: t.schema, userIdType: type }), qualified };
  }

  const owners: Record<Exclude<UserIdType, "text">, { good: string; json: string; bad: string[] }> = {
    integer: { good: "7", json: "7", bad: ['"ann@example.com"', "2147483648", '"7.5"'] },
    bigint: { good: String(2 ** 40 + 1), json: String(2 ** 40 + 1), bad: ['"ann@example.com"', '"9223372036854775808"'] },
    uuid: {
      good: "6f1c7c0e-3b1a-4d7e-9c55-0a8e2f3b9d21",
      json: '"6F1C7C0E-3B1A-4D7E-9C55-0A8E2F3B9D21"',
      bad: ['"6f1c7c0e3b1a4d7e9c550a8e2f3b9d21"', '"not-a-uuid"'],
    },
  };

  it.each(Object.keys(owners) as Array<keyof typeof owners>)("imports sessions into a table whose user_id is %s, casting the owner", async (type) => {
    const { table, qualified } = await typedTable(type);
    await oldRows([
      ["owned", sessText(`,"passport":{"user":${owners[type].json}}`)],
      ["anonymous", sessText(`,"views":3`)],
    ]);
    const result = await importConnectPgSimple({ db: t.db, table, fromSchema: t.schema });
    expect(result).toMatchObject({ imported: 2, skipped: 0, expired: 0, invalid: 0 });
    expect(await t.raw(`select user_id::text as user_id from ${qualified} order by user_id nulls last`)).toEqual([
      { user_id: owners[type].good },
      { user_id: null },
    ]);
    const s = store(table);
    expect(await s.get("owned")).toMatchObject({ passport: { user: JSON.parse(owners[type].json) } });
    expect((await s.list({ userId: owners[type].good })).map((r) => r.userId)).toEqual([owners[type].good]);
    await s.close();
    expect(await importConnectPgSimple({ db: t.db, table, fromSchema: t.schema })).toMatchObject({ imported: 0, skipped: 2, invalid: 0 });
  });

  it.each(Object.keys(owners) as Array<keyof typeof owners>)(
    "a session whose owner does not fit userIdType (%s) is counted invalid and the rest are copied",
    async (type) => {
      const { table, qualified } = await typedTable(type);
      const bad = owners[type].bad;
      await oldRows([
        ["a-good", sessText(`,"passport":{"user":${owners[type].json}}`)],
        ...bad.map((owner, i): [string, string] => [`b-bad-${i}`, sessText(`,"passport":{"user":${owner}}`)]),
        ["c-anonymous", sessText()],
      ]);
      // In one batch, and in batches of one.
      for (const batchSize of [1_000, 1]) {
        if (batchSize === 1) {
          await t.raw(`delete from ${qualified}`);
          await t.raw(`update ${old()} set ${IMPORTED_COLUMN} = null`);
        }
        const result = await importConnectPgSimple({ db: t.db, table, fromSchema: t.schema, batchSize });
        expect(result).toMatchObject({ imported: 2, skipped: 0, invalid: bad.length, invalidReasons: { owner: bad.length, session: 0, data: 0 } });
        expect(await t.raw(`select count(*)::int as n from ${qualified}`)).toEqual([{ n: 2 }]);
      }
      // The rows left out are not marked as copied; a second run counts them again, and copies nothing more.
      expect(await t.raw(`select count(${IMPORTED_COLUMN})::int as marked from ${old()}`)).toEqual([{ marked: 2 }]);
      expect(await importConnectPgSimple({ db: t.db, table, fromSchema: t.schema })).toMatchObject({ imported: 0, skipped: 2, invalid: bad.length });
    },
  );

  it("a connect-pg-simple session holding \\u0000 is counted invalid, the rest of the batch is copied, and a second run succeeds", async () => {
    await oldRows([
      ["a-good", sessText(`,"views":1`)],
      ["b-nul", sessText(`,"note":"a\\u0000b"`)],
      ["c-surrogate", sessText(`,"note":"\\ud800"`)],
      ["d-good", sessText(`,"views":2,"emoji":"\\ud83d\\ude00"`)],
    ]);
    const result = await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    expect(result).toMatchObject({ imported: 2, skipped: 0, invalid: 2, invalidReasons: { data: 2, session: 0, owner: 0 } });
    const s = store();
    expect(await s.get("a-good")).toMatchObject({ views: 1 });
    // An escaped surrogate pair is a character jsonb stores: that session is copied.
    expect(await s.get("d-good")).toMatchObject({ views: 2, emoji: "\u{1F600}" });
    expect(await s.get("b-nul")).toBeNull();
    await s.close();
    const again = await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    expect(again).toMatchObject({ imported: 0, skipped: 2, invalid: 2 });
  });

  it("a row the database refuses for a reason not checked up front is counted invalid, and the rest of its batch is copied", async () => {
    // JSON allows a number jsonb's numeric cannot hold (22003): only the database finds out.
    await oldRows([
      ["a-good", sessText(`,"views":1`)],
      ["b-huge", sessText(`,"n":1e200000`)],
      ["c-good", sessText(`,"views":2`)],
    ]);
    const result = await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema });
    expect(result).toMatchObject({ imported: 2, invalid: 1, invalidReasons: { data: 1 } });
    expect(await t.raw(`select count(${IMPORTED_COLUMN})::int as marked from ${old()}`)).toEqual([{ marked: 2 }]);
    expect(await importConnectPgSimple({ db: t.db, table: t.table, fromSchema: t.schema })).toMatchObject({ imported: 0, skipped: 2, invalid: 1 });
  });

  it("into a table whose user_id is not of the type its definition gives, fails saying so, with no value in the message", async () => {
    await typedTable("integer");
    await oldRows([["owned", sessText(`,"passport":{"user":"secret-owner"}`)]]);
    const wrong = createSessionTable("sessions_integer", { schema: t.schema });
    const error = await importConnectPgSimple({ db: t.db, table: wrong, fromSchema: t.schema }).catch((e) => e);
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(error.message).toMatch(/connect-drizzle: .*user_id.*userIdType.*--user-id-type/);
    expect(`${error.message} ${String(error.cause?.message)}`).not.toMatch(/secret-owner|owned/);
  });
});

describe("importConnectPgSimple's arguments", () => {
  it("refuses bad arguments with a message that says what to pass", async () => {
    await expect(importConnectPgSimple(undefined as any)).rejects.toThrow(/connect-drizzle: importConnectPgSimple\(args\) needs an object/);
    await expect(importConnectPgSimple({} as any)).rejects.toThrow(/connect-drizzle: the `db` option is required/);
    const { drizzle } = await import("drizzle-orm/pglite");
    const { PGlite } = await import("@electric-sql/pglite");
    const client = new PGlite();
    try {
      const db = drizzle({ client });
      await expect(importConnectPgSimple({ db, secrets: [""] })).rejects.toThrow(/`secrets` must be a non-empty string/);
      await expect(importConnectPgSimple({ db, fromTable: "" })).rejects.toThrow(/`fromTable` must be a non-empty/);
      await expect(importConnectPgSimple({ db, batchSize: 0 })).rejects.toThrow(/`batchSize` must be a positive number/);
      await expect(importConnectPgSimple({ db, table: createSessionTable("sessions") })).rejects.toThrow(/connect-pg-simple's table "session" not found/);
    } finally {
      await client.close();
    }
  });
});
