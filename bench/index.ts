/**
 * `npm run bench` (BENCH_QUICK=1 for a ~2 minute smoke run): connect-drizzle against MemoryStore,
 * connect-pg-simple, connect-redis and a raw-pg floor, at the store level and over HTTP, then a mixed
 * workload on two instances, in one run. Prints the tables and writes them to bench/RESULTS.md, the goals
 * also to bench/results.json (read back by the next run for its "previous run" column). See bench/README.md.
 * `BENCH_ONLY=rotation npm run bench`: only the rotation section (about 4 minutes), printed, nothing written.
 */
import { writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import pg from "pg";
import { createClient } from "redis";
import { computeGoals, readPrevious, RESULTS_JSON, resultsOf, type RunData } from "./goals.js";
import { benchHttp } from "./http.js";
import { benchMixed } from "./mixed.js";
import { render } from "./report.js";
import { benchRotation, renderRotation } from "./rotation.js";
import { benchStoreLevel } from "./store-level.js";
import { DATABASE_URL, HTTP_LEVEL, MIXED, ONLY, POOL_SIZE, QUICK, REDIS_URL, STORE_LEVEL } from "./support/config.js";
import { createBenchSchema, dropBenchSchema, truncateBenchSchema } from "./support/schema.js";
import { redisAvailable, TARGETS } from "./support/stores.js";

const started = Date.now();
const log = (line: string) => console.log(line);
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)} s`;
const loadAverage = () =>
  os
    .loadavg()
    .map((l) => l.toFixed(1))
    .join(" / ");

async function machine(admin: pg.Client, redisOk: boolean): Promise<string> {
  const pgVersion = (await admin.query("show server_version")).rows[0].server_version as string;
  let redisVersion = "not running (skipped)";
  if (redisOk) {
    const client = createClient({ url: REDIS_URL, socket: { reconnectStrategy: false } });
    client.on("error", () => {});
    await client.connect();
    redisVersion = /redis_version:(\S+)/.exec(await client.info("server"))?.[1] ?? "?";
    client.destroy();
  }
  return (
    `${os.cpus().length} cores, ${os.cpus()[0]?.model.trim() ?? "unknown CPU"}, ${Math.round(os.totalmem() / 2 ** 30)} GiB; ` +
    `Node ${process.version}; PostgreSQL ${pgVersion} (same host, loopback); Redis ${redisVersion}; ` +
    `${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; load average at start ${loadAverage()}`
  );
}

async function main() {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const schema = `bench_${process.pid}_${Date.now().toString(36)}`;
  const redisOk = await redisAvailable();
  const notes: string[] = [];
  if (!redisOk)
    notes.push(
      `connect-redis skipped: Redis does not answer on ${REDIS_URL} (start it: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no).`,
    );
  const targets = TARGETS.filter((t) => t.name !== "connect-redis" || redisOk);
  let machineLine = await machine(admin, redisOk);
  log(`connect-drizzle benchmark${QUICK ? " (BENCH_QUICK=1: short cells, smoke run only)" : ""}`);
  log(machineLine);
  for (const note of notes) log(`NOTE: ${note}`);

  await createBenchSchema(admin, schema);
  const run: RunData = { targets, storeCells: [], storeRounds: [], fills: [], httpCells: [], httpRounds: [], mixed: [] };
  if (ONLY !== undefined && ONLY !== "rotation") throw new Error(`BENCH_ONLY=${ONLY}: only "rotation" is known`);
  try {
    if (ONLY === "rotation") {
      log(`\nRotation and reuse detection (BENCH_ONLY=rotation: this section only, nothing written)`);
      const rotation = await benchRotation(schema, log);
      log(`  [${elapsed()}]\n\n${machineLine}, at end ${loadAverage()}; run took ${elapsed()}\n\n${renderRotation(rotation)}`);
      return;
    }
    log(`\nStore level (${STORE_LEVEL.durationMs} ms per cell after ${STORE_LEVEL.warmupMs} ms warm-up, pg Pool max ${POOL_SIZE})`);
    ({ cells: run.storeCells, rounds: run.storeRounds, fills: run.fills } = await benchStoreLevel(targets, schema, log));
    log(`  [${elapsed()}]`);

    await truncateBenchSchema(admin, schema);
    log(`\nRotation and reuse detection (interleaved rounds of ${STORE_LEVEL.repeatMs} ms cells)`);
    run.rotation = await benchRotation(schema, log);
    log(`  [${elapsed()}]`);

    await truncateBenchSchema(admin, schema);
    log(
      `\nHTTP level (autocannon, ${HTTP_LEVEL.connections} connections, ${HTTP_LEVEL.durationS} s per cell after ${HTTP_LEVEL.warmupS} s warm-up; server in a child process)`,
    );
    const http = await benchHttp(targets, schema, log);
    ({ cells: run.httpCells, rounds: run.httpRounds } = http);
    notes.push(...http.failures);
    log(`  [${elapsed()}]`);

    await truncateBenchSchema(admin, schema);
    log(`\nMixed workload (two instances, ${MIXED.concurrency} workers, ${MIXED.durationMs} ms after ${MIXED.warmupMs} ms warm-up; with cache, then without)`);
    run.mixed = await benchMixed(schema, log);
    log(`  [${elapsed()}]`);
  } finally {
    await dropBenchSchema(admin, schema).catch((error) => console.error(`could not drop schema ${schema}:`, error));
    await admin.end();
  }

  // Other work on the machine (a test run, a build) skews a run: the load average says whether there was any.
  machineLine += `, at end ${loadAverage()}; run took ${elapsed()}`;
  const previous = readPrevious();
  const { goals, extras } = computeGoals(run);
  const report = render(machineLine, notes, run, goals, extras, previous);
  log(`\n${report}`);
  const file = join(import.meta.dirname, "RESULTS.md");
  writeFileSync(file, report);
  writeFileSync(RESULTS_JSON, `${JSON.stringify(resultsOf(started, machineLine, goals, extras, run.mixed, QUICK, run.rotation), null, 2)}\n`);
  log(`\nwrote ${file} and ${RESULTS_JSON} (${elapsed()})`);
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
