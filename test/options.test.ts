import { execFile } from "node:child_process";
import { join } from "node:path";
import { drizzle } from "drizzle-orm/node-postgres";
import { withReplicas } from "drizzle-orm/pg-core";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { createSessionTable, importConnectPgSimple, migrate, reap, SessionStore, sessionMiddleware } from "../src/index.js";
import {
  CACHE_OPTIONS,
  COOKIE_OPTIONS,
  ENCRYPT_OPTIONS,
  IMPORT_ARGS,
  MIDDLEWARE_OPTIONS,
  MIGRATE_OPTIONS,
  REAP_ARGS,
  REAPER_OPTIONS,
  RECENT_LOGIN_OPTIONS,
  REPLICA_READ_OPTIONS,
  resolveOptions,
  resolveReaperOptions,
  SESSION_CAP_OPTIONS,
  STORE_OPTIONS,
  TABLE_OPTIONS,
} from "./support/internals.js";

// A database that is never queried: constructing a store and resolving options send no statement.
const db = drizzle.mock();
const root = join(import.meta.dirname, "..");

let program: ts.Program | undefined;

/**
 * The property names of an interface the package exports (src/index.ts), as the compiler sees them
 * (inherited ones included), wherever in src/ it is declared.
 */
function interfaceKeys(name: string): string[] {
  program ??= ts.createProgram([join(root, "src/index.ts")], {
    strict: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    skipLibCheck: true,
    noEmit: true,
  });
  const checker = program.getTypeChecker();
  const index = checker.getSymbolAtLocation(program.getSourceFile(join(root, "src/index.ts"))!)!;
  const exported = checker.getExportsOfModule(index).find((symbol) => symbol.name === name);
  if (!exported) throw new Error(`src/index.ts exports no ${name}`);
  const symbol = exported.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(exported) : exported;
  return checker
    .getPropertiesOfType(checker.getDeclaredTypeOfSymbol(symbol))
    .map((p) => p.name)
    .sort();
}

