//! Channels: per-channel state, the one `match` that dispatches methods to spec-named handlers, content
//! assembly for basic.publish, and soft errors as `channel.close`.
//!
//! A channel has two halves. [`Channel`] lives in its connection's task and holds what only that task
//! touches (content being assembled, confirm and tx state, the default prefetch). [`ChannelShared`] is
//! reached from other tasks too: queues deliver into it (it is their [`ConsumerSink`]), so it holds the
//! delivery-tag counter, the unacked deliveries and the consumer table behind one std `Mutex`.
//! Handlers live in one file per AMQP class: `exchange.rs`, `queue.rs`, `basic.rs` (with confirm and tx).

mod basic;
mod exchange;
mod queue;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    basic as amqp_basic, channel as amqp_channel, AMQPClass, AMQPHardError,
};
use amq_protocol::types::ShortString;
use bytes::{Bytes, BytesMut};
use tokio::time::Instant;

use crate::auth::{Access, Permission};
use crate::content::{ContentBudget, PartialBody};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::Destination;
use crate::message::MessageRef;
use crate::protocol::encode;
use crate::protocol::outbound::Outbound;
use crate::queue::{Consumer, ConsumerSink, Queue, QueuedMessage};
use crate::store::Durability;
use crate::vhost::reply_to::ReplySink;
use crate::vhost::VHost;

/// What a channel handler may use of its connection.
#[derive(Debug)]
pub struct ConnectionContext {
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
    pub fn check(&self, access: Access, kind: &str, name: &str) -> AmqpResult {
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
    pub fn new(
        vhost: Arc<VHost>,
        conn_id: u64,
        outbound: Arc<Outbound>,
        config: &crate::config::Config,
        cancel_notify: bool,
        user: String,
        permission: Arc<Permission>,
    ) -> Self {
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
            ),
            consumer_max_per_channel: config.consumer_max_per_channel,
            route_queues: Vec::new(),
            route_scratch: Vec::new(),
        }
    }
}

/// A delivery awaiting basic.ack / nack / reject.
#[derive(Debug)]
struct Unacked {
    tag: u64,
    queue: Arc<Queue>,
    /// `None` for basic.get deliveries (no consumer prefetch to release).
    consumer: Option<Arc<Consumer>>,
    message: QueuedMessage,
    /// When the delivery acknowledgement timeout runs out.
    deadline: Instant,
}

/// Delivery state reached from queues: tags, unacked deliveries, consumers.
#[derive(Debug, Default)]
struct Deliveries {
    next_tag: u64,
    /// Sorted by tag (tags are assigned in increasing order).
    unacked: VecDeque<Unacked>,
    consumers: HashMap<ShortString, (Arc<Consumer>, Arc<Queue>)>,
    /// No unacked delivery times out before this (may be stale-early; then a scan recomputes it).
    earliest_deadline: Option<Instant>,
    /// Direct reply-to consumer: (token, consumer tag).
    reply: Option<(String, ShortString)>,
}

/// The half of a channel that queues deliver into. See the module docs.
#[derive(Debug)]
pub struct ChannelShared {
    /// Channel number.
    pub id: u16,
    outbound: Arc<Outbound>,
    state: Mutex<Deliveries>,
    /// `unacked.len()`, readable without the lock for the global prefetch check.
    unacked_len: AtomicUsize,
    /// Channel-wide prefetch (`basic.qos global=true`); 0 = unlimited.
    global_prefetch: AtomicU16,
    cancel_notify: bool,
    /// Default acknowledgement timeout, ms.
    consumer_timeout: u64,
}

