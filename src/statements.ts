import { createHash } from "node:crypto";
import { sql, type SQL } from "drizzle-orm";
import { getTableConfig } from "drizzle-orm/pg-core";
import { lifetime, millis, NOW } from "./clock.js";
import { Shape } from "./driver.js";
import { COOKIE_TAG } from "./seal.js";
import type { EndReason } from "./reasons.js";
import { quotedName, type SessionColumns, type SessionTable } from "./schema.js";

/**
 * Where a session stands: `active` (usable), `expired` (past its idle or absolute expiry, not yet reaped:
 * `extend` can revalidate it), `ended` (logged out, revoked, rotated, or expired and reaped into history).
 */
export type SessionStatus = "active" | "expired" | "ended";

/**
 * What the statements that read or write a session return about its expiry: how long until it (its idle
 * expiry capped by the absolute one) and until the absolute expiry, in ms from the database's now; and
 * how long since its user last authenticated (`authenticated_at`, negative ms from now, null if never).
 */
export interface ExpiryRow {
  expires: number;
  absolute: number | null;
  authenticated?: number | null;
  /** `authenticated_at` itself, epoch ms on the database's clock (exact: a rotation carries it to the new id). */
  authenticated_at?: number | null;
}

/** What a login write (a save that gives a session its user) does besides the write itself, in the same statement. */
export interface LoginWrite {
  /** `maxSessionsPerUser`: ends the user's least recently used live sessions beyond it (reason `evicted`). */
  cap: number | undefined;
  /** Returns the user agents of the user's other recent rows from the same IP (for the `newDevice` check). */
  devices: boolean;
}

/**
 * What a login write with a cap or the device check returns besides the written row: the sessions it
 * ended, and the user agents of the user's other recent rows from the same IP, each as JSON text.
 */
export interface LoginRow {
  handle?: string;
  evicted?: string;
  seen?: string;
}

/** How far back the `newDevice` check looks for the user's rows from the same device, and how many it reads. */
const DEVICE_WINDOW = "30 days";
const DEVICE_ROWS = 50;

/** Up to how many names a merged save removes keys with jsonb's own `-` (see Statements' withoutKeys). */
const FEW_NAMES = 16;

/** A session's row as the lookup returns it (`key` only for several keys, `version` only with `versioned`). */
export type SessionRow = { key?: string; data: string; version?: number; ua: string | null; ip: string | null } & ExpiryRow;

/**
 * The record columns a statement that creates or ends sessions returns when its lifecycle event is wanted
 * (a listener of it): what {@link SessionEvent}s are made of, never the key.
 */
export interface EventRow {
  handle: string;
  user_id: string | null;
  label: string | null;
  user_agent: string | null;
  ip: string | null;
}

/** A record's row, as `list` returns it. */
export interface RecordRow {
  handle: string;
  user_id: string | null;
  created_at: number;
  last_seen_at: number;
  expires_at: number;
  absolute_expires_at: number | null;
  label: string | null;
  user_agent: string | null;
  ip: string | null;
  ended_at: number | null;
  end_reason: EndReason | null;
  authenticated_at: number | null;
  current: boolean;
  status: SessionStatus;
  /** Where the row stands in `list`'s order (epoch ms of its activity, or of its end): its page cursor, with the handle. */
  sort_at: number;
}

/** A position in `list`'s order: after the row of this sort time and handle. */
export interface ListCursor {
  at: number;
  handle: string;
}

/**
 * Every SQL statement of the store for one sessions table, each written once here through the drizzle
 * table's columns: this file answers "what SQL does X send". The hot path's statements are {@link Shape}s,
 * built once per store with named placeholders and run as named prepared statements where the driver
 * allows; the others are built per call.
 *
 * Expiry is decided in SQL, on the database's clock ({@link NOW}); the app only sends lifetimes (`life`,
 * in ms from the database's now).
 */
export class Statements {
  /** The table's quoted, schema-qualified name, for messages. */
  readonly tableName: string;
  /** The NOTIFY channel that evicts sessions from every instance's cache. */
  readonly channel: string;
  /** The NOTIFY channel of the lifecycle events (`broadcast`). */
  readonly eventsChannel: string;
  private readonly shapes = new Map<string, Shape>();
  /** `user_id`'s SQL type (text, integer, bigint, uuid): user ids travel as text and are cast to it. */
  readonly userIdType: string;
  /** The first key of the advisory lock that serializes one user's logins (the second is the user's). */
  private readonly loginLockKey: number;

