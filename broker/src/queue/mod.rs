//! Queues: the ready list, consumers, dispatch within prefetch, requeue in original order, and the
//! RabbitMQ queue extensions: TTL, dead-lettering, length limits, priorities, delivery limit, single
//! active consumer, consumer priorities, queue expiry.
//!
//! A queue is shared (`Arc<Queue>`) between the vhost, the bindings that route to it and the channels
//! consuming from it; its state sits behind one std `Mutex` never held across an `.await`. Dispatch calls
//! into a [`ConsumerSink`] (implemented by the channel) while holding the queue lock, so the lock order
//! is always queue → channel → connection write buffer. Dead letters are collected under the lock and
//! handed to the [`QueueOwner`] (the vhost) after it is released, so dead-letter cycles cannot deadlock.
//!
//! Files: `ready.rs` (the ready list: priority levels, paging), `dispatch.rs` (plain and scanning
//! dispatch), `expiry.rs` (message TTL, queue expiry, the expiry task), `durable.rs` (log records),
//! `consumers.rs` (the consumer list), `tail.rs` (paged-out messages), `args.rs` (`x-` arguments),
//! `plugins.rs` (consumer filters, idempotency keys).
//! Reference: RabbitMQ docs/queues.md, docs/consumers.md, docs/consumer-prefetch.md, docs/ttl.md,
//! docs/dlx.md, docs/maxlength, docs/priority.md, docs/consumer-priority.md.

pub(crate) mod args;
mod consumers;
mod dispatch;
mod durable;
mod expiry;
pub(crate) mod plugins;
mod ready;
mod tail;
#[cfg(test)]
mod tests;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use amq_protocol::types::{FieldTable, ShortString};
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) use self::args::{Overflow, QueueArgs};
pub(crate) use self::consumers::next_consumer_seq;
use self::ready::Ready;
use self::tail::Tail;
use crate::memory::{Account, Charge, Memory};
use crate::message::MessageRef;
use crate::store::record::PublishRef;
use crate::store::{DurableWait, QueueLog, Recovered};

/// A message waiting in (or delivered from) a queue.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue's arrival order; requeued messages go back to their position by it.
    pub seq: u64,
    /// The shared message.
    pub message: MessageRef,
    /// Set once the message has been delivered and requeued (AMQP `redelivered` flag).
    pub redelivered: bool,
    /// When the message expires (queue `x-message-ttl` or its own `expiration`, whichever is sooner).
    pub expires_at: Option<Instant>,
    /// Deliveries so far (for `x-delivery-limit`).
    pub delivery_count: u32,
    /// A persistent message with a record in this queue's log: leaving the queue appends an Ack.
    pub logged: bool,
}

/// Why a message is dead-lettered (the `reason` of its `x-death` entry, RabbitMQ docs/dlx.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// basic.reject / basic.nack with `requeue = false`.
    Rejected,
    /// Message TTL ran out.
    Expired,
    /// Dropped from the head by `x-max-length` / `x-max-length-bytes`, or refused by `reject-publish-dlx`.
    MaxLen,
    /// Requeued more often than `x-delivery-limit` allows.
    DeliveryLimit,
    /// Its idempotency key was already acked within the queue's window (`x-idempotency`).
    Duplicate,
}

impl DeadLetterReason {
    /// The reason as written in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::Rejected => "rejected",
            DeadLetterReason::Expired => "expired",
            DeadLetterReason::MaxLen => "maxlen",
            DeadLetterReason::DeliveryLimit => "delivery_limit",
            DeadLetterReason::Duplicate => "duplicate",
        }
    }
}

/// What owns a queue and acts on its behalf: dead-letter routing and deleting an expired queue. The vhost.
pub trait QueueOwner: Send + Sync {
    /// Routes `letters` from `queue` to its dead-letter exchange (or drops them if it has none).
    fn dead_letter(&self, queue: &Queue, letters: Vec<(MessageRef, DeadLetterReason)>);
    /// Deletes `queue`, which has been unused for its `x-expires`.
    fn expire_queue(&self, queue: &Arc<Queue>);
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

/// How deliveries are settled (basic.ack, basic.nack / basic.reject, and what a channel or a node
/// going away does with its unacked deliveries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// basic.ack: done with.
    Ack,
    /// basic.reject / nack without requeue: dead-lettered with reason `rejected` (or dropped).
    Reject,
    /// nack/reject with requeue, recover, or the channel going away: back to the queue at the original
    /// position, flagged redelivered.
    Requeue,
}

impl Settle {
    /// How a basic.nack / basic.reject settles, by its `requeue` bit.
    pub fn nack(requeue: bool) -> Self {
        if requeue {
            Settle::Requeue
        } else {
            Settle::Reject
        }
    }
}

