import type { SessionData } from "express-session";
import type { Loaded } from "./loaded.js";
import type { ExpiryRow } from "./statements.js";

/*
 * The session rules, without a database: when a session being saved expires, when a write of its expiry
 * buys nothing (the one rule that skips a touch, and a save that changed nothing), and how a row's
 * expiries, sent on the database's clock, become this server's.
 */

/** When a statement was sent, on this server's wall clock (lifetimes) and on the monotonic one (the cache). */
export interface Sent {
  wall: number;
  mono: number;
}

/** Now, on both of this server's clocks, as a statement is about to be sent. */
export function sentAt(now: number): Sent {
  return { wall: now, mono: performance.now() };
}

/** The most an expiry can seem earlier than stored through clock conversion alone, ms (see {@link isFresh}). */
export const CLOCK_ERROR = 1_000;

/** What decides a session's lifetime: the store's `ttl`, `idleTimeout` and `touchAfter`. */
export interface Lifetimes {
  ttl: number;
  idleTimeout: number | undefined;
  touchAfter: number;
}

/** When a session being saved should expire, on this server's clock: its cookie's expiry, capped by `idleTimeout`. */
export function expiryOf(session: SessionData, now: number, { ttl, idleTimeout }: Lifetimes): number {
  const cookieExpires = (session as any)?.cookie?.expires;
  const at = cookieExpires == null ? NaN : new Date(cookieExpires).getTime();
  const expires = Number.isFinite(at) ? at : now + ttl;
  return idleTimeout === undefined ? expires : Math.min(expires, now + idleTimeout);
}

/**
 * Whether writing the new expiry again buys nothing: it is later than the stored one by less than
 * `touchAfter` (or a tenth of the lifetime left). An earlier expiry is always written (a route that
 * shortened the session must get it), unless it is earlier by less than the error of comparing this
 * server's clock with the database's (the latency of the write that stored it and the read that loaded
 * it), counted as one second at most.
 */
export function isFresh(seen: Pick<Loaded, "expires" | "absolute">, target: number, now: number, touchAfter: number): boolean {
  const next = seen.absolute === null ? target : Math.min(target, seen.absolute);
  const threshold = Math.min(touchAfter, Math.max(0, next - now) / 10);
  const later = next - seen.expires;
  return later > -Math.min(CLOCK_ERROR, threshold) && later < threshold;
}

/** Whether a request comes from the device a row records (a device not known on either side counts as the same). */
export function sameDevice(loaded: Loaded, ua: string | null, ip: string | null): boolean {
  return (ua === null || ua === loaded.ua) && (ip === null || ip === loaded.ip);
}

/**
 * The one rule that skips a write: a touch (or a save that changed nothing, which is a touch) writes
 * nothing when the request read this very session, comes from the device its row records, and the new
 * expiry is {@link isFresh}. A row to re-seal (`encrypt`) is rewritten by the first write that happens
 * anyway, never by one this rule skips.
 */
export function skipsWrite(
  loaded: Loaded | undefined,
  device: { ua: string | null; ip: string | null },
  target: number,
  now: number,
  touchAfter: number,
): boolean {
  return loaded !== undefined && sameDevice(loaded, device.ua, device.ip) && isFresh(loaded, target, now, touchAfter);
}

/**
 * A row's expiries on this server's clocks. `sent` is when the statement was sent: the database's now
 * came later, so the conversion errs early (a cached session stops being served a round trip sooner).
 * `cacheTtl` caps how long the cache may serve it.
 */
export function localExpiry(
  row: ExpiryRow,
  sent: Sent,
  cacheTtl: number,
): Pick<Loaded, "expires" | "absolute" | "authenticatedAt" | "authenticatedDb" | "issuedAt" | "servedUntil"> {
  const left = Number(row.expires);
  return {
    expires: sent.wall + left,
    absolute: row.absolute === null || row.absolute === undefined ? null : sent.wall + Number(row.absolute),
    authenticatedAt: row.authenticated === null || row.authenticated === undefined ? null : sent.mono + Number(row.authenticated),
    authenticatedDb: row.authenticated_at === null || row.authenticated_at === undefined ? null : Number(row.authenticated_at),
    issuedAt: sent.mono + Number(row.issued ?? 0),
    servedUntil: sent.mono + Math.min(left, cacheTtl),
  };
}
