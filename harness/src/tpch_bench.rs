//! `smrdb-bench tpch` and the paper's `tpch` experiment: the 22 TPC-H queries in
//! their standard form on a smrdb cluster and on DuckDB, over the same generated data,
//! side by side in one run, every answer compared.
//!
//! * Data: [`workload::tpch`]: the 8 tables with every column, typed as the
//!   specification says (the same DDL for both engines), from `tpchgen`, as CSV files
//!   generated once per scale factor and reused.
//! * Queries: [`workload::TPCH_QUERIES`] (`harness/tpch/q01.sql` .. `q22.sql`): the
//!   specification's text with its validation substitution parameters, the same text
//!   for both engines.
//! * DuckDB (the reference) first: [`query_bench::run_duckdb`] (warm-up + repeats,
//!   `SET threads`), then smrdb: a cluster the caller starts (a local one, or the
//!   cluster of a cluster file), [`workload::load_smrdb_each`] (`COPY ... WITH
//!   (FORMAT csv)`; a table that fails is reported and the queries run anyway), `SET
//!   statement_timeout` once for the session, then every query through
//!   [`measure::time_query`]: one warm-up and `repeats` timed runs at the client (all
//!   rows received), with the bytes the routers wrote during each run. The engines
//!   never run at the same time.
//! * Answers: [`query_bench::compare`]: the same rows, in the same order where the
//!   query has an ORDER BY (rows tied on its keys in any order, and the members of a
//!   tie cut by a LIMIT may differ), numbers within a relative 1e-6 (DECIMAL averages
//!   and DOUBLE sums differ in the last digits), text with trailing blanks ignored
//!   (CHAR(n) comes back padded from one engine and not the other).
//! * Report: per query the medians, their ratio smrdb/DuckDB, the answer check
//!   (`equal`, `differs` or `error`, with what differed or the error), rows and router
//!   bytes; the geometric mean of the ratios over the queries both engines ran.
//!
//! An answer that differs or a query that fails is a failure ([`Report::failures`]);
//! times never are.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::measure::{self, QueryTiming};
use crate::progress;
use crate::query_bench::{self, Engine, EngineRun, QueryRun};
use crate::report;
use crate::workload::{self, Table, Workload};

/// The default `statement_timeout` of smrdb's queries, seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// Options of a TPC-H run.
#[derive(Debug, Clone)]
pub struct Options {
    /// TPC-H scale factor.
    pub sf: f64,
    /// The queries to run (1..=22), in this order; empty: all 22.
    pub queries: Vec<usize>,
    /// Timed repeats per query and engine, after one warm-up.
    pub repeats: usize,
    /// DuckDB's `SET threads TO`.
    pub duckdb_threads: u32,
    /// The venv holding duckdb (created when needed).
    pub venv: PathBuf,
    /// The interpreter that creates the venv.
    pub python: String,
    /// Engines to run.
    pub engines: Vec<Engine>,
    /// Generated data (the CSVs) is kept and reused here.
    pub data_dir: PathBuf,
    /// smrdb's `statement_timeout`, seconds (0: none): a query that hangs fails
    /// instead of stopping the run.
    pub timeout_s: u64,
}

/// What the answers check found for one query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Both engines answered the same.
    Equal,
    /// The answers differ.
    Differs,
    /// A query failed on one engine or both.
    Error,
    /// Not compared: an engine was not run (or the run was stopped).
    NotCompared,
}

/// The answers check of one query.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerCheck {
    /// What was found.
    pub outcome: Outcome,
    /// What differed, the error(s), or how the answers agreed.
    pub detail: String,
}

