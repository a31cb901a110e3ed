/**
 * Store level: each store's get (hit and miss), set, touch and destroy, called the way express-session
 * calls them, at concurrency 1 and 32, for a bounded time per cell. Runs in the benchmark's own process.
 * Cells run operation by operation, every store back to back, so a change in the machine's background
 * load hits all the stores of a row alike rather than one store's whole column.
 */
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import type { SessionData } from "express-session";
import { CacheFill, type FillPhase } from "./cache-fill.js";
import { sessionData, STORE_LEVEL } from "./support/config.js";
import { countNotifyStatements, notifyChannel, NotifyListener } from "./support/notify.js";
import { Samples } from "./support/stats.js";
import { openStore, type OpenStore, type Target } from "./support/stores.js";

export const OPS = ["set", "save", "get-hit", "get-miss", "touch", "touch-forced", "destroy"] as const;
export type OpName = (typeof OPS)[number];

export const OP_LABELS: Record<OpName, string> = {
  set: "set (new session)",
  save: "save (one key changed)",
  "get-hit": "get (hit)",
  "get-miss": "get (miss)",
  touch: "touch (steady state)",
  "touch-forced": "touch (forced write)",
  destroy: "destroy",
};

export interface StoreCell {
  target: string;
  op: OpName;
  concurrency: number;
  ops: number;
  seconds: number;
  opsPerSec: number;
  p50: number;
  p99: number;
  /** CPU time of this process (user + system) per operation, µs: the client-side cost. */
  cpuUsPerOp: number;
  errors: number;
  /** connect-drizzle variants only: statements holding `pg_notify(` per operation (support/notify.ts). */
  notifyStatementsPerOp?: number;
  /** connect-drizzle variants only: notifications delivered on the store's channel per operation. */
  notificationsPerOp?: number;
}

/** One operation; returns false when it has nothing left to do (destroy ran out of sessions). */
export type Op = () => Promise<unknown> | false;

