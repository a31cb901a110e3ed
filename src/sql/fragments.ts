import { sql, type SQL } from "drizzle-orm";
import { getTableConfig } from "drizzle-orm/pg-core";
import { millis, NOW } from "../clock.js";
import { Shape } from "../executor.js";
import type { EndReason } from "../reasons.js";
import { quotedName, type SessionColumns, type SessionTable } from "../schema.js";

/**
 * What every statement of the store for one sessions table is built from: its names, and the SQL pieces
 * that both the express-session contract's statements (sql/writes.ts) and the records API's use.
 * The hot path's statements are {@link Shape}s, built once per store with named placeholders and run as
 * named prepared statements where the driver allows; the others are built per call.
 *
 * Expiry is decided in SQL, on the database's clock ({@link NOW}); the app only sends lifetimes (`life`,
 * in ms from the database's now).
 */
export class Fragments {
  /** The table's quoted, schema-qualified name, for messages. */
  readonly tableName: string;
  /** The NOTIFY channel that evicts sessions from every instance's cache. */
  readonly channel: string;
  /** The NOTIFY channel of the lifecycle events (`broadcast`). */
  readonly eventsChannel: string;
  private readonly shapes = new Map<string, Shape>();
  /** `user_id`'s SQL type (text, integer, bigint, uuid): user ids travel as text and are cast to it. */
  readonly userIdType: string;

  constructor(
    protected readonly t: SessionTable,
    protected readonly settings: {
      absoluteTimeout: number | undefined;
      retainEnded: number;
      versioned: boolean;
      /**
       * Each write of a session (an end, a save, a touch) commits only once the synchronous standbys have
       * applied it (`synchronous_commit = remote_apply` for its transaction), so that a read from one of
       * them after it resolved sees it: the `replicaReads` option's window 0. See {@link applied}.
       */
      applied?: boolean;
    },
  ) {
    const config = getTableConfig(t);
    this.tableName = quotedName(config.schema, config.name);
    const qualified = config.schema ? `${config.schema}_${config.name}` : config.name;
    this.channel = channelName(qualified);
    this.eventsChannel = channelName(`events_${qualified}`);
    this.userIdType = t.userId.getSQLType();
  }

  /**
   * Rows of a live session now, on the database's clock: not ended, not past the idle expiry, and not past
   * the absolute one (for rows made before `absoluteTimeout` was set too, counted from their creation).
   *
   * Always a filter of rows found by another index (a key, a handle, a user), never a way to find them: the
   * expiry test is wrapped in `is true` (the same result, `expires_at` being not null), which no index on
   * `expires_at` serves. Without it, a plan made while the table was small or its statistics stale (a
   * prepared statement keeps its plan until the next ANALYZE) could walk the expiry index, which holds
   * every live session, for a lookup of one row: a BitmapAnd with it, or a scan of it filtered by key.
   */
  live(): SQL {
    const t = this.t;
    const absolute = this.settings.absoluteTimeout === undefined ? sql`` : sql` and ${this.absoluteExpiry()} > ${NOW}`;
    return sql`${t.endedAt} is null and (${t.expiresAt} > ${NOW}${absolute}) is true`;
  }

  /**
   * `key = any(...)` of `keys`, the row keys of many session ids as one JSON array text parameter (the
   * statements that coalesced calls share, see coalesce.ts; {@link anyOf}).
   */
  anyKey(keys: SQL): SQL {
    return sql`${this.t.key} = ${anyOf(keys)}`;
  }

  /** `key in (...)`. */
  byKeys(keys: Array<string | SQL>): SQL {
    return sql`${this.t.key} in (${list(keys)})`;
  }

