//! One durable queue's log: a directory of segment files (`<id>.seg`, 20-digit ids) holding its
//! Publish, Ack and Deliver records (format in [`super::record`]).
//!
//! Appends go to an in-memory pending buffer under a short lock; the [`super::Committer`] thread writes
//! and fsyncs it (group commit: every append made while the previous fsync ran shares the next one) and
//! then publishes the log's durable LSN, which publisher confirms wait for. Segments are deleted from
//! the front once every message in them has left the queue. Paged-out messages are read back in order
//! by a [`TailReader`].

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tracing::{error, warn};

use super::record::{self, PublishRef, Record, Scanned, Scanner, StoredPublish};
use super::Committer;
use crate::sync::lock;

/// Octets of records a scratch log lets wait for the committer before the appender writes them itself.
const SCRATCH_PENDING_MAX: usize = 8 << 20;

/// Sequence numbers as inclusive ranges, merged (acked and delivered sets at recovery).
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
}

impl RangeSet {
    /// Adds `first..=last`.
    pub fn insert(&mut self, first: u64, last: u64) {
        let (mut first, mut last) = (first, last);
        if let Some((&s, &e)) = self.ranges.range(..=first).next_back() {
            if e.saturating_add(1) >= first {
                first = s;
                last = last.max(e);
                self.ranges.remove(&s);
            }
        }
        while let Some((&s, &e)) = self.ranges.range(first..).next() {
            if s > last.saturating_add(1) {
                break;
            }
            last = last.max(e);
            self.ranges.remove(&s);
        }
        self.ranges.insert(first, last);
    }

    /// Whether `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &e)| seq <= e)
    }

    /// Drops everything below `seq` (the part a reader has passed).
    pub fn trim_below(&mut self, seq: u64) {
        while let Some((&s, &e)) = self.ranges.iter().next() {
            if e >= seq {
                break;
            }
            self.ranges.remove(&s);
        }
    }
}

/// Whether an append has reached the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written and fsynced.
    Durable,
    /// The write or fsync failed (disk full, I/O error): the publisher gets a nack.
    Failed,
    /// Not yet synced.
    Pending,
}

#[derive(Debug, Default)]
struct Pending {
    buf: Vec<u8>,
    /// LSN of the last record appended (per log, from 1).
    lsn: u64,
    max_seq: Option<u64>,
}

#[derive(Debug)]
struct SegmentMeta {
    id: u64,
    /// Highest Publish seq in the segment; `None` if it holds no Publish.
    max_seq: Option<u64>,
}

#[derive(Debug)]
struct Writer {
    file: File,
    /// Logical size of the current segment (synced part + `unsynced`).
    size: u64,
    synced_size: u64,
    /// Octets written since the last fsync: rewritten after a failed write or fsync.
    unsynced: Vec<u8>,
    /// A write or fsync failed: the file was cut back to `synced_size` and `unsynced` must be rewritten.
    broken: bool,
    written_lsn: u64,
    segments: VecDeque<SegmentMeta>,
    deleted: bool,
    /// The current segment still needs [`prepare_segment`] before its first records are synced.
    unprepared: bool,
}

/// What recovery found in a log.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Persistent messages still in the queue.
    pub count: u64,
    /// Their body octets.
    pub bytes: u64,
    /// Acked sequence numbers (to skip while reading the log back).
    pub acked: RangeSet,
    /// Sequence numbers delivered at least once.
    pub delivered: RangeSet,
    /// One past the highest sequence number in the log.
    pub next_seq: u64,
}

