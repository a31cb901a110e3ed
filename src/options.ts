import type { SessionData } from "express-session";
import type { SessionTable } from "./schema.js";
import type { SealSettings } from "./seal.js";

/*
 * The options, declared: every option of the store, its cache, encryption and reaper, each with its TSDoc
 * and `@default`. resolve-options.ts checks them, holds their defaults (one table, DEFAULTS) and applies
 * them; database.ts tells a drizzle Postgres database. Both are re-exported here, so that a module reads
 * everything about options from this one.
 */
export { entityKinds, isPgDatabase, primaryOf } from "./database.js";
export {
  batchSizeOption,
  CACHE_OPTIONS,
  DEFAULT_TIMEOUT,
  ENCRYPT_OPTIONS,
  REAPER_OPTIONS,
  REPLICA_READ_OPTIONS,
  resolveOptions,
  resolveReaperOptions,
  SESSION_CAP_OPTIONS,
  secretList,
  sessionTable,
  STORE_OPTIONS,
} from "./resolve-options.js";
export type { CacheOptions, EncryptOptions, ReplicaReadOptions, SessionCapOptions } from "./sub-options.js";
import type { CacheOptions, EncryptOptions, ReplicaReadOptions, SessionCapOptions } from "./sub-options.js";

/** drizzle's Postgres database class: `PgAsyncDatabase` from drizzle-orm 1.0, `PgDatabase` before it. */
type PgDatabaseClass = typeof import("drizzle-orm/pg-core") extends { PgAsyncDatabase: infer C }
  ? C
  : typeof import("drizzle-orm/pg-core") extends { PgDatabase: infer C }
    ? C
    : never;

/**
 * Any drizzle Postgres database: node-postgres, postgres.js, PGlite, Neon, ..., on drizzle-orm 0.44, 0.45
 * and 1.0: the installed version's own database class, with any schema (so without the schema-typed
 * relational `query` API).
 */
export type AnyPgDatabase = Omit<PgDatabaseClass extends abstract new (...args: any) => infer Db ? Db : never, "query" | "_">;

/** Finds the owner of a session in its data; return `undefined` or `null` for an anonymous session. */
export type UserIdOf = (session: SessionData) => string | number | bigint | null | undefined;

