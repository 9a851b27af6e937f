"""The first-party Python plugin `x-json-route` (plugins/python/x-json-route), end to end: built with
componentize-py (pinned in requirements.txt) into a real component, loaded by the real broker, driven
by pika as a RabbitMQ user would. Bursts of publishes reach it in `route-messages` batches; the
routing and its order must be exactly those of one call per message."""
import json

import pika
import pytest

from conftest import EXTERNAL, broker_with_built_plugin, plugin_status

pytestmark = pytest.mark.skipif(EXTERNAL is not None, reason="needs its own broker with the plugin")


@pytest.fixture(scope="module")
def json_broker(tmp_path_factory):
    b = broker_with_built_plugin(tmp_path_factory, "plugins/python/build.sh", "plugins/python/x-json-route",
                                 "x_json_route.wasm")
    yield b
    b.stop()


def plugin_calls(broker):
    return plugin_status(broker, "x-json-route")["calls"]


def drain(ch, queue):
    bodies = []
    while True:
        method, _, body = ch.basic_get(queue=queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(json.loads(body))


def test_routes_on_json_fields_in_order_and_in_batches(json_broker):
    conn = json_broker.connect()
    ch = conn.channel()
    # The declare waits for the plugin's initial load (it compiles in the background at start).
    ch.exchange_declare(exchange="orders", exchange_type="x-json-route")
    bindings = {
        "q-eu": ("order.region=eu", None),
        "q-us": ("order.region=us", None),
        "q-express": ("order.express", None),
        "q-first-item": ("items.0.sku=A-1", None),
        "q-big": ("ignored", {"x-json-path": "total", "x-json-value": "100"}),
    }
    for queue, (key, arguments) in bindings.items():
        ch.queue_declare(queue=queue, auto_delete=True)
        ch.queue_bind(queue=queue, exchange="orders", routing_key=key, arguments=arguments)
    calls_before = plugin_calls(json_broker)
    sent = []
    for n in range(600):
        order = {"region": ["eu", "us", "apac"][n % 3]}
        if n % 5 == 0:
            order["express"] = n % 2 == 0
        doc = {"n": n, "order": order, "total": 100 if n % 7 == 0 else n, "items": [{"sku": f"A-{n % 4}"}]}
        sent.append(doc)
        # No confirms: pika writes the publishes back to back, so the broker reads runs of them.
        ch.basic_publish(exchange="orders", routing_key=f"order.{n}", body=json.dumps(doc))
    # A round trip: every publish before it has been routed.
    ch.queue_declare(queue="q-eu", passive=True)
    expected = {
        "q-eu": [d["n"] for d in sent if d["order"]["region"] == "eu"],
        "q-us": [d["n"] for d in sent if d["order"]["region"] == "us"],
        "q-express": [d["n"] for d in sent if "express" in d["order"]],
        "q-first-item": [d["n"] for d in sent if d["items"][0]["sku"] == "A-1"],
        "q-big": [d["n"] for d in sent if d["total"] == 100],
    }
    for queue, ns in expected.items():
        assert [d["n"] for d in drain(ch, queue)] == ns, queue
    calls = plugin_calls(json_broker) - calls_before
    print(f"600 publishes routed in {calls} plugin calls")
    assert calls < 600, f"no batching: {calls} calls for 600 messages"
    conn.close()


def test_a_body_that_is_not_json_is_unroutable(json_broker):
    conn = json_broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="orders-2", exchange_type="x-json-route")
    ch.queue_declare(queue="q-any", auto_delete=True)
    ch.queue_bind(queue="q-any", exchange="orders-2", routing_key="order")
    ch.confirm_delivery()
    ch.basic_publish(exchange="orders-2", routing_key="k", body=b'{"order": 1}', mandatory=True)
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(exchange="orders-2", routing_key="k", body=b"not json", mandatory=True)
    assert ch.queue_declare(queue="q-any", passive=True).method.message_count == 1
    conn.close()


def test_a_malformed_binding_is_refused_with_the_plugins_reason(json_broker):
    conn = json_broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="orders-3", exchange_type="x-json-route")
    ch.queue_declare(queue="q-bad", auto_delete=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_bind(queue="q-bad", exchange="orders-3", routing_key="order..region=eu")
    assert e.value.reply_code == 406
    assert "the binding key must be 'path=value' or 'path'" in e.value.reply_text, e.value.reply_text
    conn.close()
