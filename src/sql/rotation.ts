import { sql, type SQL } from "drizzle-orm";
import { lifetime, millis, NOW } from "../clock.js";
import type { Shape } from "../executor.js";
import { col, keyParams } from "./fragments.js";
import { LookupStatements } from "./lookups.js";

/** What one {@link RotationStatements.rotation} statement does. */
export interface RotationKind {
  /** Gives the session the new id `new` (a key), the old one opening it for `grace` ms more. */
  rotate: boolean;
  /** Records a re-authentication: `authenticated_at` now, and the idle expiry from now. */
  reauth: boolean;
  /** With `reauth` and an `absoluteTimeout`: the absolute expiry from now too. */
  restart: boolean;
  /** Writes `data` (the row re-sealed for its new key, `encrypt`), only while the row still holds `was`. */
  sealed: boolean;
}

/**
 * The statements that give a session a new id and record re-authentications, each one statement on the
 * session's row: what `rotateSession`, `renewAfter` and `markAuthenticated` send.
 */
export class RotationStatements extends LookupStatements {
  /**
   * Rotates and/or re-authenticates the live session of an id (`k0`, `k1`, ...: its keys, one per
   * secret). A rotation adds the key it had to `previous_keys`, with the end of its grace window, and
   * starts from the current key only (an id already rotated away from is not rotated again, which would
   * fork the cookie the browser keeps); a re-authentication alone also from an old id
   * within its grace window. The new idle expiry is `life` ms from now, or with `life` null the idle span
   * the row had (its expiry minus its last use), capped by the absolute expiry. Returns the row's key and
   * handle, its expiries, device and (with `versioned`) version.
   */
  rotation(n: number, kind: RotationKind): Shape {
    const { rotate, reauth, restart, sealed } = kind;
    return this.shape(
      `rotation:${n}:${rotate}:${reauth}:${restart}:${sealed}`,
      (v) => {
        const t = this.t;
        const keys = keyParams(n, v);
        const set = [];
        if (rotate) {
          // Every id it had stays known (reuse of any of them is theft), each with its own grace window.
          const until = sql`${NOW} + ${millis(v("grace"))}`;
          set.push(sql`${col(t.key)} = ${v("new")}::text, ${col(t.rotatedAt)} = ${NOW}`);
          set.push(sql`${col(t.previousKeys)} = coalesce(${t.previousKeys}, '{}'::jsonb) || jsonb_build_object(${t.key}, ${until})`);
        }
        if (reauth) {
          const absolute = this.settings.absoluteTimeout;
          const absoluteAt = restart && absolute !== undefined ? lifetime(absolute) : this.absoluteExpiry();
          const idle = sql`coalesce(${lifetime(v("life"))}, ${NOW} + (${t.expiresAt} - ${t.lastSeenAt}))`;
          set.push(sql`${col(t.authenticatedAt)} = ${NOW}, ${col(t.lastSeenAt)} = ${NOW}, ${col(t.absoluteExpiresAt)} = ${absoluteAt}`);
          set.push(sql`${col(t.expiresAt)} = least(${idle}, ${absoluteAt})`);
        }
        if (sealed) set.push(sql`${col(t.data)} = ${v("data")}::text::jsonb`);
        const which = rotate ? this.byKeys(keys) : this.byId(keys);
        const unchanged = sealed ? sql` and ${t.data} = ${v("was")}::text::jsonb` : sql``;
        const version = this.settings.versioned ? sql`, ${t.version} as version` : sql``;
        return sql`update ${t} set ${sql.join(set, sql`, `)} where ${which} and ${this.live()}${unchanged}${this.applied()}
          returning ${t.key} as key, ${t.handle} as handle, ${this.expiryColumns()}, ${t.userAgent} as ua, ${t.ip} as ip${version}`;
      },
      true,
    );
  }

  /** The key the live session `handle` has now (for a save of a request that loaded it before a rotation). */
  currentKey(handle: string): SQL {
    const t = this.t;
    return sql`select ${t.key} as key from ${t} where ${t.handle} = ${handle} and ${this.live()}`;
  }
}
