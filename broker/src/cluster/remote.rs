//! Queues served through another node: a queue lives on its home node (where it was declared); every
//! other node holds a proxy ([`Queue::with_remote`]) that forwards publishes, consumers, gets,
//! settlements and purges to the home over the link, and hands the home's deliveries to its local
//! consumers.
//!
//! **Publishes** routed on a node to a proxy go to the home as one-way messages on that node's one
//! connection to the home, numbered per home, so they arrive in the order they were routed. The home
//! acknowledges them by number once enqueued (and, when persistent on a durable queue, once its log
//! has fsynced them); a publisher confirm waits for that ([`SentPublishes`] is the confirm's
//! [`Durable`]), as RabbitMQ confirms once the queue has the message. A publish to a queue whose home
//! is down, or in flight when the link is lost, is nacked.
//! **Consumers** attached through a proxy are registered at the home with a [`RemoteSink`], which sends
//! each delivery to the proxy node and remembers it until that node settles it (ack, reject, requeue).
//! The home's prefetch accounting counts them as for a local consumer; the sink takes no more while
//! the link to that node is congested. **Failure**: when the link to a node is lost, the home requeues
//! (flagged redelivered) what it had delivered to that node and detaches its consumers; the node
//! cancels its consumers of queues homed there (consumer-cancel notification, RabbitMQ
//! docs/consumer-cancel.md).

use crate::error::AmqpError;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use amq_protocol::protocol::BasicProperties;
use bytes::Bytes;
use tracing::{debug, warn};

use super::link::NodeId;
use super::wire::{self, GetReply, Reply, Request, WireMessage};
use super::Cluster;
use crate::broker::Broker;
use crate::message::{Message, MessageRef};
use crate::queue::{
    next_consumer_seq, ConsumeRefused, Consumer, ConsumerSink, PublishOutcome, Queue, QueueCounts,
    QueuedMessage, RemoteHome, Settle,
};
use crate::store::{Durability, Durable, DurableWait};
use crate::sync::lock;

/// How long a proxy waits for its home to answer a consume, get, purge or count.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A delivery to another node not yet settled there.
type Outstanding = (QueuedMessage, Option<Arc<Consumer>>, Arc<Queue>);

/// A consumer attached through this node to a proxy: the proxy, the consumer, the home node.
type ProxyConsumer = (Arc<Queue>, Arc<Consumer>, NodeId);
/// Another node's consumer attached to a queue homed here.
type Attached = (Arc<Queue>, Arc<Consumer>);

/// Publishes this node sent to queues homed on one peer, and what the peer acknowledged: a publisher
/// confirm of such a message waits on this.
#[derive(Debug, Default)]
pub(crate) struct SentPublishes {
    /// The last number sent; held while a publish is sent, so numbers leave in order.
    sent: Mutex<u64>,
    /// Everything up to here is settled (enqueued, durable where it must be), but `nacked`.
    acked: AtomicU64,
    /// Set once anything was nacked or lost (the locks below are not taken before).
    any_failed: AtomicBool,
    /// Refused by the home.
    nacked: Mutex<BTreeSet<u64>>,
    /// Ranges of numbers in flight when the link was lost.
    lost: Mutex<Vec<(u64, u64)>>,
}

impl Durable for SentPublishes {
    fn durability(&self, n: u64) -> Durability {
        if self.any_failed.load(Ordering::Acquire)
            && (lock(&self.nacked).contains(&n)
                || lock(&self.lost).iter().any(|(a, b)| (*a..=*b).contains(&n)))
        {
            return Durability::Failed;
        }
        if self.acked.load(Ordering::Acquire) >= n {
            Durability::Durable
        } else {
            Durability::Pending
        }
    }
}

/// Publishes a peer sent to queues homed here, waiting to be acknowledged (number, what the enqueue
/// waits for, refused).
#[derive(Debug, Default)]
struct ReceivedPublishes {
    pending: Mutex<VecDeque<(u64, Option<DurableWait>, bool)>>,
    notify: tokio::sync::Notify,
}

