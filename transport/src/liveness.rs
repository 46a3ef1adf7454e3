//! Watching a peer's control connection: when the peer process dies its kernel closes
//! the socket, and a watcher thread blocked on it notices at once.

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

impl Liveness {
    pub(crate) fn watch(stream: TcpStream, peer: NodeId) -> Result<Liveness> {
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
