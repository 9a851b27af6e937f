//! Durable storage under `--data-dir`: queue logs for persistent messages, the durable definitions of
//! each vhost, and the group-commit thread that makes publisher confirms mean "on disk".
//!
//! Layout (format version [`record::FORMAT_VERSION`], see `ARCHITECTURE.md` for why this design):
//!
//! ```text
//! DATA_DIR/FORMAT                       "warren-data <version>"; a newer version refuses to start
//! DATA_DIR/CLEAN                        present only between a clean shutdown and the next start
//! DATA_DIR/vhosts/<h>/definitions.json  durable exchanges, queues, bindings: snapshot (atomic replace)
//! DATA_DIR/vhosts/<h>/definitions.log   changes since the snapshot (`definitions_log`)
//! DATA_DIR/vhosts/<h>/queues/<h>/*.seg  one log per durable queue (record format in `record`)
//! DATA_DIR/transient/<n>/*.seg          a transient queue's paged-out tail (never fsynced; cleared
//!                                       at start)
//! ```
//!
//! `<h>` is the first 32 hex digits of the SHA-256 of the vhost or queue name (names may be 255 octets,
//! longer than a file name may be, and contain `/`).

pub(crate) mod admin;
pub(crate) mod definitions;
pub(crate) mod definitions_log;
pub(crate) mod keys;
pub(crate) mod kv;
pub(crate) mod log;
pub(crate) mod record;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{info, warn};

pub use self::log::Durability;

/// What a publisher confirm or a tx.commit-ok waits for, by sequence number: a queue log's fsync
/// ([`QueueLog`]), or in a cluster the home node of a queue on another node having enqueued the
/// message (`crate::cluster`). A waiter is woken through [`Store::commits`].
pub trait Durable: Send + Sync + std::fmt::Debug {
    /// Whether the append numbered `lsn` is durable, failed, or still pending.
    fn durability(&self, lsn: u64) -> Durability;
}

impl Durable for QueueLog {
    fn durability(&self, lsn: u64) -> Durability {
        QueueLog::durability(self, lsn)
    }
}

/// One wait: what to ask and the number to ask about.
pub(crate) type DurableWait = (std::sync::Arc<dyn Durable>, u64);
pub(crate) use self::log::{QueueLog, Recovered};

/// A log the group-commit thread writes and fsyncs: a queue's or delay store's segment log
/// ([`QueueLog`]) or a vhost's definitions log (`definitions_log`).
pub(crate) trait Commit: Send + Sync + std::fmt::Debug {
    /// Writes and fsyncs what was appended since the last call. Returns false if the write or fsync
    /// failed (the committer retries the log once a second).
    fn commit(&self) -> bool;
}

/// The directory of transient queues' scratch logs, under the data directory.
const SCRATCH_DIR: &str = "transient";

/// The group-commit thread's inbox: logs with unsynced appends.
#[derive(Debug)]
pub struct Committer {
    dirty: Mutex<Vec<Arc<dyn Commit>>>,
    wake: Condvar,
    stop: AtomicBool,
    /// Bumped after every commit round; connections waiting on confirms watch it.
    commits: watch::Sender<u64>,
    fsyncs: AtomicU64,
    /// Set while some queue log cannot be written (disk full, I/O error): raises the disk alarm.
    io_error: AtomicBool,
}

impl Committer {
    fn new() -> Self {
        Committer {
            dirty: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            commits: watch::channel(0).0,
            fsyncs: AtomicU64::new(0),
            io_error: AtomicBool::new(false),
        }
    }

    /// A committer without its thread: tests call `commit` on their logs themselves.
    #[cfg(test)]
    pub(crate) fn for_tests() -> Arc<Self> {
        Arc::new(Self::new())
    }

    fn mark_dirty(&self, log: Arc<dyn Commit>) {
        crate::sync::lock(&self.dirty).push(log);
        self.wake.notify_one();
    }

    /// Commits dirty logs until stopped: each round writes and fsyncs every log that has appends, then
    /// announces the round. Appends that arrive during a round share the next one's fsync.
    fn run(&self) {
        let mut broken: Vec<Arc<dyn Commit>> = Vec::new();
        loop {
            let mut logs = {
                let mut dirty = crate::sync::lock(&self.dirty);
                while dirty.is_empty() && !self.stop.load(Ordering::Acquire) {
                    if broken.is_empty() {
                        dirty = self.wake.wait(dirty).unwrap_or_else(|e| e.into_inner());
                    } else {
                        // Retry failed writes once a second (the disk may have space again).
                        dirty = self
                            .wake
                            .wait_timeout(dirty, Duration::from_secs(1))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        break;
                    }
                }
                std::mem::take(&mut *dirty)
            };
            let stopping = self.stop.load(Ordering::Acquire);
            logs.append(&mut broken);
            logs.sort_by_key(|l| Arc::as_ptr(l).cast::<()>() as usize);
            logs.dedup_by(|a, b| Arc::ptr_eq(a, b));
            for log in logs {
                if log.commit() {
                    self.fsyncs.fetch_add(1, Ordering::Relaxed);
                } else {
                    broken.push(log);
                }
            }
            let failing = !broken.is_empty();
            if self.io_error.swap(failing, Ordering::Relaxed) != failing {
                if failing {
                    warn!("queue log writes failing: disk alarm raised");
                } else {
                    info!("queue log writes recovered");
                }
            }
            self.commits.send_modify(|n| *n += 1);
            if stopping {
                return;
            }
        }
    }
}

