#!/usr/bin/env python3
"""Resident memory of plugin instances: the release broker's RSS (VmRSS) with 0, 1, 10 and 100
exchanges of one Rust plugin (`x-consistent-hash`) and of one Python plugin (`x-py-direct`, built
with componentize-py), each exchange with one binding and one message routed through it (so its
instance has run). Prints a Markdown table; numbers are this machine's, with one broker per plugin so
that each row starts from the same baseline.

Usage: scripts/plugin_rss.py [--counts 1,10,100] [--warren target/release/warren]
Needs: target/release/warren (cargo build --release --bin warren), the plugins built (scripts/run.sh
or cargo build in plugins/), componentize-py and pika in tests/python/.venv (scripts/test.sh).
"""
import argparse
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
VENV = ROOT / "tests" / "python" / ".venv"
PORT = 5693


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def wait_port(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def measure(warren, plugin_file, kind, counts, tmp):
    """RSS (KiB) after declaring up to max(counts) exchanges of `kind`, sampled at each count. The
    broker is started twice on one data directory: the first start compiles the plugin (and caches
    it), its RSS with no exchange is reported as count None; the measured start loads it from the
    cache."""
    plugins = tmp / f"plugins-{kind}"
    plugins.mkdir()
    shutil.copy(plugin_file, plugins)
    first = run(warren, plugins, kind, [], tmp)
    return [(None, first[0][1])] + run(warren, plugins, kind, counts, tmp)


def run(warren, plugins, kind, counts, tmp):
    import pika

    proc = subprocess.Popen([str(warren), "--listen", f"127.0.0.1:{PORT}", "--log", "warn",
                             "--management-listen", "127.0.0.1:0", "--prometheus-listen", "127.0.0.1:0",
                             "--plugin-dir", str(plugins), "--data-dir", str(tmp / f"data-{kind}")],
                            stdout=subprocess.DEVNULL)
    try:
        wait_port(PORT)
        conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", PORT))
        ch = conn.channel()
        ch.confirm_delivery()
        # The type is usable once the initial load is over (a declare waits for it).
        ch.exchange_declare("warm-up", kind)
        ch.exchange_delete("warm-up")
        time.sleep(1)
        rows = [(0, rss_kib(proc.pid))]
        declared = 0
        for target in counts:
            while declared < target:
                x = f"x{declared}"
                ch.exchange_declare(x, kind)
                ch.queue_declare(f"q{declared}")
                ch.queue_bind(f"q{declared}", x, routing_key="1")
                ch.basic_publish(x, "1", b"m")
                declared += 1
            time.sleep(1)
            rows.append((target, rss_kib(proc.pid)))
        conn.close()
        return rows
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="1,10,100")
    ap.add_argument("--warren", default=str(ROOT / "target" / "release" / "warren"))
    opts = ap.parse_args()
    counts = [int(c) for c in opts.counts.split(",")]
    sys.path.insert(0, str(next((VENV / "lib").glob("python3*/site-packages"))))
    with tempfile.TemporaryDirectory() as t:
        tmp = pathlib.Path(t)
        subprocess.run(["cargo", "build", "--release", "--target", "wasm32-wasip2", "-p", "x-consistent-hash",
                        "--manifest-path", str(ROOT / "plugins" / "Cargo.toml"),
                        "--target-dir", str(ROOT / "target" / "plugins")], check=True)
        rust = ROOT / "target" / "plugins" / "wasm32-wasip2" / "release" / "x_consistent_hash.wasm"
        python = tmp / "py_direct.wasm"
        subprocess.run(["bash", str(ROOT / "plugins" / "python" / "build.sh"),
                        str(ROOT / "plugins" / "python" / "py-direct"), str(python)],
                       check=True, stdout=subprocess.DEVNULL)
        results = {
            "Rust x-consistent-hash": measure(opts.warren, rust, "x-consistent-hash", counts, tmp),
            "Python x-py-direct": measure(opts.warren, python, "x-py-direct", counts, tmp),
        }
    print("| plugin | exchanges | RSS MiB | over 0 exchanges (cached start), MiB | per exchange, MiB |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        base = rows[1][1]
        for n, kib in rows:
            if n is None:
                print(f"| {name} | 0 (first start: compiled) | {kib / 1024:.1f} | | |")
                continue
            per = f"{(kib - base) / 1024 / n:.2f}" if n else ""
            print(f"| {name} | {n} | {kib / 1024:.1f} | {(kib - base) / 1024:.1f} | {per} |")


if __name__ == "__main__":
    main()
