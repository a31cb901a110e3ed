// The devices example (examples/devices) in a real headless Chromium: sign up, two devices, the new
// sign-in notice, revoke one, API tokens by header, log out other devices, the password prompt of an old sign-in,
// a stolen cookie used after the id changed. Run with `npm run test:browser` (needs /usr/bin/chromium,
// or CHROMIUM_PATH). Screenshots go to test-output/; UPDATE_SCREENSHOT=1 also writes docs/devices.png.
import { existsSync, mkdirSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { fileURLToPath } from "node:url";
import { PGlite } from "@electric-sql/pglite";
import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/pglite";
import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { createApp, type DevicesApp } from "../../examples/devices/app.js";
import { migrate, sessions } from "../../src/index.js";

const root = fileURLToPath(new URL("../../", import.meta.url));
const outDir = `${root}test-output`;
const executablePath = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
// Outside CI a machine without Chromium skips this file, saying so; CI installs it, so there it must run.
const haveBrowser = existsSync(executablePath) || process.env.CI === "true";
if (!haveBrowser) console.warn(`devices browser test SKIPPED: no Chromium at ${executablePath} (apt-get install chromium, or set CHROMIUM_PATH)`);

const UA = {
  laptop: "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
  phone: "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
  desktop: "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
};
const EMAIL = "ada@example.com";
// The app's rotationGrace: how long a replaced cookie still opens its session (short, so the test need not wait 10 s).
const GRACE = 300;
const PASSWORD = "correct horse battery staple";
const COOKIE = "sid"; // sessionMiddleware's cookie name outside production

let pglite: PGlite | undefined;
let db: ReturnType<typeof drizzle> | undefined;
let devices: DevicesApp | undefined;
let server: Server | undefined;
let browser: Browser | undefined;
let base = "";

beforeAll(async () => {
  if (!haveBrowser) return;
  mkdirSync(outDir, { recursive: true });
  pglite = new PGlite(); // in memory: a fresh database on every run
  db = drizzle({ client: pglite });
  await migrate(db);
  devices = await createApp({ db, secret: "browser test secret", rotationGrace: GRACE });
  server = createServer(devices.app);
  await new Promise<void>((resolve, reject) => {
    server!.once("error", reject);
    server!.listen(0, "127.0.0.1", () => resolve());
  });
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  browser = await chromium.launch({
    executablePath,
    timeout: 30_000,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
      "--no-first-run",
    ],
  });
});

afterAll(async () => {
  await browser?.close().catch(() => {});
  if (server) {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server!.close(() => resolve()));
  }
  await devices?.close();
  await pglite?.close();
});

/** A browser "device": its own cookie jar and user agent, with every wait bounded. */
async function device(userAgent: string): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser!.newContext({ userAgent, viewport: { width: 1000, height: 700 }, deviceScaleFactor: 1 });
  context.setDefaultTimeout(10_000);
  context.setDefaultNavigationTimeout(10_000);
  return { context, page: await context.newPage() };
}

async function logIn(page: Page): Promise<void> {
  await page.goto(`${base}/login`);
  await page.getByLabel("Email").fill(EMAIL);
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForURL(`${base}/devices`);
}

/** Moves every session's sign-in `ms` into the past, as if that time had passed. */
async function ageSignIns(ms: number): Promise<void> {
  await db!.update(sessions).set({ authenticatedAt: sql`${sessions.authenticatedAt} - ${ms} * interval '1 millisecond'` });
}

const rows = (page: Page) => page.locator("#active tbody tr");
const historyRows = (page: Page) => page.locator("#history tbody tr");

function api(path: string, token?: string, init: RequestInit = {}): Promise<Response> {
  return fetch(`${base}${path}`, {
    ...init,
    headers: token ? { Authorization: `Bearer ${token}` } : {},
    signal: AbortSignal.timeout(5_000),
  });
}

