//! # smrdb-router: the shared memory router (SMR)
//!
//! One router per node. It owns the node's *common memory* (the fabric's registered
//! region), laid out as one receive ring per remote peer followed by the outgoing
//! arena:
//!
//! ```text
//! [ ring written by peer a | ring written by peer b | ... | outgoing arena ............ ]
//!   each ring is granted to exactly one peer (a separate registration on verbs, a
//!   separate mapping on shm), so a peer can write only into its own ring
//! ```
//!
//! A consumer (a Tstore, or the node's controller) allocates an [`OutBuf`] in the arena,
//! builds its bytes there, and [`RouterHandle::send`]s it to an [`Addr`]: one Tstore,
//! every Tstore, one controller or every controller. The router hands local
//! destinations a pointer ([`ChunkRef`]) to those same bytes, and sends each remote
//! *node* that has a destination exactly one copy: one WRITE into the node's ring plus
//! one pointer message ([`header`]); the receiving router fans the pointer out to its
//! local destinations. In [`Mode::Naive`] (the baseline for experiments) every remote
//! Tstore gets its own copy instead.
//!
//! Flow control is credit based: a ring's space comes back when every local consumer
//! has dropped its [`ChunkRef`] to a chunk (reference counted) and all chunks before it
//! are released; a full ring stalls the sender (counted), never overwrites, and a stall
//! longer than the back-pressure timeout fails the send with an error.
//!
//! ## Thread safety
//! [`RouterHandle`] is `Clone + Send + Sync`; every consumer thread holds one. Each
//! [`Inbox`] belongs to one consumer. The router thread owns the fabric endpoints.

#![deny(missing_docs)]

pub mod arena;
mod core;
pub mod header;
mod mesh;
pub mod placement;
pub mod ring;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};
use smrdb_transport::{Fabric, FabricConfig, NodeId, Region};

use crate::arena::{Arena, ArenaRange};

/// Where a message goes or comes from: a Tstore, a node's controller, or a broadcast.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Addr(pub u32);

impl Addr {
    /// Every Tstore of the cluster.
    pub const ALL_TSTORES: Addr = Addr(u32::MAX);
    /// Every node's controller.
    pub const ALL_CONTROLLERS: Addr = Addr(u32::MAX - 1);
    const CONTROLLER_BIT: u32 = 0x8000_0000;

    /// Tstore `id` (cluster-wide id).
    pub fn tstore(id: u32) -> Addr {
        debug_assert!(id < Self::CONTROLLER_BIT);
        Addr(id)
    }

    /// The controller of `node`.
    pub fn controller(node: NodeId) -> Addr {
        Addr(Self::CONTROLLER_BIT | node)
    }

    /// The Tstore id, if this names one Tstore.
    pub fn as_tstore(self) -> Option<u32> {
        (self.0 < Self::CONTROLLER_BIT).then_some(self.0)
    }

    /// The node, if this names one controller.
    pub fn as_controller(self) -> Option<NodeId> {
        (self.0 >= Self::CONTROLLER_BIT && self.0 < Self::ALL_CONTROLLERS.0)
            .then_some(self.0 & !Self::CONTROLLER_BIT)
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Addr::ALL_TSTORES => write!(f, "all-tstores"),
            Addr::ALL_CONTROLLERS => write!(f, "all-controllers"),
            a => match (a.as_tstore(), a.as_controller()) {
                (Some(t), _) => write!(f, "tstore{t}"),
                (_, Some(n)) => write!(f, "controller{n}"),
                _ => write!(f, "addr{:#x}", a.0),
            },
        }
    }
}

/// One node of the cluster as the router sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Node id.
    pub id: NodeId,
    /// Address its router listens on for peers (`host:port`).
    pub addr: String,
    /// Number of Tstores on it.
    pub tstores: u32,
}

/// Who lives where: node ids and the cluster-wide Tstore ids of each node (assigned
/// in node order: the first node's Tstores are 0..T0, the next node's T0..T0+T1, ...).
#[derive(Debug, Clone)]
pub struct ClusterMap {
    nodes: Vec<NodeSpec>,
    first_tstore: Vec<u32>,
}

