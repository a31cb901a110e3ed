import { createHash } from "node:crypto";
import { getTableConfig } from "drizzle-orm/pg-core";
import { checkOptions, is, kindOf, type OptionChecks } from "./check.js";
import { databaseError, SessionStoreError } from "./errors.js";
import type { AnyPgDatabase, ResolvedReaperOptions } from "./options.js";
import { HookFailure } from "./reap-batches.js";
import { round } from "./reap-round.js";
import { batchSizeOption, DEFAULTS, MAX_DELAY, sessionTable } from "./resolve-options.js";
import { quotedName, type SessionTable } from "./schema.js";

/*
 * The reaper: `reap()`, one round now, with its arguments and result, and `Reaper`, which runs rounds on a
 * timer. How a round holds its lock and bounds its waits is in reap-round.ts; its phases and the SQL of each
 * batch in reap-batches.ts.
 */

/** What one reaper round did; the store emits it as its `reap` event. */
export interface ReapResult {
  /** Rows deleted: expired sessions (when `retainEnded` is 0), and ended sessions past their retention. */
  deleted: number;
  /** Expired sessions turned into ended history (`end_reason = 'expired'`); only with `retainEnded` > 0. */
  ended: number;
  /** Batches that changed rows; each was committed on its own. */
  batches: number;
  /** Wall time of the round, in milliseconds. */
  durationMs: number;
  /** True when another instance was reaping this table: this round did nothing. */
  skipped: boolean;
}

/** Arguments of {@link reap}. */
export interface ReapArgs {
  /** A drizzle Postgres database (node-postgres, postgres.js, PGlite, neon-http, pg-proxy, ...). Never closed by `reap`. */
  db: AnyPgDatabase;
  /** @default sessions (the table the shipped migrations create) */
  table?: SessionTable;
  /** Keep ended sessions this long (ms), as the store's `retainEnded` option. @default 0 */
  retainEnded?: number;
  /** Rows per batch. @default 5_000 */
  batchSize?: number;
  /** Ends the round early, between two batches, with the counts so far (used by `Reaper.stop()`). */
  signal?: AbortSignal;
  /**
   * Longest wait for one statement of the round, connection wait included (getting a connection and
   * beginning the lock's transaction, taking the lock, each check of it, each batch, the commit), in
   * milliseconds. Past it the round fails with a `SessionStoreError` of code `TIMEOUT`. A batch blocked (by a
   * lock on the table, say) is given up on and the round's transaction rolls back at once, releasing the
   * lock, so other instances' rounds are not held up meanwhile. The batch given up on may still run in the
   * database later; that is harmless (batches skip locked rows and check each row again).
   * @default 10_000
   */
  timeout?: number;
  /**
   * Called after each batch that changed rows (it is committed by then), with the counts so far. The next
   * batch waits for a returned promise: log progress, or pause between batches to spare a busy database.
   * The round's lock stays held meanwhile.
   */
  onBatch?: (progress: ReapProgress) => void | Promise<void>;
}

/** Every argument of {@link ReapArgs} with its check. */
export const REAP_ARGS: OptionChecks<ReapArgs> = {
  db: (args, name) => {
    const db = args[name] as { execute?: unknown; transaction?: unknown };
    if (typeof db.execute !== "function" || typeof db.transaction !== "function") {
      throw new TypeError("connect-drizzle: reap needs `db`, a drizzle Postgres database, e.g. reap({ db: drizzle({ client: pool }) })");
    }
  },
  table: sessionTable,
  retainEnded: is.nonNegative(),
  batchSize: (args, name) => void batchSizeOption(args[name]),
  signal: (args, name) => {
    // By its shape, not instanceof: a signal from another realm (a test environment, a polyfill) is one too.
    const signal = args[name] as { aborted?: unknown; addEventListener?: unknown };
    if (typeof signal !== "object" || signal === null || typeof signal.aborted !== "boolean" || typeof signal.addEventListener !== "function") {
      throw new TypeError(`connect-drizzle: reap's \`signal\` must be an AbortSignal, e.g. from new AbortController() (got ${kindOf(args[name])})`);
    }
  },
  timeout: is.positive(),
  onBatch: is.function("(progress) => void | Promise<void>"),
};

