//! The `tcp` fabric: one-sided semantics over a socket. The sender frames each
//! operation; a reader thread on the receiving side places WRITE payloads straight
//! from the socket into the region at the offset the frame names, after checking the
//! range against the window it granted. A frame outside the window is answered with a
//! NAK and the connection is closed, as an RDMA remote access error breaks a QP.
//!
//! Frame header (24 bytes, little-endian, then `len` payload bytes):
//!
//! ```text
//! 0 version (u8)   1 kind (u8: 1 WRITE, 2 WRITE_IMM, 3 SEND, 4 NAK)   2 reserved (u16)
//! 4 imm (u32)      8 offset in the granted window (u64)               16 len (u64)
//! ```

use std::io::{IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use crate::region::{Region, Window};
use crate::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, Msg, NodeId, Result,
    MAX_MSG, WIRE_VERSION,
};

/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 24;
const K_WRITE: u8 = 1;
const K_WRITE_IMM: u8 = 2;
const K_SEND: u8 = 3;
const K_NAK: u8 = 4;

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Wire version.
    pub version: u8,
    /// Frame kind.
    pub kind: u8,
    /// Immediate (WRITE_IMM).
    pub imm: u32,
    /// Offset in the receiver's granted window.
    pub offset: u64,
    /// Payload length.
    pub len: u64,
}

