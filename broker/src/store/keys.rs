//! A durable queue's record of acked idempotency keys (`x-idempotency`): `idempotency.keys` in the
//! queue's log directory, so it is deleted with the queue.
//!
//! Format: records `magic u32 | len u32 | CRC-32 u32 | payload`, payload = recorded-at (wall-clock ms,
//! u64) + the key; all big-endian. Appended with one `write` per ack batch (so a broker crash or
//! `kill -9` loses nothing; the kernel writes it back — an `fdatasync` happens at rewrite and at clean
//! shutdown, so a power loss can forget the last seconds of keys, which then only lets a duplicate
//! through). When the file holds more than twice the live keys plus 1 024 it is rewritten (temp file,
//! fsync, rename). Recovery keeps every intact record, stops at a torn or corrupt one and logs it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

const MAGIC: u32 = 0x4944_454b; // "IDEK"
const HEADER: usize = 12;
/// Keys are at most this long (a plugin returning more is truncated to it by the queue).
pub(crate) const MAX_KEY: usize = 64 * 1024;

/// A recorded key: (recorded-at wall-clock ms, key).
pub(crate) type RecordedKey = (u64, Vec<u8>);

/// The file name inside a queue's directory.
pub(crate) const FILE_NAME: &str = "idempotency.keys";

fn encode(out: &mut Vec<u8>, at_ms: u64, key: &[u8]) {
    let mut payload = Vec::with_capacity(8 + key.len());
    payload.extend_from_slice(&at_ms.to_be_bytes());
    payload.extend_from_slice(key);
    out.extend_from_slice(&MAGIC.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
}

/// Decodes records from `data`; returns them and the length of the intact prefix.
fn decode(data: &[u8]) -> (Vec<RecordedKey>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= HEADER {
        let word =
            |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
        let (magic, len, crc) = (word(pos), word(pos + 4) as usize, word(pos + 8));
        if magic != MAGIC || !(8..=8 + MAX_KEY).contains(&len) || data.len() - pos - HEADER < len {
            break;
        }
        let payload = &data[pos + HEADER..pos + HEADER + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let mut at = [0u8; 8];
        at.copy_from_slice(&payload[..8]);
        out.push((u64::from_be_bytes(at), payload[8..].to_vec()));
        pos += HEADER + len;
    }
    (out, pos)
}

#[derive(Debug)]
struct Inner {
    file: File,
    records: usize,
}

/// The open key record of one durable queue.
#[derive(Debug)]
pub struct KeyLog {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl KeyLog {
    /// Opens (or creates) the record in `dir`; returns it and the keys it holds, oldest first.
    ///
    /// # Errors
    /// The file cannot be read, cut back to its intact prefix, or opened for appending.
    pub fn open(dir: &Path) -> io::Result<(KeyLog, Vec<RecordedKey>)> {
        fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (keys, intact) = decode(&data);
        if intact < data.len() {
            warn!(file = %path.display(), offset = intact, dropped_octets = data.len() - intact, "idempotency key record: torn or corrupt tail dropped");
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(intact as u64)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let records = keys.len();
        Ok((
            KeyLog {
                path,
                inner: Mutex::new(Inner { file, records }),
            },
            keys,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        crate::sync::lock(&self.inner)
    }

    /// Appends keys recorded at `at_ms` (one write).
    pub fn append<'a>(&self, at_ms: u64, keys: impl IntoIterator<Item = &'a [u8]>) {
        let mut buf = Vec::new();
        let mut n = 0;
        for k in keys {
            encode(&mut buf, at_ms, &k[..k.len().min(MAX_KEY)]);
            n += 1;
        }
        if n == 0 {
            return;
        }
        let mut inner = self.lock();
        match inner.file.write_all(&buf) {
            Ok(()) => inner.records += n,
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "idempotency keys not written: they will not survive a restart")
            }
        }
    }

    /// Rewrites the file with just `live` keys when it holds more than twice as many records plus
    /// 1 024.
    pub fn compact<'a>(&self, live: usize, keys: impl FnOnce() -> Vec<(u64, &'a [u8])>) {
        let mut inner = self.lock();
        if inner.records <= live.saturating_mul(2) + 1024 {
            return;
        }
        let keys = keys();
        let mut buf = Vec::new();
        for (at, k) in &keys {
            encode(&mut buf, *at, k);
        }
        let tmp = self.path.with_extension("keys.tmp");
        let result = (|| -> io::Result<File> {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_data()?;
            fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                File::open(dir)?.sync_all()?;
            }
            OpenOptions::new().append(true).open(&self.path)
        })();
        match result {
            Ok(file) => {
                inner.file = file;
                inner.records = keys.len();
            }
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "idempotency key record not compacted")
            }
        }
    }

    /// fdatasyncs the record (clean shutdown).
    pub fn sync(&self) {
        let _ = self.lock().file.sync_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = std::env::temp_dir().join(format!("warren-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (log, keys) = KeyLog::open(&dir).unwrap();
        assert!(keys.is_empty());
        log.append(5, [&b"a"[..], &b"bb"[..]]);
        log.append(6, [&b"c"[..]]);
        drop(log);
        let path = dir.join(FILE_NAME);
        let mut data = fs::read(&path).unwrap();
        data.extend_from_slice(&MAGIC.to_be_bytes()[..3]);
        fs::write(&path, &data).unwrap();
        let (log, keys) = KeyLog::open(&dir).unwrap();
        assert_eq!(
            keys,
            [(5, b"a".to_vec()), (5, b"bb".to_vec()), (6, b"c".to_vec())]
        );
        // Compaction keeps only the live keys.
        for i in 0..1100u32 {
            log.append(7, [&i.to_be_bytes()[..]]);
        }
        log.compact(1, || vec![(6, &b"c"[..])]);
        drop(log);
        let (_, keys) = KeyLog::open(&dir).unwrap();
        assert_eq!(keys, [(6, b"c".to_vec())]);
        let _ = fs::remove_dir_all(&dir);
    }
}
