//! Router tests, the same cases on every fabric (verbs inside the Soft-RoCE VM: see
//! `soft-roce-setup/verbs-tests.sh`). Nodes run as threads of this process, each with
//! its own fabric, region and router thread, connected over loopback.

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use smrdb_router::{
    header::{Header, Kind, FLAG_LAST},
    Addr, Delivery, Inbound, Inbox, Mode, NodeSpec, Router, RouterConfig, RouterError,
    RouterHandle,
};
use smrdb_transport::shm::Shm;
use smrdb_transport::tcp::Tcp;
use smrdb_transport::{Control, Endpoint, Fabric, FabricConfig, Window};

const MIB: usize = 1 << 20;
const SECRET: &[u8] = b"router test secret";

struct Node {
    router: Router,
    inboxes: Vec<Inbox>,
}

impl Node {
    fn handle(&self) -> RouterHandle {
        self.router.handle()
    }
}

struct Opts {
    tstores: u32,
    ring: usize,
    arena: usize,
    chunk: usize,
    mode: Mode,
    backpressure: Duration,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            tstores: 3,
            ring: 8 * MIB,
            arena: 24 * MIB,
            chunk: MIB,
            mode: Mode::Smr,
            backpressure: Duration::from_secs(30),
        }
    }
}

fn fabric_cfg<F: Fabric>() -> FabricConfig {
    let mut c = FabricConfig::new(F::KIND, SECRET.to_vec());
    c.connect_timeout = Duration::from_secs(20);
    c
}

/// Starts `n` routers connected to each other.
fn cluster<F: Fabric>(n: u32, o: &Opts) -> Vec<Node> {
    cluster_with_specs::<F>(n, o).0
}

fn router_cfg<F: Fabric>(id: u32, specs: &[NodeSpec], o: &Opts) -> RouterConfig {
    let mut cfg = RouterConfig::new(id, specs.to_vec(), fabric_cfg::<F>());
    cfg.ring_bytes = o.ring;
    cfg.arena_bytes = o.arena;
    cfg.max_chunk = o.chunk;
    cfg.mode = o.mode;
    cfg.backpressure_timeout = o.backpressure;
    cfg.connect_timeout = Duration::from_secs(30);
    cfg
}

/// Starts `n` routers connected to each other; also returns their specs.
fn cluster_with_specs<F: Fabric>(n: u32, o: &Opts) -> (Vec<Node>, Vec<NodeSpec>) {
    let listeners: Vec<_> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let specs: Vec<NodeSpec> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| NodeSpec {
            id: i as u32,
            addr: l.local_addr().unwrap().to_string(),
            tstores: o.tstores,
        })
        .collect();
    std::thread::scope(|s| {
        let hs: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let cfg = router_cfg::<F>(i as u32, &specs, o);
                s.spawn(move || {
                    let (router, inboxes) = Router::start::<F>(cfg, l).expect("router starts");
                    Node { router, inboxes }
                })
            })
            .collect();
        let nodes = hs.into_iter().map(|h| h.join().unwrap()).collect();
        (nodes, specs.clone())
    })
}

fn object_bytes(node: u32, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(0x9E37_79B9) >> 7) as u8 ^ (node as u8 * 37))
        .collect()
}

fn next_data(inbox: &Inbox) -> Delivery {
    match inbox
        .recv(Duration::from_secs(60))
        .expect("a delivery within 60 s")
    {
        Inbound::Data(d) => d,
        Inbound::PeerLost { node, reason } => panic!("unexpected loss of node {node}: {reason}"),
        Inbound::PeerJoined { node } => panic!("unexpected readmission of node {node}"),
    }
}

