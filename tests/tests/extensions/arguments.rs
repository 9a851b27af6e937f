//! Validation of queue arguments with RabbitMQ's reply texts.

use super::*;

/// docs/queues.md + rabbit_amqqueue: bad arguments get 406 with RabbitMQ's texts; stream queues,
/// and quorum queues on a node that is not in a cluster, are refused, never silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_arguments_are_406() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let cases: Vec<(&str, AMQPValue, &str)> = vec![
        (
            "x-message-ttl",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        ("x-max-priority", AMQPValue::LongInt(0), "{value_zero,0}"),
        (
            "x-max-priority",
            AMQPValue::LongInt(256),
            "{max_value_exceeded,256}",
        ),
        ("x-overflow", s("drop-everything"), "invalid_overflow"),
        (
            "x-queue-type",
            s("quorum"),
            "queue type 'quorum' needs a Warren cluster (start the node with --cluster); use \
             'classic' on a single node",
        ),
        (
            "x-queue-type",
            s("stream"),
            "queue type 'stream' is not supported by Warren; use 'classic'",
        ),
        (
            "x-queue-type",
            s("fancy"),
            "\"unsupported queue type 'fancy'\"",
        ),
        ("x-max-length", s("5"), "\"expected integer, got longstr\""),
        ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
    ];
    for (key, value, detail) in cases {
        let ch = channel(&conn).await;
        let text = expect_code(
            ch.queue_declare(
                "bad-args".into(),
                QueueDeclareOptions::default(),
                table(&[(key, value)]),
            )
            .await,
            406,
        );
        assert_eq!(text, format!("PRECONDITION_FAILED - invalid arg '{key}' for queue 'bad-args' in vhost '/': {detail}"));
    }
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_declare(
            "bad-args".into(),
            QueueDeclareOptions::default(),
            table(&[("x-dead-letter-exchange", AMQPValue::LongInt(5))]),
        )
        .await,
        406,
    );
    assert_eq!(text, "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'bad-args' in vhost '/'");
    let ch = channel(&conn).await;
    declare(&ch, "classic-q", table(&[("x-queue-type", s("classic"))])).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    expect_code(
        ch.queue_declare("bad-args".into(), passive, FieldTable::default())
            .await,
        404,
    );
}
