import { describeDevice } from "./device.js";
import { isTrue } from "./driver.js";
import { refusedAtCap } from "./errors.js";
import type { StoreContext } from "./context.js";
import { isValidId } from "./hash.js";
import { checkUserId } from "./owner.js";
import { checkEndReason, type EndReason } from "./reasons.js";
import type { SessionCapOptions } from "./options.js";
import type { EventRow, ListCursor, LoginRow, RecordRow, SessionStatus } from "./statements.js";

export type { EndReason } from "./reasons.js";
export type { SessionStatus } from "./statements.js";

/**
 * A user id as the records API takes it: what the store's `userId` option returns. It is matched by its
 * string form (`42`, `42n` and `"42"` are one user), as saves store it, and must fit the `user_id`
 * column's type (else a `SessionStoreError` of code `INVALID_USER_ID`).
 */
export type UserId = string | number | bigint;

/** A session as a record, for a "your devices" page or an audit view. Never holds the session id. */
export interface SessionRecord {
  /** Public, stable identifier, safe in a page or URL; pass it to `revoke` or `extend`. Not a session id. */
  handle: string;
  userId: string | null;
  status: SessionStatus;
  createdAt: Date;
  lastSeenAt: Date;
  /** Idle expiry (renewed by activity, every `touchAfter` at most). */
  expiresAt: Date;
  absoluteExpiresAt: Date | null;
  /** The session's display name, from the store's `label` option (default: `session.label`). */
  label: string | null;
  userAgent: string | null;
  /** "Firefox on Linux": the browser family and operating system of `userAgent` ({@link describeDevice}). */
  device: string | null;
  ip: string | null;
  endedAt: Date | null;
  endReason: EndReason | null;
  /**
   * When its user last proved who they are in it: the login that gave it the user, or the latest
   * `store.markAuthenticated`. Null for a session that never had a user.
   */
  authenticatedAt: Date | null;
  /** Whether this is the session of `current` passed to `list` (mark "this device"). */
  current: boolean;
  /** Its place in `list`'s order: pass the last record's as `after` for the next page. Opaque. */
  cursor: string;
}

/**
 * Whose session `revoke` and `extend` may change: the owner's own (`{ userId }`, for a "your devices"
 * page: a guessed handle of someone else's session changes nothing), or any session (`{ anyOwner: true }`,
 * for admin tools). There is no default: a `userId` that is `undefined` or `null` is a TypeError, never an
 * unscoped call.
 */
export type OwnerScope = { userId: UserId; anyOwner?: never } | { anyOwner: true; userId?: never };

/** Options of {@link SessionStore.revoke}. */
export type RevokeOptions = OwnerScope & {
  /** Recorded as the end reason; one of the {@link EndReason}s (another is a TypeError). @default "revoked" */
  reason?: EndReason;
};

/** Options of {@link SessionStore.extend}. */
export type ExtendOptions = OwnerScope & {
  /** Move the absolute expiry too, when `until` is past it. @default false (the expiry stops at the absolute one) */
  beyondAbsolute?: boolean;
};

/** Which sessions `list` and `count` return. */
export interface SessionQuery {
  /** The owner, as found by the store's `userId` option (numbers match their string form). Required. */
  userId: UserId;
  /** @default "active" */
  status?: SessionStatus | "all";
  /** A session id (e.g. `req.sessionID`) whose record gets `current: true`. */
  current?: string;
  /** Most records returned, newest activity first (ended ones: newest end first), at most 1,000. @default 100 */
  limit?: number;
  /**
   * The next page: the records after this one in the order, given as the `cursor` of the last record of
   * the previous page (`list` only). Keyset paging: no record is ever on two pages. A session used (or
   * ended) between two pages moves ahead in the order, to a page already shown, so the later pages leave
   * it out; every other session that stays in the query is on exactly one page.
   * @default undefined (the first page)
   */
  after?: string;
}

/** The most records one `list` call returns; page with `after` for more. */
const MAX_LIST_LIMIT = 1_000;

/**
 * The records API of {@link SessionStore} (list, count, handleOf, revoke, revokeUser, extend): argument
 * checks and scoping here, the SQL in {@link Statements}. Documented on the store's methods.
 */
