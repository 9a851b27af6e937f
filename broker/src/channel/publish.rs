//! The publish path, in one place: content assembly after basic.publish (method, header, body
//! frames), the property checks and rewrites, where a complete publish goes (transaction, batch, now),
//! routing and enqueueing, and returns of unroutable mandatory messages (AMQP 0-9-1 §1.8.3.7, §4.2.6;
//! RabbitMQ docs/publishers.md).
//!
//! basic.publish → [`Channel::handle_header`] → [`Channel::handle_body`] → `publish_content`
//! (`check_properties`, `rewrite_properties`, `accept_publication`) → `route_and_enqueue` (now), or
//! later from [`Channel::flush_publications`] (batch) or tx.commit.

use std::sync::Arc;

use amq_protocol::frame::AMQPContentHeader;
use amq_protocol::protocol::{basic, AMQPHardError, BasicProperties};
use amq_protocol::types::ShortString;
use bytes::Bytes;

use super::deliveries::write_message;
use super::tx::TxOp;
use super::{Channel, ConnectionContext};
use crate::content::PartialBody;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Exchange, RouteBatch};
use crate::message::{
    encode_properties, expiration_ms, header_strings, rebuild_properties, Message, MessageRef,
};
use crate::protocol::encode;
use crate::protocol::ids::{BASIC_CLASS, NO_ROUTE};
use crate::queue::PublishOutcome;
use crate::vhost::reply_to::{REPLY_TO, REPLY_TO_PREFIX};
use crate::vhost::Routed;

