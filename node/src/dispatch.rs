//! The primary controller: sends task requests to Tstores through the router and
//! gathers exactly one reply per Tstore.
//!
//! Callers (statement threads) register a pending task, send, and wait on a channel;
//! the controller thread ([`Dispatcher::run_controller`]) owns the controller inbox,
//! reassembles replies and routes each to its task. A lost node fails every task
//! waiting on one of its Tstores, and every later task that needs it, with an error
//! naming the node, until it is readmitted: when the router reports that the node
//! connected again ([`Dispatcher::next_rejoined`]), the engine checks it and completes
//! what its loss cut (`Engine::readmit`) and then clears the mark
//! ([`Dispatcher::readmit`]).
//!
//! A statement can be interrupted (a client's CancelRequest, `statement_timeout`):
//! the thread running it installs an [`Interrupt`] ([`Interrupt::install`]) and every
//! exchange on that thread checks it before sending and, for read-only requests
//! (queries, joins, statistics), while waiting. An interrupted task is abandoned: it is
//! removed from the pending set, so its replies, when they come, are dropped by the
//! controller as late replies (task ids are never reused) while the Tstores finish the
//! work. A write that has been sent is never abandoned: its changes will be applied,
//! so the statement waits for them and reports them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use smrdb_router::{Addr, Inbound, Inbox, RouterError, RouterHandle};

use crate::engine::GatherLimit;
use crate::error::{Error, Result};
use crate::proto::{self, Body, Reassembler, Reply, Request, TAG_TASK, TAG_XCHG};

/// What the controller hands a waiting statement.
pub enum Event {
    /// A Tstore's reply.
    Reply(u32, Reply),
    /// A node was lost.
    Lost(u32, String),
    /// An exchange chunk for the primary (a gather).
    Chunk(smrdb_router::Delivery),
}

/// How often a waiting statement looks at its [`Interrupt`].
const INTERRUPT_POLL: Duration = Duration::from_millis(20);

/// SQLSTATE of a canceled statement.
pub const QUERY_CANCELED: &str = "57014";

/// When the statement running on a thread must stop: a cancel flag (set by a
/// client's CancelRequest) and an optional deadline (`statement_timeout`).
#[derive(Debug, Clone)]
pub struct Interrupt {
    cancel: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

thread_local! {
    static CURRENT: RefCell<Option<Interrupt>> = const { RefCell::new(None) };
}

/// Restores the thread's previous [`Interrupt`] when dropped.
#[must_use = "the interrupt is uninstalled when the guard drops"]
pub struct InterruptGuard {
    previous: Option<Interrupt>,
}

impl Drop for InterruptGuard {
    fn drop(&mut self) {
        let p = self.previous.take();
        CURRENT.with(|c| *c.borrow_mut() = p);
    }
}

impl Interrupt {
    /// An interrupt raised by `cancel` or, with a timeout, `timeout` from now.
    pub fn new(cancel: Arc<AtomicBool>, timeout: Option<Duration>) -> Interrupt {
        Interrupt {
            cancel,
            deadline: timeout.and_then(|t| Instant::now().checked_add(t)),
        }
    }

    /// Ok while the statement may go on; else the error it fails with (SQLSTATE
    /// 57014, as PostgreSQL words it).
    ///
    /// # Errors
    /// Canceled or past the deadline.
    pub fn check(&self) -> Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::sql(
                QUERY_CANCELED,
                "canceling statement due to user request",
            ));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(Error::sql(
                QUERY_CANCELED,
                "canceling statement due to statement timeout",
            ));
        }
        Ok(())
    }

    /// Makes this the current thread's interrupt until the guard drops.
    pub fn install(&self) -> InterruptGuard {
        let previous = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        InterruptGuard { previous }
    }

    /// The current thread's interrupt, if any.
    pub fn current() -> Option<Interrupt> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Checks the current thread's interrupt (Ok without one).
    ///
    /// # Errors
    /// As [`Interrupt::check`].
    pub fn check_current() -> Result<()> {
        match Self::current() {
            Some(i) => i.check(),
            None => Ok(()),
        }
    }
}

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every Tstore of the cluster (one broadcast).
    All,
    /// One Tstore.
    One(u32),
}

