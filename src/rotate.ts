import type { SessionData } from "express-session";
import type { StoreContext } from "./context.js";
import { isValidId } from "./hash.js";
import { loadedAs, type Loaded } from "./loaded.js";
import { expiryOf, localExpiry, sentAt } from "./rules.js";
import { openRow, sealRow } from "./seal.js";
import { keyValues, type ExpiryRow, type SessionRow } from "./statements.js";
import type { RotationKind } from "./sql/rotation.js";

/** What a rotation or re-authentication returns of the row: its key, the key it had, expiries, device, version. */
type RotatedRow = { key: string; handle: string; ua: string | null; ip: string | null; version?: number } & ExpiryRow;

/** How often a rotation under `encrypt` reads the row again when a write changed it between its read and its write. */
const SEAL_ATTEMPTS = 5;

/** The prefix of a NOTIFY payload that names a key a session was rotated away from (see {@link RotatedAway}). */
export const ROTATED_AWAY = "r:";

/** How long a key rotated away from is remembered, at least (requests in flight that read it before, ms). */
const REMEMBERED = 60_000;

/**
 * The row keys sessions were rotated away from lately: by this store, or by another instance whose
 * NOTIFY it heard (with a LISTEN: `cache`). A request that read its session under such a key before the
 * rotation, and answers after it, must not send the old id back in its cookie: the browser would keep it
 * over the new one, and once the grace window passed its next request would look like a stolen cookie.
 */
export class RotatedAway {
  private readonly until = new Map<string, number>();
  constructor(private readonly grace: number) {}

  add(keys: readonly string[]): void {
    const now = performance.now();
    // Bounded: the expired go first, then the oldest.
    if (this.until.size > 10_000) for (const [key, at] of this.until) if (at < now || this.until.size > 10_000) this.until.delete(key);
    for (const key of keys) this.until.set(key, now + Math.max(this.grace, REMEMBERED));
  }

  has(key: string): boolean {
    const at = this.until.get(key);
    if (at === undefined || at >= performance.now()) return at !== undefined;
    this.until.delete(key);
    return false;
  }
}

/**
 * Giving a session a new id (`rotateSession`, `renewAfter`, `markAuthenticated` of a request) and
 * recording re-authentications, each in one statement on the session's row (sql/rotation.ts): the row
 * keeps its data, handle, owner, creation, history and (unless re-authenticated) absolute expiry, and the
 * id it had opens it for `rotationGrace` more. With `encrypt` the data is bound to the row's key, so it is
 * sealed again for the new one, written only while the row still holds what was read (else read again).
 */
export class Rotations {
  constructor(
    private readonly s: StoreContext,
    /** The keys rotated away from lately (this store's rotations, and those it heard of). */
    readonly away: RotatedAway,
  ) {}

  /**
   * Gives the live session of `sid` the id `newSid`, and with `reauth` records a re-authentication
   * (restarting its clocks, see `restartOnReauthentication`). `session`: the request's, whose cookie sets
   * the new idle expiry of a re-authentication. Only from the session's current id: an id already rotated
   * away from is never rotated again (two new ids would fork what the browser keeps).
   * @returns the request's view of the session under its new id (from what it loaded of it, if it did), or
   * undefined when `sid` is not the current id of a live session
   */
  async rotate(sid: string, newSid: string, session: SessionData | undefined, reauth: boolean): Promise<Loaded | undefined> {
    if (!isValidId(sid) || !isValidId(newSid) || sid === newSid) throw new TypeError("connect-drizzle: rotate needs the session's id and a new, different id");
    const [newKey] = this.s.keysOf(newSid) as [string];
    const sent = sentAt(this.s.now());
    const kind: RotationKind = { rotate: true, reauth, restart: reauth && this.s.options.restartOnReauthentication, sealed: this.s.sealer !== undefined };
    const values = { new: newKey, grace: this.s.options.rotationGrace, life: this.lifeOf(session, sent.wall) };
    let row: RotatedRow | undefined;
    if (!this.s.sealer) row = await this.write(this.s.keysOf(sid), kind, values, [newKey]);
    else {
      for (let attempt = 0; attempt < SEAL_ATTEMPTS && row === undefined; attempt++) {
        const [read] = await this.s.exec.run<SessionRow>(this.s.sql.get(this.s.keysOf(sid).length), keyValues(this.s.keysOf(sid), {}));
        if (!read || read.prior !== null) return undefined;
        const opened = openRow(this.s.sealer, read.key, read.data);
        if (typeof opened === "string") return undefined;
        const data = sealRow(this.s.sealer, newKey, opened.session, opened.text);
        row = await this.write([read.key], kind, { ...values, was: read.data, data }, [newKey]);
      }
    }
    this.s.replicas?.pin([newKey]);
    if (!row) return undefined;
    const loaded = session === undefined ? undefined : loadedAs(session, sid);
    return {
      sid: newSid,
      key: row.key,
      handle: row.handle,
      text: loaded?.text ?? "{}",
      version: Number(row.version ?? loaded?.version ?? 0),
      ua: row.ua,
      ip: row.ip,
      ...localExpiry(row, sent, this.s.cache?.ttl ?? Infinity),
    };
  }

