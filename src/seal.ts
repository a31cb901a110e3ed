import { createHmac, createSecretKey, timingSafeEqual, type KeyObject } from "node:crypto";
import type { SessionData } from "express-session";
import { derive, openText, sealText } from "./aead.js";
import { isSession, parseSession } from "./serialize.js";

/** `encrypt` with its defaults applied (see {@link EncryptOptions} in options.ts). */
export interface SealSettings {
  secrets: readonly string[];
  acceptPlaintext: boolean;
}

/** A row's data opened: the session object, its plain JSON text, and what a save must re-seal. */
export interface Opened {
  value: Record<string, unknown>;
  text: string;
  /**
   * The entries not stored as a save would store them now: sealed under an older secret, or in plaintext
   * (with `acceptPlaintext`). Empty when the row is current (its cookie tag included).
   */
  stale: StaleEntry[];
  /** Whether the cookie's tag is missing or under an older secret (rewritten by the next write of the cookie). */
  staleTag: boolean;
}

/**
 * An entry of a row that is not as a save would store it now: its stored name and value as read, the
 * session key it holds, and, when it is the entry the session was read from (not shadowed by a newer one
 * of the same key), that value's JSON, to be sealed again under the first secret. A re-seal replaces the
 * entry only while the row still holds it exactly as read, so it never writes anything but the row as it is.
 */
export interface StaleEntry {
  name: string;
  stored: unknown;
  key: string;
  json?: string;
}

/** The name of the entry that authenticates the cookie (sealed entries' names are `~` and 22 characters). */
export const COOKIE_TAG = "~cookie";

/** The keys of one secret, from HKDF-SHA-256 with an info string of its own for each. */
interface Keys {
  /** AES-256-GCM key of the entries' values. */
  data: KeyObject;
  /** HMAC-SHA-256 key of the entries' names. */
  name: Buffer;
  /** A short public id of the secret, in front of each value it sealed. */
  kid: string;
  /** HMAC-SHA-256 key of the cookie's tag. */
  cookie: Buffer;
}

const NAME_LENGTH = 22;
/** Distinct names remembered by {@link Sealer.storedNames} (a session's keys are few; the bound is for apps with dynamic ones). */
const NAMES_KEPT = 10_000;

/**
 * Encryption at rest of a session's data (the `encrypt` option). The stored form keeps `cookie` in the
 * clear (expiry and flags: touch and extend rewrite it in SQL) and turns every other top-level key K into
 * an entry of its own, so a save can write only the keys it changed:
 * - name: `~` and the first 22 characters of base64url(HMAC-SHA-256(name key, K));
 * - value: `<kid>.<base64url(iv | ciphertext | tag)>`, AES-256-GCM of the JSON of `[K, value]`, with the
 *   row key, a NUL and the name as additional data, so an entry cannot be moved to another row or name.
 *
 * The cookie itself is authenticated by a tag of its own ({@link COOKIE_TAG}): an HMAC of the row key and
 * every field of the cookie but `expires` (extend rewrites it in SQL; the expiry columns, which a table
 * writer controls as much, decide when the session ends), so a table writer cannot strip HttpOnly or
 * Secure, or widen Domain, in the next Set-Cookie.
 *
 * The first secret seals; every secret opens (its `kid` says which).
 */
export class Sealer {
  private readonly keys: Keys[];
  private readonly byKid = new Map<string, number>();
  private readonly names = new Map<string, string[]>();

  constructor(private readonly settings: SealSettings) {
    this.keys = settings.secrets.map((secret) => ({
      data: createSecretKey(deriveFor(secret, "data", 32)),
      name: deriveFor(secret, "name", 32),
      kid: deriveFor(secret, "kid", 6).toString("base64url"),
      cookie: deriveFor(secret, "cookie", 32),
    }));
    // A secret listed twice keeps its first place.
    for (const [i, keys] of this.keys.entries()) if (!this.byKid.has(keys.kid)) this.byKid.set(keys.kid, i);
  }

