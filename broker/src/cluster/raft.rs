//! The consensus engine behind [`Consensus`]: openraft 0.9 (storage v2), with its log, vote and state
//! machine kept in `DATA_DIR/cluster/` and its RPCs carried by the inter-node link.
//!
//! **Log** (`raft.log`): records of `u32` length, `u32` CRC-32 and an entry as JSON, appended and
//! fdatasynced before openraft is told they are flushed; truncation (a conflicting suffix) and
//! purging (after a snapshot) rewrite the file atomically from the entries kept in memory. **Vote**
//! (`raft-vote.json`) is written atomically before it is acknowledged. **State machine**: the broker
//! itself ([`Apply`]); the last applied log id and membership are written (`raft-applied.json`) after
//! each applied batch, so a restarted node resumes after them (the broker's own data directory holds
//! what those entries did). **Snapshots**: [`Apply::snapshot`] exports the replicated metadata as one
//! document; a follower too far behind installs it ([`Apply::install`]).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, RaftLogReader, RaftNetwork, RaftNetworkFactory,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use super::link::{Links, NodeId};
use super::{Member, Proposal};
use crate::sync::lock;

openraft::declare_raft_types!(
    /// Warren's Raft types: the replicated commands and the members' names and addresses.
    pub(crate) TypeConfig:
        D = Proposal,
        R = (),
        Node = Member,
);

/// The engine as the rest of the cluster code sees it: propose, feed RPCs, ask who leads. One
/// implementation ([`OpenRaft`]); another engine would implement this trait.
pub(crate) type Raft = openraft::Raft<TypeConfig>;

type StorageResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(e: &std::io::Error) -> StorageIOError<NodeId> {
    StorageIOError::write(AnyError::new(e))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    crate::store::write_atomic(path, bytes)
}

/// What the state machine applies entries to: the broker.
pub(crate) trait Apply: Send + Sync + 'static {
    /// Applies one committed proposal (in log order, on every node).
    fn apply(&self, proposal: &Proposal);
    /// The replicated metadata as one document (a snapshot's content).
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the replicated metadata with a snapshot's document.
    fn install(&self, document: &[u8]);
}

// ---------------------------------------------------------------------------------------------- log

#[derive(Debug, Default)]
struct LogData {
    entries: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<NodeId>>,
}

/// The Raft log and vote on disk. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct LogStore {
    dir: PathBuf,
    data: Arc<Mutex<LogData>>,
    file: Arc<Mutex<std::fs::File>>,
    /// The quorum group's binary entry encoding (`quorum/codec.rs`, file `raft.bin`) instead of
    /// JSON (`raft.log`).
    binary: bool,
    /// Octets appended since the file was last rewritten: a purge rewrites it only past
    /// [`REWRITE_AFTER`] (the purged entries are skipped when it is read).
    appended: Arc<std::sync::atomic::AtomicU64>,
}

/// Octets appended after which a purge rewrites the log file without the purged entries.
const REWRITE_AFTER: u64 = 256 << 20;
const BINARY_LOG_FILE: &str = "raft.bin";

#[derive(Serialize, Deserialize)]
struct PurgedRecord {
    last_purged: Option<LogId<NodeId>>,
}

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "raft-vote.json";
const PURGED_FILE: &str = "raft-purged.json";
const APPLIED_FILE: &str = "raft-applied.json";
const SNAPSHOT_FILE: &str = "raft-snapshot.json";
const BINARY_SNAPSHOT_FILE: &str = "raft-snapshot.bin";

fn encode_entry(e: &Entry<TypeConfig>, out: &mut Vec<u8>) {
    let json = serde_json::to_vec(e).unwrap_or_default();
    frame_record(&json, out);
}

