//! The fault-injecting wrapper does what its plan says, on every software fabric.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use smrdb_transport::fault::{FaultPlan, Faulty};
use smrdb_transport::shm::Shm;
use smrdb_transport::tcp::Tcp;
use smrdb_transport::{Control, Endpoint, Error, Event, Fabric, FabricConfig, Window};

/// a (faulty, per `plan`) connected to b (plain).
fn pair<F: Fabric>(
    plan: FaultPlan,
) -> (Faulty<F>, <Faulty<F> as Fabric>::Endpoint, F, F::Endpoint) {
    let mut c = FabricConfig::new(F::KIND, b"k".to_vec());
    let b = F::open(&c, 1 << 20).unwrap();
    c.faults = Some(plan);
    let a = Faulty::<F>::open(&c, 1 << 20).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let w = Window {
        offset: 0,
        len: 1 << 20,
    };
    let (ea, eb) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            b.establish(Control::accept(&l, &c, 2, F::KIND).unwrap(), w)
                .unwrap()
        });
        (a.connect(&addr, &c, 1, w).unwrap(), h.join().unwrap())
    });
    (a, ea, b, eb)
}

fn messages<E: Endpoint>(ep: &mut E, within: Duration) -> Vec<Vec<u8>> {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut evs = Vec::new();
    while t.elapsed() < within {
        evs.clear();
        let _ = ep.wait(&mut evs, Duration::from_millis(20));
        got.extend(evs.iter().filter_map(|e| match e {
            Event::Message(m) => Some(m.as_bytes().to_vec()),
            _ => None,
        }));
    }
    got
}

fn drops_every_message<F: Fabric>() {
    let (_a, mut ea, _b, mut eb) = pair::<F>(FaultPlan {
        drop_messages: 1.0,
        ..FaultPlan::default()
    });
    for i in 0..10u8 {
        ea.post_send(&[i], u64::from(i)).unwrap();
    }
    let mut evs = Vec::new();
    ea.poll(&mut evs).unwrap();
    assert_eq!(
        evs.iter()
            .filter(|e| matches!(e, Event::Completed { .. }))
            .count(),
        10,
        "the sender sees them complete"
    );
    assert!(
        messages(&mut eb, Duration::from_millis(300)).is_empty(),
        "the peer gets none"
    );
}

fn drops_a_fraction_deterministically<F: Fabric>() {
    let plan = FaultPlan {
        drop_messages: 0.5,
        seed: 42,
        ..FaultPlan::default()
    };
    let mut counts = Vec::new();
    for _ in 0..2 {
        let (_a, mut ea, _b, mut eb) = pair::<F>(plan.clone());
        for i in 0..200u8 {
            ea.post_send(&[i], 0).unwrap();
            let _ = ea.poll(&mut Vec::new());
        }
        counts.push(messages(&mut eb, Duration::from_millis(500)));
    }
    let n = counts[0].len();
    assert!((60..140).contains(&n), "about half of 200 arrive, got {n}");
    assert_eq!(
        counts[0], counts[1],
        "the same seed drops the same messages"
    );
}

fn delays_keep_order<F: Fabric>() {
    let (a, mut ea, b, mut eb) = pair::<F>(FaultPlan {
        delay: Duration::from_millis(200),
        ..FaultPlan::default()
    });
    // SAFETY: nothing in flight over this range yet.
    unsafe { a.region().bytes_mut(0, 4096).unwrap().fill(9) };
    let t = Instant::now();
    ea.post_write(0, 4096, 0, 1).unwrap();
    ea.post_send(b"after", 2).unwrap();
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(5));
        let _ = ea.poll(&mut Vec::new()); // the sender's poll releases held operations
        got = messages(&mut eb, Duration::from_millis(10));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "delivered after {:?}",
        t.elapsed()
    );
    assert_eq!(got, vec![b"after".to_vec()]);
    // SAFETY: the write was followed by the message we just saw.
    assert!(unsafe { b.region().bytes(0, 4096).unwrap() }
        .iter()
        .all(|&x| x == 9));
}

fn fails_after_n_operations<F: Fabric>() {
    let (_a, mut ea, _b, _eb) = pair::<F>(FaultPlan {
        fail_after_ops: Some(3),
        ..FaultPlan::default()
    });
    ea.post_send(b"1", 1).unwrap();
    ea.post_write(0, 10, 0, 2).unwrap();
    ea.post_send(b"3", 3).unwrap();
    let e = ea.post_send(b"4", 4).unwrap_err();
    assert!(matches!(e, Error::PeerLost { peer: 2, .. }), "{e}");
    assert!(e.to_string().contains("injected"), "{e}");
}

macro_rules! suite {
    ($m:ident, $F:ty) => {
        mod $m {
            #[test]
            fn drops_every_message() {
                super::drops_every_message::<$F>()
            }
            #[test]
            fn drops_a_fraction_deterministically() {
                super::drops_a_fraction_deterministically::<$F>()
            }
            #[test]
            fn delays_keep_order() {
                super::delays_keep_order::<$F>()
            }
            #[test]
            fn fails_after_n_operations() {
                super::fails_after_n_operations::<$F>()
            }
        }
    };
}
suite!(shm, super::Shm);
suite!(tcp, super::Tcp);