impl ClusterMap {
    /// Builds the map.
    ///
    /// # Errors
    /// [`RouterError::Config`] on duplicate node ids or an empty cluster.
    pub fn new(nodes: Vec<NodeSpec>) -> Result<ClusterMap, RouterError> {
        if nodes.is_empty() {
            return Err(RouterError::Config(
                "a cluster needs at least one node".into(),
            ));
        }
        let mut ids: Vec<_> = nodes.iter().map(|n| n.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != nodes.len() {
            return Err(RouterError::Config("duplicate node ids".into()));
        }
        let mut first_tstore = Vec::with_capacity(nodes.len());
        let mut next = 0u32;
        for n in &nodes {
            first_tstore.push(next);
            next += n.tstores;
        }
        Ok(ClusterMap {
            nodes,
            first_tstore,
        })
    }

    /// The nodes in order.
    pub fn nodes(&self) -> &[NodeSpec] {
        &self.nodes
    }

    /// Position of `node` in [`ClusterMap::nodes`].
    pub fn index_of(&self, node: NodeId) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == node)
    }

    /// Cluster-wide Tstore ids on the node at `index`.
    pub fn tstores_of(&self, index: usize) -> std::ops::Range<u32> {
        let f = self.first_tstore[index];
        f..f + self.nodes[index].tstores
    }

    /// Total Tstores.
    pub fn total_tstores(&self) -> u32 {
        self.nodes.iter().map(|n| n.tstores).sum()
    }

    /// Index of the node holding Tstore `id`.
    pub fn owner_of(&self, id: u32) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.tstores_of(i).contains(&id))
    }

    /// Whether `a` names one consumer living on the node at `index` (one of its
    /// Tstores, or its controller); false for broadcasts and for an `index` past the
    /// last node.
    pub fn lives_on(&self, a: Addr, index: usize) -> bool {
        if index >= self.nodes.len() {
            return false;
        }
        match (a.as_tstore(), a.as_controller()) {
            (Some(t), _) => self.tstores_of(index).contains(&t),
            (_, Some(n)) => self.nodes[index].id == n,
            _ => false,
        }
    }
}

/// How broadcasts reach remote Tstores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One copy per remote node, fanned out there by pointer (the design).
    Smr,
    /// One copy per remote Tstore, no sharing (the baseline).
    Naive,
}

impl std::str::FromStr for Mode {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Mode, RouterError> {
        match s {
            "smr" => Ok(Mode::Smr),
            "naive" => Ok(Mode::Naive),
            o => Err(RouterError::Config(format!(
                "unknown mode {o:?}: smr or naive"
            ))),
        }
    }
}

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// This node.
    pub me: NodeId,
    /// Every node, this one included.
    pub nodes: Vec<NodeSpec>,
    /// The fabric's settings (kind, secret, device, ...).
    pub fabric: FabricConfig,
    /// Bytes of each receive ring (rounded up to 4 KiB).
    pub ring_bytes: usize,
    /// Bytes of the outgoing arena.
    pub arena_bytes: usize,
    /// Largest chunk [`RouterHandle::send_bytes`] cuts objects into (capped by the
    /// ring and the arena sizes).
    pub max_chunk: usize,
    /// SMR or naive broadcasts.
    pub mode: Mode,
    /// How long a send may wait for ring or arena space before it fails.
    pub backpressure_timeout: Duration,
    /// How long to wait for every peer to connect.
    pub connect_timeout: Duration,
    /// Core to pin the router thread to (see [`placement::Placement::plan`]); `None`
    /// leaves it to the OS.
    pub router_core: Option<usize>,
}

impl RouterConfig {
    /// Defaults: 16 MiB rings, 64 MiB arena, 1 MiB chunks, SMR, 10 s back-pressure
    /// timeout, 30 s to connect.
    pub fn new(me: NodeId, nodes: Vec<NodeSpec>, fabric: FabricConfig) -> RouterConfig {
        RouterConfig {
            me,
            nodes,
            fabric,
            ring_bytes: 16 << 20,
            arena_bytes: 64 << 20,
            max_chunk: 1 << 20,
            mode: Mode::Smr,
            backpressure_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            router_core: None,
        }
    }
}

