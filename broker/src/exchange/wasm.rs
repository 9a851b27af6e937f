//! Exchange types implemented by plugins: [`ExchangeType`] over one plugin instance per exchange.
//!
//! The adapter owns the exchange's bindings as the plugin sees them (an id per binding; ids are reused
//! after removal) and pushes each change to the instance, so routing calls carry only the message
//! view and the routing key. When the plugin's slot has a newer version (hot reload), the next call
//! builds a new instance, calls `init` with the declare arguments and replays every binding before
//! routing — calls in flight finish on the old instance, since both happen under this exchange's
//! lock. A faulted instance is dropped and rebuilt on the next call. With no version loaded (file
//! removed, quarantined) the exchange stays declared and routing fails: the failure policy
//! (unroutable → alternate exchange, basic.return, confirm nack) applies
//! (RabbitMQ's `rabbit_exchange_type_invalid`).
//!
//! For plugins that declare `routes-on = routing-key`, decisions are cached per routing key until a
//! binding changes or the version does; when keys rarely repeat (a full cache generation with hits
//! below a tenth of its misses) the cache is bypassed for a while instead of paying for inserts.
//! Such plugins are also asked for runs of routing keys in one `route-keys` call, and plugins that
//! route on the whole message (0.3.0 on) for runs of messages in one `route-messages` call
//! ([`ExchangeType::prepare`], see [`super::batch`]); the [`Prepared`] decisions carry the exchange's
//! generation (renewed whenever a binding or the instance changes), and a stale one is ignored.
//!
//! Package 0.4.0 adds host services: each exchange has a key-value store ([`KvStore`], kept by the
//! plugin host across instances; journaled for a durable exchange), and a plugin whose `init` answers
//! `schedules` is asked `schedule` for every publish before routing; its publishes are then not
//! batched (each needs its own answer before it can be routed or kept).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use amq_protocol::types::FieldTable;

use super::{
    Binding, BindingRefused, CreateError, Destination, ExchangeType, Prepared, RouteError, Schedule,
};
use crate::message::MessageRef;
use crate::plugin::bindings::{Binding as WitBinding, Due, ExchangeOptions, RoutesOn};
use crate::plugin::engine::table_body;
use crate::plugin::entity::EntityInstance;
use crate::plugin::instance::Instance;
use crate::plugin::kv::KvStore;
use crate::plugin::worlds::ExchangeWorld;
use crate::plugin::{Fault, PluginHost, Slot};

/// Routing decisions kept per exchange for `routes-on = routing-key` plugins; the cache is cleared
/// when it reaches this many keys.
const CACHE_KEYS: usize = 10_000;

/// When a full cache generation had fewer hits than a tenth of its misses (keys rarely repeat), the
/// cache is bypassed for this many calls: inserting and clearing keys that never come back costs ~15 %
/// of a plugin call (callgrind of the route benchmark).
const CACHE_BYPASS_CALLS: u32 = 100_000;

/// Most keys asked for in one `route-keys` call (the call's deadline is scaled by the count): this
/// type's [`ExchangeType::batch_limit`].
pub(crate) const PREPARE_MAX: usize = 256;

/// A binding as the plugin knows it.
#[derive(Debug)]
struct Entry {
    destination: Destination,
    wit: WitBinding,
}

#[derive(Debug)]
struct Active {
    instance: EntityInstance<ExchangeWorld>,
    routes_on: RoutesOn,
    cache: HashMap<String, Vec<u32>>,
    /// Cache hits and misses since the cache was last cleared.
    hits: u32,
    misses: u32,
    /// Calls left during which the cache is bypassed (it was not paying for itself).
    bypass: u32,
}

/// An exchange whose type is a plugin.
#[derive(Debug)]
pub(crate) struct WasmExchange {
    slot: Arc<Slot>,
    /// Declare arguments, wire-encoded (the WIT `field-table`).
    arguments: Vec<u8>,
    /// Slab: binding id → binding.
    entries: Vec<Option<Entry>>,
    active: Mutex<Active>,
    /// The current instance said `routes-on = routing-key` and its package has `route-keys` (0.2.0
    /// on): publishes to it are batched (read without the lock by publishers).
    by_key: AtomicBool,
    /// The current instance said `routes-on = message` and its package has `route-messages` (0.3.0
    /// on): publishes to it are batched too.
    by_message: AtomicBool,
    /// Renewed whenever a binding or the instance changes, voiding prepared decisions.
    generation: AtomicU64,
    /// The slot generation of the version that gave an ill-formed `route-keys` answer (0: none): no
    /// more batches while it is the current version (each would be thrown away and routed one by one
    /// anyway).
    batches_refused_by: AtomicU64,
    /// The current instance's `init` answered `schedules`: `schedule` is asked for each publish.
    schedules: AtomicBool,
    /// An instance has answered `init` (until then, e.g. for an exchange recovered before its plugin
    /// loaded, whether it schedules is unknown and a publish builds the instance to find out).
    initialised: AtomicBool,
    /// The exchange's key-value store (`host` interface).
    kv: Arc<KvStore>,
}