  /**
   * The stored form of a session's data for the row `rowKey`: `cookie` as it is, every other key sealed
   * under the first secret. Keys whose value JSON leaves out (undefined, functions) are left out too.
   */
  seal(rowKey: string, data: object): Record<string, unknown> {
    const stored: Record<string, unknown> = {};
    for (const key of Object.keys(data)) {
      const value = (data as Record<string, unknown>)[key];
      if (key === "cookie") {
        stored.cookie = value;
        if (value !== null && typeof value === "object") stored[COOKIE_TAG] = this.cookieTag(rowKey, value);
        continue;
      }
      const json = JSON.stringify(value);
      if (json === undefined) continue;
      const name = this.storedNames(key)[0]!;
      stored[name] = this.sealEntry(rowKey, name, `[${JSON.stringify(key)},${json}]`);
    }
    return stored;
  }

  /**
   * The stored names of the key `key`, one per secret, the first secret's first: a save that removes or
   * replaces a key removes it under all of them, so a rotation leaves no duplicate behind.
   */
  storedNames(key: string): string[] {
    let names = this.names.get(key);
    if (!names) {
      names = this.keys.map((keys) => `~${createHmac("sha256", keys.name).update(key, "utf8").digest("base64url").slice(0, NAME_LENGTH)}`);
      if (this.names.size >= NAMES_KEPT) this.names.clear();
      this.names.set(key, names);
    }
    return names;
  }

  /**
   * The tag of a cookie in the row `rowKey`, under the first secret: `<kid>.<base64url(HMAC)>` of the row
   * key and the cookie's fields but `expires`, in a canonical JSON (sorted keys: jsonb reorders them).
   */
  cookieTag(rowKey: string, cookie: object, rank = 0): string {
    const keys = this.keys[rank]!;
    // A cookie read from a row is plain JSON already; express-session's Cookie is what its toJSON gives.
    const json = typeof (cookie as { toJSON?: unknown }).toJSON === "function" ? (cookie as { toJSON(): unknown }).toJSON() : cookie;
    const { expires: _expires, ...fields } = json as Record<string, unknown>;
    const mac = createHmac("sha256", keys.cookie)
      .update(`${rowKey}\u0000${canonicalJson(fields)}`, "utf8")
      .digest("base64url");
    return `${keys.kid}.${mac}`;
  }

  /**
   * The items of a re-seal of the row `rowKey` (see Statements' `resealed`): each stale entry, as read,
   * and what replaces it while the row still holds it so: the same value sealed under the first secret,
   * or nothing for an entry shadowed by a newer one of its key.
   */
  resealItems(rowKey: string, stale: readonly StaleEntry[]): Array<{ old: string; was: unknown; new: string | null; value: string | null }> {
    return stale.map((entry) => {
      if (entry.json === undefined) return { old: entry.name, was: entry.stored, new: null, value: null };
      const name = this.storedNames(entry.key)[0]!;
      return { old: entry.name, was: entry.stored, new: name, value: this.sealEntry(rowKey, name, `[${JSON.stringify(entry.key)},${entry.json}]`) };
    });
  }

