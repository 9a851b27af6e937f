//! Which plugin versions are live: one [`Slot`] per (kind, name), holding the current version behind an
//! atomic pointer. Loading a file swaps the slot's version; instances notice the new generation on
//! their next call and rebuild (so calls in flight finish on the old version). A file that fails to
//! load leaves the old version in place; a removed file empties its slot, which makes exchanges of that
//! type unavailable until a plugin of that name returns. Faults are counted per slot and per entity
//! (`super::health`): an entity whose calls keep failing is quarantined, and a plugin with
//! [`QUARANTINE_ENTITIES`] entities quarantined is quarantined as a whole, until its file is rewritten
//! or touched.
//!
//! One name, one file: a second file that claims the name of a plugin another file provides is
//! refused (logged with both files) and waits; when the first file is removed, the waiting one is
//! loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use tracing::{error, info, warn};

use super::engine::{Fault, Limits, Runtime};
use super::kv::{DirtyStores, KvStore};
use super::loader::{self, CompileCache, Kind, Loaded};
use crate::rate::TokenBucket;

/// Entities quarantined (since the plugin's file last changed) after which the plugin itself is
/// quarantined: failing in that many places is a broken plugin, not a poison message. Every call of a
/// quarantined plugin fails fast, and new entities of it are refused, until its file is rewritten or
/// touched.
pub const QUARANTINE_ENTITIES: u64 = 3;

/// One loaded version of a plugin, as a slot holds it.
#[derive(Debug)]
pub struct Version {
    /// The compiled plugin and what it says about itself.
    pub loaded: Loaded,
    /// The file it came from.
    pub file: PathBuf,
    /// Increases with every version loaded into any slot; instances compare it to know they are stale.
    pub generation: u64,
}

/// Counters of one plugin (all versions), for logs and the management snapshot.
#[derive(Debug, Default)]
pub struct Stats {
    /// Calls made into the plugin.
    pub calls: AtomicU64,
    /// Calls that trapped (panic, bad access, …).
    pub traps: AtomicU64,
    /// Calls stopped by the deadline.
    pub timeouts: AtomicU64,
    /// Calls stopped by the memory cap.
    pub memory: AtomicU64,
    /// Versions loaded after the first.
    pub reloads: AtomicU64,
    /// Answers that broke the contract without failing: unknown or repeated binding ids, a
    /// `route-keys` answer of the wrong shape.
    pub breaches: AtomicU64,
}

/// The live version of one plugin name, and its health.
#[derive(Debug)]
pub struct Slot {
    /// Plugin kind.
    pub kind: Kind,
    /// Exchange type or filter / idempotency name.
    pub name: String,
    current: ArcSwapOption<Version>,
    /// Counters.
    pub stats: Stats,
    /// Increases whenever the file is loaded, removed, rewritten or touched: quarantines taken at an
    /// older count are lifted.
    lifts: AtomicU64,
    /// Entities quarantined since the last lift (the plugin is quarantined at
    /// [`QUARANTINE_ENTITIES`]).
    entity_quarantines: AtomicU64,
    /// Entities quarantined now (for the snapshot).
    entities_quarantined: AtomicU64,
    /// The memory cap of new instances, octets (0: the configured `plugin_memory_limit`).
    memory_cap: AtomicUsize,
    quarantined: AtomicBool,
    /// When a contract breach was last logged (wall-clock ms; 0: never): breaches are logged at most
    /// once per [`BREACH_LOG_INTERVAL_MS`].
    breach_logged_at: AtomicU64,
    /// Fault log lines: [`FAULT_LOG_BURST`], then [`FAULT_LOGS_PER_SECOND`]; the faults not logged
    /// since the last line.
    fault_log: Mutex<(TokenBucket, u64)>,
}

/// Fault lines a plugin may log at once (every fault is counted).
pub const FAULT_LOG_BURST: f64 = 20.0;

/// Fault lines a plugin may log per second after the burst.
pub const FAULT_LOGS_PER_SECOND: f64 = 1.0;

