//! The inter-node link: one authenticated TCP connection from each node to each peer, carrying the
//! Raft RPCs, proposals forwarded to the leader, and the message traffic of queues served through
//! another node (publishes, deliveries, settlements).
//!
//! **Authentication.** Both ends prove they know the cluster's shared secret (RabbitMQ's Erlang cookie
//! equivalent) without sending it: the dialler sends `WRNLINK1`, its node id and a random nonce; the
//! listener answers with its id, its nonce and HMAC-SHA256(secret, "server" ‖ dialler's nonce ‖ its
//! nonce); the dialler checks it and answers HMAC-SHA256(secret, "client" ‖ listener's nonce ‖ its
//! nonce). A peer that fails either check is disconnected. The secret is what admits a node: one
//! that is not (yet) a member may connect, to ask to join (`Request::Join`); which nodes vote and
//! receive the metadata log is the Raft membership's business, and the node adds and removes its
//! links as that membership changes ([`Links::add`], [`Links::remove`]).
//!
//! **Frames.** After the handshake: `u32` length (big-endian, of what follows), a kind octet, then for
//! requests and responses a `u64` request id, then the payload. Requests are answered on the
//! connection they came on; one-way messages are handled in arrival order (so the publishes of one
//! node to another keep their order).
//!
//! **Failure.** A dialler that loses its connection fails its pending requests at once, drops what
//! was queued, tells the node ([`Handler::peer_down`]) and redials every 200 ms, until the peer is
//! removed.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::sync::lock;

/// A node's id within the cluster (derived from its name: `cluster::node_id`).
pub(crate) type NodeId = u64;

/// The handshake's first octets: protocol name and version.
const MAGIC: &[u8; 8] = b"WRNLINK1";
/// Largest frame accepted from a peer (a snapshot or a big batch of entries fits).
const MAX_FRAME: usize = 256 << 20;
/// Octets queued for a peer past which its link counts as congested ([`Links::congested`]).
const CONGESTED: usize = 8 << 20;
/// Between dial attempts to a peer that is down.
const REDIAL: Duration = Duration::from_millis(200);

const KIND_REQUEST: u8 = 1;
const KIND_RESPONSE: u8 = 2;
const KIND_MESSAGE: u8 = 3;

/// A future a request handler returns.
pub(crate) type Reply = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// What the node does with what its peers send.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers a request from `from`.
    fn request(&self, from: NodeId, body: Bytes) -> Reply;
    /// Takes a one-way message from `from`, in the order `from` sent them.
    fn message(&self, from: NodeId, body: Bytes);
    /// The link to or from `peer` was lost: what was in flight to it is gone.
    fn peer_down(&self, peer: NodeId);
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// Not connected to the peer (down, unreachable, or refusing the secret).
    #[error("node {0} is not connected")]
    Down(NodeId),
    /// No answer in time.
    #[error("node {0} did not answer within {1:?}")]
    Timeout(NodeId, Duration),
    /// Not a member.
    #[error("node {0} is not a member of the cluster")]
    Unknown(NodeId),
}

/// The connection to one peer, as the dialling side sees it.
struct Peer {
    addr: String,
    /// Frames to write; `None` while disconnected.
    tx: Mutex<Option<mpsc::UnboundedSender<Bytes>>>,
    /// Requests waiting for their response, by id.
    pending: Mutex<HashMap<u64, oneshot::Sender<Bytes>>>,
    /// Octets queued and not yet written.
    queued: Arc<AtomicUsize>,
    up: AtomicBool,
    /// Set when the peer is removed: its dial loop ends.
    removed: AtomicBool,
    /// The dial loop, aborted when the peer is removed.
    dialler: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Peer {
    fn new(addr: &str) -> Arc<Peer> {
        Arc::new(Peer {
            addr: addr.to_owned(),
            tx: Mutex::new(None),
            pending: Mutex::new(HashMap::new()),
            queued: Arc::new(AtomicUsize::new(0)),
            up: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            dialler: Mutex::new(None),
        })
    }
}

/// The node's links to its peers. See the module docs.
pub(crate) struct Links {
    me: NodeId,
    secret: Vec<u8>,
    /// The peers this node dials, by id (read on every inter-node message; replaced whole on a
    /// membership change, under `changing`).
    peers: ArcSwap<HashMap<NodeId, Arc<Peer>>>,
    changing: Mutex<()>,
    handler: OnceLock<Arc<dyn Handler>>,
    next_request: AtomicU64,
}

impl fmt::Debug for Links {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Links")
            .field("me", &self.me)
            .field("peers", &self.peers.load().keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8], role: &[u8], a: &[u8], b: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail for it.
    let Ok(mut m) = HmacSha256::new_from_slice(secret) else {
        return [0; 32];
    };
    m.update(role);
    m.update(a);
    m.update(b);
    m.finalize().into_bytes().into()
}

fn verify(secret: &[u8], role: &[u8], a: &[u8], b: &[u8], tag: &[u8]) -> bool {
    let Ok(mut m) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    m.update(role);
    m.update(a);
    m.update(b);
    m.verify_slice(tag).is_ok()
}

fn frame(kind: u8, id: Option<u64>, body: &[u8]) -> Bytes {
    let len = 1 + id.map_or(0, |_| 8) + body.len();
    let mut b = BytesMut::with_capacity(4 + len);
    b.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    b.put_u8(kind);
    if let Some(id) = id {
        b.put_u64(id);
    }
    b.put_slice(body);
    b.freeze()
}

/// Reads one frame: kind and the rest.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u8, Bytes)> {
    let len = r.read_u32().await? as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad inter-node frame length {len}"),
        ));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    let mut b = Bytes::from(buf);
    let kind = b.get_u8();
    Ok((kind, b))
}

