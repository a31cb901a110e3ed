import { randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { getTableConfig } from "drizzle-orm/pg-core";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePgProxy } from "drizzle-orm/pg-proxy";
import pg from "pg";
import request from "supertest";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SessionStore, type SessionEndedEvent, type SessionStoreOptions, type UserIdType } from "../src/index.js";
import { rowsOf } from "./support/internals.js";
import { cookieOf, testApp } from "./support/app.js";
import { cacheReady, drivers, eventually, openDb, openPeer, sessionData, sleep, typedTable, type Peer, type TestDb, useTestDb } from "./support/db.js";
import { internals } from "./support/internals.js";

const HOUR = 3_600_000;

describe.each(drivers)("maxSessionsPerUser on %s", (driver) => {
  let t: TestDb;
  let peer: Peer | undefined;
  const stores: SessionStore[] = [];
  useTestDb(driver, (db) => void (t = db));
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });
  afterAll(async () => {
    await peer?.close();
  });
  /** Another instance's connection (its own pool; PGlite's one connection). */
  const other = async () => (peer ??= await openPeer(t));

  function storeWith(options: Partial<SessionStoreOptions> = {}): { store: SessionStore; ended: SessionEndedEvent[] } {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, maxSessionsPerUser: 3, ...options });
    stores.push(store);
    const ended: SessionEndedEvent[] = [];
    store.on("ended", (event) => void ended.push(event));
    return { store, ended };
  }

  const liveOf = async (user: string) =>
    Number((await t.raw(`select count(*)::int as n from $table where user_id = '${user}' and ended_at is null and expires_at > statement_timestamp()`))[0].n);

  async function login(app: any, user: string, agent = "Firefox/140"): Promise<string> {
    const res = await request(app).post("/login").set("User-Agent", agent).send({ username: user, password: "pw" });
    expect(res.status).toBe(200);
    return cookieOf(res)!;
  }

  it("cap 3: the 4th login ends the least recently used session (evicted), announced as ended; the other three go on", async () => {
    const { store, ended } = storeWith();
    const app = testApp(store);
    const cookies: string[] = [];
    for (let i = 0; i < 4; i++) {
      cookies.push(await login(app, "ann", `Agent/${i}`));
      // The first session is used after the second login: the second is then the least recently used.
      if (i === 1) await t.raw(`update $table set last_seen_at = last_seen_at - interval '1 minute' where user_agent = 'Agent/1'`);
    }
    expect(await liveOf("ann")).toBe(3);
    const status = await Promise.all(cookies.map(async (c) => (await request(app).get("/me").set("Cookie", c)).status));
    expect(status).toEqual([200, 401, 200, 200]);
    expect(ended).toHaveLength(1);
    expect(ended[0]).toMatchObject({ reason: "evicted", userId: "ann", userAgent: "Agent/1", local: true });
    const handles = (await store.list({ userId: "ann" })).map((r) => r.handle);
    expect(handles).not.toContain(ended[0]!.handle);
  });

  it("with retainEnded, the evicted session is kept as history (end reason evicted); a login that gains a user without regenerate counts too", async () => {
    const { store } = storeWith({ retainEnded: HOUR });
    for (const sid of ["h1", "h2", "h3"]) {
      await store.set(sid, sessionData(HOUR, { userId: "ann" }));
      await sleep(5);
    }
    // An anonymous session that signs in (no new id): the login write is its update.
    await store.set("h4", sessionData(HOUR, { views: 1 }));
    const anonymous = (await store.get("h4"))!;
    (anonymous as any).userId = "ann";
    await store.set("h4", anonymous);
    expect(await store.get("h1")).toBeNull();
    expect(await liveOf("ann")).toBe(3);
    const [history] = await store.list({ userId: "ann", status: "ended" });
    expect(history).toMatchObject({ endReason: "evicted", status: "ended" });
    // A save of a session that already had its user is no login: nothing more is evicted.
    const again = (await store.get("h4"))!;
    (again as any).views = 2;
    await store.set("h4", again);
    expect(await liveOf("ann")).toBe(3);
    expect(await store.count({ userId: "ann", status: "ended" })).toBe(1);
  });

  it("10 racing logins of one user: a sampler on another connection never sees more than 3 live sessions, and exactly 3 remain", async () => {
    const { store, ended } = storeWith();
    const sampling = (await other()).db;
    let done = false;
    let most = 0;
    let samples = 0;
    const count = sql.raw(
      `select count(*)::int as n from "${t.schema}"."sessions" where user_id = 'ann' and ended_at is null and expires_at > statement_timestamp()`,
    );
    const sampler = (async () => {
      while (!done) {
        most = Math.max(most, Number(rowsOf<{ n: number }>(await sampling.execute(count))[0]!.n));
        samples++;
        await new Promise((resolve) => setImmediate(resolve));
      }
    })();
    const sids = Array.from({ length: 10 }, (_, i) => `race-${i}`);
    await Promise.all(sids.map((sid) => store.set(sid, sessionData(HOUR, { passport: { user: "ann" } }))));
    done = true;
    await sampler;
    expect(samples).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(3);
    expect(await liveOf("ann")).toBe(3);
    expect(ended.map((e) => e.reason)).toEqual(Array(7).fill("evicted"));
    const served = (await Promise.all(sids.map((sid) => store.get(sid)))).filter((s) => s !== null);
    expect(served).toHaveLength(3);
  });

  it("with broadcast, another instance hears each eviction as ended (evicted, local: false)", async () => {
    // Events are sealed under keys derived from `secrets`, the same on every instance.
    const secrets = "caps-test-secret-0123456789abcdefghij";
    const { store } = storeWith({ broadcast: true, secrets, maxSessionsPerUser: 1 });
    const listener = new SessionStore({ db: (await other()).db, table: t.table, reaper: false, broadcast: true, secrets });
    stores.push(listener);
    const heard: SessionEndedEvent[] = [];
    listener.on("ended", (event) => void heard.push(event));
    let up = false;
    listener.on("created", () => void (up = true));
    // Until its LISTEN connection is up, what the other instance sends is not heard.
    expect(await eventually(async () => (up || (await store.set(`warm-${Math.random()}`, sessionData(HOUR))), up), 10_000)).toBe(true);
    await store.set("b1", sessionData(HOUR, { userId: "ann" }));
    await store.set("b2", sessionData(HOUR, { userId: "ann" }));
    expect(await eventually(() => heard.length > 0, 10_000)).toBe(true);
    expect(heard).toEqual([expect.objectContaining({ reason: "evicted", userId: "ann", local: false })]);
  });

  it("anonymous sessions and other users' sessions are untouched", async () => {
    const { store } = storeWith();
    for (let i = 0; i < 4; i++) await store.set(`anon-${i}`, sessionData(HOUR, { views: i }));
    for (let i = 0; i < 3; i++) await store.set(`bob-${i}`, sessionData(HOUR, { userId: "bob" }));
    for (let i = 0; i < 5; i++) await store.set(`ann-${i}`, sessionData(HOUR, { userId: "ann" }));
    expect(await liveOf("ann")).toBe(3);
    expect(await liveOf("bob")).toBe(3);
    expect(Number((await t.raw(`select count(*)::int as n from $table where user_id is null`))[0].n)).toBe(4);
    for (let i = 0; i < 4; i++) expect(await store.get(`anon-${i}`)).not.toBeNull();
  });

  /**
   * Rounds of racing logins of one user, each spelling the id differently (Postgres reads them all as one
   * value of the column's type), through two instances: the most live sessions seen after a round.
   */
  async function raceSpellings(type: UserIdType, spellings: string[], canonical: string): Promise<number> {
    const table = await typedTable(t, type);
    const options = { table, reaper: false, maxSessionsPerUser: 2, userId: (s: any) => s.uid } as const;
    const instances = [new SessionStore({ db: t.db, ...options }), new SessionStore({ db: (await other()).db, ...options })];
    stores.push(...instances);
    const { name } = getTableConfig(table);
    let most = 0;
    for (let round = 0; round < 8; round++) {
      await Promise.all(spellings.map((uid, i) => instances[(round + i) % 2]!.set(`${type}-${round}-${i}`, sessionData(HOUR, { uid }))));
      const [row] = await t.raw(
        `select count(*)::int as n from "${t.schema}"."${name}" where user_id = '${canonical}' and ended_at is null and expires_at > statement_timestamp()`,
      );
      most = Math.max(most, Number(row.n));
    }
    return most;
  }

  it("racing logins of one uuid user spelt differently never leave more than the cap", async () => {
    const id = randomUUID();
    const mixed = [...id].map((c, i) => (i % 2 ? c.toUpperCase() : c)).join("");
    expect(await raceSpellings("uuid", [id, id.toUpperCase(), mixed], id)).toBe(2);
  });

  it("racing logins of one integer user spelt differently (7, 07, 007) never leave more than the cap", async () => {
    expect(await raceSpellings("integer", ["7", "07", "007"], "7")).toBe(2);
  });

  it("extend of an expired session never leaves its user over the cap: it evicts the least recently used other one, announced as ended", async () => {
    const cases = [
      ["ann", { userId: "ann" }, 0],
      ["bob", { anyOwner: true }, 0],
      ["cyd", { userId: "cyd" }, HOUR],
    ] as const;
    for (const [user, scope, retainEnded] of cases) {
      const { store, ended } = storeWith({ maxSessionsPerUser: 2, retainEnded });
      await store.set(`${user}-old`, sessionData(HOUR, { userId: user }));
      // It expires, and is not reaped yet.
      await t.raw(`update $table set expires_at = statement_timestamp() - interval '1 minute' where user_id = '${user}'`);
      await store.set(`${user}-2`, sessionData(HOUR, { userId: user }));
      await t.raw(`update $table set last_seen_at = last_seen_at - interval '1 minute' where user_id = '${user}' and expires_at > statement_timestamp()`);
      await store.set(`${user}-3`, sessionData(HOUR, { userId: user }));
      expect(await liveOf(user)).toBe(2);
      expect(await store.get(`${user}-2`)).not.toBeNull();
      const [old] = await store.list({ userId: user, status: "expired" });
      expect(await store.extend(old!.handle, new Date(Date.now() + HOUR), scope)).toBe(true);
      expect(await liveOf(user)).toBe(2);
      expect(await store.get(`${user}-old`)).not.toBeNull();
      expect(await store.get(`${user}-2`)).toBeNull();
      expect(await store.get(`${user}-3`)).not.toBeNull();
      expect(ended).toEqual([expect.objectContaining({ reason: "evicted", userId: user, local: true })]);
      if (retainEnded) expect(await store.list({ userId: user, status: "ended" })).toEqual([expect.objectContaining({ endReason: "evicted" })]);
      // Extending a live session makes no session live: nothing more ends.
      expect(await store.extend(old!.handle, new Date(Date.now() + 2 * HOUR), scope)).toBe(true);
      expect(await liveOf(user)).toBe(2);
      expect(ended).toHaveLength(1);
    }
  });

  it("a set of an expired session's id that this store did not load never leaves its user over the cap", async () => {
    const { store, ended } = storeWith({ maxSessionsPerUser: 2 });
    await store.set("old", sessionData(HOUR, { userId: "ann" }));
    await t.raw(`update $table set expires_at = statement_timestamp() - interval '1 minute'`);
    await store.set("s2", sessionData(HOUR, { userId: "ann" }));
    await t.raw(`update $table set last_seen_at = last_seen_at - interval '1 minute' where expires_at > statement_timestamp()`);
    await store.set("s3", sessionData(HOUR, { userId: "ann" }));
    // A direct set of the old id (not loaded here): its row exists, so it is updated, and live again.
    await store.set("old", sessionData(HOUR, { userId: "ann" }));
    expect(await store.get("old")).not.toBeNull();
    expect(await liveOf("ann")).toBe(2);
    expect(await store.get("s2")).toBeNull();
    expect(ended).toEqual([expect.objectContaining({ reason: "evicted", userId: "ann" })]);
  });

  /** A store that refuses sign-ins past `limit`, with the `ended` and `created` events it announced. */
  function refusing(limit: number, options: Partial<SessionStoreOptions> = {}) {
    const made = storeWith({ maxSessionsPerUser: { limit, whenFull: "refuse" }, ...options });
    const created: string[] = [];
    made.store.on("created", (event) => void created.push(event.handle));
    return { ...made, created };
  }

  const refusal = { name: "SessionStoreError", code: "SESSION_LIMIT", status: 403 };

  it('whenFull "refuse": a new session of a user at the limit fails with SESSION_LIMIT (403), naming no user, and stores nothing; the others go on', async () => {
    const { store, ended, created } = refusing(2);
    await store.set("s1", sessionData(HOUR, { userId: "ann" }));
    await store.set("s2", sessionData(HOUR, { userId: "ann" }));
    const error = await store.set("s3", sessionData(HOUR, { userId: "ann" })).catch((e) => e);
    expect(error).toMatchObject(refusal);
    expect(error.message).toMatch(/sign out on another device/);
    expect(error.message).not.toMatch(/ann/);
    expect(Number((await t.raw(`select count(*)::int as n from $table`))[0].n)).toBe(2);
    expect(await store.get("s3")).toBeNull();
    expect(await store.get("s1")).not.toBeNull();
    expect(await store.get("s2")).not.toBeNull();
    expect(ended).toEqual([]);
    expect(created).toHaveLength(2);
    // Another user, and an anonymous session, are not the user's: they are stored.
    await store.set("b1", sessionData(HOUR, { userId: "bob" }));
    await store.set("anon", sessionData(HOUR, { views: 1 }));
    expect(await store.get("b1")).not.toBeNull();
    // Once one of the user's sessions ends, the sign-in goes through.
    await store.destroy("s1");
    await store.set("s3", sessionData(HOUR, { userId: "ann" }));
    expect(await liveOf("ann")).toBe(2);
  });

  it('whenFull "refuse": a loaded session that gains a user at the limit is refused and stays as it was, anonymous', async () => {
    const { store, ended } = refusing(2);
    await store.set("s1", sessionData(HOUR, { userId: "ann" }));
    await store.set("s2", sessionData(HOUR, { userId: "ann" }));
    await store.set("anon", sessionData(HOUR, { views: 1 }));
    const loaded = (await store.get("anon"))!;
    (loaded as any).userId = "ann";
    (loaded as any).views = 2;
    await expect(store.set("anon", loaded)).rejects.toMatchObject(refusal);
    expect(await store.get("anon")).toMatchObject({ views: 1 });
    expect(await store.get("anon")).not.toHaveProperty("userId");
    expect((await t.raw(`select user_id from $table where user_id is null`)).length).toBe(1);
    expect(await liveOf("ann")).toBe(2);
    expect(ended).toEqual([]);
  });

  it('whenFull "refuse": a set of an expired session\'s id that this store did not load, at the limit, is refused and the session stays expired', async () => {
    const { store } = refusing(2);
    await store.set("old", sessionData(HOUR, { userId: "ann" }));
    await t.raw(`update $table set expires_at = statement_timestamp() - interval '1 minute'`);
    await store.set("s2", sessionData(HOUR, { userId: "ann" }));
    await store.set("s3", sessionData(HOUR, { userId: "ann" }));
    await expect(store.set("old", sessionData(HOUR, { userId: "ann", views: 9 }))).rejects.toMatchObject(refusal);
    expect(await store.get("old")).toBeNull();
    expect(await store.count({ userId: "ann", status: "expired" })).toBe(1);
    expect(await liveOf("ann")).toBe(2);
  });

  it('whenFull "refuse": extend of an expired session at the limit fails with SESSION_LIMIT and changes nothing; of a live one it is no sign-in', async () => {
    const { store, ended } = refusing(2);
    await store.set("old", sessionData(HOUR, { userId: "ann" }));
    await t.raw(`update $table set expires_at = statement_timestamp() - interval '1 minute'`);
    await store.set("s2", sessionData(HOUR, { userId: "ann" }));
    await store.set("s3", sessionData(HOUR, { userId: "ann" }));
    const [old] = await store.list({ userId: "ann", status: "expired" });
    const [before] = await t.raw(`select expires_at::text as at, version from $table where handle = '${old!.handle}'`);
    await expect(store.extend(old!.handle, new Date(Date.now() + HOUR), { userId: "ann" })).rejects.toMatchObject(refusal);
    expect(await t.raw(`select expires_at::text as at, version from $table where handle = '${old!.handle}'`)).toEqual([before]);
    expect(await store.get("old")).toBeNull();
    expect(await liveOf("ann")).toBe(2);
    expect(ended).toEqual([]);
    // A live session extended makes no session live: never refused.
    const [live] = await store.list({ userId: "ann" });
    expect(await store.extend(live!.handle, new Date(Date.now() + 2 * HOUR), { anyOwner: true })).toBe(true);
    // With a place free, the expired one is revalidated.
    await store.destroy("s2");
    expect(await store.extend(old!.handle, new Date(Date.now() + HOUR), { userId: "ann" })).toBe(true);
    expect(await store.get("old")).not.toBeNull();
  });

  it('whenFull "refuse": re-saving a signed-in session is no sign-in, even over a lowered limit, and a set of its own live id is not refused', async () => {
    // Three sessions under a limit of 3, then the limit lowered to 2: the user is over it.
    const before = storeWith({ maxSessionsPerUser: 3 }).store;
    for (const sid of ["s1", "s2", "s3"]) await before.set(sid, sessionData(HOUR, { userId: "ann" }));
    const { store } = refusing(2);
    const loaded = (await store.get("s1"))!;
    (loaded as any).views = 1;
    await store.set("s1", loaded);
    expect(await store.get("s1")).toMatchObject({ views: 1 });
    // A direct set of one of the user's live sessions (not loaded here) makes no session live.
    await store.set("s2", sessionData(HOUR, { userId: "ann", views: 2 }));
    expect(await store.get("s2")).toMatchObject({ views: 2 });
    expect(await liveOf("ann")).toBe(3);
    await expect(store.set("s4", sessionData(HOUR, { userId: "ann" }))).rejects.toMatchObject(refusal);
  });

  it('whenFull "refuse": a login that regenerates a signed-in session of the user (passport) is not refused at the limit; a new device is, as a 403 through the app\'s error handler', async () => {
    const { store } = refusing(2);
    const app = testApp(store);
    const first = await login(app, "ann", "Agent/1");
    await login(app, "ann", "Agent/2");
    // Signing in again on the first device: regenerate ends its session, and the new one takes its place.
    const res = await request(app).post("/login").set("Cookie", first).set("User-Agent", "Agent/1").send({ username: "ann", password: "pw" });
    expect(res.status).toBe(200);
    const again = cookieOf(res)!;
    expect(again).not.toBe(first);
    expect(await liveOf("ann")).toBe(2);
    // A third device: the store's error reaches the app's error handler, which answers with its status.
    const refused = await request(app).post("/login").set("User-Agent", "Agent/3").send({ username: "ann", password: "pw" });
    expect(refused.status).toBe(403);
    expect(refused.body.error).toMatch(/^connect-drizzle: the user already has as many signed-in sessions as maxSessionsPerUser allows/);
    expect(await liveOf("ann")).toBe(2);
    expect((await request(app).get("/me").set("Cookie", again)).body).toEqual({ user: "ann" });
    // The refused sign-in left no row behind.
    expect(await store.count({ userId: "ann", status: "all" })).toBe(2);
  });

  it("{ limit } without whenFull evicts, as a plain number does", async () => {
    const { store, ended } = storeWith({ maxSessionsPerUser: { limit: 2 } });
    for (const sid of ["s1", "s2", "s3"]) {
      await store.set(sid, sessionData(HOUR, { userId: "ann" }));
      await sleep(5);
    }
    expect(await liveOf("ann")).toBe(2);
    expect(await store.get("s1")).toBeNull();
    expect(ended).toEqual([expect.objectContaining({ reason: "evicted", userId: "ann" })]);
  });

  it('whenFull "refuse": 10 racing logins of one user with limit 3 leave exactly 3 live sessions and fail 7 times with SESSION_LIMIT, ending none', async () => {
    const { store, ended } = refusing(3);
    const sids = Array.from({ length: 10 }, (_, i) => `race-${i}`);
    const results = await Promise.allSettled(sids.map((sid) => store.set(sid, sessionData(HOUR, { passport: { user: "ann" } }))));
    const refused = results.filter((r) => r.status === "rejected");
    expect(refused.map((r) => (r as PromiseRejectedResult).reason.code)).toEqual(Array(7).fill("SESSION_LIMIT"));
    expect(await liveOf("ann")).toBe(3);
    expect(Number((await t.raw(`select count(*)::int as n from $table`))[0].n)).toBe(3);
    const served = (await Promise.all(sids.map((sid) => store.get(sid)))).filter((s) => s !== null);
    expect(served).toHaveLength(3);
    expect(ended).toEqual([]);
  });

  it("the login's wait for its user's lock is bounded by timeout: it fails with TIMEOUT and writes nothing", async () => {
    // PGlite has one connection: a transaction holding the lock there would hold every statement.
    if (driver === "pglite") return;
    const { store } = storeWith({ timeout: 300 });
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let locked!: () => void;
    const holding = new Promise<void>((resolve) => (locked = resolve));
    const holder = (await other()).db.transaction(async (tx) => {
      await tx.execute(internals(store).loginLock("ann", 60_000));
      locked();
      await released;
    });
    await holding;
    const started = performance.now();
    const error = await store.set("late", sessionData(HOUR, { userId: "ann" })).catch((e) => e);
    expect(error).toMatchObject({ code: "TIMEOUT" });
    expect(performance.now() - started).toBeLessThan(3_000);
    release();
    await holder;
    await sleep(100);
    expect(await liveOf("ann")).toBe(0);
    // Another user's login does not wait for ann's lock.
    await store.set("other", sessionData(HOUR, { userId: "bob" }));
  });
});

