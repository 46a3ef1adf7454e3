//! `smrdb-bench paper`: every experiment of the paper, one command, one report.
//!
//! Each experiment writes `<report>/<name>/results.json` (every repeat), `table.md` and
//! SVG plots, keeps the logs of every cluster it started under `<name>/logs/`, and adds
//! a section to `<report>/report.md`, which starts with the environment (git sha,
//! fabric, device, kernel, CPU, NUMA nodes, memory, cluster shape):
//!
//! * `transport`: pointer-message latency and WRITE bandwidth vs size (vs `perftest`
//!   on verbs);
//! * `broadcast`: SMR vs naive: the router-level broadcast and the design's join
//!   query, bytes on the wire and time vs Tstores per node;
//! * `scaling`: query time vs Tstores and nodes at fixed data, and vs data size;
//! * `pivot`: the planner's pivot vs every forced alternative: bytes moved and time;
//! * `overlap`: compare-while-receiving on vs off (`SET smrdb.overlap`);
//! * `tpch`: the 22 TPC-H queries in their standard form vs DuckDB on the same data
//!   ([`tpch_bench`]; SF 0.01 with `--quick`).
//!
//! `--quick` shrinks every data size and repeat count so that all six run in minutes
//! (the CI and `make demo` shape); `--scale` multiplies the data sizes. Ctrl-C stops
//! after the current measurement: the clusters are stopped, what was measured is
//! written, and the report marks the experiment as interrupted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use smrdb_router::Mode;
use smrdb_transport::FabricKind;

use crate::cluster::{Cluster, ClusterSpec, Launch};
use crate::measure::{self, QueryTiming};
use crate::plot::{self, Axes, Series};
use crate::progress::{self, Progress};
use crate::report::{self, Environment, ExperimentDir, ReportDir, Section, SectionStatus};
use crate::workload::{self, SyntheticOptions, Workload};
use crate::{broadcast_bench, query_bench, tpch_bench, transport_bench};

/// One experiment of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Experiment {
    /// Latency and bandwidth vs size.
    Transport,
    /// SMR vs naive.
    Broadcast,
    /// Time vs cluster shape and data size.
    Scaling,
    /// The planner's pivot vs the alternatives.
    Pivot,
    /// Compare-while-receiving on vs off.
    Overlap,
    /// TPC-H vs DuckDB.
    Tpch,
}

impl Experiment {
    /// Every experiment, in report order.
    pub const ALL: [Experiment; 6] = [
        Experiment::Transport,
        Experiment::Broadcast,
        Experiment::Scaling,
        Experiment::Pivot,
        Experiment::Overlap,
        Experiment::Tpch,
    ];

    /// The experiment's name (its subcommand and directory).
    pub fn name(self) -> &'static str {
        match self {
            Experiment::Transport => "transport",
            Experiment::Broadcast => "broadcast",
            Experiment::Scaling => "scaling",
            Experiment::Pivot => "pivot",
            Experiment::Overlap => "overlap",
            Experiment::Tpch => "tpch",
        }
    }
}

impl std::str::FromStr for Experiment {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Experiment> {
        Experiment::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| {
                anyhow!(
                    "unknown experiment {s:?}: {}",
                    Experiment::ALL.map(|e| e.name()).join(", ")
                )
            })
    }
}

/// Options of a paper run.
#[derive(Debug, Clone)]
pub struct PaperOptions {
    /// Fabric of every cluster (and of the transport experiment).
    pub fabric: String,
    /// verbs device.
    pub device: Option<String>,
    /// Small data and few repeats.
    pub quick: bool,
    /// Multiplies every data size.
    pub scale: f64,
    /// Nodes of the base cluster shape.
    pub nodes: u32,
    /// Tstores per node of the base shape.
    pub tstores: u32,
    /// Timed repeats per measurement (after one warm-up); the median is reported.
    pub repeats: usize,
    /// Experiments to run, in order.
    pub experiments: Vec<Experiment>,
    /// Reports go to `<out>/<date>-<sha>/`.
    pub out: PathBuf,
    /// Generated data (CSV) is kept and reused here.
    pub data_dir: PathBuf,
    /// The venv with DuckDB (created when needed).
    pub venv: PathBuf,
    /// The interpreter that creates the venv.
    pub python: String,
    /// DuckDB's threads.
    pub duckdb_threads: u32,
    /// Run the fixed-shape experiments (pivot, overlap, tpch) on this cluster instead
    /// of local ones (a multi-host cluster file and how its nodes start).
    pub cluster_file: Option<(PathBuf, Launch)>,
    /// The command line, for the report.
    pub command: String,
}

impl PaperOptions {
    fn scaled(&self, n: u64) -> u64 {
        ((n as f64 * self.scale).round() as u64).max(1)
    }

    /// The example's (customers, purchases) at full size.
    fn example_rows(&self) -> (u64, u64) {
        let (c, p) = if self.quick {
            (100_000, 1_000_000)
        } else {
            (1_000_000, 10_000_000)
        };
        (self.scaled(c), self.scaled(p))
    }

    /// The synthetic key/foreign-key workload with `selectivity` and `skew`.
    fn synthetic(&self, selectivity: f64, skew: f64) -> SyntheticOptions {
        SyntheticOptions {
            dim_rows: self.scaled(if self.quick { 50_000 } else { 500_000 }),
            fact_rows: self.scaled(if self.quick { 500_000 } else { 5_000_000 }),
            selectivity,
            skew,
            seed: 7,
        }
    }

