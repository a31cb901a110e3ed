import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

// The browser test (real headless Chromium via playwright-core): npm run test:browser.
// Kept out of vitest.config.ts (which includes test/**/*.test.ts) by its *.browser.ts name.
export default defineConfig({
  resolve: {
    // The example imports "connect-drizzle" as users do; here that is this checkout's source (as in tsconfig's paths).
    alias: { "connect-drizzle": fileURLToPath(new URL("./src/index.ts", import.meta.url)) },
  },
  test: {
    include: ["test/browser/**/*.browser.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: false,
  },
});
