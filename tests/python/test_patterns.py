"""The six RabbitMQ tutorial patterns, written as a pika user writes them, against warren."""
import threading
import uuid

import pika


def drain(conn, ch, queue, n, auto_ack=True, timeout=5):
    """Consumes n messages from queue; returns their bodies in arrival order."""
    got = []

    def on_message(channel, method, properties, body):
        got.append(body)
        if not auto_ack:
            channel.basic_ack(method.delivery_tag)

    tag = ch.basic_consume(queue, on_message, auto_ack=auto_ack)
    deadline = timeout
    while len(got) < n and deadline > 0:
        conn.process_data_events(time_limit=0.1)
        deadline -= 0.1
    ch.basic_cancel(tag)
    return got


def test_hello_world(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.queue_declare(queue="hello")
    ch.basic_publish(exchange="", routing_key="hello", body=b"Hello World!")
    assert drain(conn, ch, "hello", 1) == [b"Hello World!"]
    conn.close()


def test_work_queues_fair_dispatch(broker):
    """prefetch_count=1 + manual acks: a busy worker does not get a second task."""
    producer = broker.connect()
    pch = producer.channel()
    pch.queue_declare(queue="task_queue", durable=True)

    busy = broker.connect()
    bch = busy.channel()
    bch.basic_qos(prefetch_count=1)
    idle = broker.connect()
    ich = idle.channel()
    ich.basic_qos(prefetch_count=1)

    busy_got = []
    bch.basic_consume("task_queue", lambda c, m, p, b: busy_got.append(m.delivery_tag))  # never acks
    idle_got = []

    def work(c, m, p, body):
        idle_got.append(body)
        c.basic_ack(delivery_tag=m.delivery_tag)

    ich.basic_consume("task_queue", work)
    busy.process_data_events(time_limit=0.2)
    for i in range(10):
        pch.basic_publish(
            exchange="", routing_key="task_queue", body=f"task {i}".encode(),
            properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
        )
    for _ in range(50):
        busy.process_data_events(time_limit=0.05)
        idle.process_data_events(time_limit=0.05)
        if len(busy_got) + len(idle_got) == 10:
            break
    assert len(busy_got) == 1, busy_got
    assert len(idle_got) == 9
    for c in (producer, busy, idle):
        c.close()


def test_publish_subscribe_fanout(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="logs", exchange_type="fanout")
    queues = []
    for _ in range(3):
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        assert q.startswith("amq.gen-")
        ch.queue_bind(exchange="logs", queue=q)
        queues.append(q)
    ch.basic_publish(exchange="logs", routing_key="", body=b"info: hi")
    for q in queues:
        assert drain(conn, ch, q, 1) == [b"info: hi"]
    conn.close()


def test_routing_direct(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="direct_logs", exchange_type="direct")
    errors = ch.queue_declare(queue="", exclusive=True).method.queue
    everything = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange="direct_logs", queue=errors, routing_key="error")
    for severity in ("info", "warning", "error"):
        ch.queue_bind(exchange="direct_logs", queue=everything, routing_key=severity)
    for severity in ("info", "warning", "error", "debug"):
        ch.basic_publish(exchange="direct_logs", routing_key=severity, body=severity.encode())
    assert drain(conn, ch, errors, 1) == [b"error"]
    assert drain(conn, ch, everything, 3) == [b"info", b"warning", b"error"]
    conn.close()


def test_topics(broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.exchange_declare(exchange="topic_logs", exchange_type="topic")
    q1 = ch.queue_declare(queue="", exclusive=True).method.queue
    q2 = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.queue_bind(exchange="topic_logs", queue=q1, routing_key="*.orange.*")
    ch.queue_bind(exchange="topic_logs", queue=q2, routing_key="*.*.rabbit")
    ch.queue_bind(exchange="topic_logs", queue=q2, routing_key="lazy.#")
    for key in ("quick.orange.rabbit", "lazy.orange.elephant", "quick.orange.fox",
                "lazy.brown.fox", "lazy.pink.rabbit", "quick.brown.fox", "orange",
                "quick.orange.new.rabbit", "lazy.orange.new.rabbit"):
        ch.basic_publish(exchange="topic_logs", routing_key=key, body=key.encode())
    assert drain(conn, ch, q1, 3) == [b"quick.orange.rabbit", b"lazy.orange.elephant", b"quick.orange.fox"]
    assert drain(conn, ch, q2, 5) == [b"quick.orange.rabbit", b"lazy.orange.elephant", b"lazy.brown.fox",
                                      b"lazy.pink.rabbit", b"lazy.orange.new.rabbit"]
    conn.close()


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def test_rpc_reply_to_and_correlation_id(broker):
    server_conn = broker.connect()
    sch = server_conn.channel()
    sch.queue_declare(queue="rpc_queue")
    sch.basic_qos(prefetch_count=1)

    def on_request(c, method, props, body):
        response = fib(int(body))
        c.basic_publish(exchange="", routing_key=props.reply_to,
                        properties=pika.BasicProperties(correlation_id=props.correlation_id),
                        body=str(response).encode())
        c.basic_ack(delivery_tag=method.delivery_tag)

    sch.basic_consume(queue="rpc_queue", on_message_callback=on_request)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            server_conn.process_data_events(time_limit=0.05)

    t = threading.Thread(target=serve)
    t.start()
    try:
        client = broker.connect()
        cch = client.channel()
        callback_queue = cch.queue_declare(queue="", exclusive=True).method.queue
        responses = {}

        def on_response(c, method, props, body):
            responses[props.correlation_id] = int(body)

        cch.basic_consume(queue=callback_queue, on_message_callback=on_response, auto_ack=True)
        expected = {}
        for n in (10, 15, 20):
            corr = str(uuid.uuid4())
            expected[corr] = fib(n)
            cch.basic_publish(exchange="", routing_key="rpc_queue",
                              properties=pika.BasicProperties(reply_to=callback_queue, correlation_id=corr),
                              body=str(n).encode())
        for _ in range(100):
            client.process_data_events(time_limit=0.05)
            if len(responses) == 3:
                break
        assert responses == expected
        client.close()
    finally:
        stop.set()
        t.join()
        server_conn.close()


def test_sigterm_closes_clients_with_320_and_exits_zero(fresh_broker):
    conn = fresh_broker.connect()
    ch = conn.channel()
    ch.queue_declare(queue="q")
    closed = []
    assert fresh_broker.stop() == 0
    try:
        conn.process_data_events(time_limit=1)
    except pika.exceptions.ConnectionClosedByBroker as e:
        closed.append(e.reply_code)
    assert closed == [320]
