import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { sql } from "drizzle-orm";
import { drizzle as drizzlePg } from "drizzle-orm/node-postgres";
import { drizzle as drizzlePglite } from "drizzle-orm/pglite";
import { drizzle as drizzlePgProxy } from "drizzle-orm/pg-proxy";
import { drizzle as drizzlePostgresJs } from "drizzle-orm/postgres-js";
import pg from "pg";
import postgres from "postgres";
import { afterAll, describe, expect, it } from "vitest";
import { migrate, migrationsFolder, SessionStore, SessionStoreError, type AnyPgDatabase } from "../src/index.js";
import { rowsOf } from "./support/internals.js";
import { DATABASE_URL, drivers, drizzleMajor, sessionData, type DriverName } from "./support/db.js";

const root = join(import.meta.dirname, "..");
const journal = JSON.parse(readFileSync(join(root, "drizzle/meta/_journal.json"), "utf8"));

describe("shipped migrations", () => {
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  // drizzle-kit 0.31 refuses to run next to drizzle-orm 1.0 ("This version of drizzle-kit is outdated"); the
  // SQL comes from src/schema.ts alone, so the runs on drizzle-orm 0.44 and 0.45 check it.
  it.skipIf(drizzleMajor >= 1)("match src/schema.ts: drizzle-kit generates nothing new from the schema", () => {
    const out = mkdtempSync(join(tmpdir(), "cd-drift-"));
    dirs.push(out);
    cpSync(join(root, "drizzle"), out, { recursive: true });
    const before = readdirSync(out).sort();
    const log = execFileSync(
      join(root, "node_modules/.bin/drizzle-kit"),
      ["generate", "--dialect", "postgresql", "--schema", "./src/schema.ts", "--out", relative(root, out)],
      { cwd: root, encoding: "utf8" },
    );
    expect(readdirSync(out).sort(), `drizzle-kit found schema changes; run npm run generate\n${log}`).toEqual(before);
    expect(log).toMatch(/No schema changes/);
  });

  it("are the same SQL in drizzle-orm 1.0's layout (drizzle/v1), one folder per journal entry, named as drizzle-kit up names it", () => {
    const expected = journal.entries.map((entry: { when: number; tag: string }) => {
      const stamp = new Date(entry.when).toISOString().replace(/[-:T]/g, "").slice(0, 14);
      return { folder: `${stamp}_${entry.tag.replace(/^\d+_/, "")}`, sql: readFileSync(join(root, "drizzle", `${entry.tag}.sql`), "utf8") };
    });
    const v1 = join(root, "drizzle/v1");
    const actual = readdirSync(v1)
      .sort()
      .map((folder) => ({ folder, sql: readFileSync(join(v1, folder, "migration.sql"), "utf8") }));
    expect(actual).toEqual(expected);
  });

  it("migrationsFolder is the package's drizzle/ folder, as an absolute path", () => {
    expect(migrationsFolder).toBe(join(root, "drizzle"));
  });
});

/** A database on `driver` whose connection's search_path is a fresh schema, so the table lands there. */
async function openFresh(driver: DriverName): Promise<{ db: AnyPgDatabase; schema: string; close: () => Promise<void> }> {
  const schema = `m_${process.pid}_${Date.now().toString(36)}_${driver.replace(/\W/g, "")}`;
  if (driver === "pglite") {
    const client = new PGlite();
    return { db: drizzlePglite({ client }), schema: "public", close: () => client.close() };
  }
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  await admin.query(`create schema "${schema}"`);
  const drop = async () => {
    await admin.query(`drop schema "${schema}" cascade`).catch(() => {});
    await admin.end();
  };
  if (driver === "node-postgres") {
    const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 2, options: `-c search_path=${schema}` });
    return { db: drizzlePg({ client: pool }), schema, close: async () => (await pool.end(), await drop()) };
  }
  const client = postgres(DATABASE_URL!, { max: 2, onnotice: () => {}, connection: { search_path: schema } });
  return { db: drizzlePostgresJs({ client }), schema, close: async () => (await client.end({ timeout: 5 }), await drop()) };
}

