import { is, Placeholder, sql, type SQL } from "drizzle-orm";
import { getTableConfig, PgDialect } from "drizzle-orm/pg-core";
import { createHash } from "node:crypto";
import { Store, type SessionData } from "express-session";
import { settle, type Callback } from "./callback.js";
import { databaseError, SessionStoreError } from "./errors.js";
import { isValidId, keyDeriver, newHandle, type KeyDeriver } from "./hash.js";
import { driverOf, rowsOf, type DriverClient } from "./driver.js";
import { listen, type Listening } from "./notify.js";
import { reap, Reaper, type ReapResult } from "./reaper.js";
import { resolveOptions, type ResolvedOptions, type SessionStoreOptions } from "./options.js";
import type { SessionTable } from "./schema.js";
import { parseSession, sameContent, serialize } from "./serialize.js";

/** Why a session ended, as recorded in `end_reason`. */
export type EndReason = "logout" | "revoked" | "expired" | "rotated";

/**
 * Where a session stands: `active` (usable), `expired` (past its idle or absolute expiry, not yet reaped:
 * `extend` can revalidate it), `ended` (logged out, revoked, rotated, or expired and reaped into history).
 */
export type SessionStatus = "active" | "expired" | "ended";

/** A session as a record, for a "your devices" page or an audit view. Never holds the session id. */
export interface SessionRecord {
  /** Public, stable identifier, safe in a page or URL; pass it to `revoke` or `extend`. Not a session id. */
  handle: string;
  userId: string | null;
  status: SessionStatus;
  createdAt: Date;
  lastSeenAt: Date;
  /** Idle expiry (renewed by activity, every `touchAfter` at most). */
  expiresAt: Date;
  absoluteExpiresAt: Date | null;
  /** The session's display name, from the store's `label` option (default: `session.label`). */
  label: string | null;
  userAgent: string | null;
  ip: string | null;
  endedAt: Date | null;
  endReason: EndReason | null;
  /** Whether this is the session of `current` passed to `list` (mark "this device"). */
  current: boolean;
}

/** Which sessions `list` and `count` return. */
export interface SessionQuery {
  /** The owner, as found by the store's `userId` option. Required. */
  userId: string;
  /** @default "active" */
  status?: SessionStatus | "all";
  /** A session id (e.g. `req.sessionID`) whose record gets `current: true`. */
  current?: string;
  /** Most records returned, newest activity first. @default 100 */
  limit?: number;
}

/**
 * What a loaded session's row held when its request read it, under a symbol key: JSON.stringify,
 * Object.keys and for-in (express-session's copy) all skip it, so it is never serialized or seen.
 */
const LOADED = Symbol("connect-drizzle.loaded");

/** A session's row as read or last written: the skip decisions of touch and set, the version check, the cache. */
interface Loaded {
  /** The session id it was read for (in memory only), so a touch can be skipped without hashing it again. */
  sid: string;
  /** The row's key (the first secret's, or an older one's for rows made before a rotation). */
  key: string;
  /** The stored idle expiry, epoch ms. */
  expires: number;
  /** The stored data. */
  text: string;
  version: number;
  /** The device the row records: a touch is not skipped when the request comes from another one. */
  ua: string | null;
  ip: string | null;
  /** When it was read or written, epoch ms (the cache's ttl counts from it). */
  at: number;
}

function withLoaded<T extends object>(session: T, loaded: Loaded): T {
  (session as any)[LOADED] = loaded;
  return session;
}

/** What the request that holds `session` read, if it read this very session. */
function loadedOf(session: SessionData, sid: string): Loaded | undefined {
  const loaded: Loaded | undefined = (session as any)?.[LOADED];
  return loaded?.sid === sid ? loaded : undefined;
}

/**
 * An express-session store on a Drizzle Postgres table. Session ids are stored only as keyed hashes;
 * rows carry the owner, timestamps, user agent and IP, so sessions can be listed and revoked per user.
 *
 * Every method returns a promise and also calls the optional express-session callback once, on a
 * later tick. A missing, expired or ended session is `null`, never an error.
 */