/** Options of `new SessionStore(options)`. Durations are in milliseconds, like express-session's `maxAge`. */
export interface SessionStoreOptions {
  /**
   * A drizzle Postgres database. The store never closes or reconfigures it. Required. A drizzle
   * `withReplicas(primary, [replica, ...])` database sends session lookups to the replicas (see
   * `replicaReads`) and everything else to the primary.
   */
  db: AnyPgDatabase;
  /**
   * The sessions table, from {@link createSessionTable} for a custom name or Postgres schema.
   * @default sessions (the table the shipped migrations create)
   */
  table?: SessionTable;
  /**
   * Keys for HMAC-SHA-256 of session ids. Without them ids are hashed with plain SHA-256 (a leaked table
   * still opens no session). The first secret keys new rows; the others are still accepted on read, and
   * rows created under them keep their key until they end, so keep an old secret listed until the
   * sessions created under it have expired (your cookie maxAge), as you do for express-session's secret.
   * With `broadcast` (which needs them), the keys that seal its events are derived from them too.
   * @default [] (SHA-256)
   */
  secrets?: string | readonly string[];
  /**
   * Encryption at rest of the session data (AES-256-GCM), with secrets of its own: every key of a session but its cookie is stored
   * encrypted, under a hashed name. A row that does not decrypt (altered, moved from another row, sealed
   * under an unknown secret, or in plaintext) is a `CORRUPT_ROW` error event and a missing session.
   * @default undefined (data stored as plain jsonb)
   */
  encrypt?: EncryptOptions;
  /**
   * Lifetime of a session whose cookie has no expiry (a browser-session cookie, or an invalid `expires`).
   * @default 86_400_000 (one day)
   */
  ttl?: number;
  /**
   * Idle timeout: a session unused for this long is dead, whatever its cookie says. Activity renews it.
   * @default undefined (the cookie's maxAge, or `ttl`, is the idle timeout)
   */
  idleTimeout?: number;
  /**
   * Absolute timeout: a session is dead this long after it was created, whatever the activity; no activity
   * renews it, a re-authentication restarts it (`restartOnReauthentication`). Turned on later, it applies
   * at once to existing sessions, counted from their creation.
   * @default undefined (no absolute limit)
   */
  absoluteTimeout?: number;
  /**
   * How long an id a session was rotated away from (`rotateSession`, `markAuthenticated` of a request,
   * `renewAfter`) still opens it, in ms: requests already in flight with the old cookie neither fail nor
   * fork the session (their writes land in it, and their responses do not send the old id again). After
   * it the old id opens nothing, and with `detectReuse` ends the session. A request that read the session
   * before the rotation and answers after it does not send the old id back either, when the rotation was
   * this instance's, or another's that its `cache` heard of.
   * @default 10_000
   */
  rotationGrace?: number;
  /**
   * Theft detection: an id a session was rotated away from, used after `rotationGrace`, means the old
   * cookie or token was copied. The session ends everywhere (reason `reused`, an `ended` event) and that
   * lookup fails with a `SessionStoreError` of code `SESSION_REUSED` (status 401), for the app to say why
   * the user was signed out. `false`: such an id opens nothing, like an unknown one. Every id a session
   * was rotated away from is known while it lives, each with its own grace window.
   * @default true
   */
  detectReuse?: boolean;
  /**
   * Renewal timeout: a session whose id is older than this (since it was created or last rotated) gets a
   * new id on its next request, with the `rotationGrace` window for the old one, so that a copied cookie
   * stops working even while the user stays active. Done by `sessionMiddleware`, or by
   * `store.rotation()` after plain express-session or as a @fastify/session preHandler hook.
   * @default undefined (an id is kept for the session's life, or until the app rotates it)
   */
  renewAfter?: number;
  /**
   * A re-authentication (`markAuthenticated`) restarts the session's clocks: its idle expiry from now, and
   * with `absoluteTimeout` its absolute expiry from now too (NIST SP 800-63B-4 §5.2). `false`: the absolute
   * expiry stays counted from the sign-in.
   * @default true
   */
  restartOnReauthentication?: boolean;
  /**
   * A touch (or an unchanged save) writes only when it moves the stored expiry later by more than this,
   * or by more than a tenth of the session's lifetime, whichever is less; an earlier expiry is always
   * written. So a read-only request costs one query and no write; the stored expiry (and last-seen time)
   * lags the cookie's by at most this much.
   * @default 60_000 (one minute)
   */
  touchAfter?: number;
  /**
   * Finds the user id in the session data; it is stored in its own indexed column (of the type
   * `createSessionTable`'s `userIdType` gives it), for listing and revoking a user's sessions, by every save
   * that changes it (a merged save of a request that did not change the user leaves the column as another
   * request may have set it). Read it from one top-level key, so that two tabs cannot each change half of
   * what decides it. An id that does not fit the column's type fails the save with `INVALID_USER_ID`.
   * @default session.passport.user, then session.userId
   */
  userId?: UserIdOf;
  /**
   * Finds a display name for the session in its data ("CLI token", "Work laptop"); stored in its own
   * column on every save that has one, and kept in the ended-session history.
   * @default session.label when it is a string
   */
  label?: (session: SessionData) => string | null | undefined;
  /**
   * Keep ended sessions (logout, revoked, expired, rotated), without their data, for this long, to list
   * them as history with `status: "ended"`. With 0 an ended session's row is deleted at once (a request
   * still in flight cannot bring it back either way: a save of a loaded session only updates a live row).
   * @default 0
   */
  retainEnded?: number;
  /**
   * Largest serialized session accepted, in bytes; a bigger `set` fails with a `TOO_LARGE` error and the
   * stored session is left as it was.
   * @default 1_048_576 (1 MiB)
   */
  maxSize?: number;
  /**
   * Opt-in read cache: an in-process LRU of recently read sessions, so a read-only request costs no query.
   * Every change or end of an existing session (save, touch, destroy, revoke, extend, clear) on any
   * instance sends a Postgres NOTIFY that evicts the session everywhere, and the whole cache is dropped
   * (and bypassed) while the LISTEN connection is down, so a revoked session is never served after the notification could have been missed. Needs node-postgres
   * or PGlite (the store opens one extra connection of its own for LISTEN, and closes it on `close()`).
   * On any other driver, HTTP ones included (pg-proxy, neon-http, xata-http: no connection stays open to
   * LISTEN on), the constructor throws a `TypeError` naming the driver, rather than run without the cache.
   * So does a table whose `user_id` references your users `on delete cascade` (`createSessionTable`'s
   * `references`): the database's own deletes send no NOTIFY. It is served only while a probe NOTIFY
   * sent through `db` comes back on its LISTEN: behind pgbouncer in transaction mode it stays off,
   * `ready()` rejects and a `LISTEN_DEAF` error event says so (give the store `listen`).
   * @default undefined (no cache: every read is one query)
   */
  cache?: CacheOptions;
  /**
   * Send the NOTIFY that evicts a session from other instances' caches after every write that changes or
   * ends an existing session (a new session needs none); the write's call resolves once it has committed.
   * Concurrent writes share one NOTIFY statement (Postgres serializes notifying commits), sent on node-postgres
   * on a connection of the store's own (a new client with your pool's settings), so that it never waits in
   * your pool's queue behind the writes it announces. Every instance
   * sharing the table must have it on when any of them uses `cache`; it is off unless this store has a
   * cache; `false` together with `cache` is refused.
   * @default true with `cache`, false without
   */
  notify?: boolean;
  /**
   * Send every lifecycle event (`created`, `ended`, `newDevice`) to the other instances on the table too,
   * and emit theirs with `local: false`. After the write that created or ended sessions, the store sends
   * that operation's events in one NOTIFY statement of its own (failures are reported, never fail the
   * operation), each sealed with AES-256-GCM under a key derived from `secrets`, which it needs: the
   * channel carries no user id, IP or user agent in the clear, and an event that anyone else who can
   * connect to the database NOTIFYs (forged, altered, replayed, or sent more than 60 s from this server's
   * clock) is dropped and reported as an `UNTRUSTED_EVENT` error event, never emitted. Each store with
   * `broadcast` LISTENs (node-postgres and PGlite: a connection of its own; postgres.js: its listen
   * connection). Delivery is at most once: an event sent while an instance's LISTEN connection is down is
   * lost to it (for an audit trail of record, keep history with `retainEnded` and read it with `list`). On
   * a driver that cannot LISTEN (pg-proxy, neon-http) the events are still sent, and this store emits only
   * its own (give it `listen` to hear the others). Its LISTEN is proven by a probe NOTIFY sent through `db`
   * (at the start and every 30 s): when the probe does not come back (pgbouncer in transaction mode),
   * `ready()` rejects and a `LISTEN_DEAF` error event says to give the store `listen`. Call `close()` to
   * stop listening.
   * @throws TypeError at construction without `secrets` (the same on every instance, 32 characters or more)
   * @default false
   */
  broadcast?: boolean;
  /**
   * A database connected straight to Postgres, used only to LISTEN (for `cache` and `broadcast`), when
   * `db` cannot: behind pgbouncer in transaction mode a LISTEN runs on a server connection that is then
   * handed to other clients, so it hears nothing, and an HTTP driver (pg-proxy, neon-http) keeps no
   * connection open. Writes, and the probes that prove the LISTEN hears them, still go through `db`.
   * The store opens its LISTEN connections on it and never closes the database itself. Without it, a
   * LISTEN that hears nothing is reported (a `LISTEN_DEAF` error event, and `ready()` rejects).
   * @example listen: drizzle({ client: new pg.Pool({ connectionString: process.env.DIRECT_DATABASE_URL, max: 1 }) })
   * @default undefined (LISTEN on `db`)
   */
  listen?: AnyPgDatabase;
  /**
   * Save only what a request changed: a save of a session the request loaded writes the top-level keys it
   * set, changed or deleted (and the cookie), applied to the row as it is now, so two tabs that change
   * different keys (a cart, a theme) both keep their change; for the same key the later save wins. A
   * nested object is one key. `false`: the last save wins on the whole session. Not with `versioned`
   * (choose one: together they are a `TypeError`).
   * @default true, or false with `versioned: true`
   */
  merge?: boolean;
  /**
   * Refuse to overwrite a session that another request changed since this request read it (two tabs
   * saving at once): the later save fails with a `CONFLICT` error instead of silently winning. Without
   * it saves merge by top-level key (`merge`), except that an unchanged session is never written back,
   * so a request that only read cannot undo another's change.
   * @default false
   */
  versioned?: boolean;
  /**
   * Longest wait for one database operation, in ms, connection wait included; past it the operation
   * fails with a `TIMEOUT` error (express answers 500) instead of hanging the request. A write that
   * timed out may still complete in the database. Each statement of a reaper round is bounded by it too.
   * @default 10_000
   */
  timeout?: number;
  /**
   * The periodic reaper, which deletes expired sessions (and history past `retainEnded`) in bounded
   * batches, one instance at a time; `false` turns it off (e.g. when `npx connect-drizzle reap` runs from
   * cron). Correctness never depends on it: expired sessions are never returned anyway.
   * @default { interval: 900_000, batchSize: 5_000, jitter: 0.1 }
   */
  reaper?: ReaperOptions | false;
  /**
   * Most live sessions one user may have, and what a sign-in past it does: a number `n` is
   * `{ limit: n }`, which ends that user's least recently used live sessions beyond it, as `evicted`, in
   * the write that signs the user in (a login's new session, or a session that gains a user; the `ended`
   * event tells of each); with `whenFull: "refuse"` that write writes nothing instead and fails with a
   * `SessionStoreError` of code `SESSION_LIMIT` (status 403). So does every other write that makes a
   * session of the user live again: `extend` of an expired session, and a `set` of an id whose row exists
   * but was not loaded for the request. Logins of one user are serialized by an advisory lock on the id
   * as a value of the column's type, so racing logins never leave more. Needs a driver with interactive
   * transactions (node-postgres, postgres.js, PGlite, ...): on pg-proxy or neon-http, and on a single
   * node-postgres `Client` rather than a pool, the constructor throws a `TypeError`. See docs/caps.md.
   * @default undefined (no cap)
   */
  maxSessionsPerUser?: number | SessionCapOptions;
  /**
   * What happens when a live session with a user is used from another browser family or operating system
   * than its row recorded ("Firefox on Linux" becomes "Chrome on Windows"; a browser update is not a
   * change): `"event"` emits `bindingChanged` and the row records the new device; `"end"` also ends the
   * session (`ended`, reason `binding`) before the app sees it, and the request goes on with no session
   * (express-session gives it a new, empty one). The comparison is made in memory on what the request
   * loaded; only a change costs a write. express-session's requests are checked when they get their
   * session; with @fastify/session, call {@link SessionStore.checkBinding} in a hook (docs/events.md).
   *
   * The trade-off: a user agent is chosen by the client, so this catches careless cookie theft (a copied
   * cookie replayed from another browser), not an attacker who copies the user agent too. The IP is
   * deliberately not part of the binding: mobile networks and VPNs change it within a session.
   * @default "event"
   */
  onBindingChange?: "event" | "end";
  /**
   * Use named prepared statements for the hot path. Turn off behind pgbouncer < 1.21 in transaction mode.
   * @default true
   */
  prepare?: boolean;
  /**
   * With a `withReplicas` database: which replicas session lookups (`get`) may read, and how stale they
   * may be about ends made on other instances. Writes, ends, logins, the records API, the reaper, locks,
   * LISTEN/NOTIFY and `ready()` always go to the primary. `false`: lookups go to the primary too.
   * @default { window: 0, timeout: 1000 } with a withReplicas database (only synchronous standbys are read)
   */
  replicaReads?: ReplicaReadOptions | false;
}

