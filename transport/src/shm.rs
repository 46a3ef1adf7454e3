//! The `shm` fabric: every process's region is a sealed shared-memory file (`memfd`)
//! that its peers on the same host map. A WRITE is a `memcpy` into the peer's mapping of
//! the window it granted us (no receiver CPU); a message is a slot in a shared
//! single-producer/single-consumer doorbell ring (the peer's *mailbox*).
//!
//! Mailbox layout (little-endian, [`crate::WIRE_VERSION`]):
//!
//! ```text
//! 0    magic "SMRDBMB\x01" (u64)    8 version (u32)   12 slots (u32, power of two)   16 slot size (u32)
//! 64   tail  (u64, atomic; written by the producer = the peer)
//! 128  head  (u64, atomic; written by the consumer = the owner)
//! 256  slot[0] .. slot[slots-1], each SLOT bytes:
//!        0 kind (u32: 1 message, 2 write-with-imm notice)   4 len (u32)   8 imm (u32)   12 reserved
//!        16 payload (MAX_MSG bytes)
//! ```
//!
//! The producer fills slot `tail % slots`, then stores `tail + 1` with release order;
//! the consumer loads `tail` with acquire order, so a message is never seen before the
//! bytes written ahead of it. The consumer validates `tail`, `kind` and `len` of every
//! slot before using it: the peer can scribble anything into the shared page.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use serde::{Deserialize, Serialize};

use crate::liveness::Liveness;
use crate::region::{Region, Window};
use crate::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, Msg, NodeId, Result,
    MAX_MSG, WIRE_VERSION,
};

const MB_MAGIC: u64 = u64::from_le_bytes(*b"SMRDBMB\x01");
const MB_HEADER: usize = 256;
const TAIL_OFF: usize = 64;
const HEAD_OFF: usize = 128;
const SLOT_HDR: usize = 16;
const SLOT: usize = SLOT_HDR + MAX_MSG;
const KIND_MSG: u32 = 1;
const KIND_IMM: u32 = 2;

const _: () = assert!(SLOT.is_multiple_of(16), "slots keep 16-byte alignment");
const _: () = assert!(
    MB_HEADER >= HEAD_OFF + 8 && HEAD_OFF - TAIL_OFF >= 64,
    "head and tail on their own cache lines"
);

/// Creates a `memfd` of `len` bytes sealed against shrinking and growing.
pub(crate) fn sealed_memfd(name: &str, len: usize) -> Result<File> {
    let cname = std::ffi::CString::new(format!("smrdb-{name}"))
        .map_err(|_| Error::Config(format!("bad memfd name {name:?}")))?;
    // SAFETY: cname is a valid NUL-terminated string; flags are valid.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(Error::Io {
            op: "memfd_create",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd is a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len as u64)
        .map_err(Error::io("size shared memory"))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on a descriptor we own with a valid command.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(Error::Io {
            op: "seal shared memory",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(file)
}

/// Opens a peer's shared memory by the path it sent, refusing anything that is not a
/// sealed memfd of at least `min_len` bytes (a hostile peer must not make us map some
/// other file, nor shrink the memory under our mapping).
fn open_peer_memfd(path: &str, min_len: usize, peer: NodeId) -> Result<File> {
    let bad = |detail: String| Error::Protocol { peer, detail };
    let ok_shape = path
        .strip_prefix("/proc/")
        .and_then(|r| r.split_once("/fd/"))
        .is_some_and(|(pid, fd)| {
            !pid.is_empty()
                && !fd.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && fd.bytes().all(|b| b.is_ascii_digit())
        });
    if !ok_shape {
        return Err(bad(format!(
            "shared-memory path {path:?} is not /proc/PID/fd/N"
        )));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(Error::io("open peer shared memory"))?;
    // SAFETY: fcntl F_GET_SEALS on a descriptor we own.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(bad(format!("{path} is not a sealed memfd")));
    }
    let size = file
        .metadata()
        .map_err(Error::io("stat peer shared memory"))?
        .len();
    if (size as usize) < min_len {
        return Err(bad(format!("{path} has {size} bytes, {min_len} announced")));
    }
    Ok(file)
}

/// Writes at least this long bypass our caches (the bytes are for another core).
const STREAMING_MIN: usize = 256 * 1024;

/// Copies `len` bytes into a peer's mapping. Large copies use non-temporal stores:
/// the reader is another process on another core, so pulling the destination into our
/// cache (read-for-ownership) only costs bandwidth. Ends with a store fence, so the
/// doorbell's release store that follows cannot pass the streamed bytes.
///
/// # Safety
/// `src..src+len` readable, `dst..dst+len` writable, the two not overlapping.
unsafe fn copy_to_peer(dst: *mut u8, src: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if len >= STREAMING_MIN {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
        let head = dst.align_offset(16).min(len);
        // SAFETY: head <= len, inside both ranges.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, head) };
        let mut i = head;
        while i + 64 <= len {
            // SAFETY: i+64 <= len keeps every access in range; dst+i is 16-byte
            // aligned (head aligned it, and i advances by 64); SSE2 is baseline on
            // x86_64.
            unsafe {
                let s = src.add(i) as *const __m128i;
                let d = dst.add(i) as *mut __m128i;
                let (a, b, c, e) = (
                    _mm_loadu_si128(s),
                    _mm_loadu_si128(s.add(1)),
                    _mm_loadu_si128(s.add(2)),
                    _mm_loadu_si128(s.add(3)),
                );
                _mm_stream_si128(d, a);
                _mm_stream_si128(d.add(1), b);
                _mm_stream_si128(d.add(2), c);
                _mm_stream_si128(d.add(3), e);
            }
            i += 64;
        }
        // SAFETY: the tail [i, len) is in range; sfence orders the streamed stores
        // before any later store (the doorbell).
        unsafe {
            std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), len - i);
            _mm_sfence();
        }
        return;
    }
    // SAFETY: as the caller promised.
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) };
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// A mapped mailbox (ours to consume, or the peer's to produce into).
struct Mailbox {
    map: MmapRaw,
    slots: u64,
}