/// A queue whose messages live on another cluster node (its home): the proxy forwards what is asked
/// of it there (`crate::cluster`'s remote queues). Every [`Queue`] operation that touches messages or
/// consumers goes through this when the queue has one ([`Queue::with_remote`]).
pub trait RemoteHome: Send + Sync + fmt::Debug {
    /// The home node's id.
    fn node(&self) -> u64;
    /// Forwards a message routed to the queue. `Rejected` when the home is down.
    fn publish(
        &self,
        queue: &Queue,
        message: MessageRef,
        own_ttl: Option<u64>,
    ) -> (PublishOutcome, Option<DurableWait>);
    /// basic.get at the home.
    fn get(&self, queue: &Arc<Queue>, no_ack: bool) -> Option<(QueuedMessage, u32)>;
    /// Settles deliveries of the queue made through this node, by sequence number.
    fn settle(&self, queue: &Queue, seqs: Vec<u64>, how: Settle);
    /// Attaches a consumer at the home; calls `on_added` (which writes basic.consume-ok) once it is
    /// attached, before handing it any delivery.
    ///
    /// # Errors
    /// As [`Queue::add_consumer`]; [`ConsumeRefused::Deleted`] when the home is down.
    fn consume(
        &self,
        queue: &Arc<Queue>,
        consumer: &Arc<Consumer>,
        on_added: &mut dyn FnMut(),
    ) -> Result<(), ConsumeRefused>;
    /// Detaches a consumer at the home.
    fn cancel(&self, queue: &Queue, consumer: &Arc<Consumer>);
    /// queue.purge at the home; the number purged.
    fn purge(&self, queue: &Queue) -> u32;
    /// The queue's counts at the home (zeros when it cannot be asked).
    fn counts(&self, queue: &Queue) -> QueueCounts;
    /// Whether the queue is replicated to every node (a quorum queue) rather than homed on one:
    /// then it has no home node ([`Queue::home`] is `None`).
    fn replicated(&self) -> bool {
        false
    }
    /// The queue was deleted on this node.
    fn deleted(&self) {}
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
    /// Consumer priority (`x-priority` on basic.consume, default 0; RabbitMQ docs/consumer-priority.md).
    pub priority: i32,
    /// Deliveries to this consumer not yet acked, for the prefetch limit.
    pub unacked: AtomicU32,
    /// The channel this consumer delivers to.
    pub sink: Arc<dyn ConsumerSink>,
    /// A filter plugin deciding what this consumer receives (`x-filter`); attached where the queue
    /// lives (`None` on a proxy: the home attaches it from `arguments`).
    pub filter: Option<plugins::ConsumerFilter>,
    /// basic.consume's arguments as the client gave them (the management API shows them; a consumer
    /// attached through another cluster node sends them to the queue's home).
    pub arguments: FieldTable,
    /// Registration number ([`next_consumer_seq`]): the consumer's place within its priority.
    pub seq: u64,
    /// Set once the queue has cancelled it (basic.cancel, channel closed, queue deleted): it takes
    /// nothing more. Starts false.
    pub cancelled: std::sync::atomic::AtomicBool,
}

impl Consumer {
    /// Marks the consumer cancelled; whether it was not already.
    fn cancel(&self) -> bool {
        !self.cancelled.swap(true, Ordering::AcqRel)
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    fn below_prefetch(&self) -> bool {
        self.no_ack
            || self.prefetch == 0
            || self.unacked.load(Ordering::Relaxed) < u32::from(self.prefetch)
    }

    fn can_take(&self) -> bool {
        !self.is_cancelled() && self.below_prefetch() && self.sink.has_capacity(self)
    }
}

/// Why a consumer could not be added.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsumeRefused {
    /// The queue has an exclusive consumer, or an exclusive consumer was asked for while others exist.
    ExclusiveInUse,
    /// The queue was deleted meanwhile.
    Deleted,
    /// The queue's home (another cluster node) could not attach the consumer's filter plugin: 404
    /// when it is not loaded there, 406 when it refuses the configuration.
    Filter(crate::error::AmqpError),
    /// A quorum queue could not attach it: no leader a majority agrees on (the reason).
    Unavailable(String),
}

/// What became of a message offered to a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Enqueued (or delivered at once).
    Enqueued,
    /// Refused by `x-overflow = reject-publish(-dlx)`: the publisher gets a confirm nack.
    Rejected,
    /// The queue was deleted meanwhile.
    Deleted,
}

