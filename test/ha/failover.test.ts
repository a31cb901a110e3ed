import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, SessionStore, type AnyPgDatabase } from "../../src/index.js";
import { testApp } from "../support/app.js";
import { autoFailoverAvailable, startFormation, type Formation } from "../support/autofailover.js";
import { haEnabled, replicationAvailable, startReplicated, type Replicated } from "../support/cluster.js";
import { sleep } from "../support/db.js";
import { internals } from "../support/internals.js";
import { pgbouncerBinary, startPgbouncer, type Pgbouncer } from "../support/pgbouncer.js";

/**
 * Failover under HTTP load: a real app (express-session and passport, test/support/app.ts) on the store,
 * virtual users signing in, reading and signing out while the database fails over, once with the store's
 * retries off (what a failover cost before) and once with them (the default). Checked: no failed request
 * with retries, no acknowledged sign-in lost (synchronous replication), no ended session served again;
 * measured: the write outage (the longest time no write completed) and the failed requests.
 */

/** How long the store waits for the database: longer than a killed primary's failover (about 7 s here). */
const TIMEOUT = 25_000;
const USERS = 6;

interface Outcome {
  kind: "login" | "read" | "logout" | "after-logout";
  start: number;
  end: number;
  /** HTTP status, or "error" (no answer). */
  status: number | "error";
}

interface Load {
  outcomes: Outcome[];
  /** Reads of a session whose sign-in was acknowledged and never ended, answered 401: an acknowledged write lost. */
  lost: number;
  /** Reads with the cookie of a session whose sign-out was acknowledged, answered with the user: an ended session served. */
  servedAfterEnd: number;
  /** Cookies of acknowledged sign-ins never signed out, to read again after the failover. */
  live: string[];
}

/** Virtual users until `stop()`: each signs in, reads three times, and every other round signs out and reads with the old cookie. */
async function drive(base: string, stop: () => boolean): Promise<Load> {
  const load: Load = { outcomes: [], lost: 0, servedAfterEnd: 0, live: [] };
  const call = async (kind: Outcome["kind"], method: string, path: string, cookie?: string, body?: string) => {
    const start = performance.now();
    try {
      const res = await fetch(`${base}${path}`, {
        method,
        headers: { ...(cookie ? { cookie } : {}), ...(body ? { "content-type": "application/x-www-form-urlencoded" } : {}) },
        body,
        signal: AbortSignal.timeout(TIMEOUT + 10_000),
      });
      await res.arrayBuffer();
      load.outcomes.push({ kind, start, end: performance.now(), status: res.status });
      return res;
    } catch {
      load.outcomes.push({ kind, start, end: performance.now(), status: "error" });
      return undefined;
    }
  };
  const user = async (n: number) => {
    for (let round = 0; !stop(); round++) {
      const login = await call("login", "POST", "/login", undefined, `username=u${n}&password=pw`);
      const cookie = login?.status === 200 ? login.headers.get("set-cookie")?.split(";")[0] : undefined;
      if (!cookie) continue;
      for (let i = 0; i < 3; i++) {
        const me = await call("read", "GET", "/me", cookie);
        if (me?.status === 401) load.lost++;
      }
      if (round % 2 === 1) {
        const out = await call("logout", "POST", "/logout", cookie);
        if (out?.status === 200) {
          const after = await call("after-logout", "GET", "/me", cookie);
          if (after?.status === 200) load.servedAfterEnd++;
          continue;
        }
      }
      load.live.push(cookie);
    }
  };
  await Promise.all(Array.from({ length: USERS }, (_, n) => user(n)));
  return load;
}

