import express, { type Express } from "express";
import request from "supertest";
import passport from "passport";
import { Strategy as LocalStrategy } from "passport-local";
import { afterEach, describe, expect, it, vi } from "vitest";
import { type SessionStore, sessionMiddleware, type SessionMiddlewareOptions } from "../src/index.js";
import { cookieOf, middlewareApp } from "./support/app.js";
import { drivers, type TestDb, useTestDb } from "./support/db.js";

describe.each(drivers)("sessionMiddleware on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;

  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.restoreAllMocks();
  });

  /** The test app; header transport (with cookies too) on every route unless a test says which routes take it. */
  const app = (options: Partial<SessionMiddlewareOptions> = {}, setup?: (app: Express) => void) =>
    middlewareApp(store, options.header && options.cookie !== false ? { headerRoutes: "all", ...options } : options, setup);

  it("sets a cookie with secure defaults: httpOnly, SameSite=Lax, a non-default name, rolling expiry", async () => {
    const { app: a } = app();
    const login = await request(a).post("/login/ann");
    const setCookie = (login.headers["set-cookie"] as unknown as string[])[0]!;
    expect(setCookie).toMatch(/^sid=/);
    expect(setCookie).toMatch(/HttpOnly/);
    expect(setCookie).toMatch(/SameSite=Lax/);
    expect(setCookie).toMatch(/Path=\//);
    // Over plain http outside production, "auto" leaves Secure off so local development works.
    expect(setCookie).not.toMatch(/Secure/);
    const read = await request(a).get("/me").set("Cookie", cookieOf(login, "sid")!);
    expect(read.body).toEqual({ user: "ann" });
    expect(read.headers["set-cookie"]).toBeDefined();
  });

  it("marks the cookie Secure behind an https proxy (trust proxy honoured)", async () => {
    const { app: a } = app();
    const login = await request(a).post("/login/ann").set("X-Forwarded-Proto", "https");
    expect((login.headers["set-cookie"] as unknown as string[])[0]).toMatch(/Secure/);
  });

  it("in production: a missing secret is a startup error, and the cookie is __Host- and Secure", async () => {
    vi.stubEnv("NODE_ENV", "production");
    expect(() => sessionMiddleware({ store })).toThrow(/needs a `secret`/);
    const { app: a } = app();
    const login = await request(a).post("/login/ann").set("X-Forwarded-Proto", "https");
    const setCookie = (login.headers["set-cookie"] as unknown as string[])[0]!;
    expect(setCookie).toMatch(/^__Host-sid=/);
    expect(setCookie).toMatch(/Secure/);
  });

  it("outside production a missing secret warns and still works", async () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const a = express();
    a.use(sessionMiddleware({ store }));
    a.get("/", (req, res) => {
      req.session.userId = "x";
      res.end();
    });
    expect((await request(a).get("/")).headers["set-cookie"]).toBeDefined();
    expect(warn).toHaveBeenCalledWith(expect.stringMatching(/no session secret/));
  });

  it("rejects options that cannot work, at construction", () => {
    expect(() => sessionMiddleware({} as any)).toThrow(/store/);
    expect(() => sessionMiddleware({ store, secret: "" })).toThrow(/secret/);
    expect(() => sessionMiddleware({ store, secret: "s", cookie: false })).toThrow(/transport/);
    expect(() => sessionMiddleware({ store, secret: "s", header: "bad header" })).toThrow(/header name/);
  });

  it("records user agent and client IP (from X-Forwarded-For behind a trusted proxy) outside the session data", async () => {
    const { app: a } = app();
    await request(a).post("/login/ann").set("User-Agent", "Firefox/140").set("X-Forwarded-For", "198.51.100.23");
    const [record] = await store.list({ userId: "ann" });
    expect(record).toMatchObject({ userAgent: "Firefox/140", ip: "198.51.100.23" });
    const [row] = await t.raw<{ data: string }>(`select data::text as data from $table`);
    expect(row!.data).not.toMatch(/Firefox|198\.51/);
  });

  describe("clearSiteData", () => {
    const CLEAR = '"cookies", "storage"';
    const loggedIn = async (a: Express) => cookieOf(await request(a).post("/login/ann"), "sid")!;

    it('a logout by req.session.destroy() is answered with Clear-Site-Data: "cookies", "storage"; other requests are not', async () => {
      const { app: a } = app({ clearSiteData: true });
      const cookie = await loggedIn(a);
      expect((await request(a).get("/me").set("Cookie", cookie)).headers["clear-site-data"]).toBeUndefined();
      const logout = await request(a).post("/logout").set("Cookie", cookie);
      expect(logout.status).toBe(200);
      expect(logout.headers["clear-site-data"]).toBe(CLEAR);
    });

    it("passport's logout (remove the user, save, regenerate) sends it; its login, which regenerates a signed-out session, does not", async () => {
      const a = express();
      a.use(express.urlencoded({ extended: false }));
      a.use(sessionMiddleware({ store, secret: "clear-site-data secret", clearSiteData: true }));
      const auth = new passport.Passport();
      auth.use(new LocalStrategy((username, _password, done) => done(null, { id: username })));
      auth.serializeUser((user: any, done) => done(null, user.id));
      auth.deserializeUser((id: string, done) => done(null, { id }));
      a.use(auth.session());
      a.post("/cart", (req, res) => {
        req.session.views = 1;
        res.json({ ok: true });
      });
      a.post("/login", auth.authenticate("local", { failWithError: true }), (_req, res) => res.json({ ok: true }));
      a.get("/me", (req, res) => res.json({ user: (req.user as { id: string } | undefined)?.id ?? null }));
      a.post("/logout", (req, res, next) => req.logout((err) => (err ? next(err) : res.json({ ok: true }))));

      // A visitor's stored session (a cart) is regenerated by the login while it holds no user yet.
      const visitor = cookieOf(await request(a).post("/cart"), "sid")!;
      const login = await request(a).post("/login").set("Cookie", visitor).type("form").send({ username: "ann", password: "pw" });
      expect(login.status).toBe(200);
      expect(login.headers["clear-site-data"]).toBeUndefined();
      const cookie = cookieOf(login, "sid")!;
      expect((await request(a).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
      // Signed in again on the same session (a rotation): still no header.
      const again = await request(a).post("/login").set("Cookie", cookie).type("form").send({ username: "ann", password: "pw" });
      expect(again.headers["clear-site-data"]).toBeUndefined();
      const logout = await request(a).post("/logout").set("Cookie", cookieOf(again, "sid")!);
      expect(logout.status).toBe(200);
      expect(logout.headers["clear-site-data"]).toBe(CLEAR);
    });

    it("a login's regenerate never sends it, signed out before or signed in as someone else", async () => {
      const { app: a } = app({ clearSiteData: true });
      a.post("/logout-by-regenerate", (req, res, next) => req.session.regenerate((err) => (err ? next(err) : res.json({ ok: true }))));
      const first = await request(a).post("/login/ann");
      expect(first.headers["clear-site-data"]).toBeUndefined();
      const switched = await request(a).post("/login/bob").set("Cookie", cookieOf(first, "sid")!);
      expect(switched.headers["clear-site-data"]).toBeUndefined();
      // The same regenerate, left without a user, is a logout.
      const out = await request(a).post("/logout-by-regenerate").set("Cookie", cookieOf(switched, "sid")!);
      expect(out.headers["clear-site-data"]).toBe(CLEAR);
    });

    it("is off by default", async () => {
      const { app: a } = app();
      const logout = await request(a)
        .post("/logout")
        .set("Cookie", await loggedIn(a));
      expect(logout.status).toBe(200);
      expect(logout.headers["clear-site-data"]).toBeUndefined();
      const on = app({ clearSiteData: true }).app;
      expect(
        (
          await request(on)
            .post("/logout")
            .set("Cookie", await loggedIn(on))
        ).headers["clear-site-data"],
      ).toBe(CLEAR);
    });

    it("sends the directives listed, quoted, in their order", async () => {
      for (const [directives, header] of [
        [["cookies"], '"cookies"'],
        [["storage", "cache", "executionContexts"], '"storage", "cache", "executionContexts"'],
        [["*"], '"*"'],
      ] as const) {
        const { app: a } = app({ clearSiteData: directives });
        const logout = await request(a)
          .post("/logout")
          .set("Cookie", await loggedIn(a));
        expect(logout.headers["clear-site-data"], header).toBe(header);
      }
    });

    it("a header-transport (API) logout does not send it; a cookie one on the same app does", async () => {
      const { app: a, sessions } = app({ header: "authorization", clearSiteData: true });
      const { token } = await sessions.issueToken({ userId: "ann" });
      const api = await request(a).post("/logout").set("Authorization", `Bearer ${token}`);
      expect(api.status).toBe(200);
      expect(api.headers["clear-site-data"]).toBeUndefined();
      expect((await request(a).get("/me").set("Authorization", `Bearer ${token}`)).status).toBe(401);
      const browser = await request(a)
        .post("/logout")
        .set("Cookie", await loggedIn(a));
      expect(browser.headers["clear-site-data"]).toBe(CLEAR);
    });
  });

  describe("header transport", () => {
    it("Authorization: Bearer carries the session; the token comes back in X-Session-Token, not a cookie", async () => {
      const { app: a } = app({ header: "authorization" });
      const login = await request(a).post("/login/ann").set("Authorization", "Bearer none-yet");
      expect(login.headers["set-cookie"]).toBeUndefined();
      const token = login.headers["x-session-token"] as string;
      expect(token).toMatch(/^[\w-]+\.[\w+/]+$/);
      const me = await request(a).get("/me").set("Authorization", `Bearer ${token}`);
      expect(me.body).toEqual({ user: "ann" });
      // An unchanged session sends no token back, and never a cookie.
      expect(me.headers["x-session-token"]).toBeUndefined();
      expect(me.headers["set-cookie"]).toBeUndefined();
    });

    it("headerRoutes: a token opens its session only on the routes named; elsewhere the header is ignored and the cookie's session (or none) is used", async () => {
      const { app: a, sessions } = app({ header: "authorization", headerRoutes: ["/api"] });
      a.get("/api/me", (req, res) => res.json({ user: req.session.userId ?? null }));
      const bearer = `Bearer ${(await sessions.issueToken({ userId: "bob" })).token}`;
      const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
      // A header route: the token is the session, even beside a cookie.
      expect((await request(a).get("/api/me").set("Authorization", bearer).set("Cookie", cookie)).body).toEqual({ user: "bob" });
      // Any other route: the header does nothing (no session from it, and the cookie is this request's session).
      expect((await request(a).get("/me").set("Authorization", bearer)).status).toBe(401);
      expect((await request(a).get("/me").set("Authorization", bearer).set("Cookie", cookie)).body).toEqual({ user: "ann" });
      expect((await request(a).get("/devices").set("Authorization", bearer).set("Cookie", cookie)).body).toHaveLength(1); // ann's, not bob's
      // Lookalike paths are no header routes: another segment, another case, percent-encoded, dot segments, a query.
      for (const path of ["/apix/me", "/API/me", "/%61pi/me", "/me?x=/api/", "/me#/api"]) {
        const res = await request(a).get(path).set("Authorization", bearer);
        expect(res.body?.user ?? null, path).toBeNull();
      }
      // A function decides per request; "all" takes the header everywhere.
      const byFunction = app({ header: "authorization", headerRoutes: (req) => req.headers["x-client"] === "cli" }).app;
      expect((await request(byFunction).get("/me").set("Authorization", bearer)).status).toBe(401);
      expect((await request(byFunction).get("/me").set("Authorization", bearer).set("X-Client", "cli")).body).toEqual({ user: "bob" });
    });

    it("with both transports on, headerRoutes is required: a TypeError at startup names it; a malformed one or one without a header is refused", () => {
      expect(() => sessionMiddleware({ store, secret: "s", header: "authorization" })).toThrow(
        /^connect-drizzle: with both cookie and `header` transport, say which routes take the header, e\.g\. `headerRoutes: \["\/api"\]`/,
      );
      expect(() => sessionMiddleware({ store, secret: "s", header: "authorization", cookie: false })).not.toThrow();
      for (const bad of [[], ["api"], "/api", [1], "none"]) {
        expect(() => sessionMiddleware({ store, secret: "s", header: "authorization", headerRoutes: bad as any }), JSON.stringify(bad)).toThrow(
          /`headerRoutes` must be a list of path prefixes such as \["\/api"\], a function \(req\) => boolean, or "all"/,
        );
      }
      expect(() => sessionMiddleware({ store, secret: "s", headerRoutes: ["/api"] })).toThrow(/no `header` is set/);
    });

    it("a token that is forged, tampered or unknown opens nothing", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      const { token } = await sessions.issueToken({ userId: "ann" });
      expect((await request(a).get("/me").set("Authorization", `Bearer ${token}`)).status).toBe(200);
      const [sid, sig] = token.split(".");
      for (const bad of [`${sid}.${sig!.slice(0, -2)}xx`, `${sid}x.${sig}`, sid!, "Bearer", `${token}; sid=other`]) {
        expect((await request(a).get("/me").set("Authorization", `Bearer ${bad}`)).status, bad).toBe(401);
      }
      expect((await request(a).get("/me").set("Authorization", `Basic ${token}`)).status).toBe(401);
    });

    it("a named header works the same way, and is echoed under the same name", async () => {
      const { app: a } = app({ header: "x-api-token" });
      const login = await request(a).post("/login/bob").set("X-Api-Token", "new");
      const token = login.headers["x-api-token"] as string;
      expect(token).toBeDefined();
      expect((await request(a).get("/me").set("X-Api-Token", token)).body).toEqual({ user: "bob" });
    });

    it("cookie and header transport together: the same rows, listed and revoked alike", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
      const { token } = await sessions.issueToken({ userId: "ann", label: "CLI" }, { maxAge: 60_000 });
      const devices = await request(a).get("/devices").set("Cookie", cookie);
      expect(devices.body).toHaveLength(2);
      const apiHandle = devices.body.find((d: any) => !d.current).handle;
      expect(await store.revoke(apiHandle, { userId: "ann" })).toBe(true);
      expect((await request(a).get("/me").set("Authorization", `Bearer ${token}`)).status).toBe(401);
      expect((await request(a).get("/me").set("Cookie", cookie)).status).toBe(200);
    });

    it("a token is never a fresh sign-in: it passes requireRecentLogin only while the session that minted it would, and a token minting a token gains nothing", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      a.post("/tokens", async (req, res, next) => {
        try {
          const from = req.query.from === "session" ? req.session : undefined;
          res.json(await sessions.issueToken({ userId: req.session.userId }, { from }));
        } catch (error) {
          next(error);
        }
      });
      a.get("/sensitive", store.requireRecentLogin(60_000, { onStale: (_req, res) => void res.writeHead(403).end() }), (_req, res) => res.json({ ok: true }));
      const bearer = (token: string) => `Bearer ${token}`;
      const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
      expect((await request(a).get("/sensitive").set("Cookie", cookie)).status).toBe(200);

      // Minted with no session to carry from: no sign-in time at all.
      const bare = (await sessions.issueToken({ userId: "ann" })).token;
      expect((await request(a).get("/me").set("Authorization", bearer(bare))).body).toEqual({ user: "ann" });
      expect((await request(a).get("/sensitive").set("Authorization", bearer(bare))).status).toBe(403);

      // Minted from the browser session just signed in: it keeps that sign-in time, not a new one.
      const carried = (await request(a).post("/tokens?from=session").set("Cookie", cookie)).body.token as string;
      expect((await request(a).get("/sensitive").set("Authorization", bearer(carried))).status).toBe(200);
      // A token minted by that token keeps the same time; one minted without `from` by a token has none.
      const chained = (await request(a).post("/tokens?from=session").set("Authorization", bearer(carried))).body.token as string;
      const chainedBare = (await request(a).post("/tokens").set("Authorization", bearer(carried))).body.token as string;
      expect((await request(a).get("/sensitive").set("Authorization", bearer(chained))).status).toBe(200);
      expect((await request(a).get("/sensitive").set("Authorization", bearer(chainedBare))).status).toBe(403);

      // Two minutes later the sign-in is stale everywhere: no token minted since renews it.
      await t.age(120_000);
      const late = (await request(a).post("/tokens?from=session").set("Authorization", bearer(chained))).body.token as string;
      for (const token of [carried, chained, late]) {
        expect((await request(a).get("/sensitive").set("Authorization", bearer(token))).status, [carried, chained, late].indexOf(token).toString()).toBe(403);
      }
      expect((await request(a).get("/sensitive").set("Cookie", cookie)).status).toBe(403);
      // A token carries a sign-in only of its own user.
      const other = (await sessions.issueToken({ userId: "bob" }, { from: undefined })).token;
      expect((await request(a).get("/sensitive").set("Authorization", bearer(other))).status).toBe(403);
    });

    it("a session revoked while its request mints a token mints nothing: issueToken fails with REAUTHENTICATION_REQUIRED (401), and no token is live", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      const errors: unknown[] = [];
      a.post("/tokens", async (req, res, next) => {
        try {
          // Another device signs this user out everywhere while this request is on its way.
          await store.revokeUser(req.session.userId!);
          res.json(await sessions.issueToken({ userId: req.session.userId }, { from: req.session }));
        } catch (error) {
          errors.push(error);
          next(error);
        }
      });
      const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
      expect((await request(a).post("/tokens").set("Cookie", cookie)).status).toBe(401);
      expect(errors).toEqual([expect.objectContaining({ code: "REAUTHENTICATION_REQUIRED", status: 401 })]);
      expect(await store.count({ userId: "ann" })).toBe(0);
    });

    it("the header wins over a cookie on the same request", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
      const { token } = await sessions.issueToken({ userId: "bob" });
      const me = await request(a).get("/me").set("Cookie", `${cookie}; theme=dark`).set("Authorization", `Bearer ${token}`);
      expect(me.body).toEqual({ user: "bob" });
    });

    /** GET /cookies: what the app sees of the request's Cookie header, and whose session it got. */
    const cookiesRoute = (x: Express) => x.get("/cookies", (req, res) => res.json({ cookie: req.headers.cookie ?? null, user: req.session.userId ?? null }));

    it("a header token replaces our cookie in the request; the app's other cookies survive", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      cookiesRoute(a);
      const bob = cookieOf(await request(a).post("/login/bob"), "sid")!;
      const { token } = await sessions.issueToken({ userId: "ann" });
      const seen = await request(a).get("/cookies").set("Cookie", `theme=dark; ${bob}; csrf=abc`).set("Authorization", `Bearer ${token}`);
      // Ours goes first, so it is the one express-session reads; no competing one of our name is left.
      expect(seen.body).toEqual({ cookie: `sid=${encodeURIComponent(`s:${token}`)}; theme=dark; csrf=abc`, user: "ann" });
      // A request without the header keeps its Cookie header as sent.
      const plain = await request(a).get("/cookies").set("Cookie", `theme=dark; ${bob}; csrf=abc`);
      expect(plain.body).toEqual({ cookie: `theme=dark; ${bob}; csrf=abc`, user: "bob" });
    });

    it("with cookie: false only our cookie is removed from the request, every copy of it; the app's others stay", async () => {
      const { app: a, sessions } = app({ header: "authorization", cookie: false });
      cookiesRoute(a);
      const { token } = await sessions.issueToken({ userId: "ann" });
      const cookie = "sid=s%3Aforged; theme=dark;sid=other; csrf=abc";
      const bare = await request(a).get("/cookies").set("Cookie", cookie);
      expect(bare.body).toEqual({ cookie: "theme=dark; csrf=abc", user: null });
      const withToken = await request(a).get("/cookies").set("Cookie", cookie).set("Authorization", `Bearer ${token}`);
      expect(withToken.body).toEqual({ cookie: `sid=${encodeURIComponent(`s:${token}`)}; theme=dark; csrf=abc`, user: "ann" });
      // Names are compared exactly: a cookie whose name merely contains ours is the app's.
      const lookalike = await request(a).get("/cookies").set("Cookie", "xsid=1; sid2=2; sid=3");
      expect(lookalike.body.cookie).toBe("xsid=1; sid2=2");
    });

    /** GET /me with the cookie and a malformed header: no session, the cookie's neither; then the cookie alone. */
    async function expectNoSessionFor(a: Express, cookie: string, header: string, values: string[]) {
      for (const value of values) {
        const me = await request(a).get("/me").set("Cookie", cookie).set(header, value);
        expect.soft(me.status, `${header}: ${value}`).toBe(401);
        expect.soft(cookieOf(me, "sid"), `${header}: ${value}`).toBeUndefined();
        expect.soft(me.headers["x-session-token"], `${header}: ${value}`).toBeUndefined();
      }
      // The cookie's session was only left out of those requests, not ended.
      expect((await request(a).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
    }

    it("a malformed Authorization header with a valid cookie gets no session, not the cookie's", async () => {
      const { app: a } = app({ header: "authorization" });
      const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
      expect((await request(a).get("/me").set("Cookie", cookie)).status).toBe(200);
      // "Bearer " arrives as "Bearer": Node trims header values.
      await expectNoSessionFor(a, cookie, "Authorization", [`Bearer ${"a".repeat(600)}`, "Bearer a b", "Basic dXNlcjpwdw==", "Bearer "]);
    });

    it("an empty or oversized named header with a valid cookie gets no session, not the cookie's", async () => {
      const { app: a } = app({ header: "x-session-token" });
      const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
      expect((await request(a).get("/me").set("Cookie", cookie)).status).toBe(200);
      await expectNoSessionFor(a, cookie, "X-Session-Token", ["", "a".repeat(600)]);
    });

    it("with a cookie parser before it, a header request still never gets the cookie's session", async () => {
      // What cookie-parser leaves on the request (with a secret, signed cookies as if verified with ours):
      // express-session falls back to these when the Cookie header gives it no valid id.
      const cookieParser = (signed: boolean) => (x: Express) =>
        x.use((req: any, _res, next) => {
          const parts: string[] = (req.headers.cookie ?? "").split(";").filter((p: string) => p.includes("="));
          const pairs = parts.map((p) => p.trim().split("=").map(decodeURIComponent) as [string, string]);
          req.cookies = Object.fromEntries(pairs);
          req.signedCookies = Object.fromEntries(
            signed ? pairs.filter(([, v]) => v.startsWith("s:")).map(([k, v]) => [k, v.slice(2, v.lastIndexOf("."))]) : [],
          );
          next();
        });
      for (const signed of [false, true]) {
        const { app: a } = app({ header: "authorization" }, cookieParser(signed));
        const cookie = cookieOf(await request(a).post("/login/ann"), "sid")!;
        expect((await request(a).get("/me").set("Cookie", cookie)).status).toBe(200);
        for (const value of ["Bearer forged.token", "Basic dXNlcjpwdw=="]) {
          const me = await request(a).get("/me").set("Cookie", cookie).set("Authorization", value);
          expect.soft(me.status, `signed: ${signed}, ${value}`).toBe(401);
        }
        const { app: headerOnly, sessions } = app({ header: "authorization", cookie: false }, cookieParser(signed));
        const { token } = await sessions.issueToken({ userId: "ann" });
        const me = await request(headerOnly)
          .get("/me")
          .set("Cookie", `sid=${encodeURIComponent(`s:${token}`)}`);
        expect.soft(me.status, `signed: ${signed}, cookie: false`).toBe(401);
      }
    });

    it("a rotated session's new token is sent back; the old one stops working", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      const { token: old } = await sessions.issueToken({ userId: "ann" });
      const rotated = await request(a).post("/login/ann").set("Authorization", `Bearer ${old}`);
      const fresh = rotated.headers["x-session-token"] as string;
      expect(fresh).toBeDefined();
      expect(fresh).not.toBe(old);
      expect((await request(a).get("/me").set("Authorization", `Bearer ${old}`)).status).toBe(401);
      expect((await request(a).get("/me").set("Authorization", `Bearer ${fresh}`)).status).toBe(200);
      expect(await store.count({ userId: "ann", status: "all" })).toBe(1);
    });

    it("a response that carries a token is Cache-Control: no-store, over the app's own value", async () => {
      const cacheable = (x: Express) =>
        x.use((_req, res, next) => {
          res.setHeader("Cache-Control", "public, max-age=600");
          next();
        });
      const { app: a } = app({ header: "authorization" }, cacheable);
      const login = await request(a).post("/login/ann").set("Authorization", "Bearer new");
      expect(login.headers["x-session-token"]).toBeDefined();
      expect(login.headers["cache-control"]).toBe("no-store");
      const { app: headerOnly } = app({ header: "x-session-token", cookie: false }, cacheable);
      const created = await request(headerOnly).post("/login/bob");
      expect(created.headers["x-session-token"]).toBeDefined();
      expect(created.headers["cache-control"]).toBe("no-store");
    });

    it("keeps the app's CORS headers and adds the token header to the exposed list", async () => {
      const { app: a } = app({ header: "authorization" }, (x) =>
        x.use((_req, res, next) => {
          res.setHeader("Access-Control-Allow-Origin", "https://app.example");
          res.setHeader("Access-Control-Expose-Headers", "X-Request-Id");
          next();
        }),
      );
      const login = await request(a).post("/login/ann").set("Authorization", "Bearer new");
      expect(login.headers["access-control-allow-origin"]).toBe("https://app.example");
      expect(login.headers["access-control-expose-headers"]).toBe("X-Request-Id, X-Session-Token");
    });

    it("with cookie: false, sessions only travel in the header and cookies are ignored", async () => {
      const { app: a } = app({ header: "authorization", cookie: false });
      const login = await request(a).post("/login/ann");
      expect(login.headers["set-cookie"]).toBeUndefined();
      const token = login.headers["x-session-token"] as string;
      expect(token).toBeDefined();
      expect((await request(a).get("/me").set("Authorization", `Bearer ${token}`)).status).toBe(200);
      expect(
        (
          await request(a)
            .get("/me")
            .set("Cookie", `sid=${encodeURIComponent(`s:${token}`)}`)
        ).status,
      ).toBe(401);
    });

    it("logout through the header ends the session", async () => {
      const { app: a, sessions } = app({ header: "authorization" });
      const { token } = await sessions.issueToken({ userId: "ann" });
      await request(a).post("/logout").set("Authorization", `Bearer ${token}`);
      expect((await request(a).get("/me").set("Authorization", `Bearer ${token}`)).status).toBe(401);
    });
  });
});

