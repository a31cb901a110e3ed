import { createHash } from "node:crypto";
import { entityKind, is, Placeholder, sql, type SQL } from "drizzle-orm";
import { PgDialect } from "drizzle-orm/pg-core";
import { failureOf, pgCode, safeCause, SessionStoreError } from "./errors.js";
import type { AnyPgDatabase } from "./options.js";

/** The drivers the store knows by their client's shape (no driver is imported here). */
type DriverKind = "pglite" | "node-postgres" | "postgres.js" | "other";

/**
 * How LISTEN works on a driver: `reliable` on a connection of its own that says when it was lost (the
 * read cache relies on that: it must know when it may have missed a NOTIFY); `lossy` where the driver
 * listens again by itself but never says it missed anything (postgres.js: enough for lifecycle events);
 * `none` where no connection stays open to listen on (drizzle's HTTP drivers, unknown clients).
 */
type ListenSupport = "reliable" | "lossy" | "none";

/**
 * What the store can do on a database's driver, in one place: every module that depends on the driver
 * asks this profile ({@link profileOf}) rather than the client.
 */
export interface DriverProfile {
  readonly kind: DriverKind;
  /** The driver's client (`db.$client`). */
  readonly client: any;
  /** drizzle's entry point for the driver (`drizzle-orm/pg-proxy`), to name it in messages. */
  readonly name: string;
  readonly listen: ListenSupport;
  /**
   * One connection, so that a statement outside an open transaction would wait for it forever: PGlite
   * (in-process), a lone node-postgres `Client`, or a pool of `max: 1`.
   */
  readonly singleConnection: boolean;
  /**
   * One node-postgres `Client`, not a pool: drizzle runs a transaction there on that connection itself,
   * so every other statement sent meanwhile runs inside the transaction, and is rolled back with it.
   */
  readonly loneClient: boolean;
  /**
   * Whether a transaction can be held open across statements (`db.transaction(callback)`): not on drizzle's
   * HTTP drivers (each statement is a request of its own), nor once `db.transaction` was seen to refuse
   * ({@link refusesTransactions}).
   */
  readonly interactiveTransactions: boolean;
}

const LISTEN: Record<DriverKind, ListenSupport> = { pglite: "reliable", "node-postgres": "reliable", "postgres.js": "lossy", other: "none" };

/** The profile of a database's driver (see {@link DriverProfile}). */
export function profileOf(db: AnyPgDatabase): DriverProfile {
  const client: any = (db as any).$client;
  const kind = kindOf(client);
  const lone = loneClient(client, kind);
  return {
    kind,
    client,
    name: driverName(db),
    listen: LISTEN[kind],
    // PGliteWorker too, by its shape; pg.Pool ({ max }) and postgres.js (options.max).
    singleConnection:
      kind === "pglite" || (typeof client?.waitReady !== "undefined" && typeof client?.exec === "function") || lone || client?.options?.max === 1,
    loneClient: lone,
    get interactiveTransactions() {
      return interactiveTransactions(db);
    },
  };
}

function kindOf(client: any): DriverKind {
  if (client && typeof client.listen === "function" && typeof client.exec === "function") return "pglite";
  if (client && typeof client.connect === "function" && typeof client.query === "function" && (client.options || client.connectionParameters)) {
    return "node-postgres";
  }
  if (client && typeof client.listen === "function" && typeof client.unsafe === "function") return "postgres.js";
  return "other";
}

/** A node-postgres `Client`, not a pool (drizzle's own test for a pool is the same; Pools have totalCount). */
function loneClient(client: any, kind: DriverKind): boolean {
  if (client === null || (typeof client !== "object" && typeof client !== "function")) return false;
  const isPgLike = typeof client.query === "function" && typeof client.connect === "function";
  const isPool = "totalCount" in client || String(Object.getPrototypeOf(client)?.constructor?.name ?? "").includes("Pool");
  return isPgLike && !isPool && kind !== "pglite";
}

/** Rows of a result, whatever the driver: arrays from postgres.js, `.rows` from node-postgres and PGlite. */
export function rowsOf<Row = Record<string, unknown>>(result: any): Row[] {
  return (Array.isArray(result) ? result : (result?.rows ?? [])) as Row[];
}

/** A boolean column as any driver returns it (`true`, or `"t"` where a driver leaves it as text). */
export function isTrue(value: unknown): boolean {
  return value === true || value === "t";
}

/**
 * drizzle's sessions that send each statement on its own (over HTTP) and whose `transaction()` always throws:
 * pg-proxy, neon-http, xata-http. They are recognised by drizzle's own class marker (`entityKind`), so that
 * no driver is imported here and `db.transaction` need not be tried.
 */
const STATEMENT_AT_A_TIME = new Set(["PgRemoteSession", "NeonHttpSession", "XataHttpSession"]);

