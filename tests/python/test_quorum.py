"""Quorum queues (`x-queue-type: quorum`) on three real `warren` processes: replicated through the
quorum group, served by every node, surviving the loss of a node with no confirmed message lost.

Expected behaviour from RabbitMQ docs/quorum-queues (feature matrix, poison message handling) and
`rabbit_quorum_queue`'s declare checks (reply texts).
"""

import time
import urllib.request

import pika
import pytest

import quorum_faults
from cluster_harness import Cluster
from test_cluster import api, eventually


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3).start()
    yield c
    c.stop()


def declare(node, name, **arguments):
    ch = node.connect().channel()
    ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum", **arguments})
    ch.connection.close()


def publish_confirmed(node, queue, bodies, **props):
    ch = node.connect().channel()
    ch.confirm_delivery()
    for b in bodies:
        ch.basic_publish("", queue, b, pika.BasicProperties(delivery_mode=2, **props))
    ch.connection.close()


def drain(node, queue, n, timeout=10):
    """Consumes `n` messages with manual acks: [(body, redelivered)]."""
    conn = node.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=20)
    got = []

    def on(chn, m, props, body):
        got.append((body, m.redelivered))
        chn.basic_ack(m.delivery_tag)

    ch.basic_consume(queue, on)
    deadline = time.time() + timeout
    while len(got) < n and time.time() < deadline:
        conn.process_data_events(0.1)
    conn.close()
    return got


def shown(node, queue):
    return api(node, "GET", f"/api/queues/%2F/{queue}")[1]


def test_a_a_quorum_queue_declared_on_one_node_is_served_by_every_node(cluster):
    n1, n2, n3 = cluster.nodes
    declare(n1, "qq-a")
    for n in cluster.nodes:
        # The group elects its leader within a few seconds of the cluster's start.
        q = eventually(lambda: (lambda q: q if q and q.get("leader") else None)(shown(n, "qq-a")))
        assert q["type"] == "quorum"
        assert sorted(q["members"]) == sorted(m.name for m in cluster.nodes)
        assert q["leader"] in q["members"] and q["node"] == q["leader"]
    bodies = [f"m{i}".encode() for i in range(200)]
    publish_confirmed(n2, "qq-a", bodies)
    # Every node's replica has them.
    for n in cluster.nodes:
        eventually(lambda: shown(n, "qq-a")["messages_ready"] == 200)
    got = drain(n3, "qq-a", 200)
    assert [b for b, _ in got] == bodies
    assert not any(r for _, r in got)
    for n in cluster.nodes:
        eventually(lambda: shown(n, "qq-a")["messages"] == 0)
    # Prometheus: the leader reports the queue (with the group's Raft figures), the others do not
    # (dashboards sum over nodes).
    leader = next(n for n in cluster.nodes if n.name == shown(n1, "qq-a")["leader"])
    for n in cluster.nodes:
        with urllib.request.urlopen(f"http://127.0.0.1:{n.prometheus_port}/metrics/per-object", timeout=10) as r:
            text = r.read().decode()
        listed = 'queue="qq-a"' in text
        assert listed == (n is leader), (n.name, leader.name)
        if n is leader:
            assert any(
                line.startswith("rabbitmq_raft_log_commit_index{") and 'queue="qq-a"' in line
                for line in text.splitlines()
            )
    # basic.get and queue.purge through any node.
    publish_confirmed(n1, "qq-a", [b"g1", b"g2", b"g3"])
    ch = n2.connect().channel()
    method, _, body = ch.basic_get("qq-a", auto_ack=True)
    assert body == b"g1" and method.message_count == 2
    assert ch.queue_purge("qq-a").method.message_count == 2
    ch.connection.close()
    eventually(lambda: shown(n3, "qq-a")["messages"] == 0)


