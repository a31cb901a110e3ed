import { loadedUnderAnyId } from "./loaded.js";
import type { IncomingMessage, ServerResponse } from "node:http";
import { kindOf, type OptionCheck } from "./check.js";
import { onHeaders } from "./header-transport.js";

/*
 * sessionMiddleware's `clearSiteData` (middleware.ts): a Clear-Site-Data header on the response of a
 * request that ended its session and is left signed out (a logout), never on a login's.
 */

/** What a Clear-Site-Data header can tell a browser to clear, as `sessionMiddleware`'s `clearSiteData` lists it. */
export type ClearSiteDataDirective = "cookies" | "storage" | "cache" | "executionContexts" | "*";

const DIRECTIVES: readonly unknown[] = ["cookies", "storage", "cache", "executionContexts", "*"] satisfies ClearSiteDataDirective[];
const DEFAULT_DIRECTIVES: readonly ClearSiteDataDirective[] = ["cookies", "storage"];

/** The check of `clearSiteData`: a boolean, or a non-empty list of known directives, each once. */
export const clearSiteDataOption: OptionCheck = (options, name) => {
  const value = options[name];
  if (typeof value === "boolean") return;
  if (Array.isArray(value) && value.length > 0 && value.every((d) => DIRECTIVES.includes(d)) && new Set(value).size === value.length) return;
  throw new TypeError(
    `connect-drizzle: \`${name}\` must be true (for "cookies" and "storage"), false, or a list of directives, each once, ` +
      `from "cookies", "storage", "cache", "executionContexts" and "*", e.g. ["cookies"] (got ${kindOf(value)})`,
  );
};

/** The header's value for the option (the quoted directives, comma-separated), or undefined when it is off. */
export function clearSiteDataValue(option: boolean | readonly ClearSiteDataDirective[] | undefined): string | undefined {
  if (option === undefined || option === false) return undefined;
  return (option === true ? DEFAULT_DIRECTIVES : option).map((d) => `"${d}"`).join(", ");
}

/**
 * Sends `Clear-Site-Data: value` with the response when, as its headers go out, the session express-session
 * loaded for the request has ended and the request holds no signed-in session: it was destroyed (or unset),
 * or regenerated into one without a user. Deciding then, not when the session ends, tells a logout from a
 * login: passport's login regenerates the signed-out session first and sets the user afterwards, so the
 * old session holds no user in both. Returns the `next` to give express-session, which notes the session
 * it loaded (none after a failed load: that request ended nothing).
 */
export function clearOnSignOut(
  req: IncomingMessage,
  res: ServerResponse,
  value: string,
  hasUser: (session: object) => boolean,
  next: (err?: unknown) => void,
): (err?: unknown) => void {
  const request = req as IncomingMessage & { session?: object | null; sessionID?: string };
  let loaded: string | undefined;
  let handle: string | undefined;
  onHeaders(res, () => {
    if (loaded === undefined) return;
    const session = request.session;
    // A new id for the same session (a rotation: it keeps its handle) is no sign-out.
    const rotated = handle !== undefined && session != null && loadedUnderAnyId(session)?.handle === handle;
    if (session == null || (request.sessionID !== loaded && !rotated && !hasUser(session))) res.setHeader("Clear-Site-Data", value);
  });
  return (err) => {
    if (err === undefined && request.session != null) {
      loaded = request.sessionID;
      handle = loadedUnderAnyId(request.session)?.handle;
    }
    next(err);
  };
}
