//! The router thread: owns the endpoints, places sends into peers' rings as credit
//! allows, validates and fans out what arrives, returns credits as consumers release.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use smrdb_transport::{Endpoint, Error as TError, Event, Fabric, NodeId, Region};

use crate::header::{Header, Kind, FLAG_LAST, HEADER_LEN};
use crate::ring::{RxRing, TxRing};

/// Chunks in a receive ring start at multiples of this, so Arrow buffers inside a chunk
/// stay aligned and can be read in place.
pub(crate) const RING_ALIGN: u64 = 64;
use crate::{
    Addr, ChunkInner, ChunkRef, Delivery, Inbound, Payload, PeerCounters, RouterError, RxChunk,
    SendSpec, Shared, Ticket,
};

/// What the router thread shares about one remote peer with the readmission thread
/// and with the chunks received from it.
pub(crate) struct PeerSlot {
    /// Index of the peer in the cluster map.
    pub(crate) index: usize,
    /// Set by the router thread when the peer is lost, cleared when it is readmitted.
    pub(crate) dead: AtomicBool,
    /// Chunks of this peer's ring that local consumers still hold.
    pub(crate) held: AtomicUsize,
    /// A readmission of this peer is under way (one at a time).
    pub(crate) joining: AtomicBool,
}

impl PeerSlot {
    pub(crate) fn new(index: usize) -> PeerSlot {
        PeerSlot {
            index,
            dead: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            joining: AtomicBool::new(false),
        }
    }
}

/// Work for the router thread.
pub(crate) enum Cmd {
    Send {
        payload: Arc<Payload>,
        targets: Vec<(usize, Addr)>,
        spec: SendSpec,
        ticket: Ticket,
        since: Instant,
    },
    Release {
        peer: usize,
        generation: u64,
        id: u64,
    },
    /// The peer at this position is gone (a new incarnation of it authenticated).
    Kill {
        peer: usize,
        why: String,
    },
    Shutdown,
}

/// An operation waiting for room in the endpoint's send queue, in posting order.
enum Op {
    Write {
        local_off: usize,
        len: usize,
        remote_off: usize,
        wr_id: u64,
    },
    Msg([u8; HEADER_LEN]),
}

struct Pending {
    payload: Arc<Payload>,
    dst: Addr,
    spec: SendSpec,
    ticket: Ticket,
    since: Instant,
    stalled: bool,
}

struct Peer<E> {
    /// Index in the cluster map.
    index: usize,
    node: NodeId,
    ep: Option<E>,
    dead: Option<String>,
    tx: TxRing,
    tx_seq: u64,
    pending: VecDeque<Pending>,
    ops: VecDeque<Op>,
    inflight: HashMap<u64, (Arc<Payload>, Ticket)>,
    rx: RxRing,
    rx_seq: u64,
    /// Offset of this peer's ring in our region.
    rx_base: usize,
    credit_due: Option<u64>,
    /// Connection number: 0 at start, +1 at every readmission.
    generation: u64,
}

pub(crate) struct Core<F: Fabric> {
    sh: Arc<Shared>,
    region: Arc<Region>,
    peers: Vec<Peer<F::Endpoint>>,
    /// Cluster-map index -> position in `peers`.
    pos_of: Vec<Option<usize>>,
    cmd: Receiver<Cmd>,
    /// Endpoints of readmitted peers, from the readmission thread: (position, endpoint).
    joins: Receiver<(usize, F::Endpoint)>,
    next_wr: u64,
    evs: Vec<Event>,
    _fabric: Arc<F>,
}

impl<F: Fabric> Core<F> {
    pub(crate) fn new(
        sh: Arc<Shared>,
        fabric: Arc<F>,
        endpoints: Vec<(usize, F::Endpoint)>,
        cmd: Receiver<Cmd>,
        joins: Receiver<(usize, F::Endpoint)>,
        ring_bytes: usize,
    ) -> Core<F> {
        let mut pos_of = vec![None; sh.map.nodes().len()];
        let peers: Vec<_> = endpoints
            .into_iter()
            .enumerate()
            .map(|(pos, (index, ep))| {
                pos_of[index] = Some(pos);
                Peer {
                    index,
                    node: sh.map.nodes()[index].id,
                    tx: TxRing::with_align(ep.remote_len() as u64, RING_ALIGN),
                    ep: Some(ep),
                    dead: None,
                    tx_seq: 0,
                    pending: VecDeque::new(),
                    ops: VecDeque::new(),
                    inflight: HashMap::new(),
                    rx: RxRing::with_align(ring_bytes as u64, RING_ALIGN),
                    rx_seq: 0,
                    rx_base: pos * ring_bytes,
                    credit_due: None,
                    generation: 0,
                }
            })
            .collect();
        Core {
            region: fabric.region().clone(),
            sh,
            peers,
            pos_of,
            cmd,
            joins,
            next_wr: 1,
            evs: Vec::with_capacity(64),
            _fabric: fabric,
        }
    }

