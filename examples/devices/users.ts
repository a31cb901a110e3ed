// The example's own tables: users (email + scrypt password hash) and sign-in notices ("New sign-in from
// Firefox on Linux"). Created with `create table if not exists` at startup to keep the example self-contained; in
// your app they belong in your drizzle schema and migrations, next to `export { sessions } from "connect-drizzle"`.
import { randomBytes, randomUUID, scrypt, timingSafeEqual, type BinaryLike } from "node:crypto";
import { and, desc, eq, isNull, sql } from "drizzle-orm";
import { pgTable, text, timestamp } from "drizzle-orm/pg-core";
import type { AnyPgDatabase } from "connect-drizzle";

export const users = pgTable("users", {
  id: text("id").primaryKey(),
  email: text("email").notNull().unique(),
  passwordHash: text("password_hash").notNull(),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
});

/** One sign-in of a user from a device none of their sessions used before, until they dismiss it. */
export const signInNotices = pgTable("sign_in_notices", {
  id: text("id").primaryKey(),
  userId: text("user_id")
    .notNull()
    .references(() => users.id, { onDelete: "cascade" }),
  /** The handle of the session that signed in (as `store.list` shows it), never its id. */
  sessionHandle: text("session_handle").notNull(),
  device: text("device"),
  ip: text("ip"),
  createdAt: timestamp("created_at", { withTimezone: true }).notNull().defaultNow(),
  dismissedAt: timestamp("dismissed_at", { withTimezone: true }),
});

export interface User {
  id: string;
  email: string;
}

export type SignInNotice = Pick<typeof signInNotices.$inferSelect, "id" | "sessionHandle" | "device" | "ip" | "createdAt">;

export async function createTables(db: AnyPgDatabase): Promise<void> {
  await db.execute(sql`create table if not exists users (
    id text primary key,
    email text not null unique,
    password_hash text not null,
    created_at timestamptz not null default now()
  )`);
  await db.execute(sql`create table if not exists sign_in_notices (
    id text primary key,
    user_id text not null references users (id) on delete cascade,
    session_handle text not null,
    device text,
    ip text,
    created_at timestamptz not null default now(),
    dismissed_at timestamptz
  )`);
  await db.execute(sql`create index if not exists sign_in_notices_unread on sign_in_notices (user_id, created_at) where dismissed_at is null`);
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

export async function addSignInNotice(
  db: AnyPgDatabase,
  notice: { userId: string; sessionHandle: string; device: string | null; ip: string | null },
): Promise<void> {
  await db.insert(signInNotices).values({ id: randomUUID(), ...notice });
}

/** The user's notices not yet dismissed, newest first. */
export async function unreadSignInNotices(db: AnyPgDatabase, userId: string, limit = 10): Promise<SignInNotice[]> {
  return db
    .select({
      id: signInNotices.id,
      sessionHandle: signInNotices.sessionHandle,
      device: signInNotices.device,
      ip: signInNotices.ip,
      createdAt: signInNotices.createdAt,
    })
    .from(signInNotices)
    .where(and(eq(signInNotices.userId, userId), isNull(signInNotices.dismissedAt)))
    .orderBy(desc(signInNotices.createdAt))
    .limit(limit);
}

/** Dismisses one of this user's notices; another user's id (or an unknown one) changes nothing. */
export async function dismissSignInNotice(db: AnyPgDatabase, userId: string, id: string): Promise<boolean> {
  const rows = await db
    .update(signInNotices)
    .set({ dismissedAt: sql`now()` })
    .where(and(eq(signInNotices.id, id), eq(signInNotices.userId, userId), isNull(signInNotices.dismissedAt)))
    .returning({ id: signInNotices.id });
  return rows.length > 0;
}

// Passwords: scrypt with a random salt, stored as "scrypt$<salt>$<hash>" (hex).
const KEY_LENGTH = 64;
const DUMMY_HASH = `scrypt$${"00".repeat(16)}$${"00".repeat(KEY_LENGTH)}`;

function scryptAsync(password: BinaryLike, salt: BinaryLike): Promise<Buffer> {
  return new Promise((resolve, reject) => scrypt(password, salt, KEY_LENGTH, (err, key) => (err ? reject(err) : resolve(key))));
}

async function hashPassword(password: string): Promise<string> {
  const salt = randomBytes(16);
  const key = await scryptAsync(password.normalize("NFKC"), salt);
  return `scrypt$${salt.toString("hex")}$${key.toString("hex")}`;
}

async function checkPassword(password: string, stored: string): Promise<boolean> {
  const [scheme, saltHex, keyHex] = stored.split("$");
  if (scheme !== "scrypt" || !saltHex || !keyHex) return false;
  const expected = Buffer.from(keyHex, "hex");
  const actual = await scryptAsync(password.normalize("NFKC"), Buffer.from(saltHex, "hex"));
  return actual.length === expected.length && timingSafeEqual(actual, expected);
}
