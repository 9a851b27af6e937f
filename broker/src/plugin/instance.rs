//! Typed plugin instances: one store + instance per broker entity (an exchange, a consumer, a queue).
//!
//! Every call is armed with the deadline, counted in its slot, and turned into a [`Fault`] when it
//! traps; a faulted instance must be dropped (wasmtime cannot re-enter it) and rebuilt with
//! [`Instance::new`]. [`Instance::is_current`] tells whether a newer version has been loaded since.

use std::sync::Arc;

use wasmtime::Store;

use super::bindings::{Binding, Decision, Due, ExchangeOptions};
use super::engine::{forget_message, forget_run, lend_message, lend_run, run, Fault, StoreState};
use super::kv::KvStore;
use super::loader::{Kind, Pre};
use super::output::Origin;
use super::registry::{PluginHost, Slot};
use super::worlds::{
    self, ExchangePre, ExchangeWorld, FilterPre, FilterWorld, IdempotencyPre, IdempotencyWorld,
};
use crate::message::Message;

/// The bindings of one kind of world (in any package version), instantiated from a matching [`Pre`].
pub trait World: Sized {
    /// The plugin kind this world is.
    const KIND: Kind;
    /// Instantiates `pre` into `store`.
    ///
    /// # Errors
    /// `pre` is of another kind, or instantiation trapped.
    fn instantiate(pre: &Pre, store: &mut Store<StoreState>) -> wasmtime::Result<Self>;
}

/// A world whose `init` takes the entity's configuration (a wire-encoded field table) and accepts or
/// refuses it: filters (`x-filter-args`) and idempotency plugins (`x-idempotency-args`).
pub trait Configurable: World {
    /// Calls `init(config)` on `instance`: `Ok(Err(reason))` when the plugin refuses `config`.
    ///
    /// # Errors
    /// The call faulted.
    // `&Vec<u8>`: the generated bindings take the WIT `field-table` (a `list<u8>`) so.
    #[allow(clippy::ptr_arg)]
    fn init_config(
        instance: &mut Instance<Self>,
        config: &Vec<u8>,
    ) -> Result<Result<(), String>, Fault>;
}

impl Configurable for FilterWorld {
    fn init_config(
        instance: &mut Instance<Self>,
        config: &Vec<u8>,
    ) -> Result<Result<(), String>, Fault> {
        instance.call(|w, s| match w {
            FilterWorld::V0_4(w) => run(w.warren_plugin_filter().call_init(s, config)),
            FilterWorld::V0_3(w) => run(w.warren_plugin_filter().call_init(s, config)),
            FilterWorld::V0_2(w) => run(w.warren_plugin_filter().call_init(s, config)),
            FilterWorld::V0_1(w) => run(w.warren_plugin_filter().call_init(s, config)),
        })
    }
}

impl Configurable for IdempotencyWorld {
    fn init_config(
        instance: &mut Instance<Self>,
        config: &Vec<u8>,
    ) -> Result<Result<(), String>, Fault> {
        instance.call(|w, s| match w {
            IdempotencyWorld::V0_4(w) => run(w.warren_plugin_idempotency().call_init(s, config)),
            IdempotencyWorld::V0_3(w) => run(w.warren_plugin_idempotency().call_init(s, config)),
            IdempotencyWorld::V0_2(w) => run(w.warren_plugin_idempotency().call_init(s, config)),
            IdempotencyWorld::V0_1(w) => run(w.warren_plugin_idempotency().call_init(s, config)),
        })
    }
}

impl World for ExchangeWorld {
    const KIND: Kind = Kind::Exchange;
    fn instantiate(pre: &Pre, store: &mut Store<StoreState>) -> wasmtime::Result<Self> {
        match pre {
            Pre::Exchange(ExchangePre::V0_4(p)) => {
                run(p.instantiate_async(store)).map(ExchangeWorld::V0_4)
            }
            Pre::Exchange(ExchangePre::V0_3(p)) => {
                run(p.instantiate_async(store)).map(ExchangeWorld::V0_3)
            }
            Pre::Exchange(ExchangePre::V0_2(p)) => {
                run(p.instantiate_async(store)).map(ExchangeWorld::V0_2)
            }
            Pre::Exchange(ExchangePre::V0_1(p)) => {
                run(p.instantiate_async(store)).map(ExchangeWorld::V0_1)
            }
            other => wasmtime::bail!("{} plugin is not an exchange plugin", other.kind()),
        }
    }
}

