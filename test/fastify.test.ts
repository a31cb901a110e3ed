import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fastifyCookie from "@fastify/cookie";
import fastifySession from "@fastify/session";
import Fastify, { type FastifyInstance, type LightMyRequestResponse } from "fastify";
import { afterEach, describe, expect, it } from "vitest";
import { SessionStore, type SessionStoreOptions } from "../src/index.js";
import { cacheReady, drivers, migrationScript, notifyBarrier, type TestDb, useTestDb } from "./support/db.js";

declare module "fastify" {
  interface Session {
    userId?: string;
    views?: number;
  }
}

const HOUR = 3_600_000;
const SECRET = "a fastify session secret of 32+ characters";

/** A held route's gate: the route awaits `opened` after loading its session, until the test calls `open`. */
interface Gate {
  loaded: Promise<void>;
  opened: Promise<void>;
  open(): void;
}

function gate(): Gate & { markLoaded(): void } {
  let markLoaded!: () => void;
  let open!: () => void;
  const loaded = new Promise<void>((resolve) => (markLoaded = resolve));
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { loaded, opened, open, markLoaded };
}

interface AppOptions {
  rolling?: boolean;
  secure?: boolean | "auto" | "default";
}

/**
 * A small fastify app on @fastify/session with the store: POST /login/:user (regenerate, then the user),
 * GET /me, POST /logout (destroy), POST and GET /count, and GET /held, which loads its session, waits for
 * the test's gate, reloads the session with `?reload=1`, and then changes it (a request in flight).
 */
async function fastifyApp(store: SessionStore, options: AppOptions = {}): Promise<{ app: FastifyInstance; held: () => Gate }> {
  const app = Fastify({ trustProxy: "127.0.0.1" });
  await app.register(fastifyCookie);
  await app.register(fastifySession, {
    store,
    secret: SECRET,
    cookieName: "sid",
    saveUninitialized: false,
    rolling: options.rolling ?? false,
    // docs/frameworks.md's setting outside production; "default" leaves @fastify/session's own (always Secure).
    cookie: { maxAge: HOUR, ...(options.secure === "default" ? {} : { secure: options.secure ?? "auto" }) },
  });
  let next = gate();
  app.post<{ Params: { user: string } }>("/login/:user", async (request) => {
    await request.session.regenerate();
    request.session.userId = request.params.user;
    return { ok: true };
  });
  app.get("/me", async (request, reply) => {
    const user = request.session.userId;
    return user ? { user } : reply.code(401).send({ error: "not logged in" });
  });
  app.post("/logout", async (request) => {
    await request.session.destroy();
    return { ok: true };
  });
  app.post("/count", async (request) => {
    request.session.views = (request.session.views ?? 0) + 1;
    return { views: request.session.views };
  });
  app.get("/count", async (request) => ({ views: request.session.views ?? 0 }));
  app.get<{ Querystring: { reload?: string } }>("/held", async (request) => {
    const current = next;
    current.markLoaded();
    await current.opened;
    if (request.query.reload) await request.session.reload();
    request.session.views = (request.session.views ?? 0) + 1;
    return { views: request.session.views };
  });
  await app.ready();
  return {
    app,
    held: () => {
      next = gate();
      return next;
    },
  };
}

/** The `sid=value` part of the session cookie a response sets, to send it back. */
function cookieOf(res: LightMyRequestResponse): string | undefined {
  const cookie = res.cookies.find((c) => c.name === "sid");
  return cookie ? `sid=${cookie.value}` : undefined;
}

