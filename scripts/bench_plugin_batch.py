#!/usr/bin/env python3
"""Message batching for plugins that route on the whole message, measured on the first-party Python
plugin `x-json-route`: the same `app.py` built twice with componentize-py — against the current WIT
package (0.4.0; since 0.3.0 the broker hands it runs of messages in one `route-messages` call) and against the
released 0.2.0 package (no `route-messages`: one `route` call per message) — each loaded into the
release broker in turn, runs alternating, the same warren-perf load (1 producer with confirms,
window 1000, 1 consumer, auto-ack, a 48 B JSON body routed on `order.region`). Prints the medians
and the ratio as a Markdown table (also written to --out). Warren only: RabbitMQ has no such plugin.

Usage: scripts/bench_plugin_batch.py [--runs N] [--seconds S] [--out FILE]
(builds the release broker and warren-perf first if they are missing: cargo build --release -p warren
-p warren-perf; componentize-py from tests/python/.venv, which scripts/test.sh installs).
"""
import argparse
import json
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench import PERF, ROOT, WARREN, perf, wait_idle, wait_port

PORT = 5675
COMPONENTIZE = ROOT / "tests" / "python" / ".venv" / "bin" / "componentize-py"
APP = ROOT / "plugins" / "python" / "x-json-route"
BODY = '{"order": {"region": "eu", "id": 12345}, "n": 1}'
LOAD = ["-e", "perf-json", "-t", "x-json-route", "-k", "orders", "--binding-key", "order.region=eu",
        "--body", BODY, "-x1", "-y1", "-c", "1000", "-a"]

# variant -> (WIT path, world)
VARIANTS = {
    "per-message calls (warren:plugin@0.2.0 build)": (
        ROOT / "wit" / "released" / "warren-plugin@0.2.0.wit", "warren:plugin/exchange-plugin@0.2.0"),
    "batched route-messages (warren:plugin@0.4.0 build)": (ROOT / "wit", "warren:plugin/exchange-plugin"),
}


def build(wit, world, out):
    subprocess.run([str(COMPONENTIZE), "-d", str(wit), "-w", world, "componentize", "-p", str(APP), "app",
                    "-o", str(out)], check=True, stdout=subprocess.DEVNULL)


def run_once(plugin, seconds, tmp):
    plugins = tmp / "plugins"
    shutil.rmtree(plugins, ignore_errors=True)
    plugins.mkdir()
    shutil.copy(plugin, plugins / "x_json_route.wasm")
    data = tmp / "data"
    proc = subprocess.Popen([str(WARREN), "--listen", f"127.0.0.1:{PORT}", "--data-dir", str(data),
                             "--plugin-dir", str(plugins), "--management-listen", "off",
                             "--prometheus-listen", "off", "--log", "warn"])
    try:
        if not wait_port(PORT, 60):
            sys.exit("warren did not start")
        wait_idle([proc.pid])
        return perf(PORT, LOAD, seconds)["consume_rate"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--out", default="")
    opts = ap.parse_args()
    if not PERF.exists() or not WARREN.exists():
        subprocess.run(["cargo", "build", "--release", "--locked", "-p", "warren", "-p", "warren-perf"],
                       cwd=ROOT, check=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="warren-bench-batch-"))
    files = {}
    for name, (wit, world) in VARIANTS.items():
        files[name] = tmp / (name.split()[0] + ".wasm")
        build(wit, world, files[name])
    rates = {name: [] for name in VARIANTS}
    for run in range(opts.runs):
        for name in VARIANTS:
            rate = run_once(files[name], opts.seconds, tmp)
            rates[name].append(rate)
            print(f"run {run + 1}: {name}: {rate:.0f} msg/s", flush=True)
            time.sleep(1)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    single, batched = medians.values()
    lines = ["| x-json-route (Python), 1 producer (confirms) / 1 consumer, 48 B JSON | msg/s (median) |",
             "|---|---:|"]
    lines += [f"| {name} | {m:.0f} |" for name, m in medians.items()]
    lines.append(f"| batched / per-message | {batched / single:.2f}× |")
    text = "\n".join(lines)
    print(text)
    print(f"runs: {json.dumps({k: [round(x) for x in v] for k, v in rates.items()})}")
    if opts.out:
        pathlib.Path(opts.out).write_text(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
