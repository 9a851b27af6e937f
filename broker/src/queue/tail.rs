//! The paged-out end of a durable queue: messages whose bodies live only in the queue's log, read back
//! in order as the in-memory part drains. Also how a restarted queue gets its recovered messages: they
//! start out as one long tail.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::{error, warn};

use super::ready::OVERHEAD;
use super::QueuedMessage;
use crate::clock::wall_ms;
use crate::memory::Memory;
use crate::message::Message;
use crate::store::log::{RangeSet, TailReader};
use crate::store::record::StoredPublish;
use crate::store::{QueueLog, Recovered};

/// Settled persistent messages of one Ack record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AckRange {
    pub first: u64,
    pub last: u64,
    pub count: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub(super) struct Tail {
    reader: TailReader,
    /// Paged messages (persistent and transient) and their body octets.
    pub count: usize,
    pub bytes: u64,
    persistent_count: u64,
    persistent_bytes: u64,
    /// Sequence number of the first message paged since the tail was last empty: Publish records
    /// below it belong to messages that were kept in memory.
    paged_from: u64,
    last_loaded: Option<u64>,
    /// Recovery: messages acked before the restart, still in the log.
    skip: RangeSet,
    /// Recovery: sequence numbers below this come from before the restart.
    recovered_below: u64,
    /// Recovery: delivered before the restart (meaningful after a clean shutdown).
    delivered: RangeSet,
    clean: bool,
    /// The broker's memory account, charged by the messages read back.
    memory: Memory,
    /// A transient queue's scratch log: segments go once read back (nothing acks them).
    scratch: bool,
}

impl Tail {
    /// A tail holding what `recovered` found in `log`.
    pub(super) fn new(
        log: &Arc<QueueLog>,
        recovered: Recovered,
        clean: bool,
        memory: Memory,
    ) -> Self {
        Tail {
            memory,
            reader: log.reader(),
            count: recovered.count as usize,
            bytes: recovered.bytes,
            persistent_count: recovered.count,
            persistent_bytes: recovered.bytes,
            paged_from: 0,
            last_loaded: None,
            skip: recovered.acked,
            recovered_below: recovered.next_seq,
            delivered: recovered.delivered,
            clean,
            scratch: false,
        }
    }

    /// An empty tail on a transient queue's scratch log.
    pub(super) fn scratch(log: &Arc<QueueLog>, memory: Memory) -> Self {
        Tail {
            scratch: true,
            ..Tail::new(log, Recovered::default(), true, memory)
        }
    }

    /// Lets a scratch log delete the segments read back: every record below the tail's lowest
    /// sequence number (or `next_seq` when the tail is empty) is behind the reader.
    fn release_read(&self, next_seq: u64) {
        if self.scratch {
            self.reader
                .log()
                .set_min_live(self.min_seq().unwrap_or(next_seq));
        }
    }

    /// Counts a message appended to the log and not kept in memory.
    pub(super) fn page(&mut self, seq: u64, size: u64, persistent: bool) {
        if self.count == 0 {
            self.paged_from = seq;
        }
        self.count += 1;
        self.bytes += size;
        if persistent {
            self.persistent_count += 1;
            self.persistent_bytes += size;
        }
    }

    /// Lowest sequence number a paged message can have.
    pub(super) fn min_seq(&self) -> Option<u64> {
        (self.count > 0).then(|| self.paged_from.max(self.last_loaded.map_or(0, |s| s + 1)))
    }

    /// Reads up to `max_bytes` of in-memory cost (body octets plus [`OVERHEAD`] per message; at
    /// least one message) back into memory, in order, via `push`.
    pub(super) fn load(&mut self, max_bytes: u64, mut push: impl FnMut(QueuedMessage)) {
        let mut loaded = 0u64;
        while self.count > 0 && (loaded == 0 || loaded < max_bytes) {
            let p = match self.reader.next_publish() {
                Ok(Some(p)) => p,
                Ok(None) => {
                    warn!(
                        missing = self.count,
                        "queue log ended before every paged message was read back; dropping the count"
                    );
                    self.count = 0;
                    self.bytes = 0;
                    self.persistent_count = 0;
                    self.persistent_bytes = 0;
                    return;
                }
                Err(e) => {
                    error!(error = %e, "cannot read paged messages back from the queue log; will retry");
                    return;
                }
            };
            let recovered = p.seq < self.recovered_below;
            if p.seq < self.paged_from
                || self.last_loaded.is_some_and(|l| p.seq <= l)
                || (recovered && (!p.persistent || self.skip.contains(p.seq)))
            {
                continue;
            }
            self.last_loaded = Some(p.seq);
            let size = p.body.len() as u64;
            self.count -= 1;
            self.bytes = self.bytes.saturating_sub(size);
            if p.persistent {
                self.persistent_count = self.persistent_count.saturating_sub(1);
                self.persistent_bytes = self.persistent_bytes.saturating_sub(size);
            }
            let redelivered = recovered && (!self.clean || self.delivered.contains(p.seq));
            match to_queued(p, redelivered, self.memory) {
                Some(m) => {
                    loaded += size + OVERHEAD;
                    push(m);
                }
                None => error!("a paged message has undecodable properties: dropped"),
            }
            if recovered {
                self.skip.trim_below(self.last_loaded.unwrap_or(0));
            }
        }
        if self.count == 0 {
            self.bytes = 0;
        }
        if let Some(seq) = self.last_loaded {
            self.release_read(seq + 1);
        }
    }

    /// Forgets every paged message; returns the Ack range for the persistent ones.
    pub(super) fn clear(&mut self, next_seq: u64) -> Option<AckRange> {
        let range = (self.persistent_count > 0).then(|| AckRange {
            first: self.min_seq().unwrap_or(0),
            last: next_seq.saturating_sub(1),
            count: self.persistent_count,
            bytes: self.persistent_bytes,
        });
        self.count = 0;
        self.bytes = 0;
        self.persistent_count = 0;
        self.persistent_bytes = 0;
        self.last_loaded = next_seq.checked_sub(1);
        self.release_read(next_seq);
        range
    }
}

/// A stored message as a queue entry (body and properties copied out of the read buffer).
fn to_queued(p: StoredPublish, redelivered: bool, memory: Memory) -> Option<QueuedMessage> {
    let (_, properties) =
        amq_protocol::protocol::basic::parse_properties(&p.properties[..]).ok()?;
    let expires_at = (p.expires_at != 0)
        .then(|| Instant::now() + Duration::from_millis(p.expires_at.saturating_sub(wall_ms())));
    let message = Message::new(
        memory,
        p.exchange_name(),
        p.routing_key_name(),
        properties,
        Bytes::copy_from_slice(&p.properties),
        Bytes::copy_from_slice(&p.body),
    );
    Some(QueuedMessage {
        seq: p.seq,
        message: Arc::new(message),
        redelivered,
        expires_at,
        delivery_count: 0,
        logged: p.persistent,
    })
}
