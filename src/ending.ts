import type { EndedRow } from "./coalesce.js";
import type { StoreContext } from "./context.js";
import type { Announcement } from "./events.js";
import type { EndReason } from "./reasons.js";
import type { EventRow } from "./statements.js";

/**
 * Ends the live session of a session id's `keys` (one per secret; its current key or the one it was
 * rotated away from) for `reason`: out of this store's cache before and after (a read or write of this
 * store that overlapped the end may have cached it), announced to every instance's cache before it
 * resolves, and told as an `ended` event (after `first`'s events: why it ended). Ends that come together
 * share a statement (coalesce.ts).
 * @returns whether a session was ended
 */
export async function endSession(s: StoreContext, keys: readonly string[], reason: EndReason, first?: (rows: EventRow[]) => Announcement[]): Promise<boolean> {
  s.evict(keys);
  const record = first !== undefined || s.events.recordsEnds();
  const rows = (await s.ends.end(keys, reason, record, performance.now())) as Array<EndedRow & EventRow>;
  s.evict(keys);
  if (record) s.events.ended(rows, reason, first?.(rows));
  return rows.length > 0;
}
