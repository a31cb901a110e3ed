import { sql, type SQL } from "drizzle-orm";
import type { Shape } from "../executor.js";
import { Fragments, keyParams } from "./fragments.js";

/**
 * The lookups of sessions by id (the store's `get`): one session's row, or the rows of many at once for
 * lookups that come together (coalesce.ts). Shaped: values `k0`, `k1`, ... are the row keys of one id.
 */
export class LookupStatements extends Fragments {
  /**
   * The live row of a session id, under any of its `n` keys (one per secret). Only the columns the store
   * uses: the key only when there are several (with one it is the caller's), the version only with
   * `versioned`. `replica`: as read from a replica (see replicas.ts), with `fresh`.
   */
  get(n: number, replica = false): Shape {
    return this.shape(
      `get:${n}:${replica}`,
      (v) => {
        const t = this.t;
        const key = n > 1 ? sql`${t.key} as key, ` : sql``;
        // On a replica, also whether it has replayed the primary's WAL up to `floor` (a pg_lsn as text).
        const fresh = replica ? sql`, coalesce(pg_last_wal_replay_lsn() >= ${v("floor")}::text::pg_lsn, false) as fresh` : sql``;
        return sql`select ${key}${this.sessionColumns()}${fresh}
        from ${t} where ${this.byKeys(keyParams(n, v))} and ${this.live()} limit 1`;
      },
      true,
    );
  }

  /**
   * The live rows of several session ids at once (coalesced lookups, see coalesce.ts), each with its
   * `key` ({@link anyKey}).
   */
  getMany(): Shape {
    return this.shape(
      "get:many",
      (v) => {
        const t = this.t;
        return sql`select ${t.key} as key, ${this.sessionColumns()} from ${t} where ${this.anyKey(v("keys"))} and ${this.live()}`;
      },
      true,
    );
  }

  /** What a lookup reads of a session's row ({@link SessionRow} but its key): the version only with `versioned`. */
  private sessionColumns(): SQL {
    const t = this.t;
    const version = this.settings.versioned ? sql`, ${t.version} as version` : sql``;
    return sql`${t.data}::text as data, ${this.expiryColumns()}, ${t.userAgent} as ua, ${t.ip} as ip${version}`;
  }
}
