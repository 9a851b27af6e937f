//! [`Broker`]: the broker-wide state every connection shares — configuration, users and permissions,
//! the exchange type registry, the plugin host, alarms, the data directory, the vhosts, connection
//! gauges, user limits and the login throttle — and how it is built from a [`Config`] at start-up
//! (users, permissions, policies, limits, on-disk recovery, then the definitions file).
//!
//! Connections (`crate::connection`) and the accept loop (`crate::server`) both use it; neither
//! imports the other for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::alarm::{AlarmState, Limits};
use crate::auth::Auth;
use crate::config::Config;
use crate::definitions::{field_table, Definitions};
use crate::exchange::registry::Registry;
use crate::limits::{Gauge, UserLimiter};
use crate::memory::{Memory, MemoryAccount};
use crate::plugin::watcher::{self, PluginWatcher};
use crate::plugin::PluginHost;
use crate::store::admin::AdminRecord;
use crate::store::Store;
use crate::throttle::LoginThrottle;
use crate::vhost::policy::Policy;
use crate::vhost::{Definition, ExchangeFlags, QueueFlags, VHost};

/// Message counts of closed channels: for the node, by vhost, and (publish in, publish out) by
/// (vhost, exchange).
type Retired = (
    crate::stats::MessageCounters,
    Mutex<HashMap<String, crate::stats::MessageStats>>,
    Mutex<HashMap<(String, String), (u64, u64)>>,
);

/// Broker-wide state: configuration, users and permissions, exchange type registry, vhosts. Shared by
/// all connections.
#[derive(Debug)]
pub struct Broker {
    /// Effective configuration.
    pub config: Config,
    /// Users and permissions ([`Broker::auth`]); changed at run time by the management API.
    pub(crate) auth: RwLock<Auth>,
    /// Exchange types (native and plugin types).
    pub registry: Arc<Registry>,
    /// The WebAssembly plugin host (exchange types, filters, idempotency).
    pub plugins: Arc<PluginHost>,
    /// Watches the plugin directory while the broker lives.
    _plugin_watcher: Option<PluginWatcher>,
    /// Resource alarms; connections subscribe to block publishers.
    pub alarms: Arc<watch::Sender<AlarmState>>,
    /// The memory watermark and disk limit the alarms are raised at.
    pub alarm_limits: Limits,
    /// What this broker's messages, unfinished bodies and entities hold (the memory alarm's measure).
    pub memory: Memory,
    /// The data directory, when one is configured.
    pub store: Option<Arc<Store>>,
    pub(crate) vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    /// The run-time administration record (`crate::administration`); its lock serializes changes.
    pub(crate) admin: Mutex<AdminRecord>,
    next_connection: AtomicU64,
    /// Client connections open (checked against `connection_max`).
    pub connections: Gauge,
    /// Every client connection, for the management API (list, close).
    pub connection_table: crate::tracking::ConnectionTable,
    /// Connections still in the handshake (checked against `unauthenticated_connection_max`).
    pub handshakes: Gauge,
    /// User limits and what each user has open.
    pub user_limits: UserLimiter,
    /// Failed-login budgets by source address.
    pub login_throttle: LoginThrottle,
    /// Message counts of closed channels: for the node, by vhost, and (publish in, publish out) by
    /// vhost and exchange.
    retired: Retired,
    /// The cluster this node belongs to (`[cluster]`), if any.
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
}

