import { createSecretKey, type KeyObject } from "node:crypto";
import type { EventEmitter } from "node:events";
import { describeDevice } from "./device.js";
import { SessionStoreError } from "./errors.js";
import { derive, openText, sealText } from "./aead.js";
import { newHandle } from "./hash.js";
import { END_REASONS, type EndReason } from "./reasons.js";
import type { ReapResult } from "./reaper.js";
import type { EventRow } from "./statements.js";

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

/**
 * A signed-in session used from another device than its row recorded (see the `onBindingChange` option):
 * the session as the request that used it sees it (`userAgent`, `device`, `ip` are that request's), with
 * the device its row recorded before.
 */
export interface BindingChangedEvent extends SessionEvent {
  userId: string;
  /** The user agent the row recorded before this request. */
  previousUserAgent: string | null;
  /** "Firefox on Linux", from `previousUserAgent` ({@link describeDevice}). */
  previousDevice: string | null;
}

/** The lifecycle events, with their listeners' arguments (part of {@link SessionStoreEvents}). */
export interface LifecycleEvents {
  /** A session was stored for the first time (a new visitor's first save, a login's new session). */
  created: [event: SessionEvent];
  /** A session ended: logout, revoke, revokeUser, rotation on login, eviction by `maxSessionsPerUser`. */
  ended: [event: SessionEndedEvent];
  /** A session gained a user who has no live or recent session from that device (browser family and IP). */
  newDevice: [event: SessionEvent];
  /**
   * A live session with a user was used by a request from another browser family or operating system
   * than its row recorded (once per change: the row then records the new device). With
   * `onBindingChange: "end"` the session also ends (`ended`, reason `binding`).
   */
  bindingChanged: [event: BindingChangedEvent];
}

export type LifecycleEvent = keyof LifecycleEvents;

/** A session as a lifecycle event: from the record columns a statement returned (or a save sent). */
export function sessionEvent(row: EventRow, local: boolean): SessionEvent {
  const userAgent = row.user_agent ?? null;
  return { handle: row.handle, userId: row.user_id ?? null, label: row.label ?? null, userAgent, ip: row.ip ?? null, device: describeDevice(userAgent), local };
}

/** A lifecycle event with its listeners' arguments: one this store announces, or one heard from another instance. */
export type Announcement =
  | { event: "created" | "newDevice"; args: [SessionEvent] }
  | { event: "ended"; args: [SessionEndedEvent] }
  | { event: "bindingChanged"; args: [BindingChangedEvent] };

/**
 * The `bindingChanged` event of a session whose record is `row`, used by a request from `userAgent` and
 * `ip` (kept as recorded when the request has none), its row having recorded `previous`; none when the
 * row has no user (any more).
 */
export function bindingEvent(row: EventRow, previous: string | null, userAgent: string | null, ip: string | null, local: boolean): Announcement[] {
  if (row.user_id === null) return [];
  const event = { ...sessionEvent({ ...row, user_agent: userAgent, ip: ip ?? row.ip }, local), userId: row.user_id };
  return [{ event: "bindingChanged", args: [{ ...event, previousUserAgent: previous, previousDevice: describeDevice(previous) }] }];
}

/**
 * What a `broadcast` NOTIFY carries, sealed (see EventSeal): the event (`e`), the table (`t`) and
 * instance (`i`) it comes from, when it was sent (`s`, epoch ms) with a nonce (`n`) against replays, and the
 * session's record; the record's fields but the handle are left out of an event too large for a NOTIFY.
 */
interface EventPayload {
  e: LifecycleEvent;
  t: string;
  i: string;
  s: number;
  n: string;
  handle: string;
  reason?: EndReason;
  userId?: string | null;
  label?: string | null;
  userAgent?: string | null;
  ip?: string | null;
  /** `bindingChanged`'s previous user agent. */
  was?: string | null;
}

/** The end reasons a heard `ended` event may carry: the one list ({@link END_REASONS}). */
const END_REASON_VALUES: ReadonlySet<string> = new Set<string>(END_REASONS);

