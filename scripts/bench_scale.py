#!/usr/bin/env python3
"""Costs that should stay flat as state grows, Warren vs RabbitMQ 3.10 (Debian) on this machine.
Called by scripts/bench.py (scripts/bench.sh) for the scenarios named below, or run alone after a
release build (`cargo build --release -p warren -p warren-perf`).

- declare-durable / declare-transient: `queue.declare` + `queue.bind` (to amq.direct) of N queues (default
  10 000) from one pika channel, as pairs/s per thousand (so the slope shows), then `queue.delete` of
  them, per thousand. For durable queues, Warren is then restarted and the time until it accepts
  connections again is reported (recovery of N durable queues and bindings).
- idle-queues: RSS growth with N transient queues declared and idle (KiB per queue).
- idle-connections: RSS growth with 1 000 and 5 000 idle connections, without and with one channel each
  (KiB per connection), and the p99 latency of a busy connection (scenario (d): 10 000 msg/s, 16 B)
  while the 5 000 connections with a channel are open, next to the same run without them.

Usage: scripts/bench_scale.py [--queues N] [--only declare-durable,declare-transient,idle-queues,idle-connections]
Prints a Markdown table (also written to --out).
"""
import argparse
import pathlib
import shutil
import subprocess
import sys
import time

import pika

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the side-by-side helpers: start_rabbitmq, rss_kib, perf, …)

ROOT = bench.ROOT
SCENARIOS = ["declare-durable", "declare-transient", "idle-queues", "idle-connections"]
# Warren for these scenarios runs on its own port (bench.py's Warren may be up on PORT).
PORT = 5675


def start_warren(data):
    proc = subprocess.Popen([str(bench.WARREN), "--listen", f"127.0.0.1:{PORT}", "--log", "warn",
                             "--data-dir", str(data), "--management-listen", "127.0.0.1:0",
                             "--prometheus-listen", "127.0.0.1:0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not bench.wait_port(PORT, 120):
        sys.exit("Warren did not start")
    return proc


def stop_warren(proc):
    proc.terminate()
    proc.wait(timeout=60)


def channel(port):
    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, heartbeat=0,
                                                             blocked_connection_timeout=600))
    return conn, conn.channel()


def per_thousand(n, step):
    """Runs step(i) for i in 0..n; returns the rate (steps/s) within each thousand."""
    rates = []
    t = time.perf_counter()
    for i in range(n):
        step(i)
        if (i + 1) % 1000 == 0:
            now = time.perf_counter()
            rates.append(1000 / (now - t))
            t = now
    return rates


def declare_bind_delete(port, n, durable, prefix):
    conn, ch = channel(port)

    def declare(i):
        q = f"{prefix}-{i}"
        ch.queue_declare(q, durable=durable)
        ch.queue_bind(q, "amq.direct", routing_key=q)

    declares = per_thousand(n, declare)
    return conn, ch, declares


def delete_all(ch, n, prefix):
    return per_thousand(n, lambda i: ch.queue_delete(f"{prefix}-{i}"))


def rows_for_curve(label, w, r):
    rows = []
    for k in (0, len(w) // 2, len(w) - 1):
        rows.append((f"{label}: pairs/s in thousand {k + 1}", w[k], r[k], w[k] / r[k]))
    rows.append((f"{label}: rate in the last thousand / rate in the first (x1000; goal >= 800)",
                 1000 * w[-1] / w[0], 1000 * r[-1] / r[0], None))
    return rows


def declare_scenario(durable, n, rabbit_port, tmp):
    kind = "durable" if durable else "transient"
    prefix = f"scale-{kind}"
    data = tmp / f"warren-{kind}"
    shutil.rmtree(data, ignore_errors=True)
    warren = start_warren(data)
    rows = []
    try:
        wconn, wch, wdecl = declare_bind_delete(PORT, n, durable, prefix)
        rconn, rch, rdecl = declare_bind_delete(rabbit_port, n, durable, prefix)
        print(f"declare {kind}: warren {[round(x) for x in wdecl]} rabbitmq {[round(x) for x in rdecl]}",
              file=sys.stderr)
        rows += rows_for_curve(f"declare + bind {n:,} {kind} queues", wdecl, rdecl)
        if durable:
            wconn.close()
            stop_warren(warren)
            started = time.perf_counter()
            warren = start_warren(data)
            restart = time.perf_counter() - started
            rows.append((f"Warren restart with {n:,} durable queues and {n:,} bindings: seconds until it "
                         "accepts connections (x1000)", 1000 * restart, None, None))
            wconn, wch = channel(PORT)
            ok = wch.queue_declare(f"{prefix}-{n - 1}", passive=True)
            assert ok.method.queue == f"{prefix}-{n - 1}"
        wdel = delete_all(wch, n, prefix)
        rdel = delete_all(rch, n, prefix)
        print(f"delete {kind}: warren {[round(x) for x in wdel]} rabbitmq {[round(x) for x in rdel]}",
              file=sys.stderr)
        for k in (0, len(wdel) - 1):
            rows.append((f"delete {n:,} {kind} queues: deletes/s in thousand {k + 1}", wdel[k], rdel[k],
                         wdel[k] / rdel[k]))
        wconn.close()
        rconn.close()
    finally:
        stop_warren(warren)
    return rows


def idle_queues(n, rabbit_port, tmp):
    data = tmp / "warren-idle-queues"
    shutil.rmtree(data, ignore_errors=True)
    warren = start_warren(data)
    try:
        out = []
        for port, pids in ((PORT, lambda: [warren.pid]),
                           (rabbit_port, lambda: bench.listener_pids(rabbit_port))):
            conn, ch = channel(port)
            time.sleep(1)
            before = bench.rss_kib(pids())
            for i in range(n):
                ch.queue_declare(f"scale-idle-{i}")
            time.sleep(3)
            after = bench.rss_kib(pids())
            out.append((after - before) / n)
            for i in range(n):
                ch.queue_delete(f"scale-idle-{i}")
            conn.close()
        return [(f"RSS per idle queue, {n:,} transient queues (KiB, lower is better; LavinMQ states 35 MB per "
                 "1 000 queues = 35 KiB)", out[0], out[1], out[1] / out[0])]
    finally:
        stop_warren(warren)


def hold_connections(port, n, with_channel):
    args = [str(bench.PERF), "idle", "--uri", f"127.0.0.1:{port}", "--connections", str(n)]
    if with_channel:
        args.append("--channel")
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"warren-perf idle did not open {n} connections to port {port}")
    return proc


