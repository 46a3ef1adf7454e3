//! A running node: router, controller thread, Tstore threads, and on the primary the
//! catalog, engine and Postgres listener.
//!
//! Data directory layout (`--data-dir D`):
//!
//! ```text
//! D/node-K/catalog.json      the primary's catalog (see crate::catalog)
//! D/node-K/stmt.log          the primary's statement log (see crate::redo)
//! D/node-K/tstore-i/         local Tstore i's store: wal.log, MANIFEST.json, *.arrow
//! ```

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smrdb_router::placement::Placement;
use smrdb_router::{Inbox, Router, RouterConfig};
use smrdb_transport::{Fabric, FabricKind};
use smrdb_tstore::Store;

use crate::auth::Authenticator;
use crate::catalog::Catalog;
use crate::config::ClusterFile;
use crate::dispatch::{run_secondary_controller, Dispatcher};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::redo::StmtLog;
use crate::worker::Tstore;

/// Stack of the threads that plan or run plans (the Postgres runtime's, the Tstores'):
/// DataFusion's planner, optimizer and plan codec recurse over the plan tree. Only
/// touched pages are backed by memory.
const PLANNING_STACK: usize = 64 << 20;

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The cluster.
    pub cluster: ClusterFile,
    /// This node's id.
    pub id: u32,
    /// Persistent state root, or volatile.
    pub data_dir: Option<PathBuf>,
}

/// How a node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exit {
    /// Asked to stop (a secondary whose primary is lost waits for it instead).
    Stopped,
}

/// Environment variable with a fault plan for this node's fabric (tests and
/// experiments only; see [`smrdb_transport::fault::FaultPlan`]'s `FromStr`), e.g.
/// `SMRDB_FAULTS=delay_ms=500,peers=2`.
pub const FAULTS_ENV: &str = "SMRDB_FAULTS";

fn start_router(
    mut cfg: RouterConfig,
    kind: FabricKind,
    l: TcpListener,
) -> Result<(Router, Vec<Inbox>)> {
    fn go<F: Fabric>(cfg: RouterConfig, l: TcpListener) -> Result<(Router, Vec<Inbox>)> {
        if cfg.fabric.faults.is_some() {
            Ok(Router::start::<smrdb_transport::fault::Faulty<F>>(cfg, l)?)
        } else {
            Ok(Router::start::<F>(cfg, l)?)
        }
    }
    if let Some(plan) = std::env::var(FAULTS_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        let plan: smrdb_transport::fault::FaultPlan = plan
            .parse()
            .map_err(|e| Error::Config(format!("{FAULTS_ENV}: {e}")))?;
        tracing::warn!("fault injection on this node's fabric: {plan:?}");
        cfg.fabric.faults = Some(plan);
    }
    match kind {
        FabricKind::Shm => go::<smrdb_transport::shm::Shm>(cfg, l),
        FabricKind::Tcp => go::<smrdb_transport::tcp::Tcp>(cfg, l),
        #[cfg(feature = "verbs")]
        FabricKind::Verbs => go::<smrdb_transport::verbs::Verbs>(cfg, l),
        #[cfg(not(feature = "verbs"))]
        FabricKind::Verbs => Err(Error::Config(
            "this smrdb was built without the verbs feature".into(),
        )),
    }
}

