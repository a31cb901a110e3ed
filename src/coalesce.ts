import type { DriverProfile } from "./driver.js";
import type { Executor } from "./executor.js";
import type { EndReason } from "./reasons.js";
import { keyValues, type EventRow, type SessionRow, type Statements } from "./statements.js";

/** The most sessions one shared statement asks for: past it, the rest wait for the next statement. */
const BATCH = 100;

/**
 * The statements in flight past which the next call waits to share a statement (on one connection, one),
 * chosen by measurement (store-level get, pool max 10, node-postgres and postgres.js, a local server on
 * 2 cores; docs/performance.md). At 32 concurrent gets, against one statement per get: limit 2, 3.7×
 * (node-postgres) and 4.9× (postgres.js) the gets/s at a lower median latency; limit 1, 2.7× and 5.4×;
 * the pool's size (10), 2.1× and 2.5×, and nothing at 8 concurrent gets (fewer gets than connections
 * never wait). Two rather than one, so that a second call arriving while one is in flight goes at once,
 * as on a connection of its own.
 */
const IN_FLIGHT = 2;

/** The statements in flight at which the next call waits to share a statement: see {@link IN_FLIGHT}. */
export function coalesceLimit(driver: DriverProfile): number {
  return driver.singleConnection ? 1 : IN_FLIGHT;
}

/** What one kind of call (a lookup, an end for one reason) sends, alone and shared. */
export interface Shared<Row extends { key?: string }, Result> {
  /** The statement of one session id's row keys, as every call sent before there was coalescing. */
  one(keys: readonly string[]): Promise<Result>;
  /** One statement for the row keys of many session ids: its rows, each with its `key`. */
  many(keys: readonly string[]): Promise<Row[]>;
  /**
   * What the call of one session id's `keys` gets of a shared statement's rows, by key (calls are picked
   * for in the order they came; a pick may take rows out, so that no other call gets them).
   */
  pick(keys: readonly string[], byKey: Map<string | undefined, Row>): Result;
}

/** A call waiting for a statement: the row keys of its session id, and where its result goes. */
interface Waiting<Result> {
  keys: readonly string[];
  resolve(result: Result): void;
  reject(error: unknown): void;
}

/**
 * Calls of one kind, each on one session id, coalesced under load: calls that arrive while `limit` of
 * their statements are in flight wait, and share one statement (`key = any(...)`: one round trip, one
 * parse, one plan, one commit) sent as soon as one of those settles. A lone call is never delayed: below
 * the limit it is sent at once, as the single-session statement.
 *
 * The limit is small ({@link IN_FLIGHT}): under load, one statement for many calls costs the database
 * far less than one each (a parse, a plan, a round trip and a reply per statement), so the calls that
 * wait for it are answered sooner than they would be on connections of their own. Each call keeps its
 * own outcome: its rows, the error of the statement it was in, and a timeout counted from its own start
 * ({@link Executor.within}).
 */
export class Coalescer<Row extends { key?: string }, Result> {
  /** Statements sent and not yet settled. */
  private inFlight = 0;
  private readonly queue: Array<Waiting<Result>> = [];

  constructor(
    private readonly exec: Executor,
    private readonly statements: Shared<Row, Result>,
    /** The statements in flight at which the next call waits (tests force coalescing with 1). */
    public limit: number,
  ) {}

  /** The result for a session id's row `keys`, for a call begun at `since` (a `performance.now()`). */
  call(keys: readonly string[], since: number): Promise<Result> {
    if (this.inFlight < this.limit) return this.sent(this.statements.one(keys));
    const result = new Promise<Result>((resolve, reject) => void this.queue.push({ keys, resolve, reject }));
    return this.exec.within(result, since);
  }

  /** Counts a statement in flight until it settles; then the calls waiting go out in the slots left. */
  private sent<T>(statement: Promise<T>): Promise<T> {
    this.inFlight++;
    const settled = () => {
      this.inFlight--;
      while (this.queue.length > 0 && this.inFlight < this.limit) this.send(this.queue.splice(0, BATCH));
    };
    statement.then(settled, settled);
    return statement;
  }