  constructor(
    private readonly t: SessionTable,
    private readonly settings: {
      absoluteTimeout: number | undefined;
      notify: boolean;
      retainEnded: number;
      versioned: boolean;
    },
  ) {
    const config = getTableConfig(t);
    this.tableName = quotedName(config.schema, config.name);
    const qualified = config.schema ? `${config.schema}_${config.name}` : config.name;
    this.channel = channelName(qualified);
    this.eventsChannel = channelName(`events_${qualified}`);
    this.userIdType = t.userId.getSQLType();
    this.loginLockKey = createHash("sha256").update(`login:${this.tableName}`).digest().readInt32BE(0);
  }

  // --- The express-session contract (shaped: values `k0`, `k1`, ... are the row keys of one session id)

  /**
   * The live row of a session id, under any of its `n` keys (one per secret). Only the columns the store
   * uses: the key only when there are several (with one it is the caller's), the version only with
   * `versioned`.
   */
  get(n: number): Shape {
    return this.shape(`get:${n}`, (v) => {
      const t = this.t;
      const key = n > 1 ? sql`${t.key} as key, ` : sql``;
      const version = this.settings.versioned ? sql`, ${t.version} as version` : sql``;
      return sql`select ${key}${t.data}::text as data, ${this.expiryColumns()}, ${t.userAgent} as ua, ${t.ip} as ip${version}
        from ${t} where ${this.byKeys(keyParams(n, v))} and ${this.live()} limit 1`;
    });
  }

  /**
   * Saves the session a request loaded (`k0` is the row's key): an update, only while the row is live, so
   * a request still in flight when its session ended (or expired, or was reaped) never brings it back.
   * `guarded` (the `versioned` option): only while the row's version is still `version`.
   */
  saveLoaded(guarded: boolean, login?: LoginWrite): Shape {
    return this.shape(`save:loaded:${guarded}${loginKey(login)}`, (v) => {
      const t = this.t;
      const guard = guarded ? sql` and ${t.version} = ${v("version")}::int` : sql``;
      return this.loadedUpdate(v, this.changes(v), guard, this.saved(), login);
    });
  }

  /**
   * The update of a loaded session's row `k0` while it is live (and `where`); with `login` (the session
   * gains a user) it is authenticated now, returns the handle too, and does what goes with a login
   * ({@link login}).
   */
  private loadedUpdate(v: (name: string) => SQL, set: SQL, where: SQL, returning: SQL, login: LoginWrite | undefined): SQL {
    const t = this.t;
    const authenticated = login ? sql`, ${col(t.authenticatedAt)} = ${NOW}` : sql``;
    const handle = login ? sql`, ${t.handle} as handle` : sql``;
    const update = sql`update ${t} set ${set}${authenticated} where ${t.key} = ${v("k0")} and ${this.live()}${where} ${returning}${handle}`;
    return login ? this.login(update, v, login) : update;
  }

  /**
   * Saves the changes of a session a request loaded (`k0` is the row's key), applied to what the row holds
   * now, in this one statement and only while the row is live, like {@link saveLoaded}: the top-level keys
   * named in `removed` (a JSON array of names) are deleted, then those of `patch` (a JSON object) are set,
   * so two requests that change different keys of one session both keep their change. `withData` returns
   * the row's merged data (`data`) for the read cache, which must hold what the row holds.
   */
  saveMerged(withData: boolean, login?: LoginWrite, reseal = false): Shape {
    return this.shape(`save:merged:${withData}:${reseal}${loginKey(login)}`, (v) => {
      const t = this.t;
      const merged = sql`${this.withoutKeys(sql`${t.data}`, v("removed"))} || ${v("patch")}::text::jsonb`;
      const data = reseal ? this.resealed(merged, v("reseal")) : merged;
      const returned = withData ? sql`, ${t.data}::text as data` : sql``;
      return this.loadedUpdate(
        v,
        this.changes(v, data),
        sql`
        and jsonb_typeof(${t.data}) = 'object'`,
        sql`${this.saved()}${returned}`,
        login,
      );
    });
  }

