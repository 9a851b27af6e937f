//! Idempotency plugins: the key that makes two messages "the same" for a queue. The broker keeps the
//! record of keys; the plugin only derives them.

use crate::message::{Message, MessageSource};
use crate::table::Table;

/// What a key function may return: the key's octets, or none (the message is not deduplicated).
#[diagnostic::on_unimplemented(
    message = "an idempotency key function returns `Option<Vec<u8>>`, not `{Self}`",
    label = "return `Some(key octets)`, or `None` for a message without a key"
)]
pub trait IntoKey {
    /// The key.
    fn into_key(self) -> Option<Vec<u8>>;
}

impl IntoKey for Option<Vec<u8>> {
    fn into_key(self) -> Option<Vec<u8>> {
        self
    }
}

impl IntoKey for Option<String> {
    fn into_key(self) -> Option<Vec<u8>> {
        self.map(String::into_bytes)
    }
}

/// The plugin's functions, filled in by `#[warren_plugin_sdk::idempotency]`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    pub init: fn(&Table) -> Result<(), String>,
    pub key: fn(&Table, &Message<'_>) -> Option<Vec<u8>>,
}

/// Entry points the generated glue calls.
#[doc(hidden)]
pub mod runtime {
    use super::*;

    pub fn init(hooks: &Hooks, config: &[u8]) -> Result<(), String> {
        crate::config::init(hooks.init, config)
    }

    pub fn key(hooks: &Hooks, source: &dyn MessageSource) -> Option<Vec<u8>> {
        let key = source.routing_key();
        crate::config::with(|c| (hooks.key)(c, &Message::new(source, &key)))
    }

    /// Default for plugins without an `init` function.
    pub fn accept(_: &Table) -> Result<(), String> {
        Ok(())
    }
}
