import { RecordStatements } from "./sql/records.js";

// What the rest of the store takes from the statements, named where it always was.
export { channelName, col, endedRow, insertRow, keyValues } from "./sql/fragments.js";
export type { EventRow, ExpiryRow, ListCursor, LoginRow, LoginWrite, RecordRow, SessionRow, SessionStatus } from "./sql/rows.js";

/**
 * Every SQL statement of the store for one sessions table, each written once through the drizzle table's
 * columns, in src/sql/: those files answer "what SQL does X send". One class built in layers, a file each:
 * the names and pieces every statement shares (sql/fragments.ts), the lookups of sessions by id
 * (sql/lookups.ts), the express-session contract's
 * statements with a login's writes and locks (sql/writes.ts), and the records API's (sql/records.ts). The
 * rows they return are declared in sql/rows.ts.
 */
export class Statements extends RecordStatements {}
