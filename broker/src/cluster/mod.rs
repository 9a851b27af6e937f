//! A Warren cluster: nodes that share one replicated metadata store and serve each other's queues.
//!
//! **Membership** starts from a static list (RabbitMQ's classic-config peer discovery): the first
//! nodes are started with their own name and inter-node address and the same list of peers
//! (`[cluster]` in the config file, or `--cluster-node`, `--cluster-listen`, `--cluster-peer`), and
//! each initialises the Raft group with the full list when it has no Raft state yet (openraft allows
//! that with identical lists). After that the Raft membership is the member list: a node started
//! with `--cluster-join` and one or more members as peers asks to be added (the leader adds it as a
//! learner, waits until it has caught up, then makes it a voter: [`Request::Join`]), and
//! `DELETE /api/nodes/{name}` removes a stopped member ([`Cluster::forget`], RabbitMQ's
//! `forget_cluster_node`). A node's id is derived from its name ([`node_id`]), so it stays the same
//! whatever the list holds; the membership records each member's name and address ([`Member`]). A
//! node restarted with its data directory rejoins with its log, whatever its flags say.
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
pub(crate) mod quorum;
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
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tracing::{info, warn};

pub(crate) use self::command::Command;
use self::command::Unavailable;
use self::link::{Handler, Links, NodeId, Reply};
pub(crate) use self::wire::QueueFigures;
use self::wire::{ProposeReply, Request};
use crate::administration::AdminError;
use crate::broker::Broker;
use crate::config::ClusterConfig;
use crate::queue::RemoteHome;
use crate::sync::{lock, read, write};

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

/// How long a membership change (join, forget) may take: a joining node first catches up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// A cluster member as the Raft membership records it (openraft's node type): its inter-node address
/// and its name. Records written before names were carried hold only the address (`name` empty:
/// the static member list names those), so the format reads both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// Inter-node address, `HOST:PORT`.
    pub addr: String,
    /// Node name, e.g. `warren@n1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// The membership as the engine last reported it: each member and whether it votes.
pub(crate) type Membership = Vec<(NodeId, Member, bool)>;

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
    /// The leader this node knows.
    fn leader(&self) -> Option<NodeId>;
    /// On the leader: adds `member` as a learner, waits until it has caught up, then makes it a
    /// voter (nothing to do when it already votes).
    fn add_member(
        &self,
        id: NodeId,
        member: Member,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProposeReply> + Send + '_>>;
    /// On the leader: removes `id` from the membership (voter or learner).
    fn remove_member(
        &self,
        id: NodeId,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProposeReply> + Send + '_>>;
    /// Calls `on_change` with the membership now and after each change this node learns of (an
    /// empty list until the node is initialised or has been replicated to).
    fn watch_membership(&self, on_change: Box<dyn Fn(Membership) -> bool + Send + Sync>);
}

/// What a refused client write tells the proposer: go to the leader, or why not.
fn refused(
    e: openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, Member>>,
) -> ProposeReply {
    use openraft::error::{ClientWriteError, RaftError};
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            ProposeReply::NotLeader(f.leader_id)
        }
        e => ProposeReply::Failed(e.to_string()),
    }
}

