//! Exchange type registry: type name → routing state (RabbitMQ `rabbit_registry`).
//!
//! The four standard types are registered at start. Plugin types (`x-…`) are looked up in the
//! [`PluginHost`] at declare time, so a type exists exactly while a plugin providing it is loaded;
//! native and plugin types sit side by side and route through the same [`ExchangeType`] trait.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use amq_protocol::types::FieldTable;

use super::direct::Direct;
use super::fanout::Fanout;
use super::headers::Headers;
use super::topic::Topic;
use super::wasm::WasmExchange;
use super::{CreateError, ExchangeType};
use crate::plugin::{Kind, PluginHost};

/// Builds the routing state for a new exchange of a native type.
pub(crate) type Factory = fn() -> Box<dyn ExchangeType>;

/// Type name → factory for native types, plus the plugin host for `x-` types. Read on every
/// exchange.declare.
#[derive(Debug)]
pub struct Registry {
    types: RwLock<HashMap<String, Factory>>,
    plugins: Option<Arc<PluginHost>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(None)
    }
}

impl Registry {
    /// The native types, and plugin types from `plugins` if given.
    pub fn new(plugins: Option<Arc<PluginHost>>) -> Self {
        let r = Registry {
            types: RwLock::new(HashMap::new()),
            plugins,
        };
        r.register("direct", || Box::new(Direct::default()));
        r.register("fanout", || Box::new(Fanout::default()));
        r.register("topic", || Box::new(Topic::default()));
        r.register("headers", || Box::new(Headers::default()));
        r
    }

    /// The plugin host, if plugins are enabled.
    pub fn plugins(&self) -> Option<&Arc<PluginHost>> {
        self.plugins.as_ref()
    }

    /// Registers (or replaces) the factory for a native type `name`.
    pub fn register(&self, name: &str, factory: Factory) {
        crate::sync::write(&self.types).insert(name.to_owned(), factory);
    }

    /// Whether the plugin directory's initial load is still running (plugin types may still appear).
    pub fn plugins_loading(&self) -> bool {
        self.plugins
            .as_ref()
            .is_some_and(|p| p.initial_load_running())
    }

    /// Whether exchanges of type `name` can be declared now (native, or a loaded plugin type).
    pub fn knows(&self, name: &str) -> bool {
        crate::sync::read(&self.types).contains_key(name)
            || self
                .plugins
                .as_ref()
                .is_some_and(|p| p.loaded(Kind::Exchange, name).is_some())
    }

    /// New routing state for an exchange of type `name` declared with `arguments`; `entity` describes
    /// the exchange in a plugin's logs ("exchange 'x' in vhost '/'"). `recovering`: a plugin type that
    /// is still loading is not waited for (recovery goes on; see [`Registry::create_unavailable`]).
    /// `kv_dir`: where a plugin type's key-value journal lives, for a durable exchange.
    ///
    /// # Errors
    /// [`CreateError::UnknownType`] for a name that is neither native nor a loaded plugin type;
    /// [`CreateError::Refused`] when a plugin type refuses the arguments.
    pub fn create(
        &self,
        name: &str,
        arguments: &FieldTable,
        entity: &str,
        recovering: bool,
        kv_dir: Option<std::path::PathBuf>,
    ) -> Result<Box<dyn ExchangeType>, CreateError> {
        let native = crate::sync::read(&self.types).get(name).copied();
        if let Some(factory) = native {
            return Ok(factory());
        }
        let unknown = || CreateError::UnknownType(name.to_owned());
        let host = self.plugins.as_ref().ok_or_else(unknown)?;
        let slot = if recovering {
            host.loaded_now(Kind::Exchange, name)
        } else {
            host.loaded(Kind::Exchange, name)
        }
        .ok_or_else(unknown)?;
        let exchange = WasmExchange::new(host, &slot, arguments, entity.to_owned(), kv_dir)?;
        Ok(Box::new(exchange))
    }

    /// Routing state for a recovered exchange whose plugin type is not loaded: it stays declared and
    /// unavailable until a plugin of that type is loaded. `None` without a plugin host or for a name
    /// that cannot be a plugin type.
    pub fn create_unavailable(
        &self,
        name: &str,
        arguments: &FieldTable,
        entity: &str,
        kv_dir: Option<std::path::PathBuf>,
    ) -> Option<Box<dyn ExchangeType>> {
        let host = self.plugins.as_ref().filter(|_| name.starts_with("x-"))?;
        let slot = host.slot(Kind::Exchange, name);
        Some(Box::new(WasmExchange::unavailable(
            host,
            &slot,
            arguments,
            entity.to_owned(),
            kv_dir,
        )))
    }
}
