import type { SessionData } from "express-session";
import type { StoreContext } from "./context.js";
import { SessionStoreError } from "./errors.js";
import { isValidId } from "./hash.js";
import { withLoaded, type Loaded } from "./loaded.js";
import { localExpiry, sentAt } from "./rules.js";
import { openRow } from "./seal.js";
import { keyValues, type SessionRow } from "./statements.js";

/**
 * Loads a live session (the store's `get` after a cache miss): its row from a replica or, coalesced
 * with the lookups that come together, the primary (coalesce.ts); opened (with `encrypt`), checked, and
 * cached with the ticket taken before it was asked for. `null` when it is missing, expired, ended or
 * corrupt (a corrupt row is reported).
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
  const key = row.key ?? keys[0]!;
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
    text: opened.text,
    version: Number(row.version ?? 0),
    ua: row.ua,
    ip: row.ip,
    ...localExpiry(row, sent, s.cache?.ttl ?? Infinity),
  };
  if (opened.stale) loaded.stale = opened.stale;
  cacheable?.(loaded);
  return withLoaded(opened.session, loaded);
}
