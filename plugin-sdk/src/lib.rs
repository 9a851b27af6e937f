//! # warren-plugin-sdk
//!
//! Write plugins for Warren, an AMQP 0-9-1 message broker — custom exchange types, consumer filters
//! and idempotency keys — as one annotated Rust function, built to a WebAssembly component with
//! `cargo build --release --target wasm32-wasip2` and dropped into the broker's plugin directory.
//! The contract is the WIT package `warren:plugin@0.4.0` (`wit/warren-plugin.wit` in Warren's
//! repository; this crate's macros carry a copy); this crate is the only dependency a plugin needs.
//! `warren plugin new` scaffolds a plugin crate; the plugin guide is `docs/plugins.md` in Warren's
//! repository.
//!
//! Each example below is also a test: the annotated function stays an ordinary Rust function, so a
//! plugin crate's `cargo test` calls it natively on an [`exchange::Exchange::new`] and a
//! [`Message::builder`] message — no broker and no WebAssembly needed.
//!
//! ## An exchange type
//! The function receives the exchange (declare arguments and bindings, kept inside the plugin
//! instance) and the message, and returns the ids of the bindings to route to.
//!
//! ```
//! use warren_plugin_sdk::exchange::{Binding, Exchange, RoutesOn};
//! use warren_plugin_sdk::{Message, Table};
//!
//! fn init(_arguments: &Table) -> Result<RoutesOn, String> {
//!     Ok(RoutesOn::RoutingKey) // the same key always routes the same way: the broker may cache
//! }
//!
//! /// Routes to every binding whose key is a prefix of the routing key.
//! #[warren_plugin_sdk::exchange(name = "x-prefix", description = "binding key = prefix", init = init)]
//! fn route(exchange: &Exchange, message: &Message) -> Vec<u32> {
//!     exchange
//!         .bindings()
//!         .iter()
//!         .filter(|b| message.routing_key().starts_with(b.key.as_str()))
//!         .map(|b| b.id)
//!         .collect()
//! }
//!
//! # fn main() {
//! let exchange = Exchange::new(Table::new(), vec![Binding::new(7, "q-ab", "ab")]);
//! assert_eq!(route(&exchange, &Message::builder("abc").build()), vec![7]);
//! assert!(route(&exchange, &Message::builder("b").build()).is_empty());
//! # }
//! ```
//!
//! ## A consumer filter
//! Attached with `basic.consume` arguments `x-filter = "<name>"` and `x-filter-args = {…}`.
//!
//! ```
//! use warren_plugin_sdk::filter::Decision;
//! use warren_plugin_sdk::{Message, Table};
//!
//! #[warren_plugin_sdk::filter(name = "only-json")]
//! fn filter(_config: &Table, message: &Message) -> Decision {
//!     match message.property_str("content-type").as_deref() {
//!         Some("application/json") => Decision::Deliver,
//!         _ => Decision::Skip,
//!     }
//! }
//!
//! # fn main() {
//! let json = Message::builder("k").property("content-type", "application/json").build();
//! assert_eq!(filter(&Table::new(), &json), Decision::Deliver);
//! assert_eq!(filter(&Table::new(), &Message::builder("k").build()), Decision::Skip);
//! # }
//! ```
//!
//! ## An idempotency key
//! Attached with the queue argument `x-idempotency = "<name>"`; the broker remembers acked keys.
//!
//! ```
//! use warren_plugin_sdk::{Message, Table};
//!
//! #[warren_plugin_sdk::idempotency(name = "by-message-id")]
//! fn key(_config: &Table, message: &Message) -> Option<Vec<u8>> {
//!     message.property_str("message-id").map(String::into_bytes)
//! }
//!
//! # fn main() {
//! let m = Message::builder("k").property("message-id", "m-1").build();
//! assert_eq!(key(&Table::new(), &m), Some(b"m-1".to_vec()));
//! # }
//! ```
//!
//! ## State and time (exchanges)
//! An exchange plugin can keep state in the broker — [`store`], a key-value store per exchange that
//! outlives instances and, when asked, restarts — and ask the broker to deliver a message later with a
//! `schedule` function ([`exchange::Due`]):
//!
//! ```
//! use warren_plugin_sdk::exchange::{Due, Exchange};
//! use warren_plugin_sdk::{Message, Value};
//!
//! /// Holds each message for its `x-delay` header's milliseconds.
//! fn delay(_exchange: &Exchange, message: &Message) -> Due {
//!     match message.header("x-delay") {
//!         Some(Value::Integer(ms)) if ms > 0 => Due::After(ms as u64),
//!         _ => Due::Now,
//!     }
//! }
//!
//! #[warren_plugin_sdk::exchange(name = "x-later", schedule = delay)]
//! fn route(exchange: &Exchange, _message: &Message) -> Vec<u32> {
//!     exchange.bindings().iter().map(|b| b.id).collect()
//! }
//!
//! # fn main() {
//! let m = Message::builder("k").header("x-delay", 1500i64).build();
//! assert_eq!(delay(&Exchange::new(Default::default(), vec![]), &m), Due::After(1500));
//! # }
//! ```
//!
//! Plugins run sandboxed: no files, network or environment; a per-call CPU deadline and a memory cap.
//! A panic or a limit breach is contained by the broker and handled by its failure policy.
#![deny(missing_docs)]

extern crate self as warren_plugin_sdk;

mod config;
pub mod exchange;
pub mod filter;
pub mod idempotency;
mod message;
pub mod store;
pub mod table;

pub use message::{Message, MessageBuilder};
pub use table::{Table, Value};
pub use warren_plugin_sdk_macros::{exchange, filter, idempotency};

/// What the macros' generated code uses; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::message::MessageSource;
    pub use crate::table::{decode_array, Table, Value};
    pub use wit_bindgen;
}
