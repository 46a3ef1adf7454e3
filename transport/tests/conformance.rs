//! The transport conformance suite: the same cases, unchanged, against every backend.
//!
//! shm and tcp run everywhere. verbs needs an RDMA device named by `SMRDB_VERBS_DEVICE`
//! (CI runs it inside the Soft-RoCE micro-VM, `soft-roce-setup/vm.sh`); without one the
//! verbs cases print why and pass as skipped, unless `SMRDB_REQUIRE_VERBS=1`, which
//! turns a missing device into a failure so the VM run can never skip silently.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use smrdb_transport::shm::Shm;
use smrdb_transport::tcp::Tcp;
use smrdb_transport::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, Window, MAX_MSG,
};

const MIB: usize = 1 << 20;
const SECRET: &[u8] = b"conformance secret";

fn cfg(kind: FabricKind) -> FabricConfig {
    let mut c = FabricConfig::new(kind, SECRET.to_vec());
    c.connect_timeout = Duration::from_secs(20);
    c
}

/// Two fabrics of kind `F` in this process, connected: (a, a's endpoint to b, b, b's
/// endpoint to a). Each grants the other `window` of its region.
struct Pair<F: Fabric> {
    a: F,
    ea: F::Endpoint,
    b: F,
    eb: F::Endpoint,
}

fn pair<F: Fabric>(region: usize, window: Window) -> Pair<F> {
    let c = cfg(F::KIND);
    let a = F::open(&c, region).expect("open fabric a");
    let b = F::open(&c, region).expect("open fabric b");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (ea, eb) = std::thread::scope(|s| {
        let srv = s.spawn(|| {
            let ctl = Control::accept(&l, &c, 2, F::KIND).expect("accept");
            b.establish(ctl, window).expect("establish b")
        });
        let ea = a.connect(&addr, &c, 1, window).expect("connect a");
        (ea, srv.join().unwrap())
    });
    assert_eq!(ea.peer(), 2);
    assert_eq!(eb.peer(), 1);
    assert_eq!(ea.remote_len(), window.len);
    Pair { a, ea, b, eb }
}

fn fill<F: Fabric>(f: &F, off: usize, len: usize, seed: u8) {
    // SAFETY: nothing is in flight over this range while the test fills it.
    let buf = unsafe { f.region().bytes_mut(off, len).unwrap() };
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed | 1;
    }
}

fn bytes<F: Fabric>(f: &F, off: usize, len: usize) -> Vec<u8> {
    // SAFETY: the test reads only ranges whose writes have been signalled.
    unsafe { f.region().bytes(off, len).unwrap().to_vec() }
}

/// Posts, polling for completions and retrying while the queue is full.
fn post_retry<E: Endpoint>(
    ep: &mut E,
    done: &mut Vec<Event>,
    mut post: impl FnMut(&mut E) -> Result<(), Error>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match post(ep) {
            Ok(()) => return,
            Err(Error::Full { .. }) => {
                assert!(Instant::now() < deadline, "queue stayed full for 60 s");
                ep.poll(done).unwrap();
            }
            Err(e) => panic!("post failed: {e}"),
        }
    }
}

/// Messages not yet consumed by a test, per endpoint (a `wait` may return several).
#[derive(Default)]
struct Inbox {
    msgs: std::collections::VecDeque<Vec<u8>>,
}

impl Inbox {
    /// The next message on `ep`, waiting up to 60 s.
    fn next<E: Endpoint>(&mut self, ep: &mut E) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut evs = Vec::new();
        while self.msgs.is_empty() {
            assert!(Instant::now() < deadline, "no message within 60 s");
            evs.clear();
            match ep.wait(&mut evs, Duration::from_secs(1)) {
                Ok(_) | Err(Error::Timeout { .. }) => {}
                Err(e) => panic!("wait for message: {e}"),
            }
            self.msgs.extend(evs.iter().filter_map(|e| match e {
                Event::Message(m) => Some(m.as_bytes().to_vec()),
                _ => None,
            }));
        }
        self.msgs.pop_front().unwrap()
    }
}

