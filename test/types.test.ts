import { execFileSync } from "node:child_process";
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative } from "node:path";
import ts from "typescript";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/**
 * The types users get: the package is built and packed as `npm publish` would ship it, installed into a
 * consumer project, and compiled there with `tsc --strict` and `skipLibCheck: false` (so a broken
 * declaration fails, instead of turning into `any`): test/types/esm.ts as an ESM consumer, test/types/cjs.cts
 * as a CommonJS one, and every ```ts block of README.md and of each docs/*.md page as a module of its own.
 *
 * The compiler checks the package's declaration files, the consumer's files and the documentation's blocks, with
 * the whole program loaded: the declarations of the other packages are read but their own errors not
 * reported (drizzle-orm 0.45 and PGlite fail `skipLibCheck: false` by themselves, over optional drivers'
 * types and DOM globals), which also spares the test checking 100,000 lines of them.
 */

const root = join(import.meta.dirname, "..");

/** What the consumer has installed beside the package: its peers, and what the documentation's snippets import. */
const installed = [
  "drizzle-orm",
  "drizzle-kit",
  "express-session",
  "express",
  "passport",
  "passport-local",
  "pg",
  "postgres",
  "@electric-sql/pglite",
  "expect-type",
  "@types/node",
  "@types/express",
  "@types/express-session",
  "@types/passport",
  "@types/passport-local",
  "@types/pg",
  "fastify",
  "@fastify/cookie",
  "@fastify/session",
  "@nestjs/core",
  "@nestjs/common",
  "@nestjs/platform-express",
  "reflect-metadata",
  "rxjs",
];

/** The documentation whose ```ts blocks are checked: README.md and every page of docs/, as paths from the root. */
function documents(): string[] {
  const pages = readdirSync(join(root, "docs"))
    .filter((name) => name.endsWith(".md"))
    .sort()
    .map((name) => `docs/${name}`);
  return ["README.md", ...pages];
}

/** A ```ts block of a documentation file (`README.md`, `docs/x.md`), by the line of its opening fence. */
interface Block {
  file: string;
  line: number;
  code: string;
}

function markdownBlocks(file: string): Block[] {
  const lines = readFileSync(join(root, file), "utf8").split("\n");
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.trim() !== "```ts") continue;
    const start = i;
    const code: string[] = [];
    while (++i < lines.length && lines[i]!.trim() !== "```") code.push(lines[i]!);
    blocks.push({ file, line: start + 1, code: `${code.join("\n")}\n` });
  }
  return blocks;
}

/**
 * Where a block is compiled in the consumer: `snippets/<file without .md>/line-<fence>.ts`, e.g.
 * snippets/README/line-52.ts, snippets/docs/frameworks/line-33.ts.
 */
function snippetPath(block: Block): string {
  return `snippets/${block.file.replace(/\.md$/, "")}/line-${block.line}.ts`;
}

/**
 * The errors of a consumer project (its tsconfig.json) in its own files and in connect-drizzle's
 * declarations, as tsc prints them (`file(line,col): error TS...: message`), one string each.
 */
function compile(project: string): { errors: string[]; checked: string[] } {
  const config = ts.getParsedCommandLineOfConfigFile(
    join(project, "tsconfig.json"),
    {},
    {
      ...ts.sys,
      onUnRecoverableConfigFileDiagnostic: (d) => {
        throw new Error(ts.flattenDiagnosticMessageText(d.messageText, "\n"));
      },
    },
  )!;
  const program = ts.createProgram({ rootNames: config.fileNames, options: config.options });
  const ours = program.getSourceFiles().filter((f) => !f.fileName.includes("/node_modules/") || f.fileName.includes("/node_modules/connect-drizzle/"));
  const found = [
    ...config.errors,
    ...program.getOptionsDiagnostics(),
    ...program.getGlobalDiagnostics(),
    ...ours.flatMap((f) => [...program.getSyntacticDiagnostics(f), ...program.getSemanticDiagnostics(f)]),
  ];
  const host = { getCurrentDirectory: () => project, getCanonicalFileName: (f: string) => f, getNewLine: () => "\n" };
  return {
    errors: found.map((d) => ts.formatDiagnostics([d], host).trimEnd()),
    checked: ours.map((f) => relative(project, f.fileName)),
  };
}

/** A diagnostic in a documentation block, named by the file and line it is on: `docs/x.md:LINE:COL`. */
function inDocs(diagnostic: string): string {
  return diagnostic.replace(/^snippets\/(.+)\/line-(\d+)\.ts\((\d+),(\d+)\)/, (_, file: string, fence: string, line: string, col: string) => {
    return `${file}.md:${Number(fence) + Number(line)}:${col} (the \`\`\`ts block at line ${fence})`;
  });
}