export class SessionStore extends Store {
  /** @internal */
  protected readonly options: ResolvedOptions;
  /** @internal */
  protected readonly table: SessionTable;
  /** @internal */
  protected readonly tableName: string;
  /** @internal */
  protected readonly keysOf: KeyDeriver;
  /** The read cache (only with the `cache` option) by session id, so a hit costs no hashing; least recently used first. */
  private readonly recent = new Map<string, Loaded>();
  /** Row key to session id, for evictions (NOTIFY payloads are row keys). */
  private readonly sidOfKey = new Map<string, string>();
  /** The NOTIFY channel that evicts sessions from every instance's cache. */
  private readonly channel: string;
  private listening: Listening | undefined;
  /** Whether cached sessions may be served: only while the LISTEN connection is up. */
  private cacheLive = false;
  /** Bumped on every eviction, so a read that raced one is not cached. */
  private evictions = 0;
  private stopProbing: () => void = () => {};
  private readonly reaper: Reaper | undefined;
  private readonly driver: DriverClient;
  /** Hot-path statements built once (node-postgres): SQL text, parameters, statement name. */
  private readonly shapes = new Map<string, { text: string; params: unknown[]; name: string | undefined }>();
  /** Operations in flight, for the `timeout` sweep. */
  private readonly waiting = new Set<{ deadline: number; reject: (error: Error) => void }>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(options: SessionStoreOptions) {
    super();
    this.options = resolveOptions(options);
    this.driver = driverOf(this.options.db);
    this.table = this.options.table;
    const config = getTableConfig(this.table);
    this.tableName = config.schema ? `"${config.schema}"."${config.name}"` : `"${config.name}"`;
    this.keysOf = keyDeriver(this.options.secrets);
    const qualified = config.schema ? `${config.schema}_${config.name}` : config.name;
    this.channel = `connect_drizzle_${qualified}`.slice(0, 63);
    if (this.options.cache) this.startListening();
    if (this.options.reaper) {
      this.reaper = new Reaper((signal) => this.reapWith(signal), this.options.reaper, {
        onReap: (result) => this.emit("reap", result),
        onError: (error) => this.report(error),
      });
      this.reaper.start();
    }
  }

  /**
   * Runs one reaper round now (whether or not the periodic reaper is on): deletes expired sessions, and
   * ended ones past `retainEnded`, in batches; `skipped: true` when another instance was reaping.
   */
  reap(): Promise<ReapResult> {
    return this.reapWith();
  }

  private reapWith(signal?: AbortSignal): Promise<ReapResult> {
    const { db, table, retainEnded, reaper } = this.options;
    return reap({ db, table, retainEnded, batchSize: reaper ? reaper.batchSize : undefined, signal });
  }

  /** Loads a live session; `null` when it is missing, expired or ended. */
  get(sid: string, callback?: Callback<SessionData | null>): Promise<SessionData | null> {
    return settle(this.run("get", () => this.read(sid)), callback);
  }

  /** Saves a session (insert or update, one statement). Unchanged sessions are not rewritten. */
  set(sid: string, session: SessionData, callback?: Callback): Promise<void> {
    return settle(this.run("set", () => this.save(sid, session)), callback);
  }

  /** Ends a session (express-session's destroy and logout). Succeeds when there is no such session. */
  destroy(sid: string, callback?: Callback): Promise<void> {
    return settle(this.run("destroy", async () => void (await this.end(sid, "logout"))), callback);
  }

  /** Renews a session's idle expiry and saves its cookie; skipped while the stored expiry is fresh (`touchAfter`). */
  override touch(sid: string, session: SessionData, callback?: Callback): Promise<void> {
    return settle(this.run("touch", () => this.renew(sid, session)), callback);
  }

  /**
   * Every live session, keyed by its public handle (not by session id: the store never knows the ids,
   * only their hashes).
   */
  override all(callback?: Callback<Record<string, SessionData>>): Promise<Record<string, SessionData>> {
    return settle(this.run("all", () => this.loadAll()), callback);
  }

  /** The number of live sessions. */
  override length(callback?: Callback<number>): Promise<number> {
    return settle(
      this.run("length", async () => {
        const [row] = await this.query<{ n: number }>(sql`select count(*)::int as n from ${this.table} where ${this.live(instant(Date.now()))}`);
        return Number(row?.n ?? 0);
      }),
      callback,
    );
  }

  /** Deletes every session and every ended-session record in the table. */
  override clear(callback?: Callback): Promise<void> {
    return settle(
      this.run("clear", async () => {
        this.evict(["*"]);
        const deleteAll = sql`delete from ${this.table}`;
        await this.query(this.options.notify ? sql`with gone as (${deleteAll}) select pg_notify(${this.channel}, '*')` : deleteAll);
      }),
      callback,
    );
  }

  /**
   * Ends the old session of `req` and gives it a new id (express-session's `req.session.regenerate`,
   * which passport calls on login and logout). The old record ends as `rotated` while it still holds a
   * user, as `logout` once the user was removed from it.
   */
  override regenerate(req: any, callback: (err?: any) => any): void {
    void settle(
      this.run("regenerate", async () => {
        const reason: EndReason = req.session && this.userIdOf(req.session) !== null ? "rotated" : "logout";
        await this.end(req.sessionID, reason);
      }),
      (err) => {
        // express-session assigns generate() to the store when the middleware is created.
        (this as unknown as { generate(req: unknown): void }).generate(req);
        callback(err);
      },
    );
  }

