import { afterEach, describe, expect, it } from "vitest";
import { SessionStore, SessionStoreError } from "../src/index.js";
import { drivers, sessionData, type TestDb, useTestDb } from "./support/db.js";
import { failureOf, synchronousStandbys } from "./support/internals.js";

/** A driver error as each driver raises it: a SQLSTATE, or a socket errno, and a message. */
const pgError = (code: string, message: string) => Object.assign(new Error(message), { code });
const READ_ONLY = () => pgError("25006", "cannot execute UPDATE in a read-only transaction");
const STARTING = () => pgError("57P03", "the database system is starting up");
const REFUSED = () => pgError("ECONNREFUSED", "connect ECONNREFUSED 127.0.0.1:5432");
const KILLED = () => pgError("57P01", "terminating connection due to administrator command");
const DEADLOCK = () => pgError("40P01", "deadlock detected");
const SERIALIZATION = () => pgError("40001", "could not serialize access due to concurrent update");

/**
 * The next statements the store sends fail with these errors, in order, before reaching the database
 * (node-postgres: its pool's query, which the store calls directly; elsewhere drizzle's execute). Returns
 * how many statements were sent in all, failed or not.
 */
function failNext(t: TestDb, errors: Array<() => Error>): { sent: () => number } {
  let sent = 0;
  const wrap = (target: any, method: string) => {
    const original = target[method].bind(target);
    target[method] = (...args: any[]) => {
      sent++;
      const next = errors.shift();
      return next ? Promise.reject(next()) : original(...args);
    };
    return () => void (target[method] = original);
  };
  restore?.();
  restore = t.driver === "node-postgres" ? wrap((t.db as any).$client, "query") : wrap(t.db, "execute");
  return { sent: () => sent };
}
let restore: (() => void) | undefined;

describe.each(drivers)("failover on %s: statements that failed for a server in failover run again", (driver) => {
  let t: TestDb;
  afterEach(() => {
    restore?.();
    restore = undefined;
  });
  useTestDb(driver, (db) => {
    t = db;
  });
  const storeOf = (options: Partial<ConstructorParameters<typeof SessionStore>[0]> = {}) =>
    new SessionStore({ db: t.db, table: t.table, reaper: false, ...options });

  it("a login, a lookup and a sign-out each succeed through a failover that refused their first attempts (a demoted primary, a starting server, a refused connection)", async () => {
    const store = storeOf();
    let failing = failNext(t, [READ_ONLY, STARTING, REFUSED]);
    await store.set("sid-1", sessionData(60_000, { passport: { user: "ann" } }));
    expect(failing.sent()).toBe(4);
    failing = failNext(t, [REFUSED, STARTING]);
    expect(((await store.get("sid-1")) as any)?.passport).toEqual({ user: "ann" });
    expect(failing.sent()).toBe(3);
    failing = failNext(t, [READ_ONLY]);
    await store.destroy("sid-1");
    expect(failing.sent()).toBe(2);
    restore?.();
    expect(await store.get("sid-1")).toBeNull();
  });

  it("after a connection lost mid-statement, a lookup and an end run again (a second run changes nothing more), and the end holds", async () => {
    const store = storeOf();
    await store.set("sid-1", sessionData(60_000, { passport: { user: "ann" } }));
    let failing = failNext(t, [KILLED]);
    expect(await store.get("sid-1")).not.toBeNull();
    expect(failing.sent()).toBe(2);
    failing = failNext(t, [KILLED, REFUSED]);
    await store.destroy("sid-1");
    expect(failing.sent()).toBe(3);
    restore?.();
    expect(await store.get("sid-1")).toBeNull();
  });

  it("a write or lookup the database rolled back whole (a deadlock with another statement, a serialization failure) runs again and succeeds", async () => {
    const store = storeOf();
    let failing = failNext(t, [DEADLOCK]);
    await store.set("sid-1", sessionData(60_000, { passport: { user: "ann" } }));
    expect(failing.sent()).toBe(2);
    failing = failNext(t, [SERIALIZATION, DEADLOCK]);
    expect(((await store.get("sid-1")) as any)?.passport).toEqual({ user: "ann" });
    expect(failing.sent()).toBe(3);
    failing = failNext(t, [DEADLOCK]);
    expect(await store.revokeUser("ann")).toBe(1);
    expect(failing.sent()).toBe(2);
    restore?.();
    expect(await store.get("sid-1")).toBeNull();
  });

  it("a versioned save whose connection was lost is not run again (its second run would call its own first a conflict): UNAVAILABLE, saying to retry", async () => {
    const store = storeOf({ versioned: true });
    await store.set("sid-1", sessionData(60_000, { n: 1 }));
    const loaded: any = await store.get("sid-1");
    loaded.n = 2;
    const failing = failNext(t, [KILLED]);
    const error = await store.set("sid-1", loaded).catch((e) => e);
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(error).toMatchObject({ code: "UNAVAILABLE" });
    expect(error.message).toMatch(/unreachable or going through a failover; retry the request$/);
    expect(failing.sent()).toBe(1);
  });

  it("a database that stays read-only (a store given a standby) fails with READ_ONLY after `timeout`, saying to give it the primary", async () => {
    const store = storeOf({ timeout: 300 });
    failNext(
      t,
      Array.from({ length: 1_000 }, () => READ_ONLY),
    );
    const started = performance.now();
    const error = await store.set("sid-1", sessionData(60_000)).catch((e) => e);
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(error).toBeInstanceOf(SessionStoreError);
    expect(error.code).toBe("READ_ONLY");
    expect(error.message).toMatch(/read-only standby; give the store the primary/);
  });

  it("an error that is not a failover's (a syntax error, a constraint) is not run again", async () => {
    const store = storeOf();
    const failing = failNext(t, [() => pgError("42601", "syntax error")]);
    await expect(store.get("sid-1")).rejects.toMatchObject({ code: "DATABASE" });
    expect(failing.sent()).toBe(1);
  });
});

