import type { IncomingMessage, ServerResponse } from "node:http";
import type { SessionData } from "express-session";
import { assemble, type StoreParts } from "./assemble.js";
import { StoreRecords } from "./store-records.js";
import type { Binding } from "./binding.js";
import { answer, answerNow, type Callback } from "./callback.js";
import type { StoreContext } from "./context.js";
import { attempt } from "./errors.js";
import type { SessionStoreEvents, SessionStoreListener } from "./events.js";
import { isValidId } from "./hash.js";
import { LOADED, Mark, withLoaded } from "./loaded.js";
import type { SessionStoreOptions } from "./options.js";
import { sessionOwner } from "./owner.js";
import type { ReplicaStats } from "./replicas.js";
import type { ReapResult } from "./reaper.js";
import type { Records } from "./records.js";
import { readSession } from "./read.js";
import { registerRotator, rotateRequest, rotationHook } from "./rotation.js";
import { mintFrom, recentLoginGuard, signedInAt, type RequireRecentLoginOptions } from "./reauth.js";
import { isTraced, traced, type TraceDetail } from "./trace.js";
import type { Writes } from "./writes.js";

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
 * This class holds the express-session contract, in express-session's order, and delegates: a session's
 * row to `Writes` (writes.ts), the records API to `Records` (records.ts), the rest of its parts (SQL,
 * execution and timeouts, the read cache, events, the reaper) are built by `assemble` (assemble.ts).
 */
// biome-ignore lint/suspicious/noUnsafeDeclarationMerging: the interface above only narrows EventEmitter's methods to the store's events.
export class SessionStore extends StoreRecords {
  /** What the store's parts share: options, statements, executor, keys, cache, sealer, events. */
  private readonly s: StoreContext;
  /** Reading, saving, touching and ending a session's row. */
  private readonly writes: Writes;
  /** The records API: list, count, revoke, extend (the methods are StoreRecords'). @internal */
  protected readonly records: Records;
  /** A signed-in session used from another device (`onBindingChange`). */
  private readonly binding: Binding;
  /** The rest: the reaper, `ready`'s checks, and what `close` stops. */
  private readonly parts: StoreParts;

  constructor(options: SessionStoreOptions) {
    super();
    // The store's own now, evict, report, run and userIdOf: a test's subclass may override them.
    this.parts = assemble(options, {
      emitter: this,
      now: () => this.now(),
      evict: (keys) => this.evict(keys),
      report: (error) => this.report(error),
      run: (action, operation, detail) => this.run(action, operation, detail),
      userIdOf: (session) => this.userIdOf(session),
    });
    ({ s: this.s, writes: this.writes, records: this.records, binding: this.binding } = this.parts);
    registerRotator(this, { rotations: this.parts.rotations, renewAfter: this.s.options.renewAfter });
  }

  /**
   * Loads a live session; `null` when it is missing, expired or ended. Under load, gets that arrive
   * while lookups are in flight share one statement (the rows of every waiting id at once); a lone get is
   * sent at once, never held back for others. Each get still has its own outcome: its session or `null`,
   * the error of the statement it was in, and `TIMEOUT` no later than `timeout` after its own call.
   */
  get(sid: string, callback?: Callback<SessionData | null>): Promise<SessionData | null> {
    const binding = this.binding.pending(sid);
    if (binding) return this.op("get", () => binding.then(() => this.get(sid)), callback);
    // A cache hit answers without an operation's promise chain (it costs what MemoryStore's get costs).
    const cached = this.s.cache && isValidId(sid) ? this.s.cache.get(sid, performance.now()) : undefined;
    // Cached text was checked when it was cached (parseSession on read, and on write in remember).
    if (cached) {
      const hit = () => answerNow(withLoaded(JSON.parse(cached.text) as SessionData, { ...cached }), callback);
      return isTraced("get") ? traced("get", this.s.sql.tableName, CACHED, hit) : hit();
    }
    return this.op("get", () => readSession(this.s, sid), callback);
  }

  /**
   * Saves a session. A session this request loaded (`req.session`, or what `get` returned) is updated in
   * place, and only while it is live: a save never brings back a session that ended or expired meanwhile.
   * A session the store did not load here (a new id) is inserted; one whose row exists is updated (an
   * expired row is live again; with `maxSessionsPerUser`, as a login, its user's sessions beyond the cap
   * end, or with `whenFull: "refuse"` the save fails with `SESSION_LIMIT` and writes nothing). A user id (the `userId` option) that does not fit the `user_id` column's type fails the save
   * with a `SessionStoreError` of code `INVALID_USER_ID`. Unchanged sessions are not rewritten.
   * With `merge` (the default) a loaded session's save writes only the top-level keys its request changed
   * or deleted, and the cookie, over what the row holds now.
   */
  set(sid: string, session: SessionData, callback?: Callback): Promise<void> {
    const binding = this.binding.pending(sid);
    return this.op("set", () => (binding ? binding.then(() => this.writes.save(sid, session)) : this.writes.save(sid, session)), callback);
  }