  /** A user's sessions as records, newest activity first. */
  async list(query: SessionQuery): Promise<SessionRecord[]> {
    const { userId, limit, current } = this.checkQuery(query);
    const t = this.table;
    const now = Date.now();
    const isCurrent = current === undefined ? sql`false` : this.byKeys(this.keysOf(current));
    const rows = await this.run("list", () =>
      this.query<RecordRow>(sql`select ${t.handle} as handle, ${t.userId} as user_id, ${msOf(t.createdAt)} as created_at,
          ${msOf(t.lastSeenAt)} as last_seen_at, ${msOf(t.expiresAt)} as expires_at, ${msOf(t.absoluteExpiresAt)} as absolute_expires_at,
          ${t.label} as label, ${t.userAgent} as user_agent, ${t.ip} as ip, ${msOf(t.endedAt)} as ended_at, ${t.endReason} as end_reason,
          ${isCurrent} as current
        from ${t} where ${t.userId} = ${userId} and ${this.statusFilter(query.status, now)}
        order by coalesce(${t.endedAt}, ${t.lastSeenAt}) desc, ${t.handle} limit ${limit}`),
    );
    return rows.map((row) => toRecord(row, now));
  }

  /** How many sessions of a user match (same filter as `list`, without the limit). */
  async count(query: SessionQuery): Promise<number> {
    const { userId } = this.checkQuery(query);
    const t = this.table;
    const [row] = await this.run("count", () =>
      this.query<{ n: number }>(
        sql`select count(*)::int as n from ${t} where ${t.userId} = ${userId} and ${this.statusFilter(query.status, Date.now())}`,
      ),
    );
    return Number(row?.n ?? 0);
  }

  /** The public handle of a live session id (to mark "this device"), or `null`. */
  async handleOf(sessionId: string): Promise<string | null> {
    if (!isValidId(sessionId)) return null;
    const t = this.table;
    const [row] = await this.run("handleOf", () =>
      this.query<{ handle: string }>(sql`select ${t.handle} as handle from ${t} where ${this.byKeys(this.keysOf(sessionId))} and ${this.live(instant(Date.now()))}`),
    );
    return row?.handle ?? null;
  }

  /**
   * Ends a session by its handle, at once, on every app instance. With `userId`, only a session owned by
   * that user is ended (so a user can never end someone else's session by guessing a handle).
   * @returns whether a session was ended
   */
  async revoke(handle: string, options: { userId?: string; reason?: EndReason } = {}): Promise<boolean> {
    if (typeof handle !== "string" || handle.length === 0) return false;
    const t = this.table;
    const owner = options.userId === undefined ? sql`` : sql` and ${t.userId} = ${String(options.userId)}`;
    const rows = await this.run("revoke", () =>
      this.write(sql`${this.endSet(instant(Date.now()), options.reason ?? "revoked")} where ${t.handle} = ${handle} and ${t.endedAt} is null${owner} returning key`),
    );
    return rows.length > 0;
  }

  /**
   * Ends every session of a user ("log out everywhere", e.g. after a password change), or every one but
   * `except` ("log out other devices"): session ids or handles, one or a list.
   * @returns how many sessions were ended
   */
  async revokeUser(userId: string, options: { except?: string | readonly string[]; reason?: EndReason } = {}): Promise<number> {
    if (typeof userId !== "string" && typeof userId !== "number") throw new TypeError("connect-drizzle: revokeUser needs a user id");
    const t = this.table;
    const kept = options.except === undefined ? [] : typeof options.except === "string" ? [options.except] : [...options.except];
    const except =
      kept.length === 0
        ? sql``
        : sql` and not (${this.byKeys(kept.flatMap((id) => this.keysOf(id)))} or ${t.handle} in (${sql.join(kept.map((h) => sql`${h}`), sql`, `)}))`;
    const rows = await this.run("revokeUser", () =>
      this.write(sql`${this.endSet(instant(Date.now()), options.reason ?? "revoked")} where ${t.userId} = ${String(userId)} and ${t.endedAt} is null${except} returning key`),
    );
    return rows.length;
  }

  /**
   * Sets a new idle expiry for a session (longer or shorter). It also revalidates a session that expired
   * but is not yet reaped; an ended session stays ended. The expiry never passes the absolute expiry
   * unless `beyondAbsolute` is set, which moves the absolute expiry too.
   * @returns whether a session was changed
   */
  async extend(handle: string, until: Date, options: { beyondAbsolute?: boolean } = {}): Promise<boolean> {
    const at = until instanceof Date ? until.getTime() : NaN;
    if (!Number.isFinite(at)) throw new TypeError("connect-drizzle: extend(handle, until) needs a valid Date");
    if (typeof handle !== "string" || handle.length === 0) return false;
    const t = this.table;
    const until_ = instant(at);
    const expiry = options.beyondAbsolute
      ? sql`expires_at = ${until_}, absolute_expires_at = greatest(${t.absoluteExpiresAt}, ${until_})`
      : sql`expires_at = least(${until_}, ${t.absoluteExpiresAt})`;
    const rows = await this.run("extend", () =>
      this.write(sql`update ${t} set ${expiry}, version = ${t.version} + 1,
          data = case when jsonb_typeof(${t.data}->'cookie') = 'object' then jsonb_set(${t.data}, '{cookie,expires}', to_jsonb(${iso(at)}::text)) else ${t.data} end
        where ${t.handle} = ${handle} and ${t.endedAt} is null returning key`),
    );
    return rows.length > 0;
  }

