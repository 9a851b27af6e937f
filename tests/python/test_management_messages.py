"""Publish and get over the management HTTP API (RabbitMQ 3.10.8's bodies), checked against what
pika sees over AMQP: a message published over HTTP arrives with its properties, one published over
AMQP is fetched over HTTP, and each ackmode leaves the queue as RabbitMQ does."""
import base64

import pika
import pytest

from conftest import EXTERNAL, Broker
from test_management import call, send

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="needs a Warren it starts")


def test_publish_and_get(tmp_path):
    b = Broker(tmp_path=tmp_path, data_dir=str(tmp_path / "data"))
    try:
        conn = b.connect()
        ch = conn.channel()
        ch.queue_declare("mq", durable=True)
        ch.confirm_delivery()
        # HTTP -> AMQP, with properties and headers; amq.default is the default exchange.
        status, _, body = send(b, "POST", "/api/exchanges/%2F/amq.default/publish", {
            "routing_key": "mq", "payload": "hello", "payload_encoding": "string",
            "properties": {"delivery_mode": 2, "content_type": "text/plain", "headers": {"h": "v", "n": 3},
                           "message_id": "m-1"}})
        assert (status, body) == (200, {"routed": True})
        method, props, got = ch.basic_get("mq", auto_ack=True)
        assert got == b"hello"
        assert (props.delivery_mode, props.content_type, props.message_id) == (2, "text/plain", "m-1")
        assert props.headers == {"h": b"v", "n": 3} or props.headers == {"h": "v", "n": 3}
        assert send(b, "POST", "/api/exchanges/%2F/amq.default/publish",
                    {"routing_key": "nowhere", "payload": ""})[2] == {"routed": False}
        raw = base64.b64encode(b"\x00\xff").decode()
        assert send(b, "POST", "/api/exchanges/%2F/amq.default/publish",
                    {"routing_key": "mq", "payload": raw, "payload_encoding": "base64"})[2] == {"routed": True}
        assert ch.basic_get("mq", auto_ack=True)[2] == b"\x00\xff"
        status, _, body = send(b, "POST", "/api/exchanges/%2F/amq.default/publish",
                               {"routing_key": "mq", "payload": "x", "payload_encoding": "hex"})
        assert status == 400 and "payload_encoding" in body["reason"]
        assert send(b, "POST", "/api/exchanges/%2F/missing/publish", {"payload": "x"})[0] == 404
        # AMQP -> HTTP: requeueing modes leave the message (flagged redelivered), others take it.
        for i in range(3):
            ch.basic_publish("", "mq", b"m%d" % i, pika.BasicProperties(priority=i))
        status, _, got = send(b, "POST", "/api/queues/%2F/mq/get", {"count": 2, "ackmode": "ack_requeue_true",
                                                                   "encoding": "auto"})
        assert status == 200 and [m["payload"] for m in got] == ["m0", "m1"]
        for key in ["payload_bytes", "redelivered", "exchange", "routing_key", "message_count", "properties",
                    "payload", "payload_encoding"]:
            assert key in got[0], key
        assert (got[0]["payload_bytes"], got[0]["message_count"], got[0]["properties"]) == (2, 2, {"priority": 0})
        assert call(b, "/api/queues/%2F/mq")[2]["messages"] == 3
        _, _, got = send(b, "POST", "/api/queues/%2F/mq/get", {"count": 5, "ackmode": "ack_requeue_false",
                                                              "encoding": "base64", "truncate": 1})
        assert [m["payload"] for m in got] == [base64.b64encode(b"m").decode()] * 3
        assert got[0]["redelivered"] is True and got[0]["payload_encoding"] == "base64"
        assert call(b, "/api/queues/%2F/mq")[2]["messages"] == 0
        assert send(b, "POST", "/api/queues/%2F/mq/get", {"count": 1, "ackmode": "ack_requeue_false"})[2] == []
        assert send(b, "POST", "/api/queues/%2F/mq/get", {"count": 1, "ackmode": "nope"})[0] == 400
        assert send(b, "POST", "/api/queues/%2F/missing/get", {"count": 1, "ackmode": "ack_requeue_false"})[0] == 404
        conn.close()
    finally:
        b.stop()
