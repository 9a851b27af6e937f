//! A Warren cluster: nodes that share one replicated metadata store and serve each other's queues.
//!
//! **Membership** is a static list (RabbitMQ's classic-config peer discovery): every node is started
//! with its own name and inter-node address and the same list of peers (`[cluster]` in the config
//! file, or `--cluster-node`, `--cluster-listen`, `--cluster-peer`). A node's id is derived from its
//! name ([`node_id`]), so it stays the same whatever the list holds. Every node initialises the Raft group with the full list when it
//! has no Raft state yet (openraft allows that with identical lists); a node restarted with its data
//! directory rejoins with its log.
//!
//! **Metadata** (vhosts, users, permissions, policies, exchanges, queues, bindings) changes through
//! one Raft log ([`Command`], `command.rs`): a node's vhost or administration method, asked for a
//! change, proposes it ([`Cluster::replicate`]) — to the leader, forwarded over the link when another
//! node leads — and waits until the change is committed and applied *on this node*, then answers with
//! what the local apply returned (declare-ok, or the refusal every node reached). A node that cannot
//! reach a majority cannot commit: its change is refused after 10 s (541 INTERNAL_ERROR on AMQP, 503
//! on the management API) and nothing diverges.
//!
//! **Queues** live on their home node, the node that proposed their declaration; other nodes hold
//! proxies (`remote.rs`). The consensus engine is openraft (`raft.rs`) behind [`Consensus`].

pub(crate) mod command;
pub(crate) mod link;
mod raft;
mod remote;
mod wire;

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use openraft::BasicNode;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{info, warn};

pub(crate) use self::command::Command;
use self::command::Unavailable;
use self::link::{Handler, Links, NodeId, Reply};
use self::wire::{ProposeReply, Request};
use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::queue::RemoteHome;
use crate::sync::lock;

/// A node's id: derived from its name alone (the first 23 bits of its SHA-256, never 0), so that it
/// does not depend on the rest of the member list (connection ids of other nodes carry it in 23 bits:
/// `command::connection_id`).
fn node_id(name: &str) -> NodeId {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let id = u64::from_be_bytes([0, 0, 0, 0, 0, digest[0], digest[1], digest[2]]) >> 1;
    id.max(1)
}

/// What a proposer hears when its committed change reached this node inside a snapshot.
const COVERED: &str = "committed, and applied here through a snapshot (its own reply is not known)";

/// How long a proposer waits for its change to be committed and applied here.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A proposed change: who proposed it (the home of a declared queue; the node waiting for the
/// result), the proposer's request number, and the change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Proposal {
    /// The proposing node.
    pub origin: NodeId,
    /// Its request number (the result goes to the waiter with it).
    pub request: u64,
    /// The change.
    pub command: Command,
}

/// The consensus engine as the cluster uses it: append a proposal to the replicated log (on the
/// leader), answer the peers' RPCs, say who leads. openraft implements it; another engine could.
pub(crate) trait Consensus: Send + Sync + 'static {
    /// Appends `proposal` if this node leads and waits until it is committed.
    fn propose(
        &self,
        proposal: Proposal,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProposeReply> + Send + '_>>;
    /// Answers a Raft RPC from a peer.
    fn answer(
        &self,
        rpc: raft::RaftRpc,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>>;
    /// The leader this node knows, and the members with whether each is a voter.
    fn leader(&self) -> Option<NodeId>;
}

impl Consensus for raft::Raft {
    fn propose(
        &self,
        proposal: Proposal,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProposeReply> + Send + '_>> {
        Box::pin(async move {
            use openraft::error::{ClientWriteError, RaftError};
            match self.client_write(proposal).await {
                Ok(r) => ProposeReply::Committed(r.log_id.index),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    ProposeReply::NotLeader(f.leader_id)
                }
                Err(e) => ProposeReply::Failed(e.to_string()),
            }
        })
    }

    fn answer(
        &self,
        rpc: raft::RaftRpc,
    ) -> std::pin::Pin<Box<dyn Future<Output = Vec<u8>> + Send + '_>> {
        Box::pin(raft::answer(self, rpc))
    }

    fn leader(&self) -> Option<NodeId> {
        self.metrics().borrow().current_leader
    }
}

