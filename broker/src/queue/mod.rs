//! Queues: the ready list, consumers, round-robin dispatch within prefetch, requeue in original order.
//!
//! A queue is shared (`Arc<Queue>`) between the vhost, the bindings that route to it and the channels
//! consuming from it; its state sits behind one std `Mutex` that is never held across an `.await`.
//! Dispatch calls into a [`ConsumerSink`] (implemented by the channel) while holding the queue lock, so
//! the lock order is always queue → channel → connection write buffer; nothing takes a queue lock while
//! holding a channel lock. Reference: RabbitMQ docs/queues.md, docs/consumers.md, docs/consumer-prefetch.md.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use amq_protocol::types::{FieldTable, ShortString};

use crate::message::MessageRef;

/// A message waiting in (or delivered from) a queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue's arrival order; requeued messages go back to their position by it.
    pub seq: u64,
    /// The shared message.
    pub message: MessageRef,
    /// Set once the message has been delivered and requeued (AMQP `redelivered` flag).
    pub redelivered: bool,
}

/// The receiving side of a consumer: a channel that can take deliveries.
pub trait ConsumerSink: Send + Sync + fmt::Debug {
    /// Whether the channel can take one more delivery for `consumer` now (channel-wide prefetch,
    /// write-buffer high-water mark).
    fn has_capacity(&self, consumer: &Consumer) -> bool;
    /// Hands `message` to `consumer`: assigns a delivery tag, records it as unacked unless the consumer
    /// is no-ack, and writes basic.deliver.
    fn deliver(&self, queue: &Arc<Queue>, consumer: &Arc<Consumer>, message: QueuedMessage);
    /// The queue was deleted under this consumer: forget it and notify the client with basic.cancel
    /// (RabbitMQ docs/consumer-cancel.md).
    fn cancelled(&self, consumer: &Arc<Consumer>);
}

/// One basic.consume subscription (AMQP 0-9-1 §1.8.3.3).
#[derive(Debug)]
pub struct Consumer {
    /// Consumer tag, unique within its channel.
    pub tag: ShortString,
    /// Deliveries need no ack (`no_ack` = auto-ack); prefetch does not apply.
    pub no_ack: bool,
    /// Exclusive consumer: no other consumer may use the queue meanwhile.
    pub exclusive: bool,
    /// Per-consumer prefetch count (`basic.qos` with `global = false`); 0 means unlimited.
    pub prefetch: u16,
    /// Deliveries to this consumer not yet acked, for the prefetch limit.
    pub unacked: AtomicU32,
    /// The channel this consumer delivers to.
    pub sink: Arc<dyn ConsumerSink>,
}

impl Consumer {
    fn below_prefetch(&self) -> bool {
        self.no_ack
            || self.prefetch == 0
            || self.unacked.load(Ordering::Relaxed) < u32::from(self.prefetch)
    }
}

/// Why a consumer could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeRefused {
    /// The queue has an exclusive consumer, or an exclusive consumer was asked for while others exist.
    ExclusiveInUse,
    /// The queue was deleted meanwhile.
    Deleted,
}

/// A queue as declared (AMQP 0-9-1 §1.7.2.1 queue.declare).
pub struct Queue {
    /// Queue name.
    pub name: ShortString,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last consumer is cancelled (once it has had one).
    pub auto_delete: bool,
    /// Id of the owning connection for an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Declare arguments.
    pub arguments: FieldTable,
    inner: Mutex<QueueInner>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct QueueInner {
    ready: VecDeque<QueuedMessage>,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    next_consumer: usize,
    unacked: usize,
    had_consumer: bool,
    deleted: bool,
}

/// Counts reported by queue.declare-ok and queue.delete-ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not counting unacked ones), as RabbitMQ reports.
    pub messages: u32,
    /// Active consumers.
    pub consumers: u32,
}

