import type { SessionData } from "express-session";
import type { StoreContext } from "./context.js";
import { isTrue } from "./driver.js";
import type { Shape } from "./executor.js";
import { refusedAtCap, SessionStoreError } from "./errors.js";
import { sessionEvent, type Announcement } from "./events.js";
import { isValidId, newHandle } from "./hash.js";
import { loadedAs, loadedUnderAnyId, requestMetadata, requestOf, ROTATED, withLoaded, type Loaded, type Rotated, signInOf } from "./loaded.js";
import { endSession } from "./ending.js";
import { checkUserId } from "./owner.js";
import type { Rotations } from "./rotate.js";
import type { EndReason } from "./records.js";
import { expiryOf, localExpiry, sentAt, skipsWrite, type Sent } from "./rules.js";
import { mergeValues, openRow, rowText, sealRow } from "./seal.js";
import { carriedSignIn } from "./reauth.js";
import { changesOf, parseSession, serialize } from "./serialize.js";
import { keyValues, type EventRow, type ExpiryRow, type LoginRow, type LoginWrite } from "./statements.js";

/** How many rotations a save follows to the session's id now (each one more statement; a rotation takes a request). */
const MAX_ROTATIONS = 3;

/** A touch that writes: what it sends, and what it needs to remember the result. */
interface Touch {
  sent: Sent;
  keys: string[];
  loaded: Loaded | undefined;
  ua: string | null;
  ip: string | null;
  values: Record<string, unknown>;
}

/**
 * What the store does to a session's row: read it, save it (insert, update in place, merge), touch it,
 * end it. The express-session contract and its callbacks are the store's; the decisions that skip a
 * write are in rules.ts; the SQL in statements.ts.
 */
export class Writes {
  constructor(
    private readonly s: StoreContext,
    private readonly rotations: Rotations,
  ) {}

  /** Saves a session; the lifecycle events of its write are announced once it is done, even when a later step fails. */
  async save(sid: string, session: SessionData): Promise<void> {
    const events: Announcement[] = [];
    try {
      await this.saveWith(sid, session, events);
    } finally {
      this.s.events.own(events);
      // Lookups read the session where this write is sure to be seen (see Replicas.pin).
      this.s.replicas?.pin(this.s.keysOf(sid));
    }
  }

