import { isTrue } from "./driver.js";
import { Executor, type Shape } from "./executor.js";
import { SessionStoreError, safeCause } from "./errors.js";
import type { AnyPgDatabase } from "./options.js";
import { replicaIdentity, walPosition } from "./sql/replicas.js";

/** Where the reads of a store went, since it started (`SessionStore.replicaStats()`). */
export interface ReplicaStats {
  /** Lookups a replica answered. */
  replica: number;
  /** Lookups the primary answered (no replica fit to answer, or one had no live session to return). */
  primary: number;
  /** Lookups a replica was asked but could not answer: it was behind, failed or did not answer in time. */
  fellBack: number;
}

/** One replica: how to reach it, and what the store knows of it. */
interface Replica {
  readonly index: number;
  readonly exec: Executor;
  /** Its name as its primary knows it (see replicaIdentity), once asked; undefined until then. */
  name: string | undefined;
  /** Skipped until then (performance.now()): it failed, or was found not to be a standby. */
  downUntil: number;
  /** Consecutive failures: how long the next wait is. */
  failures: number;
  /** An identity probe is running. */
  probing: boolean;
  /** Skipped until a WAL position sampled after this time: it was behind the last one. */
  behindSince: number;
}

/** A WAL position of the primary and when it was asked for. */
interface Floor {
  lsn: string;
  /** performance.now() when the statement was sent: every end acknowledged before it is at or before `lsn`. */
  sentAt: number;
  /** The names of the standbys the primary waits for at each commit (window 0 only). */
  synchronous: ReadonlySet<string>;
}

/** While lookups wait for a sample after a session changed, how often the primary is sampled at most. */
const PINNED_SAMPLE_MS = 50;
/** Longest wait before a failed replica is tried again. */
const MAX_DOWN_MS = 30_000;
/** With window 0, how old the primary's word on its synchronous standbys may be. */
const SYNC_STATE_MAX_AGE_MS = 1_000;

/**
 * Session lookups (`get`) from the read replicas of a `withReplicas` database, never returning a session
 * that ended longer ago than the `replicaReads` window. Everything else goes to the primary.
 *
 * A replica is trusted only to say "this session is live", and only when it has replayed the primary's
 * WAL up to a position (the floor) sampled after every end it must show: an answer of "no such session"
 * or "expired" is asked of the primary again (the replica may not have the login, or the renewal, yet),
 * and, with a window, every lookup of a session this instance wrote or ended (or heard ended) since the
 * last sample.
 *
 * - Window 0 (the default): only the standbys the primary reports as synchronous are read, and every
 *   write commits once they applied it (remote_apply), so none of them returns a session as it was
 *   before a write or end resolved, on any instance (nothing needs pinning).
 * - Window W > 0: any replica that replayed a floor sampled at most W ms ago: an end resolved on another
 *   instance may still be found live for up to W ms (or until this instance hears of it, with `cache`).
 *
 * A replica that fails, or does not answer within its timeout, is skipped (with a growing wait, up to
 * 30 s) and asked who it is before it is read again; one that is behind is skipped until the next sample.
 */
export class Replicas {
  private readonly replicas: Replica[];
  private floor: Floor | undefined;
  private sampling = false;
  private next = 0;
  /** Keys changed by this instance (or heard changed), by when: read from the primary until a later floor. */
  private readonly pinned = new Map<string, number>();
  private allPinnedAt = Number.NEGATIVE_INFINITY;
  private readonly counts: ReplicaStats = { replica: 0, primary: 0, fellBack: 0 };

  constructor(
    private readonly primary: Executor,
    replicas: readonly AnyPgDatabase[],
    private readonly settings: { window: number; timeout: number; prepare: boolean; report(error: Error): void },
  ) {
    this.replicas = replicas.map((db, index) => ({
      index,
      exec: new Executor(db, { timeout: settings.timeout, prepare: settings.prepare, retry: false }),
      name: undefined,
      downUntil: 0,
      failures: 0,
      probing: false,
      behindSince: Number.NEGATIVE_INFINITY,
    }));
  }

  /**
   * Samples the primary and asks every replica who it is, so that lookups may read them from the first
   * one on (`ready()` awaits it). Never fails: a replica that does not answer is skipped as always.
   */
  async warm(): Promise<void> {
    await Promise.all([this.sample(), ...this.replicas.map((replica) => this.probe(replica))]);
  }

  /** Where lookups went so far. */
  stats(): ReplicaStats {
    return { ...this.counts };
  }

  /**
   * Sessions this instance is changing, has changed or heard changed (`*`: all): with a window, their
   * lookups go to the primary until a floor sampled after now has been read. With window 0 nothing is
   * pinned: every write resolves only once the synchronous standbys, the only ones read, applied it.
   */
  pin(keys: readonly string[]): void {
    if (this.settings.window === 0) return;
    const now = performance.now();
    for (const key of keys) {
      if (key === "*") this.allPinnedAt = now;
      else this.pinned.set(key, now);
    }
  }