    /// Node counts of the router-level SMR-vs-naive sweep.
    fn node_steps(&self) -> Vec<u32> {
        if self.quick {
            vec![2, 3]
        } else {
            vec![2, 3, 4]
        }
    }

    fn tstore_steps(&self) -> Vec<u32> {
        if self.quick {
            vec![1, 2]
        } else {
            vec![1, 2, 4]
        }
    }

    fn base_spec(&self, mode: Mode) -> ClusterSpec {
        let mut s = ClusterSpec::new(&self.fabric, self.nodes, self.tstores);
        s.router_mode = mode;
        s.device = self.device.clone();
        s
    }
}

/// Where an experiment is, for the functions that run its parts.
struct Ctx<'a> {
    o: &'a PaperOptions,
    dir: ExperimentDir,
    progress: &'a Progress,
}

impl Ctx<'_> {
    fn stop(&self) -> bool {
        progress::stop_requested()
    }

    /// Starts a local cluster with its logs in `logs/<label>`.
    fn cluster(&self, spec: &ClusterSpec) -> Result<Cluster> {
        let logs = self.dir.logs_dir()?.join(spec.label().replace(' ', "-"));
        self.progress
            .set_message(&format!("{}: starting {}", self.dir.name(), spec.label()));
        Cluster::start_local_until(spec, &logs, &progress::stop_requested)
    }

    /// The fixed-shape cluster: the cluster file when one was given, else local.
    fn fixed_cluster(&self, spec: &ClusterSpec) -> Result<Cluster> {
        match &self.o.cluster_file {
            Some((file, launch)) => {
                let logs = self.dir.logs_dir()?.join("cluster-file");
                Cluster::from_file(file, *launch, &logs)
            }
            None => self.cluster(spec),
        }
    }

    /// Where generated data goes: each workload keeps its own subdirectory, named by
    /// its parameters, and reuses it when they match.
    fn data(&self) -> &Path {
        &self.o.data_dir
    }

    fn synthetic(&self, so: &SyntheticOptions) -> Result<Workload> {
        self.progress.set_message(&format!(
            "generating synthetic: {} dim x {} fact, selectivity {}, skew {}",
            so.dim_rows, so.fact_rows, so.selectivity, so.skew
        ));
        workload::synthetic(so, self.data())
    }

    fn example(&self, customers: u64, purchases: u64) -> Result<Workload> {
        self.progress.set_message(&format!(
            "generating the example: {customers} customers x {purchases} purchases"
        ));
        workload::example(customers, purchases, 42, self.data())
    }

    /// Loads `w` into `c` and times `queries` of it with `settings`.
    fn time_all(
        &self,
        c: &mut postgres::Client,
        w: &Workload,
        settings: &[(&str, &str)],
        label: &str,
    ) -> Vec<QueryTiming> {
        let mut out = Vec::new();
        for q in &w.queries {
            if self.stop() {
                break;
            }
            self.progress
                .set_message(&format!("{}: {label}: {}", self.dir.name(), q.name));
            out.push(measure::time_query(
                c,
                &q.name,
                &q.sql,
                settings,
                self.o.repeats,
                &progress::stop_requested,
            ));
        }
        out
    }

    fn status(&self) -> SectionStatus {
        if self.stop() {
            SectionStatus::Interrupted
        } else {
            SectionStatus::Done
        }
    }
}

fn load(c: &mut postgres::Client, w: &Workload) -> Result<f64> {
    let t = Instant::now();
    workload::load_smrdb(c, w)?;
    Ok(t.elapsed().as_secs_f64())
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{v:.4}"))
}

fn bytes(x: Option<u64>) -> String {
    x.map_or("-".into(), |v| v.to_string())
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn first_error(ts: &[QueryTiming]) -> Option<String> {
    ts.iter()
        .find_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.name)))
}

// ---------------------------------------------------------------------------------
// transport

fn transport(cx: &Ctx) -> Result<Section> {
    let o = cx.o;
    let fabric: FabricKind = o
        .fabric
        .parse()
        .map_err(|_| anyhow!("unknown fabric {:?}", o.fabric))?;
    let verbs = o.fabric == "verbs";
    let (sizes, mib_per_size, lat_iters) = if o.quick {
        let m = if verbs { 4 } else { 32 };
        (
            vec![4096, 65536, 1 << 20],
            m,
            if verbs { 1000 } else { 5000 },
        )
    } else {
        (
            vec![4096, 16384, 65536, 262_144, 1 << 20, 4 << 20],
            if verbs { 16 } else { 256 },
            20_000,
        )
    };
    let opts = transport_bench::Options {
        fabric,
        device: o.device.clone(),
        gid_index: None,
        sizes,
        bytes_per_size: mib_per_size << 20,
        repeats: o.repeats.clamp(1, 3),
        lat_iters,
        lat_rounds: 3,
        depth: 32,
        vs_perftest: verbs && which("ib_write_bw") && which("ib_write_lat"),
        same_offset: false,
    };
    cx.progress
        .set_message(&format!("transport on {}", o.fabric));
    let r = transport_bench::run(&opts).context("transport bench")?;
    cx.progress.step("transport");
    cx.dir.write_results(&r)?;
    let md = transport_bench::markdown(&r);
    cx.dir.write_markdown(&md)?;
    let kib = |s: usize| s as f64 / 1024.0;
    let mut series = vec![Series::new(
        format!("smrdb {}", r.fabric),
        r.sizes
            .iter()
            .zip(&r.write_mb_s)
            .map(|(&s, &m)| (kib(s), m))
            .collect(),
    )];
    if let Some(p) = &r.perftest {
        series.push(Series::new(
            "ib_write_bw",
            r.sizes
                .iter()
                .zip(&p.write_mb_s)
                .map(|(&s, &m)| (kib(s), m))
                .collect(),
        ));
    }
    let svg = cx.dir.svg_path("bandwidth");
    plot::line_chart(
        &svg,
        &Axes::new(
            format!("WRITE bandwidth on {}", r.fabric),
            "write size (KiB)",
            "MB/s",
        )
        .log(true, false),
        &series,
    )?;
    let mut s = Section::new(
        &cx.dir,
        format!("transport: latency and bandwidth on `{}`", r.fabric),
        md,
    );
    s.plots.push(svg);
    s.status = cx.status();
    Ok(s)
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

// ---------------------------------------------------------------------------------
// broadcast

/// One point of the query-level SMR-vs-naive comparison.
#[derive(Debug, Serialize)]
struct QueryModeRun {
    mode: String,
    nodes: u32,
    tstores: u32,
    load_s: f64,
    queries: Vec<QueryTiming>,
}

#[derive(Debug, Serialize)]
struct BroadcastResults {
    router: Vec<broadcast_bench::Report>,
    query: Vec<QueryModeRun>,
    /// The workload of the query part.
    workload: serde_json::Value,
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Smr => "smr",
        Mode::Naive => "naive",
    }
}

