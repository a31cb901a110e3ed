import { randomBytes } from "node:crypto";
import { drizzle } from "drizzle-orm/node-postgres";
import request from "supertest";
import { describe, expect, it } from "vitest";
import { SessionStore, type SessionStoreOptions } from "../src/index.js";
import { Sealer } from "./support/internals.js";
import { cookieOf, testApp } from "./support/app.js";
import { cacheReady, drivers, eventually, notifyBarrier, sessionData, type TestDb, useTestDb } from "./support/db.js";
import { internals } from "./support/internals.js";

const OLD = randomBytes(32).toString("base64url");
const NEW = randomBytes(32).toString("base64url");
/** A value the app puts in a session: it must never appear in the `data` column. */
const MARKER = "marker-3f9c1e";

/** The sealer of `secrets`, to read what the table holds the way the store does. */
const sealer = (...secrets: string[]) => new Sealer({ secrets, acceptPlaintext: false });

/**
 * Whether a row is stored as a save with `secret` first would store it now, as the store itself decides it
 * when it reads the row: every entry and the cookie's tag sealed under `secret`, nothing to re-seal.
 */
function current(row: { key: string; data: object }, secret: string): boolean {
  const opened = sealer(secret).unseal(row.key, row.data);
  return typeof opened !== "string" && opened.stale.length === 0 && !opened.staleTag;
}

describe("encrypt options", () => {
  const db = drizzle.mock();

  it("a secret shorter than 32 characters is a TypeError saying how to make one", () => {
    for (const secrets of ["short", [OLD, "short"], []]) {
      expect(() => new SessionStore({ db, encrypt: { secrets } })).toThrow(TypeError);
      expect(() => new SessionStore({ db, encrypt: { secrets } })).toThrow(/at least 32 random characters.*randomBytes\(32\)\.toString\('base64url'\)/);
    }
  });

  it("a misspelt encrypt option or a non-boolean acceptPlaintext is a TypeError", () => {
    expect(() => new SessionStore({ db, encrypt: { secrets: OLD, acceptPlaintxt: true } as any })).toThrow(
      /unknown `encrypt` option `acceptPlaintxt` \(did you mean `acceptPlaintext`\?\)/,
    );
    expect(() => new SessionStore({ db, encrypt: { secrets: OLD, acceptPlaintext: "yes" } as any })).toThrow(/`encrypt.acceptPlaintext` must be true or false/);
    expect(() => new SessionStore({ db, encrypt: OLD as any })).toThrow(/`encrypt` must be an object/);
  });
});

