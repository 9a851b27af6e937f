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
/// dead-letter routing key (the queue's, read by the caller) the message carries that key and loses its
/// `CC` header.
pub(crate) fn dead_lettered(
    message: &Message,
    queue: &Queue,
    reason: DeadLetterReason,
    dlx: &ShortString,
    dead_letter_routing_key: Option<&ShortString>,
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
    let routing_key = match dead_letter_routing_key {
        Some(key) => {
            headers.remove("CC");
            key.clone()
        }
        None => message.routing_key.clone(),
    };
    let properties = rebuild_properties(&message.properties, Some(FieldTable::from(headers)), true);
    let raw_properties = encode_properties(&properties);
    Message::new(
        message.memory,
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
pub(crate) fn is_cycle(message: &Message, target: &str) -> bool {
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

#[cfg(test)]
mod tests {
    //! `x-death` as RabbitMQ docs/dlx.md describes it ("Dead-Lettered Messages"): one entry per
    //! {queue, reason}, newest first, `count` incremented and the entry moved first when it repeats;
    //! `x-first-death-*` set once, `x-last-death-*` every time; `original-expiration` kept.
    use std::sync::{Arc, Weak};

    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    use super::*;
    use crate::queue::{QueueArgs, QueueDeclaration, QueueOwner};

    fn queue(name: &str, dead_letter_routing_key: Option<&str>) -> Arc<Queue> {
        let mut arguments = FieldTable::default();
        arguments.insert("x-dead-letter-exchange".into(), long_str("dlx"));
        if let Some(k) = dead_letter_routing_key {
            arguments.insert("x-dead-letter-routing-key".into(), long_str(k));
        }
        let owner: Weak<dyn QueueOwner> = Weak::<crate::vhost::VHost>::new();
        Arc::new(Queue::new(
            QueueDeclaration {
                args: QueueArgs::parse(&arguments).expect("valid"),
                arguments,
                ..QueueDeclaration::transient(name.into())
            },
            &crate::memory::TEST_MEMORY,
            owner,
            None,
        ))
    }

    fn published() -> Message {
        let mut headers = FieldTable::default();
        headers.insert(
            "CC".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![long_str("cc-key")])),
        );
        let properties = BasicProperties::default()
            .with_headers(headers)
            .with_expiration("5000".into());
        Message::new(
            &crate::memory::TEST_MEMORY,
            "orders".into(),
            "rk".into(),
            properties,
            Bytes::new(),
            Bytes::from_static(b"body"),
        )
    }

    fn headers(m: &Message) -> FieldTable {
        m.properties.headers().clone().expect("headers")
    }

    fn deaths(m: &Message) -> Vec<FieldTable> {
        match headers(m).inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a
                .as_slice()
                .iter()
                .map(|d| match d {
                    AMQPValue::FieldTable(t) => t.clone(),
                    other => panic!("x-death entry is not a table: {other:?}"),
                })
                .collect(),
            other => panic!("no x-death array: {other:?}"),
        }
    }

    fn field<'a>(t: &'a FieldTable, key: &str) -> &'a AMQPValue {
        t.inner().get(key).unwrap_or_else(|| panic!("no '{key}'"))
    }

    fn s(v: &AMQPValue) -> String {
        String::from_utf8_lossy(text(Some(v)).expect("a string")).into_owned()
    }

    #[test]
    fn the_first_death_records_queue_reason_exchange_keys_and_expiration() {
        let dlx = ShortString::from("dlx");
        let dead = dead_lettered(
            &published(),
            &queue("q1", None),
            DeadLetterReason::Expired,
            &dlx,
            None,
        );
        assert_eq!(dead.exchange.as_str(), "dlx");
        assert_eq!(
            dead.routing_key.as_str(),
            "rk",
            "the original key without a dead-letter key"
        );
        assert!(dead.properties.expiration().is_none(), "expiration removed");
        assert_eq!(dead.body.as_ref(), b"body");
        let d = deaths(&dead);
        assert_eq!(d.len(), 1);
        let e = &d[0];
        assert_eq!(s(field(e, "queue")), "q1");
        assert_eq!(s(field(e, "reason")), "expired");
        assert_eq!(s(field(e, "exchange")), "orders");
        assert_eq!(field(e, "count"), &AMQPValue::LongLongInt(1));
        assert_eq!(s(field(e, "original-expiration")), "5000");
        assert!(matches!(field(e, "time"), AMQPValue::Timestamp(_)));
        let AMQPValue::FieldArray(keys) = field(e, "routing-keys") else {
            panic!("routing-keys is not an array");
        };
        let keys: Vec<String> = keys.as_slice().iter().map(s).collect();
        assert_eq!(keys, ["rk", "cc-key"], "CC keys included");
        let h = headers(&dead);
        for (k, v) in [
            ("x-first-death-queue", "q1"),
            ("x-first-death-reason", "expired"),
            ("x-first-death-exchange", "orders"),
            ("x-last-death-queue", "q1"),
            ("x-last-death-reason", "expired"),
        ] {
            assert_eq!(s(field(&h, k)), v, "{k}");
        }
    }

    #[test]
    fn a_repeated_queue_and_reason_counts_up_and_moves_first() {
        let dlx = ShortString::from("dlx");
        let (q1, q2) = (queue("q1", None), queue("q2", None));
        let once = dead_lettered(&published(), &q1, DeadLetterReason::Expired, &dlx, None);
        let twice = dead_lettered(&once, &q2, DeadLetterReason::Rejected, &dlx, None);
        let order: Vec<(String, String)> = deaths(&twice)
            .iter()
            .map(|e| (s(field(e, "queue")), s(field(e, "reason"))))
            .collect();
        assert_eq!(
            order,
            [
                ("q2".into(), "rejected".into()),
                ("q1".into(), "expired".into())
            ],
            "newest first"
        );
        let thrice = dead_lettered(&twice, &q1, DeadLetterReason::Expired, &dlx, None);
        let d = deaths(&thrice);
        assert_eq!(d.len(), 2, "no new entry for a known {{queue, reason}}");
        assert_eq!(s(field(&d[0], "queue")), "q1");
        assert_eq!(field(&d[0], "count"), &AMQPValue::LongLongInt(2));
        assert_eq!(field(&d[1], "count"), &AMQPValue::LongLongInt(1));
        let h = headers(&thrice);
        assert_eq!(s(field(&h, "x-first-death-queue")), "q1");
        assert_eq!(s(field(&h, "x-first-death-reason")), "expired");
        assert_eq!(s(field(&h, "x-last-death-queue")), "q1");
        // A different reason for the same queue is another entry.
        let other = dead_lettered(&thrice, &q1, DeadLetterReason::MaxLen, &dlx, None);
        assert_eq!(deaths(&other).len(), 3);
    }

    #[test]
    fn a_dead_letter_routing_key_replaces_the_key_and_drops_cc() {
        let dlx = ShortString::from("dlx");
        let q = queue("q1", Some("dead"));
        let dead = dead_lettered(
            &published(),
            &q,
            DeadLetterReason::Rejected,
            &dlx,
            q.args().dead_letter_routing_key.as_ref(),
        );
        assert_eq!(dead.routing_key.as_str(), "dead");
        assert!(!headers(&dead).contains_key("CC"));
        // The entry still records the keys the message was published with.
        let AMQPValue::FieldArray(keys) = field(&deaths(&dead)[0], "routing-keys").clone() else {
            panic!("routing-keys is not an array");
        };
        assert_eq!(keys.as_slice().len(), 2);
    }

    #[test]
    fn a_cycle_without_a_rejection_is_detected_and_a_rejection_breaks_it() {
        let dlx = ShortString::from("dlx");
        let (q1, q2) = (queue("q1", None), queue("q2", None));
        assert!(!is_cycle(&published(), "q1"), "no x-death: no cycle");
        // Expired in q1, then in q2: going back to q1 closes an expiry-only cycle (dropped).
        let m = dead_lettered(&published(), &q1, DeadLetterReason::Expired, &dlx, None);
        let m = dead_lettered(&m, &q2, DeadLetterReason::Expired, &dlx, None);
        assert!(is_cycle(&m, "q1"));
        assert!(is_cycle(&m, "q2"));
        assert!(!is_cycle(&m, "q3"), "a queue it never left");
        // Rejected by a client in q2 after expiring in q1: a client took part, not a cycle.
        let m = dead_lettered(&published(), &q1, DeadLetterReason::Expired, &dlx, None);
        let m = dead_lettered(&m, &q2, DeadLetterReason::Rejected, &dlx, None);
        assert!(!is_cycle(&m, "q1"));
        assert!(!is_cycle(&m, "q2"), "its own entry is a rejection");
    }
}
