//! `smrdb-bench`: smrdb's experiments.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use smrdb_harness::cluster::Launch;
use smrdb_harness::{broadcast_bench, load_bench, paper, query_bench, tpch_bench, transport_bench};
use smrdb_router::Mode;
use smrdb_transport::FabricKind;

#[derive(Parser)]
#[command(name = "smrdb-bench", version, about = "smrdb experiments and reports")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Pointer-message latency and WRITE bandwidth between two processes.
    Transport(TransportArgs),
    /// (internal) the echo peer of `transport`.
    #[command(hide = true)]
    TransportPeer(TransportArgs),
    /// SMR vs naive broadcast: every node broadcasts an object to every Tstore.
    Broadcast(BroadcastArgs),
    /// (internal) one node process of `broadcast`.
    #[command(hide = true)]
    BroadcastNode(BroadcastArgs),
    /// COPY throughput into a local cluster, its round-robin balance, and queries.
    Load(LoadArgs),
    /// The design's join example on smrdb and DuckDB side by side, answers checked.
    Query(QueryArgs),
    /// Start a local cluster (or attach to one described by a cluster file), print how
    /// to connect, and keep it up until Ctrl-C.
    Cluster(ClusterCmdArgs),
    /// Every experiment of the paper (or those named by --experiments) into one report:
    /// reports/<date>-<sha>/report.md with results.json, table.md and SVG plots per
    /// experiment and the environment.
    Paper(PaperArgs),
    /// The scaling experiment alone: query time vs Tstores and nodes, and vs data size.
    Scaling(PaperArgs),
    /// The pivot experiment alone: the planner's pivot vs every forced alternative.
    Pivot(PaperArgs),
    /// The overlap experiment alone: compare-while-receiving on vs off.
    Overlap(PaperArgs),
    /// The 22 TPC-H queries in their standard form on a smrdb cluster and on DuckDB over
    /// the same data, every answer compared: a Markdown table on stdout (medians,
    /// smrdb/DuckDB, answer check, rows, router bytes; the geometric mean of the
    /// ratios); fails when an answer differs or a query errors.
    Tpch(TpchArgs),
}

/// Options shared by `paper` and the experiment subcommands.
#[derive(Args)]
struct PaperArgs {
    /// Small data and few repeats: every experiment in minutes (CI, `make demo`).
    #[arg(long)]
    quick: bool,
    /// Fabric of every cluster: shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: String,
    /// verbs device.
    #[arg(long)]
    device: Option<String>,
    /// Multiplies every data size.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Nodes of the base cluster shape.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Tstores per node of the base shape.
    #[arg(long, default_value_t = 2)]
    tstores: u32,
    /// Timed repeats per measurement (after a warm-up) [default: 5, --quick 3].
    #[arg(long)]
    repeats: Option<usize>,
    /// `paper` only: the experiments to run, comma-separated
    /// [default: transport,broadcast,scaling,pivot,overlap,tpch].
    #[arg(long, value_delimiter = ',')]
    experiments: Vec<String>,
    /// Reports go to OUT/<date>-<sha>/ [default: reports, or $SMRDB_VM_OUT/reports
    /// inside the Soft-RoCE VM, whose view of the checkout is read-only].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Generated data is kept (and reused) here [default: $TMPDIR/smrdb-paper-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run pivot, overlap and tpch on the cluster of this file instead of local ones.
    #[arg(long)]
    cluster_file: Option<PathBuf>,
    /// With --cluster-file: print the per-host commands (print), start the nodes over
    /// ssh (ssh), or attach to a running cluster (running).
    #[arg(long, default_value = "print")]
    launch: String,
    /// The venv with DuckDB, created and filled when needed
    /// [default: ~/.cache/smrdb-bench/venv].
    #[arg(long)]
    venv: Option<PathBuf>,
    /// The interpreter that creates the venv.
    #[arg(long, default_value = "python3")]
    python: String,
    /// DuckDB's threads.
    #[arg(long, default_value_t = 2)]
    duckdb_threads: u32,
}

