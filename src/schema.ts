import { sql } from "drizzle-orm";
import { checkOptions, is, type OptionChecks } from "./check.js";
import { END_REASONS } from "./reasons.js";
import type { $Type, HasDefault, IsPrimaryKey, NotNull } from "drizzle-orm";
import {
  bigint,
  check,
  getTableConfig,
  index,
  integer,
  jsonb,
  pgSchema,
  pgTable,
  text,
  timestamp,
  uniqueIndex,
  uuid,
  PgDialect,
  type AnyPgColumn,
} from "drizzle-orm/pg-core";

/** The SQL type of the `user_id` column: the type of your users' primary key. */
export type UserIdType = "text" | "integer" | "bigint" | "uuid";

/** What deleting a referenced user does to the rows that reference it (Postgres's referential actions). */
export type UpdateDeleteAction = "cascade" | "restrict" | "no action" | "set null" | "set default";

// Column builder types are taken from the column functions of the drizzle-orm the app has installed
// (ReturnType of `text`, `integer`, ...), not named: drizzle-orm 1.0 renamed them (PgTextBuilderInitial is
// PgTextBuilder there), and these declarations are the same for 0.44, 0.45 and 1.0.
type Text = ReturnType<typeof text>;
type Instant = ReturnType<typeof timestamp>;
type Integer = ReturnType<typeof integer>;

/** The drizzle column builder of `user_id` for each {@link UserIdType} (`bigint` in drizzle's `mode: "number"`). */
export interface UserIdColumnBuilders {
  text: Text;
  integer: Integer;
  bigint: $Type<ReturnType<typeof bigint>, number>;
  uuid: ReturnType<typeof uuid>;
}

/** The column builders of a sessions table whose `user_id` is of type `T`. */
export type SessionColumns<T extends UserIdType = "text"> = {
  key: IsPrimaryKey<NotNull<Text>>;
  handle: NotNull<Text>;
  userId: UserIdColumnBuilders[T];
  data: NotNull<ReturnType<typeof jsonb>>;
  expiresAt: NotNull<Instant>;
  absoluteExpiresAt: Instant;
  createdAt: HasDefault<NotNull<Instant>>;
  lastSeenAt: HasDefault<NotNull<Instant>>;
  label: Text;
  userAgent: Text;
  ip: Text;
  endedAt: Instant;
  endReason: Text;
  version: HasDefault<NotNull<Integer>>;
  authenticatedAt: Instant;
  previousKeys: ReturnType<typeof jsonb>;
  rotatedAt: Instant;
};

/**
 * The sessions table of a {@link SessionStore}, as built by {@link createSessionTable}, whose `user_id` is
 * of type `T`. Without `T`: any sessions table (what `new SessionStore({ table })` accepts).
 */
export type SessionTable<T extends UserIdType = UserIdType> = T extends UserIdType ? ReturnType<typeof pgTable<string, SessionColumns<T>>> : never;

const instant = (name: string) => timestamp(name, { withTimezone: true, precision: 3, mode: "date" });

function userIdColumn(options: SessionTableOptions<UserIdType>) {
  const type = options.userIdType ?? "text";
  // `userIdType` is one of the four (TABLE_OPTIONS).
  const column =
    type === "integer" ? integer("user_id") : type === "bigint" ? bigint("user_id", { mode: "number" }) : type === "uuid" ? uuid("user_id") : text("user_id");
  if (options.references === undefined) return column;
  return column.references(options.references, { onDelete: options.onDelete ?? "cascade" });
}

