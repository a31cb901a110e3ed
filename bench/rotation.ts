/**
 * Rotation and reuse detection on the hot path: what `store.rotate`, the lookup under the key a session was
 * rotated away from, and the end of a reused id cost, each as a ratio of two cells of one run, decided on the
 * median of interleaved rounds (A B, then B A, ...; a group of three A B C, then C B A), as the goals are.
 * `BENCH_ONLY=rotation npm run bench` runs only this section and prints it (writing nothing). See bench/README.md.
 *
 * The cost of the second lookup branch is measured store against store: two connect-drizzle stores with the
 * same options on the same table, each on a pg Pool of its own, one of which sends the lookups as their first
 * branch only (support/first-branch.ts), the statement the store sent before rotation (`key in (...)`, live,
 * `limit 1`; `key = any(...)` when coalesced). Against a raw single-branch statement the ratio would also hold
 * everything else the store does (hashing, coalescing, parsing); store against store, only the branch differs.
 */
import type { SessionData } from "express-session";
import pg from "pg";
import type { SessionStore } from "../src/index.js";
import { idMaker, type Op, runCell } from "./store-level.js";
import { DATABASE_URL, POOL_SIZE, QUICK, sessionData, STORE_LEVEL } from "./support/config.js";
import { wrapLookups } from "./support/first-branch.js";
import { fmtInt, fmtRatio, table } from "./support/stats.js";
import { openStore, type OpenStore } from "./support/stores.js";

/** Rounds of every group (as many as the store level's goal pairs), and the length of each cell. */
const ROUNDS = STORE_LEVEL.repeats + 1;
const CELL_MS = STORE_LEVEL.repeatMs;
/** Sessions read by the gets (never rotated, and rotated within the grace window). */
const SESSIONS = QUICK ? 200 : 1_000;
/** The grace window of the stores whose old ids are read (longer than the run). */
const LONG_GRACE = 3_600_000;

/** The cells: what each does, on which store. */
type CellName = "hit" | "hit-first" | "miss" | "miss-first" | "miss-floor" | "hit-rotated" | "old-in-grace" | "rotate" | "touch-forced" | "reuse" | "destroy";

const CELL_LABELS: Record<CellName, string> = {
  hit: "get (hit), both branches",
  "hit-first": "get (hit), first branch only",
  miss: "get (miss), both branches",
  "miss-first": "get (miss), first branch only",
  "miss-floor": "get (miss), raw-pg floor",
  "hit-rotated": "get (hit) of a rotated session, current id",
  "old-in-grace": "get through the old id, within grace",
  rotate: "rotate(id, newId)",
  "touch-forced": "touch (forced write)",
  reuse: "get of an old id past grace (SESSION_REUSED)",
  destroy: "destroy",
};

/** Cells that use up a session each (sessions are made for them, untimed, before each round). */
const CONSUMING: readonly CellName[] = ["rotate", "reuse", "destroy"];

/** One row of the section: a ratio of two cells of a group. */
interface RowSpec {
  id: string;
  figure: string;
  a: CellName;
  b: CellName;
}

/** Cells measured together, interleaved, at one concurrency; and the rows they give. */
interface Group {
  cells: CellName[];
  concurrency: number;
  rows: RowSpec[];
}

const GET_HIT: RowSpec = { id: "get-hit-branch", figure: "get (hit) with the rotation lookup ÷ first branch only", a: "hit", b: "hit-first" };
const GET_MISS: RowSpec = { id: "get-miss-branch", figure: "get (miss) with the rotation lookup ÷ first branch only", a: "miss", b: "miss-first" };
const MISS_FLOOR: RowSpec = { id: "get-miss-floor", figure: "get (miss) with the rotation lookup ÷ raw-pg floor", a: "miss", b: "miss-floor" };
const MISS_FIRST_FLOOR: RowSpec = { id: "get-miss-first-floor", figure: "get (miss), first branch only ÷ raw-pg floor", a: "miss-first", b: "miss-floor" };
const OLD: RowSpec = {
  id: "get-old-in-grace",
  figure: "get through an old id within the grace window ÷ through the current id",
  a: "old-in-grace",
  b: "hit-rotated",
};
const ROTATED: RowSpec = {
  id: "get-rotated-current",
  figure: "get (hit) of a rotated session (current id) ÷ of a never rotated one",
  a: "hit-rotated",
  b: "hit",
};
const ROTATE: RowSpec = { id: "rotate-vs-touch", figure: "rotate ÷ touch (forced write)", a: "rotate", b: "touch-forced" };
const REUSE: RowSpec = { id: "reuse-vs-destroy", figure: "get of an old id past grace (ends it, SESSION_REUSED) ÷ destroy", a: "reuse", b: "destroy" };

