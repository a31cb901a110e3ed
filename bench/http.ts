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
}

interface Counts {
  requests: Record<string, number>;
  statements: number;
  writes: number;
  selects: number;
  byVerb: Record<string, number>;
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

/** Interleaved repeats of one route for a pair of targets: req/s of each, per round. */
export interface HttpRounds {
  route: Route;
  a: string;
  b: string;
  reqPerSec: Array<[number, number]>;
  /** The cells of each round (statements per request of each, etc.). */
  cells: Array<[HttpCell, HttpCell]>;
}

interface Running {
  target: Target;
  server: Server;
  redis?: RedisCounter;
  base: string;
  cookies: string[];
}

async function startTarget(target: Target, schema: string): Promise<Running> {
  const server = await Server.start(target, schema, `bench:${schema}:http:`);
  const base = `http://127.0.0.1:${server.port}`;
  try {
    // One session per connection, made by the app's own login route.
    const cookies = await Promise.all(Array.from({ length: HTTP_LEVEL.connections }, () => login(base)));
    const check = await fetch(`${base}/read`, { headers: { cookie: cookies[0]! } });
    const body = (await check.json()) as { user: unknown };
    if (check.status !== 200 || !body.user) throw new Error(`${target.label}: GET /read did not find the session (${check.status} ${JSON.stringify(body)})`);
    const redis = target.name === "connect-redis" ? await RedisCounter.open() : undefined;
    return { target, server, redis, base, cookies };
  } catch (error) {
    await server.stop();
    throw error;
  }
}

async function measure(running: Running, route: Route, log: (line: string) => void, durationS = HTTP_LEVEL.durationS, warmupS = HTTP_LEVEL.warmupS): Promise<HttpCell> {
  const { target, server, redis, base, cookies } = running;
  let next = 0;
  const options: Partial<autocannon.Options> =
    route === "read" ? { setupClient: (client) => client.setHeaders({ cookie: cookies[next++ % cookies.length]! }) } : { method: "POST" };
  const url = `${base}/${route}`;
  if (warmupS > 0) await load(url, options, warmupS);
  await server.reset();
  await redis?.reset();
  const result = await load(url, options, durationS);
  const counts = await server.stats();
  const redisCounts = await redis?.counts();
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
  };
  log(
    `  ${(route === "read" ? "GET /read" : "POST /login").padEnd(12)} ${target.label.padEnd(32)} ${Math.round(cell.reqPerSec).toString().padStart(6)} req/s  ` +
      `p50 ${cell.p50} ms  p99 ${cell.p99} ms  ${Number.isFinite(cell.statementsPerReq) ? cell.statementsPerReq.toFixed(3) : "—"} stmts/req  ` +
      `${Number.isFinite(cell.writesPerReq) ? cell.writesPerReq.toFixed(4) : "—"} writes/req  ${Math.round(cell.serverCpuUsPerReq)} µs server CPU/req  ${JSON.stringify(cell.byVerb)}` +
      `${cell.non2xx || cell.errors ? `  non-2xx ${cell.non2xx} errors ${cell.errors}` : ""}`,
  );
  return cell;
}

/** The GET /read targets: connect-drizzle vs connect-pg-simple, connect-drizzle (cache) vs connect-redis. */
export const READ_PAIRS = [
  ["connect-drizzle", "connect-pg-simple"],
  ["connect-drizzle-cache", "connect-redis"],
] as const;

/**
 * Every target's server runs at once (idle but for its own cell); the cells run route by route, every
 * store back to back, as at the store level.
 */
export async function benchHttp(targets: Target[], schema: string, log: (line: string) => void): Promise<{ cells: HttpCell[]; rounds: HttpRounds[]; failures: string[] }> {
  const settled = await Promise.allSettled(targets.map((t) => startTarget(t, schema)));
  const running = settled.flatMap((s) => (s.status === "fulfilled" ? [s.value] : []));
  const cells: HttpCell[] = [];
  const rounds: HttpRounds[] = [];
  // A store whose server could not start is left out of the HTTP table (with a note), not the whole run.
  const failures = settled.flatMap((s, i) => (s.status === "rejected" ? [`HTTP level: ${targets[i]!.label} left out: ${(s.reason as Error)?.message ?? s.reason}`] : []));
  for (const failure of failures) log(`  ${failure}`);
  try {
    for (const route of ["read", "login"] as const) {
      for (const r of running) if (!r.target.routes || r.target.routes.includes(route)) cells.push(await measure(r, route, log));
    }
    // The read targets compare two cells each; repeat them interleaved (A B, B A, ...).
    for (const [idA, idB] of READ_PAIRS) {
      const a = running.find((r) => r.target.id === idA);
      const b = running.find((r) => r.target.id === idB);
      if (!a || !b) continue;
      const round: HttpRounds = { route: "read", a: idA, b: idB, reqPerSec: [], cells: [] };
      for (let i = 0; i < HTTP_LEVEL.repeats; i++) {
        const pair: HttpCell[] = [];
        for (const [k, r] of (i % 2 ? [[1, b], [0, a]] : [[0, a], [1, b]]) as Array<[0 | 1, Running]>) {
          pair[k] = await measure(r, "read", (line) => log(`  repeat ${i + 1}:${line}`), HTTP_LEVEL.repeatS, 0);
        }
        round.reqPerSec.push([pair[0]!.reqPerSec, pair[1]!.reqPerSec]);
        round.cells.push([pair[0]!, pair[1]!]);
      }
      rounds.push(round);
    }
  } finally {
    for (const r of running) {
      r.redis?.close();
      await r.server.stop();
    }
  }
  return { cells, rounds, failures };
}