describe.each(drivers.filter((d) => d !== "postgres.js"))("maxSessionsPerUser with the read cache on %s", (driver) => {
  let t: TestDb;
  let peer: Peer;
  let a: SessionStore;
  let b: SessionStore;
  beforeAll(async () => {
    t = await openDb(driver);
    peer = await openPeer(t);
  });
  afterAll(async () => {
    await a?.close();
    await b?.close();
    await peer?.close();
    await t?.close();
  });

  it("an evicted session is never served again, by this instance or from another instance's cache", async () => {
    a = new SessionStore({ db: t.db, table: t.table, reaper: false, cache: {}, maxSessionsPerUser: 2 });
    b = new SessionStore({ db: peer.db, table: t.table, reaper: false, cache: {}, maxSessionsPerUser: 2 });
    expect(await cacheReady(a)).toBe(true);
    expect(await cacheReady(b)).toBe(true);
    const app = testApp(a);
    const first = await request(app).post("/login").send({ username: "ann", password: "pw" });
    const cookie = cookieOf(first)!;
    const sid = decodeURIComponent(cookie.split("=")[1]!).slice(2).split(".")[0]!;
    // Both instances have it cached (a read served with no query).
    expect(await a.get(sid)).not.toBeNull();
    expect(await b.get(sid)).not.toBeNull();
    t.statements.length = 0;
    expect(await b.get(sid)).not.toBeNull();
    expect(t.statements).toEqual([]);

    await b.set("second", sessionData(HOUR, { passport: { user: "ann" } }));
    await b.set("third", sessionData(HOUR, { passport: { user: "ann" } }));
    // The instance that evicted it never serves it again, at once.
    expect(await b.get(sid)).toBeNull();
    // The other one stops once the NOTIFY of the same statement reaches it, and never serves it after.
    expect(await eventually(async () => (await a.get(sid)) === null)).toBe(true);
    expect((await request(app).get("/me").set("Cookie", cookie)).status).toBe(401);
    for (let i = 0; i < 20; i++) expect(await a.get(sid)).toBeNull();
  });
});