  /**
   * `data` without the top-level keys named in `names` (a JSON array parameter). jsonb's own `-` compares
   * every key with every name, so a save that removes many keys of a large session would cost their
   * product: past a few names, the keys left are gathered through a hashed lookup instead, in time linear
   * in the session's size.
   */
  private withoutKeys(data: SQL, names: SQL): SQL {
    const list = sql`jsonb_array_elements_text(${names}::text::jsonb)`;
    return sql`(case when jsonb_array_length(${names}::text::jsonb) <= ${sql.raw(String(FEW_NAMES))} then ${data} - array(select ${list})
      else (select coalesce(jsonb_object_agg(e.key, e.value), '{}'::jsonb) from jsonb_each(${data}) e where e.key not in (select ${list})) end)`;
  }

  /**
   * `data` with the entries of `reseal` (a JSON array of `{ old, was, new, value }`: see StaleEntry in
   * seal.ts) re-sealed: each entry `old` still holding exactly `was` is removed and, when `new` is given,
   * stored again as `new` = `value`. An entry changed or removed since it was read is left as the row has it.
   */
  private resealed(data: SQL, reseal: SQL): SQL {
    const items = sql`jsonb_to_recordset(${reseal}::text::jsonb) r(old text, was jsonb, new text, value jsonb)`;
    // One pass over the row's keys (a rotation re-seals every entry of a session: no per-pair comparison).
    return sql`(select coalesce(jsonb_object_agg(x.k, x.v), '{}'::jsonb) from (select ${data} as b) d, lateral (
        select e.key as k, e.value as v from jsonb_each(d.b) e where not exists (select 1 from ${items} where r.old = e.key and r.was = e.value)
        union all
        select r.new, r.value from ${items} where r.new is not null and d.b -> r.old = r.was and d.b -> r.new is null
      ) x)`;
  }

  /**
   * Inserts a session id this store did not load (a new session). It sends no cache NOTIFY: no instance
   * can have cached a row that did not exist. Nothing is
   * inserted when a row of the id exists (under any of its `n` keys): then {@link saveExisting}.
   */
  insert(n: number, login?: LoginWrite): Shape {
    return this.shape(`insert:${n}${loginKey(login)}`, (v) => {
      const t = this.t;
      const absolute = this.settings.absoluteTimeout;
      const created = absolute === undefined ? sql`null::timestamptz` : lifetime(absolute);
      // JSON text goes in as text, then jsonb: postgres.js would JSON-encode a string sent as a jsonb
      // parameter (again), and drizzle-orm 1.0 no longer tells it not to.
      const { columns, row } = insertRow(t, {
        key: v("k0"),
        handle: v("handle"),
        userId: this.userId(v("userId")),
        label: sql`${v("label")}::text`,
        data: sql`${v("text")}::text::jsonb`,
        expiresAt: sql`least(${lifetime(v("life"))}, ${created})`,
        absoluteExpiresAt: created,
        createdAt: NOW,
        lastSeenAt: NOW,
        userAgent: sql`${v("ua")}::text`,
        ip: sql`${v("ip")}::text`,
        authenticatedAt: sql`case when ${v("userId")}::text is null then null when ${v("carried")}::boolean then to_timestamp(${v("authenticated")}::float8 / 1000) else ${NOW} end`,
      });
      const values = n === 1 ? sql`values (${row})` : sql`select ${row} where not exists (select 1 from ${t} where ${this.byKeys(keyParams(n, v).slice(1))})`;
      // Only the key comes back: the new row's expiry and version are what was sent (see SessionStore.save),
      // and it was authenticated now when it has a user.
      const insert = sql`insert into ${t} (${columns}) ${values} on conflict (${col(t.key)}) do nothing returning ${t.key} as key, ${msOf(t.authenticatedAt)} as authenticated_at`;
      return login && (login.cap !== undefined || login.devices) ? this.login(insert, v, login) : insert;
    });
  }

