import { defineConfig, type Options } from "tsup";

const shared: Options = {
  target: "node18",
  // import.meta.url in the CommonJS build too (src/migrations.ts finds drizzle/ from its own location).
  shims: true,
  external: ["drizzle-orm", "express-session", "pg"],
  // No source maps: they would point at sources the package does not ship.
  sourcemap: false,
};

// `npm run build` empties dist/ first (the two builds run at once, so neither may clean it).
export default defineConfig([
  {
    ...shared,
    // ESM: the library and the CLI (package.json "bin", a command, not an import), sharing one chunk.
    entry: ["src/index.ts", "src/cli.ts"],
    format: ["esm"],
    splitting: true,
    // stripInternal: what is marked @internal (the store's seams for its own modules) stays out of the published types.
    dts: { entry: "src/index.ts", compilerOptions: { stripInternal: true } },
  },
  {
    ...shared,
    entry: ["src/index.ts"],
    format: ["cjs"],
    dts: { entry: "src/index.ts", compilerOptions: { stripInternal: true } },
  },
]);
