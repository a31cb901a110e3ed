/** Every error this package raises itself; driver errors ride along as `cause`. */
export class SessionStoreError extends Error {
  override name = "SessionStoreError";
  /** A stable, machine-readable reason. */
  readonly code: SessionStoreErrorCode;

  constructor(code: SessionStoreErrorCode, message: string, options?: { cause?: unknown }) {
    super(`connect-drizzle: ${message}`, options);
    this.code = code;
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
  | "DATABASE";

/** Wraps a driver error with a message that says what to do, keeping the original as `cause`. */
export function databaseError(error: unknown, table: string, action: string): SessionStoreError {
  const code = pgCode(error);
  if (code === "42P01") {
    return new SessionStoreError(
      "TABLE_MISSING",
      `table ${table} not found; run the migrations in node_modules/connect-drizzle/drizzle ` +
        `(see the README, "Create the table") or add the table from connect-drizzle's schema to your drizzle-kit config`,
      { cause: error },
    );
  }
  if (code === "42703") {
    return new SessionStoreError(
      "SCHEMA_OUTDATED",
      `table ${table} lacks a column this version needs; run the latest migrations in node_modules/connect-drizzle/drizzle`,
      { cause: error },
    );
  }
  if (code === "22P05" || code === "22P02") {
    return new SessionStoreError(
      "UNSERIALIZABLE",
      `${action} failed: PostgreSQL refused the session data (${driverError(error).message}, ${code}); ` +
        "jsonb cannot hold NUL characters (\\u0000) or lone surrogates in strings",
      { cause: error },
    );
  }
  // The driver's own message, never drizzle's wrapper: that one quotes the query's parameters, i.e. the
  // session data, which must not end up in logs. The full error stays available as `cause`.
  const inner = driverError(error);
  const reason = inner instanceof Error ? inner.message : String(inner);
  return new SessionStoreError("DATABASE", `${action} failed: ${reason}${code ? ` (${code})` : ""}`, { cause: error });
}

/** The innermost error of a chain of causes: the driver's, under drizzle's DrizzleQueryError. */
function driverError(error: unknown): any {
  let e: any = error;
  for (let depth = 0; depth < 4 && e?.cause instanceof Error; depth++) e = e.cause;
  return e;
}

/** The SQLSTATE of a driver error (node-postgres, postgres.js and PGlite all expose `code`), drizzle's wrapper included. */
function pgCode(error: unknown): string | undefined {
  for (let e: any = error, depth = 0; e && depth < 4; e = e.cause, depth++) {
    if (typeof e.code === "string" && /^[0-9A-Z]{5}$/.test(e.code)) return e.code;
  }
  return undefined;
}
