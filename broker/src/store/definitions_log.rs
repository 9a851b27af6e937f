//! A vhost's definitions log: every change to its durable exchanges, queues and bindings appended as
//! one record ([`DefinitionChange`], numbered from 1), written and fsynced by the group-commit thread
//! (many declares share one fsync), and compacted into a snapshot document (`definitions.json`,
//! [`StoredDefinitions`] with `last_index`) once the log holds more records than the state has
//! entities, so a change costs O(1) amortised instead of a rewrite of every definition.
//!
//! This is the shape of a replicated state machine's storage (a log of commands, a snapshot at an
//! index, replay of the records after it): the clustering work moves these records into the Raft log.
//!
//! Files in the vhost's directory:
//!
//! ```text
//! definitions.json   snapshot: StoredDefinitions, format 2 (format 1 is read as index 0)
//! definitions.log    "warren-definitions-log <version>\n", then records:
//!                    len u32 LE | crc u32 LE (CRC-32 of the payload) | payload: JSON {"index", "change"}
//! ```
//!
//! A torn or corrupt record at the end of the log (a crash mid-write) ends replay there: it was never
//! acknowledged, since a change's reply waits for its fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

use super::definitions::{DefinitionChange, DefinitionsState, StoredDefinitions};
use super::{Commit, Committer, Durability};
use crate::sync::lock;

/// Version of the log's record layout.
pub(crate) const DEFINITIONS_LOG_VERSION: u32 = 1;

const LOG_FILE: &str = "definitions.log";
const SNAPSHOT_FILE: &str = "definitions.json";
const HEADER_PREFIX: &str = "warren-definitions-log ";
const RECORD_HEADER_LEN: usize = 8;

/// The log compacts once it holds at least this many records and more records than the state has
/// entities (so compaction work stays proportional to the changes made).
const COMPACT_MIN_RECORDS: u64 = 1024;

/// A record as stored.
#[derive(Serialize, Deserialize)]
struct Record {
    index: u64,
    change: DefinitionChange,
}

#[derive(Debug)]
struct State {
    definitions: DefinitionsState,
    /// Index of the last record appended.
    index: u64,
    /// Encoded records not yet written.
    pending: Vec<u8>,
    /// Records in the log file and `pending` (since the last snapshot).
    records: u64,
    deleted: bool,
}

/// The log file and its length up to the last successful fsync. Only the commit thread writes it, and
/// not under the state lock: appends (made under the vhost's table locks) never wait for an fsync.
#[derive(Debug)]
struct LogFile {
    file: File,
    synced_len: u64,
}

#[derive(Debug, Default)]
struct Synced {
    durable: u64,
    failed: u64,
}

/// One vhost's definitions log, shared by the vhost (appends, waits) and the committer (writes).
#[derive(Debug)]
pub(crate) struct DefinitionsLog {
    label: String,
    dir: PathBuf,
    state: Mutex<State>,
    /// Taken before `state` when both are.
    file: Mutex<LogFile>,
    synced: Mutex<Synced>,
    synced_changed: Condvar,
    dirty: AtomicBool,
    committer: Arc<Committer>,
}

fn header() -> String {
    format!("{HEADER_PREFIX}{DEFINITIONS_LOG_VERSION}\n")
}

/// Replaces the log file with an empty one (header only; atomically, fsynced); returns it open for
/// appending.
fn create_log(dir: &Path) -> io::Result<LogFile> {
    let path = dir.join(LOG_FILE);
    super::write_atomic(&path, header().as_bytes())?;
    Ok(LogFile {
        file: OpenOptions::new().append(true).open(&path)?,
        synced_len: header().len() as u64,
    })
}

/// Writes `document` as the snapshot, then empties the log (a crash in between leaves records the
/// snapshot holds, which replay skips by index).
fn write_snapshot(dir: &Path, document: &StoredDefinitions) -> io::Result<LogFile> {
    document.save(&dir.join(SNAPSHOT_FILE))?;
    create_log(dir)
}

