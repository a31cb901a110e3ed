import fastifyCookie from "@fastify/cookie";
import fastifySession from "@fastify/session";
import Fastify, { type FastifyInstance } from "fastify";
import request from "supertest";
import { afterEach, describe, expect, it } from "vitest";
import { type BindingChangedEvent, type SessionEndedEvent, SessionStore, type SessionStoreOptions } from "../src/index.js";
import { cookieOf, middlewareApp, testApp } from "./support/app.js";
import { cacheReady, drivers, eventually, openPeer, type TestDb, useTestDb } from "./support/db.js";

declare module "fastify" {
  interface Session {
    userId?: string;
  }
}

const DAY = 86_400_000;
const SECRET = "a binding test secret of 32+ characters!";
const FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:139.0) Gecko/20100101 Firefox/139.0";
const FIREFOX_LINUX_NEWER = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
const CHROME_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/137.0.0.0 Safari/537.36";

/** A fastify app on @fastify/session with the docs' hook: POST /login/:user, GET /me, POST /count. */
async function fastifyApp(store: SessionStore): Promise<FastifyInstance> {
  const app = Fastify({ trustProxy: "127.0.0.1" });
  await app.register(fastifyCookie);
  await app.register(fastifySession, { store, secret: SECRET, cookieName: "sid", saveUninitialized: false, cookie: { secure: "auto" } });
  app.addHook("preHandler", async (request) => {
    if (await store.checkBinding(request.session)) await request.session.regenerate();
  });
  app.post<{ Params: { user: string } }>("/login/:user", async (request) => {
    await request.session.regenerate();
    request.session.userId = request.params.user;
    return { ok: true };
  });
  app.get("/me", async (request, reply) => (request.session.userId ? { user: request.session.userId } : reply.code(401).send({})));
  await app.ready();
  return app;
}