/// Everything that can fail in the router.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The fabric failed.
    #[error(transparent)]
    Transport(#[from] smrdb_transport::Error),
    /// A header failed its framing checks.
    #[error("malformed header: {0}")]
    BadHeader(String),
    /// A peer is gone; everything in flight to or from it failed.
    #[error("node {node} is lost: {reason}")]
    PeerLost {
        /// The node.
        node: NodeId,
        /// What was seen.
        reason: String,
    },
    /// Space did not come back in time (a consumer that does not release, a peer that
    /// does not drain).
    #[error("back-pressure: no space in {what} after {waited:?}")]
    Backpressure {
        /// Which space.
        what: String,
        /// How long the send waited.
        waited: Duration,
    },
    /// Something larger than the space it must fit in.
    #[error("{len} bytes do not fit in {what} ({max} bytes)")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The space.
        max: usize,
        /// Which space.
        what: &'static str,
    },
    /// An address that names no consumer.
    #[error("no such destination: {0:?}")]
    NoSuchAddr(Addr),
    /// Nothing arrived in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What.
        what: &'static str,
        /// How long.
        after: Duration,
    },
    /// The router has stopped.
    #[error("the router has shut down")]
    Shutdown,
    /// A setting that cannot work.
    #[error("configuration: {0}")]
    Config(String),
}

impl Clone for RouterError {
    fn clone(&self) -> Self {
        match self {
            RouterError::PeerLost { node, reason } => RouterError::PeerLost {
                node: *node,
                reason: reason.clone(),
            },
            RouterError::Backpressure { what, waited } => RouterError::Backpressure {
                what: what.clone(),
                waited: *waited,
            },
            RouterError::Shutdown => RouterError::Shutdown,
            other => RouterError::Config(other.to_string()),
        }
    }
}

/// What to put in the header of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendSpec {
    /// The sending consumer (must live on this node).
    pub src: Addr,
    /// The destination(s).
    pub dst: Addr,
    /// The application's tag for the payload.
    pub tag: u16,
    /// Query id.
    pub query: u64,
    /// Object id (see [`RouterHandle::new_object_id`]).
    pub object: u64,
    /// Chunk index within the object.
    pub chunk: u32,
    /// Last chunk of the object.
    pub last: bool,
}

/// A buffer in the outgoing arena, exclusively ours until sent.
pub struct OutBuf {
    range: ArenaRange,
    len: usize,
}

impl OutBuf {
    /// Bytes that will be sent.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing will be sent.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shrinks (or regrows, up to the allocation) what will be sent.
    ///
    /// # Panics
    /// If `len` exceeds the allocated capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.range.capacity(),
            "OutBuf::set_len beyond its allocation"
        );
        self.len = len;
    }

    /// The bytes to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the range was allocated to this buffer alone and nothing reads it
        // until it is sent (which consumes the buffer).
        unsafe {
            self.range
                .region()
                .bytes_mut(self.range.offset(), self.len)
                .expect("arena range inside the region")
        }
    }
}

/// Sent bytes shared by local readers and in-flight writes; the range returns to the
/// arena when the last holder drops it.
struct Payload {
    range: ArenaRange,
    len: usize,
}

/// A chunk in a receive ring; its ring space is released when the last local consumer
/// drops it.
struct RxChunk {
    region: Arc<Region>,
    off: usize,
    len: usize,
    peer: usize,
    /// Which connection of the peer wrote it (a readmitted peer gets a fresh ring).
    generation: u64,
    id: u64,
    slot: Arc<core::PeerSlot>,
    release: Sender<core::Cmd>,
}

impl Drop for RxChunk {
    fn drop(&mut self) {
        self.slot.held.fetch_sub(1, Ordering::AcqRel);
        let _ = self.release.send(core::Cmd::Release {
            peer: self.peer,
            generation: self.generation,
            id: self.id,
        });
    }
}

/// A pointer to received (or locally built) bytes, readable in place. Dropping the last
/// reference releases the space.
#[derive(Clone)]
pub struct ChunkRef(ChunkInner);

#[derive(Clone)]
enum ChunkInner {
    Local(Arc<Payload>),
    Remote(Arc<RxChunk>),
}

impl ChunkRef {
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        let (region, off, len) = match &self.0 {
            ChunkInner::Local(p) => (p.range.region(), p.range.offset(), p.len),
            ChunkInner::Remote(c) => (&c.region, c.off, c.len),
        };
        // SAFETY: the router writes a chunk's bytes (or lets a peer write them) before
        // handing out any ChunkRef, and does not reuse the space until every ChunkRef
        // is dropped: nobody writes these bytes while this borrow lives.
        unsafe { region.bytes(off, len).expect("chunk inside the region") }
    }

    /// Whether the bytes are a local consumer's buffer (not received from a peer).
    pub fn is_local(&self) -> bool {
        matches!(self.0, ChunkInner::Local(_))
    }
}

