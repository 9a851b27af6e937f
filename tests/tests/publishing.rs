//! Publisher confirms, mandatory returns, transactions, `immediate` — with lapin.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::Confirmation;
use lapin::{BasicProperties, ExchangeKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirms_ack_routed_and_unroutable_publishes() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare(
        "confirmed".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    for i in 0..500u32 {
        let key = if i % 2 == 0 { "confirmed" } else { "nowhere" };
        pending.push(
            ch.basic_publish(
                "".into(),
                key.into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert!(matches!(p.await.unwrap(), Confirmation::Ack(None)));
    }
    let q = ch
        .queue_declare(
            "confirmed".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mandatory_unroutable_is_returned_with_312() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "ret".into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let props = BasicProperties::default()
        .with_message_id("m-1".into())
        .with_content_type("text/plain".into());
    let confirm = ch
        .basic_publish(
            "ret".into(),
            "nobody".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"back",
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let Confirmation::Ack(Some(returned)) = confirm else {
        panic!("expected an ack carrying the returned message, got {confirm:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "ret");
    assert_eq!(returned.delivery.routing_key.as_str(), "nobody");
    assert_eq!(returned.delivery.data, b"back");
    assert_eq!(
        returned
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m-1")
    );
    // Not mandatory: dropped silently, still confirmed.
    let confirm = ch
        .basic_publish(
            "ret".into(),
            "nobody".into(),
            BasicPublishOptions::default(),
            b"gone",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(matches!(confirm, Confirmation::Ack(None)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_missing_or_internal_exchange_closes_the_channel() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    for (exchange, code, text) in [
        (
            "missing",
            404,
            "NOT_FOUND - no exchange 'missing' in vhost '/'",
        ),
        (
            "inner",
            403,
            "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'",
        ),
    ] {
        let setup = channel(&conn).await;
        let internal = ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        };
        setup
            .exchange_declare(
                "inner".into(),
                ExchangeKind::Fanout,
                internal,
                FieldTable::default(),
            )
            .await
            .unwrap();
        let ch = channel(&conn).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        // The pending confirm fails with the channel.close that the publish caused.
        let confirm = ch
            .basic_publish(
                exchange.into(),
                "k".into(),
                BasicPublishOptions::default(),
                b"",
                BasicProperties::default(),
            )
            .await
            .unwrap();
        assert_eq!(expect_code(confirm.await, code), text);
    }
    assert!(
        conn.status().connected(),
        "channel errors leave the connection up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn immediate_flag_is_refused_with_540() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    // The 540 arrives as connection.close: the next call may fail with it, or (when lapin has
    // already handled the close) with "channel closing"; the connection's error says which code.
    let mut events = Box::pin(conn.events_listener());
    let ch = channel(&conn).await;
    let _ = ch
        .basic_publish(
            "".into(),
            "q".into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"",
            BasicProperties::default(),
        )
        .await;
    let err = ch
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    let mut code = reply_code(&err);
    while code.is_none() {
        use futures_lite::StreamExt as _;
        match tokio::time::timeout(std::time::Duration::from_secs(5), events.next()).await {
            Ok(Some(lapin::Event::Error(e))) => code = reply_code(&e),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    assert_eq!(code, Some(540), "{err:?}");
    assert!(!conn.status().connected(), "540 closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_and_rollback() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "txq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.tx_select().await.unwrap();
    ch.basic_publish(
        "".into(),
        "txq".into(),
        BasicPublishOptions::default(),
        b"a",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    assert_eq!(
        ch.queue_declare("txq".into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count(),
        0
    );
    ch.tx_commit().await.unwrap();
    assert_eq!(
        ch.queue_declare("txq".into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count(),
        1
    );
    ch.basic_publish(
        "".into(),
        "txq".into(),
        BasicPublishOptions::default(),
        b"b",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    ch.tx_rollback().await.unwrap();
    assert_eq!(
        ch.queue_declare("txq".into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count(),
        1
    );
    // An ack inside a transaction takes effect at commit.
    let m = ch
        .basic_get("txq".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
    ch.tx_rollback().await.unwrap();
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let again = ch
        .basic_get("txq".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("rolled-back ack leaves it unacked");
    assert!(again.delivery.redelivered);
    // confirm.select on a transactional channel is refused.
    expect_code(
        ch.confirm_select(ConfirmSelectOptions::default()).await,
        406,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_flow_like_rabbitmq() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    assert!(ch
        .channel_flow(ChannelFlowOptions { active: true })
        .await
        .unwrap());
    // RabbitMQ refuses active=false with 540 (amqp091-go's suite depends on it).
    let err = ch
        .channel_flow(ChannelFlowOptions { active: false })
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(540), "{err:?}");
    assert_eq!(reply_text(&err), "NOT_IMPLEMENTED - active=false");
}