  /**
   * The live row of a session (`keys`: its row keys), from a replica when one may answer, else from the
   * primary: `onReplica` is the lookup as a replica runs it (with `fresh`), `onPrimary` as the primary does.
   */
  async read<Row>(keys: readonly string[], onReplica: Shape, onPrimary: Shape, values: Record<string, unknown>): Promise<Row[]> {
    const replica = this.choose(keys);
    if (replica !== undefined) {
      const floor = this.floor!;
      try {
        const rows = await replica.exec.run<Row & { fresh?: unknown }>(onReplica, { ...values, floor: floor.lsn });
        this.up(replica);
        if (rows.length > 0 && isTrue(rows[0]!.fresh)) {
          this.counts.replica++;
          return rows;
        }
        if (rows.length > 0) {
          replica.behindSince = floor.sentAt;
          this.counts.fellBack++;
        }
      } catch (error) {
        this.down(replica, error);
        this.counts.fellBack++;
      }
    }
    this.counts.primary++;
    return this.primary.run<Row>(onPrimary, values);
  }

  /** The replica to read `keys` from now, or undefined for the primary. Starts a sample when one is due. */
  private choose(keys: readonly string[]): Replica | undefined {
    const now = performance.now();
    const { window } = this.settings;
    const floor = this.floor;
    if (!this.sampling && (floor === undefined || now - floor.sentAt >= Math.max(window / 2, window === 0 ? 500 : 10))) void this.sample();
    if (floor === undefined || now - floor.sentAt > (window === 0 ? SYNC_STATE_MAX_AGE_MS : window)) return undefined;
    if (this.allPinnedAt >= floor.sentAt || keys.some((key) => (this.pinned.get(key) ?? Number.NEGATIVE_INFINITY) >= floor.sentAt)) {
      // A session changed since the last sample: an earlier sample, so its next lookups may read a replica.
      if (!this.sampling && now - floor.sentAt >= PINNED_SAMPLE_MS) void this.sample();
      return undefined;
    }
    for (let tried = 0; tried < this.replicas.length; tried++) {
      const replica = this.replicas[(this.next = (this.next + 1) % this.replicas.length)]!;
      if (replica.downUntil > now || replica.behindSince >= floor.sentAt) continue;
      if (replica.name === undefined) {
        void this.probe(replica);
        continue;
      }
      if (window === 0 && !floor.synchronous.has(replica.name)) continue;
      return replica;
    }
    return undefined;
  }

  /** Asks the primary for its WAL position (and, with window 0, its synchronous standbys): the next floor. */
  private async sample(): Promise<void> {
    this.sampling = true;
    const sentAt = performance.now();
    try {
      const withStandbys = this.settings.window === 0;
      const [row] = await this.primary.query<{ lsn: string; standbys?: string; names?: string }>(walPosition(withStandbys), true);
      if (row === undefined) return;
      this.floor = { lsn: row.lsn, sentAt, synchronous: withStandbys ? synchronousStandbys(row.standbys ?? "[]", row.names ?? "") : new Set() };
      for (const [key, at] of this.pinned) if (at < sentAt) this.pinned.delete(key);
    } catch {
      // No floor: lookups go to the primary, whose own errors the requests see.
    } finally {
      this.sampling = false;
    }
  }

  /** Asks a replica who it is; it is read again only if it answers and is a standby. */
  private async probe(replica: Replica): Promise<void> {
    if (replica.probing) return;
    replica.probing = true;
    try {
      const [row] = await replica.exec.query<{ standby: unknown; name: string }>(replicaIdentity());
      if (!isTrue(row?.standby)) throw new Error("it is not a standby (pg_is_in_recovery() is false): a promoted or misconfigured replica");
      replica.name = row!.name;
      this.up(replica);
    } catch (error) {
      this.down(replica, error);
    } finally {
      replica.probing = false;
    }
  }

  private up(replica: Replica): void {
    replica.failures = 0;
  }

  /** Skips a replica that failed, for a wait that doubles with each failure in a row; it is asked who it is again after. */
  private down(replica: Replica, error: unknown): void {
    replica.failures++;
    replica.name = undefined;
    replica.downUntil = performance.now() + Math.min(MAX_DOWN_MS, 1_000 * 2 ** (replica.failures - 1));
    if (replica.failures === 1) {
      this.settings.report(
        new SessionStoreError(
          "UNAVAILABLE",
          `read replica ${replica.index + 1} of ${this.replicas.length} failed (${safeCause(error).message}); ` +
            "lookups go to the primary until it answers again",
          { cause: safeCause(error) },
        ),
      );
    }
  }
}

/**
 * The standbys every commit waits for, from pg_stat_replication's rows and `synchronous_standby_names`:
 * those in state `sync`, and those in state `quorum` when the quorum (`ANY k (...)`) needs all of them.
 * A standby in `potential` or `async` state, or one of a quorum that a commit may skip, is not one.
 */
export function synchronousStandbys(standbys: string, names: string): Set<string> {
  const rows = JSON.parse(standbys) as Array<{ name: string; state: string | null }>;
  const sync = new Set(rows.filter((row) => row.state === "sync").map((row) => row.name));
  const quorum = rows.filter((row) => row.state === "quorum").map((row) => row.name);
  const needed = Number(/^\s*any\s+(\d+)/i.exec(names)?.[1] ?? Number.NaN);
  if (quorum.length > 0 && quorum.length <= needed) for (const name of quorum) sync.add(name);
  return sync;
}
