import type { SessionData } from "express-session";
import { SessionStoreError } from "./errors.js";

/** The session as JSON text for the `data` column, or a clear error; nothing is written on failure. */
export function serialize(session: SessionData, maxSize: number): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(session);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new SessionStoreError(
      "UNSERIALIZABLE",
      `session data cannot be saved as JSON (${reason}); keep only plain data (no cycles, BigInt or class instances) in req.session`,
      { cause: error },
    );
  }
  if (text === undefined || !text.startsWith("{")) {
    throw new SessionStoreError("UNSERIALIZABLE", "a session must be an object to be saved");
  }
  if (jsonbRefuses(text)) {
    throw new SessionStoreError(
      "UNSERIALIZABLE",
      "session data holds a NUL character (\\u0000) or a lone surrogate, which PostgreSQL jsonb cannot store; remove or encode it",
    );
  }
  const size = Buffer.byteLength(text, "utf8");
  if (size > maxSize) {
    throw new SessionStoreError(
      "TOO_LARGE",
      `session data is ${size} bytes, over the store's maxSize of ${maxSize}; keep large data in your own tables or raise maxSize`,
    );
  }
  return text;
}

/** An escaped NUL or surrogate in JSON text (an escaped backslash before it is no escape). */
const REFUSED_ESCAPE = /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i;

/** A NUL or a lone surrogate (with the `u` flag, half of a pair is never matched on its own). */
const REFUSED_CHARACTER = /\0|[\ud800-\udfff]/u;

/**
 * Whether JSON text holds a string PostgreSQL jsonb refuses: one with a NUL character (\u0000) or a lone
 * surrogate, which JSON can hold only as escapes (JSON.stringify escapes lone surrogates; a `json` column
 * keeps them).
 */
export function jsonbRefuses(text: string): boolean {
  if (!text.includes("\\u") || !REFUSED_ESCAPE.test(text)) return false;
  // An escaped surrogate pair is one character, which jsonb takes: JSON.stringify never writes one, but
  // another writer of connect-pg-simple's `json` column may, so the strings decide.
  try {
    return !storable(JSON.parse(text));
  } catch {
    // Not JSON, or nested too deeply to walk: as refused as the escape found says.
    return true;
  }
}

function storable(value: unknown): boolean {
  if (typeof value === "string") return !REFUSED_CHARACTER.test(value);
  if (value === null || typeof value !== "object") return true;
  if (Array.isArray(value)) return value.every(storable);
  return Object.entries(value).every(([key, item]) => !REFUSED_CHARACTER.test(key) && storable(item));
}

/** A session read from the `data` column, or `null` when the row does not hold one express-session can load. */
export function parseSession(text: string): SessionData | null {
  let value: any;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  return isSession(value) ? value : null;
}

/** Whether a value read from the `data` column is a session express-session can load (an object with a valid cookie). */
export function isSession(value: any): value is SessionData {
  return value !== null && typeof value === "object" && !Array.isArray(value) && validCookie(value.cookie);
}

