#!/usr/bin/env node
/**
 * `npx connect-drizzle reap`: one reaper round from cron (with `reaper: false` in the app), then exit.
 * Connects with node-postgres (`pg`), imported only here and only when run: the package itself needs no driver.
 */
import { parseArgs } from "node:util";
import { DEFAULT_TIMEOUT } from "./options.js";
import { reap } from "./reaper.js";
import { createSessionTable } from "./schema.js";

const USAGE = `Usage: DATABASE_URL=postgres://... npx connect-drizzle reap [options]

Runs one reaper round on the sessions table: deletes expired sessions (or, with --retain-ended, turns
them into ended history) and ended sessions past their retention, in batches. Prints the result as one
JSON line: {"deleted":0,"ended":0,"batches":0,"durationMs":0,"skipped":false}. "skipped": true means
another instance was reaping the table at that moment. Exits 0, or 1 with a message on error.

Options:
  --table <name>          the sessions table (default: sessions)
  --schema <name>         its Postgres schema (default: the connection's search_path, normally public)
  --retain-ended <ms>     keep ended sessions this long as history: your store's retainEnded (default: 0)
  --batch-size <n>        rows per batch, each committed on its own (default: 5000)
  --timeout <ms>          longest wait for one statement, connection wait included; past it the round
                          stops and exits 1, e.g. when the table is locked (default: 10000)
  -h, --help              this text
`;

interface Io {
  out(line: string): void;
  err(line: string): void;
}

async function main(argv: string[], env: NodeJS.ProcessEnv, io: Io): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        table: { type: "string" },
        schema: { type: "string" },
        "retain-ended": { type: "string" },
        "batch-size": { type: "string" },
        timeout: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
    });
  } catch (error) {
    io.err(`connect-drizzle: ${(error as Error).message}\n\n${USAGE}`);
    return 1;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    io.out(USAGE);
    return 0;
  }
  if (positionals.length !== 1 || positionals[0] !== "reap") {
    io.err(`connect-drizzle: unknown command ${positionals.length ? `"${positionals.join(" ")}"` : "(none)"}; the command is "reap"\n\n${USAGE}`);
    return 1;
  }
  const retainEnded = wholeNumber(values["retain-ended"], "--retain-ended", 0, true, " of milliseconds");
  const batchSize = wholeNumber(values["batch-size"], "--batch-size", 5_000, false);
  const timeout = wholeNumber(values.timeout, "--timeout", DEFAULT_TIMEOUT, false, " of milliseconds");
  if (typeof retainEnded === "string" || typeof batchSize === "string" || typeof timeout === "string") {
    io.err(`connect-drizzle: ${[retainEnded, batchSize, timeout].find((value) => typeof value === "string")}`);
    return 1;
  }
  for (const flag of ["table", "schema"] as const) {
    if (values[flag] === "") {
      io.err(`connect-drizzle: --${flag} needs a name`);
      return 1;
    }
  }
  const url = env.DATABASE_URL;
  if (!url) {
    io.err("connect-drizzle: set DATABASE_URL to your database, e.g. DATABASE_URL=postgres://user:password@host:5432/db npx connect-drizzle reap");
    return 1;
  }

  let pg: typeof import("pg");
  let drizzle: typeof import("drizzle-orm/node-postgres").drizzle;
  try {
    const module: any = await import("pg");
    pg = module.default ?? module;
  } catch (error) {
    if ((error as { code?: string }).code === "ERR_MODULE_NOT_FOUND" || (error as { code?: string }).code === "MODULE_NOT_FOUND") {
      io.err(
        "connect-drizzle: `npx connect-drizzle reap` connects with node-postgres, and the `pg` package is not installed here. " +
          "Install it in the project you run this from: npm install pg",
      );
      return 1;
    }
    throw error;
  }
  ({ drizzle } = await import("drizzle-orm/node-postgres"));

  // Two connections: one holds the round's lock, the other runs the batches.
  const pool = new pg.Pool({ connectionString: url, max: 2, application_name: "connect-drizzle reap" });
  // An idle connection that drops must not crash the process; the round reports its own failure.
  pool.on("error", () => {});
  // Connections checked out right now. After a timeout, one may still be running the statement given up on
  // (waiting for a lock on the table, say): pool.end() would wait for it, and the cron job with it.
  const busy = new Set<import("pg").PoolClient>();
  pool.on("acquire", (client) => busy.add(client));
  pool.on("release", (_error, client) => busy.delete(client));
  try {
    // drizzle refuses pgSchema("public"): a table there is an unqualified one.
    const schema = values.schema === "public" ? undefined : values.schema;
    const table = createSessionTable(values.table ?? "sessions", schema ? { schema } : {});
    const result = await reap({ db: drizzle({ client: pool }), table, retainEnded, batchSize, timeout });
    io.out(JSON.stringify(result));
    return 0;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    io.err(message.startsWith("connect-drizzle:") ? message : `connect-drizzle: reap failed: ${message}`);
    return 1;
  } finally {
    // Closing the socket is what ends a busy connection now; the database may still finish its statement.
    await Promise.all([...busy].map((client) => client.end().catch(() => {})));
    await pool.end().catch(() => {});
  }
}

/** Parses a flag holding a whole number; returns the number, or an error message. */
function wholeNumber(value: string | undefined, flag: string, fallback: number, allowZero: boolean, unit = ""): number | string {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (value.trim() === "" || !Number.isSafeInteger(n) || n < 0 || (n === 0 && !allowZero)) {
    return `${flag} must be a ${allowZero ? "non-negative" : "positive"} whole number${unit} (got "${value}")`;
  }
  return n;
}

main(process.argv.slice(2), process.env, {
  out: (line) => process.stdout.write(line.endsWith("\n") ? line : `${line}\n`),
  err: (line) => process.stderr.write(line.endsWith("\n") ? line : `${line}\n`),
}).then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`connect-drizzle: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`);
    process.exitCode = 1;
  },
);
