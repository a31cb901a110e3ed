import { defineConfig } from "tsup";

export default defineConfig({
  entry: ["src/index.ts", "src/cli.ts"],
  format: ["esm", "cjs"],
  dts: { entry: "src/index.ts" }, // the CLI is a bin, not an import: no empty cli.d.ts in the package
  clean: true,
  sourcemap: true,
  target: "node18",
  // import.meta.url in the CommonJS build too (src/migrations.ts finds drizzle/ from its own location).
  shims: true,
  external: ["drizzle-orm", "express-session", "pg"],
});