  private async saveWith(sid: string, session: SessionData, events: Announcement[], rotations = 0): Promise<void> {
    if (!isValidId(sid)) {
      throw new TypeError("connect-drizzle: a session id must be a well-formed string (express-session's ids always are)");
    }
    const sent = sentAt(this.s.now());
    const now = sent.wall;
    const target = expiryOf(session, now, this.s.options);
    const text = serialize(session, this.s.options.maxSize);
    const loaded = loadedAs(session, sid);
    // What this request changed over what it read: whether to write at all, and with `merge` what to write.
    const changes = loaded ? changesOf(loaded.text, text) : undefined;
    // A save that changed nothing is a touch (never a write of this request's view over another's change),
    // unless the row must be re-sealed (`encrypt`): then a merged save of the cookie alone does it.
    if (loaded && changes?.unchanged && !loaded.stale) {
      const touch = this.planTouch(sid, session);
      if (touch) await this.renew(sid, session, touch);
      return;
    }
    const { ua, ip } = requestMetadata(session);
    const keys = loaded ? [loaded.key] : this.s.keysOf(sid);
    // A save that changed the cookie alone (a new maxAge) writes it alone, in every mode: it cannot be
    // a conflict, and must not write this request's view of the other keys over another request's.
    const cookieOnly = changes !== undefined && changes.removed.length === 0 && Object.keys(changes.patch).every((key) => key === "cookie");
    const guarded = this.s.options.versioned && loaded !== undefined && !cookieOnly;
    const merged = changes !== undefined && (this.s.options.merge || cookieOnly);
    const userId = this.s.userIdOf(session);
    if (userId !== null) checkUserId(userId, this.s.sql.userIdType, "userId");
    const label = this.labelOf(session);
    const ownerChanged = loaded === undefined || userId !== this.ownerRead(loaded, changes?.before);
    // A session id rotated away from another that keeps its user is not a sign-in: it keeps the old time.
    const carried = loaded === undefined && userId !== null ? carriedSignIn(session, userId, (old) => this.ownerRead(old)) : undefined;
    // The login write: the session gains a user (a new session with one, or one whose user changed).
    const login = userId !== null && ownerChanged ? this.loginWrite(ip, carried === undefined) : undefined;
    const values = keyValues(keys, {
      // Only an insert gives the row a handle.
      handle: loaded ? undefined : newHandle(),
      // A merged save sets the owner and label columns only when its request changed them: another
      // request's change since (a sign-in as someone else) stays named by the columns as by the data.
      userId: merged && !ownerChanged ? null : userId,
      label: merged && label === this.labelOf(changes.before as unknown as SessionData) ? null : label,
      text: merged ? undefined : sealRow(this.s.sealer, keys[0]!, session, text),
      life: target - now,
      ua,
      ip,
      version: loaded?.version,
      carried: carried !== undefined,
      authenticated: carried?.at == null ? null : carried.at.db,
    });
    if (merged)
      Object.assign(
        values,
        mergeValues(this.s.sealer, this.s.options.encrypt?.acceptPlaintext === true, keys[0]!, changes.patch, changes.removed, loaded?.stale),
      );
    this.s.evict(keys);
    const cacheable = this.s.cache?.ticket();
    type Saved = { key: string; version?: number; data?: string } & ExpiryRow & LoginRow;
    let written: Saved | undefined;
    // With the cache, a merge returns the merged row (the cache must hold what the row holds).
    if (loaded) {
      const shape = merged ? this.s.sql.saveMerged(this.s.cache !== undefined, login, values.reseal !== undefined) : this.s.sql.saveLoaded(guarded, login);
      [written] = await this.saveRows<Saved>(shape, values, login, true);
      // The session got a new id since this request read it (rotateSession, renewAfter): save it there, once
      // per rotation (with `encrypt` the data is sealed for its key).
      const moved = written || rotations >= MAX_ROTATIONS ? undefined : await this.rotations.moved(loaded);
      if (moved !== undefined) {
        withLoaded(session, { ...loaded, key: moved });
        return this.saveWith(sid, session, events, rotations + 1);
      }
    } else {
      // A plain insert of a session with a user is a login too (authenticated now), with nothing else to do.
      const extras = login && (login.cap !== undefined || login.devices) ? login : undefined;
      const [inserted] = await this.saveRows<{ key: string; authenticated_at?: number | null } & LoginRow>(
        this.s.sql.insert(keys.length, extras),
        values,
        extras,
        false,
      );
      // A new row holds what was sent: the lifetime from the database's now (capped by absoluteTimeout), version 1.
      const absolute = this.s.options.absoluteTimeout ?? null;
      const authenticated = userId === null || carried?.at === null ? null : carried ? carried.at.mono - sent.mono : 0;
      if (inserted) written = { ...inserted, version: 1, expires: Math.min(target - now, absolute ?? Infinity), absolute, authenticated };
      // A set of an id the store did not load whose row exists: update it, unless it ended. That may make
      // an expired row of the user live again (or give a row its user): under a cap, as a login.
      else written = await this.saveExisting<Saved>(keys, values, session, text, userId === null ? undefined : this.existingLogin());
      if (inserted && (this.s.events.broadcasting || this.s.events.listens("created"))) {
        const row: EventRow = { handle: values.handle as string, user_id: userId, label, user_agent: ua, ip };
        events.push({ event: "created", args: [sessionEvent(row, true)] });
      }
      if (inserted) await this.recordRotation(session, sid);
    }
    if (!written) {
      if (guarded) await this.checkConflict(keys);
      return;
    }
    // The request's own view (what it read, plus what it wrote) is what its next save compares with; the
    // row may also hold other requests' keys after a merge: the cache gets the row's own data.
    const next: Loaded = {
      sid,
      key: written.key,
      handle: written.handle ?? loaded?.handle ?? (values.handle as string),
      text,
      version: Number(written.version ?? 0),
      ua: ua ?? loaded?.ua ?? null,
      ip: ip ?? loaded?.ip ?? null,
      ...localExpiry(written, sent, this.s.cache?.ttl ?? Infinity),
    };
    this.remember(session, next, cacheable, merged ? rowText(this.s.sealer, written.key, written.data) : text);
    if (login) {
      const handle = written.handle ?? (values.handle as string);
      events.push(...(await this.s.events.loggedIn(written, { handle, user_id: userId, label, user_agent: next.ua, ip: next.ip })));
    }
  }

  /**
   * What a login write does besides the write: with `maxSessionsPerUser`, the cap; with a `newDevice`
   * listener, the device check (not for a rotation, `signIn` false: the device is the one it was).
   */
  private loginWrite(ip: string | null, signIn: boolean): LoginWrite {
    return { cap: this.s.options.maxSessionsPerUser, devices: signIn && ip !== null && (this.s.options.broadcast || this.s.events.listens("newDevice")) };
  }

  /**
   * What a save of an existing row this store did not load does, with a user, besides the write: the cap
   * (it may make an expired row live again), not the device check (it may be no sign-in at all).
   */
  private existingLogin(): LoginWrite | undefined {
    const cap = this.s.options.maxSessionsPerUser;
    return cap === undefined ? undefined : { cap, devices: false };
  }