def release(proc):
    proc.stdin.close()
    proc.wait(timeout=120)


def idle_connections(rabbit_port, tmp, seconds):
    data = tmp / "warren-idle-conns"
    shutil.rmtree(data, ignore_errors=True)
    warren = start_warren(data)
    rows = []
    busy = ["-x1", "-y1", "-s16", "-a", "-r", "10000", "-u", "scale-busy"]
    try:
        ports = ((PORT, lambda: [warren.pid]), (rabbit_port, lambda: bench.listener_pids(rabbit_port)))
        alone = [bench.perf(port, busy, seconds)["latency_us"]["p99"] for port, _ in ports]
        for n in (1000, 5000):
            for with_channel in (False, True):
                per = []
                during = []
                for port, pids in ports:
                    time.sleep(2)
                    before = bench.rss_kib(pids())
                    holder = hold_connections(port, n, with_channel)
                    time.sleep(3)
                    per.append((bench.rss_kib(pids()) - before) / n)
                    if n == 5000 and with_channel:
                        during.append(bench.perf(port, busy, seconds)["latency_us"]["p99"])
                    release(holder)
                what = "with one channel each" if with_channel else "no channel"
                rows.append((f"RSS per idle connection, {n:,} connections, {what} (KiB, lower is better; LavinMQ "
                             "states 70 MB per 1 000 connections = 70 KiB)", per[0], per[1], per[1] / per[0]))
                if during:
                    rows.append(("busy connection p99 latency (us), 10 000 msg/s 16 B, alone", alone[0], alone[1],
                                 alone[1] / alone[0]))
                    rows.append((f"busy connection p99 latency (us), 10 000 msg/s 16 B, beside {n:,} idle connections "
                                 "with a channel", during[0], during[1], during[1] / during[0]))
    finally:
        stop_warren(warren)
    return rows


def run(chosen, n, rabbit_port, tmp, seconds):
    """Rows (description, warren, rabbitmq, warren advantage) of the chosen scenarios."""
    rows = []
    if "declare-durable" in chosen:
        rows += declare_scenario(True, n, rabbit_port, tmp)
    if "declare-transient" in chosen:
        rows += declare_scenario(False, n, rabbit_port, tmp)
    if "idle-queues" in chosen:
        rows += idle_queues(n, rabbit_port, tmp)
    if "idle-connections" in chosen:
        rows += idle_connections(rabbit_port, tmp, seconds)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(ROOT / "target" / "bench-scale-results.md"))
    opts = ap.parse_args()
    chosen = [s for s in SCENARIOS if not opts.only or s in opts.only.split(",")]
    tmp = ROOT / "target" / "bench-scale"
    tmp.mkdir(parents=True, exist_ok=True)
    if bench.wait_port(PORT, 0.5):
        sys.exit(f"port {PORT} is already in use; stop whatever listens there first")
    rabbit, rabbit_env = bench.start_rabbitmq(ROOT / "target" / "bench-rabbitmq")
    try:
        rows = run(chosen, opts.queues, bench.RABBIT_PORT, tmp, opts.seconds)
    finally:
        bench.stop_rabbitmq(rabbit, rabbit_env)
    table = bench.table_of(rows)
    print(table)
    pathlib.Path(opts.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
