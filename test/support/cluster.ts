import { execFile, spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePort } from "./pgbouncer.js";
import { processAlive, sqlOn, tailOf, until } from "./servers.js";

/**
 * Real PostgreSQL replication on loopback, for tests of read replicas and failover (`npm run test:ha`):
 * a primary and a hot standby made with Debian's postgresql-common (`pg_createcluster` 15, then
 * `pg_basebackup -R` from the primary into the standby's data directory). Both listen on 127.0.0.1 only,
 * on free ports, with trust authentication for local and loopback connections (replication included).
 *
 * The clusters are named `cdt<pid>_<n>p` (primary) and `cdt<pid>_<n>s` (standby), `<pid>` being this
 * process's: a later run drops those of a process that is gone (a crashed run), and a process 'exit'
 * handler drops this run's own if `teardown()` was never called. Data in /var/lib/postgresql/15/<name>,
 * configuration in /etc/postgresql/15/<name>, server log in /var/log/postgresql/postgresql-15-<name>.log
 * (its tail is in every error thrown here). Needs root (pg_createcluster for the postgres user,
 * `runuser -u postgres` for pg_basebackup); never touches any other cluster.
 */
export interface PgNode {
  /** The cluster's name (cluster.ts: `cdt<pid>_<n>p` / `s`) or the pg_auto_failover node's (autofailover.ts: `node1`, `node2`). */
  name: string;
  port: number;
  /** postgres://postgres@127.0.0.1:PORT/DB; `database` defaults to the one the setup was made for. */
  url(database?: string): string;
}

export interface Replicated {
  /**
   * The nodes keep their roles' names whatever happens: after `killPrimary()` and `promoteStandby()`,
   * `standby` is the node that accepts writes and `primary` is down.
   */
  primary: PgNode;
  standby: PgNode;
  /** The standby's application_name in the primary's pg_stat_replication: set in its primary_conninfo, equal to `standby.name`. */
  standbyName: string;
  /** Make the standby synchronous (synchronous_standby_names = '"<standbyName>"' on the primary, reload) or not (''), waiting until pg_stat_replication shows sync_state 'sync' / 'async'. */
  setSynchronous(on: boolean): Promise<void>;
  /** Pause / resume WAL replay on the standby (pg_wal_replay_pause()/resume()), waiting until it says paused / not paused: a lagging replica. */
  pauseReplay(): Promise<void>;
  resumeReplay(): Promise<void>;
  /** Wait until the standby has replayed everything the primary has written so far (bounded; 15 s by default). */
  caughtUp(timeoutMs?: number): Promise<void>;
  /** Stop the standby (fast) / start it again and wait until it streams (or, with the primary down, answers): a replica lost and back. */
  stopStandby(): Promise<void>;
  startStandby(): Promise<void>;
  /** Stop the primary immediately (-m immediate): a crashed primary. */
  killPrimary(): Promise<void>;
  /** Promote the standby (pg_ctlcluster promote) and wait until it accepts writes. */
  promoteStandby(): Promise<void>;
  /** Stop and drop both clusters (pg_dropcluster --stop), whatever state they are in; idempotent. */
  teardown(): Promise<void>;
}

/** The PostgreSQL major version the HA setups use (Debian 12's). */
export const PG_VERSION = "15";
export const PG_BIN = `/usr/lib/postgresql/${PG_VERSION}/bin`;

/** HA tests run only under vitest.ha.config.ts, which sets CONNECT_DRIZZLE_HA. */
export const haEnabled = process.env.CONNECT_DRIZZLE_HA === "1";

const NAME = /^cdt(\d+)_(\d+)[ps]$/;
let counter = 0;

/** Whether this machine can run `startReplicated` (root, pg_createcluster and pg_basebackup 15 present), and if not why: for skip messages. */
export function replicationAvailable(): { ok: true } | { ok: false; why: string } {
  if (process.platform !== "linux") return { ok: false, why: "needs Linux with Debian's postgresql-common" };
  if (process.getuid?.() !== 0) return { ok: false, why: "needs root (pg_createcluster, runuser -u postgres)" };
  for (const [path, pkg] of [
    ["/usr/bin/pg_createcluster", "postgresql-common"],
    ["/usr/bin/pg_ctlcluster", "postgresql-common"],
    [`${PG_BIN}/pg_ctl`, `postgresql-${PG_VERSION}`],
    [`${PG_BIN}/pg_basebackup`, `postgresql-${PG_VERSION}`],
  ] as const) {
    if (!existsSync(path)) return { ok: false, why: `needs ${path} (apt-get install ${pkg})` };
  }
  if (!runuser()) return { ok: false, why: "needs runuser (apt-get install util-linux)" };
  return { ok: true };
}

