//! A Tstore thread: pinned to a core, owns one [`Store`], answers task requests and runs
//! its stages of distributed queries.
//!
//! The thread is an event loop over its router inbox. A write or catalog request is
//! reassembled, run on the store (a persistent store fsyncs its log before the call
//! returns, so an `Ack` means durable) and answered with exactly one reply to the
//! controller that asked.
//!
//! A `Stages` request starts a query task: every stage of the fragment is decoded
//! into a DataFusion plan over this Tstore's slices (snapshots taken now) and its
//! exchange inputs, and becomes a future the loop polls when woken. A stage's output
//! goes, chunk by chunk, to its exchange's consumers: every Tstore (a broadcast: the
//! local ones read the arena buffer in place, each remote node gets one copy) or the
//! primary (a gather). Arriving chunks of a broadcast input that a hash join probes
//! are decoded *in place* in the receive ring (up to a budget; beyond it copied out);
//! chunks of an input its consumer keeps until it has all of it (a hash table's build
//! side, a sort's input) are copied out, since the ring releases in order. Batches go
//! to the consuming stage in arrival order, so a hash join probes the first chunk
//! while the rest is in flight. When every stage
//! has finished and its output is sent, the Tstore answers `Done` with what its
//! operators measured.
//!
//! The thread never blocks on the arena: everything it sends goes through outgoing
//! channels that are pumped with [`RouterHandle::try_alloc`] between inbox reads, so
//! a full arena or ring never stops it from draining (and releasing) what others send
//! it. Chunks of a task whose request has not arrived yet are copied out and kept
//! until it does (or until they expire). A task waiting for a lost node's chunks, or
//! past its deadline, fails with an error instead of hanging.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smrdb_planner::{OperatorMetrics, PlanError};
use smrdb_router::{Addr, ChunkRef, Inbound, Inbox, RouterError, RouterHandle, SendSpec};
use smrdb_tstore::exec::fragment::{ExchangeKind, Fragment, Place};
use smrdb_tstore::exec::{codec, task_context, ExchangeQueue, TaskInputs};
use smrdb_tstore::{decode_batches, Store};

use crate::error::store_sqlstate;
use crate::exchange::{
    decode_copied, decode_in_place, stage_future, OutChannel, Polled, Pumped, StageOutput,
};
use crate::proto::{
    self, Body, ChunkTrailer, Reassembler, Reply, Request, SliceStats, StageReport, CHUNK_ABORT,
    CHUNK_LAST, TAG_TASK, TAG_XCHG,
};

/// How many finished tasks a Tstore remembers (late chunks of them are dropped).
const DONE_MEMORY: usize = 4096;
/// Bytes of early chunks (their request not yet here) a Tstore keeps at most.
const MAX_EARLY_BYTES: usize = 1 << 30;
/// Chunks a Tstore may hold in place in the rings (beyond, arriving chunks are copied
/// out so senders never wait on a slow consumer).
const IN_PLACE_CHUNKS: usize = 3;

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
    /// The core it is pinned to, if pinned.
    pub core: Option<u32>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
}

fn err_reply(e: &smrdb_tstore::Error) -> Reply {
    let sqlstate = match e {
        smrdb_tstore::Error::InvalidValue(m) => {
            PlanError::from(smrdb_tstore::Error::InvalidValue(m.clone()))
                .sqlstate()
                .to_string()
        }
        other => store_sqlstate(other).to_string(),
    };
    Reply::Error {
        sqlstate,
        message: e.to_string(),
        echo: false,
    }
}

fn df_reply(e: &datafusion::common::DataFusionError) -> (String, String) {
    let p = PlanError::from_datafusion(e);
    (p.sqlstate().to_string(), p.to_string())
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
    /// A stage's output.
    Stream(OutChannel),
}

/// One stage running on this Tstore.
struct StageRun {
    id: u16,
    /// The exchange its output feeds.
    exchange: u16,
    plan: Arc<dyn datafusion::physical_plan::ExecutionPlan>,
    fut: Polled<datafusion::common::Result<()>>,
    output: Arc<StageOutput>,
    finished: bool,
}

