import type { SQL } from "drizzle-orm";
import type { SessionData } from "express-session";
import type { Announcer } from "./announce.js";
import type { ReadCache } from "./cache.js";
import type { Executor } from "./executor.js";
import type { KeyDeriver } from "./hash.js";
import type { Loaded } from "./loaded.js";
import type { Call, Coalescer, Ends, TouchCall, TouchedRow } from "./coalesce.js";
import type { ResolvedOptions } from "./options.js";
import type { Replicas } from "./replicas.js";
import type { Sealer } from "./seal.js";
import type { SessionRow, Statements } from "./statements.js";
import type { TraceDetail } from "./trace.js";

/**
 * What the store's parts share, made once by the store: its options and statements, how it runs them,
 * its cache and sealer, and the store's own clock, eviction and reporting (the methods a test may
 * override on a subclass of the store, so they are reached through it).
 */
export interface StoreContext {
  readonly options: ResolvedOptions;
  readonly sql: Statements;
  readonly exec: Executor;
  /** Session lookups on the primary, coalesced under load. */
  readonly lookups: Coalescer<Call, SessionRow, SessionRow | undefined>;
  /** Ends of sessions by id, coalesced under load, each announced (`changed`) before it resolves. */
  readonly ends: Ends;
  /** Touches that write, coalesced under load, each announced (`changed`) before it resolves. */
  readonly touches: Coalescer<TouchCall, TouchedRow, TouchedRow | undefined>;
  /** A session id's row keys, one per secret: the first is the one new rows get. */
  readonly keysOf: KeyDeriver;
  /** The read cache, with the `cache` option. */
  readonly cache: ReadCache<Loaded> | undefined;
  /** Session lookups from the read replicas of a `withReplicas` database (see `replicaReads`). */
  readonly replicas: Replicas | undefined;
  /** Encryption at rest, with the `encrypt` option. */
  readonly sealer: Sealer | undefined;
  /** The lifecycle events: who listens, and announcing them (to the other instances too, with `broadcast`). */
  readonly events: Announcer;
  /** This server's wall clock, epoch ms (the store's `now`). */
  now(): number;
  /** Forgets sessions in this store's cache (`*`: every session). */
  evict(keys: readonly string[]): void;
  /**
   * After a change to these sessions' rows committed: they leave this store's cache at once and, with
   * `notify`, every instance's once the promise resolves (it resolves when the NOTIFY naming them has
   * committed; see invalidation.ts). Every change of an existing session goes through it.
   */
  changed(keys: readonly string[]): Promise<void>;
  /** Reports a problem that must not fail the request: the store's `error` event, or the console. */
  report(error: Error): void;
  /** Runs an operation in its tracing channel, turning driver errors into errors that say what to do. */
  run<T>(action: string, operation: () => Promise<T>, detail?: TraceDetail): Promise<T>;
  /**
   * Runs a statement that changes sessions and returns their keys, which are then {@link changed}, also
   * when they come after the call timed out. `idempotent`: see the executor's.
   */
  write<Row extends { key: string } = { key: string }>(statement: SQL, idempotent?: boolean): Promise<Row[]>;
  /** The owner of a session, as the `user_id` column holds it (the `userId` option). */
  userIdOf(session: SessionData): string | null;
}
