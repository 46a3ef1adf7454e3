//! `smrdb-bench broadcast`: SMR vs naive broadcast, one process per node.
//!
//! Every node broadcasts an `S` MiB object to every Tstore of the cluster at once (the
//! shape of a join-table exchange); a repeat ends when every Tstore on every node has
//! received every object. The driver starts the node processes
//! (`smrdb-bench broadcast-node`) and talks to them over their stdin/stdout:
//!
//! ```text
//! node   -> driver  port P                 (its listener is bound)
//! driver -> node    peers A0,A1,...        (every node's address; the node starts its router)
//! node   -> driver  ready
//! driver -> node    go R                   (repeat R)
//! node   -> driver  done R <crc per source node, as seen by each local Tstore>
//! driver -> node    stats / quit
//! node   -> driver  stats {json}
//! ```

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use smrdb_router::placement::Placement;
use smrdb_router::{Addr, Inbound, Mode, NodeSpec, Router, RouterConfig, RouterStats};
use smrdb_transport::{Fabric, FabricConfig, FabricKind};

/// Options of a broadcast run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fabric.
    pub fabric: FabricKind,
    /// verbs device.
    pub device: Option<String>,
    /// Nodes (processes).
    pub nodes: u32,
    /// Tstores per node.
    pub tstores: u32,
    /// Object size per node, MiB.
    pub size_mib: usize,
    /// SMR or naive.
    pub mode: Mode,
    /// Timed repeats (after one warm-up).
    pub repeats: usize,
    /// Receive ring per peer, MiB.
    pub ring_mib: usize,
    /// Chunk size, KiB.
    pub chunk_kib: usize,
}

/// The run's results (also the `--json` file).
#[derive(Debug, Serialize)]
pub struct Report {
    /// Fabric.
    pub fabric: String,
    /// Mode.
    pub mode: Mode,
    /// Nodes.
    pub nodes: u32,
    /// Tstores per node.
    pub tstores: u32,
    /// Object size per node, bytes.
    pub size_bytes: u64,
    /// Median completion time of a round (every node broadcasting once), seconds.
    pub median_s: f64,
    /// Every timed repeat, seconds.
    pub repeats_s: Vec<f64>,
    /// Payload bytes put on the wire per round (all nodes).
    pub wire_bytes: u64,
    /// Payload bytes on the wire per single broadcast: (N-1)·S in SMR mode,
    /// (N-1)·T·S in naive mode.
    pub wire_bytes_per_broadcast: u64,
    /// Messages sent per round (pointer messages and credits, all nodes).
    pub messages: u64,
    /// Sends that waited for ring space, per round (all nodes).
    pub stalls: u64,
    /// Whether every Tstore saw identical bytes of every object.
    pub checksums_agree: bool,
    /// Per-node router counters over the whole run (warm-up included).
    pub node_stats: Vec<RouterStats>,
}

struct NodeProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    id: u32,
}

impl NodeProc {
    fn say(&mut self, line: &str) -> Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()?;
        Ok(())
    }

    fn hear(&mut self, prefix: &str) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!(
                "node {} exited while the driver waited for {prefix:?}",
                self.id
            );
        }
        let l = line.trim_end();
        l.strip_prefix(prefix)
            .map(|s| s.trim().to_string())
            .with_context(|| format!("node {} said {l:?}, expected {prefix:?}", self.id))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.say("quit");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_args(o: &Options, id: u32) -> Vec<String> {
    let mut a = vec![
        "broadcast-node".to_string(),
        "--fabric".into(),
        o.fabric.as_str().into(),
        "--nodes".into(),
        o.nodes.to_string(),
        "--tstores".into(),
        o.tstores.to_string(),
        "--size-mib".into(),
        o.size_mib.to_string(),
        "--mode".into(),
        match o.mode {
            Mode::Smr => "smr".into(),
            Mode::Naive => "naive".into(),
        },
        "--ring-mib".into(),
        o.ring_mib.to_string(),
        "--chunk-kib".into(),
        o.chunk_kib.to_string(),
        "--id".into(),
        id.to_string(),
    ];
    if let Some(d) = &o.device {
        a.extend(["--device".into(), d.clone()]);
    }
    a
}

