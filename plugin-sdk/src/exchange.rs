//! Exchange plugins: an exchange type written as one routing function.
//!
//! The SDK keeps the exchange's state inside the instance — its declare arguments and its bindings,
//! pushed by the broker as they change — so the routing function sees them without the broker
//! re-sending them per message. Derived data (a hash ring, an index) goes in [`Exchange::cached`],
//! rebuilt lazily after the bindings change.

use std::any::Any;
use std::cell::{OnceCell, RefCell};

use crate::message::{KeyOnly, Message, MessageSource};
use crate::table::Table;

/// One binding of the exchange.
#[derive(Clone, Debug)]
pub struct Binding {
    /// Broker-assigned id, stable while the binding exists; routing answers with ids.
    pub id: u32,
    /// The bound queue's or exchange's name: stable across broker restarts, unlike `id`, so use it
    /// for anything that must route the same way after a restart (e.g. hash ring positions).
    pub destination: String,
    /// The binding key (`routing_key` of queue.bind / exchange.bind).
    pub key: String,
    /// The binding's arguments.
    pub arguments: Table,
}

impl Binding {
    /// A binding with no arguments (for a plugin's tests; the broker makes the real ones).
    pub fn new(id: u32, destination: impl Into<String>, key: impl Into<String>) -> Binding {
        Binding {
            id,
            destination: destination.into(),
            key: key.into(),
            arguments: Table::default(),
        }
    }

    /// The binding with `arguments`.
    #[must_use]
    pub fn with_arguments(mut self, arguments: Table) -> Binding {
        self.arguments = arguments;
        self
    }
}

/// What routing depends on; tells the broker whether it may cache routing decisions per routing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoutesOn {
    /// The routing key alone (the same key always routes to the same bindings while they are
    /// unchanged): the broker caches decisions per key and may ask for many keys in one call, with a
    /// [`Message`] whose other parts (exchange, properties, headers, body) read as empty.
    RoutingKey,
    /// Headers, properties or the body: every message is routed by the plugin.
    Message,
}

/// When a message is routed: the answer of a `schedule` function (`#[exchange(schedule = f)]`,
/// `warren:plugin@0.4.0`). For [`Due::After`] and [`Due::At`] the broker keeps the message (on disk
/// when it is persistent and the exchange durable) and routes it when due with the routing function,
/// against the bindings the exchange has then; the plugin keeps no copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Route it now.
    Now,
    /// Route it this many milliseconds from now (0: now).
    After(u64),
    /// Route it at this time, milliseconds since the Unix epoch (a time past: now).
    At(u64),
    /// Refuse the publish: the publisher's channel is closed with `406 PRECONDITION_FAILED - <text>`
    /// (e.g. a delay header that is not a number).
    Refuse(String),
}

/// The exchange an instance routes for: its declare arguments and current bindings.
pub struct Exchange {
    arguments: Table,
    bindings: Vec<Binding>,
    cache: OnceCell<Box<dyn Any>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("arguments", &self.arguments)
            .field("bindings", &self.bindings)
            .finish_non_exhaustive()
    }
}