  /**
   * A row's data (its JSON text as read, or already parsed) opened, or why it cannot be: the session
   * object, and its plain JSON text put together from the entries' own (no second serialization).
   */
  unseal(rowKey: string, data: unknown): Opened | string {
    let stored: unknown = data;
    if (typeof data === "string") {
      try {
        stored = JSON.parse(data);
      } catch {
        return "its data is not JSON";
      }
    }
    if (stored === null || typeof stored !== "object" || Array.isArray(stored)) return "its data is not an object";
    const sealed = new Map<string, { rank: number; value: unknown; json: string; name: string; stored: unknown }>();
    const plain: Array<[string, unknown]> = [];
    const stale: StaleEntry[] = [];
    let tag: string | undefined;
    for (const [name, entry] of Object.entries(stored)) {
      if (name === "cookie") continue;
      if (name === COOKIE_TAG) {
        tag = typeof entry === "string" ? entry : "";
        continue;
      }
      if (!name.startsWith("~")) {
        if (!this.settings.acceptPlaintext)
          return (
            "it holds data in plaintext, not encrypted: a session stored before `encrypt` was on, imported, or written into " +
            "the database by hand (set `encrypt.acceptPlaintext: true` while such sessions may still be live)"
          );
        plain.push([name, entry]);
        continue;
      }
      const dot = typeof entry === "string" ? entry.indexOf(".") : -1;
      const rank = dot < 0 ? undefined : this.byKid.get((entry as string).slice(0, dot));
      if (rank === undefined)
        return "an entry is sealed under a secret that is not in `encrypt.secrets` (keep an old secret listed until the sessions it sealed have expired)";
      const opened = this.openEntry(rowKey, name, (entry as string).slice(dot + 1), rank);
      if (opened === undefined) return "an entry fails authentication: altered, or copied from another row or another entry";
      const seen = sealed.get(opened.key);
      const next = { rank, value: opened.value, json: opened.json, name, stored: entry };
      if (!seen || rank < seen.rank) {
        if (seen && seen.rank > 0) stale.push({ name: seen.name, stored: seen.stored, key: opened.key });
        sealed.set(opened.key, next);
      } else if (rank > 0) stale.push({ name, stored: entry, key: opened.key });
    }
    const cookie = (stored as Record<string, unknown>).cookie;
    const staleTag = this.checkTag(rowKey, cookie, tag);
    if (typeof staleTag === "string") return staleTag;
    const value: Record<string, unknown> = {};
    const parts: string[] = [];
    if (cookie !== undefined) {
      value.cookie = cookie;
      parts.push(`"cookie":${JSON.stringify(cookie)}`);
    }
    for (const [key, entry] of sealed) {
      define(value, key, entry.value);
      parts.push(`${JSON.stringify(key)}:${entry.json}`);
      if (entry.rank > 0) stale.push({ name: entry.name, stored: entry.stored, key, json: entry.json });
    }
    // A sealed entry wins over a plaintext one of the same key (the changeover: see acceptPlaintext).
    for (const [key, entry] of plain) {
      const json = JSON.stringify(entry);
      if (sealed.has(key)) {
        stale.push({ name: key, stored: entry, key });
        continue;
      }
      define(value, key, entry);
      parts.push(`${JSON.stringify(key)}:${json}`);
      stale.push({ name: key, stored: entry, key, json });
    }
    return { value, text: `{${parts.join(",")}}`, stale, staleTag };
  }

  /**
   * Checks a row's cookie tag: whether it is stale (under an older secret, or missing from a row that
   * `acceptPlaintext` lets in), or why the row must not be read (a tag that does not authenticate).
   */
  private checkTag(rowKey: string, cookie: unknown, tag: string | undefined): boolean | string {
    if (tag === undefined) {
      return this.settings.acceptPlaintext
        ? true
        : "its cookie carries no tag: written into the database by hand, or by a version without cookie authentication " +
            "(set `encrypt.acceptPlaintext: true` while such sessions may still be live)";
    }
    const dot = tag.indexOf(".");
    const rank = dot < 0 ? undefined : this.byKid.get(tag.slice(0, dot));
    const authentic = rank !== undefined && cookie !== null && typeof cookie === "object" && safeEqual(tag, this.cookieTag(rowKey, cookie, rank));
    return authentic ? rank > 0 : "its cookie fails authentication: altered (HttpOnly, Secure, Domain, ...), or copied from another row";
  }

  private sealEntry(rowKey: string, name: string, plaintext: string): string {
    const keys = this.keys[0]!;
    return sealText(keys.data, keys.kid, plaintext, additionalData(rowKey, name));
  }

  /** An entry's key, value and the value's JSON text; undefined when it does not authenticate (or is not ours). */
  private openEntry(rowKey: string, name: string, body: string, rank: number): { key: string; value: unknown; json: string } | undefined {
    const plaintext = openText(this.keys[rank]!.data, body, additionalData(rowKey, name));
    if (plaintext === undefined) return undefined;
    // Authenticated, so written by seal(): the JSON of [key, value], exactly.
    const [key, value] = JSON.parse(plaintext) as [string, unknown];
    // The cookie is never sealed (it would shadow the clear one), and a name is always its key's own.
    if (key === "cookie" || this.storedNames(key)[rank] !== name) return undefined;
    const quoted = JSON.stringify(key);
    return { key, value, json: plaintext.slice(quoted.length + 2, -1) };
  }
}

