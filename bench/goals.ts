/**
 * The goals: each a figure of this run (a ratio of two cells, decided on the median of its interleaved
 * pairs, or a count), its threshold, and whether it is met; and bench/results.json, which keeps them for
 * the next run's "previous run" column. bench/report.ts renders them. See bench/README.md, "Goals".
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { FillPhase } from "./cache-fill.js";
import type { HttpCell, HttpRounds, Route } from "./http.js";
import type { MixedRun } from "./mixed.js";
import { type RotationResult, rotationSummary } from "./rotation.js";
import type { Rounds, StoreCell } from "./store-level.js";
import { fmtInt, fmtNum } from "./support/stats.js";
import type { Target } from "./support/stores.js";

/** Everything one run measured. */
export interface RunData {
  targets: Target[];
  storeCells: StoreCell[];
  storeRounds: Rounds[];
  fills: FillPhase[];
  httpCells: HttpCell[];
  httpRounds: HttpRounds[];
  mixed: MixedRun[];
  /** Rotation and reuse detection (bench/rotation.ts). */
  rotation?: RotationResult;
}

/** One goal: a figure of this run, decided on the median of its measurements (pairs, or phases). */
export interface GoalRow {
  id: string;
  figure: string;
  goal: string;
  /** "×" for a ratio of two cells; "" for a count (shown with three decimals). */
  unit: "×" | "";
  /** What one measurement is: "pair" (two cells of one round) or "phase". */
  of: "pair" | "phase";
  median: number;
  min: number;
  max: number;
  n: number;
  met: boolean;
}

/** A figure shown below the goals (one value, no pairs). */
export interface ExtraRow {
  id: string;
  figure: string;
  goal: string;
  value: number;
  shown: string;
  met?: boolean;
  digits: number;
}

/** The mixed workload's figures as results.json keeps them. */
type MixedSummary = Pick<MixedRun, "variant" | "opsPerSec" | "readsPerSec" | "hitRatio" | "p50" | "p99"> & { statementsPerRead: number | null };

/** bench/results.json: this run's goals, machine-readable; the next run shows them as "previous run". */
export interface Results {
  date: string;
  machine: string;
  /** `git rev-parse --short HEAD`, null outside a git checkout. */
  commit: string | null;
  /** Whether src/ had uncommitted changes (then `commit` is not quite what ran). */
  srcModified: boolean | null;
  quick: boolean;
  goals: Array<{ id: string; figure: string; goal: string; median: number | null; min: number | null; max: number | null; n: number }>;
  extra: Array<{ id: string; figure: string; value: number | null }>;
  /** The mixed workload, with the cache and without (absent in runs before it was measured). */
  mixed?: MixedSummary[];
  /** Rotation and reuse detection: each row's median ratio (absent in runs before it was measured). */
  rotation?: Array<{ id: string; figure: string; median: number | null; min: number | null; max: number | null; n: number }>;
}

export const RESULTS_JSON = join(import.meta.dirname, "results.json");

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function goal(
  id: string,
  figure: string,
  direction: ">=" | "<=",
  threshold: number,
  values: number[],
  unit: GoalRow["unit"] = "×",
  of: GoalRow["of"] = "pair",
): GoalRow {
  const med = median(values);
  const shown = unit === "×" ? `${threshold.toFixed(2).replace(/0$/, "")}×` : String(threshold);
  return {
    id,
    figure,
    goal: `${direction === ">=" ? "≥" : "≤"} ${shown}`,
    unit,
    of,
    median: med,
    min: Math.min(...values),
    max: Math.max(...values),
    n: values.length,
    met: direction === ">=" ? med >= threshold : med <= threshold,
  };
}

const finite = (n: number) => (Number.isFinite(n) ? n : null);

/** A store-level cell; a store without a forced-touch variant writes on every touch, so its touch stands for it. */
export function storeCell(cells: StoreCell[], target: string, op: string, c: number): StoreCell | undefined {
  const found = cells.find((x) => x.target === target && x.op === op && x.concurrency === c);
  return (
    found ??
    (op === "touch-forced" && !target.startsWith("connect-drizzle")
      ? cells.find((x) => x.target === target && x.op === "touch" && x.concurrency === c)
      : undefined)
  );
}

export function httpCell(cells: HttpCell[], target: string, route: Route): HttpCell | undefined {
  return cells.find((x) => x.target === target && x.route === route);
}