/// The node's tables of remote consumers and deliveries. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Remote {
    /// Proxy side: consumers attached through this node, by their id here, with the proxy and home.
    consumers: Mutex<HashMap<u64, ProxyConsumer>>,
    next_consumer: AtomicU64,
    /// Home side: other nodes' consumers of queues homed here, by (node, id there).
    attached: Mutex<HashMap<(NodeId, u64), Attached>>,
    /// Home side: deliveries (and gets) to other nodes not yet settled, by (node, vhost, queue, seq).
    outstanding: Mutex<HashMap<(NodeId, String, String, u64), Outstanding>>,
    /// Proxy side: publishes sent to each home.
    sent: Mutex<HashMap<NodeId, Arc<SentPublishes>>>,
    /// Home side: publishes received from each peer, to acknowledge.
    received: Mutex<HashMap<NodeId, Arc<ReceivedPublishes>>>,
}

impl Remote {
    fn sent_to(&self, node: NodeId) -> Arc<SentPublishes> {
        Arc::clone(lock(&self.sent).entry(node).or_default())
    }
}

/// A proxy's home: where its queue lives.
#[derive(Debug)]
pub(crate) struct Home {
    pub(crate) cluster: Weak<Cluster>,
    pub(crate) node: NodeId,
    pub(crate) vhost: String,
}

fn message_from(broker: &Broker, m: WireMessage) -> MessageRef {
    build(
        broker,
        &m.exchange,
        &m.routing_key,
        Bytes::from(m.properties),
        Bytes::from(m.body),
    )
}

pub(super) fn build(
    broker: &Broker,
    exchange: &str,
    routing_key: &str,
    properties: Bytes,
    body: Bytes,
) -> MessageRef {
    let decoded = amq_protocol::protocol::basic::parse_properties(&properties[..])
        .map(|(_, p)| p)
        .unwrap_or_else(|_| BasicProperties::default());
    Arc::new(Message::new(
        broker.memory,
        exchange.into(),
        routing_key.into(),
        decoded,
        properties,
        body,
    ))
}

fn wire_message(m: &QueuedMessage) -> WireMessage {
    WireMessage {
        seq: m.seq,
        redelivered: m.redelivered,
        delivery_count: m.delivery_count,
        exchange: m.message.exchange.to_string(),
        routing_key: m.message.routing_key.to_string(),
        properties: m.message.raw_properties.to_vec(),
        body: m.message.body.to_vec(),
    }
}

impl Home {
    fn call<T: for<'de> serde::Deserialize<'de>>(&self, request: &Request) -> Option<T> {
        let c = self.cluster.upgrade()?;
        let body = request.encode();
        let reply = c.block_on(c.links.request(self.node, &body, CALL_TIMEOUT));
        match reply {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(e) => {
                debug!(home = self.node, error = %e, "queue home did not answer");
                None
            }
        }
    }
}

impl RemoteHome for Home {
    fn node(&self) -> u64 {
        self.node
    }

    fn publish(
        &self,
        queue: &Queue,
        message: MessageRef,
        own_ttl: Option<u64>,
    ) -> (PublishOutcome, Option<DurableWait>) {
        let Some(c) = self.cluster.upgrade() else {
            return (PublishOutcome::Rejected, None);
        };
        let sent = c.remote.sent_to(self.node);
        let mut last = lock(&sent.sent);
        let seq = *last + 1;
        let m = wire::Message::Publish {
            seq,
            vhost: self.vhost.clone(),
            queue: queue.name.to_string(),
            ttl: own_ttl.unwrap_or(u64::MAX),
            exchange: message.exchange.to_string(),
            routing_key: message.routing_key.to_string(),
            properties: message.raw_properties.clone(),
            body: message.body.clone(),
        };
        if c.links.send(self.node, &m.encode()) {
            *last = seq;
            drop(last);
            let wait: Arc<dyn Durable> = sent;
            (PublishOutcome::Enqueued, Some((wait, seq)))
        } else {
            (PublishOutcome::Rejected, None)
        }
    }

