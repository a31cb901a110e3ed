import { afterAll, describe, it } from "vitest";
import { drivers, type TestDb } from "../support/db.js";
import { faultsEnabled } from "../support/faultdb.js";
import { closeSharedDbs, configurations, fromEnv, openConfigDb, runLifecycle, seedOf, unsupported } from "../support/model.js";

/**
 * The model-based lifecycle test of test/lifecycle.test.ts, longer (about two minutes in all) and with a
 * random seed, printed (each configuration runs its own seed, derived from it, printed on its summary line
 * and in fast-check's report): replay a failure with LIFECYCLE_SEED=<that seed> LIFECYCLE_ONLY="<configuration>"
 * (and LIFECYCLE_PATH=<path> for the shrunk case). Runs only under `npm run test:faults`; it kills no
 * backends, so it works in schemas of its own in DATABASE_URL's database (openDb), not a fault database.
 */
const env = fromEnv();
const seed = (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) | 0;
const configs = configurations(drivers).filter((c) => !env.only || c.name.includes(env.only));
const open = new Set<TestDb>();
const BUDGET = env.budgetMs ?? 50_000;
const SHRINK = env.shrinkMs ?? 30_000;

afterAll(async () => {
  await Promise.allSettled([...open].map((t) => t.close()));
  await closeSharedDbs();
});

describe.skipIf(!faultsEnabled)("session lifecycle under racing calls (model-based, long, random seed)", { concurrent: true }, () => {
  if (env.seed === undefined) console.log(`[lifecycle] faults run: random seed ${seed}; each configuration runs (seed + a number of its own)`);
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
          seed: env.seed ?? (seed + seedOf(config.name)) | 0,
          path: env.path,
          numRuns: env.runs ?? 100_000,
          maxCommands: 60,
          budgetMs: BUDGET,
          shrinkMs: SHRINK,
          without: env.without,
        });
      } finally {
        open.delete(t);
        await t.close();
      }
    }, BUDGET + SHRINK + 30_000);
  }
});