describe.runIf(haveBrowser)("devices example in Chromium", () => {
  let laptop: Page;
  let phone: Page;
  let desktop: Page;
  let token = "";

  test("sign up, then a second device logs in: both listed, this device marked", async () => {
    laptop = (await device(UA.laptop)).page;
    await laptop.goto(base);
    await laptop.waitForURL(`${base}/login`);
    await laptop.getByRole("link", { name: "Sign up" }).first().click();
    await laptop.getByLabel("Email").fill(EMAIL);
    await laptop.getByLabel("Password").fill(PASSWORD);
    await laptop.getByRole("button", { name: "Sign up" }).click();
    await laptop.waitForURL(`${base}/devices`);
    await expect.poll(() => rows(laptop).count()).toBe(1);

    // The counter lives in the session.
    await laptop.getByRole("link", { name: "Counter" }).click();
    await laptop.getByRole("button", { name: "+1" }).click();
    await laptop.getByRole("button", { name: "+1" }).click();
    expect(await laptop.getByTestId("count").textContent()).toBe("2");

    phone = (await device(UA.phone)).page;
    await logIn(phone);
    expect(await rows(phone).count()).toBe(2);

    await laptop.getByRole("link", { name: "Your devices" }).click();
    expect(await rows(laptop).count()).toBe(2);
    const current = laptop.locator("#active tbody tr[data-current]");
    expect(await current.count()).toBe(1);
    expect(await current.textContent()).toContain("Chrome on Windows");
    expect(await current.textContent()).toContain("This device");
    expect(await current.getByRole("button", { name: /Revoke/ }).count()).toBe(0);
    const other = laptop.locator("#active tbody tr:not([data-current])");
    expect(await other.textContent()).toContain("Safari on iOS");
    expect(await other.textContent()).toContain("127.0.0.1");
    await laptop.screenshot({ path: `${outDir}/devices-two.png`, fullPage: true });
  });

  test("the phone's sign-in shows on the laptop as a new sign-in, and Dismiss removes it", async () => {
    const signIns = laptop.locator("#sign-ins .signin");
    // The notice is written by the store's newDevice listener, as the phone's login saves its session.
    await expect.poll(async () => (await laptop.reload(), signIns.count())).toBe(1);
    expect(await signIns.textContent()).toContain("New sign-in from Safari on iOS (127.0.0.1)");
    expect(await signIns.textContent()).toContain("Still signed in");
    // Not on the phone, whose own sign-in it is; and the laptop's sign-up made none.
    await phone.reload();
    expect(await phone.locator("#sign-ins").count()).toBe(0);
    await laptop.screenshot({ path: `${outDir}/devices-new-sign-in.png`, fullPage: true });

    await signIns.getByRole("button", { name: "Dismiss" }).click();
    await expect.poll(() => laptop.locator("#sign-ins").count()).toBe(0);
    await laptop.reload();
    expect(await laptop.locator("#sign-ins").count()).toBe(0);
    expect(await rows(laptop).count()).toBe(2); // dismissing ends nothing
  });

  test("revoking the phone sends it to the login page on its next click", async () => {
    await laptop
      .locator("#active tbody tr:not([data-current])")
      .getByRole("button", { name: /Revoke/ })
      .click();
    await laptop.waitForURL(/\/devices\?done=revoked$/);
    expect(await laptop.getByRole("status").textContent()).toContain("Revoked");
    expect(await rows(laptop).count()).toBe(1);
    expect(await historyRows(laptop).filter({ hasText: "Safari on iOS" }).filter({ hasText: "Revoked" }).count()).toBe(1);

    await phone.getByRole("link", { name: "Counter" }).click();
    await phone.waitForURL(`${base}/login`);
    expect(await phone.getByRole("heading", { name: "Log in" }).count()).toBe(1);

    // The laptop is untouched: its counter is still there.
    await laptop.getByRole("link", { name: "Counter" }).click();
    expect(await laptop.getByTestId("count").textContent()).toBe("2");
  });

  test("an API token from the devices page works by header, is listed, and is revoked there", async () => {
    expect((await api("/api/me")).status).toBe(401);

    await laptop.getByRole("link", { name: "Your devices" }).click();
    await laptop.getByLabel("Token name").fill("Backup script");
    await laptop.getByRole("button", { name: "Create API token" }).click();
    token = ((await laptop.getByTestId("token").textContent()) ?? "").trim();
    expect(token).toMatch(/^[\w-]+\.[\w+/-]+$/);
    // Shown once: a reload of the devices page does not show it again.
    await laptop.goto(`${base}/devices`);
    expect(await laptop.getByTestId("token").count()).toBe(0);

    const me = await api("/api/me", token);
    expect(me.status).toBe(200);
    expect(me.headers.get("set-cookie")).toBeNull();
    const body = (await me.json()) as { email: string; token: { label: string | null; handle: string | null } };
    expect(body).toMatchObject({ email: EMAIL, token: { label: "Backup script" } });
    const count = async (res: Promise<Response>) => ((await (await res).json()) as { count: number }).count;
    expect(await count(api("/api/counter", token, { method: "POST" }))).toBe(1);
    expect(await count(api("/api/counter", token))).toBe(1);
    // A cookie-less request without the header, or with a forged token, is refused.
    expect((await api("/api/counter")).status).toBe(401);
    expect((await api("/api/me", `${token.split(".")[0]}.forged`)).status).toBe(401);

    await laptop.reload();
    const tokenRow = rows(laptop).filter({ hasText: "API token" });
    expect(await tokenRow.count()).toBe(1);
    expect(await tokenRow.textContent()).toContain("Backup script");
    expect(await tokenRow.textContent()).toContain("last used by Node.js");
    expect(await tokenRow.getAttribute("data-handle")).toBe(body.token.handle);

    // A third device, for the screenshot and for "log out other devices" below.
    desktop = (await device(UA.desktop)).page;
    await logIn(desktop);
    await laptop.reload();
    expect(await rows(laptop).count()).toBe(3);
    await laptop.screenshot({ path: `${outDir}/devices.png`, fullPage: true });
    if (process.env.UPDATE_SCREENSHOT) mkdirSync(`${root}docs`, { recursive: true });
    if (process.env.UPDATE_SCREENSHOT) await laptop.screenshot({ path: `${root}docs/devices.png`, fullPage: true });

    await tokenRow.getByRole("button", { name: /Revoke/ }).click();
    await laptop.waitForURL(/done=revoked/);
    expect(await rows(laptop).filter({ hasText: "API token" }).count()).toBe(0);
    expect(await historyRows(laptop).filter({ hasText: "Backup script" }).filter({ hasText: "Revoked" }).count()).toBe(1);
    const after = await api("/api/me", token);
    expect(after.status).toBe(401);
    expect(after.headers.get("www-authenticate")).toContain("invalid_token");
  });

  test("log out other devices ends every other session, this one stays", async () => {
    await logIn(phone);
    // User-controlled text is escaped: a token named like markup shows as text.
    const secondToken = await newToken(laptop, `<b>bold</b> & "quoted"`);
    expect((await api("/api/me", secondToken)).status).toBe(200);
    await laptop.goto(`${base}/devices`);
    expect(await rows(laptop).count()).toBe(4); // laptop, desktop, phone, token
    const named = rows(laptop).filter({ hasText: "API token" });
    expect(await named.textContent()).toContain(`<b>bold</b> & "quoted"`);
    expect(await named.locator("b").count()).toBe(0);

    await laptop.getByRole("button", { name: "Log out other devices" }).click();
    await laptop.waitForURL(/done=others/);
    expect(await laptop.getByRole("status").textContent()).toContain("Ended 3 other sessions");
    expect(await rows(laptop).count()).toBe(1);
    expect(await laptop.getByRole("button", { name: "Log out other devices" }).isDisabled()).toBe(true);
    await laptop.screenshot({ path: `${outDir}/devices-after-logout-others.png`, fullPage: true });

    for (const page of [phone, desktop]) {
      await page.getByRole("link", { name: "Counter" }).click();
      await page.waitForURL(`${base}/login`);
    }
    expect((await api("/api/me", secondToken)).status).toBe(401);
    await laptop.getByRole("link", { name: "Counter" }).click();
    expect(await laptop.getByTestId("count").textContent()).toBe("2");
  });

  test("logging out is recorded in recent activity; a forged form post is refused", async () => {
    await laptop.getByRole("button", { name: "Log out" }).click();
    await laptop.waitForURL(`${base}/login`);
    await logIn(laptop);
    expect(await historyRows(laptop).filter({ hasText: "Chrome on Windows" }).filter({ hasText: "Logged out" }).count()).toBe(1);

    // A post without the session's CSRF token (what a forged cross-site form would send) does nothing.
    const forged = await laptop.request.post(`${base}/devices/logout-others`, { form: { _csrf: "nope" }, maxRedirects: 0 });
    expect(forged.status()).toBe(403);
  });
});