  /** Ends a session (express-session's destroy and logout). Succeeds when there is no such session. */
  destroy(sid: string, callback?: Callback): Promise<void> {
    return this.op("destroy", async () => void (await this.writes.end(sid, "logout")), callback);
  }

  /**
   * Renews a session's idle expiry and saves its cookie; skipped while the new expiry is later than the
   * stored one by less than `touchAfter` (an earlier expiry is always written).
   */
  override touch(sid: string, session: SessionData, callback?: Callback): Promise<void> {
    const binding = this.binding.pending(sid);
    if (binding) return this.op("touch", () => binding.then(() => this.writes.touch(sid, session)?.()), callback);
    let write: (() => Promise<void>) | undefined;
    try {
      write = this.writes.touch(sid, session);
    } catch (error) {
      return this.op("touch", () => Promise.reject(error), callback);
    }
    // A skipped touch (the common case) answers at once, without an operation's promise chain.
    if (write) return this.op("touch", write, callback);
    return isTraced("touch") ? traced("touch", this.s.sql.tableName, SKIPPED, () => answerNow(undefined, callback)) : answerNow(undefined, callback);
  }

  /**
   * Every live session, keyed by its public handle (not by session id: the store never knows the ids,
   * only their hashes).
   */
  override all(callback?: Callback<Record<string, SessionData>>): Promise<Record<string, SessionData>> {
    return this.op("all", () => this.writes.loadAll(), callback);
  }

  /** The number of live sessions. */
  override length(callback?: Callback<number>): Promise<number> {
    return this.op("length", () => this.writes.count(), callback);
  }

  /** Deletes every session and every ended-session record in the table. */
  override clear(callback?: Callback): Promise<void> {
    return this.op("clear", () => this.writes.clear(), callback);
  }

  /**
   * Ends the old session of `req` and gives it a new id (express-session's `req.session.regenerate`,
   * which passport calls on login and logout). The old record ends as `rotated` while it still holds a
   * user, as `logout` once the user was removed from it.
   */
  override regenerate(req: any, callback: (err?: any) => any): void {
    void this.op(
      "regenerate",
      () => this.writes.regenerate(req),
      (err) => {
        // express-session assigns generate() to the store when the middleware is created.
        (this as unknown as { generate(req: unknown): void }).generate(req);
        callback(err);
      },
    );
  }

  /**
   * express-session builds `req.session` from what `get` returned; carry over what was loaded (hidden,
   * never serialized), so this request's own touch and save compare against what this request read.
   */
  override createSession(req: any, data: SessionData): any {
    const loaded = Mark.loaded((data as any)?.[LOADED]);
    const session = super.createSession(req, data);
    if (!loaded) return session;
    // Checked against its row's device before the app sees it (`onBindingChange`).
    return this.binding.created(req, data, withLoaded(session, loaded), (r) => (this as unknown as { generate(req: unknown): void }).generate(r));
  }

  /**
   * Checks a session this store loaded against the device its row recorded (see `onBindingChange`),
   * in memory: on a change it emits `bindingChanged` and, with `"end"`, ends the session. express-session's
   * requests are checked when they get their session; call this for @fastify/session's in a `preHandler`
   * hook, and with `true` give the request a new session (`await request.session.regenerate()`).
   * @returns whether the session ended (with `onBindingChange: "end"`), so the request must not use it
   */
  async checkBinding(session: unknown): Promise<boolean> {
    const sid = (session as any)?.sessionId ?? (session as any)?.id;
    const change = typeof sid === "string" ? this.binding.check(sid, session as SessionData) : undefined;
    if (change) await change.done;
    return change?.ends === true;
  }

  /**
   * Records that the user of a live session just proved who they are again (a password re-entry, a
   * WebAuthn assertion): its `authenticatedAt` becomes the database's now, for {@link requireRecentLogin},
   * and its clocks restart (`restartOnReauthentication`). Given the request (`req`, @fastify/session's
   * `request`), the session also gets a new id, as {@link rotateSession} gives it, and the request sees the
   * new sign-in at once. Given a session id, the id stays, and the request in progress keeps what it read.
   * @returns whether a live session was marked
   */
  markAuthenticated(sessionOrRequest: string | object): Promise<boolean> {
    if (typeof sessionOrRequest === "string") return this.run("markAuthenticated", () => this.parts.rotations.markAuthenticated(sessionOrRequest));
    return this.run("markAuthenticated", () => rotateRequest(sessionOrRequest, true));
  }

  /**
   * Gives the live session of `sessionId` the id `newId` (see {@link rotateSession}, which does it for a
   * request and its response). Only from the session's current id.
   * @returns whether a session was rotated
   */
  async rotate(sessionId: string, newId: string): Promise<boolean> {
    return (await this.run("rotate", () => this.parts.rotations.rotate(sessionId, newId, undefined, false))) !== undefined;
  }

