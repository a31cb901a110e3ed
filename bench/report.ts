/**
 * bench/RESULTS.md (also printed): the goals, the store level's and the HTTP level's tables, the mixed
 * workload. What each figure is: bench/README.md.
 */
import { type ExtraRow, type GoalRow, httpCell, type Results, type RunData, storeCell } from "./goals.js";
import type { MixedRun } from "./mixed.js";
import { renderRotation } from "./rotation.js";
import { OP_LABELS, OPS, type StoreCell } from "./store-level.js";
import { HTTP_LEVEL, MIXED, POOL_SIZE, QUICK, STORE_LEVEL } from "./support/config.js";
import { fmtInt, fmtMs, fmtNum, fmtRatio, table } from "./support/stats.js";

const verdict = (ok: boolean | undefined) => (ok === undefined ? "—" : ok ? "**met**" : "**not met**");

/** The goal table's rows: each goal, then the figures below them, with the previous run's value. */
function goalTableRows(goals: GoalRow[], extras: ExtraRow[], previous: Results | undefined, prevTag: string): string[][] {
  const fmt = (g: Pick<GoalRow, "unit">, n: number) => (g.unit === "×" ? fmtRatio(n) : fmtNum(n, 3));
  return [
    ...goals.map((g) => {
      const p = previous?.goals?.find((x) => x.id === g.id);
      return [
        g.figure,
        g.goal,
        g.n ? `${fmt(g, g.median)} (${fmt(g, g.min)}–${fmt(g, g.max)}, ${g.n} ${g.of}${g.n === 1 ? "" : "s"})` : "— (not measured)",
        p && p.median !== null ? `${fmt(g, p.median)}${prevTag}` : "—",
        g.n ? verdict(g.met) : "—",
      ];
    }),
    ...extras.map((x) => {
      const p = previous?.extra?.find((e) => e.id === x.id);
      return [x.figure, x.goal, x.shown, p && p.value !== null ? `${fmtNum(p.value, x.digits)}${prevTag}` : "—", verdict(x.met)];
    }),
  ];
}

/** The mixed workload's table: one row per variant, with the previous run's ops/s and hit ratio. */
function mixedRows(mixed: MixedRun[], previous: Results | undefined): string[][] {
  return mixed.map((m) => {
    const p = previous?.mixed?.find((x) => x.variant === m.variant);
    return [
      m.variant === "cache" ? "with `cache`" : "without cache",
      fmtInt(m.opsPerSec),
      fmtInt(m.readsPerSec),
      `${fmtInt(m.logins / m.seconds)} / ${fmtInt(m.logouts / m.seconds)}`,
      `${fmtMs(m.p50)} / ${fmtMs(m.p99)}`,
      `${fmtMs(m.readP50)} / ${fmtMs(m.readP99)}`,
      fmtNum(m.hitRatio, 3),
      fmtNum(m.statements / m.reads, 3),
      fmtNum(m.lookups / m.reads, 3),
      m.instances.map((i) => `${fmtNum(i.reads ? Math.max(0, 1 - i.lookups / i.reads) : NaN, 3)}`).join(", "),
      p ? `${fmtInt(p.opsPerSec)} ops/s, hit ${fmtNum(p.hitRatio ?? NaN, 3)}` : "—",
      fmtInt(m.notFound),
      m.errors ? `⚠ ${m.errors}` : "0",
    ];
  });
}