impl PaperArgs {
    fn options(&self, only: Option<paper::Experiment>) -> Result<paper::PaperOptions> {
        anyhow::ensure!(
            self.scale.is_finite() && self.scale > 0.0,
            "--scale must be a positive number"
        );
        anyhow::ensure!(
            self.nodes >= 1 && self.tstores >= 1,
            "--nodes and --tstores must be at least 1"
        );
        let experiments = match only {
            Some(e) => vec![e],
            None if self.experiments.is_empty() => paper::Experiment::ALL.to_vec(),
            None => self
                .experiments
                .iter()
                .map(|e| e.parse())
                .collect::<Result<Vec<_>>>()?,
        };
        let launch = match self.launch.as_str() {
            "print" => Launch::Print,
            "ssh" => Launch::Ssh,
            "running" => Launch::Running,
            o => anyhow::bail!("--launch {o:?}: print, ssh or running"),
        };
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(paper::default_data_dir);
        Ok(paper::PaperOptions {
            fabric: self.fabric.clone(),
            device: self.device.clone(),
            quick: self.quick,
            scale: self.scale,
            nodes: self.nodes,
            tstores: self.tstores,
            repeats: self
                .repeats
                .unwrap_or(if self.quick { 3 } else { 5 })
                .max(1),
            experiments,
            out: self.out.clone().unwrap_or_else(|| {
                std::env::var_os("SMRDB_VM_OUT")
                    .map(|d| PathBuf::from(d).join("reports"))
                    .unwrap_or_else(paper::default_out)
            }),
            venv: self
                .venv
                .clone()
                .unwrap_or_else(|| query_bench::default_venv(&data_dir)),
            data_dir,
            python: self.python.clone(),
            duckdb_threads: self.duckdb_threads.max(1),
            cluster_file: self.cluster_file.clone().map(|f| (f, launch)),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        })
    }
}

fn run_paper(a: &PaperArgs, only: Option<paper::Experiment>) -> Result<()> {
    let o = a.options(only)?;
    let report = paper::run(&o)?;
    println!("report: {}", report.display());
    Ok(())
}

/// `smrdb-bench tpch`.
#[derive(Args)]
struct TpchArgs {
    /// TPC-H scale factor.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
    /// SF 0.01 and 3 repeats (the paper's --quick shape).
    #[arg(long, conflicts_with = "scale")]
    quick: bool,
    /// Queries to run, comma-separated numbers 1..22, in this order [default: all].
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
    /// shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: String,
    /// verbs device.
    #[arg(long)]
    device: Option<String>,
    /// Nodes.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Tstores per node.
    #[arg(long, default_value_t = 2)]
    tstores: u32,
    /// Timed repeats per query and engine (after one warm-up); the median is reported
    /// [default: 5, --quick 3].
    #[arg(long)]
    repeats: Option<usize>,
    /// DuckDB's threads.
    #[arg(long, default_value_t = 2)]
    duckdb_threads: u32,
    /// Engines to run, comma-separated: smrdb, duckdb (answers are compared when both
    /// run).
    #[arg(long, value_delimiter = ',', default_value = "smrdb,duckdb")]
    engines: Vec<String>,
    /// smrdb's statement_timeout per query run, seconds (0: none).
    #[arg(long, default_value_t = tpch_bench::DEFAULT_TIMEOUT_S)]
    timeout: u64,
    /// Write the report (every repeat and answer of both engines) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Generated data is kept (and reused) here [default: $TMPDIR/smrdb-paper-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run on the cluster of this file instead of a local one.
    #[arg(long)]
    cluster_file: Option<PathBuf>,
    /// With --cluster-file: print, ssh or running (see `paper`).
    #[arg(long, default_value = "print")]
    launch: String,
    /// Logs of the local cluster [default: DATA_DIR/tpch-logs].
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// The venv with DuckDB, created and filled when needed
    /// [default: ~/.cache/smrdb-bench/venv].
    #[arg(long)]
    venv: Option<PathBuf>,
    /// The interpreter that creates the venv.
    #[arg(long, default_value = "python3")]
    python: String,
}

fn parse_engines(names: &[String]) -> Result<Vec<query_bench::Engine>> {
    names
        .iter()
        .map(|e| match e.as_str() {
            "smrdb" => Ok(query_bench::Engine::Smrdb),
            "duckdb" => Ok(query_bench::Engine::Duckdb),
            other => Err(anyhow::anyhow!("unknown engine {other:?} (smrdb, duckdb)")),
        })
        .collect()
}