    fn get(&self, queue: &Arc<Queue>, no_ack: bool) -> Option<(QueuedMessage, u32)> {
        let c = self.cluster.upgrade()?;
        let reply: GetReply = self.call(&Request::Get {
            vhost: self.vhost.clone(),
            queue: queue.name.to_string(),
            no_ack,
        })?;
        let broker = c.broker()?;
        let m = reply.message?;
        let (seq, redelivered, delivery_count) = (m.seq, m.redelivered, m.delivery_count);
        Some((
            QueuedMessage {
                seq,
                message: message_from(&broker, m),
                redelivered,
                expires_at: None,
                delivery_count,
                logged: false,
            },
            reply.remaining,
        ))
    }

    fn settle(&self, queue: &Queue, seqs: Vec<u64>, how: Settle) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        let m = wire::Message::Settle {
            vhost: self.vhost.clone(),
            queue: queue.name.to_string(),
            kind: how,
            seqs,
        };
        c.links.send(self.node, &m.encode());
    }

    fn consume(
        &self,
        queue: &Arc<Queue>,
        consumer: &Arc<Consumer>,
        on_added: &mut dyn FnMut(),
    ) -> Result<(), ConsumeRefused> {
        let c = self.cluster.upgrade().ok_or(ConsumeRefused::Deleted)?;
        let id = c.remote.next_consumer.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&c.remote.consumers).insert(id, (Arc::clone(queue), Arc::clone(consumer), self.node));
        let reply: Option<Reply> = self.call(&Request::Consume {
            vhost: self.vhost.clone(),
            queue: queue.name.to_string(),
            id,
            tag: consumer.tag.to_string(),
            no_ack: consumer.no_ack,
            exclusive: consumer.exclusive,
            prefetch: consumer.prefetch,
            priority: consumer.priority,
            arguments: crate::store::definitions::encode_table(&consumer.arguments),
        });
        let refused = match reply {
            Some(Reply { error: None, .. }) => {
                on_added();
                return Ok(());
            }
            Some(Reply {
                error: Some((403, _)),
                ..
            }) => ConsumeRefused::ExclusiveInUse,
            Some(Reply {
                error: Some((code, text)),
                filter: true,
                ..
            }) => ConsumeRefused::Filter(match code {
                404 => AmqpError::not_found(text),
                _ => AmqpError::precondition_failed(text),
            }),
            _ => ConsumeRefused::Deleted,
        };
        lock(&c.remote.consumers).remove(&id);
        Err(refused)
    }

    fn cancel(&self, _queue: &Queue, consumer: &Arc<Consumer>) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        let id = {
            let mut consumers = lock(&c.remote.consumers);
            let id = consumers
                .iter()
                .find(|(_, (_, k, _))| Arc::ptr_eq(k, consumer))
                .map(|(id, _)| *id);
            if let Some(id) = id {
                consumers.remove(&id);
            }
            id
        };
        if let Some(id) = id {
            c.links
                .send(self.node, &wire::Message::Cancel { consumer: id }.encode());
        }
    }

    fn purge(&self, queue: &Queue) -> u32 {
        let reply: Option<Reply> = self.call(&Request::Purge {
            vhost: self.vhost.clone(),
            queue: queue.name.to_string(),
        });
        reply.map_or(0, |r| r.count)
    }

    fn counts(&self, queue: &Queue) -> QueueCounts {
        let reply: Option<Reply> = self.call(&Request::Counts {
            vhost: self.vhost.clone(),
            queue: queue.name.to_string(),
        });
        let r = reply.unwrap_or_default();
        QueueCounts {
            messages: r.count,
            consumers: r.consumers,
            unacked: 0,
        }
    }
}

/// A consumer of another node, attached to a queue homed here: deliveries go to that node.
#[derive(Debug)]
struct RemoteSink {
    cluster: Weak<Cluster>,
    peer: NodeId,
    id: u64,
    vhost: String,
}

