import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionStore, SessionStoreError, createSessionTable } from "../src/index.js";
import { drivers, openDb, sessionData, sleep, type TestDb, useTestDb } from "./support/db.js";

describe.each(drivers)("SessionStore on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;

  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });

  const expiresOf = async (): Promise<number[]> =>
    (await t.raw<{ ms: number }>(`select (extract(epoch from expires_at) * 1000)::float8 as ms from $table order by ms`)).map((r) => Number(r.ms));

  it("returns what was set, and null for an unknown id", async () => {
    await store.set("sid-1", sessionData(60_000, { user: "ann", cart: [1, 2] }));
    const loaded: any = await store.get("sid-1");
    expect(loaded.user).toBe("ann");
    expect(loaded.cart).toEqual([1, 2]);
    expect(loaded.cookie.originalMaxAge).toBe(60_000);
    expect(await store.get("sid-unknown")).toBeNull();
  });

  it("overwrites a session on a second set (one row per id)", async () => {
    await store.set("sid-1", sessionData(60_000, { n: 1 }));
    await store.set("sid-1", sessionData(60_000, { n: 2 }));
    expect(((await store.get("sid-1")) as any).n).toBe(2);
    expect(await store.length()).toBe(1);
  });

  it("never returns a session past its stored expiry, to the millisecond; the cookie's lifetime is kept", async () => {
    const before = Date.now();
    const expires = before + 1_500;
    await store.set("sid-ms", { cookie: { originalMaxAge: 1_500, expires: new Date(expires) } } as any);
    const after = Date.now();
    // The lifetime (expires minus the app's now) counts from the database's now: later by the write's latency at most.
    const [stored] = await expiresOf();
    expect(stored).toBeGreaterThanOrEqual(expires);
    expect(stored).toBeLessThanOrEqual(expires + (after - before) + 1);
    expect(await store.get("sid-ms")).not.toBeNull();
    await sleep(stored! - Date.now() + 5);
    expect(await store.get("sid-ms")).toBeNull();
  });

  it("treats a session that expired one millisecond ago as missing", async () => {
    await store.set("sid-past", { cookie: { expires: new Date(Date.now() - 1) } } as any);
    expect(await store.get("sid-past")).toBeNull();
    expect(await store.length()).toBe(0);
  });

  it("stores a session without a cookie expiry, or with an invalid one, for the default ttl", async () => {
    const ttlStore = new SessionStore({ db: t.db, table: t.table, ttl: 3_600_000 });
    const before = Date.now();
    await ttlStore.set("no-cookie", { cookie: {} } as any);
    await ttlStore.set("nan-cookie", { cookie: { expires: new Date(NaN) } } as any);
    await ttlStore.set("garbage-cookie", { cookie: { expires: "not a date" } } as any);
    const after = Date.now();
    const stored = await expiresOf();
    expect(stored).toHaveLength(3);
    for (const ms of stored) {
      expect(ms).toBeGreaterThanOrEqual(before + 3_600_000);
      expect(ms).toBeLessThanOrEqual(after + 3_600_000 + 1); // timestamptz(3) rounds to the nearest ms
    }
    expect(await ttlStore.get("nan-cookie")).not.toBeNull();
  });

  it("touch saves the new cookie: a later get returns the new expiry", async () => {
    await store.set("sid-touch", sessionData(60_000));
    const before = Date.now();
    const later = new Date(before + 3_600_000).toISOString();
    const touched = { ...((await store.get("sid-touch")) as any), cookie: { originalMaxAge: 3_600_000, expires: later } };
    await store.touch("sid-touch", touched);
    const elapsed = Date.now() - before;
    const loaded: any = await store.get("sid-touch");
    expect(loaded.cookie.expires).toBe(later);
    const [stored] = await expiresOf();
    expect(stored).toBeGreaterThanOrEqual(Date.parse(later));
    expect(stored).toBeLessThanOrEqual(Date.parse(later) + elapsed + 1);
  });

  it("touch of an expired or missing session does nothing", async () => {
    await store.set("sid-old", { cookie: { expires: new Date(Date.now() - 1000) } } as any);
    await store.touch("sid-old", sessionData(60_000));
    await store.touch("sid-none", sessionData(60_000));
    expect(await store.get("sid-old")).toBeNull();
    expect(await store.get("sid-none")).toBeNull();
  });

  it("destroy ends a session and succeeds for an id that does not exist", async () => {
    await store.set("sid-d", sessionData(60_000));
    await store.destroy("sid-d");
    expect(await store.get("sid-d")).toBeNull();
    await expect(store.destroy("sid-never-existed")).resolves.toBeUndefined();
  });

  it("a save racing a destroy cannot bring the session back", async () => {
    await store.set("sid-race", sessionData(60_000, { n: 1 }));
    const inFlight: any = await store.get("sid-race");
    await store.destroy("sid-race");
    inFlight.n = 2;
    await store.set("sid-race", inFlight);
    expect(await store.get("sid-race")).toBeNull();
    expect(await t.raw(`select 1 from $table`)).toHaveLength(0);
  });

  it("with history (retainEnded), not even a set of a plain object revives an ended id while its record is kept", async () => {
    const history = new SessionStore({ db: t.db, table: t.table, retainEnded: 60_000, reaper: false });
    await history.set("sid-kept", sessionData(60_000, { n: 1 }));
    await history.destroy("sid-kept");
    await history.set("sid-kept", sessionData(60_000, { n: 2 }));
    expect(await history.get("sid-kept")).toBeNull();
  });

  it("all, length and clear see only live sessions", async () => {
    await store.set("a", sessionData(60_000, { who: "a" }));
    await store.set("b", sessionData(60_000, { who: "b" }));
    await store.set("expired", { cookie: { expires: new Date(Date.now() - 10) } } as any);
    await store.set("ended", sessionData(60_000));
    await store.destroy("ended");
    expect(await store.length()).toBe(2);
    const all = await store.all();
    expect(
      Object.values(all)
        .map((s: any) => s.who)
        .sort(),
    ).toEqual(["a", "b"]);
    // Keys are public handles, never the session ids.
    expect(Object.keys(all)).not.toContain("a");
    await store.clear();
    expect(await store.length()).toBe(0);
    expect(await t.raw(`select 1 from $table`)).toHaveLength(0);
  });

  it.each([
    ["percent", "%"],
    ["path", "/foo"],
    ["underscore", "_"],
    ["SQL", "a'; drop table sessions; --"],
    ["unicode", "ünïcødé 🔑"],
    ["empty", ""],
    ["10 kB", "x".repeat(10_000)],
  ])("works with any string id (%s)", async (_, sid) => {
    await store.set(sid, sessionData(60_000, { sid: "ok" }));
    expect(((await store.get(sid)) as any).sid).toBe("ok");
    await store.destroy(sid);
    expect(await store.get(sid)).toBeNull();
  });

  it("stores no plain session id in any column", async () => {
    const sid = "plain-session-id-7f3a9c";
    await store.set(sid, sessionData(60_000, { note: "hello" }));
    await store.touch(sid, sessionData(3_600_000, { note: "hello" }));
    const dump = await t.raw<{ row: string }>(`select t::text as row from $table t`);
    expect(dump).toHaveLength(1);
    expect(dump[0]!.row).toContain("hello");
    expect(dump[0]!.row).not.toContain(sid);
  });

  it("refuses data that cannot be JSON and keeps the stored session intact", async () => {
    await store.set("sid-bad", sessionData(60_000, { n: 1 }));
    const circular: any = sessionData(60_000);
    circular.self = circular;
    await expect(store.set("sid-bad", circular)).rejects.toMatchObject({ code: "UNSERIALIZABLE", message: /circular/i });
    await expect(store.set("sid-bad", sessionData(60_000, { big: 10n }))).rejects.toThrow(/BigInt/);
    expect(((await store.get("sid-bad")) as any).n).toBe(1);
  });

  it("refuses a session over maxSize and keeps the stored one", async () => {
    const small = new SessionStore({ db: t.db, table: t.table, maxSize: 1000 });
    await small.set("sid-big", sessionData(60_000, { n: 1 }));
    await expect(small.set("sid-big", sessionData(60_000, { blob: "x".repeat(2000) }))).rejects.toMatchObject({ code: "TOO_LARGE" });
    expect(((await small.get("sid-big")) as any).n).toBe(1);
  });

  it("refuses a NUL character (jsonb cannot hold it) with a clear error", async () => {
    await store.set("sid-nul", sessionData(60_000, { n: 1 }));
    const error = await store.set("sid-nul", sessionData(60_000, { s: "a\u0000b" })).catch((e) => e);
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(((await store.get("sid-nul")) as any).n).toBe(1);
  });

  it("reports a corrupt row as an error event and treats it as missing, other sessions unaffected", async () => {
    await store.set("sid-good", sessionData(60_000, { ok: true }));
    await store.set("sid-corrupt", sessionData(60_000));
    await t.raw(`update $table set data = '[1,2]'::jsonb where data->>'ok' is null`);
    const errors: Error[] = [];
    store.on("error", (e) => errors.push(e));
    expect(await store.get("sid-corrupt")).toBeNull();
    expect(errors).toHaveLength(1);
    expect(errors[0]!.message).toMatch(/no valid session/);
    expect(errors[0]!.message).not.toContain("sid-corrupt");
    expect(((await store.get("sid-good")) as any).ok).toBe(true);
  });

  it("calls each callback once, on a later tick, with the result", async () => {
    await store.set("sid-cb", sessionData(60_000, { v: 1 }));
    const calls: unknown[][] = [];
    let sync = true;
    const done = new Promise<void>((resolve) =>
      store.get("sid-cb", (...args) => {
        calls.push([sync, ...args]);
        resolve();
      }),
    );
    sync = false;
    await done;
    expect(calls).toHaveLength(1);
    expect(calls[0]![0]).toBe(false);
    expect(calls[0]![1]).toBeNull();
    expect((calls[0]![2] as any).v).toBe(1);
    await new Promise<void>((resolve, reject) => store.length((err, n) => (err ? reject(err) : (expect(n).toBe(1), resolve()))));
  });

  it("a callback that throws is not called again and its error is not swallowed", async () => {
    const saved = process.listeners("uncaughtException");
    process.removeAllListeners("uncaughtException");
    try {
      const thrown = new Promise<Error>((resolve) => process.once("uncaughtException", resolve));
      let calls = 0;
      const result = store.get("sid-x", () => {
        calls++;
        throw new Error("app bug");
      });
      await expect(result).resolves.toBeNull();
      expect((await thrown).message).toBe("app bug");
      await sleep(20);
      expect(calls).toBe(1);
    } finally {
      for (const l of saved) process.on("uncaughtException", l as any);
    }
  });

  it("passes database errors to the callback, not as an unhandled rejection", async () => {
    const missing = new SessionStore({ db: t.db, table: createSessionTable("no_such_table", { schema: t.schema }) });
    const err = await new Promise<any>((resolve) => missing.get("x", (e) => resolve(e)));
    expect(err).toBeInstanceOf(SessionStoreError);
    expect(err.code).toBe("TABLE_MISSING");
    expect(err.message).toMatch(
      /table .*no_such_table.* not found; run the migrations \(await migrate\(db\) from connect-drizzle, or your driver's drizzle migrator on its migrationsFolder\)/,
    );
    expect(err.cause).toBeDefined();
  });

  it("hashes ids with HMAC when given secrets, and accepts rows keyed under an older secret", async () => {
    const v1 = new SessionStore({ db: t.db, table: t.table, secrets: ["secret-1"] });
    const v2 = new SessionStore({ db: t.db, table: t.table, secrets: ["secret-2", "secret-1"] });
    const plain = new SessionStore({ db: t.db, table: t.table });
    await v1.set("sid-rot", sessionData(60_000, { n: 1 }));
    expect(await plain.get("sid-rot")).toBeNull();
    expect(((await v2.get("sid-rot")) as any).n).toBe(1);
    await v2.set("sid-rot", sessionData(60_000, { n: 2 }));
    expect(await t.raw(`select 1 from $table`)).toHaveLength(1);
    expect(((await v2.get("sid-rot")) as any).n).toBe(2);
    await v2.destroy("sid-rot");
    expect(await v1.get("sid-rot")).toBeNull();
    // New sessions are keyed under the first secret only.
    await v2.set("sid-new", sessionData(60_000));
    expect(await v1.get("sid-new")).toBeNull();
    expect(await new SessionStore({ db: t.db, table: t.table, secrets: "secret-2" }).get("sid-new")).not.toBeNull();
  });

  it("a read-and-touch of a fresh session costs one statement and no write", async () => {
    await store.set("sid-q", sessionData(3_600_000));
    t.statements.length = 0;
    // As express-session does: the loaded object is touched, or saved unchanged, with a slid expiry.
    const loaded: any = await store.get("sid-q");
    loaded.cookie.expires = new Date(Date.now() + 3_600_000).toISOString();
    await store.touch("sid-q", loaded);
    await store.set("sid-q", loaded);
    expect(t.statements).toHaveLength(1);
    expect(t.statements[0]).toMatch(/^select/i);
    // A real change is written.
    loaded.n = 1;
    await store.set("sid-q", loaded);
    expect(t.statements).toHaveLength(2);
    expect(((await store.get("sid-q")) as any).n).toBe(1);
  });

  it("a request that only read a session never undoes another request's change to it (two tabs)", async () => {
    await store.set("tabs", sessionData(3_600_000, { cart: [] }));
    const tabA: any = await store.get("tabs");
    const tabB: any = await store.get("tabs");
    tabB.cart.push("book");
    await store.set("tabs", tabB);
    await store.set("tabs", tabA); // tab A saves (resave: true) without having changed anything
    expect(((await store.get("tabs")) as any).cart).toEqual(["book"]);
  });

  it("with merge: false, the last real change wins on the whole session", async () => {
    const whole = new SessionStore({ db: t.db, table: t.table, merge: false });
    await whole.set("lww", sessionData(3_600_000, { a: 0, b: 0 }));
    const tabA: any = await whole.get("lww");
    const tabB: any = await whole.get("lww");
    tabA.a = 1;
    tabB.b = 1;
    await whole.set("lww", tabA);
    await whole.set("lww", tabB);
    expect(await whole.get("lww")).toMatchObject({ a: 0, b: 1 });
  });

  it("with versioned, a save over another request's change fails with CONFLICT and loses nothing", async () => {
    const cas = new SessionStore({ db: t.db, table: t.table, versioned: true });
    await cas.set("cas", sessionData(3_600_000, { a: 0, b: 0 }));
    const tabA: any = await cas.get("cas");
    const tabB: any = await cas.get("cas");
    tabA.a = 1;
    tabB.b = 1;
    await cas.set("cas", tabA);
    await expect(cas.set("cas", tabB)).rejects.toMatchObject({ code: "CONFLICT", message: /changed by another request/ });
    expect(await cas.get("cas")).toMatchObject({ a: 1, b: 0 });
    // Saving twice in one request is not a conflict with itself; a destroyed session is no conflict.
    tabA.a = 2;
    await cas.set("cas", tabA);
    await cas.destroy("cas");
    await expect(cas.set("cas", tabA)).resolves.toBeUndefined();
    expect(await cas.get("cas")).toBeNull();
  });

  it.runIf(driver !== "pglite")("turns a database that does not answer into a TIMEOUT error, not a hung request", async () => {
    const quick = new SessionStore({ db: t.db, table: t.table, timeout: 300 });
    await quick.set("slow", sessionData(60_000));
    const { default: pg } = await import("pg");
    const locker = new pg.Client({ connectionString: process.env.DATABASE_URL });
    await locker.connect();
    try {
      await locker.query(`begin; lock table "${t.schema}".sessions in access exclusive mode`);
      await expect(quick.get("slow")).rejects.toMatchObject({ code: "TIMEOUT" });
      await expect(new Promise((resolve) => quick.set("slow", sessionData(60_000, { n: 1 }), resolve))).resolves.toMatchObject({
        code: "TIMEOUT",
      });
      await locker.query("rollback");
      expect(await quick.get("slow")).not.toBeNull();
    } finally {
      await locker.end();
    }
  });
});

