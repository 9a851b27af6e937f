//! Quorum queues (`x-queue-type: quorum`, RabbitMQ docs/quorum-queues): queues whose messages,
//! consumers and settlements go through a Raft log replicated to the cluster's members, so that a
//! confirmed message survives the loss of any minority of nodes.
//!
//! **One Raft group for all quorum queues.** A second openraft group (beside the metadata one), with
//! the cluster's members, carries every quorum queue's operations ([`state::Op`]), batched: each
//! node collects what its clients ask (publishes, consumes, settlements, gets) and proposes them as
//! one entry, up to [`IN_FLIGHT`] batches at a time, appended in the order they were sent (so a
//! channel's publishes keep their order); the leader appends the entries of all nodes and fsyncs
//! its log once per round for all of them, and replicates them to each peer in one AppendEntries:
//! RabbitMQ's shared write-ahead log has the same effect. Every node applies the log to the same [`state::State`]; a publisher confirm waits
//! until the batch is committed (on disk on a majority). Differences from RabbitMQ (one group per
//! queue): every quorum queue's leader is the group's leader, and its members are all the
//! cluster's voters (`x-quorum-initial-group-size` is accepted and capped by the cluster size).
//!
//! **Deliveries are decided by the state** (round-robin within each consumer's prefetch), so every
//! member knows which message is checked out to which consumer: the node of that consumer delivers
//! it when it applies the entry, wherever the leader is, and consumers carry on across a change of
//! leader. A node whose link is lost (or that restarts) has its consumers removed by an
//! [`state::Op::NodeDown`] that whoever saw it go proposes; what they held returns to the queue,
//! flagged redelivered, and the node cancels those consumers (consumer-cancel notification) if it
//! comes back. A publish whose batch's fate is not known (its leader died with it in flight) is
//! nacked; settlements are retried (they are idempotent).
//!
//! **Storage**: the group's log, vote and snapshot in `DATA_DIR/cluster/quorum/` (`raft.rs`'s
//! format); the state lives in memory, rebuilt at start from the last snapshot and the log after it.

pub(crate) mod codec;
mod home;
pub(crate) mod state;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub(crate) use self::home::QuorumHome;
use self::state::{ConsumerKey, Effect, Msg, Op, OpResult, QueueId, State};
use super::link::NodeId;
use super::raft;
use super::wire::Request;
use super::{Cluster, Command, Consensus, Proposal};
use crate::queue::{Consumer, Queue, QueueOwner, QueuedMessage};
use crate::store::{Durability, Durable};
use crate::sync::lock;

/// Most operations in one proposed batch.
const BATCH_OPS: usize = 1024;
/// Most body octets in one proposed batch.
const BATCH_BYTES: usize = 1 << 20;
/// How long a forwarded batch waits for a leader to be known before its publishes are nacked.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one attempt at the leader may take (a forwarded batch; a leader that stopped answering
/// is replaced by an election well within it).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a batch appended on this node (the leader) may take to be committed before its fate
/// counts as unknown (a leader that loses its leadership fails its batches at once).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consume, get or purge waits for its result.
const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Times an idempotent operation (settlement, cancel, node-down) is proposed again after a failure.
const RETRIES: u32 = 30;

/// A batch of quorum-queue operations: one entry of the quorum group's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Batch {
    /// The operations, applied in order.
    pub ops: Vec<Op>,
}

/// The leader's answer to a batch forwarded to it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum BatchReply {
    /// Committed; each operation's result.
    Done(Vec<OpResult>),
    /// Not appended: this node does not lead (the leader it knows).
    NotLeader(Option<NodeId>),
    /// Its fate is not known (appended perhaps, not known to be committed).
    Failed(String),
}

/// What waits for an operation's result.
enum Waiter {
    /// Nothing (a settlement, cancel or node-down: retried on failure).
    Retry(u32),
    /// A publish, by its number in [`Published`].
    Publish(u64),
    /// A consume, get or purge.
    Result(std::sync::mpsc::SyncSender<Option<OpResult>>),
}

struct Submitted {
    op: Op,
    waiter: Waiter,
}

