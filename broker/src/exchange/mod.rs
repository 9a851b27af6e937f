//! Exchanges: the record a client declares, its bindings, and the routing logic behind its type.
//!
//! An exchange type is an [`ExchangeType`] — validate a binding, learn bindings as they are added and
//! removed, route a message to destinations — looked up by name in the [`registry::Registry`]
//! (RabbitMQ's `rabbit_exchange_type` behaviour + `rabbit_registry`). Routing writes into a caller-owned
//! buffer and never delivers; the vhost follows exchange-to-exchange destinations and deduplicates.
//! Reference: RabbitMQ docs/exchanges.md, docs/e2e.md.

pub(crate) mod batch;
pub(crate) mod direct;
pub(crate) mod fanout;
pub(crate) mod headers;
pub(crate) mod registry;
pub(crate) mod topic;
pub(crate) mod wasm;

use std::fmt;
use std::sync::{Arc, RwLock};

use amq_protocol::types::{FieldTable, ShortString};

pub(crate) use batch::{Prepared, RouteBatch};

use crate::delay::DelayStore;
use crate::memory::{self, Account, Charge, Memory};
use crate::message::MessageRef;
use crate::queue::Queue;

/// Where a binding sends matching messages.
#[derive(Clone)]
pub enum Destination {
    /// A queue (held directly so routing needs no name lookup).
    Queue(Arc<Queue>),
    /// Another exchange, by name (exchange-to-exchange binding, RabbitMQ docs/e2e.md).
    Exchange(ShortString),
}

impl Destination {
    /// The destination's name.
    pub fn name(&self) -> &str {
        match self {
            Destination::Queue(q) => q.name.as_str(),
            Destination::Exchange(x) => x.as_str(),
        }
    }

    /// Whether this is the same destination as `other` (same kind, same name).
    pub fn same(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::Queue(a), Destination::Queue(b)) => Arc::ptr_eq(a, b),
            (Destination::Exchange(a), Destination::Exchange(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Queue(q) => write!(f, "queue '{}'", q.name),
            Destination::Exchange(x) => write!(f, "exchange '{x}'"),
        }
    }
}

/// One binding of an exchange: destination, binding key and binding arguments.
#[derive(Clone, Debug)]
pub struct Binding {
    /// Queue or exchange that receives matching messages.
    pub destination: Destination,
    /// The binding key (`routing_key` of queue.bind / exchange.bind).
    pub key: ShortString,
    /// Binding arguments (used by the headers exchange).
    pub arguments: FieldTable,
}

impl Binding {
    /// Bindings are equal when destination, key and arguments are (RabbitMQ `#binding{}` equality).
    pub fn same(&self, other: &Binding) -> bool {
        self.destination.same(&other.destination)
            && self.key == other.key
            && self.arguments == other.arguments
    }
}

/// Why an exchange type refused a binding; sent as `406 PRECONDITION_FAILED - <reason>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindingRefused(pub String);

/// Why an exchange of some type could not be created (exchange.declare, recovery).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CreateError {
    /// Neither a native type nor a loaded plugin type has this name (sent as 503 COMMAND_INVALID,
    /// RabbitMQ's "unknown exchange type").
    #[error("unknown exchange type '{0}'")]
    UnknownType(String),
    /// The plugin type refused the declare arguments, or faulted reading them (sent as 406).
    #[error("{0}")]
    Refused(String),
}

