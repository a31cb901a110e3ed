import { kindOf } from "./check.js";

/**
 * Why a session ended, as recorded in `end_reason`: `logout` (destroy, or regenerate of an anonymous
 * session), `revoked` (revoke, revokeUser), `expired` (reaped), `rotated` (regenerate of a logged-in
 * session: the user goes on in a new one), `evicted` (ended by `maxSessionsPerUser` when its user signed
 * in once more than the cap allows, or had an expired session revalidated by `extend`: the least
 * recently used session goes), `reused` (an id the
 * session was rotated away from came back after its grace window: the cookie was copied), `binding` (used
 * from another browser family or operating system than its own, with `onBindingChange: "end"`).
 */
export type EndReason = (typeof END_REASONS)[number];

/**
 * Every {@link EndReason}, the one list of them: the type is derived from it, `revoke` and `revokeUser`
 * check a `reason` against it at run time, and the table's CHECK constraint on `end_reason` (src/schema.ts)
 * refuses any other.
 */
export const END_REASONS = ["logout", "revoked", "expired", "rotated", "evicted", "reused", "binding"] as const;

/**
 * Checks that `reason` is an {@link EndReason}.
 * @param what the argument, for the message: "revoke's `reason`"
 * @throws TypeError naming the allowed reasons
 */
export function checkEndReason(reason: unknown, what: string): asserts reason is EndReason {
  if (!(END_REASONS as readonly unknown[]).includes(reason)) {
    throw new TypeError(`connect-drizzle: ${what} must be one of ${END_REASONS.map((r) => `"${r}"`).join(", ")} (got ${kindOf(reason)})`);
  }
}
