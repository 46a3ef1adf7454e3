//! Connecting a node's router to every peer: lower ids are dialled, higher ids are
//! accepted, each peer is granted exactly its own ring.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use smrdb_transport::{Control, Error as TError, Fabric, Window};

use crate::{ClusterMap, RouterConfig, RouterError};

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
                return Ok(fabric.establish(ctl, window(j, me, ring_bytes))?);
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
