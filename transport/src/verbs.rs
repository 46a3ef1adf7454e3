//! The `verbs` fabric: rdma-core verbs (through the `sideway` crate) on a real RDMA NIC
//! or Soft-RoCE (`rxe`).
//!
//! * [`Verbs::open`] opens the device, allocates the node's [`Region`] and registers ONE
//!   memory region (MR) over all of it with local access only. It is the `lkey` source
//!   of every local post; its `rkey` is never given to anybody.
//! * [`Fabric::establish`] registers a SEPARATE MR over just the granted [`Window`]
//!   (remote write) and hands the peer only that window's address, rkey and length, so
//!   a peer can write into its own ring and nowhere else. It also registers the
//!   endpoint's inbound *mailbox* (its own MR, remote write, granted to this peer only):
//!   a credit word, then a ring of `depth` slots of `MAX_MSG + 24` bytes. It creates
//!   one reliable connected (RC) queue pair with ONE completion queue and no receive
//!   work requests at all, a registered block of send staging slots, exchanges the QP
//!   and mailbox descriptors over the authenticated control connection, moves the QP
//!   INIT → RTR → RTS, and waits until the peer has done the same before returning.
//! * [`Endpoint::post_write`] is an RDMA WRITE. [`Endpoint::post_send`] is an RDMA
//!   WRITE of one slot of the peer's ring (as perftest's `write_lat`): the payload
//!   right-aligned against a trailer `seq | imm | len | kind | valid`, whose last byte
//!   (the *valid* byte, the slot's lap number + 1) is the last byte written. It is
//!   inline when payload + trailer fit the device's inline data (we ask for a whole
//!   slot), otherwise copied into a registered staging slot.
//!   [`Endpoint::post_write_imm`] is an (unsignaled) RDMA WRITE of the data, then a
//!   notice slot (kind write-imm) in the peer's ring, like the shm mailbox. Every
//!   caller's request completes as exactly one [`Event::Completed`], except a message
//!   posted with `wr_id` 0 (nobody waits for it, the router's pointer and credit
//!   messages): an inline one goes unsignaled, as perftest's `write_lat` posts, and its
//!   send slot comes back with the next signaled request's completion (a send queue
//!   completes in order; one message in `depth / 4` is signaled so that slots return).
//! * [`Endpoint::poll`] reads the valid byte of the next ring slot (no receive WQE, no
//!   receive completion); a filled slot is validated (sequence, kind, length ≤
//!   [`MAX_MSG`], a notice's length ≤ the granted window) and copied into an
//!   [`Event`]; a bad slot is [`Error::Protocol`] and breaks the endpoint. The CQ is
//!   polled only while a signaled request is outstanding, so a ping-pong of quiet
//!   messages reads one byte per spin and never touches the CQ.
//! * Credits: after consuming a quarter of its ring the receiver RDMA-WRITEs its
//!   consumed head (8 bytes, one return in flight at a time, on a send queue entry
//!   kept for it) into the sender's credit word. The sender re-reads that word when
//!   the ring looks full, validates it (monotonic, never past what it sent) and
//!   returns [`Error::Full`] while no slot is free.
//! * The data path calls `ibv_post_send` and `ibv_poll_cq` directly (through sideway's
//!   `rdma-mummy-sys`) with requests on the stack and a reused completion array:
//!   sideway's wrappers allocate on every post and poll, which on Soft-RoCE under
//!   emulation cost a measurable part of a message's latency.
//!
//! ## Ordering
//!
//! All operations of an endpoint go through one RC queue pair. The mailbox relies on
//! the responder placing an RC WRITE's bytes in order, and successive WRITEs of one QP
//! in order, so that once a slot's last (valid) byte is visible the whole slot and
//! every byte written before it on the QP are too. The InfiniBand specification does
//! not promise placement order inside a message, but rxe and mainstream NICs place in
//! order and the RDMA systems that poll on a last byte (FaRM, HERD, perftest's
//! `write_lat`) rely on it too. The credit word is one aligned 8-byte WRITE, read
//! atomically (a NIC places an aligned 8-byte word in one piece).
//!
//! ## Flow control and failure
//!
//! A full peer ring is [`Error::Full`] on the sender (no RNR, no retries). A failed
//! work completion (remote access error, retry exceeded, ...) is reported as
//! [`Error::Verbs`] with op `"work completion"` and a detail naming the status, the
//! `wr_id` and the vendor error; the endpoint is broken afterwards. A peer whose control
//! connection closes (it dropped the endpoint or died) becomes [`Error::PeerLost`].
//!
//! ## Limits
//!
//! One write moves at most 2 GiB (the InfiniBand message size limit); larger writes are
//! refused with [`Error::Config`]. Inline data is used for mailbox slots only, never for
//! writes (their sources are in the registered region anyway).
//!
//! ## Resource lifetime
//!
//! Each verbs object holds an `Arc` to what it was created from (QP → CQs + PD, MR → PD,
//! PD → device context), and an endpoint's fields are declared in destruction order, so
//! the QP is destroyed before its CQs, the CQs before the MRs, the MRs before the PD and
//! the PD before the device context; a registered memory is unmapped only after its MR
//! is deregistered.

use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdma_mummy_sys::{
    ibv_poll_cq, ibv_post_send, ibv_send_flags, ibv_send_wr, ibv_sge, ibv_wc, ibv_wr_opcode,
};
use serde::{Deserialize, Serialize};
use sideway::ibverbs::address::{AddressHandleAttribute, Gid};
use sideway::ibverbs::completion::{CompletionQueue, GenericCompletionQueue, WorkCompletionStatus};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, LinkLayer, Mtu, PortState};
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::queue_pair::{
    BasicQueuePair, QueuePair, QueuePairAttribute, QueuePairAttributeMask, QueuePairState,
};
use sideway::ibverbs::AccessFlags;

use crate::liveness::Liveness;
use crate::region::{Region, Window};
use crate::{
    Control, Endpoint, Error, Event, Fabric, FabricConfig, FabricKind, Msg, NodeId, Result,
    MAX_MSG, WIRE_VERSION,
};

/// The largest single RDMA message (InfiniBand limit): the longest write we post.
pub const MAX_WRITE: usize = 1 << 31;

/// Local ACK timeout exponent: 4.096 µs × 2^14 ≈ 67 ms before a retransmission.
const ACK_TIMEOUT: u8 = 14;
/// Transport retries before a request fails with RETRY_EXC_ERR.
const RETRY_CNT: u8 = 7;
/// RNR retries: 7 means "retry forever", so a receiver that is slow to repost its
/// receives only slows the sender down.
const RNR_RETRY: u8 = 7;
/// Minimum RNR NAK timer we ask senders to wait (12 = 0.64 ms).
const MIN_RNR_TIMER: u8 = 12;
/// GRH hop limit (RoCE v2 may be routed).
const HOP_LIMIT: u8 = 64;

/// Formats an error with its whole `source()` chain (sideway's outer errors say only
/// which call failed; the OS error is in the source).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn verbs_err<E: std::error::Error + 'static>(op: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Verbs {
        op,
        detail: chain(&e),
    }
}

fn mtu_bytes(m: Mtu) -> u32 {
    match m {
        Mtu::Mtu256 => 256,
        Mtu::Mtu512 => 512,
        Mtu::Mtu1024 => 1024,
        Mtu::Mtu2048 => 2048,
        Mtu::Mtu4096 => 4096,
    }
}

fn mtu_from_bytes(b: u32) -> Option<Mtu> {
    Some(match b {
        256 => Mtu::Mtu256,
        512 => Mtu::Mtu512,
        1024 => Mtu::Mtu1024,
        2048 => Mtu::Mtu2048,
        4096 => Mtu::Mtu4096,
        _ => return None,
    })
}

