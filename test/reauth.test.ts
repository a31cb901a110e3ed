import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Express } from "express";
import request from "supertest";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { SessionStore, SessionStoreError, type SessionStoreOptions } from "../src/index.js";
import { cookieOf, fastifyApp, testApp } from "./support/app.js";
import { cacheReady, drivers, openDb, sessionData, sleep, type TestDb, useTestDb } from "./support/db.js";

const HOUR = 3_600_000;

/**
 * An app whose sensitive route passes only for a sign-in after `cutoff` (a guard of maxAge "since the
 * cutoff", made per request), with POST /reauth calling markAuthenticated, and GET /signed-in-at.
 */
function reauthApp(store: SessionStore, cutoff: () => number): Express {
  return testApp(store, {}, (app) => {
    app.post(
      "/settings/email",
      (req, res, next) => store.requireRecentLogin(Math.max(1, Date.now() - cutoff()))(req, res, next),
      (_req, res) => {
        res.json({ changed: true });
      },
    );
    app.post("/settings/token", store.requireRecentLogin(10 * 60_000), (_req, res) => void res.json({ token: "t" }));
    app.post("/reauth", async (req, res) => {
      res.json({ marked: await store.markAuthenticated(req.sessionID) });
    });
    app.get("/signed-in-at", (req, res) => void res.json({ at: store.authenticatedAt(req.session)?.getTime() ?? null }));
  });
}

async function login(app: Express, user = "ann"): Promise<string> {
  const res = await request(app).post("/login").send({ username: user, password: "pw" });
  expect(res.status).toBe(200);
  return cookieOf(res)!;
}

