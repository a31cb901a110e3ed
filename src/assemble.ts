import type { EventEmitter } from "node:events";
import { Announcer } from "./announce.js";
import { Binding } from "./binding.js";
import { coalesceLimit, Ends, lookups, touches } from "./coalesce.js";
import { ReadCache } from "./cache.js";
import type { StoreContext } from "./context.js";
import { checkCanCap, isTrue, profileOf } from "./driver.js";
import { Executor } from "./executor.js";
import { InvalidationSender, Invalidations } from "./invalidation.js";
import { databaseError, schemaOutdated, standbyGiven, tableMissing } from "./errors.js";
import { EventSeal } from "./events.js";
import { keyDeriver, newHandle } from "./hash.js";
import type { Loaded } from "./loaded.js";
import type { Hearing } from "./listen.js";
import { resolveOptions, type SessionStoreOptions } from "./options.js";
import { reap, Reaper, type ReapResult } from "./reaper.js";
import { Records } from "./records.js";
import { Replicas } from "./replicas.js";
import { quotedName } from "./schema.js";
import { Sealer } from "./seal.js";
import { Statements } from "./statements.js";
import { traced } from "./trace.js";
import { ROTATED_AWAY, RotatedAway, Rotations } from "./rotate.js";
import { Writes } from "./writes.js";

/**
 * What the store lends its parts: its own clock, eviction, reporting and running (methods a test's
 * subclass may override, so the parts call them through the store), and the emitter its events go out on.
 */
export type StoreHooks = Pick<StoreContext, "now" | "evict" | "report" | "run" | "userIdOf"> & { readonly emitter: EventEmitter };

/** A store's parts, built once from its options by {@link assemble}. */
export interface StoreParts {
  /** What the parts share: options, statements, executor, keys, cache, sealer, events. */
  readonly s: StoreContext;
  /** Reading, saving, touching and ending a session's row. */
  readonly writes: Writes;
  /** The records API: list, count, revoke, extend. */
  readonly records: Records;
  /** New ids for sessions, and re-authentications. */
  readonly rotations: Rotations;
  /** A signed-in session used from another device (`onBindingChange`). */
  readonly binding: Binding;
  /** One reaper round now, bounded by the store's `timeout`. */
  reap(signal?: AbortSignal): Promise<ReapResult>;
  /** The table and its columns are there, and the LISTENs of `cache` and `broadcast` hear (see the store's `ready`). */
  ready(): Promise<void>;
  /** Stops the reaper, the LISTEN connections and every timer. */
  close(): Promise<void>;
}

/**
 * Builds a store's parts from its options, and starts what runs on its own: the reaper's timer, the
 * cache's LISTEN and, with `broadcast`, the LISTEN of the other instances' events.
 * @throws TypeError when an option is invalid, or `maxSessionsPerUser` cannot be kept on the database
 */
