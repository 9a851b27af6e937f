//! Consumer-side plugins, as a queue uses them: a [`ConsumerFilter`] per consumer (`x-filter`) and an
//! [`Idempotency`] record per queue (`x-idempotency`).
//!
//! Each holds its own plugin instance (one store per consumer / queue) and rebuilds it when the
//! plugin's slot has a newer version or after a fault. Calls happen under the queue's lock, bounded by
//! the plugin call deadline. Failure policies (`../shared/DESIGN.md` §2; ARCHITECTURE.md "Plugins"):
//! a filter that faults either delivers or holds the message (consumer argument
//! `x-filter-on-failure`, default `hold`); an idempotency plugin that faults delivers (the message is
//! treated as having no key).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amq_protocol::types::FieldTable;

use crate::message::MessageRef;
use crate::plugin::bindings::Decision;
use crate::plugin::engine::table_body;
use crate::plugin::entity::EntityInstance;
use crate::plugin::instance::{Configurable, Instance};
use crate::plugin::worlds::{FilterWorld, IdempotencyWorld};
use crate::plugin::{Fault, Kind, PluginHost, Slot};
use crate::store::keys::KeyLog;

/// Why a plugin could not be attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachError {
    /// No loaded plugin of that kind has this name (sent as 404 NOT_FOUND).
    NotFound(String),
    /// The plugin refused its configuration, or faulted while reading it (sent as 406).
    Refused(String),
}

/// The loaded plugin `name` of `kind`, instantiated and initialised with `config`. `wait`: a plugin
/// still loading at start is waited for ([`PluginHost::loaded`]); recovery does not wait.
fn attach<W: Configurable>(
    host: &Arc<PluginHost>,
    kind: Kind,
    name: &str,
    config: &Vec<u8>,
    wait: bool,
) -> Result<(Arc<Slot>, Instance<W>), AttachError> {
    let slot = if wait {
        host.loaded(kind, name)
    } else {
        host.loaded_now(kind, name)
    };
    let slot =
        slot.ok_or_else(|| AttachError::NotFound(format!("no {kind} plugin '{name}' is loaded")))?;
    let instance = Instance::<W>::configured(host, &slot, config)
        .map_err(|f| AttachError::Refused(format!("{kind} plugin '{name}' failed: {f}")))?
        .map_err(AttachError::Refused)?;
    Ok((slot, instance))
}

/// What to do with a message when the consumer's filter faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Deliver it to this consumer.
    Deliver,
    /// Leave it in the queue (for other consumers, or for this one once the filter works again).
    Hold,
}

/// A filter's verdict on one message for one consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver to this consumer.
    Deliver,
    /// Leave it for others.
    Skip,
    /// Dead-letter (reason `rejected`) or drop.
    Reject,
}

/// Skip decisions remembered per consumer, so a waiting message is not re-filtered on every dispatch;
/// the set is cleared when it grows past this.
const SKIP_MEMORY: usize = 100_000;

#[derive(Debug)]
struct FilterState {
    instance: EntityInstance<FilterWorld>,
    /// Sequence numbers this consumer's filter skipped (valid for the instance's version).
    skipped: HashSet<u64>,
}

/// One consumer's filter: `x-filter` names the plugin, `x-filter-args` is its configuration.
#[derive(Debug)]
pub struct ConsumerFilter {
    /// The filter plugin's name (`x-filter`).
    plugin: String,
    config: Vec<u8>,
    on_failure: OnFailure,
    state: Mutex<FilterState>,
}

impl ConsumerFilter {
    /// Attaches the filter plugin `name` with `config` (the consumer's `x-filter-args`); `entity`
    /// describes the consumer in logs.
    ///
    /// # Errors
    /// [`AttachError::NotFound`] for an unknown plugin; [`AttachError::Refused`] when it refuses the
    /// configuration.
    pub fn attach(
        host: &Arc<PluginHost>,
        name: &str,
        config: &FieldTable,
        on_failure: OnFailure,
        entity: String,
    ) -> Result<ConsumerFilter, AttachError> {
        let config = table_body(config);
        let (slot, instance) = attach::<FilterWorld>(host, Kind::Filter, name, &config, true)?;
        Ok(ConsumerFilter {
            plugin: name.to_owned(),
            config,
            on_failure,
            state: Mutex::new(FilterState {
                instance: EntityInstance::with(host, &slot, entity, instance),
                skipped: HashSet::new(),
            }),
        })
    }

    /// The filter plugin's name (`x-filter`).
    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// A current instance; skip decisions of an older one are forgotten.
    fn ensure(&self, state: &mut FilterState) -> Result<(), Fault> {
        let rebuilt = state
            .instance
            .ensure_configured(&self.config, "the consumer's x-filter-args");
        if !matches!(rebuilt, Ok(false)) {
            state.skipped.clear();
        }
        rebuilt.map(|_| ())
    }