/// At most one log line per plugin per this many milliseconds about contract breaches (every breach
/// is counted).
pub const BREACH_LOG_INTERVAL_MS: u64 = 10_000;

impl Slot {
    fn new(kind: Kind, name: &str) -> Slot {
        Slot {
            kind,
            name: name.to_owned(),
            current: ArcSwapOption::empty(),
            stats: Stats::default(),
            lifts: AtomicU64::new(0),
            entity_quarantines: AtomicU64::new(0),
            entities_quarantined: AtomicU64::new(0),
            memory_cap: AtomicUsize::new(0),
            quarantined: AtomicBool::new(false),
            breach_logged_at: AtomicU64::new(0),
            fault_log: Mutex::new((TokenBucket::new(FAULT_LOG_BURST, FAULT_LOGS_PER_SECOND), 0)),
        }
    }

    /// Counts an answer that broke the plugin contract without failing (`what` says how) and logs it,
    /// at most once per [`BREACH_LOG_INTERVAL_MS`] with the count so far. Not a fault: the answer's
    /// usable part is used, the instance kept.
    pub fn record_breach(&self, what: impl std::fmt::Display) {
        let total = self.stats.breaches.fetch_add(1, Ordering::Relaxed) + 1;
        let now = crate::clock::wall_ms();
        let last = self.breach_logged_at.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= BREACH_LOG_INTERVAL_MS)
            && self
                .breach_logged_at
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn!(plugin = %self.name, kind = %self.kind, breaches = total, "plugin broke its contract: {what}");
        }
    }

    /// The current version, or why there is none to call.
    ///
    /// # Errors
    /// [`Fault::Unavailable`] when no file provides the plugin or it is quarantined.
    pub fn current(&self) -> Result<Arc<Version>, Fault> {
        if self.quarantined.load(Ordering::Relaxed) {
            return Err(Fault::Unavailable(format!(
                "plugin '{}' is quarantined: {QUARANTINE_ENTITIES} of its entities kept failing; \
                 touch or replace its file to lift",
                self.name
            )));
        }
        self.current.load_full().ok_or_else(|| {
            Fault::Unavailable(format!("no plugin provides {} '{}'", self.kind, self.name))
        })
    }

    /// Whether a version is loaded (quarantined or not).
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// The generation of the current version (0 when none).
    pub fn generation(&self) -> u64 {
        self.current.load().as_ref().map_or(0, |v| v.generation)
    }

    /// Counts a call that returned.
    pub fn record_success(&self) {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
    }

    /// The lift count: it changes whenever the plugin's file is loaded, removed, rewritten or
    /// touched, which lifts every quarantine taken before.
    pub fn lifts(&self) -> u64 {
        self.lifts.load(Ordering::Relaxed)
    }

    /// An entity of this plugin (`entity` describes it) was quarantined with `failures` of its last
    /// `calls` calls failed: logged, and the plugin is quarantined when this makes
    /// [`QUARANTINE_ENTITIES`] since the last lift.
    pub fn entity_quarantined(&self, entity: &str, failures: u32, calls: u32) {
        self.entities_quarantined.fetch_add(1, Ordering::Relaxed);
        error!(plugin = %self.name, kind = %self.kind, entity, "{entity} quarantined: {failures} of its last {calls} plugin calls failed; its calls fail fast until the plugin's file is touched or replaced");
        let n = self.entity_quarantines.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= QUARANTINE_ENTITIES && !self.quarantined.swap(true, Ordering::Relaxed) {
            error!(plugin = %self.name, kind = %self.kind, "plugin quarantined: {n} of its entities were quarantined; touch or replace its file to load it again");
        }
    }

    /// The memory cap of this plugin's new instances, octets: the configured limit, raised by
    /// [`Slot::raise_memory_cap`].
    pub fn memory_cap(&self, limits: &Limits) -> usize {
        match self.memory_cap.load(Ordering::Relaxed) {
            0 => limits.memory_bytes,
            cap => cap,
        }
    }

    /// An instance breached its memory cap: the plugin's next instances get twice the cap, up to
    /// `limits.memory_ceiling_bytes` (logged when it changes). A garbage-collected plugin whose
    /// steady state needs more than the configured limit breaches a few times, not every few
    /// thousand calls; one that grows without bound keeps breaching at the ceiling.
    pub fn raise_memory_cap(&self, limits: &Limits) {
        let cap_of = |stored: usize| match stored {
            0 => limits.memory_bytes,
            cap => cap,
        };
        let raised = self
            .memory_cap
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |stored| {
                let cap = cap_of(stored);
                let raised = cap.saturating_mul(2).min(limits.memory_ceiling_bytes);
                (raised > cap).then_some(raised)
            });
        if let Ok(before) = raised {
            let (from, to) = (cap_of(before), self.memory_cap(limits));
            info!(plugin = %self.name, kind = %self.kind, from, to, ceiling = limits.memory_ceiling_bytes, "plugin memory cap raised after a breach (octets per instance)");
        }
    }

    /// A quarantined entity was lifted or went away.
    pub fn entity_released(&self) {
        self.entities_quarantined.fetch_sub(1, Ordering::Relaxed);
    }

    /// Counts a failed call and logs it, at most [`FAULT_LOG_BURST`] lines at once then
    /// [`FAULT_LOGS_PER_SECOND`] (each line says how many faults were not logged before it); the
    /// entity's failure rate is its own (`super::health`).
    pub fn record_fault(&self, fault: &Fault, version: &str) {
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        let counter = match fault {
            Fault::Timeout => &self.stats.timeouts,
            Fault::Memory => &self.stats.memory,
            Fault::Trap(_) => &self.stats.traps,
            Fault::Unavailable(_) => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let not_logged = {
            let mut log = crate::sync::lock(&self.fault_log);
            if log.0.take(std::time::Instant::now()) {
                Some(std::mem::take(&mut log.1))
            } else {
                log.1 += 1;
                None
            }
        };
        if let Some(not_logged) = not_logged {
            warn!(plugin = %self.name, kind = %self.kind, version, %fault, not_logged, "plugin call failed; instance replaced");
        }
    }

    /// Lifts every quarantine (the plugin's and its entities'): a new count for entities to compare.
    fn lift(&self) {
        self.lifts.fetch_add(1, Ordering::Relaxed);
        self.entity_quarantines.store(0, Ordering::Relaxed);
    }

    fn install(&self, version: Option<Arc<Version>>) {
        self.lift();
        if self.quarantined.swap(false, Ordering::Relaxed) {
            info!(plugin = %self.name, kind = %self.kind, "plugin quarantine lifted: its file changed");
        }
        self.current.store(version);
    }

    /// Lifts quarantines, if any, without a new version (the file was touched or rewritten with the
    /// same content, or an operator asked); `why` says which, for the log.
    fn lift_quarantine(&self, why: &str) {
        let entities = self.entities_quarantined.load(Ordering::Relaxed);
        self.lift();
        if self.quarantined.swap(false, Ordering::Relaxed) || entities > 0 {
            info!(plugin = %self.name, kind = %self.kind, entities, "plugin quarantine lifted: {why}");
        }
    }

    /// The file the current version came from.
    fn file(&self) -> Option<PathBuf> {
        self.current.load().as_ref().map(|v| v.file.clone())
    }
}

