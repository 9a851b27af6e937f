//! Routing through the four standard exchange types, the default exchange and exchange-to-exchange
//! bindings, over the wire with lapin. One assertion body runs over a table of cases.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};

fn table(entries: &[(&str, &str)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), AMQPValue::LongString(LongString::from(*v)));
    }
    t
}

struct Case {
    kind: ExchangeKind,
    /// (queue, binding key, binding arguments)
    bindings: Vec<(&'static str, &'static str, FieldTable)>,
    routing_key: &'static str,
    headers: Option<FieldTable>,
    expected: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let none = FieldTable::default;
    let c = |kind, bindings, routing_key, headers, expected| Case {
        kind,
        bindings,
        routing_key,
        headers,
        expected,
    };
    vec![
        c(
            ExchangeKind::Direct,
            vec![("q1", "k", none()), ("q2", "other", none())],
            "k",
            None,
            &["q1"],
        ),
        c(
            ExchangeKind::Direct,
            vec![("q1", "k", none()), ("q2", "k", none())],
            "k",
            None,
            &["q1", "q2"],
        ),
        c(
            ExchangeKind::Direct,
            vec![("q1", "k", none())],
            "nomatch",
            None,
            &[],
        ),
        c(
            ExchangeKind::Fanout,
            vec![("q1", "a", none()), ("q2", "b", none())],
            "zzz",
            None,
            &["q1", "q2"],
        ),
        c(
            ExchangeKind::Topic,
            vec![
                ("q1", "*.orange.*", none()),
                ("q2", "*.*.rabbit", none()),
                ("q2", "lazy.#", none()),
            ],
            "quick.orange.rabbit",
            None,
            &["q1", "q2"],
        ),
        c(
            ExchangeKind::Topic,
            vec![
                ("q1", "*.orange.*", none()),
                ("q2", "*.*.rabbit", none()),
                ("q2", "lazy.#", none()),
            ],
            "lazy.pink.rabbit",
            None,
            &["q2"],
        ),
        c(
            ExchangeKind::Topic,
            vec![("q1", "*.orange.*", none()), ("q2", "lazy.#", none())],
            "quick.brown.fox",
            None,
            &[],
        ),
        c(
            ExchangeKind::Topic,
            vec![("q1", "#", none())],
            "",
            None,
            &["q1"],
        ),
        c(
            ExchangeKind::Topic,
            vec![("q1", "a.#.z", none())],
            "a.z",
            None,
            &["q1"],
        ),
        c(
            ExchangeKind::Topic,
            vec![("q1", "*", none())],
            "",
            None,
            &[],
        ),
        c(
            ExchangeKind::Headers,
            vec![("q1", "", table(&[("format", "pdf"), ("type", "report")]))],
            "",
            Some(table(&[("format", "pdf"), ("type", "report")])),
            &["q1"],
        ),
        c(
            ExchangeKind::Headers,
            vec![("q1", "", table(&[("format", "pdf"), ("type", "report")]))],
            "",
            Some(table(&[("format", "pdf")])),
            &[],
        ),
        c(
            ExchangeKind::Headers,
            vec![(
                "q1",
                "",
                table(&[("x-match", "any"), ("format", "pdf"), ("type", "report")]),
            )],
            "",
            Some(table(&[("format", "pdf")])),
            &["q1"],
        ),
        c(
            ExchangeKind::Headers,
            vec![(
                "q1",
                "",
                table(&[("x-match", "all-with-x"), ("x-tag", "1")]),
            )],
            "",
            Some(table(&[("x-tag", "1")])),
            &["q1"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_like_rabbitmq() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for (i, case) in cases().into_iter().enumerate() {
        let x = format!("x{i}");
        ch.exchange_declare(
            x.as_str().into(),
            case.kind.clone(),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
        let mut queues: Vec<&str> = case.bindings.iter().map(|b| b.0).collect();
        queues.dedup();
        for q in &queues {
            let q = format!("{x}-{q}");
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("declare queue");
        }
        for (q, key, args) in &case.bindings {
            let q = format!("{x}-{q}");
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                (*key).into(),
                QueueBindOptions::default(),
                args.clone(),
            )
            .await
            .expect("bind");
        }
        let mut props = BasicProperties::default();
        if let Some(h) = &case.headers {
            props = props.with_headers(h.clone());
        }
        ch.basic_publish(
            x.as_str().into(),
            case.routing_key.into(),
            BasicPublishOptions::default(),
            b"m",
            props,
        )
        .await
        .expect("publish");
        let mut got = Vec::new();
        for q in &queues {
            let qname = format!("{x}-{q}");
            // The publish is processed before the get on the same channel; exactly one copy per queue.
            if ch
                .basic_get(qname.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .expect("get")
                .is_some()
            {
                got.push(*q);
                assert!(ch
                    .basic_get(qname.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                    .expect("get")
                    .is_none());
            }
        }
        assert_eq!(
            got, case.expected,
            "case {i}: {:?} key {:?}",
            case.kind, case.routing_key
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_exchange_routes_by_queue_name_and_refuses_binding() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "named".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "".into(),
        "named".into(),
        BasicPublishOptions::default(),
        b"hi",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = ch
        .basic_get("named".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("message");
    assert_eq!(got.delivery.data, b"hi");
    assert_eq!(got.delivery.exchange.as_str(), "");
    assert_eq!(got.delivery.routing_key.as_str(), "named");
    let text = expect_code(
        ch.queue_bind(
            "named".into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
    let ch = channel(&conn).await;
    expect_code(
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default())
            .await,
        403,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_to_exchange_bindings_and_cycles() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let opts = ExchangeDeclareOptions::default();
    ch.exchange_declare(
        "src".into(),
        ExchangeKind::Topic,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "mid".into(),
        ExchangeKind::Fanout,
        opts,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "mid".into(),
        "src".into(),
        "a.*".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A cycle back to the source must not loop or duplicate.
    ch.exchange_bind(
        "src".into(),
        "mid".into(),
        "".into(),
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "e2e".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "e2e".into(),
        "mid".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "e2e".into(),
        "src".into(),
        "a.b".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    for key in ["a.b", "x.y"] {
        ch.basic_publish(
            "src".into(),
            key.into(),
            BasicPublishOptions::default(),
            key.as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let first = ch
        .basic_get("e2e".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("a.b routed");
    assert_eq!(first.delivery.data, b"a.b");
    assert!(
        ch.basic_get("e2e".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .is_none(),
        "one copy only, x.y unrouted"
    );
    ch.exchange_unbind(
        "mid".into(),
        "src".into(),
        "a.*".into(),
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.basic_publish(
        "src".into(),
        "a.c".into(),
        BasicPublishOptions::default(),
        b"",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    assert!(ch
        .basic_get("e2e".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    expect_code(
        ch.exchange_bind(
            "nope".into(),
            "src".into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await,
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predeclared_exchanges_exist_and_are_protected() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.exchange_declare(name.into(), kind.clone(), passive, FieldTable::default())
            .await
            .expect(name);
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await
            .expect("equivalent redeclare is fine");
    }
    let text = expect_code(
        ch.exchange_declare(
            "amq.custom".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - exchange name 'amq.custom' contains reserved prefix 'amq.*'"
    );
    let ch = channel(&conn).await;
    expect_code(
        ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default())
            .await,
        403,
    );
}
