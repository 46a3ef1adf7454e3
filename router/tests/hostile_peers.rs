//! Hostile peers against a running router (issue 7, "hostile peers"). Each case says
//! what must happen: the victim refuses the bad input, counts it (`PeerStats::refused`,
//! `RouterStats::refused_connections`), delivers nothing made up from it, and keeps
//! serving: the attacker's next sound message and a well-behaved peer's traffic both
//! get through afterwards.
//!
//! The header cases run a 3-node cluster: node 0 is the victim (a real router), node 1 a
//! well-behaved peer (a real router), node 2 the attacker, played by this test with a
//! bare fabric endpoint that posts whatever bytes it likes. Every case runs on shm and
//! tcp; the verbs copies are `#[ignore]`d on hosts without an RDMA device
//! (`soft-roce-setup/verbs-tests.sh` runs them in the Soft-RoCE VM once this binary is
//! in its list).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use smrdb_router::header::{Header, Kind, FLAG_LAST, HEADER_LEN, MAGIC, VERSION};
use smrdb_router::{
    Addr, Delivery, Inbound, Inbox, NodeSpec, PeerStats, Router, RouterConfig, RouterError,
    SendSpec,
};
use smrdb_transport::shm::Shm;
use smrdb_transport::tcp::Tcp;
use smrdb_transport::{
    Control, Endpoint, Error as TError, Event, Fabric, FabricConfig, FabricKind, NodeId, Window,
    MAX_MSG,
};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const SECRET: &[u8] = b"hostile test secret";
/// The attacker's node id (cluster index 2) and its Tstore.
const ATTACKER: NodeId = 2;
const ATTACKER_TSTORE: u32 = 2;

fn fcfg(kind: FabricKind) -> FabricConfig {
    let mut c = FabricConfig::new(kind, SECRET.to_vec());
    c.connect_timeout = Duration::from_secs(20);
    c
}

/// A tiny deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn specs(listeners: &[TcpListener]) -> Vec<NodeSpec> {
    listeners
        .iter()
        .enumerate()
        .map(|(i, l)| NodeSpec {
            id: i as NodeId,
            addr: l.local_addr().unwrap().to_string(),
            tstores: 1,
        })
        .collect()
}

fn router_cfg<F: Fabric>(me: NodeId, specs: &[NodeSpec], ring: usize) -> RouterConfig {
    let mut c = RouterConfig::new(me, specs.to_vec(), fcfg(F::KIND));
    c.ring_bytes = ring;
    c.arena_bytes = 4 * MIB;
    c.backpressure_timeout = Duration::from_secs(10);
    c.connect_timeout = Duration::from_secs(30);
    c
}

