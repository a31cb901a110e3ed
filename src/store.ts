import type { IncomingMessage, ServerResponse } from "node:http";
import { inspect } from "node:util";
import type { SQL } from "drizzle-orm";
import { Store, type SessionData } from "express-session";
import { ReadCache } from "./cache.js";
import { describeDevice } from "./device.js";
import { deliver, EventSeal, sessionEvent, type Announcement, type LifecycleEvent, type LifecycleEvents } from "./events.js";
import { settle, settled, type Callback } from "./callback.js";
import { driverName, Executor, interactiveTransactions, isTrue, loneClient, type Shape } from "./driver.js";
import { databaseError, reauthenticationRequired, schemaOutdated, SessionStoreError, tableMissing } from "./errors.js";
import { isValidId, keyDeriver, newHandle, type KeyDeriver } from "./hash.js";
import { hear, type Hearing } from "./notify.js";
import { checkOptions, is, type OptionChecks } from "./check.js";
import { ownerOf, resolveOptions, type ResolvedOptions, type SessionStoreOptions } from "./options.js";
import { checkUserId } from "./owner.js";
import { reap, Reaper, type ReapResult } from "./reaper.js";
import { Records, type EndReason, type ExtendOptions, type RevokeOptions, type SessionQuery, type SessionRecord, type UserId } from "./records.js";
import { Sealer, type StaleEntry } from "./seal.js";
import { changesOf, isSession, parseSession, serialize } from "./serialize.js";
import { keyValues, Statements, type EventRow, type ExpiryRow, type LoginRow, type LoginWrite, type SessionRow } from "./statements.js";
import { isTraced, traced, type TraceDetail } from "./trace.js";

/**
 * What a loaded session's row held when its request read it, under a symbol key: JSON.stringify,
 * Object.keys and for-in (express-session's and @fastify/session's copies) all skip it, so it is never
 * serialized or seen. It is also put on the session's cookie, as an own enumerable property: that is how
 * it survives @fastify/session's restore, which spreads the stored cookie into options it keeps.
 */
const LOADED = Symbol("connect-drizzle.loaded");

/**
 * On express-session's request, what its `regenerate` gave up: the session's owner and when that user last
 * authenticated, for the new session the app fills (see SessionStore's carriedSignIn).
 */
const ROTATED = Symbol("connect-drizzle.rotated");
interface Rotated {
  owner: string;
  at: SignIn | null;
}

/**
 * On the data of a session minted from another (`issueToken`): the sign-in it carries, from the session
 * that minted it when that session has the same user, else null. A session made from another is never a
 * fresh proof of identity: only a login or {@link SessionStore.markAuthenticated} is.
 */
const MINTED = Symbol("connect-drizzle.minted");

/** When a user last authenticated: on this server's monotonic clock (Loaded's `authenticatedAt`) and exactly, on the database's. */
interface SignIn {
  mono: number;
  db: number;
}

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
  /** The stored data, as plain JSON text (opened, with `encrypt`). */
  text: string;
  /**
   * With `encrypt`: the row is not stored as a save would write it now (entries sealed under an older
   * secret, or in plaintext, or its cookie's tag), so the next write re-seals those entries, changed or
   * not, each only while the row still holds it as read.
   */
  stale?: readonly StaleEntry[];
  /** The row's version (read only with `versioned`; 0 otherwise). */
  version: number;
  /** The device the row records: a touch is not skipped when the request comes from another one. */
  ua: string | null;
  ip: string | null;
  /**
   * When the row's user last authenticated (`authenticated_at`), on the monotonic clock
   * (`performance.now()`), converted with the statement's send time (so it errs early, never late): a
   * wall clock stepped after the read (NTP, a resumed VM) never makes a cached sign-in look more recent.
   * Null when never.
   */
  authenticatedAt: number | null;
  /** `authenticated_at` exactly, epoch ms on the database's clock (what a rotation carries to the new id). */
  authenticatedDb: number | null;
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

/** A touch that writes: what it sends, and what it needs to remember the result. */
interface Touch {
  sent: Sent;
  keys: string[];
  loaded: Loaded | undefined;
  ua: string | null;
  ip: string | null;
  values: Record<string, unknown>;
}

/**
 * What is attached to a session under LOADED: its {@link Loaded} state behind a private field, so that no
 * inspection of the session (console.log, util.inspect with showHidden or without custom inspection)
 * shows it, and with it the session's id.
 */
class Mark {
  readonly #loaded: Loaded;
  constructor(loaded: Loaded) {
    this.#loaded = loaded;
  }
  static loaded(mark: unknown): Loaded | undefined {
    return mark instanceof Mark ? mark.#loaded : undefined;
  }
  [inspect.custom](): string {
    return "[connect-drizzle]";
  }
}

function withLoaded<T extends object>(session: T, loaded: Loaded): T {
  const mark = new Mark(loaded);
  (session as any)[LOADED] = mark;
  const cookie = (session as any).cookie;
  if (cookie !== null && typeof cookie === "object") cookie[LOADED] = mark;
  return session;
}

/**
 * What the request that holds `session` read, if it read this very session: on the session itself
 * (express-session, and any session this store wrote), or carried in @fastify/session's cookie options.
 */
function loadedOf(session: SessionData, sid: string): Loaded | undefined {
  const loaded = loadedIn(session);
  return loaded?.sid === sid ? loaded : undefined;
}

/** What `get` attached to a session, whichever id it was read under. */
function loadedIn(session: unknown): Loaded | undefined {
  return Mark.loaded((session as any)?.[LOADED]) ?? kept(session, (value) => Mark.loaded(value[LOADED]));
}

/**
 * The first of the objects a session holds under symbol keys (other than LOADED) that `pick` takes:
 * @fastify/session keeps the request and the session's cookie options there, and nothing else links
 * its session to them. express-session's sessions have none, so this costs them nothing.
 */
function kept<T>(session: unknown, pick: (value: any) => T | undefined): T | undefined {
  if (session === null || typeof session !== "object") return undefined;
  for (const key of Object.getOwnPropertySymbols(session)) {
    const value = key === LOADED ? undefined : (session as any)[key];
    const found = value !== null && typeof value === "object" ? pick(value) : undefined;
    if (found !== undefined) return found;
  }
  return undefined;
}

/** Options of {@link SessionStore.requireRecentLogin}. */
export interface RequireRecentLoginOptions<Req = IncomingMessage, Res = ServerResponse> {
  /**
   * Answers a request whose sign-in is not recent enough (or that has no signed-in session of this
   * store) instead, e.g. with a redirect to a page that asks for the password again.
   * @default undefined (`next(err)` with a `SessionStoreError` of code `REAUTHENTICATION_REQUIRED`, `status` 401)
   */
  onStale?: (req: Req, res: Res, next: (err?: unknown) => void) => void;
}