export function assemble(input: SessionStoreOptions, hooks: StoreHooks): StoreParts {
  const options = resolveOptions(input);
  const { db, table, absoluteTimeout, notify, retainEnded, versioned, timeout, prepare, replicaReads } = options;
  const driver = profileOf(db);
  if (options.maxSessionsPerUser !== undefined) checkCanCap(db);
  const applied = replicaReads?.window === 0;
  const sql = new Statements(table, { absoluteTimeout, retainEnded, versioned, applied });
  const exec = new Executor(db, { timeout, prepare });
  const replicas = replicaReads ? new Replicas(exec, options.replicas, { ...replicaReads, prepare, report: (error) => hooks.report(error) }) : undefined;
  // Every change this instance makes or hears of also keeps the session's lookups off the replicas.
  const evict = (keys: readonly string[]) => {
    replicas?.pin(keys);
    hooks.evict(keys);
  };
  // Every instance's cache hears of a committed change from one NOTIFY per batch of changes (with `notify`).
  const sender = notify ? new InvalidationSender(driver, exec, sql.invalidate()) : undefined;
  const invalidations = sender && new Invalidations((keys) => sender.send(keys));
  const changed = async (keys: readonly string[]) => {
    if (keys.length === 0) return;
    evict(keys);
    await invalidations?.announce(keys);
  };
  const away = new RotatedAway(options.rotationGrace);
  const cache = options.cache
    ? new ReadCache<Loaded>(options.cache, {
        listenDb: options.listen ?? db,
        channel: sql.channel,
        deadline: timeout,
        notify: (payload) => exec.query(sql.notify(payload)),
        report: (error) => hooks.report(error),
        probeError: (error) => databaseError(error, sql.tableName, "the cache's NOTIFY probe"),
        // Another instance rotated a session away from this key: requests in flight here must not send it back.
        heard: (key) => (key.startsWith(ROTATED_AWAY) ? away.add([key.slice(ROTATED_AWAY.length)]) : evict([key])),
      })
    : undefined;
  cache?.start();
  const shared: Omit<StoreContext, "events"> = {
    options,
    sql,
    exec,
    lookups: lookups(exec, sql, coalesceLimit(driver)),
    ends: new Ends(exec, sql, changed, coalesceLimit(driver)),
    touches: touches(exec, sql, Boolean(options.encrypt), changed, coalesceLimit(driver)),
    keysOf: keyDeriver(options.secrets),
    cache,
    replicas,
    sealer: options.encrypt && new Sealer(options.encrypt),
    now: () => hooks.now(),
    evict,
    report: (error) => hooks.report(error),
    run: (action, operation, detail) => hooks.run(action, operation, detail),
    changed,
    write: (statement, idempotent) => exec.query<any>(statement, idempotent, (rows) => changed(rows.map((row: { key: string }) => row.key))),
    userIdOf: (session) => hooks.userIdOf(session),
  };
  // This store's id among the instances on the table: its own `broadcast` NOTIFYs are skipped by it.
  const herald = options.broadcast ? new EventSeal(options.secrets, sql.tableName, newHandle()) : undefined;
  const events = new Announcer(hooks.emitter, herald, shared);
  const s: StoreContext = { ...shared, events };
  const reapNow = (signal?: AbortSignal) =>
    traced("reap", sql.tableName, undefined, () =>
      reap({ db, table, retainEnded, batchSize: options.reaper ? options.reaper.batchSize : undefined, signal, timeout }),
    );
  const reaper = options.reaper
    ? new Reaper(reapNow, options.reaper, {
        onReap: (result) => hooks.emitter.emit("reap", result),
        onError: (error) => hooks.report(error),
      })
    : undefined;
  reaper?.start();
  // With `broadcast`, hear the other instances' events (undefined on a driver that cannot LISTEN).
  const hearing: Hearing | undefined = options.broadcast ? events.listen(options.listen ?? db) : undefined;
  const rotations = new Rotations(s, away);
  const writes = new Writes(s, rotations);
  return {
    s,
    writes,
    rotations,
    records: new Records(s),
    binding: new Binding(s, writes),
    reap: reapNow,
    async ready() {
      const rows = await exec.query<{ schema: string | null; name: string; column: string | null; standby: unknown }>(sql.catalog(), true);
      const found = quotedName(rows[0]?.schema ?? "", rows[0]?.name ?? "");
      if (isTrue(rows[0]?.standby)) throw standbyGiven();
      const columns = new Set(rows.map((row) => row.column));
      if (!rows.some((row) => row.column !== null)) throw tableMissing(found);
      const missing = sql.columnNames().filter((column) => !columns.has(column));
      if (missing.length > 0) throw schemaOutdated(found, missing);
      // A cache or `broadcast` that cannot hear the database fails the start, not silently later.
      // Replicas are asked who they are, so that the first lookups may read them (never a failure).
      await Promise.all([cache?.proven(), hearing?.proven(), replicas?.warm()]);
    },
    async close() {
      await reaper?.stop();
      await cache?.close();
      await hearing?.close();
      await sender?.close();
    },
  };
}
