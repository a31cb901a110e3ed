import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { checkOptions, is, type OptionChecks } from "./check.js";
import { pgCode, safeCause, SessionStoreError } from "./errors.js";
import { entityKinds, isPgDatabase, primaryOf, type AnyPgDatabase } from "./options.js";

/**
 * Absolute path of the migrations this package ships (its `drizzle/` folder, in drizzle-kit 0.31's layout
 * with `meta/_journal.json`), found from this module's own location: right whatever the working
 * directory, in workspaces and in Docker images. For drizzle-orm 0.44 and 0.45's migrator; drizzle-orm
 * 1.0's migrator reads the same migrations in its own layout from `join(migrationsFolder, "v1")`.
 * {@link migrate} picks the right one for you. When you bundle your server, keep connect-drizzle out of
 * the bundle (mark it external), or this path points next to your bundle.
 */
export const migrationsFolder: string = join(dirname(fileURLToPath(import.meta.url)), "..", "drizzle");

/** Options of {@link migrate}. */
export interface MigrateOptions {
  /**
   * The table where drizzle records which of these migrations ran. Keep it apart from your app's own
   * migrations table: drizzle's migrator only runs migrations newer than the last one in its table.
   * @default "__connect_drizzle_migrations"
   */
  migrationsTable?: string;
  /**
   * The Postgres schema of `migrationsTable` (not of the sessions table, which the migrations create in
   * the connection's search_path).
   * @default "drizzle" (drizzle's own default)
   */
  migrationsSchema?: string;
}

/** Every option of {@link MigrateOptions} with its check. */
export const MIGRATE_OPTIONS: OptionChecks<MigrateOptions> = {
  migrationsTable: is.name("table name"),
  migrationsSchema: is.name("Postgres schema name"),
};

/** drizzle's migrator for each database class, by entity kind; imported only when used. */
const MIGRATORS: Record<string, () => Promise<{ migrate: (db: never, config: never) => Promise<unknown> }>> = {
  NodePgDatabase: () => import("drizzle-orm/node-postgres/migrator"),
  PostgresJsDatabase: () => import("drizzle-orm/postgres-js/migrator"),
  PgliteDatabase: () => import("drizzle-orm/pglite/migrator"),
};

/**
 * Creates (or brings up to date) the sessions table by applying the migrations this package ships,
 * with drizzle's own migrator for the database's driver: node-postgres, postgres.js or PGlite, on
 * drizzle-orm 0.44, 0.45 and 1.0. Idempotent: run it at deploy or on every start.
 *
 * @example
 * import { migrate } from "connect-drizzle";
 * await migrate(db);
 *
 * A drizzle `withReplicas` database is migrated on its primary.
 *
 * @throws TypeError when `db` is not a drizzle Postgres database, or its driver has no migrator here
 * (then run drizzle's migrator yourself with {@link migrationsFolder}); for an unknown option, or one
 * that is not a non-empty string.
 * @throws SessionStoreError `DATABASE` when the database refused a migration, saying what to do (the
 * driver's error, without its values, as `cause`)
 */
export async function migrate(database: AnyPgDatabase, options: MigrateOptions = {}): Promise<void> {
  // A withReplicas database migrates its primary (the replicas follow it).
  const db = primaryOf(database);
  if (!isPgDatabase(db)) {
    throw new TypeError("connect-drizzle: migrate(db) needs a drizzle Postgres database, e.g. migrate(drizzle({ client: pool }))");
  }
  if (options === null || typeof options !== "object") {
    throw new TypeError('connect-drizzle: migrate(db, options) takes an options object such as { migrationsSchema: "drizzle" }');
  }
  checkOptions(options, MIGRATE_OPTIONS, "migrate()");
  const kinds = entityKinds(db);
  const migrator = Object.hasOwn(MIGRATORS, kinds[0]!) ? MIGRATORS[kinds[0]!] : undefined;
  if (!migrator) {
    throw new TypeError(
      `connect-drizzle: migrate(db) knows the migrators of node-postgres, postgres.js and PGlite, not of ${kinds[0]}; ` +
        "run your driver's drizzle migrator with connect-drizzle's migrationsFolder (join(migrationsFolder, \"v1\") on drizzle-orm 1.0) " +
        'and migrationsTable: "__connect_drizzle_migrations"',
    );
  }
  const { migrate: run } = await migrator();
  const folder = kinds.includes("PgAsyncDatabase") ? join(migrationsFolder, "v1") : migrationsFolder;
  const config = { migrationsFolder: folder, migrationsTable: options.migrationsTable ?? "__connect_drizzle_migrations" };
  try {
    await run(db as never, (options.migrationsSchema === undefined ? config : { ...config, migrationsSchema: options.migrationsSchema }) as never);
  } catch (error) {
    throw migrationFailed(error);
  }
}

/** What the database said when a migration failed, and what to do about it; never the statement's text. */
function migrationFailed(error: unknown): SessionStoreError {
  const cause = safeCause(error);
  const code = pgCode(error);
  const todo =
    code === "42501"
      ? "the database user may not create schemas or tables here: run the migrations once as the database's owner " +
        "(DATABASE_URL=postgres://owner@... npx connect-drizzle migrate), then the app's user needs only select, insert, update and delete on the table"
      : code === undefined
        ? "check that DATABASE_URL reaches the database and that its server is up, then run them again (they are idempotent)"
        : "fix what the database reports, then run them again (they are idempotent: what already ran is skipped)";
  return new SessionStoreError("DATABASE", `the migrations failed: ${cause.message}${code ? ` (${code})` : ""}; ${todo}`, { cause });
}