/// Reads the records of a log file in order; stops at the first torn or corrupt one.
///
/// # Errors
/// Unreadable, not a definitions log, or written by a newer version.
fn read_log(path: &Path) -> anyhow::Result<Vec<Record>> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let Some(end) = data.iter().position(|&b| b == b'\n') else {
        // A crash while the header was written: nothing was acknowledged from it.
        return Ok(Vec::new());
    };
    let first = String::from_utf8_lossy(&data[..end]);
    let version = first
        .strip_prefix(HEADER_PREFIX)
        .and_then(|v| v.parse::<u32>().ok())
        .with_context(|| format!("{} is not a Warren definitions log", path.display()))?;
    if version > DEFINITIONS_LOG_VERSION {
        bail!(
            "{} was written by a newer Warren (definitions log format {version}, this build reads \
             up to {DEFINITIONS_LOG_VERSION}); refusing to start",
            path.display()
        );
    }
    let mut records = Vec::new();
    let mut at = end + 1;
    while data.len() >= at + RECORD_HEADER_LEN {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let start = at + RECORD_HEADER_LEN;
        let Some(payload) = data.get(start..start + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        match serde_json::from_slice::<Record>(payload) {
            Ok(r) => records.push(r),
            Err(e) => {
                error!(log = %path.display(), error = %e, "definitions log record not understood; replay ends there");
                break;
            }
        }
        at = start + len;
    }
    if at < data.len() {
        info!(log = %path.display(), octets = data.len() - at, "definitions log ends in an incomplete record (a crash mid-write); ignored");
    }
    Ok(records)
}

