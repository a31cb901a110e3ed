import express from "express";
import session from "express-session";
import request from "supertest";
import { afterEach, describe, expect, it, vi } from "vitest";
import { createSessionTable, SessionStore, SessionStoreError } from "../src/index.js";
import { drivers, eventually, sessionData, type TestDb, useTestDb } from "./support/db.js";

const MIGRATE =
  "run the migrations (await migrate(db) from connect-drizzle, or your driver's drizzle migrator on its migrationsFolder), or create it with createSessionTable in your drizzle schema";
const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

describe.each(drivers)("store.ready() and a missing table on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;
  const stores: SessionStore[] = [];
  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });
  afterEach(async () => {
    vi.restoreAllMocks();
    await Promise.all(stores.splice(0).map((s) => s.close()));
  });
  /** A store on a table of this schema that no migration created. */
  const storeOn = (name: string) => {
    const s = new SessionStore({ db: t.db, table: createSessionTable(name, { schema: t.schema }), reaper: false });
    stores.push(s);
    return s;
  };
  const missingMessage = (name: string) => new RegExp(`^connect-drizzle: table "${t.schema}"\\."${name}" not found; ${escapeRegExp(MIGRATE)}$`);

  it("resolves on the migrated table", async () => {
    await expect(store.ready()).resolves.toBeUndefined();
  });

  it("names the schema a table without one would be in (the first of the search_path)", async () => {
    const unqualified = new SessionStore({ db: t.db, table: createSessionTable("no_such_table"), reaper: false });
    stores.push(unqualified);
    const [{ schema }] = (await t.raw<{ schema: string }>("select current_schema()::text as schema")) as [{ schema: string }];
    await expect(unqualified.ready()).rejects.toThrow(`connect-drizzle: table "${schema}"."no_such_table" not found; run the migrations`);
  });

  it("rejects with TABLE_MISSING and what to run when the table does not exist", async () => {
    const error = await storeOn("no_such_table")
      .ready()
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(error).toMatchObject({ code: "TABLE_MISSING" });
    expect((error as Error).message).toMatch(missingMessage("no_such_table"));
  });

  it("rejects with SCHEMA_OUTDATED naming the columns when the table lacks some", async () => {
    await t.raw(`create table "${t.schema}"."partial" (like $table including all)`);
    await t.raw(`alter table "${t.schema}"."partial" drop column label, drop column version`);
    const error = await storeOn("partial")
      .ready()
      .catch((e: unknown) => e);
    expect(error).toMatchObject({ code: "SCHEMA_OUTDATED" });
    expect((error as Error).message).toBe(
      `connect-drizzle: table "${t.schema}"."partial" lacks the column(s) "label", "version" this version of connect-drizzle needs; ` +
        "run the latest migrations (await migrate(db) from connect-drizzle, or your driver's drizzle migrator on its migrationsFolder)",
    );
  });

  it("without ready(), get and set on a missing table fail with the same message, reported once", async () => {
    const missing = storeOn("no_such_table");
    const reported: Error[] = [];
    missing.on("error", (e: Error) => void reported.push(e));
    const sid = "a".repeat(32);
    await expect(missing.get(sid)).rejects.toThrow(missingMessage("no_such_table"));
    await expect(missing.set(sid, sessionData(60_000))).rejects.toThrow(missingMessage("no_such_table"));
    await expect(missing.set(sid, sessionData(60_000))).rejects.toMatchObject({ code: "TABLE_MISSING" });
    expect(reported.map((e) => e.message)).toEqual([expect.stringMatching(missingMessage("no_such_table"))]);
  });

  it("without ready() or a listener, the first failure on a missing table reaches the console, once", async () => {
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    const missing = storeOn("no_such_table");
    const sid = "b".repeat(32);
    await missing.set(sid, sessionData(60_000)).catch(() => {});
    await missing.get(sid).catch(() => {});
    expect(warn.mock.calls.map(([m]) => m)).toEqual([expect.stringMatching(missingMessage("no_such_table"))]);
  });

  it("a missing column at first use is SCHEMA_OUTDATED with the driver's words and what to run", async () => {
    await t.raw(`create table "${t.schema}"."old" (like $table including all)`);
    await t.raw(`alter table "${t.schema}"."old" drop column label`);
    const old = storeOn("old");
    old.on("error", () => {});
    await expect(old.set("c".repeat(32), sessionData(60_000))).rejects.toThrow(
      /^connect-drizzle: table "[^"]+"\."old" lacks a column this version of connect-drizzle needs \(.*label.*\); run the latest migrations \(await migrate\(db\)/,
    );
  });

  it("through express-session, a new visitor on a missing table gets a 200 and a cookie for a session never stored; ready() fails first", async () => {
    const missing = storeOn("no_such_table");
    const reported: Error[] = [];
    missing.on("error", (e: Error) => void reported.push(e));
    const app = express();
    app.use(session({ store: missing, secret: "s", resave: false, saveUninitialized: false }));
    app.get("/", (req, res) => {
      req.session.views = (req.session.views ?? 0) + 1;
      res.send(`views: ${req.session.views}`);
    });
    app.use((err: Error, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
      res.status(500).send(err.message);
    });
    // express-session saves a new session after the route answered: the failed save reaches no handler
    // that could still answer, so the visitor sees success...
    const first = await request(app).get("/");
    expect(first.status).toBe(200);
    expect(first.text).toBe("views: 1");
    const cookie = (first.headers["set-cookie"] as unknown as string[] | undefined)?.[0]?.split(";")[0];
    expect(cookie).toMatch(/^connect\.sid=/);
    // ...while the store reported the error, which says what to do, once...
    expect(await eventually(() => reported.length === 1)).toBe(true);
    expect(reported[0]!.message).toMatch(missingMessage("no_such_table"));
    // ...and the session is gone: the next request with its cookie fails.
    const second = await request(app).get("/").set("Cookie", cookie!);
    expect(second.status).toBe(500);
    expect(second.text).toMatch(missingMessage("no_such_table"));
    expect(reported).toHaveLength(1);
    // At startup, ready() is where this fails before any visitor.
    await expect(missing.ready()).rejects.toThrow(missingMessage("no_such_table"));
  });
});