impl Queue {
    /// A new, empty queue.
    pub fn new(
        name: ShortString,
        durable: bool,
        auto_delete: bool,
        exclusive_owner: Option<u64>,
        arguments: FieldTable,
    ) -> Self {
        Queue {
            name,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            inner: Mutex::new(QueueInner::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueInner> {
        // Queue operations do not panic while holding the lock; if one did, the state is still a valid
        // queue, so recover it rather than take every publisher down with the poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ready messages and consumers.
    pub fn counts(&self) -> QueueCounts {
        let inner = self.lock();
        QueueCounts {
            messages: inner.ready.len() as u32,
            consumers: inner.consumers.len() as u32,
        }
    }

    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Appends a routed message and dispatches. Returns false if the queue was deleted meanwhile.
    pub fn publish(self: &Arc<Self>, message: MessageRef) -> bool {
        let mut inner = self.lock();
        if inner.deleted {
            return false;
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        inner.ready.push_back(QueuedMessage {
            seq,
            message,
            redelivered: false,
        });
        self.dispatch(&mut inner);
        true
    }

    /// Delivers ready messages round-robin to consumers that have capacity, until either runs out.
    fn dispatch(self: &Arc<Self>, inner: &mut QueueInner) {
        let n = inner.consumers.len();
        let mut idle = 0;
        while idle < n && !inner.ready.is_empty() {
            let idx = inner.next_consumer % n;
            inner.next_consumer = idx + 1;
            let consumer = &inner.consumers[idx];
            if !(consumer.below_prefetch() && consumer.sink.has_capacity(consumer)) {
                idle += 1;
                continue;
            }
            idle = 0;
            let consumer = Arc::clone(consumer);
            let Some(message) = inner.ready.pop_front() else {
                break;
            };
            if !consumer.no_ack {
                inner.unacked += 1;
                consumer.unacked.fetch_add(1, Ordering::Relaxed);
            }
            consumer.sink.deliver(self, &consumer, message);
        }
    }

    /// Dispatches after capacity was freed elsewhere (an ack, a drained write buffer, qos).
    pub fn kick(self: &Arc<Self>) {
        let mut inner = self.lock();
        self.dispatch(&mut inner);
    }

    /// basic.get: takes the head message. Returns it and the number still ready.
    pub fn get(&self, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let mut inner = self.lock();
        let message = inner.ready.pop_front()?;
        if !no_ack {
            inner.unacked += 1;
        }
        Some((message, inner.ready.len() as u32))
    }

    /// Acknowledges `count` deliveries of this queue and dispatches into the freed capacity.
    pub fn settle(self: &Arc<Self>, count: usize) {
        let mut inner = self.lock();
        inner.unacked = inner.unacked.saturating_sub(count);
        self.dispatch(&mut inner);
    }

    /// Puts unacked messages back at their original positions, flagged redelivered, and dispatches.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        let mut inner = self.lock();
        for mut m in messages {
            inner.unacked = inner.unacked.saturating_sub(1);
            if inner.deleted {
                continue;
            }
            m.redelivered = true;
            let pos = inner.ready.partition_point(|r| r.seq < m.seq);
            inner.ready.insert(pos, m);
        }
        self.dispatch(&mut inner);
    }

    /// Adds a consumer and dispatches to it. `on_added` runs under the queue lock once the consumer is
    /// accepted and before anything is delivered to it (the channel writes basic.consume-ok there, so the
    /// reply precedes the first delivery).
    ///
    /// # Errors
    /// [`ConsumeRefused`] when exclusivity forbids it or the queue is gone.
    pub fn add_consumer(
        self: &Arc<Self>,
        consumer: Arc<Consumer>,
        on_added: impl FnOnce(),
    ) -> Result<(), ConsumeRefused> {
        let mut inner = self.lock();
        if inner.deleted {
            return Err(ConsumeRefused::Deleted);
        }
        if !inner.consumers.is_empty()
            && (consumer.exclusive || inner.consumers.iter().any(|c| c.exclusive))
        {
            return Err(ConsumeRefused::ExclusiveInUse);
        }
        inner.consumers.push(consumer);
        inner.had_consumer = true;
        on_added();
        self.dispatch(&mut inner);
        Ok(())
    }

    /// Removes a consumer. Returns true when this was the last consumer of an auto-delete queue, which
    /// the caller must then delete (RabbitMQ docs/queues.md "auto-delete").
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut inner = self.lock();
        inner.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        self.auto_delete && inner.had_consumer && inner.consumers.is_empty() && !inner.deleted
    }

    /// Removes all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        let mut inner = self.lock();
        let n = inner.ready.len() as u32;
        inner.ready.clear();
        n
    }

    /// Marks the queue deleted, drops its ready messages and detaches its consumers (which are returned so
    /// the caller can notify them). Returns the number of ready messages dropped.
    pub fn delete(&self) -> (u32, Vec<Arc<Consumer>>) {
        let mut inner = self.lock();
        inner.deleted = true;
        let n = inner.ready.len() as u32;
        inner.ready.clear();
        (n, std::mem::take(&mut inner.consumers))
    }
}
