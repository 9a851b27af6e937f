//! Channels: per-channel state, the one `match` that dispatches methods to spec-named handlers, and
//! soft errors as `channel.close`.
//!
//! A channel has two halves. [`Channel`] lives in its connection's task and holds what only that task
//! touches (content being assembled, confirm and tx state, the default prefetch). [`ChannelShared`]
//! (`deliveries.rs`) is reached from other tasks too: queues deliver into it (it is their
//! [`crate::queue::ConsumerSink`]), so it holds the delivery-tag counter, the unacked deliveries and the
//! consumer table behind one std `Mutex`.
//!
//! Files: `publish.rs` (the publish path: content assembly, property checks and rewrites, routing,
//! returns, batch routing), `confirm.rs` (publisher confirms), `tx.rs` (transactions),
//! `deliveries.rs` (the delivery half, settling), and one file per remaining AMQP class:
//! `exchange.rs`, `queue.rs`, `basic.rs` (consumers, get, acks, qos, recover).

mod basic;
mod confirm;
mod deliveries;
mod exchange;
mod publish;
mod queue;
mod tx;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{basic as amqp_basic, channel as amqp_channel, AMQPClass};
use amq_protocol::types::ShortString;
use tokio::time::Instant;

use self::confirm::Confirms;
pub(crate) use self::deliveries::ChannelShared;
use self::deliveries::{settle, Settle, Unacked};
use self::publish::{BatchMemo, Content, Publication};
use self::tx::{CommitWaits, TxOp};
use crate::auth::{Access, Permission};
use crate::content::ContentBudget;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::Destination;
use crate::protocol::encode;
use crate::protocol::outbound::Outbound;
use crate::queue::Queue;
use crate::vhost::VHost;

/// What a channel handler may use of its connection.
#[derive(Debug)]
pub(crate) struct ConnectionContext {
    /// The vhost opened by connection.open.
    pub vhost: Arc<VHost>,
    /// Connection id (owner of exclusive queues).
    pub conn_id: u64,
    /// The connection's write buffer.
    pub outbound: Arc<Outbound>,
    /// Largest accepted message body, octets (RabbitMQ `max_message_size`).
    pub max_message_size: u64,
    /// The client advertised `consumer_cancel_notify`.
    pub cancel_notify: bool,
    /// Default delivery acknowledgement timeout, ms (RabbitMQ `consumer_timeout`).
    pub consumer_timeout: u64,
    /// Unfinished message bodies this connection may hold, all channels together.
    pub content_budget: Arc<ContentBudget>,
    /// Most consumers per channel (RabbitMQ `consumer_max_per_channel`; `None`: no limit).
    pub consumer_max_per_channel: Option<u64>,
    /// The authenticated user.
    pub user: String,
    /// The user's permissions in this vhost.
    pub permission: Arc<Permission>,
    /// Last exchange a publish was allowed to (skips the regex on the hot path).
    write_allowed: Option<ShortString>,
    /// Reused routing buffers (no allocation per publish).
    route_queues: Vec<Arc<Queue>>,
    route_scratch: Vec<Destination>,
}

impl ConnectionContext {
    /// Checks the user's permission for `access` to the `kind` (`queue` / `exchange`) named `name`.
    ///
    /// # Errors
    /// 403 ACCESS_REFUSED with RabbitMQ's text.
    pub(crate) fn check(&self, access: Access, kind: &str, name: &str) -> AmqpResult {
        // RabbitMQ names the default exchange `amq.default` in permission checks.
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        if self.permission.allows(access, name) {
            return Ok(());
        }
        Err(AmqpError::access_refused(format!(
            "access to {kind} '{name}' in vhost '{}' refused for user '{}'",
            self.vhost.name, self.user
        )))
    }

    /// The write check for basic.publish, cached for the last exchange published to.
    fn check_publish(&mut self, exchange: &ShortString) -> AmqpResult {
        if self.write_allowed.as_ref() == Some(exchange) {
            return Ok(());
        }
        self.check(Access::Write, "exchange", exchange.as_str())?;
        self.write_allowed = Some(exchange.clone());
        Ok(())
    }