/// One query on both engines.
#[derive(Debug, Clone, Serialize)]
pub struct QueryResult {
    /// `Q1` .. `Q22`.
    pub query: String,
    /// The query's header comment (its name and any change to the spec's text).
    pub title: String,
    /// The SQL both engines ran.
    pub sql: String,
    /// smrdb's median, seconds.
    pub smrdb_median_s: Option<f64>,
    /// DuckDB's median, seconds.
    pub duckdb_median_s: Option<f64>,
    /// smrdb / DuckDB.
    pub ratio: Option<f64>,
    /// Rows of smrdb's answer.
    pub smrdb_rows: Option<usize>,
    /// Rows of DuckDB's answer.
    pub duckdb_rows: Option<usize>,
    /// Bytes the smrdb routers wrote during one run (median over the runs).
    pub router_bytes: Option<u64>,
    /// Router messages during one run (median over the runs).
    pub router_messages: Option<u64>,
    /// The answers check.
    pub check: AnswerCheck,
    /// smrdb's measurement: every repeat, router counters, the answer, the error.
    pub smrdb: Option<QueryTiming>,
    /// DuckDB's measurement: every repeat, the answer, the error.
    pub duckdb: Option<QueryRun>,
}

/// A TPC-H run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scale factor.
    pub sf: f64,
    /// The smrdb cluster (`2x2 shm smr`, or the cluster file's), when smrdb ran.
    pub cluster: Option<String>,
    /// smrdb's git revision, when smrdb ran.
    pub smrdb_version: Option<String>,
    /// DuckDB's version, when DuckDB ran.
    pub duckdb_version: Option<String>,
    /// Timed repeats per query and engine.
    pub repeats: usize,
    /// DuckDB threads.
    pub duckdb_threads: u32,
    /// smrdb's statement_timeout, seconds (0: none).
    pub timeout_s: u64,
    /// Online CPUs of the host.
    pub host_cpus: usize,
    /// `/proc/loadavg` before the engines ran.
    pub loadavg_before: String,
    /// `/proc/loadavg` after both ran.
    pub loadavg_after: String,
    /// The tables: DDL, CSV file, rows.
    pub tables: Vec<Table>,
    /// Seconds spent generating the CSVs (0 when reused).
    pub generate_s: f64,
    /// The CSVs were already there.
    pub data_reused: bool,
    /// smrdb's `COPY` time per table, seconds.
    pub smrdb_load_s: Vec<(String, f64)>,
    /// DuckDB's `read_csv` time per table, seconds.
    pub duckdb_load_s: Vec<(String, f64)>,
    /// Why loading tables into smrdb failed, if any did (the queries ran anyway).
    pub smrdb_load_error: Option<String>,
    /// What went wrong with the smrdb cluster itself (a process that died, a stop
    /// that failed), if anything.
    pub cluster_error: Option<String>,
    /// The queries, in run order.
    pub queries: Vec<QueryResult>,
    /// Geometric mean of [`QueryResult::ratio`] over the queries that have one.
    pub geomean_ratio: Option<f64>,
    /// Queries the geometric mean is over.
    pub geomean_queries: usize,
    /// A stop (Ctrl-C) cut the run short.
    pub interrupted: bool,
}

impl Report {
    /// Answers that differ, queries that failed, and a failed cluster, one line each
    /// (`Q3: differs: ...`); empty when the run is sound. Timing is never a failure.
    pub fn failures(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .queries
            .iter()
            .filter(|q| matches!(q.check.outcome, Outcome::Differs | Outcome::Error))
            .map(|q| format!("{}: {}", q.query, answer_text(&q.check)))
            .collect();
        if let Some(e) = &self.smrdb_load_error {
            v.push(format!("smrdb load: {e}"));
        }
        if let Some(e) = &self.cluster_error {
            v.push(format!("cluster: {e}"));
        }
        v
    }
}

impl Report {
    /// [`Report::failures`] in one line: which queries' answers differ, which failed,
    /// and whether the load or the cluster failed; empty when the run is sound.
    pub fn failure_summary(&self) -> String {
        let names = |o: Outcome| {
            self.queries
                .iter()
                .filter(|q| q.check.outcome == o)
                .map(|q| q.query.as_str())
                .collect::<Vec<_>>()
        };
        let mut parts = Vec::new();
        let differ = names(Outcome::Differs);
        if !differ.is_empty() {
            parts.push(format!("answers differ: {}", differ.join(",")));
        }
        let failed = names(Outcome::Error);
        if !failed.is_empty() {
            parts.push(format!("queries failed: {}", failed.join(",")));
        }
        if let Some(e) = &self.smrdb_load_error {
            parts.push(format!("smrdb load failed: {}", clip(e, 120)));
        }
        if let Some(e) = &self.cluster_error {
            parts.push(format!("cluster failed: {}", clip(e, 120)));
        }
        parts.join("; ")
    }
}