impl fmt::Debug for ChunkRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ChunkRef({} bytes, {})",
            self.bytes().len(),
            if self.is_local() { "local" } else { "remote" }
        )
    }
}

/// A chunk delivered to a consumer.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Node it came from.
    pub from: NodeId,
    /// Header fields.
    pub spec: SendSpec,
    /// The bytes.
    pub data: ChunkRef,
}

/// What a consumer's inbox yields.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A chunk.
    Data(Delivery),
    /// A peer died: whatever it was sending will not arrive.
    PeerLost {
        /// The node.
        node: NodeId,
        /// What was seen.
        reason: String,
    },
    /// A lost peer connected again (a restarted node: new handshake, fresh rings);
    /// sends to it work again. Everything before this item came from its previous
    /// connection.
    PeerJoined {
        /// The node.
        node: NodeId,
    },
}

/// One consumer's inbound queue.
pub struct Inbox {
    addr: Addr,
    rx: Receiver<Inbound>,
}

impl Inbox {
    /// The consumer this inbox belongs to.
    pub fn addr(&self) -> Addr {
        self.addr
    }

    /// The next item, waiting up to `timeout`.
    ///
    /// # Errors
    /// [`RouterError::Timeout`]; [`RouterError::Shutdown`] once the router is gone and
    /// the queue is empty.
    pub fn recv(&self, timeout: Duration) -> Result<Inbound, RouterError> {
        self.rx.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => RouterError::Timeout {
                what: "an inbound chunk",
                after: timeout,
            },
            crossbeam_channel::RecvTimeoutError::Disconnected => RouterError::Shutdown,
        })
    }

    /// The next item if there is one.
    pub fn try_recv(&self) -> Option<Inbound> {
        self.rx.try_recv().ok()
    }
}

/// Completion of a send: done when every remote copy's write has completed.
#[derive(Clone)]
pub struct Ticket(Arc<(Mutex<TicketState>, Condvar)>);

struct TicketState {
    remaining: usize,
    error: Option<RouterError>,
}

impl Ticket {
    fn new(remaining: usize) -> Ticket {
        Ticket(Arc::new((
            Mutex::new(TicketState {
                remaining,
                error: None,
            }),
            Condvar::new(),
        )))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TicketState> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn complete_one(&self) {
        let mut s = self.lock();
        s.remaining = s.remaining.saturating_sub(1);
        if s.remaining == 0 {
            self.0 .1.notify_all();
        }
    }

    fn fail(&self, e: RouterError) {
        let mut s = self.lock();
        if s.error.is_none() {
            s.error = Some(e);
        }
        s.remaining = 0;
        self.0 .1.notify_all();
    }

    /// Whether the send finished (successfully or not).
    pub fn is_done(&self) -> bool {
        self.lock().remaining == 0
    }

    /// The send's failure, if it failed.
    pub fn failed(&self) -> Option<RouterError> {
        self.lock().error.clone()
    }

    /// Waits for the send to finish.
    ///
    /// # Errors
    /// The send's failure ([`RouterError::PeerLost`], [`RouterError::Backpressure`]),
    /// or [`RouterError::Timeout`].
    pub fn wait(&self, timeout: Duration) -> Result<(), RouterError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.lock();
        while s.remaining > 0 {
            let now = Instant::now();
            if now >= deadline {
                return Err(RouterError::Timeout {
                    what: "a send to complete",
                    after: timeout,
                });
            }
            s = self
                .0
                 .1
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        match &s.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

/// Counters of one peer connection, readable while the router runs.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Payload bytes we wrote into the peer's memory.
    pub bytes_written: AtomicU64,
    /// WRITEs posted to the peer.
    pub writes: AtomicU64,
    /// Messages (pointer + credit) sent to the peer.
    pub messages_sent: AtomicU64,
    /// Messages received from the peer.
    pub messages_received: AtomicU64,
    /// Payload bytes the peer wrote into our memory.
    pub bytes_received: AtomicU64,
    /// Sends that had to wait for ring space at the peer.
    pub stalls: AtomicU64,
    /// Highest occupancy of our ring at the peer, bytes.
    pub tx_ring_high_water: AtomicU64,
    /// Highest occupancy of the peer's ring here, bytes.
    pub rx_ring_high_water: AtomicU64,
    /// Messages from the peer refused by validation.
    pub refused: AtomicU64,
    /// Times the peer was readmitted after it was lost.
    pub reconnects: AtomicU64,
}

/// Snapshot of one peer's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStats {
    /// Peer node id.
    pub node: NodeId,
    /// See [`PeerCounters::bytes_written`].
    pub bytes_written: u64,
    /// See [`PeerCounters::writes`].
    pub writes: u64,
    /// See [`PeerCounters::messages_sent`].
    pub messages_sent: u64,
    /// See [`PeerCounters::messages_received`].
    pub messages_received: u64,
    /// See [`PeerCounters::bytes_received`].
    pub bytes_received: u64,
    /// See [`PeerCounters::stalls`].
    pub stalls: u64,
    /// See [`PeerCounters::tx_ring_high_water`].
    pub tx_ring_high_water: u64,
    /// See [`PeerCounters::rx_ring_high_water`].
    pub rx_ring_high_water: u64,
    /// See [`PeerCounters::refused`].
    pub refused: u64,
    /// See [`PeerCounters::reconnects`].
    #[serde(default)]
    pub reconnects: u64,
}

impl PeerStats {
    fn sum(&mut self, o: &PeerStats) {
        self.bytes_written += o.bytes_written;
        self.writes += o.writes;
        self.messages_sent += o.messages_sent;
        self.messages_received += o.messages_received;
        self.bytes_received += o.bytes_received;
        self.stalls += o.stalls;
        self.tx_ring_high_water = self.tx_ring_high_water.max(o.tx_ring_high_water);
        self.rx_ring_high_water = self.rx_ring_high_water.max(o.rx_ring_high_water);
        self.refused += o.refused;
        self.reconnects += o.reconnects;
    }
}

/// All counters of a router.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RouterStats {
    /// This node.
    pub node: NodeId,
    /// Per remote peer.
    pub peers: Vec<PeerStats>,
    /// Pointers handed to local consumers.
    pub local_deliveries: u64,
    /// Incoming peer connections refused (wrong secret, replayed or garbled
    /// handshake, a node it does not expect, a readmission that could not proceed).
    #[serde(default)]
    pub refused_connections: u64,
}

