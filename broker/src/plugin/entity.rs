//! One broker entity's plugin instance through its life — the one place the lifecycle is written for
//! every kind (an exchange of a plugin type, a filtered consumer, an idempotent queue):
//!
//! - built on first use, or when the slot's version changed (hot reload): instantiate, then the
//!   entity's own initialisation (`init` with its arguments or configuration, binding replay);
//! - used under the entity's lock, so a call in flight finishes on the old version and the next one
//!   runs whole on the new;
//! - dropped after a fault (a trapped instance cannot be re-entered) and rebuilt on the next use;
//! - its calls' outcomes counted in its own [`Health`]: quarantined when they keep failing (its calls
//!   then fail fast with [`Fault::Unavailable`]), lifted when the plugin's file is touched or replaced.

use std::sync::Arc;

use tracing::info;

use super::engine::Fault;
use super::health::Health;
use super::instance::{Configurable, Instance, World};
use super::kv::KvStore;
use super::registry::{PluginHost, Slot};

/// The plugin instance of one entity, or none yet / since a fault.
pub struct EntityInstance<W> {
    host: Arc<PluginHost>,
    slot: Arc<Slot>,
    /// What the entity is, for logs and refusals: "exchange 'x' in vhost '/'".
    entity: String,
    instance: Option<Instance<W>>,
    health: Health,
    /// The entity's key-value store, given to every instance built for it.
    kv: Option<Arc<KvStore>>,
}

impl<W> std::fmt::Debug for EntityInstance<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityInstance")
            .field("plugin", &self.slot.name)
            .field("entity", &self.entity)
            .field("instance", &self.instance)
            .field("health", &self.health)
            .finish()
    }
}

impl<W> Drop for EntityInstance<W> {
    fn drop(&mut self) {
        if self.health.quarantined_at().is_some() {
            self.slot.entity_released();
        }
    }
}

impl<W: World> EntityInstance<W> {
    /// An entity (`entity` describes it for logs: "exchange 'x' in vhost '/'") with no instance yet
    /// (built on first use): one recovered while its plugin is not loaded, for example.
    pub fn new(host: &Arc<PluginHost>, slot: &Arc<Slot>, entity: String) -> Self {
        EntityInstance {
            host: Arc::clone(host),
            slot: Arc::clone(slot),
            entity,
            instance: None,
            health: Health::default(),
            kv: None,
        }
    }

    /// The entity with a key-value store (`host` interface), attached to each instance built for it.
    #[must_use]
    pub fn with_kv(mut self, kv: Arc<KvStore>) -> Self {
        if let Some(i) = self.instance.as_mut() {
            i.attach_kv(Arc::clone(&kv));
        }
        self.kv = Some(kv);
        self
    }

    /// An entity whose instance was just built and initialised (at declare, so that a refusal is the
    /// client's error).
    pub fn with(
        host: &Arc<PluginHost>,
        slot: &Arc<Slot>,
        entity: String,
        instance: Instance<W>,
    ) -> Self {
        let mut e = Self::new(host, slot, entity);
        e.instance = Some(instance);
        e
    }

    /// Whether the entity is quarantined now (a quarantine the plugin's file has lifted since is
    /// lifted here, and logged).
    ///
    /// # Errors
    /// [`Fault::Unavailable`] naming the entity and why, while it is quarantined.
    fn check_quarantine(&mut self) -> Result<(), Fault> {
        let Some(at) = self.health.quarantined_at() else {
            return Ok(());
        };
        if self.slot.lifts() != at {
            self.health = Health::default();
            self.slot.entity_released();
            info!(plugin = %self.slot.name, entity = %self.entity, "{} quarantine lifted: the plugin's file changed or was touched", self.entity);
            return Ok(());
        }
        Err(Fault::Unavailable(format!(
            "{} is quarantined: its {} plugin '{}' kept failing (touch or replace the plugin file to lift)",
            self.entity,
            W::KIND,
            self.slot.name
        )))
    }

