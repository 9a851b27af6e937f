//! queue.* handlers (AMQP 0-9-1 §1.7).

use amq_protocol::protocol::{queue, AMQPClass};
use amq_protocol::types::{FieldTable, ShortString};

use super::{Channel, ConnectionContext};
use crate::auth::Access;
use crate::error::{AmqpError, AmqpResult};
use crate::queue::args::str_value;
use crate::vhost::reply_to::{REPLY_TO, REPLY_TO_PREFIX};
use crate::vhost::{BindingChange, QueueFlags};

impl Channel {
    /// Resolves the empty queue name to the channel's last declared queue (AMQP 0-9-1 §1.7.2.1).
    ///
    /// # Errors
    /// 404 "no previously declared queue", as RabbitMQ.
    pub(super) fn queue_name(&self, name: ShortString) -> AmqpResult<ShortString> {
        if !name.as_str().is_empty() {
            return Ok(name);
        }
        self.last_queue
            .clone()
            .ok_or_else(|| AmqpError::not_found("no previously declared queue"))
    }

    /// queue.declare → declare-ok with the (possibly generated) name and counts.
    pub(super) fn queue_declare(
        &mut self,
        ctx: &mut ConnectionContext,
        m: queue::Declare,
    ) -> AmqpResult {
        let flags = QueueFlags {
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
        };
        let name = if m.passive {
            self.queue_name(m.queue)?
        } else {
            m.queue
        };
        let reply_address = name.as_str().strip_prefix(REPLY_TO_PREFIX);
        if m.passive
            && (name.as_str() == REPLY_TO
                || reply_address.is_some_and(|t| ctx.vhost.replies.exists(t)))
        {
            // The direct reply-to pseudo-queue exists for passive declares (RabbitMQ docs/direct-reply-to.md).
            let ok = queue::DeclareOk {
                queue: name,
                message_count: 0,
                consumer_count: 0,
            };
            self.reply(ctx, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)));
            return Ok(());
        }
        if !m.passive {
            // A server-named queue is checked under its prefix, before the name exists.
            let checked = if name.as_str().is_empty() {
                "amq.gen-"
            } else {
                name.as_str()
            };
            ctx.check(Access::Configure, "queue", checked)?;
            if let Some(dlx) = m
                .arguments
                .inner()
                .get("x-dead-letter-exchange")
                .and_then(str_value)
            {
                // RabbitMQ docs/dlx.md: a queue dead-letters only where its declarer may write.
                ctx.check(Access::Write, "exchange", &dlx)?;
            }
        }
        let (q, counts) =
            ctx.vhost
                .queue_declare(&name, m.passive, flags, &m.arguments, ctx.conn_id)?;
        self.last_queue = Some(q.name.clone());
        if !m.nowait {
            let ok = queue::DeclareOk {
                queue: q.name.clone(),
                message_count: counts.messages,
                consumer_count: counts.consumers,
            };
            self.reply(ctx, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)));
        }
        Ok(())
    }

    /// The shared part of queue.bind and queue.unbind: permissions (write on the queue, read on the
    /// exchange, RabbitMQ docs/access-control.md), then the vhost change.
    fn change_queue_binding(
        &self,
        ctx: &ConnectionContext,
        queue: ShortString,
        exchange: &ShortString,
        key: &ShortString,
        arguments: &FieldTable,
        change: BindingChange,
    ) -> AmqpResult {
        let name = self.queue_name(queue)?;
        ctx.check(Access::Write, "queue", name.as_str())?;
        ctx.check(Access::Read, "exchange", exchange.as_str())?;
        ctx.vhost.queue_bind(
            name.as_str(),
            exchange.as_str(),
            key,
            arguments,
            ctx.conn_id,
            change,
        )
    }

    /// queue.bind → bind-ok.
    pub(super) fn queue_bind(&mut self, ctx: &mut ConnectionContext, m: queue::Bind) -> AmqpResult {
        self.change_queue_binding(
            ctx,
            m.queue,
            &m.exchange,
            &m.routing_key,
            &m.arguments,
            BindingChange::Bind,
        )?;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
            );
        }
        Ok(())
    }

    /// queue.unbind → unbind-ok.
    pub(super) fn queue_unbind(
        &mut self,
        ctx: &mut ConnectionContext,
        m: queue::Unbind,
    ) -> AmqpResult {
        self.change_queue_binding(
            ctx,
            m.queue,
            &m.exchange,
            &m.routing_key,
            &m.arguments,
            BindingChange::Unbind,
        )?;
        self.reply(
            ctx,
            AMQPClass::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        );
        Ok(())
    }

    /// queue.purge → purge-ok with the number of messages removed.
    pub(super) fn queue_purge(
        &mut self,
        ctx: &mut ConnectionContext,
        m: queue::Purge,
    ) -> AmqpResult {
        let name = self.queue_name(m.queue)?;
        ctx.check(Access::Read, "queue", name.as_str())?;
        let message_count = ctx.vhost.queue_purge(name.as_str(), ctx.conn_id)?;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count })),
            );
        }
        Ok(())
    }

    /// queue.delete → delete-ok with the number of ready messages deleted.
    pub(super) fn queue_delete(
        &mut self,
        ctx: &mut ConnectionContext,
        m: queue::Delete,
    ) -> AmqpResult {
        let name = self.queue_name(m.queue)?;
        ctx.check(Access::Configure, "queue", name.as_str())?;
        let message_count =
            ctx.vhost
                .queue_delete(name.as_str(), m.if_unused, m.if_empty, ctx.conn_id)?;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
                    message_count,
                })),
            );
        }
        Ok(())
    }
}
