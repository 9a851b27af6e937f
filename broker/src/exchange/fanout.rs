//! `fanout`: routes to every binding, ignoring the routing key (RabbitMQ docs/exchanges.md).

use super::{Binding, Destination, ExchangeType, RouteError};
use crate::message::MessageRef;

/// Index: the list of destinations.
#[derive(Debug, Default)]
pub(crate) struct Fanout {
    destinations: Vec<Destination>,
}

impl ExchangeType for Fanout {
    fn bind(&mut self, binding: &Binding) {
        self.destinations.push(binding.destination.clone());
    }

    fn unbind(&mut self, binding: &Binding) {
        if let Some(pos) = self
            .destinations
            .iter()
            .position(|d| d.same(&binding.destination))
        {
            self.destinations.swap_remove(pos);
        }
    }

    fn route(
        &self,
        _routing_key: &str,
        _message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        out.extend(self.destinations.iter().cloned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::test_support::route_names;

    #[test]
    fn routes_to_all() {
        let mut f = Fanout::default();
        assert_eq!(
            route_names(&mut f, &[("q1", "a"), ("q2", "")], "zzz"),
            ["q1", "q2"]
        );
    }
}
