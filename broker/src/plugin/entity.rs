//! One broker entity's plugin instance through its life — the one place the lifecycle is written for
//! every kind (an exchange of a plugin type, a filtered consumer, an idempotent queue):
//!
//! - built on first use, or when the slot's version changed (hot reload): instantiate, then the
//!   entity's own initialisation (`init` with its arguments or configuration, binding replay);
//! - used under the entity's lock, so a call in flight finishes on the old version and the next one
//!   runs whole on the new;
//! - dropped after a fault (a trapped instance cannot be re-entered) and rebuilt on the next use.

use std::sync::Arc;

use super::engine::Fault;
use super::instance::{Configurable, Instance, World};
use super::registry::{PluginHost, Slot};

/// The plugin instance of one entity, or none yet / since a fault.
pub struct EntityInstance<W> {
    host: Arc<PluginHost>,
    slot: Arc<Slot>,
    instance: Option<Instance<W>>,
}

impl<W> std::fmt::Debug for EntityInstance<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntityInstance")
            .field("plugin", &self.slot.name)
            .field("instance", &self.instance)
            .finish()
    }
}

impl<W: World> EntityInstance<W> {
    /// An entity with no instance yet (built on first use): one recovered while its plugin is not
    /// loaded, for example.
    pub fn new(host: &Arc<PluginHost>, slot: &Arc<Slot>) -> Self {
        EntityInstance {
            host: Arc::clone(host),
            slot: Arc::clone(slot),
            instance: None,
        }
    }

    /// An entity whose instance was just built and initialised (at declare, so that a refusal is the
    /// client's error).
    pub fn with(host: &Arc<PluginHost>, slot: &Arc<Slot>, instance: Instance<W>) -> Self {
        EntityInstance {
            instance: Some(instance),
            ..Self::new(host, slot)
        }
    }

    /// Makes sure an instance of the slot's current version exists: when there is none, or it runs an
    /// older version, a new one is instantiated and `init` (the entity's initialisation) run on it.
    /// Returns whether it was rebuilt: decisions the entity cached from the old instance are void.
    ///
    /// # Errors
    /// The fault of instantiation or `init`; the entity then has no instance.
    pub fn ensure(
        &mut self,
        init: impl FnOnce(&mut Instance<W>) -> Result<(), Fault>,
    ) -> Result<bool, Fault> {
        if self.instance.as_ref().is_some_and(Instance::is_current) {
            return Ok(false);
        }
        self.instance = None;
        let mut instance = Instance::new(&self.host, &self.slot)?;
        init(&mut instance)?;
        self.instance = Some(instance);
        Ok(true)
    }

    /// Calls `f` on the instance (without building one: see [`EntityInstance::ensure`]). A fault drops
    /// the instance.
    ///
    /// # Errors
    /// `f`'s fault, or [`Fault::Unavailable`] when there is no instance.
    pub fn call<T>(
        &mut self,
        f: impl FnOnce(&mut Instance<W>) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        let Some(instance) = self.instance.as_mut() else {
            return Err(Fault::Unavailable("no instance".into()));
        };
        let result = f(instance);
        if result.is_err() {
            self.instance = None;
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
