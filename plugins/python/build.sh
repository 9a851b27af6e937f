#!/usr/bin/env bash
# Builds a Python plugin into a component: plugins/python/build.sh DIR OUT.wasm
# DIR holds app.py (its classes implement the world's exports); the world is taken from the WIT file
# by the kind named in DIR/world (exchange-plugin, filter-plugin or idempotency-plugin; default
# exchange-plugin). Uses componentize-py from tests/python/.venv (scripts/test.sh installs it), or
# from PATH.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(cd "$1" && pwd)
out=$2
tool="$root/tests/python/.venv/bin/componentize-py"
if [ ! -x "$tool" ]; then
  tool=$(command -v componentize-py || true)
fi
if [ -z "$tool" ]; then
  echo "componentize-py not found: run scripts/test.sh once, or pip install componentize-py==0.25.1" >&2
  exit 2
fi
world=exchange-plugin
if [ -f "$dir/world" ]; then
  world=$(tr -d '[:space:]' < "$dir/world")
fi
"$tool" -d "$root/wit" -w "warren:plugin/$world" componentize -p "$dir" app -o "$out"
