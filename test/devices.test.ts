// The devices example (examples/devices) over HTTP: new sign-in notices, the password prompt before the
// sensitive actions, the session cap and encryption as the example wires them. Its pages in a real
// browser: test/browser/devices.browser.ts. On a fresh in-memory PGlite per test (the example's own tables
// have fixed names, so it keeps off the shared Postgres database).
import { PGlite } from "@electric-sql/pglite";
import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/pglite";
import request from "supertest";
import { afterEach, describe, expect, it } from "vitest";
import { createApp, type DevicesApp, type DevicesAppOptions } from "../examples/devices/app.js";
import { signInNotices, users } from "../examples/devices/users.js";
import { migrate, sessions } from "../src/index.js";

const FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const SAFARI_IOS = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const CHROME_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
const PASSWORD = "correct horse battery staple";
const MINUTE = 60_000;

const opened: Array<{ pglite: PGlite; devices: DevicesApp }> = [];
afterEach(async () => {
  for (const { pglite, devices } of opened.splice(0)) {
    await devices.close();
    await pglite.close();
  }
});

async function open(options: Partial<DevicesAppOptions> = {}) {
  const pglite = new PGlite();
  const db = drizzle({ client: pglite });
  await migrate(db);
  const devices = await createApp({ db, secret: "devices test secret", trustProxy: "loopback", ...options });
  opened.push({ pglite, devices });
  return { db, ...devices };
}

type App = Awaited<ReturnType<typeof open>>;

/** A browser: its own cookies, user agent and IP; its posts send the CSRF token of the last page it got. */
function browser(app: App, userAgent: string, ip: string) {
  const agent = request.agent(app.app);
  let csrf = "";
  const headers = (r: request.Test) => r.set("User-Agent", userAgent).set("X-Forwarded-For", ip);
  const get = async (path: string) => {
    const res = await headers(agent.get(path));
    csrf = /name="_csrf" value="([^"]+)"/.exec(res.text)?.[1] ?? csrf;
    return res;
  };
  const post = async (path: string, form: Record<string, string> = {}) => {
    if (!csrf) await get(path === "/signup" || path === "/login" ? path : "/devices");
    return headers(agent.post(path))
      .type("form")
      .send({ _csrf: csrf, ...form });
  };
  return { get, post };
}

/** A new browser that signs up ("/signup") or logs in ("/login") as `email`, on its devices page. */
async function signIn(app: App, path: "/signup" | "/login", userAgent: string, ip: string, email: string) {
  const b = browser(app, userAgent, ip);
  await b.get(path);
  expect((await b.post(path, { email, password: PASSWORD })).headers.location).toBe("/devices");
  await b.get("/devices"); // the new session's CSRF token
  return b;
}

const signUp = (app: App, userAgent: string, ip: string, email = "ada@example.com") => signIn(app, "/signup", userAgent, ip, email);
const logIn = (app: App, userAgent: string, ip: string, email = "ada@example.com") => signIn(app, "/login", userAgent, ip, email);

/** Moves every session's sign-in `ms` into the past, as if that time had passed. */
async function ageSignIns(app: App, ms: number): Promise<void> {
  await app.db.update(sessions).set({ authenticatedAt: sql`${sessions.authenticatedAt} - ${ms} * interval '1 millisecond'` });
}

