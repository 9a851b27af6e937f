"""Warren's management API side by side with a real RabbitMQ 3.10 node (Debian's rabbitmq-server with
rabbitmq_management, started here on ports of its own): `rabbitmqadmin` (the v1 script shipped inside
that package) runs its list/show/declare/delete/publish/get/export/import/close commands against
Warren with the same output columns as against RabbitMQ, and a definitions export from Warren
imports into RabbitMQ with the same objects. scripts/test.sh installs the package when missing."""
import glob
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import EXTERNAL, Broker, free_port
from test_management import call, send, _key

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="needs a Warren it starts")

ADMINS = glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_management-*/priv/www/cli/rabbitmqadmin")
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class Rabbit:
    """A RabbitMQ node with the management plugin, on loopback ports of its own."""

    def __init__(self):
        assert os.path.exists(RABBITMQ_SERVER), "rabbitmq-server is not installed (scripts/test.sh installs it)"
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="warren-rabbit-"))
        self.port, self.mgmt_port, dist = free_port(), free_port(), free_port()
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.mgmt_port}\n")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
        env = dict(os.environ, HOME=str(self.dir), RABBITMQ_NODENAME=f"warrencompat{self.port}@localhost",
                   RABBITMQ_MNESIA_BASE=str(self.dir / "mnesia"), RABBITMQ_LOG_BASE=str(self.dir / "log"),
                   RABBITMQ_CONFIG_FILE=str(self.dir / "rabbitmq"), RABBITMQ_DIST_PORT=str(dist),
                   RABBITMQ_ENABLED_PLUGINS_FILE=str(self.dir / "enabled_plugins"))
        self.proc = subprocess.Popen([RABBITMQ_SERVER], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.mgmt_port}/api/health/checks/alarms") as r:
                    return
            except urllib.error.HTTPError:
                return  # 401: the API is up
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("RabbitMQ did not start")

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def rabbit():
    r = Rabbit()
    yield r
    r.stop()


def admin(port, *args, check=True):
    """rabbitmqadmin's output (tab-separated, header line first) against the API on `port`."""
    assert ADMINS, "rabbitmqadmin is not installed (scripts/test.sh installs rabbitmq-server)"
    out = subprocess.run(["python3", ADMINS[0], "-H", "127.0.0.1", "-P", str(port), "-u", "guest", "-p", "guest",
                          "-f", "tsv", *args], capture_output=True, text=True, timeout=30)
    if check:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def header(port, *args):
    return admin(port, *args).stdout.splitlines()[0].split("\t")


def populate(port):
    """The same objects, through rabbitmqadmin, on either broker."""
    for cmd in [
        ["declare", "vhost", "name=compat"],
        ["declare", "user", "name=ann", "password=pw", "tags=monitoring"],
        ["declare", "permission", "vhost=compat", "user=ann", "configure=.*", "write=.*", "read=.*"],
        ["declare", "permission", "vhost=compat", "user=guest", "configure=.*", "write=.*", "read=.*"],
        ["declare", "queue", "name=cq", "durable=true", "arguments={\"x-max-length\": 10}"],
        ["declare", "exchange", "name=cx", "type=topic", "durable=true"],
        ["declare", "binding", "source=cx", "destination=cq", "routing_key=a.#"],
        ["declare", "policy", "name=cap", "pattern=^cq$", "definition={\"max-length\": 5}", "apply-to=queues"],
    ]:
        admin(port, *cmd)


def test_rabbitmqadmin_against_warren_and_rabbitmq(rabbit, tmp_path):
    warren = Broker(tmp_path=tmp_path)
    try:
        populate(warren.mgmt_port)
        populate(rabbit.mgmt_port)
        # Publish and get (rabbitmqadmin prints RabbitMQ's answer texts).
        for port in [warren.mgmt_port, rabbit.mgmt_port]:
            out = admin(port, "publish", "exchange=cx", "routing_key=a.b", "payload=hello")
            assert "Message published" in out.stdout, out.stdout
        w_get = admin(warren.mgmt_port, "get", "queue=cq", "ackmode=ack_requeue_true")
        r_get = admin(rabbit.mgmt_port, "get", "queue=cq", "ackmode=ack_requeue_true")
        assert w_get.stdout.splitlines()[0] == r_get.stdout.splitlines()[0]
        assert "hello" in w_get.stdout
        # The same columns for every listing, with a connection, a channel and a consumer open on each.
        import pika
        conns = []
        for port in [warren.port, rabbit.port]:
            c = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port, "/",
                                                                  pika.PlainCredentials("guest", "guest")))
            c.channel().basic_consume("cq", lambda *a: None)
            conns.append(c)
        # RabbitMQ lists connections, channels and consumers once its stats are emitted (every 5 s).
        deadline = time.time() + 30
        while time.time() < deadline:
            ready = [json.loads(urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{rabbit.mgmt_port}/api/{what}",
                headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})).read()) for what in
                ["connections", "channels", "consumers"]]
            if all(ready):
                break
            time.sleep(0.5)
        assert all(ready), "RabbitMQ never listed the connection, channel and consumer"
        for what in ["queues", "exchanges", "bindings", "users", "vhosts", "permissions", "connections",
                     "channels", "consumers", "nodes", "policies"]:
            assert header(warren.mgmt_port, "list", what) == header(rabbit.mgmt_port, "list", what), what
        assert header(warren.mgmt_port, "show", "overview") == header(rabbit.mgmt_port, "show", "overview")
        # Close a connection by name.
        name = admin(warren.mgmt_port, "list", "connections", "name").stdout.splitlines()[1]
        admin(warren.mgmt_port, "close", "connection", f"name={name}")
        deadline = time.time() + 5
        while call(warren, "/api/connections")[2] and time.time() < deadline:
            time.sleep(0.1)
        assert call(warren, "/api/connections")[2] == []
        for c in conns[1:]:
            c.close()
        # Export from Warren, import into a fresh Warren and into RabbitMQ.
        path = tmp_path / "defs.json"
        admin(warren.mgmt_port, "export", str(path))
        exported = json.loads(path.read_text())
        fresh = Broker(tmp_path=tmp_path)
        try:
            admin(fresh.mgmt_port, "import", str(path))
            again = call(fresh, "/api/definitions")[2]
            for key in ["vhosts", "permissions", "policies", "queues", "exchanges", "bindings"]:
                assert _key(again[key]) == _key(exported[key]), key
        finally:
            fresh.stop()
        admin(rabbit.mgmt_port, "import", str(path))
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{rabbit.mgmt_port}/api/definitions",
                headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="})) as r:
            theirs = json.loads(r.read())
        for key in ["queues", "exchanges", "bindings", "policies"]:
            ours = [o for o in exported[key] if o.get("vhost") in ("/", "compat")]
            assert all(o in theirs[key] for o in ours), (key, ours, theirs[key])
        # Deletes.
        for cmd in [["delete", "binding", "source=cx", "destination=cq", "properties_key=a.%23",
                     "destination_type=queue"],
                    ["delete", "queue", "name=cq"], ["delete", "exchange", "name=cx"],
                    ["delete", "policy", "name=cap"], ["delete", "permission", "vhost=compat", "user=ann"],
                    ["delete", "user", "name=ann"], ["delete", "vhost", "name=compat"]]:
            admin(warren.mgmt_port, *cmd)
        assert call(warren, "/api/queues/%2F/cq")[0] == 404
        assert call(warren, "/api/vhosts/compat")[0] == 404
    finally:
        warren.stop()