fn broadcast(cx: &Ctx) -> Result<Section> {
    let o = cx.o;
    let fabric: FabricKind = o
        .fabric
        .parse()
        .map_err(|_| anyhow!("unknown fabric {:?}", o.fabric))?;
    let verbs = o.fabric == "verbs";
    let nodes = o.nodes.max(2);
    let steps = o.tstore_steps();
    let so = o.synthetic(1.0, 0.0);
    let w = cx.synthetic(&so)?;
    let mut res = BroadcastResults {
        router: Vec::new(),
        query: Vec::new(),
        workload: w.params.clone(),
    };
    // 1. The router alone: every node broadcasts one object to every Tstore.
    let size_mib = match (o.quick, verbs) {
        (true, true) => 2,
        (true, false) => 8,
        (false, true) => 8,
        (false, false) => 32,
    };
    // Tstores per node at `nodes` nodes, then more nodes at the most Tstores.
    let t_max = steps.last().copied().unwrap_or(1);
    let mut shapes: Vec<(u32, u32)> = steps.iter().map(|&t| (nodes, t)).collect();
    shapes.extend(
        o.node_steps()
            .into_iter()
            .filter(|&n| n > nodes)
            .map(|n| (n, t_max)),
    );
    for &(n, t) in &shapes {
        for mode in [Mode::Smr, Mode::Naive] {
            if cx.stop() {
                break;
            }
            cx.progress.set_message(&format!(
                "broadcast: router, {n} nodes x {t} Tstores, {}",
                mode_name(mode)
            ));
            let r = broadcast_bench::run(&broadcast_bench::Options {
                fabric,
                device: o.device.clone(),
                nodes: n,
                tstores: t,
                size_mib,
                mode,
                repeats: o.repeats.max(1),
                ring_mib: if verbs { 4 } else { 16 },
                chunk_kib: 1024,
            })
            .with_context(|| format!("router broadcast {n}x{t} {}", mode_name(mode)))?;
            if !r.checksums_agree {
                bail!("router broadcast {n}x{t}: Tstores saw different bytes");
            }
            res.router.push(r);
        }
        cx.progress.step(&format!("router broadcast {n}x{t}"));
    }
    // 2. Join queries on a cluster in each mode: dim is forced as the pivot, so every
    // Tstore ships its slice of the large fact table (what SMR saves grows with it).
    for &t in &steps {
        for mode in [Mode::Smr, Mode::Naive] {
            if cx.stop() {
                break;
            }
            let mut spec = ClusterSpec::new(&o.fabric, nodes, t);
            spec.router_mode = mode;
            spec.device = o.device.clone();
            let cluster = cx.cluster(&spec)?;
            let mut c = cluster.client()?;
            let load_s = load(&mut c, &w)?;
            let queries = cx.time_all(&mut c, &w, &[("smrdb.pivot", "d")], &spec.label());
            drop(c);
            cluster.stop()?;
            if let Some(e) = first_error(&queries) {
                bail!("{}: {e}", spec.label());
            }
            res.query.push(QueryModeRun {
                mode: mode_name(mode).into(),
                nodes,
                tstores: t,
                load_s,
                queries,
            });
        }
        cx.progress.step(&format!("query SMR vs naive T={t}"));
    }
    cx.dir.write_results(&res)?;

    // Tables.
    let mut md = format!(
        "Router alone: each node broadcasts {size_mib} MiB to every Tstore of the \
         cluster; median of {} repeats.\n\n",
        o.repeats.max(1)
    );
    let mut rows = Vec::new();
    for pair in res.router.chunks(2) {
        if let [s, n] = pair {
            rows.push(vec![
                s.nodes.to_string(),
                s.tstores.to_string(),
                format!("{:.1}", mib(s.wire_bytes)),
                format!("{:.1}", mib(n.wire_bytes)),
                format!("{:.2}", n.wire_bytes as f64 / s.wire_bytes.max(1) as f64),
                format!("{:.4}", s.median_s),
                format!("{:.4}", n.median_s),
                format!("{:.2}", n.median_s / s.median_s.max(1e-9)),
            ]);
        }
    }
    md += &report::markdown_table(
        &[
            "nodes",
            "Tstores/node",
            "SMR MiB",
            "naive MiB",
            "naive/SMR bytes",
            "SMR s",
            "naive s",
            "naive/SMR time",
        ],
        &rows,
    );
    md += &format!(
        "\nJoin queries of the synthetic workload ({} dim x {} fact rows, every dim row \
         passes) on {nodes} nodes with `dim` forced as the pivot, so the fact table is \
         the join table every Tstore ships; router in each mode; bytes are the routers' \
         `bytes_written` over one run (median).\n\n",
        so.dim_rows, so.fact_rows
    );
    let mut rows = Vec::new();
    for pair in res.query.chunks(2) {
        if let [s, n] = pair {
            for (qs, qn) in s.queries.iter().zip(&n.queries) {
                rows.push(vec![
                    s.tstores.to_string(),
                    qs.name.clone(),
                    bytes(qs.wire_bytes),
                    bytes(qn.wire_bytes),
                    match (qs.wire_bytes, qn.wire_bytes) {
                        (Some(a), Some(b)) if a > 0 => format!("{:.2}", b as f64 / a as f64),
                        _ => "-".into(),
                    },
                    secs(qs.median_s),
                    secs(qn.median_s),
                ]);
            }
        }
    }
    md += &report::markdown_table(
        &[
            "Tstores/node",
            "query",
            "SMR bytes",
            "naive bytes",
            "naive/SMR",
            "SMR s",
            "naive s",
        ],
        &rows,
    );
    cx.dir.write_markdown(&md)?;

    // Plots: bytes and time vs Tstores per node.
    let router_series = |mode: Mode, f: &dyn Fn(&broadcast_bench::Report) -> f64| {
        Series::new(
            format!("router {}", mode_name(mode)),
            res.router
                .iter()
                .filter(|r| r.mode == mode && r.nodes == nodes)
                .map(|r| (r.tstores as f64, f(r)))
                .collect(),
        )
    };
    let query_series = |mode: Mode, f: &dyn Fn(&QueryTiming) -> Option<f64>| {
        Series::new(
            format!(
                "join query ({}) {}",
                w.queries.first().map_or("", |q| q.name.as_str()),
                mode_name(mode)
            ),
            res.query
                .iter()
                .filter(|r| r.mode == mode_name(mode))
                .filter_map(|r| r.queries.first().and_then(f).map(|v| (r.tstores as f64, v)))
                .collect(),
        )
    };
    let bytes_svg = cx.dir.svg_path("bytes");
    plot::line_chart(
        &bytes_svg,
        &Axes::new(
            format!(
                "SMR vs naive: bytes on the wire ({nodes} nodes, {})",
                o.fabric
            ),
            "Tstores per node",
            "MiB written",
        ),
        &[
            router_series(Mode::Smr, &|r| mib(r.wire_bytes)),
            router_series(Mode::Naive, &|r| mib(r.wire_bytes)),
            query_series(Mode::Smr, &|q| q.wire_bytes.map(mib)),
            query_series(Mode::Naive, &|q| q.wire_bytes.map(mib)),
        ],
    )?;
    let time_svg = cx.dir.svg_path("time");
    plot::line_chart(
        &time_svg,
        &Axes::new(
            format!("SMR vs naive: time ({nodes} nodes, {})", o.fabric),
            "Tstores per node",
            "median seconds",
        ),
        &[
            router_series(Mode::Smr, &|r| r.median_s),
            router_series(Mode::Naive, &|r| r.median_s),
            query_series(Mode::Smr, &|q| q.median_s),
            query_series(Mode::Naive, &|q| q.median_s),
        ],
    )?;
    let by_nodes = |mode: Mode, f: &dyn Fn(&broadcast_bench::Report) -> f64| {
        Series::new(
            format!("router {}", mode_name(mode)),
            res.router
                .iter()
                .filter(|r| r.mode == mode && r.tstores == t_max)
                .map(|r| (r.nodes as f64, f(r)))
                .collect(),
        )
    };
    let nodes_svg = cx.dir.svg_path("nodes");
    plot::line_chart(
        &nodes_svg,
        &Axes::new(
            format!(
                "SMR vs naive vs nodes ({t_max} Tstores per node, {})",
                o.fabric
            ),
            "nodes",
            "MiB written",
        ),
        &[
            by_nodes(Mode::Smr, &|r| mib(r.wire_bytes)),
            by_nodes(Mode::Naive, &|r| mib(r.wire_bytes)),
        ],
    )?;
    let mut s = Section::new(&cx.dir, "broadcast: SMR vs naive", md);
    s.plots = vec![bytes_svg, time_svg, nodes_svg];
    s.status = cx.status();
    Ok(s)
}

