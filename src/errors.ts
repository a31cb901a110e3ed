import { isTrue } from "./driver.js";

/**
 * Every error this package raises itself. A driver error rides along as `cause`, reduced to what is safe
 * to log (see {@link safeCause}).
 */
export class SessionStoreError extends Error {
  override name = "SessionStoreError";
  /** A stable, machine-readable reason. */
  readonly code: SessionStoreErrorCode;
  /** The HTTP status Express's error handler answers with, on errors a client causes (`REAUTHENTICATION_REQUIRED`: 401, `SESSION_LIMIT`: 403). */
  readonly status?: number;

  constructor(code: SessionStoreErrorCode, message: string, options?: { cause?: unknown; status?: number }) {
    super(`connect-drizzle: ${message}`, options);
    this.code = code;
    if (options?.status !== undefined) this.status = options.status;
  }
}

export type SessionStoreErrorCode =
  | "TABLE_MISSING"
  | "SCHEMA_OUTDATED"
  | "UNSERIALIZABLE"
  | "TOO_LARGE"
  | "CORRUPT_ROW"
  | "CONFLICT"
  | "TIMEOUT"
  | "READ_ONLY"
  | "UNAVAILABLE"
  | "DATABASE"
  | "LISTENER"
  | "UNTRUSTED_EVENT"
  | "LISTEN_DEAF"
  | "REAUTHENTICATION_REQUIRED"
  | "INVALID_USER_ID"
  | "SESSION_REUSED"
  | "SESSION_LIMIT";

const MIGRATE = "await migrate(db) from connect-drizzle, or your driver's drizzle migrator on its migrationsFolder";

/**
 * The sessions table does not exist: what `store.ready()` rejects with, and what any statement on the
 * missing table raises (Postgres's undefined_table, 42P01).
 * @param table the table's quoted, schema-qualified name
 */
export function tableMissing(table: string, cause?: unknown): SessionStoreError {
  return new SessionStoreError(
    "TABLE_MISSING",
    `table ${table} not found; run the migrations (${MIGRATE}), or create it with createSessionTable in your drizzle schema`,
    cause === undefined ? undefined : { cause: safeCause(cause) },
  );
}

/**
 * The sessions table lacks columns this version uses (an older migration, or a hand-made table): what
 * `store.ready()` rejects with, and what a statement that hits Postgres's undefined_column (42703) raises.
 * @param missing the columns found missing, when known
 */
export function schemaOutdated(table: string, missing: readonly string[] | undefined, cause?: unknown): SessionStoreError {
  const what =
    missing === undefined
      ? `a column this version of connect-drizzle needs (${driverError(cause)?.message ?? "unknown"})`
      : `the column(s) ${missing.map((c) => `"${c}"`).join(", ")} this version of connect-drizzle needs`;
  return new SessionStoreError(
    "SCHEMA_OUTDATED",
    `table ${table} lacks ${what}; run the latest migrations (${MIGRATE})`,
    cause === undefined ? undefined : { cause: safeCause(cause) },
  );
}

/** `ready()` found the store's database in recovery: a standby, which refuses every write. */
export function standbyGiven(): SessionStoreError {
  return new SessionStoreError(
    "READ_ONLY",
    "the store's database is a read-only standby (pg_is_in_recovery()); give the store the primary, and standbys as " +
      "replicas: db: withReplicas(primary, [standby]) from drizzle-orm/pg-core",
  );
}

/**
 * A sensitive route's `requireRecentLogin(maxAge)` found no sign-in recent enough in the session: a 401
 * for Express's error handler.
 */
export function reauthenticationRequired(maxAge: number): SessionStoreError {
  return new SessionStoreError(
    "REAUTHENTICATION_REQUIRED",
    `this route needs the user to have signed in within the last ${Math.round(maxAge / 1000)} s; ask them to sign in again ` +
      "(their password, a passkey), then call store.markAuthenticated(req) and retry",
    { status: 401 },
  );
}

/**
 * A sign-in of a user who already has as many live sessions as `maxSessionsPerUser: { limit, whenFull:
 * "refuse" }` allows: nothing was written; a 403 for Express's error handler. It names no user.
 */
function sessionLimit(): SessionStoreError {
  return new SessionStoreError(
    "SESSION_LIMIT",
    "the user already has as many signed-in sessions as maxSessionsPerUser allows, so this sign-in was refused and nothing was stored; " +
      "ask them to sign out on another device (or revoke one from their devices page: store.revoke), then sign in again",
    { status: 403 },
  );
}