#[derive(Debug)]
struct FileState {
    /// SHA-256 of the content last read (set before compiling, so a concurrent event for the same
    /// content does not compile it again).
    hash: String,
    /// The slot the file's last good version went to.
    slot: Option<(Kind, String)>,
    /// Refused because another file provides this plugin: loaded when that file is removed.
    waiting_for: Option<(Kind, String)>,
}

impl FileState {
    /// A file just read, with content `hash`, that provides nothing yet.
    fn read(hash: &str) -> FileState {
        FileState {
            hash: hash.to_owned(),
            slot: None,
            waiting_for: None,
        }
    }
}

/// The state of one plugin, as the management API will serve it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginStatus {
    /// Exchange type or filter / idempotency name.
    pub name: String,
    /// Plugin kind.
    pub kind: Kind,
    /// The package version of the contract the loaded version targets.
    pub package: Option<super::worlds::Package>,
    /// `loaded`, `unavailable` (no file provides it) or `quarantined`.
    pub state: &'static str,
    /// The plugin's version string.
    pub version: Option<String>,
    /// SHA-256 of the loaded file.
    pub hash: Option<String>,
    /// The loaded file.
    pub file: Option<PathBuf>,
    /// Seconds since the Unix epoch at which the current version was loaded.
    pub loaded_at: Option<u64>,
    /// Calls made (all versions).
    pub calls: u64,
    /// Traps.
    pub traps: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// Memory-cap breaches.
    pub memory: u64,
    /// The memory cap of new instances, octets (raised after breaches, up to the ceiling).
    pub memory_cap: u64,
    /// Reloads.
    pub reloads: u64,
    /// Contract breaches (unknown or repeated binding ids, ill-formed batch answers).
    pub breaches: u64,
    /// Entities of this plugin (exchanges, consumers, queues) quarantined now.
    pub entities_quarantined: u64,
    /// Where the current version's compiled code came from (`cache-hit`, `compiled`,
    /// `compiled-uncached`).
    pub compiled: Option<loader::Source>,
    /// Milliseconds the current version took to compile or to read from the cache.
    pub compile_ms: Option<u64>,
}

