import type { EndedRow } from "./coalesce.js";
import type { StoreContext } from "./context.js";
import type { Announcement } from "./events.js";
import type { EndReason } from "./reasons.js";
import type { EventRow } from "./statements.js";

/**
 * Ends the live session of a session id's `keys` (one per secret; its current key or one it was
 * rotated away from) for `reason`: out of this store's cache before and after (a read or write of this
 * store that overlapped the end may have cached it), announced to every instance's cache before it
 * resolves, and told as an `ended` event (after `first`'s events: why it ended). Ends that come together
 * share a statement (coalesce.ts). `rotated`: when nothing has the keys, look for a session rotated away
 * from them (false: the id was never a stored session's, so one statement is enough).
 * @returns whether a session was ended
 */
export async function endSession(
  s: StoreContext,
  keys: readonly string[],
  reason: EndReason,
  first?: (rows: EventRow[]) => Announcement[],
  rotated = true,
): Promise<boolean> {
  s.evict(keys);
  const record = first !== undefined || s.events.recordsEnds();
  let rows = (await s.ends.end(keys, reason, record, performance.now())) as Array<EndedRow & EventRow>;
  // Nothing under its current key: an id the session was rotated away from ends it too (one more statement, for such ids only).
  if (rows.length === 0 && rotated) rows = await s.write<EndedRow & EventRow>(s.sql.endRotated([...keys], reason, record), true);
  s.evict(keys);
  if (record) s.events.ended(rows, reason, first?.(rows));
  return rows.length > 0;
}
