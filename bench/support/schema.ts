import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type pg from "pg";

const migrationsDir = join(import.meta.dirname, "..", "..", "drizzle");

/** connect-drizzle's shipped migrations, in order, as one script (as test/support/db.ts runs them). */
function migrationScript(): string {
  return readdirSync(migrationsDir)
    .filter((f) => f.endsWith(".sql"))
    .sort()
    .map((f) => readFileSync(join(migrationsDir, f), "utf8").replaceAll("--> statement-breakpoint", ""))
    .join(";\n");
}

/** The tables of one benchmark run, all in a schema of their own. */
export async function createBenchSchema(client: pg.Pool | pg.Client, schema: string): Promise<void> {
  await client.query(`
    create schema "${schema}";
    set search_path to "${schema}";
    ${migrationScript()};
    -- connect-pg-simple's table.sql
    create table "session" ("sid" varchar not null collate "default", "sess" json not null, "expire" timestamp(6) not null);
    alter table "session" add constraint "session_pkey" primary key ("sid") not deferrable initially immediate;
    create index "IDX_session_expire" on "session" ("expire");
    -- the raw-pg floor: the same essentials as connect-drizzle's table
    create table "floor_sessions" ("key" text primary key, "data" jsonb not null, "expires_at" timestamptz not null);
    create index "floor_sessions_expires_idx" on "floor_sessions" ("expires_at");
    reset search_path;
  `);
}

/** Empties every table of the run (between the store-level and HTTP phases). */
export async function truncateBenchSchema(client: pg.Pool | pg.Client, schema: string): Promise<void> {
  await client.query(`truncate "${schema}"."sessions", "${schema}"."session", "${schema}"."floor_sessions"`);
  await client.query(`vacuum analyze "${schema}"."sessions", "${schema}"."session", "${schema}"."floor_sessions"`);
}

export async function dropBenchSchema(client: pg.Pool | pg.Client, schema: string): Promise<void> {
  await client.query(`drop schema if exists "${schema}" cascade`);
}