/** What `cookie.serialize` accepts for Domain and Path (RFC 6265 4.1.1), as express-session's cookie module checks them. */
const DOMAIN = /^([.]?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)([.][a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i;
const PATH = /^[\u0020-\u003A\u003D-\u007E]*$/;

const absent = (v: unknown) => v === undefined || v === null;

/**
 * Whether a stored cookie is one express-session can rebuild, touch and send without throwing. A row
 * that fails (say `originalMaxAge: "x"`, which makes express-session's touch throw after the route ran,
 * leaving the request without a response) is treated as missing, like any corrupt row.
 */
function validCookie(cookie: any): boolean {
  if (cookie === null || typeof cookie !== "object" || Array.isArray(cookie)) return false;
  const { originalMaxAge, maxAge, expires, domain, path, sameSite, priority } = cookie;
  if (!absent(originalMaxAge) && !(typeof originalMaxAge === "number" && Number.isFinite(originalMaxAge))) return false;
  if (!absent(maxAge) && !(typeof maxAge === "number" && Number.isFinite(maxAge))) return false;
  if (!absent(expires) && !(typeof expires === "string" && Number.isFinite(Date.parse(expires)))) return false;
  if (!absent(domain) && domain !== "" && !(typeof domain === "string" && DOMAIN.test(domain))) return false;
  if (!absent(path) && !(typeof path === "string" && PATH.test(path))) return false;
  if (!absent(sameSite) && typeof sameSite !== "boolean" && !(typeof sameSite === "string" && /^(lax|strict|none)$/i.test(sameSite))) return false;
  if (!absent(priority) && !(typeof priority === "string" && /^(low|medium|high)$/i.test(priority))) return false;
  return true;
}

/**
 * What a save changes in a session over what its request read, by top-level key: the unit a save of a
 * loaded session writes (two requests changing different keys of one session both keep their change).
 */
export interface SessionChanges {
  /** The keys the request set or changed, with their new values, and always `cookie` (it carries the expiry). */
  patch: Record<string, unknown>;
  /** The keys the request read and deleted. */
  removed: string[];
  /** Whether nothing changed but the cookie's expiry: then only a stale expiry or a new device is worth a write. */
  unchanged: boolean;
  /** What the request read, parsed (its owner decides whether this save signs a user in). */
  before: Record<string, unknown>;
}

/**
 * The changes from `stored` (what the request read) to `next` (what it saves), both serialized sessions.
 * Values are compared deeply, ignoring key order (jsonb reorders keys); in the cookie, its expiry (it
 * moves on every request) and @fastify/session's `originalExpires` (its copy of the stored expiry, never
 * read back from the row) are not changes, nor is `originalMaxAge` moving by clock jitter. `undefined`
 * when `stored` is not an object (nothing to patch).
 */
export function changesOf(stored: string, next: string): SessionChanges | undefined {
  const before = asObject(JSON.parse(stored));
  const after = asObject(JSON.parse(next));
  if (!before || !after) return undefined;
  // A null prototype: a key named __proto__ is data here, not the object's prototype.
  const patch: Record<string, unknown> = Object.create(null);
  let unchanged = true;
  for (const key of Object.keys(after)) {
    const value = after[key];
    const same = Object.hasOwn(before, key) && (key === "cookie" ? sameCookie(before[key], value) : equal(before[key], value));
    if (same && key !== "cookie") continue;
    patch[key] = value;
    if (!same) unchanged = false;
  }
  const removed = Object.keys(before).filter((key) => !Object.hasOwn(after, key));
  return { patch, removed, unchanged: unchanged && removed.length === 0, before };
}

function asObject(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}

function sameCookie(a: unknown, b: unknown): boolean {
  const strip = (cookie: unknown) => {
    if (!asObject(cookie)) return cookie;
    const { expires: _expires, originalExpires: _originalExpires, originalMaxAge: _originalMaxAge, ...rest } = cookie as Record<string, unknown>;
    return rest;
  };
  return equal(strip(a), strip(b)) && sameMaxAge(asObject(a)?.originalMaxAge, asObject(b)?.originalMaxAge);
}

/**
 * express-session recomputes `originalMaxAge` from the clock on every touch (`expires - Date.now()`, read a
 * moment after `expires` was set), so an unchanged cookie reads a few milliseconds short now and then. A
 * move under 1% of the value and under a second is that jitter; a new maxAge (remember-me, a shorter life
 * after sign-in) moves it by more.
 */
function sameMaxAge(a: unknown, b: unknown): boolean {
  if (typeof a !== "number" || typeof b !== "number") return equal(a, b);
  return Math.abs(a - b) < Math.min(1_000, Math.max(Math.abs(a), Math.abs(b)) / 100);
}

/** Deep equality of JSON values; a value too deeply nested to compare counts as changed (and is written). */
function equal(a: unknown, b: unknown): boolean {
  try {
    return deepEqual(a, b);
  } catch {
    return false;
  }
}

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && deepEqual((a as any)[k], (b as any)[k]));
}
