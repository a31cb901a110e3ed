import pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { SessionStore } from "../src/index.js";
import { DATABASE_URL, drivers, eventually, sessionData, type TestDb, useTestDb } from "./support/db.js";
import { internals } from "./support/internals.js";

const HOUR = 3_600_000;

/**
 * What each operation costs the other instances' caches: a NOTIFY (which Postgres serializes at commit)
 * only where another instance may hold stale data: a change of an existing session, a touch, an end,
 * revoke, extend, clear. A new session, a read, a skipped touch and an end that ended nothing send none.
 */
describe.each(drivers)("NOTIFY per operation on %s", (driver) => {
  let t: TestDb;
  const stops: Array<() => Promise<void>> = [];
  useTestDb(driver, (db) => {
    t = db;
  });
  afterEach(async () => {
    while (stops.length > 0) await stops.pop()!();
  });

  /** LISTENs on the store's channel through a connection of its own; the payloads heard. */
  async function listenTo(channel: string): Promise<string[]> {
    const heard: string[] = [];
    const client: any = (t.db as any).$client;
    if (driver === "pglite") {
      const unlisten = await client.listen(channel, (payload: string) => heard.push(payload));
      stops.push(unlisten);
    } else if (driver === "postgres.js") {
      const { unlisten } = await client.listen(channel, (payload: string) => heard.push(payload));
      stops.push(unlisten);
    } else {
      const listener = new pg.Client({ connectionString: DATABASE_URL });
      await listener.connect();
      listener.on("notification", (m) => heard.push(m.payload ?? ""));
      await listener.query(`listen "${channel}"`);
      stops.push(() => listener.end());
    }
    return heard;
  }

  it("notifies a change of an existing session, a touch, every end, revoke, extend and clear, and nothing else", async () => {
    const store = new SessionStore({ db: t.db, table: t.table, notify: true, reaper: false });
    const forced = new SessionStore({ db: t.db, table: t.table, notify: true, touchAfter: 0, reaper: false });
    const channel: string = internals(store).channel;
    const heard = await listenTo(channel);
    let marker = 0;
    /** The notifications `op` sent: a marker sent after it commits arrives after them (commit order). */
    const sent = async (op: () => Promise<unknown>): Promise<number> => {
      heard.length = 0;
      await op();
      const mark = `marker-${++marker}`;
      await t.raw(`select pg_notify('${channel}', '${mark}')`);
      expect(await eventually(() => heard.includes(mark), 5_000)).toBe(true);
      return heard.filter((p) => p !== mark).length;
    };
    const user = (sid: string) => sessionData(HOUR, { passport: { user: "ann" }, sid });

    expect(await sent(() => store.set("a", user("a"))), "a new session").toBe(0);
    expect(await sent(() => store.set("b", user("b"))), "another new session").toBe(0);
    const loaded: any = await store.get("a");
    expect(await sent(() => store.get("a")), "a read").toBe(0);
    expect(await sent(() => store.touch("a", loaded)), "a touch within touchAfter (skipped)").toBe(0);
    expect(await sent(() => store.set("a", loaded)), "an unchanged save (skipped)").toBe(0);
    loaded.cart = ["book"];
    expect(await sent(() => store.set("a", loaded)), "a changed session").toBe(1);
    expect(await sent(() => store.set("b", user("b2"))), "a set of a known id the store did not load").toBe(1);
    expect(await sent(async () => forced.touch("a", (await forced.get("a"))!)), "a touch that writes").toBe(1);
    const handle = (await store.handleOf("a"))!;
    expect(await sent(() => store.extend(handle, new Date(Date.now() + HOUR), { userId: "ann" })), "extend").toBe(1);
    expect(await sent(() => store.destroy("a")), "destroy").toBe(1);
    expect(await sent(() => store.destroy("a")), "destroy of a missing id").toBe(0);
    expect(await sent(() => store.revoke(handle, { userId: "ann" })), "revoke of an ended session").toBe(0);
    await store.set("c", user("c"));
    expect(await sent(() => store.revokeUser("ann")), "revokeUser of two sessions").toBe(2);
    expect(await sent(() => store.clear()), "clear").toBe(1);
  });

  it("ends commit without a NOTIFY of their own: concurrent ends are announced together, each resolving once its key is on the channel", async () => {
    const store = new SessionStore({ db: t.db, table: t.table, notify: true, reaper: false });
    const heard = await listenTo(internals(store).channel);
    const sids = Array.from({ length: 32 }, (_, i) => `end-${i}`);
    await Promise.all(sids.map((sid) => store.set(sid, sessionData(HOUR))));
    // Every statement sent, the pool's and the store's own connection's (node-postgres sends its NOTIFYs there).
    const sentTexts: string[] = [];
    const query = pg.Client.prototype.query;
    pg.Client.prototype.query = function (this: pg.Client, config: any, ...rest: any[]) {
      sentTexts.push(typeof config === "string" ? config : config.text);
      return (query as any).call(this, config, ...rest);
    } as any;
    stops.push(async () => void (pg.Client.prototype.query = query));
    t.statements.length = 0;
    const announced: boolean[] = [];
    await Promise.all(
      sids.map(async (sid) => {
        await store.destroy(sid);
        // Resolved: its NOTIFY has committed, so a marker sent now arrives after it (commit order).
        const mark = `after-${sid}`;
        await t.raw(`select pg_notify('${internals(store).channel}', '${mark}')`);
        expect(await eventually(() => heard.includes(mark), 5_000)).toBe(true);
        announced.push(heard.indexOf(internals(store).keysOf(sid)[0]!) !== -1 && heard.indexOf(internals(store).keysOf(sid)[0]!) < heard.indexOf(mark));
      }),
    );
    expect(announced).toEqual(sids.map(() => true));
    const notifying = (driver === "node-postgres" ? sentTexts : t.statements).filter((text) => text.includes("pg_notify") && !text.includes("after-"));
    const ending = t.statements.filter((text) => /^\s*delete|^\s*update/i.test(text));
    expect(ending.every((text) => !text.includes("pg_notify"))).toBe(true);
    expect(notifying.length).toBeGreaterThan(0);
    if (driver !== "pglite") expect(notifying.length).toBeLessThan(sids.length);
  });

  it.runIf(driver === "node-postgres")("the NOTIFYs go out on a connection of the store's own, and through the pool when it is lost", async () => {
    const notifiers = async () =>
      (await t.raw(`select pid from pg_stat_activity where query like '%set_config(''synchronous_commit''%' and pid <> pg_backend_pid()`)).map((row: any) =>
        Number(row.pid),
      );
    const others = new Set(await notifiers());
    const own = async () => (await notifiers()).filter((pid) => !others.has(pid));
    const store = new SessionStore({ db: t.db, table: t.table, notify: true, reaper: false });
    const heard = await listenTo(internals(store).channel);
    t.statements.length = 0;
    const ended = async (sid: string) => {
      await store.set(sid, sessionData(HOUR));
      await store.destroy(sid);
      return eventually(() => heard.includes(internals(store).keysOf(sid)[0]!), 5_000);
    };
    expect(await ended("own-1")).toBe(true);
    // Not one of the pool's: the store's pool has never sent a NOTIFY.
    expect(t.statements.some((text) => text.includes("pg_notify"))).toBe(false);
    const [pid] = await own();
    expect(await own()).toHaveLength(1);
    await t.raw(`select pg_terminate_backend(${pid})`);
    expect(await ended("own-2")).toBe(true);
    expect(await ended("own-3")).toBe(true);
    await store.close();
    expect(await eventually(async () => (await own()).length === 0, 5_000)).toBe(true);
  });

  it.runIf(driver !== "pglite")("an end that commits after its call timed out is still announced to every instance's cache", async () => {
    const store = new SessionStore({ db: t.db, table: t.table, notify: true, reaper: false, timeout: 300 });
    const heard = await listenTo(internals(store).channel);
    await store.set("late", sessionData(HOUR));
    const [key] = internals(store).keysOf("late");
    // Another connection holds the row, so the end waits past the store's timeout, then commits.
    const holder = new pg.Client({ connectionString: DATABASE_URL });
    await holder.connect();
    stops.push(() => holder.end());
    await holder.query("begin");
    await holder.query(`select 1 from ${internals(store).tableName} where key = $1 for update`, [key]);
    await expect(store.destroy("late")).rejects.toMatchObject({ code: "TIMEOUT" });
    await holder.query("commit");
    expect(await eventually(() => heard.includes(key!), 5_000)).toBe(true);
    expect(await store.get("late")).toBeNull();
  });
});
