import { execFile } from "node:child_process";
import { join } from "node:path";
import { drizzle } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import pg from "pg";
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { lockKey, profileOf, resolveReaperOptions, type ResolvedReaperOptions } from "./support/internals.js";
import { Reaper, reap, type ReapResult } from "../src/index.js";
import { SessionStore, SessionStoreError, createSessionTable } from "../src/index.js";
import { DATABASE_URL, drivers, openDb, sessionData, sleep, type TestDb } from "./support/db.js";

const result = (over: Partial<ReapResult> = {}): ReapResult => ({ deleted: 0, ended: 0, batches: 0, durationMs: 1, skipped: false, ...over });

/** A promise and the functions that settle it. */
function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise, resolve, reject };
}

/** Lets pending promise callbacks run (fake timers do not advance them). */
const flush = async () => {
  for (let i = 0; i < 5; i++) await Promise.resolve();
};

describe("Reaper scheduling", () => {
  const options: ResolvedReaperOptions = { interval: 60_000, batchSize: 100, jitter: 0 };
  let reapers: Reaper[] = [];
  const make = (run: (signal: AbortSignal) => Promise<ReapResult>, opts = options, events = { onReap: vi.fn(), onError: vi.fn() }) => {
    const reaper = new Reaper(run, opts, events);
    reapers.push(reaper);
    return { reaper, events };
  };

  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(async () => {
    await Promise.all(reapers.map((r) => r.stop()));
    reapers = [];
    vi.restoreAllMocks();
    vi.useRealTimers();
  });

  it("runs a round every interval, counted from the end of the previous round", async () => {
    const run = vi.fn(async () => result({ deleted: 3 }));
    const { reaper, events } = make(run);
    reaper.start();
    expect(reaper.running).toBe(true);
    await vi.advanceTimersByTimeAsync(59_999);
    expect(run).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(1);
    expect(run).toHaveBeenCalledTimes(1);
    expect(events.onReap).toHaveBeenCalledWith(result({ deleted: 3 }));
    await vi.advanceTimersByTimeAsync(60_000);
    expect(run).toHaveBeenCalledTimes(2);
    await vi.advanceTimersByTimeAsync(3 * 60_000);
    expect(run).toHaveBeenCalledTimes(5);
  });

  it("spreads each delay over interval ± jitter, so instances started together drift apart", () => {
    const { reaper } = make(async () => result(), { ...options, jitter: 0.1 });
    const delays = Array.from({ length: 2_000 }, () => reaper.nextDelay());
    expect(Math.min(...delays)).toBeGreaterThanOrEqual(54_000);
    expect(Math.max(...delays)).toBeLessThanOrEqual(66_000);
    // Spread over the whole range, not clustered at one value.
    expect(Math.min(...delays)).toBeLessThan(55_000);
    expect(Math.max(...delays)).toBeGreaterThan(65_000);
  });

  it("fires two instances started at the same moment at different times", async () => {
    const random = vi.spyOn(Math, "random");
    random.mockReturnValueOnce(0).mockReturnValueOnce(0.999);
    const first = vi.fn(async () => result());
    const second = vi.fn(async () => result());
    make(first, { ...options, jitter: 0.1 }).reaper.start();
    make(second, { ...options, jitter: 0.1 }).reaper.start();
    await vi.advanceTimersByTimeAsync(54_000);
    expect(first).toHaveBeenCalledTimes(1);
    expect(second).not.toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(66_000 - 54_000);
    expect(second).toHaveBeenCalledTimes(1);
  });

  it("never overlaps rounds: a slow round delays the next one", async () => {
    const slow = deferred<ReapResult>();
    const run = vi.fn().mockReturnValueOnce(slow.promise).mockResolvedValue(result());
    const { reaper } = make(run);
    reaper.start();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(run).toHaveBeenCalledTimes(1);
    // Ten intervals pass while the first round is still running: no second round starts.
    await vi.advanceTimersByTimeAsync(600_000);
    expect(run).toHaveBeenCalledTimes(1);
    slow.resolve(result());
    await flush();
    await vi.advanceTimersByTimeAsync(59_999);
    expect(run).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(run).toHaveBeenCalledTimes(2);
  });

  it("stop() cancels the next round, and start() after stop resumes", async () => {
    const run = vi.fn(async () => result());
    const { reaper } = make(run);
    reaper.start();
    reaper.start(); // a second start does not double the rounds
    await vi.advanceTimersByTimeAsync(60_000);
    expect(run).toHaveBeenCalledTimes(1);
    await reaper.stop();
    expect(reaper.running).toBe(false);
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(run).toHaveBeenCalledTimes(1);
    expect(vi.getTimerCount()).toBe(0);
    reaper.start();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(run).toHaveBeenCalledTimes(2);
  });

  it("stop() during a round aborts it between batches and waits for it; no round follows", async () => {
    const inRound = deferred<AbortSignal>();
    const finish = deferred();
    const run = vi.fn(async (signal: AbortSignal) => {
      inRound.resolve(signal);
      await finish.promise;
      return result({ deleted: 1 });
    });
    const { reaper, events } = make(run);
    reaper.start();
    await vi.advanceTimersByTimeAsync(60_000);
    const signal = await inRound.promise;
    let stopped = false;
    const stopping = reaper.stop().then(() => (stopped = true));
    expect(signal.aborted).toBe(true);
    await flush();
    expect(stopped).toBe(false);
    finish.resolve();
    await stopping;
    expect(events.onReap).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(10 * 60_000);
    expect(run).toHaveBeenCalledTimes(1);
  });

  it("does not keep the process alive: the timer is unref()'d", () => {
    const setTimeoutSpy = vi.spyOn(globalThis, "setTimeout");
    const { reaper } = make(async () => result());
    reaper.start();
    expect(setTimeoutSpy).toHaveBeenCalledTimes(1);
    const handle: any = setTimeoutSpy.mock.results[0]!.value;
    expect(handle.hasRef()).toBe(false);
  });

  it("reports a failed round to onError and keeps reaping", async () => {
    const boom = new Error("connection refused");
    const run = vi
      .fn()
      .mockRejectedValueOnce(boom)
      .mockRejectedValueOnce("not an Error")
      .mockResolvedValue(result({ deleted: 2 }));
    const { reaper, events } = make(run);
    reaper.start();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(events.onError).toHaveBeenCalledWith(boom);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(events.onError).toHaveBeenCalledTimes(2);
    expect(events.onError.mock.calls[1]![0]).toBeInstanceOf(Error);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(events.onReap).toHaveBeenCalledWith(result({ deleted: 2 }));
    expect(reaper.running).toBe(true);
  });

  it("survives listeners that throw: onReap's error goes to onError, and rounds continue", async () => {
    const run = vi.fn(async () => result());
    const onError = vi.fn(() => {
      throw new Error("listener bug too");
    });
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const { reaper } = make(run, options, {
      onReap: vi.fn(() => {
        throw new Error("listener bug");
      }),
      onError,
    });
    reaper.start();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(onError).toHaveBeenCalledWith(expect.objectContaining({ message: "listener bug" }));
    expect(warn).toHaveBeenCalled();
    await vi.advanceTimersByTimeAsync(60_000);
    expect(run).toHaveBeenCalledTimes(2);
  });
});