impl Broker {
    /// A broker with the configured users, permissions, vhosts and policies, and the definitions file
    /// (if any) loaded.
    ///
    /// # Errors
    /// A bad password hash, permission pattern or policy, an unreadable definitions file, or a definition
    /// that a declare refuses; each message names the item.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let plugins = PluginHost::new(
            crate::plugin::Limits {
                call_timeout: Duration::from_millis(config.plugin_call_timeout.max(1)),
                instantiate_timeout: Duration::from_millis(
                    config.plugin_instantiate_timeout.max(1),
                ),
                memory_bytes: usize::try_from(config.plugin_memory_limit).unwrap_or(usize::MAX),
                memory_ceiling_bytes: usize::try_from(config.plugin_memory_ceiling)
                    .unwrap_or(usize::MAX),
                kv: crate::plugin::kv::KvQuota {
                    max_entries: config.plugin_kv_max_entries,
                    max_bytes: config.plugin_kv_max_bytes,
                },
            },
            config.plugin_dir.clone(),
            config.data_dir.as_ref().map(|d| d.join("plugin-cache")),
        )?;
        // Plugins load in the background while durable state is recovered and AMQP served: plugin
        // exchanges recovered before their type is loaded are unavailable until it is (a client's
        // declare waits for the initial load instead). The watcher starts first so that a file
        // written during the initial load is not missed.
        let plugin_watcher = watcher::watch(&plugins).with_context(|| {
            format!(
                "cannot watch the plugin directory {}",
                config
                    .plugin_dir
                    .as_deref()
                    .unwrap_or(std::path::Path::new(""))
                    .display()
            )
        })?;
        plugins
            .start_loading()
            .context("cannot start loading the plugin directory")?;
        let registry = Arc::new(Registry::new(Some(Arc::clone(&plugins))));
        let defs = match &config.definitions {
            Some(path) => Some(Definitions::load(path)?),
            None => None,
        };
        let mut auth = Auth::default();
        let user_limits = UserLimiter::default();
        for u in &config.users {
            user_limits.set(&u.name, u.limits);
            match (&u.password, &u.password_hash) {
                (Some(p), _) => auth.add_user(&u.name, p, u.tags.clone()),
                (None, Some(h)) => auth.add_user_hashed(
                    &u.name,
                    h,
                    crate::auth::HashingAlgorithm::default(),
                    u.tags.clone(),
                )?,
                (None, None) => bail!("user '{}' has no password", u.name),
            }
        }
        let mut permissions = config.permissions.clone();
        let mut policies = config.policies.clone();
        let mut vhost_names = config.vhosts.clone();
        if let Some(d) = &defs {
            for u in &d.users {
                match (&u.password_hash, &u.password) {
                    (Some(h), _) => {
                        auth.add_user_hashed(&u.name, h, u.algorithm()?, u.tag_list())?;
                    }
                    (None, Some(p)) => auth.add_user(&u.name, p, u.tag_list()),
                    (None, None) => bail!("definitions: user '{}' has no password_hash", u.name),
                }
            }
            permissions.extend(d.permissions.iter().cloned());
            policies.extend(d.policies.iter().cloned());
            vhost_names.extend(d.vhosts.iter().map(|v| v.name.clone()));
        }
        let admin = match &config.data_dir {
            Some(dir) => AdminRecord::load(dir)?,
            None => AdminRecord::default(),
        };
        let deleted_vhosts = crate::administration::apply_record(
            &admin,
            &mut auth,
            &mut vhost_names,
            &mut permissions,
            &mut policies,
        )?;
        for p in &permissions {
            auth.set_permission(&p.user, &p.vhost, &p.configure, &p.write, &p.read)?;
        }
        auth.set_loopback_users(config.loopback_users.iter().cloned());
        let store = match &config.data_dir {
            Some(dir) => Some(Store::open(
                dir,
                config.segment_size,
                config.queue_memory_limit,
            )?),
            None => None,
        };
        let memory = MemoryAccount::leaked();
        let cluster = match &config.cluster {
            Some(c) => Some(crate::cluster::Cluster::new(c)?),
            None => None,
        };
        let vhosts: HashMap<String, Arc<VHost>> = vhost_names
            .iter()
            .map(|name| {
                let v = VHost::new(name, Arc::clone(&registry), store.clone(), memory);
                if let Some(c) = &cluster {
                    v.set_cluster(Arc::clone(c));
                }
                (name.clone(), v)
            })
            .collect();
        let mut by_vhost: HashMap<&str, Vec<Policy>> = HashMap::new();
        for p in &policies {
            if !vhosts.contains_key(&p.vhost) {
                bail!("policy '{}' names unknown vhost '{}'", p.name, p.vhost);
            }
            let policy = Policy::new(&p.name, &p.pattern, &p.apply_to, p.priority, &p.definition)
                .map_err(anyhow::Error::msg)?;
            by_vhost.entry(p.vhost.as_str()).or_default().push(policy);
        }
        for (name, list) in by_vhost {
            if let Some(v) = vhosts.get(name) {
                v.set_policies(list);
            }
        }
        let mut vhost_limits: Vec<(String, crate::limits::VhostLimits)> = config
            .vhost_limits
            .iter()
            .map(|(name, l)| (name.clone(), *l))
            .collect();
        if let Some(d) = &defs {
            for u in &d.users {
                user_limits.set(&u.name, u.user_limits()?);
            }
            vhost_limits.extend(d.vhost_limits()?);
        }
        for (name, limits) in vhost_limits {
            let Some(v) = vhosts.get(&name) else {
                bail!("vhost limits name unknown vhost '{name}'");
            };
            v.set_limits(limits);
        }
        for v in vhosts.values() {
            v.recover()?;
        }
        let alarm_limits = Limits::from_config(&config);
        let login_throttle =
            LoginThrottle::new(config.login_failure_burst, config.login_failure_rate);
        let broker = Broker {
            config,
            auth: RwLock::new(auth),
            admin: Mutex::new(admin),
            registry,
            plugins,
            _plugin_watcher: plugin_watcher,
            store,
            alarms: Arc::new(watch::channel(AlarmState::default()).0),
            alarm_limits,
            memory,
            vhosts: RwLock::new(vhosts),
            next_connection: AtomicU64::new(1),
            connections: Gauge::default(),
            handshakes: Gauge::default(),
            connection_table: crate::tracking::ConnectionTable::default(),
            user_limits,
            login_throttle,
            retired: Default::default(),
            cluster: std::sync::OnceLock::new(),
        };
        match cluster {
            // In a cluster the definitions file's entities are declared through the cluster once it
            // runs ([`Broker::join_cluster`]).
            Some(c) => {
                let _ = broker.cluster.set(c);
            }
            None => {
                if let Some(d) = &defs {
                    broker.declare_definitions(d, &deleted_vhosts)?;
                }
            }
        }
        Ok(broker)
    }

    /// This node's name: its cluster name in a cluster, else `warren@<host>`
    /// ([`crate::management::node_name`]).
    pub fn node_name(&self) -> String {
        match self.cluster.get() {
            Some(c) => c.node_name().to_owned(),
            None => crate::management::node_name(),
        }
    }

    /// In a cluster (`[cluster]`): joins it — inter-node links, the Raft group, catching up with the
    /// replicated metadata — then declares the definitions file's exchanges, queues and bindings
    /// through it. Returns once this node can serve clients. Nothing on a single node.
    ///
    /// # Errors
    /// The inter-node address cannot be bound, the Raft state cannot be opened, or the definitions
    /// file's declares are refused.
    pub async fn join_cluster(self: &Arc<Self>) -> anyhow::Result<()> {
        let Some(c) = self.cluster.get() else {
            return Ok(());
        };
        Arc::clone(c).start(self).await?;
        if let Some(path) = self.config.definitions.clone() {
            let broker = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let d = Definitions::load(&path)?;
                broker.declare_definitions(&d, &std::collections::HashSet::new())
            })
            .await??;
        }
        Ok(())
    }

    /// Declares the definitions file's exchanges, queues and bindings through [`VHost::apply`] (the
    /// path recovery takes too).
    /// Objects in a vhost deleted at run time (`deleted`) are skipped.
    pub(crate) fn declare_definitions(
        &self,
        d: &Definitions,
        deleted: &std::collections::HashSet<String>,
    ) -> anyhow::Result<()> {
        let vhost = |name: &str| {
            self.vhost(name)
                .ok_or_else(|| anyhow::anyhow!("definitions: unknown vhost '{name}'"))
        };
        for x in d.exchanges.iter().filter(|x| !deleted.contains(&x.vhost)) {
            let flags = ExchangeFlags {
                durable: x.durable,
                auto_delete: x.auto_delete,
                internal: x.internal,
            };
            vhost(&x.vhost)?
                .apply(Definition::Exchange {
                    name: &x.name,
                    kind: &x.kind,
                    flags,
                    arguments: field_table(&x.arguments),
                })
                .map_err(|e| {
                    anyhow::anyhow!(
                        "definitions: exchange '{}' in vhost '{}': {e}",
                        x.name,
                        x.vhost
                    )
                })?;
        }
        for q in d.queues.iter().filter(|q| !deleted.contains(&q.vhost)) {
            let flags = QueueFlags {
                durable: q.durable,
                exclusive: false,
                auto_delete: q.auto_delete,
            };
            vhost(&q.vhost)?
                .apply(Definition::Queue {
                    name: &q.name,
                    flags,
                    arguments: field_table(&q.arguments),
                })
                .map_err(|e| {
                    anyhow::anyhow!(
                        "definitions: queue '{}' in vhost '{}': {e}",
                        q.name,
                        q.vhost
                    )
                })?;
        }
        for b in d.bindings.iter().filter(|b| !deleted.contains(&b.vhost)) {
            vhost(&b.vhost)?
                .apply(Definition::Binding {
                    source: &b.source,
                    destination: &b.destination,
                    destination_type: &b.destination_type,
                    routing_key: &b.routing_key,
                    arguments: field_table(&b.arguments),
                })
                .map_err(|e| {
                    anyhow::anyhow!(
                        "definitions: binding {} -> {} in vhost '{}': {e}",
                        b.source,
                        b.destination,
                        b.vhost
                    )
                })?;
        }
        Ok(())
    }

    /// Every vhost, by name.
    pub(crate) fn vhost_list(&self) -> Vec<Arc<VHost>> {
        let mut v: Vec<Arc<VHost>> = crate::sync::read(&self.vhosts).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The vhost named `name`, if configured.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        crate::sync::read(&self.vhosts).get(name).cloned()
    }

    /// Users and permissions as they are now (read-locked while the guard lives: do not hold it
    /// across an await or a call back into the broker).
    pub fn auth(&self) -> RwLockReadGuard<'_, Auth> {
        crate::sync::read(&self.auth)
    }

    /// Adds a closed channel's message counts to the retired totals of the node and of `vhost`.
    pub(crate) fn retire_stats(&self, vhost: Option<&str>, stats: &crate::stats::MessageStats) {
        if *stats == crate::stats::MessageStats::default() {
            return;
        }
        self.retired.0.absorb(stats);
        if let Some(v) = vhost {
            *crate::sync::lock(&self.retired.1)
                .entry(v.to_owned())
                .or_default() += *stats;
        }
    }

    /// Adds a closed channel's publishes by exchange to the retired totals of `vhost`.
    pub(crate) fn retire_exchange_stats(&self, vhost: &str, list: &crate::stats::ExchangeList) {
        let list = crate::sync::lock(list);
        if list.is_empty() {
            return;
        }
        let mut retired = crate::sync::lock(&self.retired.2);
        for (name, c) in list.iter() {
            let e = retired
                .entry((vhost.to_owned(), name.as_str().to_owned()))
                .or_default();
            e.0 += c.publish_in.load(Ordering::Relaxed);
            e.1 += c.publish_out.load(Ordering::Relaxed);
        }
    }

    /// (publish in, publish out) by exchange name in `vhost`: closed channels' plus open ones'
    /// (the default exchange is `""`).
    pub fn exchange_stats(&self, vhost: &str) -> HashMap<String, (u64, u64)> {
        let mut out: HashMap<String, (u64, u64)> = crate::sync::lock(&self.retired.2)
            .iter()
            .filter(|((v, _), _)| v == vhost)
            .map(|((_, x), n)| (x.clone(), *n))
            .collect();
        for c in self.connection_table.list() {
            if c.opened.get().is_none_or(|o| o.vhost != vhost) {
                continue;
            }
            for ch in c.channel_list() {
                for (name, n) in crate::sync::lock(&ch.exchanges).iter() {
                    let e = out.entry(name.as_str().to_owned()).or_default();
                    e.0 += n.publish_in.load(Ordering::Relaxed);
                    e.1 += n.publish_out.load(Ordering::Relaxed);
                }
            }
        }
        out
    }

    /// Message counts of the node (`vhost` `None`) or of one vhost: closed channels' plus open ones'.
    pub fn message_stats(&self, vhost: Option<&str>) -> crate::stats::MessageStats {
        let mut total = match vhost {
            None => self.retired.0.snapshot(),
            Some(v) => crate::sync::lock(&self.retired.1)
                .get(v)
                .copied()
                .unwrap_or_default(),
        };
        for c in self.connection_table.list() {
            if let (Some(v), Some(o)) = (vhost, c.opened.get()) {
                if o.vhost != v {
                    continue;
                }
            }
            for ch in c.channel_list() {
                total += ch.stats.snapshot();
            }
        }
        total
    }

    /// A fresh connection id (owner id of exclusive queues).
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }
}