describe("unknown options", () => {
  it.each([
    ["SessionStoreOptions", STORE_OPTIONS],
    ["CacheOptions", CACHE_OPTIONS],
    ["EncryptOptions", ENCRYPT_OPTIONS],
    ["ReaperOptions", REAPER_OPTIONS],
    ["ReplicaReadOptions", REPLICA_READ_OPTIONS],
    ["SessionCapOptions", SESSION_CAP_OPTIONS],
    ["ReapArgs", REAP_ARGS],
    // Ours plus every option express-session documents (its SessionOptions), which are passed through.
    ["SessionMiddlewareOptions", MIDDLEWARE_OPTIONS],
    ["SessionTableOptions", TABLE_OPTIONS],
    ["MigrateOptions", MIGRATE_OPTIONS],
    ["ImportConnectPgSimpleArgs", IMPORT_ARGS],
    ["RequireRecentLoginOptions", RECENT_LOGIN_OPTIONS],
  ])("the known keys are exactly those of the documented %s interface", (name, known) => {
    expect(Object.keys(known).sort()).toEqual(interfaceKeys(name));
  });

  it("every documented store option is accepted, and each one misspelt is refused with it suggested", () => {
    for (const key of Object.keys(STORE_OPTIONS).filter((k) => k !== "db")) {
      expect(() => resolveOptions({ db, [key]: undefined }), key).not.toThrow();
      const misspelt = key.slice(0, -1) + (key.endsWith("x") ? "y" : "x");
      expect(() => resolveOptions({ db, [misspelt]: undefined } as any), misspelt).toThrow(
        new RegExp(
          `^connect-drizzle: unknown SessionStore option \`${misspelt}\` \\(did you mean \`${key}\`\\?\\); the known options are db, table, secrets, `,
        ),
      );
    }
  });

  it("`listen` must be a drizzle database, and is refused when neither `cache` nor `broadcast` would use it", () => {
    expect(() => resolveOptions({ db, listen: "postgres://direct" as any, cache: {} })).toThrow(
      /^connect-drizzle: `listen` is not a drizzle Postgres database/,
    );
    expect(() => resolveOptions({ db, listen: db })).toThrow(
      "connect-drizzle: `listen` is used only by `cache` and `broadcast`, and neither is on; remove `listen`, or turn one of them on",
    );
    expect(() => resolveOptions({ db, listen: db, cache: {} })).not.toThrow();
    expect(() => resolveOptions({ db, listen: db, broadcast: true, secrets: "s".repeat(32) })).not.toThrow();
  });

  it("a withReplicas database is taken as its primary and replicas, reads from synchronous standbys only unless told", () => {
    const primary = drizzle.mock();
    const replica = drizzle.mock();
    const resolved = resolveOptions({ db: withReplicas(primary, [replica]) });
    expect(resolved.db).toBe(primary);
    expect(resolved.replicas).toEqual([replica]);
    expect(resolved.replicaReads).toEqual({ window: 0, timeout: 1_000 });
    expect(resolveOptions({ db: withReplicas(primary, [replica]), replicaReads: false }).replicaReads).toBeUndefined();
    expect(resolveOptions({ db: withReplicas(primary, [replica]), replicaReads: { window: 250 } }).replicaReads).toEqual({ window: 250, timeout: 1_000 });
    expect(() => resolveOptions({ db, replicaReads: { window: 0 } })).toThrow(/^connect-drizzle: `replicaReads` needs a database with read replicas/);
    expect(() => resolveOptions({ db: withReplicas(primary, [replica]), replicaReads: { window: -1 } })).toThrow(/`window`/);
    expect(() => resolveOptions({ db: withReplicas(primary, [replica]), replicaReads: 5 as any })).toThrow(
      /^connect-drizzle: `replicaReads` must be an options object/,
    );
    for (const key of Object.keys(REPLICA_READ_OPTIONS)) {
      expect(() => resolveOptions({ db: withReplicas(primary, [replica]), replicaReads: { [key]: undefined } }), key).not.toThrow();
    }
  });

  it('maxSessionsPerUser: a number is { limit } that evicts; an object takes whenFull "refuse"; anything else says what to pass', () => {
    expect(resolveOptions({ db, maxSessionsPerUser: 3 }).maxSessionsPerUser).toEqual({ limit: 3, whenFull: "evict" });
    expect(resolveOptions({ db, maxSessionsPerUser: { limit: 3 } }).maxSessionsPerUser).toEqual({ limit: 3, whenFull: "evict" });
    expect(resolveOptions({ db, maxSessionsPerUser: { limit: 5, whenFull: "refuse" } }).maxSessionsPerUser).toEqual({ limit: 5, whenFull: "refuse" });
    expect(resolveOptions({ db }).maxSessionsPerUser).toBeUndefined();
    for (const key of Object.keys(SESSION_CAP_OPTIONS).filter((k) => k !== "limit")) {
      expect(() => resolveOptions({ db, maxSessionsPerUser: { limit: 2, [key]: undefined } }), key).not.toThrow();
    }
    expect(() => resolveOptions({ db, maxSessionsPerUser: { limit: 3, whenFull: "deny" as any } })).toThrow(
      /^connect-drizzle: `maxSessionsPerUser.whenFull` must be "evict" or "refuse" \(got a string\)$/,
    );
    expect(() => resolveOptions({ db, maxSessionsPerUser: { limit: 0, whenFull: "refuse" } })).toThrow(
      /^connect-drizzle: `maxSessionsPerUser.limit` must be a positive whole number of sessions, e.g. 5 \(got 0\)$/,
    );
    expect(() => resolveOptions({ db, maxSessionsPerUser: { whenFull: "refuse" } as any })).toThrow(
      /^connect-drizzle: `maxSessionsPerUser` needs its `limit`, a positive whole number of sessions/,
    );
    expect(() => resolveOptions({ db, maxSessionsPerUser: { limit: 3, whenFul: "refuse" } as any })).toThrow(
      /^connect-drizzle: unknown `maxSessionsPerUser` option `whenFul` \(did you mean `whenFull`\?\); the known options are limit, whenFull$/,
    );
    expect(() => resolveOptions({ db, maxSessionsPerUser: "5" as any })).toThrow(
      /^connect-drizzle: `maxSessionsPerUser` must be a positive whole number of sessions, e.g. 5, or an object such as \{ limit: 5, whenFull: "refuse" \} \(got a string\)$/,
    );
  });

  it("every documented reaper and cache option is accepted", () => {
    for (const key of Object.keys(REAPER_OPTIONS)) expect(() => resolveReaperOptions({ [key]: undefined }), key).not.toThrow();
    for (const key of Object.keys(CACHE_OPTIONS)) expect(() => resolveOptions({ db, cache: { [key]: undefined } }), key).not.toThrow();
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    [
      "a store option",
      { reapr: false },
      /unknown SessionStore option `reapr` \(did you mean `reaper`\?\); the known options are db, table, .*reaper, prepare, replicaReads$/,
    ],
    ["a store option in another case", { idletimeout: 60_000 }, /`idletimeout` \(did you mean `idleTimeout`\?\)/],
    ["a swapped pair of letters", { absoluteTiemout: 60_000 }, /`absoluteTiemout` \(did you mean `absoluteTimeout`\?\)/],
    [
      "a reaper option",
      { reaper: { intreval: 60_000 } },
      /unknown `reaper` option `intreval` \(did you mean `interval`\?\); the known options are interval, batchSize, jitter$/,
    ],
    ["a cache option", { cache: { maxx: 100 } }, /unknown `cache` option `maxx` \(did you mean `max`\?\); the known options are max, ttl$/],
    ["something unlike any option", { pool: {} }, /unknown SessionStore option `pool`; the known options are/],
  ])("new SessionStore with %s misspelt is a TypeError naming it and the known ones", (_, options, message) => {
    expect(() => new SessionStore({ db, ...options } as any)).toThrow(TypeError);
    expect(() => new SessionStore({ db, ...options } as any)).toThrow(message);
  });

  it("reap() refuses a misspelt argument before touching the database", async () => {
    await expect(reap({ db, batchsize: 100 } as any)).rejects.toThrow(
      /unknown reap\(\) option `batchsize` \(did you mean `batchSize`\?\); the known options are db, table, retainEnded, batchSize, signal, timeout, onBatch$/,
    );
  });

  it("sessionMiddleware refuses a misspelt option before express-session sees it", () => {
    const store = new SessionStore({ db, reaper: false });
    expect(() => sessionMiddleware({ store, secret: "s", rolling: true, cookies: {} } as any)).toThrow(/`cookies` \(did you mean `cookie`\?\)/);
  });
});

