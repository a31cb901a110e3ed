/**
 * A model-based concurrency test of the session lifecycle: random sequences of store calls on two
 * instances (A and B, each on its own pool; on PGlite both on the one database), some started together,
 * against a model that knows, for every session, when it was created, the window its expiry can lie in,
 * its absolute deadline, and whether (and when) it was ended. After every command the invariants are
 * checked against what the calls returned and against the table itself:
 *
 *  1. An ended session is never returned: a get that started after the end call resolved returns null
 *     (on the ending instance at once; on another instance with a cache once it has heard the NOTIFY).
 *  2. No ended session becomes live again: the live rows of the table are sessions the model holds as
 *     possibly live, with the handle it knows (a new handle for a known key is a resurrection).
 *  3. A live session nobody ended is never lost: a get that finished well before the expiry returns it.
 *  4. The absolute expiry is never exceeded (reads, and `expires_at <= created_at + absoluteTimeout`).
 *  5. A get that started after the expiry returns null.
 *
 * Time is real time (the test's clock; the database runs on this host, on the same clock), never an
 * instance's skewed app clock. Every bound has a margin (150 ms before an expiry, 50 ms after one) taken
 * from the times the calls were observed to start and finish, so a slow machine only makes more checks
 * inapplicable, never wrong; when a window is uncertain (calls racing on one session) the check is skipped.
 */
import { createHash, randomBytes } from "node:crypto";
import fc from "fast-check";
import { afterAll, it } from "vitest";
import { SessionStore, type AnyPgDatabase, type RevokeOptions, type SessionStoreOptions } from "../../src/index.js";
import { openDb, openPeer, openSchema, sleep, type DriverName, type TestDb } from "./db.js";

// ---------------------------------------------------------------------------------------------------
// Parameters

export type Inst = "A" | "B";
const INSTS: readonly Inst[] = ["A", "B"];
type User = "ann" | "bob" | null;

/** A long session's lifetime; short ones live 400-900 ms. */
const LONG = 60_000;
/** The `shorten` variant of a save or touch: a smaller maxAge than the session had. */
const shortened = (life: number) => Math.min(500, Math.floor(life / 2));
/** App clock skew of the `skew` command. */
const SKEW = 10 * 60_000;
/** absoluteTimeout of the configurations that have one. */
export const ABSOLUTE = 1_500;
const CACHE = { max: 100, ttl: 60_000 };
/** `retainEnded` of the configurations with history: an end keeps the row as a record instead of deleting it. */
const HISTORY = 60_000;
const SLOTS = 2;

/** A get must find a live session when it finished at least this long before the earliest expiry. */
const LOST_MARGIN = 150;
/** A get that started this long after the latest expiry must not find the session. */
const LATE_MARGIN = 50;
/** Longest wait for a NOTIFY to reach another instance. */
const NOTIFY_WAIT = 5_000;

// ---------------------------------------------------------------------------------------------------
// The store under test

/** The store with a skewable app clock and a record of evictions. */
export class TestStore extends SessionStore {
  /** How far this instance's app clock is off, in ms. */
  skew = 0;
  /** Row keys this store evicted (NOTIFY payloads included): the barrier markers are looked up here. */
  readonly evicted = new Set<string>();
  /** This instance's app clock: what express-session on this server reads when it sets a cookie. */
  clock(): number {
    return Date.now() + this.skew;
  }
  protected override now(): number {
    return this.clock();
  }
  protected override evict(keys: readonly string[]): void {
    for (const key of keys) this.evicted?.add(key);
    super.evict(keys);
  }
}

/** The model's key for `encrypt` (a fixed test value, 32+ characters). */
const ENCRYPTION_SECRET = "lifecycle model encryption secret, test only";

export const keyOf = (sid: string) => createHash("sha256").update(sid, "utf8").digest("base64url");

// ---------------------------------------------------------------------------------------------------
// Configurations and databases

export interface Config {
  driver: DriverName;
  cache: boolean;
  absolute: number | undefined;
  /** With `retainEnded`: ends are updates that keep the row as a record (without it they delete the row). */
  history: boolean;
  /** With `encrypt`: every save seals its keys (merged saves included), every read opens them. */
  encrypt: boolean;
  name: string;
}

export function configurations(drivers: readonly DriverName[]): Config[] {
  const list: Config[] = [];
  for (const driver of drivers) {
    // The read cache needs LISTEN, which the store has on node-postgres and PGlite only (it refuses a cache elsewhere).
    for (const cache of driver === "postgres.js" ? [false] : [false, true]) {
      for (const absolute of [undefined, ABSOLUTE]) {
        for (const history of [false, true]) {
          // Encryption rides with the absolute timeout: half of the configurations, on every driver and cache setting.
          const encrypt = absolute !== undefined;
          const name = `${driver} cache=${cache ? "both" : "none"} absolute=${absolute ?? "none"}${history ? " history" : ""}${encrypt ? " encrypted" : ""}`;
          list.push({ driver, cache, absolute, history, encrypt, name });
        }
      }
    }
  }
  return list;
}

let sharedPglite: Promise<TestDb> | undefined;
let schemas = 0;

/**
 * A database for one configuration: its own schema. On PGlite one instance is shared by every
 * configuration (opening one costs seconds), each in a schema of its own; elsewhere a fresh openDb.
 */
export async function openConfigDb(driver: DriverName): Promise<TestDb> {
  if (driver !== "pglite") return openDb(driver, { pool: 1 });
  sharedPglite ??= openDb("pglite");
  return openSchema(await sharedPglite);
}

/** Closes the shared PGlite (afterAll). */
export async function closeSharedDbs(): Promise<void> {
  const shared = sharedPglite;
  sharedPglite = undefined;
  await (await shared?.catch(() => undefined))?.close();
}

/** A connection pool of its own for one instance (PGlite: the one database). */
async function connect(t: TestDb): Promise<{ db: AnyPgDatabase; end(): Promise<void> }> {
  const peer = await openPeer(t);
  return { db: peer.db, end: peer.close };
}

// ---------------------------------------------------------------------------------------------------
// The real system and the model

interface Instance {
  name: Inst;
  store: TestStore;
  cached: boolean;
  end(): Promise<void>;
}