describe.each(drivers)("@fastify/session on %s", (driver) => {
  let t: TestDb;
  let store: SessionStore;
  const closing: Array<{ close(): Promise<void> }> = [];

  useTestDb(driver, (db, fresh) => {
    t = db;
    store = fresh;
  });
  afterEach(async () => {
    while (closing.length > 0) await closing.pop()!.close();
  });

  const storeWith = (options: Partial<SessionStoreOptions>) => {
    const made = new SessionStore({ db: t.db, table: t.table, reaper: false, ...options });
    closing.push(made);
    return made;
  };
  const open = async (on: SessionStore, options: AppOptions = {}) => {
    const made = await fastifyApp(on, options);
    closing.push(made.app);
    return made;
  };
  const login = async (app: FastifyInstance, user = "ann", headers: Record<string, string> = {}) => {
    const res = await app.inject({ method: "POST", url: `/login/${user}`, headers });
    expect(res.statusCode).toBe(200);
    const cookie = cookieOf(res);
    expect(cookie).toBeDefined();
    return cookie!;
  };
  const rowCount = async () => Number((await t.raw(`select count(*)::int as n from $table`))[0].n);

  it("with docs/frameworks.md's cookie setting (secure: \"auto\"), a login over plain http gets its cookie and holds, and one through the proxy on https gets a Secure cookie; @fastify/session's default sets none over http", async () => {
    const { app } = await open(store);
    const cookie = await login(app);
    expect(cookie).toBeDefined();
    expect((await app.inject({ url: "/me", headers: { cookie } })).json()).toEqual({ user: "ann" });
    const https = await app.inject({ method: "POST", url: "/login/bob", headers: { "x-forwarded-proto": "https" } });
    expect(https.cookies.find((c) => c.name === "sid")?.secure).toBe(true);
    // The stumble the docs' setting avoids: the default cookie is Secure, so a browser on http gets no cookie and no login.
    const { app: strict } = await open(store, { secure: "default" });
    const lost = await strict.inject({ method: "POST", url: "/login/ann" });
    expect(lost.statusCode).toBe(200);
    expect(cookieOf(lost)).toBeUndefined();
  });

  it("logs in with regenerate, reads the user back, and logout ends the session: the old cookie gets none, its row is gone", async () => {
    const { app } = await open(store);
    const anonymous = cookieOf(await app.inject({ method: "POST", url: "/count" }))!;
    const cookie = await login(app, "ann", { cookie: anonymous });
    expect(cookie).not.toBe(anonymous);
    expect((await app.inject({ url: "/count", headers: { cookie: anonymous } })).json()).toEqual({ views: 0 });
    expect((await app.inject({ url: "/me", headers: { cookie } })).json()).toEqual({ user: "ann" });
    expect(await rowCount()).toBe(1);

    expect((await app.inject({ method: "POST", url: "/logout", headers: { cookie } })).statusCode).toBe(200);
    expect((await app.inject({ url: "/me", headers: { cookie } })).statusCode).toBe(401);
    expect(await rowCount()).toBe(0);
  });

  it("records the user agent and client IP of the request that saved the session, and a later change of device", async () => {
    const { app } = await open(store);
    const res = await app.inject({
      method: "POST",
      url: "/login/ann",
      headers: { "user-agent": "Firefox/130", "x-forwarded-for": "203.0.113.7" },
    });
    const cookie = cookieOf(res)!;
    const [record] = await store.list({ userId: "ann" });
    expect(record).toMatchObject({ userAgent: "Firefox/130", ip: "203.0.113.7" });

    await app.inject({ method: "POST", url: "/count", headers: { cookie, "user-agent": "Safari/18", "x-forwarded-for": "198.51.100.2" } });
    const [moved] = await store.list({ userId: "ann" });
    expect(moved).toMatchObject({ userAgent: "Safari/18", ip: "198.51.100.2" });
  });

  it("with rolling, a read from another device is recorded at once (the unchanged save is not skipped then)", async () => {
    const { app } = await open(store, { rolling: true });
    const cookie = await login(app, "ann", { "user-agent": "Firefox/130" });
    await app.inject({ url: "/me", headers: { cookie, "user-agent": "Safari/18", "x-forwarded-for": "198.51.100.2" } });
    const [record] = await store.list({ userId: "ann" });
    expect(record).toMatchObject({ userAgent: "Safari/18", ip: "198.51.100.2" });
  });

  it("with history (retainEnded), regenerate of a logged-in session is recorded as rotated, logout as logout", async () => {
    const history = storeWith({ retainEnded: HOUR });
    const { app } = await open(history);
    const first = await login(app, "ann");
    // Logged in again on the same browser: the logged-in session is rotated, not logged out.
    const second = await login(app, "ann", { cookie: first });
    expect(second).not.toBe(first);
    expect((await app.inject({ url: "/me", headers: { cookie: first } })).statusCode).toBe(401);
    expect((await history.list({ userId: "ann", status: "ended" })).map((r) => r.endReason)).toEqual(["rotated"]);

    await app.inject({ method: "POST", url: "/logout", headers: { cookie: second } });
    expect((await app.inject({ url: "/me", headers: { cookie: second } })).statusCode).toBe(401);
    expect((await history.list({ userId: "ann", status: "ended" })).map((r) => r.endReason).sort()).toEqual(["logout", "rotated"]);
    expect(await history.count({ userId: "ann" })).toBe(0);
  });

  it("with history, the login of an anonymous session records its end as logout (it never had a user)", async () => {
    const history = storeWith({ retainEnded: HOUR });
    const { app } = await open(history);
    const anonymous = cookieOf(await app.inject({ method: "POST", url: "/count" }))!;
    await login(app, "ann", { cookie: anonymous });
    const [ended] = await t.raw<{ end_reason: string; user_id: string | null }>(`select end_reason, user_id from $table where ended_at is not null`);
    expect(ended).toEqual({ end_reason: "logout", user_id: null });
  });

  it("with rolling, 5 read requests cost 5 lookups and no write, and the browser's cookie expiry still rolls", async () => {
    const { app } = await open(store, { rolling: true });
    const cookie = await login(app);
    t.statements.length = 0;
    const expiries: number[] = [];
    for (let i = 0; i < 5; i++) {
      const res = await app.inject({ url: "/me", headers: { cookie } });
      expect(res.json()).toEqual({ user: "ann" });
      const sent = res.cookies.find((c) => c.name === "sid");
      expect(sent, "rolling sends the cookie on every response").toBeDefined();
      expiries.push(new Date(sent!.expires!).getTime());
      // Set-Cookie expiries have whole seconds: the five reads span more than one.
      await new Promise((resolve) => setTimeout(resolve, 260));
    }
    expect(t.statements, JSON.stringify(t.statements)).toHaveLength(5);
    expect(t.statements.every((s) => /^select/i.test(s))).toBe(true);
    expect(expiries[4]!).toBeGreaterThan(expiries[0]!);
    expect(expiries[0]!).toBeGreaterThan(Date.now() + HOUR - 60_000);
  });

  it("a changed session is saved in place (one update, no insert) and read back", async () => {
    const { app } = await open(store);
    const cookie = await login(app);
    t.statements.length = 0;
    expect((await app.inject({ method: "POST", url: "/count", headers: { cookie } })).json()).toEqual({ views: 1 });
    expect(t.statements.filter((s) => /^insert/i.test(s))).toEqual([]);
    expect(t.statements.filter((s) => /^update/i.test(s))).toHaveLength(1);
    expect((await app.inject({ url: "/count", headers: { cookie } })).json()).toEqual({ views: 1 });
    expect(await rowCount()).toBe(1);
  });

  describe.each([
    ["rolling: false", false],
    ["rolling: true", true],
  ])("a request in flight never saves its session back to life (%s)", (_, rolling) => {
    it.each([
      ["logs out in another request", "logout"],
      ["the app revokes it (store.revoke)", "revoke"],
    ])("when the user %s", async (_, ending) => {
      const { app, held } = await open(store, { rolling });
      const cookie = await login(app);
      const gateA = held();
      const inFlight = app.inject({ url: "/held", headers: { cookie } });
      await gateA.loaded;

      if (ending === "logout") {
        expect((await app.inject({ method: "POST", url: "/logout", headers: { cookie } })).statusCode).toBe(200);
      } else {
        const [record] = await store.list({ userId: "ann" });
        expect(await store.revoke(record!.handle, { userId: "ann" })).toBe(true);
      }
      expect(await rowCount()).toBe(0);

      // The request that loaded the session before it ended changes it and saves at its end.
      gateA.open();
      await inFlight;
      expect(await rowCount()).toBe(0);
      expect((await app.inject({ url: "/me", headers: { cookie } })).statusCode).toBe(401);
      expect((await app.inject({ url: "/count", headers: { cookie } })).json()).toEqual({ views: 0 });
      expect(await rowCount()).toBe(0);
    });
  });

  it("a request in flight that reloads its session after it was revoked, then changes it, does not bring it back", async () => {
    const { app, held } = await open(store);
    const cookie = await login(app);
    const gateA = held();
    const inFlight = app.inject({ url: "/held?reload=1", headers: { cookie } });
    await gateA.loaded;
    const [record] = await store.list({ userId: "ann" });
    expect(await store.revoke(record!.handle, { userId: "ann" })).toBe(true);
    gateA.open();
    expect((await inFlight).json()).toEqual({ views: 1 });
    expect(await rowCount()).toBe(0);
    expect((await app.inject({ url: "/me", headers: { cookie } })).statusCode).toBe(401);
  });

  it.runIf(driver !== "postgres.js")("with the read cache, a repeated read costs no statement and a revoke is honoured at once", async () => {
    const cached = storeWith({ cache: {} });
    expect(await cacheReady(cached)).toBe(true);
    const { app } = await open(cached, { rolling: true });
    const cookie = await login(app);
    // The login's NOTIFYs go out after its writes: once this store has heard them, a read is cached for good.
    await notifyBarrier(cached);
    await app.inject({ url: "/me", headers: { cookie } });
    t.statements.length = 0;
    expect((await app.inject({ url: "/me", headers: { cookie } })).json()).toEqual({ user: "ann" });
    expect(t.statements).toEqual([]);

    const [record] = await cached.list({ userId: "ann" });
    await cached.revoke(record!.handle, { userId: "ann" });
    expect((await app.inject({ url: "/me", headers: { cookie } })).statusCode).toBe(401);
    expect(await rowCount()).toBe(0);
  });
});

