/**
 * A model-based concurrency test of the session lifecycle: random sequences of store calls on two
 * instances (A and B, each on its own pool; on PGlite both on the one database), some started together,
 * against a model that knows, for every session, when it was created, the window its expiry can lie in,
 * its absolute deadline, whether (and when) it was ended, and what its data, owner and authentication
 * time may be. Configurations with secret rotation add an instance C whose `encrypt` secrets have the new
 * one first (A and B have it second, as the rotation steps go), and with the plaintext changeover an
 * instance P without `encrypt` that creates sessions (rows from before the changeover). After every
 * command the invariants are checked against what the calls returned and against the table itself:
 *
 *  1. An ended session is never returned: a get that started after the end call resolved returns null
 *     (on the ending instance at once; on another instance with a cache once it has heard the NOTIFY).
 *  2. No ended session becomes live again: the live rows of the table are sessions the model holds as
 *     possibly live, with the handle it knows (a new handle for a known key is a resurrection).
 *  3. A live session nobody ended is never lost: a get that finished well before the expiry returns it.
 *  4. The absolute expiry is never exceeded (reads, and `expires_at <= created_at + absoluteTimeout`).
 *  5. A get that started after the expiry returns null.
 *  6. The owner column names the owner in the data: for every live row, when its data (opened through a
 *     store: a reader instance with every secret) names a user, `user_id` is that user; when it names
 *     none, `user_id` is null or a user the session had (a sign-out by deletion keeps the owner).
 *  7. A key a request removed stays removed unless a later request sets it: per session and tracked key
 *     (`passport`, `cart`, `theme`) the model holds every value the last write may have left (racing
 *     writes: each of them); the table and every get after the writes settled show one of them. The
 *     check is the wider one (no acknowledged change lost either), reported as invariant 7.
 *  8. `authenticated_at` moves only on proof: a login write (a new session with a user, a session whose
 *     request changed its user) or markAuthenticated sets it to that call's window; a rotation that keeps
 *     the user (regenerate, then the data copied into the new id) keeps the old time; nothing else moves
 *     it. Checked in the table and through `store.authenticatedAt` of what gets returned.
 *  9. With `maxSessionsPerUser`, no user has more live rows than the cap, whatever the path. With
 *     `whenFull: "refuse"` nothing is evicted, and a sign-in (a new session with a user, a session that
 *     gains one, a rotation, a mint, extend of an expired session) fails with SESSION_LIMIT exactly when
 *     its user is at the cap: always when the user certainly had the cap's number of other live sessions
 *     (and no end raced it), never when the user could not have had them (and no other sign-in raced
 *     it); and a refused sign-in changes nothing: no row for its new id, the session it would have signed
 *     in as the model held it (the table's checks compare).
 * 10. A user's sessions, paged through `list` (`after` each page's last cursor), are each on one page: no
 *     ended session and no session whose owner column cannot name the user is listed, and every session
 *     certainly the user's and certainly live is.
 * 11. Rotation keeps one session: an id a session was rotated away from (rotateSession, markAuthenticated
 *     of a request, renewAfter) opens it within its grace window (invariant 3 applies to it) and never
 *     after it, when its use ends the session as `reused`, never before; two rotations of one session
 *     never both succeed; the table never holds two live rows of one session (a row under an old id is
 *     one). Data and owner carry over (invariants 6 and 7 follow the session to
 *     its new id, and a save of a request that read it under its old id lands in it).
 * 12. (`binding` configuration) A signed-in session read from another browser family and OS ends (reason
 *     `binding`, after which 1 and 2 hold of it); an anonymous one does not.
 *
 * Time is real time (the test's clock; the database runs on this host, on the same clock), never an
 * instance's skewed app clock. Every bound has a margin (150 ms before an expiry, 50 ms after one) taken
 * from the times the calls were observed to start and finish, so a slow machine only makes more checks
 * inapplicable, never wrong; when a window is uncertain (calls racing on one session) the check is skipped
 * or widened to every outcome.
 */
import { createHash, createHmac, randomBytes } from "node:crypto";
import fc from "fast-check";
import { afterAll, beforeAll, it } from "vitest";
import { rotateSession, SessionStore, type AnyPgDatabase, type RevokeOptions, type SessionStoreOptions } from "../../src/index.js";
import { withReplicas } from "drizzle-orm/pg-core";
import { openDb, openOn, openPeer, openSchema, sleep, type DriverName, type TestDb } from "./db.js";
import { internals } from "./internals.js";

// ---------------------------------------------------------------------------------------------------
// Parameters

/** A, B: the two instances; C: the one a secret rotation moved ahead (configurations with `rotation`); P: plaintext, before `encrypt`. */
export type Inst = "A" | "B" | "C" | "P";
const ALL_INSTS: readonly Inst[] = ["A", "B", "C", "P"];
type User = "ann" | "bob" | null;
/** The keys of the data the model tracks. */
const DKEYS = ["passport", "cart", "theme"] as const;
type DKey = (typeof DKEYS)[number];
/** A tracked key's value as JSON text, or this when the key is absent. */
const ABSENT = "(absent)";
type Vals = Record<DKey, string>;
type ValSets = Record<DKey, Set<string>>;

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
/** `maxSessionsPerUser` of the configurations with a cap. */
const CAP = 2;
/**
 * How much earlier than the proof an authentication time may read: `store.authenticatedAt` converts it to
 * the app's clock with the offset seen by the statement that read it, erring early by that statement's
 * round trip (a cached one: the round trip of the read or write that filled the cache); a rotation may
 * carry it that way too. Only the late side tells of a time that moved, so the early side is generous.
 */
const AUTH_EARLY = 2_000;
/** How much later than the window an authentication time may read (rounding; the database's now is inside the call). */
const AUTH_LATE = 25;
/**
 * With `merge: false`, whether a save of a request that changed nothing may write its whole (stale) view
 * back. false: the model holds that it never does (docs/guarantees.md: "a request that did not change the session
 * never writes it back"); a save that changed something writes its whole view (documented).
 */
const WHOLE_SAVE_OF_UNCHANGED = false;

/** A get must find a live session when it finished at least this long before the earliest expiry. */
const LOST_MARGIN = 150;
/** A get that started this long after the latest expiry must not find the session. */
const LATE_MARGIN = 50;
/** Longest wait for a NOTIFY to reach another instance. */
const NOTIFY_WAIT = 5_000;
/** `rotationGrace`: how long an id a session was rotated away from still opens it (short, so that runs pass it). */
const GRACE = 400;
/** `renewAfter`, in the configurations with `renewal`. */
const RENEW = 700;

// ---------------------------------------------------------------------------------------------------
// The store under test

/** The store with a skewable app clock and a record of evictions. */
export class TestStore extends SessionStore {
  /** How far this instance's app clock is off, in ms. */
  skew = 0;
  /** Every skew it had: a time the read cache converted before a step of the clock keeps that conversion. */
  readonly skews = new Set([0]);
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
/** The secret a rotation brings in: C seals with it, A and B open it (listed second). */
const NEW_SECRET = "lifecycle model encryption secret, rotated in";

/**
 * The store's `secrets` in every configuration (as the same on every instance): the row keys are
 * HMAC-SHA-256 of the ids, and `broadcast` seals its events under keys derived from them.
 */
const ID_SECRET = "lifecycle model id secret, 32+ characters, test only";

export const keyOf = (sid: string) => createHmac("sha256", ID_SECRET).update(sid, "utf8").digest("base64url");

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
  /** `merge` (the default true): a save writes the keys its request changed; false: the whole session. */
  merge: boolean;
  /** `maxSessionsPerUser`. */
  cap: number | undefined;
  /** With `cap`: `whenFull: "refuse"`, a sign-in past the cap fails with SESSION_LIMIT (instead of evicting). */
  refuse: boolean;
  /** With `encrypt`: A and B on [old, new], C on [new, old] (the rotation's second step, half deployed). */
  rotation: boolean;
  /** With `encrypt`: P (no `encrypt`) creates plaintext rows, every other instance has `acceptPlaintext`. */
  plaintext: boolean;
  broadcast: boolean;
  /** Every instance coalesces any concurrent gets and ends into shared statements (src/coalesce.ts, forced with a limit of 1). */
  coalesce: boolean;
  /** `renewAfter`: the rotation hook (run by the `renew` command) gives a session older than RENEW a new id. */
  renewal: boolean;
  /**
   * `onBindingChange: "end"`: sessions are created from a Firefox on Linux request, and the `otherDevice`
   * command reads one from Chrome on Windows: a signed-in one ends (reason `binding`), an anonymous one not.
   */
  binding: boolean;
  /**
   * Lookups from a replica: every instance's `db` is withReplicas(its pool, [a pool on `url`]) with
   * `replicaReads: { window }`; an end is visible to the other instances `window` ms after it resolved.
   */
  replica?: { url: string; window: number };
  name: string;
}

/**
 * The configurations: per driver, the plain store, encryption with the absolute timeout and history, the
 * cache with history and with encryption (where the driver has a cache), and the feature combinations:
 * "combined" (encrypt, secret rotation, cache, cap, history, broadcast), "changeover" (encrypt, rotation,
 * plaintext rows, cap, absolute timeout, cache), "whole" (merge: false, cap, history, cache) and
 * "refusing" (the cap with `whenFull: "refuse"`, history, cache, coalesce). The cache
 * with history, "combined" and "changeover" also coalesce any concurrent gets (`coalesce`), so that the
 * invariants hold of lookups that share a statement too.
 */
export function configurations(drivers: readonly DriverName[], replica?: Config["replica"]): Config[] {
  const lists: Config[][] = [];
  const base = {
    cache: false,
    absolute: undefined,
    history: false,
    encrypt: false,
    merge: true,
    cap: undefined,
    refuse: false,
    rotation: false,
    plaintext: false,
    broadcast: false,
    coalesce: false,
    renewal: false,
    binding: false,
  };
  for (const driver of drivers) {
    const list: Config[] = [];
    lists.push(list);
    // The read cache needs LISTEN, which the store has on node-postgres and PGlite only (it refuses a cache elsewhere).
    const cache = driver !== "postgres.js";
    const add = (label: string, c: Partial<Omit<Config, "driver" | "name">>) => {
      const config = { ...base, ...c, driver, ...(replica ? { replica } : {}) };
      const features = [
        `cache=${config.cache ? "both" : "none"}`,
        `absolute=${config.absolute ?? "none"}`,
        config.history && "history",
        config.encrypt && "encrypted",
        config.rotation && "rotation",
        config.plaintext && "plaintext",
        config.cap !== undefined && `cap=${config.cap}${config.refuse ? " refuse" : ""}`,
        config.broadcast && "broadcast",
        config.coalesce && "coalesce",
        config.renewal && "renewal",
        config.binding && "binding=end",
        !config.merge && "merge=false",
        config.replica && `replica window=${config.replica.window}`,
      ].filter(Boolean);
      list.push({ ...config, name: `${driver}${label ? ` ${label}` : ""} ${features.join(" ")}` });
    };
    add("", {});
    add("", { absolute: ABSOLUTE, history: true, encrypt: true, renewal: true });
    if (cache) add("", { cache, history: true, coalesce: true });
    if (cache) add("", { cache, absolute: ABSOLUTE, encrypt: true });
    add("combined", { cache, history: true, encrypt: true, rotation: true, cap: CAP, broadcast: true, coalesce: true, renewal: true });
    add("changeover", { cache, absolute: ABSOLUTE, encrypt: true, rotation: true, plaintext: true, cap: CAP, coalesce: true });
    add("whole", { cache, history: true, cap: CAP, merge: false });
    add("binding", { cache, history: true, binding: true, coalesce: true });
    add("refusing", { cache, history: true, cap: CAP, refuse: true, coalesce: true });
  }
  // Interleaved by driver: the tests run a few at a time in this order, and PGlite's are all on one thread.
  const all: Config[] = [];
  for (let i = 0; i < Math.max(...lists.map((l) => l.length)); i++) for (const list of lists) if (list[i]) all.push(list[i]!);
  return all;
}

let sharedPglite: Promise<TestDb> | undefined;

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

