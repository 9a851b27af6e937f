//! exchange.* handlers (AMQP 0-9-1 §1.6).

use amq_protocol::protocol::{exchange, AMQPClass};

use super::{Channel, ConnectionContext};
use crate::auth::Access;
use crate::error::AmqpResult;
use crate::queue::args::str_value;
use crate::vhost::ExchangeFlags;

impl Channel {
    /// exchange.declare → declare-ok.
    pub(super) fn exchange_declare(
        &mut self,
        ctx: &mut ConnectionContext,
        m: exchange::Declare,
    ) -> AmqpResult {
        let flags = ExchangeFlags {
            durable: m.durable,
            auto_delete: m.auto_delete,
            internal: m.internal,
        };
        if !m.passive {
            ctx.check(Access::Configure, "exchange", m.exchange.as_str())?;
            if let Some(ae) = m
                .arguments
                .inner()
                .get("alternate-exchange")
                .and_then(str_value)
            {
                // RabbitMQ docs/ae.md: declaring with an AE needs write on the AE.
                ctx.check(Access::Write, "exchange", &ae)?;
            }
        }
        ctx.vhost
            .exchange_declare(&m.exchange, m.kind.as_str(), m.passive, flags, &m.arguments)?;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            );
        }
        Ok(())
    }

    /// exchange.delete → delete-ok.
    pub(super) fn exchange_delete(
        &mut self,
        ctx: &mut ConnectionContext,
        m: exchange::Delete,
    ) -> AmqpResult {
        ctx.check(Access::Configure, "exchange", m.exchange.as_str())?;
        ctx.vhost
            .exchange_delete(m.exchange.as_str(), m.if_unused)?;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {})),
            );
        }
        Ok(())
    }

    /// exchange.bind → bind-ok (RabbitMQ docs/e2e.md).
    pub(super) fn exchange_bind(
        &mut self,
        ctx: &mut ConnectionContext,
        m: exchange::Bind,
    ) -> AmqpResult {
        ctx.check(Access::Write, "exchange", m.destination.as_str())?;
        ctx.check(Access::Read, "exchange", m.source.as_str())?;
        ctx.vhost.exchange_bind(
            m.destination.as_str(),
            m.source.as_str(),
            &m.routing_key,
            &m.arguments,
            true,
        )?;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
            );
        }
        Ok(())
    }

    /// exchange.unbind → unbind-ok.
    pub(super) fn exchange_unbind(
        &mut self,
        ctx: &mut ConnectionContext,
        m: exchange::Unbind,
    ) -> AmqpResult {
        ctx.check(Access::Write, "exchange", m.destination.as_str())?;
        ctx.check(Access::Read, "exchange", m.source.as_str())?;
        ctx.vhost.exchange_bind(
            m.destination.as_str(),
            m.source.as_str(),
            &m.routing_key,
            &m.arguments,
            false,
        )?;
        if !m.nowait {
            self.reply(
                ctx,
                AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {})),
            );
        }
        Ok(())
    }
}
