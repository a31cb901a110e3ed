import { defineConfig } from "drizzle-kit";

// Generates the SQL in drizzle/ from src/schema.ts; test/migrations.test.ts fails if they drift.
export default defineConfig({
  dialect: "postgresql",
  schema: "./src/schema.ts",
  out: "./drizzle",
});