impl Mailbox {
    fn bytes(slots: u32) -> usize {
        MB_HEADER + slots as usize * SLOT
    }

    fn atomic(&self, off: usize) -> &AtomicU64 {
        // SAFETY: off is TAIL_OFF or HEAD_OFF, inside the header and 8-byte aligned in a
        // page-aligned mapping that lives as long as `self`; the word is only ever
        // accessed atomically.
        unsafe { &*(self.map.as_mut_ptr().add(off) as *const AtomicU64) }
    }

    fn slot(&self, seq: u64) -> *mut u8 {
        let i = (seq % self.slots) as usize;
        // SAFETY: i < slots, so the slot lies inside the mapping.
        unsafe { self.map.as_mut_ptr().add(MB_HEADER + i * SLOT) }
    }
}

#[derive(Serialize, Deserialize)]
struct Desc {
    region: String,
    window: Window,
    mailbox: String,
    slots: u32,
}

/// The `shm` fabric (one host, many processes).
pub struct Shm {
    region: Arc<Region>,
    depth: u32,
}

impl Fabric for Shm {
    type Endpoint = ShmEndpoint;
    const KIND: FabricKind = FabricKind::Shm;

    fn open(cfg: &FabricConfig, region_len: usize) -> Result<Self> {
        Ok(Shm {
            region: Arc::new(Region::shared("region", region_len)?),
            depth: cfg.queue_depth.clamp(2, 1 << 16).next_power_of_two(),
        })
    }

    fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn establish(&self, mut ctl: Control, grant: Window) -> Result<ShmEndpoint> {
        Window::check_range("granted window", grant.offset, grant.len, self.region.len())?;
        if !grant.offset.is_multiple_of(page_size()) {
            return Err(Error::Config(format!(
                "shm windows must start on a page boundary (offset {})",
                grant.offset
            )));
        }
        let peer = ctl.peer();
        let inbox_file = sealed_memfd("mailbox", Mailbox::bytes(self.depth))?;
        let inbox = Mailbox {
            map: MmapOptions::new()
                .len(Mailbox::bytes(self.depth))
                .map_raw(&inbox_file)
                .map_err(Error::io("mmap mailbox"))?,
            slots: u64::from(self.depth),
        };
        // SAFETY: the header is inside our fresh mapping and nobody else maps it yet.
        unsafe {
            let p = inbox.map.as_mut_ptr();
            (p as *mut u64).write(MB_MAGIC.to_le());
            (p.add(8) as *mut u32).write((WIRE_VERSION as u32).to_le());
            (p.add(12) as *mut u32).write(self.depth.to_le());
            (p.add(16) as *mut u32).write((SLOT as u32).to_le());
        }
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        ctl.send(&Desc {
            region: self
                .region
                .path()
                .ok_or_else(|| Error::Config("shm region is not shared".into()))?
                .display()
                .to_string(),
            window: grant,
            mailbox: format!("/proc/{pid}/fd/{}", inbox_file.as_raw_fd()),
            slots: self.depth,
        })?;
        ctl.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        let d: Desc = ctl.recv("shm descriptor")?;
        if !d.slots.is_power_of_two() || d.slots > 1 << 16 {
            return Err(Error::Protocol {
                peer,
                detail: format!(
                    "mailbox slot count {} is not a power of two <= 65536",
                    d.slots
                ),
            });
        }
        let end = d
            .window
            .offset
            .checked_add(d.window.len)
            .ok_or(Error::Protocol {
                peer,
                detail: "window overflows".into(),
            })?;
        let remote = if d.window.len == 0 {
            None
        } else {
            let f = open_peer_memfd(&d.region, end, peer)?;
            Some(
                MmapOptions::new()
                    .offset(d.window.offset as u64)
                    .len(d.window.len)
                    .map_raw(&f)
                    .map_err(Error::io("mmap peer window"))?,
            )
        };
        let outbox_file = open_peer_memfd(&d.mailbox, Mailbox::bytes(d.slots), peer)?;
        let outbox = Mailbox {
            map: MmapOptions::new()
                .len(Mailbox::bytes(d.slots))
                .map_raw(&outbox_file)
                .map_err(Error::io("mmap peer mailbox"))?,
            slots: u64::from(d.slots),
        };
        // SAFETY: the header lies inside the mapping; plain reads of bytes the peer
        // wrote before sending its descriptor.
        let (magic, version) = unsafe {
            let p = outbox.map.as_mut_ptr();
            (
                u64::from_le((p as *const u64).read()),
                u32::from_le((p.add(8) as *const u32).read()),
            )
        };
        if magic != MB_MAGIC || version != u32::from(WIRE_VERSION) {
            return Err(Error::Protocol {
                peer,
                detail: format!("peer mailbox has magic {magic:#x} version {version}"),
            });
        }
        // Both sides have mapped everything: the fds may close (the mappings stay).
        ctl.send(&"mapped")?;
        let _: String = ctl.recv("mapping acknowledgement")?;
        ctl.set_read_timeout(None)?;
        drop((inbox_file, outbox_file));
        let live = Liveness::watch(ctl.into_stream(), peer)?;
        Ok(ShmEndpoint {
            peer,
            region: self.region.clone(),
            remote,
            remote_len: d.window.len,
            inbox,
            outbox,
            head: 0,
            tail: 0,
            done: std::collections::VecDeque::new(),
            depth: self.depth as usize,
            live,
            broken: None,
        })
    }
}

/// A connection to one peer on the same host.
pub struct ShmEndpoint {
    peer: NodeId,
    region: Arc<Region>,
    /// Our mapping of the window the peer granted us.
    remote: Option<MmapRaw>,
    remote_len: usize,
    /// Our mailbox: the peer produces, we consume.
    inbox: Mailbox,
    /// The peer's mailbox: we produce.
    outbox: Mailbox,
    /// Next slot we consume from `inbox`.
    head: u64,
    /// Next slot we fill in `outbox`.
    tail: u64,
    /// Finished operations not yet reported.
    done: std::collections::VecDeque<u64>,
    depth: usize,
    live: Liveness,
    broken: Option<String>,
}

// SAFETY: the raw mappings are owned by the endpoint and only touched through `&mut
// self` (or atomics shared with the peer process).
unsafe impl Send for ShmEndpoint {}

impl ShmEndpoint {
    fn usable(&self) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(Error::Protocol {
                peer: self.peer,
                detail: why.clone(),
            });
        }
        self.live.check()
    }

    fn check_write(&self, local_off: usize, len: usize, remote_off: usize) -> Result<()> {
        self.usable()?;
        self.region.check(local_off, len)?;
        Window::check_range("remote window", remote_off, len, self.remote_len)?;
        if self.done.len() >= self.depth {
            return Err(Error::Full { depth: self.depth });
        }
        Ok(())
    }

    fn copy(&self, local_off: usize, len: usize, remote_off: usize) {
        if len == 0 {
            return;
        }
        let dst = self
            .remote
            .as_ref()
            .expect("len > 0 fits only a non-empty window");
        // SAFETY: both ranges were bounds-checked; the source is our region, the
        // destination our mapping of the peer's window; they are different mappings
        // so they do not overlap in our address space.
        unsafe {
            copy_to_peer(
                dst.as_mut_ptr().add(remote_off),
                self.region.as_ptr().add(local_off),
                len,
            );
        }
    }

    /// Room for one more slot in the peer's mailbox?
    fn outbox_room(&mut self) -> Result<()> {
        let head = self.outbox.atomic(HEAD_OFF).load(Ordering::Acquire);
        if head > self.tail || self.tail - head > self.outbox.slots {
            self.broken = Some(format!(
                "peer mailbox head {head} inconsistent with our tail {}",
                self.tail
            ));
            return self.usable();
        }
        if self.tail - head == self.outbox.slots {
            return Err(Error::Full {
                depth: self.outbox.slots as usize,
            });
        }
        Ok(())
    }

    fn publish(&mut self, kind: u32, len: u32, imm: u32, payload: &[u8]) {
        let p = self.outbox.slot(self.tail);
        // SAFETY: the slot is inside the mapping and not visible to the consumer until
        // the tail store below; payload.len() <= MAX_MSG (checked by callers).
        unsafe {
            (p as *mut u32).write(kind.to_le());
            (p.add(4) as *mut u32).write(len.to_le());
            (p.add(8) as *mut u32).write(imm.to_le());
            std::ptr::copy_nonoverlapping(payload.as_ptr(), p.add(SLOT_HDR), payload.len());
        }
        self.tail += 1;
        self.outbox
            .atomic(TAIL_OFF)
            .store(self.tail, Ordering::Release);
    }
}

