import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { createSessionTable, type AnyPgDatabase, type SessionTable } from "../../src/index.js";
import { DATABASE_URL, migrationScript } from "./db.js";

/**
 * Fault tests kill every backend of a database and close it to connections. They never do that to the
 * shared test database (other test runs and benchmarks use it at the same time): each test file gets a
 * database of its own, created here from DATABASE_URL and dropped (with force) at the end.
 */
export interface FaultDb {
  /** The database's name and a connection string to it. */
  name: string;
  url: string;
  /** An admin connection to DATABASE_URL's database (not the fault database): it survives the faults. */
  admin: pg.Client;
  /** Kills every backend connected to the fault database; returns how many. */
  killBackends(): Promise<number>;
  /** Refuses (false) or allows (true) new connections to the fault database. */
  allowConnections(allow: boolean): Promise<void>;
  /** A pg Pool on the fault database, with the migrations applied in `schema` (once per call). */
  open(options?: { max?: number; connectionTimeoutMillis?: number; url?: string }): Promise<OpenedDb>;
  drop(): Promise<void>;
}

export interface OpenedDb {
  pool: pg.Pool;
  db: AnyPgDatabase;
  table: SessionTable;
  schema: string;
  /** SQL through the pool, `$table` replaced by the schema-qualified table. */
  raw<T = any>(text: string): Promise<T[]>;
  /** Every error the pool emitted for idle clients (an app must listen for these, or node crashes). */
  poolErrors: Error[];
  close(): Promise<void>;
}

let counter = 0;

export function withDatabase(url: string, name: string): string {
  const u = new URL(url);
  u.pathname = `/${name}`;
  return u.toString();
}

export async function createFaultDb(label: string): Promise<FaultDb> {
  if (!DATABASE_URL) throw new Error("fault tests need DATABASE_URL");
  const admin = new pg.Client({ connectionString: DATABASE_URL, application_name: "connect-drizzle faults admin" });
  await admin.connect();
  const name = `cd_faults_${label}_${process.pid}_${counter++}`;
  await admin.query(`drop database if exists "${name}" with (force)`);
  await admin.query(`create database "${name}"`);
  const url = withDatabase(DATABASE_URL, name);
  const opened: OpenedDb[] = [];
  let schemas = 0;
  return {
    name,
    url,
    admin,
    async killBackends() {
      const { rows } = await admin.query(
        `select count(*) filter (where pg_terminate_backend(pid))::int as n from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()`,
        [name],
      );
      return rows[0].n;
    },
    async allowConnections(allow) {
      await admin.query(`alter database "${name}" allow_connections ${allow ? "true" : "false"}`);
    },
    async open(options = {}) {
      const pool = new pg.Pool({
        connectionString: options.url ?? url,
        max: options.max ?? 4,
        connectionTimeoutMillis: options.connectionTimeoutMillis ?? 5_000,
        application_name: "connect-drizzle faults",
      });
      const poolErrors: Error[] = [];
      // What every node-postgres app must do: an idle client whose server went away emits 'error' on the pool.
      pool.on("error", (error) => void poolErrors.push(error));
      const db = drizzle({ client: pool });
      const schema = `s${schemas++}`;
      await pool.query(`create schema "${schema}"; set search_path to "${schema}"; ${migrationScript()}; reset search_path;`);
      const qualified = `"${schema}"."sessions"`;
      const handle: OpenedDb = {
        pool,
        db,
        schema,
        table: createSessionTable("sessions", { schema }),
        poolErrors,
        raw: async (text) => {
          const result: any = await db.execute(sql.raw(text.replaceAll("$table", qualified)));
          return result.rows;
        },
        close: () => pool.end().catch(() => {}),
      };
      opened.push(handle);
      return handle;
    },
    async drop() {
      await Promise.all(opened.map((o) => o.close()));
      await admin.query(`alter database "${name}" allow_connections true`).catch(() => {});
      await admin.query(`drop database if exists "${name}" with (force)`).catch(() => {});
      await admin.end().catch(() => {});
    },
  };
}

/** Resolves when `check` returns true, polling every `every` ms; throws after `ms` (bounded wait). */
export async function waitFor(check: () => boolean | Promise<boolean>, ms: number, what: string, every = 20): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}

/** Fault tests run only under vitest.faults.config.ts (which sets CONNECT_DRIZZLE_FAULTS) and with DATABASE_URL. */
export const faultsEnabled = Boolean(DATABASE_URL) && process.env.CONNECT_DRIZZLE_FAULTS === "1";
