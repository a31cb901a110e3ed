import request from "supertest";
import { afterEach, describe, expect, it } from "vitest";
import { SessionStore, type SessionEvent, type SessionStoreOptions } from "../src/index.js";
import { cookieOf, testApp } from "./support/app.js";
import { drivers, type TestDb, useTestDb } from "./support/db.js";

const HOUR = 3_600_000;
const DAY = 86_400_000;
const FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:139.0) Gecko/20100101 Firefox/139.0";
const FIREFOX_LINUX_NEWER = "Mozilla/5.0 (X11; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0";
const CHROME_LINUX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/137.0.0.0 Safari/537.36";

describe.each(drivers)("the newDevice event on %s", (driver) => {
  let t: TestDb;
  const stores: SessionStore[] = [];
  useTestDb(driver, (db) => void (t = db));
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });

  function storeWith(options: Partial<SessionStoreOptions> = {}) {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, ...options });
    stores.push(store);
    const events: SessionEvent[] = [];
    store.on("newDevice", (event) => void events.push(event));
    return { store, events, app: testApp(store) };
  }

  async function login(app: any, user: string, agent: string, ip: string): Promise<string> {
    const res = await request(app).post("/login").set("User-Agent", agent).set("X-Forwarded-For", ip).send({ username: user, password: "pw" });
    expect(res.status).toBe(200);
    return cookieOf(res)!;
  }

  it("a first login from Firefox on Linux is a new device; the same family (another version) from the same IP is not", async () => {
    const { events, app, store } = storeWith();
    await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    expect(events).toHaveLength(1);
    const [record] = await store.list({ userId: "ann" });
    expect(events[0]).toEqual({
      handle: record!.handle,
      userId: "ann",
      label: null,
      userAgent: FIREFOX_LINUX,
      ip: "203.0.113.5",
      device: "Firefox on Linux",
      local: true,
    });
    await login(app, "ann", FIREFOX_LINUX_NEWER, "203.0.113.5");
    expect(events).toHaveLength(1);
  });

  it("the same family from another IP, and another family from the same IP, are new devices", async () => {
    const { events, app } = storeWith();
    await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    await login(app, "ann", FIREFOX_LINUX, "198.51.100.9");
    await login(app, "ann", CHROME_LINUX, "203.0.113.5");
    expect(events.map((e) => [e.device, e.ip])).toEqual([
      ["Firefox on Linux", "203.0.113.5"],
      ["Firefox on Linux", "198.51.100.9"],
      ["Chrome on Linux", "203.0.113.5"],
    ]);
  });

  it("another user's session from that device does not count, nor does the user's own older than 30 days", async () => {
    const { events, app } = storeWith();
    await login(app, "bob", FIREFOX_LINUX, "203.0.113.5");
    await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    expect(events.map((e) => e.userId)).toEqual(["bob", "ann"]);
    await t.age(31 * DAY);
    await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    expect(events.map((e) => e.userId)).toEqual(["bob", "ann", "ann"]);
    // Expired but active within the window still counts.
    await t.age(2 * HOUR);
    await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    expect(events).toHaveLength(3);
  });

  it("with history (retainEnded), a device whose session ended (logout) is known; a session that gains a user without regenerate is checked too", async () => {
    const { events, app, store } = storeWith({ retainEnded: HOUR });
    const cookie = await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    await request(app).post("/logout").set("Cookie", cookie).set("User-Agent", FIREFOX_LINUX).set("X-Forwarded-For", "203.0.113.5");
    expect(await store.count({ userId: "ann" })).toBe(0);
    await login(app, "ann", FIREFOX_LINUX_NEWER, "203.0.113.5");
    expect(events).toHaveLength(1);

    // A save that gives a loaded session its user (no new id).
    const anonymous = cookieOf(await request(app).post("/count").set("User-Agent", CHROME_LINUX).set("X-Forwarded-For", "203.0.113.5"))!;
    const sid = decodeURIComponent(anonymous.split("=")[1]!).slice(2).split(".")[0]!;
    const session = (await store.get(sid))!;
    (session as any).userId = "ann";
    Object.defineProperty(session, "req", { value: { headers: { "user-agent": CHROME_LINUX }, ip: "203.0.113.5" }, enumerable: false });
    await store.set(sid, session);
    expect(events.map((e) => e.device)).toEqual(["Firefox on Linux", "Chrome on Linux"]);
  });

  it("with maxSessionsPerUser, the session a login evicts still tells its device (one statement does both)", async () => {
    const { events, app, store } = storeWith({ maxSessionsPerUser: 1 });
    const first = await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    await login(app, "ann", FIREFOX_LINUX_NEWER, "203.0.113.5");
    expect((await request(app).get("/me").set("Cookie", first)).status).toBe(401);
    expect(await store.count({ userId: "ann" })).toBe(1);
    expect(events).toHaveLength(1);
    await login(app, "ann", CHROME_LINUX, "203.0.113.5");
    expect(events.map((e) => e.device)).toEqual(["Firefox on Linux", "Chrome on Linux"]);
  });

  it("the check is part of the login write itself; without a listener the login write sends no extra CTE", async () => {
    const { app } = storeWith();
    t.statements.length = 0;
    await login(app, "ann", FIREFOX_LINUX, "203.0.113.5");
    const withListener = t.statements.filter((s) => /^\s*(with|insert)/i.test(s));
    expect(withListener).toHaveLength(1);
    expect(withListener[0]).toMatch(/^with written as \(insert into .* seen as \(select/s);

    const quiet = new SessionStore({ db: t.db, table: t.table, reaper: false });
    stores.push(quiet);
    const quietApp = testApp(quiet);
    t.statements.length = 0;
    await login(quietApp, "ann", CHROME_LINUX, "203.0.113.5");
    const writes = t.statements.filter((s) => /^\s*(with|insert)/i.test(s));
    expect(writes).toHaveLength(1);
    expect(writes[0]).toMatch(/^insert into/);
    expect(writes[0]).not.toMatch(/seen as|30 days/);
  });
});
