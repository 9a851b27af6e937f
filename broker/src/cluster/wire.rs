//! What nodes say to each other over the link (`cluster/link.rs`): requests (JSON: Raft RPCs,
//! proposals forwarded to the leader, the queue operations a proxy asks its home for) and one-way
//! messages (a compact binary encoding: publishes, deliveries and settlements are the inter-node hot
//! path).
//!
//! A one-way message starts with a tag octet; strings and byte strings are a `u32` length (big-endian)
//! and their octets; numbers are big-endian.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::link::NodeId;
use super::raft::RaftRpc;
use super::{Member, Proposal};
use crate::queue::Settle;

/// A request to a peer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Request {
    /// A Raft RPC.
    Raft(RaftRpc),
    /// A proposal for the leader to append (answered with [`ProposeReply`]).
    Propose(Proposal),
    /// A Raft RPC of the quorum queues' group.
    QuorumRaft(RaftRpc),
    /// A batch of quorum-queue operations for that group's leader to append (answered with
    /// `quorum::BatchReply`).
    QuorumPropose(Proposal),
    /// A node asks to join the cluster (`--cluster-join`): the leader adds it as a learner, waits
    /// until it has caught up, then makes it a voter (answered with [`ProposeReply`]; a node that is
    /// not the leader forwards it).
    Join(Member),
    /// Remove a member from the Raft membership (`DELETE /api/nodes/{name}`; answered and forwarded
    /// as [`Request::Join`]).
    Forget(NodeId),
    /// Attach a consumer of a proxy to the queue at its home (answered with [`Reply`]).
    Consume {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// The consumer's id on the asking node.
        id: u64,
        /// Consumer tag (for log lines and the management API).
        tag: String,
        /// basic.consume's no-ack.
        no_ack: bool,
        /// basic.consume's exclusive.
        exclusive: bool,
        /// Per-consumer prefetch count (0: none).
        prefetch: u16,
        /// `x-priority`.
        priority: i32,
        /// basic.consume's arguments (the definitions log's table encoding): the home attaches the
        /// consumer's filter plugin from them.
        #[serde(default)]
        arguments: String,
    },
    /// basic.get at the home (answered with [`GetReply`]).
    Get {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// basic.get's no-ack.
        no_ack: bool,
    },
    /// queue.purge at the home (answered with [`Reply`], `count` purged).
    Purge {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
    },
    /// The queue's counts at the home (answered with [`Reply`]).
    Counts {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
    },
    /// What the management API shows of every queue homed on the asked node (answered with a list
    /// of [`QueueFigures`]).
    Figures,
}

/// A queue's figures at its home, for another node's management API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct QueueFigures {
    /// Vhost.
    pub vhost: String,
    /// Queue.
    pub name: String,
    /// Messages ready.
    pub messages: u32,
    /// Delivered, not yet acknowledged.
    pub unacked: u32,
    /// Consumers (of every node).
    pub consumers: u32,
    /// Body octets of the ready messages.
    pub message_bytes: u64,
    /// Estimated octets in memory.
    pub memory: u64,
    /// Idle since (wall-clock ms) when it has no consumers.
    pub idle_since: Option<u64>,
}

impl QueueFigures {
    /// The figures of `queue` (in `vhost`) as this node holds them.
    pub(crate) fn of(vhost: &str, queue: &crate::queue::Queue) -> Self {
        let c = queue.counts();
        let (message_bytes, memory, idle_since) = queue.usage();
        QueueFigures {
            vhost: vhost.to_owned(),
            name: queue.name.to_string(),
            messages: c.messages,
            unacked: c.unacked,
            consumers: c.consumers,
            message_bytes,
            memory,
            idle_since,
        }
    }
}

impl Request {
    /// The request as sent.
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The leader's answer to a forwarded proposal.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ProposeReply {
    /// Appended and committed at this log index (the proposer then waits for its own apply).
    Committed(u64),
    /// Not the leader; the leader it knows, if any.
    NotLeader(Option<u64>),
    /// Refused for another reason.
    Failed(String),
}

/// The home's answer to a queue operation.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Reply {
    /// Refused: the AMQP reply code and text.
    pub error: Option<(u16, String)>,
    /// Messages ready (or purged).
    pub count: u32,
    /// Consumers.
    pub consumers: u32,
    /// The refusal is of a consumer's filter plugin (404 not loaded at the home, 406 configuration
    /// refused), not of the queue.
    #[serde(default)]
    pub filter: bool,
}