impl World for FilterWorld {
    const KIND: Kind = Kind::Filter;
    fn instantiate(pre: &Pre, store: &mut Store<StoreState>) -> wasmtime::Result<Self> {
        match pre {
            Pre::Filter(FilterPre::V0_4(p)) => {
                run(p.instantiate_async(store)).map(FilterWorld::V0_4)
            }
            Pre::Filter(FilterPre::V0_3(p)) => {
                run(p.instantiate_async(store)).map(FilterWorld::V0_3)
            }
            Pre::Filter(FilterPre::V0_2(p)) => {
                run(p.instantiate_async(store)).map(FilterWorld::V0_2)
            }
            Pre::Filter(FilterPre::V0_1(p)) => {
                run(p.instantiate_async(store)).map(FilterWorld::V0_1)
            }
            other => wasmtime::bail!("{} plugin is not a filter plugin", other.kind()),
        }
    }
}

impl World for IdempotencyWorld {
    const KIND: Kind = Kind::Idempotency;
    fn instantiate(pre: &Pre, store: &mut Store<StoreState>) -> wasmtime::Result<Self> {
        match pre {
            Pre::Idempotency(IdempotencyPre::V0_4(p)) => {
                run(p.instantiate_async(store)).map(IdempotencyWorld::V0_4)
            }
            Pre::Idempotency(IdempotencyPre::V0_3(p)) => {
                run(p.instantiate_async(store)).map(IdempotencyWorld::V0_3)
            }
            Pre::Idempotency(IdempotencyPre::V0_2(p)) => {
                run(p.instantiate_async(store)).map(IdempotencyWorld::V0_2)
            }
            Pre::Idempotency(IdempotencyPre::V0_1(p)) => {
                run(p.instantiate_async(store)).map(IdempotencyWorld::V0_1)
            }
            other => wasmtime::bail!("{} plugin is not an idempotency plugin", other.kind()),
        }
    }
}

/// A live instance of one plugin version, serving one entity.
pub struct Instance<W> {
    host: Arc<PluginHost>,
    slot: Arc<Slot>,
    store: Store<StoreState>,
    bindings: W,
    generation: u64,
    version: String,
}

impl<W> std::fmt::Debug for Instance<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("plugin", &self.slot.name)
            .field("version", &self.version)
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl<W: World> Instance<W> {
    /// Instantiates the slot's current version.
    ///
    /// # Errors
    /// [`Fault::Unavailable`] when no version is loaded or the plugin is quarantined; a fault when
    /// instantiation traps.
    pub fn new(host: &Arc<PluginHost>, slot: &Arc<Slot>) -> Result<Self, Fault> {
        let version = slot.current()?;
        let runtime = host.runtime();
        let mut store = runtime.store(
            &Origin::new(&slot.name, &version.file),
            slot.memory_cap(&runtime.limits),
        );
        runtime.arm_instantiate(&mut store);
        let bindings = W::instantiate(&version.loaded.pre, &mut store).map_err(|e| {
            let fault = Fault::from_error(&e);
            slot.record_fault(&fault, &version.loaded.version);
            fault
        })?;
        Ok(Instance {
            host: Arc::clone(host),
            slot: Arc::clone(slot),
            store,
            bindings,
            generation: version.generation,
            version: version.loaded.version.clone(),
        })
    }

    /// An instance of the slot's current version initialised with `config`: `Ok(Err(reason))` when
    /// the plugin refuses it.
    ///
    /// # Errors
    /// As [`Instance::new`], or `init` faulted.
    pub fn configured(
        host: &Arc<PluginHost>,
        slot: &Arc<Slot>,
        config: &Vec<u8>,
    ) -> Result<Result<Self, String>, Fault>
    where
        W: Configurable,
    {
        let mut instance = Self::new(host, slot)?;
        Ok(W::init_config(&mut instance, config)?.map(|()| instance))
    }

    /// Gives the instance its entity's key-value store (the `host` interface's `kv-*` calls; without
    /// one they see an empty store that refuses writes).
    pub fn attach_kv(&mut self, kv: Arc<KvStore>) {
        self.store.data_mut().kv = Some(kv);
    }

    /// Whether this instance runs the slot's current version (false after a reload or removal).
    pub fn is_current(&self) -> bool {
        self.slot.generation() == self.generation
    }

    /// The plugin's slot.
    pub fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }

    /// Runs one call under the deadline; counts it in the slot; maps a trap to a [`Fault`].
    fn call<T>(
        &mut self,
        f: impl FnOnce(&W, &mut Store<StoreState>) -> wasmtime::Result<T>,
    ) -> Result<T, Fault> {
        self.call_scaled(1, f)
    }

    /// [`Self::call`] with the deadline of `calls` calls.
    fn call_scaled<T>(
        &mut self,
        calls: u64,
        f: impl FnOnce(&W, &mut Store<StoreState>) -> wasmtime::Result<T>,
    ) -> Result<T, Fault> {
        self.host.runtime().arm_for(&mut self.store, calls);
        match f(&self.bindings, &mut self.store) {
            Ok(v) => {
                self.slot.record_success();
                Ok(v)
            }
            Err(e) => {
                let fault = Fault::from_error(&e);
                self.slot.record_fault(&fault, &self.version);
                if fault == Fault::Memory {
                    self.slot.raise_memory_cap(&self.host.runtime().limits);
                }
                Err(fault)
            }
        }
    }

    /// Runs a call that is lent `message` as its `message` resource.
    fn call_with_message<T>(
        &mut self,
        message: &Arc<Message>,
        f: impl FnOnce(
            &W,
            &mut Store<StoreState>,
            wasmtime::component::Resource<super::bindings::MessageView>,
        ) -> wasmtime::Result<T>,
    ) -> Result<T, Fault> {
        let view = lend_message(&mut self.store, message)?;
        // Lent as a borrow: the guest's handle ends with the call, the host keeps ownership.
        let borrow = wasmtime::component::Resource::new_borrow(view.rep());
        let result = self.call(|w, store| f(w, store, borrow));
        forget_message(&mut self.store, view);
        result
    }
}

