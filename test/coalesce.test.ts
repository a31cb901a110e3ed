import { afterEach, describe, expect, it } from "vitest";
import { SessionStore, type SessionStoreOptions } from "../src/index.js";
import { cacheReady, drivers, notifyBarrier, openPeer, sessionData, sleep, type TestDb, useTestDb } from "./support/db.js";
import { internals } from "./support/internals.js";

/**
 * Coalesced lookups and ends (src/coalesce.ts): gets that come while lookups are in flight share one statement,
 * and each still gets what a get of its own would: its row or null, its own error, its own deadline.
 * Coalescing is forced (`coalesce(1)`: any concurrent gets share) or turned off (Infinity) through the
 * test seam, so the results of both can be compared.
 */

const HOUR = 3_600_000;
const ID_SECRETS = ["coalesce test secret, old, 32+ characters", "coalesce test secret, new, 32+ characters"];
const ENCRYPT = { secrets: ["coalesce test encryption secret, 32+ chars"] };
/** How a coalesced statement begins its filter (sql/writes.ts's getMany), to tell it from the single lookup. */
const MANY = "any(array(select jsonb_array_elements_text";

/** What a get returned, as an app sees it (the hidden loaded marker aside). */
const seen = (session: unknown) => JSON.stringify(session);

describe.each(drivers)("coalesced lookups on %s", (driver) => {
  let t: TestDb;
  const stores: SessionStore[] = [];

  useTestDb(driver, (db) => {
    t = db;
  });
  afterEach(async () => void (await Promise.all(stores.splice(0).map((store) => store.close()))));

  /** A store on the test database, coalescing any concurrent gets. */
  const storeWith = (options: Partial<SessionStoreOptions> = {}): SessionStore => {
    const store = new SessionStore({ db: t.db, table: t.table, reaper: false, secrets: ID_SECRETS[0], ...options });
    internals(store).coalesce(1);
    stores.push(store);
    return store;
  };

  /** The statements sent by `run`, and what it returned. */
  const sending = async <T>(run: () => Promise<T>): Promise<{ result: T; sent: string[] }> => {
    const from = t.statements.length;
    const result = await run();
    return { result, sent: t.statements.slice(from) };
  };

  /** `ids` got one at a time (coalescing off), then all at once (each twice): what each returned, both ways. */
  const bothWays = async (store: SessionStore, ids: string[]) => {
    internals(store).coalesce(Number.POSITIVE_INFINITY);
    const single: string[] = [];
    for (const id of ids) single.push(seen(await store.get(id)));
    internals(store).coalesce(1);
    const { result, sent } = await sending(() => Promise.all([...ids, ...ids].map((id) => store.get(id))));
    return { single: [...single, ...single], together: result.map(seen), sent };
  };

  it("concurrent gets of live, missing, ended and expired sessions return what single gets return, in fewer statements", async () => {
    const store = storeWith({ retainEnded: HOUR });
    for (const id of ["live-1", "live-2", "live-3", "live-4", "ended-1", "ended-2"]) await store.set(id, sessionData(HOUR, { id, cart: [id] }));
    for (const id of ["expired-1", "expired-2"]) await store.set(id, sessionData(1, { id }));
    await store.destroy("ended-1");
    await store.destroy("ended-2");
    await sleep(20);
    const ids = ["live-1", "missing-1", "ended-1", "live-2", "expired-1", "live-3", "missing-2", "ended-2", "expired-2", "live-4"];
    const { single, together, sent } = await bothWays(store, ids);
    expect(single.filter((s) => s !== "null")).toHaveLength(8);
    expect(together).toEqual(single);
    // 20 gets: the first alone, the rest shared in at most two more statements (one of them for many).
    expect(sent.length).toBeLessThanOrEqual(3);
    expect(sent.some((text) => text.includes(MANY))).toBe(true);
  });

  it("concurrent ends share statements, and each ends its own session only, once, with its own ended event", async () => {
    const store = storeWith({ retainEnded: HOUR });
    const ids = Array.from({ length: 12 }, (_, i) => `end-${i}`);
    const kept = ["kept-1", "kept-2"];
    for (const id of [...ids, ...kept]) await store.set(id, sessionData(HOUR, { id }));
    const handles = await Promise.all(ids.map((id) => store.handleOf(id)));
    const ended: Array<{ handle: string; reason: string }> = [];
    store.on("ended", (event) => void ended.push({ handle: event.handle, reason: event.reason }));
    // Each session ended twice at once, and a session that never was.
    const { sent } = await sending(() => Promise.all([...ids, ...ids, "never-was"].map((id) => store.destroy(id))));
    expect(sent.some((text) => text.includes(MANY))).toBe(true);
    // (An end that found nothing under the current keys looks for an id rotated away from, alone: `?|`.)
    expect(sent.filter((text) => !text.includes("?|")).length).toBeLessThan(ids.length);
    expect(await Promise.all(ids.map((id) => store.get(id)))).toEqual(ids.map(() => null));
    expect((await Promise.all(kept.map((id) => store.get(id)))).every((session) => session !== null)).toBe(true);
    expect(ended.map((e) => e.handle).sort()).toEqual([...handles].sort());
    expect(new Set(ended.map((e) => e.reason))).toEqual(new Set(["logout"]));
  });

  it.each([
    ["", {}],
    [" with encrypt", { encrypt: ENCRYPT }],
  ])("concurrent touches%s share statements, and each renews its own session to its own expiry", async (_, options) => {
    const store = storeWith({ touchAfter: 0, ...options });
    const ids = Array.from({ length: 12 }, (_, i) => `touch-${i}`);
    for (const id of ids) await store.set(id, sessionData(HOUR, { id }));
    const loaded: any[] = await Promise.all(ids.map((id) => store.get(id)));
    // Each its own lifetime: i + 2 hours.
    const until = ids.map((_, i) => Date.now() + (i + 2) * HOUR);
    for (const [i, session] of loaded.entries()) session.cookie.expires = new Date(until[i]!).toISOString();
    const { sent } = await sending(() => Promise.all(ids.map((id, i) => store.touch(id, loaded[i]))));
    expect(sent.some((text) => text.includes("jsonb_to_recordset"))).toBe(true);
    expect(sent.length).toBeLessThan(ids.length);
    internals(store).coalesce(Number.POSITIVE_INFINITY);
    const read: any[] = await Promise.all(ids.map((id) => store.get(id)));
    for (const [i, session] of read.entries()) {
      expect(session?.id).toBe(ids[i]);
      expect(Math.abs(Date.parse(session.cookie.expires) - until[i]!)).toBeLessThan(1_000);
    }
    const rows = await t.raw(`select key, round(date_part('epoch', expires_at) * 1000) as at from $table`);
    const at = new Map(rows.map((row: any) => [row.key, Number(row.at)]));
    for (const [i, id] of ids.entries()) expect(Math.abs(at.get(internals(store).keysOf(id)[0]!)! - until[i]!)).toBeLessThan(1_000);
  });

  it("a lone get sends the single-session statement at once, with no wait for others", async () => {
    const store = storeWith();
    await store.set("alone", sessionData(HOUR, { n: 1 }));
    const from = t.statements.length;
    const got = store.get("alone");
    // Sent before any timer could fire: a get waits only behind a lookup in flight.
    await new Promise((resolve) => setImmediate(resolve));
    expect(t.statements.length).toBe(from + 1);
    expect(await got).toMatchObject({ n: 1 });
    expect(t.statements.slice(from)).toHaveLength(1);
    expect(t.statements[from]).not.toContain(MANY);
  });

  it("a get waiting behind a slow lookup fails with TIMEOUT at its own deadline, not the shared statement's", async () => {
    const peer = await openPeer(t);
    const timeout = 1_000;
    const store = new SessionStore({ db: peer.db, table: t.table, reaper: false, secrets: ID_SECRETS[0], timeout });
    internals(store).coalesce(1);
    stores.push(store);
    await store.set("first", sessionData(HOUR));
    await store.set("second", sessionData(HOUR));
    try {
      // The first lookup's reply comes after 600 ms; the one sent next (for the get that waited) never in time.
      peer.beforeReply(async () => {
        peer.beforeReply(async () => void (await sleep(2_500)));
        await sleep(600);
      });
      const first = store.get("first");
      const start = performance.now();
      const second = store.get("second").then(
        () => ({ code: "none", after: performance.now() - start }),
        (error) => ({ code: error.code, after: performance.now() - start }),
      );
      expect(await first).not.toBeNull();
      const outcome = await second;
      expect(outcome.code).toBe("TIMEOUT");
      // Its deadline counts from its own call: the timeout sweep runs every timeout / 10.
      expect(outcome.after).toBeLessThan(timeout + 300);
    } finally {
      await sleep(2_000);
      await peer.close();
    }
  });

  it("a corrupt row among shared lookups is missing for its own session only, and reported", async () => {
    const store = storeWith();
    const errors: Error[] = [];
    store.on("error", (error) => errors.push(error));
    const ids = ["ok-1", "bad", "ok-2", "ok-3"];
    for (const id of ids) await store.set(id, sessionData(HOUR, { id }));
    const [bad] = internals(store).keysOf("bad");
    await t.raw(`update $table set data = '"not a session"'::jsonb where key = '${bad}'`);
    const { result, sent } = await sending(() => Promise.all(ids.map((id) => store.get(id))));
    expect(result.map((session: any) => session?.id ?? null)).toEqual(["ok-1", null, "ok-2", "ok-3"]);
    expect(sent.some((text) => text.includes(MANY))).toBe(true);
    expect(errors.map((error: any) => error.code)).toEqual(["CORRUPT_ROW"]);
  });

  it("a shared statement that fails fails each get in it with that statement's error, and not the get before", async () => {
    const peer = await openPeer(t);
    const store = new SessionStore({ db: peer.db, table: t.table, reaper: false, secrets: ID_SECRETS[0] });
    internals(store).coalesce(1);
    stores.push(store);
    // The missing table is also reported as an error event (once per store): heard here, not logged.
    store.on("error", () => {});
    for (const id of ["before", "shared-1", "shared-2"]) await store.set(id, sessionData(HOUR, { id }));
    // The table is gone once the first lookup has read it: the statement sent after for the others fails.
    peer.beforeReply(async () => void (await t.raw(`alter table $table rename to sessions_gone`)));
    try {
      const outcomes = await Promise.all(
        ["before", "shared-1", "shared-2"].map((id) =>
          store.get(id).then(
            (session: any) => session?.id,
            (error) => error.code,
          ),
        ),
      );
      expect(outcomes).toEqual(["before", "TABLE_MISSING", "TABLE_MISSING"]);
    } finally {
      await t.raw(`alter table "${t.schema}".sessions_gone rename to sessions`);
      await peer.close();
    }
  });

  it("with encrypt, shared lookups open each row as single lookups do", async () => {
    const store = storeWith({ encrypt: ENCRYPT });
    const ids = ["sealed-1", "sealed-2", "sealed-3", "missing"];
    for (const id of ids.slice(0, 3)) await store.set(id, sessionData(HOUR, { id, secret: `of ${id}` }));
    const { single, together, sent } = await bothWays(store, ids);
    expect(single.filter((s) => s.includes("of sealed-"))).toHaveLength(6);
    expect(together).toEqual(single);
    expect(sent.some((text) => text.includes(MANY))).toBe(true);
  });

  it("with two secrets, shared lookups find rows keyed under either", async () => {
    const before = storeWith({ secrets: [ID_SECRETS[0]!] });
    for (const id of ["old-1", "old-2"]) await before.set(id, sessionData(HOUR, { id }));
    const rotated = storeWith({ secrets: [ID_SECRETS[1]!, ID_SECRETS[0]!] });
    for (const id of ["new-1", "new-2"]) await rotated.set(id, sessionData(HOUR, { id }));
    const ids = ["old-1", "new-1", "old-2", "new-2"];
    const { result, sent } = await sending(() => Promise.all(ids.map((id) => rotated.get(id))));
    expect(result.map((session: any) => session?.id ?? null)).toEqual(ids);
    expect(sent.some((text) => text.includes(MANY))).toBe(true);
  });

  it.skipIf(driver === "postgres.js")("with cache, what shared lookups read is served from the cache after, as single lookups' is", async () => {
    const store = storeWith({ cache: {} });
    expect(await cacheReady(store)).toBe(true);
    const ids = ["cached-1", "cached-2", "cached-3"];
    for (const id of ids) await store.set(id, sessionData(HOUR, { id }));
    // The sets' own NOTIFYs heard, then the cache emptied: the gets below read the rows.
    await notifyBarrier(store);
    internals(store).evict(["*"]);
    const shared = await sending(() => Promise.all(ids.map((id) => store.get(id))));
    expect(shared.sent.some((text) => text.includes(MANY))).toBe(true);
    const again = await sending(() => Promise.all(ids.map((id) => store.get(id))));
    expect(again.result.map(seen)).toEqual(shared.result.map(seen));
    expect(again.sent).toEqual([]);
  });
});