describe("what a failover error is", () => {
  it.each<[string, Error, "refused" | "lost" | undefined]>([
    ["a read-only transaction (a demoted primary)", READ_ONLY(), "refused"],
    ["a server starting or stopping", STARTING(), "refused"],
    ["a refused connection", REFUSED(), "refused"],
    ["node-postgres's connect timeout", new Error("timeout exceeded when trying to connect"), "refused"],
    ["a terminated backend", KILLED(), "lost"],
    ["a reset socket", pgError("ECONNRESET", "read ECONNRESET"), "lost"],
    ["postgres.js's closed connection", pgError("CONNECTION_CLOSED", "write CONNECTION_CLOSED 127.0.0.1:5432"), "lost"],
    ["node-postgres's lost connection", new Error("Connection terminated unexpectedly"), "lost"],
    ["a connection exception (class 08)", pgError("08006", "connection failure"), "lost"],
    ["drizzle's wrapper around one", Object.assign(new Error("Failed query: ..."), { cause: READ_ONLY() }), "refused"],
    ["a syntax error", pgError("42601", "syntax error"), undefined],
    ["a unique violation", pgError("23505", "duplicate key"), undefined],
  ])("%s", (_name, error, kind) => {
    expect(failureOf(error)).toBe(kind);
  });
});

describe("which standbys a commit waits for", () => {
  const rows = (...r: Array<[string, string]>) => JSON.stringify(r.map(([name, state]) => ({ name, state })));
  it("those in state sync; not async or potential ones", () => {
    expect([...synchronousStandbys(rows(["a", "sync"], ["b", "async"], ["c", "potential"]), '"a"')]).toEqual(["a"]);
  });
  it("those of an ANY k quorum only when the quorum needs every one of them", () => {
    expect([...synchronousStandbys(rows(["a", "quorum"]), "ANY 1 (a)")]).toEqual(["a"]);
    expect([...synchronousStandbys(rows(["a", "quorum"], ["b", "quorum"]), "ANY 1 (a, b)")]).toEqual([]);
    expect([...synchronousStandbys(rows(["a", "quorum"], ["b", "quorum"]), "any 2 (a, b)")]).toEqual(["a", "b"]);
  });
  it("none when the role cannot see the states (no pg_monitor: null)", () => {
    expect([...synchronousStandbys(JSON.stringify([{ name: "a", state: null }]), '"a"')]).toEqual([]);
  });
});
