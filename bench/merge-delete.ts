/**
 * What a merged save that removes many keys costs as the session grows: for sessions of N top-level keys,
 * the time of a save that removes half of them (a merged save: only the removed names are sent) over the
 * time of a whole-session save of the same result (`merge: false`), median of interleaved pairs. Linear
 * removal keeps the ratio flat as N grows; jsonb's own `-` (every key against every name) made it grow
 * with N. Run: `npx tsx bench/merge-delete.ts` (about a minute; DATABASE_URL as for npm run bench).
 */
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { createSessionTable, SessionStore } from "../src/index.js";
import { migrationScript } from "../test/support/db.js";
import { DATABASE_URL } from "./support/config.js";

const SIZES = [2_500, 5_000, 10_000, 20_000, 40_000];
const PAIRS = Number(process.env.BENCH_PAIRS ?? 5);

const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 2 });
const schema = `bench_merge_${process.pid}_${Date.now().toString(36)}`;
await pool.query(`create schema "${schema}"; set search_path to "${schema}"; ${migrationScript()}; reset search_path;`);
const db = drizzle({ client: pool });
const table = createSessionTable("sessions", { schema });
const merged = new SessionStore({ db, table, reaper: false, timeout: 120_000 });
const whole = new SessionStore({ db, table, reaper: false, timeout: 120_000, merge: false });

/** Loads a fresh session of `size` keys through `store`, removes every other key, and times the save. */
async function timeSave(store: SessionStore, size: number, sid: string): Promise<number> {
  const data: Record<string, unknown> = { cookie: { originalMaxAge: 3_600_000, expires: new Date(Date.now() + 3_600_000).toISOString(), path: "/" } };
  for (let i = 0; i < size; i++) data[`k${i}`] = i;
  await store.set(sid, data as any);
  const loaded: any = await store.get(sid);
  for (let i = 0; i < size; i += 2) delete loaded[`k${i}`];
  const started = performance.now();
  await store.set(sid, loaded);
  return performance.now() - started;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;
const lines = ["| keys | merged save removing half (ms) | whole save (ms) | merged ÷ whole |", "| ---: | ---: | ---: | ---: |"];
try {
  for (const size of SIZES) {
    const ratios: number[] = [];
    const m: number[] = [];
    const w: number[] = [];
    for (let pair = 0; pair < PAIRS; pair++) {
      const a = await timeSave(merged, size, `m-${size}-${pair}`);
      const b = await timeSave(whole, size, `w-${size}-${pair}`);
      m.push(a);
      w.push(b);
      ratios.push(a / b);
    }
    lines.push(`| ${size} | ${median(m).toFixed(1)} | ${median(w).toFixed(1)} | ${median(ratios).toFixed(2)} |`);
    console.log(lines.at(-1));
  }
  console.log(`\n${lines.join("\n")}\n(median of ${PAIRS} interleaved pairs per size)`);
} finally {
  await pool.query(`drop schema "${schema}" cascade`);
  await Promise.all([merged.close(), whole.close()]);
  await pool.end();
}