/// The plugin host: runtime, slots, and the files they were loaded from.
#[derive(Debug)]
pub struct PluginHost {
    runtime: Runtime,
    dir: Option<PathBuf>,
    cache: Option<CompileCache>,
    slots: RwLock<HashMap<(Kind, String), Arc<Slot>>>,
    files: Mutex<HashMap<PathBuf, FileState>>,
    generation: AtomicU64,
    /// True while the plugin directory's initial load runs ([`PluginHost::start_loading`]).
    initial_load: Mutex<bool>,
    initial_loaded: Condvar,
    /// Key-value stores whose journals have records to write (the flusher thread writes them every
    /// [`KV_FLUSH_INTERVAL`]).
    kv_dirty: Arc<DirtyStores>,
}

/// How often buffered changes of persistent plugin key-value stores are written and fsynced.
pub const KV_FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Flushes every store listed in `dirty` (a store dropped meanwhile has nothing left to write).
fn flush_all(dirty: &DirtyStores) {
    let listed = std::mem::take(&mut *crate::sync::lock(dirty));
    for kv in listed.iter().filter_map(Weak::upgrade) {
        kv.flush();
    }
}

/// Most plugin files compiled at once by the initial load.
pub const LOAD_THREADS: usize = 2;

impl PluginHost {
    /// A key-value store for `entity` (`host` interface, package 0.4.0) within the configured quota;
    /// `dir`: where its journal lives when the entity is durable. Its buffered changes are written
    /// every [`KV_FLUSH_INTERVAL`] and by [`PluginHost::flush_kv`].
    pub fn kv_store(&self, entity: String, dir: Option<PathBuf>) -> Arc<KvStore> {
        KvStore::open(entity, self.runtime.limits.kv, dir, &self.kv_dirty)
    }

    /// Writes every key-value store's buffered changes now (at shutdown).
    pub fn flush_kv(&self) {
        flush_all(&self.kv_dirty);
    }

    /// A host with no plugins loaded yet; `dir` is the plugin directory (none: no plugins),
    /// `cache_dir` where compiled plugins are kept across restarts (none: compiled at every load).
    ///
    /// # Errors
    /// The wasmtime engine could not be built.
    pub fn new(
        limits: Limits,
        dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
    ) -> anyhow::Result<Arc<PluginHost>> {
        let runtime = Runtime::new(limits)?;
        let cache = cache_dir.map(|d| CompileCache::new(d, &runtime.engine));
        let kv_dirty: Arc<DirtyStores> = Arc::default();
        let flushed = Arc::downgrade(&kv_dirty);
        std::thread::Builder::new()
            .name("warren-plugin-kv".into())
            .spawn(move || loop {
                std::thread::sleep(KV_FLUSH_INTERVAL);
                let Some(stores) = flushed.upgrade() else {
                    return;
                };
                flush_all(&stores);
            })?;
        Ok(Arc::new(PluginHost {
            kv_dirty,
            runtime,
            dir,
            cache,
            slots: RwLock::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            initial_load: Mutex::new(false),
            initial_loaded: Condvar::new(),
        }))
    }

