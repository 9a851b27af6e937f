//! The quorum group's binary encoding of log entries, for its log file and its AppendEntries RPCs:
//! the messages' bodies travel and rest as they are (JSON, the metadata log's encoding, escaped and
//! base64-encoded them, which cost a quarter of a leader's CPU time).
//!
//! An entry: its log id (JSON, `u32` length first), a payload tag (0 blank, 1 normal, 2
//! membership), and for a normal entry the proposer's node id and request number (`u64` each)
//! then its operations (`u32` count, each an [`Op`] as below); a membership as JSON. Strings and
//! byte strings are a `u32` length and their octets; numbers are big-endian.
//! An AppendEntries request: its vote, previous log id and leader commit (JSON each), then the
//! entries (`u32` count, each `u32` length and the entry).

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes};
use openraft::raft::AppendEntriesRequest;
use openraft::{Entry, EntryPayload};

use super::state::{ConsumerKey, Content, How, Op};
use super::Batch;
use crate::cluster::raft::TypeConfig;
use crate::cluster::{Command, Proposal};

pub(super) fn put_bytes(b: &mut Vec<u8>, s: &[u8]) {
    b.put_u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
    b.put_slice(s);
}

pub(super) fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

pub(super) fn get_string(b: &mut Bytes) -> Option<String> {
    String::from_utf8(get_bytes(b)?.to_vec()).ok()
}

pub(super) fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

pub(super) fn get_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

pub(super) fn get_u8(b: &mut Bytes) -> Option<u8> {
    b.has_remaining().then(|| b.get_u8())
}

fn put_json<T: serde::Serialize>(b: &mut Vec<u8>, v: &T) {
    put_bytes(b, &serde_json::to_vec(v).unwrap_or_default());
}

fn get_json<T: for<'de> serde::Deserialize<'de>>(b: &mut Bytes) -> Option<T> {
    serde_json::from_slice(&get_bytes(b)?).ok()
}

fn put_opt_u32(b: &mut Vec<u8>, v: Option<u32>) {
    b.put_u64(v.map_or(u64::MAX, u64::from));
}

fn get_opt_u32(b: &mut Bytes) -> Option<Option<u32>> {
    let v = get_u64(b)?;
    Some((v != u64::MAX).then(|| u32::try_from(v).unwrap_or(u32::MAX)))
}

fn put_opt_u64(b: &mut Vec<u8>, v: Option<u64>) {
    match v {
        Some(n) => {
            b.put_u8(1);
            b.put_u64(n);
        }
        None => b.put_u8(0),
    }
}

fn get_opt_u64(b: &mut Bytes) -> Option<Option<u64>> {
    match get_u8(b)? {
        0 => Some(None),
        _ => Some(Some(get_u64(b)?)),
    }
}

pub(super) fn put_key(b: &mut Vec<u8>, k: &ConsumerKey) {
    b.put_u64(k.node);
    b.put_u64(k.incarnation);
    b.put_u64(k.id);
}

pub(super) fn get_key(b: &mut Bytes) -> Option<ConsumerKey> {
    Some(ConsumerKey {
        node: get_u64(b)?,
        incarnation: get_u64(b)?,
        id: get_u64(b)?,
    })
}

fn how_tag(h: How) -> u8 {
    match h {
        How::Ack => 0,
        How::Reject => 1,
        How::Requeue => 2,
    }
}

fn how_of(t: u8) -> Option<How> {
    Some(match t {
        0 => How::Ack,
        1 => How::Reject,
        2 => How::Requeue,
        _ => return None,
    })
}

fn put_op(b: &mut Vec<u8>, op: &Op) {
    let queue = |b: &mut Vec<u8>, q: &(String, String)| {
        put_bytes(b, q.0.as_bytes());
        put_bytes(b, q.1.as_bytes());
    };
    match op {
        Op::Enqueue {
            queue: q,
            content,
            max_length,
            max_bytes,
            reject,
        } => {
            b.put_u8(0);
            queue(b, q);
            put_content(b, content);
            put_opt_u64(b, *max_length);
            put_opt_u64(b, *max_bytes);
            b.put_u8(u8::from(*reject));
        }
        Op::Checkout {
            queue: q,
            key,
            prefetch,
            no_ack,
            exclusive,
        } => {
            b.put_u8(1);
            queue(b, q);
            put_key(b, key);
            b.put_u32(*prefetch);
            b.put_u8(u8::from(*no_ack) | (u8::from(*exclusive) << 1));
        }
        Op::Cancel { queue: q, key } => {
            b.put_u8(2);
            queue(b, q);
            put_key(b, key);
        }
        Op::Settle {
            queue: q,
            node,
            incarnation,
            ids,
            how,
            delivery_limit,
        } => {
            b.put_u8(3);
            queue(b, q);
            b.put_u64(*node);
            b.put_u64(*incarnation);
            b.put_u8(how_tag(*how));
            put_opt_u32(b, *delivery_limit);
            b.put_u32(u32::try_from(ids.len()).unwrap_or(u32::MAX));
            for id in ids {
                b.put_u64(*id);
            }
        }
        Op::Get {
            queue: q,
            key,
            no_ack,
        } => {
            b.put_u8(4);
            queue(b, q);
            put_key(b, key);
            b.put_u8(u8::from(*no_ack));
        }
        Op::Purge { queue: q } => {
            b.put_u8(5);
            queue(b, q);
        }
        Op::Delete { queue: q } => {
            b.put_u8(6);
            queue(b, q);
        }
        Op::NodeDown { node, keep, upto } => {
            b.put_u8(7);
            b.put_u64(*node);
            put_opt_u64(b, *keep);
            b.put_u64(*upto);
        }
    }
}