impl Exchange {
    /// An exchange with these declare `arguments` and `bindings`, for a plugin's tests: the routing
    /// function can be called on it natively. The broker builds the real one from `init`,
    /// `validate-binding` and `add-binding`; a test that wants those checks calls its own `init` and
    /// `validate_binding` functions.
    ///
    /// ```
    /// use warren_plugin_sdk::exchange::{Binding, Exchange};
    /// use warren_plugin_sdk::{Message, Table};
    ///
    /// #[warren_plugin_sdk::exchange(name = "x-prefix")]
    /// fn route(exchange: &Exchange, message: &Message) -> Vec<u32> {
    ///     exchange
    ///         .bindings()
    ///         .iter()
    ///         .filter(|b| message.routing_key().starts_with(b.key.as_str()))
    ///         .map(|b| b.id)
    ///         .collect()
    /// }
    ///
    /// # fn main() {
    /// let exchange = Exchange::new(
    ///     Table::new(),
    ///     vec![Binding::new(1, "eu", "orders.eu"), Binding::new(2, "all", "orders")],
    /// );
    /// assert_eq!(route(&exchange, &Message::builder("orders.eu.paid").build()), vec![1, 2]);
    /// assert_eq!(route(&exchange, &Message::builder("orders.us").build()), vec![2]);
    /// # }
    /// ```
    ///
    /// (The plugin function sits at module level, as in a plugin crate: the macro's glue refers to
    /// it from a module beside it.)
    pub fn new(arguments: Table, bindings: Vec<Binding>) -> Exchange {
        Exchange {
            arguments,
            bindings,
            cache: OnceCell::new(),
        }
    }

    /// The arguments given in exchange.declare.
    pub fn arguments(&self) -> &Table {
        &self.arguments
    }

    /// The current bindings, in the order they were added.
    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    /// A value derived from the exchange (e.g. a hash ring built from the bindings), built by `build`
    /// on first use and dropped whenever a binding is added or removed.
    ///
    /// # Panics
    /// If one exchange asks for cached values of two different types.
    pub fn cached<T: 'static>(&self, build: impl FnOnce(&Exchange) -> T) -> &T {
        self.cache
            .get_or_init(|| Box::new(build(self)))
            .downcast_ref::<T>()
            .expect("Exchange::cached used with two different types")
    }
}

/// What a routing function may return: binding ids.
#[diagnostic::on_unimplemented(
    message = "a routing function returns binding ids, `Vec<u32>` or `Option<u32>`, not `{Self}`",
    label = "return `Vec<u32>` (every binding to route to) or `Option<u32>` (at most one)"
)]
pub trait IntoRoute {
    /// The binding ids.
    fn into_route(self) -> Vec<u32>;
}

impl IntoRoute for Vec<u32> {
    fn into_route(self) -> Vec<u32> {
        self
    }
}

impl IntoRoute for Option<u32> {
    fn into_route(self) -> Vec<u32> {
        self.into_iter().collect()
    }
}