/// A durable queue's log. Shared by the queue (appends, reads) and the committer (writes, fsyncs).
#[derive(Debug)]
pub struct QueueLog {
    /// `vhost/queue`, for log lines.
    pub label: String,
    dir: PathBuf,
    segment_bytes: u64,
    committer: Arc<Committer>,
    /// A transient queue's scratch log ([`QueueLog::open_scratch`]): written, never fsynced.
    scratch: bool,
    pending: Mutex<Pending>,
    writer: Mutex<Writer>,
    durable_lsn: AtomicU64,
    failed_lsn: AtomicU64,
    dirty: AtomicBool,
    deleted: AtomicBool,
    /// Lowest sequence number still in the queue (set by the queue as messages leave): segments whose
    /// Publish records are all below it are deleted after the next commit.
    min_live: AtomicU64,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// Ids of the segment files in `dir`, ascending.
fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(id) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Creates a segment with its header. A segment that is `prepared` gets its space allocated up front
/// (`fallocate`: appends then do not change the file size, so an `fdatasync` need not commit the size
/// to the file system journal: 8 100 vs 6 700 syncs/s of 1 KiB appends on this machine's ext4;
/// reading the unwritten space gives zeros) and is synced with its directory entry. The segment a log
/// opens with is not: it is prepared by [`prepare_segment`] at its first commit with records, so an
/// idle queue costs neither 16 MiB of disk nor two fsyncs at declare and at every start.
fn create_segment(dir: &Path, id: u64, size: u64, prepared: bool) -> io::Result<File> {
    let path = segment_path(dir, id);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.write_all_at(&record::segment_header(), 0)?;
    if prepared {
        prepare_segment(dir, &file, size, id)?;
    }
    Ok(file)
}

/// Allocates a segment's space and makes the file and its directory entry durable.
fn prepare_segment(dir: &Path, file: &File, size: u64, id: u64) -> io::Result<()> {
    use fs4::FileExt as _;
    if let Err(e) = file.allocate(size) {
        // Not every file system can: appends then grow the file.
        warn!(file = %segment_path(dir, id).display(), error = %e, "cannot preallocate a segment");
    }
    file.sync_all()?;
    File::open(dir)?.sync_all()
}

/// How a segment's data ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentEnd {
    /// At the end of the file.
    Clean,
    /// Followed by preallocated zeros.
    Zeros,
    /// With an incomplete record at `offset`, `len` octets long (a torn write).
    Torn { offset: u64, len: u64 },
}

/// Reads a whole segment in chunks, feeding every record and corrupt region to `f`; returns where the
/// data ends and how. A bad record with nothing valid after it is a torn write, not corruption: in a
/// preallocated segment an interrupted write leaves a record whose length is right and whose octets are
/// partly zeros.
fn scan_segment(
    file: &File,
    mut f: impl FnMut(Scanned) -> io::Result<()>,
) -> io::Result<(u64, SegmentEnd)> {
    const CHUNK: usize = 8 << 20;
    let len = file.metadata()?.len();
    let mut offset = record::SEGMENT_HEADER_LEN as u64;
    let mut want = CHUNK;
    // A corrupt region not yet reported: (offset, octets, records).
    let mut held: Option<(u64, u64, u64)> = None;
    let report = |held: &mut Option<(u64, u64, u64)>,
                  f: &mut dyn FnMut(Scanned) -> io::Result<()>| {
        match held.take() {
            Some((offset, len, records)) => f(Scanned::Corrupt {
                offset,
                len,
                records,
            }),
            None => Ok(()),
        }
    };
    loop {
        let n = (len.saturating_sub(offset) as usize).min(want.max(CHUNK));
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset)?;
        let at_eof = offset + n as u64 >= len;
        let mut s = Scanner::new(offset, Bytes::from(buf));
        loop {
            match s.next_item() {
                Scanned::End { offset: end } | Scanned::Zeros { offset: end }
                    if at_eof && held.is_some_and(|(o, l, _)| o + l == end) =>
                {
                    let (at, octets, _) = held.take().unwrap_or_default();
                    return Ok((
                        at,
                        SegmentEnd::Torn {
                            offset: at,
                            len: octets,
                        },
                    ));
                }
                Scanned::End { offset: end } if at_eof => {
                    report(&mut held, &mut f)?;
                    return Ok((end, SegmentEnd::Clean));
                }
                Scanned::Zeros { offset: end } if at_eof => {
                    report(&mut held, &mut f)?;
                    return Ok((end, SegmentEnd::Zeros));
                }
                Scanned::Incomplete { offset: at, len } if at_eof => {
                    report(&mut held, &mut f)?;
                    return Ok((at, SegmentEnd::Torn { offset: at, len }));
                }
                Scanned::End { offset: at }
                | Scanned::Zeros { offset: at }
                | Scanned::Incomplete { offset: at, .. } => {
                    // Need the next chunk (a record crossing the chunk end, or a longer one).
                    want = if at == offset { want * 2 } else { CHUNK };
                    offset = at;
                    break;
                }
                Scanned::Corrupt {
                    offset: at,
                    len,
                    records,
                } => match &mut held {
                    Some((o, l, r)) if *o + *l == at => {
                        *l += len;
                        *r += records;
                    }
                    _ => {
                        report(&mut held, &mut f)?;
                        held = Some((at, len, records));
                    }
                },
                item => {
                    report(&mut held, &mut f)?;
                    f(item)?;
                }
            }
        }
    }
}

