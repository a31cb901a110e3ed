/**
 * `npm run bench` (BENCH_QUICK=1 for a ~1 minute smoke run): connect-drizzle against MemoryStore,
 * connect-pg-simple, connect-redis and a raw-pg floor, at the store level and over HTTP, in one run.
 * Prints the tables and writes them to bench/RESULTS.md. See bench/README.md.
 */
import { writeFileSync } from "node:fs";
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
  const load = os.loadavg().map((l) => l.toFixed(1)).join(" / ");
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
  if (!redisOk) notes.push(`connect-redis skipped: Redis does not answer on ${REDIS_URL} (start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no).`);
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
    log(`\nHTTP level (autocannon, ${HTTP_LEVEL.connections} connections, ${HTTP_LEVEL.durationS} s per cell after ${HTTP_LEVEL.warmupS} s warm-up; server in a child process)`);
    let failures: string[];
    ({ cells: httpCells, rounds: httpRounds, failures } = await benchHttp(targets, schema, log));
    notes.push(...failures);
    log(`  [${elapsed()}]`);
  } finally {
    await dropBenchSchema(admin, schema).catch((error) => console.error(`could not drop schema ${schema}:`, error));
    await admin.end();
  }

  // Other work on the machine (a test run, a build) skews a run: the load average says whether there was any.
  machineLine += `, at end ${os.loadavg().map((l) => l.toFixed(1)).join(" / ")}; run took ${elapsed()}`;
  const report = render(machineLine, notes, targets, storeCells, httpCells, storeRounds[0], httpRounds);
  log(`\n${report}`);
  const file = join(import.meta.dirname, "RESULTS.md");
  writeFileSync(file, report);
  log(`\nwrote ${file} (${elapsed()})`);
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
  getRounds: Rounds | undefined,
  httpRounds: HttpRounds[],
): string {
  const cell = (target: string, op: string, c: number) => {
    const found = storeCells.find((x) => x.target === target && x.op === op && x.concurrency === c);
    // Only connect-drizzle has a forced-touch variant; every other store writes on every touch anyway.
    return found ?? (op === "touch-forced" && !target.startsWith("connect-drizzle") ? storeCells.find((x) => x.target === target && x.op === "touch" && x.concurrency === c) : undefined);
  };
  const show = (x: StoreCell | undefined) =>
    x ? `${fmtInt(x.opsPerSec)} (${fmtMs(x.p50)} / ${fmtMs(x.p99)})${x.errors ? ` ⚠ ${x.errors} errors` : ""}` : "—";
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
    Object.entries(x.byVerb)
      .map(([verb, n]) => `${verb} ${fmtNum(n / x.requests, 2)}`)
      .join(", ") || "—",
    x.non2xx || x.errors ? `⚠ ${x.non2xx} non-2xx, ${x.errors} errors` : "0",
  ]);

  const getD = cell("connect-drizzle", "get-hit", 32);
  const getF = cell("raw-pg", "get-hit", 32);
  const readD = http("connect-drizzle", "read");
  const readP = http("connect-pg-simple", "read");
  const readC = http("connect-drizzle-cache", "read");
  const readR = http("connect-redis", "read");
  const roundsOf = (a: string, b: string) => httpRounds.find((r) => r.a === a && r.b === b);
  const cacheRounds = roundsOf("connect-drizzle-cache", "connect-redis");
  // Each target is decided on the median ratio of its main cells and their interleaved repeats.
  const ratios = (a: { opsPerSec?: number; reqPerSec?: number } | undefined, b: typeof a, pairs: Array<[number, number]> | undefined) =>
    [a && b ? (a.opsPerSec ?? a.reqPerSec!) / (b.opsPerSec ?? b.reqPerSec!) : NaN, ...(pairs?.map(([x, y]) => x / y) ?? [])].filter(Number.isFinite);
  const getRatios = ratios(getD, getF, getRounds?.opsPerSec);
  const readRatios = ratios(readD, readP, roundsOf("connect-drizzle", "connect-pg-simple")?.reqPerSec);
  const cacheRatios = ratios(readC, readR, cacheRounds?.reqPerSec);
  const getRatio = median(getRatios);
  const readRatio = median(readRatios);
  const cacheRatio = median(cacheRatios);
  const spread = (rs: number[]) => `median of ${rs.length} interleaved pairs, range ${fmtRatio(Math.min(...rs))}–${fmtRatio(Math.max(...rs))}`;
  const writesPer1000 = readD ? readD.writesPerReq * 1000 : NaN;
  // Statements per read with the cache: the main cell, and every cell of the cache's read (main and repeats) together.
  const cacheCells = [readC, ...(cacheRounds?.cells.map(([c]) => c) ?? [])].filter((c): c is HttpCell => c !== undefined);
  const cacheReqs = cacheCells.reduce((n, c) => n + c.requests, 0);
  const cacheStmts = cacheCells.reduce((n, c) => n + c.statementsPerReq * c.requests, 0);
  const cacheWrites = cacheCells.reduce((n, c) => n + c.writesPerReq * c.requests, 0);
  const verdict = (ok: boolean) => (ok ? "**met**" : "**not met**");
  const goals = [
    ["connect-drizzle `get` (hit) ops/s ≥ 0.9× the raw-pg floor, concurrency 32", `${fmtRatio(getRatio)} (${spread(getRatios)}; table cells ${fmtInt(getD?.opsPerSec ?? NaN)} vs ${fmtInt(getF?.opsPerSec ?? NaN)} ops/s)`, verdict(getRatio >= 0.9)],
    ["HTTP GET /read req/s ≥ 2× connect-pg-simple", `${fmtRatio(readRatio)} (${spread(readRatios)}; table cells ${fmtInt(readD?.reqPerSec ?? NaN)} vs ${fmtInt(readP?.reqPerSec ?? NaN)} req/s)`, verdict(readRatio >= 2)],
    ["writes per 1,000 read requests ≤ 10 (rolling: true)", `${fmtNum(writesPer1000, 1)} (connect-pg-simple: ${fmtNum((readP?.writesPerReq ?? NaN) * 1000, 0)})`, verdict(writesPer1000 <= 10)],
    [
      "with `cache`: HTTP GET /read req/s ≥ connect-redis",
      `${fmtRatio(cacheRatio)} (${spread(cacheRatios)}; table cells ${fmtInt(readC?.reqPerSec ?? NaN)} vs ${fmtInt(readR?.reqPerSec ?? NaN)} req/s); ` +
        `SQL statements per read ${fmtNum(readC?.statementsPerReq ?? NaN, 3)} in the table cell, ${fmtNum(cacheStmts / cacheReqs, 4)} over all ${cacheCells.length} of its cells ` +
        `(${Math.round(cacheStmts)} in ${fmtInt(cacheReqs)} reads, ${Math.round(cacheWrites)} of them writes)`,
      verdict(cacheRatio >= 1),
    ],
  ];
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
    "## Targets (issue #5)",
    "",
    table(["target", "measured (one run)", ""], goals),
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
      `"connect-drizzle (cache)": cache: {} (max 10,000, ttl 60 s), get (hit) only, every pool session read once just before the cell (so the cell's reads are served from memory); its writes are notify: true's.`,
    "",
    table(["operation", "c", ...ids.map(label), "drizzle ÷ pg-simple", "drizzle ÷ floor"], storeRows, ["l", "r", ...ids.map(() => "r" as const), "r", "r"]),
    "",
    "Client-side CPU (this process, user + system) per operation, µs; on 2 cores the client competes with Postgres for the same CPUs.",
    "",
    table(["operation", "c", ...ids.map(label)], cpuRows, ["l", "r", ...ids.map(() => "r" as const)]),
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
      "Interleaved repeats of GET /read: connect-drizzle vs connect-pg-simple, and connect-drizzle (cache) vs connect-redis. " +
      "All servers run at once (idle but the one loaded); cells run route by route, store after store. MemoryStore, with no I/O at all, is the ceiling of this app on this machine.",
    "",
    table(
      ["route", "store", "req/s", "p50 ms", "p99 ms", "stmts/req", "writes/req", "writes/1,000 req", "server CPU µs/req", "× pg-simple", "× floor", "statements by verb, per req", "errors"],
      httpRows,
      ["l", "l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l", "r"],
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
