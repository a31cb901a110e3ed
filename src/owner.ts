import type { SessionData } from "express-session";
import { SessionStoreError } from "./errors.js";
import type { UserIdOf } from "./options.js";

/** The bounds of Postgres's integer (int4) and bigint (int8). */
const RANGES: Record<string, readonly [bigint, bigint]> = {
  integer: [-(2n ** 31n), 2n ** 31n - 1n],
  bigint: [-(2n ** 63n), 2n ** 63n - 1n],
};

const DIGITS = /^-?\d+$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * Whether a user id (as text) is a value of `user_id`'s SQL type (`getSQLType()` of the column): for
 * integer and bigint, decimal digits with an optional minus sign, within the type's range; for uuid, the
 * canonical form (8-4-4-4-12 hex digits, any case). Any other type takes anything. Stricter than
 * Postgres's own input (which also takes `+7`, ` 7 `, `{...}` uuids), so that what is sent is never refused.
 */
export function fitsUserIdType(value: string, type: string): boolean {
  const range = RANGES[type];
  if (range) {
    if (!DIGITS.test(value)) return false;
    const n = BigInt(value);
    return n >= range[0] && n <= range[1];
  }
  return type === "uuid" ? UUID.test(value) : true;
}

/**
 * Checks a user id before any statement sends it, so that one that does not fit `user_id`'s type fails
 * here, saying what to do, rather than in Postgres, whose error quotes the value. `source` is where it
 * came from: `userId` (the store's option, from a session) or the records method it was passed to. The
 * value is never in the error.
 * @returns the value
 * @throws SessionStoreError (code `INVALID_USER_ID`)
 */
export function checkUserId(value: string, type: string, source: string): string {
  if (fitsUserIdType(value, type)) return value;
  if (source === "userId") {
    throw new SessionStoreError(
      "INVALID_USER_ID",
      `the user id found by the \`userId\` option does not fit the column's type ${type}; the session was not saved. ` +
        `Return your users' ${type} ids from \`userId\`, or if they are of another type change \`userIdType\` in createSessionTable ` +
        "and migrate the table",
    );
  }
  throw new SessionStoreError(
    "INVALID_USER_ID",
    `${source} got a user id that does not fit the column's type ${type}; pass an id of that type (as the store's \`userId\` option finds it), ` +
      "or if your users' ids are of another type change `userIdType` in createSessionTable and migrate the table",
  );
}

/**
 * The owner `userId` finds in a session, as the `user_id` column holds it: a string (numbers and bigints
 * converted), or null for an anonymous session.
 * @throws SessionStoreError (code `UNSERIALIZABLE`) when `userId` throws
 */
export function sessionOwner(userId: UserIdOf, session: SessionData): string | null {
  let id: unknown;
  try {
    id = userId(session);
  } catch (error) {
    throw new SessionStoreError("UNSERIALIZABLE", "the `userId` option threw while reading the session", { cause: error });
  }
  return typeof id === "string" || typeof id === "number" || typeof id === "bigint" ? String(id) : null;
}