/// Every node broadcasts an object to every Tstore; every Tstore must see each object
/// byte-identical; each node must put exactly (N-1)·S (SMR) or (N-1)·T·S (naive)
/// payload bytes on the wire.
fn broadcast_every_node<F: Fabric>(mode: Mode) {
    let size = std::env::var("SMRDB_TEST_OBJECT_MIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(64)
        * MIB;
    let (n, t) = (3u32, 3u32);
    let o = Opts {
        mode,
        tstores: t,
        ..Opts::default()
    };
    let mut nodes = cluster::<F>(n, &o);
    let expected: Vec<u32> = (0..n)
        .map(|k| crc32fast::hash(&object_bytes(k, size)))
        .collect();
    std::thread::scope(|s| {
        // Consumers: each Tstore hashes every object chunk by chunk as it arrives and
        // drops the chunk (releasing ring space) right after.
        let mut consumers = Vec::new();
        for node in &mut nodes {
            for inbox in node.inboxes.drain(1..) {
                consumers.push(s.spawn(move || {
                    let mut hashers: HashMap<u64, (u32, crc32fast::Hasher, u32)> = HashMap::new();
                    let mut done = HashMap::new();
                    while done.len() < n as usize {
                        let d = next_data(&inbox);
                        let e = hashers
                            .entry(d.spec.object)
                            .or_insert_with(|| (d.from, crc32fast::Hasher::new(), 0));
                        assert_eq!(d.spec.chunk, e.2, "chunks of one object arrive in order");
                        e.1.update(d.data.bytes());
                        e.2 += 1;
                        if d.spec.last {
                            let (from, h, _) = hashers.remove(&d.spec.object).unwrap();
                            done.insert(from, h.finalize());
                        }
                    }
                    (inbox.addr(), done)
                }));
            }
        }
        let senders: Vec<_> = nodes
            .iter()
            .enumerate()
            .map(|(k, node)| {
                let h = node.handle();
                s.spawn(move || {
                    let data = object_bytes(k as u32, size);
                    h.send_bytes(Addr::controller(k as u32), Addr::ALL_TSTORES, 1, 7, &data)
                        .expect("broadcast completes");
                })
            })
            .collect();
        for h in senders {
            h.join().unwrap();
        }
        for c in consumers {
            let (addr, done) = c.join().unwrap();
            for k in 0..n {
                assert_eq!(
                    done.get(&k),
                    Some(&expected[k as usize]),
                    "{addr:?}: object of node {k} differs"
                );
            }
        }
    });
    let per_copy = match mode {
        Mode::Smr => u64::from(n - 1),
        Mode::Naive => u64::from((n - 1) * t),
    };
    for node in &nodes {
        let st = node.handle().stats();
        let tot = st.total();
        assert_eq!(
            tot.bytes_written,
            per_copy * size as u64,
            "node {} wire bytes ({mode:?})",
            st.node
        );
        let chunks = size.div_ceil(MIB) as u64;
        assert_eq!(
            tot.writes,
            per_copy * chunks,
            "one WRITE per chunk per copy"
        );
        assert_eq!(tot.refused, 0);
        assert_eq!(
            st.local_deliveries,
            u64::from(t) * chunks,
            "local Tstores get pointers"
        );
    }
}

/// A ring much smaller than the object: the sender stalls, resumes as consumers
/// release, and no byte is lost.
fn small_ring_stalls_and_resumes<F: Fabric>() {
    let o = Opts {
        tstores: 2,
        ring: 256 * 1024,
        arena: 4 * MIB,
        chunk: 128 * 1024,
        ..Opts::default()
    };
    let mut nodes = cluster::<F>(2, &o);
    let size = 8 * MIB + 12345;
    let data = object_bytes(0, size);
    let want = crc32fast::hash(&data);
    // Every Tstore consumes, the sender's local ones (which get pointers) included.
    let mut inboxes: Vec<Inbox> = nodes[1].inboxes.drain(1..).collect();
    inboxes.extend(nodes[0].inboxes.drain(1..));
    std::thread::scope(|s| {
        let cs: Vec<_> = inboxes
            .into_iter()
            .map(|inbox| {
                s.spawn(move || {
                    let mut h = crc32fast::Hasher::new();
                    loop {
                        let d = next_data(&inbox);
                        // Slow consumer: the ring fills up.
                        std::thread::sleep(Duration::from_micros(300));
                        h.update(d.data.bytes());
                        if d.spec.last {
                            return h.finalize();
                        }
                    }
                })
            })
            .collect();
        nodes[0]
            .handle()
            .send_bytes(Addr::controller(0), Addr::ALL_TSTORES, 2, 1, &data)
            .unwrap();
        for c in cs {
            assert_eq!(c.join().unwrap(), want);
        }
    });
    let st = nodes[0].handle().stats().total();
    assert!(
        st.stalls > 0,
        "a 256 KiB ring must stall an 8 MiB object: {st:?}"
    );
    assert!(st.tx_ring_high_water <= 256 * 1024);
    assert_eq!(st.bytes_written, size as u64);
}

/// Point-to-point and controller addressing reach exactly the named consumer.
fn point_to_point_reaches_one_consumer<F: Fabric>() {
    let o = Opts {
        tstores: 2,
        ..Opts::default()
    };
    let nodes = cluster::<F>(2, &o);
    // Tstores: node 0 has 0,1; node 1 has 2,3.
    let h0 = nodes[0].handle();
    h0.send_bytes(Addr::tstore(1), Addr::tstore(3), 9, 5, b"to tstore 3")
        .unwrap();
    h0.send_bytes(
        Addr::tstore(0),
        Addr::controller(1),
        10,
        5,
        b"to controller 1",
    )
    .unwrap();
    h0.send_bytes(Addr::tstore(0), Addr::tstore(1), 11, 5, b"local")
        .unwrap();
    let d = next_data(&nodes[1].inboxes[2]);
    assert_eq!(
        (d.from, d.spec.src, d.spec.tag, d.data.bytes()),
        (0, Addr::tstore(1), 9, &b"to tstore 3"[..])
    );
    assert!(!d.data.is_local());
    let d = next_data(&nodes[1].inboxes[0]);
    assert_eq!((d.spec.tag, d.data.bytes()), (10, &b"to controller 1"[..]));
    let d = next_data(&nodes[0].inboxes[2]);
    assert_eq!((d.spec.tag, d.data.bytes()), (11, &b"local"[..]));
    assert!(
        d.data.is_local(),
        "a local destination gets a pointer to the sender's buffer"
    );
    std::thread::sleep(Duration::from_millis(100));
    for (k, node) in nodes.iter().enumerate() {
        for (i, inbox) in node.inboxes.iter().enumerate() {
            assert!(
                inbox.try_recv().is_none(),
                "node {k} consumer {i} got something not meant for it"
            );
        }
    }
    let e = h0
        .send_bytes(Addr::tstore(0), Addr::tstore(99), 1, 1, b"x")
        .unwrap_err();
    assert!(matches!(e, RouterError::NoSuchAddr(_)), "{e}");
    let e = h0
        .send_bytes(Addr::tstore(2), Addr::tstore(0), 1, 1, b"x")
        .unwrap_err();
    assert!(
        e.to_string().contains("not on node 0"),
        "a source must live on the sending node: {e}"
    );
}

/// A consumer that never releases: the sender reports back-pressure within the
/// timeout, and the router keeps serving others.
fn never_releasing_consumer_is_backpressure<F: Fabric>() {
    let o = Opts {
        tstores: 1,
        ring: 512 * 1024,
        arena: 2 * MIB,
        chunk: 128 * 1024,
        backpressure: Duration::from_millis(500),
        ..Opts::default()
    };
    let nodes = cluster::<F>(2, &o);
    let hoard = std::thread::scope(|s| {
        let inbox = &nodes[1].inboxes[1];
        let hoarder = s.spawn(move || {
            let mut kept = Vec::new();
            while let Ok(Inbound::Data(d)) = inbox.recv(Duration::from_secs(3)) {
                kept.push(d);
            }
            kept
        });
        let t = Instant::now();
        let e = nodes[0]
            .handle()
            .send_bytes(
                Addr::controller(0),
                Addr::tstore(1),
                3,
                1,
                &vec![7u8; 4 * MIB],
            )
            .unwrap_err();
        assert!(matches!(e, RouterError::Backpressure { .. }), "{e}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "back-pressure took {:?}",
            t.elapsed()
        );
        hoarder.join().unwrap()
    });
    assert!(!hoard.is_empty());
    assert!(nodes[0].handle().stats().total().stalls >= 1);
    // Once the hoard is dropped the ring drains and sends work again.
    drop(hoard);
    nodes[0]
        .handle()
        .send_bytes(
            Addr::controller(0),
            Addr::controller(1),
            4,
            1,
            b"still alive",
        )
        .unwrap();
    let d = next_data(&nodes[1].inboxes[0]);
    assert_eq!(d.data.bytes(), b"still alive");
}

/// A peer that dies mid-broadcast: the sender's broadcast fails naming it within a few
/// seconds, the other nodes' consumers are told, the survivors keep working.
fn peer_dies_mid_broadcast<F: Fabric>() {
    let o = Opts {
        tstores: 1,
        ring: MIB,
        arena: 8 * MIB,
        chunk: 256 * 1024,
        ..Opts::default()
    };
    let mut nodes = cluster::<F>(3, &o);
    let victim = nodes.pop().unwrap();
    let Node {
        router: vr,
        inboxes: vinboxes,
    } = victim;
    let h0 = nodes[0].handle();
    let t = std::thread::scope(|s| {
        // Nodes 0 and 1 consume normally; node 2 hoards, so node 0 stalls on it.
        for c in [&nodes[0].inboxes[1], &nodes[1].inboxes[1]] {
            s.spawn(move || while let Ok(Inbound::Data(_)) = c.recv(Duration::from_secs(5)) {});
        }
        let sender = s.spawn(move || {
            h0.send_bytes(
                Addr::controller(0),
                Addr::ALL_TSTORES,
                5,
                1,
                &vec![1u8; 32 * MIB],
            )
        });
        let v = &vinboxes[1];
        let mut hoard = Vec::new();
        while hoard.len() < 3 {
            if let Ok(Inbound::Data(d)) = v.recv(Duration::from_secs(10)) {
                hoard.push(d);
            }
        }
        let t = Instant::now();
        vr.shutdown();
        let e = sender.join().unwrap().unwrap_err();
        assert!(matches!(e, RouterError::PeerLost { node: 2, .. }), "{e}");
        drop(hoard);
        t
    });
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "loss noticed after {:?}",
        t.elapsed()
    );
    // Node 1's consumers heard about it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut told = false;
    while Instant::now() < deadline && !told {
        if let Ok(Inbound::PeerLost { node: 2, .. }) =
            nodes[1].inboxes[0].recv(Duration::from_millis(100))
        {
            told = true;
        }
    }
    assert!(told, "node 1's controller was told node 2 is lost");
    // The survivors still work.
    nodes[1]
        .handle()
        .send_bytes(Addr::controller(1), Addr::controller(0), 6, 2, b"survivors")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match nodes[0].inboxes[0].recv(Duration::from_secs(10)).unwrap() {
            Inbound::Data(d) => {
                assert_eq!(d.data.bytes(), b"survivors");
                break;
            }
            Inbound::PeerLost { .. } | Inbound::PeerJoined { .. } => {
                assert!(Instant::now() < deadline)
            }
        }
    }
}