// ---------------------------------------------------------------------------------
// scaling

#[derive(Debug, Serialize)]
struct ScalingRun {
    nodes: u32,
    tstores: u32,
    customers: u64,
    purchases: u64,
    load_s: f64,
    queries: Vec<QueryTiming>,
}

fn scaling(cx: &Ctx) -> Result<Section> {
    let o = cx.o;
    let shapes: Vec<(u32, u32)> = if o.quick {
        vec![(1, 1), (1, 2), (2, 1), (2, 2)]
    } else {
        vec![(1, 1), (1, 2), (2, 1), (2, 2), (3, 2), (4, 2)]
    };
    let fractions: &[f64] = if o.quick {
        &[0.25, 1.0]
    } else {
        &[0.25, 0.5, 1.0]
    };
    let (customers, purchases) = o.example_rows();
    let mut runs = Vec::new();
    let mut one = |cx: &Ctx, nodes: u32, tstores: u32, c_rows: u64, p_rows: u64| -> Result<()> {
        let w = cx.example(c_rows, p_rows)?;
        let mut spec = ClusterSpec::new(&o.fabric, nodes, tstores);
        spec.device = o.device.clone();
        let cluster = cx.cluster(&spec)?;
        let mut c = cluster.client()?;
        let load_s = load(&mut c, &w)?;
        let queries = cx.time_all(&mut c, &w, &[], &format!("{} {p_rows} rows", spec.label()));
        drop(c);
        cluster.stop()?;
        if let Some(e) = first_error(&queries) {
            bail!("{}: {e}", spec.label());
        }
        runs.push(ScalingRun {
            nodes,
            tstores,
            customers: c_rows,
            purchases: p_rows,
            load_s,
            queries,
        });
        cx.progress
            .step(&format!("scaling {nodes}x{tstores} {p_rows} purchases"));
        Ok(())
    };
    for &(n, t) in &shapes {
        if cx.stop() {
            break;
        }
        one(cx, n, t, customers, purchases)?;
    }
    for &f in fractions.iter().filter(|&&f| f < 1.0) {
        if cx.stop() {
            break;
        }
        let c_rows = ((customers as f64 * f) as u64).max(1);
        let p_rows = ((purchases as f64 * f) as u64).max(1);
        one(cx, o.nodes, o.tstores, c_rows, p_rows)?;
    }
    cx.dir.write_results(&runs)?;
    let names: Vec<String> = runs
        .first()
        .map(|r| r.queries.iter().map(|q| q.name.clone()).collect())
        .unwrap_or_default();
    let mut rows = Vec::new();
    for r in &runs {
        let mut row = vec![
            format!("{}x{}", r.nodes, r.tstores),
            r.purchases.to_string(),
            format!("{:.2}", r.load_s),
        ];
        row.extend(r.queries.iter().map(|q| secs(q.median_s)));
        rows.push(row);
    }
    let mut header = vec!["nodes x Tstores", "purchases", "load s"];
    header.extend(names.iter().map(String::as_str));
    let md = format!(
        "The design's example on `{}`: median seconds per query ({} repeats). The first \
         {} rows keep the data fixed ({customers} customers x {purchases} purchases) and \
         grow the cluster; the rest keep the {}x{} shape and shrink the data. The host \
         has {} cores: shapes with more Tstores than cores share them.\n\n{}",
        o.fabric,
        o.repeats,
        shapes.len().min(runs.len()),
        o.nodes,
        o.tstores,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        report::markdown_table(&header, &rows)
    );
    cx.dir.write_markdown(&md)?;
    let fixed: Vec<&ScalingRun> = runs.iter().filter(|r| r.purchases == purchases).collect();
    let by_tstores: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut pts: Vec<(f64, f64)> = fixed
                .iter()
                .filter_map(|r| {
                    r.queries[i]
                        .median_s
                        .map(|m| ((r.nodes * r.tstores) as f64, m))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::new(name.clone(), pts)
        })
        .collect();
    let shape_svg = cx.dir.svg_path("by-tstores");
    plot::line_chart(
        &shape_svg,
        &Axes::new(
            format!("fixed data ({purchases} purchases): time vs total Tstores"),
            "Tstores in the cluster (nodes x Tstores per node)",
            "median seconds",
        ),
        &by_tstores,
    )?;
    let base: Vec<&ScalingRun> = runs
        .iter()
        .filter(|r| r.nodes == o.nodes && r.tstores == o.tstores)
        .collect();
    let by_size: Vec<Series> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut pts: Vec<(f64, f64)> = base
                .iter()
                .filter_map(|r| r.queries[i].median_s.map(|m| (r.purchases as f64, m)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series::new(name.clone(), pts)
        })
        .collect();
    let size_svg = cx.dir.svg_path("by-size");
    plot::line_chart(
        &size_svg,
        &Axes::new(
            format!("{}x{} cluster: time vs data size", o.nodes, o.tstores),
            "purchases rows",
            "median seconds",
        ),
        &by_size,
    )?;
    let mut s = Section::new(&cx.dir, "scaling: cluster shape and data size", md);
    s.plots = vec![shape_svg, size_svg];
    s.status = cx.status();
    Ok(s)
}