impl WasmExchange {
    /// An exchange of the plugin type in `slot` (`entity` names it in logs: "exchange 'x' in vhost
    /// '/'"): instantiates the plugin and calls `init` with the declare arguments.
    ///
    /// # Errors
    /// [`CreateError::Refused`] with the plugin's reason when it refuses the arguments, or a
    /// description of its fault.
    pub(crate) fn new(
        host: &Arc<PluginHost>,
        slot: &Arc<Slot>,
        arguments: &FieldTable,
        entity: String,
        kv_dir: Option<std::path::PathBuf>,
    ) -> Result<Self, CreateError> {
        let refused = |f: Fault| CreateError::Refused(describe(slot, &f));
        let x = Self::unavailable(host, slot, arguments, entity.clone(), kv_dir);
        let mut active = crate::sync::lock(&x.active);
        let mut instance = Instance::<ExchangeWorld>::new(host, slot).map_err(refused)?;
        instance.attach_kv(Arc::clone(&x.kv));
        let options = instance
            .init(&x.arguments)
            .map_err(refused)?
            .map_err(CreateError::Refused)?;
        x.adopt(
            &mut active,
            options,
            instance.routes_keys_in_batches(),
            instance.routes_messages_in_batches(),
        );
        active.instance =
            EntityInstance::with(host, slot, entity, instance).with_kv(Arc::clone(&x.kv));
        drop(active);
        Ok(x)
    }

    /// An exchange of a plugin type that is not loaded now (recovered from disk before its plugin
    /// returned): instantiated on first use.
    pub(crate) fn unavailable(
        host: &Arc<PluginHost>,
        slot: &Arc<Slot>,
        arguments: &FieldTable,
        entity: String,
        kv_dir: Option<std::path::PathBuf>,
    ) -> Self {
        let kv = host.kv_store(entity.clone(), kv_dir);
        WasmExchange {
            schedules: AtomicBool::new(false),
            initialised: AtomicBool::new(false),
            slot: Arc::clone(slot),
            arguments: table_body(arguments),
            entries: Vec::new(),
            active: Mutex::new(Active {
                instance: EntityInstance::new(host, slot, entity).with_kv(Arc::clone(&kv)),
                routes_on: RoutesOn::Message,
                cache: HashMap::new(),
                hits: 0,
                misses: 0,
                bypass: 0,
            }),
            by_key: AtomicBool::new(false),
            by_message: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            batches_refused_by: AtomicU64::new(0),
            kv,
        }
    }

    /// What a new instance's `init` answered (`options`), for an instance whose package has
    /// `route-keys` (`keys`) and `route-messages` (`messages`): what routing depends on, whether it
    /// schedules, whether publishes are batched.
    fn adopt(&self, active: &mut Active, options: ExchangeOptions, keys: bool, messages: bool) {
        let routes_on = options.routes_on;
        active.routes_on = routes_on;
        self.schedules.store(options.schedules, Ordering::Relaxed);
        self.initialised.store(true, Ordering::Relaxed);
        self.by_key
            .store(routes_on == RoutesOn::RoutingKey && keys, Ordering::Relaxed);
        self.by_message.store(
            routes_on == RoutesOn::Message && messages,
            Ordering::Relaxed,
        );
    }