fn frame_record(record: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(
        &u32::try_from(record.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(record).to_be_bytes());
    out.extend_from_slice(record);
}

fn encode_binary(e: &Entry<TypeConfig>, out: &mut Vec<u8>) {
    let mut record = Vec::new();
    super::quorum::codec::encode_entry(e, &mut record);
    frame_record(&record, out);
}

impl LogStore {
    /// Opens (or creates) the log in `dir`. A torn or corrupt tail ends the log there.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::open_as(dir, false)
    }

    /// Opens (or creates) the quorum group's log in `dir`, in its binary encoding.
    pub(crate) fn open_binary(dir: &Path) -> anyhow::Result<Self> {
        Self::open_as(dir, true)
    }

    fn encode(&self, e: &Entry<TypeConfig>, out: &mut Vec<u8>) {
        if self.binary {
            encode_binary(e, out);
        } else {
            encode_entry(e, out);
        }
    }

    fn open_as(dir: &Path, binary: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut data = LogData::default();
        if let Ok(b) = std::fs::read(dir.join(PURGED_FILE)) {
            let p: PurgedRecord = serde_json::from_slice(&b)?;
            data.last_purged = p.last_purged;
        }
        let path = dir.join(if binary { BINARY_LOG_FILE } else { LOG_FILE });
        let bytes = std::fs::read(&path).unwrap_or_default();
        let mut at = 0;
        while at + 8 <= bytes.len() {
            let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
                as usize;
            let crc =
                u32::from_be_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
            let Some(json) = bytes.get(at + 8..at + 8 + len) else {
                break;
            };
            if crc32fast::hash(json) != crc {
                break;
            }
            let decoded = if binary {
                super::quorum::codec::decode_entry(&mut bytes::Bytes::copy_from_slice(json))
            } else {
                serde_json::from_slice::<Entry<TypeConfig>>(json).ok()
            };
            let Some(e) = decoded else {
                break;
            };
            // A rewrite may leave entries that a later truncation replaced: the last one wins.
            data.entries.split_off(&e.log_id.index);
            data.entries.insert(e.log_id.index, e);
            at += 8 + len;
        }
        // Entries a purge left in the file (it is rewritten only now and then).
        if let Some(p) = data.last_purged {
            data.entries = data.entries.split_off(&(p.index + 1));
        }
        let store = LogStore {
            binary,
            appended: Arc::default(),
            dir: dir.to_owned(),
            data: Arc::new(Mutex::new(data)),
            file: Arc::new(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?,
            )),
        };
        store.rewrite()?;
        Ok(store)
    }

    /// Rewrites the log file from the entries in memory (after a truncation or purge, and at open).
    fn rewrite(&self) -> std::io::Result<()> {
        let data = lock(&self.data);
        let mut out = Vec::new();
        for e in data.entries.values() {
            self.encode(e, &mut out);
        }
        self.appended.store(0, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(if self.binary {
            BINARY_LOG_FILE
        } else {
            LOG_FILE
        });
        write_atomic(&path, &out)?;
        *lock(&self.file) = std::fs::OpenOptions::new().append(true).open(&path)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let data = lock(&self.data);
        Ok(data.entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let data = lock(&self.data);
        let last = data
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(data.last_purged);
        Ok(LogState {
            last_purged_log_id: data.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        let json = serde_json::to_vec(vote).unwrap_or_default();
        write_atomic(&self.dir.join(VOTE_FILE), &json).map_err(|e| StorageError::IO {
            source: StorageIOError::write_vote(AnyError::new(&e)),
        })
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        match std::fs::read(self.dir.join(VOTE_FILE)) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StorageError::IO {
                    source: StorageIOError::read_vote(AnyError::new(&e)),
                }),
            Err(_) => Ok(None),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        {
            let mut data = lock(&self.data);
            for e in entries {
                self.encode(&e, &mut out);
                data.entries.insert(e.log_id.index, e);
            }
        }
        self.appended
            .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let written = crate::sync::wait_off_worker(|| {
            let mut f = lock(&self.file);
            f.write_all(&out)?;
            f.sync_data()
        });
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = StorageError::IO { source: io_err(&e) };
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        lock(&self.data).entries.split_off(&log_id.index);
        self.rewrite()
            .map_err(|e| StorageError::IO { source: io_err(&e) })
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        {
            let mut data = lock(&self.data);
            let keep = data.entries.split_off(&(log_id.index + 1));
            data.entries = keep;
            data.last_purged = Some(log_id);
            let json = serde_json::to_vec(&PurgedRecord {
                last_purged: Some(log_id),
            })
            .unwrap_or_default();
            write_atomic(&self.dir.join(PURGED_FILE), &json)
                .map_err(|e| StorageError::IO { source: io_err(&e) })?;
        }
        if self.appended.load(std::sync::atomic::Ordering::Relaxed) < REWRITE_AFTER {
            return Ok(());
        }
        self.rewrite()
            .map_err(|e| StorageError::IO { source: io_err(&e) })
    }
}

// ------------------------------------------------------------------------------------ state machine

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    document: Vec<u8>,
}

/// The state machine: the broker behind [`Apply`], plus what was applied last.
#[derive(Clone)]
pub(crate) struct StateMachine {
    dir: PathBuf,
    applied: Arc<Mutex<Applied>>,
    /// The last applied index, for proposers waiting on this node.
    applied_index: Arc<std::sync::atomic::AtomicU64>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
    broker: Arc<dyn Apply>,
    /// Whether the last applied log id is written after each batch (the metadata group, whose
    /// applies persist in the broker's data directory); a volatile state machine (the quorum
    /// queues') is rebuilt at start from its snapshot and the log after it.
    persist: bool,
}

impl std::fmt::Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &*lock(&self.applied))
            .finish_non_exhaustive()
    }
}

