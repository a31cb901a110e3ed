import { defineConfig } from "vitest/config";

/**
 * The heavy fault tests (`npm run test:faults`): a real Postgres (DATABASE_URL; skipped without it),
 * pgbouncer, child processes. One file at a time: they kill database backends and hold pool clients,
 * and each file works in a database of its own (test/support/faultdb.ts).
 */
export default defineConfig({
  test: {
    include: ["test/faults/**/*.test.ts"],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 60_000,
    teardownTimeout: 20_000,
    // The files skip themselves unless this is set, so the plain `vitest run` (whose include matches
    // test/**) does not run them.
    env: { CONNECT_DRIZZLE_FAULTS: "1" },
  },
});