impl Instance<ExchangeWorld> {
    /// `init(arguments)`: `Ok(Err(reason))` when the plugin refuses the declare arguments.
    ///
    /// # Errors
    /// The call faulted.
    /// Packages before 0.4.0 answer `routes-on` only: they never schedule.
    ///
    /// # Errors
    /// The call faulted.
    pub fn init(&mut self, arguments: &Vec<u8>) -> Result<Result<ExchangeOptions, String>, Fault> {
        let old = |routes_on| ExchangeOptions {
            routes_on,
            schedules: false,
        };
        self.call(|w, s| match w {
            ExchangeWorld::V0_4(w) => run(w.warren_plugin_exchange().call_init(s, arguments)),
            ExchangeWorld::V0_3(w) => run(w.warren_plugin_exchange().call_init(s, arguments))
                .map(|r| r.map(|r| old(worlds::from_v0_3::routes_on(r)))),
            ExchangeWorld::V0_2(w) => run(w.warren_plugin_exchange().call_init(s, arguments))
                .map(|r| r.map(|r| old(worlds::from_v0_2::routes_on(r)))),
            ExchangeWorld::V0_1(w) => run(w.warren_plugin_exchange().call_init(s, arguments))
                .map(|r| r.map(|r| old(worlds::from_v0_1::routes_on(r)))),
        })
    }

    /// `schedule`: when `message` is routed (package 0.4.0 on; older packages route now).
    ///
    /// # Errors
    /// The call faulted.
    pub fn schedule(&mut self, message: &Arc<Message>) -> Result<Due, Fault> {
        if !matches!(self.bindings, ExchangeWorld::V0_4(_)) {
            return Ok(Due::Now);
        }
        self.call_with_message(message, |w, s, view| match w {
            ExchangeWorld::V0_4(w) => run(w.warren_plugin_exchange().call_schedule(s, view)),
            _ => Ok(Due::Now),
        })
    }

    /// `validate-binding`: `Ok(Err(reason))` when the plugin refuses it.
    ///
    /// # Errors
    /// The call faulted.
    pub fn validate_binding(&mut self, binding: &Binding) -> Result<Result<(), String>, Fault> {
        self.call(|w, s| match w {
            ExchangeWorld::V0_4(w) => {
                run(w.warren_plugin_exchange().call_validate_binding(s, binding))
            }
            ExchangeWorld::V0_3(w) => run(w
                .warren_plugin_exchange()
                .call_validate_binding(s, &worlds::from_v0_3::binding(binding))),
            ExchangeWorld::V0_2(w) => run(w
                .warren_plugin_exchange()
                .call_validate_binding(s, &worlds::from_v0_2::binding(binding))),
            ExchangeWorld::V0_1(w) => run(w
                .warren_plugin_exchange()
                .call_validate_binding(s, &worlds::from_v0_1::binding(binding))),
        })
    }

