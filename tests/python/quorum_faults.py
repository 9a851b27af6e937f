"""Fault injection for quorum queues: three real `warren` processes on loopback (their inter-node
links through `cluster_harness.LinkProxy`), a publisher with confirms and a consumer with manual
acks on different nodes, and one fault per round:

- `kill-leader`: the quorum group's leader is killed with SIGKILL, then started again;
- `pause-follower`: a follower is stopped with SIGSTOP for 3 s, then continued;
- `isolate`: a node (the leader) is cut off from the others by the link proxies for 3 s, then healed;
- `rolling-restart`: every node in turn is stopped (SIGTERM), started and waited for.

After each round the checker stops publishing, lets the consumer drain, and finds: every confirmed
message delivered (acked before the fault or delivered after it), no delivery of a message that was
never published, and a message delivered twice only when the later delivery is flagged
`redelivered`. It also reports the slowest publisher confirm of the round.

    python tests/python/quorum_faults.py --rounds 100      # the soak (README "Quorum queues")

exits 0 when every round passes. The pytest suite runs one round of each fault (test_quorum.py).
"""

import argparse
import base64
import json
import sys
import threading
import time
import urllib.request

import pika

from cluster_harness import Cluster

FAULTS = ["kill-leader", "pause-follower", "isolate", "rolling-restart"]
QUEUE = "qq-faults"


def api(node, path):
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.mgmt_port}{path}",
        headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def leader(cluster):
    """The quorum group's leader as a running node reports it (None when none is known)."""
    for n in cluster.nodes:
        if n.proc.poll() is not None:
            continue
        try:
            name = api(n, f"/api/queues/%2F/{QUEUE}").get("leader")
        except Exception:
            continue
        for m in cluster.nodes:
            if m.name == name:
                return m
    return None


# Every round's workload by round number: a message of an earlier round may still come (a
# delivery whose ack was lost with its connection goes back to the queue), and is checked against
# the round that published it.
HISTORY = {}


class Workload:
    """A publisher (confirms, one message at a time) and a consumer (manual acks, prefetch 50) on
    different nodes; each moves to the next node when its connection fails. Bodies are
    `ROUND:ID`."""

    def __init__(self, cluster, publisher_node, consumer_node, round_number=0):
        self.cluster = cluster
        self.round = round_number
        self.earlier = []  # (round, id, redelivered) of messages of earlier rounds
        HISTORY[round_number] = self
        self.stop_publishing = threading.Event()
        self.stop_consuming = threading.Event()
        self.lock = threading.Lock()
        self.next_id = 0
        self.attempted = set()
        self.confirmed = set()
        self.nacked = set()
        self.deliveries = {}  # id -> [redelivered flags]
        self.latencies = []  # (time confirmed, seconds)
        self.errors = []
        self.threads = [
            threading.Thread(target=self._publish, args=(publisher_node,), daemon=True),
            threading.Thread(target=self._consume, args=(consumer_node,), daemon=True),
        ]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def _nodes_from(self, index):
        nodes = self.cluster.nodes
        while True:
            yield nodes[index % len(nodes)]
            index += 1

    def _publish(self, first):
        nodes = self._nodes_from(first)
        node = next(nodes)
        conn = None
        while not self.stop_publishing.is_set():
            try:
                if conn is None or conn.is_closed:
                    conn = node.connect()
                    ch = conn.channel()
                    ch.confirm_delivery()
                with self.lock:
                    self.next_id += 1
                    mid = self.next_id
                    self.attempted.add(mid)
                started = time.time()
                try:
                    body = f"{self.round}:{mid}".encode()
                    ch.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2))
                    with self.lock:
                        self.confirmed.add(mid)
                        self.latencies.append((time.time(), time.time() - started))
                except pika.exceptions.NackError:
                    with self.lock:
                        self.nacked.add(mid)
            except Exception as e:  # connection lost, node down: next node
                self.errors.append(f"publisher on {node.name}: {type(e).__name__}")
                conn = None
                node = next(nodes)
                time.sleep(0.1)
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:
                pass

    def _consume(self, first):
        nodes = self._nodes_from(first)
        node = next(nodes)
        while not self.stop_consuming.is_set():
            try:
                conn = node.connect()
                ch = conn.channel()
                ch.basic_qos(prefetch_count=50)

                def on(chn, method, props, body):
                    r, mid = (int(x) for x in body.split(b":"))
                    with self.lock:
                        if r == self.round:
                            self.deliveries.setdefault(mid, []).append(method.redelivered)
                        else:
                            self.earlier.append((r, mid, method.redelivered))
                    chn.basic_ack(method.delivery_tag)

                ch.basic_consume(QUEUE, on)
                while not self.stop_consuming.is_set():
                    conn.process_data_events(0.1)
                    if not ch.consumer_tags:  # cancelled by the broker: consume again
                        ch.basic_consume(QUEUE, on)
                conn.close()
            except Exception as e:
                self.errors.append(f"consumer on {node.name}: {type(e).__name__}")
                node = next(nodes)
                time.sleep(0.1)

    def finish(self, drain_timeout=60):
        self.stop_publishing.set()
        self.threads[0].join(30)
        deadline = time.time() + drain_timeout
        while time.time() < deadline:
            with self.lock:
                if self.confirmed <= set(self.deliveries):
                    break
            time.sleep(0.2)
        time.sleep(0.5)  # late duplicates, if any, arrive
        self.stop_consuming.set()
        self.threads[1].join(30)

    def problems(self):
        with self.lock:
            out = []
            missing = self.confirmed - set(self.deliveries)
            if missing:
                out.append(f"{len(missing)} confirmed messages never delivered: {sorted(missing)[:10]}")
            invented = set(self.deliveries) - self.attempted
            if invented:
                out.append(f"{len(invented)} delivered messages never published: {sorted(invented)[:10]}")
            unflagged = [m for m, flags in self.deliveries.items() if not all(flags[1:])]
            if unflagged:
                out.append(f"{len(unflagged)} messages delivered again without redelivered: {sorted(unflagged)[:10]}")
            earlier = list(self.earlier)
        for r, mid, redelivered in earlier:
            w = HISTORY.get(r)
            if w is None or mid not in w.attempted:
                out.append(f"a delivered message was never published: round {r}, id {mid}")
            elif mid in w.deliveries and not redelivered:
                out.append(f"round {r}'s message {mid}, delivered then, came again without redelivered")
        return out

    def summary(self):
        with self.lock:
            worst = max((s for _, s in self.latencies), default=0.0)
            dups = sum(len(f) - 1 for f in self.deliveries.values())
            return {
                "earlier_rounds": len(self.earlier),
                "published": len(self.attempted),
                "confirmed": len(self.confirmed),
                "nacked": len(self.nacked),
                "delivered": len(self.deliveries),
                "redeliveries": dups,
                "worst_confirm_s": round(worst, 3),
            }