/** The goals of this run, and the figures shown below them. */
export function computeGoals(run: RunData): { goals: GoalRow[]; extras: ExtraRow[] } {
  const { storeCells, storeRounds, httpCells, httpRounds } = run;
  const ids = run.targets.map((t) => t.id);
  // Each goal is the median of its ratios: the main cells' (the first pair) and every interleaved repeat's.
  const storeRatios = (op: string, a: string, b: string, metric: "opsPerSec" | "cpuUsPerOp" = "opsPerSec") => {
    const main = [storeCell(storeCells, a, op, 32), storeCell(storeCells, b, op, 32)] as const;
    const rounds = storeRounds.find((r) => r.op === op && r.concurrency === 32 && r.a === a && r.b === b);
    const repeats = rounds?.[metric].map(([x, y]) => x / y) ?? [];
    return [main[0] && main[1] ? main[0][metric] / main[1][metric] : NaN, ...repeats].filter(Number.isFinite);
  };
  // Against a group, the faster of the group in the same round (main cells: the faster main cell).
  const httpRatios = (route: Route, a: string, group: readonly string[]) => {
    const mine = httpCell(httpCells, a, route);
    const theirs = group.flatMap((id) => httpCell(httpCells, id, route) ?? []);
    const rounds = httpRounds.find((r) => r.route === route && r.a === a && r.b.every((id) => group.includes(id)));
    const repeats = rounds?.reqPerSec.map(([x, ys]) => x / Math.max(...ys)) ?? [];
    return [mine && theirs.length ? mine.reqPerSec / Math.max(...theirs.map((c) => c.reqPerSec)) : NaN, ...repeats].filter(Number.isFinite);
  };
  const noRedis = ids.includes("connect-redis") ? "" : " (connect-redis skipped)";
  const d = "connect-drizzle";
  const cached = "connect-drizzle-cache";
  const goals: GoalRow[] = [
    goal("get-hit-vs-floor", "get (hit) ops/s ÷ raw-pg floor (c32)", ">=", 1.5, storeRatios("get-hit", d, "raw-pg")),
    goal("get-miss-vs-floor", "get (miss) ops/s ÷ raw-pg floor (c32)", ">=", 1.0, storeRatios("get-miss", d, "raw-pg")),
    goal("touch-forced-vs-floor", "touch (forced write) ops/s ÷ raw-pg floor (c32)", ">=", 0.9, storeRatios("touch-forced", d, "raw-pg")),
    goal("get-hit-cpu-vs-floor", "get (hit) client CPU µs/op ÷ floor (c32)", "<=", 1.1, storeRatios("get-hit", d, "raw-pg", "cpuUsPerOp")),
    goal("set-vs-pg-simple", "set (new session) ops/s ÷ connect-pg-simple (c32)", ">=", 1.2, storeRatios("set", d, "connect-pg-simple")),
    goal("destroy-vs-pg-simple", "destroy ops/s ÷ connect-pg-simple (c32)", ">=", 1.5, storeRatios("destroy", d, "connect-pg-simple")),
    goal("destroy-cache-vs-plain", "destroy ops/s with `cache` ÷ without (c32)", ">=", 0.9, storeRatios("destroy", cached, d)),
    goal("touch-forced-cache-vs-plain", "touch (forced write) ops/s with `cache` ÷ without (c32)", ">=", 0.9, storeRatios("touch-forced", cached, d)),
    goal(
      "cache-round-trips-after-sets",
      "with `cache`, after a phase of concurrent sets (c32) of new sessions: SQL statements per get of those sessions (a count, not a ratio)",
      "<=",
      0.05,
      run.fills.map((f) => f.statements / f.sessions),
      "",
      "phase",
    ),
    goal("http-read-vs-redis", `HTTP GET /read (no cache) req/s ÷ connect-redis${noRedis}`, ">=", 0.8, httpRatios("read", d, ["connect-redis"])),
    goal("http-login-vs-pg-simple", "HTTP POST /login req/s ÷ connect-pg-simple", ">=", 1.2, httpRatios("login", d, ["connect-pg-simple"])),
    goal(
      "http-read-cache-vs-fastest",
      `HTTP GET /read with \`cache\` ÷ the faster of MemoryStore and connect-redis (faster = in that same pair round)${noRedis ? " (connect-redis skipped: MemoryStore only)" : ""}`,
      ">=",
      1.0,
      httpRatios("read", cached, ["memory", "connect-redis"]),
    ),
    // Further goals, kept from earlier runs.
    goal(
      "save-merge-vs-whole",
      "save (one key changed) ops/s, merging changed keys ÷ whole-session saves (c32)",
      ">=",
      0.95,
      storeRatios("save", d, "connect-drizzle-whole"),
    ),
    goal("get-encrypt-vs-plain", "get (hit) ops/s with `encrypt` ÷ without (c32)", ">=", 0.9, storeRatios("get-hit", "connect-drizzle-encrypt", d)),
    goal("set-encrypt-vs-plain", "set (new session) ops/s with `encrypt` ÷ without (c32)", ">=", 0.9, storeRatios("set", "connect-drizzle-encrypt", d)),
    goal("save-encrypt-vs-plain", "save (one key changed) ops/s with `encrypt` ÷ without (c32)", ">=", 0.9, storeRatios("save", "connect-drizzle-encrypt", d)),
    goal("http-login-cache-vs-no-cache", "HTTP POST /login with `cache` ÷ connect-drizzle without cache", ">=", 0.9, httpRatios("login", cached, [d])),
  ];

  const readD = httpCell(httpCells, d, "read");
  const readP = httpCell(httpCells, "connect-pg-simple", "read");
  const readC = httpCell(httpCells, cached, "read");
  const writesPer1000 = readD ? readD.writesPerReq * 1000 : NaN;
  // Statements per read with the cache: the main cell, and every cell of the cache's read (main and repeats) together.
  const cacheRounds = httpRounds.find((r) => r.route === "read" && r.a === cached);
  const cacheCells = [readC, ...(cacheRounds?.cells.map(([c]) => c) ?? [])].filter((c): c is HttpCell => c !== undefined);
  const cacheReqs = cacheCells.reduce((n, c) => n + c.requests, 0);
  const cacheStmts = cacheCells.reduce((n, c) => n + c.statementsPerReq * c.requests, 0);
  const cacheWrites = cacheCells.reduce((n, c) => n + c.writesPerReq * c.requests, 0);
  const extras: ExtraRow[] = [
    {
      id: "writes-per-1000-reads",
      figure: "writes per 1,000 HTTP GET /read requests (rolling: true)",
      goal: "≤ 10",
      value: writesPer1000,
      shown: `${fmtNum(writesPer1000, 1)} (connect-pg-simple: ${fmtNum((readP?.writesPerReq ?? NaN) * 1000, 0)})`,
      met: Number.isFinite(writesPer1000) ? writesPer1000 <= 10 : undefined,
      digits: 1,
    },
    {
      id: "cache-statements-per-read",
      figure: "with `cache`: SQL statements per HTTP GET /read",
      goal: "—",
      value: cacheStmts / cacheReqs,
      shown:
        `${fmtNum(readC?.statementsPerReq ?? NaN, 3)} in the table cell, ${fmtNum(cacheStmts / cacheReqs, 4)} over all ${cacheCells.length} of its cells ` +
        `(${Math.round(cacheStmts)} in ${fmtInt(cacheReqs)} reads, ${Math.round(cacheWrites)} of them writes)`,
      digits: 4,
    },
  ];
  return { goals, extras };
}

