import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { randomBytes } from "node:crypto";
import pg from "pg";
import request from "supertest";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { createSessionTable, SessionStore, type SessionEndedEvent, type SessionEvent, type SessionStoreOptions } from "../src/index.js";
import { listen } from "./support/internals.js";
import { cookieOf, testApp } from "./support/app.js";
import { DATABASE_URL, drivers, eventually, openDb, openPeer, sessionData, sleep, type Peer, type TestDb, useTestDb } from "./support/db.js";
import { internals } from "./support/internals.js";

const HOUR = 3_600_000;
/** `broadcast` seals its events under keys derived from `secrets`, the same on every instance. */
const SECRET = "events-test-secret-0123456789abcdefghij";
const OTHER_SECRET = "another-deployment-secret-0123456789abcdef";
const FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/** What a store emitted, in order: every `created` and `ended` event. */
type Heard = Array<{ event: "created"; e: SessionEvent } | { event: "ended"; e: SessionEndedEvent }>;

/** The label of the sessions `flushed` creates to mark a point in the NOTIFY stream: not recorded. */
const MARKER = "marker-";
const isMarker = (e: SessionEvent) => e.label?.startsWith(MARKER) === true;

function record(store: SessionStore): Heard {
  const heard: Heard = [];
  store.on("created", (e) => void (isMarker(e) || heard.push({ event: "created", e })));
  store.on("ended", (e) => void (isMarker(e) || heard.push({ event: "ended", e })));
  return heard;
}

const ended = (heard: Heard) => heard.filter((h) => h.event === "ended").map((h) => h.e as SessionEndedEvent);
const created = (heard: Heard) => heard.filter((h) => h.event === "created").map((h) => h.e);
const user = (id: string, extra: Record<string, unknown> = {}) => sessionData(HOUR, { passport: { user: id }, ...extra });

async function login(app: any, name: string, cookie?: string): Promise<string> {
  const req = request(app).post("/login").set("User-Agent", FIREFOX).send({ username: name, password: "pw" });
  const res = await (cookie ? req.set("Cookie", cookie) : req);
  expect(res.status).toBe(200);
  return cookieOf(res)!;
}