/**
 * How far a heard event's send time may be from this server's clock, either way, ms: an older one is a
 * replay (or the instances' clocks disagree by that much), and within it a replay is caught by its nonce.
 */
const REPLAY_WINDOW = 60_000;
/** Nonces of accepted events remembered at most (the events of one window, on a busy table, fit). */
const NONCES_KEPT = 100_000;
/** Postgres refuses a NOTIFY payload of 8000 bytes or more. */
const NOTIFY_LIMIT = 8000;

/**
 * The `broadcast` channel's payloads, sealed so that only instances holding the store's `secrets` can read
 * or write them: anyone who can connect to the database can LISTEN and NOTIFY on any channel, whatever
 * their privileges on the table. A payload is `<kid>.<base64url(iv | ciphertext | tag)>`, AES-256-GCM
 * under a key derived with HKDF-SHA-256 from a secret (the first seals, every one opens: rotation), of
 * the JSON of the event with the table, the sender's instance id, its send time and a random nonce, so
 * that an altered, forged or replayed payload is refused.
 */
export class EventSeal {
  private readonly keys: Array<{ key: KeyObject; kid: string }>;
  private readonly byKid = new Map<string, KeyObject>();
  /** The nonces of the events accepted within the window, with their send times, oldest first. */
  private readonly accepted = new Map<string, number>();
  private prunedAt = 0;

  constructor(
    secrets: readonly string[],
    private readonly table: string,
    /** This store's instance id: its own events, heard back, are skipped. */
    private readonly instance: string,
  ) {
    this.keys = secrets.map((secret) => ({
      key: createSecretKey(deriveFor(secret, "key", 32)),
      kid: deriveFor(secret, "kid", 6).toString("base64url"),
    }));
    for (const { key, kid } of this.keys) if (!this.byKid.has(kid)) this.byKid.set(kid, key);
  }

  /**
   * The payload of an event this store announces, sent at `now` (epoch ms). An event too large for a
   * NOTIFY (a huge user id, or a row written by something else) goes with its handle and reason only.
   */
  seal({ event, args: [e] }: Announcement, now: number): string {
    const head: EventPayload = { e: event, t: this.table, i: this.instance, s: now, n: newHandle(), handle: e.handle };
    if ("reason" in e) head.reason = e.reason;
    const full: EventPayload = { ...head, userId: e.userId, label: e.label, userAgent: e.userAgent, ip: e.ip };
    if ("previousUserAgent" in e) full.was = e.previousUserAgent;
    const sealed = this.sealText(JSON.stringify(full));
    return sealed.length < NOTIFY_LIMIT ? sealed : this.sealText(JSON.stringify(head));
  }

  /**
   * The event of a payload heard at `now`, with `local: false`; undefined for this instance's own and
   * another table's (cut channel names can be shared); or why it was refused.
   */
  open(payload: string, now: number): Announcement | undefined | string {
    const dot = payload.indexOf(".");
    const key = dot < 0 ? undefined : this.byKid.get(payload.slice(0, dot));
    if (!key)
      return (
        "it is not sealed under any of this store's `secrets`: forged by someone who can connect to the database, " +
        "or sent by an instance with other `secrets` (set the same `secrets` on every instance)"
      );
    const text = openText(key, payload.slice(dot + 1));
    if (text === undefined) return "it fails authentication: altered, or forged";
    // Authenticated, so sent by an instance with the same secrets; checked all the same (another version's).
    let m: Partial<Record<keyof EventPayload, unknown>> | undefined;
    try {
      m = JSON.parse(text);
    } catch {
      m = undefined;
    }
    const announcement = m !== null && typeof m === "object" ? announcementOf(m) : undefined;
    if (!announcement || !m || typeof m.t !== "string" || typeof m.i !== "string" || typeof m.s !== "number" || typeof m.n !== "string") {
      return "it is not a lifecycle event of this version of connect-drizzle (run one version on every instance)";
    }
    if (m.t !== this.table || m.i === this.instance) return undefined;
    if (!(Math.abs(now - m.s) <= REPLAY_WINDOW)) {
      return (
        `it was sent more than ${REPLAY_WINDOW / 1000} s from this server's clock: ` +
        "replayed, or the instances' clocks disagree (keep them in sync with NTP)"
      );
    }
    if (this.accepted.has(m.n)) return "it was heard before: replayed";
    this.remember(m.n, m.s, now);
    return announcement;
  }