impl RouterStats {
    /// Sum over peers (high-water marks: the maximum).
    pub fn total(&self) -> PeerStats {
        let mut t = PeerStats {
            node: self.node,
            ..PeerStats::default()
        };
        for p in &self.peers {
            t.sum(p);
        }
        t
    }
}

struct Counters {
    peers: Vec<(NodeId, PeerCounters)>,
    local_deliveries: AtomicU64,
    refused_connections: AtomicU64,
}

impl Counters {
    fn snapshot(&self, me: NodeId) -> RouterStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RouterStats {
            node: me,
            peers: self
                .peers
                .iter()
                .map(|(n, c)| PeerStats {
                    node: *n,
                    bytes_written: l(&c.bytes_written),
                    writes: l(&c.writes),
                    messages_sent: l(&c.messages_sent),
                    messages_received: l(&c.messages_received),
                    bytes_received: l(&c.bytes_received),
                    stalls: l(&c.stalls),
                    tx_ring_high_water: l(&c.tx_ring_high_water),
                    rx_ring_high_water: l(&c.rx_ring_high_water),
                    refused: l(&c.refused),
                    reconnects: l(&c.reconnects),
                })
                .collect(),
            local_deliveries: l(&self.local_deliveries),
            refused_connections: l(&self.refused_connections),
        }
    }
}

struct Shared {
    me: NodeId,
    me_index: usize,
    map: ClusterMap,
    mode: Mode,
    arena: Arc<Arena>,
    ring_bytes: usize,
    max_chunk: usize,
    backpressure: Duration,
    counters: Arc<Counters>,
    /// Local consumers: index 0 the controller, then the node's Tstores in id order.
    inboxes: Vec<Sender<Inbound>>,
    cmd: Sender<core::Cmd>,
    next_object: AtomicU64,
    /// Per remote peer (in `peers` position order): what the readmission thread and
    /// received chunks share with the router thread.
    slots: Vec<Arc<core::PeerSlot>>,
}

impl Shared {
    /// Local consumer indexes (into `inboxes`) that `dst` names.
    fn local_targets(&self, dst: Addr) -> Result<Vec<usize>, RouterError> {
        let mine = self.map.tstores_of(self.me_index);
        Ok(match dst {
            Addr::ALL_TSTORES => (1..=mine.len()).collect(),
            Addr::ALL_CONTROLLERS => vec![0],
            a => match (a.as_tstore(), a.as_controller()) {
                (Some(t), _) if mine.contains(&t) => vec![1 + (t - mine.start) as usize],
                (Some(t), _) if self.map.owner_of(t).is_some() => vec![],
                (_, Some(n)) if n == self.me => vec![0],
                (_, Some(n)) if self.map.index_of(n).is_some() => vec![],
                _ => return Err(RouterError::NoSuchAddr(a)),
            },
        })
    }

