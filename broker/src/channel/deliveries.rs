//! The delivery half of a channel: [`ChannelShared`], which queues deliver into from any task (it is
//! their [`ConsumerSink`]), with the delivery-tag counter, the unacked deliveries, the consumer table
//! and the direct reply-to consumer behind one std `Mutex`; and [`settle`], which hands settled
//! deliveries back to their queues (ack, reject, requeue). AMQP 0-9-1 §1.8.3.9 basic.deliver; RabbitMQ
//! docs/confirms.md (consumer acknowledgements), docs/consumers.md (delivery acknowledgement timeout).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic as amqp_basic, AMQPClass};
use amq_protocol::types::ShortString;
use bytes::BytesMut;
use tokio::time::Instant;

use crate::error::{AmqpError, AmqpResult};
use crate::message::MessageRef;
use crate::protocol::encode;
use crate::protocol::outbound::Outbound;
pub(super) use crate::queue::Settle;
use crate::queue::{Consumer, ConsumerSink, Queue, QueuedMessage};
use crate::vhost::reply_to::ReplySink;

/// A delivery awaiting basic.ack / nack / reject.
#[derive(Debug)]
pub(super) struct Unacked {
    pub(super) tag: u64,
    pub(super) queue: Arc<Queue>,
    /// `None` for basic.get deliveries (no consumer prefetch to release).
    pub(super) consumer: Option<Arc<Consumer>>,
    pub(super) message: QueuedMessage,
    /// When the delivery acknowledgement timeout runs out.
    pub(super) deadline: Instant,
}

/// Delivery state reached from queues: tags, unacked deliveries, consumers.
#[derive(Debug, Default)]
pub(super) struct Deliveries {
    pub(super) next_tag: u64,
    /// Sorted by tag (tags are assigned in increasing order).
    pub(super) unacked: VecDeque<Unacked>,
    pub(super) consumers: HashMap<ShortString, (Arc<Consumer>, Arc<Queue>)>,
    /// No unacked delivery times out before this (may be stale-early; then a scan recomputes it).
    pub(super) earliest_deadline: Option<Instant>,
    /// Direct reply-to consumer: (token, consumer tag).
    pub(super) reply: Option<(String, ShortString)>,
}

/// The half of a channel that queues deliver into. See the module docs.
#[derive(Debug)]
pub(crate) struct ChannelShared {
    /// Channel number.
    pub id: u16,
    pub(super) outbound: Arc<Outbound>,
    pub(super) state: Mutex<Deliveries>,
    /// `unacked.len()`, readable without the lock for the global prefetch check.
    pub(super) unacked_len: AtomicUsize,
    /// Channel-wide prefetch (`basic.qos global=true`); 0 = unlimited.
    pub(super) global_prefetch: AtomicU16,
    pub(super) cancel_notify: bool,
    /// Default acknowledgement timeout, ms.
    pub(super) consumer_timeout: u64,
    /// Message counters (`/api/channels` `message_stats`).
    pub(crate) stats: crate::stats::MessageCounters,
    /// Per-consumer prefetch count set by basic.qos (`prefetch_count` in the API).
    pub(crate) prefetch_count: AtomicU16,
    /// In confirm mode.
    pub(crate) confirm: std::sync::atomic::AtomicBool,
    /// In tx mode.
    pub(crate) transactional: std::sync::atomic::AtomicBool,
    /// Publishes through each exchange (`/api/exchanges` `message_stats`).
    pub(crate) exchanges: crate::stats::ExchangeList,
}