/// Content assembly after basic.publish (AMQP 0-9-1 §4.2.6: method, header, body frames in order).
#[derive(Debug, Default)]
pub(super) enum Content {
    #[default]
    Idle,
    Header(basic::Publish),
    Body {
        publish: basic::Publish,
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
pub(super) struct Publication {
    mandatory: bool,
    message: MessageRef,
    /// Routing keys from `CC` / `BCC`.
    extra_keys: Vec<String>,
    /// Per-message TTL from `expiration`, ms.
    own_ttl: Option<u64>,
}

/// Which exchange this channel last published to and how many publishes to it may be held for one
/// batch ([`crate::exchange::Exchange::batch_limit`]), asked again after [`MEMO_PUBLISHES`] publishes.
#[derive(Debug)]
pub(super) struct BatchMemo {
    exchange: ShortString,
    limit: usize,
    left: u32,
}

/// Publishes after which a channel asks its exchange again whether it routes in batches (the answer
/// changes when a plugin is reloaded, or the exchange is redeclared with another type).
const MEMO_PUBLISHES: u32 = 4096;

impl Channel {
    /// basic.publish: starts content assembly. `immediate` is refused as RabbitMQ does (540).
    pub(super) fn basic_publish(&mut self, m: basic::Publish) -> AmqpResult {
        if m.immediate {
            return Err(AmqpError::not_implemented("immediate=true"));
        }
        self.content = Content::Header(m);
        Ok(())
    }

    /// Handles a content header frame.
    ///
    /// # Errors
    /// 505 UNEXPECTED_FRAME when no header is expected; 406 when the body exceeds `max_message_size`.
    // `#[inline]`: once per message, called from the connection's frame loop in another codegen
    // unit (callgrind A/B in BENCHMARKS.md, issue 16).
    #[inline]
    pub(crate) fn handle_header(
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
        if header.class_id != BASIC_CLASS {
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
    #[inline]
    pub(crate) fn handle_body(&mut self, ctx: &mut ConnectionContext, data: Bytes) -> AmqpResult {
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

    /// A complete message: check its properties, rewrite them where RabbitMQ does, then route it now,
    /// hold it for the transaction or for batch routing ([`Channel::accept_publication`]).
    ///
    /// # Errors
    /// As [`Channel::check_properties`] and [`Channel::accept_publication`].
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
        let seq = self.confirms.next_seq();
        self.shared
            .stats
            .received(body.len() as u64, self.confirms.enabled());
        let properties = header.properties; // moved, not cloned: one fewer headers-table copy
        let own_ttl = self.check_properties(ctx, &properties)?;
        let (properties, raw_properties, extra_keys) =
            self.rewrite_properties(properties, raw_properties)?;
        let (properties, raw_properties) = self.intern_properties(properties, raw_properties);
        let message = Arc::new(Message::new(
            ctx.vhost.memory,
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
        self.accept_publication(ctx, publication, seq)
    }

    /// The properties to keep with a message: those of the channel's previous message when they are
    /// the same octets (a producer usually sends the same properties every time), so queued messages
    /// share one decoded copy instead of holding ~300 octets each; else these, remembered for the next.
    fn intern_properties(
        &mut self,
        properties: BasicProperties,
        raw: Bytes,
    ) -> (Arc<BasicProperties>, Bytes) {
        if let Some((last_raw, last)) = &self.last_properties {
            if last_raw[..] == raw[..] {
                return (Arc::clone(last), last_raw.clone());
            }
        }
        let shared = Arc::new(properties);
        // A copy: the publisher's read buffer is not held by the channel.
        let owned = Bytes::copy_from_slice(&raw);
        self.last_properties = Some((owned, Arc::clone(&shared)));
        (shared, raw)
    }

    /// Step 1: the properties a broker checks. Returns the per-message TTL from `expiration`, ms.
    ///
    /// # Errors
    /// 406 when `user_id` is not the authenticated user (RabbitMQ docs/validated-user-id.md) or
    /// `expiration` is not a non-negative integer (docs/ttl.md).
    fn check_properties(
        &self,
        ctx: &ConnectionContext,
        properties: &BasicProperties,
    ) -> AmqpResult<Option<u64>> {
        if let Some(user_id) = properties.user_id() {
            if user_id.as_str() != ctx.user {
                return Err(AmqpError::precondition_failed(format!(
                    "user_id property set to '{user_id}' but authenticated user was '{}'",
                    ctx.user
                )));
            }
        }
        expiration_ms(properties).map_err(|detail| {
            let e = properties.expiration().as_ref().map_or("", |s| s.as_str());
            AmqpError::precondition_failed(format!("invalid expiration '{e}': {detail}"))
        })
    }

    /// Step 2: the rewrites RabbitMQ makes. `reply_to = amq.rabbitmq.reply-to` becomes this channel's
    /// reply address (docs/direct-reply-to.md); `CC` and `BCC` headers add routing keys and `BCC` is
    /// removed (docs/sender-selected.md). Returns the properties, their wire encoding (the publisher's
    /// own octets when nothing changed) and the extra routing keys.
    ///
    /// # Errors
    /// 406 "fast reply consumer does not exist" when the channel has no reply consumer.
    fn rewrite_properties(
        &self,
        mut properties: BasicProperties,
        raw_properties: Bytes,
    ) -> AmqpResult<(BasicProperties, Bytes, Vec<String>)> {
        let mut rewritten = false;
        if properties
            .reply_to()
            .as_ref()
            .is_some_and(|r| r.as_str() == REPLY_TO)
        {
            let Some(token) = self.shared.reply_token() else {
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
        Ok((properties, raw_properties, extra_keys))
    }

    /// Step 3: where a complete publish goes — held in the transaction (tx mode), held for batch
    /// routing (an exchange whose type routes in batches), or routed now.
    ///
    /// # Errors
    /// 404 when a transactional publish names a missing exchange (checked at publish, as RabbitMQ
    /// does); otherwise as [`Channel::route_and_enqueue`].
    fn accept_publication(
        &mut self,
        ctx: &mut ConnectionContext,
        publication: Publication,
        seq: u64,
    ) -> AmqpResult {
        if let Some(ops) = &mut self.tx {
            let exchange = publication.message.exchange.as_str();
            if !exchange.is_empty() {
                ctx.vhost.exchange(exchange)?;
            }
            ops.push(TxOp::Publish(publication));
            return Ok(());
        }
        let limit = self.batch_limit(ctx, &publication.message.exchange);
        if limit > 1 {
            let same_run = self
                .held
                .first()
                .is_some_and(|(p, _)| p.message.exchange == publication.message.exchange);
            if !same_run {
                self.flush_publications(ctx)?;
            }
            ctx.check_publish(&publication.message.exchange)?;
            self.held.push((publication, seq));
            if self.held.len() >= limit {
                return self.flush_publications(ctx);
            }
            return Ok(());
        }
        self.flush_publications(ctx)?;
        self.route_and_enqueue(ctx, publication, seq, None)
    }

    /// Routes and enqueues one publication (confirm sequence number `seq`, routed with `batch`'s
    /// decisions when it belongs to a prepared run); records a confirm nack if a queue refused it
    /// (`x-overflow = reject-publish`) and returns it to the publisher if mandatory and unroutable.
    ///
    /// # Errors
    /// 403 without write permission on the exchange; 404 / 403 from routing (missing or internal
    /// exchange).
    pub(super) fn route_and_enqueue(
        &mut self,
        ctx: &mut ConnectionContext,
        mut p: Publication,
        seq: u64,
        batch: Option<&mut RouteBatch>,
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
        let routed = ctx.vhost.route_publish(
            message.exchange.as_str(),
            message,
            &p.extra_keys,
            &mut queues,
            &mut scratch,
            batch,
        );
        scratch.clear();
        ctx.route_scratch = scratch;
        let route_failure = match routed {
            Ok(Routed::Now(failure)) => failure,
            Ok(Routed::Later { exchange, due }) => {
                ctx.route_queues = queues;
                return self.publish_later(ctx, p, seq, &exchange, due);
            }
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
            let (outcome, wait) = q.publish_durable(Arc::clone(message), p.own_ttl);
            match outcome {
                PublishOutcome::Enqueued => routed_to_any = true,
                PublishOutcome::Rejected => {
                    routed_to_any = true;
                    rejected = true;
                }
                PublishOutcome::Deleted => {}
            }
            waits.extend(wait);
        }
        ctx.route_queues = queues;
        // A plugin exchange that failed to route makes an otherwise unroutable message a nack (the
        // exchange failure policy), so a publisher in confirm mode learns it was not routed by choice.
        let plugin_failed = route_failure.is_some() && !routed_to_any;
        if let Some(commit) = &mut self.commit_waits {
            commit.extend(waits);
        } else if rejected || plugin_failed {
            self.confirms.nack(seq);
        } else {
            self.confirms.wait_durable(seq, waits);
        }
        self.exchange_tally
            .count(&self.shared.exchanges, &message.exchange, routed_to_any);
        if routed_to_any {
            crate::stats::add_local(&self.shared.stats.routed, 1);
        } else if p.mandatory {
            self.return_unroutable(ctx, message);
        } else {
            crate::stats::add_local(&self.shared.stats.unroutable_dropped, 1);
        }
        Ok(())
    }

    /// A publish whose exchange's type asked to keep it until `due` (ms since the Unix epoch): kept
    /// in the exchange's delay store (`vhost/delayed.rs`), persistent messages of a durable exchange
    /// on disk before the confirm. A `mandatory` publish is first checked for routability as the
    /// exchange's bindings stand now: unroutable, it is returned at once (312 NO_ROUTE) and not kept
    /// (RabbitMQ's delayed-message plugin cannot return at all); routable now, it is kept, and if no
    /// binding matches when it falls due it is dropped then.
    ///
    /// # Errors
    /// 541 when the exchange's delay log cannot be opened.
    // Out of line: it keeps the publish path as small as before it existed, so the compiler's
    // inlining of the frame handlers around it is unchanged (callgrind A/B in BENCHMARKS.md).
    #[inline(never)]
    fn publish_later(
        &mut self,
        ctx: &mut ConnectionContext,
        mut p: Publication,
        seq: u64,
        exchange: &Arc<Exchange>,
        due: u64,
    ) -> AmqpResult {
        if p.mandatory {
            let mut queues = std::mem::take(&mut ctx.route_queues);
            let mut scratch = std::mem::take(&mut ctx.route_scratch);
            queues.clear();
            let checked = ctx.vhost.route(
                exchange.name.as_str(),
                &p.message,
                &p.extra_keys,
                &mut queues,
                &mut scratch,
                None,
            );
            let routable = !queues.is_empty();
            queues.clear();
            scratch.clear();
            ctx.route_queues = queues;
            ctx.route_scratch = scratch;
            checked?;
            if !routable {
                self.exchange_tally
                    .count(&self.shared.exchanges, &p.message.exchange, false);
                self.return_unroutable(ctx, &p.message);
                return Ok(());
            }
        }
        // Kept for a while: the message owns its octets rather than pinning the read buffer.
        crate::content::own_content(&mut p.message);
        let waits: Vec<_> = ctx
            .vhost
            .keep_delayed(exchange, &p.message, due)?
            .into_iter()
            .collect();
        if let Some(commit) = &mut self.commit_waits {
            commit.extend(waits);
        } else {
            self.confirms.wait_durable(seq, waits);
        }
        self.exchange_tally
            .count(&self.shared.exchanges, &p.message.exchange, true);
        crate::stats::add_local(&self.shared.stats.routed, 1);
        Ok(())
    }

    /// basic.return 312 NO_ROUTE with the message (RabbitMQ docs/publishers.md, mandatory flag).
    fn return_unroutable(&self, ctx: &ConnectionContext, message: &Message) {
        crate::stats::add_local(&self.shared.stats.return_unroutable, 1);
        let id = self.id();
        let frame_max = ctx.outbound.frame_max();
        ctx.outbound.write(|out| {
            encode::return_method(
                out,
                id,
                NO_ROUTE,
                "NO_ROUTE",
                message.exchange.as_str(),
                message.routing_key.as_str(),
            );
            write_message(out, id, message, frame_max);
        });
    }

    /// Whether publishes are held for batch routing (see [`Channel::flush_publications`]).
    pub(crate) fn has_held_publications(&self) -> bool {
        !self.held.is_empty()
    }

    /// The confirm sequence number of the first publish held for batch routing, if any.
    pub(super) fn held_from(&self) -> Option<u64> {
        self.held.first().map(|(_, seq)| *seq)
    }

    /// Routes and enqueues the publishes held back for batch routing, in order: the exchange first
    /// computes the decisions for all their routing keys in one go ([`crate::exchange::Exchange::prepare`]), and each
    /// publish is routed with them. The connection calls it at the end of each read batch, before any
    /// other method on this channel, before an error closes the channel and before the channel or
    /// connection closes, so holding publishes back changes no observable order.
    ///
    /// # Errors
    /// The first publish's error (as from basic.publish); the publishes after it are dropped with the
    /// channel.
    #[inline]
    pub(crate) fn flush_publications(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        if self.held.is_empty() {
            return Ok(());
        }
        self.route_held(ctx)
    }

    fn route_held(&mut self, ctx: &mut ConnectionContext) -> AmqpResult {
        let mut held = std::mem::take(&mut self.held);
        let mut batch = None;
        if held.len() > 1 {
            if let Ok(x) = ctx.vhost.exchange(held[0].0.message.exchange.as_str()) {
                let messages: Vec<&MessageRef> = held.iter().map(|(p, _)| &p.message).collect();
                batch = x.prepare(&messages);
            }
        }
        let mut result = Ok(());
        for (publication, seq) in held.drain(..) {
            if result.is_ok() {
                result = self.route_and_enqueue(ctx, publication, seq, batch.as_mut());
            }
        }
        self.held = held; // keeps the allocation
        result
    }

    /// How many publishes to `exchange` may be held for one batch (0: none; see [`BatchMemo`]).
    fn batch_limit(&mut self, ctx: &ConnectionContext, exchange: &ShortString) -> usize {
        if let Some(memo) = &mut self.batch_memo {
            if memo.exchange == *exchange && memo.left > 0 {
                memo.left -= 1;
                return memo.limit;
            }
        }
        let limit = if exchange.as_str().is_empty() {
            0
        } else {
            ctx.vhost
                .exchange(exchange.as_str())
                .map_or(0, |x| x.batch_limit())
        };
        self.batch_memo = Some(BatchMemo {
            exchange: exchange.clone(),
            limit,
            left: MEMO_PUBLISHES,
        });
        limit
    }
}