    fn counters(&self, pos: usize) -> &PeerCounters {
        &self.sh.counters.peers[pos].1
    }

    pub(crate) fn run(mut self) {
        let mut idle = 0u32;
        let mut last_sweep = Instant::now();
        loop {
            let mut work = false;
            loop {
                match self.cmd.try_recv() {
                    Ok(Cmd::Shutdown) | Err(TryRecvError::Disconnected) => {
                        self.shut_down();
                        return;
                    }
                    Ok(c) => {
                        work = true;
                        self.handle(c);
                    }
                    Err(TryRecvError::Empty) => break,
                }
            }
            while let Ok((pos, ep)) = self.joins.try_recv() {
                work = true;
                self.readmit(pos, ep);
            }
            for pos in 0..self.peers.len() {
                work |= self.poll(pos);
                self.queue_credit(pos);
                work |= self.progress(pos);
            }
            if last_sweep.elapsed() >= Duration::from_millis(1) {
                self.expire();
                last_sweep = Instant::now();
            }
            if work {
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            if idle < 64 {
                std::thread::yield_now();
            } else {
                // Sleep, but wake at once for new work from consumers.
                let nap = Duration::from_micros(10u64 << (idle - 64).min(4));
                if let Ok(c) = self.cmd.recv_timeout(nap) {
                    if matches!(c, Cmd::Shutdown) {
                        self.shut_down();
                        return;
                    }
                    idle = 0;
                    self.handle(c);
                }
            }
        }
    }

    fn handle(&mut self, c: Cmd) {
        match c {
            Cmd::Send {
                payload,
                targets,
                spec,
                ticket,
                since,
            } => {
                for (index, dst) in targets {
                    let Some(pos) = self.pos_of[index] else {
                        ticket.fail(RouterError::NoSuchAddr(dst));
                        continue;
                    };
                    let p = &mut self.peers[pos];
                    if let Some(why) = &p.dead {
                        ticket.fail(RouterError::PeerLost {
                            node: p.node,
                            reason: why.clone(),
                        });
                        continue;
                    }
                    p.pending.push_back(Pending {
                        payload: payload.clone(),
                        dst,
                        spec,
                        ticket: ticket.clone(),
                        since,
                        stalled: false,
                    });
                }
            }
            Cmd::Release {
                peer,
                generation,
                id,
            } => {
                let p = &mut self.peers[peer];
                // A chunk of a previous connection: its ring is gone.
                if p.dead.is_none() && p.generation == generation {
                    if let Some(h) = p.rx.release(id) {
                        p.credit_due = Some(h);
                    }
                }
            }
            Cmd::Kill { peer, why } => self.kill(peer, why),
            Cmd::Shutdown => {}
        }
    }

    fn queue_credit(&mut self, pos: usize) {
        let p = &mut self.peers[pos];
        if let Some(h) = p.credit_due.take() {
            if p.dead.is_none() {
                p.ops
                    .push_back(Op::Msg(Header::credit(h, p.tx_seq).encode()));
                p.tx_seq += 1;
            }
        }
    }

    /// Moves sends into the peer's ring as credit allows and posts queued operations.
    fn progress(&mut self, pos: usize) -> bool {
        let mut work = false;
        let sh = self.sh.clone();
        let c = &sh.counters.peers[pos].1;
        let p = &mut self.peers[pos];
        if p.dead.is_some() {
            return false;
        }
        while let Some(front) = p.pending.front_mut() {
            let len = front.payload.len;
            let Some(place) = p.tx.place(len as u64) else {
                if !front.stalled {
                    front.stalled = true;
                    c.stalls.fetch_add(1, Ordering::Relaxed);
                }
                break;
            };
            p.tx.commit(place);
            c.tx_ring_high_water
                .fetch_max(p.tx.high_water(), Ordering::Relaxed);
            let s = p.pending.pop_front().expect("front exists");
            let wr_id = self.next_wr;
            self.next_wr += 1;
            let h = Header {
                kind: Kind::Data,
                flags: if s.spec.last { FLAG_LAST } else { 0 },
                tag: s.spec.tag,
                src: s.spec.src,
                dst: s.dst,
                query: s.spec.query,
                object: s.spec.object,
                chunk: s.spec.chunk,
                len: len as u32,
                ring_offset: place.offset,
                ring_end: place.end,
                seq: p.tx_seq,
            };
            p.tx_seq += 1;
            p.ops.push_back(Op::Write {
                local_off: s.payload.range.offset(),
                len,
                remote_off: place.offset as usize,
                wr_id,
            });
            p.ops.push_back(Op::Msg(h.encode()));
            p.inflight.insert(wr_id, (s.payload, s.ticket));
            work = true;
        }
        let Some(ep) = p.ep.as_mut() else {
            return work;
        };
        while let Some(op) = p.ops.front() {
            let r = match *op {
                Op::Write {
                    local_off,
                    len,
                    remote_off,
                    wr_id,
                } => ep.post_write(local_off, len, remote_off, wr_id).map(|()| {
                    c.writes.fetch_add(1, Ordering::Relaxed);
                    c.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
                }),
                Op::Msg(ref b) => ep.post_send(b, 0).map(|()| {
                    c.messages_sent.fetch_add(1, Ordering::Relaxed);
                }),
            };
            match r {
                Ok(()) => {
                    p.ops.pop_front();
                    work = true;
                }
                Err(TError::Full { .. }) => break,
                Err(e) => {
                    let why = e.to_string();
                    self.kill(pos, why);
                    return true;
                }
            }
        }
        work
    }

    fn poll(&mut self, pos: usize) -> bool {
        let mut evs = std::mem::take(&mut self.evs);
        evs.clear();
        let r = match self.peers[pos].ep.as_mut() {
            Some(ep) => ep.poll(&mut evs),
            None => Ok(0),
        };
        let work = !evs.is_empty();
        for ev in &evs {
            match *ev {
                Event::Completed { wr_id: 0 } => {}
                Event::Completed { wr_id } => {
                    if let Some((_, ticket)) = self.peers[pos].inflight.remove(&wr_id) {
                        ticket.complete_one();
                    }
                }
                Event::Message(m) => self.on_message(pos, m.as_bytes()),
                Event::WriteImm { .. } => {
                    self.refuse(pos, "unexpected write-with-immediate".into())
                }
            }
        }
        self.evs = evs;
        if let Err(e) = r {
            let why = e.to_string();
            self.kill(pos, why);
            return true;
        }
        work
    }

    /// Counts and logs a refused message. A flood of bad messages must not become a
    /// flood of log lines: the first 16 refusals from a peer are logged, then the
    /// 32nd, 64th, 128th, ... (the counter has them all).
    fn refuse(&self, pos: usize, why: String) {
        let n = self.counters(pos).refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 16 || n.is_power_of_two() {
            tracing::warn!(
                peer = self.peers[pos].node,
                refused = n,
                "refused a message: {why}"
            );
        }
    }

    fn on_message(&mut self, pos: usize, bytes: &[u8]) {
        self.counters(pos)
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let h = match Header::decode(bytes) {
            Ok(h) => h,
            Err(e) => return self.refuse(pos, e.to_string()),
        };
        let expected = self.peers[pos].rx_seq;
        if h.seq != expected {
            let which = if h.seq < expected { "stale" } else { "future" };
            return self.refuse(
                pos,
                format!("{which} sequence {} (expected {expected})", h.seq),
            );
        }
        self.peers[pos].rx_seq += 1;
        match h.kind {
            Kind::Credit => {
                if let Err(e) = self.peers[pos].tx.credit(h.ring_end) {
                    self.refuse(pos, e);
                }
            }
            Kind::Data => self.on_data(pos, &h),
        }
    }

    fn on_data(&mut self, pos: usize, h: &Header) {
        let sh = self.sh.clone();
        let index = self.peers[pos].index;
        if let Err(e) = crate::header::validate(h, &sh.map, sh.me_index, index) {
            return self.refuse(pos, e);
        }
        let Ok(targets) = sh.local_targets(h.dst) else {
            return self.refuse(pos, format!("destination {:?} is not on this node", h.dst));
        };
        let p = &mut self.peers[pos];
        let (off, id) = match p.rx.accept(h.ring_offset, u64::from(h.len), h.ring_end) {
            Ok((off, id)) => (off as usize, id),
            Err(e) => return self.refuse(pos, e),
        };
        let c = &sh.counters.peers[pos].1;
        c.bytes_received
            .fetch_add(u64::from(h.len), Ordering::Relaxed);
        c.rx_ring_high_water
            .fetch_max(p.rx.high_water(), Ordering::Relaxed);
        let slot = sh.slots[pos].clone();
        slot.held.fetch_add(1, Ordering::AcqRel);
        let chunk = Arc::new(RxChunk {
            region: self.region.clone(),
            off: p.rx_base + off,
            len: h.len as usize,
            peer: pos,
            generation: p.generation,
            id,
            slot,
            release: sh.cmd.clone(),
        });
        let spec = SendSpec {
            src: h.src,
            dst: h.dst,
            tag: h.tag,
            query: h.query,
            object: h.object,
            chunk: h.chunk,
            last: h.is_last(),
        };
        for t in targets {
            let _ = sh.inboxes[t].send(Inbound::Data(Delivery {
                from: p.node,
                spec,
                data: ChunkRef(ChunkInner::Remote(chunk.clone())),
            }));
        }
    }

    /// Fails sends that waited for ring space longer than the back-pressure timeout.
    fn expire(&mut self) {
        let limit = self.sh.backpressure;
        let ring = self.sh.ring_bytes;
        for p in &mut self.peers {
            while p.pending.front().is_some_and(|s| s.since.elapsed() > limit) {
                let s = p.pending.pop_front().expect("front exists");
                s.ticket.fail(RouterError::Backpressure {
                    what: format!(
                        "the ring at node {} ({} of {} bytes still unreleased)",
                        p.node,
                        p.tx.in_use(),
                        ring
                    ),
                    waited: limit,
                });
            }
        }
    }

    /// A peer is gone: fail everything to it, tell every local consumer.
    fn kill(&mut self, pos: usize, why: String) {
        let p = &mut self.peers[pos];
        if p.dead.is_some() {
            return;
        }
        tracing::warn!(peer = p.node, "peer lost: {why}");
        p.dead = Some(why.clone());
        p.ep = None;
        p.ops.clear();
        p.credit_due = None;
        let err = RouterError::PeerLost {
            node: p.node,
            reason: why.clone(),
        };
        for s in p.pending.drain(..) {
            s.ticket.fail(err.clone());
        }
        for (_, (_, t)) in p.inflight.drain() {
            t.fail(err.clone());
        }
        for tx in &self.sh.inboxes {
            let _ = tx.send(Inbound::PeerLost {
                node: p.node,
                reason: why.clone(),
            });
        }
        // Last: the readmission thread may connect the peer again from here on.
        self.sh.slots[pos].dead.store(true, Ordering::Release);
    }

    /// A lost peer is back (the readmission thread established `ep` once every chunk
    /// of its previous connection was released): fresh rings and sequence numbers,
    /// as at start; consumers learn it after everything of the previous connection.
    fn readmit(&mut self, pos: usize, ep: F::Endpoint) {
        let ring_bytes = self.sh.ring_bytes;
        let p = &mut self.peers[pos];
        if p.dead.is_none() {
            // The readmission thread only establishes lost peers; refuse anything else.
            tracing::warn!(peer = p.node, "refused a readmission of a live peer");
            self.sh.slots[pos].joining.store(false, Ordering::Release);
            return;
        }
        tracing::info!(
            peer = p.node,
            generation = p.generation + 1,
            "peer readmitted"
        );
        p.tx = TxRing::with_align(ep.remote_len() as u64, RING_ALIGN);
        p.ep = Some(ep);
        p.dead = None;
        p.tx_seq = 0;
        p.rx = RxRing::with_align(ring_bytes as u64, RING_ALIGN);
        p.rx_seq = 0;
        p.credit_due = None;
        p.generation += 1;
        let node = p.node;
        self.counters(pos)
            .reconnects
            .fetch_add(1, Ordering::Relaxed);
        self.sh.slots[pos].dead.store(false, Ordering::Release);
        self.sh.slots[pos].joining.store(false, Ordering::Release);
        for tx in &self.sh.inboxes {
            let _ = tx.send(Inbound::PeerJoined { node });
        }
    }

    fn shut_down(&mut self) {
        for p in &mut self.peers {
            for s in p.pending.drain(..) {
                s.ticket.fail(RouterError::Shutdown);
            }
            for (_, (_, t)) in p.inflight.drain() {
                t.fail(RouterError::Shutdown);
            }
            p.ep = None;
        }
    }
}
