/**
 * `npm run bench` (BENCH_QUICK=1 for a ~1 minute smoke run): connect-drizzle against MemoryStore,
 * connect-pg-simple, connect-redis and a raw-pg floor, at the store level and over HTTP, in one run.
 * Prints the tables and writes them to bench/RESULTS.md, the goals also to bench/results.json (read back
 * by the next run for its "previous run" column). See bench/README.md.
 */
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import pg from "pg";
import { createClient } from "redis";
import { benchHttp, type HttpCell, type HttpRounds } from "./http.js";
import { benchStoreLevel, OP_LABELS, OPS, type Rounds, type StoreCell } from "./store-level.js";
import { DATABASE_URL, HTTP_LEVEL, POOL_SIZE, QUICK, REDIS_URL, STORE_LEVEL } from "./support/config.js";
import { createBenchSchema, dropBenchSchema, truncateBenchSchema } from "./support/schema.js";
import { fmtInt, fmtMs, fmtNum, fmtRatio, table } from "./support/stats.js";
import { redisAvailable, TARGETS, type Target } from "./support/stores.js";

/** One goal: a ratio of two cells of this run, decided on the median of its interleaved pairs. */
interface GoalRow {
  id: string;
  figure: string;
  goal: string;
  median: number;
  min: number;
  max: number;
  n: number;
  met: boolean;
}

/** A figure shown below the goals (one value, no pairs). */
interface ExtraRow {
  id: string;
  figure: string;
  goal: string;
  value: number;
  shown: string;
  met?: boolean;
  digits: number;
}

/** bench/results.json: this run's goals, machine-readable; the next run shows them as "previous run". */
interface Results {
  date: string;
  machine: string;
  /** `git rev-parse --short HEAD`, null outside a git checkout. */
  commit: string | null;
  /** Whether src/ had uncommitted changes (then `commit` is not quite what ran). */
  srcModified: boolean | null;
  quick: boolean;
  goals: Array<{ id: string; figure: string; goal: string; median: number | null; min: number | null; max: number | null; n: number }>;
  extra: Array<{ id: string; figure: string; value: number | null }>;
}

const RESULTS_JSON = join(import.meta.dirname, "results.json");

function goal(id: string, figure: string, direction: ">=" | "<=", threshold: number, ratios: number[]): GoalRow {
  const med = median(ratios);
  return {
    id,
    figure,
    goal: `${direction === ">=" ? "≥" : "≤"} ${threshold.toFixed(2).replace(/0$/, "")}×`,
    median: med,
    min: Math.min(...ratios),
    max: Math.max(...ratios),
    n: ratios.length,
    met: direction === ">=" ? med >= threshold : med <= threshold,
  };
}

const finite = (n: number) => (Number.isFinite(n) ? n : null);