  /**
   * Runs a save's statement; a login write with a cap in one transaction, after its user's lock, so that
   * concurrent logins of one user each count the sessions the others left (in READ COMMITTED the write's
   * snapshot is taken after the lock was granted), and that a login the cap refuses rolls back. `changes`: it changes an existing row, whose key every
   * instance's cache is told of once it committed (an insert makes a row no instance can have cached).
   */
  private async saveRows<Row extends { key: string }>(
    shape: Shape,
    values: Record<string, unknown>,
    login: LoginWrite | undefined,
    changes: boolean,
  ): Promise<Row[]> {
    const after = changes ? (rows: Row[]) => this.s.changed(rows.map((row) => row.key)) : undefined;
    if (login?.cap === undefined) return this.s.exec.run<Row>(shape, values, after);
    const userId = values.userId as string;
    const rows = await this.s.exec.transaction(async (tx) => {
      await tx.query(this.s.sql.loginLock(userId, this.s.options.timeout));
      return refusedAtCap(await tx.run<Row & LoginRow>(shape, values));
    });
    await after?.(rows);
    return rows;
  }

  /**
   * The owner of the session a request read (or last saved), as the `user_id` column holds it; `read` is
   * its text already parsed, when the caller has it (a save's changesOf), so it is not parsed twice.
   */
  ownerRead(loaded: Loaded, read?: Record<string, unknown>): string | null {
    return this.s.userIdOf((read ?? JSON.parse(loaded.text)) as SessionData);
  }

  /**
   * Updates the existing row of a session id this store did not load (with `login`, as a login write: see
   * {@link saveRows}). With `encrypt` and several keys the sealed data must name the row's own key, which
   * is not known before: each key is tried in turn.
   */
  private async saveExisting<Row extends { key: string }>(
    keys: string[],
    values: Record<string, unknown>,
    session: SessionData,
    text: string,
    login: LoginWrite | undefined,
  ): Promise<Row | undefined> {
    if (!this.s.sealer || keys.length === 1) return (await this.saveRows<Row>(this.s.sql.saveExisting(keys.length, login), values, login, true))[0];
    for (const key of keys) {
      const [written] = await this.saveRows<Row>(
        this.s.sql.saveExisting(1, login),
        { ...values, k0: key, text: sealRow(this.s.sealer, key, session, text) },
        login,
        true,
      );
      if (written) return written;
    }
    return undefined;
  }

  /**
   * After a write: `next` becomes what this request compares its next save or touch with, and `row`, what
   * the row now holds (undefined: not known), is cached with the write's ticket: not if an eviction came
   * since it was sent (another instance may have ended the session right after this write, its NOTIFY
   * overtaking the reply).
   */
  private remember(session: SessionData, next: Loaded, cacheable: ((entry: Loaded) => void) | undefined, row: string | undefined): void {
    withLoaded(session, next);
    // Cached only if a read of the row would load it (a hit serves the text unchecked).
    if (cacheable && row !== undefined && parseSession(row)) cacheable(row === next.text ? next : { ...next, text: row });
  }

  /**
   * @fastify/session's `regenerate` ends the old session with a plain `destroy` (a logout), then saves the
   * new one while `request.session` is still the old session: with history, that end is recorded as
   * `rotated` when the old session held a user, as express-session's `regenerate` records it.
   */
  private async recordRotation(session: SessionData, sid: string): Promise<void> {
    if (this.s.options.retainEnded === 0) return;
    const previous = requestOf(session)?.session;
    if (previous === session || previous === null || typeof previous !== "object") return;
    const old = loadedUnderAnyId(previous);
    if (old && old.sid !== sid && this.s.userIdOf(previous) !== null) await this.s.exec.query(this.s.sql.rotated(old.key));
  }

  /** After a guarded save changed nothing: a conflict error, unless the session is no longer live (then nothing to save). */
  private async checkConflict(keys: string[]): Promise<void> {
    const [row] = await this.s.exec.query<{ live: unknown }>(this.s.sql.isLive(keys), true);
    if (row && isTrue(row.live)) {
      throw new SessionStoreError(
        "CONFLICT",
        "the session was changed by another request since this one read it; the change was not saved (reload the session and retry)",
      );
    }
  }

  /**
   * What a touch writes, or undefined when it writes nothing ({@link skipsWrite}). A row sealed under an
   * older secret (or in plaintext, with `acceptPlaintext`) is rewritten by the first touch that writes, as
   * a save rewrites it: a session that is only ever read is re-sealed too.
   */
  touch(sid: string, session: SessionData): (() => Promise<void>) | undefined {
    const planned = this.planTouch(sid, session);
    if (!planned) return undefined;
    return planned.loaded?.stale ? () => this.save(sid, session) : () => this.renew(sid, session, planned);
  }

