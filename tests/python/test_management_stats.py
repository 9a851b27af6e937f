"""Channels, consumers and message statistics over the management HTTP API against the real binary,
driven by pika: RabbitMQ 3.10.8's fields for `/api/channels` and `/api/consumers`, `message_stats`
counts per channel, queue, vhost and node, and a rate that moves after traffic (the sampler reads
the counters every 5 s, as RabbitMQ's default `collect_statistics_interval`)."""
import time
import urllib.parse

import pika
import pytest

from conftest import EXTERNAL, Broker
from test_management import call

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="needs a Warren it starts")


def test_channels_consumers_and_message_stats(tmp_path):
    b = Broker(tmp_path=tmp_path)
    try:
        conn = b.connect()
        pub = conn.channel()
        pub.confirm_delivery()
        sub = conn.channel()
        sub.basic_qos(prefetch_count=7)
        sub.queue_declare("sq")
        seen = []
        tag = sub.basic_consume("sq", lambda ch, m, p, body: seen.append(m.delivery_tag))
        for i in range(5):
            pub.basic_publish("", "sq", b"m%d" % i)
        with pytest.raises(pika.exceptions.UnroutableError):
            pub.basic_publish("", "nowhere", b"r", mandatory=True)
        deadline = time.time() + 5
        while len(seen) < 5 and time.time() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert len(seen) == 5
        sub.basic_ack(seen[2], multiple=True)
        conn.process_data_events(time_limit=0.2)

        _, _, chans = call(b, "/api/channels")
        by_number = {c["number"]: c for c in chans}
        p, s = by_number[pub.channel_number], by_number[sub.channel_number]
        for key in ["name", "node", "number", "user", "vhost", "state", "connection_details", "consumer_count",
                    "messages_unacknowledged", "messages_unconfirmed", "prefetch_count", "global_prefetch_count",
                    "confirm", "transactional", "message_stats"]:
            assert key in p, key
        assert p["name"].endswith(f"({pub.channel_number})") and p["name"].startswith(p["connection_details"]["name"])
        assert (p["confirm"], p["transactional"], p["user"], p["vhost"]) == (True, False, "guest", "/")
        assert (p["message_stats"]["publish"], p["message_stats"]["confirm"], p["message_stats"]["return_unroutable"]) == (6, 6, 1)
        assert (s["prefetch_count"], s["consumer_count"], s["messages_unacknowledged"]) == (7, 1, 2)
        assert (s["message_stats"]["deliver"], s["message_stats"]["deliver_get"], s["message_stats"]["ack"]) == (5, 5, 3)
        assert "rate" in s["message_stats"]["deliver_details"]
        one = call(b, "/api/channels/" + urllib.parse.quote(s["name"], safe=""))[2]
        assert one["number"] == sub.channel_number
        conn_name = urllib.parse.quote(p["connection_details"]["name"], safe="")
        assert len(call(b, f"/api/connections/{conn_name}/channels")[2]) == 2
        assert len(call(b, "/api/vhosts/%2F/channels")[2]) == 2

        _, _, consumers = call(b, "/api/consumers")
        assert len(consumers) == 1
        c = consumers[0]
        assert (c["consumer_tag"], c["queue"], c["ack_required"], c["exclusive"], c["prefetch_count"]) == \
            (tag, {"name": "sq", "vhost": "/"}, True, False, 7)
        assert c["channel_details"]["number"] == sub.channel_number
        assert call(b, "/api/consumers/%2F")[2] == consumers

        q = call(b, "/api/queues/%2F/sq")[2]
        assert (q["message_stats"]["publish"], q["message_stats"]["deliver_get"], q["message_stats"]["ack"]) == (5, 5, 3)
        assert q["memory"] > 0 and q["idle_since"] is None, "consumed: not idle"
        v = call(b, "/api/vhosts/%2F")[2]
        assert v["message_stats"]["publish"] == 6
        # The default exchange: six published to it, five routed (RabbitMQ's publish_in / publish_out).
        x = call(b, "/api/exchanges/%2F/amq.default")[2]["message_stats"]
        assert (x["publish_in"], x["publish_out"]) == (6, 5) and "rate" in x["publish_in_details"]
        listed = [e for e in call(b, "/api/exchanges/%2F")[2] if e["name"] == ""][0]["message_stats"]
        assert (listed["publish_in"], listed["publish_out"]) == (6, 5)
        assert call(b, "/api/exchanges/%2F/amq.topic")[2]["message_stats"]["publish_in"] == 0
        # Closed channels still count for the node and the vhost.
        sub.close()
        pub.close()
        o = call(b, "/api/overview")[2]
        assert (o["message_stats"]["publish"], o["message_stats"]["ack"]) == (6, 3)
        assert call(b, "/api/channels")[2] == []
        x = call(b, "/api/exchanges/%2F/amq.default")[2]["message_stats"]
        assert (x["publish_in"], x["publish_out"]) == (6, 5), "closed channels' publishes stay counted"
        q = call(b, "/api/queues/%2F/sq")[2]
        assert q["idle_since"] is not None and q["messages"] == 2

        # A rate that moves: publish for a while and wait for two samples around it.
        ch = conn.channel()
        deadline = time.time() + 14
        rate = 0
        while time.time() < deadline and rate == 0:
            for _ in range(50):
                ch.basic_publish("", "sq", b"x")
            conn.process_data_events(time_limit=0.2)
            rate = call(b, "/api/queues/%2F/sq")[2]["message_stats"]["publish_details"]["rate"]
        assert rate > 0
        assert call(b, "/api/overview")[2]["message_stats"]["publish_details"]["rate"] > 0
        assert call(b, "/api/exchanges/%2F/amq.default")[2]["message_stats"]["publish_in_details"]["rate"] > 0
        conn.close()
    finally:
        b.stop()
