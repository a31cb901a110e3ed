import { fork, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import request from "supertest";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ReapResult } from "../../src/index.js";
import { cookieOf } from "../support/app.js";
import type { ChildCommand, ChildMessage } from "../support/child.js";
import { createFaultDb, faultsEnabled, type FaultDb, type OpenedDb } from "../support/faultdb.js";

const childPath = join(import.meta.dirname, "..", "support", "child.ts");

/** A child process running an app instance; `call` sends a command and waits (bounded) for its answer. */
interface Instance {
  name: string;
  proc: ChildProcess;
  url: string;
  call<T = unknown>(command: DistributiveOmit<ChildCommand, "id">, ms?: number): Promise<T>;
}
type DistributiveOmit<T, K extends keyof any> = T extends unknown ? Omit<T, K> : never;

async function spawnInstance(name: string, dbUrl: string, schema: string): Promise<Instance> {
  const proc = fork(childPath, [], {
    execArgv: ["--import", "tsx"],
    env: { ...process.env, CHILD_DATABASE_URL: dbUrl, CHILD_SCHEMA: schema, CHILD_NAME: name },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  let next = 0;
  const pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>();
  const ready = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start within 20 s`)), 20_000);
    proc.on("message", (m: ChildMessage) => {
      if ("ready" in m) {
        clearTimeout(timer);
        resolve(m.port);
      } else {
        const p = pending.get(m.id);
        pending.delete(m.id);
        if (m.error !== undefined) p?.reject(new Error(`${name}: ${m.error}`));
        else p?.resolve(m.result);
      }
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${name} exited with ${code}`));
      for (const p of pending.values()) p.reject(new Error(`${name} exited with ${code}`));
    });
  });
  const port = await ready;
  return {
    name,
    proc,
    url: `http://127.0.0.1:${port}`,
    call: (command, ms = 15_000) =>
      new Promise((resolve, reject) => {
        const id = next++;
        const timer = setTimeout(() => reject(new Error(`${name}: ${command.cmd} got no answer within ${ms} ms`)), ms);
        pending.set(id, {
          resolve: (v) => (clearTimeout(timer), resolve(v as any)),
          reject: (e) => (clearTimeout(timer), reject(e)),
        });
        proc.send({ ...command, id });
      }),
  };
}

/** Ends a child: asks it to exit, then SIGKILL after 3 s. */
async function stopInstance(instance: Instance): Promise<void> {
  const { proc } = instance;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once("exit", () => resolve()));
  instance.call({ cmd: "exit" }, 3_000).catch(() => {});
  const done = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 3_000))]);
  if (!done) {
    proc.kill("SIGKILL");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 2_000))]);
  }
}

