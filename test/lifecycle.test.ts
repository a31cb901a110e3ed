import { afterAll, describe, it } from "vitest";
import { drivers, type TestDb } from "./support/db.js";
import { closeSharedDbs, configurations, fromEnv, openConfigDb, runLifecycle, seedOf, unsupported } from "./support/model.js";

/**
 * The session lifecycle under racing calls, model-based (test/support/model.ts): bounded runs (about five
 * seconds per configuration, configurations side by side) with a fixed seed per configuration. Replay a
 * failure with LIFECYCLE_SEED=<seed> LIFECYCLE_PATH=<path> LIFECYCLE_ONLY="<configuration>"; the other
 * knobs are listed at fromEnv. The longer, randomly seeded run is test/faults/lifecycle.test.ts.
 */
const env = fromEnv();
const configs = configurations(drivers).filter((c) => !env.only || c.name.includes(env.only));
const open = new Set<TestDb>();

afterAll(async () => {
  await Promise.allSettled([...open].map((t) => t.close()));
  await closeSharedDbs();
});

// Side by side: a run spends most of its time waiting for sessions to expire.
describe.concurrent("session lifecycle under racing calls (model-based)", () => {
  for (const config of configs) {
    it(config.name, async (ctx) => {
      const t = await openConfigDb(config.driver);
      open.add(t);
      try {
        const why = await unsupported(config, t);
        if (why) {
          console.log(`[lifecycle] ${config.name}: skipped (${why})`);
          ctx.skip();
        }
        await runLifecycle(config, t, {
          seed: env.seed ?? seedOf(config.name),
          path: env.path,
          numRuns: env.runs ?? 20,
          maxCommands: 40,
          budgetMs: env.budgetMs ?? 5_000,
          shrinkMs: env.shrinkMs ?? 10_000,
          without: env.without,
        });
      } finally {
        open.delete(t);
        await t.close();
      }
    }, 45_000 + (env.budgetMs ?? 0) + (env.shrinkMs ?? 0));
  }
});
