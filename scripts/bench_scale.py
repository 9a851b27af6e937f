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
- transient-backlog (Warren only; run only when named): 20 000 000 transient 1 KiB messages (--backlog)
  published to a transient queue with no consumer (the queue pages its tail to a scratch log past its
  memory limit), then consumed and checked in order (warren-perf --check-order). Reported: fill and
  drain rates, peak RSS while filling and draining, whether the memory alarm was ever raised (polled
  from the management API every second), deliveries out of order.

Usage: scripts/bench_scale.py [--queues N] [--backlog N]
       [--only declare-durable,declare-transient,idle-queues,idle-connections,transient-backlog]
Prints a Markdown table (also written to --out).
"""
import argparse
import base64
import json
import pathlib
import shutil
import subprocess
import sys
import time
import urllib.request

import pika

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (the side-by-side helpers: start_rabbitmq, rss_kib, perf, …)

ROOT = bench.ROOT
SCENARIOS = ["declare-durable", "declare-transient", "idle-queues", "idle-connections", "transient-backlog"]
# Warren for these scenarios runs on its own port (bench.py's Warren may be up on PORT).
PORT = 5675


MANAGEMENT = 15675


def start_warren(data):
    proc = subprocess.Popen([str(bench.WARREN), "--listen", f"127.0.0.1:{PORT}", "--log", "warn",
                             "--data-dir", str(data), "--management-listen", f"127.0.0.1:{MANAGEMENT}",
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
            # The listener opens before recovery; a connection is served once it is complete.
            wconn, wch = channel(PORT)
            ok = wch.queue_declare(f"{prefix}-{n - 1}", passive=True)
            restart = time.perf_counter() - started
            assert ok.method.queue == f"{prefix}-{n - 1}"
            rows.append((f"Warren restart with {n:,} durable queues and {n:,} bindings: ms from start until a "
                         "passive declare of the last queue is answered", 1000 * restart, None, None))
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


def memory_alarm():
    """The node's `mem_alarm` from the management API (None if it cannot be read)."""
    request = urllib.request.Request(f"http://127.0.0.1:{MANAGEMENT}/api/nodes")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)[0]["mem_alarm"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def watch(proc, pid):
    """Polls RSS and the memory alarm every second until `proc` exits; returns (peak MiB, alarm seen,
    alarm unreadable count, seconds)."""
    peak, alarm, unreadable = 0, False, 0
    started = time.time()
    while proc.poll() is None:
        peak = max(peak, bench.rss_kib([pid]) // 1024)
        state = memory_alarm()
        if state is None:
            unreadable += 1
        alarm = alarm or bool(state)
        time.sleep(1)
    return peak, alarm, unreadable, time.time() - started


def transient_backlog(n, tmp):
    data = tmp / "warren-backlog"
    shutil.rmtree(data, ignore_errors=True)
    warren = start_warren(data)
    queue = ["-u", "scale-backlog", "-s1024"]
    try:
        before = bench.rss_kib([warren.pid]) // 1024
        fill = subprocess.Popen([str(bench.PERF), "--uri", f"127.0.0.1:{PORT}", "-x1", "--no-consume", "-C", str(n),
                                 "-z", "7200", "--json", *queue], stdout=subprocess.PIPE, text=True)
        fill_peak, fill_alarm, fill_unread, fill_s = watch(fill, warren.pid)
        fill.communicate()
        paged = sum(f.stat().st_size for f in (data / "transient").rglob("*.seg")) / 2**30
        drain = subprocess.Popen([str(bench.PERF), "--uri", f"127.0.0.1:{PORT}", "-x0", "-y1", "-q", "1000", "-A", "100",
                                  "--drain", str(n), "--check-order", "-z", "7200", "--json", *queue],
                                 stdout=subprocess.PIPE, text=True)
        drain_peak, drain_alarm, drain_unread, drain_s = watch(drain, warren.pid)
        out, _ = drain.communicate()
        result = json.loads(out.strip().splitlines()[-1])
        print(f"transient backlog: fill {fill_s:.0f} s peak {fill_peak} MiB alarm {fill_alarm}; drain {drain_s:.0f} s "
              f"peak {drain_peak} MiB alarm {drain_alarm}; {result}; alarm unreadable {fill_unread + drain_unread}",
              file=sys.stderr)
        return [
            (f"transient backlog: {n:,} x 1 KiB published, msg/s (scratch logs {paged:.1f} GiB at the end)",
             n / fill_s, None, None),
            (f"transient backlog: peak RSS while filling, MiB (idle before {before}; memory alarm raised: "
             f"{'yes' if fill_alarm else 'no'})", fill_peak, None, None),
            (f"transient backlog: drained, msg/s ({result['consumed']:,} delivered, {result['out_of_order']} out of "
             f"order; memory alarm raised: {'yes' if drain_alarm else 'no'})", result["consumed"] / drain_s, None, None),
            ("transient backlog: peak RSS while draining, MiB", drain_peak, None, None),
        ]
    finally:
        stop_warren(warren)


def run(chosen, n, rabbit_port, tmp, seconds, backlog=20_000_000):
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
    if "transient-backlog" in chosen:
        rows += transient_backlog(backlog, tmp)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", type=int, default=10_000)
    ap.add_argument("--backlog", type=int, default=20_000_000)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(ROOT / "target" / "bench-scale-results.md"))
    opts = ap.parse_args()
    chosen = [s for s in SCENARIOS if s in opts.only.split(",")
              or (not opts.only and s != "transient-backlog")]
    tmp = ROOT / "target" / "bench-scale"
    tmp.mkdir(parents=True, exist_ok=True)
    if bench.wait_port(PORT, 0.5):
        sys.exit(f"port {PORT} is already in use; stop whatever listens there first")
    rabbit, rabbit_env = bench.start_rabbitmq(ROOT / "target" / "bench-rabbitmq")
    try:
        rows = run(chosen, opts.queues, bench.RABBIT_PORT, tmp, opts.seconds, opts.backlog)
    finally:
        bench.stop_rabbitmq(rabbit, rabbit_env)
    table = bench.table_of(rows)
    print(table)
    pathlib.Path(opts.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