  /**
   * Ends the session of `req` for express-session's `regenerate` (passport's login and logout): as
   * `rotated` while it still holds a user, as `logout` once the user was removed from it. The new session
   * the app fills for the same user carries this one's sign-in (see carriedSignIn).
   */
  async regenerate(req: any): Promise<void> {
    const owner = req.session ? this.s.userIdOf(req.session) : null;
    const old = req.session ? loadedAs(req.session, req.sessionID) : undefined;
    const rotated: Rotated | undefined = owner !== null && old && this.ownerRead(old) === owner ? { owner, at: signInOf(old) } : undefined;
    req[ROTATED] = rotated;
    await this.end(req.sessionID, owner !== null ? "rotated" : "logout");
  }

  /** What a touch writes, or undefined when it is skipped (the expiry is fresh and the device the same). */
  private planTouch(sid: string, session: SessionData): Touch | undefined {
    if (!isValidId(sid)) return undefined;
    const sent = sentAt(this.s.now());
    const now = sent.wall;
    const target = expiryOf(session, now, this.s.options);
    const loaded = loadedAs(session, sid);
    const { ua, ip } = requestMetadata(session);
    if (skipsWrite(loaded, { ua, ip }, target, now, this.s.options.touchAfter)) return undefined;
    // The touch writes only the cookie, but the row must stay within maxSize like any save.
    serialize(session, this.s.options.maxSize);
    const keys = loaded ? [loaded.key] : this.s.keysOf(sid);
    const cookie = session.cookie ?? {};
    const values = keyValues(keys, { life: target - now, cookie: JSON.stringify(cookie), ua, ip });
    if (this.s.sealer) values.tags = JSON.stringify(Object.fromEntries(keys.map((key) => [key, this.s.sealer!.cookieTag(key, cookie)])));
    return { sent, keys, loaded, ua, ip, values };
  }

  private async renew(sid: string, session: SessionData, { sent, keys, loaded, ua, ip, values }: Touch, rotations = 0): Promise<void> {
    this.s.evict(keys);
    let written: ({ key: string } & ExpiryRow) | undefined;
    try {
      // Touches that come together share a statement (coalesce.ts); each is announced to every cache before it resolves.
      written = await this.s.touches.call({ keys, values }, sent.mono);
    } finally {
      // Lookups read the session where this write is sure to be seen (see Replicas.pin).
      this.s.replicas?.pin(keys);
    }
    // The session got a new id since this request read it: renew it there (a shorter lifetime must be written).
    const moved = written || !loaded || rotations >= MAX_ROTATIONS ? undefined : await this.rotations.moved(loaded);
    if (moved !== undefined) {
      withLoaded(session, { ...loaded!, key: moved });
      const again = this.planTouch(sid, session);
      return again && this.renew(sid, session, again, rotations + 1);
    }
    // Not cached: the row may hold other requests' changes since this one read it, which a touch does not
    // read back (the next get caches the row as it is); this request's own view moves on.
    if (written && loaded)
      withLoaded(session, { ...loaded, ua: ua ?? loaded.ua, ip: ip ?? loaded.ip, ...localExpiry(written, sent, this.s.cache?.ttl ?? Infinity) });
  }

  /** Ends the session of `sid` for `reason`; `first`: the events of why it ended, announced before its `ended`. */
  async end(sid: string, reason: EndReason, first?: (rows: EventRow[]) => Announcement[]): Promise<boolean> {
    return isValidId(sid) && endSession(this.s, this.s.keysOf(sid), reason, first);
  }

  /** The number of live sessions. */
  async count(): Promise<number> {
    const [row] = await this.s.exec.query<{ n: number }>(this.s.sql.length(), true);
    return Number(row?.n ?? 0);
  }

  /** Deletes every row; the cache drops every session before and after (a read racing the delete may have cached one). */
  async clear(): Promise<void> {
    this.s.evict(["*"]);
    await this.s.exec.query(this.s.sql.clear(), true, () => this.s.changed(["*"]));
  }

  async loadAll(): Promise<Record<string, SessionData>> {
    const rows = await this.s.exec.query<{ handle: string; data: string; key: string }>(this.s.sql.all(), true);
    const result: Record<string, SessionData> = {};
    for (const row of rows) {
      const opened = openRow(this.s.sealer, row.key, row.data);
      if (typeof opened !== "string") result[row.handle] = opened.session;
    }
    return result;
  }

  private labelOf(session: SessionData): string | null {
    const label = this.s.options.label(session);
    return typeof label === "string" && label.length > 0 ? label.slice(0, 200) : null;
  }
}