impl QueueLog {
    /// Opens (creating it if needed) the log in `dir` and recovers what it holds. A torn record at the
    /// end of the newest segment is cut off; corrupt records are skipped; each is logged. Appends go to
    /// a new segment.
    ///
    /// # Errors
    /// I/O errors, or a segment written by a newer format version.
    pub fn open(
        label: String,
        dir: PathBuf,
        segment_bytes: u64,
        committer: Arc<Committer>,
    ) -> anyhow::Result<(Arc<Self>, Recovered)> {
        Self::open_with(label, dir, segment_bytes, committer, false)
    }

    /// A new, empty scratch log in `dir`, a directory no other log uses (`Store::open_scratch_log`):
    /// a transient queue's paged-out tail. Appends are written by the committer but never fsynced.
    ///
    /// # Errors
    /// I/O errors.
    pub fn open_scratch(
        label: String,
        dir: PathBuf,
        segment_bytes: u64,
        committer: Arc<Committer>,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Self::open_with(label, dir, segment_bytes, committer, true)?.0)
    }

    fn open_with(
        label: String,
        dir: PathBuf,
        segment_bytes: u64,
        committer: Arc<Committer>,
        scratch: bool,
    ) -> anyhow::Result<(Arc<Self>, Recovered)> {
        fs::create_dir_all(&dir)?;
        let ids = segment_ids(&dir)?;
        let mut rec = Recovered::default();
        let mut segments = VecDeque::new();
        let mut files = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(&dir, id);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut header = [0u8; record::SEGMENT_HEADER_LEN];
            if file.read_exact_at(&mut header, 0).is_err() {
                warn!(file = %path.display(), "segment shorter than its header: removed");
                fs::remove_file(&path)?;
                continue;
            }
            match record::segment_version(&header) {
                Some(v) if v > record::FORMAT_VERSION => anyhow::bail!(
                    "{} was written by a newer Warren (segment format {v}, this build reads up to {}); refusing to start",
                    path.display(),
                    record::FORMAT_VERSION
                ),
                Some(_) => {}
                None => {
                    error!(file = %path.display(), "not a Warren segment (bad header): skipped");
                    continue;
                }
            }
            let mut max_seq = None;
            let (end, tail) = scan_segment(&file, |item| {
                match item {
                    Scanned::Record { record, .. } => match record {
                        Record::Publish(p) => {
                            rec.next_seq = rec.next_seq.max(p.seq + 1);
                            max_seq = Some(p.seq);
                        }
                        Record::Ack { first, last, .. } => rec.acked.insert(first, last),
                        Record::Deliver { seq } => rec.delivered.insert(seq, seq),
                    },
                    Scanned::Corrupt {
                        offset,
                        len,
                        records,
                    } => error!(
                        file = %path.display(), offset, octets = len, records,
                        "corrupt record(s) skipped"
                    ),
                    Scanned::End { .. } | Scanned::Zeros { .. } | Scanned::Incomplete { .. } => {}
                }
                Ok(())
            })?;
            match tail {
                SegmentEnd::Torn { offset, len } if i + 1 == ids.len() => {
                    warn!(
                        file = %path.display(), offset, octets = len,
                        "torn write at the end of the log: 1 incomplete record dropped"
                    );
                    file.set_len(end)?;
                    file.sync_all()?;
                }
                SegmentEnd::Torn { offset, len } => {
                    error!(file = %path.display(), offset, octets = len, "incomplete record inside the log skipped");
                }
                // Give back the preallocated space no one will write now.
                SegmentEnd::Zeros => file.set_len(end)?,
                SegmentEnd::Clean => {}
            }
            if end <= record::SEGMENT_HEADER_LEN as u64 {
                // No record: opened and never written (an idle queue's segment from an earlier run).
                drop(file);
                fs::remove_file(&path)?;
                continue;
            }
            segments.push_back(SegmentMeta { id, max_seq });
            files.push(file);
        }
        // Second pass: the live messages are the persistent Publish records not acked. (Ack records can
        // outlive the segments of the messages they settled, so their counts cannot be summed.)
        for file in &files {
            scan_segment(file, |item| {
                if let Scanned::Record {
                    record: Record::Publish(p),
                    ..
                } = item
                {
                    if p.persistent && !rec.acked.contains(p.seq) {
                        rec.count += 1;
                        rec.bytes += p.body.len() as u64;
                    }
                }
                Ok(())
            })?;
        }
        let id = ids.last().map_or(1, |l| l + 1);
        let file = create_segment(&dir, id, segment_bytes, false)?;
        segments.push_back(SegmentMeta { id, max_seq: None });
        let log = Arc::new(QueueLog {
            label,
            dir,
            segment_bytes,
            committer,
            scratch,
            pending: Mutex::new(Pending::default()),
            writer: Mutex::new(Writer {
                file,
                size: record::SEGMENT_HEADER_LEN as u64,
                synced_size: record::SEGMENT_HEADER_LEN as u64,
                unsynced: Vec::new(),
                broken: false,
                written_lsn: 0,
                segments,
                deleted: false,
                unprepared: !scratch,
            }),
            durable_lsn: AtomicU64::new(0),
            failed_lsn: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            min_live: AtomicU64::new(0),
        });
        Ok((log, rec))
    }

    fn append(self: &Arc<Self>, f: impl FnOnce(&mut Vec<u8>), seq: Option<u64>) -> u64 {
        if self.deleted.load(Ordering::Relaxed) {
            return 0;
        }
        let (lsn, backlog) = {
            let mut p = lock(&self.pending);
            f(&mut p.buf);
            p.lsn += 1;
            if seq.is_some() {
                p.max_seq = seq;
            }
            (p.lsn, p.buf.len())
        };
        if !self.dirty.swap(true, Ordering::AcqRel) {
            self.committer
                .mark_dirty(Arc::clone(self) as Arc<dyn super::Commit>);
        }
        if self.scratch && backlog > SCRATCH_PENDING_MAX {
            // The committer is behind (the disk is slower than the publishers): the appender writes
            // the pending records itself, so the page cache's write-back throttling slows the
            // publisher instead of this buffer growing in memory.
            crate::sync::off_worker(|| {
                if let Err(e) = self.flush_for_read() {
                    warn!(log = %self.label, error = %e, "scratch log write failed");
                }
            });
        }
        lsn
    }

    /// Appends a Publish record; returns its LSN (see [`QueueLog::durability`]).
    pub fn append_publish(self: &Arc<Self>, p: &PublishRef<'_>) -> u64 {
        self.append(|buf| record::encode_publish(buf, p), Some(p.seq))
    }

    /// Appends an Ack record for the persistent messages `first..=last` (`count` of them, `bytes` of
    /// body).
    pub fn append_ack(self: &Arc<Self>, first: u64, last: u64, count: u64, bytes: u64) {
        self.append(
            |buf| record::encode_ack(buf, first, last, count, bytes),
            None,
        );
    }

    /// Appends a Deliver record (first delivery of a persistent message).
    pub fn append_deliver(self: &Arc<Self>, seq: u64) {
        self.append(|buf| record::encode_deliver(buf, seq), None);
    }

    /// Whether the append with `lsn` is on disk. Appends to a deleted queue's log count as durable:
    /// the message is gone with its queue, and its publisher's confirm must not wait forever.
    pub fn durability(&self, lsn: u64) -> Durability {
        if self.durable_lsn.load(Ordering::Acquire) >= lsn || self.deleted.load(Ordering::Acquire) {
            Durability::Durable
        } else if self.failed_lsn.load(Ordering::Acquire) >= lsn {
            Durability::Failed
        } else {
            Durability::Pending
        }
    }

    /// Moves the pending buffer into the current segment (no fsync). Records stay in order: the buffer
    /// is taken under the writer lock.
    fn write_pending(&self, w: &mut Writer) -> io::Result<()> {
        if w.deleted {
            return Ok(());
        }
        let (buf, lsn, max_seq) = {
            let mut p = lock(&self.pending);
            (std::mem::take(&mut p.buf), p.lsn, p.max_seq.take())
        };
        if let (Some(seq), Some(seg)) = (max_seq, w.segments.back_mut()) {
            seg.max_seq = Some(seq);
        }
        w.written_lsn = lsn;
        if w.broken {
            w.unsynced.extend_from_slice(&buf);
            w.file.write_all_at(&w.unsynced, w.synced_size)?;
            w.size = w.synced_size + w.unsynced.len() as u64;
            w.broken = false;
            return Ok(());
        }
        if buf.is_empty() {
            return Ok(());
        }
        let at = w.size;
        w.size += buf.len() as u64;
        let result = w.file.write_all_at(&buf, at);
        if self.scratch && result.is_ok() {
            // Never synced: nothing to keep for a rewrite.
            w.synced_size = w.size;
            return result;
        }
        if w.unsynced.is_empty() {
            w.unsynced = buf;
        } else {
            w.unsynced.extend_from_slice(&buf);
        }
        result
    }

    fn fail(&self, w: &mut Writer, e: &io::Error) {
        w.broken = true;
        let _ = w.file.set_len(w.synced_size);
        w.size = w.synced_size;
        self.failed_lsn.fetch_max(w.written_lsn, Ordering::AcqRel);
        error!(log = %self.label, error = %e, "queue log write failed; publishes are nacked until it recovers");
    }

    /// Records the lowest sequence number still in the queue.
    pub fn set_min_live(&self, seq: u64) {
        self.min_live.store(seq, Ordering::Relaxed);
    }

    /// Deletes the segments at the front whose messages have all left the queue (every Publish seq below
    /// the queue's lowest live one). Never the segment being written. Segments go from the front only:
    /// an Ack record always follows its Publish, so no surviving Publish loses its Ack.
    fn reclaim(&self, w: &mut Writer) {
        let min_live = self.min_live.load(Ordering::Relaxed);
        while w.segments.len() > 1 && w.segments[0].max_seq.is_none_or(|m| m < min_live) {
            let Some(seg) = w.segments.pop_front() else {
                break;
            };
            if let Err(e) = fs::remove_file(segment_path(&self.dir, seg.id)) {
                warn!(log = %self.label, segment = seg.id, error = %e, "cannot remove an emptied segment");
            }
        }
    }

    /// Number of segment files (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        lock(&self.writer).segments.len()
    }

    /// Removes the log's files (queue deleted). Later appends are dropped.
    pub fn destroy(&self) {
        self.deleted.store(true, Ordering::Relaxed);
        let mut w = lock(&self.writer);
        w.deleted = true;
        lock(&self.pending).buf = Vec::new();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            warn!(log = %self.label, error = %e, "cannot remove the log of a deleted queue");
        }
    }

    /// A reader from the first segment.
    pub fn reader(self: &Arc<Self>) -> TailReader {
        let first = lock(&self.writer).segments.front().map_or(1, |s| s.id);
        TailReader {
            log: Arc::clone(self),
            segment: first,
            file: None,
            scanner: Scanner::new(0, Bytes::new()),
            eof_flushed: false,
        }
    }

    /// The segment after `id`, if there is one, and for the segment being written the end of what
    /// has been written to it (beyond lies preallocated space, or a write in progress).
    fn next_segment(&self, id: u64) -> (Option<u64>, Option<u64>) {
        let w = lock(&self.writer);
        let current = w.segments.back().map(|s| s.id) == Some(id);
        (
            w.segments.iter().map(|s| s.id).find(|&s| s > id),
            current.then_some(w.size),
        )
    }

    /// Writes the pending buffer so a reader can see it.
    fn flush_for_read(&self) -> io::Result<()> {
        let mut w = lock(&self.writer);
        let r = self.write_pending(&mut w);
        if let Err(e) = &r {
            self.fail(&mut w, e);
        }
        r
    }
}