describe.runIf(haveBrowser)("devices example in Chromium: an old sign-in", () => {
  test("asks for the password before logging out other devices or creating a token: a wrong one is refused, the right one lets it through", async () => {
    const laptop = (await device(UA.laptop)).page;
    await logIn(laptop);
    const phone = (await device(UA.phone)).page;
    await logIn(phone);
    await ageSignIns(11 * 60_000); // past recentLoginMaxAge (10 minutes)
    await laptop.reload();
    const others = await rows(laptop).count();
    expect(others).toBeGreaterThanOrEqual(2);
    expect(await laptop.getByTestId("signed-in").textContent()).toContain("will ask for your password first");

    await laptop.getByRole("button", { name: "Log out other devices" }).click();
    await laptop.waitForURL(/\/confirm\?next=/);
    expect(await laptop.getByRole("heading", { name: "Confirm your password" }).count()).toBe(1);
    await laptop.screenshot({ path: `${outDir}/devices-confirm.png`, fullPage: true });
    await laptop.getByLabel("Password").fill("not my password");
    await laptop.getByRole("button", { name: "Confirm" }).click();
    expect(await laptop.getByRole("alert").textContent()).toContain("Wrong password");

    // Still old: creating a token asks too, and nothing was ended so far.
    await laptop.goto(`${base}/devices`);
    await laptop.getByRole("button", { name: "Create API token" }).click();
    await laptop.waitForURL(/\/confirm\?next=/);
    await laptop.getByLabel("Password").fill(PASSWORD);
    await laptop.getByRole("button", { name: "Confirm" }).click();
    await laptop.waitForURL(/\/devices\?done=confirmed$/);
    expect(await laptop.getByRole("status").textContent()).toContain("Password confirmed");
    expect(await rows(laptop).count()).toBe(others);
    expect(await laptop.getByTestId("signed-in").textContent()).toContain("You signed in on this device just now");

    await laptop.getByRole("button", { name: "Log out other devices" }).click();
    await laptop.waitForURL(/done=others/);
    expect(await rows(laptop).count()).toBe(1);
    await phone.getByRole("link", { name: "Counter" }).click();
    await phone.waitForURL(`${base}/login`);
    expect(await newToken(laptop, "After confirming")).toMatch(/^[\w-]+\.[\w+/-]+$/);
  });
});

