//! Watches the plugin directory (notify) and feeds settled file events to the [`PluginHost`].
//!
//! Linux gives `cp` as Modify(Data)… Close(Write), `mv` as a rename, `cargo build` as remove + create,
//! `touch` as Modify(Metadata): every event kind that can change a file counts, for every `*.wasm`
//! path it names. Reads (open, read, close after reading) do not: the host's own reading of a file —
//! the start-up load, or a reload — must not queue the file for another compile. Events are debounced until the directory
//! has been quiet for [`SETTLE`], then each named file is reloaded (or unloaded if gone) on this thread,
//! off the broker's hot path. Identical content is skipped by the host (content hash).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecursiveMode, Watcher};
use tracing::{debug, error, info};

use super::registry::{is_plugin_file, PluginHost};

/// Quiet time after the last event before files are read.
pub const SETTLE: Duration = Duration::from_millis(150);

/// A running watcher; dropping it stops watching.
pub struct PluginWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for PluginWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginWatcher")
    }
}

/// Starts watching `host`'s plugin directory. `None` when there is no directory.
///
/// # Errors
/// The directory cannot be created or watched (permissions, no inotify watches left).
pub fn watch(host: &Arc<PluginHost>) -> anyhow::Result<Option<PluginWatcher>> {
    let Some(dir) = host.dir().map(PathBuf::from) else {
        return Ok(None);
    };
    // A missing directory is created, so plugins can be dropped in later.
    std::fs::create_dir_all(&dir)?;
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = notify::recommended_watcher(tx)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let host = Arc::clone(host);
    std::thread::Builder::new()
        .name("warren-plugin-watch".into())
        .spawn(move || run(&host, &rx))?;
    info!(dir = %dir.display(), "watching the plugin directory");
    Ok(Some(PluginWatcher { _watcher: watcher }))
}

/// Whether an event can mean new content (or a touch): everything but reading a file.
fn may_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => matches!(access, AccessKind::Close(AccessMode::Write)),
        _ => true,
    }
}

fn collect(pending: &mut BTreeSet<PathBuf>, event: notify::Result<notify::Event>) {
    match event {
        Ok(e) => {
            debug!(kind = ?e.kind, paths = ?e.paths, "plugin directory event");
            if may_change(&e.kind) {
                pending.extend(e.paths.into_iter().filter(|p| is_plugin_file(p)));
            }
        }
        Err(e) => error!(error = %e, "plugin directory watch error"),
    }
}

fn run(host: &PluginHost, rx: &mpsc::Receiver<notify::Result<notify::Event>>) {
    let mut pending = BTreeSet::new();
    // Ends when the watcher (the sender) is dropped.
    while let Ok(first) = rx.recv() {
        collect(&mut pending, first);
        loop {
            match rx.recv_timeout(SETTLE) {
                Ok(e) => collect(&mut pending, e),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        for path in std::mem::take(&mut pending) {
            if path.exists() {
                host.file_changed(&path);
            } else {
                host.file_removed(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, MetadataKind, ModifyKind, RemoveKind};

    #[test]
    fn reading_a_file_is_not_a_change_and_writing_or_touching_it_is() {
        for read in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
            AccessKind::Any,
        ] {
            assert!(!may_change(&EventKind::Access(read)), "{read:?}");
        }
        for change in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            EventKind::Modify(ModifyKind::Metadata(MetadataKind::WriteTime)),
            EventKind::Remove(RemoveKind::File),
        ] {
            assert!(may_change(&change), "{change:?}");
        }
    }
}