/// The publishes of this node to quorum queues, by number: a publisher confirm waits on this.
#[derive(Debug, Default)]
pub(crate) struct Published {
    /// The last number handed out; held while a publish is submitted, so numbers are in order.
    next: Mutex<u64>,
    /// Everything up to here is settled (committed, or failed if in `failed`).
    settled: AtomicU64,
    any_failed: AtomicBool,
    failed: Mutex<BTreeSet<u64>>,
}

impl Durable for Published {
    fn durability(&self, n: u64) -> Durability {
        if self.settled.load(Ordering::Acquire) < n {
            return Durability::Pending;
        }
        if self.any_failed.load(Ordering::Acquire) && lock(&self.failed).contains(&n) {
            Durability::Failed
        } else {
            Durability::Durable
        }
    }
}

/// Batches sent and not yet seen committed, at most.
const IN_FLIGHT: usize = 4;

/// A batch sent (appended here, or forwarded to the leader), waiting for its outcome.
struct InFlight {
    batch: Vec<Submitted>,
    outcome: std::pin::Pin<Box<dyn std::future::Future<Output = Result<Results, String>> + Send>>,
}

/// A batch forwarded to this node (the leader), and where its answer goes.
type Forwarded = (Proposal, tokio::sync::oneshot::Sender<BatchReply>);

/// A batch of what waits in `rx` after `first`, bounded by [`BATCH_OPS`] and [`BATCH_BYTES`];
/// settlements of one queue are merged into one operation (they commute with everything else in
/// the batch: they only touch messages already checked out).
fn collect(first: Submitted, rx: &mut mpsc::UnboundedReceiver<Submitted>) -> Vec<Submitted> {
    let mut batch: Vec<Submitted> = Vec::new();
    let mut settles: HashMap<(QueueId, state::How, Option<u32>, u64), usize> = HashMap::new();
    let mut bytes = 0usize;
    let mut next = Some(first);
    while let Some(s) = next {
        let merge_into = match &s.op {
            Op::Enqueue { content, .. } => {
                bytes += content.body.len();
                None
            }
            Op::Settle {
                queue,
                how,
                delivery_limit,
                incarnation,
                ..
            } => {
                let k = (queue.clone(), *how, *delivery_limit, *incarnation);
                let at = settles.get(&k).copied();
                if at.is_none() {
                    settles.insert(k, batch.len());
                }
                at
            }
            _ => None,
        };
        match merge_into {
            Some(at) => {
                if let (Op::Settle { ids: into, .. }, Op::Settle { ids, .. }) =
                    (&mut batch[at].op, &s.op)
                {
                    into.extend_from_slice(ids);
                }
            }
            None => batch.push(s),
        }
        next = (batch.len() < BATCH_OPS && bytes < BATCH_BYTES)
            .then(|| rx.try_recv().ok())
            .flatten();
    }
    batch
}

/// A batch's results, in the order of its operations.
type Results = Vec<OpResult>;

/// A consumer of this node attached to a quorum queue.
struct LocalConsumer {
    id: QueueId,
    queue: Arc<Queue>,
    consumer: Arc<Consumer>,
    /// Deliveries held back until the consumer's consume-ok is written.
    held: Option<Vec<Msg>>,
    /// Handed to the channel and not yet settled through this node (not kept for no-ack
    /// consumers): after a snapshot is installed, what the state checked out to the consumer
    /// beyond these was never delivered here.
    handed: BTreeSet<u64>,
}

/// The quorum queues of this node. See the module docs.
pub(crate) struct Quorum {
    cluster: Weak<Cluster>,
    me: NodeId,
    /// This process (see [`ConsumerKey`]).
    incarnation: u64,
    raft: OnceLock<raft::Raft>,
    state: Mutex<State>,
    consumers: Mutex<HashMap<u64, LocalConsumer>>,
    next_consumer: AtomicU64,
    submit: mpsc::UnboundedSender<Submitted>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Submitted>>>,
    /// Batches forwarded to this node, appended in arrival order ([`Quorum::lead`]).
    forwarded: mpsc::UnboundedSender<Forwarded>,
    forwarded_receiver: Mutex<Option<mpsc::UnboundedReceiver<Forwarded>>>,
    published: Arc<Published>,
    /// Results of batches being committed through this node, by (origin, request).
    awaiting: Mutex<HashMap<(NodeId, u64), Option<Results>>>,
    next_request: AtomicU64,
    me_weak: Weak<Quorum>,
}

