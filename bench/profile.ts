/**
 * Where the time goes in a `get`: profiles get (hit) at concurrency 32 for the raw-pg floor, for the
 * same SELECT through a bare drizzle prepared query (no store around it), and for connect-drizzle's
 * SessionStore, each in a child process with V8's sampling profiler (node:inspector, started after
 * setup and warm-up, so only the measured loop is in the profile), and summarizes self time by
 * function and by package. Prints markdown and writes bench/PROFILE.md.
 *
 *   npx tsx bench/profile.ts            # about 30 s
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { Session } from "node:inspector/promises";
import os from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { createSessionTable } from "../src/index.js";
import { DATABASE_URL, POOL_SIZE, sessionData } from "./support/config.js";
import { summarize } from "./support/cpuprofile.js";
import { createBenchSchema, dropBenchSchema } from "./support/schema.js";
import { fmtInt, fmtNum, table } from "./support/stats.js";
import { openStore } from "./support/stores.js";

const VARIANTS = ["raw-pg", "drizzle-bare", "connect-drizzle"] as const;
type Variant = (typeof VARIANTS)[number];
const LABEL: Record<Variant, string> = {
  "raw-pg": "raw pg floor (named query on a pg Pool)",
  "drizzle-bare": "drizzle prepared query alone (connect-drizzle's SELECT, no store)",
  "connect-drizzle": "connect-drizzle SessionStore.get (callback API)",
};
const SECONDS = Number(process.env.PROFILE_SECONDS ?? 6);
const SESSIONS = 1_000;
const CONCURRENCY = 32;

async function child(variant: Variant, schema: string, out: string): Promise<void> {
  const sids = Array.from({ length: SESSIONS }, (_, i) => `profile-session-${i}-${"x".repeat(8)}`);
  let get: (sid: string) => Promise<unknown>;
  let close: () => Promise<void>;
  if (variant === "drizzle-bare") {
    const pool = new pg.Pool({ connectionString: DATABASE_URL, max: POOL_SIZE });
    const t = createSessionTable("sessions", { schema });
    const prepared = drizzle({ client: pool })
      .select({ key: t.key, data: sql<string>`${t.data}::text`, expires: sql<number>`(extract(epoch from ${t.expiresAt}) * 1000)::float8`, version: t.version })
      .from(t)
      .where(sql`${t.key} in (${sql.placeholder("k0")}) and ${t.endedAt} is null and ${t.expiresAt} > ${sql.placeholder("now")}::timestamptz`)
      .limit(1)
      .prepare("profile_bare_get");
    const store = await openStore("connect-drizzle", { schema, pool }); // to write the sessions
    for (const sid of sids) await store.ops.set(sid, sessionData());
    get = (sid) => prepared.execute({ k0: createHash("sha256").update(sid).digest("base64url"), now: new Date().toISOString() });
    close = () => pool.end();
  } else {
    const store = await openStore(variant, { schema });
    for (const sid of sids) await store.ops.set(sid, sessionData());
    get = (sid) => store.ops.get(sid);
    close = store.close;
  }
  const drive = async (ms: number) => {
    const until = performance.now() + ms;
    let n = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (performance.now() < until) {
          await get(sids[(Math.random() * sids.length) | 0]!);
          n++;
        }
      }),
    );
    return n;
  };
  await drive(1_000);
  // The profiler runs for the measured loop only: no module loading, no setup, no warm-up.
  const inspector = new Session();
  inspector.connect();
  await inspector.post("Profiler.enable");
  await inspector.post("Profiler.setSamplingInterval", { interval: 200 });
  await inspector.post("Profiler.start");
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const ops = await drive(SECONDS * 1_000);
  const seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const { profile } = await inspector.post("Profiler.stop");
  inspector.disconnect();
  writeFileSync(out, JSON.stringify(profile));
  await close();
  process.stdout.write(`${JSON.stringify({ ops, opsPerSec: ops / seconds, cpuUsPerOp: (cpu.user + cpu.system) / ops })}\n`);
}

async function parent(): Promise<void> {
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const schema = `bench_profile_${process.pid}`;
  await createBenchSchema(admin, schema);
  const lines: string[] = [
    "# Where the time goes: get (hit), concurrency 32",
    "",
    `${os.cpus().length} cores, ${os.cpus()[0]?.model.trim()}; Node ${process.version}; ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC; ` +
      `load average at start ${os
        .loadavg()
        .map((l) => l.toFixed(1))
        .join(" / ")}. \`npx tsx bench/profile.ts\`: ${SECONDS} s per variant after 1 s warm-up, ` +
      "V8 sampling profiler at 200 µs over the measured loop only (so ops/s are a little below an unprofiled run's); " +
      "self time in the client process only (Postgres runs on the same 2 cores). µs/op = self time / operations.",
  ];
  const summary: string[][] = [];
  const details: string[] = [];
  try {
    for (const variant of VARIANTS) {
      const dir = mkdtempSync(join(os.tmpdir(), "cdz-prof-"));
      const file = join(dir, `${variant}.cpuprofile`);
      const out = execFileSync(process.execPath, ["--import", "tsx", import.meta.filename, "child", variant, schema, file], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "inherit"],
      });
      const result = JSON.parse(out.trim().split("\n").at(-1)!) as { ops: number; opsPerSec: number; cpuUsPerOp: number };
      const { functions, groups } = summarize(file, 12);
      rmSync(dir, { recursive: true, force: true });
      summary.push([LABEL[variant], fmtInt(result.opsPerSec), fmtNum(result.cpuUsPerOp, 1)]);
      const perOp = (ms: number) => fmtNum((ms * 1000) / result.ops, 1);
      details.push(
        `### ${LABEL[variant]}`,
        "",
        "By package (self time, µs per get, share of busy time; idle excluded):",
        "",
        table(
          ["group", "µs/op", "share"],
          groups.slice(0, 8).map((g) => [g.name, perOp(g.ms), `${(g.share * 100).toFixed(0)}%`]),
          ["l", "r", "r"],
        ),
        "",
        "Top functions by self time:",
        "",
        table(
          ["function", "where", "µs/op", "share"],
          functions.map((f) => [`\`${f.name}\``, f.where ? `\`${f.where}\`` : "", perOp(f.ms), `${(f.share * 100).toFixed(1)}%`]),
          ["l", "l", "r", "r"],
        ),
        "",
      );
      console.error(`${variant}: ${Math.round(result.opsPerSec)} ops/s, ${result.cpuUsPerOp.toFixed(1)} µs CPU/op`);
    }
  } finally {
    await dropBenchSchema(admin, schema);
    await admin.end();
  }
  lines.push("", table(["variant", "ops/s (profiled)", "client CPU µs/op"], summary, ["l", "r", "r"]), "", ...details);
  const text = lines.join("\n");
  console.log(text);
  writeFileSync(join(import.meta.dirname, "PROFILE.md"), text);
}

const [mode, variant, schema, out] = process.argv.slice(2);
(mode === "child" ? child(variant as Variant, schema!, out!) : parent()).catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
