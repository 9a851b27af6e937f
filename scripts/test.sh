#!/usr/bin/env bash
# All of warren's tests, from a fresh checkout: Rust unit + integration tests (lapin), the pika tests,
# and the RabbitMQ Go client's integration suite as a conformance gate. Installs what it needs
# (a Python venv under tests/python/.venv with pika, pytest and componentize-py; componentize-js under
# plugins/js/node_modules; Debian's Go toolchain and amqp091-go source via apt-get).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Plugins and test fixtures are WebAssembly components (tests/build.rs builds them).
rustup target add wasm32-wasip2

# The crash test (tests/tests/durability/crash.rs), the pika and the Go suites drive the real binary.
cargo build --locked --bin warren

# pika and pytest for the Python suite; componentize-py builds the Python plugin fixture that
# tests/tests/plugin_start.rs compiles (plugins/python/build.sh).
venv=tests/python/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r tests/python/requirements.txt

# RabbitMQ 3.10 (Debian's rabbitmq-server) for the side-by-side management tests
# (tests/python/test_rabbitmq_compat.py: its rabbitmqadmin script, and a node of the test's own). The
# package's own service is kept from starting (policy-rc.d) so that it holds no ports.
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  policy=/usr/sbin/policy-rc.d
  made_policy=no
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=yes
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  if [ "$made_policy" = yes ]; then rm -f "$policy"; fi
fi

# Node.js and npm for the JavaScript plugin recipe (tests/python/test_js_plugin.py: plugins/js/build.sh
# installs the pinned componentize-js into plugins/js/node_modules with `npm ci`).
if ! command -v npm >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
(cd plugins/js && npm ci --no-audit --no-fund --silent)

# Debian's Chromium for the UI test (tests/python/test_ui.py drives it with Playwright through
# executable_path; Playwright's own browser download is never used).
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

echo "== cargo test (unit + lapin integration tests)"
cargo test --workspace --locked

echo "== pika tests"
WARREN_BIN="$root/target/debug/warren" "$venv/bin/python" -m pytest -q tests/python

echo "== amqp091-go conformance suite"
WARREN_BIN="$root/target/debug/warren" scripts/conformance-go.sh

echo "== pika (broker-agnostic tests) and amqp091-go against a node of a three-node cluster"
WARREN_BIN="$root/target/debug/warren" "$venv/bin/python" tests/python/cluster_harness.py \
  "$venv/bin/python" -m pytest -q --ignore=tests/python/test_cluster.py tests/python
WARREN_BIN="$root/target/debug/warren" "$venv/bin/python" tests/python/cluster_harness.py \
  scripts/conformance-go.sh