fn next_msg<E: Endpoint>(ep: &mut E, inbox: &mut Inbox) -> Vec<u8> {
    inbox.next(ep)
}

fn completions(evs: &[Event]) -> Vec<u64> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Completed { wr_id } => Some(*wr_id),
            _ => None,
        })
        .collect()
}

fn drain_completions<E: Endpoint>(ep: &mut E, want: usize, evs: &mut Vec<Event>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while completions(evs).len() < want {
        assert!(Instant::now() < deadline, "completions missing after 60 s");
        let _ = ep.wait(evs, Duration::from_secs(1));
    }
}

/// Writes of sizes 0, 1, 4095, 4096, 1 MiB and 64 MiB land byte-exact at the named
/// remote offset, and nothing around them changes.
fn writes_land_byte_exact<F: Fabric>() {
    let window = Window {
        offset: 16 * 4096,
        len: 70 * MIB,
    };
    let mut p = pair::<F>(80 * MIB, window);
    let mut evs = Vec::new();
    for (i, &size) in [0usize, 1, 4095, 4096, MIB, 64 * MIB].iter().enumerate() {
        let src = if size >= 64 * MIB { 0 } else { 7 + i };
        let dst = if size >= 64 * MIB {
            4096
        } else {
            3 * MIB + 13 * i
        };
        fill(&p.a, src, size.max(1), i as u8);
        // SAFETY: nothing is in flight into b's window between iterations.
        unsafe {
            p.b.region()
                .bytes_mut(window.offset, window.len)
                .unwrap()
                .fill(0)
        };
        p.ea.post_write(src, size, dst, 100 + i as u64).unwrap();
        post_retry(&mut p.ea, &mut evs, |e| {
            e.post_send(&(i as u32).to_le_bytes(), 200 + i as u64)
        });
        let m = next_msg(&mut p.eb, &mut Inbox::default());
        assert_eq!(m, (i as u32).to_le_bytes());
        assert_eq!(
            bytes(&p.b, window.offset + dst, size),
            bytes(&p.a, src, size),
            "size {size}: bytes differ"
        );
        // Bytes just outside the written range are untouched.
        let before = bytes(&p.b, window.offset + dst - 1, 1);
        let after = bytes(&p.b, window.offset + dst + size, 1);
        assert_eq!(
            (before[0], after[0]),
            (0, 0),
            "size {size}: wrote outside its range"
        );
        drain_completions(&mut p.ea, 2 * (i + 1), &mut evs);
    }
    let mut ids = completions(&evs);
    ids.sort_unstable();
    assert_eq!(
        ids,
        vec![100, 101, 102, 103, 104, 105, 200, 201, 202, 203, 204, 205]
    );
}

/// A message posted after a write is never observed before the written bytes: each
/// round writes a distinct stamp to a distinct place, then sends the round number; the
/// receiver checks the stamp the moment it sees the message.
fn message_never_overtakes_write<F: Fabric>() {
    let chunk = 64 * 1024;
    let rounds = 200usize;
    let window = Window {
        offset: 0,
        len: rounds * chunk,
    };
    let mut p = pair::<F>(rounds * chunk, window);
    let mut evs = Vec::new();
    std::thread::scope(|s| {
        let Pair { a, ea, b, eb } = &mut p;
        let recv = s.spawn(move || {
            let mut inbox = Inbox::default();
            for r in 0..rounds {
                let m = next_msg(eb, &mut inbox);
                let r_got = u32::from_le_bytes(m[..4].try_into().unwrap()) as usize;
                assert_eq!(r_got, r, "messages arrive in order");
                let got = bytes(b, r * chunk, chunk);
                assert!(
                    got.iter().all(|&x| x == (r as u8) | 1),
                    "round {r}: message seen before its bytes"
                );
            }
        });
        for r in 0..rounds {
            // SAFETY: this chunk is not in flight (each round uses its own).
            unsafe {
                a.region()
                    .bytes_mut(r * chunk, chunk)
                    .unwrap()
                    .fill((r as u8) | 1)
            };
            post_retry(ea, &mut evs, |e| {
                e.post_write(r * chunk, chunk, r * chunk, r as u64)
            });
            post_retry(ea, &mut evs, |e| {
                e.post_send(&(r as u32).to_le_bytes(), u64::MAX - r as u64)
            });
        }
        recv.join().unwrap();
        drain_completions(ea, 2 * rounds, &mut evs);
    });
}

