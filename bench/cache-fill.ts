/**
 * The read cache after a phase of concurrent logins: new sessions set at concurrency 32 through a store
 * with `cache: {}`, then each of them read once (also at 32): the SQL statements the reads send, per read.
 * A new session's insert caches it, unless an eviction came in while the insert was in flight (the cache
 * keeps no answer that may predate a change it was told of): with many writes at once, a cache that counts
 * every other write as such an eviction caches few of them, and the first read of each is a query.
 * Runs in the store level's phase (bench/store-level.ts), once after its main cells and once per round.
 */
import { randomBytes } from "node:crypto";
import { sessionData, STORE_LEVEL } from "./support/config.js";
import type { StatementCounts } from "./support/statements.js";
import { openStore, type OpenStore } from "./support/stores.js";

export interface FillPhase {
  /** Sessions set, then read. */
  sessions: number;
  /** Statements sent by the reads (the cache's probe included, as the HTTP table counts). */
  statements: number;
  /** Reads that did not find their session (should be none). */
  missing: number;
  errors: number;
  byVerb: StatementCounts["byVerb"];
}

const CONCURRENCY = 32;

/** Runs `each` over `items`, `CONCURRENCY` at a time; returns the number that threw. */
async function spread<T>(items: T[], each: (item: T) => Promise<unknown>): Promise<number> {
  let next = 0;
  let errors = 0;
  const worker = async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await each(item).catch(() => errors++);
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return errors;
}

/** A store with `cache: {}` of its own (its own pool, its statements counted), for the fill phases. */
export class CacheFill {
  private phases = 0;

  private constructor(private readonly store: OpenStore) {}

  static async open(schema: string): Promise<CacheFill> {
    // openStore waits until the cache is live (its probe came back): before that every read is a query.
    return new CacheFill(await openStore("connect-drizzle", { schema, cache: {}, count: true }));
  }

  /** One phase: `STORE_LEVEL.fillSessions` new sessions set at c32, then each read once at c32. */
  async phase(): Promise<FillPhase> {
    const prefix = `fill${this.phases++}-${randomBytes(12).toString("base64url")}-`;
    const ids = Array.from({ length: STORE_LEVEL.fillSessions }, (_, i) => `${prefix}${i}`);
    let errors = await spread(ids, (sid) => this.store.ops.set(sid, sessionData()));
    const tally = this.store.statements!;
    tally.reset();
    let missing = 0;
    errors += await spread(ids, async (sid) => {
      if (!(await this.store.ops.get(sid))) missing++;
    });
    const counts = tally.read();
    return { sessions: ids.length, statements: counts.statements, missing, errors, byVerb: counts.byVerb };
  }

  close(): Promise<void> {
    return this.store.close();
  }
}
