/**
 * Counting connect-drizzle's NOTIFYs, two ways:
 *
 * - statements: every statement a pg Client sends whose text holds `pg_notify(` (by wrapping
 *   `pg.Client.prototype.query`, which pg's Pool and drizzle's node-postgres driver both go through). Such a
 *   statement sends one notification per row it changes, so one that changes nothing (ending a missing
 *   session) sends none;
 * - deliveries: the notifications that actually arrive on the store's channel, on a LISTEN connection of
 *   the benchmark's own.
 *
 * Both leave out the read cache's probe (payload `?probe:…`, a `select pg_notify` every 30 s), which is
 * not a write.
 */
import pg from "pg";
import { DATABASE_URL } from "./config.js";

const PROBE = "?probe:";

/**
 * The store's NOTIFY channel, computed here rather than imported from `src/`: `connect_drizzle_` and the
 * table's name (`schema_table` with a schema), cut at a character boundary within 63 UTF-8 bytes (Postgres's
 * identifier limit).
 */
export function notifyChannel(schema: string | undefined, table: string): string {
  let name = "";
  let bytes = 0;
  for (const char of `connect_drizzle_${schema ? `${schema}_${table}` : table}`) {
    bytes += Buffer.byteLength(char, "utf8");
    if (bytes > 63) break;
    name += char;
  }
  return name;
}

/** The SQL text and parameters of a `Client.query` call, in either form: `(text, values)` or `({ name?, text, values })`. */
export function queryArgs(args: unknown[]): { text: string; values: unknown[] | undefined; name: string | undefined } {
  const config = args[0] as { text?: string; values?: unknown[]; name?: string } | string | undefined;
  if (typeof config === "string") return { text: config, values: Array.isArray(args[1]) ? args[1] : undefined, name: undefined };
  return { text: config?.text ?? "", values: Array.isArray(args[1]) ? args[1] : config?.values, name: config?.name };
}

/** Whether a statement sends a connect-drizzle write's NOTIFY (not the cache's probe). */
export function isNotifyStatement(text: string, values: unknown[] | undefined): boolean {
  return text.includes("pg_notify(") && !isProbe(text, values);
}

/** Whether a statement is the read cache's probe (a `select pg_notify` whose payload starts `?probe:`). */
export function isProbe(text: string, values: unknown[] | undefined): boolean {
  return text.includes("pg_notify(") && values?.some((v) => typeof v === "string" && v.startsWith(PROBE)) === true;
}

/**
 * Counts pg_notify statements sent from this process while installed; `stop()` restores pg's own query.
 * Installed only around the cells it counts, so that no other store's queries go through it.
 */
export function countNotifyStatements(): { count(): number; reset(): void; stop(): void } {
  const original = pg.Client.prototype.query;
  let n = 0;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    const { text, values } = queryArgs(args);
    if (isNotifyStatement(text, values)) n++;
    return (original as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof original;
  return {
    count: () => n,
    reset: () => void (n = 0),
    stop: () => void (pg.Client.prototype.query = original),
  };
}

/**
 * A LISTEN connection of the benchmark's own on one channel, counting the notifications delivered (probes
 * left out). `fence()` sends a probe of its own and waits for it: notifications of one channel arrive in
 * commit order, so once it is back every notification committed before it has arrived.
 */
export class NotifyListener {
  delivered = 0;
  private fences = 0;
  private waiting = new Map<string, () => void>();

  private constructor(
    private readonly client: pg.Client,
    readonly channel: string,
  ) {
    client.on("notification", (message) => {
      if (message.channel !== channel) return;
      const payload = message.payload ?? "";
      if (!payload.startsWith(PROBE)) {
        this.delivered++;
        return;
      }
      this.waiting.get(payload)?.();
    });
  }

  static async open(channel: string): Promise<NotifyListener> {
    const client = new pg.Client({ connectionString: DATABASE_URL });
    client.on("error", (error) => console.error("notify listener:", error.message));
    await client.connect();
    await client.query(`listen "${channel.replaceAll('"', '""')}"`);
    return new NotifyListener(client, channel);
  }

  /** Waits (at most 5 s) until every notification committed so far has arrived. */
  async fence(): Promise<void> {
    const payload = `${PROBE}bench-fence-${process.pid}-${++this.fences}`;
    const back = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`notify listener: fence ${payload} did not come back within 5 s`)), 5_000);
      this.waiting.set(payload, () => (clearTimeout(timer), this.waiting.delete(payload), resolve()));
    });
    await this.client.query("select pg_notify($1, $2)", [this.channel, payload]);
    await back;
  }

  /** Flushes what is in flight, then starts counting from zero. */
  async reset(): Promise<void> {
    await this.fence();
    this.delivered = 0;
  }

  /** The notifications delivered since the last reset, once every one committed so far has arrived. */
  async count(): Promise<number> {
    await this.fence();
    return this.delivered;
  }

  async close(): Promise<void> {
    await this.client.end().catch(() => {});
  }
}
