// Server-rendered HTML with template strings. `html` escapes every interpolated value unless it is
// itself `html` output, so user-controlled text (emails, user agents, token labels) can never inject markup.
import type { EndReason, SessionRecord } from "connect-drizzle";
import type { SignInNotice, User } from "./users.js";

export class Html {
  constructor(readonly text: string) {}
  toString(): string {
    return this.text;
  }
}

function escapeHtml(value: unknown): string {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function render(value: unknown): string {
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return value.map(render).join("");
  if (value === null || value === undefined || value === false) return "";
  return escapeHtml(value);
}

export function html(strings: TemplateStringsArray, ...values: unknown[]): Html {
  let out = strings[0]!;
  for (const [i, value] of values.entries()) out += render(value) + strings[i + 1]!;
  return new Html(out);
}

const STYLE = `
  body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; background: #f6f8fa; margin: 0; }
  header { background: #24292f; color: #fff; padding: 10px 24px; display: flex; gap: 18px; align-items: center; }
  header a { color: #fff; text-decoration: none; font-weight: 600; }
  header .who { margin-left: auto; color: #c9d1d9; font-size: 14px; }
  header form { margin: 0; }
  header button { background: transparent; color: #fff; border: 1px solid #57606a; }
  main { max-width: 920px; margin: 24px auto; padding: 0 24px; }
  section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px 20px; margin-bottom: 20px; }
  h1 { font-size: 24px; margin: 0 0 16px; } h2 { font-size: 18px; margin: 0 0 12px; }
  table { width: 100%; border-collapse: collapse; }
  th, td { text-align: left; padding: 8px 6px; border-bottom: 1px solid #eaeef2; vertical-align: middle; }
  th { font-size: 13px; color: #57606a; font-weight: 600; }
  tr:last-child td { border-bottom: 0; }
  td form { margin: 0; }
  .muted { color: #57606a; font-size: 13px; }
  .tag { display: inline-block; font-size: 12px; padding: 1px 8px; border-radius: 10px; background: #dafbe1; color: #116329; font-weight: 600; }
  .tag.token { background: #ddf4ff; color: #0969da; }
  .tag.ended { background: #eaeef2; color: #57606a; }
  button { font: inherit; font-size: 14px; padding: 5px 12px; border-radius: 6px; border: 1px solid #d0d7de; background: #f6f8fa; cursor: pointer; }
  button.primary { background: #1f883d; border-color: #1a7f37; color: #fff; }
  button.danger { color: #cf222e; }
  button:disabled { opacity: .5; cursor: default; }
  input[type=text], input[type=email], input[type=password] { font: inherit; padding: 6px 8px; border: 1px solid #d0d7de; border-radius: 6px; width: 100%; box-sizing: border-box; }
  label { display: block; margin-bottom: 12px; font-weight: 600; font-size: 14px; }
  .row { display: flex; gap: 10px; align-items: center; flex-wrap: wrap; }
  .narrow { max-width: 380px; margin: 48px auto; }
  .signin { display: flex; gap: 12px; align-items: center; justify-content: space-between; padding: 8px 0; border-bottom: 1px solid #eaeef2; }
  .signin:last-child { border-bottom: 0; }
  .signin form { margin: 0; }
  .notice { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 10px 14px; margin-bottom: 16px; }
  .error { background: #ffebe9; border: 1px solid #ff8182; border-radius: 6px; padding: 10px 14px; margin-bottom: 16px; }
  code.token { display: block; word-break: break-all; background: #f6f8fa; border: 1px solid #d0d7de; padding: 8px; border-radius: 6px; margin: 8px 0; font-size: 13px; }
  .count { font-size: 48px; font-weight: 700; margin: 8px 0 16px; }
`;

export interface PageContext {
  user?: User;
  csrf: string;
}

function layout(title: string, ctx: PageContext, body: Html): string {
  const nav = ctx.user
    ? html`<a href="/counter">Counter</a><a href="/devices">Your devices</a>
        <span class="who">${ctx.user.email}</span>
        <form method="post" action="/logout"><input type="hidden" name="_csrf" value="${ctx.csrf}"><button>Log out</button></form>`
    : html`<a href="/login">Log in</a><a href="/signup">Sign up</a>`;
  return html`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${title} · connect-drizzle devices example</title>
<style>${new Html(STYLE)}</style>
</head>
<body>
<header>${nav}</header>
<main>${body}</main>
</body>
</html>`.text;
}

export function authPage(kind: "login" | "signup", ctx: PageContext, options: { error?: string; notice?: string; email?: string } = {}): string {
  const login = kind === "login";
  return layout(
    login ? "Log in" : "Sign up",
    ctx,
    html`<section class="narrow">
  <h1>${login ? "Log in" : "Create an account"}</h1>
  ${options.notice ? html`<div class="notice">${options.notice}</div>` : ""}
  ${options.error ? html`<div class="error" role="alert">${options.error}</div>` : ""}
  <form method="post" action="/${kind}">
    <input type="hidden" name="_csrf" value="${ctx.csrf}">
    <label>Email <input type="email" name="email" value="${options.email ?? ""}" required autocomplete="username"></label>
    <label>Password <input type="password" name="password" required minlength="${login ? 1 : 8}" autocomplete="${login ? "current-password" : "new-password"}"></label>
    <button class="primary" type="submit">${login ? "Log in" : "Sign up"}</button>
  </form>
  <p class="muted">${login ? html`No account? <a href="/signup">Sign up</a>` : html`Have an account? <a href="/login">Log in</a>`}</p>
</section>`,
  );
}

export function counterPage(ctx: PageContext, count: number): string {
  return layout(
    "Counter",
    ctx,
    html`<section>
  <h1>Counter</h1>
  <p class="muted">Kept in this session (a row in the sessions table). Restart the server: it survives.</p>
  <div class="count" data-testid="count">${count}</div>
  <form method="post" action="/counter"><input type="hidden" name="_csrf" value="${ctx.csrf}"><button class="primary">+1</button></form>
</section>`,
  );
}

export interface DevicesView {
  active: SessionRecord[];
  ended: SessionRecord[];
  labels: Map<string, string>;
  /** Sign-ins from new devices, not yet dismissed (this device's own left out). */
  signIns: SignInNotice[];
  /** When this device signed in or last confirmed the password. */
  signedInAt: Date | null;
  /** How recent that must be for the sensitive actions. */
  recentLoginMaxAge: number;
  /** A token just created: shown once, never stored in plain. */
  newToken?: { token: string; label: string; apiUrl: string };
  notice?: string;
}

export function devicesPage(ctx: PageContext, view: DevicesView): string {
  const others = view.active.filter((s) => !s.current).length;
  const hidden = html`<input type="hidden" name="_csrf" value="${ctx.csrf}">`;
  // This device first, then the others by last activity (the store's order).
  const active = [...view.active.filter((s) => s.current), ...view.active.filter((s) => !s.current)];
  const rows = active.map((s) => {
    const label = view.labels.get(s.handle);
    return html`<tr data-handle="${s.handle}"${s.current ? html` data-current` : ""}>
      <td>${deviceCell(s, label)}</td>
      <td>${displayIp(s.ip)}</td>
      <td>${time(s.authenticatedAt ?? s.createdAt)}</td>
      <td>${time(s.lastSeenAt)}</td>
      <td>${
        s.current
          ? html`<span class="tag">This device</span>`
          : html`<form method="post" action="/devices/revoke">${hidden}<input type="hidden" name="handle" value="${s.handle}"><button class="danger" aria-label="Revoke ${label ?? s.device ?? "Unknown device"}">Revoke</button></form>`
      }</td>
    </tr>`;
  });
  const history = view.ended
    .slice()
    .sort((a, b) => (b.endedAt?.getTime() ?? 0) - (a.endedAt?.getTime() ?? 0))
    .map(
      (s) => html`<tr>
      <td>${deviceCell(s, view.labels.get(s.handle))}</td>
      <td>${displayIp(s.ip)}</td>
      <td>${time(s.authenticatedAt ?? s.createdAt)}</td>
      <td>${s.endedAt ? time(s.endedAt) : "–"}</td>
      <td><span class="tag ended">${s.endReason ? REASONS[s.endReason] : "Ended"}</span></td>
    </tr>`,
    );
  const live = new Set(view.active.map((s) => s.handle));
  const signIns = view.signIns.map(
    (n) => html`<div class="signin" data-notice="${n.id}">
      <div><strong>New sign-in from ${n.device ?? "an unknown device"}${n.ip === null ? "" : ` (${displayIp(n.ip)})`}</strong> <span class="muted">${time(n.createdAt)}</span>
        <div class="muted">${live.has(n.sessionHandle) ? "Still signed in. Not you? Revoke it below and change your password." : "That session has ended since."}</div></div>
      <form method="post" action="/devices/dismiss">${hidden}<input type="hidden" name="notice" value="${n.id}"><button>Dismiss</button></form>
    </div>`,
  );
  const recent = view.signedInAt !== null && view.signedInAt.getTime() >= Date.now() - view.recentLoginMaxAge;
  const signedIn = view.signedInAt === null ? "" : html`You signed in on this device ${time(view.signedInAt)}. `;
  const ask = recent
    ? `Logging out other devices and creating an API token ask for your password again once that is over ${duration(view.recentLoginMaxAge)} ago.`
    : "Logging out other devices and creating an API token will ask for your password first.";
  return layout(
    "Your devices",
    ctx,
    html`<h1>Your devices</h1>
${view.notice ? html`<div class="notice" role="status">${view.notice}</div>` : ""}
${
  signIns.length === 0
    ? ""
    : html`<section id="sign-ins" aria-label="New sign-ins" class="notice">
  <h2>New sign-ins</h2>
  ${signIns}
</section>`
}
${
  view.newToken
    ? html`<div class="notice" id="new-token"><strong>API token “${view.newToken.label}” created.</strong> Copy it now: it is shown only once.
  <code class="token" data-testid="token">${view.newToken.token}</code>
  <span class="muted">Try it:</span>
  <code class="token">curl -H "Authorization: Bearer ${view.newToken.token}" ${view.newToken.apiUrl}</code></div>`
    : ""
}
<section id="active">
  <h2>Signed-in devices and API tokens (${view.active.length})</h2>
  <table>
    <thead><tr><th>Device</th><th>IP</th><th>Signed in</th><th>Last active</th><th></th></tr></thead>
    <tbody>${rows}</tbody>
  </table>
  <div class="row" style="margin-top:12px">
    <form method="post" action="/devices/logout-others">${hidden}<button class="danger"${others === 0 ? html` disabled` : ""}>Log out other devices</button></form>
  </div>
  <p class="muted" data-testid="signed-in">${signedIn}${ask}</p>
</section>
<section id="token">
  <h2>Create an API token</h2>
  <p class="muted">For scripts: send it as <code>Authorization: Bearer &lt;token&gt;</code> to <code>/api/me</code> or <code>/api/counter</code>. It is a session like your browser's: it shows up above and you can revoke it there.</p>
  <form method="post" action="/devices/token" class="row">${hidden}
    <input type="text" name="label" value="API token" maxlength="60" style="max-width:260px" aria-label="Token name">
    <button class="primary">Create API token</button>
  </form>
</section>
<section id="history">
  <h2>Recent activity</h2>
  ${
    history.length === 0
      ? html`<p class="muted">No ended sessions yet.</p>`
      : html`<table>
    <thead><tr><th>Device</th><th>IP</th><th>Signed in</th><th>Ended</th><th>Why</th></tr></thead>
    <tbody>${history}</tbody>
  </table>`
  }
</section>`,
  );
}

export function confirmPage(ctx: PageContext, options: { next: string; error?: string }): string {
  return layout(
    "Confirm your password",
    ctx,
    html`<section class="narrow">
  <h1>Confirm your password</h1>
  <p>You signed in a while ago. To log out other devices or create an API token, enter your password again.</p>
  ${options.error ? html`<div class="error" role="alert">${options.error}</div>` : ""}
  <form method="post" action="/confirm">
    <input type="hidden" name="_csrf" value="${ctx.csrf}">
    <input type="hidden" name="next" value="${options.next}">
    <label>Password <input type="password" name="password" required autocomplete="current-password" autofocus></label>
    <button class="primary" type="submit">Confirm</button>
  </form>
  <p class="muted"><a href="/devices">Cancel</a></p>
</section>`,
  );
}

export function messagePage(ctx: PageContext, title: string, message: Html | string): string {
  return layout(title, ctx, html`<section class="narrow"><h1>${title}</h1><p>${message}</p></section>`);
}

// Every end reason, so that a new one is a type error here rather than a raw word on the page.
const REASONS: Record<EndReason, string> = {
  logout: "Logged out",
  revoked: "Revoked",
  rotated: "Signed in again",
  expired: "Expired",
  evicted: "Signed out: too many devices",
  reused: "Signed out: this session's cookie was used from elsewhere",
  binding: "Signed out: used from another browser",
};

function deviceCell(s: SessionRecord, label: string | undefined): Html {
  if (label !== undefined) {
    // A token's user agent and IP are those of the client that last used it (none until then).
    const used = s.userAgent ? html`<div class="muted">last used by ${s.device ?? "Unknown device"}</div>` : "";
    return html`<span class="tag token">API token</span> <strong>${label}</strong>${used}`;
  }
  return html`<strong>${s.device ?? "Unknown device"}</strong>`;
}

/** An IPv4 client on a dual-stack socket shows as ::ffff:1.2.3.4; show it as 1.2.3.4. */
function displayIp(ip: string | null): string {
  return ip === null ? "–" : ip.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/, "");
}

function time(date: Date): Html {
  const iso = date.toISOString();
  return html`<time datetime="${iso}" title="${iso.replace("T", " ").slice(0, 19)} UTC">${ago(date)}</time>`;
}

/** "10 minutes", "1 hour": a duration in ms, rounded to its largest unit. */
function duration(ms: number): string {
  const [unit, size] = ms >= 3_600_000 ? (["hour", 3_600_000] as const) : ms >= 60_000 ? (["minute", 60_000] as const) : (["second", 1000] as const);
  const n = Math.max(1, Math.round(ms / size));
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

function ago(date: Date): string {
  const s = Math.round((Date.now() - date.getTime()) / 1000);
  if (s < 45) return "just now";
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 24) return `${h} h ago`;
  const d = Math.round(h / 24);
  return d < 30 ? `${d} days ago` : date.toISOString().slice(0, 10);
}
