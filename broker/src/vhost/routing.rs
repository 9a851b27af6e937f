//! Routing within a vhost: a publish through its exchange, exchange-to-exchange bindings, `CC` /
//! `BCC` keys and alternate exchanges to a set of queues (RabbitMQ docs/e2e.md, docs/ae.md,
//! docs/sender-selected.md); and the vhost's side of [`QueueOwner`]: routing dead letters
//! (docs/dlx.md) and deleting expired queues.

use std::collections::HashMap;
use std::sync::Arc;

use amq_protocol::types::ShortString;
use tracing::debug;

use super::{dead_letter, VHost};
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Destination, Exchange, Prepared, RouteBatch, RouteError, Schedule};
use crate::message::{header_strings, MessageRef};
use crate::queue::{DeadLetterReason, Queue, QueueOwner};
use crate::sync::read;

/// What [`VHost::route`] decided for a publish.
#[derive(Debug)]
pub enum Routed {
    /// Routed now (the destination queues were appended); the first plugin routing failure, if any.
    Now(Option<RouteError>),
    /// The exchange's type asked to keep the message until `due` (ms since the Unix epoch; see
    /// `vhost/delayed.rs`): nothing was routed.
    Later {
        /// The exchange published to.
        exchange: Arc<Exchange>,
        /// Due time, ms since the Unix epoch.
        due: u64,
    },
}

impl VHost {
    /// Routes `message` published to `exchange` under its routing key and the `extra_keys` (from `CC` /
    /// `BCC`, RabbitMQ docs/sender-selected.md), and appends the distinct destination queues to `queues`.
    /// `scratch` is a reusable buffer. Follows exchange-to-exchange bindings, each exchange at most once;
    /// when nothing matches, tries the exchange's alternate exchange (RabbitMQ docs/ae.md). A plugin
    /// exchange that fails to route counts as matching nothing there (its failure policy), and the
    /// failure is reported so that the publisher's confirm can be a nack. `batch`: decisions prepared
    /// for a run of publishes that this message belongs to ([`Exchange::prepare`]); used for the
    /// message's own routing key at `exchange` when they are that exchange's. The exchange's type is
    /// not asked whether to keep the message for later: this routes now (dead letters, delayed
    /// messages that fell due, routability checks); a publish goes through [`VHost::route_publish`].
    ///
    /// # Errors
    /// 404 missing exchange, 403 internal exchange.
    pub fn route(
        &self,
        exchange: &str,
        message: &MessageRef,
        extra_keys: &[String],
        queues: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Destination>,
        batch: Option<&mut RouteBatch>,
    ) -> AmqpResult<Routed> {
        self.route_with(exchange, message, extra_keys, queues, scratch, batch, false)
    }

    /// [`VHost::route`] for a publish: an exchange whose type schedules (a plugin's `schedule`) may
    /// keep the message for later instead ([`Routed::Later`]: nothing routed), or refuse it.
    ///
    /// # Errors
    /// As [`VHost::route`]; 406 a publish the exchange's type refused.
    pub fn route_publish(
        &self,
        exchange: &str,
        message: &MessageRef,
        extra_keys: &[String],
        queues: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Destination>,
        batch: Option<&mut RouteBatch>,
    ) -> AmqpResult<Routed> {
        self.route_with(exchange, message, extra_keys, queues, scratch, batch, true)
    }

