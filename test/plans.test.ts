import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionStore } from "../src/index.js";
import { DATABASE_URL, openDb, sessionData, type TestDb } from "./support/db.js";

/*
 * How the database runs the store's statements, whatever it knows of the table. node-postgres keeps a
 * prepared statement's plan on its connection, and the database may make that plan once, generic, while
 * the table is small or never analyzed (autovacuum off, or not yet run), and keep it until the next
 * ANALYZE. Each statement here is planned that way (`plan_cache_mode = force_generic_plan`) on a table
 * of a few hundred rows never analyzed, then again after ANALYZE.
 */

/** A statement as the store sent it: its text and values. */
interface Sent {
  text: string;
  values: unknown[];
}

/** `value` as an SQL literal, for EXECUTE of a prepared statement. */
function literal(value: unknown): string {
  if (value === null || value === undefined) return "null";
  const text = typeof value === "object" ? JSON.stringify(value) : String(value);
  return `'${text.replaceAll("'", "''")}'`;
}

/** Every plan node of an EXPLAIN (FORMAT JSON), depth first. */
function nodes(plan: any): any[] {
  return [plan, ...(plan.Plans ?? []).flatMap(nodes)];
}

describe.skipIf(!DATABASE_URL)("the plans of the store's statements (needs DATABASE_URL: plans of a real Postgres)", () => {
  let t: TestDb;
  let client: pg.Client;
  const sent: Sent[] = [];

  beforeAll(async () => {
    t = await openDb("node-postgres");
    const pool = (t.db as any).$client as pg.Pool;
    const query = pool.query.bind(pool) as (...args: any[]) => any;
    pool.query = ((config: any, ...rest: any[]) => {
      if (typeof config === "object" && config.text) sent.push({ text: config.text, values: config.values ?? [] });
      return query(config, ...rest);
    }) as typeof pool.query;
    client = new pg.Client({ connectionString: DATABASE_URL });
    await client.connect();
    await client.query(`set search_path to "${t.schema}"`);
  });
  afterAll(async () => {
    await client?.end();
    await t?.close();
  });

  /** The generic plan of `statement` as the table is now: its nodes. */
  async function genericPlan({ text, values }: Sent): Promise<any[]> {
    await client.query("deallocate all");
    await client.query("set plan_cache_mode = force_generic_plan");
    await client.query(`prepare p as ${text}`);
    const result = await client.query(`explain (format json) execute p(${values.map(literal).join(", ")})`);
    return nodes(result.rows[0]["QUERY PLAN"][0].Plan);
  }

  const call = <T>(fn: (cb: (err: unknown, value?: T) => void) => void) =>
    new Promise<T | undefined>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));

  /** A store on the table, for `use`, closed after it. */
  async function withStore<T>(use: (store: SessionStore) => Promise<T>): Promise<T> {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, rotationGrace: 3_600_000 });
    try {
      return await use(store);
    } finally {
      await store.close();
    }
  }

  /** Sessions made through `store` (half of them rotated), and every statement a workload of it sends. */
  async function workload(store: SessionStore): Promise<Sent[]> {
    await store.clear();
    for (let i = 0; i < 300; i++) {
      await call<void>((cb) => store.set(`plan-${i}`, sessionData(3_600_000, { userId: `user-${i % 7}` }), cb));
      if (i % 2) expect(await store.rotate(`plan-${i}`, `plan-${i}-new`)).toBe(true);
    }
    sent.length = 0;
    // One lookup at a time (get), several at once (coalesced), of live, rotated-away and unknown ids.
    for (const id of ["plan-0", "plan-1", "plan-1-new", "unknown"]) await call((cb) => store.get(id, cb));
    await Promise.all(["plan-2", "plan-3", "plan-5-new", "unknown-2"].map((id) => call((cb) => store.get(id, cb))));
    const held = (await call<any>((cb) => store.get("plan-4", cb)))!;
    await call<void>((cb) => store.touch("plan-4", held, cb));
    await call<void>((cb) => store.set("plan-4", { ...held, cart: ["a"] }, cb));
    await call<void>((cb) => store.destroy("plan-7", cb));
    await call<void>((cb) => store.destroy("plan-9", cb));
    await store.markAuthenticated("plan-6");
    await store.list({ userId: "user-3" });
    await store.handleOf("plan-11");
    return [...sent];
  }

  it("no lookup or write of a session by its id walks the expiry index, whatever the table's statistics; an old id is found through its own index", async () => {
    const statements = await withStore(workload);
    const lookups = statements.filter((s) => /^\s*select\b/i.test(s.text) && s.text.includes("?|"));
    expect(lookups.length).toBeGreaterThan(0);
    for (const stage of ["never analyzed", "analyzed"]) {
      if (stage === "analyzed") await client.query("analyze sessions");
      for (const statement of statements) {
        const plan = await genericPlan(statement);
        const indexes = plan.map((n) => n["Index Name"]).filter(Boolean);
        expect(indexes, `${stage}: ${statement.text.slice(0, 200)}`).not.toContain("sessions_expires_idx");
      }
      for (const statement of lookups) {
        const plan = await genericPlan(statement);
        expect(
          plan.some((n) => n["Index Name"] === "sessions_previous_keys_idx"),
          `${stage}: ${statement.text.slice(0, 200)}`,
        ).toBe(true);
      }
    }
  });

  it("a lookup of an unknown id reads a few pages of the old-id index, however often rotated sessions changed since the last VACUUM", async () => {
    const unknown = await withStore(async (store) => {
      await workload(store);
      // Every change of a rotated session's row (a touch, a save) enters the old-id index again.
      for (let i = 0; i < 20; i++) await t.raw("update $table set expires_at = expires_at + interval '1 millisecond' where previous_keys is not null");
      sent.length = 0;
      expect(await call((cb) => store.get("an-unknown-id", cb))).toBeFalsy();
      return sent.find((s) => s.text.includes("?|"));
    });
    expect(unknown).toBeDefined();
    await client.query("set plan_cache_mode = auto");
    await client.query("deallocate all");
    await client.query(`prepare q as ${unknown!.text}`);
    const result = await client.query(`explain (analyze, buffers, format json) execute q(${unknown!.values.map(literal).join(", ")})`);
    const scans = nodes(result.rows[0]["QUERY PLAN"][0].Plan).filter((n) => n["Index Name"] === "sessions_previous_keys_idx");
    expect(scans.length).toBe(1);
    expect(scans[0]["Actual Rows"]).toBe(0);
    expect(scans[0]["Shared Hit Blocks"] + scans[0]["Shared Read Blocks"]).toBeLessThan(10);
  });
});