const GROUPS: Group[] = [1, 32].flatMap((c) => [
  { cells: ["hit", "hit-first"], concurrency: c, rows: [GET_HIT] },
  { cells: ["miss", "miss-first", "miss-floor"], concurrency: c, rows: [GET_MISS, MISS_FLOOR, MISS_FIRST_FLOOR] },
  { cells: ["old-in-grace", "hit-rotated", "hit"], concurrency: c, rows: [OLD, ROTATED] },
  // At c1 each is one statement; at c32 touches (and destroys) are coalesced into shared statements, rotations are not.
  { cells: ["rotate", "touch-forced"], concurrency: c, rows: [ROTATE] },
  ...(c === 32 ? ([{ cells: ["reuse", "destroy"], concurrency: c, rows: [REUSE] }] satisfies Group[]) : []),
]);

interface RotationRow {
  id: string;
  figure: string;
  concurrency: number;
  /** The ratio a ÷ b of each round, and the ops/s of a and b. */
  ratios: number[];
  a: number[];
  b: number[];
  labels: [string, string];
}

export interface RotationResult {
  rows: RotationRow[];
  /** Lookups the first-branch store sent rewritten (0 would mean its cells measured both branches). */
  rewritten: number;
  /** Rows of the sessions table when the first round started and when the last ended (a lookup's cost can grow with it). */
  tableRows: [number, number];
  /** Consuming cells that ran out of sessions before their time (their rate is over the shorter time). */
  ranOut: string[];
}

/** A live session as express-session holds it after a get (req.session), for touch. */
type Held = { sid: string; session: SessionData & { touch(): unknown } };

/** The stores, the sessions they read, and the sessions the consuming cells use up. */
class Bench {
  private readonly pick = <T>(xs: T[]) => xs[(Math.random() * xs.length) | 0]!;
  never: Held[] = [];
  rotated: Array<{ old: string; sid: string }> = [];
  /**
   * Per consuming cell: ids left to use, and the sum of its rates in the last round (it may run in more than
   * one group), to size the next top-up; `next`: that sum for the round under way.
   */
  queues = new Map<CellName, { ids: string[]; rate: number; next: number }>(CONSUMING.map((c) => [c, { ids: [], rate: 6_000, next: 0 }]));

  private constructor(
    readonly both: OpenStore,
    readonly first: OpenStore,
    readonly forced: OpenStore,
    /** rotationGrace 0: the ids it rotates away from are past their grace at once. */
    readonly reuse: OpenStore,
    readonly floor: OpenStore,
    readonly pools: pg.Pool[],
    readonly rewritten: () => number,
  ) {}

  static async open(schema: string): Promise<Bench> {
    const pools = [0, 1].map(() => new pg.Pool({ connectionString: DATABASE_URL, max: POOL_SIZE }));
    wrapLookups(pools[0]!, false);
    const { rewritten } = wrapLookups(pools[1]!, true);
    const options = { rotationGrace: LONG_GRACE };
    const both = await openStore("connect-drizzle", { schema, pool: pools[0], options });
    const first = await openStore("connect-drizzle", { schema, pool: pools[1], options });
    const forced = await openStore("connect-drizzle", { schema, pool: pools[0], options, touchAfter: 0 });
    const reuse = await openStore("connect-drizzle", { schema, pool: pools[0], options: { rotationGrace: 0 } });
    const floor = await openStore("raw-pg", { schema });
    return new Bench(both, first, forced, reuse, floor, pools, rewritten);
  }

  /** The sessions the gets read; checks that each store sees what it should. */
  async seed(): Promise<void> {
    const next = idMaker("rot-seed");
    await batched(SESSIONS, async () => {
      const sid = next();
      await this.both.ops.set(sid, sessionData());
      await this.floor.ops.set(sid, sessionData());
      const data = await this.both.ops.get(sid);
      this.never.push({ sid, session: this.both.store.createSession({ sessionID: sid } as any, data as SessionData) as any });
      const old = next();
      await this.both.ops.set(old, sessionData());
      const sid2 = next();
      if (!(await rotate(this.both, old, sid2))) throw new Error(`rotation bench: ${old} was not rotated`);
      this.rotated.push({ old, sid: sid2 });
    });
    const { old } = this.rotated[0]!;
    if (!(await this.both.ops.get(old))) throw new Error("rotation bench: an old id within its grace window opened nothing");
    if (await this.first.ops.get(old)) throw new Error("rotation bench: the first-branch store opened an old id (its lookups were not rewritten)");
    if (!(await this.first.ops.get(this.never[0]!.sid))) throw new Error("rotation bench: the first-branch store did not find a session");
  }

