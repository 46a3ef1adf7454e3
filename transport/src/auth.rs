//! Connection bootstrap: a TCP control connection authenticated by the cluster secret.
//!
//! Mutual HMAC-SHA256 challenge-response; the secret never crosses the wire:
//!
//! ```text
//! client -> server  Hello     { version, node, fabric, nonce_c }
//! server -> client  Challenge { version, node, nonce_s, mac_s = HMAC(secret, "server" | transcript) }
//! client -> server  Response  { mac_c = HMAC(secret, "client" | transcript) }      (after checking mac_s)
//! server -> client  Verdict   { ok, reason }
//! transcript = version | fabric | client node | server node | nonce_c | nonce_s
//! ```
//!
//! Both nonces are fresh 32-byte random values, so a recorded handshake cannot be
//! replayed. Only after `Verdict { ok: true }` does a fabric exchange its region
//! descriptors over the same connection, so a peer with the wrong secret never learns
//! one. Frames are a little-endian `u32` length followed by that many bytes of JSON, at
//! most [`MAX_FRAME`] bytes.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::{Error, FabricConfig, FabricKind, NodeId, Result, WIRE_VERSION};

/// Largest bootstrap frame accepted.
pub const MAX_FRAME: usize = 64 * 1024;

const NONCE_LEN: usize = 32;

#[derive(Serialize, Deserialize)]
struct Hello {
    version: u8,
    node: NodeId,
    fabric: FabricKind,
    nonce: String,
}

#[derive(Serialize, Deserialize)]
struct Challenge {
    version: u8,
    node: NodeId,
    nonce: String,
    mac: String,
}

#[derive(Serialize, Deserialize)]
struct Response {
    mac: String,
}

#[derive(Serialize, Deserialize)]
struct Verdict {
    ok: bool,
    reason: String,
}

/// One handshake step on the wire (tagged, so a refusal can come at any step).
#[derive(Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "lowercase")]
enum Step {
    Hello(Hello),
    Challenge(Challenge),
    Response(Response),
    Verdict(Verdict),
}

/// An authenticated control connection to a peer node.
///
/// Fabrics exchange their descriptors over it and keep it open afterwards: its closing
/// is how a peer's death is noticed.
#[derive(Debug)]
pub struct Control {
    stream: TcpStream,
    me: NodeId,
    peer: NodeId,
    peer_addr: String,
}

impl Control {
    /// Connects to `addr` as node `me` and authenticates (within
    /// `cfg.connect_timeout` per step).
    ///
    /// # Errors
    /// [`Error::Io`] when the connection fails, [`Error::AuthFailed`] when either side
    /// rejects the other's proof (wrong secret, other fabric, other wire version),
    /// [`Error::Timeout`] when the peer stays silent.
    pub fn connect(
        addr: &str,
        cfg: &FabricConfig,
        me: NodeId,
        fabric: FabricKind,
    ) -> Result<Control> {
        let timeout = cfg.connect_timeout;
        let sa = addr
            .to_socket_addrs()
            .map_err(Error::io("resolve peer address"))?
            .next()
            .ok_or_else(|| Error::Config(format!("address {addr:?} resolves to nothing")))?;
        let stream =
            TcpStream::connect_timeout(&sa, timeout).map_err(Error::io("connect to peer"))?;
        let mut ctl = Control::setup(stream, me, addr.to_string(), timeout)?;
        let nonce_c = nonce()?;
        ctl.send(&Step::Hello(Hello {
            version: WIRE_VERSION,
            node: me,
            fabric,
            nonce: hex::encode(nonce_c),
        }))?;
        let ch = match ctl.recv("challenge")? {
            Step::Challenge(ch) => ch,
            Step::Verdict(v) => {
                return Err(ctl.auth_err(format!("the peer refused us: {}", v.reason)))
            }
            _ => return Err(ctl.protocol("expected a challenge".into())),
        };
        if ch.version != WIRE_VERSION {
            return Err(ctl.auth_err(format!(
                "peer speaks wire version {} but we speak {WIRE_VERSION}",
                ch.version
            )));
        }
        let nonce_s = decode_nonce(&ch.nonce).map_err(|r| ctl.auth_err(r))?;
        let t = transcript(fabric, me, ch.node, &nonce_c, &nonce_s);
        if !verify(&cfg.secret, b"server", &t, &ch.mac) {
            let _ = ctl.send(&Step::Verdict(Verdict {
                ok: false,
                reason: "you could not prove you know the cluster secret".into(),
            }));
            return Err(ctl.auth_err(
                "the peer could not prove it knows the cluster secret (wrong secret?)".into(),
            ));
        }
        ctl.peer = ch.node;
        ctl.send(&Step::Response(Response {
            mac: hex::encode(mac(&cfg.secret, b"client", &t)),
        }))?;
        match ctl.recv("verdict")? {
            Step::Verdict(v) if v.ok => {}
            Step::Verdict(v) => {
                return Err(ctl.auth_err(format!("the peer refused us: {}", v.reason)))
            }
            _ => return Err(ctl.protocol("expected a verdict".into())),
        }
        ctl.finish_setup()?;
        Ok(ctl)
    }

