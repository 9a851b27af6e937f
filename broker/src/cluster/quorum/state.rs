//! The replicated state of the quorum queues: what every member applies, in log order, to reach the
//! same queues — ready messages, consumers, and which message is checked out to which consumer.
//!
//! Deterministic by construction: the same operations in the same order give the same state and the
//! same [`Effect`]s on every node (ordered maps and lists only; no clock, no randomness). Deliveries
//! are decided here, so every member knows what was delivered to whom: a new leader continues
//! without losing or inventing messages, and a consumer's node delivers what the state assigned to
//! it (RabbitMQ's `rabbit_fifo` works the same way). Reference: RabbitMQ docs/quorum-queues.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::queue::DeadLetterReason;

/// A queue: (vhost, name).
pub(crate) type QueueId = (String, String);

/// Who a message is checked out to: a consumer (`id` > 0) or a basic.get (`id` = 0) of one process
/// of one node (`incarnation` is random per process: a restarted node's old consumers are told
/// apart from its new ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub(crate) struct ConsumerKey {
    /// The node.
    pub node: u64,
    /// The node's process.
    pub incarnation: u64,
    /// The consumer's id on that node (0: basic.get).
    pub id: u64,
}

/// A message's content as published, shared by the state and its deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Content {
    /// Exchange it was published to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Content-header properties as received (AMQP encoding).
    #[serde(with = "b64")]
    pub properties: Bytes,
    /// Body.
    #[serde(with = "b64")]
    pub body: Bytes,
}

/// A message in a queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Msg {
    /// Position in the queue (enqueue order).
    pub id: u64,
    /// The content.
    pub content: Arc<Content>,
    /// Returned to the queue so far (basic.nack/reject with requeue, its consumer's node lost).
    pub delivery_count: u32,
    /// May have been delivered before (AMQP `redelivered`).
    pub redelivered: bool,
}

/// A consumer as the state knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ConsumerState {
    key: ConsumerKey,
    /// Prefetch count (0: unlimited).
    prefetch: u32,
    no_ack: bool,
    /// Checked out to it now.
    out: u32,
    /// The state's operation counter when it was added ([`Op::NodeDown`]'s `upto`).
    added: u64,
}

/// One quorum queue's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct QueueState {
    next_id: u64,
    ready: BTreeMap<u64, Msg>,
    ready_bytes: u64,
    checked: BTreeMap<u64, (ConsumerKey, Msg)>,
    consumers: Vec<ConsumerState>,
    /// Round-robin position in `consumers`.
    next_consumer: usize,
    exclusive: bool,
}

impl QueueState {
    /// Messages ready.
    pub(crate) fn ready(&self) -> usize {
        self.ready.len()
    }
    /// Checked out, not yet settled.
    pub(crate) fn unacked(&self) -> usize {
        self.checked.len()
    }
    /// Consumers (of every node).
    pub(crate) fn consumers(&self) -> usize {
        self.consumers.len()
    }
    /// Whether `key` is a consumer of the queue.
    pub(crate) fn has_consumer(&self, key: ConsumerKey) -> bool {
        self.consumers.iter().any(|c| c.key == key)
    }
    /// The messages checked out to `key`, in order.
    pub(crate) fn checked_to(&self, key: ConsumerKey) -> impl Iterator<Item = &Msg> {
        self.checked
            .values()
            .filter(move |(k, _)| *k == key)
            .map(|(_, m)| m)
    }
}

/// How a settlement settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) enum How {
    /// basic.ack.
    Ack,
    /// basic.nack / basic.reject with requeue = false: dead-lettered or dropped.
    Reject,
    /// Requeue (nack/reject with requeue, channel closed): back to the queue, redelivered.
    Requeue,
}