// ---------------------------------------------------------------------------------
// pivot

/// The pivot EXPLAIN reports and the other tables' aliases.
fn explain_pivot(c: &mut postgres::Client, sql: &str) -> Result<(String, Vec<String>)> {
    let lines =
        measure::pg_rows(c, &format!("EXPLAIN {sql}")).map_err(|e| anyhow!("EXPLAIN: {e}"))?;
    let mut pivot: Option<String> = None;
    let mut others: Vec<String> = Vec::new();
    // "  - Inner join: pivot [p] stays in place (...); [c] is broadcast; ..." (a side
    // of several tables lists them all: "[c, o]").
    let names = |inside: &str| -> Vec<String> {
        inside
            .split(", ")
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.starts_with('('))
            .map(str::to_string)
            .collect()
    };
    for l in lines.iter().filter_map(|r| r.first()) {
        let Some((_, rest)) = l.split_once("join: pivot [") else {
            continue;
        };
        let Some((stay, rest)) = rest.split_once(']') else {
            continue;
        };
        if pivot.is_none() {
            pivot = names(stay).into_iter().next();
        }
        if let Some((_, moving)) = rest.split_once("; [") {
            if let Some((moving, _)) = moving.split_once("] is broadcast") {
                for n in names(moving) {
                    if Some(&n) != pivot.as_ref() && !others.contains(&n) {
                        others.push(n);
                    }
                }
            }
        }
    }
    let pivot = pivot.ok_or_else(|| anyhow!("EXPLAIN names no pivot for {sql}"))?;
    Ok((pivot, others))
}