  /**
   * Stops the reaper (a round in progress ends after its current batch), the cache's LISTEN connection
   * and every timer. Never closes the database you passed in.
   */
  async close(): Promise<void> {
    await this.reaper?.stop();
    this.stopProbing();
    this.cacheLive = false;
    this.evict(["*"]);
    const listening = this.listening;
    this.listening = undefined;
    await listening?.close();
  }

  private async read(sid: string): Promise<SessionData | null> {
    if (!isValidId(sid)) return null;
    const now = Date.now();
    const cached = this.cached(sid, now);
    if (cached) return withLoaded(parseSession(cached.text)!, { ...cached });
    const keys = this.keysOf(sid);
    const evictions = this.evictions;
    const [row] = await this.shaped<{ key: string; data: string; expires: number; version: number; ua: string | null; ip: string | null }>(
      `get:${keys.length}`,
      keyValues(keys, { now }),
      (v) => {
        const t = this.table;
        // The clock goes in as epoch ms (cheaper than an ISO string on every request).
        return sql`select ${t.key} as key, ${t.data}::text as data, ${msOf(t.expiresAt)} as expires, ${t.version} as version,
            ${t.userAgent} as ua, ${t.ip} as ip
          from ${t} where ${this.byKeys(keyParams(keys, v))} and ${this.live(sql`to_timestamp(${v("now")}::float8 / 1000)`)} limit 1`;
      },
    );
    if (!row) return null;
    const session = parseSession(row.data);
    if (!session) {
      this.report(new SessionStoreError("CORRUPT_ROW", `session row ${keys[0]!.slice(0, 8)}… in ${this.tableName} holds no valid session (no cookie object); treated as missing`));
      return null;
    }
    const loaded: Loaded = { sid, key: row.key, expires: Number(row.expires), text: row.data, version: Number(row.version), ua: row.ua, ip: row.ip, at: now };
    // A read that overlapped an eviction may hold the data from before the write: don't cache it.
    if (evictions === this.evictions) this.cache(loaded);
    return withLoaded(session, loaded);
  }

  /**
   * express-session builds `req.session` from what `get` returned; carry over what was loaded (hidden,
   * never serialized), so this request's own touch and save compare against what this request read.
   */
  override createSession(req: any, data: SessionData): any {
    const loaded: Loaded | undefined = (data as any)?.[LOADED];
    const session = super.createSession(req, data);
    return loaded ? withLoaded(session, loaded) : session;
  }

  /** The cached session, when the cache is on, connected, and the entry is live and within its ttl. */
  private cached(sid: string, now: number): Loaded | undefined {
    const cache = this.options.cache;
    if (!cache || !this.cacheLive) return undefined;
    const entry = this.recent.get(sid);
    if (!entry) return undefined;
    if (entry.expires > now && now - entry.at < cache.ttl) return entry;
    this.uncache(sid);
    return undefined;
  }

