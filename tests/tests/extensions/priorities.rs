//! Priority queues and consumer priorities (RabbitMQ docs/priority.md, docs/consumer-priority.md).

use super::*;

/// docs/priority.md: higher priority first, FIFO within a priority, priority capped at x-max-priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_queue_orders_by_priority() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    declare(
        &ch,
        "prio",
        table(&[("x-max-priority", AMQPValue::ShortShortUInt(5))]),
    )
    .await;
    for (b, p) in [
        ("low", 1u8),
        ("mid-a", 3),
        ("none", 0),
        ("top", 9),
        ("mid-b", 3),
        ("five", 5),
    ] {
        let props = if b == "none" {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_priority(p)
        };
        publish(&ch, "", "prio", b, props).await;
    }
    let mut order = Vec::new();
    while let Some(m) = get(&ch, "prio").await {
        order.push(body(&m));
    }
    // 9 is capped to 5 and arrived before "five": FIFO within the capped level.
    assert_eq!(order, ["top", "five", "mid-a", "mid-b", "low", "none"]);
}

/// docs/consumer-priority.md: the higher-priority consumer gets messages while it has capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_priorities() {
    let broker = start_broker().await;
    let (conn, ch) = setup(&broker).await;
    declare(&ch, "cp", FieldTable::default()).await;
    let high_ch = channel(&conn).await;
    high_ch
        .basic_qos(2, BasicQosOptions::default())
        .await
        .unwrap();
    let low_ch = channel(&conn).await;
    let mut low = low_ch
        .basic_consume(
            "cp".into(),
            "low".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut high = high_ch
        .basic_consume(
            "cp".into(),
            "high".into(),
            BasicConsumeOptions::default(),
            table(&[("x-priority", AMQPValue::LongInt(10))]),
        )
        .await
        .unwrap();
    for i in 0..3 {
        publish(&ch, "", "cp", &i.to_string(), BasicProperties::default()).await;
    }
    // High takes two (its prefetch), the third spills to low.
    assert_eq!(next(&mut high).await.data, b"0");
    assert_eq!(next(&mut high).await.data, b"1");
    assert_eq!(next(&mut low).await.data, b"2");
    let bad = low_ch
        .basic_consume(
            "cp".into(),
            "bad".into(),
            BasicConsumeOptions::default(),
            table(&[("x-priority", s("high"))]),
        )
        .await;
    assert_eq!(expect_code(bad, 406), "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 'cp' in vhost '/': \"expected integer, got longstr\"");
}
