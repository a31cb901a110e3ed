import type { EndReason } from "./statements.js";

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
