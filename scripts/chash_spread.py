"""Spread of x-consistent-hash over 10, 3 and 2 equally weighted queues for the same 100 000 random
UUID routing keys (seeded), on any broker: `python3 scripts/chash_spread.py PORT`. Used to compare
Warren's plugin with RabbitMQ's rabbitmq_consistent_hash_exchange (scripts/bench.py starts a RabbitMQ
with it enabled on 5673)."""
import random
import sys
import uuid

import pika

port = int(sys.argv[1])
rng = random.Random(42)
keys = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(100_000)]
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", port))
ch = conn.channel()
for n in (10, 3, 2):
    x = f"spread-{n}"
    ch.exchange_delete(exchange=x)
    ch.exchange_declare(exchange=x, exchange_type="x-consistent-hash")
    queues = [f"{x}-{i}" for i in range(n)]
    for q in queues:
        ch.queue_delete(queue=q)
        ch.queue_declare(queue=q)
        ch.queue_bind(queue=q, exchange=x, routing_key="1")
    for k in keys:
        ch.basic_publish(exchange=x, routing_key=k, body=b"")
    ch.confirm_delivery()  # a round trip: everything before it has been routed
    counts = [ch.queue_declare(queue=q, passive=True).method.message_count for q in queues]
    even = len(keys) / n
    worst = max(abs(c - even) / even for c in counts)
    print(f"{n} queues: {counts}  worst deviation {100 * worst:.1f} %")
    for q in queues:
        ch.queue_delete(queue=q)
    ch.exchange_delete(exchange=x)
conn.close()
