import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chmodSync, chownSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";

/**
 * A throwaway pgbouncer (Debian's /usr/sbin/pgbouncer) on a free loopback port, in transaction pooling
 * mode, in front of one database. Config, pid file and log live in a temp dir; `stop()` ends it.
 * pgbouncer refuses to run as root, so it is started with `-u postgres` when we are root.
 */
export interface Pgbouncer {
  port: number;
  /** Connection string of the pooled database, through pgbouncer. */
  url: string;
  /** "1.18.0" */
  version: string;
  log(): string;
  /**
   * Points the database at another server (`port` on the same host) and reloads (SIGHUP): what a failover
   * manager's hook does when a standby was promoted. New server connections go there.
   */
  retarget(port: number): void;
  stop(): Promise<void>;
}

export function pgbouncerBinary(): string | undefined {
  for (const candidate of ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"]) {
    const probe = spawnSync(candidate, ["--version"], { encoding: "utf8", timeout: 5_000 });
    if (probe.status === 0) return candidate;
  }
  return undefined;
}

export function pgbouncerVersion(binary: string): string {
  const out = spawnSync(binary, ["--version"], { encoding: "utf8", timeout: 5_000 }).stdout ?? "";
  return /PgBouncer (\d+\.\d+(?:\.\d+)?)/.exec(out)?.[1] ?? "unknown";
}

/** Whether pgbouncer keeps named prepared statements working in transaction mode (1.21 and later). */
export function supportsPreparedStatements(version: string): boolean {
  const [major = 0, minor = 0] = version.split(".").map(Number);
  return major > 1 || (major === 1 && minor >= 21);
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once("error", () => resolve(false));
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
  });
}

/** The first free loopback port from `from`, trying at most 50. */
export async function freePort(from: number): Promise<number> {
  for (let port = from; port < from + 50; port++) if (await portIsFree(port)) return port;
  throw new Error(`no free port in ${from}..${from + 49}`);
}

export async function startPgbouncer(options: {
  /** The server database pgbouncer forwards to. */
  host?: string;
  port?: number;
  dbname: string;
  user?: string;
  poolSize?: number;
  listenPort?: number;
  /** pgbouncer's `server_login_retry`, seconds: how long it waits after a failed server connection (its default, 15). */
  loginRetry?: number;
  /** `session` pooling (what LISTEN needs) instead of `transaction`. */
  poolMode?: "transaction" | "session";
}): Promise<Pgbouncer> {
  const binary = pgbouncerBinary();
  if (!binary) throw new Error("pgbouncer is not installed (apt-get install -y pgbouncer)");
  const version = pgbouncerVersion(binary);
  const user = options.user ?? "postgres";
  const port = await freePort(options.listenPort ?? 6439);
  const dir = mkdtempSync(join(tmpdir(), "pgbouncer-"));
  const config = join(dir, "pgbouncer.ini");
  const logfile = join(dir, "pgbouncer.log");
  writeFileSync(join(dir, "userlist.txt"), `"${user}" ""\n`);
  const target = (serverPort: number) => `${options.dbname} = host=${options.host ?? "127.0.0.1"} port=${serverPort} dbname=${options.dbname} user=${user}`;
  writeFileSync(
    config,
    [
      "[databases]",
      target(options.port ?? 5432),
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      "unix_socket_dir =",
      "auth_type = trust",
      `admin_users = ${user}`,
      `auth_file = ${join(dir, "userlist.txt")}`,
      `pool_mode = ${options.poolMode ?? "transaction"}`,
      `default_pool_size = ${options.poolSize ?? 4}`,
      "max_client_conn = 200",
      `logfile = ${logfile}`,
      `pidfile = ${join(dir, "pgbouncer.pid")}`,
      // node-postgres and postgres.js send these at startup; pgbouncer refuses unknown ones unless listed.
      "ignore_startup_parameters = extra_float_digits,application_name,options",
      "server_reset_query =",
      ...(options.loginRetry === undefined ? [] : [`server_login_retry = ${options.loginRetry}`]),
      "",
    ].join("\n"),
  );
  const root = process.getuid?.() === 0;
  if (root) {
    const uid = Number(spawnSync("id", ["-u", user], { encoding: "utf8" }).stdout.trim());
    const gid = Number(spawnSync("id", ["-g", user], { encoding: "utf8" }).stdout.trim());
    chownSync(dir, uid, gid);
    for (const f of ["pgbouncer.ini", "userlist.txt"]) chownSync(join(dir, f), uid, gid);
  }
  chmodSync(dir, 0o755);
  const child: ChildProcess = spawn(binary, root ? ["-u", user, config] : [config], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout?.on("data", (d) => (output += d));
  child.stderr?.on("data", (d) => (output += d));
  let exited = false;
  const exit = new Promise<void>((resolve) => child.once("exit", () => ((exited = true), resolve())));
  const log = () => {
    try {
      return readFileSync(logfile, "utf8") + output;
    } catch {
      return output;
    }
  };
  const url = `postgres://${user}@127.0.0.1:${port}/${options.dbname}`;
  const stop = async () => {
    if (!exited) {
      child.kill("SIGINT");
      const killed = await Promise.race([exit.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3_000))]);
      if (!killed) {
        child.kill("SIGKILL");
        await Promise.race([exit, new Promise((r) => setTimeout(r, 2_000))]);
      }
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // Bounded wait until it accepts a query (at most 10 s).
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited) {
      await stop();
      throw new Error(`pgbouncer exited at startup:\n${log()}`);
    }
    const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1_000 });
    client.on("error", () => {});
    try {
      await client.connect();
      await client.query("select 1");
      await client.end();
      break;
    } catch (error) {
      await client.end().catch(() => {});
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`pgbouncer did not accept connections within 10 s: ${(error as Error).message}\n${log()}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const retarget = (serverPort: number) => {
    writeFileSync(config, readFileSync(config, "utf8").replace(/^.* = host=.*$/m, target(serverPort)));
    child.kill("SIGHUP");
  };
  return { port, url, version, log, retarget, stop };
}