#[derive(Debug, Serialize)]
struct PivotRun {
    workload: String,
    query: String,
    pivot: String,
    chosen_by_planner: bool,
    timing: QueryTiming,
}

fn pivot(cx: &Ctx) -> Result<Section> {
    let o = cx.o;
    let (customers, purchases) = o.example_rows();
    let example = cx.example(customers, purchases)?;
    let synth_opts = o.synthetic(0.5, 1.1);
    let synth = cx.synthetic(&synth_opts)?;
    let spec = o.base_spec(Mode::Smr);
    let cluster = cx.fixed_cluster(&spec)?;
    let mut c = cluster.client()?;
    let mut runs = Vec::new();
    for w in [&example, &synth] {
        load(&mut c, w)?;
        for q in &w.queries {
            if cx.stop() {
                break;
            }
            let (chosen, others) = explain_pivot(&mut c, &q.sql)?;
            if others.is_empty() {
                continue; // one table: nothing to choose
            }
            for alias in std::iter::once(chosen.clone()).chain(others) {
                if cx.stop() {
                    break;
                }
                cx.progress
                    .set_message(&format!("pivot: {} {} pivot {alias}", w.name, q.name));
                let t = measure::time_query(
                    &mut c,
                    &q.name,
                    &q.sql,
                    &[("smrdb.pivot", alias.as_str())],
                    o.repeats,
                    &progress::stop_requested,
                );
                if let Some(e) = &t.error {
                    bail!("{} {} with pivot {alias}: {e}", w.name, q.name);
                }
                runs.push(PivotRun {
                    workload: w.name.clone(),
                    query: q.name.clone(),
                    pivot: alias.clone(),
                    chosen_by_planner: alias == chosen,
                    timing: t,
                });
            }
            cx.progress.step(&format!("pivot {} {}", w.name, q.name));
        }
    }
    drop(c);
    cluster.stop()?;
    cx.dir.write_results(&runs)?;
    // Does every query's answer stay the same whatever the pivot?
    let mut differ = Vec::new();
    for r in &runs {
        if let Some(first) = runs
            .iter()
            .find(|x| x.workload == r.workload && x.query == r.query)
        {
            if let Some(d) = differs(&first.timing, &r.timing) {
                differ.push(format!("{} {} pivot {}: {d}", r.workload, r.query, r.pivot));
            }
        }
    }
    if !differ.is_empty() {
        bail!("answers change with the pivot: {}", differ.join(", "));
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.workload.clone(),
                r.query.clone(),
                format!(
                    "{}{}",
                    r.pivot,
                    if r.chosen_by_planner {
                        " (planner)"
                    } else {
                        ""
                    }
                ),
                bytes(r.timing.wire_bytes),
                secs(r.timing.median_s),
            ]
        })
        .collect();
    let md = format!(
        "Every join query with the planner's pivot and each alternative forced by `SET \
         smrdb.pivot`, on {}; bytes are the routers' `bytes_written` over one run. \
         Workloads: the design's example ({customers} customers x {purchases} purchases) \
         and synthetic key/foreign-key ({} dim x {} fact rows, selectivity {}, Zipf \
         skew {}). Answers agree across pivots.\n\n{}",
        cluster_label(&spec, o),
        synth_opts.dim_rows,
        synth_opts.fact_rows,
        synth_opts.selectivity,
        synth_opts.skew,
        report::markdown_table(&["workload", "query", "pivot", "bytes", "median s"], &rows)
    );
    cx.dir.write_markdown(&md)?;
    let cats: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{} {}{}",
                r.query,
                r.pivot,
                if r.chosen_by_planner { "*" } else { "" }
            )
        })
        .collect();
    let time_svg = cx.dir.svg_path("time");
    plot::bar_chart(
        &time_svg,
        &Axes::new(
            "pivot choice: time (* = the planner's)",
            "query and pivot",
            "median seconds",
        ),
        &cats,
        &[Series::new(
            "median s",
            runs.iter()
                .map(|r| (0.0, r.timing.median_s.unwrap_or(0.0)))
                .collect(),
        )],
    )?;
    let bytes_svg = cx.dir.svg_path("bytes");
    plot::bar_chart(
        &bytes_svg,
        &Axes::new(
            "pivot choice: bytes moved (* = the planner's)",
            "query and pivot",
            "MiB written",
        ),
        &cats,
        &[Series::new(
            "MiB",
            runs.iter()
                .map(|r| (0.0, r.timing.wire_bytes.map_or(0.0, mib)))
                .collect(),
        )],
    )?;
    let mut s = Section::new(
        &cx.dir,
        "pivot: the planner's choice vs the alternatives",
        md,
    );
    s.plots = vec![time_svg, bytes_svg];
    s.status = cx.status();
    Ok(s)
}