struct QueueInner {
    /// The arguments Warren acts on: `arguments` parsed, with the policy in force merged in; replaced
    /// when the vhost's policies change ([`Queue::apply_policy`]).
    args: Arc<QueueArgs>,
    ready: Ready,
    next_seq: u64,
    /// Logged messages delivered and not yet settled (their segments must stay).
    outstanding: BTreeSet<u64>,
    consumers: consumers::Consumers,
    unacked: usize,
    had_consumer: bool,
    deleted: bool,
    /// Last use (consume, get, declare) for `x-expires`.
    last_used: Instant,
    /// Expiry times of ready messages with their own `expiration` (out of arrival order).
    message_deadlines: BinaryHeap<Reverse<Instant>>,
    /// Ready messages with their own `expiration`: when non-zero, expiry scans the whole ready list.
    own_expiration: usize,
    timer_started: bool,
    /// A transient queue's scratch log, opened when its memory limit is first passed.
    scratch: Option<Arc<QueueLog>>,
}

/// Counts reported by queue.declare-ok and queue.delete-ok.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages ready for delivery (not counting unacked ones), as RabbitMQ reports.
    pub messages: u32,
    /// Active consumers.
    pub consumers: u32,
    /// Delivered and not yet acknowledged.
    pub unacked: u32,
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
    /// Declare arguments as given.
    pub arguments: FieldTable,
    /// `x-single-active-consumer` (not settable by policy).
    single_active_consumer: bool,
    /// The acknowledgement timeout in force (argument or policy), ms; `u64::MAX` for none. Read
    /// without the queue lock by channels tracking deliveries.
    consumer_timeout: std::sync::atomic::AtomicU64,
    /// The name of the policy in force, if any.
    policy: arc_swap::ArcSwapOption<String>,
    /// Message counters (`/api/queues` `message_stats`): publish counts enqueues; all are written under
    /// the queue lock.
    stats: crate::stats::MessageCounters,
    owner: Weak<dyn QueueOwner>,
    /// The log of a durable queue when the broker has a data directory.
    log: Option<Arc<QueueLog>>,
    /// Where a transient queue pages its tail out ([`Queue::with_scratch`]).
    scratch_space: Option<ScratchSpace>,
    /// Wakes the expiry task when an earlier deadline appears.
    timer: Arc<Notify>,
    /// Idempotency keys (`x-idempotency`): duplicates of acked messages are not delivered.
    idempotency: Option<plugins::Idempotency>,
    /// See [`Queue::is_consumed`].
    consumed: std::sync::atomic::AtomicBool,
    inner: Mutex<QueueInner>,
    /// What the queue itself costs, in the memory alarm's entity account (its account is also the one
    /// messages read back from a scratch log charge).
    charge: Charge,
    /// In a cluster, the queue's home when it is another node: this queue is its proxy.
    remote: Option<Arc<dyn RemoteHome>>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Dead letters gathered under the queue lock, handed to the owner after it is released.
type Letters = Vec<(MessageRef, DeadLetterReason)>;

/// What a durable queue is created with: its log, what was recovered from it, and its paging limit.
#[derive(Debug)]
pub struct QueueStorage {
    /// The queue's log.
    pub log: Arc<QueueLog>,
    /// Messages found in it at start.
    pub recovered: Recovered,
    /// The previous shutdown was clean (exact `redelivered` flags for recovered messages).
    pub clean_start: bool,
    /// In-memory body octets above which new messages are paged out to the log.
    pub memory_limit: u64,
}

/// Where a transient queue pages out the messages past its memory limit, as a durable queue does to
/// its log: a scratch log in the data directory (`Store::open_scratch_log`), written but never
/// fsynced, opened when the limit is first passed.
#[derive(Debug)]
pub struct ScratchSpace {
    /// The data directory.
    pub store: Arc<crate::store::Store>,
    /// The queue's vhost (for log lines).
    pub vhost: String,
}

/// What a queue is declared as: queue.declare's name, flags and arguments (AMQP 0-9-1 §1.7.2.1).
#[derive(Debug)]
pub struct QueueDeclaration {
    /// Queue name.
    pub name: ShortString,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last consumer is cancelled (once it has had one).
    pub auto_delete: bool,
    /// Id of the owning connection for an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Declare arguments as given.
    pub arguments: FieldTable,
    /// `arguments` parsed by `QueueArgs::parse` (with any policy applied).
    pub args: QueueArgs,
}

impl QueueDeclaration {
    /// A transient, non-exclusive queue named `name` without arguments.
    pub fn transient(name: ShortString) -> Self {
        QueueDeclaration {
            name,
            durable: false,
            auto_delete: false,
            exclusive_owner: None,
            arguments: FieldTable::default(),
            args: QueueArgs::default(),
        }
    }
}

