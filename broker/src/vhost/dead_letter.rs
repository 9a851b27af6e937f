//! Dead-lettering: the message a queue republishes to its dead-letter exchange, with its `x-death`
//! history, and RabbitMQ's cycle rule. Reference: RabbitMQ docs/dlx.md, `rabbit_dead_letter`.

use std::collections::BTreeMap;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};

use crate::message::{encode_properties, header_strings, rebuild_properties, Message};
use crate::queue::{DeadLetterReason, Queue};

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn text(v: Option<&AMQPValue>) -> Option<&[u8]> {
    match v? {
        AMQPValue::LongString(s) => Some(s.as_bytes()),
        AMQPValue::ShortString(s) => Some(s.as_str().as_bytes()),
        _ => None,
    }
}

/// The copy of `message` that `queue` republishes to `dlx` for `reason`: an `x-death` entry for
/// (queue, reason) is added or its count incremented and moved first; `x-first-death-*` are set once,
/// `x-last-death-*` every time; `expiration` is removed (kept as `original-expiration`). With a
/// dead-letter routing key the message carries that key and loses its `CC` header.
pub fn dead_lettered(
    message: &Message,
    queue: &Queue,
    reason: DeadLetterReason,
    dlx: &ShortString,
) -> Message {
    let mut headers: BTreeMap<ShortString, AMQPValue> = message
        .properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    let now = crate::clock::wall_ms() / 1000;
    let reason_str = reason.as_str();
    let mut deaths: Vec<AMQPValue> = match headers.get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
        _ => Vec::new(),
    };
    let existing = deaths.iter().position(|d| match d {
        AMQPValue::FieldTable(t) => {
            text(t.inner().get("queue")) == Some(queue.name.as_str().as_bytes())
                && text(t.inner().get("reason")) == Some(reason_str.as_bytes())
        }
        _ => false,
    });
    let entry = match existing {
        Some(i) => {
            let mut t = match deaths.remove(i) {
                AMQPValue::FieldTable(t) => t,
                _ => FieldTable::default(), // `position` only matches tables
            };
            let count = match t.inner().get("count") {
                Some(AMQPValue::LongLongInt(n)) => *n,
                _ => 0,
            };
            t.insert("count".into(), AMQPValue::LongLongInt(count + 1));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t
        }
        None => {
            let mut t = FieldTable::default();
            let mut keys = vec![long_str(message.routing_key.as_str())];
            keys.extend(
                header_strings(message.properties.headers().as_ref(), "CC")
                    .iter()
                    .map(|k| long_str(k)),
            );
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            t.insert("reason".into(), long_str(reason_str));
            t.insert("queue".into(), long_str(queue.name.as_str()));
            t.insert("time".into(), AMQPValue::Timestamp(now));
            t.insert("exchange".into(), long_str(message.exchange.as_str()));
            t.insert(
                "routing-keys".into(),
                AMQPValue::FieldArray(FieldArray::from(keys)),
            );
            if let Some(e) = message.properties.expiration() {
                t.insert("original-expiration".into(), long_str(e.as_str()));
            }
            t
        }
    };
    deaths.insert(0, AMQPValue::FieldTable(entry));
    headers.insert(
        "x-death".into(),
        AMQPValue::FieldArray(FieldArray::from(deaths)),
    );
    if !headers.contains_key("x-first-death-reason") {
        headers.insert("x-first-death-reason".into(), long_str(reason_str));
        headers.insert("x-first-death-queue".into(), long_str(queue.name.as_str()));
        headers.insert(
            "x-first-death-exchange".into(),
            long_str(message.exchange.as_str()),
        );
    }
    headers.insert("x-last-death-reason".into(), long_str(reason_str));
    headers.insert("x-last-death-queue".into(), long_str(queue.name.as_str()));
    headers.insert(
        "x-last-death-exchange".into(),
        long_str(message.exchange.as_str()),
    );
    let routing_key = match &queue.args.dead_letter_routing_key {
        Some(key) => {
            headers.remove("CC");
            key.clone()
        }
        None => message.routing_key.clone(),
    };
    let properties = rebuild_properties(&message.properties, Some(FieldTable::from(headers)), true);
    let raw_properties = encode_properties(&properties);
    Message::new(
        dlx.clone(),
        routing_key,
        properties,
        raw_properties,
        message.body.clone(),
    )
}

/// Whether delivering a dead-lettered `message` to `target` would close a cycle that no client
/// rejection broke (then RabbitMQ drops it): walking `x-death` from the most recent entry to the first
/// one for `target`, no entry has reason `rejected`.
pub fn is_cycle(message: &Message, target: &str) -> bool {
    let Some(AMQPValue::FieldArray(deaths)) = message
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death"))
    else {
        return false;
    };
    let mut rejected = false;
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            continue;
        };
        rejected |= text(t.inner().get("reason")) == Some(b"rejected");
        if text(t.inner().get("queue")) == Some(target.as_bytes()) {
            return !rejected;
        }
    }
    false
}
