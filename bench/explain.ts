/**
 * `npx tsx bench/explain.ts` (a few seconds): the query plan of every statement connect-drizzle sends for
 * each store operation, with default options and with `notify: true`, on a table of 2,000 sessions.
 * Writes bench/EXPLAIN.md. See bench/README.md.
 *
 * Each statement the store sends is captured (SQL text and parameters, by wrapping pg's Client.query) and,
 * on the same connection and just before it is sent on, run once more under `EXPLAIN (ANALYZE, BUFFERS, VERBOSE)`
 * inside a transaction that is rolled back (a savepoint when the statement runs inside one of the store's
 * own transactions): the plan is measured on exactly the rows the statement itself then meets, and the
 * EXPLAIN's writes (and NOTIFYs) never persist.
 */
import { execFileSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { drizzle } from "drizzle-orm/node-postgres";
import type { SessionData } from "express-session";
import pg from "pg";
import { createSessionTable, SessionStore } from "../src/index.js";
import { DATABASE_URL, sessionData } from "./support/config.js";
import { queryArgs } from "./support/notify.js";
import { createBenchSchema, dropBenchSchema } from "./support/schema.js";

const SESSIONS = 2_000;
/** Sessions with a user id (passport.user), USERS users of OWNED / USERS sessions each; the rest anonymous. */
const OWNED = 1_200;
const USERS = 40;
/** Sessions made expired before each reap, so that the round has rows to delete. */
const EXPIRED = 100;
const EXPLAINABLE = new Set(["select", "insert", "update", "delete", "with", "values", "table", "merge"]);

interface Captured {
  name: string | undefined;
  text: string;
  values: unknown[] | undefined;
  /** Sent inside a transaction of the store's own (the reaper's lock). */
  inTransaction: boolean;
  /** The EXPLAIN's lines; undefined for a statement EXPLAIN does not take (begin, commit, ...). */
  plan?: Promise<string[] | Error>;
}

let capturing: Captured[] | undefined;
const inTransaction = new WeakSet<pg.Client>();
const original = pg.Client.prototype.query as (...args: unknown[]) => any;

pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
  const { text, values, name } = queryArgs(args);
  const verb = /^\s*(\w+)/.exec(text)?.[1]?.toLowerCase() ?? "";
  if (verb === "begin" || /^\s*start\s+transaction/i.test(text)) inTransaction.add(this);
  else if (/^\s*(commit|end|abort)\b/i.test(text) || (/^\s*rollback\b/i.test(text) && !/^\s*rollback\s+to\b/i.test(text))) inTransaction.delete(this);
  if (!capturing) return original.apply(this, args);
  const inTx = inTransaction.has(this);
  const captured: Captured = { name, text, values, inTransaction: inTx };
  capturing.push(captured);
  if (!EXPLAINABLE.has(verb)) return original.apply(this, args);
  // On this connection, before the statement itself, one step after the other.
  const explain = `explain (analyze, buffers, verbose) ${text}`;
  const steps: Array<[string, unknown[]?]> = inTx
    ? [["savepoint bench_explain"], [explain, values], ["rollback to savepoint bench_explain"], ["release savepoint bench_explain"]]
    : [["begin"], [explain, values], ["rollback"]];
  captured.plan = (async () => {
    let lines: string[] | undefined;
    let failure: Error | undefined;
    for (const [sql, vals] of steps) {
      try {
        const result = (await original.call(this, vals ? { text: sql, values: vals } : sql)) as pg.QueryResult;
        if (sql === explain) lines = result.rows.map((row) => String(row["QUERY PLAN"]));
      } catch (error) {
        failure ??= error instanceof Error ? error : new Error(String(error));
      }
    }
    return failure ?? lines ?? new Error("no plan");
  })();
  // Then the statement, in the form it was sent: with a callback (pg's Pool) or as a promise (drizzle).
  if (typeof args[args.length - 1] === "function") {
    void captured.plan.then(() => original.apply(this, args));
    return undefined;
  }
  return captured.plan.then(() => original.apply(this, args));
} as typeof pg.Client.prototype.query;

/** Runs `fn` with every statement it sends captured (and explained). */
async function capture(fn: () => Promise<unknown>): Promise<Captured[]> {
  const statements: Captured[] = [];
  capturing = statements;
  try {
    await fn();
  } finally {
    capturing = undefined;
  }
  await Promise.all(statements.map((s) => s.plan));
  return statements;
}

interface Figures {
  executionMs: number;
  planningMs: number;
  hit: number;
  read: number;
  dirtied: number;
  written: number;
  planningHit: number;
  planningRead: number;
  indexes: string[];
}