    /// `add-binding`.
    ///
    /// # Errors
    /// The call faulted.
    pub fn add_binding(&mut self, binding: &Binding) -> Result<(), Fault> {
        self.call(|w, s| match w {
            ExchangeWorld::V0_4(w) => run(w.warren_plugin_exchange().call_add_binding(s, binding)),
            ExchangeWorld::V0_3(w) => run(w
                .warren_plugin_exchange()
                .call_add_binding(s, &worlds::from_v0_3::binding(binding))),
            ExchangeWorld::V0_2(w) => run(w
                .warren_plugin_exchange()
                .call_add_binding(s, &worlds::from_v0_2::binding(binding))),
            ExchangeWorld::V0_1(w) => run(w
                .warren_plugin_exchange()
                .call_add_binding(s, &worlds::from_v0_1::binding(binding))),
        })
    }

    /// `remove-binding`.
    ///
    /// # Errors
    /// The call faulted.
    pub fn remove_binding(&mut self, id: u32) -> Result<(), Fault> {
        self.call(|w, s| match w {
            ExchangeWorld::V0_4(w) => run(w.warren_plugin_exchange().call_remove_binding(s, id)),
            ExchangeWorld::V0_3(w) => run(w.warren_plugin_exchange().call_remove_binding(s, id)),
            ExchangeWorld::V0_2(w) => run(w.warren_plugin_exchange().call_remove_binding(s, id)),
            ExchangeWorld::V0_1(w) => run(w.warren_plugin_exchange().call_remove_binding(s, id)),
        })
    }

    /// `route`: binding ids for `message` under `routing_key`.
    ///
    /// # Errors
    /// The call faulted.
    pub fn route(&mut self, message: &Arc<Message>, routing_key: &str) -> Result<Vec<u32>, Fault> {
        self.call_with_message(message, |w, s, view| match w {
            ExchangeWorld::V0_4(w) => {
                run(w.warren_plugin_exchange().call_route(s, view, routing_key))
            }
            ExchangeWorld::V0_3(w) => {
                run(w.warren_plugin_exchange().call_route(s, view, routing_key))
            }
            ExchangeWorld::V0_2(w) => {
                run(w.warren_plugin_exchange().call_route(s, view, routing_key))
            }
            ExchangeWorld::V0_1(w) => {
                run(w.warren_plugin_exchange().call_route(s, view, routing_key))
            }
        })
    }

    /// Whether the plugin answers `route-keys` (package 0.2.0 on; a 0.1.0 plugin is routed message by
    /// message).
    pub fn routes_keys_in_batches(&self) -> bool {
        !matches!(self.bindings, ExchangeWorld::V0_1(_))
    }

    /// Whether the plugin answers `route-messages` (package 0.3.0 on; an older plugin that routes on
    /// the message is routed message by message).
    pub fn routes_messages_in_batches(&self) -> bool {
        matches!(
            self.bindings,
            ExchangeWorld::V0_4(_) | ExchangeWorld::V0_3(_)
        )
    }

    /// `route-keys`: binding ids for each of a run of routing keys (`keys` back to back, key i ending
    /// at `key_ends[i]`), as `(ids, id_ends)` in the same flat form. The deadline is the call timeout
    /// per key.
    ///
    /// An answer with another number of ends than keys is returned as it is: the caller checks its
    /// shape and counts a malformed one as a contract breach, not a fault (the instance is fine).
    ///
    /// # Errors
    /// The call faulted, or the plugin's package has no `route-keys` ([`Fault::Unavailable`]: ask
    /// [`Instance::routes_keys_in_batches`] first).
    pub fn route_keys(
        &mut self,
        keys: &[u8],
        key_ends: &[u32],
    ) -> Result<(Vec<u32>, Vec<u32>), Fault> {
        if !self.routes_keys_in_batches() {
            return Err(Fault::Unavailable(
                "route-keys is not in warren:plugin@0.1.0".into(),
            ));
        }
        let calls = key_ends.len() as u64;
        self.call_scaled(calls, |w, s| match w {
            ExchangeWorld::V0_4(w) => run(w
                .warren_plugin_exchange()
                .call_route_keys(s, keys, key_ends))
            .map(|r| (r.ids, r.id_ends)),
            ExchangeWorld::V0_3(w) => run(w
                .warren_plugin_exchange()
                .call_route_keys(s, keys, key_ends))
            .map(|r| (r.ids, r.id_ends)),
            ExchangeWorld::V0_2(w) => run(w
                .warren_plugin_exchange()
                .call_route_keys(s, keys, key_ends))
            .map(|r| (r.ids, r.id_ends)),
            ExchangeWorld::V0_1(_) => wasmtime::bail!("route-keys is not in warren:plugin@0.1.0"),
        })
    }

