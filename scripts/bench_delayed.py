#!/usr/bin/env python3
"""Delayed delivery, Warren vs RabbitMQ 3.10 on this machine (release broker; run scripts/bench.sh once,
or `cargo build --release -p warren -p warren-perf`, and build plugins/ for wasm32-wasip2 first).

1. Throughput: Warren's x-delayed-message exchange with `x-delay: 0` on every message against the native
   direct exchange (warren-perf, 1 producer / 1 consumer, 16 B, auto-ack; runs alternating; medians).
2. Pending: N delayed messages (default 1 000 000, 16 B bodies holding their due time), due times
   spread so that they fall due at R msg/s (default 10 000) starting after every message is published.
   Warren: an x-delayed-message exchange, `x-delay` per message. RabbitMQ: the usual workaround, a
   queue with per-message TTL (`expiration`) dead-lettering into the target queue (messages published in
   due order, so RabbitMQ's expiry at the head of the queue is exact). Reported: broker RSS before and
   with the N messages pending, and the lateness of each delivery (arrival at the consumer − due time)
   as p50 / p99 / max, with how many arrived early (must be 0).

Usage: scripts/bench_delayed.py [--messages N] [--rate R] [--runs K] [--seconds S] [--skip-throughput]
"""
import argparse
import pathlib
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import pika

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the side-by-side helpers: start_rabbitmq, rss_kib, perf, …)

ROOT = bench.ROOT
PLUGIN = ROOT / "target" / "plugins" / "wasm32-wasip2" / "release" / "x_delayed_message.wasm"


def start_warren(tmp):
    plugins = tmp / "plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, plugins / "x_delayed_message.wasm")
    proc = subprocess.Popen([str(bench.WARREN), "--listen", f"127.0.0.1:{bench.WARREN_PORT}", "--log", "warn",
                             "--data-dir", str(tmp / "data"), "--plugin-dir", str(plugins),
                             "--management-listen", "127.0.0.1:0", "--prometheus-listen", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not bench.wait_port(bench.WARREN_PORT, 30):
        sys.exit("Warren did not start")
    return proc


def connect(port):
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0,
                                                             blocked_connection_timeout=600))


def throughput(runs, seconds):
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="warren-bench-delayed-"))
    proc = start_warren(tmp)
    time.sleep(3)  # the plugin compiles in the background
    common = ["-k", "1", "--binding-key", "1", "-x1", "-y1", "-s16", "-a"]
    variants = {
        "native direct exchange": ["-e", "perf-direct", "-t", "direct", *common],
        "x-delayed-message, x-delay 0": ["-e", "perf-delayed", "-t", "x-delayed-message",
                                         "--exchange-arg", "x-delayed-type=direct", "--header", "x-delay=0",
                                         *common],
    }
    rates = {name: [] for name in variants}
    for _ in range(runs):
        for name, args in variants.items():
            rates[name].append(bench.perf(bench.WARREN_PORT, args, seconds)["consume_rate"])
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)
    print("\n## Throughput (Warren, msg/s, medians of alternating runs)")
    base = statistics.median(rates["native direct exchange"])
    for name, r in rates.items():
        m = statistics.median(r)
        print(f"- {name}: {m:,.0f} msg/s (runs {', '.join(f'{x:,.0f}' for x in r)}); {m / base:.2f}x direct")


def pending(broker, port, pids_of, n, rate):
    """Publishes n messages falling due at `rate`/s once all are published; returns RSS and lateness."""
    conn = connect(port)
    ch = conn.channel()
    if broker == "warren":
        ch.exchange_declare("delayed", "x-delayed-message", arguments={"x-delayed-type": "direct"})
        ch.queue_declare("target")
        ch.queue_bind("target", "delayed", "k")
    else:
        ch.queue_declare("target")
        ch.queue_declare("buffer", arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "target"})
    time.sleep(1)
    rss_before = bench.rss_kib(pids_of())
    # The first due time comes after the last publish: pika publishes some 10–25 000 msg/s here; the
    # script warns when publishing ran past it (those messages would be late by construction).
    start_ms = int(time.time() * 1000)
    first_due = start_ms + int(n / 10000 * 1000) + 10000
    step = 1000.0 / rate
    for i in range(n):
        due = int(first_due + i * step)
        now = int(time.time() * 1000)
        body = struct.pack(">QQ", due, i)
        if broker == "warren":
            props = pika.BasicProperties(headers={"x-delay": due - now})
            ch.basic_publish("delayed", "k", body, props)
        else:
            props = pika.BasicProperties(expiration=str(max(due - now, 0)))
            ch.basic_publish("", "buffer", body, props)
    published_ms = int(time.time() * 1000)
    if published_ms >= first_due:
        print(f"  warning: publishing ran {published_ms - first_due} ms past the first due time")
    time.sleep(2)
    rss_pending = bench.rss_kib(pids_of())
    lateness = []
    early = 0
    # Nothing arrives before the first due time: the first wait covers it.
    wait = max(0, first_due - time.time() * 1000) / 1000 + 30
    for method, _props, body in ch.consume("target", auto_ack=True, inactivity_timeout=wait):
        if method is None:
            break
        arrived = time.time() * 1000
        due, _ = struct.unpack(">QQ", body)
        late = arrived - due
        if late < 0:
            early += 1
        lateness.append(late)
        if len(lateness) == n:
            break
    ch.cancel()
    conn.close()
    lateness.sort()
    q = lambda p: lateness[min(len(lateness) - 1, int(p * len(lateness)))] if lateness else float("nan")
    return {
        "publish_s": (published_ms - start_ms) / 1000,
        "rss_before_mib": rss_before / 1024,
        "rss_pending_mib": rss_pending / 1024,
        "received": len(lateness),
        "early": early,
        "p50": q(0.5), "p99": q(0.99), "max": lateness[-1] if lateness else float("nan"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--skip-throughput", action="store_true")
    args = ap.parse_args()
    if not PLUGIN.exists():
        sys.exit(f"{PLUGIN} missing: cargo build --release --target wasm32-wasip2 in plugins/ first")
    if not args.skip_throughput:
        throughput(args.runs, args.seconds)
    results = {}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="warren-bench-delayed-"))
    proc = start_warren(tmp)
    time.sleep(3)
    results["Warren (x-delayed-message)"] = pending("warren", bench.WARREN_PORT, lambda: [proc.pid],
                                                    args.messages, args.rate)
    proc.terminate()
    proc.wait(timeout=60)
    shutil.rmtree(tmp, ignore_errors=True)
    rtmp = pathlib.Path(tempfile.mkdtemp(prefix="rabbit-bench-delayed-"))
    rproc, env = bench.start_rabbitmq(rtmp)
    try:
        results["RabbitMQ 3.10 (per-message TTL + DLX)"] = pending(
            "rabbitmq", bench.RABBIT_PORT, lambda: bench.listener_pids(bench.RABBIT_PORT), args.messages, args.rate)
    finally:
        bench.stop_rabbitmq(rproc, env)
    print(f"\n## {args.messages:,} pending delayed messages, falling due at {args.rate:,}/s")
    print("| broker | publish (s) | RSS idle (MiB) | RSS pending (MiB) | received | early | lateness p50 (ms) "
          "| p99 (ms) | max (ms) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['publish_s']:.1f} | {r['rss_before_mib']:.0f} | {r['rss_pending_mib']:.0f} | "
              f"{r['received']:,} | {r['early']} | {r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.1f} |")


if __name__ == "__main__":
    main()