    /// Accepts one connection on `listener` (waiting at most `cfg.connect_timeout`)
    /// and authenticates it as node `me`.
    ///
    /// # Errors
    /// As [`Control::connect`]; on [`Error::AuthFailed`] the peer is told why and the
    /// connection is closed.
    pub fn accept(
        listener: &TcpListener,
        cfg: &FabricConfig,
        me: NodeId,
        fabric: FabricKind,
    ) -> Result<Control> {
        let timeout = cfg.connect_timeout;
        let stream = accept_within(listener, timeout)?;
        let addr = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        Self::handshake_server(stream, addr, cfg, me, fabric)
    }

    /// Authenticates a connection already accepted (by a caller that polls its
    /// listener itself) as node `me`, as [`Control::accept`] does.
    ///
    /// # Errors
    /// As [`Control::accept`].
    pub fn accept_stream(
        stream: TcpStream,
        cfg: &FabricConfig,
        me: NodeId,
        fabric: FabricKind,
    ) -> Result<Control> {
        stream
            .set_nonblocking(false)
            .map_err(Error::io("set peer stream blocking"))?;
        let addr = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        Self::handshake_server(stream, addr, cfg, me, fabric)
    }

    fn handshake_server(
        stream: TcpStream,
        addr: String,
        cfg: &FabricConfig,
        me: NodeId,
        fabric: FabricKind,
    ) -> Result<Control> {
        let mut ctl = Control::setup(stream, me, addr, cfg.connect_timeout)?;
        let refuse = |ctl: &mut Control, reason: String| {
            let _ = ctl.send(&Step::Verdict(Verdict {
                ok: false,
                reason: reason.clone(),
            }));
            let _ = ctl.stream.shutdown(Shutdown::Both);
            ctl.auth_err(reason)
        };
        let hello = match ctl.recv("hello")? {
            Step::Hello(h) => h,
            _ => return Err(refuse(&mut ctl, "expected a hello".into())),
        };
        if hello.version != WIRE_VERSION {
            let r = format!(
                "wire version {} is not ours ({WIRE_VERSION})",
                hello.version
            );
            return Err(refuse(&mut ctl, r));
        }
        if hello.fabric != fabric {
            let r = format!(
                "peer wants fabric {} but this node runs {fabric}",
                hello.fabric
            );
            return Err(refuse(&mut ctl, r));
        }
        let nonce_c = match decode_nonce(&hello.nonce) {
            Ok(n) => n,
            Err(r) => return Err(refuse(&mut ctl, r)),
        };
        let nonce_s = nonce()?;
        let t = transcript(fabric, hello.node, me, &nonce_c, &nonce_s);
        ctl.send(&Step::Challenge(Challenge {
            version: WIRE_VERSION,
            node: me,
            nonce: hex::encode(nonce_s),
            mac: hex::encode(mac(&cfg.secret, b"server", &t)),
        }))?;
        let resp = match ctl.recv("response")? {
            Step::Response(r) => r,
            Step::Verdict(v) => {
                return Err(ctl.auth_err(format!("the peer refused us: {}", v.reason)))
            }
            _ => return Err(refuse(&mut ctl, "expected a response".into())),
        };
        if !verify(&cfg.secret, b"client", &t, &resp.mac) {
            return Err(refuse(
                &mut ctl,
                "wrong cluster secret (challenge-response failed)".into(),
            ));
        }
        ctl.peer = hello.node;
        ctl.send(&Step::Verdict(Verdict {
            ok: true,
            reason: String::new(),
        }))?;
        ctl.finish_setup()?;
        Ok(ctl)
    }

