/**
 * HTTP level: an Express 5 + express-session app per store, in a child process (bench/support/server.ts),
 * loaded by autocannon from this process over loopback. Statements per request are counted by the server.
 */
import { fork, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import autocannon from "autocannon";
import { createClient } from "redis";
import { HTTP_LEVEL, REDIS_URL } from "./support/config.js";
import { notifyChannel, NotifyListener } from "./support/notify.js";
import type { Target } from "./support/stores.js";

export type Route = "read" | "login";

export interface HttpCell {
  target: string;
  route: Route;
  reqPerSec: number;
  p50: number;
  p99: number;
  /** Requests the server handled during the cell. */
  requests: number;
  non2xx: number;
  errors: number;
  /** Statements (SQL, or Redis commands for connect-redis) per request; NaN for MemoryStore. */
  statementsPerReq: number;
  writesPerReq: number;
  /** Statement counts by verb (SQL) or command (Redis). */
  byVerb: Record<string, number>;
  /** CPU time of the server process (Express, express-session and the store's client side) per request, µs. */
  serverCpuUsPerReq: number;
  /** connect-drizzle only (NaN otherwise): statements holding `pg_notify(` per request, counted by the server. */
  notifyStatementsPerReq: number;
  /** connect-drizzle only (NaN otherwise): notifications delivered on the store's channel per request (a LISTEN in this process). */
  notificationsPerReq: number;
}

interface Counts {
  requests: Record<string, number>;
  statements: number;
  writes: number;
  selects: number;
  byVerb: Record<string, number>;
  /** Statements holding `pg_notify(` (the cache's probe left out). */
  notifyStatements: number;
  errors: number;
  /** CPU time (user + system) of the server process since the last reset, µs. */
  cpuUs: number;
}

const REDIS_WRITES = new Set(["set", "setex", "psetex", "expire", "pexpire", "del", "unlink", "getex", "getdel"]);
const REDIS_DATA = new Set([...REDIS_WRITES, "get", "mget", "exists", "ttl", "pttl"]);

class Server {
  private constructor(
    readonly child: ChildProcess,
    readonly port: number,
  ) {}

  static async start(target: Target, schema: string, redisPrefix: string): Promise<Server> {
    const child = fork(join(import.meta.dirname, "support", "server.ts"), [], {
      execArgv: ["--import", "tsx"],
      env: {
        ...process.env,
        BENCH_STORE: target.name,
        BENCH_SCHEMA: schema,
        BENCH_REDIS_PREFIX: redisPrefix,
        ...(target.notify === undefined ? {} : { BENCH_NOTIFY: String(target.notify) }),
        ...(target.cache === undefined ? {} : { BENCH_CACHE: JSON.stringify(target.cache) }),
      },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    const ready = await Promise.race([
      once(child, "message") as Promise<[{ type: string; port: number }]>,
      once(child, "exit").then(([code]) => Promise.reject(new Error(`server for ${target.label} exited with ${code}`))),
    ]);
    return new Server(child, ready[0].port);
  }

  private ask<T>(type: string): Promise<T> {
    const reply = once(this.child, "message").then(([m]) => m as T);
    this.child.send({ type });
    return reply;
  }

  reset(): Promise<unknown> {
    return this.ask("reset");
  }

  /** Resolves once the server has answered every request it received (autocannon leaves some in flight at the end of a run). */
  idle(): Promise<unknown> {
    return this.ask("idle");
  }

  async stats(): Promise<Counts> {
    return (await this.ask<{ counts: Counts }>("stats")).counts;
  }

  async stop(): Promise<void> {
    const exited = once(this.child, "exit");
    this.child.send({ type: "exit" });
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    if (this.child.exitCode === null) this.child.kill();
  }
}

/** Redis command counts, read from INFO commandstats (reset before each cell). */
class RedisCounter {
  private constructor(private readonly client: ReturnType<typeof createClient>) {}

  static async open(): Promise<RedisCounter> {
    const client = createClient({ url: REDIS_URL, socket: { connectTimeout: 1_000, reconnectStrategy: false } });
    client.on("error", () => {});
    await client.connect();
    return new RedisCounter(client);
  }

  async reset(): Promise<void> {
    await this.client.configResetStat();
  }

  async counts(): Promise<{ statements: number; writes: number; byVerb: Record<string, number> }> {
    const info = await this.client.info("commandstats");
    const byVerb: Record<string, number> = {};
    let statements = 0;
    let writes = 0;
    for (const m of info.matchAll(/^cmdstat_([\w|]+):calls=(\d+)/gm)) {
      const command = m[1]!;
      if (!REDIS_DATA.has(command)) continue;
      const calls = Number(m[2]);
      byVerb[command] = calls;
      statements += calls;
      if (REDIS_WRITES.has(command)) writes += calls;
    }
    return { statements, writes, byVerb };
  }

  close(): void {
    this.client.destroy();
  }
}

/** A session cookie from a fresh login. */
async function login(base: string): Promise<string> {
  const res = await fetch(`${base}/login`, { method: "POST" });
  const cookie = res.headers.get("set-cookie")?.split(";")[0];
  if (res.status !== 200 || !cookie) throw new Error(`POST /login answered ${res.status} without a session cookie`);
  return cookie;
}

function load(url: string, options: Partial<autocannon.Options>, durationS: number): Promise<autocannon.Result> {
  return autocannon({ url, connections: HTTP_LEVEL.connections, duration: durationS, ...options });
}

/**
 * Interleaved repeats of one route for a pair: `a` against `b`, req/s of each, per round. `b` may be a
 * group of targets (a goal against the faster of them): the group is measured whole in every round.
 */
export interface HttpRounds {
  route: Route;
  a: string;
  b: readonly string[];
  /** Per round: a's req/s, and each of b's (in b's order). */
  reqPerSec: Array<[number, number[]]>;
  /** The cells of each round (statements per request of each, etc.). */
  cells: Array<[HttpCell, HttpCell[]]>;
}

interface Running {
  target: Target;
  server: Server;
  redis?: RedisCounter;
  /** connect-drizzle: the LISTEN that counts its notifications. */
  listener?: NotifyListener;
  base: string;
  cookies: string[];
}

async function startTarget(target: Target, schema: string, listener: NotifyListener | undefined): Promise<Running> {
  const server = await Server.start(target, schema, `bench:${schema}:http:`);
  const base = `http://127.0.0.1:${server.port}`;
  try {
    // One session per connection, made by the app's own login route.
    const cookies = await Promise.all(Array.from({ length: HTTP_LEVEL.connections }, () => login(base)));
    const check = await fetch(`${base}/read`, { headers: { cookie: cookies[0]! } });
    const body = (await check.json()) as { user: unknown };
    if (check.status !== 200 || !body.user) throw new Error(`${target.label}: GET /read did not find the session (${check.status} ${JSON.stringify(body)})`);
    const redis = target.name === "connect-redis" ? await RedisCounter.open() : undefined;
    return { target, server, redis, listener: target.name === "connect-drizzle" ? listener : undefined, base, cookies };
  } catch (error) {
    await server.stop();
    throw error;
  }
}

async function measure(
  running: Running,
  route: Route,
  log: (line: string) => void,
  durationS = HTTP_LEVEL.durationS,
  warmupS = HTTP_LEVEL.warmupS,
): Promise<HttpCell> {
  const { target, server, redis, listener, base, cookies } = running;
  let next = 0;
  const options: Partial<autocannon.Options> =
    route === "read" ? { setupClient: (client) => client.setHeaders({ cookie: cookies[next++ % cookies.length]! }) } : { method: "POST" };
  const url = `${base}/${route}`;
  if (warmupS > 0) await load(url, options, warmupS);
  // Counted from here: the requests left in flight by the warm-up or an earlier cell (their statements,
  // and their NOTIFYs, which any connect-drizzle server's writes send on the same channel) are done.
  await server.idle();
  await server.reset();
  await redis?.reset();
  await listener?.reset();
  const result = await load(url, options, durationS);
  await server.idle();
  const counts = await server.stats();
  const redisCounts = await redis?.counts();
  const delivered = listener ? await listener.count() : NaN;
  const requests = counts.requests[`/${route}`] ?? 0;
  const statements = redisCounts?.statements ?? (target.name === "memory" ? NaN : counts.statements);
  const writes = redisCounts?.writes ?? (target.name === "memory" ? NaN : counts.writes);
  const cell: HttpCell = {
    target: target.id,
    route,
    reqPerSec: result.requests.total / result.duration,
    p50: result.latency.p50,
    p99: result.latency.p99,
    requests,
    non2xx: result.non2xx,
    errors: result.errors + counts.errors,
    statementsPerReq: statements / requests,
    writesPerReq: writes / requests,
    byVerb: redisCounts?.byVerb ?? counts.byVerb,
    serverCpuUsPerReq: counts.cpuUs / requests,
    notifyStatementsPerReq: target.name === "connect-drizzle" ? counts.notifyStatements / requests : NaN,
    notificationsPerReq: delivered / requests,
  };
  log(
    `  ${(route === "read" ? "GET /read" : "POST /login").padEnd(12)} ${target.label.padEnd(32)} ${Math.round(cell.reqPerSec).toString().padStart(6)} req/s  ` +
      `p50 ${cell.p50} ms  p99 ${cell.p99} ms  ${Number.isFinite(cell.statementsPerReq) ? cell.statementsPerReq.toFixed(3) : "—"} stmts/req  ` +
      `${Number.isFinite(cell.writesPerReq) ? cell.writesPerReq.toFixed(4) : "—"} writes/req  ${Math.round(cell.serverCpuUsPerReq)} µs server CPU/req  ${JSON.stringify(cell.byVerb)}` +
      `${listener ? `  pg_notify stmts/req ${cell.notifyStatementsPerReq.toFixed(3)}  notifications/req ${cell.notificationsPerReq.toFixed(3)}` : ""}` +
      `${cell.non2xx || cell.errors ? `  non-2xx ${cell.non2xx} errors ${cell.errors}` : ""}`,
  );
  return cell;
}

/**
 * The cells the goals compare (bench/goals.ts), repeated interleaved after the main cells. A group `b`
 * is compared by its faster member in the same round (the cache's read against MemoryStore and connect-redis).
 */
const HTTP_PAIRS: ReadonlyArray<{ route: Route; a: string; b: readonly string[] }> = [
  { route: "read", a: "connect-drizzle", b: ["connect-redis"] },
  { route: "login", a: "connect-drizzle", b: ["connect-pg-simple"] },
  { route: "read", a: "connect-drizzle-cache", b: ["memory", "connect-redis"] },
  { route: "login", a: "connect-drizzle-cache", b: ["connect-drizzle"] },
];

/**
 * Every target's server runs at once (idle but for its own cell); the cells run route by route, every
 * store back to back, as at the store level.
 */
export async function benchHttp(
  targets: Target[],
  schema: string,
  log: (line: string) => void,
): Promise<{ cells: HttpCell[]; rounds: HttpRounds[]; failures: string[] }> {
  // Every connect-drizzle server writes to the same table, so one channel; one cell runs at a time.
  const listener = targets.some((t) => t.name === "connect-drizzle") ? await NotifyListener.open(notifyChannel(schema, "sessions")) : undefined;
  const settled = await Promise.allSettled(targets.map((t) => startTarget(t, schema, listener)));
  const running = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  const cells: HttpCell[] = [];
  const rounds: HttpRounds[] = [];
  // A store whose server could not start is left out of the HTTP table (with a note), not the whole run.
  const failures = settled.flatMap((s, i) =>
    s.status === "rejected" ? [`HTTP level: ${targets[i]!.label} left out: ${(s.reason as Error)?.message ?? s.reason}`] : [],
  );
  for (const failure of failures) log(`  ${failure}`);
  try {
    for (const route of ["read", "login"] as const) {
      for (const r of running) if (!r.target.routes || r.target.routes.includes(route)) cells.push(await measure(r, route, log));
    }
    // Each goal compares two cells (or a cell and a group); repeat them interleaved, A B, B A, ... (a group
    // B1 B2 in reverse order in the reversed rounds), every pair once per round.
    const pairs = HTTP_PAIRS.flatMap((pair) => {
      const a = running.find((r) => r.target.id === pair.a);
      const b = pair.b.flatMap((id) => running.filter((r) => r.target.id === id));
      if (!a || b.length === 0) return [];
      const round: HttpRounds = { route: pair.route, a: pair.a, b: b.map((r) => r.target.id), reqPerSec: [], cells: [] };
      rounds.push(round);
      return [{ round, a, b }];
    });
    for (let i = 0; i < HTTP_LEVEL.repeats; i++) {
      for (const { round, a, b } of pairs) {
        const order = i % 2 ? [...b.map((r, k) => [k, r] as const).reverse(), [-1, a] as const] : [[-1, a] as const, ...b.map((r, k) => [k, r] as const)];
        const got: HttpCell[] = [];
        let mine: HttpCell | undefined;
        for (const [k, r] of order) {
          const cell = await measure(r, round.route, (line) => log(`  repeat ${i + 1}:${line}`), HTTP_LEVEL.repeatS, 0);
          if (k < 0) mine = cell;
          else got[k] = cell;
        }
        round.reqPerSec.push([mine!.reqPerSec, got.map((c) => c.reqPerSec)]);
        round.cells.push([mine!, got]);
      }
    }
  } finally {
    for (const r of running) {
      r.redis?.close();
      await r.server.stop();
    }
    await listener?.close();
  }
  return { cells, rounds, failures };
}
