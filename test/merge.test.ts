import { drizzle } from "drizzle-orm/node-postgres";
import type { SessionOptions } from "express-session";
import request from "supertest";
import { afterEach, describe, expect, it } from "vitest";
import { SessionStore, type SessionStoreOptions } from "../src/index.js";
import { cookieOf, fastifyApp, testApp } from "./support/app.js";
import { cacheReady, drivers, sleep, type TestDb, useTestDb } from "./support/db.js";
import { keyOf } from "./support/model.js";
import { internals } from "./support/internals.js";
import { resolveOptions } from "./support/internals.js";

/** What a request of the test apps does to its session: set these top-level keys, delete those. */
interface Change {
  set?: Record<string, unknown>;
  remove?: string[];
  /** Save with `req.session.save()` before answering (how a route sees its save fail), then apply `then`. */
  save?: boolean;
  /** After the first change: `req.session.save()`, then this change (saved again at the response). */
  then?: Change;
}

/**
 * Held requests: a request named by `?gate=` has loaded its session when it reaches the gate, and waits
 * there until the test opens it. A gate of `n` reports `loaded` once `n` requests have reached it.
 */
class Gates {
  private readonly gates = new Map<string, { arrived: number; n: number; markLoaded(): void; opened: Promise<void> }>();

  hold(name: string, n = 1): { loaded: Promise<void>; open(): void } {
    let markLoaded!: () => void;
    let open!: () => void;
    const loaded = new Promise<void>((resolve) => (markLoaded = resolve));
    const opened = new Promise<void>((resolve) => (open = resolve));
    this.gates.set(name, { arrived: 0, n, markLoaded, opened });
    return { loaded, open };
  }

  async at(name: unknown): Promise<void> {
    const gate = typeof name === "string" ? this.gates.get(name) : undefined;
    if (!gate) return;
    if (++gate.arrived === gate.n) gate.markLoaded();
    await gate.opened;
  }
}

function apply(session: any, change: Change): void {
  for (const [key, value] of Object.entries(change.set ?? {})) session[key] = value;
  for (const key of change.remove ?? []) delete session[key];
}

/** The data a session holds, without its cookie. */
function dataOf(session: any): Record<string, unknown> {
  const { cookie: _cookie, ...data } = session;
  return data;
}

/**
 * testApp (passport login and logout, an error handler answering `{ error }`) plus POST /change (the body's
 * {@link Change}, after the gate `?gate=`) and GET /read (the session's data, after the gate).
 */
function tabsApp(store: SessionStore, options: Partial<SessionOptions> = {}) {
  const gates = new Gates();
  const app = testApp(store, options, (app) => {
    app.post("/change", async (req, res, next) => {
      try {
        await gates.at(req.query.gate);
        const change = req.body as Change;
        apply(req.session, change);
        if (change.save || change.then) await new Promise<void>((resolve, reject) => req.session.save((err) => (err ? reject(err) : resolve())));
        if (change.then) apply(req.session, change.then);
        res.json(dataOf(req.session));
      } catch (error) {
        next(error);
      }
    });
    app.get("/read", async (req, res) => {
      await gates.at(req.query.gate);
      res.json(dataOf(req.session));
    });
  });
  /** Starts a request now (supertest sends on `then`), on the one browser's cookie. */
  const send = (cookie: string, change: Change, gate?: string) =>
    request(app)
      .post(`/change${gate ? `?gate=${gate}` : ""}`)
      .set("Cookie", cookie)
      .send(change)
      .then((res) => res);
  const read = (cookie: string) =>
    request(app)
      .get("/read")
      .set("Cookie", cookie)
      .then((res) => res.body as Record<string, unknown>);
  /** A session of one browser holding `data`: its cookie. */
  const browser = async (data: Record<string, unknown>) => {
    const res = await request(app).post("/change").send({ set: data });
    expect(res.status).toBe(200);
    return cookieOf(res)!;
  };
  /**
   * Two tabs of one browser, truly interleaved: both load the session before either saves; then tab A
   * finishes (its save included), then tab B. Returns both responses.
   */
  const twoTabs = async (cookie: string, a: Change, b: Change, between?: () => Promise<void>) => {
    const gateA = gates.hold("a");
    const gateB = gates.hold("b");
    const tabA = send(cookie, a, "a");
    const tabB = send(cookie, b, "b");
    await Promise.all([gateA.loaded, gateB.loaded]);
    gateA.open();
    const resA = await tabA;
    await between?.();
    gateB.open();
    return [resA, await tabB] as const;
  };
  return { app, gates, send, read, browser, twoTabs };
}