/// The name of a work completion status (`IBV_WC_*`), never panicking on unknown values.
fn wc_status_name(status: u32) -> String {
    use WorkCompletionStatus as S;
    const ALL: [(WorkCompletionStatus, &str); 24] = [
        (S::Success, "SUCCESS"),
        (S::LocalLengthError, "LOC_LEN_ERR"),
        (S::LocalQueuePairOperationError, "LOC_QP_OP_ERR"),
        (S::LocalEndToEndContextOperationError, "LOC_EEC_OP_ERR"),
        (S::LocalProtectionError, "LOC_PROT_ERR"),
        (S::WorkRequestFlushedError, "WR_FLUSH_ERR"),
        (S::MemoryWindowBindError, "MW_BIND_ERR"),
        (S::BadResponseError, "BAD_RESP_ERR"),
        (S::LocalAccessError, "LOC_ACCESS_ERR"),
        (S::RemoteInvalidRequestError, "REM_INV_REQ_ERR"),
        (S::RemoteAccessError, "REM_ACCESS_ERR"),
        (S::RemoteOperationError, "REM_OP_ERR"),
        (S::RetryCounterExceededError, "RETRY_EXC_ERR"),
        (
            S::ResponderNotReadyRetryCounterExceededError,
            "RNR_RETRY_EXC_ERR",
        ),
        (
            S::LocalReliableDatagramDomainViolationError,
            "LOC_RDD_VIOL_ERR",
        ),
        (
            S::RemoteInvalidReliableDatagramRequest,
            "REM_INV_RD_REQ_ERR",
        ),
        (S::RemoteAbortedError, "REM_ABORT_ERR"),
        (S::InvalidEndToEndContextNumberError, "INV_EECN_ERR"),
        (S::InvalidEndToEndContextStateError, "INV_EEC_STATE_ERR"),
        (S::FatalError, "FATAL_ERR"),
        (S::ResponseTimeoutError, "RESP_TIMEOUT_ERR"),
        (S::GeneralError, "GENERAL_ERR"),
        (S::TagMatchingError, "TM_ERR"),
        (S::TagMatchingRendezvousIncomplete, "TM_RNDV_INCOMPLETE"),
    ];
    match ALL.iter().find(|(s, _)| *s as u32 == status) {
        Some((_, name)) => format!("IBV_WC_{name}"),
        None => format!("unknown status {status}"),
    }
}

/// Bytes of registered memory (pinned pages) this process has asked for: every MR
/// counts, the window MRs too (the kernel charges each registration separately).
#[derive(Default)]
struct Pinned(AtomicU64);

impl Pinned {
    /// Checks `ulimit -l` for `bytes` more, then reserves them.
    fn reserve(self: &Arc<Self>, bytes: usize) -> Result<PinGuard> {
        let bytes = bytes as u64;
        let now = self.0.load(Ordering::Relaxed);
        crate::check_memlock(now.saturating_add(bytes))?;
        self.0.fetch_add(bytes, Ordering::Relaxed);
        Ok(PinGuard {
            pinned: self.clone(),
            bytes,
        })
    }
}

/// Releases a [`Pinned`] reservation when dropped.
struct PinGuard {
    pinned: Arc<Pinned>,
    bytes: u64,
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        self.pinned.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A memory registration together with the memory it covers. Field order is drop
/// order: the MR is deregistered before the memory can be unmapped.
struct Registered {
    mr: Arc<MemoryRegion>,
    mem: Arc<Region>,
    /// Start of the registered range in `mem`.
    offset: usize,
    _pin: PinGuard,
}

impl Registered {
    /// Registers `[offset, offset+len)` of `mem` (`len > 0`).
    fn new(
        pd: &Arc<ProtectionDomain>,
        pinned: &Arc<Pinned>,
        mem: &Arc<Region>,
        offset: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<Registered> {
        mem.check(offset, len)?;
        let pin = pinned.reserve(len)?;
        // SAFETY: the range lies inside the mapping (checked above); the returned MR is
        // stored next to an `Arc` of the mapping and deregistered (dropped) before it, so
        // the NIC never accesses the range after it is unmapped.
        let mr = unsafe { pd.reg_mr(mem.as_ptr() as usize + offset, len, access) }
            .map_err(verbs_err("ibv_reg_mr"))?;
        Ok(Registered {
            mr,
            mem: mem.clone(),
            offset,
            _pin: pin,
        })
    }

    /// Device address of `off` bytes into the registered range.
    fn addr(&self, off: usize) -> u64 {
        (self.mem.as_ptr() as usize + self.offset + off) as u64
    }
}

/// The `verbs` fabric: an open device, a protection domain and the node's registered
/// region.
pub struct Verbs {
    // Field order is drop order: MR, PD, device context.
    local: Arc<Registered>,
    pd: Arc<ProtectionDomain>,
    ctx: Arc<DeviceContext>,
    region: Arc<Region>,
    pinned: Arc<Pinned>,
    device: String,
    port: u8,
    gid_index: u8,
    gid: Gid,
    lid: u16,
    ethernet: bool,
    active_mtu: Mtu,
    depth: u32,
    max_rd_atomic: u8,
    max_dest_rd_atomic: u8,
    timeout: Duration,
}

impl std::fmt::Debug for Verbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verbs")
            .field("device", &self.device)
            .field("port", &self.port)
            .field("gid_index", &self.gid_index)
            .field("gid", &Ipv6Addr::from(self.gid))
            .field("depth", &self.depth)
            .field("region", &self.region)
            .finish()
    }
}

impl Verbs {
    /// The device in use (e.g. `rxe0`).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The GID index in use (configured or picked automatically).
    pub fn gid_index(&self) -> u8 {
        self.gid_index
    }

    /// The queue depth after clamping to the device's limits.
    pub fn queue_depth(&self) -> usize {
        self.depth as usize
    }

    /// Picks the GID index: the configured one (validated), else the first RoCE v2 GID
    /// holding an IPv4-mapped address, else 0.
    fn pick_gid(
        ctx: &DeviceContext,
        port: u8,
        tbl_len: i32,
        want: Option<u32>,
    ) -> Result<(u8, Gid)> {
        let tbl_len = u32::try_from(tbl_len).unwrap_or(0);
        let query = |idx: u32| {
            ctx.query_gid(port, idx).map_err(|e| Error::Verbs {
                op: "ibv_query_gid",
                detail: chain(&e),
            })
        };
        let index = match want {
            Some(i) => {
                if i >= tbl_len || i > u32::from(u8::MAX) {
                    return Err(Error::Config(format!(
                        "GID index {i} does not exist: port {port} has {tbl_len} GIDs"
                    )));
                }
                i
            }
            None => (0..tbl_len.min(256))
                .find(|&i| {
                    let Ok(g) = ctx.query_gid(port, i) else {
                        return false;
                    };
                    let v4 = g.raw[..10].iter().all(|&b| b == 0)
                        && g.raw[10] == 0xff
                        && g.raw[11] == 0xff;
                    v4 && matches!(ctx.query_gid_type(port, i), Ok(1))
                })
                .unwrap_or(0),
        };
        let gid = query(index)?;
        if gid.is_zero() {
            return Err(Error::Config(format!(
                "GID index {index} of port {port} is empty (no address configured on the \
                 network interface?); pick another with SMRDB_VERBS_GID"
            )));
        }
        Ok((index as u8, gid))
    }
}