/// The queries `numbers` (1..=22; empty: all) of the TPC-H workload `w`, in that
/// order.
///
/// # Errors
/// A number outside 1..=22 or named twice.
pub fn select_queries(w: &mut Workload, numbers: &[usize]) -> Result<()> {
    if numbers.is_empty() {
        return Ok(());
    }
    let mut picked = Vec::with_capacity(numbers.len());
    for (i, &n) in numbers.iter().enumerate() {
        if !(1..=w.queries.len()).contains(&n) {
            bail!("TPC-H has queries 1 to {}, not {n}", w.queries.len());
        }
        if numbers[..i].contains(&n) {
            bail!("query {n} is named twice");
        }
        picked.push(w.queries[n - 1].clone());
    }
    w.queries = picked;
    Ok(())
}

/// `Q1,3,5`-style text for a list of query numbers (`all 22` when empty).
pub fn queries_label(numbers: &[usize]) -> String {
    if numbers.is_empty() {
        "all 22".into()
    } else {
        numbers
            .iter()
            .map(|n| format!("Q{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// What smrdb did: the cluster's label, load times, the measurements (None for a
/// query not run), and what went wrong with the cluster.
struct SmrdbRun {
    cluster: String,
    load_s: Vec<(String, f64)>,
    load_error: Option<String>,
    queries: Vec<Option<QueryTiming>>,
    cluster_error: Option<String>,
}

/// A query smrdb did not run, failed with `why`.
fn not_run(q: &workload::Query, why: &str) -> QueryTiming {
    QueryTiming {
        name: q.name.clone(),
        sql: q.sql.clone(),
        settings: Vec::new(),
        warmup_s: None,
        times_s: Vec::new(),
        median_s: None,
        rows: Vec::new(),
        wire_bytes: None,
        messages: None,
        error: Some(format!("not run: {why}")),
    }
}

/// Loads `w` into the cluster `start` starts and measures every query; the cluster
/// is stopped before this returns. A table that fails to load is recorded and the
/// queries run anyway (each fails or not on its own); a cluster process that dies
/// fails the queries not run yet. Either way the run goes on to its report.
///
/// # Errors
/// The cluster does not start or does not take a connection.
fn run_smrdb(
    w: &Workload,
    o: &Options,
    start: &dyn Fn() -> Result<Cluster>,
    status: &dyn Fn(&str),
) -> Result<SmrdbRun> {
    status("starting the smrdb cluster");
    let mut cluster = start()?;
    let mut run = SmrdbRun {
        cluster: cluster.label(),
        load_s: Vec::new(),
        load_error: None,
        queries: Vec::with_capacity(w.queries.len()),
        cluster_error: None,
    };
    let mut c = match cluster.client() {
        Ok(c) => c,
        Err(e) => {
            let _ = cluster.stop();
            return Err(e);
        }
    };
    status(&format!("loading SF {} into smrdb ({})", o.sf, run.cluster));
    let (load_s, load_errors) = workload::load_smrdb_each(&mut c, w);
    run.load_s = load_s;
    if !load_errors.is_empty() {
        for e in &load_errors {
            eprintln!("smrdb: loading failed: {e}");
        }
        run.load_error = Some(load_errors.join("; "));
    }
    if o.timeout_s > 0 {
        let set = format!("SET statement_timeout = '{}s'", o.timeout_s);
        if let Err(e) = measure::pg_rows(&mut c, &set) {
            eprintln!("smrdb: {set} failed ({e}); queries run without a timeout");
        }
    }
    for q in &w.queries {
        if run.cluster_error.is_some() {
            run.queries
                .push(Some(not_run(q, "a cluster process exited")));
            continue;
        }
        if progress::stop_requested() {
            run.queries.push(None);
            continue;
        }
        status(&format!("smrdb: {}", q.name));
        let t = measure::time_query(
            &mut c,
            &q.name,
            &q.sql,
            &[],
            o.repeats,
            &progress::stop_requested,
        );
        match &t.error {
            Some(e) => eprintln!("smrdb: {} failed: {e}", q.name),
            None => eprintln!(
                "smrdb: {} {:.4} s, {} rows",
                q.name,
                t.median_s.unwrap_or(f64::NAN),
                t.rows.len()
            ),
        }
        run.queries.push(Some(t));
        // A query that killed a node fails every later one: stop asking.
        if let Err(e) = cluster.check() {
            run.cluster_error = Some(format!("{e:#}"));
        }
    }
    drop(c);
    if let Err(e) = cluster.stop() {
        run.cluster_error
            .get_or_insert(format!("stopping the cluster: {e:#}"));
    }
    Ok(run)
}

/// The answers check of one query from what each engine did (None: not run).
fn check(s: Option<&QueryTiming>, d: Option<&QueryRun>) -> AnswerCheck {
    let mut errors = Vec::new();
    if let Some(e) = s.and_then(|t| t.error.as_ref()) {
        errors.push(format!("smrdb: {e}"));
    }
    if let Some(e) = d.and_then(|q| q.error.as_ref()) {
        errors.push(format!("DuckDB: {e}"));
    }
    if !errors.is_empty() {
        return AnswerCheck {
            outcome: Outcome::Error,
            detail: errors.join("; "),
        };
    }
    match (s, d) {
        (Some(s), Some(d)) => {
            let c = query_bench::compare(&s.into(), d);
            let outcome = match c.outcome.as_str() {
                "agree" => Outcome::Equal,
                "DIFFER" => Outcome::Differs,
                _ => Outcome::NotCompared,
            };
            AnswerCheck {
                outcome,
                detail: c.detail,
            }
        }
        (None, _) => AnswerCheck {
            outcome: Outcome::NotCompared,
            detail: "smrdb did not run it".into(),
        },
        (_, None) => AnswerCheck {
            outcome: Outcome::NotCompared,
            detail: "DuckDB did not run it".into(),
        },
    }
}

/// The geometric mean of the positive finite values; None when there are none.
pub fn geomean(xs: impl IntoIterator<Item = f64>) -> (Option<f64>, usize) {
    let logs: Vec<f64> = xs
        .into_iter()
        .filter(|x| x.is_finite() && *x > 0.0)
        .map(f64::ln)
        .collect();
    if logs.is_empty() {
        return (None, 0);
    }
    let n = logs.len();
    (Some((logs.iter().sum::<f64>() / n as f64).exp()), n)
}

/// Runs the benchmark: generates (or reuses) the data, runs DuckDB, then smrdb on the
/// cluster `start_cluster` starts, and compares the answers. `status` is told what is
/// going on. Query errors and differing answers are in the report
/// ([`Report::failures`]), not returned; a stop request (Ctrl-C,
/// [`progress::stop_requested`]) ends the run early with what was measured.
///
/// # Errors
/// Bad options, data generation, a DuckDB that cannot be installed or cannot load the
/// data, a cluster that does not start, or a load that fails.
pub fn run(
    o: &Options,
    start_cluster: &dyn Fn() -> Result<Cluster>,
    status: &dyn Fn(&str),
) -> Result<Report> {
    anyhow::ensure!(!o.engines.is_empty(), "no engine to run");
    let total = workload::TPCH_QUERIES.len();
    for (i, &n) in o.queries.iter().enumerate() {
        anyhow::ensure!(
            (1..=total).contains(&n),
            "TPC-H has queries 1 to {total}, not {n}"
        );
        anyhow::ensure!(!o.queries[..i].contains(&n), "query {n} is named twice");
    }
    status(&format!("generating TPC-H SF {} with tpchgen", o.sf));
    let mut w = workload::tpch(o.sf, &o.data_dir)?;
    select_queries(&mut w, &o.queries)?;
    eprintln!(
        "tpch: {} data in {} ({:.1} s)",
        if w.reused { "reusing" } else { "generated" },
        w.tables
            .first()
            .and_then(|t| t.csv.parent())
            .map_or_else(String::new, |p| p.display().to_string()),
        w.generate_s
    );
    let loadavg_before = loadavg();
    let duckdb: Option<EngineRun> = if o.engines.contains(&Engine::Duckdb) {
        status("DuckDB");
        Some(
            query_bench::run_duckdb(&w, o.repeats, o.duckdb_threads, &o.venv, &o.python)
                .context("DuckDB")?,
        )
    } else {
        None
    };
    let smrdb = if o.engines.contains(&Engine::Smrdb) && !progress::stop_requested() {
        Some(run_smrdb(&w, o, start_cluster, status)?)
    } else {
        None
    };
    let mut queries = Vec::with_capacity(w.queries.len());
    for (i, q) in w.queries.iter().enumerate() {
        let s = smrdb
            .as_ref()
            .and_then(|r| r.queries.get(i).cloned().flatten());
        let d = duckdb.as_ref().and_then(|r| r.queries.get(i).cloned());
        if let Some(d) = &d {
            anyhow::ensure!(
                d.name == q.name,
                "DuckDB answered {} where {} was expected",
                d.name,
                q.name
            );
        }
        let ok_s = s.as_ref().filter(|t| t.error.is_none());
        let ok_d = d.as_ref().filter(|t| t.error.is_none());
        let sm = ok_s.and_then(|t| t.median_s);
        let dm = ok_d.and_then(QueryRun::median_s);
        queries.push(QueryResult {
            query: q.name.clone(),
            title: q.description.clone(),
            sql: q.sql.clone(),
            smrdb_median_s: sm,
            duckdb_median_s: dm,
            ratio: match (sm, dm) {
                (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                _ => None,
            },
            smrdb_rows: ok_s.map(|t| t.rows.len()),
            duckdb_rows: ok_d.map(|t| t.rows.len()),
            router_bytes: ok_s.and_then(|t| t.wire_bytes),
            router_messages: ok_s.and_then(|t| t.messages),
            check: check(s.as_ref(), d.as_ref()),
            smrdb: s,
            duckdb: d,
        });
    }
    let (geomean_ratio, geomean_queries) = geomean(queries.iter().filter_map(|q| q.ratio));
    let (cluster, smrdb_load_s, smrdb_load_error, cluster_error) = match smrdb {
        Some(r) => (Some(r.cluster), r.load_s, r.load_error, r.cluster_error),
        None => (None, Vec::new(), None, None),
    };
    Ok(Report {
        sf: o.sf,
        smrdb_version: cluster.as_ref().map(|_| query_bench::smrdb_version()),
        cluster,
        duckdb_version: duckdb.as_ref().map(|d| d.version.clone()),
        repeats: o.repeats,
        duckdb_threads: o.duckdb_threads,
        timeout_s: o.timeout_s,
        host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg_before,
        loadavg_after: loadavg(),
        tables: w.tables.clone(),
        generate_s: w.generate_s,
        data_reused: w.reused,
        smrdb_load_s,
        duckdb_load_s: duckdb.map(|d| d.load_s).unwrap_or_default(),
        smrdb_load_error,
        cluster_error,
        queries,
        geomean_ratio,
        geomean_queries,
        interrupted: progress::stop_requested(),
    })
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{s:.4}"))
}

/// `equal`, `differs: ...`, `error: ...` or `not compared: ...`.
fn answer_text(c: &AnswerCheck) -> String {
    let word = match c.outcome {
        Outcome::Equal => return "equal".into(),
        Outcome::Differs => "differs",
        Outcome::Error => "error",
        Outcome::NotCompared => "not compared",
    };
    format!("{word}: {}", c.detail)
}

/// At most `n` characters of `s` (an ellipsis marks a cut).
pub fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect::<String>() + "…"
    }
}

/// The rows cell: one count, or both when they differ.
fn rows_cell(q: &QueryResult) -> String {
    match (q.smrdb_rows, q.duckdb_rows) {
        (Some(a), Some(b)) if a != b => format!("{a} (DuckDB {b})"),
        (Some(a), _) => a.to_string(),
        (None, Some(b)) => b.to_string(),
        (None, None) => "-".into(),
    }
}

/// The report as Markdown (no heading): a paragraph on what ran, the table (per
/// query: smrdb and DuckDB medians, smrdb/DuckDB, the answer check, rows, router
/// bytes), the geometric mean of the ratios, every failure in full, load times and
/// what each query is.
pub fn markdown(r: &Report) -> String {
    let table_names = r
        .tables
        .iter()
        .map(|t| format!("{} {}", t.name, t.rows))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = format!(
        "The 22 TPC-H queries in their standard form (the specification's text with its \
         validation substitution parameters, `harness/tpch/`; Q15's view as a WITH \
         clause) over TPC-H SF {} from `tpchgen` with the specification's column types \
         (the same CSVs and DDL for both engines; rows: {table_names}), on smrdb ({}, {}) \
         and on {} with {} threads, one after the other; median of {} repeats after a \
         warm-up, timed at the client with every row received. Router bytes: what the \
         smrdb routers wrote during one run. Answers are compared in ORDER BY order (ties \
         in any order, and the members of a tie a LIMIT cuts may differ), numbers to a \
         relative 1e-6, CHAR padding ignored; a differing answer or an error fails the \
         run. Host: {} CPUs, load average {} before and {} after.\n\n",
        r.sf,
        r.cluster.as_deref().unwrap_or("not run"),
        r.smrdb_version.as_deref().unwrap_or("-"),
        r.duckdb_version.as_deref().unwrap_or("DuckDB (not run)"),
        r.duckdb_threads,
        r.repeats,
        r.host_cpus,
        r.loadavg_before,
        r.loadavg_after,
    );
    let rows: Vec<Vec<String>> = r
        .queries
        .iter()
        .map(|q| {
            let failed = |t: Option<bool>| t.unwrap_or(false);
            let s_failed = failed(q.smrdb.as_ref().map(|t| t.error.is_some()));
            let d_failed = failed(q.duckdb.as_ref().map(|t| t.error.is_some()));
            vec![
                q.query.clone(),
                if s_failed {
                    "error".into()
                } else {
                    secs(q.smrdb_median_s)
                },
                if d_failed {
                    "error".into()
                } else {
                    secs(q.duckdb_median_s)
                },
                q.ratio.map_or("-".into(), |x| format!("{x:.2}")),
                clip(&answer_text(&q.check), 160),
                rows_cell(q),
                q.router_bytes.map_or("-".into(), |b| b.to_string()),
            ]
        })
        .collect();
    s += &report::markdown_table(
        &[
            "query",
            "smrdb median s",
            "DuckDB median s",
            "smrdb/DuckDB",
            "answer",
            "rows",
            "router bytes",
        ],
        &rows,
    );
    s += "\n";
    s += &match r.geomean_ratio {
        Some(g) => format!(
            "Geometric mean of smrdb/DuckDB over the {} of {} queries both engines ran: \
             **{g:.2}**.\n\n",
            r.geomean_queries,
            r.queries.len()
        ),
        None => format!(
            "Geometric mean of smrdb/DuckDB: - (none of the {} queries ran on both \
             engines).\n\n",
            r.queries.len()
        ),
    };
    if r.interrupted {
        s += "**Interrupted**: a stop was requested; the queries after it did not run.\n\n";
    }
    let failures = r.failures();
    if failures.is_empty() {
        let equal = r
            .queries
            .iter()
            .filter(|q| q.check.outcome == Outcome::Equal)
            .count();
        let compared = r
            .queries
            .iter()
            .filter(|q| q.check.outcome != Outcome::NotCompared)
            .count();
        s += &if compared == r.queries.len() {
            format!("Answers: all {equal} equal, no errors.\n\n")
        } else {
            format!(
                "Answers: {equal} equal, {} not compared (an engine did not run them), no \
                 errors.\n\n",
                r.queries.len() - compared
            )
        };
    } else {
        s += &format!(
            "**{} failure(s)** (answers that differ, queries that failed):\n\n",
            failures.len()
        );
        for f in &failures {
            s += &format!("* {}\n", f.replace('\n', " "));
        }
        s += "\n";
    }
    for (label, load) in [
        ("smrdb COPY", &r.smrdb_load_s),
        ("DuckDB read_csv", &r.duckdb_load_s),
    ] {
        if !load.is_empty() {
            s += &format!(
                "Load, {label}: {:.2} s ({}).\n\n",
                load.iter().map(|(_, v)| v).sum::<f64>(),
                load.iter()
                    .map(|(t, v)| format!("{t} {v:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    s += "Queries:\n\n";
    for q in &r.queries {
        s += &format!("* {}: {}\n", q.query, q.title);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(name: &str, sql: &str, rows: &[&[&str]], error: Option<&str>) -> QueryTiming {
        QueryTiming {
            name: name.into(),
            sql: sql.into(),
            settings: Vec::new(),
            warmup_s: Some(0.2),
            times_s: if error.is_some() {
                Vec::new()
            } else {
                vec![0.2, 0.1, 0.3]
            },
            median_s: error.is_none().then_some(0.2),
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| c.to_string()).collect())
                .collect(),
            wire_bytes: Some(1000),
            messages: Some(4),
            error: error.map(str::to_string),
        }
    }

    fn duck(name: &str, sql: &str, rows: &[&[&str]], error: Option<&str>) -> QueryRun {
        (&timing(name, sql, rows, error)).into()
    }

    #[test]
    fn checks_name_equal_differs_and_errors() {
        let sql = "-- TPC-H Q1: order by nothing here\nselect f, s from t order by f;";
        let s = timing("Q1", sql, &[&["A         ", "1.50"], &["N", "2"]], None);
        let d = duck("Q1", sql, &[&["A", "1.5"], &["N", "2.0000000001"]], None);
        assert_eq!(check(Some(&s), Some(&d)).outcome, Outcome::Equal);
        let d2 = duck("Q1", sql, &[&["A", "1.6"], &["N", "2"]], None);
        let c = check(Some(&s), Some(&d2));
        assert_eq!(c.outcome, Outcome::Differs);
        assert!(c.detail.contains("1.6"), "{}", c.detail);
        let d3 = duck("Q1", sql, &[&["A", "1.5"]], None);
        assert_eq!(check(Some(&s), Some(&d3)).outcome, Outcome::Differs);
        let e = timing(
            "Q1",
            sql,
            &[],
            Some("ERROR 0A000: DECIMAL is not supported"),
        );
        let c = check(Some(&e), Some(&d));
        assert_eq!(c.outcome, Outcome::Error);
        assert_eq!(c.detail, "smrdb: ERROR 0A000: DECIMAL is not supported");
        let de = duck("Q1", sql, &[], Some("Parser Error: x"));
        let c = check(Some(&e), Some(&de));
        assert_eq!(c.outcome, Outcome::Error);
        assert!(c.detail.contains("smrdb: ") && c.detail.contains("; DuckDB: Parser"));
        assert_eq!(check(None, Some(&d)).outcome, Outcome::NotCompared);
        assert_eq!(check(Some(&s), None).outcome, Outcome::NotCompared);
        assert_eq!(check(None, Some(&de)).outcome, Outcome::Error);
    }

    #[test]
    fn geometric_mean_skips_missing_ratios() {
        let (g, n) = geomean([2.0, 8.0]);
        assert!((g.unwrap() - 4.0).abs() < 1e-12);
        assert_eq!(n, 2);
        assert_eq!(geomean([]), (None, 0));
        let (g, n) = geomean([0.5, 2.0, f64::NAN, 0.0]);
        assert!((g.unwrap() - 1.0).abs() < 1e-12);
        assert_eq!(n, 2);
    }

    #[test]
    fn query_selection() {
        let d = tempfile::tempdir().unwrap();
        let mut w = workload::tpch(0.01, d.path()).unwrap();
        let all = w.clone();
        select_queries(&mut w, &[]).unwrap();
        assert_eq!(w.queries.len(), 22);
        select_queries(&mut w, &[18, 1]).unwrap();
        let names: Vec<&str> = w.queries.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["Q18", "Q1"]);
        let mut w = all.clone();
        assert!(select_queries(&mut w, &[0]).is_err());
        assert!(select_queries(&mut w, &[23]).is_err());
        assert!(select_queries(&mut w, &[2, 2]).is_err());
        assert_eq!(queries_label(&[]), "all 22");
        assert_eq!(queries_label(&[1, 3]), "Q1,Q3");
    }

    fn result(q: &str, s: Option<QueryTiming>, d: Option<QueryRun>) -> QueryResult {
        let c = check(s.as_ref(), d.as_ref());
        let sm = s.as_ref().and_then(|t| t.median_s);
        let dm = d.as_ref().and_then(QueryRun::median_s);
        QueryResult {
            query: q.into(),
            title: "title".into(),
            sql: "select 1".into(),
            smrdb_median_s: sm,
            duckdb_median_s: dm,
            ratio: sm.zip(dm).map(|(a, b)| a / b),
            smrdb_rows: s
                .as_ref()
                .filter(|t| t.error.is_none())
                .map(|t| t.rows.len()),
            duckdb_rows: d.as_ref().map(|t| t.rows.len()),
            router_bytes: s.as_ref().and_then(|t| t.wire_bytes),
            router_messages: None,
            check: c,
            smrdb: s,
            duckdb: d,
        }
    }

    #[test]
    fn failures_and_markdown() {
        let ok = result(
            "Q6",
            Some(timing("Q6", "select 1", &[&["123.45"]], None)),
            Some(duck("Q6", "select 1", &[&["123.45"]], None)),
        );
        let bad = result(
            "Q2",
            Some(timing("Q2", "select 1", &[], Some("ERROR: no | DECIMAL"))),
            Some(duck("Q2", "select 1", &[&["1"]], None)),
        );
        let mut r = Report {
            sf: 0.01,
            cluster: Some("2x2 shm smr".into()),
            smrdb_version: Some("smrdb abc".into()),
            duckdb_version: Some("DuckDB 1.0".into()),
            repeats: 3,
            duckdb_threads: 2,
            timeout_s: 600,
            host_cpus: 2,
            loadavg_before: "0 0 0".into(),
            loadavg_after: "0 0 0".into(),
            tables: Vec::new(),
            generate_s: 0.0,
            data_reused: true,
            smrdb_load_s: vec![("lineitem".into(), 1.0)],
            duckdb_load_s: Vec::new(),
            smrdb_load_error: None,
            cluster_error: None,
            queries: vec![ok.clone()],
            geomean_ratio: Some(1.0),
            geomean_queries: 1,
            interrupted: false,
        };
        assert!(r.failures().is_empty());
        let md = markdown(&r);
        assert!(md.contains("| Q6 "), "{md}");
        assert!(md.contains("equal"));
        assert!(md.contains("**1.00**"));
        assert!(md.contains("1000"), "router bytes: {md}");
        r.queries.push(bad);
        let f = r.failures();
        assert_eq!(f.len(), 1);
        assert!(f[0].starts_with("Q2: error: smrdb: ERROR"), "{f:?}");
        let md = markdown(&r);
        assert!(md.contains("**1 failure(s)**"), "{md}");
        r.cluster_error = Some("node 1 exited".into());
        assert_eq!(r.failures().len(), 2);
        r.smrdb_load_error = Some("create part: ERROR".into());
        assert_eq!(r.failures().len(), 3);
        assert!(r.failures()[1].starts_with("smrdb load: create part"));
        assert_eq!(
            r.failure_summary(),
            "queries failed: Q2; smrdb load failed: create part: ERROR; cluster failed: node 1 \
             exited"
        );
    }
}