describe("SessionStore options", () => {
  let t: TestDb;
  beforeAll(async () => {
    t = await openDb("pglite");
  });
  afterAll(async () => {
    await t?.close();
  });

  it("throws a TypeError that says what to do for a missing or wrong db", () => {
    expect(() => new SessionStore(undefined as any)).toThrow(TypeError);
    expect(() => new SessionStore({} as any)).toThrow(/`db` option is required/);
    expect(() => new SessionStore({ db: { execute() {} } } as any)).toThrow(/not a drizzle Postgres database/);
  });

  it.each([
    ["ttl", 0],
    ["ttl", -5],
    ["ttl", Number.NaN],
    ["ttl", "1d"],
    ["idleTimeout", 0],
    ["absoluteTimeout", -1],
    ["maxSize", 0],
    ["touchAfter", -1],
    ["timeout", 0],
  ])("rejects %s = %j at construction", (name, value) => {
    expect(() => new SessionStore({ db: t.db, [name]: value } as any)).toThrow(new RegExp(`\`${name}\` must be a`));
  });

  it("rejects bad secrets and userId", () => {
    expect(() => new SessionStore({ db: t.db, secrets: [""] })).toThrow(/secrets/);
    expect(() => new SessionStore({ db: t.db, userId: "passport.user" as any })).toThrow(/userId/);
  });
});
