//! Single active consumer and the delivery acknowledgement timeout (RabbitMQ docs/consumers.md).

use super::*;

/// docs/consumers.md: single active consumer; the next consumer takes over on cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_active_consumer_fails_over() {
    let broker = start_broker().await;
    let (conn, ch) = setup(&broker).await;
    declare(
        &ch,
        "sac",
        table(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let ch_a = channel(&conn).await;
    let ch_b = channel(&conn).await;
    let mut a = ch_a
        .basic_consume(
            "sac".into(),
            "a".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut b = ch_b
        .basic_consume(
            "sac".into(),
            "b".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..4 {
        publish(&ch, "", "sac", &i.to_string(), BasicProperties::default()).await;
    }
    for i in 0..4 {
        assert_eq!(next(&mut a).await.data, i.to_string().as_bytes());
    }
    expect_silence(&mut b, Duration::from_millis(150)).await;
    ch_a.basic_cancel("a".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish(&ch, "", "sac", "after", BasicProperties::default()).await;
    assert_eq!(next(&mut b).await.data, b"after");
}

/// docs/consumers.md: a delivery unacked past x-consumer-timeout closes the channel with 406 and the
/// message goes back to the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_timeout_closes_the_channel_and_requeues() {
    let broker = start_broker().await;
    let (conn, ch) = setup(&broker).await;
    declare(
        &ch,
        "slowpoke",
        table(&[("x-consumer-timeout", AMQPValue::LongInt(100))]),
    )
    .await;
    publish(&ch, "", "slowpoke", "late", BasicProperties::default()).await;
    let cch = channel(&conn).await;
    let mut c = cch
        .basic_consume(
            "slowpoke".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = next(&mut c).await;
    assert!(!first.redelivered);
    // Never acked: within the timeout plus the broker's 1 s check interval the channel is closed.
    let err = tokio::time::timeout(WAIT, futures_lite::StreamExt::next(&mut c))
        .await
        .expect("channel closed in time")
        .expect("an error item")
        .expect_err("the consumer reports the channel error");
    assert_eq!(reply_code(&err), Some(406));
    assert_eq!(
        reply_text(&err),
        "PRECONDITION_FAILED - delivery acknowledgement on channel 2 timed out. Timeout value used: 100 ms. \
         This timeout value can be configured, see consumers doc guide to learn more"
    );
    let again = wait_get(&ch, "slowpoke", true).await;
    assert_eq!(body(&again), "late");
    assert!(again.delivery.redelivered);
}