  private sealText(plaintext: string): string {
    const { key, kid } = this.keys[0]!;
    return sealText(key, kid, plaintext);
  }

  /**
   * Keeps an accepted nonce for the window; older ones go. Beyond the bound the oldest go first, which
   * would let a replay of one of them through within the window: the bound is far above the events one
   * table sees in a minute, and only authenticated events take a place, so no forger can fill it.
   */
  private remember(nonce: string, sent: number, now: number): void {
    if (now - this.prunedAt > REPLAY_WINDOW || this.accepted.size >= NONCES_KEPT) {
      this.prunedAt = now;
      for (const [n, s] of this.accepted) if (now - s > REPLAY_WINDOW) this.accepted.delete(n);
      for (const n of this.accepted.keys()) {
        if (this.accepted.size < NONCES_KEPT * 0.9) break;
        this.accepted.delete(n);
      }
    }
    this.accepted.set(nonce, sent);
  }
}

function deriveFor(secret: string, use: string, length: number): Buffer {
  return derive(secret, `connect-drizzle broadcast ${use} v1`, length);
}

/** The event of an opened payload, with `local: false`, or undefined when it holds none. */
function announcementOf(m: Partial<Record<keyof EventPayload, unknown>>): Announcement | undefined {
  if (typeof m.handle !== "string") return undefined;
  const text = (value: unknown) => (typeof value === "string" ? value : null);
  const row: EventRow = { handle: m.handle, user_id: text(m.userId), label: text(m.label), user_agent: text(m.userAgent), ip: text(m.ip) };
  if (m.e === "created" || m.e === "newDevice") return { event: m.e, args: [sessionEvent(row, false)] };
  // Without its user (left out of a payload too large for a NOTIFY), a binding change is not told at all.
  if (m.e === "bindingChanged") return bindingEvent(row, text(m.was), row.user_agent, row.ip, false)[0];
  if (m.e === "ended" && typeof m.reason === "string" && END_REASON_VALUES.has(m.reason)) {
    return { event: "ended", args: [{ ...sessionEvent(row, false), reason: m.reason as EndReason }] };
  }
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

/**
 * The events of a {@link SessionStore}, each with its listener's arguments:
 * - `reap`: a reaper round finished (the periodic reaper's rounds; `store.reap()` resolves with its own);
 * - `error`: a problem that did not fail a request (a corrupt row, a failed reaper round, a failing cache
 *   probe, a lifecycle listener that threw, a lost `broadcast` connection, an event refused on the
 *   `broadcast` channel: `UNTRUSTED_EVENT`). Without a listener it is
 *   written to the console instead;
 * - `connect`, `disconnect`: express-session listens for them; this store never emits them (every
 *   operation gets its connection from your database, and a failure fails only that operation);
 * - `newListener`, `removeListener`: EventEmitter's own.
 * - `created`, `ended`, `newDevice`, `bindingChanged`: the lifecycle events ({@link LifecycleEvents}); with
 *   `broadcast`, other instances' too.
 */
export interface SessionStoreEvents extends LifecycleEvents {
  reap: [result: ReapResult];
  error: [error: Error];
  connect: [];
  disconnect: [];
  newListener: [event: string | symbol, listener: (...args: any[]) => void];
  removeListener: [event: string | symbol, listener: (...args: any[]) => void];
}

/** A listener of the {@link SessionStoreEvents} event `E`. */
export type SessionStoreListener<E extends keyof SessionStoreEvents> = (...args: SessionStoreEvents[E]) => void;