/**
 * The rows of a statement that made a session live under `maxSessionsPerUser`, unless its `refused`
 * column says the cap refuses it: then `SESSION_LIMIT`, thrown inside the statement's transaction so
 * that it rolls back and nothing of the write stays.
 */
export function refusedAtCap<Row extends { refused?: unknown }>(rows: Row[]): Row[] {
  if (rows.some((row) => isTrue(row.refused))) throw sessionLimit();
  return rows;
}

/** Wraps a driver error with a message that says what to do, keeping the original as `cause` (without the values it quotes). */
export function databaseError(error: unknown, table: string, action: string): SessionStoreError {
  const code = pgCode(error);
  if (code === "42P01") return tableMissing(table, error);
  if (code === "42703") return schemaOutdated(table, undefined, error);
  const reason = messageOf(error);
  // Data the jsonb column refuses (NUL, a lone surrogate); any other 22P02 is a value another column's
  // type refuses, which is no problem of the session data.
  if (code === "22P05" || (code === "22P02" && /\btype jsonb?\b/.test(reason))) {
    return new SessionStoreError(
      "UNSERIALIZABLE",
      `${action} failed: PostgreSQL refused the session data (${reason}, ${code}); ` +
        "jsonb cannot hold NUL characters (\\u0000) or lone surrogates in strings",
      { cause: safeCause(error) },
    );
  }
  const failure = failureOf(error);
  if (failure !== undefined) {
    const [errorCode, what] =
      code === "25006"
        ? (["READ_ONLY", "the database is a read-only standby; give the store the primary (replicas go in withReplicas)"] as const)
        : (["UNAVAILABLE", "the database was unreachable or going through a failover; retry the request"] as const);
    return new SessionStoreError(errorCode, `${action} failed: ${reason}${code ? ` (${code})` : ""}; ${what}`, { cause: safeCause(error) });
  }
  return new SessionStoreError("DATABASE", `${action} failed: ${reason}${code ? ` (${code})` : ""}`, { cause: safeCause(error) });
}

/**
 * How a statement failed when its database was unreachable, restarting or no longer the primary:
 * `refused` when the statement certainly did not run (no connection was made, or the server refused it
 * before it wrote anything: a read-only standby, 25006; a server starting or stopping, 57P03), so that
 * any statement may run again; `lost` when the connection went away while it ran (a killed or restarted
 * server, 57P01, 57P02, a reset socket), so that only a statement whose second run changes nothing more
 * may. Undefined for any other error.
 */
export function failureOf(error: unknown): "refused" | "lost" | undefined {
  const code = pgCode(error);
  if (code !== undefined) {
    if (REFUSED_STATES.has(code)) return "refused";
    if (LOST_STATES.has(code) || code.startsWith("08")) return "lost";
  }
  for (let e: any = error, depth = 0; e && depth < 5; e = e.cause, depth++) {
    const name = typeof e.code === "string" ? e.code : "";
    if (REFUSED_SOCKET.has(name)) return "refused";
    if (LOST_SOCKET.has(name)) return "lost";
    const message = typeof e.message === "string" ? e.message : "";
    if (/timeout exceeded when trying to connect|connection terminated due to connection timeout/i.test(message)) return "refused";
    if (/connection terminated|terminating connection|not queryable|server closed the connection/i.test(message)) return "lost";
  }
  return undefined;
}

/**
 * Whether the database rolled the statement (or its transaction) back whole, so that it certainly did
 * nothing: a deadlock (40P01), of statements that lock rows in different orders (an end by key and one by
 * user, say), or a serialization failure (40001). Sent again, it runs as if it had come a little later.
 */
export function rolledBack(error: unknown): boolean {
  const code = pgCode(error);
  return code === "40P01" || code === "40001";
}

/**
 * Refused before running: read-only transaction (25006), cannot connect now (57P03), too many connections
 * (53300), unable to connect (08001), connection rejected (08004).
 */