/** This run's results.json (its goals, extras and mixed workload filled in). */
export function resultsOf(
  started: number,
  machine: string,
  goals: GoalRow[],
  extras: ExtraRow[],
  mixed: MixedRun[],
  quick: boolean,
  rotation?: RotationResult,
): Results {
  const srcStatus = git("status", "--porcelain", "--", join(import.meta.dirname, "..", "src"));
  return {
    date: new Date(started).toISOString(),
    machine,
    commit: git("rev-parse", "--short", "HEAD"),
    srcModified: srcStatus === null ? null : srcStatus.length > 0,
    quick,
    goals: goals.map(({ id, figure, goal, median, min, max, n }) => ({ id, figure, goal, median: finite(median), min: finite(min), max: finite(max), n })),
    extra: extras.map(({ id, figure, value }) => ({ id, figure, value: finite(value) })),
    mixed: mixed.map((m) => ({
      variant: m.variant,
      opsPerSec: m.opsPerSec,
      readsPerSec: m.readsPerSec,
      hitRatio: m.hitRatio,
      statementsPerRead: finite(m.statements / m.reads),
      p50: m.p50,
      p99: m.p99,
    })),
    ...(rotation ? { rotation: rotationSummary(rotation).map((r) => ({ ...r, median: finite(r.median), min: finite(r.min), max: finite(r.max) })) } : {}),
  };
}

function git(...args: string[]): string | null {
  try {
    return execFileSync("git", args, { cwd: import.meta.dirname, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return null;
  }
}

/** The previous run's results.json, if there is one and it reads. */
export function readPrevious(): Results | undefined {
  if (!existsSync(RESULTS_JSON)) return undefined;
  try {
    return JSON.parse(readFileSync(RESULTS_JSON, "utf8")) as Results;
  } catch (error) {
    console.error(`could not read ${RESULTS_JSON} (previous run left out):`, (error as Error).message);
    return undefined;
  }
}
