import express, { type Express } from "express";
import session from "express-session";
import request from "supertest";
import { afterEach, describe, expect, it } from "vitest";
import { rotateSession, SessionStore, sessionMiddleware, type SessionEndedEvent, type SessionStoreOptions } from "../src/index.js";
import { cookieOf, fastifyApp } from "./support/app.js";
import { cacheReady, drivers, notifyBarrier, sessionData, sleep, type TestDb, useTestDb } from "./support/db.js";

/*
 * Rotation that keeps the session (rotateSession, markAuthenticated of a request, renewAfter) and theft
 * detection (an id rotated away from, used after its grace window): through sessionMiddleware, plain
 * express-session and @fastify/session, on every driver, with the cache on and off and with encryption.
 */

const HOUR = 3_600_000;
const ENCRYPT = { secrets: "a rotation test encryption secret of 32+ characters" };

/** An app on sessionMiddleware: sign-in, a cart, rotation, re-authentication, sign-out, the user's records. */
function rotationApp(store: SessionStore): Express {
  const app = express();
  app.use(express.json());
  app.use(sessionMiddleware({ store, secret: "rotation test secret", cookie: { secure: false, maxAge: HOUR } }));
  app.post("/login/:user", (req, res) => {
    req.session.userId = req.params.user;
    res.json({ ok: true });
  });
  app.post("/cart/:item", (req, res) => {
    const cart = ((req.session as any).cart ?? []) as string[];
    (req.session as any).cart = [...cart, req.params.item];
    res.json({ cart: (req.session as any).cart });
  });
  app.get("/me", (req, res) => res.json({ user: req.session.userId ?? null, cart: (req.session as any).cart ?? [] }));
  app.post("/rotate", async (req, res, next) => {
    try {
      res.json({ rotated: await rotateSession(req) });
    } catch (error) {
      next(error);
    }
  });
  app.post("/reauth", async (req, res, next) => {
    try {
      res.json({ marked: await store.markAuthenticated(req) });
    } catch (error) {
      next(error);
    }
  });
  app.post("/logout", (req, res, next) => req.session.destroy((err) => (err ? next(err) : res.json({ ok: true }))));
  app.use((err: any, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    res.status(err.status ?? 500).json({ code: err.code ?? null });
  });
  return app;
}

const sid = (cookie: string) => decodeURIComponent(cookie.split("=")[1]!).slice(2).split(".")[0]!;

