// The example's own table: users (email + scrypt password hash). Created with `create table if not exists` at startup to keep the example self-contained; in
// your app they belong in your drizzle schema and migrations, next to `export { sessions } from "connect-drizzle"`.
import { randomBytes, randomUUID, scrypt, timingSafeEqual, type BinaryLike } from "node:crypto";
import { eq, sql } from "drizzle-orm";
import { pgTable, text, timestamp } from "drizzle-orm/pg-core";
import type { AnyPgDatabase } from "connect-drizzle";

export const users = pgTable("users", {
  id: text("id").primaryKey(),
  email: text("email").notNull().unique(),
  passwordHash: text("password_hash").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

export interface User {
  id: string;
  email: string;
}

export async function createTables(db: AnyPgDatabase): Promise<void> {
  await db.execute(sql`create table if not exists users (
    id text primary key,
    email text not null unique,
    password_hash text not null,
    created_at timestamptz not null default now()
  )`);
}

export class EmailTakenError extends Error {}

export async function createUser(db: AnyPgDatabase, email: string, password: string): Promise<User> {
  const id = randomUUID();
  const rows = await db
    .insert(users)
    .values({ id, email, passwordHash: await hashPassword(password) })
    .onConflictDoNothing({ target: users.email })
    .returning({ id: users.id });
  if (rows.length === 0) throw new EmailTakenError(email);
  return { id, email };
}

/** The user with this email and password, or null. Takes the same time whether or not the email exists. */
export async function verifyUser(db: AnyPgDatabase, email: string, password: string): Promise<User | null> {
  const [row] = await db.select().from(users).where(eq(users.email, email));
  const ok = await checkPassword(password, row?.passwordHash ?? DUMMY_HASH);
  return row && ok ? { id: row.id, email: row.email } : null;
}

export async function findUser(db: AnyPgDatabase, id: string): Promise<User | null> {
  const [row] = await db.select({ id: users.id, email: users.email }).from(users).where(eq(users.id, id));
  return row ?? null;
}

// Passwords: scrypt with a random salt, stored as "scrypt$<salt>$<hash>" (hex).
const KEY_LENGTH = 64;
const DUMMY_HASH = `scrypt$${"00".repeat(16)}$${"00".repeat(KEY_LENGTH)}`;

function scryptAsync(password: BinaryLike, salt: BinaryLike): Promise<Buffer> {
  return new Promise((resolve, reject) => scrypt(password, salt, KEY_LENGTH, (err, key) => (err ? reject(err) : resolve(key))));
}

export async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password.normalize("NFKC"), salt);
  return `scrypt$${salt.toString("hex")}$${key.toString("hex")}`;
}

export async function checkPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, saltHex, keyHex] = stored.split("$");
  if (scheme !== "scrypt" || !saltHex || !keyHex) return false;
  const expected = Buffer.from(keyHex, "hex");
  const actual = await scryptAsync(password.normalize("NFKC"), Buffer.from(saltHex, "hex"));
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}
