import { availableParallelism } from "node:os";
import { fileURLToPath } from "node:url";
import { configDefaults, defineConfig } from "vitest/config";

export default defineConfig({
  resolve: {
    // Examples import "connect-drizzle" as users do; in tests that is this checkout's source, never a stale dist/.
    alias: { "connect-drizzle": fileURLToPath(new URL("./src/index.ts", import.meta.url)) },
  },
  test: {
    include: ["test/**/*.test.ts"],
    // The fault tests (outages, pgbouncer, processes) and the HA tests (replicas, failover) run in their own
    // scripts: npm run test:faults, npm run test:ha.
    exclude: [...configDefaults.exclude, "test/faults/**", "test/ha/**"],
    // Every file opens its own database (a schema of its own on a server): two at a time on two cores.
    maxWorkers: Math.max(2, availableParallelism() - 1),
    reporters: ["default", "./test/support/skipped.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
