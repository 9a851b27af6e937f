#!/usr/bin/env python3
"""Cluster benchmark (issue 18): scenario (a) — 1 producer / 1 consumer, 16 B, auto-ack — and the
fixed-rate latency scenario (d) through a queue's home node and through another node of the cluster,
beside a single node, for Warren (three nodes) and RabbitMQ 3.10 (two nodes joined with
`rabbitmqctl join_cluster`), all on this machine, same generator (warren-perf), runs alternating.

"Through another node": the queue is declared on node 1 (its home; a classic queue in RabbitMQ) and
warren-perf's producer and consumer connect to node 2, so every message crosses the inter-node link
twice (publish to the home, delivery back).

Usage: scripts/bench_cluster.py [--runs N] [--seconds S] [--out FILE]
"""
import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "python"))

from bench import PERF, WARREN, listener_pids, metric, perf, wait_idle, wait_port  # noqa: E402
from cluster_harness import Cluster, free_port  # noqa: E402

CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
RABBIT = [("warrenbench@localhost", 5673, 25679), ("warrenbench2@localhost", 5675, 25681)]


def start_rabbit_cluster(tmp, nodes=None):
    """RabbitMQ nodes on this machine (own names, ports, data dirs; one cookie): `nodes` (name, AMQP
    port, distribution port), two by default; every node after the first joined to the first."""
    nodes = nodes or RABBIT
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # One Erlang cookie for both nodes and the CLI (all run with HOME=tmp).
    cookie = tmp / ".erlang.cookie"
    cookie.write_text("WARRENBENCHCLUSTERCOOKIE")
    cookie.chmod(0o400)
    procs, envs = [], []
    for name, port, dist in nodes:
        d = tmp / name.split("@")[0]
        d.mkdir()
        (d / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n")
        env = dict(os.environ, HOME=str(tmp), RABBITMQ_NODENAME=name, RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
                   RABBITMQ_LOG_BASE=str(d / "log"), RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),
                   RABBITMQ_DIST_PORT=str(dist), RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"))
        (d / "enabled_plugins").write_text("[].\n")
        procs.append(subprocess.Popen(["/usr/lib/rabbitmq/bin/rabbitmq-server"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        envs.append(env)
        if not wait_port(port, 90):
            sys.exit(f"RabbitMQ {name} did not start")
    time.sleep(2)
    # The CLI itself, not /usr/sbin/rabbitmqctl (a wrapper that runs it as the rabbitmq user with
    # that user's HOME and cookie).
    for i in range(1, len(nodes)):
        ctl = [CTL, "-n", nodes[i][0]]
        for cmd in (["stop_app"], ["join_cluster", nodes[0][0]], ["start_app"]):
            subprocess.run(ctl + cmd, env=envs[i], check=True, capture_output=True, timeout=120)
        if not wait_port(nodes[i][1], 60):
            sys.exit(f"RabbitMQ node {i + 1} did not come back after joining")
    time.sleep(2)
    return procs, envs


def stop_rabbit_cluster(procs, envs, nodes=None):
    nodes = nodes or RABBIT
    for (name, _, _), env in zip(reversed(nodes), reversed(envs)):
        subprocess.run([CTL, "-n", name, "stop"], env=env, capture_output=True, timeout=60)
    for p in procs:
        p.terminate()


def declare_on(port, queue):
    """Declares `queue` (as warren-perf does: transient, no arguments) through the broker on `port`."""
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
    conn.channel().queue_declare(queue)
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--out")
    opts = ap.parse_args()
    if not PERF.exists() or not WARREN.exists():
        sys.exit("build first: cargo build --release --bin warren --bin warren-perf")
    os.environ["WARREN_BIN"] = str(WARREN)
    os.environ.setdefault("WARREN_CLUSTER_LOG", "error")

    single_port = free_port()
    single_dir = tempfile.mkdtemp(prefix="warren-bench-single-")
    single = subprocess.Popen([str(WARREN), "--listen", f"127.0.0.1:{single_port}", "--data-dir", single_dir,
                               "--management-listen", "off", "--prometheus-listen", "off", "--log", "error"])
    rabbit, rabbit_envs = start_rabbit_cluster(ROOT_TMP)
    try:
        cluster = Cluster(3).start()
    except Exception:
        stop_rabbit_cluster(rabbit, rabbit_envs)
        single.terminate()
        raise
    n1, n2 = cluster[0], cluster[1]
    declare_on(n1.port, "perf-remote")
    declare_on(RABBIT[0][1], "perf-remote")
    a = ["-x1", "-y1", "-s16", "-a"]
    d = ["-x1", "-y1", "-s16", "-a", "-r", "10000"]
    cases = [
        # (label, broker, port, args, metric)
        ("(a) single node", "warren", single_port, a + ["-u", "perf-single"], "consume_rate"),
        ("(a) cluster, through the home node", "warren", n1.port, a + ["-u", "perf-home"], "consume_rate"),
        ("(a) cluster, through another node", "warren", n2.port, a + ["-u", "perf-remote"], "consume_rate"),
        ("(d) p99 us, through the home node", "warren", n1.port, d + ["-u", "perf-home"], "p99"),
        ("(d) p99 us, through another node", "warren", n2.port, d + ["-u", "perf-remote"], "p99"),
        ("(a) cluster, through the home node", "rabbitmq", RABBIT[0][1], a + ["-u", "perf-home"], "consume_rate"),
        ("(a) cluster, through another node", "rabbitmq", RABBIT[1][1], a + ["-u", "perf-remote"], "consume_rate"),
        ("(d) p99 us, through the home node", "rabbitmq", RABBIT[0][1], d + ["-u", "perf-home"], "p99"),
        ("(d) p99 us, through another node", "rabbitmq", RABBIT[1][1], d + ["-u", "perf-remote"], "p99"),
    ]
    results = {}
    pids = [single.pid] + [n.proc.pid for n in cluster.nodes]
    pids += [p for _, port, _ in RABBIT for p in listener_pids(port)]
    try:
        for r in range(opts.runs):
            for label, broker, port, args, name in cases:
                # Every run starts once all brokers are idle (a home node may still be working off
                # what the previous run left in its links).
                wait_idle(pids)
                v = metric(perf(port, args, opts.seconds), name)
                results.setdefault((label, broker), []).append(v)
                print(f"run {r + 1}: {broker} {label}: {v:,.0f}", file=sys.stderr)
    finally:
        stop_rabbit_cluster(rabbit, rabbit_envs)
        cluster.stop()
        single.terminate()
    labels = []
    for label, _, _, _, _ in cases:
        if label not in labels:
            labels.append(label)
    lines = ["| scenario | Warren | RabbitMQ 3.10 | Warren advantage |", "|---|---:|---:|---:|"]
    for label in labels:
        w = results.get((label, "warren"))
        rb = results.get((label, "rabbitmq"))
        wm = statistics.median(w) if w else None
        rm = statistics.median(rb) if rb else None
        if wm is None:
            continue
        if rm is None:
            ratio = ""
        elif label.startswith("(d)"):
            ratio = f"{rm / wm:.2f}x"
        else:
            ratio = f"{wm / rm:.2f}x"
        lines.append(f"| {label} | {wm:,.0f} | {'' if rm is None else f'{rm:,.0f}'} | {ratio} |")
    table = "\n".join(lines)
    print(table)
    if opts.out:
        pathlib.Path(opts.out).write_text(table + "\n")


ROOT_TMP = pathlib.Path(__file__).resolve().parents[1] / "target" / "bench-rabbitmq-cluster"

if __name__ == "__main__":
    main()
