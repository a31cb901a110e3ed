// A complete "your devices" app on connect-drizzle: sign up / log in / log out with passport-local, a
// counter kept in the session, a devices page (list, revoke, log out other devices, recent activity,
// "new sign-in" notices), API tokens that are sessions too (`Authorization: Bearer`), listed and revoked
// on the same page, a password prompt before the sensitive actions when the sign-in is old, and a new
// session id on every sign-in and password confirmation, so that a copied cookie gives itself away.
//
// server.ts runs it; test/browser/devices.browser.ts drives it in a real browser.
import { randomBytes, timingSafeEqual } from "node:crypto";
import express, { type Express, type NextFunction, type Request, type Response } from "express";
import passport from "passport";
import { Strategy as LocalStrategy } from "passport-local";
import { SessionStore, SessionStoreError, sessionMiddleware, type AnyPgDatabase, type EncryptOptions, type SessionMiddleware } from "connect-drizzle";
import {
  addSignInNotice,
  createTables,
  createUser,
  dismissSignInNotice,
  EmailTakenError,
  findUser,
  unreadSignInNotices,
  verifyUser,
  type User,
} from "./users.js";
import { authPage, confirmPage, counterPage, devicesPage, html, messagePage, type DevicesView, type PageContext } from "./views.js";

declare module "express-session" {
  interface SessionData {
    /** Per-session CSRF token, sent back in a hidden field by every form. */
    csrfToken?: string;
    counter?: number;
    /** The name of an API token's session. */
    label?: string;
  }
}

const MINUTE = 60_000;
const DAY = 86_400_000;

export interface DevicesAppOptions {
  /** A drizzle Postgres database with connect-drizzle's migrations applied. Not closed by the app. */
  db: AnyPgDatabase;
  /** Signs session cookies and tokens; see sessionMiddleware (required in production). */
  secret?: string | string[];
  /** Express's "trust proxy" (behind one proxy: 1), so IPs and Secure cookies come from the proxy. */
  trustProxy?: boolean | number | string;
  /** Lifetime of API tokens (idle: each use renews it). @default 90 days */
  tokenMaxAge?: number;
  /**
   * How recent a sign-in (or password confirmation) must be for "Revoke", "Log out other devices" and
   * "Create API token"; an older one is asked for the password again first.
   * @default 10 minutes
   */
  recentLoginMaxAge?: number;
  /** Most signed-in sessions per user (API tokens included): a sign-in beyond it ends the least recently used one; `false`: no cap. @default 10 */
  maxSessionsPerUser?: number | false;
  /** Encrypts the session data at rest (see connect-drizzle's `encrypt`). @default off */
  encrypt?: EncryptOptions;
  /**
   * How long the cookie a session had before its id changed (a password confirmation) still opens it, in
   * ms, for requests already on their way; used after that, it signs the user out everywhere (the store's
   * `rotationGrace`).
   * @default 10 seconds (the store's default)
   */
  rotationGrace?: number;
}

export interface DevicesApp {
  app: Express;
  store: SessionStore;
  sessions: SessionMiddleware;
  /** Stops the store (its timers and connections). The database stays open: it is the caller's. */
  close(): Promise<void>;
}