/// A node known to be lost.
#[derive(Debug, Clone)]
struct Lost {
    reason: String,
    /// [`Dispatcher::losses`] when it was (last) marked.
    epoch: u64,
}

/// The primary's task dispatcher.
pub struct Dispatcher {
    router: RouterHandle,
    pending: Mutex<HashMap<u64, Sender<Event>>>,
    lost: Mutex<BTreeMap<u32, Lost>>,
    /// Losses seen so far (orders a readmission against a later loss of the node).
    losses: AtomicU64,
    rejoined: (Sender<u32>, Receiver<u32>),
    next_task: AtomicU64,
    timeout: Duration,
}

/// The first task id of this run: microseconds since the epoch, shifted so that a
/// restarted primary's ids are above those of its previous run (Tstores remember
/// finished task ids and would take a reused one for a duplicate).
fn first_task_id() -> u64 {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    // 2^52 µs is 142 years; 2^11 task ids per µs of downtime leave room for any run.
    (us & ((1 << 52) - 1)) << 11 | 1
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Dispatcher {
    /// A dispatcher over `router` waiting up to `timeout` for the replies of a task.
    pub fn new(router: RouterHandle, timeout: Duration) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            router,
            pending: Mutex::new(HashMap::new()),
            lost: Mutex::new(BTreeMap::new()),
            losses: AtomicU64::new(0),
            rejoined: crossbeam_channel::unbounded(),
            next_task: AtomicU64::new(first_task_id()),
            timeout,
        })
    }

    /// How long a task waits for its replies.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The router.
    pub fn router(&self) -> &RouterHandle {
        &self.router
    }

    /// Total Tstores of the cluster.
    pub fn total_tstores(&self) -> u32 {
        self.router.map().total_tstores()
    }

    /// The node holding Tstore `id`.
    pub fn node_of(&self, id: u32) -> Option<u32> {
        let m = self.router.map();
        m.owner_of(id).map(|i| m.nodes()[i].id)
    }

    /// Nodes known to be lost, with the reason.
    pub fn lost_nodes(&self) -> BTreeMap<u32, String> {
        lock(&self.lost)
            .iter()
            .map(|(n, l)| (*n, l.reason.clone()))
            .collect()
    }

    /// The Tstores of `node`.
    pub fn tstores_of(&self, node: u32) -> Vec<u32> {
        let m = self.router.map();
        m.index_of(node)
            .map(|i| m.tstores_of(i).collect())
            .unwrap_or_default()
    }

    /// Losses seen so far; pass it to [`Dispatcher::readmit`].
    pub fn losses(&self) -> u64 {
        self.losses.load(Ordering::Acquire)
    }

    /// The next node the router readmitted (it connected again after it was lost),
    /// waiting up to `timeout`.
    pub fn next_rejoined(&self, timeout: Duration) -> Option<u32> {
        self.rejoined.1.recv_timeout(timeout).ok()
    }

    /// Marks `node` lost with `reason` (a readmission that found it unusable).
    pub fn mark_lost(&self, node: u32, reason: String) {
        let epoch = self.losses.fetch_add(1, Ordering::AcqRel) + 1;
        lock(&self.lost).insert(node, Lost { reason, epoch });
    }

    /// Serves `node` again, unless it was lost again after `since` (a value of
    /// [`Dispatcher::losses`] read before the readmission's checks). Returns whether
    /// the mark was cleared.
    pub fn readmit(&self, node: u32, since: u64) -> bool {
        let mut lost = lock(&self.lost);
        match lost.get(&node) {
            Some(l) if l.epoch <= since => {
                lost.remove(&node);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    fn check_alive(&self, tstores: &BTreeSet<u32>, admitting: Option<u32>) -> Result<()> {
        let lost = lock(&self.lost);
        for &t in tstores {
            if let Some(n) = self.node_of(t).filter(|&n| Some(n) != admitting) {
                if let Some(l) = lost.get(&n) {
                    return Err(Error::NodeLost {
                        node: n,
                        reason: format!(
                            "{} (restart it with its data directory: the cluster readmits it)",
                            l.reason
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Sends `req` to `target` and returns one reply per Tstore reached (sorted by
    /// Tstore id). An `Error` reply is returned as is (see [`first_error`]).
    ///
    /// # Errors
    /// Lost nodes, router failures, timeouts.
    pub fn call(&self, target: Target, req: Request) -> Result<Vec<(u32, Reply)>> {
        self.exchange(vec![(addr(target), req)], true, None, None)
    }

    /// As [`Dispatcher::call`] for a query or join whose results are bounded by
    /// `limit`: the replies' result bytes are summed as they arrive, and once the sum
    /// passes the limit the statement fails (53200, see [`GatherLimit::check`]) without
    /// waiting for the rest (their late replies are dropped).
    ///
    /// # Errors
    /// As [`Dispatcher::call`]; 53200.
    pub fn call_gathering(
        &self,
        target: Target,
        req: Request,
        limit: GatherLimit,
    ) -> Result<Vec<(u32, Reply)>> {
        self.exchange(vec![(addr(target), req)], true, None, Some(limit))
    }

    /// Sends the requests of a statement already recorded in the primary's statement
    /// log (see `crate::redo`) and gathers the replies. Unlike [`Dispatcher::call`] it
    /// does not look at the thread's [`Interrupt`] before sending: a logged statement
    /// is completed (now, or at the next start).
    ///
    /// # Errors
    /// As [`Dispatcher::call`].
    pub fn call_logged(&self, msgs: Vec<(Target, Request)>) -> Result<Vec<(u32, Reply)>> {
        self.exchange(
            msgs.into_iter().map(|(t, r)| (addr(t), r)).collect(),
            false,
            None,
            None,
        )
    }

    /// As [`Dispatcher::call_logged`], while `node` is being readmitted: its lost
    /// mark does not stop these requests (every other lost node does).
    ///
    /// # Errors
    /// As [`Dispatcher::call`].
    pub fn call_admitting(
        &self,
        node: u32,
        msgs: Vec<(Target, Request)>,
    ) -> Result<Vec<(u32, Reply)>> {
        self.exchange(
            msgs.into_iter().map(|(t, r)| (addr(t), r)).collect(),
            false,
            Some(node),
            None,
        )
    }

    /// Ok when no node of the cluster is known to be lost.
    ///
    /// # Errors
    /// [`Error::NodeLost`] naming a lost node.
    pub fn check_all_alive(&self) -> Result<()> {
        self.check_alive(&(0..self.total_tstores()).collect(), None)
    }

    /// Sends a different request to each listed Tstore (one message each) under one
    /// task id and gathers the replies.
    ///
    /// # Errors
    /// As [`Dispatcher::call`].
    pub fn call_each(&self, reqs: Vec<(u32, Request)>) -> Result<Vec<(u32, Reply)>> {
        self.exchange(
            reqs.into_iter()
                .map(|(t, r)| (Addr::tstore(t), r))
                .collect(),
            true,
            None,
            None,
        )
    }

    /// Sends and gathers; `interruptible`: the thread's [`Interrupt`] may stop the
    /// exchange before anything is sent; `admitting`: a lost node being readmitted;
    /// `budget`: the bound on the result bytes gathered.
    fn exchange(
        &self,
        msgs: Vec<(Addr, Request)>,
        interruptible: bool,
        admitting: Option<u32>,
        budget: Option<GatherLimit>,
    ) -> Result<Vec<(u32, Reply)>> {
        let total = self.total_tstores();
        let mut expect = BTreeSet::new();
        for (a, _) in &msgs {
            if *a == Addr::ALL_TSTORES {
                expect.extend(0..total);
            } else {
                match a.as_tstore() {
                    Some(t) if t < total => {
                        if !expect.insert(t) {
                            return Err(Error::Protocol(format!("two requests for tstore {t}")));
                        }
                    }
                    _ => return Err(Error::Protocol(format!("no such tstore {a:?}"))),
                }
            }
        }
        if expect.is_empty() {
            return Ok(Vec::new());
        }
        self.check_alive(&expect, admitting)?;
        // Nothing is sent yet: any statement may stop here. Once sent, only reads
        // are abandoned (see the module documentation).
        let interrupt = Interrupt::current().filter(|_| interruptible);
        if let Some(i) = &interrupt {
            i.check()?;
        }
        let reads_only = msgs.iter().all(|(_, r)| {
            matches!(
                r,
                Request::Stages { .. } | Request::Stats | Request::LastStmt
            )
        });
        let interrupt = interrupt.filter(|_| reads_only);
        let task = self.next_task.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        lock(&self.pending).insert(task, tx);
        let res = self.send_and_wait(task, msgs, expect, rx, interrupt.as_ref(), budget);
        lock(&self.pending).remove(&task);
        if res.is_err() {
            tracing::debug!("task {task} abandoned; its late replies will be dropped");
        }
        res
    }

    fn send_and_wait(
        &self,
        task: u64,
        msgs: Vec<(Addr, Request)>,
        mut expect: BTreeSet<u32>,
        rx: Receiver<Event>,
        interrupt: Option<&Interrupt>,
        budget: Option<GatherLimit>,
    ) -> Result<Vec<(u32, Reply)>> {
        let mut gathered = 0u64;
        let tstores = expect.len();
        let me = Addr::controller(self.router.me());
        for (dst, req) in msgs {
            let bytes = proto::encode(task, Body::Request(req))?;
            self.router
                .send_bytes(me, dst, TAG_TASK, task, &bytes)
                .map_err(|e| match e {
                    RouterError::PeerLost { node, reason } => Error::NodeLost { node, reason },
                    e => Error::Router(e),
                })?;
        }
        let deadline = Instant::now() + self.timeout;
        let mut replies = Vec::with_capacity(expect.len());
        while !expect.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = match interrupt {
                Some(i) => {
                    i.check()?;
                    left.min(INTERRUPT_POLL)
                }
                None => left,
            };
            match rx.recv_timeout(wait) {
                Ok(Event::Reply(t, r)) => {
                    if expect.remove(&t) {
                        if let Some(limit) = &budget {
                            gathered += match &r {
                                Reply::Stats { tables, .. } => tables.len() as u64,
                                _ => 0,
                            };
                            limit.check(gathered, replies.len() + 1, tstores)?;
                        }
                        replies.push((t, r));
                    } else {
                        tracing::warn!(
                            "task {task}: unexpected or duplicate reply from tstore {t}"
                        );
                    }
                }
                Ok(Event::Lost(node, reason)) => {
                    if expect.iter().any(|&t| self.node_of(t) == Some(node)) {
                        return Err(Error::NodeLost { node, reason });
                    }
                }
                Ok(Event::Chunk(_)) => {
                    tracing::warn!("task {task}: an exchange chunk for a plain request dropped");
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) if wait < left => {
                    // A poll for the interrupt, checked at the top of the loop.
                }
                Err(_) => {
                    let missing: Vec<String> = expect
                        .iter()
                        .map(|t| format!("tstore {t} (node {})", self.node_of(*t).unwrap_or(0)))
                        .collect();
                    return Err(Error::Timeout {
                        what: format!("replies from {}", missing.join(", ")),
                        secs: self.timeout.as_secs(),
                    });
                }
            }
        }
        replies.sort_by_key(|(t, _)| *t);
        Ok(replies)
    }

    /// The controller thread's loop on the primary: routes replies to their tasks and
    /// turns lost peers into task failures. Returns when `stop` is set or the router
    /// shuts down.
    pub fn run_controller(&self, inbox: Inbox, stop: Arc<AtomicBool>) {
        let mut asm = Reassembler::new();
        while !stop.load(Ordering::Relaxed) {
            let d = match inbox.recv(Duration::from_millis(200)) {
                Ok(Inbound::Data(d)) => d,
                Ok(Inbound::PeerLost { node, reason }) => {
                    tracing::error!("node {node} is lost: {reason}");
                    asm.forget(node);
                    self.mark_lost(node, reason.clone());
                    for tx in lock(&self.pending).values() {
                        let _ = tx.send(Event::Lost(node, reason.clone()));
                    }
                    continue;
                }
                Ok(Inbound::PeerJoined { node }) => {
                    tracing::info!("node {node} connected again; readmitting it");
                    let _ = self.rejoined.0.send(node);
                    continue;
                }
                Err(RouterError::Timeout { .. }) => continue,
                Err(_) => break,
            };
            if d.spec.tag == TAG_XCHG {
                let tx = lock(&self.pending).get(&d.spec.query).cloned();
                match tx {
                    Some(tx) => {
                        let _ = tx.send(Event::Chunk(d));
                    }
                    None => tracing::debug!("late exchange chunk of task {}", d.spec.query),
                }
                continue;
            }
            if d.spec.tag != TAG_TASK {
                tracing::warn!("controller: ignoring a message with tag {:#x}", d.spec.tag);
                continue;
            }
            let obj = match asm.push(d) {
                Ok(Some(o)) => o,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("controller: {e}");
                    continue;
                }
            };
            let Some(t) = obj.src.as_tstore() else {
                tracing::warn!("controller: message from {:?} ignored", obj.src);
                continue;
            };
            if self.node_of(t) != Some(obj.from) {
                tracing::warn!("controller: tstore {t} does not live on node {}", obj.from);
                continue;
            }
            match proto::decode(&obj.bytes, obj.query) {
                Ok(env) => match env.body {
                    Body::Reply(r) => {
                        let tx = lock(&self.pending).get(&env.task).cloned();
                        match tx {
                            Some(tx) => {
                                let _ = tx.send(Event::Reply(t, r));
                            }
                            None => {
                                tracing::debug!("late reply to task {} from tstore {t}", env.task)
                            }
                        }
                    }
                    Body::Request(_) => {
                        tracing::warn!("controller: request from tstore {t} ignored")
                    }
                },
                Err(e) => {
                    tracing::warn!("controller: bad message from tstore {t}: {e}");
                    // Fail the task rather than wait for its timeout.
                    let tx = lock(&self.pending).get(&obj.query).cloned();
                    if let Some(tx) = tx {
                        let _ = tx.send(Event::Reply(
                            t,
                            Reply::Error {
                                sqlstate: "08P01".into(),
                                message: format!("bad reply from tstore {t}: {e}"),
                                echo: false,
                            },
                        ));
                    }
                }
            }
        }
    }
}

/// A task whose events (replies, exchange chunks, lost nodes) a statement handles
/// itself: a query of stages. Dropping it forgets the task (late events are dropped).
pub struct OpenTask<'a> {
    disp: &'a Dispatcher,
    /// The task id.
    pub id: u64,
    /// Its events.
    pub events: Receiver<Event>,
}

impl Drop for OpenTask<'_> {
    fn drop(&mut self) {
        lock(&self.disp.pending).remove(&self.id);
    }
}

impl OpenTask<'_> {
    /// Sends a request of this task to every Tstore.
    ///
    /// # Errors
    /// Encoding and router errors (a lost node: [`Error::NodeLost`]).
    pub fn send_all(&self, req: Request) -> Result<()> {
        let bytes = proto::encode(self.id, Body::Request(req))?;
        let me = Addr::controller(self.disp.router.me());
        self.disp
            .router
            .send_bytes(me, Addr::ALL_TSTORES, TAG_TASK, self.id, &bytes)
            .map_err(|e| match e {
                RouterError::PeerLost { node, reason } => Error::NodeLost { node, reason },
                e => Error::Router(e),
            })?;
        Ok(())
    }
}

impl Dispatcher {
    /// Opens a task the caller drives (see [`OpenTask`]), after checking that every
    /// node is alive.
    ///
    /// # Errors
    /// A lost node.
    pub fn open_task(&self) -> Result<OpenTask<'_>> {
        self.check_all_alive()?;
        Ok(self.open_local_task())
    }

    /// A task id and event channel for work that involves no other node (a query that
    /// runs on the primary alone): it opens while nodes are lost.
    pub fn open_local_task(&self) -> OpenTask<'_> {
        let id = self.next_task.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crossbeam_channel::unbounded();
        lock(&self.pending).insert(id, tx);
        OpenTask {
            disp: self,
            id,
            events: rx,
        }
    }
}

fn addr(t: Target) -> Addr {
    match t {
        Target::All => Addr::ALL_TSTORES,
        Target::One(t) => Addr::tstore(t),
    }
}

/// The first `Error` reply as an [`Error::Sql`], if any.
pub fn first_error(replies: &[(u32, Reply)]) -> Result<()> {
    let mut echo = None;
    for (_, r) in replies {
        if let Reply::Error {
            sqlstate,
            message,
            echo: e,
        } = r
        {
            if *e {
                echo.get_or_insert_with(|| Error::sql(sqlstate, message.clone()));
            } else {
                return Err(Error::sql(sqlstate, crate::error::resource_hint(message)));
            }
        }
    }
    match echo {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The secondary controller's loop: nothing is addressed to it in this protocol, so it
/// logs what arrives. A lost primary is waited for: the router readmits it when it is
/// restarted (with its data directory), and this node serves it again. Returns when
/// `stop` is set or the router shuts down.
pub fn run_secondary_controller(inbox: Inbox, primary: u32, stop: Arc<AtomicBool>) {
    let mut primary_lost: Option<Instant> = None;
    let mut reminded = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match inbox.recv(Duration::from_millis(200)) {
            Ok(Inbound::Data(d)) => {
                tracing::info!(
                    "controller: message tag {:#x} from {:?} on node {} ({} bytes)",
                    d.spec.tag,
                    d.spec.src,
                    d.from,
                    d.data.bytes().len()
                );
            }
            Ok(Inbound::PeerLost { node, reason }) => {
                if node == primary {
                    tracing::error!(
                        "the primary (node {node}) is lost: {reason}; waiting for it to be \
                         restarted (this node keeps its data and rejoins it)"
                    );
                    primary_lost = Some(Instant::now());
                    reminded = Instant::now();
                } else {
                    tracing::warn!("node {node} is lost: {reason}");
                }
            }
            Ok(Inbound::PeerJoined { node }) => {
                if node == primary {
                    let after = primary_lost.take().map(|t| t.elapsed()).unwrap_or_default();
                    tracing::info!("the primary (node {node}) is back after {after:.1?}");
                } else {
                    tracing::info!("node {node} is back");
                }
            }
            Err(RouterError::Timeout { .. }) => {}
            Err(_) => return,
        }
        if let Some(since) = primary_lost {
            if reminded.elapsed() >= Duration::from_secs(60) {
                reminded = Instant::now();
                tracing::warn!(
                    "still waiting for the primary (node {primary}), lost {:.0?} ago",
                    since.elapsed()
                );
            }
        }
    }
}
