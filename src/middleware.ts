import { createHmac, randomBytes } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import session, { type CookieOptions, type SessionData, type SessionOptions } from "express-session";
import { checkOptions, is, kindOf, numberOption, type OptionCheck, type OptionChecks } from "./check.js";
import { secretList } from "./options.js";
import { SessionStore } from "./store.js";

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
  const { store, header = false, headerRoutes, cookie, secret: givenSecret, responseHeader: givenResponseHeader, ...rest } = options;
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
  const takesHeader = routeMatcher(headerRoutes ?? "all");
  const headerName = header === false ? undefined : header.toLowerCase();
  const bearer = headerName === "authorization";
  const responseHeader = givenResponseHeader ?? (bearer ? "X-Session-Token" : header || undefined);
  const name = rest.name ?? (production ? "__Host-sid" : "sid");
  const cookieOptions: CookieOptions = {
    httpOnly: true,
    secure: production ? true : "auto",
    sameSite: "lax",
    path: "/",
    maxAge: 86_400_000,
    ...(cookie || {}),
  };
  const cookieTransport = cookie !== false;
  if (cookieTransport) checkCookiePrefix(name, rest.name === undefined, cookieOptions);
  const proxyTrap = cookieTransport && rest.proxy !== true && cookieOptions.secure ? trustProxyTrap(cookieOptions.secure) : undefined;

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
    inner(req as any, res as any, next);
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

/**
 * Refuses a cookie name whose prefix browsers would reject with these attributes: they drop such a
 * Set-Cookie without a word, so every session would be lost. `__Secure-` needs Secure; `__Host-` needs
 * Secure, path "/" and no Domain.
 * @param defaulted whether the name is our production default rather than the app's
 */
function checkCookiePrefix(name: string, defaulted: boolean, cookie: CookieOptions): void {
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
function trustProxyTrap(secure: true | "auto"): (req: IncomingMessage) => void {
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

/**
 * Whether a request's route takes the header transport ({@link SessionMiddlewareOptions.headerRoutes}). A
 * prefix matches at a segment boundary, against the path as sent (Express routes on it undecoded, so
 * `/%61pi` or `/API` never reaches a header route by way of this check: at worst the header is ignored).
 */
function routeMatcher(routes: NonNullable<SessionMiddlewareOptions["headerRoutes"]>): (req: IncomingMessage) => boolean {
  if (routes === "all") return () => true;
  if (typeof routes === "function") return routes;
  const prefixes = routes.map((p) => (p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p));
  return (req) => {
    const url = (req as { originalUrl?: string }).originalUrl ?? req.url ?? "";
    const end = url.search(/[?#]/);
    const path = end < 0 ? url : url.slice(0, end);
    return prefixes.some((p) => p === "/" || path === p || path.startsWith(`${p}/`));
  };
}

/** The token in a request header's value, or undefined when the value cannot be one. */
function tokenOf(value: string | string[], bearer: boolean): string | undefined {
  if (typeof value !== "string") return undefined;
  let token = value.trim();
  if (bearer) {
    const match = /^Bearer\s+(\S+)$/i.exec(token);
    if (!match) return undefined;
    token = match[1]!;
  }
  return token.length > 0 && token.length <= 512 ? token : undefined;
}

/**
 * The Cookie header without any cookie named `name` (undefined when nothing else is left), the others as
 * sent. A part's name is what precedes its first "=", trimmed, as express-session's parser reads it, so
 * nothing it would take for ours survives.
 */
function withoutCookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  const parts = header.split(";");
  const kept = parts.filter((part) => part.split("=", 1)[0]!.trim() !== name);
  if (kept.length === parts.length) return header;
  return kept.join(";").trim() || undefined;
}

/** Signs an id the way express-session signs its cookie (cookie-signature), so express-session verifies it. */
export function sign(value: string, secret: string): string {
  return `${value}.${createHmac("sha256", secret).update(value).digest("base64").replace(/=+$/, "")}`;
}

/** Removes our session cookie from the response's Set-Cookie and returns its token, if express-session set one. */
function takeSessionCookie(res: ServerResponse, name: string): string | undefined {
  const current = res.getHeader("set-cookie");
  if (current === undefined) return undefined;
  const cookies = Array.isArray(current) ? current : [String(current)];
  const prefix = `${name}=`;
  const ours = cookies.find((c) => c.startsWith(prefix));
  if (ours === undefined) return undefined;
  const rest = cookies.filter((c) => c !== ours);
  if (rest.length > 0) res.setHeader("set-cookie", rest);
  else res.removeHeader("set-cookie");
  const value = decodeURIComponent(ours.slice(prefix.length).split(";")[0]!);
  return value.startsWith("s:") ? value.slice(2) : undefined;
}

/** Lets browser clients on other origins read the token header, without touching the app's own list. */
function exposeHeader(res: ServerResponse, header: string): void {
  if (res.getHeader("access-control-allow-origin") === undefined) return;
  const current = res.getHeader("access-control-expose-headers");
  const list =
    current === undefined
      ? []
      : String(current)
          .split(",")
          .map((h) => h.trim())
          .filter(Boolean);
  if (!list.some((h) => h.toLowerCase() === header.toLowerCase() || h === "*")) list.push(header);
  res.setHeader("access-control-expose-headers", list.join(", "));
}

/**
 * Runs `listener` just before the response headers are written. Installed before express-session's own
 * hook, so it runs after it (each wrapper calls the one installed before it last).
 */
function onHeaders(res: ServerResponse, listener: () => void): void {
  const writeHead = res.writeHead;
  let fired = false;
  res.writeHead = function (this: ServerResponse, ...args: any[]) {
    if (!fired) {
      fired = true;
      listener();
    }
    return (writeHead as any).apply(this, args);
  } as typeof res.writeHead;
}
