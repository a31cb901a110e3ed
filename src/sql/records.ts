import { sql, type SQL } from "drizzle-orm";
import { getTableConfig } from "drizzle-orm/pg-core";
import { lifetime } from "../clock.js";
import type { SessionCapOptions } from "../options.js";
import type { EndReason } from "../reasons.js";
import { col, msOf } from "./fragments.js";
import type { ListCursor, SessionStatus } from "./rows.js";
import { WriteStatements } from "./writes.js";

/**
 * The statements of the records API (a user's sessions listed, counted, revoked, extended), the record
 * of a session's device when it changed (`onBindingChange`), and the
 * catalog query `store.ready()` checks the table with. Built on the contract's statements, so that
 * `Statements` (statements.ts) is one class.
 */
export class RecordStatements extends WriteStatements {
  /** A user's records, newest activity first; `current` is the keys of the session to mark. */
  list(userId: string, status: SessionStatus | "all" | undefined, current: string[] | undefined, limit: number, after?: ListCursor): SQL {
    const t = this.t;
    const isCurrent = current === undefined ? sql`false` : sql`coalesce(${this.byId(current)}, false)`;
    const sortAt = this.newestFirst(status);
    // Keyset: the rows after the cursor's in the order below (newest first, then by handle).
    const at = after && sql`to_timestamp(${after.at}::float8 / 1000)`;
    const page = after ? sql` and (${sortAt} < ${at} or (${sortAt} = ${at} and ${t.handle} > ${after.handle}))` : sql``;
    return sql`select ${t.handle} as handle, ${t.userId}::text as user_id, ${msOf(t.createdAt)} as created_at,
        ${msOf(t.lastSeenAt)} as last_seen_at, ${msOf(this.effectiveExpiry())} as expires_at, ${msOf(this.absoluteExpiry())} as absolute_expires_at,
        ${t.label} as label, ${t.userAgent} as user_agent, ${t.ip} as ip, ${msOf(t.endedAt)} as ended_at, ${t.endReason} as end_reason,
        ${msOf(t.authenticatedAt)} as authenticated_at, ${isCurrent} as current, ${this.statusOf()} as status, ${msOf(sortAt)} as sort_at
      from ${t} where ${t.userId} = ${this.userId(userId)} and ${this.statusFilter(status)}${page}
      order by ${sortAt} desc, ${t.handle} limit ${limit}`;
  }

  /** How many of a user's sessions match, as `n`. */
  count(userId: string, status: SessionStatus | "all" | undefined): SQL {
    const t = this.t;
    return sql`select count(*)::int as n from ${t} where ${t.userId} = ${this.userId(userId)} and ${this.statusFilter(status)}`;
  }

  /** The handle of a live session, by its keys. */
  handleOf(keys: string[]): SQL {
    const t = this.t;
    return sql`select ${t.handle} as handle from ${t} where ${this.byId(keys)} and ${this.live()}`;
  }

  /** Ends a session by handle; `owner` scopes it to a user (`undefined`: any owner). `record`: as {@link end}. */
  revoke(handle: string, reason: EndReason, owner: string | undefined, record = false): SQL {
    return this.ending(reason, sql`${this.t.handle} = ${handle}${this.owned(owner)}`, record);
  }

  /** Ends every session of a user but those whose keys or handles are in `except`. `record`: as {@link end}. */
  revokeUser(userId: string, reason: EndReason, exceptKeys: string[], exceptHandles: string[], record = false): SQL {
    const t = this.t;
    const except =
      exceptHandles.length === 0
        ? sql``
        : sql` and not (coalesce(${this.byId(exceptKeys)}, false) or ${t.handle} in (${sql.join(
            exceptHandles.map((h) => sql`${h}`),
            sql`, `,
          )}))`;
    return this.ending(reason, sql`${t.userId} = ${this.userId(userId)}${except}`, record);
  }

