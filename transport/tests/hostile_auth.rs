//! Hostile peers against the authenticated bootstrap (issue 7, "hostile peers"): the
//! wrong secret, a byte-exact replay of a recorded good handshake (either side), wrong
//! wire versions, a reflected proof, steps out of order, malformed fields and garbage
//! of many lengths. Each case says what must happen: the victim refuses with an error
//! naming the problem (and, where the protocol allows, tells the peer why), never hands
//! out a region descriptor, and keeps serving: the next well-behaved peer on the same
//! listener authenticates, establishes the fabric and exchanges messages.
//!
//! Runs on shm and tcp (the bootstrap is the same TCP control connection for every
//! fabric; the fabric-level cases establish real endpoints afterwards).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smrdb_transport::shm::Shm;
use smrdb_transport::tcp::Tcp;
use smrdb_transport::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, Window, WIRE_VERSION,
};

const SECRET: &[u8] = b"hostile auth secret";
const WIN: Window = Window {
    offset: 0,
    len: 64 * 1024,
};

fn cfg(kind: FabricKind) -> FabricConfig {
    let mut c = FabricConfig::new(kind, SECRET.to_vec());
    c.connect_timeout = Duration::from_secs(5);
    c
}

/// A deterministic generator (xorshift64*), so failures reproduce.
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

/// The victim: node 1 on `listener`, accepting `n` connections one after the other.
/// A connection that authenticates gets a fabric endpoint, echoes one message back and
/// is reported as `Ok(peer)`; a refused one as the error.
fn victim<F: Fabric>(
    listener: TcpListener,
    n: usize,
) -> std::thread::JoinHandle<Vec<Result<u32, Error>>> {
    std::thread::spawn(move || {
        let c = cfg(F::KIND);
        let fabric = F::open(&c, 1 << 20).unwrap();
        (0..n)
            .map(|_| {
                let ctl = Control::accept(&listener, &c, 1, F::KIND)?;
                let peer = ctl.peer();
                let mut ep = fabric.establish(ctl, WIN)?;
                let m = wait_message(&mut ep);
                ep.post_send(&m, 1)?;
                // Let the reply go out before the endpoint closes.
                let t = Instant::now();
                let mut evs = Vec::new();
                while t.elapsed() < Duration::from_secs(5)
                    && !evs
                        .iter()
                        .any(|e| matches!(e, Event::Completed { wr_id: 1 }))
                {
                    let _ = ep.wait(&mut evs, Duration::from_millis(50));
                }
                std::thread::sleep(Duration::from_millis(50));
                Ok(peer)
            })
            .collect()
    })
}