    fn setup(
        stream: TcpStream,
        me: NodeId,
        peer_addr: String,
        timeout: Duration,
    ) -> Result<Control> {
        stream
            .set_nodelay(true)
            .map_err(Error::io("set TCP_NODELAY"))?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(Error::io("set read timeout"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(Error::io("set write timeout"))?;
        Ok(Control {
            stream,
            me,
            peer: NodeId::MAX,
            peer_addr,
        })
    }

    fn finish_setup(&mut self) -> Result<()> {
        self.stream
            .set_read_timeout(None)
            .map_err(Error::io("clear read timeout"))?;
        self.stream
            .set_write_timeout(None)
            .map_err(Error::io("clear write timeout"))?;
        Ok(())
    }

    fn auth_err(&self, reason: String) -> Error {
        Error::AuthFailed {
            addr: self.peer_addr.clone(),
            reason,
        }
    }

    /// Our node id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The authenticated peer's node id.
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// The peer's socket address as text.
    pub fn peer_addr(&self) -> &str {
        &self.peer_addr
    }

    /// Sends one JSON frame.
    ///
    /// # Errors
    /// [`Error::Io`]; [`Error::Config`] if the value serialises beyond [`MAX_FRAME`].
    pub fn send<T: Serialize>(&mut self, value: &T) -> Result<()> {
        let body = serde_json::to_vec(value)
            .map_err(|e| Error::Config(format!("cannot encode frame: {e}")))?;
        if body.len() > MAX_FRAME {
            return Err(Error::Config(format!(
                "bootstrap frame of {} bytes exceeds {MAX_FRAME}",
                body.len()
            )));
        }
        let mut buf = Vec::with_capacity(4 + body.len());
        buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
        buf.extend_from_slice(&body);
        self.stream
            .write_all(&buf)
            .map_err(Error::io("send bootstrap frame"))
    }

    /// Receives one JSON frame (`what` names it in errors).
    ///
    /// # Errors
    /// [`Error::Timeout`] when a read timeout is set and passes, [`Error::PeerLost`] on
    /// EOF, [`Error::Protocol`] for an oversized or undecodable frame.
    pub fn recv<T: DeserializeOwned>(&mut self, what: &'static str) -> Result<T> {
        let mut len = [0u8; 4];
        self.read_exact(&mut len, what)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(self.protocol(format!("{what} frame of {len} bytes exceeds {MAX_FRAME}")));
        }
        let mut body = vec![0u8; len];
        self.read_exact(&mut body, what)?;
        serde_json::from_slice(&body)
            .map_err(|e| self.protocol(format!("malformed {what} frame: {e}")))
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        match self.stream.read_exact(buf) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(Error::Timeout {
                    what,
                    after: self
                        .stream
                        .read_timeout()
                        .ok()
                        .flatten()
                        .unwrap_or_default(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(Error::PeerLost {
                peer: self.peer,
                reason: format!(
                    "connection closed while waiting for {what} ({})",
                    self.peer_addr
                ),
            }),
            Err(e) => Err(Error::Io {
                op: "read bootstrap frame",
                source: e,
            }),
        }
    }

    fn protocol(&self, detail: String) -> Error {
        Error::Protocol {
            peer: self.peer,
            detail,
        }
    }

    /// Sets the read timeout of later [`Control::recv`] calls (`None` = block).
    ///
    /// # Errors
    /// [`Error::Io`].
    pub fn set_read_timeout(&self, t: Option<Duration>) -> Result<()> {
        self.stream
            .set_read_timeout(t)
            .map_err(Error::io("set read timeout"))
    }

    /// Gives up the framing and returns the raw stream (the tcp fabric carries its data
    /// on it; the others watch it for the peer's death).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

fn accept_within(listener: &TcpListener, timeout: Duration) -> Result<TcpStream> {
    listener
        .set_nonblocking(true)
        .map_err(Error::io("set listener non-blocking"))?;
    let start = Instant::now();
    let mut backoff = crate::backoff::Backoff::new();
    let res = loop {
        match listener.accept() {
            Ok((s, _)) => break Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() >= timeout {
                    break Err(Error::Timeout {
                        what: "a peer to connect",
                        after: timeout,
                    });
                }
                backoff.snooze();
            }
            Err(e) => {
                break Err(Error::Io {
                    op: "accept peer",
                    source: e,
                })
            }
        }
    };
    let _ = listener.set_nonblocking(false);
    let s = res?;
    s.set_nonblocking(false)
        .map_err(Error::io("set stream blocking"))?;
    Ok(s)
}

fn nonce() -> Result<[u8; NONCE_LEN]> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(|e| Error::Io {
        op: "draw random nonce",
        source: std::io::Error::other(e.to_string()),
    })?;
    Ok(n)
}

fn decode_nonce(s: &str) -> std::result::Result<[u8; NONCE_LEN], String> {
    let v = hex::decode(s).map_err(|e| format!("malformed nonce: {e}"))?;
    v.try_into()
        .map_err(|_| format!("nonce must be {NONCE_LEN} bytes"))
}

fn transcript(fabric: FabricKind, client: NodeId, server: NodeId, nc: &[u8], ns: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(80);
    t.push(WIRE_VERSION);
    t.extend_from_slice(fabric.as_str().as_bytes());
    t.push(0);
    t.extend_from_slice(&client.to_le_bytes());
    t.extend_from_slice(&server.to_le_bytes());
    t.extend_from_slice(nc);
    t.extend_from_slice(ns);
    t
}

fn mac(secret: &[u8], role: &[u8], transcript: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    m.update(b"smrdb-bootstrap|");
    m.update(role);
    m.update(b"|");
    m.update(transcript);
    m.finalize().into_bytes().to_vec()
}

fn verify(secret: &[u8], role: &[u8], transcript: &[u8], mac_hex: &str) -> bool {
    let Ok(tag) = hex::decode(mac_hex) else {
        return false;
    };
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    m.update(b"smrdb-bootstrap|");
    m.update(role);
    m.update(b"|");
    m.update(transcript);
    m.verify_slice(&tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    fn cfg(secret: &[u8]) -> FabricConfig {
        let mut c = FabricConfig::new(FabricKind::Tcp, secret.to_vec());
        c.connect_timeout = Duration::from_secs(5);
        c
    }

    fn pair(
        server_secret: &'static [u8],
        client_secret: &'static [u8],
    ) -> (Result<Control>, Result<Control>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let srv =
            thread::spawn(move || Control::accept(&l, &cfg(server_secret), 1, FabricKind::Tcp));
        let cli = Control::connect(&addr, &cfg(client_secret), 2, FabricKind::Tcp);
        (srv.join().unwrap(), cli)
    }

    #[test]
    fn right_secret_authenticates_both_ways() {
        let (s, c) = pair(b"k1", b"k1");
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.peer(), 2);
        assert_eq!(c.peer(), 1);
        s.send(&42u32).unwrap();
        assert_eq!(c.recv::<u32>("n").unwrap(), 42);
    }

    #[test]
    fn wrong_secret_is_refused_on_both_sides() {
        // Expect: the client cannot verify the server's MAC and says so; the server
        // sees the connection end without a valid response.
        let (s, c) = pair(b"right", b"wrong");
        let ce = c.unwrap_err();
        assert!(matches!(ce, Error::AuthFailed { .. }), "{ce}");
        assert!(ce.to_string().contains("cluster secret"), "{ce}");
        assert!(s.is_err());
    }

    #[test]
    fn replayed_response_is_refused() {
        // Expect: a Response recorded from one handshake does not pass another,
        // because the server's nonce is fresh.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let srv = thread::spawn(move || {
            let a = Control::accept(&l, &cfg(b"s"), 1, FabricKind::Tcp);
            let b = Control::accept(&l, &cfg(b"s"), 1, FabricKind::Tcp);
            (a.is_ok(), b)
        });
        // Handshake 1, honest, recorded by hand.
        let mut s1 = TcpStream::connect(&addr).unwrap();
        let mut rec = Control::setup(
            s1.try_clone().unwrap(),
            9,
            addr.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        let nc = [7u8; NONCE_LEN];
        rec.send(&Step::Hello(Hello {
            version: WIRE_VERSION,
            node: 9,
            fabric: FabricKind::Tcp,
            nonce: hex::encode(nc),
        }))
        .unwrap();
        let Step::Challenge(ch) = rec.recv("challenge").unwrap() else {
            panic!("no challenge")
        };
        let ns = decode_nonce(&ch.nonce).unwrap();
        let good = || {
            Step::Response(Response {
                mac: hex::encode(mac(
                    b"s",
                    b"client",
                    &transcript(FabricKind::Tcp, 9, 1, &nc, &ns),
                )),
            })
        };
        rec.send(&good()).unwrap();
        assert!(matches!(
            rec.recv("verdict").unwrap(),
            Step::Verdict(Verdict { ok: true, .. })
        ));
        // Handshake 2 replays the same hello and response.
        let mut rep = Control::setup(
            TcpStream::connect(&addr).unwrap(),
            9,
            addr.clone(),
            Duration::from_secs(5),
        )
        .unwrap();
        rep.send(&Step::Hello(Hello {
            version: WIRE_VERSION,
            node: 9,
            fabric: FabricKind::Tcp,
            nonce: hex::encode(nc),
        }))
        .unwrap();
        let _: Step = rep.recv("challenge").unwrap();
        rep.send(&good()).unwrap();
        assert!(matches!(
            rep.recv("verdict").unwrap(),
            Step::Verdict(Verdict { ok: false, .. })
        ));
        let (first_ok, second) = srv.join().unwrap();
        assert!(first_ok);
        assert!(matches!(second, Err(Error::AuthFailed { .. })));
        let _ = s1.flush();
    }

    #[test]
    fn fabric_mismatch_is_refused_with_reason() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let srv = thread::spawn(move || Control::accept(&l, &cfg(b"k"), 1, FabricKind::Shm));
        let e = Control::connect(&addr, &cfg(b"k"), 2, FabricKind::Tcp).unwrap_err();
        assert!(e.to_string().contains("fabric"), "{e}");
        assert!(srv.join().unwrap().is_err());
    }

    #[test]
    fn oversized_and_garbage_frames_are_protocol_errors() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let srv = thread::spawn(move || Control::accept(&l, &cfg(b"k"), 1, FabricKind::Tcp));
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&(u32::MAX).to_le_bytes()).unwrap();
        let e = srv.join().unwrap().unwrap_err();
        assert!(matches!(e, Error::Protocol { .. }), "{e}");

        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let srv = thread::spawn(move || Control::accept(&l, &cfg(b"k"), 1, FabricKind::Tcp));
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(&5u32.to_le_bytes()).unwrap();
        s.write_all(b"\xff\x00garb").unwrap();
        let e = srv.join().unwrap().unwrap_err();
        assert!(matches!(e, Error::Protocol { .. }), "{e}");
    }

    #[test]
    fn silent_peer_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut c = cfg(b"k");
        c.connect_timeout = Duration::from_millis(200);
        let srv = thread::spawn(move || Control::accept(&l, &c, 1, FabricKind::Tcp));
        let _s = TcpStream::connect(&addr).unwrap();
        let e = srv.join().unwrap().unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
    }
}
