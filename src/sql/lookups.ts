import { sql, type SQL } from "drizzle-orm";
import type { Shape } from "../executor.js";
import { NOW } from "../clock.js";
import { arrayOf, Fragments, keyParams } from "./fragments.js";

/**
 * The lookups of sessions by id (the store's `get`): one session's row, or the rows of many at once for
 * lookups that come together (coalesce.ts). Shaped: values `k0`, `k1`, ... are the row keys of one id.
 *
 * A session id opens its row under its current key, or under a key the session was rotated away from
 * (`previous_keys`): that row comes back with `prior`, true while the old id is within its grace window,
 * false after it (the old cookie was copied: see the store's `detectReuse`). A row found under its current
 * key has `prior` null. The current key is looked up first, and the old ones only when it found nothing.
 */
export class LookupStatements extends Fragments {
  /**
   * The live row of a session id, under any of its `n` keys (one per secret), with its key. Only the
   * columns the store uses: the version only with `versioned`. `replica`: as read from a replica (see
   * replicas.ts), with `fresh`.
   */
  get(n: number, replica = false): Shape {
    return this.shape(
      `get:${n}:${replica}`,
      (v) => {
        const t = this.t;
        const keys = sql.join(keyParams(n, v), sql`, `);
        const old = this.keyArray(keyParams(n, v));
        // On a replica, also whether it has replayed the primary's WAL up to `floor` (a pg_lsn as text).
        const fresh = replica ? sql`, coalesce(pg_last_wal_replay_lsn() >= ${v("floor")}::text::pg_lsn, false) as fresh` : sql``;
        // The second branch runs only when the first found nothing (the outer limit stops the append). It has
        // no limit of its own (an old key is one row's at most): with one, the planner's guess of how many rows
        // match `?|` made a scan of the table that stops at the first match look cheaper than the index.
        return sql`select * from ((select ${this.sessionColumns()}, null::boolean as prior${fresh} from ${t} where ${t.key} in (${keys}) and ${this.live()} limit 1)
        union all (select ${this.sessionColumns()}, ${this.inGrace(old)} as prior${fresh} from ${t} where ${this.rotatedFrom(old, true)} and ${this.live()})) as found
        limit 1`;
      },
      true,
    );
  }

  /**
   * The live rows of several session ids at once (coalesced lookups, see coalesce.ts), each with its
   * `key` and the key it was asked for (`matched`: {@link anyKey}).
   */
  getMany(): Shape {
    return this.shape(
      "get:many",
      (v) => {
        const t = this.t;
        const keys = v("keys");
        const old = arrayOf(keys);
        return sql`select ${this.sessionColumns()}, ${t.key} as matched, null::boolean as prior from ${t} where ${this.anyKey(keys)} and ${this.live()}
        union all select ${this.sessionColumns()}, p.key as matched, p.value::timestamptz > ${NOW} as prior from ${t}, jsonb_each_text(${t.previousKeys}) p
          where ${this.rotatedFrom(old, true)} and p.key = any(${old}) and ${this.live()}`;
      },
      true,
    );
  }

  /** What a lookup reads of a session's row ({@link SessionRow}): the version only with `versioned`. */
  private sessionColumns(): SQL {
    const t = this.t;
    const version = this.settings.versioned ? sql`, ${t.version} as version` : sql``;
    // `olds`: the keys it was rotated away from (a JSON object, null for a session never rotated), for the cache.
    return sql`${t.key} as key, ${t.handle} as handle, ${t.data}::text as data, ${this.expiryColumns()}, ${t.userAgent} as ua, ${t.ip} as ip, ${t.previousKeys}::text as olds${version}`;
  }
}
