#!/usr/bin/env bash
# Warren vs RabbitMQ, side by side on this machine (see scripts/bench.py for the scenarios).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p warren -p warren-perf
# The scale scenarios (scripts/bench_scale.py) drive the brokers with pika: the test venv has it
# (scripts/test.sh creates it).
python=tests/python/.venv/bin/python
[ -x "$python" ] || python=python3
exec "$python" scripts/bench.py "$@"
