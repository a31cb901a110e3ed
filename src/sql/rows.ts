import type { SessionCapOptions } from "../options.js";
import type { EndReason } from "../reasons.js";

/**
 * Where a session stands: `active` (usable), `expired` (past its idle or absolute expiry, not yet reaped:
 * `extend` can revalidate it), `ended` (logged out, revoked, rotated, or expired and reaped into history).
 */
export type SessionStatus = "active" | "expired" | "ended";

/**
 * What the statements that read or write a session return about its expiry: how long until it (its idle
 * expiry capped by the absolute one) and until the absolute expiry, in ms from the database's now; and
 * how long since its user last authenticated (`authenticated_at`, negative ms from now, null if never).
 */
export interface ExpiryRow {
  expires: number;
  absolute: number | null;
  authenticated?: number | null;
  /** `authenticated_at` itself, epoch ms on the database's clock (exact: a rotation carries it to the new id). */
  authenticated_at?: number | null;
  /** Since when the session has its current id (`rotated_at`, else `created_at`): negative ms from now. */
  issued?: number;
}

/** What a login write (a save that gives a session its user) does besides the write itself, in the same statement. */
export interface LoginWrite {
  /**
   * `maxSessionsPerUser`: ends the user's least recently used live sessions beyond its `limit` (reason
   * `evicted`), or with `whenFull: "refuse"`, tells whether the user had `limit` others already (`refused`).
   */
  cap: Required<SessionCapOptions> | undefined;
  /** Returns the user agents of the user's other recent rows from the same IP (for the `newDevice` check). */
  devices: boolean;
}

/**
 * What a login write with a cap or the device check returns besides the written row: the sessions it
 * ended, and the user agents of the user's other recent rows from the same IP, each as JSON text; or
 * (`whenFull: "refuse"`) whether the cap refuses it, when its transaction must roll back.
 */
export interface LoginRow {
  handle?: string;
  evicted?: string;
  seen?: string;
  refused?: unknown;
}

/**
 * A session's row as the lookup returns it (`version` only with `versioned`): `prior` is null for a row
 * found under its current key, and for one found under the key it was rotated away from, whether that is
 * still within its grace window; `matched`, in a shared lookup, the key it was asked for.
 */
export type SessionRow = {
  key: string;
  handle: string;
  data: string;
  version?: number;
  ua: string | null;
  ip: string | null;
  prior: boolean | null;
  matched?: string;
  /** The keys it was rotated away from, as a JSON object (`previous_keys`), or null. */
  olds: string | null;
} & ExpiryRow;

/**
 * The record columns a statement that creates or ends sessions returns when its lifecycle event is wanted
 * (a listener of it): what {@link SessionEvent}s are made of, never the key.
 */
export interface EventRow {
  handle: string;
  user_id: string | null;
  label: string | null;
  user_agent: string | null;
  ip: string | null;
}

/** A record's row, as `list` returns it. */
export interface RecordRow {
  handle: string;
  user_id: string | null;
  created_at: number;
  last_seen_at: number;
  expires_at: number;
  absolute_expires_at: number | null;
  label: string | null;
  user_agent: string | null;
  ip: string | null;
  ended_at: number | null;
  end_reason: EndReason | null;
  authenticated_at: number | null;
  current: boolean;
  status: SessionStatus;
  /** Where the row stands in `list`'s order (epoch ms of its activity, or of its end): its page cursor, with the handle. */
  sort_at: number;
}

/** A position in `list`'s order: after the row of this sort time and handle. */
export interface ListCursor {
  at: number;
  handle: string;
}