    // The two entry points above share this body; `schedule` tells which one called.
    #[allow(clippy::too_many_arguments)]
    fn route_with(
        &self,
        exchange: &str,
        message: &MessageRef,
        extra_keys: &[String],
        queues: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Destination>,
        batch: Option<&mut RouteBatch>,
        schedule: bool,
    ) -> AmqpResult<Routed> {
        let keys = std::iter::once(message.routing_key.as_str())
            .chain(extra_keys.iter().map(String::as_str));
        if exchange.is_empty() {
            let all = read(&self.queues);
            for key in keys {
                if let Some(q) = all.get(key) {
                    if !queues.iter().any(|seen| Arc::ptr_eq(seen, q)) {
                        queues.push(Arc::clone(q));
                    }
                }
            }
            return Ok(Routed::Now(None));
        }
        let exchanges = read(&self.exchanges);
        let x = exchanges
            .get(exchange)
            .ok_or_else(|| self.no_exchange(exchange))?;
        if x.internal {
            return Err(AmqpError::access_refused(format!(
                "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                self.name
            )));
        }
        if schedule {
            match x.schedule(message) {
                Schedule::Now => {}
                Schedule::Later(due) => {
                    return Ok(Routed::Later {
                        exchange: Arc::clone(x),
                        due,
                    })
                }
                Schedule::Refused(text) => return Err(AmqpError::precondition_failed(text)),
            }
        }
        let mut prepared = batch.filter(|b| b.is_for(x)).map(|b| &mut b.decisions);
        let mut current = x;
        let mut tried: Vec<&str> = Vec::new();
        let mut failure = None;
        loop {
            let failed = Self::route_through(
                &exchanges,
                current,
                message,
                keys.clone(),
                prepared.take(),
                queues,
                scratch,
            );
            failure = failure.or(failed);
            if !queues.is_empty() {
                return Ok(Routed::Now(failure));
            }
            tried.push(current.name.as_str());
            match current
                .alternate_exchange()
                .and_then(|ae| exchanges.get(ae.as_str()))
            {
                Some(ae) if !tried.contains(&ae.name.as_str()) => current = ae,
                _ => return Ok(Routed::Now(failure)),
            }
        }
    }

    /// Routes through `x` and the exchanges bound to it; returns the first routing failure. The first
    /// key (the message's own) is routed at `x` with `prepared` decisions when given.
    fn route_through<'k>(
        exchanges: &HashMap<ShortString, Arc<Exchange>>,
        x: &Exchange,
        message: &MessageRef,
        keys: impl Iterator<Item = &'k str> + Clone,
        mut prepared: Option<&mut Prepared>,
        queues: &mut Vec<Arc<Queue>>,
        scratch: &mut Vec<Destination>,
    ) -> Option<RouteError> {
        scratch.clear();
        let mut failure = None;
        for key in keys.clone() {
            let routed = match prepared.take() {
                Some(p) => x.route_prepared(key, message, p, scratch),
                None => x.route(key, message, scratch),
            };
            if let Err(e) = routed {
                failure.get_or_insert(e);
            }
        }
        let mut visited: Vec<&str> = vec![x.name.as_str()];
        let mut i = 0;
        while i < scratch.len() {
            let next = match &scratch[i] {
                Destination::Queue(q) => {
                    if !queues.iter().any(|seen| Arc::ptr_eq(seen, q)) {
                        queues.push(Arc::clone(q));
                    }
                    None
                }
                Destination::Exchange(name) if !visited.contains(&name.as_str()) => {
                    exchanges.get_key_value(name.as_str())
                }
                Destination::Exchange(_) => None,
            };
            if let Some((key, next)) = next {
                visited.push(key.as_str());
                for k in keys.clone() {
                    if let Err(e) = next.route(k, message, scratch) {
                        failure.get_or_insert(e);
                    }
                }
            }
            i += 1;
        }
        failure
    }
}

impl QueueOwner for VHost {
    fn dead_letter(&self, queue: &Queue, letters: Vec<(MessageRef, DeadLetterReason)>) {
        // The queue's arguments once per batch: reading them takes the queue lock.
        let args = queue.args();
        let Some(dlx) = &args.dead_letter_exchange else {
            return;
        };
        let dlrk = args.dead_letter_routing_key.as_ref();
        let mut queues = Vec::new();
        let mut scratch = Vec::new();
        for (message, reason) in letters {
            let dead = Arc::new(dead_letter::dead_lettered(
                &message, queue, reason, dlx, dlrk,
            ));
            let cc = if dlrk.is_some() {
                Vec::new()
            } else {
                header_strings(dead.properties.headers().as_ref(), "CC")
            };
            queues.clear();
            if let Err(e) = self.route(dlx.as_str(), &dead, &cc, &mut queues, &mut scratch, None) {
                debug!(queue = %queue.name, dlx = %dlx, error = %e, "dead letter dropped");
                continue;
            }
            for q in queues.drain(..) {
                if dead_letter::is_cycle(&dead, q.name.as_str()) {
                    debug!(queue = %queue.name, target = %q.name, "dead-letter cycle: message dropped");
                    continue;
                }
                q.publish(Arc::clone(&dead), None);
            }
        }
    }

    fn expire_queue(&self, queue: &Arc<Queue>) {
        debug!(queue = %queue.name, "queue expired (x-expires)");
        self.remove_queue(queue);
    }
}