const REFUSED_STATES = new Set(["25006", "57P03", "53300", "08001", "08004"]);
/** Lost while running: admin shutdown (57P01), crash shutdown (57P02); class 08 (connection exception) besides. */
const LOST_STATES = new Set(["57P01", "57P02"]);
/** Socket errors of a connection that was never made (node's errno codes; postgres.js's connect timeout). */
const REFUSED_SOCKET = new Set(["ECONNREFUSED", "ENOTFOUND", "EHOSTUNREACH", "ENETUNREACH", "EAI_AGAIN", "CONNECT_TIMEOUT"]);
/** A connection lost while in use (node's errno codes; postgres.js's codes for a closed connection). */
const LOST_SOCKET = new Set(["ECONNRESET", "EPIPE", "ETIMEDOUT", "CONNECTION_CLOSED", "CONNECTION_DESTROYED", "CONNECTION_ENDED"]);

/** The driver error's message, without the values a data exception quotes (see {@link withoutValues}). */
function messageOf(error: unknown): string {
  const inner = driverError(error);
  return withoutValues(inner instanceof Error ? inner.message : String(inner), pgCode(error));
}

/**
 * A Postgres message without the values it quotes: the data exceptions (SQLSTATE class 22) quote the
 * value refused (`invalid input syntax for type integer: "..."`, `value "..." is out of range ...`),
 * which may be a user id or session data. Everything from the first double quote to the last is
 * replaced (a value may hold quotes itself). Other classes quote names (tables, constraints), not values:
 * their values are in `detail`, which is never copied.
 */
function withoutValues(message: string, code: string | undefined): string {
  return isDataException(code) ? message.replace(/".*"/s, "(value left out)").replace(/: 0x[0-9a-f ]+$/i, "") : message;
}

/** Fields of a Postgres error that name what failed, never the values involved. */
const SAFE_FIELDS = ["code", "severity", "routine", "schema", "table", "column", "constraint", "errno", "syscall", "address", "port"] as const;

/**
 * A copy of the driver's error that is safe to log: its message (without the values a data exception
 * quotes) and the fields that name what failed.
 * Left out: drizzle's wrapper (its message quotes the query's parameters), and the driver's own query,
 * parameters, `detail` and `where` (postgres.js and PGlite keep the parameters on the error; `detail`
 * quotes key values), since they hold session keys, handles, user ids and the session data, which an
 * app's `console.error(err)` would print.
 */
export function safeCause(error: unknown): Error {
  const inner = driverError(error);
  const copy = new Error(messageOf(error));
  if (inner instanceof Error) copy.name = inner.name;
  for (const field of SAFE_FIELDS) {
    const value = (inner as any)?.[field];
    if (typeof value === "string" || typeof value === "number") (copy as any)[field] = value;
  }
  return copy;
}

/** The innermost error of a chain of causes: the driver's, under drizzle's DrizzleQueryError. */
function driverError(error: unknown): any {
  let e: any = error;
  for (let depth = 0; depth < 4 && e?.cause instanceof Error; depth++) e = e.cause;
  return e;
}

/** The SQLSTATE of a driver error (node-postgres, postgres.js and PGlite all expose `code`), drizzle's wrapper included. */
export function pgCode(error: unknown): string | undefined {
  for (let e: any = error, depth = 0; e && depth < 4; e = e.cause, depth++) {
    if (typeof e.code === "string" && /^[0-9A-Z]{5}$/.test(e.code)) return e.code;
  }
  return undefined;
}

/** Whether a SQLSTATE is a data exception (class 22): the database refused a value (and its message may quote it). */
export function isDataException(code: string | undefined): boolean {
  return code?.startsWith("22") === true;
}

/**
 * Runs an operation of the store, turning driver errors into errors that say what to do (see
 * {@link databaseError}); a missing table or column is also given to `schemaProblem`. The store's and
 * connect-drizzle's own errors pass as they are.
 */
export function attempt<T>(action: string, table: string, operation: () => Promise<T>, schemaProblem: (error: SessionStoreError) => void): Promise<T> {
  let promise: Promise<T>;
  try {
    promise = operation();
  } catch (error) {
    promise = Promise.reject(error);
  }
  return promise.catch((error) => {
    const ours = error instanceof SessionStoreError || (error instanceof TypeError && error.message.startsWith("connect-drizzle:"));
    if (ours) throw error;
    const wrapped = databaseError(error, table, action);
    if (wrapped.code === "TABLE_MISSING" || wrapped.code === "SCHEMA_OUTDATED") schemaProblem(wrapped);
    throw wrapped;
  });
}
