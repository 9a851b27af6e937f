//! A virtual host: its exchanges, queues and bindings, and routing a published message to queues.
//!
//! Declares, binds and deletes take the maps' write locks briefly; publishing takes read locks only, so
//! publishers on different connections route in parallel (no broker-wide lock on the publish path).
//! Errors carry RabbitMQ's reply codes and texts. Reference: RabbitMQ docs/exchanges.md, docs/queues.md,
//! docs/e2e.md, docs/spec-differences.md (amq.* names, default exchange).

pub(crate) mod dead_letter;
mod delayed;
mod durable;
pub(crate) mod policy;
pub(crate) mod reply_to;
mod routing;

pub(crate) use routing::Routed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use rand::Rng;
use tracing::{info, warn};

pub(crate) use self::durable::Definition;
use crate::cluster::command::{self, table, Command};
use crate::cluster::Cluster;
use crate::error::{AmqpError, AmqpResult};
use crate::exchange::registry::Registry;
pub(crate) use crate::exchange::ExchangeFlags;
use crate::exchange::{Binding, CreateError, Destination, Exchange};
use crate::limits::{Gauge, VhostLimits};
use crate::memory::Memory;
use crate::queue::args::{IdempotencyArgs, PluginArgs};
use crate::queue::plugins;
use crate::queue::{Queue, QueueArgs, QueueCounts, QueueDeclaration, QueueOwner};
use crate::store::definitions::DefinitionChange;
use crate::store::definitions_log::DefinitionsLog;
use crate::store::Store;
use crate::sync::{lock, read, write};

/// The standard exchanges every vhost has (RabbitMQ docs/exchanges.md "Default exchange", amq.*).
const PREDECLARED: &[(&str, &str)] = &[
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
];

/// Queue arguments RabbitMQ compares when a queue is redeclared (`rabbit_amqqueue` equivalence list).
const CHECKED_QUEUE_ARGS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-queue-type",
    "x-single-active-consumer",
];

/// Whether queue.bind / exchange.bind adds a binding or queue.unbind / exchange.unbind removes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingChange {
    /// Add the binding (refused when an end is missing).
    Bind,
    /// Remove it (a no-op when an end is missing).
    Unbind,
}

/// Flags of queue.declare.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueFlags {
    /// Survives restart.
    pub durable: bool,
    /// Owned by the declaring connection (id), deleted with it.
    pub exclusive: bool,
    /// Deleted after its last consumer.
    pub auto_delete: bool,
}

/// One virtual host. See the module docs.
#[derive(Debug)]
pub struct VHost {
    /// Vhost name, e.g. `/`.
    pub name: String,
    /// This vhost, handed to its queues as their [`QueueOwner`].
    me: Weak<VHost>,
    /// Direct reply-to consumers of this vhost.
    pub replies: reply_to::ReplyRegistry,
    /// Policies, applied to queues and exchanges as they are declared.
    policies: RwLock<Vec<policy::Policy>>,
    /// Held while a policy change is re-applied to the existing queues and exchanges.
    policy_change: Mutex<()>,
    /// Held while an exchange's delay store is made (`delayed.rs`), so that it is made once.
    delay_init: Mutex<()>,
    registry: Arc<Registry>,
    exchanges: RwLock<HashMap<ShortString, Arc<Exchange>>>,
    queues: RwLock<HashMap<ShortString, Arc<Queue>>>,
    /// The data directory, when durable state is kept.
    store: Option<Arc<Store>>,
    /// The definitions log (durable exchanges, queues, bindings), opened by [`VHost::recover`].
    definitions: OnceLock<Arc<DefinitionsLog>>,
    /// Held while a durable binding changes and its change is recorded, and while a durable queue or
    /// exchange is deleted with its bindings: so the definitions log's order is the bindings' order,
    /// and no binding is made to an end that a concurrent deletion is removing. Taken before the
    /// queue and exchange tables' locks.
    binding_change: Mutex<()>,
    /// Replaying stored definitions at start: nothing is written back meanwhile.
    recovering: AtomicBool,
    /// Queues declared, created and deleted since start (Prometheus counters).
    pub(crate) queue_counts: QueueCounters,
    /// Set once the vhost is deleted ([`VHost::delete`]): nothing is persisted for it any more.
    deleted: AtomicBool,
    /// `max-connections` and `max-queues` (RabbitMQ docs/vhosts.md "Limits").
    limits: RwLock<VhostLimits>,
    /// Client connections open to this vhost.
    connections: Gauge,
    /// The broker's memory account: messages, queues, exchanges and bindings of this vhost charge it.
    pub memory: Memory,
    /// In a cluster: metadata changes are proposed to it and applied on every node (`crate::cluster`).
    cluster: OnceLock<Arc<Cluster>>,
}

/// An argument value as RabbitMQ prints it in an inequivalence error: `the value '5' of type 'signedint'`.
fn show(v: &AMQPValue) -> String {
    let plain = match v {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        other => crate::protocol::values::int_value(other)
            .map_or_else(|| format!("{other:?}"), |n| n.to_string()),
    };
    format!(
        "the value '{plain}' of type '{}'",
        crate::protocol::values::type_name(v)
    )
}

impl VHost {
    /// Sets (replaces) the vhost's limits; they apply to later connections and declares.
    pub fn set_limits(&self, limits: VhostLimits) {
        *write(&self.limits) = limits;
    }

    /// The vhost's limits.
    pub fn limits(&self) -> VhostLimits {
        *read(&self.limits)
    }

