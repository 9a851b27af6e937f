#!/usr/bin/env bash
# Warren vs RabbitMQ, side by side on this machine (see scripts/bench.py for the scenarios).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p warren -p warren-perf
exec python3 scripts/bench.py "$@"
