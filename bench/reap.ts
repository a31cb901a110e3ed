/**
 * `npm run bench:reap`: the reaper against a backlog of 1,000,000 expired sessions while readers keep
 * calling SessionStore.get on 100,000 live ones, in one run (about 1 to 2 minutes). Reports rows/s reaped,
 * the readers' latency with and without reaping, and `get` latency on a 10k-row versus a 1.1M-row table.
 * For comparison, it also times connect-pg-simple's way: one unbounded DELETE of the same backlog.
 *
 * DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test); works in a schema of its own, dropped at
 * the end. Prints a markdown table and writes it to bench/REAP-RESULTS.md.
 */
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { createSessionTable, SessionStore } from "../src/index.js";
import { reap, type ReapResult } from "../src/reaper.js";
import { migrationScript } from "../test/support/db.js";

const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
const EXPIRED = 1_000_000;
const LIVE = 100_000;
const SMALL = 10_000;
const READERS = 4;
const BATCH_SIZE = 5_000;
const SAMPLE_MS = 5_000;
const schema = `bench_reap_${process.pid}`;
const started = Date.now();
const log = (line: string) => console.log(`[${((Date.now() - started) / 1000).toFixed(0).padStart(3)} s] ${line}`);

/** The key the store gives a session id without secrets: SHA-256, base64url (src/hash.ts), here in SQL. */
const sqlKey = (idExpr: string) => `rtrim(translate(encode(sha256(convert_to(${idExpr}, 'UTF8')), 'base64'), '+/', '-_'), '=')`;

async function fillLive(admin: pg.Pool, from: number, to: number) {
  await admin.query(`insert into "${schema}".sessions (key, handle, user_id, data, expires_at)
    select ${sqlKey("'live-' || i")}, 'h-live-' || i, 'user-' || (i % 5000),
      jsonb_build_object('cookie', jsonb_build_object('originalMaxAge', 86400000, 'expires', to_char(now() + interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'), 'httpOnly', true, 'path', '/'), 'user', i),
      now() + interval '1 day'
    from generate_series(${from}, ${to}) as i`);
}

async function fillExpired(admin: pg.Pool, tag: string) {
  // Spread over the last day, as a real backlog is (one row per ~86 ms).
  await admin.query(`insert into "${schema}".sessions (key, handle, user_id, data, expires_at)
    select 'x-${tag}-' || i, 'h-x-${tag}-' || i, null,
      '{"cookie":{"originalMaxAge":86400000,"httpOnly":true,"path":"/"},"cart":[1,2,3]}'::jsonb,
      now() - interval '1 day' + (i * 86) * interval '1 millisecond'
    from generate_series(1, ${EXPIRED}) as i`);
  await admin.query(`vacuum analyze "${schema}".sessions`);
}

interface Sample {
  latencies: number[];
  misses: number;
}

/** READERS loops of store.get on random live ids until `until` resolves (or `ms` passes). */
async function readLoop(store: SessionStore, liveCount: number, until: Promise<unknown> | number): Promise<Sample> {
  const sample: Sample = { latencies: [], misses: 0 };
  let done = false;
  const stop = typeof until === "number" ? new Promise((resolve) => setTimeout(resolve, until)) : until;
  void stop.finally(() => (done = true));
  await Promise.all(
    Array.from({ length: READERS }, async () => {
      while (!done) {
        const id = `live-${1 + Math.floor(Math.random() * liveCount)}`;
        const t0 = performance.now();
        const session = await store.get(id);
        sample.latencies.push(performance.now() - t0);
        if (session === null) sample.misses++;
      }
    }),
  );
  return sample;
}

const percentile = (values: number[], q: number) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
};
const ms = (v: number) => (v < 1 ? v.toFixed(3) : v.toFixed(2));
const int = (v: number) => Math.round(v).toLocaleString("en-US");
const stats = (s: Sample) => ({ p50: percentile(s.latencies, 0.5), p99: percentile(s.latencies, 0.99), n: s.latencies.length, misses: s.misses });

