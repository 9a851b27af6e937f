//! Publisher confirms (RabbitMQ docs/confirms.md): confirm.select, the confirm sequence numbers, and
//! the basic.ack / basic.nack frames that settle them.
//!
//! [`Confirms`] is the state on its own (no channel, no socket): the publish path records what became
//! of each publish ([`Confirms::nack`], [`Confirms::wait_durable`]) and [`Confirms::ready`] says, once
//! per read batch or commit round, which run of sequence numbers can be settled and how, so the
//! coalescing rules are unit-tested directly.

use std::collections::VecDeque;
use std::sync::Arc;

use amq_protocol::protocol::{confirm, AMQPClass};

use super::{Channel, ConnectionContext};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::encode;
use crate::store::Durability;
use crate::store::Durable;

/// A publish whose confirm waits for the logs it was appended to (durable queues', a delayed
/// exchange's).
#[derive(Debug)]
pub(super) struct DurableWait<L> {
    /// Confirm sequence number.
    seq: u64,
    /// Each log and the LSN of the append.
    waits: Vec<(L, u64)>,
}

/// Confirm-mode state of one channel; `L` is what a durable wait waits on (a log).
#[derive(Debug)]
pub(super) struct Confirms<L = Arc<dyn Durable>> {
    /// Publisher confirms on (confirm.select).
    enabled: bool,
    /// Sequence number of the last complete publish in confirm mode.
    publish_seq: u64,
    /// Highest sequence number confirmed so far.
    confirmed: u64,
    /// Unconfirmed sequence numbers to nack (a queue refused them, a log write failed), ascending.
    nacks: Vec<u64>,
    /// Publishes whose confirm waits for queue logs to reach the disk, in publish order.
    durable_waits: VecDeque<DurableWait<L>>,
}

impl<L> Default for Confirms<L> {
    fn default() -> Self {
        Confirms {
            enabled: false,
            publish_seq: 0,
            confirmed: 0,
            nacks: Vec::new(),
            durable_waits: VecDeque::new(),
        }
    }
}

/// One frame that settles confirms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConfirmFrame {
    /// basic.ack for `tag` (and every earlier unconfirmed one when `multiple`).
    Ack { tag: u64, multiple: bool },
    /// basic.nack for `tag` alone.
    Nack { tag: u64 },
}

/// Confirms that can be sent now: every sequence number in `(from, upto]`, nacked where `nacks` says.
#[derive(Debug)]
pub(super) struct ConfirmRun {
    from: u64,
    upto: u64,
    nacks: Vec<u64>,
}

impl ConfirmRun {
    /// How many publishes the run acks.
    pub(super) fn acked(&self) -> u64 {
        (self.upto - self.from).saturating_sub(self.nacks.len() as u64)
    }

    /// The frames, in order: a `multiple` ack for each run of accepted publishes longer than one, a
    /// single ack otherwise, a nack for each refused publish.
    pub(super) fn frames(&self, mut emit: impl FnMut(ConfirmFrame)) {
        let mut from = self.from;
        for &nack in &self.nacks {
            if nack - 1 > from {
                emit(ConfirmFrame::Ack {
                    tag: nack - 1,
                    multiple: nack - 1 - from > 1,
                });
            }
            emit(ConfirmFrame::Nack { tag: nack });
            from = nack;
        }
        if self.upto > from {
            emit(ConfirmFrame::Ack {
                tag: self.upto,
                multiple: self.upto - from > 1,
            });
        }
    }
}

impl<L> Confirms<L> {
    /// Whether the channel is in confirm mode.
    pub(super) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Counts a complete publish; returns its sequence number (0 when not in confirm mode).
    pub(super) fn next_seq(&mut self) -> u64 {
        if self.enabled {
            self.publish_seq += 1;
        }
        self.publish_seq
    }

    /// The sequence number of the last complete publish.
    pub(super) fn last_seq(&self) -> u64 {
        self.publish_seq
    }

    /// Publish `seq` will be nacked (a queue refused it, or a plugin exchange failed to route it).
    pub(super) fn nack(&mut self, seq: u64) {
        if !self.enabled {
            return;
        }
        let pos = self.nacks.partition_point(|&n| n < seq);
        if self.nacks.get(pos) != Some(&seq) {
            self.nacks.insert(pos, seq);
        }
    }

