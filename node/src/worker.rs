//! A Tstore thread: pinned to a core, owns one [`Store`], answers task requests and runs
//! its part of multi-set queries.
//!
//! The thread is an event loop over its router inbox. A task request is reassembled,
//! run on the store (a persistent store fsyncs its log before the call returns, so an
//! `Ack` means durable) and answered with exactly one reply to the controller that
//! asked.
//!
//! A `Join` request starts a join task: the Tstore builds each join table from its
//! slices and queues it for sending to every Tstore; the chunks are encoded as Arrow
//! IPC straight into the router's outgoing arena (one buffer per chunk: the local
//! Tstores read it in place, each remote node gets one copy). It then prepares its
//! pivot slice ([`JoinExec::new`]) and feeds every join-table chunk that arrives,
//! from any Tstore, to the join in arrival order, reading a chunk in place in the
//! receive ring and dropping it (which returns the ring space) as soon as it is
//! compared. When every Tstore's last chunk of every join table has arrived, the
//! result goes to the controller.
//!
//! The thread never blocks on the arena: everything it sends goes through an outgoing
//! queue that is pumped with [`RouterHandle::try_alloc`] between inbox reads, so a full
//! arena or ring never stops it from draining (and releasing) what others send it.
//! Chunks of a task whose request has not arrived yet are copied out and kept until
//! it does (or until they expire). A task waiting for a lost node's chunks, or past its
//! deadline, fails with an error instead of hanging.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use smrdb_router::{Addr, ChunkRef, Inbound, Inbox, OutBuf, RouterError, RouterHandle, SendSpec};
use smrdb_tstore::join::build_join_table;
use smrdb_tstore::{decode_batches, encode_batches, JoinExec, JoinStats, Store};

use crate::error::store_sqlstate;
use crate::proto::{
    self, Body, JoinTrailer, Reassembler, Reply, Request, TableStats, JOIN_ABORT, JOIN_LAST,
    JOIN_TRAILER, TAG_JOIN, TAG_TASK,
};

/// How many finished join tasks a Tstore remembers (late chunks of them are dropped).
const DONE_MEMORY: usize = 4096;
/// Bytes of early chunks (their request not yet here) a Tstore keeps at most.
const MAX_EARLY_BYTES: usize = 1 << 30;
/// Room for the IPC schema message and framing in a chunk.
const IPC_SLACK: usize = 8192;

/// What a Tstore thread needs.
pub struct Tstore {
    /// Cluster-wide Tstore id.
    pub id: u32,
    /// Its store.
    pub store: Store,
    /// Its inbox.
    pub inbox: Inbox,
    /// The router.
    pub router: RouterHandle,
    /// The core it is pinned to, if pinning worked.
    pub core: Option<u32>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
}

fn err_reply(e: &smrdb_tstore::Error) -> Reply {
    Reply::Error {
        sqlstate: store_sqlstate(e).to_string(),
        message: e.to_string(),
    }
}

/// Something queued for sending.
enum Out {
    /// An encoded object (a reply) for one consumer, cut into chunks as space allows.
    Object {
        dst: Addr,
        task: u64,
        object: u64,
        data: Vec<u8>,
        next: usize,
    },
    /// A join table for every Tstore, encoded chunk by chunk into arena buffers.
    JoinTable {
        task: u64,
        jt: u16,
        batches: VecDeque<RecordBatch>,
        abort: bool,
    },
}

/// A join task in progress on this Tstore.
struct JoinTask {
    /// None once the task failed (it still waits for every last chunk, then answers).
    exec: Option<JoinExec>,
    error: Option<(String, String)>,
    /// The controller to answer.
    to: Addr,
    /// Per join table: the Tstores whose last chunk has not arrived.
    waiting: Vec<BTreeSet<u32>>,
    stats: JoinStats,
    started: Instant,
    deadline: Instant,
    /// Bytes and chunks of each join table this Tstore has sent so far.
    built_bytes: Vec<u64>,
    built_chunks: Vec<u64>,
}

impl JoinTask {
    fn fail(&mut self, sqlstate: &str, message: String) {
        if self.error.is_none() {
            self.error = Some((sqlstate.to_string(), message));
        }
        self.exec = None;
    }

    fn complete(&self) -> bool {
        self.waiting.iter().all(BTreeSet::is_empty)
    }
}