describe.each(drivers)("lifecycle events on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;
  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });

  it("a passport login is `created` with its owner and device, and its logout `ended` as logout (express)", async () => {
    const heard = record(store);
    const app = testApp(store);
    const cookie = await login(app, "ann");
    const [row] = await store.list({ userId: "ann" });
    expect(heard).toEqual([
      {
        event: "created",
        e: { handle: row!.handle, userId: "ann", label: null, userAgent: FIREFOX, ip: "127.0.0.1", device: "Firefox on Linux", local: true },
      },
    ]);
    expect((await request(app).post("/logout").set("Cookie", cookie).set("User-Agent", FIREFOX)).status).toBe(200);
    const anonymous = heard[2]?.e.handle;
    expect(heard.slice(1)).toEqual([
      {
        event: "ended",
        e: { handle: row!.handle, userId: "ann", label: null, userAgent: FIREFOX, ip: "127.0.0.1", device: "Firefox on Linux", local: true, reason: "logout" },
      },
      // passport's logout regenerates, and express-session stores the new (anonymous) session.
      { event: "created", e: { handle: anonymous, userId: null, label: null, userAgent: FIREFOX, ip: "127.0.0.1", device: "Firefox on Linux", local: true } },
    ]);
    expect(anonymous).not.toBe(row!.handle);
  });

  it("a login over a logged-in session ends the old one as rotated, then creates the new one (regenerate)", async () => {
    const app = testApp(store);
    const first = await login(app, "ann");
    const [old] = await store.list({ userId: "ann" });
    const heard = record(store);
    await login(app, "bob", first);
    const [next] = await store.list({ userId: "bob" });
    expect(heard.map((h) => [h.event, h.e.handle, h.e.userId, (h.e as SessionEndedEvent).reason])).toEqual([
      ["ended", old!.handle, "ann", "rotated"],
      ["created", next!.handle, "bob", undefined],
    ]);
  });

  it("a session saved for the first time through the store is created once; later saves and reads are not", async () => {
    const heard = record(store);
    await store.set("s1", user("ann", { label: "Work laptop" }));
    const loaded: any = await store.get("s1");
    loaded.cart = ["book"];
    await store.set("s1", loaded);
    await store.set("s1", user("ann", { label: "Work laptop", more: 1 })); // a known id the store did not load
    await store.touch("s1", loaded);
    const [row] = await store.list({ userId: "ann" });
    expect(heard).toEqual([
      { event: "created", e: { handle: row!.handle, userId: "ann", label: "Work laptop", userAgent: null, ip: null, device: null, local: true } },
    ]);
  });

  it.each([0, HOUR])("revoke and revokeUser: one ended event per session ended, with its reason (retainEnded %s)", async (retainEnded) => {
    const s = new SessionStore({ db: t.db, table: t.table, retainEnded, reaper: false });
    for (const sid of ["a1", "a2", "a3"]) await s.set(sid, user("ann", { label: sid }));
    await s.set("b1", user("bob"));
    const heard = record(s);
    const handles = Object.fromEntries((await s.list({ userId: "ann" })).map((r) => [r.label, r.handle]));
    expect(await s.revoke(handles.a1!, { userId: "ann" })).toBe(true);
    expect(await s.revoke(handles.a1!, { userId: "ann" }), "already ended").toBe(false);
    expect(await s.revoke(handles.a2!, { anyOwner: true, reason: "expired" })).toBe(true);
    await s.set("a4", user("ann", { label: "a4" }));
    await s.set("a5", user("ann", { label: "a5" }));
    expect(await s.revokeUser("ann", { except: "a4" })).toBe(2);
    expect(await s.revokeUser("ann", { reason: "logout" })).toBe(1);
    const byLabel = ended(heard).sort((x, y) => x.label!.localeCompare(y.label!));
    expect(byLabel.map((e) => [e.label, e.userId, e.reason, e.local])).toEqual([
      ["a1", "ann", "revoked", true],
      ["a2", "ann", "expired", true],
      ["a3", "ann", "revoked", true],
      ["a4", "ann", "logout", true],
      ["a5", "ann", "revoked", true],
    ]);
    expect(await s.count({ userId: "bob" }), "other users untouched").toBe(1);
  });

  it("racing ends of the same sessions (destroy, revoke, revokeUser, regenerate) announce each end exactly once", async () => {
    const sids = Array.from({ length: 10 }, (_, i) => `race-${i}`);
    for (const sid of sids) await store.set(sid, user("ann", { label: sid }));
    const handles = (await store.list({ userId: "ann" })).map((r) => r.handle);
    const heard = record(store);
    const regenerate = (sid: string) =>
      new Promise<void>((resolve, reject) => store.regenerate({ sessionID: sid, session: user("ann") }, (err) => (err ? reject(err) : resolve())));
    (store as any).generate = () => {};
    await Promise.all([
      ...sids.flatMap((sid) => [store.destroy(sid), regenerate(sid)]),
      ...handles.map((handle) => store.revoke(handle, { userId: "ann" })),
      store.revokeUser("ann"),
      ...sids.map((sid) => store.destroy(sid)),
    ]);
    const ends = ended(heard);
    expect(ends.map((e) => e.handle).sort()).toEqual([...handles].sort());
    expect(await store.count({ userId: "ann" })).toBe(0);
  });

  it("no event carries a session id or a row key", async () => {
    const heard = record(store);
    const app = testApp(store);
    const cookie = await login(app, "ann");
    await request(app).post("/logout").set("Cookie", cookie);
    await store.set("plain-id", user("bob"));
    await store.revokeUser("bob");
    const sids = [decodeURIComponent(cookie.split("=")[1]!).slice(2).split(".")[0]!, "plain-id"];
    const secrets = sids.flatMap((sid) => [sid, ...internals(store).keysOf(sid)]);
    expect(heard.map((h) => h.event)).toEqual(["created", "ended", "created", "created", "ended"]);
    const text = JSON.stringify(heard);
    for (const secret of secrets) expect(text).not.toContain(secret);
    for (const h of heard)
      expect(Object.keys(h.e).sort()).toEqual(
        ["device", "handle", "ip", "label", "local", "userAgent", "userId", ...(h.event === "ended" ? ["reason"] : [])].sort(),
      );
  });

  it("clear() and the reaper's expiries emit no event (the `reap` event counts expiries)", async () => {
    const s = new SessionStore({ db: t.db, table: t.table, retainEnded: HOUR, reaper: false });
    await s.set("x1", user("ann"));
    await s.set("x2", user("ann"));
    const heard = record(s);
    await t.age(HOUR + 600_000);
    const round = await s.reap();
    expect(round.ended).toBe(2);
    await s.set("x3", user("ann"));
    await s.clear();
    expect(heard.map((h) => h.event)).toEqual(["created"]);
  });

  it("a listener that throws fails neither the logout nor the other listeners; its error is reported", async () => {
    const app = testApp(store);
    const cookie = await login(app, "ann");
    const errors: Error[] = [];
    const after: string[] = [];
    store.on("error", (error) => errors.push(error));
    store.on("ended", () => {
      throw new Error("audit log down");
    });
    store.on("ended", async () => {
      throw new Error("async audit log down");
    });
    store.on("ended", (e) => void after.push(e.reason));
    const res = await request(app).post("/logout").set("Cookie", cookie);
    expect(res.status).toBe(200);
    expect((await request(app).get("/me").set("Cookie", cookie)).status, "the session did end").toBe(401);
    expect(after).toEqual(["logout"]);
    expect(await eventually(() => errors.length === 2)).toBe(true);
    expect(errors.map((e) => [(e as any).code, e.message])).toEqual([
      ["LISTENER", expect.stringMatching(/^connect-drizzle: a listener of the `ended` event threw \(audit log down\); .*catch errors inside your listener/)],
      ["LISTENER", expect.stringContaining("(async audit log down)")],
    ]);
  });

  it("a listener that throws does not fail revoke, and with no `error` listener its error goes to the console", async () => {
    await store.set("r1", user("ann"));
    const [row] = await store.list({ userId: "ann" });
    store.on("ended", () => {
      throw new Error("boom");
    });
    const warned: string[] = [];
    const warn = console.warn;
    console.warn = (message: string) => void warned.push(message);
    try {
      expect(await store.revoke(row!.handle, { userId: "ann" })).toBe(true);
    } finally {
      console.warn = warn;
    }
    expect(warned).toEqual([expect.stringContaining("a listener of the `ended` event threw (boom)")]);
    expect(await store.get("r1")).toBeNull();
  });

  /** The statements of `op` that end sessions (the store's `delete` or `update ... set "ended_at"`). */
  async function endStatements(op: () => Promise<unknown>): Promise<string[]> {
    t.statements.length = 0;
    await op();
    return t.statements.filter((s) => /^delete from|"ended_at" =/.test(s.trim()));
  }

  it("without a listener, ends send the plain statement: it returns only the key (and no NOTIFY)", async () => {
    await store.set("p1", user("ann"));
    await store.set("p2", user("ann"));
    await store.set("p3", user("ann"));
    const [row] = await store.list({ userId: "ann" });
    const plain = [
      ...(await endStatements(() => store.destroy("p1"))),
      ...(await endStatements(() => store.revoke(row!.handle, { anyOwner: true }))),
      ...(await endStatements(() => store.revokeUser("ann"))),
    ];
    expect(plain).toHaveLength(3);
    for (const statement of plain) {
      expect(statement).toMatch(/returning (?:"\w+"\.)?"sessions"\."key" as key$/);
      expect(statement).not.toMatch(/user_agent|pg_notify/);
    }
    // The same statements with a listener return the record: the difference is the event's cost.
    await store.set("p4", user("ann"));
    store.on("ended", () => {});
    const [recorded] = await endStatements(() => store.destroy("p4"));
    expect(recorded).toMatch(/returning (?:"\w+"\.)?"sessions"\."key" as key, (?:"\w+"\.)?"sessions"\."handle" as handle, .*"sessions"\."ip" as ip$/);
  });

  it("an insert without `broadcast` is today's statement, with or without a `created` listener", async () => {
    store.on("created", () => {});
    t.statements.length = 0;
    await store.set("i1", user("ann"));
    const inserts = t.statements.filter((s) => s.startsWith("insert into"));
    expect(inserts).toHaveLength(1);
    expect(inserts[0]).toMatch(/do nothing returning (?:"\w+"\.)?"sessions"\."key" as key, round\(.+\) as authenticated_at$/);
    expect(inserts[0]).not.toContain("pg_notify");
  });
});