/** Every option of {@link RequireRecentLoginOptions} with its check. */
export const RECENT_LOGIN_OPTIONS: OptionChecks<RequireRecentLoginOptions> = { onStale: is.function("(req, res, next) => void") };

/**
 * The events of a {@link SessionStore}, each with its listener's arguments:
 * - `reap`: a reaper round finished (the periodic reaper's rounds; `store.reap()` resolves with its own);
 * - `error`: a problem that did not fail a request (a corrupt row, a failed reaper round, a failing cache
 *   probe, a lifecycle listener that threw, a lost `broadcast` connection, an event refused on the
 *   `broadcast` channel: `UNTRUSTED_EVENT`). Without a listener it is
 *   written to the console instead;
 * - `connect`, `disconnect`: express-session listens for them; this store never emits them (every
 *   operation gets its connection from your database, and a failure fails only that operation);
 * - `newListener`, `removeListener`: EventEmitter's own.
 * - `created`, `ended`, `newDevice`: the lifecycle events ({@link LifecycleEvents}); with `broadcast`,
 *   other instances' `created`, `ended` and `newDevice` too.
 */
export interface SessionStoreEvents extends LifecycleEvents {
  reap: [result: ReapResult];
  error: [error: Error];
  connect: [];
  disconnect: [];
  newListener: [event: string | symbol, listener: (...args: any[]) => void];
  removeListener: [event: string | symbol, listener: (...args: any[]) => void];
}

/** A listener of the {@link SessionStoreEvents} event `E`. */
export type SessionStoreListener<E extends keyof SessionStoreEvents> = (...args: SessionStoreEvents[E]) => void;

// Typed events: a misspelt event name, or a listener of the wrong arguments, is a type error.
export interface SessionStore {
  on<E extends keyof SessionStoreEvents>(event: E, listener: SessionStoreListener<E>): this;
  once<E extends keyof SessionStoreEvents>(event: E, listener: SessionStoreListener<E>): this;
  off<E extends keyof SessionStoreEvents>(event: E, listener: SessionStoreListener<E>): this;
  addListener<E extends keyof SessionStoreEvents>(event: E, listener: SessionStoreListener<E>): this;
  removeListener<E extends keyof SessionStoreEvents>(event: E, listener: SessionStoreListener<E>): this;
  emit<E extends keyof SessionStoreEvents>(event: E, ...args: SessionStoreEvents[E]): boolean;
}

/**
 * An express-session store on a Drizzle Postgres table. Session ids are stored only as keyed hashes;
 * rows carry the owner, timestamps, user agent and IP, so sessions can be listed and revoked per user.
 *
 * Every method returns a promise and also calls the optional express-session callback once, on a
 * later tick. A missing, expired or ended session is `null`, never an error.
 *
 * This class holds the express-session contract and its decisions (what to skip, which expiry, which
 * clock); the SQL is in {@link Statements}, the records API in {@link Records}, the read cache in
 * {@link ReadCache}, execution and timeouts in {@link Executor}.
 */
export class SessionStore extends Store {
  /** @internal */
  protected readonly options: ResolvedOptions;
  /** @internal */
  protected readonly keysOf: KeyDeriver;
  private readonly sql: Statements;
  private readonly exec: Executor;
  private readonly records: Records;
  /** The read cache, with the `cache` option. */
  private readonly cache: ReadCache<Loaded> | undefined;
  private readonly reaper: Reaper | undefined;
  /** This store's id among the instances on the table: its own `broadcast` NOTIFYs are skipped by it. */
  private readonly instance = newHandle();
  /** What seals this store's lifecycle events and opens the others', with `broadcast`. */
  private readonly herald: EventSeal | undefined;
  /** The LISTEN of the lifecycle events of other instances, with `broadcast` (undefined on a driver that cannot LISTEN). */
  private readonly hearing: Hearing | undefined;
  /** Encryption at rest, with the `encrypt` option. */
  private readonly sealer: Sealer | undefined;

  constructor(options: SessionStoreOptions) {
    super();
    this.options = resolveOptions(options);
    const { db, table, absoluteTimeout, notify, retainEnded, versioned, timeout, prepare } = this.options;
    if (this.options.maxSessionsPerUser !== undefined && !interactiveTransactions(db)) {
      throw new TypeError(
        `connect-drizzle: \`maxSessionsPerUser\` needs a transaction held open across statements (a login takes its user's lock, ` +
          `then writes), which ${driverName(db)} cannot do (each statement is a request of its own); remove \`maxSessionsPerUser\`, ` +
          "or give the store a drizzle-orm/node-postgres, drizzle-orm/postgres-js or drizzle-orm/pglite database",
      );
    }
    if (this.options.maxSessionsPerUser !== undefined && loneClient(db)) {
      throw new TypeError(
        "connect-drizzle: `maxSessionsPerUser` cannot be safe on a single node-postgres Client: a login's transaction would run on " +
          "the connection every other request uses, so their statements would run inside it (and a logout be undone if it rolled " +
          "back); give the store a pg.Pool (drizzle({ client: new pg.Pool(...) })), or remove `maxSessionsPerUser`",
      );
    }
    this.sql = new Statements(table, { absoluteTimeout, notify, retainEnded, versioned });
    this.herald = this.options.broadcast ? new EventSeal(this.options.secrets, this.sql.tableName, this.instance) : undefined;
    this.exec = new Executor(db, { timeout, prepare });
    this.keysOf = keyDeriver(this.options.secrets);
    this.sealer = this.options.encrypt && new Sealer(this.options.encrypt);
    this.records = new Records({
      statements: this.sql,
      keysOf: this.keysOf,
      run: (action, operation, detail) => this.run(action, operation, detail),
      query: (statement) => this.exec.query(statement),
      write: <Row extends { key: string }>(statement: SQL) => this.write<Row>(statement),
      now: () => this.now(),
      recordsEnds: () => this.recordsEnds(),
      ended: (rows, reason) => this.announceOwn(endedEvents(rows, reason)),
      cap: this.options.maxSessionsPerUser,
      timeout,
      transaction: (body) => this.exec.transaction(body),
      afterEvictions: (keys, evicted) => this.announceOwn(this.afterEvictions(keys, evicted)),
    });
    if (this.options.cache) {
      this.cache = new ReadCache<Loaded>(this.options.cache, {
        listenDb: this.options.listen ?? db,
        channel: this.sql.channel,
        deadline: timeout,
        notify: (payload) => this.exec.query(this.sql.notify(payload)),
        report: (error) => this.report(error),
        probeError: (error) => databaseError(error, this.sql.tableName, "the cache's NOTIFY probe"),
        heard: (key) => this.evict([key]),
      });
      this.cache.start();
    }
    if (this.options.reaper) {
      this.reaper = new Reaper((signal) => this.reapWith(signal), this.options.reaper, {
        onReap: (result) => this.emit("reap", result),
        onError: (error) => this.report(error),
      });
      this.reaper.start();
    }
    if (this.options.broadcast) {
      this.hearing = hear(this.options.listen ?? db, this.sql.eventsChannel, {
        name: "`broadcast`",
        meanwhile: "other instances' events are missed until it hears again",
        notify: (payload) => this.exec.query(this.sql.notify(payload, this.sql.eventsChannel)),
        deadline: Math.min(timeout, BROADCAST_PROBE_INTERVAL),
        interval: BROADCAST_PROBE_INTERVAL,
        onMessage: (payload) => this.heard(payload),
        onLive: () => {},
        onDeaf: () => {},
        report: (error) => this.report(error),
        probeError: (error) => databaseError(error, this.sql.tableName, "the `broadcast` NOTIFY probe"),
        postgresJs: true,
      });
    }
  }

