//! The verbs backend against a real device: two `Verbs` fabrics in one process,
//! connected through an authenticated control connection on 127.0.0.1.
//!
//! The device comes from `SMRDB_VERBS_DEVICE` (`soft-roce-setup/vm.sh` sets `rxe0`).
//! The tests are `#[ignore]`d, so a plain `cargo test` lists them with the reason;
//! `soft-roce-setup/verbs-tests.sh` runs them inside the Soft-RoCE VM with
//! `--include-ignored` and `SMRDB_REQUIRE_VERBS=1` (a missing device is then a failure,
//! never a skip). Run by hand without a device, each prints why and returns.
#![cfg(feature = "verbs")]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use smrdb_transport::verbs::{Verbs, VerbsEndpoint};
use smrdb_transport::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, Window, MAX_MSG,
};

const MIB: usize = 1 << 20;
const SECRET: &[u8] = b"verbs loopback secret";

/// The config to use, or `None` (skip) when there is no device and none is required.
fn config() -> Option<FabricConfig> {
    let required = std::env::var("SMRDB_REQUIRE_VERBS").as_deref() == Ok("1");
    let mut c = FabricConfig::new(FabricKind::Verbs, SECRET.to_vec());
    c.connect_timeout = Duration::from_secs(20);
    let Some(dev) = c.device.clone() else {
        assert!(
            !required,
            "SMRDB_REQUIRE_VERBS=1 but SMRDB_VERBS_DEVICE is not set"
        );
        eprintln!("skipped: SMRDB_VERBS_DEVICE is not set (run under soft-roce-setup/vm.sh)");
        return None;
    };
    if let Err(e) = Verbs::open(&c, 4096) {
        assert!(
            !required,
            "SMRDB_REQUIRE_VERBS=1 but device {dev} cannot be opened: {e}"
        );
        eprintln!("skipped: device {dev} cannot be opened: {e}");
        return None;
    }
    Some(c)
}

struct Pair {
    a: Verbs,
    ea: VerbsEndpoint,
    b: Verbs,
    eb: VerbsEndpoint,
}

/// Two fabrics of `region` bytes, each granting the other `window`.
fn pair(c: &FabricConfig, region: usize, window: Window) -> Pair {
    let a = Verbs::open(c, region).expect("open a");
    let b = Verbs::open(c, region).expect("open b");
    eprintln!(
        "device {} gid index {} depth {}",
        a.device(),
        a.gid_index(),
        a.queue_depth()
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (ea, eb) = std::thread::scope(|s| {
        let srv = s.spawn(|| {
            let ctl = Control::accept(&l, c, 2, Verbs::KIND).expect("accept");
            b.establish(ctl, window).expect("establish b")
        });
        let ea = a.connect(&addr, c, 1, window).expect("connect a");
        (ea, srv.join().unwrap())
    });
    Pair { a, ea, b, eb }
}

fn fill(f: &Verbs, off: usize, len: usize, seed: u8) {
    // SAFETY: nothing is in flight over this range while the test fills it.
    let buf = unsafe { f.region().bytes_mut(off, len).unwrap() };
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((i as u32).wrapping_mul(2_654_435_761) >> 8) as u8 ^ seed;
    }
}

fn bytes(f: &Verbs, off: usize, len: usize) -> Vec<u8> {
    // SAFETY: the test reads only ranges whose writes have been signalled.
    unsafe { f.region().bytes(off, len).unwrap().to_vec() }
}

/// Waits until `pick` finds something in `seen` (which collects every event of `ep`;
/// 60 s at most).
fn wait_for<T>(
    ep: &mut VerbsEndpoint,
    seen: &mut Vec<Event>,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = seen.iter().find_map(&mut pick) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "nothing after 60 s; seen {seen:?}"
        );
        match ep.wait(seen, Duration::from_secs(1)) {
            Ok(_) | Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("wait: {e}"),
        }
    }
}

fn message(e: &Event) -> Option<Vec<u8>> {
    match e {
        Event::Message(m) => Some(m.as_bytes().to_vec()),
        _ => None,
    }
}

