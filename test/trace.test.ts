import { AsyncLocalStorage } from "node:async_hooks";
import diagnostics from "node:diagnostics_channel";
import { afterEach, describe, expect, it } from "vitest";
import { createSessionTable, SessionStore, type TraceContext } from "../src/index.js";
import { traced } from "./support/internals.js";
import { cacheReady, drivers, sessionData, type TestDb, useTestDb } from "./support/db.js";
import { internals } from "./support/internals.js";

const HOUR = 3_600_000;
const PHASES = ["start", "end", "asyncStart", "asyncEnd", "error"] as const;
type Phase = (typeof PHASES)[number];

/** Subscribes to the tracing channels of `operations`; what they published, in order, until `stop()`. */
function subscribe(operations: string[]) {
  const seen: Array<{ operation: string; phase: Phase; context: TraceContext }> = [];
  const stops: Array<() => void> = [];
  for (const operation of operations) {
    const channel = diagnostics.tracingChannel<object, TraceContext>(`connect-drizzle:${operation}`);
    const handlers = Object.fromEntries(
      PHASES.map((phase) => [phase, (context: TraceContext) => void seen.push({ operation, phase, context: { ...context } })]),
    ) as any;
    channel.subscribe(handlers);
    stops.push(() => channel.unsubscribe(handlers));
  }
  return {
    seen,
    stop: () => {
      for (const stop of stops) stop();
    },
    phases: (operation: string) => seen.filter((s) => s.operation === operation).map((s) => s.phase),
  };
}

describe.each(drivers)("diagnostics_channel tracing on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;
  let subscription: ReturnType<typeof subscribe> | undefined;
  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });
  afterEach(() => subscription?.stop());

  it("get, set, touch, destroy, revoke: start, end, asyncStart, asyncEnd with { operation, table } and the handle, never a session id", async () => {
    subscription = subscribe(["get", "set", "touch", "destroy", "revoke", "list", "revokeUser"]);
    const sid = "trace-sid-0123456789";
    await store.set(sid, sessionData(HOUR, { passport: { user: "ann" } }));
    const session: any = await store.get(sid);
    await store.touch(sid, session);
    const [row] = await store.list({ userId: "ann" });
    await store.revoke(row!.handle, { userId: "ann" });
    await store.destroy(sid);
    await store.revokeUser("ann");
    const table = `"${t.schema}"."sessions"`;
    for (const operation of ["get", "set", "destroy", "revoke", "list", "revokeUser"]) {
      expect(subscription.phases(operation), operation).toEqual(["start", "end", "asyncStart", "asyncEnd"]);
    }
    expect(subscription.phases("touch"), "a skipped touch is traced too").toEqual(["start", "end", "asyncStart", "asyncEnd"]);
    const contexts = subscription.seen.filter((s) => s.phase === "start").map((s) => s.context);
    expect(contexts).toEqual([
      { operation: "set", table },
      { operation: "get", table },
      { operation: "touch", table, skipped: true },
      { operation: "list", table, userId: "ann" },
      { operation: "revoke", table, handle: row!.handle },
      { operation: "destroy", table },
      { operation: "revokeUser", table, userId: "ann" },
    ]);
    const keys: string[] = internals(store).keysOf(sid);
    for (const { context } of subscription.seen) {
      expect(Object.getOwnPropertySymbols(context)).toEqual([]);
      const text = JSON.stringify(context);
      for (const secret of [sid, ...keys]) expect(text).not.toContain(secret);
    }
  });

  it("a failing operation publishes error (with the SessionStoreError) before asyncStart and asyncEnd", async () => {
    subscription = subscribe(["get", "set"]);
    const missing = new SessionStore({ db: t.db, table: createSessionTable("no_such_table", { schema: t.schema }), reaper: false });
    missing.on("error", () => {});
    await expect(missing.get("some-session-id")).rejects.toMatchObject({ code: "TABLE_MISSING" });
    expect(subscription.phases("get")).toEqual(["start", "end", "error", "asyncStart", "asyncEnd"]);
    const failed = subscription.seen.find((s) => s.phase === "error")!;
    expect(failed.context.error).toMatchObject({ name: "SessionStoreError", code: "TABLE_MISSING" });
    await expect(store.set("bad", { cookie: {}, big: 1n } as any)).rejects.toMatchObject({ code: "UNSERIALIZABLE" });
    expect(subscription.phases("set")).toEqual(["start", "end", "error", "asyncStart", "asyncEnd"]);
  });

  it.skipIf(driver === "postgres.js")("a get answered from the read cache is traced, marked cached, and sends no query", async () => {
    const cached = new SessionStore({ db: t.db, table: t.table, cache: {}, reaper: false });
    try {
      expect(await cacheReady(cached)).toBe(true);
      await cached.set("cached-sid", sessionData(HOUR));
      await cached.get("cached-sid");
      subscription = subscribe(["get"]);
      t.statements.length = 0;
      expect(await cached.get("cached-sid")).not.toBeNull();
      expect(t.statements.filter((s) => !s.includes("pg_notify"))).toEqual([]);
      expect(subscription.seen.map((s) => [s.phase, s.context])).toEqual(
        ["start", "end", "asyncStart", "asyncEnd"].map((phase) => [phase, { operation: "get", table: `"${t.schema}"."sessions"`, cached: true }]),
      );
    } finally {
      await cached.close();
    }
  });

  it("a store bound to the start channel (AsyncLocalStorage) is the operation's context inside it: an `ended` listener sees its destroy", async () => {
    const storage = new AsyncLocalStorage<TraceContext>();
    const channel = diagnostics.tracingChannel<object, TraceContext>("connect-drizzle:destroy");
    channel.start.bindStore(storage, (context) => context);
    try {
      await store.set("als-sid", sessionData(HOUR, { passport: { user: "ann" } }));
      let inside: TraceContext | undefined;
      store.on("ended", () => void (inside = storage.getStore()));
      await store.destroy("als-sid");
      expect(inside).toMatchObject({ operation: "destroy" });
    } finally {
      channel.start.unbindStore(storage);
    }
  });

  it("reap rounds, periodic or called, are traced as reap", async () => {
    subscription = subscribe(["reap"]);
    await store.reap();
    expect(subscription.phases("reap")).toEqual(["start", "end", "asyncStart", "asyncEnd"]);
  });
});

describe("tracing without subscribers", () => {
  it("costs nothing: the operation's own promise comes back, and no context is made", () => {
    const promise = Promise.resolve(1);
    expect(traced("get", '"sessions"', undefined, () => promise)).toBe(promise);
    const channel = diagnostics.tracingChannel("connect-drizzle:get");
    const start = () => {};
    channel.start.subscribe(start);
    try {
      expect(traced("get", '"sessions"', undefined, () => promise)).not.toBe(promise);
    } finally {
      channel.start.unsubscribe(start);
    }
  });
});
