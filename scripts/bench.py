#!/usr/bin/env python3
"""Side-by-side benchmark: Warren vs RabbitMQ (Debian's rabbitmq-server) on loopback, same machine,
same generator (warren-perf), runs alternating between the brokers. Prints medians and the
Warren/RabbitMQ ratio per scenario as a Markdown table (also written to --out).

Usage: scripts/bench.sh [--runs N] [--seconds S] [--only a,b,...] [--out FILE]

Scenario (c) also counts fsync/fdatasync calls per second of each broker with `perf stat` (Debian's
linux-perf; skipped when `perf` is missing). Scenario (j), run only when named in --only, fills a durable
queue with 10 million persistent 1 KiB messages (Warren only; ~11 GB of disk) and reports Warren's RSS.
Scenarios declare-durable, declare-transient, idle-queues and idle-connections (scripts/bench_scale.py:
declare/bind/delete rates per thousand of 10 000 queues, restart time, RSS per idle queue and per idle
connection) run only when named in --only. Scenarios (a), (e) and (e-1core) also report each broker's CPU use (from /proc); (e-1core) pins each
broker to CPU 0 with `taskset -a` for its runs. Every run starts once both brokers are idle.
"""
import argparse
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PERF = ROOT / "target" / "release" / "warren-perf"
WARREN = ROOT / "target" / "release" / "warren"
WARREN_PORT, RABBIT_PORT, SINK_PORT = 5674, 5673, 5699

# name -> (description, warren-perf arguments, metric)
SCENARIOS = {
    "a": ("1 producer / 1 consumer, 16 B, auto-ack", ["-x1", "-y1", "-s16", "-a"], "consume_rate"),
    "b": ("1 producer / 1 consumer, 1 KiB, auto-ack", ["-x1", "-y1", "-s1024", "-a"], "consume_rate"),
    "c": ("persistent 1 KiB, durable queue, confirms (window 1000), manual acks (prefetch 1000)",
          ["-x1", "-y1", "-s1024", "-f", "-c", "1000", "-q", "1000", "-u", "perf-durable"], "consume_rate"),
    "d": ("fixed 10 000 msg/s, 16 B: latency p99 (us, lower is better)", ["-x1", "-y1", "-s16", "-a", "-r", "10000"], "p99"),
    "e": ("4 producers / 4 consumers / 4 queues, 16 B", ["-x4", "-y4", "--queues", "4", "-s16", "-a"], "consume_rate"),
    "f": ("fanout to 10 queues, 10 consumers, 16 B (deliveries/s)",
          ["-e", "perf-fanout", "-t", "fanout", "--queues", "10", "-x1", "-y10", "-s16", "-a"], "consume_rate"),
    "g": ("topic exchange, 10 000 bindings, random keys, 16 B",
          ["-e", "perf-topic", "-t", "topic", "--bindings", "10000", "-k", "random", "--keys", "10000", "-x1", "-y1",
           "-s16", "-a"], "consume_rate"),
    # (h): the same 1 producer / 1 consumer / 1 queue flow through an exchange: a plugin exchange type
    # (x-consistent-hash, one binding of weight 1) against the native direct exchange. "h-direct" is the
    # baseline; "h-chash-key" uses one routing key (answered from the per-key routing cache after the
    # first message), "h-chash-random" a new key for almost every message (a plugin call each).
    "h-direct": ("native direct exchange, 1 binding, 16 B",
                 ["-e", "perf-direct", "-t", "direct", "-k", "1", "--binding-key", "1", "-x1", "-y1", "-s16", "-a"],
                 "consume_rate"),
    "h-chash-key": ("x-consistent-hash plugin exchange, 1 binding, one routing key, 16 B",
                    ["-e", "perf-chash", "-t", "x-consistent-hash", "-k", "1", "--binding-key", "1", "-x1", "-y1",
                     "-s16", "-a"], "consume_rate"),
    "h-chash-random": ("x-consistent-hash plugin exchange, 1 binding, random keys (1 000 000), 16 B",
                       ["-e", "perf-chash-r", "-t", "x-consistent-hash", "-k", "random", "--keys", "1000000",
                        "--binding-key", "1", "-x1", "-y1", "-s16", "-a"], "consume_rate"),
    # (e-1core): scenario (e) with each broker's threads pinned to CPU 0 for the run (`taskset -a`), the
    # load generator unpinned; (e) / (e-1core) tells how much a broker gains from a second core.
    "e-1core": ("4 producers / 4 consumers / 4 queues, 16 B, broker pinned to 1 core",
                ["-x4", "-y4", "--queues", "4", "-s16", "-a"], "consume_rate"),
    "m": ("manual acks (multiple every 100), confirms (window 1000), transient, 16 B",
          ["-x1", "-y1", "-s16", "-q", "1000", "-A", "100", "-c", "1000"], "consume_rate"),
}


