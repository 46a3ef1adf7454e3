//! `smrdb-bench query`: the design's multi-set example ("new customers who bought in
//! July") on smrdb and on DuckDB, side by side in one run, on the same data; and the
//! engine drivers any [`Workload`] runs with.
//!
//! * Data: [`workload::example`] (`customers` x `purchases` from a deterministic PRNG,
//!   written once as CSV files into a subdirectory of the work directory and reused
//!   when a manifest there records the same parameters).
//! * DuckDB (the reference): [`run_duckdb`] runs `harness/py/duckdb_bench.py`,
//!   embedded in this binary, with the interpreter of a venv [`ensure_duckdb`] creates
//!   and fills (`pip install duckdb`) when `import duckdb` fails; `SET threads`, each
//!   table created with the workload's DuckDB DDL and filled by `read_csv` with its
//!   explicit column types, warm-up + repeats timed around
//!   `con.execute(sql).fetchall()`.
//! * smrdb: `smrdb cluster` (as `smrdb-bench load` starts it),
//!   [`workload::load_smrdb`], then [`run_smrdb_queries`]: warm-up + repeats timed at
//!   the client (the `postgres` crate, simple protocol, all rows received), then
//!   `EXPLAIN ANALYZE` of Q1 once.
//! * [`compare_answers`] compares the answers of both engines: the same rows, numbers
//!   within a relative 1e-6 (float sums depend on the summation order), in the same
//!   order where the query has an ORDER BY (ties on its keys in any order).
//!
//! The engines run one after the other (DuckDB first, then smrdb, whose cluster is
//! stopped before this returns), never at the same time.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, ClusterSpec};
use crate::measure::pg_rows;
use crate::workload::{self, Workload};

/// The DuckDB driver script, written beside the workload's CSVs at run time.
const DUCKDB_SCRIPT: &str = include_str!("../py/duckdb_bench.py");

/// Relative tolerance of numeric cells in [`compare_answers`].
const REL_TOL: f64 = 1e-6;

/// Which engines to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Engine {
    /// smrdb through `smrdb cluster`.
    Smrdb,
    /// DuckDB through Python.
    Duckdb,
}

/// Options of a query run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fabric name (shm, tcp, verbs).
    pub fabric: String,
    /// Nodes.
    pub nodes: u32,
    /// Tstores per node.
    pub tstores: u32,
    /// Customers rows.
    pub customers: u64,
    /// Purchases rows.
    pub purchases: u64,
    /// PRNG seed.
    pub seed: u64,
    /// Where the CSVs (and the DuckDB script) live.
    pub work_dir: PathBuf,
    /// Timed repeats per query, after one warm-up.
    pub repeats: usize,
    /// DuckDB's `SET threads TO`.
    pub duckdb_threads: u32,
    /// The venv holding duckdb.
    pub venv: PathBuf,
    /// The interpreter that creates the venv.
    pub python: String,
    /// Engines to run.
    pub engines: Vec<Engine>,
}

/// One query on one engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryRun {
    /// Short name (Q1 ...).
    pub name: String,
    /// The SQL.
    pub sql: String,
    /// The warm-up's wall time, seconds.
    pub warmup_s: Option<f64>,
    /// Every timed repeat, seconds.
    pub times_s: Vec<f64>,
    /// The last repeat's rows, as text (NULL as `NULL`).
    #[serde(default)]
    pub rows: Vec<Vec<String>>,
    /// The error, if the query failed.
    pub error: Option<String>,
}

impl QueryRun {
    /// Median of the timed repeats.
    pub fn median_s(&self) -> Option<f64> {
        median(&self.times_s)
    }
}

impl From<&crate::measure::QueryTiming> for QueryRun {
    /// The answer and times of a [`crate::measure::time_query`] measurement (its
    /// settings and router counters dropped), to compare with [`compare`].
    fn from(t: &crate::measure::QueryTiming) -> QueryRun {
        QueryRun {
            name: t.name.clone(),
            sql: t.sql.clone(),
            warmup_s: t.warmup_s,
            times_s: t.times_s.clone(),
            rows: t.rows.clone(),
            error: t.error.clone(),
        }
    }
}

/// What one engine did.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRun {
    /// Engine version (DuckDB's `__version__`, smrdb's git revision).
    pub version: String,
    /// Load time per table, seconds, in the workload's load order.
    pub load_s: Vec<(String, f64)>,
    /// The queries.
    pub queries: Vec<QueryRun>,
    /// smrdb: `EXPLAIN ANALYZE` of the first query (or its error).
    pub explain_analyze: Option<String>,
}

/// One comparison of the two engines' answers.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Query name.
    pub query: String,
    /// `agree`, `DIFFER` or `not compared`.
    pub outcome: String,
    /// What differed (or why it was not compared).
    pub detail: String,
}

/// Where and on what the run happened.
#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    /// Fabric.
    pub fabric: String,
    /// Nodes.
    pub nodes: u32,
    /// Tstores per node.
    pub tstores: u32,
    /// Customers rows.
    pub customers: u64,
    /// Purchases rows.
    pub purchases: u64,
    /// Seed.
    pub seed: u64,
    /// Timed repeats per query.
    pub repeats: usize,
    /// DuckDB threads.
    pub duckdb_threads: u32,
    /// Online CPUs of the host.
    pub host_cpus: usize,
    /// The customers CSV.
    pub customers_csv: PathBuf,
    /// The purchases CSV.
    pub purchases_csv: PathBuf,
    /// Seconds spent generating the CSVs (0 when reused).
    pub generate_s: f64,
    /// The CSVs were already there.
    pub data_reused: bool,
    /// `/proc/loadavg` before the engines ran (other work on the host skews times).
    pub loadavg_before: String,
    /// `/proc/loadavg` after both engines ran.
    pub loadavg_after: String,
}

/// One line of the side-by-side table.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Query name.
    pub query: String,
    /// smrdb's median, seconds.
    pub smrdb_median_s: Option<f64>,
    /// DuckDB's median, seconds.
    pub duckdb_median_s: Option<f64>,
    /// smrdb / DuckDB.
    pub ratio: Option<f64>,
    /// Rows returned.
    pub rows: Option<usize>,
}

/// What a query run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The environment.
    pub env: Environment,
    /// The workload: tables (CSV files, DDL, rows) and queries.
    pub workload: Workload,
    /// The side-by-side table.
    pub summary: Vec<Summary>,
    /// smrdb's run.
    pub smrdb: Option<EngineRun>,
    /// DuckDB's run.
    pub duckdb: Option<EngineRun>,
    /// Answer comparisons, per query.
    pub checks: Vec<Check>,
}

impl Report {
    /// Queries whose answers differ between the engines.
    pub fn mismatches(&self) -> Vec<&Check> {
        self.checks
            .iter()
            .filter(|c| c.outcome == "DIFFER")
            .collect()
    }