fn split_id(mut b: Bytes) -> Option<(u64, Bytes)> {
    (b.len() >= 8).then(|| (b.get_u64(), b))
}

/// Writes queued frames to `w` until the sender goes or a write fails, a batch per syscall.
async fn write_loop(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
) {
    let mut buf = BytesMut::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        let mut n = first.len();
        buf.extend_from_slice(&first);
        while buf.len() < 1 << 20 {
            match rx.try_recv() {
                Ok(more) => {
                    n += more.len();
                    buf.extend_from_slice(&more);
                }
                Err(_) => break,
            }
        }
        let written = w.write_all(&buf).await;
        queued.fetch_sub(n, Ordering::Relaxed);
        if written.is_err() {
            break;
        }
    }
    // Whatever is left was never written.
    rx.close();
    while let Ok(f) = rx.try_recv() {
        queued.fetch_sub(f.len(), Ordering::Relaxed);
    }
}

impl Links {
    /// Links from `me` to `peers` (id → inter-node address), authenticated with `secret`.
    pub(crate) fn new(me: NodeId, secret: Vec<u8>, peers: &[(NodeId, String)]) -> Arc<Links> {
        Arc::new(Links {
            me,
            secret,
            peers: ArcSwap::from_pointee(
                peers
                    .iter()
                    .filter(|(id, _)| *id != me)
                    .map(|(id, addr)| (*id, Peer::new(addr)))
                    .collect(),
            ),
            changing: Mutex::new(()),
            handler: OnceLock::new(),
            next_request: AtomicU64::new(1),
        })
    }

    fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.peers.load().get(&id).cloned()
    }

    /// Starts dialling `id` at `addr` (a node that joined, or one the Raft leader replicates to
    /// before its membership is applied here). Nothing when it is this node or already dialled.
    pub(crate) fn add(self: &Arc<Self>, id: NodeId, addr: &str) {
        if id == self.me {
            return;
        }
        let _changing = lock(&self.changing);
        if self.peers.load().contains_key(&id) {
            return;
        }
        let peer = Peer::new(addr);
        let mut peers = HashMap::clone(&self.peers.load());
        peers.insert(id, Arc::clone(&peer));
        self.peers.store(Arc::new(peers));
        if let Some(handler) = self.handler.get() {
            self.spawn_dialler(id, &peer, Arc::clone(handler));
        }
    }

    /// Stops dialling `id` (a member removed from the cluster): its requests fail, its queued frames
    /// are dropped and the node is told the peer is down.
    pub(crate) fn remove(&self, id: NodeId) {
        let peer = {
            let _changing = lock(&self.changing);
            let mut peers = HashMap::clone(&self.peers.load());
            let Some(peer) = peers.remove(&id) else {
                return;
            };
            self.peers.store(Arc::new(peers));
            peer
        };
        peer.removed.store(true, Ordering::Release);
        if let Some(d) = lock(&peer.dialler).take() {
            d.abort();
        }
        peer.up.store(false, Ordering::Release);
        lock(&peer.tx).take();
        lock(&peer.pending).clear();
        if let Some(handler) = self.handler.get() {
            handler.peer_down(id);
        }
    }

    /// Whether the link to `peer` is up.
    pub(crate) fn is_up(&self, peer: NodeId) -> bool {
        self.peers
            .load()
            .get(&peer)
            .is_some_and(|p| p.up.load(Ordering::Acquire))
    }

    /// Whether more than 8 MiB waits to be written to `peer`: a publisher routing to it should wait.
    pub(crate) fn congested(&self, peer: NodeId) -> bool {
        self.peers
            .load()
            .get(&peer)
            .is_some_and(|p| p.queued.load(Ordering::Relaxed) > CONGESTED)
    }

    /// Octets waiting to be written to `peer` (0 for an unknown peer).
    pub(crate) fn backlog(&self, peer: NodeId) -> usize {
        self.peers
            .load()
            .get(&peer)
            .map_or(0, |p| p.queued.load(Ordering::Relaxed))
    }

    /// Whether any link is congested.
    pub(crate) fn any_congested(&self) -> bool {
        self.peers
            .load()
            .values()
            .any(|p| p.queued.load(Ordering::Relaxed) > CONGESTED)
    }

    fn enqueue(&self, peer: &Peer, f: Bytes) -> bool {
        let tx = lock(&peer.tx);
        match tx.as_ref() {
            Some(tx) => {
                peer.queued.fetch_add(f.len(), Ordering::Relaxed);
                if tx.send(f).is_err() {
                    return false;
                }
                true
            }
            None => false,
        }
    }

    /// Sends a one-way message to `to`; false when the link is down (the message is dropped).
    pub(crate) fn send(&self, to: NodeId, body: &[u8]) -> bool {
        let peers = self.peers.load();
        let Some(peer) = peers.get(&to) else {
            return false;
        };
        self.enqueue(peer, frame(KIND_MESSAGE, None, body))
    }

    /// Queues a request to `to` now (requests queued one after another leave in that order); the
    /// response comes on the receiver (closed when the link is lost).
    ///
    /// # Errors
    /// [`LinkError::Unknown`] for a peer that is not a member, [`LinkError::Down`] when its link is
    /// down (nothing was sent).
    pub(crate) fn request_now(
        &self,
        to: NodeId,
        body: &[u8],
    ) -> Result<oneshot::Receiver<Bytes>, LinkError> {
        self.queue_request(to, body).map(|(_, _, rx)| rx)
    }

    /// Queues a request: the peer, the request's id and where its response comes.
    fn queue_request(
        &self,
        to: NodeId,
        body: &[u8],
    ) -> Result<(Arc<Peer>, u64, oneshot::Receiver<Bytes>), LinkError> {
        let peer = self.peer(to).ok_or(LinkError::Unknown(to))?;
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&peer.pending).insert(id, tx);
        if !self.enqueue(&peer, frame(KIND_REQUEST, Some(id), body)) {
            lock(&peer.pending).remove(&id);
            return Err(LinkError::Down(to));
        }
        Ok((peer, id, rx))
    }

    /// Sends a request to `to` and waits up to `timeout` for its response.
    pub(crate) async fn request(
        &self,
        to: NodeId,
        body: &[u8],
        timeout: Duration,
    ) -> Result<Bytes, LinkError> {
        let (peer, id, rx) = self.queue_request(to, body)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(LinkError::Down(to)),
            Err(_) => {
                lock(&peer.pending).remove(&id);
                Err(LinkError::Timeout(to, timeout))
            }
        }
    }

    /// Dials every peer (and keeps redialling) and accepts peers on `listener`.
    pub(crate) fn start(self: &Arc<Self>, listener: TcpListener, handler: Arc<dyn Handler>) {
        {
            let _changing = lock(&self.changing);
            let _ = self.handler.set(Arc::clone(&handler));
            for (&id, peer) in self.peers.load().iter() {
                self.spawn_dialler(id, peer, Arc::clone(&handler));
            }
        }
        let links = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, from)) => {
                        let links = Arc::clone(&links);
                        let handler = Arc::clone(&handler);
                        tokio::spawn(async move { links.serve(stream, from, handler).await });
                    }
                    Err(e) => {
                        warn!(error = %e, "inter-node accept failed");
                        tokio::time::sleep(REDIAL).await;
                    }
                }
            }
        });
    }

    fn spawn_dialler(self: &Arc<Self>, id: NodeId, peer: &Arc<Peer>, handler: Arc<dyn Handler>) {
        let links = Arc::clone(self);
        let p = Arc::clone(peer);
        *lock(&peer.dialler) = Some(tokio::spawn(async move {
            links.dial_loop(id, p, handler).await;
        }));
    }

    async fn dial_loop(self: Arc<Self>, id: NodeId, peer: Arc<Peer>, handler: Arc<dyn Handler>) {
        let mut logged_down = false;
        while !peer.removed.load(Ordering::Acquire) {
            match self.dial(id, &peer.addr).await {
                Ok(stream) => {
                    logged_down = false;
                    info!(peer = id, addr = %peer.addr, "inter-node link up");
                    let (mut r, w) = stream.into_split();
                    let (tx, rx) = mpsc::unbounded_channel();
                    *lock(&peer.tx) = Some(tx);
                    peer.up.store(true, Ordering::Release);
                    let writer = tokio::spawn(write_loop(w, rx, Arc::clone(&peer.queued)));
                    // Responses to this node's requests come back on this connection.
                    loop {
                        match read_frame(&mut r).await {
                            Ok((KIND_RESPONSE, body)) => {
                                if let Some((rid, body)) = split_id(body) {
                                    if let Some(tx) = lock(&peer.pending).remove(&rid) {
                                        let _ = tx.send(body);
                                    }
                                }
                            }
                            Ok((kind, _)) => {
                                debug!(peer = id, kind, "unexpected frame on a dialled link");
                            }
                            Err(_) => break,
                        }
                    }
                    peer.up.store(false, Ordering::Release);
                    lock(&peer.tx).take();
                    writer.abort();
                    lock(&peer.pending).clear();
                    if peer.removed.load(Ordering::Acquire) {
                        return;
                    }
                    warn!(peer = id, addr = %peer.addr, "inter-node link down");
                    handler.peer_down(id);
                }
                Err(e) => {
                    if !logged_down {
                        debug!(peer = id, addr = %peer.addr, error = %e, "cannot reach peer");
                        logged_down = true;
                    }
                }
            }
            tokio::time::sleep(REDIAL).await;
        }
    }

    async fn dial(&self, id: NodeId, addr: &str) -> std::io::Result<TcpStream> {
        let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timeout"))??;
        s.set_nodelay(true)?;
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut hello = Vec::with_capacity(32);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&self.me.to_be_bytes());
        hello.extend_from_slice(&nonce);
        s.write_all(&hello).await?;
        let mut answer = [0u8; 8 + 8 + 16 + 32];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut answer))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake timeout")
            })??;
        let bad =
            |why: &str| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why.to_owned());
        if &answer[..8] != MAGIC {
            return Err(bad("not a Warren inter-node listener"));
        }
        let their_id = u64::from_be_bytes(answer[8..16].try_into().unwrap_or_default());
        let their_nonce = &answer[16..32];
        if their_id != id {
            return Err(bad("the peer at this address has another node id"));
        }
        if !verify(&self.secret, b"server", &nonce, their_nonce, &answer[32..]) {
            warn!(
                peer = id,
                addr, "peer does not know the cluster secret: not connecting"
            );
            return Err(bad("the peer does not know the cluster secret"));
        }
        s.write_all(&mac(&self.secret, b"client", their_nonce, &nonce))
            .await?;
        Ok(s)
    }

    async fn serve(self: Arc<Self>, mut s: TcpStream, from: SocketAddr, handler: Arc<dyn Handler>) {
        let _ = s.set_nodelay(true);
        let mut hello = [0u8; 8 + 8 + 16];
        let got = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut hello)).await;
        if !matches!(got, Ok(Ok(_))) || &hello[..8] != MAGIC {
            debug!(%from, "inter-node connection without a handshake: closed");
            return;
        }
        let peer = u64::from_be_bytes(hello[8..16].try_into().unwrap_or_default());
        let their_nonce = &hello[16..32];
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut answer = Vec::with_capacity(64);
        answer.extend_from_slice(MAGIC);
        answer.extend_from_slice(&self.me.to_be_bytes());
        answer.extend_from_slice(&nonce);
        answer.extend_from_slice(&mac(&self.secret, b"server", their_nonce, &nonce));
        if s.write_all(&answer).await.is_err() {
            return;
        }
        let mut tag = [0u8; 32];
        let got = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut tag)).await;
        if !matches!(got, Ok(Ok(_))) || !verify(&self.secret, b"client", &nonce, their_nonce, &tag)
        {
            warn!(%from, peer, "inter-node peer does not know the cluster secret: closed");
            return;
        }
        let (mut r, w) = s.into_split();
        let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_loop(w, rx, Arc::clone(&queued)));
        loop {
            match read_frame(&mut r).await {
                Ok((KIND_REQUEST, body)) => {
                    let Some((rid, body)) = split_id(body) else {
                        break;
                    };
                    let reply = handler.request(peer, body);
                    let tx = tx.clone();
                    let queued = Arc::clone(&queued);
                    tokio::spawn(async move {
                        let f = frame(KIND_RESPONSE, Some(rid), &reply.await);
                        queued.fetch_add(f.len(), Ordering::Relaxed);
                        let _ = tx.send(f);
                    });
                }
                Ok((KIND_MESSAGE, body)) => handler.message(peer, body),
                Ok((kind, _)) => {
                    debug!(peer, kind, "unexpected frame on an accepted link");
                }
                Err(_) => break,
            }
        }
        writer.abort();
        handler.peer_down(peer);
    }
}