/// The plugin's functions, filled in by `#[warren_plugin_sdk::exchange]`.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    pub init: fn(&Table) -> Result<RoutesOn, String>,
    pub validate_binding: fn(&Exchange, &Binding) -> Result<(), String>,
    pub route: fn(&Exchange, &Message<'_>) -> Vec<u32>,
    pub schedule: Option<fn(&Exchange, &Message<'_>) -> Due>,
}

thread_local! {
    static STATE: RefCell<Option<Exchange>> = const { RefCell::new(None) };
}

fn binding(id: u32, destination: String, key: String, arguments: &[u8]) -> Result<Binding, String> {
    Ok(Binding {
        id,
        destination,
        key,
        arguments: Table::decode(arguments).map_err(|e| e.to_string())?,
    })
}

/// Entry points the generated glue calls; each mirrors a function of the WIT `exchange` interface.
#[doc(hidden)]
pub mod runtime {
    use super::*;

    /// `init`: the routing dependency and whether the exchange schedules (it has a `schedule`
    /// function).
    pub fn init(hooks: &Hooks, arguments: &[u8]) -> Result<(RoutesOn, bool), String> {
        let arguments = Table::decode(arguments).map_err(|e| e.to_string())?;
        let routes_on = (hooks.init)(&arguments)?;
        STATE.with_borrow_mut(|s| {
            *s = Some(Exchange {
                arguments,
                bindings: Vec::new(),
                cache: OnceCell::new(),
            })
        });
        Ok((routes_on, hooks.schedule.is_some()))
    }

    /// `schedule`: the plugin's answer, or now without a `schedule` function.
    pub fn schedule(hooks: &Hooks, source: &dyn MessageSource) -> Due {
        match hooks.schedule {
            Some(f) => {
                let key = source.routing_key();
                with(|x| f(x, &Message::new(source, &key)))
            }
            None => Due::Now,
        }
    }

    fn with<R>(f: impl FnOnce(&mut Exchange) -> R) -> R {
        STATE.with_borrow_mut(|s| f(s.as_mut().expect("the broker calls init first")))
    }

    pub fn validate_binding(
        hooks: &Hooks,
        id: u32,
        destination: String,
        key: String,
        arguments: &[u8],
    ) -> Result<(), String> {
        let b = binding(id, destination, key, arguments)?;
        with(|x| (hooks.validate_binding)(x, &b))
    }

    pub fn add_binding(id: u32, destination: String, key: String, arguments: &[u8]) {
        // The broker only adds bindings that passed validate_binding, so the arguments decode.
        if let Ok(b) = binding(id, destination, key, arguments) {
            with(|x| {
                x.bindings.push(b);
                x.cache = OnceCell::new();
            })
        }
    }

    pub fn remove_binding(id: u32) {
        with(|x| {
            x.bindings.retain(|b| b.id != id);
            x.cache = OnceCell::new();
        })
    }

    pub fn route(hooks: &Hooks, source: &dyn MessageSource, routing_key: &str) -> Vec<u32> {
        with(|x| (hooks.route)(x, &Message::new(source, routing_key)))
    }

    /// `route-keys`: the routing function applied to each key of a batch, with a message that has
    /// only its routing key (the broker batches only when `init` said [`RoutesOn::RoutingKey`]).
    /// Returns the ids back to back and where each key's ids end.
    pub fn route_keys(hooks: &Hooks, keys: &[u8], key_ends: &[u32]) -> (Vec<u32>, Vec<u32>) {
        let mut ids = Vec::with_capacity(key_ends.len());
        let mut id_ends = Vec::with_capacity(key_ends.len());
        let mut start = 0;
        with(|x| {
            for &end in key_ends {
                let end = (end as usize).clamp(start, keys.len());
                let key = std::str::from_utf8(&keys[start..end]).unwrap_or_default();
                start = end;
                ids.extend((hooks.route)(x, &Message::new(&KeyOnly(key), key)));
                id_ends.push(u32::try_from(ids.len()).unwrap_or(u32::MAX));
            }
        });
        (ids, id_ends)
    }

    /// `route-messages`: the routing function applied to each message of a run in order (message i
    /// is `source(i)`, routed with key i), with the answer in `route_keys`'s form (the broker asks
    /// only when `init` said [`RoutesOn::Message`]).
    pub fn route_messages<S: MessageSource>(
        hooks: &Hooks,
        source: impl Fn(u32) -> S,
        keys: &[u8],
        key_ends: &[u32],
    ) -> (Vec<u32>, Vec<u32>) {
        let mut ids = Vec::with_capacity(key_ends.len());
        let mut id_ends = Vec::with_capacity(key_ends.len());
        let mut start = 0;
        with(|x| {
            for (i, &end) in key_ends.iter().enumerate() {
                let end = (end as usize).clamp(start, keys.len());
                let key = std::str::from_utf8(&keys[start..end]).unwrap_or_default();
                start = end;
                let message = source(u32::try_from(i).unwrap_or(u32::MAX));
                ids.extend((hooks.route)(x, &Message::new(&message, key)));
                id_ends.push(u32::try_from(ids.len()).unwrap_or(u32::MAX));
            }
        });
        (ids, id_ends)
    }

    /// Default for plugins without an `init` function: routing may look at the whole message.
    pub fn accept_any(_: &Table) -> Result<RoutesOn, String> {
        Ok(RoutesOn::Message)
    }

    /// Default for plugins without a `validate_binding` function.
    pub fn accept_binding(_: &Exchange, _: &Binding) -> Result<(), String> {
        Ok(())
    }
}