/// Runs a node until `stop` is set. A lost peer that comes back is readmitted (see
/// [`Engine::readmit`]); a secondary whose primary is lost waits for it.
///
/// `ready` is called once the node serves (the primary: its Postgres listener is
/// bound).
///
/// # Errors
/// Configuration, router start-up (peers that do not come up), store and catalog
/// errors.
pub fn run(opts: NodeOptions, stop: Arc<AtomicBool>, ready: impl FnOnce(&str)) -> Result<Exit> {
    let cf = &opts.cluster;
    let me = cf
        .node(opts.id)
        .ok_or_else(|| Error::Config(format!("node {} is not in the cluster file", opts.id)))?
        .clone();
    let primary = cf.primary.node == opts.id;
    let node_dir = opts
        .data_dir
        .as_ref()
        .map(|d| d.join(format!("node-{}", opts.id)));
    if let Some(d) = &node_dir {
        std::fs::create_dir_all(d)?;
    }
    // The primary's catalog first: a data dir written for another cluster size is
    // refused before anything starts.
    let catalog = if primary {
        Some(match &node_dir {
            Some(d) => Catalog::open(d, cf.total_tstores())?,
            None => Catalog::in_memory(cf.total_tstores()),
        })
    } else {
        None
    };
    let stmt_log = match (&node_dir, primary) {
        (Some(d), true) => Some(StmtLog::open(d)?),
        _ => None,
    };
    // The primary's users too (a bad password entry stops the start).
    let auth = if primary {
        Some(
            Authenticator::new(cf.primary.auth, &cf.primary.users)
                .map_err(|e| Error::Config(format!("primary.users: {e}")))?,
        )
    } else {
        None
    };

    let listener = TcpListener::bind(&me.router)
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", me.router)))?;
    let mut rc = cf.router_config(opts.id);
    let placement = Arc::new(Placement::detect());
    let nic = match (cf.fabric, &cf.verbs_device) {
        (FabricKind::Verbs, Some(dev)) => Placement::nic_numa_node(dev),
        _ => None,
    };
    let (cores, router_core) = placement.plan(me.tstores as usize, nic);
    rc.router_core = Some(router_core);
    tracing::info!(
        "node {}: starting router on {} ({} fabric), waiting for {} peer(s)",
        opts.id,
        me.router,
        cf.fabric,
        cf.nodes.len() - 1
    );
    let (router, mut inboxes) = start_router(rc, cf.fabric, listener)?;
    let handle = router.handle();
    tracing::info!("node {}: router up, all peers connected", opts.id);
    if inboxes.len() != 1 + me.tstores as usize {
        return Err(Error::Config(
            "router returned an unexpected number of inboxes".into(),
        ));
    }
    let tstore_inboxes: Vec<Inbox> = inboxes.drain(1..).collect();
    let controller_inbox = inboxes
        .pop()
        .ok_or_else(|| Error::Config("no controller inbox".into()))?;

    // Tstore threads: pin first, then open the store on that core (first touch).
    let worker_stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded::<Result<()>>();
    for (i, (inbox, id)) in tstore_inboxes
        .into_iter()
        .zip(handle.local_tstores())
        .enumerate()
    {
        let core = cores[i];
        let dir = node_dir.as_ref().map(|d| d.join(format!("tstore-{i}")));
        let placement = placement.clone();
        let router = handle.clone();
        let stop = worker_stop.clone();
        let tx = ready_tx.clone();
        let t = std::thread::Builder::new()
            .name(format!("tstore-{id}"))
            .stack_size(PLANNING_STACK)
            .spawn(move || {
                let pinned = match placement.pin_current_thread(core) {
                    Ok(()) => Some(core as u32),
                    Err(e) => {
                        tracing::warn!("tstore {id}: not pinned: {e}");
                        None
                    }
                };
                let store = match &dir {
                    Some(d) => Store::open(d),
                    None => Ok(Store::in_memory()),
                };
                let store = match store {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = tx.send(Err(Error::Store(e)));
                        return;
                    }
                };
                tracing::info!(
                    "tstore {id}: core {core}, {} table(s){}",
                    store.table_names().len(),
                    dir.as_ref()
                        .map(|d| format!(", {}", d.display()))
                        .unwrap_or_default()
                );
                let _ = tx.send(Ok(()));
                Tstore {
                    id,
                    store,
                    inbox,
                    router,
                    core: pinned,
                    stop,
                }
                .run()
            })?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut failure = None;
    for _ in 0..threads.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some(Error::Config("a tstore thread died at start".into())),
        }
    }
    let stop_all = |threads: Vec<std::thread::JoinHandle<()>>, router: Router| {
        worker_stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
        router.shutdown();
    };
    if let Some(e) = failure {
        stop_all(threads, router);
        return Err(e);
    }

    let exit = if let Some(catalog) = catalog {
        let disp = Dispatcher::new(handle.clone(), cf.task_timeout());
        let ctl_stop = Arc::new(AtomicBool::new(false));
        let ctl = {
            let disp = disp.clone();
            let s = ctl_stop.clone();
            std::thread::Builder::new()
                .name("controller".into())
                .spawn(move || disp.run_controller(controller_inbox, s))?
        };
        let mut engine =
            Engine::new(disp.clone(), catalog)?.with_max_intermediate_mib(cf.max_intermediate_mib);
        if let Some(log) = stmt_log {
            engine = engine.with_stmt_log(log);
        }
        let engine = Arc::new(engine);
        // Readmission: a lost node that connected again is checked and brought up to
        // date before statements may use it again.
        let readmitter = {
            let engine = engine.clone();
            let s = ctl_stop.clone();
            std::thread::Builder::new()
                .name("readmit".into())
                .spawn(move || {
                    // A readmission that failed on the way (a timeout, a Tstore error)
                    // is tried again a few times while the node stays connected; one
                    // that found the node unusable (lost again, its data gone) is not.
                    const TRIES: u32 = 5;
                    let mut retry: Vec<(u32, u32, std::time::Instant)> = Vec::new();
                    while !s.load(Ordering::Relaxed) {
                        let now = std::time::Instant::now();
                        let (node, tries) = match retry.iter().position(|r| r.2 <= now) {
                            Some(i) => {
                                let (n, t, _) = retry.swap_remove(i);
                                (n, t)
                            }
                            None => match disp.next_rejoined(Duration::from_millis(200)) {
                                Some(n) => {
                                    retry.retain(|r| r.0 != n);
                                    (n, 0)
                                }
                                None => continue,
                            },
                        };
                        match engine.readmit(node) {
                            Ok(true) => tracing::info!("node {node} is readmitted"),
                            Ok(false) => {
                                tracing::warn!("node {node} was lost again while readmitted")
                            }
                            Err(e @ Error::NodeLost { .. }) => {
                                tracing::error!("node {node} is not readmitted: {e}")
                            }
                            Err(e) if tries + 1 < TRIES => {
                                tracing::warn!(
                                    "node {node} not readmitted yet ({e}); trying again in 1 s"
                                );
                                retry.push((node, tries + 1, now + Duration::from_secs(1)));
                            }
                            Err(e) => tracing::error!(
                                "node {node} is not readmitted after {TRIES} tries: {e}"
                            ),
                        }
                    }
                })?
        };
        let auth = auth.unwrap_or_else(Authenticator::trust);
        let host = cf.primary.pg_host.trim();
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addr = if host.contains(':') {
            format!("[{host}]:{}", cf.primary.pg_port)
        } else {
            format!("{host}:{}", cf.primary.pg_port)
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("pg")
            // DataFusion plans recursively: a join of many tables with subqueries runs
            // deep (a 4-way join with NOT IN / EXISTS overflowed the 2 MiB default).
            .thread_stack_size(PLANNING_STACK)
            .build()?;
        let served: Result<()> = rt.block_on(async {
            // Statements cut by the last crash are completed before any client is served.
            engine.recover()?;
            let l = tokio::net::TcpListener::bind((host.as_str(), cf.primary.pg_port))
                .await
                .map_err(|e| Error::Config(format!("cannot listen for Postgres on {addr}: {e}")))?;
            if let Ok(local) = l.local_addr() {
                if !local.ip().is_loopback() {
                    tracing::warn!(
                        "Postgres listens on {local}, beyond loopback (authentication: {})",
                        cf.primary.auth
                    );
                }
            }
            ready(&addr);
            let s = stop.clone();
            let stopped = async move {
                while !s.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            crate::pg::serve(l, engine, auth, stopped).await;
            Ok(())
        });
        rt.shutdown_timeout(Duration::from_secs(2));
        ctl_stop.store(true, Ordering::Relaxed);
        let _ = ctl.join();
        let _ = readmitter.join();
        served.map(|_| Exit::Stopped)
    } else {
        ready("");
        run_secondary_controller(controller_inbox, cf.primary.node, stop.clone());
        Ok(Exit::Stopped)
    };
    tracing::info!("node {}: stopping", opts.id);
    stop_all(threads, router);
    exit
}
