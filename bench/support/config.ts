/** Settings shared by the benchmark's parent process and its HTTP server children. */
export const QUICK = process.env.BENCH_QUICK === "1";
/**
 * `BENCH_ONLY=rotation`: only the rotation section (bench/rotation.ts), printed and not written (RESULTS.md and
 * results.json keep the last full run).
 */
export const ONLY = process.env.BENCH_ONLY;
export const DATABASE_URL = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
export const REDIS_URL = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
/** Connections per pg Pool, the same for every Postgres-backed store (pg's default). */
export const POOL_SIZE = Number(process.env.BENCH_POOL ?? 10);
/** The cookie maxAge of every session, and the express-session app's maxAge. */
export const MAX_AGE = 3_600_000;

export const STORE_LEVEL = {
  /** Timed part of a cell. */
  durationMs: QUICK ? 400 : 2_000,
  /** Untimed run of the same operation before the timed part. */
  warmupMs: QUICK ? 100 : 300,
  /** Sessions written before the cells, read by get (hit) and touch. */
  poolSessions: QUICK ? 200 : 1_000,
  concurrency: [1, 32],
  /** Interleaved repeats of the cells the goals compare (bench/store-level.ts STORE_PAIRS). */
  repeats: QUICK ? 2 : 6,
  repeatMs: QUICK ? 300 : 1_000,
  /** New sessions set, then read, in each of the cache's fill phases (bench/cache-fill.ts). */
  fillSessions: QUICK ? 500 : 2_000,
};

export const MIXED = {
  /** Timed part of each variant (cache, no cache), after the warm-up. */
  durationMs: QUICK ? 1_500 : 5_000,
  warmupMs: QUICK ? 300 : 1_000,
  /** Live sessions written before the warm-up; logins and logouts keep the number about the same. */
  sessions: QUICK ? 300 : 2_000,
  /** Workers in all, each operation on an instance picked at random. */
  concurrency: 32,
  /** Share of reads; the rest are logins (a new session set) and logouts (a live session destroyed), half each. */
  reads: 0.9,
};

export const HTTP_LEVEL = {
  durationS: QUICK ? 2 : 5,
  warmupS: QUICK ? 1 : 1,
  connections: 32,
  /** Interleaved repeats of GET /read for connect-drizzle and connect-pg-simple. */
  repeats: QUICK ? 1 : 3,
  repeatS: QUICK ? 1 : 3,
};

/** The session every store holds: an express-session cookie plus a small user object. */
export function sessionData(now = Date.now()): any {
  return {
    cookie: { originalMaxAge: MAX_AGE, expires: new Date(now + MAX_AGE).toISOString(), secure: false, httpOnly: true, path: "/", sameSite: "lax" },
    user: { id: "u_48151623", name: "Ada Lovelace", email: "ada@example.com", roles: ["admin", "editor"] },
  };
}

export const USER = { id: "u_48151623", name: "Ada Lovelace", email: "ada@example.com", roles: ["admin", "editor"] };
