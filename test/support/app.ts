import fastifyCookie from "@fastify/cookie";
import fastifySession, { type FastifySessionOptions } from "@fastify/session";
import express, { type Express } from "express";
import Fastify, { type FastifyInstance } from "fastify";
import session, { type SessionOptions } from "express-session";
import passport from "passport";
import { Strategy as LocalStrategy } from "passport-local";
import { sessionMiddleware, type SessionMiddleware, type SessionMiddlewareOptions, type SessionStore } from "../../src/index.js";

declare module "express-session" {
  interface SessionData {
    views?: number;
    userId?: string;
  }
}

/** A small real app: passport-local login (which regenerates the session), a counter, a read-only route, logout. */
export function testApp(store: SessionStore, options: Partial<SessionOptions> = {}, extra?: (app: Express) => void): Express {
  const app = express();
  app.set("trust proxy", "loopback");
  app.use(express.urlencoded({ extended: false }));
  app.use(express.json());
  const middleware = session({
    store,
    secret: "test secret",
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: 3_600_000 },
    ...options,
  });
  app.use(middleware);
  const auth = new passport.Passport();
  auth.use(new LocalStrategy((username, password, done) => (password === "pw" ? done(null, { id: username }) : done(null, false))));
  auth.serializeUser((user: any, done) => done(null, user.id));
  auth.deserializeUser((id: string, done) => done(null, { id }));
  app.use(auth.session());
  extra?.(app);
  app.post("/login", auth.authenticate("local", { failWithError: true }), (req, res) => {
    res.json({ user: (req.user as any).id });
  });
  app.post("/logout", (req, res, next) => {
    req.logout((err) => (err ? next(err) : res.json({ ok: true })));
  });
  app.get("/me", (req, res) => {
    if (!req.user) return void res.status(401).json({ error: "not logged in" });
    res.json({ user: (req.user as any).id });
  });
  app.post("/count", (req, res) => {
    req.session.views = (req.session.views ?? 0) + 1;
    res.json({ views: req.session.views });
  });
  app.get("/count", (req, res) => {
    res.json({ views: req.session.views ?? 0 });
  });
  app.use((err: any, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    res.status(err.status ?? 500).json({ error: err.message });
  });
  return app;
}

/** The `name=value` part of the session cookie in a response, to send it back. */
export function cookieOf(res: { headers: Record<string, any> }, name = "connect.sid"): string | undefined {
  const cookies: string[] = res.headers["set-cookie"] ?? [];
  return cookies.find((c) => c.startsWith(`${name}=`))?.split(";")[0];
}

/**
 * A small app on sessionMiddleware: POST /login/:user (regenerate, then userId), GET /me, POST /logout,
 * GET /devices (the user's records). `setup` runs before the middleware (e.g. CORS headers).
 */
export function middlewareApp(
  store: SessionStore,
  options: Partial<SessionMiddlewareOptions> = {},
  setup?: (app: Express) => void,
): { app: Express; sessions: SessionMiddleware } {
  const app = express();
  app.set("trust proxy", "loopback");
  setup?.(app);
  const sessions = sessionMiddleware({ store, secret: "middleware test secret", ...options });
  app.use(sessions);
  app.post("/login/:user", (req, res, next) =>
    req.session.regenerate((err) => {
      if (err) return next(err);
      req.session.userId = req.params.user;
      res.json({ ok: true });
    }),
  );
  app.get("/me", (req, res) => {
    if (!req.session.userId) return void res.status(401).json({ error: "not logged in" });
    res.json({ user: req.session.userId });
  });
  app.post("/logout", (req, res, next) => req.session.destroy((err) => (err ? next(err) : res.json({ ok: true }))));
  app.get("/devices", async (req, res) => {
    res.json(await store.list({ userId: req.session.userId!, current: req.sessionID }));
  });
  return { app, sessions };
}

/**
 * A fastify app (`server`: fastify's options) with @fastify/cookie and @fastify/session on `store`: cookie
 * `sid`, no uninitialized sessions, a cookie sent over plain http; `options` over these.
 */
export async function fastifyApp(
  store: SessionStore,
  options: Partial<FastifySessionOptions> = {},
  server: { trustProxy?: string } = {},
): Promise<FastifyInstance> {
  const app = Fastify(server);
  await app.register(fastifyCookie);
  await app.register(fastifySession, {
    store,
    secret: "a fastify session secret of 32+ characters",
    cookieName: "sid",
    saveUninitialized: false,
    cookie: { secure: false },
    ...options,
  });
  return app;
}
