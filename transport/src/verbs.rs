//! The `verbs` fabric: rdma-core verbs (through the `sideway` crate) on a real RDMA NIC
//! or Soft-RoCE (`rxe`).
//!
//! * [`Verbs::open`] opens the device, allocates the node's [`Region`] and registers ONE
//!   memory region (MR) over all of it with local access only. It is the `lkey` source
//!   of every local post; its `rkey` is never given to anybody.
//! * [`Fabric::establish`] registers a SEPARATE MR over just the granted [`Window`]
//!   (remote write) and hands the peer only that window's address, rkey and length, so
//!   a peer can write into its own ring and nowhere else. It creates one reliable
//!   connected (RC) queue pair with ONE completion queue for both its queues (one
//!   `ibv_poll_cq` per [`Endpoint::poll`]; receive `wr_id`s carry a tag bit, since an
//!   error completion's opcode is undefined), a registered block of send staging slots
//!   and receive buffers (`depth × MAX_MSG` each; every receive is posted up front, and
//!   a consumed one is reposted at the start of the next poll, after its contents were
//!   copied into an [`Event`]), exchanges the QP descriptors over the authenticated control
//!   connection, moves the QP INIT → RTR → RTS, and waits until the peer has done the
//!   same before returning (so nothing is sent to a QP that cannot receive yet).
//! * [`Endpoint::post_write`] is an RDMA WRITE, [`Endpoint::post_write_imm`] an RDMA
//!   WRITE_WITH_IMM (consumes one of the peer's posted receives and shows up there as
//!   [`Event::WriteImm`]), [`Endpoint::post_send`] a SEND of at most [`MAX_MSG`] bytes,
//!   sent as inline data when the device granted that much at QP creation (we ask for
//!   [`MAX_MSG`]; a device that refuses gets a QP without inline data), otherwise copied
//!   into a registered staging slot. Every work request is signaled, so every `wr_id`
//!   comes back as exactly one [`Event::Completed`].
//! * The data path calls `ibv_post_send`, `ibv_post_recv` and `ibv_poll_cq` directly
//!   (through sideway's `rdma-mummy-sys`) with requests on the stack and a reused
//!   completion array: sideway's wrappers allocate on every post and poll, which on
//!   Soft-RoCE under emulation cost a measurable part of a message's latency.
//!
//! ## Ordering
//!
//! All operations of an endpoint go through one RC queue pair. RC delivers and executes
//! requests in order at the responder, and a receive completion (SEND, or the notice of
//! a WRITE_WITH_IMM) is generated only after the data of every earlier request on the
//! same QP has been placed in memory. So a message (or write-with-immediate notice)
//! posted after a write is never observed by the peer before the written bytes: exactly
//! the guarantee the router relies on.
//!
//! ## Flow control and failure
//!
//! A slow receiver that has no receive posted answers with an RNR NAK; the QP is set up
//! with `rnr_retry = 7` (retry forever), so that only delays the sender. A failed work
//! completion (remote access error, retry exceeded, ...) is reported as
//! [`Error::Verbs`] with op `"work completion"` and a detail naming the status, the
//! `wr_id` and the vendor error; the endpoint is broken afterwards. A peer whose control
//! connection closes (it dropped the endpoint or died) becomes [`Error::PeerLost`].
//!
//! ## Limits
//!
//! One write moves at most 2 GiB (the InfiniBand message size limit); larger writes are
//! refused with [`Error::Config`]. Inline data is used for SENDs only, never for writes
//! (their sources are in the registered region anyway).
//!
//! ## Resource lifetime
//!
//! Each verbs object holds an `Arc` to what it was created from (QP → CQs + PD, MR → PD,
//! PD → device context), and an endpoint's fields are declared in destruction order, so
//! the QP is destroyed before its CQs, the CQs before the MRs, the MRs before the PD and
//! the PD before the device context; a registered memory is unmapped only after its MR
//! is deregistered.