impl super::Commit for QueueLog {
    /// Writes and fsyncs everything appended so far; rotates to a new segment when the current one is
    /// full. Called by the committer thread. Returns false if the write or fsync failed.
    fn commit(&self) -> bool {
        self.dirty.store(false, Ordering::Release);
        let mut w = lock(&self.writer);
        if w.deleted {
            return true;
        }
        let result = self.write_pending(&mut w).and_then(|()| {
            if w.size <= w.synced_size || self.scratch {
                Ok(())
            } else if w.unprepared {
                // The first records of the segment the log opened with.
                prepare_segment(
                    &self.dir,
                    &w.file,
                    self.segment_bytes,
                    w.segments.back().map_or(0, |s| s.id),
                )
                .map(|()| w.unprepared = false)
            } else {
                w.file.sync_data()
            }
        });
        if let Err(e) = result {
            self.fail(&mut w, &e);
            return false;
        }
        w.synced_size = w.size;
        w.unsynced.clear();
        self.durable_lsn.store(w.written_lsn, Ordering::Release);
        self.reclaim(&mut w);
        if w.size >= self.segment_bytes {
            let id = w.segments.back().map_or(1, |s| s.id + 1);
            match create_segment(&self.dir, id, self.segment_bytes, !self.scratch) {
                Ok(file) => {
                    w.file = file;
                    w.size = record::SEGMENT_HEADER_LEN as u64;
                    w.synced_size = w.size;
                    w.segments.push_back(SegmentMeta { id, max_seq: None });
                }
                Err(e) => {
                    error!(log = %self.label, error = %e, "cannot start a new segment; appending to the full one");
                }
            }
        }
        true
    }
}