  /**
   * Runs one reaper round now (whether or not the periodic reaper is on): deletes expired sessions, and
   * ended ones past `retainEnded`, in batches; `skipped: true` when another instance was reaping. Each
   * statement of the round is bounded by the store's `timeout`. On serverless platforms, where the timer never
   * fires, create the store with `reaper: false` and call this from a cron route (README, "Serverless").
   * @throws SessionStoreError when the round fails (`TIMEOUT`, `TABLE_MISSING`, `DATABASE`, ...)
   */
  reap(): Promise<ReapResult> {
    return this.reapWith();
  }

  private reapWith(signal?: AbortSignal): Promise<ReapResult> {
    const { db, table, retainEnded, reaper, timeout } = this.options;
    return traced("reap", this.sql.tableName, undefined, () => reap({ db, table, retainEnded, batchSize: reaper ? reaper.batchSize : undefined, signal, timeout }));
  }

  /** Loads a live session; `null` when it is missing, expired or ended. */
  get(sid: string, callback?: Callback<SessionData | null>): Promise<SessionData | null> {
    // A cache hit answers without an operation's promise chain (it costs what MemoryStore's get costs).
    const cached = this.cache && isValidId(sid) ? this.cache.get(sid, performance.now()) : undefined;
    // Cached text was checked when it was cached (parseSession on read, and on write in remember).
    if (cached) {
      const hit = () => settled(withLoaded(JSON.parse(cached.text) as SessionData, { ...cached }), callback);
      return isTraced("get") ? traced("get", this.sql.tableName, CACHED, hit) : hit();
    }
    return settle(this.run("get", () => this.read(sid)), callback);
  }

  /**
   * Saves a session. A session this request loaded (`req.session`, or what `get` returned) is updated in
   * place, and only while it is live: a save never brings back a session that ended or expired meanwhile.
   * A session the store did not load here (a new id) is inserted; one whose row exists is updated (an
   * expired row is live again; with `maxSessionsPerUser`, as a login, its user's sessions beyond the cap
   * end). A user id (the `userId` option) that does not fit the `user_id` column's type fails the save
   * with a `SessionStoreError` of code `INVALID_USER_ID`. Unchanged sessions are not rewritten.
   * With `merge` (the default) a loaded session's save writes only the top-level keys its request changed
   * or deleted, and the cookie, over what the row holds now.
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
    let touch: Touch | undefined;
    try {
      touch = this.planTouch(sid, session);
    } catch (error) {
      return settle(this.run("touch", () => Promise.reject(error)), callback);
    }
    // A skipped touch (the common case) answers at once, without an operation's promise chain.
    if (!touch) return isTraced("touch") ? traced("touch", this.sql.tableName, SKIPPED, () => settled(undefined, callback)) : settled(undefined, callback);
    const planned = touch;
    // A row sealed under an older secret (or in plaintext, with `acceptPlaintext`) is rewritten by the
    // first touch that writes, as a save rewrites it: a session that is only ever read is re-sealed too.
    if (planned.loaded?.stale) return settle(this.run("touch", () => this.save(sid, session)), callback);
    return settle(this.run("touch", () => this.renew(session, planned)), callback);
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
        const [row] = await this.exec.query<{ n: number }>(this.sql.length());
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
        await this.exec.query(this.sql.clear());
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
        const owner = req.session ? this.userIdOf(req.session) : null;
        const old = req.session ? loadedOf(req.session, req.sessionID) : undefined;
        // The new session the app fills for the same user carries this one's sign-in (see carriedSignIn).
        const rotated: Rotated | undefined = owner !== null && old && this.ownerRead(old) === owner ? { owner, at: signInOf(old) } : undefined;
        req[ROTATED] = rotated;
        const reason: EndReason = owner !== null ? "rotated" : "logout";
        await this.end(req.sessionID, reason);
      }),
      (err) => {
        // express-session assigns generate() to the store when the middleware is created.
        (this as unknown as { generate(req: unknown): void }).generate(req);
        callback(err);
      },
    );
  }

  /**
   * A user's sessions as records, newest activity first.
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  list(query: SessionQuery): Promise<SessionRecord[]> {
    return this.records.list(query);
  }

  /**
   * How many sessions of a user match (same filter as `list`, without the limit).
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  count(query: SessionQuery): Promise<number> {
    return this.records.count(query);
  }

  /** The public handle of a live session id (to mark "this device"), or `null`. */
  handleOf(sessionId: string): Promise<string | null> {
    return this.records.handleOf(sessionId);
  }

  /**
   * Ends a session by its handle, at once: this store no longer serves it when the promise resolves, and
   * no instance reads it from the database again. Scoped to an owner (`{ userId }`, so a user can never
   * end someone else's session by guessing a handle) or explicitly to any owner (`{ anyOwner: true }`).
   * @returns whether a session was ended
   * @throws TypeError when the scope is missing, `userId` is `undefined` or `null`, or `reason` is not an {@link EndReason}
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  revoke(handle: string, options: RevokeOptions): Promise<boolean> {
    return this.records.revoke(handle, options);
  }

  /**
   * Ends every session of a user ("log out everywhere", e.g. after a password change), or every one but
   * `except` ("log out other devices"): session ids or handles, one or a list.
   * @returns how many sessions were ended
   * @throws TypeError when `userId` is not a string, number or bigint, or `reason` is not an {@link EndReason}
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  revokeUser(userId: UserId, options: { except?: string | readonly string[]; reason?: EndReason } = {}): Promise<number> {
    return this.records.revokeUser(userId, options);
  }

  /**
   * Sets a new idle expiry for a session (longer or shorter), scoped like {@link revoke}. It also
   * revalidates a session that expired but is not yet reaped; an ended session stays ended. The expiry
   * never passes the absolute expiry unless `beyondAbsolute` is set, which moves the absolute expiry too.
   * `until` is read on this server's clock, as a lifetime from now.
   *
   * With `maxSessionsPerUser`, revalidating an expired session is a login for the cap: the session is
   * kept, and its owner's least recently used other live sessions beyond the cap end as `evicted` (each
   * announced as `ended`, and dropped from every instance's cache), under the owner's login lock, in the
   * same transaction. Extending a live session ends nothing.
   * @returns whether a session was changed
   * @throws TypeError when `until` is not a valid Date, or the scope is missing
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  extend(handle: string, until: Date, options: ExtendOptions): Promise<boolean> {
    return this.records.extend(handle, until, options);
  }

  /**
   * Records that the user of a live session just proved who they are again (a password re-entry, a
   * WebAuthn assertion): its `authenticatedAt` becomes the database's now, for
   * {@link requireRecentLogin}. Every instance's cache drops the session (with `notify`), so the next
   * request sees it; the request in progress keeps what it read.
   * @returns whether a live session was marked
   */
  markAuthenticated(sessionId: string): Promise<boolean> {
    return this.run("markAuthenticated", async () => {
      if (!isValidId(sessionId)) return false;
      const rows = await this.write(this.sql.markAuthenticated(this.keysOf(sessionId)));
      return rows.length > 0;
    });
  }