export class Records {
  constructor(private readonly s: StoreContext) {}

  async list(query: SessionQuery): Promise<SessionRecord[]> {
    const { userId, limit, current } = this.checkQuery(query, "list");
    const after = query.after === undefined ? undefined : cursorOf(query.after);
    const keys = current === undefined ? undefined : this.s.keysOf(current);
    const rows = await this.s.run("list", () => this.s.exec.query<RecordRow>(this.s.sql.list(userId, query.status, keys, limit, after), true), { userId });
    return rows.map(toRecord);
  }

  async count(query: SessionQuery): Promise<number> {
    const { userId } = this.checkQuery(query, "count");
    const [row] = await this.s.run("count", () => this.s.exec.query<{ n: number }>(this.s.sql.count(userId, query.status), true), { userId });
    return Number(row?.n ?? 0);
  }

  async handleOf(sessionId: string): Promise<string | null> {
    if (!isValidId(sessionId)) return null;
    const [row] = await this.s.run("handleOf", () => this.s.exec.query<{ handle: string }>(this.s.sql.handleOf(this.s.keysOf(sessionId)), true));
    return row?.handle ?? null;
  }

  async revoke(handle: string, options: RevokeOptions): Promise<boolean> {
    const owner = this.scopedOwner(options, "revoke");
    const reason = options.reason ?? "revoked";
    checkEndReason(reason, "revoke's `reason`");
    if (typeof handle !== "string" || handle.length === 0) return false;
    const record = this.s.events.recordsEnds();
    const rows = await this.s.run("revoke", () => this.s.write<{ key: string } & EventRow>(this.s.sql.revoke(handle, reason, owner, record), true), {
      handle,
    });
    this.forgetEverySession();
    if (record) this.s.events.ended(rows, reason);
    return rows.length > 0;
  }

  async revokeUser(userId: UserId, options: { except?: string | readonly string[]; reason?: EndReason } = {}): Promise<number> {
    if (!isUserId(userId)) throw new TypeError("connect-drizzle: revokeUser needs a user id (a string, number or bigint)");
    const reason = options.reason ?? "revoked";
    checkEndReason(reason, "revokeUser's `reason`");
    const owner = this.checked(String(userId), "revokeUser");
    const kept = options.except === undefined ? [] : typeof options.except === "string" ? [options.except] : [...options.except];
    const keys = kept.flatMap((id) => this.s.keysOf(id));
    const record = this.s.events.recordsEnds();
    const statement = this.s.sql.revokeUser(owner, reason, keys, kept, record);
    const rows = await this.s.run("revokeUser", () => this.s.write<{ key: string } & EventRow>(statement, true), { userId: owner });
    this.forgetEverySession();
    if (record) this.s.events.ended(rows, reason);
    return rows.length;
  }

  /**
   * Forgets every session this store's cache holds (and reads them from the primary for a while), after an
   * end that found its sessions by handle or user: a session another instance ended first, before that
   * statement began or while it waited for the row, is not among its rows, so its key is not known here, and
   * that instance's NOTIFY can reach this one after this call resolves; until then the cache would serve a
   * session this call was to end. (A sign-out through an old id evicts that key, which the cache maps to the
   * session's current one: ReadCache.alias.)
   */
  private forgetEverySession(): void {
    this.s.evict(["*"]);
  }

  async extend(handle: string, until: Date, options: ExtendOptions): Promise<boolean> {
    const at = until instanceof Date ? until.getTime() : NaN;
    if (!Number.isFinite(at)) throw new TypeError("connect-drizzle: extend(handle, until, { userId }) needs a valid Date");
    const owner = this.scopedOwner(options, "extend");
    if (typeof handle !== "string" || handle.length === 0) return false;
    const { sql: statements } = this.s;
    const { maxSessionsPerUser: cap, timeout } = this.s.options;
    const extend = (capped?: { cap: Required<SessionCapOptions>; owner: string | null }) =>
      statements.extend(handle, at - this.s.now(), new Date(at).toISOString(), options.beyondAbsolute === true, owner, capped);
    if (cap === undefined) return (await this.s.run("extend", () => this.s.write(extend()), { handle })).length > 0;
    // Revalidating an expired session makes it live again, as a login does: under its owner's lock, so
    // that the cap counts what that user's logins leave, and they count it.
    const [row] = await this.s.run(
      "extend",
      () =>
        this.s.exec.transaction(async (tx) => {
          const [locked] = await tx.query<{ owner: string }>(statements.ownerLock(handle, owner, timeout));
          return refusedAtCap(await tx.query<{ key: string } & LoginRow>(extend({ cap, owner: locked?.owner ?? null })));
        }),
      { handle },
    );
    this.s.events.own(await this.s.events.afterEvictions(row ? [row.key] : [], row?.evicted));
    return row !== undefined;
  }