async function main() {
  // Other work on the machine skews every number here; the report says how busy it was.
  const loadAtStart = os.loadavg()[0]!;
  const admin = new pg.Pool({ connectionString: DATABASE_URL, max: 2 });
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 10, application_name: "bench-reap" });
  pool.on("error", () => {});
  admin.on("error", () => {});
  const pgVersion = (await admin.query("show server_version")).rows[0].server_version as string;
  await admin.query(`create schema "${schema}"; set search_path to "${schema}"; ${migrationScript()}; reset search_path;`);
  try {
    const table = createSessionTable("sessions", { schema });
    const db = drizzle({ client: pool });
    const store = new SessionStore({ db, table });

    // 1. get on a small table.
    await fillLive(admin, 1, SMALL);
    await admin.query(`vacuum analyze "${schema}".sessions`);
    const probe = `live-${SMALL}`;
    if ((await store.get(probe)) === null)
      throw new Error(`the SQL key of ${probe} differs from the store's (${createHash("sha256").update(probe).digest("base64url")})`);
    await readLoop(store, SMALL, 500);
    const small = stats(await readLoop(store, SMALL, SAMPLE_MS));
    log(`get on ${int(SMALL)} rows: p50 ${ms(small.p50)} ms, p99 ${ms(small.p99)} ms (${int(small.n)} gets)`);

    // 2. The backlog: 1M expired + 100k live; readers with no reaping.
    await fillLive(admin, SMALL + 1, LIVE);
    log(`filling ${int(EXPIRED)} expired rows...`);
    await fillExpired(admin, "a");
    const rows = Number((await admin.query(`select count(*) as n from "${schema}".sessions`)).rows[0].n);
    await readLoop(store, LIVE, 500);
    const idle = stats(await readLoop(store, LIVE, SAMPLE_MS));
    log(`get on ${int(rows)} rows, no reaping: p50 ${ms(idle.p50)} ms, p99 ${ms(idle.p99)} ms (${int(idle.n)} gets)`);

    // 3. Reap the backlog while the readers go on.
    const round = reap({ db, table, batchSize: BATCH_SIZE });
    const during = stats(await readLoop(store, LIVE, round));
    const result: ReapResult = await round;
    const rate = (result.deleted / result.durationMs) * 1000;
    log(
      `reaped ${int(result.deleted)} rows in ${int(result.durationMs)} ms (${int(rate)} rows/s, ${result.batches} batches); readers p50 ${ms(during.p50)} ms, p99 ${ms(during.p99)} ms (${int(during.n)} gets)`,
    );
    const left = Number((await admin.query(`select count(*) as n from "${schema}".sessions`)).rows[0].n);
    if (left !== LIVE) throw new Error(`expected ${LIVE} live rows after the round, found ${left}`);

    // 4. For comparison: connect-pg-simple's way, one unbounded DELETE of the same backlog.
    log(`refilling ${int(EXPIRED)} expired rows for the unbounded DELETE...`);
    await fillExpired(admin, "b");
    let unboundedMs = 0;
    const unbounded = (async () => {
      const t0 = performance.now();
      await pool.query(`delete from "${schema}".sessions where expires_at <= now()`);
      unboundedMs = performance.now() - t0;
    })();
    const duringUnbounded = stats(await readLoop(store, LIVE, unbounded));
    log(
      `unbounded DELETE: ${int(unboundedMs)} ms (${int((EXPIRED / unboundedMs) * 1000)} rows/s); readers p50 ${ms(duringUnbounded.p50)} ms, p99 ${ms(duringUnbounded.p99)} ms`,
    );

    const cpu = os.cpus();
    const machine = `${cpu.length} cores, ${cpu[0]?.model.trim() ?? "unknown CPU"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; Node ${process.version}; PostgreSQL ${pgVersion} (same host, loopback); load average ${loadAtStart.toFixed(1)} at start, ${os.loadavg()[0]!.toFixed(1)} at end; ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`;
    const met = (ok: boolean) => (ok ? "**met**" : "**not met**");
    const p99Ratio = during.p99 / idle.p99;
    const sizeRatio = idle.p50 / small.p50;
    const report = `# Reaper benchmark

Machine: ${machine}

\`npm run bench:reap\` (bench/reap.ts): ${int(EXPIRED)} expired + ${int(LIVE)} live sessions (expiries spread over a day) in one table;
\`reap()\` with batches of ${int(BATCH_SIZE)} (the default) while ${READERS} concurrent readers call \`SessionStore.get\` on random live
sessions through the same pg Pool (max 10). Latencies are per \`get\`, in ms; "no reaping" samples ${SAMPLE_MS / 1000} s on the full table
just before the round. One run; numbers move by tens of percent between runs on a shared machine.

| measure | result | target |  |
| --- | ---: | --- | --- |
| rows reaped per second | ${int(rate)} (${int(result.deleted)} rows in ${int(result.durationMs)} ms, ${result.batches} batches) | ≥ 100,000 | ${met(rate >= 100_000)} |
| reader p50 / p99, no reaping | ${ms(idle.p50)} / ${ms(idle.p99)} (${int(idle.n)} gets) | | |
| reader p50 / p99, during the round | ${ms(during.p50)} / ${ms(during.p99)} (${int(during.n)} gets) | p99 ≤ 2× idle | ${met(p99Ratio <= 2)} (${p99Ratio.toFixed(2)}×) |
| \`get\` p50 / p99 on ${int(SMALL)} rows | ${ms(small.p50)} / ${ms(small.p99)} | | |
| \`get\` p50 / p99 on ${int(rows)} rows | ${ms(idle.p50)} / ${ms(idle.p99)} | p50 within 1.2× | ${met(sizeRatio <= 1.2)} (${sizeRatio.toFixed(2)}×) |
| for comparison: one unbounded DELETE (connect-pg-simple's way) | ${int((EXPIRED / unboundedMs) * 1000)} rows/s; readers p50 / p99 ${ms(duringUnbounded.p50)} / ${ms(duringUnbounded.p99)} | | |

Reader misses (a live session not found): ${idle.misses + during.misses + duringUnbounded.misses + small.misses}.
`;
    console.log(`\n${report}`);
    writeFileSync(join(import.meta.dirname, "REAP-RESULTS.md"), report);
    log("wrote bench/REAP-RESULTS.md");
  } finally {
    await admin.query(`drop schema if exists "${schema}" cascade`).catch(() => {});
    await pool.end();
    await admin.end();
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
