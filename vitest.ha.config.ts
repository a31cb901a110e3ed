import { defineConfig } from "vitest/config";
import type { TestModule } from "vitest/node";
import SkippedSummary from "./test/support/skipped.js";

/**
 * test/support/skipped.ts's summary of what was skipped and why (these files skip saying what they lack:
 * root, a Debian package), without its note about DATABASE_URL: the HA tests make their own servers.
 */
class HaSkippedSummary extends SkippedSummary {
  override onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const url = process.env.DATABASE_URL;
    process.env.DATABASE_URL = url ?? "not used by the HA tests";
    try {
      super.onTestRunEnd(modules);
    } finally {
      if (url === undefined) delete process.env.DATABASE_URL;
    }
  }
}

/**
 * The high-availability tests (`npm run test:ha`): real PostgreSQL 15 replication on loopback, a primary
 * and a hot standby made with Debian's pg_createcluster (test/support/cluster.ts) and a pg_auto_failover
 * formation (test/support/autofailover.ts); they need root and those Debian packages, and skip, saying
 * why, without them. One file at a time: each starts and kills servers and takes free ports. No
 * DATABASE_URL needed: they make their own servers and never touch the main cluster.
 */
export default defineConfig({
  test: {
    include: ["test/ha/**/*.test.ts"],
    fileParallelism: false,
    reporters: ["default", new HaSkippedSummary()],
    testTimeout: 180_000,
    hookTimeout: 180_000,
    teardownTimeout: 60_000,
    // The files skip themselves unless this is set, and vitest.config.ts excludes test/ha, so the plain
    // `vitest run` runs none of them.
    env: { CONNECT_DRIZZLE_HA: "1" },
  },
});