impl FrameHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; FRAME_HEADER] {
        let mut b = [0u8; FRAME_HEADER];
        b[0] = self.version;
        b[1] = self.kind;
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b[8..16].copy_from_slice(&self.offset.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes a header.
    pub fn decode(b: &[u8; FRAME_HEADER]) -> FrameHeader {
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        FrameHeader {
            version: b[0],
            kind: b[1],
            imm: u32_at(4),
            offset: u64_at(8),
            len: u64_at(16),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Desc {
    window_len: usize,
}

/// The `tcp` fabric.
pub struct Tcp {
    region: Arc<Region>,
    depth: usize,
}

impl Fabric for Tcp {
    type Endpoint = TcpEndpoint;
    const KIND: FabricKind = FabricKind::Tcp;

    fn open(cfg: &FabricConfig, region_len: usize) -> Result<Self> {
        Ok(Tcp {
            region: Arc::new(Region::anonymous(region_len)?),
            depth: cfg.queue_depth.max(1) as usize,
        })
    }

    fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn establish(&self, mut ctl: Control, grant: Window) -> Result<TcpEndpoint> {
        Window::check_range("granted window", grant.offset, grant.len, self.region.len())?;
        let peer = ctl.peer();
        ctl.send(&Desc {
            window_len: grant.len,
        })?;
        ctl.set_read_timeout(Some(Duration::from_secs(30)))?;
        let d: Desc = ctl.recv("tcp descriptor")?;
        ctl.set_read_timeout(None)?;
        let stream = ctl.into_stream();
        let reader = stream.try_clone().map_err(Error::io("clone tcp stream"))?;
        let writer = Arc::new(Mutex::new(stream));
        let (tx, rx) = crossbeam_channel::unbounded();
        let ctx = ReaderCtx {
            peer,
            region: self.region.clone(),
            grant,
            stream: reader,
            writer: writer.clone(),
            tx,
        };
        let thread = std::thread::Builder::new()
            .name(format!("smrdb-tcp-rx-{peer}"))
            .spawn(move || ctx.run())
            .map_err(Error::io("spawn tcp reader"))?;
        Ok(TcpEndpoint {
            peer,
            region: self.region.clone(),
            remote_len: d.window_len,
            writer,
            rx,
            done: std::collections::VecDeque::new(),
            depth: self.depth,
            broken: None,
            thread: Some(thread),
        })
    }
}

struct ReaderCtx {
    peer: NodeId,
    region: Arc<Region>,
    grant: Window,
    stream: TcpStream,
    writer: Arc<Mutex<TcpStream>>,
    tx: Sender<Result<Event>>,
}

impl ReaderCtx {
    fn run(mut self) {
        let err = loop {
            match self.one() {
                Ok(Some(ev)) => {
                    if self.tx.send(Ok(ev)).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => break e,
            }
        };
        let _ = self.tx.send(Err(err));
        let _ = self.stream.shutdown(Shutdown::Both);
    }

    fn lost(&self, e: std::io::Error) -> Error {
        Error::PeerLost {
            peer: self.peer,
            reason: if e.kind() == std::io::ErrorKind::UnexpectedEof {
                "connection closed".into()
            } else {
                format!("connection failed: {e}")
            },
        }
    }

    /// Refuses a frame: tell the sender, then report a protocol violation.
    fn refuse(&self, detail: String) -> Error {
        let nak = FrameHeader {
            version: WIRE_VERSION,
            kind: K_NAK,
            imm: 0,
            offset: 0,
            len: detail.len().min(MAX_MSG) as u64,
        };
        if let Ok(mut w) = self.writer.lock() {
            let _ = w.write_all(&nak.encode());
            let _ = w.write_all(&detail.as_bytes()[..detail.len().min(MAX_MSG)]);
        }
        Error::Protocol {
            peer: self.peer,
            detail,
        }
    }

    fn one(&mut self) -> Result<Option<Event>> {
        let mut hb = [0u8; FRAME_HEADER];
        self.stream.read_exact(&mut hb).map_err(|e| self.lost(e))?;
        let h = FrameHeader::decode(&hb);
        if h.version != WIRE_VERSION {
            return Err(self.refuse(format!(
                "frame of wire version {} (ours {WIRE_VERSION})",
                h.version
            )));
        }
        match h.kind {
            K_WRITE | K_WRITE_IMM => {
                let (off, len) = (h.offset as usize, h.len as usize);
                if usize::try_from(h.offset).is_err()
                    || usize::try_from(h.len).is_err()
                    || Window::check_range("granted window", off, len, self.grant.len).is_err()
                {
                    return Err(self.refuse(format!(
                        "write of {} bytes at offset {} is outside the {}-byte window",
                        h.len, h.offset, self.grant.len
                    )));
                }
                if len > 0 {
                    // SAFETY: the range lies inside the window we granted this peer; by
                    // the router's protocol nobody else touches it until we report it.
                    let dst = unsafe { self.region.bytes_mut(self.grant.offset + off, len)? };
                    self.stream.read_exact(dst).map_err(|e| self.lost(e))?;
                }
                if h.kind == K_WRITE_IMM {
                    return Ok(Some(Event::WriteImm {
                        imm: h.imm,
                        len: u32::try_from(len).unwrap_or(u32::MAX),
                    }));
                }
                Ok(None)
            }
            K_SEND | K_NAK => {
                if h.len as usize > MAX_MSG {
                    return Err(
                        self.refuse(format!("message of {} bytes exceeds {MAX_MSG}", h.len))
                    );
                }
                let mut buf = [0u8; MAX_MSG];
                let body = &mut buf[..h.len as usize];
                self.stream.read_exact(body).map_err(|e| self.lost(e))?;
                if h.kind == K_NAK {
                    return Err(Error::RemoteAccess {
                        peer: self.peer,
                        detail: String::from_utf8_lossy(body).into_owned(),
                    });
                }
                Ok(Some(Event::Message(Msg::new(body)?)))
            }
            k => Err(self.refuse(format!("unknown frame kind {k}"))),
        }
    }
}

/// A connection to one peer over a socket.
pub struct TcpEndpoint {
    peer: NodeId,
    region: Arc<Region>,
    remote_len: usize,
    writer: Arc<Mutex<TcpStream>>,
    rx: Receiver<Result<Event>>,
    done: std::collections::VecDeque<u64>,
    depth: usize,
    broken: Option<String>,
    thread: Option<JoinHandle<()>>,
}

impl TcpEndpoint {
    fn usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(Error::PeerLost {
                peer: self.peer,
                reason: why.clone(),
            }),
            None if self.done.len() >= self.depth => Err(Error::Full { depth: self.depth }),
            None => Ok(()),
        }
    }

    fn frame(&mut self, h: FrameHeader, payload: &[u8], wr_id: u64) -> Result<()> {
        let hb = h.encode();
        let res = {
            let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            write_all_vectored(&mut w, &mut [IoSlice::new(&hb), IoSlice::new(payload)])
        };
        match res {
            Ok(()) => {
                self.done.push_back(wr_id);
                Ok(())
            }
            Err(e) => {
                let reason = format!("send failed: {e}");
                self.broken = Some(reason.clone());
                Err(Error::PeerLost {
                    peer: self.peer,
                    reason,
                })
            }
        }
    }

    fn write_frame(
        &mut self,
        kind: u8,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: u32,
        wr_id: u64,
    ) -> Result<()> {
        self.usable()?;
        self.region.check(local_off, len)?;
        Window::check_range("remote window", remote_off, len, self.remote_len)?;
        let region = self.region.clone();
        // SAFETY: in range (checked); the caller keeps the source bytes unchanged until
        // the completion, which is reported only after this copy into the socket.
        let payload = unsafe { region.bytes(local_off, len)? };
        self.frame(
            FrameHeader {
                version: WIRE_VERSION,
                kind,
                imm,
                offset: remote_off as u64,
                len: len as u64,
            },
            payload,
            wr_id,
        )
    }

    /// Sends a raw frame, bypassing every sender-side check (protocol tests play a
    /// hostile peer with it).
    ///
    /// # Errors
    /// [`Error::PeerLost`] when the socket write fails.
    #[doc(hidden)]
    pub fn test_raw_frame(&mut self, h: FrameHeader, payload: &[u8]) -> Result<()> {
        self.frame(h, payload, u64::MAX)
    }
}

fn write_all_vectored(w: &mut TcpStream, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Endpoint for TcpEndpoint {
    fn peer(&self) -> NodeId {
        self.peer
    }

    fn remote_len(&self) -> usize {
        self.remote_len
    }

    fn max_outstanding(&self) -> usize {
        self.depth
    }

    fn post_write(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        wr_id: u64,
    ) -> Result<()> {
        self.write_frame(K_WRITE, local_off, len, remote_off, 0, wr_id)
    }

    fn post_write_imm(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: u32,
        wr_id: u64,
    ) -> Result<()> {
        if u32::try_from(len).is_err() {
            return Err(Error::Config(format!(
                "write with immediate of {len} bytes exceeds 4 GiB"
            )));
        }
        self.write_frame(K_WRITE_IMM, local_off, len, remote_off, imm, wr_id)
    }

    fn post_send(&mut self, msg: &[u8], wr_id: u64) -> Result<()> {
        crate::check_msg(msg)?;
        self.usable()?;
        self.frame(
            FrameHeader {
                version: WIRE_VERSION,
                kind: K_SEND,
                imm: 0,
                offset: 0,
                len: msg.len() as u64,
            },
            msg,
            wr_id,
        )
    }

    fn poll(&mut self, out: &mut Vec<Event>) -> Result<usize> {
        let before = out.len();
        out.extend(self.done.drain(..).map(|wr_id| Event::Completed { wr_id }));
        loop {
            match self.rx.try_recv() {
                Ok(Ok(ev)) => out.push(ev),
                Ok(Err(e)) => {
                    self.broken = Some(e.to_string());
                    return Err(e);
                }
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    let n = out.len() - before;
                    if n > 0 {
                        return Ok(n);
                    }
                    return Err(Error::PeerLost {
                        peer: self.peer,
                        reason: self
                            .broken
                            .clone()
                            .unwrap_or_else(|| "connection closed".into()),
                    });
                }
            }
        }
        Ok(out.len() - before)
    }

    fn wait(&mut self, out: &mut Vec<Event>, timeout: Duration) -> Result<usize> {
        let n = self.poll(out)?;
        if n > 0 {
            return Ok(n);
        }
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(ev)) => {
                out.push(ev);
                Ok(1 + self.poll(out)?)
            }
            Ok(Err(e)) => {
                self.broken = Some(e.to_string());
                Err(e)
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Timeout {
                what: "an event",
                after: timeout,
            }),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => self.poll(out),
        }
    }
}

impl Drop for TcpEndpoint {
    fn drop(&mut self) {
        if let Ok(w) = self.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
