import { createHash } from "node:crypto";
import { sql, type SQL } from "drizzle-orm";
import { lifetime, NOW } from "../clock.js";
import type { Shape } from "../executor.js";
import type { EndReason } from "../reasons.js";
import { COOKIE_TAG } from "../seal.js";
import { col, insertRow, keyParams, msOf } from "./fragments.js";
import { RotationStatements } from "./rotation.js";
import type { LoginWrite } from "./rows.js";

/** How far back the `newDevice` check looks for the user's rows from the same device, and how many it reads. */
const DEVICE_WINDOW = "30 days";
const DEVICE_ROWS = 50;

/** Up to how many names a merged save removes keys with jsonb's own `-` (see WriteStatements' withoutKeys). */
const FEW_NAMES = 16;

/**
 * The statements of the express-session contract (get, save, touch, destroy and the rest), of a login's
 * writes and of the locks that serialize them, and the store's NOTIFYs.
 */
export class WriteStatements extends RotationStatements {
  /** The first key of the advisory lock that serializes one user's logins (the second is the user's). */
  private readonly loginLockKey = createHash("sha256").update(`login:${this.tableName}`).digest().readInt32BE(0);

  // --- The express-session contract (shaped: values `k0`, `k1`, ... are the row keys of one session id)

  /**
   * Saves the session a request loaded (`k0` is the row's key): an update, only while the row is live, so
   * a request still in flight when its session ended (or expired, or was reaped) never brings it back.
   * `guarded` (the `versioned` option): only while the row's version is still `version`.
   */
  saveLoaded(guarded: boolean, login?: LoginWrite): Shape {
    return this.shape(
      `save:loaded:${guarded}${loginKey(login)}`,
      (v) => {
        const t = this.t;
        const guard = guarded ? sql` and ${t.version} = ${v("version")}::int` : sql``;
        return this.loadedUpdate(v, this.changes(v), guard, this.saved(), login);
      },
      !guarded,
    );
  }

  /**
   * The update of a loaded session's row `k0` while it is live (and `where`); with `login` (the session
   * gains a user) it is authenticated now, returns the handle too, and does what goes with a login
   * ({@link login}).
   */
  private loadedUpdate(v: (name: string) => SQL, set: SQL, where: SQL, returning: SQL, login: LoginWrite | undefined): SQL {
    const t = this.t;
    const authenticated = login ? sql`, ${col(t.authenticatedAt)} = ${NOW}` : sql``;
    const update = sql`update ${t} set ${set}${authenticated} where ${t.key} = ${v("k0")} and ${this.live()}${where}${this.applied()} ${returning}`;
    return login ? this.login(update, v, login) : update;
  }

  /**
   * Saves the changes of a session a request loaded (`k0` is the row's key), applied to what the row holds
   * now, in this one statement and only while the row is live, like {@link saveLoaded}: the top-level keys
   * named in `removed` (a JSON array of names) are deleted, then those of `patch` (a JSON object) are set,
   * so two requests that change different keys of one session both keep their change. `withData` returns
   * the row's merged data (`data`) for the read cache, which must hold what the row holds.
   */
  saveMerged(withData: boolean, login?: LoginWrite, reseal = false): Shape {
    return this.shape(
      `save:merged:${withData}:${reseal}${loginKey(login)}`,
      (v) => {
        const t = this.t;
        const merged = sql`${this.withoutKeys(sql`${t.data}`, v("removed"))} || ${v("patch")}::text::jsonb`;
        const data = reseal ? this.resealed(merged, v("reseal")) : merged;
        const returned = withData ? sql`, ${t.data}::text as data` : sql``;
        return this.loadedUpdate(
          v,
          this.changes(v, data),
          sql`
        and jsonb_typeof(${t.data}) = 'object'`,
          sql`${this.saved()}${returned}`,
          login,
        );
      },
      true,
    );
  }

  /**
   * `data` without the top-level keys named in `names` (a JSON array parameter). jsonb's own `-` compares
   * every key with every name, so a save that removes many keys of a large session would cost their
   * product: past a few names, the keys left are gathered through a hashed lookup instead, in time linear
   * in the session's size.
   */
  private withoutKeys(data: SQL, names: SQL): SQL {
    const list = sql`jsonb_array_elements_text(${names}::text::jsonb)`;
    return sql`(case when jsonb_array_length(${names}::text::jsonb) <= ${sql.raw(String(FEW_NAMES))} then ${data} - array(select ${list})
      else (select coalesce(jsonb_object_agg(e.key, e.value), '{}'::jsonb) from jsonb_each(${data}) e where e.key not in (select ${list})) end)`;
  }

