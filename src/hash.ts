import { createHash, createHmac, randomFillSync } from "node:crypto";

/**
 * Derives the database keys of a session id: one per secret, the first being the key new rows get.
 * Without secrets the key is SHA-256(id); with secrets it is HMAC-SHA-256(secret, id), so a leaked
 * table cannot even be matched against guessed ids without the secret.
 */
export type KeyDeriver = (sessionId: string) => string[];

/**
 * Whether a session id can be hashed without colliding with another: a string that is well-formed
 * UTF-16 (UTF-8 encoding replaces every lone surrogate with U+FFFD, so "\uD800" and "\uDBFF" would
 * share a key). Ids from express-session are always well-formed.
 */
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

export function isValidId(id: unknown): id is string {
  return typeof id === "string" && !LONE_SURROGATE.test(id);
}

export function keyDeriver(secrets: readonly string[]): KeyDeriver {
  if (secrets.length === 0) {
    return (id) => [createHash("sha256").update(id, "utf8").digest("base64url")];
  }
  return (id) => secrets.map((secret) => createHmac("sha256", secret).update(id, "utf8").digest("base64url"));
}

/**
 * Random bytes for handles and encryption IVs (both public), drawn 16 at a time (one call to the CSPRNG
 * per 256 draws, as Node's randomUUID does).
 */
const POOL = Buffer.alloc(16 * 256);
let drawn = POOL.length;

/** Where the next 16 fresh bytes of the pool start. */
function draw(): number {
  if (drawn === POOL.length) {
    randomFillSync(POOL);
    drawn = 0;
  }
  drawn += 16;
  return drawn - 16;
}

/** A fresh public handle: 128 random bits, unrelated to the session id, so it can never be used as one. */
export function newHandle(): string {
  const at = draw();
  return POOL.toString("base64url", at, at + 16);
}

/** Copies `length` (at most 16) fresh random bytes into `target` at `offset`: an IV. */
export function randomInto(target: Buffer, offset: number, length: number): void {
  const at = draw();
  POOL.copy(target, offset, at, at + Math.min(length, 16));
}
