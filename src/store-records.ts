import { Store } from "express-session";
import type { EndReason, ExtendOptions, Records, RevokeOptions, SessionQuery, SessionRecord, UserId } from "./records.js";

/**
 * The records API of {@link SessionStore} (list, count, handleOf, revoke, revokeUser, extend), which it
 * inherits from here: each method documented, and delegated to `Records` (records.ts). Kept apart so that
 * store.ts holds the express-session contract.
 */
export abstract class StoreRecords extends Store {
  /** The records API: list, count, revoke, extend. @internal */
  protected abstract readonly records: Records;

  /**
   * A user's sessions as records, newest activity first.
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  list(query: SessionQuery): Promise<SessionRecord[]> {
    return this.records.list(query);
  }

  /**
   * How many sessions of a user match (same filter as `list`, without the limit).
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  count(query: SessionQuery): Promise<number> {
    return this.records.count(query);
  }

  /** The public handle of a live session id (to mark "this device"), or `null`. */
  handleOf(sessionId: string): Promise<string | null> {
    return this.records.handleOf(sessionId);
  }

  /**
   * Ends a session by its handle, at once: this store no longer serves it when the promise resolves, and
   * no instance reads it from the database again. Scoped to an owner (`{ userId }`, so a user can never
   * end someone else's session by guessing a handle) or explicitly to any owner (`{ anyOwner: true }`).
   * @returns whether a session was ended
   * @throws TypeError when the scope is missing, `userId` is `undefined` or `null`, or `reason` is not an {@link EndReason}
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  revoke(handle: string, options: RevokeOptions): Promise<boolean> {
    return this.records.revoke(handle, options);
  }

  /**
   * Ends every session of a user ("log out everywhere", e.g. after a password change), or every one but
   * `except` ("log out other devices"): session ids or handles, one or a list.
   * @returns how many sessions were ended
   * @throws TypeError when `userId` is not a string, number or bigint, or `reason` is not an {@link EndReason}
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type
   */
  revokeUser(userId: UserId, options: { except?: string | readonly string[]; reason?: EndReason } = {}): Promise<number> {
    return this.records.revokeUser(userId, options);
  }

  /**
   * Sets a new idle expiry for a session (longer or shorter), scoped like {@link revoke}. It also
   * revalidates a session that expired but is not yet reaped; an ended session stays ended. The expiry
   * never passes the absolute expiry unless `beyondAbsolute` is set, which moves the absolute expiry too.
   * `until` is read on this server's clock, as a lifetime from now.
   *
   * With `maxSessionsPerUser`, revalidating an expired session is a login for the cap: the session is
   * kept, and its owner's least recently used other live sessions beyond the cap end as `evicted` (each
   * announced as `ended`, and dropped from every instance's cache), under the owner's login lock, in the
   * same transaction; with `whenFull: "refuse"` and the owner at the limit, it fails with a
   * `SessionStoreError` of code `SESSION_LIMIT` and changes nothing. Extending a live session ends nothing.
   * @returns whether a session was changed
   * @throws TypeError when `until` is not a valid Date, or the scope is missing
   * @throws SessionStoreError `INVALID_USER_ID` when `userId` does not fit the `user_id` column's type;
   * `SESSION_LIMIT` when `maxSessionsPerUser` refuses the revalidation
   */
  extend(handle: string, until: Date, options: ExtendOptions): Promise<boolean> {
    return this.records.extend(handle, until, options);
  }
}
