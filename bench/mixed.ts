/**
 * Mixed workload: two connect-drizzle instances on one table (each its own pg Pool), as two app servers of
 * one deployment, under concurrency 32 split over them for a fixed time: 90% reads (`get` of a random live
 * session), 5% logins (`set` of a new session with a user) and 5% logouts (`destroy` of a random live
 * session), each on an instance picked at random. Run with `cache: {}` on both, then without cache, so the
 * hit ratio and the throughput have something to be read against. Each instance's statements are counted
 * on its own pool (support/statements.ts).
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { MAX_AGE, MIXED } from "./support/config.js";
import { Samples } from "./support/stats.js";
import { openStore, type OpenStore } from "./support/stores.js";

export interface MixedRun {
  variant: "cache" | "no cache";
  seconds: number;
  ops: number;
  opsPerSec: number;
  reads: number;
  readsPerSec: number;
  logins: number;
  logouts: number;
  /** Latency of every operation, ms. */
  p50: number;
  p99: number;
  /** Latency of the reads alone, ms. */
  readP50: number;
  readP99: number;
  /** SELECTs other than the cache's probe, both instances: the reads that went to the database. */
  lookups: number;
  /** Every statement of both instances (writes and the cache's probes included). */
  statements: number;
  /** Reads answered without a lookup of their own ÷ reads (1 − lookups ÷ reads). */
  hitRatio: number;
  /** Reads and lookups per instance. */
  instances: Array<{ reads: number; lookups: number; statements: number }>;
  /** Reads of a live session that found nothing (a logout of it racing the read), and failed operations. */
  notFound: number;
  errors: number;
}

/** A login's session: the cookie and a passport user, as passport stores it. */
function loginSession(user: string): any {
  return {
    cookie: { originalMaxAge: MAX_AGE, expires: new Date(Date.now() + MAX_AGE).toISOString(), secure: false, httpOnly: true, path: "/", sameSite: "lax" },
    passport: { user },
  };
}

/** One variant: two instances, seeded, warmed up, then run for `MIXED.durationMs`. */
async function runVariant(schema: string, variant: MixedRun["variant"]): Promise<MixedRun> {
  const cache = variant === "cache" ? {} : undefined;
  // openStore waits until each cache is live (its probe came back): before that every read is a query.
  const instances: OpenStore[] = [];
  try {
    for (let i = 0; i < 2; i++) instances.push(await openStore("connect-drizzle", { schema, cache, count: true }));
    const prefix = `mixed-${variant === "cache" ? "c" : "n"}-${randomBytes(9).toString("base64url")}-`;
    let made = 0;
    const live: string[] = [];
    const pick = () => instances[(Math.random() * instances.length) | 0]!;
    for (let i = 0; i < MIXED.sessions; i += 32) {
      const ids = Array.from({ length: Math.min(32, MIXED.sessions - i) }, () => `${prefix}${made++}`);
      await Promise.all(ids.map((sid) => pick().ops.set(sid, loginSession(`u${made}`))));
      live.push(...ids);
    }

    let counting = false;
    const tally = instances.map(() => ({ reads: 0 }));
    const all = new Samples();
    const reads = new Samples();
    let logins = 0;
    let logouts = 0;
    let notFound = 0;
    let errors = 0;
    let firstError: unknown;
    const step = async () => {
      const k = (Math.random() * instances.length) | 0;
      const store = instances[k]!;
      const r = Math.random();
      const t0 = performance.now();
      if (r < MIXED.reads) {
        if (counting) tally[k]!.reads++;
        const found = await store.ops.get(live[(Math.random() * live.length) | 0]!);
        if (!counting) return;
        if (!found) notFound++;
        reads.push(performance.now() - t0);
      } else if (r < MIXED.reads + (1 - MIXED.reads) / 2 || live.length < 32) {
        const sid = `${prefix}${made++}`;
        await store.ops.set(sid, loginSession(`u${made}`));
        // Readable once stored.
        live.push(sid);
        if (counting) logins++;
      } else {
        // Out of the pool first, so that no read picks it meanwhile.
        const i = (Math.random() * live.length) | 0;
        const sid = live[i]!;
        live[i] = live[live.length - 1]!;
        live.pop();
        await store.ops.destroy(sid);
        if (counting) logouts++;
      }
      if (counting) all.push(performance.now() - t0);
    };
    const drive = async (until: number) => {
      const worker = async () => {
        while (performance.now() < until) {
          await step().catch((error) => {
            errors++;
            firstError ??= error;
          });
        }
      };
      await Promise.all(Array.from({ length: MIXED.concurrency }, worker));
    };

    await drive(performance.now() + MIXED.warmupMs);
    errors = 0;
    for (const store of instances) store.statements!.reset();
    counting = true;
    const t0 = performance.now();
    await drive(t0 + MIXED.durationMs);
    const seconds = (performance.now() - t0) / 1000;
    counting = false;
    if (firstError) console.error(`  mixed (${variant}): ${errors} errors, first: ${(firstError as Error)?.message ?? firstError}`);

    const counts = instances.map((store) => store.statements!.read());
    const lookups = counts.reduce((n, c) => n + c.lookups, 0);
    const statements = counts.reduce((n, c) => n + c.statements, 0);
    const [p50, p99] = all.percentiles(50, 99);
    const [readP50, readP99] = reads.percentiles(50, 99);
    return {
      variant,
      seconds,
      ops: all.length,
      opsPerSec: all.length / seconds,
      reads: reads.length,
      readsPerSec: reads.length / seconds,
      logins,
      logouts,
      p50: p50!,
      p99: p99!,
      readP50: readP50!,
      readP99: readP99!,
      lookups,
      statements,
      hitRatio: reads.length ? Math.max(0, 1 - lookups / reads.length) : NaN,
      instances: counts.map((c, k) => ({ reads: tally[k]!.reads, lookups: c.lookups, statements: c.statements })),
      notFound,
      errors,
    };
  } finally {
    for (const store of instances) await store.close().catch(() => {});
  }
}

/** The mixed workload with the cache, then without. */
export async function benchMixed(schema: string, log: (line: string) => void): Promise<MixedRun[]> {
  const runs: MixedRun[] = [];
  for (const variant of ["cache", "no cache"] as const) {
    const r = await runVariant(schema, variant);
    runs.push(r);
    log(
      `  mixed, ${variant.padEnd(8)} ${Math.round(r.opsPerSec).toString().padStart(7)} ops/s  ${Math.round(r.readsPerSec).toString().padStart(7)} reads/s  ` +
        `hit ratio ${r.hitRatio.toFixed(3)}  ${(r.statements / r.reads).toFixed(3)} statements/read (${r.lookups} lookups, ${r.statements} statements)  ` +
        `p50 ${r.p50.toFixed(3)} ms  p99 ${r.p99.toFixed(3)} ms  reads p50 ${r.readP50.toFixed(3)} ms  p99 ${r.readP99.toFixed(3)} ms` +
        `${r.notFound ? `  ${r.notFound} reads found nothing` : ""}${r.errors ? `  ${r.errors} ERRORS` : ""}`,
    );
  }
  return runs;
}
