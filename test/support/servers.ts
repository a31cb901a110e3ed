import { readFileSync } from "node:fs";
import pg from "pg";

/*
 * What the tests that run servers of their own (test/support/cluster.ts, autofailover.ts, test/ha) share:
 * one statement on a fresh connection, a bounded wait that says what it waited for, log tails, and
 * whether a process is alive.
 */

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** The last `lines` lines of a file, headed by `label`; says so when there is no such file. */
export function tailOf(file: string, label: string, lines = 30): string {
  try {
    const text = readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
    return `--- ${label} (${file}), last ${lines} lines:\n${text}`;
  } catch {
    return `--- ${label}: no ${file}`;
  }
}

/** One statement on a fresh connection (bounded: 3 s to connect, 10 s to answer), closed after. */
export async function sqlOn(url: string, text: string, params: unknown[] = []): Promise<any[]> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: 3_000,
    query_timeout: 10_000,
    application_name: "connect-drizzle ha support",
  });
  client.on("error", () => {});
  try {
    await client.connect();
    const result: any = await client.query(text, params);
    return Array.isArray(result) ? (result.at(-1)?.rows ?? []) : result.rows;
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Polls `check` until it returns true; a check that throws counts as not yet. Throws after `timeoutMs`
 * with what it waited for, the last error, and `logs()`.
 */
export async function until(what: string, timeoutMs: number, logs: () => string, check: () => Promise<boolean>, every = 100): Promise<void> {
  const started = Date.now();
  let last: unknown;
  for (;;) {
    try {
      if (await check()) return;
      last = undefined;
    } catch (error) {
      last = error;
    }
    if (Date.now() - started > timeoutMs) {
      const why = last === undefined ? "" : ` (last error: ${(last as Error).message})`;
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${why}\n${logs()}`);
    }
    await new Promise((resolve) => setTimeout(resolve, every));
  }
}
