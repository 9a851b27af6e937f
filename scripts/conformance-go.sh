#!/usr/bin/env bash
# Runs the RabbitMQ Go client's own integration tests (amqp091-go, from Debian's
# golang-github-rabbitmq-amqp091-go-dev) against a warren binary on a loopback port.
#
# Every test must pass except those listed in KNOWN_FAILURES (each with the reason); a listed test
# that starts passing also fails this gate, so the list cannot go stale.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${WARREN_BIN:-$root/target/debug/warren}
src=/usr/share/gocode/src/github.com/rabbitmq/amqp091-go

# test name -> reason it fails against warren today (none at the moment)
declare -A KNOWN_FAILURES=()

if [ ! -d "$src" ] || ! command -v go >/dev/null; then
  echo "conformance-go: installing golang-go and golang-github-rabbitmq-amqp091-go-dev"
  apt-get update -qq && apt-get install -y -qq golang-go golang-github-rabbitmq-amqp091-go-dev >/dev/null
fi

if [ -n "${WARREN_TEST_AMQP_URL:-}" ]; then
  # A broker someone else runs (e.g. a node of a cluster: tests/python/cluster_harness.py).
  url=$WARREN_TEST_AMQP_URL
else
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log=$(mktemp)
  data=$(mktemp -d)
  "$bin" --listen "127.0.0.1:$port" --management-listen 127.0.0.1:0 --prometheus-listen 127.0.0.1:0 --log warn --data-dir "$data" >"$log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$log" "$data"' EXIT
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
  url="amqp://guest:guest@127.0.0.1:$port/"
fi

out=$(mktemp)
set +e
GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOCACHE=${GOCACHE:-/tmp/warren-gocache} \
  AMQP_URL="$url" \
  go test -tags integration -count=1 -timeout 600s -v github.com/rabbitmq/amqp091-go >"$out" 2>&1
set -e

passed=$(grep -c -- '^--- PASS' "$out" || true)
mapfile -t failed < <(grep -- '^--- FAIL' "$out" | awk '{print $3}')
status=0
for t in "${failed[@]}"; do
  if [ -z "${KNOWN_FAILURES[$t]+x}" ]; then
    echo "conformance-go: UNEXPECTED FAILURE $t"; status=1
  else
    echo "conformance-go: known failure $t (${KNOWN_FAILURES[$t]})"
  fi
done
for t in "${!KNOWN_FAILURES[@]}"; do
  if grep -q -- "^--- PASS: $t " "$out"; then
    echo "conformance-go: $t now passes: remove it from KNOWN_FAILURES"; status=1
  fi
done
if grep -q '^panic:' "$out" || [ "$passed" -eq 0 ]; then
  echo "conformance-go: the suite panicked or ran nothing"; status=1
fi
if [ $status -ne 0 ]; then
  for t in "${failed[@]}"; do
    awk -v t="$t" '$0 ~ "^=== RUN +"t"$" {p=1} p {print} $0 ~ "^--- FAIL: "t" " {p=0}' "$out" | tail -40
  done
  grep -A30 '^panic:' "$out" | head -40 || true
fi
echo "conformance-go: ${#KNOWN_FAILURES[@]} known failures listed"
echo "$passed passed, ${#failed[@]} failed"
rm -f "$out"
exit $status
