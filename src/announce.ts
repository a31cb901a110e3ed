import type { EventEmitter } from "node:events";
import type { StoreContext } from "./context.js";
import { describeDevice } from "./device.js";
import { databaseError, SessionStoreError } from "./errors.js";
import { deliver, type EventSeal, sessionEvent, type Announcement, type LifecycleEvent, type LifecycleEvents } from "./events.js";
import { hear, type Hearing } from "./listen.js";
import type { AnyPgDatabase } from "./options.js";
import type { EndReason } from "./records.js";
import type { EventRow, LoginRow } from "./statements.js";

/**
 * The store's lifecycle events (`created`, `ended`, `newDevice`, `bindingChanged`): whether anyone listens, emitting them,
 * and with `broadcast` sending them sealed to the other instances and opening theirs.
 */
export class Announcer {
  constructor(
    /** The store: what the events are emitted on. */
    private readonly emitter: EventEmitter,
    /** What seals this store's events and opens the others', with `broadcast`. */
    private readonly herald: EventSeal | undefined,
    private readonly s: Omit<StoreContext, "events">,
  ) {}

  /** Whether this store's events go to the other instances (`broadcast`). */
  get broadcasting(): boolean {
    return this.herald !== undefined;
  }

  /** Whether the app listens for `event` on this store. */
  listens(event: LifecycleEvent): boolean {
    return this.emitter.listenerCount(event) > 0;
  }

  /** Whether ends must return the ended rows' records: someone listens for `ended`, or `broadcast` sends it. */
  recordsEnds(): boolean {
    return this.broadcasting || this.listens("ended");
  }

  /**
   * Announces the events of one operation of this store, after its write: with `broadcast` they go to the
   * other instances first, sealed (SQL cannot seal them), in one NOTIFY statement that is not awaited: one
   * that fails is reported, and never fails the operation that already happened.
   */
  own(events: readonly Announcement[]): void {
    if (events.length === 0) return;
    if (this.herald) {
      const now = this.s.now();
      const payloads = events.map((event) => this.herald!.seal(event, now));
      void this.s.exec.query(this.s.sql.broadcast(payloads)).catch((error) => this.s.report(databaseError(error, this.s.sql.tableName, "broadcast")));
    }
    for (const { event, args } of events) this.emit(event, ...args);
  }

  /**
   * Opens the LISTEN of the other instances' events on `db` (the store's `listen`, else its `db`), proven
   * by a probe NOTIFY sent through the store's database every {@link BROADCAST_PROBE_INTERVAL}; undefined on a
   * driver that cannot LISTEN (the store then emits only its own events).
   */
  listen(db: AnyPgDatabase): Hearing | undefined {
    const { sql, exec, options } = this.s;
    return hear(db, sql.eventsChannel, {
      name: "`broadcast`",
      meanwhile: "other instances' events are missed until it hears again",
      notify: (payload) => exec.query(sql.notify(payload, sql.eventsChannel)),
      deadline: Math.min(options.timeout, BROADCAST_PROBE_INTERVAL),
      interval: BROADCAST_PROBE_INTERVAL,
      onMessage: (payload) => this.heard(payload),
      onLive: () => {},
      onDeaf: () => {},
      report: (error) => this.s.report(error),
      probeError: (error) => databaseError(error, sql.tableName, "the `broadcast` NOTIFY probe"),
      lossy: true,
    });
  }

  /** Announces `ended` for each row an end returned with its record, after `first` (the events that made it end). */
  ended(rows: readonly EventRow[], reason: EndReason, first: readonly Announcement[] = []): void {
    this.own([...first, ...endedEvents(rows, reason)]);
  }

  /** A payload heard on the `broadcast` channel: emitted if another instance sealed it, reported if it was refused. */
  private heard(payload: string): void {
    const opened = this.herald!.open(payload, this.s.now());
    if (typeof opened === "string")
      this.s.report(new SessionStoreError("UNTRUSTED_EVENT", `an event heard on the \`broadcast\` channel was dropped, never emitted: ${opened}`));
    else if (opened) this.emit(opened.event, ...opened.args);
  }

  /**
   * After a login write committed: the sessions it evicted leave every instance's cache; returned are
   * their `ended` events, and the new session's `newDevice` when none of the user's recent rows from its
   * IP was of its browser family and OS.
   */
  async loggedIn(row: LoginRow, session: EventRow): Promise<Announcement[]> {
    const events = await this.afterEvictions([], row.evicted);
    if (row.seen === undefined) return events;
    const device = describeDevice(session.user_agent);
    const seen: Array<string | null> = JSON.parse(row.seen);
    if (!seen.some((ua) => describeDevice(ua) === device)) events.push({ event: "newDevice", args: [sessionEvent(session, true)] });
    return events;
  }

  /**
   * After a statement that made sessions live (`keys`) under `maxSessionsPerUser` committed: they and the
   * sessions it evicted (`evicted`, the JSON array of their keys and records) leave every instance's cache
   * ({@link StoreContext.changed}); returned are the evicted ones' `ended` events.
   */
  async afterEvictions(keys: readonly string[], evicted: string | undefined): Promise<Announcement[]> {
    const rows: Array<{ key: string } & EventRow> = evicted === undefined ? [] : JSON.parse(evicted);
    await this.s.changed([...keys, ...rows.map((r) => r.key)]);
    return endedEvents(rows, "evicted");
  }

  /**
   * Emits a lifecycle event: of a change this store made (`local: true`), or of one heard from another
   * instance (`local: false`, with `broadcast`). The one place they are emitted from. A listener that
   * throws fails neither the operation nor the other listeners: its error is reported (see {@link deliver}).
   */
  private emit<E extends LifecycleEvent>(event: E, ...args: LifecycleEvents[E]): void {
    deliver(this.emitter, event, args, (error) => this.s.report(error));
  }
}

/** The `ended` events of the rows an end returned with their records. */
function endedEvents(rows: readonly EventRow[], reason: EndReason): Announcement[] {
  return rows.map((row) => ({ event: "ended", args: [{ ...sessionEvent(row, true), reason }] }));
}

/** How often `broadcast` proves its LISTEN still hears the database, ms (see listen.ts `hear`). */
const BROADCAST_PROBE_INTERVAL = 30_000;
