import { randomBytes } from "node:crypto";
import type { SessionData } from "express-session";
import { loadedAs, withLoaded, type Loaded } from "./loaded.js";
import type { Rotations } from "./rotate.js";

/*
 * A session's new id within a request: the request's session is given the new id (express-session's
 * `req.session` and `req.sessionID`, @fastify/session's `request.session`), so that its response sends the
 * new cookie (or header token), and a request still in flight with the old id does not send that id back.
 */

/** What a store lends its requests' rotations: its rotations and `renewAfter`. */
interface Rotator {
  rotations: Rotations;
  renewAfter: number | undefined;
}

const rotators = new WeakMap<object, Rotator>();

/** Marks a request that went through {@link rotationHook}: rotating it is safe. */
const HOOKED = Symbol("connect-drizzle.rotation");

/** Lets the requests of `store` rotate (called by the store's constructor). @internal */
export function registerRotator(store: object, rotator: Rotator): void {
  rotators.set(store, rotator);
}

/** A request's session, whichever framework, and how to give it a new id. */
interface RequestSession {
  store: unknown;
  sid: string;
  session: SessionData;
  /** Gives the request's session the id `sid` (with what the store wrote, when it was stored). */
  replace(sid: string, loaded: Loaded | undefined): void;
  /** Keeps the request's response from sending the id it came with, when `rotated()` holds as it is sent. */
  keepIdOut(res: any, rotated: () => boolean): void;
}

/**
 * Gives the session of a request (express-session's `req`, through `sessionMiddleware` or not;
 * @fastify/session's `request`) a new id, keeping its data, its record (handle, owner, created-at,
 * history) and its absolute expiry, in one statement. The response carries the new cookie (or header
 * token); the old id still opens the session for `rotationGrace` (requests already in flight neither fail
 * nor fork it), and after it, with `detectReuse`, ends it as `reused`. A session not stored yet just
 * takes the new id. Call it when the user's privileges change (a sign-in on an existing session, a role
 * change); for a re-authentication call `store.markAuthenticated(req)`, which also rotates.
 *
 * Needs the store's rotation hook on every request (`sessionMiddleware` has it; after plain
 * express-session `app.use(store.rotation())`; with @fastify/session `app.addHook("preHandler", store.rotation())`).
 * @returns whether the session has a new id: false when it ended or expired, or was rotated already by another request
 * @throws TypeError when `req` has no session of a connect-drizzle store, or did not go through the rotation hook
 */
export async function rotateSession(req: unknown): Promise<boolean> {
  return rotateRequest(req, false);
}

/** {@link rotateSession}, with `reauth` as a re-authentication too (see the store's `markAuthenticated`). @internal */
export async function rotateRequest(req: unknown, reauth: boolean): Promise<boolean> {
  const found = requestSession(req);
  const rotator = found && rotators.get(found.store as object);
  if (!found || !rotator) {
    throw new TypeError("connect-drizzle: rotating needs a request with an express-session or @fastify/session session of a connect-drizzle store");
  }
  if ((req as any)[HOOKED] !== true) {
    throw new TypeError(
      "connect-drizzle: rotating a session needs the store's rotation hook on every request, or a request still in flight with the old " +
        'cookie sends it back: app.use(store.rotation()) after express-session, app.addHook("preHandler", store.rotation()) with ' +
        "@fastify/session (sessionMiddleware has it)",
    );
  }
  const newSid = randomBytes(24).toString("base64url");
  if (!loadedAs(found.session, found.sid)) {
    // Never stored: its id opens nothing yet, so it just takes the new one (a re-authentication needs a session).
    if (reauth) return false;
    found.replace(newSid, undefined);
    return true;
  }
  // A re-authentication restarts the idle clock: the cookie's expiry from now (express-session's and @fastify/session's touch).
  if (reauth) (found.session as { touch?: () => void }).touch?.();
  const next = await rotator.rotations.rotate(found.sid, newSid, found.session, reauth);
  if (next) found.replace(newSid, next);
  // Through the id it was rotated away from (within its grace window) a re-authentication still counts.
  else if (reauth) return rotator.rotations.markAuthenticated(found.sid);
  return next !== undefined;
}