  /**
   * A login write (`write`, an insert or an update of the session's row `k0` that gives it the user
   * `userId`, ending in `returning`) with what goes with it, in the same statement: with a `cap`, the
   * user's least recently used other live sessions beyond it end as `evicted` (as a revoke ends them:
   * deleted, or kept as history; NOTIFY with `notify`), only if the write wrote; with `devices`, the user
   * agents of the user's other rows from the same `ip` active within the last 30 days (live, expired,
   * or ended history), at most 50. The other rows are as they were before this statement, so the
   * evictions are counted before the new row exists, and the device check sees the rows they end.
   * Run with a cap under {@link loginLock}, so that two logins of one user see each other's rows.
   */
  private login(write: SQL, v: (name: string) => SQL, { cap, devices }: LoginWrite): SQL {
    const t = this.t;
    // The written row (under whichever of the session's keys) is never one of the user's others.
    const user = sql`${t.userId} = ${this.userId(v("userId"))} and ${t.key} not in (select key from written)`;
    const ctes = [sql`written as (${write})`];
    const columns = [sql`written.*`];
    if (cap !== undefined) {
      ctes.push(this.evictions(user, cap, sql`exists (select 1 from written)`));
      columns.push(this.evictedColumn());
    }
    if (devices) {
      ctes.push(sql`seen as (select ${t.userAgent} as ua from ${t} where ${user} and ${t.ip} = ${v("ip")}::text
        and ${t.lastSeenAt} > ${NOW} - interval '${sql.raw(DEVICE_WINDOW)}' limit ${sql.raw(String(DEVICE_ROWS))})`);
      columns.push(sql`(select coalesce(json_agg(ua), '[]')::text from seen) as seen`);
    }
    return sql`with ${sql.join(ctes, sql`, `)} select ${sql.join(columns, sql`, `)} from written`;
  }

  /**
   * The CTE `evicted`, which ends (as `evicted`) the live rows of `others` (a user's sessions but the one
   * made live) beyond the `cap - 1` most recently used, when `when` holds.
   */
  private evictions(others: SQL, cap: number, when: SQL): SQL {
    const t = this.t;
    const beyond = sql`${t.key} in (select ${t.key} from ${t} where ${others} and ${this.live()} order by ${t.lastSeenAt} desc, ${t.key} offset ${sql.raw(String(cap - 1))})
        and ${when}`;
    return sql`evicted as (${this.ending("evicted", beyond, true)})`;
  }

  /** The rows {@link evictions} ended, as a JSON array of their keys and {@link EventRow}s (`evicted`). */
  private evictedColumn(): SQL {
    return sql`(select coalesce(json_agg(json_build_object('key', key, 'handle', handle, 'user_id', user_id, 'label', label,
        'user_agent', user_agent, 'ip', ip)), '[]')::text from evicted) as evicted`;
  }

  /**
   * Takes the lock that serializes the login writes of one user (with `maxSessionsPerUser`), for the rest
   * of the transaction, and bounds that transaction's waits in the database by `timeout` ms: a login
   * given up on by the app never goes on to write. The lock is keyed on the id as a value of `user_id`'s
   * type, written back as text (its canonical form), so that every spelling Postgres reads as one id
   * (`007` and `7`, a uuid in upper or lower case) takes one lock, as the count compares typed values.
   */
  loginLock(userId: string, timeout: number): SQL {
    return sql`${this.limits(timeout)} select ${this.userLock(this.userId(userId))} from limits`;
  }

  /**
   * {@link loginLock} for the owner of the not yet ended session `handle` (`owner`: only if it is that
   * user's), if it has one; returns the owner (`owner`, as text) of the row it locked for. The row's
   * `user_id` written as text is the canonical form a login locks on.
   */
  ownerLock(handle: string, owner: string | undefined, timeout: number): SQL {
    const t = this.t;
    return sql`${this.limits(timeout)} select ${t.userId}::text as owner, ${this.userLock(sql`${t.userId}`)}
      from ${t}, limits where ${t.handle} = ${handle} and ${t.endedAt} is null and ${t.userId} is not null${this.owned(owner)}`;
  }

  /**
   * Takes one user's lock for the rest of the transaction, from a value of `user_id`'s type: keyed on its
   * canonical text, so that every spelling of one id ("A0EE..." and "a0ee...", "7" and "007") is one lock.
   */
  private userLock(typedUserId: SQL): SQL {
    return sql`pg_advisory_xact_lock(${this.loginLockKey}::int4, hashtext((${typedUserId})::text))`;
  }

  /** The `with` that bounds the rest of the transaction's waits in the database by `timeout` ms (as a CTE `limits`). */
  private limits(timeout: number): SQL {
    const ms = `${Math.ceil(timeout)}ms`;
    return sql`with limits as materialized (select set_config('lock_timeout', ${ms}, true), set_config('statement_timeout', ${ms}, true))`;
  }

