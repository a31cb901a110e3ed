import { relative } from "node:path";
import type { Reporter, TestCase, TestModule } from "vitest/node";

/**
 * Says, after the run, which tests were skipped and why, so a run without a database never looks like a
 * run of everything: the skipped tests grouped by the reason their suite names (a `describe.skipIf`
 * whose title says "needs DATABASE_URL", a driver that cannot do what the test needs), and without
 * DATABASE_URL, that the node-postgres and postgres.js runs of every driver test did not happen either.
 */
export default class SkippedSummary implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const byGroup = new Map<string, number>();
    for (const module of modules) {
      for (const test of module.children.allTests("skipped")) {
        const group = `${relative(process.cwd(), module.moduleId)}: ${topSuite(test)}`;
        byGroup.set(group, (byGroup.get(group) ?? 0) + 1);
      }
    }
    const lines: string[] = [];
    if (!process.env.DATABASE_URL) {
      lines.push(
        "Without DATABASE_URL every driver test ran on embedded PGlite only. Not run: their node-postgres and postgres.js runs,",
        "and the tests below that need a PostgreSQL server. Run them with DATABASE_URL=postgres://user@host:5432/db npm test.",
      );
    }
    if (byGroup.size > 0) {
      lines.push(`Skipped (${[...byGroup.values()].reduce((a, b) => a + b, 0)} tests), by suite:`);
      for (const [group, n] of [...byGroup].sort()) lines.push(`  ${n.toString().padStart(3)}  ${group}`);
    }
    if (lines.length > 0) process.stdout.write(`\n${lines.join("\n")}\n`);
  }
}

/** The title of the outermost suite skipped as a whole around a test (its `describe.skipIf` names what it needs), or the test's own. */
function topSuite(test: TestCase): string {
  let name = test.name;
  for (let parent = test.parent; parent.type === "suite" && parent.state() === "skipped"; parent = parent.parent) name = parent.name;
  return name;
}