describe.each(drivers)("rotation on %s", (driver) => {
  let t: TestDb;
  const stores: SessionStore[] = [];
  useTestDb(driver, (db) => void (t = db));
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });

  async function storeWith(options: Partial<SessionStoreOptions> = {}): Promise<SessionStore> {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, retainEnded: HOUR, ...options });
    stores.push(store);
    if (options.cache) expect(await cacheReady(store)).toBe(true);
    return store;
  }

  // The read cache listens through node-postgres and PGlite only.
  const variants: Array<Partial<SessionStoreOptions>> = [
    {},
    { encrypt: ENCRYPT },
    ...(driver === "postgres.js" ? [] : [{ cache: {} }, { cache: {}, encrypt: ENCRYPT }]),
  ];

  describe.each(variants.map((v) => [Object.keys(v).join("+") || "plain", v] as const))("%s", (_name, variant) => {
    async function signedIn(options: Partial<SessionStoreOptions> = {}) {
      const store = await storeWith({ ...variant, ...options });
      const app = rotationApp(store);
      const cookie = cookieOf(await request(app).post("/login/ann"), "sid")!;
      await request(app).post("/cart/book").set("Cookie", cookie).expect(200);
      return { store, app, cookie };
    }

    it("rotateSession gives the session a new id and keeps its data, handle, owner, creation and absolute expiry", async () => {
      const { store, app, cookie } = await signedIn({ absoluteTimeout: HOUR });
      const [before] = await store.list({ userId: "ann" });
      const res = await request(app).post("/rotate").set("Cookie", cookie).expect(200);
      expect(res.body).toEqual({ rotated: true });
      const rotated = cookieOf(res, "sid")!;
      expect(sid(rotated)).not.toBe(sid(cookie));
      expect((await request(app).get("/me").set("Cookie", rotated)).body).toEqual({ user: "ann", cart: ["book"] });
      const after = await store.list({ userId: "ann", status: "all", current: sid(rotated) });
      expect(after).toHaveLength(1);
      expect(after[0]).toMatchObject({ handle: before!.handle, createdAt: before!.createdAt, absoluteExpiresAt: before!.absoluteExpiresAt, current: true });
    });

    it("the old id opens the same session within the grace window: its writes land there, and its response does not send it back", async () => {
      const { app, cookie } = await signedIn();
      const rotated = cookieOf(await request(app).post("/rotate").set("Cookie", cookie), "sid")!;
      const late = await request(app).post("/cart/pen").set("Cookie", cookie).expect(200);
      expect(late.body).toEqual({ cart: ["book", "pen"] });
      expect(cookieOf(late, "sid")).toBeUndefined();
      expect((await request(app).get("/me").set("Cookie", rotated)).body).toEqual({ user: "ann", cart: ["book", "pen"] });
      // An id already rotated away from is not rotated again (two new ids would fork the browser's cookie).
      expect((await request(app).post("/rotate").set("Cookie", cookie)).body).toEqual({ rotated: false });
    });

    it("after the grace window the old id ends the session everywhere: reason reused, an ended event, SESSION_REUSED (401)", async () => {
      const { store, app, cookie } = await signedIn({ rotationGrace: 150 });
      const ended: SessionEndedEvent[] = [];
      store.on("ended", (event) => ended.push(event));
      const rotated = cookieOf(await request(app).post("/rotate").set("Cookie", cookie), "sid")!;
      expect((await request(app).get("/me").set("Cookie", rotated)).body.user).toBe("ann");
      await sleep(300);
      const reused = await request(app).get("/me").set("Cookie", cookie);
      expect(reused.status).toBe(401);
      expect(reused.body).toEqual({ code: "SESSION_REUSED" });
      expect(ended).toEqual([expect.objectContaining({ reason: "reused", userId: "ann" })]);
      expect((await request(app).get("/me").set("Cookie", rotated)).body.user).toBeNull();
      expect((await store.list({ userId: "ann", status: "ended" }))[0]?.endReason).toBe("reused");
      // Once ended, the old id is unknown like any other.
      expect((await request(app).get("/me").set("Cookie", cookie)).status).toBe(200);
    });

    it("a request that read the session before a rotation and answers after it does not send the old id back", async () => {
      const { store, cookie } = await signedIn();
      let release!: () => void;
      const held = new Promise<void>((resolve) => void (release = resolve));
      const app = express();
      app.use(sessionMiddleware({ store, secret: "rotation test secret", cookie: { secure: false, maxAge: HOUR } }));
      app.get("/slow", async (req, res) => {
        await held;
        (req.session as any).seen = true;
        res.json({ user: req.session.userId ?? null });
      });
      app.post("/rotate", async (req, res) => void res.json({ rotated: await rotateSession(req) }));
      const slow = request(app)
        .get("/slow")
        .set("Cookie", cookie)
        .then((r) => r);
      await sleep(100);
      const rotated = cookieOf(await request(app).post("/rotate").set("Cookie", cookie), "sid")!;
      expect(sid(rotated)).not.toBe(sid(cookie));
      release();
      const late = await slow;
      expect(late.body).toEqual({ user: "ann" });
      expect(cookieOf(late, "sid")).toBeUndefined();
      expect(((await store.get(sid(rotated))) as any)?.seen).toBe(true);
    });

    it("with the cache, a request in flight on another instance during a rotation does not send the old id back either", async () => {
      if (!variant.cache) return;
      const { store, cookie } = await signedIn();
      const other = await storeWith({ ...variant });
      let release!: () => void;
      const held = new Promise<void>((resolve) => void (release = resolve));
      const slowApp = express();
      slowApp.use(sessionMiddleware({ store: other, secret: "rotation test secret", cookie: { secure: false, maxAge: HOUR } }));
      slowApp.get("/slow", async (req, res) => {
        await held;
        res.json({ user: req.session.userId ?? null });
      });
      const slow = request(slowApp)
        .get("/slow")
        .set("Cookie", cookie)
        .then((r) => r);
      await sleep(100);
      const rotated = cookieOf(await request(rotationApp(store)).post("/rotate").set("Cookie", cookie), "sid")!;
      expect(sid(rotated)).not.toBe(sid(cookie));
      // Once the other instance heard the rotation (its cache's LISTEN).
      await notifyBarrier(other);
      release();
      const late = await slow;
      expect(late.body).toEqual({ user: "ann" });
      expect(cookieOf(late, "sid")).toBeUndefined();
    });

    it("with detectReuse false, the old id after the grace window opens nothing and ends nothing", async () => {
      const { app, cookie } = await signedIn({ rotationGrace: 100, detectReuse: false });
      const rotated = cookieOf(await request(app).post("/rotate").set("Cookie", cookie), "sid")!;
      await sleep(250);
      expect((await request(app).get("/me").set("Cookie", cookie)).body).toEqual({ user: null, cart: [] });
      expect((await request(app).get("/me").set("Cookie", rotated)).body.user).toBe("ann");
    });

    it("a sign-out with the old id ends the session: a request within the grace window, and the store's destroy after it", async () => {
      const { app, cookie } = await signedIn();
      const rotated = cookieOf(await request(app).post("/rotate").set("Cookie", cookie), "sid")!;
      await request(app).post("/logout").set("Cookie", cookie).expect(200);
      expect((await request(app).get("/me").set("Cookie", rotated)).body.user).toBeNull();
      const later = await signedIn({ rotationGrace: 50, detectReuse: false });
      const renewed = cookieOf(await request(later.app).post("/rotate").set("Cookie", later.cookie), "sid")!;
      await sleep(150);
      await later.store.destroy(sid(later.cookie));
      expect((await request(later.app).get("/me").set("Cookie", renewed)).body.user).toBeNull();
    });

    it("markAuthenticated(req) rotates the id and restarts the idle and absolute clocks", async () => {
      const { store, app, cookie } = await signedIn({ absoluteTimeout: HOUR });
      const [before] = await store.list({ userId: "ann" });
      await sleep(50);
      const res = await request(app).post("/reauth").set("Cookie", cookie).expect(200);
      expect(res.body).toEqual({ marked: true });
      const rotated = cookieOf(res, "sid")!;
      expect(sid(rotated)).not.toBe(sid(cookie));
      const [after] = await store.list({ userId: "ann" });
      expect(after!.handle).toBe(before!.handle);
      expect(after!.authenticatedAt!.getTime()).toBeGreaterThan(before!.authenticatedAt!.getTime());
      expect(after!.absoluteExpiresAt!.getTime()).toBeGreaterThanOrEqual(before!.absoluteExpiresAt!.getTime() + 40);
      expect(after!.expiresAt.getTime()).toBeGreaterThanOrEqual(before!.expiresAt.getTime() + 40);
      expect((await request(app).get("/me").set("Cookie", rotated)).body).toEqual({ user: "ann", cart: ["book"] });
    });

    it("with restartOnReauthentication false, markAuthenticated(req) rotates but keeps the absolute expiry", async () => {
      const { store, app, cookie } = await signedIn({ absoluteTimeout: HOUR, restartOnReauthentication: false });
      const [before] = await store.list({ userId: "ann" });
      await sleep(50);
      const rotated = cookieOf(await request(app).post("/reauth").set("Cookie", cookie).expect(200), "sid")!;
      expect(sid(rotated)).not.toBe(sid(cookie));
      const [after] = await store.list({ userId: "ann" });
      expect(after!.absoluteExpiresAt).toEqual(before!.absoluteExpiresAt);
      expect(after!.authenticatedAt!.getTime()).toBeGreaterThan(before!.authenticatedAt!.getTime());
    });

    it("renewAfter gives a session whose id is older than it a new id on its next request, the old one within its grace window", async () => {
      const started = performance.now();
      const { app, cookie } = await signedIn({ renewAfter: 1_000 });
      const fresh = await request(app).get("/me").set("Cookie", cookie);
      // (Only when this machine was quick enough for the id to be younger than renewAfter still.)
      if (performance.now() - started < 900) expect(cookieOf(fresh, "sid") === undefined || sid(cookieOf(fresh, "sid")!) === sid(cookie)).toBe(true);
      await sleep(1_100);
      const renewed = cookieOf(await request(app).get("/me").set("Cookie", cookie).expect(200), "sid")!;
      expect(sid(renewed)).not.toBe(sid(cookie));
      expect((await request(app).get("/me").set("Cookie", renewed)).body).toEqual({ user: "ann", cart: ["book"] });
      expect((await request(app).get("/me").set("Cookie", cookie)).body.user).toBe("ann");
    });
  });

  describe("at the store", () => {
    it("concurrent rotations of one session give it one new id: the others report false and open nothing", async () => {
      const store = await storeWith();
      await store.set("s1", sessionData(HOUR, { userId: "ann" }));
      const ids = Array.from({ length: 8 }, (_, i) => `s1-new-${i}`);
      const results = await Promise.all(ids.map((id) => store.rotate("s1", id)));
      expect(results.filter(Boolean)).toHaveLength(1);
      const winner = ids[results.indexOf(true)]!;
      expect((await store.get(winner))?.userId).toBe("ann");
      for (const id of ids.filter((id) => id !== winner)) expect(await store.get(id)).toBeNull();
      expect(await store.count({ userId: "ann", status: "all" })).toBe(1);
    });

    for (const encrypt of [undefined, ENCRYPT]) {
      it(`a save by a request that read the session before it was rotated lands in it${encrypt ? " (encrypt)" : ""}`, async () => {
        const store = await storeWith({ encrypt });
        await store.set("s1", sessionData(HOUR, { userId: "ann", cart: ["book"] }));
        const read = (await store.get("s1"))!;
        expect(await store.rotate("s1", "s2")).toBe(true);
        expect(await store.rotate("s2", "s3")).toBe(true);
        (read as any).cart = ["book", "pen"];
        await store.set("s1", read);
        expect(((await store.get("s3")) as any)?.cart).toEqual(["book", "pen"]);
      });
    }

    it("every id a session was rotated away from stays known: each opens it within its own grace window, and reuse of any ends it", async () => {
      const store = await storeWith({ rotationGrace: 150 });
      await store.set("s1", sessionData(HOUR, { userId: "ann" }));
      expect(await store.rotate("s1", "s2")).toBe(true);
      expect(await store.rotate("s2", "s3")).toBe(true);
      // A request still in flight with the first id (two rotations back) is served, and its sign-out would end the session.
      expect((await store.get("s1"))?.userId).toBe("ann");
      await sleep(300);
      await expect(store.get("s1")).rejects.toMatchObject({ code: "SESSION_REUSED", status: 401 });
      expect(await store.get("s3")).toBeNull();
      expect((await store.list({ userId: "ann", status: "ended" }))[0]?.endReason).toBe("reused");
    });

    it("a sign-out with an id two rotations back still ends the session", async () => {
      const store = await storeWith();
      await store.set("s1", sessionData(HOUR, { userId: "ann" }));
      await store.rotate("s1", "s2");
      await store.rotate("s2", "s3");
      await store.destroy("s1");
      expect(await store.get("s3")).toBeNull();
    });

    it("an id a session was rotated away from never becomes a session of its own", async () => {
      const store = await storeWith();
      await store.set("s1", sessionData(HOUR, { userId: "ann" }));
      await store.rotate("s1", "s2");
      await store.set("s1", sessionData(HOUR, { userId: "eve" }));
      expect(await store.count({ userId: "eve" })).toBe(0);
      expect((await store.get("s2"))?.userId).toBe("ann");
    });

    it("markAuthenticated of a session id restarts the absolute clock without a new id", async () => {
      const store = await storeWith({ absoluteTimeout: HOUR });
      await store.set("s1", sessionData(HOUR, { userId: "ann" }));
      const [before] = await store.list({ userId: "ann" });
      await sleep(50);
      expect(await store.markAuthenticated("s1")).toBe(true);
      const [after] = await store.list({ userId: "ann", current: "s1" });
      expect(after!.current).toBe(true);
      expect(after!.absoluteExpiresAt!.getTime()).toBeGreaterThanOrEqual(before!.absoluteExpiresAt!.getTime() + 40);
    });
  });

  describe("plain express-session and @fastify/session", () => {
    it("plain express-session: rotating needs store.rotation() after the session middleware, and works with it", async () => {
      const store = await storeWith();
      const build = (hooked: boolean) => {
        const app = express();
        app.use(session({ store, secret: "plain secret", resave: false, saveUninitialized: false }));
        if (hooked) app.use(store.rotation());
        app.post("/login", (req, res) => {
          req.session.userId = "ann";
          res.json({ ok: true });
        });
        app.post("/rotate", (req, res) => {
          rotateSession(req).then(
            (rotated) => res.json({ rotated }),
            (error) => res.status(500).json({ error: String(error.message) }),
          );
        });
        app.get("/me", (req, res) => res.json({ user: req.session.userId ?? null }));
        return app;
      };
      const bare = build(false);
      const cookie = cookieOf(await request(bare).post("/login"))!;
      expect((await request(bare).post("/rotate").set("Cookie", cookie)).body.error).toMatch(/store\.rotation\(\)/);
      const hooked = build(true);
      const rotated = cookieOf(await request(hooked).post("/rotate").set("Cookie", cookie))!;
      expect(rotated).not.toBe(cookie);
      expect((await request(hooked).get("/me").set("Cookie", rotated)).body.user).toBe("ann");
      const late = await request(hooked).get("/me").set("Cookie", cookie);
      expect(late.body.user).toBe("ann");
      expect(cookieOf(late)).toBeUndefined();
    });

    it("@fastify/session: rotateSession gives the request a new id and cookie, keeping the data; the old one's response does not send it back", async () => {
      const store = await storeWith();
      const app = await fastifyApp(store);
      app.addHook("preHandler", store.rotation());
      app.post("/login", async (req) => {
        req.session.set("userId" as any, "ann");
        return { ok: true };
      });
      app.post("/rotate", async (req) => ({ rotated: await rotateSession(req) }));
      app.get("/me", async (req) => ({ user: req.session.get("userId" as any) ?? null }));
      const cookieIn = (res: { cookies: Array<{ name: string; value: string }> }) => res.cookies.find((c) => c.name === "sid")?.value;
      const first = cookieIn(await app.inject({ method: "POST", url: "/login" }))!;
      const res = await app.inject({ method: "POST", url: "/rotate", cookies: { sid: first } });
      expect(res.json(), res.body).toEqual({ rotated: true });
      const rotated = cookieIn(res)!;
      expect(rotated).toBeDefined();
      expect(rotated).not.toBe(first);
      expect((await app.inject({ method: "GET", url: "/me", cookies: { sid: rotated } })).json()).toEqual({ user: "ann" });
      const late = await app.inject({ method: "GET", url: "/me", cookies: { sid: first } });
      expect(late.json()).toEqual({ user: "ann" });
      expect(cookieIn(late)).toBeUndefined();
      await app.close();
    });
  });
});