  /**
   * Sets a session's idle expiry to `life` ms from now (capped by the absolute expiry, or moving it with
   * `beyondAbsolute`) and its cookie's `expires` to `cookieExpires`; revalidates an expired row, never an
   * ended one. With `capped` (`maxSessionsPerUser`, run under {@link ownerLock} of the row's owner
   * `capped.owner`): only the row of that owner (null: of none), and when it revalidates an expired row,
   * it does at the cap what a login does ({@link atCap}): the owner's least recently used other live
   * sessions beyond it end as `evicted` (returned as `evicted`), or with `whenFull: "refuse"`, `refused`
   * tells that the owner had `limit` other live sessions (the caller rolls back).
   */
  extend(
    handle: string,
    life: number,
    cookieExpires: string,
    beyondAbsolute: boolean,
    owner: string | undefined,
    capped?: { cap: Required<SessionCapOptions>; owner: string | null },
  ): SQL {
    const t = this.t;
    const target = lifetime(life);
    const absolute = this.absoluteExpiry();
    const expiry = beyondAbsolute
      ? sql`${col(t.expiresAt)} = ${target}, ${col(t.absoluteExpiresAt)} = greatest(${absolute}, ${target})`
      : sql`${col(t.expiresAt)} = least(${target}, ${absolute}), ${col(t.absoluteExpiresAt)} = ${absolute}`;
    const set = sql`${expiry}, ${col(t.version)} = ${t.version} + 1,
        ${col(t.data)} = case when jsonb_typeof(${t.data}->'cookie') = 'object' then jsonb_set(${t.data}, '{cookie,expires}', to_jsonb(${cookieExpires}::text)) else ${t.data} end`;
    const row = sql`${t.handle} = ${handle} and ${t.endedAt} is null${this.owned(owner)}${this.applied()}`;
    if (!capped) return sql`update ${t} set ${set} where ${row} ${this.changed()}`;
    const locked = capped.owner === null ? sql`${t.userId} is null` : sql`${t.userId} = ${this.userId(capped.owner)}`;
    // Whether the row was live before (`target`, this statement's snapshot) and is after (the update's
    // `returning` sees the new row): only a row made live counts against the cap. The update checks `row`
    // again: a row the reaper (or a revoke) ended after this statement's snapshot was taken is re-read
    // once its lock is released, and must not be extended (nor counted extended) then.
    const others = sql`${t.userId} = (select owner_id from written) and ${t.key} not in (select key from written)`;
    const { cte, column } = this.atCap(others, capped.cap, sql`exists (select 1 from written where not written.was_live and written.is_live)`);
    return sql`with target as (select ${t.key} as key, ${this.live()} as was_live from ${t} where ${row} and ${locked}),
      written as (update ${t} set ${set} from target where ${t.key} = target.key and ${row} ${this.changed()}, ${t.userId} as owner_id,
        target.was_live as was_live, ${this.live()} as is_live),
      ${cte}
      select written.key, ${column} from written`;
  }

  // --- The records' pieces

  /**
   * The order of `list`: by last activity, or for ended records by when they ended. Active sessions are
   * never ended, so their order is the user index's own (`user_id, last_seen_at desc`): no sort.
   */
  /** What `list` orders by, newest first: the last activity of live sessions, the end (or last activity) of the others. */
  private newestFirst(status: SessionStatus | "all" | undefined): SQL {
    const t = this.t;
    return (status ?? "active") === "active" ? sql`${t.lastSeenAt}` : sql`coalesce(${t.endedAt}, ${t.lastSeenAt})`;
  }

  /** A record's status, decided in the database. */
  private statusOf(): SQL {
    return sql`case when ${this.t.endedAt} is not null then 'ended' when ${this.live()} then 'active' else 'expired' end`;
  }

  private statusFilter(status: SessionStatus | "all" | undefined): SQL {
    const t = this.t;
    switch (status ?? "active") {
      case "active":
        return this.live();
      case "expired":
        return sql`${t.endedAt} is null and not (${this.live()})`;
      case "ended":
        return sql`${t.endedAt} is not null`;
      case "all":
        return sql`true`;
      default:
        throw new TypeError(`connect-drizzle: status must be "active", "expired", "ended" or "all" (got ${String(status)})`);
    }
  }

  // --- A session's device

  /**
   * Records the device of a request that used a live session from another one than its row records
   * (`onBindingChange`): only while the row still records `was`, so that of the requests that read the
   * old device at once, one reports the change. Returns the record.
   */
  rebind(keys: string[], ua: string, ip: string | null, was: string): SQL {
    const t = this.t;
    return sql`update ${t} set ${col(t.userAgent)} = ${ua}, ${col(t.ip)} = coalesce(${ip}::text, ${t.ip})
      where ${this.byKeys(keys)} and ${this.live()} and ${t.userAgent} = ${was}${this.applied()} ${this.changed()}, ${this.eventColumns()}`;
  }

  // --- The table's check

  /**
   * What `store.ready()` checks, in one catalog query: one row per column of the table (a single row with
   * `column` null when there is no such table), with the schema it is in (or would be: its own, else the
   * first of the search_path) and its name; and whether the database is a standby (`standby`).
   */
  catalog(): SQL {
    const config = getTableConfig(this.t);
    const schema = config.schema === undefined ? sql`current_schema()` : sql`${config.schema}::text`;
    return sql`select coalesce(n.nspname::text, ${schema}) as schema, ${config.name}::text as name, a.attname::text as column,
        pg_is_in_recovery() as standby
      from (select to_regclass(${this.tableName}::text) as oid) r
      left join pg_class c on c.oid = r.oid
      left join pg_namespace n on n.oid = c.relnamespace
      left join pg_attribute a on a.attrelid = r.oid and a.attnum > 0 and not a.attisdropped`;
  }

  /** The columns the store's statements use: every column of the drizzle table. */
  columnNames(): string[] {
    return getTableConfig(this.t).columns.map((column) => column.name);
  }
}