/// Runs the broadcast experiment as the driver.
///
/// # Errors
/// A node that fails to start or answer, fabric errors reported by nodes.
pub fn run(o: &Options) -> Result<Report> {
    ensure!(o.nodes >= 2, "--nodes must be at least 2");
    let exe = std::env::current_exe()?;
    let mut procs = Vec::new();
    for id in 0..o.nodes {
        let mut child = Command::new(&exe)
            .args(node_args(o, id))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start node process")?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("stdout")?);
        procs.push(NodeProc {
            child,
            stdin,
            stdout,
            id,
        });
    }
    let mut addrs = Vec::new();
    for p in &mut procs {
        addrs.push(format!("127.0.0.1:{}", p.hear("port")?));
    }
    for p in &mut procs {
        p.say(&format!("peers {}", addrs.join(",")))?;
    }
    for p in &mut procs {
        p.hear("ready")?;
    }
    let mut times = Vec::new();
    let mut agree = true;
    for rep in 0..=o.repeats {
        let t = Instant::now();
        for p in &mut procs {
            p.say(&format!("go {rep}"))?;
        }
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        for p in &mut procs {
            let l = p.hear(&format!("done {rep}"))?;
            // One token per local Tstore: comma-separated crc per source node.
            for tok in l.split_whitespace() {
                seen.entry("all".into()).or_default().push(tok.to_string());
            }
        }
        if rep > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        let v = seen.remove("all").unwrap_or_default();
        agree &= v.len() == (o.nodes * o.tstores) as usize && v.windows(2).all(|w| w[0] == w[1]);
    }
    let mut node_stats = Vec::new();
    for p in &mut procs {
        p.say("stats")?;
        node_stats.push(serde_json::from_str::<RouterStats>(&p.hear("stats")?)?);
    }
    drop(procs);
    let rounds = (o.repeats + 1) as u64;
    let totals: Vec<_> = node_stats.iter().map(RouterStats::total).collect();
    let sum = |f: fn(&smrdb_router::PeerStats) -> u64| totals.iter().map(f).sum::<u64>() / rounds;
    let wire_bytes = sum(|t| t.bytes_written);
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(Report {
        fabric: o.fabric.as_str().into(),
        mode: o.mode,
        nodes: o.nodes,
        tstores: o.tstores,
        size_bytes: (o.size_mib << 20) as u64,
        median_s: sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN),
        repeats_s: times,
        wire_bytes,
        wire_bytes_per_broadcast: wire_bytes / u64::from(o.nodes),
        messages: sum(|t| t.messages_sent),
        stalls: sum(|t| t.stalls),
        checksums_agree: agree,
        node_stats,
    })
}

/// One node process of the experiment (the hidden `broadcast-node` subcommand).
///
/// # Errors
/// Fabric and router errors.
pub fn run_node(o: &Options, id: u32) -> Result<()> {
    match o.fabric {
        FabricKind::Shm => node_with::<smrdb_transport::shm::Shm>(o, id),
        FabricKind::Tcp => node_with::<smrdb_transport::tcp::Tcp>(o, id),
        #[cfg(feature = "verbs")]
        FabricKind::Verbs => node_with::<smrdb_transport::verbs::Verbs>(o, id),
        #[cfg(not(feature = "verbs"))]
        FabricKind::Verbs => bail!("built without the verbs feature"),
    }
}