fn get_op(b: &mut Bytes) -> Option<Op> {
    let tag = get_u8(b)?;
    let queue = |b: &mut Bytes| Some((get_string(b)?, get_string(b)?));
    Some(match tag {
        0 => Op::Enqueue {
            queue: queue(b)?,
            content: get_content(b)?,
            max_length: get_opt_u64(b)?,
            max_bytes: get_opt_u64(b)?,
            reject: get_u8(b)? != 0,
        },
        1 => {
            let (q, key, prefetch, flags) = (queue(b)?, get_key(b)?, get_u32(b)?, get_u8(b)?);
            Op::Checkout {
                queue: q,
                key,
                prefetch,
                no_ack: flags & 1 != 0,
                exclusive: flags & 2 != 0,
            }
        }
        2 => Op::Cancel {
            queue: queue(b)?,
            key: get_key(b)?,
        },
        3 => {
            let q = queue(b)?;
            let node = get_u64(b)?;
            let incarnation = get_u64(b)?;
            let how = how_of(get_u8(b)?)?;
            let delivery_limit = get_opt_u32(b)?;
            let n = get_u32(b)? as usize;
            if b.remaining() < n.saturating_mul(8) {
                return None;
            }
            let ids = (0..n).map(|_| b.get_u64()).collect();
            Op::Settle {
                queue: q,
                node,
                incarnation,
                ids,
                how,
                delivery_limit,
            }
        }
        4 => Op::Get {
            queue: queue(b)?,
            key: get_key(b)?,
            no_ack: get_u8(b)? != 0,
        },
        5 => Op::Purge { queue: queue(b)? },
        6 => Op::Delete { queue: queue(b)? },
        7 => Op::NodeDown {
            node: get_u64(b)?,
            keep: get_opt_u64(b)?,
            upto: get_u64(b)?,
        },
        _ => return None,
    })
}

/// Appends `e`'s encoding to `out`.
pub(crate) fn encode_entry(e: &Entry<TypeConfig>, out: &mut Vec<u8>) {
    put_json(out, &e.log_id);
    match &e.payload {
        EntryPayload::Blank => out.put_u8(0),
        EntryPayload::Normal(p) => {
            out.put_u8(1);
            out.put_u64(p.origin);
            out.put_u64(p.request);
            match &p.command {
                Command::Quorum(batch) => {
                    out.put_u32(u32::try_from(batch.ops.len()).unwrap_or(u32::MAX));
                    for op in &batch.ops {
                        put_op(out, op);
                    }
                }
                // Never proposed to the quorum group; kept readable all the same.
                other => {
                    out.put_u32(u32::MAX);
                    put_json(out, other);
                }
            }
        }
        EntryPayload::Membership(m) => {
            out.put_u8(2);
            put_json(out, m);
        }
    }
}

/// Decodes an entry; `None` when it is malformed.
pub(crate) fn decode_entry(b: &mut Bytes) -> Option<Entry<TypeConfig>> {
    let log_id = get_json(b)?;
    let payload = match get_u8(b)? {
        0 => EntryPayload::Blank,
        1 => {
            let origin = get_u64(b)?;
            let request = get_u64(b)?;
            let n = get_u32(b)?;
            let command = if n == u32::MAX {
                get_json(b)?
            } else {
                let mut ops = Vec::with_capacity((n as usize).min(4096));
                for _ in 0..n {
                    ops.push(get_op(b)?);
                }
                Command::Quorum(Batch { ops })
            };
            EntryPayload::Normal(Proposal {
                origin,
                request,
                command,
            })
        }
        2 => EntryPayload::Membership(get_json(b)?),
        _ => return None,
    };
    Some(Entry { log_id, payload })
}

