/**
 * Counting the SQL statements one pg Pool sends, for a store in the benchmark's own process (the mixed
 * workload, the cache's fill after sets). The HTTP server counts its whole process instead (support/server.ts);
 * here several stores share the process, so the count is per pool: each of its clients' `query` is wrapped
 * as the pool connects it (pg's Pool and drizzle's node-postgres driver both go through `Client.query`).
 */
import pg from "pg";
import { isProbe, queryArgs } from "./notify.js";

export interface StatementCounts {
  /** Every statement, the cache's probes included (as the HTTP table counts them). */
  statements: number;
  /** SELECTs other than the cache's probe: the lookups of reads. */
  lookups: number;
  /** Statements by first keyword (a `with` holding an insert/update/delete counts as the write it holds). */
  byVerb: Record<string, number>;
}

/** Counts the statements of one pool's clients; `reset()` starts from zero. */
export class StatementTally {
  private counts: StatementCounts = { statements: 0, lookups: 0, byVerb: {} };

  /** Wraps the `query` of every client `pool` connects from now on (call before the pool's first query). */
  constructor(pool: pg.Pool) {
    pool.on("connect", (client) => {
      const tally = this;
      client.query = function (this: pg.Client, ...args: unknown[]) {
        tally.record(args);
        // Through the prototype at call time, so a wrapper installed there meanwhile (support/notify.ts) still runs.
        return (pg.Client.prototype.query as (...a: unknown[]) => unknown).apply(this, args);
      } as typeof client.query;
    });
  }

  private record(args: unknown[]): void {
    const { text, values } = queryArgs(args);
    const first = /^\s*(\w+)/.exec(text)?.[1]?.toLowerCase() ?? "?";
    const verb = first === "with" ? (/\b(insert|update|delete)\b/i.exec(text)?.[1]?.toLowerCase() ?? "with") : first;
    this.counts.statements++;
    this.counts.byVerb[verb] = (this.counts.byVerb[verb] ?? 0) + 1;
    if (verb === "select" && !isProbe(text, values)) this.counts.lookups++;
  }

  reset(): void {
    this.counts = { statements: 0, lookups: 0, byVerb: {} };
  }

  /** The counts since the last reset. */
  read(): StatementCounts {
    return { ...this.counts, byVerb: { ...this.counts.byVerb } };
  }
}
