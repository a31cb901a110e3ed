import { entityKind } from "drizzle-orm";
import type { AnyPgDatabase } from "./options.js";

/** The drivers the store knows by their client's shape (no driver is imported here). */
type DriverKind = "pglite" | "node-postgres" | "postgres.js" | "other";

/**
 * How LISTEN works on a driver: `reliable` on a connection of its own that says when it was lost (the
 * read cache relies on that: it must know when it may have missed a NOTIFY); `lossy` where the driver
 * listens again by itself but never says it missed anything (postgres.js: enough for lifecycle events);
 * `none` where no connection stays open to listen on (drizzle's HTTP drivers, unknown clients).
 */
type ListenSupport = "reliable" | "lossy" | "none";

/**
 * What the store can do on a database's driver, in one place: every module that depends on the driver
 * asks this profile ({@link profileOf}) rather than the client.
 */
export interface DriverProfile {
  readonly kind: DriverKind;
  /** The driver's client (`db.$client`). */
  readonly client: any;
  /** drizzle's entry point for the driver (`drizzle-orm/pg-proxy`), to name it in messages. */
  readonly name: string;
  readonly listen: ListenSupport;
  /**
   * One connection, so that a statement outside an open transaction would wait for it forever: PGlite
   * (in-process), a lone node-postgres `Client`, or a pool of `max: 1`.
   */
  readonly singleConnection: boolean;
  /**
   * One node-postgres `Client`, not a pool: drizzle runs a transaction there on that connection itself,
   * so every other statement sent meanwhile runs inside the transaction, and is rolled back with it.
   */
  readonly loneClient: boolean;
  /**
   * Whether a transaction can be held open across statements (`db.transaction(callback)`): not on drizzle's
   * HTTP drivers (each statement is a request of its own), nor once `db.transaction` was seen to refuse
   * ({@link refusesTransactions}).
   */
  readonly interactiveTransactions: boolean;
}

const LISTEN: Record<DriverKind, ListenSupport> = { pglite: "reliable", "node-postgres": "reliable", "postgres.js": "lossy", other: "none" };

/** The profile of a database's driver (see {@link DriverProfile}). */
export function profileOf(db: AnyPgDatabase): DriverProfile {
  const client: any = (db as any).$client;
  const kind = kindOf(client);
  const lone = loneClient(client, kind);
  return {
    kind,
    client,
    name: driverName(db),
    listen: LISTEN[kind],
    // PGliteWorker too, by its shape; pg.Pool ({ max }) and postgres.js (options.max).
    singleConnection:
      kind === "pglite" || (typeof client?.waitReady !== "undefined" && typeof client?.exec === "function") || lone || client?.options?.max === 1,
    loneClient: lone,
    get interactiveTransactions() {
      return interactiveTransactions(db);
    },
  };
}

function kindOf(client: any): DriverKind {
  if (client && typeof client.listen === "function" && typeof client.exec === "function") return "pglite";
  if (client && typeof client.connect === "function" && typeof client.query === "function" && (client.options || client.connectionParameters)) {
    return "node-postgres";
  }
  if (client && typeof client.listen === "function" && typeof client.unsafe === "function") return "postgres.js";
  return "other";
}

/** A node-postgres `Client`, not a pool (drizzle's own test for a pool is the same; Pools have totalCount). */
function loneClient(client: any, kind: DriverKind): boolean {
  if (client === null || (typeof client !== "object" && typeof client !== "function")) return false;
  const isPgLike = typeof client.query === "function" && typeof client.connect === "function";
  const isPool = "totalCount" in client || String(Object.getPrototypeOf(client)?.constructor?.name ?? "").includes("Pool");
  return isPgLike && !isPool && kind !== "pglite";
}

/** Rows of a result, whatever the driver: arrays from postgres.js, `.rows` from node-postgres and PGlite. */
export function rowsOf<Row = Record<string, unknown>>(result: any): Row[] {
  return (Array.isArray(result) ? result : (result?.rows ?? [])) as Row[];
}

/** A boolean column as any driver returns it (`true`, or `"t"` where a driver leaves it as text). */
export function isTrue(value: unknown): boolean {
  return value === true || value === "t";
}

