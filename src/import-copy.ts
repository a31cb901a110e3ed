import { sql } from "drizzle-orm";
import { NOW } from "./clock.js";
import { rowsOf } from "./driver.js";
import { isDataException, pgCode } from "./errors.js";
import { newHandle } from "./hash.js";
import { IMPORTED_COLUMN, sourceTable, type Source } from "./import-source.js";
import type { AnyPgDatabase } from "./options.js";
import type { SessionTable } from "./schema.js";
import { col, insertRow } from "./statements.js";

/*
 * The import's writes into connect-drizzle's table (import.ts runs the loop): a batch of sessions copied
 * in one statement, or counted for a dry run.
 */

/** A session to copy. */
export interface Copy {
  sid: string;
  /** Its keys, one per secret: the first is the new row's. */
  keys: string[];
  owner: string | null;
  /** Its data, JSON as read. */
  sess: string;
  expires: number;
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
export async function copyEach(db: AnyPgDatabase, t: SessionTable, source: Source, copies: Copy[]): Promise<{ copied: number; refused: number }> {
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
export async function countAbsent(db: AnyPgDatabase, t: SessionTable, copies: Copy[]): Promise<number> {
  const [row] = rowsOf<{ n: number | string }>(
    await db.execute(sql`select count(*)::int as n from json_to_recordset(${batchJson(copies, false)}::text::json) as r(sid text, key text, others json)
      where not exists (select 1 from ${t} where ${t.key} = r.key or ${t.key} in (select json_array_elements_text(r.others)))`),
  );
  return Number(row?.n ?? 0);
}