/** The counts of a round in progress, given to {@link ReapArgs.onBatch}. */
export interface ReapProgress {
  deleted: number;
  ended: number;
  batches: number;
}

/**
 * Runs the reaper on a timer: one round, then `interval ± jitter` of rest, then the next round. Rounds never
 * overlap (the next one is scheduled only when the previous one has settled), the timer never keeps the
 * process alive (`unref`), and a failed round is reported to `onError` and does not stop later rounds.
 *
 * It knows nothing about the store: `run` does a round (normally {@link reap}), `events` hears about it.
 */
export class Reaper {
  private timer: ReturnType<typeof setTimeout> | undefined;
  private stopped = true;
  private inflight: Promise<void> | undefined;
  private abort: AbortController | undefined;

  constructor(
    private readonly run: (signal: AbortSignal) => Promise<ReapResult>,
    private readonly options: ResolvedReaperOptions,
    private readonly events: { onReap(result: ReapResult): void; onError(error: Error): void },
  ) {}

  /** True between `start()` and `stop()`: a round is scheduled or in progress. */
  get running(): boolean {
    return !this.stopped;
  }

  /** Schedules the first round one interval (± jitter) from now. Calling it again is a no-op. */
  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    if (!this.inflight) this.schedule();
  }

  /**
   * Cancels the next round. A round in progress stops after its current batch (what it did is committed
   * and still reported); the returned promise settles when it has, and never rejects.
   */
  stop(): Promise<void> {
    this.stopped = true;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.abort?.abort();
    return this.inflight ?? Promise.resolve();
  }

  /** The rest before the next round: `interval × (1 ± jitter)`, uniformly spread. */
  nextDelay(): number {
    const { interval, jitter } = this.options;
    const delay = interval * (1 + jitter * (2 * Math.random() - 1));
    return Math.min(MAX_DELAY, Math.max(1, Math.round(delay)));
  }

  private schedule(): void {
    if (this.stopped || this.timer !== undefined) return;
    const timer = setTimeout(() => {
      this.timer = undefined;
      this.inflight = this.round().finally(() => {
        this.inflight = undefined;
        this.schedule();
      });
    }, this.nextDelay());
    // Never keep the process alive just to reap; absent in some non-Node runtimes.
    (timer as { unref?: () => void }).unref?.();
    this.timer = timer;
  }

  private async round(): Promise<void> {
    const abort = new AbortController();
    this.abort = abort;
    try {
      const result = await this.run(abort.signal);
      this.notify(() => this.events.onReap(result));
    } catch (error) {
      this.notify(() => this.events.onError(error instanceof Error ? error : new Error(String(error))));
    } finally {
      this.abort = undefined;
    }
  }

  /** Calls a listener; one that throws must not stop the timer nor crash the process. */
  private notify(listener: () => void): void {
    try {
      listener();
    } catch (error) {
      try {
        this.events.onError(error instanceof Error ? error : new Error(String(error)));
      } catch {
        console.warn("connect-drizzle: a reaper event listener threw:", error);
      }
    }
  }
}