/// Whether two runs of one query answered differently (floats to 1e-6 relative, row
/// order as the query's ORDER BY demands): what differs, or None.
fn differs(a: &QueryTiming, b: &QueryTiming) -> Option<String> {
    let c = query_bench::compare(&a.into(), &b.into());
    (c.outcome != "agree").then(|| format!("{} ({})", c.outcome, c.detail))
}

fn cluster_label(spec: &ClusterSpec, o: &PaperOptions) -> String {
    match &o.cluster_file {
        Some((f, _)) => format!("the cluster of {}", f.display()),
        None => format!("a local {} cluster", spec.label()),
    }
}

// ---------------------------------------------------------------------------------
// overlap

#[derive(Debug, Serialize)]
struct OverlapRun {
    query: String,
    pivot: String,
    overlap: bool,
    timing: QueryTiming,
}

fn overlap(cx: &Ctx) -> Result<Section> {
    let o = cx.o;
    let so = o.synthetic(1.0, 0.0);
    let w = cx.synthetic(&so)?;
    let spec = o.base_spec(Mode::Smr);
    let cluster = cx.fixed_cluster(&spec)?;
    let mut c = cluster.client()?;
    load(&mut c, &w)?;
    let mut runs = Vec::new();
    // The planner's pivot (fact) streams the small join table; forcing dim as the
    // pivot streams the large one, where overlapping matters most.
    for q in &w.queries {
        let (chosen, others) = explain_pivot(&mut c, &q.sql)?;
        for pivot in std::iter::once(chosen).chain(others.into_iter().take(1)) {
            for on in [true, false] {
                if cx.stop() {
                    break;
                }
                cx.progress.set_message(&format!(
                    "overlap: {} pivot {pivot} {}",
                    q.name,
                    if on { "on" } else { "off" }
                ));
                let t = measure::time_query(
                    &mut c,
                    &q.name,
                    &q.sql,
                    &[
                        ("smrdb.pivot", pivot.as_str()),
                        ("smrdb.overlap", if on { "on" } else { "off" }),
                    ],
                    o.repeats,
                    &progress::stop_requested,
                );
                if let Some(e) = &t.error {
                    bail!("{} pivot {pivot} overlap {on}: {e}", q.name);
                }
                runs.push(OverlapRun {
                    query: q.name.clone(),
                    pivot: pivot.clone(),
                    overlap: on,
                    timing: t,
                });
            }
        }
        cx.progress.step(&format!("overlap {}", q.name));
    }
    drop(c);
    cluster.stop()?;
    cx.dir.write_results(&runs)?;
    let mut rows = Vec::new();
    let mut cats = Vec::new();
    let (mut on_pts, mut off_pts) = (Vec::new(), Vec::new());
    for pair in runs.chunks(2) {
        if let [a, b] = pair {
            let (on, off) = (a.timing.median_s, b.timing.median_s);
            rows.push(vec![
                a.query.clone(),
                a.pivot.clone(),
                secs(on),
                secs(off),
                match (on, off) {
                    (Some(x), Some(y)) if x > 0.0 => format!("{:.2}", y / x),
                    _ => "-".into(),
                },
            ]);
            cats.push(format!("{} pivot {}", a.query, a.pivot));
            on_pts.push((0.0, on.unwrap_or(0.0)));
            off_pts.push((0.0, off.unwrap_or(0.0)));
        }
    }
    let md = format!(
        "Compare-while-receiving (`smrdb.overlap = on`, the design: each chunk of the \
         streamed join table is compared as it arrives) vs off (every chunk is copied \
         out of the ring and compared once the whole table is in), on {}, the synthetic \
         workload ({} dim x {} fact rows, every dim row passes), with the planner's \
         pivot and with the other table forced as the pivot (so the large table \
         streams).\n\n{}",
        cluster_label(&spec, o),
        so.dim_rows,
        so.fact_rows,
        report::markdown_table(&["query", "pivot", "on s", "off s", "off/on"], &rows)
    );
    cx.dir.write_markdown(&md)?;
    let svg = cx.dir.svg_path("time");
    plot::bar_chart(
        &svg,
        &Axes::new(
            "compare while receiving: on vs off",
            "query",
            "median seconds",
        ),
        &cats,
        &[
            Series::new("overlap on", on_pts),
            Series::new("overlap off", off_pts),
        ],
    )?;
    let mut s = Section::new(&cx.dir, "overlap: compare while receiving, on vs off", md);
    s.plots = vec![svg];
    s.status = cx.status();
    Ok(s)
}

// ---------------------------------------------------------------------------------
// tpch

impl PaperOptions {
    /// The TPC-H scale factor: 0.1 times --scale; with --quick 0.01, or 0.01 times
    /// --scale when that is larger (a smaller --scale, as the Soft-RoCE VM's, keeps SF
    /// 0.01: below it several queries answer nothing).
    pub fn tpch_sf(&self) -> f64 {
        if self.quick {
            0.01 * self.scale.max(1.0)
        } else {
            0.1 * self.scale
        }
    }
}