  /**
   * `data` with the entries of `reseal` (a JSON array of `{ old, was, new, value }`: see StaleEntry in
   * seal.ts) re-sealed: each entry `old` still holding exactly `was` is removed and, when `new` is given,
   * stored again as `new` = `value`. An entry changed or removed since it was read is left as the row has it.
   */
  private resealed(data: SQL, reseal: SQL): SQL {
    const items = sql`jsonb_to_recordset(${reseal}::text::jsonb) r(old text, was jsonb, new text, value jsonb)`;
    // One pass over the row's keys (a rotation re-seals every entry of a session: no per-pair comparison).
    return sql`(select coalesce(jsonb_object_agg(x.k, x.v), '{}'::jsonb) from (select ${data} as b) d, lateral (
        select e.key as k, e.value as v from jsonb_each(d.b) e where not exists (select 1 from ${items} where r.old = e.key and r.was = e.value)
        union all
        select r.new, r.value from ${items} where r.new is not null and d.b -> r.old = r.was and d.b -> r.new is null
      ) x)`;
  }

  /**
   * Inserts a session id this store did not load (a new session). It sends no cache NOTIFY: no instance
   * can have cached a row that did not exist. Nothing is inserted when a row of the id exists (under any
   * of its `n` keys): then {@link saveExisting}.
   */
  insert(n: number, login?: LoginWrite): Shape {
    return this.shape(
      `insert:${n}${loginKey(login)}`,
      (v) => {
        const t = this.t;
        const absolute = this.settings.absoluteTimeout;
        const created = absolute === undefined ? sql`null::timestamptz` : lifetime(absolute);
        // JSON text goes in as text, then jsonb: postgres.js would JSON-encode a string sent as a jsonb
        // parameter (again), and drizzle-orm 1.0 no longer tells it not to.
        const { columns, row } = insertRow(t, {
          key: v("k0"),
          handle: v("handle"),
          userId: this.userId(v("userId")),
          label: sql`${v("label")}::text`,
          data: sql`${v("text")}::text::jsonb`,
          expiresAt: sql`least(${lifetime(v("life"))}, ${created})`,
          absoluteExpiresAt: created,
          createdAt: NOW,
          lastSeenAt: NOW,
          userAgent: sql`${v("ua")}::text`,
          ip: sql`${v("ip")}::text`,
          authenticatedAt: sql`case when ${v("userId")}::text is null then null when ${v("carried")}::boolean then to_timestamp(${v("authenticated")}::float8 / 1000) else ${NOW} end`,
        });
        const values =
          n > 1
            ? sql`select ${row} where not exists (select 1 from ${t} where ${this.byKeys(keyParams(n, v).slice(1))})${this.applied()}`
            : this.settings.applied
              ? sql`select ${row} where true${this.applied()}`
              : sql`values (${row})`;
        // Only the key comes back: the new row's expiry and version are what was sent (see SessionStore.save),
        // and it was authenticated now when it has a user.
        const insert = sql`insert into ${t} (${columns}) ${values} on conflict (${col(t.key)}) do nothing returning ${t.key} as key, ${msOf(t.authenticatedAt)} as authenticated_at`;
        return login && (login.cap !== undefined || login.devices) ? this.login(insert, v, login) : insert;
      },
      true,
    );
  }

