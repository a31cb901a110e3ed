import type { Server } from "node:http";
import type { Express } from "express";
import request from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SessionStore } from "../../src/index.js";
import { cookieOf, testApp } from "../support/app.js";
import { createFaultDb, faultsEnabled, waitFor, type FaultDb, type OpenedDb } from "../support/faultdb.js";

/**
 * A database outage under load: every backend of the (per-file) database is killed with
 * pg_terminate_backend and new connections are refused (ALLOW_CONNECTIONS false) for a while, then
 * allowed again. The app, on a pg Pool, keeps running throughout.
 */
describe.skipIf(!faultsEnabled)("database outage under load (node-postgres Pool)", () => {
  let f: FaultDb;
  let o: OpenedDb;
  let store: SessionStore;
  let app: Express;
  let server: Server;
  const rejections: unknown[] = [];
  const storeErrors: Error[] = [];
  const onRejection = (reason: unknown) => void rejections.push(reason);
  /** Set by a test: the route /outage-after-change kills the database after changing the session. */
  let outageInRoute: (() => Promise<void>) | undefined;

  beforeAll(async () => {
    process.on("unhandledRejection", onRejection);
    f = await createFaultDb("outage");
    o = await f.open({ max: 4, connectionTimeoutMillis: 2_000 });
    store = new SessionStore({ db: o.db, table: o.table, timeout: 3_000 });
    store.on("error", (e) => void storeErrors.push(e));
    app = testApp(store, {}, (a) => {
      // A write acknowledged only once it is stored: save explicitly, then answer.
      a.post("/save", (req, res, next) => {
        req.session.views = (req.session.views ?? 0) + 1;
        req.session.save((err) => (err ? next(err) : res.json({ views: req.session.views })));
      });
      // Changes the session, then the database goes away before express-session's automatic save.
      a.post("/outage-after-change", async (req, res) => {
        req.session.views = (req.session.views ?? 0) + 1;
        await outageInRoute?.();
        res.json({ views: req.session.views });
      });
    });
    server = app.listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
  });

  afterAll(async () => {
    process.off("unhandledRejection", onRejection);
    await new Promise((resolve) => server?.close(resolve));
    await store?.close();
    await f?.drop();
  });

  it("answers 500 during the outage, never crashes or hangs, recovers by itself, and loses no acknowledged session", async () => {
    const WORKERS = 4;
    const PER_WORKER = 3;
    // Sessions acknowledged before the outage: logins (passport saves before answering) and explicit saves.
    const sessions: Array<{ cookie: string; user?: string; acked: number; worker: number }> = [];
    for (let w = 0; w < WORKERS; w++) {
      for (let i = 0; i < PER_WORKER; i++) {
        if (i === 0) {
          const res = await request(server)
            .post("/login")
            .send({ username: `user${w}`, password: "pw" });
          expect(res.status).toBe(200);
          sessions.push({ cookie: cookieOf(res)!, user: `user${w}`, acked: 0, worker: w });
        } else {
          const res = await request(server).post("/save");
          expect(res.status).toBe(200);
          sessions.push({ cookie: cookieOf(res)!, acked: res.body.views, worker: w });
        }
      }
    }

    type Result = { status: number; body: any; start: number; end: number; write: boolean };
    const results: Result[] = [];
    const t0 = Date.now();
    let outageStart = Infinity;
    let outageEnd = Infinity;
    let stop = false;
    const lost: string[] = [];
    const HARD_STOP = t0 + 20_000;

    const worker = async (w: number) => {
      const mine = sessions.filter((s) => s.worker === w);
      // Bounded: at most 2,000 requests per worker and 20 s.
      for (let i = 0; i < 2_000 && !stop && Date.now() < HARD_STOP; i++) {
        const s = mine[i % mine.length]!;
        const write = i % 2 === 1;
        const start = Date.now();
        const req = write ? request(server).post("/save") : request(server).get(s.user ? "/me" : "/count");
        const res = await req.set("Cookie", s.cookie).timeout(10_000);
        results.push({ status: res.status, body: res.body, start, end: Date.now(), write });
        if (write && res.status === 200) {
          // A cookie for another id would mean a new session: the old one was lost.
          const again = cookieOf(res);
          if (again !== undefined && again !== s.cookie) lost.push(s.cookie);
          s.acked = Math.max(s.acked, res.body.views);
        }
        if (res.status !== 200) await new Promise((r) => setTimeout(r, 20));
      }
    };
    const load = Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));

    await new Promise((r) => setTimeout(r, 400));
    await f.allowConnections(false);
    const killed = await f.killBackends();
    // The outage is complete once the pool's connections are dead: until the kill, a request on an open
    // connection still succeeds (on a loaded machine the two statements above can take more than 50 ms).
    outageStart = Date.now();
    await new Promise((r) => setTimeout(r, 1_500));
    await f.allowConnections(true);
    outageEnd = Date.now();
    await new Promise((r) => setTimeout(r, 2_000));
    stop = true;
    await load;

    const during = results.filter((r) => r.start >= outageStart + 50 && r.end <= outageEnd);
    const after = results.filter((r) => r.start >= outageEnd + 500);
    const failed = results.filter((r) => r.status !== 200);
    // Summary for the report.
    console.info(
      `outage: ${results.length} requests, ${killed} backends killed, ${failed.length} failed (statuses ${[...new Set(failed.map((r) => r.status))]}), ` +
        `${during.length} during the outage, ${after.length} after it (${after.filter((r) => r.status === 200).length} ok), ` +
        `slowest ${Math.max(...results.map((r) => r.end - r.start))} ms`,
    );

    expect(killed).toBeGreaterThan(0);
    expect(lost).toEqual([]);
    // Only 200 or a clean 500 from Express's error handler, with the store's error message.
    expect(new Set(results.map((r) => r.status))).toEqual(new Set([200, 500]));
    for (const r of failed) expect(r.body.error).toMatch(/^connect-drizzle: /);
    // Requests during the outage failed (each needs the database), and fast (no hang past the store timeout).
    expect(during.length).toBeGreaterThan(0);
    expect(during.every((r) => r.status === 500)).toBe(true);
    expect(Math.max(...results.map((r) => r.end - r.start))).toBeLessThan(5_000);
    // After Postgres came back, without restarting anything, everything succeeds.
    expect(after.length).toBeGreaterThan(10);
    expect(after.every((r) => r.status === 200)).toBe(true);

    // Every acknowledged session is still there, with at least its last acknowledged change.
    for (const s of sessions) {
      const res = await request(server)
        .get(s.user ? "/me" : "/count")
        .set("Cookie", s.cookie);
      expect(res.status).toBe(200);
      if (s.user) expect(res.body).toEqual({ user: s.user });
      else expect(res.body.views).toBeGreaterThanOrEqual(s.acked);
    }
    expect(await o.raw(`select count(*)::int as n from $table where ended_at is null`)).toEqual([{ n: sessions.length }]);
    expect(rejections).toEqual([]);
    // The pool reported its killed idle clients (the app listens, as node-postgres requires).
    expect(o.poolErrors.every((e) => /terminat|connection/i.test(e.message))).toBe(true);
  });

  it("recovers when every backend is killed with no refusal window (connections come back at once)", async () => {
    const login = await request(server).post("/login").send({ username: "kim", password: "pw" });
    const cookie = cookieOf(login)!;
    const statuses: number[] = [];
    for (let round = 0; round < 5; round++) {
      await f.killBackends();
      // The pool's idle clients are dead now; the next request must not fail because of them for long.
      for (let i = 0; i < 5; i++) statuses.push((await request(server).get("/me").set("Cookie", cookie).timeout(10_000)).status);
    }
    // node-postgres drops a client whose connection died while idle, so at most the first request of a
    // round may hit a dead one; the rest succeed.
    expect(statuses.filter((s) => s === 200).length).toBeGreaterThanOrEqual(20);
    expect(new Set(statuses).size <= 2 && statuses.every((s) => s === 200 || s === 500)).toBe(true);
    await waitFor(async () => (await request(server).get("/me").set("Cookie", cookie)).status === 200, 5_000, "recovery");
    expect(rejections).toEqual([]);
  });

  it("express-session's automatic save: a save that fails after the handler answered is still a 200 (save explicitly for writes that matter)", async () => {
    const first = await request(server).post("/save");
    const cookie = cookieOf(first)!;
    const nextErrors: unknown[] = [];
    outageInRoute = async () => {
      await f.allowConnections(false);
      await f.killBackends();
    };
    try {
      const res = await request(server).post("/outage-after-change").set("Cookie", cookie).timeout(10_000);
      // express-session writes the status and body before its save finishes; the save's error reaches
      // next(err) only after the response is complete, so the client cannot tell. This is express-session's
      // design, not the store's: POST /save above (explicit save) answers 500 in the same situation.
      nextErrors.push(res.status);
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ views: 2 });
    } finally {
      outageInRoute = undefined;
      await f.allowConnections(true);
    }
    const read = await request(server).get("/count").set("Cookie", cookie);
    expect(read.status).toBe(200);
    expect(read.body).toEqual({ views: 1 }); // the change answered with 200 was not stored
    // With an explicit save the same fault is a 500.
    outageInRoute = undefined;
    await f.allowConnections(false);
    await f.killBackends();
    try {
      const res = await request(server).post("/save").set("Cookie", cookie).timeout(10_000);
      expect(res.status).toBe(500);
    } finally {
      await f.allowConnections(true);
    }
    expect(rejections).toEqual([]);
  });
});