    /// The verdict for the message with sequence number `seq`.
    pub fn decide(&self, seq: u64, message: &MessageRef) -> Verdict {
        let mut state = crate::sync::lock(&self.state);
        let decision = self.ensure(&mut state).and_then(|()| {
            if state.skipped.contains(&seq) {
                return Ok(Decision::Skip);
            }
            state.instance.call(|i| i.filter(message))
        });
        match decision {
            Ok(Decision::Deliver) => Verdict::Deliver,
            Ok(Decision::Skip) => {
                if state.skipped.len() >= SKIP_MEMORY {
                    state.skipped.clear();
                }
                state.skipped.insert(seq);
                Verdict::Skip
            }
            Ok(Decision::Reject) => Verdict::Reject,
            Err(_) => {
                // The fault was counted and logged by the instance, which is rebuilt on next use.
                match self.on_failure {
                    OnFailure::Deliver => Verdict::Deliver,
                    OnFailure::Hold => Verdict::Skip,
                }
            }
        }
    }
}

/// An idempotency key, as the plugin derived it.
pub(crate) type Key = Arc<[u8]>;

/// The bounds of the key record (queue arguments `x-idempotency-window` in ms and
/// `x-idempotency-max-keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// How long an acked key is remembered.
    pub time: Duration,
    /// How many acked keys are remembered at most (the oldest are forgotten first).
    pub max_keys: usize,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            time: Duration::from_secs(3600),
            max_keys: 100_000,
        }
    }
}

/// What the queue should do with a ready message, as far as idempotency goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// No key, or a key not seen: deliver (and track the key while unacked).
    Fresh(Option<Key>),
    /// A delivery with the same key is unacked: the message waits.
    Wait,
    /// The key was acked within the window: the message is a duplicate.
    Duplicate,
}

#[derive(Debug)]
struct IdempotencyState {
    instance: EntityInstance<IdempotencyWorld>,
    /// Keys of ready messages, computed once per message (by sequence number).
    pending: HashMap<u64, Option<Key>>,
    /// Keys of delivered, unacked messages (by sequence number) and how many carry each key.
    inflight: HashMap<u64, Key>,
    inflight_keys: HashMap<Key, u32>,
    /// Acked keys with when they were recorded, oldest first in `order`.
    recorded: HashMap<Key, Instant>,
    order: VecDeque<(Instant, Key)>,
}

