"""Starts the real `warren` binary on a free loopback port for the pika tests.

WARREN_BIN names the binary (default: target/debug/warren under the repository root).
WARREN_TEST_BROKER=HOST:PORT runs the tests against an already running broker instead (for example a
RabbitMQ, to check that the tests encode RabbitMQ's behaviour); tests that need their own
configuration or a restart are skipped then.
"""
import base64
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pika
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, config_text=None, tmp_path=None, data_dir=None, plugin_dir=None, management_flag=True):
        self.port = free_port()
        self.mgmt_port = free_port()
        self.prometheus_port = free_port()
        binary = os.environ.get("WARREN_BIN", str(ROOT / "target" / "debug" / "warren"))
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="warren-pika-")
        self.plugin_dir = plugin_dir
        args = [binary, "--listen", f"127.0.0.1:{self.port}", "--log", "warn", "--data-dir", self.data_dir]
        if management_flag:
            # A port of its own: brokers of parallel tests must not contend for 15672.
            args += ["--management-listen", f"127.0.0.1:{self.mgmt_port}"]
        args += ["--prometheus-listen", f"127.0.0.1:{self.prometheus_port}"]
        if plugin_dir is not None:
            args += ["--plugin-dir", str(plugin_dir)]
        if config_text is not None:
            path = pathlib.Path(tmp_path) / "warren.toml"
            path.write_text(config_text)
            args += ["--config", str(path)]
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError("warren did not start: " + self.proc.stdout.read().decode())

    def params(self, user="guest", password="guest", vhost="/"):
        return pika.ConnectionParameters("127.0.0.1", self.port, vhost, pika.PlainCredentials(user, password))

    def connect(self, **kwargs):
        return pika.BlockingConnection(self.params(**kwargs))

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)

    def restarted(self):
        """A new broker on this one's data and plugin directories (stop this one first)."""
        return Broker(data_dir=self.data_dir, plugin_dir=self.plugin_dir)

    def confirmed_channel(self):
        """A new connection and a channel on it in confirm mode."""
        conn = self.connect()
        ch = conn.channel()
        ch.confirm_delivery()
        return conn, ch


class External:
    """A broker someone else runs (WARREN_TEST_BROKER)."""

    def __init__(self, address):
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)

    def params(self, user="guest", password="guest", vhost="/"):
        return pika.ConnectionParameters(self.host, self.port, vhost, pika.PlainCredentials(user, password))

    def connect(self, **kwargs):
        return pika.BlockingConnection(self.params(**kwargs))


EXTERNAL = os.environ.get("WARREN_TEST_BROKER")


@pytest.fixture(scope="module")
def broker():
    if EXTERNAL:
        yield External(EXTERNAL)
        return
    b = Broker()
    yield b
    if b.proc.poll() is None:
        b.stop()


@pytest.fixture
def fresh_broker():
    if EXTERNAL:
        pytest.skip("needs a broker of its own")
    b = Broker()
    yield b
    if b.proc.poll() is None:
        b.stop()


@pytest.fixture
def configured_broker(tmp_path):
    """A factory: configured_broker(toml_text) starts a broker with that config file."""
    if EXTERNAL:
        pytest.skip("needs a broker with its own configuration")
    started = []

    def start(text):
        b = Broker(text, tmp_path)
        started.append(b)
        return b

    yield start
    for b in started:
        if b.proc.poll() is None:
            b.stop()


# The plugin components built from plugins/ (tests/build.rs builds them during `cargo test`).
PLUGINS = pathlib.Path(
    os.environ.get("WARREN_PLUGINS", str(ROOT / "target" / "plugins" / "wasm32-wasip2" / "release"))
)


@pytest.fixture(scope="module")
def plugin_broker(tmp_path_factory):
    """A broker with the first-party plugins (x-consistent-hash, x-random, match, idempotency-key)
    in its plugin directory. Against WARREN_TEST_BROKER, that broker (RabbitMQ with its consistent-hash
    and random exchange plugins enabled, say) is used as it is."""
    if EXTERNAL:
        yield External(EXTERNAL)
        return
    plugin_dir = tmp_path_factory.mktemp("plugins")
    for name in ["x_consistent_hash", "x_random", "match_filter", "idempotency_key"]:
        src = PLUGINS / f"{name}.wasm"
        assert src.exists(), f"{src} missing: run `cargo test` (it builds plugins/) or set WARREN_PLUGINS"
        (plugin_dir / f"{name}.wasm").write_bytes(src.read_bytes())
    b = Broker(plugin_dir=plugin_dir)
    yield b
    if b.proc.poll() is None:
        b.stop()


def copy_plugins(tmp_path, *names):
    """A plugin directory under `tmp_path` holding the built components `names` (e.g.
    "x_delayed_message"), for a broker started with it."""
    d = tmp_path / "plugins"
    d.mkdir(exist_ok=True)
    for name in names:
        src = PLUGINS / f"{name}.wasm"
        assert src.exists(), f"{src} missing: run `cargo test` (it builds plugins/) or set WARREN_PLUGINS"
        (d / f"{name}.wasm").write_bytes(src.read_bytes())
    return d


def broker_with_built_plugin(tmp_path_factory, build_script, source_dir, file_name):
    """A broker whose plugin directory holds the component `build_script` (plugins/python/build.sh or
    plugins/js/build.sh) makes from `source_dir` (both relative to the repository root)."""
    plugin_dir = tmp_path_factory.mktemp("built-plugins")
    subprocess.run(
        ["bash", str(ROOT / build_script), str(ROOT / source_dir), str(plugin_dir / file_name)],
        check=True, stdout=subprocess.DEVNULL,
    )
    return Broker(plugin_dir=plugin_dir)


def plugin_status(broker, name):
    """The entry for plugin `name` in the management API's /api/warren/plugins."""
    request = urllib.request.Request(f"http://127.0.0.1:{broker.mgmt_port}/api/warren/plugins")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=10) as r:
        return next(p for p in json.load(r) if p["name"] == name)
