import type { SessionData } from "express-session";
import { describe, expect, it } from "vitest";
import { CLOCK_ERROR, expiryOf, isFresh, localExpiry, sameDevice, skipsWrite, type Loaded } from "./support/internals.js";

/**
 * The session rules on their own, with no database: when a session expires, when a touch or an unchanged
 * save writes nothing, and how a row's expiries come back on this server's clocks.
 */

const NOW = 1_700_000_000_000;
const MIN = 60_000;
const lifetimes = { ttl: 24 * 60 * MIN, idleTimeout: undefined, touchAfter: 60_000 };

const read = (over: Partial<Loaded> = {}): Loaded => ({
  sid: "sid",
  key: "key",
  handle: "handle",
  expires: NOW + 30 * MIN,
  absolute: null,
  text: "{}",
  version: 0,
  ua: "Firefox",
  ip: "203.0.113.9",
  authenticatedAt: null,
  authenticatedDb: null,
  issuedAt: 0,
  servedUntil: 0,
  ...over,
});

const withCookie = (expires?: number): SessionData =>
  ({ cookie: { originalMaxAge: null, expires: expires === undefined ? undefined : new Date(expires) } }) as any;

describe("when a session expires", () => {
  it("at its cookie's expiry; without one, ttl from now", () => {
    expect(expiryOf(withCookie(NOW + 5 * MIN), NOW, lifetimes)).toBe(NOW + 5 * MIN);
    expect(expiryOf(withCookie(), NOW, lifetimes)).toBe(NOW + lifetimes.ttl);
    expect(expiryOf({} as SessionData, NOW, lifetimes)).toBe(NOW + lifetimes.ttl);
  });

  it("never later than idleTimeout from now, whatever its cookie says", () => {
    const idle = { ...lifetimes, idleTimeout: 10 * MIN };
    expect(expiryOf(withCookie(NOW + 60 * MIN), NOW, idle)).toBe(NOW + 10 * MIN);
    expect(expiryOf(withCookie(NOW + 5 * MIN), NOW, idle)).toBe(NOW + 5 * MIN);
    expect(expiryOf(withCookie(), NOW, idle)).toBe(NOW + 10 * MIN);
  });
});

describe("when a write of the expiry buys nothing (the one skip rule)", () => {
  it("a later expiry is written only once it gains touchAfter, or a tenth of the time left when that is less", () => {
    const seen = read({ expires: NOW + 30 * MIN });
    expect(isFresh(seen, NOW + 30 * MIN + 59_000, NOW, 60_000)).toBe(true);
    expect(isFresh(seen, NOW + 30 * MIN + 60_000, NOW, 60_000)).toBe(false);
    // About five minutes left: a tenth of that (about 33 s) is the threshold, not touchAfter.
    const short = read({ expires: NOW + 5 * MIN });
    expect(isFresh(short, NOW + 5 * MIN + 29_000, NOW, 60_000)).toBe(true);
    expect(isFresh(short, NOW + 5 * MIN + 40_000, NOW, 60_000)).toBe(false);
  });

  it("an earlier expiry is always written (a route that shortened the session gets it), unless within the clocks' error", () => {
    const seen = read({ expires: NOW + 30 * MIN });
    expect(isFresh(seen, NOW + 30 * MIN - CLOCK_ERROR / 2, NOW, 60_000)).toBe(true);
    expect(isFresh(seen, NOW + 30 * MIN - CLOCK_ERROR - 1, NOW, 60_000)).toBe(false);
    expect(isFresh(seen, NOW + 1 * MIN, NOW, 60_000)).toBe(false);
  });

  it("past the absolute expiry nothing extends: a touch there is skipped, not written again and again", () => {
    const capped = read({ expires: NOW + 10 * MIN, absolute: NOW + 10 * MIN });
    expect(isFresh(capped, NOW + 30 * MIN, NOW, 60_000)).toBe(true);
  });

  it("a request from another device writes (its row records the device); a device not known on either side counts as the same", () => {
    expect(sameDevice(read(), "Firefox", "203.0.113.9")).toBe(true);
    expect(sameDevice(read(), null, null)).toBe(true);
    expect(sameDevice(read(), "Chrome", "203.0.113.9")).toBe(false);
    expect(sameDevice(read(), "Firefox", "198.51.100.1")).toBe(false);
    const target = NOW + 30 * MIN;
    expect(skipsWrite(read(), { ua: "Firefox", ip: "203.0.113.9" }, target, NOW, 60_000)).toBe(true);
    expect(skipsWrite(read(), { ua: "Chrome", ip: "203.0.113.9" }, target, NOW, 60_000)).toBe(false);
  });

  it("a session the request did not read is never skipped: the store cannot know what its row holds", () => {
    expect(skipsWrite(undefined, { ua: null, ip: null }, NOW + 30 * MIN, NOW, 60_000)).toBe(false);
  });
});

describe("a row's expiries on this server's clocks", () => {
  it("count from when the statement was sent, so they err early, never late; the cache serves no longer than its ttl", () => {
    const sent = { wall: NOW, mono: 5_000 };
    const row = { expires: 30 * MIN, absolute: 60 * MIN, authenticated: -2_000, authenticated_at: NOW - 2_000 };
    expect(localExpiry(row, sent, 10_000)).toEqual({
      expires: NOW + 30 * MIN,
      absolute: NOW + 60 * MIN,
      authenticatedAt: 3_000,
      authenticatedDb: NOW - 2_000,
      issuedAt: 5_000,
      servedUntil: 15_000,
    });
    expect(localExpiry({ expires: 1_000, absolute: null }, sent, Infinity)).toMatchObject({ absolute: null, authenticatedAt: null, servedUntil: 6_000 });
  });
});
