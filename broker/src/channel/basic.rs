//! basic.*, confirm.* and tx.* handlers, and channel.flow (AMQP 0-9-1 §1.8, §1.9; RabbitMQ
//! docs/confirms.md, docs/consumer-prefetch.md, docs/nack.md).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{basic, channel, confirm, tx, AMQPClass};
use bytes::Bytes;

use super::{settle, write_message, Channel, ConnectionContext, Publication, Settle, TxOp};
use crate::auth::Access;
use crate::error::{AmqpError, AmqpResult};
use crate::message::{
    encode_properties, expiration_ms, header_strings, rebuild_properties, Message,
};
use crate::protocol::encode;
use crate::queue::plugins::{plugin_arguments, AttachError, ConsumerFilter, OnFailure};
use crate::queue::{ConsumeRefused, Consumer, ConsumerSink, PublishOutcome};
use crate::vhost::generate_name;
use crate::vhost::reply_to::{ReplySink, REPLY_TO, REPLY_TO_PREFIX};
use amq_protocol::types::ShortString;

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
        let priority = match m.arguments.inner().get("x-priority") {
            None => 0,
            Some(v) => crate::queue::args::int_value(v)
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(|| {
                    AmqpError::precondition_failed(format!(
                        "invalid arg 'x-priority' for queue '{name}' in vhost '{}': \"expected integer, got {}\"",
                        ctx.vhost.name,
                        crate::queue::args::type_name(v)
                    ))
                })?,
        };
        let filter = consumer_filter(ctx, name.as_str(), &m.arguments)?;
        let consumer = Arc::new(Consumer {
            tag: tag.clone(),
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            prefetch: self.consumer_prefetch,
            priority,
            unacked: Default::default(),
            sink: Arc::clone(&self.shared) as Arc<dyn ConsumerSink>,
            filter,
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

    /// basic.publish: starts content assembly. `immediate` is refused as RabbitMQ does (540).
    pub(super) fn basic_publish(&mut self, m: basic::Publish) -> AmqpResult {
        if m.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        self.content = super::Content::Header(m);
        Ok(())
    }

    /// A complete message: route it, enqueue it, return it if unroutable and mandatory.
    ///
    /// `CC` and `BCC` headers add routing keys; `BCC` is removed before delivery (RabbitMQ
    /// docs/sender-selected.md). An `expiration` that is not a non-negative integer is refused with 406.
    pub(super) fn publish_content(
        &mut self,
        ctx: &mut ConnectionContext,
        publish: basic::Publish,
        header: Box<AMQPContentHeader>,
        raw_properties: Bytes,
        body: Bytes,
    ) -> AmqpResult {
        // The confirm sequence number is taken when the content is complete: a batch flush must never
        // confirm a publish whose body is still on its way.
        if self.confirm {
            self.publish_seq += 1;
        }
        let mut properties = header.properties; // moved, not cloned: one fewer headers-table copy
        if let Some(user_id) = properties.user_id() {
            // RabbitMQ docs/validated-user-id.md.
            if user_id.as_str() != ctx.user {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{user_id}' but authenticated user was '{}'",
                    ctx.user
                )));
            }
        }
        let own_ttl = expiration_ms(&properties).map_err(|detail| {
            let e = properties.expiration().as_ref().map_or("", |s| s.as_str());
            AmqpError::precondition_failed(format!("invalid expiration '{e}': {detail}"))
        })?;
        let mut rewritten = false;
        if properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == REPLY_TO)
        {
            let Some((token, _)) = self.shared.lock().reply.clone() else {
                return Err(AmqpError::precondition_failed(
                    "fast reply consumer does not exist",
                ));
            };
            let address =
                ShortString::try_new(format!("{REPLY_TO_PREFIX}{token}")).unwrap_or_default();
            properties = properties.with_reply_to(address);
            rewritten = true;
        }
        let headers = properties.headers().as_ref();
        let mut extra_keys = header_strings(headers, "CC");
        let bcc = header_strings(headers, "BCC");
        let raw_properties = if headers.is_some_and(|h| h.contains_key("BCC")) {
            extra_keys.extend(bcc);
            let kept: std::collections::BTreeMap<_, _> = headers
                .map(|h| h.inner().clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k.as_str() != "BCC")
                .collect();
            properties = rebuild_properties(&properties, Some(kept.into()), false);
            encode_properties(&properties)
        } else if rewritten {
            encode_properties(&properties)
        } else {
            raw_properties
        };
        let message = Arc::new(Message::new(
            publish.exchange,
            publish.routing_key,
            properties,
            raw_properties,
            body,
        ));
        let publication = Publication {
            mandatory: publish.mandatory,
            message,
            extra_keys,
            own_ttl,
        };
        if let Some(ops) = &mut self.tx {
            // Check the exchange now so the error comes with the publish, as RabbitMQ does.
            let exchange = publication.message.exchange.as_str();
            if !exchange.is_empty() {
                ctx.vhost.exchange(exchange)?;
            }
            ops.push(TxOp::Publish(publication));
            return Ok(());
        }
        if self.routes_in_batches(ctx, &publication.message.exchange) {
            let same_run = self
                .pending
                .first()
                .is_some_and(|(p, _)| p.message.exchange == publication.message.exchange);
            if !same_run {
                self.flush_publications(ctx)?;
            }
            ctx.check_publish(&publication.message.exchange)?;
            self.pending.push((publication, self.publish_seq));
            if self.pending.len() >= crate::exchange::wasm::PREPARE_MAX {
                return self.flush_publications(ctx);
            }
            return Ok(());
        }
        self.flush_publications(ctx)?;
        self.route_and_enqueue(ctx, publication, self.publish_seq)
    }

    /// Routes and enqueues one publication (confirm sequence number `seq`); records a confirm nack if a
    /// queue refused it (`x-overflow = reject-publish`) and returns it to the publisher if mandatory and
    /// unroutable.
    pub(super) fn route_and_enqueue(
        &mut self,
        ctx: &mut ConnectionContext,
        mut p: Publication,
        seq: u64,
    ) -> AmqpResult {
        let mut queues = std::mem::take(&mut ctx.route_queues);
        let mut scratch = std::mem::take(&mut ctx.route_scratch);
        queues.clear();
        let message = &p.message;
        ctx.check_publish(&message.exchange)?;
        if message.exchange.as_str().is_empty()
            && message.routing_key.as_str().starts_with(REPLY_TO_PREFIX)
        {
            ctx.route_queues = queues;
            ctx.route_scratch = scratch;
            if !ctx
                .vhost
                .replies
                .deliver(message.routing_key.as_str(), message)
                && p.mandatory
            {
                self.return_unroutable(ctx, message);
            }
            return Ok(());
        }
        let routed = ctx.vhost.route(
            message.exchange.as_str(),
            message,
            &p.extra_keys,
            &mut queues,
            &mut scratch,
        );
        scratch.clear();
        ctx.route_scratch = scratch;
        let route_failure = match routed {
            Ok(failure) => failure,
            Err(e) => {
                ctx.route_queues = queues;
                return Err(e);
            }
        };
        // A small message that some queue keeps until a consumer comes owns its octets rather than
        // pinning the read buffer it arrived in (see Queue::is_consumed).
        if queues.iter().any(|q| !q.is_consumed()) {
            crate::content::own_small_content(&mut p.message);
        }
        let message = &p.message;
        let mut routed_to_any = false;
        let mut rejected = false;
        let mut waits = Vec::new();
        for q in queues.drain(..) {
            let (outcome, lsn) = q.publish_durable(Arc::clone(message), p.own_ttl);
            match outcome {
                PublishOutcome::Enqueued => routed_to_any = true,
                PublishOutcome::Rejected => {
                    routed_to_any = true;
                    rejected = true;
                }
                PublishOutcome::Deleted => {}
            }
            if let Some(lsn) = lsn {
                waits.push((q, lsn));
            }
        }
        ctx.route_queues = queues;
        // A plugin exchange that failed to route makes an otherwise unroutable message a nack (the
        // exchange failure policy), so a publisher in confirm mode learns it was not routed by choice.
        let plugin_failed = route_failure.is_some() && !routed_to_any;
        if let Some(commit) = &mut self.commit_waits {
            commit.extend(waits);
        } else if (rejected || plugin_failed) && self.confirm {
            self.nacks.push(seq);
        } else if self.confirm && !waits.is_empty() {
            self.durable_waits
                .push_back(super::DurableWait { seq, waits });
        }
        if !routed_to_any && p.mandatory {
            self.return_unroutable(ctx, message);
        }
        Ok(())
    }

    /// basic.return 312 NO_ROUTE with the message (RabbitMQ docs/publishers.md, mandatory flag).
    fn return_unroutable(&self, ctx: &ConnectionContext, message: &Message) {
        let id = self.id();
        let frame_max = ctx.outbound.frame_max();
        ctx.outbound.write(|out| {
            encode::return_method(
                out,
                id,
                312,
                "NO_ROUTE",
                message.exchange.as_str(),
                message.routing_key.as_str(),
            );
            write_message(out, id, message, frame_max);
        });
    }

    /// basic.get → get-ok with the message, or get-empty.
    pub(super) fn basic_get(&mut self, ctx: &mut ConnectionContext, m: basic::Get) -> AmqpResult {
        let name = self.queue_name(m.queue)?;
        ctx.check(Access::Read, "queue", name.as_str())?;
        let queue = ctx.vhost.queue(name.as_str(), ctx.conn_id)?;
        let Some((message, remaining)) = queue.get(m.no_ack) else {
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
        requeue: bool,
    ) -> AmqpResult {
        if let Some(ops) = &mut self.tx {
            ops.push(TxOp::Nack {
                tag,
                multiple,
                requeue,
            });
            return Ok(());
        }
        let mut taken = Vec::new();
        self.shared.take(tag, multiple, &mut taken)?;
        settle(
            &mut taken,
            if requeue {
                Settle::Requeue
            } else {
                Settle::Reject
            },
        );
        self.kick_global_prefetch();
        Ok(())
    }

    /// basic.recover / recover-async with `requeue = true`: requeue every unacked delivery.
    /// `requeue = false` is refused with 540, as RabbitMQ does.
    pub(super) fn basic_recover(
        &mut self,
        ctx: &mut ConnectionContext,
        requeue: bool,
        reply: bool,
    ) -> AmqpResult {
        if !requeue {
            return Err(AmqpError::not_implemented("requeue=false"));
        }
        // recover-ok goes out before the redeliveries, as with RabbitMQ: clients (lapin) drop deliveries
        // that arrive before recover-ok as stale prefetch.
        if reply {
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
        self.confirm = true;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    /// tx.select.
    ///
    /// # Errors
    /// 406 on a channel in confirm mode.
    pub(super) fn tx_select(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        if self.confirm {
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
                let seq = self.publish_seq;
                self.route_and_enqueue(ctx, publication, seq)
            }
            TxOp::Ack { tag, multiple } => self.basic_ack(ctx, tag, multiple),
            TxOp::Nack {
                tag,
                multiple,
                requeue,
            } => self.basic_nack(ctx, tag, multiple, requeue),
        });
        self.tx = Some(Vec::new());
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

    /// channel.flow: `active = true` is acknowledged; `active = false` is refused with 540 "active=false",
    /// as RabbitMQ does (clients' test suites rely on it; consumers use basic.qos for back-pressure).
    pub(super) fn channel_flow(&mut self, ctx: &mut ConnectionContext, active: bool) -> AmqpResult {
        if !active {
            return Err(AmqpError::not_implemented("active=false"));
        }
        self.reply(
            ctx,
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk { active })),
        );
        Ok(())
    }
}