describe.each(drivers)("encryption at rest on %s", (driver) => {
  let t: TestDb;

  useTestDb(driver, (db) => {
    t = db;
  });

  function encrypted(secrets: string | string[] = OLD, options: Partial<SessionStoreOptions> & { acceptPlaintext?: boolean } = {}): SessionStore {
    const { acceptPlaintext, ...rest } = options;
    return new SessionStore({ db: t.db, table: t.table, reaper: false, encrypt: { secrets, acceptPlaintext }, ...rest });
  }

  /** The errors a store reports (its `error` event). */
  function reported(store: SessionStore): Error[] {
    const errors: Error[] = [];
    store.on("error", (error) => errors.push(error));
    return errors;
  }

  /** An app on `store` with a route that puts MARKER in the session and a label route. */
  function app(store: SessionStore, options = {}) {
    return testApp(store, options, (app) => {
      app.post("/mark", (req, res) => {
        (req.session as any).note = MARKER;
        res.json({ ok: true });
      });
      app.get("/mark", (req, res) => res.json({ note: (req.session as any).note ?? null }));
      app.post("/label", (req, res) => {
        (req.session as any).label = "Work laptop";
        res.json({ ok: true });
      });
    });
  }

  async function login(app: any, user = "ann", agent = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"): Promise<string> {
    const res = await request(app).post("/login").set("User-Agent", agent).send({ username: user, password: "pw" });
    expect(res.status).toBe(200);
    return cookieOf(res)!;
  }

  /** The stored data of the user's only row, parsed, with its key. */
  async function rowOf(user: string): Promise<{ key: string; data: Record<string, any> }> {
    const rows = await t.raw(`select key, data::text as data from $table where user_id = '${user}'`);
    expect(rows).toHaveLength(1);
    return { key: rows[0].key, data: JSON.parse(rows[0].data) };
  }

  async function setData(key: string, data: Record<string, unknown>): Promise<void> {
    await t.raw(`update $table set data = '${JSON.stringify(data).replaceAll("'", "''")}'::jsonb where key = '${key}'`);
  }

  it("through express: login, change and logout work, and the data column holds no session value, only the cookie", async () => {
    const store = encrypted();
    const web = app(store);
    const cookie = await login(web);
    expect((await request(web).post("/mark").set("Cookie", cookie)).status).toBe(200);
    expect((await request(web).post("/count").set("Cookie", cookie)).body).toEqual({ views: 1 });
    expect((await request(web).post("/count").set("Cookie", cookie)).body).toEqual({ views: 2 });
    expect((await request(web).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
    expect((await request(web).get("/mark").set("Cookie", cookie)).body).toEqual({ note: MARKER });

    const [row] = await t.raw(`select data::text as text, data->'cookie'->>'path' as path from $table`);
    for (const plain of [MARKER, "passport", "views", "note", '"ann"']) expect(row.text).not.toContain(plain);
    expect(row.path).toBe("/");
    const { data } = await rowOf("ann");
    expect(
      Object.keys(data)
        .filter((k) => k !== "cookie" && k !== "~cookie")
        .every((k) => /^~[\w-]{22}$/.test(k)),
    ).toBe(true);
    expect(Object.keys(data)).toHaveLength(5); // cookie, its tag, passport, note, views

    expect((await request(web).post("/logout").set("Cookie", cookie)).status).toBe(200);
    expect((await request(web).get("/me").set("Cookie", cookie)).status).toBe(401);
    expect((await request(web).get("/mark").set("Cookie", cookie)).body).toEqual({ note: null });
  });

  it("list, count and revoke by owner, label and device work on encrypted sessions, and all() opens them", async () => {
    const store = encrypted();
    const web = app(store);
    const laptop = await login(web, "ann");
    const phone = await login(
      web,
      "ann",
      "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    );
    await request(web).post("/label").set("Cookie", laptop);
    const records = await store.list({ userId: "ann" });
    expect(records.map((r) => r.label).sort()).toEqual(["Work laptop", null].sort());
    const phoneRecord = records.find((r) => r.label === null)!;
    expect(phoneRecord.device).toMatch(/Safari on iOS/);
    expect(await store.count({ userId: "ann" })).toBe(2);

    const all = await store.all();
    expect(Object.values(all).map((s: any) => s.passport.user)).toEqual(["ann", "ann"]);

    expect(await store.revoke(phoneRecord.handle, { userId: "ann" })).toBe(true);
    expect((await request(web).get("/me").set("Cookie", phone)).status).toBe(401);
    expect((await request(web).get("/me").set("Cookie", laptop)).body).toEqual({ user: "ann" });
    expect(await store.revokeUser("ann")).toBe(1);
    expect((await request(web).get("/me").set("Cookie", laptop)).status).toBe(401);
  });

  it("rotation: a session that is only read is re-sealed under the new secret by its first touch that writes, so dropping the old secret later keeps it", async () => {
    const cookie = await login(app(encrypted(OLD)), "ann");
    await request(app(encrypted(OLD)))
      .post("/mark")
      .set("Cookie", cookie);
    // touchAfter: 0, so the read's touch writes (as one does every touchAfter on a used session).
    const rotated = encrypted([NEW, OLD], { touchAfter: 0 });
    const errors = reported(rotated);
    expect((await request(app(rotated)).get("/mark").set("Cookie", cookie)).body).toEqual({ note: MARKER });
    const row = await rowOf("ann");
    expect(current(row, NEW)).toBe(true);
    expect(Object.keys(row.data)).toHaveLength(4); // cookie, its tag, passport, note
    // The new secret alone reads it: nothing was left under the old one.
    expect(
      (
        await request(app(encrypted(NEW)))
          .get("/mark")
          .set("Cookie", cookie)
      ).body,
    ).toEqual({ note: MARKER });
    expect(errors).toEqual([]);
  });

  it("rotation: rows sealed under the old secret are read after a new first secret is added, and the next save re-seals them under it", async () => {
    const before = app(encrypted(OLD));
    const changed = await login(before, "ann");
    const unchanged = await login(before, "bob");
    await request(before).post("/mark").set("Cookie", changed);

    const rotated = encrypted([NEW, OLD]);
    const errors = reported(rotated);
    const after = app(rotated);
    expect((await request(after).get("/me").set("Cookie", changed)).body).toEqual({ user: "ann" });
    expect((await request(after).get("/mark").set("Cookie", changed)).body).toEqual({ note: MARKER });
    expect(current(await rowOf("ann"), OLD)).toBe(true);

    // A save with a change re-seals the whole row under the new secret, without duplicates.
    expect((await request(after).post("/count").set("Cookie", changed)).body).toEqual({ views: 1 });
    const ann = await rowOf("ann");
    expect(current(ann, NEW)).toBe(true);
    expect(Object.keys(ann.data)).toHaveLength(5); // cookie, its tag, passport, note, views

    // An unchanged save (express-session's resave, or a direct set) re-seals too.
    const sid = decodeURIComponent(unchanged.split("=")[1]!).slice(2).split(".")[0]!;
    await rotated.set(sid, (await rotated.get(sid))!);
    expect(current(await rowOf("bob"), NEW)).toBe(true);

    // The old secret alone no longer reads them: they were re-sealed, not copied.
    const oldOnly = encrypted(OLD);
    const refused = reported(oldOnly);
    expect((await request(app(oldOnly)).get("/me").set("Cookie", changed)).status).toBe(401);
    expect(refused.map((e: any) => e.code)).toEqual(["CORRUPT_ROW"]);
    expect(refused[0]!.message).toMatch(/not in `encrypt.secrets`/);
    expect((await request(after).get("/mark").set("Cookie", changed)).body).toEqual({ note: MARKER });
    expect(errors).toEqual([]);
  });

  it("rotation in two steps: instances listing [old, new] and [new, old] serve each other's saves under racing requests", async () => {
    const stores = [encrypted([OLD, NEW]), encrypted([NEW, OLD])];
    const errors: Error[] = [];
    for (const store of stores) store.on("error", (error) => errors.push(error));
    const apps = stores.map((s) => app(s));
    const [first, second] = apps as [ReturnType<typeof app>, ReturnType<typeof app>];
    const cookie = await login(first, "ann");
    const results = await Promise.all(
      Array.from({ length: 24 }, (_, i) => {
        const web = apps[i % 2]!;
        return i % 3 === 0 ? request(web).post("/count").set("Cookie", cookie) : request(web).get("/me").set("Cookie", cookie);
      }),
    );
    expect(results.map((r) => r.status)).toEqual(results.map(() => 200));
    expect(results.filter((_, i) => i % 3 !== 0).every((r) => r.body.user === "ann")).toBe(true);
    for (const web of [first, second]) expect((await request(web).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
    expect((await request(second).get("/count").set("Cookie", cookie)).body.views).toBeGreaterThan(0);
    expect(errors).toEqual([]);
  });

  type Tamper = (rows: { ann: { key: string; data: Record<string, any> }; bob: { key: string; data: Record<string, any> } }) => Promise<void>;
  const passport = () => sealer(OLD).storedNames("passport")[0]!;

  it.each<[string, Tamper]>([
    [
      "a flipped byte in an entry",
      async ({ ann }) => {
        const [kid, body] = ann.data[passport()].split(".");
        const bytes = Buffer.from(body, "base64url");
        bytes[bytes.length - 20]! ^= 1;
        await setData(ann.key, { ...ann.data, [passport()]: `${kid}.${bytes.toString("base64url")}` });
      },
    ],
    ["an entry swapped in from another session's row", async ({ ann, bob }) => setData(ann.key, { ...ann.data, [passport()]: bob.data[passport()] })],
    ["an entry copied to another name", async ({ ann }) => setData(ann.key, { ...ann.data, [sealer(OLD).storedNames("admin")[0]!]: ann.data[passport()] })],
    ["a plaintext entry injected", async ({ ann }) => setData(ann.key, { ...ann.data, admin: true })],
    ["its passport entry replaced by a plaintext one", async ({ ann }) => setData(ann.key, { cookie: ann.data.cookie, passport: { user: "bob" } })],
  ])("%s: a CORRUPT_ROW error event, and the request gets a fresh session, not the tampered one", async (_, tamper) => {
    const store = encrypted();
    const errors = reported(store);
    const web = app(store);
    const annCookie = await login(web, "ann");
    const bobCookie = await login(web, "bob");
    await tamper({ ann: await rowOf("ann"), bob: await rowOf("bob") });
    const responses = await Promise.all(Array.from({ length: 4 }, () => request(web).get("/me").set("Cookie", annCookie)));
    expect(responses.map((r) => r.status)).toEqual([401, 401, 401, 401]);
    expect(errors.length).toBeGreaterThan(0);
    expect(errors.every((e: any) => e.code === "CORRUPT_ROW" && /treated as missing/.test(e.message))).toBe(true);
    expect((await request(web).get("/mark").set("Cookie", annCookie)).body).toEqual({ note: null });
    expect((await request(web).get("/me").set("Cookie", bobCookie)).body).toEqual({ user: "bob" });
  });

  it("plaintext rows are refused without acceptPlaintext; with it they are read, and their next save seals them", async () => {
    const plain = app(new SessionStore({ db: t.db, table: t.table, reaper: false }));
    const cookie = await login(plain, "ann");
    await request(plain).post("/mark").set("Cookie", cookie);
    const other = await login(plain, "bob");

    const strict = encrypted(OLD);
    const refused = reported(strict);
    expect((await request(app(strict)).get("/me").set("Cookie", cookie)).status).toBe(401);
    expect(refused.map((e: any) => e.code)).toEqual(["CORRUPT_ROW"]);
    expect(refused[0]!.message).toMatch(/plaintext.*acceptPlaintext/);

    const changeover = app(encrypted(OLD, { acceptPlaintext: true }));
    expect((await request(changeover).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
    expect((await rowOf("ann")).data.passport).toEqual({ user: "ann" });
    expect((await request(changeover).post("/count").set("Cookie", cookie)).body).toEqual({ views: 1 });
    const [row] = await t.raw(`select key, data::text as text from $table where user_id = 'ann'`);
    for (const value of [MARKER, "passport", "views"]) expect(row.text).not.toContain(value);
    expect(current({ key: row.key, data: JSON.parse(row.text) }, OLD)).toBe(true);

    // Sealed now, so read with acceptPlaintext off again; the untouched plaintext row stays refused.
    const after = app(strict);
    expect((await request(after).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
    expect((await request(after).get("/mark").set("Cookie", cookie)).body).toEqual({ note: MARKER });
    expect((await request(after).get("/me").set("Cookie", other)).status).toBe(401);
  });

  it("touch, rolling and store.extend still work on encrypted rows (the cookie stays in the clear)", async () => {
    const store = encrypted(OLD, { touchAfter: 0 });
    const web = app(store, { rolling: true });
    const cookie = await login(web, "ann");
    await t.age(60_000);
    const [aged] = await t.raw(`select expires_at from $table`);
    expect((await request(web).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
    const [touched] = await t.raw(`select expires_at from $table`);
    expect(new Date(touched.expires_at).getTime()).toBeGreaterThan(new Date(aged.expires_at).getTime() + 30_000);

    const [record] = await store.list({ userId: "ann" });
    const until = new Date(Date.now() + 7 * 86_400_000);
    expect(await store.extend(record!.handle, until, { userId: "ann" })).toBe(true);
    const extended = await rowOf("ann");
    expect(Date.parse(extended.data.cookie.expires)).toBe(until.getTime());
    expect(current(extended, OLD)).toBe(true);
    expect((await request(web).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
  });

  it("a key stored under two secrets is read from the earliest-listed one's entry, and storedNames names both", async () => {
    const store = encrypted([NEW, OLD]);
    await store.set("sid-1", sessionData(60_000, { userId: "ann" }));
    const { key, data } = await rowOf("ann");
    const names: string[] = internals(store).storedNames("role");
    expect(names).toEqual([sealer(NEW).storedNames("role")[0], sealer(OLD).storedNames("role")[0]]);
    await setData(key, { ...data, ...sealer(OLD).seal(key, { role: "old" }), ...sealer(NEW).seal(key, { role: "new" }) });
    expect(((await store.get("sid-1")) as any).role).toBe("new");
    expect(((await encrypted([OLD, NEW]).get("sid-1")) as any).role).toBe("old");
    // Not current (an entry under an older secret): the next save rewrites the row without the duplicate.
    await store.set("sid-1", (await store.get("sid-1"))!);
    const after = (await rowOf("ann")).data;
    expect(names.filter((name) => name in after)).toEqual([names[0]]);
    expect(current({ key, data: after }, NEW)).toBe(true);
  });

  it("maxSize applies to the session's data, not to its larger encrypted form", async () => {
    const store = encrypted(OLD, { maxSize: 3_000 });
    await store.set("fits", sessionData(60_000, { blob: "x".repeat(2_800) }));
    const [row] = await t.raw(`select octet_length(data::text) as size from $table`);
    expect(row.size).toBeGreaterThan(3_000);
    expect(((await store.get("fits")) as any).blob).toHaveLength(2_800);
    await expect(store.set("too big", sessionData(60_000, { blob: "x".repeat(3_000) }))).rejects.toMatchObject({ code: "TOO_LARGE" });
  });

  it("a set of an id whose row is keyed under an older id secret seals it under that row's key", async () => {
    const old = encrypted(OLD, { secrets: ["first id secret"] });
    await old.set("sid-1", sessionData(60_000, { userId: "ann", step: 1 }));
    const rotated = encrypted(OLD, { secrets: ["second id secret", "first id secret"] });
    const errors = reported(rotated);
    await rotated.set("sid-1", sessionData(60_000, { userId: "ann", step: 2 }));
    expect(await t.raw(`select 1 from $table`)).toHaveLength(1);
    expect(((await rotated.get("sid-1")) as any).step).toBe(2);
    expect(((await old.get("sid-1")) as any).step).toBe(2);
    expect(errors).toEqual([]);
  });

  it("two tabs changing different keys both keep their change, sealed; a key one tab deletes stays deleted, under every secret's name", async () => {
    const store = encrypted(OLD);
    await store.set("sid-tabs", sessionData(60_000, { userId: "ann", cart: ["book"], theme: "light", note: MARKER }));
    // Racing pairs of requests, each loading before either saves (as two tabs do).
    for (let round = 0; round < 10; round++) {
      const [a, b] = (await Promise.all([store.get("sid-tabs"), store.get("sid-tabs")])) as any[];
      a.cart = [...a.cart, `item ${round}`];
      b.theme = round % 2 ? "dark" : "light";
      delete b.note;
      await Promise.all([store.set("sid-tabs", a), store.set("sid-tabs", b)]);
      const now = (await store.get("sid-tabs")) as any;
      expect(now.cart).toHaveLength(round + 2);
      expect(now.theme).toBe(round % 2 ? "dark" : "light");
      expect(now).not.toHaveProperty("note");
    }
    const [row] = await t.raw(`select key, data::text as data from $table`);
    expect(row.data).not.toContain("book");
    expect(row.data).not.toContain(MARKER);
    // One entry per key (cart, theme, userId) beside the cookie: nothing left behind under another name.
    expect(Object.keys(JSON.parse(row.data)).sort()).toEqual(
      ["cookie", "~cookie", ...sealer(OLD).storedNames("cart"), ...sealer(OLD).storedNames("theme"), ...sealer(OLD).storedNames("userId")].sort(),
    );
    // After a rotation, a change to one key of a row sealed under the old secret re-seals the whole row.
    const rotated = encrypted([NEW, OLD]);
    const loaded = (await rotated.get("sid-tabs")) as any;
    loaded.theme = "blue";
    await rotated.set("sid-tabs", loaded);
    const [after] = await t.raw(`select key, data::text as data from $table`);
    expect(current({ key: after.key, data: JSON.parse(after.data) }, NEW)).toBe(true);
    expect(Object.keys(JSON.parse(after.data))).toHaveLength(5);
    expect(((await rotated.get("sid-tabs")) as any).theme).toBe("blue");
  });

  it.runIf(driver !== "postgres.js")("with the read cache, cached sessions are served as plain data and a change is read back", async () => {
    const store = encrypted(OLD, { cache: {} });
    try {
      expect(await cacheReady(store)).toBe(true);
      const web = app(store);
      const cookie = await login(web, "ann");
      await request(web).post("/mark").set("Cookie", cookie);
      expect((await request(web).post("/count").set("Cookie", cookie)).body).toEqual({ views: 1 });
      // Once the write's own NOTIFY has arrived (it evicts what the write cached), one read caches the row again.
      await notifyBarrier(store);
      expect((await request(web).get("/count").set("Cookie", cookie)).body).toEqual({ views: 1 });
      t.statements.length = 0;
      expect((await request(web).get("/mark").set("Cookie", cookie)).body).toEqual({ note: MARKER });
      expect((await request(web).get("/count").set("Cookie", cookie)).body).toEqual({ views: 1 });
      expect((await request(web).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
      expect(t.statements.filter((s) => /^select/i.test(s) && !/pg_notify/.test(s))).toEqual([]);
      // A tampered row is refused once the cache lets go of it (any write evicts it).
      const errors = reported(store);
      const { key, data } = await rowOf("ann");
      await setData(key, { ...data, admin: true });
      // The cache still serves what it read (authentic) until the row is evicted, as by any write's NOTIFY.
      internals(store).evict([key]);
      expect((await request(web).get("/me").set("Cookie", cookie)).status).toBe(401);
      expect(await eventually(() => errors.some((e: any) => e.code === "CORRUPT_ROW"))).toBe(true);
    } finally {
      await store.close();
    }
  });
});