# Scenarios for which each broker's CPU use (cores busy during the run) is reported.
CPU_REPORTED = {"a", "e", "e-1core"}


def cpu_seconds(pids):
    """User + system CPU time of `pids` so far, in seconds (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_idle(pids, timeout=30):
    """Waits until `pids` use under a tenth of a core over a quarter second: a broker can go on working
    for seconds after its load generator stops (RabbitMQ drains the backlog its publishers built up),
    which would steal CPU from the next run on the other broker."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        before = cpu_seconds(pids)
        time.sleep(0.25)
        if cpu_seconds(pids) - before < 0.025:
            return


def pin(pids, cpus):
    """Sets the CPU affinity of every thread of `pids` (taskset -a)."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, stdout=subprocess.DEVNULL)


def wait_port(port, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def start_rabbitmq(tmp):
    if not shutil.which("rabbitmq-server") and not pathlib.Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "rabbitmq-server"], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    # The Debian service may have started a node of its own; it listens on 5672, ours on 5673. A stray
    # node on our port would be measured instead of ours: refuse.
    if wait_port(RABBIT_PORT, 0.5):
        sys.exit(f"port {RABBIT_PORT} is already in use; stop whatever listens there first")
    # A fresh node each time: durable queues of an earlier run would clash with this run's declares.
    shutil.rmtree(tmp / "mnesia", ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{RABBIT_PORT}\nloopback_users = none\n")
    # The consistent-hash exchange ships with RabbitMQ; enabled so scenario (h) runs on both brokers.
    (tmp / "enabled_plugins").write_text("[rabbitmq_consistent_hash_exchange].\n")
    env = dict(os.environ, HOME=str(tmp), RABBITMQ_NODENAME="warrenbench@localhost",
               RABBITMQ_MNESIA_BASE=str(tmp / "mnesia"), RABBITMQ_LOG_BASE=str(tmp / "log"),
               RABBITMQ_CONFIG_FILE=str(tmp / "rabbitmq"), RABBITMQ_DIST_PORT="25679",
               RABBITMQ_ENABLED_PLUGINS_FILE=str(tmp / "enabled_plugins"))
    proc = subprocess.Popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait_port(RABBIT_PORT, 90):
        sys.exit("RabbitMQ did not start")
    time.sleep(2)
    return proc, env


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def listener_pids(port):
    """PIDs of the processes listening on `port` (the node name is not on beam's command line)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return sorted({int(p) for p in __import__("re").findall(r"pid=(\d+)", out)})


def stop_rabbitmq(proc, env):
    subprocess.run(["rabbitmqctl", "-n", "warrenbench@localhost", "stop"], env=env, capture_output=True, timeout=60)
    for pid in listener_pids(RABBIT_PORT):
        try:
            os.kill(pid, 15)
        except OSError:
            pass
    proc.terminate()


def perf(port, args, seconds):
    cmd = [str(PERF), "--uri", f"127.0.0.1:{port}", "-z", str(seconds), "--json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_sync_count(pids, seconds):
    """`perf stat` counting fsync + fdatasync of `pids` for `seconds`, or None without perf."""
    if not shutil.which("perf") or not pids:
        return None
    return subprocess.Popen(["perf", "stat", "-x,", "-e", "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync",
                             "-p", ",".join(map(str, pids)), "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def syncs_per_second(proc, seconds):
    if proc is None:
        return None
    _, err = proc.communicate(timeout=seconds + 30)
    total = 0
    for line in err.splitlines():
        field = line.split(",")[0]
        if field.isdigit():
            total += int(field)
    return total / seconds


def table_of(rows):
    """A Markdown table of (description, warren, rabbitmq or None, warren advantage or None) rows."""
    lines = ["| scenario | Warren | RabbitMQ | Warren advantage |", "|---|---:|---:|---:|"]
    for desc, wm, rm, ratio in rows:
        lines.append(f"| {desc} | {wm:,.0f} | {'' if rm is None else f'{rm:,.0f}'} | "
                     f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def metric(result, name):
    return result["latency_us"]["p99"] if name == "p99" else result[name]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--only", default="")
    ap.add_argument("--out", default=str(ROOT / "target" / "bench-results.md"))
    opts = ap.parse_args()
    chosen = [s for s in SCENARIOS if not opts.only or s in opts.only.split(",")]
    tmp = ROOT / "target" / "bench-rabbitmq"
    rabbit, rabbit_env = start_rabbitmq(tmp)
    if wait_port(WARREN_PORT, 0.5):
        stop_rabbitmq(rabbit, rabbit_env)
        sys.exit(f"port {WARREN_PORT} is already in use; stop whatever listens there first")
    data = ROOT / "target" / "bench-warren-data"
    shutil.rmtree(data, ignore_errors=True)
    plugins = ROOT / "target" / "bench-plugins"
    plugins.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip2", "--manifest-path",
                    str(ROOT / "plugins" / "Cargo.toml"), "--target-dir", str(ROOT / "target" / "plugins")],
                   check=True)
    shutil.copy(ROOT / "target" / "plugins" / "wasm32-wasip2" / "release" / "x_consistent_hash.wasm", plugins)
    warren = subprocess.Popen([str(WARREN), "--listen", f"127.0.0.1:{WARREN_PORT}", "--log", "warn",
                               "--management-listen", "127.0.0.1:0", "--prometheus-listen", "127.0.0.1:0",
                               "--data-dir", str(data), "--plugin-dir", str(plugins)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sink = subprocess.Popen([str(PERF), "sink", "--listen", f"127.0.0.1:{SINK_PORT}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(WARREN_PORT)
    wait_port(SINK_PORT)
    rows = []
    medians = {}
    try:
        if not opts.only or "i" in opts.only.split(","):
            # First, on fresh brokers: an allocator keeps memory from earlier scenarios.
            args = ["-x1", "-s16", "-c", "1000", "--no-consume", "-C", "1000000", "-u", "perf-rss"]
            before_w, before_r = rss_kib([warren.pid]), rss_kib(listener_pids(RABBIT_PORT))
            perf(WARREN_PORT, args, 120)
            perf(RABBIT_PORT, args, 120)
            time.sleep(2)
            w_mib, r_mib = rss_kib([warren.pid]) / 1024, rss_kib(listener_pids(RABBIT_PORT)) / 1024
            rows.append(("(i) RSS with 1 000 000 16 B messages queued (MiB, lower is better; idle before: "
                         f"warren {before_w // 1024}, rabbitmq {before_r // 1024})", w_mib, r_mib, r_mib / w_mib))
            perf(WARREN_PORT, ["-x0", "-y1", "-a", "-u", "perf-rss"], 1)  # setup purges the queue
            perf(RABBIT_PORT, ["-x0", "-y1", "-a", "-u", "perf-rss"], 1)
        ceiling = [perf(SINK_PORT, ["-x1", "-s16", "-a", "--no-consume"], opts.seconds)["publish_rate"]
                   for _ in range(opts.runs)]
        rows.append(("generator ceiling: 1 producer, 16 B, into a discarding sink (publish msg/s)",
                     statistics.median(ceiling), None, None))
        for key in chosen:
            desc, args, name = SCENARIOS[key]
            w, r, ws, rs, wc, rc = [], [], [], [], [], []
            for _ in range(opts.runs):
                for port, pids, out, syncs, cores in ((WARREN_PORT, [warren.pid], w, ws, wc),
                                                      (RABBIT_PORT, listener_pids(RABBIT_PORT), r, rs, rc)):
                    # Count syncs over the middle of the run (after connection set-up).
                    window = max(opts.seconds - 3, 1)
                    counter = None
                    if key == "c":
                        counter = start_sync_count(pids, window)
                    if key == "e-1core":
                        pin(pids, "0")
                    wait_idle([warren.pid] + listener_pids(RABBIT_PORT))
                    try:
                        cpu0, t0 = cpu_seconds(pids), time.time()
                        out.append(metric(perf(port, args, opts.seconds), name))
                        cores.append((cpu_seconds(pids) - cpu0) / (time.time() - t0))
                    finally:
                        if key == "e-1core":
                            pin(pids, f"0-{os.cpu_count() - 1}")
                    rate = syncs_per_second(counter, window)
                    if rate is not None:
                        syncs.append(rate)
            wm, rm = statistics.median(w), statistics.median(r)
            ratio = (rm / wm if name == "p99" else wm / rm) if wm and rm else None
            rows.append((f"({key}) {desc}", wm, rm, ratio))
            medians[key] = (wm, rm)
            if ws and rs:
                rows.append((f"({key}) fsync + fdatasync calls per second during the run",
                             statistics.median(ws), statistics.median(rs), None))
            if key in CPU_REPORTED:
                rows.append((f"({key}) broker CPU use during the run (cores busy, x1000)",
                             1000 * statistics.median(wc), 1000 * statistics.median(rc), None))
            print(f"({key}) warren {w} rabbitmq {r} syncs/s {ws} {rs}", file=sys.stderr)
        if "h-direct" in medians:
            base_w, base_r = medians["h-direct"]
            for key in ("h-chash-key", "h-chash-random"):
                if key in medians:
                    w, r = medians[key]
                    rows.append((f"({key}) plugin exchange / native direct, same broker (ratio x1000; goal >= 800)",
                                 1000 * w / base_w, 1000 * r / base_r if r and base_r else None, None))
        if "e" in medians and "e-1core" in medians:
            (w2, r2), (w1, r1) = medians["e"], medians["e-1core"]
            rows.append(("(e) / (e-1core): rate with 2 cores over rate pinned to 1 core, same broker (x1000)",
                         1000 * w2 / w1, 1000 * r2 / r1 if r1 else None, None))
        if "j" in opts.only.split(","):
            n = 10_000_000
            before = rss_kib([warren.pid]) // 1024
            peak = 0
            run = subprocess.Popen([str(PERF), "--uri", f"127.0.0.1:{WARREN_PORT}", "-x1", "-s1024", "-f", "-c", "1000",
                                    "--no-consume", "-C", str(n), "-u", "perf-backlog", "-z", "3600", "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            started = time.time()
            while run.poll() is None:
                peak = max(peak, rss_kib([warren.pid]) // 1024)
                time.sleep(1)
            elapsed = time.time() - started
            time.sleep(2)
            after = rss_kib([warren.pid]) // 1024
            disk = sum(f.stat().st_size for f in data.rglob("*.seg")) / 2**30
            rows.append((f"(j) 10 000 000 persistent 1 KiB messages queued in {elapsed:.0f} s: Warren RSS MiB "
                         f"(idle before {before}, peak while filling {peak}; {disk:.1f} GiB of segments)",
                         after, None, None))
            perf(WARREN_PORT, ["-x0", "-y1", "-a", "-f", "-u", "perf-backlog"], 1)  # set-up purges the queue
        scale = [k for k in opts.only.split(",") if k.startswith(("declare-", "idle-", "transient-"))]
        if scale:
            import bench_scale
            rows += bench_scale.run(scale, 10_000, RABBIT_PORT, ROOT / "target" / "bench-scale", opts.seconds)
    finally:
        for p in (warren, sink):
            p.terminate()
        stop_rabbitmq(rabbit, rabbit_env)
    table = table_of(rows)
    print(table)
    pathlib.Path(opts.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
