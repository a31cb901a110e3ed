/**
 * One app instance in a process of its own, for test/faults/processes.test.ts: a SessionStore on its own
 * pg Pool, the test app (test/support/app.ts) on an ephemeral loopback port, and a few commands over IPC.
 * Started with `fork("test/support/child.ts", { execArgv: ["--import", "tsx"] })`; env: CHILD_DATABASE_URL,
 * CHILD_SCHEMA, CHILD_NAME.
 */
import type { AddressInfo } from "node:net";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { createSessionTable, SessionStore } from "../../src/index.js";
import { reap } from "../../src/index.js";
import { testApp } from "./app.js";

export type ChildCommand =
  | { id: number; cmd: "revoke"; handle: string }
  | { id: number; cmd: "list"; userId: string }
  | { id: number; cmd: "get"; sid: string }
  | { id: number; cmd: "reapAt"; at: number; batchSize: number; pauseMs: number }
  | { id: number; cmd: "exit" };

export type ChildMessage = { ready: true; port: number; pid: number } | { id: number; result?: unknown; error?: string };

const send = (message: ChildMessage) => process.send!(message);

const pool = new pg.Pool({ connectionString: process.env.CHILD_DATABASE_URL, max: 3, application_name: `connect-drizzle child ${process.env.CHILD_NAME}` });
pool.on("error", () => {});
const db = drizzle({ client: pool });
const table = createSessionTable("sessions", { schema: process.env.CHILD_SCHEMA });
const store = new SessionStore({ db, table, timeout: 5_000 });
const server = testApp(store).listen(0, "127.0.0.1", () => {
  send({ ready: true, port: (server.address() as AddressInfo).port, pid: process.pid });
});

// The store may grow its own reap(); the exported round works on any store's db and table.
async function reapAt(at: number, batchSize: number, pauseMs: number) {
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, at - Date.now())));
  return reap({ db, table, batchSize, onBatch: () => new Promise((resolve) => setTimeout(resolve, pauseMs)) });
}

async function handle(message: ChildCommand): Promise<unknown> {
  switch (message.cmd) {
    case "revoke":
      return store.revoke(message.handle, { anyOwner: true });
    case "list":
      return (await store.list({ userId: message.userId })).map((r) => r.handle);
    case "get":
      return store.get(message.sid);
    case "reapAt":
      return reapAt(message.at, message.batchSize, message.pauseMs);
    case "exit":
      server.close();
      await store.close();
      await pool.end();
      setImmediate(() => process.exit(0));
      return true;
  }
}

process.on("message", (message: ChildCommand) => {
  handle(message).then(
    (result) => send({ id: message.id, result }),
    (error) => send({ id: message.id, error: String(error?.message ?? error) }),
  );
});
// The parent went away: do not linger.
process.on("disconnect", () => process.exit(0));
