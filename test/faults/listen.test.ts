import { drizzle } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import pg from "pg";
import postgres from "postgres";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { SessionStore, type AnyPgDatabase, type SessionEvent, type SessionStoreOptions } from "../../src/index.js";
import { eventually, sessionData } from "../support/db.js";
import { createFaultDb, faultsEnabled, type FaultDb, type OpenedDb } from "../support/faultdb.js";
import { pgbouncerBinary, pgbouncerVersion, startPgbouncer, type Pgbouncer } from "../support/pgbouncer.js";
import { internals } from "../support/internals.js";

const binary = faultsEnabled ? pgbouncerBinary() : undefined;
const version = binary ? pgbouncerVersion(binary) : "none";
const SECRET = "listen-faults-secret-0123456789abcdefghij";
const HOUR = 3_600_000;

/**
 * LISTEN behind pgbouncer in transaction mode: it runs on a server connection that pgbouncer then hands
 * to other clients, so the notifications go nowhere ("got packet 'A' from server when not linked"). The
 * cache and `broadcast` prove their LISTEN with a probe sent through `db`: without `listen` they say so
 * loudly (`ready()` rejects, an error event); with `listen` (a database straight to Postgres) they hear.
 */
describe.skipIf(!binary)(`LISTEN through pgbouncer ${version} in transaction pooling mode`, () => {
  let f: FaultDb;
  let direct: OpenedDb;
  let bouncer: Pgbouncer;
  const closers: Array<() => Promise<unknown>> = [];
  let stores: SessionStore[] = [];

  const nodePgThrough = (): AnyPgDatabase => {
    const pool = new pg.Pool({ connectionString: bouncer.url, max: 3 });
    pool.on("error", () => {});
    closers.push(() => pool.end());
    return drizzle({ client: pool });
  };
  const postgresJsThrough = (): AnyPgDatabase => {
    const client = postgres(bouncer.url, { max: 3, prepare: false, onnotice: () => {} });
    closers.push(() => client.end({ timeout: 5 }));
    return drizzlePostgresJs({ client });
  };
  /** A database straight to Postgres, for `listen`. */
  const straight = (): AnyPgDatabase => {
    const pool = new pg.Pool({ connectionString: f.url, max: 1 });
    pool.on("error", () => {});
    closers.push(() => pool.end());
    return drizzle({ client: pool });
  };
  /** A store through pgbouncer; the errors it reports are collected. */
  const storeOn = (db: AnyPgDatabase, options: Partial<SessionStoreOptions>): { store: SessionStore; errors: Error[] } => {
    const store = new SessionStore({ db, table: direct.table, reaper: false, prepare: false, timeout: 2_000, ...options });
    const errors: Error[] = [];
    store.on("error", (error) => void errors.push(error));
    stores.push(store);
    return { store, errors };
  };

  beforeAll(async () => {
    f = await createFaultDb("listen");
    direct = await f.open({ max: 2 });
    bouncer = await startPgbouncer({ dbname: f.name, poolSize: 3 });
  });
  afterAll(async () => {
    await Promise.all(closers.map((close) => close().catch(() => {})));
    await bouncer?.stop();
    await f?.drop();
  });
  beforeEach(async () => {
    await direct.raw(`delete from $table`);
  });
  afterEach(async () => {
    await Promise.all(stores.map((s) => s.close()));
    stores = [];
  });

  describe.each([
    ["node-postgres", nodePgThrough],
    ["postgres.js", postgresJsThrough],
  ] as const)("on %s", (_, through) => {
    it("`broadcast` without `listen` cannot hear, and says so: ready() rejects with LISTEN_DEAF and an error event tells what to do", async () => {
      const { store, errors } = storeOn(through(), { broadcast: true, secrets: SECRET });
      await expect(store.ready()).rejects.toMatchObject({
        code: "LISTEN_DEAF",
        message: expect.stringMatching(
          /^connect-drizzle: `broadcast` cannot hear the database: .*give the store a `listen` database connected straight to Postgres/,
        ),
      });
      expect(await eventually(() => errors.some((e: any) => e.code === "LISTEN_DEAF"), 5_000)).toBe(true);
    });

    it("`broadcast` with `listen` straight to Postgres: another instance hears 5 of 5 created and 5 of 5 ended events", async () => {
      const { store: a, errors: errorsA } = storeOn(through(), { broadcast: true, secrets: SECRET, listen: straight() });
      const { store: b, errors: errorsB } = storeOn(through(), { broadcast: true, secrets: SECRET, listen: straight() });
      await Promise.all([a.ready(), b.ready()]);
      const heard: string[] = [];
      const hear = (event: string) => (e: SessionEvent) => void (e.local || heard.push(`${event} ${e.userId}`));
      a.on("created", hear("created"));
      a.on("ended", hear("ended"));
      for (let i = 0; i < 5; i++) await b.set(`s${i}`, sessionData(HOUR, { passport: { user: "ann" } }));
      for (let i = 0; i < 5; i++) await b.destroy(`s${i}`);
      expect(await eventually(() => heard.length === 10, 5_000)).toBe(true);
      // Each operation's NOTIFY is sent after its write, not awaited, on any pool connection: the order of events may vary.
      expect(heard.sort()).toEqual([...Array(5).fill("created ann"), ...Array(5).fill("ended ann")]);
      expect([...errorsA, ...errorsB]).toEqual([]);
    });
  });

  it("the read cache without `listen` never turns on, and ready() rejects with LISTEN_DEAF", async () => {
    const { store, errors } = storeOn(nodePgThrough(), { cache: {} });
    await expect(store.ready()).rejects.toMatchObject({ code: "LISTEN_DEAF", message: expect.stringContaining("the read cache cannot hear the database") });
    expect(internals(store).cache!.live).toBe(false);
    expect(await eventually(() => errors.some((e: any) => e.code === "LISTEN_DEAF"), 5_000)).toBe(true);
  });

  it("the read cache with `listen` turns on through pgbouncer, and a revoke on another instance evicts the session from it", async () => {
    const { store: a, errors } = storeOn(nodePgThrough(), { cache: {}, listen: straight() });
    const { store: b } = storeOn(nodePgThrough(), { cache: {}, listen: straight() });
    await Promise.all([a.ready(), b.ready()]);
    expect(internals(a).cache!.live).toBe(true);
    await a.set("cached", sessionData(HOUR, { passport: { user: "ann" } }));
    expect(await a.get("cached")).not.toBeNull();
    expect(internals(a).cache!.get("cached", performance.now())).toBeDefined();
    expect(await b.revoke((await b.handleOf("cached"))!, { anyOwner: true })).toBe(true);
    expect(await eventually(() => internals(a).cache!.get("cached", performance.now()) === undefined, 5_000)).toBe(true);
    expect(await a.get("cached")).toBeNull();
    expect(errors).toEqual([]);
  });
});