/// Routing logic of one exchange type. One value per exchange; it holds its own index of the bindings.
pub trait ExchangeType: Send + Sync + fmt::Debug {
    /// Checks a binding before it is added.
    ///
    /// # Errors
    /// `BindingRefused` with the reason.
    fn validate_binding(&self, _binding: &Binding) -> Result<(), BindingRefused> {
        Ok(())
    }
    /// Adds a validated binding to the index.
    fn bind(&mut self, binding: &Binding);
    /// Removes a binding previously added with [`ExchangeType::bind`].
    fn unbind(&mut self, binding: &Binding);
    /// Appends the destinations of `message` published with `routing_key` (the message's own key, or a
    /// `CC`/`BCC` key); duplicates are allowed (the caller deduplicates). Must not allocate per call for
    /// the native types.
    ///
    /// # Errors
    /// `RouteError` when the type could not decide (a plugin faulted or is unavailable); the
    /// message is then treated as unroutable by this exchange (alternate exchange, basic.return,
    /// confirm nack).
    fn route(
        &self,
        routing_key: &str,
        message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError>;
    /// Most messages [`ExchangeType::prepare`] takes at once; 0 when the type routes message by
    /// message (every native type). Publishers hold runs of messages to an exchange whose type says
    /// more than 1 and route them as a batch.
    fn batch_limit(&self) -> usize {
        0
    }
    /// Computes the decisions for `messages` (about to be routed with their own routing keys, in
    /// publish order; at most [`ExchangeType::batch_limit`]) in one go. `None` when there is nothing
    /// to gain (a fault, one message, every key cached): the messages then route one by one.
    fn prepare(&self, _messages: &[&MessageRef]) -> Option<Prepared> {
        None
    }
    /// Like [`ExchangeType::route`] for the next message of a prepared run: answers from `prepared`
    /// when it holds this key's decision and is still valid, else routes as usual.
    ///
    /// # Errors
    /// As [`ExchangeType::route`].
    fn route_prepared(
        &self,
        routing_key: &str,
        message: &MessageRef,
        _prepared: &mut Prepared,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.route(routing_key, message, out)
    }
    /// When a message just published to the exchange is routed (`Schedule::Now` for every native
    /// type; a plugin type's `schedule` may keep it or refuse it).
    fn schedule(&self, _message: &MessageRef) -> Schedule {
        Schedule::Now
    }
    /// Entries in the type's key-value store (`warren:plugin@0.4.0` `host`), if it has one.
    fn kv_entries(&self) -> Option<u64> {
        None
    }
    /// The exchange was deleted: state kept outside the value (a key-value journal) goes.
    fn deleted(&self) {}
}

/// When a publish is routed ([`ExchangeType::schedule`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Now.
    Now,
    /// Kept until this time, ms since the Unix epoch.
    Later(u64),
    /// Refused: the publisher's channel is closed with `406 PRECONDITION_FAILED - <text>`.
    Refused(String),
}

/// Why an exchange type could not route a message (plugin types only; native types always route).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteError(pub String);

/// Flags of exchange.declare (AMQP 0-9-1 §1.6.2.1; `internal` is RabbitMQ's, docs/e2e.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeFlags {
    /// Survives restart.
    pub durable: bool,
    /// Deleted with its last binding.
    pub auto_delete: bool,
    /// Not publishable directly.
    pub internal: bool,
}

/// An exchange as declared (AMQP 0-9-1 §1.6.2.1 exchange.declare) with its bindings.
#[derive(Debug)]
pub struct Exchange {
    /// Exchange name.
    pub name: ShortString,
    /// Exchange type name (`direct`, `fanout`, `topic`, `headers`, or an `x-` plugin type).
    pub kind: ShortString,
    /// Survives a broker restart.
    pub durable: bool,
    /// Deleted when its last binding (as source) is removed.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// `alternate-exchange` from the policy in force, used when the arguments name none.
    policy_alternate: arc_swap::ArcSwapOption<ShortString>,
    /// The name of the policy in force, if any.
    policy: arc_swap::ArcSwapOption<String>,
    state: RwLock<ExchangeState>,
    /// A plugin type (`x-…`): asked whether to [`ExchangeType::schedule`] a publish (native types are
    /// never asked, so their publishes pay nothing for it).
    pluggable: bool,
    /// Messages its type asked to deliver later, once it has asked (`vhost/delayed.rs`).
    pub(crate) delays: std::sync::OnceLock<Arc<DelayStore>>,
    /// What the exchange itself costs, in the memory alarm's entity account.
    _memory: Charge,
}

#[derive(Debug)]
struct ExchangeState {
    bindings: Vec<Binding>,
    router: Box<dyn ExchangeType>,
    /// What `bindings` cost, charged to the memory alarm's entity account (given back on drop).
    binding_bytes: usize,
    /// The broker's memory account.
    memory: Memory,
}

impl Drop for ExchangeState {
    fn drop(&mut self) {
        self.memory.sub(Account::Entities, self.binding_bytes);
    }
}

/// What one binding costs, octets (an estimate for the memory alarm).
fn binding_cost(b: &Binding) -> usize {
    memory::BINDING_OVERHEAD + b.key.as_str().len() + memory::table_cost(&b.arguments)
}