describe("CommonJS consumers (NestJS builds)", () => {
  it("require('connect-drizzle') builds a working store without top-level await", () => {
    const root = join(import.meta.dirname, "..");
    const out = mkdtempSync(join(tmpdir(), "connect-drizzle-cjs-"));
    try {
      // --no-config: the package's own config builds more than this one CommonJS file (and would write it twice at once).
      execFileSync("npx", ["tsup", "src/index.ts", "--no-config", "--shims", "--format", "cjs", "--no-dts", "--out-dir", out, "--silent"], {
        cwd: root,
        stdio: "pipe",
      });
      const script = `
        const { SessionStore } = require(${JSON.stringify(join(out, "index.cjs"))});
        const { PGlite } = require("@electric-sql/pglite");
        const { drizzle } = require("drizzle-orm/pglite");
        async function bootstrap() {
          const client = new PGlite();
          await client.exec(require("fs").readFileSync(0, "utf8"));
          const store = new SessionStore({ db: drizzle({ client }), reaper: false });
          const cookie = { originalMaxAge: 60000, expires: new Date(Date.now() + 60000).toISOString() };
          await store.set("cjs", { cookie, userId: "ann" });
          const loaded = await store.get("cjs");
          await store.close();
          await client.close();
          process.stdout.write(JSON.stringify(loaded.userId));
        }
        bootstrap().catch((error) => { console.error(error); process.exit(1); });
      `;
      const printed = execFileSync("node", ["--input-type=commonjs", "-e", script], {
        cwd: root,
        input: migrationScript(),
        encoding: "utf8",
        // The build is outside the package: resolve its dependencies from the package's node_modules.
        env: { ...process.env, NODE_PATH: join(root, "node_modules") },
      });
      expect(printed).toBe('"ann"');
    } finally {
      rmSync(out, { recursive: true, force: true });
    }
  }, 120_000);
});
