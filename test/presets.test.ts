import { describe, expect, it } from "vitest";
import { AAL2, AAL3, SessionStore } from "../src/index.js";
import { drivers, sessionData, type TestDb, useTestDb } from "./support/db.js";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;

describe("timeout presets", () => {
  it("are NIST SP 800-63B-4's bounds exactly: AAL2 1 hour idle and 24 hours overall, AAL3 15 minutes and 12 hours", () => {
    expect(AAL2).toStrictEqual({ idleTimeout: HOUR, absoluteTimeout: 24 * HOUR });
    expect(AAL3).toStrictEqual({ idleTimeout: 15 * MINUTE, absoluteTimeout: 12 * HOUR });
  });

  it("are frozen: no app can loosen the shared constant for every other user of it", () => {
    for (const preset of [AAL2, AAL3]) {
      expect(Object.isFrozen(preset)).toBe(true);
      expect(() => {
        (preset as { idleTimeout: number }).idleTimeout = 24 * HOUR;
      }).toThrow(TypeError);
    }
    expect(AAL2.idleTimeout).toBe(HOUR);
  });
});

describe.each(drivers)("a store built from a preset on %s", (driver) => {
  let t: TestDb;
  useTestDb(driver, (db) => {
    t = db;
  });

  describe.each([
    ["AAL2", AAL2],
    ["AAL3", AAL3],
  ] as const)("%s", (_, preset) => {
    // The cookie would keep the session for 30 days: only the preset's clocks end it.
    const cookieLife = 30 * 24 * HOUR;
    const store = () => new SessionStore({ db: t.db, table: t.table, reaper: false, ...preset });

    it("ends a session left idle past the preset's inactivity bound, and not before", async () => {
      const s = store();
      await s.set("idle", sessionData(cookieLife, { passport: { user: "ann" } }));
      await t.age(preset.idleTimeout - MINUTE);
      expect(await s.get("idle")).not.toBeNull();
      await t.age(MINUTE + 1);
      expect(await s.get("idle")).toBeNull();
      const [record] = await s.list({ userId: "ann", status: "expired" });
      // Ended by the idle clock, long before the overall one.
      expect(record!.absoluteExpiresAt!.getTime() - record!.createdAt.getTime()).toBe(preset.absoluteTimeout);
    });

    it("ends a session in use past the preset's overall bound, whatever the activity", async () => {
      const s = store();
      await s.set("busy", sessionData(cookieLife, { passport: { user: "ann" } }));
      // A request every half idle timeout: the idle clock never runs out.
      const step = preset.idleTimeout / 2;
      let elapsed = 0;
      while (elapsed + step < preset.absoluteTimeout) {
        await t.age(step);
        elapsed += step;
        const session: any = await s.get("busy");
        expect(session, `alive after ${elapsed / MINUTE} minutes`).not.toBeNull();
        session.cookie.expires = new Date(Date.now() + cookieLife).toISOString();
        await s.touch("busy", session);
      }
      // A minute short (the database's clock runs on while the loop does): alive, then dead.
      await t.age(preset.absoluteTimeout - elapsed - MINUTE);
      expect(await s.get("busy")).not.toBeNull();
      await t.age(MINUTE + 1);
      expect(await s.get("busy")).toBeNull();
      expect(await s.count({ userId: "ann", status: "expired" })).toBe(1);
    });
  });
});
