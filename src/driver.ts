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
export function rowsOf<Row = Record<string, unknown>>(result: any): Row[] {
  return (Array.isArray(result) ? result : (result?.rows ?? [])) as Row[];
}

/** A boolean column as any driver returns it (`true`, or `"t"` where a driver leaves it as text). */
export function isTrue(value: unknown): boolean {
  return value === true || value === "t";
}

/**
 * Whether the database has a single connection, so that a statement outside an open transaction would wait
 * for it forever: PGlite (in-process, one connection), a lone node-postgres `Client`, or a pool of `max: 1`.
 */
export function singleConnection(db: AnyPgDatabase): boolean {
  const client: any = (db as any).$client;
  if (client === null || (typeof client !== "object" && typeof client !== "function")) return false;
  // PGlite and PGliteWorker.
  if (driverOf(db).kind === "pglite" || (typeof client.waitReady !== "undefined" && typeof client.exec === "function")) return true;
  // A node-postgres Client (drizzle's own test for a pool is the same); Pools have totalCount.
  const isPgLike = typeof client.query === "function" && typeof client.connect === "function";
  const isPool = "totalCount" in client || String(Object.getPrototypeOf(client)?.constructor?.name ?? "").includes("Pool");
  if (isPgLike && !isPool) return true;
  // pg.Pool ({ max }) and postgres.js (options.max).
  return client.options?.max === 1;
}

