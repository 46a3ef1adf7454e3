//! Hostile peers on the software fabrics: crafted frames and mailbox slots. Each case
//! says what must happen.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use smrdb_transport::shm::Shm;
use smrdb_transport::tcp::{FrameHeader, Tcp};
use smrdb_transport::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, Window, WIRE_VERSION,
};

fn pair<F: Fabric>(window: Window) -> (F, F::Endpoint, F, F::Endpoint) {
    let c = FabricConfig::new(F::KIND, b"k".to_vec());
    let a = F::open(&c, 1 << 20).unwrap();
    let b = F::open(&c, 1 << 20).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (ea, eb) = std::thread::scope(|s| {
        let srv = s.spawn(|| {
            b.establish(Control::accept(&l, &c, 2, F::KIND).unwrap(), window)
                .unwrap()
        });
        let ea = a.connect(&addr, &c, 1, window).unwrap();
        (ea, srv.join().unwrap())
    });
    (a, ea, b, eb)
}

/// Polls until an error or 5 s; returns the error and the events seen before it.
fn until_error<E: Endpoint>(ep: &mut E) -> (Error, Vec<Event>) {
    let t = Instant::now();
    let mut evs = Vec::new();
    loop {
        match ep.wait(&mut evs, Duration::from_millis(100)) {
            Ok(_) | Err(Error::Timeout { .. }) => {}
            Err(e) => return (e, evs),
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no error within 5 s; events {evs:?}"
        );
    }
}

fn hdr(kind: u8, offset: u64, len: u64) -> FrameHeader {
    FrameHeader {
        version: WIRE_VERSION,
        kind,
        imm: 0,
        offset,
        len,
    }
}

#[test]
fn tcp_write_outside_window_breaks_connection_both_sides() {
    // Expect: the receiver refuses without touching memory past its window, reports a
    // protocol violation, and the sender gets RemoteAccess (the RDMA remote access
    // error analogue).
    let win = Window {
        offset: 4096,
        len: 4096,
    };
    let (a, mut ea, b, mut eb) = pair::<Tcp>(win);
    ea.test_raw_frame(hdr(1, 4000, 200), &[0xee; 200]).unwrap();
    let (e, _) = until_error(&mut eb);
    assert!(matches!(e, Error::Protocol { peer: 1, .. }), "{e}");
    let (e, _) = until_error(&mut ea);
    assert!(matches!(e, Error::RemoteAccess { peer: 2, .. }), "{e}");
    // SAFETY: the connection is dead; nothing writes into b's region any more.
    let after = unsafe { b.region().bytes(win.offset + win.len, 256).unwrap() };
    assert!(
        after.iter().all(|&x| x == 0),
        "bytes past the window were written"
    );
    drop(a);
}

#[test]
fn tcp_crafted_headers_are_refused() {
    // Each case: (header, what the receiver must say). The receiver reports a
    // protocol error naming the problem and never panics.
    let cases: Vec<(FrameHeader, &str)> = vec![
        (
            FrameHeader {
                version: WIRE_VERSION + 1,
                ..hdr(3, 0, 1)
            },
            "wire version",
        ),
        (hdr(99, 0, 0), "unknown frame kind"),
        (hdr(3, 0, 100_000), "exceeds"),
        (hdr(1, u64::MAX - 1, 16), "outside"),
        (hdr(1, 0, u64::MAX), "outside"),
    ];
    for (h, want) in cases {
        let (_a, mut ea, _b, mut eb) = pair::<Tcp>(Window {
            offset: 0,
            len: 4096,
        });
        ea.test_raw_frame(h, &[]).unwrap();
        let (e, evs) = until_error(&mut eb);
        assert!(
            evs.iter().all(|e| matches!(e, Event::Completed { .. })),
            "{evs:?}"
        );
        assert!(matches!(e, Error::Protocol { .. }), "{h:?}: {e}");
        assert!(e.to_string().contains(want), "{h:?}: {e}");
    }
}

#[test]
fn shm_scribbled_mailbox_is_refused() {
    // Expect: a tail that runs ahead of the ring, or a slot with a bad kind or length,
    // is a protocol error on the receiver; no event is made up from it.
    let (_a, _ea, _b, eb) = pair::<Shm>(Window {
        offset: 0,
        len: 4096,
    });
    let mut eb = eb;
    eb.test_scribble_inbox_tail(1 << 40);
    let (e, evs) = until_error(&mut eb);
    assert!(evs.is_empty());
    assert!(
        matches!(e, Error::Protocol { .. }) && e.to_string().contains("impossible"),
        "{e}"
    );

    for (kind, len) in [(7u32, 1u32), (1, 100_000)] {
        let (_a, _ea, _b, mut eb) = pair::<Shm>(Window {
            offset: 0,
            len: 4096,
        });
        eb.test_scribble_inbox_slot(kind, len);
        let (e, evs) = until_error(&mut eb);
        assert!(evs.is_empty(), "{evs:?}");
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
    }
}

#[test]
fn shm_window_must_be_page_aligned() {
    let c = FabricConfig::new(smrdb_transport::FabricKind::Shm, b"k".to_vec());
    let a = Shm::open(&c, 1 << 20).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let b = Shm::open(&c, 1 << 20).unwrap();
    std::thread::scope(|s| {
        let srv = s.spawn(|| {
            Control::accept(&l, &c, 2, Shm::KIND).map(|ctl| {
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
                &c,
                1,
                Window {
                    offset: 100,
                    len: 4096,
                },
            )
            .err()
            .expect("unaligned grant refused");
        assert!(matches!(e, Error::Config(_)), "{e}");
        let _ = srv.join();
    });
}