/// The consumer's filter plugin, from the basic.consume arguments `x-filter` (plugin name),
/// `x-filter-args` (its configuration table) and `x-filter-on-failure` (`hold`, the default, or
/// `deliver`).
///
/// # Errors
/// 404 when no such filter plugin is loaded; 406 for malformed arguments or a configuration the plugin
/// refuses.
fn consumer_filter(
    ctx: &ConnectionContext,
    queue: &str,
    arguments: &amq_protocol::types::FieldTable,
) -> AmqpResult<Option<ConsumerFilter>> {
    let invalid = |arg: &str, why: &str| {
        AmqpError::precondition_failed(format!(
            "invalid arg '{arg}' for queue '{queue}' in vhost '{}': {why}",
            ctx.vhost.name
        ))
    };
    let Some((name, config)) = plugin_arguments(arguments, "x-filter", "x-filter-args")
        .map_err(|(arg, why)| invalid(arg, why))?
    else {
        return Ok(None);
    };
    let args = arguments.inner();
    let on_failure = match args
        .get("x-filter-on-failure")
        .map(crate::protocol::values::str_value)
    {
        None => OnFailure::Hold,
        Some(Some(s)) if s == "hold" => OnFailure::Hold,
        Some(Some(s)) if s == "deliver" => OnFailure::Deliver,
        Some(_) => {
            return Err(invalid(
                "x-filter-on-failure",
                "expected \"hold\" or \"deliver\"",
            ))
        }
    };
    let Some(host) = ctx.vhost.plugins() else {
        return Err(AmqpError::not_found(format!(
            "no filter plugin '{name}' is loaded"
        )));
    };
    match ConsumerFilter::attach(host, &name, &config, on_failure) {
        Ok(f) => Ok(Some(f)),
        Err(AttachError::NotFound(why)) => Err(AmqpError::not_found(why)),
        Err(AttachError::Refused(why)) => Err(AmqpError::precondition_failed(why)),
    }
}
