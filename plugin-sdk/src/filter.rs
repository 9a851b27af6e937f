//! Filter plugins: what one consumer receives, decided per message.

use crate::message::{Message, MessageSource};
use crate::table::Table;

/// The decision for one message offered to a consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The consumer receives it.
    Deliver,
    /// Not for this consumer; it stays in the queue for others (like a JMS selector).
    Skip,
    /// Nobody should have it: dead-lettered if the queue has a dead-letter exchange, else dropped.
    Reject,
}

impl From<bool> for Decision {
    /// `true` delivers, `false` skips.
    fn from(deliver: bool) -> Self {
        if deliver {
            Decision::Deliver
        } else {
            Decision::Skip
        }
    }
}

/// What a filter function may return: a [`Decision`], or `bool` (deliver or skip).
#[diagnostic::on_unimplemented(
    message = "a filter function returns a `Decision` or a `bool`, not `{Self}`",
    label = "return `Decision::Deliver`, `Decision::Skip` or `Decision::Reject` (or a bool: deliver or skip)"
)]
pub trait IntoDecision {
    /// The decision.
    fn into_decision(self) -> Decision;
}

impl IntoDecision for Decision {
    fn into_decision(self) -> Decision {
        self
    }
}

impl IntoDecision for bool {
    fn into_decision(self) -> Decision {
        self.into()
    }
}

/// The plugin's functions, filled in by `#[warren_plugin_sdk::filter]`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    pub init: fn(&Table) -> Result<(), String>,
    pub filter: fn(&Table, &Message<'_>) -> Decision,
}

/// Entry points the generated glue calls.
#[doc(hidden)]
pub mod runtime {
    use super::*;

    pub fn init(hooks: &Hooks, config: &[u8]) -> Result<(), String> {
        crate::config::init(hooks.init, config)
    }

    pub fn filter(hooks: &Hooks, source: &dyn MessageSource) -> Decision {
        let key = source.routing_key();
        crate::config::with(|c| (hooks.filter)(c, &Message::new(source, &key)))
    }

    /// Default for filters without an `init` function.
    pub fn accept(_: &Table) -> Result<(), String> {
        Ok(())
    }
}
