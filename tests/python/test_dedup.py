"""The first-party x-message-deduplication plugin over pika (noxdafox's exchange contract) on the
host key-value store: duplicates dropped, TTL, x-cache-size eviction, a disk cache across a restart,
bad arguments."""
import time

import pika
import pika.exceptions
import pytest

from conftest import EXTERNAL, Broker, copy_plugins
from test_delayed import exchange_info

pytestmark = pytest.mark.skipif(EXTERNAL is not None, reason="starts brokers with the plugin")


def plugin_dir(tmp_path):
    return copy_plugins(tmp_path, "x_message_deduplication")


@pytest.fixture
def dedup(tmp_path):
    b = Broker(plugin_dir=plugin_dir(tmp_path))
    yield b
    if b.proc.poll() is None:
        b.stop()


def declare(ch, name, queue, durable=False, **arguments):
    ch.exchange_declare(name, "x-message-deduplication", durable=durable, arguments=arguments)
    ch.queue_declare(queue, durable=durable)
    ch.queue_bind(queue, name, "")


def send(ch, exchange, value, body=b"m"):
    ch.basic_publish(exchange, "", body, pika.BasicProperties(headers={"x-deduplication-header": value}))


def count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def settle(ch, queue, expected, timeout=10):
    """The queue's message count once it reached `expected` (or the count at the timeout)."""
    deadline = time.time() + timeout
    n = count(ch, queue)
    while n != expected and time.time() < deadline:
        time.sleep(0.05)
        n = count(ch, queue)
    return n


def test_10000_messages_with_5000_distinct_values_deliver_5000(dedup):
    conn = dedup.connect()
    ch = conn.channel()
    declare(ch, "dd", "ddq", **{"x-cache-size": 100000})
    ch.confirm_delivery()
    for i in range(10000):
        send(ch, "dd", f"id-{i % 5000}")
    assert settle(ch, "ddq", 5000) == 5000
    time.sleep(0.2)
    assert count(ch, "ddq") == 5000
    info = exchange_info(dedup, "dd")
    assert info["plugin_store_entries"] == 5000, info
    # Without the header, every message goes through.
    ch.basic_publish("dd", "", b"plain")
    ch.basic_publish("dd", "", b"plain")
    assert settle(ch, "ddq", 5002) == 5002
    conn.close()


def test_a_value_is_accepted_again_after_the_ttl(dedup):
    conn = dedup.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    declare(ch, "ttl", "ttlq", **{"x-cache-size": 100, "x-cache-ttl": 500})
    send(ch, "ttl", "a")
    send(ch, "ttl", "a")
    assert settle(ch, "ttlq", 1) == 1
    time.sleep(0.7)
    send(ch, "ttl", "a")
    send(ch, "ttl", "a")
    assert settle(ch, "ttlq", 2) == 2
    time.sleep(0.1)
    assert count(ch, "ttlq") == 2
    conn.close()


def test_the_cache_size_evicts_the_oldest_value(dedup):
    conn = dedup.connect()
    ch = conn.channel()
    ch.confirm_delivery()
    declare(ch, "sz", "szq", **{"x-cache-size": 3})
    for v in ["a", "b", "c", "d"]:  # d evicts a
        send(ch, "sz", v)
    send(ch, "sz", "d")  # still cached: dropped
    send(ch, "sz", "a")  # evicted: accepted (and evicts b)
    assert settle(ch, "szq", 5) == 5
    time.sleep(0.1)
    assert count(ch, "szq") == 5
    assert exchange_info(dedup, "sz")["plugin_store_entries"] == 3
    conn.close()


def test_a_disk_cache_survives_a_restart_and_a_memory_cache_does_not(tmp_path):
    b = Broker(data_dir=str(tmp_path / "data"), plugin_dir=plugin_dir(tmp_path))
    conn, ch = b.confirmed_channel()
    declare(ch, "disk", "diskq", durable=True, **{"x-cache-size": 100, "x-cache-persistence": "disk"})
    declare(ch, "mem", "memq", durable=True, **{"x-cache-size": 100, "x-cache-persistence": "memory"})
    for x in ["disk", "mem"]:
        send(ch, x, "seen")
    conn.close()
    b.stop()
    b = b.restarted()
    try:
        conn, ch = b.confirmed_channel()
        # A redeclare waits for the plugin's initial load; the exchanges themselves were recovered.
        declare(ch, "disk", "diskq", durable=True, **{"x-cache-size": 100, "x-cache-persistence": "disk"})
        declare(ch, "mem", "memq", durable=True, **{"x-cache-size": 100, "x-cache-persistence": "memory"})
        ch.queue_purge("diskq")
        ch.queue_purge("memq")
        for x in ["disk", "mem"]:
            send(ch, x, "seen")
            send(ch, x, "new")
        assert settle(ch, "diskq", 1) == 1, "the disk cache forgot 'seen'"
        assert settle(ch, "memq", 2) == 2, "the memory cache remembered across a restart"
        conn.close()
    finally:
        b.stop()


def test_bad_arguments_get_406_with_the_plugins_text(dedup):
    conn = dedup.connect()
    for arguments, text in [
        ({}, "'x-cache-size' must be an integer greater than 0"),
        ({"x-cache-size": 0}, "'x-cache-size' must be an integer greater than 0"),
        ({"x-cache-size": 5, "x-cache-ttl": "long"}, "'x-cache-ttl' must be an integer greater than 0"),
        ({"x-cache-size": 5, "x-cache-persistence": "tape"}, "'x-cache-persistence' must be either"),
    ]:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.exchange_declare("bad", "x-message-deduplication", arguments=arguments)
        assert e.value.reply_code == 406
        assert text in e.value.reply_text, e.value.reply_text
    conn.close()
