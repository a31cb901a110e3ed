import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { SessionStore } from "../src/index.js";
import { internals } from "./support/internals.js";
import { cacheReady, DATABASE_URL, eventually, openDb, sessionData, sleep, type TestDb } from "./support/db.js";

/** Whether a read of `sid` is served with no query (once the NOTIFY of the write that made it has arrived). */
const servedFromCache = (store: SessionStore, t: TestDb, sid: string) =>
  eventually(async () => {
    await store.get(sid);
    t.statements.length = 0;
    const session = await store.get(sid);
    return session !== null && t.statements.length === 0;
  });

describe("read cache on PGlite", () => {
  let t: TestDb;
  let store: SessionStore;
  beforeAll(async () => {
    t = await openDb("pglite");
  });
  afterAll(async () => {
    await store?.close();
    await t?.close();
  });
  beforeEach(async () => {
    await store?.close();
    store = new SessionStore({ db: t.db, table: t.table, cache: { max: 100, ttl: 60_000 } });
    await store.clear();
    expect(await cacheReady(store)).toBe(true);
  });

  it("serves a repeated read with no query, as a fresh copy each time", async () => {
    await store.set("c1", sessionData(60_000, { cart: [1] }));
    const first: any = await store.get("c1");
    t.statements.length = 0;
    const second: any = await store.get("c1");
    expect(t.statements).toHaveLength(0);
    second.cart.push(2);
    expect(((await store.get("c1")) as any).cart).toEqual([1]);
    expect(first.cart).toEqual([1]);
  });

  it("never serves a cached session past its expiry", async () => {
    await store.set("c2", { cookie: { expires: new Date(Date.now() + 1_000) } } as any);
    expect(await store.get("c2")).not.toBeNull();
    await sleep(1_100);
    expect(await store.get("c2")).toBeNull();
  });

  it("a destroy or revoke through this store is seen at once", async () => {
    await store.set("c3", sessionData(60_000, { passport: { user: "ann" } }));
    await store.get("c3");
    await store.revoke((await store.handleOf("c3"))!, { anyOwner: true });
    expect(await store.get("c3")).toBeNull();
  });

  it("refuses a result in flight across an eviction of its own session, of every session (clear), or of more keys than it remembers", async () => {
    const cache = internals(store).cache!;
    const [mine] = internals(store).keysOf("c4");
    const [theirs] = internals(store).keysOf("c5");
    let since = cache.evictions;
    await store.destroy("c4");
    expect([cache.accepts(mine!, since), cache.accepts(theirs!, since)]).toEqual([false, true]);
    since = cache.evictions;
    await store.clear();
    expect(cache.accepts(theirs!, since)).toBe(false);
    since = cache.evictions;
    cache.evict(Array.from({ length: 5_000 }, (_, i) => `unrelated-${i}`));
    expect(cache.accepts(theirs!, since)).toBe(false);
    expect(cache.accepts(theirs!, cache.evictions)).toBe(true);
  });

  it("a save by a request that read the session before it got a new id is not cached under the old id: after a sign-out, neither id is served", async () => {
    const brief = new SessionStore({ db: t.db, table: t.table, cache: { max: 100, ttl: 60_000 }, rotationGrace: 50 });
    expect(await cacheReady(brief)).toBe(true);
    await brief.set("r1", sessionData(60_000, { cart: [1] }));
    const held: any = await brief.get("r1");
    expect(await brief.rotate("r1", "r1-new")).toBe(true);
    // The request that read it under the old id saves: the write lands in the session's row, under its new id.
    held.cart.push(2);
    await brief.set("r1", held);
    expect(((await brief.get("r1-new")) as any).cart).toEqual([1, 2]);
    await brief.destroy("r1-new");
    await sleep(100);
    expect(await brief.get("r1-new")).toBeNull();
    // Past the old id's grace window: nothing, from the database (no session), never the ended one from the cache.
    expect(await brief.get("r1")).toBeNull();
    await brief.close();
  });

  it("rejects a cache on a driver without LISTEN support, at construction", () => {
    const fake = Object.create(t.db);
    Object.defineProperty(fake, "$client", { value: {} });
    expect(() => new SessionStore({ db: fake, table: t.table, cache: {} })).toThrow(/cache.*node-postgres/);
    expect(() => new SessionStore({ db: t.db, table: t.table, cache: { max: 0 } })).toThrow(/`max` must be a positive/);
  });
});

