//! The only place that generates host bindings for `wit/warren-plugin.wit` (`warren:plugin@0.4.0`)
//! and the released packages in `wit/released/` (0.3.0, 0.2.0, 0.1.0): one `bindgen!` per world; each
//! package's `types` interface is generated once, with its exchange world, and reused.
//!
//! Exports are generated `async` because WASI is linked asynchronously (wasmtime-wasi's synchronous
//! shims start a Tokio `block_on`, which panics on the broker's runtime threads); calls are driven to
//! completion on the calling thread by `engine::run`, since nothing a plugin can reach ever waits.
//!
//! The `message` resource is backed by [`MessageView`]: the broker's message plus the routing key the
//! call is about, held in the store's resource table for the duration of one call.

use std::sync::Arc;

use crate::message::Message;

/// What a plugin's `message` handle points at during a call.
#[derive(Debug)]
pub struct MessageView {
    /// The message (shared, never copied).
    pub message: Arc<Message>,
}

/// What a plugin's `message-run` handle points at during a `route-messages` call.
#[derive(Debug)]
pub struct MessageRunView {
    /// The messages, in publish order (shared, never copied).
    pub messages: Vec<Arc<Message>>,
}

// Generated code uses `unsafe` internally for the canonical ABI; nothing hand-written here does.
#[allow(
    unsafe_code,
    missing_debug_implementations,
    unreachable_pub,
    missing_docs,
    clippy::all
)]
mod generated {
    pub(super) mod exchange {
        wasmtime::component::bindgen!({
            path: "../wit/warren-plugin.wit",
            world: "warren:plugin/exchange-plugin",
            with: {
                "warren:plugin/types.message": crate::plugin::bindings::MessageView,
                "warren:plugin/types.message-run": crate::plugin::bindings::MessageRunView,
            },
            exports: { default: async },
        });
    }
    pub(super) mod filter {
        wasmtime::component::bindgen!({
            path: "../wit/warren-plugin.wit",
            world: "warren:plugin/filter-plugin",
            with: { "warren:plugin/types": super::exchange::warren::plugin::types },
            exports: { default: async },
        });
    }
    pub(super) mod idempotency {
        wasmtime::component::bindgen!({
            path: "../wit/warren-plugin.wit",
            world: "warren:plugin/idempotency-plugin",
            with: { "warren:plugin/types": super::exchange::warren::plugin::types },
            exports: { default: async },
        });
    }
    /// The released package `warren:plugin@0.3.0` (`wit/released/`): its own `types` interface
    /// (`types@0.3.0`, linked beside the current one), its resources backed by the same
    /// [`MessageView`](crate::plugin::bindings::MessageView) and
    /// [`MessageRunView`](crate::plugin::bindings::MessageRunView).
    pub(super) mod v0_3 {
        pub(in crate::plugin) mod exchange {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.3.0.wit",
                world: "warren:plugin/exchange-plugin@0.3.0",
                with: {
                    "warren:plugin/types@0.3.0.message": crate::plugin::bindings::MessageView,
                    "warren:plugin/types@0.3.0.message-run": crate::plugin::bindings::MessageRunView,
                },
                exports: { default: async },
            });
        }
        pub(in crate::plugin) mod filter {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.3.0.wit",
                world: "warren:plugin/filter-plugin@0.3.0",
                with: { "warren:plugin/types@0.3.0": super::exchange::warren::plugin::types },
                exports: { default: async },
            });
        }
        pub(in crate::plugin) mod idempotency {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.3.0.wit",
                world: "warren:plugin/idempotency-plugin@0.3.0",
                with: { "warren:plugin/types@0.3.0": super::exchange::warren::plugin::types },
                exports: { default: async },
            });
        }
    }
    /// The released package `warren:plugin@0.2.0` (`wit/released/`): its own `types` interface
    /// (`types@0.2.0`, linked beside the current one), its message resource backed by the same
    /// [`MessageView`](crate::plugin::bindings::MessageView).
    pub(super) mod v0_2 {
        pub(in crate::plugin) mod exchange {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.2.0.wit",
                world: "warren:plugin/exchange-plugin@0.2.0",
                with: { "warren:plugin/types@0.2.0.message": crate::plugin::bindings::MessageView },
                exports: { default: async },
            });
        }
        pub(in crate::plugin) mod filter {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.2.0.wit",
                world: "warren:plugin/filter-plugin@0.2.0",
                with: { "warren:plugin/types@0.2.0": super::exchange::warren::plugin::types },
                exports: { default: async },
            });
        }
        pub(in crate::plugin) mod idempotency {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.2.0.wit",
                world: "warren:plugin/idempotency-plugin@0.2.0",
                with: { "warren:plugin/types@0.2.0": super::exchange::warren::plugin::types },
                exports: { default: async },
            });
        }
    }
    /// The released package `warren:plugin@0.1.0` (`wit/released/`): its own `types` interface
    /// (`types@0.1.0`, linked beside the current one), its message resource backed by the same
    /// [`MessageView`](crate::plugin::bindings::MessageView).
    pub(super) mod v0_1 {
        pub(in crate::plugin) mod exchange {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.1.0.wit",
                world: "warren:plugin/exchange-plugin@0.1.0",
                with: { "warren:plugin/types@0.1.0.message": crate::plugin::bindings::MessageView },
                exports: { default: async },
            });
        }
        pub(in crate::plugin) mod filter {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.1.0.wit",
                world: "warren:plugin/filter-plugin@0.1.0",
                with: { "warren:plugin/types@0.1.0": super::exchange::warren::plugin::types },
                exports: { default: async },
            });
        }
        pub(in crate::plugin) mod idempotency {
            wasmtime::component::bindgen!({
                path: "../wit/released/warren-plugin@0.1.0.wit",
                world: "warren:plugin/idempotency-plugin@0.1.0",
                with: { "warren:plugin/types@0.1.0": super::exchange::warren::plugin::types },
                exports: { default: async },
            });
        }
    }
}

