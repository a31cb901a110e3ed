#!/usr/bin/env node
/**
 * `npx connect-drizzle <command>`: the migrations, one reaper round from cron (with `reaper: false` in the
 * app), or a copy of connect-pg-simple's sessions; then exit. A thin parser: each command's work is a function of the package.
 * Connects with node-postgres (`pg`), imported only here and only when run: the package itself needs no driver.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { closest } from "./check.js";
import { DEFAULT_IMPORT_BATCH, importConnectPgSimple, sourceSession } from "./import.js";
import { sign } from "./middleware.js";
import { migrate } from "./migrations.js";
import { DEFAULT_TIMEOUT, type AnyPgDatabase, type UserIdOf } from "./options.js";
import { reap } from "./reaper.js";
import { createSessionTable, type SessionTable, type UserIdType } from "./schema.js";
import { SessionStore } from "./store.js";

interface Io {
  out(line: string): void;
  err(line: string): void;
}

/** The parsed flags, by name. */
type Values = Record<string, string | boolean | string[] | undefined>;

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

/** A flag's value was refused: why. */
class Problem {
  constructor(readonly message: string) {}
}

/** Keeps each command's settings type in the table of commands. */
const command = <Settings>(definition: Command<Settings>): Command => definition as Command;

/** Every flag of every command, declared once so a flag means the same in each. */
const FLAGS = {
  table: { type: "string" },
  schema: { type: "string" },
  "retain-ended": { type: "string" },
  "batch-size": { type: "string" },
  timeout: { type: "string" },
  "from-table": { type: "string" },
  "from-schema": { type: "string" },
  secret: { type: "string", multiple: true },
  "user-id-path": { type: "string" },
  "user-id-type": { type: "string" },
  "dry-run": { type: "boolean" },
  redo: { type: "boolean" },
  "check-cookie": { type: "string" },
  "migrations-table": { type: "string" },
  "migrations-schema": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const satisfies NonNullable<ParseArgsConfig["options"]>;

const TABLE_FLAGS = `  --table <name>          the sessions table (default: sessions)
  --schema <name>         its Postgres schema (default: the connection's search_path, normally public)`;

const MIGRATE_USAGE = `Usage: DATABASE_URL=postgres://... npx connect-drizzle migrate [options]

Creates the sessions table, or brings it up to date: applies the migrations this package ships, as
await migrate(db) does. Idempotent: what already ran is skipped. Prints {"migrated":true,"durationMs":0}.
Exits 0, or 1 with a message on error.

Options:
  --migrations-table <name>   where drizzle records which of these ran (default: __connect_drizzle_migrations)
  --migrations-schema <name>  its schema (default: drizzle)
  -h, --help                  this text
`;

const REAP_USAGE = `Usage: DATABASE_URL=postgres://... npx connect-drizzle reap [options]

Runs one reaper round on the sessions table: deletes expired sessions (or, with --retain-ended, turns
them into ended history) and ended sessions past their retention, in batches. Prints the result as one
JSON line: {"deleted":0,"ended":0,"batches":0,"durationMs":0,"skipped":false}. "skipped": true means
another instance was reaping the table at that moment. Exits 0, or 1 with a message on error.

Options:
${TABLE_FLAGS}
  --retain-ended <ms>     keep ended sessions this long as history: your store's retainEnded (default: 0)
  --batch-size <n>        rows per batch, each committed on its own (default: 5000)
  --timeout <ms>          longest wait for one statement, connection wait included; past it the round
                          stops and exits 1, e.g. when the table is locked (default: 10000)
  -h, --help              this text
`;

const IMPORT_USAGE = `Usage: DATABASE_URL=postgres://... [SESSION_STORE_SECRETS=s1,s2] npx connect-drizzle import-pg-simple [options]
       DATABASE_URL=postgres://... SESSION_SECRET=... [SESSION_STORE_SECRETS=s1,s2] npx connect-drizzle import-pg-simple --check-cookie <cookie>

Copies connect-pg-simple's unexpired sessions into the sessions table, so that no one is logged out when
the app moves to connect-drizzle: each keyed as your store keys it (give it the store's secrets), with
its data, expiry and owner. A session already copied, or already in the sessions table, is never copied
again nor overwritten, so running it twice is safe, and a run that stopped goes on where it stopped. It
marks the rows it copied in a column it adds to the old table (connect_drizzle_imported_at), and never
deletes the old table: drop it yourself once no instance runs connect-pg-simple. A session it cannot
store (its owner not of user_id's type, its data holding \u0000) is left out and counted as invalid, by
reason; the others are copied. Prints one JSON line: {"imported":0,"skipped":0,"expired":0,"invalid":0,
"invalidReasons":{"session":0,"owner":0,"data":0},"batches":0,"durationMs":0,"dryRun":false}.
Exits 0, or 1 with a message on error.

Options:
  --from-table <name>     connect-pg-simple's table: its tableName (default: session)
  --from-schema <name>    its schema: its schemaName (default: the connection's search_path)
${TABLE_FLAGS}
  --secret <secret>       your store's secrets, first the one new rows get; repeat for several (default:
                          SESSION_STORE_SECRETS, comma-separated; without either, SHA-256 as a store
                          without secrets)
  --user-id-path <a.b.c>  where the owner is in the session data (default: passport.user, then userId,
                          as the store's default userId)
  --user-id-type <type>   the type of the table's user_id: text, integer, bigint or uuid, as given to
                          createSessionTable's userIdType (default: text)
  --batch-size <n>        rows read per batch, each copied by one statement (default: ${DEFAULT_IMPORT_BATCH})
  --dry-run               count what would be copied; change nothing
  --redo                  copy again what an earlier run copied (its marks are cleared first): for an
                          import run with the wrong secrets, before the app has served from connect-drizzle
  --check-cookie <value>  change nothing; say whether the app would find the session of this cookie (the
                          connect.sid value from a browser): signed with SESSION_SECRET (the app's cookie
                          secret, express-session's secret), keyed with the store's secrets as above.
                          Prints {"cookie":"valid","inOldTable":true,"copied":true,"found":true}
  -h, --help              this text
`;

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
              "If your SessionStore has `secrets`, give the import the same ones, or the app finds none of the sessions (see --check-cookie; --redo copies again).",
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
  const parsed = parseFlags(argv);
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
 * The flags and the command, or the CLI's own message for a flag that no command takes (`--batch-sise`,
 * `--dryrun`: with the flag it most likely meant and the flags of the command, of every command when none
 * is named), a flag without its value, or a value given to a switch; never parseArgs's own error text.
 */