/** Databases whose `db.transaction` was found to refuse (see {@link refusesTransactions}). */
const refusing = new WeakSet<object>();

/** {@link DriverProfile.interactiveTransactions}. */
function interactiveTransactions(db: AnyPgDatabase): boolean {
  if (refusing.has(db)) return false;
  for (let proto = Object.getPrototypeOf((db as any).session ?? {}); proto; proto = Object.getPrototypeOf(proto)) {
    if (STATEMENT_AT_A_TIME.has((proto.constructor as any)?.[entityKind])) return false;
  }
  return true;
}

/**
 * Whether `error`, thrown by `db.transaction` before its callback ran, says the driver has no transactions
 * (drizzle's words: "Transactions are not supported by ...", "No transactions support in ..."), and not a
 * database error. If so, the database is remembered as without them for {@link interactiveTransactions}.
 */
export function refusesTransactions(db: AnyPgDatabase, error: unknown): boolean {
  const message = error instanceof Error ? error.message : "";
  const refused = (error as any)?.code === undefined && /transactions? (are )?not supported|no transactions? support/i.test(message);
  if (refused) refusing.add(db);
  return refused;
}

/**
 * Whether `maxSessionsPerUser` can be kept on this database: a login takes its user's lock, then writes, in
 * one transaction held open across statements, on a connection of its own.
 * @throws TypeError naming the driver and what to do instead, when it cannot
 */
export function checkCanCap(db: AnyPgDatabase): void {
  const profile = profileOf(db);
  if (!profile.interactiveTransactions) {
    throw new TypeError(
      `connect-drizzle: \`maxSessionsPerUser\` needs a transaction held open across statements (a login takes its user's lock, ` +
        `then writes), which ${profile.name} cannot do (each statement is a request of its own); remove \`maxSessionsPerUser\`, ` +
        "or give the store a drizzle-orm/node-postgres, drizzle-orm/postgres-js or drizzle-orm/pglite database",
    );
  }
  if (profile.loneClient) {
    throw new TypeError(
      "connect-drizzle: `maxSessionsPerUser` cannot be safe on a single node-postgres Client: a login's transaction would run on " +
        "the connection every other request uses, so their statements would run inside it (and a logout be undone if it rolled " +
        "back); give the store a pg.Pool (drizzle({ client: new pg.Pool(...) })), or remove `maxSessionsPerUser`",
    );
  }
}

/**
 * How to name the driver behind a database in a message: drizzle's entry point for it (`drizzle-orm/pg-proxy`),
 * from drizzle's class marker; or that marker itself for one not listed.
 */
function driverName(db: AnyPgDatabase): string {
  const kind: string = (db as any)?.constructor?.[entityKind] ?? "this database";
  return DRIVER_NAMES[kind] ?? kind;
}

const DRIVER_NAMES: Record<string, string> = {
  NodePgDatabase: "drizzle-orm/node-postgres",
  PostgresJsDatabase: "drizzle-orm/postgres-js",
  PgliteDatabase: "drizzle-orm/pglite",
  PgRemoteDatabase: "drizzle-orm/pg-proxy",
  NeonHttpDatabase: "drizzle-orm/neon-http",
  NeonServerlessDatabase: "drizzle-orm/neon-serverless",
  XataHttpDatabase: "drizzle-orm/xata-http",
  VercelPgDatabase: "drizzle-orm/vercel-postgres",
  AwsDataApiPgDatabase: "drizzle-orm/aws-data-api/pg",
  BunSQLDatabase: "drizzle-orm/bun-sql",
  NetlifyDbDatabase: "drizzle-orm/netlify-db",
};

/** A statement compiled once: its SQL text with `$n` parameters, and where each value comes from. */
interface Compiled {
  text: string;
  /** The fixed values; where a call's value goes, a placeholder. */
  params: unknown[];
  /** For each parameter, the name of the call's value that fills it, or undefined for a fixed one. */
  slots: Array<string | undefined>;
  /** The name of the prepared statement (node-postgres with `prepare`), by its text. */
  name: string | undefined;
}

/**
 * A statement whose SQL depends only on its shape (not on its values), written once through drizzle with
 * named placeholders. On node-postgres it is compiled once and sent with the call's values, as a named
 * prepared statement with `prepare` (one parse and plan per connection, no SQL building per call);
 * elsewhere drizzle builds it with the values.
 */
export class Shape {
  private compiled: Compiled | undefined;
  /**
   * @param idempotent whether running it twice leaves the database as running it once does (a lookup, an
   *   end, a touch to a fixed time): then it is run again after a connection lost mid-statement too (see
   *   {@link Executor}), where another is run again only when it certainly did not run.
   */
  constructor(
    private readonly build: (v: (name: string) => SQL) => SQL,
    readonly idempotent = false,
  ) {}