    /// Failed queries, as `engine name: error`.
    pub fn errors(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (engine, run) in [("smrdb", &self.smrdb), ("duckdb", &self.duckdb)] {
            for q in run.iter().flat_map(|r| r.queries.iter()) {
                if let Some(e) = &q.error {
                    v.push(format!("{engine} {}: {e}", q.name));
                }
            }
        }
        v
    }
}

fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

// ---------------------------------------------------------------------------------
// DuckDB

/// The default venv: `$XDG_CACHE_HOME/smrdb-bench/venv`, else
/// `~/.cache/smrdb-bench/venv`, else under the work directory.
pub fn default_venv(work_dir: &Path) -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(c) => c.join("smrdb-bench").join("venv"),
        None => work_dir.join("venv"),
    }
}

fn runs_ok(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian's python3-venv if we may (root, or password-less sudo).
fn apt_install_venv() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let sudo = !root && runs_ok(Command::new("sudo").args(["-n", "true"]));
    if !root && !sudo {
        return false;
    }
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        } else {
            Command::new("apt-get")
        };
        c.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("duckdb: installing python3-venv with apt-get");
    apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "python3-venv"])
}

/// Makes sure `venv` has duckdb, creating the venv with `python -m venv` (and
/// installing Debian's python3-venv when that is missing and we may) and running `pip
/// install duckdb` as needed; returns the venv's interpreter.
///
/// # Errors
/// `venv` exists and is not a venv, or the venv or duckdb cannot be installed.
pub fn ensure_duckdb(venv: &Path, python: &str) -> Result<PathBuf> {
    let py = venv.join("bin").join("python");
    if !py.is_file() || !runs_ok(Command::new(&py).args(["-c", "import pip"])) {
        // Never delete a directory that is not (the remains of) a venv.
        let is_venv = venv.join("pyvenv.cfg").is_file();
        let empty = std::fs::read_dir(venv).map_or(true, |mut d| d.next().is_none());
        if !is_venv && !empty {
            bail!(
                "{} exists and is not a Python venv: pass another --venv",
                venv.display()
            );
        }
        eprintln!("duckdb: creating venv {}", venv.display());
        let _ = std::fs::remove_dir_all(venv);
        let create = || {
            Command::new(python)
                .args(["-m", "venv"])
                .arg(venv)
                .stdin(Stdio::null())
                .output()
        };
        let out = create().with_context(|| format!("run `{} -m venv`", python))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(venv);
            let msg = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            // Debian's python3 without python3-venv: "ensurepip is not available".
            let retried = msg.contains("ensurepip")
                && apt_install_venv()
                && create().is_ok_and(|o| o.status.success());
            if !retried {
                bail!(
                    "`{} -m venv {}` failed: {}\n(on Debian/Ubuntu install the venv module: \
                     `sudo apt-get install python3-venv`; or pass --python with an interpreter \
                     that has it, or --engines smrdb to skip DuckDB)",
                    python,
                    venv.display(),
                    msg.trim()
                );
            }
        }
    }
    if !runs_ok(Command::new(&py).args(["-c", "import duckdb"])) {
        eprintln!("duckdb: pip install duckdb into {}", venv.display());
        let ok = Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "duckdb",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok || !runs_ok(Command::new(&py).args(["-c", "import duckdb"])) {
            bail!(
                "could not install duckdb into {} (`{} -m pip install duckdb` failed; is PyPI \
                 reachable?); --engines smrdb skips DuckDB",
                venv.display(),
                py.display()
            );
        }
    }
    Ok(py)
}

#[derive(Deserialize)]
struct DuckOut {
    duckdb_version: String,
    tables: Vec<DuckTable>,
    queries: Vec<DuckQuery>,
}

#[derive(Deserialize)]
struct DuckTable {
    name: String,
    load_s: f64,
    rows: u64,
}

#[derive(Deserialize)]
struct DuckQuery {
    name: String,
    sql: String,
    warmup_s: Option<f64>,
    times_s: Vec<f64>,
    rows: Vec<Vec<serde_json::Value>>,
    error: Option<String>,
}

fn json_cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "NULL".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs `w` on DuckDB: makes sure the venv has duckdb ([`ensure_duckdb`]), writes the
/// driver script beside the workload's CSVs, and runs it: every table created with
/// its [`workload::Table::duckdb_ddl`] and filled from its CSV by `read_csv` with the
/// table's column types, `SET threads TO threads`, every query's
/// [`workload::Query::duckdb_sql`] once as a warm-up then `repeats` times. The rows
/// are the last repeat's, as text (NULL as `NULL`, dates `YYYY-MM-DD`). Query errors
/// are recorded per query, not returned.
///
/// # Errors
/// DuckDB cannot be installed, the script fails or prints something unexpected, or a
/// table's row count differs from its CSV's.
pub fn run_duckdb(
    w: &Workload,
    repeats: usize,
    threads: u32,
    venv: &Path,
    python: &str,
) -> Result<EngineRun> {
    let py = ensure_duckdb(venv, python)?;
    let dir = w
        .tables
        .first()
        .and_then(|t| t.csv.parent())
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let pid = std::process::id();
    let script = dir.join("duckdb_bench.py");
    let tmp = dir.join(format!("duckdb_bench.py.tmp{pid}"));
    std::fs::write(&tmp, DUCKDB_SCRIPT)
        .and_then(|()| std::fs::rename(&tmp, &script))
        .with_context(|| format!("write {}", script.display()))?;
    let spec = dir.join(format!("duckdb-spec-{pid}.json"));
    let tables = w
        .tables
        .iter()
        .map(|t| serde_json::json!({ "name": t.name, "ddl": t.duckdb_ddl, "csv": t.csv }))
        .collect::<Vec<_>>();
    let queries = w
        .queries
        .iter()
        .map(|q| serde_json::json!({ "name": q.name, "sql": q.duckdb_sql }))
        .collect::<Vec<_>>();
    std::fs::write(
        &spec,
        serde_json::to_string_pretty(&serde_json::json!({
            "threads": threads,
            "repeats": repeats,
            "tables": tables,
            "queries": queries,
        }))?,
    )
    .with_context(|| format!("write {}", spec.display()))?;
    eprintln!("duckdb: running {} (threads {threads})", script.display());
    let out = Command::new(&py)
        .arg(&script)
        .arg(&spec)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("run the DuckDB script");
    let _ = std::fs::remove_file(&spec);
    let out = out?;
    if !out.status.success() {
        bail!("the DuckDB script failed ({})", out.status);
    }
    let d: DuckOut = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "DuckDB script output is not the expected JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    for t in &w.tables {
        let got = d.tables.iter().find(|x| x.name == t.name).map(|x| x.rows);
        anyhow::ensure!(
            got == Some(t.rows),
            "DuckDB loaded {} rows into {}, the file holds {}",
            got.map_or("no".into(), |n| n.to_string()),
            t.name,
            t.rows
        );
    }
    Ok(EngineRun {
        version: format!("DuckDB {}", d.duckdb_version),
        load_s: d.tables.into_iter().map(|t| (t.name, t.load_s)).collect(),
        queries: d
            .queries
            .into_iter()
            .map(|q| QueryRun {
                name: q.name,
                sql: q.sql,
                warmup_s: q.warmup_s,
                times_s: q.times_s,
                rows: q
                    .rows
                    .iter()
                    .map(|r| r.iter().map(json_cell).collect())
                    .collect(),
                error: q.error,
            })
            .collect(),
        explain_analyze: None,
    })
}

