"""Three (or more) real `warren` processes on loopback ports forming a cluster, for the cluster tests.

Each node gets its own AMQP, management, Prometheus and inter-node port and its own data directory;
the nodes share a secret. A node counts as up once it answers the AMQP protocol header with
connection.start (a cluster node serves clients only after it has joined).
"""

import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import time

import pika

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "warren-test-secret"
PLUGINS = pathlib.Path(
    os.environ.get("WARREN_PLUGINS", str(ROOT / "target" / "plugins" / "wasm32-wasip2" / "release"))
)
FIRST_PARTY = ["x_consistent_hash", "x_random", "match_filter", "idempotency_key"]


_handed_out = set()


def free_port():
    """A loopback port nothing listens on, never the same twice in this process (several nodes'
    ports are picked before any of them binds)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def answers_amqp(port, timeout=0.5):
    """Whether something on `port` answers the AMQP 0-9-1 header with a frame (connection.start)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return len(s.recv(8)) > 0
    except OSError:
        return False


class Node:
    def __init__(self, cluster, index):
        self.cluster = cluster
        self.index = index
        self.name = f"warren@n{index + 1}"
        self.port = free_port()
        self.mgmt_port = free_port()
        self.prometheus_port = free_port()
        self.link_port = free_port()
        self.data_dir = tempfile.mkdtemp(prefix=f"warren-cluster-n{index + 1}-")
        self.proc = None
        self.log_path = pathlib.Path(self.data_dir + ".log")
        self.plugin_dir = None
        self.extra_args = []
        self.log_filter = os.environ.get("WARREN_CLUSTER_LOG", "warn")

    def args(self):
        binary = os.environ.get("WARREN_BIN", str(ROOT / "target" / "debug" / "warren"))
        a = [
            binary,
            "--listen", f"127.0.0.1:{self.port}",
            "--log", self.log_filter,
            "--data-dir", self.data_dir,
            "--management-listen", f"127.0.0.1:{self.mgmt_port}",
            "--prometheus-listen", f"127.0.0.1:{self.prometheus_port}",
            "--cluster",
            "--cluster-node", self.name,
            "--cluster-listen", f"127.0.0.1:{self.link_port}",
        ]
        for other in self.cluster.nodes:
            if other is not self:
                a += ["--cluster-peer", f"{other.name}=127.0.0.1:{other.link_port}"]
        if self.plugin_dir is not None:
            a += ["--plugin-dir", str(self.plugin_dir)]
        return a + self.extra_args

    def with_first_party_plugins(self):
        """Gives the node a plugin directory with the first-party plugins the pika suite uses."""
        d = pathlib.Path(self.data_dir + "-plugins")
        d.mkdir(exist_ok=True)
        for name in FIRST_PARTY:
            (d / f"{name}.wasm").write_bytes((PLUGINS / f"{name}.wasm").read_bytes())
        self.plugin_dir = d

    def start(self):
        env = dict(os.environ, WARREN_CLUSTER_SECRET=self.cluster.secret)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def wait_up(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log()}")
            if answers_amqp(self.port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start serving within {timeout}s: {self.log()}")

    def log(self):
        try:
            return self.log_path.read_text()[-4000:]
        except OSError:
            return ""

    def params(self, **kw):
        return pika.ConnectionParameters(
            "127.0.0.1", self.port, kw.get("vhost", "/"),
            pika.PlainCredentials(kw.get("user", "guest"), kw.get("password", "guest")),
            blocked_connection_timeout=30,
        )

    def connect(self, **kw):
        return pika.BlockingConnection(self.params(**kw))

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)


class Cluster:
    def __init__(self, size=3, secret=SECRET):
        self.secret = secret
        self.nodes = []
        for i in range(size):
            self.nodes.append(Node(self, i))

    def start(self):
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_up()
        return self

    def stop(self):
        for n in self.nodes:
            n.stop()

    def __getitem__(self, i):
        return self.nodes[i]


def main(argv):
    """`cluster_harness.py COMMAND…`: starts a three-node cluster, runs COMMAND with
    WARREN_TEST_BROKER (HOST:PORT) and WARREN_TEST_AMQP_URL naming node 2 (a node that did not
    necessarily declare anything: a follower or the leader, as the election went), stops the cluster,
    and exits with COMMAND's status."""
    if not argv:
        print("usage: cluster_harness.py COMMAND [ARG…]", file=sys.stderr)
        return 2
    cluster = Cluster(3)
    for n in cluster.nodes:
        n.with_first_party_plugins()
    try:
        cluster.start()
        node = cluster[1]
        env = dict(
            os.environ,
            WARREN_TEST_BROKER=f"127.0.0.1:{node.port}",
            WARREN_TEST_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{node.port}/",
        )
        print(f"cluster_harness: 3 nodes up; running against {node.name} at 127.0.0.1:{node.port}", flush=True)
        status = subprocess.call(argv, env=env)
        for n in cluster.nodes:
            if n.proc.poll() is not None:
                print(f"cluster_harness: {n.name} died during the run:\n{n.log()}", file=sys.stderr)
                status = status or 1
        return status
    finally:
        cluster.stop()


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
