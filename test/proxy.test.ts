import express from "express";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import request from "supertest";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { lockKey, profileOf } from "./support/internals.js";
import { reap } from "../src/index.js";
import { SessionStore } from "../src/index.js";
import { cookieOf, middlewareApp, testApp } from "./support/app.js";
import { DATABASE_URL, openDb, sessionData, type TestDb } from "./support/db.js";
import { startProxy } from "./support/proxy.js";

/**
 * The store on a driver that sends each statement as an HTTP request of its own and has no transactions:
 * drizzle's pg-proxy, over a real HTTP endpoint backed by Postgres (test/support/proxy.ts), with the limits of
 * neon-http and xata-http. `db.transaction` would throw there; the whole file checks it is never called.
 */
describe.skipIf(!DATABASE_URL)("on drizzle's pg-proxy over HTTP (no transactions, no LISTEN)", () => {
  let t: TestDb;
  let store: SessionStore;
  let transaction: ReturnType<typeof vi.spyOn>;
  const HOUR = 3_600_000;

  beforeAll(async () => {
    t = await openDb("pg-proxy");
    transaction = vi.spyOn(t.db, "transaction");
  });
  afterAll(async () => {
    await t?.close();
  });
  beforeEach(async () => {
    await t.raw(`delete from $table`);
    store = new SessionStore({ db: t.db, table: t.table, reaper: false });
  });
  afterEach(() => {
    // Nothing here may need a transaction: pg-proxy's throws "Transactions are not supported".
    expect(transaction).not.toHaveBeenCalled();
    expect(t.statements.filter((s) => /^\s*(begin|start transaction|commit|rollback)\b/i.test(s))).toEqual([]);
  });

  const count = async (where = "true") => Number((await t.raw(`select count(*)::int as n from $table where ${where}`))[0].n);
  const fill = (prefix: string, n: number, expires: string, extra = "") =>
    t.raw(`insert into $table (key, handle, user_id, data, expires_at${extra ? ", ended_at, end_reason" : ""})
      select '${prefix}-' || i, 'h-${prefix}-' || i, 'u1', '{"cookie":{"originalMaxAge":60000}}'::jsonb, ${expires}${extra ? `, ${extra}` : ""}
      from generate_series(1, ${n}) as i`);

  it("is recognised as a driver without interactive transactions", () => {
    expect(profileOf(t.db).interactiveTransactions).toBe(false);
    expect(profileOf(drizzle({ client: new pg.Pool() })).interactiveTransactions).toBe(true);
  });

  describe("the express-session contract", () => {
    it("get, set and touch: data survives requests, and a rolling cookie moves the expiry", async () => {
      const app = testApp(store, { rolling: true });
      const cookie = cookieOf(await request(app).post("/count"))!;
      await request(app).post("/count").set("Cookie", cookie);
      const expiry = async () => Number((await t.raw(`select round(date_part('epoch', expires_at) * 1000) as ms from $table`))[0].ms);
      await t.age(60_000);
      const aged = await expiry();
      // A read-only request with rolling: express-session calls touch, which moves the expiry a minute on.
      expect((await request(app).get("/count").set("Cookie", cookie)).body).toEqual({ views: 2 });
      expect(await expiry()).toBeGreaterThan(aged + 30_000);
    });

    it("login regenerates the session (the old id stops working), logout destroys it", async () => {
      const app = testApp(store);
      const anonymous = cookieOf(await request(app).post("/count"))!;
      const login = await request(app).post("/login").set("Cookie", anonymous).send({ username: "ann", password: "pw" });
      const authed = cookieOf(login)!;
      expect(authed).not.toBe(anonymous);
      expect((await request(app).get("/count").set("Cookie", anonymous)).body).toEqual({ views: 0 });
      expect((await request(app).get("/me").set("Cookie", authed)).body).toEqual({ user: "ann" });
      expect((await request(app).post("/logout").set("Cookie", authed)).status).toBe(200);
      expect((await request(app).get("/me").set("Cookie", authed)).status).toBe(401);
      expect(await store.count({ userId: "ann", status: "all" })).toBe(0);
    });

    it("an expired session is never returned, and destroy of a missing id is no error", async () => {
      await store.set("old", sessionData(-1_000));
      expect(await store.get("old")).toBeNull();
      await store.destroy("never-existed");
      await store.set("s", sessionData(HOUR, { n: 1 }));
      expect(await store.get("s")).toMatchObject({ n: 1 });
    });
  });

  describe("records", () => {
    it("lists a user's devices and revokes one: its cookie stops working at once", async () => {
      const { app } = middlewareApp(store);
      const laptop = cookieOf(await request(app).post("/login/ann"), "sid")!;
      const phone = cookieOf(await request(app).post("/login/ann"), "sid")!;
      const devices = (await request(app).get("/devices").set("Cookie", laptop)).body as Array<{ handle: string; current: boolean; createdAt: string }>;
      expect(devices).toHaveLength(2);
      expect(devices.filter((d) => d.current)).toHaveLength(1);
      expect(Number.isFinite(Date.parse(devices[0]!.createdAt))).toBe(true);
      const other = devices.find((d) => !d.current)!;
      expect(await store.revoke(other.handle, { userId: "ann" })).toBe(true);
      expect((await request(app).get("/me").set("Cookie", phone)).status).toBe(401);
      expect((await request(app).get("/me").set("Cookie", laptop)).body).toEqual({ user: "ann" });
      expect(await store.revokeUser("ann")).toBe(1);
      expect((await request(app).get("/me").set("Cookie", laptop)).status).toBe(401);
    });
  });

  describe("the reaper, a statement at a time", () => {
    it("deletes expired rows, keeps live ones, and with retainEnded turns expired sessions into history", async () => {
      await fill("expired", 30, "now() - interval '1 minute' - i * interval '1 millisecond'");
      await fill("alive", 3, "now() + interval '1 hour'");
      expect(await reap({ db: t.db, table: t.table, batchSize: 10 })).toMatchObject({ deleted: 30, batches: 3, skipped: false });
      expect(await count()).toBe(3);

      await fill("recent", 4, "now() - interval '1 minute'");
      await fill("history-due", 2, "now() - interval '3 hours'", "now() - interval '3 hours', 'logout'");
      expect(await reap({ db: t.db, table: t.table, retainEnded: HOUR })).toMatchObject({ ended: 4, deleted: 2, skipped: false });
      expect(await count("end_reason = 'expired' and data = '{}'::jsonb")).toBe(4);
      expect(await count("ended_at is null")).toBe(3);
    });

    it("skips the round and touches no row while another instance holds the lock", async () => {
      await fill("expired", 20, "now() - interval '1 minute'");
      const holder = new pg.Client({ connectionString: DATABASE_URL });
      await holder.connect();
      try {
        await holder.query(`select pg_advisory_lock(${lockKey(t.schema, "sessions")}::bigint)`);
        // The try-lock comes before the rows are picked: not granted, nothing is deleted.
        expect(await reap({ db: t.db, table: t.table })).toMatchObject({ skipped: true, deleted: 0, batches: 0 });
        expect(await count()).toBe(20);
      } finally {
        await holder.end();
      }
      expect(await reap({ db: t.db, table: t.table })).toMatchObject({ skipped: false, deleted: 20 });
    });

    it("a batch holds the lock while it runs: a round that starts meanwhile is skipped", async () => {
      await fill("expired", 10, "now() - interval '1 minute'");
      // Each delete takes 50 ms, so the first round's one batch runs for half a second.
      await t.raw(`create function "${t.schema}".slow() returns trigger language plpgsql as $$ begin perform pg_sleep(0.05); return old; end $$`);
      await t.raw(`create trigger slow before delete on $table for each row execute function "${t.schema}".slow()`);
      try {
        const first = reap({ db: t.db, table: t.table });
        const key = BigInt.asUintN(64, BigInt(lockKey(t.schema, "sessions")));
        const held = `select count(*)::int as n from pg_locks where locktype = 'advisory' and granted and classid = ${key >> 32n} and objid = ${key & 0xffffffffn}`;
        await vi.waitFor(async () => expect((await t.raw(held))[0].n).toBe(1), { timeout: 5_000, interval: 5 });
        expect(await reap({ db: t.db, table: t.table })).toMatchObject({ skipped: true, deleted: 0 });
        expect(await first).toMatchObject({ skipped: false, deleted: 10, batches: 1 });
        // Released with the statement's own transaction.
        expect((await t.raw(held))[0].n).toBe(0);
      } finally {
        await t.raw(`drop trigger slow on $table`);
        await t.raw(`drop function "${t.schema}".slow()`);
      }
    });

    it("concurrent rounds from several instances split the rows between them, each row counted once", async () => {
      await fill("backlog", 3_000, "now() - interval '1 hour' + i * interval '1 millisecond'");
      // Four instances, each with its own endpoint and pool; each parks a little between batches, so that the
      // others' batches come in between.
      const instances = await Promise.all(Array.from({ length: 4 }, () => startProxy(DATABASE_URL!, { max: 2 })));
      const transactions = instances.map(({ db }) => vi.spyOn(db, "transaction"));
      try {
        const rounds = await Promise.all(
          instances.map(({ db }) => reap({ db, table: t.table, batchSize: 100, onBatch: () => new Promise((r) => setTimeout(r, 1)) })),
        );
        // Every row counted once: no batch took a row another batch took.
        expect(rounds.reduce((sum, r) => sum + r.deleted, 0)).toBe(3_000);
        for (const { requests } of instances) expect(requests.filter((s) => /^\s*(begin|start transaction)\b/i.test(s))).toEqual([]);
        expect(rounds.reduce((sum, r) => sum + r.batches, 0)).toBe(30);
        expect(await count()).toBe(0);
        for (const spy of transactions) expect(spy).not.toHaveBeenCalled();
      } finally {
        await Promise.all(instances.map((p) => p.close()));
      }
    });
  });

  describe("the read cache", () => {
    it("is refused at construction with a TypeError that names the driver and says what to do", () => {
      const make = () => new SessionStore({ db: t.db, table: t.table, reaper: false, cache: {} });
      expect(make).toThrow(TypeError);
      expect(make).toThrow(/^connect-drizzle: the read cache needs LISTEN\/NOTIFY, which drizzle-orm\/pg-proxy cannot do.*remove `cache`/);
    });
  });

  describe("reaping from a cron route (serverless: no timers)", () => {
    /** As a Vercel cron job calls it: `Authorization: Bearer $CRON_SECRET`. */
    const cronApp = (secret: string) => {
      const app = express();
      app.get("/api/reap", async (req, res) => {
        if (req.headers.authorization !== `Bearer ${secret}`) return void res.status(401).json({ error: "unauthorized" });
        res.json(await store.reap());
      });
      return app;
    };

    it("reaps expired rows when called with the secret, and refuses a request without it", async () => {
      await fill("expired", 5, "now() - interval '1 minute'");
      await fill("alive", 2, "now() + interval '1 hour'");
      const app = cronApp("s3cret");
      expect((await request(app).get("/api/reap")).status).toBe(401);
      expect((await request(app).get("/api/reap").set("Authorization", "Bearer wrong")).status).toBe(401);
      expect(await count()).toBe(7);
      const res = await request(app).get("/api/reap").set("Authorization", "Bearer s3cret");
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ deleted: 5, ended: 0, skipped: false, durationMs: expect.any(Number) });
      expect(await count()).toBe(2);
    });
  });
});

/** A driver that refuses transactions though drizzle's class marker does not say so: learned once, then never tried. */
describe.skipIf(!DATABASE_URL)("a db.transaction that says transactions are not supported", () => {
  it("makes the reaper go a statement at a time from then on", async () => {
    const t = await openDb("node-postgres");
    try {
      const db = drizzle({ client: new pg.Pool({ connectionString: DATABASE_URL, max: 2 }) });
      const refuse = vi.spyOn(db, "transaction").mockRejectedValue(new Error("Transactions are not supported by this driver"));
      await t.raw(
        `insert into $table (key, handle, data, expires_at) select 'k' || i, 'h' || i, '{}'::jsonb, now() - interval '1 minute' from generate_series(1, 5) i`,
      );
      expect(await reap({ db, table: t.table })).toMatchObject({ deleted: 5, skipped: false });
      await t.raw(`insert into $table (key, handle, data, expires_at) values ('k', 'h', '{}'::jsonb, now() - interval '1 minute')`);
      expect(await reap({ db, table: t.table })).toMatchObject({ deleted: 1, skipped: false });
      expect(refuse).toHaveBeenCalledTimes(1);
      await db.$client.end();
    } finally {
      await t.close();
    }
  });
});
