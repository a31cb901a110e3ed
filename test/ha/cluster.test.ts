import { execFileSync } from "node:child_process";
import pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { haEnabled, replicationAvailable, startReplicated, type Replicated } from "../support/cluster.js";

const available = replicationAvailable();
const skip = !haEnabled ? "runs under npm run test:ha" : available.ok ? undefined : available.why;

/**
 * The replication test infrastructure itself (test/support/cluster.ts): a primary and a hot standby made
 * with pg_createcluster and pg_basebackup -R, lagging, synchronous, lost and back, promoted. Writes with
 * node-postgres on the primary, reads with postgres.js on the standby, as an app with a read replica would.
 */
describe.skipIf(skip !== undefined)(`a primary and a hot standby (pg_createcluster 15 + pg_basebackup -R)${skip ? `: ${skip}` : ""}`, () => {
  let r: Replicated;
  let primary: pg.Pool;
  let replica: postgres.Sql;
  const count = async () => Number((await replica`select count(*)::int as n from items`)[0]!.n);

  beforeAll(async () => {
    const started = Date.now();
    r = await startReplicated({ database: "sessions" });
    console.log(`[ha] primary ${r.primary.name} :${r.primary.port}, standby ${r.standby.name} :${r.standby.port} up in ${Date.now() - started} ms`);
    primary = new pg.Pool({ connectionString: r.primary.url(), max: 2, connectionTimeoutMillis: 3_000 });
    primary.on("error", () => {});
    replica = postgres(r.standby.url(), { max: 2, connect_timeout: 3, onnotice: () => {} });
    await primary.query("create table items (id int primary key, label text not null)");
  });

  afterAll(async () => {
    await primary?.end().catch(() => {});
    await replica?.end({ timeout: 2 }).catch(() => {});
    await r?.teardown();
  });

  it("streams to the standby under its known application_name; the standby is read-only; a row written on the primary is read there after caughtUp", async () => {
    const { rows } = await primary.query("select application_name, state, sync_state from pg_stat_replication");
    expect(rows).toEqual([{ application_name: r.standbyName, state: "streaming", sync_state: "async" }]);
    expect(r.standbyName).toBe(r.standby.name);
    expect((await replica`select pg_is_in_recovery() as standby`)[0]!.standby).toBe(true);
    await expect(replica`insert into items values (0, 'nope')`).rejects.toThrow(/read-only transaction/);

    await primary.query("insert into items values (1, 'one')");
    await r.caughtUp();
    expect(await replica`select id, label from items`).toEqual([{ id: 1, label: "one" }]);
  });

  it("with replay paused, a new row is not on the standby, however long one waits; resumed, it arrives", async () => {
    await r.pauseReplay();
    await primary.query("insert into items values (2, 'two')");
    await expect(r.caughtUp(1_000)).rejects.toThrow(/timed out after 1000 ms waiting for .* to replay up to/);
    expect(await count()).toBe(1);
    await r.resumeReplay();
    await r.caughtUp();
    expect(await count()).toBe(2);
  });

  it("setSynchronous(true) makes the standby sync (a commit then is on the standby when it returns); false makes it async again", async () => {
    await r.setSynchronous(true);
    expect((await primary.query("show synchronous_standby_names")).rows[0].synchronous_standby_names).toBe(`"${r.standbyName}"`);
    expect((await primary.query("select sync_state from pg_stat_replication")).rows).toEqual([{ sync_state: "sync" }]);
    await primary.query("insert into items values (3, 'three')");
    // synchronous_commit = on waits for the standby's flush, not its replay: caughtUp still decides visibility.
    await r.caughtUp();
    expect(await count()).toBe(3);
    await r.setSynchronous(false);
    expect((await primary.query("select sync_state from pg_stat_replication")).rows).toEqual([{ sync_state: "async" }]);
  });

  it("a stopped standby refuses connections while the primary takes writes; started again, it streams and catches up", async () => {
    await r.stopStandby();
    const probe = new pg.Client({ connectionString: r.standby.url(), connectionTimeoutMillis: 2_000 });
    probe.on("error", () => {});
    await expect(probe.connect()).rejects.toThrow(/ECONNREFUSED/);
    await probe.end().catch(() => {});
    expect((await primary.query("select count(*)::int as n from pg_stat_replication")).rows[0].n).toBe(0);
    await primary.query("insert into items values (4, 'four')");

    await r.startStandby();
    expect((await primary.query("select application_name, state from pg_stat_replication")).rows).toEqual([
      { application_name: r.standbyName, state: "streaming" },
    ]);
    await r.caughtUp();
    expect(await count()).toBe(4);
  });

  it("killPrimary, then promoteStandby: the standby takes writes with every row it had, and the primary is gone", async () => {
    await r.caughtUp();
    await r.killPrimary();
    await expect(primary.query("select 1")).rejects.toThrow();
    await r.promoteStandby();
    expect((await replica`select pg_is_in_recovery() as standby`)[0]!.standby).toBe(false);
    await replica`insert into items values (5, 'five')`;
    expect((await replica`select id from items order by id`).map((row) => row.id)).toEqual([1, 2, 3, 4, 5]);
  });

  it("teardown drops both clusters and can be called again", async () => {
    await replica.end({ timeout: 2 });
    await r.teardown();
    await r.teardown();
    const listed = execFileSync("/usr/bin/pg_lsclusters", ["--no-header"], { encoding: "utf8" });
    expect(listed).not.toContain(r.primary.name);
    expect(listed).not.toContain(r.standby.name);
  });
});
