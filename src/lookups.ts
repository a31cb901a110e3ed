import type { DriverProfile } from "./driver.js";
import type { Executor } from "./executor.js";
import { keyValues, type SessionRow, type Statements } from "./statements.js";

/** The most sessions one coalesced lookup asks for: past it, the rest wait for the next statement. */
const BATCH = 100;

/**
 * The lookups in flight past which the next one waits to share a statement (on one connection, one),
 * chosen by measurement (store-level get, pool max 10, node-postgres and postgres.js, a local server on
 * 2 cores; docs/performance.md). At 32 concurrent gets, against one statement per get: limit 2, 3.7×
 * (node-postgres) and 4.9× (postgres.js) the gets/s at a lower median latency; limit 1, 2.7× and 5.4×;
 * the pool's size (10), 2.1× and 2.5×, and nothing at 8 concurrent gets (fewer gets than connections
 * never wait). Two rather than one, so that a second get arriving while one is in flight goes at once,
 * as on a connection of its own.
 */
const IN_FLIGHT = 2;

/** A session lookup waiting for a statement: the row keys of its id, and where its row goes. */
interface Waiting {
  keys: readonly string[];
  resolve(row: SessionRow | undefined): void;
  reject(error: unknown): void;
}

/**
 * Session lookups on the primary, coalesced under load: lookups that arrive while `limit` lookup
 * statements are in flight wait, and share one statement (`key = any(...)`: one round trip, one parse,
 * one plan) sent as soon as one of those settles. A lone lookup is never delayed: below the limit it
 * is sent at once, as the single-session statement.
 *
 * The limit is small ({@link IN_FLIGHT}): under load, one statement for many lookups costs the database
 * far less than one each (a parse, a plan, a round trip and a reply per statement), so the lookups that
 * wait for it are answered sooner than they would be on connections of their own. Each lookup keeps its
 * own outcome: its row or none, the error of the statement it was in, and a timeout counted from its own
 * start ({@link Executor.within}).
 */
export class Lookups {
  /** Lookup statements sent and not yet settled. */
  private inFlight = 0;
  private readonly queue: Waiting[] = [];

  constructor(
    private readonly exec: Executor,
    private readonly sql: Statements,
    /** The lookups in flight at which the next one waits (tests force coalescing with 1). */
    public limit: number,
  ) {}

  /** The live row of a session id under any of its row `keys`, for a lookup begun at `since` (a `performance.now()`). */
  row(keys: readonly string[], since: number): Promise<SessionRow | undefined> {
    if (this.inFlight < this.limit) return this.sent(this.one(keys));
    const row = new Promise<SessionRow | undefined>((resolve, reject) => void this.queue.push({ keys, resolve, reject }));
    return this.exec.within(row, since);
  }

  /** The single-session statement, as every lookup sent before there was coalescing. */
  private async one(keys: readonly string[]): Promise<SessionRow | undefined> {
    const [row] = await this.exec.run<SessionRow>(this.sql.get(keys.length), keyValues(keys, {}));
    return row;
  }

  /** Counts a lookup statement in flight until it settles; then the lookups waiting go out in the slots left. */
  private sent<T>(statement: Promise<T>): Promise<T> {
    this.inFlight++;
    const settled = () => {
      this.inFlight--;
      while (this.queue.length > 0 && this.inFlight < this.limit) this.send(this.queue.splice(0, BATCH));
    };
    statement.then(settled, settled);
    return statement;
  }

  /** Sends one statement for these waiting lookups (alone, the single-session one), and gives each its row. */
  private send(batch: Waiting[]): void {
    if (batch.length === 1) {
      const [only] = batch as [Waiting];
      this.sent(this.one(only.keys)).then(only.resolve, only.reject);
      return;
    }
    const keys = batch.flatMap((waiting) => waiting.keys);
    this.sent(this.exec.run<SessionRow>(this.sql.getMany(), { keys: JSON.stringify(keys) })).then(
      (rows) => {
        const byKey = new Map(rows.map((row) => [row.key, row]));
        for (const waiting of batch) waiting.resolve(firstOf(waiting.keys, byKey));
      },
      (error) => {
        for (const waiting of batch) waiting.reject(error);
      },
    );
  }
}

/** A session id's row among a coalesced statement's rows: under the first of its keys found (the keys come in the secrets' order). */
function firstOf(keys: readonly string[], byKey: Map<string | undefined, SessionRow>): SessionRow | undefined {
  for (const key of keys) {
    const row = byKey.get(key);
    if (row) return row;
  }
  return undefined;
}

/** The lookups in flight at which the next one waits to share a statement: see {@link IN_FLIGHT}. */
export function lookupLimit(driver: DriverProfile): number {
  return driver.singleConnection ? 1 : IN_FLIGHT;
}