    /// A binding or the instance changed: decisions prepared before are void.
    fn renew(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    fn next_id(&self) -> u32 {
        let free = self.entries.iter().position(Option::is_none);
        u32::try_from(free.unwrap_or(self.entries.len())).unwrap_or(u32::MAX)
    }

    /// Makes sure `active` holds an instance of the current version, rebuilding it (`init` with the
    /// declare arguments, then every binding replayed) when it is missing or stale; a rebuild voids
    /// the cached and prepared decisions.
    fn ensure(&self, active: &mut Active) -> Result<(), Fault> {
        let mut adopted = None;
        let rebuilt = active.instance.ensure(|instance| {
            let keys = instance.routes_keys_in_batches();
            let messages = instance.routes_messages_in_batches();
            let options = instance.init(&self.arguments)?.map_err(|reason| {
                Fault::Unavailable(format!(
                    "this version of '{}' refuses the exchange's arguments: {reason}",
                    self.slot.name
                ))
            })?;
            adopted = Some((options, keys, messages));
            for e in self.entries.iter().flatten() {
                instance.add_binding(&e.wit)?;
            }
            Ok(())
        })?;
        if rebuilt {
            active.cache.clear();
            (active.hits, active.misses, active.bypass) = (0, 0, 0);
            self.renew();
            if let Some((options, keys, messages)) = adopted {
                self.adopt(active, options, keys, messages);
            }
        }
        Ok(())
    }

    /// Runs `f` on a current instance; `handles_message`: a routing call (its outcome counts in the
    /// exchange's failure rate), not a binding change.
    fn with_instance<T>(
        &self,
        active: &mut Active,
        handles_message: bool,
        f: impl FnOnce(&mut Instance<ExchangeWorld>) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        self.ensure(active)?;
        let result = if handles_message {
            active.instance.call(f)
        } else {
            active.instance.call_setup(f)
        };
        if result.is_err() {
            self.renew();
        }
        result
    }

    /// Counts a fresh answer that names binding ids no binding has, or one id twice, as a contract
    /// breach (logged at a rate limit by the slot). Unknown ids are then skipped, repeats deduplicated
    /// by routing: the usable part of the answer is used.
    fn check_answer(&self, ids: &[u32]) {
        let unknown = ids
            .iter()
            .filter(|&&id| !matches!(self.entries.get(id as usize), Some(Some(_))))
            .count();
        let repeated = ids.len() > 1 && ids.iter().enumerate().any(|(i, id)| ids[..i].contains(id));
        if unknown > 0 || repeated {
            self.slot.record_breach(format_args!(
                "route answered {} binding ids: {unknown} unknown{}",
                ids.len(),
                if repeated { ", some repeated" } else { "" }
            ));
        }
    }

    /// Appends the destinations of the bindings with these ids.
    fn push_destinations(&self, ids: &[u32], out: &mut Vec<Destination>) {
        for id in ids {
            if let Some(Some(e)) = self.entries.get(*id as usize) {
                out.push(e.destination.clone());
            }
        }
    }

    /// Routes through the per-key cache or the plugin; the cache keeps the plugin's answer (no copy).
    fn route_into(
        &self,
        routing_key: &str,
        message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), Fault> {
        let mut active = crate::sync::lock(&self.active);
        self.ensure(&mut active)?;
        let mut cacheable = active.routes_on == RoutesOn::RoutingKey;
        if cacheable && active.bypass > 0 {
            active.bypass -= 1;
            cacheable = false;
        }
        if cacheable {
            if let Some(ids) = active.cache.get(routing_key) {
                self.push_destinations(ids, out);
                active.hits = active.hits.saturating_add(1);
                return Ok(());
            }
            active.misses = active.misses.saturating_add(1);
        }
        let ids = self.with_instance(&mut active, true, |i| i.route(message, routing_key))?;
        self.check_answer(&ids);
        self.push_destinations(&ids, out);
        if cacheable {
            Self::remember(&mut active, routing_key, ids);
        }
        Ok(())
    }

    /// Keeps a decision in the per-key cache, clearing a full cache first (and bypassing it for a while
    /// when its keys rarely repeated).
    fn remember(active: &mut Active, routing_key: &str, ids: Vec<u32>) {
        if active.cache.len() >= CACHE_KEYS {
            if active.hits < active.misses / 10 {
                active.bypass = CACHE_BYPASS_CALLS;
            }
            active.cache.clear();
            (active.hits, active.misses) = (0, 0);
        }
        if active.bypass == 0 {
            active.cache.insert(routing_key.to_owned(), ids);
        }
    }

    /// Routes the next message of a prepared run: from `prepared` when it holds this key's decision
    /// and the exchange has not changed since, else as [`WasmExchange::route_into`].
    fn route_prepared_into(
        &self,
        routing_key: &str,
        message: &MessageRef,
        prepared: &mut Prepared,
        out: &mut Vec<Destination>,
    ) -> Result<(), Fault> {
        let mut active = crate::sync::lock(&self.active);
        self.ensure(&mut active)?;
        if prepared.generation == self.generation.load(Ordering::Relaxed) {
            if let Some(ids) = prepared.take(routing_key, message) {
                self.push_destinations(ids, out);
                // The keys asked for were the ones the cache missed: keep their decisions.
                if active.routes_on == RoutesOn::RoutingKey && active.bypass == 0 {
                    active.misses = active.misses.saturating_add(1);
                    Self::remember(&mut active, routing_key, ids.to_vec());
                }
                return Ok(());
            }
        }
        drop(active);
        self.route_into(routing_key, message, out)
    }

    /// Asks the plugin for the decisions of a run of messages in one call: `route-keys` over the
    /// keys the cache does not hold (a plugin that routes on the key), or `route-messages` over
    /// every message (one that routes on the message); see [`ExchangeType::prepare`]. A fault drops
    /// the instance like any call's; the messages are then routed one by one, with the failure
    /// policy.
    fn prepare_run(&self, messages: &[&MessageRef]) -> Option<Prepared> {
        let mut active = crate::sync::lock(&self.active);
        if self.ensure(&mut active).is_err() {
            return None;
        }
        let by_message = self.by_message.load(Ordering::Relaxed);
        if !by_message && !self.by_key.load(Ordering::Relaxed) {
            return None;
        }
        let use_cache = !by_message && active.bypass == 0;
        let mut p = Prepared::default();
        // A message run is every message (no cache): the plugin gets this slice as it is.
        let run = &messages[..messages.len().min(PREPARE_MAX)];
        for m in run {
            let key = m.routing_key.as_str();
            if use_cache && active.cache.contains_key(key) {
                continue;
            }
            p.keys.extend_from_slice(key.as_bytes());
            p.key_ends
                .push(u32::try_from(p.keys.len()).unwrap_or(u32::MAX));
            if by_message {
                p.messages.push(Prepared::address(m));
            }
        }
        if p.len() < 2 {
            return None; // one key: a plain route call costs the same
        }
        let (ids, id_ends) = self
            .with_instance(&mut active, true, |i| {
                if by_message {
                    i.route_messages(run, &p.keys, &p.key_ends)
                } else {
                    i.route_keys(&p.keys, &p.key_ends)
                }
            })
            .ok()?;
        (p.ids, p.id_ends) = (ids, id_ends);
        if !p.is_well_formed() {
            self.slot.record_breach(format_args!(
                "{} answered {} ends for {} messages (or ends out of order or range); this \
                 exchange routes message by message until the plugin is reloaded",
                if by_message {
                    "route-messages"
                } else {
                    "route-keys"
                },
                p.id_ends.len(),
                p.len()
            ));
            self.batches_refused_by
                .store(self.slot.generation(), Ordering::Relaxed);
            return None;
        }
        let mut start = 0;
        for &end in &p.id_ends {
            self.check_answer(p.ids.get(start..end as usize).unwrap_or_default());
            start = end as usize;
        }
        p.generation = self.generation.load(Ordering::Relaxed);
        Some(p)
    }
}

fn describe(slot: &Slot, fault: &Fault) -> String {
    format!("exchange type '{}' failed: {fault}", slot.name)
}

impl ExchangeType for WasmExchange {
    fn validate_binding(&self, binding: &Binding) -> Result<(), BindingRefused> {
        let wit = WitBinding {
            id: self.next_id(),
            destination: binding.destination.name().to_owned(),
            key: binding.key.to_string(),
            arguments: table_body(&binding.arguments),
        };
        let mut active = crate::sync::lock(&self.active);
        match self.with_instance(&mut active, false, |i| i.validate_binding(&wit)) {
            Ok(verdict) => verdict.map_err(BindingRefused),
            // No plugin to ask (file removed, or recovered before the plugin returned): the binding
            // is kept and replayed into the plugin when it is back, like every other binding.
            Err(Fault::Unavailable(_)) if !self.slot.is_loaded() => Ok(()),
            Err(f) => Err(BindingRefused(describe(&self.slot, &f))),
        }
    }

