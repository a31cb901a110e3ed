export {
  SessionStore,
  type EndReason,
  type ExtendOptions,
  type OwnerScope,
  type RevokeOptions,
  type SessionQuery,
  type SessionRecord,
  type SessionStatus,
} from "./store.js";
export type { AnyPgDatabase, SessionStoreOptions, UserIdOf } from "./options.js";
export { sessions, createSessionTable, type SessionTable, type SessionTableOptions } from "./schema.js";
export { SessionStoreError, type SessionStoreErrorCode } from "./errors.js";
export { reap, Reaper, type ReapArgs, type ReaperOptions, type ReapProgress, type ReapResult } from "./reaper.js";
export { sessionMiddleware, type IssuedToken, type SessionMiddleware, type SessionMiddlewareOptions } from "./middleware.js";