  /**
   * When the user of a session loaded by this store (express-session's `req.session`, @fastify/session's
   * `request.session`) last proved who they are: their login, or the latest {@link markAuthenticated}.
   * Read from what the request loaded (or its own last save), without a query. `null` for a session
   * this store did not load, one without a user, or one whose user changed since it was loaded.
   */
  authenticatedAt(session: unknown): Date | null {
    const loaded = loadedIn(session);
    if (!loaded || loaded.authenticatedAt === null) return null;
    const owner = this.userIdOf(session as SessionData);
    return owner !== null && owner === this.ownerRead(loaded) ? new Date(this.now() - (performance.now() - loaded.authenticatedAt)) : null;
  }

  /**
   * Stores `data` under the new id `sid` as a session minted from the session `from` (`issueToken`). The
   * new session keeps the sign-in time of `from` when it has the same user and this store loaded it, and
   * has none otherwise: it never passes {@link requireRecentLogin} as a fresh sign-in. And it outlives
   * this call only if `from` (when this store loaded it) was still live once the new one was stored: a
   * session ended while its request was minting (signed out, revoked) ends the new one too, before its id
   * has left this call. @internal
   * @returns the new session's handle
   * @throws SessionStoreError `REAUTHENTICATION_REQUIRED` (status 401) when `from` had ended or expired
   */
  async mint(sid: string, data: object, from: unknown): Promise<string> {
    const loaded = from === undefined || from === null ? undefined : loadedIn(from);
    const owner = loaded ? this.userIdOf(from as SessionData) : null;
    const minted: Rotated | null = loaded && owner !== null && this.ownerRead(loaded) === owner ? { owner, at: signInOf(loaded) } : null;
    Object.defineProperty(data, MINTED, { value: minted, enumerable: false });
    await this.set(sid, data as SessionData);
    if (loaded && (await this.handleOf(loaded.sid)) === null) {
      await this.run("mint", () => this.end(sid, "revoked"));
      throw new SessionStoreError(
        "REAUTHENTICATION_REQUIRED",
        "the session minting a new one has ended (signed out, revoked or expired meanwhile), so nothing was minted; sign in again",
        { status: 401 },
      );
    }
    const handle = await this.handleOf(sid);
    if (handle === null) throw new Error("connect-drizzle: the minted session was not stored (is its maxAge positive?)");
    return handle;
  }

  /**
   * Express middleware for sensitive routes (change email, create an API token, log out everywhere):
   * passes when the request's session was loaded by this store, has a user, and that user signed in (or
   * was {@link markAuthenticated}) within the last `maxAge` ms; otherwise `onStale`, or by default
   * `next(err)` with a `SessionStoreError` of code `REAUTHENTICATION_REQUIRED` (`status` 401). Sends no
   * query: it reads what the store loaded for the request.
   * @throws TypeError when `maxAge` is not a positive number, or an option is unknown
   */
  requireRecentLogin<Req extends IncomingMessage = IncomingMessage, Res extends ServerResponse = ServerResponse>(
    maxAge: number,
    options: RequireRecentLoginOptions<Req, Res> = {},
  ): (req: Req, res: Res, next: (err?: unknown) => void) => void {
    if (typeof maxAge !== "number" || !(maxAge > 0) || !Number.isFinite(maxAge)) {
      throw new TypeError(`connect-drizzle: requireRecentLogin(maxAge) needs a positive number of milliseconds, e.g. 600_000 (got ${String(maxAge)})`);
    }
    checkOptions(options, RECENT_LOGIN_OPTIONS, "requireRecentLogin");
    const { onStale } = options;
    return (req, res, next) => {
      let at: Date | null;
      try {
        const { session, sessionID, sessionStore } = req as { session?: SessionData; sessionID?: string; sessionStore?: unknown };
        const ours = sessionStore === this && session !== undefined && typeof sessionID === "string" && loadedOf(session, sessionID) !== undefined;
        at = ours ? this.authenticatedAt(session) : null;
      } catch (error) {
        return next(error);
      }
      if (at !== null && at.getTime() >= this.now() - maxAge) return next();
      if (onStale) return onStale(req, res, next);
      next(reauthenticationRequired(maxAge));
    };
  }

  /**
   * Checks, with one query, that the sessions table exists and has every column this version uses.
   * Await it before `app.listen`: without it a missing migration shows only once visitors arrive, and
   * express-session saves a new session after the response is sent, so the first visitors get their
   * page while their sessions are lost (the error then also goes once to the `error` event or console).
   * With `cache` or `broadcast` it also waits (up to `timeout`) until their LISTEN hears what this store
   * NOTIFYs, proven by a probe.
   * @throws SessionStoreError `TABLE_MISSING` (no table) or `SCHEMA_OUTDATED` (missing columns), saying
   * what to run; `DATABASE` or `TIMEOUT` when the database cannot answer; `LISTEN_DEAF` when the LISTEN of
   * `cache` or `broadcast` hears nothing (behind pgbouncer in transaction mode: give the store `listen`)
   */
  ready(): Promise<void> {
    return this.run("ready", async () => {
      const rows = await this.exec.query<{ schema: string | null; name: string; column: string | null }>(this.sql.catalog());
      const table = `"${rows[0]?.schema ?? ""}"."${rows[0]?.name ?? ""}"`;
      const found = new Set(rows.map((row) => row.column));
      if (!rows.some((row) => row.column !== null)) throw tableMissing(table);
      const missing = this.sql.columnNames().filter((column) => !found.has(column));
      if (missing.length > 0) throw schemaOutdated(table, missing);
      // A cache or `broadcast` that cannot hear the database fails the start, not silently later.
      await Promise.all([this.cache?.proven(), this.hearing?.proven()]);
    });
  }

  /** Whether a missing table or column was already reported (once per store: every statement would hit it). */
  private schemaReported = false;

