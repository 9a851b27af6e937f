"""The first-party x-delayed-message plugin over pika (RabbitMQ's delayed-message exchange contract):
due-time order, nothing early, bindings added during the delay, topic and headers routing, mandatory,
persistent delayed messages across a graceful restart and kill -9, a 60-day delay, bad input."""
import base64
import json
import signal
import time
import urllib.parse
import urllib.request

import pika
import pika.exceptions
import pytest

from conftest import EXTERNAL, Broker, copy_plugins, plugin_status

pytestmark = pytest.mark.skipif(EXTERNAL is not None, reason="starts brokers with the plugin")


def plugin_dir(tmp_path):
    return copy_plugins(tmp_path, "x_delayed_message")


@pytest.fixture
def delayed(tmp_path):
    b = Broker(plugin_dir=plugin_dir(tmp_path))
    yield b
    if b.proc.poll() is None:
        b.stop()


def declare(ch, name, kind="direct", durable=False):
    ch.exchange_declare(name, "x-delayed-message", durable=durable, arguments={"x-delayed-type": kind})


def publish(ch, exchange, key, body, delay=None, headers=None, persistent=False, mandatory=False):
    h = dict(headers or {})
    if delay is not None:
        h["x-delay"] = delay
    ch.basic_publish(
        exchange, key, body,
        pika.BasicProperties(headers=h, delivery_mode=2 if persistent else 1),
        mandatory=mandatory,
    )


def collect(ch, queue, n, timeout):
    """(body, arrival time) of the next n messages of `queue`, acked."""
    got = []
    deadline = time.time() + timeout
    for method, _props, body in ch.consume(queue, inactivity_timeout=0.05):
        if method is not None:
            got.append((body.decode(), time.time()))
            ch.basic_ack(method.delivery_tag)
        if len(got) == n or time.time() > deadline:
            break
    ch.cancel()
    return got


def exchange_info(b, name):
    url = f"http://127.0.0.1:{b.mgmt_port}/api/exchanges/%2F/{urllib.parse.quote(name, safe='')}"
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def test_messages_arrive_in_due_time_order_and_never_before_it(delayed):
    conn = delayed.connect()
    ch = conn.channel()
    declare(ch, "dx")
    ch.queue_declare("dq")
    ch.queue_bind("dq", "dx", "k")
    # Due times at least 150 ms apart, published in another order (0 and none route at once).
    delays = [3000, 0, 1500, 4500, 300, None, 5000, 750, 2250, 3750]
    sent = {}
    for i, d in enumerate(delays):
        sent[str(i)] = (time.time(), d or 0)
        publish(ch, "dx", "k", str(i), delay=d)
    got = collect(ch, "dq", len(delays), timeout=15)
    assert len(got) == len(delays), got
    for body, arrived in got:
        published, d = sent[body]
        assert arrived >= published + d / 1000, f"message {body} arrived {published + d / 1000 - arrived:.3f}s early"
    order = [body for body, _ in got]
    expected = sorted(sent, key=lambda b: (sent[b][1], int(b)))
    # 0 and no delay both route at publish: their relative order is publish order.
    assert order == expected, (order, expected)
    conn.close()


def test_a_binding_added_during_the_delay_receives_the_message(delayed):
    conn = delayed.connect()
    ch = conn.channel()
    declare(ch, "late-bind")
    ch.queue_declare("lb")
    publish(ch, "late-bind", "later", "hello", delay=1500)
    time.sleep(0.3)
    assert ch.queue_declare("lb", passive=True).method.message_count == 0
    ch.queue_bind("lb", "late-bind", "later")
    got = collect(ch, "lb", 1, timeout=5)
    assert [b for b, _ in got] == ["hello"]
    conn.close()


def test_topic_and_headers_delayed_types_route_like_their_type(delayed):
    conn = delayed.connect()
    ch = conn.channel()
    declare(ch, "dt", "topic")
    declare(ch, "dh", "headers")
    for q in ["t-star", "t-hash", "h-all", "h-any"]:
        ch.queue_declare(q)
    ch.queue_bind("t-star", "dt", "orders.*.eu")
    ch.queue_bind("t-hash", "dt", "orders.#")
    ch.queue_bind("h-all", "dh", "", arguments={"x-match": "all", "region": "eu", "tier": "gold"})
    ch.queue_bind("h-any", "dh", "", arguments={"x-match": "any", "region": "eu", "tier": "gold"})
    publish(ch, "dt", "orders.paid.eu", "t1", delay=1000)
    publish(ch, "dt", "orders.paid.us", "t2", delay=1000)
    publish(ch, "dt", "invoices.eu", "t3", delay=1000)
    publish(ch, "dh", "", "h1", delay=1000, headers={"region": "eu", "tier": "gold"})
    publish(ch, "dh", "", "h2", delay=1000, headers={"region": "eu"})
    publish(ch, "dh", "", "h3", delay=1000, headers={"region": "us"})
    # Well before the due time (the check must not race it).
    time.sleep(0.3)
    assert ch.queue_declare("t-hash", passive=True).method.message_count == 0, "routed before due"
    assert sorted(b for b, _ in collect(ch, "t-star", 1, 5)) == ["t1"]
    assert sorted(b for b, _ in collect(ch, "t-hash", 2, 5)) == ["t1", "t2"]
    assert sorted(b for b, _ in collect(ch, "h-all", 1, 5)) == ["h1"]
    assert sorted(b for b, _ in collect(ch, "h-any", 2, 5)) == ["h1", "h2"]
    time.sleep(0.2)
    for q in ["t-star", "t-hash", "h-all", "h-any"]:
        assert ch.queue_declare(q, passive=True).method.message_count == 0, q
    conn.close()