  private async save(sid: string, session: SessionData): Promise<void> {
    if (!isValidId(sid)) {
      throw new TypeError("connect-drizzle: a session id must be a well-formed string (express-session's ids always are)");
    }
    const keys = this.keysOf(sid);
    const now = Date.now();
    const expires = this.expiry(session, now);
    const text = serialize(session, this.options.maxSize);
    const loaded = loadedOf(session, sid);
    if (loaded && this.fresh(loaded, expires, now) && sameContent(loaded.text, text)) return;

    const { ua, ip } = requestMetadata(session);
    const absolute = this.options.absoluteTimeout;
    const absoluteAt = absolute === undefined ? null : now + absolute;
    const guarded = this.options.versioned && loaded !== undefined;
    const values: Record<string, unknown> = {
      handle: newHandle(),
      userId: this.userIdOf(session),
      label: this.labelOf(session),
      text,
      expires: iso(expires),
      insertExpires: iso(Math.min(expires, absoluteAt ?? Infinity)),
      absoluteAt: absoluteAt === null ? null : iso(absoluteAt),
      now: iso(now),
      ua,
      ip,
      version: loaded?.version,
    };
    keyValues(keys, values);
    this.evict(keys);
    const rows = await this.shaped<{ key: string; version: number }>(`save:${keys.length}:${guarded}`, values, (v) => {
      const t = this.table;
      // Sessions created before absoluteTimeout was enabled get it counted from their creation.
      const absoluteExpr =
        absolute === undefined ? sql`${t.absoluteExpiresAt}` : sql`coalesce(${t.absoluteExpiresAt}, ${t.createdAt} + ${absolute} * interval '1 millisecond')`;
      // The owner survives the user being removed from the data, so the record of a logout stays in the
      // user's history (passport's logout saves the session without the user, then regenerates it).
      const changes = sql`data = ${v("text")}::jsonb, user_id = coalesce(${v("userId")}::text, ${t.userId}),
        label = coalesce(${v("label")}::text, ${t.label}), expires_at = least(${v("expires")}::timestamptz, ${absoluteExpr}),
        absolute_expires_at = ${absoluteExpr}, last_seen_at = ${v("now")}::timestamptz,
        user_agent = coalesce(${v("ua")}::text, ${t.userAgent}), ip = coalesce(${v("ip")}::text, ${t.ip}), version = ${t.version} + 1`;
      const row = sql`${v("k0")}, ${v("handle")}, ${v("userId")}::text, ${v("label")}::text, ${v("text")}::jsonb, ${v("insertExpires")}::timestamptz,
        ${v("absoluteAt")}::timestamptz, ${v("now")}::timestamptz, ${v("now")}::timestamptz, ${v("ua")}::text, ${v("ip")}::text`;
      const columns = sql`(key, handle, user_id, label, data, expires_at, absolute_expires_at, created_at, last_seen_at, user_agent, ip)`;
      // An ended row (a tombstone) is never revived: a request still in flight when its session was
      // revoked must not bring it back. With `versioned`, a row changed since this request read it is
      // not overwritten either. Rows keyed under an older secret are updated in place.
      const guard = guarded ? sql` and ${t.version} = ${v("version")}::int` : sql``;
      const upsert = sql`insert into ${t} ${columns}`;
      const onConflict = sql`on conflict (key) do update set ${changes} where ${t.endedAt} is null${guard} returning key, version`;
      if (keys.length === 1) return this.notifying(sql`${upsert} values (${row}) ${onConflict}`);
      const inOlder = this.byKeys(keyParams(keys, v).slice(1));
      return this.notifying(
        sql`select key, version from moved union all select key, version from inserted`,
        sql`moved as (update ${t} set ${changes} where ${inOlder} and ${t.endedAt} is null${guard} returning key, version),
          inserted as (${upsert} select ${row} where not exists (select 1 from ${t} where ${inOlder}) ${onConflict})`,
      );
    });
    const [written] = rows;
    if (!written) {
      if (guarded) await this.checkConflict(keys);
      return;
    }
    const now_: Loaded = { sid, key: written.key, expires, text, version: Number(written.version), ua: ua ?? loaded?.ua ?? null, ip: ip ?? loaded?.ip ?? null, at: now };
    withLoaded(session, now_);
    this.cache(now_);
  }

  /** After a guarded save changed nothing: a conflict error, unless the session had ended (then nothing to save). */
  private async checkConflict(keys: string[]): Promise<void> {
    const t = this.table;
    const [row] = await this.query<{ ended: boolean }>(sql`select ${t.endedAt} is not null as ended from ${t} where ${this.byKeys(keys)}`);
    if (row && !row.ended) {
      throw new SessionStoreError(
        "CONFLICT",
        "the session was changed by another request since this one read it; the change was not saved (reload the session and retry)",
      );
    }
  }

  private async renew(sid: string, session: SessionData): Promise<void> {
    if (!isValidId(sid)) return;
    const now = Date.now();
    const expires = this.expiry(session, now);
    const loaded = loadedOf(session, sid);
    const { ua, ip } = requestMetadata(session);
    const sameDevice = loaded && (ua === null || ua === loaded.ua) && (ip === null || ip === loaded.ip);
    if (loaded && sameDevice && this.fresh(loaded, expires, now)) return;
    const keys = this.keysOf(sid);
    const values = keyValues(keys, { expires: iso(expires), now: iso(now), cookie: JSON.stringify(session.cookie ?? {}), ua, ip });
    this.evict(keys);
    const [written] = await this.shaped<{ key: string }>(`touch:${keys.length}`, values, (v) => {
      const t = this.table;
      return this.notifying(sql`update ${t} set expires_at = least(${v("expires")}::timestamptz, ${t.absoluteExpiresAt}),
          last_seen_at = ${v("now")}::timestamptz, data = jsonb_set(${t.data}, '{cookie}', ${v("cookie")}::jsonb),
          user_agent = coalesce(${v("ua")}::text, ${t.userAgent}), ip = coalesce(${v("ip")}::text, ${t.ip})
        where ${this.byKeys(keyParams(keys, v))} and ${this.live(sql`${v("now")}::timestamptz`)}
          and jsonb_typeof(${t.data}->'cookie') = 'object' returning key`);
    });
    if (written && loaded) {
      Object.assign(loaded, { expires, ua: ua ?? loaded.ua, ip: ip ?? loaded.ip });
      this.cache({ ...loaded, at: now });
    }
  }

  /** Ends the session of `sid`: a tombstone with `endedAt` and `endReason`, its data dropped. */
  protected async end(sid: string, reason: EndReason): Promise<boolean> {
    if (!isValidId(sid)) return false;
    const keys = this.keysOf(sid);
    this.evict(keys);
    const rows = await this.shaped(`end:${keys.length}`, keyValues(keys, { now: iso(Date.now()), reason }), (v) =>
      this.notifying(
        sql`${this.endSet(sql`${v("now")}::timestamptz`, v("reason"))} where ${this.byKeys(keyParams(keys, v))} and ${this.table.endedAt} is null returning key`,
      ),
    );
    return rows.length > 0;
  }

