import { sql, type SQL } from "drizzle-orm";
import { isTrue, profileOf, refusesTransactions, rowsOf } from "./driver.js";
import { pgCode, safeCause, SessionStoreError } from "./errors.js";
import type { AnyPgDatabase } from "./options.js";
import { phases, type Execute, type ReapTarget, type RoundHooks } from "./reap-batches.js";
import type { ReapResult } from "./reaper.js";

/*
 * One reaper round (`reap()`): how it holds the table's advisory lock on this driver (a transaction beside
 * the batches, the lock taken by each batch in a transaction of its own, or by each batch statement alone),
 * with every wait bounded by `timeout`. The batches themselves are in reap-batches.ts.
 */

export async function round(target: ReapTarget, batchSize: number, key: string, timeout: number, hooks: RoundHooks): Promise<ReapResult> {
  const started = performance.now();
  const { db } = target;
  const counts = { deleted: 0, ended: 0, batches: 0, skipped: false };
  const done = () => ({ ...counts, durationMs: Math.round(performance.now() - started) });
  /** A batch that takes the lock itself (`batchStatement` in reap-batches.ts, with a key): its rows, or null if not granted. */
  const lockedBatch = async (conn: AnyPgDatabase, statement: SQL) => {
    const rows = rowsOf(await within(conn.execute(statement), timeout, BATCH));
    return isTrue(rows[0]?.locked) ? rows : null;
  };

  // Each statement is a transaction of its own (HTTP drivers): each batch takes the lock itself.
  const statementAtATime = () => phases(target, batchSize, (statement) => lockedBatch(db, statement), counts, hooks, key);

  // No statement can run beside an open transaction (a single connection, or a pooler's only server
  // connection): each batch takes the lock itself, in a transaction of its own. The database enforces the
  // timeout there too (statement_timeout, for that transaction alone): giving up on a blocked batch
  // client-side only would leave its transaction and the only connection held until whatever blocks it goes
  // away. Cancelled, the batch fails, the transaction rolls back and the lock (if the batch had taken it) is free.
  const batchAtATime = () => {
    const execute: Execute = (statement) =>
      transaction(db, timeout, async (tx) => {
        const setting = sql`select set_config('statement_timeout', ${`${Math.ceil(timeout)}ms`}, true)`;
        await within(tx.execute(setting), timeout, "setting the batch's statement_timeout");
        const sent = performance.now();
        try {
          return await lockedBatch(tx, statement);
        } catch (error) {
          // Our statement_timeout, if the database's cancel arrived before our own timer fired.
          throw pgCode(error) === "57014" && performance.now() - sent >= timeout - 1 ? timeoutError(timeout, BATCH, error) : error;
        }
      });
    return phases(target, batchSize, execute, counts, hooks, key);
  };

  if (!profileOf(db).interactiveTransactions) {
    await statementAtATime();
  } else if (profileOf(db).singleConnection) {
    await batchAtATime();
  } else {
    let detach: (() => void) | undefined;
    let failure: { error: unknown } | undefined;
    // Set once db.transaction() has settled. postgres.js settles it as soon as the connection closes, while
    // this callback still runs; a statement (even the rollback or commit it sends when the callback ends) on
    // that closed connection then throws inside postgres.js, uncaught. So an abandoned callback sends nothing
    // more and never settles: the round has already ended with an error.
    let abandoned = false;
    let inside = false;
    let refused = false;
    /** No statement could run beside the lock's transaction: the batches go one transaction at a time. */
    let crowded = false;
    const unlessAbandoned = async () => {
      await macrotask(); // lets a driver's close handling (and the rejection of the transaction) run first
      if (abandoned) await new Promise<never>(() => {});
    };
    try {
      await transaction(db, timeout, async (tx) => {
        inside = true;
        // node-postgres: a checked-out client whose connection drops emits 'error'; unheard, that crashes the
        // process. Listen until the transaction has settled (its rollback fails too); the round then fails.
        const client: any = (tx as any).session?.client;
        if (typeof client?.on === "function" && typeof client?.removeListener === "function") {
          const ignore = () => {};
          client.on("error", ignore);
          detach = () => client.removeListener("error", ignore);
        }
        try {
          const locking = tx.execute(sql`select pg_try_advisory_xact_lock(${key}::bigint) as locked`);
          const [row] = rowsOf(await within(locking, timeout, "taking the reaper's lock"));
          if (!isTrue(row?.locked)) {
            counts.skipped = true;
            return;
          }
          // Can a statement run beside this transaction? Behind a pooler with one server connection
          // (pgbouncer's default_pool_size = 1) this transaction holds it, and the batches would wait for it
          // until the timeout while every read of the app waits too. A `select 1` that gets no answer in a
          // short while says so: the lock goes (this transaction ends) and the batches run as on a single
          // connection. One that was only slow costs no more than that; it completes harmlessly later.
          const canary = Math.min(CANARY_WAIT, timeout / 4);
          if (
            !(await within(db.execute(sql`select 1`), canary, "a statement beside the lock").then(
              () => true,
              () => false,
            ))
          ) {
            crowded = true;
            return;
          }
          const execute: Execute = async (statement) => {
            await unlessAbandoned();
            // Heartbeat: fails if the lock's connection is gone (and with it, the lock).
            await within(tx.execute(sql`select 1`), timeout, "checking the reaper's lock").catch((error) => {
              throw lockLost(error);
            });
            // On another connection: given up on at the deadline, the round's transaction rolls back at once
            // (its connection is free), releasing the lock while this statement may still wait in the database.
            return rowsOf(await within(db.execute(statement), timeout, BATCH));
          };
          await phases(target, batchSize, execute, counts, hooks);
        } catch (error) {
          failure = { error };
          await unlessAbandoned();
          throw error;
        }
        await unlessAbandoned();
      });
    } catch (error) {
      abandoned = true;
      // A driver without transactions that drizzle's class marker did not tell (nothing was sent): remembered,
      // and this round and the next go a statement at a time.
      if (!inside && refusesTransactions(db, error)) refused = true;
      // The round's own error, not the rollback's that drizzle throws when the connection is gone; and when
      // the driver ended the transaction under the round (connection closed), say so.
      else throw failure ? failure.error : inside && error !== undefined ? lockLost(error) : error;
    } finally {
      abandoned = true;
      detach?.();
    }
    if (refused) await statementAtATime();
    else if (crowded) await batchAtATime();
  }
  return done();
}