function parseFlags(argv: string[]): { values: Values; positionals: string[] } | Problem {
  // Not strict, so that each of these is a token to judge here instead of parseArgs's error.
  const { values, positionals, tokens } = parseArgs({ args: argv, allowPositionals: true, strict: false, tokens: true, options: FLAGS });
  const name = positionals.find((p) => Object.hasOwn(COMMANDS, p));
  for (const token of tokens) {
    if (token.kind !== "option") continue;
    if (!Object.hasOwn(FLAGS, token.name)) {
      const flags = name === undefined ? Object.keys(FLAGS) : [...COMMANDS[name]!.flags, "help"];
      const near = closest(token.name, flags);
      return new Problem(
        `unknown flag ${token.rawName}${near === undefined ? "" : ` (did you mean --${near}?)`}; ` +
          `the flags${name === undefined ? "" : ` of "${name}"`} are ${flags.map((f) => `--${f}`).join(", ")} (see --help)`,
      );
    }
    const takesValue = FLAGS[token.name as keyof typeof FLAGS].type === "string";
    // `--table --schema s` would otherwise name the table "--schema".
    if (takesValue && (token.value === undefined || (!token.inlineValue && token.value.startsWith("--")))) {
      return new Problem(`--${token.name} needs a value (see --help)`);
    }
    if (!takesValue && token.value !== undefined) return new Problem(`--${token.name} takes no value (see --help)`);
  }
  return { values: values as Values, positionals };
}

/** The settings, or the first flag's problem. */
function checked<T extends Record<string, unknown>>(settings: T): { [K in keyof T]: Exclude<T[K], Problem> } | Problem {
  const problem = Object.values(settings).find((value) => value instanceof Problem);
  return (problem as Problem | undefined) ?? (settings as { [K in keyof T]: Exclude<T[K], Problem> });
}

