"""Prometheus metrics on their own listener against the real binary: `/metrics` and
`/metrics/per-object` carry every metric name and label that the stock Grafana dashboard
"RabbitMQ-Overview" queries (rabbitmq-server `deps/rabbitmq_prometheus/docker/grafana/dashboards/
RabbitMQ-Overview.json`, listed in `../shared/MANAGEMENT.md` §2), values move with traffic driven by
pika, per-queue series carry `vhost` and `queue`, and Warren's `warren_plugin_*` series are there."""
import re
import time
import urllib.request

import pytest

from conftest import EXTERNAL, PLUGINS, Broker

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="needs a Warren it starts")

# Every name the RabbitMQ-Overview dashboard queries (MANAGEMENT.md §2), as OpenMetrics writes them
# (counters with `_total`), with the labels its queries select or join on.
OVERVIEW_GAUGES = [
    "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked", "rabbitmq_queues",
    "rabbitmq_connections", "rabbitmq_channels", "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_resident_memory_limit_bytes", "rabbitmq_disk_space_available_bytes",
    "rabbitmq_disk_space_available_limit_bytes", "rabbitmq_process_open_fds", "rabbitmq_process_max_fds",
    "rabbitmq_erlang_uptime_seconds", "rabbitmq_alarms_memory_used_watermark",
    "rabbitmq_alarms_free_disk_space_watermark",
]
OVERVIEW_PROTOCOL_GAUGES = ["rabbitmq_global_consumers", "rabbitmq_global_publishers"]
OVERVIEW_PROTOCOL_COUNTERS = [
    "rabbitmq_global_messages_received_total", "rabbitmq_global_messages_received_confirm_total",
    "rabbitmq_global_messages_routed_total", "rabbitmq_global_messages_unroutable_dropped_total",
    "rabbitmq_global_messages_unroutable_returned_total", "rabbitmq_global_messages_confirmed_total",
]
OVERVIEW_QUEUE_TYPE_COUNTERS = [
    "rabbitmq_global_messages_delivered_total", "rabbitmq_global_messages_delivered_consume_manual_ack_total",
    "rabbitmq_global_messages_delivered_consume_auto_ack_total",
    "rabbitmq_global_messages_delivered_get_manual_ack_total",
    "rabbitmq_global_messages_delivered_get_auto_ack_total", "rabbitmq_global_messages_get_empty_total",
    "rabbitmq_global_messages_redelivered_total", "rabbitmq_global_messages_acknowledged_total",
]
OVERVIEW_COUNTERS = [
    "rabbitmq_connections_opened_total", "rabbitmq_connections_closed_total",
    "rabbitmq_channels_opened_total", "rabbitmq_channels_closed_total",
    "rabbitmq_queues_declared_total", "rabbitmq_queues_created_total", "rabbitmq_queues_deleted_total",
]
PER_QUEUE = [
    "rabbitmq_queue_messages", "rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked",
    "rabbitmq_queue_messages_bytes", "rabbitmq_queue_consumers", "rabbitmq_queue_messages_published_total",
    "rabbitmq_queue_messages_delivered_total", "rabbitmq_queue_messages_acked_total",
]

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(broker, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{broker.prometheus_port}{path}", timeout=10) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("application/openmetrics-text")
        text = r.read().decode()
    assert text.rstrip().endswith("# EOF")
    samples = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = SAMPLE.match(line)
        assert m, line
        samples.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples


def value(samples, name, **labels):
    found = [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_metrics_have_the_overview_dashboards_names_and_move_with_traffic(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "x_consistent_hash.wasm").write_bytes((PLUGINS / "x_consistent_hash.wasm").read_bytes())
    b = Broker(tmp_path=tmp_path, plugin_dir=plugins)
    try:
        conn = b.connect()
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare("pq")
        ch.exchange_declare("chx", "x-consistent-hash")
        ch.queue_bind("pq", "chx", "1")
        for i in range(4):
            ch.basic_publish("", "pq", b"x" * 100)
        ch.basic_publish("chx", "k", b"y")
        ch.basic_publish("", "nowhere", b"z")
        ch.basic_get("pq", auto_ack=False)
        ch.basic_ack(1)
        ch.queue_declare("pq", passive=True)  # a round trip: the ack is processed
        for path in ["/metrics", "/metrics/per-object"]:
            s = scrape(b, path)
            identity = [l for n, l, _ in s if n == "rabbitmq_identity_info"]
            assert len(identity) == 1
            assert set(identity[0]) == {"rabbitmq_node", "rabbitmq_cluster", "rabbitmq_cluster_permanent_id",
                                        "rabbitmq_endpoint"}
            build = [l for n, l, _ in s if n == "rabbitmq_build_info"][0]
            assert {"rabbitmq_version", "erlang_version", "product_name", "product_version",
                    "prometheus_plugin_version", "prometheus_client_version"} <= set(build)
            for name in OVERVIEW_GAUGES + OVERVIEW_COUNTERS:
                assert any(n == name for n, _, _ in s), name
            for name in OVERVIEW_PROTOCOL_GAUGES + OVERVIEW_PROTOCOL_COUNTERS:
                value(s, name, protocol="amqp091")
            for name in OVERVIEW_QUEUE_TYPE_COUNTERS:
                value(s, name, protocol="amqp091", queue_type="rabbit_classic_queue")
            assert any(n == "rabbitmq_message_size_bytes_bucket" and l.get("le") == "+Inf" for n, l, _ in s)
            assert value(s, "rabbitmq_global_messages_received_total", protocol="amqp091") == 6
            assert value(s, "rabbitmq_global_messages_received_confirm_total", protocol="amqp091") == 6
            assert value(s, "rabbitmq_global_messages_routed_total", protocol="amqp091") == 5
            assert value(s, "rabbitmq_global_messages_unroutable_dropped_total", protocol="amqp091") == 1
            assert value(s, "rabbitmq_global_messages_confirmed_total", protocol="amqp091") == 6
            assert value(s, "rabbitmq_global_messages_delivered_get_manual_ack_total", protocol="amqp091",
                         queue_type="rabbit_classic_queue") == 1
            assert value(s, "rabbitmq_global_messages_acknowledged_total", protocol="amqp091",
                         queue_type="rabbit_classic_queue") == 1
            assert value(s, "rabbitmq_message_size_bytes_count", protocol="amqp091") == 6
            assert value(s, "rabbitmq_message_size_bytes_sum", protocol="amqp091") == 402
            assert value(s, "rabbitmq_connections") == 1 and value(s, "rabbitmq_channels") == 1
            assert value(s, "rabbitmq_queues_created_total") == 1
            assert value(s, "warren_plugin_calls_total", plugin="x-consistent-hash", kind="exchange") >= 1
            value(s, "warren_plugin_loaded", plugin="x-consistent-hash", kind="exchange")
        agg = scrape(b, "/metrics")
        assert value(agg, "rabbitmq_queue_messages_ready") == 4, "summed, without labels"
        per = scrape(b, "/metrics/per-object")
        for name in PER_QUEUE:
            value(per, name, vhost="/", queue="pq")
        assert value(per, "rabbitmq_queue_messages_ready", vhost="/", queue="pq") == 4
        assert value(per, "rabbitmq_queue_messages_published_total", vhost="/", queue="pq") == 5
        assert value(per, "rabbitmq_queue_messages_acked_total", vhost="/", queue="pq") == 1
        conn.close()
        # Every accepted connection counts, the start-up probe's included (as RabbitMQ's reader does).
        # The broker counts a close when the connection's task ends, just after close-ok: wait for it.
        deadline = time.time() + 5
        s = scrape(b, "/metrics")
        while (value(s, "rabbitmq_connections_closed_total") != value(s, "rabbitmq_connections_opened_total")
               and time.time() < deadline):
            time.sleep(0.05)
            s = scrape(b, "/metrics")
        assert value(s, "rabbitmq_connections_closed_total") == value(s, "rabbitmq_connections_opened_total") >= 1
        assert value(s, "rabbitmq_global_messages_received_total", protocol="amqp091") == 6, "closed channels count"
    finally:
        b.stop()