impl StateMachine {
    /// The state machine kept in `dir`, applying to `broker`.
    pub(crate) fn open(
        dir: &Path,
        broker: Arc<dyn Apply>,
        applied_index: Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<Self> {
        let applied = match std::fs::read(dir.join(APPLIED_FILE)) {
            Ok(b) => serde_json::from_slice(&b)?,
            Err(_) => Applied::default(),
        };
        let snapshot = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(_) => None,
        };
        Ok(Self::with(
            dir,
            applied,
            snapshot,
            broker,
            applied_index,
            true,
        ))
    }

    /// The state machine in `dir`, having applied `applied` (published in `applied_index`).
    fn with(
        dir: &Path,
        applied: Applied,
        snapshot: Option<StoredSnapshot>,
        broker: Arc<dyn Apply>,
        applied_index: Arc<std::sync::atomic::AtomicU64>,
        persist: bool,
    ) -> Self {
        applied_index.store(
            applied.last_applied.map_or(0, |l| l.index),
            std::sync::atomic::Ordering::Release,
        );
        StateMachine {
            dir: dir.to_owned(),
            applied_index,
            applied: Arc::new(Mutex::new(applied)),
            snapshot: Arc::new(Mutex::new(snapshot)),
            broker,
            persist,
        }
    }

    /// A state machine held in memory only: its last snapshot in `dir` is installed into `broker`
    /// now, and what was applied after it is applied again from the log.
    pub(crate) fn open_volatile(
        dir: &Path,
        broker: Arc<dyn Apply>,
        applied_index: Arc<std::sync::atomic::AtomicU64>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let snapshot: Option<StoredSnapshot> = match std::fs::read(dir.join(BINARY_SNAPSHOT_FILE)) {
            Ok(b) => {
                let n = b
                    .get(..4)
                    .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
                    .ok_or_else(|| anyhow::anyhow!("{BINARY_SNAPSHOT_FILE} is truncated"))?;
                let meta = b
                    .get(4..4 + n)
                    .ok_or_else(|| anyhow::anyhow!("{BINARY_SNAPSHOT_FILE} is truncated"))?;
                Some(StoredSnapshot {
                    meta: serde_json::from_slice(meta)?,
                    document: b[4 + n..].to_vec(),
                })
            }
            Err(_) => None,
        };
        let applied = match &snapshot {
            Some(s) => {
                broker.install(&s.document);
                Applied {
                    last_applied: s.meta.last_log_id,
                    membership: s.meta.last_membership.clone(),
                }
            }
            None => Applied::default(),
        };
        Ok(Self::with(
            dir,
            applied,
            snapshot,
            broker,
            applied_index,
            false,
        ))
    }

    /// Writes `stored` atomically: JSON for the metadata group (`raft-snapshot.json`); for a
    /// volatile state machine, whose documents are binary and large, `raft-snapshot.bin`: a `u32`
    /// length and the metadata as JSON, then the document as it is.
    fn store_snapshot(&self, stored: &StoredSnapshot) -> std::io::Result<()> {
        if self.persist {
            let json = serde_json::to_vec(stored).unwrap_or_default();
            return write_atomic(&self.dir.join(SNAPSHOT_FILE), &json);
        }
        let meta = serde_json::to_vec(&stored.meta).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + meta.len() + stored.document.len());
        out.extend_from_slice(&u32::try_from(meta.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&stored.document);
        write_atomic(&self.dir.join(BINARY_SNAPSHOT_FILE), &out)
    }