  /**
   * Records that the user of a live session just authenticated again (`authenticated_at` = now). Its data
   * and version are untouched: a request that loaded the session before still saves it.
   */
  markAuthenticated(keys: string[]): SQL {
    const t = this.t;
    return sql`update ${t} set ${col(t.authenticatedAt)} = ${NOW} where ${this.byKeys(keys)} and ${this.live()} ${this.changed()}`;
  }

  /**
   * Saves a session id this store did not load whose row exists (a direct `store.set` of a known id, or
   * a row keyed under an older secret): an update, unless the row ended, which is never revived (an
   * expired one is: it is live again). With `login` (a session with a user, under `maxSessionsPerUser`)
   * it also does what goes with a login ({@link login}), the handle returned, since it may make a session
   * of the user live.
   */
  saveExisting(n: number, login?: LoginWrite): Shape {
    return this.shape(`save:existing:${n}${loginKey(login)}`, (v) => {
      const t = this.t;
      const handle = login ? sql`, ${t.handle} as handle` : sql``;
      const update = sql`update ${t} set ${this.changes(v)} where ${this.byKeys(keyParams(n, v))} and ${t.endedAt} is null ${this.saved()}${handle}`;
      return login ? this.login(update, v, login) : update;
    });
  }

  /**
   * Renews a live session's expiry and writes its cookie (`cookie`, JSON) and device, nothing else. With
   * `tagged` (`encrypt`), the cookie's tag too (`tags`: a JSON object of each row key's tag).
   */
  touch(n: number, tagged = false): Shape {
    return this.shape(`touch:${n}:${tagged}`, (v) => {
      const t = this.t;
      const absoluteAt = this.absoluteExpiry();
      const cookie = sql`jsonb_set(${t.data}, '{cookie}', ${v("cookie")}::text::jsonb)`;
      const data = tagged ? sql`${cookie} || jsonb_build_object(${COOKIE_TAG}::text, ${v("tags")}::text::jsonb -> ${t.key})` : cookie;
      return sql`update ${t} set ${col(t.expiresAt)} = least(${lifetime(v("life"))}, ${absoluteAt}),
          ${col(t.absoluteExpiresAt)} = ${absoluteAt}, ${col(t.lastSeenAt)} = ${NOW}, ${col(t.data)} = ${data},
          ${col(t.userAgent)} = coalesce(${v("ua")}::text, ${t.userAgent}), ${col(t.ip)} = coalesce(${v("ip")}::text, ${t.ip})
        where ${this.byKeys(keyParams(n, v))} and ${this.live()}
          and jsonb_typeof(${t.data}->'cookie') = 'object' ${this.changed()}, ${this.expiryColumns()}`;
    });
  }

  /**
   * Ends the session of a session id for `reason` (destroy, regenerate); `record`: it also returns the
   * ended row's {@link EventRow} (a listener of `ended`, or `broadcast`, wants it). Without, it is the plain statement.
   */
  end(n: number, record = false): Shape {
    return this.shape(record ? `end:${n}:record` : `end:${n}`, (v) => this.ending(v("reason"), this.byKeys(keyParams(n, v)), record));
  }

  /**
   * Records the end of a row with history as a rotation rather than a logout (@fastify/session's
   * regenerate ends the old session with a plain destroy). Ended rows are never cached: no NOTIFY.
   */
  rotated(key: string): SQL {
    const t = this.t;
    return sql`update ${t} set ${col(t.endReason)} = 'rotated' where ${t.key} = ${key} and ${t.endReason} = 'logout'`;
  }

  /** After a guarded save changed nothing: whether the row is still live (then it was a conflict). */
  isLive(keys: string[]): SQL {
    return sql`select ${this.live()} as live from ${this.t} where ${this.byKeys(keys)}`;
  }

  /** Every live session's handle, data and key. */
  all(): SQL {
    const t = this.t;
    return sql`select ${t.handle} as handle, ${t.data}::text as data, ${t.key} as key from ${t} where ${this.live()}`;
  }

  /** The number of live sessions, as `n`. */
  length(): SQL {
    return sql`select count(*)::int as n from ${this.t} where ${this.live()}`;
  }

