//! exchange.* and queue.* semantics and their errors, with RabbitMQ's reply codes and texts — lapin.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_declare_semantics() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"), "{}", q.name());
    ch.queue_declare(
        "durable-q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "durable-q".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("equivalent");
    let text = expect_code(
        ch.queue_declare(
            "durable-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        406,
    );
    assert_eq!(text, "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'durable-q' in vhost '/': received 'false' but current is 'true'");
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_declare("nope".into(), passive(), FieldTable::default())
            .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no queue 'nope' in vhost '/'");
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_declare(
            "amq.mine".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'"
    );
    let ch = channel(&conn).await;
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(10));
    ch.queue_declare("args-q".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let text = expect_code(
        ch.queue_declare(
            "args-q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        406,
    );
    // Checked against RabbitMQ 3.10.8: the argument's value and type, or `none`.
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'args-q' in vhost '/': \
         received none but current is the value '10' of type 'signedint'"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_and_conditional_delete() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "pd".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for _ in 0..3 {
        ch.basic_publish(
            "".into(),
            "pd".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let text = expect_code(
        ch.queue_delete(
            "pd".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await,
        406,
    );
    assert_eq!(
        text,
        "PRECONDITION_FAILED - queue 'pd' in vhost '/' not empty"
    );
    let ch = channel(&conn).await;
    assert_eq!(
        ch.queue_purge("pd".into(), QueuePurgeOptions::default())
            .await
            .unwrap(),
        3
    );
    let consumer_ch = channel(&conn).await;
    let _c = consumer_ch
        .basic_consume(
            "pd".into(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let text = expect_code(
        ch.queue_delete(
            "pd".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await,
        406,
    );
    assert_eq!(text, "PRECONDITION_FAILED - queue 'pd' in vhost '/' in use");
    let ch = channel(&conn).await;
    ch.basic_publish(
        "".into(),
        "pd".into(),
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    ch.queue_delete("pd".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    expect_code(
        ch.queue_declare("pd".into(), passive(), FieldTable::default())
            .await,
        404,
    );
    // Deleting a missing queue is not an error (RabbitMQ).
    let ch = channel(&conn).await;
    assert_eq!(
        ch.queue_delete("never-was".into(), QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_declare_semantics() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let opts = ExchangeDeclareOptions::default();
    ch.exchange_declare(
        "ex".into(),
        ExchangeKind::Direct,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let text = expect_code(
        ch.exchange_declare(
            "ex".into(),
            ExchangeKind::Fanout,
            opts,
            FieldTable::default(),
        )
        .await,
        406,
    );
    assert_eq!(text, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'ex' in vhost '/': received 'fanout' but current is 'direct'");
    let ch = channel(&conn).await;
    let p = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let text = expect_code(
        ch.exchange_declare(
            "nope".into(),
            ExchangeKind::Direct,
            p,
            FieldTable::default(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no exchange 'nope' in vhost '/'");
    // if-unused refuses while bound; plain delete removes; deleting a missing exchange is fine.
    let ch = channel(&conn).await;
    ch.queue_declare(
        "exq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "exq".into(),
        "ex".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let text = expect_code(
        ch.exchange_delete(
            "ex".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await,
        406,
    );
    assert_eq!(
        text,
        "PRECONDITION_FAILED - exchange 'ex' in vhost '/' in use"
    );
    let ch = channel(&conn).await;
    ch.exchange_delete("ex".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete("ex".into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    expect_code(
        ch.exchange_declare("ex".into(), ExchangeKind::Direct, p, FieldTable::default())
            .await,
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_exchange_goes_with_last_binding() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let ad = ExchangeDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "adx".into(),
        ExchangeKind::Fanout,
        ad,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "adq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "adq".into(),
        "adx".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_unbind("adq".into(), "adx".into(), "".into(), FieldTable::default())
        .await
        .unwrap();
    let p = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    expect_code(
        ch.exchange_declare("adx".into(), ExchangeKind::Fanout, p, FieldTable::default())
            .await,
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_exchange_type_closes_the_connection_with_503() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let err = ch
        .exchange_declare(
            "weird".into(),
            ExchangeKind::Custom("x-nonexistent".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(reply_code(&err), Some(503), "{err:?}");
    assert_eq!(
        reply_text(&err),
        "COMMAND_INVALID - unknown exchange type 'x-nonexistent'"
    );
    // The broker is fine for everyone else.
    let other = connect(&broker).await;
    channel(&other)
        .await
        .queue_declare(
            "alive".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_entities_in_bind() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "bq".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let text = expect_code(
        ch.queue_bind(
            "bq".into(),
            "nox".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no exchange 'nox' in vhost '/'");
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_bind(
            "noq".into(),
            "amq.direct".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no queue 'noq' in vhost '/'");
    let ch = channel(&conn).await;
    let mut bad = FieldTable::default();
    bad.insert(
        "x-match".into(),
        AMQPValue::LongString(LongString::from("sometimes")),
    );
    let text = expect_code(
        ch.queue_bind(
            "bq".into(),
            "amq.headers".into(),
            "".into(),
            QueueBindOptions::default(),
            bad,
        )
        .await,
        406,
    );
    assert_eq!(
        text,
        "PRECONDITION_FAILED - Invalid x-match field value <<\"sometimes\">>; expected all, any, all-with-x, or any-with-x"
    );
}