/// Runs `smrdb-bench tpch` (see [`TpchArgs`]).
fn run_tpch(a: &TpchArgs) -> Result<()> {
    use smrdb_harness::cluster::{Cluster, ClusterSpec};
    use smrdb_harness::progress;

    let sf = if a.quick { 0.01 } else { a.scale };
    anyhow::ensure!(
        sf.is_finite() && sf > 0.0,
        "--scale must be a positive number"
    );
    anyhow::ensure!(
        a.nodes >= 1 && a.tstores >= 1,
        "--nodes and --tstores must be at least 1"
    );
    let launch = match a.launch.as_str() {
        "print" => Launch::Print,
        "ssh" => Launch::Ssh,
        "running" => Launch::Running,
        o => anyhow::bail!("--launch {o:?}: print, ssh or running"),
    };
    progress::install_ctrlc()?;
    let data_dir = a.data_dir.clone().unwrap_or_else(paper::default_data_dir);
    std::fs::create_dir_all(&data_dir).with_context(|| format!("create {}", data_dir.display()))?;
    let log_dir = a
        .log_dir
        .clone()
        .unwrap_or_else(|| data_dir.join("tpch-logs"));
    let o = tpch_bench::Options {
        sf,
        queries: a.queries.clone(),
        repeats: a.repeats.unwrap_or(if a.quick { 3 } else { 5 }).max(1),
        duckdb_threads: a.duckdb_threads.max(1),
        venv: a
            .venv
            .clone()
            .unwrap_or_else(|| query_bench::default_venv(&data_dir)),
        python: a.python.clone(),
        engines: parse_engines(&a.engines)?,
        data_dir,
        timeout_s: a.timeout,
    };
    let mut spec = ClusterSpec::new(&a.fabric, a.nodes, a.tstores);
    spec.device = a.device.clone();
    let start = || match &a.cluster_file {
        Some(f) => Cluster::from_file_until(f, launch, &log_dir, &progress::stop_requested),
        None => Cluster::start_local_until(&spec, &log_dir, &progress::stop_requested),
    };
    let r = tpch_bench::run(&o, &start, &|m| eprintln!("tpch: {m}"))
        .with_context(|| format!("TPC-H SF {sf} ({})", tpch_bench::queries_label(&a.queries)))?;
    println!(
        "### TPC-H SF {sf}: smrdb {} vs {}\n",
        r.cluster.as_deref().unwrap_or("(not run)"),
        r.duckdb_version.as_deref().unwrap_or("DuckDB (not run)")
    );
    println!("{}", tpch_bench::markdown(&r));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("write {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    if !r.failures().is_empty() {
        anyhow::bail!(
            "TPC-H SF {sf}: {} (the table above has every message)",
            r.failure_summary()
        );
    }
    if r.interrupted {
        anyhow::bail!("interrupted");
    }
    Ok(())
}

/// `smrdb-bench cluster`: a cluster to experiment with by hand.
///
/// ```text
/// smrdb-bench cluster --nodes N --tstores T --fabric shm|tcp|verbs [--router-mode smr|naive]
///                     [--device rxe0] [--data-dir D] [--ring-mib 8] [--chunk-kib 1024]
///                     [--log-dir DIR]
/// smrdb-bench cluster --file F [--print | --ssh | --running] [--log-dir DIR]
/// ```
///
/// Without `--file` it starts `smrdb cluster` on loopback (the `smrdb` binary next to
/// this one; node logs in DIR/node-<id>.log). With `--file` the cluster file decides the
/// shape, fabric and router mode, and the nodes are started by hand (`--print`, the
/// default: the command for every host is printed), over ssh (`--ssh`: `ssh -o
/// BatchMode=yes <host> smrdb node --cluster F --id N --stop-on-eof`, output in
/// DIR/node-<id>.log), or are already running (`--running`). Once every node answers it
/// prints the psql line and waits; Ctrl-C stops what it started (a `--running` or
/// `--print` cluster is left running) and a process that dies ends it with its log tail.
/// DIR defaults to `$TMPDIR/smrdb-bench-cluster-<pid>`.
#[derive(Args)]
#[command(group(
    clap::ArgGroup::new("launch")
        .args(["print", "ssh", "running"])
        .requires("file")
))]
struct ClusterCmdArgs {
    /// Attach to the cluster this file (TOML, or JSON when named *.json) describes.
    #[arg(
        long,
        conflicts_with_all = ["nodes", "tstores", "fabric", "router_mode", "device", "data_dir", "ring_mib", "chunk_kib"]
    )]
    file: Option<PathBuf>,
    /// With --file: print each node's command and wait for someone to run them
    /// (default).
    #[arg(long)]
    print: bool,
    /// With --file: start each node over ssh.
    #[arg(long)]
    ssh: bool,
    /// With --file: the nodes are already running.
    #[arg(long)]
    running: bool,
    /// Nodes (one process each).
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Tstores per node.
    #[arg(long, default_value_t = 2)]
    tstores: u32,
    /// shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: String,
    /// smr (one copy per remote node) or naive (one copy per remote Tstore).
    #[arg(long, default_value = "smr")]
    router_mode: Mode,
    /// verbs device (default: the first one).
    #[arg(long)]
    device: Option<String>,
    /// Data directory (durable writes); volatile without it.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Receive ring per remote peer, MiB.
    #[arg(long, default_value_t = 8)]
    ring_mib: usize,
    /// Largest chunk a message is cut into, KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Where the logs go [default: $TMPDIR/smrdb-bench-cluster-<pid>].
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

