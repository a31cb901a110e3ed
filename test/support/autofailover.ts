import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { appendFileSync, chmodSync, chownSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freeServerPort, PG_BIN, PG_VERSION, type PgNode } from "./cluster.js";
import { processAlive, sqlOn, tailOf, until } from "./servers.js";

/**
 * A pg_auto_failover 2.0 formation on loopback, for failover tests (`npm run test:ha`): a monitor and two
 * Postgres 15 nodes (`node1`, `node2`), each run by its own `pg_autoctl run` keeper, a child process of
 * this one (in a process group of its own) started as the postgres user. Everything lives in a temp dir
 * (`cdaf-<pid>-…`, owned by postgres): the data directories, the keepers' logs (`<name>.log`) and
 * pg_autoctl's XDG config, data and runtime dirs, so nothing lands in the postgres user's home. A later
 * run cleans up after a process that is gone (a crashed run); a process 'exit' handler kills this run's
 * keepers and servers if `teardown()` was never called.
 *
 * Settings for quick failovers: the monitor health-checks every second and considers a node whose keeper
 * stopped reporting unhealthy after 3 s, and waits 3 s for a lost primary to demote itself
 * (`pgautofailover.*` in the monitor's postgresql.auto.conf). pg_autoctl sizes shared_buffers from the
 * machine's memory (6 GB on a 24 GB machine): overridden to 32 MB. The nodes replicate synchronously: with
 * both up, the primary's synchronous_standby_names is `ANY 1 (pgautofailover_standby_<node id>)`, and
 * the standby's application_name in pg_stat_replication is `pgautofailover_standby_<node id>`.
 */
export interface Formation {
  /** postgres://postgres@127.0.0.1:PORT/pg_auto_failover: the monitor's database, for pgautofailover.node and its functions. */
  monitorUrl: string;
  nodes: PgNode[];
  /**
   * postgres://postgres@127.0.0.1:P1,127.0.0.1:P2/DB?target_session_attrs=ATTRS — the multi-host URL
   * postgres.js takes (node-postgres takes one host only). `ATTRS` defaults to `primary`, not `read-write`:
   * postgres.js (3.4) decides `read-write` by the `default_transaction_read_only` the server reports, which
   * is `off` on a PostgreSQL 14+ hot standby, so with `read-write` it settles on a standby listed first
   * (pg_auto_failover issue #970). `primary` checks `in_hot_standby` and is right, except that for the
   * few seconds a new primary waits for the old one to demote (state `stop_replication`) it is already
   * out of recovery but still read-only: writes fail there until it is `wait_primary`.
   */
  multiHostUrl(database?: string, targetSessionAttrs?: "primary" | "read-write" | "any"): string;
  /** The node that is primary now, by the monitor (a node in state single, wait_primary or primary, assigned the same); waits through a failover (bounded). */
  primary(): Promise<PgNode>;
  /** Wait until the formation is stable: one primary, one secondary streaming, both in their goal state, synchronous_standby_names set (bounded; 60 s by default). */
  stable(timeoutMs?: number): Promise<void>;
  /** A planned switchover (pg_autoctl perform switchover), resolving when stable again. */
  switchover(): Promise<void>;
  /**
   * Kills the primary abruptly, as a dead machine: SIGKILL to its pg_autoctl keeper's process group (which
   * holds the keeper, its supervisor and the postmaster) and to the postmaster, so nothing restarts it.
   * Resolves when the other node accepts a write (`promotedAfterMs` after the kill), having restarted the
   * old node's keeper and waited until it rejoined as secondary and the formation is stable
   * (`rejoinedAfterMs` after the kill).
   */
  killPrimary(): Promise<{ promotedAfterMs: number; rejoinedAfterMs: number }>;
  /** Stops every keeper (and so every postgres), kills whatever is left, removes the temp dir; idempotent. */
  teardown(): Promise<void>;
}

