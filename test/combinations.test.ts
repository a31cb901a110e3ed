import { inspect } from "node:util";
import express from "express";
import session from "express-session";
import request from "supertest";
import { afterEach, describe, expect, it, vi } from "vitest";
import { SessionStore, type SessionStoreOptions } from "../src/index.js";
import pg from "pg";
import { cacheReady, DATABASE_URL, drivers, notifyBarrier, sessionData, sleep, type TestDb, useTestDb } from "./support/db.js";
import { fastifyApp } from "./support/app.js";

const HOUR = 3_600_000;
const OLD = "an old data secret, 32 characters or more";
const NEW = "a new data secret, 32 characters or more!";

/**
 * Promises that features must keep together (merged saves, encryption with key rotation, the read cache,
 * re-authentication): each test is a combination that once broke one. The racing model
 * (test/support/model.ts) drives random races over the same combinations.
 */
describe.each(drivers)("features combined on %s", (driver) => {
  let t: TestDb;
  const open: SessionStore[] = [];
  useTestDb(driver, (db) => {
    t = db;
  });
  afterEach(async () => {
    while (open.length > 0) await open.pop()!.close();
  });
  const storeWith = (options: Partial<SessionStoreOptions> = {}) => {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, ...options });
    open.push(store);
    return store;
  };
  const rowOf = async () => (await t.raw(`select user_id, label, data::text as data from $table`))[0];

  describe("a sign-out is never undone by a re-seal", () => {
    it.each([
      ["a key rotation (rows sealed under the old secret)", { encrypt: { secrets: OLD } }, { encrypt: { secrets: [NEW, OLD] } }],
      ["the plaintext changeover (acceptPlaintext)", {}, { encrypt: { secrets: NEW, acceptPlaintext: true } }],
    ] as const)(
      "during %s, a tab that read the user before the sign-out and only reads again (its touch writes) does not sign the user back in",
      async (_, before, after) => {
        const writer = storeWith(before);
        await writer.set("tabs", sessionData(HOUR, { passport: { user: "ann" }, cart: [1] }));
        const rotated = storeWith({ ...after, touchAfter: 0 });
        const tab1: any = await rotated.get("tabs");
        const tab2: any = await rotated.get("tabs");
        delete tab1.passport;
        await rotated.set("tabs", tab1);
        // The other tab only read: express-session touches its session at the end of the request.
        tab2.cookie.expires = new Date(Date.now() + 2 * HOUR).toISOString();
        await rotated.touch("tabs", tab2);
        const now: any = await rotated.get("tabs");
        expect(now.passport).toBeUndefined();
        expect(now.cart).toEqual([1]);
      },
    );

    it("during a key rotation, a tab that read the user before the sign-out and saves a change of its own keeps its change and the sign-out", async () => {
      const writer = storeWith({ encrypt: { secrets: OLD } });
      await writer.set("tabs", sessionData(HOUR, { passport: { user: "ann" }, cart: [1] }));
      const rotated = storeWith({ encrypt: { secrets: [NEW, OLD] } });
      const tab1: any = await rotated.get("tabs");
      const tab2: any = await rotated.get("tabs");
      delete tab1.passport;
      await rotated.set("tabs", tab1);
      tab2.theme = "dark";
      await rotated.set("tabs", tab2);
      const now: any = await rotated.get("tabs");
      expect(now.passport).toBeUndefined();
      expect(now.theme).toBe("dark");
      expect(now.cart).toEqual([1]);
      // Every entry the reads opened is sealed under the new secret now, once the row was re-sealed.
      const stale: any = await rotated.get("tabs");
      stale.cookie.expires = new Date(Date.now() + 3 * HOUR).toISOString();
      await storeWith({ encrypt: { secrets: [NEW, OLD] }, touchAfter: 0 }).touch("tabs", stale);
      expect(await storeWith({ encrypt: { secrets: NEW } }).get("tabs")).toMatchObject({ theme: "dark", cart: [1] });
    });
  });

  describe("the owner column names the owner the stored data names", () => {
    it.each([
      ["merged saves", {}],
      ["merged, encrypted saves", { encrypt: { secrets: NEW } }],
    ] as const)("with %s, a tab that read user A does not set the owner back after the session signed in as B in place", async (_, options) => {
      const store = storeWith(options);
      await store.set("owner", sessionData(HOUR, { passport: { user: "ann" }, label: "Laptop" }));
      const tab1: any = await store.get("owner");
      const tab2: any = await store.get("owner");
      tab2.passport = { user: "bob" };
      tab2.label = "Bob's laptop";
      await store.set("owner", tab2);
      tab1.cart = ["book"];
      await store.set("owner", tab1);
      const now: any = await store.get("owner");
      expect(now).toMatchObject({ passport: { user: "bob" }, label: "Bob's laptop", cart: ["book"] });
      expect(await rowOf()).toMatchObject({ user_id: "bob", label: "Bob's laptop" });
      expect((await store.list({ userId: "ann" })).length).toBe(0);
      expect(await store.revokeUser("bob")).toBe(1);
    });
  });

  describe("a rotation is not a sign-in", () => {
    /** An express app whose /rotate gives the session a new id and copies its data back (express-session's regenerate). */
    function rotatingApp(store: SessionStore) {
      const app = express();
      app.use(session({ store, secret: "rotation test", resave: false, saveUninitialized: false, cookie: { maxAge: HOUR } }));
      app.post("/login/:user", (req, res, next) =>
        req.session.regenerate((err) => {
          if (err) return next(err);
          (req.session as any).userId = req.params.user;
          res.json({ ok: true });
        }),
      );
      app.post("/rotate", (req, res, next) => {
        const kept = { ...req.session } as any;
        delete kept.cookie;
        req.session.regenerate((err) => {
          if (err) return next(err);
          Object.assign(req.session, kept);
          res.json({ ok: true });
        });
      });
      app.get("/sensitive", store.requireRecentLogin(10 * 60_000), (_req, res) => res.json({ ok: true }));
      app.use((err: any, _req: any, res: any, _next: any) => res.status(err.status ?? 500).json({ code: err.code }));
      return app;
    }
    const cookieOf = (res: any) => String(res.headers["set-cookie"]).split(";")[0]!;

    it("express-session: regenerate then copying the data back keeps a two-hour-old sign-in two hours old", async () => {
      const store = storeWith();
      const app = rotatingApp(store);
      const cookie = cookieOf(await request(app).post("/login/ann"));
      await t.raw(`update $table set authenticated_at = authenticated_at - interval '2 hours'`);
      expect((await request(app).get("/sensitive").set("Cookie", cookie)).status).toBe(401);
      const rotated = await request(app).post("/rotate").set("Cookie", cookie);
      const next = cookieOf(rotated);
      expect(next).not.toBe(cookie);
      expect((await request(app).get("/sensitive").set("Cookie", next)).status).toBe(401);
      const [row] = await t.raw(`select round(date_part('epoch', now() - authenticated_at)) as age from $table where ended_at is null`);
      expect(Number(row.age)).toBeGreaterThan(2 * 3600 - 60);
      // A login (the session gains the user) is a sign-in.
      const fresh = cookieOf(await request(app).post("/login/ann"));
      expect((await request(app).get("/sensitive").set("Cookie", fresh)).status).toBe(200);
    });

    it("@fastify/session: regenerate(['userId']) keeps a two-hour-old sign-in two hours old", async () => {
      const store = storeWith();
      const app = await fastifyApp(store, { cookie: { secure: false, maxAge: HOUR } });
      app.post<{ Params: { user: string } }>("/login/:user", async (req) => {
        await req.session.regenerate();
        (req.session as any).userId = req.params.user;
        return { ok: true };
      });
      app.post("/rotate", async (req) => {
        await req.session.regenerate(["userId"]);
        return { ok: true };
      });
      app.get("/sensitive", async (req, reply) => {
        const at = store.authenticatedAt(req.session);
        return reply.code(at !== null && at.getTime() > Date.now() - 10 * 60_000 ? 200 : 401).send({});
      });
      try {
        const login = await app.inject({ method: "POST", url: "/login/ann" });
        const cookie = String(login.headers["set-cookie"]).split(";")[0]!;
        await t.raw(`update $table set authenticated_at = authenticated_at - interval '2 hours'`);
        const rotated = await app.inject({ method: "POST", url: "/rotate", headers: { cookie } });
        const next = String(rotated.headers["set-cookie"]).split(";")[0]!;
        expect(next).not.toBe(cookie);
        expect((await app.inject({ method: "GET", url: "/sensitive", headers: { cookie: next } })).statusCode).toBe(401);
        const [row] = await t.raw(`select round(date_part('epoch', now() - authenticated_at)) as age, user_id from $table where ended_at is null`);
        expect(row.user_id).toBe("ann");
        expect(Number(row.age)).toBeGreaterThan(2 * 3600 - 60);
      } finally {
        await app.close();
      }
    });
  });

  it("a sign-in read before this server's clock was stepped back stays as old as it is (a cached session's included)", async () => {
    const store = storeWith(driver === "postgres.js" ? {} : { cache: {} });
    if (driver !== "postgres.js") expect(await cacheReady(store)).toBe(true);
    await storeWith().set("stepped", sessionData(HOUR, { passport: { user: "ann" } }));
    await t.raw(`update $table set authenticated_at = authenticated_at - interval '2 hours'`);
    const loaded = (await store.get("stepped"))!;
    expect(Date.now() - store.authenticatedAt(loaded)!.getTime()).toBeGreaterThan(2 * HOUR - 60_000);
    const real = Date.now.bind(Date);
    const spy = vi.spyOn(Date, "now").mockImplementation(() => real() - 3 * HOUR);
    try {
      // NTP (or a resumed VM) stepped the wall clock back: the sign-in is still two hours old.
      for (const session of [loaded, (await store.get("stepped"))!]) {
        expect(Date.now() - store.authenticatedAt(session)!.getTime()).toBeGreaterThan(2 * HOUR - 60_000);
      }
    } finally {
      spy.mockRestore();
    }
  });

  it.each([
    ["merge: false", { merge: false }],
    ["versioned", { versioned: true }],
    ["merged saves", {}],
  ] as const)("with %s, a save that changed only the cookie's maxAge does not write its stale view over another tab's change", async (_, options) => {
    const store = storeWith(options);
    await store.set("maxage", sessionData(HOUR, { passport: { user: "ann" } }));
    const tab1: any = await store.get("maxage");
    const tab2: any = await store.get("maxage");
    tab1.cart = ["book"];
    await store.set("maxage", tab1);
    // "Remember me" turned off in the other tab: a shorter maxAge, nothing else.
    tab2.cookie.originalMaxAge = 60_000;
    tab2.cookie.expires = new Date(Date.now() + 60_000).toISOString();
    await store.set("maxage", tab2);
    const now: any = await store.get("maxage");
    expect(now.cart).toEqual(["book"]);
    expect(now.cookie.originalMaxAge).toBe(60_000);
  });

  it.runIf(driver !== "pglite")(
    "under a cap, extend of an expired session that another connection ends meanwhile neither extends it nor says it did",
    async () => {
      const store = storeWith({ maxSessionsPerUser: 2, retainEnded: HOUR });
      await store.set("raced", sessionData(HOUR, { passport: { user: "ann" } }));
      const [record] = await store.list({ userId: "ann" });
      await t.age(2 * HOUR);
      // The reaper (or a revoke on another instance) ends it in a transaction still open when extend runs.
      const other = new pg.Client({ connectionString: DATABASE_URL });
      await other.connect();
      try {
        await other.query("begin");
        await other.query(`update "${t.schema}"."sessions" set ended_at = now(), end_reason = 'expired' where handle = $1`, [record!.handle]);
        const extending = store.extend(record!.handle, new Date(Date.now() + HOUR), { userId: "ann" });
        // Give extend the time to take its snapshot and wait for the row (either way the answer must be false).
        await sleep(300);
        await other.query("commit");
        expect(await extending).toBe(false);
      } finally {
        await other.end();
      }
      const [row] = await t.raw(`select ended_at is not null as ended, end_reason, expires_at < now() as expired from $table`);
      expect(row).toEqual({ ended: true, end_reason: "expired", expired: true });
    },
  );

  it("inspecting or logging a loaded session never shows its id", async () => {
    const sid = "inspect-me-3bd1f0a6c2";
    const store = storeWith();
    await store.set(sid, sessionData(HOUR, { passport: { user: "ann" } }));
    const loaded: any = await store.get(sid);
    for (const options of [{}, { showHidden: true }, { showHidden: true, customInspect: false, depth: Infinity }]) {
      expect(inspect(loaded, options)).not.toContain(sid);
      expect(inspect(loaded.cookie, options)).not.toContain(sid);
    }
    expect(JSON.stringify(loaded)).not.toContain(sid);
    // Through express-session too: console.log(req.session) in a route.
    const app = express();
    let printed = "";
    app.use(session({ store, secret: "inspect test", resave: false, saveUninitialized: false }));
    app.post("/in", (req, res) => {
      (req.session as any).userId = "ann";
      res.json({ ok: true });
    });
    app.get("/log", (req, res) => {
      // (With showHidden, express-session's own hidden `req` shows req.sessionID: only what the store attaches is in question.)
      printed = inspect(req.session, { depth: Infinity }) + inspect(req.session.cookie, { showHidden: true, customInspect: false });
      res.json({ id: req.sessionID });
    });
    const cookie = String((await request(app).post("/in")).headers["set-cookie"]).split(";")[0]!;
    const { id } = (await request(app).get("/log").set("Cookie", cookie)).body;
    expect(printed).toContain("ann");
    expect(printed).not.toContain(id);
  });

  it.runIf(driver !== "postgres.js")(
    "with the cache, a touch that writes never caches its request's stale view: a sign-out by another tab is not undone by the next get",
    async () => {
      const store = storeWith({ cache: {}, touchAfter: 0 });
      expect(await cacheReady(store)).toBe(true);
      await store.set("cached", sessionData(HOUR, { passport: { user: "ann" } }));
      const tab1: any = await store.get("cached");
      const tab2: any = await store.get("cached");
      delete tab1.passport;
      await store.set("cached", tab1);
      // The sign-out's own NOTIFY heard (as it would be, a moment later, in an app): nothing left to evict a stale entry.
      await notifyBarrier(store);
      tab2.cookie.expires = new Date(Date.now() + 2 * HOUR).toISOString();
      await store.touch("cached", tab2);
      // Even before the touch's own NOTIFY came back:
      expect(((await store.get("cached")) as any).passport).toBeUndefined();
      await notifyBarrier(store);
      expect(((await store.get("cached")) as any).passport).toBeUndefined();
    },
  );

  it.each([
    ["plain data", {}, 40_000],
    ["encrypt during a key rotation (every key under two names)", { encrypt: { secrets: [NEW, OLD] } }, 8_000],
  ] as const)("a merged save that removes half the keys of a large session removes them and keeps the rest, with %s", async (_, options, size) => {
    const store = storeWith(options);
    const big: Record<string, number> = {};
    for (let i = 0; i < size; i++) big[`k${i}`] = i;
    await store.set("big", sessionData(HOUR, big));
    const loaded: any = await store.get("big");
    for (let i = 0; i < size; i += 2) delete loaded[`k${i}`];
    loaded.k1 = "changed";
    // Past a few names, the keys are removed through a hashed lookup (jsonb's own `-` compares every key
    // with every name); its cost is measured by bench/merge-delete.ts.
    await store.set("big", loaded);
    const now: any = await store.get("big");
    expect(Object.keys(now).length).toBe(size / 2 + 1);
    expect(now.k0).toBeUndefined();
    expect(now[`k${size - 2}`]).toBeUndefined();
    expect(now.k1).toBe("changed");
    expect(now[`k${size - 1}`]).toBe(size - 1);
  });

  describe("with encrypt, the stored cookie is authenticated", () => {
    it.each([
      ["HttpOnly stripped", (c: any) => ({ ...c, httpOnly: false })],
      ["Secure stripped", (c: any) => ({ ...c, secure: false })],
      ["Domain widened", (c: any) => ({ ...c, domain: "example.com" })],
      ["Path changed", (c: any) => ({ ...c, path: "/other" })],
      ["SameSite changed", (c: any) => ({ ...c, sameSite: "none" })],
    ])("a row whose cookie was tampered with (%s) is a CORRUPT_ROW and a missing session", async (_, tamper) => {
      const store = storeWith({ encrypt: { secrets: NEW } });
      const errors: Error[] = [];
      store.on("error", (error) => errors.push(error));
      const data = sessionData(HOUR, { passport: { user: "ann" } });
      data.cookie.secure = true;
      data.cookie.sameSite = "lax";
      await store.set("tamper", data);
      expect(await store.get("tamper")).not.toBeNull();
      const [row] = await t.raw(`select data->'cookie' as cookie from $table`);
      const cookie = typeof row.cookie === "string" ? JSON.parse(row.cookie) : row.cookie;
      await t.raw(`update $table set data = jsonb_set(data, '{cookie}', '${JSON.stringify(tamper(cookie))}'::jsonb)`);
      expect(await store.get("tamper")).toBeNull();
      expect(errors.map((e: any) => e.code)).toContain("CORRUPT_ROW");
    });

    it("a cookie holding an array with an undefined entry (JSON's null) saves and loads, as without encrypt", async () => {
      const store = storeWith({ encrypt: { secrets: NEW } });
      const data: any = sessionData(HOUR, { passport: { user: "ann" } });
      data.cookie.extra = [1, undefined, { gone: undefined }];
      await store.set("holes", data);
      expect(await store.get("holes")).toMatchObject({ passport: { user: "ann" }, cookie: { extra: [1, null, {}] } });
    });

    it("touch and extend keep the cookie authentic (the session still loads after each)", async () => {
      const store = storeWith({ encrypt: { secrets: NEW }, touchAfter: 0 });
      await store.set("kept", sessionData(HOUR, { passport: { user: "ann" } }));
      const loaded: any = await store.get("kept");
      loaded.cookie.expires = new Date(Date.now() + 2 * HOUR).toISOString();
      await store.touch("kept", loaded);
      expect(await store.get("kept")).toMatchObject({ passport: { user: "ann" } });
      const [record] = await store.list({ userId: "ann" });
      expect(await store.extend(record!.handle, new Date(Date.now() + 5 * HOUR), { userId: "ann" })).toBe(true);
      expect(await store.get("kept")).toMatchObject({ passport: { user: "ann" } });
    });
  });
});
