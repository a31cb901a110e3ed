import { hear, type Hearing } from "./listen.js";
import type { AnyPgDatabase } from "./options.js";
import { profileOf } from "./driver.js";

/**
 * The opt-in read cache: recently read or written sessions, by session id, least recently used first.
 *
 * What keeps it from ever serving a session that ended (on this instance or another):
 * 1. It is served only while it is `live`: its LISTEN connection is up and a probe NOTIFY, sent through
 *    the app's own database like every write, has come back on it since. A LISTEN that cannot hear the
 *    writes (pgbouncer in transaction mode) never turns it on; a lost connection or a probe that does not
 *    return turns it off and empties it.
 * 2. Every statement that ends or changes an existing session NOTIFYs its row key, in the same statement;
 *    every instance evicts that key when it hears it. This instance evicts it itself before the statement
 *    is sent and again when its reply comes back, so an end through this store is seen here at once.
 * 3. A result is cached only if its session was not evicted between its statement being sent and its
 *    reply (`since` = {@link ReadCache.evictions} read before sending): such a result may predate the change
 *    the eviction was for. Evictions are tracked per row key, so one session's writes never keep another's
 *    results out; an eviction of every session (`*`), or one this cache no longer remembers, refuses all.
 * 4. An entry is served only until its `servedUntil`, on the monotonic clock: the row's expiry as read
 *    (converted early, by the statement's round trip), or its `ttl`, whichever comes first. A wall clock
 *    stepped back never stretches it.
 *
 * Inserts of new session ids need no NOTIFY: no instance can hold a session that did not exist.
 */
export class ReadCache<Entry extends CacheEntry> {
  /** Bumped on every eviction (local or from a NOTIFY); see invariant 3. */
  evictions = 0;
  /** The count of {@link evictions} at each row key's latest eviction (invariant 3), up to {@link rememberedKeys}. */
  private readonly evictedAt = new Map<string, number>();
  /**
   * Results sent before this count are refused whatever their key: an eviction of every session, or one
   * of the keys {@link evictedAt} forgot to stay bounded, came after them.
   */
  private refusedBefore = 0;
  /** Whether entries may be served (invariant 1). */
  live = false;
  private readonly bySid = new Map<string, Entry>();
  /** Row key to session id, for evictions (NOTIFY payloads are row keys). */
  private readonly sidOfKey = new Map<string, string>();
  /**
   * A key a session was rotated away from to the key it has now ({@link alias}): an eviction of the old key
   * (a sign-out through the old id) evicts the session under its current key too. Bounded like {@link evictedAt}.
   */
  private readonly current = new Map<string, string>();
  private hearing: Hearing | undefined;

  constructor(
    private readonly settings: { max: number; ttl: number },
    private readonly io: {
      /** The database the LISTEN connection is opened on: the store's `listen`, else its `db`. */
      listenDb: AnyPgDatabase;
      channel: string;
      /** How long a probe may take to come back, ms (the store's `timeout`). */
      deadline: number;
      /** Sends a NOTIFY with this payload through the app's database. */
      notify(payload: string): Promise<unknown>;
      /** Reports a problem that does not fail a request. */
      report(error: Error): void;
      /** Describes a failed probe. */
      probeError(error: unknown): Error;
      /** Evicts the row key of a NOTIFY heard from another instance (through the store, which calls {@link ReadCache.evict}). */
      heard(key: string): void;
    },
  ) {}

  get ttl(): number {
    return this.settings.ttl;
  }

  /** The entry of `sid`, if it may be served now (`mono`: `performance.now()`). */
  get(sid: string, mono: number): Entry | undefined {
    if (!this.live) return undefined;
    const entry = this.bySid.get(sid);
    if (!entry) return undefined;
    if (entry.servedUntil > mono) return entry;
    this.remove(sid);
    return undefined;
  }

  /**
   * Taken just before a statement is sent: caches what it answers ({@link put}), unless an eviction came in
   * between, since the answer may predate the change that eviction announced (invariant 3).
   */
  ticket(): (entry: Entry) => void {
    const since = this.evictions;
    return (entry) => this.put(entry, since);
  }

  /** Caches an entry read or written by a statement sent when `evictions` was `since` (invariant 3; see {@link ticket}). */
  put(entry: Entry, since: number): void {
    if (!this.accepts(entry.key, since)) return;
    this.remove(entry.sid);
    this.bySid.set(entry.sid, entry);
    this.sidOfKey.set(entry.key, entry.sid);
    if (this.bySid.size > this.settings.max) this.remove(this.bySid.keys().next().value!);
  }

