import pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { autoFailoverAvailable, startFormation, type Formation } from "../support/autofailover.js";
import { haEnabled } from "../support/cluster.js";
import { sqlOn } from "../support/servers.js";

const available = autoFailoverAvailable();
const skip = !haEnabled ? "runs under npm run test:ha" : available.ok ? undefined : available.why;

/** The ids writers insert, unique across writers. */
let lastId = 0;

/**
 * Writes, one every 20 ms through `sql`, each with the next id, until `stop()`: which ids were
 * acknowledged, when, and the errors in between (by SQLSTATE or message), for measuring a failover's write
 * outage and checking that no acknowledged write is lost.
 */
function writer(sql: postgres.Sql) {
  const acked: Array<{ id: number; at: number }> = [];
  const errors = new Map<string, number>();
  let running = true;
  const done = (async () => {
    while (running) {
      const next = ++lastId;
      try {
        await sql`insert into ticks (id) values (${next})`;
        acked.push({ id: next, at: Date.now() });
      } catch (error: any) {
        const key = error?.code ?? String(error?.message).slice(0, 60);
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  })();
  return {
    acked,
    errors,
    async stop() {
      running = false;
      await done;
    },
    /** The longest time between two acknowledged writes. */
    longestGap() {
      let gap = 0;
      for (let i = 1; i < acked.length; i++) gap = Math.max(gap, acked[i]!.at - acked[i - 1]!.at);
      return gap;
    },
  };
}

/**
 * The failover test infrastructure itself (test/support/autofailover.ts): a pg_auto_failover monitor and
 * two nodes replicating synchronously; an app on postgres.js with the multi-host URL keeps writing through
 * a planned switchover and a killed primary, and loses no acknowledged write.
 */
describe.skipIf(skip !== undefined)(`a pg_auto_failover formation (monitor + two nodes)${skip ? `: ${skip}` : ""}`, () => {
  let f: Formation;
  let sql: postgres.Sql;
  const serverPort = async () => Number((await sql`select inet_server_port() as port`)[0]!.port);

  beforeAll(async () => {
    const started = Date.now();
    f = await startFormation({ database: "sessions" });
    console.log(`[ha] formation ${f.nodes.map((n) => `${n.name} :${n.port}`).join(", ")} up in ${Date.now() - started} ms`);
    sql = postgres(f.multiHostUrl(), { max: 2, connect_timeout: 2, onnotice: () => {} });
    await sql`create table ticks (id int primary key, at timestamptz not null default clock_timestamp())`;
  });

  afterAll(async () => {
    await sql?.end({ timeout: 2 }).catch(() => {});
    await f?.teardown();
  });

  it("has one primary replicating synchronously (ANY 1) to a streaming secondary, and the test database on both", async () => {
    const primary = await f.primary();
    const secondary = f.nodes.find((n) => n !== primary)!;
    const [names] = await sqlOn(primary.url(), "show synchronous_standby_names");
    expect(names.synchronous_standby_names).toMatch(/^ANY 1 \(pgautofailover_standby_\d+\)$/);
    expect(await sqlOn(primary.url(), "select application_name, state, sync_state from pg_stat_replication")).toEqual([
      { application_name: expect.stringMatching(/^pgautofailover_standby_\d+$/), state: "streaming", sync_state: "quorum" },
    ]);
    expect(await sqlOn(secondary.url(), "select pg_is_in_recovery() as standby, current_database() as db")).toEqual([{ standby: true, db: "sessions" }]);
    // The multi-host URL lands on the primary whichever order the nodes are in.
    expect(await serverPort()).toBe(primary.port);
    // A pg client on one node: the monitor's view agrees.
    const monitor = new pg.Client({ connectionString: f.monitorUrl });
    await monitor.connect();
    try {
      const { rows } = await monitor.query("select nodename, reportedstate from pgautofailover.node order by nodename");
      expect(rows.map((row) => `${row.nodename}:${row.reportedstate}`).sort()).toEqual([`${primary.name}:primary`, `${secondary.name}:secondary`].sort());
    } finally {
      await monitor.end();
    }
  });

  it("writes through the multi-host URL go on through a switchover, to the new primary, losing none acknowledged", async () => {
    const before = await f.primary();
    const w = writer(sql);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const started = Date.now();
    await f.switchover();
    const tookMs = Date.now() - started;
    await new Promise((resolve) => setTimeout(resolve, 500));
    await w.stop();
    const after = await f.primary();
    console.log(
      `[ha] switchover ${before.name} -> ${after.name}: ${tookMs} ms until stable; longest write gap ${w.longestGap()} ms; ${w.acked.length} writes acknowledged, failed: ${JSON.stringify(Object.fromEntries(w.errors))}`,
    );
    expect(after.name).not.toBe(before.name);
    expect(w.longestGap()).toBeLessThan(30_000);
    await sql`insert into ticks (id) values (${-1})`;
    expect(await serverPort()).toBe(after.port);
    const stored = new Set((await sql`select id from ticks`).map((row) => row.id as number));
    expect(w.acked.filter((a) => !stored.has(a.id))).toEqual([]);
  });

  it("after killPrimary the other node is primary, writes through the multi-host URL work, none acknowledged is lost, and the old node is secondary again", async () => {
    const victim = await f.primary();
    const w = writer(sql);
    await new Promise((resolve) => setTimeout(resolve, 300));
    const timings = await f.killPrimary();
    await w.stop();
    const now = await f.primary();
    console.log(
      `[ha] killed ${victim.name}: ${now.name} took writes after ${timings.promotedAfterMs} ms, ${victim.name} rejoined after ${timings.rejoinedAfterMs} ms; longest write gap ${w.longestGap()} ms; failed: ${JSON.stringify(Object.fromEntries(w.errors))}`,
    );
    expect(now.name).not.toBe(victim.name);
    expect(timings.promotedAfterMs).toBeLessThan(30_000);
    await sql`insert into ticks (id) values (${-2})`;
    expect(await serverPort()).toBe(now.port);
    const stored = new Set((await sql`select id from ticks`).map((row) => row.id as number));
    expect(w.acked.filter((a) => !stored.has(a.id))).toEqual([]);
    expect(await sqlOn(victim.url(), "select pg_is_in_recovery() as standby")).toEqual([{ standby: true }]);
  });

  it("teardown stops everything and can be called again", async () => {
    await sql.end({ timeout: 2 });
    await f.teardown();
    await f.teardown();
    for (const url of [f.monitorUrl, ...f.nodes.map((n) => n.url())]) await expect(sqlOn(url, "select 1")).rejects.toThrow(/ECONNREFUSED/);
  });
});