/// A message fetched by basic.get at the home.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GetReply {
    /// Refused: the AMQP reply code and text.
    pub error: Option<(u16, String)>,
    /// The message, if one was ready.
    pub message: Option<WireMessage>,
    /// Messages still ready.
    pub remaining: u32,
}

/// A message crossing the link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireMessage {
    /// Its sequence number in the home queue.
    pub seq: u64,
    /// Redelivered flag.
    pub redelivered: bool,
    /// Deliveries so far.
    pub delivery_count: u32,
    /// Exchange published to.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Raw content-header properties.
    pub properties: Vec<u8>,
    /// Body.
    pub body: Vec<u8>,
}

/// A one-way message between nodes.
#[derive(Debug)]
pub(crate) enum Message {
    /// A message routed on the sending node to a queue homed on the receiver.
    Publish {
        /// The sender's number for it (per receiver, from 1, in sending order): acknowledged by
        /// [`Message::Acked`].
        seq: u64,
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// The message's own `expiration`, ms (`u64::MAX`: none).
        ttl: u64,
        /// Exchange published to.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// Raw content-header properties.
        properties: Bytes,
        /// Body.
        body: Bytes,
    },
    /// A delivery to a consumer attached through the receiver.
    Deliver {
        /// The consumer's id on the receiver.
        consumer: u64,
        /// Sequence number in the home queue.
        seq: u64,
        /// Redelivered flag.
        redelivered: bool,
        /// Deliveries so far.
        delivery_count: u32,
        /// Exchange published to.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// Raw content-header properties.
        properties: Bytes,
        /// Body.
        body: Bytes,
    },
    /// Deliveries (or gets) from a home queue settled on the sending node.
    Settle {
        /// Vhost.
        vhost: String,
        /// Queue.
        queue: String,
        /// How.
        kind: Settle,
        /// Sequence numbers.
        seqs: Vec<u64>,
    },
    /// The consumer was cancelled on the sending (proxy) node.
    Cancel {
        /// Its id there.
        consumer: u64,
    },
    /// The home cancelled the consumer (queue deleted).
    Cancelled {
        /// Its id on the receiver.
        consumer: u64,
    },
    /// The receiver's publishes up to `upto` are enqueued (and on disk where persistent on a durable
    /// queue), except `nacked` (refused by the queue or its log).
    Acked {
        /// Highest publish number settled, all below it too.
        upto: u64,
        /// Those of them refused.
        nacked: Vec<u64>,
    },
}

const PUBLISH: u8 = 1;
const DELIVER: u8 = 2;
const SETTLE: u8 = 3;
const CANCEL: u8 = 4;
const CANCELLED: u8 = 5;
const ACKED: u8 = 6;

fn put_str(b: &mut BytesMut, s: &[u8]) {
    b.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    b.put_slice(s);
}

