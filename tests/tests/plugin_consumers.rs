//! Consumer-side plugins with lapin: the `match` filter per consumer (`x-filter`) and the
//! `idempotency-key` plugin per queue (`x-idempotency`), built from `plugins/` as real components.

mod common;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Consumer};
use warren::config::Config;
use warren_tests::plugins;

fn plugin_dir(name: &str) -> PluginDir {
    PluginDir::with(
        name,
        &[
            (plugins::MATCH_FILTER, "match.wasm"),
            (plugins::IDEMPOTENCY_KEY, "idempotency.wasm"),
        ],
    )
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn declare(ch: &Channel, queue: &str, arguments: FieldTable) {
    ch.queue_declare(queue.into(), QueueDeclareOptions::default(), arguments)
        .await
        .expect("queue.declare");
}

async fn publish(ch: &Channel, queue: &str, body: &str, properties: BasicProperties) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        properties,
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
}

fn region(r: &str) -> BasicProperties {
    BasicProperties::default().with_headers(table(&[("region", text(r))]))
}

async fn consume(ch: &Channel, queue: &str, tag: &str, arguments: FieldTable) -> Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions::default(),
        arguments,
    )
    .await
    .expect("basic.consume")
}

fn filter_on(header: &str, value: &str) -> FieldTable {
    table(&[
        ("x-filter", text("match")),
        (
            "x-filter-args",
            AMQPValue::FieldTable(table(&[(
                "headers",
                AMQPValue::FieldTable(table(&[(header, text(value))])),
            )])),
        ),
    ])
}

/// Takes deliveries until none arrives for 300 ms; acks each; returns the bodies.
async fn drain(consumer: &mut Consumer) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(300),
            futures_lite::StreamExt::next(consumer),
        )
        .await
        {
            Ok(Some(Ok(d))) => {
                got.push(String::from_utf8_lossy(&d.data).into_owned());
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
            Ok(other) => panic!("consumer ended: {other:?}"),
            Err(_) => return got,
        }
    }
}

