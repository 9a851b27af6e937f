"""Costs that stay flat as state grows, with a stock Python client: durable definitions go to an
append-only log whose replies wait for the fsync (so a kill -9 right after the replies loses none,
across log compactions), and a transient queue pages its tail to a scratch log past its memory limit
and delivers everything in order."""
import os
import pathlib
import signal

import pika
import pytest

from conftest import EXTERNAL, Broker

pytestmark = pytest.mark.skipif(EXTERNAL is not None, reason="restarts its own broker")


def test_durable_definitions_survive_kill_9_right_after_their_replies(tmp_path):
    data = tmp_path / "data"
    b = Broker(data_dir=str(data))
    conn = b.connect()
    ch = conn.channel()
    ch.exchange_declare("scale-x", "topic", durable=True)
    ch.exchange_declare("scale-gone", "fanout", durable=True)
    ch.exchange_bind("scale-gone", "scale-x", routing_key="e2e")
    # Enough changes for the log to be compacted into a snapshot more than once.
    n = 1500
    for i in range(n):
        q = f"scale-q{i}"
        ch.queue_declare(q, durable=True)
        ch.queue_bind(q, "scale-x", routing_key=f"k.{i}")
    for i in range(0, n, 5):
        ch.queue_delete(f"scale-q{i}")
    ch.queue_unbind("scale-q1", "scale-x", routing_key="k.1")
    ch.exchange_delete("scale-gone")
    ch.queue_declare("scale-transient", durable=False)
    # The last reply is in: the change is on disk. No grace period before the kill.
    assert b.stop(signal.SIGKILL) == -signal.SIGKILL

    b = Broker(data_dir=str(data))
    try:
        conn = b.connect()
        ch = conn.channel()
        for i in range(n):
            if i % 5 == 0:
                with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                    ch.queue_declare(f"scale-q{i}", passive=True)
                assert e.value.reply_code == 404
                ch = conn.channel()
            else:
                ch.queue_declare(f"scale-q{i}", passive=True)
        for name in ("scale-gone",):
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
                ch.exchange_declare(name, passive=True)
            assert e.value.reply_code == 404
            ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker):
            ch.queue_declare("scale-transient", passive=True)
        ch = conn.channel()
        # Bindings came back too (and the unbound one did not): route through the topic exchange.
        ch.confirm_delivery()
        for i in (1, 2, 3):
            ch.basic_publish("scale-x", f"k.{i}", f"m{i}".encode())
        assert ch.queue_declare("scale-q1", passive=True).method.message_count == 0
        assert ch.queue_declare("scale-q2", passive=True).method.message_count == 1
        assert ch.queue_declare("scale-q3", passive=True).method.message_count == 1
        conn.close()
        snapshot = data / "vhosts"
        assert list(snapshot.rglob("definitions.log")), "definitions are kept as a log"
    finally:
        b.stop()


def test_a_transient_backlog_pages_to_disk_and_drains_in_order(tmp_path):
    data = tmp_path / "data"
    # A 1 MiB memory limit per queue, so a modest backlog pages.
    b = Broker("queue_memory_limit = 1048576\n", tmp_path, data_dir=str(data))
    try:
        conn = b.connect()
        ch = conn.channel()
        ch.queue_declare("backlog", durable=False)
        body = b"x" * 1000
        n = 20_000
        for i in range(n):
            ch.basic_publish("", "backlog", f"{i:08}".encode() + body,
                             pika.BasicProperties(content_type="text/plain", headers={"i": i}))
        assert ch.queue_declare("backlog", passive=True).method.message_count == n
        segments = list((data / "transient").rglob("*.seg"))
        assert segments, "the tail was paged to a scratch log"
        paged = sum(os.path.getsize(s) for s in segments)
        assert paged > 10 * 1048576, f"most of the 20 MB backlog is on disk, not in memory ({paged} octets)"
        got = 0
        for method, props, payload in ch.consume("backlog", auto_ack=False, inactivity_timeout=10):
            assert method is not None, f"stalled after {got} messages"
            assert payload == f"{got:08}".encode() + body, f"message {got} out of order"
            assert props.content_type == "text/plain" and props.headers == {"i": got}
            got += 1
            if got % 1000 == 0 or got == n:
                ch.basic_ack(method.delivery_tag, multiple=True)
            if got == n:
                break
        ch.cancel()
        assert ch.queue_declare("backlog", passive=True).method.message_count == 0
        ch.queue_delete("backlog")
        conn.close()
    finally:
        b.stop()
    # A restart clears scratch logs: they hold nothing a restart keeps.
    b = Broker("queue_memory_limit = 1048576\n", tmp_path, data_dir=str(data))
    try:
        assert not list(pathlib.Path(data / "transient").rglob("*.seg"))
    finally:
        b.stop()
