//! Warren: an AMQP 0-9-1 message broker, wire-compatible with RabbitMQ.
//!
//! Layers, top to bottom (a module only uses those below it): `server` → `connection` → `channel` →
//! `vhost` → `exchange`, `queue` → `message` → `protocol`. See `ARCHITECTURE.md`.
//!
//! The public surface is what the `warren` binary, the integration tests and the plugin tooling use:
//! [`broker::Broker`] (built from a [`config::Config`]), [`server::run`] with its [`server::Listener`]s,
//! the command line ([`cli`]), limits ([`limits`]), TLS ([`tls`]), the plugin host ([`plugin`]), and
//! the types their public items name ([`AlarmState`], [`Store`], [`Message`], [`MemoryAccount`]).
//! Everything else is crate-private; the benchmarks reach a few internals through `bench`, a marked
//! door that is not an API.

// Nothing on an input path panics (ARCHITECTURE.md): no unwrap/expect outside tests (clippy.toml
// allows them there).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod administration;
pub(crate) mod alarm;
pub(crate) mod auth;
pub mod broker;
pub(crate) mod channel;
pub mod cli;
pub(crate) mod clock;
pub(crate) mod cluster;
pub mod companions;
pub mod config;
pub(crate) mod connection;
pub(crate) mod content;
pub(crate) mod definitions;
pub(crate) mod delay;
pub(crate) mod error;
pub(crate) mod exchange;
pub mod limits;
pub mod management;
pub(crate) mod memory;
pub(crate) mod message;
pub mod plugin;
pub mod prometheus;
pub(crate) mod protocol;
pub(crate) mod queue;
pub(crate) mod rate;
pub mod server;
pub mod stats;
pub(crate) mod store;
pub(crate) mod sync;
pub(crate) mod throttle;
pub mod tls;
pub mod tracking;
pub(crate) mod vhost;

// The public surface beyond the modules above: the types their public items name.
pub use alarm::{AlarmState, Limits as AlarmLimits};
pub use memory::{Memory, MemoryAccount};
pub use message::Message;
pub use store::Store;

/// The door for the benchmarks in `broker/benches` (hot paths, storage): internals re-exported so that
/// they can be measured directly. Not an API: nothing here is stable or documented for use elsewhere.
#[doc(hidden)]
pub mod bench {
    pub use crate::exchange::{
        direct::Direct, headers::Headers, registry::Registry, topic::Topic, Binding, Destination,
        ExchangeType,
    };
    pub use crate::protocol::{decode_frame, encode};
    pub use crate::queue::{Queue, QueueDeclaration, QueueOwner};
    pub use crate::store::{record::PublishRef, Durability};
    pub use crate::vhost::VHost;
}