/// Runs `smrdb-bench cluster` (see [`ClusterCmdArgs`]).
fn run_cluster_cmd(a: &ClusterCmdArgs) -> Result<()> {
    use smrdb_harness::cluster::{Cluster, ClusterSpec};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")?;
    let should_stop = || stop.load(Ordering::Relaxed);
    let log_dir = a.log_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("smrdb-bench-cluster-{}", std::process::id()))
    });
    let (mut cluster, ours) = match &a.file {
        Some(file) => {
            let launch = if a.ssh {
                Launch::Ssh
            } else if a.running {
                Launch::Running
            } else {
                Launch::Print
            };
            let c = Cluster::from_file_until(file, launch, &log_dir, &should_stop)
                .with_context(|| format!("cluster of {}", file.display()))?;
            (c, launch == Launch::Ssh)
        }
        None => {
            let mut spec = ClusterSpec::new(&a.fabric, a.nodes, a.tstores);
            spec.router_mode = a.router_mode;
            spec.device = a.device.clone();
            spec.data_dir = a.data_dir.clone();
            spec.ring_mib = a.ring_mib;
            spec.chunk_kib = a.chunk_kib;
            let c = Cluster::start_local_until(&spec, &log_dir, &should_stop)
                .with_context(|| format!("local cluster {}", spec.label()))?;
            (c, true)
        }
    };
    println!(
        "cluster {} ready: {} node(s), {} Tstore(s) in all, primary at {}",
        cluster.label(),
        cluster.nodes(),
        cluster.tstores_total(),
        cluster.primary()
    );
    println!("connect with: {}", cluster.psql_command());
    println!(
        "logs in {}; Ctrl-C {}",
        cluster.log_dir().display(),
        if ours {
            "stops the cluster"
        } else {
            "detaches (the nodes keep running)"
        }
    );
    while !should_stop() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        cluster.check()?;
    }
    if ours {
        println!("stopping cluster {}", cluster.label());
    }
    cluster.stop()
}

#[derive(Args)]
struct QueryArgs {
    /// shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: String,
    /// Nodes.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Tstores per node.
    #[arg(long, default_value_t = 2)]
    tstores: u32,
    /// Rows of customers.
    #[arg(long, default_value_t = 1_000_000)]
    customers: u64,
    /// Rows of purchases.
    #[arg(long, default_value_t = 10_000_000)]
    purchases: u64,
    /// 100k customers x 1M purchases.
    #[arg(long, conflicts_with_all = ["customers", "purchases"])]
    quick: bool,
    /// PRNG seed of the data.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the CSVs are written (and reused) [default: $TMPDIR/smrdb-query-bench].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Timed repeats per query (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// DuckDB's `SET threads TO`.
    #[arg(long, default_value_t = 2)]
    duckdb_threads: u32,
    /// The venv with duckdb, created and filled when needed
    /// [default: ~/.cache/smrdb-bench/venv].
    #[arg(long)]
    venv: Option<PathBuf>,
    /// The interpreter that creates the venv.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Engines to run, comma-separated: smrdb, duckdb.
    #[arg(long, value_delimiter = ',', default_value = "smrdb,duckdb")]
    engines: Vec<String>,
    /// Write the report (environment, every repeat of both engines, answers) as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct LoadArgs {
    /// shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: String,
    /// Nodes; a comma-separated list runs each shape in turn.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    nodes: Vec<u32>,
    /// Tstores per node.
    #[arg(long, default_value_t = 2)]
    tstores: u32,
    /// Rows to load.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// Make writes durable under this directory (one subdirectory per run).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the reports as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BroadcastArgs {
    /// shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: FabricKind,
    /// verbs device.
    #[arg(long)]
    device: Option<String>,
    /// Nodes (one process each).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Tstores per node; a comma-separated list runs each value side by side.
    #[arg(long, value_delimiter = ',', default_value = "2")]
    tstores: Vec<u32>,
    /// Object size per node, MiB.
    #[arg(long, default_value_t = 64)]
    size_mib: usize,
    /// smr, naive, or both (side by side).
    #[arg(long, default_value = "both")]
    mode: String,
    /// Timed repeats (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Receive ring per peer, MiB.
    #[arg(long, default_value_t = 16)]
    ring_mib: usize,
    /// Chunk size, KiB.
    #[arg(long, default_value_t = 1024)]
    chunk_kib: usize,
    /// Write every run's report as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// (node processes) this node's id.
    #[arg(long, hide = true)]
    id: Option<u32>,
}