impl ConsumerSink for RemoteSink {
    fn has_capacity(&self, _consumer: &Consumer) -> bool {
        self.cluster
            .upgrade()
            .is_some_and(|c| c.links.is_up(self.peer) && !c.links.congested(self.peer))
    }

    fn deliver(&self, queue: &Arc<Queue>, consumer: &Arc<Consumer>, message: QueuedMessage) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        let m = wire::Message::Deliver {
            consumer: self.id,
            seq: message.seq,
            redelivered: message.redelivered,
            delivery_count: message.delivery_count,
            exchange: message.message.exchange.to_string(),
            routing_key: message.message.routing_key.to_string(),
            properties: message.message.raw_properties.clone(),
            body: message.message.body.clone(),
        };
        // The queue's dispatch has counted it in `consumer.unacked` already.
        if !consumer.no_ack {
            lock(&c.remote.outstanding).insert(
                (
                    self.peer,
                    self.vhost.clone(),
                    queue.name.to_string(),
                    message.seq,
                ),
                (message, Some(Arc::clone(consumer)), Arc::clone(queue)),
            );
        }
        c.links.send(self.peer, &m.encode());
    }

    fn cancelled(&self, _consumer: &Arc<Consumer>) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        lock(&c.remote.attached).remove(&(self.peer, self.id));
        c.links.send(
            self.peer,
            &wire::Message::Cancelled { consumer: self.id }.encode(),
        );
    }
}

fn error_reply(code: u16, text: String) -> Reply {
    Reply {
        error: Some((code, text)),
        ..Reply::default()
    }
}

