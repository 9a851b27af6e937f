"""Three (or more) real `warren` processes on loopback ports forming a cluster, for the cluster tests.

Each node gets its own AMQP, management, Prometheus and inter-node port and its own data directory;
the nodes share a secret. A node counts as up once it answers the AMQP protocol header with
connection.start (a cluster node serves clients only after it has joined).
"""

import hashlib
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import threading
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


def node_id(name):
    """A node's id as Warren derives it from its name (`cluster::node_id`: the first 23 bits of
    its SHA-256, never 0)."""
    d = hashlib.sha256(name.encode()).digest()
    return max(int.from_bytes(d[:3], "big") >> 1, 1)


class LinkProxy:
    """A TCP proxy in front of one node's inter-node listener: the other nodes dial the node through
    it. It reads the dialler's node id from the link handshake (`WRNLINK1` and a u64), so a test can
    isolate a node: every connection from or to it is cut and new ones are refused until healed."""

    def __init__(self, owner, target_port, blocked):
        self.owner = owner  # the fronted node's id
        self.target_port = target_port
        self.blocked = blocked  # shared set of isolated node ids
        self.port = free_port()
        self.lock = threading.Lock()
        self.conns = []  # (dialler id, client socket, server socket)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        try:
            head = b""
            while len(head) < 16:
                chunk = client.recv(16 - len(head))
                if not chunk:
                    client.close()
                    return
                head += chunk
            dialler = int.from_bytes(head[8:16], "big")
            if dialler in self.blocked or self.owner in self.blocked:
                client.close()
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            server.sendall(head)
        except OSError:
            client.close()
            return
        with self.lock:
            self.conns.append((dialler, client, server))
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        """Closes the connections that involve an isolated node."""
        with self.lock:
            keep = []
            for dialler, a, b in self.conns:
                if dialler in self.blocked or self.owner in self.blocked:
                    for s in (a, b):
                        try:
                            s.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        s.close()
                else:
                    keep.append((dialler, a, b))
            self.conns = keep

    def close(self):
        self.sock.close()
        with self.lock:
            for _, a, b in self.conns:
                a.close()
                b.close()
            self.conns = []


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
        self.id = node_id(self.name)
        self.proxy = None

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
                port = other.proxy.port if other.proxy else other.link_port
                a += ["--cluster-peer", f"{other.name}=127.0.0.1:{port}"]
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
    def __init__(self, size=3, secret=SECRET, proxied=False):
        """`proxied`: the nodes reach each other through a [`LinkProxy`] per node, so that
        `isolate` can cut a node off."""
        self.secret = secret
        self.nodes = []
        self.blocked = set()
        for i in range(size):
            self.nodes.append(Node(self, i))
        if proxied:
            for n in self.nodes:
                n.proxy = LinkProxy(n.id, n.link_port, self.blocked)

    def isolate(self, node):
        """Cuts `node` off from the others (its inter-node links; clients still reach it)."""
        self.blocked.add(node.id)
        for n in self.nodes:
            n.proxy.cut()

    def heal(self):
        self.blocked.clear()

    def start(self):
        for n in self.nodes:
            n.start()
        for n in self.nodes:
            n.wait_up()
        return self

    def stop(self):
        for n in self.nodes:
            n.stop()
        for n in self.nodes:
            if n.proxy:
                n.proxy.close()

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