describe("maxSessionsPerUser refuses", () => {
  it("what is not a positive whole number of sessions", () => {
    const db = drizzlePgProxy(async () => ({ rows: [] }));
    for (const bad of [0, -1, 2.5, "3", Number.NaN]) {
      expect(() => new SessionStore({ db, reaper: false, maxSessionsPerUser: bad as any })).toThrow(
        /^connect-drizzle: `maxSessionsPerUser` must be a positive whole number of sessions/,
      );
    }
  });

  it("a driver without interactive transactions (pg-proxy), naming it, at construction", () => {
    const db = drizzlePgProxy(async () => ({ rows: [] }));
    expect(() => new SessionStore({ db, reaper: false, maxSessionsPerUser: 3 })).toThrow(
      /^connect-drizzle: `maxSessionsPerUser` needs a transaction held open across statements .*drizzle-orm\/pg-proxy cannot do.*remove `maxSessionsPerUser`/,
    );
    // Without the cap that database is fine.
    expect(() => new SessionStore({ db, reaper: false })).not.toThrow();
  });

  it("a single node-postgres Client (other requests' statements would run inside a login's transaction), but not a pool", () => {
    const client = drizzlePg({ client: new pg.Client({ connectionString: "postgres://127.0.0.1:1/none" }) });
    expect(() => new SessionStore({ db: client, reaper: false, maxSessionsPerUser: 3 })).toThrow(
      /^connect-drizzle: `maxSessionsPerUser` cannot be safe on a single node-postgres Client: .*give the store a pg\.Pool/,
    );
    const pool = drizzlePg({ client: new pg.Pool({ connectionString: "postgres://127.0.0.1:1/none" }) });
    expect(() => new SessionStore({ db: pool, reaper: false, maxSessionsPerUser: 3 })).not.toThrow();
  });
});