    fn save_applied(&self) -> std::io::Result<()> {
        if !self.persist {
            return Ok(());
        }
        let json = serde_json::to_vec(&*lock(&self.applied)).unwrap_or_default();
        write_atomic(&self.dir.join(APPLIED_FILE), &json)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let applied = lock(&self.applied).clone();
        let document = self.broker.snapshot();
        let index = applied.last_applied.map_or(0, |l| l.index);
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id: format!("{index}-{}", crate::clock::wall_ms()),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            document: document.clone(),
        };
        self.store_snapshot(&stored).map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(None, AnyError::new(&e)),
        })?;
        *lock(&self.snapshot) = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(document)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        let a = lock(&self.applied);
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<()>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut replies = Vec::new();
        for e in entries {
            match &e.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(p) => {
                    let broker = Arc::clone(&self.broker);
                    crate::sync::wait_off_worker(|| broker.apply(p));
                }
                EntryPayload::Membership(m) => {
                    lock(&self.applied).membership =
                        StoredMembership::new(Some(e.log_id), m.clone());
                }
            }
            lock(&self.applied).last_applied = Some(e.log_id);
            self.applied_index
                .store(e.log_id.index, std::sync::atomic::Ordering::Release);
            replies.push(());
        }
        self.save_applied().map_err(|e| StorageError::IO {
            source: StorageIOError::write_state_machine(AnyError::new(&e)),
        })?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let document = snapshot.into_inner();
        let broker = Arc::clone(&self.broker);
        crate::sync::wait_off_worker(|| broker.install(&document));
        {
            let mut a = lock(&self.applied);
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
        }
        self.applied_index.store(
            meta.last_log_id.map_or(0, |l| l.index),
            std::sync::atomic::Ordering::Release,
        );
        self.save_applied().map_err(|e| StorageError::IO {
            source: StorageIOError::write_state_machine(AnyError::new(&e)),
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            document,
        };
        self.store_snapshot(&stored).map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(None, AnyError::new(&e)),
        })?;
        *lock(&self.snapshot) = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(lock(&self.snapshot).as_ref().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.document.clone())),
        }))
    }
}

// ---------------------------------------------------------------------------------------- network

/// A Raft RPC as carried by the link.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum RaftRpc {
    /// AppendEntries (and heartbeats).
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(VoteRequest<NodeId>),
    /// InstallSnapshot (one chunk).
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
}

/// Octets queued on a link past which no Raft RPC is added to it (below the link's congestion
/// threshold, 8 MiB, even with one more AppendEntries of the quorum group: at most 4 entries).
const RPC_BACKLOG: usize = 2 << 20;

/// Which Raft group an engine is: the RPCs of both travel over the one link to each peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// The metadata log.
    Metadata,
    /// The quorum queues' log (`cluster/quorum/`).
    Quorum,
}

/// Makes the per-peer RPC clients.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) links: Arc<Links>,
    pub(crate) group: Group,
}

/// The RPC client for one peer.
#[derive(Debug)]
pub(crate) struct PeerClient {
    links: Arc<Links>,
    target: NodeId,
    group: Group,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        // A node being added is replicated to before its membership is applied here.
        self.links.add(target, &node.addr);
        PeerClient {
            links: Arc::clone(&self.links),
            target,
            group: self.group,
        }
    }
}

type RpcResult<T, E> =
    Result<T, openraft::error::RPCError<NodeId, Member, openraft::error::RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<T, E>(&self, rpc: RaftRpc, timeout: Duration) -> RpcResult<T, E>
    where
        T: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let body = match self.group {
            Group::Metadata => super::wire::Request::Raft(rpc),
            Group::Quorum => super::wire::Request::QuorumRaft(rpc),
        }
        .encode();
        self.send(&body, timeout).await
    }

    /// Sends an encoded RPC and decodes the peer's JSON answer.
    async fn send<T, E>(&self, body: &[u8], timeout: Duration) -> RpcResult<T, E>
    where
        T: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        use openraft::error::{NetworkError, RPCError, RemoteError, Unreachable};
        // A peer that does not read (stopped, or far behind) is not sent more: the engine retries
        // after its backoff instead of piling RPCs up in the link (which would count as congestion
        // and hold up every publisher of this node).
        if self.links.backlog(self.target) > RPC_BACKLOG {
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other("link backlog: the peer is not reading"),
            )));
        }
        let reply = self
            .links
            .request(self.target, body, timeout)
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let answer: Result<T, openraft::error::RaftError<NodeId, E>> =
            serde_json::from_slice(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        if self.group == Group::Quorum {
            let body = super::quorum::codec::encode_append(&rpc);
            return self.send(&body, option.hard_ttl()).await;
        }
        self.call(RaftRpc::AppendEntries(rpc), option.hard_ttl())
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, openraft::error::InstallSnapshotError> {
        self.call(RaftRpc::InstallSnapshot(rpc), option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RaftRpc::Vote(rpc), option.hard_ttl()).await
    }

    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// Answers a Raft RPC from a peer: the serialized `Result` of the call.
pub(crate) async fn answer(raft: &Raft, rpc: RaftRpc) -> Vec<u8> {
    let json = match rpc {
        RaftRpc::AppendEntries(r) => serde_json::to_vec(&raft.append_entries(r).await),
        RaftRpc::Vote(r) => serde_json::to_vec(&raft.vote(r).await),
        RaftRpc::InstallSnapshot(r) => serde_json::to_vec(&raft.install_snapshot(r).await),
    };
    json.unwrap_or_default()
}

/// The openraft configuration: 100 ms heartbeats, elections after 400–800 ms of silence, a snapshot
/// every `snapshot_every` entries (keeping a fifth of that behind it for followers slightly behind).
pub(crate) fn config(snapshot_every: u64) -> anyhow::Result<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: "warren".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: snapshot_every / 5,
        ..Default::default()
    };
    Ok(Arc::new(c.validate()?))
}

