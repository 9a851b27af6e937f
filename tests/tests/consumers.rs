//! Consumers, acknowledgements, prefetch, requeue, basic.get, cancel notification, exclusivity — driven
//! over the wire with lapin.

mod common;

use std::time::Duration;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::BasicProperties;

async fn publish(ch: &lapin::Channel, queue: &str, body: &str) {
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("publish");
}

async fn declare(ch: &lapin::Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
}

async fn consume(ch: &lapin::Channel, queue: &str, tag: &str, no_ack: bool) -> lapin::Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("consume")
}

fn body(d: &lapin::message::Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_between_consumers() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "rr").await;
    let mut a = consume(&ch, "rr", "a", true).await;
    let mut b = consume(&ch, "rr", "b", true).await;
    for i in 0..6 {
        publish(&ch, "rr", &i.to_string()).await;
    }
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    for _ in 0..3 {
        got_a.push(body(&next(&mut a).await));
        got_b.push(body(&next(&mut b).await));
    }
    assert_eq!(got_a, ["0", "2", "4"]);
    assert_eq!(got_b, ["1", "3", "5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_one_gives_fair_dispatch() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let slow_ch = channel(&conn).await;
    let fast_ch = channel(&conn).await;
    declare(&slow_ch, "work").await;
    for ch in [&slow_ch, &fast_ch] {
        ch.basic_qos(1, BasicQosOptions::default())
            .await
            .expect("qos");
    }
    let mut slow = consume(&slow_ch, "work", "slow", false).await;
    let mut fast = consume(&fast_ch, "work", "fast", false).await;
    for i in 0..10 {
        publish(&fast_ch, "work", &i.to_string()).await;
    }
    // The slow worker holds its first message unacked; the fast one must get all the others.
    let held = next(&mut slow).await;
    let mut fast_got = Vec::new();
    for _ in 0..9 {
        let d = next(&mut fast).await;
        fast_got.push(body(&d));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(fast_got.len(), 9);
    expect_silence(&mut slow, Duration::from_millis(200)).await;
    assert!(!fast_got.contains(&body(&held)));
    held.ack(BasicAckOptions::default()).await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_limits_unacked_and_ack_releases() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "pf").await;
    ch.basic_qos(2, BasicQosOptions::default()).await.unwrap();
    for i in 0..5 {
        publish(&ch, "pf", &i.to_string()).await;
    }
    let mut c = consume(&ch, "pf", "c", false).await;
    let d0 = next(&mut c).await;
    let d1 = next(&mut c).await;
    expect_silence(&mut c, Duration::from_millis(200)).await;
    // Ack both with one multiple ack: two more arrive.
    d1.acker
        .ack(BasicAckOptions { multiple: true })
        .await
        .unwrap();
    let _ = d0;
    let d2 = next(&mut c).await;
    let d3 = next(&mut c).await;
    assert_eq!((body(&d2), body(&d3)), ("2".into(), "3".into()));
    expect_silence(&mut c, Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_qos_limits_the_channel() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "g1").await;
    declare(&ch, "g2").await;
    ch.basic_qos(1, BasicQosOptions { global: true })
        .await
        .unwrap();
    publish(&ch, "g1", "a").await;
    publish(&ch, "g2", "b").await;
    let mut c1 = consume(&ch, "g1", "c1", false).await;
    let mut c2 = consume(&ch, "g2", "c2", false).await;
    let first = next(&mut c1).await;
    expect_silence(&mut c2, Duration::from_millis(200)).await;
    first.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(body(&next(&mut c2).await), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_requeued_in_order_when_the_channel_closes() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "requeue").await;
    for i in 0..5 {
        publish(&ch, "requeue", &i.to_string()).await;
    }
    let consumer_ch = channel(&conn).await;
    let mut c = consume(&consumer_ch, "requeue", "c", false).await;
    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(next(&mut c).await);
    }
    assert!(first.iter().all(|d| !d.redelivered));
    // Ack one in the middle; the other four come back in their original order.
    first[2].ack(BasicAckOptions::default()).await.unwrap();
    consumer_ch.close(200, "bye".into()).await.unwrap();
    let ch2 = channel(&conn).await;
    let mut c2 = consume(&ch2, "requeue", "c2", false).await;
    let mut again = Vec::new();
    for _ in 0..4 {
        let d = next(&mut c2).await;
        assert!(
            d.redelivered,
            "requeued delivery must be flagged redelivered"
        );
        again.push(body(&d));
    }
    assert_eq!(again, ["0", "1", "3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_requeued_when_the_connection_drops() {
    let broker = start_broker().await;
    let publisher = connect(&broker).await;
    let ch = channel(&publisher).await;
    declare(&ch, "conn-drop").await;
    publish(&ch, "conn-drop", "m").await;
    let consumer_conn = connect(&broker).await;
    let cch = channel(&consumer_conn).await;
    let mut c = consume(&cch, "conn-drop", "c", false).await;
    let _held = next(&mut c).await;
    consumer_conn.close(200, "bye".into()).await.unwrap();
    let got = wait_get(&ch, "conn-drop", true).await;
    assert!(got.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_reject_and_recover() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "nack").await;
    for i in 0..3 {
        publish(&ch, "nack", &i.to_string()).await;
    }
    let mut c = consume(&ch, "nack", "c", false).await;
    let d0 = next(&mut c).await;
    let d1 = next(&mut c).await;
    let d2 = next(&mut c).await;
    // reject without requeue drops; nack with requeue brings it back flagged.
    d0.reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    d1.nack(BasicNackOptions {
        requeue: true,
        multiple: false,
    })
    .await
    .unwrap();
    let again = next(&mut c).await;
    assert_eq!(body(&again), "1");
    assert!(again.redelivered);
    // recover(requeue) redelivers everything unacked.
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let mut bodies = vec![body(&next(&mut c).await), body(&next(&mut c).await)];
    bodies.sort();
    assert_eq!(bodies, ["1", "2"]);
    let _ = d2;
    ch.queue_delete("nack".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_delivery_tag_is_406() {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, AMQPClass};
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "tags").await;
    publish(&ch, "tags", "x").await;
    // The acks go over a raw socket: lapin, seeing the channel.close before it sends its next method,
    // reports only "channel closed", without the reply code.
    let mut r = raw::Raw::opened(&broker).await;
    r.open_channel(1).await;
    r.method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: "tags".into(),
            no_ack: false,
        })),
    )
    .await;
    let tag = match r.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::GetOk(ok)))) => {
            ok.delivery_tag
        }
        other => panic!("expected basic.get-ok, got {other:?}"),
    };
    let ack = AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
        delivery_tag: tag,
        multiple: false,
    }));
    r.method(1, ack.clone()).await;
    // Acking the same tag twice closes the channel with 406.
    r.method(1, ack).await;
    let (code, text) = r.expect_channel_close().await;
    assert_eq!(code, 406);
    assert_eq!(
        text,
        format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
    );
    assert_eq!(
        message_count(&ch, "tags").await,
        0,
        "the first ack took the message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_get_counts_and_empty() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "get").await;
    assert!(ch
        .basic_get("get".into(), BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    for i in 0..3 {
        publish(&ch, "get", &i.to_string()).await;
    }
    let q = ch
        .queue_declare(
            "get".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 3);
    let m = ch
        .basic_get("get".into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.message_count, 2);
    assert_eq!(m.delivery.data, b"0");
    m.delivery
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
        .unwrap();
    let again = ch
        .basic_get("get".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.delivery.data, b"0");
    assert!(again.delivery.redelivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_deliveries_and_tags_are_unique() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "cancel").await;
    let mut c = consume(&ch, "cancel", "tag", true).await;
    publish(&ch, "cancel", "1").await;
    next(&mut c).await;
    ch.basic_cancel("tag".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    publish(&ch, "cancel", "2").await;
    let q = ch
        .queue_declare(
            "cancel".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!((q.message_count(), q.consumer_count()), (1, 0));
    // A server-generated tag is returned when none is given.
    let generated = consume(&ch, "cancel", "", true).await;
    assert!(
        generated.tag().as_str().starts_with("amq.ctag-"),
        "{}",
        generated.tag()
    );
    let _c2 = consume(&ch, "cancel", "dup", true).await;
    let err = ch
        .basic_consume(
            "cancel".into(),
            "dup".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("tag reuse");
    assert_eq!(reply_code(&err), Some(530), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_delete_notifies_consumers() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "doomed").await;
    let mut c = consume(&ch, "doomed", "c", true).await;
    let other = connect(&broker).await;
    let och = channel(&other).await;
    let deleted = och
        .queue_delete("doomed".into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    // lapin ends the consumer stream when the server sends basic.cancel.
    let end = tokio::time::timeout(WAIT, futures_lite::StreamExt::next(&mut c))
        .await
        .expect("cancel notification");
    assert!(end.is_none(), "consumer should end, got {end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclusive_consumer_and_exclusive_queue() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "excl-consumer").await;
    // lapin cancels a consumer when its handle is dropped: keep it alive.
    let _only = ch
        .basic_consume(
            "excl-consumer".into(),
            "only".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = channel(&conn).await;
    let text = expect_code(
        ch2.basic_consume(
            "excl-consumer".into(),
            "second".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - queue 'excl-consumer' in vhost '/' in exclusive use"
    );

    let owner = connect(&broker).await;
    let och = channel(&owner).await;
    och.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let ch3 = channel(&conn).await;
    let text = expect_code(
        ch3.queue_declare(
            "mine".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        405,
    );
    assert!(
        text.starts_with(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'"
        ),
        "{text}"
    );
    owner.close(200, "bye".into()).await.unwrap();
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            // Each failed passive declare closes its channel: use a fresh one per attempt.
            let probe = channel(&conn).await;
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            if let Err(e) = probe
                .queue_declare("mine".into(), passive, FieldTable::default())
                .await
            {
                if reply_code(&e) == Some(404) {
                    return e;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("exclusive queue deleted with its connection");
    assert_eq!(reply_code(&gone), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delete_queue_goes_with_last_consumer() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    ch.queue_declare(
        "ad".into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _c1 = consume(&ch, "ad", "c1", true).await;
    let _c2 = consume(&ch, "ad", "c2", true).await;
    ch.basic_cancel("c1".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare("ad".into(), passive, FieldTable::default())
        .await
        .expect("still there with one consumer");
    ch.basic_cancel("c2".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    expect_code(
        ch.queue_declare("ad".into(), passive, FieldTable::default())
            .await,
        404,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_span_frames() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    declare(&ch, "big").await;
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    ch.basic_publish(
        "".into(),
        "big".into(),
        BasicPublishOptions::default(),
        &payload,
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let mut c = consume(&ch, "big", "c", true).await;
    let d = next(&mut c).await;
    assert_eq!(d.data.len(), payload.len());
    assert!(d.data == payload);
    publish(&ch, "big", "").await;
    assert_eq!(next(&mut c).await.data, b"");
}
