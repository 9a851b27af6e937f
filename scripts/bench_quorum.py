#!/usr/bin/env python3
"""Quorum-queue benchmark (issue 19), Warren (three nodes) beside RabbitMQ 3.10 (three nodes joined
with `rabbitmqctl join_cluster`), all on this machine, same generator (warren-perf), runs
alternating:

- one quorum queue: 1 producer with confirms (window 1 000), 1 consumer with manual acks (prefetch
  1 000), 1 KiB persistent messages; confirm rate, consume rate, confirm latency p99;
- 100 quorum queues at once: 100 producers (window 100 each) and 100 consumers; consume rate and
  fsyncs per second of the three nodes together (`perf stat`).

The clients connect to the node that leads the queue (Warren: its quorum group's leader; RabbitMQ:
the declaring node, where the queue's leader starts).

Usage: scripts/bench_quorum.py [--runs N] [--seconds S] [--out FILE]
"""
import argparse
import json
import os
import pathlib
import statistics
import sys
import time
import urllib.request
import base64

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))

from bench import PERF, WARREN, listener_pids, perf, start_sync_count, syncs_per_second, wait_idle  # noqa: E402
from bench_cluster import start_rabbit_cluster, stop_rabbit_cluster  # noqa: E402
from cluster_harness import Cluster  # noqa: E402

RABBIT = [("warrenqq1@localhost", 5673, 25679), ("warrenqq2@localhost", 5675, 25681),
          ("warrenqq3@localhost", 5677, 25683)]
ROOT_TMP = pathlib.Path(__file__).resolve().parents[1] / "target" / "bench-rabbitmq-quorum"

ONE = ["-x1", "-y1", "-s1024", "-c1000", "-q1000", "-f", "--queue-arg", "x-queue-type=quorum", "-u", "perf-qq"]
HUNDRED = ["-x100", "-y100", "--queues", "100", "-s1024", "-c100", "-q100", "-f",
           "--queue-arg", "x-queue-type=quorum", "-u", "perf-qq100"]


def warren_leader(cluster, timeout=15):
    """The node that leads Warren's quorum group (as the first running node that knows says),
    waiting for an election if none is known yet."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        node = _leader_now(cluster)
        if node is not None:
            return node
        time.sleep(0.1)
    sys.exit("no quorum queue leader was elected")


def _leader_now(cluster):
    for n in cluster.nodes:
        if n.proc.poll() is not None:
            continue
        req = urllib.request.Request(f"http://127.0.0.1:{n.mgmt_port}/api/queues/%2F/perf-qq",
                                     headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
        try:
            name = json.load(urllib.request.urlopen(req, timeout=5)).get("leader")
        except Exception:
            continue
        for m in cluster.nodes:
            if m.name == name:
                return m
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--out")
    opts = ap.parse_args()
    if not PERF.exists() or not WARREN.exists():
        sys.exit("build first: cargo build --release --bin warren --bin warren-perf")
    os.environ["WARREN_BIN"] = str(WARREN)
    os.environ.setdefault("WARREN_CLUSTER_LOG", "error")
    rabbit, rabbit_envs = start_rabbit_cluster(ROOT_TMP, RABBIT)
    try:
        cluster = Cluster(3).start()
    except Exception:
        stop_rabbit_cluster(rabbit, rabbit_envs, RABBIT)
        raise
    warren_pids = [n.proc.pid for n in cluster.nodes]
    rabbit_pids = [p for _, port, _ in RABBIT for p in listener_pids(port)]
    results = {}
    try:
        # Declared once by a short run, so that the leader is known before measuring.
        perf(cluster[0].port, ONE + ["-C", "10"], 3)
        perf(RABBIT[0][1], ONE + ["-C", "10"], 3)
        for r in range(opts.runs):
            for broker, port, pids in (("warren", None, warren_pids), ("rabbitmq", RABBIT[0][1], rabbit_pids)):
                wait_idle(warren_pids + rabbit_pids)
                # Warren's leader as it is now (an election under load moves it).
                port = port or warren_leader(cluster).port
                s = perf(port, ONE, opts.seconds)
                row = {"confirm_rate": s["confirm_rate"], "consume_rate": s["consume_rate"],
                       "confirm_p99_ms": s["confirm_latency_us"]["p99"] / 1000}
                for k, v in row.items():
                    results.setdefault((k, broker), []).append(v)
                print(f"run {r + 1}: {broker} one queue: {row}", file=sys.stderr, flush=True)
                wait_idle(warren_pids + rabbit_pids)
                counter = start_sync_count(pids, opts.seconds - 2)
                s = perf(port, HUNDRED, opts.seconds)
                fsyncs = syncs_per_second(counter, opts.seconds - 2)
                row = {"consume_rate_100": s["consume_rate"], "confirm_p99_ms_100": s["confirm_latency_us"]["p99"] / 1000,
                       "fsyncs_100": fsyncs}
                for k, v in row.items():
                    if v is not None:
                        results.setdefault((k, broker), []).append(v)
                print(f"run {r + 1}: {broker} 100 queues: {row}", file=sys.stderr, flush=True)
    finally:
        stop_rabbit_cluster(rabbit, rabbit_envs, RABBIT)
        cluster.stop()
    names = [("confirm_rate", "1 queue: confirms/s", True), ("consume_rate", "1 queue: deliveries/s", True),
             ("confirm_p99_ms", "1 queue: confirm latency p99, ms", False),
             ("consume_rate_100", "100 queues: deliveries/s", True),
             ("confirm_p99_ms_100", "100 queues: confirm latency p99, ms", False),
             ("fsyncs_100", "100 queues: fsyncs/s (3 nodes)", None)]
    lines = [f"| scenario (median of {opts.runs}) | Warren | RabbitMQ 3.10 | Warren advantage |", "|---|---:|---:|---:|"]
    for key, label, higher in names:
        w, rb = results.get((key, "warren")), results.get((key, "rabbitmq"))
        if not w or not rb:
            continue
        wm, rm = statistics.median(w), statistics.median(rb)
        ratio = "" if higher is None or not wm or not rm else f"{(wm / rm if higher else rm / wm):.2f}x"
        lines.append(f"| {label} | {wm:,.1f} | {rm:,.1f} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if opts.out:
        pathlib.Path(opts.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