/// The next chunk of `inbox`, past loss and readmission notices.
fn next_chunk(inbox: &Inbox) -> Delivery {
    loop {
        match inbox
            .recv(Duration::from_secs(20))
            .expect("a chunk within 20 s")
        {
            Inbound::Data(d) => return d,
            _ => continue,
        }
    }
}

/// The next item of `inbox` that is not data.
fn next_event(inbox: &Inbox) -> Inbound {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inbox.recv(left).expect("a loss or readmission within 20 s") {
            Inbound::Data(_) => continue,
            ev => return ev,
        }
    }
}

/// A node that dies and starts again (same id and address, a new router) is
/// readmitted: it dials node 0 (which accepts it only once its consumers released
/// every chunk of the old connection) and node 2 dials it; consumers see the loss
/// then the readmission, and data flows both ways again on fresh rings.
fn lost_peer_is_readmitted<F: Fabric>() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
    let o = Opts {
        tstores: 1,
        ring: MIB,
        arena: 4 * MIB,
        chunk: 256 * 1024,
        ..Opts::default()
    };
    let (mut nodes, specs) = cluster_with_specs::<F>(3, &o);
    // Node 0's Tstore (1 on node 0 is Tstore 0) keeps a chunk (all of a one-chunk
    // object) from node 1.
    let old = object_bytes(1, 200_000);
    nodes[1]
        .handle()
        .send_bytes(Addr::controller(1), Addr::tstore(0), 7, 1, &old)
        .unwrap();
    let held = next_data(&nodes[0].inboxes[1]);
    assert_eq!(held.data.bytes(), &old[..]);

    let victim = nodes.remove(1);
    drop(victim); // node 1 dies: its endpoints close
    for n in &nodes {
        match next_event(&n.inboxes[0]) {
            Inbound::PeerLost { node: 1, .. } => {}
            ev => panic!("expected the loss of node 1, got {ev:?}"),
        }
    }
    // Node 1 again, on the same address.
    let listener = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match TcpListener::bind(&specs[1].addr) {
                Ok(l) => break l,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "cannot rebind {}: {e}",
                        specs[1].addr
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    };
    let cfg = router_cfg::<F>(1, &specs, &o);
    let restarted = std::thread::spawn(move || Router::start::<F>(cfg, listener));
    // Node 0 holds an old chunk: it must not readmit node 1 yet (its ring would be
    // granted while old bytes are still read).
    std::thread::sleep(Duration::from_millis(700));
    let s0 = nodes[0].handle().stats();
    assert_eq!(s0.peers[0].node, 1);
    assert_eq!(
        s0.peers[0].reconnects, 0,
        "readmitted while a chunk was held"
    );
    assert_eq!(held.data.bytes(), &old[..]);
    drop(held);
    let (router, inboxes) = restarted.join().unwrap().expect("node 1 starts again");
    nodes.insert(1, Node { router, inboxes });
    for i in [0, 2] {
        match next_event(&nodes[i].inboxes[0]) {
            Inbound::PeerJoined { node: 1 } => {}
            ev => panic!("node {i}: expected node 1's readmission, got {ev:?}"),
        }
        let st = nodes[i].handle().stats();
        let p = st.peers.iter().find(|p| p.node == 1).unwrap();
        assert_eq!(p.reconnects, 1, "node {i}");
    }
    // Everything works again: node 0 broadcasts, every Tstore gets it; node 1 sends
    // to node 0's and node 2's Tstores.
    let fresh = object_bytes(0, 700_000);
    nodes[0]
        .handle()
        .send_bytes(Addr::controller(0), Addr::ALL_TSTORES, 8, 2, &fresh)
        .unwrap();
    for n in &nodes {
        let mut got = Vec::new();
        loop {
            let d = next_chunk(&n.inboxes[1]);
            assert_eq!(d.spec.tag, 8, "a stale chunk of the old connection arrived");
            got.extend_from_slice(d.data.bytes());
            if d.spec.last {
                break;
            }
        }
        assert_eq!(got, fresh);
    }
    let back = object_bytes(1, 500_000);
    for t in [0, 2] {
        nodes[1]
            .handle()
            .send_bytes(Addr::controller(1), Addr::tstore(t), 9, 3, &back)
            .unwrap();
        let mut got = Vec::new();
        loop {
            let d = next_chunk(&nodes[t as usize].inboxes[1]);
            assert_eq!((d.from, d.spec.tag), (1, 9));
            got.extend_from_slice(d.data.bytes());
            if d.spec.last {
                break;
            }
        }
        assert_eq!(got, back);
    }
}