  /** Sessions for the consuming cells of a round: 1.5× what each did in its last cell, made untimed, 32 at a time. */
  async topUp(): Promise<void> {
    for (const [cell, q] of this.queues) {
      const want = Math.ceil((q.rate * CELL_MS * 1.5) / 1000) + 200;
      const next = idMaker(`rot-${cell}`);
      const made: string[] = [];
      await batched(Math.max(0, want - q.ids.length), async () => {
        const sid = next();
        await this.both.ops.set(sid, sessionData());
        if (cell !== "reuse") return void made.push(sid);
        // Rotated by the store with no grace: its old id is past the window at once.
        const sid2 = next();
        if (!(await rotate(this.reuse, sid, sid2))) throw new Error(`rotation bench: ${sid} was not rotated`);
        made.push(sid);
      });
      q.ids.push(...made);
    }
  }

  operation(cell: CellName): Op {
    const take = (c: CellName) => this.queues.get(c)!.ids.pop();
    const newId = idMaker("rot-new");
    switch (cell) {
      case "hit":
        return () => this.both.ops.get(this.pick(this.never).sid);
      case "hit-first":
        return () => this.first.ops.get(this.pick(this.never).sid);
      case "miss":
      case "miss-first":
      case "miss-floor": {
        const store = cell === "miss" ? this.both : cell === "miss-first" ? this.first : this.floor;
        const missId = idMaker("rot-miss");
        return () => store.ops.get(missId());
      }
      case "hit-rotated":
        return () => this.both.ops.get(this.pick(this.rotated).sid);
      case "old-in-grace":
        return () => this.both.ops.get(this.pick(this.rotated).old);
      case "rotate":
        return () => {
          const sid = take(cell);
          return sid === undefined ? false : rotate(this.both, sid, newId()).then((done) => void (done || fail(`${sid} was not rotated`)));
        };
      case "touch-forced":
        return () => {
          const { sid, session } = this.pick(this.never);
          session.touch();
          return this.forced.ops.touch(sid, session);
        };
      case "reuse":
        return () => {
          const sid = take(cell);
          return sid === undefined
            ? false
            : this.reuse.ops.get(sid).then(
                () => fail(`${sid}: a reused id opened or found nothing instead of SESSION_REUSED`),
                (error) => void ((error as { code?: string }).code === "SESSION_REUSED" || fail(String(error))),
              );
        };
      case "destroy":
        return () => {
          const sid = take(cell);
          return sid === undefined ? false : this.both.ops.destroy(sid);
        };
    }
  }

  async close(): Promise<void> {
    for (const s of [this.reuse, this.forced, this.first, this.both, this.floor]) await s.close().catch(() => {});
    for (const pool of this.pools) await pool.end().catch(() => {});
  }
}

const fail = (message: string): never => {
  throw new Error(`rotation bench: ${message}`);
};

/** `store.rotate` (the store-level API: no request, no rotation hook). */
function rotate(store: OpenStore, sid: string, newSid: string): Promise<boolean> {
  return (store.store as unknown as SessionStore).rotate(sid, newSid);
}

/** `n` calls of `fn`, 32 at a time. */
async function batched(n: number, fn: () => Promise<void>): Promise<void> {
  for (let i = 0; i < n; i += 32) await Promise.all(Array.from({ length: Math.min(32, n - i) }, fn));
}

