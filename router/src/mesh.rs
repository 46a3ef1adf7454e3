//! Connecting a node's router to every peer: lower ids are dialled, higher ids are
//! accepted, each peer is granted exactly its own ring.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use smrdb_transport::{Control, Error as TError, Fabric, Window};

use crate::core::{Cmd, PeerSlot};
use crate::{ClusterMap, RouterConfig, RouterError, Shared};

/// Endpoints to peers, as (cluster index, endpoint).
type Endpoints<E> = Vec<(usize, E)>;

/// The ring of the peer at cluster index `peer` in a node at index `me`.
pub(crate) fn window(peer: usize, me: usize, ring_bytes: usize) -> Window {
    let slot = if peer < me { peer } else { peer - 1 };
    Window {
        offset: slot * ring_bytes,
        len: ring_bytes,
    }
}

/// Endpoints to every peer, as (cluster index, endpoint), in index order, and how many
/// incoming connections were refused on the way (strangers: wrong secret, replayed or
/// garbled handshakes, nodes we do not expect).
pub(crate) fn connect<F: Fabric>(
    fabric: &F,
    cfg: &RouterConfig,
    map: &ClusterMap,
    me: usize,
    ring_bytes: usize,
    listener: &TcpListener,
) -> Result<(Endpoints<F::Endpoint>, u64), RouterError> {
    let deadline = Instant::now() + cfg.connect_timeout;
    let n = map.nodes().len();
    let ((accepted, refused), dialled) = std::thread::scope(|s| {
        let acceptor =
            s.spawn(|| accept_higher::<F>(fabric, cfg, map, me, ring_bytes, listener, deadline));
        let mut dialled = Vec::new();
        for j in 0..me {
            dialled.push((j, dial::<F>(fabric, cfg, map, me, j, ring_bytes, deadline)?));
        }
        let accepted = acceptor
            .join()
            .map_err(|_| RouterError::Config("the accepting thread panicked".into()))??;
        Ok::<_, RouterError>((accepted, dialled))
    })?;
    let mut all: Vec<_> = dialled.into_iter().chain(accepted).collect();
    all.sort_by_key(|(j, _)| *j);
    debug_assert_eq!(all.len(), n - 1);
    Ok((all, refused))
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn dial<F: Fabric>(
    fabric: &F,
    cfg: &RouterConfig,
    map: &ClusterMap,
    me: usize,
    j: usize,
    ring_bytes: usize,
    deadline: Instant,
) -> Result<F::Endpoint, RouterError> {
    let peer = &map.nodes()[j];
    loop {
        let mut fc = cfg.fabric.clone();
        fc.connect_timeout = remaining(deadline)
            .min(cfg.fabric.connect_timeout)
            .max(Duration::from_millis(50));
        match Control::connect(&peer.addr, &fc, cfg.me, F::KIND) {
            Ok(ctl) => {
                if ctl.peer() != peer.id {
                    return Err(RouterError::Config(format!(
                        "{} answered as node {}, expected node {}",
                        peer.addr,
                        ctl.peer(),
                        peer.id
                    )));
                }
                match fabric.establish(ctl, window(j, me, ring_bytes)) {
                    Ok(ep) => return Ok(ep),
                    // A peer that readmits us once its consumers released our previous
                    // connection's chunks may close this attempt: retry.
                    Err(e @ (TError::Io { .. } | TError::PeerLost { .. }))
                        if Instant::now() < deadline =>
                    {
                        tracing::info!(
                            "node {}: connection closed while establishing ({e}); retrying",
                            peer.id
                        );
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // The peer may not be up yet: retry until the deadline.
            Err(TError::Io { .. }) | Err(TError::PeerLost { .. }) | Err(TError::Timeout { .. })
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                return Err(RouterError::PeerLost {
                    node: peer.id,
                    reason: format!("cannot connect to {}: {e}", peer.addr),
                })
            }
        }
    }
}

fn accept_higher<F: Fabric>(
    fabric: &F,
    cfg: &RouterConfig,
    map: &ClusterMap,
    me: usize,
    ring_bytes: usize,
    listener: &TcpListener,
    deadline: Instant,
) -> Result<(Endpoints<F::Endpoint>, u64), RouterError> {
    let mut want: Vec<usize> = (me + 1..map.nodes().len()).collect();
    let mut got = Vec::new();
    let mut refused = 0u64;
    while !want.is_empty() {
        let left = remaining(deadline);
        if left.is_zero() {
            let missing: Vec<_> = want.iter().map(|&j| map.nodes()[j].id).collect();
            return Err(RouterError::Timeout {
                what: if missing.len() == 1 {
                    "a peer to connect"
                } else {
                    "peers to connect"
                },
                after: cfg.connect_timeout,
            })
            .inspect_err(|_| tracing::error!("nodes {missing:?} did not connect"));
        }
        let mut fc = cfg.fabric.clone();
        fc.connect_timeout = left.min(cfg.fabric.connect_timeout);
        let ctl = match Control::accept(listener, &fc, cfg.me, F::KIND) {
            Ok(c) => c,
            Err(TError::Timeout { .. }) => continue,
            // A stranger (wrong secret, wrong fabric, garbage) is refused and logged;
            // it must not stop the node from starting.
            Err(e) => {
                tracing::warn!("refused a connection: {e}");
                refused += 1;
                continue;
            }
        };
        let Some(j) = map.index_of(ctl.peer()).filter(|j| want.contains(j)) else {
            tracing::warn!(
                "refused node {} from {}: not an expected peer",
                ctl.peer(),
                ctl.peer_addr()
            );
            refused += 1;
            continue;
        };
        want.retain(|&w| w != j);
        got.push((j, fabric.establish(ctl, window(j, me, ring_bytes))?));
    }
    Ok((got, refused))
}

/// The readmission thread: after start, a lost peer that comes back (a restarted node
/// with the same id) connects as it did at start. Peers after us in the cluster order
/// dial us, so we accept them here; peers before us accept, so we dial them (every
/// [`DIAL_EVERY`] while they are lost). Either way the new connection is established
/// (granting the same ring) only once the router thread has marked the peer lost and
/// every chunk its previous connection wrote is released, then handed to the router
/// thread, which starts the peer afresh.
pub(crate) struct Rejoin<F: Fabric> {
    pub(crate) fabric: Arc<F>,
    pub(crate) cfg: RouterConfig,
    pub(crate) shared: Arc<Shared>,
    pub(crate) ring_bytes: usize,
    pub(crate) joins: Sender<(usize, F::Endpoint)>,
    pub(crate) stop: Arc<AtomicBool>,
}

/// How often a lost peer before us is dialled.
const DIAL_EVERY: Duration = Duration::from_millis(250);
/// Handshakes of incoming connections under way at once (more are refused at once:
/// silent strangers cannot pile up threads).
const MAX_HANDSHAKES: usize = 8;
/// How long a readmission waits for the router thread to mark the peer lost and for
/// consumers to release the chunks of its previous connection.
const QUIESCE: Duration = Duration::from_secs(5);

/// Clears a slot's `joining` flag unless the readmission got as far as the router
/// thread (which clears it when it installs the endpoint).
struct Joining<'a> {
    slot: &'a PeerSlot,
    handed_over: bool,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        if !self.handed_over {
            self.slot.joining.store(false, Ordering::Release);
        }
    }
}

impl<F: Fabric> Rejoin<F> {
    pub(crate) fn run(self, listener: TcpListener) {
        let this = Arc::new(self);
        if let Err(e) = listener.set_nonblocking(true) {
            tracing::error!("readmission disabled: cannot poll the peer listener: {e}");
            return;
        }
        let handshakes = Arc::new(AtomicUsize::new(0));
        let mut next_dial = Instant::now();
        let mut announced = vec![false; this.shared.slots.len()];
        while !this.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, from)) => {
                    if handshakes.fetch_add(1, Ordering::AcqRel) >= MAX_HANDSHAKES {
                        handshakes.fetch_sub(1, Ordering::AcqRel);
                        this.refused(&format!(
                            "connection from {from}: {MAX_HANDSHAKES} handshakes already under way"
                        ));
                        continue;
                    }
                    let (me, n) = (this.clone(), handshakes.clone());
                    let spawned = std::thread::Builder::new()
                        .name("smrdb-rejoin-hs".into())
                        .spawn(move || {
                            me.accept_one(stream);
                            n.fetch_sub(1, Ordering::AcqRel);
                        });
                    if let Err(e) = spawned {
                        handshakes.fetch_sub(1, Ordering::AcqRel);
                        this.refused(&format!("connection from {from}: no thread: {e}"));
                    }
                    continue;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => tracing::warn!("accepting a peer connection failed: {e}"),
            }
            if Instant::now() >= next_dial {
                next_dial = Instant::now() + DIAL_EVERY;
                for (pos, slot) in this.shared.slots.iter().enumerate() {
                    let dead = slot.dead.load(Ordering::Acquire);
                    if !dead {
                        announced[pos] = false;
                        continue;
                    }
                    if slot.index < this.shared.me_index && !this.stop.load(Ordering::Relaxed) {
                        if !announced[pos] {
                            announced[pos] = true;
                            tracing::info!(
                                "node {} is lost; dialling {} every {DIAL_EVERY:?} until it comes back",
                                this.shared.map.nodes()[slot.index].id,
                                this.shared.map.nodes()[slot.index].addr
                            );
                        }
                        this.dial_one(pos);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn refused(&self, why: &str) {
        self.shared
            .counters
            .refused_connections
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!("refused a peer connection: {why}");
    }

    /// An incoming connection: authenticate it; a peer after us (or any peer that
    /// restarted and dials everything before it) is readmitted.
    fn accept_one(&self, stream: std::net::TcpStream) {
        let ctl = match Control::accept_stream(stream, &self.cfg.fabric, self.cfg.me, F::KIND) {
            Ok(c) => c,
            Err(e) => return self.refused(&e.to_string()),
        };
        let sh = &self.shared;
        let Some(pos) = sh
            .slots
            .iter()
            .position(|s| sh.map.nodes()[s.index].id == ctl.peer())
        else {
            return self.refused(&format!(
                "node {} from {} is not a peer of this cluster",
                ctl.peer(),
                ctl.peer_addr()
            ));
        };
        self.admit(pos, ctl);
    }

    /// Dials the lost peer at `pos` once (quietly: it is usually still down).
    fn dial_one(&self, pos: usize) {
        let sh = &self.shared;
        let slot = &*sh.slots[pos];
        if slot.held.load(Ordering::Acquire) > 0 || slot.joining.load(Ordering::Acquire) {
            return;
        }
        let peer = &sh.map.nodes()[slot.index];
        let mut fc = self.cfg.fabric.clone();
        fc.connect_timeout = fc.connect_timeout.min(Duration::from_secs(2));
        match Control::connect(&peer.addr, &fc, self.cfg.me, F::KIND) {
            Ok(ctl) if ctl.peer() == peer.id => self.admit(pos, ctl),
            Ok(ctl) => self.refused(&format!(
                "{} answered as node {}, expected node {}",
                peer.addr,
                ctl.peer(),
                peer.id
            )),
            Err(e) => tracing::debug!("node {} not back yet: {e}", peer.id),
        }
    }

    /// Readmits the peer at `pos` over `ctl` once it is marked lost and its previous
    /// ring is free; hands the endpoint to the router thread.
    fn admit(&self, pos: usize, ctl: Control) {
        let sh = &self.shared;
        let slot = &*sh.slots[pos];
        let node = ctl.peer();
        if slot
            .joining
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return self.refused(&format!("node {node}: a readmission is already under way"));
        }
        let mut guard = Joining {
            slot,
            handed_over: false,
        };
        if !slot.dead.load(Ordering::Acquire) {
            // A node authenticates again only after a restart: its old connection is
            // dead even if we have not noticed yet.
            let _ = sh.cmd.send(Cmd::Kill {
                peer: pos,
                why: format!(
                    "node {node} connected again (restarted): its previous connection is gone"
                ),
            });
        }
        let deadline = Instant::now() + QUIESCE;
        while !(slot.dead.load(Ordering::Acquire) && slot.held.load(Ordering::Acquire) == 0) {
            if Instant::now() >= deadline || self.stop.load(Ordering::Relaxed) {
                return self.refused(&format!(
                    "node {node} not readmitted yet: {} chunk(s) of its previous connection \
                     still held after {QUIESCE:?} (it retries)",
                    slot.held.load(Ordering::Acquire)
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let grant = window(slot.index, sh.me_index, self.ring_bytes);
        match self.fabric.establish(ctl, grant) {
            Ok(ep) => {
                if self.joins.send((pos, ep)).is_ok() {
                    guard.handed_over = true;
                }
            }
            Err(e) => tracing::warn!("node {node}: readmission failed: {e}"),
        }
    }
}
