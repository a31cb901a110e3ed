import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..");
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));

describe("published package", () => {
  beforeAll(() => {
    execFileSync("npm", ["run", "build", "--silent"], { cwd: root, stdio: "pipe" });
  }, 120_000);

  it("loads from ESM and CommonJS, each with its own types", async () => {
    const esm = await import(pathToFileURL(join(root, pkg.exports["."].import.default)).href);
    const cjs = createRequire(import.meta.url)(join(root, pkg.exports["."].require.default));
    for (const mod of [esm, cjs]) {
      expect(typeof mod.SessionStore).toBe("function");
      expect(typeof mod.createSessionTable).toBe("function");
      expect(mod.sessions).toBeDefined();
    }
    expect(existsSync(join(root, pkg.exports["."].import.types))).toBe(true);
    expect(existsSync(join(root, pkg.exports["."].require.types))).toBe(true);
  });

  it("ships only the build and the migrations, with drizzle-orm and express-session as peers (pg optional, for the CLI)", () => {
    expect(pkg.files).toEqual(["dist", "drizzle"]);
    expect(Object.keys(pkg.peerDependencies).sort()).toEqual(["drizzle-orm", "express-session", "pg"]);
    expect(pkg.peerDependenciesMeta).toEqual({ pg: { optional: true } });
    expect(pkg.dependencies ?? {}).toEqual({});
    const bundle = readFileSync(join(root, pkg.exports["."].import.default), "utf8");
    expect(bundle).not.toMatch(/from ["'](pg|postgres|@electric-sql\/pglite)["']/);
  });

  it("installs the `connect-drizzle` command (the cron reaper), runnable by node", () => {
    const cli = join(root, pkg.bin["connect-drizzle"]);
    expect(readFileSync(cli, "utf8").startsWith("#!/usr/bin/env node")).toBe(true);
    const help = execFileSync("node", [cli, "--help"], { encoding: "utf8" });
    expect(help).toMatch(/reap/);
  });

  it("says where it lives and what it needs: repository, homepage, bugs, and the Node version the CLI's parseArgs needs", () => {
    expect(pkg.repository?.url).toMatch(/^git\+https:\/\/.+\.git$/);
    expect(pkg.homepage).toMatch(/^https:\/\//);
    expect(pkg.bugs?.url).toMatch(/^https:\/\//);
    // util.parseArgs (src/cli.ts) arrived in Node 18.3.
    expect(pkg.engines).toEqual({ node: ">=18.3" });
  });

  it("packs no empty declaration file: the CLI is a command, not an import", () => {
    const packed = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8" }));
    const files: { path: string; size: number }[] = packed[0].files;
    const declarations = files.filter((f) => /\.d\.c?ts$/.test(f.path));
    expect(declarations.map((f) => f.path).sort()).toEqual(["dist/index.d.cts", "dist/index.d.ts"]);
    for (const f of declarations) expect(f.size).toBeGreaterThan(1_000);
  });

  it("packs the build and nothing unused: no source maps (they would point at unshipped sources), one ESM CLI, and npm pack builds first", () => {
    expect(pkg.scripts.prepack).toBe("npm run build");
    const packed = JSON.parse(execFileSync("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], { cwd: root, encoding: "utf8" }));
    const files: string[] = packed[0].files.map((f: { path: string }) => f.path);
    expect(files.filter((f) => f.endsWith(".map"))).toEqual([]);
    expect(files.filter((f) => /^dist\/cli\./.test(f))).toEqual(["dist/cli.js"]);
    expect(files).toEqual(
      expect.arrayContaining(["dist/index.js", "dist/index.cjs", "dist/index.d.ts", "dist/index.d.cts", "package.json", "README.md", "LICENSE"]),
    );
  });

  it("publishes no internals in its types: what is @internal (the store's seams for its own modules) is stripped", () => {
    const types = readFileSync(join(root, pkg.exports["."].import.types), "utf8");
    expect(types).not.toMatch(/@internal/);
    expect(types).not.toMatch(/\bmint\(|\bkeysOf\b|\bmergeValues\(/);
    // What users call is still there.
    expect(types).toMatch(/\brequireRecentLogin</);
  });

  it("src/ has no import cycle (a cycle changes module init order in CommonJS builds and bundlers)", () => {
    // What a module loads when it runs: its imports and re-exports, not its `import type` (erased when built).
    const loads = /^(?:import(?! type\b)|export)\b[^;]*?from "(\.{1,2}\/[\w./-]+)\.js"/gm;
    const imports = new Map(
      sources("src").map((file) => [file, [...readFileSync(join(root, file), "utf8").matchAll(loads)].map((m) => join(dirname(file), `${m[1]!}.ts`))]),
    );
    const cycles: string[] = [];
    const visit = (name: string, path: string[]) => {
      for (const next of imports.get(name) ?? []) {
        if (path.includes(next)) cycles.push([...path.slice(path.indexOf(next)), next].join(" -> "));
        else visit(next, [...path, next]);
      }
    };
    for (const name of imports.keys()) visit(name, [name]);
    expect(cycles).toEqual([]);
  });

  it("tests reach src/ only through the public API (src/index.ts) and the one seam (test/support/internals.ts), so a file split breaks no test", () => {
    const reaches = /(?:from|import\()\s*"((?:\.\.\/)+src\/[\w./-]+)"/g;
    const outside = sources("test")
      .filter((file) => file !== join("test", "support", "internals.ts"))
      .flatMap((file) => [...readFileSync(join(root, file), "utf8").matchAll(reaches)].map((m) => join(dirname(file), m[1]!)))
      .filter((target) => target !== join("src", "index.js"));
    expect(outside).toEqual([]);
  });

  it("finds its migrations from its own location in ESM and CommonJS, whatever the working directory, and exports the folder", () => {
    const elsewhere = mkdtempSync(join(tmpdir(), "cd-cwd-"));
    try {
      const esm = pathToFileURL(join(root, pkg.exports["."].import.default)).href;
      const cjs = join(root, pkg.exports["."].require.default);
      const fromEsm = execFileSync("node", ["--input-type=module", "-e", `console.log((await import(${JSON.stringify(esm)})).migrationsFolder)`], {
        cwd: elsewhere,
        encoding: "utf8",
      });
      const fromCjs = execFileSync("node", ["-e", `console.log(require(${JSON.stringify(cjs)}).migrationsFolder)`], { cwd: elsewhere, encoding: "utf8" });
      expect(fromEsm.trim()).toBe(join(root, "drizzle"));
      expect(fromCjs.trim()).toBe(join(root, "drizzle"));
    } finally {
      rmSync(elsewhere, { recursive: true, force: true });
    }
    expect(existsSync(join(root, "drizzle/meta/_journal.json"))).toBe(true);
    expect(createRequire(join(root, "package.json")).resolve("connect-drizzle/drizzle/meta/_journal.json")).toBe(join(root, "drizzle/meta/_journal.json"));
  });

  it("migrate(db) from the CommonJS build, run from another directory, creates the table with drizzle's migrator", () => {
    const elsewhere = mkdtempSync(join(tmpdir(), "cd-cjs-"));
    try {
      const script = `
        const need = require("node:module").createRequire(${JSON.stringify(join(root, "package.json"))});
        const { migrate, SessionStore } = require(${JSON.stringify(join(root, pkg.exports["."].require.default))});
        const { PGlite } = need("@electric-sql/pglite");
        const { drizzle } = need("drizzle-orm/pglite");
        (async () => {
          const client = new PGlite();
          const db = drizzle({ client });
          await migrate(db);
          const store = new SessionStore({ db, reaper: false });
          await store.set("sid", { cookie: { originalMaxAge: 60000, expires: new Date(Date.now() + 60000).toISOString() }, ok: 1 });
          console.log(JSON.stringify((await store.get("sid")).ok));
          await store.close();
          await client.close();
        })().catch((error) => { console.error(error); process.exit(1); });`;
      expect(execFileSync("node", ["-e", script], { cwd: elsewhere, encoding: "utf8" }).trim()).toBe("1");
    } finally {
      rmSync(elsewhere, { recursive: true, force: true });
    }
  });

  it("accepts exactly the drizzle-orm versions .ci/drizzle-matrix tests: from each, up to the next minor line (1.x for 1.0)", () => {
    const script = readFileSync(join(root, ".ci/drizzle-matrix"), "utf8");
    const versions = script
      .match(/^VERSIONS=\(([^)]*)\)$/m)![1]!
      .trim()
      .split(/\s+/);
    expect(versions.length).toBeGreaterThan(0);
    const upTo = (version: string) => {
      const [major, minor] = version.split(".").map(Number) as [number, number];
      return major === 0 ? `0.${minor + 1}.0` : `${major + 1}`;
    };
    expect(pkg.peerDependencies["drizzle-orm"]).toBe(versions.map((v) => `>=${v} <${upTo(v)}`).join(" || "));
  });
});

/** The .ts files under a folder of the repository, as paths from its root. */
function sources(folder: string): string[] {
  return readdirSync(join(root, folder), { recursive: true, encoding: "utf8" })
    .filter((file) => file.endsWith(".ts") && !file.includes("node_modules"))
    .map((file) => join(folder, file));
}
