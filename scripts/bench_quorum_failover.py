#!/usr/bin/env python3
"""Quorum-queue leader loss under load (issue 19): a three-node Warren cluster (release build), one
quorum queue, warren-perf with 1 producer (confirms, window 1 000) and 1 consumer (manual acks),
1 KiB persistent messages, both connected to a follower; after `--before` seconds the quorum
group's leader is killed with SIGKILL. Prints the confirm rate per second, the slowest confirm of
the run, and how long publishing took to get back to half its earlier rate.

Usage: scripts/bench_quorum_failover.py [--before S] [--seconds S]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))

from bench import PERF, WARREN, perf  # noqa: E402
from bench_quorum import ONE, warren_leader  # noqa: E402
from cluster_harness import Cluster  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=float, default=5)
    ap.add_argument("--seconds", type=int, default=12)
    opts = ap.parse_args()
    os.environ["WARREN_BIN"] = str(WARREN)
    os.environ.setdefault("WARREN_CLUSTER_LOG", "warn")
    cluster = Cluster(3).start()
    try:
        perf(cluster[0].port, ONE + ["-C", "10"], 3)
        lead = warren_leader(cluster)
        follower = next(n for n in cluster.nodes if n is not lead)
        cmd = [str(PERF), "--uri", f"127.0.0.1:{follower.port}", "-z", str(opts.seconds), "--json", "--verbose", *ONE]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.time()
        time.sleep(opts.before)
        lead.kill()
        killed = time.time() - started
        out, err = p.communicate(timeout=opts.seconds + 60)
        after = warren_leader(cluster)
        log = follower.log()
    finally:
        cluster.stop()
    summary = json.loads(out.strip().splitlines()[-1])
    per_second = [line for line in err.splitlines() if line.strip()]
    print(f"leader {lead.name} killed at {killed:.2f} s; clients on {follower.name}; leader afterwards {after.name}")
    nacked = [line for line in log.splitlines() if "batch not committed" in line]
    print(f"batches nacked on {follower.name}: {len(nacked)}")
    for line in nacked[:5]:
        print("  " + line[:200])
    for i, line in enumerate(per_second):
        print(f"  second {i + 1}: {line.strip()}")
    c = summary["confirm_latency_us"]
    print(f"confirms: {summary['confirm_rate']:,.0f} msg/s over the run; latency p50 {c['p50'] / 1000:.1f} ms, "
          f"p99 {c['p99'] / 1000:.1f} ms, max {c.get('max', 0) / 1000:.1f} ms")


if __name__ == "__main__":
    main()
