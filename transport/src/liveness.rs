//! Watching a peer's control connection: when the peer process dies its kernel closes
//! the socket, and a watcher thread blocked on it notices at once. When the peer's
//! whole machine (or the link) goes away nothing closes the socket, so the connection
//! also carries TCP keepalive probes as heartbeats ([`HEARTBEAT`]): after
//! [`HEARTBEAT_MISSES`] unanswered probes (or unacknowledged data for as long) the
//! kernel fails the connection and the watcher notices that too.

use std::io::Read;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::{Error, NodeId, Result};

/// Owns the control stream of an endpoint and a thread that blocks reading it.
pub(crate) struct Liveness {
    peer: NodeId,
    lost: Arc<AtomicBool>,
    reason: Arc<Mutex<String>>,
    stream: TcpStream,
    thread: Option<JoinHandle<()>>,
}

/// Interval of the heartbeats (TCP keepalive probes after this much silence, then
/// every this long).
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// Unanswered heartbeats after which the peer is lost.
pub(crate) const HEARTBEAT_MISSES: u32 = 3;

/// Turns on keepalive probes every [`HEARTBEAT`] and fails the connection after
/// [`HEARTBEAT_MISSES`] unanswered ones (or data unacknowledged for as long).
fn heartbeat(stream: &TcpStream) -> Result<()> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    let secs = HEARTBEAT.as_secs() as libc::c_int;
    let user_timeout_ms =
        (HEARTBEAT.as_millis() as libc::c_int).saturating_mul(HEARTBEAT_MISSES as libc::c_int + 1);
    let opts: [(libc::c_int, libc::c_int, libc::c_int); 5] = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs),
        (
            libc::IPPROTO_TCP,
            libc::TCP_KEEPCNT,
            HEARTBEAT_MISSES as libc::c_int,
        ),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, user_timeout_ms),
    ];
    for (level, name, value) in opts {
        // SAFETY: `fd` is an open socket owned by `stream` for the whole call; the
        // option value is a live c_int whose size is passed with it.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(Error::Io {
                op: "set the control connection's heartbeat (keepalive)",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

impl Liveness {
    pub(crate) fn watch(stream: TcpStream, peer: NodeId) -> Result<Liveness> {
        heartbeat(&stream)?;
        let mut reader = stream
            .try_clone()
            .map_err(Error::io("clone control stream"))?;
        let lost = Arc::new(AtomicBool::new(false));
        let reason = Arc::new(Mutex::new(String::new()));
        let (l2, r2) = (lost.clone(), reason.clone());
        let thread = std::thread::Builder::new()
            .name(format!("smrdb-live-{peer}"))
            .spawn(move || {
                let mut buf = [0u8; 64];
                let why = loop {
                    match reader.read(&mut buf) {
                        Ok(0) => break "control connection closed".to_string(),
                        // After bootstrap the peer has nothing to say on this stream.
                        Ok(_) => break "unexpected bytes on the control connection".to_string(),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => break format!("control connection failed: {e}"),
                    }
                };
                *r2.lock().unwrap_or_else(|p| p.into_inner()) = why;
                l2.store(true, Ordering::Release);
            })
            .map_err(Error::io("spawn liveness thread"))?;
        Ok(Liveness {
            peer,
            lost,
            reason,
            stream,
            thread: Some(thread),
        })
    }

    /// `Err(PeerLost)` once the control connection is gone.
    #[inline]
    pub(crate) fn check(&self) -> Result<()> {
        if self.lost.load(Ordering::Acquire) {
            Err(self.error())
        } else {
            Ok(())
        }
    }

    pub(crate) fn error(&self) -> Error {
        Error::PeerLost {
            peer: self.peer,
            reason: self
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