/// A join chunk's bytes: in place in the ring, or copied out.
enum ChunkBytes {
    InPlace(ChunkRef),
    Copied(Vec<u8>),
}

impl ChunkBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            ChunkBytes::InPlace(c) => c.bytes(),
            ChunkBytes::Copied(v) => v,
        }
    }
}

/// Keeps a ring chunk alive for as long as Arrow buffers point into it.
struct HeldChunk(#[allow(dead_code)] AssertUnwindSafe<ChunkRef>);

/// Decodes the IPC stream at the start of `chunk` (`len` bytes) without copying: the
/// batches' buffers point into the chunk, which stays held until they are dropped.
fn decode_in_place(chunk: &ChunkRef, len: usize) -> smrdb_tstore::Result<Vec<RecordBatch>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let bytes = chunk.bytes();
    if len > bytes.len() {
        return Err(smrdb_tstore::Error::Corrupt(
            "IPC length beyond the chunk".into(),
        ));
    }
    let ptr = NonNull::new(bytes.as_ptr() as *mut u8)
        .ok_or_else(|| smrdb_tstore::Error::Corrupt("null chunk".into()))?;
    // SAFETY: `ptr` is valid for `len` bytes (checked above) for as long as a ChunkRef
    // to the chunk lives: the router does not reuse a chunk's space (nor lets a peer
    // write it) until every ChunkRef is dropped, and the Buffer owns one (HeldChunk).
    // Arrow only reads through it.
    let mut buf = unsafe {
        Buffer::from_custom_allocation(
            ptr,
            len,
            Arc::new(HeldChunk(AssertUnwindSafe(chunk.clone()))),
        )
    };
    // arrow's decoder panics on some malformed streams: a peer's bytes must not take the
    // Tstore thread down.
    std::panic::catch_unwind(AssertUnwindSafe(move || {
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        while !buf.is_empty() {
            if let Some(b) = dec
                .decode(&mut buf)
                .map_err(|e| smrdb_tstore::Error::Corrupt(format!("bad join chunk: {e}")))?
            {
                out.push(b);
            }
        }
        dec.finish()
            .map_err(|e| smrdb_tstore::Error::Corrupt(format!("truncated join chunk: {e}")))?;
        Ok(out)
    }))
    .unwrap_or_else(|p| {
        Err(smrdb_tstore::Error::Corrupt(format!(
            "bad join chunk: {}",
            smrdb_tstore::fragment::panic_text(&*p)
        )))
    })
}

/// A `Write` into a fixed slice; fails when it is full.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Write for SliceWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + data.len();
        if end > self.buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "chunk full",
            ));
        }
        self.buf[self.pos..end].copy_from_slice(data);
        self.pos = end;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `batches` (one schema, at least one) as one IPC stream into `buf`; `None`
/// if it does not fit.
fn encode_into(batches: &[RecordBatch], buf: &mut [u8]) -> Option<usize> {
    let first = batches.first()?;
    let mut w = SliceWriter { buf, pos: 0 };
    {
        let mut sw = StreamWriter::try_new(&mut w, &first.schema()).ok()?;
        for b in batches {
            sw.write(b).ok()?;
        }
        sw.finish().ok()?;
    }
    Some(w.pos)
}

/// Bytes the rows of `b` occupy (its slice, not the whole underlying buffers).
fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// The outcome of encoding the next chunk of a join table.
enum Enc {
    /// Encoded into the buffer: IPC length, whole batches taken from the front, then
    /// rows taken from the next batch (0: none), rows in all.
    Fit {
        buf: OutBuf,
        len: usize,
        whole: usize,
        partial: usize,
        rows: usize,
    },
    /// No arena space now.
    Blocked,
    /// Not even one row fits a chunk.
    TooBig,
}