/** runuser (util-linux): /usr/sbin on Debian 12. */
function runuser(): string | undefined {
  return ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"].find((path) => existsSync(path));
}

export async function startReplicated(options: { database?: string; synchronous?: boolean } = {}): Promise<Replicated> {
  const available = replicationAvailable();
  if (!available.ok) throw new Error(`cannot start a replicated pair: ${available.why}`);
  await dropLeftoverClusters();
  const database = options.database ?? "sessions";
  const base = `cdt${process.pid}_${counter++}`;
  const primaryName = `${base}p`;
  const standbyName = `${base}s`;
  const primaryPort = await freeServerPort(55000);
  const standbyPort = await freeServerPort(primaryPort + 1, false);
  const primary = node(primaryName, primaryPort, database);
  const standby = node(standbyName, standbyPort, database);
  const logs = () => `${logTail(primaryName)}\n${logTail(standbyName)}`;

  let torn = false;
  let primaryDown = false;
  let promoted = false;
  const dropSync = () => {
    for (const name of [standbyName, primaryName]) {
      spawnSync("/usr/bin/pg_dropcluster", ["--stop", PG_VERSION, name], { stdio: "ignore", timeout: 30_000 });
    }
  };
  process.on("exit", dropSync);
  const teardown = async () => {
    if (torn) return;
    torn = true;
    for (const name of [standbyName, primaryName]) {
      if (clusterExists(name)) await run("/usr/bin/pg_dropcluster", ["--stop", PG_VERSION, name], 60_000).catch(() => {});
      // Stopping may have failed (a cluster half made): drop it again, now stopped or gone.
      if (clusterExists(name)) await run("/usr/bin/pg_dropcluster", [PG_VERSION, name], 30_000).catch(() => {});
    }
    process.off("exit", dropSync);
  };

  const streaming = () =>
    until(`${standbyName} to stream from ${primaryName}`, 30_000, logs, async () => {
      const rows = await sqlOn(primary.url("postgres"), "select state from pg_stat_replication where application_name = $1", [standbyName]);
      return rows[0]?.state === "streaming";
    });

  try {
    await createCluster(primaryName, primaryPort);
    await ctl(primaryName, "start");
    await until(`${primaryName} to accept connections`, 30_000, logs, async () => (await sqlOn(primary.url("postgres"), "select 1")).length === 1);
    await sqlOn(primary.url("postgres"), `create database ${quoteIdent(database)}`);

    await createCluster(standbyName, standbyPort);
    const dataDir = clusterInfo(standbyName)?.dataDir ?? `/var/lib/postgresql/${PG_VERSION}/${standbyName}`;
    // Replace the standby's fresh data directory with a base backup of the primary: -R writes standby.signal
    // and primary_conninfo, -C -S a physical slot so the primary keeps the WAL a stopped standby needs.
    // (Emptied, not removed: its parent /var/lib/postgresql/15 may not be the postgres user's to write.)
    for (const entry of readdirSync(dataDir)) rmSync(join(dataDir, entry), { recursive: true, force: true });
    await run(
      runuser()!,
      [
        ...["-u", "postgres", "--", `${PG_BIN}/pg_basebackup`],
        ...["-h", "127.0.0.1", "-p", String(primaryPort), "-U", "postgres", "-D", dataDir],
        ...["-R", "-X", "stream", "-C", "-S", standbyName, "--checkpoint=fast", "--no-sync"],
      ],
      60_000,
    );
    // pg_basebackup -R names no application_name (the walreceiver would then report cluster_name, "15/<name>"):
    // set it, so that pg_stat_replication and synchronous_standby_names know the standby as `standbyName`.
    const autoConf = `${dataDir}/postgresql.auto.conf`;
    const kept = readFileSync(autoConf, "utf8")
      .split("\n")
      .filter((line) => line.trim() !== "" && !/^\s*primary_conninfo\s*=/.test(line));
    const conninfo = `host=127.0.0.1 port=${primaryPort} user=postgres application_name=${standbyName}`;
    writeFileSync(autoConf, `${[...kept, `primary_conninfo = '${conninfo}'`].join("\n")}\n`);
    await ctl(standbyName, "start");
    await streaming();
  } catch (error) {
    await teardown();
    throw error;
  }

  const replicated: Replicated = {
    primary,
    standby,
    standbyName,
    async setSynchronous(on) {
      const value = on ? `"${standbyName}"` : "";
      await sqlOn(primary.url("postgres"), `alter system set synchronous_standby_names = ${quoteLiteral(value)}`);
      await sqlOn(primary.url("postgres"), "select pg_reload_conf()");
      const want = on ? "sync" : "async";
      await until(`pg_stat_replication on ${primaryName} to show ${standbyName} as ${want}`, 15_000, logs, async () => {
        const rows = await sqlOn(primary.url("postgres"), "select sync_state from pg_stat_replication where application_name = $1", [standbyName]);
        return rows[0]?.sync_state === want;
      });
    },
    async pauseReplay() {
      await sqlOn(standby.url("postgres"), "select pg_wal_replay_pause()");
      await until(`replay on ${standbyName} to pause`, 10_000, logs, async () => {
        const rows = await sqlOn(standby.url("postgres"), "select pg_get_wal_replay_pause_state() as state");
        return rows[0]?.state === "paused";
      });
    },
    async resumeReplay() {
      await sqlOn(standby.url("postgres"), "select pg_wal_replay_resume()");
      await until(`replay on ${standbyName} to resume`, 10_000, logs, async () => {
        const rows = await sqlOn(standby.url("postgres"), "select pg_get_wal_replay_pause_state() as state");
        return rows[0]?.state === "not paused";
      });
    },
    async caughtUp(timeoutMs = 15_000) {
      const [row] = await sqlOn(primary.url("postgres"), "select pg_current_wal_lsn()::text as lsn");
      const lsn = row!.lsn as string;
      await until(`${standbyName} to replay up to ${primaryName}'s ${lsn}`, timeoutMs, logs, async () => {
        const rows = await sqlOn(standby.url("postgres"), "select coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) as done", [lsn]);
        return rows[0]?.done === true;
      });
    },
    async stopStandby() {
      await ctl(standbyName, "stop", ["-m", "fast"]);
    },
    async startStandby() {
      await ctl(standbyName, "start");
      await until(`${standbyName} to accept connections`, 30_000, logs, async () => (await sqlOn(standby.url("postgres"), "select 1")).length === 1);
      if (!primaryDown && !promoted) await streaming();
    },
    async killPrimary() {
      await ctl(primaryName, "stop", ["-m", "immediate"]);
      primaryDown = true;
    },
    async promoteStandby() {
      await ctl(standbyName, "promote");
      promoted = true;
      await until(`${standbyName} to accept writes after promotion`, 30_000, logs, async () => {
        const [state] = await sqlOn(standby.url("postgres"), "select pg_is_in_recovery() as standby");
        if (state?.standby !== false) return false;
        await sqlOn(standby.url("postgres"), "create table if not exists cd_ha_probe (at timestamptz); insert into cd_ha_probe values (now())");
        return true;
      });
    },
    teardown,
  };
  if (options.synchronous) {
    try {
      await replicated.setSynchronous(true);
    } catch (error) {
      await teardown();
      throw error;
    }
  }
  return replicated;
}