impl Consensus for raft::Raft {
    fn propose(
        &self,
        proposal: Proposal,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProposeReply> + Send + '_>> {
        Box::pin(async move {
            match self.client_write(proposal).await {
                Ok(r) => ProposeReply::Committed(r.log_id.index),
                Err(e) => refused(e),
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

    fn add_member(
        &self,
        id: NodeId,
        member: Member,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProposeReply> + Send + '_>> {
        Box::pin(async move {
            use openraft::ChangeMembers;
            let current = Arc::clone(&self.metrics().borrow().membership_config);
            if let Some(known) = current.membership().get_node(&id) {
                if !known.name.is_empty() && known.name != member.name {
                    return ProposeReply::Failed(format!(
                        "node names '{}' and '{}' map to the same node id: rename the new node",
                        known.name, member.name
                    ));
                }
                if current.voter_ids().any(|v| v == id) {
                    return ProposeReply::Committed(current.log_id().map_or(0, |l| l.index));
                }
            } else if let Err(e) = self.add_learner(id, member, true).await {
                return refused(e);
            }
            let voter = std::collections::BTreeSet::from([id]);
            match self
                .change_membership(ChangeMembers::AddVoterIds(voter), false)
                .await
            {
                Ok(r) => ProposeReply::Committed(r.log_id.index),
                Err(e) => refused(e),
            }
        })
    }

    fn remove_member(
        &self,
        id: NodeId,
    ) -> std::pin::Pin<Box<dyn Future<Output = ProposeReply> + Send + '_>> {
        Box::pin(async move {
            use openraft::ChangeMembers;
            let current = Arc::clone(&self.metrics().borrow().membership_config);
            let ids = std::collections::BTreeSet::from([id]);
            let change = if current.voter_ids().any(|v| v == id) {
                ChangeMembers::RemoveVoters(ids)
            } else if current.membership().get_node(&id).is_some() {
                ChangeMembers::RemoveNodes(ids)
            } else {
                return ProposeReply::Committed(current.log_id().map_or(0, |l| l.index));
            };
            match self.change_membership(change, false).await {
                Ok(r) => ProposeReply::Committed(r.log_id.index),
                Err(e) => refused(e),
            }
        })
    }

    fn watch_membership(&self, on_change: Box<dyn Fn(Membership) -> bool + Send + Sync>) {
        let mut metrics = self.metrics();
        tokio::spawn(async move {
            let mut seen = None;
            loop {
                let current = Arc::clone(&metrics.borrow().membership_config);
                if seen != Some(*current.log_id()) {
                    seen = Some(*current.log_id());
                    let voters: std::collections::BTreeSet<NodeId> = current.voter_ids().collect();
                    let list = current
                        .nodes()
                        .map(|(id, m)| (*id, m.clone(), voters.contains(id)))
                        .collect();
                    if !on_change(list) {
                        return;
                    }
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

/// One node of a cluster. See the module docs.
pub(crate) struct Cluster {
    me: NodeId,
    /// Every member (name filled in), by id, and whether it votes: the static list until the Raft
    /// membership is known, then that membership ([`Cluster::adopt_membership`]).
    members: std::sync::RwLock<BTreeMap<NodeId, (Member, bool)>>,
    pub(crate) links: Arc<Links>,
    engine: OnceLock<Arc<dyn Consensus>>,
    /// Proposals of this node waiting for their local apply, by request number (numbers start at a
    /// random point per process).
    pending: Mutex<HashMap<u64, std::sync::mpsc::SyncSender<Box<dyn Any + Send>>>>,
    next_request: AtomicU64,
    broker: OnceLock<Weak<Broker>>,
    runtime: OnceLock<tokio::runtime::Handle>,
    pub(crate) remote: remote::Remote,
    /// The quorum queues' Raft group on this node.
    pub(crate) quorum: Arc<quorum::Quorum>,
    /// The last log index applied here (entries or snapshot), shared with the state machine.
    applied: Arc<AtomicU64>,
    config: ClusterConfig,
    me_weak: Weak<Cluster>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("me", &self.me)
            .field("members", &*read(&self.members))
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
    /// Whether it votes (a joining node is a learner until it has caught up).
    pub voter: bool,
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
        if config.join && config.peers.is_empty() {
            anyhow::bail!("--cluster-join needs a member to ask: name one with --cluster-peer");
        }
        let mut members: BTreeMap<NodeId, (Member, bool)> = BTreeMap::new();
        for (name, addr) in names {
            let id = node_id(&name);
            let member = Member {
                addr,
                name: name.clone(),
            };
            if let Some((other, _)) = members.insert(id, (member, true)) {
                anyhow::bail!(
                    "cluster node names '{}' and '{name}' map to the same node id: rename one",
                    other.name
                );
            }
        }
        let me = node_id(&config.node);
        let addresses: Vec<(NodeId, String)> = members
            .iter()
            .map(|(id, (m, _))| (*id, m.addr.clone()))
            .collect();
        let links = Links::new(me, config.secret.as_bytes().to_vec(), &addresses);
        Ok(Arc::new_cyclic(|w| Cluster {
            me,
            members: std::sync::RwLock::new(members),
            links,
            engine: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            // Random per process: a restarted node replays entries its earlier run proposed, whose
            // request numbers must not match a waiter of this run.
            next_request: AtomicU64::new(rand::random::<u64>() >> 1),
            broker: OnceLock::new(),
            runtime: OnceLock::new(),
            remote: remote::Remote::default(),
            quorum: quorum::Quorum::new(w.clone(), me),
            applied: Arc::new(AtomicU64::new(0)),
            config: config.clone(),
            me_weak: w.clone(),
        }))
    }

    /// This node's id.
    pub(crate) fn me(&self) -> NodeId {
        self.me
    }

    /// A member's name (`node-ID` for an id that is not a member).
    pub(crate) fn name_of(&self, id: NodeId) -> String {
        read(&self.members)
            .get(&id)
            .map_or_else(|| format!("node-{id}"), |(m, _)| m.name.clone())
    }

    /// A member's id by name.
    pub(crate) fn id_of(&self, name: &str) -> Option<NodeId> {
        read(&self.members)
            .iter()
            .find(|(_, (m, _))| m.name == name)
            .map(|(id, _)| *id)
    }

    /// Takes the Raft membership as the member list: names from the records (or, for records
    /// without one, from the list so far), links to the members added and dropped to those gone.
    /// An empty membership (not initialised, or not yet replicated to) changes nothing.
    fn adopt_membership(&self, membership: Membership) {
        if membership.is_empty() {
            return;
        }
        let mut members = write(&self.members);
        let mut next = BTreeMap::new();
        for (id, mut m, voter) in membership {
            if m.name.is_empty() {
                m.name = members
                    .get(&id)
                    .map_or_else(|| format!("node-{id}"), |(old, _)| old.name.clone());
            }
            if !members.contains_key(&id) {
                info!(node = %m.name, address = %m.addr, voter, "cluster: member added");
                self.links.add(id, &m.addr);
            }
            next.insert(id, (m, voter));
        }
        let gone: Vec<NodeId> = members
            .iter()
            .filter(|(id, _)| !next.contains_key(id))
            .map(|(id, (m, _))| {
                info!(node = %m.name, "cluster: member removed");
                *id
            })
            .collect();
        *members = next;
        drop(members);
        // Dropping a link tells the node the peer is down, which reads the member list.
        for id in gone {
            if id != self.me {
                self.links.remove(id);
            }
        }
    }

    /// The members that vote now.
    pub(crate) fn voters(&self) -> BTreeMap<NodeId, Member> {
        read(&self.members)
            .iter()
            .filter(|(_, (_, voter))| *voter)
            .map(|(id, (m, _))| (*id, m.clone()))
            .collect()
    }

    /// This node's name.
    pub(crate) fn node_name(&self) -> &str {
        &self.config.node
    }

    /// Every member with its state, this node first.
    pub(crate) fn member_states(&self) -> Vec<MemberState> {
        let leader = self.engine.get().and_then(|e| e.leader());
        let mut out: Vec<MemberState> = read(&self.members)
            .iter()
            .map(|(id, (m, voter))| MemberState {
                name: m.name.clone(),
                running: *id == self.me || self.links.is_up(*id),
                leader: leader == Some(*id),
                voter: *voter,
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
        let committed = self.block_on(self.at_leader(Request::Propose(proposal), deadline));
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
                read(&self.members).len()
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

    /// Has the leader carry out `request` (a proposal, a join, a removal): here when this node leads,
    /// else forwarded over the link; retried until `deadline` while there is no leader or it refuses.
    /// Returns the log index the change was committed at.
    async fn at_leader(&self, request: Request, deadline: Instant) -> Result<u64, String> {
        let Some(engine) = self.engine.get() else {
            return Err("the cluster is not started".to_owned());
        };
        let mut last = String::from("no leader");
        while Instant::now() < deadline {
            // Each attempt is bounded, then the leader is asked again: a leader that stopped
            // (SIGSTOP, a cut link) is replaced after an election, and a restarted node may still
            // believe it leads (its persisted vote) while another node does, so that its own append
            // never commits. Proposals are idempotent, so a repeated one is harmless.
            let bound = match request {
                Request::Propose(_) => Duration::from_secs(2),
                _ => Duration::from_secs(30),
            };
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(bound);
            let reply = match engine.leader() {
                Some(l) if l == self.me => {
                    match tokio::time::timeout(left, self.lead(&request)).await {
                        Ok(reply) => reply,
                        Err(_) => {
                            ProposeReply::Failed("not committed by this leader in time".into())
                        }
                    }
                }
                Some(l) => match self.links.request(l, &request.encode(), left).await {
                    Ok(b) => serde_json::from_slice(&b)
                        .unwrap_or_else(|e| ProposeReply::Failed(e.to_string())),
                    Err(e) => ProposeReply::Failed(e.to_string()),
                },
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

    /// Carries out a leader's request on this node's engine (which refuses when it does not lead).
    async fn lead(&self, request: &Request) -> ProposeReply {
        let Some(engine) = self.engine.get() else {
            return ProposeReply::Failed("not started".to_owned());
        };
        match request {
            Request::Propose(p) => engine.propose(p.clone()).await,
            Request::Join(m) => engine.add_member(node_id(&m.name), m.clone()).await,
            Request::Forget(id) => engine.remove_member(*id).await,
            _ => ProposeReply::Failed("not a request for the leader".to_owned()),
        }
    }

    /// Asks the members named as peers, in turn, to add this node (`--cluster-join`), until one
    /// answers that it is a voter.
    async fn join(&self) {
        let me = Member {
            addr: self.config.listen.clone(),
            name: self.config.node.clone(),
        };
        let body = Request::Join(me).encode();
        let peers: Vec<NodeId> = self.config.peers.iter().map(|p| node_id(&p.name)).collect();
        let mut attempt = 0u32;
        loop {
            for &peer in &peers {
                attempt += 1;
                let why = match self.links.request(peer, &body, MEMBERSHIP_TIMEOUT).await {
                    Ok(b) => match serde_json::from_slice(&b) {
                        Ok(ProposeReply::Committed(_)) => {
                            info!(via = %self.name_of(peer), "cluster: added to the cluster");
                            return;
                        }
                        Ok(ProposeReply::NotLeader(_)) => "no leader".to_owned(),
                        Ok(ProposeReply::Failed(why)) => why,
                        Err(e) => e.to_string(),
                    },
                    Err(e) => e.to_string(),
                };
                if attempt % 10 == 1 {
                    warn!(via = %self.name_of(peer), reason = %why, attempt, "cluster: not joined yet; asking again");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }

    /// The figures of every queue homed on this node (a peer's management API asks).
    fn figures(&self) -> Vec<u8> {
        let Some(broker) = self.broker() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in broker.vhost_list() {
            for q in v.queue_list() {
                if q.home().is_none() {
                    out.push(QueueFigures::of(&v.name, &q));
                }
            }
        }
        serde_json::to_vec(&out).unwrap_or_default()
    }

    /// Asks each of `homes` (at once, 2 s at most) for the figures of the queues homed there, for
    /// this node's management API: by (vhost, queue name). A home that does not answer is left out
    /// (its queues are shown as down).
    pub(crate) async fn home_figures(
        &self,
        homes: std::collections::BTreeSet<NodeId>,
    ) -> HashMap<(String, String), QueueFigures> {
        let body = Bytes::from(Request::Figures.encode());
        let mut asks = tokio::task::JoinSet::new();
        for home in homes {
            let links = Arc::clone(&self.links);
            let body = body.clone();
            asks.spawn(async move {
                links
                    .request(home, &body, Duration::from_secs(2))
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Vec<QueueFigures>>(&b).ok())
                    .unwrap_or_default()
            });
        }
        let mut out = HashMap::new();
        while let Some(figures) = asks.join_next().await {
            for f in figures.unwrap_or_default() {
                out.insert((f.vhost.clone(), f.name.clone()), f);
            }
        }
        out
    }

    /// Removes the member `name`, which must be stopped (RabbitMQ's `forget_cluster_node`): first the
    /// queues homed on it are deleted on every node ([`Command::NodeForgotten`]: their messages were
    /// only there), then it leaves the Raft membership, so that the majority is counted without it.
    ///
    /// # Errors
    /// `NotFound` for a name that is not a member; `BadRequest` for this node or a running one;
    /// `Unavailable` when the changes cannot be committed (no majority).
    pub(crate) fn forget(&self, name: &str) -> Result<(), AdminError> {
        let id = self
            .id_of(name)
            .ok_or_else(|| AdminError::NotFound(format!("no node '{name}' in the cluster")))?;
        if id == self.me || self.links.is_up(id) {
            return Err(AdminError::BadRequest(format!(
                "node '{name}' is running: stop it before removing it from the cluster"
            )));
        }
        let forgotten: crate::error::AmqpResult<()> =
            self.replicate(Command::NodeForgotten { node: id });
        forgotten.map_err(|e| AdminError::Unavailable(e.to_string()))?;
        let deadline = Instant::now() + MEMBERSHIP_TIMEOUT;
        self.block_on(self.at_leader(Request::Forget(id), deadline))
            .map_err(|why| {
                AdminError::Unavailable(format!(
                    "removing node '{name}' from the cluster was not committed: {why}"
                ))
            })?;
        info!(node = %name, "cluster: member removed by request");
        Ok(())
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
        info!(node = %self.config.node, id = self.me, address = %listener.local_addr()?, peers = self.config.peers.len(), "cluster: inter-node listener up");
        let log = raft::LogStore::open(&dir).context("opening the Raft log")?;
        let apply: Arc<dyn raft::Apply> = Arc::new(Applier {
            cluster: self.me_weak.clone(),
        });
        let sm = raft::StateMachine::open(&dir, apply, Arc::clone(&self.applied))
            .context("opening the Raft state")?;
        let network = raft::Network {
            links: Arc::clone(&self.links),
            group: raft::Group::Metadata,
        };
        let every = self.config.snapshot_every.unwrap_or(5_000);
        let r = raft::Raft::new(self.me, raft::config(every)?, network, log, sm)
            .await
            .context("starting Raft")?;
        let _ = self.engine.set(Arc::new(r.clone()));
        self.links.start(
            listener,
            Arc::new(LinkHandler {
                cluster: self.me_weak.clone(),
            }),
        );
        let weak = self.me_weak.clone();
        r.watch_membership(Box::new(move |membership| match weak.upgrade() {
            Some(c) => {
                c.adopt_membership(membership);
                true
            }
            None => false,
        }));
        let initialised = r.is_initialized().await.unwrap_or(true);
        // The quorum group starts with the voters (the static list on a first start; the Raft
        // membership on a node that ran before quorum queues existed). A joining node is added to
        // it by its leader instead.
        let quorum_members = (initialised || !self.config.join).then(|| self.voters());
        self.quorum
            .start(&dir.join("quorum"), Arc::clone(&self.links), quorum_members)
            .await?;
        if !initialised {
            if self.config.join {
                info!(node = %self.config.node, "cluster: asking to join");
                self.join().await;
            } else {
                let members: BTreeMap<NodeId, Member> = read(&self.members)
                    .iter()
                    .map(|(id, (m, _))| (*id, m.clone()))
                    .collect();
                if let Err(e) = r.initialize(members).await {
                    info!(error = %e, "cluster already initialised");
                }
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
        // A forwarded quorum-queue batch is queued for appending now, in arrival order.
        if body.starts_with(b"{\"QuorumPropose\"") {
            if let (Some(c), Ok(Request::QuorumPropose(p))) =
                (cluster.as_ref(), serde_json::from_slice::<Request>(&body))
            {
                let answer = c.quorum.lead(p);
                return Box::pin(async move {
                    Bytes::from(serde_json::to_vec(&answer.await).unwrap_or_default())
                });
            }
        }
        Box::pin(async move {
            let Some(c) = cluster else {
                return Bytes::new();
            };
            if body.first() == Some(&quorum::codec::APPEND_ENTRIES) {
                let reply = match (
                    quorum::codec::decode_append(body.slice(1..)),
                    c.quorum.raft(),
                ) {
                    (Some(rpc), Some(r)) => serde_json::to_vec(&r.append_entries(rpc).await),
                    _ => {
                        warn!(peer = from, "malformed quorum AppendEntries ignored");
                        return Bytes::new();
                    }
                };
                return Bytes::from(reply.unwrap_or_default());
            }
            let Ok(request) = serde_json::from_slice::<Request>(&body) else {
                warn!(peer = from, "malformed inter-node request ignored");
                return Bytes::new();
            };
            let reply = match request {
                Request::Raft(rpc) => match c.engine.get() {
                    Some(e) => e.answer(rpc).await,
                    None => Vec::new(),
                },
                Request::QuorumRaft(rpc) => match c.quorum.raft() {
                    Some(r) => raft::answer(r, rpc).await,
                    None => Vec::new(),
                },
                // (Normally taken above, before the future.)
                Request::QuorumPropose(p) => {
                    serde_json::to_vec(&c.quorum.lead(p).await).unwrap_or_default()
                }
                request @ Request::Propose(_) => {
                    serde_json::to_vec(&c.lead(&request).await).unwrap_or_default()
                }
                // A joining node may know only some members: whoever it asks takes it to the
                // leader.
                request @ (Request::Join(_) | Request::Forget(_)) => {
                    let reply = match c
                        .at_leader(request, Instant::now() + MEMBERSHIP_TIMEOUT)
                        .await
                    {
                        Ok(index) => ProposeReply::Committed(index),
                        Err(why) => ProposeReply::Failed(why),
                    };
                    serde_json::to_vec(&reply).unwrap_or_default()
                }
                Request::Figures => {
                    let c = Arc::clone(&c);
                    tokio::task::spawn_blocking(move || c.figures())
                        .await
                        .unwrap_or_default()
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
            c.quorum.node_down(peer);
            c.on_peer_down(peer);
        }
    }
}
