import { drizzle } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import pg from "pg";
import postgres from "postgres";
import request from "supertest";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { reap, type ReapResult } from "../../src/index.js";
import { SessionStore, type AnyPgDatabase, type SessionStoreOptions } from "../../src/index.js";
import { cookieOf, testApp } from "../support/app.js";
import { sessionData } from "../support/db.js";
import { createFaultDb, faultsEnabled, type FaultDb, type OpenedDb } from "../support/faultdb.js";
import { pgbouncerBinary, pgbouncerVersion, startPgbouncer, supportsPreparedStatements, type Pgbouncer } from "../support/pgbouncer.js";

const binary = faultsEnabled ? pgbouncerBinary() : undefined;
const version = binary ? pgbouncerVersion(binary) : "none";

/**
 * Debian's pgbouncer, transaction pooling, in front of a database of its own: consecutive transactions of
 * one client connection run on whichever server connection is free, so anything that outlives a
 * transaction on a server connection (named prepared statements before 1.21, session advisory locks,
 * LISTEN) breaks. The store's `prepare: false` is what makes it work on pgbouncer < 1.21.
 */
describe.skipIf(!binary)(`through pgbouncer ${version} in transaction pooling mode`, () => {
  let f: FaultDb;
  let direct: OpenedDb;
  let bouncer: Pgbouncer;
  const closers: Array<() => Promise<unknown>> = [];

  /** A node-postgres pool through pgbouncer. */
  const pgThrough = (max = 6): AnyPgDatabase => {
    const pool = new pg.Pool({ connectionString: bouncer.url, max });
    pool.on("error", () => {});
    closers.push(() => pool.end());
    return drizzle({ client: pool });
  };
  /** A postgres.js client through pgbouncer, with the driver's own `prepare` option. */
  const postgresJsThrough = (prepare: boolean, max = 6): AnyPgDatabase => {
    const client = postgres(bouncer.url, { max, prepare, onnotice: () => {} });
    closers.push(() => client.end({ timeout: 5 }));
    return drizzlePostgresJs({ client });
  };
  const storeOn = (db: AnyPgDatabase, options: Partial<SessionStoreOptions> = {}) => new SessionStore({ db, table: direct.table, timeout: 5_000, ...options });

  /** Concurrent gets from `workers` client connections; returns the distinct error messages. */
  async function hammer(store: SessionStore, workers = 6, rounds = 25): Promise<{ ok: number; errors: string[] }> {
    await store.set("hammer", sessionData(60_000, { n: 1 }));
    let ok = 0;
    const errors: string[] = [];
    await Promise.all(
      Array.from({ length: workers }, async () => {
        for (let i = 0; i < rounds; i++) {
          try {
            if ((await store.get("hammer")) !== null) ok++;
            else errors.push("null");
          } catch (error: any) {
            let e = error;
            while (e.cause) e = e.cause;
            errors.push(String(e.message));
          }
        }
      }),
    );
    return { ok, errors: [...new Set(errors)] };
  }

  beforeAll(async () => {
    f = await createFaultDb("bouncer");
    direct = await f.open({ max: 2 });
    bouncer = await startPgbouncer({ dbname: f.name, poolSize: 3 });
    console.info(`pgbouncer ${bouncer.version} on 127.0.0.1:${bouncer.port}, pool_mode=transaction, default_pool_size=3`);
  });
  afterAll(async () => {
    await Promise.all(closers.map((close) => close().catch(() => {})));
    await bouncer?.stop();
    await f?.drop();
  });
  beforeEach(async () => {
    await direct.raw(`delete from $table`);
  });

  it("runs in transaction pooling mode", async () => {
    const admin = new pg.Client({ connectionString: bouncer.url.replace(/\/[^/]+$/, "/pgbouncer") });
    await admin.connect();
    try {
      const { rows } = await admin.query("show config");
      expect(rows.find((r: any) => r.key === "pool_mode")?.value).toBe("transaction");
    } finally {
      await admin.end();
    }
  });

  it.runIf(!supportsPreparedStatements(version))(
    "the DEFAULT options (prepare: true) break on pgbouncer < 1.21: named prepared statements land on other server connections",
    async () => {
      const { ok, errors } = await hammer(storeOn(pgThrough()));
      console.info(`pgbouncer ${version}, node-postgres, prepare: true: ${ok}/150 gets ok; errors: ${JSON.stringify(errors)}`);
      expect(errors.length).toBeGreaterThan(0);
      expect(errors.every((m) => /prepared statement "connect_drizzle_[\w-]+" (does not exist|already exists)/.test(m))).toBe(true);
    },
  );

  it("with prepare: false, concurrent reads never fail (node-postgres)", async () => {
    const { ok, errors } = await hammer(storeOn(pgThrough(), { prepare: false }));
    expect(errors).toEqual([]);
    expect(ok).toBe(150);
  });

  describe.each([
    ["node-postgres", () => pgThrough()],
    ["postgres.js (driver option prepare: false)", () => postgresJsThrough(false)],
  ] as const)("with prepare: false, on %s", (_, makeDb) => {
    let db: AnyPgDatabase;
    let store: SessionStore;
    beforeAll(() => {
      db = makeDb();
    });
    beforeEach(() => {
      store = storeOn(db, { prepare: false });
    });

    it("set, get, touch, destroy, all, length and clear", async () => {
      await store.set("a", sessionData(60_000, { who: "a" }));
      await store.set("b", sessionData(60_000, { who: "b" }));
      expect(await store.get("a")).toMatchObject({ who: "a" });
      const later = new Date(Date.now() + 3_600_000).toISOString();
      await store.touch("a", { ...((await store.get("a")) as any), cookie: { originalMaxAge: 3_600_000, expires: later } });
      expect(((await store.get("a")) as any).cookie.expires).toBe(later);
      await store.destroy("b");
      expect(await store.get("b")).toBeNull();
      expect(await store.length()).toBe(1);
      expect(Object.values(await store.all()).map((s: any) => s.who)).toEqual(["a"]);
      await store.clear();
      expect(await store.length()).toBe(0);
    });

    it("records: list, count, handleOf, revoke, revokeUser, extend; versioned CONFLICT", async () => {
      for (const sid of ["u1", "u2", "u3"]) await store.set(sid, sessionData(60_000, { passport: { user: "ann" } }));
      expect(await store.count({ userId: "ann" })).toBe(3);
      const handle = (await store.handleOf("u1"))!;
      expect((await store.list({ userId: "ann", current: "u1" })).find((r) => r.current)?.handle).toBe(handle);
      expect(await store.revoke(handle, { userId: "bob" })).toBe(false);
      expect(await store.revoke(handle, { userId: "ann" })).toBe(true);
      expect(await store.get("u1")).toBeNull();
      expect(await store.extend((await store.handleOf("u2"))!, new Date(Date.now() + 7_200_000), { userId: "ann" })).toBe(true);
      expect(await store.revokeUser("ann", { except: "u3" })).toBe(1);
      expect(await store.get("u2")).toBeNull();
      expect(await store.get("u3")).not.toBeNull();
      const cas = storeOn(db, { prepare: false, versioned: true });
      const tabA: any = await cas.get("u3");
      const tabB: any = await cas.get("u3");
      tabA.a = 1;
      tabB.b = 1;
      await cas.set("u3", tabA);
      await expect(cas.set("u3", tabB)).rejects.toMatchObject({ code: "CONFLICT" });
    });

    it("express + passport: login (regenerate), read, write, logout", async () => {
      const app = testApp(store);
      const anonymous = cookieOf(await request(app).post("/count"))!;
      const login = await request(app).post("/login").set("Cookie", anonymous).send({ username: "ann", password: "pw" });
      expect(login.status).toBe(200);
      const cookie = cookieOf(login)!;
      expect(cookie).not.toBe(anonymous);
      expect((await request(app).get("/me").set("Cookie", anonymous)).status).toBe(401);
      expect((await request(app).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
      // passport regenerates without carrying the anonymous data over (keepSessionInfo is off).
      expect((await request(app).post("/count").set("Cookie", cookie)).body).toEqual({ views: 1 });
      expect((await request(app).post("/count").set("Cookie", cookie)).body).toEqual({ views: 2 });
      expect((await request(app).post("/logout").set("Cookie", cookie)).status).toBe(200);
      expect((await request(app).get("/me").set("Cookie", cookie)).status).toBe(401);
    });

    it("a reaper round (reap()), and two rounds at once: one reaps, the other skips", async () => {
      await direct.raw(`insert into $table (key, handle, data, expires_at)
        select 'old' || i, 'h' || i, '{"cookie":{}}', now() - interval '1 hour' + i * interval '1 millisecond' from generate_series(1, 3000) i`);
      await store.set("live", sessionData(60_000));
      // The second round starts while the first holds the lock (from inside the first's batch callback).
      let second: Promise<ReapResult> | undefined;
      const a = await reap({
        db,
        table: direct.table,
        batchSize: 500,
        onBatch: async () => {
          second ??= reap({ db, table: direct.table, batchSize: 500 });
          await second;
        },
      });
      const b = await second!;
      expect([a.skipped, b.skipped]).toEqual([false, true]);
      expect(a.deleted + b.deleted).toBe(3000);
      expect(await direct.raw(`select count(*)::int as n from $table`)).toEqual([{ n: 1 }]);
      // The transaction-scoped lock went with the round's transaction: the next round runs.
      expect((await reap({ db, table: direct.table })).skipped).toBe(false);
    });
  });

  it("postgres.js with its DEFAULT prepare: true works anyway, with or without the store's prepare option: it retries a statement the server connection lacks", async () => {
    // postgres.js names its statements randomly per connection (no "already exists") and re-prepares on
    // "prepared statement ... does not exist" (its retryRoutines): errors are absorbed, at the cost of a
    // round trip and of statements left behind on server connections. node-postgres does neither.
    const db = postgresJsThrough(true);
    const results = [await hammer(storeOn(db)), await hammer(storeOn(db, { prepare: false }))];
    console.info(`pgbouncer ${version}, postgres.js prepare: true: ${JSON.stringify(results)}`);
    for (const { ok, errors } of results) {
      expect(errors).toEqual([]);
      expect(ok).toBe(150);
    }
  });

  // BUG (reported on issue #7): the read cache's LISTEN connection goes through pgbouncer too (the store opens
  // it with the pool's settings). In transaction mode LISTEN runs on some server connection that is then
  // handed to other clients, so the NOTIFY of a revoke never reaches the other instance, while the store
  // believes its LISTEN is live (onReady fired) and keeps serving the revoked session from its cache for
  // up to cache.ttl. Fails open. Fix: prove the LISTEN live with a probe NOTIFY sent through the pool
  // (cacheLive only once the probe comes back, re-probed periodically), or take a separate direct
  // connection string for LISTEN; at least refuse or warn on `cache` through pgbouncer.
  it("with cache, a session revoked on one instance is not served by another instance's cache (no fail-open through pgbouncer)", async () => {
    const [a, b] = [storeOn(pgThrough(2), { prepare: false, cache: {} }), storeOn(pgThrough(2), { prepare: false, cache: {} })];
    closers.push(
      () => a.close(),
      () => b.close(),
    );
    await new Promise((r) => setTimeout(r, 300)); // both LISTENs are up
    await a.set("cached", sessionData(60_000, { passport: { user: "ann" } }));
    expect(await a.get("cached")).not.toBeNull(); // now in a's cache
    expect(await b.revoke((await b.handleOf("cached"))!, { anyOwner: true })).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(await a.get("cached")).toBeNull();
  });
});

/**
 * pgbouncer with ONE server connection: while the round's lock transaction holds it, nothing else runs,
 * the round's own batches included. The reaper sees that (a `select 1` beside the lock transaction gets no
 * answer), lets the lock transaction go and runs each batch in a transaction that takes the lock itself,
 * as on a single connection: the round completes, and reads wait only for one batch at a time.
 */
describe.skipIf(!binary)(`a reaper round through pgbouncer ${version} with default_pool_size = 1`, () => {
  let f: FaultDb;
  let direct: OpenedDb;
  let bouncer: Pgbouncer;
  const closers: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    f = await createFaultDb("bouncer1");
    direct = await f.open({ max: 2 });
    bouncer = await startPgbouncer({ dbname: f.name, poolSize: 1 });
  });
  afterAll(async () => {
    await Promise.all(closers.map((close) => close().catch(() => {})));
    await bouncer?.stop();
    await f?.drop();
  });
  beforeEach(async () => {
    await direct.raw(`delete from $table`);
    await direct.raw(`insert into $table (key, handle, data, expires_at)
      select 'old' || i, 'h' || i, '{"cookie":{}}', now() - interval '1 hour' + i * interval '1 millisecond' from generate_series(1, 1200) i`);
  });

  describe.each([
    [
      "node-postgres",
      (): AnyPgDatabase => {
        const pool = new pg.Pool({ connectionString: bouncer.url, max: 4 });
        pool.on("error", () => {});
        closers.push(() => pool.end());
        return drizzle({ client: pool });
      },
    ],
    [
      "postgres.js",
      (): AnyPgDatabase => {
        const client = postgres(bouncer.url, { max: 4, prepare: false, onnotice: () => {} });
        closers.push(() => client.end({ timeout: 5 }));
        return drizzlePostgresJs({ client });
      },
    ],
  ] as const)("on %s", (_, makeDb) => {
    it("reap() deletes every expired row and does not end in TIMEOUT; the live session survives", async () => {
      const db = makeDb();
      const store = new SessionStore({ db, table: direct.table, prepare: false, reaper: false, timeout: 2_000 });
      await store.set("live", sessionData(60_000, { n: 1 }));
      const result = await reap({ db, table: direct.table, batchSize: 500, timeout: 2_000 });
      expect(result).toMatchObject({ deleted: 1200, skipped: false });
      expect(await direct.raw(`select count(*)::int as n from $table`)).toEqual([{ n: 1 }]);
      expect(await store.get("live")).toMatchObject({ n: 1 });
    });

    it("store.reap() completes while reads of the app go on, and every read is answered", async () => {
      const db = makeDb();
      const store = new SessionStore({ db, table: direct.table, prepare: false, reaper: false, timeout: 2_000 });
      await store.set("live", sessionData(60_000, { n: 1 }));
      let reading = true;
      let answered = 0;
      const reads = (async () => {
        while (reading) {
          expect(await store.get("live")).toMatchObject({ n: 1 });
          answered++;
        }
      })();
      const result = await store.reap();
      reading = false;
      await reads;
      expect(result).toMatchObject({ deleted: 1200, skipped: false });
      expect(answered).toBeGreaterThan(0);
    });
  });
});
