//! Unit tests of the queue's state machine through fakes of the traits it calls: a [`ConsumerSink`]
//! that records deliveries (and can be full), a [`QueueOwner`] that records dead letters. Time is
//! tokio's paused clock where expiry is involved.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;

use super::*;
use crate::message::Message;

/// A channel stand-in: records (consumer tag, message body, redelivered) per delivery.
#[derive(Debug)]
struct Sink {
    room: AtomicBool,
    delivered: Mutex<Vec<(String, String, bool)>>,
}

impl Sink {
    fn new() -> Arc<Sink> {
        Arc::new(Sink {
            room: AtomicBool::new(true),
            delivered: Mutex::new(Vec::new()),
        })
    }

    fn take(&self) -> Vec<(String, String, bool)> {
        std::mem::take(&mut *self.delivered.lock().unwrap())
    }

    /// Just who got what, in order.
    fn who(&self) -> Vec<(String, String)> {
        self.take().into_iter().map(|(c, b, _)| (c, b)).collect()
    }
}

impl ConsumerSink for Sink {
    fn has_capacity(&self, _: &Consumer) -> bool {
        self.room.load(Ordering::Relaxed)
    }

    fn deliver(&self, _: &Arc<Queue>, consumer: &Arc<Consumer>, message: QueuedMessage) {
        let body = String::from_utf8_lossy(&message.message.body).into_owned();
        self.delivered
            .lock()
            .unwrap()
            .push((consumer.tag.to_string(), body, message.redelivered));
    }

    fn cancelled(&self, _: &Arc<Consumer>) {}
}

/// A vhost stand-in: records (body, reason) of every dead letter.
#[derive(Default)]
struct Owner {
    letters: Mutex<Vec<(String, DeadLetterReason)>>,
    expired: AtomicBool,
}

impl Owner {
    fn take(&self) -> Vec<(String, DeadLetterReason)> {
        std::mem::take(&mut *self.letters.lock().unwrap())
    }
}

impl QueueOwner for Owner {
    fn dead_letter(&self, _: &Queue, letters: Vec<(MessageRef, DeadLetterReason)>) {
        let mut out = self.letters.lock().unwrap();
        for (m, reason) in letters {
            out.push((String::from_utf8_lossy(&m.body).into_owned(), reason));
        }
    }

    fn expire_queue(&self, _: &Arc<Queue>) {
        self.expired.store(true, Ordering::Relaxed);
    }
}

fn queue(owner: &Arc<Owner>, args: &[(&str, AMQPValue)]) -> Arc<Queue> {
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    let parsed = QueueArgs::parse(&table).expect("valid arguments");
    let weak: Weak<dyn QueueOwner> = Arc::downgrade(owner) as Weak<dyn QueueOwner>;
    Arc::new(Queue::new(
        QueueDeclaration {
            args: parsed,
            arguments: table,
            ..QueueDeclaration::transient("q".into())
        },
        &crate::memory::TEST_MEMORY,
        weak,
        None,
    ))
}