const PG_AUTOCTL = "/usr/bin/pg_autoctl";
const PG_CTL = `${PG_BIN}/pg_ctl`;
const EXTENSION = `/usr/share/postgresql/${PG_VERSION}/extension/pgautofailover.control`;
const DIR = /^cdaf-(\d+)-/;
const PRIMARY_STATES = ["single", "wait_primary", "primary"];

/** Small servers: pg_autoctl's own tuning takes a quarter of the machine's memory for shared_buffers. */
const TUNING = ["shared_buffers = '32MB'", "work_mem = '4MB'", "maintenance_work_mem = '64MB'", "effective_cache_size = '1GB'", "fsync = off"];

/** The monitor's failure detection, tuned so that a killed primary fails over in seconds. */
const MONITOR_SETTINGS = [
  "pgautofailover.health_check_period = 1000",
  "pgautofailover.health_check_timeout = 2000",
  "pgautofailover.health_check_max_retries = 1",
  "pgautofailover.health_check_retry_delay = 500",
  "pgautofailover.node_considered_unhealthy_timeout = 3000",
  "pgautofailover.primary_demote_timeout = 3000",
  "pgautofailover.startup_grace_period = 2000",
];

/** Whether this machine can run `startFormation` (pg_autoctl, the 15 extension, root or the postgres user), and if not why: for skip messages. */
export function autoFailoverAvailable(): { ok: true } | { ok: false; why: string } {
  if (process.platform !== "linux") return { ok: false, why: "needs Linux with Debian's pg_auto_failover packages" };
  if (!existsSync(PG_AUTOCTL)) return { ok: false, why: `needs ${PG_AUTOCTL} (apt-get install pg-auto-failover-cli)` };
  if (!existsSync(EXTENSION)) return { ok: false, why: `needs the pgautofailover extension (apt-get install postgresql-${PG_VERSION}-auto-failover)` };
  if (!existsSync(PG_CTL)) return { ok: false, why: `needs ${PG_CTL} (apt-get install postgresql-${PG_VERSION})` };
  if (!postgresIds()) return { ok: false, why: "needs a postgres user" };
  if (process.getuid?.() !== 0 && process.getuid?.() !== postgresIds()!.uid)
    return { ok: false, why: "needs root or the postgres user (pg_autoctl refuses root)" };
  return { ok: true };
}

interface Keeper {
  name: string;
  child: ChildProcess;
  exited: Promise<void>;
  done: boolean;
}