function sessionColumns(options: SessionTableOptions<UserIdType>) {
  return {
    /** Keyed hash of the session id (SHA-256, or HMAC-SHA-256 with `secrets`), base64url. The plain id is never stored. */
    key: text("key").primaryKey(),
    /** Random public identifier of the session, safe to show in a page or URL; stable for the session's life. */
    handle: text("handle").notNull(),
    /** Owner, found in the session data by the store's `userId` option. */
    userId: userIdColumn(options),
    /** The express-session data, cookie included. Emptied when the session ends. */
    data: jsonb("data").notNull(),
    /** Idle expiry: renewed by activity (rolling cookie, touch, `idleTimeout`). */
    expiresAt: instant("expires_at").notNull(),
    /** Absolute expiry: fixed at creation from `absoluteTimeout`, never renewed. Null when unset. */
    absoluteExpiresAt: instant("absolute_expires_at"),
    createdAt: instant("created_at").notNull().defaultNow(),
    lastSeenAt: instant("last_seen_at").notNull().defaultNow(),
    /** A name for the session shown in listings ("CLI token", "Work laptop"), from the store's `label` option. */
    label: text("label"),
    userAgent: text("user_agent"),
    ip: text("ip"),
    /**
     * Set when the session ends (logout, revoked, expired, rotated) with `retainEnded`: the row is then a
     * record kept for history (without it the row is deleted).
     */
    endedAt: instant("ended_at"),
    /** Why it ended: one of END_REASONS (a CHECK constraint, `<table>_end_reason_check`, refuses others). */
    endReason: text("end_reason"),
    /** Incremented on every write; lets a save detect a concurrent change. */
    version: integer("version").notNull().default(1),
    /**
     * When the user last proved who they are in this session (the database's clock): set by the write
     * that gave the session its user (a login) and by `store.markAuthenticated` (a password re-entry, a
     * WebAuthn assertion); kept by every other write. Null for an anonymous session. What
     * `store.requireRecentLogin` checks.
     */
    authenticatedAt: instant("authenticated_at"),
    /**
     * Every key the session was rotated away from (`rotateSession`, a re-authentication, `renewAfter`), each
     * with the end of its grace window (`{ "<key>": "<timestamptz>" }`): an old id opens the session until
     * then, and ends it as `reused` after. Null for a session never rotated.
     */
    previousKeys: jsonb("previous_keys"),
    /** When the session got its current id: its latest rotation; null when it still has the id it was created with. */
    rotatedAt: instant("rotated_at"),
  };
}

/** The reasons as SQL literals: DDL takes no parameters, and the list is ours, never input. */
const endReasonList = sql.raw(END_REASONS.map((reason) => `'${reason}'`).join(", "));

function sessionIndexes(name: string) {
  return (t: { handle: any; userId: any; lastSeenAt: any; expiresAt: any; endedAt: any; endReason: any; previousKeys: any }) => [
    uniqueIndex(`${name}_handle_idx`).on(t.handle),
    // The old ids of rotated sessions (`?|`): as small as the sessions rotated. Without a pending list
    // (fastupdate): every lookup of an unknown id reads the index, and would read that whole list, which
    // each update of a rotated session (a touch, a save) grows until the next VACUUM.
    index(`${name}_previous_keys_idx`).using("gin", t.previousKeys).with({ fastupdate: false }).where(sql`${t.previousKeys} is not null`),
    index(`${name}_user_idx`).on(t.userId, t.lastSeenAt.desc()).where(sql`${t.userId} is not null`),
    index(`${name}_expires_idx`).on(t.expiresAt),
    index(`${name}_ended_idx`).on(t.endedAt).where(sql`${t.endedAt} is not null`),
    // The database refuses a reason outside the list, whoever writes it (a raw update, another client).
    check(`${name}_end_reason_check`, sql`${t.endReason} in (${endReasonList})`),
  ];
}

/** Options of {@link createSessionTable}. */
export interface SessionTableOptions<T extends UserIdType = "text"> {
  /**
   * Postgres schema (namespace) that holds the table.
   * @default undefined (the connection's search_path, normally `public`)
   */
  schema?: string;
  /**
   * The SQL type of `user_id`: the type of your users' id, so that it can reference it (`references`).
   * The store's `userId` option then returns ids of that type (a number, a bigint, or a uuid string in
   * its canonical 8-4-4-4-12 form, any case): one that does not fit fails the save with a
   * `SessionStoreError` of code `INVALID_USER_ID`. `bigint` is drizzle's `mode: "number"` in your own queries.
   * @default "text"
   */
  userIdType?: T;
  /**
   * Makes `user_id` a foreign key to your users' id, e.g. `() => users.id`, so deleting a user ends their
   * sessions (with `onDelete: "cascade"`).
   * @default undefined (no foreign key)
   */
  references?: () => AnyPgColumn;
  /**
   * What deleting (the id of) a referenced user does to their sessions; only with `references`.
   * A delete by the database sends no NOTIFY, so the store's read cache (`cache`) refuses a table with
   * `"cascade"`: use `"set null"` and `await store.revokeUser(id)` before deleting the user there.
   * @default "cascade" (their session rows are deleted)
   */
  onDelete?: UpdateDeleteAction;
}

