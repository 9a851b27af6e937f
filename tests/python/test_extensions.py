"""RabbitMQ extensions as pika users write them: flow control, TTL + DLX retry, priorities,
direct reply-to, permissions."""
import threading
import time

import pika
import pytest


def test_publisher_spike_is_blocked_then_unblocked_and_nothing_is_lost(configured_broker):
    """docs/alarms.md + docs/connection-blocked.md: over the memory watermark the publisher gets
    connection.blocked and is paused; consumers drain; it gets connection.unblocked and finishes."""
    broker = configured_broker("memory_high_watermark_absolute = 1000000\n")
    total, size = 300, 10_000
    setup = broker.connect()
    setup.channel().queue_declare(queue="spike")
    setup.close()
    events = []
    published = [0]
    done = threading.Event()

    def publish():
        conn = broker.connect()
        conn.add_on_connection_blocked_callback(lambda c, m: events.append(("blocked", m.method.reason)))
        conn.add_on_connection_unblocked_callback(lambda c, m: events.append(("unblocked", None)))
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(total):
            ch.basic_publish("", "spike", str(i).encode().ljust(size, b"."))
            published[0] = i + 1
        # BlockingConnection queues blocked/unblocked notifications until events are processed.
        conn.process_data_events(time_limit=0.2)
        conn.close()
        done.set()

    publisher = threading.Thread(target=publish)
    publisher.start()
    # The publisher stalls part-way: its confirms stop because the broker stopped reading its socket.
    last, stalled_since = -1, time.time()
    while time.time() - stalled_since < 1.0:
        time.sleep(0.1)
        if published[0] != last:
            last, stalled_since = published[0], time.time()
    assert 0 < published[0] < total, f"publisher did not stall ({published[0]} of {total})"
    assert not done.is_set()
    consumer = broker.connect()
    ch = consumer.channel()
    seen = set()

    def on_message(c, m, p, body):
        seen.add(int(body.rstrip(b".")))

    ch.basic_consume("spike", on_message, auto_ack=True)
    deadline = time.time() + 30
    while len(seen) < total and time.time() < deadline:
        consumer.process_data_events(time_limit=0.1)
    publisher.join(10)
    consumer.close()
    assert done.is_set(), "publisher finished once unblocked"
    assert seen == set(range(total)), f"lost {total - len(seen)} messages"
    assert events == [("blocked", "low on memory"), ("unblocked", None)], events


