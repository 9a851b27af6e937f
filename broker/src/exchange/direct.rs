//! `direct`: routes to bindings whose key equals the routing key (RabbitMQ docs/exchanges.md).

use std::collections::HashMap;

use amq_protocol::types::ShortString;

use super::{Binding, Destination, ExchangeType, RouteError};
use crate::message::MessageRef;

/// Index: binding key → destinations. Lookup by `&str` borrows, so routing does not allocate.
#[derive(Debug, Default)]
pub struct Direct {
    routes: HashMap<ShortString, Vec<Destination>>,
}

impl ExchangeType for Direct {
    fn bind(&mut self, binding: &Binding) {
        self.routes
            .entry(binding.key.clone())
            .or_default()
            .push(binding.destination.clone());
    }

    fn unbind(&mut self, binding: &Binding) {
        if let Some(dests) = self.routes.get_mut(binding.key.as_str()) {
            if let Some(pos) = dests.iter().position(|d| d.same(&binding.destination)) {
                dests.swap_remove(pos);
            }
            if dests.is_empty() {
                self.routes.remove(binding.key.as_str());
            }
        }
    }

    fn route(
        &self,
        routing_key: &str,
        _message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        if let Some(dests) = self.routes.get(routing_key) {
            out.extend(dests.iter().cloned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::test_support::route_names;

    /// (bindings as (queue, binding key), routing key, expected queues).
    type Case = (
        &'static [(&'static str, &'static str)],
        &'static str,
        &'static [&'static str],
    );

    #[test]
    fn routes_on_exact_key() {
        let table: &[Case] = &[
            (&[("q1", "a")], "a", &["q1"]),
            (&[("q1", "a")], "b", &[]),
            (&[("q1", "a"), ("q2", "a")], "a", &["q1", "q2"]),
            (&[("q1", "")], "", &["q1"]),
            (&[("q1", "a.b")], "a.*", &[]),
        ];
        for (bindings, key, expected) in table {
            let mut d = Direct::default();
            assert_eq!(route_names(&mut d, bindings, key), *expected, "key {key:?}");
        }
    }
}
