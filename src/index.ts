export { SessionStore } from "./store.js";
export type { EndReason, ExtendOptions, OwnerScope, RevokeOptions, SessionQuery, SessionRecord, SessionStatus } from "./records.js";
export type { AnyPgDatabase, CacheOptions, ReaperOptions, SessionStoreOptions, UserIdOf } from "./options.js";
export { sessions, createSessionTable, type SessionTable, type SessionTableOptions } from "./schema.js";
export { SessionStoreError, type SessionStoreErrorCode } from "./errors.js";
export { reap, Reaper, type ReapArgs, type ReapProgress, type ReapResult } from "./reaper.js";
export { sessionMiddleware, type IssuedToken, type SessionMiddleware, type SessionMiddlewareOptions } from "./middleware.js";
export { migrate, migrationsFolder, type MigrateOptions } from "./migrations.js";