export async function startFormation(options: { database?: string } = {}): Promise<Formation> {
  const available = autoFailoverAvailable();
  if (!available.ok) throw new Error(`cannot start a pg_auto_failover formation: ${available.why}`);
  cleanLeftovers();
  const database = options.database ?? "sessions";
  const ids = postgresIds()!;
  const asPostgres = process.getuid?.() === 0 ? ids : undefined;

  const monitorPort = await freeServerPort(57000);
  const ports = [await freeServerPort(monitorPort + 1, false)];
  ports.push(await freeServerPort(ports[0]! + 1, false));
  const dir = mkdtempSync(join(tmpdir(), `cdaf-${process.pid}-`));
  for (const sub of ["config", "data", "run"]) mkdirSync(join(dir, sub));
  for (const path of [dir, join(dir, "config"), join(dir, "data"), join(dir, "run")]) {
    if (asPostgres) chownSync(path, asPostgres.uid, asPostgres.gid);
    chmodSync(path, 0o700);
  }
  const env = {
    PATH: `${PG_BIN}:/usr/bin:/bin`,
    HOME: dir,
    LANG: "C.UTF-8",
    XDG_CONFIG_HOME: join(dir, "config"),
    XDG_DATA_HOME: join(dir, "data"),
    XDG_RUNTIME_DIR: join(dir, "run"),
  };
  const pgdata = (name: string) => join(dir, name);
  const logOf = (name: string) => join(dir, `${name}.log`);

  const nodes: PgNode[] = ports.map((port, i) => ({
    name: `node${i + 1}`,
    port,
    url: (db = database) => `postgres://postgres@127.0.0.1:${port}/${encodeURIComponent(db)}`,
  }));
  const monitorUrl = `postgres://postgres@127.0.0.1:${monitorPort}/pg_auto_failover`;
  const monitorForAutoctl = `postgres://autoctl_node@127.0.0.1:${monitorPort}/pg_auto_failover?sslmode=prefer`;

  const keepers = new Map<string, Keeper>();
  const logs = () =>
    ["monitor", ...nodes.map((n) => n.name)]
      .flatMap((name) => [tailOf(logOf(name), `pg_autoctl ${name}`, 25), tailOf(latestServerLog(pgdata(name)), `postgres ${name}`, 10)])
      .join("\n");

  const spawnAutoctl = (name: string, args: string[]): ChildProcess => {
    const fd = openSync(logOf(name), "a");
    try {
      return spawn(PG_AUTOCTL, args, {
        cwd: dir,
        env,
        ...(asPostgres ? { uid: asPostgres.uid, gid: asPostgres.gid } : {}),
        detached: true,
        stdio: ["ignore", fd, fd],
      });
    } finally {
      closeSync(fd);
    }
  };
  /** A pg_autoctl command that ends by itself (bounded); throws with the log tails if it fails. */
  const once = async (name: string, args: string[], timeoutMs: number): Promise<void> => {
    const child = spawnAutoctl(name, args);
    const code = await new Promise<number | string>((resolve) => {
      const timer = setTimeout(() => {
        killGroup(child.pid, "SIGKILL");
        resolve(`killed after ${timeoutMs} ms`);
      }, timeoutMs);
      child.once("error", (error) => (clearTimeout(timer), resolve(error.message)));
      child.once("exit", (code, signal) => (clearTimeout(timer), resolve(code ?? signal ?? "?")));
    });
    if (code !== 0) throw new Error(`pg_autoctl ${args.join(" ")} failed (${code})\n${logs()}`);
  };
  /** A long-running pg_autoctl (a keeper), logging to <name>.log. */
  const startKeeper = (name: string, args: string[]): Keeper => {
    const child = spawnAutoctl(name, args);
    child.unref();
    const keeper: Keeper = { name, child, done: false, exited: Promise.resolve() };
    keeper.exited = new Promise<void>((resolve) => {
      child.once("exit", () => ((keeper.done = true), resolve()));
      child.once("error", () => ((keeper.done = true), resolve()));
    });
    keepers.set(name, keeper);
    return keeper;
  };
  const stopKeeper = async (keeper: Keeper, timeoutMs: number) => {
    if (!keeper.done) {
      keeper.child.kill("SIGTERM");
      const stopped = await within(keeper.exited, timeoutMs);
      if (!stopped) killGroup(keeper.child.pid, "SIGKILL");
    }
    await within(keeper.exited, 2_000);
  };

  let torn = false;
  const killAllSync = () => {
    for (const keeper of keepers.values()) if (!keeper.done) killGroup(keeper.child.pid, "SIGKILL");
    for (const name of ["monitor", ...nodes.map((n) => n.name)]) killPostmaster(pgdata(name));
    rmSync(dir, { recursive: true, force: true });
  };
  process.on("exit", killAllSync);
  const teardown = async () => {
    if (torn) return;
    torn = true;
    const nodeKeepers = [...keepers.values()].filter((k) => k.name !== "monitor");
    await Promise.all(nodeKeepers.map((k) => stopKeeper(k, 20_000)));
    const monitor = keepers.get("monitor");
    if (monitor) await stopKeeper(monitor, 20_000);
    killAllSync();
    process.off("exit", killAllSync);
  };

  const nodeStates = async () =>
    (await sqlOn(monitorUrl, "select nodename, nodeport, reportedstate, goalstate from pgautofailover.node order by nodeid")) as Array<{
      nodename: string;
      nodeport: number;
      reportedstate: string;
      goalstate: string;
    }>;
  const stable = async (timeoutMs = 60_000) => {
    let seen = "";
    await until(
      "a stable formation (one primary, one secondary streaming, synchronous_standby_names set)",
      timeoutMs,
      () => `last seen: ${seen}\n${logs()}`,
      async () => {
        const states = await nodeStates();
        seen = states.map((n) => `${n.nodename} ${n.reportedstate}/${n.goalstate}`).join(", ");
        const primary = states.find((n) => n.reportedstate === "primary" && n.goalstate === "primary");
        const secondary = states.find((n) => n.reportedstate === "secondary" && n.goalstate === "secondary");
        if (states.length !== 2 || !primary || !secondary) return false;
        const [onPrimary] = await sqlOn(
          nodeNamed(primary.nodename).url("postgres"),
          "select current_setting('synchronous_standby_names') as names, (select count(*)::int from pg_stat_replication where state = 'streaming') as streaming",
        );
        seen += `; on ${primary.nodename}: synchronous_standby_names '${onPrimary?.names}', ${onPrimary?.streaming} streaming`;
        if (!onPrimary?.names || onPrimary.streaming < 1) return false;
        const [onSecondary] = await sqlOn(nodeNamed(secondary.nodename).url("postgres"), "select pg_is_in_recovery() as standby");
        return onSecondary?.standby === true;
      },
      200,
    );
  };
  const nodeNamed = (name: string): PgNode => {
    const found = nodes.find((n) => n.name === name);
    if (!found) throw new Error(`the monitor knows a node ${name} this formation did not make`);
    return found;
  };
  const primary = async (): Promise<PgNode> => {
    let found: PgNode | undefined;
    await until("the monitor to name a primary", 30_000, logs, async () => {
      const states = await nodeStates();
      const current = states.filter((n) => PRIMARY_STATES.includes(n.reportedstate) && n.goalstate === n.reportedstate);
      if (current.length !== 1) return false;
      found = nodeNamed(current[0]!.nodename);
      return true;
    });
    return found!;
  };
  /** A write in the node's postgres database: true once it commits there. */
  const acceptsWrite = async (node: PgNode) => {
    await sqlOn(node.url("postgres"), "create table if not exists cd_ha_probe (at timestamptz); insert into cd_ha_probe values (now())");
    return true;
  };
  const nodeArgs = (node: PgNode) => [
    ...["create", "postgres", "--pgdata", pgdata(node.name), "--pgport", String(node.port), "--pgctl", PG_CTL],
    ...["--listen", "127.0.0.1", "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl"],
    ...["--dbname", database, "--name", node.name, "--monitor", monitorForAutoctl],
  ];

  try {
    // The monitor: created, then made to listen on loopback only (pg_autoctl create monitor has no --listen
    // and starts its postgres with -h from its config, listen_addresses = *), sized down and tuned, then run.
    const monitorData = pgdata("monitor");
    const monitorArgs = ["--pgdata", monitorData, "--pgport", String(monitorPort), "--pgctl", PG_CTL, "--hostname", "127.0.0.1", "--auth", "trust", "--no-ssl"];
    await once("monitor", ["create", "monitor", ...monitorArgs], 90_000);
    await once("monitor", ["config", "set", "--pgdata", monitorData, "postgresql.listen_addresses", "127.0.0.1"], 30_000);
    appendFileSync(join(monitorData, "postgresql.auto.conf"), `${[...TUNING, ...MONITOR_SETTINGS].join("\n")}\n`);
    startKeeper("monitor", ["run", "--pgdata", monitorData]);
    await until("the monitor to answer", 30_000, logs, async () => (await sqlOn(monitorUrl, "select count(*) from pgautofailover.formation")).length === 1);

    // node1: initdb, registered as single, then sized down before its keeper runs it for good.
    const [node1, node2] = nodes as [PgNode, PgNode];
    await once(node1.name, nodeArgs(node1), 120_000);
    appendFileSync(join(pgdata(node1.name), "postgresql.auto.conf"), `${TUNING.join("\n")}\n`);
    startKeeper(node1.name, ["run", "--pgdata", pgdata(node1.name)]);
    await until(`${node1.name} to run as single`, 60_000, logs, async () => {
      const states = await nodeStates();
      return states.some((n) => n.nodename === node1.name && n.reportedstate === "single") && (await acceptsWrite(node1));
    });
    // node2: a base backup of node1 (its postgresql.auto.conf included), kept running by the same process.
    startKeeper(node2.name, [...nodeArgs(node2), "--run"]);
    await stable(90_000);
  } catch (error) {
    await teardown();
    throw error;
  }

  return {
    monitorUrl,
    nodes,
    multiHostUrl: (db = database, targetSessionAttrs = "primary") =>
      `postgres://postgres@${nodes.map((n) => `127.0.0.1:${n.port}`).join(",")}/${encodeURIComponent(db)}?target_session_attrs=${targetSessionAttrs}`,
    primary,
    stable,
    async switchover() {
      await once("monitor", ["perform", "switchover", "--monitor", monitorForAutoctl, "--formation", "default", "--group", "0", "--wait", "30"], 45_000);
      await stable(30_000);
    },
    async killPrimary() {
      const victim = await primary();
      const survivor = nodes.find((n) => n !== victim)!;
      const keeper = keepers.get(victim.name);
      const killedAt = Date.now();
      if (keeper && !keeper.done) killGroup(keeper.child.pid, "SIGKILL");
      killPostmaster(pgdata(victim.name));
      if (keeper) await within(keeper.exited, 5_000);
      await until(`${survivor.name} to accept writes after ${victim.name} died`, 30_000, logs, () => acceptsWrite(survivor), 100);
      const promotedAfterMs = Date.now() - killedAt;
      startKeeper(victim.name, ["run", "--pgdata", pgdata(victim.name)]);
      await stable(60_000);
      return { promotedAfterMs, rejoinedAfterMs: Date.now() - killedAt };
    },
    teardown,
  };
}

