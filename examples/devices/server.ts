// npm run example:devices  ->  http://localhost:3000
// Embedded PGlite (data in examples/devices/.data, kept across restarts) unless DATABASE_URL points at
// Postgres. Set SESSION_SECRET (required with NODE_ENV=production), PORT, TRUST_PROXY (e.g. 1), and
// SESSION_ENCRYPTION_KEY to encrypt the session data at rest (comma-separated to rotate: new,old).
import { openDatabase } from "../database.js";
import { createApp } from "./app.js";

const { db, close: closeDatabase } = await openDatabase(new URL("./.data", import.meta.url));

const production = process.env.NODE_ENV === "production";
// Never a default key: without SESSION_ENCRYPTION_KEY the data is stored in plain jsonb, with it encrypted
// (a key of at least 32 random characters; a key that is too short stops the startup, saying how to make one).
const encryptionKeys = process.env.SESSION_ENCRYPTION_KEY?.split(",")
  .map((key) => key.trim())
  .filter(Boolean);
const { app, close: closeApp } = await createApp({
  db,
  // Outside production a fixed development secret keeps sessions and API tokens valid across restarts;
  // in production a missing SESSION_SECRET is a startup error (sessionMiddleware refuses to start).
  secret: process.env.SESSION_SECRET ?? (production ? undefined : "devices example: development only"),
  trustProxy:
    process.env.TRUST_PROXY === undefined ? undefined : /^\d+$/.test(process.env.TRUST_PROXY) ? Number(process.env.TRUST_PROXY) : process.env.TRUST_PROXY,
  encrypt: encryptionKeys?.length ? { secrets: encryptionKeys } : undefined,
});

const port = Number(process.env.PORT ?? 3000);
const server = app.listen(port, () => {
  const data = encryptionKeys?.length ? "session data encrypted at rest" : "session data not encrypted (set SESSION_ENCRYPTION_KEY)";
  console.log(`devices example on http://localhost:${port} (${process.env.DATABASE_URL ? "Postgres" : "PGlite in examples/devices/.data"}; ${data})`);
});

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: shutting down`);
  setTimeout(() => process.exit(1), 10_000).unref(); // a request that never ends must not block the exit
  // Stop accepting connections and let requests in flight finish, then close the store and the database.
  await new Promise<void>((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
  });
  await closeApp();
  await closeDatabase();
  process.exit(0);
}
for (const signal of ["SIGINT", "SIGTERM"] as const) process.once(signal, () => void shutdown(signal));