  /**
   * A login write (`write`, an insert or an update of the session's row `k0` that gives it the user
   * `userId`, ending in `returning`) with what goes with it, in the same statement: with a `cap`, what
   * its policy does ({@link atCap}): the user's least recently used other live sessions beyond it end as
   * `evicted` (as a revoke ends them: deleted, or kept as history), only if the write wrote; or, with
   * `whenFull: "refuse"`, `refused` tells that the user had `limit` other live sessions already, unless
   * the written row was one of the user's live sessions before (it makes none more); with `devices`, the
   * user agents of the user's other rows from the same `ip` active within the last 30 days (live,
   * expired, or ended history), at most 50. The other rows are as they were before this statement, so
   * the cap counts them before the new row exists, and the device check sees the rows it ends.
   * Run with a cap under {@link loginLock}, so that two logins of one user see each other's rows.
   */
  private login(write: SQL, v: (name: string) => SQL, { cap, devices }: LoginWrite): SQL {
    const t = this.t;
    const owner = sql`${t.userId} = ${this.userId(v("userId"))}`;
    // The written row (under whichever of the session's keys) is never one of the user's others.
    const user = sql`${owner} and ${t.key} not in (select key from written)`;
    const ctes = [sql`written as (${write})`];
    const columns = [sql`written.*`];
    if (cap !== undefined) {
      const wrote = sql`exists (select 1 from written)`;
      // This statement's snapshot holds the written row as it was before: a set of one of the user's live sessions adds none.
      const added = sql`${wrote} and not exists (select 1 from ${t} where ${t.key} in (select key from written) and ${owner} and ${this.live()})`;
      const { cte, column } = this.atCap(user, cap, cap.whenFull === "refuse" ? added : wrote);
      ctes.push(cte);
      columns.push(column);
    }
    if (devices) {
      ctes.push(sql`seen as (select ${t.userAgent} as ua from ${t} where ${user} and ${t.ip} = ${v("ip")}::text
        and ${t.lastSeenAt} > ${NOW} - interval '${sql.raw(DEVICE_WINDOW)}' limit ${sql.raw(String(DEVICE_ROWS))})`);
      columns.push(sql`(select coalesce(json_agg(ua), '[]')::text from seen) as seen`);
    }
    return sql`with ${sql.join(ctes, sql`, `)} select ${sql.join(columns, sql`, `)} from written`;
  }

  /**
   * Takes the lock that serializes the login writes of one user (with `maxSessionsPerUser`), for the rest
   * of the transaction, and bounds that transaction's waits in the database by `timeout` ms: a login
   * given up on by the app never goes on to write. The lock is keyed on the id as a value of `user_id`'s
   * type, written back as text (its canonical form), so that every spelling Postgres reads as one id
   * (`007` and `7`, a uuid in upper or lower case) takes one lock, as the count compares typed values.
   */
  loginLock(userId: string, timeout: number): SQL {
    return sql`${this.limits(timeout)} select ${this.userLock(this.userId(userId))} from limits`;
  }

  /**
   * {@link loginLock} for the owner of the not yet ended session `handle` (`owner`: only if it is that
   * user's), if it has one; returns the owner (`owner`, as text) of the row it locked for. The row's
   * `user_id` written as text is the canonical form a login locks on.
   */
  ownerLock(handle: string, owner: string | undefined, timeout: number): SQL {
    const t = this.t;
    return sql`${this.limits(timeout)} select ${t.userId}::text as owner, ${this.userLock(sql`${t.userId}`)}
      from ${t}, limits where ${t.handle} = ${handle} and ${t.endedAt} is null and ${t.userId} is not null${this.owned(owner)}`;
  }

  /**
   * Takes one user's lock for the rest of the transaction, from a value of `user_id`'s type: keyed on its
   * canonical text, so that every spelling of one id ("A0EE..." and "a0ee...", "7" and "007") is one lock.
   */
  private userLock(typedUserId: SQL): SQL {
    return sql`pg_advisory_xact_lock(${this.loginLockKey}::int4, hashtext((${typedUserId})::text))`;
  }

  /** The `with` that bounds the rest of the transaction's waits in the database by `timeout` ms (as a CTE `limits`). */
  private limits(timeout: number): SQL {
    const ms = `${Math.ceil(timeout)}ms`;
    return sql`with limits as materialized (select set_config('lock_timeout', ${ms}, true), set_config('statement_timeout', ${ms}, true))`;
  }

  /**
   * Saves a session id this store did not load whose row exists (a direct `store.set` of a known id, or
   * a row keyed under an older secret): an update, unless the row ended, which is never revived (an
   * expired one is: it is live again). With `login` (a session with a user, under `maxSessionsPerUser`)
   * it also does what goes with a login ({@link login}), the handle returned, since it may make a session
   * of the user live.
   */
  saveExisting(n: number, login?: LoginWrite): Shape {
    return this.shape(
      `save:existing:${n}${loginKey(login)}`,
      (v) => {
        const t = this.t;
        const update = sql`update ${t} set ${this.changes(v)} where ${this.byKeys(keyParams(n, v))} and ${t.endedAt} is null${this.applied()} ${this.saved()}`;
        return login ? this.login(update, v, login) : update;
      },
      true,
    );
  }