  /** Deletes every row, and evicts every instance's whole cache. */
  clear(): SQL {
    const deleteAll = sql`delete from ${this.t}`;
    return this.settings.notify ? sql`with gone as (${deleteAll}) select pg_notify(${this.channel}, '*')` : deleteAll;
  }

  /**
   * With `broadcast`, the NOTIFY of an operation's lifecycle events, sealed by the store (SQL cannot seal
   * them, so they leave after the write, in this one statement), one notification per payload in order.
   * The payloads go as one JSON array text parameter, which every driver sends alike.
   */
  broadcast(payloads: readonly string[]): SQL {
    return sql`select pg_notify(${this.eventsChannel}, p) from json_array_elements_text(${JSON.stringify(payloads)}::text::json) p`;
  }

  /** A NOTIFY on a channel: the cache's (the default), or `broadcast`'s (a LISTEN's probe). */
  notify(payload: string, channel: string = this.channel): SQL {
    return sql`select pg_notify(${channel}, ${payload})`;
  }

  /**
   * What `store.ready()` checks, in one catalog query: one row per column of the table (a single row with
   * `column` null when there is no such table), with the schema it is in (or would be: its own, else the
   * first of the search_path) and its name.
   */
  catalog(): SQL {
    const config = getTableConfig(this.t);
    const schema = config.schema === undefined ? sql`current_schema()` : sql`${config.schema}::text`;
    return sql`select coalesce(n.nspname::text, ${schema}) as schema, ${config.name}::text as name, a.attname::text as column
      from (select to_regclass(${this.tableName}::text) as oid) r
      left join pg_class c on c.oid = r.oid
      left join pg_namespace n on n.oid = c.relnamespace
      left join pg_attribute a on a.attrelid = r.oid and a.attnum > 0 and not a.attisdropped`;
  }

  /** The columns the store's statements use: every column of the drizzle table. */
  columnNames(): string[] {
    return getTableConfig(this.t).columns.map((column) => column.name);
  }

  // --- The records API

