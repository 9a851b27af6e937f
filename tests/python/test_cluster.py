"""A three-node cluster of real `warren` processes on loopback (issue 18): replicated metadata through
Raft, any node serving any queue, failures (SIGKILL, SIGSTOP) and what the nodes agree on after, a
fourth node joining and a stopped one removed.
"""

import base64
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import pika
import pytest

from cluster_harness import Cluster, Node, answers_amqp


def api(node, method, path, body=None, user="guest", password="guest"):
    """A management API call on `node`: (status, decoded JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{node.mgmt_port}{path}", data=data, method=method)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw else None)


def eventually(check, timeout=10.0, every=0.1):
    """Polls `check` until it returns a truthy value; returns it, or fails with the last value."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"not reached within {timeout}s (last: {last!r})")


def message_count(node, queue):
    conn = node.connect()
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def queue_names(node):
    status, qs = api(node, "GET", "/api/queues")
    assert status == 200, qs
    return sorted(q["name"] for q in qs)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3).start()
    yield c
    c.stop()


def test_a_declare_on_one_node_is_visible_on_the_others(cluster):
    n1, n2, n3 = cluster.nodes
    c1 = n1.connect()
    ch = c1.channel()
    ch.exchange_declare("cx", "topic", durable=True)
    ch.queue_declare("cq", durable=True)
    ch.queue_bind("cq", "cx", "orders.*")
    for other in (n2, n3):
        c = other.connect()
        och = c.channel()
        och.exchange_declare("cx", "topic", passive=True)
        assert och.queue_declare("cq", passive=True).method.queue == "cq"
        # The binding is there too: a publish routed on this node reaches the queue on node 1.
        och.confirm_delivery()
        och.basic_publish("cx", "orders.new", b"from " + other.name.encode(), mandatory=True)
        c.close()
    eventually(lambda: message_count(n1, "cq") == 2)
    # A redeclare with other arguments is refused the same way on every node (406).
    c3 = n3.connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c3.channel().queue_declare("cq", durable=False)
    assert e.value.reply_code == 406
    c3.close()
    ch.queue_delete("cq")
    ch.exchange_delete("cx")
    c1.close()
    # The deletion is everywhere.
    c2 = n2.connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c2.channel().queue_declare("cq", passive=True)
    assert e.value.reply_code == 404


