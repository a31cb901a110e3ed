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
  // JSON.stringify escapes lone surrogates (\udXXX), which jsonb refuses like NUL (\u0000): say so up front.
  if (text.includes("\\u") && /(?<!\\)(?:\\\\)*\\u(?:0000|d[89a-f][0-9a-f]{2})/i.test(text)) {
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
 * Whether two serialized sessions hold the same data, ignoring the cookie's expiry (it moves on every
 * request), @fastify/session's `originalExpires` (its copy of the stored expiry, never read back from
 * the row) and key order (jsonb reorders keys).
 */
export function sameContent(stored: string, next: string): boolean {
  try {
    const a = JSON.parse(stored);
    const b = JSON.parse(next);
    for (const cookie of [a?.cookie, b?.cookie]) {
      if (!cookie) continue;
      delete cookie.expires;
      delete cookie.originalExpires;
    }
    return deepEqual(a, b);
  } catch {
    // Too deeply nested to compare: treat as changed and write it.
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
  return ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && deepEqual((a as any)[k], (b as any)[k]));
}