export interface Real {
  config: Config;
  t: TestDb;
  channel: string;
  A: Instance;
  B: Instance;
  t0: number;
  trace: string[];
  stats: Map<string, number>;
  /** How many times each invariant was checked (applied, not skipped as uncertain). */
  checks: Map<string, number>;
  errors: string[];
}

const checked = (r: Real, invariant: 1 | 2 | 3 | 4 | 5) => void r.checks.set(`${invariant}`, (r.checks.get(`${invariant}`) ?? 0) + 1);

/** Bounds of a time (epoch ms): the expiry lies in [lo, hi]. ±Infinity: unknown. */
interface Win {
  lo: number;
  hi: number;
}
const UNKNOWN: Win = { lo: -Infinity, hi: Infinity };
const NEVER: Win = { lo: Infinity, hi: Infinity };
const union = (...wins: Win[]): Win => ({ lo: Math.min(...wins.map((w) => w.lo)), hi: Math.max(...wins.map((w) => w.hi)) });

interface Sess {
  n: number;
  sid: string;
  key: string;
  tag: string;
  user: User;
  /** The handle the row has (the latest one seen). */
  handle: string | null;
  handles: Set<string>;
  /** When the set that created it resolved. */
  created: number;
  /** Idle expiry window. */
  win: Win;
  /** Absolute deadline window (NEVER without absoluteTimeout). */
  abs: Win;
  /**
   * A save reached it when it may already have expired: the store may have revived the row or (after a
   * reap) inserted a new one, with a new handle and absolute deadline. Only the ended rules apply to it.
   */
  uncertain: boolean;
  ended: boolean;
  /** When the first call that ended it resolved. */
  endAt: number;
  /** From when each instance must read it as ended (the ender at once; a cached other once it heard). */
  visible: Record<Inst, number>;
}

interface Slot {
  s: Sess;
  /** The very object get returned (it carries the store's hidden "loaded" state). */
  obj: any;
  inst: Inst;
  /** The earliest the expiry the request loaded can be. */
  loadedLo: number;
}

export interface Model {
  config: Config;
  sessions: Sess[];
  slots: Array<Slot | undefined>;
}

type WriteOp = "change" | "roll" | "shorten" | "touch" | "touch-shorten" | "extend";

interface NewSession {
  sid: string;
  user: User;
  life: number;
  handle: string | null;
  start: number;
  end: number;
}

/** What a step observed; the model is updated from these only after every step of a command is done. */
type Ev =
  | { t: "create"; c: NewSession }
  | { t: "get"; s: Sess; inst: Inst; start: number; end: number; found: boolean; wrong: boolean; obj: any; slot?: number }
  | { t: "write"; s: Sess; inst: Inst; op: WriteOp; start: number; end: number; life: number; loadedLo: number; result: boolean; skew: number }
  | { t: "end"; s: Sess; inst: Inst; start: number; end: number; op: string }
  | { t: "miss"; s: Sess; inst: Inst; start: number; end: number; op: string }
  | { t: "revokeUser"; user: User }
  | { t: "slot"; index: number }
  | { t: "fail"; message: string };

interface Step {
  kind: string;
  label: string;
  check(m: Readonly<Model>): boolean;
  exec(m: Readonly<Model>, r: Real): Promise<Ev[]>;
}

// ---------------------------------------------------------------------------------------------------
// Steps

const newSid = () => randomBytes(18).toString("base64url");
/**
 * Real time, epoch ms with sub-millisecond resolution: two calls racing within one millisecond must still
 * be ordered by when they were seen to start and resolve.
 */
const real = () => performance.timeOrigin + performance.now();
const ms = (r: Real, at: number) => `+${String(Math.round(at - r.t0)).padStart(5)}ms`;
const sname = (s: Sess) => `s${s.n}`;
const trace = (r: Real, at: number, text: string) => void r.trace.push(`${ms(r, at)} ${text}`);

function pick(m: Readonly<Model>, k: number): Sess | undefined {
  const n = m.sessions.length;
  return n === 0 ? undefined : m.sessions[n - 1 - (k % n)];
}
const ref = (k: number) => `#${k}`;

function sessionData(clock: number, life: number, user: User, sid: string): any {
  return {
    cookie: { originalMaxAge: life, expires: new Date(clock + life), httpOnly: true, path: "/" },
    tag: keyOf(sid).slice(0, 12),
    n: 0,
    ...(user ? { passport: { user } } : {}),
  };
}

/** Creates a session through `store` (set with fresh data), then reads its handle from the table. */
async function createOn(r: Real, inst: Inst, life: number, user: User, what: string): Promise<NewSession> {
  const store = r[inst].store;
  const sid = newSid();
  const start = real();
  await store.set(sid, sessionData(store.clock(), life, user, sid));
  const end = real();
  const [row] = await r.t.raw<{ handle: string }>(`select handle from $table where key = '${keyOf(sid)}'`);
  trace(r, start, `${what}(${inst}) ${life} ms ${user ?? "anonymous"} → key ${keyOf(sid).slice(0, 6)} handle ${row?.handle?.slice(0, 6)} [${Math.round(end - start)} ms]`);
  return { sid, user, life, handle: row?.handle ?? null, start, end };
}

/** A get, issued synchronously (so one started right after an await sees the store as it was then). */
async function timedGet(r: Real, inst: Inst, s: Sess, what: string, slot?: number): Promise<Ev> {
  const start = real();
  const got: any = await r[inst].store.get(s.sid);
  const end = real();
  trace(r, start, `${what}(${inst}) ${sname(s)} → ${got ? "session" : "null"} [${Math.round(end - start)} ms]`);
  const wrong = got != null && got.tag !== s.tag;
  return { t: "get", s, inst, start, end, found: got != null, wrong, obj: got, slot };
}

/** A get right after an end call resolved, on the same instance: must be null at once. */
const checkEnded = (r: Real, inst: Inst, sessions: Sess[]) => Promise.all(sessions.map((s) => timedGet(r, inst, s, "  check-get")));

const hasSession = (m: Readonly<Model>) => m.sessions.length > 0;