describe("resolveReaperOptions", () => {
  it("is on by default, with a 15 minute interval, batches of 5000 and 10% jitter", () => {
    expect(resolveReaperOptions(undefined)).toEqual({ interval: 900_000, batchSize: 5_000, jitter: 0.1 });
    expect(resolveReaperOptions({ interval: 60_000 })).toEqual({ interval: 60_000, batchSize: 5_000, jitter: 0.1 });
  });

  it("turns off with false (reaping from cron)", () => {
    expect(resolveReaperOptions(false)).toBe(false);
  });

  it.each([
    [{ interval: 0 }, /`interval` must be a positive number of milliseconds/],
    [{ interval: -1 }, /`interval` must be a positive/],
    [{ interval: "15m" }, /`interval` must be a positive/],
    [{ interval: 30 * 86_400_000 }, /`interval` must be at most/],
    [{ batchSize: 0 }, /`batchSize` must be a positive number of rows/],
    [{ batchSize: 2.5 }, /`batchSize` must be a whole number/],
    [{ jitter: 1.5 }, /`jitter` must be a fraction of the interval between 0 and 1/],
    [{ jitter: -0.1 }, /`jitter` must be a fraction/],
    [{ intervall: 1000 }, /unknown `reaper` option `intervall`/],
    [true, /`reaper` must be an options object/],
    [null, /`reaper` must be an options object/],
  ])("rejects %j with a TypeError that says what to pass", (value, message) => {
    expect(() => resolveReaperOptions(value as any)).toThrow(TypeError);
    expect(() => resolveReaperOptions(value as any)).toThrow(message);
  });
});

/** Rows inserted straight with SQL (no store), fast. `$table` is the test table. */
/** Inserts rows owned by user "u1" unless `anonymous`. */
async function fill(t: TestDb, prefix: string, count: number, columns: { expires: string; ended?: string; reason?: string; anonymous?: boolean }) {
  await t.raw(`insert into $table (key, handle, user_id, data, expires_at, ended_at, end_reason)
    select '${prefix}-' || i, 'h-${prefix}-' || i, ${columns.anonymous ? "null" : "'u1'"}, '{"cookie":{"originalMaxAge":60000}}'::jsonb,
      ${columns.expires}, ${columns.ended ?? "null"}, ${columns.reason ? `'${columns.reason}'` : "null"}
    from generate_series(1, ${count}) as i`);
}

const keysOf = async (t: TestDb) => (await t.raw<{ key: string }>(`select key from $table order by key`)).map((r) => r.key);
const countOf = async (t: TestDb, where = "true") => Number((await t.raw<{ n: number }>(`select count(*)::int as n from $table where ${where}`))[0]!.n);