def inject(cluster, fault):
    """Injects `fault`; returns when the cluster is whole again."""
    if fault == "kill-leader":
        victim = leader(cluster) or cluster[0]
        victim.kill()
        time.sleep(2)
        victim.start()
        victim.wait_up()
    elif fault == "pause-follower":
        lead = leader(cluster)
        victim = next(n for n in cluster.nodes if n is not lead)
        victim.pause()
        time.sleep(3)
        victim.resume()
    elif fault == "isolate":
        victim = leader(cluster) or cluster[0]
        cluster.isolate(victim)
        time.sleep(3)
        cluster.heal()
    elif fault == "rolling-restart":
        for n in cluster.nodes:
            n.stop()
            n.start()
            n.wait_up()
            time.sleep(1)
    else:
        raise ValueError(fault)


def run_round(cluster, fault, index=0):
    """One round: traffic, `fault`, traffic, drain; returns (problems, summary)."""
    w = Workload(cluster, 1 + index % 3, 2 + index % 3, index).start()
    time.sleep(1.5)
    inject(cluster, fault)
    time.sleep(1.5)
    w.finish()
    return w.problems(), w.summary()


def start_cluster():
    c = Cluster(3, proxied=True).start()
    ch = c[0].connect().channel()
    ch.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    ch.connection.close()
    return c


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=len(FAULTS))
    parser.add_argument("--fault", choices=FAULTS, help="only this fault (default: each in turn)")
    args = parser.parse_args(argv)
    cluster = start_cluster()
    failed = 0
    worst = 0.0
    try:
        for i in range(args.rounds):
            fault = args.fault or FAULTS[i % len(FAULTS)]
            problems, summary = run_round(cluster, fault, i)
            worst = max(worst, summary["worst_confirm_s"])
            status = "ok" if not problems else "FAILED"
            print(f"round {i + 1}/{args.rounds} {fault}: {status} {summary}", flush=True)
            for p in problems:
                print(f"  {p}", flush=True)
            failed += bool(problems)
    finally:
        cluster.stop()
    print(f"{args.rounds - failed}/{args.rounds} rounds passed; slowest confirm {worst:.3f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