describe.runIf(haveBrowser)("devices example in Chromium: a stolen cookie", () => {
  test("the id changes on sign-in and on a password confirmation; the old cookie used after the grace signs both holders out, and Recent activity says why", async () => {
    const user = await device(UA.phone);
    await user.page.goto(`${base}/login`);
    const anonymous = await sessionCookie(user.context); // the login form's session (its CSRF token)
    expect(anonymous).toBeDefined();
    await logIn(user.page);
    const signedIn = await sessionCookie(user.context);
    expect(signedIn).toBeDefined();
    expect(signedIn).not.toBe(anonymous);
    const stolen = signedIn!; // what a thief copies (malware, a shared computer, a leaked log)

    // The password confirmation rotates the id: the response carries a new cookie, the session goes on.
    await user.page.goto(`${base}/confirm?next=${encodeURIComponent("/devices?done=confirmed")}`);
    await user.page.getByLabel("Password").fill(PASSWORD);
    await user.page.getByRole("button", { name: "Confirm" }).click();
    await user.page.waitForURL(/\/devices\?done=confirmed$/);
    const rotatedAt = Date.now();
    const current = await sessionCookie(user.context);
    expect(current).toBeDefined();
    expect(current).not.toBe(stolen);
    expect(await user.page.locator("#active tbody tr[data-current]").textContent()).toContain("Safari on iOS");

    // Past the grace window, the copied cookie comes back from another browser.
    await sleep(rotatedAt + GRACE + 100 - Date.now());
    const thief = await device(UA.desktop);
    await thief.context.addCookies([{ name: COOKIE, value: stolen, url: base }]);
    const answer = await thief.page.goto(`${base}/devices`);
    expect(answer?.status()).toBe(401);
    expect(await thief.page.getByRole("heading", { name: "You were signed out" }).count()).toBe(1);
    expect(await thief.page.locator("main").textContent()).toContain("signed out because your session's cookie was used from elsewhere");
    expect(await thief.page.getByRole("link", { name: "Log in again" }).count()).toBe(1);
    await thief.page.screenshot({ path: `${outDir}/devices-cookie-reused.png`, fullPage: true });
    await thief.context.close();

    // The session ended everywhere: the user, on the new cookie, is signed out too.
    await user.page.getByRole("link", { name: "Counter" }).click();
    await user.page.waitForURL(`${base}/login`);
    await logIn(user.page);
    const reused = historyRows(user.page).filter({ hasText: "Signed out: this session's cookie was used from elsewhere" });
    expect(await reused.count()).toBe(1);
    expect(await reused.textContent()).toContain("Safari on iOS");
    expect(await reused.locator("time").count()).toBe(2); // signed in, ended
    await user.page.screenshot({ path: `${outDir}/devices-reused-activity.png`, fullPage: true });
    await user.context.close();
  });
});

/** The value of the session cookie `context` holds for the app, if any. */
async function sessionCookie(context: BrowserContext): Promise<string | undefined> {
  return (await context.cookies(base)).find((c) => c.name === COOKIE)?.value;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));

async function newToken(page: Page, label: string): Promise<string> {
  await page.goto(`${base}/devices`);
  await page.getByLabel("Token name").fill(label);
  await page.getByRole("button", { name: "Create API token" }).click();
  return ((await page.getByTestId("token").textContent()) ?? "").trim();
}
