import { inspect } from "node:util";
import request from "supertest";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createSessionTable, SessionStore, SessionStoreError } from "../src/index.js";
import { channelName } from "./support/internals.js";
import { cookieOf, testApp } from "./support/app.js";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { cacheReady, drivers, eventually, openDb, openPeer, sessionData, sleep, type TestDb, useTestDb } from "./support/db.js";
import { internals } from "./support/internals.js";

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/**
 * The lifecycle invariants, one named regression test per path that once broke them: an ended session is
 * never served again, nothing brings it back, a live one is never lost, the absolute expiry holds, and one
 * clock (the database's) decides. The model-based run in lifecycle.test.ts drives random races on top.
 */
describe.each(drivers)("lifecycle invariants on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;
  const closing: Array<{ close(): Promise<void> }> = [];
  /** LISTEN/NOTIFY (the read cache) is there on node-postgres and PGlite. */
  const canCache = driver !== "postgres.js";

  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    while (closing.length > 0) await closing.pop()!.close();
  });

  const track = <T extends { close(): Promise<void> }>(thing: T): T => (closing.push(thing), thing);
  const rowsOf = async (sid: string) => {
    const [key] = internals(store).keysOf(sid);
    return t.raw<{ handle: string; ended: boolean }>(`select handle, ended_at is not null as ended from $table where key = '${key}'`);
  };
  const storedExpiry = async () => Number((await t.raw(`select round(date_part('epoch', expires_at) * 1000) as ms from $table`))[0].ms);
  /** Runs `fn` as on a server whose clock is `offset` ms off: Date.now() of everything it calls is shifted. */
  const onSkewedServer = async <T>(offset: number, fn: () => Promise<T>): Promise<T> => {
    const real = Date.now.bind(Date);
    const spy = vi.spyOn(Date, "now").mockImplementation(() => real() + offset);
    try {
      return await fn();
    } finally {
      spy.mockRestore();
    }
  };

  it.each([
    ["deleted at once (no history)", 0],
    ["kept as history, then reaped", 30_000],
  ])("a save by a request that loaded its session never creates a row once the session ended: %s", async (_, retainEnded) => {
    const ending = new SessionStore({ db: t.db, table: t.table, retainEnded, reaper: false });
    await ending.set("resurrect", sessionData(60_000, { passport: { user: "ann" } }));
    const inFlight: any = await ending.get("resurrect");
    const [before] = await rowsOf("resurrect");
    expect(await ending.revoke(before!.handle, { anyOwner: true })).toBe(true);
    expect(await rowsOf("resurrect")).toHaveLength(retainEnded === 0 ? 0 : 1);
    if (retainEnded > 0) {
      await t.age(61_000);
      expect((await ending.reap()).deleted).toBe(1);
    }
    inFlight.cart = ["still saving"];
    await ending.set("resurrect", inFlight);
    await ending.touch("resurrect", inFlight);
    expect(await rowsOf("resurrect")).toEqual([]);
    expect(await ending.get("resurrect")).toBeNull();
  });

  it("a save by a request that loaded its session does nothing once the session expired (no revival by a late save)", async () => {
    await store.set("late", sessionData(60_000));
    const inFlight: any = await store.get("late");
    await t.age(61_000);
    inFlight.cookie.expires = new Date(Date.now() + HOUR).toISOString();
    inFlight.n = 1;
    await store.set("late", inFlight);
    expect(await store.get("late")).toBeNull();
  });

  it.runIf(canCache)("with the cache, a save or touch that raced an end on another instance never caches the ended session", async () => {
    const peer = track(await openPeer(t));
    const cached = track(new SessionStore({ db: peer.db, table: t.table, cache: {}, reaper: false }));
    const other = new SessionStore({ db: t.db, table: t.table, notify: true, reaper: false });
    expect(await cacheReady(cached)).toBe(true);
    for (const write of ["set", "touch"] as const) {
      const sid = `raced-${write}`;
      await other.set(sid, sessionData(HOUR, { passport: { user: "ann" } }));
      const loaded: any = await cached.get(sid);
      expect(loaded).not.toBeNull();
      loaded.cookie.expires = new Date(Date.now() + DAY).toISOString();
      loaded.n = write;
      // The write lands, then the other instance ends the session and its NOTIFY arrives here, then the reply.
      peer.beforeReply(async () => {
        const heard = internals(cached).cache!.evictions;
        await other.destroy(sid);
        expect(await eventually(() => internals(cached).cache!.evictions > heard)).toBe(true);
      });
      await (write === "set" ? cached.set(sid, loaded) : cached.touch(sid, loaded));
      expect(await cached.get(sid), write).toBeNull();
    }
  });

  it.runIf(canCache)("with the cache, an end through this store is not served from its cache once the call resolves", async () => {
    const cached = track(new SessionStore({ db: t.db, table: t.table, cache: {}, reaper: false }));
    expect(await cacheReady(cached)).toBe(true);
    for (let i = 0; i < 30; i++) {
      await cached.set(`mine-${i}`, sessionData(HOUR, { passport: { user: `user-${i}` } }));
      expect(await cached.get(`mine-${i}`)).not.toBeNull();
      if (i % 2 === 0) await cached.revoke((await cached.handleOf(`mine-${i}`))!, { anyOwner: true });
      else await cached.revokeUser(`user-${i}`);
      expect(await cached.get(`mine-${i}`), `try ${i}`).toBeNull();
    }
  });

  it("a cache without notify is refused at construction, naming the fix", () => {
    expect(() => new SessionStore({ db: t.db, table: t.table, cache: {}, notify: false })).toThrow(/`cache` with `notify: false`.*remove/);
  });

  it.runIf(canCache)("with the cache, a session is never served past its absolute expiry", async () => {
    const cached = track(new SessionStore({ db: t.db, table: t.table, cache: {}, absoluteTimeout: 1_500, reaper: false }));
    expect(await cacheReady(cached)).toBe(true);
    const started = Date.now();
    await cached.set("abs-cached", sessionData(DAY));
    expect(await cached.get("abs-cached")).not.toBeNull();
    await sleep(started + 1_600 - Date.now());
    expect(await cached.get("abs-cached")).toBeNull();
  });

  it.runIf(canCache)("with the cache, a wall clock stepped back (NTP, a resumed VM) never stretches how long an entry is served", async () => {
    class SteppedClock extends SessionStore {
      step = 0;
      protected override now(): number {
        return Date.now() + this.step;
      }
    }
    const cached = track(new SteppedClock({ db: t.db, table: t.table, cache: {}, reaper: false }));
    expect(await cacheReady(cached)).toBe(true);
    const started = Date.now();
    await cached.set("stepped", sessionData(800));
    // Served from memory (no statement), so the entry's own bound is what stops it.
    expect(
      await eventually(async () => {
        await cached.get("stepped");
        t.statements.length = 0;
        return (await cached.get("stepped")) !== null && t.statements.length === 0;
      }),
    ).toBe(true);
    cached.step = -10 * 60_000;
    await sleep(started + 1_000 - Date.now());
    expect(await cached.get("stepped")).toBeNull();
  });

  it("absoluteTimeout turned on later applies to rows made before, on read and on touch", async () => {
    await store.set("old-row", sessionData(30 * DAY, { passport: { user: "ann" } }));
    const loaded: any = await store.get("old-row");
    await t.age(2 * DAY);
    const strict = new SessionStore({ db: t.db, table: t.table, absoluteTimeout: HOUR, reaper: false });
    expect(await strict.get("old-row")).toBeNull();
    loaded.cookie.expires = new Date(Date.now() + 30 * DAY).toISOString();
    await strict.touch("old-row", loaded);
    await strict.set("old-row", { ...loaded, n: 1 });
    expect(await strict.get("old-row")).toBeNull();
    expect(await strict.count({ userId: "ann", status: "active" })).toBe(0);
    const [record] = await strict.list({ userId: "ann", status: "expired" });
    expect(record!.absoluteExpiresAt!.getTime() - record!.createdAt.getTime()).toBe(HOUR);
  });

  it("a shortened lifetime is always written, by touch and by save, never skipped as fresh", async () => {
    for (const write of ["touch", "set"] as const) {
      await store.clear();
      await store.set("remember-me", sessionData(30 * DAY));
      const session: any = await store.get("remember-me");
      // "Don't remember me" after a sensitive action: the cookie now lives an hour.
      const before = Date.now();
      session.cookie.expires = new Date(before + HOUR).toISOString();
      await (write === "touch" ? store.touch("remember-me", session) : store.set("remember-me", session));
      expect(await storedExpiry(), write).toBeLessThanOrEqual(Date.now() + HOUR + 1);
      expect(await storedExpiry(), write).toBeGreaterThanOrEqual(before + HOUR);
    }
  });

  it("revoke and extend need an explicit scope: a userId of undefined or null is a TypeError, not an admin call", async () => {
    await store.set("scoped", sessionData(HOUR, { passport: { user: "ann" } }));
    const handle = (await store.handleOf("scoped"))!;
    const later = new Date(Date.now() + DAY);
    for (const scope of [{ userId: undefined }, { userId: null }, {}, undefined] as any[]) {
      await expect(store.revoke(handle, scope), inspect(scope)).rejects.toThrow(/TypeError|userId|scope/);
      await expect(store.revoke(handle, scope)).rejects.toBeInstanceOf(TypeError);
      await expect(store.extend(handle, later, scope)).rejects.toBeInstanceOf(TypeError);
    }
    expect(await store.get("scoped")).not.toBeNull();
    expect(await store.extend(handle, later, { userId: "bob" })).toBe(false);
    expect(await store.extend(handle, later, { userId: "ann" })).toBe(true);
    expect(await store.revoke(handle, { userId: "bob" })).toBe(false);
    expect(await store.revoke(handle, { anyOwner: true })).toBe(true);
  });

  it.each([
    ["originalMaxAge a string", { originalMaxAge: "x" }],
    ["maxAge a string", { maxAge: "x" }],
    ["expires a number", { expires: 42 }],
    ["expires not a date", { expires: "garbage" }],
    ["a path with a semicolon", { path: "/;evil" }],
    ["a domain with spaces", { domain: "bad domain" }],
    ["sameSite unknown", { sameSite: "sideways" }],
    ["priority unknown", { priority: "urgent" }],
  ])("a tampered cookie (%s) is a CORRUPT_ROW and a missing session, never a hang", async (_, tampered) => {
    const reports: Error[] = [];
    store.on("error", (e) => void reports.push(e));
    const app = testApp(store);
    const cookie = cookieOf(await request(app).post("/count"))!;
    await t.raw(`update $table set data = jsonb_set(data, '{cookie}', (data->'cookie') || '${JSON.stringify(tampered)}'::jsonb)`);
    const res = await request(app).get("/count").set("Cookie", cookie).timeout(5_000);
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ views: 0 });
    expect(reports.map((e: any) => e.code)).toEqual(["CORRUPT_ROW"]);
  });

  // PGlite runs in this process on its clock: an app server with another clock needs a database of its own.
  it.runIf(driver !== "pglite")("a server whose clock is 10 minutes ahead or behind decides expiry as every other instance does", async () => {
    const MIN = 60_000;
    await store.set("skew", sessionData(60_000, { passport: { user: "ann" } }));
    for (const offset of [10 * MIN, -10 * MIN]) {
      // Read, touch (a rolled cookie on that server's clock) and reap there: the session stays live, with its lifetime.
      const session: any = await onSkewedServer(offset, () => store.get("skew"));
      expect(session, `read at ${offset}`).not.toBeNull();
      await onSkewedServer(offset, async () => {
        session.cookie.expires = new Date(Date.now() + 60_000).toISOString();
        await store.touch("skew", withDevice(session, `moved ${offset}`));
        await store.reap();
      });
      expect(await store.get("skew"), `after a touch and a reap at ${offset}`).not.toBeNull();
      expect(await storedExpiry()).toBeLessThanOrEqual(Date.now() + 60_000 + 1);
      expect(await storedExpiry()).toBeGreaterThan(Date.now() + 50_000);
      expect(await onSkewedServer(offset, () => store.count({ userId: "ann" }))).toBe(1);
    }
    // Expired by the database's clock: gone on every server.
    await t.age(61_000);
    for (const offset of [10 * MIN, -10 * MIN]) {
      expect(await onSkewedServer(offset, () => store.get("skew")), `at ${offset}`).toBeNull();
      expect(await onSkewedServer(offset, () => store.count({ userId: "ann", status: "expired" }))).toBe(1);
    }
  });

  it("errors the store raises carry no session data, keys, handles or ids anywhere in their cause chain", async () => {
    await store.set("leaky-session-id", sessionData(HOUR, { passport: { user: "ann" } }));
    const [row] = await t.raw<{ key: string; handle: string }>(`select key, handle from $table`);
    await t.raw(`alter table $table add constraint no_big_data check (length(data::text) < 300)`);
    try {
      const session: any = await store.get("leaky-session-id");
      session.secret = "s3cr3t-".repeat(50);
      const error = await store.set("leaky-session-id", session).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(SessionStoreError);
      const text = everything(error);
      for (const secret of ["s3cr3t", "leaky-session-id", row!.key, row!.handle]) expect(text, secret).not.toContain(secret);
      expect((error as any).cause.code).toBe("23514");
    } finally {
      await t.raw(`alter table $table drop constraint no_big_data`);
    }
  });

  it("a touch refuses a session over maxSize, like a save, and leaves the row as it was", async () => {
    const small = new SessionStore({ db: t.db, table: t.table, maxSize: 1_000, reaper: false });
    await small.set("touch-size", sessionData(HOUR));
    const session: any = await small.get("touch-size");
    session.cookie.expires = new Date(Date.now() + DAY).toISOString();
    session.cookie.big = "x".repeat(2_000);
    await expect(small.touch("touch-size", session)).rejects.toMatchObject({ code: "TOO_LARGE" });
    const [stored] = await t.raw(`select data::text as data from $table`);
    expect(stored.data).not.toContain("xxxx");
  });

  it.runIf(canCache)("a non-ASCII table name whose channel is over 63 bytes still caches, writes and evicts", async () => {
    const name = `sessions_${"ä".repeat(30)}`;
    await t.raw(`create table "${t.schema}"."${name}" (like $table including all)`);
    const table = createSessionTable(name, { schema: t.schema });
    const reports: Error[] = [];
    const cached = track(new SessionStore({ db: t.db, table, cache: {}, reaper: false }));
    cached.on("error", (e) => void reports.push(e));
    expect(await cacheReady(cached)).toBe(true);
    await cached.set("wide", sessionData(HOUR));
    expect(await cached.get("wide")).not.toBeNull();
    await cached.destroy("wide");
    expect(await cached.get("wide")).toBeNull();
    expect(reports).toEqual([]);
  });
});

