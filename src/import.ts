import { sql } from "drizzle-orm";
import { isTrue, rowsOf } from "./driver.js";
import { databaseError, pgCode, safeCause, SessionStoreError } from "./errors.js";
import { isValidId, keyDeriver } from "./hash.js";
import { checkOptions, is, type OptionChecks } from "./check.js";
import { copyEach, countAbsent, type Copy } from "./import-copy.js";
import { IMPORTED_COLUMN, prepareSource, readBatch, sourceTable, type Source, type SourceRow } from "./import-source.js";
import { sessionOwner } from "./owner.js";
import { batchSizeOption, resolveOptions, secretList, sessionTable, STORE_OPTIONS, type AnyPgDatabase, type UserIdOf } from "./options.js";
import { qualifiedName, type SessionTable } from "./schema.js";
import { fitsUserIdType } from "./owner.js";
import { jsonbRefuses, parseSession } from "./serialize.js";

// The marker column is part of the public API (src/index.ts takes it from here).
export { IMPORTED_COLUMN } from "./import-source.js";

/** Arguments of {@link importConnectPgSimple}. */
export interface ImportConnectPgSimpleArgs {
  /** A drizzle Postgres database holding both tables (node-postgres, postgres.js, PGlite, ...). Never closed. */
  db: AnyPgDatabase;
  /**
   * connect-pg-simple's table: its `tableName` option.
   * @default "session"
   */
  fromTable?: string;
  /**
   * Its Postgres schema: connect-pg-simple's `schemaName` option.
   * @default undefined (the connection's search_path, normally `public`)
   */
  fromSchema?: string;
  /**
   * connect-drizzle's sessions table, as passed to `new SessionStore({ table })`.
   * @default sessions (the table the shipped migrations create)
   */
  table?: SessionTable;
  /**
   * The `secrets` your SessionStore is given: rows are keyed with the first, exactly as the store keys
   * them. Without the same secrets the store does not find the imported sessions.
   * @default [] (SHA-256, the store's default)
   */
  secrets?: string | readonly string[];
  /**
   * Finds the owner in a session's data, as the store's `userId` option (give the store's own function).
   * @default session.passport.user, then session.userId
   */
  userId?: UserIdOf;
  /**
   * Rows of connect-pg-simple's table read per batch; each batch is copied by one statement.
   * @default 1_000
   */
  batchSize?: number;
  /**
   * Count what would be copied, and change nothing (not even the marker column).
   * @default false
   */
  dryRun?: boolean;
  /**
   * Copy again what an earlier run copied: its marks are cleared first, so every unexpired session is
   * copied unless connect-drizzle's table holds it under the keys of the `secrets` given now. For an
   * import that ran with the wrong `secrets` (its copies are keyed so the store finds none of them), before
   * the app serves from connect-drizzle: once it does, a session signed out there since could come back.
   * @default false
   */
  redo?: boolean;
}

/** Every argument of {@link ImportConnectPgSimpleArgs} with its check: the store's own for what it shares with it. */
export const IMPORT_ARGS: OptionChecks<ImportConnectPgSimpleArgs> = {
  db: STORE_OPTIONS.db,
  fromTable: is.name("table name"),
  fromSchema: is.name("schema name"),
  table: sessionTable,
  secrets: secretList,
  userId: STORE_OPTIONS.userId,
  batchSize: (args, name) => void batchSizeOption(args[name]),
  dryRun: is.boolean,
  redo: is.boolean,
};

/** What {@link importConnectPgSimple} did (or, with `dryRun`, would do). */
export interface ImportResult {
  /** Sessions copied into connect-drizzle's table. */
  imported: number;
  /** Unexpired sessions not copied: copied by an earlier run, or already in connect-drizzle's table (never overwritten). */
  skipped: number;
  /** Sessions past their expiry: never copied. */
  expired: number;
  /**
   * Unexpired sessions not copied because they cannot be stored as they are: left out, counted by reason in
   * {@link ImportResult.invalidReasons}. They stay in connect-pg-simple's table unmarked, so every run
   * counts them again.
   */
  invalid: number;
  /** {@link ImportResult.invalid}, by reason; the three add up to it. */
  invalidReasons: InvalidReasons;
  /** Batches read. */
  batches: number;
  /** Wall time, in milliseconds. */
  durationMs: number;
  /** True when nothing was changed (`dryRun`). */
  dryRun: boolean;
}

/** Why sessions were counted {@link ImportResult.invalid}: how many for each reason. */
export interface InvalidReasons {
  /** Its data is not an express-session session (no valid cookie, not JSON): the store would ignore it. */
  session: number;
  /**
   * Its owner (found by `userId`) is not a value of `user_id`'s type (`userIdType`): an email for an
   * `integer` column, an integer out of the column's range, a malformed `uuid`.
   */
  owner: number;
  /**
   * Its data holds what PostgreSQL jsonb cannot store: a NUL character (\u0000) or a lone surrogate (which
   * connect-pg-simple's `json` column takes), or anything else the database refused in it.
   */
  data: number;
}

