import { randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import session, { type CookieOptions, type SessionData, type SessionOptions } from "express-session";
import { checkOptions, is, kindOf, type OptionCheck, type OptionChecks } from "./check.js";
import { type ClearSiteDataDirective, clearOnSignOut, clearSiteDataOption, clearSiteDataValue } from "./clear-site-data.js";
import { sign } from "./cookie-signing.js";
import { exposeHeader, onHeaders, routeMatcher, takeSessionCookie, tokenOf, withoutCookie } from "./header-transport.js";
import { secretList } from "./options.js";
import { checkCookiePrefix, COOKIE_OPTIONS, cookieAttributes, trustProxyTrap } from "./secure-cookie.js";
import { SessionStore } from "./store.js";

// The cookie attributes' checks live with the cookie's defaults; tests reach them here.
export { COOKIE_OPTIONS } from "./secure-cookie.js";

/** Options of {@link sessionMiddleware}: express-session's options with secure defaults, plus header transport. */
export interface SessionMiddlewareOptions extends Omit<SessionOptions, "store" | "secret" | "cookie"> {
  /** The store; required. */
  store: SessionStore;
  /**
   * Secret(s) that sign the session id in the cookie and in header tokens; the first signs, all verify.
   * Required when NODE_ENV is "production" (a missing one throws at startup); elsewhere a random
   * per-process secret is used with a warning (sessions then end when the process restarts).
   * @default none: required in production, a random per-process secret elsewhere
   */
  secret?: string | string[];
  /**
   * Cookie attributes, merged over the defaults; `false` turns cookie transport off (header only).
   * @default { httpOnly: true, secure: true in production else "auto", sameSite: "lax", path: "/", maxAge: 86_400_000 }
   */
  cookie?: CookieOptions | false;
  /**
   * Cookie name. Browsers reject a `__Host-` cookie unless it is Secure, on path "/", with no Domain, and a
   * `__Secure-` one unless it is Secure: such a combination (the production default with `cookie.domain`,
   * say) is a TypeError at startup rather than sessions that are silently lost.
   * @default "__Host-sid" in production, "sid" elsewhere
   */
  name?: string;
  /**
   * Carry sessions in a request header for API clients: `"authorization"` reads `Authorization: Bearer <token>`,
   * any other name reads the raw token from that header. A request that sends the header, with any value, is a
   * header request: our session cookie is left out of it (its other cookies stay), so it is never answered
   * with the cookie's session, and it gets no session cookie back (a new token comes in `responseHeader`).
   * A malformed value (another scheme, no token or more than one, over 512 characters) counts as no session
   * id, like an unknown or forged token: the request gets a fresh, uninitialized session. So behind HTTP Basic
   * authentication (a staging proxy that forwards `Authorization`) `"authorization"` ends browsers' cookie
   * sessions: name a header of your own there.
   * @default false (cookie only)
   */
  header?: string | false;
  /**
   * The routes that take the `header` transport: path prefixes (`["/api"]` takes `/api` and `/api/...`,
   * compared as sent, case included), a function of the request, or `"all"`. On any other route the header
   * is ignored, as if not sent: the request gets its cookie's session, or none, so an API token cannot
   * drive the browser pages (read their CSRF token, revoke devices, mint tokens). Required when both
   * transports are on (a TypeError at startup without it); with `cookie: false` every route takes it.
   * @default none with cookie transport on (required); "all" with `cookie: false`
   */
  headerRoutes?: readonly string[] | ((req: IncomingMessage) => boolean) | "all";
  /**
   * Response header that carries the token when a header-transport session is created or rotated (and
   * for every new session when cookie transport is off). Added to `Access-Control-Expose-Headers` when
   * the response is a CORS one. Such a response is sent with `Cache-Control: no-store`, replacing the app's.
   * @default "X-Session-Token" for `header: "authorization"`, else the `header` name
   */
  responseHeader?: string;
  /**
   * Send `Clear-Site-Data` with the response to a logout, so the browser drops what the signed-out session
   * left behind: `true` sends `"cookies", "storage"`, a list sends those directives. A logout is a request
   * whose session was destroyed (`req.session.destroy()`, or unset) or regenerated into one without a user
   * (passport's `req.logout`); a login's regenerate never sends it, as it would clear the new session's
   * cookie. Only cookie-transport requests get it: a header-transport (API) request ends only its token's
   * session, and the header would clear the browser's cookie session with it. Sent only while the response's
   * headers are not yet written. Trade-offs: `"cookies"` clears every cookie of the registrable domain
   * (sibling subdomains' apps, a CSRF cookie, and may take one this response sets), `"storage"` clears
   * localStorage, IndexedDB and service workers (an app's offline data), `"cache"` the HTTP cache,
   * `"executionContexts"` reloads the site's open tabs, `"*"` all of them; browsers honour it only on secure
   * origins (https, and localhost). A TypeError with `cookie: false`, where no request could get it.
   * @default false
   */
  clearSiteData?: boolean | readonly ClearSiteDataDirective[];
  /**
   * Re-send the cookie (sliding its expiry) on every response: the idle timeout.
   * @default true
   */
  rolling?: boolean;
  /** @default false */
  resave?: boolean;
  /** @default false */
  saveUninitialized?: boolean;
}

/** A token minted by {@link SessionMiddleware.issueToken}. */
export interface IssuedToken {
  /** What the client sends as `Authorization: Bearer <token>` (or in the configured header). */
  token: string;
  /** The session's public handle, as in `store.list()`. */
  handle: string;
  expiresAt: Date;
}

/** The middleware, with a way to mint API tokens for the same store. */
export interface SessionMiddleware {
  (req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void): void;
  readonly store: SessionStore;
  /**
   * Creates a session outside a request and returns its token for header transport (show it once: only
   * a hash of it is stored), with the session's public handle (to list, label or revoke it) and expiry.
   * Use it for "create API token" on a devices page.
   *
   * A token is never a fresh sign-in: it passes `store.requireRecentLogin` only as long as the session it
   * was minted `from` would (it keeps that session's sign-in time), and never without `from`. So a token
   * cannot mint a token that passes where its owner's password is asked. And a session that ended while
   * its request was minting (revoked from another device) mints nothing: the call fails with a
   * `REAUTHENTICATION_REQUIRED` error (status 401) and no token exists.
   * @param data what the session holds, e.g. `{ passport: { user: id }, label: "CLI" }`
   * @param options.maxAge lifetime in ms; defaults to the cookie maxAge
   * @param options.from the session minting it (`req.session`): the token keeps its sign-in time when it has
   *   the same user. Default: none, so the token has no sign-in time
   */
  issueToken(data: Partial<SessionData> & Record<string, unknown>, options?: { maxAge?: number; from?: unknown }): Promise<IssuedToken>;
}

/** A header name, as `header` and `responseHeader` take it. */
const headerName: OptionCheck = (options, name) => {
  const value = options[name];
  if (typeof value !== "string" || !/^[A-Za-z0-9-]+$/.test(value)) {
    throw new TypeError(`connect-drizzle: \`${name}\` must be a header name such as "authorization" or "x-session-token" (got ${kindOf(value)})`);
  }
};

/**
 * Every option of {@link SessionMiddlewareOptions} with its check: ours and express-session's (`genid`,
 * `proxy`, `unset`, ...). The compiler keeps it complete; a key not in it is refused.
 */
export const MIDDLEWARE_OPTIONS: OptionChecks<SessionMiddlewareOptions> = {
  // Required, so checked before the table.
  store: is.own,
  secret: secretList,
  cookie: (options, name) => {
    const cookie = options[name];
    if (cookie === false) return;
    is.object("{ maxAge: 86_400_000 }", true)(options, name);
    checkOptions(cookie as object, COOKIE_OPTIONS, "`cookie`", "cookie.");
  },
  name: is.name("cookie name"),
  header: (options, name) => void (options[name] === false || headerName(options, name)),
  headerRoutes: (options, name) => {
    const value = options[name];
    if (value === "all" || typeof value === "function") return;
    if (!Array.isArray(value) || value.length === 0 || !value.every((p) => typeof p === "string" && p.startsWith("/"))) {
      throw new TypeError(
        `connect-drizzle: \`${name}\` must be a list of path prefixes such as ["/api"], a function (req) => boolean, or "all" (got ${kindOf(value)})`,
      );
    }
  },
  responseHeader: headerName,
  clearSiteData: clearSiteDataOption,
  rolling: is.boolean,
  resave: is.boolean,
  saveUninitialized: is.boolean,
  genid: is.function("(req) => string"),
  proxy: is.boolean,
  unset: is.oneOf(["destroy", "keep"]),
};

const DEV_SECRET = randomBytes(32).toString("base64url");

/**
 * express-session with connect-drizzle and secure defaults in one line: httpOnly, Secure in production,
 * SameSite=Lax, a non-default name, rolling idle expiry; plus optional header transport for API clients.
 * The store records each session's user agent and IP (honouring Express's `trust proxy`) by itself.
 *
 * Behind an https proxy that Express does not trust (`app.set("trust proxy", ...)` unset), express-session
 * silently drops Secure cookies; the first such request is warned about once (`process.emitWarning`, code
 * `CONNECT_DRIZZLE_TRUST_PROXY`).
 *
 * @example
 * app.use(sessionMiddleware({ store, secret: process.env.SESSION_SECRET, header: "authorization", headerRoutes: ["/api"] }));
 * @throws TypeError for an unknown option or one of the wrong type (a `cookie` attribute included), a missing
 * secret in production, no transport, or a cookie name and attributes that browsers would reject
 */
export function sessionMiddleware(options: SessionMiddlewareOptions): SessionMiddleware {
  if (!options || !(options.store instanceof SessionStore)) {
    throw new TypeError("connect-drizzle: sessionMiddleware needs { store: new SessionStore({ db }) }");
  }
  checkOptions(options, MIDDLEWARE_OPTIONS, "sessionMiddleware");
  const production = process.env.NODE_ENV === "production";
  const { store, header = false, headerRoutes, cookie, secret: givenSecret, responseHeader: givenResponseHeader, clearSiteData, ...rest } = options;
  const secrets = givenSecret === undefined ? [] : Array.isArray(givenSecret) ? givenSecret : [givenSecret];
  if (secrets.length === 0) {
    if (production || givenSecret !== undefined) {
      throw new TypeError(
        "connect-drizzle: sessionMiddleware needs a `secret` (a long random string, e.g. from process.env.SESSION_SECRET); " +
          "it is required when NODE_ENV is production",
      );
    }
    console.warn("connect-drizzle: no session secret given; using a random one, so sessions end when this process restarts");
    secrets.push(DEV_SECRET);
  }
  if (cookie === false && header === false) {
    throw new TypeError("connect-drizzle: with `cookie: false` set a `header`, or sessions have no transport");
  }
  if (header !== false && cookie !== false && headerRoutes === undefined) {
    throw new TypeError(
      'connect-drizzle: with both cookie and `header` transport, say which routes take the header, e.g. `headerRoutes: ["/api"]` ' +
        '(path prefixes), a function of the request, or "all": otherwise a token sent to a browser page is that page\'s session',
    );
  }
  if (header === false && headerRoutes !== undefined) {
    throw new TypeError(
      "connect-drizzle: `headerRoutes` says which routes take the `header` transport, and no `header` is set; set `header`, or remove `headerRoutes`",
    );
  }
  const clearValue = clearSiteDataValue(clearSiteData);
  if (clearValue !== undefined && cookie === false) {
    throw new TypeError(
      "connect-drizzle: `clearSiteData` clears a browser's data when its cookie session ends, and `cookie: false` leaves no cookie sessions " +
        "(header-transport requests never get it); remove `clearSiteData`",
    );
  }
  const takesHeader = routeMatcher(headerRoutes ?? "all");
  const headerName = header === false ? undefined : header.toLowerCase();
  const bearer = headerName === "authorization";
  const responseHeader = givenResponseHeader ?? (bearer ? "X-Session-Token" : header || undefined);
  const name = rest.name ?? (production ? "__Host-sid" : "sid");
  const cookieOptions = cookieAttributes(cookie, production);
  const cookieTransport = cookie !== false;
  if (cookieTransport) checkCookiePrefix(name, rest.name === undefined, cookieOptions);
  const proxyTrap = cookieTransport && rest.proxy !== true && cookieOptions.secure ? trustProxyTrap(cookieOptions.secure) : undefined;

  const rotation = store.rotation();
  const inner = session({
    resave: false,
    saveUninitialized: false,
    rolling: true,
    ...rest,
    name,
    store,
    secret: secrets,
    cookie: cookieOptions,
  });

  const middleware = ((req: IncomingMessage, res: ServerResponse, next: (err?: unknown) => void) => {
    const sent = headerName === undefined || !takesHeader(req) ? undefined : req.headers[headerName];
    const token = sent === undefined ? undefined : tokenOf(sent, bearer);
    // Sending the header at all decides the transport: falling back to the cookie when the value is
    // malformed would answer a header request with whatever session the cookie holds.
    const viaHeader = sent !== undefined || !cookieTransport;
    if (!viaHeader) proxyTrap?.(req);
    if (viaHeader) {
      // Our cookie is not this request's session (the header is, or nothing is); the app's other
      // cookies (CSRF, preferences) are still its own to read.
      const others = withoutCookie(req.headers.cookie, name);
      // express-session reads the signed id from the cookie; hand it the header's token the same way.
      const injected = token === undefined ? undefined : `${name}=${encodeURIComponent(`s:${token}`)}`;
      const cookies = injected && others ? `${injected}; ${others}` : (injected ?? others);
      if (cookies === undefined) delete req.headers.cookie;
      else req.headers.cookie = cookies;
      // cookie-parser, when it runs first, leaves the cookie parsed here too, and express-session falls
      // back to these when the Cookie header holds no valid id (a forged or malformed token).
      const parsed = req as { cookies?: Record<string, unknown>; signedCookies?: Record<string, unknown> };
      if (parsed.cookies) delete parsed.cookies[name];
      if (parsed.signedCookies) delete parsed.signedCookies[name];
      onHeaders(res, () => {
        const issued = takeSessionCookie(res, name);
        if (issued !== undefined && issued !== token && responseHeader) {
          res.setHeader(responseHeader, issued);
          // The token is a credential: a shared cache that kept this response would hand it to others.
          res.setHeader("cache-control", "no-store");
          exposeHeader(res, responseHeader);
        }
      });
    }
    const done = clearValue !== undefined && !viaHeader ? clearOnSignOut(req, res, clearValue, (session) => store.hasUser(session), next) : next;
    // The rotation hook runs once express-session has loaded the session (renewAfter, and the grace window's cookie).
    inner(req as any, res as any, (err?: unknown) => (err ? done(err) : rotation(req, res, done)));
  }) as SessionMiddleware;

  Object.defineProperty(middleware, "store", { value: store });
  middleware.issueToken = async (data, tokenOptions = {}) => {
    const maxAge = tokenOptions.maxAge ?? cookieOptions.maxAge ?? 86_400_000;
    const sid = randomBytes(24).toString("base64url");
    const expires = new Date(Date.now() + maxAge);
    const handle = await store.mint(sid, { ...data, cookie: { ...cookieOptions, originalMaxAge: maxAge, expires } }, tokenOptions.from);
    return { token: sign(sid, secrets[0]!), handle, expiresAt: expires };
  };
  return middleware;
}
