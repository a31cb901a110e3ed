import { checkOptions, is, kindOf, numberOption, type OptionCheck, type OptionChecks } from "./check.js";
import { isPgDatabase, primaryOf, replicasOf } from "./database.js";
import type {
  CacheOptions,
  EncryptOptions,
  ReplicaReadOptions,
  ReaperOptions,
  ResolvedOptions,
  ResolvedReaperOptions,
  SessionCapOptions,
  SessionStoreOptions,
  UserIdOf,
} from "./options.js";
import { deletedByDatabase, drizzleWritesName, sessions, type SessionTable } from "./schema.js";
import type { SealSettings } from "./seal.js";

/*
 * The options, checked and defaulted: the check of each option (one table per options object), the
 * default of each (one table, DEFAULTS), and resolveOptions, which applies both. What each option means is
 * declared in options.ts.
 */

const defaultUserId: UserIdOf = (session: any) => session?.passport?.user ?? session?.userId;
const defaultLabel = (session: any) => (typeof session?.label === "string" ? session.label : undefined);

/**
 * The default of every option not given, in one table, each the value its TSDoc `@default` names: read by
 * {@link resolveOptions} (the store), and by `reap()`, the CLI and the import for the options they share.
 * Left out are the options that are off unless given (`idleTimeout`, `absoluteTimeout`, `renewAfter`, `encrypt`, `cache`,
 * `listen`, `maxSessionsPerUser`: of these the table holds only the defaults of their own options) and the
 * two whose default follows another option, worked out in resolveOptions: `notify` (on with `cache`) and
 * `merge` (on unless `versioned`).
 */
export const DEFAULTS = Object.freeze({
  table: sessions,
  secrets: Object.freeze([]) as readonly string[],
  ttl: 86_400_000,
  touchAfter: 60_000,
  rotationGrace: 10_000,
  detectReuse: true,
  restartOnReauthentication: true,
  userId: defaultUserId,
  label: defaultLabel,
  retainEnded: 0,
  maxSize: 1_048_576,
  prepare: true,
  broadcast: false,
  versioned: false,
  onBindingChange: "event" as "event" | "end",
  timeout: 10_000,
  reaper: Object.freeze<ResolvedReaperOptions>({ interval: 900_000, batchSize: 5_000, jitter: 0.1 }),
  /** The options of a `cache` given without them. */
  cache: Object.freeze<Required<CacheOptions>>({ max: 10_000, ttl: 60_000 }),
  /** The options of `replicaReads` with a withReplicas database, when not given. */
  replicaReads: Object.freeze<Required<ReplicaReadOptions>>({ window: 0, timeout: 1_000 }),
  /** What `maxSessionsPerUser` does at its limit when not given (a plain number is `{ limit }`). */
  maxSessionsPerUser: Object.freeze({ whenFull: "evict" as const }),
  /** The options of `encrypt` given without them (its `secrets` are required). */
  encrypt: Object.freeze({ acceptPlaintext: false }),
});

/** The store's `timeout`, and the reaper's when it runs on its own (`reap()`, the CLI). */
export const DEFAULT_TIMEOUT = DEFAULTS.timeout;

/** Node's timers overflow (and then fire after 1 ms) past this delay; so does Postgres's statement_timeout. */
export const MAX_DELAY = 2_147_483_647;

/** `db`: a drizzle Postgres database of any driver and supported drizzle-orm version (or withReplicas of them). */
const database: OptionCheck = (options, name) => {
  if (!isPgDatabase(primaryOf(options[name]))) {
    throw new TypeError(
      `connect-drizzle: \`${name}\` is not a drizzle Postgres database; build it with drizzle-orm/node-postgres, drizzle-orm/postgres-js ` +
        "or drizzle-orm/pglite (MySQL and SQLite databases are not supported)",
    );
  }
};

/** `table`: a table built by createSessionTable. */
export const sessionTable: OptionCheck = (options, name) => {
  const table = options[name];
  if (table === null || typeof table !== "object" || !("key" in table)) {
    throw new TypeError(`connect-drizzle: \`${name}\` must be a table from connect-drizzle's createSessionTable() (got ${kindOf(table)})`);
  }
  if (!drizzleWritesName(table as SessionTable)) {
    throw new TypeError(
      `connect-drizzle: \`${name}\`'s name holds a double quote, which the installed drizzle-orm does not escape ` +
        "(every query on the table would be a syntax error); upgrade drizzle-orm to 0.45 or later, or rename the table",
    );
  }
};