    /// Loads the plugin directory in the background (at start): the broker recovers its durable
    /// state and serves AMQP meanwhile, with the exchanges of plugin types not loaded yet unavailable
    /// until they are. A client's lookup of a plugin that is not loaded ([`PluginHost::loaded`]) waits
    /// for this load to end first, so a declare sent right after start finds a plugin that is still
    /// compiling.
    ///
    /// # Errors
    /// The loading thread could not be started.
    pub fn start_loading(self: &Arc<Self>) -> std::io::Result<()> {
        *crate::sync::lock(&self.initial_load) = true;
        let host = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("warren-plugin-load".into())
            .spawn(move || {
                host.load_dir();
                *crate::sync::lock(&host.initial_load) = false;
                host.initial_loaded.notify_all();
            });
        if spawned.is_err() {
            *crate::sync::lock(&self.initial_load) = false;
        }
        spawned.map(drop)
    }

    /// Lifts the quarantine of the loaded plugin `name` and of its entities, as a touch of its file
    /// would (the management API's `DELETE …/quarantine`; `by` names who asked, for the log).
    /// Returns false when no such plugin is loaded.
    pub fn lift_quarantine(&self, kind: Kind, name: &str, by: &str) -> bool {
        let Some(slot) = self.loaded_now(kind, name) else {
            return false;
        };
        slot.lift_quarantine(&format!("lifted through the management API by '{by}'"));
        true
    }

    /// Whether the initial load started by [`PluginHost::start_loading`] is still running.
    pub fn initial_load_running(&self) -> bool {
        *crate::sync::lock(&self.initial_load)
    }

    /// Waits until the initial load started by [`PluginHost::start_loading`] has ended (at once when
    /// none runs). Blocking: waits off the Tokio worker.
    pub fn wait_initial_load(&self) {
        let mut loading = crate::sync::lock(&self.initial_load);
        if !*loading {
            return;
        }
        crate::sync::off_worker(|| {
            while *loading {
                loading = self
                    .initial_loaded
                    .wait(loading)
                    .unwrap_or_else(|e| e.into_inner());
            }
        });
    }

    /// The engine, linker and limits.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The plugin directory.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The slot of a loaded plugin (one with a current version, quarantined or not). When it is not
    /// loaded and the initial load is still running, waits for that to end and looks again (see
    /// [`PluginHost::start_loading`]).
    pub fn loaded(&self, kind: Kind, name: &str) -> Option<Arc<Slot>> {
        self.loaded_now(kind, name).or_else(|| {
            if !*crate::sync::lock(&self.initial_load) {
                return None;
            }
            self.wait_initial_load();
            self.loaded_now(kind, name)
        })
    }

    /// [`PluginHost::loaded`] without waiting for the initial load (for recovery, which must not
    /// wait for plugins to compile).
    pub fn loaded_now(&self, kind: Kind, name: &str) -> Option<Arc<Slot>> {
        crate::sync::read(&self.slots)
            .get(&(kind, name.to_owned()))
            .filter(|s| s.is_loaded())
            .cloned()
    }

    /// The slot for `name`, created empty if no plugin of that name was ever loaded (for entities
    /// recovered before their plugin is back).
    pub fn slot(&self, kind: Kind, name: &str) -> Arc<Slot> {
        Arc::clone(
            crate::sync::write(&self.slots)
                .entry((kind, name.to_owned()))
                .or_insert_with(|| Arc::new(Slot::new(kind, name))),
        )
    }

