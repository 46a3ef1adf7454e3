//! # smrdb-transport: the fabrics under the shared memory router
//!
//! One API, three backends:
//!
//! | backend | memory | WRITE | message |
//! |---|---|---|---|
//! | [`verbs`] | anonymous memory registered with the NIC (one MR for the region, one per granted window) | RDMA WRITE on an RC queue pair | SEND/RECV on the same QP |
//! | [`tcp`]   | anonymous memory | a framed socket stream; the receiver's reader thread places the bytes at the named offset after checking the window | a frame on the same stream |
//! | [`shm`]   | a shared-memory file that peers map | `memcpy` into the peer's mapping of our window (no receiver CPU) | a doorbell slot in a shared SPSC ring |
//!
//! Every backend gives the same guarantees:
//!
//! * a peer can write only into the [`Window`] of our [`Region`] we granted it, and a
//!   write outside it is refused ([`Error::OutOfBounds`] on the sender; a hostile
//!   sender that bypasses that check breaks the connection, as an RDMA remote access
//!   error does);
//! * a message (or the notice of a [`Endpoint::post_write_imm`]) posted after a write on
//!   the same [`Endpoint`] is never observed before the written bytes;
//! * a peer that disappears turns into [`Error::PeerLost`] from `poll`/`wait`, and every
//!   wait has a timeout.
//!
//! ## Quick start
//!
//! ```no_run
//! use smrdb_transport::{shm::Shm, Control, Fabric, FabricConfig, FabricKind, Window, Endpoint};
//! use std::time::Duration;
//! let cfg = FabricConfig::new(FabricKind::Shm, b"cluster secret".to_vec());
//! let fabric = Shm::open(&cfg, 1 << 20)?;
//! let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
//! // ... on the peer: Control::connect(addr, ...) then fabric.establish(ctl, window)
//! let ctl = Control::accept(&listener, &cfg, 0, Shm::KIND)?;
//! let mut ep = fabric.establish(ctl, Window { offset: 0, len: 1 << 20 })?;
//! ep.post_write(0, 4096, 0, 1)?; // our bytes 0..4096 -> peer window offset 0
//! ep.post_send(b"hello", 2)?;    // seen by the peer after the written bytes
//! let mut events = Vec::new();
//! ep.wait(&mut events, Duration::from_secs(1))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Thread safety and resources
//!
//! A fabric value ([`Fabric`]) is `Send + Sync` and owns the node's registered region.
//! An [`Endpoint`] is `Send` but used through `&mut self` by one thread at a time (the
//! router thread). Dropping an endpoint closes its control connection, which the peer
//! sees as [`Error::PeerLost`]; dropping the fabric unmaps and deregisters the region
//! once every endpoint using it is gone (they hold an `Arc` to it).

#![deny(missing_docs)]

pub mod auth;
mod backoff;
pub mod fault;
mod liveness;
pub mod region;
pub mod shm;
pub mod tcp;
#[cfg(feature = "verbs")]
pub mod verbs;

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use auth::Control;
pub use region::{Region, Window};

/// Identifies a node of the cluster.
pub type NodeId = u32;

/// The largest small message ([`Endpoint::post_send`]) in bytes.
pub const MAX_MSG: usize = 256;

/// Version of every wire format this crate defines (bootstrap frames, tcp frames,
/// shm mailbox layout). Bumped on any incompatible change.
pub const WIRE_VERSION: u8 = 2;

/// Which backend carries the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FabricKind {
    /// Shared-memory files mapped by every process of the node set (one host).
    Shm,
    /// Sockets with one-sided placement semantics.
    Tcp,
    /// rdma-core verbs: RC queue pairs on a real NIC or Soft-RoCE.
    Verbs,
}

impl FabricKind {
    /// The name used on command lines and in cluster files.
    pub fn as_str(self) -> &'static str {
        match self {
            FabricKind::Shm => "shm",
            FabricKind::Tcp => "tcp",
            FabricKind::Verbs => "verbs",
        }
    }
}

impl fmt::Display for FabricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FabricKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "shm" => Ok(FabricKind::Shm),
            "tcp" => Ok(FabricKind::Tcp),
            "verbs" | "rdma" => Ok(FabricKind::Verbs),
            other => Err(Error::Config(format!(
                "unknown fabric {other:?}: expected shm, tcp or verbs"
            ))),
        }
    }
}

