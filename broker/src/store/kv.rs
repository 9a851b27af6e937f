//! A plugin key-value store's journal (`<vhost dir>/plugin-kv/<exchange>/kv.log`): the durable half
//! of the `host` interface's store (`plugin::kv`) for a durable exchange whose plugin asked for
//! persistence.
//!
//! Format: an 8-octet header (`WKV` + format version octet + 4 reserved octets), then records, each
//! `len: u32 LE, crc32(payload): u32 LE, payload`. Payload: kind `1` (set) `key_len: u32, key,
//! value_len: u32, value, expires_at: u64` (ms since the Unix epoch, 0 = never) or kind `2` (delete)
//! `key_len: u32, key`; all integers little-endian. Replay applies records in order; a torn or corrupt
//! record ends the replay (everything after it was written later and not fsynced). Opening rewrites
//! the file with the live entries only (compaction), so it never grows past the entries of one run.
//!
//! Writes are buffered and made durable by [`KvJournal::flush`] (write + fdatasync), which the
//! plugin host calls every 20 ms for every dirty journal and once more at shutdown.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut};

const MAGIC: &[u8; 3] = b"WKV";
/// The journal format this build writes and reads.
pub(crate) const KV_FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 8;
const KIND_SET: u8 = 1;
const KIND_DELETE: u8 = 2;

/// One live entry read back from a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KvEntry {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Expiry, ms since the Unix epoch; 0 = never.
    pub expires_at: u64,
}

/// An open journal: its file and the records not yet written.
#[derive(Debug)]
pub(crate) struct KvJournal {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..3].copy_from_slice(MAGIC);
    h[3] = KV_FORMAT_VERSION;
    h
}

fn frame(out: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u32_le(0);
    payload(out);
    let len = (out.len() - start - 8) as u32;
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], expires_at: u64) {
    frame(out, |out| {
        out.put_u8(KIND_SET);
        out.put_u32_le(key.len() as u32);
        out.put_slice(key);
        out.put_u32_le(value.len() as u32);
        out.put_slice(value);
        out.put_u64_le(expires_at);
    });
}

fn encode_delete(out: &mut Vec<u8>, key: &[u8]) {
    frame(out, |out| {
        out.put_u8(KIND_DELETE);
        out.put_u32_le(key.len() as u32);
        out.put_slice(key);
    });
}

/// Reads `len`-prefixed octets.
fn take(p: &mut &[u8]) -> Option<Vec<u8>> {
    if p.remaining() < 4 {
        return None;
    }
    let n = p.get_u32_le() as usize;
    if p.remaining() < n {
        return None;
    }
    let v = p[..n].to_vec();
    p.advance(n);
    Some(v)
}

/// Replays the records of `data` (after the header) into live entries, in first-written order;
/// entries expired at `now_ms` are dropped.
fn replay(mut data: &[u8], now_ms: u64) -> Vec<KvEntry> {
    // key → (value, expiry, position of its last write)
    let mut live: std::collections::HashMap<Vec<u8>, (Vec<u8>, u64, usize)> =
        std::collections::HashMap::new();
    let mut position = 0usize;
    while data.len() >= 8 {
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let crc = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        if data.len() < 8 + len || crc32fast::hash(&data[8..8 + len]) != crc {
            break;
        }
        let mut p = &data[8..8 + len];
        data = &data[8 + len..];
        if p.is_empty() {
            break;
        }
        match p.get_u8() {
            KIND_SET => {
                let (Some(key), Some(value)) = (take(&mut p), take(&mut p)) else {
                    break;
                };
                if p.remaining() < 8 {
                    break;
                }
                let expires_at = p.get_u64_le();
                position += 1;
                live.insert(key, (value, expires_at, position));
            }
            KIND_DELETE => {
                let Some(key) = take(&mut p) else { break };
                live.remove(&key);
            }
            _ => break,
        }
    }
    let mut entries: Vec<(usize, KvEntry)> = live
        .into_iter()
        .filter(|(_, (_, at, _))| *at == 0 || *at > now_ms)
        .map(|(key, (value, expires_at, position))| {
            (
                position,
                KvEntry {
                    key,
                    value,
                    expires_at,
                },
            )
        })
        .collect();
    entries.sort_unstable_by_key(|(position, _)| *position);
    entries.into_iter().map(|(_, e)| e).collect()
}

