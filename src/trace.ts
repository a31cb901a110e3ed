import * as diagnostics from "node:diagnostics_channel";

/**
 * What a store operation's tracing events carry (`tracing:connect-drizzle:<operation>:start`, `end`,
 * `asyncStart`, `asyncEnd`, `error`): never a session id, nor the session's data.
 */
export interface TraceContext {
  /**
   * `get`, `set`, `touch`, `destroy`, `regenerate`, `all`, `length`, `clear`, `list`, `count`, `handleOf`,
   * `revoke`, `revokeUser`, `extend`, `reap`, `ready`.
   */
  operation: string;
  /** The sessions table's quoted, schema-qualified name (`"sessions"`, `"auth"."sessions"`). */
  table: string;
  /** The session's handle (`revoke`, `extend`). */
  handle?: string;
  /** The user (`list`, `count`, `revokeUser`), as text. */
  userId?: string;
  /** A `get` answered from the read cache, without a query. */
  cached?: true;
  /** A `touch` skipped, without a query (the stored expiry was fresh). */
  skipped?: true;
  /** The error the operation failed with (set before the `error` event). */
  error?: unknown;
}

/** What an operation adds to its context (`operation` and `table` aside). */
export type TraceDetail = Omit<TraceContext, "operation" | "table" | "error">;

type Tracing = diagnostics.TracingChannel<object, TraceContext>;

/** Node's `tracingChannel` (18.19, 20): absent on older versions and some runtimes, where nothing is traced. */
const tracingChannel: ((name: string) => Tracing) | undefined =
  typeof (diagnostics as any).tracingChannel === "function" ? (diagnostics as any).tracingChannel : undefined;

const channels = new Map<string, Tracing | null>();

function channelOf(operation: string): Tracing | null {
  let channel = channels.get(operation);
  if (channel === undefined) channels.set(operation, (channel = tracingChannel?.(`connect-drizzle:${operation}`) ?? null));
  return channel;
}

/** Whether any of a tracing channel's five channels has a subscriber (TracingChannel.hasSubscribers is Node 20.13+). */
function subscribed(channel: Tracing): boolean {
  return (
    channel.start.hasSubscribers ||
    channel.end.hasSubscribers ||
    channel.asyncStart.hasSubscribers ||
    channel.asyncEnd.hasSubscribers ||
    channel.error.hasSubscribers
  );
}

/** Whether `operation`'s tracing channel has a subscriber: the fast paths build no closure for {@link traced} without one. */
export function isTraced(operation: string): boolean {
  const channel = channelOf(operation);
  return channel !== null && subscribed(channel);
}

/**
 * Runs a store operation inside its tracing channel, as Node's `tracePromise` does (start around the
 * call, so AsyncLocalStorage stores bound to it apply; end after its synchronous part; error, asyncStart
 * and asyncEnd when it settles), except that the result is not put in the context: a loaded session
 * carries what the store read about it, its id included. Without subscribers it only calls `run`.
 */
export function traced<T>(operation: string, table: string, detail: TraceDetail | undefined, run: () => Promise<T>): Promise<T> {
  const channel = channelOf(operation);
  if (channel === null || !subscribed(channel)) return run();
  const context: TraceContext = { operation, table, ...detail };
  const { start, end, asyncStart, asyncEnd, error } = channel;
  const settled = () => {
    asyncStart.publish(context);
    asyncEnd.publish(context);
  };
  return start.runStores(context, () => {
    try {
      return run().then(
        (value) => {
          settled();
          return value;
        },
        (failure: unknown) => {
          context.error = failure;
          error.publish(context);
          settled();
          throw failure;
        },
      );
    } catch (failure) {
      context.error = failure;
      error.publish(context);
      throw failure;
    } finally {
      end.publish(context);
    }
  });
}
