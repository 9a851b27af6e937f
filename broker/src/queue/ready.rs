//! A queue's ready messages: one FIFO per priority level (RabbitMQ docs/priority.md; a single level
//! without `x-max-priority`), the body-octet counts the length limits read, and for a durable queue the
//! paged-out [`Tail`] behind them, read back in order when memory runs dry (ARCHITECTURE.md,
//! "Bounded memory for long queues").

use std::collections::VecDeque;

use tokio::time::Instant;

use super::tail::{AckRange, Tail};
use super::QueuedMessage;

/// What a queued message costs in memory beside its body, octets, for the paging limit (and for
/// how much a refill reads back).
pub(super) const OVERHEAD: u64 = crate::memory::QUEUED_MESSAGE_OVERHEAD as u64;

/// Ready messages, one FIFO per priority level (a single level without `x-max-priority`), and for a
/// durable queue the paged-out [`Tail`] that follows them.
#[derive(Debug, Default)]
pub(super) struct Ready {
    pub(super) levels: Vec<VecDeque<QueuedMessage>>,
    /// All ready messages, in memory and paged out.
    pub(super) len: usize,
    /// Their body octets.
    pub(super) bytes: u64,
    /// Body octets of the in-memory messages.
    pub(super) mem_bytes: u64,
    pub(super) tail: Option<Tail>,
    /// In-memory cost (body octets plus [`OVERHEAD`] per message) above which new messages are paged
    /// out (durable queues; transient ones with a scratch space). `u64::MAX`: never.
    pub(super) memory_limit: u64,
}

impl Ready {
    pub(super) fn new(levels: usize) -> Self {
        Ready {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
            mem_bytes: 0,
            tail: None,
            memory_limit: u64::MAX,
        }
    }

    /// Whether a new message of `size` octets goes to the tail instead of memory. Priority queues keep
    /// everything in memory (their order is not the log's).
    pub(super) fn should_page(&self, size: u64) -> bool {
        self.levels.len() == 1
            && self
                .tail
                .as_ref()
                .is_some_and(|t| t.count > 0 || self.over_memory(size))
    }

    /// Whether a transient queue without a tail yet must start one (open its scratch log) for a new
    /// message of `size` octets.
    pub(super) fn needs_scratch(&self, size: u64) -> bool {
        self.memory_limit != u64::MAX
            && self.tail.is_none()
            && self.levels.len() == 1
            && self.over_memory(size)
    }

    /// Whether a new message of `size` octets would take the in-memory part past the limit: body
    /// octets plus [`OVERHEAD`] per message, so that many small messages page too.
    fn over_memory(&self, size: u64) -> bool {
        self.mem_cost() + OVERHEAD + size > self.memory_limit
    }

    /// What the in-memory messages cost: body octets plus [`OVERHEAD`] each.
    pub(super) fn mem_cost(&self) -> u64 {
        let in_memory = (self.len - self.tail.as_ref().map_or(0, |t| t.count)) as u64;
        self.mem_bytes + in_memory * OVERHEAD
    }

    pub(super) fn push_paged(&mut self, seq: u64, size: u64, persistent: bool) {
        if let Some(t) = &mut self.tail {
            t.page(seq, size, persistent);
            self.len += 1;
            self.bytes += size;
        }
    }

    /// Reads paged messages back once the in-memory part has run dry.
    pub(super) fn refill(&mut self) {
        let Some(tail) = &mut self.tail else { return };
        if tail.count == 0 || self.levels.iter().any(|l| !l.is_empty()) {
            return;
        }
        let before = tail.count;
        let mut loaded = 0;
        let (levels, mem_bytes) = (&mut self.levels, &mut self.mem_bytes);
        let single = levels.len() == 1;
        let max = if single {
            self.memory_limit / 2
        } else {
            u64::MAX
        };
        tail.load(max, |m| {
            loaded += 1;
            *mem_bytes += m.message.body_size();
            let level = if single {
                0
            } else {
                (m.message.properties.priority().unwrap_or(0) as usize).min(levels.len() - 1)
            };
            levels[level].push_back(m);
        });
        // Messages the log no longer had (or could not decode) leave the count too.
        self.len -= before - tail.count - loaded;
        self.bytes = self.mem_bytes + tail.bytes;
    }