/// A message's exchange, routing key, raw properties and body, in that order (publish, deliver).
fn put_content(
    b: &mut BytesMut,
    exchange: &str,
    routing_key: &str,
    properties: &[u8],
    body: &[u8],
) {
    put_str(b, exchange.as_bytes());
    put_str(b, routing_key.as_bytes());
    put_str(b, properties);
    put_str(b, body);
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

fn get_string(b: &mut Bytes) -> Option<String> {
    String::from_utf8(get_bytes(b)?.to_vec()).ok()
}

fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

impl Message {
    /// The message as sent.
    pub(crate) fn encode(&self) -> BytesMut {
        let mut b = BytesMut::new();
        match self {
            Message::Publish {
                seq,
                vhost,
                queue,
                ttl,
                exchange,
                routing_key,
                properties,
                body,
            } => {
                b.reserve(64 + properties.len() + body.len());
                b.put_u8(PUBLISH);
                b.put_u64(*seq);
                put_str(&mut b, vhost.as_bytes());
                put_str(&mut b, queue.as_bytes());
                b.put_u64(*ttl);
                put_content(&mut b, exchange, routing_key, properties, body);
            }
            Message::Deliver {
                consumer,
                seq,
                redelivered,
                delivery_count,
                exchange,
                routing_key,
                properties,
                body,
            } => {
                b.reserve(64 + properties.len() + body.len());
                b.put_u8(DELIVER);
                b.put_u64(*consumer);
                b.put_u64(*seq);
                b.put_u8(u8::from(*redelivered));
                b.put_u32(*delivery_count);
                put_content(&mut b, exchange, routing_key, properties, body);
            }
            Message::Settle {
                vhost,
                queue,
                kind,
                seqs,
            } => {
                b.put_u8(SETTLE);
                put_str(&mut b, vhost.as_bytes());
                put_str(&mut b, queue.as_bytes());
                b.put_u8(match kind {
                    Settle::Ack => 0,
                    Settle::Reject => 1,
                    Settle::Requeue => 2,
                });
                b.put_u32(u32::try_from(seqs.len()).unwrap_or(u32::MAX));
                for s in seqs {
                    b.put_u64(*s);
                }
            }
            Message::Cancel { consumer } => {
                b.put_u8(CANCEL);
                b.put_u64(*consumer);
            }
            Message::Cancelled { consumer } => {
                b.put_u8(CANCELLED);
                b.put_u64(*consumer);
            }
            Message::Acked { upto, nacked } => {
                b.put_u8(ACKED);
                b.put_u64(*upto);
                b.put_u32(u32::try_from(nacked.len()).unwrap_or(u32::MAX));
                for n in nacked {
                    b.put_u64(*n);
                }
            }
        }
        b
    }

    /// Decodes a message; `None` when it is malformed.
    pub(crate) fn decode(mut b: Bytes) -> Option<Message> {
        if !b.has_remaining() {
            return None;
        }
        Some(match b.get_u8() {
            PUBLISH => Message::Publish {
                seq: get_u64(&mut b)?,
                vhost: get_string(&mut b)?,
                queue: get_string(&mut b)?,
                ttl: get_u64(&mut b)?,
                exchange: get_string(&mut b)?,
                routing_key: get_string(&mut b)?,
                properties: get_bytes(&mut b)?,
                body: get_bytes(&mut b)?,
            },
            DELIVER => {
                let consumer = get_u64(&mut b)?;
                let seq = get_u64(&mut b)?;
                if b.remaining() < 5 {
                    return None;
                }
                let redelivered = b.get_u8() != 0;
                let delivery_count = b.get_u32();
                Message::Deliver {
                    consumer,
                    seq,
                    redelivered,
                    delivery_count,
                    exchange: get_string(&mut b)?,
                    routing_key: get_string(&mut b)?,
                    properties: get_bytes(&mut b)?,
                    body: get_bytes(&mut b)?,
                }
            }
            SETTLE => {
                let vhost = get_string(&mut b)?;
                let queue = get_string(&mut b)?;
                if b.remaining() < 5 {
                    return None;
                }
                let kind = match b.get_u8() {
                    0 => Settle::Ack,
                    1 => Settle::Reject,
                    _ => Settle::Requeue,
                };
                let n = b.get_u32() as usize;
                if b.remaining() < n * 8 {
                    return None;
                }
                Message::Settle {
                    vhost,
                    queue,
                    kind,
                    seqs: (0..n).map(|_| b.get_u64()).collect(),
                }
            }
            CANCEL => Message::Cancel {
                consumer: get_u64(&mut b)?,
            },
            CANCELLED => Message::Cancelled {
                consumer: get_u64(&mut b)?,
            },
            ACKED => {
                let upto = get_u64(&mut b)?;
                if b.remaining() < 4 {
                    return None;
                }
                let n = b.get_u32() as usize;
                if b.remaining() < n * 8 {
                    return None;
                }
                Message::Acked {
                    upto,
                    nacked: (0..n).map(|_| b.get_u64()).collect(),
                }
            }
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let m = Message::Publish {
            seq: 7,
            vhost: "/".into(),
            queue: "q".into(),
            ttl: u64::MAX,
            exchange: "x".into(),
            routing_key: "k".into(),
            properties: Bytes::from_static(&[0x80, 0, 1]),
            body: Bytes::from_static(b"hello"),
        };
        let Some(Message::Publish { queue, body, .. }) = Message::decode(m.encode().freeze())
        else {
            panic!("publish did not decode");
        };
        assert_eq!((queue.as_str(), &body[..]), ("q", &b"hello"[..]));
        let s = Message::Settle {
            vhost: "/".into(),
            queue: "q".into(),
            kind: Settle::Requeue,
            seqs: vec![3, 4, 9],
        };
        let Some(Message::Settle { kind, seqs, .. }) = Message::decode(s.encode().freeze()) else {
            panic!("settle did not decode");
        };
        assert_eq!((kind, seqs), (Settle::Requeue, vec![3, 4, 9]));
        // Truncated input is refused, not misread.
        let mut cut = s.encode();
        cut.truncate(cut.len() - 3);
        assert!(Message::decode(cut.freeze()).is_none());
    }
}