  /**
   * The row of a session id, by its keys (one per secret): under its current key, or under a key it was
   * rotated away from while that still opens it (its grace window, see {@link rotatedFrom}). `anyTime`: an
   * old key whenever it comes (an end: a sign-out with an old cookie always ends the session).
   */
  byId(keys: Array<string | SQL>, anyTime = false): SQL {
    // Both sides as they are, so that the planner looks them up in their indexes (a BitmapOr); null for a
    // row never rotated that is not the id's: `not` of it needs a coalesce.
    return sql`(${this.byKeys(keys)} or ${this.rotatedFrom(this.keyArray(keys), anyTime)})`;
  }

  /**
   * The row was rotated away from one of `keys` (a text[]: `previous_keys ?|`, which its GIN index
   * serves), and unless `anyTime`, that key is still within its grace window ({@link inGrace}).
   */
  protected rotatedFrom(keys: SQL, anyTime: boolean): SQL {
    const rotated = sql`${this.t.previousKeys} ?| ${keys}`;
    return anyTime ? rotated : sql`${rotated} and ${this.inGrace(keys)}`;
  }

  /** A session id's keys (or their placeholders) as a text[]. */
  protected keyArray(keys: Array<string | SQL>): SQL {
    return sql`array[${list(keys)}]::text[]`;
  }

  /** Whether one of `keys` (a text[]) the row was rotated away from still opens it. */
  protected inGrace(keys: SQL): SQL {
    return sql`exists (select 1 from jsonb_each_text(${this.t.previousKeys}) p where p.key = any(${keys}) and p.value::timestamptz > ${NOW})`;
  }

  /**
   * `returning key` of a statement that changes existing sessions: the store announces the keys to every
   * instance's cache once the statement committed (the context's `changed`, invalidation.ts).
   */
  protected changed(): SQL {
    return sql`returning ${this.t.key} as key`;
  }

  /**
   * Ends the not yet ended sessions matching `where`, now, for `reason`. Without history (`retainEnded`
   * 0) the row is deleted: a save of a loaded session only ever updates a live row, so no tombstone is
   * needed to keep a request in flight from bringing it back. With history it becomes a record of the
   * end, its data dropped. `also`: more `returning` columns.
   */
  protected ending(reason: SQL | EndReason, where: SQL, record = false, also: SQL = sql``): SQL {
    const t = this.t;
    const returning = sql`${this.changed()}${record ? sql`, ${this.eventColumns()}` : sql``}${also}`;
    const ended = sql`${t.endedAt} is null${this.applied()}`;
    if (this.settings.retainEnded === 0) return sql`delete from ${t} where ${where} and ${ended} ${returning}`;
    return sql`update ${t} set ${endedRow(t, NOW, sql`${reason}::text`)} where ${where} and ${ended} ${returning}`;
  }

  /**
   * With `applied`, ` and` a condition that always holds and sets the transaction's synchronous_commit to
   * remote_apply: the plan evaluates it once, before its scan (a one-time filter), so it costs no
   * statement or round trip of its own. Every statement that writes a session's row has it in its
   * `where`; without `applied`, nothing.
   */
  protected applied(): SQL {
    return this.settings.applied ? sql` and (select set_config('synchronous_commit', 'remote_apply', true)) is not null` : sql``;
  }

  /** The {@link EventRow} columns, for a `returning`. */
  protected eventColumns(): SQL {
    const t = this.t;
    return sql`${t.handle} as handle, ${t.userId}::text as user_id, ${t.label} as label, ${t.userAgent} as user_agent, ${t.ip} as ip`;
  }

  /** ` and user_id = ...`, or nothing for any owner. */
  protected owned(owner: string | undefined): SQL {
    return owner === undefined ? sql`` : sql` and ${this.t.userId} = ${this.userId(owner)}`;
  }

  /**
   * A user id (sent as text) as a value of `user_id`'s type, so an integer, bigint or uuid column compares
   * with its own type and the user index serves the lookup.
   */
  protected userId(value: string | SQL): SQL {
    return sql`${value}::${sql.raw(this.userIdType)}`;
  }