fn int(n: i64) -> AMQPValue {
    AMQPValue::LongLongInt(n)
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn message(body: &str, priority: Option<u8>) -> MessageRef {
    let mut properties = BasicProperties::default();
    if let Some(p) = priority {
        properties = properties.with_priority(p);
    }
    Arc::new(Message::new(
        &crate::memory::TEST_MEMORY,
        "".into(),
        ShortString::from("q"),
        properties,
        Bytes::new(),
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn consumer(sink: &Arc<Sink>, tag: &str, prefetch: u16, priority: i32) -> Arc<Consumer> {
    Arc::new(Consumer {
        tag: tag.into(),
        no_ack: false,
        exclusive: false,
        prefetch,
        priority,
        unacked: Default::default(),
        sink: Arc::clone(sink) as Arc<dyn ConsumerSink>,
        filter: None,
        arguments: Default::default(),
        seq: next_consumer_seq(),
        cancelled: Default::default(),
    })
}

fn publish_all(q: &Arc<Queue>, bodies: &[&str]) {
    for b in bodies {
        assert_eq!(q.publish(message(b, None), None), PublishOutcome::Enqueued);
    }
}

fn get_bodies(q: &Arc<Queue>) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    while let Some((m, _)) = q.get(true) {
        out.push((
            String::from_utf8_lossy(&m.message.body).into_owned(),
            m.redelivered,
        ));
    }
    out
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn round_robin_within_the_highest_priority_with_room() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[]);
    let sink = Sink::new();
    // C has the higher priority but room for one unacked delivery; A and B share the rest in turn.
    for c in [
        consumer(&sink, "A", 0, 0),
        consumer(&sink, "B", 0, 0),
        consumer(&sink, "C", 1, 5),
    ] {
        q.add_consumer(c, || {}).expect("added");
    }
    publish_all(&q, &["1", "2", "3", "4", "5"]);
    assert_eq!(
        sink.who(),
        pairs(&[("C", "1"), ("A", "2"), ("B", "3"), ("A", "4"), ("B", "5")])
    );
}

#[test]
fn single_active_consumer_gets_everything_until_it_goes() {
    let owner = Arc::new(Owner::default());
    let q = queue(
        &owner,
        &[("x-single-active-consumer", AMQPValue::Boolean(true))],
    );
    let sink = Sink::new();
    let a = consumer(&sink, "A", 0, 0);
    q.add_consumer(Arc::clone(&a), || {}).expect("added");
    q.add_consumer(consumer(&sink, "B", 0, 0), || {})
        .expect("added");
    publish_all(&q, &["1", "2", "3"]);
    assert_eq!(sink.who(), pairs(&[("A", "1"), ("A", "2"), ("A", "3")]));
    q.remove_consumer(&a);
    publish_all(&q, &["4"]);
    assert_eq!(sink.who(), pairs(&[("B", "4")]));
}

#[test]
fn messages_wait_while_the_channel_has_no_room() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[]);
    let sink = Sink::new();
    sink.room.store(false, Ordering::Relaxed);
    q.add_consumer(consumer(&sink, "A", 0, 0), || {})
        .expect("added");
    publish_all(&q, &["1", "2"]);
    assert!(sink.who().is_empty());
    assert_eq!(q.counts().messages, 2);
    sink.room.store(true, Ordering::Relaxed);
    q.kick();
    assert_eq!(sink.who(), pairs(&[("A", "1"), ("A", "2")]));
}

#[test]
fn requeued_messages_go_back_to_their_original_position_flagged_redelivered() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[]);
    publish_all(&q, &["0", "1", "2", "3", "4"]);
    let taken: Vec<QueuedMessage> = (0..3).map(|_| q.get(false).expect("ready").0).collect();
    // Requeued out of order (2 before 0): each goes back by its arrival position.
    q.requeue([taken[2].clone(), taken[0].clone()]);
    q.settle(&taken[1..2]);
    assert_eq!(
        get_bodies(&q),
        [
            ("0".to_owned(), true),
            ("2".to_owned(), true),
            ("3".to_owned(), false),
            ("4".to_owned(), false)
        ]
    );
}

#[test]
fn priorities_deliver_highest_first_and_fifo_within_a_level() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[("x-max-priority", int(5))]);
    for (body, p) in [
        ("low1", 1),
        ("high1", 5),
        ("low2", 1),
        ("over", 9),
        ("none", 0),
    ] {
        q.publish(message(body, Some(p)), None);
    }
    // A priority above x-max-priority counts as the maximum (RabbitMQ docs/priority.md).
    let order: Vec<String> = get_bodies(&q).into_iter().map(|(b, _)| b).collect();
    assert_eq!(order, ["high1", "over", "low1", "low2", "none"]);
}