  private checkQuery(query: SessionQuery, method: string): { userId: string; limit: number; current?: string } {
    if (!query || !isUserId(query.userId)) {
      throw new TypeError("connect-drizzle: list/count need { userId } (a string, number or bigint)");
    }
    const limit = query.limit ?? 100;
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_LIMIT) {
      throw new TypeError(
        `connect-drizzle: \`limit\` must be an integer from 1 to ${MAX_LIST_LIMIT}; for more records, page with \`after\` (the last record's \`cursor\`)`,
      );
    }
    return { userId: this.checked(String(query.userId), method), limit, current: typeof query.current === "string" ? query.current : undefined };
  }

  /** The owner a scoped call is limited to, or `undefined` for `{ anyOwner: true }`. */
  private scopedOwner(options: OwnerScope | undefined, method: string): string | undefined {
    const scope: any = options;
    if (scope !== null && typeof scope === "object" && "userId" in scope) {
      if (!isUserId(scope.userId)) {
        throw new TypeError(
          `connect-drizzle: ${method}(handle, { userId }) got userId ${String(scope.userId)}: pass the signed-in user's id, ` +
            "or { anyOwner: true } to act on any user's session",
        );
      }
      return this.checked(String(scope.userId), method);
    }
    if (scope?.anyOwner === true) return undefined;
    throw new TypeError(
      `connect-drizzle: ${method} needs a scope: { userId } for the owner's own session, or { anyOwner: true } for any session (admin tools)`,
    );
  }

  /** A user id passed to `method`, checked against `user_id`'s type before any statement sends it. */
  private checked(userId: string, method: string): string {
    return checkUserId(userId, this.s.sql.userIdType, method);
  }
}

function isUserId(value: unknown): value is UserId {
  return typeof value === "string" || typeof value === "number" || typeof value === "bigint";
}

/** The position a record's `cursor` names; a TypeError for anything that is not one. */
function cursorOf(cursor: unknown): ListCursor {
  let position: unknown;
  try {
    position = typeof cursor === "string" && cursor.length <= 200 ? JSON.parse(Buffer.from(cursor, "base64url").toString("utf8")) : undefined;
  } catch {
    position = undefined;
  }
  if (
    !Array.isArray(position) ||
    position.length !== 2 ||
    !Number.isSafeInteger(position[0]) ||
    typeof position[1] !== "string" ||
    !/^[\w-]{1,64}$/.test(position[1])
  ) {
    throw new TypeError("connect-drizzle: `after` is not a record's `cursor`; pass the `cursor` of the last record of the previous page");
  }
  return { at: position[0], handle: position[1] };
}

function toRecord(row: RecordRow): SessionRecord {
  const date = (ms: number | null) => (ms === null || ms === undefined ? null : new Date(Number(ms)));
  return {
    handle: row.handle,
    userId: row.user_id,
    status: row.status,
    createdAt: date(row.created_at)!,
    lastSeenAt: date(row.last_seen_at)!,
    expiresAt: date(row.expires_at)!,
    absoluteExpiresAt: date(row.absolute_expires_at),
    label: row.label,
    userAgent: row.user_agent,
    device: describeDevice(row.user_agent),
    ip: row.ip,
    endedAt: date(row.ended_at),
    endReason: row.end_reason,
    authenticatedAt: date(row.authenticated_at),
    current: isTrue(row.current),
    cursor: Buffer.from(JSON.stringify([Number(row.sort_at), row.handle])).toString("base64url"),
  };
}