/// An operation on the quorum queues, replicated through the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Op {
    /// A published message. The queue's length limits travel with it (argument or policy, as the
    /// publishing node had them): `x-max-length`, `x-max-length-bytes`, and whether `x-overflow`
    /// is `reject-publish` (else `drop-head`).
    Enqueue {
        /// Queue.
        queue: QueueId,
        /// Content.
        content: Arc<Content>,
        /// `x-max-length`.
        max_length: Option<u64>,
        /// `x-max-length-bytes`.
        max_bytes: Option<u64>,
        /// `x-overflow = reject-publish`.
        reject: bool,
    },
    /// basic.consume.
    Checkout {
        /// Queue.
        queue: QueueId,
        /// The consumer.
        key: ConsumerKey,
        /// Prefetch count (0: unlimited).
        prefetch: u32,
        /// no-ack.
        no_ack: bool,
        /// basic.consume's exclusive.
        exclusive: bool,
    },
    /// basic.cancel (what it holds stays checked out until settled).
    Cancel {
        /// Queue.
        queue: QueueId,
        /// The consumer.
        key: ConsumerKey,
    },
    /// Settles messages checked out to consumers (or gets) of one node process.
    Settle {
        /// Queue.
        queue: QueueId,
        /// The node.
        node: u64,
        /// Its process.
        incarnation: u64,
        /// Message ids.
        ids: Vec<u64>,
        /// How.
        how: How,
        /// `x-delivery-limit` (None: unlimited).
        delivery_limit: Option<u32>,
    },
    /// basic.get.
    Get {
        /// Queue.
        queue: QueueId,
        /// Who gets it (`id` 0).
        key: ConsumerKey,
        /// no-ack.
        no_ack: bool,
    },
    /// queue.purge (ready messages).
    Purge {
        /// Queue.
        queue: QueueId,
    },
    /// queue.delete.
    Delete {
        /// Queue.
        queue: QueueId,
    },
    /// A node's consumers are gone (its link was lost, or it restarted): its consumers added up to
    /// operation `upto` whose process is not `keep` are removed, and what they (and its gets) hold
    /// returns to the queues, redelivered.
    NodeDown {
        /// The node.
        node: u64,
        /// A process of it whose consumers stay.
        keep: Option<u64>,
        /// Only consumers added at or before this operation count.
        upto: u64,
    },
}

/// What an operation returns to its proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum OpResult {
    /// Done.
    Ok,
    /// Enqueue refused (`reject-publish`), or consume refused (exclusive).
    Refused,
    /// A get's message and the messages left, or none.
    Got(Option<(Msg, u32)>),
    /// A purge's count.
    Count(u32),
}

/// What applying an operation asks of the node, besides the new state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    /// Deliver to a consumer (by the node whose consumer it is).
    Deliver(QueueId, ConsumerKey, Msg),
    /// Dead-letter (by the leader; RabbitMQ's quorum queues dead-letter at most once).
    DeadLetter(QueueId, Arc<Content>, DeadLetterReason),
    /// A consumer was removed by [`Op::NodeDown`] (its node cancels it, if it still has it).
    Removed(QueueId, ConsumerKey),
}

/// Every quorum queue's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct State {
    /// Queues by (vhost, name).
    queues: BTreeMap<String, BTreeMap<String, QueueState>>,
    /// Operations applied (the clock of [`Op::NodeDown`]'s `upto`).
    pub ops: u64,
}

impl State {
    /// A queue's state.
    pub(crate) fn queue(&self, id: &QueueId) -> Option<&QueueState> {
        self.queues.get(&id.0)?.get(&id.1)
    }

    fn queue_mut(&mut self, id: &QueueId) -> &mut QueueState {
        self.queues
            .entry(id.0.clone())
            .or_default()
            .entry(id.1.clone())
            .or_default()
    }