function git(...args: string[]): string | null {
  try {
    return execFileSync("git", args, { cwd: import.meta.dirname, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return null;
  }
}

/** The previous run's results.json, if there is one and it reads. */
function readPrevious(): Results | undefined {
  if (!existsSync(RESULTS_JSON)) return undefined;
  try {
    return JSON.parse(readFileSync(RESULTS_JSON, "utf8")) as Results;
  } catch (error) {
    console.error(`could not read ${RESULTS_JSON} (previous run left out):`, (error as Error).message);
    return undefined;
  }
}

const started = Date.now();
const log = (line: string) => console.log(line);
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)} s`;

async function machine(admin: pg.Client, redisOk: boolean): Promise<string> {
  const pgVersion = (await admin.query("show server_version")).rows[0].server_version as string;
  let redisVersion = "not running (skipped)";
  if (redisOk) {
    const client = createClient({ url: REDIS_URL, socket: { reconnectStrategy: false } });
    client.on("error", () => {});
    await client.connect();
    redisVersion = /redis_version:(\S+)/.exec(await client.info("server"))?.[1] ?? "?";
    client.destroy();
  }
  const load = os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(" / ");
  return (
    `${os.cpus().length} cores, ${os.cpus()[0]?.model.trim() ?? "unknown CPU"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; ` +
    `Node ${process.version}; PostgreSQL ${pgVersion} (same host, loopback); Redis ${redisVersion}; ` +
    `${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; load average at start ${load}`
  );
}

async function main() {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const schema = `bench_${process.pid}_${Date.now().toString(36)}`;
  const redisOk = await redisAvailable();
  const notes: string[] = [];
  if (!redisOk)
    notes.push(
      `connect-redis skipped: Redis does not answer on ${REDIS_URL} (start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no).`,
    );
  const targets = TARGETS.filter((t) => t.name !== "connect-redis" || redisOk);
  let machineLine = await machine(admin, redisOk);
  log(`connect-drizzle benchmark${QUICK ? " (BENCH_QUICK=1: short cells, smoke run only)" : ""}`);
  log(machineLine);
  for (const note of notes) log(`NOTE: ${note}`);

  await createBenchSchema(admin, schema);
  let storeCells: StoreCell[] = [];
  let httpCells: HttpCell[] = [];
  let storeRounds: Rounds[] = [];
  let httpRounds: HttpRounds[] = [];
  try {
    log(`\nStore level (${STORE_LEVEL.durationMs} ms per cell after ${STORE_LEVEL.warmupMs} ms warm-up, pg Pool max ${POOL_SIZE})`);
    ({ cells: storeCells, rounds: storeRounds } = await benchStoreLevel(targets, schema, log));
    log(`  [${elapsed()}]`);

    await truncateBenchSchema(admin, schema);
    log(
      `\nHTTP level (autocannon, ${HTTP_LEVEL.connections} connections, ${HTTP_LEVEL.durationS} s per cell after ${HTTP_LEVEL.warmupS} s warm-up; server in a child process)`,
    );
    let failures: string[];
    ({ cells: httpCells, rounds: httpRounds, failures } = await benchHttp(targets, schema, log));
    notes.push(...failures);
    log(`  [${elapsed()}]`);
  } finally {
    await dropBenchSchema(admin, schema).catch((error) => console.error(`could not drop schema ${schema}:`, error));
    await admin.end();
  }

  // Other work on the machine (a test run, a build) skews a run: the load average says whether there was any.
  machineLine += `, at end ${os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(" / ")}; run took ${elapsed()}`;
  const previous = readPrevious();
  const srcStatus = git("status", "--porcelain", "--", join(import.meta.dirname, "..", "src"));
  const results: Results = {
    date: new Date(started).toISOString(),
    machine: machineLine,
    commit: git("rev-parse", "--short", "HEAD"),
    srcModified: srcStatus === null ? null : srcStatus.length > 0,
    quick: QUICK,
    goals: [],
    extra: [],
  };
  const report = render(machineLine, notes, targets, storeCells, httpCells, storeRounds, httpRounds, previous, results);
  log(`\n${report}`);
  const file = join(import.meta.dirname, "RESULTS.md");
  writeFileSync(file, report);
  writeFileSync(RESULTS_JSON, `${JSON.stringify(results, null, 2)}\n`);
  log(`\nwrote ${file} and ${RESULTS_JSON} (${elapsed()})`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

function render(
  machineLine: string,
  notes: string[],
  targets: Target[],
  storeCells: StoreCell[],
  httpCells: HttpCell[],
  storeRounds: Rounds[],
  httpRounds: HttpRounds[],
  previous: Results | undefined,
  results: Results,
): string {
  const cell = (target: string, op: string, c: number) => {
    const found = storeCells.find((x) => x.target === target && x.op === op && x.concurrency === c);
    // Only connect-drizzle has a forced-touch variant; every other store writes on every touch anyway.
    return (
      found ??
      (op === "touch-forced" && !target.startsWith("connect-drizzle")
        ? storeCells.find((x) => x.target === target && x.op === "touch" && x.concurrency === c)
        : undefined)
    );
  };
  const show = (x: StoreCell | undefined) => (x ? `${fmtInt(x.opsPerSec)} (${fmtMs(x.p50)} / ${fmtMs(x.p99)})${x.errors ? ` ⚠ ${x.errors} errors` : ""}` : "—");
  const ratio = (a?: { opsPerSec?: number; reqPerSec?: number }, b?: { opsPerSec?: number; reqPerSec?: number }) =>
    a && b ? fmtRatio((a.opsPerSec ?? a.reqPerSec!) / (b.opsPerSec ?? b.reqPerSec!)) : "—";
  const label = (id: string) => targets.find((t) => t.id === id)?.label ?? id;
  const ids = targets.map((t) => t.id);

  const storeRows: string[][] = [];
  const cpuRows: string[][] = [];
  for (const c of STORE_LEVEL.concurrency) {
    for (const op of OPS) {
      const d = cell("connect-drizzle", op, c);
      storeRows.push([
        OP_LABELS[op],
        String(c),
        ...ids.map((id) => show(cell(id, op, c))),
        ratio(d, cell("connect-pg-simple", op, c)),
        ratio(d, cell("raw-pg", op, c)),
      ]);
      cpuRows.push([OP_LABELS[op], String(c), ...ids.map((id) => fmtNum(cell(id, op, c)?.cpuUsPerOp ?? NaN, 0))]);
    }
  }
  // NOTIFYs per operation of connect-drizzle's variants (measured on their cells only).
  const drizzleIds = targets.filter((t) => t.name === "connect-drizzle").map((t) => t.id);
  const notifyRows: string[][] = [];
  for (const c of STORE_LEVEL.concurrency) {
    for (const op of OPS) {
      const row = drizzleIds.map((id) => {
        const x = storeCells.find((y) => y.target === id && y.op === op && y.concurrency === c);
        return x?.notifyStatementsPerOp === undefined ? "—" : `${fmtNum(x.notifyStatementsPerOp, 2)} / ${fmtNum(x.notificationsPerOp ?? NaN, 2)}`;
      });
      if (row.some((v) => v !== "—")) notifyRows.push([OP_LABELS[op], String(c), ...row]);
    }
  }

  const http = (target: string, route: string) => httpCells.find((x) => x.target === target && x.route === route);
  const httpRows = httpCells.map((x) => [
    x.route === "read" ? "GET /read" : "POST /login",
    label(x.target),
    fmtInt(x.reqPerSec),
    fmtMs(x.p50),
    fmtMs(x.p99),
    fmtNum(x.statementsPerReq, 2),
    fmtNum(x.writesPerReq, 3),
    fmtNum(x.writesPerReq * 1000, 1),
    fmtNum(x.serverCpuUsPerReq, 0),
    ratio(x, http("connect-pg-simple", x.route)),
    ratio(x, http("raw-pg", x.route)),
    fmtNum(x.notifyStatementsPerReq, 2),
    fmtNum(x.notificationsPerReq, 2),
    Object.entries(x.byVerb)
      .map(([verb, n]) => `${verb} ${fmtNum(n / x.requests, 2)}`)
      .join(", ") || "—",
    x.non2xx || x.errors ? `⚠ ${x.non2xx} non-2xx, ${x.errors} errors` : "0",
  ]);

  const getF = cell("raw-pg", "get-hit", 32);
  const readD = http("connect-drizzle", "read");
  const readP = http("connect-pg-simple", "read");
  const readC = http("connect-drizzle-cache", "read");
  const roundsOf = (route: string, a: string, b: string) => httpRounds.find((r) => r.route === route && r.a === a && r.b.includes(b));
  const cacheRounds = roundsOf("read", "connect-drizzle-cache", "connect-redis") ?? roundsOf("read", "connect-drizzle-cache", "memory");

  // Each goal is the median of its ratios: the main cells' (the first pair) and every interleaved repeat's.
  const storeRatios = (op: string, a: string, b: string, metric: "opsPerSec" | "cpuUsPerOp") => {
    const main = [cell(a, op, 32), cell(b, op, 32)] as const;
    const rounds = storeRounds.find((r) => r.op === op && r.concurrency === 32 && r.a === a && r.b === b);
    const repeats = rounds?.[metric].map(([x, y]) => x / y) ?? [];
    return [main[0] && main[1] ? main[0][metric] / main[1][metric] : NaN, ...repeats].filter(Number.isFinite);
  };
  // Against a group, the faster of the group in the same round (main cells: the faster main cell).
  const httpRatios = (route: string, a: string, group: readonly string[]) => {
    const mine = http(a, route);
    const theirs = group.flatMap((id) => http(id, route) ?? []);
    const rounds = httpRounds.find((r) => r.route === route && r.a === a && r.b.every((id) => group.includes(id)));
    const repeats = rounds?.reqPerSec.map(([x, ys]) => x / Math.max(...ys)) ?? [];
    return [mine && theirs.length ? mine.reqPerSec / Math.max(...theirs.map((c) => c.reqPerSec)) : NaN, ...repeats].filter(Number.isFinite);
  };
  const goals: GoalRow[] = [
    goal("get-hit-vs-floor", "get (hit) ops/s ÷ raw-pg floor (c32)", ">=", 0.95, storeRatios("get-hit", "connect-drizzle", "raw-pg", "opsPerSec")),
    goal("get-hit-cpu-vs-floor", "get (hit) client CPU µs/op ÷ floor (c32)", "<=", 1.15, storeRatios("get-hit", "connect-drizzle", "raw-pg", "cpuUsPerOp")),
    goal(
      "set-vs-pg-simple",
      "set (new session) ops/s ÷ connect-pg-simple (c32)",
      ">=",
      1.1,
      storeRatios("set", "connect-drizzle", "connect-pg-simple", "opsPerSec"),
    ),
    goal(
      "save-merge-vs-whole",
      "save (one key changed) ops/s, merging changed keys ÷ whole-session saves (c32)",
      ">=",
      0.95,
      storeRatios("save", "connect-drizzle", "connect-drizzle-whole", "opsPerSec"),
    ),
    goal(
      "get-encrypt-vs-plain",
      "get (hit) ops/s with `encrypt` ÷ without (c32)",
      ">=",
      0.9,
      storeRatios("get-hit", "connect-drizzle-encrypt", "connect-drizzle", "opsPerSec"),
    ),
    goal(
      "set-encrypt-vs-plain",
      "set (new session) ops/s with `encrypt` ÷ without (c32)",
      ">=",
      0.9,
      storeRatios("set", "connect-drizzle-encrypt", "connect-drizzle", "opsPerSec"),
    ),
    goal(
      "save-encrypt-vs-plain",
      "save (one key changed) ops/s with `encrypt` ÷ without (c32)",
      ">=",
      0.9,
      storeRatios("save", "connect-drizzle-encrypt", "connect-drizzle", "opsPerSec"),
    ),
    goal(
      "destroy-vs-pg-simple",
      "destroy ops/s ÷ connect-pg-simple (c32)",
      ">=",
      1.1,
      storeRatios("destroy", "connect-drizzle", "connect-pg-simple", "opsPerSec"),
    ),
    goal("http-read-vs-pg-simple", "HTTP GET /read req/s ÷ connect-pg-simple", ">=", 1.5, httpRatios("read", "connect-drizzle", ["connect-pg-simple"])),
    goal("http-login-vs-pg-simple", "HTTP POST /login req/s ÷ connect-pg-simple", ">=", 1.0, httpRatios("login", "connect-drizzle", ["connect-pg-simple"])),
    goal(
      "http-read-cache-vs-fastest",
      `HTTP GET /read with \`cache\` ÷ the faster of MemoryStore and connect-redis (faster = in that same pair round)${ids.includes("connect-redis") ? "" : " (connect-redis skipped: MemoryStore only)"}`,
      ">=",
      0.95,
      httpRatios("read", "connect-drizzle-cache", ["memory", "connect-redis"]),
    ),
    goal(
      "http-login-cache-vs-no-cache",
      "HTTP POST /login with `cache` ÷ connect-drizzle without cache",
      ">=",
      0.9,
      httpRatios("login", "connect-drizzle-cache", ["connect-drizzle"]),
    ),
  ];
  const writesPer1000 = readD ? readD.writesPerReq * 1000 : NaN;
  // Statements per read with the cache: the main cell, and every cell of the cache's read (main and repeats) together.
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
  const previousOf = (id: string) => previous?.goals?.find((g) => g.id === id);
  const prevTag = previous ? ` (${previous.commit ?? "no commit"}${previous.srcModified ? ", src/ modified" : ""}${previous.quick ? ", quick run" : ""})` : "";
  const verdict = (ok: boolean | undefined) => (ok === undefined ? "—" : ok ? "**met**" : "**not met**");
  const goalRows = [
    ...goals.map((g) => {
      const p = previousOf(g.id);
      return [
        g.figure,
        g.goal,
        g.n ? `${fmtRatio(g.median)} (${fmtRatio(g.min)}–${fmtRatio(g.max)}, ${g.n} pair${g.n === 1 ? "" : "s"})` : "— (not measured)",
        p && p.median !== null ? `${fmtRatio(p.median)}${prevTag}` : "—",
        g.n ? verdict(g.met) : "—",
      ];
    }),
    ...extras.map((x) => {
      const p = previous?.extra?.find((e) => e.id === x.id);
      return [x.figure, x.goal, x.shown, p && p.value !== null ? `${fmtNum(p.value, x.digits)}${prevTag}` : "—", verdict(x.met)];
    }),
  ];
  results.goals = goals.map(({ id, figure, goal, median, min, max, n }) => ({
    id,
    figure,
    goal,
    median: finite(median),
    min: finite(min),
    max: finite(max),
    n,
  }));
  results.extra = extras.map(({ id, figure, value }) => ({ id, figure, value: finite(value) }));
  const getC1 = cell("connect-drizzle-cache", "get-hit", 1);
  const getC32 = cell("connect-drizzle-cache", "get-hit", 32);
  const cacheLine =
    `connect-drizzle (cache), get (hit): ${fmtInt(getC1?.opsPerSec ?? NaN)} ops/s at c1, ${fmtInt(getC32?.opsPerSec ?? NaN)} at c32 ` +
    `(${ratio(getC32, getF)} the floor, ${ratio(getC32, cell("connect-redis", "get-hit", 32))} connect-redis, ${ratio(getC32, cell("memory", "get-hit", 32))} MemoryStore at c32).`;

  return [
    `# Benchmark results${QUICK ? " (BENCH_QUICK=1 smoke run: cells too short to quote)" : ""}`,
    "",
    `Machine: ${machineLine}`,
    "",
    `\`${QUICK ? "BENCH_QUICK=1 " : ""}npm run bench\`; what is measured and how: [README.md](README.md).`,
    ...notes.map((n) => `\n> ${n}`),
    "",
    "## Goals",
    "",
    `Each goal is a ratio of two cells of this run, decided on its median over interleaved pairs: the main cells of the tables below, then repeats run A B, B A, ... ` +
      `(store level: ${STORE_LEVEL.repeats} more pairs of ${STORE_LEVEL.repeatMs} ms cells; HTTP: ${HTTP_LEVEL.repeats} more of ${HTTP_LEVEL.repeatS} s). ` +
      `"previous run": the median of the run before this one, from bench/results.json${previous ? ` (${previous.date.slice(0, 16).replace("T", " ")} UTC${previous.quick ? ", a BENCH_QUICK=1 run" : ""})` : " (none found)"}.`,
    "",
    table(["figure", "goal", "this run (median, range, n pairs)", "previous run", "met / not met"], goalRows),
    "",
    cacheLine,
    "",
    "## Store level",
    "",
    `ops/s (p50 / p99 latency, ms). ${STORE_LEVEL.durationMs / 1000} s per cell after ${STORE_LEVEL.warmupMs} ms warm-up, cells run operation by operation, store after store; pg Pool max ${POOL_SIZE} for every Postgres store. ` +
      "Each store is called through the express-session callback API, the raw-pg floor through plain async functions. " +
      `"touch": as express-session does on a rolling request, on a session object from the store's get (req.session), cookie maxAge reset. ` +
      `"touch (steady state)": connect-drizzle with its default touchAfter (60 s) on sessions read seconds before, so it skips the write (no query); ` +
      `"touch (forced write)": connect-drizzle with touchAfter: 0, one UPDATE per touch (the other stores write on every touch, so their row repeats their touch). ` +
      `"connect-drizzle": its defaults (no cache, so notify: false). "connect-drizzle (notify: true)": writes only, with the pg_notify in every write that a deployment with the read cache needs on every instance. ` +
      `"connect-drizzle (cache)": cache: {} (max 10,000, ttl 60 s), get (hit) only, every pool session read once just before the cell (so the cell's reads are served from memory); its writes are notify: true's. ` +
      "Interleaved repeats (for the goals), at c32: get (hit) connect-drizzle vs the floor, set and destroy connect-drizzle vs connect-pg-simple, save with merge vs whole, and get/set/save with `encrypt` vs without; their ops/s and CPU are not in these tables.",
    "",
    table(["operation", "c", ...ids.map(label), "drizzle ÷ pg-simple", "drizzle ÷ floor"], storeRows, ["l", "r", ...ids.map(() => "r" as const), "r", "r"]),
    "",
    "Client-side CPU (this process, user + system) per operation, µs; on 2 cores the client competes with Postgres for the same CPUs.",
    "",
    table(["operation", "c", ...ids.map(label)], cpuRows, ["l", "r", ...ids.map(() => "r" as const)]),
    "",
    "NOTIFYs per operation of connect-drizzle's variants: pg_notify statements / notifications delivered. Statements: those of this process whose text holds `pg_notify(` " +
      "(a wrapper on pg's Client.query, installed for these cells only). Delivered: notifications received on the store's channel by a LISTEN connection of the benchmark's own " +
      "over the cell (a statement that changes no row sends none). The read cache's probe is left out of both. Receiving them costs this process some CPU, counted in the cells' CPU above.",
    "",
    table(["operation", "c", ...drizzleIds.map(label)], notifyRows, ["l", "r", ...drizzleIds.map(() => "r" as const)]),
    "",
    "## HTTP level",
    "",
    `Express 5 + express-session (resave: false, saveUninitialized: false, rolling: true, maxAge 1 h), server in a child process, ` +
      `autocannon in the parent, ${HTTP_LEVEL.connections} connections, ${HTTP_LEVEL.durationS} s per cell after ${HTTP_LEVEL.warmupS} s warm-up. ` +
      `GET /read: ${HTTP_LEVEL.connections} sessions (one per connection), the session is read and not changed. POST /login: regenerate + set user, no cookie sent. ` +
      "Statements are counted in the server (SQL: every pg Client.query; connect-redis: Redis INFO commandstats). " +
      "Server CPU µs/req: process.cpuUsage() of the server process over the cell (Express, express-session, the store's client side; not Postgres, Redis or autocannon). The raw-pg floor's touch is a no-op (one SELECT per read). " +
      "connect-drizzle (notify: true): POST /login only (its reads are connect-drizzle's). connect-drizzle (cache): cache: {} (max 10,000, ttl 60 s); a session is cached by the login that made it or its first read, " +
      "then read from memory until its entry is 60 s old (then one SELECT); its SQL also counts the cache's probe (a select pg_notify every 30 s). " +
      "Interleaved repeats (for the goals): GET /read and POST /login, connect-drizzle vs connect-pg-simple; GET /read, connect-drizzle (cache) vs MemoryStore and connect-redis; " +
      "POST /login, connect-drizzle (cache) vs connect-drizzle. " +
      "pg_notify stmts/req: statements whose text holds `pg_notify(`, counted in the server; notifications/req: those delivered on the store's channel to a LISTEN in the benchmark's process " +
      "(a statement that changes no row, such as the end of the not-yet-stored id that regenerate ends on a login without a cookie, sends none); the cache's probe is left out of both. " +
      "All servers run at once (idle but the one loaded); cells run route by route, store after store. MemoryStore, with no I/O at all, is the ceiling of this app on this machine.",
    "",
    table(
      [
        "route",
        "store",
        "req/s",
        "p50 ms",
        "p99 ms",
        "stmts/req",
        "writes/req",
        "writes/1,000 req",
        "server CPU µs/req",
        "× pg-simple",
        "× floor",
        "pg_notify stmts/req",
        "notifications/req",
        "statements by verb, per req",
        "errors",
      ],
      httpRows,
      ["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l", "r"],
    ),
    "",
    "Writes per 1,000 reads are measured on sessions created seconds before the cell, i.e. within connect-drizzle's touchAfter (60 s): " +
      "in production a session read at least once a minute writes once a minute; one read less often than touchAfter writes on each read (as express-session's rolling asks).",
    "",
  ].join("\n");
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
