//! Message statistics as RabbitMQ's management API reports them (`message_stats`: publish, confirm,
//! return_unroutable, deliver, deliver_no_ack, get, get_no_ack, deliver_get, redeliver, ack, each
//! with `*_details.rate` in messages per second; RabbitMQ docs/management.md "Message rates").
//!
//! Counting costs a relaxed load and store (no read-modify-write, no lock prefix) on a counter that
//! has one writer at a time: a channel's counters are written by its connection's task (deliveries
//! under the channel's lock), a queue's under the queue's lock ([`add_local`]). Never a broker-wide
//! counter on the hot path. Totals are summed when read: per vhost and for the node from the open channels plus the
//! counts of closed channels ([`MessageCounters::absorb`] into the broker's retired totals).

use std::sync::atomic::{AtomicU64, Ordering};

/// The counters of one channel, one queue, or a retired total.
#[derive(Debug, Default)]
pub struct MessageCounters {
    /// Messages published (basic.publish completed with its content).
    pub publish: AtomicU64,
    /// Publisher confirms sent (basic.ack to a publisher, per message).
    pub confirm: AtomicU64,
    /// Mandatory messages returned unroutable (basic.return).
    pub return_unroutable: AtomicU64,
    /// Deliveries to consumers that need an ack.
    pub deliver: AtomicU64,
    /// Deliveries to no-ack consumers.
    pub deliver_no_ack: AtomicU64,
    /// basic.get answered with a message, ack needed.
    pub get: AtomicU64,
    /// basic.get answered with a message, no-ack.
    pub get_no_ack: AtomicU64,
    /// Deliveries (any kind) of a message delivered before.
    pub redeliver: AtomicU64,
    /// Messages acknowledged.
    pub ack: AtomicU64,
    /// Publishes received on a channel in confirm mode.
    pub received_confirm: AtomicU64,
    /// Publishes routed to at least one queue.
    pub routed: AtomicU64,
    /// Publishes routed nowhere and dropped (not mandatory).
    pub unroutable_dropped: AtomicU64,
    /// basic.get answered get-empty.
    pub get_empty: AtomicU64,
    /// Published body sizes: counts per bucket of [`SIZE_BUCKETS`] (the last is +Inf), and the sum.
    pub size_buckets: [AtomicU64; SIZE_BUCKETS.len() + 1],
    /// Sum of published body sizes, octets.
    pub size_sum: AtomicU64,
}

/// The index in [`SIZE_BUCKETS`] of the first bucket holding `size` ([`SIZE_BUCKETS`]`.len()` for
/// +Inf): the buckets are powers of four from 64, so it is half the bits `size - 1` needs, above 6.
#[inline]
pub fn size_bucket(size: u64) -> usize {
    let bits = 64 - size.saturating_sub(1).leading_zeros() as usize;
    (bits.saturating_sub(6).div_ceil(2)).min(SIZE_BUCKETS.len())
}

/// Upper bounds (octets) of the published-size histogram's buckets: RabbitMQ's
/// `rabbitmq_message_size_bytes` buckets (`rabbit_msg_size_metrics`).
pub const SIZE_BUCKETS: [u64; 12] = [
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262_144,
    1_048_576,
    4_194_304,
    16_777_216,
    67_108_864,
    268_435_456,
];

