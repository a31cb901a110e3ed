import { afterEach, describe, expect, it, vi } from "vitest";
import { SessionStore } from "../src/index.js";
import { drivers, sessionData, sleep, type TestDb, useTestDb } from "./support/db.js";

const HOUR = 3_600_000;
const MINUTE = 60_000;

describe.each(drivers)("sessions as records on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;

  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  /** A request-like object as express-session links it to a session (`session.req`). */
  const withRequest = (session: any, ua: string, ip: string) => {
    Object.defineProperty(session, "req", { value: { headers: { "user-agent": ua }, ip }, enumerable: false });
    return session;
  };

  const login = (sid: string, user: string, extra: Record<string, unknown> = {}) =>
    store.set(sid, withRequest(sessionData(HOUR, { passport: { user }, ...extra }), `UA of ${sid}`, "203.0.113.7"));

  it("records the owner (passport.user, then userId), device and timestamps of each session", async () => {
    await login("s1", "ann");
    await store.set("s2", sessionData(HOUR, { userId: 42 }));
    await store.set("anon", sessionData(HOUR));
    const [ann] = await store.list({ userId: "ann" });
    expect(ann).toMatchObject({ userId: "ann", status: "active", userAgent: "UA of s1", ip: "203.0.113.7", endedAt: null, endReason: null });
    expect(ann!.createdAt).toBeInstanceOf(Date);
    expect(ann!.lastSeenAt.getTime()).toBeGreaterThanOrEqual(ann!.createdAt.getTime());
    expect(ann!.handle).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(await store.count({ userId: "42" })).toBe(1);
    expect(await t.raw(`select user_id from $table order by user_id nulls last`)).toEqual([{ user_id: "42" }, { user_id: "ann" }, { user_id: null }]);
  });

  it("uses a custom userId function", async () => {
    const custom = new SessionStore({ db: t.db, table: t.table, userId: (s: any) => s.account?.id });
    await custom.set("c1", sessionData(HOUR, { account: { id: "acct-9" } }));
    expect(await custom.count({ userId: "acct-9" })).toBe(1);
  });

  it('a numeric user id (passport\'s user 7) lists, counts and revokes its sessions given as 7, 7n or "7"', async () => {
    await store.set("n1", sessionData(HOUR, { passport: { user: 7 } }));
    await store.set("n2", sessionData(HOUR, { passport: { user: 7 } }));
    await store.set("other", sessionData(HOUR, { passport: { user: 70 } }));
    expect((await store.list({ userId: 7 })).map((r) => r.userId)).toEqual(["7", "7"]);
    expect(await store.count({ userId: 7n })).toBe(2);
    expect(await store.count({ userId: "7" })).toBe(2);
    const [first] = await store.list({ userId: 7n });
    expect(await store.revoke(first!.handle, { userId: 7n })).toBe(true);
    expect(await store.revokeUser(7)).toBe(1);
    expect(await store.count({ userId: 7, status: "all" })).toBe(0);
    expect(await store.get("n1")).toBeNull();
    expect(await store.get("n2")).toBeNull();
    expect(await store.count({ userId: 70 })).toBe(1);
  });

  it("lists a user's sessions newest activity first, marks the current one, and never shows ids", async () => {
    for (const sid of ["laptop", "phone", "tablet"]) {
      await t.age(1000);
      await login(sid, "ann");
    }
    await login("bob-1", "bob");
    const list = await store.list({ userId: "ann", current: "phone" });
    expect(list.map((r) => r.userAgent)).toEqual(["UA of tablet", "UA of phone", "UA of laptop"]);
    expect(list.map((r) => r.current)).toEqual([false, true, false]);
    expect(await store.handleOf("phone")).toBe(list[1]!.handle);
    expect(await store.handleOf("nope")).toBeNull();
    expect(JSON.stringify(list)).not.toMatch(/"(laptop|phone|tablet)"/);
    expect(await store.list({ userId: "ann", limit: 2 })).toHaveLength(2);
  });

  it("revoke ends a session by handle at once; with userId it cannot end another user's session", async () => {
    await login("ann-1", "ann");
    await login("bob-1", "bob");
    const annHandle = (await store.handleOf("ann-1"))!;
    expect(await store.revoke(annHandle, { userId: "bob" })).toBe(false);
    expect(await store.get("ann-1")).not.toBeNull();
    expect(await store.revoke(annHandle, { userId: "ann" })).toBe(true);
    expect(await store.get("ann-1")).toBeNull();
    expect(await store.revoke(annHandle, { anyOwner: true })).toBe(false);
    expect(await store.revoke("no-such-handle", { anyOwner: true })).toBe(false);
    // A handle is not a session id: using it as one opens nothing.
    expect(await store.get((await store.handleOf("bob-1"))!)).toBeNull();
  });

  it("revokeUser logs out everywhere, or everywhere but the current device (by id or handle)", async () => {
    for (const sid of ["a1", "a2", "a3", "a4"]) await login(sid, "ann");
    await login("b1", "bob");
    expect(await store.revokeUser("ann", { except: "a1" })).toBe(3);
    expect(await store.get("a1")).not.toBeNull();
    expect(await store.get("a2")).toBeNull();
    await login("a5", "ann");
    expect(await store.revokeUser("ann", { except: (await store.handleOf("a5"))! })).toBe(1);
    expect(await store.get("a5")).not.toBeNull();
    expect(await store.revokeUser("ann")).toBe(1);
    expect(await store.count({ userId: "ann" })).toBe(0);
    expect(await store.get("b1")).not.toBeNull();
  });

  /** The store with ended-session history kept (retainEnded), for the history tests. */
  const withHistory = () => (store = new SessionStore({ db: t.db, table: t.table, retainEnded: HOUR, reaper: false }));

  it("without history (the default), an ended session's row is deleted at once: destroy, revoke and revokeUser", async () => {
    await login("out", "ann", { secret: "s3cr3t" });
    await login("rev", "ann");
    await login("all", "bob");
    await store.destroy("out");
    expect(await store.revoke((await store.handleOf("rev"))!, { anyOwner: true })).toBe(true);
    expect(await store.revokeUser("bob")).toBe(1);
    expect(await t.raw(`select key from $table`)).toEqual([]);
    expect(await store.count({ userId: "ann", status: "all" })).toBe(0);
  });

  it("keeps ended sessions as history with reason, without their data (retainEnded)", async () => {
    withHistory();
    await login("out", "ann", { secret: "s3cr3t" });
    await login("rev", "ann");
    await store.destroy("out");
    await store.revoke((await store.handleOf("rev"))!, { anyOwner: true });
    const ended = await store.list({ userId: "ann", status: "ended" });
    expect(ended.map((r) => [r.userAgent, r.endReason]).sort()).toEqual([
      ["UA of out", "logout"],
      ["UA of rev", "revoked"],
    ]);
    expect(ended.every((r) => r.status === "ended" && r.endedAt instanceof Date)).toBe(true);
    expect(await t.raw(`select 1 from $table where data::text like '%s3cr3t%'`)).toHaveLength(0);
    expect(await store.count({ userId: "ann", status: "all" })).toBe(2);
    expect(await store.count({ userId: "ann" })).toBe(0);
  });

  it("idle timeout: activity renews it, inactivity kills it (enforced by the query, no reaper)", async () => {
    const idle = new SessionStore({ db: t.db, table: t.table, idleTimeout: 10 * MINUTE });
    await idle.set("idle", sessionData(24 * HOUR, { passport: { user: "ann" } }));
    for (let minute = 5; minute <= 30; minute += 5) {
      await t.age(5 * MINUTE);
      const session: any = await idle.get("idle");
      expect(session, `alive at minute ${minute}`).not.toBeNull();
      // As express-session's touch does on every request: the cookie rolls.
      session.cookie.expires = new Date(Date.now() + 24 * HOUR).toISOString();
      await idle.touch("idle", session);
    }
    await t.age(10 * MINUTE + 1);
    expect(await idle.get("idle")).toBeNull();
    expect(await idle.list({ userId: "ann", status: "expired" })).toHaveLength(1);
  });

  it("absolute timeout: dead after it whatever the activity, and a save cannot push past it", async () => {
    const abs = new SessionStore({ db: t.db, table: t.table, absoluteTimeout: HOUR });
    await abs.set("abs", sessionData(24 * HOUR, { passport: { user: "ann" } }));
    for (let minute = 10; minute < 60; minute += 10) {
      await t.age(10 * MINUTE);
      const session: any = await abs.get("abs");
      expect(session, `alive at minute ${minute}`).not.toBeNull();
      session.cookie.expires = new Date(Date.now() + 24 * HOUR).toISOString();
      session.n = minute;
      await abs.set("abs", session);
    }
    await t.age(10 * MINUTE + 1);
    expect(await abs.get("abs")).toBeNull();
    const [record] = await abs.list({ userId: "ann", status: "expired" });
    expect(record!.absoluteExpiresAt!.getTime() - record!.createdAt.getTime()).toBe(HOUR);
    expect(record!.expiresAt.getTime()).toBeLessThanOrEqual(record!.absoluteExpiresAt!.getTime());
  });

  it("extend revalidates an expired session, shortens one, and stops at the absolute expiry unless told", async () => {
    const abs = new SessionStore({ db: t.db, table: t.table, absoluteTimeout: 2 * HOUR });
    await abs.set("ext", sessionData(60_000, { passport: { user: "ann" } }));
    const handle = (await abs.handleOf("ext"))!;
    await t.age(120_000);
    expect(await abs.get("ext")).toBeNull();
    expect(await abs.extend(handle, new Date(Date.now() + HOUR), { anyOwner: true })).toBe(true);
    expect(await abs.get("ext")).not.toBeNull();
    await abs.extend(handle, new Date(Date.now() + 10 * HOUR), { anyOwner: true });
    const [capped] = await abs.list({ userId: "ann" });
    expect(capped!.expiresAt.getTime()).toBe(capped!.createdAt.getTime() + 2 * HOUR);
    const before = Date.now();
    await abs.extend(handle, new Date(before + 10 * HOUR), { anyOwner: true, beyondAbsolute: true });
    const after = Date.now();
    const [beyond] = await abs.list({ userId: "ann" });
    expect(beyond!.expiresAt.getTime()).toBeGreaterThanOrEqual(before + 10 * HOUR);
    expect(beyond!.expiresAt.getTime()).toBeLessThanOrEqual(after + 10 * HOUR + 1);
    expect(beyond!.absoluteExpiresAt!.getTime()).toBe(beyond!.expiresAt.getTime());
    expect(await abs.extend(handle, new Date(Date.now() + 1), { anyOwner: true })).toBe(true);
    await sleep(20);
    expect(await abs.get("ext")).toBeNull();
    await abs.destroy("ext");
    expect(await abs.extend(handle, new Date(Date.now() + HOUR), { anyOwner: true })).toBe(false);
    await expect(abs.extend(handle, new Date(NaN), { anyOwner: true })).rejects.toThrow(TypeError);
  });

  it("keeps a session's label (session.label by default) in its record and its history", async () => {
    withHistory();
    await login("tok", "ann", { label: "CLI token" });
    expect((await store.list({ userId: "ann" }))[0]!.label).toBe("CLI token");
    await store.destroy("tok");
    expect((await store.list({ userId: "ann", status: "ended" }))[0]!.label).toBe("CLI token");
    const custom = new SessionStore({ db: t.db, table: t.table, label: (s: any) => s.device?.name });
    await custom.set("named", sessionData(HOUR, { passport: { user: "bob" }, device: { name: "Work laptop" } }));
    expect((await custom.list({ userId: "bob" }))[0]!.label).toBe("Work laptop");
  });

  it("revokeUser keeps every session listed in except (ids and handles mixed)", async () => {
    for (const sid of ["k1", "k2", "k3", "k4"]) await login(sid, "ann");
    expect(await store.revokeUser("ann", { except: ["k1", (await store.handleOf("k2"))!] })).toBe(2);
    expect((await Promise.all(["k1", "k2", "k3", "k4"].map((sid) => store.get(sid)))).map((s) => s !== null)).toEqual([true, true, false, false]);
  });

  it("records an IPv4 client of a dual-stack server as a.b.c.d, and a touch from a new address is written at once", async () => {
    await store.set("ip", withRequest(sessionData(HOUR, { passport: { user: "ann" } }), "UA", "::ffff:192.0.2.10"));
    expect((await store.list({ userId: "ann" }))[0]!.ip).toBe("192.0.2.10");
    const loaded: any = await store.get("ip");
    await store.touch("ip", withRequest(loaded, "UA", "198.51.100.99"));
    expect((await store.list({ userId: "ann" }))[0]!.ip).toBe("198.51.100.99");
  });

  it("lists ended sessions by when they ended, most recent first", async () => {
    withHistory();
    await login("old-active", "ann");
    await t.age(1000);
    await login("newer", "ann");
    await t.age(1000);
    await store.destroy("old-active");
    const ended = await store.list({ userId: "ann", status: "all" });
    expect(ended.map((r) => r.userAgent)).toEqual(["UA of old-active", "UA of newer"]);
  });

  it("revoke and revokeUser refuse a reason outside the list, and end nothing", async () => {
    withHistory();
    await login("a1", "ann");
    const handle = (await store.handleOf("a1"))!;
    const allowed = '"logout", "revoked", "expired", "rotated", "evicted", "reused", "binding"';
    for (const reason of ["password-changed", "Revoked", "", 42] as any[]) {
      await expect(store.revoke(handle, { anyOwner: true, reason })).rejects.toThrow(
        new RegExp(`^connect-drizzle: revoke's \`reason\` must be one of ${allowed} \\(got `),
      );
      await expect(store.revokeUser("ann", { reason })).rejects.toThrow(TypeError);
      await expect(store.revokeUser("ann", { reason })).rejects.toThrow(/^connect-drizzle: revokeUser's `reason` must be one of "logout", /);
    }
    // Not even an unknown handle gets past the check: the mistake shows on the first call, not the first hit.
    await expect(store.revoke("no-such-handle", { anyOwner: true, reason: "password-changed" as any })).rejects.toThrow(TypeError);
    expect(await store.get("a1")).not.toBeNull();
    expect(await t.raw(`select end_reason from $table`)).toEqual([{ end_reason: null }]);
    // Every listed reason is accepted.
    expect(await store.revoke(handle, { anyOwner: true, reason: "logout" })).toBe(true);
    await login("a2", "ann");
    expect(await store.revokeUser("ann", { reason: "evicted" })).toBe(1);
    expect((await store.list({ userId: "ann", status: "ended" })).map((r) => r.endReason).sort()).toEqual(["evicted", "logout"]);
  });

  it("the end_reason column refuses a reason outside the list (a CHECK constraint, SQLSTATE 23514), whoever writes it", async () => {
    withHistory();
    await login("a1", "ann");
    const refused = await t.raw(`update $table set ended_at = now(), end_reason = 'password-changed'`).then(
      () => undefined,
      (error: any) => error,
    );
    expect(refused?.code ?? refused?.cause?.code).toBe("23514");
    expect(await store.get("a1")).not.toBeNull();
    // The listed reasons, and no reason at all (a live session), pass.
    await t.raw(`update $table set end_reason = 'rotated'`);
    await t.raw(`update $table set end_reason = null`);
  });

  /** Every page of `ann`'s sessions, `limit` at a time, following each page's last cursor; `between` runs after each page. */
  async function pages(limit: number, between: (page: number) => Promise<void> = async () => {}, query: { current?: string; status?: "all" } = {}) {
    const all: Array<Awaited<ReturnType<SessionStore["list"]>>> = [];
    let after: string | undefined;
    for (let i = 0; i < 100; i++) {
      const page = await store.list({ userId: "ann", limit, after, ...query });
      if (page.length === 0) return all;
      all.push(page);
      after = page.at(-1)!.cursor;
      await between(i);
    }
    throw new Error("more than 100 pages");
  }

  it("list pages with `after` (the last record's cursor): 25 sessions 10 at a time come each exactly once, in list's order, the current one marked", async () => {
    for (let i = 0; i < 25; i++) await login(`s${i}`, "ann");
    for (let i = 0; i < 3; i++) await login(`b${i}`, "bob");
    const whole = await store.list({ userId: "ann", current: "s7" });
    expect(whole).toHaveLength(25);
    const paged = await pages(10, undefined, { current: "s7" });
    expect(paged.map((p) => p.length)).toEqual([10, 10, 5]);
    expect(paged.flat().map((r) => r.handle)).toEqual(whole.map((r) => r.handle));
    expect(
      paged
        .flat()
        .filter((r) => r.current)
        .map((r) => r.handle),
    ).toEqual([await store.handleOf("s7")]);
  });

  it("paging while sessions are created, used and ended between pages: no record is on two pages, and every session left alone is on one", async () => {
    for (let i = 0; i < 25; i++) await login(`s${i}`, "ann");
    await t.age(MINUTE); // everything a minute old: a use now moves a session to the front
    const before = await store.list({ userId: "ann" });
    const sidOf = new Map(await Promise.all(Array.from({ length: 25 }, async (_, i) => [(await store.handleOf(`s${i}`))!, `s${i}`] as const)));
    const touched = new Set<string>();
    const ended = new Set<string>();
    const paged = await pages(7, async (page) => {
      if (page !== 0) return;
      // After the first page: a new session, two not yet shown used, two not yet shown and one shown ended.
      await login("late", "ann");
      const unseen = before.slice(7).map((r) => sidOf.get(r.handle)!);
      for (const sid of unseen.slice(0, 2)) {
        await store.set(sid, withRequest(sessionData(HOUR, { passport: { user: "ann" }, used: true }), `UA of ${sid}`, "203.0.113.7"));
        touched.add(sid);
      }
      for (const sid of [...unseen.slice(5, 7), sidOf.get(before[0]!.handle)!]) {
        await store.destroy(sid);
        ended.add(sid);
      }
    });
    const handles = paged.flat().map((r) => r.handle);
    expect(new Set(handles).size).toBe(handles.length); // never twice
    const used = await store.list({ userId: "ann", limit: 3 });
    expect(
      used
        .slice(0, 3)
        .map((r) => sidOf.get(r.handle) ?? "late")
        .sort(),
    ).toEqual([...touched, "late"].sort()); // they did move ahead
    const leftAlone = before.filter((r) => !touched.has(sidOf.get(r.handle)!) && !ended.has(sidOf.get(r.handle)!));
    for (const r of leftAlone) expect(handles, sidOf.get(r.handle)).toContain(r.handle);
    for (const sid of ended) if (sid !== sidOf.get(before[0]!.handle)) expect(handles).not.toContain(before.find((r) => sidOf.get(r.handle) === sid)!.handle);
  });

  it("a cursor moves only within the query's own user: one from another user's list shows none of that user's sessions", async () => {
    for (let i = 0; i < 5; i++) await login(`a${i}`, "ann");
    for (let i = 0; i < 5; i++) await login(`b${i}`, "bob");
    const [first] = await store.list({ userId: "bob", limit: 1 });
    const next = await store.list({ userId: "ann", after: first!.cursor });
    expect(next.every((r) => r.userId === "ann")).toBe(true);
  });

  it("list's limit is at most 1,000, and an `after` that is not a record's cursor is a TypeError, never a database error", async () => {
    await login("s1", "ann");
    for (const limit of [1e6, 1001, 0, 1.5, -1]) {
      await expect(store.list({ userId: "ann", limit }), String(limit)).rejects.toThrow(
        "connect-drizzle: `limit` must be an integer from 1 to 1000; for more records, page with `after` (the last record's `cursor`)",
      );
    }
    expect(await store.list({ userId: "ann", limit: 1000 })).toHaveLength(1);
    const [record] = await store.list({ userId: "ann" });
    const tampered = [
      "",
      "not a cursor",
      Buffer.from("[1,2]").toString("base64url"),
      Buffer.from(`["1","x"]`).toString("base64url"),
      Buffer.from(`[1e300,"x"]`).toString("base64url"),
      Buffer.from(`[1,"x' or true --"]`).toString("base64url"),
      record!.cursor.slice(0, -3),
      "x".repeat(10_000),
    ];
    for (const after of tampered) {
      await expect(store.list({ userId: "ann", after }), after.slice(0, 20)).rejects.toThrow(/^connect-drizzle: `after` is not a record's `cursor`/);
    }
  });

  it("list and count reject a query without userId or with an unknown status", async () => {
    await expect(store.list({} as any)).rejects.toThrow(/userId/);
    await expect(store.count({ userId: "a", status: "gone" as any })).rejects.toThrow(/status/);
  });
});