impl Cluster {
    /// Answers a proxy's queue request (consume, get, purge, counts) for a queue homed here.
    pub(super) fn serve_queue(self: &Arc<Self>, from: NodeId, request: Request) -> Vec<u8> {
        let Some(broker) = self.broker() else {
            return Vec::new();
        };
        let (vhost, queue) = match &request {
            Request::Consume { vhost, queue, .. }
            | Request::Get { vhost, queue, .. }
            | Request::Purge { vhost, queue }
            | Request::Counts { vhost, queue } => (vhost.clone(), queue.clone()),
            _ => return Vec::new(),
        };
        let Some(q) = broker.vhost(&vhost).and_then(|v| v.queue_by_name(&queue)) else {
            let text = format!("NOT_FOUND - no queue '{queue}' in vhost '{vhost}'");
            return match request {
                Request::Get { .. } => serde_json::to_vec(&GetReply {
                    error: Some((404, text)),
                    message: None,
                    remaining: 0,
                }),
                _ => serde_json::to_vec(&error_reply(404, text)),
            }
            .unwrap_or_default();
        };
        let json = match request {
            Request::Consume {
                id,
                tag,
                no_ack,
                exclusive,
                prefetch,
                priority,
                arguments,
                ..
            } => {
                let entity = format!("consumer '{tag}' on queue '{queue}' in vhost '{vhost}'");
                let attached = crate::store::definitions::decode_table(&arguments)
                    .map_err(|e| {
                        AmqpError::precondition_failed(format!("unreadable consume arguments: {e}"))
                    })
                    .and_then(|arguments| {
                        let args = crate::queue::args::ConsumeArgs::parse(&arguments)
                            .map_err(|e| AmqpError::precondition_failed(e.text(&queue, &vhost)))?;
                        let filter = match broker.vhost(&vhost) {
                            Some(v) => v.consumer_filter(args.filter, entity)?,
                            None => None,
                        };
                        Ok((arguments, filter))
                    });
                let (arguments, filter) = match attached {
                    Ok(a) => a,
                    Err(e) => {
                        let reply = Reply {
                            filter: true,
                            ..error_reply(e.reply_code(), e.detail().to_owned())
                        };
                        return serde_json::to_vec(&reply).unwrap_or_default();
                    }
                };
                let consumer = Arc::new(Consumer {
                    tag: tag.as_str().into(),
                    no_ack,
                    exclusive,
                    prefetch,
                    priority,
                    unacked: AtomicU32::new(0),
                    sink: Arc::new(RemoteSink {
                        cluster: Arc::downgrade(self),
                        peer: from,
                        id,
                        vhost: vhost.clone(),
                    }),
                    filter,
                    arguments,
                    seq: next_consumer_seq(),
                    cancelled: AtomicBool::new(false),
                });
                lock(&self.remote.attached)
                    .insert((from, id), (Arc::clone(&q), Arc::clone(&consumer)));
                match q.add_consumer(consumer, || {}) {
                    Ok(()) => serde_json::to_vec(&Reply::default()),
                    Err(refused) => {
                        lock(&self.remote.attached).remove(&(from, id));
                        let r = match refused {
                            ConsumeRefused::ExclusiveInUse => error_reply(
                                403,
                                format!(
                                    "ACCESS_REFUSED - queue '{queue}' in vhost '{vhost}' in exclusive use"
                                ),
                            ),
                            // A queue homed on a node is never a quorum queue.
                            ConsumeRefused::Deleted | ConsumeRefused::Unavailable(_) => error_reply(
                                404,
                                format!("NOT_FOUND - no queue '{queue}' in vhost '{vhost}'"),
                            ),
                            ConsumeRefused::Filter(e) => Reply {
                                filter: true,
                                ..error_reply(e.reply_code(), e.detail().to_owned())
                            },
                        };
                        serde_json::to_vec(&r)
                    }
                }
            }
            Request::Get { no_ack, .. } => {
                let got = q.get(no_ack);
                let reply = match got {
                    Some((m, remaining)) => {
                        let wire = wire_message(&m);
                        if !no_ack {
                            lock(&self.remote.outstanding).insert(
                                (from, vhost.clone(), queue.clone(), m.seq),
                                (m, None, Arc::clone(&q)),
                            );
                        }
                        GetReply {
                            error: None,
                            message: Some(wire),
                            remaining,
                        }
                    }
                    None => GetReply {
                        error: None,
                        message: None,
                        remaining: 0,
                    },
                };
                serde_json::to_vec(&reply)
            }
            Request::Purge { .. } => serde_json::to_vec(&Reply {
                count: q.purge(),
                ..Reply::default()
            }),
            Request::Counts { .. } => {
                let c = q.counts();
                serde_json::to_vec(&Reply {
                    count: c.messages,
                    consumers: c.consumers,
                    ..Reply::default()
                })
            }
            _ => Ok(Vec::new()),
        };
        json.unwrap_or_default()
    }