describe("the read cache's probe", () => {
  it("a probe NOTIFY that fails is reported once, and the cache stays off (every read is a query)", async () => {
    const t = await openDb("pglite");
    try {
      const db: any = drizzlePglite({ client: (t.db as any).$client });
      const execute = db.execute.bind(db);
      db.execute = (query: any) => {
        const text = JSON.stringify(query);
        return text.includes("pg_notify") && text.includes("?probe:") ? Promise.reject(new Error("permission denied for pg_notify")) : execute(query);
      };
      const reports: Error[] = [];
      const store = new SessionStore({ db, table: t.table, cache: { ttl: 2_000 }, reaper: false }); // a probe a second
      store.on("error", (e) => void reports.push(e));
      expect(await eventually(() => reports.length > 0)).toBe(true);
      expect(reports[0]!.message).toMatch(/cache's NOTIFY probe failed: permission denied/);
      await sleep(1_200); // the next probe fails too: not reported again
      expect(reports).toHaveLength(1);
      expect(internals(store).cache!.live).toBe(false);
      await store.close();
    } finally {
      await t.close();
    }
  });
});

describe("the NOTIFY channel name", () => {
  it("is cut to 63 bytes at a character boundary, whatever the script", () => {
    for (const table of ["sessions", "a".repeat(80), "ä".repeat(40), "🙂".repeat(20), `x${"é".repeat(30)}`]) {
      const channel = channelName(table);
      expect(Buffer.byteLength(channel, "utf8")).toBeLessThanOrEqual(63);
      expect(channel).not.toMatch(/\uFFFD/);
      expect(`connect_drizzle_${table}`.startsWith(channel)).toBe(true);
    }
    expect(channelName("sessions")).toBe("connect_drizzle_sessions");
  });
});

/** A session linked to a request from another device, as express-session links `session.req`. */
function withDevice(session: any, ua: string): any {
  Object.defineProperty(session, "req", { value: { headers: { "user-agent": ua }, ip: "203.0.113.9" }, enumerable: false, configurable: true });
  return session;
}

/** Everything an app's logger could print of an error: util.inspect of its whole cause chain, hidden fields included. */
function everything(error: unknown): string {
  const parts: string[] = [];
  for (let e: any = error, depth = 0; e && depth < 10; e = e.cause, depth++) {
    parts.push(inspect(e, { depth: 10, showHidden: true }), String(e.message), JSON.stringify(Object.getOwnPropertyNames(e).map((k) => [k, String(e[k])])));
  }
  return parts.join("\n");
}
