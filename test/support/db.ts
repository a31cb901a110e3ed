import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { sql } from "drizzle-orm";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import pg from "pg";
import postgres from "postgres";
import { afterAll, beforeAll, beforeEach } from "vitest";
import { createSessionTable, SessionStore, type AnyPgDatabase, type SessionTable, type UserIdType } from "../../src/index.js";
import { startProxy } from "./proxy.js";
import { internals } from "./internals.js";

export const DATABASE_URL = process.env.DATABASE_URL;
/** The server the next database opens on: read when it opens, so a test that starts its own server (test/ha) can set it. */
const serverUrl = () => process.env.DATABASE_URL!;

/** The major version of the installed drizzle-orm (0 or 1): .ci/drizzle-matrix runs the suite on each. */
export const drizzleMajor = Number(
  JSON.parse(readFileSync(join(import.meta.dirname, "..", "..", "node_modules", "drizzle-orm", "package.json"), "utf8")).version.split(".")[0],
);

/** A database with the migrations applied in a schema of its own, so test files never share rows. */
export interface TestDb {
  driver: DriverName;
  db: AnyPgDatabase;
  table: SessionTable;
  schema: string;
  /**
   * Every statement the store sent, in order: seen by drizzle's logger, and on node-postgres by the pool
   * itself (the store's lookup goes to the pool directly there).
   */
  statements: string[];
  /** Runs SQL outside the store, with `$table` replaced by the schema-qualified table name. */
  raw<T = any>(text: string): Promise<T[]>;
  /**
   * Lets `ms` pass for the database: every instant stored in the table moves `ms` into the past. The store
   * decides expiry with the database's clock, so this is how a test ages sessions without waiting.
   */
  age(ms: number): Promise<void>;
  close(): Promise<void>;
}

/** `pg-proxy`: drizzle's pg-proxy over a real HTTP endpoint (test/support/proxy.ts), not in `drivers` (no LISTEN). */
export type DriverName = "pglite" | "node-postgres" | "postgres.js" | "pg-proxy";

/** PGlite always; node-postgres and postgres.js when DATABASE_URL points at a server. */
export const drivers: DriverName[] = DATABASE_URL ? ["pglite", "node-postgres", "postgres.js"] : ["pglite"];

const migrationsDir = join(import.meta.dirname, "..", "..", "drizzle");

/** The shipped migrations, in order, as one multi-statement script. */
export function migrationScript(): string {
  return readdirSync(migrationsDir)
    .filter((f) => f.endsWith(".sql"))
    .sort()
    .map((f) => readFileSync(join(migrationsDir, f), "utf8").replaceAll("--> statement-breakpoint", ""))
    .join(";\n");
}

let counter = 0;

export async function openDb(driver: DriverName, options: { pool?: number } = {}): Promise<TestDb> {
  const schema = `t_${process.pid}_${Date.now().toString(36)}_${counter++}`;
  const statements: string[] = [];
  const logger = { logQuery: (query: string) => void statements.push(query) };
  let db: AnyPgDatabase;
  let exec: (text: string) => Promise<any[]>;
  let end: () => Promise<void>;
  if (driver === "pglite") {
    const client = new PGlite();
    db = drizzlePglite({ client, logger });
    exec = async (text) => (await client.exec(text)).at(-1)?.rows ?? [];
    end = () => client.close();
  } else if (driver === "node-postgres") {
    const pool = new pg.Pool({ connectionString: serverUrl(), max: options.pool ?? 4 });
    const query = pool.query.bind(pool) as (...args: any[]) => any;
    pool.query = ((config: any, ...rest: any[]) => {
      statements.push(typeof config === "string" ? config : config.text);
      return query(config, ...rest);
    }) as typeof pool.query;
    db = drizzlePg({ client: pool });
    exec = async (text) => {
      const result: any = await pool.query(text);
      return (Array.isArray(result) ? result.at(-1) : result).rows ?? [];
    };
    end = () => pool.end();
  } else if (driver === "pg-proxy") {
    const proxy = await startProxy(serverUrl(), { max: options.pool ?? 4, logger });
    db = proxy.db;
    exec = async (text) => {
      const result: any = await proxy.pool.query(text);
      return (Array.isArray(result) ? result.at(-1) : result).rows ?? [];
    };
    end = () => proxy.close();
  } else {
    const client = postgres(serverUrl(), { max: options.pool ?? 4, onnotice: () => {} });
    db = drizzlePostgresJs({ client, logger });
    exec = async (text) => [...(await client.unsafe(text))];
    end = () => client.end({ timeout: 5 });
  }
  await exec(`create schema "${schema}"; set search_path to "${schema}"; ${migrationScript()}; reset search_path;`);
  return inSchema(driver, db, schema, statements, async () => {
    if (driver !== "pglite") await exec(`drop schema "${schema}" cascade`).catch(() => {});
    await end();
  });
}