impl Exchange {
    /// A new exchange with no bindings, routing with `router`.
    pub fn new(
        name: ShortString,
        kind: ShortString,
        flags: ExchangeFlags,
        arguments: FieldTable,
        router: Box<dyn ExchangeType>,
        memory: Memory,
    ) -> Self {
        let ExchangeFlags {
            durable,
            auto_delete,
            internal,
        } = flags;
        let charge = Charge::new(
            memory,
            Account::Entities,
            memory::EXCHANGE_OVERHEAD + name.as_str().len() + memory::table_cost(&arguments),
        );
        Exchange {
            pluggable: kind.as_str().starts_with("x-"),
            delays: std::sync::OnceLock::new(),
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            policy_alternate: arc_swap::ArcSwapOption::empty(),
            policy: arc_swap::ArcSwapOption::empty(),
            state: RwLock::new(ExchangeState {
                bindings: Vec::new(),
                router,
                binding_bytes: 0,
                memory,
            }),
            _memory: charge,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ExchangeState> {
        // A poisoned lock means a panic elsewhere while holding it; the state itself is still consistent
        // (bind/unbind do not panic midway), so keep serving rather than cascade the panic.
        crate::sync::read(&self.state)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ExchangeState> {
        crate::sync::write(&self.state)
    }

    /// Adds `binding` unless an equal one exists. Returns whether it was added.
    ///
    /// # Errors
    /// The type's reason when it refuses the binding (see [`ExchangeType::validate_binding`]).
    pub fn bind(&self, binding: Binding) -> Result<bool, BindingRefused> {
        let mut state = self.write();
        if state.bindings.iter().any(|b| b.same(&binding)) {
            return Ok(false);
        }
        state.router.validate_binding(&binding)?;
        state.router.bind(&binding);
        let cost = binding_cost(&binding);
        state.memory.add(Account::Entities, cost);
        state.binding_bytes += cost;
        state.bindings.push(binding);
        Ok(true)
    }

    /// Removes the binding equal to `binding`. Returns whether one was removed.
    pub fn unbind(&self, binding: &Binding) -> bool {
        let mut state = self.write();
        let Some(pos) = state.bindings.iter().position(|b| b.same(binding)) else {
            return false;
        };
        let removed = state.bindings.swap_remove(pos);
        state.router.unbind(&removed);
        let cost = binding_cost(&removed);
        state.memory.sub(Account::Entities, cost);
        state.binding_bytes -= cost;
        true
    }

    /// Removes every binding whose destination is `destination`; returns how many were removed.
    pub fn unbind_destination(&self, destination: &Destination) -> usize {
        let mut state = self.write();
        let state = &mut *state;
        let mut removed = 0;
        let mut i = 0;
        while i < state.bindings.len() {
            if state.bindings[i].destination.same(destination) {
                let b = state.bindings.swap_remove(i);
                state.router.unbind(&b);
                let cost = binding_cost(&b);
                state.memory.sub(Account::Entities, cost);
                state.binding_bytes -= cost;
                removed += 1;
            } else {
                i += 1;
            }
        }
        removed
    }

    /// When `message`, published to this exchange, is routed ([`ExchangeType::schedule`]; native
    /// types are not asked).
    pub fn schedule(&self, message: &MessageRef) -> Schedule {
        if !self.pluggable {
            return Schedule::Now;
        }
        self.read().router.schedule(message)
    }

    /// Messages waiting in the exchange's delay store.
    pub fn messages_delayed(&self) -> u64 {
        self.delays.get().map_or(0, |d| d.len())
    }

    /// Entries in the type's key-value store, if it has one.
    pub fn kv_entries(&self) -> Option<u64> {
        if !self.pluggable {
            return None;
        }
        self.read().router.kv_entries()
    }

    /// The exchange was deleted: its delayed messages are dropped, its type's outside state removed.
    pub fn deleted(&self) {
        if let Some(d) = self.delays.get() {
            d.close();
        }
        self.read().router.deleted();
    }

    /// Number of bindings with this exchange as source.
    pub fn binding_count(&self) -> usize {
        self.read().bindings.len()
    }

    /// A copy of the bindings (for listing and for deletion cascades).
    pub fn bindings(&self) -> Vec<Binding> {
        self.read().bindings.clone()
    }

    /// Appends the destinations of `message` under `routing_key` to `out` (may contain duplicates).
    ///
    /// # Errors
    /// The type could not route (see [`ExchangeType::route`]).
    pub fn route(
        &self,
        routing_key: &str,
        message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.read().router.route(routing_key, message, out)
    }

    /// See [`ExchangeType::batch_limit`].
    pub fn batch_limit(&self) -> usize {
        self.read().router.batch_limit()
    }

    /// The decisions of this exchange's type for `messages` (see [`ExchangeType::prepare`]), bound to this
    /// exchange.
    pub fn prepare(self: &Arc<Self>, messages: &[&MessageRef]) -> Option<RouteBatch> {
        let decisions = self.read().router.prepare(messages)?;
        Some(RouteBatch {
            exchange: Arc::clone(self),
            decisions,
        })
    }

    /// [`Exchange::route`] for a message of a prepared run (see [`ExchangeType::route_prepared`]).
    ///
    /// # Errors
    /// The type could not route.
    pub fn route_prepared(
        &self,
        routing_key: &str,
        message: &MessageRef,
        prepared: &mut Prepared,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.read()
            .router
            .route_prepared(routing_key, message, prepared, out)
    }

    /// Puts the policy named `policy` in force, with the alternate exchange it gives (the
    /// `alternate-exchange` argument still wins); `None` when no policy applies any more.
    pub fn apply_policy(&self, policy: Option<String>, alternate: Option<ShortString>) {
        self.policy_alternate.store(alternate.map(Arc::new));
        self.policy.store(policy.map(Arc::new));
    }

    /// The name of the policy in force (`policy` in the management API), if any.
    pub fn policy(&self) -> Option<Arc<String>> {
        self.policy.load_full()
    }

    /// The alternate exchange: the `alternate-exchange` argument, else the policy's (RabbitMQ docs/ae.md).
    pub fn alternate_exchange(&self) -> Option<ShortString> {
        match self.arguments.inner().get("alternate-exchange") {
            Some(amq_protocol::types::AMQPValue::LongString(s)) => {
                std::str::from_utf8(s.as_bytes())
                    .ok()
                    .and_then(|s| ShortString::try_new(s).ok())
            }
            Some(amq_protocol::types::AMQPValue::ShortString(s)) => Some(s.clone()),
            _ => self.policy_alternate.load_full().map(|a| (*a).clone()),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Helpers for the per-type routing tables.
    use super::*;
    use crate::message::Message;
    use amq_protocol::protocol::BasicProperties;
    use bytes::Bytes;

    pub(crate) fn queue(name: &str) -> Arc<Queue> {
        let owner: std::sync::Weak<dyn crate::queue::QueueOwner> =
            std::sync::Weak::<crate::vhost::VHost>::new();
        Arc::new(Queue::new(
            crate::queue::QueueDeclaration::transient(name.into()),
            &crate::memory::TEST_MEMORY,
            owner,
            None,
        ))
    }

    pub(crate) fn message(routing_key: &str, headers: Option<FieldTable>) -> MessageRef {
        let mut properties = BasicProperties::default();
        if let Some(h) = headers {
            properties = properties.with_headers(h);
        }
        Arc::new(Message::new(
            &crate::memory::TEST_MEMORY,
            "x".into(),
            ShortString::try_new(routing_key).expect("short routing key"),
            properties,
            Bytes::new(),
            Bytes::new(),
        ))
    }

    /// Binds each `(queue, key)` and returns the sorted, deduplicated queue names `key` routes to.
    pub(crate) fn route_names(
        router: &mut dyn ExchangeType,
        bindings: &[(&str, &str)],
        key: &str,
    ) -> Vec<String> {
        for (q, k) in bindings {
            router.bind(&Binding {
                destination: Destination::Queue(queue(q)),
                key: (*k).into(),
                arguments: FieldTable::default(),
            });
        }
        let mut out = Vec::new();
        router
            .route(key, &message(key, None), &mut out)
            .expect("native types always route");
        let mut names: Vec<String> = out.iter().map(|d| d.name().to_owned()).collect();
        names.sort();
        names.dedup();
        names
    }
}