def test_mandatory_is_checked_against_the_bindings_at_publish(delayed):
    conn = delayed.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    declare(ch, "dm")
    ch.queue_declare("dmq")
    ch.queue_bind("dmq", "dm", "bound")
    with pytest.raises(pika.exceptions.UnroutableError):
        publish(ch, "dm", "nowhere", "x", delay=500, mandatory=True)
    publish(ch, "dm", "bound", "y", delay=500, mandatory=True)
    assert [b for b, _ in collect(ch, "dmq", 1, 5)] == ["y"]
    conn.close()


def test_a_60_day_delay_is_accepted_and_reported_pending(delayed):
    conn = delayed.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    declare(ch, "far")
    ch.queue_declare("farq")
    ch.queue_bind("farq", "far", "k")
    sixty_days = 60 * 24 * 3600 * 1000
    assert sixty_days > 2**32
    publish(ch, "far", "k", "later", delay=sixty_days)
    publish(ch, "far", "k", "soon", delay=100)
    assert [b for b, _ in collect(ch, "farq", 1, 5)] == ["soon"]
    info = exchange_info(delayed, "far")
    assert info["messages_delayed"] == 1, info
    assert ch.queue_declare("farq", passive=True).method.message_count == 0
    conn.close()


def test_bad_arguments_and_headers_get_406_with_a_reason(delayed):
    conn = delayed.connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare("no-type", "x-delayed-message")
    assert e.value.reply_code == 406
    assert "'x-delayed-type' must be an existing exchange type" in e.value.reply_text
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.exchange_declare("bad-type", "x-delayed-message", arguments={"x-delayed-type": "x-nope"})
    assert e.value.reply_code == 406
    ch = conn.channel()
    declare(ch, "strict")
    publish(ch, "strict", "k", "x", delay="soon")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("after-bad-publish")
    assert e.value.reply_code == 406
    assert "x-delay" in e.value.reply_text
    # The connection and the exchange are fine.
    ch = conn.channel()
    ch.queue_declare("ok")
    ch.queue_bind("ok", "strict", "k")
    publish(ch, "strict", "k", "fine", delay=50)
    assert [b for b, _ in collect(ch, "ok", 1, 5)] == ["fine"]
    conn.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["graceful", "kill-9"])
def test_confirmed_persistent_delayed_messages_survive_a_restart(tmp_path, stop):
    b = Broker(data_dir=str(tmp_path / "data"), plugin_dir=plugin_dir(tmp_path))
    conn, ch = b.confirmed_channel()
    declare(ch, "dur", durable=True)
    ch.queue_declare("durq", durable=True)
    ch.queue_bind("durq", "dur", "k")
    n = 200
    started = time.time()
    for i in range(n):
        # Confirmed one by one (BlockingChannel in confirm mode): each is on disk when this returns.
        publish(ch, "dur", "k", str(i), delay=2500 + (i % 10) * 50, persistent=True)
    # A transient one is not kept across the restart.
    publish(ch, "dur", "k", "transient", delay=2500)
    assert time.time() - started < 2.4, "publishing took too long for the delays to still be pending"
    b.stop(stop)
    b = b.restarted()
    try:
        conn = b.connect()
        ch = conn.channel()
        got = collect(ch, "durq", n + 1, timeout=20)
        bodies = [body for body, _ in got]
        assert sorted(bodies, key=int) == [str(i) for i in range(n)], bodies[:20]
        assert len(set(bodies)) == n, "a message was delivered twice"
        for _, arrived in got:
            assert arrived >= started + 2.5
        conn.close()
    finally:
        b.stop()


def leb128(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def test_delayed_messages_survive_a_plugin_reload(tmp_path):
    plugins = plugin_dir(tmp_path)
    b = Broker(plugin_dir=plugins)
    try:
        conn = b.connect()
        ch = conn.channel()
        declare(ch, "reloaded")
        ch.queue_declare("rq")
        ch.queue_bind("rq", "reloaded", "k")
        publish(ch, "reloaded", "k", "across-reload", delay=2500)
        # A new version of the file (the same component with a custom section appended: another
        # hash), which the broker loads in place of the old one while the message waits.
        path = plugins / "x_delayed_message.wasm"
        name = b"warren-test"
        payload = leb128(len(name)) + name + b"v2"
        path.write_bytes(path.read_bytes() + b"\x00" + leb128(len(payload)) + payload)
        deadline = time.time() + 20
        while time.time() < deadline and plugin_status(b, "x-delayed-message")["reloads"] < 1:
            time.sleep(0.1)
        assert plugin_status(b, "x-delayed-message")["reloads"] == 1
        got = collect(ch, "rq", 1, timeout=10)
        assert [body for body, _ in got] == ["across-reload"]
        conn.close()
    finally:
        b.stop()


def test_messages_due_while_the_broker_was_down_are_routed_after_recovery(tmp_path):
    b = Broker(data_dir=str(tmp_path / "data"), plugin_dir=plugin_dir(tmp_path))
    conn, ch = b.confirmed_channel()
    declare(ch, "down", durable=True)
    ch.queue_declare("downq", durable=True)
    ch.queue_bind("downq", "down", "k")
    for i in range(20):
        publish(ch, "down", "k", str(i), delay=500, persistent=True)
    b.stop()
    time.sleep(1.5)  # every message falls due while the broker is down
    b = b.restarted()
    try:
        conn = b.connect()
        got = collect(conn.channel(), "downq", 20, timeout=20)
        assert sorted((body for body, _ in got), key=int) == [str(i) for i in range(20)]
        conn.close()
    finally:
        b.stop()