/// Dials `addr` as node `me` until the handshake succeeds, then grants `grant`.
fn dial<F: Fabric>(
    fabric: &F,
    fc: &FabricConfig,
    addr: &str,
    me: NodeId,
    grant: Window,
) -> F::Endpoint {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ctl = loop {
        match Control::connect(addr, fc, me, F::KIND) {
            Ok(c) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot dial {addr}: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    fabric.establish(ctl, grant).expect("establish")
}

/// Node 0 (victim), node 1 (well-behaved), node 2 (the attacker: this test).
struct Scene<F: Fabric> {
    victim: Router,
    vin: Vec<Inbox>,
    friend: Router,
    fin: Vec<Inbox>,
    atk: Attacker<F>,
}

/// The attacker's side: its fabric (whose region holds the bytes it "writes") and its
/// endpoint to the victim, with the sequence number the victim expects next.
struct Attacker<F: Fabric> {
    fabric: F,
    ep: F::Endpoint,
    /// Kept open: closing it would make node 1 report node 2 lost.
    _to_friend: F::Endpoint,
    seq: u64,
    next_wr: u64,
    /// Highest released position the victim has credited back.
    credited: u64,
}

impl<F: Fabric> Attacker<F> {
    /// Polls the endpoint: drops completions, remembers the victim's credits.
    fn drain(&mut self) {
        let mut evs = Vec::new();
        self.ep.poll(&mut evs).expect("attacker endpoint");
        for ev in evs {
            if let Event::Message(m) = ev {
                if let Ok(h) = Header::decode(m.as_bytes()) {
                    if h.kind == Kind::Credit {
                        self.credited = self.credited.max(h.ring_end);
                    }
                }
            }
        }
    }

    /// Waits until the victim has credited everything before `released` back.
    fn await_credit(&mut self, released: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.credited < released {
            assert!(
                Instant::now() < deadline,
                "credited {} of {released}",
                self.credited
            );
            self.drain();
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Posts raw message bytes, waiting out a full queue, and drains completions.
    fn post(&mut self, bytes: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.ep.post_send(bytes, self.next_wr) {
                Ok(()) => break,
                Err(TError::Full { .. }) => {
                    assert!(Instant::now() < deadline, "victim stopped draining");
                    self.drain();
                    std::thread::yield_now();
                }
                Err(e) => panic!("attacker post: {e}"),
            }
        }
        self.next_wr += 1;
        self.drain();
    }

    /// Writes `len` bytes of the attacker's region (offset 0) into the victim's ring at
    /// `off`, honestly bounds-checked by the fabric.
    fn write(&mut self, len: usize, off: usize) {
        self.ep
            .post_write(0, len, off, self.next_wr)
            .expect("write");
        self.next_wr += 1;
    }

    /// A DATA header from the attacker's Tstore to the victim's, with the sequence
    /// number the victim expects (which it consumes on a decodable header).
    fn data(&mut self, off: u64, len: u32, end: u64) -> Header {
        let h = Header {
            kind: Kind::Data,
            flags: FLAG_LAST,
            tag: 77,
            src: Addr::tstore(ATTACKER_TSTORE),
            dst: Addr::tstore(0),
            query: 1,
            object: self.seq,
            chunk: 0,
            len,
            ring_offset: off,
            ring_end: end,
            seq: self.seq,
        };
        self.seq += 1;
        h
    }
}

fn scene<F: Fabric>(ring: usize) -> Scene<F> {
    let ls: Vec<_> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let specs = specs(&ls);
    let fc = fcfg(F::KIND);
    let fabric = F::open(&fc, 2 * ring).unwrap();
    // SAFETY: nothing is connected yet, nobody else touches the region.
    let mine = unsafe { fabric.region().bytes_mut(0, 2 * ring).unwrap() };
    for (i, b) in mine.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ 0x5a;
    }
    let mut ls = ls.into_iter();
    let (l0, l1) = (ls.next().unwrap(), ls.next().unwrap());
    drop(ls); // node 2's listener: the attacker only dials
    let (c0, c1) = (
        router_cfg::<F>(0, &specs, ring),
        router_cfg::<F>(1, &specs, ring),
    );
    let (v, f, ep, to_friend) = std::thread::scope(|s| {
        let h0 = s.spawn(move || Router::start::<F>(c0, l0).expect("victim starts"));
        let h1 = s.spawn(move || Router::start::<F>(c1, l1).expect("friend starts"));
        // Lower ids accept higher ones, so node 2 dials 0 and 1, granting each its
        // ring in the attacker's region.
        let ep = dial(
            &fabric,
            &fc,
            &specs[0].addr,
            ATTACKER,
            Window {
                offset: 0,
                len: ring,
            },
        );
        let to_friend = dial(
            &fabric,
            &fc,
            &specs[1].addr,
            ATTACKER,
            Window {
                offset: ring,
                len: ring,
            },
        );
        (h0.join().unwrap(), h1.join().unwrap(), ep, to_friend)
    });
    Scene {
        victim: v.0,
        vin: v.1,
        friend: f.0,
        fin: f.1,
        atk: Attacker {
            fabric,
            ep,
            _to_friend: to_friend,
            seq: 0,
            next_wr: 1,
            credited: 0,
        },
    }
}

fn next_data(inbox: &Inbox, what: &str) -> Delivery {
    match inbox.recv(Duration::from_secs(30)) {
        Ok(Inbound::Data(d)) => d,
        Ok(Inbound::PeerLost { node, reason }) => panic!("{what}: node {node} lost: {reason}"),
        Ok(Inbound::PeerJoined { node }) => panic!("{what}: node {node} readmitted"),
        Err(e) => panic!("{what}: {e}"),
    }
}

fn peer_stats(r: &Router, node: NodeId) -> PeerStats {
    r.handle()
        .stats()
        .peers
        .into_iter()
        .find(|p| p.node == node)
        .expect("a peer")
}

/// Waits until the victim has refused `n` messages from the attacker (and not more).
fn await_refused(sc: &Scene<impl Fabric>, n: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = peer_stats(&sc.victim, ATTACKER);
        if st.refused >= n {
            assert_eq!(st.refused, n, "{what}: refused more than sent: {st:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: refused {st:?}, want {n}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Nothing reached any of the victim's consumers.
fn nothing_delivered(sc: &Scene<impl Fabric>, what: &str) {
    for (i, inbox) in sc.vin.iter().enumerate() {
        if let Some(x) = inbox.try_recv() {
            panic!("{what}: consumer {i} of the victim got {x:?}");
        }
    }
}

/// The victim still serves: the attacker's next sound chunk is delivered intact, the
/// well-behaved node 1 reaches the victim and the victim reaches node 1.
fn still_serves<F: Fabric>(sc: &mut Scene<F>, off: u64, end: u64) {
    let len = 100u32;
    sc.atk.write(len as usize, off as usize);
    let h = sc.atk.data(off, len, end);
    sc.atk.post(&h.encode());
    let d = next_data(&sc.vin[1], "the attacker's sound chunk after the attack");
    // SAFETY: the attacker's region is written only by this test, before connecting.
    let want = unsafe {
        sc.atk
            .fabric
            .region()
            .bytes(0, len as usize)
            .unwrap()
            .to_vec()
    };
    assert_eq!(d.data.bytes(), &want[..]);
    assert_eq!(
        (d.from, d.spec.src, d.spec.tag),
        (ATTACKER, Addr::tstore(ATTACKER_TSTORE), 77)
    );
    drop(d);
    sc.friend
        .handle()
        .send_bytes(Addr::controller(1), Addr::tstore(0), 5, 9, b"from a friend")
        .expect("node 1 -> victim");
    let d = next_data(&sc.vin[1], "node 1's message after the attack");
    assert_eq!((d.from, d.data.bytes()), (1, &b"from a friend"[..]));
    drop(d);
    sc.victim
        .handle()
        .send_bytes(Addr::tstore(0), Addr::controller(1), 6, 9, b"to a friend")
        .expect("victim -> node 1");
    let d = next_data(&sc.fin[0], "the victim's message to node 1");
    assert_eq!((d.from, d.data.bytes()), (0, &b"to a friend"[..]));
    assert_eq!(
        peer_stats(&sc.victim, 1).refused,
        0,
        "node 1 was never refused"
    );
    assert_eq!(peer_stats(&sc.friend, 0).refused, 0);
}

/// Headers that point outside the attacker's ring, overlap chunks it already sent, or
/// misplace a chunk in the stream; forged sources and destinations; impossible credits;
/// a write-with-immediate the router never uses. Each is refused and counted.
fn ring_and_address_attacks<F: Fabric>() {
    let ring = 64 * KIB;
    let r = ring as u64;
    let mut sc = scene::<F>(ring);
    // Expect: a sound chunk (100 bytes at ring offset 0, occupying [0, 128)) is
    // delivered; the test holds it, so [0, 128) stays unreleased.
    sc.atk.write(100, 0);
    let h = sc.atk.data(0, 100, 128);
    sc.atk.post(&h.encode());
    let held = next_data(&sc.vin[1], "the first sound chunk");
    assert_eq!(held.data.bytes().len(), 100);

    let mut cases: Vec<(&str, Header)> = Vec::new();
    // Every header below carries the expected sequence number, so only the named
    // defect can be why it is refused (and each consumes its sequence number).
    let a = &mut sc.atk;
    // Expect: refused, the chunk starts at the ring's end (the next peer's ring).
    cases.push(("offset at the ring's end", a.data(r, 64, 192)));
    // Expect: refused, the chunk runs past the ring's end.
    cases.push(("runs past the ring's end", a.data(r - 64, 128, 256)));
    // Expect: refused, longer than the whole ring.
    cases.push((
        "longer than the ring",
        a.data(0, (r + 1) as u32, 128 + r + 64),
    ));
    // Expect: refused, a 4 GiB chunk.
    cases.push(("length u32::MAX", a.data(128, u32::MAX, 128 + (1 << 32))));
    // Expect: refused, offset + length overflows.
    cases.push(("offset u64::MAX", a.data(u64::MAX, 1, 192)));
    // Expect: refused, overlaps the held chunk [0, 128).
    cases.push(("overlaps the previous chunk", a.data(64, 64, 128)));
    // Expect: refused, exactly the held chunk's place again.
    cases.push(("same place as the previous chunk", a.data(0, 100, 128)));
    // Expect: refused, the ring offset does not match the stream position 128.
    cases.push(("offset off its stream position", a.data(256, 64, 192)));
    // Expect: refused, a gap that is not a wrap.
    cases.push(("skips ahead", a.data(1024, 64, 1088)));
    // Expect: refused, a wrap that was not needed (64 bytes fit before the end).
    cases.push(("needless wrap", a.data(0, 64, r + 64)));
    // Expect: refused, the stream end lies before the length.
    cases.push(("end before length", a.data(128, 1000, 10)));
    // Expect: refused, the end lies in the previous chunk's bytes.
    cases.push(("zero length inside the previous chunk", a.data(64, 0, 64)));
    for (what, h) in &cases {
        sc.atk.post(&h.encode());
        std::thread::sleep(Duration::from_millis(2));
        nothing_delivered(&sc, what);
    }
    let mut n = cases.len() as u64;
    await_refused(&sc, n, "ring placement");

    // Expect: a sound chunk filling the ring up to 64 bytes before its end is
    // delivered and held; then a chunk that needs the wrap would overwrite the held
    // [0, 128): refused.
    let big = (r - 192) as u32;
    sc.atk.write(big as usize, 128);
    let h = sc.atk.data(128, big, r - 64);
    sc.atk.post(&h.encode());
    let held2 = next_data(&sc.vin[1], "the second sound chunk");
    assert_eq!(held2.data.bytes().len(), big as usize);
    let h = sc.atk.data(0, 128, r + 128);
    sc.atk.post(&h.encode());
    n += 1;
    await_refused(&sc, n, "overwrite of unreleased bytes");
    nothing_delivered(&sc, "overwrite of unreleased bytes");

    // Sources and destinations, on a placement that would otherwise be sound (the 64
    // bytes left before the ring's end).
    let mut addr_cases: Vec<(&str, Header)> = Vec::new();
    let a = &mut sc.atk;
    let sound = |a: &mut Attacker<F>| a.data(r - 64, 64, r);
    // Expect: refused, Tstore 1 lives on node 1, not on the attacker's node.
    addr_cases.push((
        "source: node 1's Tstore",
        Header {
            src: Addr::tstore(1),
            ..sound(a)
        },
    ));
    // Expect: refused, node 1's controller is not the attacker's to speak for.
    addr_cases.push((
        "source: node 1's controller",
        Header {
            src: Addr::controller(1),
            ..sound(a)
        },
    ));
    // Expect: refused, the victim's own controller as the source.
    addr_cases.push((
        "source: the victim's controller",
        Header {
            src: Addr::controller(0),
            ..sound(a)
        },
    ));
    // Expect: refused, a broadcast address is no source.
    addr_cases.push((
        "source: a broadcast",
        Header {
            src: Addr::ALL_TSTORES,
            ..sound(a)
        },
    ));
    // Expect: refused, no node has Tstore 1000.
    addr_cases.push((
        "source: no such Tstore",
        Header {
            src: Addr::tstore(1000),
            ..sound(a)
        },
    ));
    // Expect: refused, Tstore 1 is on node 1, not on the victim.
    addr_cases.push((
        "destination: node 1's Tstore",
        Header {
            dst: Addr::tstore(1),
            ..sound(a)
        },
    ));
    // Expect: refused, the attacker's own controller is not on the victim.
    addr_cases.push((
        "destination: the attacker's controller",
        Header {
            dst: Addr::controller(2),
            ..sound(a)
        },
    ));
    // Expect: refused, no such Tstore anywhere.
    addr_cases.push((
        "destination: no such Tstore",
        Header {
            dst: Addr::tstore(0x7fff_ffff),
            ..sound(a)
        },
    ));
    // Expect: refused, a controller address naming no node.
    addr_cases.push((
        "destination: no such controller",
        Header {
            dst: Addr(0xffff_fffd),
            ..sound(a)
        },
    ));
    for (what, h) in &addr_cases {
        sc.atk.post(&h.encode());
        std::thread::sleep(Duration::from_millis(2));
        nothing_delivered(&sc, what);
    }
    n += addr_cases.len() as u64;
    await_refused(&sc, n, "addresses");

    // Credits: the victim has sent the attacker nothing, so its released position can
    // only be 0.
    for (what, released) in [
        ("credit beyond what was sent", 1u64 << 30),
        ("credit of 1 byte", 1),
        ("credit u64::MAX", u64::MAX),
    ] {
        let seq = sc.atk.seq;
        sc.atk.seq += 1;
        // Expect: refused.
        sc.atk.post(&Header::credit(released, seq).encode());
        n += 1;
        await_refused(&sc, n, what);
    }
    // Expect: refused, the router never uses write-with-immediate.
    let wr = sc.atk.next_wr;
    sc.atk.next_wr += 1;
    sc.atk
        .ep
        .post_write_imm(0, 64, 0, 0xdead, wr)
        .expect("write-imm");
    n += 1;
    await_refused(&sc, n, "write-with-immediate");
    nothing_delivered(&sc, "write-with-immediate");

    // Releasing the held chunks returns the ring; the attacker's next sound chunk
    // (which must wrap now: [r - 64, r) is too small for 100 bytes) and node 1's
    // traffic are served.
    drop(held);
    drop(held2);
    sc.atk.await_credit(r - 64);
    still_serves(&mut sc, 0, r + 128);
    let st = peer_stats(&sc.victim, ATTACKER);
    assert_eq!(st.refused, n, "{st:?}");
}

/// Wrong versions, wrong magic, bad checksums and random garbage of every length a
/// message can have: refused and counted, one by one.
fn versions_and_garbage<F: Fabric>() {
    let ring = 64 * KIB;
    let mut sc = scene::<F>(ring);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut n = 0u64;
    let base = |a: &Attacker<F>| Header {
        kind: Kind::Data,
        flags: FLAG_LAST,
        tag: 77,
        src: Addr::tstore(ATTACKER_TSTORE),
        dst: Addr::tstore(0),
        query: 1,
        object: 1,
        chunk: 0,
        len: 100,
        ring_offset: 0,
        ring_end: 128,
        seq: a.seq,
    };
    // Expect: refused, every version byte but ours (the checksum is right: only the
    // version is wrong); the sequence number is not consumed.
    for v in (0..=255u8).filter(|&v| v != VERSION) {
        let b = base(&sc.atk).encode_as(v);
        sc.atk.post(&b);
        n += 1;
    }
    await_refused(&sc, n, "versions");
    // Expect: refused, wrong magic (either byte), and a flipped bit anywhere the
    // checksum covers or in the checksum itself.
    for i in 0..2 {
        let mut b = base(&sc.atk).encode();
        b[i] ^= 0x20;
        sc.atk.post(&b);
        n += 1;
    }
    for bit in (0..HEADER_LEN * 8).step_by(3) {
        let mut b = base(&sc.atk).encode();
        b[bit / 8] ^= 1 << (bit % 8);
        sc.atk.post(&b);
        n += 1;
    }
    await_refused(&sc, n, "magic and checksum");
    // Expect: refused, random bytes of every length from 0 to the largest message.
    for len in 0..=MAX_MSG {
        let g = rng.bytes(len);
        sc.atk.post(&g);
        n += 1;
    }
    await_refused(&sc, n, "garbage of every length");
    // Expect: refused, 72 random bytes behind our magic and version (checksum wrong).
    for _ in 0..100 {
        let mut g = rng.bytes(HEADER_LEN);
        g[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        g[2] = VERSION;
        sc.atk.post(&g);
        n += 1;
    }
    await_refused(&sc, n, "garbage behind a magic");
    // Expect: refused, well-framed headers (right checksum) with random fields and a
    // stale or future sequence number.
    for i in 0..200 {
        let mut g = rng.bytes(HEADER_LEN);
        g[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        g[2] = VERSION;
        g[3] = 1 + (i % 2) as u8;
        let mut seq = u64::from_le_bytes(g[56..64].try_into().unwrap());
        if seq == sc.atk.seq {
            seq ^= 1;
        }
        g[56..64].copy_from_slice(&seq.to_le_bytes());
        let c = crc32fast::hash(&g[..68]);
        g[68..72].copy_from_slice(&c.to_le_bytes());
        assert!(Header::decode(&g).is_ok());
        sc.atk.post(&g);
        n += 1;
    }
    await_refused(&sc, n, "random framed headers, wrong sequence");
    // Expect: refused, well-framed headers with random fields and the right sequence
    // number (each consumes it): random sources, destinations, placements, credits.
    for i in 0..200 {
        let mut src = rng.next() as u32;
        if Addr(src) == Addr::tstore(ATTACKER_TSTORE) || Addr(src) == Addr::controller(ATTACKER) {
            src ^= 0x1000;
        }
        let h = Header {
            kind: if i % 2 == 0 { Kind::Data } else { Kind::Credit },
            flags: rng.next() as u16,
            tag: rng.next() as u16,
            src: Addr(src),
            dst: Addr(rng.next() as u32),
            query: rng.next(),
            object: rng.next(),
            chunk: rng.next() as u32,
            len: rng.next() as u32,
            ring_offset: rng.next(),
            ring_end: rng.next() | 1,
            seq: sc.atk.seq,
        };
        sc.atk.seq += 1;
        sc.atk.post(&h.encode());
        n += 1;
    }
    await_refused(&sc, n, "random framed headers, right sequence");
    nothing_delivered(&sc, "garbage");
    still_serves(&mut sc, 0, 128);
    assert_eq!(peer_stats(&sc.victim, ATTACKER).refused, n);
}

/// A flood: the attacker posts `count` bad messages as fast as the fabric lets it
/// (a full queue is `Full`: it polls and posts again). The victim refuses and counts
/// every one, stays up, and serves afterwards.
fn hostile_flood<F: Fabric>(count: u64) {
    let ring = 64 * KIB;
    let mut sc = scene::<F>(ring);
    let mut rng = Rng(7);
    let t = Instant::now();
    for i in 0..count {
        match i % 4 {
            // In turn: a future sequence number, a wrong version, garbage of a random
            // length, a checksum mismatch.
            0 => {
                let h = Header::credit(0, sc.atk.seq + 1 + i);
                sc.atk.post(&h.encode());
            }
            1 => {
                let h = Header::credit(0, sc.atk.seq);
                sc.atk.post(&h.encode_as(VERSION ^ 0x80));
            }
            2 => {
                let len = (rng.next() % (MAX_MSG as u64 + 1)) as usize;
                let mut g = rng.bytes(len);
                if len >= 2 && u16::from_le_bytes([g[0], g[1]]) == MAGIC {
                    g[1] ^= 0xff;
                }
                sc.atk.post(&g);
            }
            _ => {
                let mut b = Header::credit(0, sc.atk.seq).encode();
                b[70] ^= 0x55;
                sc.atk.post(&b);
            }
        }
    }
    let posted = t.elapsed();
    await_refused(&sc, count, "flood");
    let refused_all = t.elapsed();
    let st = peer_stats(&sc.victim, ATTACKER);
    assert!(st.messages_received >= count, "{st:?}");
    nothing_delivered(&sc, "flood");
    eprintln!(
        "{}: flood of {count} bad messages posted in {posted:?}, all refused after {refused_all:?}",
        F::KIND
    );
    still_serves(&mut sc, 0, 128);
    assert_eq!(peer_stats(&sc.victim, ATTACKER).refused, count);
}

/// An honest flood: node 0 sends `count` small messages to node 1's Tstore much faster
/// than it drains (it does not read at all for the first second). The sender sees
/// back-pressure: sends that found no ring space within the timeout fail with
/// `RouterError::Backpressure` (an arena that stays full fails `alloc` the same way);
/// every send that succeeded is delivered exactly once, in order; nothing else is; the
/// receiver stays up.
fn honest_flood_meets_backpressure<F: Fabric>(count: u64) {
    let ring = 64 * KIB;
    let bp = Duration::from_millis(300);
    let ls: Vec<_> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let specs = specs(&ls);
    let mut ls = ls.into_iter();
    let (l0, l1) = (ls.next().unwrap(), ls.next().unwrap());
    let mut cfgs: Vec<_> = (0..2)
        .map(|i| {
            let mut c = router_cfg::<F>(i, &specs, ring);
            c.arena_bytes = 16 * MIB;
            c.backpressure_timeout = bp;
            c
        })
        .collect();
    let (c1, c0) = (cfgs.pop().unwrap(), cfgs.pop().unwrap());
    let ((r0, in0), (r1, mut in1)) = std::thread::scope(|s| {
        let h0 = s.spawn(move || Router::start::<F>(c0, l0).expect("node 0 starts"));
        let h1 = s.spawn(move || Router::start::<F>(c1, l1).expect("node 1 starts"));
        (h0.join().unwrap(), h1.join().unwrap())
    });
    let inbox = in1.remove(1);
    const DATA: u16 = 1;
    const END: u16 = 2;
    let (delivered, outcome) = std::thread::scope(|s| {
        // The consumer sleeps through the first bursts, then drains at about 20 000
        // messages a second.
        let consumer = s.spawn(move || {
            std::thread::sleep(Duration::from_millis(700));
            let mut got = Vec::new();
            loop {
                let d = next_data(&inbox, "the flood");
                if d.spec.tag == END {
                    return got;
                }
                assert_eq!(d.spec.tag, DATA);
                got.push(u64::from_le_bytes(
                    d.data.bytes().try_into().expect("8 bytes"),
                ));
                if got.len() % 20 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let h = r0.handle();
        let t = Instant::now();
        let mut tickets = Vec::with_capacity(count as usize);
        let mut alloc_refused = 0u64;
        // 20 bursts, 100 ms apart; each is far more than the ring holds, posted as
        // fast as the sender can.
        let burst = count.div_ceil(20);
        for i in 0..count {
            if i > 0 && i % burst == 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut buf = match h.alloc(8) {
                Ok(b) => b,
                Err(RouterError::Backpressure { waited, .. }) => {
                    assert_eq!(waited, bp);
                    alloc_refused += 1;
                    continue;
                }
                Err(e) => panic!("alloc: {e}"),
            };
            buf.as_mut_slice().copy_from_slice(&i.to_le_bytes());
            let spec = SendSpec {
                src: Addr::controller(0),
                dst: Addr::tstore(1),
                tag: DATA,
                query: 1,
                object: h.new_object_id(),
                chunk: 0,
                last: true,
            };
            tickets.push((i, h.send(buf, spec).expect("send")));
        }
        let posted = t.elapsed();
        let mut ok = Vec::new();
        let mut refused = 0u64;
        for (i, tk) in tickets {
            match tk.wait(bp + Duration::from_secs(30)) {
                Ok(()) => ok.push(i),
                Err(RouterError::Backpressure { waited, what }) => {
                    assert_eq!(waited, bp);
                    assert!(what.contains("ring at node 1"), "{what}");
                    refused += 1;
                }
                Err(e) => panic!("message {i}: {e}"),
            }
        }
        eprintln!(
            "{}: {count} sends posted in {posted:?}: {} accepted, {refused} refused by \
             back-pressure on the ring, {alloc_refused} on the arena, all settled after {:?}",
            F::KIND,
            ok.len(),
            t.elapsed()
        );
        // The end marker goes after everything accepted, on the same connection
        // (itself retried while the ring is full).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match h.send_bytes(Addr::controller(0), Addr::tstore(1), END, 2, b"end") {
                Ok(()) => break,
                Err(RouterError::Backpressure { .. }) if Instant::now() < deadline => {}
                Err(e) => panic!("end marker: {e}"),
            }
        }
        (consumer.join().unwrap(), (ok, refused + alloc_refused))
    });
    let (ok, refused) = outcome;
    assert!(
        refused > 0,
        "a flood into a 64 KiB ring must meet back-pressure"
    );
    assert!(!ok.is_empty(), "the sends that found room get through");
    assert_eq!(
        delivered.len(),
        ok.len(),
        "every accepted send delivered exactly once, nothing else"
    );
    assert_eq!(delivered, ok, "in send order");
    let unique: BTreeSet<_> = delivered.iter().collect();
    assert_eq!(unique.len(), delivered.len());
    let st0 = r0.handle().stats().total();
    assert!(st0.stalls > 0, "{st0:?}");
    assert!(st0.tx_ring_high_water <= ring as u64);
    assert_eq!(r1.handle().stats().total().refused, 0);
    // Node 1 still serves, both ways.
    r1.handle()
        .send_bytes(Addr::tstore(1), Addr::controller(0), 3, 3, b"still here")
        .expect("node 1 -> node 0");
    let d = next_data(&in0[0], "node 1's message after the flood");
    assert_eq!(d.data.bytes(), b"still here");
}

/// Records what a client sends through a proxy to `server`: returns the proxy's
/// address and a handle yielding the client-to-server bytes once the client hangs up.
fn recording_proxy(server: String) -> (String, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let h = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut s = TcpStream::connect(&server).unwrap();
        let (mut c2, mut s2) = (c.try_clone().unwrap(), s.try_clone().unwrap());
        // server -> client, as is
        let back = std::thread::spawn(move || {
            let _ = std::io::copy(&mut s2, &mut c2);
            let _ = c2.shutdown(Shutdown::Write);
        });
        let mut rec = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    rec.extend_from_slice(&buf[..k]);
                    if s.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Both);
        let _ = back.join();
        rec
    });
    (addr, h)
}

/// The first `n` bootstrap frames (u32 length + JSON) of a recorded stream.
fn frames(rec: &[u8], n: usize) -> Vec<u8> {
    let mut at = 0;
    for _ in 0..n {
        let len = u32::from_le_bytes(rec[at..at + 4].try_into().unwrap()) as usize;
        at += 4 + len;
    }
    rec[..at].to_vec()
}

/// Reads bootstrap frames until EOF (or 10 s); returns their JSON text.
fn read_frames(s: &mut TcpStream) -> Vec<String> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return out;
        }
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        if s.read_exact(&mut body).is_err() {
            return out;
        }
        out.push(String::from_utf8(body).expect("JSON frame"));
    }
}

/// Strangers at the door while the router starts: the wrong secret, another fabric, a
/// replayed recording of a good handshake, garbage bytes, and a node with the right
/// secret that is not in the cluster. Each is refused and counted in
/// `RouterStats::refused_connections`; the router starts with its real peer and serves.
fn strangers_at_startup<F: Fabric>() {
    let ring = 64 * KIB;
    let ls: Vec<_> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let specs = specs(&ls);
    let victim_addr = specs[0].addr.clone();
    let mut ls = ls.into_iter();
    let (l0, l1) = (ls.next().unwrap(), ls.next().unwrap());
    let c0 = router_cfg::<F>(0, &specs, ring);
    let c1 = router_cfg::<F>(1, &specs, ring);
    let good = fcfg(F::KIND);

    // A recording of node 1's good handshake with a server that holds the secret and
    // plays node 0 (as an eavesdropper on the cluster network would get one).
    let rec = {
        let srv_l = TcpListener::bind("127.0.0.1:0").unwrap();
        let srv_addr = srv_l.local_addr().unwrap().to_string();
        let (proxy, rec) = recording_proxy(srv_addr);
        let g = good.clone();
        let srv = std::thread::spawn(move || Control::accept(&srv_l, &g, 0, F::KIND));
        let cli = Control::connect(&proxy, &good, 1, F::KIND).expect("recorded handshake");
        srv.join()
            .unwrap()
            .expect("recorded handshake, server side");
        drop(cli);
        frames(&rec.join().unwrap(), 2) // hello + response
    };

    let victim = std::thread::spawn(move || Router::start::<F>(c0, l0));
    let mut refused = 0u64;

    // Expect: wrong secret: the stranger cannot verify the victim's proof and says
    // so; the victim refuses the connection.
    let mut bad = good.clone();
    bad.secret = b"guessed".to_vec();
    let e = Control::connect(&victim_addr, &bad, 1, F::KIND).unwrap_err();
    assert!(
        matches!(e, TError::AuthFailed { .. }) && e.to_string().contains("secret"),
        "{e}"
    );
    refused += 1;

    // Expect: another fabric: refused with a reason naming it.
    let other = if F::KIND == FabricKind::Tcp {
        FabricKind::Shm
    } else {
        FabricKind::Tcp
    };
    let e = Control::connect(&victim_addr, &fcfg(other), 1, other).unwrap_err();
    assert!(e.to_string().contains("fabric"), "{e}");
    refused += 1;

    // Expect: the recorded hello + response replayed: the victim's challenge nonce is
    // fresh, so the old response fails: a refusing verdict, then the victim hangs up.
    let mut s = TcpStream::connect(&victim_addr).unwrap();
    s.write_all(&rec).unwrap();
    let got = read_frames(&mut s);
    assert_eq!(got.len(), 2, "a challenge then a verdict: {got:?}");
    assert!(got[0].contains(r#""step":"challenge""#), "{got:?}");
    assert!(got[1].contains(r#""step":"verdict""#), "{got:?}");
    assert!(got[1].contains(r#""ok":false"#), "{got:?}");
    assert!(got[1].contains("wrong cluster secret"), "{got:?}");
    refused += 1;

    // Expect: garbage bytes: a protocol error, the victim hangs up.
    let mut rng = Rng(99);
    for len in [1usize, 3, 4, 9, 100, 5000] {
        let mut s = TcpStream::connect(&victim_addr).unwrap();
        let mut g = rng.bytes(len);
        if len >= 4 {
            // A plausible length so the victim reads on, then garbage JSON.
            g[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
        }
        s.write_all(&g).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        refused += 1;
    }

    // Expect: the right secret but node 7, which is not in the cluster: authenticated,
    // then refused; the stranger sees the connection close.
    let ctl = Control::connect(&victim_addr, &good, 7, F::KIND).expect("authenticates");
    let mut st = ctl.into_stream();
    st.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(st.read(&mut buf), Ok(0) | Err(_)),
        "the victim hangs up"
    );
    refused += 1;

    // The real node 1 now starts: both routers come up and talk.
    let friend = std::thread::spawn(move || Router::start::<F>(c1, l1));
    let (vr, vin) = victim
        .join()
        .unwrap()
        .expect("the victim starts despite strangers");
    let (fr, fin) = friend.join().unwrap().expect("node 1 starts");
    assert_eq!(vr.handle().stats().refused_connections, refused);
    assert_eq!(fr.handle().stats().refused_connections, 0);
    fr.handle()
        .send_bytes(Addr::controller(1), Addr::tstore(0), 1, 1, b"hello victim")
        .unwrap();
    let d = next_data(&vin[1], "node 1 -> victim");
    assert_eq!(d.data.bytes(), b"hello victim");
    vr.handle()
        .send_bytes(Addr::tstore(0), Addr::controller(1), 1, 1, b"hello friend")
        .unwrap();
    let d = next_data(&fin[0], "victim -> node 1");
    assert_eq!(d.data.bytes(), b"hello friend");
}

/// A stranger that connects and says nothing holds the victim's accept loop for one
/// handshake timeout (the victim handles one handshake at a time), no longer: the
/// router still starts with its real peer.
fn silent_stranger_at_startup<F: Fabric>() {
    let ls: Vec<_> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let specs = specs(&ls);
    let mut ls = ls.into_iter();
    let (l0, l1) = (ls.next().unwrap(), ls.next().unwrap());
    let mut c0 = router_cfg::<F>(0, &specs, 64 * KIB);
    let mut c1 = router_cfg::<F>(1, &specs, 64 * KIB);
    c0.fabric.connect_timeout = Duration::from_secs(1);
    c1.fabric.connect_timeout = Duration::from_secs(1);
    let silent = TcpStream::connect(&specs[0].addr).unwrap();
    let t = Instant::now();
    let victim = std::thread::spawn(move || Router::start::<F>(c0, l0));
    std::thread::sleep(Duration::from_millis(100));
    let friend = std::thread::spawn(move || Router::start::<F>(c1, l1));
    let (vr, vin) = victim.join().unwrap().expect("the victim starts");
    let (fr, _fin) = friend.join().unwrap().expect("node 1 starts");
    eprintln!(
        "{}: started after {:?} with a silent stranger",
        F::KIND,
        t.elapsed()
    );
    drop(silent);
    fr.handle()
        .send_bytes(Addr::controller(1), Addr::tstore(0), 1, 1, b"late but here")
        .unwrap();
    assert_eq!(
        next_data(&vin[1], "node 1 -> victim").data.bytes(),
        b"late but here"
    );
    drop(vr);
}

#[cfg_attr(not(feature = "verbs"), allow(dead_code))]
fn verbs_available() -> bool {
    if std::env::var("SMRDB_VERBS_DEVICE").is_ok_and(|d| !d.is_empty()) && cfg!(feature = "verbs") {
        return true;
    }
    assert!(
        std::env::var("SMRDB_REQUIRE_VERBS").as_deref() != Ok("1"),
        "SMRDB_REQUIRE_VERBS=1 but no verbs device (or built without the verbs feature)"
    );
    eprintln!(
        "skipped: no RDMA device (set SMRDB_VERBS_DEVICE, or run under soft-roce-setup/vm.sh)"
    );
    false
}

/// Strangers after start-up, at the listener the router keeps for readmitting lost
/// peers: silent connections, the wrong secret, garbage, and a node with the right
/// secret that is not in the cluster. Each is refused and counted, none holds up the
/// others (handshakes run side by side, with the handshake timeout), and the peers'
/// traffic flows throughout.
fn strangers_after_startup<F: Fabric>() {
    let ls: Vec<_> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let specs = specs(&ls);
    let victim_addr = specs[0].addr.clone();
    let mut ls = ls.into_iter();
    let (l0, l1) = (ls.next().unwrap(), ls.next().unwrap());
    let mut c0 = router_cfg::<F>(0, &specs, 64 * KIB);
    let c1 = router_cfg::<F>(1, &specs, 64 * KIB);
    c0.fabric.connect_timeout = Duration::from_secs(1);
    let victim = std::thread::spawn(move || Router::start::<F>(c0, l0));
    let (fr, fin) = Router::start::<F>(c1, l1).expect("node 1 starts");
    let (vr, vin) = victim.join().unwrap().expect("the victim starts");
    assert_eq!(vr.handle().stats().refused_connections, 0);

    // Expect: three silent strangers, each refused after the 1 s handshake timeout.
    let silent: Vec<_> = (0..3)
        .map(|_| TcpStream::connect(&victim_addr).unwrap())
        .collect();
    // Expect: the wrong secret, refused at once (the silent ones do not hold it up).
    let t = Instant::now();
    let mut bad = fcfg(F::KIND);
    bad.secret = b"guessed".to_vec();
    let e = Control::connect(&victim_addr, &bad, 1, F::KIND).unwrap_err();
    assert!(e.to_string().contains("secret"), "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    // Expect: garbage bytes, refused.
    let mut g = TcpStream::connect(&victim_addr).unwrap();
    g.write_all(&[7, 0, 0, 0, b'{', b'x', 0xff, 0, 1, 2, 3])
        .unwrap();
    g.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = g.read_to_end(&mut rest);
    // Expect: node 7 with the right secret: authenticated, then refused (not a peer).
    let ctl = Control::connect(&victim_addr, &fcfg(F::KIND), 7, F::KIND).expect("authenticates");
    let mut st = ctl.into_stream();
    st.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(st.read(&mut buf), Ok(0) | Err(_)),
        "the victim hangs up"
    );

    // The peers talk meanwhile.
    fr.handle()
        .send_bytes(Addr::controller(1), Addr::tstore(0), 1, 1, b"still here")
        .unwrap();
    assert_eq!(
        next_data(&vin[1], "node 1 -> victim").data.bytes(),
        b"still here"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while vr.handle().stats().refused_connections < 6 {
        assert!(
            Instant::now() < deadline,
            "refused {} of 6",
            vr.handle().stats().refused_connections
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(silent);
    std::thread::sleep(Duration::from_millis(100));
    let st = vr.handle().stats();
    assert_eq!(st.refused_connections, 6);
    assert_eq!(st.peers[0].reconnects, 0, "a stranger was taken for node 1");
    vr.handle()
        .send_bytes(Addr::tstore(0), Addr::controller(1), 1, 1, b"and here")
        .unwrap();
    assert_eq!(
        next_data(&fin[0], "victim -> node 1").data.bytes(),
        b"and here"
    );
}

macro_rules! suite {
    ($m:ident, $F:ty, $avail:expr, $flood:expr $(, #[$attr:meta])*) => {
        mod $m {
            use super::*;
            #[test]
            $(#[$attr])*
            fn ring_and_address_attacks_are_refused() {
                if $avail {
                    super::ring_and_address_attacks::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn versions_and_garbage_are_refused() {
                if $avail {
                    super::versions_and_garbage::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn hostile_flood_is_refused_and_counted() {
                if $avail {
                    super::hostile_flood::<$F>($flood)
                }
            }
            #[test]
            $(#[$attr])*
            fn honest_flood_meets_backpressure() {
                if $avail {
                    super::honest_flood_meets_backpressure::<$F>($flood)
                }
            }
            #[test]
            $(#[$attr])*
            fn strangers_at_startup_are_refused_and_counted() {
                if $avail {
                    super::strangers_at_startup::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn strangers_after_startup_are_refused_and_counted() {
                if $avail {
                    super::strangers_after_startup::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn silent_stranger_delays_startup_only() {
                if $avail {
                    super::silent_stranger_at_startup::<$F>()
                }
            }
        }
    };
}

suite!(shm, Shm, true, 100_000);
suite!(tcp, Tcp, true, 100_000);
#[cfg(feature = "verbs")]
suite!(verbs, smrdb_transport::verbs::Verbs, verbs_available(), 10_000, #[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]);