/// Settings every backend reads (each ignores what does not concern it).
#[derive(Debug, Clone)]
pub struct FabricConfig {
    /// Which backend.
    pub kind: FabricKind,
    /// The cluster secret: peers prove they know it (HMAC challenge-response); it is
    /// never sent.
    pub secret: Vec<u8>,
    /// verbs: device name (e.g. `rxe0`); `None` = the first device found.
    pub device: Option<String>,
    /// verbs: port number (1-based).
    pub port: u8,
    /// verbs: GID index; `None` = pick a RoCE v2 IPv4 GID if there is one, else 0.
    pub gid_index: Option<u32>,
    /// Operations an endpoint may have outstanding (send queue depth; clamped to
    /// the device's limits on verbs).
    pub queue_depth: u32,
    /// Timeout of connection bootstrap steps (connect, accept, handshake).
    pub connect_timeout: Duration,
    /// shm: directory of the shared-memory files.
    pub shm_dir: std::path::PathBuf,
    /// Faults to inject when the fabric is wrapped in [`fault::Faulty`] (tests).
    pub faults: Option<fault::FaultPlan>,
}

impl FabricConfig {
    /// Defaults for `kind` with the given cluster secret.
    pub fn new(kind: FabricKind, secret: Vec<u8>) -> Self {
        FabricConfig {
            kind,
            secret,
            device: std::env::var("SMRDB_VERBS_DEVICE")
                .ok()
                .filter(|s| !s.is_empty()),
            port: 1,
            gid_index: std::env::var("SMRDB_VERBS_GID")
                .ok()
                .and_then(|s| s.parse().ok()),
            queue_depth: 256,
            connect_timeout: Duration::from_secs(10),
            shm_dir: std::path::PathBuf::from("/dev/shm"),
            faults: None,
        }
    }
}

/// A small message received from a peer (at most [`MAX_MSG`] bytes, stored inline).
#[derive(Clone, Copy)]
pub struct Msg {
    len: u16,
    bytes: [u8; MAX_MSG],
}

impl Msg {
    /// Copies `data` into a message.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`] when `data` is longer than [`MAX_MSG`].
    pub fn new(data: &[u8]) -> Result<Msg> {
        if data.len() > MAX_MSG {
            return Err(Error::MessageTooLarge {
                len: data.len(),
                max: MAX_MSG,
            });
        }
        let mut bytes = [0u8; MAX_MSG];
        bytes[..data.len()].copy_from_slice(data);
        Ok(Msg {
            len: data.len() as u16,
            bytes,
        })
    }

    /// The message bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Msg({} bytes)", self.len)
    }
}

/// Something that happened on an endpoint, returned by [`Endpoint::poll`].
// Messages are stored inline so that receiving one never allocates.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// The operation posted with this `wr_id` finished locally: its source bytes may be
    /// changed again. (For a write this does not say the peer has looked at them.)
    Completed {
        /// The id given when posting.
        wr_id: u64,
    },
    /// A small message from the peer.
    Message(Msg),
    /// The peer's [`Endpoint::post_write_imm`] of `len` bytes is visible in our region.
    WriteImm {
        /// The 32-bit immediate the peer attached.
        imm: u32,
        /// Bytes the peer wrote.
        len: u32,
    },
}