/** Execution time, the top node's shared buffers (which include its children's), planning's, and every index the plan names. */
function figures(lines: string[]): Figures {
  const num = (re: RegExp, line: string) => Number(re.exec(line)?.[1] ?? 0);
  const buffers = (line: string) => ({
    hit: num(/shared [^,]*?hit=(\d+)/, line),
    read: num(/shared [^,]*?read=(\d+)/, line),
    dirtied: num(/shared [^,]*?dirtied=(\d+)/, line),
    written: num(/shared [^,]*?written=(\d+)/, line),
  });
  const planningAt = lines.findIndex((l) => /^Planning:/.test(l));
  const firstChild = lines.findIndex((l) => l.includes("->") || /^\s+(CTE|InitPlan|SubPlan) /.test(l));
  const topEnd = Math.min(...[planningAt, firstChild, lines.length].filter((i) => i >= 0));
  const top = lines.slice(0, topEnd).find((l) => /^\s*Buffers: /.test(l)) ?? "";
  const planning = planningAt >= 0 ? (lines.slice(planningAt + 1).find((l) => /^\s+Buffers: /.test(l)) ?? "") : "";
  const indexes = new Set<string>();
  for (const line of lines) {
    for (const m of line.matchAll(/Index (?:Only )?Scan(?: Backward)? using (\S+)/g)) indexes.add(m[1]!);
    for (const m of line.matchAll(/Bitmap Index Scan on (\S+)/g)) indexes.add(m[1]!);
    const arbiters = /Conflict Arbiter Indexes: (.+)$/.exec(line)?.[1];
    for (const name of arbiters?.split(",") ?? []) indexes.add(name.trim());
  }
  const time = (label: string) => Number(lines.map((l) => new RegExp(`^${label} Time: ([\\d.]+) ms`).exec(l)?.[1]).find((v) => v !== undefined) ?? NaN);
  const p = buffers(planning);
  return { executionMs: time("Execution"), planningMs: time("Planning"), ...buffers(top), planningHit: p.hit, planningRead: p.read, indexes: [...indexes] };
}

/** A parameter as shown: strings and numbers as JSON, long ones cut. */
function showValue(v: unknown): string {
  const s = v instanceof Date ? JSON.stringify(v.toISOString()) : (JSON.stringify(v) ?? String(v));
  return s.length > 160 ? `${s.slice(0, 157)}…` : s;
}

interface Result {
  op: string;
  variant: string;
  statements: Array<Captured & { lines?: string[]; error?: Error; figures?: Figures }>;
}