const givenPorts = new Set<number>();

/**
 * A free loopback port for a new server: free on 127.0.0.1 (test/support/pgbouncer.ts freePort), no
 * PostgreSQL socket lock on it in /var/run/postgresql (a server on the socket only), no cluster configured
 * on it, and not given out before in this process. Runs on one machine at the same time (another HA run,
 * someone's `vitest run` of one file) start from different places: `from` plus a spread by pid (unless
 * `spread` is false: the next port after one just taken).
 */
export async function freeServerPort(from: number, spread = true): Promise<number> {
  const taken = new Set(clusters().map((c) => c.port));
  let start = spread ? from + (process.pid % 200) * 5 : from;
  for (let tries = 0; tries < 20; tries++) {
    const port = await freePort(start);
    if (!givenPorts.has(port) && !taken.has(port) && !existsSync(`/var/run/postgresql/.s.PGSQL.${port}.lock`)) {
      givenPorts.add(port);
      return port;
    }
    start = port + 1;
  }
  throw new Error(`no free port for a server from ${from}`);
}

function node(name: string, port: number, database: string): PgNode {
  return { name, port, url: (db = database) => `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(db)}` };
}

/** Creates a stopped cluster: loopback only, trust, replication settings; never started by the init system. */
async function createCluster(name: string, port: number): Promise<void> {
  await run("/usr/bin/pg_createcluster", [PG_VERSION, name, "-p", String(port), "--start-conf=manual", "-q", "--", "--auth=trust", "--no-sync"], 60_000);
  const conf = `/etc/postgresql/${PG_VERSION}/${name}`;
  writeFileSync(
    `${conf}/pg_hba.conf`,
    [
      "# connect-drizzle HA tests: trust on the socket and loopback only",
      "local all all trust",
      "local replication all trust",
      "host all all 127.0.0.1/32 trust",
      "host replication all 127.0.0.1/32 trust",
      "",
    ].join("\n"),
  );
  // conf.d is included at the end of Debian's postgresql.conf, so these win over its defaults.
  writeFileSync(
    `${conf}/conf.d/connect-drizzle-ha.conf`,
    [
      "listen_addresses = '127.0.0.1'",
      "wal_level = replica",
      "hot_standby = on",
      "hot_standby_feedback = on",
      "max_wal_senders = 10",
      "max_replication_slots = 10",
      "wal_receiver_status_interval = 1s",
      "shared_buffers = 32MB",
      "max_connections = 100",
      // Throwaway clusters: a crash here is a killed process, never a lost OS page cache.
      "fsync = off",
      "",
    ].join("\n"),
  );
}