    /// Lowest sequence number among ready messages (memory and tail).
    pub(super) fn min_seq(&self) -> Option<u64> {
        self.levels
            .iter()
            .filter_map(|l| l.front().map(|m| m.seq))
            .chain(self.tail.as_ref().and_then(Tail::min_seq))
            .min()
    }

    pub(super) fn level_of(&self, m: &QueuedMessage) -> usize {
        if self.levels.len() == 1 {
            return 0;
        }
        let p = m.message.properties.priority().unwrap_or(0) as usize;
        p.min(self.levels.len() - 1)
    }

    pub(super) fn push_back(&mut self, m: QueuedMessage) {
        self.len += 1;
        self.bytes += m.message.body_size();
        self.mem_bytes += m.message.body_size();
        let level = self.level_of(&m);
        self.levels[level].push_back(m);
    }

    /// Puts a message back at its arrival position within its level.
    pub(super) fn insert_by_seq(&mut self, m: QueuedMessage) {
        self.len += 1;
        self.bytes += m.message.body_size();
        self.mem_bytes += m.message.body_size();
        let level = self.level_of(&m);
        let queue = &mut self.levels[level];
        let pos = queue.partition_point(|r| r.seq < m.seq);
        queue.insert(pos, m);
    }

    pub(super) fn account_removed(&mut self, m: &QueuedMessage) {
        self.len -= 1;
        self.bytes -= m.message.body_size();
        self.mem_bytes -= m.message.body_size();
    }

    /// Removes the message at `index` of priority `level`.
    pub(super) fn remove_at(&mut self, level: usize, index: usize) -> Option<QueuedMessage> {
        let m = self.levels.get_mut(level)?.remove(index)?;
        self.account_removed(&m);
        Some(m)
    }

    /// The next message to deliver: highest priority first, FIFO within a priority.
    pub(super) fn pop_front(&mut self) -> Option<QueuedMessage> {
        self.refill();
        let m = self.levels.iter_mut().rev().find_map(VecDeque::pop_front)?;
        self.account_removed(&m);
        Some(m)
    }

    /// The oldest message of the lowest priority (what `drop-head` drops first).
    pub(super) fn pop_oldest(&mut self) -> Option<QueuedMessage> {
        self.refill();
        let m = self.levels.iter_mut().find_map(VecDeque::pop_front)?;
        self.account_removed(&m);
        Some(m)
    }

    /// Empties the queue: returns the number of messages, the in-memory ones, and the Ack range of the
    /// paged persistent ones.
    pub(super) fn clear(&mut self, next_seq: u64) -> (usize, Vec<QueuedMessage>, Option<AckRange>) {
        let n = self.len;
        let memory = self.levels.iter_mut().flat_map(|l| l.drain(..)).collect();
        let range = self.tail.as_mut().and_then(|t| t.clear(next_seq));
        self.len = 0;
        self.bytes = 0;
        self.mem_bytes = 0;
        (n, memory, range)
    }

    /// Removes every message expired at `now`, appending it to `out`.
    pub(super) fn remove_expired(
        &mut self,
        now: Instant,
        full_scan: bool,
        out: &mut Vec<QueuedMessage>,
    ) {
        self.refill();
        for level in &mut self.levels {
            // Messages carrying only the queue TTL expire in arrival order: the head is enough.
            while level
                .front()
                .is_some_and(|m| m.expires_at.is_some_and(|t| t <= now))
            {
                if let Some(m) = level.pop_front() {
                    out.push(m);
                }
            }
            if full_scan {
                level.retain(|m| {
                    let expired = m.expires_at.is_some_and(|t| t <= now);
                    if expired {
                        out.push(m.clone());
                    }
                    !expired
                });
            }
        }
        for m in out.iter() {
            self.len -= 1;
            self.bytes -= m.message.body_size();
            self.mem_bytes -= m.message.body_size();
        }
    }

    /// Earliest expiry among level heads.
    pub(super) fn head_deadline(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|l| l.front().and_then(|m| m.expires_at))
            .min()
    }
}
