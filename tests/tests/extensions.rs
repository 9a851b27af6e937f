//! RabbitMQ extensions over the wire with lapin: TTL, dead-lettering, length limits, priorities,
//! delivery limit, single active consumer, consumer priorities, alternate exchange, CC/BCC, argument
//! validation. Reference pages are named per test (RabbitMQ docs/*.md).

mod common;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn declare(ch: &Channel, name: &str, args: FieldTable) {
    ch.queue_declare(name.into(), QueueDeclareOptions::default(), args)
        .await
        .expect("declare");
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &str, props: BasicProperties) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        props,
    )
    .await
    .expect("publish");
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
}

/// Polls `queue` until a message arrives (dead-lettering and expiry are asynchronous).
fn header<'a>(m: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    m.properties.headers().as_ref()?.inner().get(key)
}

fn x_death(m: &lapin::message::Delivery) -> Vec<FieldTable> {
    match header(m, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .filter_map(|v| match v {
                AMQPValue::FieldTable(t) => Some(t.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: Option<&AMQPValue>) -> String {
    match v {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        other => format!("{other:?}"),
    }
}

fn body(m: &lapin::message::BasicGetMessage) -> String {
    String::from_utf8_lossy(&m.delivery.data).into_owned()
}

async fn setup(broker: &TestBroker) -> (lapin::Connection, Channel) {
    let conn = connect(broker).await;
    let ch = channel(&conn).await;
    (conn, ch)
}

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

/// docs/maxlength: drop-head (dead-lettered with reason maxlen), reject-publish (confirm nack),
/// reject-publish-dlx, and the byte limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_limits_and_overflow_modes() {
    let broker = start_broker().await;
    let (_c, ch) = setup(&broker).await;
    declare(&ch, "overflowed", FieldTable::default()).await;
    let dl = |extra: &[(&str, AMQPValue)]| {
        let mut v = vec![
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("overflowed")),
        ];
        v.extend(extra.iter().cloned());
        table(&v)
    };
    declare(&ch, "head", dl(&[("x-max-length", AMQPValue::LongInt(2))])).await;
    for b in ["1", "2", "3"] {
        publish(&ch, "", "head", b, BasicProperties::default()).await;
    }
    let dropped = wait_get(&ch, "overflowed", true).await;
    assert_eq!(body(&dropped), "1");
    assert_eq!(
        text(x_death(&dropped.delivery)[0].inner().get("reason")),
        "maxlen"
    );
    assert_eq!(body(&get(&ch, "head").await.unwrap()), "2");
    assert_eq!(body(&get(&ch, "head").await.unwrap()), "3");

    let confirm_ch = channel(&_c).await;
    confirm_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(
        &confirm_ch,
        "reject",
        dl(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    declare(
        &confirm_ch,
        "reject-dlx",
        dl(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
        ]),
    )
    .await;
    for q in ["reject", "reject-dlx"] {
        let first = confirm_ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                b"kept",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(first, Confirmation::Ack(None)), "{q}: {first:?}");
        let second = confirm_ch
            .basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                b"refused",
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(matches!(second, Confirmation::Nack(_)), "{q}: {second:?}");
    }
    // Only reject-publish-dlx dead-letters the refused message.
    let m = wait_get(&ch, "overflowed", true).await;
    assert_eq!(body(&m), "refused");
    assert_eq!(
        text(x_death(&m.delivery)[0].inner().get("queue")),
        "reject-dlx"
    );
    assert!(get(&ch, "overflowed").await.is_none());

    declare(
        &ch,
        "bytes",
        table(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    for b in ["12345", "67890", "abcde"] {
        publish(&ch, "", "bytes", b, BasicProperties::default()).await;
    }
    assert_eq!(body(&get(&ch, "bytes").await.unwrap()), "67890");
    assert_eq!(body(&get(&ch, "bytes").await.unwrap()), "abcde");
}

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

/// docs/queues.md + rabbit_amqqueue: bad arguments get 406 with RabbitMQ's texts; quorum and stream
/// queues are refused, never silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_queue_arguments_are_406() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let cases: Vec<(&str, AMQPValue, &str)> = vec![
        (
            "x-message-ttl",
            AMQPValue::LongInt(-1),
            "{value_negative,-1}",
        ),
        ("x-max-priority", AMQPValue::LongInt(0), "{value_zero,0}"),
        (
            "x-max-priority",
            AMQPValue::LongInt(256),
            "{max_value_exceeded,256}",
        ),
        ("x-overflow", s("drop-everything"), "invalid_overflow"),
        (
            "x-queue-type",
            s("quorum"),
            "queue type 'quorum' is not supported by Warren; use 'classic'",
        ),
        (
            "x-queue-type",
            s("stream"),
            "queue type 'stream' is not supported by Warren; use 'classic'",
        ),
        (
            "x-queue-type",
            s("fancy"),
            "\"unsupported queue type 'fancy'\"",
        ),
        ("x-max-length", s("5"), "\"expected integer, got longstr\""),
        ("x-expires", AMQPValue::LongInt(0), "{value_zero,0}"),
    ];
    for (key, value, detail) in cases {
        let ch = channel(&conn).await;
        let text = expect_code(
            ch.queue_declare(
                "bad-args".into(),
                QueueDeclareOptions::default(),
                table(&[(key, value)]),
            )
            .await,
            406,
        );
        assert_eq!(text, format!("PRECONDITION_FAILED - invalid arg '{key}' for queue 'bad-args' in vhost '/': {detail}"));
    }
    let ch = channel(&conn).await;
    let text = expect_code(
        ch.queue_declare(
            "bad-args".into(),
            QueueDeclareOptions::default(),
            table(&[("x-dead-letter-exchange", AMQPValue::LongInt(5))]),
        )
        .await,
        406,
    );
    assert_eq!(text, "PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'bad-args' in vhost '/'");
    let ch = channel(&conn).await;
    declare(&ch, "classic-q", table(&[("x-queue-type", s("classic"))])).await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    expect_code(
        ch.queue_declare("bad-args".into(), passive, FieldTable::default())
            .await,
        404,
    );
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