  /**
   * Stops the reaper (a round in progress ends after its current batch), the LISTEN connections (the
   * cache's, `broadcast`'s) and every timer. Never closes the database you passed in.
   */
  async close(): Promise<void> {
    await this.reaper?.stop();
    await this.cache?.close();
    await this.hearing?.close();
  }

  /**
   * This server's wall clock, epoch ms. It only measures lifetimes (a cookie's `expires` minus now); the
   * database's clock decides expiry, and in-process durations (the cache, timeouts) use the monotonic clock. @internal
   */
  protected now(): number {
    return Date.now();
  }

  /**
   * Forgets sessions in this store's cache (`*`: every session), for its own writes and for every NOTIFY
   * it receives; other instances learn of this store's writes from the NOTIFY. @internal
   */
  protected evict(keys: readonly string[]): void {
    this.cache?.evict(keys);
  }

  private async read(sid: string): Promise<SessionData | null> {
    if (!isValidId(sid)) return null;
    const sent = this.sent();
    const keys = this.keysOf(sid);
    const since = this.cache?.evictions ?? 0;
    const [row] = await this.exec.run<SessionRow>(this.sql.get(keys.length), keyValues(keys, {}));
    if (!row) return null;
    const key = row.key ?? keys[0]!;
    const opened = this.open(key, row.data);
    if (typeof opened === "string") {
      this.report(new SessionStoreError("CORRUPT_ROW", `session row ${key.slice(0, 8)}… in ${this.sql.tableName} holds no valid session (${opened}); treated as missing`));
      return null;
    }
    const loaded: Loaded = { sid, key, text: opened.text, version: Number(row.version ?? 0), ua: row.ua, ip: row.ip, ...this.localExpiry(row, sent) };
    if (opened.stale) loaded.stale = opened.stale;
    this.cache?.put(loaded, since);
    return withLoaded(opened.session, loaded);
  }

  /** A row's `data` as a session and its plain JSON text (opened, with `encrypt`), or why it holds none. */
  private open(key: string, data: string): { session: SessionData; text: string; stale?: readonly StaleEntry[] } | string {
    if (!this.sealer) {
      const session = parseSession(data);
      return session ? { session, text: data } : "its data or cookie is malformed";
    }
    const opened = this.sealer.unseal(key, data);
    if (typeof opened === "string") return opened;
    if (!isSession(opened.value)) return "its cookie is malformed";
    const stale = opened.stale.length > 0 || opened.staleTag ? opened.stale : undefined;
    return { session: opened.value, text: opened.text, stale };
  }

  /** What a save writes into the `data` of the row `key`: the session's JSON text, or with `encrypt` its sealed form. */
  private stored(key: string, session: SessionData, text: string): string {
    return this.sealer ? JSON.stringify(this.sealer.seal(key, session)) : text;
  }

  /**
   * express-session builds `req.session` from what `get` returned; carry over what was loaded (hidden,
   * never serialized), so this request's own touch and save compare against what this request read.
   */
  override createSession(req: any, data: SessionData): any {
    const loaded = Mark.loaded((data as any)?.[LOADED]);
    const session = super.createSession(req, data);
    return loaded ? withLoaded(session, loaded) : session;
  }

  /** Saves a session; the lifecycle events of its write are announced once it is done, even when a later step fails. */
  private async save(sid: string, session: SessionData): Promise<void> {
    const events: Announcement[] = [];
    try {
      await this.saveWith(sid, session, events);
    } finally {
      this.announceOwn(events);
    }
  }

  private async saveWith(sid: string, session: SessionData, events: Announcement[]): Promise<void> {
    if (!isValidId(sid)) {
      throw new TypeError("connect-drizzle: a session id must be a well-formed string (express-session's ids always are)");
    }
    const sent = this.sent();
    const now = sent.wall;
    const target = this.expiry(session, now);
    const text = serialize(session, this.options.maxSize);
    const loaded = loadedOf(session, sid);
    // What this request changed over what it read: whether to write at all, and with `merge` what to write.
    const changes = loaded ? changesOf(loaded.text, text) : undefined;
    // A save that changed nothing is a touch (never a write of this request's view over another's change),
    // unless the row must be re-sealed (`encrypt`): then a merged save of the cookie alone does it.
    if (loaded && changes?.unchanged && !loaded.stale) {
      const touch = this.planTouch(sid, session);
      if (touch) await this.renew(session, touch);
      return;
    }
    const { ua, ip } = requestMetadata(session);
    const keys = loaded ? [loaded.key] : this.keysOf(sid);
    // A save that changed the cookie alone (a new maxAge) writes it alone, in every mode: it cannot be
    // a conflict, and must not write this request's view of the other keys over another request's.
    const cookieOnly = changes !== undefined && changes.removed.length === 0 && Object.keys(changes.patch).every((key) => key === "cookie");
    const guarded = this.options.versioned && loaded !== undefined && !cookieOnly;
    const merged = changes !== undefined && (this.options.merge || cookieOnly);
    const userId = this.userIdOf(session);
    if (userId !== null) checkUserId(userId, this.sql.userIdType, "userId");
    const label = this.labelOf(session);
    const ownerChanged = loaded === undefined || userId !== this.ownerRead(loaded, changes?.before);
    // A session id rotated away from another that keeps its user is not a sign-in: it keeps the old time.
    const carried = loaded === undefined && userId !== null ? this.carriedSignIn(session, userId) : undefined;
    // The login write: the session gains a user (a new session with one, or one whose user changed).
    const login = userId !== null && ownerChanged ? this.loginWrite(ip, carried === undefined) : undefined;
    const values = keyValues(keys, {
      // Only an insert gives the row a handle.
      handle: loaded ? undefined : newHandle(),
      // A merged save sets the owner and label columns only when its request changed them: another
      // request's change since (a sign-in as someone else) stays named by the columns as by the data.
      userId: merged && !ownerChanged ? null : userId,
      label: merged && label === this.labelOf(changes.before as unknown as SessionData) ? null : label,
      text: merged ? undefined : this.stored(keys[0]!, session, text),
      life: target - now,
      ua,
      ip,
      version: loaded?.version,
      carried: carried !== undefined,
      authenticated: carried?.at == null ? null : carried.at.db,
    });
    if (merged) Object.assign(values, this.mergeValues(keys[0]!, changes.patch, changes.removed, loaded?.stale));
    this.evict(keys);
    const since = this.cache?.evictions ?? 0;
    type Saved = { key: string; version?: number; data?: string } & ExpiryRow & LoginRow;
    let written: Saved | undefined;
    // With the cache, a merge returns the merged row (the cache must hold what the row holds).
    if (loaded) {
      const shape = merged ? this.sql.saveMerged(this.cache !== undefined, login, values.reseal !== undefined) : this.sql.saveLoaded(guarded, login);
      [written] = await this.saveRows<Saved>(shape, values, login);
    } else {
      // A plain insert of a session with a user is a login too (authenticated now), with nothing else to do.
      const extras = login && (login.cap !== undefined || login.devices) ? login : undefined;
      const [inserted] = await this.saveRows<{ key: string; authenticated_at?: number | null } & LoginRow>(this.sql.insert(keys.length, extras), values, extras);
      // A new row holds what was sent: the lifetime from the database's now (capped by absoluteTimeout), version 1.
      const absolute = this.options.absoluteTimeout ?? null;
      const authenticated = userId === null || carried?.at === null ? null : carried ? carried.at.mono - sent.mono : 0;
      if (inserted) written = { ...inserted, version: 1, expires: Math.min(target - now, absolute ?? Infinity), absolute, authenticated };
      // A set of an id the store did not load whose row exists: update it, unless it ended. That may make
      // an expired row of the user live again (or give a row its user): under a cap, as a login.
      else written = await this.saveExisting<Saved>(keys, values, session, text, userId === null ? undefined : this.existingLogin());
      if (inserted && (this.herald || this.listenerCount("created") > 0)) {
        const row: EventRow = { handle: values.handle as string, user_id: userId, label, user_agent: ua, ip };
        events.push({ event: "created", args: [sessionEvent(row, true)] });
      }
      if (inserted) await this.recordRotation(session, sid);
    }
    if (!written) {
      if (guarded) await this.checkConflict(keys);
      return;
    }
    // The request's own view (what it read, plus what it wrote) is what its next save compares with; the
    // row may also hold other requests' keys after a merge: the cache gets the row's own data.
    const next: Loaded = {
      sid,
      key: written.key,
      text,
      version: Number(written.version ?? 0),
      ua: ua ?? loaded?.ua ?? null,
      ip: ip ?? loaded?.ip ?? null,
      ...this.localExpiry(written, sent),
    };
    this.remember(session, next, since, merged ? this.rowText(written.key, written.data) : text);
    if (login) {
      const handle = written.handle ?? (values.handle as string);
      events.push(...this.loggedIn(written, { handle, user_id: userId, label, user_agent: next.ua, ip: next.ip }));
    }
  }

