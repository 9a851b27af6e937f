//! The exchange's key-value store, kept by the broker (`warren:plugin@0.4.0`'s `host` interface):
//! state that outlives the plugin instance — a reload, an instance rebuilt after a fault — and, for a
//! durable exchange whose plugin asks for it, a broker restart. One store per exchange; exchange
//! plugins only.
//!
//! ```
//! use std::time::Duration;
//! use warren_plugin_sdk::store;
//!
//! // Remember a message id for ten minutes; was it seen before?
//! fn seen_before(id: &str) -> bool {
//!     if store::get(id.as_bytes()).is_some() {
//!         return true;
//!     }
//!     // A full store (the broker's quota) refuses: treat the id as new.
//!     let _ = store::set(id.as_bytes(), b"", Some(Duration::from_secs(600)));
//!     false
//! }
//!
//! assert!(!seen_before("m-1"));
//! assert!(seen_before("m-1"));
//! ```
//!
//! Natively (a plugin crate's `cargo test`) the functions work on an in-memory store of the calling
//! thread, with the same expiry and eviction rules, so a plugin's tests exercise its real logic;
//! [`reset`] empties it. Inside the broker they call the host.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Why the store refused a change (the WIT `kv-error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// The store is at the broker's limit (`plugin_kv_max_entries` entries or `plugin_kv_max_bytes`
    /// octets) and the plugin set no `max_entries` of its own to evict by.
    QuotaExceeded,
    /// A key longer than 1 KiB or a value longer than 64 KiB.
    TooLarge,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreError::QuotaExceeded => "the key-value store is full",
            StoreError::TooLarge => "key or value too large",
        })
    }
}

impl std::error::Error for StoreError {}

/// How the store behaves (the WIT `kv-options`); set it from the exchange's `init`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// At most this many entries (0: only the broker's quota): setting a new key in a full store
    /// evicts the entry written longest ago.
    pub max_entries: u64,
    /// Keep the entries across broker restarts (honoured for durable exchanges only).
    pub persistent: bool,
}

/// Where the calls go: the host (installed by the generated glue) or the native in-memory store.
#[doc(hidden)]
pub trait Backend {
    fn configure(&self, options: Options);
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    fn set(&self, key: &[u8], value: &[u8], ttl_ms: Option<u64>) -> Result<(), StoreError>;
    fn delete(&self, key: &[u8]) -> bool;
    fn entries(&self) -> u64;
    fn now_ms(&self) -> u64;
}

/// Longest key, octets (as the broker).
const MAX_KEY: usize = 1024;
/// Longest value, octets (as the broker).
const MAX_VALUE: usize = 64 * 1024;
/// The broker's default quota, for the native store.
const NATIVE_QUOTA: u64 = 1_000_000;

#[derive(Default)]
struct Memory {
    map: HashMap<Vec<u8>, (Vec<u8>, u64, u64)>,
    order: VecDeque<(u64, Vec<u8>)>,
    stamp: u64,
    options: Options,
}

impl Memory {
    fn live(&mut self, key: &[u8], now: u64) -> bool {
        match self.map.get(key) {
            Some((_, at, _)) if *at != 0 && *at <= now => {
                self.map.remove(key);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    fn evict_oldest(&mut self) -> bool {
        while let Some((stamp, key)) = self.order.pop_front() {
            if self.map.get(&key).is_some_and(|e| e.2 == stamp) {
                self.map.remove(&key);
                return true;
            }
        }
        false
    }
}

thread_local! {
    static HOST: RefCell<Option<Box<dyn Backend>>> = const { RefCell::new(None) };
    static NATIVE: RefCell<Memory> = RefCell::new(Memory::default());
}

fn native_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Installs the host's store (called by the generated glue before the exchange's `init`).
#[doc(hidden)]
pub fn install(backend: Box<dyn Backend>) {
    HOST.with_borrow_mut(|h| *h = Some(backend));
}

fn with<R>(host: impl FnOnce(&dyn Backend) -> R, native: impl FnOnce(&mut Memory) -> R) -> R {
    HOST.with_borrow(|h| h.as_ref().map(|b| host(b.as_ref())))
        .unwrap_or_else(|| NATIVE.with_borrow_mut(native))
}

/// Sets the store's options (call it from the exchange's `init`; a lower `max_entries` evicts at once).
pub fn configure(options: Options) {
    with(
        |b| b.configure(options),
        |m| {
            m.options = options;
            while options.max_entries > 0 && m.map.len() as u64 > options.max_entries {
                m.evict_oldest();
            }
        },
    )
}

/// The value stored under `key`, unless absent or expired.
pub fn get(key: &[u8]) -> Option<Vec<u8>> {
    with(
        |b| b.get(key),
        |m| {
            if m.live(key, native_now()) {
                m.map.get(key).map(|e| e.0.clone())
            } else {
                None
            }
        },
    )
}

/// Stores `value` under `key`, replacing any value; it expires after `ttl` (none: never; rounded
/// to whole milliseconds, at least 1).
///
/// # Errors
/// [`StoreError::TooLarge`] for a key over 1 KiB or a value over 64 KiB;
/// [`StoreError::QuotaExceeded`] when the store is full and [`Options::max_entries`] is not set.
pub fn set(key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<(), StoreError> {
    let ttl_ms = ttl.map(|t| (t.as_millis() as u64).max(1));
    with(
        |b| b.set(key, value, ttl_ms),
        |m| {
            if key.len() > MAX_KEY || value.len() > MAX_VALUE {
                return Err(StoreError::TooLarge);
            }
            let now = native_now();
            if !m.live(key, now) {
                let max = m.options.max_entries;
                while m.map.len() as u64 >= if max > 0 { max } else { NATIVE_QUOTA } {
                    if max == 0 || !m.evict_oldest() {
                        return Err(StoreError::QuotaExceeded);
                    }
                }
            }
            m.stamp += 1;
            let at = ttl_ms.map_or(0, |t| now + t);
            m.order.push_back((m.stamp, key.to_vec()));
            m.map.insert(key.to_vec(), (value.to_vec(), at, m.stamp));
            Ok(())
        },
    )
}

/// Removes `key`; whether it was there.
pub fn delete(key: &[u8]) -> bool {
    with(|b| b.delete(key), |m| m.map.remove(key).is_some())
}

/// How many entries the store holds (expired ones not yet swept included).
pub fn len() -> u64 {
    with(|b| b.entries(), |m| m.map.len() as u64)
}

/// The broker's wall clock, milliseconds since the Unix epoch (natively: this machine's).
pub fn now_ms() -> u64 {
    with(|b| b.now_ms(), |_| native_now())
}

/// Empties the native in-memory store of this thread (for a plugin's tests; no effect in the broker).
pub fn reset() {
    NATIVE.with_borrow_mut(|m| *m = Memory::default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_store_expires_and_evicts_like_the_broker() {
        reset();
        configure(Options {
            max_entries: 2,
            persistent: false,
        });
        set(b"a", b"1", None).unwrap();
        set(b"b", b"2", None).unwrap();
        set(b"c", b"3", None).unwrap();
        assert_eq!(get(b"a"), None, "the oldest write was evicted");
        assert_eq!(get(b"c"), Some(b"3".to_vec()));
        assert_eq!(len(), 2);
        set(b"t", b"x", Some(Duration::from_millis(1))).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(get(b"t"), None);
        assert!(delete(b"c"));
        assert_eq!(set(&[0; MAX_KEY + 1], b"", None), Err(StoreError::TooLarge));
    }
}
