import type { SQL } from "drizzle-orm";
import type { SessionStore } from "../../src/index.js";

/*
 * The module internals tests use besides the public API (src/index.ts), all named here: when a source
 * file is split or renamed, only these lines change. Unit tests of pure rules, option tables checked
 * against the TSDoc, the driver profile, the reaper's lock key, and the channel and seal helpers that
 * tests use to forge or read what an instance sends.
 */
export { profileOf, rowsOf } from "../../src/driver.js";
export { databaseError, failureOf } from "../../src/errors.js";
export { IMPORT_ARGS } from "../../src/import.js";
export { listen } from "../../src/listen.js";
export type { Loaded } from "../../src/loaded.js";
export { COOKIE_OPTIONS, MIDDLEWARE_OPTIONS } from "../../src/middleware.js";
export { MIGRATE_OPTIONS } from "../../src/migrations.js";
export {
  CACHE_OPTIONS,
  ENCRYPT_OPTIONS,
  REAPER_OPTIONS,
  REPLICA_READ_OPTIONS,
  resolveOptions,
  resolveReaperOptions,
  SESSION_CAP_OPTIONS,
  STORE_OPTIONS,
  type ResolvedReaperOptions,
} from "../../src/options.js";
export { lockKey, REAP_ARGS } from "../../src/reaper.js";
export { synchronousStandbys } from "../../src/replicas.js";
export { RECENT_LOGIN_OPTIONS } from "../../src/reauth.js";
export { CLOCK_ERROR, expiryOf, isFresh, localExpiry, sameDevice, skipsWrite } from "../../src/rules.js";
export { TABLE_OPTIONS } from "../../src/schema.js";
export { Sealer } from "../../src/seal.js";
export { channelName } from "../../src/statements.js";
export { traced } from "../../src/trace.js";

/**
 * The one seam through which tests look inside a store: what a test must see that no public method shows
 * (the keys of a session's row, the NOTIFY channels, the read cache, the sealed names of a key). Every
 * other test goes through the public API; besides this, a subclass may override the store's `now()` and
 * `evict()` (test/support/model.ts's TestStore). When the store's insides move, only this file changes.
 */
export function internals(store: SessionStore) {
  const s = store as any;
  return {
    /** The row keys of a session id, one per secret (the first is the one new rows get). */
    keysOf: (sid: string): string[] => s.s.keysOf(sid),
    /** The table's quoted, schema-qualified name, as the store's messages and events name it. */
    tableName: s.s.sql.tableName as string,
    /** The channel of the read cache's evictions. */
    channel: s.s.sql.channel as string,
    /** The channel of `broadcast`'s events. */
    eventsChannel: s.s.sql.eventsChannel as string,
    /** The statement a login with `maxSessionsPerUser` takes its user's lock with. */
    loginLock: (userId: string, timeout: number): SQL => s.s.sql.loginLock(userId, timeout),
    /** Sends `payload` on the cache's channel, as a write's NOTIFY does. */
    notify: (payload: string): Promise<unknown> => s.s.exec.query(s.s.sql.notify(payload)),
    /** The read cache (with the `cache` option): `live`, `evictions`, `get`, `put`, `accepts`, `evict`. */
    cache: s.s.cache as
      | {
          live: boolean;
          evictions: number;
          get(sid: string, now: number): unknown;
          put(entry: { key: string; text: string }, since: number): void;
          accepts(key: string, since: number): boolean;
          evict(keys: readonly string[]): void;
        }
      | undefined,
    /** With `encrypt`: the names a key is stored under in a sealed row, one per secret. */
    storedNames: (key: string): string[] => s.s.sealer.storedNames(key),
    /** Forgets sessions in this store's cache, as a NOTIFY heard does. */
    evict: (keys: readonly string[]): void => s.evict(keys),
    /** Turns the executor's failover retries off (false: how the store behaved before it had them) or on again. */
    retries: (on: boolean): void => void (s.s.exec.settings.retry = on),
    /**
     * The statements in flight at which the next `get` (or end: destroy, regenerate; or touch that writes) waits to share a
     * statement with the others waiting (default 2, 1 on a single connection: see src/coalesce.ts; 1
     * coalesces any concurrent calls, Infinity never).
     */
    coalesce: (limit: number): void => {
      s.s.lookups.limit = limit;
      s.s.ends.limit = limit;
      s.s.touches.limit = limit;
    },
    /** Calls `listener` with every eviction the store makes until the returned function is called. */
    onEvict(listener: (keys: readonly string[]) => void): () => void {
      const evict = s.evict;
      s.evict = function (keys: readonly string[]) {
        listener(keys);
        return evict.call(this, keys);
      };
      return () => {
        delete s.evict;
      };
    },
  };
}
