import { PgDialect } from "drizzle-orm/pg-core";
import { afterEach, describe, expect, it } from "vitest";
import { createSessionTable, importConnectPgSimple, reap, SessionStore, type SessionEvent, type SessionStoreOptions, type SessionTable } from "../src/index.js";
import { cacheReady, drivers, eventually, openPeer, sessionData, type TestDb, useTestDb } from "./support/db.js";

const HOUR = 3_600_000;
const SECRET = "channels-test-secret-0123456789abcdefghij";

/**
 * Table names Postgres keeps only in quotes: a capital letter (an unquoted LISTEN would lower-case the
 * channel, while pg_notify names it exactly), a dash and a dot (an unquoted LISTEN is a syntax error),
 * and non-ASCII letters.
 */
const QUOTED = 'we"ird';
/** drizzle-orm doubles a double quote inside a name from 0.45 on; before, its queries on such a table fail. */
const ESCAPES = new PgDialect().escapeName(QUOTED) === '"we""ird"';
const NAMES = ["Sessions", "user-sessions", "app.sessions", "séances_セッション", ...(ESCAPES ? [QUOTED] : [])];

/**
 * The cache and `broadcast` hear the other instances on a table of any name, on every driver: their
 * LISTEN names the channel exactly as the writes' pg_notify does.
 */
describe.each(drivers)("channels of tables with unusual names on %s", (driver) => {
  let t: TestDb;
  const cleanup: Array<() => Promise<void>> = [];
  useTestDb(driver, (db) => {
    t = db;
  });
  afterEach(async () => {
    while (cleanup.length > 0) await cleanup.pop()!().catch(() => {});
  });

  /** A new, empty sessions table of this name in the test's schema. */
  async function tableNamed(name: string): Promise<SessionTable> {
    const quoted = `"${t.schema}"."${name.replaceAll('"', '""')}"`;
    await t.raw(`drop table if exists ${quoted}`);
    await t.raw(`create table ${quoted} (like $table including all)`);
    cleanup.push(async () => void (await t.raw(`drop table if exists ${quoted}`)));
    return createSessionTable(name, { schema: t.schema });
  }

  /** Two instances on the table: this one on the test's database, the other on a database of its own. */
  async function instances(table: SessionTable, options: Partial<SessionStoreOptions>): Promise<[SessionStore, SessionStore]> {
    const peer = await openPeer(t);
    const a = new SessionStore({ db: t.db, table, reaper: false, ...options });
    const b = new SessionStore({ db: peer.db, table, reaper: false, ...options });
    const errors: Error[] = [];
    for (const s of [a, b]) s.on("error", (error) => void errors.push(error));
    cleanup.push(
      () => peer.close(),
      () => b.close(),
      () => a.close(),
      async () => expect(errors.map((e) => e.message)).toEqual([]),
    );
    return [a, b];
  }

  it(`table ${JSON.stringify(QUOTED)}: works where drizzle-orm escapes the quote (${ESCAPES}), and is refused up front, saying to upgrade, where it does not`, async () => {
    const table = createSessionTable(QUOTED, { schema: t.schema });
    if (ESCAPES) {
      // The round trips are the cases of NAMES; here, only that nothing refuses it.
      const store = new SessionStore({ db: t.db, table, reaper: false });
      await store.close();
      return;
    }
    const refusal = /name holds a double quote, which the installed drizzle-orm does not escape .* upgrade drizzle-orm to 0\.45/;
    expect(() => new SessionStore({ db: t.db, table, reaper: false })).toThrow(refusal);
    await expect(reap({ db: t.db, table })).rejects.toThrow(refusal);
    await expect(importConnectPgSimple({ db: t.db, table, secrets: SECRET })).rejects.toThrow(refusal);
  });

  it.each(NAMES)("table %j: ready() finds it, and a session is stored, listed, revoked and reaped there", async (name) => {
    const table = await tableNamed(name);
    const store = new SessionStore({ db: t.db, table, reaper: false });
    cleanup.push(() => store.close());
    await store.ready();
    await store.set("named", sessionData(60_000, { userId: "ann" }));
    const [record] = await store.list({ userId: "ann" });
    expect(await store.revoke(record!.handle, { userId: "ann" })).toBe(true);
    expect(await store.get("named")).toBeNull();
    expect(await store.reap()).toMatchObject({ skipped: false });
    expect(await store.length()).toBe(0);
  });

  // The cache does not run on postgres.js (its listen never says when its connection was lost).
  it.skipIf(driver === "postgres.js").each(NAMES)(
    "table %j: the read cache turns on, and a revoke on another instance evicts the session from it",
    async (name) => {
      const [a, b] = await instances(await tableNamed(name), { cache: {} });
      await a.ready();
      expect(await cacheReady(a)).toBe(true);
      await a.set("cached", sessionData(HOUR, { passport: { user: "ann" } }));
      expect(await a.get("cached")).not.toBeNull();
      expect(await b.revoke((await b.handleOf("cached"))!, { anyOwner: true })).toBe(true);
      expect(await eventually(async () => (await a.get("cached")) === null)).toBe(true);
    },
  );

  it.each(NAMES)("table %j: `broadcast` hears the other instance's created and ended events", async (name) => {
    const [a, b] = await instances(await tableNamed(name), { broadcast: true, secrets: SECRET });
    await Promise.all([a.ready(), b.ready()]);
    const heard: Array<[string, SessionEvent]> = [];
    a.on("created", (e) => void (e.local || heard.push(["created", e])));
    a.on("ended", (e) => void (e.local || heard.push(["ended", e])));
    for (let i = 0; i < 5; i++) await b.set(`s${i}`, sessionData(HOUR, { passport: { user: "ann" } }));
    await b.revokeUser("ann");
    expect(await eventually(() => heard.length === 10, 5_000)).toBe(true);
    // Each operation's NOTIFY is sent after its write, not awaited, on any pool connection: the order of events may vary.
    expect(heard.map(([event]) => event).sort()).toEqual([...Array(5).fill("created"), ...Array(5).fill("ended")]);
    expect(heard.every(([, e]) => e.userId === "ann")).toBe(true);
  });
});