/// One node of a cluster. See the module docs.
pub(crate) struct Cluster {
    me: NodeId,
    /// Every member's name and inter-node address, by id.
    members: BTreeMap<NodeId, (String, String)>,
    pub(crate) links: Arc<Links>,
    engine: OnceLock<Arc<dyn Consensus>>,
    raft: OnceLock<raft::Raft>,
    /// Proposals of this node waiting for their local apply, by request number.
    pending: Mutex<HashMap<u64, std::sync::mpsc::SyncSender<Box<dyn Any + Send>>>>,
    next_request: AtomicU64,
    broker: OnceLock<Weak<Broker>>,
    runtime: OnceLock<tokio::runtime::Handle>,
    pub(crate) remote: remote::Remote,
    /// The last log index applied here (entries or snapshot), shared with the state machine.
    applied: Arc<AtomicU64>,
    config: ClusterConfig,
    me_weak: Weak<Cluster>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// A member's state as the management API shows it.
#[derive(Debug, Clone)]
pub(crate) struct MemberState {
    /// Node name.
    pub name: String,
    /// Whether it is this node or its link is up.
    pub running: bool,
    /// Whether it leads the Raft group (as this node knows).
    pub leader: bool,
}

impl Cluster {
    /// The cluster as `config` describes it (not yet running: see [`Cluster::start`]).
    ///
    /// # Errors
    /// A member list without this node, duplicate names, or an empty secret.
    pub(crate) fn new(config: &ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
        let mut names: Vec<(String, String)> = config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.address.clone()))
            .collect();
        names.retain(|(n, _)| *n != config.node);
        names.push((config.node.clone(), config.listen.clone()));
        names.sort();
        for w in names.windows(2) {
            if w[0].0 == w[1].0 {
                anyhow::bail!("cluster node name '{}' is listed twice", w[0].0);
            }
        }
        if config.secret.is_empty() {
            anyhow::bail!(
                "the cluster needs a shared secret ([cluster] secret or secret_file, or \
                 WARREN_CLUSTER_SECRET)"
            );
        }
        let mut members: BTreeMap<NodeId, (String, String)> = BTreeMap::new();
        for (name, address) in names {
            let id = node_id(&name);
            if let Some((other, _)) = members.insert(id, (name.clone(), address)) {
                anyhow::bail!(
                    "cluster node names '{other}' and '{name}' map to the same node id: rename one"
                );
            }
        }
        let me = members
            .iter()
            .find(|(_, (n, _))| *n == config.node)
            .map(|(id, _)| *id)
            .context("this node is not in the member list")?;
        let addresses: Vec<(NodeId, String)> = members
            .iter()
            .map(|(id, (_, a))| (*id, a.clone()))
            .collect();
        let links = Links::new(me, config.secret.as_bytes().to_vec(), &addresses);
        Ok(Arc::new_cyclic(|w| Cluster {
            me,
            members,
            links,
            engine: OnceLock::new(),
            raft: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            next_request: AtomicU64::new(1),
            broker: OnceLock::new(),
            runtime: OnceLock::new(),
            remote: remote::Remote::default(),
            applied: Arc::new(AtomicU64::new(0)),
            config: config.clone(),
            me_weak: w.clone(),
        }))
    }

    /// This node's id.
    pub(crate) fn me(&self) -> NodeId {
        self.me
    }

    /// A member's name (`?` for an unknown id).
    pub(crate) fn name_of(&self, id: NodeId) -> String {
        self.members
            .get(&id)
            .map_or_else(|| format!("node-{id}"), |(n, _)| n.clone())
    }

    /// A member's id by name.
    pub(crate) fn id_of(&self, name: &str) -> Option<NodeId> {
        self.members
            .iter()
            .find(|(_, (n, _))| n == name)
            .map(|(id, _)| *id)
    }

    /// This node's name.
    pub(crate) fn node_name(&self) -> &str {
        &self.config.node
    }

    /// Every member with its state, this node first.
    pub(crate) fn member_states(&self) -> Vec<MemberState> {
        let leader = self.engine.get().and_then(|e| e.leader());
        let mut out: Vec<MemberState> = self
            .members
            .iter()
            .map(|(id, (name, _))| MemberState {
                name: name.clone(),
                running: *id == self.me || self.links.is_up(*id),
                leader: leader == Some(*id),
            })
            .collect();
        out.sort_by(|a, b| {
            (a.name != self.config.node, &a.name).cmp(&(b.name != self.config.node, &b.name))
        });
        out
    }

    /// The proxy's home for queues homed on `node` in `vhost`.
    pub(crate) fn remote_home(&self, node: NodeId, vhost: &str) -> Arc<dyn RemoteHome> {
        Arc::new(remote::Home {
            cluster: self.me_weak.clone(),
            node,
            vhost: vhost.to_owned(),
        })
    }

    /// Whether publishes to another node wait to be written (publishers should pause reading).
    pub(crate) fn congested(&self) -> bool {
        self.links.any_congested()
    }

    fn broker(&self) -> Option<Arc<Broker>> {
        self.broker.get().and_then(Weak::upgrade)
    }

    /// Runs `f` to completion from synchronous code, off the Tokio worker.
    pub(crate) fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self.runtime.get() {
            Some(rt) => crate::sync::wait_off_worker(|| rt.block_on(f)),
            None => futures_lite::future::block_on(f),
        }
    }

    /// Proposes `command` and waits until this node has applied it; returns what the apply returned
    /// (the same on every node), or `T`'s refusal when it is not committed within 10 s.
    pub(crate) fn replicate<T: Unavailable + 'static>(&self, command: Command) -> T {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        lock(&self.pending).insert(request, tx);
        let proposal = Proposal {
            origin: self.me,
            request,
            command,
        };
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        let committed = self.block_on(self.submit(proposal, deadline));
        let outcome = match committed {
            Ok(index) => crate::sync::wait_off_worker(|| self.await_apply(&rx, index, deadline)),
            Err(why) => Err(why),
        };
        lock(&self.pending).remove(&request);
        match outcome {
            Ok(result) => match result.downcast::<T>() {
                Ok(t) => *t,
                Err(_) => T::unavailable("internal error: unexpected apply result".to_owned()),
            },
            Err(why) => T::unavailable(format!(
                "cluster metadata change not committed: {why} (is a majority of the {} nodes \
                 reachable?)",
                self.members.len()
            )),
        }
    }

    /// Waits for this node's apply of the proposal committed at `index`: its result, or — when the
    /// node reached past `index` through an installed snapshot, which applies no single entry — a
    /// refusal saying so (the change is in place; only its reply is lost).
    fn await_apply(
        &self,
        rx: &std::sync::mpsc::Receiver<Box<dyn Any + Send>>,
        index: u64,
        deadline: Instant,
    ) -> Result<Box<dyn Any + Send>, String> {
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(result) => return Ok(result),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the proposal was dropped".to_owned())
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if self.applied.load(Ordering::Acquire) >= index {
                if let Ok(result) = rx.try_recv() {
                    return Ok(result);
                }
                return Err(COVERED.to_owned());
            }
            if Instant::now() >= deadline {
                return Err("committed but not applied on this node in time".to_owned());
            }
        }
    }

    async fn submit(&self, proposal: Proposal, deadline: Instant) -> Result<u64, String> {
        let Some(engine) = self.engine.get() else {
            return Err("the cluster is not started".to_owned());
        };
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = match engine.leader() {
                // A restarted node may still believe it leads (its persisted vote) while another
                // node does: its own append never commits. Bounded, then the leader is asked again.
                Some(l) if l == self.me => {
                    match tokio::time::timeout(
                        left.min(Duration::from_secs(2)),
                        engine.propose(proposal.clone()),
                    )
                    .await
                    {
                        Ok(reply) => reply,
                        Err(_) => {
                            ProposeReply::Failed("not committed by this leader in time".into())
                        }
                    }
                }
                Some(l) => {
                    let body = Request::Propose(proposal.clone()).encode();
                    match self.links.request(l, &body, left).await {
                        Ok(b) => serde_json::from_slice(&b)
                            .unwrap_or_else(|e| ProposeReply::Failed(e.to_string())),
                        Err(e) => ProposeReply::Failed(e.to_string()),
                    }
                }
                None => ProposeReply::NotLeader(None),
            };
            match reply {
                ProposeReply::Committed(index) => return Ok(index),
                ProposeReply::NotLeader(_) => last = "no leader".to_owned(),
                ProposeReply::Failed(why) => last = why,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(last)
    }

    /// Starts the node: the inter-node listener and links, the Raft engine (initialising the group
    /// on a fresh node), then announces the start ([`Command::NodeStarted`]) and waits until that is
    /// applied here, so that clients are served only once this node has caught up.
    ///
    /// # Errors
    /// The inter-node address cannot be bound, or the Raft state cannot be opened.
    pub(crate) async fn start(self: &Arc<Self>, broker: &Arc<Broker>) -> anyhow::Result<()> {
        let _ = self.broker.set(Arc::downgrade(broker));
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let dir = match &broker.config.data_dir {
            Some(d) => d.join("cluster"),
            None => anyhow::bail!("a cluster node needs a data directory (--data-dir)"),
        };
        let listener = TcpListener::bind(&self.config.listen)
            .await
            .with_context(|| format!("binding {} (inter-node listener)", self.config.listen))?;
        info!(node = %self.config.node, id = self.me, address = %listener.local_addr()?, members = self.members.len(), "cluster: inter-node listener up");
        let log = raft::LogStore::open(&dir).context("opening the Raft log")?;
        let apply: Arc<dyn raft::Apply> = Arc::new(Applier {
            cluster: self.me_weak.clone(),
        });
        let sm = raft::StateMachine::open(&dir, apply, Arc::clone(&self.applied))
            .context("opening the Raft state")?;
        let network = raft::Network {
            links: Arc::clone(&self.links),
        };
        let every = self.config.snapshot_every.unwrap_or(5_000);
        let r = raft::Raft::new(self.me, raft::config(every)?, network, log, sm)
            .await
            .context("starting Raft")?;
        let _ = self.raft.set(r.clone());
        let _ = self.engine.set(Arc::new(r.clone()));
        self.links.start(
            listener,
            Arc::new(LinkHandler {
                cluster: self.me_weak.clone(),
            }),
        );
        if !r.is_initialized().await.unwrap_or(true) {
            let members: BTreeMap<NodeId, BasicNode> = self
                .members
                .iter()
                .map(|(id, (_, addr))| (*id, BasicNode::new(addr)))
                .collect();
            if let Err(e) = r.initialize(members).await {
                info!(error = %e, "cluster already initialised");
            }
        }
        let me = Arc::clone(self);
        let announced = tokio::task::spawn_blocking(move || {
            let mut waited = 0u32;
            loop {
                let r: crate::error::AmqpResult<()> =
                    me.replicate(Command::NodeStarted { node: me.me });
                match r {
                    Ok(()) => return,
                    // Applied through a snapshot: in place all the same.
                    Err(e) if e.to_string().contains(COVERED) => return,
                    Err(e) => {
                        waited += 1;
                        warn!(error = %e, attempt = waited, "cluster: waiting for a majority of the nodes before serving clients");
                        std::thread::sleep(Duration::from_millis(500));
                    }
                }
            }
        });
        announced.await.context("announcing the node's start")?;
        info!(node = %self.config.node, leader = ?self.engine.get().and_then(|e| e.leader()).map(|l| self.name_of(l)), "cluster: joined; serving clients");
        Ok(())
    }
}