/** `beforeTimed` runs between the warm-up and the timed part (to reset counters). */
export async function runCell(op: Op, concurrency: number, durationMs: number, warmupMs: number, beforeTimed?: () => Promise<void>) {
  const drive = async (until: number, samples?: Samples) => {
    let errors = 0;
    let firstError: unknown;
    const worker = async () => {
      while (performance.now() < until) {
        const t0 = performance.now();
        const pending = op();
        if (pending === false) return;
        try {
          await pending;
        } catch (error) {
          errors++;
          firstError ??= error;
          continue;
        }
        samples?.push(performance.now() - t0);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    return { errors, firstError };
  };
  if (warmupMs > 0) await drive(performance.now() + warmupMs);
  await beforeTimed?.();
  const samples = new Samples();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const { errors, firstError } = await drive(t0 + durationMs, samples);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const [p50, p99] = samples.percentiles(50, 99);
  if (firstError) console.error(`  ${errors} errors, first: ${(firstError as Error)?.message ?? firstError}`);
  return {
    ops: samples.length,
    seconds,
    opsPerSec: samples.length / seconds,
    p50: p50!,
    p99: p99!,
    cpuUsPerOp: samples.length ? (cpu.user + cpu.system) / samples.length : NaN,
    errors,
  };
}

/** Session ids shaped like express-session's (about 32 characters), cheap to make. */
export function idMaker(tag: string) {
  const prefix = `${tag}-${randomBytes(12).toString("base64url")}-`;
  let n = 0;
  return () => `${prefix}${n++}`;
}

/** A store under test, with what its cells need. */
interface Prepared {
  target: Target;
  main: OpenStore;
  /** connect-drizzle with touchAfter: 0 (and the target's cache) on the same table and pool: every touch writes. */
  forced?: OpenStore;
  /** Live sessions, as express-session holds them after a get (req.session). */
  pool: Array<{ sid: string; session: SessionData & { touch(): unknown } }>;
  created: string[];
  destroyed: number;
}

async function prepare(target: Target, schema: string): Promise<Prepared> {
  const main = await openStore(target.name, { schema, notify: target.notify, cache: target.cache, options: target.options });
  const measuresForced = target.name === "connect-drizzle" && (target.ops ?? OPS).includes("touch-forced");
  const forced = measuresForced
    ? await openStore(target.name, { schema, notify: target.notify, cache: target.cache, touchAfter: 0, pool: main.pool, options: target.options })
    : undefined;
  const next = idMaker("pool");
  const sids = Array.from({ length: STORE_LEVEL.poolSessions }, next);
  const pool: Prepared["pool"] = [];
  for (let i = 0; i < sids.length; i += 32) {
    await Promise.all(
      sids.slice(i, i + 32).map(async (sid) => {
        await main.ops.set(sid, sessionData());
        // What express-session does with a loaded session: store.createSession(req, data) becomes req.session.
        const data = await main.ops.get(sid);
        if (!data) throw new Error(`${target.label}: session ${sid} was written but not read back`);
        pool.push({ sid, session: main.store.createSession({ sessionID: sid } as any, data as SessionData) as any });
      }),
    );
  }
  return { target, main, forced, pool, created: [], destroyed: 0 };
}

function operation(p: Prepared, op: OpName, newId: () => string, missId: () => string): Op | undefined {
  const { main, forced } = p;
  const pick = () => p.pool[(Math.random() * p.pool.length) | 0]!;
  // A rolling request: express-session resets the cookie's maxAge (req.session.touch()), then calls store.touch.
  const touch = (store: OpenStore) => () => {
    const { sid, session } = pick();
    session.touch();
    return store.ops.touch(sid, session);
  };
  if (p.target.ops && !p.target.ops.includes(op)) return undefined;
  switch (op) {
    case "set":
      return () => {
        const id = newId();
        p.created.push(id);
        return main.ops.set(id, sessionData());
      };
    case "save":
      // A request that changed one key of the session it loaded (a counter), as express-session saves it.
      return () => {
        const { sid, session } = pick();
        (session as any).counter = ((session as any).counter ?? 0) + 1;
        return main.ops.set(sid, session);
      };
    case "get-hit":
      return () => main.ops.get(pick().sid);
    case "get-miss":
      return () => main.ops.get(missId());
    case "touch":
      return touch(main);
    case "touch-forced":
      return forced ? touch(forced) : undefined;
    case "destroy":
      return () => (p.destroyed < p.created.length ? main.ops.destroy(p.created[p.destroyed++]!) : false);
  }
}

/** Reads every pool session once, 32 at a time. */
async function prime(p: Prepared): Promise<void> {
  for (let i = 0; i < p.pool.length; i += 32) await Promise.all(p.pool.slice(i, i + 32).map(({ sid }) => p.main.ops.get(sid)));
}

/** Interleaved repeats of one cell for a pair of targets (A B, B A, ...): ops/s and client CPU µs/op of each, per round. */
export interface Rounds {
  op: OpName;
  concurrency: number;
  a: string;
  b: string;
  opsPerSec: Array<[number, number]>;
  cpuUsPerOp: Array<[number, number]>;
}

/**
 * The cells the goals compare (bench/goals.ts), repeated interleaved after the main cells: A B, B A, ...,
 * every pair once per round, so that each pair's repeats are spread over the whole phase. In each round
 * set runs before destroy, so destroy ends the sessions set has just made (topUp adds more when short).
 * The floor's touch (forced write) is its touch: it writes on every touch.
 */
const STORE_PAIRS = [
  { op: "get-hit", concurrency: 32, a: "connect-drizzle", b: "raw-pg" },
  { op: "get-miss", concurrency: 32, a: "connect-drizzle", b: "raw-pg" },
  { op: "touch-forced", concurrency: 32, a: "connect-drizzle", b: "raw-pg" },
  { op: "set", concurrency: 32, a: "connect-drizzle", b: "connect-pg-simple" },
  { op: "save", concurrency: 32, a: "connect-drizzle", b: "connect-drizzle-whole" },
  { op: "get-hit", concurrency: 32, a: "connect-drizzle-encrypt", b: "connect-drizzle" },
  { op: "set", concurrency: 32, a: "connect-drizzle-encrypt", b: "connect-drizzle" },
  { op: "save", concurrency: 32, a: "connect-drizzle-encrypt", b: "connect-drizzle" },
  { op: "touch-forced", concurrency: 32, a: "connect-drizzle-cache", b: "connect-drizzle" },
  { op: "destroy", concurrency: 32, a: "connect-drizzle", b: "connect-pg-simple" },
  { op: "destroy", concurrency: 32, a: "connect-drizzle-cache", b: "connect-drizzle" },
] as const satisfies ReadonlyArray<{ op: OpName; concurrency: number; a: string; b: string }>;

/** Makes sure destroy has at least `n` sessions of its own left to end (untimed sets, 32 at a time). */
async function topUp(p: Prepared, n: number): Promise<void> {
  const next = idMaker("top");
  while (p.created.length - p.destroyed < n) {
    const ids = Array.from({ length: 32 }, next);
    await Promise.all(ids.map((id) => p.main.ops.set(id, sessionData())));
    p.created.push(...ids);
  }
}

/** One of the cache's fill phases, logged. */
async function fillPhase(fill: CacheFill, fills: FillPhase[], log: (line: string) => void, tag: string): Promise<void> {
  const f = await fill.phase();
  fills.push(f);
  log(
    `  ${tag}cache fill: ${f.sessions} new sessions set at c32, then read: ${f.statements} statements (${(f.statements / f.sessions).toFixed(3)} per read) ` +
      `${JSON.stringify(f.byVerb)}${f.missing || f.errors ? `  ${f.missing} NOT FOUND, ${f.errors} ERRORS` : ""}`,
  );
}

export interface StoreLevel {
  cells: StoreCell[];
  rounds: Rounds[];
  /** The cache's fill phases (bench/cache-fill.ts): one after the main cells, one per round of repeats. */
  fills: FillPhase[];
}

/** Every cell of every target, at each concurrency; then the interleaved repeats of STORE_PAIRS. */
export async function benchStoreLevel(targets: Target[], schema: string, log: (line: string) => void): Promise<StoreLevel> {
  const { durationMs, warmupMs, concurrency: levels } = STORE_LEVEL;
  const prepared: Prepared[] = [];
  const cells: StoreCell[] = [];
  const rounds: Rounds[] = [];
  const fills: FillPhase[] = [];
  // connect-drizzle's NOTIFYs: every variant writes to the same table, so one channel.
  const listener = targets.some((t) => t.name === "connect-drizzle") ? await NotifyListener.open(notifyChannel(schema, "sessions")) : undefined;
  let fill: CacheFill | undefined;
  try {
    for (const target of targets) prepared.push(await prepare(target, schema));
    fill = await CacheFill.open(schema);
    for (const concurrency of levels) {
      for (const op of OPS) {
        for (const p of prepared) {
          const fn = operation(p, op, idMaker(`c${concurrency}`), idMaker("miss"));
          if (!fn) continue;
          if (op === "set") (p.created = []), (p.destroyed = 0);
          // The read cache: every pool session read once just before the cell (its ttl, 60 s, is shorter
          // than the run), so the cell measures reads after the first, served from memory.
          if (op === "get-hit" && p.target.cache) await prime(p);
          // NOTIFYs of connect-drizzle's variants, counted over the timed part only (the statement counter
          // wraps pg's query, so it is installed for these cells alone).
          const counter = listener && p.target.name === "connect-drizzle" ? countNotifyStatements() : undefined;
          let r: Awaited<ReturnType<typeof runCell>>;
          let notify: Pick<StoreCell, "notifyStatementsPerOp" | "notificationsPerOp"> = {};
          try {
            r = await runCell(
              fn,
              concurrency,
              durationMs,
              op === "destroy" ? 0 : warmupMs,
              counter && (async () => (await listener!.reset(), counter.reset())),
            );
            if (counter) {
              const statements = counter.count();
              notify = { notifyStatementsPerOp: statements / r.ops, notificationsPerOp: (await listener!.count()) / r.ops };
            }
          } finally {
            counter?.stop();
          }
          cells.push({ target: p.target.id, op, concurrency, ...r, ...notify });
          log(
            `  ${OP_LABELS[op].padEnd(22)} c=${String(concurrency).padEnd(3)} ${p.target.label.padEnd(32)}` +
              `${Math.round(r.opsPerSec).toString().padStart(7)} ops/s  p50 ${r.p50.toFixed(3)} ms  p99 ${r.p99.toFixed(3)} ms  ` +
              `${r.cpuUsPerOp.toFixed(1)} µs CPU/op` +
              `${counter ? `  pg_notify stmts/op ${notify.notifyStatementsPerOp!.toFixed(3)}  notifications/op ${notify.notificationsPerOp!.toFixed(3)}` : ""}` +
              `${r.errors ? `  ${r.errors} ERRORS` : ""}`,
          );
        }
      }
    }
    await fillPhase(fill, fills, log, "");
    // Each goal compares two cells of one run; repeat them interleaved so that a change in background
    // load between the two cells cannot decide it.
    const pairs = STORE_PAIRS.flatMap((pair) => {
      const a = prepared.find((p) => p.target.id === pair.a);
      const b = prepared.find((p) => p.target.id === pair.b);
      if (!a || !b) return [];
      const round: Rounds = { ...pair, opsPerSec: [], cpuUsPerOp: [] };
      rounds.push(round);
      return [{ round, a, b }];
    });
    for (let i = 0; i < STORE_LEVEL.repeats; i++) {
      for (const { round, a, b } of pairs) {
        const { op, concurrency } = round;
        const ops: [number, number] = [0, 0];
        const cpu: [number, number] = [0, 0];
        for (const [k, p] of (i % 2
          ? [
              [1, b],
              [0, a],
            ]
          : [
              [0, a],
              [1, b],
            ]) as Array<[0 | 1, Prepared]>) {
          if (op === "destroy") {
            // Enough sessions for the cell: 1.5× what the store's main cell would end in this time.
            const main = cells.find((c) => c.target === p.target.id && c.op === "destroy" && c.concurrency === concurrency);
            await topUp(p, Math.ceil(((main?.opsPerSec ?? 10_000) * STORE_LEVEL.repeatMs * 1.5) / 1000) + 100);
          }
          // A store without a forced-touch variant writes on every touch: its touch is the forced write.
          const own = op === "touch-forced" && !p.forced ? "touch" : op;
          const r = await runCell(operation(p, own, idMaker(`r${i}`), idMaker("r"))!, concurrency, STORE_LEVEL.repeatMs, op === "destroy" ? 0 : 100);
          ops[k] = r.opsPerSec;
          cpu[k] = r.cpuUsPerOp;
        }
        round.opsPerSec.push(ops);
        round.cpuUsPerOp.push(cpu);
        log(
          `  repeat ${i + 1}: ${OP_LABELS[op]} c=${concurrency}  ${a.target.label} ${Math.round(ops[0])}  ${b.target.label} ${Math.round(ops[1])} ops/s  ` +
            `ratio ${(ops[0] / ops[1]).toFixed(2)}  CPU ${cpu[0].toFixed(1)} / ${cpu[1].toFixed(1)} µs/op`,
        );
      }
      await fillPhase(fill, fills, log, `repeat ${i + 1}: `);
    }
  } finally {
    await fill?.close().catch(() => {});
    await listener?.close();
    for (const p of prepared.reverse()) {
      await p.forced?.close().catch(() => {});
      await p.main.close().catch(() => {});
    }
  }
  return { cells, rounds, fills };
}