describe.each(drivers)("migrate(db) on %s", (driver) => {
  it("creates the sessions table, and running it again (every start) is a no-op; the store works on it", async () => {
    const { db, schema, close } = await openFresh(driver);
    try {
      // On a server the migrations journal goes in the test's own schema too, so parallel runs never share it.
      const options = driver === "pglite" ? {} : { migrationsSchema: schema };
      await migrate(db, options);
      await migrate(db, options);
      const journalSchema = driver === "pglite" ? "drizzle" : schema;
      const applied = rowsOf(await db.execute(sql.raw(`select hash from "${journalSchema}"."__connect_drizzle_migrations"`)));
      expect(applied).toHaveLength(journal.entries.length);
      const store = new SessionStore({ db, reaper: false });
      await store.set("sid", sessionData(60_000, { ok: 1 }));
      expect(((await store.get("sid")) as any).ok).toBe(1);
      await store.close();
    } finally {
      await close();
    }
  });
});

describe.each(drivers)("the end_reason check (migration 0002) on %s", (driver) => {
  it("applies to a table that already holds live sessions and ended ones of every reason, and then refuses others", async () => {
    const { db, close } = await openFresh(driver);
    const run = async (text: string) => rowsOf(await db.execute(sql.raw(text)));
    const script = (tags: string[]) => tags.flatMap((tag) => readFileSync(join(root, "drizzle", `${tag}.sql`), "utf8").split("--> statement-breakpoint"));
    try {
      const tags: string[] = journal.entries.map((entry: { tag: string }) => entry.tag);
      const at = tags.indexOf("0002_end_reason_check");
      expect(at).toBeGreaterThan(0);
      // The table as the migrations before the check left it, with rows in it.
      for (const statement of script(tags.slice(0, at))) await run(statement);
      const reasons = ["logout", "revoked", "expired", "rotated", "evicted"];
      const rows = [null, ...reasons].map(
        (reason, i) => `('k${i}', 'h${i}', '{}'::jsonb, now() + interval '1 hour', ${reason === null ? "null, null" : `now(), '${reason}'`})`,
      );
      await run(`insert into sessions (key, handle, data, expires_at, ended_at, end_reason) values ${rows.join(", ")}`);
      for (const statement of script(tags.slice(at))) await run(statement);
      const kept = await run(`select end_reason from sessions order by key`);
      expect(kept.map((row: any) => row.end_reason)).toEqual([null, ...reasons]);
      const refused = await run(`update sessions set end_reason = 'password-changed' where key = 'k0'`).then(
        () => undefined,
        (error: any) => error,
      );
      expect(refused?.code ?? refused?.cause?.code).toBe("23514");
    } finally {
      await close();
    }
  });
});

describe("migrate(db) refuses", () => {
  it("what is not a drizzle Postgres database, saying what to pass", async () => {
    await expect(migrate({} as AnyPgDatabase)).rejects.toThrow(/^connect-drizzle: migrate\(db\) needs a drizzle Postgres database/);
  });

  it("a driver it has no migrator for, naming the driver and what to run instead", async () => {
    const proxy = drizzlePgProxy(async () => ({ rows: [] }));
    await expect(migrate(proxy)).rejects.toThrow(/^connect-drizzle: migrate\(db\) knows the migrators of .*, not of PgRemoteDatabase; .*migrationsFolder/);
  });

  it("fails, when the database refuses a migration, with what it said and what to do: never drizzle's 'Failed query' with its SQL", async () => {
    const client = new PGlite();
    try {
      // A user who may not create the migrations' schema: what a least-privileged app user meets.
      await client.exec("create role app_user; set role app_user");
      const failure = await migrate(drizzlePglite({ client })).catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(SessionStoreError);
      expect((failure as SessionStoreError).code).toBe("DATABASE");
      expect((failure as Error).message).toMatch(
        /^connect-drizzle: the migrations failed: permission denied .*\(42501\); .*run the migrations once as the database's owner/,
      );
      expect((failure as Error).message).not.toMatch(/Failed query|CREATE SCHEMA/);
    } finally {
      await client.close();
    }
  });
});