/// Many operations outstanding at once: more posts than the queue holds, every one
/// completes exactly once, messages keep their order.
fn many_outstanding<F: Fabric>() {
    let window = Window {
        offset: 0,
        len: MIB,
    };
    let mut p = pair::<F>(MIB, window);
    let n = 4 * p.ea.max_outstanding().min(1024) + 3;
    let mut evs = Vec::new();
    fill(&p.a, 0, 4096, 9);
    std::thread::scope(|s| {
        let Pair { ea, eb, .. } = &mut p;
        let recv = s.spawn(move || {
            let mut inbox = Inbox::default();
            for i in 0..n {
                let m = next_msg(eb, &mut inbox);
                assert_eq!(m, (i as u64).to_le_bytes(), "message {i} out of order");
            }
        });
        for i in 0..n {
            let off = (i % 256) * 4096;
            post_retry(ea, &mut evs, |e| e.post_write(0, 4096, off, 2 * i as u64));
            post_retry(ea, &mut evs, |e| {
                e.post_send(&(i as u64).to_le_bytes(), 2 * i as u64 + 1)
            });
        }
        recv.join().unwrap();
        drain_completions(ea, 2 * n, &mut evs);
    });
    let mut ids = completions(&evs);
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..2 * n as u64).collect::<Vec<_>>(),
        "each wr_id completes exactly once"
    );
}

/// Out-of-range writes are refused before anything is sent, and the endpoint keeps
/// working afterwards.
fn out_of_range_rejected<F: Fabric>() {
    let window = Window {
        offset: 4096,
        len: 8192,
    };
    let mut p = pair::<F>(64 * 1024, window);
    // Expect: remote range past the window end -> OutOfBounds.
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
    // Expect: offset overflow -> OutOfBounds, not a wrap-around.
    let e = p.ea.post_write(0, 16, usize::MAX - 4, 2).unwrap_err();
    assert!(matches!(e, Error::OutOfBounds { .. }), "{e}");
    // Expect: local range past our region -> OutOfBounds.
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
    // Expect: oversized message -> MessageTooLarge.
    let e = p.ea.post_send(&[0u8; MAX_MSG + 1], 5).unwrap_err();
    assert!(matches!(e, Error::MessageTooLarge { .. }), "{e}");
    // Expect: the peer saw nothing, the endpoint still works, and a write exactly
    // filling the window is fine.
    let mut evs = Vec::new();
    assert!(matches!(
        p.eb.wait(&mut evs, Duration::from_millis(200)),
        Err(Error::Timeout { .. })
    ));
    assert!(
        evs.is_empty(),
        "refused operations must not reach the peer: {evs:?}"
    );
    fill(&p.a, 0, 8192, 3);
    p.ea.post_write(0, 8192, 0, 6).unwrap();
    p.ea.post_send(&[], 7).unwrap();
    assert_eq!(next_msg(&mut p.eb, &mut Inbox::default()), Vec::<u8>::new());
    assert_eq!(bytes(&p.b, 4096, 8192), bytes(&p.a, 0, 8192));
    // The bytes before and after the window were never written.
    assert!(bytes(&p.b, 0, 4096).iter().all(|&x| x == 0));
    assert!(bytes(&p.b, 4096 + 8192, 4096).iter().all(|&x| x == 0));
}