  /** A user's records, newest activity first; `current` is the keys of the session to mark. */
  list(userId: string, status: SessionStatus | "all" | undefined, current: string[] | undefined, limit: number, after?: ListCursor): SQL {
    const t = this.t;
    const isCurrent = current === undefined ? sql`false` : this.byKeys(current);
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
    return sql`select ${t.handle} as handle from ${t} where ${this.byKeys(keys)} and ${this.live()}`;
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
        : sql` and not (${this.byKeys(exceptKeys)} or ${t.handle} in (${sql.join(
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
   * the owner's least recently used other live sessions beyond the cap end as `evicted`, as a login ends
   * them; returns them as `evicted` ({@link evictedColumn}).
   */
  extend(
    handle: string,
    life: number,
    cookieExpires: string,
    beyondAbsolute: boolean,
    owner: string | undefined,
    capped?: { cap: number; owner: string | null },
  ): SQL {
    const t = this.t;
    const target = lifetime(life);
    const absolute = this.absoluteExpiry();
    const expiry = beyondAbsolute
      ? sql`${col(t.expiresAt)} = ${target}, ${col(t.absoluteExpiresAt)} = greatest(${absolute}, ${target})`
      : sql`${col(t.expiresAt)} = least(${target}, ${absolute}), ${col(t.absoluteExpiresAt)} = ${absolute}`;
    const set = sql`${expiry}, ${col(t.version)} = ${t.version} + 1,
        ${col(t.data)} = case when jsonb_typeof(${t.data}->'cookie') = 'object' then jsonb_set(${t.data}, '{cookie,expires}', to_jsonb(${cookieExpires}::text)) else ${t.data} end`;
    const row = sql`${t.handle} = ${handle} and ${t.endedAt} is null${this.owned(owner)}`;
    if (!capped) return sql`update ${t} set ${set} where ${row} ${this.changed()}`;
    const locked = capped.owner === null ? sql`${t.userId} is null` : sql`${t.userId} = ${this.userId(capped.owner)}`;
    // Whether the row was live before (`target`, this statement's snapshot) and is after (the update's
    // `returning` sees the new row): only a row made live counts against the cap. The update checks `row`
    // again: a row the reaper (or a revoke) ended after this statement's snapshot was taken is re-read
    // once its lock is released, and must not be extended (nor counted extended) then.
    const others = sql`${t.userId} = (select owner_id from written) and ${t.key} not in (select key from written)`;
    return sql`with target as (select ${t.key} as key, ${this.live()} as was_live from ${t} where ${row} and ${locked}),
      written as (update ${t} set ${set} from target where ${t.key} = target.key and ${row} ${this.changed()}, ${t.userId} as owner_id,
        target.was_live as was_live, ${this.live()} as is_live),
      ${this.evictions(others, capped.cap, sql`exists (select 1 from written where not written.was_live and written.is_live)`)}
      select written.key, ${this.evictedColumn()} from written`;
  }

  // --- Pieces

  /**
   * Rows of a live session now, on the database's clock: not ended, not past the idle expiry, and not past
   * the absolute one (for rows made before `absoluteTimeout` was set too, counted from their creation).
   */
  live(): SQL {
    const t = this.t;
    const absolute = this.settings.absoluteTimeout === undefined ? sql`` : sql` and ${this.absoluteExpiry()} > ${NOW}`;
    return sql`${t.endedAt} is null and ${t.expiresAt} > ${NOW}${absolute}`;
  }

  /** `key in (...)`. */
  byKeys(keys: Array<string | SQL>): SQL {
    return sql`${this.t.key} in (${sql.join(
      keys.map((k) => (typeof k === "string" ? sql`${k}` : k)),
      sql`, `,
    )})`;
  }

  /**
   * `returning key` of a statement that changes existing sessions, with (`notify`) the NOTIFY of each
   * changed key: RETURNING runs once per row the statement changed, so a statement that changes no row
   * sends none (and does not take the commit-serializing NOTIFY lock), and one that does notifies in
   * its own transaction.
   */
  private changed(): SQL {
    const t = this.t;
    return this.settings.notify ? sql`returning ${t.key} as key, pg_notify(${this.channel}, ${t.key})` : sql`returning ${t.key} as key`;
  }

  /**
   * Ends the not yet ended sessions matching `where`, now, for `reason`. Without history (`retainEnded`
   * 0) the row is deleted: a save of a loaded session only ever updates a live row, so no tombstone is
   * needed to keep a request in flight from bringing it back. With history it becomes a record of the
   * end, its data dropped.
   */
  private ending(reason: SQL | EndReason, where: SQL, record = false): SQL {
    const t = this.t;
    const returning = sql`${this.changed()}${record ? sql`, ${this.eventColumns()}` : sql``}`;
    if (this.settings.retainEnded === 0) return sql`delete from ${t} where ${where} and ${t.endedAt} is null ${returning}`;
    return sql`update ${t} set ${col(t.endedAt)} = ${NOW}, ${col(t.endReason)} = ${reason}::text, ${col(t.data)} = '{}'::jsonb,
        ${col(t.version)} = ${t.version} + 1 where ${where} and ${t.endedAt} is null ${returning}`;
  }

  /** The {@link EventRow} columns, for a `returning`. */
  private eventColumns(): SQL {
    const t = this.t;
    return sql`${t.handle} as handle, ${t.userId}::text as user_id, ${t.label} as label, ${t.userAgent} as user_agent, ${t.ip} as ip`;
  }

  /**
   * What a save writes into an existing row: `data` (the whole session sent as `text`, by default), and the
   * columns. A null `userId` or `label` leaves the column as it is (a merged save sends them only when its
   * request changed them, so that the columns keep naming what the row's data names).
   */
  private changes(v: (name: string) => SQL, data: SQL = sql`${v("text")}::text::jsonb`): SQL {
    const t = this.t;
    const absoluteAt = this.absoluteExpiry();
    // The owner survives the user being removed from the data, so the record of a logout stays in the
    // user's history (passport's logout saves the session without the user, then regenerates it).
    return sql`${col(t.data)} = ${data}, ${col(t.userId)} = coalesce(${this.userId(v("userId"))}, ${t.userId}),
      ${col(t.label)} = coalesce(${v("label")}::text, ${t.label}), ${col(t.expiresAt)} = least(${lifetime(v("life"))}, ${absoluteAt}),
      ${col(t.absoluteExpiresAt)} = ${absoluteAt}, ${col(t.lastSeenAt)} = ${NOW},
      ${col(t.userAgent)} = coalesce(${v("ua")}::text, ${t.userAgent}), ${col(t.ip)} = coalesce(${v("ip")}::text, ${t.ip}), ${col(t.version)} = ${t.version} + 1`;
  }

  /** The `returning` of a save (the version only with `versioned`, the only use of it). */
  private saved(): SQL {
    const version = this.settings.versioned ? sql`, ${this.t.version} as version` : sql``;
    return sql`${this.changed()}, ${this.expiryColumns()}${version}`;
  }

  /**
   * The order of `list`: by last activity, or for ended records by when they ended. Active sessions are
   * never ended, so their order is the user index's own (`user_id, last_seen_at desc`): no sort.
   */
  /** What `list` orders by, newest first: the last activity of live sessions, the end (or last activity) of the others. */
  private newestFirst(status: SessionStatus | "all" | undefined): SQL {
    const t = this.t;
    return (status ?? "active") === "active" ? sql`${t.lastSeenAt}` : sql`coalesce(${t.endedAt}, ${t.lastSeenAt})`;
  }

  /** ` and user_id = ...`, or nothing for any owner. */
  private owned(owner: string | undefined): SQL {
    return owner === undefined ? sql`` : sql` and ${this.t.userId} = ${this.userId(owner)}`;
  }

  /**
   * A user id (sent as text) as a value of `user_id`'s type, so an integer, bigint or uuid column compares
   * with its own type and the user index serves the lookup.
   */
  private userId(value: string | SQL): SQL {
    return sql`${value}::${sql.raw(this.userIdType)}`;
  }

  /**
   * The absolute expiry of a row: its column, or with `absoluteTimeout`, for rows made before it was set,
   * their creation plus it.
   */
  private absoluteExpiry(): SQL {
    const t = this.t;
    const absolute = this.settings.absoluteTimeout;
    return absolute === undefined ? sql`${t.absoluteExpiresAt}` : sql`coalesce(${t.absoluteExpiresAt}, ${t.createdAt} + ${millis(absolute)})`;
  }

  /** The moment a row stops being live (ended aside): its idle expiry, capped by the absolute one. */
  private effectiveExpiry(): SQL {
    return this.settings.absoluteTimeout === undefined ? sql`${this.t.expiresAt}` : sql`least(${this.t.expiresAt}, ${this.absoluteExpiry()})`;
  }

  /** The {@link ExpiryRow} columns of a statement that reads or writes a session. */
  private expiryColumns(): SQL {
    const t = this.t;
    return sql`${msLeft(this.effectiveExpiry())} as expires, ${msLeft(this.absoluteExpiry())} as absolute, ${msLeft(t.authenticatedAt)} as authenticated,
      ${msOf(t.authenticatedAt)} as authenticated_at`;
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

  private shape(key: string, build: (v: (name: string) => SQL) => SQL): Shape {
    let shape = this.shapes.get(key);
    if (!shape) this.shapes.set(key, (shape = new Shape(build)));
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

/** The part of a shape's cache key that tells its login variant. */
function loginKey(login: LoginWrite | undefined): string {
  return login ? `:login:${login.cap ?? ""}:${login.devices}` : "";
}

/** Adds a session's row keys to a shaped statement's values, as `k0`, `k1`, ... */
export function keyValues(keys: readonly string[], values: Record<string, unknown>): Record<string, unknown> {
  for (const [i, key] of keys.entries()) values[`k${i}`] = key;
  return values;
}

/** The placeholders of {@link keyValues}. */
function keyParams(n: number, v: (name: string) => SQL): SQL[] {
  return Array.from({ length: n }, (_, i) => v(`k${i}`));
}

/** A timestamp as epoch milliseconds (a float8, which every driver returns as a number). */
function msOf(value: SQL | object): SQL {
  // date_part is float8 arithmetic (extract() is numeric since PostgreSQL 14, several times slower); the
  // round() makes the float exact again (timestamps here have millisecond precision).
  return sql`round(date_part('epoch', ${value}) * 1000)`;
}

/** Milliseconds from the database's now until a timestamp (float8 arithmetic, as {@link msOf}). */
function msLeft(value: SQL | object): SQL {
  return sql`round((date_part('epoch', ${value}) - date_part('epoch', ${NOW})) * 1000)`;
}

/** A column's bare name, for an insert's column list or an update's `set` (where drizzle's qualified form is not allowed). */
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

export function col(column: { name: string }): SQL {
  return sql`${sql.identifier(column.name)}`;
}
