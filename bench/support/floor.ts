import session, { type SessionData } from "express-session";
import type pg from "pg";

/**
 * The floor: the least a Postgres session store can do, as named prepared statements (`{ name, text,
 * values }`) on a pg Pool, on a table with the same essentials as connect-drizzle's (text primary key,
 * jsonb data, timestamptz expiry). No hashing, no change detection, no metadata; the session id is
 * the key and pg parses the jsonb.
 */
export class RawPg {
  private readonly text: { get: string; set: string; touch: string; destroy: string };

  constructor(
    private readonly pool: pg.Pool,
    table: string,
  ) {
    this.text = {
      get: `select data, expires_at from ${table} where key = $1 and expires_at > now()`,
      set: `insert into ${table} (key, data, expires_at) values ($1, $2::jsonb, $3::timestamptz)
        on conflict (key) do update set data = excluded.data, expires_at = excluded.expires_at`,
      touch: `update ${table} set expires_at = $2::timestamptz where key = $1`,
      destroy: `delete from ${table} where key = $1`,
    };
  }

  async get(sid: string): Promise<SessionData | null> {
    const result = await this.pool.query({ name: "floor_get", text: this.text.get, values: [sid] });
    return (result.rows[0]?.data as SessionData | undefined) ?? null;
  }

  async set(sid: string, sess: SessionData): Promise<void> {
    await this.pool.query({
      name: "floor_set",
      text: this.text.set,
      values: [sid, JSON.stringify(sess), expiresOf(sess)],
    });
  }

  async touch(sid: string, sess: SessionData): Promise<void> {
    await this.pool.query({ name: "floor_touch", text: this.text.touch, values: [sid, expiresOf(sess)] });
  }

  async destroy(sid: string): Promise<void> {
    await this.pool.query({ name: "floor_destroy", text: this.text.destroy, values: [sid] });
  }
}

function expiresOf(sess: SessionData): string {
  const expires = (sess as any)?.cookie?.expires;
  const at = expires == null ? NaN : new Date(expires).getTime();
  return new Date(Number.isFinite(at) ? at : Date.now() + 86_400_000).toISOString();
}

/**
 * The floor as an express-session store, for the HTTP level. Its touch is a no-op, so a read request
 * costs exactly one SELECT: the lower bound for any Postgres store, connect-drizzle's target shape.
 */
export class RawPgStore extends session.Store {
  constructor(readonly raw: RawPg) {
    super();
  }
  get(sid: string, cb: (err: any, session?: SessionData | null) => void): void {
    this.raw.get(sid).then((s) => cb(null, s), cb);
  }
  set(sid: string, sess: SessionData, cb?: (err?: any) => void): void {
    this.raw.set(sid, sess).then(
      () => cb?.(),
      (e) => cb?.(e),
    );
  }
  destroy(sid: string, cb?: (err?: any) => void): void {
    this.raw.destroy(sid).then(
      () => cb?.(),
      (e) => cb?.(e),
    );
  }
  override touch(_sid: string, _sess: SessionData, cb?: () => void): void {
    cb?.();
  }
}
