//! The delay store of one exchange: messages its plugin type asked to deliver later
//! (`warren:plugin@0.4.0` `schedule`), held by due time until the vhost routes them
//! (`vhost/delayed.rs`).
//!
//! In memory the pending messages form a binary heap ordered by (due time, arrival), so the next due
//! message is found in O(1) and each insert or removal costs O(log n), with no cap on the delay (a
//! due time is a `u64` of milliseconds since the Unix epoch; RabbitMQ's delayed-message plugin stops at
//! 2³²−1 ms). Persistent messages of a durable exchange are also appended to the exchange's own
//! segment log (`store::log`, the queue log format: a Publish record whose `expires_at` field holds
//! the due time, an Ack record once the message was routed), through the same group commit as queue
//! logs, so a publisher confirm for such a message means it is on disk; the log is read back at
//! start. Segments are reclaimed once every message in them was routed.
//!
//! A pending message is kept compact ([`Kept`]: names, the properties as received and the body, each
//! in an allocation of its own), not as a routed `Message`: its decoded properties are rebuilt when it
//! falls due, so a million pending 16-octet messages cost a few hundred octets each rather than the
//! ~1.2 KiB a decoded message with headers holds.

use std::cmp::{Ordering as CmpOrdering, Reverse};
use std::collections::{BTreeSet, BinaryHeap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use amq_protocol::types::ShortString;
use bytes::Bytes;
use tokio::sync::Notify;

use crate::memory::Memory;
use crate::message::{Message, MessageRef};
use crate::store::record::{PublishRef, StoredPublish};
use crate::store::{QueueLog, Recovered};
use crate::sync::lock;

/// A pending message as kept: what it was published with, undecoded. Its octets count in the memory
/// alarm's message account while it lives (as a `Message`'s do).
#[derive(Debug)]
pub(crate) struct Kept {
    exchange: ShortString,
    routing_key: ShortString,
    /// Content-header properties as received (property flags onwards).
    properties: Bytes,
    body: Bytes,
    memory: Memory,
}

impl Kept {
    fn new(
        memory: Memory,
        exchange: ShortString,
        routing_key: ShortString,
        properties: Bytes,
        body: Bytes,
    ) -> Kept {
        memory.add(
            crate::memory::Account::Messages,
            properties.len() + body.len(),
        );
        Kept {
            exchange,
            routing_key,
            properties,
            body,
            memory,
        }
    }

    /// The message again, its properties decoded (`None` if they do not parse, which a message
    /// accepted at publish cannot do; a damaged log record could).
    pub(crate) fn message(&self) -> Option<MessageRef> {
        let (_, properties) =
            amq_protocol::protocol::basic::parse_properties(&self.properties[..]).ok()?;
        Some(Arc::new(Message::new(
            self.memory,
            self.exchange.clone(),
            self.routing_key.clone(),
            properties,
            self.properties.clone(),
            self.body.clone(),
        )))
    }

    /// Body octets.
    pub(crate) fn body_len(&self) -> usize {
        self.body.len()
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        self.memory.sub(
            crate::memory::Account::Messages,
            self.properties.len() + self.body.len(),
        );
    }
}

/// One message waiting for its due time.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Due time, ms since the Unix epoch.
    pub due: u64,
    /// Arrival order within the store (the log's sequence number when logged).
    pub seq: u64,
    /// The message.
    pub message: Kept,
    /// Appended to the exchange's log (acked there once routed).
    pub logged: bool,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

#[derive(Debug, Default)]
struct Inner {
    heap: BinaryHeap<Reverse<Pending>>,
    next_seq: u64,
    /// Sequence numbers of logged messages still pending (the log's lowest live one is the first).
    logged: BTreeSet<u64>,
}

impl Inner {
    /// The log's lowest live sequence number: the first logged message still pending, or the next
    /// to come.
    fn min_live(&self) -> u64 {
        self.logged.first().copied().unwrap_or(self.next_seq)
    }
}

/// The delayed messages of one exchange.
#[derive(Debug)]
pub(crate) struct DelayStore {
    inner: Mutex<Inner>,
    /// The exchange's log (a durable exchange in a broker with a data directory).
    log: Option<Arc<QueueLog>>,
    /// Woken when a message with an earlier due time than any before arrives, or the store closes.
    pub wake: Notify,
    closed: AtomicBool,
}

/// A message read back from the log (its octets copied out of the read buffer).
fn from_stored(p: &StoredPublish, memory: Memory) -> Kept {
    Kept::new(
        memory,
        p.exchange_name(),
        p.routing_key_name(),
        Bytes::copy_from_slice(&p.properties),
        Bytes::copy_from_slice(&p.body),
    )
}

impl DelayStore {
    /// An empty store kept in memory only.
    pub(crate) fn new() -> Arc<DelayStore> {
        Self::with(Inner::default(), None)
    }

    fn with(inner: Inner, log: Option<Arc<QueueLog>>) -> Arc<DelayStore> {
        Arc::new(DelayStore {
            inner: Mutex::new(inner),
            log,
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// A store over a log just opened, holding the messages the log still has (`recovered` says which
    /// were routed already).
    ///
    /// # Errors
    /// I/O errors reading the log back.
    pub(crate) fn recover(
        log: Arc<QueueLog>,
        recovered: &Recovered,
        memory: Memory,
    ) -> std::io::Result<Arc<DelayStore>> {
        let mut inner = Inner {
            next_seq: recovered.next_seq,
            ..Inner::default()
        };
        let mut reader = log.reader();
        while let Some(p) = reader.next_publish()? {
            if recovered.acked.contains(p.seq) {
                continue;
            }
            let message = from_stored(&p, memory);
            inner.logged.insert(p.seq);
            inner.heap.push(Reverse(Pending {
                due: p.expires_at,
                seq: p.seq,
                message,
                logged: true,
            }));
        }
        log.set_min_live(inner.min_live());
        Ok(Self::with(inner, Some(log)))
    }

    /// Keeps `message` until `due` (ms since the Unix epoch). A `persistent` message is appended to
    /// the log, if the store has one: the append (log, LSN) returned is what a publisher confirm
    /// waits for.
    pub(crate) fn insert(
        &self,
        message: &Message,
        due: u64,
        persistent: bool,
    ) -> Option<(Arc<QueueLog>, u64)> {
        let mut inner = lock(&self.inner);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let wait = match (&self.log, persistent) {
            (Some(log), true) => {
                inner.logged.insert(seq);
                let lsn = log.append_publish(&PublishRef {
                    seq,
                    persistent: true,
                    expires_at: due,
                    exchange: message.exchange.as_str().as_bytes(),
                    routing_key: message.routing_key.as_str().as_bytes(),
                    properties: &message.raw_properties,
                    body: &message.body,
                });
                Some((Arc::clone(log), lsn))
            }
            _ => None,
        };
        let earliest = inner.heap.peek().is_none_or(|Reverse(p)| due < p.due);
        let kept = Kept::new(
            message.memory,
            message.exchange.clone(),
            message.routing_key.clone(),
            message.raw_properties.clone(),
            message.body.clone(),
        );
        inner.heap.push(Reverse(Pending {
            due,
            seq,
            message: kept,
            logged: wait.is_some(),
        }));
        drop(inner);
        if earliest {
            self.wake.notify_one();
        }
        wait
    }

    /// Puts back a message taken with [`DelayStore::take_due`] that could not be routed (its
    /// exchange's plugin type is not loaded, or failed), due again at `due`; its log record stays.
    pub(crate) fn retry(&self, mut p: Pending, due: u64) {
        p.due = due;
        lock(&self.inner).heap.push(Reverse(p));
    }

    /// The earliest due time, if any message is pending.
    pub(crate) fn next_due(&self) -> Option<u64> {
        lock(&self.inner).heap.peek().map(|Reverse(p)| p.due)
    }

    /// Takes up to `max` messages due at `now` (ms since the Unix epoch), earliest first.
    pub(crate) fn take_due(&self, now: u64, max: usize) -> Vec<Pending> {
        let mut inner = lock(&self.inner);
        let mut due = Vec::new();
        while due.len() < max && inner.heap.peek().is_some_and(|Reverse(p)| p.due <= now) {
            if let Some(Reverse(p)) = inner.heap.pop() {
                due.push(p);
            }
        }
        due
    }

    /// Messages taken with [`DelayStore::take_due`] were routed (and are durable where they went):
    /// their log records are acked, and segments nothing needs any more are reclaimed.
    pub(crate) fn routed(&self, done: &[Pending]) {
        let Some(log) = &self.log else { return };
        let mut inner = lock(&self.inner);
        for p in done.iter().filter(|p| p.logged) {
            inner.logged.remove(&p.seq);
            log.append_ack(p.seq, p.seq, 1, p.message.body_len() as u64);
        }
        let min = inner.min_live();
        drop(inner);
        log.set_min_live(min);
    }

    /// Messages pending (not counting those being routed right now).
    pub(crate) fn len(&self) -> u64 {
        lock(&self.inner).heap.len() as u64
    }

    /// Whether the store was closed (its exchange deleted).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The exchange was deleted: pending messages are dropped (as RabbitMQ's delayed-message plugin
    /// drops them with the exchange), the log removed, the routing task stopped.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let mut inner = lock(&self.inner);
        inner.heap.clear();
        inner.logged.clear();
        drop(inner);
        if let Some(log) = &self.log {
            log.destroy();
        }
        self.wake.notify_one();
    }
}