    /// Counts an outcome in the entity's health; quarantines it when the failures warrant it.
    fn record(&mut self, failed: bool) {
        if self.health.record(failed) {
            let (failures, calls) = (self.health.failures(), self.health.calls());
            self.health.quarantine(self.slot.lifts());
            self.instance = None;
            self.slot.entity_quarantined(&self.entity, failures, calls);
        }
    }

    /// Makes sure an instance of the slot's current version exists: when there is none, or it runs an
    /// older version, a new one is instantiated and `init` (the entity's initialisation) run on it.
    /// Returns whether it was rebuilt: decisions the entity cached from the old instance are void.
    ///
    /// # Errors
    /// [`Fault::Unavailable`] while the entity is quarantined; the fault of instantiation or `init`
    /// (counted as a failure of the entity); the entity then has no instance.
    pub fn ensure(
        &mut self,
        init: impl FnOnce(&mut Instance<W>) -> Result<(), Fault>,
    ) -> Result<bool, Fault> {
        if self.instance.as_ref().is_some_and(Instance::is_current) {
            return Ok(false);
        }
        self.instance = None;
        self.check_quarantine()?;
        let built = Instance::new(&self.host, &self.slot).and_then(|mut instance| {
            if let Some(kv) = &self.kv {
                instance.attach_kv(Arc::clone(kv));
            }
            init(&mut instance)?;
            Ok(instance)
        });
        match built {
            Ok(instance) => {
                self.instance = Some(instance);
                Ok(true)
            }
            Err(fault) => {
                if !matches!(fault, Fault::Unavailable(_)) {
                    self.record(true);
                }
                Err(fault)
            }
        }
    }

    /// Calls `f`, a call that handles a message (`route`, `route-keys`, `filter`, `key`), on the
    /// instance (without building one: see [`EntityInstance::ensure`]); its outcome counts in the
    /// entity's failure rate. A fault drops the instance.
    ///
    /// # Errors
    /// `f`'s fault, or [`Fault::Unavailable`] when there is no instance.
    pub fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Instance<W>) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        self.call_as(true, f)
    }

    /// [`EntityInstance::call`] for a set-up call (`add-binding`, `remove-binding`,
    /// `validate-binding`): only a failure counts in the entity's failure rate.
    ///
    /// # Errors
    /// As [`EntityInstance::call`].
    pub fn call_setup<T>(
        &mut self,
        f: impl FnOnce(&mut Instance<W>) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        self.call_as(false, f)
    }

    fn call_as<T>(
        &mut self,
        handles_message: bool,
        f: impl FnOnce(&mut Instance<W>) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(Fault::Unavailable("no instance".into()));
        };
        let result = f(instance);
        match &result {
            Ok(_) if handles_message => self.record(false),
            Ok(_) => {}
            Err(fault) => {
                self.instance = None;
                if !matches!(fault, Fault::Unavailable(_)) {
                    self.record(true);
                }
            }
        }
        result
    }
}

impl<W: Configurable> EntityInstance<W> {
    /// [`EntityInstance::ensure`] for a world initialised with a configuration (filters, idempotency
    /// plugins). A version that refuses `config` is [`Fault::Unavailable`], naming `what` the
    /// configuration is (e.g. "the consumer's x-filter-args").
    ///
    /// # Errors
    /// As [`EntityInstance::ensure`].
    // `&Vec<u8>`: the generated bindings take the WIT `field-table` (a `list<u8>`) so.
    #[allow(clippy::ptr_arg)]
    pub fn ensure_configured(&mut self, config: &Vec<u8>, what: &str) -> Result<bool, Fault> {
        let name = self.slot.name.clone();
        self.ensure(|instance| match W::init_config(instance, config)? {
            Ok(()) => Ok(()),
            Err(reason) => Err(Fault::Unavailable(format!(
                "this version of {} '{name}' refuses {what}: {reason}",
                W::KIND
            ))),
        })
    }
}
