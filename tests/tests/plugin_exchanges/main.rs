//! Plugin exchange types with lapin: `x-consistent-hash` and `x-random` built from `plugins/` as real
//! components, loaded from a plugin directory; bad declares and bindings; removal and return of a
//! plugin file; faulty plugins (endless loop, panic, 1 GiB allocation) contained with the failure
//! policy; plugin exchanges across a restart.

mod batches;
#[path = "../common/mod.rs"]
mod common;
mod durable;
mod failures;
mod types;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use warren::config::Config;
use warren_tests::plugins;

fn kind(name: &str) -> ExchangeKind {
    ExchangeKind::Custom(name.into())
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

async fn declare_exchange(ch: &Channel, name: &str, kind_name: &str, arguments: FieldTable) {
    ch.exchange_declare(
        name.into(),
        kind(kind_name),
        ExchangeDeclareOptions::default(),
        arguments,
    )
    .await
    .expect("exchange.declare");
}

/// Declares `queues` (exclusive to nothing; auto-named by the caller) and binds each with `key`.
async fn bind_queues(ch: &Channel, exchange: &str, queues: &[&str], key: &str) {
    for q in queues {
        ch.queue_declare(
            (*q).into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
        ch.queue_bind(
            (*q).into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
    }
}

/// Waits until the queues hold `total` messages in all; returns each one's count.
async fn counts_when_total(ch: &Channel, queues: &[&str], total: u32) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut counts = Vec::new();
        for q in queues {
            counts.push(message_count(ch, q).await);
        }
        if counts.iter().sum::<u32>() >= total || Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn random_key() -> String {
    // UUID-shaped random keys, as in the RabbitMQ reports of uneven spread.
    let b: [u8; 16] = rand::random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Publishes `n` messages with random routing keys and returns each queue's share.
async fn spread(ch: &Channel, exchange: &str, queues: &[&str], n: u32) -> Vec<u32> {
    for _ in 0..n {
        ch.basic_publish(
            exchange.into(),
            random_key().as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        )
        .await
        .expect("publish");
    }
    let counts = counts_when_total(ch, queues, n).await;
    assert_eq!(
        counts.iter().sum::<u32>(),
        n,
        "every message routed to exactly one queue"
    );
    counts
}

/// Publishes with confirms on a fresh channel and returns whether the broker acked.
async fn confirmed(ch: &Channel, exchange: &str, key: &str, mandatory: bool) -> bool {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            b"payload",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    confirm.is_ack()
}

async fn confirm_channel(conn: &lapin::Connection) -> Channel {
    let ch = channel(conn).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    ch
}

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "warren-plugin-data-{}-{name}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

async fn restart(dir: &PluginDir, data: &Path) -> TestBroker {
    let config = Config {
        data_dir: Some(data.to_path_buf()),
        ..dir.config()
    };
    start_broker_with(config).await
}

/// basic.publish + header + body frames for `body` to `exchange` under `key` on channel 1.
fn publish_frames(exchange: &str, key: &str, body: &[u8]) -> Vec<u8> {
    use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
    use amq_protocol::protocol::{basic, AMQPClass};
    let mut out = raw::encode(&AMQPFrame::Method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: exchange.into(),
            routing_key: key.into(),
            ..Default::default()
        })),
    ));
    out.extend(raw::encode(&AMQPFrame::Header(
        1,
        AMQPContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: Default::default(),
        },
    )));
    out.extend(raw::encode(&AMQPFrame::Body(1, body.to_vec())));
    out
}

/// A raw connection with channel 1 in confirm mode.
async fn raw_confirm_channel(b: &TestBroker) -> raw::Raw {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{confirm, AMQPClass};
    let mut r = raw::Raw::opened(b).await;
    r.open_channel(1).await;
    r.method(
        1,
        AMQPClass::Confirm(confirm::AMQPMethod::Select(Default::default())),
    )
    .await;
    assert!(matches!(
        r.recv().await,
        Some(AMQPFrame::Method(1, AMQPClass::Confirm(_)))
    ));
    r
}

/// Reads until the basic.ack that covers delivery tag `upto`; no nack may come first.
async fn acked_upto(r: &mut raw::Raw, upto: u64) {
    use amq_protocol::frame::AMQPFrame;
    use amq_protocol::protocol::{basic, AMQPClass};
    loop {
        match r.recv().await {
            Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(a)))) => {
                if a.delivery_tag >= upto {
                    return;
                }
            }
            other => panic!("expected basic.ack up to {upto}, got {other:?}"),
        }
    }
}

/// Every message left in `queue`, by basic.get, as body strings in queue order.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut bodies = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        bodies.push(String::from_utf8(m.delivery.data.clone()).expect("utf-8"));
    }
    bodies
}