/**
 * The store's rotation hook (`store.rotation()`), as an Express middleware and a @fastify/session
 * `preHandler` hook: with `renewAfter`, gives a session whose id is older than that a new one; and keeps
 * the response of a request that came with an id the session was rotated away from (within its grace
 * window) from sending that id back, which would undo the rotation in the browser.
 */
export function rotationHook(store: object): (req: any, res: any, next: (err?: any) => void) => void {
  return (req, res, next) => {
    const found = requestSession(req);
    const rotator = rotators.get(store);
    if (!found || found.store !== store || !rotator) return next();
    req[HOOKED] = true;
    const loaded = loadedAs(found.session, found.sid);
    // Read through an id rotated away from (within its grace window): its response never sends it back.
    // Read before a rotation that comes while it is in flight: its response does not send it back either.
    if (loaded?.previous) found.keepIdOut(res, () => true);
    else if (loaded) found.keepIdOut(res, () => (req.sessionID ?? req.session?.sessionId) === loaded.sid && rotator.rotations.away.has(loaded.key));
    if (loaded?.previous) return next();
    const { renewAfter } = rotator;
    if (loaded === undefined || renewAfter === undefined || performance.now() - loaded.issuedAt < renewAfter) return next();
    rotateRequest(req, false).then(() => next(), next);
  };
}

/** The session of an express-session or @fastify/session request, if it has one. */
function requestSession(req: any): RequestSession | undefined {
  const session = req?.session;
  if (session === null || typeof session !== "object") return undefined;
  if (typeof req.sessionID === "string" && req.sessionStore) {
    return {
      store: req.sessionStore,
      sid: req.sessionID,
      session,
      replace(sid, loaded) {
        // express-session's Session has a fixed id: a new Session under the new id, with what this request holds.
        const data = JSON.parse(JSON.stringify(session));
        req.sessionID = sid;
        req.sessionStore.createSession(req, loaded ? withLoaded(data, loaded) : data);
      },
      keepIdOut(res, rotated) {
        // express-session signs the id as `s:<id>.<signature>` in the cookie's (URI-encoded) value.
        const signed = `=${encodeURIComponent(`s:${req.sessionID}.`)}`;
        const setHeader = res.setHeader;
        res.setHeader = function (name: string, value: unknown) {
          if (String(name).toLowerCase() !== "set-cookie" || !rotated()) return setHeader.call(this, name, value);
          const kept = ([] as unknown[]).concat(value).filter((cookie) => !String(cookie).includes(signed));
          return kept.length === 0 ? this : setHeader.call(this, name, kept);
        };
      },
    };
  }
  const symbols = Object.getOwnPropertySymbols(session);
  // @fastify/session keeps what it builds a session from under symbols of these descriptions.
  const at = (...names: string[]) => {
    const symbol = symbols.find((s) => names.includes(s.description ?? ""));
    return symbol === undefined ? undefined : session[symbol];
  };
  if (typeof session.sessionId !== "string" || at("sessionStore") === undefined) return undefined;
  return {
    store: at("sessionStore"),
    sid: session.sessionId,
    session,
    replace(sid, loaded) {
      // @fastify/session's own constructor, copying the data and cookie of the session it replaces.
      const Session = session.constructor;
      const fresh = new Session(at("sessionStore"), req, at("generateId"), at("cookieOpts"), at("cookieSignerKey", "cookieSigner"), session, sid);
      if (loaded) {
        withLoaded(fresh, loaded);
        // Saved (as an unchanged session: no write) and its cookie sent, even when the request changes nothing else.
        const persisted = Object.getOwnPropertySymbols(fresh).find((s) => s.description === "persistedHash");
        if (persisted) fresh[persisted] = "";
      }
      req.session = fresh;
    },
    keepIdOut(reply, rotated) {
      const id = session.encryptedSessionId;
      const setCookie = reply.setCookie;
      reply.setCookie = function (name: string, value: unknown, options: unknown) {
        return typeof value === "string" && value.endsWith(id) && rotated() ? this : setCookie.call(this, name, value, options);
      };
    },
  };
}