/// Host bindings of the released package `warren:plugin@0.3.0`, kept loadable: the same three worlds,
/// the exchange world without the `host` import and `schedule`, its `init` answering `routes-on`.
pub mod v0_3 {
    pub use super::generated::v0_3::exchange::exports::warren::plugin::exchange::{
        Binding, RoutedKeys, RoutesOn,
    };
    pub use super::generated::v0_3::exchange::warren::plugin::types::{
        self, FieldValue, Host as TypesHost, HostMessage, HostMessageRun, PluginInfo, RunBodies,
    };
    pub use super::generated::v0_3::exchange::{ExchangePlugin, ExchangePluginPre};
    pub use super::generated::v0_3::filter::exports::warren::plugin::filter::Decision;
    pub use super::generated::v0_3::filter::{FilterPlugin, FilterPluginPre};
    pub use super::generated::v0_3::idempotency::{IdempotencyPlugin, IdempotencyPluginPre};
}

/// Host bindings of the released package `warren:plugin@0.2.0`, kept loadable: the same three worlds,
/// the exchange world without `route-messages`.
pub mod v0_2 {
    pub use super::generated::v0_2::exchange::exports::warren::plugin::exchange::{
        Binding, RoutesOn,
    };
    pub use super::generated::v0_2::exchange::warren::plugin::types::{
        self, FieldValue, Host as TypesHost, HostMessage, PluginInfo,
    };
    pub use super::generated::v0_2::exchange::{ExchangePlugin, ExchangePluginPre};
    pub use super::generated::v0_2::filter::exports::warren::plugin::filter::Decision;
    pub use super::generated::v0_2::filter::{FilterPlugin, FilterPluginPre};
    pub use super::generated::v0_2::idempotency::{IdempotencyPlugin, IdempotencyPluginPre};
}

/// Host bindings of the released package `warren:plugin@0.1.0`, kept loadable: the same three worlds,
/// the exchange world without `route-keys`.
pub mod v0_1 {
    pub use super::generated::v0_1::exchange::exports::warren::plugin::exchange::{
        Binding, RoutesOn,
    };
    pub use super::generated::v0_1::exchange::warren::plugin::types::{
        self, FieldValue, Host as TypesHost, HostMessage, PluginInfo,
    };
    pub use super::generated::v0_1::exchange::{ExchangePlugin, ExchangePluginPre};
    pub use super::generated::v0_1::filter::exports::warren::plugin::filter::Decision;
    pub use super::generated::v0_1::filter::{FilterPlugin, FilterPluginPre};
    pub use super::generated::v0_1::idempotency::{IdempotencyPlugin, IdempotencyPluginPre};
}

pub use generated::exchange::exports::warren::plugin::exchange::{
    Binding, Due, ExchangeOptions, RoutesOn,
};
pub use generated::exchange::warren::plugin::host::{
    self as host, Host as HostServices, KvError, KvOptions,
};
pub use generated::exchange::warren::plugin::types::{
    self, FieldValue, Host as TypesHost, HostMessage, HostMessageRun, PluginInfo, RunBodies,
};
pub use generated::exchange::{ExchangePlugin, ExchangePluginPre};
pub use generated::filter::exports::warren::plugin::filter::Decision;
pub use generated::filter::{FilterPlugin, FilterPluginPre};
pub use generated::idempotency::{IdempotencyPlugin, IdempotencyPluginPre};
