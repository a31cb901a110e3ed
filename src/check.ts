/**
 * The checks of options, shared by every entry point (`new SessionStore`, `createSessionTable`,
 * `sessionMiddleware`, `reap`, `migrate`, `importConnectPgSimple`, the CLI): each entry point lists its
 * options once, each with its check, and {@link checkOptions} refuses an unknown key or a wrong value at
 * once, as a TypeError that names the option. This module imports nothing, so that the schema module can
 * use it while it builds the default table (resolve-options.ts imports the schema).
 */

/** Checks one option that is given (undefined means its default); throws a TypeError that names it. */
export type OptionCheck = (options: Readonly<Record<string, unknown>>, name: string) => void;

/** Every option of an entry point with its check: the compiler keeps the table complete. */
export type OptionChecks<T> = { readonly [K in keyof Required<T>]: OptionCheck };

/**
 * What a wrong value was, for an error message that must not carry values (a string in the wrong option
 * may be a secret): numbers and booleans as they are, anything else by its type.
 */
export function kindOf(value: unknown): string {
  if (value === null || value === undefined || typeof value === "number" || typeof value === "boolean") return String(value);
  if (typeof value === "string") return value === "" ? "an empty string" : "a string";
  if (Array.isArray(value)) return "an array";
  if (typeof value === "object") return "an object";
  return `a ${typeof value}`;
}

/**
 * Refuses an options object with a key not in `known` (a misspelt option would otherwise be ignored
 * silently), naming the closest known key when one is near and listing them all.
 * @param what where the options go, for the message: "SessionStore", "`reaper`", "sessionMiddleware"
 * @throws TypeError
 */
function checkOptionKeys(options: object, known: Readonly<Record<string, unknown>>, what: string): void {
  const names = Object.keys(known);
  for (const key of Object.keys(options)) {
    if (Object.hasOwn(known, key)) continue;
    const near = closest(key, names);
    throw new TypeError(
      `connect-drizzle: unknown ${what} option \`${key}\`${near === undefined ? "" : ` (did you mean \`${near}\`?)`}; ` +
        `the known options are ${names.join(", ")}`,
    );
  }
}

/**
 * Checks an options object against its entry point's table: an unknown key is refused with the closest
 * known one, then every option given is checked, in the table's order.
 * @param prefix put before each name in the messages, for nested options: "cookie."
 * @throws TypeError
 */
export function checkOptions(options: object, checks: Readonly<Record<string, OptionCheck>>, what: string, prefix = ""): void {
  checkOptionKeys(options, checks, what);
  const given = options as Readonly<Record<string, unknown>>;
  for (const [name, check] of Object.entries(checks)) {
    if (given[name] === undefined) continue;
    // A nested option is named in full in its message (`cookie.maxAge`).
    if (prefix === "") check(given, name);
    else check({ [prefix + name]: given[name] }, prefix + name);
  }
}

/** The known name a misspelling most likely meant: a case-insensitive match, else within a few edits. */
export function closest(key: string, names: readonly string[]): string | undefined {
  const lower = key.toLowerCase();
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const name of names) {
    const distance = editDistance(lower, name.toLowerCase());
    if (distance < bestDistance) [best, bestDistance] = [name, distance];
  }
  return bestDistance <= Math.max(1, Math.min(3, Math.floor(key.length / 3))) ? best : undefined;
}

/** Levenshtein distance, with a swap of two neighbours counted as one edit ("intreval"). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * Reads a numeric option: positive (or, with allowZero, non-negative) and finite; with `whole`, an integer.
 * @throws TypeError
 */
export function numberOption<K extends string>(
  options: Partial<Record<K, unknown>>,
  name: K,
  fallback: number,
  allowZero = false,
  unit = "milliseconds",
  whole = false,
): number {
  const value = options[name];
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0 || (value === 0 && !allowZero) || (whole && !Number.isInteger(value))) {
    throw new TypeError(
      `connect-drizzle: \`${name}\` must be a ${allowZero ? "non-negative" : "positive"} ${whole ? "whole " : ""}number of ${unit} (got ${kindOf(value)})`,
    );
  }
  return value;
}

/**
 * Reads a boolean option: `true` or `false` only, so that `"false"` (from an environment variable, say)
 * is refused rather than read as true.
 * @throws TypeError
 */
function booleanOption<K extends string>(options: Partial<Record<K, unknown>>, name: K, fallback = false): boolean {
  const value = options[name];
  if (value === undefined) return fallback;
  if (typeof value !== "boolean") {
    // "true" and "false" are the usual mistake (an environment variable); saying which is safe.
    const got = value === "true" || value === "false" ? `the string "${value}"` : kindOf(value);
    throw new TypeError(`connect-drizzle: \`${name}\` must be true or false (got ${got})`);
  }
  return value;
}

/** The checks an option table is made of. */
export const is = {
  boolean: ((options, name) => void booleanOption(options, name)) as OptionCheck,
  /** A positive finite number of `unit`. */
  positive:
    (unit = "milliseconds", whole = false): OptionCheck =>
    (options, name) =>
      void numberOption(options, name, 0, false, unit, whole),
  /** A non-negative finite number of `unit`. */
  nonNegative:
    (unit = "milliseconds"): OptionCheck =>
    (options, name) =>
      void numberOption(options, name, 0, true, unit),
  /** A function; `signature` shows what it is called with and returns. */
  function:
    (signature: string): OptionCheck =>
    (options, name) => {
      if (typeof options[name] !== "function") {
        throw new TypeError(`connect-drizzle: \`${name}\` must be a function ${signature} (got ${kindOf(options[name])})`);
      }
    },
  /** A non-empty string; `what` says what it names. */
  name:
    (what: string): OptionCheck =>
    (options, name) => {
      const value = options[name];
      if (typeof value !== "string" || value.length === 0) {
        throw new TypeError(`connect-drizzle: \`${name}\` must be a non-empty ${what} (got ${kindOf(value)})`);
      }
    },
  /** One of a few strings. */
  oneOf:
    (values: readonly string[]): OptionCheck =>
    (options, name) => {
      const value = options[name];
      if (typeof value !== "string" || !values.includes(value)) {
        const quoted = values.map((v) => `"${v}"`);
        const list = quoted.length > 1 ? `${quoted.slice(0, -1).join(", ")} or ${quoted.at(-1)}` : quoted.join("");
        throw new TypeError(`connect-drizzle: \`${name}\` must be ${list} (got ${kindOf(value)})`);
      }
    },
  /** An object, checked further by the entry point (nested options have tables of their own). */
  object:
    (example: string, orFalse = false): OptionCheck =>
    (options, name) => {
      const value = options[name];
      if (orFalse && value === false) return;
      if (value === null || typeof value !== "object" || Array.isArray(value)) {
        throw new TypeError(`connect-drizzle: \`${name}\` must be an object such as ${example}${orFalse ? ", or false" : ""} (got ${kindOf(value)})`);
      }
    },
  /** Anything: the entry point checks it itself (a required option, or one with a message of its own). */
  own: (() => {}) as OptionCheck,
};