  private async loadAll(): Promise<Record<string, SessionData>> {
    const t = this.table;
    const rows = await this.query<{ handle: string; data: string }>(
      sql`select ${t.handle} as handle, ${t.data}::text as data from ${t} where ${this.live(instant(Date.now()))}`,
    );
    const result: Record<string, SessionData> = {};
    for (const row of rows) {
      const session = parseSession(row.data);
      if (session) result[row.handle] = session;
    }
    return result;
  }

  /** `update <table> set` for ending sessions at `at` for `reason`; the caller appends the `where`. @internal */
  protected endSet(at: SQL, reason: SQL | EndReason): SQL {
    const t = this.table;
    return sql`update ${t} set ended_at = ${at}, end_reason = ${reason}::text, data = '{}'::jsonb, version = ${t.version} + 1`;
  }

  /** Rows of a live session at `at`: not ended and not past its expiry (which never exceeds the absolute one). @internal */
  protected live(at: SQL): SQL {
    const t = this.table;
    return sql`${t.endedAt} is null and ${t.expiresAt} > ${at}`;
  }

  private statusFilter(status: SessionQuery["status"], now: number): SQL {
    const t = this.table;
    switch (status ?? "active") {
      case "active":
        return this.live(instant(now));
      case "expired":
        return sql`${t.endedAt} is null and ${t.expiresAt} <= ${instant(now)}`;
      case "ended":
        return sql`${t.endedAt} is not null`;
      case "all":
        return sql`true`;
      default:
        throw new TypeError(`connect-drizzle: status must be "active", "expired", "ended" or "all" (got ${String(status)})`);
    }
  }