impl std::fmt::Debug for Quorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quorum")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl Quorum {
    pub(super) fn new(cluster: Weak<Cluster>, me: NodeId) -> Arc<Quorum> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ftx, frx) = mpsc::unbounded_channel();
        Arc::new_cyclic(|w| Quorum {
            forwarded: ftx,
            forwarded_receiver: Mutex::new(Some(frx)),
            cluster,
            me,
            incarnation: rand::random::<u64>() >> 1,
            raft: OnceLock::new(),
            state: Mutex::new(State::default()),
            consumers: Mutex::new(HashMap::new()),
            next_consumer: AtomicU64::new(0),
            submit: tx,
            receiver: Mutex::new(Some(rx)),
            published: Arc::new(Published::default()),
            awaiting: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(rand::random::<u64>() >> 1),
            me_weak: w.clone(),
        })
    }

    /// Opens the group's storage in `dir` and starts its engine and proposer. The group is
    /// initialised with `members` when it has no state yet and this node does not join.
    pub(super) async fn start(
        self: &Arc<Self>,
        dir: &std::path::Path,
        links: Arc<super::link::Links>,
        members: Option<std::collections::BTreeMap<NodeId, super::Member>>,
    ) -> anyhow::Result<()> {
        use anyhow::Context;
        let log =
            raft::LogStore::open_binary(dir).context("opening the quorum queues' Raft log")?;
        let apply: Arc<dyn raft::Apply> = Arc::new(Applier(self.me_weak.clone()));
        let sm = raft::StateMachine::open_volatile(dir, apply, Arc::default())
            .context("opening the quorum queues' Raft state")?;
        let network = raft::Network {
            links,
            group: raft::Group::Quorum,
        };
        let r = raft::Raft::new(self.me, raft::quorum_config()?, network, log, sm)
            .await
            .context("starting the quorum queues' Raft group")?;
        if let Some(members) = members {
            if !r.is_initialized().await.unwrap_or(true) {
                if let Err(e) = r.initialize(members).await {
                    debug!(error = %e, "quorum group already initialised");
                }
            }
        }
        let _ = self.raft.set(r);
        if let Some(rx) = lock(&self.receiver).take() {
            tokio::spawn(Arc::clone(self).propose_batches(rx));
        }
        if let Some(rx) = lock(&self.forwarded_receiver).take() {
            tokio::spawn(Arc::clone(self).append_forwarded(rx));
        }
        // This process's consumers are new: whatever an earlier one had is returned.
        self.send(
            Op::NodeDown {
                node: self.me,
                keep: Some(self.incarnation),
                upto: u64::MAX,
            },
            Waiter::Retry(RETRIES),
        );
        tokio::spawn(Arc::clone(self).keep_membership());
        Ok(())
    }

    /// The group's engine (once started).
    pub(super) fn raft(&self) -> Option<&raft::Raft> {
        self.raft.get()
    }

    /// The group's leader as this node knows it.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.raft.get().and_then(Consensus::leader)
    }

    /// The group's members (voters) and the leader's commit index and term, as this node knows them.
    pub(crate) fn status(&self) -> (Vec<NodeId>, Option<NodeId>, u64, u64) {
        let Some(r) = self.raft.get() else {
            return (Vec::new(), None, 0, 0);
        };
        let m = r.metrics().borrow().clone();
        let voters = m.membership_config.membership().voter_ids().collect();
        (
            voters,
            m.current_leader,
            m.last_applied.map_or(0, |l| l.index),
            m.current_term,
        )
    }

    /// The key of this node's consumer `id`.
    fn key(&self, id: u64) -> ConsumerKey {
        ConsumerKey {
            node: self.me,
            incarnation: self.incarnation,
            id,
        }
    }

    /// A queue's replicated state, read through `f`.
    pub(crate) fn read<T>(
        &self,
        queue: &QueueId,
        f: impl FnOnce(Option<&state::QueueState>) -> T,
    ) -> T {
        f(lock(&self.state).queue(queue))
    }

    fn send(&self, op: Op, waiter: Waiter) {
        let _ = self.submit.send(Submitted { op, waiter });
    }

    /// Submits `op` and waits for its result (`None`: not committed in time).
    fn call(&self, op: Op) -> Option<OpResult> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.send(op, Waiter::Result(tx));
        crate::sync::wait_off_worker(|| rx.recv_timeout(WAIT_TIMEOUT).ok().flatten())
    }

    /// Submits a publish; what its confirm waits on.
    fn publish(&self, op: Op) -> (Arc<dyn Durable>, u64) {
        let mut next = lock(&self.published.next);
        *next += 1;
        let n = *next;
        self.send(op, Waiter::Publish(n));
        drop(next);
        (Arc::clone(&self.published) as Arc<dyn Durable>, n)
    }

    /// The proposer: batches are sent as they come, up to [`IN_FLIGHT`] at a time, and completed
    /// in order. On the leader they are handed to openraft (which appends them in the order
    /// given); elsewhere they are forwarded to the leader over the one link, where one task
    /// appends what arrives in arrival order ([`Quorum::lead`]), so a channel's publishes keep
    /// their order either way.
    async fn propose_batches(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Submitted>) {
        let mut in_flight: std::collections::VecDeque<InFlight> = std::collections::VecDeque::new();
        loop {
            let first = if in_flight.is_empty() {
                match rx.recv().await {
                    Some(s) => Some(s),
                    None => return,
                }
            } else if in_flight.len() < IN_FLIGHT {
                rx.try_recv().ok()
            } else {
                None
            };
            let Some(first) = first else {
                if let Some(f) = in_flight.pop_front() {
                    self.complete(f).await;
                }
                continue;
            };
            let batch = collect(first, &mut rx);
            if let Some(f) = self.dispatch(batch).await {
                in_flight.push_back(f);
            }
        }
    }

    /// Sends a batch to the leader (here or over the link) once one is known (within
    /// [`PROPOSE_TIMEOUT`]: else its publishes are nacked).
    async fn dispatch(self: &Arc<Self>, batch: Vec<Submitted>) -> Option<InFlight> {
        let Some(c) = self.cluster.upgrade() else {
            self.finish(batch, Err("shutting down".into()));
            return None;
        };
        let proposal = Proposal {
            origin: self.me,
            request: self.next_request.fetch_add(1, Ordering::Relaxed),
            command: Command::Quorum(Batch {
                ops: batch.iter().map(|s| s.op.clone()).collect(),
            }),
        };
        let key = (proposal.origin, proposal.request);
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        loop {
            match self.leader() {
                Some(l) if l == self.me => {
                    let Some(r) = self.raft.get() else {
                        break;
                    };
                    lock(&self.awaiting).insert(key, None);
                    return match r.client_write_ff(proposal).await {
                        Ok(rx) => {
                            let me = Arc::clone(self);
                            Some(InFlight {
                                batch,
                                outcome: Box::pin(async move {
                                    me.outcome(key, matches!(rx.await, Ok(Ok(_))))
                                }),
                            })
                        }
                        Err(e) => {
                            lock(&self.awaiting).remove(&key);
                            self.finish(batch, Err(e.to_string()));
                            None
                        }
                    };
                }
                // Not sent while the link to the leader is down: an election is coming.
                Some(l) if c.links.is_up(l) => {
                    let body = Request::QuorumPropose(proposal).encode();
                    return match c.links.request_now(l, &body) {
                        Ok(rx) => Some(InFlight {
                            batch,
                            outcome: Box::pin(async move {
                                let bytes = tokio::time::timeout(ATTEMPT_TIMEOUT, rx)
                                    .await
                                    .map_err(|_| format!("node {l} did not answer in time"))?
                                    .map_err(|_| format!("link to node {l} lost"))?;
                                match serde_json::from_slice(&bytes) {
                                    Ok(BatchReply::Done(results)) => Ok(results),
                                    Ok(BatchReply::NotLeader(_)) => Err("not the leader".into()),
                                    Ok(BatchReply::Failed(why)) => Err(why),
                                    Err(e) => Err(e.to_string()),
                                }
                            }),
                        }),
                        Err(e) => {
                            self.finish(batch, Err(e.to_string()));
                            None
                        }
                    };
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.finish(batch, Err("no quorum queue leader".into()));
        None
    }

    /// Waits for a sent batch's outcome (bounded) and tells its waiters.
    async fn complete(&self, f: InFlight) {
        let outcome = tokio::time::timeout(COMMIT_TIMEOUT, f.outcome)
            .await
            .unwrap_or_else(|_| Err("not known to be committed in time".into()));
        self.finish(f.batch, outcome);
    }

    /// On the leader: a batch forwarded by another node, appended after the ones that arrived
    /// before it (the link handler calls this in arrival order, before it returns), answered once
    /// committed and applied here.
    pub(super) fn lead(
        &self,
        proposal: Proposal,
    ) -> impl std::future::Future<Output = BatchReply> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let _ = self.forwarded.send((proposal, tx));
        async move {
            rx.await
                .unwrap_or_else(|_| BatchReply::Failed("shutting down".into()))
        }
    }

    /// The task behind [`Quorum::lead`]: appends forwarded batches one after another.
    async fn append_forwarded(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Forwarded>) {
        while let Some((proposal, reply)) = rx.recv().await {
            let Some(r) = self.raft.get() else {
                let _ = reply.send(BatchReply::NotLeader(None));
                continue;
            };
            if Consensus::leader(r) != Some(self.me) {
                let _ = reply.send(BatchReply::NotLeader(Consensus::leader(r)));
                continue;
            }
            let key = (proposal.origin, proposal.request);
            lock(&self.awaiting).insert(key, None);
            match r.client_write_ff(proposal).await {
                Ok(committed) => {
                    let me = Arc::clone(&self);
                    tokio::spawn(async move {
                        let ok = matches!(
                            tokio::time::timeout(COMMIT_TIMEOUT, committed).await,
                            Ok(Ok(Ok(_)))
                        );
                        let _ = reply.send(match me.outcome(key, ok) {
                            Ok(results) => BatchReply::Done(results),
                            Err(why) => BatchReply::Failed(why),
                        });
                    });
                }
                Err(e) => {
                    lock(&self.awaiting).remove(&key);
                    let _ = reply.send(BatchReply::Failed(e.to_string()));
                }
            }
        }
    }

    /// A batch appended here (`key`), once openraft says whether it was committed: its results, as
    /// this node's apply left them.
    fn outcome(&self, key: (NodeId, u64), committed: bool) -> Result<Results, String> {
        let results = lock(&self.awaiting).remove(&key).flatten();
        match (committed, results) {
            (true, Some(r)) => Ok(r),
            (true, None) => Err("committed, results not known".into()),
            (false, _) => Err("not known to be committed".into()),
        }
    }

    /// Tells each waiter of a batch its operation's fate.
    fn finish(&self, batch: Vec<Submitted>, outcome: Result<Vec<OpResult>, String>) {
        let mut last_publish = None;
        let mut failed = Vec::new();
        let results = match outcome {
            Ok(r) => r.into_iter().map(Some).collect(),
            Err(why) => {
                warn!(error = %why, operations = batch.len(), "quorum queues: batch not committed; its publishes are nacked");
                vec![None; batch.len()]
            }
        };
        for (s, result) in batch.into_iter().zip(results) {
            match s.waiter {
                Waiter::Publish(n) => {
                    last_publish = Some(n);
                    if !matches!(result, Some(OpResult::Ok)) {
                        failed.push(n);
                    }
                }
                Waiter::Result(tx) => {
                    let _ = tx.try_send(result);
                }
                Waiter::Retry(left) => {
                    if result.is_none() && left > 0 {
                        self.send(s.op, Waiter::Retry(left - 1));
                    }
                }
            }
        }
        if let Some(n) = last_publish {
            if !failed.is_empty() {
                lock(&self.published.failed).extend(failed);
                self.published.any_failed.store(true, Ordering::Release);
            }
            self.published.settled.fetch_max(n, Ordering::AcqRel);
            if let Some(store) = self
                .cluster
                .upgrade()
                .and_then(|c| c.broker())
                .and_then(|b| b.store.clone())
            {
                store.notify_commits();
            }
        }
    }

    /// Applies a committed batch: the state, then what it asks of this node.
    fn apply(&self, proposal: &Proposal) {
        let Command::Quorum(batch) = &proposal.command else {
            return;
        };
        let mut effects = Vec::new();
        let results: Vec<OpResult> = {
            let mut s = lock(&self.state);
            batch
                .ops
                .iter()
                .map(|op| s.apply(op, &mut effects))
                .collect()
        };
        if let Some(slot) = lock(&self.awaiting).get_mut(&(proposal.origin, proposal.request)) {
            *slot = Some(results);
        }
        if proposal.origin == self.me {
            self.settled_here(&batch.ops);
        }
        if !effects.is_empty() {
            self.run(effects);
        }
    }

    fn run(&self, effects: Vec<Effect>) {
        let broker = self.cluster.upgrade().and_then(|c| c.broker());
        let leads = self.leader() == Some(self.me);
        for e in effects {
            match e {
                Effect::Deliver(queue, key, m) => {
                    if key.node == self.me && key.incarnation == self.incarnation {
                        self.deliver(queue, key.id, m, broker.as_deref());
                    }
                }
                Effect::DeadLetter((vhost, name), content, reason) if leads => {
                    let Some(b) = broker.as_deref() else { continue };
                    let Some(v) = b.vhost(&vhost) else { continue };
                    let Some(q) = v.queue_by_name(&name) else {
                        continue;
                    };
                    let message = home::message(b, &content);
                    v.dead_letter(&q, vec![(message, reason)]);
                }
                Effect::DeadLetter(..) => {}
                Effect::Removed(_, key) => {
                    if key.node == self.me && key.incarnation == self.incarnation {
                        self.cancel_local(key.id);
                    }
                }
            }
        }
    }

    /// Cancels this node's consumer `id`, which the replicated state no longer has (its node was
    /// seen down): consumer-cancel notification to its client.
    fn cancel_local(&self, id: u64) {
        let gone = lock(&self.consumers).remove(&id);
        if let Some(lc) = gone {
            info!(queue = %lc.queue.name, consumer = %lc.consumer.tag, "quorum queue consumer removed by the cluster (its node was seen down): cancelled");
            lc.queue.remove_consumer(&lc.consumer);
            lc.consumer.sink.cancelled(&lc.consumer);
        }
    }

    /// Hands `m` to this node's consumer `id` (held back until its consume-ok is out).
    fn deliver(&self, queue: QueueId, id: u64, m: Msg, broker: Option<&crate::broker::Broker>) {
        let target = {
            let mut consumers = lock(&self.consumers);
            match consumers.get_mut(&id) {
                Some(LocalConsumer {
                    held: Some(held), ..
                }) => {
                    held.push(m);
                    return;
                }
                Some(lc) => {
                    if !lc.consumer.no_ack {
                        lc.handed.insert(m.id);
                    }
                    Some((Arc::clone(&lc.queue), Arc::clone(&lc.consumer)))
                }
                None => None,
            }
        };
        match (target, broker) {
            (Some((q, c)), Some(b)) => hand(b, &q, &c, m),
            _ => {
                // Cancelled meanwhile: back to the queue.
                self.send(
                    Op::Settle {
                        queue,
                        node: self.me,
                        incarnation: self.incarnation,
                        ids: vec![m.id],
                        how: state::How::Requeue,
                        delivery_limit: None,
                    },
                    Waiter::Retry(RETRIES),
                );
            }
        }
    }

    /// This node's settlements in `ops`, now applied: their messages are no longer held by its
    /// consumers (kept until then: a snapshot installed meanwhile still shows them checked out).
    fn settled_here(&self, ops: &[Op]) {
        let mut consumers = None;
        for op in ops {
            if let Op::Settle {
                queue,
                node,
                incarnation,
                ids,
                ..
            } = op
            {
                if *node != self.me || *incarnation != self.incarnation {
                    continue;
                }
                let consumers = consumers.get_or_insert_with(|| lock(&self.consumers));
                for lc in consumers.values_mut() {
                    if lc.id == *queue && !lc.handed.is_empty() {
                        for id in ids {
                            lc.handed.remove(id);
                        }
                    }
                }
            }
        }
    }

    /// After a snapshot was installed (this node was too far behind to be sent the entries): the
    /// deliveries and removals those entries decided for this node's consumers are made now.
    fn reconcile(&self) {
        let mut deliveries = Vec::new();
        let mut removed = Vec::new();
        {
            let state = lock(&self.state);
            let mut consumers = lock(&self.consumers);
            for (id, lc) in consumers.iter_mut() {
                if lc.held.is_some() {
                    continue;
                }
                let key = self.key(*id);
                match state.queue(&lc.id) {
                    Some(q) if q.has_consumer(key) => {
                        let held: BTreeSet<u64> = q.checked_to(key).map(|m| m.id).collect();
                        lc.handed.retain(|id| held.contains(id));
                        for m in q.checked_to(key) {
                            if lc.handed.insert(m.id) {
                                deliveries.push((
                                    Arc::clone(&lc.queue),
                                    Arc::clone(&lc.consumer),
                                    m.clone(),
                                ));
                            }
                        }
                    }
                    _ => removed.push(*id),
                }
            }
        }
        if !deliveries.is_empty() {
            warn!(
                deliveries = deliveries.len(),
                "quorum queues: delivering what the installed snapshot checked out to this node's consumers"
            );
        }
        if let Some(b) = self.cluster.upgrade().and_then(|c| c.broker()) {
            for (q, c, m) in deliveries {
                hand(&b, &q, &c, m);
            }
        }
        for id in removed {
            self.cancel_local(id);
        }
    }

    /// Proposes that `node` is down (its link was lost): its consumers are removed. When it led
    /// the group, this node calls an election at once rather than wait for the election timeout.
    pub(super) fn node_down(&self, node: NodeId) {
        let Some(r) = self.raft.get() else {
            return;
        };
        if Consensus::leader(r) == Some(node) {
            let r = r.clone();
            tokio::spawn(async move {
                if let Err(e) = r.trigger().elect().await {
                    debug!(error = %e, "quorum group: election not called");
                }
            });
        }
        let upto = lock(&self.state).ops;
        self.send(
            Op::NodeDown {
                node,
                keep: None,
                upto,
            },
            Waiter::Retry(RETRIES),
        );
    }

    /// On the leader, every second: the group's voters follow the cluster's (a joining node is
    /// added as a learner, then made a voter; a removed one is removed).
    async fn keep_membership(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (Some(c), Some(r)) = (self.cluster.upgrade(), self.raft.get()) else {
                return;
            };
            if Consensus::leader(r) != Some(self.me) {
                continue;
            }
            let wanted = c.voters();
            let (voters, ..) = self.status();
            let voters: BTreeSet<NodeId> = voters.into_iter().collect();
            let want: BTreeSet<NodeId> = wanted.keys().copied().collect();
            if voters == want || want.is_empty() {
                continue;
            }
            for (id, m) in &wanted {
                if !voters.contains(id) {
                    info!(node = %m.name, "quorum queues: adding a member to the group");
                    if let Err(e) = r.add_learner(*id, m.clone(), true).await {
                        warn!(error = %e, "quorum queues: adding a learner failed");
                    }
                }
            }
            if let Err(e) = r.change_membership(want, false).await {
                warn!(error = %e, "quorum queues: membership change failed");
            }
        }
    }
}

