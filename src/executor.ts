import { createHash } from "node:crypto";
import { is, Placeholder, sql, type SQL } from "drizzle-orm";
import { PgDialect } from "drizzle-orm/pg-core";
import { profileOf, rowsOf, type DriverProfile } from "./driver.js";
import { failureOf, pgCode, rolledBack, safeCause, SessionStoreError } from "./errors.js";
import type { AnyPgDatabase } from "./options.js";

/*
 * Running the store's statements: shaped statements compiled once (Shape), and the Executor that runs
 * them on the database, bounded by the store's timeout and run again through a failover. What the store
 * knows of each driver is in driver.ts.
 */

/** A statement compiled once: its SQL text with `$n` parameters, and where each value comes from. */
interface Compiled {
  text: string;
  /** The fixed values; where a call's value goes, a placeholder. */
  params: unknown[];
  /** For each parameter, the name of the call's value that fills it, or undefined for a fixed one. */
  slots: Array<string | undefined>;
  /** The name of the prepared statement (node-postgres with `prepare`), by its text. */
  name: string | undefined;
}

/**
 * A statement whose SQL depends only on its shape (not on its values), written once through drizzle with
 * named placeholders. On node-postgres it is compiled once and sent with the call's values, as a named
 * prepared statement with `prepare` (one parse and plan per connection, no SQL building per call);
 * elsewhere drizzle builds it with the values.
 */
export class Shape {
  private compiled: Compiled | undefined;
  /**
   * @param idempotent whether running it twice leaves the database as running it once does (a lookup, an
   *   end, a touch to a fixed time): then it is run again after a connection lost mid-statement too (see
   *   {@link Executor}), where another is run again only when it certainly did not run.
   */
  constructor(
    private readonly build: (v: (name: string) => SQL) => SQL,
    readonly idempotent = false,
  ) {}

  /** The statement with these values, for drivers other than node-postgres. */
  with(values: Readonly<Record<string, unknown>>): SQL {
    return this.build((name) => sql`${values[name]}`);
  }

  compile(prepare: boolean): Compiled {
    if (!this.compiled) {
      const { sql: text, params } = DIALECT.sqlToQuery(this.build((name) => sql`${sql.placeholder(name)}`));
      // `name` is public before drizzle-orm 1.0 and protected from it; the value is there on every version.
      const slots = params.map((p) => (is(p, Placeholder) ? (p as unknown as { name: string }).name : undefined));
      this.compiled = { text, params, slots, name: prepare ? statementName(text) : undefined };
    }
    return this.compiled;
  }
}

/** What a statement's rows must cause before they are returned (see {@link Executor.query}). */
type After<Row> = (rows: Row[]) => Promise<void>;

/** How long to wait before running a statement again after a failover error: doubling, up to the last. */
const RETRY_DELAYS = [25, 50, 100, 200, 400, 500];

/**
 * Runs the store's statements on its database, each bounded by `timeout`: ad hoc ones through drizzle's
 * SQL, shaped ones ({@link Shape}) compiled once. On node-postgres both go to the pool directly (drizzle
 * still writes the SQL), which skips drizzle's per-call work.
 *
 * A failover costs latency, not errors: a statement that failed because its server was unreachable,
 * restarting or no longer the primary ({@link failureOf}) runs again, after a short wait, until it
 * succeeds or `timeout` passes. One that certainly did not run (`refused`) always does; one whose
 * connection was lost while it ran (`lost`) only when it is idempotent, since it may have been done. So
 * does one the database rolled back whole ({@link rolledBack}: a deadlock between statements that lock
 * the same rows in different orders).
 */