    /// Remote copies a send to `dst` makes: (peer node index, header destination).
    fn remote_targets(&self, dst: Addr) -> Vec<(usize, Addr)> {
        let others = (0..self.map.nodes().len()).filter(|&i| i != self.me_index);
        match dst {
            Addr::ALL_TSTORES => match self.mode {
                Mode::Smr => others
                    .filter(|&i| self.map.nodes()[i].tstores > 0)
                    .map(|i| (i, Addr::ALL_TSTORES))
                    .collect(),
                Mode::Naive => others
                    .flat_map(|i| self.map.tstores_of(i).map(move |t| (i, Addr::tstore(t))))
                    .collect(),
            },
            Addr::ALL_CONTROLLERS => others.map(|i| (i, Addr::ALL_CONTROLLERS)).collect(),
            a => match (a.as_tstore(), a.as_controller()) {
                (Some(t), _) => match self.map.owner_of(t) {
                    Some(i) if i != self.me_index => vec![(i, a)],
                    _ => vec![],
                },
                (_, Some(n)) => match self.map.index_of(n) {
                    Some(i) if i != self.me_index => vec![(i, a)],
                    _ => vec![],
                },
                _ => vec![],
            },
        }
    }

    /// Whether `a` is a consumer living on the node at `index` (a valid source).
    fn lives_on(&self, a: Addr, index: usize) -> bool {
        self.map.lives_on(a, index)
    }
}

/// A running router; stops its threads when dropped.
pub struct Router {
    handle: RouterHandle,
    thread: Option<JoinHandle<()>>,
    /// The readmission thread (accepts and dials lost peers that come back).
    rejoin: Option<JoinHandle<()>>,
    rejoin_stop: Arc<std::sync::atomic::AtomicBool>,
}

/// The cloneable way to use a router.
#[derive(Clone)]
pub struct RouterHandle {
    shared: Arc<Shared>,
}