/// Write with immediate: the receiver gets the immediate after the bytes.
fn write_imm_delivers_after_bytes<F: Fabric>() {
    let window = Window {
        offset: 0,
        len: 4 * MIB,
    };
    let mut p = pair::<F>(4 * MIB, window);
    for (i, size) in [1usize, 4096, MIB].into_iter().enumerate() {
        fill(&p.a, 0, size, 40 + i as u8);
        p.ea.post_write_imm(0, size, MIB, 0xdead_0000 + i as u32, i as u64)
            .unwrap();
        let mut evs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let (imm, len) = loop {
            let _ = p.eb.wait(&mut evs, Duration::from_secs(1));
            if let Some((imm, len)) = evs.iter().find_map(|e| match e {
                Event::WriteImm { imm, len } => Some((*imm, *len)),
                _ => None,
            }) {
                break (imm, len);
            }
            assert!(Instant::now() < deadline, "no WriteImm");
        };
        assert_eq!((imm, len as usize), (0xdead_0000 + i as u32, size));
        assert_eq!(bytes(&p.b, MIB, size), bytes(&p.a, 0, size));
    }
}

/// Messages of 0, 1 and MAX_MSG bytes arrive intact, both directions.
fn messages_both_directions<F: Fabric>() {
    let mut p = pair::<F>(
        64 * 1024,
        Window {
            offset: 0,
            len: 4096,
        },
    );
    for (i, len) in [0usize, 1, MAX_MSG].into_iter().enumerate() {
        let msg: Vec<u8> = (0..len).map(|j| (j * 7 + i) as u8).collect();
        p.ea.post_send(&msg, i as u64).unwrap();
        assert_eq!(next_msg(&mut p.eb, &mut Inbox::default()), msg);
        p.eb.post_send(&msg, i as u64).unwrap();
        assert_eq!(next_msg(&mut p.ea, &mut Inbox::default()), msg);
    }
}

/// `wait` gives up after its timeout when nothing happens.
fn wait_times_out<F: Fabric>() {
    let mut p = pair::<F>(
        64 * 1024,
        Window {
            offset: 0,
            len: 4096,
        },
    );
    let t = Instant::now();
    let e =
        p.eb.wait(&mut Vec::new(), Duration::from_millis(300))
            .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(t.elapsed() < Duration::from_secs(10));
}

