import type { EventEmitter } from "node:events";
import { describeDevice } from "./device.js";
import { SessionStoreError } from "./errors.js";
import type { EndReason, EventRow } from "./statements.js";

/**
 * The session a lifecycle event is about, as a record (never its id): for audit logs, "new sign-in"
 * emails, closing a user's websockets when a session ends.
 */
export interface SessionEvent {
  /** The session's public handle, as `list` returns it. */
  handle: string;
  /** Its owner (the `userId` option's value, as text), or null for an anonymous session. */
  userId: string | null;
  label: string | null;
  userAgent: string | null;
  ip: string | null;
  /** "Firefox on Linux", from `userAgent` ({@link describeDevice}). */
  device: string | null;
  /** True on the instance that made the change; false on an instance that heard of it (`broadcast`). */
  local: boolean;
}

/** The session an `ended` event is about, and why it ended. */
export interface SessionEndedEvent extends SessionEvent {
  reason: EndReason;
}

/** The lifecycle events, with their listeners' arguments (part of {@link SessionStoreEvents}). */
export interface LifecycleEvents {
  /** A session was stored for the first time (a new visitor's first save, a login's new session). */
  created: [event: SessionEvent];
  /** A session ended: logout, revoke, revokeUser, rotation on login, eviction by `maxSessionsPerUser`. */
  ended: [event: SessionEndedEvent];
  /** A session gained a user who has no live or recent session from that device (browser family and IP). */
  newDevice: [event: SessionEvent];
}

export type LifecycleEvent = keyof LifecycleEvents;

/** A session as a lifecycle event: from the record columns a statement returned (or a save sent). */
export function sessionEvent(row: EventRow, local: boolean): SessionEvent {
  const userAgent = row.user_agent ?? null;
  return { handle: row.handle, userId: row.user_id ?? null, label: row.label ?? null, userAgent, ip: row.ip ?? null, device: describeDevice(userAgent), local };
}

/** A lifecycle event heard from another instance (`broadcast`), as its NOTIFY payload carries it. */
export type HeardEvent = { event: "created" | "newDevice"; args: [SessionEvent] } | { event: "ended"; args: [SessionEndedEvent] };

/**
 * The event of a `broadcast` NOTIFY payload (see Statements' `broadcast`), with `local: false`; undefined
 * for this instance's own (`instance`), another table's (`table`: cut channel names can be shared), and
 * anything that is not such a payload.
 */
export function heardEvent(payload: string, instance: string, table: string): HeardEvent | undefined {
  let message: any;
  try {
    message = JSON.parse(payload);
  } catch {
    return undefined;
  }
  if (message === null || typeof message !== "object" || message.i === instance || message.t !== table || typeof message.handle !== "string") return undefined;
  const text = (value: unknown) => (typeof value === "string" ? value : null);
  const row: EventRow = { handle: message.handle, user_id: text(message.userId), label: text(message.label), user_agent: text(message.userAgent), ip: text(message.ip) };
  if (message.e === "created" || message.e === "newDevice") return { event: message.e, args: [sessionEvent(row, false)] };
  if (message.e === "ended" && typeof message.reason === "string") return { event: "ended", args: [{ ...sessionEvent(row, false), reason: message.reason as EndReason }] };
  return undefined;
}

/**
 * Emits `event` by calling each of its listeners in turn, so that one that throws (or returns a promise
 * that rejects) neither skips the others nor fails the store operation that announced it: its error is
 * reported (the store's `error` event, or the console) as a `LISTENER` SessionStoreError.
 */
export function deliver(emitter: EventEmitter, event: string, args: readonly unknown[], report: (error: Error) => void): void {
  const failed = (error: unknown) => {
    const reason = error instanceof Error ? error.message : String(error);
    const wrapped = new SessionStoreError(
      "LISTENER",
      `a listener of the \`${event}\` event threw (${reason}); the store went on without it: catch errors inside your listener`,
      { cause: error },
    );
    try {
      report(wrapped);
    } catch {
      console.warn(wrapped.message); // an `error` listener that throws too
    }
  };
  // rawListeners: `once` wrappers included, which remove themselves when called.
  for (const listener of emitter.rawListeners(event) as Array<(...args: unknown[]) => unknown>) {
    try {
      const result: any = listener.apply(emitter, args as unknown[]);
      if (result !== null && typeof result === "object" && typeof result.then === "function") result.then(undefined, failed);
    } catch (error) {
      failed(error);
    }
  }
}