// ---------------------------------------------------------------------------------
// smrdb

/// smrdb's git revision (`smrdb 1a2b3c4`, `-dirty` when the work tree has changes).
pub fn smrdb_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(sha) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            format!("smrdb {sha}{}", if dirty { "-dirty" } else { "" })
        }
        None => "smrdb (unknown revision)".into(),
    }
}

/// Runs every query of `w` (its smrdb [`workload::Query::sql`]) on the smrdb behind
/// `c`, whose tables are loaded ([`workload::load_smrdb`]): once as a warm-up, then
/// `repeats` times, timed at the client around the simple-protocol query with every
/// row received. The rows are the last repeat's, as text (NULL as `NULL`). A failing
/// query is recorded (with the server's message) and the next one runs.
pub fn run_smrdb_queries(c: &mut postgres::Client, w: &Workload, repeats: usize) -> Vec<QueryRun> {
    let mut runs = Vec::new();
    for query in &w.queries {
        let (name, sql) = (&query.name, &query.sql);
        let mut q = QueryRun {
            name: name.clone(),
            sql: sql.clone(),
            warmup_s: None,
            times_s: Vec::new(),
            rows: Vec::new(),
            error: None,
        };
        let t = Instant::now();
        match pg_rows(c, sql) {
            Err(e) => {
                eprintln!("smrdb: {name} failed: {e}");
                q.error = Some(e);
            }
            Ok(rows) => {
                q.warmup_s = Some(t.elapsed().as_secs_f64());
                q.rows = rows;
                for _ in 0..repeats {
                    let t = Instant::now();
                    match pg_rows(c, sql) {
                        Ok(rows) => {
                            q.times_s.push(t.elapsed().as_secs_f64());
                            q.rows = rows;
                        }
                        Err(e) => {
                            eprintln!("smrdb: {name} failed on a repeat: {e}");
                            q.error = Some(e);
                            break;
                        }
                    }
                }
                eprintln!("smrdb: {name} done");
            }
        }
        runs.push(q);
    }
    runs
}

fn run_smrdb(o: &Options, w: &Workload) -> Result<EngineRun> {
    let spec = ClusterSpec::new(&o.fabric, o.nodes, o.tstores);
    eprintln!("smrdb: starting a {} cluster", spec.label());
    let logs = o.work_dir.join("logs");
    let cluster = Cluster::start_local(&spec, &logs)?;
    let mut c = cluster.client()?;
    let load_s = workload::load_smrdb(&mut c, w)?;
    let runs = run_smrdb_queries(&mut c, w, o.repeats);
    let explain =
        w.queries.first().map(
            |q| match pg_rows(&mut c, &format!("EXPLAIN ANALYZE {}", q.sql)) {
                Ok(rows) => rows
                    .iter()
                    .map(|r| r.join(" | "))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(e) => format!("error: {e}"),
            },
        );
    Ok(EngineRun {
        version: smrdb_version(),
        load_s,
        queries: runs,
        explain_analyze: explain,
    })
}

// ---------------------------------------------------------------------------------
// Comparison

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "t" | "true" => Some(true),
        "f" | "false" => Some(false),
        _ => None,
    }
}

/// A cell as a number, when it is one (`nan`, `inf` included).
fn number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok()
}

/// A cell without trailing blanks: a CHAR(n) value comes back blank-padded from one
/// engine (PostgreSQL's semantics) and unpadded from another (DuckDB has no padded
/// CHAR), and SQL compares CHAR(n) values ignoring trailing blanks anyway.
fn unpad(s: &str) -> &str {
    s.trim_end_matches(' ')
}

/// Same value: equal text (trailing blanks ignored, see [`unpad`]), equal booleans, or
/// numbers within a relative [`REL_TOL`].
fn cells_agree(a: &str, b: &str) -> bool {
    let (a, b) = (unpad(a), unpad(b));
    if a == b {
        return true;
    }
    if let (Some(x), Some(y)) = (number(a), number(b)) {
        return x == y
            || (x.is_nan() && y.is_nan())
            || (x - y).abs() <= REL_TOL * x.abs().max(y.abs()).max(1.0);
    }
    matches!((parse_bool(a), parse_bool(b)), (Some(x), Some(y)) if x == y)
}

fn rows_agree(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| cells_agree(x, y))
}

/// A total order on cells: numbers (numerically) before booleans before text
/// (trailing blanks ignored).
fn cell_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (unpad(a), unpad(b));
    let rank = |s: &str| match (number(s), parse_bool(s)) {
        (Some(x), _) => (0, Some(x), None),
        (None, Some(v)) => (1, None, Some(v)),
        (None, None) => (2, None, None),
    };
    let (ra, rb) = (rank(a), rank(b));
    ra.0.cmp(&rb.0)
        .then_with(|| match (ra.1, rb.1) {
            (Some(x), Some(y)) => x.total_cmp(&y),
            _ => ra.2.cmp(&rb.2),
        })
        .then_with(|| if ra.0 == 2 { a.cmp(b) } else { Ordering::Equal })
}

fn row_cmp(a: &[String], b: &[String]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| cell_cmp(x, y))
        .find(|o| o.is_ne())
        .unwrap_or_else(|| a.len().cmp(&b.len()))
}

/// `sql` with everything inside quotes, parentheses or comments (`--` to the end of
/// the line, `/* */`) blanked out and letters lower case, byte for byte the same
/// length: top-level keywords and commas are found in it at the positions they have
/// in `sql`.
fn top_level(sql: &str) -> Vec<u8> {
    #[derive(PartialEq)]
    enum Comment {
        No,
        Line,
        Block,
    }
    let bytes = sql.as_bytes();
    let mut out = Vec::with_capacity(sql.len());
    let (mut depth, mut quote) = (0usize, None::<u8>);
    let mut comment = Comment::No;
    // The '/' of a closing "*/".
    let mut skip = false;
    for (i, &b) in bytes.iter().enumerate() {
        let next = bytes.get(i + 1).copied();
        if skip {
            skip = false;
            out.push(b' ');
            continue;
        }
        match comment {
            Comment::Line => {
                if b == b'\n' {
                    comment = Comment::No;
                    out.push(b'\n');
                } else {
                    out.push(b' ');
                }
                continue;
            }
            Comment::Block => {
                if b == b'*' && next == Some(b'/') {
                    comment = Comment::No;
                    skip = true;
                }
                out.push(b' ');
                continue;
            }
            Comment::No => {}
        }
        if quote.is_none() && b == b'-' && next == Some(b'-') {
            comment = Comment::Line;
            out.push(b' ');
            continue;
        }
        if quote.is_none() && b == b'/' && next == Some(b'*') {
            comment = Comment::Block;
            out.push(b' ');
            continue;
        }
        let keep = match quote {
            Some(q) => {
                if b == q {
                    quote = None;
                }
                false
            }
            None => match b {
                b'\'' | b'"' => {
                    quote = Some(b);
                    false
                }
                b'(' => {
                    depth += 1;
                    false
                }
                b')' => {
                    depth = depth.saturating_sub(1);
                    false
                }
                _ => depth == 0,
            },
        };
        out.push(if keep { b.to_ascii_lowercase() } else { b' ' });
    }
    out
}