/// Everything that can fail in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A range that does not fit where it was meant to go.
    #[error("{what}: range offset {off} + len {len} is outside its {limit} bytes")]
    OutOfBounds {
        /// Which range (local region, remote window, ...).
        what: &'static str,
        /// Offset asked for.
        off: u64,
        /// Length asked for.
        len: u64,
        /// Size of the space it had to fit in.
        limit: u64,
    },
    /// Too many operations outstanding; poll for completions and post again.
    #[error("send queue full ({depth} operations outstanding): poll completions and retry")]
    Full {
        /// The queue depth.
        depth: usize,
    },
    /// A message longer than [`MAX_MSG`].
    #[error("message of {len} bytes exceeds the {max}-byte limit")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The peer closed the connection, died, or broke it.
    #[error("peer node {peer} is gone: {reason}")]
    PeerLost {
        /// The peer.
        peer: NodeId,
        /// What was seen.
        reason: String,
    },
    /// Nothing happened in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The peer could not prove it knows the cluster secret, or refused our proof.
    #[error("authentication with {addr} failed: {reason}")]
    AuthFailed {
        /// The peer's address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer sent something malformed (bad frame, wrong version, bad slot, ...).
    #[error("protocol violation by node {peer}: {detail}")]
    Protocol {
        /// The peer.
        peer: NodeId,
        /// What was wrong.
        detail: String,
    },
    /// The peer refused one of our writes (outside the window it granted).
    #[error("node {peer} refused a write: {detail}")]
    RemoteAccess {
        /// The peer.
        peer: NodeId,
        /// What it said.
        detail: String,
    },
    /// An operating-system call failed.
    #[error("{op} failed")]
    Io {
        /// The operation.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `ulimit -l` is too low to pin the memory we need (and the process may not lock
    /// beyond it: no `CAP_IPC_LOCK`).
    #[error(
        "locked-memory limit (ulimit -l) is {} KiB ({have} bytes) but registering the common \
         memory needs at least {} KiB ({need} bytes); raise it with `ulimit -l unlimited` (or \
         `ulimit -l {}` at least) in the shell that starts smrdb, or a `memlock` line in \
         /etc/security/limits.conf, or LimitMEMLOCK=infinity for a systemd unit",
        .have / 1024,
        .need.div_ceil(1024),
        .need.div_ceil(1024)
    )]
    MemlockTooLow {
        /// Current soft limit in bytes.
        have: u64,
        /// What we need.
        need: u64,
    },
    /// A verbs call failed.
    #[error("verbs: {op} failed: {detail}")]
    Verbs {
        /// The verb.
        op: &'static str,
        /// The device's / library's message.
        detail: String,
    },
    /// A setting that cannot work.
    #[error("configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { op, source }
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A fabric: the node's registered region plus the means to connect endpoints.
///
/// Generic code (the router) is written against this trait so that every backend
/// shares every line above the transport, with no dynamic dispatch per message.
pub trait Fabric: Send + Sync + Sized + 'static {
    /// A connection to one peer.
    type Endpoint: Endpoint;
    /// Which backend this is.
    const KIND: FabricKind;

    /// Opens the backend and allocates + registers a region of `region_len` bytes.
    ///
    /// # Errors
    /// I/O errors creating the memory, [`Error::MemlockTooLow`] and [`Error::Verbs`] on
    /// verbs.
    fn open(cfg: &FabricConfig, region_len: usize) -> Result<Self>;

    /// The node's region.
    fn region(&self) -> &Arc<Region>;

    /// Builds an endpoint over an authenticated control connection, granting the peer
    /// write access to `grant` of our region (and nothing else).
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] when `grant` is not inside the region (shm also wants it
    /// page-aligned: [`Error::Config`]); [`Error::Protocol`] / [`Error::Io`] when the
    /// descriptor exchange fails.
    fn establish(&self, ctl: Control, grant: Window) -> Result<Self::Endpoint>;

    /// Connects to `addr`, authenticates and establishes an endpoint.
    ///
    /// # Errors
    /// As [`Control::connect`] and [`Fabric::establish`].
    fn connect(
        &self,
        addr: &str,
        cfg: &FabricConfig,
        me: NodeId,
        grant: Window,
    ) -> Result<Self::Endpoint> {
        let ctl = Control::connect(addr, cfg, me, Self::KIND)?;
        self.establish(ctl, grant)
    }
}