    /// Takes a one-way message from `from`.
    pub(super) fn on_message(self: &Arc<Self>, from: NodeId, m: wire::Message) {
        let Some(broker) = self.broker() else {
            return;
        };
        match m {
            wire::Message::Publish {
                seq,
                vhost,
                queue,
                ttl,
                exchange,
                routing_key,
                properties,
                body,
            } => {
                let (outcome, wait) = match broker
                    .vhost(&vhost)
                    .and_then(|v| v.queue_by_name(&queue))
                {
                    Some(q) => {
                        let message = build(&broker, &exchange, &routing_key, properties, body);
                        q.publish_durable(message, (ttl != u64::MAX).then_some(ttl))
                    }
                    None => {
                        debug!(%vhost, %queue, "forwarded publish to a queue that is gone: dropped");
                        (PublishOutcome::Deleted, None)
                    }
                };
                let received = self.received_from(from);
                lock(&received.pending).push_back((seq, wait, outcome == PublishOutcome::Rejected));
                received.notify.notify_one();
            }
            wire::Message::Acked { upto, nacked } => {
                let sent = self.remote.sent_to(from);
                if !nacked.is_empty() {
                    lock(&sent.nacked).extend(nacked);
                    sent.any_failed.store(true, Ordering::Release);
                }
                sent.acked.fetch_max(upto, Ordering::AcqRel);
                if let Some(store) = &broker.store {
                    store.notify_commits();
                }
            }
            wire::Message::Deliver {
                consumer,
                seq,
                redelivered,
                delivery_count,
                exchange,
                routing_key,
                properties,
                body,
            } => {
                let found = lock(&self.remote.consumers)
                    .get(&consumer)
                    .map(|(q, c, _)| (Arc::clone(q), Arc::clone(c)));
                let Some((q, c)) = found else {
                    // Cancelled meanwhile: the home gets it back.
                    return;
                };
                let message = build(&broker, &exchange, &routing_key, properties, body);
                // As a queue's dispatch does: the channel releases it when the delivery is settled.
                if !c.no_ack {
                    c.unacked.fetch_add(1, Ordering::Relaxed);
                }
                c.sink.deliver(
                    &q,
                    &c,
                    QueuedMessage {
                        seq,
                        message,
                        redelivered,
                        expires_at: None,
                        delivery_count,
                        logged: false,
                    },
                );
            }
            wire::Message::Settle {
                vhost,
                queue,
                kind,
                seqs,
            } => {
                let mut run: Vec<QueuedMessage> = Vec::new();
                let mut target: Option<Arc<Queue>> = None;
                {
                    let mut outstanding = lock(&self.remote.outstanding);
                    for seq in seqs {
                        if let Some((m, consumer, q)) =
                            outstanding.remove(&(from, vhost.clone(), queue.clone(), seq))
                        {
                            if let Some(c) = consumer {
                                c.unacked.fetch_sub(1, Ordering::Relaxed);
                            }
                            target.get_or_insert(q);
                            run.push(m);
                        }
                    }
                }
                if let Some(q) = target {
                    q.settle_as(kind, run);
                }
            }
            wire::Message::Cancel { consumer } => {
                let found = lock(&self.remote.attached).remove(&(from, consumer));
                if let Some((q, c)) = found {
                    self.detach(&broker, q, c);
                }
            }
            wire::Message::Cancelled { consumer } => {
                let found = lock(&self.remote.consumers).remove(&consumer);
                if let Some((q, c, _)) = found {
                    q.remove_consumer(&c);
                    c.sink.cancelled(&c);
                }
            }
        }
    }

    /// The publishes received from `peer`, with the task acknowledging them started on first use.
    fn received_from(self: &Arc<Self>, peer: NodeId) -> Arc<ReceivedPublishes> {
        let mut all = lock(&self.remote.received);
        if let Some(r) = all.get(&peer) {
            return Arc::clone(r);
        }
        let r = Arc::new(ReceivedPublishes::default());
        all.insert(peer, Arc::clone(&r));
        let commits = self
            .broker()
            .and_then(|b| b.store.as_ref().map(|s| s.commits()));
        tokio::spawn(acknowledge(
            Arc::downgrade(self),
            peer,
            Arc::clone(&r),
            commits,
        ));
        r
    }

    /// Detaches a remote consumer from its queue here; an auto-delete queue left without consumers
    /// is deleted (proposed off this task: it waits for the cluster).
    fn detach(&self, broker: &Broker, q: Arc<Queue>, c: Arc<Consumer>) {
        if q.remove_consumer(&c) {
            let vhost = broker.vhost_list().into_iter().find(|v| {
                v.queue_by_name(q.name.as_str())
                    .is_some_and(|x| Arc::ptr_eq(&x, &q))
            });
            if let Some(v) = vhost {
                tokio::task::spawn_blocking(move || {
                    v.remove_queue(&q);
                });
            }
        }
    }