/** The options with every default applied; computed once in the constructor. */
export interface ResolvedOptions {
  /** The primary, with a withReplicas database. */
  db: AnyPgDatabase;
  /** The replicas of a withReplicas database; none otherwise. */
  replicas: readonly AnyPgDatabase[];
  /** With replicas, unless `replicaReads: false`. */
  replicaReads: Required<ReplicaReadOptions> | undefined;
  table: SessionTable;
  secrets: string[];
  ttl: number;
  idleTimeout: number | undefined;
  absoluteTimeout: number | undefined;
  rotationGrace: number;
  detectReuse: boolean;
  renewAfter: number | undefined;
  restartOnReauthentication: boolean;
  touchAfter: number;
  userId: UserIdOf;
  label: (session: SessionData) => string | null | undefined;
  retainEnded: number;
  maxSize: number;
  prepare: boolean;
  cache: Required<CacheOptions> | undefined;
  notify: boolean;
  broadcast: boolean;
  listen: AnyPgDatabase | undefined;
  merge: boolean;
  versioned: boolean;
  timeout: number;
  reaper: ResolvedReaperOptions | false;
  maxSessionsPerUser: Required<SessionCapOptions> | undefined;
  onBindingChange: "event" | "end";
  encrypt: SealSettings | undefined;
}

/**
 * Options of the periodic reaper (`new SessionStore({ reaper })`). Pass `reaper: false` to turn it off,
 * for instance when `npx connect-drizzle reap` runs from cron instead.
 */
export interface ReaperOptions {
  /**
   * Time between the end of one round and the start of the next, in milliseconds (plus or minus `jitter`).
   * @default 900_000 (15 minutes)
   */
  interval?: number;
  /**
   * Rows deleted (or ended) per statement. Each batch is its own short transaction, so a backlog of
   * millions never holds row locks for long nor bloats one transaction.
   * @default 5_000
   */
  batchSize?: number;
  /**
   * Random spread of each delay, as a fraction of `interval`: a delay is `interval × (1 ± jitter)`, so
   * instances deployed together drift apart instead of all trying at the same moment.
   * @default 0.1
   */
  jitter?: number;
}

/** {@link ReaperOptions} with every default applied. */
export interface ResolvedReaperOptions {
  interval: number;
  batchSize: number;
  jitter: number;
}