/** A connection pool of its own for one instance (PGlite: the one database), with its replica's. */
async function connect(t: TestDb, config: Config): Promise<{ db: AnyPgDatabase; end(): Promise<void> }> {
  const peer = await openPeer(t);
  if (!config.replica) return { db: peer.db, end: peer.close };
  const replica = openOn(t.driver, config.replica.url);
  return {
    db: withReplicas(peer.db as any, [replica.db as any]) as unknown as AnyPgDatabase,
    end: async () => void (await Promise.allSettled([peer.close(), replica.close()])),
  };
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
  C?: Instance;
  P?: Instance;
  /** The instances that read (A, B and C): the after-end reads go to each. */
  readers: Inst[];
  /** A store on the configuration's own connection with every secret and no cache: opens rows for invariants 6-8. */
  reader: TestStore;
  t0: number;
  trace: string[];
  stats: Map<string, number>;
  /** How many times each invariant was checked (applied, not skipped as uncertain). */
  checks: Map<string, number>;
  errors: string[];
  /** Sessions the cap ended (`ended` events of reason `evicted`, on the instance whose login did it), not yet applied. */
  evictions: Array<{ handle: string; inst: Inst; at: number }>;
  /** A counter for the values the data steps set (each value is new). */
  seq: number;
  /** How many of `errors` were looked at already. */
  reported: number;
}

const on = (r: Real, inst: Inst): Instance => {
  const i = r[inst];
  if (!i) throw new Error(`the model used instance ${inst}, which this configuration does not have`);
  return i;
};

type Invariant = 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10 | 11 | 12;
const checked = (r: Real, invariant: Invariant) => void r.checks.set(`${invariant}`, (r.checks.get(`${invariant}`) ?? 0) + 1);

/** Bounds of a time (epoch ms): the expiry lies in [lo, hi]. ±Infinity: unknown. */
interface Win {
  lo: number;
  hi: number;
}
const UNKNOWN: Win = { lo: -Infinity, hi: Infinity };
const NEVER: Win = { lo: Infinity, hi: Infinity };
const union = (...wins: Win[]): Win => ({ lo: Math.min(...wins.map((w) => w.lo)), hi: Math.max(...wins.map((w) => w.hi)) });

/** What `authenticated_at` may be: null (when `nul`), or a time in `win`. */
interface Auth {
  nul: boolean;
  win: Win | null;
}
const NO_AUTH: Auth = { nul: true, win: null };
const authUnion = (...as: Auth[]): Auth => {
  const wins = as.flatMap((a) => (a.win ? [a.win] : []));
  return { nul: as.some((a) => a.nul), win: wins.length ? union(...wins) : null };
};
const authText = (r: Real, a: Auth) =>
  [a.nul && "null", a.win && `[${Math.round(a.win.lo - r.t0)}, ${Math.round(a.win.hi - r.t0)}] ms`].filter(Boolean).join(" or ") || "nothing";

interface Sess {
  n: number;
  /** Its id now (rotations give it new ones), and its row key. */
  sid: string;
  key: string;
  /** Every key it had: a live row under any of them is this session's (two are a fork). */
  keys: Set<string>;
  /** Every id it was rotated away from, and when each stops opening it. */
  olds: Array<{ sid: string; grace: Win }>;
  tag: string;
  /** The user it was created with. */
  user: User;
  /** What `user_id` may hold (the data's user; a sign-out by deletion keeps the former one). */
  col: Set<string | null>;
  /** Every user its data may have named: former owners. */
  owners: Set<string>;
  /** Per tracked key, every value (JSON text, or ABSENT) the last write may have left. */
  vals: ValSets;
  auth: Auth;
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
   * reap) inserted a new one, with a new handle and absolute deadline; or an end raced a change of its
   * owner and may or may not have ended it. Only the ended rules apply to it.
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
  /** The id the request holds (its req.sessionID): the session's, or one it was rotated away from since. */
  sid: string;
  /** The very object get returned (it carries the store's hidden "loaded" state). */
  obj: any;
  inst: Inst;
  /** The earliest the expiry the request loaded can be. */
  loadedLo: number;
  /** The tracked keys as the store's loaded state holds them (what the request read, or last saved). */
  view: Vals;
  /** What the model held as the session's authentication time when the request loaded it. */
  authSeen: Auth;
}

export interface Model {
  config: Config;
  sessions: Sess[];
  slots: Array<Slot | undefined>;
}

type WriteOp = "change" | "roll" | "shorten" | "touch" | "touch-shorten" | "extend" | "signin" | "signout" | "data";

interface NewSession {
  sid: string;
  user: User;
  life: number;
  handle: string | null;
  start: number;
  end: number;
  vals: Vals;
  auth: Auth;
  /** A rotation keeping the user: the old session (its authentication events racing this one widen `auth`). */
  from?: Sess;
  /** The request keeps the new session: it goes into this slot. */
  slot?: { index: number; obj: any; inst: Inst };
}

/** What a step observed; the model is updated from these only after every step of a command is done. */
type Ev =
  | { t: "create"; c: NewSession }
  | {
      t: "get";
      s: Sess;
      /** The id it read under. */
      sid: string;
      inst: Inst;
      start: number;
      end: number;
      found: boolean;
      wrong: boolean;
      obj: any;
      slot?: number;
      authAt: number | null;
      skews: number[];
    }
  | {
      t: "write";
      s: Sess;
      inst: Inst;
      op: WriteOp;
      start: number;
      end: number;
      life: number;
      loadedLo: number;
      result: boolean;
      skew: number;
      /** The tracked keys this write sets (their new values); only those. */
      sets?: Partial<Vals>;
      /** The save changed the data (so it is never skipped while the session is live). */
      dataChanged?: boolean;
      /** A login write: the request changed the session's user to this one. */
      login?: string;
    }
  | { t: "end"; s: Sess; inst: Inst; start: number; end: number; op: string }
  | { t: "miss"; s: Sess; inst: Inst; start: number; end: number; op: string }
  /** `life`: a re-authentication of a request with a new id: the idle lifetime it restarted with lies in it. */
  | { t: "auth"; s: Sess; inst: Inst; start: number; end: number; life?: Win }
  /** A request's session got new ids (`ids`, in order: a renewal, then a rotation) from the id it held (`from`). */
  | { t: "rotated"; s: Sess; inst: Inst; start: number; end: number; from: string; ids: string[]; slot: number; obj: any }
  | { t: "old"; s: Sess; inst: Inst; start: number; end: number; found: boolean; reused: boolean; wrong: boolean; grace: Win }
  | { t: "revokeUser"; user: User }
  | { t: "evicted"; handle: string; inst: Inst; start: number; end: number }
  | Capped
  | { t: "slot"; index: number }
  | { t: "fail"; message: string };