impl Queue {
    /// A new queue, empty or holding what `storage` recovered, charging `memory`. `owner` receives
    /// dead letters and expiry.
    pub fn new(
        declaration: QueueDeclaration,
        memory: Memory,
        owner: Weak<dyn QueueOwner>,
        storage: Option<QueueStorage>,
    ) -> Self {
        let QueueDeclaration {
            name,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            args,
        } = declaration;
        let levels = args.max_priority.map_or(1, |p| usize::from(p) + 1);
        let mut ready = Ready::new(levels);
        let mut next_seq = 0;
        let log = storage.map(|st| {
            next_seq = st.recovered.next_seq;
            ready.len = st.recovered.count as usize;
            ready.bytes = st.recovered.bytes;
            ready.memory_limit = st.memory_limit;
            ready.tail = Some(Tail::new(&st.log, st.recovered, st.clean_start, memory));
            ready.refill();
            st.log
        });
        let charge = Charge::new(
            memory,
            Account::Entities,
            crate::memory::QUEUE_OVERHEAD
                + name.as_str().len()
                + crate::memory::table_cost(&arguments),
        );
        Queue {
            name,
            durable,
            auto_delete,
            exclusive_owner,
            arguments,
            single_active_consumer: args.single_active_consumer,
            consumer_timeout: std::sync::atomic::AtomicU64::new(
                args.consumer_timeout.unwrap_or(u64::MAX),
            ),
            policy: arc_swap::ArcSwapOption::empty(),
            stats: crate::stats::MessageCounters::default(),
            charge,
            owner,
            log,
            scratch_space: None,
            timer: Arc::new(Notify::new()),
            idempotency: None,
            consumed: std::sync::atomic::AtomicBool::new(false),
            remote: None,
            inner: Mutex::new(QueueInner {
                args: Arc::new(args),
                ready,
                next_seq,
                outstanding: BTreeSet::new(),
                consumers: consumers::Consumers::default(),
                unacked: 0,
                had_consumer: false,
                deleted: false,
                last_used: Instant::now(),
                message_deadlines: BinaryHeap::new(),
                own_expiration: 0,
                timer_started: false,
                scratch: None,
            }),
        }
    }

    /// Makes the queue being declared the proxy of a queue homed on another cluster node: messages,
    /// consumers, gets, settlements and purges go to `home`.
    pub fn with_remote(mut self, home: Option<Arc<dyn RemoteHome>>) -> Self {
        self.remote = home;
        self
    }

    /// The home node's id when this queue is a proxy of a queue homed on another cluster node
    /// (`None` for a quorum queue: it is on every node).
    pub fn home(&self) -> Option<u64> {
        self.remote
            .as_ref()
            .filter(|r| !r.replicated())
            .map(|r| r.node())
    }

    /// Whether this is a quorum queue (replicated through the cluster's quorum group).
    pub fn is_replicated(&self) -> bool {
        self.remote.as_ref().is_some_and(|r| r.replicated())
    }

    /// The queue's counts, asked of its home when it is a proxy (queue.declare-ok's counts).
    pub fn declared_counts(&self) -> QueueCounts {
        match &self.remote {
            Some(r) => r.counts(self),
            None => self.counts(),
        }
    }

    /// Lets a transient queue being declared page its tail out to a scratch log past the store's
    /// `queue_memory_bytes` (none: it keeps everything in memory). A priority queue never pages.
    pub fn with_scratch(mut self, space: Option<ScratchSpace>) -> Self {
        if let Some(space) = space.filter(|_| self.log.is_none()) {
            crate::sync::lock(&self.inner).ready.memory_limit = space.store.queue_memory_bytes;
            self.scratch_space = Some(space);
        }
        self
    }

    /// Opens the scratch log and starts the tail of a transient queue that just passed its memory
    /// limit. Returns false (the message stays in memory) when the log cannot be opened.
    fn open_scratch(&self, inner: &mut QueueInner) -> bool {
        let Some(space) = &self.scratch_space else {
            return false;
        };
        match space
            .store
            .open_scratch_log(&space.vhost, self.name.as_str())
        {
            Ok(log) => {
                inner.ready.tail = Some(Tail::scratch(&log, self.charge.memory()));
                inner.scratch = Some(log);
                true
            }
            Err(e) => {
                tracing::error!(vhost = %space.vhost, queue = %self.name, error = %e, "cannot open a scratch log: the transient queue keeps its messages in memory");
                inner.ready.memory_limit = u64::MAX;
                false
            }
        }
    }

    /// Attaches idempotency keys (`x-idempotency`) to a queue being declared.
    pub fn with_idempotency(mut self, idempotency: Option<plugins::Idempotency>) -> Self {
        self.idempotency = idempotency;
        self
    }

    /// Idempotency keys recorded by this queue (0 without `x-idempotency`).
    pub fn idempotency_keys(&self) -> usize {
        self.idempotency
            .as_ref()
            .map_or(0, plugins::Idempotency::recorded_keys)
    }