    /// The link to or from `peer` was lost: requeue what was delivered to it, detach its consumers,
    /// and cancel this node's consumers of queues homed there.
    pub(super) fn on_peer_down(self: &Arc<Self>, peer: NodeId) {
        let Some(broker) = self.broker() else {
            return;
        };
        let attached: Vec<(Arc<Queue>, Arc<Consumer>)> = {
            let mut a = lock(&self.remote.attached);
            let keys: Vec<_> = a.keys().filter(|(n, _)| *n == peer).copied().collect();
            keys.into_iter().filter_map(|k| a.remove(&k)).collect()
        };
        for (q, c) in attached {
            self.detach(&broker, q, c);
        }
        let mut back: HashMap<*const Queue, (Arc<Queue>, Vec<QueuedMessage>)> = HashMap::new();
        {
            let mut outstanding = lock(&self.remote.outstanding);
            let keys: Vec<_> = outstanding
                .keys()
                .filter(|k| k.0 == peer)
                .cloned()
                .collect();
            for k in keys {
                if let Some((m, consumer, q)) = outstanding.remove(&k) {
                    if let Some(c) = consumer {
                        c.unacked.fetch_sub(1, Ordering::Relaxed);
                    }
                    back.entry(Arc::as_ptr(&q))
                        .or_insert_with(|| (q, Vec::new()))
                        .1
                        .push(m);
                }
            }
        }
        // Publishes in flight to it: lost as far as their confirms know (nacked).
        let sent = self.remote.sent_to(peer);
        {
            let last = *lock(&sent.sent);
            let acked = sent.acked.load(Ordering::Acquire);
            if last > acked {
                lock(&sent.lost).push((acked + 1, last));
                sent.any_failed.store(true, Ordering::Release);
            }
        }
        if let Some(store) = &broker.store {
            store.notify_commits();
        }
        if let Some(r) = lock(&self.remote.received).get(&peer) {
            lock(&r.pending).clear();
        }
        let requeued: usize = back.values().map(|(_, ms)| ms.len()).sum();
        for (_, (q, ms)) in back {
            q.requeue(ms);
        }
        let mine: Vec<(Arc<Queue>, Arc<Consumer>)> = {
            let mut consumers = lock(&self.remote.consumers);
            let ids: Vec<u64> = consumers
                .iter()
                .filter(|(_, (_, _, home))| *home == peer)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| consumers.remove(&id).map(|(q, c, _)| (q, c)))
                .collect()
        };
        if requeued > 0 || !mine.is_empty() {
            warn!(
                peer,
                requeued,
                cancelled = mine.len(),
                "link to node lost: its unacknowledged deliveries requeued, consumers of its queues cancelled"
            );
        }
        for (q, c) in mine {
            q.remove_consumer(&c);
            c.sink.cancelled(&c);
        }
    }
}

/// Acknowledges `peer`'s publishes as they are settled here: after each batch that arrives, and after
/// each commit round while some wait for their queue's log. Ends with the cluster.
async fn acknowledge(
    cluster: Weak<Cluster>,
    peer: NodeId,
    received: Arc<ReceivedPublishes>,
    mut commits: Option<tokio::sync::watch::Receiver<u64>>,
) {
    loop {
        let (upto, nacked, waiting) = {
            let mut pending = lock(&received.pending);
            let mut upto = 0;
            let mut nacked = Vec::new();
            while let Some((seq, wait, rejected)) = pending.front() {
                let state = match wait {
                    Some((log, lsn)) => log.durability(*lsn),
                    None => Durability::Durable,
                };
                if state == Durability::Pending {
                    break;
                }
                if *rejected || state == Durability::Failed {
                    nacked.push(*seq);
                }
                upto = *seq;
                pending.pop_front();
            }
            (upto, nacked, !pending.is_empty())
        };
        let Some(c) = cluster.upgrade() else {
            return;
        };
        if upto > 0 {
            c.links
                .send(peer, &wire::Message::Acked { upto, nacked }.encode());
        }
        drop(c);
        let mut closed = false;
        match &mut commits {
            Some(rx) if waiting => {
                tokio::select! {
                    () = received.notify.notified() => {}
                    changed = rx.changed() => closed = changed.is_err(),
                }
            }
            _ => received.notify.notified().await,
        }
        if closed {
            commits = None;
        }
    }
}
