//! The key-value store the host keeps for one exchange of a plugin type (`warren:plugin@0.4.0`'s
//! `host` interface): entries with an optional expiry, bounded by the broker's quota
//! (`plugin_kv_max_entries`, `plugin_kv_max_bytes`) and by the plugin's own `max-entries`, past which
//! the entry written longest ago is evicted. It belongs to the exchange, not to an instance: a
//! reload or a rebuilt instance sees the same entries. Persistent stores of durable exchanges keep a
//! journal (`store::kv`).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tracing::warn;

use super::bindings::{KvError, KvOptions};
use crate::store::kv::{KvEntry, KvJournal};
use crate::sync::lock;

/// Longest key `kv-set` takes, in octets.
pub const MAX_KEY: usize = 1024;
/// Longest value `kv-set` takes, in octets.
pub const MAX_VALUE: usize = 64 * 1024;

/// The broker's bounds on one store (config `plugin_kv_max_entries`, `plugin_kv_max_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct KvQuota {
    /// Most entries.
    pub max_entries: u64,
    /// Most octets of keys and values together.
    pub max_bytes: u64,
}

impl Default for KvQuota {
    fn default() -> Self {
        KvQuota {
            max_entries: 1_000_000,
            max_bytes: 64 << 20,
        }
    }
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    /// ms since the Unix epoch; 0 = never.
    expires_at: u64,
    /// Write stamp: the entry's place in `order`.
    stamp: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Arc<[u8]>, Entry>,
    /// Keys by write stamp, oldest first; a key rewritten since has a stale stamp here (skipped).
    order: VecDeque<(u64, Arc<[u8]>)>,
    next_stamp: u64,
    bytes: u64,
    /// The plugin's `max-entries` (0: none).
    max_entries: u64,
    journal: Option<KvJournal>,
}

/// Stores whose journals have records to write: the plugin host's flusher takes them every
/// `KV_FLUSH_INTERVAL` (a store is listed once until flushed, so the flusher's work follows the
/// changes, not the number of stores).
pub type DirtyStores = Mutex<Vec<Weak<KvStore>>>;

/// One exchange's store. Calls take a short lock; nothing waits for the disk.
#[derive(Debug)]
pub struct KvStore {
    inner: Mutex<Inner>,
    quota: KvQuota,
    /// Where the journal lives, for a durable exchange (`None`: memory only).
    dir: Option<PathBuf>,
    /// For log lines: "exchange 'x' in vhost '/'".
    entity: String,
    /// This store, to list itself in `dirty`.
    me: Weak<KvStore>,
    /// Where it lists itself when its journal has records to write.
    dirty: Weak<DirtyStores>,
    /// Listed in `dirty` and not flushed since.
    listed: AtomicBool,
}