  /**
   * The sign-in a new session carries over from the session its request gave up for it (express-session's
   * `regenerate`, then the data copied back; @fastify/session's `regenerate(keys)`): the time its user last
   * authenticated (null: never), when that session had the same user. Undefined otherwise: a session that
   * gains a user it did not have is a sign-in.
   */
  private carriedSignIn(session: SessionData, userId: string): { at: SignIn | null } | undefined {
    const minted: Rotated | null | undefined = (session as any)[MINTED];
    if (minted !== undefined) return { at: minted !== null && minted.owner === userId ? minted.at : null };
    const req = requestOf(session);
    const rotated: Rotated | undefined = req?.[ROTATED];
    if (rotated !== undefined) return rotated.owner === userId ? { at: rotated.at } : undefined;
    // @fastify/session saves the new session while request.session is still the old one.
    const previous = req?.session;
    if (previous === session || previous === null || typeof previous !== "object") return undefined;
    const old = loadedIn(previous);
    return old && this.ownerRead(old) === userId ? { at: signInOf(old) } : undefined;
  }

  /**
   * What a login write does besides the write: with `maxSessionsPerUser`, the cap; with a `newDevice`
   * listener, the device check (not for a rotation, `signIn` false: the device is the one it was).
   */
  private loginWrite(ip: string | null, signIn: boolean): LoginWrite {
    return { cap: this.options.maxSessionsPerUser, devices: signIn && ip !== null && (this.options.broadcast || this.listenerCount("newDevice") > 0) };
  }

  /**
   * What a save of an existing row this store did not load does, with a user, besides the write: the cap
   * (it may make an expired row live again), not the device check (it may be no sign-in at all).
   */
  private existingLogin(): LoginWrite | undefined {
    const cap = this.options.maxSessionsPerUser;
    return cap === undefined ? undefined : { cap, devices: false };
  }

  /**
   * Runs a save's statement; a login write with a cap in one transaction, after its user's lock, so that
   * concurrent logins of one user each count the sessions the others left (in READ COMMITTED the write's
   * snapshot is taken after the lock was granted).
   */
  private saveRows<Row>(shape: Shape, values: Record<string, unknown>, login: LoginWrite | undefined): Promise<Row[]> {
    if (login?.cap === undefined) return this.exec.run<Row>(shape, values);
    const userId = values.userId as string;
    return this.exec.transaction(async (tx) => {
      await tx.query(this.sql.loginLock(userId, this.options.timeout));
      return tx.run<Row>(shape, values);
    });
  }

  /**
   * After a login write: the sessions it evicted leave this store's cache (other instances' with the
   * NOTIFY of the same statement); returned are their `ended` events, and the new session's `newDevice`
   * when none of the user's recent rows from its IP was of its browser family and OS.
   */
  private loggedIn(row: LoginRow, session: EventRow): Announcement[] {
    const events = this.afterEvictions([], row.evicted);
    if (row.seen === undefined) return events;
    const device = describeDevice(session.user_agent);
    const seen: Array<string | null> = JSON.parse(row.seen);
    if (!seen.some((ua) => describeDevice(ua) === device)) events.push({ event: "newDevice", args: [sessionEvent(session, true)] });
    return events;
  }

  /**
   * After a statement that made sessions live (`keys`) under `maxSessionsPerUser`: they and the sessions it
   * evicted (`evicted`, the JSON array of their keys and records) leave this store's cache (other
   * instances' with the NOTIFY of the same statement); returned are the evicted ones' `ended` events.
   */
  private afterEvictions(keys: readonly string[], evicted: string | undefined): Announcement[] {
    const rows: Array<{ key: string } & EventRow> = evicted === undefined ? [] : JSON.parse(evicted);
    const gone = [...keys, ...rows.map((r) => r.key)];
    if (gone.length > 0) this.evict(gone);
    return endedEvents(rows, "evicted");
  }

  /**
   * The owner of the session a request read (or last saved), as the `user_id` column holds it; `read` is
   * its text already parsed, when the caller has it (a save's changesOf), so it is not parsed twice.
   */
  private ownerRead(loaded: Loaded, read?: Record<string, unknown>): string | null {
    return this.userIdOf((read ?? JSON.parse(loaded.text)) as SessionData);
  }

  /**
   * Updates the existing row of a session id this store did not load (with `login`, as a login write: see
   * {@link saveRows}). With `encrypt` and several keys the sealed data must name the row's own key, which
   * is not known before: each key is tried in turn.
   */
  private async saveExisting<Row>(keys: string[], values: Record<string, unknown>, session: SessionData, text: string, login: LoginWrite | undefined): Promise<Row | undefined> {
    if (!this.sealer || keys.length === 1) return (await this.saveRows<Row>(this.sql.saveExisting(keys.length, login), values, login))[0];
    for (const key of keys) {
      const [written] = await this.saveRows<Row>(this.sql.saveExisting(1, login), { ...values, k0: key, text: this.stored(key, session, text) }, login);
      if (written) return written;
    }
    return undefined;
  }

