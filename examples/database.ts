// Opens the examples' database: Postgres when DATABASE_URL is set, embedded PGlite in a local folder
// otherwise, and applies connect-drizzle's migrations (a no-op when they already ran).
import { fileURLToPath } from "node:url";
import { migrate, type AnyPgDatabase } from "connect-drizzle";

export async function openDatabase(dataDir: URL): Promise<{ db: AnyPgDatabase; close: () => Promise<void> }> {
  const url = process.env.DATABASE_URL;
  if (url) {
    const { default: pg } = await import("pg");
    const { drizzle } = await import("drizzle-orm/node-postgres");
    const pool = new pg.Pool({ connectionString: url });
    const db = drizzle({ client: pool });
    await migrate(db);
    return { db, close: () => pool.end() };
  }
  const { PGlite } = await import("@electric-sql/pglite");
  const { drizzle } = await import("drizzle-orm/pglite");
  const client = new PGlite(fileURLToPath(dataDir));
  const db = drizzle({ client });
  await migrate(db);
  return { db, close: () => client.close() };
}