describe.each(drivers)("re-authentication (sudo mode) on %s", (driver) => {
  let t: TestDb;
  const stores: SessionStore[] = [];
  useTestDb(driver, (db) => void (t = db));
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });

  async function storeWith(options: Partial<SessionStoreOptions> = {}): Promise<SessionStore> {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, ...options });
    stores.push(store);
    if (options.cache) expect(await cacheReady(store)).toBe(true);
    return store;
  }

  // The read cache listens through node-postgres and PGlite only.
  const variants = driver === "postgres.js" ? [false] : [false, true];

  describe.each(variants)("with cache: %s", (cached) => {
    it("a login is a recent sign-in: the sensitive route passes at once; an anonymous session gets 401 REAUTHENTICATION_REQUIRED", async () => {
      const store = await storeWith(cached ? { cache: {} } : {});
      const app = reauthApp(store, () => 0);
      const cookie = await login(app);
      expect((await request(app).post("/settings/token").set("Cookie", cookie)).body).toEqual({ token: "t" });
      // A second time, served from the cache when there is one.
      expect((await request(app).post("/settings/token").set("Cookie", cookie)).status).toBe(200);

      const anonymous = cookieOf(await request(app).post("/count"))!;
      const refused = await request(app).post("/settings/token").set("Cookie", anonymous);
      expect(refused.status).toBe(401);
      expect(refused.body.error).toMatch(
        /^connect-drizzle: this route needs the user to have signed in within the last 600 s; .*sign in again.*store\.markAuthenticated\(req\)/,
      );
      expect((await request(app).post("/settings/token")).status).toBe(401);
    });

    it("a sign-in older than maxAge is refused; after markAuthenticated in one request, the next request passes", async () => {
      const store = await storeWith(cached ? { cache: {} } : {});
      let cutoff = 0;
      const app = reauthApp(store, () => cutoff);
      const cookie = await login(app);
      expect((await request(app).post("/settings/email").set("Cookie", cookie)).status).toBe(200);
      await sleep(100);
      cutoff = Date.now();
      await sleep(100);
      // Read (and cached) with the login's time, which is before the cutoff.
      expect((await request(app).post("/settings/email").set("Cookie", cookie)).status).toBe(401);
      expect((await request(app).post("/reauth").set("Cookie", cookie)).body).toEqual({ marked: true });
      const { at } = (await request(app).get("/signed-in-at").set("Cookie", cookie)).body;
      expect(at).toBeGreaterThan(cutoff);
      expect((await request(app).post("/settings/email").set("Cookie", cookie)).body).toEqual({ changed: true });
      // Another user's session is not marked by it.
      const bob = await login(app, "bob");
      expect((await request(app).post("/settings/email").set("Cookie", bob)).status).toBe(200);
    });
  });

  it("markAuthenticated of a session another instance has cached: that instance serves the new time", async () => {
    if (driver === "postgres.js") return;
    const notifying = await storeWith({ notify: true });
    const cached = await storeWith({ cache: {} });
    await notifying.set("m1", sessionData(HOUR, { userId: "ann" }));
    const before = cached.authenticatedAt(await cached.get("m1"))!.getTime();
    await cached.get("m1");
    await sleep(20);
    expect(await notifying.markAuthenticated("m1")).toBe(true);
    // (The time is read on the monotonic clock and shown on the wall clock: two reads of one value may
    // differ by a millisecond. The new one is at least the 20 ms slept later.)
    let after = before;
    for (let i = 0; i < 300 && after < before + 10; i++, await sleep(10)) after = cached.authenticatedAt(await cached.get("m1"))!.getTime();
    expect(after).toBeGreaterThan(before + 10);
  });

  it("markAuthenticated changes only a live session: an ended or unknown one is not revived, and returns false", async () => {
    const store = await storeWith({ retainEnded: HOUR });
    await store.set("s1", sessionData(HOUR, { userId: "ann" }));
    await store.destroy("s1");
    expect(await store.markAuthenticated("s1")).toBe(false);
    expect(await store.get("s1")).toBeNull();
    expect(await store.markAuthenticated("never-seen")).toBe(false);
    const [ended] = await store.list({ userId: "ann", status: "ended" });
    expect(ended!.endReason).toBe("logout");
  });

  it("authenticatedAt: set by the write that gives the session a user, kept by later saves, null without a user or after the user changed", async () => {
    const store = await storeWith();
    // A new session with a user (passport's login: regenerate, then a save of the new id).
    const started = Date.now();
    await store.set("a1", sessionData(HOUR, { userId: "ann" }));
    const loaded = (await store.get("a1"))!;
    const at = store.authenticatedAt(loaded)!.getTime();
    expect(at).toBeGreaterThanOrEqual(started - 1_000);
    expect(at).toBeLessThanOrEqual(Date.now());
    // The user changing in the request (not yet saved): the time belongs to the user it was recorded for.
    (loaded as any).userId = "bob";
    expect(store.authenticatedAt(loaded)).toBeNull();

    // An anonymous session has none, until it gains a user without regenerate.
    await store.set("a2", sessionData(HOUR, { views: 1 }));
    const anonymous = (await store.get("a2"))!;
    expect(store.authenticatedAt(anonymous)).toBeNull();
    expect((await t.raw(`select authenticated_at from $table where user_id is null`))[0].authenticated_at).toBeNull();
    (anonymous as any).userId = "ann";
    await store.set("a2", anonymous);
    expect(store.authenticatedAt(anonymous)).not.toBeNull();
    const [record] = await store.list({ userId: "ann", current: "a2" }).then((r) => r.filter((x) => x.current));
    expect(record!.authenticatedAt).toBeInstanceOf(Date);

    // A save that only changes data keeps the time (here made an hour old in the database).
    await t.raw(`update $table set authenticated_at = authenticated_at - interval '1 hour'`);
    const old = (await store.get("a1"))!;
    const hourAgo = store.authenticatedAt(old)!.getTime();
    expect(hourAgo).toBeLessThan(Date.now() - HOUR + 5_000);
    (old as any).views = 2;
    await store.set("a1", old);
    // (Read again: converted to this server's clock with another statement's round trip.)
    expect(Math.abs(store.authenticatedAt(await store.get("a1"))!.getTime() - hourAgo)).toBeLessThan(1_000);
    // Logging out (the user removed from the data) and back in, in the same session, is a new sign-in.
    const out = (await store.get("a1"))!;
    delete (out as any).userId;
    await store.set("a1", out);
    const back = (await store.get("a1"))!;
    (back as any).userId = "ann";
    await store.set("a1", back);
    expect(store.authenticatedAt(await store.get("a1"))!.getTime()).toBeGreaterThan(hourAgo + HOUR - 5_000);
    expect(store.authenticatedAt({ userId: "ann" })).toBeNull();
  });

  it.each([
    ["merged saves (the default)", {}],
    ["whole-session saves (versioned)", { versioned: true }],
    ["encrypted data", { encrypt: { secrets: "a data secret of at least 32 random characters" } }],
  ])("a session that gains a user in place is authenticated, with %s", async (_, options) => {
    const store = await storeWith(options);
    await store.set("p1", sessionData(HOUR, { views: 1 }));
    const session = (await store.get("p1"))!;
    expect(store.authenticatedAt(session)).toBeNull();
    (session as any).userId = "ann";
    await store.set("p1", session);
    expect(store.authenticatedAt(session)).not.toBeNull();
    expect(store.authenticatedAt(await store.get("p1"))!.getTime()).toBeGreaterThan(Date.now() - 10_000);
  });

  it("the guard sends no query: it reads what get loaded", async () => {
    const store = await storeWith();
    await store.set("g1", sessionData(HOUR, { userId: "ann" }));
    const session = await store.get("g1");
    const guard = store.requireRecentLogin(60_000);
    t.statements.length = 0;
    const passed = await new Promise<unknown>((resolve) => guard({ session, sessionID: "g1", sessionStore: store } as any, {} as any, resolve));
    expect(passed).toBeUndefined();
    expect(t.statements).toEqual([]);
    // The same session under another store (or none), or under another id, is not this store's.
    const elsewhere = await new Promise<unknown>((resolve) => guard({ session, sessionID: "g1", sessionStore: {} } as any, {} as any, resolve));
    expect(elsewhere).toMatchObject({ code: "REAUTHENTICATION_REQUIRED", status: 401 });
    const otherId = await new Promise<unknown>((resolve) => guard({ session, sessionID: "g2", sessionStore: store } as any, {} as any, resolve));
    expect(otherId).toBeInstanceOf(SessionStoreError);
  });

  it("onStale answers instead of the 401 (a redirect to the password prompt)", async () => {
    const store = await storeWith();
    const app = testApp(store, {}, (a) => {
      const guard = store.requireRecentLogin(60_000, { onStale: (_req, res) => res.writeHead(302, { location: "/reauth" }).end() });
      a.post("/settings/delete", guard, (_req, res) => void res.json({ deleted: true }));
    });
    expect((await request(app).post("/settings/delete")).headers.location).toBe("/reauth");
    const cookie = await login(app);
    expect((await request(app).post("/settings/delete").set("Cookie", cookie)).body).toEqual({ deleted: true });
  });
});