interface Step {
  kind: string;
  label: string;
  /** The slot whose request it acts for, if any. */
  slot?: number;
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

/** The tracked keys of a session object, as the model holds them. */
function valsOf(obj: any): Vals {
  const vals = {} as Vals;
  for (const key of DKEYS) vals[key] = obj?.[key] === undefined ? ABSENT : JSON.stringify(obj[key]);
  return vals;
}
const userOfVal = (v: string | undefined): string | null => (v === undefined || v === ABSENT ? null : ((JSON.parse(v) as { user?: string }).user ?? null));
const single = <T>(set: Set<T>): T | undefined => (set.size === 1 ? [...set][0] : undefined);
const authNow = (start: number, end: number): Auth => ({ nul: false, win: { lo: start, hi: end } });

/** Creates a session through `store` (set with fresh data), then reads its handle from the table. */
async function createOn(r: Real, inst: Inst, life: number, user: User, what: string, sid = newSid()): Promise<NewSession> {
  const store = on(r, inst).store;
  const start = real();
  const data = sessionData(store.clock(), life, user, sid);
  // With `binding`, created from a request of a known device (express-session links its request).
  if (r.config.binding) Object.defineProperty(data, "req", { value: { headers: { "user-agent": FIREFOX }, ip: "203.0.113.7" } });
  await store.set(sid, data);
  const end = real();
  const handle = await handleOf(r, sid);
  trace(
    r,
    start,
    `${what}(${inst}) ${life} ms ${user ?? "anonymous"} → key ${keyOf(sid).slice(0, 6)} handle ${handle?.slice(0, 6)} [${Math.round(end - start)} ms]`,
  );
  return { sid, user, life, handle, start, end, vals: valsOf(data), auth: user ? authNow(start, end) : NO_AUTH };
}

/**
 * A sign-in under `whenFull: "refuse"` (invariant 9), as `signIn` observed it: refused (SESSION_LIMIT) or
 * not, and what the model held of its user's other sessions (all but `exclude`, the session it writes or
 * the one its rotation ended): how many were certainly live through it (`certain`), and how many may
 * have been (`possible`). `must`: a write that is sure to happen unless refused; `exempt`: it writes a
 * session that is certainly one of the user's live sessions already (it adds none); `stored`: a refused
 * sign-in of a new id left a row.
 */
interface Capped {
  t: "capped";
  user: string | undefined;
  inst: Inst;
  what: string;
  start: number;
  end: number;
  refused: boolean;
  certain: number;
  possible: number;
  must: boolean;
  exempt: boolean;
  exclude?: Sess;
  stored: boolean;
}

/**
 * Runs `call`, a write that may sign `who.user` in: with `whenFull: "refuse"` a SESSION_LIMIT it fails with
 * is its result (refused), and its Capped event is returned to check; otherwise (and for no user) it just
 * runs. `user` undefined: a user the model cannot name (an extend of a session of uncertain owner).
 */
async function signIn<T>(
  m: Readonly<Model>,
  r: Real,
  who: {
    user: string | null | undefined;
    inst: Inst;
    what: string;
    sid?: string;
    exclude?: Sess;
    must?: (end: number) => boolean;
    exempt?: (end: number) => boolean;
  },
  call: () => Promise<T>,
): Promise<{ value: T | undefined; refused: boolean; evs: Ev[] }> {
  if (!m.config.refuse || who.user === null) return { value: await call(), refused: false, evs: [] };
  const start = real();
  let value: T | undefined;
  let refused = false;
  try {
    value = await call();
  } catch (error: any) {
    if (error?.code !== "SESSION_LIMIT") throw error;
    refused = true;
  }
  const end = real();
  let certain = 0;
  let possible = 0;
  for (const s of m.sessions) {
    if (s === who.exclude || s.ended || who.user === undefined) continue;
    if (!s.uncertain && single(s.col) === who.user && end + LOST_MARGIN <= Math.min(s.win.lo, s.abs.lo)) certain++;
    const theirs = s.col.has(who.user) || (s.uncertain && s.owners.has(who.user));
    if (theirs && start <= Math.min(s.win.hi, s.abs.hi) + LATE_MARGIN) possible++;
  }
  const stored = refused && who.sid !== undefined && (await handleOf(r, who.sid)) !== null;
  trace(
    r,
    start,
    `  ${who.what} ${who.user ?? "(owner unknown)"}: ${refused ? "refused, SESSION_LIMIT" : "signed in"} (others live: ${certain} certain, ${possible} possible)`,
  );
  const capped: Capped = {
    t: "capped",
    user: who.user,
    inst: who.inst,
    what: who.what,
    start,
    end,
    refused,
    certain,
    possible,
    must: who.must?.(end) ?? true,
    exempt: who.exempt?.(end) ?? false,
    exclude: who.exclude,
    stored,
  };
  return { value, refused, evs: [capped] };
}

/** Whether the model holds `s` live through `at` for sure. */
const certainlyLive = (s: Sess, at: number) => !s.ended && !s.uncertain && at + LOST_MARGIN <= Math.min(s.win.lo, s.abs.lo);

async function handleOf(r: Real, sid: string): Promise<string | null> {
  const [row] = await r.t.raw<{ handle: string }>(`select handle from $table where key = '${keyOf(sid)}'`);
  return row?.handle ?? null;
}

/** A get, issued synchronously (so one started right after an await sees the store as it was then). */
async function timedGet(r: Real, inst: Inst, s: Sess, what: string, slot?: number): Promise<Ev> {
  const store = on(r, inst).store;
  const start = real();
  const got: any = await store.get(s.sid);
  const end = real();
  const authAt = got ? (store.authenticatedAt(got)?.getTime() ?? null) : null;
  trace(r, start, `${what}(${inst}) ${sname(s)} → ${got ? `session ${showData(got)}` : "null"} [${Math.round(end - start)} ms]`);
  const wrong = got != null && got.tag !== s.tag;
  return { t: "get", s, sid: s.sid, inst, start, end, found: got != null, wrong, obj: got, slot, authAt, skews: [...store.skews] };
}

const showData = (obj: any) =>
  DKEYS.filter((k) => obj?.[k] !== undefined)
    .map((k) => `${k}=${JSON.stringify(obj[k])}`)
    .join(" ");

/** A get right after an end call resolved, on the same instance: must be null at once. */
const checkEnded = (r: Real, inst: Inst, sessions: Sess[]) => Promise.all(sessions.map((s) => timedGet(r, inst, s, "  check-get")));

const hasSession = (m: Readonly<Model>) => m.sessions.length > 0;

function createStep(inst: Inst, life: number, user: User): Step {
  return {
    kind: "create",
    label: `create(${inst}, ${life === LONG ? "long" : `short ${life}`}, ${user ?? "anonymous"})`,
    check: () => true,
    exec: async (m, r) => {
      const sid = newSid();
      const { value: c, evs } = await signIn(m, r, { user, inst, what: "create", sid }, () => createOn(r, inst, life, user, "create", sid));
      return c ? [...evs, { t: "create", c }] : evs;
    },
  };
}

function getStep(inst: Inst, k: number): Step {
  return {
    kind: "get",
    label: `get(${inst}, ${ref(k)})`,
    check: hasSession,
    exec: async (m, r) => {
      const s = pick(m, k)!;
      // With `coalesce`, every other session is read beside it on the same instance: lookups that share
      // statements, each an observation the invariants check like any get.
      const read = r.config.coalesce ? [s, ...m.sessions.filter((other) => other !== s)] : [s];
      return Promise.all(read.map((each) => timedGet(r, inst, each, "get")));
    },
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

type SaveOp = "change" | "roll" | "shorten" | "touch" | "touch-shorten" | "signin" | "signout" | "data";

/**
 * A request holding a loaded session changes it (`mutate`) and saves it (`touch`: touches it), as
 * express-session does at the end of a request: the cookie rolled (expires = now + originalMaxAge, on this
 * server's clock). The write's effect on the tracked keys is what the request changed over what its store
 * read (`merge`), or its whole view (`merge: false`, when it changed anything).
 */
function slotWrite(kind: string, label: string, slot: number, op: SaveOp, mutate: (obj: any, r: Real) => void): Step {
  const touch = op === "touch" || op === "touch-shorten";
  return {
    kind,
    label,
    slot,
    check: (m) => m.slots[slot] !== undefined,
    exec: async (m, r) => {
      const held = m.slots[slot]!;
      const { s, obj, inst, loadedLo, view } = held;
      // The request saves under its own id, which may be one the session was rotated away from since.
      const sid = held.sid;
      const store = on(r, inst).store;
      const start = real();
      const clock = store.clock();
      const before = JSON.stringify({ ...obj, cookie: undefined });
      let life: number = obj.cookie.originalMaxAge;
      if (op === "shorten" || op === "touch-shorten") {
        life = shortened(life);
        obj.cookie.originalMaxAge = life;
      }
      // express-session's cookie.touch(): expires = now + originalMaxAge, on this server's clock. After a
      // rotation the cookie is express-session's Cookie, whose expires setter recomputes originalMaxAge from
      // the real clock (not this instance's skewed one): touch keeps it, so it is set back.
      obj.cookie.expires = new Date(clock + life);
      obj.cookie.originalMaxAge = life;
      mutate(obj, r);
      const after = valsOf(obj);
      const dataChanged = JSON.stringify({ ...obj, cookie: undefined }) !== before || DKEYS.some((k) => after[k] !== view[k]);
      const sets: Partial<Vals> = {};
      if (!touch) {
        if (!m.config.merge) {
          // A whole-session save writes every key as this request holds it, when it writes the data at all.
          if (dataChanged || WHOLE_SAVE_OF_UNCHANGED) Object.assign(sets, after);
        } else {
          for (const k of DKEYS) if (after[k] !== view[k]) sets[k] = after[k];
        }
      }
      const objUser = userOfVal(after.passport);
      const login = !touch && objUser !== null && objUser !== userOfVal(view.passport) ? objUser : undefined;
      const capped = await signIn(
        m,
        r,
        {
          user: login ?? null,
          inst,
          what: `signin(${inst}, slot${slot}) ${sname(s)}`,
          exclude: s,
          must: (at) => certainlyLive(s, at) && login !== undefined && !s.col.has(login),
          exempt: (at) => certainlyLive(s, at) && single(s.col) === login,
        },
        () => (touch ? store.touch(sid, obj) : store.set(sid, obj)),
      );
      // Refused: the request failed and wrote nothing; it holds its session no more.
      if (capped.refused) return [...capped.evs, { t: "slot", index: slot }];
      const end = real();
      if (!touch) held.view = after;
      const wrote = Object.entries(sets).map(([k, v]) => `${k}=${v}`);
      trace(
        r,
        start,
        `${touch ? "touch" : `save ${op}`}(${inst}, slot${slot}) ${sname(s)} maxAge ${life}${wrote.length ? ` sets ${wrote.join(" ")}` : ""}${login ? ` login ${login}` : ""} [${Math.round(end - start)} ms]`,
      );
      return [
        ...capped.evs,
        { t: "write", s, inst, op, start, end, life, loadedLo, result: true, skew: store.skew, sets, dataChanged: !touch && dataChanged, login },
      ];
    },
  };
}

/** A request holding a loaded session saves (change: data changed; roll: cookie rolled; shorten: smaller maxAge) or touches it. */
function writeStep(slot: number, op: "change" | "roll" | "shorten" | "touch" | "touch-shorten"): Step {
  const touch = op === "touch" || op === "touch-shorten";
  const label = touch ? `touch(slot${slot}${op === "touch-shorten" ? ", shorten" : ""})` : `save(slot${slot}, ${op})`;
  return slotWrite(touch ? "touch" : "save", label, slot, op, (obj) => {
    if (op === "change") obj.n = (obj.n ?? 0) + 1;
  });
}

/** Sign-in in place: the request sets `passport = { user }` (a user the session it read did not have) and saves. */
function signInStep(slot: number, user: "ann" | "bob"): Step {
  return slotWrite("signin", `signin(slot${slot}, ${user} or the other)`, slot, "signin", (obj) => {
    const had = obj.passport?.user;
    obj.passport = { user: had === user ? (user === "ann" ? "bob" : "ann") : user };
  });
}

/** Sign-out by deletion: the request deletes `passport` (the session goes on, anonymous) and saves. */
function signOutStep(slot: number): Step {
  return slotWrite("signout", `signout(slot${slot})`, slot, "signout", (obj) => void delete obj.passport);
}

/** Another key changed by the request: `cart` or `theme` set (to a new value) or deleted, and saved. */
function dataStep(slot: number, key: "cart" | "theme", action: "set" | "delete"): Step {
  return slotWrite("data", `data(slot${slot}, ${action} ${key})`, slot, "data", (obj, r) => {
    if (action === "set") obj[key] = `${key}-${++r.seq}`;
    else delete obj[key];
  });
}

function destroyStep(inst: Inst, k: number): Step {
  return {
    kind: "destroy",
    label: `destroy(${inst}, ${ref(k)})`,
    check: hasSession,
    exec: async (m, r) => {
      const s = pick(m, k)!;
      const start = real();
      await on(r, inst).store.destroy(s.sid);
      const end = real();
      const checks = checkEnded(r, inst, [s]);
      trace(r, start, `destroy(${inst}) ${sname(s)} [${Math.round(end - start)} ms]`);
      return [{ t: "end", s, inst, start, end, op: "destroy" }, ...(await checks)];
    },
  };
}

/** Revoke by handle: as any owner, as the owner ({ userId }), or as a user who never had it (must do nothing). */
function revokeStep(inst: Inst, k: number, as: "any" | "owner" | "other"): Step {
  return {
    kind: "revoke",
    label: `revoke(${inst}, ${ref(k)}, ${as})`,
    check: hasSession,
    exec: async (m, r) => {
      const s = pick(m, k)!;
      if (!s.handle) return [];
      const owner = single(s.col);
      const options: RevokeOptions = as === "other" ? { userId: "zed" } : as === "owner" && owner ? { userId: owner } : { anyOwner: true };
      const start = real();
      const ended = await on(r, inst).store.revoke(s.handle, options);
      const end = real();
      const checks = ended ? checkEnded(r, inst, [s]) : Promise.resolve([]);
      trace(r, start, `revoke(${inst}, ${as}) ${sname(s)} → ${ended} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [];
      if (ended && as === "other")
        evs.push({ t: "fail", message: `revoke of ${sname(s)} (${[...s.col].join("/")}) with { userId: "${options.userId}" } ended it` });
      if (ended && s.ended) evs.push({ t: "fail", message: `invariant 2: revoke(${inst}) found ${sname(s)} live to end, though it had been ended` });
      if (ended) evs.push({ t: "end", s, inst, start, end, op: "revoke" });
      else if (as !== "other") evs.push({ t: "miss", s, inst, start, end, op: "revoke" });
      return [...evs, ...(await checks)];
    },
  };
}

/**
 * Revokes a user's sessions: those whose owner column is certainly the user are ended (the model checks
 * them); those whose owner may be the user (racing sign-ins) may or may not be, and become uncertain.
 */
function revokeUserStep(inst: Inst, user: "ann" | "bob", except: number | null): Step {
  return {
    kind: "revokeUser",
    label: `revokeUser(${inst}, ${user}${except === null ? "" : `, except ${ref(except)} of ${user}`})`,
    check: hasSession,
    exec: async (m, r) => {
      // An uncertain session's owner is not tracked: it is no target (it stays uncertain, ended or not).
      const own = m.sessions.filter((s) => s.col.has(user) && s.col.size === 1 && !s.uncertain);
      const kept = except === null || own.length === 0 ? undefined : own[own.length - 1 - (except % own.length)];
      const start = real();
      const n = await on(r, inst).store.revokeUser(user, kept ? { except: kept.sid } : {});
      const end = real();
      const targets = own.filter((s) => s !== kept);
      const checks = checkEnded(r, inst, targets);
      trace(
        r,
        start,
        `revokeUser(${inst}, ${user}${kept ? ` except ${sname(kept)}` : ""}) → ${n}: ${targets.map(sname).join(" ")} [${Math.round(end - start)} ms]`,
      );
      return [{ t: "revokeUser", user }, ...targets.map((s): Ev => ({ t: "end", s, inst, start, end, op: "revokeUser" })), ...(await checks)];
    },
  };
}

/** express-session's req.session.regenerate on the request of `slot`: ends the old session, then saves a new one (a plain new object: a login). */
function regenerateStep(slot: number): Step {
  return {
    kind: "regenerate",
    label: `regenerate(slot${slot})`,
    slot,
    check: (m) => m.slots[slot] !== undefined,
    exec: async (m, r) => {
      const { s, obj, inst, sid } = m.slots[slot]!;
      const store = on(r, inst).store;
      const start = real();
      await new Promise<void>((resolve, reject) => store.regenerate({ sessionID: sid, session: obj }, (err?: unknown) => (err ? reject(err) : resolve())));
      const end = real();
      const checks = checkEnded(r, inst, [s]);
      trace(r, start, `regenerate(${inst}, slot${slot}) ${sname(s)} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [{ t: "end", s, inst, start, end, op: "regenerate" }, ...(await checks), { t: "slot", index: slot }];
      const user = (userOfVal(valsOf(obj).passport) as User) ?? null;
      const fresh = newSid();
      const created = await signIn(m, r, { user, inst, what: `regenerated(${inst})`, sid: fresh, exclude: s }, () =>
        createOn(r, inst, obj.cookie.originalMaxAge, user, "  regenerated", fresh),
      );
      evs.push(...created.evs);
      if (created.value) evs.push({ t: "create", c: created.value });
      return evs;
    },
  };
}

/** What express-session's generate() (assigned to the store by its middleware) does: a new id and an empty session linked to the request. */
function generate(req: any): void {
  req.sessionID = newSid();
  const session: any = {};
  Object.defineProperty(session, "req", { value: req, configurable: true });
  req.session = session;
}

/** Copies a request's session data (not its cookie) into `target`, the session of the new id `sid`, with a fresh cookie of the same life. */
function copyInto(target: any, obj: any, sid: string, store: { clock(): number }): any {
  for (const key of Object.keys(obj)) if (key !== "cookie") target[key] = structuredClone(obj[key]);
  const life: number = obj.cookie.originalMaxAge;
  target.cookie = { originalMaxAge: life, expires: new Date(store.clock() + life), httpOnly: true, path: "/" };
  target.tag = keyOf(sid).slice(0, 12);
  return target;
}

/**
 * A rotation keeping the user, as express-session and passport (keepSessionInfo) do it: the request's
 * req.session.regenerate ends the old session and links a new one to the request; the old data (the
 * user included) is copied into it and saved under the new id. The request goes on with the new session
 * (it stays in the slot). The new session's authentication time is the old one's: no one proved anything.
 */
function rotateStep(slot: number): Step {
  return {
    kind: "rotate",
    label: `rotate(slot${slot})`,
    slot,
    check: (m) => m.slots[slot] !== undefined,
    exec: async (m, r) => {
      const held = m.slots[slot]!;
      const { s, obj, inst } = held;
      const store = on(r, inst).store;
      const req = requestFor(obj, held.sid, store);
      const start = real();
      await new Promise<void>((resolve, reject) => store.regenerate(req, (err?: unknown) => (err ? reject(err) : resolve())));
      const ended = real();
      const checks = checkEnded(r, inst, [s]);
      const sid: string = req.sessionID;
      const next = copyInto(req.session, obj, sid, store);
      const life: number = obj.cookie.originalMaxAge;
      const vals = valsOf(next);
      const user = userOfVal(vals.passport) as User;
      const setStart = real();
      // The old session ended first: it is none of the user's others, and never counts against the cap.
      const capped = await signIn(m, r, { user, inst, what: `rotate(${inst}, slot${slot}) ${sname(s)}`, sid, exclude: s }, () => store.set(sid, next));
      if (capped.refused) return [{ t: "end", s, inst, start, end: ended, op: "rotate" }, ...(await checks), ...capped.evs, { t: "slot", index: slot }];
      const end = real();
      const handle = await handleOf(r, sid);
      // The time the request read, or the row's own when the rotation ran (a markAuthenticated between them).
      const kept = user !== null && user === userOfVal(held.view.passport) && !s.ended && !s.uncertain;
      let auth: Auth = user === null ? NO_AUTH : kept ? authUnion(held.authSeen, s.auth) : authUnion(held.authSeen, s.auth, authNow(setStart, end));
      if (auth.win) auth = { ...auth, win: { lo: auth.win.lo - AUTH_EARLY, hi: auth.win.hi } };
      trace(
        r,
        start,
        `rotate(${inst}, slot${slot}) ${sname(s)} ended [${Math.round(ended - start)} ms] → new key ${keyOf(sid).slice(0, 6)} handle ${handle?.slice(0, 6)} ${showData(next)} [${Math.round(end - setStart)} ms]`,
      );
      const c: NewSession = { sid, user, life, handle, start: setStart, end, vals, auth, from: s, slot: { index: slot, obj: next, inst } };
      return [{ t: "end", s, inst, start, end: ended, op: "rotate" }, ...(await checks), ...capped.evs, { t: "create", c }];
    },
  };
}

/**
 * The express-session request a slot's session belongs to (`req.session`, `req.sessionID`,
 * `req.sessionStore`), linked from the session as express-session links it (not enumerable). A session a
 * rotation made is express-session's own Session, whose link cannot be redefined: its request is reused.
 */
function requestFor(obj: any, sid: string, store: TestStore): any {
  const linked = Object.getOwnPropertyDescriptor(obj, "req");
  const req = linked && !linked.configurable ? linked.value : {};
  Object.assign(req, { sessionID: sid, session: obj, sessionStore: store });
  if (!linked || linked.configurable) Object.defineProperty(obj, "req", { value: req, configurable: true });
  return req;
}

/**
 * A new id within the request of `slot`, as an app does it: the store's rotation hook runs first (as
 * sessionMiddleware runs it; with `renewal` it renews a session older than RENEW), then `rotateId`
 * (rotateSession) or `reauth` (markAuthenticated of the request: a rotation that also proves the user and
 * restarts the clocks), or nothing more (`renew`). The request goes on with what it then holds.
 */
function requestRotationStep(slot: number, how: "rotateId" | "reauth" | "renew"): Step {
  return {
    kind: how,
    label: `${how}(slot${slot})`,
    slot,
    check: (m) => m.slots[slot] !== undefined,
    exec: async (m, r) => {
      const held = m.slots[slot]!;
      const { s, obj, inst } = held;
      const store = on(r, inst).store;
      const req = requestFor(obj, held.sid, store);
      // A re-authentication restarts the idle clock with the request's cookie's whole maxAge.
      const life = { lo: obj.cookie.originalMaxAge, hi: obj.cookie.originalMaxAge };
      const start = real();
      await new Promise<void>((resolve, reject) => store.rotation()(req, { setHeader() {} }, (err?: unknown) => (err ? reject(err) : resolve())));
      const renewed: string = req.sessionID;
      const result = how === "rotateId" ? await rotateSession(req) : how === "reauth" ? await store.markAuthenticated(req) : renewed !== held.sid;
      const end = real();
      const ids = [renewed, req.sessionID as string].filter((id, i, all) => id !== held.sid && all.indexOf(id) === i);
      trace(
        r,
        start,
        `${how}(${inst}, slot${slot}) ${sname(s)} → ${result}${ids.map((id) => ` new key ${keyOf(id).slice(0, 6)}${id === renewed ? " (renewed)" : ""}`).join("")} [${Math.round(end - start)} ms]`,
      );
      const evs: Ev[] = [];
      if (ids.length > 0) evs.push({ t: "rotated", s, inst, start, end, from: held.sid, ids, slot, obj: req.session });
      // Through an id rotated away from (no new id), it restarts with the span the row had, as markAuthenticated(id).
      if (how === "reauth" && result) evs.push({ t: "auth", s, inst, start, end, life: ids.length > 0 ? life : undefined });
      // A request holding the session's id now (not one rotated away from) rotates or re-authenticates it while it is live.
      else if (how !== "renew" && !result && held.sid === s.sid) evs.push({ t: "miss", s, inst, start, end, op: how });
      return evs;
    },
  };
}

const FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0";
const CHROME = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";

/**
 * A request from another browser family and OS (Chrome on Windows) reads a session created on Firefox on
 * Linux, and the store checks its binding (`checkBinding`, what express-session's createSession does): a
 * session whose data, as read, has a user ends (reason `binding`, then invariants 1 and 2 hold of it); an
 * anonymous one goes on. Only in the `binding` configuration.
 */
function otherDeviceStep(inst: Inst, k: number): Step {
  return {
    kind: "otherDevice",
    label: `otherDevice(${inst}, ${ref(k)})`,
    check: (m) => m.config.binding && hasSession(m),
    exec: async (m, r) => {
      const s = pick(m, k)!;
      const store = on(r, inst).store;
      // Sessions made by a rotation, a regenerate or a mint without a request record no device: no binding.
      const [row] = await r.t.raw<{ ua: string | null }>(`select user_agent as ua from $table where key = '${keyOf(s.sid)}'`);
      const start = real();
      const got: any = await store.get(s.sid);
      if (!got) return [];
      Object.defineProperty(got, "id", { value: s.sid });
      Object.defineProperty(got, "req", { value: { headers: { "user-agent": CHROME }, ip: "198.51.100.4" } });
      const ended = await store.checkBinding(got);
      const end = real();
      const user = userOfVal(valsOf(got).passport);
      trace(r, start, `otherDevice(${inst}) ${sname(s)} ${user ?? "anonymous"} → ${ended ? "ended (binding)" : "kept"} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [];
      checked(r, 12);
      if (ended ? user === null : user !== null && row?.ua === FIREFOX) {
        evs.push({
          t: "fail",
          message: `invariant 12 (binding): otherDevice(${inst}) of ${sname(s)} (${user ?? "anonymous"} as read) ${ended ? "ended it" : "kept it"}`,
        });
      }
      if (ended) evs.push({ t: "end", s, inst, start, end, op: "binding" }, ...(await checkEnded(r, inst, [s])));
      return evs;
    },
  };
}

/**
 * A get under an id a session was rotated away from (a request still in flight, or a copied cookie):
 * within its grace window it opens the session; after it, it never does, and ends the session
 * (`SESSION_REUSED`, invariant 11).
 */
function getOldStep(inst: Inst, k: number): Step {
  return {
    kind: "getOld",
    label: `getOld(${inst}, ${ref(k)})`,
    check: (m) => m.sessions.some((s) => s.olds.length > 0),
    exec: async (m, r) => {
      const rotated = m.sessions.filter((s) => s.olds.length > 0);
      const s = rotated[rotated.length - 1 - (k % rotated.length)]!;
      const { sid, grace } = s.olds[s.olds.length - 1 - (k % s.olds.length)]!;
      const store = on(r, inst).store;
      const start = real();
      let got: any = null;
      let reused = false;
      try {
        got = await store.get(sid);
      } catch (error: any) {
        if (error?.code !== "SESSION_REUSED") throw error;
        reused = true;
      }
      const end = real();
      trace(r, start, `getOld(${inst}) ${sname(s)} → ${reused ? "SESSION_REUSED" : got ? `session ${showData(got)}` : "null"} [${Math.round(end - start)} ms]`);
      return [{ t: "old", s, inst, start, end, found: got != null, reused, wrong: got != null && got.tag !== s.tag, grace }];
    },
  };
}

/**
 * issueToken from the request of `slot` (sessionMiddleware's, with `from: req.session`): a new session with
 * a copy of the request's data under a new id, the request's session left as it is. Its authentication
 * time is the one the request read, when the user is the one it read; none otherwise. Never now: a
 * session made from another is no proof of identity (invariant 8). A session that had ended mints none
 * (invariant 1), and one certainly live is never refused (invariant 3).
 */
function mintStep(slot: number): Step {
  return {
    kind: "mint",
    label: `mint(slot${slot})`,
    slot,
    check: (m) => m.slots[slot] !== undefined,
    exec: async (m, r) => {
      const held = m.slots[slot]!;
      const { s, obj, inst } = held;
      const store = on(r, inst).store;
      const sid = newSid();
      const data = copyInto({}, obj, sid, store);
      const life: number = obj.cookie.originalMaxAge;
      const vals = valsOf(data);
      const user = userOfVal(vals.passport) as User;
      const start = real();
      let refused = false;
      // A minted session is a new session of its user: under whenFull "refuse", refused at the cap (`from` counts).
      let capped: Awaited<ReturnType<typeof signIn>> | undefined;
      try {
        capped = await signIn(m, r, { user, inst, what: `mint(${inst}, slot${slot}) from ${sname(s)}`, sid }, () => store.mint(sid, data, obj));
      } catch (error: any) {
        if (error?.code !== "REAUTHENTICATION_REQUIRED") throw error;
        refused = true;
      }
      if (capped?.refused) return capped.evs;
      const end = real();
      const handle = await handleOf(r, sid);
      if (refused) {
        trace(r, start, `mint(${inst}, slot${slot}) from ${sname(s)} → refused, the session had ended [${Math.round(end - start)} ms]`);
        const evs: Ev[] = [{ t: "miss", s, inst, start, end, op: "mint" }];
        if ((await store.handleOf(sid)) !== null)
          evs.push({ t: "fail", message: `invariant 2: mint(${inst}) from ${sname(s)} was refused, yet its new session ${keyOf(sid).slice(0, 6)} is live` });
        return evs;
      }
      // Minted: the session it came from was live after the new one was stored, so no end resolved before it started.
      if (s.ended && !s.uncertain) {
        return [
          {
            t: "fail",
            message: `invariant 1 (an ended session minted a new one): mint(${inst}) from ${sname(s)}, ended ${Math.round(start - s.endAt)} ms before`,
          },
        ];
      }
      const carried = user !== null && user === userOfVal(held.view.passport);
      // An uncertain session (a save that may have revived it, or an end racing its owner's change) may have
      // had a sign-in the model did not follow: the token carries some time before the mint, or none; never the mint's own.
      let auth: Auth = s.uncertain ? { nul: true, win: { lo: -Infinity, hi: start } } : carried ? authUnion(held.authSeen, s.auth) : NO_AUTH;
      if (auth.win) auth = { ...auth, win: { lo: auth.win.lo - AUTH_EARLY, hi: auth.win.hi } };
      trace(
        r,
        start,
        `mint(${inst}, slot${slot}) from ${sname(s)} → new key ${keyOf(sid).slice(0, 6)} handle ${handle?.slice(0, 6)} ${showData(data)} [${Math.round(end - start)} ms]`,
      );
      const c: NewSession = { sid, user, life, handle, start, end, vals, auth, from: carried ? s : undefined };
      return [...(capped?.evs ?? []), { t: "create", c }];
    },
  };
}

/**
 * A "your devices" page of `user` paged two records at a time through `list`, following each page's
 * cursor (invariant 10). Run alone (no step beside it), so the model's state is the table's.
 */
function listStep(inst: Inst, user: "ann" | "bob"): Step {
  return {
    kind: "list",
    label: `list(${inst}, ${user})`,
    check: () => true,
    exec: async (m, r) => {
      const store = on(r, inst).store;
      const start = real();
      const listed: string[] = [];
      let after: string | undefined;
      for (let pages = 0; pages < 100; pages++) {
        const page = await store.list({ userId: user, limit: 2, after });
        if (page.length === 0) break;
        listed.push(...page.map((record) => record.handle));
        after = page.at(-1)!.cursor;
      }
      const end = real();
      trace(r, start, `list(${inst}, ${user}) → ${listed.length} records [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [];
      const failed = (message: string) => evs.push({ t: "fail", message: `invariant 10 (list): list(${inst}, ${user}) ${message}` });
      checked(r, 10);
      if (new Set(listed).size !== listed.length) failed(`put a record on two pages (${listed.map((h) => h.slice(0, 6)).join(" ")})`);
      for (const s of m.sessions) {
        const shown = [...s.handles].some((h) => listed.includes(h));
        if (s.ended && shown) failed(`listed ${sname(s)}, ended ${Math.round(start - s.endAt)} ms before`);
        if (s.ended || s.uncertain) continue;
        if (shown && !s.col.has(user)) failed(`listed ${sname(s)}, whose owner column can only name ${[...s.col].join(" or ")}`);
        const certain = s.col.size === 1 && s.col.has(user);
        if (certain && !shown && start >= s.created && end + LOST_MARGIN <= Math.min(s.win.lo, s.abs.lo)) {
          failed(`left out ${sname(s)}, certainly ${user}'s and live for ${Math.round(Math.min(s.win.lo, s.abs.lo) - end)} ms more`);
        }
      }
      return evs;
    },
  };
}

/** markAuthenticated(sid): the user proved who they are again; its authentication time becomes now. */
function markAuthStep(inst: Inst, k: number): Step {
  return {
    kind: "markAuth",
    label: `markAuthenticated(${inst}, ${ref(k)})`,
    check: hasSession,
    exec: async (m, r) => {
      const s = pick(m, k)!;
      const start = real();
      const ok = await on(r, inst).store.markAuthenticated(s.sid);
      const end = real();
      trace(r, start, `markAuthenticated(${inst}) ${sname(s)} → ${ok} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [];
      if (ok && s.ended) evs.push({ t: "fail", message: `invariant 2: markAuthenticated(${inst}) found ${sname(s)} live, though it had been ended` });
      evs.push(ok ? { t: "auth", s, inst, start, end } : { t: "miss", s, inst, start, end, op: "markAuthenticated" });
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
      const store = on(r, inst).store;
      const delta = EXTEND[when];
      const start = real();
      // Revalidating an expired session signs its owner in again: never one certainly live (it adds none).
      const capped = await signIn(
        m,
        r,
        // An owner the model cannot name (an uncertain session, racing sign-ins) is undefined: no refusal of it is checked.
        {
          user: s.uncertain ? undefined : single(s.col),
          inst,
          what: `extend(${inst}) ${sname(s)}`,
          exclude: s,
          must: () => false,
          exempt: (at) => certainlyLive(s, at),
        },
        () => store.extend(s.handle!, new Date(store.clock() + delta), { anyOwner: true }),
      );
      if (capped.refused) return capped.evs;
      const ok = capped.value!;
      const end = real();
      trace(r, start, `extend(${inst}, ${when}) ${sname(s)} → ${ok} [${Math.round(end - start)} ms]`);
      const evs: Ev[] = [];
      evs.push(...capped.evs);
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
      const result = await on(r, inst).store.reap();
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
      on(r, inst).store.skew = value;
      on(r, inst).store.skews.add(value);
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

const valSets = (vals: Vals): ValSets => Object.fromEntries(DKEYS.map((k) => [k, new Set([vals[k]])])) as ValSets;
const within = (at: number, w: Win, early: number, late: number) => at >= w.lo - early && at <= w.hi + late;
/** Whether `at` (epoch ms, or null) is an authentication time `a` allows. */
const authAllows = (a: Auth, at: number | null, early = 0) => (at === null ? a.nul : a.win !== null && within(at, a.win, early, AUTH_LATE));

/**
 * Updates the model from what the steps of one command observed (several steps: they ran concurrently, in
 * an unknown order) and checks what the calls returned against it (invariants 1, 3, 4, 5, 7, 8 on reads).
 * Returns the failures and the sessions this command ended.
 */
function apply(m: Model, r: Real, observed: Ev[]): { fails: string[]; ended: Sess[] } {
  const fails: string[] = [];
  const before = new Map<Sess, { win: Win; abs: Win; ended: boolean; auth: Auth; vals: ValSets }>();
  for (const s of m.sessions) {
    const vals = Object.fromEntries(DKEYS.map((k) => [k, new Set(s.vals[k])])) as ValSets;
    before.set(s, { win: { ...s.win }, abs: { ...s.abs }, ended: s.ended, auth: s.auth, vals });
  }
  const absolute = m.config.absolute;
  const revokedUsers = new Set(observed.flatMap((e) => (e.t === "revokeUser" ? [e.user] : [])));
  // A session whose owner column may name a revoked user or another (racing sign-ins) was no target of the
  // revokeUser: ended or not, either is right, so it becomes uncertain. One certainly the user's was a target or kept.
  for (const s of m.sessions) if (s.col.size > 1 && [...s.col].some((u) => u !== null && revokedUsers.has(u as User))) s.uncertain = true;
  // Sessions whose owner a login write of this command may have changed: a scoped end racing it may or may not have found them.
  const logins = new Map<Sess, Set<string>>();
  for (const e of observed) if (e.t === "write" && e.login) logins.set(e.s, new Set([...(logins.get(e.s) ?? []), e.login]));

  for (const e of observed) if (e.t === "fail") fail(fails, e.message);
  if (m.config.refuse) fails.push(...refusals(m, r, observed));

  for (const e of observed) {
    if (e.t !== "create") continue;
    const c = e.c;
    let auth = c.auth;
    // A rotation racing a new authentication of the old session may carry either time.
    if (c.from) {
      for (const x of observed) {
        if ((x.t === "auth" && x.s === c.from) || (x.t === "write" && x.s === c.from && x.login)) auth = authUnion(auth, authNow(x.start - AUTH_EARLY, x.end));
      }
    }
    const sess: Sess = {
      n: m.sessions.length,
      sid: c.sid,
      key: keyOf(c.sid),
      keys: new Set([keyOf(c.sid)]),
      olds: [],
      tag: keyOf(c.sid).slice(0, 12),
      user: c.user,
      col: new Set([c.user]),
      owners: new Set(c.user ? [c.user] : []),
      vals: valSets(c.vals),
      auth,
      handle: c.handle,
      handles: new Set(c.handle ? [c.handle] : []),
      created: c.end,
      win: { lo: c.start + c.life, hi: c.end + c.life },
      abs: absolute === undefined ? NEVER : { lo: c.start + absolute, hi: c.end + absolute },
      // A revokeUser of its owner ran beside its creation: it may or may not have ended it.
      uncertain: c.user !== null && revokedUsers.has(c.user),
      ended: false,
      endAt: Infinity,
      visible: { A: Infinity, B: Infinity, C: Infinity, P: Infinity },
    };
    m.sessions.push(sess);
    if (c.slot) m.slots[c.slot.index] = { s: sess, sid: c.sid, obj: c.slot.obj, inst: c.slot.inst, loadedLo: sess.win.lo, view: c.vals, authSeen: sess.auth };
  }

  const evs: Ev[] = [];
  for (const e of observed) {
    // A use of an old id after its grace window ended the session (reason `reused`).
    if (e.t === "old" && e.reused) evs.push({ t: "end", s: e.s, inst: e.inst, start: e.start, end: e.end, op: "reused" });
    if (e.t === "evicted") {
      // The cap ended it: within the login's statement, some time after this command started.
      const s = m.sessions.find((x) => x.handles.has(e.handle));
      if (s) evs.push({ t: "end", s, inst: e.inst, start: e.start, end: e.end, op: "evicted" });
      else fail(fails, `the cap evicted a session the model never created (handle ${e.handle.slice(0, 6)})`);
      continue;
    }
    // A revokeUser racing a login write of its target: that write may have given it another owner first.
    if (e.t === "end" && e.op === "revokeUser" && logins.has(e.s)) {
      e.s.uncertain = true;
      continue;
    }
    evs.push(e);
  }
  for (const [s, users] of logins) if ([...users].some((u) => revokedUsers.has(u as User))) s.uncertain = true;

  // New ids: the session goes on under the last; the one before it opens it for GRACE more (invariant 11).
  const rotated = new Set<Sess>();
  for (const e of evs) {
    if (e.t !== "rotated") continue;
    const s = e.s;
    if (rotated.has(s)) fail(fails, `invariant 11 (forked): two requests of one command both gave ${sname(s)} a new id`);
    if (e.from !== s.sid) fail(fails, `invariant 11 (forked): a request holding an id ${sname(s)} was rotated away from gave it a new one`);
    rotated.add(s);
    for (const id of [e.from, ...e.ids.slice(0, -1)]) s.olds.push({ sid: id, grace: { lo: e.start + GRACE, hi: e.end + GRACE } });
    s.sid = e.ids.at(-1)!;
    s.key = keyOf(s.sid);
    for (const id of e.ids) s.keys.add(keyOf(id));
    const held = m.slots[e.slot];
    if (held) m.slots[e.slot] = { ...held, sid: s.sid, obj: e.obj };
  }

  for (const e of evs) {
    if (e.t !== "end") continue;
    const s = e.s;
    s.ended = true;
    s.endAt = Math.min(s.endAt, e.end);
    for (const i of ALL_INSTS) {
      // Another instance with a cache hears of it by NOTIFY: visible once the barrier after this command passed.
      // One reading a replica with a window: once the window passed.
      const window = i === e.inst ? 0 : (r.config.replica?.window ?? 0);
      if (i === e.inst || !r[i]?.cached) s.visible[i] = Math.min(s.visible[i], e.end + window);
    }
  }

  // Writes: the new expiry window, the tracked keys, the owner and the authentication time. Calls racing
  // on one session: the union of every outcome.
  const writes = new Map<Sess, Extract<Ev, { t: "write" }>[]>();
  const auths = new Map<Sess, Extract<Ev, { t: "auth" }>[]>();
  for (const e of evs) if (e.t === "write") writes.set(e.s, [...(writes.get(e.s) ?? []), e]);
  for (const e of evs) if (e.t === "auth") auths.set(e.s, [...(auths.get(e.s) ?? []), e]);
  for (const s of new Set([...writes.keys(), ...auths.keys()])) {
    const ws = writes.get(s) ?? [];
    const b = before.get(s)!;
    // Former owners, uncertain sessions included: every user a write of this command may have put in its data.
    for (const w of ws) if (w.sets?.passport !== undefined && userOfVal(w.sets.passport) !== null) s.owners.add(userOfVal(w.sets.passport)!);
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
      cands.push({ w, c, forced: earlier || w.dataChanged === true });
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
      continue;
    } else if (forced) {
      s.win = cands[0]!.c;
    } else if (cands.length > 0) {
      s.win = union(b.win, ...cands.map((x) => x.c));
    }
    // A re-authentication restarts the clocks (restartOnReauthentication): the idle expiry from then (a
    // request's: its cookie's life; an id's: the span the row had, at most LONG, never earlier), and the
    // absolute one from then.
    let restarted = false;
    for (const a of auths.get(s) ?? []) {
      s.win = a.life === undefined ? { lo: s.win.lo, hi: Math.max(s.win.hi, a.end + LONG) } : union(s.win, { lo: a.start + a.life.lo, hi: a.end + a.life.hi });
      if (absolute !== undefined) {
        const abs = { lo: a.start + absolute, hi: a.end + absolute };
        s.abs = restarted ? union(s.abs, abs) : abs;
      }
      restarted = true;
    }
    // Whether a save certainly reached the live row: it changed the data (never skipped) well before any expiry.
    const sure = (w: (typeof ws)[number]) => w.dataChanged === true && w.end + LATE_MARGIN <= edge;
    for (const key of DKEYS) {
      const writers = ws.filter((w) => w.sets?.[key] !== undefined);
      if (writers.length === 0) continue;
      const next = new Set(writers.map((w) => w.sets![key]!));
      // Every sure writer wrote: the last of them is what stays. One that may not have: the old value may stay.
      if (!writers.every(sure)) for (const v of s.vals[key]) next.add(v);
      if (key === "passport") {
        const col = new Set<string | null>();
        for (const v of next) {
          const u = userOfVal(v);
          if (u === null) for (const old of s.col) col.add(old);
          else col.add(u), s.owners.add(u);
        }
        s.col = col;
      }
      s.vals[key] = next;
    }
    const proofs = [
      ...ws.filter((w) => w.login).map((w) => ({ sure: sure(w), a: authNow(w.start, w.end) })),
      ...(auths.get(s) ?? []).map((e) => ({ sure: true, a: authNow(e.start, e.end) })),
    ];
    if (proofs.length === 1 && proofs[0]!.sure) s.auth = proofs[0]!.a;
    else if (proofs.length > 0) s.auth = authUnion(...(proofs.every((p) => p.sure) ? [] : [b.auth]), ...proofs.map((p) => p.a));
  }

  const endedBefore = (s: Sess, at: number) => evs.some((x) => x.t === "end" && x.s === s && x.start <= at);

  // A revoke or extend that found no live session, though the model says it was certainly live.
  for (const e of evs) {
    if (e.t !== "miss") continue;
    const s = e.s;
    const b = before.get(s)!;
    if (b.ended || s.uncertain || endedBefore(s, e.end) || logins.has(s)) continue;
    // Another request of this command gave it a new id first.
    if ((e.op === "rotateId" || e.op === "reauth") && rotated.has(s)) continue;
    const lo = Math.min(b.win.lo, s.win.lo, b.abs.lo, s.abs.lo);
    if (e.start >= s.created && e.end + LOST_MARGIN <= lo) checked(r, 3);
    if (e.start >= s.created && e.end + LOST_MARGIN <= lo) {
      fail(
        fails,
        `invariant 3 (live session lost): ${e.op}(${e.inst}) of ${sname(s)} found no live session ${Math.round(e.end - r.t0)} ms into the run, ${Math.round(lo - e.end)} ms before its earliest expiry`,
      );
    }
  }

  for (const g of evs) {
    if (g.t !== "get") continue;
    const s = g.s;
    const b = before.get(s) ?? { ...s, vals: s.vals };
    const W = union(b.win, s.win);
    const A = union(b.abs, s.abs);
    if (g.wrong) fail(fails, `get(${g.inst}) of ${sname(s)} returned another session's data`);
    if (g.slot !== undefined) {
      m.slots[g.slot] = g.found
        ? { s, sid: g.sid, obj: g.obj, inst: g.inst, loadedLo: Math.min(W.lo, A.lo), view: valsOf(g.obj), authSeen: authUnion(b.auth, s.auth) }
        : undefined;
    }
    if (b.ended || endedBefore(s, g.end)) {
      if (s.ended && g.start >= s.visible[g.inst]) checked(r, 1);
      if (s.ended && g.start >= s.visible[g.inst] && g.found) {
        const since = evs.some((x) => x.t === "end" && x.s === s && x.inst === g.inst)
          ? "the end call on this instance resolved"
          : on(r, g.inst).cached
            ? "every instance heard of the end"
            : "the end call resolved";
        fail(
          fails,
          `invariant 1 (ended session returned): get(${g.inst}) of ${sname(s)} started ${Math.round(g.start - s.visible[g.inst])} ms after ${since}, and returned the session`,
        );
      }
      continue;
    }
    if (s.uncertain) continue;
    if (g.start >= s.created && g.end + LOST_MARGIN <= Math.min(W.lo, A.lo)) checked(r, 3);
    if (g.start > A.hi + LATE_MARGIN) checked(r, 4);
    else if (g.start > W.hi + LATE_MARGIN) checked(r, 5);
    if (!g.found && g.start >= s.created && g.end + LOST_MARGIN <= Math.min(W.lo, A.lo)) {
      fail(
        fails,
        `invariant 3 (live session lost): get(${g.inst}) of ${sname(s)} returned null ${Math.round(Math.min(W.lo, A.lo) - g.end)} ms before its earliest expiry`,
      );
    }
    if (g.found && g.start > A.hi + LATE_MARGIN) {
      fail(
        fails,
        `invariant 4 (absolute expiry exceeded): get(${g.inst}) of ${sname(s)} returned it ${Math.round(g.start - A.hi)} ms after its absolute expiry`,
      );
    } else if (g.found && g.start > W.hi + LATE_MARGIN) {
      fail(
        fails,
        `invariant 5 (expired session returned): get(${g.inst}) of ${sname(s)} returned it ${Math.round(g.start - W.hi)} ms after its latest possible expiry`,
      );
    }
    // What the read returned, once every write of the session settled: a read that started after every
    // call of this command on the session resolved (a racing one is not checked). It sees what they left,
    // or (a cached instance that may not have heard another instance's write yet) what was there before.
    const calls = evs.filter((e) => (e.t === "write" || e.t === "auth") && e.s === s) as Array<{ inst: Inst; end: number }>;
    if (!g.found || calls.some((e) => e.end > g.start)) continue;
    const stale = on(r, g.inst).cached && calls.some((e) => e.inst !== g.inst);
    checked(r, 7);
    const got = valsOf(g.obj);
    for (const key of DKEYS) {
      const allowed = new Set([...s.vals[key], ...(stale ? b.vals[key] : [])]);
      if (allowed.has(got[key])) continue;
      const removed = [...allowed].every((v) => v === ABSENT);
      fail(
        fails,
        `invariant 7 (${removed ? "a removed key came back" : "the data is no outcome of the writes"}): get(${g.inst}) of ${sname(s)} returned ${key} = ${got[key]}, where every possible last write left ${[...allowed].join(" or ")}`,
      );
    }
    checked(r, 8);
    const owner = userOfVal(got.passport);
    const allowed: Auth = owner === null ? NO_AUTH : stale ? authUnion(b.auth, s.auth) : s.auth;
    // authenticatedAt is on the instance's clock; a cached entry keeps the conversion of when it was read,
    // so after a step of that clock (the skew command) it may be off by the step (not checked: see the report).
    if (!g.skews.some((skew) => authAllows(allowed, g.authAt === null ? null : g.authAt - skew, AUTH_EARLY + (g.end - g.start)))) {
      fail(
        fails,
        `invariant 8 (authentication time moved): store.authenticatedAt of ${sname(s)} read by get(${g.inst}) is ${g.authAt === null ? "null" : `${Math.round(g.authAt - r.t0)} ms on its clock (skews ${g.skews.join(", ")})`}, the model allows ${authText(r, allowed)}`,
      );
    }
  }

  // Gets under an id rotated away from (invariant 11; 3 and 1 as for any get).
  for (const o of evs) {
    if (o.t !== "old") continue;
    const s = o.s;
    const b = before.get(s)!;
    if (o.wrong) fail(fails, `getOld(${o.inst}) of ${sname(s)} returned another session's data`);
    checked(r, 11);
    if (o.found && o.start > o.grace.hi + LATE_MARGIN) {
      fail(
        fails,
        `invariant 11 (an old id served after its grace window): getOld(${o.inst}) of ${sname(s)} started ${Math.round(o.start - o.grace.hi)} ms after the grace window ended, and returned the session`,
      );
    }
    if (o.reused && o.end + 5 < o.grace.lo) {
      fail(
        fails,
        `invariant 11 (ended as reused within the grace window): getOld(${o.inst}) of ${sname(s)} resolved ${Math.round(o.grace.lo - o.end)} ms before it ended`,
      );
    }
    if (b.ended || endedBefore(s, o.start)) {
      if (o.found && s.ended && o.start >= s.visible[o.inst])
        fail(fails, `invariant 1 (ended session returned): getOld(${o.inst}) of ${sname(s)} returned the session`);
      continue;
    }
    const W = union(b.win, s.win);
    const A = union(b.abs, s.abs);
    if (s.uncertain || o.start < s.created || o.end + LOST_MARGIN > Math.min(o.grace.lo, W.lo, A.lo)) continue;
    checked(r, 3);
    if (!o.found) {
      fail(
        fails,
        `invariant 3 (live session lost): getOld(${o.inst}) of ${sname(s)} ${o.reused ? "ended it as reused" : "returned null"} ${Math.round(o.grace.lo - o.end)} ms before the grace window of its old id ended`,
      );
    }
  }

  for (const e of evs) if (e.t === "slot") m.slots[e.index] = undefined;
  const ended = [...new Set(evs.flatMap((e) => (e.t === "end" ? [e.s] : [])))];
  return { fails, ended };
}

/**
 * Invariant 9 with `whenFull: "refuse"` on the sign-ins of one command (their Capped events): nothing was
 * evicted; a refused sign-in of a new id stored nothing; a sign-in was refused only when its user may have
 * had the cap's number of other live sessions (or another sign-in of the user raced it), and went
 * through only when the user did not certainly have them (or an end raced it, freeing a place).
 */
function refusals(m: Readonly<Model>, r: Real, observed: readonly Ev[]): string[] {
  const fails: string[] = [];
  const cap = m.config.cap!;
  if (observed.some((e) => e.t === "evicted")) fails.push(`invariant 9 (evicted under whenFull "refuse"): a sign-in ended another session`);
  for (const e of observed) {
    if (e.t !== "capped") continue;
    if (e.refused && e.stored)
      fails.push(`invariant 9 (a refused sign-in changed something): ${e.what} failed with SESSION_LIMIT, yet its new session is stored`);
    if (e.user === undefined) continue;
    checked(r, 9);
    const others = observed.filter((x) => x !== e);
    // Another sign-in of the user (or of one the model cannot name) beside it may have taken the last place.
    const raced = others.some((x) => (x.t === "capped" && !x.refused && (x.user === e.user || x.user === undefined)) || (x.t === "write" && x.op === "extend"));
    // An end beside it (but that of the session it excludes, which came before it) may have freed a place.
    const freed = others.some((x) => (x.t === "end" && x.s !== e.exclude) || x.t === "revokeUser");
    if (e.refused && !raced && (e.exempt || e.possible < cap)) {
      const had = e.exempt ? "it wrote one of the user's live sessions (adding none)" : `the user had at most ${e.possible} other live sessions`;
      fails.push(`invariant 9 (refused below the cap): ${e.what} of ${e.user} failed with SESSION_LIMIT, though ${had} (cap ${cap})`);
    }
    if (!e.refused && e.must && !e.exempt && !freed && e.certain >= cap) {
      fails.push(
        `invariant 9 (signed in at the cap): ${e.what} of ${e.user} went through, though the user certainly had ${e.certain} other live sessions (cap ${cap})`,
      );
    }
  }
  return fails;
}

/**
 * Waits until every instance with a cache has heard every NOTIFY sent so far: a marker sent now (after
 * the command's writes committed) is delivered after them, in commit order, so once an instance has
 * evicted the marker it has processed every earlier notification. Returns when that was.
 */
async function barrier(r: Real): Promise<number> {
  const cached = ALL_INSTS.flatMap((i) => (r[i]?.cached ? [r[i]!] : []));
  if (cached.length === 0) return real();
  const marker = keyOf(`barrier ${randomBytes(8).toString("hex")}`);
  await r.t.raw(`select pg_notify('${r.channel}', '${marker}')`);
  const deadline = Date.now() + NOTIFY_WAIT;
  while (!cached.every((i) => i.store.evicted.has(marker))) {
    if (Date.now() > deadline) {
      throw new Error(
        `NOTIFY barrier: ${cached
          .filter((i) => !i.store.evicted.has(marker))
          .map((i) => i.name)
          .join(", ")} never heard a NOTIFY within ${NOTIFY_WAIT} ms`,
      );
    }
    await sleep(2);
  }
  for (const i of cached) i.store.evicted.delete(marker);
  return real();
}

/** Invariants 2-6 and 7-9 on the table itself. */
async function checkTable(m: Model, r: Real): Promise<string[]> {
  const fails: string[] = [];
  const t0 = real();
  const rows = await r.t.raw<{ key: string; handle: string; expires: number; user_id: string | null; data: string; auth: number | null }>(
    `select key, handle, round(date_part('epoch', expires_at) * 1000)::float8 as expires, user_id::text as user_id, data::text as data,
       round(date_part('epoch', authenticated_at) * 1000)::float8 as auth
     from $table where ended_at is null and expires_at > statement_timestamp()`,
  );
  const t1 = real();
  // Every key a session had (rotations give it new ones) names it.
  const byKey = new Map(m.sessions.flatMap((s) => [...s.keys].map((key) => [key, s] as const)));
  const live = new Map<Sess, (typeof rows)[number]>();
  for (const row of rows) {
    const s = byKey.get(row.key);
    if (s && s.keys.size > 1) checked(r, 11);
    if (s && live.has(s)) {
      fail(fails, `invariant 11 (forked): ${sname(s)} has two live rows (keys ${live.get(s)!.key.slice(0, 6)} and ${row.key.slice(0, 6)})`);
    }
    if (s) live.set(s, row);
    else fail(fails, `invariant 2: a live row for a key the model never created (${row.key.slice(0, 6)})`);
  }
  for (const s of m.sessions) {
    const row = live.get(s);
    const expires = row ? `expires ${Math.round(Number(row.expires) - t0)} ms from now` : "";
    if (s.ended) {
      checked(r, 2);
      if (!row) continue;
      const how = s.handles.has(row.handle)
        ? "its ended row is live again"
        : `resurrected as a new row (handle ${row.handle.slice(0, 6)}, was ${s.handle?.slice(0, 6)})`;
      fail(fails, `invariant 2 (ended session live again): ${sname(s)}, ended ${Math.round(t0 - s.endAt)} ms ago, ${how}, ${expires}`);
      continue;
    }
    if (row && !s.handles.has(row.handle)) {
      if (!s.uncertain) fail(fails, `invariant 2 (resurrection): ${sname(s)}'s key has a live row with a new handle ${row.handle.slice(0, 6)}`);
      s.handles.add(row.handle);
      s.handle = row.handle;
    }
    if (row) fails.push(...(await checkRow(m, r, s, row)));
    if (s.uncertain) continue;
    if (t0 > s.abs.hi + LATE_MARGIN) {
      checked(r, 4);
      if (row)
        fail(fails, `invariant 4 (absolute expiry exceeded): ${sname(s)}'s row is live ${Math.round(t0 - s.abs.hi)} ms after its absolute expiry (${expires})`);
    } else if (t0 > s.win.hi + LATE_MARGIN) {
      checked(r, 5);
      if (row)
        fail(
          fails,
          `invariant 5 (expired session live): ${sname(s)}'s row is live ${Math.round(t0 - s.win.hi)} ms after its latest possible expiry (${expires})`,
        );
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
    // From its creation, or its latest re-authentication (which restarts the absolute clock).
    const over = await r.t.raw<{ key: string; span: number }>(
      `select key, round(date_part('epoch', expires_at - greatest(created_at, authenticated_at)) * 1000)::float8 as span from $table
       where expires_at > greatest(created_at, authenticated_at) + interval '${absolute + 5} milliseconds'`,
    );
    for (const row of over)
      fail(
        fails,
        `invariant 4: row ${byKey.get(row.key) ? sname(byKey.get(row.key)!) : row.key.slice(0, 6)} expires ${row.span} ms after its creation or latest re-authentication (absoluteTimeout ${absolute})`,
      );
  }
  const cap = m.config.cap;
  if (cap !== undefined) {
    checked(r, 9);
    const over = await r.t.raw<{ user_id: string; n: number; keys: string }>(
      `select user_id::text as user_id, count(*)::int as n, string_agg(key, ',') as keys from $table
       where user_id is not null and ended_at is null and expires_at > statement_timestamp()
         and (absolute_expires_at is null or absolute_expires_at > statement_timestamp())
       group by user_id having count(*) > ${cap}`,
    );
    for (const row of over) {
      const names = row.keys.split(",").map((k) => (byKey.get(k) ? sname(byKey.get(k)!) : k.slice(0, 6)));
      fail(fails, `invariant 9 (cap exceeded): ${row.user_id} has ${row.n} live sessions (${names.join(" ")}), over maxSessionsPerUser ${cap}`);
    }
  }
  return fails;
}

/** Invariants 6, 7 and 8 on one live row of a session: its owner column, its data and its authentication time. */
async function checkRow(m: Model, r: Real, s: Sess, row: { user_id: string | null; data: string; auth: number | null }): Promise<string[]> {
  const fails: string[] = [];
  // With encrypt the data is opened by a store that has every secret (a fresh read, no cache).
  const data: any = m.config.encrypt ? await r.reader.get(s.sid) : JSON.parse(row.data);
  if (!data) return fails; // expired since the select (a row that does not open is reported as a store error)
  const vals = valsOf(data);
  const owner = userOfVal(vals.passport);
  checked(r, 6);
  if (owner !== null ? row.user_id !== owner : row.user_id !== null && !s.owners.has(row.user_id)) {
    fail(
      fails,
      `invariant 6 (owner column): ${sname(s)}'s data names ${owner ?? "no user"}, its user_id is ${row.user_id ?? "null"}${owner === null ? ` (former owners: ${[...s.owners].join(", ") || "none"})` : ""}`,
    );
  }
  if (s.uncertain) return fails;
  checked(r, 7);
  for (const key of DKEYS) {
    if (s.vals[key].has(vals[key])) continue;
    const removed = [...s.vals[key]].every((v) => v === ABSENT);
    fail(
      fails,
      `invariant 7 (${removed ? "a removed key came back" : "the data is no outcome of the writes"}): ${sname(s)}'s row holds ${key} = ${vals[key]}, where every possible last write left ${[...s.vals[key]].join(" or ")}`,
    );
  }
  checked(r, 8);
  if (!authAllows(s.auth, row.auth === null ? null : Number(row.auth), AUTH_LATE)) {
    fail(
      fails,
      `invariant 8 (authentication time moved): ${sname(s)}'s authenticated_at is ${row.auth === null ? "null" : `${Math.round(Number(row.auth) - r.t0)} ms`}, the model allows ${authText(r, s.auth)}`,
    );
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
  const start = real();
  const settled = await Promise.allSettled(
    steps.map(async ({ step, offset }) => {
      if (offset > 0) await sleep(offset);
      return step.exec(m, r);
    }),
  );
  const failed = settled.find((x): x is PromiseRejectedResult => x.status === "rejected");
  if (failed) throw failed.reason;
  const evs = settled.flatMap((x) => (x.status === "fulfilled" ? x.value : []));
  // The cap's evictions: ended by a login's statement, some time after this command started.
  for (const e of r.evictions.splice(0)) {
    trace(r, e.at, `  evicted(${e.inst}) handle ${e.handle.slice(0, 6)}`);
    evs.push({ t: "evicted", handle: e.handle, inst: e.inst, start, end: e.at });
  }
  const { fails, ended } = apply(m, r, evs);
  const heard = await barrier(r);
  for (const s of m.sessions) {
    if (!s.ended) continue;
    for (const i of ALL_INSTS) if (r[i]?.cached) s.visible[i] = Math.min(s.visible[i], heard);
  }
  // Invariant 1 on every instance: a read of each session this command ended, now that all have heard.
  const reads = await Promise.all(ended.flatMap((s) => r.readers.map((i) => timedGet(r, i, s, "  after-end get"))));
  for (const g of reads) {
    if (g.t === "get" && g.start >= g.s.visible[g.inst]) checked(r, 1);
    if (g.t === "get" && g.found && g.start >= g.s.visible[g.inst]) {
      fail(
        fails,
        `invariant 1 (ended session returned): get(${g.inst}) of ${sname(g.s)}, after it was ended${on(r, g.inst).cached ? " and every instance heard the NOTIFY" : ""}, returned the session`,
      );
    }
  }
  fails.push(...(await checkTable(m, r)));
  // No instance has a live row it cannot open: every secret a row may be sealed under is listed, plaintext accepted where P writes.
  for (const error of r.errors.slice(r.reported).filter((e) => e.includes("holds no valid session")))
    fail(fails, `invariant 3 (a live row reads as corrupt): ${error}`);
  r.reported = r.errors.length;
  if (fails.length > 0) {
    const trace = r.trace.slice(-40).map((l) => `    ${l}`);
    const errors = r.errors.length ? `\n  store errors: ${r.errors.slice(-5).join("; ")}` : "";
    const failed = [...new Set(fails)].map((f) => `  - ${f}`);
    const error = new Error(`${r.config.name}:\n${failed.join("\n")}\n  trace (ms since the run started):\n${trace.join("\n")}${errors}`);
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

export const KINDS = [
  "create",
  "get",
  "load",
  "save",
  "touch",
  "signin",
  "signout",
  "data",
  "rotate",
  "mint",
  "list",
  "markAuth",
  "rotateId",
  "reauth",
  "renew",
  "getOld",
  "otherDevice",
  "destroy",
  "revoke",
  "revokeUser",
  "regenerate",
  "extend",
  "reap",
  "wait",
  "skew",
  "concurrent",
] as const;

/** Steps that change the tracked keys of their slot's request: never started beside another step of the same slot. */
const DATA_STEPS = new Set(["signin", "signout", "data", "rotate", "rotateId", "reauth", "renew"]);

/** The instances a configuration has: A and B, C with secret rotation, P (creates only) with plaintext rows. */
export function instancesOf(config: Config): Inst[] {
  return ALL_INSTS.filter((i) => i === "A" || i === "B" || (i === "C" && config.rotation) || (i === "P" && config.plaintext));
}

/**
 * The command sequences; `without` drops kinds (to look for one bug while another is unfixed), and
 * instances ("C", "P"): their commands are not generated.
 */
export function lifecycleCommands(options: { maxCommands: number; without?: ReadonlySet<string>; config?: Config }) {
  const without = options.without ?? new Set<string>();
  const insts = (options.config ? instancesOf(options.config) : (["A", "B"] as Inst[])).filter((i) => !without.has(i));
  const readers = insts.filter((i) => i !== "P");
  const I = fc.constantFrom<Inst>(...readers);
  // Creates go to every instance, P included (a row from before the plaintext changeover).
  const CI = fc.constantFrom<Inst>(...insts);
  const K = fc.nat({ max: 2 });
  const S = fc.nat({ max: SLOTS - 1 });
  const life = fc.oneof(fc.integer({ min: 400, max: 900 }), fc.constant(LONG));
  const user = fc.constantFrom<User>("ann", "bob", null);
  const named = fc.constantFrom("ann", "bob") as fc.Arbitrary<"ann" | "bob">;
  // "shorten" in `without` drops the shortening variants of save and touch.
  const shorten = !without.has("shorten");
  const saves = shorten ? (["change", "roll", "shorten"] as const) : (["change", "roll"] as const);
  const touches = shorten ? (["touch", "touch-shorten"] as const) : (["touch"] as const);
  const steps: Array<[string, number, fc.Arbitrary<Step>]> = [
    ["create", 3, fc.tuple(CI, life, user).map(([i, l, u]) => createStep(i, l, u))],
    ["get", 3, fc.tuple(I, K).map(([i, k]) => getStep(i, k))],
    ["load", 5, fc.tuple(I, K, S).map(([i, k, s]) => loadStep(i, k, s))],
    ["save", 3, fc.tuple(S, fc.constantFrom(...saves)).map(([s, op]) => writeStep(s, op))],
    ["touch", 2, fc.tuple(S, fc.constantFrom(...touches)).map(([s, op]) => writeStep(s, op))],
    ["signin", 3, fc.tuple(S, named).map(([s, u]) => signInStep(s, u))],
    ["signout", 2, S.map((s) => signOutStep(s))],
    [
      "data",
      3,
      fc
        .tuple(S, fc.constantFrom("cart", "theme") as fc.Arbitrary<"cart" | "theme">, fc.constantFrom("set", "delete") as fc.Arbitrary<"set" | "delete">)
        .map(([s, k, a]) => dataStep(s, k, a)),
    ],
    ["rotate", 1, S.map((s) => rotateStep(s))],
    ["mint", 1, S.map((s) => mintStep(s))],
    ["markAuth", 1, fc.tuple(I, K).map(([i, k]) => markAuthStep(i, k))],
    ["rotateId", 4, S.map((s) => requestRotationStep(s, "rotateId"))],
    ["reauth", 1, S.map((s) => requestRotationStep(s, "reauth"))],
    ["renew", 1, S.map((s) => requestRotationStep(s, "renew"))],
    ["getOld", 4, fc.tuple(I, K).map(([i, k]) => getOldStep(i, k))],
    ["otherDevice", 2, fc.tuple(I, K).map(([i, k]) => otherDeviceStep(i, k))],
    ["destroy", 2, fc.tuple(I, K).map(([i, k]) => destroyStep(i, k))],
    [
      "revoke",
      2,
      fc.tuple(I, K, fc.constantFrom("any", "owner", "other") as fc.Arbitrary<"any" | "owner" | "other">).map(([i, k, as]) => revokeStep(i, k, as)),
    ],
    ["revokeUser", 1, fc.tuple(I, named, fc.option(K)).map(([i, u, e]) => revokeUserStep(i, u, e))],
    ["regenerate", 1, S.map((s) => regenerateStep(s))],
    ["extend", 2, fc.tuple(I, K, fc.constantFrom("soon", "later", "past") as fc.Arbitrary<keyof typeof EXTEND>).map(([i, k, w]) => extendStep(i, k, w))],
    ["reap", 2, I.map((i) => reapStep(i))],
  ];
  const solo: Array<[string, number, fc.Arbitrary<Step>]> = [
    ["wait", 10, fc.constantFrom(0, 50, 200, 600).map((w) => waitStep(w))],
    ["skew", 1, fc.tuple(I, fc.constantFrom(-SKEW, 0, SKEW)).map(([i, v]) => skewStep(i, v))],
    ["list", 1, fc.tuple(I, named).map(([i, u]) => listStep(i, u))],
  ];
  const weighted = (list: Array<[string, number, fc.Arbitrary<Step>]>) =>
    fc.oneof(...list.filter(([kind]) => !without.has(kind)).map(([, weight, arbitrary]) => ({ arbitrary, weight })));
  const single = weighted([...steps, ...solo]).map((step): fc.AsyncCommand<Model, Real> => new Single(step));
  // "concurrent-get" in `without`: no reads among the steps started together.
  const grouped = without.has("concurrent-get") ? steps.filter(([kind]) => kind !== "get" && kind !== "load") : steps;
  // A request is one request: a step that changes its data never runs beside another step of the same slot.
  const oneRequest = (list: ReadonlyArray<{ step: Step }>) =>
    list.every(
      ({ step: a }, i) =>
        a.slot === undefined || list.every(({ step: b }, j) => i === j || b.slot !== a.slot || (!DATA_STEPS.has(a.kind) && !DATA_STEPS.has(b.kind))),
    );
  const concurrent = fc
    .array(fc.record({ step: weighted(grouped), offset: fc.constantFrom(0, 1, 3, 10) }), { minLength: 2, maxLength: 4 })
    .filter(oneRequest)
    .map((list): fc.AsyncCommand<Model, Real> => new Concurrent(list));
  const command = without.has("concurrent") ? single : fc.oneof({ arbitrary: single, weight: 5 }, { arbitrary: concurrent, weight: 1 });
  // Every run starts with a session or two, so that the commands that need one are not all skipped.
  const first = fc.tuple(CI, life, user).map(([i, l, u]): fc.AsyncCommand<Model, Real> => new Single(createStep(i, l, u)));
  return fc
    .tuple(fc.array(first, { minLength: 1, maxLength: 2 }), fc.commands([command], { maxCommands: options.maxCommands, size: "max" }))
    .map(([start, rest]) => new Sequence(start, rest));
}

/** The commands of one run: its first creates, then fast-check's commands. */
class Sequence implements Iterable<fc.AsyncCommand<Model, Real>> {
  constructor(
    readonly start: ReadonlyArray<fc.AsyncCommand<Model, Real>>,
    readonly rest: Iterable<fc.AsyncCommand<Model, Real>>,
  ) {}
  *[Symbol.iterator]() {
    yield* this.start;
    yield* this.rest;
  }
  toString() {
    return [...this.start.map(String), String(this.rest)].filter(Boolean).join(", ");
  }
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

/** The options of instance `name` in `config` (the reader: `R`). */
function optionsOf(config: Config, db: AnyPgDatabase, table: TestDb["table"], name: Inst | "R"): SessionStoreOptions {
  const options: SessionStoreOptions = { db, table, reaper: false, secrets: ID_SECRET, rotationGrace: GRACE };
  if (config.renewal) options.renewAfter = RENEW;
  if (config.binding) options.onBindingChange = "end";
  if (config.absolute !== undefined) options.absoluteTimeout = config.absolute;
  if (config.history) options.retainEnded = HISTORY;
  if (!config.merge) options.merge = false;
  if (config.broadcast && name !== "R") options.broadcast = true;
  if (config.cap !== undefined && name !== "R") options.maxSessionsPerUser = config.refuse ? { limit: config.cap, whenFull: "refuse" } : config.cap;
  if (config.encrypt && name !== "P") {
    // The rotation's second step, half deployed: C seals under the new secret; A and B list it second.
    const secrets = !config.rotation ? [ENCRYPTION_SECRET] : name === "C" ? [NEW_SECRET, ENCRYPTION_SECRET] : [ENCRYPTION_SECRET, NEW_SECRET];
    options.encrypt = { secrets, ...(config.plaintext ? { acceptPlaintext: true } : {}) };
  }
  // P never reads (so holds no cache), but every instance on a table some instance caches must notify.
  if (config.cache && name !== "R") Object.assign(options, name === "P" ? { notify: true } : { cache: { ...CACHE }, notify: true });
  if (config.replica && name !== "R") options.replicaReads = { window: config.replica.window };
  return options;
}

/** Fresh instances on an emptied table. */
async function openReal(config: Config, t: TestDb): Promise<Real> {
  await t.raw(`delete from $table`);
  const errors: string[] = [];
  const evictions: Real["evictions"] = [];
  const opened: Instance[] = [];
  const open = async (name: Inst): Promise<Instance> => {
    const conn = await connect(t, config);
    let store: TestStore;
    try {
      store = new TestStore(optionsOf(config, conn.db, t.table, name));
    } catch (error) {
      await conn.end();
      throw error;
    }
    if (config.coalesce) internals(store).coalesce(1);
    // What express-session's middleware assigns: regenerate's new id and an empty session linked to the request.
    (store as unknown as { generate(req: unknown): void }).generate = generate;
    store.on("error", (error: Error) => void errors.push(`${name}: ${error.message}`));
    store.on("ended", (event) => {
      if (event.reason === "evicted" && event.local) evictions.push({ handle: event.handle, inst: name, at: real() });
    });
    const instance: Instance = {
      name,
      store,
      cached: config.cache && name !== "P",
      end: async () => void (await Promise.allSettled([store.close()]), await conn.end()),
    };
    opened.push(instance);
    return instance;
  };
  const reader = new TestStore(optionsOf(config, t.db, t.table, "R"));
  reader.on("error", (error: Error) => void errors.push(`reader: ${error.message}`));
  let r: Real;
  try {
    const insts = instancesOf(config);
    const A = await open("A");
    const B = await open("B");
    const C = insts.includes("C") ? await open("C") : undefined;
    const P = insts.includes("P") ? await open("P") : undefined;
    r = {
      config,
      t,
      // The store's own channel name (cut to 63 bytes as Postgres requires), so the barrier's marker reaches its LISTEN.
      channel: internals(A.store).channel,
      A,
      B,
      C,
      P,
      readers: insts.filter((i) => i !== "P"),
      reader,
      t0: real(),
      trace: [],
      stats: new Map(),
      checks: new Map(),
      errors,
      evictions,
      seq: 0,
      reported: 0,
    };
  } catch (error) {
    await Promise.allSettled([...opened.map((i) => i.end()), reader.close()]);
    throw error;
  }
  if (config.replica) {
    // As an app awaits it before listening: each instance asks its replica who it is, so that lookups
    // go to it from the first command (else a short run would read the primary only).
    try {
      await Promise.all(opened.map((i) => i.store.ready()));
    } catch (error) {
      await closeReal(r);
      throw error;
    }
  }
  if (config.cache) {
    try {
      const live = (i: Instance) => internals(i.store).cache?.live !== false;
      // Bounded, and generous: the whole suite runs beside it.
      await until(() => opened.every(live), 3 * NOTIFY_WAIT, "every cache to go live");
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
  await Promise.allSettled([r.A.end(), r.B.end(), r.C?.end(), r.P?.end(), r.reader.close()]);
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
  const replicaLookups = { replica: 0, primary: 0 };
  const property = fc.asyncProperty(lifecycleCommands({ maxCommands: options.maxCommands, without: options.without, config }), async (cmds) => {
    // Out of time: interrupt fast-check (it then reports what it has: the runs so far passed, or the
    // smallest failing sequence found so far), instead of letting it generate the remaining runs.
    if (Date.now() > (failures > 0 ? shrinkDeadline : deadline)) throw new fc.PreconditionFailure(true);
    runs++;
    if (process.env.LIFECYCLE_TRACE) console.log(`--- commands ${[...cmds].length}: ${[...cmds].map(String).join(", ")}`);
    const real = await openReal(config, t);
    try {
      await fc.asyncModelRun(() => ({ model: { config, sessions: [], slots: [] }, real }), cmds);
    } catch (error) {
      if (failures++ === 0) shrinkDeadline = Date.now() + options.shrinkMs;
      throw error;
    } finally {
      if (process.env.LIFECYCLE_TRACE) console.log(`--- run ${runs}\n${real.trace.join("\n")}`);
      for (const [kind, n] of real.stats) totals.set(kind, (totals.get(kind) ?? 0) + n);
      for (const i of [real.A, real.B, real.C, real.P]) {
        const lookups = i?.store.replicaStats();
        if (lookups) for (const side of ["replica", "primary"] as const) replicaLookups[side] += lookups[side];
      }
      for (const [invariant, n] of real.checks) checks.set(invariant, (checks.get(invariant) ?? 0) + n);
      await closeReal(real);
    }
  });
  try {
    await fc.assert(property, { seed: options.seed, path: options.path, numRuns: options.numRuns, verbose: 1 });
  } finally {
    const commands = [...totals.values()].reduce((a, b) => a + b, 0) - (totals.get("concurrent") ?? 0);
    const kinds = KINDS.filter((k) => totals.has(k))
      .map((k) => `${k} ${totals.get(k)}`)
      .join(", ");
    const applied = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"].map((i) => `${i}: ${checks.get(i) ?? 0}`).join(", ");
    (options.log ?? console.log)(
      `[lifecycle] ${config.name}: ${runs} runs${failures ? ` (${failures} failing, shrinking included)` : ""}, ${commands} commands (${kinds}), invariants checked (${applied})${config.replica ? `, lookups from the replica ${replicaLookups.replica} of ${replicaLookups.replica + replicaLookups.primary}` : ""}, seed ${options.seed}, ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  }
}

/**
 * Environment knobs shared by both test files: LIFECYCLE_SEED (the seed of every configuration),
 * LIFECYCLE_PATH (fast-check's path, to replay a shrunk case with its seed), LIFECYCLE_ONLY (configurations
 * whose name contains it), LIFECYCLE_RUNS, LIFECYCLE_BUDGET_MS, LIFECYCLE_SHRINK_MS, LIFECYCLE_WITHOUT
 * (comma-separated command kinds to leave out, plus `shorten`, `concurrent-get` and the instances `C` and `P`: to look for one bug
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
    without: new Set(
      (process.env.LIFECYCLE_WITHOUT ?? "")
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean),
    ),
  };
}

/** A fixed seed per configuration name. */
export const seedOf = (name: string) => createHash("sha256").update(`lifecycle ${name}`).digest().readInt32BE(0);

/**
 * Declares one test per configuration (inside the caller's describe): each on a database of its own,
 * closed afterwards, run with `runLifecycle` and the given defaults (the LIFECYCLE_* variables override
 * them). `seed` gives a configuration's seed when LIFECYCLE_SEED is not set.
 */
export function lifecycleTests(
  drivers: readonly DriverName[],
  defaults: { seed(config: Config): number; runs: number; maxCommands: number; budgetMs: number; shrinkMs: number },
  replica?: Config["replica"],
): void {
  const env = fromEnv();
  const open = new Set<TestDb>();
  afterAll(async () => {
    await Promise.allSettled([...open].map((t) => t.close()));
    await closeSharedDbs();
  });
  // PGlite's shared instance opens first: its start blocks the event loop for seconds, which must not
  // fall inside another driver's store call (it would time out on a reply that had arrived).
  beforeAll(async () => {
    if (drivers.includes("pglite")) await (sharedPglite ??= openDb("pglite"));
  }, 120_000);
  const budgetMs = env.budgetMs ?? defaults.budgetMs;
  const shrinkMs = env.shrinkMs ?? defaults.shrinkMs;
  for (const config of configurations(drivers, replica).filter((c) => !env.only || c.name.includes(env.only))) {
    it(
      config.name,
      async () => {
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
      },
      budgetMs + shrinkMs + 30_000,
    );
  }
}