export async function createApp(options: DevicesAppOptions): Promise<DevicesApp> {
  const { db } = options;
  const tokenMaxAge = options.tokenMaxAge ?? 90 * DAY;
  const recentLoginMaxAge = options.recentLoginMaxAge ?? 10 * MINUTE;
  await createTables(db);

  // Ended sessions (logouts, revocations, evictions, expiries) are kept 30 days for "Recent activity".
  const store = new SessionStore({
    db,
    retainEnded: 30 * DAY,
    maxSessionsPerUser: options.maxSessionsPerUser === false ? undefined : (options.maxSessionsPerUser ?? 10),
    encrypt: options.encrypt,
    // detectReuse is on by default: an old id used after this grace ends the session as "reused".
    rotationGrace: options.rotationGrace,
  });
  // Browsers carry their session in a cookie; API tokens (`Authorization: Bearer`) open a session on the
  // /api routes only, so a token can never drive the pages (read their CSRF token, revoke, mint tokens).
  const sessions = sessionMiddleware({ store, secret: options.secret, header: "authorization", headerRoutes: ["/api"] });

  // Users whose sign-up is in progress: their first session is news to nobody.
  const signingUp = new Set<string>();
  // A sign-in from a device (browser family and IP) that none of the user's recent sessions used becomes
  // a notice on their devices page. Recorded only by the instance where the sign-in happened (`local`),
  // so that each sign-in makes one notice even if other instances hear of it too.
  store.on("newDevice", (event) => {
    if (!event.local || event.userId === null || signingUp.has(event.userId)) return;
    return addSignInNotice(db, { userId: event.userId, sessionHandle: event.handle, device: event.device, ip: event.ip });
  });

  // Sensitive actions need a sign-in (or password confirmation) younger than recentLoginMaxAge; an older
  // one is sent to /confirm first. After CSRF, so a forged post is refused rather than redirected.
  const recentLogin = store.requireRecentLogin<Request, Response>(recentLoginMaxAge, {
    onStale: (_req, res) => res.redirect(303, `/confirm?next=${encodeURIComponent("/devices?done=confirmed")}`),
  });

  // A passport instance of our own (not the global singleton), so several apps can live in one process.
  const auth = new passport.Passport();
  auth.use(
    new LocalStrategy({ usernameField: "email" }, (email, password, done) => {
      verifyUser(db, normalizeEmail(email), password).then((user) => done(null, user ?? false), done);
    }),
  );
  auth.serializeUser((user, done) => done(null, (user as User).id));
  auth.deserializeUser((id: string, done) => {
    findUser(db, id).then((user) => done(null, user ?? false), done);
  });

  const app = express();
  app.disable("x-powered-by");
  if (options.trustProxy !== undefined) app.set("trust proxy", options.trustProxy);
  app.use((_req, res, next) => {
    res.set({
      // No scripts at all; inline <style> only; forms post to this origin only.
      "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
      "X-Content-Type-Options": "nosniff",
      "Referrer-Policy": "same-origin",
      "Cache-Control": "no-store",
    });
    next();
  });
  app.use(express.urlencoded({ extended: false, limit: "10kb" }));
  app.use(express.json({ limit: "10kb" }));
  app.use(sessions);
  app.use(auth.initialize());
  app.use(auth.session());

  const userOf = (req: Request) => req.user as User | undefined;
  const ctx = (req: Request): PageContext => ({ user: userOf(req), csrf: csrfToken(req) });
  const page = (_req: Request, res: Response, status: number, body: string) => res.status(status).type("html").send(body);

  // ---- pages for browsers (cookie sessions) ----

  app.get("/", (req, res) => res.redirect(userOf(req) ? "/devices" : "/login"));

  app.get("/signup", (req, res) => (userOf(req) ? res.redirect("/devices") : page(req, res, 200, authPage("signup", ctx(req)))));
  app.post("/signup", checkCsrf, async (req, res, next) => {
    const email = normalizeEmail(req.body?.email);
    const password = typeof req.body?.password === "string" ? req.body.password : "";
    const error =
      !/^[^\s@]+@[^\s@]+$/.test(email) || email.length > 254
        ? "Enter a valid email address."
        : password.length < 8 || password.length > 200
          ? "Use a password of 8 to 200 characters."
          : undefined;
    if (error) return page(req, res, 400, authPage("signup", ctx(req), { error, email }));
    let user: User;
    try {
      user = await createUser(db, email, password);
    } catch (err) {
      if (!(err instanceof EmailTakenError)) throw err;
      return page(req, res, 409, authPage("signup", ctx(req), { error: "That email already has an account. Log in instead.", email }));
    }
    // passport 0.7 regenerates the session on login (no session fixation).
    signingUp.add(user.id);
    req.login(user, (err) => {
      signingUp.delete(user.id);
      if (err) next(err);
      else res.redirect(303, "/devices");
    });
  });

  app.get("/login", (req, res) => (userOf(req) ? res.redirect("/devices") : page(req, res, 200, authPage("login", ctx(req)))));
  app.post("/login", checkCsrf, (req, res, next) => {
    auth.authenticate("local", (err: unknown, user: User | false) => {
      if (err) return next(err);
      if (!user) {
        const email = normalizeEmail(req.body?.email);
        return page(req, res, 401, authPage("login", ctx(req), { error: "Wrong email or password.", email }));
      }
      // passport 0.7's login calls req.session.regenerate: the signed-out session (the login form's) ends
      // and the signed-in one gets a new id and a new cookie, so an id planted before the sign-in
      // (session fixation) never becomes a signed-in one.
      req.login(user, (loginErr) => (loginErr ? next(loginErr) : res.redirect(303, "/devices")));
    })(req, res, next);
  });

  app.post("/logout", requireUser, checkCsrf, (req, res, next) => {
    // Ends this session (recorded as "logout" in the user's recent activity).
    req.logout((err) => (err ? next(err) : res.redirect(303, "/login")));
  });

  // Asks a signed-in user for their password again (see recentLogin), then goes on to `next`.
  app.get("/confirm", requireUser, (req, res) => page(req, res, 200, confirmPage(ctx(req), { next: localPath(req.query.next) })));
  app.post("/confirm", requireUser, checkCsrf, async (req, res) => {
    const user = userOf(req)!;
    const next = localPath(req.body?.next);
    const password = typeof req.body?.password === "string" ? req.body.password : "";
    if (!(await verifyUser(db, user.email, password))) {
      return page(req, res, 401, confirmPage(ctx(req), { next, error: "Wrong password." }));
    }
    // Records the confirmation and gives the session a new id (the response sends the new cookie): a copy
    // of the old cookie opens it for rotationGrace only, and used after that signs the user out everywhere.
    // False when this session ended meanwhile (revoked from another device): then sign in again.
    const marked = await store.markAuthenticated(req);
    res.redirect(303, marked ? next : "/login");
  });

  app.get("/counter", requireUser, (req, res) => page(req, res, 200, counterPage(ctx(req), req.session.counter ?? 0)));
  app.post("/counter", requireUser, checkCsrf, (req, res) => {
    req.session.counter = (req.session.counter ?? 0) + 1;
    res.redirect(303, "/counter");
  });

  app.get("/devices", requireUser, async (req, res) => {
    page(req, res, 200, devicesPage(ctx(req), await devicesView(req, NOTICES[String(req.query.done)]?.(req.query))));
  });

  app.post("/devices/revoke", requireUser, checkCsrf, recentLogin, async (req, res) => {
    const handle = typeof req.body?.handle === "string" ? req.body.handle : "";
    // With userId the store only ends a session this user owns: a guessed handle ends nothing.
    const revoked = await store.revoke(handle, { userId: userOf(req)!.id });
    res.redirect(303, `/devices?done=${revoked ? "revoked" : "missing"}`);
  });

  app.post("/devices/dismiss", requireUser, checkCsrf, async (req, res) => {
    const id = typeof req.body?.notice === "string" ? req.body.notice : "";
    await dismissSignInNotice(db, userOf(req)!.id, id); // only ever this user's own notice
    res.redirect(303, "/devices");
  });

  app.post("/devices/logout-others", requireUser, checkCsrf, recentLogin, async (req, res) => {
    // Every other session of this user ends, API tokens included; this one stays.
    const count = await store.revokeUser(userOf(req)!.id, { except: req.sessionID });
    res.redirect(303, `/devices?done=others&count=${count}`);
  });

  app.post("/devices/token", requireUser, checkCsrf, recentLogin, async (req, res) => {
    const user = userOf(req)!;
    const label = cleanLabel(req.body?.label);
    // A session of its own, owned by the user like a login, with a token for header transport. Its
    // `label` is kept in the session record, so the devices list and its history show the name.
    // `from`: the token keeps this sign-in's time, so it is never a fresh sign-in of its own.
    const { token } = await sessions.issueToken({ passport: { user: user.id }, label }, { maxAge: tokenMaxAge, from: req.session });
    const apiUrl = `${req.protocol}://${req.get("host") ?? "localhost"}/api/me`;
    // Rendered in the POST response, never stored: this is the only time the token is shown.
    page(req, res, 201, devicesPage(ctx(req), { ...(await devicesView(req)), newToken: { token, label, apiUrl } }));
  });

  // ---- API for scripts (Authorization: Bearer <token>; no cookies, so no CSRF) ----

  const api = express.Router();
  api.use((req, res, next) => {
    if (!/^Bearer\s/i.test(req.get("authorization") ?? "")) {
      return res.status(401).set("WWW-Authenticate", "Bearer").json({ error: "send Authorization: Bearer <token> (create one on /devices)" });
    }
    if (!userOf(req)) {
      return res.status(401).set("WWW-Authenticate", 'Bearer error="invalid_token"').json({ error: "this token is invalid, expired or revoked" });
    }
    next();
  });
  api.get("/me", async (req, res) => {
    const user = userOf(req)!;
    res.json({ id: user.id, email: user.email, token: { label: req.session.label ?? null, handle: await store.handleOf(req.sessionID) } });
  });
  api.get("/counter", (req, res) => res.json({ count: req.session.counter ?? 0 }));
  api.post("/counter", (req, res) => {
    req.session.counter = (req.session.counter ?? 0) + 1;
    res.json({ count: req.session.counter });
  });
  api.use((_req, res) => res.status(404).json({ error: "not found" }));
  app.use("/api", api);

  app.use((req, res) => page(req, res, 404, messagePage(ctx(req), "Not found", "There is no such page.")));
  app.use((err: unknown, req: Request, res: Response, _next: NextFunction) => {
    if (err instanceof SessionStoreError && err.code === "SESSION_REUSED") {
      // The id this request came with had been replaced and its grace was over: two holders of one
      // cookie, one of them not the user. The store has ended the session everywhere; say so (no session
      // here: the lookup failed, so the page has no user and no form).
      console.warn(`signed out a session whose old cookie came back from ${req.ip ?? "an unknown address"} (${req.get("user-agent") ?? "no user agent"})`);
      if (res.headersSent) return;
      if (req.path.startsWith("/api/")) return res.status(401).json({ error: "signed out: this session's token was used from elsewhere" });
      return page(req, res, 401, messagePage({ csrf: "" }, "You were signed out", REUSED_MESSAGE));
    }
    console.error(err);
    if (res.headersSent) return;
    if (req.path.startsWith("/api/")) return res.status(500).json({ error: "internal error" });
    page(req, res, 500, messagePage({ user: userOf(req), csrf: "" }, "Something went wrong", "Please try again."));
  });

  async function devicesView(req: Request, notice?: string): Promise<DevicesView> {
    const userId = userOf(req)!.id;
    const [active, ended, notices] = await Promise.all([
      store.list({ userId, current: req.sessionID }), // newest activity first; "this device" marked
      store.list({ userId, status: "ended", limit: 20 }), // kept for retainEnded
      unreadSignInNotices(db, userId),
    ]);
    const labels = new Map([...active, ...ended].flatMap((s) => (s.label ? [[s.handle, s.label] as const] : [])));
    const here = active.find((s) => s.current)?.handle;
    return {
      active,
      ended,
      labels,
      notice,
      // This device's own sign-in is no news here.
      signIns: notices.filter((n) => n.sessionHandle !== here),
      signedInAt: store.authenticatedAt(req.session),
      recentLoginMaxAge,
    };
  }

  return { app, store, sessions, close: () => store.close() };
}