  private checkQuery(query: SessionQuery): { userId: string; limit: number; current?: string } {
    if (!query || (typeof query.userId !== "string" && typeof query.userId !== "number")) {
      throw new TypeError("connect-drizzle: list/count need { userId }");
    }
    const limit = query.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 1) throw new TypeError("connect-drizzle: `limit` must be a positive integer");
    return { userId: String(query.userId), limit, current: typeof query.current === "string" ? query.current : undefined };
  }

  /** @internal */
  protected byKeys(keys: Array<string | SQL>): SQL {
    return sql`${this.table.key} in (${sql.join(keys.map((k) => (typeof k === "string" ? sql`${k}` : k)), sql`, `)})`;
  }

  /**
   * Runs a statement that changes sessions and ends in `returning key`, and (with `notify`) evicts the
   * changed keys from every instance's cache in the same statement. Returns one row per changed row. @internal
   */
  protected write<Row extends { key: string } = { key: string }>(statement: SQL): Promise<Row[]> {
    return this.query<Row>(this.notifying(statement));
  }

  /** The statement, with its CTEs, and (with `notify`) the NOTIFY of every changed key. @internal */
  protected notifying(statement: SQL, ctes?: SQL): SQL {
    if (!this.options.notify) return ctes ? sql`with ${ctes} ${statement}` : statement;
    return sql`with ${ctes ? sql`${ctes}, ` : sql``}changed as (${statement})
        select changed.*, pg_notify(${this.channel}, changed.key) from changed`;
  }

  /**
   * Runs a hot-path statement whose SQL depends only on `shape`. On node-postgres drizzle writes it once,
   * with placeholders (`v(name)`), and it is sent with `values` as a named prepared statement (with
   * `prepare`): no SQL building per call, one parse and plan per connection. Elsewhere it is built with
   * the values and run through drizzle.
   */
  private shaped<Row>(shape: string, values: Record<string, unknown>, build: (v: (name: string) => SQL) => SQL): Promise<Row[]> {
    const { kind, client } = this.driver;
    if (kind !== "node-postgres") return this.query<Row>(build((name) => sql`${values[name]}`));
    let statement = this.shapes.get(shape);
    if (!statement) {
      const { sql: text, params } = DIALECT.sqlToQuery(build((name) => sql`${sql.placeholder(name)}`));
      statement = { text, params, name: this.options.prepare ? statementName(text) : undefined };
      this.shapes.set(shape, statement);
    }
    const { text, params, name } = statement;
    const args = params.map((p) => (is(p, Placeholder) ? values[p.name] : p));
    return this.timed(client.query(name ? { name, text, values: args } : { text, values: args })).then((result) => rowsOf<Row>(result));
  }

  /** Forgets sessions locally (`*`: every session); other instances learn it from the NOTIFY. */
  private evict(keys: string[]): void {
    this.evictions++;
    for (const key of keys) {
      if (key === "*") {
        this.recent.clear();
        this.sidOfKey.clear();
      } else {
        const sid = this.sidOfKey.get(key);
        if (sid !== undefined) this.uncache(sid);
      }
    }
  }

  /**
   * The cache is served only while a probe NOTIFY, sent through the app's own database like every write,
   * has come back on the LISTEN connection: a LISTEN that cannot hear the writes (through pgbouncer in
   * transaction mode, say) never turns the cache on. Probes repeat; one that does not return turns the
   * cache off again.
   */
  private startListening(): void {
    const cache = this.options.cache!;
    let pending: string | undefined;
    let timer: NodeJS.Timeout | undefined;
    const probe = () => {
      if (pending !== undefined && this.cacheLive) {
        this.cacheLive = false;
        this.evict(["*"]);
        this.report(new SessionStoreError("DATABASE", "the cache's NOTIFY probe did not come back; cache off until one does"));
      }
      pending = `?probe:${newHandle()}`;
      this.query(sql`select pg_notify(${this.channel}, ${pending})`).catch(() => {});
    };
    const schedule = () => {
      clearInterval(timer);
      timer = setInterval(probe, Math.max(1_000, Math.min(cache.ttl / 2, 30_000)));
      timer.unref();
      this.stopProbing = () => clearInterval(timer);
    };
    const listening = listen(this.options.db, this.channel, {
      onMessage: (payload) => {
        if (!payload.startsWith("?probe:")) return this.evict([payload]);
        if (payload !== pending) return;
        pending = undefined;
        if (!this.cacheLive) {
          // Anything cached before this point may have missed notifications.
          this.evict(["*"]);
          this.cacheLive = true;
        }
      },
      onReady: () => {
        probe();
        schedule();
      },
      onLost: (error) => {
        this.stopProbing();
        pending = undefined;
        this.cacheLive = false;
        this.evict(["*"]);
        this.report(new SessionStoreError("DATABASE", `the cache's LISTEN connection was lost (${error.message}); cache off until it is back`, { cause: error }));
      },
    });
    if (!listening) {
      throw new TypeError(
        "connect-drizzle: `cache` needs a node-postgres (pg) or PGlite database for LISTEN/NOTIFY; remove `cache` for other drivers",
      );
    }
    this.listening = listening;
  }

  /** Runs a statement and returns its rows, whatever the driver's result shape. @internal */
  protected async query<Row = Record<string, unknown>>(statement: SQL): Promise<Row[]> {
    return rowsOf<Row>(await this.timed(this.send(statement)));
  }

  /**
   * On node-postgres, statements go to the pool directly, as named prepared statements (with `prepare`):
   * drizzle still writes the SQL, but the server parses and plans each shape once per connection and the
   * client skips drizzle's per-call work (measured: writes cost 2-3x the client CPU of the raw floor).
   */
  private send(statement: SQL): PromiseLike<unknown> {
    const { kind, client } = this.driver;
    if (kind !== "node-postgres") return this.options.db.execute(statement);
    const { sql: text, params } = DIALECT.sqlToQuery(statement);
    const name = this.options.prepare ? statementName(text) : undefined;
    return client.query(name ? { name, text, values: params } : { text, values: params });
  }

  /** Fails an operation that takes longer than `timeout` (a slow or unreachable database), instead of hanging. */
  private timed<T>(query: PromiseLike<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const waiting = { deadline: Date.now() + this.options.timeout, reject };
      this.waiting.add(waiting);
      this.sweepTimeouts();
      // Drizzle's queries are lazy thenables that run on every then(): this is the only one.
      query.then(
        (value) => {
          this.waiting.delete(waiting);
          resolve(value);
        },
        (error) => {
          this.waiting.delete(waiting);
          reject(error);
        },
      );
    });
  }

  /**
   * One unref'd timer for every operation in flight (cheaper than a timer each on the hot path): fails
   * those past their deadline with TIMEOUT, to within a tenth of `timeout`; stops when none are left.
   */
  private sweepTimeouts(): void {
    if (this.sweeper) return;
    const every = Math.max(10, Math.min(1_000, this.options.timeout / 10));
    this.sweeper = setInterval(() => {
      const now = Date.now();
      for (const waiting of this.waiting) {
        if (waiting.deadline > now) continue;
        this.waiting.delete(waiting);
        waiting.reject(new SessionStoreError("TIMEOUT", `the database did not answer within ${this.options.timeout} ms (the store's timeout option)`));
      }
      if (this.waiting.size === 0) {
        clearInterval(this.sweeper);
        this.sweeper = undefined;
      }
    }, every);
    this.sweeper.unref();
  }

  /** Runs an operation, turning driver errors into errors that say what to do. @internal */
  protected run<T>(action: string, operation: () => Promise<T>): Promise<T> {
    let promise: Promise<T>;
    try {
      promise = operation();
    } catch (error) {
      promise = Promise.reject(error);
    }
    return promise.catch((error) => {
      const ours = error instanceof SessionStoreError || (error instanceof TypeError && error.message.startsWith("connect-drizzle:"));
      throw ours ? error : databaseError(error, this.tableName, action);
    });
  }

  /**
   * Reports a problem that must not fail the request (a corrupt row, a reaper round that failed): emitted
   * as `error` when the app listens for it, written to the console otherwise. @internal
   */
  protected report(error: Error): void {
    if (this.listenerCount("error") > 0) this.emit("error", error);
    else console.warn(error.message);
  }

  /** The idle expiry of a session being saved, epoch ms. */
  private expiry(session: SessionData, now: number): number {
    const cookieExpires = (session as any)?.cookie?.expires;
    const at = cookieExpires == null ? NaN : new Date(cookieExpires).getTime();
    const expires = Number.isFinite(at) ? at : now + this.options.ttl;
    return this.options.idleTimeout === undefined ? expires : Math.min(expires, now + this.options.idleTimeout);
  }

  /** Whether the stored expiry is close enough to the new one that writing it again buys nothing. */
  private fresh(seen: Loaded, expires: number, now: number): boolean {
    const threshold = Math.min(this.options.touchAfter, Math.max(0, expires - now) / 10);
    return expires - seen.expires < threshold;
  }

  private cache(loaded: Loaded): void {
    const max = this.options.cache?.max;
    if (max === undefined) return;
    this.uncache(loaded.sid);
    this.recent.set(loaded.sid, loaded);
    this.sidOfKey.set(loaded.key, loaded.sid);
    if (this.recent.size > max) this.uncache(this.recent.keys().next().value!);
  }

  private uncache(sid: string): void {
    const entry = this.recent.get(sid);
    if (!entry) return;
    this.recent.delete(sid);
    this.sidOfKey.delete(entry.key);
  }

  private labelOf(session: SessionData): string | null {
    const label = this.options.label(session);
    return typeof label === "string" && label.length > 0 ? label.slice(0, 200) : null;
  }

  /** @internal */
  protected userIdOf(session: SessionData): string | null {
    let id: unknown;
    try {
      id = this.options.userId(session);
    } catch (error) {
      throw new SessionStoreError("UNSERIALIZABLE", "the `userId` option threw while reading the session", { cause: error });
    }
    return typeof id === "string" || typeof id === "number" || typeof id === "bigint" ? String(id) : null;
  }
}