/** `secrets`: a non-empty string, or a list of them. */
export const secretList: OptionCheck = (options, name) => {
  const value = options[name];
  const list = typeof value === "string" ? [value] : Array.isArray(value) ? value : undefined;
  if (list === undefined || !list.every((s) => typeof s === "string" && s.length > 0)) {
    throw new TypeError(`connect-drizzle: \`${name}\` must be a non-empty string or an array of non-empty strings (got ${kindOf(value)})`);
  }
};

/**
 * Every option of {@link SessionStoreOptions} with its check: the one place that says what each accepts.
 * The compiler keeps it complete; a key not in it is refused.
 */
export const STORE_OPTIONS: OptionChecks<SessionStoreOptions> = {
  db: database,
  table: sessionTable,
  secrets: secretList,
  encrypt: (options, name) => void resolveEncrypt(options[name] as EncryptOptions),
  ttl: is.positive(),
  idleTimeout: is.positive(),
  absoluteTimeout: is.positive(),
  touchAfter: is.nonNegative(),
  rotationGrace: is.nonNegative(),
  detectReuse: is.boolean,
  renewAfter: is.positive(),
  restartOnReauthentication: is.boolean,
  userId: is.function("(session) => string | number | undefined"),
  label: is.function("(session) => string | undefined"),
  retainEnded: is.nonNegative(),
  maxSize: is.positive("bytes"),
  cache: (options, name) => void resolveCache(options[name] as CacheOptions),
  notify: is.boolean,
  broadcast: is.boolean,
  listen: database,
  merge: is.boolean,
  versioned: is.boolean,
  timeout: is.positive(),
  maxSessionsPerUser: (options, name) => void resolveSessionCap(options[name] as SessionStoreOptions["maxSessionsPerUser"]),
  onBindingChange: is.oneOf(["event", "end"]),
  reaper: (options, name) => void resolveReaperOptions(options[name] as ReaperOptions),
  prepare: is.boolean,
  replicaReads: (options, name) => void resolveReplicaReads(options[name] as ReplicaReadOptions, true),
};

/** Every option of {@link ReplicaReadOptions} with its check. */
export const REPLICA_READ_OPTIONS: OptionChecks<ReplicaReadOptions> = { window: is.nonNegative(), timeout: is.positive() };

function resolveReplicaReads(options: ReplicaReadOptions | false | undefined, replicated: boolean): Required<ReplicaReadOptions> | undefined {
  if (options === false || !replicated) return undefined;
  if (options === undefined) return { ...DEFAULTS.replicaReads };
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(
      `connect-drizzle: \`replicaReads\` must be an options object such as { window: 0 }, or false to read from the primary only (got ${kindOf(options)})`,
    );
  }
  checkOptions(options, REPLICA_READ_OPTIONS, "`replicaReads`");
  return { window: options.window ?? DEFAULTS.replicaReads.window, timeout: options.timeout ?? DEFAULTS.replicaReads.timeout };
}

/** Every option of {@link EncryptOptions} with its check. */
export const ENCRYPT_OPTIONS: OptionChecks<EncryptOptions> = {
  secrets: (options, name) => {
    const value = options[name];
    const secrets = typeof value === "string" ? [value] : Array.isArray(value) ? value : [];
    if (!keySecrets(secrets)) {
      throw new TypeError(
        `connect-drizzle: \`encrypt.secrets\` must be a secret of at least ${MIN_SECRET} random characters, or a list of them ` +
          `(the first encrypts, all decrypt); make one with ${MAKE_SECRET}`,
      );
    }
  },
  acceptPlaintext: is.boolean,
};

/** Every option of {@link CacheOptions} with its check. */
export const CACHE_OPTIONS: OptionChecks<CacheOptions> = { max: is.positive("sessions", true), ttl: is.positive() };