def test_b_a_publish_on_node_2_to_a_queue_on_node_1_is_consumed_on_node_3_in_order(cluster):
    n1, n2, n3 = cluster.nodes
    c1 = n1.connect()
    c1.channel().queue_declare("ordered", durable=True)
    c2 = n2.connect()
    pub = c2.channel()
    pub.confirm_delivery()
    count = 2000
    for i in range(count):
        pub.basic_publish("", "ordered", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    eventually(lambda: message_count(n1, "ordered") == count)
    c3 = n3.connect()
    sub = c3.channel()
    sub.basic_qos(prefetch_count=50)
    got = []
    redelivered = []
    for method, _props, body in sub.consume("ordered", inactivity_timeout=5):
        if method is None:
            break
        got.append(int(body))
        redelivered.append(method.redelivered)
        sub.basic_ack(method.delivery_tag)
        if len(got) == count:
            break
    sub.cancel()
    assert got == list(range(count))
    assert not any(redelivered)
    # Every ack went back to the home: nothing left there, ready or unacknowledged.
    eventually(lambda: message_count(n1, "ordered") == 0)
    status, q = api(n1, "GET", "/api/queues/%2F/ordered")
    assert status == 200 and q["messages_unacknowledged"] == 0, q
    # basic.get through a proxy, with a requeue (nack) that comes back flagged redelivered.
    pub.basic_publish("", "ordered", b"again")
    m, _, body = eventually(lambda: sub.basic_get("ordered") if message_count(n1, "ordered") else None)
    assert body == b"again" and not m.redelivered
    sub.basic_nack(m.delivery_tag, requeue=True)
    m2 = eventually(lambda: sub.basic_get("ordered", auto_ack=True)[0])
    assert m2.redelivered
    c1.channel().queue_delete("ordered")
    for c in (c1, c2, c3):
        c.close()


def test_b2_a_publisher_confirm_through_another_node_is_the_home_queues_answer(cluster):
    n1, n2, _ = cluster.nodes
    c1 = n1.connect()
    c1.channel().queue_declare("capped", arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    c2 = n2.connect()
    pub = c2.channel()
    pub.confirm_delivery()
    pub.basic_publish("", "capped", b"1")
    pub.basic_publish("", "capped", b"2")
    # The home refuses the third (reject-publish): node 2's publisher gets the nack.
    with pytest.raises(pika.exceptions.NackError):
        pub.basic_publish("", "capped", b"3")
    assert message_count(n1, "capped") == 2
    c1.channel().queue_delete("capped")
    c1.close()
    c2.close()


def test_c_users_permissions_and_policies_changed_on_one_node_apply_on_all(cluster):
    n1, n2, n3 = cluster.nodes
    status, _ = api(n2, "PUT", "/api/users/carol", {"password": "s3cret", "tags": "management"})
    assert status == 201
    status, _ = api(n2, "PUT", "/api/permissions/%2F/carol", {"configure": ".*", "write": ".*", "read": ".*"})
    assert status == 201
    # Carol logs in on node 3 with the password set on node 2 (same salt and hash everywhere).
    eventually(lambda: api(n3, "GET", "/api/users/carol")[0] == 200)
    conn = n3.connect(user="carol", password="s3cret")
    conn.close()
    # A policy set on node 1 applies to a queue that node 3 declared earlier.
    c3 = n3.connect()
    ch = c3.channel()
    ch.queue_declare("limited")
    status, _ = api(n1, "PUT", "/api/policies/%2F/cap", {"pattern": "^limited$", "definition": {"max-length": 5}, "apply-to": "queues"})
    assert status == 201
    eventually(lambda: api(n3, "GET", "/api/policies/%2F/cap")[0] == 200)
    c2 = n2.connect()
    pub = c2.channel()
    pub.confirm_delivery()
    for i in range(10):
        pub.basic_publish("", "limited", str(i).encode())
    eventually(lambda: message_count(n2, "limited") == 5)
    status, q = api(n3, "GET", "/api/queues/%2F/limited")
    assert q["policy"] == "cap", q
    api(n1, "DELETE", "/api/policies/%2F/cap")
    # Deleting the user on node 1 refuses it on node 2 from then on.
    assert api(n1, "DELETE", "/api/users/carol")[0] == 204
    eventually(lambda: api(n2, "GET", "/api/users/carol")[0] == 404)
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        n2.connect(user="carol", password="s3cret")
    ch.queue_delete("limited")
    c2.close()
    c3.close()


def test_d_exclusive_queues_are_locked_elsewhere_and_go_with_their_connection(cluster):
    n1, n2, _ = cluster.nodes
    owner = n1.connect()
    q = owner.channel().queue_declare("", exclusive=True).method.queue
    assert q.startswith("amq.gen-")
    other = n2.connect()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        other.channel().queue_declare(q, passive=True)
    assert e.value.reply_code == 405
    owner.close()
    eventually(lambda: q not in queue_names(n2))
    other.close()


def test_e_the_management_api_lists_every_node(cluster):
    n1, _, _ = cluster.nodes
    status, nodes = api(n1, "GET", "/api/nodes")
    assert status == 200
    assert [n["name"] for n in nodes] == ["warren@n1", "warren@n2", "warren@n3"]
    assert all(n["running"] for n in nodes)
    status, overview = api(n1, "GET", "/api/overview")
    assert overview["node"] == "warren@n1"
    assert sum(1 for m in overview["warren_cluster"] if m["leader"]) == 1


def test_e2_any_node_shows_a_queues_figures_from_its_home(cluster):
    # The management API of any node shows what the home holds (as any RabbitMQ node shows every
    # queue's figures); Prometheus on each node reports only the queues homed there, as each
    # RabbitMQ node reports its own (dashboards sum over nodes).
    n1, n2, n3 = cluster.nodes
    c1 = n1.connect()
    ch1 = c1.channel()
    ch1.queue_declare("figures-q", durable=True)
    ch1.confirm_delivery()
    for i in range(3):
        ch1.basic_publish("", "figures-q", b"x" * 10)
    c3 = n3.connect()
    ch3 = c3.channel()
    ch3.basic_qos(prefetch_count=1)
    held = []
    ch3.basic_consume("figures-q", lambda ch, m, p, b: held.append(m.delivery_tag))
    deadline = time.time() + 5
    while not held and time.time() < deadline:
        c3.process_data_events(time_limit=0.05)
    assert held

    def shown():
        status, q = api(n2, "GET", "/api/queues/%2F/figures-q")
        return status == 200 and (q["messages"], q["messages_ready"], q["messages_unacknowledged"],
                                  q["consumers"], q["node"], q["state"], q["message_bytes"])
    assert eventually(shown) == (3, 2, 1, 1, "warren@n1", "running", 20)
    listed = [q for q in api(n2, "GET", "/api/queues/%2F")[1] if q["name"] == "figures-q"]
    assert listed[0]["messages"] == 3 and listed[0]["node"] == "warren@n1"
    assert api(n2, "GET", "/api/vhosts/%2F")[1]["messages"] >= 3
    assert api(n2, "GET", "/api/overview")[1]["queue_totals"]["messages"] >= 3

    def per_object(node):
        with urllib.request.urlopen(f"http://127.0.0.1:{node.prometheus_port}/metrics/per-object") as r:
            return [line for line in r.read().decode().splitlines()
                    if line.startswith("rabbitmq_queue_messages_ready{") and 'queue="figures-q"' in line]
    assert len(per_object(n1)) == 1 and float(per_object(n1)[0].split()[-1]) == 2, per_object(n1)
    assert per_object(n2) == [] and per_object(n3) == []
    ch3.basic_ack(held[0])
    c3.close()
    ch1.queue_delete("figures-q")
    c1.close()


def test_f_a_node_killed_and_restarted_catches_up(cluster):
    n1, n2, n3 = cluster.nodes
    # A durable queue homed on node 3 with persistent messages.
    c3 = n3.connect()
    ch3 = c3.channel()
    ch3.confirm_delivery()
    ch3.queue_declare("home3", durable=True)
    for i in range(20):
        ch3.basic_publish("", "home3", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    # A consumer through node 1 of that queue is cancelled when node 3 dies.
    c1 = n1.connect()
    ch1 = c1.channel()
    cancelled = []
    ch1.add_on_cancel_callback(lambda frame: cancelled.append(frame))
    ch1.basic_consume("home3", lambda *a: None, auto_ack=False)
    c1.process_data_events(time_limit=0.5)
    n3.kill()
    eventually(lambda: (c1.process_data_events(time_limit=0.1), cancelled)[1], timeout=10)
    status, nodes = api(n1, "GET", "/api/nodes")
    assert {n["name"]: n["running"] for n in nodes}["warren@n3"] is False
    status, q = api(n1, "GET", "/api/queues/%2F/home3")
    assert (q["state"], q["node"]) == ("down", "warren@n3"), q
    # Meanwhile: metadata changes on the other two.
    c2 = n2.connect()
    ch2 = c2.channel()
    ch2.queue_declare("while-down", durable=True)
    assert api(n2, "PUT", "/api/users/dave", {"password": "pw", "tags": ""})[0] == 201
    assert api(n2, "PUT", "/api/permissions/%2F/dave", {"configure": ".*", "write": ".*", "read": ".*"})[0] == 201
    # The queue homed on the dead node: RabbitMQ's 404 for it.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        c2.channel().queue_declare("home3", durable=True, passive=True)
    assert e.value.reply_code == 404
    assert "home node 'warren@n3' of durable queue 'home3'" in e.value.reply_text
    n3.start()
    n3.wait_up()
    c3 = n3.connect(user="dave", password="pw")
    assert c3.channel().queue_declare("while-down", passive=True).method.queue == "while-down"
    c3.close()
    # Its persistent messages are back, readable through node 2.
    assert eventually(lambda: message_count(n2, "home3") == 20)
    got = []
    for _ in range(20):
        m, _, body = ch2.basic_get("home3", auto_ack=True)
        got.append(int(body))
    assert got == list(range(20))
    ch2.queue_delete("home3")
    ch2.queue_delete("while-down")
    api(n1, "DELETE", "/api/users/dave")
    eventually(lambda: queue_names(n1) == queue_names(n2) == queue_names(n3))
    c2.close()
    try:
        c1.close()
    except pika.exceptions.AMQPError:
        pass


def test_f2_messages_confirmed_through_another_node_survive_kill_9_of_their_home(cluster):
    n1, n2, _ = cluster.nodes
    c1 = n1.connect()
    c1.channel().queue_declare("kept", durable=True)
    c1.close()
    c2 = n2.connect()
    pub = c2.channel()
    pub.confirm_delivery()
    for i in range(500):
        pub.basic_publish("", "kept", str(i).encode(), pika.BasicProperties(delivery_mode=2))
    # Every publish above was confirmed: the home has them on disk. Kill it at once.
    n1.kill()
    c2.close()
    n1.start()
    n1.wait_up()
    assert eventually(lambda: message_count(n2, "kept") == 500, timeout=15)
    c1 = n1.connect()
    ch = c1.channel()
    got = [int(ch.basic_get("kept", auto_ack=True)[2]) for _ in range(500)]
    assert got == list(range(500))
    ch.queue_delete("kept")
    c1.close()


def test_g_a_minority_node_refuses_metadata_changes_and_agrees_after_healing(cluster):
    n1, n2, n3 = cluster.nodes
    c3 = n3.connect()
    # Node 3 alone (the other two stopped): it cannot commit, so it refuses rather than diverging.
    n1.pause()
    n2.pause()
    try:
        started = time.time()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
            c3.channel().queue_declare("minority-q", durable=True)
        assert e.value.reply_code == 541
        assert "not committed" in e.value.reply_text
        assert time.time() - started < 20
        status, body = api(n3, "PUT", "/api/vhosts/minority-vhost")
        assert status == 503, body
    finally:
        n1.resume()
        n2.resume()
    # Healed: the refused changes exist nowhere, and a change on node 3 now reaches all three.
    for n in (n1, n2, n3):
        assert "minority-q" not in queue_names(n)
        assert api(n, "GET", "/api/vhosts/minority-vhost")[0] == 404
    c3 = eventually(lambda: _connect_and_declare(n3, "after-heal"), timeout=15)
    for n in (n1, n2):
        eventually(lambda: "after-heal" in queue_names(n))
    assert queue_names(n1) == queue_names(n2) == queue_names(n3)
    c3.channel().queue_delete("after-heal")
    c3.close()


def _connect_and_declare(node, queue):
    try:
        c = node.connect()
        c.channel().queue_declare(queue, durable=True)
        return c
    except pika.exceptions.AMQPError:
        return None


def test_g2_a_node_far_behind_installs_a_snapshot_and_ends_with_the_same_metadata():
    # Snapshots every 20 entries, 4 kept behind: a node down for ~100 changes cannot be sent them
    # one by one and installs the leader's snapshot, which must also remove what was deleted meanwhile.
    c = Cluster(3)
    for n in c.nodes:
        n.extra_args = ["--cluster-snapshot-every", "20"]
        n.log_filter = "warn,warren::cluster=info"
    c.start()
    try:
        n1, n2, n3 = c.nodes
        conn = n1.connect()
        ch = conn.channel()
        ch.queue_declare("before", durable=True)
        ch.exchange_declare("gone-x", "fanout", durable=True)
        assert api(n1, "PUT", "/api/users/olduser", {"password": "pw", "tags": ""})[0] == 201
        eventually(lambda: "before" in queue_names(n3))
        n3.kill()
        for i in range(40):
            ch.queue_declare(f"snap-{i}", durable=True)
        for i in range(0, 40, 2):
            ch.queue_delete(f"snap-{i}")
        ch.queue_delete("before")
        ch.exchange_delete("gone-x")
        ch.exchange_declare("snap-x", "topic", durable=True)
        ch.queue_bind("snap-1", "snap-x", "a.*")
        assert api(n1, "DELETE", "/api/users/olduser")[0] == 204
        assert api(n1, "PUT", "/api/users/newuser", {"password": "pw2", "tags": ""})[0] == 201
        perm = {"configure": "", "write": "", "read": ".*"}
        assert api(n1, "PUT", "/api/permissions/%2F/newuser", perm)[0] == 201
        conn.close()
        n3.start()
        n3.wait_up()
        assert "snapshot installed" in n3.log()
        assert queue_names(n3) == queue_names(n1)
        assert "before" not in queue_names(n3) and "snap-1" in queue_names(n3)
        assert api(n3, "GET", "/api/exchanges/%2F/gone-x")[0] == 404
        status, bindings = api(n3, "GET", "/api/exchanges/%2F/snap-x/bindings/source")
        assert status == 200 and [b["destination"] for b in bindings] == ["snap-1"], bindings
        assert api(n3, "GET", "/api/users/olduser")[0] == 404
        n3.connect(user="newuser", password="pw2").close()
    finally:
        c.stop()


def test_h_a_node_with_the_wrong_secret_is_not_let_in():
    c = Cluster(3)
    c.secret = "right"
    bad = c.nodes[2]
    try:
        for n in c.nodes[:2]:
            n.start()
        bad_secret, c.secret = c.secret, "wrong"
        bad.start()
        c.secret = bad_secret
        for n in c.nodes[:2]:
            n.wait_up()
        # Two of three agree and serve; the third never joins (it cannot reach a majority).
        conn = c.nodes[0].connect()
        conn.channel().queue_declare("q", durable=True)
        conn.close()
        time.sleep(2)
        assert not answers_amqp(bad.port)
        assert "does not know the cluster secret" in c.nodes[0].log() + c.nodes[1].log() + bad.log()
    finally:
        c.stop()


def test_i_a_node_joins_a_running_cluster_and_a_stopped_one_is_removed():
    c = Cluster(3)
    for n in c.nodes:
        n.log_filter = "warn,warren::cluster=info"
    c.start()
    n1, n2, n3 = c.nodes
    n4 = Node(c, 3)
    n4.log_filter = "warn,warren::cluster=info"
    n4.extra_args = ["--cluster-join"]
    c.nodes.append(n4)
    try:
        conn = n1.connect()
        ch = conn.channel()
        ch.queue_declare("before-join", durable=True)
        assert api(n1, "PUT", "/api/users/joinuser", {"password": "pw", "tags": ""})[0] == 201
        perm = {"configure": ".*", "write": ".*", "read": ".*"}
        assert api(n1, "PUT", "/api/permissions/%2F/joinuser", perm)[0] == 201
        conn.close()

        # A fourth node joins through the three (its peers): it catches up, then serves.
        n4.start()
        n4.wait_up(timeout=60)
        assert "cluster: added to the cluster" in n4.log()
        assert n4.connect().channel().queue_declare("before-join", passive=True).method.queue
        n4.connect(user="joinuser", password="pw").close()
        for n in (n1, n2, n3, n4):
            eventually(lambda: sorted(m["name"] for m in api(n, "GET", "/api/nodes")[1])
                       == ["warren@n1", "warren@n2", "warren@n3", "warren@n4"], timeout=15)
            eventually(lambda: all(m["running"] for m in api(n, "GET", "/api/nodes")[1]), timeout=15)
        cluster_view = api(n1, "GET", "/api/overview")[1]["warren_cluster"]
        assert {m["name"]: m["voter"] for m in cluster_view}["warren@n4"] is True

        # It takes part like the others: a queue homed on it, published to through n2, consumed
        # through n1, in order; a declare on n1 reaches it.
        c4 = n4.connect()
        c4.channel().queue_declare("on-n4", durable=True)
        for n in (n1, n2, n3):
            eventually(lambda: "on-n4" in queue_names(n))
        c2 = n2.connect()
        ch2 = c2.channel()
        ch2.confirm_delivery()
        for i in range(20):
            ch2.basic_publish("", "on-n4", str(i).encode(), pika.BasicProperties(delivery_mode=2))
        c2.close()
        c1 = n1.connect()
        ch1 = c1.channel()
        got = [ch1.basic_get("on-n4", auto_ack=True)[2] for _ in range(10)]
        assert got == [str(i).encode() for i in range(10)]
        c1.close()
        c4.close()

        # Restarted, it rejoins with its data (the --cluster-join flag is ignored: it has state).
        n4.kill()
        n4.start()
        n4.wait_up(timeout=60)
        assert message_count(n4, "on-n4") == 10
        c1 = n1.connect()
        c1.channel().queue_declare("after-restart", durable=True)
        c1.close()
        eventually(lambda: "after-restart" in queue_names(n4))

        # Removal: refused for a running node, unknown names are 404; once stopped it is removed,
        # its queue with it, on every node.
        status, body = api(n1, "DELETE", "/api/nodes/warren@n4")
        assert status == 400 and "is running" in body["reason"], body
        assert api(n1, "DELETE", "/api/nodes/warren@n9")[0] == 404
        n4.stop()
        eventually(lambda: not [m for m in api(n1, "GET", "/api/nodes")[1]
                                if m["name"] == "warren@n4" and m["running"]])
        status, body = api(n1, "DELETE", "/api/nodes/warren@n4")
        assert status == 204, body
        for n in (n1, n2, n3):
            eventually(lambda: sorted(m["name"] for m in api(n, "GET", "/api/nodes")[1])
                       == ["warren@n1", "warren@n2", "warren@n3"], timeout=15)
            eventually(lambda: "on-n4" not in queue_names(n))
            assert "before-join" in queue_names(n)

        # The majority is now counted over three: with the leader stopped too, the other two elect
        # one of them and commit (two of four would not).
        leader = next(m["name"] for m in api(n1, "GET", "/api/overview")[1]["warren_cluster"]
                      if m["leader"])
        paused = next(n for n in (n1, n2, n3) if n.name == leader)
        left = [n for n in (n1, n2, n3) if n is not paused]
        paused.pause()
        try:
            conn = left[0].connect()
            conn.channel().queue_declare("two-of-three", durable=True)
            conn.close()
            assert "two-of-three" in queue_names(left[1])
        finally:
            paused.resume()

        # The removed node, started again with its old data, is not let back in: it never serves and
        # the others keep committing.
        n4.start()
        time.sleep(3)
        assert not answers_amqp(n4.port)
        c2 = n2.connect()
        c2.channel().queue_declare("while-n4-is-out", durable=True)
        c2.close()
        n4.stop()

        # With its data deleted it can join again.
        shutil.rmtree(n4.data_dir)
        os.mkdir(n4.data_dir)
        n4.start()
        n4.wait_up(timeout=60)
        # Serving means caught up: what was declared while it was out is there, and what its earlier
        # membership declared and its removal deleted is not.
        assert "while-n4-is-out" in queue_names(n4)
        assert "on-n4" not in queue_names(n4)
        assert queue_names(n4) == queue_names(n1)
        eventually(lambda: sorted(m["name"] for m in api(n1, "GET", "/api/nodes")[1])
                   == ["warren@n1", "warren@n2", "warren@n3", "warren@n4"], timeout=15)
    finally:
        c.stop()


def test_j_consumer_filters_and_idempotency_run_at_the_queues_home():
    # Plugins are node-local files: only n1 and n3 have them. A consumer's filter runs where its
    # queue lives, whichever node the consumer is connected to.
    c = Cluster(3)
    c.nodes[0].with_first_party_plugins()
    c.nodes[2].with_first_party_plugins()
    c.start()
    try:
        n1, n2, n3 = c.nodes
        conn1 = n1.connect()
        ch1 = conn1.channel()
        ch1.queue_declare("filtered-at-n1")
        ch1.confirm_delivery()
        for region in ["eu", "us", "eu", "us", "eu"]:
            ch1.basic_publish("", "filtered-at-n1", region.encode(),
                              pika.BasicProperties(headers={"region": region}))
        # Through n2, which has no plugins at all: the filter runs at n1.
        conn2 = n2.connect()
        ch2 = conn2.channel()
        got = []
        tag = ch2.basic_consume(
            "filtered-at-n1", lambda ch, m, p, b: got.append(b), auto_ack=True,
            arguments={"x-filter": "match", "x-filter-args": {"headers": {"region": "eu"}}})
        deadline = time.time() + 5
        while len(got) < 3 and time.time() < deadline:
            conn2.process_data_events(time_limit=0.05)
        conn2.process_data_events(time_limit=0.3)
        ch2.basic_cancel(tag)
        assert got == [b"eu", b"eu", b"eu"]
        assert message_count(n1, "filtered-at-n1") == 2
        # The management API shows the consumer's arguments as given (RabbitMQ's consumers list).
        conn2.channel().basic_consume("filtered-at-n1", lambda *a: None, arguments={"x-priority": 3})
        consumers = api(n2, "GET", "/api/consumers")[1]
        assert [x["arguments"] for x in consumers] == [{"x-priority": 3}], consumers
        conn2.close()

        # The home refuses a filter configuration as a local consumer would be refused: 406.
        bad = n3.connect()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            bad.channel().basic_consume("filtered-at-n1", lambda *a: None,
                                        arguments={"x-filter": "match"})
        assert e.value.reply_code == 406 and "headers" in e.value.reply_text, e.value
        # A queue homed on n2 (no plugins): a filtered consumer through n1 is refused with 404.
        c2 = n2.connect()
        c2.channel().queue_declare("at-n2")
        c2.close()
        eventually(lambda: "at-n2" in queue_names(n1))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            conn1.channel().basic_consume("at-n2", lambda *a: None,
                                          arguments={"x-filter": "match",
                                                     "x-filter-args": {"headers": {"a": "b"}}})
        assert e.value.reply_code == 404 and "match" in e.value.reply_text, e.value
        bad.close()

        # An idempotent queue on n1, published to through n3 and consumed with acks through n2: a
        # key acked once is not delivered again.
        ch1 = conn1.channel()
        ch1.queue_declare("idem-at-n1", arguments={"x-idempotency": "idempotency-key"})
        conn3 = n3.connect()
        ch3 = conn3.channel()
        ch3.confirm_delivery()
        for i in range(10):
            ch3.basic_publish("", "idem-at-n1", b"payment",
                              pika.BasicProperties(message_id=f"id-{i % 5}"))
        conn3.close()
        conn2 = n2.connect()
        ch2 = conn2.channel()
        delivered = []

        def on_message(channel, method, properties, body):
            delivered.append(properties.message_id)
            channel.basic_ack(method.delivery_tag)

        ch2.basic_consume("idem-at-n1", on_message)
        deadline = time.time() + 5
        while len(delivered) < 5 and time.time() < deadline:
            conn2.process_data_events(time_limit=0.05)
        conn2.process_data_events(time_limit=0.5)
        assert sorted(delivered) == [f"id-{i}" for i in range(5)]
        conn2.close()
        conn1.close()
    finally:
        c.stop()
