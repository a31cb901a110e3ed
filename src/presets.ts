/*
 * Named settings of the store's two clocks (`idleTimeout`, `absoluteTimeout`), taken from a standard, to
 * spread into the store's options: `new SessionStore({ db, ...AAL2 })`. Each is frozen, and each value is
 * the standard's bound itself, so a preset is as long as the standard allows and no longer.
 */

/**
 * The session timeouts of NIST SP 800-63B-4 (2025) at authentication assurance level 2 (multi-factor):
 * §2.2.3, with the two timeouts as §5.2 defines them. Spread it into the store's options.
 *
 * The overall timeout is the store's `absoluteTimeout`, counted from the session's creation (a login
 * creates a new session) or its latest re-authentication: `markAuthenticated` restarts both clocks, as
 * §5.2 says (`restartOnReauthentication`, on by default). `rotateSession` and `renewAfter` give a new id and
 * keep the clocks; express-session's `regenerate` ends the session, and the one the app fills after it
 * starts its clocks again.
 * @example new SessionStore({ db, ...AAL2 })
 */
export const AAL2 = Object.freeze({
  /**
   * 1 hour. NIST SP 800-63B-4 §2.2.3: "The inactivity timeout SHOULD be no more than 1 hour."
   */
  idleTimeout: 3_600_000,
  /**
   * 24 hours. NIST SP 800-63B-4 §2.2.3: "A definite reauthentication overall timeout SHALL be established,
   * which SHOULD be no more than 24 hours at AAL2."
   */
  absoluteTimeout: 86_400_000,
} as const);

/**
 * The session timeouts of NIST SP 800-63B-4 (2025) at authentication assurance level 3 (hardware-based,
 * phishing-resistant): §2.3.3, with the two timeouts as §5.2 defines them. Spread it into the store's
 * options. The overall timeout counts as {@link AAL2}'s does.
 * @example new SessionStore({ db, ...AAL3 })
 */
export const AAL3 = Object.freeze({
  /**
   * 15 minutes. NIST SP 800-63B-4 §2.3.3: "The inactivity timeout SHOULD be no more than 15 minutes."
   */
  idleTimeout: 900_000,
  /**
   * 12 hours. NIST SP 800-63B-4 §2.3.3: "At AAL3, the overall timeout for reauthentication SHALL be no
   * more than 12 hours."
   */
  absoluteTimeout: 43_200_000,
} as const);
