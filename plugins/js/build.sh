#!/usr/bin/env bash
# Builds a JavaScript plugin into a component: plugins/js/build.sh DIR OUT.wasm
# DIR holds plugin.js (an ES module exporting the world's interface as an object, e.g.
# `export const exchange = { describe() {…}, init(args) {…}, … }`); the world is taken from the WIT
# package in wit/ by the kind named in DIR/world (exchange-plugin, filter-plugin or
# idempotency-plugin; default exchange-plugin). Uses componentize-js pinned in plugins/js/package.json
# (installed here with `npm ci` when missing). `-d http fetch-event` leaves out the WASI HTTP
# interfaces componentize-js links by default: Warren's sandbox does not offer them, and a component
# that imports them is refused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
dir=$(cd "$1" && pwd)
out=$2
if [ ! -x "$here/node_modules/.bin/componentize-js" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --silent)
fi
world=exchange-plugin
if [ -f "$dir/world" ]; then
  world=$(tr -d '[:space:]' < "$dir/world")
fi
"$here/node_modules/.bin/componentize-js" "$dir/plugin.js" -w "$root/wit" -n "$world" \
  -d http fetch-event -o "$out"