  /**
   * The absolute expiry of a row: its column, or with `absoluteTimeout`, for rows made before it was set,
   * their creation plus it.
   */
  protected absoluteExpiry(): SQL {
    const t = this.t;
    const absolute = this.settings.absoluteTimeout;
    return absolute === undefined ? sql`${t.absoluteExpiresAt}` : sql`coalesce(${t.absoluteExpiresAt}, ${t.createdAt} + ${millis(absolute)})`;
  }

  /** The moment a row stops being live (ended aside): its idle expiry, capped by the absolute one. */
  protected effectiveExpiry(): SQL {
    return this.settings.absoluteTimeout === undefined ? sql`${this.t.expiresAt}` : sql`least(${this.t.expiresAt}, ${this.absoluteExpiry()})`;
  }

  /** The {@link ExpiryRow} columns of a statement that reads or writes a session. */
  protected expiryColumns(): SQL {
    const t = this.t;
    return sql`${msLeft(this.effectiveExpiry())} as expires, ${msLeft(this.absoluteExpiry())} as absolute, ${msLeft(t.authenticatedAt)} as authenticated,
      ${msOf(t.authenticatedAt)} as authenticated_at, ${msLeft(sql`coalesce(${t.rotatedAt}, ${t.createdAt})`)} as issued`;
  }

  /**
   * What a statement that makes a session of a user live does at the cap `cap` (`maxSessionsPerUser`), as
   * a CTE and a column of its final select; `others` picks the user's sessions but the one made live.
   * `"evict"`: the CTE `evicted` ends (as `evicted`) the live rows of `others` beyond the `limit - 1` most
   * recently used, when `when` holds; the column is {@link evictedColumn}. `"refuse"`: the CTE `refused`
   * holds a row when `others` already has `limit` live rows and `when` holds; the column `refused` says
   * so, and the caller then rolls the statement's transaction back, so that it wrote nothing. Both count
   * the rows of the statement's snapshot, taken under the user's login lock.
   */
  protected atCap(others: SQL, cap: { limit: number; whenFull: "evict" | "refuse" }, when: SQL): { cte: SQL; column: SQL } {
    const t = this.t;
    const limit = sql.raw(String(cap.limit));
    if (cap.whenFull === "evict") {
      const beyond = sql`${t.key} in (select ${t.key} from ${t} where ${others} and ${this.live()} order by ${t.lastSeenAt} desc, ${t.key} offset ${sql.raw(String(cap.limit - 1))})
        and ${when}`;
      return { cte: sql`evicted as (${this.ending("evicted", beyond, true)})`, column: this.evictedColumn() };
    }
    // Counted up to the limit only: a user far over it (a lowered limit) costs no more than one at it.
    const full = sql`select 1 from (select 1 from ${t} where ${others} and ${this.live()} limit ${limit}) o having count(*) >= ${limit} and ${when}`;
    return { cte: sql`refused as (${full})`, column: sql`exists (select 1 from refused) as refused` };
  }

  /** The rows the `evicted` CTE of {@link atCap} ended, as a JSON array of their keys and {@link EventRow}s (`evicted`). */
  private evictedColumn(): SQL {
    return sql`(select coalesce(json_agg(json_build_object('key', key, 'handle', handle, 'user_id', user_id, 'label', label,
        'user_agent', user_agent, 'ip', ip)), '[]')::text from evicted) as evicted`;
  }

  /** The statement of one variant (`key`), built by `build` the first time it is asked for. */
  protected shape(key: string, build: (v: (name: string) => SQL) => SQL, idempotent = false): Shape {
    let shape = this.shapes.get(key);
    if (!shape) this.shapes.set(key, (shape = new Shape(build, idempotent)));
    return shape;
  }
}