/// Adds `n` to `counter` from any thread (an atomic add; relaxed: counters order nothing).
#[inline]
pub fn bump(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Adds `n` to a counter that only one thread writes at a time (its owner's task, or under its
/// owner's lock): a plain load and store, which readers on other threads see whole.
#[inline]
pub fn add_local(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl MessageCounters {
    /// Counts one publish of `size` body octets (`confirm`: the channel is in confirm mode).
    #[inline]
    pub fn received(&self, size: u64, confirm: bool) {
        add_local(&self.publish, 1);
        if confirm {
            add_local(&self.received_confirm, 1);
        }
        add_local(&self.size_buckets[size_bucket(size)], 1);
        add_local(&self.size_sum, size);
    }

    /// Counts one delivery: to a consumer (`consumer`) or for basic.get, with or without ack (one
    /// writer at a time, see [`add_local`]).
    #[inline]
    pub fn delivered(&self, consumer: bool, no_ack: bool, redelivered: bool) {
        let c = match (consumer, no_ack) {
            (true, false) => &self.deliver,
            (true, true) => &self.deliver_no_ack,
            (false, false) => &self.get,
            (false, true) => &self.get_no_ack,
        };
        add_local(c, 1);
        if redelivered {
            add_local(&self.redeliver, 1);
        }
    }

    /// The counters now.
    pub fn snapshot(&self) -> MessageStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MessageStats {
            publish: l(&self.publish),
            confirm: l(&self.confirm),
            return_unroutable: l(&self.return_unroutable),
            deliver: l(&self.deliver),
            deliver_no_ack: l(&self.deliver_no_ack),
            get: l(&self.get),
            get_no_ack: l(&self.get_no_ack),
            redeliver: l(&self.redeliver),
            ack: l(&self.ack),
            received_confirm: l(&self.received_confirm),
            routed: l(&self.routed),
            unroutable_dropped: l(&self.unroutable_dropped),
            get_empty: l(&self.get_empty),
            size_buckets: std::array::from_fn(|i| l(&self.size_buckets[i])),
            size_sum: l(&self.size_sum),
        }
    }

    /// Adds `other`'s counts (a closing channel's, into the retired totals).
    pub fn absorb(&self, other: &MessageStats) {
        for (c, n) in [
            (&self.publish, other.publish),
            (&self.confirm, other.confirm),
            (&self.return_unroutable, other.return_unroutable),
            (&self.deliver, other.deliver),
            (&self.deliver_no_ack, other.deliver_no_ack),
            (&self.get, other.get),
            (&self.get_no_ack, other.get_no_ack),
            (&self.redeliver, other.redeliver),
            (&self.ack, other.ack),
            (&self.received_confirm, other.received_confirm),
            (&self.routed, other.routed),
            (&self.unroutable_dropped, other.unroutable_dropped),
            (&self.get_empty, other.get_empty),
            (&self.size_sum, other.size_sum),
        ] {
            bump(c, n);
        }
        for (c, n) in self.size_buckets.iter().zip(other.size_buckets) {
            bump(c, n);
        }
    }
}

/// One channel's publishes through one exchange (`publish_in`: published to it; `publish_out`:
/// routed by it to at least one queue). Written by the channel's connection task only.
#[derive(Debug, Default)]
pub struct ExchangeCounters {
    /// Messages published to the exchange.
    pub publish_in: AtomicU64,
    /// Of those, messages it routed to at least one queue.
    pub publish_out: AtomicU64,
}

/// A channel's [`ExchangeCounters`], by exchange name: the list readers see (behind a mutex taken
/// when a channel first publishes to an exchange, and by readers) and the channel's cache of the
/// last one used, so that a publish to the same exchange as the one before takes no lock.
#[derive(Debug, Default)]
pub struct ExchangeTally {
    last: Option<(
        amq_protocol::types::ShortString,
        std::sync::Arc<ExchangeCounters>,
    )>,
}

/// The readers' side of a channel's [`ExchangeTally`].
pub type ExchangeList = std::sync::Mutex<
    Vec<(
        amq_protocol::types::ShortString,
        std::sync::Arc<ExchangeCounters>,
    )>,
>;

impl ExchangeTally {
    /// Counts a publish to `exchange` (`routed`: to at least one queue).
    #[inline]
    pub fn count(
        &mut self,
        list: &ExchangeList,
        exchange: &amq_protocol::types::ShortString,
        routed: bool,
    ) {
        let hit = matches!(&self.last, Some((name, _)) if name == exchange);
        if !hit {
            let mut all = crate::sync::lock(list);
            let counters = match all.iter().find(|(name, _)| name == exchange) {
                Some((_, c)) => std::sync::Arc::clone(c),
                None => {
                    let c = std::sync::Arc::new(ExchangeCounters::default());
                    all.push((exchange.clone(), std::sync::Arc::clone(&c)));
                    c
                }
            };
            self.last = Some((exchange.clone(), counters));
        }
        if let Some((_, c)) = &self.last {
            add_local(&c.publish_in, 1);
            if routed {
                add_local(&c.publish_out, 1);
            }
        }
    }
}

/// A snapshot of [`MessageCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MessageStats {
    /// See [`MessageCounters::publish`].
    pub publish: u64,
    /// See [`MessageCounters::confirm`].
    pub confirm: u64,
    /// See [`MessageCounters::return_unroutable`].
    pub return_unroutable: u64,
    /// See [`MessageCounters::deliver`].
    pub deliver: u64,
    /// See [`MessageCounters::deliver_no_ack`].
    pub deliver_no_ack: u64,
    /// See [`MessageCounters::get`].
    pub get: u64,
    /// See [`MessageCounters::get_no_ack`].
    pub get_no_ack: u64,
    /// See [`MessageCounters::redeliver`].
    pub redeliver: u64,
    /// See [`MessageCounters::ack`].
    pub ack: u64,
    /// See [`MessageCounters::received_confirm`].
    pub received_confirm: u64,
    /// See [`MessageCounters::routed`].
    pub routed: u64,
    /// See [`MessageCounters::unroutable_dropped`].
    pub unroutable_dropped: u64,
    /// See [`MessageCounters::get_empty`].
    pub get_empty: u64,
    /// See [`MessageCounters::size_buckets`].
    pub size_buckets: [u64; SIZE_BUCKETS.len() + 1],
    /// See [`MessageCounters::size_sum`].
    pub size_sum: u64,
}

impl std::ops::AddAssign for MessageStats {
    fn add_assign(&mut self, o: Self) {
        self.publish += o.publish;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
        self.received_confirm += o.received_confirm;
        self.routed += o.routed;
        self.unroutable_dropped += o.unroutable_dropped;
        self.get_empty += o.get_empty;
        for (a, b) in self.size_buckets.iter_mut().zip(o.size_buckets) {
            *a += b;
        }
        self.size_sum += o.size_sum;
    }
}

impl MessageStats {
    /// `deliver_get`: every delivery and get, as RabbitMQ sums it.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// The fields in RabbitMQ's order, with their names (`deliver_get` included).
    pub fn fields(&self) -> [(&'static str, u64); 10] {
        [
            ("publish", self.publish),
            ("confirm", self.confirm),
            ("return_unroutable", self.return_unroutable),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("deliver_get", self.deliver_get()),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_buckets_match_a_linear_search() {
        for size in [
            0u64,
            1,
            63,
            64,
            65,
            255,
            256,
            257,
            1024,
            1025,
            4096,
            1 << 20,
            (1 << 28) - 1,
            1 << 28,
            (1 << 28) + 1,
            u64::MAX,
        ] {
            let linear = SIZE_BUCKETS
                .iter()
                .position(|b| size <= *b)
                .unwrap_or(SIZE_BUCKETS.len());
            assert_eq!(size_bucket(size), linear, "{size}");
        }
    }

    #[test]
    fn counts_sum_and_absorb() {
        let c = MessageCounters::default();
        c.delivered(true, false, false);
        c.delivered(true, true, true);
        c.delivered(false, false, false);
        c.received(10, true);
        c.received(100, false);
        c.received(1 << 30, false);
        let s = c.snapshot();
        assert_eq!(s.size_buckets[0], 1);
        assert_eq!(s.size_buckets[1], 1);
        assert_eq!(s.size_buckets[SIZE_BUCKETS.len()], 1, "+Inf");
        assert_eq!((s.size_sum, s.received_confirm), (110 + (1 << 30), 1));
        assert_eq!(
            (s.deliver, s.deliver_no_ack, s.get, s.redeliver),
            (1, 1, 1, 1)
        );
        assert_eq!(s.deliver_get(), 3);
        let total = MessageCounters::default();
        total.absorb(&s);
        total.absorb(&s);
        assert_eq!(total.snapshot().publish, 6);
    }
}
