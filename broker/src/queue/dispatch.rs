//! Dispatch: handing ready messages to consumers with capacity (AMQP 0-9-1 §1.8.3.3 prefetch;
//! RabbitMQ docs/consumers.md, docs/consumer-priority.md, single active consumer in docs/queues.md).
//!
//! Plain dispatch pops the head for the next consumer in line (round-robin within the highest
//! priority with room). When consumers have filters or the queue has idempotency keys, dispatch scans
//! the ready list instead: a message no consumer can take now stays in place and later ones are tried
//! ([`SCAN_LIMIT`] per dispatch).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use super::{plugins, Consumer, DeadLetterReason, Letters, Queue, QueueInner, QueuedMessage};

/// Ready messages examined per dispatch when filters or idempotency keys can hold messages back.
const SCAN_LIMIT: usize = 10_000;

impl Queue {
    /// Delivers ready messages to consumers that have capacity, until either runs out. Consumers of the
    /// highest priority with capacity are served round-robin; with a single active consumer only the
    /// first registered consumer is served. Expired messages met at the head are dead-lettered.
    pub(super) fn dispatch(self: &Arc<Self>, inner: &mut QueueInner, letters: &mut Letters) {
        self.dispatch_at(inner, Instant::now(), letters);
    }

    /// [`Queue::dispatch`] at time `now`: a message counts as expired once its deadline is before
    /// `now`, so a message published with TTL 0 at `now` is still delivered to a consumer that can
    /// take it (RabbitMQ docs/ttl.md: expired on reaching the queue "unless they can be delivered to a
    /// consumer immediately").
    pub(super) fn dispatch_at(
        self: &Arc<Self>,
        inner: &mut QueueInner,
        now: Instant,
        letters: &mut Letters,
    ) {
        if inner.consumers.is_empty() || inner.ready.len == 0 {
            return;
        }
        if self.idempotency.is_some() || inner.consumers.any_filtered() {
            return self.dispatch_scan(inner, now, letters);
        }
        while inner.ready.len > 0 {
            let Some(idx) = self.pick_consumer(inner) else {
                break;
            };
            let Some(message) = inner.ready.pop_front() else {
                break;
            };
            self.forget_expiration(inner, &message);
            if message.expires_at.is_some_and(|t| t < now) {
                self.log_acks(inner, [&message]);
                letters.push((message.message, DeadLetterReason::Expired));
                continue;
            }
            self.deliver_to(inner, idx, message);
        }
    }

    /// Hands a message taken from the ready list to consumer `idx`: prefetch accounting, the Deliver
    /// record, the delivery count, then the consumer's channel.
    pub(super) fn deliver_to(
        self: &Arc<Self>,
        inner: &mut QueueInner,
        idx: usize,
        mut message: QueuedMessage,
    ) {
        let consumer = Arc::clone(inner.consumers.get(idx));
        if !consumer.no_ack {
            inner.unacked += 1;
            consumer.unacked.fetch_add(1, Ordering::Relaxed);
        }
        self.log_delivery(inner, &message, consumer.no_ack);
        self.stats
            .delivered(true, consumer.no_ack, message.redelivered);
        message.delivery_count += 1;
        consumer.sink.deliver(self, &consumer, message);
    }

    /// Takes the ready message at (`level`, `index`) out of the queue for good: dead-lettered (or
    /// dropped) with `reason`.
    pub(super) fn drop_ready(
        &self,
        inner: &mut QueueInner,
        level: usize,
        index: usize,
        reason: DeadLetterReason,
        letters: &mut Letters,
    ) {
        if let Some(m) = inner.ready.remove_at(level, index) {
            self.forget_expiration(inner, &m);
            self.log_acks(inner, [&m]);
            letters.push((m.message, reason));
        }
    }