#[test]
fn drop_head_drops_the_oldest_and_dead_letters_it() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[("x-max-length", int(2))]);
    publish_all(&q, &["a", "b", "c"]);
    assert_eq!(owner.take(), [("a".to_owned(), DeadLetterReason::MaxLen)]);
    let left: Vec<String> = get_bodies(&q).into_iter().map(|(b, _)| b).collect();
    assert_eq!(left, ["b", "c"]);
}

#[test]
fn reject_publish_refuses_the_newest_and_reject_publish_dlx_also_dead_letters_it() {
    let owner = Arc::new(Owner::default());
    let q = queue(
        &owner,
        &[
            ("x-max-length", int(2)),
            ("x-overflow", text("reject-publish")),
        ],
    );
    publish_all(&q, &["a", "b"]);
    assert_eq!(
        q.publish(message("c", None), None),
        PublishOutcome::Rejected
    );
    assert!(owner.take().is_empty());
    assert_eq!(q.counts().messages, 2);

    let q = queue(
        &owner,
        &[
            ("x-max-length", int(2)),
            ("x-overflow", text("reject-publish-dlx")),
        ],
    );
    publish_all(&q, &["a", "b"]);
    assert_eq!(
        q.publish(message("c", None), None),
        PublishOutcome::Rejected
    );
    assert_eq!(owner.take(), [("c".to_owned(), DeadLetterReason::MaxLen)]);
    let left: Vec<String> = get_bodies(&q).into_iter().map(|(b, _)| b).collect();
    assert_eq!(left, ["a", "b"]);
}

#[test]
fn max_length_bytes_counts_body_octets() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[("x-max-length-bytes", int(5))]);
    publish_all(&q, &["abc", "de", "f"]);
    assert_eq!(owner.take(), [("abc".to_owned(), DeadLetterReason::MaxLen)]);
}

#[test]
fn a_message_requeued_past_the_delivery_limit_is_dead_lettered() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[("x-delivery-limit", int(1))]);
    publish_all(&q, &["m"]);
    // First delivery, requeued: still within the limit.
    let first = q.get(false).expect("ready").0;
    q.requeue([first]);
    assert!(owner.take().is_empty());
    // Second delivery, requeued: past it.
    let second = q.get(false).expect("ready again").0;
    assert!(second.redelivered);
    q.requeue([second]);
    assert_eq!(
        owner.take(),
        [("m".to_owned(), DeadLetterReason::DeliveryLimit)]
    );
    assert_eq!(q.counts().messages, 0);
}

#[test]
fn rejected_deliveries_are_dead_lettered_with_reason_rejected() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[]);
    publish_all(&q, &["m"]);
    let m = q.get(false).expect("ready").0;
    q.reject(vec![m]);
    assert_eq!(owner.take(), [("m".to_owned(), DeadLetterReason::Rejected)]);
    assert_eq!(q.counts().messages, 0);
}

#[tokio::test(start_paused = true)]
async fn expired_messages_leave_the_counts_and_are_dead_lettered() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[("x-message-ttl", int(1_000))]);
    publish_all(&q, &["q1"]);
    // A message with its own shorter expiration, behind one with the queue's TTL only.
    q.publish(message("own", None), Some(100));
    publish_all(&q, &["q2"]);
    assert_eq!(q.counts().messages, 3);
    tokio::time::advance(Duration::from_millis(150)).await;
    tokio::task::yield_now().await;
    // The expiry task ran at the own message's deadline.
    assert_eq!(
        owner.take(),
        [("own".to_owned(), DeadLetterReason::Expired)]
    );
    assert_eq!(q.counts().messages, 2);
    tokio::time::advance(Duration::from_millis(1_000)).await;
    tokio::task::yield_now().await;
    assert_eq!(
        owner.take(),
        [
            ("q1".to_owned(), DeadLetterReason::Expired),
            ("q2".to_owned(), DeadLetterReason::Expired)
        ]
    );
    assert_eq!(q.counts().messages, 0);
    assert!(q.get(true).is_none());
}