    /// A context for a connection that has opened `vhost`.
    pub(crate) fn new(
        vhost: Arc<VHost>,
        conn_id: u64,
        outbound: Arc<Outbound>,
        config: &crate::config::Config,
        cancel_notify: bool,
        user: String,
        permission: Arc<Permission>,
    ) -> Self {
        let memory = vhost.memory;
        ConnectionContext {
            user,
            permission,
            write_allowed: None,
            vhost,
            conn_id,
            outbound,
            max_message_size: config.max_message_size,
            cancel_notify,
            consumer_timeout: config.consumer_timeout,
            content_budget: ContentBudget::new(
                usize::try_from(config.partial_content_limit()).unwrap_or(usize::MAX),
                memory,
            ),
            consumer_max_per_channel: config.consumer_max_per_channel,
            route_queues: Vec::new(),
            route_scratch: Vec::new(),
        }
    }
}

/// The connection-task half of a channel. See the module docs.
#[derive(Debug)]
pub(crate) struct Channel {
    shared: Arc<ChannelShared>,
    /// The server sent channel.close and awaits close-ok: other frames are dropped.
    closing: bool,
    /// Content assembly after basic.publish.
    content: Content,
    /// Publisher confirms (confirm.select).
    confirms: Confirms,
    /// Log appends of the tx.commit being applied.
    commit_waits: Option<CommitWaits>,
    /// A tx.commit-ok that waits for these log appends to reach the disk.
    pending_commit: Option<CommitWaits>,
    /// Transaction mode (tx.select) and its pending operations.
    tx: Option<Vec<TxOp>>,
    /// Prefetch count for consumers created from now on (`basic.qos global=false`).
    consumer_prefetch: u16,
    /// Last queue declared on this channel, used when a method names the empty queue (AMQP 0-9-1 §1.7.2.1).
    last_queue: Option<ShortString>,
    /// The last published message's properties (wire octets, decoded), shared with the next message
    /// when it carries the same ones (`Channel::intern_properties`).
    last_properties: Option<(bytes::Bytes, Arc<amq_protocol::protocol::BasicProperties>)>,
    /// This channel's publishes by exchange (the readers' list is `ChannelShared::exchanges`).
    exchange_tally: crate::stats::ExchangeTally,
    /// Reused buffer for acks.
    settle_buf: Vec<Unacked>,
    /// Complete publishes to an exchange that routes in batches, with their confirm sequence numbers,
    /// waiting for the end of the read batch (or the next other method) to be routed together.
    held: Vec<(Publication, u64)>,
    /// How many publishes the last exchange published to lets the channel hold.
    batch_memo: Option<BatchMemo>,
}

impl Channel {
    /// A newly opened channel `id` writing to `ctx.outbound`.
    pub(crate) fn new(id: u16, ctx: &ConnectionContext) -> Self {
        let shared = Arc::new(ChannelShared::new(
            id,
            Arc::clone(&ctx.outbound),
            ctx.cancel_notify,
            ctx.consumer_timeout,
        ));
        Channel {
            shared,
            closing: false,
            content: Content::Idle,
            confirms: Confirms::default(),
            commit_waits: None,
            pending_commit: None,
            tx: None,
            consumer_prefetch: 0,
            last_queue: None,
            last_properties: None,
            exchange_tally: crate::stats::ExchangeTally::default(),
            settle_buf: Vec::new(),
            held: Vec::new(),
            batch_memo: None,
        }
    }

    /// The half of the channel that queues deliver into (listed by the management API).
    pub(crate) fn shared(&self) -> Arc<ChannelShared> {
        Arc::clone(&self.shared)
    }

    /// Channel number.
    pub(crate) fn id(&self) -> u16 {
        self.shared.id
    }