#[tokio::test]
async fn filters_give_each_consumer_exactly_its_messages() {
    let dir = plugin_dir("filters");
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(&ch, "orders", FieldTable::default()).await;
    for i in 0..30 {
        let r = ["eu", "us", "asia"][i % 3];
        publish(&ch, "orders", &format!("{r}-{i}"), region(r)).await;
    }
    let c_eu = channel(&conn).await;
    let c_us = channel(&conn).await;
    let mut eu = consume(&c_eu, "orders", "eu", filter_on("region", "eu")).await;
    let mut us = consume(&c_us, "orders", "us", filter_on("region", "us")).await;
    let (got_eu, got_us) = tokio::join!(drain(&mut eu), drain(&mut us));
    assert_eq!(got_eu.len(), 10, "{got_eu:?}");
    assert!(got_eu.iter().all(|m| m.starts_with("eu-")), "{got_eu:?}");
    assert_eq!(got_us.len(), 10, "{got_us:?}");
    assert!(got_us.iter().all(|m| m.starts_with("us-")), "{got_us:?}");
    // In publish order within each consumer.
    let order: Vec<usize> = got_eu
        .iter()
        .map(|m| m[3..].parse().expect("index"))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Skipped messages stay in the queue for others; an unfiltered consumer gets them.
    assert_eq!(message_count(&ch, "orders").await, 10);
    let c_all = channel(&conn).await;
    let mut all = consume(&c_all, "orders", "all", FieldTable::default()).await;
    let rest = drain(&mut all).await;
    assert_eq!(rest.len(), 10);
    assert!(rest.iter().all(|m| m.starts_with("asia-")), "{rest:?}");

    c_all
        .basic_cancel("all".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    // New messages flow to the filtered consumers as they arrive.
    publish(&ch, "orders", "us-late", region("us")).await;
    publish(&ch, "orders", "eu-late", region("eu")).await;
    assert_eq!(drain(&mut us).await, ["us-late"]);
    assert_eq!(drain(&mut eu).await, ["eu-late"]);
}

#[tokio::test]
async fn filter_properties_reject_and_bad_arguments() {
    let dir = plugin_dir("filter-errors");
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(&ch, "dead", FieldTable::default()).await;
    declare(
        &ch,
        "jobs",
        table(&[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("dead")),
        ]),
    )
    .await;
    publish(
        &ch,
        "jobs",
        "json",
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await;
    publish(
        &ch,
        "jobs",
        "xml",
        BasicProperties::default().with_content_type("application/xml".into()),
    )
    .await;
    // A property filter that rejects what does not match: the XML job is dead-lettered.
    let args = table(&[
        ("x-filter", text("match")),
        (
            "x-filter-args",
            AMQPValue::FieldTable(table(&[
                (
                    "properties",
                    AMQPValue::FieldTable(table(&[("content-type", text("application/json"))])),
                ),
                ("on-mismatch", text("reject")),
            ])),
        ),
    ]);
    let cc = channel(&conn).await;
    let mut json_only = consume(&cc, "jobs", "json", args).await;
    assert_eq!(drain(&mut json_only).await, ["json"]);
    let dead = wait_get(&ch, "dead", true).await;
    assert_eq!(dead.delivery.data, b"xml");
    let death = dead
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert_eq!(death, Some(text("rejected")));

    // Unknown filter plugin: 404 naming it.
    let c404 = channel(&conn).await;
    let reason = expect_code(
        c404.basic_consume(
            "jobs".into(),
            "nope".into(),
            BasicConsumeOptions::default(),
            table(&[("x-filter", text("no-such-filter"))]),
        )
        .await,
        404,
    );
    assert!(reason.contains("no-such-filter"), "{reason}");
    // Configuration the plugin refuses: 406 with its reason.
    let c406 = channel(&conn).await;
    let reason = expect_code(
        c406.basic_consume(
            "jobs".into(),
            "bad".into(),
            BasicConsumeOptions::default(),
            table(&[("x-filter", text("match"))]),
        )
        .await,
        406,
    );
    assert!(reason.contains("headers"), "{reason}");
}

fn with_id(id: &str) -> BasicProperties {
    BasicProperties::default().with_message_id(id.into())
}

fn idempotent(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = table(&[("x-idempotency", text("idempotency-key"))]);
    for (k, v) in extra {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

#[tokio::test]
async fn idempotency_delivers_each_message_id_once() {
    let dir = plugin_dir("idem");
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(&ch, "payments", idempotent(&[])).await;
    let cc = channel(&conn).await;
    cc.basic_qos(50, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume(&cc, "payments", "c", FieldTable::default()).await;
    let publisher = async {
        for i in 0..1000 {
            let id = format!("pay-{}", i % 500);
            publish(&ch, "payments", &id, with_id(&id)).await;
        }
    };
    let (_, got) = tokio::join!(publisher, async {
        // Keep consuming (and acking) until the publisher is done and the queue is quiet.
        let mut got = Vec::new();
        loop {
            let batch = drain(&mut consumer).await;
            if batch.is_empty() && got.len() >= 500 {
                return got;
            }
            got.extend(batch);
        }
    });
    let mut ids = got.clone();
    ids.sort();
    ids.dedup();
    assert_eq!(got.len(), 500, "1000 messages with 500 ids deliver 500");
    assert_eq!(ids.len(), 500);
    assert_eq!(message_count(&ch, "payments").await, 0);
    assert_eq!(
        b.broker
            .vhost("/")
            .expect("vhost")
            .queue("payments", 0)
            .expect("queue")
            .idempotency_keys(),
        500
    );
}

#[tokio::test]
async fn idempotency_waits_for_the_ack_and_lets_requeues_through() {
    let dir = plugin_dir("idem-wait");
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(&ch, "dead", FieldTable::default()).await;
    declare(
        &ch,
        "q",
        idempotent(&[
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text("dead")),
        ]),
    )
    .await;
    let cc = channel(&conn).await;
    let mut consumer = consume(&cc, "q", "c", FieldTable::default()).await;

    // A nacked-with-requeue message is delivered again (its key was never acked).
    publish(&ch, "q", "a1", with_id("a")).await;
    let first = next(&mut consumer).await;
    assert_eq!(first.data, b"a1");
    first
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    let again = next(&mut consumer).await;
    assert_eq!(again.data, b"a1");
    assert!(again.redelivered);

    // While "a" is unacked, a duplicate waits (and does not block other keys) …
    publish(&ch, "q", "a2", with_id("a")).await;
    publish(&ch, "q", "b1", with_id("b")).await;
    let b1 = next(&mut consumer).await;
    assert_eq!(b1.data, b"b1");
    assert_eq!(message_count(&ch, "q").await, 1, "the duplicate waits");
    // … and is dropped (dead-lettered as `duplicate`) once the first is acked.
    again.ack(BasicAckOptions::default()).await.expect("ack");
    b1.ack(BasicAckOptions::default()).await.expect("ack");
    expect_silence(&mut consumer, Duration::from_millis(300)).await;
    assert_eq!(message_count(&ch, "q").await, 0);
    let dead = wait_get(&ch, "dead", true).await;
    assert_eq!(dead.delivery.data, b"a2");
    let reason = dead
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-first-death-reason").cloned());
    assert_eq!(reason, Some(text("duplicate")));

    // Messages without a key are always delivered.
    publish(&ch, "q", "no-id", BasicProperties::default()).await;
    publish(&ch, "q", "no-id", BasicProperties::default()).await;
    let got = drain(&mut consumer).await;
    assert_eq!(got, ["no-id", "no-id"]);

    // basic.get applies the same record.
    cc.basic_cancel("c".into(), BasicCancelOptions::default())
        .await
        .expect("cancel");
    publish(&ch, "q", "b2", with_id("b")).await;
    publish(&ch, "q", "c1", with_id("c")).await;
    let got = wait_get(&ch, "q", true).await;
    assert_eq!(got.delivery.data, b"c1");
}

#[tokio::test]
async fn idempotency_by_header_and_body_hash_and_errors() {
    let dir = plugin_dir("idem-config");
    let b = start_broker_with(dir.config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    declare(
        &ch,
        "by-header",
        idempotent(&[(
            "x-idempotency-args",
            AMQPValue::FieldTable(table(&[("header", text("order"))])),
        )]),
    )
    .await;
    declare(
        &ch,
        "by-body",
        idempotent(&[(
            "x-idempotency-args",
            AMQPValue::FieldTable(table(&[("body-hash", AMQPValue::Boolean(true))])),
        )]),
    )
    .await;
    for (body, order) in [("x", "1"), ("y", "1"), ("z", "2")] {
        let props = BasicProperties::default().with_headers(table(&[("order", text(order))]));
        publish(&ch, "by-header", body, props).await;
    }
    for body in ["same", "same", "other"] {
        publish(&ch, "by-body", body, BasicProperties::default()).await;
    }
    let c1 = channel(&conn).await;
    let mut h = consume(&c1, "by-header", "h", FieldTable::default()).await;
    assert_eq!(drain(&mut h).await, ["x", "z"]);
    let c2 = channel(&conn).await;
    let mut body = consume(&c2, "by-body", "b", FieldTable::default()).await;
    assert_eq!(drain(&mut body).await, ["same", "other"]);

    // Unknown plugin: 404 naming it; refused configuration: 406.
    let reason = expect_code(
        ch.queue_declare(
            "nope".into(),
            QueueDeclareOptions::default(),
            table(&[("x-idempotency", text("no-such-plugin"))]),
        )
        .await,
        404,
    );
    assert!(reason.contains("no-such-plugin"), "{reason}");
    let ch = channel(&conn).await;
    expect_code(
        ch.queue_declare(
            "bad".into(),
            QueueDeclareOptions::default(),
            idempotent(&[(
                "x-idempotency-args",
                AMQPValue::FieldTable(table(&[("header", AMQPValue::Boolean(true))])),
            )]),
        )
        .await,
        406,
    );
}

#[tokio::test]
async fn idempotency_keys_of_durable_queues_survive_a_restart() {
    let dir = plugin_dir("idem-durable");
    let data = std::env::temp_dir().join(format!(
        "warren-idem-data-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let config = || Config {
        data_dir: Some(data.clone()),
        ..dir.config()
    };
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let b = start_broker_with(config()).await;
    {
        let conn = connect(&b).await;
        let ch = channel(&conn).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        ch.queue_declare("ledger".into(), durable, idempotent(&[]))
            .await
            .expect("declare");
        for id in ["t1", "t2"] {
            publish(&ch, "ledger", id, with_id(id)).await;
        }
        let cc = channel(&conn).await;
        let mut consumer = consume(&cc, "ledger", "c", FieldTable::default()).await;
        assert_eq!(drain(&mut consumer).await, ["t1", "t2"]);
        conn.close(200, "bye".into()).await.expect("close");
    }
    b.stop().await;

    let b = start_broker_with(config()).await;
    let conn = connect(&b).await;
    let ch = channel(&conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    ch.queue_declare("ledger".into(), durable, idempotent(&[]))
        .await
        .expect("redeclare");
    for id in ["t1", "t2", "t3"] {
        publish(&ch, "ledger", id, with_id(id)).await;
    }
    let cc = channel(&conn).await;
    let mut consumer = consume(&cc, "ledger", "c", FieldTable::default()).await;
    assert_eq!(
        drain(&mut consumer).await,
        ["t3"],
        "keys acked before the restart are still recorded"
    );
    conn.close(200, "bye".into()).await.expect("close");
    b.stop().await;
    let _ = std::fs::remove_dir_all(&data);
}
