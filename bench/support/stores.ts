import { drizzle } from "drizzle-orm/node-postgres";
import connectPgSimple from "connect-pg-simple";
import { RedisStore } from "connect-redis";
import session, { type SessionData, type Store } from "express-session";
import pg from "pg";
import { createClient } from "redis";
import { createSessionTable, SessionStore } from "../../src/index.js";
import { DATABASE_URL, POOL_SIZE, REDIS_URL } from "./config.js";
import { RawPg, RawPgStore } from "./floor.js";
import { StatementTally } from "./statements.js";

/**
 * A store as benchmarked: a store and its options. `connect-drizzle` is its defaults (no cache, so
 * `notify: false`); `connect-drizzle (cache)` is `cache: {}` (which turns `notify` on), measured on reads
 * and on the writes whose cost the cache changes (the pg_notify in every write that ends or changes a
 * session, and the cache's own bookkeeping): what every instance of a deployment with the cache pays.
 */
export interface Target {
  id: string;
  name: StoreName;
  label: string;
  notify?: boolean;
  /** connect-drizzle's `cache` option. */
  cache?: { max?: number; ttl?: number };
  /** Further connect-drizzle options (`merge`, `encrypt`, ...) of this variant. */
  options?: Record<string, unknown>;
  /** Store-level operations measured for this target (default: all). */
  ops?: readonly string[];
  /** HTTP routes measured for this target (default: all). */
  routes?: readonly string[];
}

/** The key of the encrypt variant (32 random bytes, base64url, as the README says to make one). */
const ENCRYPTION_SECRET = "bench-0123456789abcdefghijklmnopqrstuvwxyz";

export const TARGETS: Target[] = [
  { id: "raw-pg", name: "raw-pg", label: "raw pg floor" },
  { id: "connect-drizzle", name: "connect-drizzle", label: "connect-drizzle" },
  // get (hit) is what the cache is for; the writes are what it costs (a miss is connect-drizzle's SELECT).
  {
    id: "connect-drizzle-cache",
    name: "connect-drizzle",
    label: "connect-drizzle (cache)",
    cache: {},
    ops: ["set", "get-hit", "touch-forced", "destroy"],
    routes: ["read", "login"],
  },
  // Saves that rewrite the whole session (as before merging changed keys was the default): what the merge costs a save.
  { id: "connect-drizzle-whole", name: "connect-drizzle", label: "connect-drizzle (merge: false)", options: { merge: false }, ops: ["save"], routes: [] },
  // Encryption at rest: what sealing and opening the data costs the reads and the writes.
  {
    id: "connect-drizzle-encrypt",
    name: "connect-drizzle",
    label: "connect-drizzle (encrypt)",
    options: { encrypt: { secrets: ENCRYPTION_SECRET } },
    ops: ["set", "get-hit", "save"],
    routes: [],
  },
  { id: "connect-pg-simple", name: "connect-pg-simple", label: "connect-pg-simple" },
  { id: "connect-redis", name: "connect-redis", label: "connect-redis" },
  { id: "memory", name: "memory", label: "MemoryStore" },
];

/** The stores compared, in the order of the tables. */
const STORE_NAMES = ["raw-pg", "connect-drizzle", "connect-pg-simple", "connect-redis", "memory"] as const;
export type StoreName = (typeof STORE_NAMES)[number];

/** A store's operations as promises: the floor's direct calls, the others' callback API (as express-session calls them). */
interface StoreOps {
  get(sid: string): Promise<unknown>;
  set(sid: string, sess: SessionData): Promise<void>;
  touch(sid: string, sess: SessionData): Promise<void>;
  destroy(sid: string): Promise<void>;
}

export interface OpenStore {
  name: StoreName;
  /** The express-session store (the floor's has a no-op touch). */
  store: Store;
  ops: StoreOps;
  /** The pg Pool behind it, when it has one. */
  pool?: pg.Pool;
  /** The statements its pool sends (with OpenOptions `count` only). */
  statements?: StatementTally;
  close(): Promise<void>;
}

