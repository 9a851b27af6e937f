//! A restart keeps exactly the durable state (definitions, persistent messages, their properties
//! and headers); a newer on-disk format refuses to start.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_exactly_the_durable_state() {
    let dir = fresh_dir("restart");
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let durable_x = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "dx".into(),
        ExchangeKind::Direct,
        durable_x,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "dx2".into(),
        ExchangeKind::Fanout,
        durable_x,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "tx".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut limited = FieldTable::default();
    limited.insert("x-max-length".into(), AMQPValue::ShortInt(100));
    ch.queue_declare("dq".into(), durable(), limited.clone())
        .await
        .unwrap();
    ch.queue_declare(
        "tq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "dx".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "dq".into(),
        "tx".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "dx".into(),
        "dx2".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // Persistent and transient messages interleaved, through the durable e2e binding.
    for i in 0..10 {
        publish(&ch, "dx2", "k", format!("p{i}").as_bytes(), persistent()).await;
        if i % 2 == 0 {
            publish(
                &ch,
                "dx",
                "k",
                format!("t{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await;
        }
    }
    publish(&ch, "", "tq", b"lost with its queue", persistent()).await;
    // p0 acked, t0 acked; p1 delivered and left unacked (requeued at shutdown).
    let consumer_ch = channel(&conn).await;
    for _ in 0..2 {
        let m = consumer_ch
            .basic_get("dq".into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap();
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    let unacked = consumer_ch
        .basic_get("dq".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&unacked.delivery.data[..], b"p1");
    drop(conn);
    broker.stop().await;

    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Durable entities are back with their arguments (an equal redeclare passes, a different one fails).
    let q = ch
        .queue_declare("dq".into(), durable(), limited.clone())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 9, "p1..p9");
    let ch2 = channel(&conn).await;
    let mut other = FieldTable::default();
    other.insert("x-max-length".into(), AMQPValue::ShortInt(5));
    expect_code(ch2.queue_declare("dq".into(), durable(), other).await, 406);
    let ch2 = channel(&conn).await;
    expect_code(
        ch2.queue_declare("tq".into(), passive(), FieldTable::default())
            .await,
        404,
    );
    let ch2 = channel(&conn).await;
    expect_code(
        ch2.exchange_declare(
            "tx".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        404,
    );
    let got = drain(&ch, "dq").await;
    let expected: Vec<String> = (1..10).map(|i| format!("p{i}")).collect();
    assert_eq!(
        bodies(&got),
        expected.iter().map(String::as_str).collect::<Vec<_>>()
    );
    assert_eq!(
        got[0],
        ("p1".to_owned(), true),
        "delivered before the restart"
    );
    assert!(got[1..].iter().all(|(_, r)| !r), "never delivered: {got:?}");
    // Bindings between durable entities are back (dx2 -> dx -> dq); acked messages stay acked.
    publish(&ch, "dx2", "k", b"after", persistent()).await;
    assert_eq!(bodies(&drain(&ch, "dq").await), ["after"]);
    drop(conn);
    broker.stop().await;

    // Acks were recorded too: nothing comes back.
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = ch
        .queue_declare("dq".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    ch.queue_delete("dq".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    drop(conn);
    broker.stop().await;
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    expect_code(
        ch.queue_declare("dq".into(), passive(), FieldTable::default())
            .await,
        404,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_ttl_and_dead_letter_headers_survive_a_restart() {
    let dir = fresh_dir("extensions");
    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
    ch.queue_declare("prio".into(), durable(), args.clone())
        .await
        .unwrap();
    for (i, p) in [1u8, 5, 9, 5, 1].iter().enumerate() {
        let props = persistent().with_priority(*p);
        publish(&ch, "", "prio", format!("{p}-{i}").as_bytes(), props).await;
    }
    // A message that expires 1.5 s after publishing, dead-lettered into a durable queue.
    let mut ttl_args = FieldTable::default();
    ttl_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    ttl_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("expired".into()),
    );
    ch.queue_declare("ttl".into(), durable(), ttl_args.clone())
        .await
        .unwrap();
    ch.queue_declare("expired".into(), durable(), FieldTable::default())
        .await
        .unwrap();
    publish(
        &ch,
        "",
        "ttl",
        b"short",
        persistent().with_expiration("1500".into()),
    )
    .await;
    publish(
        &ch,
        "",
        "ttl",
        b"long",
        persistent().with_expiration("600000".into()),
    )
    .await;
    drop(conn);
    broker.stop().await;

    let broker = start_broker_with(config(&dir)).await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // Highest priority first, FIFO within a priority, as before the restart.
    assert_eq!(
        bodies(&drain(&ch, "prio").await),
        ["9-2", "5-1", "5-3", "1-0", "1-4"]
    );
    // The expiry time was kept: "short" is dead-lettered with its x-death once it passes.
    let got = wait_get(&ch, "expired", false).await;
    assert_eq!(&got.delivery.data[..], b"short");
    let headers = got.delivery.properties.headers().clone().unwrap();
    assert!(headers.inner().contains_key("x-death"), "{headers:?}");
    got.delivery.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(bodies(&drain(&ch, "ttl").await), ["long"]);
    drop(conn);
    broker.stop().await;
    // The dead-lettered copy was persisted in its own queue and acked there: nothing is left.
    assert!(start_and_drain(&dir, "expired").await.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_format_refuses_to_start() {
    let dir = fresh_dir("newer");
    std::fs::write(dir.join("FORMAT"), "warren-data 99\n").unwrap();
    let err = warren::broker::Broker::new(config(&dir)).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("newer Warren"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