describe.each(drivers)("broadcast on %s", (driver) => {
  let t: TestDb;
  const cleanup: Array<() => Promise<void>> = [];
  useTestDb(driver, (db) => {
    t = db;
  });
  afterEach(async () => {
    while (cleanup.length > 0) await cleanup.pop()!();
  });

  async function peerStore(options: Partial<SessionStoreOptions> = {}): Promise<SessionStore> {
    const peer: Peer = await openPeer(t);
    const s = new SessionStore({ db: peer.db, table: t.table, reaper: false, broadcast: true, secrets: SECRET, ...options });
    cleanup.push(() => peer.close());
    cleanup.push(() => s.close());
    return s;
  }

  function localStore(options: Partial<SessionStoreOptions> = {}): SessionStore {
    const s = new SessionStore({ db: t.db, table: t.table, reaper: false, broadcast: true, secrets: SECRET, ...options });
    cleanup.push(() => s.close());
    return s;
  }

  let marker = 0;
  /**
   * Waits until `to` hears a session `from` creates now. NOTIFYs arrive in commit order, so every event
   * of a statement committed before it has arrived too: "heard nothing" is then a fact. The first marker
   * also waits for the LISTEN connection to be up.
   */
  async function flushed(from: SessionStore, to: SessionStore): Promise<void> {
    const label = `${MARKER}${++marker}`;
    let seen = false;
    const hear = (e: SessionEvent) => void (e.label === label && (seen = true));
    to.on("created", hear);
    try {
      const ok = await eventually(async () => {
        if (!seen) await from.set(`m-${label}-${Math.random()}`, sessionData(HOUR, { label }));
        await sleep(20);
        return seen;
      }, 10_000);
      expect(ok, "the marker was heard").toBe(true);
    } finally {
      to.off("created", hear);
    }
  }

  it("a newDevice decided by the instance that logged the user in reaches the others with local: false, once", async () => {
    const a = localStore();
    const b = await peerStore();
    const local: SessionEvent[] = [];
    const remote: SessionEvent[] = [];
    a.on("newDevice", (e) => void local.push(e));
    b.on("newDevice", (e) => void remote.push(e));
    await flushed(a, b);
    await login(testApp(a), "ann");
    const [row] = await a.list({ userId: "ann" });
    const event = { handle: row!.handle, userId: "ann", label: null, userAgent: FIREFOX, ip: "127.0.0.1", device: "Firefox on Linux" };
    expect(await eventually(() => remote.length > 0, 10_000)).toBe(true);
    expect(remote).toEqual([{ ...event, local: false }]);
    expect(local).toEqual([{ ...event, local: true }]);
    // The same device again is no new device, on either instance.
    await login(testApp(a), "ann");
    await flushed(a, b);
    await sleep(100);
    expect(remote).toHaveLength(1);
    expect(local).toHaveLength(1);
  });

  it("another store on the table hears `ended` of a revoke with local: false; the acting store emits it exactly once", async () => {
    const a = localStore();
    const b = await peerStore();
    const heardA = record(a);
    const heardB = record(b);
    await flushed(a, b);
    await flushed(b, a);
    heardA.length = 0;
    heardB.length = 0;
    const app = testApp(a);
    await login(app, "ann");
    const [row] = await a.list({ userId: "ann" });
    expect(await a.revoke(row!.handle, { userId: "ann" })).toBe(true);
    await flushed(a, b);
    await flushed(b, a);
    const event = { handle: row!.handle, userId: "ann", label: null, userAgent: FIREFOX, ip: "127.0.0.1", device: "Firefox on Linux" };
    expect(heardA).toEqual([
      { event: "created", e: { ...event, local: true } },
      { event: "ended", e: { ...event, local: true, reason: "revoked" } },
    ]);
    expect(heardB).toEqual([
      { event: "created", e: { ...event, local: false } },
      { event: "ended", e: { ...event, local: false, reason: "revoked" } },
    ]);
  });

  it("racing ends from two stores: each session's end is heard exactly once by every store, and emitted once by the one that ended it", async () => {
    const a = localStore();
    const b = await peerStore({ retainEnded: HOUR });
    const heardA = record(a);
    const heardB = record(b);
    await flushed(a, b);
    await flushed(b, a);
    const sids = Array.from({ length: 12 }, (_, i) => `r-${i}`);
    for (const sid of sids) await a.set(sid, user("ann", { label: sid }));
    const handles = (await a.list({ userId: "ann" })).map((r) => r.handle);
    await Promise.all([
      ...sids.map((sid, i) => (i % 2 ? a : b).destroy(sid)),
      ...handles.map((handle, i) => (i % 2 ? b : a).revoke(handle, { anyOwner: true })),
      a.revokeUser("ann"),
      b.revokeUser("ann"),
    ]);
    await flushed(a, b);
    await flushed(b, a);
    for (const heard of [heardA, heardB])
      expect(
        ended(heard)
          .map((e) => e.handle)
          .sort(),
      ).toEqual([...handles].sort());
    const localA = ended(heardA)
      .filter((e) => e.local)
      .map((e) => e.handle);
    const localB = ended(heardB)
      .filter((e) => e.local)
      .map((e) => e.handle);
    expect([...localA, ...localB].sort(), "each end was made by exactly one store").toEqual([...handles].sort());
  });

  it("without `broadcast`, the other store hears nothing of this store's changes", async () => {
    const quiet = new SessionStore({ db: t.db, table: t.table, reaper: false });
    const a = localStore();
    const b = await peerStore();
    const heardB = record(b);
    await flushed(a, b);
    await quiet.set("q1", user("ann"));
    await quiet.destroy("q1");
    await quiet.set("q2", user("ann"));
    await quiet.revokeUser("ann");
    await flushed(a, b);
    expect(heardB).toEqual([]);
  });

  it("after close(), a store hears no more events", async () => {
    const a = localStore();
    const b = await peerStore();
    const c = await peerStore();
    const heardB = record(b);
    const heardC = record(c);
    await flushed(a, b);
    await flushed(a, c);
    await b.close();
    await a.set("after-close", user("ann"));
    await flushed(a, c);
    await sleep(50);
    expect(created(heardB).filter((e) => e.userId === "ann")).toEqual([]);
    expect(created(heardC).filter((e) => e.userId === "ann")).toHaveLength(1);
  });

  it("two tables whose cut channel names are the same do not hear each other's events", async () => {
    const tables = [];
    for (const suffix of ["a", "b"]) {
      const name = `${"x".repeat(40)}_${suffix}`;
      await t.raw(`create table "${t.schema}"."${name}" (like $table including all)`);
      tables.push(createSessionTable(name, { schema: t.schema }));
    }
    const onA = localStore({ table: tables[0] });
    const onB = localStore({ table: tables[1] });
    const otherOnB = await peerStore({ table: tables[1] });
    expect(internals(onA).eventsChannel).toBe(internals(onB).eventsChannel);
    const heardB = record(otherOnB);
    await flushed(onB, otherOnB);
    await onA.set("on-a", user("ann"));
    await onA.destroy("on-a");
    await onB.set("on-b", user("bob"));
    await flushed(onB, otherOnB);
    expect(heardB.map((h) => [h.event, h.e.userId])).toEqual([["created", "bob"]]);
  });

  /** Every payload on the events channel of `store`'s table, from a LISTEN of its own (what anyone who can connect sees). */
  /** The events `store` sends on its channel, as sealed payloads (the LISTEN probes, random and event-free, left out). */
  async function tap(store: SessionStore): Promise<string[]> {
    const payloads: string[] = [];
    let ready = false;
    const onMessage = (p: string) => void (p.startsWith("?probe:") ? expect(p).toMatch(/^\?probe:[\w-]{22}$/) : payloads.push(p));
    const hearing = listen(t.db, channelOf(store), { onMessage, onReady: () => void (ready = true), onLost: () => {} }, { lossy: true })!;
    cleanup.push(() => hearing.close());
    expect(await eventually(() => ready, 10_000)).toBe(true);
    return payloads;
  }

  const channelOf = (store: SessionStore): string => internals(store).eventsChannel;

  /** NOTIFYs `payload` on `store`'s events channel with raw SQL, outside any store. */
  const notifyRaw = (store: SessionStore, payload: string) => t.raw(`select pg_notify('${channelOf(store)}', '${payload.replaceAll("'", "''")}')`);

  /** Keeps the stores a test is not about from writing what they refuse to the console. */
  const quiet = (...stores: SessionStore[]) => {
    for (const s of stores) s.on("error", () => {});
  };

  /** The messages of the `UNTRUSTED_EVENT` errors `store` reports. */
  function untrusted(store: SessionStore): string[] {
    const messages: string[] = [];
    store.on("error", (error) => void ((error as any).code === "UNTRUSTED_EVENT" && messages.push(error.message)));
    return messages;
  }

  /** An old-style (plain JSON) event payload, as anyone who can connect could NOTIFY it. */
  const forgedJson = (store: SessionStore, e: string) =>
    JSON.stringify({
      i: "forger",
      t: internals(store).tableName,
      e,
      handle: "forged-handle",
      userId: "ann",
      label: null,
      userAgent: FIREFOX,
      ip: "203.0.113.9",
      reason: "revoked",
    });

  it("`broadcast` without `secrets` (or with a short one) is a TypeError at construction that says to set them", () => {
    expect(() => new SessionStore({ db: t.db, table: t.table, reaper: false, broadcast: true })).toThrow(
      expect.objectContaining({
        name: "TypeError",
        message: expect.stringMatching(/^connect-drizzle: `broadcast` needs `secrets` \(the same on every instance\)/),
      }),
    );
    expect(() => new SessionStore({ db: t.db, table: t.table, reaper: false, broadcast: true, secrets: ["short"] })).toThrow(TypeError);
    expect(() => new SessionStore({ db: t.db, table: t.table, reaper: false, broadcast: true, secrets: [SECRET, "short"] })).toThrow(TypeError);
  });

  it("an event NOTIFYed by someone without the secrets (raw SQL, old-style JSON or sealed-looking) is dropped and reported, never emitted", async () => {
    const a = localStore();
    const b = await peerStore();
    quiet(a);
    const payloads = await tap(a);
    const heardB = record(b);
    const rejected = untrusted(b);
    await flushed(a, b);
    const kid = payloads[0]!.split(".")[0]!;
    const forged = [
      forgedJson(a, "ended"),
      forgedJson(a, "created"),
      forgedJson(a, "newDevice"),
      `${kid}.${randomBytes(200).toString("base64url")}`,
      `${randomBytes(6).toString("base64url")}.${randomBytes(200).toString("base64url")}`,
      "",
    ];
    for (const payload of forged) await notifyRaw(a, payload);
    let newDevices = 0;
    b.on("newDevice", () => void newDevices++);
    await flushed(a, b);
    expect(heardB).toEqual([]);
    expect(newDevices).toBe(0);
    expect(rejected).toHaveLength(forged.length);
    for (const message of rejected) expect(message).toMatch(/^connect-drizzle: an event heard on the `broadcast` channel was dropped, never emitted: /);
  });

  it.skipIf(driver === "pglite")(
    "a role with no privilege on the sessions table can NOTIFY on the events channel, and its event is dropped and reported",
    async () => {
      const a = localStore();
      const b = await peerStore();
      quiet(a);
      const heardB = record(b);
      const rejected = untrusted(b);
      await flushed(a, b);
      const role = `cd_forger_${process.pid}_${Date.now().toString(36)}`;
      await t.raw(`create role "${role}" login`);
      const url = new URL(DATABASE_URL!);
      url.username = role;
      url.password = "";
      const forger = new pg.Client({ connectionString: url.toString() });
      try {
        await forger.connect();
        await expect(forger.query(`select count(*) from $table`.replace("$table", `"${t.schema}"."sessions"`))).rejects.toThrow(/permission denied/);
        await forger.query("select pg_notify($1, $2)", [channelOf(a), forgedJson(a, "ended")]);
      } finally {
        await forger.end().catch(() => {});
        await t.raw(`drop role "${role}"`);
      }
      await flushed(a, b);
      expect(heardB).toEqual([]);
      expect(rejected).toHaveLength(1);
    },
  );

  it("a replayed event (the same sealed payload sent again) is dropped and reported", async () => {
    const a = localStore();
    const b = await peerStore();
    quiet(a);
    const payloads = await tap(a);
    const heardB = record(b);
    const rejected = untrusted(b);
    await flushed(a, b);
    payloads.length = 0;
    await a.set("replayed", user("ann"));
    expect(await eventually(() => created(heardB).length === 1)).toBe(true);
    expect(payloads).toHaveLength(1);
    await notifyRaw(a, payloads[0]!);
    await notifyRaw(a, payloads[0]!);
    await flushed(a, b);
    expect(created(heardB).map((e) => e.userId)).toEqual(["ann"]);
    expect(rejected).toEqual([expect.stringContaining("replayed"), expect.stringContaining("replayed")]);
  });

  it("an altered payload is dropped and reported", async () => {
    const a = localStore();
    const payloads = await tap(a);
    const b = await peerStore();
    quiet(a);
    const heardB = record(b);
    const rejected = untrusted(b);
    await flushed(a, b);
    payloads.length = 0;
    await a.set("altered", user("ann"));
    expect(await eventually(() => payloads.length === 1)).toBe(true);
    await flushed(a, b);
    heardB.length = 0;
    const [original] = payloads;
    const flip = (text: string, at: number) => text.slice(0, at) + (text[at] === "A" ? "B" : "A") + text.slice(at + 1);
    const body = original!.indexOf(".") + 1;
    const altered = [flip(original!, body + 20), flip(original!, original!.length - 2), original!.slice(0, -4), flip(original!, 0)];
    for (const payload of altered) await notifyRaw(a, payload);
    await flushed(a, b);
    expect(heardB).toEqual([]);
    expect(rejected).toHaveLength(altered.length);
  });

  it("the channel carries no personal data in the clear: no user id, IP, user agent, label, handle, session id or key", async () => {
    const a = localStore({ retainEnded: HOUR });
    const payloads = await tap(a);
    const userId = "user@example.com";
    const app = testApp(a);
    const cookie = await login(app, userId);
    await a.set("labelled-sid", sessionData(HOUR, { passport: { user: userId }, label: "Work laptop" }));
    const records = await a.list({ userId, status: "all" });
    await request(app).post("/logout").set("Cookie", cookie).set("User-Agent", FIREFOX);
    await a.revokeUser(userId);
    // created, newDevice (express login), created (set), ended (logout), created (anonymous), ended (revokeUser)
    expect(await eventually(() => payloads.length >= 6)).toBe(true);
    const secrets = [
      userId,
      "user%40example.com",
      "127.0.0.1",
      "Firefox",
      "Work laptop",
      "labelled-sid",
      ...records.map((r) => r.handle),
      ...internals(a).keysOf("labelled-sid"),
    ];
    for (const payload of payloads) {
      expect(payload).toMatch(/^[\w-]+\.[\w-]+$/);
      for (const secret of secrets) expect(payload).not.toContain(secret);
    }
  });

  it("an event sealed under another deployment's secrets is dropped and reported; during a rotation both secrets open", async () => {
    const a = localStore();
    const stranger = localStore({ secrets: OTHER_SECRET });
    const b = await peerStore();
    quiet(a, stranger);
    const heardB = record(b);
    const rejected = untrusted(b);
    await flushed(a, b);
    await stranger.set("stranger", user("eve"));
    await flushed(a, b);
    expect(heardB).toEqual([]);
    expect(rejected).toEqual([expect.stringContaining("set the same `secrets` on every instance")]);
    // A new secret first on one instance, second on the other: each hears the other.
    const next = localStore({ secrets: [OTHER_SECRET, SECRET] });
    const during = await peerStore({ secrets: [SECRET, OTHER_SECRET] });
    quiet(next, during);
    const heardNext = record(next);
    const heardDuring = record(during);
    await flushed(next, during);
    await flushed(during, next);
    await next.set("rotating-1", user("ann"));
    await during.set("rotating-2", user("bob"));
    await flushed(next, during);
    await flushed(during, next);
    expect(
      created(heardDuring)
        .filter((e) => !e.local)
        .map((e) => e.userId),
    ).toEqual(["ann"]);
    expect(
      created(heardNext)
        .filter((e) => !e.local)
        .map((e) => e.userId),
    ).toEqual(["bob"]);
  });

  it("an event sent more than a minute from the receiver's clock is dropped and reported (a replay after the nonces are forgotten)", async () => {
    class Skewed extends SessionStore {
      protected override now(): number {
        return Date.now() - 2 * 60_000;
      }
    }
    const a = localStore();
    const skewed = new Skewed({ db: t.db, table: t.table, reaper: false, broadcast: true, secrets: SECRET });
    cleanup.push(() => skewed.close());
    const b = await peerStore();
    quiet(a, skewed);
    const heardB = record(b);
    const rejected = untrusted(b);
    await flushed(a, b);
    await skewed.set("stale", user("eve"));
    await flushed(a, b);
    expect(heardB).toEqual([]);
    expect(rejected).toEqual([expect.stringContaining("from this server's clock")]);
  });

  it("an event too large for a NOTIFY (a row written by something else) goes out with its handle and reason only, and the end succeeds", async () => {
    const a = localStore();
    const b = await peerStore();
    const heardB = record(b);
    await flushed(a, b);
    await a.set("huge", user("ann"));
    await t.raw(`update $table set user_agent = repeat('é', 5000), label = repeat('x', 200)`);
    const [row] = await a.list({ userId: "ann" });
    await a.destroy("huge");
    expect(await a.get("huge")).toBeNull();
    await flushed(a, b);
    expect(ended(heardB)).toEqual([
      { handle: row!.handle, userId: null, label: null, userAgent: null, ip: null, device: null, local: false, reason: "logout" },
    ]);
  });
});

