/**
 * Where the server's time goes on one HTTP route, per store: the benchmark's Express server
 * (support/server.ts) in a child process under V8's CPU profiler (`--cpu-prof`), 32 sessions made by
 * POST /login, then autocannon with 32 connections for 6 s on the route. Prints self time per request,
 * by package and by function, and writes bench/PROFILE-HTTP.md. The profile covers the whole child
 * (start-up and the logins too: a few percent of the busy time), so read it as shares, not as totals.
 *
 *   npx tsx bench/profile-http.ts                                   # GET /read: cache, MemoryStore, connect-redis
 *   PROFILE_TARGETS=connect-drizzle,connect-pg-simple PROFILE_ROUTE=login npx tsx bench/profile-http.ts
 *
 * A target is a store name, `connect-drizzle:cache` for connect-drizzle with `cache: {}`.
 */
import { fork } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import autocannon from "autocannon";
import pg from "pg";
import { DATABASE_URL } from "./support/config.js";
import { summarize } from "./support/cpuprofile.js";
import { createBenchSchema, dropBenchSchema } from "./support/schema.js";
import { fmtInt, fmtNum, table } from "./support/stats.js";

const targets = (process.env.PROFILE_TARGETS ?? "connect-drizzle:cache,memory,connect-redis").split(",");
const route = process.env.PROFILE_ROUTE === "login" ? "login" : "read";
const SECONDS = 6;
const CONNECTIONS = 32;

async function profile(spec: string, schema: string, dir: string): Promise<string[]> {
  const [name, variant] = spec.split(":");
  const child = fork(join(import.meta.dirname, "support", "server.ts"), [], {
    execArgv: ["--import", "tsx", "--cpu-prof", `--cpu-prof-dir=${dir}`, "--cpu-prof-interval=200"],
    env: { ...process.env, BENCH_STORE: name, BENCH_SCHEMA: schema, BENCH_REDIS_PREFIX: schema, ...(variant === "cache" ? { BENCH_CACHE: "{}" } : {}) },
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  const [ready] = (await once(child, "message")) as [{ port: number }];
  const base = `http://127.0.0.1:${ready.port}`;
  const cookies: string[] = [];
  for (let i = 0; i < CONNECTIONS; i++) {
    const res = await fetch(`${base}/login`, { method: "POST" });
    cookies.push(res.headers.get("set-cookie")!.split(";")[0]!);
  }
  let next = 0;
  const result = await autocannon(
    route === "read"
      ? { url: `${base}/read`, connections: CONNECTIONS, duration: SECONDS, setupClient: (c: any) => c.setHeaders({ cookie: cookies[next++ % CONNECTIONS] }) }
      : { url: `${base}/login`, method: "POST", connections: CONNECTIONS, duration: SECONDS },
  );
  child.send({ type: "exit" });
  await once(child, "exit");
  const { functions, groups, busyMs } = summarize(join(dir, readdirSync(dir)[0]!), 20);
  const perReq = (ms: number) => fmtNum((ms * 1000) / result.requests.total, 1);
  return [
    `### ${spec}: ${fmtInt(result.requests.average)} req/s, ${perReq(busyMs)} µs busy per request`,
    "",
    table(
      ["group", "µs/req"],
      groups.slice(0, 10).map((g) => [g.name, perReq(g.ms)]),
      ["l", "r"],
    ),
    "",
    table(
      ["function", "where", "µs/req"],
      functions.map((f) => [`\`${f.name}\``, f.where ? `\`${f.where}\`` : "", perReq(f.ms)]),
      ["l", "l", "r"],
    ),
    "",
  ];
}

async function main() {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const schema = `profile_http_${process.pid}`;
  await createBenchSchema(admin, schema);
  const lines = [
    `# Where the server's time goes: ${route === "read" ? "GET /read" : "POST /login"}`,
    "",
    `${os.cpus().length} cores, ${os.cpus()[0]?.model.trim()}; Node ${process.version}; ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; ` +
      `load average at start ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" / ")}. \`npx tsx bench/profile-http.ts\`: the benchmark's server under \`--cpu-prof\`, ` +
      `${CONNECTIONS} connections for ${SECONDS} s; self time per request in the server process (the store's database or Redis work is not in it).`,
    "",
  ];
  try {
    for (const spec of targets) {
      const dir = mkdtempSync(join(os.tmpdir(), "profile-http-"));
      try {
        lines.push(...(await profile(spec, schema, dir)));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  } finally {
    await dropBenchSchema(admin, schema);
    await admin.end();
  }
  const report = lines.join("\n");
  console.log(report);
  writeFileSync(join(import.meta.dirname, "PROFILE-HTTP.md"), report);
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