/** The texts of the new sign-in notices on a devices page. */
function signInsOn(page: string): string[] {
  return [...page.matchAll(/<strong>(New sign-in from [^<]*)<\/strong>/g)].map((m) => m[1]!.replace(/&#40;|&#41;/g, (c) => (c === "&#40;" ? "(" : ")")));
}

describe("the devices example", () => {
  it("a sign-in from a new device leaves one notice for the user's other devices; the sign-up itself leaves none", async () => {
    const app = await open();
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    expect(signInsOn((await laptop.get("/devices")).text)).toEqual([]);

    const phone = await logIn(app, SAFARI_IOS, "203.0.113.7");
    await logIn(app, SAFARI_IOS, "203.0.113.7"); // the same device again: no news
    await logIn(app, FIREFOX_LINUX, "198.51.100.2");
    const page = (await laptop.get("/devices")).text;
    expect(signInsOn(page)).toEqual(["New sign-in from Firefox on Linux (198.51.100.2)", "New sign-in from Safari on iOS (203.0.113.7)"]);
    // On the phone its own sign-in is left out.
    expect(signInsOn((await phone.get("/devices")).text)).toEqual(["New sign-in from Firefox on Linux (198.51.100.2)"]);
    expect(await app.db.select().from(signInNotices)).toHaveLength(2);
  });

  it("Dismiss hides a notice for good, and cannot dismiss another user's", async () => {
    const app = await open();
    const ada = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    await logIn(app, SAFARI_IOS, "203.0.113.7");
    const bob = await signUp(app, CHROME_WINDOWS, "203.0.113.8", "bob@example.com");
    await logIn(app, FIREFOX_LINUX, "203.0.113.8", "bob@example.com");
    const ids = async (b: typeof ada) => [...(await b.get("/devices")).text.matchAll(/name="notice" value="([^"]+)"/g)].map((m) => m[1]!);
    const [adas] = await ids(ada);
    const [bobs] = await ids(bob);

    expect((await bob.post("/devices/dismiss", { notice: adas! })).status).toBe(303);
    expect(await ids(ada)).toEqual([adas]);
    expect((await ada.post("/devices/dismiss", { notice: adas! })).headers.location).toBe("/devices");
    expect(await ids(ada)).toEqual([]);
    expect(await ids(bob)).toEqual([bobs]);
    // Without the page's CSRF token nothing is dismissed.
    expect((await bob.post("/devices/dismiss", { notice: bobs!, _csrf: "forged" })).status).toBe(403);
    expect(await ids(bob)).toEqual([bobs]);
  });

  it("an old sign-in is asked for the password before logging out other devices or creating a token; a wrong one is refused, the right one lets it through", async () => {
    const app = await open(); // recentLoginMaxAge: 10 minutes
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    const phone = await logIn(app, SAFARI_IOS, "203.0.113.7");
    await laptop.get("/devices");
    await ageSignIns(app, 11 * MINUTE);

    for (const action of ["/devices/logout-others", "/devices/token"]) {
      const stale = await laptop.post(action);
      expect(stale.status).toBe(303);
      expect(stale.headers.location).toBe(`/confirm?next=${encodeURIComponent("/devices?done=confirmed")}`);
    }
    expect((await phone.get("/devices")).status).toBe(200); // nothing was ended

    const prompt = await laptop.get("/confirm?next=%2Fdevices%3Fdone%3Dconfirmed");
    expect(prompt.text).toContain("Confirm your password");
    const wrong = await laptop.post("/confirm", { password: "wrong password", next: "/devices?done=confirmed" });
    expect(wrong.status).toBe(401);
    expect(wrong.text).toContain("Wrong password.");
    expect((await laptop.post("/devices/logout-others")).headers.location).toMatch(/^\/confirm/);

    const right = await laptop.post("/confirm", { password: PASSWORD, next: "/devices?done=confirmed" });
    expect(right.headers.location).toBe("/devices?done=confirmed");
    expect((await laptop.post("/devices/logout-others")).headers.location).toBe("/devices?done=others&count=1");
    expect((await laptop.post("/devices/token", { label: "CI" })).status).toBe(201);
    expect((await phone.get("/devices")).headers.location).toBe("/login");
  });

  it("an old sign-in is asked for the password before revoking one device too; after it, the revoke works", async () => {
    const app = await open();
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    const phone = await logIn(app, SAFARI_IOS, "203.0.113.7");
    const phoneHandle = (await app.store.list({ userId: await userIdOf(app) })).find((s) => s.device === "Safari on iOS")!.handle;
    await laptop.get("/devices");
    await ageSignIns(app, 11 * MINUTE);

    const stale = await laptop.post("/devices/revoke", { handle: phoneHandle });
    expect(stale.headers.location).toBe(`/confirm?next=${encodeURIComponent("/devices?done=confirmed")}`);
    expect((await phone.get("/devices")).status).toBe(200); // not revoked

    await laptop.post("/confirm", { password: PASSWORD, next: "/devices?done=confirmed" });
    expect((await laptop.post("/devices/revoke", { handle: phoneHandle })).headers.location).toBe("/devices?done=revoked");
    expect((await phone.get("/devices")).headers.location).toBe("/login");
  });

  it("an API token opens its session on /api only: on the pages it is no session (no CSRF token, no revoke, no token minting), and it is never a fresh sign-in", async () => {
    const app = await open();
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    const phone = await logIn(app, SAFARI_IOS, "203.0.113.7");
    const created = await laptop.post("/devices/token", { label: "CI" });
    expect(created.status).toBe(201);
    const token = /data-testid="token">([^<]+)</.exec(created.text)![1]!;
    const bearer = { Authorization: `Bearer ${token}` };
    expect((await request(app.app).get("/api/me").set(bearer)).body).toMatchObject({ email: "ada@example.com", token: { label: "CI" } });

    // The pages treat a token-only request as signed out: nothing to read, no form to post.
    const devices = await request(app.app).get("/devices").set(bearer);
    expect(devices.headers.location).toBe("/login");
    expect(devices.text).not.toMatch(/_csrf/);
    const phoneHandle = (await app.store.list({ userId: await userIdOf(app) })).find((s) => s.device === "Safari on iOS")!.handle;
    for (const [path, form] of [
      ["/devices/revoke", { handle: phoneHandle }],
      ["/devices/logout-others", {}],
      ["/devices/token", { label: "chain" }],
    ] as const) {
      const res = await request(app.app).post(path).set(bearer).type("form").send(form);
      expect(res.status, path).not.toBe(201);
      expect([303, 403], path).toContain(res.status);
      expect(res.headers.location ?? "/login", path).toBe("/login");
    }
    expect((await phone.get("/devices")).status).toBe(200);
    expect(await app.store.count({ userId: await userIdOf(app) })).toBe(3); // laptop, phone, the token: none ended, none minted

    // The token keeps the laptop's sign-in time: once that is old, the token is no fresher than it.
    await ageSignIns(app, 11 * MINUTE);
    const [record] = (await app.store.list({ userId: await userIdOf(app) })).filter((s) => s.label === "CI");
    const [laptopRecord] = (await app.store.list({ userId: await userIdOf(app) })).filter((s) => s.device === "Chrome on Windows");
    expect(record!.authenticatedAt!.getTime()).toBe(laptopRecord!.authenticatedAt!.getTime());
  });

  it("recentLoginMaxAge sets how recent the sign-in must be", async () => {
    const app = await open({ recentLoginMaxAge: 1 });
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    await laptop.get("/devices");
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect((await laptop.post("/devices/token")).headers.location).toMatch(/^\/confirm\?/);
  });

  it("/confirm goes on only to a path of this site", async () => {
    const app = await open();
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    await laptop.get("/devices");
    for (const next of ["//evil.example/x", "/\\evil.example", "https://evil.example/", "javascript:alert(1)", ""]) {
      expect((await laptop.post("/confirm", { password: PASSWORD, next })).headers.location).toBe("/devices");
    }
    expect((await laptop.post("/confirm", { password: PASSWORD, next: "/counter?x=1" })).headers.location).toBe("/counter?x=1");
    expect((await laptop.get("/confirm?next=//evil.example")).text).toContain('name="next" value="/devices"');
  });

  it("a sign-in beyond maxSessionsPerUser signs out the least recently used device, shown in Recent activity", async () => {
    const app = await open({ maxSessionsPerUser: 2 });
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    const phone = await logIn(app, SAFARI_IOS, "203.0.113.7");
    await logIn(app, FIREFOX_LINUX, "198.51.100.2"); // the third: the laptop, least recently active, is signed out

    expect((await laptop.get("/devices")).headers.location).toBe("/login");
    const page = (await phone.get("/devices")).text;
    const history = page.slice(page.indexOf('id="history"'));
    expect(history).toMatch(/Chrome on Windows[\s\S]*Signed out: too many devices/);
    expect(await app.store.count({ userId: await userIdOf(app) })).toBe(2);
  });

  it("a sign-in and a password confirmation give the session a new id; the old cookie used after rotationGrace signs both holders out, and Recent activity says why", async () => {
    const app = await open({ rotationGrace: 100 });
    await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    const cookieIn = (res: request.Response) => /^sid=[^;]+/.exec(([] as string[]).concat(res.headers["set-cookie"] ?? []).join("\n"))?.[0];

    // Replayed as the cookie on a page, and as a Bearer token on the API: a 401 that says why, both times.
    for (const replay of ["page", "api"] as const) {
      const phone = browser(app, SAFARI_IOS, "203.0.113.7");
      const before = cookieIn(await phone.get("/login"));
      const signedIn = await phone.post("/login", { email: "ada@example.com", password: PASSWORD });
      const stolen = cookieIn(signedIn)!;
      expect(stolen).toBeDefined();
      expect(stolen).not.toBe(before);
      await phone.get("/devices");
      const confirmed = await phone.post("/confirm", { password: PASSWORD, next: "/devices?done=confirmed" });
      expect(confirmed.headers.location).toBe("/devices?done=confirmed");
      expect(cookieIn(confirmed)).toBeDefined();
      expect(cookieIn(confirmed)).not.toBe(stolen);
      expect((await phone.get("/devices")).status).toBe(200);

      await new Promise((resolve) => setTimeout(resolve, 250));
      if (replay === "page") {
        const res = await request(app.app).get("/devices").set("Cookie", stolen).set("User-Agent", FIREFOX_LINUX).set("X-Forwarded-For", "198.51.100.2");
        expect(res.status).toBe(401);
        expect(res.text).toContain("You were signed out because your session's cookie was used from elsewhere");
        expect(res.text).not.toMatch(/SessionStoreError|at .*\.ts:\d+/);
      } else {
        const token = decodeURIComponent(stolen.slice("sid=".length)).slice("s:".length);
        const res = await request(app.app).get("/api/me").set("Authorization", `Bearer ${token}`).set("X-Forwarded-For", "198.51.100.2");
        expect(res.status).toBe(401);
        expect(res.body).toEqual({ error: "signed out: this session's token was used from elsewhere" });
      }
      expect((await phone.get("/devices")).headers.location).toBe("/login");
    }

    const laptop = await logIn(app, CHROME_WINDOWS, "203.0.113.7");
    const page = (await laptop.get("/devices")).text;
    const history = page.slice(page.indexOf('id="history"'));
    expect(history.match(/Safari on iOS[\s\S]*?Signed out: this session&#39;s cookie was used from elsewhere/g)).toHaveLength(2);
  });

  it("with encrypt, the session data is unreadable in the table and the app works as before", async () => {
    const app = await open({ encrypt: { secrets: "a devices test encryption key of 32+ chars" } });
    const laptop = await signUp(app, CHROME_WINDOWS, "203.0.113.7");
    expect((await laptop.post("/counter")).headers.location).toBe("/counter");
    expect((await laptop.get("/counter")).text).toContain('data-testid="count">1<');
    const rows = await app.db.select({ data: sessions.data }).from(sessions);
    const stored = JSON.stringify(rows);
    expect(stored).not.toContain("passport");
    expect(stored).not.toContain("counter");
    expect(stored).not.toContain(await userIdOf(app));
  });
});

async function userIdOf(app: App, email = "ada@example.com"): Promise<string> {
  const [row] = await app.db.select({ id: users.id }).from(users).where(eq(users.email, email));
  return row!.id;
}
