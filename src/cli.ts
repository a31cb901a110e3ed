#!/usr/bin/env node
/**
 * `npx connect-drizzle <command>`: the migrations, one reaper round from cron (with `reaper: false` in the
 * app), or a copy of connect-pg-simple's sessions; then exit. A thin parser: each command's work is a function of the package.
 * Connects with node-postgres (`pg`), imported only here and only when run: the package itself needs no driver.
 */
import {
  checked,
  cookieToCheck,
  type FLAGS,
  IMPORT_USAGE,
  MIGRATE_USAGE,
  name,
  parseFlags,
  Problem,
  REAP_USAGE,
  secretsOf,
  sessionTable,
  userIdAt,
  wholeNumber,
  type CookieToCheck,
  type Values,
} from "./cli-args.js";
import { unsign } from "./cookie-signing.js";
import { DEFAULT_IMPORT_BATCH, importConnectPgSimple } from "./import.js";
import { sourceSession } from "./import-source.js";
import { migrate } from "./migrations.js";
import { DEFAULT_TIMEOUT, type AnyPgDatabase, type UserIdOf } from "./options.js";
import { reap } from "./reaper.js";
import type { SessionTable } from "./schema.js";
import { SessionStore } from "./store.js";

interface Io {
  out(line: string): void;
  err(line: string): void;
}

/** A command: its usage, its flags, and how it turns them into what it runs with, then runs. */
interface Command<Settings = unknown> {
  /** Its usage text, shown by `--help`. */
  usage: string;
  /** The flags it takes, from {@link FLAGS}. */
  flags: ReadonlyArray<keyof typeof FLAGS>;
  /** Reads the flags (and the environment): the settings to run with, or an error message. */
  parse(values: Values, env: NodeJS.ProcessEnv): Settings | Problem;
  /** What to tell the user before it runs (on stderr), e.g. a setting that is easy to get wrong. */
  notes?(settings: Settings): string[];
  /** Runs on the database; what it resolves to is printed as one JSON line. */
  run(db: AnyPgDatabase, settings: Settings): Promise<unknown>;
}

/** Keeps each command's settings type in the table of commands. */
const command = <Settings>(definition: Command<Settings>): Command => definition as Command;

const COMMANDS: Record<string, Command> = {
  migrate: command({
    usage: MIGRATE_USAGE,
    flags: ["migrations-table", "migrations-schema"],
    parse: (values) => checked({ migrationsTable: name(values, "migrations-table"), migrationsSchema: name(values, "migrations-schema") }),
    run: async (db, settings) => {
      const started = performance.now();
      const options = Object.fromEntries(Object.entries(settings).filter(([, value]) => value !== undefined));
      await migrate(db, options);
      return { migrated: true, durationMs: Math.round(performance.now() - started) };
    },
  }),
  reap: command({
    usage: REAP_USAGE,
    flags: ["table", "schema", "retain-ended", "batch-size", "timeout"],
    parse: (values) =>
      checked({
        table: sessionTable(values),
        retainEnded: wholeNumber(values["retain-ended"], "--retain-ended", 0, true, " of milliseconds"),
        batchSize: wholeNumber(values["batch-size"], "--batch-size", 5_000, false),
        timeout: wholeNumber(values.timeout, "--timeout", DEFAULT_TIMEOUT, false, " of milliseconds"),
      }),
    run: (db, settings) => reap({ db, ...settings }),
  }),
  "import-pg-simple": command({
    usage: IMPORT_USAGE,
    flags: ["from-table", "from-schema", "table", "schema", "secret", "user-id-path", "user-id-type", "batch-size", "dry-run", "redo", "check-cookie"],
    parse: (values, env) =>
      checked({
        table: sessionTable(values, values["user-id-type"]),
        fromTable: name(values, "from-table"),
        fromSchema: name(values, "from-schema"),
        secrets: secretsOf(values, env),
        userId: userIdAt(values["user-id-path"]),
        batchSize: wholeNumber(values["batch-size"], "--batch-size", DEFAULT_IMPORT_BATCH, false),
        dryRun: values["dry-run"] === true,
        redo: values.redo === true,
        check: cookieToCheck(values, env),
      }),
    notes: ({ secrets }) =>
      secrets.length > 0
        ? []
        : [
            "connect-drizzle: no --secret and no SESSION_STORE_SECRETS: sessions are keyed with SHA-256, as a store without `secrets` keys them. " +
              "If your SessionStore has `secrets`, give the import the same ones, or the app finds none of the sessions " +
              "(see --check-cookie; --redo copies again).",
          ],
    run: async (db, { check, ...settings }) => (check ? checkCookie(db, settings, check) : importConnectPgSimple({ db, ...settings })),
  }),
};

const COMMAND_NAMES = Object.keys(COMMANDS);

