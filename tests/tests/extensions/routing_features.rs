//! Alternate exchanges, sender-selected distribution (CC/BCC) and direct reply-to (RabbitMQ
//! docs/ae.md, docs/sender-selected.md, docs/direct-reply-to.md).

use super::*;

/// docs/ae.md: unroutable messages go to the alternate exchange (and are not returned as unroutable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternate_exchange_catches_unroutable() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    let opts = ExchangeDeclareOptions::default();
    ch.exchange_declare(
        "ae".into(),
        ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "main".into(),
        ExchangeKind::Direct,
        opts,
        table(&[("alternate-exchange", s("ae"))]),
    )
    .await
    .unwrap();
    declare(&ch, "unrouted", FieldTable::default()).await;
    declare(&ch, "routed", FieldTable::default()).await;
    ch.queue_bind(
        "unrouted".into(),
        "ae".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "routed".into(),
        "main".into(),
        "known".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for key in ["known", "unknown"] {
        let c = ch
            .basic_publish(
                "main".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                key.as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(c, Confirmation::Ack(None)),
            "{key}: not returned: {c:?}"
        );
    }
    assert_eq!(body(&get(&ch, "routed").await.unwrap()), "known");
    assert_eq!(body(&get(&ch, "unrouted").await.unwrap()), "unknown");
    assert!(get(&ch, "unrouted").await.is_none());
}

/// docs/sender-selected.md: CC and BCC add routing keys; BCC is removed before delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_selected_distribution() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    for q in ["to", "cc", "bcc"] {
        declare(&ch, q, FieldTable::default()).await;
    }
    let headers = table(&[
        ("CC", AMQPValue::FieldArray(FieldArray::from(vec![s("cc")]))),
        (
            "BCC",
            AMQPValue::FieldArray(FieldArray::from(vec![s("bcc")])),
        ),
        ("other", s("kept")),
    ]);
    publish(
        &ch,
        "",
        "to",
        "hi",
        BasicProperties::default().with_headers(headers),
    )
    .await;
    for q in ["to", "cc", "bcc"] {
        let m = get(&ch, q)
            .await
            .unwrap_or_else(|| panic!("{q} got nothing"));
        assert_eq!(body(&m), "hi");
        assert!(header(&m.delivery, "BCC").is_none(), "BCC stripped on {q}");
        assert!(header(&m.delivery, "CC").is_some(), "CC kept on {q}");
        assert_eq!(text(header(&m.delivery, "other")), "kept");
    }
}

/// docs/direct-reply-to.md: RPC without a reply queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_round_trip() {
    let broker = start_broker().await;
    let server_conn = connect(&broker).await;
    let server = channel(&server_conn).await;
    declare(&server, "rpc", FieldTable::default()).await;
    let mut requests = server
        .basic_consume(
            "rpc".into(),
            "srv".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let client_conn = connect(&broker).await;
    let client = channel(&client_conn).await;
    // Publishing with reply_to before consuming replies is refused, as in RabbitMQ.
    let early = channel(&client_conn).await;
    early
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let refused = early
        .basic_publish(
            "".into(),
            "rpc".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        expect_code(refused.await, 406),
        "PRECONDITION_FAILED - fast reply consumer does not exist"
    );

    let mut replies = client
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "replies".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let props = BasicProperties::default()
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_correlation_id("c-42".into());
    publish(&client, "", "rpc", "21", props).await;

    let request = next(&mut requests).await;
    let reply_to = request.properties.reply_to().clone().expect("reply_to");
    assert!(
        reply_to.as_str().starts_with("amq.rabbitmq.reply-to."),
        "rewritten: {reply_to}"
    );
    assert_ne!(reply_to.as_str(), "amq.rabbitmq.reply-to.");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    server
        .queue_declare(reply_to.clone(), passive, FieldTable::default())
        .await
        .expect("reply address exists");
    let answer = BasicProperties::default()
        .with_correlation_id(request.properties.correlation_id().clone().unwrap());
    publish(&server, "", reply_to.as_str(), "42", answer).await;
    request.ack(BasicAckOptions::default()).await.unwrap();

    let reply = next(&mut replies).await;
    assert_eq!(reply.data, b"42");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str()),
        Some("c-42")
    );
    // A consumer that acks is refused.
    let acking = channel(&client_conn).await;
    let err = acking
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "x".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        expect_code(err, 406),
        "PRECONDITION_FAILED - reply consumer cannot acknowledge"
    );
}