  /**
   * Renews a live session's expiry and writes its cookie (`cookie`, JSON) and device, nothing else. With
   * `tagged` (`encrypt`), the cookie's tag too (`tags`: a JSON object of each row key's tag).
   */
  touch(n: number, tagged = false): Shape {
    return this.shape(
      `touch:${n}:${tagged}`,
      (v) => {
        const tag = sql`${v("tags")}::text::jsonb -> ${this.t.key}`;
        const values = { life: v("life"), cookie: sql`${v("cookie")}::text::jsonb`, ua: sql`${v("ua")}::text`, ip: sql`${v("ip")}::text`, tag };
        return this.touching(values, sql``, this.byKeys(keyParams(n, v)), tagged);
      },
      true,
    );
  }

  /**
   * {@link touch} of many sessions at once (coalesced touches, see coalesce.ts): `rows` is a JSON array of
   * `{ key, life, cookie, ua, ip, tag }`, one per row key, each with its own values.
   */
  touchMany(tagged = false): Shape {
    return this.shape(
      `touch:many:${tagged}`,
      (v) => {
        const from = sql` from jsonb_to_recordset(${v("rows")}::text::jsonb) as r(key text, life float8, cookie text, ua text, ip text, tag text)`;
        const values = { life: sql`r.life`, cookie: sql`r.cookie::jsonb`, ua: sql`r.ua`, ip: sql`r.ip`, tag: sql`to_jsonb(r.tag)` };
        return this.touching(values, from, sql`${this.t.key} = r.key`, tagged);
      },
      true,
    );
  }

  /** The update of a touch: the expiry, the cookie (with its tag when `tagged`) and the device, of the live rows `where` picks. */
  private touching(values: { life: SQL; cookie: SQL; ua: SQL; ip: SQL; tag: SQL }, from: SQL, where: SQL, tagged: boolean): SQL {
    const t = this.t;
    const absoluteAt = this.absoluteExpiry();
    const cookie = sql`jsonb_set(${t.data}, '{cookie}', ${values.cookie})`;
    const data = tagged ? sql`${cookie} || jsonb_build_object(${COOKIE_TAG}::text, ${values.tag})` : cookie;
    return sql`update ${t} set ${col(t.expiresAt)} = least(${lifetime(values.life)}, ${absoluteAt}),
          ${col(t.absoluteExpiresAt)} = ${absoluteAt}, ${col(t.lastSeenAt)} = ${NOW}, ${col(t.data)} = ${data},
          ${col(t.userAgent)} = coalesce(${values.ua}, ${t.userAgent}), ${col(t.ip)} = coalesce(${values.ip}, ${t.ip})${from}
        where ${where} and ${this.live()}
          and jsonb_typeof(${t.data}->'cookie') = 'object'${this.applied()} ${this.changed()}, ${this.expiryColumns()}`;
  }

  /**
   * Ends the session of a session id for `reason` (destroy, regenerate), under its current key (then
   * {@link endRotated}); `record`: it also returns the ended row's {@link EventRow} (a listener of `ended`,
   * or `broadcast`, wants it). Without, it is the plain statement.
   */
  end(n: number, record = false): Shape {
    return this.shape(record ? `end:${n}:record` : `end:${n}`, (v) => this.ending(v("reason"), this.byKeys(keyParams(n, v)), record), true);
  }

  /**
   * {@link end} of the sessions of many ids at once, for one `reason` (coalesced ends, see coalesce.ts;
   * `keys`: {@link anyKey}).
   */
  endMany(record = false): Shape {
    return this.shape(`end:many:${record}`, (v) => this.ending(v("reason"), this.anyKey(v("keys")), record), true);
  }

  /**
   * Ends the session a session id's `keys` were rotated away from, whenever (a sign-out with an old cookie
   * still ends it): what an end does when {@link end} found nothing under the current key. Apart, so that
   * the hot path's end is a lookup of the primary key alone (in one statement with the old keys' `?|`,
   * the planner may scan the table).
   */
  endRotated(keys: string[], reason: EndReason, record: boolean): SQL {
    return this.ending(reason, this.rotatedFrom(this.keyArray(keys), true), record);
  }