/// Encodes batches from the front of `batches` (all of one schema), as many whole ones
/// as fit and then a leading slice of the next, into one IPC stream written straight
/// into an arena buffer of at most `max` bytes, leaving room for the trailer.
fn encode_chunk(
    router: &RouterHandle,
    batches: &VecDeque<RecordBatch>,
    max: usize,
) -> Result<Enc, RouterError> {
    /// IPC framing per batch message (flatbuffer header, padding), roughly.
    const PER_BATCH: usize = 512;
    let budget = max.saturating_sub(IPC_SLACK + JOIN_TRAILER).max(1);
    let mut parts: Vec<RecordBatch> = Vec::new();
    let mut est = 0usize;
    let mut partial = 0usize;
    for b in batches {
        let bb = batch_bytes(b) + PER_BATCH;
        if est + bb <= budget {
            parts.push(b.clone());
            est += bb;
            continue;
        }
        let n = b.num_rows();
        let per_row = (batch_bytes(b) / n.max(1)).max(1);
        let rows = (budget.saturating_sub(est + PER_BATCH) / per_row).min(n);
        if rows > 0 && (parts.is_empty() || rows >= 1024) {
            parts.push(b.slice(0, rows));
            est += batch_bytes(&parts[parts.len() - 1]) + PER_BATCH;
            partial = rows;
        } else if parts.is_empty() {
            parts.push(b.slice(0, 1));
            est += batch_bytes(&parts[0]) + PER_BATCH;
            partial = 1;
        }
        break;
    }
    loop {
        let want = (est + est / 8 + IPC_SLACK + JOIN_TRAILER)
            .min(max)
            .max(JOIN_TRAILER + 64);
        let Some(mut buf) = router.try_alloc(want)? else {
            return Ok(Enc::Blocked);
        };
        let mut fit = encode_into(&parts, &mut buf.as_mut_slice()[..want - JOIN_TRAILER]);
        if fit.is_none() && want < max {
            // The estimate was short: try the largest buffer before taking less.
            drop(buf);
            let Some(big) = router.try_alloc(max)? else {
                return Ok(Enc::Blocked);
            };
            buf = big;
            fit = encode_into(&parts, &mut buf.as_mut_slice()[..max - JOIN_TRAILER]);
        }
        if let Some(len) = fit {
            let rows = parts.iter().map(|p| p.num_rows()).sum();
            let whole = parts.len() - usize::from(partial > 0);
            return Ok(Enc::Fit {
                buf,
                len,
                whole,
                partial,
                rows,
            });
        }
        drop(buf);
        // Take less: drop a partial slice or the last whole batch, else halve the rows.
        if parts.len() > 1 {
            parts.pop();
            partial = 0;
        } else {
            let n = parts[0].num_rows();
            if n == 1 {
                return Ok(Enc::TooBig);
            }
            let half = n.div_ceil(2);
            parts[0] = parts[0].slice(0, half);
            partial = half;
        }
        est = parts.iter().map(|p| batch_bytes(p) + PER_BATCH).sum();
    }
}

/// Copied chunks of a task whose request has not arrived: when the first came, and
/// (sending Tstore, bytes) in arrival order.
type EarlyChunks = (Instant, Vec<(u32, Vec<u8>)>);

/// The event loop's state.
struct Worker {
    t: Tstore,
    me: Addr,
    asm: Reassembler,
    out: VecDeque<Out>,
    joins: HashMap<u64, JoinTask>,
    early: HashMap<u64, EarlyChunks>,
    early_bytes: usize,
    done: HashSet<u64>,
    done_order: VecDeque<u64>,
}

impl Tstore {
    /// Runs one (non-join) request on the store.
    pub fn execute(&mut self, req: Request) -> Reply {
        let st = &mut self.store;
        let ack = |r: smrdb_tstore::Result<usize>| match r {
            Ok(n) => Reply::Ack { count: n as u64 },
            Err(e) => err_reply(&e),
        };
        match req {
            Request::CreateTable { name, schema } => {
                // The primary's catalog decides what exists: a slice left over from
                // an interrupted CREATE/DROP is replaced.
                if st.table(&name).is_some() {
                    if let Err(e) = st.drop_table(&name) {
                        return err_reply(&e);
                    }
                }
                ack(st.create_table(&name, schema).map(|_| 0))
            }
            Request::DropTable { name } => {
                if st.table(&name).is_none() {
                    return Reply::Ack { count: 0 };
                }
                ack(st.drop_table(&name).map(|_| 0))
            }
            Request::Insert { table, rows } => ack(st.insert(&table, rows)),
            Request::Update {
                table,
                assignments,
                filter,
            } => ack(st.update(&table, assignments, filter)),
            Request::Delete { table, filter } => ack(st.delete(&table, filter)),
            // A write of the primary's statement log: skipped when already applied.
            Request::Stmt { id, write } => ack(st.write_stmt(id, write).map(|n| n.unwrap_or(0))),
            Request::LastStmt => Reply::Ack {
                count: st.last_stmt(),
            },
            Request::Query { fragment } => {
                match st.execute(&fragment).and_then(|b| encode_batches(&b)) {
                    Ok(ipc) => Reply::Result { ipc },
                    Err(e) => err_reply(&e),
                }
            }
            Request::Join { .. } => Reply::Error {
                sqlstate: "XX000".into(),
                message: "a join request outside the event loop".into(),
            },
            Request::Stats => Reply::Stats {
                core: self.core,
                tables: st
                    .table_names()
                    .into_iter()
                    .filter_map(|n| {
                        let s = st.table(&n)?;
                        Some(TableStats {
                            rows: s.row_count() as u64,
                            bytes: s.bytes() as u64,
                            name: n,
                        })
                    })
                    .collect(),
                router: self.router.stats().peers,
            },
        }
    }