impl KvJournal {
    /// The journal's path in `dir`.
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join("kv.log")
    }

    /// Reads the live entries of the journal in `dir` (none if there is none), oldest write first.
    ///
    /// # Errors
    /// I/O errors; a journal written by a newer format version.
    pub(crate) fn read(dir: &Path, now_ms: u64) -> io::Result<Vec<KvEntry>> {
        let path = Self::path(dir);
        let mut data = Vec::new();
        match File::open(&path) {
            Ok(mut f) => {
                f.read_to_end(&mut data)?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        if data.len() < HEADER_LEN || &data[..3] != MAGIC {
            tracing::error!(file = %path.display(), "not a Warren key-value journal: ignored");
            return Ok(Vec::new());
        }
        if data[3] > KV_FORMAT_VERSION {
            return Err(io::Error::other(format!(
                "{} was written by a newer Warren (key-value format {}, this build reads up to {})",
                path.display(),
                data[3],
                KV_FORMAT_VERSION
            )));
        }
        Ok(replay(&data[HEADER_LEN..], now_ms))
    }

    /// Starts the journal in `dir` afresh holding `entries` (written and fsynced before it returns).
    ///
    /// # Errors
    /// I/O errors.
    pub(crate) fn create<'a>(
        dir: &Path,
        entries: impl Iterator<Item = (&'a [u8], &'a [u8], u64)>,
    ) -> io::Result<KvJournal> {
        let path = Self::path(dir);
        let mut data = header().to_vec();
        for (key, value, expires_at) in entries {
            encode_set(&mut data, key, value, expires_at);
        }
        super::write_atomic(&path, &data)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(KvJournal {
            path,
            file,
            pending: Vec::new(),
        })
    }

    /// Records a set (buffered until [`KvJournal::flush`]).
    pub(crate) fn set(&mut self, key: &[u8], value: &[u8], expires_at: u64) {
        encode_set(&mut self.pending, key, value, expires_at);
    }

    /// Records a delete (buffered until [`KvJournal::flush`]).
    pub(crate) fn delete(&mut self, key: &[u8]) {
        encode_delete(&mut self.pending, key);
    }

    /// Whether records wait to be written.
    pub(crate) fn dirty(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes and fdatasyncs the buffered records.
    ///
    /// # Errors
    /// I/O errors (the records stay buffered and are retried at the next flush).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.pending)?;
        self.file.sync_data()?;
        self.pending.clear();
        Ok(())
    }

    /// Deletes the journal (the store stopped being persistent, or its exchange was deleted).
    pub(crate) fn remove(self) {
        let _ = fs::remove_file(&self.path);
        if let Some(dir) = self.path.parent() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-kv-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replay_keeps_the_last_write_of_each_key_and_stops_at_a_torn_record() {
        let dir = temp_dir("replay");
        let mut j = KvJournal::create(&dir, std::iter::empty()).unwrap();
        j.set(b"a", b"1", 0);
        j.set(b"b", b"2", 0);
        j.set(b"a", b"3", 0);
        j.delete(b"b");
        j.set(b"old", b"x", 5);
        j.flush().unwrap();
        let got = KvJournal::read(&dir, 10).unwrap();
        assert_eq!(
            got,
            vec![KvEntry {
                key: b"a".to_vec(),
                value: b"3".to_vec(),
                expires_at: 0
            }]
        );
        // A torn tail: the last record's payload is cut short.
        let path = KvJournal::path(&dir);
        let mut data = fs::read(&path).unwrap();
        let mut extra = Vec::new();
        encode_set(&mut extra, b"c", b"4", 0);
        data.extend_from_slice(&extra[..extra.len() - 3]);
        fs::write(&path, &data).unwrap();
        assert_eq!(KvJournal::read(&dir, 10).unwrap().len(), 1);
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = temp_dir("newer");
        let mut h = header();
        h[3] = KV_FORMAT_VERSION + 1;
        fs::write(KvJournal::path(&dir), h).unwrap();
        let e = KvJournal::read(&dir, 0).unwrap_err();
        assert!(e.to_string().contains("newer Warren"), "{e}");
    }
}
