import type { SessionData } from "express-session";
import type { StoreContext } from "./context.js";
import { describeDevice } from "./device.js";
import { bindingEvent, type Announcement } from "./events.js";
import { loadedAs, requestMetadata, withLoaded } from "./loaded.js";
import type { EventRow } from "./statements.js";
import type { Writes } from "./writes.js";

/** A change found by {@link Binding.check}: whether the request loses its session, and the write it costs. */
interface Change {
  /** With `onBindingChange: "end"`: the session ends, and the request must go on without it. */
  ends: boolean;
  /** The end, or the record of the new device, with its events announced once it is done. */
  done: Promise<unknown>;
}

/**
 * The client binding of a signed-in session (OWASP's session management: a session whose client changes
 * mid-session is reported or ended; the `onBindingChange` option): the request that got a session is
 * compared, in memory, with the device its row recorded, by browser family and operating system
 * ({@link describeDevice}), so that a browser's update is no change. Only a change costs a write: the
 * end, or the row's new device (which the request's touch would have written anyway).
 */
export class Binding {
  /** The writes of changes still in flight, by session id: the store's next call on that id waits for its own. */
  private readonly inFlight = new Map<string, Promise<void>>();

  constructor(
    private readonly s: StoreContext,
    private readonly writes: Writes,
  ) {}

  /**
   * What a get, save or touch of `sid` waits for first: the write of its change, while in flight, so that
   * the next request with an ended session's cookie never reads it live, and the request's own save
   * comes after the record of its device. Never rejects.
   */
  pending(sid: string): Promise<void> | undefined {
    return this.inFlight.get(sid);
  }

  /**
   * express-session's request got its session (the store's createSession; `data` is what `get` returned).
   * With `onBindingChange: "end"`, a changed session is given up before the app sees it: the request gets
   * express-session's new, empty session (`generate`), and `data` is emptied so that express-session sees
   * nothing to save, as for a visitor who sent no cookie. A failed write is reported, never the request's.
   */
  created(req: any, data: SessionData, session: SessionData, generate: (req: unknown) => void): SessionData {
    const change = this.check(req.sessionID, session);
    if (!change) return session;
    change.done.catch((error) => this.s.report(error));
    if (!change.ends) return session;
    for (const key of Object.keys(data)) if (key !== "cookie") delete (data as unknown as Record<string, unknown>)[key];
    generate(req);
    return req.session;
  }

  /**
   * Checks `session` (loaded by this store under `sid`) against the device its row recorded: undefined
   * when it is the same device, the session has no user, or either user agent is unknown (a request
   * without one records none, so it would report the same change on every request).
   */
  check(sid: string, session: SessionData): Change | undefined {
    const loaded = loadedAs(session, sid);
    if (!loaded || loaded.ua === null) return undefined;
    const { ua, ip } = requestMetadata(session);
    if (ua === null || ua === loaded.ua || describeDevice(ua) === describeDevice(loaded.ua)) return undefined;
    if (this.writes.ownerRead(loaded) === null) return undefined;
    const was = loaded.ua;
    const events = (rows: EventRow[]): Announcement[] => rows.flatMap((row) => bindingEvent(row, was, ua, ip, true));
    const ends = this.s.options.onBindingChange === "end";
    const done = this.s.run("binding", async () => {
      if (ends) return void (await this.writes.end(sid, "binding", events));
      const rows = await this.s.write<{ key: string } & EventRow>(this.s.sql.rebind([loaded.key], ua, ip, was));
      // The row records this device now: the request's touch has nothing more to write for it.
      if (rows.length > 0 && loadedAs(session, sid) === loaded) withLoaded(session, { ...loaded, ua, ip: ip ?? loaded.ip });
      this.s.events.own(events(rows));
    });
    const settled = done.then(
      () => {},
      () => {},
    );
    this.inFlight.set(sid, settled);
    void settled.then(() => {
      if (this.inFlight.get(sid) === settled) this.inFlight.delete(sid);
    });
    return { ends, done };
  }
}