impl Fabric for Verbs {
    type Endpoint = VerbsEndpoint;
    const KIND: FabricKind = FabricKind::Verbs;

    fn open(cfg: &FabricConfig, region_len: usize) -> Result<Self> {
        if region_len == 0 {
            return Err(Error::Config("region length must be > 0".into()));
        }
        let list = DeviceList::new().map_err(|e| Error::Verbs {
            op: "ibv_get_device_list",
            detail: format!(
                "{} (is libibverbs installed and an RDMA driver such as rdma_rxe loaded?)",
                chain(&e)
            ),
        })?;
        let names: Vec<String> = list.iter().map(|d| d.name()).collect();
        if names.is_empty() {
            return Err(Error::Verbs {
                op: "open device",
                detail: "no RDMA devices found (for Soft-RoCE: `rdma link add rxe0 type rxe netdev eth0`)".into(),
            });
        }
        let device = match &cfg.device {
            Some(want) => list
                .iter()
                .find(|d| d.name() == *want)
                .ok_or_else(|| Error::Verbs {
                    op: "open device",
                    detail: format!("device {want:?} not found; available: {}", names.join(", ")),
                })?,
            None => list.iter().next().ok_or_else(|| Error::Verbs {
                op: "open device",
                detail: "no RDMA devices found".into(),
            })?,
        };
        let name = device.name();
        let ctx = device.open().map_err(verbs_err("ibv_open_device"))?;
        drop(list); // contexts stay valid after the list is freed

        let dattr = ctx.query_device().map_err(verbs_err("ibv_query_device"))?;
        let ports = dattr.phys_port_cnt();
        if cfg.port == 0 || cfg.port > ports {
            return Err(Error::Config(format!(
                "port {} does not exist on {name} (it has {ports} port(s), numbered from 1)",
                cfg.port
            )));
        }
        let pattr = ctx
            .query_port(cfg.port)
            .map_err(verbs_err("ibv_query_port"))?;
        if pattr.port_state() != PortState::Active {
            return Err(Error::Verbs {
                op: "open device",
                detail: format!(
                    "port {} of {name} is {:?}, not active",
                    cfg.port,
                    pattr.port_state()
                ),
            });
        }
        let ethernet = pattr.link_layer() == LinkLayer::Ethernet;
        let (gid_index, gid) = Self::pick_gid(&ctx, cfg.port, pattr.gid_tbl_len(), cfg.gid_index)?;
        if !ethernet && pattr.lid() == 0 {
            return Err(Error::Verbs {
                op: "open device",
                detail: format!(
                    "InfiniBand port {} of {name} has no LID (is a subnet manager running?)",
                    cfg.port
                ),
            });
        }
        let dev_max = |v: i32| u32::try_from(v).unwrap_or(0).max(1);
        let depth = cfg
            .queue_depth
            .max(1)
            // A write-with-immediate takes two send requests, a credit return one more;
            // the CQ has room for all of them.
            .min(((dev_max(dattr.max_qp_wr()) - 1) / 2).max(1))
            .min(((dev_max(dattr.max_cqe()) - 1) / 2).max(1));
        let clamp8 = |v: i32| u8::try_from(v.clamp(0, 1)).unwrap_or(0);

        let pinned = Arc::new(Pinned::default());
        // Fail with a clear message before the mmap + registration would.
        crate::check_memlock(region_len as u64)?;
        let region = Arc::new(Region::anonymous(region_len)?);
        let pd = ctx.alloc_pd().map_err(verbs_err("ibv_alloc_pd"))?;
        // Local access only: the region MR is the lkey source of our own posts; peers
        // get rkeys of their window MRs alone.
        let local = Arc::new(Registered::new(
            &pd,
            &pinned,
            &region,
            0,
            region_len,
            AccessFlags::LocalWrite,
        )?);
        tracing::info!(
            device = %name, port = cfg.port, gid_index, gid = %Ipv6Addr::from(gid), depth,
            region_len, "verbs fabric open"
        );
        Ok(Verbs {
            local,
            pd,
            ctx,
            region,
            pinned,
            device: name,
            port: cfg.port,
            gid_index,
            gid,
            lid: pattr.lid(),
            ethernet,
            active_mtu: pattr.active_mtu(),
            depth,
            max_rd_atomic: clamp8(dattr.max_qp_init_rd_atom()),
            max_dest_rd_atomic: clamp8(dattr.max_qp_rd_atom()),
            timeout: cfg.connect_timeout.max(Duration::from_secs(1)),
        })
    }

    fn region(&self) -> &Arc<Region> {
        &self.region
    }

    fn establish(&self, mut ctl: Control, grant: Window) -> Result<VerbsEndpoint> {
        Window::check_range("granted window", grant.offset, grant.len, self.region.len())?;
        let peer = ctl.peer();
        let depth = self.depth as usize;

        // The peer's window into our region.
        let window = if grant.len > 0 {
            Some(Registered::new(
                &self.pd,
                &self.pinned,
                &self.region,
                grant.offset,
                grant.len,
                AccessFlags::LocalWrite | AccessFlags::RemoteWrite,
            )?)
        } else {
            None
        };
        // Our inbound mailbox (the credit word the peer's receiver writes, then the
        // ring the peer's sender writes): its own MR, granted to this peer only.
        let in_slots = depth.max(2);
        let mb_len = MB_RING + in_slots * SLOT;
        let mb_mem = Arc::new(Region::anonymous(mb_len)?);
        let mbox = Registered::new(
            &self.pd,
            &self.pinned,
            &mb_mem,
            0,
            mb_len,
            AccessFlags::LocalWrite | AccessFlags::RemoteWrite,
        )?;
        // Send staging slots, then the source word of our credit returns.
        let buf_len = depth * SLOT + 8;
        let buf_mem = Arc::new(Region::anonymous(buf_len)?);
        let bufs = Registered::new(
            &self.pd,
            &self.pinned,
            &buf_mem,
            0,
            buf_len,
            AccessFlags::LocalWrite,
        )?;

        // One basic CQ (ibv_poll_cq), not an extended one: rxe's ibv_end_poll after an
        // ibv_next_poll that found the queue empty advances the consumer index a second
        // time, which replays stale (zeroed) completions. It holds a completion for
        // every work request the send queue can hold (even the unsignaled ones, which
        // complete there when flushed with an error), so it never overruns.
        let sq = 2 * self.depth + 1;
        let cq: GenericCompletionQueue = {
            let mut b = self.ctx.create_cq_builder();
            b.setup_cqe(sq);
            b.build()
                .map(Into::into)
                .map_err(verbs_err("ibv_create_cq"))?
        };
        let build_qp = |inline: u32| {
            let mut b = self.pd.create_qp_builder();
            // A write-with-immediate takes two requests; one more for a credit return.
            b.setup_max_send_wr(sq)
                .setup_max_recv_wr(1)
                .setup_max_send_sge(1)
                .setup_max_recv_sge(1)
                .setup_max_inline_data(inline)
                .setup_send_cq(cq.clone())
                .setup_recv_cq(cq.clone());
            b.build().map_err(verbs_err("ibv_create_qp"))
        };
        // Inline slot writes when the device takes them (it refuses the QP otherwise).
        let mut qp = match build_qp(SLOT as u32) {
            Ok(qp) => qp,
            Err(e) => {
                tracing::debug!(error = %e, "no inline data: QP with max_inline_data {SLOT} refused");
                build_qp(0)?
            }
        };
        // What the device actually granted (0 when it cannot say).
        let dev_inline = qp
            .query(QueuePairAttributeMask::Capabilities)
            .map_or(0, |(_, init)| init.max_inline_data() as usize)
            .min(SLOT);
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(self.port)
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteWrite);
        qp.modify(&attr).map_err(verbs_err("modify QP to INIT"))?;