    fn bind(&mut self, binding: &Binding) {
        let id = self.next_id();
        let wit = WitBinding {
            id,
            destination: binding.destination.name().to_owned(),
            key: binding.key.to_string(),
            arguments: table_body(&binding.arguments),
        };
        let mut active = crate::sync::lock(&self.active);
        active.cache.clear();
        self.renew();
        // A failure drops the instance; the next call rebuilds it and replays this binding too.
        let _ = self.with_instance(&mut active, false, |i| i.add_binding(&wit));
        let entry = Entry {
            destination: binding.destination.clone(),
            wit,
        };
        drop(active);
        match self.entries.get_mut(id as usize) {
            Some(slot) => *slot = Some(entry),
            None => self.entries.push(Some(entry)),
        }
    }

    fn unbind(&mut self, binding: &Binding) {
        let Some(id) = self.entries.iter().position(|e| {
            e.as_ref().is_some_and(|e| {
                e.destination.same(&binding.destination)
                    && e.wit.key == binding.key.as_str()
                    && e.wit.arguments == table_body(&binding.arguments)
            })
        }) else {
            return;
        };
        self.entries[id] = None;
        self.renew();
        let active = crate::sync::get_mut(&mut self.active);
        active.cache.clear();
        // Without an instance there is nothing to tell: the next one is built with the bindings left.
        let _ = active.instance.call_setup(|i| i.remove_binding(id as u32));
    }