/** The postgres user's uid and gid. */
function postgresIds(): { uid: number; gid: number } | undefined {
  const uid = spawnSync("id", ["-u", "postgres"], { encoding: "utf8" });
  const gid = spawnSync("id", ["-g", "postgres"], { encoding: "utf8" });
  if (uid.status !== 0 || gid.status !== 0) return undefined;
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

function killGroup(pid: number | undefined, signal: NodeJS.Signals): void {
  if (pid === undefined) return;
  try {
    process.kill(-pid, signal);
  } catch {}
}

/** SIGKILLs the postmaster of a data directory, if its postmaster.pid names a live postgres of that directory. */
function killPostmaster(dataDir: string): void {
  const pid = Number(readText(join(dataDir, "postmaster.pid")).split("\n")[0]);
  if (!pid || !processAlive(pid) || !readText(`/proc/${pid}/cmdline`).includes(dataDir)) return;
  try {
    process.kill(pid, "SIGKILL");
  } catch {}
}

function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

/** The newest server log of a data directory (logging_collector writes log/postgresql-*.log). */
function latestServerLog(dataDir: string): string {
  const logDir = join(dataDir, "log");
  try {
    const newest = readdirSync(logDir)
      .filter((f) => f.endsWith(".log"))
      .sort()
      .at(-1);
    return newest ? join(logDir, newest) : logDir;
  } catch {
    return logDir;
  }
}

/** Kills what crashed runs left (keepers and servers whose command line names their temp dir) and removes the dir. */
function cleanLeftovers(): void {
  let entries: string[] = [];
  try {
    entries = readdirSync(tmpdir());
  } catch {}
  for (const entry of entries) {
    const match = DIR.exec(entry);
    if (!match || processAlive(Number(match[1]))) continue;
    const dir = join(tmpdir(), entry);
    for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
      if (readText(`/proc/${pid}/cmdline`).replaceAll("\0", " ").includes(dir)) {
        try {
          process.kill(Number(pid), "SIGKILL");
        } catch {}
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Whether `promise` settles within `ms` (its timer cleared either way, so it holds no process open). */
async function within(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), late]);
  } finally {
    clearTimeout(timer);
  }
}