/// A broadcast input of a task on this Tstore.
struct Input {
    queue: Arc<ExchangeQueue>,
    /// Senders (Tstore ids; `u32::MAX` for the primary) whose last chunk is due.
    waiting: BTreeSet<u32>,
    /// Copy every chunk out: the consumer keeps what it reads until it has the whole
    /// input (see [`smrdb_tstore::exec::probed_exchanges`]), or waits for all of it.
    copy: bool,
}

/// A query task in progress on this Tstore.
struct QueryTask {
    to: Addr,
    stages: Vec<StageRun>,
    inputs: HashMap<u16, Input>,
    /// (SQLSTATE, message, echo) of the first failure.
    error: Option<(String, String, bool)>,
    deadline: Instant,
    /// Sent-so-far counters of the stages' outputs, by stage id, once closed.
    sent: HashMap<u16, (u64, u64, u64)>,
}

impl QueryTask {
    fn fail(&mut self, sqlstate: &str, message: String, echo: bool) {
        if self.error.is_none() {
            self.error = Some((sqlstate.to_string(), message, echo));
        }
        for s in &self.stages {
            s.output.fail();
        }
        for i in self.inputs.values() {
            i.queue.fail("the task failed");
        }
    }
}

/// Copied chunks of a task whose request has not arrived: when the first came, and
/// (sending address, bytes) in arrival order.
type EarlyChunks = (Instant, Vec<(u32, Vec<u8>)>);

/// The event loop's state.
struct Worker {
    t: Tstore,
    me: Addr,
    asm: Reassembler,
    out: VecDeque<Out>,
    tasks: HashMap<u64, QueryTask>,
    early: HashMap<u64, EarlyChunks>,
    early_bytes: usize,
    done: HashSet<u64>,
    done_order: VecDeque<u64>,
    /// Raised by the wakers of this thread's stages.
    woken: Arc<AtomicBool>,
    /// Bytes of ring chunks held in place by decoded batches.
    held: Arc<AtomicUsize>,
}

/// The sender id of a primary's controller in [`Input::waiting`].
const PRIMARY: u32 = u32::MAX;