/** JSON with every object's keys sorted, so that a value reads back the same from jsonb, which reorders keys. */
function canonicalJson(value: unknown): string {
  if (value != null && typeof (value as { toJSON?: unknown }).toJSON === "function") return canonicalJson((value as { toJSON(): unknown }).toJSON());
  if (value === null || typeof value !== "object") return JSON.stringify(value) ?? "null";
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  const entries = Object.keys(value)
    .filter((key) => (value as Record<string, unknown>)[key] !== undefined)
    .sort()
    .map((key) => `${JSON.stringify(key)}:${canonicalJson((value as Record<string, unknown>)[key])}`);
  return `{${entries.join(",")}}`;
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function deriveFor(secret: string, use: string, length: number): Buffer {
  return derive(secret, `connect-drizzle encrypt ${use} v1`, length);
}

function additionalData(rowKey: string, name: string): Buffer {
  return Buffer.from(`${rowKey}\u0000${name}`, "utf8");
}

/** Sets an own property, `__proto__` included (JSON.parse makes it an own key; an assignment would set the prototype). */
function define(target: Record<string, unknown>, key: string, value: unknown): void {
  if (key === "__proto__") Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  else target[key] = value;
}

/** A row's `data` as a session and its plain JSON text (opened, with `encrypt`: `sealer`), or why it holds none. */
export function openRow(sealer: Sealer | undefined, key: string, data: string): { session: SessionData; text: string; stale?: readonly StaleEntry[] } | string {
  if (!sealer) {
    const session = parseSession(data);
    return session ? { session, text: data } : "its data or cookie is malformed";
  }
  const opened = sealer.unseal(key, data);
  if (typeof opened === "string") return opened;
  if (!isSession(opened.value)) return "its cookie is malformed";
  const stale = opened.stale.length > 0 || opened.staleTag ? opened.stale : undefined;
  return { session: opened.value, text: opened.text, stale };
}

/** What a save writes into the `data` of the row `key`: the session's JSON text, or with `encrypt` its sealed form. */
export function sealRow(sealer: Sealer | undefined, key: string, session: SessionData, text: string): string {
  return sealer ? JSON.stringify(sealer.seal(key, session)) : text;
}

/** The plain JSON text of a row's `data` as a write returned it (opened, with `encrypt`), or undefined when it holds no session. */
export function rowText(sealer: Sealer | undefined, key: string, data: string | undefined): string | undefined {
  if (data === undefined) return undefined;
  const opened = openRow(sealer, key, data);
  return typeof opened === "string" ? undefined : opened.text;
}

/**
 * The values of a merge save ({@link Statements.saveMerged}) for the keys a request changed (`patch`,
 * with the cookie) and those it deleted (`removed`): the one place they become what the statement
 * sends.
 */
export function mergeValues(
  sealer: Sealer | undefined,
  acceptPlaintext: boolean,
  rowKey: string,
  patch: Record<string, unknown>,
  removed: readonly string[],
  stale?: readonly StaleEntry[],
): { patch: string; removed: string; reseal?: string } {
  if (!sealer) return { patch: JSON.stringify(patch), removed: JSON.stringify(removed) };
  // Sealed: a removed key goes under every secret's name, a changed one under the others' (the patch
  // holds it under the first secret's), so no older copy of either is left behind.
  // With `acceptPlaintext`, a key may also be in the row in plaintext, under its own name.
  const plain = (key: string) => (acceptPlaintext ? [key] : []);
  const names = removed.flatMap((key) => [...sealer.storedNames(key), ...plain(key)]);
  for (const key of Object.keys(patch)) if (key !== "cookie") names.push(...sealer.storedNames(key).slice(1), ...plain(key));
  const values = { patch: JSON.stringify(sealer.seal(rowKey, patch)), removed: JSON.stringify(names) };
  // The entries this request read that are not sealed as a save would seal them now, and that it does
  // not write itself: re-sealed as the row holds them (see Statements' resealed).
  const skip = new Set([...Object.keys(patch), ...removed]);
  const reseal =
    stale &&
    sealer.resealItems(
      rowKey,
      stale.filter((entry) => !skip.has(entry.key)),
    );
  return reseal && reseal.length > 0 ? { ...values, reseal: JSON.stringify(reseal) } : values;
}