/// Byte offsets of the top-level word `word` (lower case) in the masked `m`.
fn find_words(m: &[u8], word: &str) -> Vec<usize> {
    let w = word.as_bytes();
    let is_id = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'.';
    (0..m.len().saturating_sub(w.len() - 1))
        .filter(|&i| {
            &m[i..i + w.len()] == w
                && (i == 0 || !is_id(m[i - 1]))
                && m.get(i + w.len()).is_none_or(|&b| !is_id(b))
        })
        .collect()
}

/// Splits `sql[range]` at its top-level commas.
fn split_top<'a>(sql: &'a str, m: &[u8], start: usize, end: usize) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut from = start;
    for i in start..end {
        if m[i] == b',' {
            out.push(sql[from..i].trim());
            from = i + 1;
        }
    }
    out.push(sql[from..end].trim());
    out
}

/// Lower case without white space, for comparing expressions' text.
fn norm(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The ORDER BY of a query, as far as the answers' comparison needs it.
#[derive(Debug, PartialEq)]
struct OrderBy {
    /// 0-based output columns of the ORDER BY keys; `None` when a key is not an
    /// output column (or could not be matched to one).
    keys: Option<Vec<usize>>,
    /// The query has a LIMIT.
    limit: bool,
    /// The query has an OFFSET.
    offset: bool,
}

/// The top-level ORDER BY of `sql` (not one inside parentheses, like `WITHIN GROUP
/// (ORDER BY x)`), with each key resolved to an output column: an ordinal, an output
/// alias, the same expression as a select item, or a column whose name (without its
/// qualifier) matches a select item's.
fn order_by(sql: &str) -> Option<OrderBy> {
    let m = top_level(sql);
    let ws = |from: usize| {
        m[from..]
            .iter()
            .take_while(|b| b.is_ascii_whitespace())
            .count()
    };
    // The last top-level "order" followed by white space and the word "by".
    let by_end = find_words(&m, "order").into_iter().rev().find_map(|i| {
        let gap = ws(i + 5);
        let at = i + 5 + gap;
        (gap > 0 && find_words(&m, "by").contains(&at)).then_some(at + 2)
    })?;
    let limit = find_words(&m, "limit").into_iter().find(|&i| i > by_end);
    let offset = find_words(&m, "offset").into_iter().find(|&i| i > by_end);
    let end = [limit, offset]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(sql.len());
    let end = sql[..end]
        .trim_end()
        .trim_end_matches(';')
        .len()
        .max(by_end);
    let items = split_top(sql, &m, by_end, end);
    // The select list: after SELECT [DISTINCT], up to the first top-level FROM, as
    // (normalized expression, normalized alias).
    let select = find_words(&m, "select").into_iter().next();
    let from = select.and_then(|s| find_words(&m, "from").into_iter().find(|&f| f > s));
    let outputs: Vec<(String, Option<String>)> = match (select, from) {
        (Some(s), Some(f)) => {
            let mut s = s + "select".len();
            let distinct = s + ws(s);
            if find_words(&m, "distinct").contains(&distinct) {
                s = distinct + "distinct".len();
            }
            split_top(sql, &m, s, f)
                .into_iter()
                .map(|item| match find_words(&top_level(item), "as").last() {
                    Some(&a) => (
                        norm(&item[..a]),
                        Some(norm(&item[a + 2..]).trim_matches('"').to_string()),
                    ),
                    None => (norm(item), None),
                })
                .collect()
        }
        _ => Vec::new(),
    };
    let is_path = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    };
    let last_part = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let resolve = |key: &str| -> Option<usize> {
        // Drop NULLS FIRST / LAST, then ASC / DESC.
        let lower = key.to_lowercase();
        let mut words: Vec<&str> = lower.split_whitespace().collect();
        if words.len() > 2
            && words[words.len() - 2] == "nulls"
            && matches!(words[words.len() - 1], "first" | "last")
        {
            words.truncate(words.len() - 2);
        }
        if words.len() > 1 && matches!(words[words.len() - 1], "asc" | "desc") {
            words.pop();
        }
        let k = norm(&words.concat());
        if let Ok(n) = k.parse::<usize>() {
            return (1..=outputs.len()).contains(&n).then(|| n - 1);
        }
        if let Some(i) = outputs
            .iter()
            .position(|(_, a)| a.as_deref() == Some(k.as_str()))
            .or_else(|| outputs.iter().position(|(e, _)| *e == k))
        {
            return Some(i);
        }
        if !is_path(&k) {
            return None;
        }
        // `o_orderdate` for `o.o_orderdate` (and back): only when unambiguous.
        let mut hits = outputs
            .iter()
            .enumerate()
            .filter(|(_, (e, _))| is_path(e) && last_part(e) == last_part(&k));
        match (hits.next(), hits.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        }
    };
    Some(OrderBy {
        keys: items.iter().map(|k| resolve(k)).collect(),
        limit: limit.is_some(),
        offset: offset.is_some(),
    })
}