impl BroadcastArgs {
    fn modes(&self) -> Result<Vec<Mode>> {
        Ok(match self.mode.as_str() {
            "both" => vec![Mode::Smr, Mode::Naive],
            m => vec![m.parse().map_err(|e| anyhow::anyhow!("{e}"))?],
        })
    }

    fn options(&self, tstores: u32, mode: Mode) -> broadcast_bench::Options {
        broadcast_bench::Options {
            fabric: self.fabric,
            device: self.device.clone(),
            nodes: self.nodes,
            tstores,
            size_mib: self.size_mib,
            mode,
            repeats: self.repeats.max(1),
            ring_mib: self.ring_mib.max(1),
            chunk_kib: self.chunk_kib.max(4),
        }
    }
}

#[derive(Args)]
struct TransportArgs {
    /// shm, tcp or verbs.
    #[arg(long, default_value = "shm")]
    fabric: FabricKind,
    /// verbs device (default: $SMRDB_VERBS_DEVICE or the first one).
    #[arg(long)]
    device: Option<String>,
    /// verbs GID index (default: a RoCE v2 IPv4 GID, else 0).
    #[arg(long)]
    gid_index: Option<u32>,
    /// Write sizes in bytes, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4096,16384,65536,262144,1048576,4194304"
    )]
    sizes: Vec<usize>,
    /// MiB streamed per size per repeat.
    #[arg(long, default_value_t = 256)]
    mib_per_size: usize,
    /// Repeats per size; the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Ping-pong round trips for the latency figure, per round.
    #[arg(long, default_value_t = 20000)]
    lat_iters: usize,
    /// Latency rounds; with --vs-perftest each is followed by an ib_write_lat run, and
    /// the medians over rounds are compared.
    #[arg(long, default_value_t = 3)]
    lat_rounds: usize,
    /// Writes kept outstanding.
    #[arg(long, default_value_t = 32)]
    depth: usize,
    /// verbs: also run ib_write_bw / ib_write_lat on the same device and print ratios.
    #[arg(long)]
    vs_perftest: bool,
    /// Every write lands at remote offset 0 (perftest's pattern) instead of walking a
    /// 64 MiB window.
    #[arg(long)]
    same_offset: bool,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl TransportArgs {
    fn options(&self) -> transport_bench::Options {
        transport_bench::Options {
            fabric: self.fabric,
            device: self.device.clone(),
            gid_index: self.gid_index,
            sizes: self.sizes.clone(),
            bytes_per_size: self.mib_per_size << 20,
            repeats: self.repeats.max(1),
            lat_iters: self.lat_iters.max(10),
            lat_rounds: self.lat_rounds.max(1),
            depth: self.depth.max(1),
            vs_perftest: self.vs_perftest,
            same_offset: self.same_offset,
        }
    }
}

