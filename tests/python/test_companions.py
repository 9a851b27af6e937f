"""The binary's companions and log formats, run as an operator would: `warren hash-password`,
`warren ping`, `--log-format json`, and plain text (no colour codes) when the log is not a terminal."""
import base64
import json
import os
import subprocess
import time

import pytest

from conftest import EXTERNAL, ROOT, Broker, free_port

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="runs the binary itself")

BINARY = os.environ.get("WARREN_BIN", str(ROOT / "target" / "debug" / "warren"))


def test_hash_password_gives_a_hash_the_broker_accepts(tmp_path):
    out = subprocess.run([BINARY, "hash-password", "s3cret"], capture_output=True, text=True, check=True)
    digest = out.stdout.strip()
    assert len(base64.b64decode(digest)) == 36, "4-octet salt + SHA-256"
    piped = subprocess.run([BINARY, "hash-password"], input="s3cret\n", capture_output=True, text=True,
                           check=True).stdout.strip()
    assert piped != digest, "a fresh salt each time"
    b = Broker(f'[[users]]\nname = "ops"\npassword_hash = "{piped}"\ntags = []\n'
               '[[permissions]]\nuser = "ops"\nvhost = "/"\nconfigure = ".*"\nwrite = ".*"\nread = ".*"\n',
               tmp_path)
    try:
        conn = b.connect(user="ops", password="s3cret")
        conn.channel().queue_declare("hashed")
        conn.close()
    finally:
        b.stop()


def test_ping(tmp_path):
    b = Broker(tmp_path=tmp_path)
    try:
        ok = subprocess.run([BINARY, "ping", f"127.0.0.1:{b.port}"], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        assert "connection.start" in ok.stdout
    finally:
        b.stop()
    down = subprocess.run([BINARY, "ping", f"127.0.0.1:{free_port()}"], capture_output=True, text=True)
    assert down.returncode == 1
    assert "cannot connect" in down.stderr


def _log_lines(args, tmp_path):
    port = free_port()
    proc = subprocess.Popen([BINARY, "--listen", f"127.0.0.1:{port}", "--management-listen", "off", "--prometheus-listen", "off",
                             "--data-dir", str(tmp_path / "data"), "--log", "info"] + args,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={k: v for k, v in os.environ.items() if k != "NO_COLOR"})
    time.sleep(1.5)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return out.decode().splitlines()


def test_json_logs(tmp_path):
    lines = _log_lines(["--log-format", "json"], tmp_path)
    assert lines
    events = [json.loads(line) for line in lines]
    listening = [e for e in events if e["fields"].get("message") == "listening for AMQP 0-9-1"]
    assert listening and listening[0]["level"] == "INFO" and "timestamp" in listening[0]


def test_text_logs_have_no_colour_codes_in_a_pipe(tmp_path):
    lines = _log_lines([], tmp_path)
    assert any("listening for AMQP 0-9-1" in line for line in lines)
    assert not any("\x1b[" in line for line in lines)