const BATCH = "a batch (waiting for a lock on the table, or for a busy database?)";
/** Longest wait for a `select 1` beside the lock's transaction before the round takes its batches one transaction at a time, ms. */
const CANARY_WAIT = 1_000;

function timeoutError(timeout: number, what: string, cause?: unknown): SessionStoreError {
  return new SessionStoreError(
    "TIMEOUT",
    `reap timed out: ${what} did not finish within ${timeout} ms (the \`timeout\` option); the round stopped, ` +
      "what earlier batches did stays done, and the next round goes on",
    cause === undefined ? undefined : { cause: safeCause(cause) },
  );
}

/**
 * Waits for `work` at most `timeout` ms, then fails with `TIMEOUT`. The work itself goes on (a statement
 * cannot be called back from here) and may settle later: ignored then, a rejection included, so it can
 * never surface as an unhandled rejection.
 */
function within<T>(work: PromiseLike<T>, timeout: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(timeoutError(timeout, what)), timeout);
    // Drizzle's queries are lazy thenables that run on every then(): this is the only one.
    work.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

/**
 * `db.transaction(body)` with the driver's own waits bounded too: getting a connection and BEGIN, then
 * COMMIT or ROLLBACK, each within `timeout`; `body` bounds its own statements. A body that only starts
 * after the wait for it was given up on throws at once, so the driver rolls back and the connection goes
 * back to its pool instead of taking the lock for a round nobody waits for.
 */
async function transaction<T>(db: AnyPgDatabase, timeout: number, body: (tx: AnyPgDatabase) => Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  let expired = false;
  let settled = false;
  let fail!: (error: unknown) => void;
  const deadline = new Promise<never>((_, reject) => (fail = reject));
  const arm = (what: string) => {
    clearTimeout(timer);
    if (settled) return;
    timer = setTimeout(() => {
      expired = true;
      fail(timeoutError(timeout, what));
    }, timeout);
  };
  arm("getting a connection and beginning a transaction");
  try {
    return await Promise.race([
      db.transaction(async (tx) => {
        if (expired) throw timeoutError(timeout, "getting a connection and beginning a transaction");
        clearTimeout(timer);
        try {
          return await body(tx);
        } finally {
          arm("ending the transaction");
        }
      }),
      deadline,
    ]);
  } finally {
    settled = true;
    clearTimeout(timer);
  }
}

function lockLost(cause: unknown): SessionStoreError {
  if (cause instanceof SessionStoreError) return cause;
  return new SessionStoreError(
    "DATABASE",
    "reap stopped: the connection holding the reaper's lock was lost; what was deleted so far stays deleted, and the next round goes on",
    { cause: safeCause(cause) },
  );
}

const macrotask = () => new Promise<void>((resolve) => (typeof setImmediate === "function" ? setImmediate(resolve) : setTimeout(resolve, 0)));