/// Delivers `m` to `c` of `q` (a consumer of this node).
fn hand(b: &crate::broker::Broker, q: &Arc<Queue>, c: &Arc<Consumer>, m: Msg) {
    let message = home::message(b, &m.content);
    if !c.no_ack {
        c.unacked.fetch_add(1, Ordering::Relaxed);
    }
    c.sink.deliver(
        q,
        c,
        QueuedMessage {
            seq: m.id,
            message,
            redelivered: m.redelivered,
            expires_at: None,
            delivery_count: m.delivery_count,
            logged: false,
        },
    );
}

/// The state machine's view of the quorum queues.
struct Applier(Weak<Quorum>);

impl raft::Apply for Applier {
    fn apply(&self, proposal: &Proposal) {
        if let Some(q) = self.0.upgrade() {
            q.apply(proposal);
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0
            .upgrade()
            .map(|q| state::encode(&lock(&q.state)))
            .unwrap_or_default()
    }

    fn install(&self, document: &[u8]) {
        let Some(q) = self.0.upgrade() else {
            return;
        };
        if document.is_empty() {
            return;
        }
        match state::decode(document) {
            Some(s) => {
                *lock(&q.state) = s;
                q.reconcile();
            }
            None => warn!("quorum queues' snapshot unreadable: not installed"),
        }
    }
}
