import { entityKind } from "drizzle-orm";
import type { AnyPgDatabase } from "./options.js";

/** The entity kinds of drizzle's Postgres database classes: `PgDatabase` (0.x), `PgAsyncDatabase` (1.0). */
const PG_DATABASE_KINDS = new Set(["PgDatabase", "PgAsyncDatabase"]);

/** The entity kinds of a drizzle object's class chain, most derived first (e.g. NodePgDatabase, PgDatabase). */
export function entityKinds(value: unknown): string[] {
  const kinds: string[] = [];
  if (value === null || typeof value !== "object") return kinds;
  for (let cls: any = value.constructor; cls; cls = Object.getPrototypeOf(cls)) {
    if (Object.hasOwn(cls, entityKind)) kinds.push(String(cls[entityKind]));
  }
  return kinds;
}

/**
 * Whether `db` is a drizzle Postgres database, on any supported drizzle-orm version: drizzle's own `is()`
 * walk over the class chain (not `instanceof`, which two copies of drizzle break), by the kind's name
 * instead of a class that only some versions export.
 */
export function isPgDatabase(db: unknown): db is AnyPgDatabase {
  return entityKinds(db).some((kind) => PG_DATABASE_KINDS.has(kind));
}

/**
 * The primary and replicas of a drizzle `withReplicas(primary, replicas)` database (an object of
 * drizzle's with `$primary` and `$replicas`), or undefined for any other value.
 */
export function replicasOf(db: unknown): { primary: AnyPgDatabase; replicas: AnyPgDatabase[] } | undefined {
  const { $primary: primary, $replicas: replicas } = (db ?? {}) as { $primary?: unknown; $replicas?: unknown };
  if (!isPgDatabase(primary) || !Array.isArray(replicas) || !replicas.every(isPgDatabase)) return undefined;
  return { primary, replicas };
}

/** The database every statement but a replica's lookup runs on: the primary of a withReplicas one, else `db`. */
export function primaryOf<Db>(db: Db): Db | AnyPgDatabase {
  return replicasOf(db)?.primary ?? db;
}