#[test]
fn ttl_zero_is_delivered_now_or_never() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[]);
    q.publish(message("gone", None), Some(0));
    assert_eq!(
        owner.take(),
        [("gone".to_owned(), DeadLetterReason::Expired)]
    );
    assert_eq!(q.counts().messages, 0);

    let sink = Sink::new();
    q.add_consumer(consumer(&sink, "A", 0, 0), || {})
        .expect("added");
    q.publish(message("taken", None), Some(0));
    assert_eq!(sink.who(), pairs(&[("A", "taken")]));
    assert!(owner.take().is_empty());
}

#[test]
fn purge_and_delete_report_what_they_dropped() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[]);
    publish_all(&q, &["1", "2", "3"]);
    assert_eq!(q.purge(), 3);
    publish_all(&q, &["4"]);
    let sink = Sink::new();
    sink.room.store(false, Ordering::Relaxed);
    q.add_consumer(consumer(&sink, "A", 0, 0), || {})
        .expect("added");
    let (dropped, consumers) = q.delete();
    assert_eq!((dropped, consumers.len()), (1, 1));
    assert!(q.is_deleted());
    assert_eq!(
        q.publish(message("late", None), None),
        PublishOutcome::Deleted
    );
    assert!(
        owner.take().is_empty(),
        "purge and delete do not dead-letter"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unused_queue_expires_and_a_consumer_keeps_it_alive() {
    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[("x-expires", int(150))]);
    q.touch();
    tokio::time::advance(Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    assert!(!owner.expired.load(Ordering::Relaxed), "not yet");
    tokio::time::advance(Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    assert!(
        owner.expired.load(Ordering::Relaxed),
        "expired after 150 ms unused"
    );

    let owner = Arc::new(Owner::default());
    let q = queue(&owner, &[("x-expires", int(150))]);
    q.touch();
    let sink = Sink::new();
    let c = consumer(&sink, "A", 0, 0);
    q.add_consumer(Arc::clone(&c), || {}).expect("added");
    tokio::time::advance(Duration::from_millis(1_000)).await;
    tokio::task::yield_now().await;
    assert!(!owner.expired.load(Ordering::Relaxed), "in use");
    // Unused again from the moment the consumer leaves.
    q.remove_consumer(&c);
    tokio::time::advance(Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    assert!(!owner.expired.load(Ordering::Relaxed));
    tokio::time::advance(Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    assert!(owner.expired.load(Ordering::Relaxed));
}

/// A durable queue whose in-memory part is capped at `memory_limit` body octets, on a fresh data
/// directory: (queue, store, directory).
fn durable_queue(
    owner: &Arc<Owner>,
    name: &str,
    memory_limit: u64,
) -> (Arc<Queue>, Arc<crate::store::Store>, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("warren-queue-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = crate::store::Store::open(&dir, 4096, memory_limit).expect("store");
    let (log, recovered) = store.open_queue_log("/", name).expect("log");
    let weak: Weak<dyn QueueOwner> = Arc::downgrade(owner) as Weak<dyn QueueOwner>;
    let q = Arc::new(Queue::new(
        QueueDeclaration {
            durable: true,
            ..QueueDeclaration::transient(name.into())
        },
        &crate::memory::TEST_MEMORY,
        weak,
        Some(QueueStorage {
            log,
            recovered,
            clean_start: store.clean_start,
            memory_limit,
        }),
    ));
    (q, store, dir)
}

fn persistent(body: &str) -> MessageRef {
    let properties = BasicProperties::default().with_delivery_mode(2);
    let raw = crate::message::encode_properties(&properties);
    Arc::new(Message::new(
        &crate::memory::TEST_MEMORY,
        "".into(),
        ShortString::from("q"),
        properties,
        raw,
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

#[test]
fn a_long_durable_queue_pages_out_and_refills_in_order() {
    let owner = Arc::new(Owner::default());
    // 30-octet bodies, each costing 30 + QUEUED_MESSAGE_OVERHEAD in memory: three stay in memory,
    // the rest go to the log.
    let limit = 3 * (30 + crate::memory::QUEUED_MESSAGE_OVERHEAD as u64) + 100;
    let (q, store, dir) = durable_queue(&owner, "paged", limit);
    let bodies: Vec<String> = (0..20).map(|i| format!("{i:030}")).collect();
    let mut last = 0;
    for b in &bodies {
        let (outcome, wait) = q.publish_durable(persistent(b), None);
        assert_eq!(outcome, PublishOutcome::Enqueued);
        last = wait.expect("persistent on a durable queue: logged").1;
    }
    assert_eq!(q.counts().messages, 20, "paged messages count as ready");
    let paged = q.lock().ready.tail.as_ref().map_or(0, |t| t.count);
    assert_eq!(
        paged, 17,
        "three 30-octet messages fit; the rest went to the log"
    );
    // Paged messages are read back from the segments: wait until the log has them.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut commits = store.commits();
    let log = q.log().expect("a durable queue has a log");
    while log.durability(last) != crate::store::Durability::Durable {
        rt.block_on(commits.changed()).expect("committer");
    }
    let mut got = Vec::new();
    while let Some((m, left)) = q.get(false) {
        got.push(String::from_utf8_lossy(&m.message.body).into_owned());
        assert_eq!(left as usize, 20 - got.len(), "ready count after each get");
        assert!(!m.redelivered);
        q.settle(&[m]);
    }
    assert_eq!(got, bodies, "memory first, then the tail, in arrival order");
    assert!(owner.take().is_empty());
    store.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_long_transient_queue_pages_to_a_scratch_log_and_drains_in_order() {
    let owner = Arc::new(Owner::default());
    let dir = std::env::temp_dir().join(format!("warren-queue-{}-scratch", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Room for five 30-octet messages in memory.
    let limit = 5 * (30 + crate::memory::QUEUED_MESSAGE_OVERHEAD as u64) + 100;
    let store = crate::store::Store::open(&dir, 4096, limit).expect("store");
    let weak: Weak<dyn QueueOwner> = Arc::downgrade(&owner) as Weak<dyn QueueOwner>;
    let q = Arc::new(
        Queue::new(
            QueueDeclaration::transient("t".into()),
            &crate::memory::TEST_MEMORY,
            weak,
            None,
        )
        .with_scratch(Some(ScratchSpace {
            store: Arc::clone(&store),
            vhost: "/".into(),
        })),
    );
    // Persistent or not, a transient queue's messages are never logged for durability.
    let bodies: Vec<String> = (0..500).map(|i| format!("{i:030}")).collect();
    for b in &bodies {
        let (outcome, wait) = q.publish_durable(persistent(b), None);
        assert_eq!(outcome, PublishOutcome::Enqueued);
        assert!(wait.is_none(), "no confirm waits on a scratch log");
    }
    assert_eq!(q.counts().messages, 500);
    let paged = q.lock().ready.tail.as_ref().map_or(0, |t| t.count);
    assert_eq!(paged, 495, "five in memory, the rest paged");
    let scratch = dir.join("transient").join("0");
    assert!(scratch.exists(), "the scratch log lives under transient/");
    let mut got = Vec::new();
    while let Some((m, left)) = q.get(true) {
        got.push(String::from_utf8_lossy(&m.message.body).into_owned());
        assert_eq!(left as usize, 500 - got.len());
        assert_eq!(
            m.message.properties.delivery_mode(),
            &Some(2),
            "properties kept"
        );
    }
    assert_eq!(
        got, bodies,
        "memory first, then the scratch log, in arrival order"
    );
    q.delete();
    assert!(!scratch.exists(), "a deleted queue's scratch log goes");
    store.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