fn completed(id: u64) -> impl FnMut(&Event) -> Option<()> {
    move |e| matches!(e, Event::Completed { wr_id } if *wr_id == id).then_some(())
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn write_1mib_then_send() {
    let Some(c) = config() else { return };
    let window = Window {
        offset: MIB,
        len: 2 * MIB,
    };
    let mut p = pair(&c, 4 * MIB, window);
    fill(&p.a, 0, MIB, 0x5a);
    p.ea.post_write(0, MIB, 4096, 7).unwrap();
    p.ea.post_send(b"done", 8).unwrap();
    let mut evs = Vec::new();
    let m = wait_for(&mut p.eb, &mut evs, message);
    assert_eq!(m, b"done");
    // The message came after the bytes.
    assert_eq!(bytes(&p.b, window.offset + 4096, MIB), bytes(&p.a, 0, MIB));
    assert!(bytes(&p.b, window.offset, 4096).iter().all(|&x| x == 0));
    let mut done = Vec::new();
    wait_for(&mut p.ea, &mut done, completed(7));
    wait_for(&mut p.ea, &mut done, completed(8));
    // And back the other way.
    fill(&p.b, 0, 4096, 0x33);
    p.eb.post_write(0, 4096, 0, 1).unwrap();
    p.eb.post_send(&[0xab; MAX_MSG], 2).unwrap();
    let mut evs = Vec::new();
    assert_eq!(wait_for(&mut p.ea, &mut evs, message), vec![0xab; MAX_MSG]);
    assert_eq!(bytes(&p.a, window.offset, 4096), bytes(&p.b, 0, 4096));
}

/// Messages of every length around the inline limit arrive byte-exact, in order, many
/// times over the mailbox ring's depth (its slots come back through credit returns),
/// interleaved with writes whose completions share the one CQ.
#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn inline_and_staged_messages_round_trip() {
    let Some(c) = config() else { return };
    let window = Window {
        offset: 0,
        len: MIB,
    };
    let mut p = pair(&c, 2 * MIB, window);
    let inline = p.ea.max_inline();
    eprintln!("max inline data {inline}");
    assert!(inline <= MAX_MSG);
    let mut lens = vec![0, 1, 8, 72, 200, MAX_MSG - 1, MAX_MSG];
    for l in [inline.saturating_sub(1), inline, inline + 1] {
        if l <= MAX_MSG {
            lens.push(l);
        }
    }
    let rounds = 3 * p.eb.max_outstanding() / lens.len() + 1;
    fill(&p.a, 0, 4096, 0x11);
    let (mut sent, mut got, mut done) = (0u64, Vec::new(), 0usize);
    let mut want = Vec::new();
    let mut evs = Vec::new();
    for r in 0..rounds {
        for (k, &len) in lens.iter().enumerate() {
            let msg: Vec<u8> = (0..len)
                .map(|i| (i as u8) ^ (r as u8) ^ (k as u8))
                .collect();
            // A write before every third message: both kinds complete through one CQ.
            if k % 3 == 0 {
                loop {
                    match p.ea.post_write(0, 4096, 8192, 1_000_000 + sent) {
                        Ok(()) => break,
                        Err(Error::Full { .. }) => {
                            evs.clear();
                            p.ea.poll(&mut evs).unwrap();
                            done += evs
                                .iter()
                                .filter(|e| matches!(e, Event::Completed { .. }))
                                .count();
                        }
                        Err(e) => panic!("post_write: {e}"),
                    }
                }
                sent += 1;
            }
            loop {
                match p.ea.post_send(&msg, sent) {
                    Ok(()) => break,
                    Err(Error::Full { .. }) => {
                        evs.clear();
                        p.ea.poll(&mut evs).unwrap();
                        done += evs
                            .iter()
                            .filter(|e| matches!(e, Event::Completed { .. }))
                            .count();
                    }
                    Err(e) => panic!("post_send: {e}"),
                }
                // Keep the receiver draining so its ring slots come back.
                let mut rx = Vec::new();
                p.eb.poll(&mut rx).unwrap();
                got.extend(rx.iter().filter_map(message));
            }
            sent += 1;
            want.push(msg);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < want.len() || done < sent as usize {
        assert!(
            Instant::now() < deadline,
            "got {} of {} messages, {done} of {sent} completions",
            got.len(),
            want.len()
        );
        let mut rx = Vec::new();
        p.eb.poll(&mut rx).unwrap();
        got.extend(rx.iter().filter_map(message));
        evs.clear();
        p.ea.poll(&mut evs).unwrap();
        done += evs
            .iter()
            .filter(|e| matches!(e, Event::Completed { .. }))
            .count();
    }
    assert_eq!(got, want);
    assert_eq!(done, sent as usize);
    assert_eq!(bytes(&p.b, 8192, 4096), bytes(&p.a, 0, 4096));
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn write_imm_and_zero_length_operations() {
    let Some(c) = config() else { return };
    let window = Window {
        offset: 0,
        len: MIB,
    };
    let mut p = pair(&c, 2 * MIB, window);
    fill(&p.a, 4096, 8192, 0x11);
    p.ea.post_write_imm(4096, 8192, 12288, 0xdead_beef, 1)
        .unwrap();
    let mut evs = Vec::new();
    let (imm, len) = wait_for(&mut p.eb, &mut evs, |e| match e {
        Event::WriteImm { imm, len } => Some((*imm, *len)),
        _ => None,
    });
    assert_eq!((imm, len), (0xdead_beef, 8192));
    assert_eq!(bytes(&p.b, 12288, 8192), bytes(&p.a, 4096, 8192));
    // Zero-length write, write-with-immediate (at the very end of the window) and send.
    p.ea.post_write(0, 0, MIB, 2).unwrap();
    p.ea.post_write_imm(0, 0, MIB, 42, 3).unwrap();
    p.ea.post_send(&[], 4).unwrap();
    let mut evs = Vec::new();
    let (imm, len) = wait_for(&mut p.eb, &mut evs, |e| match e {
        Event::WriteImm { imm, len } => Some((*imm, *len)),
        _ => None,
    });
    assert_eq!((imm, len), (42, 0));
    assert_eq!(wait_for(&mut p.eb, &mut evs, message), Vec::<u8>::new());
    let mut done = Vec::new();
    for id in 1..=4 {
        wait_for(&mut p.ea, &mut done, completed(id));
    }
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn out_of_window_refused() {
    let Some(c) = config() else { return };
    let window = Window {
        offset: 4096,
        len: 8192,
    };
    let mut p = pair(&c, 64 * 1024, window);
    let e = p.ea.post_write(0, 4096, 8192 - 100, 1).unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfBounds {
                what: "remote window",
                ..
            }
        ),
        "{e}"
    );
    let e = p.ea.post_write(0, 16, usize::MAX - 4, 2).unwrap_err();
    assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
    let e = p.ea.post_write(64 * 1024 - 10, 20, 0, 3).unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfBounds {
                what: "local region",
                ..
            }
        ),
        "{e}"
    );
    let e = p.ea.post_write_imm(0, 8193, 0, 7, 4).unwrap_err();
    assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
    let e = p.ea.post_send(&[0u8; MAX_MSG + 1], 5).unwrap_err();
    assert!(matches!(e, Error::MessageTooLarge { .. }), "{e}");
    // Still usable; a write exactly filling the window lands.
    fill(&p.a, 0, 8192, 9);
    p.ea.post_write(0, 8192, 0, 6).unwrap();
    p.ea.post_send(b"x", 7).unwrap();
    let mut evs = Vec::new();
    assert_eq!(wait_for(&mut p.eb, &mut evs, message), b"x");
    assert_eq!(bytes(&p.b, 4096, 8192), bytes(&p.a, 0, 8192));
    assert!(bytes(&p.b, 0, 4096).iter().all(|&x| x == 0));
    assert!(bytes(&p.b, 4096 + 8192, 4096).iter().all(|&x| x == 0));
    drop(p);

    // A grant outside our region is refused before anything is registered or sent.
    let f = Verbs::open(&c, 64 * 1024).unwrap();
    let g = Verbs::open(&c, 64 * 1024).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::scope(|s| {
        let srv = s.spawn(|| {
            let ctl = Control::accept(&l, &c, 2, Verbs::KIND).expect("accept");
            f.establish(
                ctl,
                Window {
                    offset: 60 * 1024,
                    len: 8192,
                },
            )
        });
        let other = g.connect(
            &addr,
            &c,
            1,
            Window {
                offset: 0,
                len: 4096,
            },
        );
        let e = srv.join().unwrap().unwrap_err();
        assert!(
            matches!(
                e,
                Error::OutOfBounds {
                    what: "granted window",
                    ..
                }
            ),
            "{e}"
        );
        assert!(other.is_err(), "the peer must not get an endpoint");
    });
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn hostile_write_outside_window_breaks_connection() {
    let Some(c) = config() else { return };
    let mut p = pair(
        &c,
        64 * 1024,
        Window {
            offset: 0,
            len: 4096,
        },
    );
    // Bypass the sender-side check: the peer's NIC refuses the access.
    p.ea.test_post_write_unchecked(0, 4096, 8192, 99).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let e = loop {
        assert!(Instant::now() < deadline, "no error after 60 s");
        match p.ea.wait(&mut Vec::new(), Duration::from_secs(1)) {
            Ok(_) | Err(Error::Timeout { .. }) => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            e,
            Error::Verbs {
                op: "work completion",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("REM_ACCESS_ERR"), "{e}");
    assert!(e.to_string().contains("wr_id 99"), "{e}");
    // Broken afterwards.
    assert!(p.ea.post_send(b"x", 1).is_err());
    assert!(p.ea.poll(&mut Vec::new()).is_err());
    // Nothing landed outside the window.
    assert!(bytes(&p.b, 4096, 60 * 1024).iter().all(|&x| x == 0));
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn queue_full_and_each_wr_id_completes_once() {
    let Some(mut c) = config() else { return };
    c.queue_depth = 8;
    let mut p = pair(
        &c,
        64 * 1024,
        Window {
            offset: 0,
            len: 4096,
        },
    );
    assert_eq!(p.ea.max_outstanding(), 8);
    for i in 0..8 {
        p.ea.post_write(0, 64, 0, i).unwrap();
    }
    let e = p.ea.post_send(b"x", 100).unwrap_err();
    assert!(matches!(e, Error::Full { depth: 8 }), "{e}");
    let e = p.ea.post_write(0, 64, 0, 100).unwrap_err();
    assert!(matches!(e, Error::Full { depth: 8 }), "{e}");
    let mut done = Vec::new();
    for i in 0..8 {
        wait_for(&mut p.ea, &mut done, completed(i));
    }
    // Now 3 × depth messages; the receiver polls only when the sender is refused, so
    // the sender finds the peer's ring full (Error::Full) until credits come back.
    let mut sent = 0u64;
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut evs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < 24 {
        assert!(Instant::now() < deadline);
        match p.ea.post_send(&sent.to_le_bytes(), 1000 + sent) {
            Ok(()) => sent += 1,
            Err(Error::Full { .. }) => {
                let _ = p.ea.wait(&mut done, Duration::from_millis(100));
                // Only now does the receiver consume slots and return credits.
                p.eb.poll(&mut evs).unwrap();
                got.extend(evs.drain(..).filter_map(|e| message(&e)));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 24 {
        assert!(
            Instant::now() < deadline,
            "messages missing: got {}",
            got.len()
        );
        match p.eb.wait(&mut evs, Duration::from_secs(1)) {
            Ok(_) | Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        got.extend(evs.drain(..).filter_map(|e| message(&e)));
    }
    let want_msgs: Vec<Vec<u8>> = (0..24u64).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(got, want_msgs, "messages in order, none lost");
    let ids = |evs: &[Event]| {
        let mut v: Vec<u64> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Completed { wr_id } => Some(*wr_id),
                _ => None,
            })
            .collect();
        v.sort_unstable();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ids(&done).len() < 32 {
        assert!(
            Instant::now() < deadline,
            "completions missing: {:?}",
            ids(&done)
        );
        let _ = p.ea.wait(&mut done, Duration::from_secs(1));
    }
    let want: Vec<u64> = (0..8).chain(1000..1024).collect();
    assert_eq!(ids(&done), want);
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn dropped_peer_is_peer_lost() {
    let Some(c) = config() else { return };
    let Pair { a, mut ea, b, eb } = pair(
        &c,
        64 * 1024,
        Window {
            offset: 0,
            len: 4096,
        },
    );
    drop(eb);
    drop(b);
    let t = Instant::now();
    let e = loop {
        match ea.wait(&mut Vec::new(), Duration::from_secs(10)) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::PeerLost { peer: 2, .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(matches!(ea.post_send(b"x", 1), Err(Error::PeerLost { .. })));
    drop(a);
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn wrong_secret_refused() {
    let Some(good) = config() else { return };
    let mut bad = good.clone();
    bad.secret = b"not the secret".to_vec();
    let b = Verbs::open(&good, 64 * 1024).unwrap();
    let a = Verbs::open(&bad, 64 * 1024).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::scope(|s| {
        // The server would establish (and send a descriptor) only after a successful
        // handshake; it must never get that far.
        let srv = s.spawn(|| {
            Control::accept(&l, &good, 2, Verbs::KIND).map(|ctl| {
                b.establish(
                    ctl,
                    Window {
                        offset: 0,
                        len: 4096,
                    },
                )
            })
        });
        let e = a
            .connect(
                &addr,
                &bad,
                1,
                Window {
                    offset: 0,
                    len: 4096,
                },
            )
            .expect_err("must fail");
        assert!(matches!(e, Error::AuthFailed { .. }), "{e}");
        match srv.join().unwrap() {
            Err(Error::AuthFailed { .. }) => {}
            Err(e) => panic!("server: {e}"),
            Ok(_) => panic!("server got past the handshake"),
        }
    });
}

#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn unknown_device_lists_available_ones() {
    let Some(mut c) = config() else { return };
    let real = c.device.clone().unwrap_or_default();
    c.device = Some("no-such-dev0".into());
    let e = Verbs::open(&c, 4096).unwrap_err();
    let s = e.to_string();
    assert!(s.contains("no-such-dev0") && s.contains(&real), "{s}");
    // A GID index that does not exist is a configuration error.
    let mut c2 = c.clone();
    c2.device = Some(real);
    c2.gid_index = Some(100_000);
    let e = Verbs::open(&c2, 4096).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
}

/// A peer that writes malformed slots into our mailbox ring (too long, wrong sequence,
/// unknown kind) breaks our endpoint with a protocol error; nothing is delivered.
#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn hostile_mailbox_slot_is_protocol_error() {
    let Some(c) = config() else { return };
    // The slot layout of verbs.rs: payload space, then
    // seq (u64) | imm (u32) | len (u32) | kind (u32) | 3 reserved | valid (u8).
    let slot = MAX_MSG + 24;
    for (seq, len, kind, what) in [
        (1u64, MAX_MSG as u32 + 1, 1u32, "exceeds"),
        (7, 2, 1, "sequence"),
        (1, 0, 9, "kind"),
        (1, 8192, 2, "window"),
    ] {
        let mut p = pair(
            &c,
            64 * 1024,
            Window {
                offset: 0,
                len: 4096,
            },
        );
        p.ea.post_send(b"ok", 1).unwrap();
        let mut evs = Vec::new();
        assert_eq!(wait_for(&mut p.eb, &mut evs, message), b"ok");
        let mut img = vec![0u8; slot];
        img[MAX_MSG..MAX_MSG + 8].copy_from_slice(&seq.to_le_bytes());
        img[MAX_MSG + 12..MAX_MSG + 16].copy_from_slice(&len.to_le_bytes());
        img[MAX_MSG + 16..MAX_MSG + 20].copy_from_slice(&kind.to_le_bytes());
        img[slot - 1] = 1; // valid byte of lap 0
        p.ea.test_post_mailbox_raw(slot, &img, 2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let e = loop {
            assert!(Instant::now() < deadline, "no error after 60 s ({what})");
            let mut evs = Vec::new();
            match p.eb.wait(&mut evs, Duration::from_secs(1)) {
                Ok(_) => assert!(
                    !evs.iter()
                        .any(|e| matches!(e, Event::Message(_) | Event::WriteImm { .. })),
                    "delivered {evs:?} ({what})"
                ),
                Err(Error::Timeout { .. }) => {}
                Err(e) => break e,
            }
        };
        assert!(matches!(e, Error::Protocol { peer: 1, .. }), "{e}");
        assert!(e.to_string().contains(what), "{e}");
        assert!(p.eb.poll(&mut Vec::new()).is_err(), "broken afterwards");
    }
}

/// More messages than the peer's ring has slots, with the receiver polling only when
/// the sender is refused: `Error::Full` until the receiver returns its head, then on;
/// every message arrives once, in order.
#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn mailbox_credits_flow_back() {
    let Some(mut c) = config() else { return };
    c.queue_depth = 4;
    let mut p = pair(
        &c,
        64 * 1024,
        Window {
            offset: 0,
            len: 4096,
        },
    );
    let (mut sent, mut fulls) = (0u64, 0);
    let mut got = Vec::new();
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent < 100 {
        assert!(Instant::now() < deadline, "sent {sent}, {fulls} refusals");
        match p.ea.post_send(&sent.to_le_bytes(), sent) {
            Ok(()) => sent += 1,
            Err(Error::Full { .. }) => {
                fulls += 1;
                p.ea.poll(&mut done).unwrap();
                let mut evs = Vec::new();
                p.eb.poll(&mut evs).unwrap();
                got.extend(evs.iter().filter_map(message));
            }
            Err(e) => panic!("{e}"),
        }
    }
    while got.len() < 100 {
        assert!(Instant::now() < deadline, "got {}", got.len());
        let mut evs = Vec::new();
        let _ = p.eb.wait(&mut evs, Duration::from_millis(100));
        got.extend(evs.iter().filter_map(message));
    }
    let want: Vec<Vec<u8>> = (0..100u64).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(got, want);
    assert!(
        fulls > 0,
        "a 4-slot ring must have refused some of 100 messages"
    );
}
