/**
 * The HTTP benchmark's server, run in a child process of its own (forked by bench/http.ts) so that
 * autocannon never shares its event loop. An Express 5 app with express-session on one store, with a
 * read route and a login route; it counts the SQL statements the store sends (by wrapping pg's
 * Client.query, which pg's Pool and drizzle's node-postgres driver both go through), those that NOTIFY
 * among them, and answers the parent's `stats`, `reset` and `idle` messages over IPC.
 */
import express from "express";
import session from "express-session";
import pg from "pg";
import { MAX_AGE, USER } from "./config.js";
import { isNotifyStatement, queryArgs } from "./notify.js";
import { openStore, type StoreName } from "./stores.js";

const counts = {
  requests: {} as Record<string, number>,
  statements: 0,
  writes: 0,
  selects: 0,
  byVerb: {} as Record<string, number>,
  notifyStatements: 0,
  errors: 0,
  cpuUs: 0,
};
let cpuAtReset = process.cpuUsage();
const reset = () => {
  cpuAtReset = process.cpuUsage();
  counts.requests = {};
  counts.statements = counts.writes = counts.selects = counts.notifyStatements = counts.errors = 0;
  counts.byVerb = {};
};

// Count every statement sent to Postgres from this process.
const originalQuery = pg.Client.prototype.query as (...args: any[]) => any;
pg.Client.prototype.query = function (this: pg.Client, ...args: any[]) {
  const { text, values } = queryArgs(args);
  // A statement that NOTIFYs (one notification per row it changes: none when it changes nothing).
  if (isNotifyStatement(text, values)) counts.notifyStatements++;
  const verb = /^\s*(\w+)/.exec(text)?.[1]?.toLowerCase() ?? "?";
  counts.statements++;
  counts.byVerb[verb] = (counts.byVerb[verb] ?? 0) + 1;
  if (verb === "select") counts.selects++;
  if (verb === "insert" || verb === "update" || verb === "delete" || (verb === "with" && /\b(insert|update|delete)\b/i.test(text))) counts.writes++;
  return originalQuery.apply(this, args);
} as any;

let closing = false;
/** Requests received and not yet answered (or dropped). */
let inFlight = 0;

async function main() {
  const name = process.env.BENCH_STORE as StoreName;
  const schema = process.env.BENCH_SCHEMA!;
  const notify = process.env.BENCH_NOTIFY === undefined ? undefined : process.env.BENCH_NOTIFY === "true";
  const cache = process.env.BENCH_CACHE === undefined ? undefined : (JSON.parse(process.env.BENCH_CACHE) as { max?: number; ttl?: number });
  const opened = await openStore(name, { schema, redisPrefix: process.env.BENCH_REDIS_PREFIX, notify, cache });

  const app = express();
  app.disable("x-powered-by");
  app.use((req, res, next) => {
    counts.requests[req.path] = (counts.requests[req.path] ?? 0) + 1;
    inFlight++;
    res.once("close", () => inFlight--);
    next();
  });
  app.use(
    session({
      store: opened.store,
      secret: "bench-secret-bench-secret",
      resave: false,
      saveUninitialized: false,
      rolling: true,
      cookie: { maxAge: MAX_AGE },
    }),
  );
  // A read-only request: the session is loaded, nothing in it changes.
  app.get("/read", (req, res) => {
    res.json({ user: (req.session as unknown as { user?: typeof USER }).user ?? null });
  });
  // A login: a new session id (regenerate), then the user stored in it.
  app.post("/login", (req, res, next) => {
    req.session.regenerate((err) => {
      if (err) return next(err);
      (req.session as unknown as { user: typeof USER }).user = USER;
      res.json({ ok: true });
    });
  });
  app.use((err: unknown, _req: express.Request, res: express.Response, _next: express.NextFunction) => {
    if (counts.errors++ === 0 && !closing) console.error(`server (${name}):`, err);
    res.status(500).end();
  });

  const server = app.listen(0, "127.0.0.1", () => {
    const address = server.address();
    process.send!({ type: "ready", port: typeof address === "object" && address ? address.port : 0 });
  });
  server.keepAliveTimeout = 60_000;

  process.on("message", async (message: { type: string }) => {
    if (message.type === "reset") {
      reset();
      process.send!({ type: "reset" });
    } else if (message.type === "idle") {
      // The requests autocannon left in flight at the end of a cell are still served: wait for them (at most 5 s).
      const deadline = Date.now() + 5_000;
      while (inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      process.send!({ type: "idle" });
    } else if (message.type === "stats") {
      const cpu = process.cpuUsage(cpuAtReset);
      counts.cpuUs = cpu.user + cpu.system;
      process.send!({ type: "stats", counts });
    } else if (message.type === "exit") {
      closing = true;
      server.closeAllConnections();
      server.close();
      await opened.close().catch(() => {});
      process.exit(0);
    }
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