    /// The thread's loop; returns when stopped or the router shuts down. Checkpoints
    /// a persistent store on the way out.
    pub fn run(self) {
        let me = Addr::tstore(self.id);
        let mut w = Worker {
            t: self,
            me,
            asm: Reassembler::new(),
            out: VecDeque::new(),
            joins: HashMap::new(),
            early: HashMap::new(),
            early_bytes: 0,
            done: HashSet::new(),
            done_order: VecDeque::new(),
        };
        w.run();
        if let Err(e) = w.t.store.checkpoint() {
            tracing::warn!("tstore {}: checkpoint at shutdown failed: {e}", w.t.id);
        }
    }
}

impl Worker {
    fn id(&self) -> u32 {
        self.t.id
    }

    fn run(&mut self) {
        let mut last_sweep = Instant::now();
        loop {
            if self.t.stop.load(Ordering::Relaxed) {
                break;
            }
            let blocked = match self.pump() {
                Ok(b) => b,
                Err(RouterError::Shutdown) => break,
                Err(e) => {
                    self.drop_front(&e);
                    false
                }
            };
            // While something waits for arena space, look at the inbox often (its
            // chunks are what frees space at the other end); otherwise sleep on it.
            let wait = if blocked {
                Duration::from_micros(200)
            } else if !self.joins.is_empty() {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(200)
            };
            match self.t.inbox.recv(wait) {
                Ok(Inbound::Data(d)) => {
                    if d.spec.tag == TAG_JOIN {
                        self.on_join_chunk(d.from, d.spec.src, d.spec.query, d.data);
                    } else if d.spec.tag == TAG_TASK {
                        self.on_task_chunk(d);
                    } else {
                        tracing::warn!(
                            "tstore {}: ignoring a message with tag {:#x}",
                            self.id(),
                            d.spec.tag
                        );
                    }
                }
                Ok(Inbound::PeerLost { node, reason }) => self.on_peer_lost(node, &reason),
                Ok(Inbound::PeerJoined { node }) => {
                    tracing::info!("tstore {}: node {node} connected again", self.id());
                }
                Err(RouterError::Timeout { .. }) => {}
                Err(_) => break,
            }
            if last_sweep.elapsed() > Duration::from_millis(100) {
                last_sweep = Instant::now();
                self.sweep();
            }
        }
    }

    fn queue_reply(&mut self, task: u64, to: Addr, reply: Reply) {
        match proto::encode(task, Body::Reply(reply)) {
            Ok(data) => self.out.push_back(Out::Object {
                dst: to,
                task,
                object: self.t.router.new_object_id(),
                data,
                next: 0,
            }),
            Err(e) => tracing::error!("tstore {}: {e}", self.id()),
        }
    }