describe("sessionMiddleware: settings that cannot work fail at startup", () => {
  let store: SessionStore;
  useTestDb("pglite", (_db, fresh) => {
    store = fresh;
  });
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.restoreAllMocks();
  });
  const secret = "startup test secret";

  it.each<[string, boolean, Partial<SessionMiddlewareOptions>, RegExp]>([
    [
      "the production __Host- default with a Domain",
      true,
      { cookie: { domain: "example.com" } },
      /reject a `__Host-` cookie with a Domain, and the production default name `__Host-sid` has `cookie.domain: "example.com"`; drop `cookie.domain`.*`__Secure-sid`/,
    ],
    [
      "the production __Host- default on a sub-path",
      true,
      { cookie: { path: "/app" } },
      /reject a `__Host-` cookie whose Path is not "\/".*`cookie.path: "\/app"`; drop `cookie.path`, or set a `name` without `__Host-` \(e.g. `__Secure-sid`/,
    ],
    ["the production __Host- default without Secure", true, { cookie: { secure: false } }, /reject a `__Host-` cookie without Secure.*`cookie.secure: false`/],
    ["a __Host- name of the app's with a Domain", false, { name: "__Host-app", cookie: { domain: "example.com" } }, /the name `__Host-app` has `cookie.domain/],
    ["a __Host- name without Secure", false, { name: "__Host-app", cookie: { secure: false } }, /reject a `__Host-` cookie without Secure/],
    [
      "a __Secure- name without Secure",
      false,
      { name: "__Secure-app", cookie: { secure: false } },
      /reject a `__Secure-` cookie without Secure, and the name `__Secure-app` has `cookie.secure: false`; remove `cookie.secure: false`.*or use a `name` without `__Secure-`/,
    ],
  ])("%s is a TypeError that names the conflict and the fix", (_, production, options, message) => {
    if (production) vi.stubEnv("NODE_ENV", "production");
    expect(() => sessionMiddleware({ store, secret, ...options })).toThrow(TypeError);
    expect(() => sessionMiddleware({ store, secret, ...options })).toThrow(message);
  });

  it("accepts the prefixes with the attributes browsers want, and any name without cookie transport", () => {
    vi.stubEnv("NODE_ENV", "production");
    expect(() => sessionMiddleware({ store, secret, name: "__Secure-sid", cookie: { domain: "example.com", path: "/app" } })).not.toThrow();
    expect(() => sessionMiddleware({ store, secret, name: "sid", cookie: { domain: "example.com", secure: false } })).not.toThrow();
    expect(() => sessionMiddleware({ store, secret, cookie: { path: "/" } })).not.toThrow();
    expect(() => sessionMiddleware({ store, secret, name: "__Host-sid", cookie: false, header: "authorization" })).not.toThrow();
    vi.unstubAllEnvs();
    // "auto" is Secure on every https request, so a prefix is fine with it.
    expect(() => sessionMiddleware({ store, secret, name: "__Host-sid" })).not.toThrow();
  });

  it("clearSiteData takes true, false or a list of directives: anything else, or with cookie: false, is a TypeError that says what to pass", () => {
    for (const value of [true, false, ["cookies"], ["*"], ["cookies", "storage", "cache", "executionContexts"]]) {
      expect(() => sessionMiddleware({ store, secret, clearSiteData: value as any })).not.toThrow();
    }
    const what =
      /^connect-drizzle: `clearSiteData` must be true \(for "cookies" and "storage"\), false, or a list of directives, each once, from "cookies", "storage", "cache", "executionContexts" and "\*", e\.g\. \["cookies"\] \(got /;
    for (const [value, got] of [
      ["true", "a string"],
      ["cookies", "a string"],
      [1, "1"],
      [{ cookies: true }, "an object"],
      [[], "an array"],
      [["cookie"], "an array"],
      [["Cookies"], "an array"],
      [["cookies", "cookies"], "an array"],
      [null, "null"],
    ] as const) {
      expect(() => sessionMiddleware({ store, secret, clearSiteData: value as any }), String(got)).toThrow(TypeError);
      expect(() => sessionMiddleware({ store, secret, clearSiteData: value as any })).toThrow(new RegExp(`${what.source}${got}\\)$`));
    }
    expect(() => sessionMiddleware({ store, secret, cookie: false, header: "authorization", clearSiteData: true })).toThrow(
      /^connect-drizzle: `clearSiteData` clears a browser's data when its cookie session ends, and `cookie: false` leaves no cookie sessions .*; remove `clearSiteData`$/,
    );
    expect(() => sessionMiddleware({ store, secret, cookie: false, header: "authorization", clearSiteData: false })).not.toThrow();
  });

  it("a misspelt option is a TypeError naming it, the likely one and the known ones; express-session's own options pass", () => {
    expect(() => sessionMiddleware({ store, secret, saveUnitialized: true } as any)).toThrow(
      /unknown sessionMiddleware option `saveUnitialized` \(did you mean `saveUninitialized`\?\); the known options are store, secret, cookie, name, header, headerRoutes, responseHeader, clearSiteData, rolling, resave, saveUninitialized, genid, proxy, unset$/,
    );
    expect(() => sessionMiddleware({ store, secret, Header: "authorization" } as any)).toThrow(/`Header` \(did you mean `header`\?\)/);
    expect(() => sessionMiddleware({ store, secret, maxAge: 1000 } as any)).toThrow(/unknown sessionMiddleware option `maxAge`; the known/);
    const all: Required<Omit<SessionMiddlewareOptions, "header" | "cookie">> = {
      store,
      secret,
      name: "app.sid",
      headerRoutes: ["/api"],
      responseHeader: "X-Token",
      clearSiteData: ["cookies"],
      rolling: false,
      resave: false,
      saveUninitialized: false,
      genid: () => "x".repeat(32),
      proxy: true,
      unset: "destroy",
    };
    expect(() => sessionMiddleware({ ...all, header: "authorization", cookie: { maxAge: 1000 } })).not.toThrow();
  });

  describe("behind a proxy Express does not trust", () => {
    const untrusting = (x: Express) => x.set("trust proxy", false);
    const proxied = (a: Express) => request(a).post("/login/ann").set("X-Forwarded-Proto", "https");
    const trapWarnings = (warn: { mock: { calls: unknown[][] } }) =>
      warn.mock.calls.filter(([, options]) => (options as { code?: string } | undefined)?.code === "CONNECT_DRIZZLE_TRUST_PROXY");

    it("with Secure cookies (production): no cookie is set, and one warning names the fix", async () => {
      vi.stubEnv("NODE_ENV", "production");
      const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
      const { app: a } = middlewareApp(store, {}, untrusting);
      const first = await proxied(a);
      // The trap itself: express-session sends no Set-Cookie when req.secure is false.
      expect(first.headers["set-cookie"]).toBeUndefined();
      await proxied(a);
      const warnings = trapWarnings(warn);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]![0]).toMatch(
        /^connect-drizzle: a request came through an https proxy \(X-Forwarded-Proto: https\).*sends no session cookie.*`app.set\("trust proxy", 1\)` for one proxy hop/,
      );
    });

    it('with "auto" (outside production): the cookie loses Secure, and one warning says so', async () => {
      const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
      const { app: a } = middlewareApp(store, {}, untrusting);
      expect((await proxied(a)).headers["set-cookie"]![0]).not.toMatch(/Secure/);
      await proxied(a);
      const warnings = trapWarnings(warn);
      expect(warnings).toHaveLength(1);
      expect(warnings[0]![0]).toMatch(/sends the session cookie without Secure.*`app.set\("trust proxy", 1\)`/);
    });

    it("never warns when trust proxy is set, nor on plain http without the header", async () => {
      vi.stubEnv("NODE_ENV", "production");
      const warn = vi.spyOn(process, "emitWarning").mockImplementation(() => {});
      const { app: trusting } = middlewareApp(store, {}, (x) => x.set("trust proxy", 1));
      expect((await proxied(trusting)).headers["set-cookie"]![0]).toMatch(/Secure/);
      vi.unstubAllEnvs();
      const { app: dev } = middlewareApp(store, {}, untrusting);
      expect((await request(dev).post("/login/ann")).headers["set-cookie"]).toBeDefined();
      await request(dev).post("/login/bob");
      expect(trapWarnings(warn)).toHaveLength(0);
    });
  });
});