    fn lock(&self) -> MutexGuard<'_, QueueInner> {
        // Queue operations do not panic while holding the lock; if one did, the state is still a valid
        // queue, so recover it rather than take every publisher down with the poison.
        crate::sync::lock(&self.inner)
    }

    /// The queue's log, if it is durable and the broker has a data directory.
    pub fn log(&self) -> Option<&Arc<QueueLog>> {
        self.log.as_ref()
    }

    fn hand_over(&self, letters: Letters) {
        if letters.is_empty() {
            return;
        }
        if let Some(owner) = self.owner.upgrade() {
            owner.dead_letter(self, letters);
        }
    }

    /// Ready messages and consumers.
    pub fn counts(&self) -> QueueCounts {
        // A quorum queue's counts are its replicated state's (on this node).
        if let Some(r) = self.remote.as_ref().filter(|r| r.replicated()) {
            return r.counts(self);
        }
        let inner = self.lock();
        QueueCounts {
            messages: inner.ready.len as u32,
            consumers: inner.consumers.len() as u32,
            unacked: u32::try_from(inner.unacked).unwrap_or(u32::MAX),
        }
    }

    /// What the management API shows of the queue's state: (`message_bytes`: body octets of ready
    /// messages, `memory`: an estimate of the octets it holds in memory, idle since: the last use
    /// as wall-clock ms when it has no consumers).
    pub fn usage(&self) -> (u64, u64, Option<u64>) {
        let inner = self.lock();
        let memory = crate::memory::QUEUE_OVERHEAD as u64 + inner.ready.mem_cost();
        let idle = inner.consumers.is_empty().then(|| {
            let ago = inner.last_used.elapsed().as_millis() as u64;
            crate::clock::wall_ms().saturating_sub(ago)
        });
        (inner.ready.bytes, memory, idle)
    }

    /// Whether the queue has been deleted.
    pub fn is_deleted(&self) -> bool {
        self.lock().deleted
    }

    /// Starts what a queue restored from its log needs: the expiry task, when messages came back (they
    /// may carry expiry times; like RabbitMQ, recovered messages expire when they reach the head).
    pub fn start_recovered(self: &Arc<Self>) {
        if self.lock().ready.len > 0 {
            self.ensure_timer();
            self.timer.notify_one();
        }
    }

    /// Records a use for `x-expires` (queue.declare, basic.get, basic.consume).
    pub fn touch(self: &Arc<Self>) {
        let expires = {
            let mut inner = self.lock();
            inner.last_used = Instant::now();
            inner.args.expires.is_some()
        };
        if expires {
            self.ensure_timer();
        }
    }

    /// Offers a routed message. `own_ttl` is the message's `expiration` in ms, if any.
    pub fn publish(self: &Arc<Self>, message: MessageRef, own_ttl: Option<u64>) -> PublishOutcome {
        self.publish_durable(message, own_ttl).0
    }

    /// [`Queue::publish`], also returning the log append (the queue's log and its LSN) when the
    /// message is persistent and the queue durable: a publisher confirm waits until
    /// [`QueueLog::durability`] says it is on disk.
    pub fn publish_durable(
        self: &Arc<Self>,
        message: MessageRef,
        own_ttl: Option<u64>,
    ) -> (PublishOutcome, Option<DurableWait>) {
        if let Some(r) = &self.remote {
            return r.publish(self, message, own_ttl);
        }
        let mut letters = Letters::new();
        let outcome = {
            let mut inner = self.lock();
            if inner.deleted {
                return (PublishOutcome::Deleted, None);
            }
            self.enqueue(&mut inner, message, own_ttl, &mut letters)
        };
        self.hand_over(letters);
        let (outcome, lsn) = outcome;
        let wait = lsn.and_then(|lsn| {
            let log: Arc<dyn crate::store::Durable> = Arc::clone(self.log.as_ref()?) as _;
            Some((log, lsn))
        });
        (outcome, wait)
    }

    fn over_limits(inner: &QueueInner, extra: Option<u64>) -> bool {
        let (ready, args) = (&inner.ready, &inner.args);
        let (len, bytes) = match extra {
            Some(b) => (ready.len as u64 + 1, ready.bytes + b),
            None => (ready.len as u64, ready.bytes),
        };
        args.max_length.is_some_and(|max| len > max)
            || args.max_length_bytes.is_some_and(|max| bytes > max)
    }

    /// The arguments the queue acts on: its declare arguments with the policy in force merged in.
    /// Takes the queue lock: not for callers that hold it, or a channel's lock.
    pub fn args(&self) -> Arc<QueueArgs> {
        Arc::clone(&self.lock().args)
    }

    /// The acknowledgement timeout in force (`x-consumer-timeout` or a policy's), ms.
    pub fn consumer_timeout(&self) -> Option<u64> {
        match self
            .consumer_timeout
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            u64::MAX => None,
            ms => Some(ms),
        }
    }

    /// The queue's message counters.
    pub fn stats(&self) -> &crate::stats::MessageCounters {
        &self.stats
    }

    /// Names the policy merged into the arguments at declare.
    pub fn with_policy(self, policy: Option<String>) -> Self {
        self.policy.store(policy.map(Arc::new));
        self
    }

    /// The name of the policy in force (`policy` in the management API), if any.
    pub fn policy(&self) -> Option<Arc<String>> {
        self.policy.load_full()
    }

    /// Puts `args` (the declare arguments re-merged with the vhost's current policy `policy`) in
    /// force, as RabbitMQ does when a policy is added, changed or deleted: a lower `max-length` or
    /// `max-length-bytes` drops (and dead-letters) the oldest messages now when the overflow is
    /// `drop-head`, a new `expires` starts counting from the last use; `message-ttl` applies to
    /// messages enqueued from now on.
    pub fn apply_policy(self: &Arc<Self>, args: QueueArgs, policy: Option<String>) {
        self.policy.store(policy.map(Arc::new));
        self.consumer_timeout.store(
            args.consumer_timeout.unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut letters = Letters::new();
        {
            let mut inner = self.lock();
            inner.args = Arc::new(args);
            if inner.deleted {
                return;
            }
            if inner.args.overflow == Overflow::DropHead {
                self.drop_over_limits(&mut inner, &mut letters);
            }
            self.ensure_timer_locked(&mut inner);
        }
        self.timer.notify_one();
        self.hand_over(letters);
    }

    /// Drops the oldest ready messages while the queue is over its length limits (drop-head).
    fn drop_over_limits(&self, inner: &mut QueueInner, letters: &mut Letters) {
        while Self::over_limits(inner, None) {
            let Some(m) = inner.ready.pop_oldest() else {
                break;
            };
            self.forget_expiration(inner, &m);
            self.log_acks(inner, [&m]);
            letters.push((m.message, DeadLetterReason::MaxLen));
        }
    }

    fn enqueue(
        self: &Arc<Self>,
        inner: &mut QueueInner,
        message: MessageRef,
        own_ttl: Option<u64>,
        letters: &mut Letters,
    ) -> (PublishOutcome, Option<u64>) {
        let overflow = inner.args.overflow;
        if overflow != Overflow::DropHead && Self::over_limits(inner, Some(message.body_size())) {
            if overflow == Overflow::RejectPublishDlx {
                letters.push((message, DeadLetterReason::MaxLen));
            }
            return (PublishOutcome::Rejected, None);
        }
        let now = Instant::now();
        let ttl = match (inner.args.message_ttl, own_ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at = ttl.map(|ms| now + Duration::from_millis(ms));
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let own = own_ttl.is_some();
        let persistent = message.is_persistent();
        let size = message.body_size();
        let page = inner.ready.should_page(size)
            || (inner.ready.needs_scratch(size) && self.open_scratch(inner));
        // Persistence means something only in a durable queue's log: a durable queue writes its
        // persistent and its paged messages there, a transient queue its paged ones to its scratch log.
        let logged = persistent && self.log.is_some();
        let log = match &self.log {
            Some(log) => Some(log).filter(|_| persistent || page),
            None => inner.scratch.as_ref().filter(|_| page),
        };
        let mut lsn = None;
        if let Some(log) = log {
            let appended = log.append_publish(&PublishRef {
                seq,
                persistent: logged,
                expires_at: ttl.map_or(0, |ms| crate::clock::wall_ms() + ms.max(1)),
                exchange: message.exchange.as_str().as_bytes(),
                routing_key: message.routing_key.as_str().as_bytes(),
                properties: &message.raw_properties,
                body: &message.body,
            });
            lsn = logged.then_some(appended);
        }
        if page {
            inner.ready.push_paged(seq, size, logged);
        } else {
            inner.ready.push_back(QueuedMessage {
                seq,
                message,
                redelivered: false,
                expires_at,
                delivery_count: 0,
                logged: lsn.is_some(),
            });
        }
        if own {
            inner.own_expiration += 1;
        }
        crate::stats::add_local(&self.stats.publish, 1);
        self.drop_over_limits(inner, letters);
        self.dispatch_at(inner, now, letters);
        if let Some(deadline) = expires_at {
            if ttl == Some(0) {
                // TTL 0: delivered now or never (RabbitMQ docs/ttl.md).
                self.expire(inner, now, letters);
            } else {
                if own {
                    inner.message_deadlines.push(Reverse(deadline));
                }
                self.ensure_timer_locked(inner);
                self.timer.notify_one();
            }
        }
        (PublishOutcome::Enqueued, lsn)
    }

    /// A hint, read without the queue's lock: whether the queue has consumers taking its messages in
    /// order (none with a filter, no idempotency keys). A message published to a queue without waits
    /// for a consumer for an unknown time, so the publish path copies a small one out of the read
    /// buffer it arrived in ([`crate::content`]); with consumers, messages leave in the order they
    /// came, and a read buffer's messages are freed together.
    pub fn is_consumed(&self) -> bool {
        self.consumed.load(Ordering::Relaxed)
    }

    fn update_consumed(&self, inner: &QueueInner) {
        let consumed = !inner.consumers.is_empty()
            && !inner.consumers.any_filtered()
            && self.idempotency.is_none();
        self.consumed.store(consumed, Ordering::Relaxed);
    }

    /// Dispatches after capacity was freed elsewhere (an ack, a drained write buffer, qos).
    pub fn kick(self: &Arc<Self>) {
        let mut letters = Letters::new();
        {
            let mut inner = self.lock();
            self.dispatch(&mut inner, &mut letters);
        }
        self.hand_over(letters);
    }

    /// basic.get: takes the next message. Returns it and the number still ready.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        if let Some(r) = &self.remote {
            return r.get(self, no_ack);
        }
        let mut letters = Letters::new();
        let got = {
            let mut inner = self.lock();
            inner.last_used = Instant::now();
            self.expire(&mut inner, Instant::now(), &mut letters);
            let got = match &self.idempotency {
                None => inner.ready.pop_front(),
                Some(idem) => self.next_by_key(&mut inner, idem, no_ack, &mut letters),
            };
            if let Some(m) = &got {
                self.stats.delivered(false, no_ack, m.redelivered);
                self.forget_expiration(&mut inner, m);
                if !no_ack {
                    inner.unacked += 1;
                }
                self.log_delivery(&mut inner, m, no_ack);
            }
            got.map(|mut m| {
                m.delivery_count += 1;
                (m, inner.ready.len as u32)
            })
        };
        self.hand_over(letters);
        got
    }

    /// Settles deliveries of this queue `how` ([`Queue::settle`], [`Queue::reject`],
    /// [`Queue::requeue`]).
    pub fn settle_as(self: &Arc<Self>, how: Settle, messages: Vec<QueuedMessage>) {
        match how {
            Settle::Ack => self.settle(&messages),
            Settle::Reject => self.reject(messages),
            Settle::Requeue => self.requeue(messages),
        }
    }

    /// Acknowledges deliveries of this queue and dispatches into the freed capacity.
    pub fn settle(self: &Arc<Self>, messages: &[QueuedMessage]) {
        if let Some(r) = &self.remote {
            return r.settle(self, messages.iter().map(|m| m.seq).collect(), Settle::Ack);
        }
        let mut letters = Letters::new();
        {
            let mut inner = self.lock();
            crate::stats::add_local(&self.stats.ack, messages.len() as u64);
            inner.unacked = inner.unacked.saturating_sub(messages.len());
            if let Some(idem) = &self.idempotency {
                idem.acked(messages.iter().map(|m| m.seq));
            }
            self.forget_outstanding(&mut inner, messages);
            if !inner.deleted {
                self.log_acks(&mut inner, messages);
            }
            self.dispatch(&mut inner, &mut letters);
        }
        self.hand_over(letters);
    }

    /// Settles rejected deliveries (`requeue = false`): they are dead-lettered with reason `rejected`.
    pub fn reject(self: &Arc<Self>, messages: Vec<QueuedMessage>) {
        if let Some(r) = &self.remote {
            return r.settle(
                self,
                messages.iter().map(|m| m.seq).collect(),
                Settle::Reject,
            );
        }
        let mut letters = Letters::new();
        {
            let mut inner = self.lock();
            inner.unacked = inner.unacked.saturating_sub(messages.len());
            if let Some(idem) = &self.idempotency {
                idem.returned(messages.iter().map(|m| m.seq));
            }
            self.forget_outstanding(&mut inner, &messages);
            if !inner.deleted {
                self.log_acks(&mut inner, &messages);
                letters.extend(
                    messages
                        .into_iter()
                        .map(|m| (m.message, DeadLetterReason::Rejected)),
                );
            }
            self.dispatch(&mut inner, &mut letters);
        }
        self.hand_over(letters);
    }

    /// Puts unacked messages back at their original positions, flagged redelivered, and dispatches. A
    /// message past `x-delivery-limit` is dead-lettered instead.
    pub fn requeue(self: &Arc<Self>, messages: impl IntoIterator<Item = QueuedMessage>) {
        if let Some(r) = &self.remote {
            return r.settle(
                self,
                messages.into_iter().map(|m| m.seq).collect(),
                Settle::Requeue,
            );
        }
        let mut letters = Letters::new();
        {
            let mut inner = self.lock();
            for mut m in messages {
                inner.unacked = inner.unacked.saturating_sub(1);
                if let Some(idem) = &self.idempotency {
                    idem.returned([m.seq]);
                }
                if inner.deleted {
                    continue;
                }
                if m.logged {
                    inner.outstanding.remove(&m.seq);
                }
                if inner
                    .args
                    .delivery_limit
                    .is_some_and(|limit| m.delivery_count > limit)
                {
                    self.log_acks(&mut inner, [&m]);
                    letters.push((m.message, DeadLetterReason::DeliveryLimit));
                    continue;
                }
                m.redelivered = true;
                if m.message.properties.expiration().is_some() && m.expires_at.is_some() {
                    inner.own_expiration += 1;
                }
                inner.ready.insert_by_seq(m);
            }
            self.expire(&mut inner, Instant::now(), &mut letters);
            self.dispatch(&mut inner, &mut letters);
        }
        self.hand_over(letters);
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
        if let Some(r) = &self.remote {
            // Registered here first (a deletion cancels it; deliveries find it), then at the home.
            {
                let mut inner = self.lock();
                if inner.deleted {
                    return Err(ConsumeRefused::Deleted);
                }
                inner.consumers.insert(Arc::clone(&consumer));
            }
            let mut on_added = Some(on_added);
            let mut once = || {
                if let Some(f) = on_added.take() {
                    f();
                }
            };
            if let Err(refused) = r.consume(self, &consumer, &mut once) {
                self.lock().consumers.remove(&consumer);
                return Err(refused);
            }
            once();
            return Ok(());
        }
        let mut letters = Letters::new();
        {
            let mut inner = self.lock();
            if inner.deleted {
                return Err(ConsumeRefused::Deleted);
            }
            // An exclusive consumer is always alone, so the first one tells (O(1) per consumer: a
            // scan here made registering n consumers O(n²)).
            if let Some(first) = inner.consumers.first_live() {
                if consumer.exclusive || inner.consumers.get(first).exclusive {
                    return Err(ConsumeRefused::ExclusiveInUse);
                }
            }
            inner.consumers.insert(consumer);
            self.update_consumed(&inner);
            inner.had_consumer = true;
            inner.last_used = Instant::now();
            on_added();
            self.dispatch(&mut inner, &mut letters);
        }
        self.hand_over(letters);
        Ok(())
    }

    /// Removes a consumer. Returns true when this was the last consumer of an auto-delete queue, which
    /// the caller must then delete (RabbitMQ docs/queues.md "auto-delete"). With a single active consumer
    /// the next one in line takes over.
    pub fn remove_consumer(self: &Arc<Self>, consumer: &Arc<Consumer>) -> bool {
        if let Some(r) = &self.remote {
            // The home decides about auto-delete.
            self.lock().consumers.remove(consumer);
            r.cancel(self, consumer);
            return false;
        }
        let mut letters = Letters::new();
        let last = {
            let mut inner = self.lock();
            inner.consumers.remove(consumer);
            self.update_consumed(&inner);
            inner.last_used = Instant::now();
            self.dispatch(&mut inner, &mut letters);
            self.auto_delete && inner.had_consumer && inner.consumers.is_empty() && !inner.deleted
        };
        self.hand_over(letters);
        self.timer.notify_one();
        last
    }

    /// Removes all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        if let Some(r) = &self.remote {
            return r.purge(self);
        }
        let mut inner = self.lock();
        inner.own_expiration = 0;
        inner.message_deadlines.clear();
        let next_seq = inner.next_seq;
        let (n, memory, paged) = inner.ready.clear(next_seq);
        self.log_acks(&mut inner, &memory);
        if let (Some(log), Some(r)) = (&self.log, paged) {
            log.append_ack(r.first, r.last, r.count, r.bytes);
        }
        n as u32
    }

    /// Marks the queue deleted, drops its ready messages and detaches its consumers (which are returned so
    /// the caller can notify them). Returns the number of ready messages dropped.
    pub fn delete(&self) -> (u32, Vec<Arc<Consumer>>) {
        if let Some(r) = &self.remote {
            r.deleted();
        }
        let mut inner = self.lock();
        inner.deleted = true;
        let next_seq = inner.next_seq;
        let n = inner.ready.clear(next_seq).0 as u32;
        if let Some(log) = inner.scratch.take() {
            inner.ready.tail = None;
            log.destroy();
        }
        self.timer.notify_one();
        let consumers = inner.consumers.take_all();
        self.update_consumed(&inner);
        (n, consumers)
    }
}
