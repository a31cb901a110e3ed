import request from "supertest";
import { describe, expect, it, vi } from "vitest";
import { SessionStore } from "../src/index.js";
import { cookieOf, testApp } from "./support/app.js";
import { drivers, sleep, type TestDb, useTestDb } from "./support/db.js";

describe.each(drivers)("express-session + passport on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;

  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });

  async function login(app: any, user = "ann", cookie?: string): Promise<string> {
    const req = request(app).post("/login").send({ username: user, password: "pw" });
    const res = await (cookie ? req.set("Cookie", cookie) : req);
    expect(res.status).toBe(200);
    const sid = cookieOf(res);
    expect(sid).toBeDefined();
    return sid!;
  }

  it("logs in, reads the user back on the next request, and records the owner", async () => {
    const app = testApp(store);
    const cookie = await login(app);
    const me = await request(app).get("/me").set("Cookie", cookie);
    expect(me.body).toEqual({ user: "ann" });
    const rows = await t.raw(`select user_id from $table`);
    expect(rows).toEqual([{ user_id: "ann" }]);
  });

  it("rejects a wrong password and stores nothing", async () => {
    const app = testApp(store);
    const res = await request(app).post("/login").send({ username: "ann", password: "nope" });
    expect(res.status).toBe(401);
    expect(await store.length()).toBe(0);
  });

  it("keeps data across requests", async () => {
    const app = testApp(store);
    const first = await request(app).post("/count");
    const cookie = cookieOf(first)!;
    await request(app).post("/count").set("Cookie", cookie);
    const third = await request(app).post("/count").set("Cookie", cookie);
    expect(third.body).toEqual({ views: 3 });
    expect((await request(app).get("/count").set("Cookie", cookie)).body).toEqual({ views: 3 });
  });

  it("login regenerates the session: the pre-login id stops working (no fixation)", async () => {
    const app = testApp(store);
    const anonymous = cookieOf(await request(app).post("/count"))!;
    const authed = await login(app, "ann", anonymous);
    expect(authed).not.toBe(anonymous);
    expect((await request(app).get("/count").set("Cookie", anonymous)).body).toEqual({ views: 0 });
    expect((await request(app).get("/me").set("Cookie", authed)).body).toEqual({ user: "ann" });
  });

  it("logout ends the session: the old cookie is no longer logged in, and its row is gone", async () => {
    const app = testApp(store);
    const cookie = await login(app);
    expect((await request(app).post("/logout").set("Cookie", cookie)).status).toBe(200);
    expect((await request(app).get("/me").set("Cookie", cookie)).status).toBe(401);
    expect(await store.count({ userId: "ann", status: "all" })).toBe(0);
  });

  it("with history (retainEnded), logout is recorded as logout", async () => {
    const history = new SessionStore({ db: t.db, table: t.table, retainEnded: 3_600_000, reaper: false });
    const app = testApp(history);
    const cookie = await login(app);
    expect((await request(app).post("/logout").set("Cookie", cookie)).status).toBe(200);
    expect((await request(app).get("/me").set("Cookie", cookie)).status).toBe(401);
    const [ended] = await history.list({ userId: "ann", status: "ended" });
    expect(ended).toMatchObject({ userId: "ann", endReason: "logout" });
    expect(await history.count({ userId: "ann" })).toBe(0);
  });

  it("a second login as another user rotates the session and records it as rotated (retainEnded)", async () => {
    const store = new SessionStore({ db: t.db, table: t.table, retainEnded: 3_600_000, reaper: false });
    const app = testApp(store);
    const first = await login(app, "ann");
    await login(app, "bob", first);
    const [rotated] = await store.list({ userId: "ann", status: "ended" });
    expect(rotated!.endReason).toBe("rotated");
    expect(await store.count({ userId: "bob" })).toBe(1);
  });

  it("a rolling cookie is re-sent with a later expiry on every response", async () => {
    const app = testApp(store, { rolling: true });
    const cookie = await login(app);
    const res = await request(app).get("/me").set("Cookie", cookie);
    const setCookie = (res.headers["set-cookie"] as unknown as string[])[0]!;
    const expires = Date.parse(/Expires=([^;]+)/.exec(setCookie)![1]!);
    expect(expires).toBeGreaterThan(Date.now() + 3_500_000);
  });

  it("a read-only request costs exactly one SQL statement and no write, even with rolling and resave", async () => {
    for (const options of [{ rolling: true }, { resave: true }, {}]) {
      const app = testApp(new SessionStore({ db: t.db, table: t.table }), options);
      const cookie = await login(app);
      await request(app).get("/me").set("Cookie", cookie);
      // Count from a quiet point: only what the five read requests themselves send.
      await sleep(50);
      t.statements.length = 0;
      for (let i = 0; i < 5; i++) expect((await request(app).get("/me").set("Cookie", cookie)).status).toBe(200);
      expect(t.statements, JSON.stringify({ options, statements: t.statements })).toHaveLength(5);
      expect(t.statements.every((s) => /^select/i.test(s))).toBe(true);
    }
  });

  it("a read-only request writes nothing when express-session's touch moves originalMaxAge by a millisecond", async () => {
    // express-session recomputes originalMaxAge from the clock on every touch (expires - Date.now()), so it
    // reads a millisecond short whenever the clock ticks between its two readings: not a change worth a write.
    for (const options of [{ rolling: true }, { resave: true }, {}]) {
      const app = testApp(new SessionStore({ db: t.db, table: t.table }), options);
      const cookie = await login(app);
      await sleep(50);
      t.statements.length = 0;
      const realNow = Date.now;
      let clock = realNow();
      const ticking = vi.spyOn(Date, "now").mockImplementation(() => (clock += 1));
      try {
        for (let i = 0; i < 3; i++) expect((await request(app).get("/me").set("Cookie", cookie)).status).toBe(200);
      } finally {
        ticking.mockRestore();
      }
      expect(
        t.statements.filter((s) => !/^select/i.test(s)),
        JSON.stringify(options),
      ).toEqual([]);
    }
  });

  it("an unknown or forged cookie gets a fresh anonymous session", async () => {
    const app = testApp(store);
    const res = await request(app).get("/me").set("Cookie", "connect.sid=s%3Aforged.signature");
    expect(res.status).toBe(401);
  });
});