use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdma_mummy_sys::{
    ibv_poll_cq, ibv_post_recv, ibv_post_send, ibv_recv_wr, ibv_send_flags, ibv_send_wr, ibv_sge,
    ibv_wc, ibv_wc_opcode, ibv_wr_opcode,
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
            .min(dev_max(dattr.max_qp_wr()))
            // Sends and receives share one CQ of 2 × depth entries.
            .min((dev_max(dattr.max_cqe()) / 2).max(1));
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
        // Send staging slots, then receive buffers.
        let buf_len = 2 * depth * MAX_MSG;
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
        // time, which replays stale (zeroed) completions. Sends and receives share it
        // (one poll per `Endpoint::poll`); it holds a completion for every send and
        // every receive that can be outstanding, so it never overruns.
        let cq: GenericCompletionQueue = {
            let mut b = self.ctx.create_cq_builder();
            b.setup_cqe(2 * self.depth);
            b.build()
                .map(Into::into)
                .map_err(verbs_err("ibv_create_cq"))?
        };
        let build_qp = |inline: u32| {
            let mut b = self.pd.create_qp_builder();
            b.setup_max_send_wr(self.depth)
                .setup_max_recv_wr(self.depth)
                .setup_max_send_sge(1)
                .setup_max_recv_sge(1)
                .setup_max_inline_data(inline)
                .setup_send_cq(cq.clone())
                .setup_recv_cq(cq.clone());
            b.build().map_err(verbs_err("ibv_create_qp"))
        };
        // Inline sends when the device takes them (it refuses the QP otherwise).
        let mut qp = match build_qp(MAX_MSG as u32) {
            Ok(qp) => qp,
            Err(e) => {
                tracing::debug!(error = %e, "no inline data: QP with max_inline_data {MAX_MSG} refused");
                build_qp(0)?
            }
        };
        // What the device actually granted (0 when it cannot say).
        let max_inline = qp
            .query(QueuePairAttributeMask::Capabilities)
            .map_or(0, |(_, init)| init.max_inline_data() as usize)
            .min(MAX_MSG);
        let mut attr = QueuePairAttribute::new();
        attr.setup_state(QueuePairState::Init)
            .setup_pkey_index(0)
            .setup_port(self.port)
            .setup_access_flags(AccessFlags::LocalWrite | AccessFlags::RemoteWrite);
        qp.modify(&attr).map_err(verbs_err("modify QP to INIT"))?;

        // Every receive buffer posted before the peer can send.
        let lkey = bufs.mr.lkey();
        for chunk in (0..depth as u32).collect::<Vec<_>>().chunks(WC_BATCH) {
            post_recvs(
                &qp,
                chunk,
                |i| bufs.addr((depth + i as usize) * MAX_MSG),
                lkey,
            )
            .map_err(|detail| Error::Verbs {
                op: "ibv_post_recv",
                detail,
            })?;
        }

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
            max_inline,
            "verbs endpoint up"
        );
        Ok(VerbsEndpoint {
            qp,
            cq,
            bufs,
            _window: window,
            local: self.local.clone(),
            live,
            peer,
            remote: remote.window,
            depth,
            slots: vec![None; depth],
            free: (0..depth as u32).rev().collect(),
            wcs: vec![ZERO_WC; WC_BATCH],
            repost: Vec::with_capacity(depth),
            max_inline,
            broken: None,
        })
    }
}

/// Work completions taken per `ibv_poll_cq` call.
const WC_BATCH: usize = 32;
/// Set in the `wr_id` of every receive work request (the low bits are the buffer
/// index); send work requests carry their slot number, always below it. The tag is the
/// only reliable way to tell the two apart: an error completion's opcode is undefined.
const RECV_TAG: u64 = 1 << 63;
// SAFETY: ibv_wc is plain old data (integers and an integer union); all zeroes is a
// valid value.
const ZERO_WC: ibv_wc = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };

/// Posts one receive of `MAX_MSG` bytes for each buffer index in `idx` (at most
/// [`WC_BATCH`]) in one `ibv_post_recv` call; `addr` gives a buffer's address in the
/// registered block whose lkey is `lkey`.
fn post_recvs(
    qp: &BasicQueuePair,
    idx: &[u32],
    addr: impl Fn(u32) -> u64,
    lkey: u32,
) -> std::result::Result<(), String> {
    let n = idx.len();
    if n == 0 {
        return Ok(());
    }
    assert!(n <= WC_BATCH, "at most {WC_BATCH} receives per post");
    let mut sges = [ibv_sge {
        addr: 0,
        length: 0,
        lkey: 0,
    }; WC_BATCH];
    let mut wrs = [ibv_recv_wr {
        wr_id: 0,
        next: std::ptr::null_mut(),
        sg_list: std::ptr::null_mut(),
        num_sge: 0,
    }; WC_BATCH];
    for (k, &i) in idx.iter().enumerate() {
        sges[k] = ibv_sge {
            addr: addr(i),
            length: MAX_MSG as u32,
            lkey,
        };
    }
    let sge_base = sges.as_mut_ptr();
    for (k, &i) in idx.iter().enumerate() {
        wrs[k].wr_id = RECV_TAG | u64::from(i);
        wrs[k].sg_list = sge_base.wrapping_add(k);
        wrs[k].num_sge = 1;
    }
    let base = wrs.as_mut_ptr();
    for k in 0..n - 1 {
        // SAFETY: k + 1 < n <= WC_BATCH: both requests lie inside `wrs`.
        unsafe { (*base.add(k)).next = base.add(k + 1) };
    }
    let mut bad: *mut ibv_recv_wr = std::ptr::null_mut();
    // SAFETY: the QP is alive (borrowed); the request list and its SGEs are valid
    // stack memory for the duration of the call (the provider copies them); each SGE
    // names a buffer inside a registered block that outlives the QP.
    let rc = unsafe { ibv_post_recv(qp.qp().as_ptr(), base, &mut bad) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc.abs()).to_string())
    }
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
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct WireWindow {
    addr: u64,
    rkey: u32,
    len: u64,
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
}

/// The window the peer granted us.
#[derive(Debug, Clone, Copy)]
struct RemoteWindow {
    addr: u64,
    rkey: u32,
    len: usize,
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

/// The operation of a send work request.
#[derive(Clone, Copy)]
enum Op {
    Write,
    WriteImm(u32),
    Send,
}

/// A connection to one peer over an RC queue pair.
pub struct VerbsEndpoint {
    // Field order is drop order: QP, CQs, MRs (+ their memory), then the control
    // connection.
    qp: BasicQueuePair,
    /// Completions of both queues (receive `wr_id`s carry [`RECV_TAG`]).
    cq: GenericCompletionQueue,
    /// `depth` send staging slots then `depth` receive buffers, `MAX_MSG` bytes each.
    bufs: Registered,
    /// The MR over the window we granted the peer (`None` for an empty grant).
    _window: Option<Registered>,
    /// The fabric's region MR (lkey of our writes' sources).
    local: Arc<Registered>,
    live: Liveness,
    peer: NodeId,
    remote: RemoteWindow,
    depth: usize,
    /// The caller's `wr_id` of the work request occupying each send slot.
    slots: Vec<Option<u64>>,
    /// Free send slots.
    free: Vec<u32>,
    /// Work completions of one `ibv_poll_cq` (scratch, reused by every poll).
    wcs: Vec<ibv_wc>,
    /// Receive buffers copied out, to post again at the next poll.
    repost: Vec<u32>,
    /// Messages up to this many bytes are sent inline (0: the device takes no inline
    /// data).
    max_inline: usize,
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
            .field("broken", &self.broken)
            .finish()
    }
}