  /**
   * Records the end of a row with history as a rotation rather than a logout (@fastify/session's
   * regenerate ends the old session with a plain destroy). Ended rows are never cached: no NOTIFY.
   */
  rotated(key: string): SQL {
    const t = this.t;
    return sql`update ${t} set ${col(t.endReason)} = 'rotated' where ${t.key} = ${key} and ${t.endReason} = 'logout'${this.applied()}`;
  }

  /** After a guarded save changed nothing: whether the row is still live (then it was a conflict). */
  isLive(keys: string[]): SQL {
    return sql`select ${this.live()} as live from ${this.t} where ${this.byKeys(keys)}`;
  }

  /** Every live session's handle, data and key. */
  all(): SQL {
    const t = this.t;
    return sql`select ${t.handle} as handle, ${t.data}::text as data, ${t.key} as key from ${t} where ${this.live()}`;
  }

  /** The number of live sessions, as `n`. */
  length(): SQL {
    return sql`select count(*)::int as n from ${this.t} where ${this.live()}`;
  }

  /** Deletes every row (the store then evicts every instance's whole cache: `*`). */
  clear(): SQL {
    return sql`delete from ${this.t} where true${this.applied()}`;
  }

  /**
   * With `broadcast`, the NOTIFY of an operation's lifecycle events, sealed by the store (SQL cannot seal
   * them, so they leave after the write, in this one statement), one notification per payload in order.
   * The payloads go as one JSON array text parameter, which every driver sends alike.
   */
  broadcast(payloads: readonly string[]): SQL {
    return sql`select pg_notify(${this.eventsChannel}, p) from json_array_elements_text(${JSON.stringify(payloads)}::text::json) p`;
  }

  /**
   * The NOTIFY that evicts sessions from every instance's cache (see invalidation.ts): one notification per
   * row key of `keys` (a JSON array), committed without waiting for its WAL flush (a one-time filter sets
   * the transaction's `synchronous_commit` to off: its notifications are delivered at commit, and are lost
   * on a crash only with the LISTEN connections that would hear them).
   */
  invalidate(): Shape {
    return this.shape(
      "invalidate",
      (v) => sql`select pg_notify(${this.channel}, k) from jsonb_array_elements_text(${v("keys")}::text::jsonb) k
        where (select set_config('synchronous_commit', 'off', true)) is not null`,
      true,
    );
  }

  /** A NOTIFY on a channel: the cache's (the default), or `broadcast`'s (a LISTEN's probe). */
  notify(payload: string, channel: string = this.channel): SQL {
    return sql`select pg_notify(${channel}, ${payload})`;
  }

  /**
   * What a save writes into an existing row: `data` (the whole session sent as `text`, by default), and the
   * columns. A null `userId` or `label` leaves the column as it is (a merged save sends them only when its
   * request changed them, so that the columns keep naming what the row's data names).
   */
  private changes(v: (name: string) => SQL, data: SQL = sql`${v("text")}::text::jsonb`): SQL {
    const t = this.t;
    const absoluteAt = this.absoluteExpiry();
    // The owner survives the user being removed from the data, so the record of a logout stays in the
    // user's history (passport's logout saves the session without the user, then regenerates it).
    return sql`${col(t.data)} = ${data}, ${col(t.userId)} = coalesce(${this.userId(v("userId"))}, ${t.userId}),
      ${col(t.label)} = coalesce(${v("label")}::text, ${t.label}), ${col(t.expiresAt)} = least(${lifetime(v("life"))}, ${absoluteAt}),
      ${col(t.absoluteExpiresAt)} = ${absoluteAt}, ${col(t.lastSeenAt)} = ${NOW},
      ${col(t.userAgent)} = coalesce(${v("ua")}::text, ${t.userAgent}), ${col(t.ip)} = coalesce(${v("ip")}::text, ${t.ip}), ${col(t.version)} = ${t.version} + 1`;
  }

  /** The `returning` of a save (the version only with `versioned`, the only use of it). */
  private saved(): SQL {
    const version = this.settings.versioned ? sql`, ${this.t.version} as version` : sql``;
    return sql`${this.changed()}, ${this.t.handle} as handle, ${this.expiryColumns()}${version}`;
  }
}

/** The part of a shape's cache key that tells its login variant. */
function loginKey(login: LoginWrite | undefined): string {
  return login ? `:login:${login.cap ? `${login.cap.limit}:${login.cap.whenFull}` : ""}:${login.devices}` : "";
}
