import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
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

  it("src/ has no import cycle (a cycle changes module init order in CommonJS builds and bundlers)", () => {
    const dir = join(root, "src");
    const imports = new Map(
      readdirSync(dir)
        .filter((f) => f.endsWith(".ts"))
        .map((f) => [f.slice(0, -3), [...readFileSync(join(dir, f), "utf8").matchAll(/from "\.\/([\w-]+)\.js"/g)].map((m) => m[1]!)]),
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
});
