#!/usr/bin/env bash
# All of warren's tests, from a fresh checkout: Rust unit + integration tests (lapin), the pika tests,
# and the RabbitMQ Go client's integration suite as a conformance gate. Installs what it needs
# (a Python venv under tests/python/.venv with pika, pytest and componentize-py; Debian's Go toolchain
# and amqp091-go source via apt-get).
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

echo "== cargo test (unit + lapin integration tests)"
cargo test --workspace --locked

echo "== pika tests"
WARREN_BIN="$root/target/debug/warren" "$venv/bin/python" -m pytest -q tests/python

echo "== amqp091-go conformance suite"
WARREN_BIN="$root/target/debug/warren" scripts/conformance-go.sh
