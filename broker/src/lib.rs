//! Warren: an AMQP 0-9-1 message broker, wire-compatible with RabbitMQ.
//!
//! Layers, top to bottom (a module only uses those below it): [`server`] → [`connection`] → [`channel`]
//! → [`vhost`] → [`exchange`], [`queue`] → [`message`] → [`protocol`]. See `ARCHITECTURE.md`.

// Nothing on an input path panics (ARCHITECTURE.md): no unwrap/expect outside tests (clippy.toml
// allows them there).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod alarm;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connection;
pub mod content;
pub mod definitions;
pub mod error;
pub mod exchange;
pub mod limits;
pub mod memory;
pub mod message;
pub mod plugin;
pub mod protocol;
pub mod queue;
pub mod server;
pub mod store;
pub mod sync;
pub mod throttle;
pub mod tls;
pub mod vhost;
