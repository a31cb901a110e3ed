import { sql, type SQL } from "drizzle-orm";
import { NOW } from "./clock.js";
import { isTrue, rowsOf } from "./driver.js";
import { pgCode, safeCause, SessionStoreError } from "./errors.js";
import type { AnyPgDatabase } from "./options.js";
import { quotedName } from "./schema.js";

/*
 * connect-pg-simple's table, as the import (import.ts) and `--check-cookie` read it: found, marked with the
 * column that records what was copied, and read in batches.
 */

/**
 * The column the import adds to connect-pg-simple's table: when each session was copied. A copied session
 * is never copied again, so a later run (at every boot, say) cannot bring back a session that ended in
 * connect-drizzle since (a logout deletes its row there, not the old one). connect-pg-simple names its
 * columns in every statement, so it keeps working with the column there.
 */
export const IMPORTED_COLUMN = "connect_drizzle_imported_at";

/** connect-pg-simple's table. */
export interface Source {
  schema: string | undefined;
  name: string;
}

/** A row of connect-pg-simple's table, as a batch reads it. */
export interface SourceRow {
  sid: string;
  /** The data, only for rows to copy: unexpired and not copied before. */
  sess: string | null;
  /** Its expiry, epoch ms. */
  expires: number | string;
  live: unknown;
  done: unknown;
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

export function sourceTable(source: Source): SQL {
  return source.schema === undefined ? sql`${sql.identifier(source.name)}` : sql`${sql.identifier(source.schema)}.${sql.identifier(source.name)}`;
}

function sourceName(source: Source): string {
  return quotedName(source.schema, source.name);
}

/**
 * Checks that connect-pg-simple's table is there, and adds the marker column unless it is there or this is
 * a dry run. Returns whether the column is there (a dry run on a table never imported from has none).
 */
export async function prepareSource(db: AnyPgDatabase, source: Source, dryRun: boolean): Promise<boolean> {
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
export function readBatch(source: Source, marked: boolean, after: string | undefined, limit: number): SQL {
  const live = sql`expire::timestamptz > ${NOW}`;
  const done = marked ? sql`${sql.identifier(IMPORTED_COLUMN)} is not null` : sql`false`;
  const cursor = after === undefined ? sql`` : sql` where sid > ${after}::text`;
  return sql`select sid, case when ${live} and not (${done}) then sess::text end as sess,
      date_part('epoch', expire::timestamptz) * 1000 as expires, ${live} as live, ${done} as done
    from ${sourceTable(source)}${cursor} order by sid limit ${limit}`;
}
