import { sql, type SQL } from "drizzle-orm";
import { getTableConfig } from "drizzle-orm/pg-core";
import { Store, type SessionData } from "express-session";
import { settle, type Callback } from "./callback.js";
import { databaseError, SessionStoreError } from "./errors.js";
import { keyDeriver, newHandle, type KeyDeriver } from "./hash.js";
import { resolveOptions, type ResolvedOptions, type SessionStoreOptions } from "./options.js";
import type { SessionTable } from "./schema.js";
import { parseSession, sameContent, serialize } from "./serialize.js";

/** Why a session ended, as recorded in `end_reason`. */
export type EndReason = "logout" | "revoked" | "expired" | "rotated";

/** How many recently read sessions a store remembers to skip redundant touches and saves. */
const RECENT_LIMIT = 10_000;

interface Seen {
  /** The expiry stored in the row, epoch ms. */
  expires: number;
  /** The session data as stored, for change detection on save. */
  text: string;
}

interface PreparedGet {
  execute(params: Record<string, unknown>): Promise<Array<{ data: string; expires: number }>>;
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
  private readonly recent = new Map<string, Seen>();
  private readonly getQuery: PreparedGet;

  constructor(options: SessionStoreOptions) {
    super();
    this.options = resolveOptions(options);
    this.table = this.options.table;
    const config = getTableConfig(this.table);
    this.tableName = `"${config.schema ? `${config.schema}.` : ""}${config.name}"`;
    this.keysOf = keyDeriver(this.options.secrets);
    this.getQuery = this.prepareGet(config.schema ? `${config.schema}_${config.name}` : config.name);
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
        const [row] = await this.query<{ n: number }>(sql`select count(*)::int as n from ${this.table} where ${this.live(Date.now())}`);
        return Number(row?.n ?? 0);
      }),
      callback,
    );
  }

  /** Deletes every session and every ended-session record in the table. */
  override clear(callback?: Callback): Promise<void> {
    return settle(
      this.run("clear", async () => {
        await this.query(sql`delete from ${this.table}`);
        this.recent.clear();
      }),
      callback,
    );
  }

  /** Stops the store's timers. Never closes the database you passed in. */
  async close(): Promise<void> {
    this.recent.clear();
  }

  private async read(sid: string): Promise<SessionData | null> {
    if (typeof sid !== "string") return null;
    const keys = this.keysOf(sid);
    const params: Record<string, unknown> = { now: new Date().toISOString() };
    keys.forEach((key, i) => (params[`k${i}`] = key));
    const [row] = await this.getQuery.execute(params);
    if (!row) {
      this.recent.delete(keys[0]!);
      return null;
    }
    const session = parseSession(row.data);
    if (!session) {
      this.report(new SessionStoreError("CORRUPT_ROW", `session row ${keys[0]!.slice(0, 8)}… in ${this.tableName} holds no valid session (no cookie object); treated as missing`));
      return null;
    }
    this.remember(keys[0]!, { expires: Number(row.expires), text: row.data });
    return session;
  }

  private async save(sid: string, session: SessionData): Promise<void> {
    const keys = this.keysOf(sid);
    const now = Date.now();
    const expires = this.expiry(session, now);
    const text = serialize(session, this.options.maxSize);
    const seen = this.recent.get(keys[0]!);
    if (seen && this.fresh(seen, expires, now) && sameContent(seen.text, text)) return;

    const t = this.table;
    const { ua, ip } = requestMetadata(session);
    const userId = this.userIdOf(session);
    const absolute = this.options.absoluteTimeout;
    // Sessions created before absoluteTimeout was enabled get it counted from their creation.
    const absoluteExpr = absolute === undefined ? sql`${t.absoluteExpiresAt}` : sql`coalesce(${t.absoluteExpiresAt}, ${t.createdAt} + ${absolute} * interval '1 millisecond')`;
    const changes = sql`data = ${text}::jsonb, user_id = ${userId}, expires_at = least(${iso(expires)}::timestamptz, ${absoluteExpr}),
      absolute_expires_at = ${absoluteExpr}, last_seen_at = ${iso(now)}::timestamptz,
      user_agent = coalesce(${ua}::text, ${t.userAgent}), ip = coalesce(${ip}::text, ${t.ip}), version = ${t.version} + 1`;
    const absoluteAt = absolute === undefined ? null : now + absolute;
    const row = sql`${keys[0]}, ${newHandle()}, ${userId}, ${text}::jsonb, ${iso(Math.min(expires, absoluteAt ?? Infinity))}::timestamptz,
      ${absoluteAt === null ? null : iso(absoluteAt)}::timestamptz, ${iso(now)}::timestamptz, ${iso(now)}::timestamptz, ${ua}::text, ${ip}::text`;
    const columns = sql`(key, handle, user_id, data, expires_at, absolute_expires_at, created_at, last_seen_at, user_agent, ip)`;
    // An ended row (a tombstone) is never revived: a request still in flight when its session was
    // revoked must not bring it back. Rows keyed under an older secret are updated in place.
    const upsert = sql`insert into ${t} ${columns}`;
    const onConflict = sql`on conflict (key) do update set ${changes} where ${t.endedAt} is null`;
    const older = keys.slice(1);
    if (older.length === 0) {
      await this.query(sql`${upsert} values (${row}) ${onConflict}`);
    } else {
      const inOlder = sql`${t.key} in (${sql.join(older.map((k) => sql`${k}`), sql`, `)})`;
      await this.query(sql`with moved as (update ${t} set ${changes} where ${inOlder} and ${t.endedAt} is null returning 1)
        ${upsert} select ${row} where not exists (select 1 from moved) and not exists (select 1 from ${t} where ${inOlder})
        ${onConflict}`);
    }
    this.remember(keys[0]!, { expires, text });
  }

  private async renew(sid: string, session: SessionData): Promise<void> {
    const keys = this.keysOf(sid);
    const now = Date.now();
    const expires = this.expiry(session, now);
    const seen = this.recent.get(keys[0]!);
    if (seen && this.fresh(seen, expires, now)) return;
    const t = this.table;
    const { ua, ip } = requestMetadata(session);
    const cookie = JSON.stringify(session.cookie ?? {});
    const rows = await this.query(sql`update ${t} set expires_at = least(${iso(expires)}::timestamptz, ${t.absoluteExpiresAt}),
        last_seen_at = ${iso(now)}::timestamptz, data = jsonb_set(${t.data}, '{cookie}', ${cookie}::jsonb),
        user_agent = coalesce(${ua}::text, ${t.userAgent}), ip = coalesce(${ip}::text, ${t.ip})
      where ${this.byKeys(keys)} and ${this.live(now)} returning 1`);
    if (rows.length > 0 && seen) this.remember(keys[0]!, { ...seen, expires });
  }

  /** Ends the session of `sid`: a tombstone with `endedAt` and `endReason`, its data dropped. */
  protected async end(sid: string, reason: EndReason): Promise<boolean> {
    const keys = this.keysOf(sid);
    this.recent.delete(keys[0]!);
    const rows = await this.query(sql`${this.endSet(reason)} where ${this.byKeys(keys)} and ${this.table.endedAt} is null returning 1`);
    return rows.length > 0;
  }

  private async loadAll(): Promise<Record<string, SessionData>> {
    const t = this.table;
    const rows = await this.query<{ handle: string; data: string }>(
      sql`select ${t.handle} as handle, ${t.data}::text as data from ${t} where ${this.live(Date.now())}`,
    );
    const result: Record<string, SessionData> = {};
    for (const row of rows) {
      const session = parseSession(row.data);
      if (session) result[row.handle] = session;
    }
    return result;
  }

  /** `update <table> set` for ending sessions; the caller appends the `where`. @internal */
  protected endSet(reason: EndReason): SQL {
    const t = this.table;
    return sql`update ${t} set ended_at = ${iso(Date.now())}::timestamptz, end_reason = ${reason}, data = '{}'::jsonb, version = ${t.version} + 1`;
  }

  /** Rows of a live session: not ended and not past its expiry (which never exceeds the absolute one). @internal */
  protected live(now: number): SQL {
    const t = this.table;
    return sql`${t.endedAt} is null and ${t.expiresAt} > ${iso(now)}::timestamptz`;
  }

  /** @internal */
  protected byKeys(keys: string[]): SQL {
    return sql`${this.table.key} in (${sql.join(keys.map((k) => sql`${k}`), sql`, `)})`;
  }

  /** Runs a statement and returns its rows, whatever the driver's result shape. @internal */
  protected async query<Row = Record<string, unknown>>(statement: SQL): Promise<Row[]> {
    const result: any = await this.options.db.execute(statement);
    return (Array.isArray(result) ? result : result.rows) as Row[];
  }

  /** Runs an operation, turning driver errors into errors that say what to do. @internal */
  protected async run<T>(action: string, operation: () => Promise<T>): Promise<T> {
    try {
      return await operation();
    } catch (error) {
      throw error instanceof SessionStoreError ? error : databaseError(error, this.tableName, action);
    }
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
  private fresh(seen: Seen, expires: number, now: number): boolean {
    const threshold = Math.min(this.options.touchAfter, Math.max(0, expires - now) / 10);
    return expires - seen.expires < threshold;
  }

  private remember(key: string, seen: Seen): void {
    this.recent.delete(key);
    this.recent.set(key, seen);
    if (this.recent.size > RECENT_LIMIT) this.recent.delete(this.recent.keys().next().value!);
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

  private prepareGet(name: string): PreparedGet {
    const t = this.table;
    const keys = Array.from({ length: Math.max(1, this.options.secrets.length) }, (_, i) => sql.placeholder(`k${i}`));
    const query = this.options.db
      .select({ data: sql<string>`${t.data}::text`, expires: sql<number>`(extract(epoch from ${t.expiresAt}) * 1000)::float8` })
      .from(t)
      .where(sql`${t.key} in (${sql.join(keys, sql`, `)}) and ${t.endedAt} is null and ${t.expiresAt} > ${sql.placeholder("now")}::timestamptz`)
      .limit(1);
    return this.options.prepare ? query.prepare(`connect_drizzle_get_${name}_${keys.length}`) : { execute: (params) => query.execute(params) };
  }
}

/** User agent and client IP of the request a session belongs to (express-session links it as `session.req`). */
function requestMetadata(session: SessionData): { ua: string | null; ip: string | null } {
  const req: any = (session as any)?.req;
  if (!req) return { ua: null, ip: null };
  const ua = req.headers?.["user-agent"];
  const ip = req.ip ?? req.socket?.remoteAddress;
  return { ua: typeof ua === "string" ? ua.slice(0, 512) : null, ip: typeof ip === "string" ? ip.slice(0, 64) : null };
}

function iso(epochMs: number): string {
  return new Date(epochMs).toISOString();
}
