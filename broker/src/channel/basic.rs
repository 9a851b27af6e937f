//! basic.* handlers other than the publish path (`publish.rs`): qos, consume (and the direct reply-to
//! consumer), cancel, get, ack, nack/reject, recover (AMQP 0-9-1 §1.8; RabbitMQ docs/confirms.md,
//! docs/consumer-prefetch.md, docs/nack.md).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use amq_protocol::types::ShortString;

use super::deliveries::{settle, write_message, Settle};
use super::tx::TxOp;
use super::{Channel, ConnectionContext, Recover};
use crate::auth::Access;
use crate::error::{AmqpError, AmqpResult};
use crate::protocol::encode;
use crate::queue::args::ConsumeArgs;
use crate::queue::{ConsumeRefused, Consumer, ConsumerSink};
use crate::vhost::generate_name;
use crate::vhost::reply_to::{ReplySink, REPLY_TO};

impl Channel {
    /// basic.qos: `global = false` sets the prefetch of consumers created afterwards on this channel,
    /// `global = true` a limit shared by the channel (RabbitMQ's reinterpretation, docs/consumer-prefetch.md).
    pub(super) fn basic_qos(&mut self, ctx: &mut ConnectionContext, m: basic::Qos) -> AmqpResult {
        if m.global {
            self.shared
                .global_prefetch
                .store(m.prefetch_count, Ordering::Relaxed);
        } else {
            self.consumer_prefetch = m.prefetch_count;
            self.shared
                .prefetch_count
                .store(m.prefetch_count, std::sync::atomic::Ordering::Relaxed);
        }
        self.reply(
            ctx,
            AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        );
        self.kick_consumers();
        Ok(())
    }