  /** The statement with these values, for drivers other than node-postgres. */
  with(values: Readonly<Record<string, unknown>>): SQL {
    return this.build((name) => sql`${values[name]}`);
  }

  compile(prepare: boolean): Compiled {
    if (!this.compiled) {
      const { sql: text, params } = DIALECT.sqlToQuery(this.build((name) => sql`${sql.placeholder(name)}`));
      // `name` is public before drizzle-orm 1.0 and protected from it; the value is there on every version.
      const slots = params.map((p) => (is(p, Placeholder) ? (p as unknown as { name: string }).name : undefined));
      this.compiled = { text, params, slots, name: prepare ? statementName(text) : undefined };
    }
    return this.compiled;
  }
}

/** A statement being run again: whether its caller still waits, and the failover error of its last run. */
interface Retry {
  live(): boolean;
  last?: Error;
}

/** How long to wait before running a statement again after a failover error: doubling, up to the last. */
const RETRY_DELAYS = [25, 50, 100, 200, 400, 500];

/**
 * Runs the store's statements on its database, each bounded by `timeout`: ad hoc ones through drizzle's
 * SQL, shaped ones ({@link Shape}) compiled once. On node-postgres both go to the pool directly (drizzle
 * still writes the SQL), which skips drizzle's per-call work.
 *
 * A failover costs latency, not errors: a statement that failed because its server was unreachable,
 * restarting or no longer the primary ({@link failureOf}) runs again, after a short wait, until it
 * succeeds or `timeout` passes. One that certainly did not run (`refused`) always does; one whose
 * connection was lost while it ran (`lost`) only when it is idempotent, since it may have been done.
 */
