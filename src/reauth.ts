import type { IncomingMessage, ServerResponse } from "node:http";
import type { SessionData } from "express-session";
import { checkOptions, is, type OptionChecks } from "./check.js";
import type { StoreContext } from "./context.js";
import { reauthenticationRequired, SessionStoreError } from "./errors.js";
import { loadedAs, loadedUnderAnyId, MINTED, requestOf, ROTATED, signInOf, type Loaded, type Rotated, type SignIn } from "./loaded.js";

/*
 * Re-authentication (sudo mode): when a session's user last proved who they are, and the middleware that
 * guards sensitive routes with it. Neither sends a query: both read what the store loaded for the request.
 */

/** Options of {@link SessionStore.requireRecentLogin}. */
export interface RequireRecentLoginOptions<Req = IncomingMessage, Res = ServerResponse> {
  /**
   * Answers a request whose sign-in is not recent enough (or that has no signed-in session of this
   * store) instead, e.g. with a redirect to a page that asks for the password again.
   * @default undefined (`next(err)` with a `SessionStoreError` of code `REAUTHENTICATION_REQUIRED`, `status` 401)
   */
  onStale?: (req: Req, res: Res, next: (err?: unknown) => void) => void;
}

/** Every option of {@link RequireRecentLoginOptions} with its check. */
export const RECENT_LOGIN_OPTIONS: OptionChecks<RequireRecentLoginOptions> = { onStale: is.function("(req, res, next) => void") };

/** When the user of a session this store loaded last authenticated (see SessionStore.authenticatedAt). */
export function signedInAt(session: unknown, s: Pick<StoreContext, "now" | "userIdOf">, ownerRead: (loaded: Loaded) => string | null): Date | null {
  const loaded = loadedUnderAnyId(session);
  if (!loaded || loaded.authenticatedAt === null) return null;
  const owner = s.userIdOf(session as SessionData);
  return owner !== null && owner === ownerRead(loaded) ? new Date(s.now() - (performance.now() - loaded.authenticatedAt)) : null;
}

/** The middleware of SessionStore.requireRecentLogin, for `store`. */
export function recentLoginGuard<Req extends IncomingMessage, Res extends ServerResponse>(
  store: { authenticatedAt(session: unknown): Date | null },
  now: () => number,
  maxAge: number,
  options: RequireRecentLoginOptions<Req, Res>,
): (req: Req, res: Res, next: (err?: unknown) => void) => void {
  if (typeof maxAge !== "number" || !(maxAge > 0) || !Number.isFinite(maxAge)) {
    throw new TypeError(`connect-drizzle: requireRecentLogin(maxAge) needs a positive number of milliseconds, e.g. 600_000 (got ${String(maxAge)})`);
  }
  checkOptions(options, RECENT_LOGIN_OPTIONS, "requireRecentLogin");
  const { onStale } = options;
  return (req, res, next) => {
    let at: Date | null;
    try {
      const { session, sessionID, sessionStore } = req as { session?: SessionData; sessionID?: string; sessionStore?: unknown };
      const ours = sessionStore === store && session !== undefined && typeof sessionID === "string" && loadedAs(session, sessionID) !== undefined;
      at = ours ? store.authenticatedAt(session) : null;
    } catch (error) {
      return next(error);
    }
    if (at !== null && at.getTime() >= now() - maxAge) return next();
    if (onStale) return onStale(req, res, next);
    next(reauthenticationRequired(maxAge));
  };
}

/**
 * The sign-in a new session carries over from the session its request gave up for it (express-session's
 * `regenerate`, then the data copied back; @fastify/session's `regenerate(keys)`): the time its user last
 * authenticated (null: never), when that session had the same user. Undefined otherwise: a session that
 * gains a user it did not have is a sign-in.
 */
export function carriedSignIn(session: SessionData, userId: string, ownerRead: (loaded: Loaded) => string | null): { at: SignIn | null } | undefined {
  const minted: Rotated | null | undefined = (session as any)[MINTED];
  if (minted !== undefined) return { at: minted !== null && minted.owner === userId ? minted.at : null };
  const req = requestOf(session);
  const rotated: Rotated | undefined = req?.[ROTATED];
  if (rotated !== undefined) return rotated.owner === userId ? { at: rotated.at } : undefined;
  // @fastify/session saves the new session while request.session is still the old one.
  const previous = req?.session;
  if (previous === session || previous === null || typeof previous !== "object") return undefined;
  const old = loadedUnderAnyId(previous);
  return old && ownerRead(old) === userId ? { at: signInOf(old) } : undefined;
}

/**
 * SessionStore.mint: stores `data` under the new id `sid` as a session minted from `from`, keeping its
 * sign-in only when it has the same user; ends it again when `from` ended meanwhile.
 */
export async function mintFrom(
  store: { set(sid: string, session: SessionData): Promise<void>; handleOf(sid: string): Promise<string | null> },
  s: Pick<StoreContext, "run" | "userIdOf">,
  liveKey: (handle: string) => Promise<string | undefined>,
  writes: { ownerRead(loaded: Loaded): string | null; end(sid: string, reason: "revoked"): Promise<boolean> },
  sid: string,
  data: object,
  from: unknown,
): Promise<string> {
  const loaded = from === undefined || from === null ? undefined : loadedUnderAnyId(from);
  const owner = loaded ? s.userIdOf(from as SessionData) : null;
  const minted: Rotated | null = loaded && owner !== null && writes.ownerRead(loaded) === owner ? { owner, at: signInOf(loaded) } : null;
  Object.defineProperty(data, MINTED, { value: minted, enumerable: false });
  await store.set(sid, data as SessionData);
  // Live by its handle: the request's id may have been rotated away from since (the session goes on).
  if (loaded && (await s.run("mint", () => liveKey(loaded.handle))) === undefined) {
    await s.run("mint", () => writes.end(sid, "revoked"));
    throw new SessionStoreError(
      "REAUTHENTICATION_REQUIRED",
      "the session minting a new one has ended (signed out, revoked or expired meanwhile), so nothing was minted; sign in again",
      { status: 401 },
    );
  }
  const handle = await store.handleOf(sid);
  if (handle === null) throw new Error("connect-drizzle: the minted session was not stored (is its maxAge positive?)");
  return handle;
}