impl Endpoint for ShmEndpoint {
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
        self.check_write(local_off, len, remote_off)?;
        self.copy(local_off, len, remote_off);
        self.done.push_back(wr_id);
        Ok(())
    }

    fn post_write_imm(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: u32,
        wr_id: u64,
    ) -> Result<()> {
        self.check_write(local_off, len, remote_off)?;
        let len32 = u32::try_from(len).map_err(|_| {
            Error::Config(format!("write with immediate of {len} bytes exceeds 4 GiB"))
        })?;
        self.outbox_room()?;
        self.copy(local_off, len, remote_off);
        self.publish(KIND_IMM, len32, imm, &[]);
        self.done.push_back(wr_id);
        Ok(())
    }

    fn post_send(&mut self, msg: &[u8], wr_id: u64) -> Result<()> {
        crate::check_msg(msg)?;
        self.usable()?;
        if self.done.len() >= self.depth {
            return Err(Error::Full { depth: self.depth });
        }
        self.outbox_room()?;
        self.publish(KIND_MSG, msg.len() as u32, 0, msg);
        self.done.push_back(wr_id);
        Ok(())
    }

    fn poll(&mut self, out: &mut Vec<Event>) -> Result<usize> {
        if let Some(why) = &self.broken {
            return Err(Error::Protocol {
                peer: self.peer,
                detail: why.clone(),
            });
        }
        let before = out.len();
        out.extend(self.done.drain(..).map(|wr_id| Event::Completed { wr_id }));
        let tail = self.inbox.atomic(TAIL_OFF).load(Ordering::Acquire);
        if tail < self.head || tail - self.head > self.inbox.slots {
            self.broken = Some(format!(
                "mailbox tail {tail} impossible for head {} and {} slots",
                self.head, self.inbox.slots
            ));
            return self.usable().map(|_| 0);
        }
        while self.head < tail {
            let p = self.inbox.slot(self.head);
            // SAFETY: the slot is inside our mapping; the producer published it with a
            // release store that our acquire load of `tail` synchronises with.
            let (kind, len, imm) = unsafe {
                (
                    u32::from_le((p as *const u32).read()),
                    u32::from_le((p.add(4) as *const u32).read()),
                    u32::from_le((p.add(8) as *const u32).read()),
                )
            };
            let ev = match kind {
                KIND_MSG if len as usize <= MAX_MSG => {
                    // SAFETY: len <= MAX_MSG, so the payload is inside the slot.
                    let bytes =
                        unsafe { std::slice::from_raw_parts(p.add(SLOT_HDR), len as usize) };
                    Event::Message(Msg::new(bytes)?)
                }
                KIND_IMM => Event::WriteImm { imm, len },
                _ => {
                    self.broken = Some(format!(
                        "mailbox slot {} has kind {kind} len {len}",
                        self.head
                    ));
                    return self.usable().map(|_| 0);
                }
            };
            out.push(ev);
            self.head += 1;
        }
        self.inbox
            .atomic(HEAD_OFF)
            .store(self.head, Ordering::Release);
        let n = out.len() - before;
        if n == 0 {
            self.live.check()?;
        }
        Ok(n)
    }
}

/// Test hooks: write raw values into our inbox as a hostile peer would.
#[doc(hidden)]
impl ShmEndpoint {
    /// Overwrites the tail word of our inbox (protocol tests).
    pub fn test_scribble_inbox_tail(&self, tail: u64) {
        self.inbox.atomic(TAIL_OFF).store(tail, Ordering::Release);
    }

    /// Writes a raw slot into our inbox and publishes it (protocol tests).
    pub fn test_scribble_inbox_slot(&self, kind: u32, len: u32) {
        let seq = self.head;
        let p = self.inbox.slot(seq);
        // SAFETY: the slot is inside our mapping.
        unsafe {
            (p as *mut u32).write(kind.to_le());
            (p.add(4) as *mut u32).write(len.to_le());
        }
        self.inbox
            .atomic(TAIL_OFF)
            .store(seq + 1, Ordering::Release);
    }
}
