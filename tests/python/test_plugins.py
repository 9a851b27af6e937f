"""Plugin exchange types with pika, as a RabbitMQ user declares them: x-consistent-hash and x-random,
plus Warren's consumer filter and idempotency plugins."""
import uuid

import pika
import pytest

from conftest import EXTERNAL


def counts(ch, queues):
    return [ch.queue_declare(queue=q, passive=True).method.message_count for q in queues]


def test_consistent_hash_exchange(plugin_broker):
    conn = plugin_broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="pika-chx", exchange_type="x-consistent-hash")
    queues = [f"pika-chx-{i}" for i in range(4)]
    for q in queues:
        ch.queue_declare(queue=q, auto_delete=True)
        ch.queue_bind(queue=q, exchange="pika-chx", routing_key="1")
    ch.confirm_delivery()
    for _ in range(4000):
        ch.basic_publish(exchange="pika-chx", routing_key=str(uuid.uuid4()), body=b"x")
    got = counts(ch, queues)
    assert sum(got) == 4000
    assert all(800 <= c <= 1200 for c in got), got
    # The same routing key always goes to the same queue.
    for _ in range(10):
        ch.basic_publish(exchange="pika-chx", routing_key="same-key", body=b"y")
    after = counts(ch, queues)
    assert sorted(a - b for a, b in zip(after, got)) == [0, 0, 0, 10]
    conn.close()


def test_consistent_hash_bad_binding_is_406(plugin_broker):
    conn = plugin_broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="pika-chx-bad", exchange_type="x-consistent-hash")
    ch.queue_declare(queue="pika-chx-bad-q", auto_delete=True)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_bind(queue="pika-chx-bad-q", exchange="pika-chx-bad", routing_key="not-a-number")
    assert e.value.reply_code == 406
    conn.close()


def test_random_exchange(plugin_broker):
    conn = plugin_broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="pika-rnd", exchange_type="x-random")
    queues = ["pika-rnd-a", "pika-rnd-b"]
    for q in queues:
        ch.queue_declare(queue=q, auto_delete=True)
        ch.queue_bind(queue=q, exchange="pika-rnd", routing_key="")
    ch.confirm_delivery()
    for i in range(1000):
        ch.basic_publish(exchange="pika-rnd", routing_key=f"k{i}", body=b"x")
    got = counts(ch, queues)
    assert sum(got) == 1000
    assert all(c >= 350 for c in got), got
    method, _, body = ch.basic_get("pika-rnd-a", auto_ack=True)
    assert method.exchange == "pika-rnd" and body == b"x"
    conn.close()


def test_unknown_exchange_type_is_503(plugin_broker):
    conn = plugin_broker.connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.exchange_declare(exchange="pika-nope", exchange_type="x-no-such-type")
    assert e.value.reply_code == 503


@pytest.mark.skipif(bool(EXTERNAL), reason="Warren's consumer-side plugins")
def test_filter_and_idempotency(plugin_broker):
    conn = plugin_broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue="pika-filtered")
    for region in ["eu", "us", "eu"]:
        ch.basic_publish(
            exchange="",
            routing_key="pika-filtered",
            body=region.encode(),
            properties=pika.BasicProperties(headers={"region": region}),
        )
    got = []
    tag = ch.basic_consume(
        "pika-filtered",
        lambda c, m, p, b: got.append(b),
        auto_ack=True,
        arguments={"x-filter": "match", "x-filter-args": {"headers": {"region": "eu"}}},
    )
    for _ in range(20):
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    assert got == [b"eu", b"eu"]
    assert ch.queue_declare(queue="pika-filtered", passive=True).method.message_count == 1

    ch.queue_declare(queue="pika-idem", arguments={"x-idempotency": "idempotency-key"})
    for i in range(10):
        ch.basic_publish(
            exchange="",
            routing_key="pika-idem",
            body=b"payment",
            properties=pika.BasicProperties(message_id=f"id-{i % 5}"),
        )
    delivered = []

    def on_message(channel, method, properties, body):
        delivered.append(properties.message_id)
        channel.basic_ack(method.delivery_tag)

    tag = ch.basic_consume("pika-idem", on_message)
    for _ in range(20):
        conn.process_data_events(time_limit=0.05)
    ch.basic_cancel(tag)
    assert sorted(delivered) == [f"id-{i}" for i in range(5)]
    conn.close()