/// A peer that goes away (its endpoint and fabric dropped) turns into PeerLost within
/// a few seconds, never a hang, and posting afterwards fails too.
fn dropped_peer_is_an_error<F: Fabric>() {
    let Pair { a, mut ea, b, eb } = pair::<F>(
        64 * 1024,
        Window {
            offset: 0,
            len: 4096,
        },
    );
    drop(eb);
    drop(b);
    let t = Instant::now();
    let mut evs = Vec::new();
    let e = loop {
        match ea.wait(&mut evs, Duration::from_secs(5)) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(matches!(e, Error::PeerLost { peer: 2, .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    drop(a);
}

/// A peer *process* killed with SIGKILL turns into PeerLost within a few seconds.
fn killed_peer_process_is_an_error<F: Fabric>(name: &str) {
    let c = cfg(F::KIND);
    let a = F::open(&c, 64 * 1024).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_peer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("SMRDB_CHILD_ADDR", &addr)
        .env("SMRDB_CHILD_FABRIC", name)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ctl = Control::accept(&l, &c, 1, F::KIND).expect("child connects");
    let mut ea = a
        .establish(
            ctl,
            Window {
                offset: 0,
                len: 4096,
            },
        )
        .unwrap();
    let m = next_msg(&mut ea, &mut Inbox::default());
    assert_eq!(m, b"ready");
    child.kill().unwrap(); // SIGKILL
    let t = Instant::now();
    let e = loop {
        match ea.wait(&mut Vec::new(), Duration::from_secs(5)) {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    let _ = child.wait();
    assert!(matches!(e, Error::PeerLost { peer: 2, .. }), "{e}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    // Expect: a post after the loss fails instead of hanging.
    assert!(ea.post_send(b"x", 1).is_err() || ea.poll(&mut Vec::new()).is_err());
}

fn run_child<F: Fabric>(addr: &str) {
    let c = cfg(F::KIND);
    let f = F::open(&c, 64 * 1024).unwrap();
    let mut ep = f
        .connect(
            addr,
            &c,
            2,
            Window {
                offset: 0,
                len: 4096,
            },
        )
        .unwrap();
    ep.post_send(b"ready", 1).unwrap();
    loop {
        let _ = ep.poll(&mut Vec::new());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Entry point of the child process of `killed_peer_process_is_an_error`.
#[test]
#[ignore = "child process of the kill test"]
fn child_peer() {
    let Ok(addr) = std::env::var("SMRDB_CHILD_ADDR") else {
        return;
    };
    match std::env::var("SMRDB_CHILD_FABRIC").as_deref() {
        Ok("shm") => run_child::<Shm>(&addr),
        Ok("tcp") => run_child::<Tcp>(&addr),
        #[cfg(feature = "verbs")]
        Ok("verbs") => run_child::<smrdb_transport::verbs::Verbs>(&addr),
        other => panic!("unknown child fabric {other:?}"),
    }
}

/// A peer with the wrong secret is refused with a clear error and gets no descriptor.
fn wrong_secret_refused<F: Fabric>() {
    let good = cfg(F::KIND);
    let mut bad = cfg(F::KIND);
    bad.secret = b"not the secret".to_vec();
    let b = F::open(&good, 64 * 1024).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::scope(|s| {
        let srv = s.spawn(|| Control::accept(&l, &good, 2, F::KIND));
        let a = F::open(&bad, 64 * 1024).unwrap();
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
            .err()
            .expect("must fail");
        assert!(matches!(e, Error::AuthFailed { .. }), "{e}");
        assert!(e.to_string().contains("secret"), "{e}");
        assert!(matches!(srv.join().unwrap(), Err(Error::AuthFailed { .. })));
    });
    drop(b);
}

fn verbs_available() -> bool {
    if cfg!(not(feature = "verbs")) {
        assert!(
            std::env::var("SMRDB_REQUIRE_VERBS").as_deref() != Ok("1"),
            "SMRDB_REQUIRE_VERBS=1 but built without the verbs feature"
        );
        eprintln!("skipped: built without the verbs feature");
        return false;
    }
    match std::env::var("SMRDB_VERBS_DEVICE") {
        Ok(d) if !d.is_empty() => true,
        _ => {
            assert!(
                std::env::var("SMRDB_REQUIRE_VERBS").as_deref() != Ok("1"),
                "SMRDB_REQUIRE_VERBS=1 but SMRDB_VERBS_DEVICE is not set"
            );
            eprintln!(
                "skipped: no RDMA device (set SMRDB_VERBS_DEVICE, or run under soft-roce-setup/vm.sh)"
            );
            false
        }
    }
}

macro_rules! suite {
    ($m:ident, $F:ty, $name:literal, $avail:expr $(, #[$attr:meta])*) => {
        mod $m {
            use super::*;
            #[test]
            $(#[$attr])*
            fn writes_land_byte_exact() {
                if $avail {
                    super::writes_land_byte_exact::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn message_never_overtakes_write() {
                if $avail {
                    super::message_never_overtakes_write::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn many_outstanding() {
                if $avail {
                    super::many_outstanding::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn out_of_range_rejected() {
                if $avail {
                    super::out_of_range_rejected::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn write_imm_delivers_after_bytes() {
                if $avail {
                    super::write_imm_delivers_after_bytes::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn messages_both_directions() {
                if $avail {
                    super::messages_both_directions::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn wait_times_out() {
                if $avail {
                    super::wait_times_out::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn dropped_peer_is_an_error() {
                if $avail {
                    super::dropped_peer_is_an_error::<$F>()
                }
            }
            #[test]
            $(#[$attr])*
            fn killed_peer_process_is_an_error() {
                if $avail {
                    super::killed_peer_process_is_an_error::<$F>($name)
                }
            }
            #[test]
            $(#[$attr])*
            fn wrong_secret_refused() {
                if $avail {
                    super::wrong_secret_refused::<$F>()
                }
            }
        }
    };
}

suite!(shm, Shm, "shm", true);
suite!(tcp, Tcp, "tcp", true);
#[cfg(feature = "verbs")]
suite!(
    verbs,
    smrdb_transport::verbs::Verbs,
    "verbs",
    verbs_available()
);
#[cfg(not(feature = "verbs"))]
#[test]
fn verbs_suite_needs_the_feature() {
    let _ = verbs_available();
}