export class Executor {
  private readonly driver: DriverProfile;
  /** Operations in flight, for the timeout sweep. */
  private readonly waiting = new Set<{ deadline: number; reject: (error: Error) => void }>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: AnyPgDatabase,
    private readonly settings: { timeout: number; prepare: boolean; retry?: boolean },
  ) {
    this.driver = profileOf(db);
  }

  /**
   * Runs a statement and returns its rows, whatever the driver's result shape. `idempotent`: see
   * {@link Shape}'s. `after`: what the rows must cause (a change's announcement), done before the rows are
   * returned, and done too when they come after the caller was given up on (a write that committed late).
   */
  query<Row = Record<string, unknown>>(statement: SQL, idempotent = false, after?: After<Row>): Promise<Row[]> {
    const { kind, client } = this.driver;
    if (kind !== "node-postgres") return this.timed<Row>(() => this.db.execute(statement), idempotent, after);
    const { sql: text, params } = DIALECT.sqlToQuery(statement);
    const name = this.settings.prepare ? statementName(text) : undefined;
    return this.timed<Row>(() => client.query(name ? { name, text, values: params } : { text, values: params }), idempotent, after);
  }

  /** Runs a shaped statement with the call's values (`after`: see {@link query}). */
  run<Row = Record<string, unknown>>(shape: Shape, values: Readonly<Record<string, unknown>>, after?: After<Row>): Promise<Row[]> {
    const { kind, client } = this.driver;
    if (kind !== "node-postgres") return this.query<Row>(shape.with(values), shape.idempotent, after);
    return this.timed<Row>(() => client.query(this.config(shape, values)), shape.idempotent, after);
  }

  /** A shaped statement with the call's values as a node-postgres query config (a named prepared statement with `prepare`). */
  config(shape: Shape, values: Readonly<Record<string, unknown>>): { name?: string; text: string; values: unknown[] } {
    const { text, params, slots, name } = shape.compile(this.settings.prepare);
    const args = new Array(params.length);
    for (let i = 0; i < params.length; i++) args[i] = slots[i] === undefined ? params[i] : values[slots[i]!];
    return name ? { name, text, values: args } : { text, values: args };
  }

  /**
   * Runs `body` in one transaction (drizzle's `db.transaction`), its statements on the transaction's
   * connection, the whole of it (the wait for a connection, BEGIN and COMMIT included) bounded by
   * `timeout`. A body whose transaction begins only after that wait was given up on throws at once, so
   * the driver rolls back. Given up on later, its statements go on unless they bound themselves in the
   * database (a local `statement_timeout`, as {@link Statements.loginLock} sets); a statement the database
   * cancelled so fails as `TIMEOUT` too.
   */
  transaction<T>(body: (tx: Pick<Executor, "query" | "run">) => Promise<T>): Promise<T> {
    const { timeout } = this.settings;
    let expired = false;
    let committing = false;
    // Once the caller was told TIMEOUT, nothing of the transaction may commit: each statement checks, and
    // so does the end of the body. Once the body is done, the outcome is the commit's, and no TIMEOUT may
    // claim that what it wrote was not written (a lock granted just after the deadline, say).
    const live = () => {
      if (expired) throw timeoutError(timeout);
    };
    const attempt = () =>
      this.db.transaction(async (tx) => {
        committing = false;
        live();
        const query = async <Row>(statement: SQL) => {
          live();
          const rows = rowsOf<Row>(await tx.execute(statement));
          live();
          return rows;
        };
        const result = await body({ query, run: (shape, values) => query(shape.with(values)) });
        live();
        committing = true;
        return result;
      });
    const cancelled = (error: unknown) => {
      const code = pgCode(error);
      // statement_timeout (57014), lock_timeout (55P03): the database gave up on it at the same deadline.
      throw code === "57014" || code === "55P03" ? timeoutError(timeout, error) : error;
    };
    // Run again only when it certainly did not commit (refused: a standby, a server not ready): a
    // connection lost mid-way may have lost it at its COMMIT.
    return this.bounded(
      attempt,
      (result) => result as T,
      false,
      () => {
        if (committing) return false;
        expired = true;
        return true;
      },
    ).catch(cancelled);
  }

  /**
   * The rows of a statement's result, failing after `timeout` (a slow or unreachable database) instead of
   * hanging.
   */
  private timed<Row>(query: () => PromiseLike<unknown>, idempotent: boolean, after: After<Row> | undefined): Promise<Row[]> {
    return this.bounded(query, rowsOf<Row>, idempotent, undefined, after);
  }

  /**
   * What `result` makes of the outcome of `start()`, or a `TIMEOUT` error after `timeout`. After a
   * failover error ({@link failureOf}) `start()` runs again, after a short wait, while the caller still
   * waits (see the class's description; `idempotent` too), and the last such error is what the caller gets
   * at the timeout instead of TIMEOUT. `onTimeout` is called first, and may refuse the timeout (false:
   * the outcome is `start()`'s, whenever it comes). `after`: see {@link query}.
   */
  private bounded<T>(
    start: () => PromiseLike<unknown>,
    result: (value: unknown) => T,
    idempotent: boolean,
    onTimeout?: () => boolean,
    after?: (result: T) => Promise<void>,
  ): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let last: unknown;
      const waiting = this.wait(performance.now(), (error) => {
        if (onTimeout?.() !== false) reject(last ?? error);
      });
      const settle = (value: unknown) => {
        const rows = result(value);
        if (after === undefined) {
          this.waiting.delete(waiting);
          return resolve(rows);
        }
        // Done whether or not the caller still waits: a change that committed after its timeout is announced too.
        after(rows).then(
          () => {
            this.waiting.delete(waiting);
            resolve(rows);
          },
          (error) => {
            this.waiting.delete(waiting);
            reject(error);
          },
        );
      };
      // Run again only while the caller waits: the sweep takes `waiting` out at the deadline.
      const fail = (error: unknown, attempt: number) => {
        const delay = this.waiting.has(waiting) ? this.retryDelay(error, idempotent, attempt) : undefined;
        if (delay === undefined) {
          this.waiting.delete(waiting);
          return reject(error);
        }
        last = error;
        setTimeout(() => {
          if (!this.waiting.has(waiting)) return reject(error);
          start().then(settle, (next) => fail(next, attempt + 1));
        }, delay);
      };
      // Drizzle's queries are lazy thenables that run on every then(): one then() per run.
      start().then(settle, (error) => fail(error, 0));
    });
  }

  /**
   * `outcome`, or a `TIMEOUT` error once `timeout` has passed since `since` (a `performance.now()`): for an
   * operation whose wait began before its statement was sent (a lookup queued to share a statement), so
   * that it fails at its own deadline, by the same sweep as every statement.
   */
  within<T>(outcome: Promise<T>, since: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const waiting = this.wait(since, reject);
      outcome.then(
        (value) => {
          this.waiting.delete(waiting);
          resolve(value);
        },
        (error) => {
          this.waiting.delete(waiting);
          reject(error);
        },
      );
    });
  }

  /** Enters an operation begun at `since` in the timeout sweep: `reject` is called with TIMEOUT at its deadline. */
  private wait(since: number, reject: (error: Error) => void): { deadline: number; reject: (error: Error) => void } {
    const waiting = { deadline: since + this.settings.timeout, reject };
    this.waiting.add(waiting);
    this.sweepTimeouts();
    return waiting;
  }

  /** How long to wait before running a statement again after `error`, or undefined when it must not run again. */
  private retryDelay(error: unknown, idempotent: boolean, attempt: number): number | undefined {
    if (this.settings.retry === false) return undefined;
    // A statement rolled back whole (a deadlock) did nothing, as one refused did: it always runs again.
    const failure = failureOf(error) ?? (rolledBack(error) ? "refused" : undefined);
    if (failure === undefined || (failure === "lost" && !idempotent)) return undefined;
    return RETRY_DELAYS[Math.min(attempt, RETRY_DELAYS.length - 1)]! * (0.5 + Math.random() / 2);
  }

  /**
   * One unref'd timer for every operation in flight (cheaper than a timer each on the hot path): fails
   * those past their deadline with TIMEOUT, to within a tenth of `timeout`; stops when none are left.
   */
  private sweepTimeouts(): void {
    if (this.sweeper) return;
    const { timeout } = this.settings;
    const every = Math.max(10, Math.min(1_000, timeout / 10));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const waiting of this.waiting) {
        if (waiting.deadline > now) continue;
        this.waiting.delete(waiting);
        waiting.reject(timeoutError(timeout));
      }
      if (this.waiting.size === 0) {
        clearInterval(this.sweeper);
        this.sweeper = undefined;
      }
    }, every);
    this.sweeper.unref();
  }
}

function timeoutError(timeout: number, cause?: unknown): SessionStoreError {
  return new SessionStoreError(
    "TIMEOUT",
    `the database did not answer within ${timeout} ms (the store's timeout option)`,
    cause === undefined ? undefined : { cause: safeCause(cause) },
  );
}

const DIALECT = new PgDialect();

/** Named statements by SQL text: a bounded set, since lists of varying length make new shapes. */
const STATEMENT_NAMES = new Map<string, string>();

function statementName(text: string): string | undefined {
  let name = STATEMENT_NAMES.get(text);
  if (name === undefined && STATEMENT_NAMES.size < 256) {
    name = `connect_drizzle_${createHash("sha256").update(text).digest("base64url").slice(0, 22)}`;
    STATEMENT_NAMES.set(text, name);
  }
  return name;
}