/**
 * The NOTIFY channel of a table, LISTENed to in quotes on every driver (so case, dots, dashes and any
 * character but `"`, which becomes `_`, are kept). Postgres cuts identifiers at 63 bytes (not characters)
 * and pg_notify refuses longer names, so a long or non-ASCII table name is cut at a character boundary
 * within 63 bytes.
 */
export function channelName(qualified: string): string {
  let name = "";
  let bytes = 0;
  // No double quote: PGlite's listen reads a name in quotes as written, and cannot take one inside.
  for (const char of `connect_drizzle_${qualified.replaceAll('"', "_")}`) {
    bytes += Buffer.byteLength(char, "utf8");
    if (bytes > 63) break;
    name += char;
  }
  return name;
}

/** A list of keys (or placeholders) for `in (...)`. */
function list(keys: Array<string | SQL>): SQL {
  return sql.join(
    keys.map((k) => (typeof k === "string" ? sql`${k}` : k)),
    sql`, `,
  );
}

/**
 * `any(...)` of a JSON array text parameter of keys: one parameter whatever the count (drizzle would spread
 * a list into one parameter per key, a new statement per length), compared as an array so that the
 * planner looks each key up in an index.
 */
function anyOf(keys: SQL): SQL {
  return sql`any(${arrayOf(keys)})`;
}

/** The keys of a JSON array text parameter as a text[]. */
export function arrayOf(keys: SQL): SQL {
  return sql`array(select jsonb_array_elements_text(${keys}::text::jsonb))`;
}

/** Adds a session's row keys to a shaped statement's values, as `k0`, `k1`, ... */
export function keyValues(keys: readonly string[], values: Record<string, unknown>): Record<string, unknown> {
  for (const [i, key] of keys.entries()) values[`k${i}`] = key;
  return values;
}

/** The placeholders of {@link keyValues}. */
export function keyParams(n: number, v: (name: string) => SQL): SQL[] {
  return Array.from({ length: n }, (_, i) => v(`k${i}`));
}

/** A timestamp as epoch milliseconds (a float8, which every driver returns as a number). */
export function msOf(value: SQL | object): SQL {
  // date_part is float8 arithmetic (extract() is numeric since PostgreSQL 14, several times slower); the
  // round() makes the float exact again (timestamps here have millisecond precision).
  return sql`round(date_part('epoch', ${value}) * 1000)`;
}

/** Milliseconds from the database's now until a timestamp (float8 arithmetic, as {@link msOf}). */
function msLeft(value: SQL | object): SQL {
  return sql`round((date_part('epoch', ${value}) - date_part('epoch', ${NOW})) * 1000)`;
}

/**
 * What ending a row sets, wherever a row ends (an operation, now; the reaper, at its expiry): when and why
 * it ended, its data dropped, and its version moved on, so a save that read the live row changes nothing.
 */
export function endedRow(t: SessionTable, at: SQL | SessionTable["expiresAt"], reason: SQL): SQL {
  return sql`${col(t.endedAt)} = ${at}, ${col(t.endReason)} = ${reason}, ${col(t.data)} = '{}'::jsonb, ${col(t.version)} = ${t.version} + 1`;
}

/**
 * The column list and the values of a new session row, from one map of column to value: the one place
 * an insert names its columns (the store's insert, the import's copy), so the two lists cannot disagree.
 * Columns left out get their defaults.
 */
export function insertRow(t: SessionTable, values: Partial<Record<keyof SessionColumns, unknown>>): { columns: SQL; row: SQL } {
  const entries = Object.entries(values) as Array<[keyof SessionColumns, unknown]>;
  return {
    columns: sql.join(
      entries.map(([name]) => col(t[name])),
      sql`, `,
    ),
    row: sql.join(
      entries.map(([, value]) => sql`${value}`),
      sql`, `,
    ),
  };
}

/** A column's bare name, for an insert's column list or an update's `set` (where drizzle's qualified form is not allowed). */
export function col(column: { name: string }): SQL {
  return sql`${sql.identifier(column.name)}`;
}
