import { profileOf } from "./driver.js";
import { SessionStoreError } from "./errors.js";
import { newHandle } from "./hash.js";
import type { AnyPgDatabase } from "./options.js";

/** A live LISTEN on one channel; `close()` ends it (and only the connection it opened itself). */
export interface Listening {
  close(): Promise<void>;
}

export interface ListenEvents {
  /** A notification arrived. */
  onMessage(payload: string): void;
  /** The listen connection is up and LISTENing: notifications from now on will arrive. */
  onReady(): void;
  /** The listen connection is gone: notifications may be missed until the next onReady. */
  onLost(error: Error): void;
}

/**
 * Listens to a Postgres channel on the driver behind a drizzle database, without importing the driver:
 * node-postgres (a Pool or Client: a separate client with the same settings is opened, so the pool is
 * left as it was) and PGlite (in-process). Reconnects with backoff after a lost connection, on an
 * unref'd timer. Returns undefined when the driver is not one of these.
 *
 * With `lossy`, postgres.js too, through its own `listen` (its one listen connection, which it
 * reconnects and listens on again by itself, ended with your `sql.end()`). It never says when that
 * connection was lost (onLost comes only for a LISTEN that failed), so it is for listeners that can miss
 * a notification (lifecycle events), not for the cache, which must know when it may have missed one.
 */
export function listen(db: AnyPgDatabase, channel: string, events: ListenEvents, options: { lossy?: boolean } = {}): Listening | undefined {
  const { kind, client, listen: support } = profileOf(db);
  if (support === "none" || (support === "lossy" && options.lossy !== true)) return undefined;
  if (kind === "pglite") return listenPglite(client, channel, events);
  if (kind === "node-postgres") return listenNodePg(client, channel, events);
  return listenPostgresJs(client, channel, events);
}

function listenPostgresJs(client: any, channel: string, events: ListenEvents): Listening {
  let unlisten: (() => Promise<void>) | undefined;
  let closed = false;
  // No retry here: when its listen connection closes (a LISTEN that failed to connect included),
  // postgres.js listens again for every listener it holds, by itself (a retry would add ours twice). Its
  // unlisten then no longer finds the listener, hence `closed` checked on each message.
  client
    .listen(
      channel,
      (payload: string) => !closed && events.onMessage(payload),
      () => !closed && events.onReady(),
    )
    .then(
      (result: { unlisten(): Promise<void> }) => {
        unlisten = () => result.unlisten();
        if (closed) return unlisten().catch(() => {});
      },
      (error: Error) => !closed && events.onLost(error),
    );
  return {
    async close() {
      closed = true;
      await unlisten?.().catch(() => {});
    },
  };
}

function listenPglite(client: any, channel: string, events: ListenEvents): Listening {
  // PGlite sends `LISTEN <name>` as given and keys its listeners by the name Postgres would read: quoted,
  // the channel keeps its case and may hold any character (channelName leaves out double quotes).
  const name = `"${channel}"`;
  let closed = false;
  const onMessage = (payload: string) => !closed && events.onMessage(payload);
  const ready = client.listen(name, onMessage).then(
    () => {
      if (closed) return client.unlisten(name, onMessage);
      events.onReady();
    },
    (error: Error) => events.onLost(error),
  );
  return {
    async close() {
      closed = true;
      await ready;
      // Not the function listen returned: it names the channel unquoted, so it would miss a capital letter.
      await client.unlisten(name, onMessage).catch(() => {});
    },
  };
}

function listenNodePg(poolOrClient: any, channel: string, events: ListenEvents): Listening {
  const Client = poolOrClient.Client ?? poolOrClient.constructor;
  const settings = poolOrClient.options ?? poolOrClient.connectionParameters;
  let client: any;
  let closed = false;
  let timer: NodeJS.Timeout | undefined;
  let delay = 100;

  const lost = (error: Error) => {
    if (closed || !client) return;
    const dead = client;
    client = undefined;
    dead.removeAllListeners?.("notification");
    dead.on?.("error", () => {});
    dead.end?.().catch?.(() => {});
    events.onLost(error);
    timer = setTimeout(connect, delay);
    timer.unref?.();
    delay = Math.min(delay * 2, 5_000);
  };

  const connect = async () => {
    if (closed) return;
    const next = new Client(settings);
    client = next;
    next.on("error", (error: Error) => lost(error));
    next.on("end", () => lost(new Error("connect-drizzle: the LISTEN connection ended")));
    next.on("notification", (message: { channel: string; payload?: string }) => {
      if (message.channel === channel) events.onMessage(message.payload ?? "");
    });
    try {
      await next.connect();
      await next.query(`listen "${channel.replaceAll('"', '""')}"`);
      if (closed) return void next.end().catch(() => {});
      delay = 100;
      events.onReady();
    } catch (error) {
      if (client === next) lost(error as Error);
    }
  };
  void connect();

  return {
    async close() {
      closed = true;
      if (timer) clearTimeout(timer);
      const current = client;
      client = undefined;
      current?.removeAllListeners?.("end");
      await current?.end?.().catch?.(() => {});
    },
  };
}

/** A LISTEN proven to hear what the app's database NOTIFYs: see {@link hear}. */
export interface Hearing extends Listening {
  /** Whether a probe came back on the LISTEN connection since it was (re)opened, and none was missed since. */
  readonly live: boolean;
  /**
   * Resolves once {@link live}; rejects with a `LISTEN_DEAF` error when it is not within the deadline
   * (`store.ready()` awaits it, so a LISTEN that cannot hear fails the start, not the first request).
   */
  proven(): Promise<void>;
}