/// Compares one query's answers, smrdb's `s` with DuckDB's `d`, by the rules of
/// [`compare_answers`]; the check is named after `s`.
pub fn compare(s: &QueryRun, d: &QueryRun) -> Check {
    let check = |outcome: &str, detail: String| Check {
        query: s.name.clone(),
        outcome: outcome.into(),
        detail,
    };
    if s.error.is_some() || d.error.is_some() || s.times_s.is_empty() || d.times_s.is_empty() {
        return check("not compared", "a side failed".into());
    }
    if s.rows.len() != d.rows.len() {
        return check(
            "DIFFER",
            format!(
                "smrdb returned {} rows, DuckDB {}",
                s.rows.len(),
                d.rows.len()
            ),
        );
    }
    let differ = |i: usize, a: &[String], b: &[String]| {
        check(
            "DIFFER",
            format!(
                "row {i}: smrdb [{}] vs DuckDB [{}]",
                a.join(", "),
                b.join(", ")
            ),
        )
    };
    // Compares two equally long row sets as multisets; the first mismatch.
    let same_set = |a: &[Vec<String>], b: &[Vec<String>]| -> Option<(Vec<String>, Vec<String>)> {
        let mut x = a.to_vec();
        let mut y = b.to_vec();
        x.sort_by(|p, q| row_cmp(p, q));
        y.sort_by(|p, q| row_cmp(p, q));
        x.into_iter().zip(y).find(|(p, q)| !rows_agree(p, q))
    };
    let n = s.rows.len();
    match order_by(&s.sql) {
        None => match same_set(&s.rows, &d.rows) {
            None => check("agree", format!("{n} rows (unordered)")),
            Some((a, b)) => check(
                "DIFFER",
                format!(
                    "(sorted) smrdb [{}] vs DuckDB [{}]",
                    a.join(", "),
                    b.join(", ")
                ),
            ),
        },
        Some(OrderBy { keys: None, .. }) => {
            for (i, (a, b)) in s.rows.iter().zip(&d.rows).enumerate() {
                if !rows_agree(a, b) {
                    return differ(i, a, b);
                }
            }
            check("agree", format!("{n} rows (in order)"))
        }
        Some(OrderBy {
            keys: Some(keys),
            limit,
            offset,
        }) => {
            let key_agree = |a: &[String], b: &[String]| {
                keys.iter().all(|&k| match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => cells_agree(x, y),
                    _ => false,
                })
            };
            // Runs of rows tied on the ORDER BY keys, in smrdb's answer; DuckDB's rows
            // at the same positions must have the same keys and, as a multiset, be the
            // same rows, except in a run the LIMIT (or OFFSET) may have cut, where
            // either engine may have kept different members of the tie.
            let mut ties_permuted = 0usize;
            let mut start = 0;
            while start < n {
                let mut end = start + 1;
                while end < n && key_agree(&s.rows[start], &s.rows[end]) {
                    end += 1;
                }
                for i in start..end {
                    if !key_agree(&s.rows[start], &d.rows[i]) {
                        return differ(i, &s.rows[i], &d.rows[i]);
                    }
                }
                let cut = (limit && end == n) || (offset && start == 0);
                let (a, b) = (&s.rows[start..end], &d.rows[start..end]);
                if !a.iter().zip(b).all(|(p, q)| rows_agree(p, q)) {
                    match same_set(a, b) {
                        None => ties_permuted += 1,
                        Some(_) if cut => ties_permuted += 1,
                        Some((p, q)) => {
                            return check(
                                "DIFFER",
                                format!(
                                    "rows {start}..{end} (tied on the ORDER BY keys): smrdb \
                                     has [{}] where DuckDB has [{}]",
                                    p.join(", "),
                                    q.join(", ")
                                ),
                            )
                        }
                    }
                }
                start = end;
            }
            let note = if ties_permuted > 0 {
                format!(", {ties_permuted} runs of ORDER BY ties in another order")
            } else {
                String::new()
            };
            check("agree", format!("{n} rows (in order{note})"))
        }
    }
}

