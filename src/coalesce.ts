import type { DriverProfile } from "./driver.js";
import type { Executor } from "./executor.js";
import type { EndReason } from "./reasons.js";
import { keyValues, type EventRow, type ExpiryRow, type SessionRow, type Statements } from "./statements.js";

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

/** A row of a shared statement: its key, and the key a call asked for when that differs (`matched`). */
type KeyedRow = { key?: string; matched?: string };

/** What a call is on: one session id's row keys (one per secret), and what else its statement needs. */
export interface Call {
  readonly keys: readonly string[];
}

/** What one kind of call (a lookup, an end for one reason, a touch) sends, alone and shared. */
export interface Shared<Item extends Call, Row extends KeyedRow, Result> {
  /** The statement of one call, as every call sent before there was coalescing. */
  one(item: Item): Promise<Result>;
  /** One statement for many calls: its rows, each with its `key`. */
  many(items: readonly Item[]): Promise<Row[]>;
  /**
   * What one call gets of a shared statement's rows, by key (calls are picked for in the order they
   * came; a pick may take rows out, so that no other call gets them).
   */
  pick(item: Item, byKey: Map<string | undefined, Row>): Result;
}

/** A call waiting for a statement, and where its result goes. */
interface Waiting<Item, Result> {
  item: Item;
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
export class Coalescer<Item extends Call, Row extends KeyedRow, Result> {
  /** Statements sent and not yet settled. */
  private inFlight = 0;
  private readonly queue: Array<Waiting<Item, Result>> = [];

  constructor(
    private readonly exec: Executor,
    private readonly statements: Shared<Item, Row, Result>,
    /** The statements in flight at which the next call waits (tests force coalescing with 1). */
    public limit: number,
  ) {}

  /** The result of a call begun at `since` (a `performance.now()`). */
  call(item: Item, since: number): Promise<Result> {
    if (this.inFlight < this.limit) return this.sent(this.statements.one(item));
    const result = new Promise<Result>((resolve, reject) => void this.queue.push({ item, resolve, reject }));
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
  private send(batch: Array<Waiting<Item, Result>>): void {
    if (batch.length === 1) {
      const [only] = batch as [Waiting<Item, Result>];
      this.sent(this.statements.one(only.item)).then(only.resolve, only.reject);
      return;
    }
    this.sent(this.statements.many(batch.map((waiting) => waiting.item))).then(
      (rows) => {
        // Under the key each row was asked for: its own, or the one it was rotated away from.
        const byKey = new Map(rows.map((row) => [row.matched ?? row.key, row]));
        for (const waiting of batch) waiting.resolve(this.statements.pick(waiting.item, byKey));
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
export function lookups(exec: Executor, sql: Statements, limit: number): Coalescer<Call, SessionRow, SessionRow | undefined> {
  return new Coalescer<Call, SessionRow, SessionRow | undefined>(
    exec,
    {
      one: async ({ keys }) => (await exec.run<SessionRow>(sql.get(keys.length), keyValues(keys, {})))[0],
      many: (items) => exec.run<SessionRow>(sql.getMany(), { keys: JSON.stringify(items.flatMap((item) => item.keys)) }),
      pick: firstOf,
    },
    limit,
  );
}

/** A session's row among a shared statement's rows: under the first of its keys found (the keys come in the secrets' order). */
function firstOf<Row>({ keys }: Call, byKey: Map<string | undefined, Row>): Row | undefined {
  for (const key of keys) {
    const row = byKey.get(key);
    if (row) return row;
  }
  return undefined;
}

/** A touch that writes: its session id's keys, and its statement's values (`life`, `cookie`, `ua`, `ip`; with `encrypt`, `tags`). */
export interface TouchCall extends Call {
  readonly values: Readonly<Record<string, unknown>>;
}

/** A row a touch renewed: its key and new expiry. */
export type TouchedRow = { key: string } & ExpiryRow;

/**
 * Touches that write, coalesced under load like lookups: each renews its own session with its own values,
 * several in one statement (`update ... from jsonb_to_recordset(...)`). Each touch's row is announced to
 * every instance's cache (`changed`) before it resolves. `tagged`: with `encrypt` (the cookie's tag too).
 */
export function touches(
  exec: Executor,
  sql: Statements,
  tagged: boolean,
  changed: (keys: readonly string[]) => Promise<void>,
  limit: number,
): Coalescer<TouchCall, TouchedRow, TouchedRow | undefined> {
  const announce = (rows: TouchedRow[]) => changed(rows.map((row) => row.key));
  return new Coalescer<TouchCall, TouchedRow, TouchedRow | undefined>(
    exec,
    {
      one: async ({ keys, values }) => (await exec.run<TouchedRow>(sql.touch(keys.length, tagged), values, announce))[0],
      many: (items) => exec.run<TouchedRow>(sql.touchMany(tagged), { rows: JSON.stringify(items.flatMap(touchRows)) }, announce),
      pick: firstOf,
    },
    limit,
  );
}

/** The rows of {@link Statements.touchMany} of one touch: one per row key, with its tag. */
function touchRows({ keys, values }: TouchCall): object[] {
  const tags: Record<string, string> | undefined = values.tags === undefined ? undefined : JSON.parse(values.tags as string);
  return keys.map((key) => ({ key, life: values.life, cookie: values.cookie, ua: values.ua, ip: values.ip, tag: tags?.[key] ?? null }));
}

/** A row an end ended: its key, and with `record` its {@link EventRow}. */
export type EndedRow = { key: string; matched?: string } & Partial<EventRow>;

/**
 * Ends of sessions by id (destroy, regenerate), coalesced under load like lookups: ends for the same
 * reason that come together share one statement and one commit. Each end's rows are announced to every
 * instance's cache (`changed`) before it resolves, and also when its statement commits after it timed out.
 */
export class Ends {
  private readonly byKind = new Map<string, Coalescer<Call, EndedRow, EndedRow[]>>();

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
    return ends.call({ keys }, since);
  }

  private coalescer(reason: EndReason, record: boolean): Coalescer<Call, EndedRow, EndedRow[]> {
    const announce = (rows: EndedRow[]) => this.changed(rows.map((row) => row.key));
    return new Coalescer<Call, EndedRow, EndedRow[]>(
      this.exec,
      {
        one: ({ keys }) => this.exec.run<EndedRow>(this.sql.end(keys.length, record), keyValues(keys, { reason }), announce),
        many: (items) => this.exec.run<EndedRow>(this.sql.endMany(record), { keys: JSON.stringify(items.flatMap((item) => item.keys)), reason }, announce),
        // A row ended once is one call's: of two ends of one session in a statement, the first ends it (as
        // of two statements, one), the other finds nothing, so its end is announced once.
        pick: ({ keys }, byKey) =>
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