describe.runIf(DATABASE_URL)("read cache across instances (node-postgres, two pools)", () => {
  let a: TestDb;
  let b: TestDb;
  let cached: SessionStore;
  let other: SessionStore;

  beforeAll(async () => {
    a = await openDb("node-postgres");
    // Instance B: its own pool on the same table.
    b = await openDb("node-postgres");
    b.table = a.table;
  });
  afterAll(async () => {
    await cached?.close();
    await b?.close();
    await a?.close();
  });
  beforeEach(async () => {
    await cached?.close();
    cached = new SessionStore({ db: a.db, table: a.table, cache: {} });
    // Every instance sharing the table notifies when any of them caches.
    other = new SessionStore({ db: b.db, table: a.table, notify: true });
    await other.clear();
    expect(await cacheReady(cached)).toBe(true);
  });

  it("a revoke on another instance stops the session here too", async () => {
    await other.set("x1", sessionData(60_000, { passport: { user: "ann" } }));
    expect(await servedFromCache(cached, a, "x1")).toBe(true);
    const started = Date.now();
    await other.revoke((await other.handleOf("x1"))!, { anyOwner: true });
    expect(await eventually(async () => (await cached.get("x1")) === null)).toBe(true);
    console.log(`revoke seen by the other instance after ${Date.now() - started} ms`);
  });

  it("a data change and a logout on another instance are seen here", async () => {
    await other.set("x2", sessionData(60_000, { n: 1 }));
    expect(((await cached.get("x2")) as any).n).toBe(1);
    await other.set("x2", sessionData(60_000, { n: 2 }));
    expect(await eventually(async () => ((await cached.get("x2")) as any)?.n === 2)).toBe(true);
    await other.destroy("x2");
    expect(await eventually(async () => (await cached.get("x2")) === null)).toBe(true);
  });

  it("keeps caching while other sessions are written and ended on both instances: a change refuses only its own session's results", async () => {
    const ended = Array.from({ length: 32 }, (_, i) => `busy-end-${i}`);
    await Promise.all(ended.map((sid) => other.set(sid, sessionData(60_000))));
    await Promise.all(ended.map((sid) => cached.get(sid)));
    const fresh = Array.from({ length: 64 }, (_, i) => `busy-new-${i}`);
    // 64 logins on this instance at once, while the other instance ends 32 sessions this one has cached.
    await Promise.all([...fresh.map((sid) => cached.set(sid, sessionData(60_000, { passport: { user: sid } }))), ...ended.map((sid) => other.destroy(sid))]);
    a.statements.length = 0;
    const read = await Promise.all(fresh.map((sid) => cached.get(sid)));
    expect(read.every((session) => session !== null)).toBe(true);
    expect(a.statements).toHaveLength(0);
    expect(await eventually(async () => (await Promise.all(ended.map((sid) => cached.get(sid)))).every((session) => session === null))).toBe(true);
  });

  it("clear() on another instance empties this one's cache too", async () => {
    await other.set("x5", sessionData(60_000));
    expect(await servedFromCache(cached, a, "x5")).toBe(true);
    await other.clear();
    expect(await eventually(async () => (await cached.get("x5")) === null)).toBe(true);
  });

  it("drops the cache when the LISTEN connection is lost, so a revoke missed meanwhile is never served", async () => {
    await other.set("x3", sessionData(60_000, { passport: { user: "ann" } }));
    expect(await servedFromCache(cached, a, "x3")).toBe(true);
    const handle = (await other.handleOf("x3"))!;
    const lost = new Promise<void>((resolve) =>
      cached.once("error", (error) => {
        expect(error.message).toMatch(/LISTEN connection was lost/);
        // Revoke while this instance cannot hear about it (it reconnects after a delay).
        void other.revoke(handle, { anyOwner: true }).then(() => resolve());
      }),
    );
    await b.raw(`select pg_terminate_backend(pid) from pg_stat_activity where query ilike 'listen "connect_drizzle_${a.schema}%'`);
    await lost;
    expect(await cached.get("x3")).toBeNull();
    // After reconnecting, caching resumes.
    expect(await cacheReady(cached)).toBe(true);
    await other.set("x4", sessionData(60_000));
    expect(await servedFromCache(cached, a, "x4")).toBe(true);
  });

  it("a sign-out here of a session another instance ended just before (its NOTIFY not heard yet) leaves it served from this cache no more: revokeUser, revoke, an old id", async () => {
    // The other instance's end committed, its NOTIFY not yet heard here: as one with notify off.
    const late = new SessionStore({ db: b.db, table: a.table, notify: false });
    const cases: Array<[string, (sid: string, handle: string) => Promise<unknown>]> = [
      ["late-user", () => cached.revokeUser("ann")],
      ["late-handle", (_sid, handle) => cached.revoke(handle, { anyOwner: true })],
      ["late-old", (sid) => cached.destroy(sid)],
    ];
    for (const [sid, signOut] of cases) {
      await other.set(sid, sessionData(60_000, { passport: { user: "ann" } }));
      const handle = (await other.handleOf(sid))!;
      // The old id's case: the session has a new id, which this instance caches.
      const current = sid === "late-old" ? `${sid}-new` : sid;
      if (current !== sid) expect(await cached.rotate(sid, current)).toBe(true);
      expect(await servedFromCache(cached, a, current), sid).toBe(true);
      await late.destroy(current);
      await signOut(sid, handle);
      expect(await cached.get(current), sid).toBeNull();
    }
    await late.close();
  });
});