function createStep(inst: Inst, life: number, user: User): Step {
  return {
    kind: "create",
    label: `create(${inst}, ${life === LONG ? "long" : `short ${life}`}, ${user ?? "anonymous"})`,
    check: () => true,
    exec: async (_m, r) => [{ t: "create", c: await createOn(r, inst, life, user, "create") }],
  };
}

function getStep(inst: Inst, k: number): Step {
  return {
    kind: "get",
    label: `get(${inst}, ${ref(k)})`,
    check: hasSession,
    exec: async (m, r) => [await timedGet(r, inst, pick(m, k)!, "get")],
  };
}

function loadStep(inst: Inst, k: number, slot: number): Step {
  return {
    kind: "load",
    label: `load(${inst}, ${ref(k)} → slot${slot})`,
    check: hasSession,
    exec: async (m, r) => [await timedGet(r, inst, pick(m, k)!, `load slot${slot}`, slot)],
  };
}

/** A request holding a loaded session saves (change: data changed; roll: cookie rolled; shorten: smaller maxAge) or touches it. */
function writeStep(slot: number, op: "change" | "roll" | "shorten" | "touch" | "touch-shorten"): Step {
  const touch = op === "touch" || op === "touch-shorten";
  return {
    kind: touch ? "touch" : "save",
    label: touch ? `touch(slot${slot}${op === "touch-shorten" ? ", shorten" : ""})` : `save(slot${slot}, ${op})`,
    check: (m) => m.slots[slot] !== undefined,
    exec: async (m, r) => {
      const { s, obj, inst, loadedLo } = m.slots[slot]!;
      const store = r[inst].store;
      const start = real();
      const clock = store.clock();
      let life: number = obj.cookie.originalMaxAge;
      if (op === "shorten" || op === "touch-shorten") {
        life = shortened(life);
        obj.cookie.originalMaxAge = life;
      }
      // express-session's cookie.touch(): expires = now + originalMaxAge, on this server's clock.
      obj.cookie.expires = new Date(clock + life);
      if (op === "change") obj.n = (obj.n ?? 0) + 1;
      await (touch ? store.touch(s.sid, obj) : store.set(s.sid, obj));
      const end = real();
      trace(r, start, `${touch ? "touch" : `save ${op}`}(${inst}, slot${slot}) ${sname(s)} maxAge ${life} [${Math.round(end - start)} ms]`);
      return [{ t: "write", s, inst, op, start, end, life, loadedLo, result: true, skew: store.skew }];
    },
  };
}

function destroyStep(inst: Inst, k: number): Step {
  return {
    kind: "destroy",
    label: `destroy(${inst}, ${ref(k)})`,
    check: hasSession,
    exec: async (m, r) => {
      const s = pick(m, k)!;
      const start = real();
      await r[inst].store.destroy(s.sid);
      const end = real();
      const checks = checkEnded(r, inst, [s]);
      trace(r, start, `destroy(${inst}) ${sname(s)} [${Math.round(end - start)} ms]`);
      return [{ t: "end", s, inst, start, end, op: "destroy" }, ...(await checks)];
    },
  };
}