describe.skipIf(!DATABASE_URL)("broadcast through pg-proxy (no LISTEN)", () => {
  let t: TestDb;
  let pool: pg.Pool;
  beforeAll(async () => {
    t = await openDb("pg-proxy");
    pool = new pg.Pool({ connectionString: DATABASE_URL, max: 2 });
  });
  afterAll(async () => {
    await pool.end();
    await t.close();
  });

  it("sends its events to the instances that listen, and emits only its own", async () => {
    const proxied = new SessionStore({ db: t.db, table: t.table, reaper: false, broadcast: true, secrets: SECRET });
    const listener = new SessionStore({ db: drizzlePg({ client: pool }), table: t.table, reaper: false, broadcast: true, secrets: SECRET });
    try {
      const heardProxied = record(proxied);
      const heardListener = record(listener);
      const ok = await eventually(async () => {
        await proxied.set(`warm-${Math.random()}`, sessionData(HOUR, { label: "warm" }));
        await sleep(20);
        return created(heardListener).length > 0;
      }, 10_000);
      expect(ok).toBe(true);
      heardProxied.length = 0;
      heardListener.length = 0;
      await listener.set("from-listener", user("bob"));
      await proxied.set("p", user("ann"));
      await proxied.destroy("p");
      expect(await eventually(() => ended(heardListener).length === 1)).toBe(true);
      expect(ended(heardListener)[0]).toMatchObject({ userId: "ann", reason: "logout", local: false });
      expect(heardProxied.map((h) => [h.event, h.e.userId, h.e.local])).toEqual([
        ["created", "ann", true],
        ["ended", "ann", true],
      ]);
    } finally {
      await proxied.close();
      await listener.close();
    }
  });
});