  /**
   * The rotation hook, an Express middleware and a @fastify/session `preHandler` hook: rotates a session
   * older than `renewAfter`, and keeps a request with an id rotated away from (within its grace window)
   * from sending that id back. `sessionMiddleware` runs it; after plain express-session `app.use(store.rotation())`.
   */
  rotation(): (req: any, res: any, next: (err?: any) => void) => void {
    return rotationHook(this);
  }

  /**
   * When the user of a session loaded by this store (express-session's `req.session`, @fastify/session's
   * `request.session`) last proved who they are: their login, or the latest {@link markAuthenticated}.
   * Read from what the request loaded (or its own last save), without a query. `null` for a session
   * this store did not load, one without a user, or one whose user changed since it was loaded.
   */
  authenticatedAt(session: unknown): Date | null {
    return signedInAt(session, this.s, (loaded) => this.writes.ownerRead(loaded));
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
  mint(sid: string, data: object, from: unknown): Promise<string> {
    return mintFrom(this, this.s, (handle) => this.parts.rotations.currentKey(handle), this.writes, sid, data, from);
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
    return recentLoginGuard(this, () => this.now(), maxAge, options);
  }

  /**
   * Runs one reaper round now (whether or not the periodic reaper is on): deletes expired sessions, and
   * ended ones past `retainEnded`, in batches; `skipped: true` when another instance was reaping. Each
   * statement of the round is bounded by the store's `timeout`. On serverless platforms, where the timer never
   * fires, create the store with `reaper: false` and call this from a cron route (docs/reaper.md, "Serverless").
   * @throws SessionStoreError when the round fails (`TIMEOUT`, `TABLE_MISSING`, `DATABASE`, ...)
   */
  reap(): Promise<ReapResult> {
    return this.parts.reap();
  }

  /**
   * With a `withReplicas` database: how many lookups its replicas answered, how many the primary did,
   * and how many a replica was asked but could not answer (behind, failed or slow). Undefined without.
   */
  replicaStats(): ReplicaStats | undefined {
    return this.s.replicas?.stats();
  }

  /**
   * Checks, with one query, that the sessions table exists and has every column this version uses.
   * Await it before `app.listen`: without it a missing migration shows only once visitors arrive, and
   * express-session saves a new session after the response is sent, so the first visitors get their
   * page while their sessions are lost (the error then also goes once to the `error` event or console).
   * With `cache` or `broadcast` it also waits (up to `timeout`) until their LISTEN hears what this store
   * NOTIFYs, proven by a probe. With read replicas it asks each who it is, so the first lookups may read
   * them (a replica that does not answer is skipped, not an error).
   * @throws SessionStoreError `TABLE_MISSING` (no table) or `SCHEMA_OUTDATED` (missing columns), saying
   * what to run; `DATABASE` or `TIMEOUT` when the database cannot answer; `LISTEN_DEAF` when the LISTEN of
   * `cache` or `broadcast` hears nothing (behind pgbouncer in transaction mode: give the store `listen`);
   * `READ_ONLY` when `db` is a standby
   */
  ready(): Promise<void> {
    return this.run("ready", () => this.parts.ready());
  }

  /** Whether a missing table or column was already reported (once per store: every statement would hit it). */
  private schemaReported = false;

  /**
   * Stops the reaper (a round in progress ends after its current batch), the LISTEN connections (the
   * cache's, `broadcast`'s) and every timer. Never closes the database you passed in.
   */
  close(): Promise<void> {
    return this.parts.close();
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
    this.s.cache?.evict(keys);
  }

  /** An express-session operation: {@link run}, and its callback called once, on a later tick. */
  private op<T>(action: string, operation: () => Promise<T>, callback: Callback<T> | undefined): Promise<T> {
    return answer(this.run(action, operation), callback);
  }

  /**
   * Runs an operation, turning driver errors into errors that say what to do, inside its tracing channel
   * (`connect-drizzle:<action>`, with `detail` in the context). @internal
   */
  protected run<T>(action: string, operation: () => Promise<T>, detail?: TraceDetail): Promise<T> {
    return traced(action, this.s.sql.tableName, detail, () =>
      attempt(action, this.s.sql.tableName, operation, (error) => {
        // express-session saves a new session after the response: without this the app may never show it.
        if (this.schemaReported) return;
        this.schemaReported = true;
        this.report(error);
      }),
    );
  }

  /**
   * Reports a problem that must not fail the request (a corrupt row, a reaper round that failed): emitted
   * as `error` when the app listens for it, written to the console otherwise. @internal
   */
  protected report(error: Error): void {
    if (this.listenerCount("error") > 0) this.emit("error", error);
    else console.warn(error.message);
  }

  /** Whether a session holds a user, as the `userId` option finds one (`sessionMiddleware`'s `clearSiteData`). @internal */
  hasUser(session: object): boolean {
    return this.userIdOf(session as SessionData) !== null;
  }

  /** @internal */
  protected userIdOf(session: SessionData): string | null {
    return sessionOwner(this.s.options.userId, session);
  }
}

/** The trace details of the fast paths that answer without a query. */
const CACHED: TraceDetail = Object.freeze({ cached: true });
const SKIPPED: TraceDetail = Object.freeze({ skipped: true });