/** Revoke by handle: as any owner, as the owner ({ userId }), or as another user (must do nothing). */
function revokeStep(inst: Inst, k: number, as: "any" | "owner" | "other"): Step {
  return {
    kind: "revoke",
    label: `revoke(${inst}, ${ref(k)}, ${as})`,
    check: hasSession,
    exec: async (m, r) => {
      const s = pick(m, k)!;
      if (!s.handle) return [];
      const options: RevokeOptions =
        as === "other" ? { userId: s.user === "ann" ? "bob" : "ann" } : as === "owner" && s.user ? { userId: s.user } : { anyOwner: true };
      const start = real();
      const ended = await r[inst].store.revoke(s.handle, options);
      const end = real();
      const checks = ended ? checkEnded(r, inst, [s]) : Promise.resolve([]);
      trace(r, start, `revoke(${inst}, ${as}) ${sname(s)} → ${ended} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [];
      if (ended && as === "other") evs.push({ t: "fail", message: `revoke of ${sname(s)} (${s.user ?? "anonymous"}) with { userId: "${options.userId}" } ended it` });
      if (ended && s.ended) evs.push({ t: "fail", message: `invariant 2: revoke(${inst}) found ${sname(s)} live to end, though it had been ended` });
      if (ended) evs.push({ t: "end", s, inst, start, end, op: "revoke" });
      else if (as !== "other") evs.push({ t: "miss", s, inst, start, end, op: "revoke" });
      return [...evs, ...(await checks)];
    },
  };
}

function revokeUserStep(inst: Inst, user: "ann" | "bob", except: number | null): Step {
  return {
    kind: "revokeUser",
    label: `revokeUser(${inst}, ${user}${except === null ? "" : `, except ${ref(except)} of ${user}`})`,
    check: hasSession,
    exec: async (m, r) => {
      const own = m.sessions.filter((s) => s.user === user);
      const kept = except === null || own.length === 0 ? undefined : own[own.length - 1 - (except % own.length)];
      const start = real();
      const n = await r[inst].store.revokeUser(user, kept ? { except: kept.sid } : {});
      const end = real();
      const targets = own.filter((s) => s !== kept);
      const checks = checkEnded(r, inst, targets);
      trace(r, start, `revokeUser(${inst}, ${user}${kept ? ` except ${sname(kept)}` : ""}) → ${n}: ${targets.map(sname).join(" ")} [${Math.round(end - start)} ms]`);
      return [{ t: "revokeUser", user }, ...targets.map((s): Ev => ({ t: "end", s, inst, start, end, op: "revokeUser" })), ...(await checks)];
    },
  };
}

/** express-session's req.session.regenerate on the request of `slot`: ends the old session, then saves a new one. */
function regenerateStep(slot: number): Step {
  return {
    kind: "regenerate",
    label: `regenerate(slot${slot})`,
    check: (m) => m.slots[slot] !== undefined,
    exec: async (m, r) => {
      const { s, obj, inst } = m.slots[slot]!;
      const store = r[inst].store;
      const start = real();
      await new Promise<void>((resolve, reject) => store.regenerate({ sessionID: s.sid, session: obj }, (err?: unknown) => (err ? reject(err) : resolve())));
      const end = real();
      const checks = checkEnded(r, inst, [s]);
      trace(r, start, `regenerate(${inst}, slot${slot}) ${sname(s)} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [{ t: "end", s, inst, start, end, op: "regenerate" }, ...(await checks), { t: "slot", index: slot }];
      evs.push({ t: "create", c: await createOn(r, inst, obj.cookie.originalMaxAge, s.user, "  regenerated") });
      return evs;
    },
  };
}

const EXTEND = { soon: 700, later: LONG, past: -1_000 } as const;

function extendStep(inst: Inst, k: number, when: keyof typeof EXTEND): Step {
  return {
    kind: "extend",
    label: `extend(${inst}, ${ref(k)}, ${when})`,
    check: hasSession,
    exec: async (m, r) => {
      const s = pick(m, k)!;
      if (!s.handle) return [];
      const store = r[inst].store;
      const delta = EXTEND[when];
      const start = real();
      const ok = await store.extend(s.handle, new Date(store.clock() + delta), { anyOwner: true });
      const end = real();
      trace(r, start, `extend(${inst}, ${when}) ${sname(s)} → ${ok} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [];
      if (ok && s.ended) evs.push({ t: "fail", message: `invariant 2: extend(${inst}) revalidated ${sname(s)}, which had been ended` });
      evs.push({ t: "write", s, inst, op: "extend", start, end, life: delta, loadedLo: Infinity, result: ok, skew: store.skew });
      if (!ok) evs.push({ t: "miss", s, inst, start, end, op: "extend" });
      return evs;
    },
  };
}

function reapStep(inst: Inst): Step {
  return {
    kind: "reap",
    label: `reap(${inst})`,
    check: hasSession,
    exec: async (_m, r) => {
      const start = real();
      const result = await r[inst].store.reap();
      trace(r, start, `reap(${inst}) → deleted ${result.deleted}${result.skipped ? " (skipped)" : ""} [${Math.round(real() - start)} ms]`);
      return [];
    },
  };
}

function waitStep(wait: number): Step {
  return {
    kind: "wait",
    label: `wait(${wait})`,
    check: hasSession,
    exec: async (_m, r) => {
      trace(r, real(), `wait ${wait}`);
      await sleep(wait);
      return [];
    },
  };
}

function skewStep(inst: Inst, value: number): Step {
  return {
    kind: "skew",
    label: `skew(${inst}, ${value / 60_000} min)`,
    check: () => true,
    exec: async (_m, r) => {
      r[inst].store.skew = value;
      trace(r, real(), `skew ${inst} ${value / 60_000} min`);
      return [];
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Applying what was observed, and the invariants

function fail(list: string[], text: string) {
  list.push(text);
}

/**
 * Updates the model from what the steps of one command observed (several steps: they ran concurrently, in
 * an unknown order) and checks what the calls returned against it (invariants 1, 3, 4, 5 on reads).
 */
function apply(m: Model, r: Real, evs: Ev[]): string[] {
  const fails: string[] = [];
  const before = new Map<Sess, { win: Win; abs: Win; ended: boolean }>();
  for (const s of m.sessions) before.set(s, { win: { ...s.win }, abs: { ...s.abs }, ended: s.ended });
  const absolute = m.config.absolute;
  const revokedUsers = new Set(evs.flatMap((e) => (e.t === "revokeUser" ? [e.user] : [])));

  for (const e of evs) if (e.t === "fail") fail(fails, e.message);

  for (const e of evs) {
    if (e.t !== "create") continue;
    const c = e.c;
    const sess: Sess = {
      n: m.sessions.length,
      sid: c.sid,
      key: keyOf(c.sid),
      tag: keyOf(c.sid).slice(0, 12),
      user: c.user,
      handle: c.handle,
      handles: new Set(c.handle ? [c.handle] : []),
      created: c.end,
      win: { lo: c.start + c.life, hi: c.end + c.life },
      abs: absolute === undefined ? NEVER : { lo: c.start + absolute, hi: c.end + absolute },
      // A revokeUser of its owner ran beside its creation: it may or may not have ended it.
      uncertain: c.user !== null && revokedUsers.has(c.user),
      ended: false,
      endAt: Infinity,
      visible: { A: Infinity, B: Infinity },
    };
    m.sessions.push(sess);
  }

  for (const e of evs) {
    if (e.t !== "end") continue;
    const s = e.s;
    s.ended = true;
    s.endAt = Math.min(s.endAt, e.end);
    for (const i of INSTS) {
      // Another instance with a cache hears of it by NOTIFY: visible once the barrier after this command passed.
      if (i === e.inst || !r[i].cached) s.visible[i] = Math.min(s.visible[i], e.end);
    }
  }

  // Writes: the new expiry window. Calls racing on one session: the union of every outcome.
  const writes = new Map<Sess, Extract<Ev, { t: "write" }>[]>();
  for (const e of evs) if (e.t === "write") writes.set(e.s, [...(writes.get(e.s) ?? []), e]);
  for (const [s, ws] of writes) {
    const b = before.get(s)!;
    if (b.ended) continue;
    const cands: Array<{ c: Win; forced: boolean; w: (typeof ws)[number] }> = [];
    for (const w of ws) {
      if (w.op === "extend") {
        if (!w.result) continue;
        const c = { lo: w.start + w.life, hi: w.end + w.life };
        // `until` comes from the instance's clock: with a skew it is ambiguous whether the store reads it
        // as an instant or relative to its own clock; allow both.
        cands.push({ w, forced: true, c: w.skew === 0 ? c : { lo: Math.min(c.lo, c.lo + w.skew), hi: Math.max(c.hi, c.hi + w.skew) } });
        continue;
      }
      const c = { lo: w.start + w.life, hi: w.end + w.life };
      const shorten = w.op === "shorten" || w.op === "touch-shorten";
      // A write whose expiry is definitely earlier than the one stored and loaded must be written (never
      // skipped as "fresh"); one that moves it later may be skipped (touchAfter), so either holds then.
      const earlier = shorten && c.hi + 20 < Math.min(w.loadedLo, b.win.lo, b.abs.lo);
      cands.push({ w, c, forced: earlier || w.op === "change" });
    }
    const edge = Math.min(b.win.lo, b.abs.lo, ...cands.map((x) => x.c.lo));
    let uncertain = false;
    let forced = cands.length === 1 && ws.length === 1 && cands[0]!.forced;
    for (const { w } of cands) {
      if (w.op === "extend" || w.end + LATE_MARGIN <= edge) continue;
      // It may have reached the row after it expired: a save may revive or recreate it, a touch may do nothing.
      if (w.op === "touch" || w.op === "touch-shorten") forced = false;
      else uncertain = true;
    }
    if (uncertain || s.uncertain) {
      s.uncertain = true;
      s.win = UNKNOWN;
      s.abs = absolute === undefined ? NEVER : { lo: s.abs.lo, hi: Infinity };
    } else if (forced) {
      s.win = cands[0]!.c;
    } else if (cands.length > 0) {
      s.win = union(b.win, ...cands.map((x) => x.c));
    }
  }

  const endedBefore = (s: Sess, at: number) => evs.some((x) => x.t === "end" && x.s === s && x.start <= at);

  // A revoke or extend that found no live session, though the model says it was certainly live.
  for (const e of evs) {
    if (e.t !== "miss") continue;
    const s = e.s;
    const b = before.get(s)!;
    if (b.ended || s.uncertain || endedBefore(s, e.end)) continue;
    const lo = Math.min(b.win.lo, s.win.lo, b.abs.lo, s.abs.lo);
    if (e.start >= s.created && e.end + LOST_MARGIN <= lo) checked(r, 3);
    if (e.start >= s.created && e.end + LOST_MARGIN <= lo) {
      fail(fails, `invariant 3 (live session lost): ${e.op}(${e.inst}) of ${sname(s)} found no live session ${Math.round(e.end - r.t0)} ms into the run, ${Math.round(lo - e.end)} ms before its earliest expiry`);
    }
  }

  for (const g of evs) {
    if (g.t !== "get") continue;
    const s = g.s;
    const b = before.get(s) ?? s;
    const W = union(b.win, s.win);
    const A = union(b.abs, s.abs);
    if (g.wrong) fail(fails, `get(${g.inst}) of ${sname(s)} returned another session's data`);
    if (g.slot !== undefined) m.slots[g.slot] = g.found ? { s, obj: g.obj, inst: g.inst, loadedLo: Math.min(W.lo, A.lo) } : undefined;
    if (b.ended || endedBefore(s, g.end)) {
      if (s.ended && g.start >= s.visible[g.inst]) checked(r, 1);
      if (s.ended && g.start >= s.visible[g.inst] && g.found) {
        const since = evs.some((x) => x.t === "end" && x.s === s && x.inst === g.inst) ? "the end call on this instance resolved" : r[g.inst].cached ? "every instance heard of the end" : "the end call resolved";
        fail(fails, `invariant 1 (ended session returned): get(${g.inst}) of ${sname(s)} started ${Math.round(g.start - s.visible[g.inst])} ms after ${since}, and returned the session`);
      }
      continue;
    }
    if (s.uncertain) continue;
    if (g.start >= s.created && g.end + LOST_MARGIN <= Math.min(W.lo, A.lo)) checked(r, 3);
    if (g.start > A.hi + LATE_MARGIN) checked(r, 4);
    else if (g.start > W.hi + LATE_MARGIN) checked(r, 5);
    if (!g.found && g.start >= s.created && g.end + LOST_MARGIN <= Math.min(W.lo, A.lo)) {
      fail(fails, `invariant 3 (live session lost): get(${g.inst}) of ${sname(s)} returned null ${Math.round(Math.min(W.lo, A.lo) - g.end)} ms before its earliest expiry`);
    }
    if (g.found && g.start > A.hi + LATE_MARGIN) {
      fail(fails, `invariant 4 (absolute expiry exceeded): get(${g.inst}) of ${sname(s)} returned it ${Math.round(g.start - A.hi)} ms after its absolute expiry`);
    } else if (g.found && g.start > W.hi + LATE_MARGIN) {
      fail(fails, `invariant 5 (expired session returned): get(${g.inst}) of ${sname(s)} returned it ${Math.round(g.start - W.hi)} ms after its latest possible expiry`);
    }
  }

  for (const e of evs) if (e.t === "slot") m.slots[e.index] = undefined;
  return fails;
}

/**
 * Waits until every instance with a cache has heard every NOTIFY sent so far: a marker sent now (after
 * the command's writes committed) is delivered after them, in commit order, so once an instance has
 * evicted the marker it has processed every earlier notification. Returns when that was.
 */
async function barrier(r: Real): Promise<number> {
  const cached = [r.A, r.B].filter((i) => i.cached);
  if (cached.length === 0) return real();
  const marker = keyOf(`barrier ${randomBytes(8).toString("hex")}`);
  await r.t.raw(`select pg_notify('${r.channel}', '${marker}')`);
  const deadline = Date.now() + NOTIFY_WAIT;
  while (!cached.every((i) => i.store.evicted.has(marker))) {
    if (Date.now() > deadline) {
      throw new Error(`NOTIFY barrier: ${cached.filter((i) => !i.store.evicted.has(marker)).map((i) => i.name).join(", ")} never heard a NOTIFY within ${NOTIFY_WAIT} ms`);
    }
    await sleep(2);
  }
  for (const i of cached) i.store.evicted.delete(marker);
  return real();
}

/** Invariants 2-5 on the table itself. */
async function checkTable(m: Model, r: Real): Promise<string[]> {
  const fails: string[] = [];
  const t0 = real();
  const rows = await r.t.raw<{ key: string; handle: string; expires: number }>(
    `select key, handle, round(date_part('epoch', expires_at) * 1000)::float8 as expires from $table where ended_at is null and expires_at > statement_timestamp()`,
  );
  const t1 = real();
  const byKey = new Map(m.sessions.map((s) => [s.key, s]));
  const live = new Map<Sess, { handle: string; expires: number }>();
  for (const row of rows) {
    const s = byKey.get(row.key);
    if (s) live.set(s, row);
    else fail(fails, `invariant 2: a live row for a key the model never created (${row.key.slice(0, 6)})`);
  }
  for (const s of m.sessions) {
    const row = live.get(s);
    const expires = row ? `expires ${Math.round(Number(row.expires) - t0)} ms from now` : "";
    if (s.ended) {
      checked(r, 2);
      if (!row) continue;
      const how = s.handles.has(row.handle) ? "its ended row is live again" : `resurrected as a new row (handle ${row.handle.slice(0, 6)}, was ${s.handle?.slice(0, 6)})`;
      fail(fails, `invariant 2 (ended session live again): ${sname(s)}, ended ${Math.round(t0 - s.endAt)} ms ago, ${how}, ${expires}`);
      continue;
    }
    if (row && !s.handles.has(row.handle)) {
      if (!s.uncertain) fail(fails, `invariant 2 (resurrection): ${sname(s)}'s key has a live row with a new handle ${row.handle.slice(0, 6)}`);
      s.handles.add(row.handle);
      s.handle = row.handle;
    }
    if (s.uncertain) continue;
    if (t0 > s.abs.hi + LATE_MARGIN) {
      checked(r, 4);
      if (row) fail(fails, `invariant 4 (absolute expiry exceeded): ${sname(s)}'s row is live ${Math.round(t0 - s.abs.hi)} ms after its absolute expiry (${expires})`);
    } else if (t0 > s.win.hi + LATE_MARGIN) {
      checked(r, 5);
      if (row) fail(fails, `invariant 5 (expired session live): ${sname(s)}'s row is live ${Math.round(t0 - s.win.hi)} ms after its latest possible expiry (${expires})`);
    }
    const lo = Math.min(s.win.lo, s.abs.lo);
    if (s.created > t0 || t1 + LOST_MARGIN > lo) continue;
    checked(r, 3);
    if (row) continue;
    const [now] = await r.t.raw<{ expires: number; ended: boolean }>(
      `select round(date_part('epoch', expires_at) * 1000)::float8 as expires, ended_at is not null as ended from $table where key = '${s.key}'`,
    );
    const state = now ? `its row ${now.ended ? "is ended" : `expires ${Math.round(Number(now.expires) - t1)} ms from now`}` : "its row is gone";
    fail(fails, `invariant 3 (live session lost): ${sname(s)} should be live for at least ${Math.round(lo - t1)} ms more, but ${state}`);
  }
  const absolute = m.config.absolute;
  if (absolute !== undefined) {
    checked(r, 4);
    const over = await r.t.raw<{ key: string; span: number }>(
      `select key, round(date_part('epoch', expires_at - created_at) * 1000)::float8 as span from $table where expires_at > created_at + interval '${absolute + 5} milliseconds'`,
    );
    for (const row of over) fail(fails, `invariant 4: row ${byKey.get(row.key) ? sname(byKey.get(row.key)!) : row.key.slice(0, 6)} expires ${row.span} ms after its creation (absoluteTimeout ${absolute})`);
  }
  return fails;
}

/** Runs the steps of one command (several: started together, each after its offset), then applies and checks. */
async function runCommand(m: Model, r: Real, steps: ReadonlyArray<{ step: Step; offset: number }>): Promise<void> {
  for (const { step } of steps) r.stats.set(step.kind, (r.stats.get(step.kind) ?? 0) + 1);
  if (steps.length > 1) {
    r.stats.set("concurrent", (r.stats.get("concurrent") ?? 0) + 1);
    trace(r, real(), `concurrent: ${steps.map(({ step, offset }) => `+${offset} ${step.label}`).join(" | ")}`);
  }
  const settled = await Promise.allSettled(
    steps.map(async ({ step, offset }) => {
      if (offset > 0) await sleep(offset);
      return step.exec(m, r);
    }),
  );
  const failed = settled.find((x): x is PromiseRejectedResult => x.status === "rejected");
  if (failed) throw failed.reason;
  const evs = settled.flatMap((x) => (x.status === "fulfilled" ? x.value : []));
  const fails = apply(m, r, evs);
  const heard = await barrier(r);
  for (const s of m.sessions) {
    if (!s.ended) continue;
    for (const i of INSTS) if (r[i].cached) s.visible[i] = Math.min(s.visible[i], heard);
  }
  // Invariant 1 on every instance: a read of each session this command ended, now that all have heard.
  const ended = [...new Set(evs.flatMap((e) => (e.t === "end" ? [e.s] : [])))];
  const reads = await Promise.all(ended.flatMap((s) => INSTS.map((i) => timedGet(r, i, s, "  after-end get"))));
  for (const g of reads) {
    if (g.t === "get" && g.start >= g.s.visible[g.inst]) checked(r, 1);
    if (g.t === "get" && g.found && g.start >= g.s.visible[g.inst]) {
      fail(fails, `invariant 1 (ended session returned): get(${g.inst}) of ${sname(g.s)}, after it was ended${r[g.inst].cached ? " and every instance heard the NOTIFY" : ""}, returned the session`);
    }
  }
  fails.push(...(await checkTable(m, r)));
  if (fails.length > 0) {
    const error = new Error(
      `${r.config.name}:\n${[...new Set(fails)].map((f) => `  - ${f}`).join("\n")}\n  trace (ms since the run started):\n${r.trace.slice(-40).map((l) => `    ${l}`).join("\n")}` +
        (r.errors.length ? `\n  store errors: ${r.errors.slice(-5).join("; ")}` : ""),
    );
    error.stack = error.message;
    throw error;
  }
}

class Single implements fc.AsyncCommand<Model, Real> {
  constructor(readonly step: Step) {}
  check(m: Readonly<Model>) {
    return this.step.check(m);
  }
  run(m: Model, r: Real) {
    return runCommand(m, r, [{ step: this.step, offset: 0 }]);
  }
  toString() {
    return this.step.label;
  }
}

class Concurrent implements fc.AsyncCommand<Model, Real> {
  constructor(readonly steps: ReadonlyArray<{ step: Step; offset: number }>) {}
  check(m: Readonly<Model>) {
    return this.steps.every(({ step }) => step.check(m));
  }
  run(m: Model, r: Real) {
    return runCommand(m, r, this.steps);
  }
  toString() {
    return `concurrent[${this.steps.map(({ step, offset }) => `+${offset}ms ${step.label}`).join(" | ")}]`;
  }
}

// ---------------------------------------------------------------------------------------------------
// Generation

export const KINDS = ["create", "get", "load", "save", "touch", "destroy", "revoke", "revokeUser", "regenerate", "extend", "reap", "wait", "skew", "concurrent"] as const;

/** The command sequences; `without` drops kinds (to look for one bug while another is unfixed). */
export function lifecycleCommands(options: { maxCommands: number; without?: ReadonlySet<string> }) {
  const without = options.without ?? new Set<string>();
  const I = fc.constantFrom<Inst>("A", "B");
  const K = fc.nat({ max: 2 });
  const S = fc.nat({ max: SLOTS - 1 });
  const life = fc.oneof(fc.integer({ min: 400, max: 900 }), fc.constant(LONG));
  const user = fc.constantFrom<User>("ann", "bob", null);
  // "shorten" in `without` drops the shortening variants of save and touch.
  const shorten = !without.has("shorten");
  const saves = shorten ? (["change", "roll", "shorten"] as const) : (["change", "roll"] as const);
  const touches = shorten ? (["touch", "touch-shorten"] as const) : (["touch"] as const);
  const steps: Array<[string, number, fc.Arbitrary<Step>]> = [
    ["create", 3, fc.tuple(I, life, user).map(([i, l, u]) => createStep(i, l, u))],
    ["get", 3, fc.tuple(I, K).map(([i, k]) => getStep(i, k))],
    ["load", 4, fc.tuple(I, K, S).map(([i, k, s]) => loadStep(i, k, s))],
    ["save", 4, fc.tuple(S, fc.constantFrom(...saves)).map(([s, op]) => writeStep(s, op))],
    ["touch", 2, fc.tuple(S, fc.constantFrom(...touches)).map(([s, op]) => writeStep(s, op))],
    ["destroy", 3, fc.tuple(I, K).map(([i, k]) => destroyStep(i, k))],
    ["revoke", 2, fc.tuple(I, K, fc.constantFrom("any", "owner", "other") as fc.Arbitrary<"any" | "owner" | "other">).map(([i, k, as]) => revokeStep(i, k, as))],
    ["revokeUser", 1, fc.tuple(I, fc.constantFrom("ann", "bob") as fc.Arbitrary<"ann" | "bob">, fc.option(K)).map(([i, u, e]) => revokeUserStep(i, u, e))],
    ["regenerate", 1, S.map((s) => regenerateStep(s))],
    ["extend", 2, fc.tuple(I, K, fc.constantFrom("soon", "later", "past") as fc.Arbitrary<keyof typeof EXTEND>).map(([i, k, w]) => extendStep(i, k, w))],
    ["reap", 3, I.map((i) => reapStep(i))],
  ];
  const solo: Array<[string, number, fc.Arbitrary<Step>]> = [
    ["wait", 10, fc.constantFrom(0, 50, 200, 600).map((w) => waitStep(w))],
    ["skew", 1, fc.tuple(I, fc.constantFrom(-SKEW, 0, SKEW)).map(([i, v]) => skewStep(i, v))],
  ];
  const weighted = (list: Array<[string, number, fc.Arbitrary<Step>]>) =>
    fc.oneof(...list.filter(([kind]) => !without.has(kind)).map(([, weight, arbitrary]) => ({ arbitrary, weight })));
  const single = weighted([...steps, ...solo]).map((step): fc.AsyncCommand<Model, Real> => new Single(step));
  // "concurrent-get" in `without`: no reads among the steps started together.
  const grouped = without.has("concurrent-get") ? steps.filter(([kind]) => kind !== "get" && kind !== "load") : steps;
  const concurrent = fc
    .array(fc.record({ step: weighted(grouped), offset: fc.constantFrom(0, 1, 3, 10) }), { minLength: 2, maxLength: 4 })
    .map((list): fc.AsyncCommand<Model, Real> => new Concurrent(list));
  const command = without.has("concurrent") ? single : fc.oneof({ arbitrary: single, weight: 5 }, { arbitrary: concurrent, weight: 1 });
  return fc.commands([command], { maxCommands: options.maxCommands, size: "max" });
}

// ---------------------------------------------------------------------------------------------------
// Runs

async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** Two fresh instances on an emptied table. */
async function openReal(config: Config, t: TestDb): Promise<Real> {
  await t.raw(`delete from $table`);
  const errors: string[] = [];
  const open = async (name: Inst): Promise<Instance> => {
    const conn = await connect(t);
    const options: SessionStoreOptions = { db: conn.db, table: t.table, reaper: false };
    if (config.absolute !== undefined) options.absoluteTimeout = config.absolute;
    if (config.history) options.retainEnded = HISTORY;
    if (config.encrypt) options.encrypt = { secrets: ENCRYPTION_SECRET };
    if (config.cache) Object.assign(options, { cache: { ...CACHE }, notify: true });
    let store: TestStore;
    try {
      store = new TestStore(options);
    } catch (error) {
      await conn.end();
      throw error;
    }
    // express-session assigns generate() when its middleware is created; here regenerate only ends the old session.
    (store as unknown as { generate(req: unknown): void }).generate = () => {};
    store.on("error", (error: Error) => void errors.push(`${name}: ${error.message}`));
    return { name, store, cached: config.cache, end: async () => void (await Promise.allSettled([store.close()]), await conn.end()) };
  };
  const A = await open("A");
  const B = await open("B").catch(async (error) => {
    await A.end();
    throw error;
  });
  const r: Real = {
    config,
    t,
    // The store's own channel name (cut to 63 bytes as Postgres requires), so the barrier's marker reaches its LISTEN.
    channel: (A.store as unknown as { sql: { channel: string } }).sql.channel,
    A,
    B,
    t0: real(),
    trace: [],
    stats: new Map(),
    checks: new Map(),
    errors,
  };
  if (config.cache) {
    try {
      const live = (i: Instance) => (i.store as unknown as { cache?: { live: boolean } }).cache?.live !== false;
      await until(() => live(A) && live(B), NOTIFY_WAIT, "both caches to go live");
      await barrier(r);
    } catch (error) {
      await closeReal(r);
      throw error;
    }
  }
  r.t0 = real();
  return r;
}

async function closeReal(r: Real): Promise<void> {
  await Promise.allSettled([r.A.end(), r.B.end()]);
}

export interface LifecycleOptions {
  seed: number;
  path?: string;
  numRuns: number;
  maxCommands: number;
  /** No run starts after this long (fast-check is interrupted: the runs so far decide). */
  budgetMs: number;
  /** Shrinking stops this long after the first failure. */
  shrinkMs: number;
  without?: ReadonlySet<string>;
  log?: (line: string) => void;
}

/**
 * Runs the property for one configuration: fc.assert over the command sequences, each run on fresh
 * stores. Prints one summary line (runs, commands by kind, seed) and rethrows fast-check's report.
 */
export async function runLifecycle(config: Config, t: TestDb, options: LifecycleOptions): Promise<void> {
  const totals = new Map<string, number>();
  const checks = new Map<string, number>();
  let runs = 0;
  const deadline = Date.now() + options.budgetMs;
  let shrinkDeadline = Infinity;
  let failures = 0;
  const started = Date.now();
  const property = fc.asyncProperty(lifecycleCommands({ maxCommands: options.maxCommands, without: options.without }), async (cmds) => {
    // Out of time: interrupt fast-check (it then reports what it has: the runs so far passed, or the
    // smallest failing sequence found so far), instead of letting it generate the remaining runs.
    if (Date.now() > (failures > 0 ? shrinkDeadline : deadline)) throw new fc.PreconditionFailure(true);
    runs++;
    const real = await openReal(config, t);
    try {
      await fc.asyncModelRun(() => ({ model: { config, sessions: [], slots: [] }, real }), cmds);
    } catch (error) {
      if (failures++ === 0) shrinkDeadline = Date.now() + options.shrinkMs;
      throw error;
    } finally {
      if (process.env.LIFECYCLE_TRACE) console.log(`--- run ${runs}\n${real.trace.join("\n")}`);
      for (const [kind, n] of real.stats) totals.set(kind, (totals.get(kind) ?? 0) + n);
      for (const [invariant, n] of real.checks) checks.set(invariant, (checks.get(invariant) ?? 0) + n);
      await closeReal(real);
    }
  });
  try {
    await fc.assert(property, { seed: options.seed, path: options.path, numRuns: options.numRuns, verbose: 1 });
  } finally {
    const commands = [...totals.values()].reduce((a, b) => a + b, 0) - (totals.get("concurrent") ?? 0);
    const kinds = KINDS.filter((k) => totals.has(k)).map((k) => `${k} ${totals.get(k)}`).join(", ");
    const applied = ["1", "2", "3", "4", "5"].map((i) => `${i}: ${checks.get(i) ?? 0}`).join(", ");
    (options.log ?? console.log)(
      `[lifecycle] ${config.name}: ${runs} runs${failures ? ` (${failures} failing, shrinking included)` : ""}, ${commands} commands (${kinds}), invariants checked (${applied}), seed ${options.seed}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  }
}

/**
 * Environment knobs shared by both test files: LIFECYCLE_SEED (the seed of every configuration),
 * LIFECYCLE_PATH (fast-check's path, to replay a shrunk case with its seed), LIFECYCLE_ONLY (configurations
 * whose name contains it), LIFECYCLE_RUNS, LIFECYCLE_BUDGET_MS, LIFECYCLE_SHRINK_MS, LIFECYCLE_WITHOUT
 * (comma-separated command kinds to leave out, plus `shorten` and `concurrent-get`: to look for one bug
 * while another is unfixed), LIFECYCLE_TRACE=1 (print every run's trace).
 */
export function fromEnv(): { seed?: number; path?: string; only?: string; runs?: number; budgetMs?: number; shrinkMs?: number; without: Set<string> } {
  const seed = process.env.LIFECYCLE_SEED;
  const number = (name: string) => (process.env[name] ? Number(process.env[name]) : undefined);
  return {
    budgetMs: number("LIFECYCLE_BUDGET_MS"),
    shrinkMs: number("LIFECYCLE_SHRINK_MS"),
    runs: number("LIFECYCLE_RUNS"),
    seed: seed === undefined || seed === "" ? undefined : Number(seed),
    path: process.env.LIFECYCLE_PATH || undefined,
    only: process.env.LIFECYCLE_ONLY || undefined,
    without: new Set((process.env.LIFECYCLE_WITHOUT ?? "").split(",").map((s) => s.trim()).filter(Boolean)),
  };
}

/** A fixed seed per configuration name. */
export const seedOf = (name: string) => createHash("sha256").update(`lifecycle ${name}`).digest().readInt32BE(0);

/**
 * Declares one test per configuration (inside the caller's describe): each on a database of its own,
 * closed afterwards, run with `runLifecycle` and the given defaults (the LIFECYCLE_* variables override
 * them). `seed` gives a configuration's seed when LIFECYCLE_SEED is not set.
 */
export function lifecycleTests(drivers: readonly DriverName[], defaults: { seed(config: Config): number; runs: number; maxCommands: number; budgetMs: number; shrinkMs: number }): void {
  const env = fromEnv();
  const open = new Set<TestDb>();
  afterAll(async () => {
    await Promise.allSettled([...open].map((t) => t.close()));
    await closeSharedDbs();
  });
  const budgetMs = env.budgetMs ?? defaults.budgetMs;
  const shrinkMs = env.shrinkMs ?? defaults.shrinkMs;
  for (const config of configurations(drivers).filter((c) => !env.only || c.name.includes(env.only))) {
    it(config.name, async () => {
      const t = await openConfigDb(config.driver);
      open.add(t);
      try {
        await runLifecycle(config, t, {
          seed: env.seed ?? defaults.seed(config),
          path: env.path,
          numRuns: env.runs ?? defaults.runs,
          maxCommands: defaults.maxCommands,
          budgetMs,
          shrinkMs,
          without: env.without,
        });
      } finally {
        open.delete(t);
        await t.close();
      }
    }, budgetMs + shrinkMs + 30_000);
  }
}