export interface OpenOptions {
  schema: string;
  /** connect-drizzle's touchAfter (0 forces every touch to write). */
  touchAfter?: number;
  /** connect-drizzle's notify (default: on only with a cache; then every write also runs pg_notify to evict other instances' caches). */
  notify?: boolean;
  /** connect-drizzle's read cache; openStore waits until the store serves from it (its probe NOTIFY came back). */
  cache?: { max?: number; ttl?: number };
  /** A pg Pool to share (not closed by this store's close); a new one otherwise. */
  pool?: pg.Pool;
  /** Further connect-drizzle options (Target's `options`). */
  options?: Record<string, unknown>;
  /** Prefix of the run's Redis keys. */
  redisPrefix?: string;
  /** connect-drizzle: count the statements of its own new pool (OpenStore `statements`). */
  count?: boolean;
}

/** Whether Redis answers a PING within a second. */
export async function redisAvailable(): Promise<boolean> {
  const client = createClient({ url: REDIS_URL, socket: { connectTimeout: 1_000, reconnectStrategy: false } });
  client.on("error", () => {});
  try {
    await client.connect();
    await client.ping();
    return true;
  } catch {
    return false;
  } finally {
    if (client.isOpen) client.destroy();
  }
}

export async function openStore(name: StoreName, options: OpenOptions): Promise<OpenStore> {
  const { schema } = options;
  switch (name) {
    case "raw-pg": {
      const pool = options.pool ?? newPool();
      const raw = new RawPg(pool, `"${schema}"."floor_sessions"`);
      const store = new RawPgStore(raw);
      return { name, store, ops: raw, pool, close: () => endPool(pool, options) };
    }
    case "connect-drizzle": {
      const pool = options.pool ?? newPool();
      const statements = options.count && !options.pool ? new StatementTally(pool) : undefined;
      const table = createSessionTable("sessions", { schema });
      const store = new SessionStore({
        db: drizzle({ client: pool }),
        table,
        ...(options.touchAfter === undefined ? {} : { touchAfter: options.touchAfter }),
        ...(options.notify === undefined ? {} : { notify: options.notify }),
        ...(options.cache === undefined ? {} : { cache: options.cache }),
        ...(options.options as object),
      });
      // With the cache: its LISTEN is up and its probe came back, so gets are served from it (going live empties it).
      if (options.cache) await store.ready();
      return { name, store, ops: callbackOps(store), pool, statements, close: async () => (await store.close(), await endPool(pool, options)) };
    }
    case "connect-pg-simple": {
      const pool = options.pool ?? newPool();
      const PgStore = connectPgSimple(session);
      const store = new PgStore({ pool, schemaName: schema, tableName: "session", pruneSessionInterval: false, createTableIfMissing: false });
      return { name, store, ops: callbackOps(store), pool, close: async () => (store.close(), await endPool(pool, options)) };
    }
    case "connect-redis": {
      const client = createClient({ url: REDIS_URL, socket: { connectTimeout: 1_000, reconnectStrategy: false } });
      client.on("error", (error) => console.error("redis:", error.message));
      await client.connect();
      const store = new RedisStore({ client, prefix: options.redisPrefix ?? `bench:${schema}:` });
      return {
        name,
        store,
        ops: callbackOps(store),
        close: async () => {
          await new Promise<void>((resolve) => store.clear(() => resolve()));
          client.destroy();
        },
      };
    }
    case "memory": {
      const store = new session.MemoryStore();
      return { name, store, ops: callbackOps(store), close: async () => {} };
    }
  }
}

/** Ends a pool this store made; a shared one is its owner's to end. */
async function endPool(pool: pg.Pool, options: OpenOptions): Promise<void> {
  if (!options.pool) await pool.end();
}

function newPool(): pg.Pool {
  return new pg.Pool({ connectionString: DATABASE_URL, max: POOL_SIZE });
}

/** An express-session store's callback API as promises. */
function callbackOps(store: Store): StoreOps {
  const call = (fn: (cb: (err?: any, value?: any) => void) => void) =>
    new Promise<any>((resolve, reject) => fn((err, value) => (err ? reject(err) : resolve(value))));
  return {
    get: (sid) => call((cb) => store.get(sid, cb)),
    set: (sid, sess) => call((cb) => store.set(sid, sess, cb)),
    touch: (sid, sess) => call((cb) => store.touch!(sid, sess, cb)),
    destroy: (sid) => call((cb) => store.destroy(sid, cb)),
  };
}