fn wait_message<E: Endpoint>(ep: &mut E) -> Vec<u8> {
    let t = Instant::now();
    let mut evs = Vec::new();
    loop {
        match ep.wait(&mut evs, Duration::from_millis(100)) {
            Ok(_) | Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("endpoint failed: {e}"),
        }
        for e in evs.drain(..) {
            if let Event::Message(m) = e {
                return m.as_bytes().to_vec();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no message in 10 s");
    }
}

/// A well-behaved peer (node 2): connects, establishes the fabric, gets its message
/// echoed.
fn good_peer<F: Fabric>(addr: &str) {
    let c = cfg(F::KIND);
    let fabric = F::open(&c, 1 << 20).unwrap();
    let mut ep = fabric
        .connect(addr, &c, 2, WIN)
        .expect("a good peer connects");
    assert_eq!(ep.peer(), 1);
    ep.post_send(b"ping after the attack", 7).unwrap();
    assert_eq!(wait_message(&mut ep), b"ping after the attack");
}

fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    (l, a)
}

fn frame(v: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(v).unwrap();
    let mut b = (body.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(&body);
    b
}

/// Reads frames until EOF or 10 s.
fn read_frames(s: &mut TcpStream) -> Vec<Value> {
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
        out.push(serde_json::from_slice(&body).expect("a JSON frame"));
    }
}

fn read_one(s: &mut TcpStream) -> Value {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

fn hello(kind: FabricKind, version: u8, node: u32, nonce: &str) -> Value {
    json!({"step": "hello", "version": version, "node": node, "fabric": kind.as_str(), "nonce": nonce})
}

const NONCE: &str = "0707070707070707070707070707070707070707070707070707070707070707";

/// Both directions of one TCP connection, recorded by a forwarding proxy.
struct Recording {
    up: Vec<u8>,
    down: Vec<u8>,
}

/// A forwarding proxy for one connection to `server`; the handle yields what crossed it
/// once both ends hung up.
fn recording_proxy(server: String) -> (String, std::thread::JoinHandle<Recording>) {
    let (l, addr) = listener();
    let h = std::thread::spawn(move || {
        let (c, _) = l.accept().unwrap();
        let s = TcpStream::connect(&server).unwrap();
        let pump = |mut from: TcpStream, mut to: TcpStream| {
            std::thread::spawn(move || {
                let mut rec = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => {
                            rec.extend_from_slice(&buf[..k]);
                            if to.write_all(&buf[..k]).is_err() {
                                break;
                            }
                        }
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
                rec
            })
        };
        let up = pump(c.try_clone().unwrap(), s.try_clone().unwrap());
        let down = pump(s, c);
        Recording {
            up: up.join().unwrap(),
            down: down.join().unwrap(),
        }
    });
    (addr, h)
}

/// Expect: a peer with the wrong secret is refused on both sides (the client cannot
/// verify the victim's proof and says so), gets no descriptor; the victim then serves
/// a good peer.
fn wrong_secret<F: Fabric>() {
    let (l, addr) = listener();
    let v = victim::<F>(l, 2);
    let mut bad = cfg(F::KIND);
    bad.secret = b"a guess".to_vec();
    let fabric = F::open(&bad, 1 << 20).unwrap();
    let e = fabric.connect(&addr, &bad, 2, WIN).err().expect("refused");
    assert!(matches!(e, Error::AuthFailed { .. }), "{e}");
    assert!(e.to_string().contains("cluster secret"), "{e}");
    good_peer::<F>(&addr);
    let r = v.join().unwrap();
    let e = r[0].as_ref().unwrap_err();
    assert!(
        matches!(e, Error::AuthFailed { reason, .. } if reason.contains("refused us")),
        "{e}"
    );
    assert_eq!(*r[1].as_ref().unwrap(), 2);
}

/// Expect: the bytes a good client sent, recorded from the wire and replayed verbatim
/// on a new connection, are refused: the victim's challenge nonce is fresh, so the old
/// response does not verify ("wrong cluster secret"); the replayer gets a challenge and
/// a refusing verdict, nothing else (no descriptor). Replaying the victim's side to a
/// new client fails the same way from the other end. The victim then serves a good
/// peer.
fn replayed_handshake<F: Fabric>() {
    let (l, addr) = listener();
    let v = victim::<F>(l, 3);
    // 1. A good connection through a recording proxy (the full exchange: handshake,
    //    descriptors, a message and its echo).
    let (proxy, rec) = recording_proxy(addr.clone());
    good_peer::<F>(&proxy);
    let rec = rec.join().unwrap();
    assert!(rec.up.len() > 100 && rec.down.len() > 100);
    // 2. Replay everything the client sent, at once, on a new connection.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&rec.up).unwrap();
    let got = read_frames(&mut s);
    assert_eq!(got.len(), 2, "only a challenge and a verdict: {got:?}");
    assert_eq!(got[0]["step"], "challenge");
    assert_eq!(got[1]["step"], "verdict");
    assert_eq!(got[1]["ok"], false);
    let reason = got[1]["reason"].as_str().unwrap();
    assert!(reason.contains("wrong cluster secret"), "{reason}");
    // 3. Replay the victim's side to a real client (a fake server that plays back the
    //    recorded challenge): the client's nonce is fresh, the old proof fails.
    let (fl, faddr) = listener();
    let down = rec.down.clone();
    let fake = std::thread::spawn(move || {
        let (mut c, _) = fl.accept().unwrap();
        let _ = c.write_all(&down);
        read_frames(&mut c)
    });
    let c = cfg(F::KIND);
    let fabric = F::open(&c, 1 << 20).unwrap();
    let e = fabric.connect(&faddr, &c, 2, WIN).err().expect("refused");
    assert!(matches!(e, Error::AuthFailed { .. }), "{e}");
    assert!(e.to_string().contains("could not prove"), "{e}");
    drop(fabric);
    let sent = fake.join().unwrap();
    assert_eq!(sent.len(), 2, "a hello, then a refusing verdict: {sent:?}");
    assert_eq!(sent[0]["step"], "hello");
    assert_eq!(sent[1]["step"], "verdict");
    assert_eq!(sent[1]["ok"], false);
    // 4. The victim still serves.
    good_peer::<F>(&addr);
    let r = v.join().unwrap();
    assert_eq!(
        *r[0].as_ref().unwrap(),
        2,
        "the recorded connection was good"
    );
    let e = r[1].as_ref().unwrap_err();
    assert!(
        matches!(e, Error::AuthFailed { reason, .. } if reason.contains("wrong cluster secret")),
        "{e}"
    );
    assert_eq!(*r[2].as_ref().unwrap(), 2);
}

/// One raw hostile opening against the victim: the bytes it sends and what the victim
/// must answer (a refusing verdict whose reason contains the text, or just an error and
/// a hang-up), and the error the victim reports.
struct Opening {
    what: &'static str,
    bytes: Vec<u8>,
    verdict: Option<&'static str>,
    error: &'static str,
}

/// Wrong versions, another fabric, steps out of order, malformed nonces and MACs, a
/// reflected proof, oversized and garbled frames, random garbage of many lengths: each
/// refused, and the victim serves a good peer after all of them.
fn hostile_openings<F: Fabric>() {
    let k = F::KIND;
    let other = if k == FabricKind::Tcp {
        FabricKind::Shm
    } else {
        FabricKind::Tcp
    };
    let mut cases = vec![
        // Expect: refused with a verdict naming the wire version.
        Opening {
            what: "hello of version 1",
            bytes: frame(&hello(k, 1, 2, NONCE)),
            verdict: Some("wire version 1"),
            error: "wire version",
        },
        Opening {
            what: "hello of version 255",
            bytes: frame(&hello(k, 255, 2, NONCE)),
            verdict: Some("wire version 255"),
            error: "wire version",
        },
        Opening {
            what: "hello of version WIRE_VERSION + 1",
            bytes: frame(&hello(k, WIRE_VERSION + 1, 2, NONCE)),
            verdict: Some("wire version"),
            error: "wire version",
        },
        // Expect: refused with a verdict naming the fabric.
        Opening {
            what: "hello for another fabric",
            bytes: frame(&hello(other, WIRE_VERSION, 2, NONCE)),
            verdict: Some("fabric"),
            error: "fabric",
        },
        // Expect: refused, the nonce must be 32 bytes of hex.
        Opening {
            what: "nonce not hex",
            bytes: frame(&hello(k, WIRE_VERSION, 2, "zz")),
            verdict: Some("malformed nonce"),
            error: "malformed nonce",
        },
        Opening {
            what: "nonce of 31 bytes",
            bytes: frame(&hello(k, WIRE_VERSION, 2, &NONCE[..62])),
            verdict: Some("32 bytes"),
            error: "32 bytes",
        },
        Opening {
            what: "nonce of 4 KiB",
            bytes: frame(&hello(k, WIRE_VERSION, 2, &"ab".repeat(4096))),
            verdict: Some("32 bytes"),
            error: "32 bytes",
        },
        // Expect: refused, a client must open with a hello.
        Opening {
            what: "response before hello",
            bytes: frame(&json!({"step": "response", "mac": "00"})),
            verdict: Some("expected a hello"),
            error: "expected a hello",
        },
        Opening {
            what: "a verdict before hello",
            bytes: frame(&json!({"step": "verdict", "ok": true, "reason": ""})),
            verdict: Some("expected a hello"),
            error: "expected a hello",
        },
        Opening {
            what: "a challenge to the server",
            bytes: frame(
                &json!({"step": "challenge", "version": WIRE_VERSION, "node": 2, "nonce": NONCE, "mac": "00"}),
            ),
            verdict: Some("expected a hello"),
            error: "expected a hello",
        },
        // Expect: refused, a hello then a MAC that is not hex / too short / empty.
        Opening {
            what: "MAC not hex",
            bytes: [
                frame(&hello(k, WIRE_VERSION, 2, NONCE)),
                frame(&json!({"step": "response", "mac": "not hex at all"})),
            ]
            .concat(),
            verdict: Some("wrong cluster secret"),
            error: "wrong cluster secret",
        },
        Opening {
            what: "MAC of 1 byte",
            bytes: [
                frame(&hello(k, WIRE_VERSION, 2, NONCE)),
                frame(&json!({"step": "response", "mac": "00"})),
            ]
            .concat(),
            verdict: Some("wrong cluster secret"),
            error: "wrong cluster secret",
        },
        Opening {
            what: "empty MAC",
            bytes: [
                frame(&hello(k, WIRE_VERSION, 2, NONCE)),
                frame(&json!({"step": "response", "mac": ""})),
            ]
            .concat(),
            verdict: Some("wrong cluster secret"),
            error: "wrong cluster secret",
        },
        // Expect: refused, a hello then another hello instead of a response.
        Opening {
            what: "hello twice",
            bytes: [
                frame(&hello(k, WIRE_VERSION, 2, NONCE)),
                frame(&hello(k, WIRE_VERSION, 2, NONCE)),
            ]
            .concat(),
            verdict: Some("expected a response"),
            error: "expected a response",
        },
        // Expect: a protocol error and a hang-up: a frame longer than MAX_FRAME, JSON
        // that is no step, bytes that are no JSON, a truncated frame.
        Opening {
            what: "frame over 64 KiB",
            bytes: (64 * 1024 + 1u32).to_le_bytes().to_vec(),
            verdict: None,
            error: "exceeds",
        },
        Opening {
            what: "frame of u32::MAX bytes",
            bytes: u32::MAX.to_le_bytes().to_vec(),
            verdict: None,
            error: "exceeds",
        },
        Opening {
            what: "JSON of an unknown step",
            bytes: frame(&json!({"step": "gimme", "region": 1})),
            verdict: None,
            error: "malformed hello",
        },
        Opening {
            what: "hello with fields of the wrong types",
            bytes: frame(
                &json!({"step": "hello", "version": "2", "node": -1, "fabric": 3, "nonce": []}),
            ),
            verdict: None,
            error: "malformed hello",
        },
        Opening {
            what: "not JSON",
            bytes: [&5u32.to_le_bytes()[..], b"\xff\xfe{]x"].concat(),
            verdict: None,
            error: "malformed hello",
        },
        Opening {
            what: "truncated frame",
            bytes: [&100u32.to_le_bytes()[..], b"{\"step\":"].concat(),
            verdict: None,
            error: "closed",
        },
        Opening {
            what: "nothing at all",
            bytes: Vec::new(),
            verdict: None,
            error: "closed",
        },
    ];
    // Expect: random garbage of many lengths (the first 4 bytes a length the victim
    // believes or refuses): an error and a hang-up, never a panic or a hang.
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for len in (1..64).chain([100, 1000, 4096, 65_536 + 3]) {
        let mut g = rng.bytes(len);
        if len >= 4 && rng.next().is_multiple_of(2) {
            g[..4].copy_from_slice(&((len - 4) as u32).to_le_bytes());
        }
        cases.push(Opening {
            what: "random garbage",
            bytes: g,
            verdict: None,
            error: "",
        });
    }
    let (l, addr) = listener();
    let n = cases.len();
    let v = victim::<F>(l, n + 2);
    for c in &cases {
        let mut s = TcpStream::connect(&addr).unwrap();
        let _ = s.write_all(&c.bytes);
        let _ = s.shutdown(Shutdown::Write);
        let got = read_frames(&mut s);
        match c.verdict {
            Some(want) => {
                let last = got
                    .last()
                    .unwrap_or_else(|| panic!("{}: no verdict", c.what));
                assert_eq!(last["step"], "verdict", "{}: {got:?}", c.what);
                assert_eq!(last["ok"], false, "{}: {got:?}", c.what);
                let reason = last["reason"].as_str().unwrap();
                assert!(reason.contains(want), "{}: {reason}", c.what);
            }
            None => assert!(
                got.iter()
                    .all(|f| f["step"] != "verdict" || f["ok"] == false),
                "{}: {got:?}",
                c.what
            ),
        }
    }
    // Expect: a reflected proof: the attacker sends the victim's own server proof back
    // as its client proof; the roles differ in the MAC, so it is refused.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&frame(&hello(k, WIRE_VERSION, 2, NONCE)))
        .unwrap();
    let ch = read_one(&mut s);
    assert_eq!(ch["step"], "challenge");
    s.write_all(&frame(&json!({"step": "response", "mac": ch["mac"]})))
        .unwrap();
    let v2 = read_one(&mut s);
    assert_eq!(v2["ok"], false, "{v2}");
    drop(s);
    // The victim still serves.
    good_peer::<F>(&addr);
    let r = v.join().unwrap();
    assert_eq!(r.len(), n + 2);
    for (c, res) in cases.iter().zip(&r) {
        let e = res
            .as_ref()
            .err()
            .unwrap_or_else(|| panic!("{}: accepted", c.what));
        assert!(
            matches!(
                e,
                Error::AuthFailed { .. } | Error::Protocol { .. } | Error::PeerLost { .. }
            ),
            "{}: {e}",
            c.what
        );
        assert!(e.to_string().contains(c.error), "{}: {e}", c.what);
    }
    let e = r[n].as_ref().unwrap_err();
    assert!(
        e.to_string().contains("wrong cluster secret"),
        "reflection: {e}"
    );
    assert_eq!(*r[n + 1].as_ref().unwrap(), 2);
}

/// Expect: a client facing a hostile server is refused, or refuses, with an error and
/// never sends a descriptor: a verdict instead of a challenge, a challenge of another
/// version, a challenge with a garbled nonce or proof, garbage, silence.
fn hostile_server<F: Fabric>() {
    let k = F::KIND;
    let replies: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "refusal",
            frame(&json!({"step": "verdict", "ok": false, "reason": "go away"})),
            "go away",
        ),
        (
            "challenge of version 1",
            frame(
                &json!({"step": "challenge", "version": 1, "node": 1, "nonce": NONCE, "mac": "00"}),
            ),
            "wire version",
        ),
        (
            "challenge with a short nonce",
            frame(
                &json!({"step": "challenge", "version": WIRE_VERSION, "node": 1, "nonce": "0102", "mac": "00"}),
            ),
            "32 bytes",
        ),
        (
            "challenge with a wrong proof",
            frame(
                &json!({"step": "challenge", "version": WIRE_VERSION, "node": 1, "nonce": NONCE, "mac": "00".repeat(32)}),
            ),
            "could not prove",
        ),
        (
            "a hello back",
            frame(&hello(k, WIRE_VERSION, 1, NONCE)),
            "expected a challenge",
        ),
        (
            "garbage",
            b"\x10\x00\x00\x00garbage garbage!".to_vec(),
            "malformed",
        ),
        ("silence", Vec::new(), "closed"),
    ];
    for (what, bytes, want) in replies {
        let (l, addr) = listener();
        let fake = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let _ = read_one(&mut c); // the hello
            let _ = c.write_all(&bytes);
            let _ = c.shutdown(Shutdown::Write);
            read_frames(&mut c)
        });
        let c = cfg(k);
        let fabric = F::open(&c, 1 << 20).unwrap();
        let e = fabric.connect(&addr, &c, 2, WIN).err().expect("refused");
        assert!(e.to_string().contains(want), "{what}: {e}");
        drop(fabric);
        let sent = fake.join().unwrap();
        assert!(
            sent.iter()
                .all(|f| f["step"] == "verdict" && f["ok"] == false),
            "{what}: the client sent {sent:?}"
        );
    }
}

macro_rules! suite {
    ($m:ident, $F:ty) => {
        mod $m {
            use super::*;
            #[test]
            fn wrong_secret_is_refused_then_a_good_peer_served() {
                super::wrong_secret::<$F>()
            }
            #[test]
            fn replayed_handshake_is_refused() {
                super::replayed_handshake::<$F>()
            }
            #[test]
            fn hostile_openings_are_refused() {
                super::hostile_openings::<$F>()
            }
            #[test]
            fn hostile_server_is_refused() {
                super::hostile_server::<$F>()
            }
        }
    };
}

suite!(shm, Shm);
suite!(tcp, Tcp);