  /** Sends one statement for these waiting calls (alone, the single-session one), and gives each its result. */
  private send(batch: Array<Waiting<Result>>): void {
    if (batch.length === 1) {
      const [only] = batch as [Waiting<Result>];
      this.sent(this.statements.one(only.keys)).then(only.resolve, only.reject);
      return;
    }
    this.sent(this.statements.many(batch.flatMap((waiting) => waiting.keys))).then(
      (rows) => {
        const byKey = new Map(rows.map((row) => [row.key, row]));
        for (const waiting of batch) waiting.resolve(this.statements.pick(waiting.keys, byKey));
      },
      (error) => {
        for (const waiting of batch) waiting.reject(error);
      },
    );
  }
}

/**
 * Session lookups on the primary, coalesced under load: lookups that come together share one statement
 * (`key = any(...)`), a lone one is sent at once as the single-session one.
 */
export function lookups(exec: Executor, sql: Statements, limit: number): Coalescer<SessionRow, SessionRow | undefined> {
  return new Coalescer(
    exec,
    {
      one: async (keys) => (await exec.run<SessionRow>(sql.get(keys.length), keyValues(keys, {})))[0],
      many: (keys) => exec.run<SessionRow>(sql.getMany(), { keys: JSON.stringify(keys) }),
      // Under the first of its keys found (the keys come in the secrets' order).
      pick: (keys, byKey) => {
        for (const key of keys) {
          const row = byKey.get(key);
          if (row) return row;
        }
        return undefined;
      },
    },
    limit,
  );
}

/** A row an end ended: its key, and with `record` its {@link EventRow}. */
export type EndedRow = { key: string } & Partial<EventRow>;

/**
 * Ends of sessions by id (destroy, regenerate), coalesced under load like lookups: ends for the same
 * reason that come together share one statement and one commit. Each end's rows are announced to every
 * instance's cache (`changed`) before it resolves, and also when its statement commits after it timed out.
 */
export class Ends {
  private readonly byKind = new Map<string, Coalescer<EndedRow, EndedRow[]>>();

  constructor(
    private readonly exec: Executor,
    private readonly sql: Statements,
    private readonly changed: (keys: readonly string[]) => Promise<void>,
    /** The statements in flight at which the next end waits (see {@link Coalescer}). */
    public limit: number,
  ) {}

  /** Ends the live rows of a session id's `keys` for `reason`, for a call begun at `since`; the rows it ended (with `record`, their records). */
  end(keys: readonly string[], reason: EndReason, record: boolean, since: number): Promise<EndedRow[]> {
    const kind = `${reason}:${record}`;
    let ends = this.byKind.get(kind);
    if (!ends) this.byKind.set(kind, (ends = this.coalescer(reason, record)));
    ends.limit = this.limit;
    return ends.call(keys, since);
  }

  private coalescer(reason: EndReason, record: boolean): Coalescer<EndedRow, EndedRow[]> {
    const announce = (rows: EndedRow[]) => this.changed(rows.map((row) => row.key));
    return new Coalescer<EndedRow, EndedRow[]>(
      this.exec,
      {
        one: (keys) => this.exec.run<EndedRow>(this.sql.end(keys.length, record), keyValues(keys, { reason }), announce),
        many: (keys) => this.exec.run<EndedRow>(this.sql.endMany(record), { keys: JSON.stringify(keys), reason }, announce),
        // A row ended once is one call's: of two ends of one session in a statement, the first ends it (as
        // of two statements, one), the other finds nothing, so its end is announced once.
        pick: (keys, byKey) =>
          keys.flatMap((key) => {
            const row = byKey.get(key);
            byKey.delete(key);
            return row ?? [];
          }),
      },
      this.limit,
    );
  }
}