/// The state machine's view of the broker.
struct Applier {
    cluster: Weak<Cluster>,
}

impl raft::Apply for Applier {
    fn apply(&self, proposal: &Proposal) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        let Some(broker) = c.broker() else {
            return;
        };
        let result = proposal.command.apply(&broker, c.me, proposal.origin);
        if proposal.origin == c.me {
            if let Some(tx) = lock(&c.pending).remove(&proposal.request) {
                let _ = tx.try_send(result);
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let Some(c) = self.cluster.upgrade() else {
            return Vec::new();
        };
        let Some(broker) = c.broker() else {
            return Vec::new();
        };
        serde_json::to_vec(&snapshot::take(&broker, &c)).unwrap_or_default()
    }

    fn install(&self, document: &[u8]) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        let Some(broker) = c.broker() else {
            return;
        };
        match serde_json::from_slice::<snapshot::Snapshot>(document) {
            Ok(s) => snapshot::install(&broker, &c, s),
            Err(e) => warn!(error = %e, "cluster snapshot unreadable: not installed"),
        }
    }
}

mod snapshot;

/// Feeds the link's traffic to the node.
struct LinkHandler {
    cluster: Weak<Cluster>,
}

impl Handler for LinkHandler {
    fn request(&self, from: NodeId, body: Bytes) -> Reply {
        let cluster = self.cluster.upgrade();
        Box::pin(async move {
            let Some(c) = cluster else {
                return Bytes::new();
            };
            let Ok(request) = serde_json::from_slice::<Request>(&body) else {
                warn!(peer = from, "malformed inter-node request ignored");
                return Bytes::new();
            };
            let reply = match request {
                Request::Raft(rpc) => match c.engine.get() {
                    Some(e) => e.answer(rpc).await,
                    None => Vec::new(),
                },
                Request::Propose(p) => {
                    let reply = match c.engine.get() {
                        Some(e) => e.propose(p).await,
                        None => ProposeReply::Failed("not started".to_owned()),
                    };
                    serde_json::to_vec(&reply).unwrap_or_default()
                }
                other => {
                    let c = Arc::clone(&c);
                    tokio::task::spawn_blocking(move || c.serve_queue(from, other))
                        .await
                        .unwrap_or_default()
                }
            };
            Bytes::from(reply)
        })
    }

    fn message(&self, from: NodeId, body: Bytes) {
        let Some(c) = self.cluster.upgrade() else {
            return;
        };
        match wire::Message::decode(body) {
            Some(m) => c.on_message(from, m),
            None => warn!(peer = from, "malformed inter-node message ignored"),
        }
    }

    fn peer_down(&self, peer: NodeId) {
        if let Some(c) = self.cluster.upgrade() {
            c.on_peer_down(peer);
        }
    }
}