    /// Applies `op`, pushing what the node must do to `effects`.
    pub(crate) fn apply(&mut self, op: &Op, effects: &mut Vec<Effect>) -> OpResult {
        self.ops += 1;
        let now = self.ops;
        match op {
            Op::Enqueue {
                queue,
                content,
                max_length,
                max_bytes,
                reject,
            } => {
                let q = self.queue_mut(queue);
                let size = content.body.len() as u64;
                let over = |q: &QueueState, extra: u64, extra_bytes: u64| {
                    max_length.is_some_and(|m| q.ready.len() as u64 + extra > m)
                        || max_bytes.is_some_and(|m| q.ready_bytes + extra_bytes > m)
                };
                if *reject && over(q, 1, size) {
                    return OpResult::Refused;
                }
                let id = q.next_id;
                q.next_id += 1;
                q.ready.insert(
                    id,
                    Msg {
                        id,
                        content: Arc::clone(content),
                        delivery_count: 0,
                        redelivered: false,
                    },
                );
                q.ready_bytes += size;
                while over(q, 0, 0) {
                    let Some((_, m)) = q.ready.pop_first() else {
                        break;
                    };
                    q.ready_bytes -= m.content.body.len() as u64;
                    effects.push(Effect::DeadLetter(
                        queue.clone(),
                        m.content,
                        DeadLetterReason::MaxLen,
                    ));
                }
                dispatch(queue, q, effects);
                OpResult::Ok
            }
            Op::Checkout {
                queue,
                key,
                prefetch,
                no_ack,
                exclusive,
            } => {
                let q = self.queue_mut(queue);
                if q.consumers.iter().any(|c| c.key == *key) {
                    return OpResult::Ok;
                }
                if q.exclusive || (*exclusive && !q.consumers.is_empty()) {
                    return OpResult::Refused;
                }
                q.exclusive = *exclusive;
                q.consumers.push(ConsumerState {
                    key: *key,
                    prefetch: *prefetch,
                    no_ack: *no_ack,
                    out: 0,
                    added: now,
                });
                dispatch(queue, q, effects);
                OpResult::Ok
            }
            Op::Cancel { queue, key } => {
                let q = self.queue_mut(queue);
                q.consumers.retain(|c| c.key != *key);
                if q.consumers.is_empty() {
                    q.exclusive = false;
                }
                OpResult::Ok
            }
            Op::Settle {
                queue,
                node,
                incarnation,
                ids,
                how,
                delivery_limit,
            } => {
                let q = self.queue_mut(queue);
                for id in ids {
                    let Some((key, _)) = q.checked.get(id) else {
                        continue;
                    };
                    if key.node != *node || key.incarnation != *incarnation {
                        continue;
                    }
                    let Some((key, mut m)) = q.checked.remove(id) else {
                        continue;
                    };
                    if let Some(c) = q.consumers.iter_mut().find(|c| c.key == key) {
                        c.out = c.out.saturating_sub(1);
                    }
                    match how {
                        How::Ack => {}
                        How::Reject => effects.push(Effect::DeadLetter(
                            queue.clone(),
                            m.content,
                            DeadLetterReason::Rejected,
                        )),
                        How::Requeue => {
                            m.delivery_count += 1;
                            m.redelivered = true;
                            if delivery_limit.is_some_and(|l| m.delivery_count > l) {
                                effects.push(Effect::DeadLetter(
                                    queue.clone(),
                                    m.content,
                                    DeadLetterReason::DeliveryLimit,
                                ));
                            } else {
                                q.ready_bytes += m.content.body.len() as u64;
                                q.ready.insert(m.id, m);
                            }
                        }
                    }
                }
                dispatch(queue, q, effects);
                OpResult::Ok
            }
            Op::Get { queue, key, no_ack } => {
                let q = self.queue_mut(queue);
                let Some((_, m)) = q.ready.pop_first() else {
                    return OpResult::Got(None);
                };
                q.ready_bytes -= m.content.body.len() as u64;
                if !no_ack {
                    q.checked.insert(m.id, (*key, m.clone()));
                }
                OpResult::Got(Some((m, u32::try_from(q.ready.len()).unwrap_or(u32::MAX))))
            }
            Op::Purge { queue } => {
                let q = self.queue_mut(queue);
                let n = q.ready.len();
                q.ready.clear();
                q.ready_bytes = 0;
                OpResult::Count(u32::try_from(n).unwrap_or(u32::MAX))
            }
            Op::Delete { queue } => {
                if let Some(qs) = self.queues.get_mut(&queue.0) {
                    qs.remove(&queue.1);
                    if qs.is_empty() {
                        self.queues.remove(&queue.0);
                    }
                }
                OpResult::Ok
            }
            Op::NodeDown { node, keep, upto } => {
                let gone = |k: &ConsumerKey| k.node == *node && Some(k.incarnation) != *keep;
                for (vhost, qs) in &mut self.queues {
                    for (name, q) in qs.iter_mut() {
                        let id = (vhost.clone(), name.clone());
                        let before = q.consumers.len();
                        q.consumers.retain(|c| {
                            let remove = gone(&c.key) && c.added <= *upto;
                            if remove {
                                effects.push(Effect::Removed(id.clone(), c.key));
                            }
                            !remove
                        });
                        if q.consumers.len() != before && q.consumers.is_empty() {
                            q.exclusive = false;
                        }
                        let live: Vec<ConsumerKey> = q.consumers.iter().map(|c| c.key).collect();
                        let back: Vec<u64> = q
                            .checked
                            .iter()
                            .filter(|(_, (k, _))| gone(k) && !live.contains(k))
                            .map(|(id, _)| *id)
                            .collect();
                        for mid in back {
                            if let Some((_, mut m)) = q.checked.remove(&mid) {
                                m.delivery_count += 1;
                                m.redelivered = true;
                                q.ready_bytes += m.content.body.len() as u64;
                                q.ready.insert(m.id, m);
                            }
                        }
                        dispatch(&id, q, effects);
                    }
                }
                OpResult::Ok
            }
        }
    }
}