    fn route(
        &self,
        routing_key: &str,
        message: &MessageRef,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.route_into(routing_key, message, out)
            .map_err(|f| RouteError(describe(&self.slot, &f)))
    }

    fn batch_limit(&self) -> usize {
        let refused = self.batches_refused_by.load(Ordering::Relaxed);
        if !self.schedules.load(Ordering::Relaxed)
            && (self.by_key.load(Ordering::Relaxed) || self.by_message.load(Ordering::Relaxed))
            && (refused == 0 || refused != self.slot.generation())
        {
            PREPARE_MAX
        } else {
            0
        }
    }

    fn prepare(&self, messages: &[&MessageRef]) -> Option<Prepared> {
        self.prepare_run(messages)
    }

    /// `schedule` (0.4.0 plugins whose `init` answered `schedules`). A fault routes now: the
    /// exchange's failure policy then applies to routing as for any message.
    fn schedule(&self, message: &MessageRef) -> Schedule {
        if !self.schedules.load(Ordering::Relaxed) && self.initialised.load(Ordering::Relaxed) {
            return Schedule::Now;
        }
        let mut active = crate::sync::lock(&self.active);
        if self.ensure(&mut active).is_err() || !self.schedules.load(Ordering::Relaxed) {
            return Schedule::Now;
        }
        let answer = self.with_instance(&mut active, true, |i| i.schedule(message));
        drop(active);
        let now = crate::clock::wall_ms();
        match answer {
            Ok(Due::After(ms)) if ms > 0 => Schedule::Later(now.saturating_add(ms)),
            Ok(Due::At(at)) if at > now => Schedule::Later(at),
            Ok(Due::Refuse(text)) => Schedule::Refused(text),
            _ => Schedule::Now,
        }
    }

    fn kv_entries(&self) -> Option<u64> {
        Some(self.kv.len())
    }

    fn deleted(&self) {
        self.kv.destroy();
    }

    fn route_prepared(
        &self,
        routing_key: &str,
        message: &MessageRef,
        prepared: &mut Prepared,
        out: &mut Vec<Destination>,
    ) -> Result<(), RouteError> {
        self.route_prepared_into(routing_key, message, prepared, out)
            .map_err(|f| RouteError(describe(&self.slot, &f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active() -> Active {
        let host = PluginHost::new(crate::plugin::Limits::default(), None, None).expect("host");
        let slot = host.slot(crate::plugin::Kind::Exchange, "x-test");
        Active {
            instance: EntityInstance::new(&host, &slot, "exchange 'test'".into()),
            routes_on: RoutesOn::RoutingKey,
            cache: HashMap::new(),
            hits: 0,
            misses: 0,
            bypass: 0,
        }
    }

    #[test]
    fn a_full_cache_whose_keys_rarely_repeat_is_bypassed() {
        let mut a = active();
        for i in 0..CACHE_KEYS {
            a.misses += 1;
            WasmExchange::remember(&mut a, &format!("k{i}"), vec![1]);
        }
        assert_eq!(a.cache.len(), CACHE_KEYS);
        a.misses += 1;
        WasmExchange::remember(&mut a, "one more", vec![2]);
        assert!(a.cache.is_empty(), "cleared, and the new key not inserted");
        assert_eq!(a.bypass, CACHE_BYPASS_CALLS);
        assert_eq!((a.hits, a.misses), (0, 0));
    }

    #[test]
    fn a_full_cache_that_pays_for_itself_is_cleared_and_kept_in_use() {
        let mut a = active();
        for i in 0..CACHE_KEYS {
            WasmExchange::remember(&mut a, &format!("k{i}"), vec![1]);
        }
        (a.hits, a.misses) = (5_000, 10_000);
        WasmExchange::remember(&mut a, "next", vec![3]);
        assert_eq!(a.bypass, 0);
        assert_eq!(a.cache.len(), 1);
        assert_eq!(a.cache.get("next"), Some(&vec![3]));
    }
}