export class Executor {
  private readonly driver: DriverProfile;
  /** Operations in flight, for the timeout sweep. */
  private readonly waiting = new Set<{ deadline: number; reject: (error: Error) => void }>();
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: AnyPgDatabase,
    private readonly settings: { timeout: number; prepare: boolean; retry?: boolean },
  ) {
    this.driver = profileOf(db);
  }

  /**
   * Runs a statement and returns its rows, whatever the driver's result shape. `idempotent`: see
   * {@link Shape}'s.
   */
  query<Row = Record<string, unknown>>(statement: SQL, idempotent = false): Promise<Row[]> {
    const { kind, client } = this.driver;
    if (kind !== "node-postgres") return this.timed<Row>(() => this.db.execute(statement), idempotent);
    const { sql: text, params } = DIALECT.sqlToQuery(statement);
    const name = this.settings.prepare ? statementName(text) : undefined;
    return this.timed<Row>(() => client.query(name ? { name, text, values: params } : { text, values: params }), idempotent);
  }

  /** Runs a shaped statement with the call's values. */
  run<Row = Record<string, unknown>>(shape: Shape, values: Readonly<Record<string, unknown>>): Promise<Row[]> {
    const { kind, client } = this.driver;
    if (kind !== "node-postgres") return this.query<Row>(shape.with(values), shape.idempotent);
    const { text, params, slots, name } = shape.compile(this.settings.prepare);
    const args = new Array(params.length);
    for (let i = 0; i < params.length; i++) args[i] = slots[i] === undefined ? params[i] : values[slots[i]!];
    return this.timed<Row>(() => client.query(name ? { name, text, values: args } : { text, values: args }), shape.idempotent);
  }

  /**
   * Runs `body` in one transaction (drizzle's `db.transaction`), its statements on the transaction's
   * connection, the whole of it (the wait for a connection, BEGIN and COMMIT included) bounded by
   * `timeout`. A body whose transaction begins only after that wait was given up on throws at once, so
   * the driver rolls back. Given up on later, its statements go on unless they bound themselves in the
   * database (a local `statement_timeout`, as {@link Statements.loginLock} sets); a statement the database
   * cancelled so fails as `TIMEOUT` too.
   */
  transaction<T>(body: (tx: Pick<Executor, "query" | "run">) => Promise<T>): Promise<T> {
    const { timeout } = this.settings;
    let expired = false;
    let committing = false;
    // Once the caller was told TIMEOUT, nothing of the transaction may commit: each statement checks, and
    // so does the end of the body. Once the body is done, the outcome is the commit's, and no TIMEOUT may
    // claim that what it wrote was not written (a lock granted just after the deadline, say).
    const live = () => {
      if (expired) throw timeoutError(timeout);
    };
    const attempt = () =>
      this.db.transaction(async (tx) => {
        committing = false;
        live();
        const query = async <Row>(statement: SQL) => {
          live();
          const rows = rowsOf<Row>(await tx.execute(statement));
          live();
          return rows;
        };
        const result = await body({ query, run: (shape, values) => query(shape.with(values)) });
        live();
        committing = true;
        return result;
      });
    // A transaction runs again only when it certainly did not commit (refused: a standby, a server not
    // ready); a connection lost mid-way may have lost it at its COMMIT.
    const retry: Retry = { live: () => !expired };
    const work = this.retrying(attempt, false, retry);
    const cancelled = (error: unknown) => {
      const code = pgCode(error);
      // statement_timeout (57014), lock_timeout (55P03): the database gave up on it at the same deadline.
      throw code === "57014" || code === "55P03" ? timeoutError(timeout, error) : error;
    };
    return this.bounded(
      work,
      (result) => result as T,
      () => {
        if (committing) return false;
        expired = true;
        return retry.last ?? true;
      },
    ).catch(cancelled);
  }

  /**
   * The rows of a statement's result, failing after `timeout` (a slow or unreachable database) instead of
   * hanging.
   */
  private timed<Row>(query: () => PromiseLike<unknown>, idempotent: boolean): Promise<Row[]> {
    let live = true;
    const retry: Retry = { live: () => live };
    return this.bounded(this.retrying(query, idempotent, retry), rowsOf<Row>, () => {
      live = false;
      // Given up on while waiting out a failover: its error says so better than TIMEOUT.
      return retry.last ?? true;
    });
  }

  /**
   * `start()`'s outcome, started again after a failover error while `live()` (the caller still waits):
   * see the class's description. The last error is the outcome when the waits run out or the caller
   * gave up.
   */
  private retrying(start: () => PromiseLike<unknown>, idempotent: boolean, retry: Retry): PromiseLike<unknown> {
    if (this.settings.retry === false) return start();
    const live = retry.live;
    const again = (error: unknown, attempt: number): PromiseLike<unknown> => {
      const failure = failureOf(error);
      if (failure === undefined || (failure === "lost" && !idempotent) || !live()) throw error;
      retry.last = error as Error;
      const delay = RETRY_DELAYS[Math.min(attempt, RETRY_DELAYS.length - 1)]! * (0.5 + Math.random() / 2);
      return new Promise((resolve) => setTimeout(resolve, delay)).then(() => {
        if (!live()) throw error;
        return start().then(undefined, (next) => again(next, attempt + 1));
      });
    };
    // The first run without an extra promise on the hot path; drizzle's lazy queries run on each then().
    return start().then(undefined, (error) => again(error, 0));
  }

  /**
   * What `result` makes of the outcome of `work`, or a `TIMEOUT` error after `timeout`. `onTimeout` is
   * called first, and may refuse it (false: the outcome is `work`'s, whenever it comes), or give the error
   * to fail with instead.
   */
  private bounded<T>(work: PromiseLike<unknown>, result: (value: unknown) => T, onTimeout?: () => boolean | Error): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const waiting = {
        deadline: performance.now() + this.settings.timeout,
        reject:
          onTimeout === undefined
            ? reject
            : (error: Error) => {
                const verdict = onTimeout();
                if (verdict !== false) reject(verdict === true ? error : verdict);
              },
      };
      this.waiting.add(waiting);
      this.sweepTimeouts();
      // Drizzle's queries are lazy thenables that run on every then(): this is the only one.
      work.then(
        (value) => {
          this.waiting.delete(waiting);
          resolve(result(value));
        },
        (error) => {
          this.waiting.delete(waiting);
          reject(error);
        },
      );
    });
  }

  /**
   * One unref'd timer for every operation in flight (cheaper than a timer each on the hot path): fails
   * those past their deadline with TIMEOUT, to within a tenth of `timeout`; stops when none are left.
   */
  private sweepTimeouts(): void {
    if (this.sweeper) return;
    const { timeout } = this.settings;
    const every = Math.max(10, Math.min(1_000, timeout / 10));
    this.sweeper = setInterval(() => {
      const now = performance.now();
      for (const waiting of this.waiting) {
        if (waiting.deadline > now) continue;
        this.waiting.delete(waiting);
        waiting.reject(timeoutError(timeout));
      }
      if (this.waiting.size === 0) {
        clearInterval(this.sweeper);
        this.sweeper = undefined;
      }
    }, every);
    this.sweeper.unref();
  }
}

function timeoutError(timeout: number, cause?: unknown): SessionStoreError {
  return new SessionStoreError(
    "TIMEOUT",
    `the database did not answer within ${timeout} ms (the store's timeout option)`,
    cause === undefined ? undefined : { cause: safeCause(cause) },
  );
}

const DIALECT = new PgDialect();

/** Named statements by SQL text: a bounded set, since lists of varying length make new shapes. */
const STATEMENT_NAMES = new Map<string, string>();

function statementName(text: string): string | undefined {
  let name = STATEMENT_NAMES.get(text);
  if (name === undefined && STATEMENT_NAMES.size < 256) {
    name = `connect_drizzle_${createHash("sha256").update(text).digest("base64url").slice(0, 22)}`;
    STATEMENT_NAMES.set(text, name);
  }
  return name;
}