    /// Whether the server closed this channel and awaits channel.close-ok.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing
    }

    fn reply(&self, ctx: &ConnectionContext, method: AMQPClass) {
        ctx.outbound
            .write(|out| encode::frame(out, &AMQPFrame::Method(self.id(), method)));
    }

    /// Handles one method for this channel (not channel.open/close, which the connection handles).
    ///
    /// # Errors
    /// Channel errors close this channel; connection errors close the connection.
    #[inline]
    pub(crate) fn handle_method(
        &mut self,
        ctx: &mut ConnectionContext,
        method: AMQPClass,
    ) -> AmqpResult {
        if !matches!(self.content, Content::Idle) {
            return Err(AmqpError::unexpected_frame(format!(
                "expected content frame for class 60, got method {}.{} instead",
                method.get_amqp_class_id(),
                method.get_amqp_method_id()
            )));
        }
        use amq_protocol::protocol::{confirm, exchange as x, queue as q, tx};
        match method {
            AMQPClass::Exchange(x::AMQPMethod::Declare(m)) => self.exchange_declare(ctx, m),
            AMQPClass::Exchange(x::AMQPMethod::Delete(m)) => self.exchange_delete(ctx, m),
            AMQPClass::Exchange(x::AMQPMethod::Bind(m)) => self.exchange_bind(ctx, m),
            AMQPClass::Exchange(x::AMQPMethod::Unbind(m)) => self.exchange_unbind(ctx, m),
            AMQPClass::Queue(q::AMQPMethod::Declare(m)) => self.queue_declare(ctx, m),
            AMQPClass::Queue(q::AMQPMethod::Bind(m)) => self.queue_bind(ctx, m),
            AMQPClass::Queue(q::AMQPMethod::Unbind(m)) => self.queue_unbind(ctx, m),
            AMQPClass::Queue(q::AMQPMethod::Purge(m)) => self.queue_purge(ctx, m),
            AMQPClass::Queue(q::AMQPMethod::Delete(m)) => self.queue_delete(ctx, m),
            AMQPClass::Basic(amqp_basic::AMQPMethod::Qos(m)) => self.basic_qos(ctx, m),
            AMQPClass::Basic(amqp_basic::AMQPMethod::Consume(m)) => self.basic_consume(ctx, m),
            AMQPClass::Basic(amqp_basic::AMQPMethod::Cancel(m)) => self.basic_cancel(ctx, m),
            AMQPClass::Basic(amqp_basic::AMQPMethod::Publish(m)) => self.basic_publish(m),
            AMQPClass::Basic(amqp_basic::AMQPMethod::Get(m)) => self.basic_get(ctx, m),
            AMQPClass::Basic(amqp_basic::AMQPMethod::Ack(m)) => {
                self.basic_ack(ctx, m.delivery_tag, m.multiple)
            }
            AMQPClass::Basic(amqp_basic::AMQPMethod::Nack(m)) => {
                self.basic_nack(ctx, m.delivery_tag, m.multiple, Settle::nack(m.requeue))
            }
            AMQPClass::Basic(amqp_basic::AMQPMethod::Reject(m)) => {
                self.basic_nack(ctx, m.delivery_tag, false, Settle::nack(m.requeue))
            }
            AMQPClass::Basic(amqp_basic::AMQPMethod::Recover(m)) => {
                self.basic_recover(ctx, m.requeue, Recover::Sync)
            }
            AMQPClass::Basic(amqp_basic::AMQPMethod::RecoverAsync(m)) => {
                self.basic_recover(ctx, m.requeue, Recover::Async)
            }
            AMQPClass::Confirm(confirm::AMQPMethod::Select(m)) => self.confirm_select(ctx, m),
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => self.tx_select(ctx),
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => self.tx_commit(ctx),
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => self.tx_rollback(ctx),
            AMQPClass::Channel(amqp_channel::AMQPMethod::Flow(m)) => {
                self.channel_flow(ctx, m.active)
            }
            AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::Request(_)) => {
                // Deprecated in 0-9-1; RabbitMQ accepts it as a no-op (docs/spec-differences.md).
                let ok = amq_protocol::protocol::access::RequestOk {};
                self.reply(
                    ctx,
                    AMQPClass::Access(amq_protocol::protocol::access::AMQPMethod::RequestOk(ok)),
                );
                Ok(())
            }
            other => Err(AmqpError::command_invalid(format!(
                "method {}.{} is not valid from a client on a channel",
                other.get_amqp_class_id(),
                other.get_amqp_method_id()
            ))),
        }
    }

    /// channel.flow: `active = true` is acknowledged; `active = false` is refused with 540 "active=false",
    /// as RabbitMQ does (clients' test suites rely on it; consumers use basic.qos for back-pressure).
    pub(super) fn channel_flow(&mut self, ctx: &mut ConnectionContext, active: bool) -> AmqpResult {
        if !active {
            return Err(AmqpError::not_implemented("active=false"));
        }
        self.reply(
            ctx,
            AMQPClass::Channel(amqp_channel::AMQPMethod::FlowOk(amqp_channel::FlowOk {
                active,
            })),
        );
        Ok(())
    }

    /// Closes the channel with 406 if a delivery has stayed unacked past its timeout (RabbitMQ
    /// docs/consumers.md "Delivery Acknowledgement Timeout"); its unacked deliveries are requeued.
    pub(crate) fn check_delivery_timeout(&mut self, ctx: &ConnectionContext, now: Instant) {
        if self.closing {
            return;
        }
        if let Some(timeout) = self.shared.timed_out(now) {
            let error = AmqpError::precondition_failed(format!(
                "delivery acknowledgement on channel {} timed out. Timeout value used: {timeout} ms. This \
                 timeout value can be configured, see consumers doc guide to learn more",
                self.id()
            ));
            self.close_with_error(ctx, &error, 0, 0);
        }
    }

    /// Re-dispatches the queues this channel consumes from (after its write buffer drained).
    pub(crate) fn kick_consumers(&self) {
        for q in self.shared.consumer_queues() {
            q.kick();
        }
    }

    /// Closes the channel from the server side after a soft error: sends channel.close, frees resources.
    pub(crate) fn close_with_error(
        &mut self,
        ctx: &ConnectionContext,
        error: &AmqpError,
        class_id: u16,
        method_id: u16,
    ) {
        // Detach consumers first: once channel.close is on the wire, no delivery may follow it (a queue
        // dispatching on another thread could otherwise slip one in; clients such as lapin then fail
        // the whole connection). `release` waits for in-flight dispatches through each queue's lock.
        self.release(ctx);
        self.closing = true;
        let close = amqp_channel::Close {
            reply_code: error.reply_code(),
            reply_text: short_text(error.reply_text()),
            class_id,
            method_id,
        };
        self.reply(
            ctx,
            AMQPClass::Channel(amqp_channel::AMQPMethod::Close(close)),
        );
    }

    /// Frees the channel: cancels its consumers (deleting auto-delete queues left without one) and
    /// requeues its unacked deliveries in their original order.
    pub(crate) fn release(&mut self, ctx: &ConnectionContext) {
        self.content = Content::Idle;
        self.tx = None;
        let (consumers, mut unacked) = {
            let mut d = self.shared.lock();
            if let Some((token, _)) = d.reply.take() {
                ctx.vhost.replies.unregister(&token);
            }
            let consumers: Vec<_> = d.consumers.drain().map(|(_, v)| v).collect();
            let unacked: Vec<Unacked> = d.unacked.drain(..).collect();
            self.shared.unacked_len.store(0, Ordering::Relaxed);
            (consumers, unacked)
        };
        for (consumer, queue) in consumers {
            if queue.remove_consumer(&consumer) {
                ctx.vhost.remove_queue(&queue);
            }
        }
        settle(&mut unacked, Settle::Requeue);
    }
}

/// A reply text as a short string, cut at a character boundary to 255 bytes.
pub(crate) fn short_text(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&text[..end]).unwrap_or_default()
}

/// Which recover method a client sent: basic.recover is answered with recover-ok, basic.recover-async
/// (deprecated) is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recover {
    Sync,
    Async,
}