  /**
   * After a write: `next` becomes what this request compares its next save or touch with, and `row`, what
   * the row now holds (undefined: not known), is cached, unless an eviction came after `since` (another
   * instance may have ended the session right after this write, its NOTIFY overtaking the reply).
   */
  private remember(session: SessionData, next: Loaded, since: number, row: string | undefined): void {
    withLoaded(session, next);
    // Cached only if a read of the row would load it (a hit serves the text unchecked).
    if (this.cache && row !== undefined && parseSession(row)) this.cache.put(row === next.text ? next : { ...next, text: row }, since);
  }

  /**
   * The values of a merge save ({@link Statements.saveMerged}) for the keys a request changed (`patch`,
   * with the cookie) and those it deleted (`removed`): the one place they become what the statement
   * sends. @internal
   */
  protected mergeValues(rowKey: string, patch: Record<string, unknown>, removed: readonly string[], stale?: readonly StaleEntry[]): { patch: string; removed: string; reseal?: string } {
    if (!this.sealer) return { patch: JSON.stringify(patch), removed: JSON.stringify(removed) };
    // Sealed: a removed key goes under every secret's name, a changed one under the others' (the patch
    // holds it under the first secret's), so no older copy of either is left behind.
    const sealer = this.sealer;
    // With `acceptPlaintext`, a key may also be in the row in plaintext, under its own name.
    const plain = (key: string) => (this.options.encrypt!.acceptPlaintext ? [key] : []);
    const names = removed.flatMap((key) => [...sealer.storedNames(key), ...plain(key)]);
    for (const key of Object.keys(patch)) if (key !== "cookie") names.push(...sealer.storedNames(key).slice(1), ...plain(key));
    const values = { patch: JSON.stringify(sealer.seal(rowKey, patch)), removed: JSON.stringify(names) };
    // The entries this request read that are not sealed as a save would seal them now, and that it does
    // not write itself: re-sealed as the row holds them (see Statements' resealed).
    const skip = new Set([...Object.keys(patch), ...removed]);
    const reseal = stale && sealer.resealItems(rowKey, stale.filter((entry) => !skip.has(entry.key)));
    return reseal && reseal.length > 0 ? { ...values, reseal: JSON.stringify(reseal) } : values;
  }

  /** The plain JSON text of a row's `data` as a write returned it (opened, with `encrypt`), or undefined when it holds no session. */
  private rowText(key: string, data: string | undefined): string | undefined {
    if (data === undefined) return undefined;
    const opened = this.open(key, data);
    return typeof opened === "string" ? undefined : opened.text;
  }

  /**
   * @fastify/session's `regenerate` ends the old session with a plain `destroy` (a logout), then saves the
   * new one while `request.session` is still the old session: with history, that end is recorded as
   * `rotated` when the old session held a user, as express-session's `regenerate` records it.
   */
  private async recordRotation(session: SessionData, sid: string): Promise<void> {
    if (this.options.retainEnded === 0) return;
    const previous = requestOf(session)?.session;
    if (previous === session || previous === null || typeof previous !== "object") return;
    const old = loadedIn(previous);
    if (old && old.sid !== sid && this.userIdOf(previous) !== null) await this.exec.query(this.sql.rotated(old.key));
  }

  /** After a guarded save changed nothing: a conflict error, unless the session is no longer live (then nothing to save). */
  private async checkConflict(keys: string[]): Promise<void> {
    const [row] = await this.exec.query<{ live: unknown }>(this.sql.isLive(keys));
    if (row && isTrue(row.live)) {
      throw new SessionStoreError(
        "CONFLICT",
        "the session was changed by another request since this one read it; the change was not saved (reload the session and retry)",
      );
    }
  }

  /** What a touch writes, or undefined when it is skipped (the expiry is fresh and the device the same). */
  private planTouch(sid: string, session: SessionData): Touch | undefined {
    if (!isValidId(sid)) return undefined;
    const sent = this.sent();
    const now = sent.wall;
    const target = this.expiry(session, now);
    const loaded = loadedOf(session, sid);
    const { ua, ip } = requestMetadata(session);
    if (loaded && sameDevice(loaded, ua, ip) && this.fresh(loaded, target, now)) return undefined;
    // The touch writes only the cookie, but the row must stay within maxSize like any save.
    serialize(session, this.options.maxSize);
    const keys = loaded ? [loaded.key] : this.keysOf(sid);
    const cookie = session.cookie ?? {};
    const values = keyValues(keys, { life: target - now, cookie: JSON.stringify(cookie), ua, ip });
    if (this.sealer) values.tags = JSON.stringify(Object.fromEntries(keys.map((key) => [key, this.sealer!.cookieTag(key, cookie)])));
    return { sent, keys, loaded, ua, ip, values };
  }

  private async renew(session: SessionData, { sent, keys, loaded, ua, ip, values }: Touch): Promise<void> {
    this.evict(keys);
    const [written] = await this.exec.run<{ key: string } & ExpiryRow>(this.sql.touch(keys.length, this.sealer !== undefined), values);
    // Not cached: the row may hold other requests' changes since this one read it, which a touch does not
    // read back (the next get caches the row as it is); this request's own view moves on.
    if (written && loaded) withLoaded(session, { ...loaded, ua: ua ?? loaded.ua, ip: ip ?? loaded.ip, ...this.localExpiry(written, sent) });
  }

  /** Ends the session of `sid` for `reason`. @internal */
  protected async end(sid: string, reason: EndReason): Promise<boolean> {
    if (!isValidId(sid)) return false;
    const keys = this.keysOf(sid);
    this.evict(keys);
    const record = this.recordsEnds();
    const rows = await this.exec.run<{ key: string } & EventRow>(this.sql.end(keys.length, record), keyValues(keys, { reason }));
    // Evict again: a read or write of this store that overlapped the end may have cached the session.
    this.evict(keys);
    if (record) this.announceOwn(endedEvents(rows, reason));
    return rows.length > 0;
  }

  private async loadAll(): Promise<Record<string, SessionData>> {
    const rows = await this.exec.query<{ handle: string; data: string; key: string }>(this.sql.all());
    const result: Record<string, SessionData> = {};
    for (const row of rows) {
      const opened = this.open(row.key, row.data);
      if (typeof opened !== "string") result[row.handle] = opened.session;
    }
    return result;
  }