impl IdempotencyState {
    fn new(instance: EntityInstance<IdempotencyWorld>) -> Self {
        IdempotencyState {
            instance,
            pending: HashMap::new(),
            inflight: HashMap::new(),
            inflight_keys: HashMap::new(),
            recorded: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

/// A queue's idempotency: the plugin derives keys; the record of acked keys is the broker's (and, for
/// a durable queue, on disk: `store::keys`).
#[derive(Debug)]
pub struct Idempotency {
    config: Vec<u8>,
    window: Window,
    keys: Option<KeyLog>,
    state: Mutex<IdempotencyState>,
}

impl Idempotency {
    /// Attaches the idempotency plugin `name` with `config` (the queue's `x-idempotency-args`);
    /// `entity` describes the queue in logs; `wait`: a plugin still loading at start is waited for
    /// (not during recovery).
    ///
    /// # Errors
    /// [`AttachError::NotFound`] for an unknown plugin; [`AttachError::Refused`] when it refuses the
    /// configuration.
    pub fn attach(
        host: &Arc<PluginHost>,
        name: &str,
        config: &FieldTable,
        window: Window,
        entity: String,
        wait: bool,
    ) -> Result<Idempotency, AttachError> {
        let config = table_body(config);
        let (slot, instance) =
            attach::<IdempotencyWorld>(host, Kind::Idempotency, name, &config, wait)?;
        Ok(Idempotency {
            config,
            window,
            keys: None,
            state: Mutex::new(IdempotencyState::new(EntityInstance::with(
                host, &slot, entity, instance,
            ))),
        })
    }

    /// Idempotency for a recovered queue whose plugin is not loaded: no keys (every message is
    /// delivered) until a plugin of that name is loaded.
    pub fn unavailable(
        host: &Arc<PluginHost>,
        name: &str,
        config: &FieldTable,
        window: Window,
        entity: String,
    ) -> Idempotency {
        let slot = host.slot(Kind::Idempotency, name);
        Idempotency {
            config: table_body(config),
            window,
            keys: None,
            state: Mutex::new(IdempotencyState::new(EntityInstance::new(
                host, &slot, entity,
            ))),
        }
    }

    /// Keeps the record of acked keys in `log` (a durable queue), starting from the `recovered` keys
    /// (recorded-at wall-clock ms, key) that are still inside the window.
    pub fn with_key_log(
        mut self,
        log: KeyLog,
        recovered: Vec<crate::store::keys::RecordedKey>,
    ) -> Self {
        {
            let state = crate::sync::get_mut(&mut self.state);
            let (now, wall) = (Instant::now(), crate::clock::wall_ms());
            for (at_ms, key) in recovered {
                let age = Duration::from_millis(wall.saturating_sub(at_ms));
                if age >= self.window.time {
                    continue;
                }
                let at = now.checked_sub(age).unwrap_or(now);
                let key: Key = key.into();
                state.recorded.insert(Arc::clone(&key), at);
                state.order.push_back((at, key));
            }
            Self::expire(self.window, state, now);
        }
        self.keys = Some(log);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdempotencyState> {
        crate::sync::lock(&self.state)
    }

    fn key_of(&self, state: &mut IdempotencyState, message: &MessageRef) -> Option<Key> {
        // Failure policy: no key → delivered.
        state
            .instance
            .ensure_configured(&self.config, "the queue's x-idempotency-args")
            .ok()?;
        state.instance.call(|i| i.key(message)).ok()?.map(Key::from)
    }

    fn expire(window: Window, state: &mut IdempotencyState, now: Instant) {
        while let Some((at, _)) = state.order.front() {
            let expired = now.duration_since(*at) >= window.time;
            if !expired && state.order.len() <= window.max_keys {
                break;
            }
            if let Some((at, key)) = state.order.pop_front() {
                if state.recorded.get(&key) == Some(&at) {
                    state.recorded.remove(&key);
                }
            }
        }
    }

    /// Checks a ready message before it is delivered.
    pub fn check(&self, seq: u64, message: &MessageRef) -> KeyCheck {
        let mut state = self.lock();
        let key = match state.pending.get(&seq) {
            Some(k) => k.clone(),
            None => {
                let k = self.key_of(&mut state, message);
                state.pending.insert(seq, k.clone());
                k
            }
        };
        let Some(key) = key else {
            return KeyCheck::Fresh(None);
        };
        Self::expire(self.window, &mut state, Instant::now());
        if state.recorded.contains_key(&key) {
            state.pending.remove(&seq);
            KeyCheck::Duplicate
        } else if state.inflight_keys.contains_key(&key) {
            KeyCheck::Wait
        } else {
            KeyCheck::Fresh(Some(key))
        }
    }

    /// The message `seq` was delivered with `key`: it stays in flight until acked or returned. A
    /// no-ack delivery is recorded at once.
    pub fn delivered(&self, seq: u64, key: Option<Key>, no_ack: bool) {
        let mut state = self.lock();
        state.pending.remove(&seq);
        let Some(key) = key else { return };
        if no_ack {
            self.persist(&state, std::slice::from_ref(&key));
            Self::record(&mut state, key);
        } else {
            *state.inflight_keys.entry(Arc::clone(&key)).or_insert(0) += 1;
            state.inflight.insert(seq, key);
        }
    }

    fn record(state: &mut IdempotencyState, key: Key) {
        let now = Instant::now();
        state.recorded.insert(Arc::clone(&key), now);
        state.order.push_back((now, key));
    }

    fn release(state: &mut IdempotencyState, seq: u64) -> Option<Key> {
        let key = state.inflight.remove(&seq)?;
        if let Some(n) = state.inflight_keys.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                state.inflight_keys.remove(&key);
            }
        }
        Some(key)
    }

    /// Deliveries were acked: their keys are recorded.
    pub fn acked(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        let mut keys = Vec::new();
        for seq in seqs {
            if let Some(key) = Self::release(&mut state, seq) {
                keys.push(key);
            }
        }
        self.persist(&state, &keys);
        for key in keys {
            Self::record(&mut state, key);
        }
    }

    /// Writes newly recorded keys to the durable record, compacting it when it has grown.
    fn persist(&self, state: &IdempotencyState, keys: &[Key]) {
        let Some(log) = &self.keys else { return };
        if keys.is_empty() {
            return;
        }
        let (now, wall) = (Instant::now(), crate::clock::wall_ms());
        log.append(wall, keys.iter().map(|k| &k[..]));
        log.compact(state.recorded.len() + keys.len(), || {
            let mut live: Vec<(u64, &[u8])> = state
                .order
                .iter()
                .filter(|(at, k)| state.recorded.get(k) == Some(at))
                .map(|(at, k)| {
                    let age = u64::try_from(now.duration_since(*at).as_millis()).unwrap_or(0);
                    (wall.saturating_sub(age), &k[..])
                })
                .collect();
            live.extend(keys.iter().map(|k| (wall, &k[..])));
            live
        });
    }

    /// Deliveries came back (requeued) or were rejected: their keys are not recorded.
    pub fn returned(&self, seqs: impl IntoIterator<Item = u64>) {
        let mut state = self.lock();
        for seq in seqs {
            Self::release(&mut state, seq);
        }
    }

    /// Forgets cached keys of ready messages that left the queue some other way (purge, expiry).
    pub fn forget_pending(&self, ready: usize) {
        let mut state = self.lock();
        if state.pending.len() > ready.saturating_mul(2) + 1024 {
            state.pending.clear();
        }
    }

    /// Keys recorded now (for tests and the management snapshot).
    pub fn recorded_keys(&self) -> usize {
        self.lock().recorded.len()
    }
}