        let mut psn_bytes = [0u8; 4];
        getrandom::fill(&mut psn_bytes).map_err(|e| Error::Verbs {
            op: "random PSN",
            detail: e.to_string(),
        })?;
        let psn = u32::from_le_bytes(psn_bytes) & 0x00ff_ffff;
        let mine = Desc {
            version: WIRE_VERSION,
            qpn: qp.qp_number(),
            psn,
            lid: self.lid,
            gid: hex::encode(self.gid.raw),
            mtu: mtu_bytes(self.active_mtu),
            window: WireWindow {
                addr: window.as_ref().map_or(0, |w| w.addr(0)),
                rkey: window.as_ref().map_or(0, |w| w.mr.rkey()),
                len: grant.len as u64,
            },
            mailbox: WireMailbox {
                credit: mbox.addr(MB_CREDIT),
                ring: mbox.addr(MB_RING),
                rkey: mbox.mr.rkey(),
                slots: in_slots as u32,
                slot_len: SLOT as u32,
            },
        };
        ctl.set_read_timeout(Some(self.timeout))?;
        ctl.send(&mine)?;
        let theirs: Desc = ctl.recv("verbs descriptor")?;
        let remote = theirs.validate(peer, self.ethernet)?;

        let mut attr = QueuePairAttribute::new();
        let mut av = AddressHandleAttribute::new();
        av.setup_dest_lid(remote.lid)
            .setup_port(self.port)
            .setup_service_level(0)
            .setup_grh_src_gid_index(self.gid_index)
            .setup_grh_dest_gid(&remote.gid)
            .setup_grh_hop_limit(HOP_LIMIT);
        attr.setup_state(QueuePairState::ReadyToReceive)
            .setup_path_mtu(self.active_mtu.min(remote.mtu))
            .setup_dest_qp_num(remote.qpn)
            .setup_rq_psn(remote.psn)
            .setup_max_dest_read_atomic(self.max_dest_rd_atomic)
            .setup_min_rnr_timer(MIN_RNR_TIMER)
            .setup_address_vector(&av);
        qp.modify(&attr).map_err(verbs_err("modify QP to RTR"))?;
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::ReadyToSend)
            .setup_sq_psn(psn)
            .setup_timeout(ACK_TIMEOUT)
            .setup_retry_cnt(RETRY_CNT)
            .setup_rnr_retry(RNR_RETRY)
            .setup_max_read_atomic(self.max_rd_atomic);
        qp.modify(&attr).map_err(verbs_err("modify QP to RTS"))?;

        // Both QPs ready before either side posts anything.
        ctl.send(&Ready { ready: true })?;
        let r: Ready = ctl.recv("verbs ready")?;
        if !r.ready {
            return Err(Error::Protocol {
                peer,
                detail: "peer could not bring its queue pair up".into(),
            });
        }
        ctl.set_read_timeout(None)?;
        let live = Liveness::watch(ctl.into_stream(), peer)?;
        tracing::debug!(
            peer,
            qpn = mine.qpn,
            remote_qpn = remote.qpn,
            dev_inline,
            in_slots,
            out_slots = remote.mailbox.slots,
            "verbs endpoint up"
        );
        Ok(VerbsEndpoint {
            qp,
            cq,
            bufs,
            mbox,
            _window: window,
            local: self.local.clone(),
            live,
            peer,
            remote: remote.window,
            out: remote.mailbox,
            depth,
            slots: vec![None; depth],
            free: (0..depth as u32).rev().collect(),
            img: Box::new([0u8; SLOT]),
            quiet: Vec::new(),
            covers: vec![Vec::new(); depth],
            signaled: vec![false; depth],
            signaled_out: 0,
            wcs: vec![ZERO_WC; WC_BATCH],
            dev_inline,
            tail: 0,
            peer_head: 0,
            in_slots: in_slots as u64,
            head: 0,
            returned: 0,
            credit_busy: false,
            grant_len: grant.len,
            broken: None,
        })
    }
}

/// Work completions taken per `ibv_poll_cq` call.
const WC_BATCH: usize = 32;
// SAFETY: ibv_wc is plain old data (integers and an integer union); all zeroes is a
// valid value.
const ZERO_WC: ibv_wc = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };

/// Mailbox slot: `MAX_MSG` bytes of payload space, then a trailer
/// `seq (u64) | imm (u32) | len (u32) | kind (u32) | reserved (3 bytes) | valid (u8)`.
/// A message of `len` bytes is written as ONE RDMA WRITE of its payload right-aligned
/// against the trailer plus the trailer, so the valid byte is the last byte written.
const SLOT: usize = MAX_MSG + 24;
const T_SEQ: usize = MAX_MSG;
const T_IMM: usize = MAX_MSG + 8;
const T_LEN: usize = MAX_MSG + 12;
const T_KIND: usize = MAX_MSG + 16;
const T_VALID: usize = SLOT - 1;
const KIND_MSG: u32 = 1;
const KIND_IMM: u32 = 2;
/// Mailbox memory: the credit word (the consumer's head, written by the peer's
/// receiver into the sender's mailbox memory) on its own cache line, then the ring.
const MB_CREDIT: usize = 0;
const MB_RING: usize = 64;
/// Most ring slots a peer may announce.
const MAX_SLOTS: u32 = 1 << 16;
/// `wr_id` of the (single outstanding) credit-return WRITE; user requests carry their
/// send slot number, always below it.
const CREDIT_WR: u64 = u64::MAX;

const _: () = assert!(SLOT.is_multiple_of(8), "slots keep 8-byte alignment");

/// The valid byte of sequence number `seq` in a ring of `slots`: the lap number + 1
/// (mod 256), so the byte left by the previous lap (or the zeroed memory before the
/// first) never matches. A single byte cannot be torn.
fn valid_byte(seq: u64, slots: u64) -> u8 {
    ((seq / slots) as u8).wrapping_add(1)
}

/// Fills the trailer of the slot image `buf` (`SLOT` bytes).
fn put_trailer(buf: &mut [u8], seq: u64, kind: u32, len: u32, imm: u32, valid: u8) {
    buf[T_SEQ..T_SEQ + 8].copy_from_slice(&seq.to_le_bytes());
    buf[T_IMM..T_IMM + 4].copy_from_slice(&imm.to_le_bytes());
    buf[T_LEN..T_LEN + 4].copy_from_slice(&len.to_le_bytes());
    buf[T_KIND..T_KIND + 4].copy_from_slice(&kind.to_le_bytes());
    buf[T_KIND + 4..T_VALID].fill(0);
    buf[T_VALID] = valid;
}

/// What each side tells the other about its queue pair (JSON over the control
/// connection).
#[derive(Debug, Serialize, Deserialize)]
struct Desc {
    version: u8,
    qpn: u32,
    psn: u32,
    lid: u16,
    /// 16 bytes, hex.
    gid: String,
    /// Active MTU in bytes.
    mtu: u32,
    window: WireWindow,
    mailbox: WireMailbox,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct WireWindow {
    addr: u64,
    rkey: u32,
    len: u64,
}

/// The inbound mailbox a side grants its peer: the ring its messages go to and the
/// word its credit returns go to, under one rkey.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct WireMailbox {
    credit: u64,
    ring: u64,
    rkey: u32,
    slots: u32,
    slot_len: u32,
}

#[derive(Serialize, Deserialize)]
struct Ready {
    ready: bool,
}