    /// basic.consume → consume-ok, then deliveries.
    pub(super) fn basic_consume(
        &mut self,
        ctx: &mut ConnectionContext,
        m: basic::Consume,
    ) -> AmqpResult {
        let name = self.queue_name(m.queue)?;
        if name.as_str() == REPLY_TO {
            return self.consume_replies(ctx, m.consumer_tag, m.no_ack, m.nowait);
        }
        ctx.check(Access::Read, "queue", name.as_str())?;
        let queue = ctx.vhost.queue(name.as_str(), ctx.conn_id)?;
        let tag = if m.consumer_tag.as_str().is_empty() {
            generate_name("amq.ctag-")
        } else {
            m.consumer_tag
        };
        {
            let shared = self.shared.lock();
            if shared.consumers.contains_key(tag.as_str()) {
                return Err(AmqpError::not_allowed(format!(
                    "attempt to reuse consumer tag '{tag}'"
                )));
            }
            // RabbitMQ (rabbit_channel, consumer_max_per_channel): a connection error.
            if let Some(max) = ctx.consumer_max_per_channel {
                if shared.consumers.len() as u64 >= max {
                    return Err(AmqpError::not_allowed(format!(
                        "reached maximum ({max}) of consumers per channel"
                    )));
                }
            }
        }
        let args = ConsumeArgs::parse(&m.arguments)
            .map_err(|e| AmqpError::precondition_failed(e.text(name.as_str(), &ctx.vhost.name)))?;
        let priority = args.priority;
        let entity = format!(
            "consumer '{tag}' on queue '{name}' in vhost '{}'",
            ctx.vhost.name
        );
        // A queue homed on another cluster node runs its consumers' filters there: the consume
        // arguments travel with the consumer.
        if queue.is_replicated() && args.filter.is_some() {
            return Err(AmqpError::precondition_failed(format!(
                "consumer filters (x-filter) are not supported on quorum queues: queue '{name}' in \
                 vhost '{}'",
                ctx.vhost.name
            )));
        }
        let filter = match queue.home() {
            Some(_) => None,
            None => ctx.vhost.consumer_filter(args.filter, entity)?,
        };
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            prefetch: self.consumer_prefetch,
            priority,
            unacked: Default::default(),
            sink: Arc::clone(&self.shared) as Arc<dyn ConsumerSink>,
            filter,
            arguments: m.arguments.clone(),
            seq: crate::queue::next_consumer_seq(),
            cancelled: Default::default(),
        });
        self.shared
            .lock()
            .consumers
            .insert(tag.clone(), (Arc::clone(&consumer), Arc::clone(&queue)));
        let id = self.id();
        let reply = || {
            if !m.nowait {
                let ok = basic::ConsumeOk {
                    consumer_tag: tag.clone(),
                };
                ctx.outbound.write(|out| {
                    encode::frame(
                        out,
                        &amq_protocol::frame::AMQPFrame::Method(
                            id,
                            AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)),
                        ),
                    )
                });
            }
        };
        match queue.add_consumer(consumer, reply) {
            Ok(()) => Ok(()),
            Err(refused) => {
                self.shared.lock().consumers.remove(tag.as_str());
                Err(match refused {
                    ConsumeRefused::ExclusiveInUse => AmqpError::access_refused(format!(
                        "queue '{name}' in vhost '{}' in exclusive use",
                        ctx.vhost.name
                    )),
                    ConsumeRefused::Deleted => AmqpError::not_found(format!(
                        "no queue '{name}' in vhost '{}'",
                        ctx.vhost.name
                    )),
                    ConsumeRefused::Filter(e) => e,
                    ConsumeRefused::Unavailable(why) => AmqpError::connection(
                        amq_protocol::protocol::AMQPHardError::INTERNALERROR,
                        why,
                    ),
                })
            }
        }
    }

    /// basic.consume on `amq.rabbitmq.reply-to` (RabbitMQ docs/direct-reply-to.md): must be no-ack, one
    /// per channel.
    fn consume_replies(
        &mut self,
        ctx: &mut ConnectionContext,
        tag: ShortString,
        no_ack: bool,
        nowait: bool,
    ) -> AmqpResult {
        if !no_ack {
            return Err(AmqpError::precondition_failed(
                "reply consumer cannot acknowledge",
            ));
        }
        let tag = if tag.as_str().is_empty() {
            generate_name("amq.ctag-")
        } else {
            tag
        };
        {
            let mut d = self.shared.lock();
            if d.reply.is_some() {
                return Err(AmqpError::precondition_failed("reply consumer already set"));
            }
            if d.consumers.contains_key(tag.as_str()) {
                return Err(AmqpError::not_allowed(format!(
                    "attempt to reuse consumer tag '{tag}'"
                )));
            }
            let token = generate_name("").to_string();
            let sink: std::sync::Weak<dyn ReplySink> =
                Arc::downgrade(&self.shared) as std::sync::Weak<dyn ReplySink>;
            ctx.vhost.replies.register(token.clone(), sink);
            d.reply = Some((token, tag.clone()));
        }
        if !nowait {
            let ok = basic::ConsumeOk { consumer_tag: tag };
            self.reply(ctx, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)));
        }
        Ok(())
    }

    /// basic.cancel → cancel-ok. Unacked deliveries of the consumer stay unacked. An unknown tag is fine.
    pub(super) fn basic_cancel(
        &mut self,
        ctx: &mut ConnectionContext,
        m: basic::Cancel,
    ) -> AmqpResult {
        let removed = {
            let mut d = self.shared.lock();
            if d.reply
                .as_ref()
                .is_some_and(|(_, tag)| *tag == m.consumer_tag)
            {
                if let Some((token, _)) = d.reply.take() {
                    ctx.vhost.replies.unregister(&token);
                }
            }
            d.consumers.remove(m.consumer_tag.as_str())
        };
        if let Some((consumer, queue)) = removed {
            if queue.remove_consumer(&consumer) {
                ctx.vhost.remove_queue(&queue);
            }
        }
        if !m.nowait {
            let ok = basic::CancelOk {
                consumer_tag: m.consumer_tag,
            };
            self.reply(ctx, AMQPClass::Basic(basic::AMQPMethod::CancelOk(ok)));
        }
        Ok(())
    }

    /// basic.get → get-ok with the message, or get-empty.
    pub(super) fn basic_get(&mut self, ctx: &mut ConnectionContext, m: basic::Get) -> AmqpResult {
        let name = self.queue_name(m.queue)?;
        ctx.check(Access::Read, "queue", name.as_str())?;
        let queue = ctx.vhost.queue(name.as_str(), ctx.conn_id)?;
        let Some((message, remaining)) = queue.get(m.no_ack) else {
            crate::stats::add_local(&self.shared.stats.get_empty, 1);
            self.reply(
                ctx,
                AMQPClass::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
            );
            return Ok(());
        };
        let mut d = self.shared.lock();
        let tag = self.shared.track(&mut d, &queue, None, &message, m.no_ack);
        let id = self.id();
        let frame_max = ctx.outbound.frame_max();
        let msg = &message.message;
        ctx.outbound.write(|out| {
            encode::get_ok_method(
                out,
                id,
                tag,
                message.redelivered,
                msg.exchange.as_str(),
                msg.routing_key.as_str(),
                remaining,
            );
            write_message(out, id, msg, frame_max);
        });
        Ok(())
    }

    /// basic.ack from the consumer.
    ///
    /// # Errors
    /// 406 "unknown delivery tag N".
    pub(super) fn basic_ack(
        &mut self,
        _ctx: &mut ConnectionContext,
        tag: u64,
        multiple: bool,
    ) -> AmqpResult {
        if let Some(ops) = &mut self.tx {
            ops.push(TxOp::Ack { tag, multiple });
            return Ok(());
        }
        let mut acked = std::mem::take(&mut self.settle_buf);
        let result = self.shared.take(tag, multiple, &mut acked);
        crate::stats::add_local(&self.shared.stats.ack, acked.len() as u64);
        settle(&mut acked, Settle::Ack);
        self.settle_buf = acked;
        self.kick_global_prefetch();
        result
    }

    /// basic.nack / basic.reject: requeue (flagged redelivered) or drop.
    ///
    /// # Errors
    /// 406 "unknown delivery tag N".
    pub(super) fn basic_nack(
        &mut self,
        _ctx: &mut ConnectionContext,
        tag: u64,
        multiple: bool,
        how: Settle,
    ) -> AmqpResult {
        if let Some(ops) = &mut self.tx {
            ops.push(TxOp::Nack { tag, multiple, how });
            return Ok(());
        }
        let mut taken = Vec::new();
        self.shared.take(tag, multiple, &mut taken)?;
        settle(&mut taken, how);
        self.kick_global_prefetch();
        Ok(())
    }

    /// basic.recover / recover-async with `requeue = true`: requeue every unacked delivery.
    /// `requeue = false` is refused with 540, as RabbitMQ does.
    pub(super) fn basic_recover(
        &mut self,
        ctx: &mut ConnectionContext,
        requeue: bool,
        method: Recover,
    ) -> AmqpResult {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        // recover-ok goes out before the redeliveries, as with RabbitMQ: clients (lapin) drop deliveries
        // that arrive before recover-ok as stale prefetch.
        if method == Recover::Sync {
            self.reply(
                ctx,
                AMQPClass::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
            );
        }
        let mut taken = Vec::new();
        self.shared.take(0, true, &mut taken)?;
        settle(&mut taken, Settle::Requeue);
        self.kick_global_prefetch();
        Ok(())
    }

    /// With a channel-wide prefetch, freed capacity may belong to a consumer of another queue than the
    /// one just settled: re-dispatch every queue this channel consumes from.
    fn kick_global_prefetch(&self) {
        if self.shared.global_prefetch.load(Ordering::Relaxed) > 0 {
            self.kick_consumers();
        }
    }
}
