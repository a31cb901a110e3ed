import { sql, type SQL } from "drizzle-orm";

/**
 * The database's clock. Every expiry decision (is this session live, which rows the reaper takes, what
 * `list` calls active) is made with it, so every app instance agrees whatever its own clock says; app
 * servers only hand over lifetimes (a cookie's `expires` minus their own now). `statement_timestamp()`,
 * not `now()`, so a database handle inside a long transaction does not see a frozen clock.
 */
export const NOW: SQL = sql`statement_timestamp()`;

/** A duration in milliseconds (a number, parameter or placeholder) as a Postgres interval. */
export function millis(ms: SQL | number): SQL {
  return sql`(${ms}::float8 * interval '1 millisecond')`;
}

/** The database's now plus a lifetime in milliseconds. */
export function lifetime(ms: SQL | number): SQL {
  return sql`${NOW} + ${millis(ms)}`;
}