// pg-proxy: drizzle's HTTP proxy driver (no transactions: each batch takes the lock itself), see proxy.test.ts.
describe.each([...drivers, ...(DATABASE_URL ? (["pg-proxy"] as const) : [])])("reap() on %s", (driver) => {
  let t: TestDb;
  beforeAll(async () => {
    t = await openDb(driver);
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(async () => {
    await t.raw(`delete from $table`);
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.restoreAllMocks();
  });

  it("deletes expired sessions and keeps live ones and tombstones not yet expired", async () => {
    const store = new SessionStore({ db: t.db, table: t.table });
    await store.set("live", sessionData(3_600_000, { who: "live" }));
    await store.set("gone", sessionData(-1_000));
    await fill(t, "expired", 5, { expires: "now() - interval '1 minute' - i * interval '1 second'" });
    await fill(t, "alive", 3, { expires: "now() + interval '1 hour'" });
    // A logged-out session keeps its tombstone until its original expiry (a request in flight cannot revive it).
    await fill(t, "tomb-fresh", 2, { expires: "now() + interval '1 hour'", ended: "now() - interval '1 minute'", reason: "logout" });
    await fill(t, "tomb-due", 2, { expires: "now() - interval '1 minute'", ended: "now() - interval '2 hours'", reason: "logout" });

    const r = await reap({ db: t.db, table: t.table });

    expect(r).toMatchObject({ deleted: 8, ended: 0, batches: 1, skipped: false });
    expect(r.durationMs).toBeGreaterThanOrEqual(0);
    expect((await keysOf(t)).filter((k) => !k.startsWith("alive") && !k.startsWith("tomb-fresh"))).toHaveLength(1); // the store's live row
    expect(await countOf(t, "key like 'alive-%'")).toBe(3);
    expect(await countOf(t, "key like 'tomb-fresh-%'")).toBe(2);
    expect(((await store.get("live")) as any).who).toBe("live");
    // Nothing left to do: a second round changes nothing.
    expect(await reap({ db: t.db, table: t.table })).toMatchObject({ deleted: 0, ended: 0, batches: 0, skipped: false });
  });

  it("with retainEnded, turns expired sessions into ended history, then purges history after retention", async () => {
    const hour = 3_600_000;
    await fill(t, "expired-recently", 4, { expires: "now() - interval '10 minutes'" });
    await fill(t, "expired-long-ago", 2, { expires: "now() - interval '2 hours'" });
    await fill(t, "alive", 3, { expires: "now() + interval '90 minutes'" });
    await fill(t, "history-due", 2, { expires: "now() - interval '90 minutes'", ended: "now() - interval '2 hours'", reason: "logout" });
    await fill(t, "history-recent", 2, { expires: "now() - interval '5 minutes'", ended: "now() - interval '10 minutes'", reason: "revoked" });
    // Ended long ago but its cookie is still valid: the tombstone stays until expiry, whatever the retention.
    await fill(t, "tomb-unexpired", 1, { expires: "now() + interval '90 minutes'", ended: "now() - interval '2 hours'", reason: "logout" });
    // Anonymous sessions (e.g. a login page's, ended by the login's regenerate) have no listable history:
    // they go at expiry, whatever the retention.
    await fill(t, "anon-expired", 2, { expires: "now() - interval '10 minutes'", anonymous: true });
    await fill(t, "anon-ended", 2, { expires: "now() - interval '5 minutes'", ended: "now() - interval '10 minutes'", reason: "logout", anonymous: true });
    await fill(t, "anon-tomb", 1, { expires: "now() + interval '5 minutes'", ended: "now() - interval '10 minutes'", reason: "logout", anonymous: true });

    const r = await reap({ db: t.db, table: t.table, retainEnded: hour });

    expect(r).toMatchObject({ ended: 4, deleted: 4 + 2 + 2, skipped: false });
    expect(await countOf(t, "key like 'anon-%'")).toBe(1);
    const converted = await t.raw<{ same: boolean; reason: string; data: string; version: number }>(
      `select ended_at = expires_at as same, end_reason as reason, data::text as data, version from $table where key like 'expired-recently-%'`,
    );
    expect(converted).toHaveLength(4);
    for (const row of converted) expect(row).toEqual({ same: true, reason: "expired", data: "{}", version: 2 });
    expect(await countOf(t, "key like 'expired-long-ago-%' or key like 'history-due-%'")).toBe(0);
    expect(await countOf(t, "key like 'history-recent-%'")).toBe(2);
    expect(await countOf(t, "key like 'tomb-unexpired-%'")).toBe(1);
    expect(await countOf(t, "key like 'alive-%' and ended_at is null")).toBe(3);

    // Two hours later the new history is past retention and goes; the unexpired tombstones are now expired too.
    // The reaper judges by the database's clock: move the rows two hours back rather than any clock forward.
    await t.raw(`update $table set expires_at = expires_at - interval '2 hours 1 minute', ended_at = ended_at - interval '2 hours 1 minute'`);
    const later = await reap({ db: t.db, table: t.table, retainEnded: hour });
    // The live sessions expired meanwhile (less than the retention ago): they become history, not deleted.
    expect(later).toMatchObject({ deleted: 4 + 2 + 1 + 1, ended: 3 });
    expect(await keysOf(t)).toEqual(["alive-1", "alive-2", "alive-3"]);
    expect(await countOf(t, "end_reason = 'expired'")).toBe(3);
  });

  // PGlite runs in this process and reads its clock from Date.now(): there the two clocks are one and cannot drift.
  describe.skipIf(driver === "pglite")("one clock: the database's, whatever the app server's says", () => {
    const minute = 60_000;
    // Captured before any stub: the stubs below shift it.
    const realNow = Date.now;
    // Each test's stub is undone by the afterEach above.
    const skewed = (by: number) => vi.spyOn(Date, "now").mockImplementation(() => realNow.call(Date) + by);

    it("a server 10 minutes ahead deletes no live session; one 10 minutes behind deletes what expired", async () => {
      // Rows written with the database's now(): no app clock in them.
      await fill(t, "live", 2, { expires: "now() + interval '60 seconds'" });
      await fill(t, "tomb-live", 1, { expires: "now() + interval '60 seconds'", ended: "now() - interval '1 minute'", reason: "logout" });
      await fill(t, "expired", 3, { expires: "now() - interval '1 second'" });

      skewed(10 * minute);
      expect(await reap({ db: t.db, table: t.table })).toMatchObject({ deleted: 3, ended: 0, skipped: false });
      expect(await keysOf(t)).toEqual(["live-1", "live-2", "tomb-live-1"]);

      await fill(t, "expired-again", 2, { expires: "now() - interval '1 second'" });
      skewed(-10 * minute);
      expect(await reap({ db: t.db, table: t.table })).toMatchObject({ deleted: 2, ended: 0, skipped: false });
      expect(await keysOf(t)).toEqual(["live-1", "live-2", "tomb-live-1"]);
    });

    it("with retainEnded: a server ahead neither ends live sessions nor purges history early; one behind is not late", async () => {
      const retainEnded = 5 * minute;
      await fill(t, "live", 2, { expires: "now() + interval '60 seconds'" });
      // Ended 1 minute ago: 4 more minutes of retention.
      await fill(t, "history-kept", 2, { expires: "now() - interval '1 minute'", ended: "now() - interval '1 minute'", reason: "logout" });

      skewed(10 * minute);
      expect(await reap({ db: t.db, table: t.table, retainEnded })).toMatchObject({ deleted: 0, ended: 0, batches: 0, skipped: false });
      expect(await countOf(t, "key like 'live-%' and ended_at is null")).toBe(2);
      expect(await countOf(t, "key like 'history-kept-%'")).toBe(2);

      // Expired 1 second ago: becomes history. Ended 6 minutes ago: past retention, purged.
      await fill(t, "expired", 3, { expires: "now() - interval '1 second'" });
      await fill(t, "history-due", 2, { expires: "now() - interval '6 minutes'", ended: "now() - interval '6 minutes'", reason: "logout" });
      skewed(-10 * minute);
      expect(await reap({ db: t.db, table: t.table, retainEnded })).toMatchObject({ deleted: 2, ended: 3, skipped: false });
      expect(await countOf(t, "key like 'expired-%' and end_reason = 'expired'")).toBe(3);
      expect(await countOf(t, "key like 'history-due-%'")).toBe(0);
      expect(await countOf(t, "key like 'history-kept-%'")).toBe(2);
      expect(await countOf(t, "key like 'live-%' and ended_at is null")).toBe(2);
    });
  });

  it("clears a backlog of many batches, each batch committed on its own", async () => {
    await fill(t, "backlog", 2_500, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
    await fill(t, "alive", 10, { expires: "now() + interval '1 hour'" });
    const progress: Array<{ batches: number; remaining: number }> = [];
    const r = await reap({
      db: t.db,
      table: t.table,
      batchSize: 300,
      // Between batches, from outside the round: what earlier batches deleted is already gone (committed).
      onBatch: async ({ batches }) => void progress.push({ batches, remaining: await countOf(t, "key like 'backlog-%'") }),
    });
    expect(r).toMatchObject({ deleted: 2_500, ended: 0, batches: 9, skipped: false });
    expect(await countOf(t)).toBe(10);
    expect(progress.slice(0, 3)).toEqual([
      { batches: 1, remaining: 2_200 },
      { batches: 2, remaining: 1_900 },
      { batches: 3, remaining: 1_600 },
    ]);
    expect(progress.at(-1)).toEqual({ batches: 9, remaining: 0 });
  });

  it("turns a backlog into history in batches when retaining ended sessions", async () => {
    // Many rows on the same instant too: the batches must not get stuck on ties.
    await fill(t, "backlog", 2_500, { expires: "date_trunc('second', now()) - interval '10 minutes' + (i / 100) * interval '1 millisecond'" });
    const r = await reap({ db: t.db, table: t.table, batchSize: 300, retainEnded: 3_600_000 });
    expect(r).toMatchObject({ deleted: 0, ended: 2_500, batches: 9 });
    expect(await countOf(t, "ended_at is null")).toBe(0);
    expect(await reap({ db: t.db, table: t.table, batchSize: 300, retainEnded: 3_600_000 })).toMatchObject({ ended: 0, deleted: 0, batches: 0 });
  });

  it("stops between batches when aborted, keeping what it did", async () => {
    await fill(t, "backlog", 1_000, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
    const abort = new AbortController();
    const r = await reap({ db: t.db, table: t.table, batchSize: 100, signal: abort.signal, onBatch: ({ batches }) => void (batches === 2 && abort.abort()) });
    expect(r).toMatchObject({ deleted: 200, batches: 2 });
    expect(await countOf(t)).toBe(800);
  });

  it("fails with a SessionStoreError that says what to do when the table is missing", async () => {
    const missing = createSessionTable("no_such_table", { schema: t.schema });
    const error = await reap({ db: t.db, table: missing }).catch((e) => e);
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(error.code).toBe("TABLE_MISSING");
    expect(error.message).toMatch(/"no_such_table" not found; run the migrations/);
  });

  it("rejects bad arguments with a TypeError", async () => {
    await expect(reap({ db: t.db, table: t.table, batchSize: 0 })).rejects.toThrow(/`batchSize` must be a positive/);
    await expect(reap({ db: t.db, table: t.table, retainEnded: -1 })).rejects.toThrow(/`retainEnded` must be a non-negative/);
    await expect(reap({ db: t.db, table: t.table, timeout: 0 })).rejects.toThrow(/`timeout` must be a positive number of milliseconds/);
    await expect(reap({ db: t.db, table: t.table, timeout: "10s" as any })).rejects.toThrow(/`timeout` must be a positive/);
    await expect(reap({} as any)).rejects.toThrow(/reap needs `db`/);
  });
});

describe("Reaper with reap(), on PGlite and real timers", () => {
  it("reaps on its own once started, and reports each round", async () => {
    const t = await openDb("pglite");
    try {
      await fill(t, "expired", 30, { expires: "now() - interval '1 hour'" });
      const rounds: ReapResult[] = [];
      const firstRound = deferred<ReapResult>();
      const reaper = new Reaper(
        (signal) => reap({ db: t.db, table: t.table, batchSize: 10, signal }),
        { interval: 20, batchSize: 10, jitter: 0.5 },
        {
          onReap: (r) => (rounds.push(r), firstRound.resolve(r)),
          onError: (e) => firstRound.reject(e),
        },
      );
      reaper.start();
      expect(await firstRound.promise).toMatchObject({ deleted: 30, batches: 3, skipped: false });
      await reaper.stop();
      const count = rounds.length;
      expect(await countOf(t)).toBe(0);
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(rounds).toHaveLength(count);
    } finally {
      await t.close();
    }
  });
});

describe("the driver profile: singleConnection", () => {
  it("recognises clients that cannot run a statement beside an open transaction", async () => {
    const t = await openDb("pglite");
    try {
      expect(profileOf(t.db).singleConnection).toBe(true);
    } finally {
      await t.close();
    }
    expect(profileOf(drizzle({ client: new pg.Client() })).singleConnection).toBe(true);
    expect(profileOf(drizzle({ client: new pg.Pool({ max: 1 }) })).singleConnection).toBe(true);
    expect(profileOf(drizzle({ client: new pg.Pool() })).singleConnection).toBe(false);
  });
});

/** The pid of the backend holding the reaper's advisory lock on a table, if any. */
async function lockHolder(t: TestDb): Promise<number | undefined> {
  const key = BigInt.asUintN(64, BigInt(lockKey(t.schema, "sessions")));
  const [row] = await t.raw<{ pid: number }>(
    `select pid from pg_locks where locktype = 'advisory' and granted and classid = ${key >> 32n} and objid = ${key & 0xffffffffn} and objsubid = 1`,
  );
  return row?.pid;
}

describe.skipIf(!DATABASE_URL)("reaper across instances, on a real Postgres", () => {
  let t: TestDb;
  const pools: Array<{ end(): Promise<void> }> = [];
  /** Another app instance: its own pool on the same database. */
  const instance = (driver: "node-postgres" | "postgres.js" = "node-postgres", max = 4) => {
    if (driver === "postgres.js") {
      const client = postgres(DATABASE_URL!, { max, onnotice: () => {} });
      pools.push({ end: () => client.end({ timeout: 5 }) });
      return drizzlePostgresJs({ client });
    }
    const pool = new pg.Pool({ connectionString: DATABASE_URL, max });
    // As every node-postgres app should: an idle connection that drops is reported here, not thrown.
    pool.on("error", () => {});
    pools.push(pool);
    return drizzle({ client: pool });
  };

  beforeAll(async () => {
    t = await openDb("node-postgres");
  });
  afterAll(async () => {
    await Promise.all(pools.map((p) => p.end()));
    await t?.close();
  });
  beforeEach(async () => {
    await t.raw(`delete from $table`);
  });

  it("two instances reaping at the same moment: exactly one does the round, the other skips; then the lock is free", async () => {
    await fill(t, "backlog", 2_000, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
    const [a, b] = [instance(), instance()];
    // Each round parks after its first batch, so neither can finish before the other has tried the lock.
    const parked = [deferred(), deferred()];
    const go = deferred();
    const round = (db: typeof a, i: number) => reap({ db, table: t.table, batchSize: 500, onBatch: async () => (parked[i]!.resolve(), go.promise) });
    const rounds = [round(a, 0), round(b, 1)];
    const settled = rounds.map((p, i) => p.then((r) => ({ i, r })));
    // One parks holding the lock; the other must then come back skipped, without waiting for the lock.
    const winner = await Promise.race(parked.map((p, i) => p.promise.then(() => i)));
    const loser = 1 - winner;
    const first = await Promise.race([settled[loser]!, parked[loser]!.promise.then(() => "both ran at once")]);
    expect(first).toEqual({ i: loser, r: expect.objectContaining({ skipped: true, deleted: 0, batches: 0 }) });
    expect(await lockHolder(t)).toBeDefined();
    go.resolve();
    expect((await settled[winner]!).r).toMatchObject({ skipped: false, deleted: 2_000, batches: 4 });
    expect(await countOf(t)).toBe(0);
    // The lock went with the round: the other instance's next round runs.
    expect(await lockHolder(t)).toBeUndefined();
    await fill(t, "more", 10, { expires: "now() - interval '1 minute'" });
    expect(await reap({ db: [a, b][loser]!, table: t.table })).toMatchObject({ skipped: false, deleted: 10 });
  });

  it("a round that fails releases the lock for the next one", async () => {
    await fill(t, "backlog", 1_000, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
    const [a, b] = [instance(), instance()];
    const failure = new Error("disk full, say");
    await expect(reap({ db: a, table: t.table, batchSize: 100, onBatch: () => Promise.reject(failure) })).rejects.toBe(failure);
    expect(await countOf(t)).toBe(900);
    expect(await reap({ db: b, table: t.table, batchSize: 100 })).toMatchObject({ skipped: false, deleted: 900 });
  });

  it.each(["node-postgres", "postgres.js"] as const)("ends with an error, not a hang, when the lock's connection is lost mid-round (%s)", async (driver) => {
    await fill(t, "backlog", 1_000, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
    const a: any = instance(driver);
    const killed = deferred();
    const round = reap({
      db: a,
      table: t.table,
      batchSize: 100,
      onBatch: async ({ batches }) => {
        if (batches !== 1) return;
        const pid = await lockHolder(t);
        expect(pid).toBeDefined();
        await t.raw(`select pg_terminate_backend(${pid})`);
        killed.resolve();
      },
    });
    const error = await round.catch((e) => e);
    await killed.promise;
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(error.message).toMatch(/the connection holding the reaper's lock was lost/);
    // What was committed stays committed; the next round (another connection from the same pool) finishes.
    expect(await countOf(t)).toBe(900);
    expect(await reap({ db: a, table: t.table, batchSize: 100 })).toMatchObject({ deleted: 900, skipped: false });
  });

  /** Holds `lock table ... in access exclusive mode` from a connection of its own until `release()`. */
  async function lockTable() {
    const blocker = new pg.Client({ connectionString: DATABASE_URL });
    await blocker.connect();
    await blocker.query("begin");
    await blocker.query(`lock table "${t.schema}".sessions in access exclusive mode`);
    return {
      release: async () => {
        await blocker.query("rollback");
        await blocker.end();
      },
    };
  }
  /** Whether another connection can take the reaper's lock right now (and lets go of it at once). */
  const lockFree = async () =>
    (await t.raw<{ locked: boolean }>(`select pg_try_advisory_xact_lock(${lockKey(t.schema, "sessions")}::bigint) as locked`))[0]!.locked;
  /** The round's outcome, or "still waiting" if it has not settled after a long while: the test must not hang. */
  const settled = <T>(round: Promise<T>) => Promise.race([round.catch((e: unknown) => e), sleep(10_000).then(() => "still waiting")]);

  it.each([
    ["node-postgres", 4],
    ["postgres.js", 4],
    // One connection: lock and batch share a transaction, which the database itself ends at the timeout.
    ["node-postgres", 1],
  ] as const)("a round blocked on a locked table fails with TIMEOUT and lets go of its lock at once (%s, max %i)", async (driver, max) => {
    await fill(t, "expired", 10, { expires: "now() - interval '1 minute'" });
    const db = instance(driver, max);
    expect(profileOf(db).singleConnection).toBe(max === 1);
    const table = await lockTable();
    try {
      const error: any = await settled(reap({ db, table: t.table, timeout: 500 }));
      expect(error).toBeInstanceOf(SessionStoreError);
      expect(error.code).toBe("TIMEOUT");
      expect(error.message).toMatch(/did not finish within 500 ms \(the `timeout` option\)/);
      // The table is still locked (the batch, on a pool, still waiting for it), yet another instance can take the lock.
      expect(await lockFree()).toBe(true);
    } finally {
      await table.release();
    }
    // The statement that timed out may still run now, unguarded; that is harmless (it skips locked rows and
    // checks each row again) and must not surface as an unhandled rejection. The next round runs as usual.
    expect(await reap({ db, table: t.table, timeout: 5_000 })).toMatchObject({ skipped: false });
    await vi.waitFor(async () => expect(await countOf(t)).toBe(0), { timeout: 5_000 });
    expect(await lockFree()).toBe(true);
  });

  it("waiting for a connection counts toward the timeout; the transaction that starts late gives its connection back", async () => {
    await fill(t, "expired", 10, { expires: "now() - interval '1 minute'" });
    const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 2 });
    pool.on("error", () => {});
    pools.push(pool);
    const db = drizzle({ client: pool });
    // Every connection of the pool busy, e.g. with slow requests.
    const held = [await pool.connect(), await pool.connect()];
    try {
      const error: any = await settled(reap({ db, table: t.table, timeout: 300 }));
      expect(error).toBeInstanceOf(SessionStoreError);
      expect(error.code).toBe("TIMEOUT");
      expect(error.message).toMatch(/within 300 ms/);
    } finally {
      for (const client of held) client.release();
    }
    // The abandoned transaction now gets a connection: it must roll back and return it, not hold the lock.
    await vi.waitFor(() => expect(pool.idleCount).toBe(pool.totalCount), { timeout: 5_000 });
    expect(await lockFree()).toBe(true);
    expect(await reap({ db, table: t.table })).toMatchObject({ skipped: false, deleted: 10 });
  });

  it("skips a row a request holds locked instead of waiting for it, and takes it next round", async () => {
    await fill(t, "expired", 50, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
    const writer = new pg.Client({ connectionString: DATABASE_URL });
    await writer.connect();
    try {
      // A request in the middle of writing one of the expired rows (e.g. a save racing expiry).
      await writer.query("begin");
      await writer.query(`select 1 from "${t.schema}".sessions where key = 'expired-7' for update`);
      const r = await reap({ db: instance(), table: t.table, batchSize: 20 });
      expect(r).toMatchObject({ deleted: 49, skipped: false });
      expect(await keysOf(t)).toEqual(["expired-7"]);
      await writer.query("commit");
      expect(await reap({ db: instance(), table: t.table })).toMatchObject({ deleted: 1 });
    } finally {
      await writer.end();
    }
  });

  it("does not block readers while a multi-batch round runs", async () => {
    const db = instance();
    const store = new SessionStore({ db, table: t.table });
    await store.set("reader", sessionData(3_600_000, { who: "reader" }));
    await fill(t, "backlog", 3_000, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
    const reads: Array<{ batches: number; who: unknown; finished: boolean }> = [];
    let finished = false;
    const r = await reap({
      db,
      table: t.table,
      batchSize: 500,
      // Mid-round (the lock is held and earlier batches committed), a request reads its session and completes.
      onBatch: async ({ batches }) => {
        const session: any = await store.get("reader");
        reads.push({ batches, who: session?.who, finished });
      },
    }).then((res) => ((finished = true), res));
    expect(r).toMatchObject({ deleted: 3_000, batches: 6 });
    expect(reads).toHaveLength(6);
    expect(reads.every((x) => x.who === "reader" && !x.finished)).toBe(true);
  });
});

describe("npx connect-drizzle reap (the CLI)", () => {
  const cli = join(import.meta.dirname, "..", "src", "cli.ts");
  const tsx = join(import.meta.dirname, "..", "node_modules", ".bin", "tsx");
  const run = (args: string[], env: Record<string, string | undefined>, nodeOptions = "") =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(tsx, [cli, ...args], { env: { ...process.env, ...env, NODE_OPTIONS: nodeOptions } }, (error, stdout, stderr) =>
        resolve({ code: error ? Number((error as any).code ?? 1) : 0, stdout, stderr }),
      );
    });

  describe.skipIf(!DATABASE_URL)("on a real Postgres", () => {
    let t: TestDb;
    beforeAll(async () => {
      t = await openDb("node-postgres");
    });
    afterAll(async () => {
      await t?.close();
    });

    it("runs one round on the table, prints the result as one JSON line and exits 0", async () => {
      await fill(t, "expired", 1_200, { expires: "now() - interval '1 hour' + i * interval '1 millisecond'" });
      await fill(t, "alive", 5, { expires: "now() + interval '1 hour'" });
      await fill(t, "recent", 3, { expires: "now() - interval '1 minute'" });
      const out = await run(["reap", "--schema", t.schema, "--batch-size", "500", "--retain-ended", "600000"], { DATABASE_URL });
      expect(out.stderr).toBe("");
      expect(out.code).toBe(0);
      const lines = out.stdout.trim().split("\n");
      expect(lines).toHaveLength(1);
      expect(JSON.parse(lines[0]!)).toMatchObject({ deleted: 1_200, ended: 3, batches: 4, skipped: false, durationMs: expect.any(Number) });
      expect(await countOf(t)).toBe(8);
      expect(await countOf(t, "end_reason = 'expired'")).toBe(3);
    });

    it("--timeout: a round blocked on a locked table exits 1 with a TIMEOUT message, without waiting for the table", async () => {
      await t.raw(`delete from $table`);
      await fill(t, "expired", 10, { expires: "now() - interval '1 minute'" });
      const blocker = new pg.Client({ connectionString: DATABASE_URL });
      await blocker.connect();
      try {
        await blocker.query("begin");
        await blocker.query(`lock table "${t.schema}".sessions in access exclusive mode`);
        const out = await Promise.race([run(["reap", "--schema", t.schema, "--timeout", "500"], { DATABASE_URL }), sleep(15_000).then(() => "still running")]);
        expect(out).toMatchObject({ code: 1, stdout: "" });
        expect((out as { stderr: string }).stderr).toMatch(/did not finish within 500 ms \(the `timeout` option\)/);
      } finally {
        await blocker.query("rollback");
        await blocker.end();
      }
    });

    it("exits 1 with a message that says what to do when the table is missing", async () => {
      const out = await run(["reap", "--schema", t.schema, "--table", "nope"], { DATABASE_URL });
      expect(out.code).toBe(1);
      expect(out.stdout).toBe("");
      expect(out.stderr).toMatch(/table "[^"]+"\."nope" not found; run the migrations/);
    });
  });

  it("exits 1 with a clear message without DATABASE_URL, or with a bad flag", async () => {
    const noUrl = await run(["reap"], { DATABASE_URL: "" });
    expect(noUrl.code).toBe(1);
    expect(noUrl.stderr).toMatch(/set DATABASE_URL/);
    const badFlag = await run(["reap", "--batch-size", "lots"], { DATABASE_URL: "postgres://nowhere/db" });
    expect(badFlag.code).toBe(1);
    expect(badFlag.stderr).toMatch(/--batch-size must be a positive whole number \(got "lots"\)/);
    const badTimeout = await run(["reap", "--timeout", "0"], { DATABASE_URL: "postgres://nowhere/db" });
    expect(badTimeout.code).toBe(1);
    expect(badTimeout.stderr).toMatch(/--timeout must be a positive whole number of milliseconds \(got "0"\)/);
    const badCommand = await run(["sweep"], { DATABASE_URL: "postgres://nowhere/db" });
    expect(badCommand.code).toBe(1);
    expect(badCommand.stderr).toMatch(/unknown command "sweep"/);
  });

  it("tells you to install pg when it is missing (pg is not a dependency of the package)", async () => {
    // A loader hook that makes `pg` unresolvable, as in a project that uses postgres.js or PGlite.
    const hook = `export async function resolve(s, c, next) { if (s === "pg") { const e = new Error("Cannot find package 'pg'"); e.code = "ERR_MODULE_NOT_FOUND"; throw e; } return next(s, c); }`;
    const register = `import { register } from "node:module"; register("data:text/javascript,${encodeURIComponent(hook)}");`;
    const out = await run(["reap"], { DATABASE_URL: "postgres://nowhere/db" }, `--import "data:text/javascript,${encodeURIComponent(register)}"`);
    expect(out.code).toBe(1);
    expect(out.stderr).toMatch(/the `pg` package is not installed here.*npm install pg/s);
  });
});

describe("the store's reaper", () => {
  let t: TestDb;
  beforeAll(async () => {
    t = await openDb("pglite");
  });
  afterAll(async () => {
    await t?.close();
    vi.useRealTimers();
  });

  it("store.reap() runs a round now and reports it", async () => {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false });
    await store.set("live", sessionData(60_000));
    await store.set("expired", sessionData(-1_000));
    expect(await store.reap()).toMatchObject({ deleted: 1, skipped: false });
    expect(await store.get("live")).not.toBeNull();
    await store.close();
  });

  it("runs on its interval, emits each round as a 'reap' event, and stops on close()", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const store = new SessionStore({ db: t.db, table: t.table, reaper: { interval: 60_000, jitter: 0 } });
    await store.set("expired-a", sessionData(-1_000));
    const rounds: ReapResult[] = [];
    store.on("reap", (r: ReapResult) => rounds.push(r));
    await vi.advanceTimersByTimeAsync(59_000);
    expect(rounds).toHaveLength(0);
    await vi.advanceTimersByTimeAsync(1_000);
    await vi.waitFor(() => expect(rounds).toHaveLength(1), { timeout: 5_000 });
    expect(rounds[0]).toMatchObject({ deleted: 1 });
    await store.close();
    await vi.advanceTimersByTimeAsync(600_000);
    expect(rounds).toHaveLength(1);
    vi.useRealTimers();
  });

  it("reaper: false schedules nothing; a bad reaper option is a TypeError at construction", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false });
    expect(vi.getTimerCount()).toBe(0);
    await store.close();
    vi.useRealTimers();
    expect(() => new SessionStore({ db: t.db, table: t.table, reaper: { interval: -1 } })).toThrow(TypeError);
  });
});