    /// Counts a client connection to the vhost, or refuses it at `max-connections`. Pair with
    /// [`VHost::close_connection`].
    ///
    /// # Errors
    /// 530 NOT_ALLOWED with RabbitMQ's text (rabbit_reader `is_over_vhost_connection_limit`).
    pub fn open_connection(&self, user: &str) -> AmqpResult {
        let max = self.limits().connections();
        if self.connections.try_increment(max) {
            return Ok(());
        }
        Err(AmqpError::not_allowed(format!(
            "access to vhost '{}' refused for user '{user}': connection limit ({}) is reached",
            self.name,
            max.unwrap_or_default()
        )))
    }

    /// Forgets a connection counted by [`VHost::open_connection`].
    pub fn close_connection(&self) {
        self.connections.decrement();
    }

    /// Client connections open to the vhost.
    pub fn connection_count(&self) -> u64 {
        self.connections.get()
    }

    /// A vhost with the pre-declared `amq.*` exchanges. With a `store`, durable entities and
    /// persistent messages are kept in it; call [`VHost::recover`] to load what it holds.
    pub fn new(
        name: &str,
        registry: Arc<Registry>,
        store: Option<Arc<Store>>,
        memory: Memory,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| VHost::build(name, registry, store, memory, me.clone()))
    }

    fn build(
        name: &str,
        registry: Arc<Registry>,
        store: Option<Arc<Store>>,
        memory: Memory,
        me: Weak<VHost>,
    ) -> Self {
        let vhost = VHost {
            name: name.to_owned(),
            me,
            replies: reply_to::ReplyRegistry::default(),
            policies: RwLock::new(Vec::new()),
            policy_change: Mutex::new(()),
            delay_init: Mutex::new(()),
            registry,
            exchanges: RwLock::new(HashMap::new()),
            queues: RwLock::new(HashMap::new()),
            store,
            definitions: OnceLock::new(),
            binding_change: Mutex::new(()),
            recovering: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            queue_counts: QueueCounters::default(),
            limits: RwLock::new(VhostLimits::default()),
            connections: Gauge::default(),
            memory,
            cluster: OnceLock::new(),
        };
        for (xname, kind) in PREDECLARED {
            let entity = format!("exchange '{xname}' in vhost '{name}'");
            if let Ok(router) =
                vhost
                    .registry
                    .create(kind, &FieldTable::default(), &entity, false, None)
            {
                let flags = ExchangeFlags {
                    durable: true,
                    ..ExchangeFlags::default()
                };
                let x = Exchange::new(
                    (*xname).into(),
                    (*kind).into(),
                    flags,
                    FieldTable::default(),
                    router,
                    memory,
                );
                write(&vhost.exchanges).insert((*xname).into(), Arc::new(x));
            }
        }
        vhost
    }

    /// Joins the vhost to `cluster`: from now on its metadata changes are proposed there. Call before
    /// [`VHost::recover`].
    pub(crate) fn set_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster to propose a change to: none on a single node, while recovering, and while this
    /// thread applies a committed change (it acts locally then).
    fn replicated(&self) -> Option<&Arc<Cluster>> {
        self.cluster
            .get()
            .filter(|_| command::applying().is_none() && !self.recovering.load(Ordering::Acquire))
    }

    /// Whether this thread applies a change another node proposed (a plugin type this node lacks is
    /// then unavailable here, not refused: the other nodes have the exchange).
    fn applying_remote(&self) -> bool {
        match (command::applying(), self.cluster.get()) {
            (Some(origin), Some(c)) => origin != c.me(),
            _ => false,
        }
    }

    /// The queue named `name`, whoever owns it.
    pub(crate) fn queue_by_name(&self, name: &str) -> Option<Arc<Queue>> {
        read(&self.queues).get(name).cloned()
    }

    fn no_exchange(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no exchange '{name}' in vhost '{}'", self.name))
    }

    fn no_queue(&self, name: &str) -> AmqpError {
        AmqpError::not_found(format!("no queue '{name}' in vhost '{}'", self.name))
    }

    fn default_exchange_refused() -> AmqpError {
        AmqpError::access_refused("operation not permitted on the default exchange")
    }

    fn inequivalent(
        &self,
        arg: &str,
        kind: &str,
        name: &str,
        received: &str,
        current: &str,
    ) -> AmqpError {
        AmqpError::precondition_failed(format!(
            "inequivalent arg '{arg}' for {kind} '{name}' in vhost '{}': received {received} but current is {current}",
            self.name
        ))
    }

    /// The vhost's policies, by name (for the management API).
    pub(crate) fn policy_list(&self) -> Vec<(String, policy::PolicySource)> {
        let mut v: Vec<(String, policy::PolicySource)> = read(&self.policies)
            .iter()
            .map(|p| (p.name.clone(), p.source.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Every queue of the vhost, by name (for the management API).
    pub(crate) fn queue_list(&self) -> Vec<Arc<Queue>> {
        let mut v: Vec<Arc<Queue>> = read(&self.queues).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Every exchange of the vhost, by name (for the management API).
    pub(crate) fn exchange_list(&self) -> Vec<Arc<Exchange>> {
        let mut v: Vec<Arc<Exchange>> = read(&self.exchanges).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The plugin host, if plugins are enabled.
    pub fn plugins(&self) -> Option<&Arc<crate::plugin::PluginHost>> {
        self.registry.plugins()
    }

    /// Attaches a consumer's filter plugin as basic.consume's `x-filter` names it
    /// ([`ConsumeArgs`](crate::queue::args::ConsumeArgs)); `entity` describes the consumer in logs.
    /// Where the queue lives: the channel for a local queue, the home for a consumer attached through
    /// another cluster node.
    ///
    /// # Errors
    /// 404 when no such filter plugin is loaded; 406 for a configuration the plugin refuses.
    pub(crate) fn consumer_filter(
        &self,
        filter: Option<(PluginArgs, plugins::OnFailure)>,
        entity: String,
    ) -> AmqpResult<Option<plugins::ConsumerFilter>> {
        use crate::queue::plugins::{AttachError, ConsumerFilter};
        let Some((plugin, on_failure)) = filter else {
            return Ok(None);
        };
        let Some(host) = self.plugins() else {
            return Err(AmqpError::not_found(format!(
                "no filter plugin '{}' is loaded",
                plugin.name
            )));
        };
        match ConsumerFilter::attach(host, &plugin.name, &plugin.config, on_failure, entity) {
            Ok(f) => Ok(Some(f)),
            Err(AttachError::NotFound(why)) => Err(AmqpError::not_found(why)),
            Err(AttachError::Refused(why)) => Err(AmqpError::precondition_failed(why)),
        }
    }

    /// Looks up an exchange.
    ///
    /// # Errors
    /// 404 when it does not exist.
    pub fn exchange(&self, name: &str) -> AmqpResult<Arc<Exchange>> {
        self.find_exchange(name)
            .ok_or_else(|| self.no_exchange(name))
    }

    /// The exchange named `name`, if it is declared.
    pub fn find_exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        read(&self.exchanges).get(name).cloned()
    }

    /// exchange.declare (AMQP 0-9-1 §1.6.2.1).
    ///
    /// # Errors
    /// 503 unknown type (connection), 403 default exchange / reserved `amq.` prefix, 404 passive miss,
    /// 406 inequivalent redeclare.
    pub fn exchange_declare(
        &self,
        name: &ShortString,
        kind: &str,
        passive: bool,
        flags: ExchangeFlags,
        arguments: &FieldTable,
    ) -> AmqpResult {
        if name.as_str().is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if passive {
            return self.exchange(name.as_str()).map(|_| ());
        }
        let recovering = self.recovering.load(Ordering::Relaxed);
        if !self.registry.knows(kind) && !recovering {
            return Err(AmqpError::command_invalid(format!(
                "unknown exchange type '{kind}'"
            )));
        }
        if let Some(x) = read(&self.exchanges).get(name.as_str()) {
            let x = Arc::clone(x);
            return self.exchange_equivalent(&x, kind, flags, arguments);
        }
        if name.as_str().starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if let Some(c) = self.replicated() {
            return c.replicate(Command::ExchangeDeclare {
                vhost: self.name.clone(),
                name: name.to_string(),
                kind: kind.to_owned(),
                durable: flags.durable,
                auto_delete: flags.auto_delete,
                internal: flags.internal,
                arguments: table(arguments),
            });
        }
        // A plugin type instantiates and initialises its plugin here, outside the vhost's lock.
        let entity = format!("exchange '{name}' in vhost '{}'", self.name);
        let kv_dir = self
            .store
            .as_ref()
            .filter(|_| flags.durable)
            .map(|s| s.exchange_dir(&self.name, name.as_str()));
        let router = match self.registry.create(
            kind,
            arguments,
            &entity,
            recovering,
            kv_dir.clone(),
        ) {
            Ok(router) => router,
            Err(CreateError::Refused(reason)) => {
                return Err(AmqpError::precondition_failed(reason))
            }
            Err(unknown) => match self
                .registry
                .create_unavailable(kind, arguments, &entity, kv_dir)
            {
                Some(router) if recovering || self.applying_remote() => {
                    if self.registry.plugins_loading() {
                        info!(vhost = %self.name, exchange = %name, kind, "exchange recovered while its plugin type is still loading: unavailable until it is loaded");
                    } else {
                        warn!(vhost = %self.name, exchange = %name, kind, "exchange recovered with its plugin type not loaded: unavailable until the plugin returns");
                    }
                    router
                }
                _ => return Err(AmqpError::command_invalid(unknown.to_string())),
            },
        };
        let mut exchanges = write(&self.exchanges);
        if let Some(x) = exchanges.get(name.as_str()) {
            // Declared concurrently by another channel.
            let x = Arc::clone(x);
            drop(exchanges);
            return self.exchange_equivalent(&x, kind, flags, arguments);
        }
        let x = Exchange::new(
            name.clone(),
            kind.into(),
            flags,
            arguments.clone(),
            router,
            self.memory,
        );
        if let Some(p) = policy::Policy::select(&read(&self.policies), false, name.as_str()) {
            x.apply_policy(Some(p.name.clone()), p.alternate_exchange().cloned());
        }
        let x = Arc::new(x);
        exchanges.insert(name.clone(), Arc::clone(&x));
        let logged = if flags.durable {
            self.record(DefinitionChange::PutExchange(durable::stored_exchange(&x)))
        } else {
            0
        };
        drop(exchanges);
        if recovering {
            self.recover_delays(&x);
        }
        self.synced(logged);
        Ok(())
    }

    /// Replaces the vhost's policies and re-applies them to the existing queues and exchanges, as
    /// RabbitMQ does when a policy is set or cleared (each gets the highest-priority matching policy,
    /// merged with its own declare arguments; [`Queue::apply_policy`] says what changes at once).
    pub fn set_policies(&self, policies: Vec<policy::Policy>) {
        // One change at a time, so that the last change's policies are the ones left in force. The
        // policy lock itself is not held while queues are visited: declares take the queue table's
        // lock and then the policies'.
        let _change = lock(&self.policy_change);
        *write(&self.policies) = policies.clone();
        let current = policies;
        let queues = self.queue_list();
        let exchanges = self.exchange_list();
        for q in queues {
            let Ok(mut args) = QueueArgs::parse(&q.arguments) else {
                continue;
            };
            let p = policy::Policy::select(&current, true, q.name.as_str());
            if let Some(p) = p {
                p.apply_to_queue(&mut args);
            }
            q.apply_policy(args, p.map(|p| p.name.clone()));
        }
        for x in exchanges {
            let p = policy::Policy::select(&current, false, x.name.as_str());
            x.apply_policy(
                p.map(|p| p.name.clone()),
                p.and_then(|p| p.alternate_exchange().cloned()),
            );
        }
    }

    fn exchange_equivalent(
        &self,
        x: &Exchange,
        kind: &str,
        flags: ExchangeFlags,
        args: &FieldTable,
    ) -> AmqpResult {
        let name = x.name.as_str();
        if x.kind.as_str() != kind {
            return Err(self.inequivalent(
                "type",
                "exchange",
                name,
                &format!("'{kind}'"),
                &format!("'{}'", x.kind),
            ));
        }
        for (arg, received, current) in [
            ("durable", flags.durable, x.durable),
            ("auto_delete", flags.auto_delete, x.auto_delete),
            ("internal", flags.internal, x.internal),
        ] {
            if received != current {
                return Err(self.inequivalent(
                    arg,
                    "exchange",
                    name,
                    &format!("'{received}'"),
                    &format!("'{current}'"),
                ));
            }
        }
        let key = "alternate-exchange";
        let (received, current) = (args.inner().get(key), x.arguments.inner().get(key));
        if received != current {
            let show_opt = |v: Option<&AMQPValue>| v.map_or("none".to_owned(), show);
            return Err(self.inequivalent(
                key,
                "exchange",
                name,
                &show_opt(received),
                &show_opt(current),
            ));
        }
        Ok(())
    }

    /// exchange.delete (AMQP 0-9-1 §1.6.2.3). Deleting a missing exchange succeeds, as in RabbitMQ.
    ///
    /// # Errors
    /// 403 default or `amq.*` exchange, 406 `if_unused` with bindings.
    pub fn exchange_delete(&self, name: &str, if_unused: bool) -> AmqpResult {
        if name.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        if let Some(c) = self.replicated() {
            if self.find_exchange(name).is_none() {
                return Ok(());
            }
            return c.replicate(Command::ExchangeDelete {
                vhost: self.name.clone(),
                name: name.to_owned(),
                if_unused,
            });
        }
        let order = self.deletion_order();
        let mut exchanges = write(&self.exchanges);
        let Some(x) = exchanges.get(name) else {
            return Ok(());
        };
        if if_unused && x.binding_count() > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        let logged = if x.durable {
            self.record(DefinitionChange::DeleteExchange {
                name: name.to_owned(),
            })
        } else {
            0
        };
        if let Some(x) = exchanges.remove(name) {
            x.deleted();
        }
        let sources: Vec<Arc<Exchange>> = exchanges.values().cloned().collect();
        drop(exchanges);
        self.unbind_everywhere(sources, &Destination::Exchange(name.into()), order);
        self.synced(logged);
        Ok(())
    }

    /// Removes every binding from `sources` to `dest` (an entity being deleted), releases the
    /// deletion's `order` guard ([`VHost::binding_change`]), then deletes the auto-delete sources
    /// left without bindings (their own deletion takes the guard again).
    fn unbind_everywhere(
        &self,
        sources: Vec<Arc<Exchange>>,
        dest: &Destination,
        order: Option<std::sync::MutexGuard<'_, ()>>,
    ) {
        let emptied: Vec<Arc<Exchange>> = sources
            .into_iter()
            .filter(|source| source.unbind_destination(dest) > 0)
            .collect();
        drop(order);
        for source in emptied {
            self.maybe_auto_delete(&source);
        }
    }

    /// Deletes an auto-delete exchange that just lost its last binding (RabbitMQ docs/exchanges.md).
    fn maybe_auto_delete(&self, x: &Arc<Exchange>) {
        if x.auto_delete && x.binding_count() == 0 {
            let _ = self.exchange_delete(x.name.as_str(), true);
        }
    }

    /// exchange.bind / exchange.unbind (RabbitMQ docs/e2e.md).
    ///
    /// # Errors
    /// 403 default exchange, 404 missing exchange (bind only: unbind of a missing one is a no-op), 406
    /// binding refused by the type.
    pub fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        key: &ShortString,
        arguments: &FieldTable,
        change: BindingChange,
    ) -> AmqpResult {
        if destination.is_empty() || source.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if let Some(c) = self.replicated() {
            return c.replicate(Command::Binding {
                vhost: self.name.clone(),
                source: source.to_owned(),
                destination: destination.to_owned(),
                to_queue: false,
                key: key.to_string(),
                arguments: table(arguments),
                bind: change == BindingChange::Bind,
                connection: 0,
            });
        }
        // Unbinding is idempotent: a missing source or destination has no binding to remove, and
        // RabbitMQ answers unbind-ok (rabbit_binding:remove).
        let (src, dst) = (self.find_exchange(source), self.find_exchange(destination));
        let src = match (src, dst, change) {
            (Some(src), Some(_), _) => src,
            (_, _, BindingChange::Unbind) => return Ok(()),
            (None, _, BindingChange::Bind) => return Err(self.no_exchange(source)),
            (Some(_), None, BindingChange::Bind) => return Err(self.no_exchange(destination)),
        };
        let binding = Binding {
            destination: Destination::Exchange(destination.into()),
            key: key.clone(),
            arguments: arguments.clone(),
        };
        self.apply_binding(&src, binding, change)
    }

    fn apply_binding(
        &self,
        src: &Arc<Exchange>,
        binding: Binding,
        change: BindingChange,
    ) -> AmqpResult {
        let durable = src.durable
            && self.destination_durable(&binding.destination)
            && self.definitions.get().is_some();
        let order = durable.then(|| lock(&self.binding_change));
        if durable {
            // Deletions are excluded from here on: the ends present now stay until the change is
            // recorded.
            self.check_ends(src, &binding.destination)?;
        }
        let stored = durable.then(|| durable::stored_binding(src.name.as_str(), &binding));
        let emptied = match change {
            BindingChange::Bind => {
                src.bind(binding)
                    .map_err(|refused| AmqpError::precondition_failed(refused.0))?;
                false
            }
            BindingChange::Unbind => src.unbind(&binding),
        };
        let logged = match (stored, change) {
            (Some(b), BindingChange::Bind) => self.record(DefinitionChange::PutBinding(b)),
            (Some(b), BindingChange::Unbind) => self.record(DefinitionChange::DeleteBinding(b)),
            (None, _) => 0,
        };
        drop(order);
        if emptied {
            self.maybe_auto_delete(src);
        }
        self.synced(logged);
        Ok(())
    }

    /// That `src` and `d` are still declared (not deleted since they were looked up).
    ///
    /// # Errors
    /// 404 as for a missing queue or exchange.
    fn check_ends(&self, src: &Arc<Exchange>, d: &Destination) -> AmqpResult {
        let exchanges = read(&self.exchanges);
        if !exchanges
            .get(src.name.as_str())
            .is_some_and(|x| Arc::ptr_eq(x, src))
        {
            return Err(self.no_exchange(src.name.as_str()));
        }
        match d {
            Destination::Exchange(name) if !exchanges.contains_key(name.as_str()) => {
                Err(self.no_exchange(name.as_str()))
            }
            Destination::Queue(q)
                if !read(&self.queues)
                    .get(q.name.as_str())
                    .is_some_and(|current| Arc::ptr_eq(current, q)) =>
            {
                Err(self.no_queue(q.name.as_str()))
            }
            _ => Ok(()),
        }
    }

    /// Holds [`VHost::binding_change`] for a deletion when the vhost keeps a definitions log.
    fn deletion_order(&self) -> Option<std::sync::MutexGuard<'_, ()>> {
        self.definitions.get().map(|_| lock(&self.binding_change))
    }

    /// Whether a binding to `d` outlives a restart (with a durable source): RabbitMQ keeps a binding
    /// when both ends are durable.
    fn destination_durable(&self, d: &Destination) -> bool {
        match d {
            Destination::Queue(q) => q.durable && q.exclusive_owner.is_none(),
            Destination::Exchange(x) => read(&self.exchanges)
                .get(x.as_str())
                .is_some_and(|x| x.durable),
        }
    }

    /// Looks up a queue for use by connection `conn_id`.
    ///
    /// # Errors
    /// 404 missing, 405 exclusive to another connection.
    pub fn queue(&self, name: &str, conn_id: u64) -> AmqpResult<Arc<Queue>> {
        let q = self
            .find_queue(name, conn_id)?
            .ok_or_else(|| self.no_queue(name))?;
        self.check_home(&q)?;
        Ok(q)
    }

    /// In a cluster: a queue whose home node is down cannot be used (RabbitMQ's 404 for it).
    ///
    /// # Errors
    /// 404 NOT_FOUND "home node … of durable queue … is down or inaccessible".
    fn check_home(&self, q: &Queue) -> AmqpResult {
        let (Some(home), Some(c)) = (q.home(), self.cluster.get()) else {
            return Ok(());
        };
        if c.links.is_up(home) {
            return Ok(());
        }
        Err(AmqpError::not_found(format!(
            "home node '{}' of {}queue '{}' in vhost '{}' is down or inaccessible",
            c.name_of(home),
            if q.durable { "durable " } else { "" },
            q.name,
            self.name
        )))
    }

    /// The queue named `name`, if it is declared.
    ///
    /// # Errors
    /// 405 RESOURCE_LOCKED when it is exclusive to another connection.
    pub fn find_queue(&self, name: &str, conn_id: u64) -> AmqpResult<Option<Arc<Queue>>> {
        let Some(q) = self.queue_by_name(name) else {
            return Ok(None);
        };
        self.check_exclusive(&q, conn_id)?;
        Ok(Some(q))
    }

    fn check_exclusive(&self, q: &Queue, conn_id: u64) -> AmqpResult {
        match q.exclusive_owner {
            Some(owner) if owner != conn_id => Err(self.locked(q.name.as_str())),
            _ => Ok(()),
        }
    }

    fn locked(&self, name: &str) -> AmqpError {
        AmqpError::resource_locked(format!(
            "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could be originally \
             declared on another connection or the exclusive property value does not match that of the \
             original declaration.",
            self.name
        ))
    }

    /// What a quorum queue refuses at declaration, in RabbitMQ's words (RabbitMQ docs/quorum-queues
    /// "Feature Matrix"; `rabbit_quorum_queue`'s checks): it needs a cluster, must be durable, not
    /// exclusive nor auto-delete, and takes only the arguments its queue type knows.
    ///
    /// # Errors
    /// 406 PRECONDITION_FAILED.
    fn check_quorum(
        &self,
        name: &str,
        flags: QueueFlags,
        arguments: &FieldTable,
        parsed: &QueueArgs,
    ) -> AmqpResult {
        if self.cluster.get().is_none() {
            let refused = crate::queue::args::InvalidArg {
                key: "x-queue-type",
                detail: "queue type 'quorum' needs a Warren cluster (start the node with \
                         --cluster); use 'classic' on a single node"
                    .into(),
                wrong_type: None,
            };
            return Err(AmqpError::precondition_failed(
                refused.text(name, &self.name),
            ));
        }
        let property = if !flags.durable {
            Some("non-durable")
        } else if flags.exclusive {
            Some("exclusive-owner")
        } else if flags.auto_delete {
            Some("auto-delete")
        } else {
            None
        };
        if let Some(p) = property {
            return Err(AmqpError::precondition_failed(format!(
                "invalid property '{p}' for queue '{name}' in vhost '{}'",
                self.name
            )));
        }
        let refused = crate::queue::args::QUORUM_REFUSED
            .iter()
            .find(|k| arguments.inner().contains_key(**k))
            .copied()
            .or(
                (parsed.overflow == crate::queue::Overflow::RejectPublishDlx)
                    .then_some("x-overflow"),
            );
        match refused {
            Some(key) => Err(AmqpError::precondition_failed(format!(
                "invalid arg '{key}' for queue '{name}' in vhost '{}' of queue type \
                 rabbit_quorum_queue",
                self.name
            ))),
            None => Ok(()),
        }
    }

    /// queue.declare (AMQP 0-9-1 §1.7.2.1). An empty name gets a server-generated `amq.gen-…` name.
    ///
    /// # Errors
    /// 403 reserved `amq.` prefix, 404 passive miss, 405 exclusive to another connection, 406 inequivalent.
    pub fn queue_declare(
        &self,
        name: &ShortString,
        passive: bool,
        flags: QueueFlags,
        arguments: &FieldTable,
        conn_id: u64,
    ) -> AmqpResult<(Arc<Queue>, QueueCounts)> {
        crate::stats::bump(&self.queue_counts.declared, 1);
        if passive {
            let q = self.queue(name.as_str(), conn_id)?;
            let counts = q.declared_counts();
            return Ok((q, counts));
        }
        let mut parsed = QueueArgs::parse(arguments)
            .map_err(|e| AmqpError::precondition_failed(e.text(name.as_str(), &self.name)))?;
        let generated = name.as_str().is_empty();
        let name = if generated {
            generate_name("amq.gen-")
        } else {
            name.clone()
        };
        if parsed.quorum {
            self.check_quorum(name.as_str(), flags, arguments, &parsed)?;
        }
        if let Some(c) = self.replicated() {
            if let Some(q) = self.queue_by_name(name.as_str()) {
                self.queue_equivalent(&q, flags, arguments, conn_id)?;
                self.check_home(&q)?;
                q.touch();
                let counts = q.declared_counts();
                return Ok((q, counts));
            }
            if !generated && name.as_str().starts_with("amq.") {
                return Err(AmqpError::access_refused(format!(
                    "queue name '{name}' contains reserved prefix 'amq.*'"
                )));
            }
            return c.replicate(Command::QueueDeclare {
                vhost: self.name.clone(),
                name: name.to_string(),
                durable: flags.durable,
                exclusive: flags.exclusive,
                auto_delete: flags.auto_delete,
                arguments: table(arguments),
                connection: conn_id,
            });
        }
        // In a cluster, a queue declared by another node is a proxy of it here.
        // A quorum queue is on every node, its operations replicated through the quorum group.
        let home = match (command::applying(), self.cluster.get()) {
            (_, Some(c)) if parsed.quorum => {
                Some(
                    crate::cluster::quorum::QuorumHome::new(&c.quorum, &self.name, name.as_str())
                        as Arc<dyn crate::queue::RemoteHome>,
                )
            }
            (Some(origin), Some(c)) if origin != c.me() => Some(c.remote_home(origin, &self.name)),
            _ => None,
        };
        let idempotency = if read(&self.queues).contains_key(name.as_str()) || home.is_some() {
            None
        } else {
            self.attach_idempotency(name.as_str(), arguments)?
        };
        let mut queues = write(&self.queues);
        if let Some(q) = queues.get(name.as_str()) {
            let q = Arc::clone(q);
            drop(queues);
            self.queue_equivalent(&q, flags, arguments, conn_id)?;
            q.touch();
            let counts = q.counts();
            return Ok((q, counts));
        }
        // A replicated declare was checked by its proposer (which also generated `amq.gen-` names).
        if !generated && command::applying().is_none() && name.as_str().starts_with("amq.") {
            return Err(AmqpError::access_refused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if let Some(max) = self.limits().queues() {
            // Recovery brings back what exists; the limit applies to new declares.
            if queues.len() as u64 >= max && !self.recovering.load(Ordering::Acquire) {
                return Err(AmqpError::precondition_failed(format!(
                    "cannot declare queue '{name}': queue limit in vhost '{}' ({max}) is reached",
                    self.name
                )));
            }
        }
        let policy_name =
            policy::Policy::select(&read(&self.policies), true, name.as_str()).map(|p| {
                p.apply_to_queue(&mut parsed);
                p.name.clone()
            });
        let owner = flags.exclusive.then_some(conn_id);
        let me: Weak<dyn QueueOwner> = self.me.clone();
        let persisted = flags.durable && owner.is_none();
        let local = home.is_none();
        let storage = self.queue_storage(&name, persisted && local)?;
        let idempotency = self.durable_idempotency(&name, idempotency, persisted && local)?;
        let q = Arc::new(
            Queue::new(
                QueueDeclaration {
                    name: name.clone(),
                    durable: flags.durable,
                    auto_delete: flags.auto_delete,
                    exclusive_owner: owner,
                    arguments: arguments.clone(),
                    args: parsed,
                },
                self.memory,
                me,
                storage,
            )
            .with_idempotency(idempotency)
            .with_policy(policy_name)
            .with_scratch(self.scratch_space(persisted || !local))
            .with_remote(home),
        );
        queues.insert(name, Arc::clone(&q));
        let logged = if persisted {
            let home = q
                .home()
                .and_then(|h| self.cluster.get().map(|c| c.name_of(h)));
            self.record(DefinitionChange::PutQueue(durable::stored_queue(&q, home)))
        } else {
            0
        };
        drop(queues);
        crate::stats::bump(&self.queue_counts.created, 1);
        q.touch();
        if q.log().is_some() {
            q.start_recovered();
        }
        self.synced(logged);
        let counts = q.counts();
        Ok((q, counts))
    }

    /// The idempotency plugin named by the queue argument `x-idempotency`, attached with
    /// `x-idempotency-args` and the window arguments `x-idempotency-window` (ms) and
    /// `x-idempotency-max-keys`.
    ///
    /// # Errors
    /// 404 when no such plugin is loaded (a recovered queue keeps its argument and runs without keys
    /// until the plugin returns), 406 for bad arguments or a configuration the plugin refuses.
    fn attach_idempotency(
        &self,
        queue: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<Option<plugins::Idempotency>> {
        let parsed = IdempotencyArgs::parse(arguments)
            .map_err(|e| AmqpError::precondition_failed(e.text(queue, &self.name)))?;
        let Some(IdempotencyArgs {
            plugin: PluginArgs { name, config },
            window,
        }) = parsed
        else {
            return Ok(None);
        };
        let Some(host) = self.registry.plugins() else {
            return Err(AmqpError::not_found(format!(
                "no idempotency plugin '{name}' is loaded"
            )));
        };
        let entity = format!("queue '{queue}' in vhost '{}'", self.name);
        let recovering = self.recovering.load(Ordering::Relaxed);
        match plugins::Idempotency::attach(
            host,
            &name,
            &config,
            window,
            entity.clone(),
            !recovering,
        ) {
            Ok(i) => Ok(Some(i)),
            Err(plugins::AttachError::NotFound(_)) if self.recovering.load(Ordering::Relaxed) => {
                warn!(vhost = %self.name, queue, plugin = %name, "queue recovered with its idempotency plugin not loaded: messages are delivered without keys until it returns");
                Ok(Some(plugins::Idempotency::unavailable(
                    host, &name, &config, window, entity,
                )))
            }
            Err(plugins::AttachError::NotFound(why)) => Err(AmqpError::not_found(why)),
            Err(plugins::AttachError::Refused(why)) => Err(AmqpError::precondition_failed(why)),
        }
    }

    fn queue_equivalent(
        &self,
        q: &Queue,
        flags: QueueFlags,
        args: &FieldTable,
        conn_id: u64,
    ) -> AmqpResult {
        match q.exclusive_owner {
            Some(owner) if owner != conn_id => return Err(self.locked(q.name.as_str())),
            None if flags.exclusive => return Err(self.locked(q.name.as_str())),
            _ => {}
        }
        let name = q.name.as_str();
        for (arg, received, current) in [
            ("durable", flags.durable, q.durable),
            ("auto_delete", flags.auto_delete, q.auto_delete),
        ] {
            if received != current {
                return Err(self.inequivalent(
                    arg,
                    "queue",
                    name,
                    &format!("'{received}'"),
                    &format!("'{current}'"),
                ));
            }
        }
        for key in CHECKED_QUEUE_ARGS {
            let (received, current) = (args.inner().get(*key), q.arguments.inner().get(*key));
            if received != current {
                let show_opt = |v: Option<&AMQPValue>| v.map_or("none".to_owned(), show);
                return Err(self.inequivalent(
                    key,
                    "queue",
                    name,
                    &show_opt(received),
                    &show_opt(current),
                ));
            }
        }
        Ok(())
    }

    /// queue.bind / queue.unbind (AMQP 0-9-1 §1.7.2.3, §1.7.2.5).
    ///
    /// # Errors
    /// 403 default exchange, 404 missing queue or exchange (bind only: unbind of a missing one is a
    /// no-op), 405 exclusive queue, 406 refused binding.
    pub fn queue_bind(
        &self,
        queue: &str,
        exchange: &str,
        key: &ShortString,
        arguments: &FieldTable,
        conn_id: u64,
        change: BindingChange,
    ) -> AmqpResult {
        if exchange.is_empty() {
            return Err(Self::default_exchange_refused());
        }
        if let Some(c) = self.replicated() {
            // A locked queue is refused here, as on a single node.
            self.find_queue(queue, conn_id)?;
            return c.replicate(Command::Binding {
                vhost: self.name.clone(),
                source: exchange.to_owned(),
                destination: queue.to_owned(),
                to_queue: true,
                key: key.to_string(),
                arguments: table(arguments),
                bind: change == BindingChange::Bind,
                connection: conn_id,
            });
        }
        // As for exchange.unbind: nothing to remove when the queue or the exchange is gone.
        let (q, src) = (
            self.find_queue(queue, conn_id)?,
            self.find_exchange(exchange),
        );
        let (q, src) = match (q, src, change) {
            (Some(q), Some(src), _) => (q, src),
            (_, _, BindingChange::Unbind) => return Ok(()),
            (None, _, BindingChange::Bind) => return Err(self.no_queue(queue)),
            (Some(_), None, BindingChange::Bind) => return Err(self.no_exchange(exchange)),
        };
        let binding = Binding {
            destination: Destination::Queue(q),
            key: key.clone(),
            arguments: arguments.clone(),
        };
        self.apply_binding(&src, binding, change)
    }

    /// queue.purge (AMQP 0-9-1 §1.7.2.7). Returns the number of messages purged.
    ///
    /// # Errors
    /// 404 missing, 405 exclusive.
    pub fn queue_purge(&self, name: &str, conn_id: u64) -> AmqpResult<u32> {
        Ok(self.queue(name, conn_id)?.purge())
    }

    /// queue.delete (AMQP 0-9-1 §1.7.2.9). A missing queue deletes fine with count 0, as in RabbitMQ.
    /// Consumers get basic.cancel (RabbitMQ docs/consumer-cancel.md).
    ///
    /// # Errors
    /// 405 exclusive to another connection, 406 `if_unused` / `if_empty` not satisfied.
    pub fn queue_delete(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        conn_id: u64,
    ) -> AmqpResult<u32> {
        let Some(q) = self.find_queue(name, conn_id)? else {
            return Ok(0);
        };
        let counts = q.declared_counts();
        if if_unused && counts.consumers > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if if_empty && counts.messages > 0 {
            return Err(AmqpError::precondition_failed(format!(
                "queue '{name}' in vhost '{}' not empty",
                self.name
            )));
        }
        Ok(self.remove_queue(&q))
    }

    /// Removes `q` from the vhost and from every binding, cancels its consumers. Returns the number of
    /// ready messages it held.
    pub fn remove_queue(&self, q: &Arc<Queue>) -> u32 {
        if let Some(c) = self.replicated() {
            let counts = q.declared_counts();
            let deleted: AmqpResult<u32> = c.replicate(Command::QueueDelete {
                vhost: self.name.clone(),
                name: q.name.to_string(),
            });
            return match deleted {
                Ok(n) => n.max(counts.messages),
                Err(e) => {
                    warn!(vhost = %self.name, queue = %q.name, error = %e, "queue deletion not committed");
                    0
                }
            };
        }
        let order = self.deletion_order();
        let logged = {
            let mut queues = write(&self.queues);
            match queues.get(q.name.as_str()) {
                Some(current) if Arc::ptr_eq(current, q) => {
                    queues.remove(q.name.as_str());
                    crate::stats::bump(&self.queue_counts.deleted, 1);
                }
                _ => return 0,
            }
            if q.durable && q.exclusive_owner.is_none() {
                self.record(DefinitionChange::DeleteQueue {
                    name: q.name.to_string(),
                })
            } else {
                0
            }
        };
        let exchanges: Vec<Arc<Exchange>> = read(&self.exchanges).values().cloned().collect();
        self.unbind_everywhere(exchanges, &Destination::Queue(Arc::clone(q)), order);
        let (count, consumers) = q.delete();
        for c in consumers {
            c.sink.cancelled(&c);
        }
        // The deletion is on disk before the log goes: a crash in between leaves an orphan log,
        // removed at the next start.
        self.synced(logged);
        if let Some(log) = q.log() {
            log.destroy();
        }
        count
    }

    /// Deletes everything the vhost holds, as RabbitMQ's vhost deletion does: its queues (cancelling
    /// their consumers, destroying their logs), its exchanges, and its directory in the data
    /// directory. The caller has removed the vhost from the broker and closes its connections.
    pub fn delete(&self) {
        self.deleted.store(true, Ordering::Release);
        for q in self.queue_list() {
            self.remove_queue(&q);
        }
        let exchanges: Vec<Arc<Exchange>> =
            write(&self.exchanges).drain().map(|(_, x)| x).collect();
        for x in exchanges {
            x.deleted();
        }
        if let Some(store) = &self.store {
            if let Some(log) = self.definitions.get() {
                log.delete();
            }
            let dir = store.vhost_dir(&self.name);
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    warn!(vhost = %self.name, dir = %dir.display(), error = %e, "cannot remove the deleted vhost's directory");
                }
            }
        }
    }

    /// Whether the vhost was deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    /// The vhost's policies in force.
    pub(crate) fn policies(&self) -> Vec<policy::Policy> {
        read(&self.policies).clone()
    }

    /// Deletes the exclusive queues of a closing connection.
    pub fn remove_exclusive_queues(&self, conn_id: u64) {
        let owned: Vec<Arc<Queue>> = read(&self.queues)
            .values()
            .filter(|q| q.exclusive_owner == Some(conn_id))
            .cloned()
            .collect();
        for q in owned {
            self.remove_queue(&q);
        }
    }
}

/// queue.declare calls, queues created and queues deleted in a vhost since start.
#[derive(Debug, Default)]
pub(crate) struct QueueCounters {
    pub(crate) declared: std::sync::atomic::AtomicU64,
    pub(crate) created: std::sync::atomic::AtomicU64,
    pub(crate) deleted: std::sync::atomic::AtomicU64,
}

/// A server-generated name: `prefix` + 22 random URL-safe characters (RabbitMQ's `amq.gen-…` shape).
pub(crate) fn generate_name(prefix: &str) -> ShortString {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(prefix.len() + 22);
    s.push_str(prefix);
    for _ in 0..22 {
        s.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
    }
    ShortString::try_new(s).unwrap_or_default()
}