describe.each(drivers)("saves merge by top-level key on %s (two tabs, one session)", (driver) => {
  let t: TestDb;
  let store: SessionStore;
  const closing: SessionStore[] = [];

  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });
  afterEach(async () => {
    while (closing.length > 0) await closing.pop()!.close();
  });

  const storeWith = (options: Partial<SessionStoreOptions>) => {
    const made = new SessionStore({ db: t.db, table: t.table, reaper: false, ...options });
    closing.push(made);
    return made;
  };
  const stored = async () => {
    const rows = await t.raw<{ data: string }>(`select data::text as data from $table where ended_at is null`);
    expect(rows).toHaveLength(1);
    return dataOf(JSON.parse(rows[0]!.data));
  };

  it("two tabs that change different keys both keep their change (cart and theme)", async () => {
    const tabs = tabsApp(store);
    const cookie = await tabs.browser({ seed: 1 });
    const [a, b] = await tabs.twoTabs(cookie, { set: { cart: ["book"] } }, { set: { theme: "dark" } });
    expect([a.status, b.status]).toEqual([200, 200]);
    expect(await tabs.read(cookie)).toEqual({ seed: 1, cart: ["book"], theme: "dark" });
    expect(await stored()).toEqual({ seed: 1, cart: ["book"], theme: "dark" });
  });

  it("for a key both tabs change, the later save wins, for that key only; a nested object is one key", async () => {
    const tabs = tabsApp(store);
    const cookie = await tabs.browser({ theme: "light", prefs: { lang: "en", size: "m" } });
    await tabs.twoTabs(
      cookie,
      { set: { theme: "dark", cart: ["book"], prefs: { lang: "fr", size: "m" } } },
      { set: { theme: "solarized", prefs: { lang: "en", size: "l" } } },
    );
    // B saved last: its theme and its whole prefs object; A's cart, which B did not touch, stays.
    expect(await tabs.read(cookie)).toEqual({ theme: "solarized", cart: ["book"], prefs: { lang: "en", size: "l" } });
  });

  it("a key one tab removed stays removed while the other tab changes another key", async () => {
    const tabs = tabsApp(store);
    const cookie = await tabs.browser({ coupon: "SAVE10", theme: "light" });
    await tabs.twoTabs(cookie, { remove: ["coupon"] }, { set: { theme: "dark" } });
    expect(await tabs.read(cookie)).toEqual({ theme: "dark" });
  });

  it("a sign-out by deleting the user from the session stays signed out while another tab, which read the user, saves a change of its own", async () => {
    const tabs = tabsApp(store);
    const login = await request(tabs.app).post("/login").send({ username: "ann", password: "pw" });
    const cookie = cookieOf(login)!;
    expect((await request(tabs.app).get("/me").set("Cookie", cookie)).status).toBe(200);
    await tabs.twoTabs(cookie, { remove: ["passport"] }, { set: { cart: ["book"] } });
    expect(await tabs.read(cookie)).toEqual({ cart: ["book"] });
    expect((await request(tabs.app).get("/me").set("Cookie", cookie)).status).toBe(401);
  });

  it("20 concurrent requests on one session, each setting its own key, all keep their key", async () => {
    const tabs = tabsApp(store);
    const cookie = await tabs.browser({ seed: 1 });
    const gate = tabs.gates.hold("all", 20);
    const requests = Array.from({ length: 20 }, (_, i) => tabs.send(cookie, { set: { [`k${i}`]: i } }, "all"));
    // Every request has loaded the session before any of them saves; then they all save at once.
    await gate.loaded;
    gate.open();
    expect((await Promise.all(requests)).map((res) => res.status)).toEqual(Array(20).fill(200));
    const expected = Object.fromEntries([["seed", 1], ...Array.from({ length: 20 }, (_, i) => [`k${i}`, i])]);
    expect(await tabs.read(cookie)).toEqual(expected);
  });

  it("a request that only read writes nothing, even with resave: true, while another tab changes the session", async () => {
    const tabs = tabsApp(store, { resave: true });
    const cookie = await tabs.browser({ theme: "light" });
    const gate = tabs.gates.hold("reader");
    const reader = request(tabs.app)
      .get("/read?gate=reader")
      .set("Cookie", cookie)
      .then((res) => res);
    await gate.loaded;
    expect((await tabs.send(cookie, { set: { theme: "dark" } })).status).toBe(200);
    const [{ version }] = (await t.raw<{ version: number }>(`select version from $table`)) as [{ version: number }];
    t.statements.length = 0;
    gate.open();
    expect((await reader).body).toEqual({ theme: "light" });
    expect(t.statements).toEqual([]);
    expect(await t.raw(`select version from $table`)).toEqual([{ version }]);
    expect(await tabs.read(cookie)).toEqual({ theme: "dark" });
  });

  it("a second save in one request (req.session.save(), then more changes) writes only what changed since, keeping the other tab's key", async () => {
    for (const tabsStore of driver === "postgres.js" ? [store] : [store, storeWith({ cache: {} })]) {
      const tabs = tabsApp(tabsStore);
      const cookie = await tabs.browser({ seed: 1 });
      const gateA = tabs.gates.hold("a");
      const gateB = tabs.gates.hold("b");
      // biome-ignore lint/suspicious/noThenProperty: the tabs app's request body: a set, then another once the first was saved.
      const tabA = tabs.send(cookie, { set: { a: 1 }, then: { set: { b: 2 } } }, "a");
      const tabB = tabs.send(cookie, { set: { theme: "dark" } }, "b");
      await Promise.all([gateA.loaded, gateB.loaded]);
      // B saves first: A's first save merges over B's theme, and A's second save must not take it for A's own.
      gateB.open();
      expect((await tabB).status).toBe(200);
      gateA.open();
      expect((await tabA).status).toBe(200);
      expect(await tabs.read(cookie)).toEqual({ seed: 1, theme: "dark", a: 1, b: 2 });
    }
  });

  it("versioned: true still refuses the later of two conflicting saves with CONFLICT", async () => {
    const tabs = tabsApp(storeWith({ versioned: true }));
    const cookie = await tabs.browser({ seed: 1 });
    const [a, b] = await tabs.twoTabs(cookie, { set: { cart: ["book"] }, save: true }, { set: { theme: "dark" }, save: true });
    expect(a.status).toBe(200);
    expect(b.status).toBe(500);
    expect(b.body.error).toMatch(/changed by another request/);
    expect(await stored()).toEqual({ seed: 1, cart: ["book"] });
  });

  it("merge: false is the whole-session last save wins", async () => {
    const tabs = tabsApp(storeWith({ merge: false }));
    const cookie = await tabs.browser({ seed: 1, coupon: "SAVE10" });
    await tabs.twoTabs(cookie, { set: { cart: ["book"] }, remove: ["coupon"] }, { set: { theme: "dark" } });
    expect(await tabs.read(cookie)).toEqual({ seed: 1, coupon: "SAVE10", theme: "dark" });
  });

  it.runIf(driver !== "postgres.js")(
    "with the read cache, what is cached and served after merged saves is the merged row, never a tab's own view",
    async () => {
      const cached = storeWith({ cache: {} });
      expect(await cacheReady(cached)).toBe(true);
      const cache = internals(cached).cache!;
      const put = cache.put.bind(cache);
      const puts: string[] = [];
      cache.put = (entry: { key: string; text: string }, since: number) => {
        if (cache.accepts(entry.key, since)) puts.push(entry.text);
        put(entry, since);
      };
      const tabs = tabsApp(cached);
      // Rounds, because B's reply is not always cached (its own NOTIFY may overtake it).
      for (let round = 0; round < 10; round++) {
        const cookie = await tabs.browser({ seed: round });
        // Once A's NOTIFY has arrived (so that it does not keep B's reply from being cached), what B's save caches.
        const between = async () => {
          await sleep(50);
          puts.length = 0;
        };
        await tabs.twoTabs(cookie, { set: { cart: [round] } }, { set: { theme: round } }, between);
        const merged = { seed: round, cart: [round], theme: round };
        for (const text of puts) expect(dataOf(JSON.parse(text))).toEqual(merged);
        for (let i = 0; i < 3; i++) expect(await tabs.read(cookie)).toEqual(merged);
      }
    },
  );

  it.each([
    ["logs out in another tab", "logout", 0],
    ["is revoked (store.revokeUser), with history", "revoke", 3_600_000],
  ])("a session that %s while a request is in flight is never brought back by that request's merge save", async (_, ending, retainEnded) => {
    const ends = storeWith({ retainEnded });
    const tabs = tabsApp(ends);
    const cookie = cookieOf(await request(tabs.app).post("/login").send({ username: "ann", password: "pw" }))!;
    const gate = tabs.gates.hold("a");
    const inFlight = tabs.send(cookie, { set: { theme: "dark" } }, "a");
    await gate.loaded;
    if (ending === "logout") expect((await request(tabs.app).post("/logout").set("Cookie", cookie)).status).toBe(200);
    else expect(await ends.revokeUser("ann")).toBe(1);
    gate.open();
    expect((await inFlight).status).toBe(200);
    expect((await request(tabs.app).get("/me").set("Cookie", cookie)).status).toBe(401);
    expect(await ends.count({ userId: "ann" })).toBe(0);
    const sid = decodeURIComponent(cookie.split("=")[1]!).slice(2).split(".")[0]!;
    expect(await t.raw(`select count(*)::int as n from $table where key = '${keyOf(sid)}' and ended_at is null`)).toEqual([{ n: 0 }]);
    // Nothing of the in-flight request reached the ended record either.
    expect(await t.raw(`select key from $table where data::text like '%dark%'`)).toEqual([]);
  });

  it("two @fastify/session requests on one session that change different keys both keep their change", async () => {
    const gates = new Gates();
    const app = await fastifyApp(store);
    app.post<{ Querystring: { gate?: string }; Body: Change }>("/change", async (req) => {
      await gates.at(req.query.gate);
      apply(req.session, req.body);
      return { ok: true };
    });
    app.get("/read", async (req) => dataOf(JSON.parse(JSON.stringify(req.session))));
    await app.ready();
    try {
      const first = await app.inject({ method: "POST", url: "/change", payload: { set: { seed: 1 } } });
      const sid = first.cookies.find((c) => c.name === "sid")!;
      const cookie = `sid=${sid.value}`;
      const gateA = gates.hold("a");
      const gateB = gates.hold("b");
      const inject = (change: Change, gate: string) =>
        app.inject({ method: "POST", url: `/change?gate=${gate}`, headers: { cookie }, payload: change }).then((res) => res);
      const tabA = inject({ set: { cart: ["book"] } }, "a");
      const tabB = inject({ set: { theme: "dark" } }, "b");
      await Promise.all([gateA.loaded, gateB.loaded]);
      gateA.open();
      expect((await tabA).statusCode).toBe(200);
      gateB.open();
      expect((await tabB).statusCode).toBe(200);
      const data = (await app.inject({ url: "/read", headers: { cookie } })).json();
      expect(data).toMatchObject({ seed: 1, cart: ["book"], theme: "dark" });
    } finally {
      await app.close();
    }
  });
});

describe("the merge option", () => {
  const db = drizzle.mock();

  it("is on by default, off with versioned, and refused together with versioned: true (pick one)", () => {
    // The option table resolves it (src/options.ts): merge unless versioned.
    expect(resolveOptions({ db, reaper: false }).merge).toBe(true);
    expect(resolveOptions({ db, reaper: false, versioned: true }).merge).toBe(false);
    expect(() => new SessionStore({ db, reaper: false, merge: true, versioned: true })).toThrow(
      /^connect-drizzle: `merge: true` and `versioned: true` .*pick one/,
    );
    expect(() => new SessionStore({ db, reaper: false, merge: "yes" as any })).toThrow(/`merge` must be true or false/);
  });
});