async function main() {
  const started = Date.now();
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  const schema = `bench_explain_${process.pid}_${Date.now().toString(36)}`;
  const pgVersion = (await admin.query("show server_version")).rows[0].server_version as string;
  const preload = (await admin.query("show shared_preload_libraries")).rows[0].shared_preload_libraries as string;
  const statStatements = (await admin.query("select default_version, installed_version from pg_available_extensions where name = 'pg_stat_statements'"))
    .rows[0] as { default_version: string; installed_version: string | null } | undefined;
  const commit = (() => {
    try {
      return execFileSync("git", ["rev-parse", "--short", "HEAD"], { cwd: import.meta.dirname, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
    } catch {
      return null;
    }
  })();

  await createBenchSchema(admin, schema);
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 10 });
  const table = createSessionTable("sessions", { schema });
  const db = drizzle({ client: pool });
  const results: Result[] = [];
  try {
    // The table: SESSIONS sessions written by the store itself, OWNED of them with a user id.
    const fixture = new SessionStore({ db, table });
    const sids = Array.from({ length: SESSIONS }, (_, i) => `explain-${i.toString().padStart(5, "0")}-${Math.random().toString(36).slice(2, 14)}`);
    const userOf = (i: number) => (i < OWNED ? `user_${i % USERS}` : undefined);
    for (let i = 0; i < sids.length; i += 50) {
      await Promise.all(
        sids.slice(i, i + 50).map((sid, k) => {
          const user = userOf(i + k);
          return fixture.set(sid, { ...sessionData(), ...(user ? { passport: { user } } : {}) });
        }),
      );
    }
    await fixture.close();
    await admin.query(`vacuum analyze "${schema}"."sessions"`);
    // Each operation gets sessions of its own (from the end of each group), so that no write of one changes another's rows.
    let nextOwned = OWNED - 1;
    let nextAnon = SESSIONS - 1;
    const owned = () => sids[nextOwned--]!;
    const anon = () => sids[nextAnon--]!;
    let misses = 0;
    const missing = () => `explain-missing-${++misses}-${Math.random().toString(36).slice(2, 14)}`;

    for (const [variant, notify] of [
      ["default options", undefined],
      ["notify: true", true],
    ] as const) {
      const options = notify === undefined ? {} : { notify };
      const store = new SessionStore({ db, table, ...options });
      const forced = new SessionStore({ db, table, touchAfter: 0, ...options });
      const run = async (op: string, prepare: () => Promise<() => Promise<unknown>>) => {
        const fn = await prepare();
        const statements = await capture(fn);
        const explained = await Promise.all(
          statements.map(async (s) => {
            const plan = await s.plan;
            if (plan === undefined) return s;
            if (plan instanceof Error) return { ...s, error: plan };
            return { ...s, lines: plan, figures: figures(plan) };
          }),
        );
        results.push({ op, variant, statements: explained });
      };

      await run("get (hit)", async () => {
        const sid = owned();
        return () => store.get(sid);
      });
      await run("get (miss)", async () => {
        const sid = missing();
        return () => store.get(sid);
      });
      await run("set (new session)", async () => {
        const sid = missing();
        return () => store.set(sid, { ...sessionData(), passport: { user: "user_new" } } as SessionData);
      });
      await run("set (loaded session, changed data)", async () => {
        const sid = owned();
        const loaded = (await store.get(sid)) as (SessionData & { user: { name: string } }) | null;
        if (!loaded) throw new Error(`explain: session ${sid} not found`);
        loaded.user = { ...loaded.user, name: "Ada King" };
        return () => store.set(sid, loaded);
      });
      await run("touch (forced, touchAfter: 0)", async () => {
        const sid = owned();
        const data = await forced.get(sid);
        if (!data) throw new Error(`explain: session ${sid} not found`);
        // As express-session does on a rolling request: req.session from the store's get, its maxAge reset.
        const session = forced.createSession({ sessionID: sid } as any, data) as SessionData & { touch(): unknown };
        await new Promise((r) => setTimeout(r, 5));
        session.touch();
        return () => forced.touch(sid, session);
      });
      await run("destroy", async () => {
        const sid = owned();
        return () => store.destroy(sid);
      });
      await run("destroy of a missing id (as regenerate on a new session)", async () => {
        const sid = missing();
        return () => store.destroy(sid);
      });
      await run("revoke(handle, { anyOwner: true })", async () => {
        const handle = await store.handleOf(owned());
        if (!handle) throw new Error("explain: no handle");
        return () => store.revoke(handle, { anyOwner: true });
      });
      await run("list({ userId })", async () => () => store.list({ userId: "user_3" }));
      await run("count({ userId })", async () => () => store.count({ userId: "user_3" }));
      await run("reap()", async () => {
        // Rows for the round: EXPIRED sessions (half owned, half anonymous) expired a minute ago.
        const handles: string[] = [];
        for (let i = 0; i < EXPIRED; i++) {
          const handle = await store.handleOf(i % 2 ? owned() : anon());
          if (handle) handles.push(handle);
        }
        await admin.query(`update "${schema}"."sessions" set expires_at = now() - interval '1 minute' where handle = any($1)`, [handles]);
        return () => store.reap();
      });
      await store.close();
      await forced.close();
    }
  } finally {
    await pool.end();
    await dropBenchSchema(admin, schema).catch((error) => console.error(`could not drop schema ${schema}:`, error));
    await admin.end();
  }

  const file = join(import.meta.dirname, "EXPLAIN.md");
  writeFileSync(file, render({ pgVersion, preload, statStatements, commit, schema, seconds: (Date.now() - started) / 1000 }, results));
  console.log(`wrote ${file} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
}

function render(
  run: {
    pgVersion: string;
    preload: string;
    statStatements: { default_version: string; installed_version: string | null } | undefined;
    commit: string | null;
    schema: string;
    seconds: number;
  },
  results: Result[],
): string {
  const sum = (r: Result, k: keyof Omit<Figures, "indexes">) => r.statements.reduce((n, s) => n + (s.figures?.[k] ?? 0), 0);
  const indexes = (r: Result) => [...new Set(r.statements.flatMap((s) => s.figures?.indexes ?? []))].join(", ") || "none";
  const summary = results.map((r) => [
    r.op,
    r.variant,
    `${r.statements.length} (${r.statements.filter((s) => s.lines).length} explained)`,
    sum(r, "executionMs").toFixed(3),
    `${sum(r, "hit")} / ${sum(r, "read")} / ${sum(r, "dirtied")}`,
    indexes(r),
  ]);
  const statStatements = run.statStatements
    ? `pg_stat_statements ${run.statStatements.default_version} is available on this server (${run.statStatements.installed_version ? `installed, ${run.statStatements.installed_version}` : "not installed in this database"}), ` +
      `but \`shared_preload_libraries\` is ${run.preload ? `\`${run.preload}\`` : "empty"}` +
      (run.preload.includes("pg_stat_statements")
        ? ": it is loaded, but it is not used here either: its counters are per normalized statement across every client of the server, while this page wants the exact text and parameters of one call."
        : ": the extension's view only works once the library is preloaded, which takes a change of the server configuration and a restart, which this benchmark does not make. " +
          "The statements are captured in the client instead (pg's Client.query), which also gives each one's exact parameters.")
    : "pg_stat_statements is not available on this server; the statements are captured in the client (pg's Client.query).";

  const sections = results.map((r) => {
    const body = r.statements.map((s, i) => {
      const head = `**Statement ${i + 1}**${s.name ? ` (named prepared statement \`${s.name}\`)` : ""}${s.inTransaction ? " (inside the store's own transaction)" : ""}`;
      const params = s.values?.length ? `\n\nParameters: ${s.values.map((v, k) => `\`$${k + 1}\` = \`${showValue(v)}\``).join(", ")}` : "";
      const sqlBlock = `\n\n\`\`\`sql\n${s.text.trim()}\n\`\`\``;
      if (s.error) return `${head}${sqlBlock}${params}\n\nEXPLAIN failed: ${s.error.message}`;
      if (!s.lines || !s.figures) return `${head}${sqlBlock}${params}\n\nNot explained (EXPLAIN takes only SELECT, INSERT, UPDATE, DELETE, MERGE, VALUES).`;
      const f = s.figures;
      return (
        `${head}${sqlBlock}${params}\n\n` +
        `Execution ${f.executionMs.toFixed(3)} ms (planning ${f.planningMs.toFixed(3)} ms); shared buffers hit ${f.hit}, read ${f.read}, dirtied ${f.dirtied}` +
        `${f.written ? `, written ${f.written}` : ""} (planning: hit ${f.planningHit}, read ${f.planningRead}); indexes: ${f.indexes.join(", ") || "none"}.\n\n` +
        `\`\`\`\n${s.lines.join("\n")}\n\`\`\``
      );
    });
    return `### ${r.op}: ${r.variant}\n\n${body.length ? body.join("\n\n") : "No statement sent (served without a query)."}`;
  });

  const table = (header: string[], rows: string[][]) => [header, header.map(() => "---"), ...rows].map((row) => `| ${row.join(" | ")} |`).join("\n");
  return [
    "# EXPLAIN of connect-drizzle's statements",
    "",
    `\`npx tsx bench/explain.ts\`, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, PostgreSQL ${run.pgVersion}, ` +
      `${run.commit ? `commit ${run.commit}` : "no git commit"}; took ${run.seconds.toFixed(1)} s. What it does: [README.md](README.md).`,
    "",
    `A fresh schema (\`${run.schema}\`, dropped at the end) from bench/support/schema.ts; ${SESSIONS.toLocaleString("en-US")} sessions written by the store itself, ` +
      `${OWNED.toLocaleString("en-US")} of them owned (\`passport.user\`, ${USERS} users of ${OWNED / USERS} sessions each), then \`vacuum analyze\`. ` +
      `Each operation runs once on sessions of its own, with default options and with \`notify: true\` (touch on a store with \`touchAfter: 0\`); before each \`reap()\`, ${EXPIRED} sessions are made expired. ` +
      "Every statement the store sends is captured (text and parameters, from pg's Client.query) and, on the same connection just before it runs, run under " +
      "`EXPLAIN (ANALYZE, BUFFERS, VERBOSE)` in a transaction that is rolled back (a savepoint inside the store's own transaction), so the plan meets the same rows as the statement " +
      "and nothing it writes (or NOTIFYs) persists. The plans are custom plans for these parameters; a named prepared statement may switch to a generic plan after five executions " +
      "(for these key and index lookups the generic plan is the same). Buffers: the top plan node's, which include its children's.",
    "",
    statStatements,
    "",
    "## Summary",
    "",
    "Per operation, all its statements together. Buffers: shared hit / read / dirtied.",
    "",
    table(["operation", "options", "statements", "execution ms", "buffers", "indexes"], summary),
    "",
    "## Operations",
    "",
    sections.join("\n\n"),
    "",
  ].join("\n");
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});
