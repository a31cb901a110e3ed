import { createHmac } from "node:crypto";

/*
 * The signed session id in express-session's cookie (cookie-signature's format, `s:<id>.<hmac>`): signing
 * it as express-session does, and verifying it as express-session does.
 */

/** Signs an id the way express-session signs its cookie (cookie-signature), so express-session verifies it. */
export function sign(value: string, secret: string): string {
  return `${value}.${createHmac("sha256", secret).update(value).digest("base64").replace(/=+$/, "")}`;
}

/**
 * The session id in an express-session cookie, verified as express-session verifies it (the counterpart of
 * {@link sign}): `unsigned` when the value is not a signed one (it starts with s: or s%3A), `bad signature`
 * when none of `secrets` signed it. Takes the value as copied from a browser's devtools (URL-encoded), or
 * with its name ("connect.sid=s%3A...").
 */
export function unsign(cookie: string, secrets: readonly string[]): { sid: string } | { refused: "unsigned" | "bad signature" } {
  let value = cookie.trim().replace(/^[^=;]+=(?=s(:|%3A))/i, "");
  try {
    value = decodeURIComponent(value);
  } catch {}
  const sid = value.startsWith("s:") ? value.slice(2, value.lastIndexOf(".")) : undefined;
  if (sid === undefined) return { refused: "unsigned" };
  if (!secrets.some((secret) => `s:${sign(sid, secret)}` === value)) return { refused: "bad signature" };
  return { sid };
}