/**
 * drizzle's sessions that send each statement on its own (over HTTP) and whose `transaction()` always throws:
 * pg-proxy, neon-http, xata-http. They are recognised by drizzle's own class marker (`entityKind`), so that
 * no driver is imported here and `db.transaction` need not be tried.
 */
const STATEMENT_AT_A_TIME = new Set(["PgRemoteSession", "NeonHttpSession", "XataHttpSession"]);

/** Databases whose `db.transaction` was found to refuse (see {@link refusesTransactions}). */
const refusing = new WeakSet<object>();

/** {@link DriverProfile.interactiveTransactions}. */
function interactiveTransactions(db: AnyPgDatabase): boolean {
  if (refusing.has(db)) return false;
  for (let proto = Object.getPrototypeOf((db as any).session ?? {}); proto; proto = Object.getPrototypeOf(proto)) {
    if (STATEMENT_AT_A_TIME.has((proto.constructor as any)?.[entityKind])) return false;
  }
  return true;
}

/**
 * Whether `error`, thrown by `db.transaction` before its callback ran, says the driver has no transactions
 * (drizzle's words: "Transactions are not supported by ...", "No transactions support in ..."), and not a
 * database error. If so, the database is remembered as without them for {@link interactiveTransactions}.
 */
export function refusesTransactions(db: AnyPgDatabase, error: unknown): boolean {
  const message = error instanceof Error ? error.message : "";
  const refused = (error as any)?.code === undefined && /transactions? (are )?not supported|no transactions? support/i.test(message);
  if (refused) refusing.add(db);
  return refused;
}

/**
 * Whether `maxSessionsPerUser` can be kept on this database: a login takes its user's lock, then writes, in
 * one transaction held open across statements, on a connection of its own.
 * @throws TypeError naming the driver and what to do instead, when it cannot
 */
export function checkCanCap(db: AnyPgDatabase): void {
  const profile = profileOf(db);
  if (!profile.interactiveTransactions) {
    throw new TypeError(
      `connect-drizzle: \`maxSessionsPerUser\` needs a transaction held open across statements (a login takes its user's lock, ` +
        `then writes), which ${profile.name} cannot do (each statement is a request of its own); remove \`maxSessionsPerUser\`, ` +
        "or give the store a drizzle-orm/node-postgres, drizzle-orm/postgres-js or drizzle-orm/pglite database",
    );
  }
  if (profile.loneClient) {
    throw new TypeError(
      "connect-drizzle: `maxSessionsPerUser` cannot be safe on a single node-postgres Client: a login's transaction would run on " +
        "the connection every other request uses, so their statements would run inside it (and a logout be undone if it rolled " +
        "back); give the store a pg.Pool (drizzle({ client: new pg.Pool(...) })), or remove `maxSessionsPerUser`",
    );
  }
}

/**
 * How to name the driver behind a database in a message: drizzle's entry point for it (`drizzle-orm/pg-proxy`),
 * from drizzle's class marker; or that marker itself for one not listed.
 */
function driverName(db: AnyPgDatabase): string {
  const kind: string = (db as any)?.constructor?.[entityKind] ?? "this database";
  return DRIVER_NAMES[kind] ?? kind;
}

const DRIVER_NAMES: Record<string, string> = {
  NodePgDatabase: "drizzle-orm/node-postgres",
  PostgresJsDatabase: "drizzle-orm/postgres-js",
  PgliteDatabase: "drizzle-orm/pglite",
  PgRemoteDatabase: "drizzle-orm/pg-proxy",
  NeonHttpDatabase: "drizzle-orm/neon-http",
  NeonServerlessDatabase: "drizzle-orm/neon-serverless",
  XataHttpDatabase: "drizzle-orm/xata-http",
  VercelPgDatabase: "drizzle-orm/vercel-postgres",
  AwsDataApiPgDatabase: "drizzle-orm/aws-data-api/pg",
  BunSQLDatabase: "drizzle-orm/bun-sql",
  NetlifyDbDatabase: "drizzle-orm/netlify-db",
};
