import type { AnyPgDatabase } from "./options.js";

/**
 * The client behind a drizzle database, recognised by shape (no driver is imported here): what the
 * store can do only on some drivers (LISTEN, single-connection detection, the direct hot path).
 */
export type DriverClient =
  | { kind: "pglite"; client: any }
  | { kind: "node-postgres"; client: any }
  | { kind: "other"; client: any };

export function driverOf(db: AnyPgDatabase): DriverClient {
  const client: any = (db as any).$client;
  if (client && typeof client.listen === "function" && typeof client.exec === "function") return { kind: "pglite", client };
  if (client && typeof client.connect === "function" && typeof client.query === "function" && (client.options || client.connectionParameters)) {
    return { kind: "node-postgres", client };
  }
  return { kind: "other", client };
}

/** Rows of a result, whatever the driver: arrays from postgres.js, `.rows` from node-postgres and PGlite. */
export function rowsOf<Row>(result: any): Row[] {
  return (Array.isArray(result) ? result : result.rows) as Row[];
}