/// The data directory: opened once at start, shared by the vhosts.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    committer: Arc<Committer>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The previous run shut down cleanly (every Deliver record was synced), so recovered messages
    /// carry exact `redelivered` flags; after a crash every recovered message is flagged redelivered.
    pub clean_start: bool,
    /// Size at which a queue log starts a new segment, octets.
    pub segment_bytes: u64,
    /// What a queue keeps in memory (ready-message bodies plus a per-message overhead, octets)
    /// before paging new messages out: a durable queue to its log, a transient one to a scratch log.
    pub queue_memory_bytes: u64,
    /// Names the next scratch log's directory.
    scratch_logs: AtomicU64,
}

/// The hex name of `name`'s directory.
fn hashed(name: &str) -> String {
    let digest = Sha256::digest(name.as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `data` to `path` atomically: a temporary file, fsync, rename, fsync of the directory.
///
/// # Errors
/// Any I/O error; `path` then still holds its previous content.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

impl Store {
    /// Opens (creating) the data directory and starts the commit thread.
    ///
    /// # Errors
    /// The directory cannot be created or read, or was written by a newer format version.
    pub fn open(
        root: &Path,
        segment_bytes: u64,
        queue_memory_bytes: u64,
    ) -> anyhow::Result<Arc<Store>> {
        fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let format = root.join("FORMAT");
        match fs::read_to_string(&format) {
            Ok(text) => {
                let version = text
                    .trim()
                    .strip_prefix("warren-data ")
                    .and_then(|v| v.parse::<u32>().ok())
                    .with_context(|| format!("{} is not a Warren format file", format.display()))?;
                if version > record::FORMAT_VERSION {
                    bail!(
                        "data directory {} was written by a newer Warren (format {version}; this build reads up to {}); refusing to start",
                        root.display(),
                        record::FORMAT_VERSION
                    );
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                write_atomic(
                    &format,
                    format!("warren-data {}\n", record::FORMAT_VERSION).as_bytes(),
                )?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", format.display())),
        }
        // Scratch logs of transient queues hold nothing a restart keeps.
        let scratch = root.join(SCRATCH_DIR);
        if let Err(e) = fs::remove_dir_all(&scratch) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e).with_context(|| format!("clearing {}", scratch.display()));
            }
        }
        let clean = root.join("CLEAN");
        let clean_start = clean.exists();
        if clean_start {
            fs::remove_file(&clean)?;
            fs::File::open(root)?.sync_all()?;
        }
        let committer = Arc::new(Committer::new());
        let runner = Arc::clone(&committer);
        let thread = std::thread::Builder::new()
            .name("warren-commit".into())
            .spawn(move || runner.run())?;
        info!(dir = %root.display(), clean_start, "data directory opened");
        Ok(Arc::new(Store {
            root: root.to_owned(),
            committer,
            thread: Mutex::new(Some(thread)),
            clean_start,
            segment_bytes,
            queue_memory_bytes,
            scratch_logs: AtomicU64::new(0),
        }))
    }

    /// Directory of a vhost's durable state.
    pub fn vhost_dir(&self, vhost: &str) -> PathBuf {
        self.root.join("vhosts").join(hashed(vhost))
    }

    /// Directory of a durable queue's log.
    pub fn queue_dir(&self, vhost: &str, queue: &str) -> PathBuf {
        self.vhost_dir(vhost).join("queues").join(hashed(queue))
    }

    /// Directory of a durable exchange's state: its plugin key-value journal (`kv.log`) and its
    /// delay store's log (`delayed/`).
    pub fn exchange_dir(&self, vhost: &str, exchange: &str) -> PathBuf {
        self.vhost_dir(vhost)
            .join("exchanges")
            .join(hashed(exchange))
    }

    /// Opens a vhost's definitions log; returns it with the durable definitions to replay.
    ///
    /// # Errors
    /// Unreadable or malformed files, or a newer format.
    pub(crate) fn open_definitions_log(
        &self,
        vhost: &str,
    ) -> anyhow::Result<(
        Arc<definitions_log::DefinitionsLog>,
        definitions::StoredDefinitions,
    )> {
        definitions_log::DefinitionsLog::open(
            vhost.to_owned(),
            &self.vhost_dir(vhost),
            Arc::clone(&self.committer),
        )
    }

    /// Opens a durable exchange's delay log (`crate::delay`) and recovers what it holds.
    ///
    /// # Errors
    /// I/O errors, or a segment of a newer format version.
    pub fn open_delay_log(
        &self,
        vhost: &str,
        exchange: &str,
    ) -> anyhow::Result<(Arc<QueueLog>, Recovered)> {
        QueueLog::open(
            format!("{vhost}/{exchange} (delayed)"),
            self.delay_dir(vhost, exchange),
            self.segment_bytes,
            Arc::clone(&self.committer),
        )
    }

    /// Directory of a durable exchange's delay log.
    pub fn delay_dir(&self, vhost: &str, exchange: &str) -> PathBuf {
        self.exchange_dir(vhost, exchange).join("delayed")
    }

    /// A new scratch log for the paged-out tail of transient queue `queue` of `vhost`
    /// (`DATA_DIR/transient/<n>`; the directory is cleared at every start).
    ///
    /// # Errors
    /// I/O errors.
    pub fn open_scratch_log(&self, vhost: &str, queue: &str) -> anyhow::Result<Arc<QueueLog>> {
        let n = self.scratch_logs.fetch_add(1, Ordering::Relaxed);
        QueueLog::open_scratch(
            format!("{vhost}/{queue} (transient)"),
            self.root.join(SCRATCH_DIR).join(n.to_string()),
            self.segment_bytes,
            Arc::clone(&self.committer),
        )
    }

    /// Opens a durable queue's log and recovers its content.
    ///
    /// # Errors
    /// I/O errors, or a segment of a newer format version.
    pub fn open_queue_log(
        &self,
        vhost: &str,
        queue: &str,
    ) -> anyhow::Result<(Arc<QueueLog>, Recovered)> {
        QueueLog::open(
            format!("{vhost}/{queue}"),
            self.queue_dir(vhost, queue),
            self.segment_bytes,
            Arc::clone(&self.committer),
        )
    }

    /// Opens the idempotency key record of a durable queue (`store/keys.rs`); returns it and the keys
    /// it holds as (recorded-at wall-clock ms, key), oldest first.
    ///
    /// # Errors
    /// The file cannot be read or opened.
    pub fn open_key_log(
        &self,
        vhost: &str,
        queue: &str,
    ) -> anyhow::Result<(keys::KeyLog, Vec<keys::RecordedKey>)> {
        let dir = self.queue_dir(vhost, queue);
        keys::KeyLog::open(&dir)
            .with_context(|| format!("idempotency keys of queue '{queue}' in {}", dir.display()))
    }

    /// Removes queue log directories of `vhost` that belong to none of `queues` (a queue deleted just
    /// before a crash).
    pub fn remove_orphan_logs<'a>(&self, vhost: &str, queues: impl Iterator<Item = &'a str>) {
        let keep: std::collections::HashSet<String> = queues.map(hashed).collect();
        let dir = self.vhost_dir(vhost).join("queues");
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                warn!(vhost, dir = %e.path().display(), "removing the log of a queue that is no longer declared");
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// A receiver that changes after every commit round.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.committer.commits.subscribe()
    }

    /// Wakes the receivers of [`Store::commits`] outside a commit round (a cluster node's
    /// acknowledgement of publishes, another `Durable`).
    pub fn notify_commits(&self) {
        self.committer.commits.send_modify(|n| *n += 1);
    }

    /// Whether a queue log write is failing right now (the disk alarm reads this).
    pub fn io_error(&self) -> bool {
        self.committer.io_error.load(Ordering::Relaxed)
    }

    /// fsyncs done so far by the commit thread.
    pub fn fsyncs(&self) -> u64 {
        self.committer.fsyncs.load(Ordering::Relaxed)
    }

    /// Final commit, then marks the shutdown clean. Call once the connections are closed.
    pub fn shutdown(&self) {
        self.committer.stop.store(true, Ordering::Release);
        self.committer.wake.notify_one();
        let thread = crate::sync::lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        if self.io_error() {
            warn!("queue logs could not all be written: not marking the shutdown clean");
            return;
        }
        match write_atomic(&self.root.join("CLEAN"), b"") {
            Ok(()) => info!(fsyncs = self.fsyncs(), "data directory closed cleanly"),
            Err(e) => warn!(error = %e, "cannot mark the shutdown clean"),
        }
    }
}