    /// Dispatch when consumers have filters or the queue has idempotency keys: messages that cannot go
    /// now (every consumer with room skips them, or their key is in flight) stay in place and later
    /// ones are tried, up to [`SCAN_LIMIT`] messages per dispatch.
    pub(super) fn dispatch_scan(
        self: &Arc<Self>,
        inner: &mut QueueInner,
        now: Instant,
        letters: &mut Letters,
    ) {
        inner.ready.refill();
        let mut examined = 0;
        for level in (0..inner.ready.levels.len()).rev() {
            let mut i = 0;
            while i < inner.ready.levels[level].len() {
                if examined >= SCAN_LIMIT || !inner.consumers.any_can_take() {
                    return;
                }
                examined += 1;
                let (seq, message, expired) = {
                    let m = &inner.ready.levels[level][i];
                    (
                        m.seq,
                        Arc::clone(&m.message),
                        m.expires_at.is_some_and(|t| t < now),
                    )
                };
                let mut drop_reason = expired.then_some(DeadLetterReason::Expired);
                let mut key = None;
                if drop_reason.is_none() {
                    if let Some(idem) = &self.idempotency {
                        match idem.check(seq, &message) {
                            plugins::KeyCheck::Fresh(k) => key = k,
                            plugins::KeyCheck::Wait => {
                                i += 1;
                                continue;
                            }
                            plugins::KeyCheck::Duplicate => {
                                drop_reason = Some(DeadLetterReason::Duplicate)
                            }
                        }
                    }
                }
                let mut rejected = false;
                let picked = if drop_reason.is_some() {
                    None
                } else {
                    self.pick_consumer_where(inner, |c| match &c.filter {
                        None => true,
                        Some(_) if rejected => false,
                        Some(f) => match f.decide(seq, &message) {
                            plugins::Verdict::Deliver => true,
                            plugins::Verdict::Skip => false,
                            plugins::Verdict::Reject => {
                                rejected = true;
                                false
                            }
                        },
                    })
                };
                if rejected {
                    drop_reason = Some(DeadLetterReason::Rejected);
                }
                if let Some(reason) = drop_reason {
                    self.drop_ready(inner, level, i, reason, letters);
                    continue;
                }
                let Some(idx) = picked else {
                    i += 1;
                    continue;
                };
                let Some(m) = inner.ready.remove_at(level, i) else {
                    break;
                };
                self.forget_expiration(inner, &m);
                if let Some(idem) = &self.idempotency {
                    idem.delivered(m.seq, key, inner.consumers.get(idx).no_ack);
                }
                self.deliver_to(inner, idx, m);
            }
        }
        if let Some(idem) = &self.idempotency {
            idem.forget_pending(inner.ready.len);
        }
    }

    /// The index of the consumer that gets the next message, if any can take one.
    pub(super) fn pick_consumer(&self, inner: &mut QueueInner) -> Option<usize> {
        self.pick_consumer_where(inner, |_| true)
    }

    /// Like [`Queue::pick_consumer`], among the consumers with room that `accept` the message.
    pub(super) fn pick_consumer_where(
        &self,
        inner: &mut QueueInner,
        mut accept: impl FnMut(&Consumer) -> bool,
    ) -> Option<usize> {
        inner
            .consumers
            .pick(self.single_active_consumer, |c| accept(c))
    }

    /// basic.get on a queue with idempotency keys: the first ready message whose key is not in flight;
    /// duplicates met on the way are dropped (or dead-lettered).
    pub(super) fn next_by_key(
        &self,
        inner: &mut QueueInner,
        idem: &plugins::Idempotency,
        no_ack: bool,
        letters: &mut Letters,
    ) -> Option<QueuedMessage> {
        inner.ready.refill();
        for level in (0..inner.ready.levels.len()).rev() {
            let mut i = 0;
            while i < inner.ready.levels[level].len() {
                let (seq, message) = {
                    let m = &inner.ready.levels[level][i];
                    (m.seq, Arc::clone(&m.message))
                };
                match idem.check(seq, &message) {
                    plugins::KeyCheck::Wait => i += 1,
                    plugins::KeyCheck::Duplicate => {
                        self.drop_ready(inner, level, i, DeadLetterReason::Duplicate, letters)
                    }
                    plugins::KeyCheck::Fresh(key) => {
                        idem.delivered(seq, key, no_ack);
                        return inner.ready.remove_at(level, i);
                    }
                }
            }
        }
        None
    }
}