export function resolveOptions(options: SessionStoreOptions): ResolvedOptions {
  if (options === null || typeof options !== "object") {
    throw new TypeError("connect-drizzle: new SessionStore(options) needs an options object, e.g. new SessionStore({ db })");
  }
  checkOptions(options, STORE_OPTIONS, "SessionStore");
  // Every option given is checked above, so what follows reads them as their types say.
  const { db } = options;
  if (db === undefined || db === null) {
    throw new TypeError(
      "connect-drizzle: the `db` option is required: pass a drizzle Postgres database, e.g. new SessionStore({ db: drizzle({ client: pool }) })",
    );
  }
  const given = options.secrets ?? DEFAULTS.secrets;
  const secrets = typeof given === "string" ? [given] : [...given];
  const broadcast = options.broadcast ?? DEFAULTS.broadcast;
  if (options.listen !== undefined && !broadcast && options.cache === undefined) {
    throw new TypeError("connect-drizzle: `listen` is used only by `cache` and `broadcast`, and neither is on; remove `listen`, or turn one of them on");
  }
  if (broadcast && !keySecrets(secrets)) {
    throw new TypeError(
      `connect-drizzle: \`broadcast\` needs \`secrets\` (the same on every instance), each of at least ${MIN_SECRET} random characters: ` +
        "its events are sealed with keys derived from them, so that nobody else who can connect to the database can read or forge them; " +
        `make one with ${MAKE_SECRET} (a store that ran without \`secrets\` no longer finds the sessions it stored before: add them before going live)`,
    );
  }
  if (options.cache !== undefined && options.notify === false) {
    throw new TypeError(
      "connect-drizzle: `cache` with `notify: false` cannot be correct (no instance would hear another's writes and " +
        "revokes, so a cache would serve ended sessions); remove `notify: false`, or the cache",
    );
  }
  if (options.merge === true && options.versioned) {
    throw new TypeError(
      "connect-drizzle: `merge: true` and `versioned: true` cannot both hold (merge writes a change over another " +
        "request's, versioned refuses it with CONFLICT); pick one: remove `versioned` to merge, or remove `merge` to get conflicts",
    );
  }
  const cascades = options.cache === undefined ? [] : deletedByDatabase(options.table ?? DEFAULTS.table);
  if (cascades.length > 0) {
    throw new TypeError(
      `connect-drizzle: \`cache\` cannot be correct on a table whose rows the database deletes itself (${cascades.join("; ")}, ` +
        "on delete cascade): those ends send no NOTIFY, so another instance could serve its cached copy of an ended session. " +
        'Create the table with onDelete: "set null" and call await store.revokeUser(id) before deleting a user, or remove `cache`',
    );
  }
  const replicas = replicasOf(db)?.replicas ?? [];
  if (options.replicaReads !== undefined && options.replicaReads !== false && replicas.length === 0) {
    throw new TypeError(
      "connect-drizzle: `replicaReads` needs a database with read replicas: db: withReplicas(primary, [replica]) from drizzle-orm/pg-core; remove `replicaReads`, or pass one",
    );
  }
  return {
    db: primaryOf(db),
    replicas,
    replicaReads: resolveReplicaReads(options.replicaReads, replicas.length > 0),
    table: options.table ?? DEFAULTS.table,
    secrets,
    ttl: options.ttl ?? DEFAULTS.ttl,
    idleTimeout: options.idleTimeout,
    absoluteTimeout: options.absoluteTimeout,
    touchAfter: options.touchAfter ?? DEFAULTS.touchAfter,
    rotationGrace: options.rotationGrace ?? DEFAULTS.rotationGrace,
    detectReuse: options.detectReuse ?? DEFAULTS.detectReuse,
    renewAfter: options.renewAfter,
    restartOnReauthentication: options.restartOnReauthentication ?? DEFAULTS.restartOnReauthentication,
    userId: options.userId ?? DEFAULTS.userId,
    label: options.label ?? DEFAULTS.label,
    retainEnded: options.retainEnded ?? DEFAULTS.retainEnded,
    maxSize: options.maxSize ?? DEFAULTS.maxSize,
    prepare: options.prepare ?? DEFAULTS.prepare,
    cache: resolveCache(options.cache),
    notify: options.notify ?? options.cache !== undefined,
    broadcast,
    listen: options.listen === undefined ? undefined : primaryOf(options.listen),
    merge: options.merge ?? !options.versioned,
    versioned: options.versioned ?? DEFAULTS.versioned,
    timeout: options.timeout ?? DEFAULTS.timeout,
    reaper: resolveReaperOptions(options.reaper),
    encrypt: resolveEncrypt(options.encrypt),
    maxSessionsPerUser: resolveSessionCap(options.maxSessionsPerUser),
    onBindingChange: options.onBindingChange ?? DEFAULTS.onBindingChange,
  };
}

/** The shortest encryption secret accepted, in characters. */
const MIN_SECRET = 32;

/** Whether secrets can key a cipher (`encrypt`, `broadcast`): at least one, each of MIN_SECRET characters or more. */
function keySecrets(secrets: readonly unknown[]): boolean {
  return secrets.length > 0 && secrets.every((s) => typeof s === "string" && s.length >= MIN_SECRET);
}
const MAKE_SECRET = `node -e "console.log(require('crypto').randomBytes(32).toString('base64url'))"`;

function resolveEncrypt(encrypt: EncryptOptions | undefined): SealSettings | undefined {
  if (encrypt === undefined) return undefined;
  if (encrypt === null || typeof encrypt !== "object" || Array.isArray(encrypt)) {
    throw new TypeError("connect-drizzle: `encrypt` must be an object such as { secrets: process.env.SESSION_ENCRYPTION_KEY! }");
  }
  checkOptions(encrypt, ENCRYPT_OPTIONS, "`encrypt`", "encrypt.");
  // Required: checkOptions passes over a missing option.
  if (encrypt.secrets === undefined) ENCRYPT_OPTIONS.secrets({}, "secrets");
  const secrets = typeof encrypt.secrets === "string" ? [encrypt.secrets] : [...encrypt.secrets];
  return { secrets, acceptPlaintext: encrypt.acceptPlaintext ?? DEFAULTS.encrypt.acceptPlaintext };
}