    /// Publish `seq` is confirmed only once these log appends are durable.
    pub(super) fn wait_durable(&mut self, seq: u64, waits: Vec<(L, u64)>) {
        if self.enabled && !waits.is_empty() {
            self.durable_waits.push_back(DurableWait { seq, waits });
        }
    }

    /// Whether a confirm waits for a queue log.
    pub(super) fn awaits_durability(&self) -> bool {
        !self.durable_waits.is_empty()
    }

    /// The confirms that can go out now, and marks them sent. Publishes from `held_from` on are not
    /// routed yet (held for batch routing), so nothing from there is confirmed; a publish waiting for a
    /// log holds back every later one, so `multiple` stays truthful; a failed log write nacks it.
    /// `durability` tells the state of one log append.
    pub(super) fn ready(
        &mut self,
        held_from: Option<u64>,
        durability: impl Fn(&L, u64) -> Durability,
    ) -> Option<ConfirmRun> {
        if !self.enabled || self.publish_seq == self.confirmed {
            return None;
        }
        let mut upto = held_from.map_or(self.publish_seq, |seq| seq.saturating_sub(1));
        while let Some(front) = self.durable_waits.front() {
            let (mut failed, mut pending) = (false, false);
            for (q, lsn) in &front.waits {
                let state = durability(q, *lsn);
                failed |= state == Durability::Failed;
                pending |= state == Durability::Pending;
            }
            if failed {
                let seq = front.seq;
                let pos = self.nacks.partition_point(|&n| n < seq);
                if self.nacks.get(pos) != Some(&seq) {
                    self.nacks.insert(pos, seq);
                }
            } else if pending {
                upto = upto.min(front.seq - 1);
                break;
            }
            self.durable_waits.pop_front();
        }
        if upto <= self.confirmed {
            return None;
        }
        let split = self.nacks.partition_point(|&n| n <= upto);
        let later = self.nacks.split_off(split);
        let from = self.confirmed;
        let nacks = std::mem::replace(&mut self.nacks, later)
            .into_iter()
            .filter(|n| *n > from)
            .collect();
        self.confirmed = upto;
        Some(ConfirmRun { from, upto, nacks })
    }
}