  /**
   * Runs a statement that changes sessions and ends in `returning key`: it (with `notify`) evicts the
   * changed keys from every instance's cache in the same statement, and from this store's cache before
   * the promise resolves, so an end is seen here at once. Returns one row per changed row. @internal
   */
  protected async write<Row extends { key: string } = { key: string }>(statement: SQL): Promise<Row[]> {
    const rows = await this.exec.query<Row>(statement);
    this.evict(rows.map((row) => row.key));
    return rows;
  }

  /**
   * Emits a lifecycle event: of a change this store made (`local: true`, from {@link announceOwn}), or of
   * one heard from another instance (`local: false`, with `broadcast`). The one place they are emitted
   * from. A listener that throws fails neither the operation nor the other listeners: its error is
   * reported (see {@link deliver}). @internal
   */
  protected announce<E extends LifecycleEvent>(event: E, ...args: LifecycleEvents[E]): void {
    deliver(this, event, args, (error) => this.report(error));
  }

  /**
   * Announces the events of one operation of this store, after its write: with `broadcast` they go to the
   * other instances first, sealed (SQL cannot seal them), in one NOTIFY statement that is not awaited: one
   * that fails is reported, and never fails the operation that already happened.
   */
  private announceOwn(events: readonly Announcement[]): void {
    if (events.length === 0) return;
    if (this.herald) {
      const now = this.now();
      const payloads = events.map((event) => this.herald!.seal(event, now));
      void this.exec.query(this.sql.broadcast(payloads)).catch((error) => this.report(databaseError(error, this.sql.tableName, "broadcast")));
    }
    for (const { event, args } of events) this.announce(event, ...args);
  }

  /** A payload heard on the `broadcast` channel: emitted if another instance sealed it, reported if it was refused. */
  private heard(payload: string): void {
    const opened = this.herald!.open(payload, this.now());
    if (typeof opened === "string") this.report(new SessionStoreError("UNTRUSTED_EVENT", `an event heard on the \`broadcast\` channel was dropped, never emitted: ${opened}`));
    else if (opened) this.announce(opened.event, ...opened.args);
  }

  /** Whether ends must return the ended rows' records: someone listens for `ended`, or `broadcast` sends it. */
  private recordsEnds(): boolean {
    return this.herald !== undefined || this.listenerCount("ended") > 0;
  }

  /**
   * Runs an operation, turning driver errors into errors that say what to do, inside its tracing channel
   * (`connect-drizzle:<action>`, with `detail` in the context). @internal
   */
  protected run<T>(action: string, operation: () => Promise<T>, detail?: TraceDetail): Promise<T> {
    return traced(action, this.sql.tableName, detail, () => this.attempt(action, operation));
  }

  private attempt<T>(action: string, operation: () => Promise<T>): Promise<T> {
    let promise: Promise<T>;
    try {
      promise = operation();
    } catch (error) {
      promise = Promise.reject(error);
    }
    return promise.catch((error) => {
      const ours = error instanceof SessionStoreError || (error instanceof TypeError && error.message.startsWith("connect-drizzle:"));
      if (ours) throw error;
      const wrapped = databaseError(error, this.sql.tableName, action);
      // express-session saves a new session after the response: without this the app may never show it.
      if ((wrapped.code === "TABLE_MISSING" || wrapped.code === "SCHEMA_OUTDATED") && !this.schemaReported) {
        this.schemaReported = true;
        this.report(wrapped);
      }
      throw wrapped;
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

  /** Now, on both of this server's clocks, as a statement is about to be sent. */
  private sent(): Sent {
    return { wall: this.now(), mono: performance.now() };
  }

  /**
   * A row's expiries on this server's clocks. `sent` is when the statement was sent: the database's now
   * came later, so the conversion errs early (a cached session stops being served a round trip sooner).
   */
  private localExpiry(row: ExpiryRow, sent: Sent): Pick<Loaded, "expires" | "absolute" | "authenticatedAt" | "authenticatedDb" | "servedUntil"> {
    const left = Number(row.expires);
    return {
      expires: sent.wall + left,
      absolute: row.absolute === null || row.absolute === undefined ? null : sent.wall + Number(row.absolute),
      authenticatedAt: row.authenticated === null || row.authenticated === undefined ? null : sent.mono + Number(row.authenticated),
      authenticatedDb: row.authenticated_at === null || row.authenticated_at === undefined ? null : Number(row.authenticated_at),
      servedUntil: sent.mono + Math.min(left, this.cache?.ttl ?? Infinity),
    };
  }

  private labelOf(session: SessionData): string | null {
    const label = this.options.label(session);
    return typeof label === "string" && label.length > 0 ? label.slice(0, 200) : null;
  }

  /** @internal */
  protected userIdOf(session: SessionData): string | null {
    return ownerOf(this.options.userId, session);
  }
}

/**
 * The request a session belongs to: express-session links it as `session.req`; @fastify/session keeps
 * it under a symbol (the fastify request: its headers and its `ip`).
 */
function requestOf(session: SessionData): any {
  return (session as any)?.req ?? kept(session, (value) => (value.headers !== null && typeof value.headers === "object" && "ip" in value ? value : undefined));
}

/** When a loaded session's user last authenticated, on both clocks; null when never (or not known). */
function signInOf(loaded: Loaded): SignIn | null {
  return loaded.authenticatedAt === null || loaded.authenticatedDb === null ? null : { mono: loaded.authenticatedAt, db: loaded.authenticatedDb };
}

/** Whether a request comes from the device a row records (a device not known on either side counts as the same). */
function sameDevice(loaded: Loaded, ua: string | null, ip: string | null): boolean {
  return (ua === null || ua === loaded.ua) && (ip === null || ip === loaded.ip);
}

/** User agent and client IP of the request a session belongs to (see {@link requestOf}). */
function requestMetadata(session: SessionData): { ua: string | null; ip: string | null } {
  const req = requestOf(session);
  if (!req) return { ua: null, ip: null };
  const ua = req.headers?.["user-agent"];
  const address = req.ip ?? req.socket?.remoteAddress;
  // A dual-stack server sees IPv4 clients as ::ffff:a.b.c.d; record the address people know.
  const ip = typeof address === "string" ? address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, "").slice(0, 64) : null;
  return { ua: typeof ua === "string" ? ua.slice(0, 512) : null, ip };
}

/** The `ended` events of the rows an end returned with their records. */
function endedEvents(rows: readonly EventRow[], reason: EndReason): Announcement[] {
  return rows.map((row) => ({ event: "ended", args: [{ ...sessionEvent(row, true), reason }] }));
}

/** The trace details of the fast paths that answer without a query. */
const CACHED: TraceDetail = Object.freeze({ cached: true });
const SKIPPED: TraceDetail = Object.freeze({ skipped: true });

/** The most an expiry can seem earlier than stored through clock conversion alone, ms (see `fresh`). */
const CLOCK_ERROR = 1_000;
/** How often `broadcast` proves its LISTEN still hears the database, ms (see notify.ts `hear`). */
const BROADCAST_PROBE_INTERVAL = 30_000;