/// Hand-crafted headers from a fake peer. Each case says what must happen; the router
/// must refuse the bad ones, count them, and keep delivering good ones.
fn crafted_headers_are_refused<F: Fabric>() {
    let ring = 64 * 1024;
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr0 = l.local_addr().unwrap().to_string();
    let specs = vec![
        NodeSpec {
            id: 0,
            addr: addr0.clone(),
            tstores: 1,
        },
        NodeSpec {
            id: 1,
            addr: "127.0.0.1:9".into(),
            tstores: 1,
        },
    ];
    let mut cfg = RouterConfig::new(0, specs, fabric_cfg::<F>());
    cfg.ring_bytes = ring;
    cfg.arena_bytes = MIB;
    let fc = fabric_cfg::<F>();
    let fake = F::open(&fc, ring).unwrap();
    // SAFETY: nothing is in flight yet.
    unsafe { fake.region().bytes_mut(0, ring).unwrap().fill(0xab) };
    let (node, mut ep) = std::thread::scope(|s| {
        let h = s.spawn(move || Router::start::<F>(cfg, l).unwrap());
        // Play node 1: connect to the router, which expects node 1 to dial it.
        let ep = {
            let ctl = loop {
                match Control::connect(&addr0, &fc, 1, F::KIND) {
                    Ok(c) => break c,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            fake.establish(
                ctl,
                Window {
                    offset: 0,
                    len: ring,
                },
            )
            .unwrap()
        };
        (h.join().unwrap(), ep)
    });
    let (router, inboxes) = node;
    let good = |seq: u64, end: u64, len: u32, off: u64| Header {
        kind: Kind::Data,
        flags: FLAG_LAST,
        tag: 42,
        src: Addr::tstore(1),
        dst: Addr::tstore(0),
        query: 1,
        object: 1,
        chunk: 0,
        len,
        ring_offset: off,
        ring_end: end,
        seq,
    };
    fn send<E: Endpoint>(ep: &mut E, bytes: &[u8]) {
        ep.post_send(bytes, 0).unwrap();
        let _ = ep.poll(&mut Vec::new());
    }
    // Expect: a sound chunk (100 bytes at ring offset 0, seq 0) is delivered. Chunks
    // occupy their length rounded up to 64 bytes (header version 2): it ends at 128.
    ep.post_write(0, 100, 0, 1).unwrap();
    send(&mut ep, &good(0, 128, 100, 0).encode());
    let d = next_data(&inboxes[1]);
    assert_eq!(d.data.bytes(), &[0xab; 100][..]);
    drop(d);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Expect: refused, sequence 0 was already used.
        ("stale sequence", good(0, 200, 100, 100).encode().to_vec()),
        // Expect: refused, sequence 1 is next, 5 is from the future.
        ("future sequence", good(5, 200, 100, 100).encode().to_vec()),
        // Expect: refused (and seq 1 consumed): the chunk runs past the ring's end.
        (
            "out of bounds",
            good(1, ring as u64 + 100, 200, ring as u64 - 100)
                .encode()
                .to_vec(),
        ),
        // Expect: refused, version 9 is not ours.
        (
            "wrong version",
            good(2, 200, 100, 100).encode_as(9).to_vec(),
        ),
        // Expect: refused, kind 7 does not exist (checksum recomputed so only the kind is wrong).
        ("wrong kind", {
            let mut b = good(2, 200, 100, 100).encode();
            b[3] = 7;
            let c = crc32fast::hash(&b[..68]);
            b[68..72].copy_from_slice(&c.to_le_bytes());
            b.to_vec()
        }),
        // Expect: refused, not even a header.
        ("garbage", b"\x00\x01garbage".to_vec()),
        // Expect: refused (seq 2 consumed): node 1 cannot speak for node 0's controller.
        (
            "forged source",
            Header {
                src: Addr::controller(0),
                ..good(2, 200, 100, 100)
            }
            .encode()
            .to_vec(),
        ),
        // Expect: refused (seq 3 consumed): Tstore 1 lives on node 1, not here.
        (
            "wrong destination",
            Header {
                dst: Addr::tstore(1),
                ..good(3, 200, 100, 100)
            }
            .encode()
            .to_vec(),
        ),
        // Expect: refused (seq 4 consumed): a credit for bytes we never sent it.
        (
            "credit beyond sent",
            Header::credit(1 << 30, 4).encode().to_vec(),
        ),
    ];
    for (what, bytes) in &cases {
        send(&mut ep, bytes);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            inboxes[1].try_recv().is_none(),
            "{what}: must not be delivered"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while router.handle().stats().total().refused < cases.len() as u64 {
        assert!(
            Instant::now() < deadline,
            "refused {:?}",
            router.handle().stats().total()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(router.handle().stats().total().refused, cases.len() as u64);
    // Expect: the router still works: the next sound chunk (seq 5) is delivered.
    ep.post_write(0, 300, 128, 2).unwrap();
    send(&mut ep, &good(5, 128 + 320, 300, 128).encode());
    let d = next_data(&inboxes[1]);
    assert_eq!(d.data.bytes(), &[0xab; 300][..]);
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

macro_rules! suite {
    ($m:ident, $F:ty, $avail:expr $(, #[$attr:meta])*) => {
        mod $m {
            use super::*;
            #[test]
            $(#[$attr])*
            fn broadcast_smr_sends_one_copy_per_node() {
                if $avail {
                    broadcast_every_node::<$F>(Mode::Smr)
                }
            }
            #[test]
            $(#[$attr])*
            fn broadcast_naive_sends_one_copy_per_tstore() {
                if $avail {
                    broadcast_every_node::<$F>(Mode::Naive)
                }
            }
            #[test]
            $(#[$attr])*
            fn small_ring_stalls_and_resumes() {
                if $avail {
                    super::small_ring_stalls_and_resumes::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn point_to_point_reaches_one_consumer() {
                if $avail {
                    super::point_to_point_reaches_one_consumer::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn never_releasing_consumer_is_backpressure() {
                if $avail {
                    super::never_releasing_consumer_is_backpressure::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn peer_dies_mid_broadcast() {
                if $avail {
                    super::peer_dies_mid_broadcast::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn lost_peer_is_readmitted() {
                if $avail {
                    super::lost_peer_is_readmitted::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn crafted_headers_are_refused() {
                if $avail {
                    super::crafted_headers_are_refused::<$F>()
                }
            }
        }
    };
}

suite!(shm, Shm, true);
suite!(tcp, Tcp, true);
#[cfg(feature = "verbs")]
suite!(verbs, smrdb_transport::verbs::Verbs, verbs_available(), #[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]);
