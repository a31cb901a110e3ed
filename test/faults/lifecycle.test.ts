import { describe } from "vitest";
import { drivers } from "../support/db.js";
import { faultsEnabled } from "../support/faultdb.js";
import { fromEnv, lifecycleTests, seedOf } from "../support/model.js";

/**
 * The model-based lifecycle test of test/lifecycle.test.ts, longer (about two minutes in all) and with a
 * random seed, printed (each configuration runs its own seed, derived from it, printed on its summary line
 * and in fast-check's report): replay a failure with LIFECYCLE_SEED=<that seed> LIFECYCLE_ONLY="<configuration>"
 * (and LIFECYCLE_PATH=<path> for the shrunk case). Runs only under `npm run test:faults`; it kills no
 * backends, so it works in schemas of its own in DATABASE_URL's database (openDb), not a fault database.
 */
const seed = (Date.now() ^ Math.floor(Math.random() * 0x7fffffff)) | 0;

describe.skipIf(!faultsEnabled)("session lifecycle under racing calls (model-based, long, random seed)", { concurrent: true }, () => {
  if (fromEnv().seed === undefined) console.log(`[lifecycle] faults run: random seed ${seed}; each configuration runs (seed + a number of its own)`);
  lifecycleTests(drivers, { seed: (config) => (seed + seedOf(config.name)) | 0, runs: 100_000, maxCommands: 60, budgetMs: 50_000, shrinkMs: 30_000 });
});