/// Compares the answers of the same queries on smrdb and DuckDB, pairwise in order
/// (`smrdb[i]` with `duckdb[i]`, named after the smrdb side).
///
/// Cells agree when their text is equal, they are the same boolean (`t` / `true`) or
/// numbers within a relative 1e-6 (float sums depend on the summation order). A query
/// without a top-level ORDER BY must return the same rows as a multiset. With an ORDER
/// BY whose keys are all output columns (an ordinal, an output alias, or the same
/// expression or column as a select item), the rows must come in the same order
/// except within runs of rows tied on those keys, which may be in any order (the SQL
/// leaves it open); with a LIMIT the last run may even hold different rows (and the
/// first with an OFFSET), since the engines may cut a tie in different places. With
/// keys that are not output columns the rows must come in exactly the same order.
/// Outcomes: `agree`, `DIFFER` (with the first difference), or `not compared` (a side
/// failed or is missing).
pub fn compare_answers(smrdb: &[QueryRun], duckdb: &[QueryRun]) -> Vec<Check> {
    let mut out = Vec::new();
    for i in 0..smrdb.len().max(duckdb.len()) {
        match (smrdb.get(i), duckdb.get(i)) {
            (Some(s), Some(d)) if s.name == d.name => out.push(compare(s, d)),
            (Some(s), Some(d)) => out.push(Check {
                query: s.name.clone(),
                outcome: "not compared".into(),
                detail: format!("smrdb ran {} where DuckDB ran {}", s.name, d.name),
            }),
            (Some(q), None) | (None, Some(q)) => out.push(Check {
                query: q.name.clone(),
                outcome: "not compared".into(),
                detail: "only one engine ran it".into(),
            }),
            (None, None) => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------

/// Runs the benchmark. Query errors are recorded in the report (see
/// [`Report::errors`]), not returned.
///
/// # Errors
/// Data generation, a DuckDB that cannot be installed, a cluster that does not start
/// or a load that fails.
pub fn run(o: &Options) -> Result<Report> {
    anyhow::ensure!(o.customers > 0 && o.purchases > 0, "empty tables");
    let w = workload::example(o.customers, o.purchases, o.seed, &o.work_dir)?;
    let csv = |name: &str| {
        w.table(name)
            .map(|t| t.csv.clone())
            .with_context(|| format!("the example has no {name} table"))
    };
    let (customers, purchases) = (csv("customers")?, csv("purchases")?);
    eprintln!(
        "data: {} {} and {} ({:.1} s)",
        if w.reused { "reusing" } else { "generated" },
        customers.display(),
        purchases.display(),
        w.generate_s
    );
    let loadavg_before = loadavg();
    let duckdb = if o.engines.contains(&Engine::Duckdb) {
        Some(run_duckdb(
            &w,
            o.repeats,
            o.duckdb_threads,
            &o.venv,
            &o.python,
        )?)
    } else {
        None
    };
    let smrdb = if o.engines.contains(&Engine::Smrdb) {
        Some(run_smrdb(o, &w)?)
    } else {
        None
    };
    let checks = match (&smrdb, &duckdb) {
        (Some(s), Some(d)) => compare_answers(&s.queries, &d.queries),
        _ => Vec::new(),
    };
    let summary = summarize(&w, smrdb.as_ref(), duckdb.as_ref());
    Ok(Report {
        summary,
        env: Environment {
            fabric: o.fabric.clone(),
            nodes: o.nodes,
            tstores: o.tstores,
            customers: o.customers,
            purchases: o.purchases,
            seed: o.seed,
            repeats: o.repeats,
            duckdb_threads: o.duckdb_threads,
            host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            customers_csv: customers,
            purchases_csv: purchases,
            generate_s: w.generate_s,
            data_reused: w.reused,
            loadavg_before,
            loadavg_after: loadavg(),
        },
        workload: w,
        smrdb,
        duckdb,
        checks,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ok(q: &QueryRun) -> bool {
    q.error.is_none() && !q.times_s.is_empty()
}

fn summarize(w: &Workload, smrdb: Option<&EngineRun>, duckdb: Option<&EngineRun>) -> Vec<Summary> {
    w.queries
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let sq = smrdb.and_then(|x| x.queries.get(i)).filter(|q| ok(q));
            let dq = duckdb.and_then(|x| x.queries.get(i)).filter(|q| ok(q));
            let sm = sq.and_then(QueryRun::median_s);
            let dm = dq.and_then(QueryRun::median_s);
            Summary {
                query: q.name.clone(),
                smrdb_median_s: sm,
                duckdb_median_s: dm,
                ratio: match (sm, dm) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                },
                rows: sq.or(dq).map(|q| q.rows.len()),
            }
        })
        .collect()
}

fn secs(x: Option<f64>) -> String {
    x.map_or("-".into(), |s| format!("{s:.4}"))
}

/// The report as Markdown: the side-by-side table, the answers check, load times,
/// the SQL and smrdb's `EXPLAIN ANALYZE` of Q1.
pub fn markdown(r: &Report) -> String {
    let e = &r.env;
    let mut s = format!(
        "### query: customers {} x purchases {}; smrdb {}x{} on `{}` vs DuckDB (threads {})\n\n",
        e.customers, e.purchases, e.nodes, e.tstores, e.fabric, e.duckdb_threads
    );
    s += &format!(
        "{}; {}; host CPUs {} (load average {} before, {} after); median of {} repeats after one warm-up, seed {}\n\n",
        r.smrdb
            .as_ref()
            .map_or("smrdb not run".into(), |x| x.version.clone()),
        r.duckdb
            .as_ref()
            .map_or("DuckDB not run".into(), |x| x.version.clone()),
        e.host_cpus,
        e.loadavg_before,
        e.loadavg_after,
        e.repeats,
        e.seed
    );
    s += "| query | smrdb median s | DuckDB median s | smrdb/DuckDB | rows |\n";
    s += "|---|---:|---:|---:|---:|\n";
    for (i, l) in r.summary.iter().enumerate() {
        let failed = |run: &Option<EngineRun>| {
            run.as_ref()
                .and_then(|x| x.queries.get(i))
                .is_some_and(|q| q.error.is_some())
        };
        let cell = |run: &Option<EngineRun>, m: Option<f64>| {
            if failed(run) {
                "error".to_string()
            } else {
                secs(m)
            }
        };
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            l.query,
            cell(&r.smrdb, l.smrdb_median_s),
            cell(&r.duckdb, l.duckdb_median_s),
            l.ratio.map_or("-".into(), |x| format!("{x:.2}")),
            l.rows.map_or("-".into(), |x| x.to_string())
        );
    }
    s += "\n";
    if !r.checks.is_empty() {
        let bad = r.mismatches();
        if bad.is_empty() {
            let agree = r.checks.iter().filter(|c| c.outcome == "agree").count();
            s += &format!(
                "answers: {agree} of {} queries agree between smrdb and DuckDB{}\n\n",
                r.checks.len(),
                match agree {
                    0 => " (none compared: a side failed on every query)",
                    a if a < r.checks.len() => " (the others were not compared: a side failed)",
                    _ => "",
                }
            );
        } else {
            s += "**ANSWERS DIFFER**:\n\n";
            for c in bad {
                s += &format!("* {}: {}\n", c.query, c.detail);
            }
            s += "\n";
        }
    }
    for (label, run) in [("smrdb COPY", &r.smrdb), ("DuckDB read_csv", &r.duckdb)] {
        if let Some(x) = run {
            let parts = x
                .load_s
                .iter()
                .map(|(t, v)| format!("{t} {v:.2} s"))
                .collect::<Vec<_>>();
            s += &format!(
                "load, {label}: {} (total {:.2} s)\n\n",
                parts.join(", "),
                x.load_s.iter().map(|(_, v)| v).sum::<f64>()
            );
        }
    }
    let errors = r.errors();
    if !errors.is_empty() {
        s += "errors:\n\n";
        for e in &errors {
            s += &format!("* {e}\n");
        }
        s += "\n";
    }
    s += "queries (rows = rows returned; every answer is in the JSON):\n\n";
    for (i, q) in r.workload.queries.iter().enumerate() {
        let (name, sql) = (&q.name, &q.sql);
        // One-cell answers (the counts) are shown; DuckDB's when it ran, else smrdb's.
        let answer = [&r.duckdb, &r.smrdb]
            .into_iter()
            .filter_map(|run| run.as_ref().and_then(|x| x.queries.get(i)))
            .find(|q| ok(q))
            .and_then(|q| match q.rows.as_slice() {
                [row] if row.len() == 1 => Some(format!(" = {}", row[0])),
                _ => None,
            })
            .unwrap_or_default();
        s += &format!("* {name}{answer}: `{sql}`\n");
    }
    s += "\n";
    if let Some(x) = r.smrdb.as_ref().and_then(|x| x.explain_analyze.as_ref()) {
        s += &format!("smrdb `EXPLAIN ANALYZE` of Q1:\n\n```text\n{x}\n```\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells() {
        assert!(cells_agree("3", "3"));
        assert!(cells_agree("1234567.891", "1234567.8910000001"));
        assert!(cells_agree("1234567.891", "1234567.9"));
        assert!(!cells_agree("1234567.891", "1234580.891"));
        assert!(!cells_agree("0.5", "0.6"));
        assert!(cells_agree("t", "true"));
        assert!(!cells_agree("abc", "abd"));
        assert!(cells_agree("1995-03-15", "1995-03-15"));
        assert!(!cells_agree("NULL", "0"));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    fn run(sql: &str, rows: &[&[&str]]) -> QueryRun {
        QueryRun {
            name: "Q".into(),
            sql: sql.into(),
            warmup_s: Some(0.1),
            times_s: vec![0.1],
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| c.to_string()).collect())
                .collect(),
            error: None,
        }
    }

    #[test]
    fn compare_rows() {
        let ordered = "SELECT a, b, c FROM t ORDER BY a";
        let a = run(ordered, &[&["1", "10", "224194.51"], &["2", "3", "0.5"]]);
        assert_eq!(compare(&a, &a).outcome, "agree");
        let b = run(
            ordered,
            &[&["1", "10", "224194.51000000002"], &["2", "3", "0.5"]],
        );
        assert_eq!(compare(&a, &b).outcome, "agree");
        let c = run(ordered, &[&["1", "10", "224194.51"], &["2", "4", "0.5"]]);
        assert_eq!(compare(&a, &c).outcome, "DIFFER");
        let d = run(ordered, &[&["1", "10", "224194.51"]]);
        assert_eq!(compare(&a, &d).outcome, "DIFFER");
        let mut e = run(ordered, &[]);
        e.error = Some("ERROR 0A000: not supported: joins".into());
        assert_eq!(compare(&e, &a).outcome, "not compared");
        // Out of order under an ORDER BY: differ; without one: agree.
        let swapped = run(ordered, &[&["2", "3", "0.5"], &["1", "10", "224194.51"]]);
        assert_eq!(compare(&a, &swapped).outcome, "DIFFER");
        let mut u = a.clone();
        u.sql = "SELECT a, b, c FROM t".into();
        let mut v = swapped.clone();
        v.sql = u.sql.clone();
        assert_eq!(compare(&u, &v).outcome, "agree");
        let mut w = c.clone();
        w.sql = u.sql.clone();
        assert_eq!(compare(&u, &w).outcome, "DIFFER");
    }

    #[test]
    fn ties_on_the_order_keys_may_come_in_any_order() {
        let sql = "SELECT g, x FROM t ORDER BY g DESC";
        let a = run(sql, &[&["2", "a"], &["1", "b"], &["1", "c"], &["0", "d"]]);
        let b = run(sql, &[&["2", "a"], &["1", "c"], &["1", "b"], &["0", "d"]]);
        assert_eq!(compare(&a, &b).outcome, "agree");
        // Not a tie: the keys differ.
        let c = run(sql, &[&["2", "a"], &["0", "d"], &["1", "c"], &["1", "b"]]);
        assert_eq!(compare(&a, &c).outcome, "DIFFER");
        // A tie with different members: differ, unless a LIMIT cut that tie.
        let d = run(sql, &[&["2", "a"], &["1", "b"], &["1", "e"], &["0", "d"]]);
        assert_eq!(compare(&a, &d).outcome, "DIFFER");
        let lim = "SELECT g, x FROM t ORDER BY g DESC LIMIT 3";
        let e = run(lim, &[&["2", "a"], &["1", "b"], &["1", "c"]]);
        let f = run(lim, &[&["2", "a"], &["1", "e"], &["1", "b"]]);
        assert_eq!(compare(&e, &f).outcome, "agree");
        let g = run(lim, &[&["2", "z"], &["1", "b"], &["1", "c"]]);
        assert_eq!(compare(&e, &g).outcome, "DIFFER");
        // Keys that are not output columns: exact order.
        let hidden = "SELECT x FROM t ORDER BY g";
        let h = run(hidden, &[&["a"], &["b"]]);
        let i = run(hidden, &[&["b"], &["a"]]);
        assert_eq!(compare(&h, &i).outcome, "DIFFER");
    }

    #[test]
    fn order_by_keys_resolve_to_output_columns() {
        let keys = |sql: &str| order_by(sql).and_then(|o| o.keys);
        assert_eq!(order_by("SELECT count(*) FROM t"), None);
        assert_eq!(
            keys("SELECT DISTINCT c.region, p.item FROM p JOIN c ON p.c = c.id ORDER BY 1, 2 LIMIT 20"),
            Some(vec![0, 1])
        );
        assert_eq!(
            keys("SELECT c.region, count(*), sum(p.amount) FROM p, c GROUP BY c.region ORDER BY c.region"),
            Some(vec![0])
        );
        let q3 = "SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, \
                  o_orderdate, o_shippriority FROM customer, orders, lineitem \
                  WHERE c_mktsegment = 'BUILDING' GROUP BY l_orderkey, o_orderdate, \
                  o_shippriority ORDER BY revenue DESC, o_orderdate LIMIT 10";
        let o = order_by(q3).unwrap();
        assert_eq!(o.keys, Some(vec![1, 2]));
        assert!(o.limit && !o.offset);
        assert_eq!(
            keys("SELECT o.amount + c.tier AS s, o.id FROM o, c ORDER BY o.amount + c.tier DESC NULLS FIRST, id"),
            Some(vec![0, 1])
        );
        // An ORDER BY inside parentheses is not the query's.
        assert_eq!(
            order_by("SELECT mode() WITHIN GROUP (ORDER BY x) FROM t"),
            None
        );
        assert_eq!(keys("SELECT x FROM t ORDER BY y"), None);
        assert_eq!(keys("SELECT x FROM t ORDER BY 2"), None);
        let off = order_by("select a from t order by a limit 5 offset 10;").unwrap();
        assert_eq!(off.keys, Some(vec![0]));
        assert!(off.limit && off.offset);
        // Words inside string literals are not keywords.
        assert_eq!(
            keys("SELECT a FROM t WHERE s = 'order by b' ORDER BY a"),
            Some(vec![0])
        );
    }

    /// A run of `sql` with `rows` named Q (what [`compare`] sees of one engine).
    fn tpch_run(sql: &str, rows: &[&[&str]]) -> QueryRun {
        run(sql, rows)
    }

    #[test]
    fn tpch_answers_equal_up_to_decimal_text_and_float_noise() {
        // Q1's shape: DECIMAL sums as exact text on one side, DOUBLE averages on the
        // other; CHAR(1) flags padded or not.
        let sql = "-- TPC-H Q1: the order by in this comment is not the query's
                   select l_returnflag, l_linestatus, sum(l_quantity) as sum_qty,                    avg(l_discount) as avg_disc, count(*) as count_order from lineitem                    group by l_returnflag, l_linestatus order by l_returnflag, l_linestatus;";
        let a = tpch_run(
            sql,
            &[
                &["A", "F", "380456.00", "0.050093", "14876"],
                &["N", "O", "1500.00", "0.04997714285714285", "7"],
            ],
        );
        let b = tpch_run(
            sql,
            &[
                &["A", "F", "380456", "0.05009300000000001", "14876"],
                &["N", "O", "1500.0", "0.049977142857142857142857", "7"],
            ],
        );
        assert_eq!(compare(&a, &b).outcome, "agree");
        assert_eq!(order_by(sql).unwrap().keys, Some(vec![0, 1]));
    }

    #[test]
    fn tpch_answers_that_differ() {
        let sql = "select n_name, sum(x) as revenue from t group by n_name order by revenue desc";
        let a = tpch_run(sql, &[&["JAPAN", "100.00"], &["CHINA", "50.00"]]);
        // A value off by more than the tolerance.
        let b = tpch_run(sql, &[&["JAPAN", "100.00"], &["CHINA", "50.01"]]);
        let c = compare(&a, &b);
        assert_eq!(c.outcome, "DIFFER");
        assert!(c.detail.contains("50.01"), "{}", c.detail);
        // A row missing.
        let b = tpch_run(sql, &[&["JAPAN", "100.00"]]);
        let c = compare(&a, &b);
        assert_eq!(c.outcome, "DIFFER");
        assert_eq!(c.detail, "smrdb returned 2 rows, DuckDB 1");
        // Another text.
        let b = tpch_run(sql, &[&["JAPAN", "100.00"], &["INDIA", "50.00"]]);
        assert_eq!(compare(&a, &b).outcome, "DIFFER");
        // The same rows in the wrong order.
        let b = tpch_run(sql, &[&["CHINA", "50.00"], &["JAPAN", "100.00"]]);
        assert_eq!(compare(&a, &b).outcome, "DIFFER");
        // An empty answer against a non-empty one.
        let b = tpch_run(sql, &[]);
        assert_eq!(compare(&a, &b).outcome, "DIFFER");
        // Empty on both sides agrees.
        let e = tpch_run(sql, &[]);
        assert_eq!(compare(&e, &b).outcome, "agree");
    }

    #[test]
    fn tpch_padded_char_values_agree_with_unpadded_ones() {
        // Q7's shape: CHAR(25) nation names, blank-padded by a PostgreSQL-like engine.
        let sql = "select supp_nation, cust_nation, l_year, sum(volume) as revenue                    from shipping group by supp_nation, cust_nation, l_year                    order by supp_nation, cust_nation, l_year";
        let pad = |s: &str| format!("{s:<25}");
        let (fr, de) = (pad("FRANCE"), pad("GERMANY"));
        let a = tpch_run(
            sql,
            &[
                &[&fr, &de, "1995", "4637235.15"],
                &[&fr, &de, "1996", "5224779.57"],
                &[&de, &fr, "1995", "6232818.70"],
            ],
        );
        let b = tpch_run(
            sql,
            &[
                &["FRANCE", "GERMANY", "1995", "4637235.15"],
                &["FRANCE", "GERMANY", "1996", "5224779.57"],
                &["GERMANY", "FRANCE", "1995", "6232818.70"],
            ],
        );
        assert_eq!(compare(&a, &b).outcome, "agree");
        // Unordered too (multiset comparison sorts the padded and unpadded alike).
        let mut u = a.clone();
        u.sql = "select supp_nation, cust_nation, l_year, revenue from shipping".into();
        let mut v = b.clone();
        v.sql = u.sql.clone();
        v.rows.reverse();
        assert_eq!(compare(&u, &v).outcome, "agree");
        // Padding is not a licence for other differences: leading blanks count.
        let c = tpch_run(
            sql,
            &[
                &[" FRANCE", "GERMANY", "1995", "4637235.15"],
                &["FRANCE", "GERMANY", "1996", "5224779.57"],
                &["GERMANY", "FRANCE", "1995", "6232818.70"],
            ],
        );
        assert_eq!(compare(&a, &c).outcome, "DIFFER");
        assert!(cells_agree("A         ", "A"));
        assert!(!cells_agree("A B", "AB"));
    }

    #[test]
    fn tpch_ties_may_come_in_any_order_and_a_limit_may_cut_them() {
        // Q18's shape: ORDER BY o_totalprice desc, o_orderdate LIMIT 100; two orders
        // with the same price and date are a tie.
        let sql = "-- TPC-H Q18
select
	c_name,
	c_custkey,
	o_orderkey,
	                   o_orderdate,
	o_totalprice,
	sum(l_quantity)
from
	customer
                   group by
	c_name,
	c_custkey,
	o_orderkey,
	o_orderdate,
	                   o_totalprice
order by
	o_totalprice desc,
	o_orderdate
limit
	3;";
        let o = order_by(sql).unwrap();
        assert_eq!(o.keys, Some(vec![4, 3]));
        assert!(o.limit);
        let r1 = ["Customer#1", "1", "10", "1995-01-01", "500000.00", "301.00"];
        let r2 = ["Customer#2", "2", "20", "1996-01-01", "400000.00", "302.00"];
        let r3 = ["Customer#3", "3", "30", "1996-01-01", "400000.00", "303.00"];
        let r4 = ["Customer#4", "4", "40", "1996-01-01", "400000.00", "304.00"];
        let a = tpch_run(sql, &[&r1, &r2, &r3]);
        // The tie (r2, r3) in the other order.
        let b = tpch_run(sql, &[&r1, &r3, &r2]);
        let c = compare(&a, &b);
        assert_eq!(c.outcome, "agree");
        assert!(c.detail.contains("ties in another order"), "{}", c.detail);
        // The LIMIT cut the tie (r2, r3, r4) elsewhere: other members, still agree.
        let b = tpch_run(sql, &[&r1, &r4, &r2]);
        assert_eq!(compare(&a, &b).outcome, "agree");
        // A tie that is not at the cut must hold the same members.
        let mid = sql.replace(
            "limit
	3;",
            "limit
	4;",
        );
        let r5 = ["Customer#5", "5", "50", "1997-01-01", "1.00", "305.00"];
        let a = tpch_run(&mid, &[&r1, &r2, &r3, &r5]);
        let b = tpch_run(&mid, &[&r1, &r2, &r4, &r5]);
        assert_eq!(compare(&a, &b).outcome, "DIFFER");
        // Rows out of key order are never a tie.
        let b = tpch_run(&mid, &[&r2, &r1, &r3, &r5]);
        assert_eq!(compare(&a, &b).outcome, "DIFFER");
    }

    #[test]
    fn comments_and_with_clauses_do_not_confuse_the_order_by() {
        // Q15's shape: the CTE's select and group by are inside parentheses.
        let q15 = "-- TPC-H Q15: Top Supplier Query
-- select x from y order by z
                   with revenue0 (supplier_no, total_revenue) as (
	select l_suppkey,                    sum(l_extendedprice) from lineitem group by l_suppkey order by 1
)
                   select
	s_suppkey,
	s_name,
	total_revenue
from
	supplier,                    revenue0
where
	s_suppkey = supplier_no /* order by nothing */
                   order by
	s_suppkey;";
        let o = order_by(q15).unwrap();
        assert_eq!(o.keys, Some(vec![0]));
        assert!(!o.limit);
        // A comment with an ORDER BY and no ORDER BY in the query: unordered.
        assert_eq!(
            order_by(
                "-- order by a
select a from t /* order by a */"
            ),
            None
        );
        // Comment markers inside strings are text.
        assert_eq!(
            order_by("select a from t where s = '--' order by a")
                .unwrap()
                .keys,
            Some(vec![0])
        );
        let m = top_level(
            "a -- b
c /* d */ e",
        );
        assert_eq!(String::from_utf8(m).unwrap(), "a     \nc         e");
    }

    #[test]
    fn compare_answers_pairs_by_position() {
        let a = run("SELECT 1", &[&["1"]]);
        let mut b = a.clone();
        b.name = "other".into();
        let checks = compare_answers(&[a.clone(), a.clone()], &[a.clone(), b]);
        assert_eq!(checks[0].outcome, "agree");
        assert_eq!(checks[1].outcome, "not compared");
        let checks = compare_answers(std::slice::from_ref(&a), &[]);
        assert_eq!(checks.len(), 1);
        assert_eq!(checks[0].outcome, "not compared");
    }
}
