/**
 * A pg Pool whose clients send connect-drizzle's session lookups as their first branch only: the lookup
 * under the id's current key, as the store sent it before rotation, without the branch that looks under
 * the key a session was rotated away from (src/sql/lookups.ts: `get`, a `union all` of two `limit 1`
 * selects, the second run only when the first found nothing; `getMany`, a `union all` whose two halves
 * always both run). Everything else the store does (hashing, coalescing, parsing, its other statements) is
 * unchanged, so a store on this pool against one on a plain pool isolates what the second branch costs.
 * The first branch keeps its `null::boolean as prior` column (the store reads it), so a row found comes back
 * exactly as before; an id rotated away from finds nothing, as before rotation existed.
 */
import pg from "pg";

/** The rewritten statement of a lookup: its first branch, and how many of the values it uses. */
interface FirstBranch {
  name: string | undefined;
  text: string;
  params: number;
}

/** `select * from ((FIRST limit 1) union all (SECOND limit 1)) as found limit 1` (get). */
const GET = /^select \* from \(\((select .*? limit 1)\)\s+union all \(select .*\)\) as found\s+limit 1$/s;
/** `FIRST union all SECOND` (getMany). */
const MANY = /^(select .*?)\s+union all select .*$/s;

/** The first branch of a lookup's text, or undefined for any other statement. */
function firstBranch(text: string): string | undefined {
  if (!/^select\b/.test(text) || !text.includes("union all")) return undefined;
  const found = GET.exec(text)?.[1] ?? MANY.exec(text)?.[1];
  // A lookup of a shape this does not know would be measured with both branches: fail instead.
  if (found === undefined) throw new Error(`first-branch pool: a lookup of an unknown shape (src/sql/lookups.ts changed?): ${text.slice(0, 300)}`);
  return found;
}

/**
 * Wraps the `query` of every client `pool` connects from now on (call before its first query): with
 * `rewrite`, lookups go as their first branch (as named prepared statements of their own when the store
 * names them); without, every statement passes through the same wrapper unchanged, so that both pools of
 * a comparison pay for a wrapper. `rewritten()`: the lookups rewritten so far.
 */
export function wrapLookups(pool: pg.Pool, rewrite: boolean): { rewritten(): number } {
  const cache = new Map<string, FirstBranch | null>();
  let rewritten = 0;
  pool.on("connect", (client) => {
    client.query = function (this: pg.Client, ...args: unknown[]) {
      const config = args[0] as { name?: string; text?: string; values?: unknown[] } | string;
      const text = typeof config === "string" ? config : config?.text;
      let first = text === undefined ? null : cache.get(text);
      if (first === undefined && text !== undefined) {
        const branch = firstBranch(text);
        // The first branch's parameters are $1..$n, numbered before the second branch's.
        const params = branch ? Math.max(0, ...[...branch.matchAll(/\$(\d+)/g)].map((m) => Number(m[1]))) : 0;
        first = branch ? { name: typeof config === "object" && config.name ? `${config.name}_first` : undefined, text: branch, params } : null;
        cache.set(text, first);
      }
      if (rewrite && first) {
        rewritten++;
        const values = typeof config === "string" ? (args[1] as unknown[]) : config.values;
        const sent = { ...(first.name ? { name: first.name } : {}), text: first.text, values: values?.slice(0, first.params) };
        args = typeof config === "string" ? [sent, ...args.slice(2)] : [sent, ...args.slice(1)];
      }
      // Through the prototype at call time, as support/statements.ts does.
      return (pg.Client.prototype.query as (...a: unknown[]) => unknown).apply(this, args);
    } as typeof client.query;
  });
  return { rewritten: () => rewritten };
}