/// A message's content: exchange, routing key, properties, body.
fn put_content(b: &mut Vec<u8>, c: &Content) {
    put_bytes(b, c.exchange.as_bytes());
    put_bytes(b, c.routing_key.as_bytes());
    put_bytes(b, &c.properties);
    put_bytes(b, &c.body);
}

/// Reads what [`put_content`] wrote.
fn get_content(b: &mut Bytes) -> Option<Arc<Content>> {
    Some(Arc::new(Content {
        exchange: get_string(b)?,
        routing_key: get_string(b)?,
        properties: get_bytes(b)?,
        body: get_bytes(b)?,
    }))
}

/// A message's content and counters (the snapshot's encoding).
pub(super) fn put_msg(b: &mut Vec<u8>, m: &super::state::Msg) {
    b.put_u64(m.id);
    put_content(b, &m.content);
    b.put_u32(m.delivery_count);
    b.put_u8(u8::from(m.redelivered));
}

/// Reads what [`put_msg`] wrote.
pub(super) fn get_msg(b: &mut Bytes) -> Option<super::state::Msg> {
    Some(super::state::Msg {
        id: get_u64(b)?,
        content: get_content(b)?,
        delivery_count: get_u32(b)?,
        redelivered: get_u8(b)? != 0,
    })
}

/// The first octet of a binary AppendEntries request on the link (JSON requests start with `{`
/// or `"`).
pub(crate) const APPEND_ENTRIES: u8 = 1;

/// An AppendEntries request of the quorum group as sent on the link.
pub(crate) fn encode_append(r: &AppendEntriesRequest<TypeConfig>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + r.entries.len() * 64);
    out.put_u8(APPEND_ENTRIES);
    put_json(&mut out, &r.vote);
    put_json(&mut out, &r.prev_log_id);
    put_json(&mut out, &r.leader_commit);
    out.put_u32(u32::try_from(r.entries.len()).unwrap_or(u32::MAX));
    let mut entry = Vec::new();
    for e in &r.entries {
        entry.clear();
        encode_entry(e, &mut entry);
        put_bytes(&mut out, &entry);
    }
    out
}

/// Decodes what [`encode_append`] wrote (after its first octet).
pub(crate) fn decode_append(mut b: Bytes) -> Option<AppendEntriesRequest<TypeConfig>> {
    let vote = get_json(&mut b)?;
    let prev_log_id = get_json(&mut b)?;
    let leader_commit = get_json(&mut b)?;
    let n = get_u32(&mut b)?;
    let mut entries = Vec::with_capacity((n as usize).min(4096));
    for _ in 0..n {
        let mut e = get_bytes(&mut b)?;
        entries.push(decode_entry(&mut e)?);
    }
    Some(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_survives_its_encoding() {
        let q = ("/".to_owned(), "q".to_owned());
        let key = ConsumerKey {
            node: 1,
            incarnation: 2,
            id: 3,
        };
        let ops = vec![
            Op::Enqueue {
                queue: q.clone(),
                content: Arc::new(Content {
                    exchange: "x".into(),
                    routing_key: "rk".into(),
                    properties: Bytes::from_static(b"\x80\x00\x02"),
                    body: Bytes::from(vec![0u8, 255, 7]),
                }),
                max_length: Some(5),
                max_bytes: None,
                reject: true,
            },
            Op::Checkout {
                queue: q.clone(),
                key,
                prefetch: 10,
                no_ack: false,
                exclusive: true,
            },
            Op::Cancel {
                queue: q.clone(),
                key,
            },
            Op::Settle {
                queue: q.clone(),
                node: 1,
                incarnation: 2,
                ids: vec![4, 5],
                how: How::Requeue,
                delivery_limit: Some(20),
            },
            Op::Get {
                queue: q.clone(),
                key,
                no_ack: true,
            },
            Op::Purge { queue: q.clone() },
            Op::Delete { queue: q },
            Op::NodeDown {
                node: 9,
                keep: Some(8),
                upto: u64::MAX,
            },
        ];
        let entry = Entry::<TypeConfig> {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 42),
            payload: EntryPayload::Normal(Proposal {
                origin: 1,
                request: 77,
                command: Command::Quorum(Batch { ops: ops.clone() }),
            }),
        };
        let mut out = Vec::new();
        encode_entry(&entry, &mut out);
        let back = decode_entry(&mut Bytes::from(out.clone())).unwrap();
        assert_eq!(back.log_id, entry.log_id);
        let EntryPayload::Normal(p) = back.payload else {
            panic!("not a normal entry")
        };
        let Command::Quorum(b) = p.command else {
            panic!("not a quorum batch")
        };
        assert_eq!(b.ops, ops);
        // A truncated record is refused, not misread.
        assert!(decode_entry(&mut Bytes::from(out[..out.len() - 3].to_vec())).is_none());
    }
}
