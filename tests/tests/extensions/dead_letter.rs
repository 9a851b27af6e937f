//! Dead-lettering of rejected messages, the cycle rule and the delivery limit (RabbitMQ docs/dlx.md,
//! docs/quorum-queues.md "Poison Message Handling").

use super::*;

/// docs/dlx.md: reject without requeue dead-letters; the dead-letter routing key replaces the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_messages_are_dead_lettered() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    ch.exchange_declare(
        "dlx-direct".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "parking", FieldTable::default()).await;
    ch.queue_bind(
        "parking".into(),
        "dlx-direct".into(),
        "parked".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(
        &ch,
        "work",
        table(&[
            ("x-dead-letter-exchange", s("dlx-direct")),
            ("x-dead-letter-routing-key", s("parked")),
        ]),
    )
    .await;
    publish(&ch, "", "work", "poison", BasicProperties::default()).await;
    let m = ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = wait_get(&ch, "parking", true).await;
    assert_eq!(body(&dead), "poison");
    assert_eq!(dead.delivery.routing_key.as_str(), "parked");
    let d = &x_death(&dead.delivery)[0];
    assert_eq!(text(d.inner().get("reason")), "rejected");
    assert_eq!(text(d.inner().get("queue")), "work");
    // nack(requeue=false) too.
    publish(&ch, "", "work", "poison2", BasicProperties::default()).await;
    let m = ch
        .basic_get("work".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery
        .nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
        .unwrap();
    assert_eq!(body(&wait_get(&ch, "parking", true).await), "poison2");
}

/// docs/dlx.md: a dead-letter cycle without a rejection drops the message instead of looping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_cycle_is_dropped() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    declare(
        &ch,
        "loop",
        table(&[
            ("x-message-ttl", AMQPValue::LongInt(20)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("loop")),
        ]),
    )
    .await;
    publish(
        &ch,
        "",
        "loop",
        "round and round",
        BasicProperties::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q = ch
        .queue_declare(
            "loop".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        q.message_count(),
        0,
        "dropped after one expiry, not cycling"
    );
}

/// x-delivery-limit: a message requeued more often than allowed is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_limit_dead_letters_poison_messages() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    declare(&ch, "poisoned", FieldTable::default()).await;
    declare(
        &ch,
        "limited",
        table(&[
            ("x-delivery-limit", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("poisoned")),
        ]),
    )
    .await;
    publish(&ch, "", "limited", "bad", BasicProperties::default()).await;
    for _ in 0..2 {
        let m = wait_get(&ch, "limited", false).await;
        m.delivery
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
    }
    let dead = wait_get(&ch, "poisoned", true).await;
    assert_eq!(
        text(x_death(&dead.delivery)[0].inner().get("reason")),
        "delivery_limit"
    );
    assert!(get(&ch, "limited").await.is_none());
}