const REUSED_MESSAGE = html`You were signed out because your session's cookie was used from elsewhere: someone else may have a
  copy of it, so the session has ended for both of you. <a href="/login">Log in again</a>, then check Your devices.`;

const NOTICES: Record<string, (query: Request["query"]) => string> = {
  revoked: () => "Revoked: that device is signed out (on its next request).",
  missing: () => "That session had already ended.",
  confirmed: () => "Password confirmed: you can now revoke devices, log out other devices or create an API token.",
  others: (q) => {
    const n = Number.parseInt(String(q.count), 10) || 0;
    return n === 0 ? "There were no other sessions to end." : `Ended ${n} other session${n === 1 ? "" : "s"}.`;
  },
};

/** Sends the signed-out to the login page (a revoked or expired session arrives here with no user). */
function requireUser(req: Request, res: Response, next: NextFunction): void {
  if (req.user) next();
  else res.redirect(303, "/login");
}

/** The session's CSRF token, created on first use (this makes the session worth saving). */
function csrfToken(req: Request): string {
  return (req.session.csrfToken ??= randomBytes(24).toString("base64url"));
}

/** Rejects a form post whose hidden `_csrf` field does not match the session's token. */
function checkCsrf(req: Request, res: Response, next: NextFunction): void {
  const sent: unknown = req.body?._csrf;
  const expected = req.session.csrfToken;
  if (
    typeof sent === "string" &&
    typeof expected === "string" &&
    sent.length === expected.length &&
    timingSafeEqual(Buffer.from(sent), Buffer.from(expected))
  ) {
    next();
    return;
  }
  const back = req.path === "/login" || req.path === "/signup" ? req.path : "/devices";
  res
    .status(403)
    .type("html")
    .send(
      messagePage(
        { user: req.user as User | undefined, csrf: csrfToken(req) },
        "Form expired",
        html`This form expired or did not come from this site. <a href="${back}">Reload it</a> and try again.`,
      ),
    );
}

/** `value` if it is a path on this site ("/devices?done=confirmed"), else /devices: never a redirect elsewhere. */
function localPath(value: unknown): string {
  if (typeof value !== "string" || !value.startsWith("/")) return "/devices";
  const url = new URL(value, "http://localhost"); // "//host" and "/\\host" resolve to another origin
  return url.origin === "http://localhost" ? url.pathname + url.search : "/devices";
}

function normalizeEmail(value: unknown): string {
  return typeof value === "string" ? value.trim().toLowerCase() : "";
}

function cleanLabel(value: unknown): string {
  const label = typeof value === "string" ? value.replace(/\s+/g, " ").trim().slice(0, 60) : "";
  return label || "API token";
}