impl ChannelShared {
    fn lock(&self) -> MutexGuard<'_, Deliveries> {
        // Nothing panics while holding this lock; recover the state rather than spread a poison.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a delivery (unless no-ack) and returns its tag. Call with the lock held so that tag order
    /// equals write order.
    fn track(
        &self,
        d: &mut Deliveries,
        queue: &Arc<Queue>,
        consumer: Option<&Arc<Consumer>>,
        m: &QueuedMessage,
        no_ack: bool,
    ) -> u64 {
        d.next_tag += 1;
        let tag = d.next_tag;
        if !no_ack {
            let timeout = queue.args.consumer_timeout.unwrap_or(self.consumer_timeout);
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
    fn take(&self, tag: u64, multiple: bool, out: &mut Vec<Unacked>) -> AmqpResult {
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
    fn timed_out(&self, now: Instant) -> Option<u64> {
        let mut d = self.lock();
        if d.earliest_deadline.is_none_or(|e| e > now) {
            return None;
        }
        if let Some(u) = d.unacked.iter().find(|u| u.deadline <= now) {
            return Some(
                u.queue
                    .args
                    .consumer_timeout
                    .unwrap_or(self.consumer_timeout),
            );
        }
        d.earliest_deadline = d.unacked.iter().map(|u| u.deadline).min();
        None
    }

    /// Queues this channel consumes from (to re-dispatch after capacity frees up).
    fn consumer_queues(&self) -> Vec<Arc<Queue>> {
        self.lock()
            .consumers
            .values()
            .map(|(_, q)| Arc::clone(q))
            .collect()
    }
}

/// Writes a delivery (method, header, body frames) for `message` on `channel`.
fn write_message(
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

/// Content assembly after basic.publish (AMQP 0-9-1 §4.2.6: method, header, body frames in order).
#[derive(Debug, Default)]
enum Content {
    #[default]
    Idle,
    Header(amqp_basic::Publish),
    Body {
        publish: amqp_basic::Publish,
        header: Box<AMQPContentHeader>,
        raw_properties: Bytes,
        /// The body so far once a second frame came (charged to the connection's budget).
        body: Option<PartialBody>,
        /// The first body frame, zero-copy, while it is the only one.
        first: Option<Bytes>,
    },
}

/// A complete basic.publish, ready to route.
#[derive(Debug)]
struct Publication {
    mandatory: bool,
    message: MessageRef,
    /// Routing keys from `CC` / `BCC`.
    extra_keys: Vec<String>,
    /// Per-message TTL from `expiration`, ms.
    own_ttl: Option<u64>,
}

/// Which exchange this channel last published to and whether that exchange routes in batches
/// ([`crate::exchange::Exchange::routes_in_batches`]), asked again after [`MEMO_PUBLISHES`] publishes.
#[derive(Debug)]
struct BatchMemo {
    exchange: ShortString,
    batches: bool,
    left: u32,
}

/// Publishes after which a channel asks its exchange again whether it routes in batches (the answer
/// changes when a plugin is reloaded, or the exchange is redeclared with another type).
const MEMO_PUBLISHES: u32 = 4096;

/// A basic.publish or an ack held back until tx.commit.
#[derive(Debug)]
enum TxOp {
    Publish(Publication),
    Ack {
        tag: u64,
        multiple: bool,
    },
    Nack {
        tag: u64,
        multiple: bool,
        requeue: bool,
    },
}

/// The connection-task half of a channel. See the module docs.
#[derive(Debug)]
pub struct Channel {
    shared: Arc<ChannelShared>,
    /// The server sent channel.close and awaits close-ok: other frames are dropped.
    closing: bool,
    content: Content,
    /// Publisher confirms on (confirm.select).
    confirm: bool,
    /// Sequence number of the last basic.publish in confirm mode.
    publish_seq: u64,
    /// Highest sequence number confirmed so far.
    confirmed: u64,
    /// Unconfirmed sequence numbers to nack (a queue refused them, a log write failed), ascending.
    nacks: Vec<u64>,
    /// Publishes whose confirm waits for queue logs to reach the disk, in publish order.
    durable_waits: VecDeque<DurableWait>,
    /// Log appends of the tx.commit being applied.
    commit_waits: Option<Vec<(Arc<Queue>, u64)>>,
    /// A tx.commit-ok that waits for these log appends to reach the disk.
    pending_commit: Option<Vec<(Arc<Queue>, u64)>>,
    /// Transaction mode (tx.select) and its pending operations.
    tx: Option<Vec<TxOp>>,
    /// Prefetch count for consumers created from now on (`basic.qos global=false`).
    consumer_prefetch: u16,
    /// Last queue declared on this channel, used when a method names the empty queue (AMQP 0-9-1 §1.7.2.1).
    last_queue: Option<ShortString>,
    /// Reused buffer for acks.
    settle_buf: Vec<Unacked>,
    /// Complete publishes to an exchange that routes in batches, with their confirm sequence numbers,
    /// waiting for the end of the read batch (or the next other method) to be routed together.
    pending: Vec<(Publication, u64)>,
    batch_memo: Option<BatchMemo>,
}

impl Channel {
    /// A newly opened channel `id` writing to `ctx.outbound`.
    pub fn new(id: u16, ctx: &ConnectionContext) -> Self {
        let shared = Arc::new(ChannelShared {
            id,
            outbound: Arc::clone(&ctx.outbound),
            state: Mutex::new(Deliveries::default()),
            unacked_len: AtomicUsize::new(0),
            global_prefetch: AtomicU16::new(0),
            cancel_notify: ctx.cancel_notify,
            consumer_timeout: ctx.consumer_timeout,
        });
        Channel {
            shared,
            closing: false,
            content: Content::Idle,
            confirm: false,
            publish_seq: 0,
            confirmed: 0,
            nacks: Vec::new(),
            durable_waits: VecDeque::new(),
            commit_waits: None,
            pending_commit: None,
            tx: None,
            consumer_prefetch: 0,
            last_queue: None,
            settle_buf: Vec::new(),
            pending: Vec::new(),
            batch_memo: None,
        }
    }

    /// Channel number.
    pub fn id(&self) -> u16 {
        self.shared.id
    }

    /// Whether the server closed this channel and awaits channel.close-ok.
    pub fn is_closing(&self) -> bool {
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
    pub fn handle_method(&mut self, ctx: &mut ConnectionContext, method: AMQPClass) -> AmqpResult {
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
                self.basic_nack(ctx, m.delivery_tag, m.multiple, m.requeue)
            }
            AMQPClass::Basic(amqp_basic::AMQPMethod::Reject(m)) => {
                self.basic_nack(ctx, m.delivery_tag, false, m.requeue)
            }
            AMQPClass::Basic(amqp_basic::AMQPMethod::Recover(m)) => {
                self.basic_recover(ctx, m.requeue, true)
            }
            AMQPClass::Basic(amqp_basic::AMQPMethod::RecoverAsync(m)) => {
                self.basic_recover(ctx, m.requeue, false)
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

    /// Handles a content header frame.
    ///
    /// # Errors
    /// 505 UNEXPECTED_FRAME when no header is expected; 406 when the body exceeds `max_message_size`.
    pub fn handle_header(
        &mut self,
        ctx: &mut ConnectionContext,
        header: Box<AMQPContentHeader>,
        raw_properties: Bytes,
    ) -> AmqpResult {
        let Content::Header(publish) = std::mem::take(&mut self.content) else {
            return Err(AmqpError::unexpected_frame(
                "content header received without a preceding basic.publish",
            ));
        };
        if header.class_id != 60 {
            return Err(AmqpError::unexpected_frame(format!(
                "content header for class {} does not match basic.publish",
                header.class_id
            )));
        }
        if header.body_size > ctx.max_message_size {
            return Err(AmqpError::precondition_failed(format!(
                "message size {} is larger than configured max size {}",
                header.body_size, ctx.max_message_size
            )));
        }
        if header.body_size == 0 {
            return self.publish_content(ctx, publish, header, raw_properties, Bytes::new());
        }
        self.content = Content::Body {
            publish,
            header,
            raw_properties,
            body: None,
            first: None,
        };
        Ok(())
    }

    /// Handles a content body frame.
    ///
    /// # Errors
    /// 505 UNEXPECTED_FRAME when no body is expected; 501 FRAME_ERROR when the body exceeds its declared size.
    pub fn handle_body(&mut self, ctx: &mut ConnectionContext, data: Bytes) -> AmqpResult {
        let Content::Body {
            body,
            first,
            header,
            ..
        } = &mut self.content
        else {
            return Err(AmqpError::unexpected_frame(
                "content body received without a preceding content header",
            ));
        };
        let expected = header.body_size as usize;
        let received = match (&first, &body) {
            (Some(f), _) => f.len(),
            (None, Some(b)) => b.len(),
            (None, None) => 0,
        } + data.len();
        if received > expected {
            return Err(AmqpError::connection(
                AMQPHardError::FRAMEERROR,
                format!(
                    "content body of {received} octets exceeds the declared body size {expected}"
                ),
            ));
        }
        if first.is_none() && body.is_none() {
            *first = Some(data); // zero-copy when the body comes in one frame
        } else {
            let over = |e: crate::content::BudgetExceeded| {
                AmqpError::connection(AMQPHardError::RESOURCEERROR, e)
            };
            let body =
                body.get_or_insert_with(|| PartialBody::new(Arc::clone(&ctx.content_budget)));
            if let Some(f) = first.take() {
                body.extend(&f, expected).map_err(over)?;
            }
            body.extend(&data, expected).map_err(over)?;
        }
        if received < expected {
            return Ok(());
        }
        let Content::Body {
            publish,
            header,
            raw_properties,
            body,
            first,
        } = std::mem::take(&mut self.content)
        else {
            return Ok(());
        };
        let body = match (first, body) {
            (Some(f), _) => f,
            (None, Some(b)) => b.freeze(),
            (None, None) => Bytes::new(),
        };
        self.publish_content(ctx, publish, header, raw_properties, body)
    }

    /// Whether publishes wait in [`Channel::flush_publications`].
    pub fn has_pending_publications(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Routes and enqueues the publishes held back for batch routing, in order: the exchange first
    /// computes the decisions for all their routing keys in one go ([`crate::exchange::Exchange::prepare`]).
    /// The connection calls it at the end of each read batch, before any other method on this
    /// channel, before an error closes the channel and before the channel or connection closes, so
    /// holding publishes back changes no observable order.
    ///
    /// # Errors
    /// The first publish's error (as from basic.publish); the publishes after it are dropped with the
    /// channel.
    #[inline]
    pub fn flush_publications(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.route_pending(ctx)
    }

    fn route_pending(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        let mut pending = std::mem::take(&mut self.pending);
        if pending.len() > 1 {
            if let Ok(x) = ctx.vhost.exchange(pending[0].0.message.exchange.as_str()) {
                let keys: Vec<&str> = pending
                    .iter()
                    .map(|(p, _)| p.message.routing_key.as_str())
                    .collect();
                x.prepare(&keys);
            }
        }
        let mut result = Ok(());
        for (publication, seq) in pending.drain(..) {
            if result.is_ok() {
                result = self.route_and_enqueue(ctx, publication, seq);
            }
        }
        self.pending = pending; // keeps the allocation
        result
    }

    /// Whether publishes to `exchange` are held back for batch routing (see [`BatchMemo`]).
    fn routes_in_batches(&mut self, ctx: &ConnectionContext, exchange: &ShortString) -> bool {
        if let Some(memo) = &mut self.batch_memo {
            if memo.exchange == *exchange && memo.left > 0 {
                memo.left -= 1;
                return memo.batches;
            }
        }
        let batches = !exchange.as_str().is_empty()
            && ctx
                .vhost
                .exchange(exchange.as_str())
                .is_ok_and(|x| x.routes_in_batches());
        self.batch_memo = Some(BatchMemo {
            exchange: exchange.clone(),
            batches,
            left: MEMO_PUBLISHES,
        });
        batches
    }

    /// Sends pending publisher confirms: one basic.ack (`multiple` when it covers several publishes) per
    /// run of accepted publishes and a basic.nack for each refused one. Called once per batch of frames
    /// read, so a burst of publishes costs one ack.
    ///
    /// A persistent message routed to durable queues is confirmed only once every such queue's log has
    /// fsynced it (RabbitMQ docs/confirms.md "When Will Published Messages Be Confirmed"), and nacked if
    /// the write failed; later publishes wait behind it so that `multiple` acks stay truthful.
    pub fn flush_confirms(&mut self, ctx: &ConnectionContext) {
        self.flush_pending_commit(ctx);
        if !self.confirm || self.closing || self.publish_seq == self.confirmed {
            return;
        }
        // Publishes held back for batch routing are not routed yet (the connection flushes them first).
        let mut upto = self
            .pending
            .first()
            .map_or(self.publish_seq, |(_, seq)| seq.saturating_sub(1));
        while let Some(front) = self.durable_waits.front() {
            let states = front.waits.iter().map(|(q, lsn)| q.durability(*lsn));
            let (mut failed, mut pending) = (false, false);
            for state in states {
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
                upto = front.seq - 1;
                break;
            }
            self.durable_waits.pop_front();
        }
        if upto <= self.confirmed {
            return;
        }
        let id = self.id();
        let split = self.nacks.partition_point(|&n| n <= upto);
        let later = self.nacks.split_off(split);
        let (confirmed, nacks) = (self.confirmed, std::mem::replace(&mut self.nacks, later));
        ctx.outbound.write(|out| {
            let mut from = confirmed;
            for nack in nacks
                .iter()
                .copied()
                .filter(|n| *n > confirmed && *n <= upto)
            {
                if nack - 1 > from {
                    encode::basic_ack(out, id, nack - 1, nack - 1 - from > 1);
                }
                encode::basic_nack(out, id, nack, false);
                from = nack;
            }
            if upto > from {
                encode::basic_ack(out, id, upto, upto - from > 1);
            }
        });
        self.confirmed = upto;
    }

    /// Sends a deferred tx.commit-ok once the transaction's persistent messages are on disk; closes
    /// the channel with 406 if their log write failed.
    fn flush_pending_commit(&mut self, ctx: &ConnectionContext) {
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
            self.close_with_error(ctx, &error, 90, 20);
            return;
        }
        self.reply(
            ctx,
            AMQPClass::Tx(amq_protocol::protocol::tx::AMQPMethod::CommitOk(
                amq_protocol::protocol::tx::CommitOk {},
            )),
        );
    }

    /// Whether a publisher confirm or a tx.commit-ok waits for a queue log to reach the disk.
    pub fn awaits_durability(&self) -> bool {
        (!self.durable_waits.is_empty() || self.pending_commit.is_some()) && !self.closing
    }

    /// Closes the channel with 406 if a delivery has stayed unacked past its timeout (RabbitMQ
    /// docs/consumers.md "Delivery Acknowledgement Timeout"); its unacked deliveries are requeued.
    pub fn check_delivery_timeout(&mut self, ctx: &ConnectionContext, now: Instant) {
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
    pub fn kick_consumers(&self) {
        for q in self.shared.consumer_queues() {
            q.kick();
        }
    }

    /// Closes the channel from the server side after a soft error: sends channel.close, frees resources.
    pub fn close_with_error(
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
    pub fn release(&mut self, ctx: &ConnectionContext) {
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

/// A publish whose confirm waits for the logs of the durable queues it went to.
#[derive(Debug)]
struct DurableWait {
    /// Confirm sequence number.
    seq: u64,
    /// Each queue and the LSN of the append.
    waits: Vec<(Arc<Queue>, u64)>,
}

/// How deliveries are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// basic.ack: done with.
    Ack,
    /// basic.reject / nack without requeue: dead-lettered with reason `rejected` (or dropped).
    Reject,
    /// nack/reject with requeue, recover, or the channel going away: back to the queue at the original
    /// position, flagged redelivered.
    Requeue,
}

/// Releases consumer prefetch for settled deliveries and hands them to their queue (once per run of
/// the same queue), which dispatches into the freed capacity. Empties `settled`.
fn settle(settled: &mut Vec<Unacked>, how: Settle) {
    let mut run: Option<(Arc<Queue>, Vec<QueuedMessage>)> = None;
    let finish = |q: Arc<Queue>, ms: Vec<QueuedMessage>| match how {
        Settle::Ack => q.settle(&ms),
        Settle::Reject => q.reject(ms),
        Settle::Requeue => q.requeue(ms),
    };
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

/// A reply text as a short string, cut at a character boundary to 255 bytes.
pub fn short_text(text: &str) -> ShortString {
    let mut end = text.len().min(255);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::try_new(&text[..end]).unwrap_or_default()
}