/**
 * Another schema with the migrations applied, in the same PGlite database as `base` (opening a PGlite
 * costs seconds). Its `close()` drops the schema and leaves the database to `base`.
 */
export async function openSchema(base: TestDb): Promise<TestDb> {
  if (base.driver !== "pglite") throw new Error("openSchema shares a PGlite database; use openDb for a server");
  const schema = `${base.schema}_s${counter++}`;
  await (base.db as any).$client.exec(`create schema "${schema}"; set search_path to "${schema}"; ${migrationScript()}; reset search_path;`);
  return inSchema(base.driver, base.db, schema, base.statements, async () => {
    await base.raw(`drop schema "${schema}" cascade`).catch(() => {});
  });
}

function inSchema(driver: DriverName, db: AnyPgDatabase, schema: string, statements: string[], close: () => Promise<void>): TestDb {
  const qualified = `"${schema}"."sessions"`;
  const raw = async (text: string) => {
    const result: any = await db.execute(sql.raw(text.replaceAll("$table", qualified)));
    return Array.isArray(result) ? result : result.rows;
  };
  return {
    driver,
    db,
    schema,
    table: createSessionTable("sessions", { schema }),
    statements,
    raw,
    age: async (ms) => {
      const by = `${ms} * interval '1 millisecond'`;
      const columns = ["created_at", "last_seen_at", "expires_at", "absolute_expires_at", "ended_at", "authenticated_at"];
      await raw(`update $table set ${columns.map((c) => `${c} = ${c} - ${by}`).join(", ")}`);
    },
    close,
  };
}

/**
 * A new, empty sessions table in `t`'s schema whose `user_id` is of `userIdType` (the shipped table with
 * its column retyped), and its drizzle table as createSessionTable builds it.
 */
export async function typedTable(t: TestDb, userIdType: UserIdType): Promise<SessionTable> {
  const name = `sessions_${userIdType}_${counter++}`;
  await t.raw(`create table "${t.schema}"."${name}" (like $table including all)`);
  await t.raw(`alter table "${t.schema}"."${name}" alter column user_id type ${userIdType} using user_id::${userIdType}`);
  return createSessionTable(name, { schema: t.schema, userIdType });
}

/**
 * The usual suite setup: one database for the file (on `driver`), and before each test a fresh store with
 * default options on an emptied table, handed to `use` with the database.
 */
export function useTestDb(driver: DriverName, use: (t: TestDb, store: SessionStore) => void): void {
  let t: TestDb | undefined;
  beforeAll(async () => {
    t = await openDb(driver);
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(async () => {
    const store = new SessionStore({ db: t!.db, table: t!.table, reaper: false });
    await store.clear();
    use(t!, store);
  });
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it holds, for at most `ms`; returns whether it did. Bounded, never a timing assertion. */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 3_000): Promise<boolean> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return true;
    await sleep(10);
  }
  return check();
}

/**
 * Resolves once `store`'s LISTEN has heard every NOTIFY committed before the call: a marker sent after
 * them comes back on the same connection, and one connection hears notifications in commit order. So
 * a write's own NOTIFY can no longer evict what a read caches after this.
 */
