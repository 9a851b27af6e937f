//! exchange.* handlers (AMQP 0-9-1 §1.6).

use amq_protocol::protocol::{exchange, AMQPClass};
use amq_protocol::types::{FieldTable, ShortString};

use super::{Channel, ConnectionContext};
use crate::auth::Access;
use crate::error::AmqpResult;
use crate::queue::args::str_value;
use crate::vhost::{BindingChange, ExchangeFlags};

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

    /// The shared part of exchange.bind and exchange.unbind: permissions (write on the destination,
    /// read on the source, RabbitMQ docs/access-control.md), then the vhost change.
    fn change_exchange_binding(
        ctx: &ConnectionContext,
        destination: &str,
        source: &str,
        key: &ShortString,
        arguments: &FieldTable,
        change: BindingChange,
    ) -> AmqpResult {
        ctx.check(Access::Write, "exchange", destination)?;
        ctx.check(Access::Read, "exchange", source)?;
        ctx.vhost
            .exchange_bind(destination, source, key, arguments, change)
    }

    /// exchange.bind → bind-ok (RabbitMQ docs/e2e.md).
    pub(super) fn exchange_bind(
        &mut self,
        ctx: &mut ConnectionContext,
        m: exchange::Bind,
    ) -> AmqpResult {
        Self::change_exchange_binding(
            ctx,
            m.destination.as_str(),
            m.source.as_str(),
            &m.routing_key,
            &m.arguments,
            BindingChange::Bind,
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
        Self::change_exchange_binding(
            ctx,
            m.destination.as_str(),
            m.source.as_str(),
            &m.routing_key,
            &m.arguments,
            BindingChange::Unbind,
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
