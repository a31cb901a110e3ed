import { execFileSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { drizzle } from "drizzle-orm/pglite";
import { migrate } from "drizzle-orm/pglite/migrator";
import { afterAll, describe, expect, it } from "vitest";
import { SessionStore } from "../src/index.js";
import { sessionData } from "./support/db.js";

const root = join(import.meta.dirname, "..");

describe("shipped migrations", () => {
  const dirs: string[] = [];
  afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  it("match src/schema.ts: drizzle-kit generates nothing new from the schema", () => {
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

  it("apply with drizzle's migrator (as the README shows) and give a working store on the default table", async () => {
    const client = new PGlite();
    try {
      const db = drizzle({ client });
      await migrate(db, { migrationsFolder: join(root, "drizzle"), migrationsTable: "__connect_drizzle_migrations" });
      // Running them twice is a no-op, as it is on every app start.
      await migrate(db, { migrationsFolder: join(root, "drizzle"), migrationsTable: "__connect_drizzle_migrations" });
      const store = new SessionStore({ db });
      await store.set("sid", sessionData(60_000, { ok: 1 }));
      expect(((await store.get("sid")) as any).ok).toBe(1);
    } finally {
      await client.close();
    }
  });
});