impl Channel {
    /// confirm.select: publisher confirms from the next publish on (RabbitMQ docs/confirms.md).
    ///
    /// # Errors
    /// 406 on a transactional channel.
    pub(super) fn confirm_select(
        &mut self,
        ctx: &mut ConnectionContext,
        m: confirm::Select,
    ) -> AmqpResult {
        if self.tx.is_some() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from tx to confirm mode",
            ));
        }
        self.confirms.enabled = true;
        self.shared
            .confirm
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    /// Sends pending publisher confirms: one basic.ack (`multiple` when it covers several publishes) per
    /// run of accepted publishes and a basic.nack for each refused one. Called once per batch of frames
    /// read, so a burst of publishes costs one ack.
    ///
    /// A persistent message routed to durable queues is confirmed only once every such queue's log has
    /// fsynced it (RabbitMQ docs/confirms.md "When Will Published Messages Be Confirmed"), and nacked if
    /// the write failed; later publishes wait behind it so that `multiple` acks stay truthful.
    pub(crate) fn flush_confirms(&mut self, ctx: &ConnectionContext) {
        self.flush_pending_commit(ctx);
        if self.closing {
            return;
        }
        // Publishes held back for batch routing are not routed yet (the connection flushes them first).
        let held_from = self.held_from();
        let Some(run) = self.confirms.ready(held_from, |q, lsn| q.durability(lsn)) else {
            return;
        };
        let id = self.id();
        crate::stats::add_local(&self.shared.stats.confirm, run.acked());
        ctx.outbound.write(|out| {
            run.frames(|frame| match frame {
                ConfirmFrame::Ack { tag, multiple } => encode::basic_ack(out, id, tag, multiple),
                ConfirmFrame::Nack { tag } => encode::basic_nack(out, id, tag, false),
            });
        });
    }

    /// Whether a publisher confirm or a tx.commit-ok waits for a queue log to reach the disk.
    pub(crate) fn awaits_durability(&self) -> bool {
        (self.confirms.awaits_durability() || self.pending_commit.is_some()) && !self.closing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::test_support::queue;
    use crate::queue::Queue;

    fn frames(run: Option<ConfirmRun>) -> Vec<ConfirmFrame> {
        let mut out = Vec::new();
        if let Some(run) = run {
            run.frames(|f| out.push(f));
        }
        out
    }

    fn on(n: u64) -> Confirms<Arc<Queue>> {
        let mut c = Confirms {
            enabled: true,
            ..Confirms::default()
        };
        for _ in 0..n {
            c.next_seq();
        }
        c
    }

    fn durable(_: &Arc<Queue>, _: u64) -> Durability {
        Durability::Durable
    }

    use ConfirmFrame::{Ack, Nack};

    #[test]
    fn off_counts_nothing_and_sends_nothing() {
        let mut c = Confirms::default();
        assert_eq!(c.next_seq(), 0);
        c.nack(1);
        assert!(frames(c.ready(None, durable)).is_empty());
    }

    #[test]
    fn a_run_of_accepted_publishes_is_one_multiple_ack() {
        let mut c = on(5);
        assert_eq!(
            frames(c.ready(None, durable)),
            [Ack {
                tag: 5,
                multiple: true
            }]
        );
        // Nothing new: nothing sent.
        assert!(frames(c.ready(None, durable)).is_empty());
        c.next_seq();
        assert_eq!(
            frames(c.ready(None, durable)),
            [Ack {
                tag: 6,
                multiple: false
            }]
        );
    }

    #[test]
    fn nacks_split_the_acks_around_them() {
        let mut c = on(6);
        c.nack(3);
        c.nack(4);
        assert_eq!(
            frames(c.ready(None, durable)),
            [
                Ack {
                    tag: 2,
                    multiple: true
                },
                Nack { tag: 3 },
                Nack { tag: 4 },
                Ack {
                    tag: 6,
                    multiple: true
                },
            ]
        );
        let mut c = on(2);
        c.nack(1);
        assert_eq!(
            frames(c.ready(None, durable)),
            [
                Nack { tag: 1 },
                Ack {
                    tag: 2,
                    multiple: false
                }
            ]
        );
    }

    #[test]
    fn held_publishes_are_not_confirmed() {
        let mut c = on(10);
        assert_eq!(
            frames(c.ready(Some(8), durable)),
            [Ack {
                tag: 7,
                multiple: true
            }]
        );
        assert_eq!(
            frames(c.ready(None, durable)),
            [Ack {
                tag: 10,
                multiple: true
            }]
        );
    }

    #[test]
    fn a_pending_log_write_holds_back_later_publishes_and_a_failed_one_is_nacked() {
        let (q1, q2) = (queue("q1"), queue("q2"));
        let mut c = on(4);
        c.wait_durable(2, vec![(Arc::clone(&q1), 10)]);
        c.wait_durable(3, vec![(Arc::clone(&q2), 20)]);
        let pending = |_: &Arc<Queue>, _: u64| Durability::Pending;
        assert_eq!(
            frames(c.ready(None, pending)),
            [Ack {
                tag: 1,
                multiple: false
            }]
        );
        assert!(c.awaits_durability());
        // q1's append fsynced, q2's failed: 2 acked, 3 nacked, 4 acked.
        let states = |q: &Arc<Queue>, _: u64| {
            if q.name.as_str() == "q1" {
                Durability::Durable
            } else {
                Durability::Failed
            }
        };
        assert_eq!(
            frames(c.ready(None, states)),
            [
                Ack {
                    tag: 2,
                    multiple: false
                },
                Nack { tag: 3 },
                Ack {
                    tag: 4,
                    multiple: false
                }
            ]
        );
        assert!(!c.awaits_durability());
    }

    #[test]
    fn a_nack_is_recorded_once() {
        let mut c = on(3);
        c.nack(2);
        c.nack(2);
        assert_eq!(
            frames(c.ready(None, durable)),
            [
                Ack {
                    tag: 1,
                    multiple: false
                },
                Nack { tag: 2 },
                Ack {
                    tag: 3,
                    multiple: false
                }
            ]
        );
    }
}