/// The quorum queues' group: 100 ms heartbeats and elections after 400–800 ms of silence (a node
/// that loses its link to the leader calls one at once: `Quorum::node_down`; the others grant their
/// vote once the leader's lease, openraft's `election_timeout_max`, has run out, so a lost leader is
/// replaced in under a second), a snapshot every
/// 200 entries (each a batch of operations, up to 1 MiB of bodies), keeping 50 behind it, and at
/// most 4 entries per AppendEntries (the log in memory and an RPC stay bounded).
pub(crate) fn quorum_config() -> anyhow::Result<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: "warren-quorum".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(200),
        max_in_snapshot_log_to_keep: 50,
        max_payload_entries: 4,
        ..Default::default()
    };
    Ok(Arc::new(c.validate()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(Proposal {
                origin: 1,
                request: index,
                command: super::super::Command::NodeStarted { node: 1 },
            }),
        }
    }

    #[tokio::test]
    async fn the_log_reopens_with_its_entries_and_stops_at_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("warren-raft-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = Vec::new();
        for i in 1..=3 {
            encode_entry(&entry(1, i), &mut bytes);
        }
        // A truncation rewrote index 3 in a later term: the last record for an index wins.
        encode_entry(&entry(2, 3), &mut bytes);
        // A torn record at the end (half written when the node died).
        let mut torn = Vec::new();
        encode_entry(&entry(2, 4), &mut torn);
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(dir.join(LOG_FILE), &bytes).unwrap();

        let mut log = LogStore::open(&dir).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_log_id.map(|l| (l.leader_id.term, l.index)),
            Some((2, 3))
        );
        let entries = log.try_get_log_entries(1..).await.unwrap();
        assert_eq!(entries.len(), 3);
        // The torn tail is gone from the file too (it was rewritten at open).
        drop(log);
        let mut again = LogStore::open(&dir).unwrap();
        assert_eq!(again.try_get_log_entries(1..).await.unwrap().len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn membership_records_written_before_members_had_names_still_read() {
        // Until run-time membership changes, the node type was openraft's BasicNode (an address).
        let old = openraft::Membership::<NodeId, openraft::BasicNode>::new(
            vec![[1, 2].into()],
            std::collections::BTreeMap::from([
                (1, openraft::BasicNode::new("127.0.0.1:1")),
                (2, openraft::BasicNode::new("127.0.0.1:2")),
            ]),
        );
        let m: openraft::Membership<NodeId, Member> =
            serde_json::from_value(serde_json::to_value(&old).unwrap()).unwrap();
        let read: Vec<(NodeId, Member)> = m.nodes().map(|(id, n)| (*id, n.clone())).collect();
        assert_eq!(
            read,
            vec![
                (
                    1,
                    Member {
                        addr: "127.0.0.1:1".into(),
                        name: String::new()
                    }
                ),
                (
                    2,
                    Member {
                        addr: "127.0.0.1:2".into(),
                        name: String::new()
                    }
                ),
            ]
        );
        // A member without a name is written as BasicNode was.
        assert_eq!(
            serde_json::to_value(&read[0].1).unwrap(),
            serde_json::to_value(openraft::BasicNode::new("127.0.0.1:1")).unwrap()
        );
    }
}