export interface HearOptions {
  /** What listens, in its reports: "the read cache", "`broadcast`". */
  name: string;
  /** What is lost while it cannot hear, in its reports: "the cache is off until it hears again". */
  meanwhile: string;
  /** Sends a NOTIFY with this payload on the channel through the app's database, as every write does. */
  notify(payload: string): Promise<unknown>;
  /** How long a probe may take to come back before the LISTEN counts as deaf, ms. */
  deadline: number;
  /** How often to probe, ms. */
  interval: number;
  /** A notification other than a probe arrived. */
  onMessage(payload: string): void;
  /** A probe came back while not live: every NOTIFY committed through the app's database from now on is heard. */
  onLive(): void;
  /** It was live and may have missed notifications since (its connection was lost, or a probe did not come back). */
  onDeaf(): void;
  /** Reports a problem, which fails no request. */
  report(error: Error): void;
  /** Describes a probe that could not be sent. */
  probeError(error: unknown): Error;
  /** Accept a `lossy` LISTEN too (postgres.js), for a listener that may miss a notification (see {@link listen}). */
  lossy?: boolean;
}

/**
 * Listens on `channel` of `db` (see {@link listen}) and proves that the LISTEN hears what the app writes:
 * a probe NOTIFY with a random payload, sent through the app's own database, must come back on the
 * LISTEN connection within the deadline, at the start and then every `interval`. A LISTEN can be up and
 * still hear nothing: behind pgbouncer in transaction mode it ran on a server connection that was then
 * handed to other clients, and the notifications go there. Until a probe comes back it is not live; a
 * probe that does not come back, or a lost connection, makes it deaf again. Each outage is reported
 * once. Probe payloads (`?probe:` and random) are never passed on. Undefined when the driver cannot LISTEN.
 */
export function hear(db: AnyPgDatabase, channel: string, o: HearOptions): Hearing | undefined {
  let live = false;
  /** The payload of the probe on its way, if any. */
  let pending: string | undefined;
  let reported = false;
  let sendFailed = false;
  let closed = false;
  let interval: NodeJS.Timeout | undefined;
  let watchdog: NodeJS.Timeout | undefined;
  const waiters = new Set<{ resolve(): void; reject(error: Error): void }>();

  const deafError = () =>
    new SessionStoreError(
      "LISTEN_DEAF",
      `${o.name} cannot hear the database: a NOTIFY sent through \`db\` did not come back on its LISTEN connection within ${o.deadline} ms. ` +
        "Behind a pooler that hands server connections to other clients between transactions (pgbouncer in transaction mode) a LISTEN hears " +
        `nothing: give the store a \`listen\` database connected straight to Postgres; ${o.meanwhile}`,
    );
  /** Not live any more; `error` says why, unless it was said already (a probe that could not be sent). */
  const lose = (error: Error | undefined) => {
    pending = undefined;
    clearTimeout(watchdog);
    if (live) {
      live = false;
      o.onDeaf();
    }
    if (!reported && error) o.report(error);
    reported = true;
  };
  const probe = () => {
    if (closed) return;
    const payload = `?probe:${newHandle()}`;
    pending = payload;
    clearTimeout(watchdog);
    let sent = true;
    watchdog = setTimeout(() => {
      if (pending !== payload) return;
      if (!sent) return lose(undefined); // reported as a failed probe, not as a LISTEN that cannot hear
      lose(live ? new SessionStoreError("LISTEN_DEAF", `${o.name}'s NOTIFY probe did not come back within ${o.deadline} ms; ${o.meanwhile}`) : deafError());
    }, o.deadline);
    watchdog.unref?.();
    o.notify(payload).then(
      () => void (sendFailed = false),
      (error) => {
        sent = false;
        // Said once per outage, not on every probe (it cannot come back meanwhile).
        if (sendFailed) return;
        sendFailed = true;
        o.report(o.probeError(error));
      },
    );
  };
  const listening = listen(
    db,
    channel,
    {
      onMessage(payload) {
        if (!payload.startsWith("?probe:")) return o.onMessage(payload);
        if (payload !== pending) return;
        pending = undefined;
        clearTimeout(watchdog);
        reported = false;
        if (live) return;
        live = true;
        o.onLive();
        for (const waiter of waiters) waiter.resolve();
        waiters.clear();
      },
      onReady() {
        probe();
        clearInterval(interval);
        interval = setInterval(probe, o.interval);
        interval.unref?.();
      },
      onLost(error) {
        clearInterval(interval);
        reported = false; // a lost connection is news of its own
        lose(new SessionStoreError("DATABASE", `${o.name}'s LISTEN connection was lost (${error.message}); ${o.meanwhile}`, { cause: error }));
      },
    },
    { lossy: o.lossy },
  );
  if (listening === undefined) return undefined;
  return {
    get live() {
      return live;
    },
    proven() {
      if (live) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const waiter = {
          resolve: () => (clearTimeout(timer), resolve()),
          reject: (error: Error) => (clearTimeout(timer), reject(error)),
        };
        const timer = setTimeout(() => {
          waiters.delete(waiter);
          waiter.reject(deafError());
        }, o.deadline);
        timer.unref?.();
        waiters.add(waiter);
      });
    },
    async close() {
      closed = true;
      clearInterval(interval);
      clearTimeout(watchdog);
      live = false;
      await listening.close();
    },
  };
}