describe.skipIf(!faultsEnabled)("three Node processes on one database", () => {
  let f: FaultDb;
  let direct: OpenedDb;
  let instances: Instance[] = [];

  beforeAll(async () => {
    f = await createFaultDb("procs");
    direct = await f.open({ max: 2 });
    instances = await Promise.all(["A", "B", "C"].map((name) => spawnInstance(name, f.url, direct.schema)));
  }, 60_000);
  afterAll(async () => {
    await Promise.all(instances.map(stopInstance));
    await f?.drop();
  });

  it("a session created on one is read on the others, revoked through a third's store.revoke, and then refused everywhere", async () => {
    const [a, b, c] = instances as [Instance, Instance, Instance];
    const login = await request(a.url).post("/login").send({ username: "ann", password: "pw" });
    expect(login.status).toBe(200);
    const cookie = cookieOf(login)!;
    const other = cookieOf(await request(b.url).post("/login").send({ username: "ann", password: "pw" }))!;
    for (const i of instances) expect((await request(i.url).get("/me").set("Cookie", cookie)).body).toEqual({ user: "ann" });
    expect((await request(b.url).post("/count").set("Cookie", cookie)).body).toEqual({ views: 1 });
    expect((await request(c.url).post("/count").set("Cookie", cookie)).body).toEqual({ views: 2 });
    expect((await request(a.url).get("/count").set("Cookie", cookie)).body).toEqual({ views: 2 });

    const handles = await b.call<string[]>({ cmd: "list", userId: "ann" });
    expect(handles).toHaveLength(2);
    const sid = decodeURIComponent(cookie.split("=")[1]!).slice(2).split(".")[0]!;
    const target = (await direct.raw<{ handle: string }>(`select handle from $table where data->>'views' = '2'`))[0]!.handle;
    expect(await c.call<boolean>({ cmd: "revoke", handle: target })).toBe(true);
    for (const i of instances) {
      expect((await request(i.url).get("/me").set("Cookie", cookie)).status).toBe(401);
      expect(await i.call({ cmd: "get", sid })).toBeNull();
      // The other session of the same user is untouched.
      expect((await request(i.url).get("/me").set("Cookie", other)).body).toEqual({ user: "ann" });
    }
    expect(await a.call<boolean>({ cmd: "revoke", handle: target })).toBe(false);
  });

  it("all three reap at the same moment: exactly one round runs and does the work, the others skip; live sessions stay", async () => {
    await direct.raw(`delete from $table`);
    const live = cookieOf(await request(instances[0]!.url).post("/login").send({ username: "bob", password: "pw" }))!;
    await direct.raw(`insert into $table (key, handle, data, expires_at)
      select 'expired' || i, 'h' || i, '{"cookie":{}}', now() - interval '1 hour' + i * interval '1 millisecond' from generate_series(1, 4000) i`);
    const at = Date.now() + 300;
    // Batches of 500 with a 25 ms pause after each: the winner holds the lock for 200 ms or more, far longer
    // than the clock skew between the children's timers.
    const results = await Promise.all(instances.map((i) => i.call<ReapResult>({ cmd: "reapAt", at, batchSize: 500, pauseMs: 25 })));
    console.info(`reap at the same moment: ${JSON.stringify(results.map(({ skipped, deleted, batches }) => ({ skipped, deleted, batches })))}`);
    const ran = results.filter((r) => !r.skipped);
    expect(ran).toHaveLength(1);
    expect(ran[0]).toMatchObject({ deleted: 4000, batches: 8 });
    expect(results.filter((r) => r.skipped).every((r) => r.deleted === 0 && r.batches === 0)).toBe(true);
    expect(await direct.raw(`select count(*)::int as n from $table`)).toEqual([{ n: 1 }]);
    for (const i of instances) expect((await request(i.url).get("/me").set("Cookie", live)).body).toEqual({ user: "bob" });
  });

  it("an expired session is refused by every instance before the reaper, and gone after a round on any one of them", async () => {
    const [a, b, c] = instances as [Instance, Instance, Instance];
    const cookie = cookieOf(await request(a.url).post("/login").send({ username: "cat", password: "pw" }))!;
    await direct.raw(`update $table set expires_at = now() - interval '1 second' where user_id = 'cat'`);
    for (const i of instances) expect((await request(i.url).get("/me").set("Cookie", cookie)).status).toBe(401);
    const result = await b.call<ReapResult>({ cmd: "reapAt", at: 0, batchSize: 500, pauseMs: 0 });
    expect(result).toMatchObject({ skipped: false });
    expect(result.deleted).toBeGreaterThanOrEqual(1);
    expect(await direct.raw(`select count(*)::int as n from $table where user_id = 'cat'`)).toEqual([{ n: 0 }]);
    expect((await request(c.url).get("/me").set("Cookie", cookie)).status).toBe(401);
  });

  it("a child that is killed mid-round releases the reaper lock: the next round on another process runs", async () => {
    const victim = await spawnInstance("D", f.url, direct.schema);
    instances.push(victim);
    await direct.raw(`insert into $table (key, handle, data, expires_at)
      select 'doomed' || i, 'd' || i, '{"cookie":{}}', now() - interval '1 hour' + i * interval '1 millisecond' from generate_series(1, 2000) i`);
    // D reaps slowly (batches of 100, 200 ms apart); kill it after its first batches.
    const pending = victim.call({ cmd: "reapAt", at: 0, batchSize: 100, pauseMs: 200 }).catch((e) => e);
    await new Promise((r) => setTimeout(r, 500));
    victim.proc.kill("SIGKILL");
    expect(await pending).toBeInstanceOf(Error);
    const left = (await direct.raw<{ n: number }>(`select count(*)::int as n from $table where key like 'doomed%'`))[0]!.n;
    expect(left).toBeGreaterThan(0);
    expect(left).toBeLessThan(2000);
    // Postgres ends the dead backend's transaction (and its advisory lock) when the socket closes.
    let result: ReapResult | undefined;
    for (let attempt = 0; attempt < 20; attempt++) {
      result = await instances[0]!.call<ReapResult>({ cmd: "reapAt", at: 0, batchSize: 500, pauseMs: 0 });
      if (!result.skipped) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(result).toMatchObject({ skipped: false, deleted: left });
  });
});
