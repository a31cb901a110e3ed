import type { Server } from "node:http";
import pg from "pg";
import request from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionStore, SessionStoreError } from "../../src/index.js";
import { cookieOf, testApp } from "../support/app.js";
import { sessionData } from "../support/db.js";
import { createFaultDb, faultsEnabled, waitFor, type FaultDb, type OpenedDb } from "../support/faultdb.js";

/** The store's `timeout` option: a database that does not answer fails requests with TIMEOUT, never hangs them. */
describe.skipIf(!faultsEnabled)("slow database: pool exhaustion, locks and the timeout option", () => {
  let f: FaultDb;
  let o: OpenedDb;
  let store: SessionStore;
  let server: Server;
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown) => void rejections.push(reason);

  beforeAll(async () => {
    process.on("unhandledRejection", onRejection);
    f = await createFaultDb("timeout");
    o = await f.open({ max: 3, connectionTimeoutMillis: 0 });
    store = new SessionStore({ db: o.db, table: o.table, timeout: 500 });
    const app = testApp(store, {}, (a) => {
      a.post("/save", (req, res, next) => {
        req.session.views = (req.session.views ?? 0) + 1;
        req.session.save((err) => (err ? next(err) : res.json({ views: req.session.views })));
      });
    });
    server = app.listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
  });

  afterAll(async () => {
    process.off("unhandledRejection", onRejection);
    await new Promise((resolve) => server?.close(resolve));
    await f?.drop();
  });

  const timed = async (send: () => Promise<request.Response>) => {
    const start = Date.now();
    const res = await send();
    return { status: res.status, body: res.body, ms: Date.now() - start };
  };

  it("a pool exhausted by held clients turns into TIMEOUT errors (500s), and requests succeed once they are released", async () => {
    const cookie = cookieOf(await request(server).post("/save"))!;
    const held = await Promise.all(Array.from({ length: 3 }, () => o.pool.connect()));
    try {
      await expect(store.get("anything")).rejects.toMatchObject({ code: "TIMEOUT" });
      const results = await Promise.all(Array.from({ length: 6 }, () => timed(() => request(server).get("/count").set("Cookie", cookie).timeout(10_000))));
      for (const r of results) {
        expect(r.status).toBe(500);
        expect(r.body.error).toMatch(/did not answer within 500 ms/);
        expect(r.ms).toBeLessThan(2_500);
      }
    } finally {
      for (const client of held) client.release();
    }
    // The timed-out queries still waiting for a client run and finish; nothing stays queued.
    await waitFor(() => o.pool.waitingCount === 0, 5_000, "the pool's queue to drain");
    const after = await request(server).post("/save").set("Cookie", cookie);
    expect(after.status).toBe(200);
    expect(after.body.views).toBe(2);
    expect(rejections).toEqual([]);
  });

  it("a table locked by another transaction turns into TIMEOUT errors, not a hung app; after the lock goes, all is well", async () => {
    const cookie = cookieOf(await request(server).post("/save"))!;
    const locker = new pg.Client({ connectionString: f.url });
    await locker.connect();
    try {
      await locker.query(`begin; lock table "${o.schema}".sessions in access exclusive mode`);
      // More requests than pool clients: the first ones block in Postgres, the rest wait for a client.
      const results = await Promise.all(
        Array.from({ length: 8 }, (_, i) =>
          timed(() => (i % 2 ? request(server).post("/save") : request(server).get("/count")).set("Cookie", cookie).timeout(10_000)),
        ),
      );
      for (const r of results) {
        expect(r.status).toBe(500);
        expect(r.body.error).toMatch(/did not answer within 500 ms/);
        expect(r.ms).toBeLessThan(2_500);
      }
      // A new session cannot be created meanwhile either, and fails the same way.
      expect((await timed(() => request(server).post("/login").send({ username: "ann", password: "pw" }).timeout(10_000))).status).toBe(500);
    } finally {
      await locker.query("rollback");
      await locker.end();
    }
    await waitFor(() => o.pool.waitingCount === 0, 5_000, "the pool's queue to drain");
    const read = await request(server).get("/count").set("Cookie", cookie);
    expect(read.status).toBe(200);
    // Timed-out writes may still have completed once the lock went (the README says so): at least 1.
    expect(read.body.views).toBeGreaterThanOrEqual(1);
    expect((await request(server).post("/login").send({ username: "ann", password: "pw" })).status).toBe(200);
    expect(rejections).toEqual([]);
  });

  it("a locked session row times out only that session's write; other sessions are served meanwhile", async () => {
    const victim = cookieOf(await request(server).post("/save"))!;
    const bystander = cookieOf(await request(server).post("/save"))!;
    const victimKey = (await o.raw<{ key: string }>(`select key from $table where ended_at is null order by created_at desc limit 2`)).at(-1)!.key;
    const locker = new pg.Client({ connectionString: f.url });
    await locker.connect();
    try {
      await locker.query(`begin; select 1 from "${o.schema}".sessions where key = '${victimKey}' for update`);
      const write = await timed(() => request(server).post("/save").set("Cookie", victim).timeout(10_000));
      expect(write.status).toBe(500);
      expect(write.body.error).toMatch(/did not answer within 500 ms/);
      // Reads of the locked row do not wait (MVCC), nor do other sessions.
      expect((await request(server).get("/count").set("Cookie", victim)).status).toBe(200);
      const other = await request(server).post("/save").set("Cookie", bystander);
      expect(other.status).toBe(200);
      expect(other.body.views).toBe(2);
    } finally {
      await locker.query("rollback");
      await locker.end();
    }
    await waitFor(() => o.pool.waitingCount === 0 && o.pool.idleCount === o.pool.totalCount, 5_000, "the pool to settle");
    expect(rejections).toEqual([]);
  });

  it("the default timeout is 10 s", async () => {
    const defaults = new SessionStore({ db: o.db, table: o.table });
    await defaults.set("default-timeout", sessionData(60_000));
    const locker = new pg.Client({ connectionString: f.url });
    await locker.connect();
    try {
      await locker.query(`begin; lock table "${o.schema}".sessions in access exclusive mode`);
      const start = Date.now();
      const error = await defaults.get("default-timeout").catch((e) => e);
      const elapsed = Date.now() - start;
      expect(error).toBeInstanceOf(SessionStoreError);
      expect(error.code).toBe("TIMEOUT");
      expect(elapsed).toBeGreaterThanOrEqual(9_900);
      expect(elapsed).toBeLessThan(11_500);
    } finally {
      await locker.query("rollback");
      await locker.end();
    }
    expect(await defaults.get("default-timeout")).not.toBeNull();
  }, 30_000);
});