fn encode(out: &mut Vec<u8>, index: u64, change: DefinitionChange) {
    let payload = serde_json::to_vec(&Record { index, change }).unwrap_or_default();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

impl DefinitionsLog {
    /// Opens the log in `dir` (a vhost's directory): reads the snapshot and the records after it,
    /// compacts them into a new snapshot when there were any, and returns the log with the
    /// definitions to replay.
    ///
    /// # Errors
    /// Files unreadable or malformed, written by a newer Warren, or the compacted snapshot cannot be
    /// written.
    pub(crate) fn open(
        label: String,
        dir: &Path,
        committer: Arc<Committer>,
    ) -> anyhow::Result<(Arc<Self>, StoredDefinitions)> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let snapshot = StoredDefinitions::load(&dir.join(SNAPSHOT_FILE))?.unwrap_or_default();
        let mut definitions = DefinitionsState::from_document(&snapshot);
        let mut index = snapshot.last_index;
        let mut replayed = 0u64;
        for r in read_log(&dir.join(LOG_FILE))? {
            if r.index > index {
                definitions.apply(r.change);
                index = r.index;
                replayed += 1;
            }
        }
        let document = definitions.to_document(index);
        let file = if replayed > 0 || !dir.join(LOG_FILE).exists() {
            write_snapshot(dir, &document)
        } else {
            create_log(dir)
        }
        .with_context(|| {
            format!(
                "writing the definitions snapshot and log in {}",
                dir.display()
            )
        })?;
        if replayed > 0 {
            info!(vhost = %label, records = replayed, "definitions log replayed and compacted");
        }
        let log = Arc::new(DefinitionsLog {
            label,
            dir: dir.to_owned(),
            state: Mutex::new(State {
                definitions,
                index,
                pending: Vec::new(),
                records: 0,
                deleted: false,
            }),
            file: Mutex::new(file),
            synced: Mutex::new(Synced {
                durable: index,
                failed: 0,
            }),
            synced_changed: Condvar::new(),
            dirty: AtomicBool::new(false),
            committer,
        });
        Ok((log, document))
    }

    /// Appends `change` (applied to the in-memory state at once); returns its index, for
    /// [`DefinitionsLog::wait`]. 0 once the log is deleted.
    pub(crate) fn append(self: &Arc<Self>, change: DefinitionChange) -> u64 {
        let index = {
            let mut s = lock(&self.state);
            if s.deleted {
                return 0;
            }
            s.index += 1;
            let index = s.index;
            encode(&mut s.pending, index, change.clone());
            s.definitions.apply(change);
            s.records += 1;
            index
        };
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.committer
                .mark_dirty(Arc::clone(self) as Arc<dyn Commit>);
        }
        index
    }

    /// Blocks until the record `index` is on disk (or its write failed). Call with no lock held.
    pub(crate) fn wait(&self, index: u64) -> Durability {
        let mut s = lock(&self.synced);
        loop {
            if s.durable >= index {
                return Durability::Durable;
            }
            if s.failed >= index {
                return Durability::Failed;
            }
            s = self
                .synced_changed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The definitions as they stand (every append applied), as a snapshot document.
    #[cfg(test)]
    pub(crate) fn document(&self) -> StoredDefinitions {
        let s = lock(&self.state);
        s.definitions.to_document(s.index)
    }

    /// Stops writing (the vhost is being deleted with its directory); releases every waiter.
    pub(crate) fn delete(&self) {
        let index = {
            let mut s = lock(&self.state);
            s.deleted = true;
            s.pending.clear();
            s.index
        };
        self.announce(|synced| synced.durable = synced.durable.max(index));
    }

    fn announce(&self, f: impl FnOnce(&mut Synced)) {
        f(&mut lock(&self.synced));
        self.synced_changed.notify_all();
    }

    /// Writes the state as the snapshot at its last index and empties the log. Called with the file
    /// and the state locked; the snapshot holds every record appended, pending ones included.
    fn compact(&self, s: &mut State, f: &mut LogFile) -> io::Result<()> {
        *f = write_snapshot(&self.dir, &s.definitions.to_document(s.index))?;
        s.pending.clear();
        s.records = 0;
        Ok(())
    }

    /// Writes and fsyncs `pending` (records up to some index) at the end of the log file.
    fn write(&self, f: &mut LogFile, pending: Vec<u8>) -> io::Result<()> {
        let result = f.file.write_all(&pending).and_then(|()| f.file.sync_data());
        if result.is_ok() {
            f.synced_len += pending.len() as u64;
        } else {
            // Cut a partly written record off and put the records back, before any appended since,
            // for the retry.
            let _ = f.file.set_len(f.synced_len);
            let mut s = lock(&self.state);
            let mut again = pending;
            again.append(&mut s.pending);
            s.pending = again;
        }
        result
    }
}

impl Commit for DefinitionsLog {
    fn commit(&self) -> bool {
        self.dirty.store(false, Ordering::Release);
        let mut f = lock(&self.file);
        let mut s = lock(&self.state);
        if s.deleted {
            return true;
        }
        let index = s.index;
        let written = if s.records >= COMPACT_MIN_RECORDS && s.records > s.definitions.len() as u64
        {
            self.compact(&mut s, &mut f)
        } else if s.pending.is_empty() {
            Ok(())
        } else {
            let pending = std::mem::take(&mut s.pending);
            drop(s);
            self.write(&mut f, pending)
        };
        drop(f);
        match written {
            Ok(()) => {
                self.announce(|synced| synced.durable = synced.durable.max(index));
                true
            }
            Err(e) => {
                error!(vhost = %self.label, error = %e, "cannot write the definitions log; retrying");
                self.announce(|synced| synced.failed = synced.failed.max(index));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::definitions::{StoredBinding, StoredQueue};

    fn queue(name: &str) -> DefinitionChange {
        DefinitionChange::PutQueue(StoredQueue {
            name: name.into(),
            auto_delete: false,
            arguments: String::new(),
            home: None,
        })
    }

    fn binding(queue: &str) -> StoredBinding {
        StoredBinding {
            source: "amq.direct".into(),
            destination: queue.into(),
            destination_type: "queue".into(),
            routing_key: queue.into(),
            arguments: String::new(),
        }
    }

    #[test]
    fn deletes_take_their_bindings_and_records_replay_after_the_snapshot() {
        let dir = std::env::temp_dir().join(format!("warren-deflog-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let committer = Committer::for_tests();
        let (log, doc) = DefinitionsLog::open("v".into(), &dir, Arc::clone(&committer)).unwrap();
        assert_eq!(doc.queues.len(), 0);
        for i in 0..3000 {
            let name = format!("q{i}");
            log.append(queue(&name));
            log.append(DefinitionChange::PutBinding(binding(&name)));
            if i % 10 == 0 {
                let last = log.append(DefinitionChange::DeleteQueue { name });
                assert!(log.commit());
                assert_eq!(log.wait(last), Durability::Durable);
            }
        }
        log.append(DefinitionChange::DeleteBinding(binding("q1")));
        assert!(log.commit());
        let expected = log.document();
        assert_eq!(expected.queues.len(), 2700);
        assert_eq!(expected.bindings.len(), 2699);
        // A torn record at the end is ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let (_, reopened) = DefinitionsLog::open("v".into(), &dir, committer).unwrap();
        assert_eq!(reopened, expected);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_newer_log() {
        let dir = std::env::temp_dir().join(format!("warren-deflog-new-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LOG_FILE), format!("{HEADER_PREFIX}99\n")).unwrap();
        let err = DefinitionsLog::open("v".into(), &dir, Committer::for_tests())
            .unwrap_err()
            .to_string();
        assert!(err.contains("newer Warren"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