/** A flag naming a table or schema: undefined when not given, refused when empty. */
function name(values: Values, flag: string): string | undefined | Problem {
  const value = values[flag] as string | undefined;
  return value === "" ? new Problem(`--${flag} needs a name`) : value;
}

const USER_ID_TYPES: readonly UserIdType[] = ["text", "integer", "bigint", "uuid"];

/** The sessions table named by --table and --schema, its user_id of the type --user-id-type names. */
function sessionTable(values: Values, userIdType: unknown = undefined): SessionTable | Problem {
  const table = name(values, "table");
  const given = name(values, "schema");
  if (table instanceof Problem) return table;
  if (given instanceof Problem) return given;
  if (userIdType !== undefined && !USER_ID_TYPES.includes(userIdType as UserIdType)) {
    return new Problem(`--user-id-type must be text, integer, bigint or uuid, the table's userIdType (got "${String(userIdType)}")`);
  }
  // drizzle refuses pgSchema("public"): a table there is an unqualified one.
  const schema = given === "public" ? undefined : given;
  return createSessionTable(table ?? "sessions", { ...(schema ? { schema } : {}), userIdType: (userIdType as UserIdType | undefined) ?? "text" });
}

/** The store's secrets: --secret (repeated), else SESSION_STORE_SECRETS, comma-separated. */
function secretsOf(values: Values, env: NodeJS.ProcessEnv): string[] | Problem {
  const listed = env.SESSION_STORE_SECRETS;
  const secrets = (values.secret as string[] | undefined) ?? (listed === undefined || listed === "" ? [] : listed.split(","));
  return secrets.some((secret) => secret === "") ? new Problem("--secret and SESSION_STORE_SECRETS need non-empty secrets") : secrets;
}

/** What --check-cookie checks: the cookie's value, and the app's cookie secret from SESSION_SECRET. */
interface CookieToCheck {
  cookie: string;
  cookieSecrets: string[];
}

function cookieToCheck(values: Values, env: NodeJS.ProcessEnv): CookieToCheck | undefined | Problem {
  const cookie = values["check-cookie"] as string | undefined;
  if (cookie === undefined) return undefined;
  if (values["dry-run"] === true || values.redo === true) return new Problem("--check-cookie changes nothing by itself: give it without --dry-run and --redo");
  const secret = env.SESSION_SECRET;
  if (!secret)
    return new Problem("--check-cookie needs the app's cookie secret (express-session's `secret`) in SESSION_SECRET, to verify the cookie's signature");
  return { cookie, cookieSecrets: [secret] };
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
  // As copied from a browser's devtools (URL-encoded), or with its name ("connect.sid=s%3A...").
  let value = cookie.trim().replace(/^[^=;]+=(?=s(:|%3A))/i, "");
  try {
    value = decodeURIComponent(value);
  } catch {}
  const sid = value.startsWith("s:") ? value.slice(2, value.lastIndexOf(".")) : undefined;
  if (sid === undefined) return { cookie: "not signed (an express-session cookie starts with s: or s%3A)", inOldTable: false, copied: false, found: false };
  if (!cookieSecrets.some((secret) => `s:${sign(sid, secret)}` === value)) {
    return { cookie: "bad signature (SESSION_SECRET is not the secret that signed it)", inOldTable: false, copied: false, found: false };
  }
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

/** --user-id-path: the owner at a dotted path of the session data, instead of the store's default. */
function userIdAt(path: unknown): UserIdOf | undefined | Problem {
  if (path === undefined) return undefined;
  const parts = String(path).split(".");
  if (parts.some((part) => part === "")) {
    return new Problem(`--user-id-path must be property names joined by dots, e.g. passport.user (got "${String(path)}")`);
  }
  return (session) => parts.reduce<any>((at, part) => (at === null || at === undefined ? undefined : at[part]), session);
}

/** Parses a flag holding a whole number, in decimal digits (not "1e3", "0x10" or "5s"). */
function wholeNumber(value: unknown, flag: string, fallback: number, allowZero: boolean, unit = ""): number | Problem {
  if (value === undefined) return fallback;
  const text = String(value);
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || (n === 0 && !allowZero)) {
    return new Problem(`${flag} must be a ${allowZero ? "non-negative" : "positive"} whole number${unit} (got "${text}")`);
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
    process.stderr.write(`connect-drizzle: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  },
);
