import { inspect } from "node:util";
import type { SessionData } from "express-session";
import type { StaleEntry } from "./seal.js";

/*
 * What a request read of its session, carried on the session itself: the row as it was read (or last
 * written), for the skip decisions of touch and save, the version check, the cache and the sign-in
 * time; and the request a session belongs to, with its device.
 */

/**
 * What a loaded session's row held when its request read it, under a symbol key: JSON.stringify,
 * Object.keys and for-in (express-session's and @fastify/session's copies) all skip it, so it is never
 * serialized or seen. It is also put on the session's cookie, as an own enumerable property: that is how
 * it survives @fastify/session's restore, which spreads the stored cookie into options it keeps.
 */
export const LOADED = Symbol("connect-drizzle.loaded");

/**
 * On express-session's request, what its `regenerate` gave up: the session's owner and when that user last
 * authenticated, for the new session the app fills (see SessionStore's carriedSignIn).
 */
export const ROTATED = Symbol("connect-drizzle.rotated");
export interface Rotated {
  owner: string;
  at: SignIn | null;
}

/**
 * On the data of a session minted from another (`issueToken`): the sign-in it carries, from the session
 * that minted it when that session has the same user, else null. A session made from another is never a
 * fresh proof of identity: only a login or {@link SessionStore.markAuthenticated} is.
 */
export const MINTED = Symbol("connect-drizzle.minted");

/** When a user last authenticated: on this server's monotonic clock (Loaded's `authenticatedAt`) and exactly, on the database's. */
export interface SignIn {
  mono: number;
  db: number;
}

/** A session's row as read or last written: the skip decisions of touch and set, the version check, the cache. */
export interface Loaded {
  /** The session id it was read for (in memory only), so a touch can be skipped without hashing it again. */
  sid: string;
  /** The row's key (the first secret's, or an older one's for rows made before a rotation). */
  key: string;
  /** The session's public handle: stable for its life, whatever ids it is given (see rotation.ts). */
  handle: string;
  /**
   * When the row stops being live, on this server's clock (epoch ms): its idle expiry, capped by the
   * absolute one. Converted from the database's clock with the offset seen by the statement that read or
   * wrote it, so it errs early by at most that statement's round trip.
   */
  expires: number;
  /** The absolute expiry on this server's clock, or null when the session has none. */
  absolute: number | null;
  /** The stored data, as plain JSON text (opened, with `encrypt`). */
  text: string;
  /**
   * With `encrypt`: the row is not stored as a save would write it now (entries sealed under an older
   * secret, or in plaintext, or its cookie's tag), so the next write re-seals those entries, changed or
   * not, each only while the row still holds it as read.
   */
  stale?: readonly StaleEntry[];
  /** The row's version (read only with `versioned`; 0 otherwise). */
  version: number;
  /** The device the row records: a touch is not skipped when the request comes from another one. */
  ua: string | null;
  ip: string | null;
  /**
   * When the row's user last authenticated (`authenticated_at`), on the monotonic clock
   * (`performance.now()`), converted with the statement's send time (so it errs early, never late): a
   * wall clock stepped after the read (NTP, a resumed VM) never makes a cached sign-in look more recent.
   * Null when never.
   */
  authenticatedAt: number | null;
  /** `authenticated_at` exactly, epoch ms on the database's clock (what a rotation carries to the new id). */
  authenticatedDb: number | null;
  /**
   * When the session got the id it has now (its creation, or its latest rotation), on the monotonic clock
   * (converted as `authenticatedAt`): what `renewAfter` counts from.
   */
  issuedAt: number;
  /**
   * Read through the id the session was rotated away from, within its grace window: never cached, and
   * its response does not send that id again (see rotation.ts).
   */
  previous?: true;
  /**
   * Until when the cache may serve it, on the monotonic clock (`performance.now()`): its expiry, or its
   * cache `ttl` from when it was read or written, whichever comes first. Monotonic, so that this server's
   * wall clock being stepped (NTP, a resumed VM) can never stretch how long an entry is served.
   */
  servedUntil: number;
}

/**
 * What is attached to a session under LOADED: its {@link Loaded} state behind a private field, so that no
 * inspection of the session (console.log, util.inspect with showHidden or without custom inspection)
 * shows it, and with it the session's id.
 */
export class Mark {
  readonly #loaded: Loaded;
  constructor(loaded: Loaded) {
    this.#loaded = loaded;
  }
  static loaded(mark: unknown): Loaded | undefined {
    return mark instanceof Mark ? mark.#loaded : undefined;
  }
  [inspect.custom](): string {
    return "[connect-drizzle]";
  }
}

export function withLoaded<T extends object>(session: T, loaded: Loaded): T {
  const mark = new Mark(loaded);
  (session as any)[LOADED] = mark;
  const cookie = (session as any).cookie;
  if (cookie !== null && typeof cookie === "object") cookie[LOADED] = mark;
  return session;
}

/**
 * What the request that holds `session` read, if it read this very session: on the session itself
 * (express-session, and any session this store wrote), or carried in @fastify/session's cookie options.
 */
export function loadedAs(session: SessionData, sid: string): Loaded | undefined {
  const loaded = loadedUnderAnyId(session);
  return loaded?.sid === sid ? loaded : undefined;
}

/** What `get` attached to a session, whichever id it was read under. */
export function loadedUnderAnyId(session: unknown): Loaded | undefined {
  return Mark.loaded((session as any)?.[LOADED]) ?? kept(session, (value) => Mark.loaded(value[LOADED]));
}

/**
 * The first of the objects a session holds under symbol keys (other than LOADED) that `pick` takes:
 * @fastify/session keeps the request and the session's cookie options there, and nothing else links
 * its session to them. express-session's sessions have none, so this costs them nothing.
 */
function kept<T>(session: unknown, pick: (value: any) => T | undefined): T | undefined {
  if (session === null || typeof session !== "object") return undefined;
  for (const key of Object.getOwnPropertySymbols(session)) {
    const value = key === LOADED ? undefined : (session as any)[key];
    const found = value !== null && typeof value === "object" ? pick(value) : undefined;
    if (found !== undefined) return found;
  }
  return undefined;
}

/**
 * The request a session belongs to: express-session links it as `session.req`; @fastify/session keeps
 * it under a symbol (the fastify request: its headers and its `ip`).
 */
export function requestOf(session: SessionData): any {
  return (session as any)?.req ?? kept(session, (value) => (value.headers !== null && typeof value.headers === "object" && "ip" in value ? value : undefined));
}

/** When a loaded session's user last authenticated, on both clocks; null when never (or not known). */
export function signInOf(loaded: Loaded): SignIn | null {
  return loaded.authenticatedAt === null || loaded.authenticatedDb === null ? null : { mono: loaded.authenticatedAt, db: loaded.authenticatedDb };
}

/** User agent and client IP of the request a session belongs to (see {@link requestOf}). */
export function requestMetadata(session: SessionData): { ua: string | null; ip: string | null } {
  const req = requestOf(session);
  if (!req) return { ua: null, ip: null };
  const ua = req.headers?.["user-agent"];
  const address = req.ip ?? req.socket?.remoteAddress;
  // A dual-stack server sees IPv4 clients as ::ffff:a.b.c.d; record the address people know.
  const ip = typeof address === "string" ? address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, "").slice(0, 64) : null;
  return { ua: typeof ua === "string" ? ua.slice(0, 512) : null, ip };
}