impl ChannelShared {
    /// A newly opened channel's shared half: no deliveries, no prefetch, counters at zero.
    pub(super) fn new(
        id: u16,
        outbound: Arc<Outbound>,
        cancel_notify: bool,
        consumer_timeout: u64,
    ) -> Self {
        ChannelShared {
            id,
            outbound,
            state: Mutex::new(Deliveries::default()),
            unacked_len: AtomicUsize::new(0),
            global_prefetch: AtomicU16::new(0),
            cancel_notify,
            consumer_timeout,
            stats: crate::stats::MessageCounters::default(),
            prefetch_count: AtomicU16::new(0),
            confirm: std::sync::atomic::AtomicBool::new(false),
            transactional: std::sync::atomic::AtomicBool::new(false),
            exchanges: Default::default(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Deliveries> {
        // Nothing panics while holding this lock; recover the state rather than spread a poison.
        crate::sync::lock(&self.state)
    }

    /// Records a delivery (unless no-ack) and returns its tag. Call with the lock held so that tag order
    /// equals write order.
    pub(super) fn track(
        &self,
        d: &mut Deliveries,
        queue: &Arc<Queue>,
        consumer: Option<&Arc<Consumer>>,
        m: &QueuedMessage,
        no_ack: bool,
    ) -> u64 {
        d.next_tag += 1;
        let tag = d.next_tag;
        self.stats
            .delivered(consumer.is_some(), no_ack, m.redelivered);
        if !no_ack {
            let timeout = queue.consumer_timeout().unwrap_or(self.consumer_timeout);
            let deadline = Instant::now() + Duration::from_millis(timeout);
            d.earliest_deadline = Some(d.earliest_deadline.map_or(deadline, |e| e.min(deadline)));
            d.unacked.push_back(Unacked {
                tag,
                queue: Arc::clone(queue),
                consumer: consumer.cloned(),
                message: m.clone(),
                deadline,
            });
            self.unacked_len.store(d.unacked.len(), Ordering::Relaxed);
        }
        tag
    }

    /// Removes the deliveries `tag` (or all up to `tag` if `multiple`; `multiple` with 0 means all).
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED "unknown delivery tag N" when `tag` is not outstanding.
    pub(super) fn take(&self, tag: u64, multiple: bool, out: &mut Vec<Unacked>) -> AmqpResult {
        let mut d = self.lock();
        if multiple && tag == 0 {
            out.extend(d.unacked.drain(..));
        } else {
            let pos = d.unacked.binary_search_by_key(&tag, |u| u.tag);
            let Ok(pos) = pos else {
                return Err(AmqpError::precondition_failed(format!(
                    "unknown delivery tag {tag}"
                )));
            };
            if multiple {
                out.extend(d.unacked.drain(..=pos));
            } else if let Some(u) = d.unacked.remove(pos) {
                out.push(u);
            }
        }
        self.unacked_len.store(d.unacked.len(), Ordering::Relaxed);
        Ok(())
    }

    /// The timeout (ms) of an unacked delivery whose acknowledgement deadline has passed, if any.
    pub(super) fn timed_out(&self, now: Instant) -> Option<u64> {
        let mut d = self.lock();
        if d.earliest_deadline.is_none_or(|e| e > now) {
            return None;
        }
        if let Some(u) = d.unacked.iter().find(|u| u.deadline <= now) {
            return Some(u.queue.consumer_timeout().unwrap_or(self.consumer_timeout));
        }
        d.earliest_deadline = d.unacked.iter().map(|u| u.deadline).min();
        None
    }

    /// The direct reply-to token of this channel's reply consumer, if it has one.
    pub(super) fn reply_token(&self) -> Option<String> {
        self.lock().reply.as_ref().map(|(token, _)| token.clone())
    }

    /// The channel's consumers with their queues (for the management API).
    pub(crate) fn consumer_list(&self) -> Vec<(Arc<Consumer>, Arc<Queue>)> {
        let mut v: Vec<(Arc<Consumer>, Arc<Queue>)> = self
            .lock()
            .consumers
            .values()
            .map(|(c, q)| (Arc::clone(c), Arc::clone(q)))
            .collect();
        v.sort_by(|a, b| a.0.tag.cmp(&b.0.tag));
        v
    }

    /// Deliveries awaiting an ack.
    pub(crate) fn unacked_count(&self) -> usize {
        self.unacked_len.load(Ordering::Relaxed)
    }

    /// The channel-wide prefetch count (`basic.qos global=true`); 0 = unlimited.
    pub(crate) fn global_prefetch_count(&self) -> u16 {
        self.global_prefetch.load(Ordering::Relaxed)
    }

    /// Queues this channel consumes from (to re-dispatch after capacity frees up).
    pub(super) fn consumer_queues(&self) -> Vec<Arc<Queue>> {
        self.lock()
            .consumers
            .values()
            .map(|(_, q)| Arc::clone(q))
            .collect()
    }
}

/// Writes a delivery (method, header, body frames) for `message` on `channel`.
pub(super) fn write_message(
    out: &mut BytesMut,
    channel: u16,
    message: &crate::message::Message,
    frame_max: usize,
) {
    encode::content_header(out, channel, message.body_size(), &message.raw_properties);
    if !message.body.is_empty() {
        encode::content_body(out, channel, &message.body, frame_max);
    }
}

impl ReplySink for ChannelShared {
    fn deliver_reply(&self, message: &MessageRef) -> bool {
        let mut d = self.lock();
        let Some((_, tag)) = &d.reply else {
            return false;
        };
        let tag = tag.clone();
        d.next_tag += 1;
        let delivery_tag = d.next_tag;
        let frame_max = self.outbound.frame_max();
        self.outbound
            .write(|out| {
                encode::deliver_method(
                    out,
                    self.id,
                    tag.as_str(),
                    delivery_tag,
                    false,
                    message.exchange.as_str(),
                    message.routing_key.as_str(),
                );
                write_message(out, self.id, message, frame_max);
            })
            .is_some()
    }
}

impl ConsumerSink for ChannelShared {
    fn has_capacity(&self, consumer: &Consumer) -> bool {
        if !self.outbound.has_room() {
            return false;
        }
        let global = self.global_prefetch.load(Ordering::Relaxed);
        consumer.no_ack
            || global == 0
            || self.unacked_len.load(Ordering::Relaxed) < usize::from(global)
    }

    fn deliver(&self, queue: &Arc<Queue>, consumer: &Arc<Consumer>, message: QueuedMessage) {
        let mut d = self.lock();
        let tag = self.track(&mut d, queue, Some(consumer), &message, consumer.no_ack);
        let frame_max = self.outbound.frame_max();
        let m = &message.message;
        self.outbound.write(|out| {
            encode::deliver_method(
                out,
                self.id,
                consumer.tag.as_str(),
                tag,
                message.redelivered,
                m.exchange.as_str(),
                m.routing_key.as_str(),
            );
            write_message(out, self.id, m, frame_max);
        });
    }

    fn cancelled(&self, consumer: &Arc<Consumer>) {
        let mut d = self.lock();
        let owned = d
            .consumers
            .get(consumer.tag.as_str())
            .is_some_and(|(c, _)| Arc::ptr_eq(c, consumer));
        if owned {
            d.consumers.remove(consumer.tag.as_str());
        }
        drop(d);
        if owned && self.cancel_notify {
            let cancel = amqp_basic::Cancel {
                consumer_tag: consumer.tag.clone(),
                nowait: true,
            };
            self.outbound.write(|out| {
                encode::frame(
                    out,
                    &AMQPFrame::Method(
                        self.id,
                        AMQPClass::Basic(amqp_basic::AMQPMethod::Cancel(cancel)),
                    ),
                )
            });
        }
    }
}

/// Releases consumer prefetch for settled deliveries and hands them to their queue (once per run of
/// the same queue), which dispatches into the freed capacity. Empties `settled`.
pub(super) fn settle(settled: &mut Vec<Unacked>, how: Settle) {
    let mut run: Option<(Arc<Queue>, Vec<QueuedMessage>)> = None;
    let finish = |q: Arc<Queue>, ms: Vec<QueuedMessage>| q.settle_as(how, ms);
    for u in settled.drain(..) {
        if let Some(c) = &u.consumer {
            c.unacked.fetch_sub(1, Ordering::Relaxed);
        }
        match &mut run {
            Some((q, ms)) if Arc::ptr_eq(q, &u.queue) => ms.push(u.message),
            _ => {
                if let Some((q, ms)) = run.replace((u.queue, vec![u.message])) {
                    finish(q, ms);
                }
            }
        }
    }
    if let Some((q, ms)) = run {
        finish(q, ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::test_support::{message, queue};

    fn shared(consumer_timeout: u64) -> ChannelShared {
        ChannelShared::new(1, Arc::new(Outbound::new(131_072)), true, consumer_timeout)
    }

    fn queued(seq: u64) -> QueuedMessage {
        QueuedMessage {
            seq,
            message: message("k", None),
            redelivered: false,
            expires_at: None,
            delivery_count: 0,
            logged: false,
        }
    }

    /// The delivery acknowledgement timeout (RabbitMQ docs/consumers.md) on paused time: a delivery
    /// times out once unacked past the channel's timeout; acking it in time, or no-ack, never does.
    #[tokio::test(start_paused = true)]
    async fn unacked_deliveries_time_out_and_acked_ones_do_not() {
        let ch = shared(1_000);
        let q = queue("q");
        {
            let mut d = ch.lock();
            assert_eq!(ch.track(&mut d, &q, None, &queued(0), false), 1);
            assert_eq!(
                ch.track(&mut d, &q, None, &queued(1), true),
                2,
                "no-ack: tag only"
            );
        }
        assert_eq!(ch.unacked_len.load(Ordering::Relaxed), 1);
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(ch.timed_out(Instant::now()), None);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(ch.timed_out(Instant::now()), Some(1_000));

        let ch = shared(1_000);
        {
            let mut d = ch.lock();
            ch.track(&mut d, &q, None, &queued(0), false);
        }
        let mut out = Vec::new();
        ch.take(1, false, &mut out).expect("outstanding");
        assert_eq!(out.len(), 1);
        tokio::time::advance(Duration::from_millis(5_000)).await;
        assert_eq!(ch.timed_out(Instant::now()), None, "acked in time");
    }

    #[test]
    fn unknown_delivery_tags_are_406_and_multiple_takes_a_prefix() {
        let ch = shared(60_000);
        let q = queue("q");
        {
            let mut d = ch.lock();
            for seq in 0..5 {
                ch.track(&mut d, &q, None, &queued(seq), false);
            }
        }
        let mut out = Vec::new();
        let err = ch.take(9, false, &mut out).expect_err("unknown tag");
        assert_eq!(err.reply_code(), 406);
        assert_eq!(
            err.reply_text(),
            "PRECONDITION_FAILED - unknown delivery tag 9"
        );
        ch.take(3, true, &mut out).expect("tags 1..=3");
        assert_eq!(out.iter().map(|u| u.tag).collect::<Vec<_>>(), [1, 2, 3]);
        out.clear();
        ch.take(0, true, &mut out).expect("multiple with 0: all");
        assert_eq!(out.iter().map(|u| u.tag).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(ch.unacked_len.load(Ordering::Relaxed), 0);
    }
}
