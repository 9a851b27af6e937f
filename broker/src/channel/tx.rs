//! Transactions (AMQP 0-9-1 §1.9 tx; RabbitMQ docs/semantics.md): tx.select, tx.commit and
//! tx.rollback, the publishes and acks held until commit, and the commit-ok that waits for the
//! transaction's persistent messages to reach the disk.

use amq_protocol::protocol::{tx, AMQPClass};

use super::deliveries::Settle;
use super::publish::Publication;
use super::{Channel, ConnectionContext};
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::ids::{TX_CLASS, TX_COMMIT};
use crate::store::{Durability, DurableWait};

/// A basic.publish or an ack held back until tx.commit.
#[derive(Debug)]
pub(super) enum TxOp {
    Publish(Publication),
    Ack {
        tag: u64,
        multiple: bool,
    },
    /// basic.nack / basic.reject, settled as `how` (requeue or reject).
    Nack {
        tag: u64,
        multiple: bool,
        how: Settle,
    },
}

/// Log appends a committed transaction waits for: each log and the LSN of its append.
pub(super) type CommitWaits = Vec<DurableWait>;

impl Channel {
    /// tx.select.
    ///
    /// # Errors
    /// 406 on a channel in confirm mode.
    pub(super) fn tx_select(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        if self.confirms.enabled() {
            return Err(AmqpError::precondition_failed(
                "cannot switch from confirm to tx mode",
            ));
        }
        self.tx.get_or_insert_with(Vec::new);
        self.reply(
            ctx,
            AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        );
        Ok(())
    }

    /// tx.commit: applies the publishes and acks held since the last commit or rollback, in order.
    ///
    /// # Errors
    /// 406 when not in tx mode, or an error of an applied operation.
    pub(super) fn tx_commit(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        let Some(ops) = self.tx.replace(Vec::new()) else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        self.tx = None;
        self.commit_waits = Some(Vec::new());
        let result = ops.into_iter().try_for_each(|op| match op {
            TxOp::Publish(publication) => {
                let seq = self.confirms.last_seq();
                self.route_and_enqueue(ctx, publication, seq, None)
            }
            TxOp::Ack { tag, multiple } => self.basic_ack(ctx, tag, multiple),
            TxOp::Nack { tag, multiple, how } => self.basic_nack(ctx, tag, multiple, how),
        });
        self.tx = Some(Vec::new());
        self.shared
            .transactional
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let waits = self.commit_waits.take().unwrap_or_default();
        result?;
        if waits.is_empty() {
            self.reply(
                ctx,
                AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
            );
        } else {
            // Persistent messages on durable queues: commit-ok once they are on disk (sent by
            // `flush_confirms` after the commit round). A well-behaved client sends no synchronous
            // method before it, and asynchronous ones are held in the next transaction.
            self.pending_commit = Some(waits);
        }
        Ok(())
    }

    /// tx.rollback: discards the held publishes and acks.
    ///
    /// # Errors
    /// 406 when not in tx mode.
    pub(super) fn tx_rollback(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        let Some(ops) = &mut self.tx else {
            return Err(AmqpError::precondition_failed(
                "channel is not transactional",
            ));
        };
        ops.clear();
        self.reply(
            ctx,
            AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
        );
        Ok(())
    }

    /// Sends a deferred tx.commit-ok once the transaction's persistent messages are on disk; closes
    /// the channel with 406 if their log write failed.
    pub(super) fn flush_pending_commit(&mut self, ctx: &ConnectionContext) {
        let Some(waits) = &self.pending_commit else {
            return;
        };
        let states: Vec<Durability> = waits.iter().map(|(q, lsn)| q.durability(*lsn)).collect();
        if states.contains(&Durability::Pending) {
            return;
        }
        self.pending_commit = None;
        if states.contains(&Durability::Failed) {
            let error = AmqpError::precondition_failed(
                "the transaction's persistent messages could not be written to disk",
            );
            self.close_with_error(ctx, &error, TX_CLASS, TX_COMMIT);
            return;
        }
        self.reply(
            ctx,
            AMQPClass::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        );
    }
}
