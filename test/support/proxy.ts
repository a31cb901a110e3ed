import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import type { Logger } from "drizzle-orm";
import { drizzle, type PgRemoteDatabase } from "drizzle-orm/pg-proxy";
import pg from "pg";

/**
 * A Postgres HTTP endpoint as drizzle's pg-proxy driver expects one (the server of drizzle's pg-proxy docs):
 * each POST is one statement `{ sql, params, method }`, run on its own on a pg.Pool, answered with the rows as
 * JSON (objects for `execute`, arrays for `all` and `values`), or a status 500 `{ message, code }`. Like
 * neon-http and every HTTP driver, no transaction can span two requests, nothing can LISTEN, and what JSON
 * cannot carry arrives as JSON makes it (timestamps as ISO strings, int8 as strings).
 */
export interface Proxy {
  /** The endpoint's address, `http://127.0.0.1:<port>/query`. */
  url: string;
  /** A drizzle pg-proxy database on the endpoint. */
  db: PgRemoteDatabase;
  /** The pool behind it, for what a test does outside the endpoint (setup, checks). */
  pool: pg.Pool;
  /** The SQL of every request the endpoint answered, in order. */
  requests: string[];
  close(): Promise<void>;
}

export async function startProxy(connectionString: string, options: { max?: number; logger?: Logger } = {}): Promise<Proxy> {
  const pool = new pg.Pool({ connectionString, max: options.max ?? 4 });
  pool.on("error", () => {}); // an idle connection that drops is the pool's business, not a crash
  const requests: string[] = [];
  const server = createServer((req, res) => void answer(pool, requests, req, res));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/query`;
  return {
    url,
    db: proxyDb(url, options.logger),
    pool,
    requests,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await pool.end();
    },
  };
}

/** Another drizzle pg-proxy database on an endpoint (another app instance, say): the client side of the contract. */
export function proxyDb(url: string, logger?: Logger): PgRemoteDatabase {
  return drizzle(
    async (sql, params, method) => {
      const response = await fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ sql, params, method }),
      });
      const body: any = await response.json();
      if (!response.ok) throw Object.assign(new Error(body.message), { code: body.code });
      return { rows: body };
    },
    logger ? { logger } : {},
  );
}

async function answer(pool: pg.Pool, requests: string[], req: IncomingMessage, res: ServerResponse): Promise<void> {
  const reply = (status: number, body: unknown) => {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  };
  try {
    let text = "";
    for await (const chunk of req) text += chunk;
    const { sql, params, method } = (req.method === "POST" ? JSON.parse(text) : {}) as { sql?: string; params?: unknown[]; method?: string };
    if (typeof sql !== "string" || !Array.isArray(params)) return reply(400, { message: "POST { sql, params, method }" });
    requests.push(sql);
    const arrays = method === "all" || method === "values";
    const result: any = arrays ? await pool.query({ text: sql, values: params, rowMode: "array" }) : await pool.query({ text: sql, values: params });
    // As HTTP drivers do: one statement per request (several without parameters would each have run, in one go).
    if (Array.isArray(result)) return reply(400, { message: "one statement per request" });
    reply(200, result.rows);
  } catch (error: any) {
    reply(500, { message: String(error?.message ?? error), code: error?.code });
  }
}
