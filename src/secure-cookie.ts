import type { IncomingMessage } from "node:http";
import type { CookieOptions } from "express-session";
import { is, kindOf, numberOption, type OptionCheck, type OptionChecks } from "./check.js";

/*
 * The session cookie's attributes for sessionMiddleware (middleware.ts): the secure defaults, the checks of
 * what the app gives, and what browsers or proxies would silently undo (a rejected cookie prefix, an
 * untrusted https proxy).
 */

/** One of `values` (strings compared in any case, as the cookie serializer does), or a boolean when `booleans`. */
const cookieChoice =
  (values: readonly string[], booleans: boolean): OptionCheck =>
  (options, name) => {
    const value = options[name];
    if (booleans && typeof value === "boolean") return;
    if (typeof value !== "string" || !values.includes(value.toLowerCase())) {
      const allowed = [...(booleans ? ["true", "false"] : []), ...values.map((v) => `"${v}"`)].join(", ");
      throw new TypeError(`connect-drizzle: \`${name}\` must be one of ${allowed} (got ${kindOf(value)})`);
    }
  };

/** Every cookie attribute of express-session's CookieOptions with its check: a misspelt one would be dropped. */
export const COOKIE_OPTIONS: OptionChecks<CookieOptions> = {
  // null: a browser-session cookie (express-session's own meaning).
  maxAge: (options, name) => void (options[name] === null || numberOption(options, name, 0)),
  partitioned: is.boolean,
  priority: cookieChoice(["low", "medium", "high"], false),
  signed: is.boolean,
  expires: (options, name) => {
    const value = options[name];
    if (value !== null && !(value instanceof Date && Number.isFinite(value.getTime()))) {
      throw new TypeError(`connect-drizzle: \`${name}\` must be a valid Date, or null (got ${kindOf(value)}); prefer maxAge`);
    }
  },
  httpOnly: is.boolean,
  path: is.name('path such as "/"'),
  domain: is.name('domain such as "example.com"'),
  secure: (options, name) => {
    const value = options[name];
    // express-session compares "auto" as it is; any other string would read as Secure.
    if (typeof value !== "boolean" && value !== "auto") {
      throw new TypeError(`connect-drizzle: \`${name}\` must be one of true, false, "auto" (got ${kindOf(value)})`);
    }
  },
  encode: is.function("(value) => string"),
  sameSite: cookieChoice(["lax", "strict", "none"], true),
};

/**
 * The cookie's attributes: the app's `cookie` merged over the secure defaults (httpOnly, Secure in
 * production and "auto" elsewhere, SameSite=Lax, path "/", a day's maxAge).
 */
export function cookieAttributes(cookie: CookieOptions | false | undefined, production: boolean): CookieOptions {
  return {
    httpOnly: true,
    secure: production ? true : "auto",
    sameSite: "lax",
    path: "/",
    maxAge: 86_400_000,
    ...(cookie || {}),
  };
}

/**
 * Refuses a cookie name whose prefix browsers would reject with these attributes: they drop such a
 * Set-Cookie without a word, so every session would be lost. `__Secure-` needs Secure; `__Host-` needs
 * Secure, path "/" and no Domain.
 * @param defaulted whether the name is our production default rather than the app's
 */
export function checkCookiePrefix(name: string, defaulted: boolean, cookie: CookieOptions): void {
  const prefix = name.startsWith("__Host-") ? "__Host-" : name.startsWith("__Secure-") ? "__Secure-" : undefined;
  if (prefix === undefined) return;
  const source = defaulted ? `the production default name \`${name}\`` : `the name \`${name}\``;
  const rename = prefix === "__Host-" ? "or set a `name` without `__Host-` (e.g. `__Secure-sid`, which allows both)" : "or a `name` without it";
  if (prefix === "__Host-" && cookie.domain !== undefined) {
    throw new TypeError(
      `connect-drizzle: browsers reject a \`__Host-\` cookie with a Domain, and ${source} has \`cookie.domain: ${JSON.stringify(cookie.domain)}\`; ` +
        `drop \`cookie.domain\` (the cookie then goes to this host only), ${rename}`,
    );
  }
  if (prefix === "__Host-" && (cookie.path ?? "/") !== "/") {
    throw new TypeError(
      `connect-drizzle: browsers reject a \`__Host-\` cookie whose Path is not "/", and ${source} has \`cookie.path: ${JSON.stringify(cookie.path)}\`; ` +
        `drop \`cookie.path\`, ${rename}`,
    );
  }
  if (!cookie.secure) {
    throw new TypeError(
      `connect-drizzle: browsers reject a \`${prefix}\` cookie without Secure, and ${source} has \`cookie.secure: ${String(cookie.secure)}\`; ` +
        `remove \`cookie.secure: false\` (the default is Secure in production, "auto" elsewhere), or use a \`name\` without \`${prefix}\``,
    );
  }
}

/**
 * Watches for the classic proxy trap: TLS ends at a proxy, Express does not trust it, so `req.secure` is
 * false and express-session silently sends no Secure cookie (`secure: true`) or sends it without Secure
 * (`"auto"`). Warns once, on the first request that came through an https proxy unrecognised.
 */
export function trustProxyTrap(secure: true | "auto"): (req: IncomingMessage) => void {
  let warned = false;
  return (req) => {
    if (warned || (req.socket as { encrypted?: boolean }).encrypted) return;
    const forwarded = req.headers["x-forwarded-proto"];
    const proto = (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(",", 1)[0]?.trim().toLowerCase();
    if (proto !== "https" || (req as { secure?: boolean }).secure === true) return;
    warned = true;
    const effect =
      secure === true
        ? "sends no session cookie at all (`cookie.secure: true` needs req.secure), so every request starts a new session"
        : 'sends the session cookie without Secure (`cookie.secure: "auto"` follows req.secure)';
    process.emitWarning(
      "connect-drizzle: a request came through an https proxy (X-Forwarded-Proto: https), but Express does not trust " +
        `that proxy, so req.secure is false and express-session ${effect}; set \`app.set("trust proxy", 1)\` for one ` +
        "proxy hop (or the proxy's address), before the session middleware",
      { code: "CONNECT_DRIZZLE_TRUST_PROXY" },
    );
  };
}