fn node_with<F: Fabric>(o: &Options, id: u32) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut out = std::io::stdout().lock();
    writeln!(out, "port {}", l.local_addr()?.port())?;
    out.flush()?;
    let peers = lines.next().context("driver gone")??;
    let addrs: Vec<&str> = peers
        .strip_prefix("peers ")
        .context("expected peers")?
        .split(',')
        .collect();
    ensure!(addrs.len() == o.nodes as usize, "wrong peer list");
    let specs: Vec<NodeSpec> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| NodeSpec {
            id: i as u32,
            addr: a.to_string(),
            tstores: o.tstores,
        })
        .collect();
    let mut fc = FabricConfig::new(o.fabric, b"smrdb-bench broadcast".to_vec());
    if o.device.is_some() {
        fc.device = o.device.clone();
    }
    let mut cfg = RouterConfig::new(id, specs, fc);
    cfg.mode = o.mode;
    cfg.ring_bytes = o.ring_mib << 20;
    cfg.max_chunk = o.chunk_kib << 10;
    cfg.arena_bytes = (2 * o.ring_mib).max(8) << 20;
    cfg.backpressure_timeout = Duration::from_secs(60);
    let placement = std::sync::Arc::new(Placement::detect());
    let nic = o.device.as_deref().and_then(Placement::nic_numa_node);
    let (cores, router_core) = placement.plan(o.tstores as usize, nic);
    cfg.router_core = Some(router_core);
    let (router, mut inboxes) = Router::start::<F>(cfg, l)?;
    let h = router.handle();
    let size = o.size_mib << 20;
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u64 * 131 + u64::from(id) * 7) as u8)
        .collect();
    // Consumer threads, pinned: each reports a crc per source node per round.
    let (res_tx, res_rx) = crossbeam_channel::unbounded::<(usize, Vec<u32>)>();
    let (go_txs, go_rxs): (Vec<_>, Vec<_>) = (0..o.tstores)
        .map(|_| crossbeam_channel::unbounded::<()>())
        .unzip();
    let nodes = o.nodes as usize;
    let consumers: Vec<_> = inboxes
        .drain(1..)
        .zip(go_rxs)
        .enumerate()
        .map(|(i, (inbox, go))| {
            let res_tx = res_tx.clone();
            let placement = placement.clone();
            let core = cores[i];
            std::thread::spawn(move || -> Result<()> {
                let _ = placement.pin_current_thread(core);
                while go.recv().is_ok() {
                    let mut crcs = vec![crc32fast::Hasher::new(); nodes];
                    let mut finished = 0;
                    while finished < nodes {
                        match inbox.recv(Duration::from_secs(120))? {
                            Inbound::Data(d) => {
                                crcs[d.from as usize].update(d.data.bytes());
                                if d.spec.last {
                                    finished += 1;
                                }
                            }
                            Inbound::PeerLost { node, reason } => {
                                bail!("node {node} lost: {reason}")
                            }
                            Inbound::PeerJoined { node } => {
                                bail!("node {node} was lost and came back during the run")
                            }
                        }
                    }
                    let v = crcs.into_iter().map(|c| c.finalize()).collect();
                    if res_tx.send((i, v)).is_err() {
                        break;
                    }
                }
                Ok(())
            })
        })
        .collect();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in lines {
        let line = line?;
        let mut w = line.split_whitespace();
        match w.next() {
            Some("go") => {
                let rep = w.next().unwrap_or("0").to_string();
                for g in &go_txs {
                    g.send(())?;
                }
                h.send_bytes(Addr::controller(id), Addr::ALL_TSTORES, 1, 1, &data)?;
                let mut per: Vec<Option<Vec<u32>>> = vec![None; o.tstores as usize];
                for _ in 0..o.tstores {
                    let (i, v) = res_rx.recv_timeout(Duration::from_secs(300))?;
                    per[i] = Some(v);
                }
                let toks: Vec<String> = per
                    .into_iter()
                    .map(|v| {
                        v.unwrap_or_default()
                            .iter()
                            .map(|c| format!("{c:08x}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect();
                writeln!(out, "done {rep} {}", toks.join(" "))?;
                out.flush()?;
            }
            Some("stats") => {
                writeln!(out, "stats {}", serde_json::to_string(&h.stats())?)?;
                out.flush()?;
            }
            _ => break,
        }
    }
    drop(go_txs);
    for c in consumers {
        let _ = c.join();
    }
    drop(router);
    Ok(())
}

/// A Markdown table of several runs (e.g. SMR and naive for T = 1, 2, 4).
pub fn markdown(rows: &[Report]) -> String {
    let mut s = String::from(
        "| fabric | nodes | Tstores/node | size MiB | mode | median s | wire bytes / broadcast | messages / round | stalls / round | checksums agree |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {} | {:?} | {:.4} | {} | {} | {} | {} |\n",
            r.fabric,
            r.nodes,
            r.tstores,
            r.size_bytes >> 20,
            r.mode,
            r.median_s,
            r.wire_bytes_per_broadcast,
            r.messages,
            r.stalls,
            r.checksums_agree
        );
    }
    s
}