/** The figures of a run: failed requests (5xx or no answer) by kind, and the write outage. */
function figures(load: Load) {
  const failed = load.outcomes.filter((o) => o.status === "error" || o.status >= 500);
  const writes = load.outcomes
    .filter((o) => (o.kind === "login" || o.kind === "logout") && o.status === 200)
    .map((o) => o.end)
    .sort((a, b) => a - b);
  let outage = 0;
  for (let i = 1; i < writes.length; i++) outage = Math.max(outage, writes[i]! - writes[i - 1]!);
  const slowest = Math.max(...load.outcomes.filter((o) => o.status === 200).map((o) => o.end - o.start));
  return {
    requests: load.outcomes.length,
    failed: failed.length,
    failedByKind: Object.fromEntries(["login", "read", "logout", "after-logout"].map((k) => [k, failed.filter((o) => o.kind === k).length])),
    writeOutageMs: Math.round(outage),
    slowestRequestMs: Math.round(slowest),
    lost: load.lost,
    servedAfterEnd: load.servedAfterEnd,
  };
}

/** Serves the test app on a free port; `close()` stops it. */
async function serve(store: SessionStore): Promise<{ base: string; close(): Promise<void> }> {
  const server: Server = await new Promise((resolve) => {
    const s = testApp(store).listen(0, "127.0.0.1", () => resolve(s));
  });
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/**
 * Load through a failover: `event()` runs one second into the load, which goes on for two seconds after
 * it. Then every acknowledged live sign-in is read again. Prints and returns the figures.
 */
async function throughFailover(label: string, store: SessionStore, event: () => Promise<unknown>) {
  const app = await serve(store);
  try {
    let stopped = false;
    const running = drive(app.base, () => stopped);
    await sleep(1_000);
    const started = performance.now();
    const detail = await event();
    const eventMs = Math.round(performance.now() - started);
    await sleep(2_000);
    stopped = true;
    const load = await running;
    // Every acknowledged sign-in that was not signed out is still there (nothing acknowledged was lost).
    let missing = 0;
    for (const cookie of load.live) {
      const res = await fetch(`${app.base}/me`, { headers: { cookie } });
      if (res.status !== 200) missing++;
    }
    const result = { ...figures(load), acknowledgedLiveSignIns: load.live.length, missingAfter: missing, eventMs, detail };
    console.log(`[failover] ${label}: ${JSON.stringify(result)}`);
    return result;
  } finally {
    await app.close();
  }
}

const formationOk = haEnabled ? autoFailoverAvailable() : { ok: false as const, why: "run by npm run test:ha" };

describe.skipIf(!formationOk.ok)(
  `postgres.js with a multi-host URL on a pg_auto_failover formation${formationOk.ok ? "" : ` (skipped: ${formationOk.why})`}`,
  () => {
    let formation: Formation;
    let client: postgres.Sql;
    let store: SessionStore;

    beforeAll(async () => {
      formation = await startFormation();
      client = postgres(formation.multiHostUrl(), { max: 10, onnotice: () => {} });
      const db = drizzlePostgresJs({ client }) as unknown as AnyPgDatabase;
      await migrate(db);
      store = new SessionStore({ db, reaper: false, timeout: TIMEOUT });
      store.on("error", () => {});
      await store.ready();
    }, 240_000);
    afterAll(async () => {
      await store?.close();
      await client?.end({ timeout: 5 });
      await formation?.teardown();
    }, 120_000);

    it("before (no retries), a switchover and a killed primary fail requests: the figures to compare with", async () => {
      internals(store).retries(false);
      try {
        await throughFailover("postgres.js, switchover, no retries", store, () => formation.switchover());
        await throughFailover("postgres.js, killed primary, no retries", store, () => formation.killPrimary());
      } finally {
        internals(store).retries(true);
      }
    });

    it("a switchover under load fails no request, loses no acknowledged sign-in and serves no ended session", async () => {
      const result = await throughFailover("postgres.js, switchover", store, () => formation.switchover());
      expect(result).toMatchObject({ failed: 0, lost: 0, servedAfterEnd: 0, missingAfter: 0 });
    });

    it("a killed primary under load fails no request, loses no acknowledged sign-in and serves no ended session", async () => {
      const result = await throughFailover("postgres.js, killed primary", store, () => formation.killPrimary());
      expect(result).toMatchObject({ failed: 0, lost: 0, servedAfterEnd: 0, missingAfter: 0 });
    });
  },
);

const bouncerOk = haEnabled && replicationAvailable().ok && pgbouncerBinary() !== undefined;

describe.skipIf(!bouncerOk)(
  `node-postgres through pgbouncer, repointed at a promoted standby${bouncerOk ? "" : " (skipped: needs npm run test:ha, pg_createcluster and pgbouncer)"}`,
  () => {
    let cluster: Replicated;
    /** Transaction pooling for the statements, and session pooling for the cache's LISTEN. */
    let bouncers: Pgbouncer[] = [];
    const closers: Array<() => Promise<unknown>> = [];
    let store: SessionStore;
    let other: SessionStore;

    /** A store on node-postgres pools through the two pgbouncers, with the read cache. */
    const instance = async () => {
      const [statements, listening] = bouncers.map((bouncer, i) => {
        const pool = new pg.Pool({ connectionString: bouncer.url, max: i === 0 ? 10 : 1 });
        pool.on("error", () => {});
        closers.push(() => pool.end());
        return drizzlePg({ client: pool });
      });
      // pgbouncer 1.18 in transaction mode: no named prepared statements.
      const s = new SessionStore({ db: statements!, listen: listening!, cache: {}, reaper: false, timeout: TIMEOUT, prepare: false });
      s.on("error", () => {});
      closers.push(() => s.close());
      await s.ready();
      return s;
    };

    beforeAll(async () => {
      cluster = await startReplicated({ synchronous: true });
      // server_login_retry 1 s (pgbouncer's default waits 15 s after a failed server connection).
      for (const poolMode of ["transaction", "session"] as const) {
        bouncers.push(await startPgbouncer({ port: cluster.primary.port, dbname: "sessions", poolSize: 8, loginRetry: 1, poolMode }));
      }
      const pool = new pg.Pool({ connectionString: bouncers[0]!.url, max: 1 });
      await migrate(drizzlePg({ client: pool }));
      await pool.end();
      store = await instance();
      other = await instance();
    }, 240_000);
    afterAll(async () => {
      for (const close of closers.splice(0).reverse()) await close().catch(() => {});
      for (const bouncer of bouncers) await bouncer.stop();
      bouncers = [];
      await cluster?.teardown();
    }, 120_000);

    it("a killed primary, its standby promoted and pgbouncer repointed (a failover manager's hook) fails no request and loses no acknowledged sign-in", async () => {
      const result = await throughFailover("node-postgres via pgbouncer, killed primary", store, async () => {
        await cluster.killPrimary();
        // What a failover manager does: promote, then point pgbouncer at the new primary.
        await cluster.promoteStandby();
        for (const bouncer of bouncers) bouncer.retarget(cluster.standby.port);
      });
      expect(result).toMatchObject({ failed: 0, lost: 0, servedAfterEnd: 0, missingAfter: 0 });
    });

    it("after the failover the read cache is on again only once it hears the new primary, and an end on another instance reaches it", async () => {
      // The LISTEN connections were lost with the old primary: each cache turned off, reconnected through
      // pgbouncer to the new primary, and went live again only once its probe NOTIFY came back.
      const deadline = performance.now() + 20_000;
      while (!(internals(store).cache?.live && internals(other).cache?.live) && performance.now() < deadline) await sleep(100);
      expect(internals(store).cache?.live).toBe(true);
      expect(internals(other).cache?.live).toBe(true);
      await store.set("cached-1", { cookie: { originalMaxAge: 60_000, expires: new Date(Date.now() + 60_000) } } as any);
      expect(await store.get("cached-1")).not.toBeNull();
      expect(await store.get("cached-1")).not.toBeNull(); // from the cache
      await other.destroy("cached-1");
      let served = true;
      while (served && performance.now() < deadline + 5_000) {
        served = (await store.get("cached-1")) !== null;
        if (served) await sleep(10);
      }
      expect(served, "the end on the other instance evicted the cached session").toBe(false);
    });
  },
);
