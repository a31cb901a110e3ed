import { sql, type SQL } from "drizzle-orm";
import { NOW } from "./clock.js";
import { isTrue, rowsOf } from "./driver.js";
import { databaseError, isDataException, pgCode, safeCause, SessionStoreError } from "./errors.js";
import { isValidId, keyDeriver, newHandle } from "./hash.js";
import { checkOptions, is, type OptionChecks } from "./check.js";
import { batchSizeOption, ownerOf, resolveOptions, secretList, sessionTable, STORE_OPTIONS, type AnyPgDatabase, type UserIdOf } from "./options.js";
import { qualifiedName, quotedName, type SessionTable } from "./schema.js";
import { fitsUserIdType } from "./owner.js";
import { jsonbRefuses, parseSession } from "./serialize.js";
import { col, insertRow } from "./statements.js";

/**
 * The column the import adds to connect-pg-simple's table: when each session was copied. A copied session
 * is never copied again, so a later run (at every boot, say) cannot bring back a session that ended in
 * connect-drizzle since (a logout deletes its row there, not the old one). connect-pg-simple names its
 * columns in every statement, so it keeps working with the column there.
 */
export const IMPORTED_COLUMN = "connect_drizzle_imported_at";

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

/** A row of connect-pg-simple's table, as a batch reads it. */
interface SourceRow {
  sid: string;
  /** The data, only for rows to copy: unexpired and not copied before. */
  sess: string | null;
  /** Its expiry, epoch ms. */
  expires: number | string;
  live: unknown;
  done: unknown;
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
          const owner = session ? ownerOf(userId, session) : null;
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

/**
 * Whether connect-pg-simple's table holds the unexpired session `sid` (`--check-cookie`), and whether an
 * import copied it.
 */
export async function sourceSession(
  db: AnyPgDatabase,
  from: { fromTable?: string; fromSchema?: string },
  sid: string,
): Promise<{ inOldTable: boolean; copied: boolean }> {
  const source: Source = { schema: from.fromSchema, name: from.fromTable ?? "session" };
  const marked = await prepareSource(db, source, true);
  const done = marked ? sql`${sql.identifier(IMPORTED_COLUMN)} is not null` : sql`false`;
  const [row] = rowsOf<{ done: unknown }>(
    await db.execute(sql`select ${done} as done from ${sourceTable(source)} where sid = ${sid}::text and expire::timestamptz > ${NOW}`),
  );
  return { inOldTable: row !== undefined, copied: isTrue(row?.done) };
}

/** The default `batchSize` of {@link importConnectPgSimple}. */
export const DEFAULT_IMPORT_BATCH = 1_000;

/** connect-pg-simple's table. */
interface Source {
  schema: string | undefined;
  name: string;
}

/** A session to copy. */
interface Copy {
  sid: string;
  /** Its keys, one per secret: the first is the new row's. */
  keys: string[];
  owner: string | null;
  /** Its data, JSON as read. */
  sess: string;
  expires: number;
}

function sourceTable(source: Source): SQL {
  return source.schema === undefined ? sql`${sql.identifier(source.name)}` : sql`${sql.identifier(source.schema)}.${sql.identifier(source.name)}`;
}

function sourceName(source: Source): string {
  return quotedName(source.schema, source.name);
}

/**
 * Checks that connect-pg-simple's table is there, and adds the marker column unless it is there or this is
 * a dry run. Returns whether the column is there (a dry run on a table never imported from has none).
 */
async function prepareSource(db: AnyPgDatabase, source: Source, dryRun: boolean): Promise<boolean> {
  const regclass =
    source.schema === undefined
      ? sql`to_regclass(format('%I', ${source.name}::text))`
      : sql`to_regclass(format('%I.%I', ${source.schema}::text, ${source.name}::text))`;
  const [found] = rowsOf<{ present: unknown; marked: unknown }>(
    await db.execute(sql`select ${regclass} is not null as present,
      exists (select 1 from pg_attribute where attrelid = ${regclass} and attname = ${IMPORTED_COLUMN} and not attisdropped) as marked`),
  );
  if (!isTrue(found?.present)) {
    throw new SessionStoreError(
      "TABLE_MISSING",
      `connect-pg-simple's table ${sourceName(source)} not found; name the table your PGStore used ` +
        "(its tableName and schemaName options: fromTable and fromSchema, --from-table and --from-schema)",
    );
  }
  if (isTrue(found?.marked) || dryRun) return isTrue(found?.marked);
  const alter = sql`alter table ${sourceTable(source)} add column if not exists ${sql.identifier(IMPORTED_COLUMN)} timestamptz`;
  try {
    await db.transaction(async (tx) => {
      // connect-pg-simple may be serving requests from this table: wait for its lock briefly, not behind a long transaction.
      await tx.execute(sql`set local lock_timeout = '5s'`);
      await tx.execute(alter);
    });
  } catch (error) {
    const why =
      pgCode(error) === "42501"
        ? "the database user is not the table's owner"
        : pgCode(error) === "55P03"
          ? "the table stayed locked for 5 s (retry when it is less busy)"
          : String(safeCause(error).message);
    throw new SessionStoreError(
      "DATABASE",
      `the import could not add the column ${IMPORTED_COLUMN} to ${sourceName(source)} (${why}); it records which sessions were ` +
        `copied, so that a later run never brings back one that ended since. Run the import as the table's owner, or add it ` +
        `yourself: alter table ${sourceName(source)} add column ${IMPORTED_COLUMN} timestamptz`,
      { cause: safeCause(error) },
    );
  }
  return true;
}

/** The next batch of connect-pg-simple's rows after `after`, in order of `sid` (its primary key). */
function readBatch(source: Source, marked: boolean, after: string | undefined, limit: number): SQL {
  const live = sql`expire::timestamptz > ${NOW}`;
  const done = marked ? sql`${sql.identifier(IMPORTED_COLUMN)} is not null` : sql`false`;
  const cursor = after === undefined ? sql`` : sql` where sid > ${after}::text`;
  return sql`select sid, case when ${live} and not (${done}) then sess::text end as sess,
      date_part('epoch', expire::timestamptz) * 1000 as expires, ${live} as live, ${done} as done
    from ${sourceTable(source)}${cursor} order by sid limit ${limit}`;
}

/**
 * Whether the database refused a value in the statement (a data exception, SQLSTATE class 22): a row it
 * cannot store, which the checks before the copy missed. Anything else (a missing table, a column of
 * another type) fails every row alike.
 */
function refusedValue(error: unknown): boolean {
  return isDataException(pgCode(error));
}

/**
 * {@link copyBatch}, and when the database refuses a value in it, the batch again row by row, so that only
 * the rows it refuses are left out. Returns how many were copied, and how many were refused.
 */
async function copyEach(db: AnyPgDatabase, t: SessionTable, source: Source, copies: Copy[]): Promise<{ copied: number; refused: number }> {
  try {
    return { copied: await copyBatch(db, t, source, copies), refused: 0 };
  } catch (error) {
    if (!refusedValue(error)) throw error;
    if (copies.length === 1) return { copied: 0, refused: 1 };
  }
  let copied = 0;
  let refused = 0;
  for (const copy of copies) {
    try {
      copied += await copyBatch(db, t, source, [copy]);
    } catch (error) {
      if (!refusedValue(error)) throw error;
      refused++;
    }
  }
  return { copied, refused };
}

/** The batch as one JSON parameter: the session data goes in as read. */
function batchJson(copies: Copy[], handles: boolean): string {
  const item = (c: Copy) =>
    `{"sid":${JSON.stringify(c.sid)},"key":${JSON.stringify(c.keys[0])},"others":${JSON.stringify(c.keys.slice(1))}` +
    (handles ? `,"handle":${JSON.stringify(newHandle())},"owner":${JSON.stringify(c.owner)},"expires":${c.expires},"data":${c.sess}` : "") +
    "}";
  return `[${copies.map(item).join(",")}]`;
}

/**
 * Copies a batch in one statement: marks the rows in connect-pg-simple's table (those no other run marked
 * first) and inserts those, unless their session is in connect-drizzle's table under any of its keys.
 * The owner travels as text and is cast to `user_id`'s type, as the store's statements cast it.
 * Returns how many were inserted.
 */
async function copyBatch(db: AnyPgDatabase, t: SessionTable, source: Source, copies: Copy[]): Promise<number> {
  const marker = sql.identifier(IMPORTED_COLUMN);
  const { columns, row: copy } = insertRow(t, {
    key: sql`key`,
    handle: sql`handle`,
    userId: sql`owner::${sql.raw(t.userId.getSQLType())}`,
    data: sql`data`,
    expiresAt: sql`to_timestamp(expires / 1000)`,
    createdAt: NOW,
    lastSeenAt: NOW,
  });
  const [row] = rowsOf<{ n: number | string }>(
    await db.execute(sql`with batch as (
        select * from json_to_recordset(${batchJson(copies, true)}::text::json)
          as r(sid text, key text, others json, handle text, owner text, expires float8, data jsonb)
      ), claimed as (
        update ${sourceTable(source)} as s set ${marker} = ${NOW} from batch
        where s.sid = batch.sid and s.${marker} is null returning batch.*
      ), copied as (
        insert into ${t} (${columns})
        select ${copy} from claimed
        where not exists (select 1 from ${t} where ${t.key} in (select json_array_elements_text(claimed.others)))
        on conflict (${col(t.key)}) do nothing returning 1
      )
      select count(*)::int as n from copied`),
  );
  return Number(row?.n ?? 0);
}

/** For a dry run: how many of a batch have no row in connect-drizzle's table under any of their keys. */
async function countAbsent(db: AnyPgDatabase, t: SessionTable, copies: Copy[]): Promise<number> {
  const [row] = rowsOf<{ n: number | string }>(
    await db.execute(sql`select count(*)::int as n from json_to_recordset(${batchJson(copies, false)}::text::json) as r(sid text, key text, others json)
      where not exists (select 1 from ${t} where ${t.key} = r.key or ${t.key} in (select json_array_elements_text(r.others)))`),
  );
  return Number(row?.n ?? 0);
}