impl VerbsEndpoint {
    /// Messages up to this many bytes go out as inline data (copied into the work
    /// request by `ibv_post_send`); 0 when the device grants no inline data. Longer
    /// ones are copied into a registered staging slot.
    pub fn max_inline(&self) -> usize {
        self.max_inline
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

    /// Posts one signaled work request. `sge` is (lkey, addr, len); `len == 0` posts no
    /// scatter/gather entry. `inline` sends the bytes at `addr` inline (the provider
    /// copies them during this call; `len` must not exceed `max_inline`).
    fn post(
        &mut self,
        op: Op,
        sge: (u32, u64, usize),
        inline: bool,
        remote_addr: u64,
        slot: u32,
        wr_id: u64,
    ) -> Result<()> {
        let (lkey, addr, len) = sge;
        let mut sge = ibv_sge {
            addr,
            length: len as u32,
            lkey,
        };
        // SAFETY: ibv_send_wr is plain old data (integers, nullable raw pointers and
        // unions of those); all zeroes is a valid, empty request.
        let mut wr: ibv_send_wr = unsafe { std::mem::MaybeUninit::zeroed().assume_init() };
        wr.wr_id = u64::from(slot);
        let mut flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        if len > 0 {
            wr.sg_list = &mut sge;
            wr.num_sge = 1;
            if inline {
                debug_assert!(len <= self.max_inline);
                flags |= ibv_send_flags::IBV_SEND_INLINE.0;
            }
        }
        wr.send_flags = flags;
        let rkey = self.remote.rkey;
        match op {
            Op::Write => {
                wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
                wr.wr.rdma.remote_addr = remote_addr;
                wr.wr.rdma.rkey = rkey;
            }
            Op::WriteImm(imm) => {
                wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                wr.wr.rdma.remote_addr = remote_addr;
                wr.wr.rdma.rkey = rkey;
                // The immediate travels in network byte order.
                wr.imm_data_invalidated_rkey_union.imm_data = imm.to_be();
            }
            Op::Send => wr.opcode = ibv_wr_opcode::IBV_WR_SEND,
        }
        let mut bad: *mut ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP is alive (owned by self). The request and its SGE are valid for
        // the call (the provider copies them, and inline bytes too). The caller checked
        // that a non-inline [addr, addr+len) lies inside the MR whose lkey this is, and
        // the bytes stay put until the completion (the caller's contract for writes, a
        // reserved staging slot for sends).
        let rc = unsafe { ibv_post_send(self.qp.qp().as_ptr(), &mut wr, &mut bad) };
        if rc == 0 {
            self.slots[slot as usize] = Some(wr_id);
            return Ok(());
        }
        self.free.push(slot);
        let rc = rc.abs();
        Err(if rc == libc::ENOMEM {
            Error::Full { depth: self.depth }
        } else {
            Error::Verbs {
                op: "ibv_post_send",
                detail: std::io::Error::from_raw_os_error(rc).to_string(),
            }
        })
    }

    fn write(
        &mut self,
        op: Op,
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
        let slot = self.free.pop().ok_or(Error::Full { depth: self.depth })?;
        let sge = (self.local.mr.lkey(), self.local.addr(local_off), len);
        let remote_addr = self.remote.addr.wrapping_add(remote_off as u64);
        self.post(op, sge, false, remote_addr, slot, wr_id)
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
        self.write(Op::Write, local_off, len, remote_off, wr_id, false)
    }

    /// Posts again the receive buffers whose contents earlier polls copied out.
    fn repost_recvs(&mut self) -> std::result::Result<(), Broken> {
        let depth = self.depth;
        let bufs = &self.bufs;
        for chunk in self.repost.chunks(WC_BATCH) {
            post_recvs(
                &self.qp,
                chunk,
                |i| bufs.addr((depth + i as usize) * MAX_MSG),
                bufs.mr.lkey(),
            )
            .map_err(|e| Broken::Verbs("ibv_post_recv", e))?;
        }
        self.repost.clear();
        Ok(())
    }

    /// Drains the completion queue into `out`. The receive buffers it consumes are
    /// posted again at the start of the next poll, not before returning: a message is
    /// handed over (and typically answered) first, and the repost happens off that
    /// path. The peer's sends meanwhile find the other posted receives, or at worst
    /// an RNR NAK retried until the next poll.
    fn poll_cq(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let mut failure: Option<Broken> = None;
        if !self.repost.is_empty() {
            if let Err(b) = self.repost_recvs() {
                return Err(self.fail(b));
            }
        }
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
                failure = Some(Broken::Verbs(
                    "ibv_poll_cq",
                    std::io::Error::from_raw_os_error(n.abs()).to_string(),
                ));
                break;
            }
            let n = n as usize;
            for k in 0..n {
                let wc = self.wcs[k];
                if wc.wr_id & RECV_TAG == 0 {
                    self.send_completion(&wc, out, &mut failure);
                } else if let Some(i) = self.recv_completion(&wc, out, &mut failure) {
                    self.repost.push(i);
                }
            }
            if failure.is_some() || n < WC_BATCH {
                break;
            }
        }
        match failure {
            Some(b) => Err(self.fail(b)),
            None => Ok(()),
        }
    }

    /// One send queue completion: frees its slot and reports the caller's `wr_id`.
    fn send_completion(&mut self, wc: &ibv_wc, out: &mut Vec<Event>, failure: &mut Option<Broken>) {
        let slot = usize::try_from(wc.wr_id).ok().filter(|&s| s < self.depth);
        let user = slot.and_then(|s| self.slots[s].take());
        if let (Some(s), Some(_)) = (slot, user) {
            self.free.push(s as u32);
        }
        let status = wc.status;
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

    /// One receive queue completion: the message or write-with-immediate notice it
    /// carries goes to `out`; returns the buffer to post again.
    fn recv_completion(
        &mut self,
        wc: &ibv_wc,
        out: &mut Vec<Event>,
        failure: &mut Option<Broken>,
    ) -> Option<u32> {
        let raw = wc.wr_id & !RECV_TAG;
        let status = wc.status;
        if status != WorkCompletionStatus::Success as u32 {
            failure.get_or_insert_with(|| {
                Broken::Verbs(
                    "work completion",
                    format!(
                        "{} on receive queue, wr_id {raw} (receive buffer), vendor_err {:#x}",
                        wc_status_name(status),
                        wc.vendor_err
                    ),
                )
            });
            return None;
        }
        let Some(idx) = usize::try_from(raw).ok().filter(|&i| i < self.depth) else {
            failure.get_or_insert_with(|| {
                Broken::Protocol(format!("receive completion for unknown buffer {raw}"))
            });
            return None;
        };
        let len = wc.byte_len;
        let opcode = wc.opcode;
        if opcode == ibv_wc_opcode::IBV_WC_RECV {
            if len as usize > MAX_MSG {
                failure.get_or_insert_with(|| {
                    Broken::Protocol(format!("message of {len} bytes exceeds {MAX_MSG}"))
                });
                return None;
            }
            // SAFETY: the receive buffer `idx` lies inside `bufs`; the NIC finished
            // writing it (its completion was just polled) and it is not posted again
            // until after this copy.
            let bytes = unsafe {
                self.bufs.mem.bytes(
                    self.bufs.offset + (self.depth + idx) * MAX_MSG,
                    len as usize,
                )
            };
            match bytes.and_then(Msg::new) {
                Ok(m) => out.push(Event::Message(m)),
                Err(e) => {
                    failure.get_or_insert_with(|| Broken::Protocol(e.to_string()));
                    return None;
                }
            }
        } else if opcode == ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM {
            // SAFETY: a successful RECV_RDMA_WITH_IMM completion carries the immediate.
            let imm = unsafe { wc.imm_data_invalidated_rkey_union.imm_data };
            out.push(Event::WriteImm {
                imm: u32::from_be(imm),
                len,
            });
        } else {
            failure.get_or_insert_with(|| {
                Broken::Protocol(format!("unexpected receive completion opcode {opcode}"))
            });
            return None;
        }
        Some(idx as u32)
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
        self.write(Op::Write, local_off, len, remote_off, wr_id, true)
    }

    fn post_write_imm(
        &mut self,
        local_off: usize,
        len: usize,
        remote_off: usize,
        imm: u32,
        wr_id: u64,
    ) -> Result<()> {
        self.write(Op::WriteImm(imm), local_off, len, remote_off, wr_id, true)
    }

    fn post_send(&mut self, msg: &[u8], wr_id: u64) -> Result<()> {
        if msg.len() > MAX_MSG {
            return Err(Error::MessageTooLarge {
                len: msg.len(),
                max: MAX_MSG,
            });
        }
        self.usable()?;
        let slot = self.free.pop().ok_or(Error::Full { depth: self.depth })?;
        if msg.len() <= self.max_inline {
            // The provider copies the bytes into the work request: no staging copy.
            let sge = (self.bufs.mr.lkey(), msg.as_ptr() as u64, msg.len());
            return self.post(Op::Send, sge, true, 0, slot, wr_id);
        }
        let off = slot as usize * MAX_MSG;
        if !msg.is_empty() {
            // SAFETY: staging slot `slot` is free: the work request that last used it has
            // completed, so the NIC no longer reads it and nothing else refers to it.
            match unsafe { self.bufs.mem.bytes_mut(self.bufs.offset + off, msg.len()) } {
                Ok(dst) => dst.copy_from_slice(msg),
                Err(e) => {
                    self.free.push(slot);
                    return Err(e);
                }
            }
        }
        let sge = (self.bufs.mr.lkey(), self.bufs.addr(off), msg.len());
        self.post(Op::Send, sge, false, 0, slot, wr_id)
    }

    fn poll(&mut self, out: &mut Vec<Event>) -> Result<usize> {
        if let Some(b) = &self.broken {
            return Err(b.error(self.peer));
        }
        let before = out.len();
        self.poll_cq(out)?;
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