    fn on_task_chunk(&mut self, d: smrdb_router::Delivery) {
        let obj = match self.asm.push(d) {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!("tstore {}: {e}", self.id());
                return;
            }
        };
        if obj.src.as_controller().is_none() {
            tracing::warn!(
                "tstore {}: request from {:?} refused (not a controller)",
                self.id(),
                obj.src
            );
            return;
        }
        let (task, to) = (obj.query, obj.src);
        match proto::decode(&obj.bytes, obj.query) {
            Ok(env) => match env.body {
                Body::Request(Request::Join {
                    spec,
                    post,
                    timeout_ms,
                }) => {
                    drop(obj);
                    self.start_join(task, to, spec, post, timeout_ms);
                }
                Body::Request(r) => {
                    drop(obj);
                    let reply = self.t.execute(r);
                    self.queue_reply(task, to, reply);
                }
                Body::Reply(_) => {
                    tracing::warn!("tstore {}: unexpected reply from {to:?}", self.id());
                }
            },
            Err(e) => {
                tracing::warn!("tstore {}: bad request from {to:?}: {e}", self.id());
                let reply = Reply::Error {
                    sqlstate: "08P01".into(),
                    message: format!("tstore {}: {e}", self.id()),
                };
                self.queue_reply(task, to, reply);
            }
        }
    }

    fn start_join(
        &mut self,
        task: u64,
        to: Addr,
        spec: smrdb_tstore::JoinSpec,
        post: smrdb_tstore::Fragment,
        timeout_ms: u64,
    ) {
        let started = Instant::now();
        let n = spec.join_tables.len();
        let total = self.t.router.map().total_tstores();
        let mut stats = JoinStats {
            built_rows: vec![0; n],
            built_bytes: vec![0; n],
            built_chunks: vec![0; n],
            received_rows: vec![0; n],
            received_chunks: vec![0; n],
            ..JoinStats::default()
        };
        let mut error: Option<(String, String)> = None;
        // Build every join table first, so the others get our rows as early as possible.
        for (jt, input) in spec.join_tables.iter().enumerate() {
            let batches = if error.is_some() {
                Vec::new()
            } else {
                match build_join_table(&self.t.store, input) {
                    Ok(b) => b,
                    Err(e) => {
                        error = Some((store_sqlstate(&e).to_string(), e.to_string()));
                        Vec::new()
                    }
                }
            };
            stats.built_rows[jt] = batches.iter().map(|b| b.num_rows() as u64).sum();
            self.out.push_back(Out::JoinTable {
                task,
                jt: jt as u16,
                batches: batches.into_iter().filter(|b| b.num_rows() > 0).collect(),
                abort: false,
            });
        }
        if error.is_some() {
            // Tell every Tstore this task is dead instead of sending rows.
            for o in self.out.iter_mut() {
                if let Out::JoinTable {
                    task: t,
                    batches,
                    abort,
                    ..
                } = o
                {
                    if *t == task {
                        batches.clear();
                        *abort = true;
                    }
                }
            }
        }
        stats.build = started.elapsed();
        self.joins.insert(
            task,
            JoinTask {
                exec: None,
                error: None,
                to,
                waiting: vec![(0..total).collect(); n],
                stats,
                started,
                deadline: started + Duration::from_millis(timeout_ms.max(1)),
                built_bytes: vec![0; n],
                built_chunks: vec![0; n],
            },
        );
        let _ = self.pump();
        let exec = if error.is_some() {
            None
        } else {
            match JoinExec::new(&self.t.store, spec, post) {
                Ok(x) => Some(x),
                Err(e) => {
                    error = Some((store_sqlstate(&e).to_string(), e.to_string()));
                    None
                }
            }
        };
        if let Some(j) = self.joins.get_mut(&task) {
            match error {
                Some((code, msg)) => j.fail(&code, msg),
                None => j.exec = exec,
            }
        }
        if let Some((_, early)) = self.early.remove(&task) {
            for (src, bytes) in early {
                self.early_bytes = self.early_bytes.saturating_sub(bytes.len());
                self.apply_chunk(task, src, ChunkBytes::Copied(bytes));
            }
        }
        self.maybe_finish(task);
    }

    fn on_join_chunk(&mut self, from: u32, src: Addr, task: u64, data: ChunkRef) {
        let Some(s) = src.as_tstore() else {
            tracing::warn!("tstore {}: join chunk from {src:?} ignored", self.id());
            return;
        };
        if self
            .t
            .router
            .map()
            .owner_of(s)
            .map(|i| self.t.router.map().nodes()[i].id)
            != Some(from)
        {
            tracing::warn!(
                "tstore {}: tstore {s} does not live on node {from}",
                self.id()
            );
            return;
        }
        if self.done.contains(&task) {
            return;
        }
        if self.joins.contains_key(&task) {
            self.apply_chunk(task, s, ChunkBytes::InPlace(data));
            self.maybe_finish(task);
            return;
        }
        // The request has not reached us yet: keep a copy, release the ring space.
        let bytes = data.bytes().to_vec();
        drop(data);
        if self.early_bytes + bytes.len() > MAX_EARLY_BYTES {
            tracing::warn!(
                "tstore {}: dropping an early join chunk of task {task} ({} bytes held)",
                self.id(),
                self.early_bytes
            );
            return;
        }
        self.early_bytes += bytes.len();
        self.early
            .entry(task)
            .or_insert_with(|| (Instant::now(), Vec::new()))
            .1
            .push((s, bytes));
    }

    fn apply_chunk(&mut self, task: u64, src: u32, chunk: ChunkBytes) {
        let Some(j) = self.joins.get_mut(&task) else {
            return;
        };
        let n = j.waiting.len();
        let (ipc_len, tr) = match JoinTrailer::split(chunk.bytes(), n) {
            Ok((ipc, tr)) => (ipc.len(), tr),
            Err(e) => {
                tracing::warn!("tstore {}: {e}", self.t.id);
                j.fail("08P01", format!("bad join chunk from tstore {src}: {e}"));
                return;
            }
        };
        let jt = usize::from(tr.jt);
        if !j.waiting[jt].contains(&src) {
            j.fail(
                "08P01",
                format!("tstore {src} sent join table {jt} again after its last chunk"),
            );
            return;
        }
        if tr.flags & JOIN_ABORT != 0 {
            j.fail(
                "XX000",
                format!("join aborted: tstore {src} could not build its join table {jt}"),
            );
        }
        j.stats.received_chunks[jt] += 1;
        if let Some(exec) = j.exec.as_mut() {
            let t0 = Instant::now();
            let decoded = match &chunk {
                ChunkBytes::InPlace(c) => decode_in_place(c, ipc_len),
                ChunkBytes::Copied(v) => decode_batches(&v[..ipc_len]),
            };
            drop(chunk);
            let r = decoded.and_then(|bs| {
                let rows: usize = bs.iter().map(|b| b.num_rows()).sum();
                if rows as u64 != tr.rows {
                    return Err(smrdb_tstore::Error::Corrupt(format!(
                        "join chunk says {} rows, holds {rows}",
                        tr.rows
                    )));
                }
                for b in bs {
                    exec.push(jt, b)?;
                }
                Ok(())
            });
            j.stats.compare += t0.elapsed();
            if let Err(e) = r {
                let code = store_sqlstate(&e).to_string();
                j.fail(&code, format!("join table {jt} from tstore {src}: {e}"));
            }
        }
        if tr.flags & (JOIN_LAST | JOIN_ABORT) != 0 {
            j.waiting[jt].remove(&src);
            if j.waiting[jt].is_empty() {
                if let Some(exec) = j.exec.as_mut() {
                    let t0 = Instant::now();
                    let r = exec.complete(jt);
                    j.stats.compare += t0.elapsed();
                    if let Err(e) = r {
                        let code = store_sqlstate(&e).to_string();
                        j.fail(&code, e.to_string());
                    }
                }
            }
        }
    }

    /// Answers a join task once every chunk is in and our own tables are sent.
    fn maybe_finish(&mut self, task: u64) {
        let Some(j) = self.joins.get(&task) else {
            return;
        };
        if !j.complete() {
            return;
        }
        let Some(mut j) = self.joins.remove(&task) else {
            return;
        };
        j.stats.transfer = j.started.elapsed();
        let reply = match (j.error.take(), j.exec.take()) {
            (Some((sqlstate, message)), _) => Reply::Error { sqlstate, message },
            (None, Some(exec)) => match exec
                .finish()
                .and_then(|(b, s)| Ok((encode_batches(&b)?, s)))
            {
                Ok((ipc, s)) => {
                    // Ours: build, transfer, chunk counts, bytes sent, and compare
                    // (decode + push + complete, which includes the join's own time).
                    let mut stats = j.stats;
                    stats.pivot_rows = s.pivot_rows;
                    stats.joined_rows = s.joined_rows;
                    stats.received_rows = s.received_rows;
                    stats.pivot = s.pivot;
                    stats.built_bytes = j.built_bytes;
                    stats.built_chunks = j.built_chunks;
                    Reply::Join { ipc, stats }
                }
                Err(e) => err_reply(&e),
            },
            (None, None) => Reply::Error {
                sqlstate: "XX000".into(),
                message: "join task without state".into(),
            },
        };
        self.remember_done(task);
        self.queue_reply(task, j.to, reply);
    }

    fn remember_done(&mut self, task: u64) {
        if self.done.insert(task) {
            self.done_order.push_back(task);
            if self.done_order.len() > DONE_MEMORY {
                if let Some(old) = self.done_order.pop_front() {
                    self.done.remove(&old);
                }
            }
        }
    }

    fn on_peer_lost(&mut self, node: u32, reason: &str) {
        tracing::warn!("tstore {}: node {node} lost: {reason}", self.id());
        self.asm.forget(node);
        let map = self.t.router.map().clone();
        let on_node: BTreeSet<u32> = map
            .index_of(node)
            .map(|i| map.tstores_of(i).collect())
            .unwrap_or_default();
        let tasks: Vec<u64> = self.joins.keys().copied().collect();
        for task in tasks {
            if let Some(j) = self.joins.get_mut(&task) {
                // A join that waits on the node, or whose answer would go to it (a lost
                // primary), cannot finish.
                let waits_on_it = j.to.as_controller() == Some(node)
                    || j.waiting
                        .iter()
                        .any(|w| w.iter().any(|t| on_node.contains(t)));
                if waits_on_it {
                    j.fail(
                        "08006",
                        format!("node {node} was lost during the join: {reason}"),
                    );
                    for w in j.waiting.iter_mut() {
                        w.clear();
                    }
                }
            }
            self.maybe_finish(task);
        }
    }

    /// Fails join tasks past their deadline and forgets stale early chunks.
    fn sweep(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .joins
            .iter()
            .filter(|(_, j)| now >= j.deadline)
            .map(|(t, _)| *t)
            .collect();
        for task in late {
            if let Some(j) = self.joins.get_mut(&task) {
                let missing: BTreeSet<u32> = j.waiting.iter().flatten().copied().collect();
                j.fail(
                    "57014",
                    format!(
                        "join timed out waiting for join-table chunks from tstores {missing:?}"
                    ),
                );
                for w in j.waiting.iter_mut() {
                    w.clear();
                }
            }
            self.maybe_finish(task);
        }
        let stale: Vec<u64> = self
            .early
            .iter()
            .filter(|(_, (at, _))| now.duration_since(*at) > Duration::from_secs(600))
            .map(|(t, _)| *t)
            .collect();
        for t in stale {
            if let Some((_, v)) = self.early.remove(&t) {
                self.early_bytes = self
                    .early_bytes
                    .saturating_sub(v.iter().map(|(_, b)| b.len()).sum());
            }
        }
    }

    /// Sends as much of the outgoing queue as the arena takes now. Returns whether
    /// something is still waiting for space.
    /// The item at the front of the send queue failed for good (it can never be sent:
    /// larger than the arena, an address the router refuses): drop it instead of
    /// retrying forever. A join table is cut short (its receivers get an aborting last
    /// chunk) and its task fails; a reply is dropped (its task times out on the
    /// primary, the error is logged here).
    fn drop_front(&mut self, e: &RouterError) {
        let id = self.id();
        match self.out.front_mut() {
            Some(Out::JoinTable {
                task,
                batches,
                abort,
                ..
            }) if !(*abort && batches.is_empty()) => {
                tracing::error!("tstore {id}: a join table of task {task} cannot be sent: {e}");
                batches.clear();
                *abort = true;
                let task = *task;
                if let Some(j) = self.joins.get_mut(&task) {
                    j.fail(
                        "53200",
                        format!("tstore {id} could not send its join table: {e}"),
                    );
                }
            }
            Some(Out::JoinTable { task, .. }) => {
                tracing::error!(
                    "tstore {id}: the end of join table of task {task} cannot be sent: {e}"
                );
                self.out.pop_front();
            }
            Some(Out::Object { task, dst, .. }) => {
                tracing::error!(
                    "tstore {id}: the reply to {dst:?} for task {task} cannot be sent: {e}"
                );
                self.out.pop_front();
            }
            None => tracing::warn!("tstore {id}: send failed: {e}"),
        }
    }

    fn pump(&mut self) -> Result<bool, RouterError> {
        let router = self.t.router.clone();
        let max = router.max_chunk();
        while let Some(front) = self.out.front_mut() {
            match front {
                Out::Object {
                    dst,
                    task,
                    object,
                    data,
                    next,
                } => {
                    let nchunks = data.len().div_ceil(max).max(1);
                    let lo = (*next * max).min(data.len());
                    let hi = ((*next + 1) * max).min(data.len());
                    let Some(mut buf) = router.try_alloc(hi - lo)? else {
                        return Ok(true);
                    };
                    buf.as_mut_slice().copy_from_slice(&data[lo..hi]);
                    let spec = SendSpec {
                        src: self.me,
                        dst: *dst,
                        tag: TAG_TASK,
                        query: *task,
                        object: *object,
                        chunk: *next as u32,
                        last: *next + 1 == nchunks,
                    };
                    *next += 1;
                    let finished = *next == nchunks;
                    if let Err(e) = router.send(buf, spec) {
                        tracing::warn!(
                            "tstore {}: reply to {:?} for task {} failed: {e}",
                            self.t.id,
                            spec.dst,
                            spec.query
                        );
                    }
                    if finished {
                        self.out.pop_front();
                    }
                }
                Out::JoinTable {
                    task,
                    jt,
                    batches,
                    abort,
                } => {
                    let (task, jt) = (*task, *jt);
                    // Drop empty batches at the front.
                    while batches.front().is_some_and(|b| b.num_rows() == 0) {
                        batches.pop_front();
                    }
                    if batches.is_empty() {
                        // Nothing (more) to send: one empty last chunk.
                        let Some(mut buf) = router.try_alloc(JOIN_TRAILER)? else {
                            return Ok(true);
                        };
                        let flags = JOIN_LAST | if *abort { JOIN_ABORT } else { 0 };
                        buf.as_mut_slice()
                            .copy_from_slice(&JoinTrailer { flags, jt, rows: 0 }.encode());
                        if let Some(j) = self.joins.get_mut(&task) {
                            j.built_bytes[usize::from(jt)] += JOIN_TRAILER as u64;
                            j.built_chunks[usize::from(jt)] += 1;
                        }
                        self.send_join_chunk(buf, task)?;
                        self.out.pop_front();
                        continue;
                    }
                    let t_enc = Instant::now();
                    let enc = encode_chunk(&router, batches, max)?;
                    if let Some(j) = self.joins.get_mut(&task) {
                        // Encoding into the arena is part of building the join table.
                        j.stats.build += t_enc.elapsed();
                    }
                    let (mut buf, len, whole, partial, rows) = match enc {
                        Enc::Fit {
                            buf,
                            len,
                            whole,
                            partial,
                            rows,
                        } => (buf, len, whole, partial, rows),
                        Enc::Blocked => return Ok(true),
                        Enc::TooBig => {
                            // One row larger than a chunk: this task cannot run here.
                            batches.clear();
                            *abort = true;
                            if let Some(j) = self.joins.get_mut(&task) {
                                j.fail(
                                    "54000",
                                    format!(
                                        "a row of join table {jt} is larger than a router chunk ({max} bytes)"
                                    ),
                                );
                            }
                            continue;
                        }
                    };
                    batches.drain(..whole);
                    if partial > 0 {
                        if let Some(b) = batches.front_mut() {
                            *b = b.slice(partial, b.num_rows() - partial);
                        }
                    }
                    while batches.front().is_some_and(|b| b.num_rows() == 0) {
                        batches.pop_front();
                    }
                    let last = batches.is_empty();
                    let flags = if last { JOIN_LAST } else { 0 };
                    buf.as_mut_slice()[len..len + JOIN_TRAILER].copy_from_slice(
                        &JoinTrailer {
                            flags,
                            jt,
                            rows: rows as u64,
                        }
                        .encode(),
                    );
                    buf.set_len(len + JOIN_TRAILER);
                    if let Some(j) = self.joins.get_mut(&task) {
                        j.built_bytes[usize::from(jt)] += (len + JOIN_TRAILER) as u64;
                        j.built_chunks[usize::from(jt)] += 1;
                    }
                    self.send_join_chunk(buf, task)?;
                    if last {
                        self.out.pop_front();
                    }
                }
            }
        }
        Ok(false)
    }

    fn send_join_chunk(&self, buf: OutBuf, task: u64) -> Result<(), RouterError> {
        let spec = SendSpec {
            src: self.me,
            dst: Addr::ALL_TSTORES,
            tag: TAG_JOIN,
            query: task,
            object: self.t.router.new_object_id(),
            chunk: 0,
            last: true,
        };
        match self.t.router.send(buf, spec) {
            Ok(_) => Ok(()),
            Err(RouterError::Shutdown) => Err(RouterError::Shutdown),
            Err(e) => {
                tracing::warn!("tstore {}: join chunk of task {task}: {e}", self.t.id);
                Ok(())
            }
        }
    }
}