/// The snapshot's encoding of a [`State`] (binary, `codec.rs`'s conventions; JSON with base64
/// bodies made a snapshot of a long backlog cost more than the traffic between two of them): a
/// version octet (1), the operation counter, then per queue its vhost and name, counters, ready
/// messages, checked-out messages with their consumer, and consumers.
pub(crate) fn encode(s: &State) -> Vec<u8> {
    use super::codec::{put_bytes, put_key, put_msg};
    use bytes::BufMut;
    let mut b = Vec::new();
    b.put_u8(1);
    b.put_u64(s.ops);
    let n: usize = s.queues.values().map(BTreeMap::len).sum();
    b.put_u64(n as u64);
    for (vhost, qs) in &s.queues {
        for (name, q) in qs {
            put_bytes(&mut b, vhost.as_bytes());
            put_bytes(&mut b, name.as_bytes());
            b.put_u64(q.next_id);
            b.put_u64(q.next_consumer as u64);
            b.put_u8(u8::from(q.exclusive));
            b.put_u64(q.ready.len() as u64);
            for m in q.ready.values() {
                put_msg(&mut b, m);
            }
            b.put_u64(q.checked.len() as u64);
            for (k, m) in q.checked.values() {
                put_key(&mut b, k);
                put_msg(&mut b, m);
            }
            b.put_u64(q.consumers.len() as u64);
            for c in &q.consumers {
                put_key(&mut b, &c.key);
                b.put_u32(c.prefetch);
                b.put_u8(u8::from(c.no_ack));
                b.put_u32(c.out);
                b.put_u64(c.added);
            }
        }
    }
    b
}

/// Reads what [`encode`] wrote; `None` when it is malformed or of another version.
pub(crate) fn decode(bytes: &[u8]) -> Option<State> {
    use super::codec::{get_bytes, get_key, get_msg, get_u32, get_u64, get_u8};
    let mut b = Bytes::copy_from_slice(bytes);
    if get_u8(&mut b)? != 1 {
        return None;
    }
    let mut s = State {
        ops: get_u64(&mut b)?,
        ..State::default()
    };
    let string = |b: &mut Bytes| String::from_utf8(get_bytes(b)?.to_vec()).ok();
    for _ in 0..get_u64(&mut b)? {
        let vhost = string(&mut b)?;
        let name = string(&mut b)?;
        let mut q = QueueState {
            next_id: get_u64(&mut b)?,
            next_consumer: usize::try_from(get_u64(&mut b)?).ok()?,
            exclusive: get_u8(&mut b)? != 0,
            ..QueueState::default()
        };
        for _ in 0..get_u64(&mut b)? {
            let m = get_msg(&mut b)?;
            q.ready_bytes += m.content.body.len() as u64;
            q.ready.insert(m.id, m);
        }
        for _ in 0..get_u64(&mut b)? {
            let k = get_key(&mut b)?;
            let m = get_msg(&mut b)?;
            q.checked.insert(m.id, (k, m));
        }
        for _ in 0..get_u64(&mut b)? {
            q.consumers.push(ConsumerState {
                key: get_key(&mut b)?,
                prefetch: get_u32(&mut b)?,
                no_ack: get_u8(&mut b)? != 0,
                out: get_u32(&mut b)?,
                added: get_u64(&mut b)?,
            });
        }
        s.queues.entry(vhost).or_default().insert(name, q);
    }
    Some(s)
}