/// One connection to one peer: one-sided writes into the window the peer granted,
/// small messages both ways, completions.
pub trait Endpoint: Send + 'static {
    /// The peer's node id (authenticated).
    fn peer(&self) -> NodeId;

    /// Length of the window the peer granted us; remote offsets are relative to it.
    fn remote_len(&self) -> usize;

    /// How many operations may be outstanding before posting returns [`Error::Full`].
    fn max_outstanding(&self) -> usize;

    /// Writes `len` bytes of our region at `local_off` into the peer's window at
    /// `remote_off`. [`Event::Completed`] with `wr_id` follows once the source bytes
    /// may change again.
    ///
    /// # Errors
    /// [`Error::OutOfBounds`] (local or remote range), [`Error::Full`],
    /// [`Error::PeerLost`]; nothing is sent then.
    fn post_write(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        wr_id: u64,
    ) -> Result<()>;

    /// As [`Endpoint::post_write`], then the peer sees [`Event::WriteImm`] with `imm`
    /// after the bytes are visible.
    ///
    /// # Errors
    /// As [`Endpoint::post_write`].
    fn post_write_imm(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: u32,
        wr_id: u64,
    ) -> Result<()>;

    /// Sends a small message; the peer sees it after every write posted before it.
    ///
    /// # Errors
    /// [`Error::MessageTooLarge`], [`Error::Full`], [`Error::PeerLost`].
    fn post_send(&mut self, msg: &[u8], wr_id: u64) -> Result<()>;

    /// Appends what happened since the last call to `out` without blocking; returns how
    /// many events were appended.
    ///
    /// # Errors
    /// [`Error::PeerLost`], [`Error::Protocol`], [`Error::RemoteAccess`], a failed
    /// completion ([`Error::Verbs`]). After an error the endpoint is broken.
    fn poll(&mut self, out: &mut Vec<Event>) -> Result<usize>;

    /// As [`Endpoint::poll`] but blocks (spinning briefly, then sleeping) until at least
    /// one event arrives.
    ///
    /// # Errors
    /// As [`Endpoint::poll`], and [`Error::Timeout`] when nothing arrives in `timeout`.
    fn wait(&mut self, out: &mut Vec<Event>, timeout: Duration) -> Result<usize> {
        backoff::wait_with(timeout, "an event", || self.poll(out))
    }
}

/// [`Error::MessageTooLarge`] unless `msg` fits in one message.
pub(crate) fn check_msg(msg: &[u8]) -> Result<()> {
    if msg.len() > MAX_MSG {
        return Err(Error::MessageTooLarge {
            len: msg.len(),
            max: MAX_MSG,
        });
    }
    Ok(())
}

/// Current soft `RLIMIT_MEMLOCK` in bytes (`None` = unlimited).
pub fn memlock_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; it is valid for writes.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    if rc != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(lim.rlim_cur)
    }
}

/// Whether this process may pin memory beyond `ulimit -l`: the kernel exempts a
/// process with `CAP_IPC_LOCK` in its effective set. Read from `/proc/self/status`;
/// where that cannot be read, root is taken to have it.
pub fn can_lock_beyond_limit() -> bool {
    /// Bit of `CAP_IPC_LOCK` in the capability sets.
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| cap_eff(&s))
        .map(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
        // SAFETY: geteuid has no preconditions.
        .unwrap_or_else(|| unsafe { libc::geteuid() } == 0)
}

/// The effective capability set from the text of `/proc/<pid>/status`.
fn cap_eff(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Fails with [`Error::MemlockTooLow`] when `need` bytes cannot be pinned under the
/// current `ulimit -l`. A process with `CAP_IPC_LOCK` (root, normally; not root in a
/// container that drops it) is exempt, as the kernel exempts it.
///
/// # Errors
/// [`Error::MemlockTooLow`].
pub fn check_memlock(need: u64) -> Result<()> {
    match memlock_limit() {
        None => Ok(()),
        Some(have) if have >= need => Ok(()),
        Some(_) if can_lock_beyond_limit() => Ok(()),
        Some(have) => Err(Error::MemlockTooLow { have, need }),
    }
}

#[cfg(test)]
mod memlock_tests {
    use super::*;

    #[test]
    fn memlock_error_names_the_limit_and_the_bytes_needed() {
        let m = Error::MemlockTooLow {
            have: 65536,
            need: 2 * 1024 * 1024 + 1,
        }
        .to_string();
        for w in [
            "ulimit -l",
            "is 64 KiB (65536 bytes)",
            "at least 2049 KiB (2097153 bytes)",
            "`ulimit -l unlimited`",
            "`ulimit -l 2049`",
            "limits.conf",
        ] {
            assert!(m.contains(w), "{w:?} not in {m}");
        }
    }

    #[test]
    fn capability_sets_are_read_from_proc_status() {
        let status = "Name:\tsmrdb\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some(0x1ff_ffff_ffff));
        let without = "CapEff:\t000001ffffffbfff\n";
        assert_eq!(cap_eff(without).map(|c| c & (1 << 14)), Some(0));
        assert_eq!(cap_eff("Name:\tx\n"), None);
        assert_eq!(cap_eff("CapEff:\tzz\n"), None);
        // Whatever this process holds, a need within the limit always passes.
        check_memlock(0).unwrap();
        if let Some(have) = memlock_limit() {
            check_memlock(have).unwrap();
        }
    }
}
