import type { IncomingMessage, ServerResponse } from "node:http";
import type { SessionMiddlewareOptions } from "./middleware.js";

/*
 * sessionMiddleware's header transport (middleware.ts): which routes take it, the token in the request
 * header, our cookie taken out of the request and the response, and the token header on the response.
 */

/**
 * Whether a request's route takes the header transport ({@link SessionMiddlewareOptions.headerRoutes}). A
 * prefix matches at a segment boundary, against the path as sent (Express routes on it undecoded, so
 * `/%61pi` or `/API` never reaches a header route by way of this check: at worst the header is ignored).
 */
export function routeMatcher(routes: NonNullable<SessionMiddlewareOptions["headerRoutes"]>): (req: IncomingMessage) => boolean {
  if (routes === "all") return () => true;
  if (typeof routes === "function") return routes;
  const prefixes = routes.map((p) => (p.length > 1 && p.endsWith("/") ? p.slice(0, -1) : p));
  return (req) => {
    const url = (req as { originalUrl?: string }).originalUrl ?? req.url ?? "";
    const end = url.search(/[?#]/);
    const path = end < 0 ? url : url.slice(0, end);
    return prefixes.some((p) => p === "/" || path === p || path.startsWith(`${p}/`));
  };
}

/** The token in a request header's value, or undefined when the value cannot be one. */
export function tokenOf(value: string | string[], bearer: boolean): string | undefined {
  if (typeof value !== "string") return undefined;
  let token = value.trim();
  if (bearer) {
    const match = /^Bearer\s+(\S+)$/i.exec(token);
    if (!match) return undefined;
    token = match[1]!;
  }
  return token.length > 0 && token.length <= 512 ? token : undefined;
}

/**
 * The Cookie header without any cookie named `name` (undefined when nothing else is left), the others as
 * sent. A part's name is what precedes its first "=", trimmed, as express-session's parser reads it, so
 * nothing it would take for ours survives.
 */
export function withoutCookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  const parts = header.split(";");
  const kept = parts.filter((part) => part.split("=", 1)[0]!.trim() !== name);
  if (kept.length === parts.length) return header;
  return kept.join(";").trim() || undefined;
}

/** Removes our session cookie from the response's Set-Cookie and returns its token, if express-session set one. */
export function takeSessionCookie(res: ServerResponse, name: string): string | undefined {
  const current = res.getHeader("set-cookie");
  if (current === undefined) return undefined;
  const cookies = Array.isArray(current) ? current : [String(current)];
  const prefix = `${name}=`;
  const ours = cookies.find((c) => c.startsWith(prefix));
  if (ours === undefined) return undefined;
  const rest = cookies.filter((c) => c !== ours);
  if (rest.length > 0) res.setHeader("set-cookie", rest);
  else res.removeHeader("set-cookie");
  const value = decodeURIComponent(ours.slice(prefix.length).split(";")[0]!);
  return value.startsWith("s:") ? value.slice(2) : undefined;
}

/** Lets browser clients on other origins read the token header, without touching the app's own list. */
export function exposeHeader(res: ServerResponse, header: string): void {
  if (res.getHeader("access-control-allow-origin") === undefined) return;
  const current = res.getHeader("access-control-expose-headers");
  const list =
    current === undefined
      ? []
      : String(current)
          .split(",")
          .map((h) => h.trim())
          .filter(Boolean);
  if (!list.some((h) => h.toLowerCase() === header.toLowerCase() || h === "*")) list.push(header);
  res.setHeader("access-control-expose-headers", list.join(", "));
}

/**
 * Runs `listener` just before the response headers are written. Installed before express-session's own
 * hook, so it runs after it (each wrapper calls the one installed before it last).
 */
export function onHeaders(res: ServerResponse, listener: () => void): void {
  const writeHead = res.writeHead;
  let fired = false;
  res.writeHead = function (this: ServerResponse, ...args: any[]) {
    if (!fired) {
      fired = true;
      listener();
    }
    return (writeHead as any).apply(this, args);
  } as typeof res.writeHead;
}