/** User agent and client IP of the request a session belongs to (express-session links it as `session.req`). */
function requestMetadata(session: SessionData): { ua: string | null; ip: string | null } {
  const req: any = (session as any)?.req;
  if (!req) return { ua: null, ip: null };
  const ua = req.headers?.["user-agent"];
  const address = req.ip ?? req.socket?.remoteAddress;
  // A dual-stack server sees IPv4 clients as ::ffff:a.b.c.d; record the address people know.
  const ip = typeof address === "string" ? address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, "").slice(0, 64) : null;
  return { ua: typeof ua === "string" ? ua.slice(0, 512) : null, ip };
}

const DIALECT = new PgDialect();

/** Named statements by SQL text: a bounded set, since lists of varying length make new shapes. */
const STATEMENT_NAMES = new Map<string, string>();

function statementName(text: string): string | undefined {
  let name = STATEMENT_NAMES.get(text);
  if (name === undefined && STATEMENT_NAMES.size < 256) {
    name = `connect_drizzle_${createHash("sha256").update(text).digest("base64url").slice(0, 22)}`;
    STATEMENT_NAMES.set(text, name);
  }
  return name;
}

interface RecordRow {
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
  current: boolean;
}

function toRecord(row: RecordRow, now: number): SessionRecord {
  const date = (ms: number | null) => (ms === null || ms === undefined ? null : new Date(Number(ms)));
  const expiresAt = date(row.expires_at)!;
  const endedAt = date(row.ended_at);
  return {
    handle: row.handle,
    userId: row.user_id,
    status: endedAt ? "ended" : expiresAt.getTime() > now ? "active" : "expired",
    createdAt: date(row.created_at)!,
    lastSeenAt: date(row.last_seen_at)!,
    expiresAt,
    absoluteExpiresAt: date(row.absolute_expires_at),
    label: row.label,
    userAgent: row.user_agent,
    ip: row.ip,
    endedAt,
    endReason: row.end_reason,
    current: row.current === true || (row.current as unknown) === "t",
  };
}

/** A timestamp column as epoch milliseconds (a float8, which every driver returns as a number). */
function msOf(column: SQL.Aliased | SQL | object): SQL {
  // date_part is float8 arithmetic (extract() is numeric since PostgreSQL 14, several times slower); the
  // round() makes the float exact again (timestamps here have millisecond precision).
  return sql`round(date_part('epoch', ${column}) * 1000)`;
}

/** A point in time as a timestamptz SQL value. */
function instant(epochMs: number): SQL {
  return sql`${iso(epochMs)}::timestamptz`;
}

/** Adds a session's row keys to a shaped statement's values, as `k0`, `k1`, ... */
function keyValues(keys: string[], values: Record<string, unknown>): Record<string, unknown> {
  keys.forEach((key, i) => (values[`k${i}`] = key));
  return values;
}

/** The placeholders of {@link keyValues}, for a shaped statement's SQL. */
function keyParams(keys: string[], v: (name: string) => SQL): SQL[] {
  return keys.map((_, i) => v(`k${i}`));
}

function iso(epochMs: number): string {
  return new Date(epochMs).toISOString();
}