describe.each(drivers)("a session used from another device, on %s", (driver) => {
  let t: TestDb;
  const cleanup: Array<() => Promise<void>> = [];
  useTestDb(driver, (db) => void (t = db));
  afterEach(async () => {
    while (cleanup.length > 0) await cleanup.pop()!();
  });

  function storeWith(options: Partial<SessionStoreOptions> = {}) {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, retainEnded: DAY, ...options });
    cleanup.push(() => store.close());
    const changes: BindingChangedEvent[] = [];
    const ended: SessionEndedEvent[] = [];
    store.on("bindingChanged", (event) => void changes.push(event));
    store.on("ended", (event) => void ended.push(event));
    return { store, changes, ended, app: testApp(store) };
  }

  async function login(app: any, agent = FIREFOX_LINUX): Promise<string> {
    const res = await request(app).post("/login").set("User-Agent", agent).set("X-Forwarded-For", "203.0.113.5").send({ username: "ann", password: "pw" });
    expect(res.status).toBe(200);
    return cookieOf(res)!;
  }

  const me = (app: any, cookie: string, agent: string) =>
    request(app).get("/me").set("Cookie", cookie).set("User-Agent", agent).set("X-Forwarded-For", "198.51.100.9");

  it("a signed-in session moving from Firefox on Linux to Chrome on Windows is reported once, and its row records the new device", async () => {
    const { store, changes, app } = storeWith();
    const cookie = await login(app);
    expect((await me(app, cookie, CHROME_WINDOWS)).status).toBe(200);
    const [record] = await store.list({ userId: "ann" });
    expect(changes).toEqual([
      {
        handle: record!.handle,
        userId: "ann",
        label: null,
        userAgent: CHROME_WINDOWS,
        device: "Chrome on Windows",
        ip: "198.51.100.9",
        previousUserAgent: FIREFOX_LINUX,
        previousDevice: "Firefox on Linux",
        local: true,
      },
    ]);
    expect(record).toMatchObject({ userAgent: CHROME_WINDOWS, ip: "198.51.100.9" });
    // The row records Chrome now: its later requests are no change.
    expect((await me(app, cookie, CHROME_WINDOWS)).status).toBe(200);
    expect((await me(app, cookie, CHROME_WINDOWS)).status).toBe(200);
    expect(changes).toHaveLength(1);
  });

  it("is no change for a browser's update, the same device, or an anonymous session", async () => {
    const { changes, app } = storeWith({ onBindingChange: "end" });
    const cookie = await login(app);
    expect((await me(app, cookie, FIREFOX_LINUX)).status).toBe(200);
    expect((await me(app, cookie, FIREFOX_LINUX_NEWER)).status).toBe(200);
    const anonymous = cookieOf(await request(app).post("/count").set("User-Agent", FIREFOX_LINUX))!;
    const counted = await request(app).post("/count").set("Cookie", anonymous).set("User-Agent", CHROME_WINDOWS);
    expect(counted.body).toEqual({ views: 2 });
    expect(changes).toEqual([]);
  });

  describe.each([
    ["", {}],
    [" with the cache on", { cache: {} }],
    [" with encrypt", { encrypt: { secrets: SECRET } }],
  ] as Array<[string, Partial<SessionStoreOptions>]>)('onBindingChange: "end"%s', (_, options) => {
    // The cache listens through node-postgres or PGlite only.
    it.skipIf(driver === "postgres.js" && options.cache !== undefined)(
      "the request gets no session, the row ends as `binding` with its events, and the old cookie has no session after",
      async () => {
        const { store, changes, ended, app } = storeWith({ onBindingChange: "end", ...options });
        if (options.cache) expect(await cacheReady(store)).toBe(true);
        const cookie = await login(app);
        // Read once from the same device, so that a cache holds it.
        expect((await me(app, cookie, FIREFOX_LINUX)).status).toBe(200);
        const moved = await me(app, cookie, CHROME_WINDOWS);
        expect(moved.status).toBe(401);
        expect(moved.headers["set-cookie"]).toBeUndefined();
        expect(await eventually(() => ended.length > 0)).toBe(true);
        const [record] = await store.list({ userId: "ann", status: "all" });
        expect(record).toMatchObject({ status: "ended", endReason: "binding" });
        expect(ended).toEqual([expect.objectContaining({ handle: record!.handle, userId: "ann", reason: "binding", userAgent: FIREFOX_LINUX })]);
        expect(changes).toEqual([expect.objectContaining({ handle: record!.handle, device: "Chrome on Windows", previousDevice: "Firefox on Linux" })]);
        // Neither the new device nor the old one gets the session back.
        expect((await me(app, cookie, CHROME_WINDOWS)).status).toBe(401);
        expect((await me(app, cookie, FIREFOX_LINUX)).status).toBe(401);
        expect(ended).toHaveLength(1);
      },
    );
  });

  it('with sessionMiddleware too, "end" gives the request no session and no cookie of the old one', async () => {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, retainEnded: DAY, onBindingChange: "end" });
    cleanup.push(() => store.close());
    const { app } = middlewareApp(store, { cookie: { secure: false }, name: "sid" });
    const cookie = cookieOf(await request(app).post("/login/ann").set("User-Agent", FIREFOX_LINUX), "sid")!;
    expect((await request(app).get("/me").set("Cookie", cookie).set("User-Agent", FIREFOX_LINUX)).status).toBe(200);
    const moved = await request(app).get("/me").set("Cookie", cookie).set("User-Agent", CHROME_WINDOWS);
    expect(moved.status).toBe(401);
    expect(moved.headers["set-cookie"]).toBeUndefined();
    expect((await request(app).get("/me").set("Cookie", cookie).set("User-Agent", FIREFOX_LINUX)).status).toBe(401);
    expect(await store.list({ userId: "ann", status: "all" })).toEqual([expect.objectContaining({ endReason: "binding" })]);
  });

  it("`broadcast` tells the other instances, sealed", async () => {
    const peer = await openPeer(t);
    cleanup.push(() => peer.close());
    const other = new SessionStore({ db: peer.db, table: t.table, reaper: false, broadcast: true, secrets: SECRET });
    cleanup.push(() => other.close());
    await other.ready();
    const heard: BindingChangedEvent[] = [];
    other.on("bindingChanged", (event) => void heard.push(event));
    const { changes, app } = storeWith({ broadcast: true, secrets: SECRET });
    const cookie = await login(app);
    expect((await me(app, cookie, CHROME_WINDOWS)).status).toBe(200);
    expect(await eventually(() => heard.length > 0, 10_000)).toBe(true);
    expect(heard).toEqual([{ ...changes[0], local: false }]);
  });

  describe("through @fastify/session, with the docs' preHandler hook", () => {
    async function fastifyLogin(app: FastifyInstance): Promise<string> {
      const res = await app.inject({ method: "POST", url: "/login/ann", headers: { "user-agent": FIREFOX_LINUX } });
      const set = res.cookies.find((c) => c.name === "sid");
      return `sid=${set!.value}`;
    }

    it("reports the change once", async () => {
      const { store, changes } = storeWith();
      const app = await fastifyApp(store);
      cleanup.push(() => app.close());
      const cookie = await fastifyLogin(app);
      expect((await app.inject({ url: "/me", headers: { cookie, "user-agent": FIREFOX_LINUX_NEWER } })).statusCode).toBe(200);
      expect((await app.inject({ url: "/me", headers: { cookie, "user-agent": CHROME_WINDOWS } })).statusCode).toBe(200);
      expect((await app.inject({ url: "/me", headers: { cookie, "user-agent": CHROME_WINDOWS } })).statusCode).toBe(200);
      expect(changes).toEqual([expect.objectContaining({ userId: "ann", device: "Chrome on Windows", previousUserAgent: FIREFOX_LINUX_NEWER })]);
    });

    it('with "end", the handler sees a new empty session and the response carries no cookie of the old one', async () => {
      const { store, ended } = storeWith({ onBindingChange: "end" });
      const app = await fastifyApp(store);
      cleanup.push(() => app.close());
      const cookie = await fastifyLogin(app);
      const moved = await app.inject({ url: "/me", headers: { cookie, "user-agent": CHROME_WINDOWS } });
      expect(moved.statusCode).toBe(401);
      const old = cookie.slice("sid=".length);
      for (const set of moved.cookies) expect(set.value).not.toBe(old);
      expect(ended).toEqual([expect.objectContaining({ reason: "binding" })]);
      expect((await app.inject({ url: "/me", headers: { cookie, "user-agent": FIREFOX_LINUX } })).statusCode).toBe(401);
    });
  });
});