fn tpch(cx: &Ctx) -> Result<Section> {
    let o = cx.o;
    let sf = o.tpch_sf();
    let spec = o.base_spec(Mode::Smr);
    let opts = tpch_bench::Options {
        sf,
        queries: Vec::new(),
        repeats: o.repeats,
        duckdb_threads: o.duckdb_threads,
        venv: o.venv.clone(),
        python: o.python.clone(),
        engines: vec![query_bench::Engine::Smrdb, query_bench::Engine::Duckdb],
        data_dir: cx.data().to_path_buf(),
        timeout_s: tpch_bench::DEFAULT_TIMEOUT_S,
    };
    let r = tpch_bench::run(&opts, &|| cx.fixed_cluster(&spec), &|m| {
        cx.progress.set_message(&format!("tpch: {m}"));
    })?;
    cx.progress.step("tpch");
    cx.dir.write_results(&r)?;
    let md = tpch_bench::markdown(&r);
    cx.dir.write_markdown(&md)?;
    let cats: Vec<String> = r.queries.iter().map(|q| q.query.clone()).collect();
    let pts = |f: fn(&tpch_bench::QueryResult) -> Option<f64>| {
        r.queries
            .iter()
            .map(|q| (0.0, f(q).unwrap_or(0.0)))
            .collect::<Vec<_>>()
    };
    let svg = cx.dir.svg_path("time");
    plot::bar_chart(
        &svg,
        &Axes::new(
            format!("TPC-H SF {sf}: smrdb vs DuckDB"),
            "query",
            "median seconds",
        ),
        &cats,
        &[
            Series::new("smrdb", pts(|q| q.smrdb_median_s)),
            Series::new("DuckDB", pts(|q| q.duckdb_median_s)),
        ],
    )?;
    let mut s = Section::new(
        &cx.dir,
        format!("tpch: the 22 TPC-H queries at SF {sf}, smrdb vs DuckDB"),
        md,
    );
    s.plots = vec![svg];
    s.status = cx.status();
    if !r.failures().is_empty() {
        s.status = SectionStatus::Failed(r.failure_summary());
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------

/// Runs the experiments and writes the report; returns the report's path. Each
/// experiment that fails is recorded in the report and the run goes on; the error
/// afterwards names them.
///
/// # Errors
/// The report directory cannot be written, or an experiment failed.
pub fn run(o: &PaperOptions) -> Result<PathBuf> {
    progress::install_ctrlc()?;
    let root = ReportDir::create(&o.out)?;
    std::fs::create_dir_all(&o.data_dir)
        .with_context(|| format!("create {}", o.data_dir.display()))?;
    let shape = format!(
        "{} node(s) x {} Tstore(s) (base shape; experiments vary it), {}{}",
        o.nodes,
        o.tstores,
        o.fabric,
        if o.quick { ", quick" } else { "" }
    );
    let env = Environment::capture(&o.fabric, o.device.as_deref(), &shape);
    let steps = o.tstore_steps().len() as u64;
    let total: u64 = o
        .experiments
        .iter()
        .map(|e| match e {
            Experiment::Transport | Experiment::Tpch => 1,
            Experiment::Broadcast => {
                2 * steps
                    + o.node_steps()
                        .iter()
                        .filter(|&&n| n > o.nodes.max(2))
                        .count() as u64
            }
            Experiment::Scaling => {
                if o.quick {
                    5
                } else {
                    8
                }
            }
            // One step per query of the example (4) and the synthetic workload (3).
            Experiment::Pivot => 7,
            Experiment::Overlap => 3,
        })
        .sum();
    let bar = Progress::new(total, "paper");
    let mut sections = Vec::new();
    let mut failed = Vec::new();
    for &e in &o.experiments {
        if progress::stop_requested() {
            break;
        }
        let dir = root.experiment(e.name())?;
        let cx = Ctx {
            o,
            dir,
            progress: &bar,
        };
        let t = Instant::now();
        let r = match e {
            Experiment::Transport => transport(&cx),
            Experiment::Broadcast => broadcast(&cx),
            Experiment::Scaling => scaling(&cx),
            Experiment::Pivot => pivot(&cx),
            Experiment::Overlap => overlap(&cx),
            Experiment::Tpch => tpch(&cx),
        };
        let section = match r {
            Ok(s) => {
                let how = match &s.status {
                    SectionStatus::Interrupted => "interrupted".to_string(),
                    SectionStatus::Done => "done".to_string(),
                    SectionStatus::Failed(m) => {
                        failed.push(format!("{}: {m}", e.name()));
                        format!("FAILED: {m}")
                    }
                };
                bar.println(&format!(
                    "{}: {how} in {:.0} s",
                    e.name(),
                    t.elapsed().as_secs_f64()
                ));
                s
            }
            Err(err) => {
                let msg = format!("{err:#}");
                bar.println(&format!("{}: FAILED: {msg}", e.name()));
                failed.push(format!("{}: {msg}", e.name()));
                let mut s = Section::new(&cx.dir, e.name(), String::new());
                s.status = if progress::stop_requested() {
                    SectionStatus::Interrupted
                } else {
                    SectionStatus::Failed(msg)
                };
                s
            }
        };
        sections.push(section);
        // The report is rewritten after every experiment, so a crash keeps the rest.
        report::write_report(
            &root,
            "smrdb: paper experiments",
            &env,
            &sections,
            &o.command,
        )?;
    }
    let path = report::write_report(
        &root,
        "smrdb: paper experiments",
        &env,
        &sections,
        &o.command,
    )?;
    bar.finish(&format!("report: {}", path.display()));
    if !failed.is_empty() {
        bail!(
            "{} experiment(s) failed (report: {}):\n  {}",
            failed.len(),
            path.display(),
            failed.join("\n  ")
        );
    }
    Ok(path)
}

/// The default data directory: `$TMPDIR/smrdb-paper-data`.
pub fn default_data_dir() -> PathBuf {
    std::env::temp_dir().join("smrdb-paper-data")
}

/// The default report base: `reports/` under the current directory.
pub fn default_out() -> PathBuf {
    Path::new("reports").to_path_buf()
}