/// A validated peer descriptor.
struct RemoteQp {
    qpn: u32,
    psn: u32,
    lid: u16,
    gid: Gid,
    mtu: Mtu,
    window: RemoteWindow,
    mailbox: RemoteMailbox,
}

/// The window the peer granted us.
#[derive(Debug, Clone, Copy)]
struct RemoteWindow {
    addr: u64,
    rkey: u32,
    len: usize,
}

/// The peer's inbound mailbox (validated).
#[derive(Debug, Clone, Copy)]
struct RemoteMailbox {
    credit: u64,
    ring: u64,
    rkey: u32,
    slots: u64,
}

impl Desc {
    fn validate(&self, peer: NodeId, ethernet: bool) -> Result<RemoteQp> {
        let bad = |detail: String| Error::Protocol { peer, detail };
        if self.version != WIRE_VERSION {
            return Err(bad(format!(
                "verbs descriptor of wire version {} (ours {WIRE_VERSION})",
                self.version
            )));
        }
        if self.qpn > 0x00ff_ffff || self.psn > 0x00ff_ffff {
            return Err(bad(format!(
                "QP number {:#x} / PSN {:#x} exceed 24 bits",
                self.qpn, self.psn
            )));
        }
        let raw: [u8; 16] = hex::decode(&self.gid)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| bad(format!("GID {:?} is not 16 hex-encoded bytes", self.gid)))?;
        let gid = Gid { raw };
        if ethernet && gid.is_zero() {
            return Err(bad("zero GID on a RoCE port".into()));
        }
        if !ethernet && self.lid == 0 {
            return Err(bad("LID 0 on an InfiniBand port".into()));
        }
        let mtu = mtu_from_bytes(self.mtu)
            .ok_or_else(|| bad(format!("MTU {} is not 256..4096", self.mtu)))?;
        let w = self.window;
        let len = usize::try_from(w.len)
            .map_err(|_| bad(format!("window length {} too large", w.len)))?;
        if w.addr.checked_add(w.len).is_none() {
            return Err(bad(format!("window {:#x} + {} overflows", w.addr, w.len)));
        }
        let m = self.mailbox;
        if m.slot_len != SLOT as u32 || m.slots == 0 || m.slots > MAX_SLOTS {
            return Err(bad(format!(
                "mailbox of {} slots of {} bytes (want 1..={MAX_SLOTS} of {SLOT})",
                m.slots, m.slot_len
            )));
        }
        let ring_len = u64::from(m.slots) * SLOT as u64;
        if m.ring.checked_add(ring_len).is_none() || m.credit.checked_add(8).is_none() {
            return Err(bad(format!(
                "mailbox ring {:#x} / credit word {:#x} overflows",
                m.ring, m.credit
            )));
        }
        Ok(RemoteQp {
            qpn: self.qpn,
            psn: self.psn,
            lid: self.lid,
            gid,
            mtu,
            window: RemoteWindow {
                addr: w.addr,
                rkey: w.rkey,
                len,
            },
            mailbox: RemoteMailbox {
                credit: m.credit,
                ring: m.ring,
                rkey: m.rkey,
                slots: u64::from(m.slots),
            },
        })
    }
}

/// Why an endpoint stopped working.
#[derive(Debug, Clone)]
enum Broken {
    Lost(String),
    Verbs(&'static str, String),
    Protocol(String),
}

impl Broken {
    fn error(&self, peer: NodeId) -> Error {
        match self {
            Broken::Lost(reason) => Error::PeerLost {
                peer,
                reason: reason.clone(),
            },
            Broken::Verbs(op, detail) => Error::Verbs {
                op,
                detail: detail.clone(),
            },
            Broken::Protocol(detail) => Error::Protocol {
                peer,
                detail: detail.clone(),
            },
        }
    }
}

/// One RDMA WRITE work request: `sge` is (lkey, addr, len) (`len == 0` posts no
/// scatter/gather entry), `inline` sends the bytes at `addr` inline (the provider copies
/// them during the post), `remote` is (address, rkey).
struct WriteWr {
    sge: (u32, u64, usize),
    inline: bool,
    signaled: bool,
    remote: (u64, u32),
    wr_id: u64,
}

/// The trailer fields of a mailbox slot that say what it carries.
#[derive(Clone, Copy)]
struct SlotTrailer {
    kind: u32,
    len: u32,
    imm: u32,
}

/// A connection to one peer over an RC queue pair.
pub struct VerbsEndpoint {
    // Field order is drop order: QP, CQ, MRs (+ their memory), then the control
    // connection.
    qp: BasicQueuePair,
    /// Completions of the send queue (there are no receives).
    cq: GenericCompletionQueue,
    /// `depth` send staging slots of `SLOT` bytes, then the credit source word.
    bufs: Registered,
    /// Our inbound mailbox: credit word, then `in_slots` ring slots.
    mbox: Registered,
    /// The MR over the window we granted the peer (`None` for an empty grant).
    _window: Option<Registered>,
    /// The fabric's region MR (lkey of our writes' sources).
    local: Arc<Registered>,
    live: Liveness,
    peer: NodeId,
    remote: RemoteWindow,
    /// The peer's inbound mailbox (where our messages go).
    out: RemoteMailbox,
    depth: usize,
    /// The caller's `wr_id` of the work request occupying each send slot.
    slots: Vec<Option<u64>>,
    /// Free send slots.
    free: Vec<u32>,
    /// Scratch for the image of an inline slot.
    img: Box<[u8; SLOT]>,
    /// Slots of quiet (unsignaled) messages posted since the last signaled request.
    quiet: Vec<u32>,
    /// Per send slot of a signaled request: the quiet slots its completion frees too
    /// (a send queue completes in order).
    covers: Vec<Vec<u32>>,
    /// Whether the request in each send slot was signaled.
    signaled: Vec<bool>,
    /// Signaled requests not completed yet (the CQ is polled only while there are).
    signaled_out: usize,
    /// Work completions of one `ibv_poll_cq` (scratch, reused by every poll).
    wcs: Vec<ibv_wc>,
    /// Inline data the device granted (0: none).
    dev_inline: usize,
    /// Sequence number of our next message into the peer's ring.
    tail: u64,
    /// The peer's consumed head as last read from our credit word.
    peer_head: u64,
    /// Slots of our inbound ring.
    in_slots: u64,
    /// Sequence number of the next slot we consume.
    head: u64,
    /// The head we last sent back to the peer.
    returned: u64,
    /// A credit return is in flight (its source word must stay put).
    credit_busy: bool,
    /// Length of the window we granted (bound of a write-with-immediate notice).
    grant_len: usize,
    broken: Option<Broken>,
}

impl std::fmt::Debug for VerbsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerbsEndpoint")
            .field("peer", &self.peer)
            .field("qpn", &self.qp.qp_number())
            .field("remote_len", &self.remote.len)
            .field("depth", &self.depth)
            .field("outstanding", &(self.depth - self.free.len()))
            .field("tail", &self.tail)
            .field("head", &self.head)
            .field("broken", &self.broken)
            .finish()
    }
}

impl VerbsEndpoint {
    /// Messages up to this many bytes go out as inline data (copied into the work
    /// request by `ibv_post_send`, together with the slot trailer); 0 when the device
    /// grants too little inline data. Longer ones are staged in a registered slot.
    pub fn max_inline(&self) -> usize {
        self.dev_inline.saturating_sub(SLOT - MAX_MSG).min(MAX_MSG)
    }

    fn usable(&mut self) -> Result<()> {
        if let Some(b) = &self.broken {
            return Err(b.error(self.peer));
        }
        if let Err(e) = self.live.check() {
            self.broken = Some(Broken::Lost(e.to_string()));
            return Err(e);
        }
        Ok(())
    }

