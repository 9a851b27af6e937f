//! What a durable queue writes to its log besides the publish itself: Ack records when messages
//! leave (a run of consecutive sequence numbers shares one), a Deliver record on first delivery, and
//! the lowest live sequence number that lets the committer delete emptied segments
//! (ARCHITECTURE.md, "Durability: storage design").

use super::{Queue, QueueInner, QueuedMessage};

impl Queue {
    /// Appends Ack records for the logged messages among `ms` (a run of consecutive sequence numbers
    /// shares one record) and tells the log the lowest sequence number still in the queue, so the
    /// committer can delete segments that have emptied.
    pub(super) fn log_acks<'a>(
        &self,
        inner: &mut QueueInner,
        ms: impl IntoIterator<Item = &'a QueuedMessage>,
    ) {
        let Some(log) = &self.log else { return };
        let mut v: Vec<(u64, u64)> = ms
            .into_iter()
            .filter(|m| m.logged)
            .map(|m| (m.seq, m.message.body_size()))
            .collect();
        v.sort_unstable();
        let mut i = 0;
        while i < v.len() {
            let (first, mut bytes) = v[i];
            let mut last = first;
            let mut j = i + 1;
            while j < v.len() && v[j].0 == last + 1 {
                last += 1;
                bytes += v[j].1;
                j += 1;
            }
            log.append_ack(first, last, (j - i) as u64, bytes);
            i = j;
        }
        // Also when none of `ms` was logged: the lowest live message may have moved past segments
        // all the same (a purge of a paged tail, transient messages leaving ahead of it).
        let min_live = [
            inner.outstanding.first().copied(),
            inner.ready.min_seq(),
            Some(inner.next_seq),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(0);
        log.set_min_live(min_live);
    }

    /// Records a delivery of a logged message: a Deliver record the first time, an Ack if the consumer
    /// does not ack (the message is gone), else it stays outstanding until settled.
    pub(super) fn log_delivery(&self, inner: &mut QueueInner, m: &QueuedMessage, no_ack: bool) {
        let Some(log) = self.log.as_ref().filter(|_| m.logged) else {
            return;
        };
        if no_ack {
            self.log_acks(inner, [m]);
        } else {
            if m.delivery_count == 0 && !m.redelivered {
                log.append_deliver(m.seq);
            }
            inner.outstanding.insert(m.seq);
        }
    }

    pub(super) fn forget_outstanding(&self, inner: &mut QueueInner, ms: &[QueuedMessage]) {
        if self.log.is_some() {
            for m in ms.iter().filter(|m| m.logged) {
                inner.outstanding.remove(&m.seq);
            }
        }
    }
}