impl Inner {
    fn insert(&mut self, key: Arc<[u8]>, value: Vec<u8>, expires_at: u64) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.bytes += (key.len() + value.len()) as u64;
        self.order.push_back((stamp, Arc::clone(&key)));
        if let Some(old) = self.map.insert(
            key.clone(),
            Entry {
                value,
                expires_at,
                stamp,
            },
        ) {
            self.bytes -= (key.len() + old.value.len()) as u64;
        }
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order
                .retain(|(s, k)| map.get(k).is_some_and(|e| e.stamp == *s));
        }
    }

    fn remove(&mut self, key: &[u8]) -> bool {
        match self.map.remove(key) {
            Some(old) => {
                self.bytes -= (key.len() + old.value.len()) as u64;
                if let Some(j) = &mut self.journal {
                    j.delete(key);
                }
                true
            }
            None => false,
        }
    }

    /// Removes the entry written longest ago; false when empty.
    fn evict_oldest(&mut self) -> bool {
        while let Some((stamp, key)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.stamp == stamp) {
                self.remove(&key);
                return true;
            }
        }
        false
    }

    /// Sweeps up to `n` expired entries from the old end.
    fn sweep(&mut self, now_ms: u64, n: usize) {
        for _ in 0..n {
            let Some((stamp, key)) = self.order.front().cloned() else {
                return;
            };
            match self.map.get(&key) {
                Some(e) if e.stamp == stamp => {
                    if e.expires_at == 0 || e.expires_at > now_ms {
                        return;
                    }
                    self.order.pop_front();
                    self.remove(&key);
                }
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }
}

impl KvStore {
    /// A store for `entity` within `quota`; `dir`: where a durable exchange's journal lives. Entries a
    /// journal there holds (from before a restart) are read back now. Once its journal has records to
    /// write, the store lists itself in `dirty`.
    pub fn open(
        entity: String,
        quota: KvQuota,
        dir: Option<PathBuf>,
        dirty: &Arc<DirtyStores>,
    ) -> Arc<KvStore> {
        let mut inner = Inner::default();
        if let Some(d) = &dir {
            match KvJournal::read(d, crate::clock::wall_ms()) {
                Ok(entries) => {
                    for KvEntry {
                        key,
                        value,
                        expires_at,
                    } in entries
                    {
                        inner.insert(key.into(), value, expires_at);
                    }
                }
                Err(e) => warn!(entity = %entity, error = %e, "plugin key-value journal not read"),
            }
        }
        Arc::new_cyclic(|me| KvStore {
            inner: Mutex::new(inner),
            quota,
            dir,
            entity,
            me: me.clone(),
            dirty: Arc::downgrade(dirty),
            listed: AtomicBool::new(false),
        })
    }

    /// After a change: lists the store for the flusher when its journal has records to write.
    fn changed(&self, inner: &Inner) {
        if inner.journal.as_ref().is_some_and(KvJournal::dirty)
            && !self.listed.swap(true, Ordering::AcqRel)
        {
            if let Some(dirty) = self.dirty.upgrade() {
                lock(&dirty).push(self.me.clone());
            }
        }
    }

    /// `kv-configure`.
    pub fn configure(&self, options: KvOptions) {
        let mut inner = lock(&self.inner);
        inner.max_entries = options.max_entries.min(self.quota.max_entries);
        let max = inner.max_entries;
        while max > 0 && inner.map.len() as u64 > max {
            inner.evict_oldest();
        }
        self.changed(&inner);
        if !options.persistent {
            // Not (or no longer) persistent: a journal of this run or a past one goes.
            match inner.journal.take() {
                Some(j) => j.remove(),
                None => {
                    if let Some(dir) = &self.dir {
                        let _ = std::fs::remove_file(KvJournal::path(dir));
                    }
                }
            }
            return;
        }
        if let (Some(dir), None) = (&self.dir, &inner.journal) {
            let mut live: Vec<(&Arc<[u8]>, &Entry)> = inner.map.iter().collect();
            live.sort_unstable_by_key(|(_, e)| e.stamp);
            let entries = live
                .into_iter()
                .map(|(k, e)| (&k[..], &e.value[..], e.expires_at));
            match KvJournal::create(dir, entries) {
                Ok(j) => inner.journal = Some(j),
                Err(e) => warn!(entity = %self.entity, error = %e,
                    "plugin key-value journal not created: the store stays in memory"),
            }
        }
    }

    /// `kv-get`: the value unless absent or expired.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut inner = lock(&self.inner);
        let e = inner.map.get(key)?;
        if e.expires_at != 0 && e.expires_at <= crate::clock::wall_ms() {
            inner.remove(key);
            self.changed(&inner);
            return None;
        }
        Some(e.value.clone())
    }

    /// `kv-set`.
    ///
    /// # Errors
    /// [`KvError::TooLarge`] past [`MAX_KEY`] / [`MAX_VALUE`]; [`KvError::QuotaExceeded`] when the
    /// broker's quota is reached and the plugin set no `max-entries` to evict by.
    pub fn set(&self, key: Vec<u8>, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return Err(KvError::TooLarge);
        }
        let now = crate::clock::wall_ms();
        let expires_at = ttl_ms.map_or(0, |t| now.saturating_add(t.max(1)));
        let mut inner = lock(&self.inner);
        inner.sweep(now, 4);
        let old = inner
            .map
            .get(&key[..])
            .map_or(0, |e| (key.len() + e.value.len()) as u64);
        let new_key = old == 0 && !inner.map.contains_key(&key[..]);
        let grow = (key.len() + value.len()) as u64;
        let evicts = inner.max_entries > 0;
        loop {
            let entries_full = new_key
                && (inner.map.len() as u64 >= self.quota.max_entries
                    || (evicts && inner.map.len() as u64 >= inner.max_entries));
            let bytes_full = inner.bytes - old + grow > self.quota.max_bytes;
            if !entries_full && !bytes_full {
                break;
            }
            if !evicts || !inner.evict_oldest() {
                return Err(KvError::QuotaExceeded);
            }
        }
        if let Some(j) = &mut inner.journal {
            j.set(&key, &value, expires_at);
        }
        inner.insert(key.into(), value, expires_at);
        self.changed(&inner);
        Ok(())
    }

    /// `kv-delete`: whether the key was there.
    pub fn delete(&self, key: &[u8]) -> bool {
        let mut inner = lock(&self.inner);
        let removed = inner.remove(key);
        self.changed(&inner);
        removed
    }

    /// `kv-len`.
    pub fn len(&self) -> u64 {
        lock(&self.inner).map.len() as u64
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes and fsyncs the journal's buffered records, if any (a failed write stays listed, to be
    /// tried again at the next flush).
    pub fn flush(&self) {
        let mut inner = lock(&self.inner);
        self.listed.store(false, Ordering::Release);
        if let Some(j) = inner.journal.as_mut().filter(|j| j.dirty()) {
            if let Err(e) = j.flush() {
                warn!(entity = %self.entity, error = %e, "plugin key-value journal write failed");
            }
        }
        self.changed(&inner);
    }

    /// The exchange was deleted: its journal goes with it.
    pub fn destroy(&self) {
        let mut inner = lock(&self.inner);
        if let Some(j) = inner.journal.take() {
            j.remove();
        }
        inner.map.clear();
        inner.order.clear();
        inner.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(quota: KvQuota) -> Arc<KvStore> {
        KvStore::open("test".into(), quota, None, &Arc::default())
    }

    #[test]
    fn max_entries_evicts_the_oldest_write() {
        let kv = store(KvQuota::default());
        kv.configure(KvOptions {
            max_entries: 2,
            persistent: false,
        });
        kv.set(b"a".to_vec(), b"1".to_vec(), None).unwrap();
        kv.set(b"b".to_vec(), b"2".to_vec(), None).unwrap();
        kv.set(b"a".to_vec(), b"3".to_vec(), None).unwrap(); // a is now the newest
        kv.set(b"c".to_vec(), b"4".to_vec(), None).unwrap(); // evicts b
        assert_eq!(kv.get(b"b"), None);
        assert_eq!(kv.get(b"a"), Some(b"3".to_vec()));
        assert_eq!(kv.get(b"c"), Some(b"4".to_vec()));
        assert_eq!(kv.len(), 2);
    }

    #[test]
    fn the_quota_refuses_without_a_bound_of_the_plugins_own() {
        let kv = store(KvQuota {
            max_entries: 2,
            max_bytes: 1 << 20,
        });
        kv.set(b"a".to_vec(), vec![], None).unwrap();
        kv.set(b"b".to_vec(), vec![], None).unwrap();
        assert!(matches!(
            kv.set(b"c".to_vec(), vec![], None),
            Err(KvError::QuotaExceeded)
        ));
        kv.set(b"a".to_vec(), b"replaced".to_vec(), None).unwrap();
        assert!(matches!(
            kv.set(vec![0; MAX_KEY + 1], vec![], None),
            Err(KvError::TooLarge)
        ));
        let bytes = store(KvQuota {
            max_entries: 100,
            max_bytes: 10,
        });
        assert!(matches!(
            bytes.set(b"k".to_vec(), vec![0; 10], None),
            Err(KvError::QuotaExceeded)
        ));
    }

    #[test]
    fn an_expired_entry_reads_as_absent() {
        let kv = store(KvQuota::default());
        kv.set(b"a".to_vec(), b"1".to_vec(), Some(1)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(kv.get(b"a"), None);
        assert!(kv.is_empty());
    }

    #[test]
    fn a_persistent_store_is_read_back() {
        let dir = std::env::temp_dir().join(format!("warren-kvstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = KvOptions {
            max_entries: 0,
            persistent: true,
        };
        let dirty: Arc<DirtyStores> = Arc::default();
        let kv = KvStore::open("t".into(), KvQuota::default(), Some(dir.clone()), &dirty);
        kv.configure(options);
        kv.set(b"a".to_vec(), b"1".to_vec(), None).unwrap();
        kv.set(b"b".to_vec(), b"2".to_vec(), None).unwrap();
        kv.delete(b"a");
        assert_eq!(lock(&dirty).len(), 1, "listed once for the flusher");
        kv.flush();
        assert!(lock(&dirty).len() == 1 && !kv.listed.load(Ordering::Acquire));
        let again = KvStore::open("t".into(), KvQuota::default(), Some(dir.clone()), &dirty);
        again.configure(options);
        assert_eq!(again.get(b"a"), None);
        assert_eq!(again.get(b"b"), Some(b"2".to_vec()));
        again.configure(KvOptions {
            max_entries: 0,
            persistent: false,
        });
        assert!(!KvJournal::path(&dir).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