export async function notifyBarrier(store: SessionStore): Promise<void> {
  const inside = internals(store);
  const marker = `barrier ${Math.random().toString(36).slice(2)}`;
  let heard = false;
  const stop = inside.onEvict((keys) => {
    if (keys.includes(marker)) heard = true;
  });
  try {
    await inside.notify(marker);
    if (!(await eventually(() => heard))) throw new Error("NOTIFY barrier: the store's LISTEN did not hear the marker within 3 s");
  } finally {
    stop();
  }
}

/** Whether a store's read cache is on (its LISTEN heard its probe), within a few seconds. */
export const cacheReady = (store: SessionStore) => eventually(() => internals(store).cache?.live === true);

/**
 * A second app instance's database on the same tables: its own pool (node-postgres, postgres.js) or, on
 * PGlite, a second drizzle database over the one in-process client. `beforeReply` holds back the reply of
 * the next statement it sends (after the database ran it) until the given function has run: how a test
 * makes another instance act between a write and its reply.
 */
export interface Peer {
  db: AnyPgDatabase;
  beforeReply(hook: () => Promise<void>): void;
  close(): Promise<void>;
}

export async function openPeer(t: TestDb): Promise<Peer> {
  let hook: (() => Promise<void>) | undefined;
  const held = <T>(reply: PromiseLike<T>): Promise<T> =>
    Promise.resolve(reply).then(async (value) => {
      const run = hook;
      hook = undefined;
      await run?.();
      return value;
    });
  let db: AnyPgDatabase;
  let close: () => Promise<void>;
  if (t.driver === "pglite") {
    db = drizzlePglite({ client: (t.db as any).$client });
    const execute = db.execute.bind(db);
    db.execute = ((query: any) => (hook ? held(execute(query)) : execute(query))) as typeof db.execute;
    close = async () => {};
  } else if (t.driver === "node-postgres") {
    const pool = new pg.Pool({ connectionString: serverUrl(), max: 4 });
    pool.on("error", () => {}); // an idle client killed by a fault test must not crash the run
    const query = pool.query.bind(pool) as (...args: any[]) => any;
    pool.query = ((...args: any[]) => (hook ? held(query(...args)) : query(...args))) as typeof pool.query;
    db = drizzlePg({ client: pool });
    close = () => pool.end();
  } else {
    const client = postgres(serverUrl(), { max: 4, onnotice: () => {} });
    db = drizzlePostgresJs({ client });
    const execute = db.execute.bind(db);
    db.execute = ((query: any) => (hook ? held(execute(query)) : execute(query))) as typeof db.execute;
    close = () => client.end({ timeout: 5 });
  }
  return { db, beforeReply: (next) => void (hook = next), close };
}

/**
 * A pool of `driver` (node-postgres or postgres.js) on another server (a replica, `url`), as a drizzle
 * database: what an app gives withReplicas besides its primary.
 */
export function openOn(driver: DriverName, url: string, max = 4): { db: AnyPgDatabase; close(): Promise<void> } {
  if (driver === "node-postgres") {
    const pool = new pg.Pool({ connectionString: url, max });
    pool.on("error", () => {}); // a replica stopped by a test must not crash the run
    return { db: drizzlePg({ client: pool }), close: () => pool.end() };
  }
  if (driver === "postgres.js") {
    const client = postgres(url, { max, onnotice: () => {} });
    return { db: drizzlePostgresJs({ client }), close: () => client.end({ timeout: 5 }) };
  }
  throw new Error(`openOn: no replica of ${driver}`);
}

/** A minimal express-session-shaped session with a cookie expiring `ms` from now. */
export function sessionData(ms: number, extra: Record<string, unknown> = {}): any {
  return { cookie: { originalMaxAge: ms, expires: new Date(Date.now() + ms).toISOString(), httpOnly: true, path: "/" }, ...extra };
}
