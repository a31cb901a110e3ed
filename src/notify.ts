import { driverOf } from "./driver.js";
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
 * With `postgresJs`, postgres.js too, through its own `listen` (its one listen connection, which it
 * reconnects and listens on again by itself, ended with your `sql.end()`). It never says when that
 * connection was lost (onLost comes only for a LISTEN that failed), so it is for listeners that can miss
 * a notification (lifecycle events), not for the cache, which must know when it may have missed one.
 */
export function listen(db: AnyPgDatabase, channel: string, events: ListenEvents, options: { postgresJs?: boolean } = {}): Listening | undefined {
  const { kind, client } = driverOf(db);
  if (kind === "pglite") return listenPglite(client, channel, events);
  if (kind === "node-postgres") return listenNodePg(client, channel, events);
  if (kind === "postgres.js" && options.postgresJs === true) return listenPostgresJs(client, channel, events);
  return undefined;
}

function listenPostgresJs(client: any, channel: string, events: ListenEvents): Listening {
  let unlisten: (() => Promise<void>) | undefined;
  let closed = false;
  // No retry here: when its listen connection closes (a LISTEN that failed to connect included),
  // postgres.js listens again for every listener it holds, by itself (a retry would add ours twice). Its
  // unlisten then no longer finds the listener, hence `closed` checked on each message.
  client.listen(channel, (payload: string) => !closed && events.onMessage(payload), () => !closed && events.onReady()).then(
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
  let unlisten: (() => Promise<void>) | undefined;
  let closed = false;
  const ready = client.listen(channel, (payload: string) => events.onMessage(payload)).then(
    (stop: () => Promise<void>) => {
      unlisten = stop;
      if (closed) return stop();
      events.onReady();
    },
    (error: Error) => events.onLost(error),
  );
  return {
    async close() {
      closed = true;
      await ready;
      await unlisten?.().catch(() => {});
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
