import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import type { TestModule } from "vitest/node";
import SkippedSummary from "./support/skipped.js";

/** A module of the run as the reporter reads it: its path, and its skipped tests under their suites. */
function moduleWith(file: string, skipped: Array<{ name: string; suites: Array<{ name: string; skipped: boolean }> }>): TestModule {
  const tests = skipped.map(({ name, suites }) => {
    let parent: any = { type: "module" };
    for (const suite of suites) parent = { type: "suite", name: suite.name, parent, state: () => (suite.skipped ? "skipped" : "passed") };
    return { name, parent };
  });
  return { moduleId: join(process.cwd(), file), children: { allTests: (state: string) => (state === "skipped" ? tests : []) } } as unknown as TestModule;
}

/** What the reporter prints at the end of a run of these modules, with DATABASE_URL as given. */
function summary(modules: TestModule[], databaseUrl: string | undefined): string {
  vi.stubEnv("DATABASE_URL", databaseUrl);
  const write = vi.spyOn(process.stdout, "write").mockImplementation(() => true);
  new SkippedSummary().onTestRunEnd(modules);
  const printed = write.mock.calls.map(([text]) => String(text)).join("");
  write.mockRestore();
  return printed;
}

describe("the test run's summary of what it skipped", () => {
  afterEach(() => void vi.unstubAllEnvs());

  it("without DATABASE_URL, says that only PGlite ran and how to run the rest, and lists the skipped tests by the suite that names what they need", () => {
    const modules = [
      moduleWith("test/import.test.ts", [
        { name: "imports", suites: [{ name: "importConnectPgSimple (needs DATABASE_URL)", skipped: true }] },
        { name: "redoes", suites: [{ name: "importConnectPgSimple (needs DATABASE_URL)", skipped: true }] },
      ]),
      moduleWith("test/cache.test.ts", [{ name: "evicts across instances", suites: [{ name: "read cache on pglite", skipped: false }] }]),
    ];
    const printed = summary(modules, undefined);
    expect(printed).toMatch(/Without DATABASE_URL every driver test ran on embedded PGlite only\. Not run: their node-postgres and postgres\.js runs/);
    expect(printed).toContain("Run them with DATABASE_URL=postgres://user@host:5432/db npm test.");
    expect(printed).toContain("Skipped (3 tests), by suite:");
    expect(printed).toContain("  2  test/import.test.ts: importConnectPgSimple (needs DATABASE_URL)");
    expect(printed).toContain("  1  test/cache.test.ts: evicts across instances");
  });

  it("with DATABASE_URL and nothing skipped, prints nothing", () => {
    expect(summary([moduleWith("test/store.test.ts", [])], "postgres://postgres@127.0.0.1:5432/test")).toBe("");
  });
});