function ctl(name: string, action: "start" | "stop" | "promote", extra: string[] = []): Promise<string> {
  return run("/usr/bin/pg_ctlcluster", ["--skip-systemctl-redirect", PG_VERSION, name, action, ...extra], 90_000).catch((error: Error) => {
    throw new Error(`${error.message}\n${logTail(name)}`);
  });
}

interface ClusterInfo {
  name: string;
  port: number;
  status: string;
  dataDir: string;
  logFile: string;
}

function clusters(): ClusterInfo[] {
  const out = spawnSync("/usr/bin/pg_lsclusters", ["--no-header"], { encoding: "utf8", timeout: 15_000 }).stdout ?? "";
  return out
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => cols[0] === PG_VERSION && cols.length >= 6)
    .map((cols) => ({ name: cols[1]!, port: Number(cols[2]), status: cols[3]!, dataDir: cols[5]!, logFile: cols[6] ?? "" }));
}

const clusterInfo = (name: string) => clusters().find((c) => c.name === name);
const clusterExists = (name: string) => existsSync(`/etc/postgresql/${PG_VERSION}/${name}`) || clusterInfo(name) !== undefined;

/** Drops the clusters of earlier runs that crashed: named like ours, their process gone. */
async function dropLeftoverClusters(): Promise<void> {
  for (const cluster of clusters()) {
    const match = NAME.exec(cluster.name);
    if (!match || processAlive(Number(match[1]))) continue;
    await run("/usr/bin/pg_dropcluster", ["--stop", PG_VERSION, cluster.name], 60_000).catch(() => {});
  }
}

/** The last lines of a cluster's server log, for error messages. */
function logTail(name: string, lines = 30): string {
  const file = clusterInfo(name)?.logFile || `/var/log/postgresql/postgresql-${PG_VERSION}-${name}.log`;
  return tailOf(file, `server log of ${name}`, lines);
}

/** Runs a command (bounded: killed after `timeoutMs`); rejects with its output when it fails. */
function run(command: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: timeoutMs, killSignal: "SIGKILL", encoding: "utf8" }, (error, stdout, stderr) => {
      if (error)
        reject(new Error(`${command} ${args.join(" ")} failed (${error.killed ? `killed after ${timeoutMs} ms` : `exit ${error.code}`}):\n${stdout}${stderr}`));
      else resolve(stdout);
    });
  });
}

const quoteIdent = (name: string) => `"${name.replaceAll('"', '""')}"`;
const quoteLiteral = (value: string) => `'${value.replaceAll("'", "''")}'`;