/**
 * Copies connect-pg-simple's sessions into connect-drizzle's table, so that moving an app from one store to
 * the other logs no one out. Every unexpired session is copied once: keyed by the hash of its id the store
 * uses (`secrets` as the store's), its data as it is, its expiry (`expire`), its owner by `userId`, a fresh
 * handle, created and last seen now. The old table is read in batches in order of `sid`, and each batch is
 * copied by one statement, which also marks the rows it took in connect-pg-simple's table
 * ({@link IMPORTED_COLUMN}, added by the first run).
 *
 * A session that cannot be stored as it is (its owner not of `user_id`'s type, its data holding what jsonb
 * refuses, such as `\u0000`) is left out and counted in `invalid`, by reason in `invalidReasons`: the
 * others are copied.
 *
 * Safe to run again, and from several instances at once: a session already copied, or already in
 * connect-drizzle's table, is never copied again nor overwritten; a run that stopped halfway goes on
 * where it stopped. The old table and its rows are left in place: drop the table once you no longer run
 * connect-pg-simple anywhere.
 *
 * A session ended in connect-pg-simple after it was copied stays alive in connect-drizzle: run the import
 * when no instance serves requests with connect-pg-simple any more (at boot, before `listen`, is such a time
 * once every instance runs connect-drizzle). `expire` is a timestamp without time zone, read in the time
 * zone of the connection, as connect-pg-simple wrote it: run the import with the same `TimeZone` setting
 * as the app (both normally use the server's).
 *
 * @throws SessionStoreError (`TABLE_MISSING` when either table is not there, `DATABASE` when, for one,
 * `user_id` is not of the type `table` gives it, ...); TypeError for bad arguments
 */
export async function importConnectPgSimple(args: ImportConnectPgSimpleArgs): Promise<ImportResult> {
  if (args === null || typeof args !== "object") {
    throw new TypeError("connect-drizzle: importConnectPgSimple(args) needs an object such as { db }");
  }
  checkOptions(args, IMPORT_ARGS, "importConnectPgSimple");
  // The store's own defaults for db, table, secrets and userId, so the rows are the ones it would find.
  const { db, table, secrets, userId } = resolveOptions({ db: args.db, table: args.table, secrets: args.secrets, userId: args.userId, reaper: false });
  const batchSize = args.batchSize ?? DEFAULT_IMPORT_BATCH;
  const source: Source = { schema: args.fromSchema, name: args.fromTable ?? "session" };
  const dryRun = args.dryRun ?? false;
  const started = performance.now();
  const target = qualifiedName(table);
  const reasons: InvalidReasons = { session: 0, owner: 0, data: 0 };
  const result: ImportResult = { imported: 0, skipped: 0, expired: 0, invalid: 0, invalidReasons: reasons, batches: 0, durationMs: 0, dryRun };
  const leftOut = (reason: keyof InvalidReasons) => {
    result.invalid++;
    reasons[reason]++;
  };
  const userIdType = table.userId.getSQLType();
  try {
    const marked = await prepareSource(db, source, dryRun);
    // A redo reads every row as not yet copied; a dry run only counts as if the marks were gone.
    if (args.redo && marked && !dryRun) await db.execute(sql`update ${sourceTable(source)} set ${sql.identifier(IMPORTED_COLUMN)} = null`);
    const keysOf = keyDeriver(secrets);
    let after: string | undefined;
    for (;;) {
      const rows = rowsOf<SourceRow>(await db.execute(readBatch(source, marked && !args.redo, after, batchSize)));
      if (rows.length === 0) break;
      result.batches++;
      after = rows.at(-1)!.sid;
      const copies: Copy[] = [];
      for (const row of rows) {
        if (!isTrue(row.live)) result.expired++;
        else if (isTrue(row.done)) result.skipped++;
        else {
          const session = row.sess === null || !isValidId(row.sid) ? null : parseSession(row.sess);
          // What the database would refuse is found here: in the copy, one such row fails its whole batch.
          const owner = session ? sessionOwner(userId, session) : null;
          if (!session) leftOut("session");
          else if (jsonbRefuses(row.sess!)) leftOut("data");
          else if (owner !== null && !fitsUserIdType(owner, userIdType)) leftOut("owner");
          else copies.push({ sid: row.sid, keys: keysOf(row.sid), owner, sess: row.sess!, expires: Number(row.expires) });
        }
      }
      if (copies.length > 0) {
        const { copied, refused } = dryRun ? { copied: await countAbsent(db, table, copies), refused: 0 } : await copyEach(db, table, source, copies);
        for (let i = 0; i < refused; i++) leftOut("data");
        result.imported += copied;
        result.skipped += copies.length - copied - refused;
      }
      if (rows.length < batchSize) break;
    }
  } catch (error) {
    if (error instanceof SessionStoreError) throw error;
    if (pgCode(error) === "42804") {
      throw new SessionStoreError(
        "DATABASE",
        `the import from connect-pg-simple failed: a column of ${target} is not of the type the table passed gives it ` +
          `(${String(safeCause(error).message)}, 42804); pass the table your store uses (for user_id, createSessionTable's ` +
          "userIdType: --user-id-type for the CLI)",
        { cause: safeCause(error) },
      );
    }
    throw databaseError(error, target, "the import from connect-pg-simple");
  }
  result.durationMs = Math.round(performance.now() - started);
  return result;
}

/** The default `batchSize` of {@link importConnectPgSimple}. */
export const DEFAULT_IMPORT_BATCH = 1_000;