/** Sorts `file.md:LINE` diagnostics by file, then line. */
function byPlace(a: string, b: string): number {
  const place = (d: string) => /^(.+?\.md):(\d+)/.exec(d) ?? ["", d, "0"];
  const [, fileA, lineA] = place(a);
  const [, fileB, lineB] = place(b);
  return fileA!.localeCompare(fileB!) || Number(lineA) - Number(lineB);
}

describe("types of the packed package, in a consumer project (tsc --strict, skipLibCheck false)", () => {
  let work: string;
  let blocks: Block[];
  let errors: string[];
  let checkedFiles: string[];

  beforeAll(() => {
    work = mkdtempSync(join(tmpdir(), "connect-drizzle-types-"));
    // CONNECT_DRIZZLE_TARBALL: a package packed elsewhere (.ci/drizzle-matrix packs one build and checks it
    // against each drizzle-orm version). Otherwise built into a directory of its own, so a parallel build of
    // dist/ (test/package.test.ts) cannot interfere.
    let tarball = process.env.CONNECT_DRIZZLE_TARBALL;
    if (!tarball) {
      const pkg = join(work, "pkg");
      execFileSync(join(root, "node_modules", ".bin", "tsup"), ["--out-dir", join(pkg, "dist"), "--no-sourcemap"], { cwd: root, stdio: "pipe" });
      for (const file of ["package.json", "README.md", "LICENSE", "drizzle"]) cpSync(join(root, file), join(pkg, file), { recursive: true });
      const [packed] = JSON.parse(execFileSync("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", work], { cwd: pkg, encoding: "utf8" }));
      tarball = join(work, packed.filename);
    }

    const fixture = join(work, "fixture");
    const modules = join(fixture, "node_modules");
    mkdirSync(join(modules, "connect-drizzle"), { recursive: true });
    execFileSync("tar", ["xzf", tarball, "-C", join(modules, "connect-drizzle"), "--strip-components=1"]);
    for (const name of installed) {
      mkdirSync(dirname(join(modules, name)), { recursive: true });
      symlinkSync(join(root, "node_modules", name), join(modules, name), "dir");
    }
    writeFileSync(join(fixture, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
    writeFileSync(
      join(fixture, "tsconfig.json"),
      JSON.stringify({
        compilerOptions: {
          strict: true,
          skipLibCheck: false,
          module: "nodenext",
          moduleResolution: "nodenext",
          target: "es2022",
          lib: ["es2022"],
          moduleDetection: "force",
          noEmit: true,
        },
        include: ["*.ts", "*.cts", "snippets/**/*.ts"],
      }),
    );
    for (const file of readdirSync(join(root, "test", "types"))) cpSync(join(root, "test", "types", file), join(fixture, file));
    blocks = documents().flatMap(markdownBlocks);
    for (const block of blocks) {
      const file = join(fixture, snippetPath(block));
      mkdirSync(dirname(file), { recursive: true });
      writeFileSync(file, block.code);
    }
    ({ errors, checked: checkedFiles } = compile(fixture));
  }, 180_000);

  afterAll(() => {
    if (work) rmSync(work, { recursive: true, force: true });
  });

  it("declarations are self-contained and precise: the ESM and CommonJS consumers' type assertions hold", () => {
    const ours = errors.filter((e) => !e.startsWith("snippets/"));
    expect(ours, `tsc in the consumer project:\n${ours.join("\n")}`).toEqual([]);
  });

  it("checks the files it should: the package's ESM and CommonJS declarations, both consumers, every documentation block", () => {
    expect(checkedFiles).toEqual(
      expect.arrayContaining(["node_modules/connect-drizzle/dist/index.d.ts", "node_modules/connect-drizzle/dist/index.d.cts", "esm.ts", "cjs.cts"]),
    );
    expect([...checkedFiles.filter((f) => f.startsWith("snippets/"))].sort()).toEqual(blocks.map(snippetPath).sort());
  });

  it("every ```ts block of README.md and of docs/*.md compiles as a module of its own against the package", () => {
    expect(blocks.filter((b) => b.file === "README.md").length).toBeGreaterThanOrEqual(2);
    expect(blocks.filter((b) => b.file.startsWith("docs/")).length).toBeGreaterThan(15);
    const failing = errors
      .filter((e) => e.startsWith("snippets/"))
      .map(inDocs)
      .sort(byPlace);
    expect(failing, `documentation blocks that do not compile:\n${failing.join("\n")}`).toEqual([]);
  });
});