fn run_query(a: &QueryArgs) -> Result<()> {
    let (customers, purchases) = if a.quick {
        (100_000, 1_000_000)
    } else {
        (a.customers, a.purchases)
    };
    let work_dir = a
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("smrdb-query-bench"));
    let engines = parse_engines(&a.engines)?;
    let o = query_bench::Options {
        fabric: a.fabric.clone(),
        nodes: a.nodes,
        tstores: a.tstores,
        customers,
        purchases,
        seed: a.seed,
        venv: a
            .venv
            .clone()
            .unwrap_or_else(|| query_bench::default_venv(&work_dir)),
        work_dir,
        repeats: a.repeats.max(1),
        duckdb_threads: a.duckdb_threads.max(1),
        python: a.python.clone(),
        engines,
    };
    let r = query_bench::run(&o).with_context(|| {
        format!(
            "query bench ({customers} customers x {purchases} purchases, {}x{} on {})",
            a.nodes, a.tstores, a.fabric
        )
    })?;
    println!("{}", query_bench::markdown(&r));
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("write {}", p.display()))?;
        println!("wrote {}", p.display());
    }
    let bad = r.mismatches();
    if !bad.is_empty() {
        let list = bad
            .iter()
            .map(|c| format!("{}: {}", c.query, c.detail))
            .collect::<Vec<_>>();
        anyhow::bail!(
            "ANSWERS DIFFER between smrdb and DuckDB on {} queries:\n  {}",
            bad.len(),
            list.join("\n  ")
        );
    }
    let errors = r.errors();
    if !errors.is_empty() {
        let joins = errors.iter().any(|e| e.contains("not supported"));
        anyhow::bail!(
            "{} queries failed:\n  {}{}",
            errors.len(),
            errors.join("\n  "),
            if joins {
                "\nsmrdb says \"not supported\": this smrdb binary cannot run these queries \
                 (joins / COUNT(DISTINCT) / EXPLAIN ANALYZE come with the multi-set query \
                 work); rebuild it (`cargo build --release -p smrdb-node`) once they land"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Transport(a) => {
            anyhow::ensure!(
                !a.sizes.is_empty() && a.sizes.iter().all(|&s| s > 0),
                "--sizes must be positive"
            );
            let report = transport_bench::run(&a.options())
                .with_context(|| format!("transport bench on {}", a.fabric))?;
            println!("{}", transport_bench::markdown(&report));
            if let Some(p) = &a.json {
                std::fs::write(p, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("write {}", p.display()))?;
                println!("wrote {}", p.display());
            }
        }
        Cmd::TransportPeer(a) => transport_bench::run_peer(&a.options())?,
        Cmd::Broadcast(a) => {
            let mut reports = Vec::new();
            for &t in &a.tstores {
                for mode in a.modes()? {
                    let r = broadcast_bench::run(&a.options(t, mode))
                        .with_context(|| format!("broadcast T={t} {mode:?} on {}", a.fabric))?;
                    anyhow::ensure!(
                        r.checksums_agree,
                        "Tstores saw different bytes (T={t}, {mode:?})"
                    );
                    reports.push(r);
                }
            }
            println!("{}", broadcast_bench::markdown(&reports));
            for pair in reports.chunks(2) {
                if let [s, n] = pair {
                    if s.mode == Mode::Smr && n.mode == Mode::Naive {
                        println!(
                            "T={}: naive/SMR wire bytes = {:.3}, time = {:.2}",
                            s.tstores,
                            n.wire_bytes as f64 / s.wire_bytes as f64,
                            n.median_s / s.median_s
                        );
                    }
                }
            }
            if let Some(p) = &a.json {
                std::fs::write(p, serde_json::to_string_pretty(&reports)?)
                    .with_context(|| format!("write {}", p.display()))?;
                println!("wrote {}", p.display());
            }
        }
        Cmd::Load(a) => {
            let mut reports = Vec::new();
            for &n in &a.nodes {
                let o = load_bench::Options {
                    fabric: a.fabric.clone(),
                    nodes: n,
                    tstores: a.tstores,
                    rows: a.rows,
                    data_dir: a
                        .data_dir
                        .as_ref()
                        .map(|d| d.join(format!("load-{n}x{}", a.tstores))),
                };
                let r =
                    load_bench::run(&o).with_context(|| format!("load into {n}x{}", a.tstores))?;
                println!("{}", load_bench::markdown(&r));
                reports.push(r);
            }
            if let Some(p) = &a.json {
                std::fs::write(p, serde_json::to_string_pretty(&reports)?)
                    .with_context(|| format!("write {}", p.display()))?;
                println!("wrote {}", p.display());
            }
        }
        Cmd::Query(a) => run_query(&a)?,
        Cmd::Cluster(a) => run_cluster_cmd(&a)?,
        Cmd::Paper(a) => run_paper(&a, None)?,
        Cmd::Scaling(a) => run_paper(&a, Some(paper::Experiment::Scaling))?,
        Cmd::Pivot(a) => run_paper(&a, Some(paper::Experiment::Pivot))?,
        Cmd::Overlap(a) => run_paper(&a, Some(paper::Experiment::Overlap))?,
        Cmd::Tpch(a) => run_tpch(&a)?,
        Cmd::BroadcastNode(a) => {
            let modes = a.modes()?;
            let id = a.id.context("--id is required")?;
            broadcast_bench::run_node(&a.options(a.tstores[0], modes[0]), id)?;
        }
    }
    Ok(())
}