describe("every entry point checks every option it is given", () => {
  const store = new SessionStore({ db, reaper: false });
  const secret = "a secret";
  /** Each entry point, called with some options (sync or async); what it throws or rejects with. */
  const entryPoints: Record<string, (options: Record<string, unknown>) => unknown> = {
    SessionStore: (options) => new SessionStore({ db, reaper: false, ...options } as any),
    createSessionTable: (options) => createSessionTable("sessions", options as any),
    sessionMiddleware: (options) => sessionMiddleware({ store, secret, ...options } as any),
    "reap()": (options) => reap({ db, ...options } as any),
    "migrate()": (options) => migrate(db, options as any),
    importConnectPgSimple: (options) => importConnectPgSimple({ db, ...options } as any),
    requireRecentLogin: (options) => store.requireRecentLogin(60_000, options as any),
  };
  /** The error an entry point throws or rejects with, or undefined when it accepts the options. */
  async function errorOf(entry: string, options: Record<string, unknown>): Promise<Error | undefined> {
    try {
      await entryPoints[entry]!(options);
    } catch (error) {
      return error as Error;
    }
    return undefined;
  }

  it.each<[string, Record<string, unknown>, string]>([
    ["SessionStore", { versioned: "false" }, 'versioned` must be true or false (got the string "false")'],
    ["SessionStore", { prepare: "no" }, "prepare` must be true or false (got a string)"],
    ["SessionStore", { notify: 1 }, "notify` must be true or false (got 1)"],
    ["SessionStore", { merge: "true" }, 'merge` must be true or false (got the string "true")'],
    ["SessionStore", { broadcast: "false" }, 'broadcast` must be true or false (got the string "false")'],
    [
      "SessionStore",
      { encrypt: { secrets: "x".repeat(32), acceptPlaintext: "false" } },
      'encrypt.acceptPlaintext` must be true or false (got the string "false")',
    ],
    ["sessionMiddleware", { rolling: "false" }, 'rolling` must be true or false (got the string "false")'],
    ["sessionMiddleware", { saveUninitialized: 0 }, "saveUninitialized` must be true or false (got 0)"],
    ["sessionMiddleware", { cookie: { httpOnly: "false" } }, 'cookie.httpOnly` must be true or false (got the string "false")'],
    ["importConnectPgSimple", { dryRun: "true" }, 'dryRun` must be true or false (got the string "true")'],
  ])("a boolean option given as a string is refused, not read as true: %s %j", async (entry, options, message) => {
    const error = await errorOf(entry, options);
    expect(error).toBeInstanceOf(TypeError);
    expect(error!.message).toBe(`connect-drizzle: \`${message}`);
  });

  it('versioned: "false" does not turn versioning on (and merge off): the store is refused at construction', () => {
    expect(() => new SessionStore({ db, reaper: false, versioned: "false" as any })).toThrow(TypeError);
    // The real false is the default behaviour: merged saves.
    expect(() => new SessionStore({ db, reaper: false, versioned: false })).not.toThrow();
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    ["SessionStore", { ttl: "86400000" }, /^connect-drizzle: `ttl` must be a positive number of milliseconds \(got a string\)$/],
    ["SessionStore", { idleTimeout: Infinity }, /`idleTimeout` must be a positive number of milliseconds \(got Infinity\)$/],
    ["SessionStore", { retainEnded: -1 }, /`retainEnded` must be a non-negative number of milliseconds \(got -1\)$/],
    ["SessionStore", { maxSessionsPerUser: 1.5 }, /`maxSessionsPerUser` must be a positive whole number of sessions, e.g. 5 \(got 1.5\)$/],
    ["SessionStore", { cache: { max: 2.5 } }, /`max` must be a positive whole number of sessions \(got 2.5\)$/],
    ["SessionStore", { reaper: { jitter: 2 } }, /`jitter` must be a fraction of the interval between 0 and 1, e.g. 0.1 \(got 2\)$/],
    ["reap()", { retainEnded: NaN }, /`retainEnded` must be a non-negative number of milliseconds \(got NaN\)$/],
    ["reap()", { timeout: "10s" }, /`timeout` must be a positive number of milliseconds \(got a string\)$/],
    ["importConnectPgSimple", { batchSize: 10.5 }, /`batchSize` must be a whole number of rows/],
    ["sessionMiddleware", { cookie: { maxAge: "1d" } }, /`cookie.maxAge` must be a positive number of milliseconds \(got a string\)$/],
  ])("a numeric option that is not a finite number in range is refused: %s %j", async (entry, options, message) => {
    const error = await errorOf(entry, options);
    expect(error).toBeInstanceOf(TypeError);
    expect(error!.message).toMatch(message);
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    ["SessionStore", { userId: "passport.user" }, /^connect-drizzle: `userId` must be a function \(session\) => .* \(got a string\)$/],
    ["SessionStore", { label: {} }, /`label` must be a function .* \(got an object\)$/],
    ["reap()", { onBatch: true }, /`onBatch` must be a function .* \(got true\)$/],
    ["reap()", { signal: {} }, /`signal` must be an AbortSignal/],
    ["createSessionTable", { references: "users.id" }, /`references` must be a function returning your users' id column/],
    ["sessionMiddleware", { genid: "uuid" }, /`genid` must be a function \(req\) => string \(got a string\)$/],
    ["requireRecentLogin", { onStale: "/login" }, /`onStale` must be a function \(req, res, next\) => void \(got a string\)$/],
  ])("a function option that is not a function is refused: %s %j", async (entry, options, message) => {
    const error = await errorOf(entry, options);
    expect(error).toBeInstanceOf(TypeError);
    expect(error!.message).toMatch(message);
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    ["createSessionTable", { schema: "" }, /^connect-drizzle: `schema` must be a non-empty Postgres schema name \(got an empty string\)$/],
    ["createSessionTable", { onDelete: "CASCADE" }, /`onDelete` must be "cascade", "restrict", "no action", "set null" or "set default" \(got a string\)$/],
    ["migrate()", { migrationsTable: "" }, /`migrationsTable` must be a non-empty table name \(got an empty string\)$/],
    ["migrate()", { migrationsSchema: 42 }, /`migrationsSchema` must be a non-empty Postgres schema name \(got 42\)$/],
    ["sessionMiddleware", { name: "" }, /`name` must be a non-empty cookie name \(got an empty string\)$/],
    ["sessionMiddleware", { responseHeader: "X Token" }, /`responseHeader` must be a header name/],
    ["sessionMiddleware", { unset: "delete" }, /`unset` must be "destroy" or "keep" \(got a string\)$/],
    ["sessionMiddleware", { cookie: { sameSite: "relaxed" } }, /`cookie.sameSite` must be one of true, false, "lax", "strict", "none" \(got a string\)$/],
    ["importConnectPgSimple", { fromSchema: "" }, /`fromSchema` must be a non-empty schema name/],
  ])("a string option that is empty or not one of its values is refused: %s %j", async (entry, options, message) => {
    const error = await errorOf(entry, options);
    expect(error).toBeInstanceOf(TypeError);
    expect(error!.message).toMatch(message);
  });

  it("a wrong option's message names its type, never a string's value (it may be a secret)", async () => {
    const value = "s3cr3t-from-the-wrong-env-var";
    for (const [entry, options] of [
      ["SessionStore", { ttl: value }],
      ["SessionStore", { versioned: value }],
      ["SessionStore", { userId: value }],
      ["SessionStore", { secrets: [value, ""] }],
      ["sessionMiddleware", { cookie: { maxAge: value } }],
      ["reap()", { batchSize: value }],
      ["migrate()", { migrationsSchema: [value] }],
    ] as const) {
      const error = await errorOf(entry, options);
      expect(error, `${entry} ${Object.keys(options)}`).toBeInstanceOf(TypeError);
      expect(error!.message).not.toContain(value);
    }
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    [
      "createSessionTable",
      { shema: "auth" },
      /^connect-drizzle: unknown createSessionTable option `shema` \(did you mean `schema`\?\); the known options are schema, userIdType, references, onDelete$/,
    ],
    ["sessionMiddleware", { rollling: true }, /unknown sessionMiddleware option `rollling` \(did you mean `rolling`\?\)/],
    ["sessionMiddleware", { cookie: { maxage: 60_000 } }, /unknown `cookie` option `maxage` \(did you mean `maxAge`\?\); the known options are maxAge, /],
    ["reap()", { retainended: 0 }, /unknown reap\(\) option `retainended` \(did you mean `retainEnded`\?\)/],
    [
      "migrate()",
      { migrationTable: "m" },
      /^connect-drizzle: unknown migrate\(\) option `migrationTable` \(did you mean `migrationsTable`\?\); the known options are migrationsTable, migrationsSchema$/,
    ],
    ["importConnectPgSimple", { dryrun: true }, /unknown importConnectPgSimple option `dryrun` \(did you mean `dryRun`\?\)/],
    ["SessionStore", { encrypt: { secret: "x".repeat(32) } }, /unknown `encrypt` option `secret` \(did you mean `secrets`\?\)/],
    ["requireRecentLogin", { onstale: () => {} }, /unknown requireRecentLogin option `onstale` \(did you mean `onStale`\?\)/],
  ])("every entry point refuses an unknown option with a did-you-mean: %s %j", async (entry, options, message) => {
    const error = await errorOf(entry, options);
    expect(error).toBeInstanceOf(TypeError);
    expect(error!.message).toMatch(message);
  });

  it("the options that are right still pass, with every default", async () => {
    expect(await errorOf("SessionStore", { versioned: true, prepare: false, notify: true, broadcast: false, ttl: 1_000, cache: false })).toBeUndefined();
    expect(await errorOf("createSessionTable", { schema: "auth", userIdType: "uuid", onDelete: "set null", references: undefined })).toBeUndefined();
    expect(
      await errorOf("sessionMiddleware", {
        rolling: false,
        unset: "keep",
        genid: () => "id",
        cookie: { maxAge: null, sameSite: "Strict", secure: "auto", expires: null },
      }),
    ).toBeUndefined();
    expect(await errorOf("requireRecentLogin", { onStale: () => {} })).toBeUndefined();
    expect(COOKIE_OPTIONS).toBeDefined();
  });
});

describe("the CLI's flags (npx connect-drizzle)", () => {
  const cli = join(root, "src", "cli.ts");
  const tsx = join(root, "node_modules", ".bin", "tsx");
  // A database that is never reached: every case here is refused before connecting.
  const run = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(tsx, [cli, ...args], { env: { ...process.env, DATABASE_URL: "postgres://127.0.0.1:1/none" } }, (error, stdout, stderr) =>
        resolve({ code: error ? Number((error as any).code ?? 1) : 0, stdout, stderr }),
      );
    });

  it("a misspelt CLI flag gets the CLI's message with a did-you-mean and the command's flags, and exits 1", async () => {
    const reapTypo = await run(["reap", "--batch-sise", "100"]);
    expect(reapTypo).toMatchObject({ code: 1, stdout: "" });
    expect(reapTypo.stderr.trim()).toBe(
      'connect-drizzle: unknown flag --batch-sise (did you mean --batch-size?); the flags of "reap" are --table, --schema, --retain-ended, --batch-size, --timeout, --help (see --help)',
    );
    const importTypo = await run(["import-pg-simple", "--dryrun"]);
    expect(importTypo.code).toBe(1);
    expect(importTypo.stderr).toMatch(
      /^connect-drizzle: unknown flag --dryrun \(did you mean --dry-run\?\); the flags of "import-pg-simple" are --from-table, .*--dry-run, .*--help/,
    );
    // Without a command: every flag is listed.
    const first = await run(["--scheme", "s"]);
    expect(first.code).toBe(1);
    expect(first.stderr).toMatch(/^connect-drizzle: unknown flag --scheme \(did you mean --schema\?\); the flags are --table, --schema, .*--dry-run, .*--help/);
    expect(`${reapTypo.stderr}${importTypo.stderr}${first.stderr}`).not.toMatch(/Unknown option|positional argument/);
  });

  it("a flag without its value, or a switch with one, gets the CLI's message, and exits 1", async () => {
    for (const [args, message] of [
      [["reap", "--batch-size"], "--batch-size needs a value (see --help)"],
      [["reap", "--table", "--schema", "s"], "--table needs a value (see --help)"],
      [["import-pg-simple", "--dry-run=yes"], "--dry-run takes no value (see --help)"],
    ] as const) {
      const out = await run([...args]);
      expect(out.code, args.join(" ")).toBe(1);
      expect(out.stderr.trim(), args.join(" ")).toBe(`connect-drizzle: ${message}`);
    }
  });

  it("a CLI numeric flag that is not a whole number in decimal digits gets the CLI's message, and exits 1", async () => {
    for (const [flag, value] of [
      ["--batch-size", "1e3"],
      ["--timeout", "5s"],
      ["--retain-ended", "-1"],
      ["--batch-size", "0x10"],
    ] as const) {
      const out = await run(["reap", flag, value]);
      expect(out.code, `${flag} ${value}`).toBe(1);
      expect(out.stderr, `${flag} ${value}`).toMatch(
        new RegExp(`^connect-drizzle: ${flag} must be a (positive|non-negative) whole number.* \\(got "${value}"\\)`),
      );
    }
  });
});