    /// `route-messages`: binding ids for each of a run of messages, each routed with its own routing
    /// key (`keys` back to back, key i ending at `key_ends[i]`), as `(ids, id_ends)` like
    /// [`Instance::route_keys`]. The run is lent (a `message-run`) for the call only. The deadline is the call
    /// timeout per message.
    ///
    /// # Errors
    /// The call faulted, or the plugin's package has no `route-messages` ([`Fault::Unavailable`]: ask
    /// [`Instance::routes_messages_in_batches`] first).
    pub fn route_messages(
        &mut self,
        messages: &[&Arc<Message>],
        keys: &[u8],
        key_ends: &[u32],
    ) -> Result<(Vec<u32>, Vec<u32>), Fault> {
        if !self.routes_messages_in_batches() {
            return Err(Fault::Unavailable(format!(
                "route-messages is not in {}",
                self.package()
            )));
        }
        let lent = lend_run(&mut self.store, messages)?;
        // Lent as a borrow: the guest's handle ends with the call, the host keeps ownership.
        let borrow = wasmtime::component::Resource::new_borrow(lent.rep());
        let result = self.call_scaled(messages.len() as u64, |w, s| match w {
            ExchangeWorld::V0_4(w) => run(w
                .warren_plugin_exchange()
                .call_route_messages(s, borrow, keys, key_ends))
            .map(|r| (r.ids, r.id_ends)),
            ExchangeWorld::V0_3(w) => run(w
                .warren_plugin_exchange()
                .call_route_messages(s, borrow, keys, key_ends))
            .map(|r| (r.ids, r.id_ends)),
            _ => wasmtime::bail!("route-messages is not in this package"),
        });
        forget_run(&mut self.store, lent);
        result
    }

    /// The package version of this instance's world.
    fn package(&self) -> worlds::Package {
        match self.bindings {
            ExchangeWorld::V0_4(_) => worlds::Package::V0_4,
            ExchangeWorld::V0_3(_) => worlds::Package::V0_3,
            ExchangeWorld::V0_2(_) => worlds::Package::V0_2,
            ExchangeWorld::V0_1(_) => worlds::Package::V0_1,
        }
    }
}

impl Instance<FilterWorld> {
    /// `filter`: the decision for `message`.
    ///
    /// # Errors
    /// The call faulted.
    pub fn filter(&mut self, message: &Arc<Message>) -> Result<Decision, Fault> {
        self.call_with_message(message, |w, s, view| match w {
            FilterWorld::V0_4(w) => run(w.warren_plugin_filter().call_filter(s, view)),
            FilterWorld::V0_3(w) => {
                run(w.warren_plugin_filter().call_filter(s, view)).map(worlds::from_v0_3::decision)
            }
            FilterWorld::V0_2(w) => {
                run(w.warren_plugin_filter().call_filter(s, view)).map(worlds::from_v0_2::decision)
            }
            FilterWorld::V0_1(w) => {
                run(w.warren_plugin_filter().call_filter(s, view)).map(worlds::from_v0_1::decision)
            }
        })
    }
}

impl Instance<IdempotencyWorld> {
    /// `key`: the message's idempotency key, if it has one.
    ///
    /// # Errors
    /// The call faulted.
    pub fn key(&mut self, message: &Arc<Message>) -> Result<Option<Vec<u8>>, Fault> {
        self.call_with_message(message, |w, s, view| match w {
            IdempotencyWorld::V0_4(w) => run(w.warren_plugin_idempotency().call_key(s, view)),
            IdempotencyWorld::V0_3(w) => run(w.warren_plugin_idempotency().call_key(s, view)),
            IdempotencyWorld::V0_2(w) => run(w.warren_plugin_idempotency().call_key(s, view)),
            IdempotencyWorld::V0_1(w) => run(w.warren_plugin_idempotency().call_key(s, view)),
        })
    }
}
