import type { DriverProfile } from "./driver.js";
import type { Executor, Shape } from "./executor.js";

/**
 * Telling every instance's read cache which sessions changed, after the change committed: the keys of
 * many writes go out together in one NOTIFY statement, sent by one caller at a time.
 *
 * Why not a NOTIFY inside each write, as the store did before: Postgres takes one lock for every
 * transaction that notifies, from just before its commit until after it, so notifying writes commit one
 * at a time, each waiting for the previous one's WAL flush. With the NOTIFY in the writes, a deployment
 * with the cache ended sessions at a third of the speed of one without. Here the writes commit as any
 * write does (group commit included), and only the announcement statements take that lock: one per
 * batch, and without waiting for a flush (`synchronous_commit = off`: a notification is delivered at its
 * commit, and if the server crashes before flushing it, every LISTEN connection is lost with it, which
 * empties every cache anyway).
 *
 * What a change's caller is promised is unchanged: its call resolves only once the NOTIFY naming its
 * sessions has committed, so every instance drops them as soon as it hears it, exactly as before.
 */
export class Invalidations {
  /** Keys waiting for the next statement, and who waits for them. */
  private queued = new Set<string>();
  private waiters: Array<{ resolve(): void; reject(error: unknown): void }> = [];
  private sending = false;

  /** @param send runs the NOTIFY statement of these row keys (see Statements' `invalidate`) */
  constructor(private readonly send: (keys: readonly string[]) => Promise<unknown>) {}

  /**
   * Resolves once a NOTIFY naming every one of `keys` has committed; rejects with that statement's error
   * when it could not be sent (after the executor's retries). Keys arriving while a statement is in
   * flight go in the next one, together.
   */
  announce(keys: readonly string[]): Promise<void> {
    if (keys.length === 0) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      for (const key of keys) this.queued.add(key);
      this.waiters.push({ resolve, reject });
      if (!this.sending) this.flush();
    });
  }

  private flush(): void {
    const keys = [...this.queued];
    const waiters = this.waiters;
    this.queued = new Set();
    this.waiters = [];
    this.sending = true;
    this.send(keys).then(
      () => this.next(waiters, (w) => w.resolve()),
      (error) => this.next(waiters, (w) => w.reject(error)),
    );
  }

  private next(waiters: typeof this.waiters, settle: (waiter: (typeof this.waiters)[number]) => void): void {
    this.sending = false;
    for (const waiter of waiters) settle(waiter);
    if (this.waiters.length > 0) this.flush();
  }
}

/** How long announcements go through the pool after the store's own connection failed, ms. */
const REOPEN_AFTER = 5_000;

/**
 * Sends the NOTIFY statements of {@link Invalidations}. On node-postgres with a pool, on a connection of
 * the store's own (a new client with the pool's settings, opened when first needed), so that an
 * announcement never waits in the pool's queue behind the very writes it announces: at 32 concurrent
 * touches on a pool of 10 that wait was what a write with the cache cost. Elsewhere (one connection,
 * another driver), or for a few seconds after that connection failed, through the pool like every statement.
 */
export class InvalidationSender {
  private client: Promise<any> | undefined;
  private pooledUntil = 0;
  private closed = false;

  constructor(
    private readonly driver: DriverProfile,
    private readonly exec: Executor,
    private readonly shape: Shape,
  ) {}

  /** Sends the NOTIFY of `keys`: resolves once it has committed. */
  send(keys: readonly string[]): Promise<unknown> {
    const values = { keys: JSON.stringify(keys) };
    const { driver } = this;
    if (driver.kind !== "node-postgres" || driver.singleConnection || this.closed || performance.now() < this.pooledUntil) {
      return this.exec.run(this.shape, values);
    }
    const started = performance.now();
    const own = (this.client ??= this.open(driver.client)).then((client) => client.query(this.exec.config(this.shape, values)));
    // Bounded like every statement; whatever went wrong, the pool sends it (with its retries).
    return this.exec.within(own, started).catch(() => {
      this.drop();
      return this.exec.run(this.shape, values);
    });
  }

  /** Closes the store's own connection. */
  async close(): Promise<void> {
    this.closed = true;
    const client = this.client;
    this.client = undefined;
    await client?.then((c) => c.end()).catch(() => {});
  }

  private open(pool: any): Promise<any> {
    const Client = pool.Client ?? pool.constructor;
    const client = new Client(pool.options ?? pool.connectionParameters);
    const opened: Promise<any> = client.connect().then(() => {
      if (!this.closed) return client;
      void client.end().catch(() => {});
      throw new Error("connect-drizzle: the store was closed");
    });
    // A connection that fails later is dropped, if it is still the one in use.
    client.on("error", () => {
      if (this.client === opened) this.drop();
    });
    return opened;
  }

  /** Forgets the store's own connection (it failed), and sends through the pool for a while. */
  private drop(): void {
    const client = this.client;
    this.client = undefined;
    this.pooledUntil = performance.now() + REOPEN_AFTER;
    client?.then((c) => c.end()).catch(() => {});
  }
}
