import { createCipheriv, createDecipheriv, hkdfSync, type KeyObject } from "node:crypto";
import { randomInto } from "./hash.js";

/**
 * The one AES-256-GCM format of this package, for what it seals with keys of its own (session data with
 * `encrypt`, lifecycle events with `broadcast`): `<kid>.<base64url(iv | ciphertext | tag)>`, a 12-byte IV
 * and a 16-byte tag; `kid` is a short public id of the secret it was sealed under.
 */
const IV = 12;
const TAG = 16;

/** Bytes derived from a secret with HKDF-SHA-256, for one use (`info`): each use gets keys of its own. */
export function derive(secret: string, info: string, length: number): Buffer {
  return Buffer.from(hkdfSync("sha256", secret, "connect-drizzle", info, length));
}

/** `plaintext` sealed under `key` (whose id is `kid`), bound to `aad` when given. */
export function sealText(key: KeyObject, kid: string, plaintext: string, aad?: Buffer): string {
  const iv = Buffer.allocUnsafe(IV);
  randomInto(iv, 0, IV);
  const cipher = createCipheriv("aes-256-gcm", key, iv, { authTagLength: TAG });
  if (aad) cipher.setAAD(aad);
  const sealed = Buffer.concat([iv, cipher.update(plaintext, "utf8"), cipher.final(), cipher.getAuthTag()]);
  return `${kid}.${sealed.toString("base64url")}`;
}

/** The plaintext of a sealed body (what follows `<kid>.`), or undefined when it does not authenticate. */
export function openText(key: KeyObject, body: string, aad?: Buffer): string | undefined {
  const sealed = Buffer.from(body, "base64url");
  if (sealed.length < IV + TAG) return undefined;
  try {
    const decipher = createDecipheriv("aes-256-gcm", key, sealed.subarray(0, IV), { authTagLength: TAG });
    if (aad) decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG));
    const opened = decipher.update(sealed.subarray(IV, sealed.length - TAG));
    decipher.final(); // throws unless the tag matches; GCM releases nothing more
    return opened.toString("utf8");
  } catch {
    return undefined;
  }
}