/**
 * Runs one reaper round now and resolves to what it did: for a cron job, a CLI, or a test. Rows are
 * handled oldest first in batches of `batchSize`, each its own statement and transaction:
 *
 * - expired live sessions are deleted, or, with `retainEnded` > 0, become ended history
 *   (`ended_at = expires_at`, `end_reason = 'expired'`, data emptied); those that expired longer than
 *   `retainEnded` ago are deleted directly, since their history would already be due for purging;
 * - ended sessions (kept as records with `retainEnded`; without it an end deletes the row itself) are
 *   deleted once ended `retainEnded` ago and past their expiry.
 *
 * **One runner per table across every instance** sharing the database, by a Postgres advisory lock keyed on
 * the table's qualified name. The lock is transaction-scoped (`pg_try_advisory_xact_lock`), held by a
 * transaction opened with `db.transaction()` for the whole round, while the batches run as their own
 * statements on `db`, each committed on its own. Why this shape:
 *
 * - A session-level lock (`pg_try_advisory_lock` … `pg_advisory_unlock`) needs the unlock to run on the very
 *   connection that locked. Through a pool, or pgbouncer in transaction mode, consecutive statements may run
 *   on different server connections: the unlock misses, and a lock leaks for the life of the connection.
 *   A transaction-scoped lock is released by Postgres itself at commit, rollback or disconnect, and a
 *   transaction is exactly the unit pgbouncer's transaction mode keeps on one server connection.
 * - The lock transaction does nothing but hold the lock: it writes nothing and keeps no snapshot between
 *   statements, so it holds back no vacuum, and a crash of the reaper releases the lock.
 * - Before each batch it runs `select 1` in the lock transaction: if that connection was lost (and with it
 *   the lock), the round ends with an error instead of carrying on unguarded.
 * - Try-lock: an instance that finds the lock taken skips the round (`skipped: true`) instead of queueing.
 *
 * Where no transaction can stay open beside the batches, each batch is one statement that takes the lock
 * itself, for its own transaction, before it picks a row (see `batchStatement`): the lock is then held per
 * batch, and the round ends if another instance took it in between (`skipped` if it had done nothing). So
 * on a client with a single connection (PGlite, one `pg.Client`, a pool of `max: 1`), which cannot run a
 * statement while a transaction holds its only connection, each batch in a transaction of its own (which
 * first sets its `statement_timeout`). So too behind a pooler with one server connection (pgbouncer's
 * `default_pool_size = 1`), which the client cannot see: after taking the lock the round sends a `select 1`
 * beside it, and when that gets no answer within `CANARY_WAIT` it lets the lock transaction go and runs its
 * batches that way. And on drivers without transactions (drizzle's pg-proxy, neon-http,
 * xata-http, or any whose `db.transaction` rejects with "not supported"), each batch as a statement alone;
 * `db.transaction` is not called there.
 *
 * **Every wait is bounded** by `timeout`: a statement that does not finish in time (blocked by a lock on the
 * table, a database that stopped answering, a pool with no free connection) ends the round with a `TIMEOUT`
 * error instead of hanging while it holds the lock.
 *
 * @throws SessionStoreError (code `TIMEOUT`, `TABLE_MISSING`, `DATABASE`, ...) when the round fails; TypeError for bad arguments
 */
export async function reap(args: ReapArgs): Promise<ReapResult> {
  if (args === null || typeof args !== "object") throw new TypeError("connect-drizzle: reap(args) needs an object such as { db }");
  checkOptions(args, REAP_ARGS, "reap()");
  const { db, signal, onBatch } = args;
  // Required: checkOptions passes over a missing argument.
  if (db === undefined || db === null) REAP_ARGS.db({ db: {} }, "db");
  const table = args.table ?? DEFAULTS.table;
  const retainEnded = args.retainEnded ?? DEFAULTS.retainEnded;
  const batchSize = args.batchSize ?? DEFAULTS.reaper.batchSize;
  // Longer than a timer can wait is no different from waiting that long: clamp rather than refuse, since the
  // store passes its own `timeout` here.
  const timeout = Math.min(args.timeout ?? DEFAULTS.timeout, MAX_DELAY);
  const config = getTableConfig(table);
  const qualified = quotedName(config.schema, config.name);
  try {
    return await round({ db, table, retainEnded }, batchSize, lockKey(config.schema, config.name), timeout, { signal, onBatch });
  } catch (error) {
    // The caller's own onBatch error goes back as it was; driver errors get a message that says what to do.
    if (error instanceof HookFailure) throw error.error;
    throw error instanceof SessionStoreError ? error : databaseError(error, qualified, "reap");
  }
}

/**
 * The advisory lock key of a table: the first 64 bits of SHA-256 of its qualified name, as a signed bigint.
 * Computed here rather than with Postgres's `hashtext`, whose output is not promised stable across versions.
 * An unqualified table is keyed as in `public`.
 */
export function lockKey(schema: string | undefined, name: string): string {
  return createHash("sha256")
    .update(`connect-drizzle reaper ${schema ?? "public"}.${name}`)
    .digest()
    .readBigInt64BE(0)
    .toString();
}