/// Hands ready messages to consumers with room, round-robin.
fn dispatch(id: &QueueId, q: &mut QueueState, effects: &mut Vec<Effect>) {
    let n = q.consumers.len();
    if n == 0 {
        return;
    }
    while !q.ready.is_empty() {
        let mut chosen = None;
        for i in 0..n {
            let at = (q.next_consumer + i) % n;
            let c = &q.consumers[at];
            if c.no_ack || c.prefetch == 0 || c.out < c.prefetch {
                chosen = Some(at);
                break;
            }
        }
        let Some(at) = chosen else {
            return;
        };
        q.next_consumer = (at + 1) % n;
        let Some((_, m)) = q.ready.pop_first() else {
            return;
        };
        q.ready_bytes -= m.content.body.len() as u64;
        let c = &mut q.consumers[at];
        if !c.no_ack {
            c.out += 1;
            q.checked.insert(m.id, (c.key, m.clone()));
        }
        effects.push(Effect::Deliver(id.clone(), c.key, m));
    }
}

/// Byte strings as base64 in the log's JSON.
mod b64 {
    use base64::Engine;
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(Bytes::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q() -> QueueId {
        ("/".into(), "q".into())
    }

    fn content(body: &str) -> Arc<Content> {
        Arc::new(Content {
            exchange: String::new(),
            routing_key: "q".into(),
            properties: Bytes::new(),
            body: Bytes::from(body.to_owned()),
        })
    }

    fn enqueue(s: &mut State, body: &str) -> (OpResult, Vec<Effect>) {
        let mut e = Vec::new();
        let r = s.apply(
            &Op::Enqueue {
                queue: q(),
                content: content(body),
                max_length: None,
                max_bytes: None,
                reject: false,
            },
            &mut e,
        );
        (r, e)
    }

    fn key(node: u64, incarnation: u64, id: u64) -> ConsumerKey {
        ConsumerKey {
            node,
            incarnation,
            id,
        }
    }

    fn delivered(e: &[Effect]) -> Vec<(ConsumerKey, u64, bool)> {
        e.iter()
            .filter_map(|e| match e {
                Effect::Deliver(_, k, m) => Some((*k, m.id, m.redelivered)),
                _ => None,
            })
            .collect()
    }

    fn checkout(s: &mut State, k: ConsumerKey, prefetch: u32) -> Vec<Effect> {
        let mut e = Vec::new();
        s.apply(
            &Op::Checkout {
                queue: q(),
                key: k,
                prefetch,
                no_ack: false,
                exclusive: false,
            },
            &mut e,
        );
        e
    }

    #[test]
    fn messages_go_round_robin_within_prefetch_and_acks_make_room() {
        let mut s = State::default();
        for i in 0..4 {
            enqueue(&mut s, &i.to_string());
        }
        let a = key(1, 7, 1);
        let b = key(2, 8, 1);
        assert_eq!(delivered(&checkout(&mut s, a, 1)), vec![(a, 0, false)]);
        assert_eq!(
            delivered(&checkout(&mut s, b, 2)),
            vec![(b, 1, false), (b, 2, false)]
        );
        assert_eq!(s.queue(&q()).unwrap().ready(), 1);
        let mut e = Vec::new();
        s.apply(
            &Op::Settle {
                queue: q(),
                node: 1,
                incarnation: 7,
                ids: vec![0],
                how: How::Ack,
                delivery_limit: None,
            },
            &mut e,
        );
        assert_eq!(delivered(&e), vec![(a, 3, false)]);
        assert_eq!(s.queue(&q()).unwrap().unacked(), 3);
    }

    #[test]
    fn a_settlement_from_another_process_is_ignored() {
        let mut s = State::default();
        enqueue(&mut s, "m");
        let a = key(1, 7, 1);
        checkout(&mut s, a, 0);
        let mut e = Vec::new();
        s.apply(
            &Op::Settle {
                queue: q(),
                node: 1,
                incarnation: 6,
                ids: vec![0],
                how: How::Ack,
                delivery_limit: None,
            },
            &mut e,
        );
        assert_eq!(s.queue(&q()).unwrap().unacked(), 1);
    }

    #[test]
    fn a_lost_node_returns_its_messages_flagged_to_the_others() {
        let mut s = State::default();
        let a = key(1, 7, 1);
        let b = key(2, 8, 1);
        checkout(&mut s, a, 1);
        checkout(&mut s, b, 1);
        enqueue(&mut s, "x");
        enqueue(&mut s, "y");
        enqueue(&mut s, "z");
        let mut e = Vec::new();
        s.apply(
            &Op::NodeDown {
                node: 1,
                keep: None,
                upto: s.ops,
            },
            &mut e,
        );
        assert!(e.contains(&Effect::Removed(q(), a)));
        // Node 1's message 0 comes back redelivered; b holds 1 until it acks.
        let mut e = Vec::new();
        s.apply(
            &Op::Settle {
                queue: q(),
                node: 2,
                incarnation: 8,
                ids: vec![1],
                how: How::Ack,
                delivery_limit: None,
            },
            &mut e,
        );
        assert_eq!(delivered(&e), vec![(b, 0, true)]);
        let m = s.queue(&q()).unwrap().checked.get(&0).unwrap().1.clone();
        assert_eq!(m.delivery_count, 1);
    }

    #[test]
    fn a_restarted_node_keeps_only_its_new_consumers() {
        let mut s = State::default();
        let old = key(1, 7, 1);
        checkout(&mut s, old, 0);
        let new = key(1, 9, 1);
        checkout(&mut s, new, 0);
        let mut e = Vec::new();
        s.apply(
            &Op::NodeDown {
                node: 1,
                keep: Some(9),
                upto: u64::MAX,
            },
            &mut e,
        );
        assert_eq!(e, vec![Effect::Removed(q(), old)]);
        assert_eq!(s.queue(&q()).unwrap().consumers(), 1);
        // A peer that saw the old process go, later: the new consumer was added after its `upto`.
        let upto = 1;
        let mut e = Vec::new();
        s.apply(
            &Op::NodeDown {
                node: 1,
                keep: None,
                upto,
            },
            &mut e,
        );
        assert!(e.is_empty());
    }

    #[test]
    fn requeues_past_the_delivery_limit_are_dead_lettered() {
        let mut s = State::default();
        enqueue(&mut s, "poison");
        let a = key(1, 7, 1);
        checkout(&mut s, a, 1);
        for round in 1..=3 {
            let mut e = Vec::new();
            s.apply(
                &Op::Settle {
                    queue: q(),
                    node: 1,
                    incarnation: 7,
                    ids: vec![0],
                    how: How::Requeue,
                    delivery_limit: Some(2),
                },
                &mut e,
            );
            if round < 3 {
                assert_eq!(delivered(&e), vec![(a, 0, true)]);
            } else {
                assert!(matches!(
                    e.as_slice(),
                    [Effect::DeadLetter(_, _, DeadLetterReason::DeliveryLimit)]
                ));
            }
        }
    }

    #[test]
    fn length_limits_drop_the_head_or_refuse_the_publish() {
        let mut s = State::default();
        let limited = |s: &mut State, body: &str, reject: bool| {
            let mut e = Vec::new();
            let r = s.apply(
                &Op::Enqueue {
                    queue: q(),
                    content: content(body),
                    max_length: Some(2),
                    max_bytes: None,
                    reject,
                },
                &mut e,
            );
            (r, e)
        };
        limited(&mut s, "a", false);
        limited(&mut s, "b", false);
        let (_, e) = limited(&mut s, "c", false);
        assert!(matches!(
            e.as_slice(),
            [Effect::DeadLetter(_, c, DeadLetterReason::MaxLen)] if c.body == "a"
        ));
        assert_eq!(limited(&mut s, "d", true).0, OpResult::Refused);
        assert_eq!(s.queue(&q()).unwrap().ready(), 2);
    }

    #[test]
    fn the_state_survives_its_snapshot_encoding() {
        let mut s = State::default();
        enqueue(&mut s, "one");
        checkout(&mut s, key(1, 2, 3), 5);
        enqueue(&mut s, "two");
        let json = serde_json::to_vec(&s).unwrap();
        let back: State = serde_json::from_slice(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(decode(&encode(&s)), Some(s.clone()));
        let bytes = encode(&s);
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
    }
}