export function render(machineLine: string, notes: string[], run: RunData, goals: GoalRow[], extras: ExtraRow[], previous: Results | undefined): string {
  const { targets, storeCells, httpCells } = run;
  const cell = (target: string, op: string, c: number) => storeCell(storeCells, target, op, c);
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
    ratio(x, httpCell(httpCells, "connect-pg-simple", x.route)),
    ratio(x, httpCell(httpCells, "raw-pg", x.route)),
    fmtNum(x.notifyStatementsPerReq, 2),
    fmtNum(x.notificationsPerReq, 2),
    Object.entries(x.byVerb)
      .map(([verb, n]) => `${verb} ${fmtNum(n / x.requests, 2)}`)
      .join(", ") || "—",
    x.non2xx || x.errors ? `⚠ ${x.non2xx} non-2xx, ${x.errors} errors` : "0",
  ]);

  const getF = cell("raw-pg", "get-hit", 32);
  const prevTag = previous ? ` (${previous.commit ?? "no commit"}${previous.srcModified ? ", src/ modified" : ""}${previous.quick ? ", quick run" : ""})` : "";
  const goalRows = goalTableRows(goals, extras, previous, prevTag);
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
      `The cache's statements per get after concurrent sets is a count, not a ratio: its median over ${STORE_LEVEL.repeats + 1} phases (one after the store level's main cells, one per round of repeats), ` +
      `each ${STORE_LEVEL.fillSessions} new sessions set at c32 through a store with \`cache: {}\`, then each read once at c32, its statements counted as the HTTP table counts them. ` +
      `"previous run": the median of the run before this one, from bench/results.json${previous ? ` (${previous.date.slice(0, 16).replace("T", " ")} UTC${previous.quick ? ", a BENCH_QUICK=1 run" : ""})` : " (none found)"}.`,
    "",
    table(["figure", "goal", "this run (median, range, n)", "previous run", "met / not met"], goalRows),

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
      `"connect-drizzle": its defaults (no cache, so notify: false). ` +
      `"connect-drizzle (cache)": cache: {} (max 10,000, ttl 60 s; it turns notify on, so every write that ends or changes a session carries a pg_notify): get (hit), with every pool session read once just before the cell (so the cell's reads are served from memory), ` +
      "and the writes a deployment with the cache pays for (set, touch (forced write), destroy); its reads that miss are connect-drizzle's SELECT. " +
      "Interleaved repeats (for the goals), at c32: get (hit), get (miss) and touch (forced write) connect-drizzle vs the floor, set and destroy connect-drizzle vs connect-pg-simple, " +
      "touch (forced write) and destroy with `cache` vs without, save with merge vs whole, and get/set/save with `encrypt` vs without; their ops/s and CPU are not in these tables.",
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
    ...(run.rotation ? [renderRotation(run.rotation, previous?.rotation, prevTag), ""] : []),
    "## HTTP level",
    "",
    `Express 5 + express-session (resave: false, saveUninitialized: false, rolling: true, maxAge 1 h), server in a child process, ` +
      `autocannon in the parent, ${HTTP_LEVEL.connections} connections, ${HTTP_LEVEL.durationS} s per cell after ${HTTP_LEVEL.warmupS} s warm-up. ` +
      `GET /read: ${HTTP_LEVEL.connections} sessions (one per connection), the session is read and not changed. POST /login: regenerate + set user, no cookie sent. ` +
      "Statements are counted in the server (SQL: every pg Client.query; connect-redis: Redis INFO commandstats). " +
      "Server CPU µs/req: process.cpuUsage() of the server process over the cell (Express, express-session, the store's client side; not Postgres, Redis or autocannon). The raw-pg floor's touch is a no-op (one SELECT per read). " +
      "connect-drizzle (cache): cache: {} (max 10,000, ttl 60 s); a session is cached by the login that made it or its first read, " +
      "then read from memory until its entry is 60 s old (then one SELECT); its SQL also counts the cache's probe (a select pg_notify every 30 s). " +
      "Interleaved repeats (for the goals): GET /read, connect-drizzle vs connect-redis; POST /login, connect-drizzle vs connect-pg-simple; GET /read, connect-drizzle (cache) vs MemoryStore and connect-redis; " +
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
    "## Mixed workload",
    "",
    `Two connect-drizzle instances on one table, each with its own pg Pool (max ${POOL_SIZE}), as two app servers of one deployment; ${MIXED.concurrency} workers in all, ` +
      `each operation on an instance picked at random, through the callback API: ${Math.round(MIXED.reads * 100)}% reads (get of a random live session), ` +
      `${Math.round(((1 - MIXED.reads) / 2) * 100)}% logins (set of a new session {cookie, passport: {user}}) and ${Math.round(((1 - MIXED.reads) / 2) * 100)}% logouts (destroy of a random live session, taken out of the pool read from). ` +
      `${MIXED.sessions} live sessions written first (each through one instance), ${MIXED.warmupMs} ms warm-up, then ${MIXED.durationMs / 1000} s timed. ` +
      "With `cache`: `cache: {}` on both, each used once its cache is live; without: both with defaults. " +
      "Statements are counted on each instance's pool (every pg Client.query, the cache's probe included); lookups are the SELECTs other than the probe. " +
      "Hit ratio: reads answered without a lookup of their own ÷ reads (1 − lookups ÷ reads). Latency p50 / p99, ms. " +
      "A read that found nothing picked a session just before a logout took it out of the pool, and the logout ended it first.",
    "",
    table(
      [
        "variant",
        "ops/s",
        "reads/s",
        "logins / logouts per s",
        "latency, all ops",
        "latency, reads",
        "hit ratio",
        "SQL statements per read",
        "lookups per read",
        "hit ratio per instance",
        "previous run",
        "reads that found nothing",
        "errors",
      ],
      mixedRows(run.mixed, previous),
      ["l", "r", "r", "r", "r", "r", "r", "r", "r", "r", "l", "r", "r"],
    ),
    "",
  ].join("\n");
}
