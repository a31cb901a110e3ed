import { join } from "node:path";
import { drizzle } from "drizzle-orm/node-postgres";
import ts from "typescript";
import { describe, expect, it } from "vitest";
import { MIDDLEWARE_OPTIONS } from "../src/middleware.js";
import { CACHE_OPTIONS, ENCRYPT_OPTIONS, REAPER_OPTIONS, resolveOptions, resolveReaperOptions, STORE_OPTIONS } from "../src/options.js";
import { REAP_ARGS } from "../src/reaper.js";
import { reap, SessionStore, sessionMiddleware } from "../src/index.js";

// A database that is never queried: constructing a store and resolving options send no statement.
const db = drizzle.mock();
const root = join(import.meta.dirname, "..");

let program: ts.Program | undefined;

/** The property names of an exported interface, as the compiler sees them (inherited ones included). */
function interfaceKeys(file: string, name: string): string[] {
  const path = join(root, file);
  program ??= ts.createProgram([join(root, "src/index.ts")], {
    strict: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    skipLibCheck: true,
    noEmit: true,
  });
  const checker = program.getTypeChecker();
  const declaration = program
    .getSourceFile(path)!
    .statements.find((s): s is ts.InterfaceDeclaration => ts.isInterfaceDeclaration(s) && s.name.text === name);
  if (!declaration) throw new Error(`no interface ${name} in ${file}`);
  return checker
    .getPropertiesOfType(checker.getTypeAtLocation(declaration.name))
    .map((p) => p.name)
    .sort();
}

describe("unknown options", () => {
  it.each([
    ["SessionStoreOptions", "src/options.ts", STORE_OPTIONS],
    ["CacheOptions", "src/options.ts", CACHE_OPTIONS],
    ["EncryptOptions", "src/options.ts", ENCRYPT_OPTIONS],
    ["ReaperOptions", "src/options.ts", REAPER_OPTIONS],
    ["ReapArgs", "src/reaper.ts", REAP_ARGS],
    // Ours plus every option express-session documents (its SessionOptions), which are passed through.
    ["SessionMiddlewareOptions", "src/middleware.ts", MIDDLEWARE_OPTIONS],
  ])("the known keys are exactly those of the documented %s interface", (name, file, known) => {
    expect(Object.keys(known).sort()).toEqual(interfaceKeys(file, name));
  });

  it("every documented store option is accepted, and each one misspelt is refused with it suggested", () => {
    for (const key of Object.keys(STORE_OPTIONS).filter((k) => k !== "db")) {
      expect(() => resolveOptions({ db, [key]: undefined }), key).not.toThrow();
      const misspelt = key.slice(0, -1) + (key.endsWith("x") ? "y" : "x");
      expect(() => resolveOptions({ db, [misspelt]: undefined } as any), misspelt).toThrow(
        new RegExp(`^connect-drizzle: unknown SessionStore option \`${misspelt}\` \\(did you mean \`${key}\`\\?\\); the known options are db, table, secrets, `),
      );
    }
  });

  it("every documented reaper and cache option is accepted", () => {
    for (const key of Object.keys(REAPER_OPTIONS)) expect(() => resolveReaperOptions({ [key]: undefined }), key).not.toThrow();
    for (const key of Object.keys(CACHE_OPTIONS)) expect(() => resolveOptions({ db, cache: { [key]: undefined } }), key).not.toThrow();
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    ["a store option", { reapr: false }, /unknown SessionStore option `reapr` \(did you mean `reaper`\?\); the known options are db, table, .*reaper, prepare$/],
    ["a store option in another case", { idletimeout: 60_000 }, /`idletimeout` \(did you mean `idleTimeout`\?\)/],
    ["a swapped pair of letters", { absoluteTiemout: 60_000 }, /`absoluteTiemout` \(did you mean `absoluteTimeout`\?\)/],
    ["a reaper option", { reaper: { intreval: 60_000 } }, /unknown `reaper` option `intreval` \(did you mean `interval`\?\); the known options are interval, batchSize, jitter$/],
    ["a cache option", { cache: { maxx: 100 } }, /unknown `cache` option `maxx` \(did you mean `max`\?\); the known options are max, ttl$/],
    ["something unlike any option", { pool: {} }, /unknown SessionStore option `pool`; the known options are/],
  ])("new SessionStore with %s misspelt is a TypeError naming it and the known ones", (_, options, message) => {
    expect(() => new SessionStore({ db, ...options } as any)).toThrow(TypeError);
    expect(() => new SessionStore({ db, ...options } as any)).toThrow(message);
  });

  it("reap() refuses a misspelt argument before touching the database", async () => {
    await expect(reap({ db, batchsize: 100 } as any)).rejects.toThrow(
      /unknown reap\(\) option `batchsize` \(did you mean `batchSize`\?\); the known options are db, table, retainEnded, batchSize, signal, timeout, onBatch$/,
    );
  });

  it("sessionMiddleware refuses a misspelt option before express-session sees it", () => {
    const store = new SessionStore({ db, reaper: false });
    expect(() => sessionMiddleware({ store, secret: "s", rolling: true, cookies: {} } as any)).toThrow(/`cookies` \(did you mean `cookie`\?\)/);
  });
});