/// Reads a log's Publish records in order (segment by segment, across the write position).
#[derive(Debug)]
pub struct TailReader {
    log: Arc<QueueLog>,
    segment: u64,
    file: Option<File>,
    scanner: Scanner,
    eof_flushed: bool,
}

impl TailReader {
    /// The log read.
    pub fn log(&self) -> &Arc<QueueLog> {
        &self.log
    }

    /// The next Publish record, `Ok(None)` at the end of the log.
    ///
    /// # Errors
    /// I/O errors reading a segment (the reader stays where it was and can be retried).
    pub fn next_publish(&mut self) -> io::Result<Option<StoredPublish>> {
        const CHUNK: usize = 1 << 20;
        self.eof_flushed = false;
        loop {
            match self.scanner.next_item() {
                Scanned::Record {
                    record: Record::Publish(p),
                    ..
                } => {
                    self.eof_flushed = false;
                    return Ok(Some(p));
                }
                Scanned::Record { .. } => {}
                Scanned::Corrupt {
                    offset,
                    len,
                    records,
                } => {
                    error!(log = %self.log.label, segment = self.segment, offset, octets = len, records, "corrupt record(s) skipped while reading back");
                }
                Scanned::End { offset }
                | Scanned::Zeros { offset }
                | Scanned::Incomplete { offset, .. } => {
                    let file = match &self.file {
                        Some(f) => f,
                        None => {
                            let path = segment_path(&self.log.dir, self.segment);
                            match File::open(&path) {
                                Ok(f) => self.file.insert(f),
                                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                                    match self.log.next_segment(self.segment).0 {
                                        Some(next) => {
                                            self.segment = next;
                                            continue;
                                        }
                                        None => return Ok(None),
                                    }
                                }
                                Err(e) => return Err(e),
                            }
                        }
                    };
                    let offset = offset.max(record::SEGMENT_HEADER_LEN as u64);
                    let pending = self.scanner.data.len() - self.scanner.pos;
                    let (next, written) = self.log.next_segment(self.segment);
                    // In the segment being written, only what has been written (a record being
                    // written followed by preallocated zeros would look corrupt).
                    let limit =
                        written.map_or(usize::MAX, |end| end.saturating_sub(offset) as usize);
                    let want = CHUNK.max(pending * 2).min(limit);
                    let mut buf = vec![0u8; want];
                    let n = read_at_most(file, &mut buf, offset)?;
                    if n > pending {
                        buf.truncate(n);
                        self.scanner = Scanner::new(offset, Bytes::from(buf));
                        continue;
                    }
                    // Nothing new in this segment.
                    if written.is_none() {
                        if let Some(next) = next {
                            self.segment = next;
                            self.file = None;
                            self.scanner = Scanner::new(0, Bytes::new());
                            continue;
                        }
                    }
                    if self.eof_flushed {
                        return Ok(None);
                    }
                    // The rest may still be in the pending buffer: write it out and look again.
                    self.log.flush_for_read()?;
                    self.eof_flushed = true;
                }
            }
        }
    }
}

fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn publish(seq: u64, body: &[u8]) -> PublishRef<'_> {
        PublishRef {
            seq,
            persistent: true,
            expires_at: 0,
            exchange: b"",
            routing_key: b"q",
            properties: b"\x00\x00",
            body,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warren-log-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn appends_become_durable_and_read_back_in_order() {
        let dir = temp_dir("order");
        let store = Store::open(&dir, 4096, 1 << 20).unwrap();
        let (log, rec) = store.open_queue_log("/", "q").unwrap();
        assert_eq!(rec.count, 0);
        let mut lsn = 0;
        for seq in 0..100 {
            lsn = log.append_publish(&publish(seq, format!("m{seq}").as_bytes()));
        }
        let mut commits = store.commits();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        while log.durability(lsn) != Durability::Durable {
            rt.block_on(commits.changed()).unwrap();
        }
        let mut reader = log.reader();
        for seq in 0..100 {
            let p = reader.next_publish().unwrap().unwrap();
            assert_eq!((p.seq, &p.body[..]), (seq, format!("m{seq}").as_bytes()));
        }
        assert!(reader.next_publish().unwrap().is_none());
        assert!(log.segment_count() > 1, "4 KiB segments rotated");
        store.shutdown();
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_deleted_log_never_holds_a_confirm_back() {
        let dir = temp_dir("deleted");
        // A committer that never runs: the append stays pending.
        let idle = super::super::Committer::for_tests();
        let (log, _) = QueueLog::open("/q".into(), dir.clone(), 1 << 20, idle).unwrap();
        let lsn = log.append_publish(&publish(0, b"x"));
        assert_eq!(log.durability(lsn), Durability::Pending);
        log.destroy();
        assert_eq!(log.durability(lsn), Durability::Durable);
        assert!(!dir.exists());
    }

    #[test]
    fn range_set_merges_and_trims() {
        let mut s = RangeSet::default();
        s.insert(5, 5);
        s.insert(7, 9);
        s.insert(6, 6);
        s.insert(20, 21);
        assert!(s.contains(5) && s.contains(9) && s.contains(21));
        assert!(!s.contains(4) && !s.contains(10) && !s.contains(19));
        assert_eq!(s.ranges.len(), 2);
        s.insert(1, 30);
        assert_eq!(s.ranges.len(), 1);
        s.trim_below(31);
        assert!(s.ranges.is_empty());
    }
}