/** The referential actions of `onDelete`. */
const UPDATE_DELETE_ACTIONS: readonly UpdateDeleteAction[] = ["cascade", "restrict", "no action", "set null", "set default"];

/** Every option of {@link SessionTableOptions} with its check. */
export const TABLE_OPTIONS: OptionChecks<SessionTableOptions<UserIdType>> = {
  schema: is.name("Postgres schema name"),
  userIdType: is.oneOf(["text", "integer", "bigint", "uuid"] satisfies UserIdType[]),
  references: is.function("returning your users' id column, e.g. () => users.id"),
  onDelete: is.oneOf(UPDATE_DELETE_ACTIONS),
};

/**
 * Builds the sessions table under a custom name and/or Postgres schema, optionally with a `user_id` of
 * your users' id type referencing them. Import the result into your own drizzle schema so drizzle-kit
 * generates it, and pass it to `new SessionStore({ table })`.
 *
 * @example
 * export const authSessions = createSessionTable("auth_sessions", { schema: "auth" });
 * export const sessions = createSessionTable("sessions", { userIdType: "integer", references: () => users.id });
 */
export function createSessionTable<T extends UserIdType = "text">(name: string, options: SessionTableOptions<T> = {}): SessionTable<T> {
  if (typeof name !== "string" || name.length === 0) {
    throw new TypeError("connect-drizzle: createSessionTable needs a non-empty table name");
  }
  if (options === null || typeof options !== "object") {
    throw new TypeError('connect-drizzle: createSessionTable(name, options) takes an options object such as { schema: "auth" }');
  }
  checkOptions(options, TABLE_OPTIONS, "createSessionTable");
  const columns = sessionColumns(options);
  const table = options.schema ? pgSchema(options.schema).table(name, columns, sessionIndexes(name)) : pgTable(name, columns, sessionIndexes(name));
  // The column of `user_id` is chosen at run time from `userIdType`; SessionTable<T> names the one it is.
  return table as unknown as SessionTable<T>;
}

/** The default table, `sessions`, created by the migrations in `drizzle/`. */
export const sessions: SessionTable<"text"> = createSessionTable("sessions");

/**
 * The foreign keys by which the database deletes session rows itself (`on delete cascade`), as
 * `user_id -> "users"`: such ends happen without the store, so they send no NOTIFY.
 */
export function deletedByDatabase(table: SessionTable): string[] {
  return getTableConfig(table)
    .foreignKeys.filter((fk) => fk.onDelete === "cascade")
    .map((fk) => {
      const { columns, foreignTable } = fk.reference();
      return `${columns.map((c) => c.name).join(", ")} -> "${getTableConfig(foreignTable).name}"`;
    });
}

/**
 * A table's name as SQL writes it: schema-qualified when it has a schema, each part in double quotes
 * (a quote inside doubled). What messages name the table by, and what `to_regclass` reads.
 */
export function quotedName(schema: string | undefined, name: string): string {
  const quote = (part: string) => `"${part.replaceAll('"', '""')}"`;
  return schema === undefined ? quote(name) : `${quote(schema)}.${quote(name)}`;
}

/**
 * Whether the installed drizzle-orm writes the table's name in its queries as Postgres reads it
 * ({@link quotedName}): drizzle-orm before 0.45 leaves a double quote inside a name undoubled, so every
 * query it builds on such a table is a syntax error.
 */
export function drizzleWritesName(table: SessionTable): boolean {
  return new PgDialect().sqlToQuery(sql`${table}`).sql === qualifiedName(table);
}

/** {@link quotedName} of a drizzle table. */
export function qualifiedName(table: SessionTable): string {
  const config = getTableConfig(table);
  return quotedName(config.schema, config.name);
}