def test_delayed_retry_through_ttl_and_dead_lettering(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare("py-work", "direct")
    ch.exchange_declare("py-retry", "direct")
    ch.queue_declare("py-jobs", arguments={"x-dead-letter-exchange": "py-retry"})
    ch.queue_declare("py-jobs-wait", arguments={"x-message-ttl": 150, "x-dead-letter-exchange": "py-work"})
    ch.queue_bind("py-jobs", "py-work", "job")
    ch.queue_bind("py-jobs-wait", "py-retry", "job")
    ch.basic_publish("py-work", "job", b"try me")
    attempts = []
    for _ in range(100):
        method, props, body = ch.basic_get("py-jobs")
        if method is None:
            conn.sleep(0.02)
            continue
        attempts.append(props.headers or {})
        if len(attempts) < 3:
            ch.basic_reject(method.delivery_tag, requeue=False)
        else:
            ch.basic_ack(method.delivery_tag)
            break
    assert len(attempts) == 3
    deaths = attempts[2]["x-death"]
    counts = {(d["queue"], d["reason"]): d["count"] for d in deaths}
    assert counts == {("py-jobs", "rejected"): 2, ("py-jobs-wait", "expired"): 2}
    conn.close()


def test_priority_queue(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("py-prio", arguments={"x-max-priority": 10})
    for body, prio in [(b"low", 1), (b"high", 9), (b"mid", 5)]:
        ch.basic_publish("", "py-prio", body, pika.BasicProperties(priority=prio))
    got = [ch.basic_get("py-prio", auto_ack=True)[2] for _ in range(3)]
    assert got == [b"high", b"mid", b"low"]
    conn.close()


def test_direct_reply_to_rpc(broker):
    server = broker.connect()
    sch = server.channel()
    sch.queue_declare("py-rpc")
    client = broker.connect()
    cch = client.channel()
    replies = []
    cch.basic_consume("amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p.correlation_id, b)), auto_ack=True)
    cch.basic_publish("", "py-rpc", b"ping", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="1"))
    for _ in range(50):
        method, props, body = sch.basic_get("py-rpc", auto_ack=True)
        if method:
            sch.basic_publish("", props.reply_to, b"pong", pika.BasicProperties(correlation_id=props.correlation_id))
            break
        server.sleep(0.02)
    for _ in range(50):
        client.process_data_events(time_limit=0.05)
        if replies:
            break
    assert replies == [("1", b"pong")]
    client.close()
    server.close()


def test_queue_argument_errors_and_permissions(configured_broker):
    broker = configured_broker(
        '[[users]]\nname = "guest"\npassword = "guest"\n'
        '[[users]]\nname = "ro"\npassword = "ro"\n'
        '[[permissions]]\nuser = "guest"\nconfigure = ".*"\nwrite = ".*"\nread = ".*"\n'
        '[[permissions]]\nuser = "ro"\nconfigure = ""\nwrite = ""\nread = ".*"\n'
    )
    conn = broker.connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("bad", arguments={"x-message-ttl": -5})
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - invalid arg 'x-message-ttl' for queue 'bad' in vhost '/': {value_negative,-5}"
    conn.close()
    ro = broker.connect(user="ro", password="ro")
    ch = ro.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("mine")
    assert e.value.reply_code == 403
    assert e.value.reply_text == "ACCESS_REFUSED - access to queue 'mine' in vhost '/' refused for user 'ro'"
    ro.close()


def pump(conn, done, timeout=5.0):
    """Processes connection events until done() or the timeout."""
    deadline = time.time() + timeout
    while not done() and time.time() < deadline:
        conn.process_data_events(time_limit=0.05)


def drain(conn, ch, queue, n, timeout=5.0):
    got = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append(b), auto_ack=True)
    deadline = time.time() + timeout
    while len(got) < n and time.time() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    return got


def test_single_active_consumer_and_consumer_priorities(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("py-sac", arguments={"x-single-active-consumer": True})
    first, second = [], []
    t1 = ch.basic_consume("py-sac", lambda c, m, p, b: first.append(b), auto_ack=True)
    ch.basic_consume("py-sac", lambda c, m, p, b: second.append(b), auto_ack=True)
    for i in range(3):
        ch.basic_publish("", "py-sac", str(i).encode())
    pump(conn, lambda: len(first) + len(second) >= 3)
    conn.process_data_events(time_limit=0.2)  # anything extra would show up here
    assert (first, second) == ([b"0", b"1", b"2"], [])
    ch.basic_cancel(t1)
    ch.basic_publish("", "py-sac", b"3")
    pump(conn, lambda: second)
    assert second == [b"3"]

    ch.queue_declare("py-cprio")
    low, high = [], []
    ch.basic_consume("py-cprio", lambda c, m, p, b: low.append(b), auto_ack=True)
    ch.basic_consume("py-cprio", lambda c, m, p, b: high.append(b), auto_ack=True, arguments={"x-priority": 5})
    for i in range(4):
        ch.basic_publish("", "py-cprio", str(i).encode())
    pump(conn, lambda: len(high) + len(low) >= 4)
    assert (len(high), low) == (4, []), "the higher-priority consumer with capacity gets everything"
    conn.close()


def test_alternate_exchange_and_sender_selected_distribution(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare("py-ae", "fanout")
    ch.exchange_declare("py-main", "direct", arguments={"alternate-exchange": "py-ae"})
    ch.queue_declare("py-unrouted")
    ch.queue_bind("py-unrouted", "py-ae")
    ch.basic_publish("py-main", "nobody", b"lost?")
    assert ch.basic_get("py-unrouted", auto_ack=True)[2] == b"lost?"
    for q in ("py-to", "py-cc", "py-bcc"):
        ch.queue_declare(q)
    ch.basic_publish("", "py-to", b"hi", pika.BasicProperties(headers={"CC": ["py-cc"], "BCC": ["py-bcc"]}))
    for q in ("py-to", "py-cc", "py-bcc"):
        method, props, body = ch.basic_get(q, auto_ack=True)
        assert body == b"hi", q
        assert "BCC" not in props.headers and props.headers["CC"] == ["py-cc"], q
    conn.close()


def test_transactions_and_confirm_tx_exclusion(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("py-tx")
    ch.tx_select()
    ch.basic_publish("", "py-tx", b"a")
    ch.tx_rollback()
    ch.basic_publish("", "py-tx", b"b")
    ch.tx_commit()
    assert ch.basic_get("py-tx", auto_ack=True)[2] == b"b"
    assert ch.basic_get("py-tx", auto_ack=True)[0] is None
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.confirm_delivery()
    assert (e.value.reply_code, e.value.reply_text) == (406, "PRECONDITION_FAILED - cannot switch from tx to confirm mode")
    ch = conn.channel()
    ch.confirm_delivery()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.tx_select()
    assert (e.value.reply_code, e.value.reply_text) == (406, "PRECONDITION_FAILED - cannot switch from confirm to tx mode")
    conn.close()


def test_delivery_limit_consumer_timeout_and_queue_expiry(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare("py-poison-dlq")
    ch.queue_declare("py-limited", arguments={"x-delivery-limit": 0, "x-dead-letter-exchange": "",
                                              "x-dead-letter-routing-key": "py-poison-dlq"})
    ch.basic_publish("", "py-limited", b"poison")
    method, _, _ = ch.basic_get("py-limited")
    ch.basic_nack(method.delivery_tag, requeue=True)
    got = None
    for _ in range(100):
        method, props, body = ch.basic_get("py-poison-dlq", auto_ack=True)
        if method:
            got = props.headers["x-death"][0]["reason"]
            break
        conn.sleep(0.02)
    assert got == "delivery_limit"

    ch.queue_declare("py-slow", arguments={"x-consumer-timeout": 100})
    ch.basic_publish("", "py-slow", b"x")
    slow = conn.channel()
    closed = []
    # BlockingChannel has no close callback of its own; its underlying pika Channel does.
    slow._impl.add_on_close_callback(lambda c, reason: closed.append(reason))
    slow.basic_consume("py-slow", lambda c, m, p, b: None)  # never acks
    pump(conn, lambda: closed)
    assert closed and closed[0].reply_code == 406, closed
    assert "delivery acknowledgement on channel" in closed[0].reply_text

    ch.queue_declare("py-lease", arguments={"x-expires": 100})
    conn.sleep(1.0)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("py-lease", passive=True)
    assert e.value.reply_code == 404
    conn.close()


def test_definitions_file_at_start(configured_broker, tmp_path):
    defs = tmp_path / "defs.json"
    defs.write_text(
        '{"vhosts": [{"name": "/"}],'
        ' "users": [{"name": "guest", "password_hash": "9/1i+jKFRpbTRV1PtRnzFFYibT3cEpP92JeZ8YKGtflf4e/u",'
        '            "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator"}],'
        ' "permissions": [{"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],'
        ' "exchanges": [{"name": "py-defs-x", "vhost": "/", "type": "fanout", "durable": true,'
        '                "auto_delete": false, "internal": false, "arguments": {}}],'
        ' "queues": [{"name": "py-defs-q", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {}}],'
        ' "bindings": [{"source": "py-defs-x", "vhost": "/", "destination": "py-defs-q",'
        '               "destination_type": "queue", "routing_key": "", "arguments": {}}]}'
    )
    broker = configured_broker(f'definitions = "{defs}"\n')
    conn = broker.connect()
    ch = conn.channel()
    ch.basic_publish("py-defs-x", "", b"from definitions")
    assert ch.basic_get("py-defs-q", auto_ack=True)[2] == b"from definitions"
    conn.close()