const USAGE = `Usage: npx connect-drizzle <command> [options]   (commands: ${COMMAND_NAMES.join(", ")})

${Object.values(COMMANDS)
  .map((command) => command.usage)
  .join("\n")}`;

async function main(argv: string[], env: NodeJS.ProcessEnv, io: Io): Promise<number> {
  const parsed = parseFlags(argv, COMMANDS);
  if (parsed instanceof Problem) {
    io.err(`connect-drizzle: ${parsed.message}`);
    return 1;
  }
  const { values, positionals } = parsed;
  const name = positionals.length === 1 ? positionals[0]! : undefined;
  const chosen = name !== undefined && Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (values.help) {
    io.out(chosen?.usage ?? USAGE);
    return 0;
  }
  if (!chosen) {
    const list = COMMAND_NAMES.map((n) => `"${n}"`).join(" or ");
    io.err(`connect-drizzle: unknown command ${positionals.length ? `"${positionals.join(" ")}"` : "(none)"}; the command is ${list}\n\n${USAGE}`);
    return 1;
  }
  const foreign = Object.keys(values).filter((flag) => flag !== "help" && !chosen.flags.includes(flag as keyof typeof FLAGS));
  const settings =
    foreign.length > 0 ? new Problem(`${foreign.map((f) => `--${f}`).join(", ")} is not an option of "${name}" (see --help)`) : chosen.parse(values, env);
  if (settings instanceof Problem) {
    io.err(`connect-drizzle: ${settings.message}`);
    return 1;
  }
  for (const note of chosen.notes?.(settings) ?? []) io.err(note);
  const url = env.DATABASE_URL;
  if (!url) {
    io.err(`connect-drizzle: set DATABASE_URL to your database, e.g. DATABASE_URL=postgres://user:password@host:5432/db npx connect-drizzle ${name}`);
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
        `connect-drizzle: \`npx connect-drizzle ${name}\` connects with node-postgres, and the \`pg\` package is not installed here. ` +
          "Install it in the project you run this from: npm install pg",
      );
      return 1;
    }
    throw error;
  }
  ({ drizzle } = await import("drizzle-orm/node-postgres"));

  // Two connections: the reaper's round holds its lock on one and runs the batches on the other.
  const pool = new pg.Pool({ connectionString: url, max: 2, application_name: `connect-drizzle ${name}` });
  // An idle connection that drops must not crash the process; the command reports its own failure.
  pool.on("error", () => {});
  // Connections checked out right now. After a timeout, one may still be running the statement given up on
  // (waiting for a lock on the table, say): pool.end() would wait for it, and the cron job with it.
  const busy = new Set<import("pg").PoolClient>();
  pool.on("acquire", (client) => busy.add(client));
  pool.on("release", (_error, client) => busy.delete(client));
  try {
    io.out(JSON.stringify(await chosen.run(drizzle({ client: pool }), settings)));
    return 0;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    io.err(message.startsWith("connect-drizzle:") ? message : `connect-drizzle: ${name} failed: ${message}`);
    return 1;
  } finally {
    // Closing the socket is what ends a busy connection now; the database may still finish its statement.
    await Promise.all([...busy].map((client) => client.end().catch(() => {})));
    await pool.end().catch(() => {});
  }
}

/**
 * --check-cookie: whether the app would find the session of a cookie after the import. The cookie is
 * verified as express-session verifies it, then looked up with a store keyed by the secrets given, as the
 * app's store would look it up.
 */
async function checkCookie(
  db: AnyPgDatabase,
  settings: { table: SessionTable; secrets: string[]; fromTable?: string; fromSchema?: string; userId?: UserIdOf },
  { cookie, cookieSecrets }: CookieToCheck,
): Promise<{ cookie: string; inOldTable: boolean; copied: boolean; found: boolean }> {
  const verified = unsign(cookie, cookieSecrets);
  if ("refused" in verified) {
    const why =
      verified.refused === "unsigned"
        ? "not signed (an express-session cookie starts with s: or s%3A)"
        : "bad signature (SESSION_SECRET is not the secret that signed it)";
    return { cookie: why, inOldTable: false, copied: false, found: false };
  }
  const { sid } = verified;
  const { inOldTable, copied } = await sourceSession(db, settings, sid);
  const store = new SessionStore({
    db,
    table: settings.table,
    secrets: settings.secrets,
    reaper: false,
    ...(settings.userId ? { userId: settings.userId } : {}),
  });
  try {
    return { cookie: "valid", inOldTable, copied, found: (await store.get(sid)) !== null };
  } finally {
    await store.close();
  }
}

main(process.argv.slice(2), process.env, {
  out: (line) => process.stdout.write(line.endsWith("\n") ? line : `${line}\n`),
  err: (line) => process.stderr.write(line.endsWith("\n") ? line : `${line}\n`),
}).then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`connect-drizzle: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
