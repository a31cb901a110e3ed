import { is, Placeholder, sql, type SQL } from "drizzle-orm";
import { getTableConfig, PgDialect } from "drizzle-orm/pg-core";
import { createHash } from "node:crypto";
import { Store, type SessionData } from "express-session";
import { settle, type Callback } from "./callback.js";
import { lifetime, millis, NOW } from "./clock.js";
import { databaseError, SessionStoreError } from "./errors.js";
import { isValidId, keyDeriver, newHandle, type KeyDeriver } from "./hash.js";
import { driverOf, isTrue, rowsOf, type DriverClient } from "./driver.js";
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

/**
 * Whose session `revoke` and `extend` may change: the owner's own (`{ userId }`, for a "your devices"
 * page: a guessed handle of someone else's session changes nothing), or any session (`{ anyOwner: true }`,
 * for admin tools). There is no default: a `userId` that is `undefined` or `null` is a TypeError, never an
 * unscoped call.
 */
export type OwnerScope = { userId: string | number; anyOwner?: never } | { anyOwner: true; userId?: never };

/** Options of {@link SessionStore.revoke}. */
export type RevokeOptions = OwnerScope & {
  /** Recorded as the end reason. @default "revoked" */
  reason?: EndReason;
};

/** Options of {@link SessionStore.extend}. */
export type ExtendOptions = OwnerScope & {
  /** Move the absolute expiry too, when `until` is past it. @default false (the expiry stops at the absolute one) */
  beyondAbsolute?: boolean;
};

/** Which sessions `list` and `count` return. */
export interface SessionQuery {
  /** The owner, as found by the store's `userId` option (numbers match their string form). Required. */
  userId: string | number;
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
  /**
   * When the row stops being live, on this server's clock (epoch ms): its idle expiry, capped by the
   * absolute one. Converted from the database's clock with the offset seen by the statement that read or
   * wrote it, so it errs early by at most that statement's round trip.
   */
  expires: number;
  /** The absolute expiry on this server's clock, or null when the session has none. */
  absolute: number | null;
  /** The stored data. */
  text: string;
  version: number;
  /** The device the row records: a touch is not skipped when the request comes from another one. */
  ua: string | null;
  ip: string | null;
  /**
   * Until when the cache may serve it, on the monotonic clock (`performance.now()`): its expiry, or its
   * cache `ttl` from when it was read or written, whichever comes first. Monotonic, so that this server's
   * wall clock being stepped (NTP, a resumed VM) can never stretch how long an entry is served.
   */
  servedUntil: number;
}

/** When a statement was sent, on this server's wall clock (lifetimes) and on the monotonic one (the cache). */
interface Sent {
  wall: number;
  mono: number;
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

/** What the statements that read or write a session return about its expiry (epoch ms on the database's clock). */
interface ExpiryRow {
  expires: number;
  absolute: number | null;
  now: number;
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
  /**
   * Bumped on every eviction (local or from a NOTIFY): a read or write that overlapped one may hold a row
   * from before the change that caused it, so its result is not cached.
   */
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
    this.channel = channelName(config.schema ? `${config.schema}_${config.name}` : config.name);
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
   * ended ones past `retainEnded`, in batches; `skipped: true` when another instance was reaping. Each
   * statement of the round is bounded by the store's `timeout`.
   */
  reap(): Promise<ReapResult> {
    return this.reapWith();
  }

  private reapWith(signal?: AbortSignal): Promise<ReapResult> {
    const { db, table, retainEnded, reaper, timeout } = this.options;
    return reap({ db, table, retainEnded, batchSize: reaper ? reaper.batchSize : undefined, signal, timeout });
  }

  /** Loads a live session; `null` when it is missing, expired or ended. */
  get(sid: string, callback?: Callback<SessionData | null>): Promise<SessionData | null> {
    return settle(this.run("get", () => this.read(sid)), callback);
  }

