/*
 * The options objects that the store's options hold (`encrypt`, `replicaReads`, `maxSessionsPerUser`,
 * `cache`), each field with its TSDoc and `@default`; re-exported from options.ts with the rest.
 */

/** Options of encryption at rest (`new SessionStore({ encrypt })`). */
export interface EncryptOptions {
  /**
   * Keys of the data, each at least 32 characters of random, e.g. from
   * `node -e "console.log(require('crypto').randomBytes(32).toString('base64url'))"`. The first encrypts
   * every save; all of them decrypt. To rotate, add the new secret second on every instance, then move it first.
   * @default none (required)
   */
  secrets: string | readonly string[];
  /**
   * Read rows stored in plaintext (sessions from before `encrypt` was on, or imported from
   * connect-pg-simple); each is encrypted by its next save. For the changeover only: turn it off again
   * once your cookie maxAge has passed, since while it is on whoever can write to the table can put
   * plaintext data in a session.
   * @default false
   */
  acceptPlaintext?: boolean;
}

/** Options of session lookups from read replicas (`new SessionStore({ replicaReads })`). */
export interface ReplicaReadOptions {
  /**
   * How long, at most, after an end resolved on another instance a lookup from a replica may still find
   * that session live, in ms. `0`: none. Lookups then go only to the replicas the primary reports as
   * synchronous standbys (its role needs pg_monitor to see that), and every end commits once they have
   * applied it (`synchronous_commit = remote_apply` for its transaction); with no such replica, lookups
   * go to the primary. Above 0, any replica that has replayed the primary's position of at most this long
   * ago is read; ends made by this instance, and those it heard of (with `cache`), are never found live.
   * @default 0
   */
  window?: number;
  /**
   * How long a lookup waits for a replica before it asks the primary instead, in ms; a replica that failed
   * is skipped for a while (1 s, doubling to 30 s).
   * @default 1000
   */
  timeout?: number;
}

/** The per-user session cap with its policy (`new SessionStore({ maxSessionsPerUser: { limit, whenFull } })`). */
export interface SessionCapOptions {
  /**
   * Most live sessions one user may have: a positive whole number.
   * @default none (required)
   */
  limit: number;
  /**
   * What a sign-in of a user who already has `limit` live sessions does: `"evict"` ends that user's least
   * recently used session (reason `evicted`) and signs in; `"refuse"` writes nothing and fails with a
   * `SessionStoreError` of code `SESSION_LIMIT` (status 403): the user signs out elsewhere first.
   * @default "evict"
   */
  whenFull?: "evict" | "refuse";
}

/** Options of the read cache. */
export interface CacheOptions {
  /**
   * Most sessions held.
   * @default 10_000
   */
  max?: number;
  /**
   * Longest time a cached session is served without reading it again, in ms (a bound on staleness even
   * if a notification were lost without the connection dropping).
   * @default 60_000
   */
  ttl?: number;
}
