"""Starts the real `warren` binary on a free loopback port for the pika tests.

WARREN_BIN names the binary (default: target/debug/warren under the repository root).
"""
import os
import pathlib
import signal
import socket
import subprocess
import time

import pika
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self):
        self.port = free_port()
        binary = os.environ.get("WARREN_BIN", str(ROOT / "target" / "debug" / "warren"))
        self.proc = subprocess.Popen(
            [binary, "--listen", f"127.0.0.1:{self.port}", "--log", "warn"],
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

    def params(self):
        return pika.ConnectionParameters("127.0.0.1", self.port)

    def connect(self):
        return pika.BlockingConnection(self.params())

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def broker():
    b = Broker()
    yield b
    if b.proc.poll() is None:
        b.stop()


@pytest.fixture
def fresh_broker():
    b = Broker()
    yield b
    if b.proc.poll() is None:
        b.stop()