impl Tstore {
    /// Runs one (non-query) request on the store.
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
            Request::Insert { table, ipc } => ack((|| {
                let mut n = 0;
                for b in decode_batches(&ipc)? {
                    n += st.insert(&table, b)?;
                }
                Ok(n)
            })()),
            Request::Update {
                table,
                assignments,
                filter,
                dry_run,
            } => ack((|| {
                let (a, f) = st.decode_exprs(&table, &assignments, filter.as_deref())?;
                if dry_run {
                    st.check_update(&table, &a, f.as_ref())
                } else {
                    st.update(&table, &a, f.as_ref())
                }
            })()),
            Request::Delete { table, filter } => ack((|| {
                let (_, f) = st.decode_exprs(&table, &[], filter.as_deref())?;
                st.delete(&table, f.as_ref())
            })()),
            // A write of the primary's statement log: skipped when already applied.
            Request::Stmt { id, write } => ack(st.write_stmt(id, write).map(|n| n.unwrap_or(0))),
            Request::LastStmt => Reply::Ack {
                count: st.last_stmt(),
            },
            Request::Stages { .. } => Reply::Error {
                sqlstate: "XX000".into(),
                message: "a query request outside the event loop".into(),
                echo: false,
            },
            Request::Stats => Reply::Stats {
                core: self.core,
                tables: st
                    .table_names()
                    .into_iter()
                    .filter_map(|n| {
                        let s = st.stats(&n)?.clone();
                        Some(SliceStats { name: n, stats: s })
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
            tasks: HashMap::new(),
            early: HashMap::new(),
            early_bytes: 0,
            done: HashSet::new(),
            done_order: VecDeque::new(),
            woken: Arc::new(AtomicBool::new(false)),
            held: Arc::new(AtomicUsize::new(0)),
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
            self.poll_tasks();
            // What the stages just produced goes out now.
            let blocked = match self.pump() {
                Ok(b) => b,
                Err(RouterError::Shutdown) => break,
                Err(e) => {
                    tracing::warn!("tstore {}: send failed: {e}", self.id());
                    false
                }
            };
            // Work to do now: poll again right after a look at the inbox. While
            // something waits for arena space, look at the inbox often (its chunks are
            // what frees space at the other end); otherwise sleep on it.
            let wait = if self.woken.load(Ordering::Acquire) {
                Duration::ZERO
            } else if blocked {
                Duration::from_micros(200)
            } else if !self.tasks.is_empty() {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(200)
            };
            let got = if wait.is_zero() {
                Ok(self.t.inbox.try_recv())
            } else {
                self.t.inbox.recv(wait).map(Some)
            };
            match got {
                Ok(Some(Inbound::Data(d))) => {
                    if d.spec.tag == TAG_XCHG {
                        self.on_chunk(d.from, d.spec.src, d.spec.query, d.data);
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
                Ok(Some(Inbound::PeerLost { node, reason })) => self.on_peer_lost(node, &reason),
                Ok(Some(Inbound::PeerJoined { node })) => {
                    tracing::info!("tstore {}: node {node} connected again", self.id());
                }
                Ok(None) | Err(RouterError::Timeout { .. }) => {}
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
                Body::Request(Request::Stages { fragment }) => {
                    drop(obj);
                    self.start_task(task, to, &fragment);
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
                    echo: false,
                };
                self.queue_reply(task, to, reply);
            }
        }
    }

    /// Decodes a fragment and starts its stages.
    fn start_task(&mut self, task: u64, to: Addr, bytes: &[u8]) {
        let frag = match Fragment::decode(bytes) {
            Ok(f) => f,
            Err(e) => {
                let reply = Reply::Error {
                    sqlstate: "08P01".into(),
                    message: format!("tstore {}: {e}", self.id()),
                    echo: false,
                };
                self.queue_reply(task, to, reply);
                return;
            }
        };
        let total = self.t.router.map().total_tstores();
        let mut inputs = TaskInputs::new();
        let mut task_inputs = HashMap::new();
        for x in frag.tstore_inputs() {
            let senders: BTreeSet<u32> = match x.from {
                Place::Tstores => (0..total).collect(),
                Place::Primary => [PRIMARY].into(),
            };
            let q = ExchangeQueue::new(senders.len(), x.wait_complete);
            inputs.add_exchange(x.id, 0, q.clone());
            task_inputs.insert(
                x.id,
                Input {
                    queue: q,
                    waiting: senders,
                    // Until a stage is known to probe it as it arrives (below).
                    copy: true,
                },
            );
        }
        let mut error = None;
        for t in &frag.tables {
            match self.t.store.table(t) {
                Some(s) => inputs.add_table(t.clone(), s.snapshot()),
                None => {
                    error = Some((
                        "42P01".to_string(),
                        format!("relation \"{t}\" does not exist on tstore {}", self.id()),
                        false,
                    ))
                }
            }
        }
        let ctx = task_context(Some(Arc::new(inputs)));
        let mut stages = Vec::new();
        for s in &frag.stages {
            let output = StageOutput::new();
            let Some(x) = frag.exchange(s.output) else {
                continue;
            };
            let dst = match x.kind {
                ExchangeKind::Broadcast => Addr::ALL_TSTORES,
                ExchangeKind::Gather => match to.as_controller() {
                    Some(_) => to,
                    None => continue,
                },
            };
            self.out.push_back(Out::Stream(OutChannel::new(
                task,
                s.output,
                self.me,
                dst,
                output.clone(),
            )));
            let plan = match codec::plan_from_bytes(&s.plan, &ctx) {
                Ok(p) => p,
                Err(e) => {
                    if error.is_none() {
                        let (c, m) = df_reply(&e);
                        error = Some((c, format!("stage {}: {m}", s.id), false));
                    }
                    output.fail();
                    continue;
                }
            };
            for id in smrdb_tstore::exec::probed_exchanges(&plan) {
                if let (Some(i), Some(x)) = (task_inputs.get_mut(&id), frag.exchange(id)) {
                    i.copy = x.wait_complete;
                }
            }
            let fut = Polled::new(
                stage_future(plan.clone(), ctx.clone(), output.clone()),
                self.woken.clone(),
            );
            stages.push(StageRun {
                id: s.id,
                exchange: s.output,
                plan,
                fut,
                output,
                finished: false,
            });
        }
        let mut qt = QueryTask {
            to,
            stages,
            inputs: task_inputs,
            error: None,
            deadline: Instant::now() + Duration::from_millis(frag.timeout_ms.max(1)),
            sent: HashMap::new(),
        };
        if let Some((c, m, echo)) = error {
            qt.fail(&c, m, echo);
        }
        self.tasks.insert(task, qt);
        self.woken.store(true, Ordering::Release);
        if let Some((_, early)) = self.early.remove(&task) {
            for (src, bytes) in early {
                self.early_bytes = self.early_bytes.saturating_sub(bytes.len());
                self.apply_chunk(task, src, Chunk::Copied(bytes));
            }
        }
    }

    /// Polls every woken stage; answers tasks that are complete.
    fn poll_tasks(&mut self) {
        if !self.woken.swap(false, Ordering::AcqRel) {
            return;
        }
        let ids: Vec<u64> = self.tasks.keys().copied().collect();
        for task in ids {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            let mut failure = None;
            for s in t.stages.iter_mut() {
                if s.finished {
                    continue;
                }
                match s.fut.poll() {
                    None => {}
                    Some(Ok(Ok(()))) => s.finished = true,
                    Some(Ok(Err(e))) => {
                        s.finished = true;
                        let (c, m) = df_reply(&e);
                        // An input that failed because a peer aborted is an echo.
                        let echo = m.contains("the task failed") || m.contains("aborted by");
                        failure.get_or_insert((c, m, echo));
                    }
                    Some(Err(panic)) => {
                        s.finished = true;
                        s.output.fail();
                        failure.get_or_insert(("XX000".into(), panic, false));
                    }
                }
            }
            if let Some((c, m, echo)) = failure {
                t.fail(&c, m, echo);
            }
            self.maybe_finish(task);
        }
    }

    fn on_chunk(&mut self, from: u32, src: Addr, task: u64, data: ChunkRef) {
        let sender = if let Some(s) = src.as_tstore() {
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
            s
        } else if src.as_controller() == Some(from) {
            PRIMARY
        } else {
            tracing::warn!("tstore {}: exchange chunk from {src:?} ignored", self.id());
            return;
        };
        if self.done.contains(&task) {
            return;
        }
        if self.tasks.contains_key(&task) {
            self.apply_chunk(task, sender, Chunk::InPlace(data));
            self.maybe_finish(task);
            return;
        }
        // The request has not reached us yet: keep a copy, release the ring space.
        let bytes = data.bytes().to_vec();
        drop(data);
        if self.early_bytes + bytes.len() > MAX_EARLY_BYTES {
            tracing::warn!(
                "tstore {}: dropping an early chunk of task {task} ({} bytes held)",
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
            .push((sender, bytes));
    }

    fn apply_chunk(&mut self, task: u64, sender: u32, chunk: Chunk) {
        let budget = IN_PLACE_CHUNKS * self.t.router.max_chunk();
        let held = self.held.clone();
        let id = self.id();
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        let (ipc_len, tr) = match ChunkTrailer::split(chunk.bytes()) {
            Ok((ipc, tr)) => (ipc.len(), tr),
            Err(e) => {
                tracing::warn!("tstore {id}: {e}");
                t.fail(
                    "08P01",
                    format!("bad exchange chunk from {sender:#x}: {e}"),
                    false,
                );
                return;
            }
        };
        let Some(input) = t.inputs.get_mut(&tr.exchange) else {
            t.fail(
                "08P01",
                format!(
                    "a chunk of exchange {} that tstore {id} does not receive",
                    tr.exchange
                ),
                false,
            );
            return;
        };
        if !input.waiting.contains(&sender) {
            t.fail(
                "08P01",
                format!(
                    "exchange {}: a chunk after the sender's last one",
                    tr.exchange
                ),
                false,
            );
            return;
        }
        if tr.flags & CHUNK_ABORT != 0 {
            input.queue.fail(format!(
                "the query was aborted by {} (see its error)",
                if sender == PRIMARY {
                    "the primary".to_string()
                } else {
                    format!("tstore {sender}")
                }
            ));
        } else if ipc_len > 0 {
            let in_place = matches!(chunk, Chunk::InPlace(_))
                && !input.copy
                && held.load(Ordering::Acquire) + ipc_len <= budget;
            let decoded = match &chunk {
                Chunk::InPlace(c) if in_place => decode_in_place(c, ipc_len, &held),
                other => decode_copied(&other.bytes()[..ipc_len]),
            };
            drop(chunk);
            match decoded {
                Ok(bs) => {
                    let rows: usize = bs.iter().map(|b| b.num_rows()).sum();
                    if rows as u64 != tr.rows {
                        t.fail(
                            "08P01",
                            format!("an exchange chunk says {} rows, holds {rows}", tr.rows),
                            false,
                        );
                        return;
                    }
                    for b in bs {
                        input.queue.push(b);
                    }
                }
                Err(e) => {
                    t.fail(
                        store_sqlstate(&e),
                        format!("exchange {}: {e}", tr.exchange),
                        false,
                    );
                    return;
                }
            }
        }
        if tr.flags & (CHUNK_LAST | CHUNK_ABORT) != 0 {
            input.waiting.remove(&sender);
            input.queue.finish_sender();
        }
        self.woken.store(true, Ordering::Release);
    }

    /// Answers a task once its stages are done and their outputs sent.
    fn maybe_finish(&mut self, task: u64) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if !t.stages.iter().all(|s| s.finished || s.fut.is_done()) {
            if t.error.is_none() {
                return;
            }
        }
        // Every output's channel must be closed (its LAST or ABORT sent).
        let open = self
            .out
            .iter()
            .any(|o| matches!(o, Out::Stream(c) if c.task == task));
        if open {
            return;
        }
        let Some(t) = self.tasks.remove(&task) else {
            return;
        };
        let reply = match t.error {
            Some((sqlstate, message, echo)) => Reply::Error {
                sqlstate,
                message,
                echo,
            },
            None => Reply::Done {
                stages: t
                    .stages
                    .iter()
                    .map(|s| StageReport {
                        stage: s.id,
                        operators: smrdb_planner::explain::plan_metrics(&s.plan)
                            .into_iter()
                            .map(|OperatorMetrics { rows, compute_ns }| (rows, compute_ns))
                            .collect(),
                        sent: t.sent.get(&s.id).copied().unwrap_or_default(),
                    })
                    .collect(),
            },
        };
        self.remember_done(task);
        self.queue_reply(task, t.to, reply);
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
        let ids: Vec<u64> = self.tasks.keys().copied().collect();
        for task in ids {
            if let Some(t) = self.tasks.get_mut(&task) {
                // A task that waits on the node, or whose answer would go to it (a lost
                // primary), cannot finish.
                let primary_lost = t.to.as_controller() == Some(node);
                let waits_on_it = primary_lost
                    || t.inputs
                        .values()
                        .any(|i| i.waiting.iter().any(|s| on_node.contains(s)));
                if waits_on_it {
                    t.fail(
                        "08006",
                        format!("node {node} was lost during the query: {reason}"),
                        false,
                    );
                }
            }
            self.woken.store(true, Ordering::Release);
            self.maybe_finish(task);
        }
    }

    /// Fails tasks past their deadline and forgets stale early chunks.
    fn sweep(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .tasks
            .iter()
            .filter(|(_, t)| now >= t.deadline)
            .map(|(k, _)| *k)
            .collect();
        for task in late {
            if let Some(t) = self.tasks.get_mut(&task) {
                let missing: BTreeSet<u32> = t
                    .inputs
                    .values()
                    .flat_map(|i| i.waiting.iter().copied())
                    .collect();
                t.fail(
                    "57014",
                    format!(
                        "the query timed out on tstore {} waiting for chunks from {missing:?}",
                        self.t.id
                    ),
                    false,
                );
            }
            self.woken.store(true, Ordering::Release);
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
    fn pump(&mut self) -> Result<bool, RouterError> {
        let router = self.t.router.clone();
        let max = router.max_chunk();
        let mut blocked = false;
        let mut finished_tasks = Vec::new();
        let mut i = 0;
        while i < self.out.len() {
            let done = match &mut self.out[i] {
                Out::Object {
                    dst,
                    task,
                    object,
                    data,
                    next,
                } => {
                    let nchunks = data.len().div_ceil(max).max(1);
                    let mut finished = false;
                    while *next < nchunks {
                        let lo = (*next * max).min(data.len());
                        let hi = ((*next + 1) * max).min(data.len());
                        let buf = match router.try_alloc(hi - lo) {
                            Ok(Some(b)) => b,
                            Ok(None) => {
                                blocked = true;
                                break;
                            }
                            Err(RouterError::Shutdown) => return Err(RouterError::Shutdown),
                            Err(e) => {
                                tracing::error!(
                                    "tstore {}: the reply to {dst:?} for task {task} cannot be sent: {e}",
                                    self.t.id
                                );
                                finished = true;
                                break;
                            }
                        };
                        let mut buf = buf;
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
                        if let Err(e) = router.send(buf, spec) {
                            tracing::warn!(
                                "tstore {}: reply to {:?} for task {} failed: {e}",
                                self.t.id,
                                spec.dst,
                                spec.query
                            );
                        }
                        finished = *next == nchunks;
                    }
                    finished
                }
                Out::Stream(c) => match c.pump(&router) {
                    Ok(Pumped::Closed) => {
                        finished_tasks.push((c.task, c.exchange, c.sent, c.too_big));
                        true
                    }
                    Ok(Pumped::Waiting) => false,
                    Ok(Pumped::Blocked) => {
                        blocked = true;
                        false
                    }
                    Err(RouterError::Shutdown) => return Err(RouterError::Shutdown),
                    Err(e) => {
                        tracing::error!(
                            "tstore {}: exchange {} of task {} cannot be sent: {e}",
                            self.t.id,
                            c.exchange,
                            c.task
                        );
                        c.output.fail();
                        finished_tasks.push((c.task, c.exchange, c.sent, false));
                        if let Some(t) = self.tasks.get_mut(&c.task) {
                            t.fail(
                                "53200",
                                format!("tstore {} could not send its rows: {e}", self.t.id),
                                false,
                            );
                        }
                        true
                    }
                },
            };
            if done {
                self.out.remove(i);
            } else {
                i += 1;
            }
            if blocked {
                break;
            }
        }
        let replies_queued = !finished_tasks.is_empty();
        for (task, exchange, sent, too_big) in finished_tasks {
            if let Some(t) = self.tasks.get_mut(&task) {
                if too_big {
                    t.fail(
                        "54000",
                        format!(
                            "a row of exchange {exchange} is larger than a router chunk ({max} bytes); {}", crate::error::CHUNK_HINT
                        ),
                        false,
                    );
                }
                if let Some(s) = t.stages.iter().find(|s| s.exchange == exchange) {
                    let id = s.id;
                    t.sent.insert(id, sent);
                }
            }
            self.maybe_finish(task);
        }
        if replies_queued && !blocked {
            // Closing a channel may have completed a task: send its reply now.
            return self.pump();
        }
        Ok(blocked)
    }
}

/// An exchange chunk's bytes: in place in the ring, or copied out.
enum Chunk {
    InPlace(ChunkRef),
    Copied(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::InPlace(c) => c.bytes(),
            Chunk::Copied(v) => v,
        }
    }
}
