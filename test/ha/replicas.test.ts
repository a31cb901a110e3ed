import { withReplicas } from "drizzle-orm/pg-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { migrate, SessionStore, SessionStoreError, type AnyPgDatabase, type ReplicaStats, type SessionStoreOptions } from "../../src/index.js";
import { haEnabled, replicationAvailable, startReplicated, type Replicated } from "../support/cluster.js";
import { sqlOn } from "../support/servers.js";
import { openOn, sessionData, sleep, type DriverName } from "../support/db.js";
import { lifecycleTests, seedOf } from "../support/model.js";

const available = haEnabled ? replicationAvailable() : { ok: false as const, why: "run by npm run test:ha" };
const why = available.ok ? "" : ` (skipped: ${available.why})`;
const DRIVERS: DriverName[] = ["node-postgres", "postgres.js"];
/** How many sessions each revocation check ends: one end, then a lookup on the other instance, each. */
const ROUNDS = 300;

/**
 * Read replicas on a real primary and hot standby (test/support/cluster.ts): where lookups go, the
 * window in which another instance's end may still be read (none on a synchronous standby, at most the
 * configured one on an async one), a lagging and a lost replica, and the racing model's end paths read
 * through the standby.
 */
describe.skipIf(!available.ok)(`read replicas on a primary and a hot standby${why}`, () => {
  let cluster: Replicated;
  const closers: Array<() => Promise<unknown>> = [];
  /** The model's configurations read the standby named here once it is up (see lifecycleTests). */
  const replica = { url: "", window: 0 };

  beforeAll(async () => {
    cluster = await startReplicated({ synchronous: true });
    replica.url = cluster.standby.url();
    // The racing model's databases open on DATABASE_URL: this primary.
    process.env.DATABASE_URL = cluster.primary.url();
    const db = openOn("node-postgres", cluster.primary.url(), 2);
    await migrate(withReplicas(db.db as any, [openOn("node-postgres", cluster.standby.url(), 1).db as any]) as unknown as AnyPgDatabase);
    await db.close();
    await cluster.caughtUp();
  }, 180_000);
  afterAll(async () => {
    for (const close of closers.splice(0).reverse()) await close().catch(() => {});
    await cluster?.teardown();
  }, 120_000);

  /** A store on its own pools (an instance of the app), with withReplicas unless `replicaReads` is false. */
  const instance = (driver: DriverName, options: Partial<SessionStoreOptions> = {}) => {
    const primary = openOn(driver, cluster.primary.url());
    const standby = openOn(driver, cluster.standby.url());
    const errors: Error[] = [];
    const store = new SessionStore({
      db: withReplicas(primary.db as any, [standby.db as any]) as unknown as AnyPgDatabase,
      reaper: false,
      ...options,
    });
    store.on("error", (error) => void errors.push(error));
    closers.push(() => store.close(), primary.close, standby.close);
    return { store, errors };
  };
  /** Looks `sid` up (finding it each time) until a replica answered one lookup more than before, for at most 20 s. */
  const readsFromReplica = async (store: SessionStore, sid: string): Promise<boolean> => {
    const before = store.replicaStats()!.replica;
    const started = performance.now();
    while (performance.now() - started < 20_000) {
      expect(await store.get(sid)).not.toBeNull();
      if (store.replicaStats()!.replica > before) return true;
      await sleep(50);
    }
    return false;
  };
  /**
   * Ends `sid` through `ender`, then looks it up through `reader` until it is no longer found: returns how
   * long after the end resolved the last lookup that found it started (0: none did), and fails if one that
   * started `window` ms or more after the end found it.
   */
  const shownAfter = async (ender: SessionStore, reader: SessionStore, sid: string, window: number): Promise<number> => {
    await ender.destroy(sid);
    const ended = performance.now();
    let last = 0;
    for (;;) {
      const started = performance.now() - ended;
      if ((await reader.get(sid)) === null) return last;
      last = started;
      expect(started, "a lookup started after the window found the ended session").toBeLessThan(window);
    }
  };
  const share = (stats: ReplicaStats | undefined) => stats!.replica / (stats!.replica + stats!.primary);

  it("migrate(withReplicas(...)) migrated the primary, and the standby has the table", async () => {
    expect(await sqlOn(cluster.standby.url(), "select count(*)::int as n from sessions")).toEqual([{ n: 0 }]);
  });

  it.each(DRIVERS)("ready() on a store given the standby as its db rejects with READ_ONLY, saying to give the primary (%s)", async (driver) => {
    const standby = openOn(driver, cluster.standby.url());
    closers.push(standby.close);
    const store = new SessionStore({ db: standby.db, reaper: false });
    const error = await store.ready().catch((e) => e);
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(error.code).toBe("READ_ONLY");
    expect(error.message).toMatch(/read-only standby .*give the store the primary.*withReplicas/);
    await store.close();
  });

  describe.each(DRIVERS)("on %s", (driver) => {
    it(`window 0 on a synchronous standby: the other instance's lookups go to the standby, and none of ${ROUNDS} finds a session after its end resolved`, async () => {
      await cluster.setSynchronous(true);
      const a = instance(driver);
      const b = instance(driver);
      await Promise.all([a.store.ready(), b.store.ready()]);
      let servedAfterEnd = 0;
      for (let i = 0; i < ROUNDS; i++) {
        const sid = `sync-${driver}-${i}`;
        await a.store.set(sid, sessionData(60_000, { passport: { user: `u${i}` } }));
        // Reads on B before the end: it wrote nothing of this session, so the standby may answer.
        expect(await b.store.get(sid)).not.toBeNull();
        expect(await b.store.get(sid)).not.toBeNull();
        await a.store.destroy(sid);
        if ((await b.store.get(sid)) !== null) servedAfterEnd++;
      }
      expect(servedAfterEnd).toBe(0);
      const stats = b.store.replicaStats();
      console.log(`[replicas] ${driver} window 0, sync standby: B's lookups ${JSON.stringify(stats)}, replica share ${share(stats).toFixed(2)}`);
      expect(stats!.replica).toBeGreaterThan(ROUNDS / 2);
      expect(a.errors.concat(b.errors)).toEqual([]);
    });

    it("window 0 on an async standby: every lookup goes to the primary (only synchronous standbys are read)", async () => {
      await cluster.setSynchronous(false);
      try {
        const b = instance(driver);
        await b.store.set("async-0", sessionData(60_000));
        await cluster.caughtUp();
        for (let i = 0; i < 20; i++) {
          expect(await b.store.get("async-0")).not.toBeNull();
          await sleep(30);
        }
        expect(b.store.replicaStats()).toMatchObject({ replica: 0 });
      } finally {
        await cluster.setSynchronous(true);
      }
    });

    it(`window W on an async standby: a lookup started W ms after another instance's end never finds the session; the measured window`, async () => {
      await cluster.setSynchronous(false);
      const window = 200;
      try {
        const a = instance(driver);
        const b = instance(driver, { replicaReads: { window } });
        const seen: number[] = [];
        for (let i = 0; i < 100; i++) {
          const sid = `async-${driver}-${i}`;
          await a.store.set(sid, sessionData(60_000));
          await b.store.get(sid);
          seen.push(await shownAfter(a.store, b.store, sid, window));
        }
        seen.sort((x, y) => x - y);
        const at = (q: number) => seen[Math.min(seen.length - 1, Math.floor(q * seen.length))]!.toFixed(1);
        console.log(
          `[replicas] ${driver} window ${window} ms, async standby: an end found live by the other instance for p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms; B's lookups ${JSON.stringify(b.store.replicaStats())}`,
        );
      } finally {
        await cluster.setSynchronous(true);
      }
    });

    it("a lagging replica (replay paused) is skipped once a sample passes it: an end shows within the window, and later lookups go to the primary", async () => {
      await cluster.setSynchronous(false);
      const window = 100;
      const a = instance(driver);
      const b = instance(driver, { replicaReads: { window } });
      const found: number[] = [];
      try {
        for (let i = 0; i < 20; i++) {
          const sid = `lag-${driver}-${i}`;
          await a.store.set(sid, sessionData(60_000));
          await cluster.caughtUp();
          expect(await readsFromReplica(b.store, sid)).toBe(true);
          await cluster.pauseReplay();
          found.push(await shownAfter(a.store, b.store, sid, window));
          // Behind now, the standby is skipped: a live session is still found, from the primary.
          await a.store.set(`${sid}-live`, sessionData(60_000));
          expect(await b.store.get(`${sid}-live`)).not.toBeNull();
          await cluster.resumeReplay();
        }
        found.sort((x, y) => x - y);
        console.log(
          `[replicas] ${driver} window ${window} ms, replay paused: an end found live by the other instance for p50 ${found[10]!.toFixed(1)} ms, max ${found.at(-1)!.toFixed(1)} ms; B's lookups ${JSON.stringify(b.store.replicaStats())}`,
        );
        expect(b.store.replicaStats()!.fellBack).toBeGreaterThan(0);
      } finally {
        await cluster.resumeReplay();
        await cluster.setSynchronous(true);
      }
    });

    it("window 0: an end waits until the synchronous standby applied it, so no lookup there finds the session once it resolved", async () => {
      const a = instance(driver);
      const b = instance(driver);
      await Promise.all([a.store.ready(), b.store.ready()]);
      await a.store.set("applied-1", sessionData(60_000));
      expect(await readsFromReplica(b.store, "applied-1"), "B reads the standby").toBe(true);
      await cluster.pauseReplay();
      let resolved = false;
      const ending = a.store.destroy("applied-1").then(() => void (resolved = true));
      try {
        await sleep(300);
        expect(resolved, "the end resolved before the standby applied it").toBe(false);
      } finally {
        await cluster.resumeReplay();
      }
      await ending;
      expect(await b.store.get("applied-1")).toBeNull();
    });

    it("window W: a session this instance ended is never found again, not even on a replica that is behind (its lookups go to the primary)", async () => {
      await cluster.setSynchronous(false);
      const b = instance(driver, { replicaReads: { window: 1_000 } });
      try {
        for (let i = 0; i < 5; i++) {
          const sid = `own-${driver}-${i}`;
          await b.store.set(sid, sessionData(60_000));
          await cluster.caughtUp();
          expect(await readsFromReplica(b.store, sid), "B reads the standby").toBe(true);
          await cluster.pauseReplay();
          try {
            // The standby still holds the session, and B's last sample is recent: only the end B knows of keeps it off.
            await b.store.destroy(sid);
            for (let j = 0; j < 5; j++) expect(await b.store.get(sid)).toBeNull();
          } finally {
            await cluster.resumeReplay();
          }
        }
      } finally {
        await cluster.setSynchronous(true);
      }
    });

    it("a replica that goes down costs no request: lookups fall back to the primary, it is reported once, and read again once back", async () => {
      const b = instance(driver);
      await b.store.set("down-1", sessionData(60_000));
      await cluster.caughtUp();
      // The first lookups sample the primary and ask the standby who it is; then the standby answers.
      expect(await readsFromReplica(b.store, "down-1"), "the standby answers before it goes down").toBe(true);
      await cluster.stopStandby();
      try {
        for (let i = 0; i < 40; i++) {
          expect(await b.store.get("down-1")).not.toBeNull();
          await sleep(25);
        }
        const reports = b.errors.filter((e) => (e as SessionStoreError).code === "UNAVAILABLE");
        expect(reports).toHaveLength(1);
        expect(reports[0]!.message).toMatch(/read replica 1 of 1 failed .*lookups go to the primary until it answers again/);
      } finally {
        await cluster.startStandby();
        await cluster.setSynchronous(true);
      }
      expect(await readsFromReplica(b.store, "down-1"), "the standby is read again once it is back").toBe(true);
    });
  });

  // The racing model (test/support/model.ts) with every instance reading the synchronous standby:
  // invariants 1-10 hold as on one server, the ended sessions read through the replica included.
  describe("the racing model, every lookup through the synchronous standby", () => {
    lifecycleTests(DRIVERS, { seed: (config) => seedOf(`replica ${config.name}`), runs: 10, maxCommands: 25, budgetMs: 6_000, shrinkMs: 10_000 }, replica);
  });
});
