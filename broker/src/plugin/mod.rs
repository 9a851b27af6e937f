//! The WebAssembly plugin host: custom exchange types, consumer filters and idempotency keys as
//! components targeting `wit/warren-plugin.wit` (`warren:plugin@0.3.0`) or the released
//! `warren:plugin@0.2.0` and `@0.1.0` (`wit/released/`).
//!
//! - `bindings`: the only `bindgen!` site.
//! - `engine`: engine, linker, store state, sandbox limits, the host `message` resource.
//! - `loader`: file → compiled, checked, pre-instantiated version.
//! - `registry`: live versions per plugin name (atomic swap), fault counters, plugin quarantine, snapshot.
//! - `instance`: one instance per broker entity; calls under the deadline.
//! - `entity`: an entity's instance through its life (build, init, rebuild on reload, drop on fault).
//! - `health`: fault accounting per entity (failure rate over its last calls, quarantine).
//! - `output`: a plugin's stdout and stderr as log lines (tagged, rate-limited).
//! - `watcher`: the plugin directory → reloads.
//! - `check`, `trial`, `scaffold`: `warren plugin check`, `test` and `new` (tools for plugin authors).
//! - `worlds`: every package version of the contract this host accepts (0.3.0, released 0.2.0 and
//!   0.1.0).
//!
//! This module knows nothing of AMQP sessions: no channel, connection or vhost types.

pub mod bindings;
pub mod check;
pub mod engine;
pub mod entity;
pub mod health;
pub mod instance;
pub mod kv;
pub mod loader;
pub mod output;
pub mod registry;
pub mod scaffold;
pub mod trial;
pub mod watcher;
pub mod worlds;

pub use engine::{Fault, Limits};
pub use loader::Kind;
pub use registry::{PluginHost, PluginStatus, Slot};
