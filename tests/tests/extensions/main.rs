//! RabbitMQ extensions over the wire with lapin: TTL, dead-lettering, length limits, priorities,
//! delivery limit, single active consumer, consumer priorities, alternate exchange, CC/BCC, argument
//! validation. Reference pages are named per test (RabbitMQ docs/*.md). One file per feature; the
//! helpers here are shared by them.

mod arguments;
#[path = "../common/mod.rs"]
mod common;
mod consumer_features;
mod dead_letter;
mod length_limits;
mod priorities;
mod routing_features;
mod ttl;

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