    fn break_with(&mut self, b: Broken) -> Error {
        let e = b.error(self.peer);
        self.broken = Some(b);
        e
    }

    /// Posts one RDMA WRITE; returns `ibv_post_send`'s error number.
    fn post_raw(&mut self, w: WriteWr) -> std::result::Result<(), i32> {
        let (lkey, addr, len) = w.sge;
        let mut sge = ibv_sge {
            addr,
            length: len as u32,
            lkey,
        };
        // SAFETY: ibv_send_wr is plain old data (integers, nullable raw pointers and
        // unions of those); all zeroes is a valid, empty request.
        let mut wr: ibv_send_wr = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
        wr.wr_id = w.wr_id;
        let mut flags = 0;
        if w.signaled {
            flags |= ibv_send_flags::IBV_SEND_SIGNALED.0;
        }
        if len > 0 {
            wr.sg_list = &mut sge;
            wr.num_sge = 1;
            if w.inline {
                debug_assert!(len <= self.dev_inline);
                flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
        }
        wr.send_flags = flags;
        wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
        wr.wr.rdma.remote_addr = w.remote.0;
        wr.wr.rdma.rkey = w.remote.1;
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP is alive (owned by self). The request and its SGE are valid for
        // the call (the provider copies them, and inline bytes too). The caller checked
        // that a non-inline [addr, addr+len) lies inside the MR whose lkey this is, and
        // the bytes stay put until the completion (the caller's contract for writes, a
        // reserved staging slot or the idle credit word otherwise).
        let rc = unsafe { ibv_post_send(self.qp.qp().as_ptr(), &mut wr, &mut bad) };
        if rc == 0 {
            Ok(())
        } else {
            Err(rc.abs())
        }
    }

    fn post_error(&self, rc: i32) -> Error {
        if rc == libc::ENOMEM {
            Error::Full { depth: self.depth }
        } else {
            Error::Verbs {
                op: "ibv_post_send",
                detail: std::io::Error::from_raw_os_error(rc).to_string(),
            }
        }
    }

    /// Reserves a send slot and a slot of the peer's ring (re-reading the credit word
    /// the peer returns its head into when the ring looks full).
    fn reserve(&mut self) -> Result<u32> {
        if self.free.is_empty() {
            return Err(Error::Full { depth: self.depth });
        }
        if self.tail - self.peer_head >= self.out.slots {
            // SAFETY: the credit word lies inside the mailbox memory (MB_CREDIT + 8 <=
            // MB_RING), 8-byte aligned (page-aligned mapping); the peer's NIC writes it,
            // we only read it, atomically.
            let word =
                unsafe { AtomicU64::from_ptr(self.mbox.mem.as_ptr().add(MB_CREDIT) as *mut u64) };
            let head = word.load(Ordering::Acquire);
            if head < self.peer_head || head > self.tail {
                let b = Broken::Protocol(format!(
                    "credit return {head} outside [{}, {}]",
                    self.peer_head, self.tail
                ));
                return Err(self.break_with(b));
            }
            self.peer_head = head;
            if self.tail - self.peer_head >= self.out.slots {
                return Err(Error::Full { depth: self.depth });
            }
        }
        Ok(self.free.pop().expect("checked non-empty"))
    }

    /// Writes one slot (payload `data` for a message, empty for a notice) into the
    /// peer's ring with send slot `slot`, reporting `wr_id` when it completes (`quiet`:
    /// unsignaled when it can be, see [`Endpoint::post_send`] here).
    fn post_slot(
        &mut self,
        slot: u32,
        wr_id: u64,
        data: &[u8],
        t: SlotTrailer,
        quiet: bool,
    ) -> Result<()> {
        let SlotTrailer { kind, len, imm } = t;
        let seq = self.tail;
        let valid = valid_byte(seq, self.out.slots);
        let n = data.len() + (SLOT - MAX_MSG);
        let start = MAX_MSG - data.len();
        let remote = self
            .out
            .ring
            .wrapping_add((seq % self.out.slots) * SLOT as u64 + start as u64);
        let inline_fits = n <= self.dev_inline;
        // Only an inline message may go unsignaled: a staged one's slot buffer must
        // come back by its own completion.
        let quiet = quiet && inline_fits;
        let (sge, inline) = if inline_fits {
            // Built in the endpoint's scratch slot (only the bytes sent are written: no
            // per-message clearing); the provider copies them into the work request.
            let img = &mut self.img;
            img[start..MAX_MSG].copy_from_slice(data);
            put_trailer(&mut img[..], seq, kind, len, imm, valid);
            (
                (self.bufs.mr.lkey(), img.as_ptr() as u64 + start as u64, n),
                true,
            )
        } else {
            let off = slot as usize * SLOT;
            // SAFETY: staging slot `slot` is free: the work request that last used it
            // has completed, so the NIC no longer reads it and nothing else refers to it.
            let dst = unsafe { self.bufs.mem.bytes_mut(self.bufs.offset + off, SLOT) }?;
            dst[start..MAX_MSG].copy_from_slice(data);
            put_trailer(dst, seq, kind, len, imm, valid);
            ((self.bufs.mr.lkey(), self.bufs.addr(off + start), n), false)
        };
        let w = WriteWr {
            sge,
            inline,
            signaled: !quiet,
            remote: (remote, self.out.rkey),
            wr_id: u64::from(slot),
        };
        match self.post_raw(w) {
            Ok(()) => {
                self.tail += 1;
                self.slots[slot as usize] = Some(wr_id);
                self.posted(slot, !quiet);
                Ok(())
            }
            Err(rc) => {
                self.free.push(slot);
                Err(self.post_error(rc))
            }
        }
    }

    /// Books a posted request in send slot `slot`: a quiet one waits for the next
    /// signaled one, whose completion frees it too.
    fn posted(&mut self, slot: u32, signaled: bool) {
        self.signaled[slot as usize] = signaled;
        if signaled {
            self.signaled_out += 1;
            let covered = std::mem::take(&mut self.quiet);
            self.covers[slot as usize] = covered;
        } else {
            self.quiet.push(slot);
        }
    }

    fn write(
        &mut self,
        imm: Option<u32>,
        local_off: usize,
        len: usize,
        remote_off: usize,
        wr_id: u64,
        check_remote: bool,
    ) -> Result<()> {
        self.usable()?;
        self.local.mem.check(local_off, len)?;
        if check_remote {
            Window::check_range("remote window", remote_off, len, self.remote.len)?;
        }
        if len > MAX_WRITE {
            return Err(Error::Config(format!(
                "write of {len} bytes exceeds the {MAX_WRITE}-byte RDMA message limit"
            )));
        }
        let slot = match imm {
            Some(_) => self.reserve()?,
            None => self.free.pop().ok_or(Error::Full { depth: self.depth })?,
        };
        let sge = (self.local.mr.lkey(), self.local.addr(local_off), len);
        let remote_addr = self.remote.addr.wrapping_add(remote_off as u64);
        let Some(imm) = imm else {
            let w = WriteWr {
                sge,
                inline: false,
                signaled: true,
                remote: (remote_addr, self.remote.rkey),
                wr_id: u64::from(slot),
            };
            return match self.post_raw(w) {
                Ok(()) => {
                    self.slots[slot as usize] = Some(wr_id);
                    self.posted(slot, true);
                    Ok(())
                }
                Err(rc) => {
                    self.free.push(slot);
                    Err(self.post_error(rc))
                }
            };
        };
        // Write-with-immediate: the data (unsignaled: the notice's completion covers
        // it; an error still completes, under the same slot), then a notice slot in
        // the peer's ring, placed after the data.
        if len > 0 {
            let w = WriteWr {
                sge,
                inline: false,
                signaled: false,
                remote: (remote_addr, self.remote.rkey),
                wr_id: u64::from(slot),
            };
            if let Err(rc) = self.post_raw(w) {
                self.free.push(slot);
                return Err(self.post_error(rc));
            }
        }
        let t = SlotTrailer {
            kind: KIND_IMM,
            len: len as u32,
            imm,
        };
        match self.post_slot(slot, wr_id, &[], t, false) {
            Ok(()) => Ok(()),
            // The data write is on the wire with no completion to report it: the
            // endpoint cannot keep its promises any more.
            Err(e) if len > 0 => Err(self.break_with(Broken::Verbs(
                "ibv_post_send",
                format!("write-with-immediate notice not posted after its data: {e}"),
            ))),
            Err(e) => Err(e),
        }
    }

    /// Posts an RDMA WRITE without checking the remote range against the window the
    /// peer granted (tests play a hostile peer with it: the peer's NIC refuses it with a
    /// remote access error that breaks the connection).
    ///
    /// # Errors
    /// As [`Endpoint::post_write`] minus the remote range check.
    #[doc(hidden)]
    pub fn test_post_write_unchecked(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        wr_id: u64,
    ) -> Result<()> {
        self.write(None, local_off, len, remote_off, wr_id, false)
    }

    /// Writes raw `bytes` at `off` into the peer's mailbox ring (tests play a hostile
    /// peer with it: a malformed slot must break the receiver's endpoint).
    ///
    /// # Errors
    /// [`Error::Full`], [`Error::Config`] when the range is outside the ring.
    #[doc(hidden)]
    pub fn test_post_mailbox_raw(&mut self, off: usize, bytes: &[u8], wr_id: u64) -> Result<()> {
        self.usable()?;
        Window::check_range(
            "peer mailbox",
            off,
            bytes.len(),
            self.out.slots as usize * SLOT,
        )?;
        if bytes.len() > SLOT {
            return Err(Error::Config("at most one slot".into()));
        }
        let slot = self.free.pop().ok_or(Error::Full { depth: self.depth })?;
        let so = slot as usize * SLOT;
        // SAFETY: staging slot `slot` is free (see post_slot).
        let dst = unsafe { self.bufs.mem.bytes_mut(self.bufs.offset + so, bytes.len()) }?;
        dst.copy_from_slice(bytes);
        let w = WriteWr {
            sge: (self.bufs.mr.lkey(), self.bufs.addr(so), bytes.len()),
            inline: false,
            signaled: true,
            remote: (self.out.ring.wrapping_add(off as u64), self.out.rkey),
            wr_id: u64::from(slot),
        };
        match self.post_raw(w) {
            Ok(()) => {
                self.slots[slot as usize] = Some(wr_id);
                Ok(())
            }
            Err(rc) => {
                self.free.push(slot);
                Err(self.post_error(rc))
            }
        }
    }

    /// Consumes every filled slot of our inbound ring into `out`.
    fn poll_mailbox(&mut self, out: &mut Vec<Event>) -> std::result::Result<(), Broken> {
        loop {
            let i = (self.head % self.in_slots) as usize;
            let base = self.mbox.offset + MB_RING + i * SLOT;
            // SAFETY: the valid byte lies inside the mailbox memory (slot i < in_slots);
            // the peer's NIC writes it, we read it atomically (a byte cannot tear).
            let valid = unsafe {
                AtomicU8::from_ptr(self.mbox.mem.as_ptr().add(base + T_VALID))
                    .load(Ordering::Acquire)
            };
            if valid != valid_byte(self.head, self.in_slots) {
                return Ok(());
            }
            // The NIC places a WRITE's bytes in order: with the last byte present, the
            // whole slot is (and the bytes of every earlier WRITE on the QP).
            // SAFETY: the slot lies inside the mailbox memory; the peer does not write
            // it again before we return its slot in a credit (after this copy). A
            // hostile peer may scribble on it meanwhile: every field is validated.
            let s = unsafe { self.mbox.mem.bytes(base, SLOT) }
                .map_err(|e| Broken::Protocol(e.to_string()))?;
            let u32_at = |o: usize| u32::from_le_bytes(s[o..o + 4].try_into().expect("4 bytes"));
            let seq = u64::from_le_bytes(s[T_SEQ..T_SEQ + 8].try_into().expect("8 bytes"));
            let (kind, len, imm) = (u32_at(T_KIND), u32_at(T_LEN), u32_at(T_IMM));
            if seq != self.head {
                return Err(Broken::Protocol(format!(
                    "mailbox slot {i}: sequence {seq}, expected {}",
                    self.head
                )));
            }
            match kind {
                KIND_MSG if len as usize <= MAX_MSG => {
                    let m = Msg::new(&s[MAX_MSG - len as usize..MAX_MSG])
                        .map_err(|e| Broken::Protocol(e.to_string()))?;
                    out.push(Event::Message(m));
                }
                KIND_MSG => {
                    return Err(Broken::Protocol(format!(
                        "message of {len} bytes exceeds {MAX_MSG}"
                    )))
                }
                KIND_IMM if len as usize <= self.grant_len => {
                    out.push(Event::WriteImm { imm, len });
                }
                KIND_IMM => {
                    return Err(Broken::Protocol(format!(
                        "write-with-immediate notice of {len} bytes exceeds the {}-byte window",
                        self.grant_len
                    )))
                }
                k => {
                    return Err(Broken::Protocol(format!(
                        "mailbox slot {i}: unknown kind {k}"
                    )))
                }
            }
            self.head += 1;
        }
    }

    /// Returns our consumed head to the peer (an 8-byte RDMA WRITE into its credit
    /// word) once a quarter of the ring was consumed since the last return, and no
    /// return is in flight.
    fn return_credit(&mut self) -> std::result::Result<(), Broken> {
        if self.credit_busy || self.head - self.returned < (self.in_slots / 4).max(1) {
            return Ok(());
        }
        let head = self.head;
        let word_off = self.depth * SLOT;
        // SAFETY: the credit source word lies inside `bufs` (its last 8 bytes); no
        // credit write is in flight (credit_busy is false), so the NIC does not read it.
        let dst = unsafe { self.bufs.mem.bytes_mut(self.bufs.offset + word_off, 8) }
            .map_err(|e| Broken::Protocol(e.to_string()))?;
        dst.copy_from_slice(&head.to_le_bytes());
        let w = WriteWr {
            sge: (self.bufs.mr.lkey(), self.bufs.addr(word_off), 8),
            inline: self.dev_inline >= 8,
            signaled: true,
            remote: (self.out.credit, self.out.rkey),
            wr_id: CREDIT_WR,
        };
        // The send queue keeps one request free for this.
        self.post_raw(w).map_err(|rc| {
            Broken::Verbs(
                "ibv_post_send",
                format!("credit return: {}", std::io::Error::from_raw_os_error(rc)),
            )
        })?;
        self.credit_busy = true;
        self.returned = head;
        Ok(())
    }

    /// Drains the completion queue into `out`.
    fn poll_cq(&mut self, out: &mut Vec<Event>) -> std::result::Result<(), Broken> {
        let mut failure: Option<Broken> = None;
        loop {
            // SAFETY: the CQ is alive (owned by self); `wcs` has room for WC_BATCH
            // completions.
            let n = unsafe {
                ibv_poll_cq(
                    self.cq.cq().as_ptr(),
                    WC_BATCH as i32,
                    self.wcs.as_mut_ptr(),
                )
            };
            if n < 0 {
                return Err(Broken::Verbs(
                    "ibv_poll_cq",
                    std::io::Error::from_raw_os_error(n.abs()).to_string(),
                ));
            }
            let n = n as usize;
            for k in 0..n {
                let wc = self.wcs[k];
                self.send_completion(&wc, out, &mut failure);
            }
            if failure.is_some() || n < WC_BATCH {
                break;
            }
        }
        match failure {
            Some(b) => Err(b),
            None => Ok(()),
        }
    }

    /// One send queue completion: frees its slot and reports the caller's `wr_id`.
    fn send_completion(&mut self, wc: &ibv_wc, out: &mut Vec<Event>, failure: &mut Option<Broken>) {
        let status = wc.status;
        if wc.wr_id == CREDIT_WR {
            self.credit_busy = false;
            if status != WorkCompletionStatus::Success as u32 {
                failure.get_or_insert_with(|| {
                    Broken::Verbs(
                        "work completion",
                        format!(
                            "{} on send queue, credit return, vendor_err {:#x}",
                            wc_status_name(status),
                            wc.vendor_err
                        ),
                    )
                });
            }
            return;
        }
        let slot = usize::try_from(wc.wr_id).ok().filter(|&s| s < self.depth);
        let user = slot.and_then(|s| self.slots[s].take());
        if let (Some(s), Some(_)) = (slot, user) {
            self.free.push(s as u32);
            // The quiet messages posted before it are done too (their completions are
            // not reported: they were posted with wr_id 0). An error completion of a
            // quiet request itself has no cover and breaks the endpoint below.
            if self.signaled[s] {
                self.signaled_out = self.signaled_out.saturating_sub(1);
            }
            for c in std::mem::take(&mut self.covers[s]) {
                if self.slots[c as usize].take().is_some() {
                    self.free.push(c);
                }
            }
        }
        if status != WorkCompletionStatus::Success as u32 {
            failure.get_or_insert_with(|| {
                let id = user.map_or_else(|| format!("internal {}", wc.wr_id), |u| u.to_string());
                Broken::Verbs(
                    "work completion",
                    format!(
                        "{} on send queue, wr_id {id}, vendor_err {:#x}",
                        wc_status_name(status),
                        wc.vendor_err
                    ),
                )
            });
            return;
        }
        match user {
            Some(wr_id) => out.push(Event::Completed { wr_id }),
            None => {
                failure.get_or_insert_with(|| {
                    Broken::Verbs(
                        "work completion",
                        format!("send completion for unknown slot {}", wc.wr_id),
                    )
                });
            }
        }
    }

    /// Marks the endpoint broken. When the control connection is gone too, the peer
    /// is what failed: report [`Error::PeerLost`] (a QP error is its usual symptom).
    fn fail(&mut self, b: Broken) -> Error {
        if let Err(Error::PeerLost { reason, .. }) = self.live.check() {
            let detail = match &b {
                Broken::Verbs(op, d) => format!("{op}: {d}"),
                Broken::Protocol(d) | Broken::Lost(d) => d.clone(),
            };
            return self.break_with(Broken::Lost(format!("{reason} ({detail})")));
        }
        self.break_with(b)
    }
}

impl Endpoint for VerbsEndpoint {
    fn peer(&self) -> NodeId {
        self.peer
    }

