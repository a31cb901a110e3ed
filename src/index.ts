export { SessionStore } from "./store.js";
export type { RequireRecentLoginOptions } from "./reauth.js";
export type { BindingChangedEvent, LifecycleEvents, SessionEndedEvent, SessionEvent, SessionStoreEvents, SessionStoreListener } from "./events.js";
export type { TraceContext } from "./trace.js";
export { describeDevice } from "./device.js";
export type { EndReason, ExtendOptions, OwnerScope, RevokeOptions, SessionQuery, SessionRecord, SessionStatus, UserId } from "./records.js";
export type {
  AnyPgDatabase,
  CacheOptions,
  EncryptOptions,
  ReaperOptions,
  ReplicaReadOptions,
  SessionCapOptions,
  SessionStoreOptions,
  UserIdOf,
} from "./options.js";
export type { ReplicaStats } from "./replicas.js";
export { AAL2, AAL3 } from "./presets.js";
export {
  sessions,
  createSessionTable,
  type SessionColumns,
  type SessionTable,
  type SessionTableOptions,
  type UserIdColumnBuilders,
  type UserIdType,
} from "./schema.js";
export { SessionStoreError, type SessionStoreErrorCode } from "./errors.js";
export { reap, Reaper, type ReapArgs, type ReapProgress, type ReapResult } from "./reaper.js";
export { sessionMiddleware, type IssuedToken, type SessionMiddleware, type SessionMiddlewareOptions } from "./middleware.js";
export type { ClearSiteDataDirective } from "./clear-site-data.js";
export { importConnectPgSimple, IMPORTED_COLUMN, type ImportConnectPgSimpleArgs, type ImportResult, type InvalidReasons } from "./import.js";
export { migrate, migrationsFolder, type MigrateOptions } from "./migrations.js";
export { rotateSession } from "./rotation.js";