describe("re-authentication: arguments, old tables, @fastify/session", () => {
  let t: TestDb;
  beforeAll(async () => {
    t = await openDb("pglite");
  });
  afterAll(async () => {
    await t?.close();
  });

  it("requireRecentLogin refuses a maxAge that is not a positive number, and a misspelt option", () => {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false });
    for (const bad of [0, -1, Number.NaN, Infinity, "600000"]) {
      expect(() => store.requireRecentLogin(bad as any)).toThrow(/^connect-drizzle: requireRecentLogin\(maxAge\) needs a positive number of milliseconds/);
    }
    expect(() => store.requireRecentLogin(1_000, { onstale: () => {} } as any)).toThrow(
      /unknown requireRecentLogin option `onstale` \(did you mean `onStale`\?\)/,
    );
    expect(() => store.requireRecentLogin(1_000, { onStale: "/login" as any })).toThrow(/`onStale` must be a function/);
  });

  it("store.ready() reports a table without authenticated_at as SCHEMA_OUTDATED, naming it and migrate(db); after the migration, old sessions load", async () => {
    const client = (t.db as any).$client;
    const schema = `${t.schema}_old`;
    const first = readFileSync(join(import.meta.dirname, "..", "drizzle", "0000_init.sql"), "utf8").replaceAll("--> statement-breakpoint", "");
    await client.exec(`create schema "${schema}"; set search_path to "${schema}"; ${first}; reset search_path;`);
    const { createSessionTable } = await import("../src/index.js");
    const store = new SessionStore({ db: t.db, table: createSessionTable("sessions", { schema }), reaper: false });
    const error = await store.ready().catch((e) => e);
    expect(error).toMatchObject({ code: "SCHEMA_OUTDATED" });
    expect(error.message).toMatch(/lacks the column\(s\) "authenticated_at"(, "\w+")* .*run the latest migrations \(await migrate\(db\)/);
    await client.exec(
      `insert into "${schema}".sessions (key, handle, user_id, data, expires_at) values ('k', 'h', 'ann', '{"cookie":{}}', now() + interval '1 hour')`,
    );
    // Every later migration, as migrate(db) applies them.
    for (const later of ["0001_authenticated_at", "0002_end_reason_check", "0003_rotation"]) {
      const text = readFileSync(join(import.meta.dirname, "..", "drizzle", `${later}.sql`), "utf8").replaceAll("--> statement-breakpoint", "");
      await client.exec(`set search_path to "${schema}"; ${text}; reset search_path;`);
    }
    await expect(store.ready()).resolves.toBeUndefined();
    const [record] = await store.list({ userId: "ann" });
    expect(record!.authenticatedAt).toBeNull();
  });

  it("authenticatedAt reads @fastify/session's request.session, without a query", async () => {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false });
    const app = await fastifyApp(store, {}, { trustProxy: "127.0.0.1" });
    app.post("/login", async (req) => {
      await req.session.regenerate();
      (req.session as any).userId = "ann";
      return { ok: true };
    });
    app.get("/at", async (req) => ({ at: store.authenticatedAt(req.session)?.getTime() ?? null }));
    try {
      expect((await app.inject({ url: "/at" })).json()).toEqual({ at: null });
      const res = await app.inject({ method: "POST", url: "/login" });
      const cookie = String(res.headers["set-cookie"]).split(";")[0]!;
      const { at } = (await app.inject({ url: "/at", headers: { cookie } })).json();
      expect(at).toBeGreaterThan(Date.now() - 10_000);
    } finally {
      await app.close();
    }
  });
});