    /// Loads every `.wasm` file in the plugin directory, [`LOAD_THREADS`] files at a time, and then
    /// removes compile cache entries that no file of the directory needs.
    pub fn load_dir(&self) {
        let Some(dir) = &self.dir else { return };
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) => {
                error!(dir = %dir.display(), error = %e, "cannot read the plugin directory");
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| is_plugin_file(p))
            .collect();
        paths.sort();
        let next = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..LOAD_THREADS.min(paths.len()) {
                scope.spawn(|| {
                    while let Some(p) = paths.get(next.fetch_add(1, Ordering::Relaxed)) {
                        self.file_changed(p);
                    }
                });
            }
        });
        if let Some(cache) = &self.cache {
            let keep = crate::sync::lock(&self.files)
                .values()
                .map(|f| f.hash.clone())
                .collect();
            let removed = cache.prune(&keep);
            if removed > 0 {
                info!(dir = %cache.dir().display(), removed, "plugin compile cache: entries of files no longer present removed");
            }
        }
    }

    /// Reacts to a created or changed file: loads it unless its content is what is already loaded.
    /// A file that fails to load is logged and leaves the old version running.
    pub fn file_changed(&self, path: &Path) {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.file_removed(path),
            Err(e) => {
                error!(file = %path.display(), error = %e, "plugin not loaded: cannot read the file");
                return;
            }
        };
        let hash = loader::content_hash(&bytes);
        {
            let mut files = crate::sync::lock(&self.files);
            match files.get_mut(path) {
                Some(f) if f.hash == hash => {
                    // Unchanged content (a touch, or a rewrite with the same bytes): nothing to
                    // compile, but it lifts a quarantine of the plugin this file provides.
                    let slot = f
                        .slot
                        .as_ref()
                        .and_then(|k| crate::sync::read(&self.slots).get(k).cloned());
                    if let Some(slot) = slot.filter(|s| s.file().as_deref() == Some(path)) {
                        slot.lift_quarantine(&format!("its file {} was touched", path.display()));
                    }
                    return;
                }
                Some(f) => f.hash.clone_from(&hash),
                None => {
                    files.insert(path.to_owned(), FileState::read(&hash));
                }
            }
        }
        let loaded = match loader::load(&self.runtime, path, &bytes, self.cache.as_ref()) {
            Ok(l) => l,
            Err(e) => {
                error!(file = %path.display(), hash = %&hash[..16], "plugin refused, previous version (if any) kept: {e:#}");
                return;
            }
        };
        let key = (loaded.kind, loaded.name.clone());
        let slot = self.slot(loaded.kind, &loaded.name);
        let owner = slot.file().filter(|f| f != path);
        let previous = {
            let mut files = crate::sync::lock(&self.files);
            let state = files
                .entry(path.to_owned())
                .or_insert_with(|| FileState::read(&hash));
            let previous = state.slot.take();
            if owner.is_some() {
                state.waiting_for = Some(key.clone());
            } else {
                state.slot = Some(key.clone());
                state.waiting_for = None;
            }
            previous
        };
        if let Some(prev) = previous.filter(|p| *p != key) {
            // The file now holds another plugin: the old name loses this file's version.
            self.empty_slot_of(path, &prev);
        }
        if let Some(owner) = owner {
            error!(
                plugin = %loaded.name,
                kind = %loaded.kind,
                file = %path.display(),
                loaded_from = %owner.display(),
                "plugin refused: {} '{}' is already provided by {}; this file is loaded once that one is removed",
                loaded.kind,
                loaded.name,
                owner.display()
            );
            return;
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let reload = slot.is_loaded();
        if reload {
            slot.stats.reloads.fetch_add(1, Ordering::Relaxed);
        }
        info!(
            plugin = %loaded.name,
            kind = %loaded.kind,
            version = %loaded.version,
            hash = %&hash[..16],
            file = %path.display(),
            cache = %loaded.compiled.source,
            compile_ms = loaded.compiled.took.as_millis() as u64,
            "{}",
            if reload { "plugin reloaded" } else { "plugin loaded" }
        );
        slot.install(Some(Arc::new(Version {
            loaded,
            file: path.to_owned(),
            generation,
        })));
    }

    /// Reacts to a removed file: its plugin becomes unavailable (entities using it stay declared),
    /// unless another file was waiting to provide it: that one is loaded.
    pub fn file_removed(&self, path: &Path) {
        let state = crate::sync::lock(&self.files).remove(path);
        let Some(key) = state.and_then(|s| s.slot) else {
            return;
        };
        self.empty_slot_of(path, &key);
        let waiting = {
            let mut files = crate::sync::lock(&self.files);
            let mut waiting: Vec<&PathBuf> = files
                .iter()
                .filter(|(_, f)| f.waiting_for.as_ref() == Some(&key))
                .map(|(p, _)| p)
                .collect();
            waiting.sort();
            let next = waiting.first().map(|p| (*p).clone());
            if let Some(p) = &next {
                // Forget its content so that reading it again loads it.
                files.remove(p);
            }
            next
        };
        if let Some(next) = waiting {
            info!(plugin = %key.1, kind = %key.0, file = %next.display(), "loading the plugin file that was waiting for this name");
            self.file_changed(&next);
        }
    }

    fn empty_slot_of(&self, path: &Path, key: &(Kind, String)) {
        let slot = crate::sync::read(&self.slots).get(key).cloned();
        if let Some(slot) = slot {
            let from_this_file = slot.current.load().as_ref().is_some_and(|v| v.file == path);
            if from_this_file {
                warn!(plugin = %key.1, kind = %key.0, file = %path.display(), "plugin file removed: plugin unavailable until it returns");
                self.generation.fetch_add(1, Ordering::Relaxed);
                slot.install(None);
            }
        }
    }

    /// Every plugin known, loaded or not, with its counters.
    pub fn snapshot(&self) -> Vec<PluginStatus> {
        let slots = crate::sync::read(&self.slots);
        let mut out: Vec<PluginStatus> = slots
            .values()
            .map(|s| {
                let v = s.current.load_full();
                let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
                PluginStatus {
                    name: s.name.clone(),
                    kind: s.kind,
                    state: match (&v, s.quarantined.load(Ordering::Relaxed)) {
                        (None, _) => "unavailable",
                        (Some(_), true) => "quarantined",
                        (Some(_), false) => "loaded",
                    },
                    package: v.as_ref().map(|v| v.loaded.package),
                    version: v.as_ref().map(|v| v.loaded.version.clone()),
                    hash: v.as_ref().map(|v| v.loaded.hash.clone()),
                    file: v.as_ref().map(|v| v.file.clone()),
                    loaded_at: v.as_ref().and_then(|v| {
                        v.loaded
                            .loaded_at
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .ok()
                            .map(|d| d.as_secs())
                    }),
                    calls: n(&s.stats.calls),
                    traps: n(&s.stats.traps),
                    timeouts: n(&s.stats.timeouts),
                    memory: n(&s.stats.memory),
                    memory_cap: u64::try_from(s.memory_cap(&self.runtime.limits))
                        .unwrap_or(u64::MAX),
                    reloads: n(&s.stats.reloads),
                    breaches: n(&s.stats.breaches),
                    entities_quarantined: n(&s.entities_quarantined),
                    compiled: v.as_ref().map(|v| v.loaded.compiled.source),
                    compile_ms: v.as_ref().map(|v| {
                        u64::try_from(v.loaded.compiled.took.as_millis()).unwrap_or(u64::MAX)
                    }),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Whether `path` names a plugin file (`*.wasm`; temporary and hidden files are ignored).
pub fn is_plugin_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "wasm")
        && !path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_all_counted_and_logged_at_a_rate_limit() {
        let slot = Slot::new(Kind::Exchange, "x-test");
        for _ in 0..25 {
            slot.record_fault(&Fault::Trap("boom".into()), "1");
        }
        assert_eq!(slot.stats.traps.load(Ordering::Relaxed), 25);
        assert_eq!(
            crate::sync::lock(&slot.fault_log).1,
            5,
            "a burst of 20 lines; the other 5 faults wait to be reported in the next line"
        );
    }
}
