import { parseArgs, type ParseArgsConfig } from "node:util";
import { closest } from "./check.js";
import { DEFAULT_IMPORT_BATCH } from "./import.js";
import type { UserIdOf } from "./options.js";
import { createSessionTable, type SessionTable, type UserIdType } from "./schema.js";

/*
 * The CLI's command line (cli.ts runs the commands): its flags, each command's usage text, and the
 * parsers that turn flags into settings or into a message for the user.
 */

/** The parsed flags, by name. */
export type Values = Record<string, string | boolean | string[] | undefined>;

/** A flag's value was refused: why. */
export class Problem {
  constructor(readonly message: string) {}
}

/** Every flag of every command, declared once so a flag means the same in each. */
export const FLAGS = {
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

export const MIGRATE_USAGE = `Usage: DATABASE_URL=postgres://... npx connect-drizzle migrate [options]

Creates the sessions table, or brings it up to date: applies the migrations this package ships, as
await migrate(db) does. Idempotent: what already ran is skipped. Prints {"migrated":true,"durationMs":0}.
Exits 0, or 1 with a message on error.

Options:
  --migrations-table <name>   where drizzle records which of these ran (default: __connect_drizzle_migrations)
  --migrations-schema <name>  its schema (default: drizzle)
  -h, --help                  this text
`;

export const REAP_USAGE = `Usage: DATABASE_URL=postgres://... npx connect-drizzle reap [options]

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

export const IMPORT_USAGE = `Usage: DATABASE_URL=postgres://... [SESSION_STORE_SECRETS=s1,s2] npx connect-drizzle import-pg-simple [options]
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

/**
 * The flags and the command, or the CLI's own message for a flag that no command takes (`--batch-sise`,
 * `--dryrun`: with the flag it most likely meant and the flags of the command, of every command when none
 * is named), a flag without its value, or a value given to a switch; never parseArgs's own error text.
 */
export function parseFlags(
  argv: string[],
  commands: Readonly<Record<string, { readonly flags: readonly string[] }>>,
): { values: Values; positionals: string[] } | Problem {
  // Not strict, so that each of these is a token to judge here instead of parseArgs's error.
  const { values, positionals, tokens } = parseArgs({ args: argv, allowPositionals: true, strict: false, tokens: true, options: FLAGS });
  const name = positionals.find((p) => Object.hasOwn(commands, p));
  for (const token of tokens) {
    if (token.kind !== "option") continue;
    if (!Object.hasOwn(FLAGS, token.name)) {
      const flags = name === undefined ? Object.keys(FLAGS) : [...commands[name]!.flags, "help"];
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
export function checked<T extends Record<string, unknown>>(settings: T): { [K in keyof T]: Exclude<T[K], Problem> } | Problem {
  const problem = Object.values(settings).find((value) => value instanceof Problem);
  return (problem as Problem | undefined) ?? (settings as { [K in keyof T]: Exclude<T[K], Problem> });
}

/** A flag naming a table or schema: undefined when not given, refused when empty. */
export function name(values: Values, flag: string): string | undefined | Problem {
  const value = values[flag] as string | undefined;
  return value === "" ? new Problem(`--${flag} needs a name`) : value;
}

const USER_ID_TYPES: readonly UserIdType[] = ["text", "integer", "bigint", "uuid"];

/** The sessions table named by --table and --schema, its user_id of the type --user-id-type names. */
export function sessionTable(values: Values, userIdType: unknown = undefined): SessionTable | Problem {
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
export function secretsOf(values: Values, env: NodeJS.ProcessEnv): string[] | Problem {
  const listed = env.SESSION_STORE_SECRETS;
  const secrets = (values.secret as string[] | undefined) ?? (listed === undefined || listed === "" ? [] : listed.split(","));
  return secrets.some((secret) => secret === "") ? new Problem("--secret and SESSION_STORE_SECRETS need non-empty secrets") : secrets;
}

/** What --check-cookie checks: the cookie's value, and the app's cookie secret from SESSION_SECRET. */
export interface CookieToCheck {
  cookie: string;
  cookieSecrets: string[];
}

export function cookieToCheck(values: Values, env: NodeJS.ProcessEnv): CookieToCheck | undefined | Problem {
  const cookie = values["check-cookie"] as string | undefined;
  if (cookie === undefined) return undefined;
  if (values["dry-run"] === true || values.redo === true) return new Problem("--check-cookie changes nothing by itself: give it without --dry-run and --redo");
  const secret = env.SESSION_SECRET;
  if (!secret)
    return new Problem("--check-cookie needs the app's cookie secret (express-session's `secret`) in SESSION_SECRET, to verify the cookie's signature");
  return { cookie, cookieSecrets: [secret] };
}

/** --user-id-path: the owner at a dotted path of the session data, instead of the store's default. */
export function userIdAt(path: unknown): UserIdOf | undefined | Problem {
  if (path === undefined) return undefined;
  const parts = String(path).split(".");
  if (parts.some((part) => part === "")) {
    return new Problem(`--user-id-path must be property names joined by dots, e.g. passport.user (got "${String(path)}")`);
  }
  return (session) => parts.reduce<any>((at, part) => (at === null || at === undefined ? undefined : at[part]), session);
}

/** Parses a flag holding a whole number, in decimal digits (not "1e3", "0x10" or "5s"). */
export function wholeNumber(value: unknown, flag: string, fallback: number, allowZero: boolean, unit = ""): number | Problem {
  if (value === undefined) return fallback;
  const text = String(value);
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || (n === 0 && !allowZero)) {
    return new Problem(`${flag} must be a ${allowZero ? "non-negative" : "positive"} whole number${unit} (got "${text}")`);
  }
  return n;
}