  /**
   * Records that the user of the live session `sid` (its current id, or the one it was rotated away from
   * within its grace window) just proved who they are again, without a new id: for a session id outside a
   * request. Its idle expiry restarts with the span it had.
   */
  async markAuthenticated(sid: string): Promise<boolean> {
    if (!isValidId(sid)) return false;
    const kind: RotationKind = { rotate: false, reauth: true, restart: this.s.options.restartOnReauthentication, sealed: false };
    return (await this.write(this.s.keysOf(sid), kind, { life: null })) !== undefined;
  }

  /**
   * The key the live session `loaded` has now, when it got a new id since it was loaded (undefined when
   * not, or when it is no longer live), for a save of a request that read it before: its write lands in
   * the session, sealed for that key.
   */
  async moved(loaded: Loaded): Promise<string | undefined> {
    const key = await this.currentKey(loaded.handle);
    return key === loaded.key ? undefined : key;
  }

  /** The key the session `handle` has now, while it is live (whatever ids it was given); undefined when it is not live. */
  async currentKey(handle: string): Promise<string | undefined> {
    const [row] = await this.s.exec.query<{ key: string }>(this.s.sql.currentKey(handle), true);
    return row?.key;
  }

  /**
   * Runs one rotation statement on the row of `keys`; the row's keys (the old ones, and `added`) leave
   * every cache before it resolves.
   */
  private async write(keys: readonly string[], kind: RotationKind, values: Record<string, unknown>, added: string[] = []): Promise<RotatedRow | undefined> {
    const announce = (rows: RotatedRow[]) => {
      if (rows.length === 0) return this.s.changed([]);
      // The keys it had, for the caches; with `added` (a rotation), also as rotated away from, for requests in flight.
      const old = added.length === 0 ? [] : keys.filter((key) => key !== rows[0]!.key);
      this.away.add(old);
      this.s.cache?.alias(old, rows[0]!.key);
      return this.s.changed([...new Set([...keys, ...added, ...rows.map((row) => row.key), ...old.map((key) => ROTATED_AWAY + key)])]);
    };
    this.s.evict(keys);
    const [row] = await this.s.exec.run<RotatedRow>(this.s.sql.rotation(keys.length, kind), keyValues(keys, { ...values }), announce);
    return row;
  }

  /**
   * A re-authenticating request's idle lifetime from now: its cookie's whole `maxAge` (capped by
   * `idleTimeout`), as the idle clock starts again; without one, what its cookie has left (`ttl` for a
   * browser-session cookie). `null` without a session: keep the span the row had.
   */
  private lifeOf(session: SessionData | undefined, now: number): number | null {
    if (session === undefined) return null;
    const maxAge = (session.cookie as { originalMaxAge?: unknown } | undefined)?.originalMaxAge;
    const { idleTimeout } = this.s.options;
    if (typeof maxAge !== "number" || !(maxAge > 0)) return expiryOf(session, now, this.s.options) - now;
    return idleTimeout === undefined ? maxAge : Math.min(maxAge, idleTimeout);
  }
}