  /**
   * Saves a session. A session this request loaded (`req.session`, or what `get` returned) is updated in
   * place, and only while it is live: a save never brings back a session that ended or expired meanwhile.
   * A session the store did not load here (a new id) is inserted. Unchanged sessions are not rewritten.
   */
  set(sid: string, session: SessionData, callback?: Callback): Promise<void> {
    return settle(this.run("set", () => this.save(sid, session)), callback);
  }

  /** Ends a session (express-session's destroy and logout). Succeeds when there is no such session. */
  destroy(sid: string, callback?: Callback): Promise<void> {
    return settle(this.run("destroy", async () => void (await this.end(sid, "logout"))), callback);
  }

  /**
   * Renews a session's idle expiry and saves its cookie; skipped while the new expiry is later than the
   * stored one by less than `touchAfter` (an earlier expiry is always written).
   */
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
        const [row] = await this.query<{ n: number }>(sql`select count(*)::int as n from ${this.table} where ${this.live()}`);
        return Number(row?.n ?? 0);
      }),
      callback,
    );
  }

  /** Deletes every session and every ended-session record in the table. */
  override clear(callback?: Callback): Promise<void> {
    return settle(
      this.run("clear", async () => {
        const deleteAll = sql`delete from ${this.table}`;
        this.evict(["*"]);
        await this.query(this.options.notify ? sql`with gone as (${deleteAll}) select pg_notify(${this.channel}, '*')` : deleteAll);
        this.evict(["*"]);
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
    const isCurrent = current === undefined ? sql`false` : this.byKeys(this.keysOf(current));
    const rows = await this.run("list", () =>
      this.query<RecordRow>(sql`select ${t.handle} as handle, ${t.userId} as user_id, ${msOf(t.createdAt)} as created_at,
          ${msOf(t.lastSeenAt)} as last_seen_at, ${msOf(this.effectiveExpiry())} as expires_at, ${msOf(this.absoluteExpiry())} as absolute_expires_at,
          ${t.label} as label, ${t.userAgent} as user_agent, ${t.ip} as ip, ${msOf(t.endedAt)} as ended_at, ${t.endReason} as end_reason,
          ${isCurrent} as current, ${this.statusOf()} as status
        from ${t} where ${t.userId} = ${userId} and ${this.statusFilter(query.status)}
        order by coalesce(${t.endedAt}, ${t.lastSeenAt}) desc, ${t.handle} limit ${limit}`),
    );
    return rows.map(toRecord);
  }

  /** How many sessions of a user match (same filter as `list`, without the limit). */
  async count(query: SessionQuery): Promise<number> {
    const { userId } = this.checkQuery(query);
    const t = this.table;
    const [row] = await this.run("count", () =>
      this.query<{ n: number }>(sql`select count(*)::int as n from ${t} where ${t.userId} = ${userId} and ${this.statusFilter(query.status)}`),
    );
    return Number(row?.n ?? 0);
  }

  /** The public handle of a live session id (to mark "this device"), or `null`. */
  async handleOf(sessionId: string): Promise<string | null> {
    if (!isValidId(sessionId)) return null;
    const t = this.table;
    const [row] = await this.run("handleOf", () =>
      this.query<{ handle: string }>(sql`select ${t.handle} as handle from ${t} where ${this.byKeys(this.keysOf(sessionId))} and ${this.live()}`),
    );
    return row?.handle ?? null;
  }

  /**
   * Ends a session by its handle, at once: this store no longer serves it when the promise resolves, and
   * no instance reads it from the database again. Scoped to an owner (`{ userId }`, so a user can never
   * end someone else's session by guessing a handle) or explicitly to any owner (`{ anyOwner: true }`).
   * @returns whether a session was ended
   * @throws TypeError when the scope is missing, or `userId` is `undefined` or `null`
   */
  async revoke(handle: string, options: RevokeOptions): Promise<boolean> {
    const owner = this.ownerFilter(options, "revoke");
    if (typeof handle !== "string" || handle.length === 0) return false;
    const t = this.table;
    const rows = await this.run("revoke", () =>
      this.write(sql`${this.endSet(options.reason ?? "revoked")} where ${t.handle} = ${handle} and ${t.endedAt} is null${owner} returning ${t.key} as key`),
    );
    return rows.length > 0;
  }

  /**
   * Ends every session of a user ("log out everywhere", e.g. after a password change), or every one but
   * `except` ("log out other devices"): session ids or handles, one or a list.
   * @returns how many sessions were ended
   */
  async revokeUser(userId: string | number, options: { except?: string | readonly string[]; reason?: EndReason } = {}): Promise<number> {
    if (typeof userId !== "string" && typeof userId !== "number") throw new TypeError("connect-drizzle: revokeUser needs a user id");
    const t = this.table;
    const kept = options.except === undefined ? [] : typeof options.except === "string" ? [options.except] : [...options.except];
    const except =
      kept.length === 0
        ? sql``
        : sql` and not (${this.byKeys(kept.flatMap((id) => this.keysOf(id)))} or ${t.handle} in (${sql.join(kept.map((h) => sql`${h}`), sql`, `)}))`;
    const rows = await this.run("revokeUser", () =>
      this.write(sql`${this.endSet(options.reason ?? "revoked")} where ${t.userId} = ${String(userId)} and ${t.endedAt} is null${except} returning ${t.key} as key`),
    );
    return rows.length;
  }

  /**
   * Sets a new idle expiry for a session (longer or shorter), scoped like {@link revoke}. It also
   * revalidates a session that expired but is not yet reaped; an ended session stays ended. The expiry
   * never passes the absolute expiry unless `beyondAbsolute` is set, which moves the absolute expiry too.
   * `until` is read on this server's clock, as a lifetime from now.
   * @returns whether a session was changed
   * @throws TypeError when `until` is not a valid Date, or the scope is missing
   */
  async extend(handle: string, until: Date, options: ExtendOptions): Promise<boolean> {
    const at = until instanceof Date ? until.getTime() : NaN;
    if (!Number.isFinite(at)) throw new TypeError("connect-drizzle: extend(handle, until, { userId }) needs a valid Date");
    const owner = this.ownerFilter(options, "extend");
    if (typeof handle !== "string" || handle.length === 0) return false;
    const t = this.table;
    const target = lifetime(at - this.now());
    const absolute = this.absoluteExpiry();
    const expiry = options.beyondAbsolute
      ? sql`${col(t.expiresAt)} = ${target}, ${col(t.absoluteExpiresAt)} = greatest(${absolute}, ${target})`
      : sql`${col(t.expiresAt)} = least(${target}, ${absolute}), ${col(t.absoluteExpiresAt)} = ${absolute}`;
    const rows = await this.run("extend", () =>
      this.write(sql`update ${t} set ${expiry}, ${col(t.version)} = ${t.version} + 1,
          ${col(t.data)} = case when jsonb_typeof(${t.data}->'cookie') = 'object' then jsonb_set(${t.data}, '{cookie,expires}', to_jsonb(${iso(at)}::text)) else ${t.data} end
        where ${t.handle} = ${handle} and ${t.endedAt} is null${owner} returning ${t.key} as key`),
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

  /**
   * This server's wall clock, epoch ms. It only measures lifetimes (a cookie's `expires` minus now); the
   * database's clock decides expiry, and in-process durations (the cache, timeouts) use the monotonic clock. @internal
   */
  protected now(): number {
    return Date.now();
  }

  private async read(sid: string): Promise<SessionData | null> {
    if (!isValidId(sid)) return null;
    const sent = this.sent();
    const cached = this.cached(sid, sent.mono);
    if (cached) return withLoaded(parseSession(cached.text)!, { ...cached });
    const keys = this.keysOf(sid);
    const evictions = this.evictions;
    const [row] = await this.shaped<{ key: string; data: string; version: number; ua: string | null; ip: string | null } & ExpiryRow>(
      `get:${keys.length}`,
      keyValues(keys, {}),
      (v) => {
        const t = this.table;
        return sql`select ${t.key} as key, ${t.data}::text as data, ${this.expiryColumns()}, ${t.version} as version,
            ${t.userAgent} as ua, ${t.ip} as ip
          from ${t} where ${this.byKeys(keyParams(keys, v))} and ${this.live()} limit 1`;
      },
    );
    if (!row) return null;
    const session = parseSession(row.data);
    if (!session) {
      this.report(new SessionStoreError("CORRUPT_ROW", `session row ${keys[0]!.slice(0, 8)}… in ${this.tableName} holds no valid session (its data or cookie is malformed); treated as missing`));
      return null;
    }
    const loaded: Loaded = { sid, key: row.key, text: row.data, version: Number(row.version), ua: row.ua, ip: row.ip, ...this.localExpiry(row, sent) };
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
  private cached(sid: string, mono: number): Loaded | undefined {
    if (!this.options.cache || !this.cacheLive) return undefined;
    const entry = this.recent.get(sid);
    if (!entry) return undefined;
    if (entry.servedUntil > mono) return entry;
    this.uncache(sid);
    return undefined;
  }

  private async save(sid: string, session: SessionData): Promise<void> {
    if (!isValidId(sid)) {
      throw new TypeError("connect-drizzle: a session id must be a well-formed string (express-session's ids always are)");
    }
    const sent = this.sent();
    const now = sent.wall;
    const target = this.expiry(session, now);
    const text = serialize(session, this.options.maxSize);
    const loaded = loadedOf(session, sid);
    if (loaded && this.fresh(loaded, target, now) && sameContent(loaded.text, text)) return;

    const keys = loaded ? [loaded.key] : this.keysOf(sid);
    const { ua, ip } = requestMetadata(session);
    const absolute = this.options.absoluteTimeout;
    const guarded = this.options.versioned && loaded !== undefined;
    const values: Record<string, unknown> = {
      handle: newHandle(),
      userId: this.userIdOf(session),
      label: this.labelOf(session),
      text,
      life: target - now,
      ua,
      ip,
      version: loaded?.version,
    };
    keyValues(keys, values);
    this.evict(keys);
    const evictions = this.evictions;
    const shape = loaded ? "save:loaded" : `save:new:${keys.length}`;
    const rows = await this.shaped<{ key: string; version: number } & ExpiryRow>(shape, values, (v) => {
      const t = this.table;
      const absoluteAt = this.absoluteExpiry();
      // The owner survives the user being removed from the data, so the record of a logout stays in the
      // user's history (passport's logout saves the session without the user, then regenerates it).
      const changes = sql`${col(t.data)} = ${v("text")}::jsonb, ${col(t.userId)} = coalesce(${v("userId")}::text, ${t.userId}),
        ${col(t.label)} = coalesce(${v("label")}::text, ${t.label}), ${col(t.expiresAt)} = least(${lifetime(v("life"))}, ${absoluteAt}),
        ${col(t.absoluteExpiresAt)} = ${absoluteAt}, ${col(t.lastSeenAt)} = ${NOW},
        ${col(t.userAgent)} = coalesce(${v("ua")}::text, ${t.userAgent}), ${col(t.ip)} = coalesce(${v("ip")}::text, ${t.ip}), ${col(t.version)} = ${t.version} + 1`;
      const returning = sql`returning ${t.key} as key, ${t.version} as version, ${this.expiryColumns()}`;
      if (loaded) {
        // What this request loaded is updated only while it is live: a request still in flight when its
        // session ended (or expired, or was reaped) must not bring it back. With `versioned`, a row changed
        // since this request read it is not overwritten either.
        const guard = guarded ? sql` and ${t.version} = ${v("version")}::int` : sql``;
        return this.notifying(sql`update ${t} set ${changes} where ${t.key} = ${v("k0")} and ${this.live()}${guard} ${returning}`);
      }
      const created = absolute === undefined ? sql`null::timestamptz` : lifetime(absolute);
      const row = sql`${v("k0")}, ${v("handle")}, ${v("userId")}::text, ${v("label")}::text, ${v("text")}::jsonb,
        least(${lifetime(v("life"))}, ${created}), ${created}, ${NOW}, ${NOW}, ${v("ua")}::text, ${v("ip")}::text`;
      const columns = sql.join([t.key, t.handle, t.userId, t.label, t.data, t.expiresAt, t.absoluteExpiresAt, t.createdAt, t.lastSeenAt, t.userAgent, t.ip].map(col), sql`, `);
      // A new id whose row exists (a direct store.set of a known id) updates it, unless it ended: an
      // ended row is never revived. Rows keyed under an older secret are updated in place.
      const upsert = sql`insert into ${t} (${columns})`;
      const onConflict = sql`on conflict (${col(t.key)}) do update set ${changes} where ${t.endedAt} is null ${returning}`;
      if (keys.length === 1) return this.notifying(sql`${upsert} values (${row}) ${onConflict}`);
      const inOlder = this.byKeys(keyParams(keys, v).slice(1));
      return this.notifying(
        sql`select * from moved union all select * from inserted`,
        sql`moved as (update ${t} set ${changes} where ${inOlder} and ${t.endedAt} is null ${returning}),
          inserted as (${upsert} select ${row} where not exists (select 1 from ${t} where ${inOlder}) ${onConflict})`,
      );
    });
    const [written] = rows;
    if (!written) {
      if (guarded) await this.checkConflict(keys);
      return;
    }
    const next: Loaded = {
      sid,
      key: written.key,
      text,
      version: Number(written.version),
      ua: ua ?? loaded?.ua ?? null,
      ip: ip ?? loaded?.ip ?? null,
      ...this.localExpiry(written, sent),
    };
    this.remember(session, next, evictions);
  }

  /**
   * After a write: what the row now holds becomes what this request compares its next save or touch with,
   * and is cached, unless an eviction came after `evictions` was read (another instance may have ended the
   * session right after this write, its NOTIFY overtaking the reply).
   */
  private remember(session: SessionData, next: Loaded, evictions: number): void {
    withLoaded(session, next);
    if (evictions === this.evictions) this.cache(next);
  }

  /** After a guarded save changed nothing: a conflict error, unless the session is no longer live (then nothing to save). */
  private async checkConflict(keys: string[]): Promise<void> {
    const t = this.table;
    const [row] = await this.query<{ live: boolean }>(sql`select ${this.live()} as live from ${t} where ${this.byKeys(keys)}`);
    if (row && isTrue(row.live)) {
      throw new SessionStoreError(
        "CONFLICT",
        "the session was changed by another request since this one read it; the change was not saved (reload the session and retry)",
      );
    }
  }

  private async renew(sid: string, session: SessionData): Promise<void> {
    if (!isValidId(sid)) return;
    const sent = this.sent();
    const now = sent.wall;
    const target = this.expiry(session, now);
    const loaded = loadedOf(session, sid);
    const { ua, ip } = requestMetadata(session);
    const sameDevice = loaded && (ua === null || ua === loaded.ua) && (ip === null || ip === loaded.ip);
    if (loaded && sameDevice && this.fresh(loaded, target, now)) return;
    // The touch writes only the cookie, but the row must stay within maxSize like any save.
    serialize(session, this.options.maxSize);
    const keys = loaded ? [loaded.key] : this.keysOf(sid);
    const values = keyValues(keys, { life: target - now, cookie: JSON.stringify(session.cookie ?? {}), ua, ip });
    this.evict(keys);
    const evictions = this.evictions;
    const [written] = await this.shaped<{ key: string } & ExpiryRow>(`touch:${keys.length}`, values, (v) => {
      const t = this.table;
      const absoluteAt = this.absoluteExpiry();
      return this.notifying(sql`update ${t} set ${col(t.expiresAt)} = least(${lifetime(v("life"))}, ${absoluteAt}),
          ${col(t.absoluteExpiresAt)} = ${absoluteAt}, ${col(t.lastSeenAt)} = ${NOW}, ${col(t.data)} = jsonb_set(${t.data}, '{cookie}', ${v("cookie")}::jsonb),
          ${col(t.userAgent)} = coalesce(${v("ua")}::text, ${t.userAgent}), ${col(t.ip)} = coalesce(${v("ip")}::text, ${t.ip})
        where ${this.byKeys(keyParams(keys, v))} and ${this.live()}
          and jsonb_typeof(${t.data}->'cookie') = 'object' returning ${t.key} as key, ${this.expiryColumns()}`);
    });
    if (written && loaded) this.remember(session, { ...loaded, ua: ua ?? loaded.ua, ip: ip ?? loaded.ip, ...this.localExpiry(written, sent) }, evictions);
  }

  /** Ends the session of `sid`: a tombstone with `endedAt` and `endReason`, its data dropped. */
  protected async end(sid: string, reason: EndReason): Promise<boolean> {
    if (!isValidId(sid)) return false;
    const keys = this.keysOf(sid);
    this.evict(keys);
    const rows = await this.shaped<{ key: string }>(`end:${keys.length}`, keyValues(keys, { reason }), (v) =>
      this.notifying(sql`${this.endSet(v("reason"))} where ${this.byKeys(keyParams(keys, v))} and ${this.table.endedAt} is null returning ${this.table.key} as key`),
    );
    // Evict again: a read or write of this store that overlapped the end may have cached the session.
    this.evict(keys);
    return rows.length > 0;
  }

  private async loadAll(): Promise<Record<string, SessionData>> {
    const t = this.table;
    const rows = await this.query<{ handle: string; data: string }>(sql`select ${t.handle} as handle, ${t.data}::text as data from ${t} where ${this.live()}`);
    const result: Record<string, SessionData> = {};
    for (const row of rows) {
      const session = parseSession(row.data);
      if (session) result[row.handle] = session;
    }
    return result;
  }

  /** `update <table> set` for ending sessions now for `reason`; the caller appends the `where`. @internal */
  protected endSet(reason: SQL | EndReason): SQL {
    const t = this.table;
    return sql`update ${t} set ${col(t.endedAt)} = ${NOW}, ${col(t.endReason)} = ${reason}::text, ${col(t.data)} = '{}'::jsonb, ${col(t.version)} = ${t.version} + 1`;
  }

  /**
   * Rows of a live session now, on the database's clock: not ended, not past the idle expiry, and not past
   * the absolute one (for rows made before `absoluteTimeout` was set too, counted from their creation). @internal
   */
  protected live(): SQL {
    const t = this.table;
    const absolute = this.options.absoluteTimeout === undefined ? sql`` : sql` and ${this.absoluteExpiry()} > ${NOW}`;
    return sql`${t.endedAt} is null and ${t.expiresAt} > ${NOW}${absolute}`;
  }

  /**
   * The absolute expiry of a row: its column, or with `absoluteTimeout`, for rows made before it was set,
   * their creation plus it.
   */
  private absoluteExpiry(): SQL {
    const t = this.table;
    const absolute = this.options.absoluteTimeout;
    return absolute === undefined ? sql`${t.absoluteExpiresAt}` : sql`coalesce(${t.absoluteExpiresAt}, ${t.createdAt} + ${millis(absolute)})`;
  }

  /** The moment a row stops being live (ended aside): its idle expiry, capped by the absolute one. */
  private effectiveExpiry(): SQL {
    return this.options.absoluteTimeout === undefined ? sql`${this.table.expiresAt}` : sql`least(${this.table.expiresAt}, ${this.absoluteExpiry()})`;
  }

  /** The {@link ExpiryRow} columns of a statement that reads or writes a session. */
  private expiryColumns(): SQL {
    return sql`${msOf(this.effectiveExpiry())} as expires, ${msOf(this.absoluteExpiry())} as absolute, ${msOf(NOW)} as now`;
  }

  /** Now, on both of this server's clocks, as a statement is about to be sent. */
  private sent(): Sent {
    return { wall: this.now(), mono: performance.now() };
  }

  /**
   * A row's expiries on this server's clocks. `sent` is when the statement was sent: the database's now
   * came later, so the conversion errs early (a cached session stops being served a round trip sooner).
   */
  private localExpiry(row: ExpiryRow, sent: Sent): Pick<Loaded, "expires" | "absolute" | "servedUntil"> {
    const left = Number(row.expires) - Number(row.now);
    return {
      expires: sent.wall + left,
      absolute: row.absolute === null || row.absolute === undefined ? null : sent.wall + Number(row.absolute) - Number(row.now),
      servedUntil: sent.mono + Math.min(left, this.options.cache?.ttl ?? Infinity),
    };
  }

  /** A record's status, decided in the database. */
  private statusOf(): SQL {
    return sql`case when ${this.table.endedAt} is not null then 'ended' when ${this.live()} then 'active' else 'expired' end`;
  }

  private statusFilter(status: SessionQuery["status"]): SQL {
    const t = this.table;
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

  private checkQuery(query: SessionQuery): { userId: string; limit: number; current?: string } {
    if (!query || (typeof query.userId !== "string" && typeof query.userId !== "number")) {
      throw new TypeError("connect-drizzle: list/count need { userId }");
    }
    const limit = query.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 1) throw new TypeError("connect-drizzle: `limit` must be a positive integer");
    return { userId: String(query.userId), limit, current: typeof query.current === "string" ? query.current : undefined };
  }

  /** The `and user_id = ...` of an owner-scoped call, or nothing for `{ anyOwner: true }`. */
  private ownerFilter(options: OwnerScope | undefined, method: string): SQL {
    const scope: any = options;
    if (scope !== null && typeof scope === "object" && "userId" in scope) {
      if (typeof scope.userId !== "string" && typeof scope.userId !== "number") {
        throw new TypeError(
          `connect-drizzle: ${method}(handle, { userId }) got userId ${String(scope.userId)}: pass the signed-in user's id, ` +
            "or { anyOwner: true } to act on any user's session",
        );
      }
      return sql` and ${this.table.userId} = ${String(scope.userId)}`;
    }
    if (scope?.anyOwner === true) return sql``;
    throw new TypeError(
      `connect-drizzle: ${method} needs a scope: { userId } for the owner's own session, or { anyOwner: true } for any session (admin tools)`,
    );
  }

  /** @internal */
  protected byKeys(keys: Array<string | SQL>): SQL {
    return sql`${this.table.key} in (${sql.join(keys.map((k) => (typeof k === "string" ? sql`${k}` : k)), sql`, `)})`;
  }

  /**
   * Runs a statement that changes sessions and ends in `returning key`: it (with `notify`) evicts the
   * changed keys from every instance's cache in the same statement, and from this store's cache before
   * the promise resolves, so an end is seen here at once. Returns one row per changed row. @internal
   */
  protected async write<Row extends { key: string } = { key: string }>(statement: SQL): Promise<Row[]> {
    const rows = await this.query<Row>(this.notifying(statement));
    this.evict(rows.map((row) => row.key));
    return rows;
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

  /**
   * Forgets sessions in this store's cache (`*`: every session), for its own writes and for every NOTIFY
   * it receives; other instances learn of this store's writes from the NOTIFY. @internal
   */
  protected evict(keys: readonly string[]): void {
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
    let probeFailed = false;
    const probe = () => {
      if (pending !== undefined && this.cacheLive) {
        this.cacheLive = false;
        this.evict(["*"]);
        this.report(new SessionStoreError("DATABASE", "the cache's NOTIFY probe did not come back; cache off until one does"));
      }
      pending = `?probe:${newHandle()}`;
      this.query(sql`select pg_notify(${this.channel}, ${pending})`).then(
        () => void (probeFailed = false),
        (error) => {
          // Said once per outage, not on every probe; the cache stays off meanwhile (the probe cannot return).
          if (probeFailed) return;
          probeFailed = true;
          this.report(databaseError(error, this.tableName, "the cache's NOTIFY probe"));
        },
      );
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
      const waiting = { deadline: performance.now() + this.options.timeout, reject };
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
      const now = performance.now();
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

  /** When a session being saved should expire, on this server's clock: its cookie's expiry, capped by `idleTimeout`. */
  private expiry(session: SessionData, now: number): number {
    const cookieExpires = (session as any)?.cookie?.expires;
    const at = cookieExpires == null ? NaN : new Date(cookieExpires).getTime();
    const expires = Number.isFinite(at) ? at : now + this.options.ttl;
    return this.options.idleTimeout === undefined ? expires : Math.min(expires, now + this.options.idleTimeout);
  }

  /**
   * Whether writing the new expiry again buys nothing: it is later than the stored one by less than
   * `touchAfter` (or a tenth of the lifetime left). An earlier expiry is always written (a route that
   * shortened the session must get it), unless it is earlier by less than the error of comparing this
   * server's clock with the database's (the latency of the write that stored it and the read that loaded
   * it), counted as one second at most.
   */
  private fresh(seen: Loaded, target: number, now: number): boolean {
    const next = seen.absolute === null ? target : Math.min(target, seen.absolute);
    const threshold = Math.min(this.options.touchAfter, Math.max(0, next - now) / 10);
    const later = next - seen.expires;
    return later > -Math.min(CLOCK_ERROR, threshold) && later < threshold;
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

/** The most an expiry can seem earlier than stored through clock conversion alone, ms (see `fresh`). */
const CLOCK_ERROR = 1_000;

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

/**
 * The NOTIFY channel of a table. Postgres cuts identifiers at 63 bytes (not characters) and pg_notify
 * refuses longer names, so a long or non-ASCII table name is cut at a character boundary within 63 bytes.
 */
export function channelName(qualified: string): string {
  let name = "";
  let bytes = 0;
  for (const char of `connect_drizzle_${qualified}`) {
    bytes += Buffer.byteLength(char, "utf8");
    if (bytes > 63) break;
    name += char;
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
  status: SessionStatus;
}

function toRecord(row: RecordRow): SessionRecord {
  const date = (ms: number | null) => (ms === null || ms === undefined ? null : new Date(Number(ms)));
  return {
    handle: row.handle,
    userId: row.user_id,
    status: row.status,
    createdAt: date(row.created_at)!,
    lastSeenAt: date(row.last_seen_at)!,
    expiresAt: date(row.expires_at)!,
    absoluteExpiresAt: date(row.absolute_expires_at),
    label: row.label,
    userAgent: row.user_agent,
    ip: row.ip,
    endedAt: date(row.ended_at),
    endReason: row.end_reason,
    current: isTrue(row.current),
  };
}

/** A timestamp as epoch milliseconds (a float8, which every driver returns as a number). */
function msOf(value: SQL | object): SQL {
  // date_part is float8 arithmetic (extract() is numeric since PostgreSQL 14, several times slower); the
  // round() makes the float exact again (timestamps here have millisecond precision).
  return sql`round(date_part('epoch', ${value}) * 1000)`;
}

/** A column's bare name, for an insert's column list or an update's `set` (where drizzle's qualified form is not allowed). */
function col(column: { name: string }): SQL {
  return sql`${sql.identifier(column.name)}`;
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
