import type { SessionData } from "express-session";
import type { StoreContext } from "./context.js";
import { SessionStoreError } from "./errors.js";
import { isTrue } from "./driver.js";
import { endSession } from "./ending.js";
import { isValidId } from "./hash.js";
import { withLoaded, type Loaded } from "./loaded.js";
import { localExpiry, sentAt } from "./rules.js";
import { openRow } from "./seal.js";
import { keyValues, type SessionRow } from "./statements.js";

/**
 * Loads a live session (the store's `get` after a cache miss): its row from a replica or, coalesced
 * with the lookups that come together, the primary (coalesce.ts); opened (with `encrypt`), checked, and
 * cached with the ticket taken before it was asked for. `null` when it is missing, expired, ended or
 * corrupt (a corrupt row is reported). Through the id it was rotated away from, within its grace window,
 * it is loaded but not cached; after it, with `detectReuse`, it ends (see {@link reused}).
 * @throws SessionStoreError `SESSION_REUSED` (status 401) for an id rotated away from, used after its grace window
 */
export async function readSession(s: StoreContext, sid: string): Promise<SessionData | null> {
  if (!isValidId(sid)) return null;
  const sent = sentAt(s.now());
  const keys = s.keysOf(sid);
  const cacheable = s.cache?.ticket();
  // Replicas decide per lookup; on the primary, lookups that come together share a statement (coalesce.ts).
  const row = s.replicas
    ? (await s.replicas.read<SessionRow>(keys, s.sql.get(keys.length, true), s.sql.get(keys.length), keyValues(keys, {})))[0]
    : await s.lookups.call({ keys }, sent.mono);
  if (!row) return null;
  const key = row.key;
  // An id the session was rotated away from, back after its grace window: a copy of the cookie.
  if (row.prior !== null && !isTrue(row.prior)) return reused(s, key);
  const opened = openRow(s.sealer, key, row.data);
  if (typeof opened === "string") {
    s.report(
      new SessionStoreError("CORRUPT_ROW", `session row ${key.slice(0, 8)}… in ${s.sql.tableName} holds no valid session (${opened}); treated as missing`),
    );
    return null;
  }
  const loaded: Loaded = {
    sid,
    key,
    handle: row.handle,
    text: opened.text,
    version: Number(row.version ?? 0),
    ua: row.ua,
    ip: row.ip,
    ...localExpiry(row, sent, s.cache?.ttl ?? Infinity),
  };
  if (opened.stale) loaded.stale = opened.stale;
  // The keys it was rotated away from lead to it in the cache too (a sign-out through one of them evicts it).
  if (s.cache && row.olds) s.cache.alias(Object.keys(JSON.parse(row.olds) as Record<string, string>), key);
  if (row.prior !== null) loaded.previous = true;
  else cacheable?.(loaded);
  return withLoaded(opened.session, loaded);
}

/**
 * An id the session `key` was rotated away from came back after its grace window: the old cookie or token
 * was copied, and one of its two holders is not the user. With `detectReuse` the session ends everywhere
 * (reason `reused`, an `ended` event), and this lookup fails with `SESSION_REUSED`; without it the id opens
 * nothing, like an unknown one.
 */
async function reused(s: StoreContext, key: string): Promise<null> {
  if (!s.options.detectReuse) return null;
  await endSession(s, [key], "reused");
  throw new SessionStoreError(
    "SESSION_REUSED",
    "this session id had been replaced by a newer one and was used after its grace window, so a copy of the cookie or token is in use; " +
      "the session was ended everywhere: ask the user to sign in again",
    { status: 401 },
  );
}
