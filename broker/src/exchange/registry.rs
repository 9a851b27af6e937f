//! Exchange type registry: type name → constructor (RabbitMQ `rabbit_registry`).
//!
//! The four standard types are registered at start. Plugin types (`x-…`) register and unregister here
//! as plugins load and unload.

use std::collections::HashMap;
use std::sync::RwLock;

use super::direct::Direct;
use super::fanout::Fanout;
use super::headers::Headers;
use super::topic::Topic;
use super::ExchangeType;

/// Builds the routing state for a new exchange of one type.
pub type Factory = fn() -> Box<dyn ExchangeType>;

/// Type name → factory. Read on every exchange.declare, written when plugins come and go.
#[derive(Debug)]
pub struct Registry {
    types: RwLock<HashMap<String, Factory>>,
}

impl Default for Registry {
    fn default() -> Self {
        let r = Registry {
            types: RwLock::new(HashMap::new()),
        };
        r.register("direct", || Box::new(Direct::default()));
        r.register("fanout", || Box::new(Fanout::default()));
        r.register("topic", || Box::new(Topic::default()));
        r.register("headers", || Box::new(Headers::default()));
        r
    }
}

impl Registry {
    /// Registers (or replaces) the factory for `name`.
    pub fn register(&self, name: &str, factory: Factory) {
        self.types
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), factory);
    }

    /// Removes `name`; returns whether it was registered.
    pub fn unregister(&self, name: &str) -> bool {
        self.types
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some()
    }

    /// New routing state for an exchange of type `name`, or `None` for an unknown type.
    pub fn create(&self, name: &str) -> Option<Box<dyn ExchangeType>> {
        self.types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map(|f| f())
    }
}