/** Every option of {@link SessionCapOptions} with its check. */
export const SESSION_CAP_OPTIONS: OptionChecks<SessionCapOptions> = {
  limit: is.positive("sessions, e.g. 5", true),
  whenFull: is.oneOf(["evict", "refuse"]),
};

/** `maxSessionsPerUser`, a number or `{ limit, whenFull }`, as the one shape every part of the store reads. */
function resolveSessionCap(cap: number | SessionCapOptions | undefined): Required<SessionCapOptions> | undefined {
  if (cap === undefined) return undefined;
  if (typeof cap === "number") {
    SESSION_CAP_OPTIONS.limit({ maxSessionsPerUser: cap }, "maxSessionsPerUser");
    return { limit: cap, whenFull: DEFAULTS.maxSessionsPerUser.whenFull };
  }
  if (cap === null || typeof cap !== "object" || Array.isArray(cap)) {
    throw new TypeError(
      "connect-drizzle: `maxSessionsPerUser` must be a positive whole number of sessions, e.g. 5, or an object such as " +
        `{ limit: 5, whenFull: "refuse" } (got ${kindOf(cap)})`,
    );
  }
  checkOptions(cap, SESSION_CAP_OPTIONS, "`maxSessionsPerUser`", "maxSessionsPerUser.");
  // Required: checkOptions passes over a missing option.
  if (cap.limit === undefined) {
    throw new TypeError('connect-drizzle: `maxSessionsPerUser` needs its `limit`, a positive whole number of sessions, e.g. { limit: 5, whenFull: "refuse" }');
  }
  return { limit: cap.limit, whenFull: cap.whenFull ?? DEFAULTS.maxSessionsPerUser.whenFull };
}

function resolveCache(cache: CacheOptions | undefined): Required<CacheOptions> | undefined {
  if (cache === undefined || (cache as unknown) === false) return undefined;
  if (cache === null || typeof cache !== "object") {
    throw new TypeError("connect-drizzle: `cache` must be an object such as { max: 10_000, ttl: 60_000 }");
  }
  checkOptions(cache, CACHE_OPTIONS, "`cache`");
  return { max: cache.max ?? DEFAULTS.cache.max, ttl: cache.ttl ?? DEFAULTS.cache.ttl };
}

/** Every option of {@link ReaperOptions} with its check. */
export const REAPER_OPTIONS: OptionChecks<ReaperOptions> = {
  interval: (options, name) => {
    const interval = numberOption(options, name, 0);
    if (interval > MAX_DELAY / 2) {
      throw new TypeError(`connect-drizzle: \`interval\` must be at most ${MAX_DELAY / 2} milliseconds (about 12 days) (got ${interval})`);
    }
  },
  batchSize: (options, name) => void batchSizeOption(options[name]),
  jitter: (options, name) => {
    const value = options[name];
    if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || value > 1) {
      throw new TypeError(`connect-drizzle: \`jitter\` must be a fraction of the interval between 0 and 1, e.g. 0.1 (got ${kindOf(value)})`);
    }
  },
};

/**
 * Validates the `reaper` option. `false` turns the periodic reaper off; `undefined` is every default.
 * @throws TypeError that says what to pass instead
 */
export function resolveReaperOptions(options: ReaperOptions | false | undefined): ResolvedReaperOptions | false {
  if (options === false) return false;
  if (options === undefined) return { ...DEFAULTS.reaper };
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(
      `connect-drizzle: \`reaper\` must be an options object such as { interval: 900_000 }, or false to turn the reaper off (got ${kindOf(options)})`,
    );
  }
  checkOptions(options, REAPER_OPTIONS, "`reaper`");
  return {
    interval: options.interval ?? DEFAULTS.reaper.interval,
    batchSize: options.batchSize ?? DEFAULTS.reaper.batchSize,
    jitter: options.jitter ?? DEFAULTS.reaper.jitter,
  };
}

/** Reads a `batchSize`: a positive whole number of rows. */
export function batchSizeOption(value: unknown, fallback: number = DEFAULTS.reaper.batchSize): number {
  const size = numberOption({ batchSize: value }, "batchSize", fallback, false, "rows");
  if (!Number.isInteger(size)) throw new TypeError(`connect-drizzle: \`batchSize\` must be a whole number of rows (got ${size})`);
  return size;
}