impl Router {
    /// Opens the fabric, lays out common memory, connects to every peer (listening on
    /// `listener` for the ones with higher ids, connecting to the ones with lower
    /// ids), and starts the router thread. Returns the router and the local inboxes:
    /// the controller's first, then one per local Tstore in id order.
    ///
    /// The router keeps `listener`: a peer that is lost and comes back (a restarted
    /// node, same id) is readmitted with a new handshake and fresh rings, as at start
    /// (it dials the peers before it in the cluster order, which accept it here; the
    /// ones after it dial it again) once every chunk its previous connection wrote is
    /// released. Consumers see [`Inbound::PeerLost`] then [`Inbound::PeerJoined`].
    ///
    /// # Errors
    /// Configuration errors, fabric errors, peers that do not connect in time.
    pub fn start<F: Fabric>(
        cfg: RouterConfig,
        listener: std::net::TcpListener,
    ) -> Result<(Router, Vec<Inbox>), RouterError> {
        let map = ClusterMap::new(cfg.nodes.clone())?;
        let me_index = map
            .index_of(cfg.me)
            .ok_or_else(|| RouterError::Config(format!("node {} is not in the cluster", cfg.me)))?;
        let ring_bytes = cfg.ring_bytes.div_ceil(4096) * 4096;
        if ring_bytes == 0 || cfg.arena_bytes < arena::ALIGN {
            return Err(RouterError::Config(
                "ring and arena sizes must be > 0".into(),
            ));
        }
        let peers = map.nodes().len() - 1;
        let arena_base = peers * ring_bytes;
        let fabric = Arc::new(F::open(&cfg.fabric, arena_base + cfg.arena_bytes)?);
        let region = fabric.region().clone();
        let arena = Arena::new(region.clone(), arena_base, cfg.arena_bytes);
        let (endpoints, refused_connections) =
            mesh::connect::<F>(&*fabric, &cfg, &map, me_index, ring_bytes, &listener)?;

        let counters = Arc::new(Counters {
            peers: map
                .nodes()
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != me_index)
                .map(|(_, n)| (n.id, PeerCounters::default()))
                .collect(),
            local_deliveries: AtomicU64::new(0),
            refused_connections: AtomicU64::new(refused_connections),
        });
        let slots: Vec<Arc<core::PeerSlot>> = endpoints
            .iter()
            .map(|&(index, _)| Arc::new(core::PeerSlot::new(index)))
            .collect();
        let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded();
        let mine = map.tstores_of(me_index);
        let mut inbox_tx = Vec::new();
        let mut inboxes = Vec::new();
        let addrs = std::iter::once(Addr::controller(cfg.me)).chain(mine.map(Addr::tstore));
        for addr in addrs {
            let (tx, rx) = crossbeam_channel::unbounded();
            inbox_tx.push(tx);
            inboxes.push(Inbox { addr, rx });
        }
        let shared = Arc::new(Shared {
            me: cfg.me,
            me_index,
            map,
            mode: cfg.mode,
            arena,
            ring_bytes,
            // A chunk must fit in a ring and in the arena, or it could never be sent.
            max_chunk: cfg.max_chunk.clamp(1, ring_bytes.min(cfg.arena_bytes)),
            backpressure: cfg.backpressure_timeout,
            counters,
            inboxes: inbox_tx,
            cmd: cmd_tx,
            next_object: AtomicU64::new(1),
            slots,
        });
        let (join_tx, join_rx) = crossbeam_channel::unbounded();
        let rejoin_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rejoin = {
            let r = mesh::Rejoin {
                fabric: fabric.clone(),
                cfg: cfg.clone(),
                shared: shared.clone(),
                ring_bytes,
                joins: join_tx,
                stop: rejoin_stop.clone(),
            };
            std::thread::Builder::new()
                .name(format!("smrdb-rejoin-{}", cfg.me))
                .spawn(move || r.run(listener))
                .map_err(|e| {
                    RouterError::Config(format!("cannot spawn the readmission thread: {e}"))
                })?
        };
        let core = core::Core::<F>::new(
            shared.clone(),
            fabric,
            endpoints,
            cmd_rx,
            join_rx,
            ring_bytes,
        );
        let pin = cfg.router_core;
        let thread = std::thread::Builder::new()
            .name(format!("smrdb-router-{}", cfg.me))
            .spawn(move || {
                if let Some(c) = pin {
                    if let Err(e) = placement::Placement::detect().pin_current_thread(c) {
                        tracing::warn!("router thread not pinned: {e}");
                    }
                }
                core.run()
            })
            .map_err(|e| RouterError::Config(format!("cannot spawn the router thread: {e}")))?;
        Ok((
            Router {
                handle: RouterHandle { shared },
                thread: Some(thread),
                rejoin: Some(rejoin),
                rejoin_stop,
            },
            inboxes,
        ))
    }

    /// A handle for consumers.
    pub fn handle(&self) -> RouterHandle {
        self.handle.clone()
    }

    /// Stops the router thread (in-flight sends fail with [`RouterError::Shutdown`]).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.rejoin_stop.store(true, Ordering::Relaxed);
        let _ = self.handle.shared.cmd.send(core::Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.rejoin.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RouterHandle {
    /// This node.
    pub fn me(&self) -> NodeId {
        self.shared.me
    }

    /// The cluster.
    pub fn map(&self) -> &ClusterMap {
        &self.shared.map
    }

    /// Cluster-wide ids of this node's Tstores.
    pub fn local_tstores(&self) -> std::ops::Range<u32> {
        self.shared.map.tstores_of(self.shared.me_index)
    }

    /// The broadcast mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// Largest chunk a single send may carry (the ring and arena sizes cap it).
    pub fn max_chunk(&self) -> usize {
        self.shared.max_chunk
    }

    /// A fresh object id (unique per node).
    pub fn new_object_id(&self) -> u64 {
        (u64::from(self.shared.me) << 48) | self.shared.next_object.fetch_add(1, Ordering::Relaxed)
    }

    /// Allocates a `len`-byte buffer in the outgoing arena, waiting up to the
    /// back-pressure timeout for space.
    ///
    /// # Errors
    /// [`RouterError::TooLarge`] when `len` exceeds a ring (it could never be sent) or
    /// the arena; [`RouterError::Backpressure`].
    pub fn alloc(&self, len: usize) -> Result<OutBuf, RouterError> {
        if len > self.shared.ring_bytes {
            return Err(RouterError::TooLarge {
                len,
                max: self.shared.ring_bytes,
                what: "a receive ring",
            });
        }
        let range = self.shared.arena.alloc(len, self.shared.backpressure)?;
        Ok(OutBuf { range, len })
    }

    /// Allocates a `len`-byte buffer in the outgoing arena if there is room now, without
    /// waiting (`Ok(None)` when the arena is full). A consumer that must keep draining
    /// its inbox while it sends (a Tstore streaming join tables) uses this.
    ///
    /// # Errors
    /// [`RouterError::TooLarge`] as [`RouterHandle::alloc`].
    pub fn try_alloc(&self, len: usize) -> Result<Option<OutBuf>, RouterError> {
        if len > self.shared.ring_bytes {
            return Err(RouterError::TooLarge {
                len,
                max: self.shared.ring_bytes,
                what: "a receive ring",
            });
        }
        match self.shared.arena.alloc(len, Duration::ZERO) {
            Ok(range) => Ok(Some(OutBuf { range, len })),
            Err(RouterError::Backpressure { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a buffer: pointers to local destinations now, one copy per remote node
    /// (per remote Tstore in naive mode) through the router thread.
    ///
    /// # Errors
    /// [`RouterError::NoSuchAddr`] for an unknown destination, or a source that is not
    /// on this node ([`RouterError::Config`]); [`RouterError::Shutdown`].
    pub fn send(&self, buf: OutBuf, spec: SendSpec) -> Result<Ticket, RouterError> {
        let sh = &self.shared;
        if !sh.lives_on(spec.src, sh.me_index) {
            return Err(RouterError::Config(format!(
                "source {:?} is not on node {}",
                spec.src, sh.me
            )));
        }
        let local = sh.local_targets(spec.dst)?;
        let remote = sh.remote_targets(spec.dst);
        let payload = Arc::new(Payload {
            range: buf.range,
            len: buf.len,
        });
        for &i in &local {
            let d = Delivery {
                from: sh.me,
                spec,
                data: ChunkRef(ChunkInner::Local(payload.clone())),
            };
            // A consumer whose inbox is gone has stopped; nothing to deliver to.
            let _ = sh.inboxes[i].send(Inbound::Data(d));
        }
        sh.counters
            .local_deliveries
            .fetch_add(local.len() as u64, Ordering::Relaxed);
        let ticket = Ticket::new(remote.len());
        if !remote.is_empty() {
            sh.cmd
                .send(core::Cmd::Send {
                    payload,
                    targets: remote,
                    spec,
                    ticket: ticket.clone(),
                    since: Instant::now(),
                })
                .map_err(|_| RouterError::Shutdown)?;
        }
        Ok(ticket)
    }

    /// Sends `data` as one object cut into chunks (streamed: a chunk is allocated,
    /// filled and sent while earlier ones are in flight), and waits until every remote
    /// copy has been written.
    ///
    /// # Errors
    /// As [`RouterHandle::alloc`] and [`RouterHandle::send`], and the failure of any
    /// chunk's ticket.
    pub fn send_bytes(
        &self,
        src: Addr,
        dst: Addr,
        tag: u16,
        query: u64,
        data: &[u8],
    ) -> Result<(), RouterError> {
        let object = self.new_object_id();
        let chunk = self.shared.max_chunk;
        let n = data.len().div_ceil(chunk).max(1);
        let mut tickets = std::collections::VecDeque::new();
        for i in 0..n {
            // A chunk already failed (a peer died, back-pressure): stop now instead of
            // waiting for arena space.
            if let Some(e) = tickets.iter().find_map(Ticket::failed) {
                return Err(e);
            }
            let part = &data[(i * chunk).min(data.len())..((i + 1) * chunk).min(data.len())];
            let mut buf = self.alloc(part.len())?;
            buf.as_mut_slice().copy_from_slice(part);
            let t = self.send(
                buf,
                SendSpec {
                    src,
                    dst,
                    tag,
                    query,
                    object,
                    chunk: i as u32,
                    last: i + 1 == n,
                },
            )?;
            tickets.push_back(t);
            while tickets.front().is_some_and(Ticket::is_done) {
                tickets
                    .pop_front()
                    .expect("front exists")
                    .wait(Duration::ZERO)?;
            }
        }
        let wait = self.shared.backpressure + Duration::from_secs(5);
        for t in tickets {
            t.wait(wait)?;
        }
        Ok(())
    }

    /// Counters now.
    pub fn stats(&self) -> RouterStats {
        self.shared.counters.snapshot(self.shared.me)
    }
}
