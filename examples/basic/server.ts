// The minimal drop-in: express-session with connect-drizzle where MemoryStore was.
// Runs on embedded PGlite (data in examples/basic/.data) unless DATABASE_URL points at Postgres.
import express from "express";
import session from "express-session";
import { SessionStore } from "connect-drizzle";
import { openDatabase } from "../database.js";

declare module "express-session" {
  interface SessionData {
    views?: number;
  }
}

const { db, close } = await openDatabase(new URL("./.data", import.meta.url));
const store = new SessionStore({ db });
// Fails here, before the server listens, if the sessions table is missing or lacks a column: without it
// the first visitors would get a page and a cookie for a session that was never stored.
await store.ready();

const app = express();
app.use(
  session({
    store, // was: new MemoryStore() (the default)
    secret: process.env.SESSION_SECRET ?? "dev only: set SESSION_SECRET",
    resave: false,
    saveUninitialized: false,
    cookie: { maxAge: 24 * 60 * 60 * 1000 },
  }),
);

app.get("/", (req, res) => {
  req.session.views = (req.session.views ?? 0) + 1;
  res.type("html").send(`<p>You have seen this page ${req.session.views} time(s). Restart the server: the count survives.</p>`);
});

const port = Number(process.env.PORT ?? 3000);
const server = app.listen(port, () => console.log(`basic example on http://localhost:${port}`));

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    server.close();
    void store.close().then(close);
  });
}