def test_b_what_a_quorum_queue_refuses_in_rabbitmqs_words(cluster):
    n1 = cluster[0]
    conn = n1.connect()
    cases = [
        (dict(durable=False), "invalid property 'non-durable' for queue 'qq-b' in vhost '/'"),
        (dict(durable=True, exclusive=True), "invalid property 'exclusive-owner' for queue 'qq-b' in vhost '/'"),
        (dict(durable=True, auto_delete=True), "invalid property 'auto-delete' for queue 'qq-b' in vhost '/'"),
        (
            dict(durable=True, arguments={"x-max-priority": 5}),
            "invalid arg 'x-max-priority' for queue 'qq-b' in vhost '/' of queue type rabbit_quorum_queue",
        ),
        (
            dict(durable=True, arguments={"x-overflow": "reject-publish-dlx"}),
            "invalid arg 'x-overflow' for queue 'qq-b' in vhost '/' of queue type rabbit_quorum_queue",
        ),
    ]
    for kw, text in cases:
        ch = conn.channel()
        args = {"x-queue-type": "quorum", **kw.pop("arguments", {})}
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare("qq-b", arguments=args, **kw)
        assert e.value.reply_code == 406
        assert e.value.reply_text == f"PRECONDITION_FAILED - {text}"
    # A consumer filter is refused rather than ignored.
    declare(n1, "qq-b2")
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_consume("qq-b2", lambda *a: None, arguments={"x-filter": "match_filter"})
        conn.process_data_events(1)
    assert e.value.reply_code == 406
    conn.close()


def test_c_requeues_past_the_delivery_limit_are_dead_lettered(cluster):
    n1, n2, n3 = cluster.nodes
    ch = n1.connect().channel()
    ch.queue_declare("qq-dlq", durable=True)
    ch.connection.close()
    declare(n1, "qq-c", **{"x-delivery-limit": 2, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "qq-dlq"})
    publish_confirmed(n2, "qq-c", [b"poison"])
    conn = n3.connect()
    ch = conn.channel()
    seen = []
    for _ in range(3):
        method = None
        deadline = time.time() + 10
        while method is None and time.time() < deadline:
            method, props, body = ch.basic_get("qq-c", auto_ack=False)
            if method is None:
                time.sleep(0.05)
        assert method is not None
        seen.append(method.redelivered)
        ch.basic_nack(method.delivery_tag, requeue=True)
    assert seen == [False, True, True]
    conn.close()
    ch = n2.connect().channel()
    got = None
    deadline = time.time() + 10
    while got is None and time.time() < deadline:
        method, props, body = ch.basic_get("qq-dlq", auto_ack=True)
        if method is not None:
            got = (body, props.headers["x-death"][0]["reason"])
        time.sleep(0.05)
    assert got == (b"poison", "delivery_limit")
    eventually(lambda: shown(n1, "qq-c")["messages"] == 0)
    ch.connection.close()


def test_d_a_full_queue_with_reject_publish_nacks(cluster):
    n1, n2, _ = cluster.nodes
    declare(n1, "qq-d", **{"x-max-length": 2, "x-overflow": "reject-publish"})
    ch = n2.connect().channel()
    ch.confirm_delivery()
    ch.basic_publish("", "qq-d", b"1")
    ch.basic_publish("", "qq-d", b"2")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", "qq-d", b"3")
    ch.connection.close()
    # drop-head (the default) keeps the newest.
    declare(n1, "qq-d2", **{"x-max-length": 2})
    publish_confirmed(n2, "qq-d2", [b"1", b"2", b"3"])
    assert [b for b, _ in drain(n1, "qq-d2", 2)] == [b"2", b"3"]


def test_e_confirmed_messages_survive_the_leader_killed_and_a_restart_of_every_node():
    c = Cluster(3).start()
    try:
        declare(c[0], "qq-e")
        bodies = [f"e{i}".encode() for i in range(300)]
        lead_name = eventually(lambda: shown(c[0], "qq-e")["leader"])
        lead = next(n for n in c.nodes if n.name == lead_name)
        other = next(n for n in c.nodes if n is not lead)
        publish_confirmed(other, "qq-e", bodies)
        lead.kill()
        # A new leader among the two left; publishing resumes through a survivor.
        publish_confirmed(other, "qq-e", [b"after"])
        lead.start()
        lead.wait_up()
        for n in c.nodes:
            n.stop()
        for n in c.nodes:
            n.start()
        for n in c.nodes:
            n.wait_up()
        got = drain(c[1], "qq-e", 301, timeout=30)
        assert [b for b, _ in got] == bodies + [b"after"]
    finally:
        c.stop()


@pytest.mark.parametrize("fault", quorum_faults.FAULTS)
def test_f_no_confirmed_message_is_lost_across_a_fault(fault):
    """One round of the fault-injection checker per fault (the soak runs 100: README)."""
    c = quorum_faults.start_cluster()
    try:
        problems, summary = quorum_faults.run_round(c, fault)
        print(fault, summary)
        assert problems == [], (problems, summary)
        assert summary["confirmed"] > 50, summary
        assert summary["delivered"] >= summary["confirmed"]
    finally:
        c.stop()