/** Every group, ROUNDS times, its cells in turn forward then backward; the sessions used up are made before each round. */
export async function benchRotation(schema: string, log: (line: string) => void): Promise<RotationResult> {
  const bench = await Bench.open(schema);
  const ops = new Map<string, number[]>();
  const ranOut: string[] = [];
  const tableRows: [number, number] = [0, 0];
  const count = async () => Number((await bench.pools[0]!.query(`select count(*) as n from "${schema}"."sessions"`)).rows[0].n);
  try {
    await bench.seed();
    for (let round = 0; round < ROUNDS; round++) {
      await bench.topUp();
      if (round === 0) tableRows[0] = await count();
      for (const [g, group] of GROUPS.entries()) {
        const order = round % 2 ? [...group.cells].reverse() : group.cells;
        const line: string[] = [];
        for (const cell of order) {
          const consuming = CONSUMING.includes(cell);
          const r = await runCell(bench.operation(cell), group.concurrency, CELL_MS, consuming ? 0 : 100);
          if (r.errors) fail(`${r.errors} errors in ${CELL_LABELS[cell]} (c${group.concurrency})`);
          if (consuming) {
            const q = bench.queues.get(cell)!;
            q.next += r.opsPerSec;
            if (q.ids.length === 0) ranOut.push(`${CELL_LABELS[cell]} c${group.concurrency} round ${round + 1}`);
          }
          const key = `${g}:${cell}`;
          ops.set(key, [...(ops.get(key) ?? []), r.opsPerSec]);
          line.push(`${CELL_LABELS[cell]} ${fmtInt(r.opsPerSec)}`);
        }
        log(`  round ${round + 1} c=${group.concurrency}: ${line.join("  |  ")} ops/s`);
      }
      for (const q of bench.queues.values()) [q.rate, q.next] = [q.next, 0];
    }
    tableRows[1] = await count();
  } finally {
    await bench.close();
  }
  const rows = GROUPS.flatMap((group, g) =>
    group.rows.map((spec): RotationRow => {
      const a = ops.get(`${g}:${spec.a}`)!;
      const b = ops.get(`${g}:${spec.b}`)!;
      return { ...spec, concurrency: group.concurrency, a, b, ratios: a.map((x, i) => x / b[i]!), labels: [CELL_LABELS[spec.a], CELL_LABELS[spec.b]] };
    }),
  );
  return { rows, rewritten: bench.rewritten(), tableRows, ranOut };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** The medians and ranges of a row, as results.json keeps them. */
export function rotationSummary(result: RotationResult) {
  return result.rows.map((r) => ({
    id: `${r.id}-c${r.concurrency}`,
    figure: `${r.figure} (c${r.concurrency})`,
    median: median(r.ratios),
    min: Math.min(...r.ratios),
    max: Math.max(...r.ratios),
    n: r.ratios.length,
  }));
}

/** The "Rotation and reuse detection" section of RESULTS.md. */
export function renderRotation(result: RotationResult, previous?: Array<{ id: string; median: number | null }>, prevTag = ""): string {
  const summary = rotationSummary(result);
  const rows = result.rows.map((r, i) => {
    const s = summary[i]!;
    const p = previous?.find((x) => x.id === s.id);
    return [
      r.figure,
      String(r.concurrency),
      `${fmtRatio(s.median)} (${fmtRatio(s.min)}–${fmtRatio(s.max)}, ${s.n} pairs)`,
      `${fmtInt(median(r.a))} / ${fmtInt(median(r.b))}`,
      p && p.median !== null ? `${fmtRatio(p.median)}${prevTag}` : "—",
    ];
  });
  return [
    "## Rotation and reuse detection",
    "",
    `Each figure is a ratio of two cells of this run (ops/s), decided on its median over ${ROUNDS} interleaved rounds of ${CELL_MS} ms cells (A B, then B A, ...; ` +
      "a group of three cells A B C, then C B A), no goal. connect-drizzle's defaults but `rotationGrace` (1 h, so that old ids stay within it for the whole run); " +
      `each store on a pg Pool of its own (max ${POOL_SIZE}), ${SESSIONS} sessions read. "First branch only": the same store, whose lookups its pool sends as their first ` +
      "branch (the lookup under the current key, as the store sent it before rotation), so that the ratio is the second branch's cost alone. " +
      'The floor: the raw-pg floor of the goal "get (miss) ÷ raw-pg floor". rotate: `store.rotate(id, newId)` of a session never rotated, against a touch of a store ' +
      "with `touchAfter: 0` (one UPDATE each at c1; at c32 touches are coalesced into shared statements, rotations are not). Reuse: a get of an id rotated away from by a store with `rotationGrace: 0` (so already past it), which ends the session " +
      "and fails with SESSION_REUSED, against a destroy of a live session. Rotate, reuse and destroy each use up a session, made (untimed) before each round; at c1, " +
      "gets are one statement each; at c32 most are coalesced (`key = any(...)`, whose second branch always runs).",
    "",
    table(["figure", "c", "this run (median, range, n)", "median ops/s (a / b)", "previous run"], rows, ["l", "r", "r", "r", "l"]),
    "",
    `Rows in the sessions table: ${fmtInt(result.tableRows[0])} when the first round started, ${fmtInt(result.tableRows[1])} after the last. ` +
      `Lookups sent as their first branch: ${fmtInt(result.rewritten)}.${result.ranOut.length ? ` Cells that ran out of sessions before their time (rate over the shorter time): ${result.ranOut.join("; ")}.` : ""}`,
  ].join("\n");
}
