//! Message TTL (per queue and per message), queue expiry (`x-expires`) and TTL + DLX retries
//! (RabbitMQ docs/ttl.md).

use super::*;

/// docs/ttl.md + docs/dlx.md: queue TTL expires messages into the dead-letter exchange with an x-death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_dead_letters_with_x_death() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    ch.exchange_declare(
        "dlx".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "dead", FieldTable::default()).await;
    ch.queue_bind(
        "dead".into(),
        "dlx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(
        &ch,
        "ttl",
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    publish(
        &ch,
        "",
        "ttl",
        "old",
        BasicProperties::default().with_message_id("m1".into()),
    )
    .await;
    let m = wait_get(&ch, "dead", true).await;
    assert_eq!(body(&m), "old");
    assert_eq!(m.delivery.exchange.as_str(), "dlx");
    assert_eq!(m.delivery.routing_key.as_str(), "ttl");
    let deaths = x_death(&m.delivery);
    assert_eq!(deaths.len(), 1);
    let d = &deaths[0];
    assert_eq!(text(d.inner().get("reason")), "expired");
    assert_eq!(text(d.inner().get("queue")), "ttl");
    assert_eq!(text(d.inner().get("exchange")), "");
    assert_eq!(d.inner().get("count"), Some(&AMQPValue::LongLongInt(1)));
    assert_eq!(
        d.inner().get("routing-keys"),
        Some(&AMQPValue::FieldArray(FieldArray::from(vec![s("ttl")])))
    );
    assert_eq!(text(header(&m.delivery, "x-first-death-reason")), "expired");
    assert_eq!(text(header(&m.delivery, "x-first-death-queue")), "ttl");
    assert_eq!(
        m.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|v| v.as_str()),
        Some("m1")
    );
    assert!(get(&ch, "ttl").await.is_none());
}

/// docs/ttl.md: per-message expiration; the smaller of queue and message TTL wins; an expired message
/// behind a live head still leaves promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_message_ttl_expires_promptly_even_behind_the_head() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    declare(&ch, "dead2", FieldTable::default()).await;
    declare(
        &ch,
        "mixed",
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(60_000)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dead2")),
        ]),
    )
    .await;
    publish(&ch, "", "mixed", "long-lived", BasicProperties::default()).await;
    publish(
        &ch,
        "",
        "mixed",
        "short",
        BasicProperties::default().with_expiration("50".into()),
    )
    .await;
    let m = wait_get(&ch, "dead2", true).await;
    assert_eq!(body(&m), "short");
    let d = &x_death(&m.delivery)[0];
    assert_eq!(text(d.inner().get("original-expiration")), "50");
    assert_eq!(
        m.delivery.properties.expiration(),
        &None,
        "expiration is removed when dead-lettered"
    );
    assert_eq!(m.delivery.routing_key.as_str(), "dead2");
    assert_eq!(
        body(&get(&ch, "mixed").await.expect("head still there")),
        "long-lived"
    );
    // An expiration that is not a number is refused like RabbitMQ does (read from the pending confirm,
    // which fails with the channel.close).
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let bad = ch
        .basic_publish(
            "".into(),
            "mixed".into(),
            BasicPublishOptions::default(),
            b"",
            BasicProperties::default().with_expiration("soon".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        expect_code(bad.await, 406),
        "PRECONDITION_FAILED - invalid expiration 'soon': no_integer"
    );
}

/// docs/ttl.md: x-expires deletes an unused queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unused_queue_expires() {
    let broker = start_broker().await;
    let (conn, ch) = setup(&broker).await;
    declare(
        &ch,
        "lease",
        table(&[("x-expires", AMQPValue::LongInt(150))]),
    )
    .await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare("lease".into(), passive, FieldTable::default())
        .await
        .expect("exists at first");
    tokio::time::sleep(Duration::from_millis(600)).await;
    expect_code(
        ch.queue_declare("lease".into(), passive, FieldTable::default())
            .await,
        404,
    );
    // A consumer keeps it alive.
    let ch = channel(&conn).await;
    declare(
        &ch,
        "leased",
        table(&[("x-expires", AMQPValue::LongInt(150))]),
    )
    .await;
    let _c = ch
        .basic_consume(
            "leased".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ch.queue_declare("leased".into(), passive, FieldTable::default())
        .await
        .expect("in use, not expired");
}

/// The delayed-retry pattern: a failed message waits in a retry queue (TTL) and comes back to the work
/// queue through dead-lettering; x-death counts the rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_retry_with_ttl_and_dlx() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    let opts = ExchangeDeclareOptions::default();
    ch.exchange_declare(
        "work-x".into(),
        ExchangeKind::Direct,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "retry-x".into(),
        ExchangeKind::Direct,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(
        &ch,
        "jobs",
        table(&[("x-dead-letter-exchange", s("retry-x"))]),
    )
    .await;
    declare(
        &ch,
        "jobs-retry",
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(200)),
            ("x-dead-letter-exchange", s("work-x")),
        ]),
    )
    .await;
    ch.queue_bind(
        "jobs".into(),
        "work-x".into(),
        "job".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "jobs-retry".into(),
        "retry-x".into(),
        "job".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "work-x", "job", "flaky", BasicProperties::default()).await;
    let started = std::time::Instant::now();
    for round in 1..=2i64 {
        let m = wait_get(&ch, "jobs", false).await;
        if round == 2 {
            let deaths = x_death(&m.delivery);
            let rejected = deaths
                .iter()
                .find(|d| text(d.inner().get("reason")) == "rejected")
                .expect("rejected entry");
            assert_eq!(
                rejected.inner().get("count"),
                Some(&AMQPValue::LongLongInt(1))
            );
            let expired = deaths
                .iter()
                .find(|d| text(d.inner().get("reason")) == "expired")
                .expect("expired entry");
            assert_eq!(text(expired.inner().get("queue")), "jobs-retry");
            assert!(
                started.elapsed() >= Duration::from_millis(200),
                "waited in the retry queue"
            );
            m.delivery.ack(BasicAckOptions::default()).await.unwrap();
            break;
        }
        m.delivery
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
}
