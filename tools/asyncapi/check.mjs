// Parse an AsyncAPI document with the official parser; exit 1 on any error-level diagnostic.
// Usage: node tools/asyncapi/check.mjs docs/asyncapi.yaml
import { readFileSync } from "node:fs";
import { Parser, fromFile } from "@asyncapi/parser";

const path = process.argv[2];
if (!path) {
  console.error("usage: check.mjs <asyncapi.yaml>");
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await fromFile(parser, path).parse();
// Severity 0 is an error; 1 warning, 2 information, 3 hint (Spectral's levels).
const errors = diagnostics.filter((d) => d.severity === 0);
for (const d of diagnostics) {
  const level = ["error", "warning", "info", "hint"][d.severity] ?? d.severity;
  console.log(`${level}: ${d.code}: ${d.message} at ${d.path.join("/")}`);
}
if (errors.length > 0 || document === undefined) {
  console.error(`${path}: ${errors.length} error(s)`);
  process.exit(1);
}
const channels = document.channels().all().map((c) => c.address());
console.log(JSON.stringify({ version: document.version(), channels }));