    fn remote_len(&self) -> usize {
        self.remote.len
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
        self.write(None, local_off, len, remote_off, wr_id, true)
    }

    fn post_write_imm(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: u32,
        wr_id: u64,
    ) -> Result<()> {
        self.write(Some(imm), local_off, len, remote_off, wr_id, true)
    }

    fn post_send(&mut self, msg: &[u8], wr_id: u64) -> Result<()> {
        crate::check_msg(msg)?;
        self.usable()?;
        let slot = self.reserve()?;
        // A message with wr_id 0 wants no completion: posted unsignaled (inline), as
        // perftest's write_lat does, so neither side of a ping-pong touches the CQ;
        // one in depth/4 is signaled so that the slots come back.
        let quiet = wr_id == 0 && self.quiet.len() + 1 < (self.depth / 4).max(1);
        let t = SlotTrailer {
            kind: KIND_MSG,
            len: msg.len() as u32,
            imm: 0,
        };
        self.post_slot(slot, wr_id, msg, t, quiet)
    }

    fn poll(&mut self, out: &mut Vec<Event>) -> Result<usize> {
        if let Some(b) = &self.broken {
            return Err(b.error(self.peer));
        }
        let before = out.len();
        // The CQ only when something is outstanding: an idle spin then reads one byte
        // of the ring per poll, as perftest's write_lat does (a completion, even an
        // error one, exists only for a posted request).
        let outstanding = self.signaled_out > 0 || self.credit_busy;
        let r = self
            .poll_mailbox(out)
            .and_then(|()| {
                if outstanding {
                    self.poll_cq(out)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| self.return_credit());
        if let Err(b) = r {
            return Err(self.fail(b));
        }
        let n = out.len() - before;
        if n == 0 {
            if let Err(e) = self.live.check() {
                self.broken = Some(Broken::Lost(e.to_string()));
                return Err(e);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_never_panic() {
        assert_eq!(wc_status_name(0), "IBV_WC_SUCCESS");
        assert_eq!(
            wc_status_name(WorkCompletionStatus::RemoteAccessError as u32),
            "IBV_WC_REM_ACCESS_ERR"
        );
        assert_eq!(wc_status_name(999), "unknown status 999");
    }

    fn desc() -> Desc {
        Desc {
            version: WIRE_VERSION,
            qpn: 17,
            psn: 5,
            lid: 0,
            gid: hex::encode([0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 2, 15]),
            mtu: 1024,
            window: WireWindow {
                addr: 4096,
                rkey: 9,
                len: 8192,
            },
            mailbox: WireMailbox {
                credit: 1 << 20,
                ring: (1 << 20) + 64,
                rkey: 10,
                slots: 256,
                slot_len: SLOT as u32,
            },
        }
    }

    #[test]
    fn descriptor_validation() {
        assert!(desc().validate(1, true).is_ok());
        let bad = |f: fn(&mut Desc)| {
            let mut d = desc();
            f(&mut d);
            matches!(d.validate(1, true), Err(Error::Protocol { .. }))
        };
        assert!(bad(|d| d.version = 99));
        assert!(bad(|d| d.qpn = 1 << 24));
        assert!(bad(|d| d.psn = u32::MAX));
        assert!(bad(|d| d.gid = "zz".into()));
        assert!(bad(|d| d.gid = hex::encode([0u8; 16])));
        assert!(bad(|d| d.mtu = 1500));
        assert!(bad(|d| d.window.addr = u64::MAX));
        assert!(bad(|d| d.mailbox.slots = 0));
        assert!(bad(|d| d.mailbox.slots = MAX_SLOTS + 1));
        assert!(bad(|d| d.mailbox.slot_len = 16));
        assert!(bad(|d| d.mailbox.ring = u64::MAX - 100));
        assert!(bad(|d| d.mailbox.credit = u64::MAX - 2));
        // InfiniBand needs a LID.
        assert!(matches!(
            desc().validate(1, false),
            Err(Error::Protocol { .. })
        ));
    }

    #[test]
    fn mtu_round_trip() {
        for m in [
            Mtu::Mtu256,
            Mtu::Mtu512,
            Mtu::Mtu1024,
            Mtu::Mtu2048,
            Mtu::Mtu4096,
        ] {
            assert_eq!(mtu_from_bytes(mtu_bytes(m)), Some(m));
        }
    }
}