  /** Whether a result for row `key` from a statement sent when `evictions` was `since` may be cached (invariant 3). */
  accepts(key: string, since: number): boolean {
    return since >= this.refusedBefore && (this.evictedAt.get(key) ?? 0) <= since;
  }

  /** Forgets the sessions of these row keys (`*`: every session). */
  evict(keys: readonly string[]): void {
    const at = ++this.evictions;
    for (const key of keys) {
      if (key === "*") {
        this.bySid.clear();
        this.sidOfKey.clear();
        this.evictedAt.clear();
        this.current.clear();
        this.refusedBefore = at;
        continue;
      }
      const sid = this.sidOfKey.get(key);
      if (sid !== undefined) this.remove(sid);
      const now = this.current.get(key);
      const moved = now === undefined ? undefined : this.sidOfKey.get(now);
      if (moved !== undefined) this.remove(moved);
      // Bounded: once too many keys are remembered, forget them all and refuse every result sent before.
      if (this.evictedAt.size >= this.rememberedKeys) {
        this.evictedAt.clear();
        this.refusedBefore = at;
      }
      this.evictedAt.set(key, at);
    }
  }

  /**
   * Records that the session whose row key is now `key` was rotated away from each of `olds`: a sign-out
   * through one of those ids that finds nothing to end (another instance ended the session first, its
   * NOTIFY not heard yet) still takes the session out of this cache ({@link evict}).
   */
  alias(olds: readonly string[], key: string): void {
    for (const old of olds) {
      if (this.current.size >= this.rememberedKeys) this.current.delete(this.current.keys().next().value!);
      this.current.set(old, key);
    }
  }

  /**
   * How many evicted keys are remembered for invariant 3: enough for the evictions that can come in during
   * one round trip of a busy instance; past it, results in flight are refused (they are read again).
   */
  private get rememberedKeys(): number {
    return Math.max(4_096, this.settings.max);
  }

  /**
   * Opens the LISTEN connection (on `listenDb`) and proves it hears the app's writes ({@link hear}): the
   * cache is served only while it does, and is emptied whenever it may have missed a notification.
   * @throws TypeError when the driver cannot LISTEN (nothing is opened then): a cache that could never be
   *   told of another instance's writes must not start, and a cache that stays off for good is a setting
   *   that silently does nothing
   */
  start(): void {
    const hearing = hear(this.io.listenDb, this.io.channel, {
      name: "the read cache",
      meanwhile: "the cache is off (every read goes to the database) until it hears again",
      notify: this.io.notify,
      deadline: Math.min(this.io.deadline, this.probeInterval),
      interval: this.probeInterval,
      onMessage: (payload) => this.io.heard(payload),
      onLive: () => {
        // Anything cached before this point may have missed notifications.
        this.evict(["*"]);
        this.live = true;
      },
      onDeaf: () => {
        this.live = false;
        this.evict(["*"]);
      },
      report: this.io.report,
      probeError: this.io.probeError,
    });
    if (hearing === undefined) {
      throw new TypeError(
        `connect-drizzle: the read cache needs LISTEN/NOTIFY, which ${profileOf(this.io.listenDb).name} cannot do here (the cache listens ` +
          "through drizzle-orm/node-postgres or drizzle-orm/pglite only; an HTTP driver such as pg-proxy or neon-http keeps no " +
          "connection open to listen on); remove `cache` (every read then goes to the database, one query each), or give the " +
          "store a drizzle-orm/node-postgres database (as `db`, or as `listen` beside an HTTP `db`)",
      );
    }
    this.hearing = hearing;
  }

  /** Resolves once the cache hears the app's writes; rejects when it cannot (see {@link Hearing.proven}). */
  proven(): Promise<void> {
    return this.hearing?.proven() ?? Promise.resolve();
  }

  /** How often the LISTEN is proven again, ms: well within the ttl, from 1 to 30 s. */
  private get probeInterval(): number {
    return Math.max(1_000, Math.min(this.settings.ttl / 2, 30_000));
  }

  /** Stops probing, empties the cache and closes the LISTEN connection. */
  async close(): Promise<void> {
    this.live = false;
    this.evict(["*"]);
    const hearing = this.hearing;
    this.hearing = undefined;
    await hearing?.close();
  }

  private remove(sid: string): void {
    const entry = this.bySid.get(sid);
    if (!entry) return;
    this.bySid.delete(sid);
    this.sidOfKey.delete(entry.key);
  }
}

/** What the cache needs of an entry. */
export interface CacheEntry {
  sid: string;
  /** The row's key: NOTIFY payloads name rows by key. */
  key: string;
  /** Until when it may be served, on the monotonic clock (`performance.now()`). */
  servedUntil: number;
}
