import { describe } from "vitest";
import { drivers } from "./support/db.js";
import { lifecycleTests, seedOf } from "./support/model.js";

/**
 * The session lifecycle under racing calls, model-based (test/support/model.ts): bounded runs with a fixed
 * seed per configuration (LIFECYCLE_SEED overrides it, LIFECYCLE_PATH replays a shrunk case,
 * LIFECYCLE_ONLY picks configurations by name). The longer, randomly seeded run is test/faults/lifecycle.test.ts.
 */
// Side by side: a run spends most of its time waiting for sessions to expire.
describe.concurrent("session lifecycle under racing calls (model-based)", () => {
  lifecycleTests(drivers, { seed: (config) => seedOf(config.name), runs: 20, maxCommands: 30, budgetMs: 5_000, shrinkMs: 10_000 });
});
