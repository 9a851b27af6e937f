#!/usr/bin/env bash
# Runs Warren with the first-party plugins: builds plugins/ for wasm32-wasip2 (adding the target if
# missing), copies x-consistent-hash, x-random, x-delayed-message, x-message-deduplication, match
# and idempotency-key into ./warren-plugins (the
# watched plugin directory: drop more .wasm files there while it runs), builds the Python plugin
# x-json-route there with componentize-py (installed into ./.venv the first time; rebuilt when its
# app.py changes), and starts the release broker on 127.0.0.1:5672. Extra arguments go to warren
# (e.g. --listen, --data-dir, --config).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rustup target add wasm32-wasip2 >/dev/null 2>&1 || rustup target list --installed | grep -qx wasm32-wasip2
cargo build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir target/plugins
mkdir -p warren-plugins
for p in x_consistent_hash x_random x_delayed_message x_message_deduplication match_filter idempotency_key; do
  cp "target/plugins/wasm32-wasip2/release/$p.wasm" "warren-plugins/$p.wasm"
done
if [ ! -f warren-plugins/x_json_route.wasm ] ||
   [ plugins/python/x-json-route/app.py -nt warren-plugins/x_json_route.wasm ]; then
  if [ ! -x tests/python/.venv/bin/componentize-py ] && ! command -v componentize-py >/dev/null; then
    [ -x .venv/bin/componentize-py ] || { python3 -m venv .venv && .venv/bin/pip install -q componentize-py==0.25.1; }
    export PATH="$root/.venv/bin:$PATH"
  fi
  plugins/python/build.sh plugins/python/x-json-route target/x_json_route.wasm >/dev/null
  mv target/x_json_route.wasm warren-plugins/x_json_route.wasm
fi
exec cargo run --release --bin warren -- --plugin-dir warren-plugins "$@"
