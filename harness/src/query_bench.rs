//! `smrdb-bench query`: the design's multi-set example ("new customers who bought in
//! July") on smrdb and on DuckDB, side by side in one run, on the same data.
//!
//! * Data: `customers(cust_id, name, is_new, region)` and
//!   `purchases(purchase_id, cust_id, month, amount, item)` from a deterministic PRNG,
//!   written once as CSV files into a work directory and reused when a file for the
//!   same parameters (sizes, seed, generator version) is already there.
//! * DuckDB (the reference): `harness/py/duckdb_bench.py`, embedded in this binary,
//!   run by the interpreter of a venv this module creates and fills (`pip install
//!   duckdb`) when `import duckdb` fails; `SET threads`, `read_csv` with explicit
//!   columns into in-memory tables, warm-up + repeats timed around
//!   `con.execute(sql).fetchall()`.
//! * smrdb: `smrdb cluster` (as `smrdb-bench load` starts it), `COPY` of both CSVs,
//!   warm-up + repeats timed at the client (the `postgres` crate, simple protocol,
//!   all rows received), then `EXPLAIN ANALYZE` of Q1 once.
//! * The answers of both engines are compared (same rows in the same order; numbers
//!   with a relative tolerance, since float sums depend on the summation order).
//!
//! The engines run one after the other (DuckDB first, then smrdb, whose cluster is
//! stopped before this returns), never at the same time.

use std::io::{BufWriter, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::load_bench::{connect, smrdb_binary, Cluster};

/// The DuckDB driver script, written into the work directory at run time.
const DUCKDB_SCRIPT: &str = include_str!("../py/duckdb_bench.py");

/// Bumped whenever the generated data changes, so stale CSVs are not reused.
const GENERATOR_VERSION: u32 = 1;
/// Regions are 1..=REGIONS.
const REGIONS: u64 = 20;
/// Items are 1..=ITEMS.
const ITEMS: u64 = 5000;

/// The join every query shares: new customers who bought in July.
const JOIN: &str = "FROM purchases p JOIN customers c ON p.cust_id = c.cust_id \
                    WHERE c.is_new AND p.month = 7";

/// The benchmark's queries, (name, SQL). Every ORDER BY is total, so both engines
/// must return the same rows in the same order.
pub fn queries() -> Vec<(String, String)> {
    vec![
        ("Q1 count".into(), format!("SELECT count(*) {JOIN}")),
        (
            "Q2 group by region".into(),
            format!(
                "SELECT c.region, count(*), sum(p.amount) {JOIN} GROUP BY c.region ORDER BY c.region"
            ),
        ),
        (
            "Q3 distinct region, item".into(),
            // (region, item) pairs are unique after DISTINCT: the order is total.
            format!("SELECT DISTINCT c.region, p.item {JOIN} ORDER BY 1, 2 LIMIT 20"),
        ),
        (
            "Q4 count distinct".into(),
            format!("SELECT count(DISTINCT p.cust_id) {JOIN}"),
        ),
    ]
}

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

/// What one engine did.
#[derive(Debug, Clone, Serialize)]
pub struct EngineRun {
    /// Engine version (DuckDB's `__version__`, smrdb's git revision).
    pub version: String,
    /// Load time per table, seconds (`customers`, `purchases`).
    pub load_s: Vec<(String, f64)>,
    /// The queries.
    pub queries: Vec<QueryRun>,
    /// smrdb: `EXPLAIN ANALYZE` of Q1 (or its error).
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
// Data

/// SplitMix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let n = hi - lo + 1;
        lo + ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Writes `path` through `fill` into a temporary file renamed into place on success,
/// unless `path` already exists (same name = same parameters). Returns whether it
/// was generated.
fn generate(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<bool> {
    if path.is_file() {
        return Ok(false);
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    fill(&mut w)?;
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// `cust_id` 1..=n, `name`, `is_new` (true for ~10%), `region` 1..=REGIONS.
fn write_customers(w: &mut dyn Write, n: u64, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed, 1);
    for id in 1..=n {
        let is_new = rng.range(0, 9) == 0;
        let region = rng.range(1, REGIONS);
        writeln!(w, "{id},cust{id},{is_new},{region}")?;
    }
    Ok(())
}

/// `purchase_id` 1..=n, `cust_id` uniform over 1..=customers, `month` 1..=12,
/// `amount` 1.00..=1000.00 (cents), `item` 1..=ITEMS.
fn write_purchases(w: &mut dyn Write, n: u64, customers: u64, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed, 2);
    for id in 1..=n {
        let cust = rng.range(1, customers);
        let month = rng.range(1, 12);
        let cents = rng.range(100, 100_000);
        let item = rng.range(1, ITEMS);
        writeln!(
            w,
            "{id},{cust},{month},{}.{:02},{item}",
            cents / 100,
            cents % 100
        )?;
    }
    Ok(())
}

fn make_data(o: &Options) -> Result<(PathBuf, PathBuf, f64, bool)> {
    std::fs::create_dir_all(&o.work_dir)
        .with_context(|| format!("create work dir {}", o.work_dir.display()))?;
    let v = GENERATOR_VERSION;
    let customers = o
        .work_dir
        .join(format!("customers-v{v}-n{}-s{}.csv", o.customers, o.seed));
    let purchases = o.work_dir.join(format!(
        "purchases-v{v}-n{}-c{}-s{}.csv",
        o.purchases, o.customers, o.seed
    ));
    let t = Instant::now();
    let mut made = generate(&customers, |w| write_customers(w, o.customers, o.seed))?;
    made |= generate(&purchases, |w| {
        write_purchases(w, o.purchases, o.customers, o.seed)
    })?;
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "data: {} {} and {} ({:.1} s)",
        if made { "generated" } else { "reusing" },
        customers.display(),
        purchases.display(),
        secs
    );
    Ok((
        std::fs::canonicalize(&customers)?,
        std::fs::canonicalize(&purchases)?,
        if made { secs } else { 0.0 },
        !made,
    ))
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

/// Makes sure `venv` has duckdb; returns its interpreter.
fn ensure_duckdb(o: &Options) -> Result<PathBuf> {
    let py = o.venv.join("bin").join("python");
    if !py.is_file() || !runs_ok(Command::new(&py).args(["-c", "import pip"])) {
        // Never delete a directory that is not (the remains of) a venv.
        let is_venv = o.venv.join("pyvenv.cfg").is_file();
        let empty = std::fs::read_dir(&o.venv).map_or(true, |mut d| d.next().is_none());
        if !is_venv && !empty {
            bail!(
                "{} exists and is not a Python venv: pass another --venv",
                o.venv.display()
            );
        }
        eprintln!("duckdb: creating venv {}", o.venv.display());
        let _ = std::fs::remove_dir_all(&o.venv);
        let create = || {
            Command::new(&o.python)
                .args(["-m", "venv"])
                .arg(&o.venv)
                .stdin(Stdio::null())
                .output()
        };
        let out = create().with_context(|| format!("run `{} -m venv`", o.python))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&o.venv);
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
                    o.python,
                    o.venv.display(),
                    msg.trim()
                );
            }
        }
    }
    if !runs_ok(Command::new(&py).args(["-c", "import duckdb"])) {
        eprintln!("duckdb: pip install duckdb into {}", o.venv.display());
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
                o.venv.display(),
                py.display()
            );
        }
    }
    Ok(py)
}

#[derive(Deserialize)]
struct DuckOut {
    duckdb_version: String,
    load_s: std::collections::BTreeMap<String, f64>,
    rows_loaded: std::collections::BTreeMap<String, u64>,
    queries: Vec<DuckQuery>,
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

fn run_duckdb(o: &Options, customers: &Path, purchases: &Path) -> Result<EngineRun> {
    let py = ensure_duckdb(o)?;
    let script = o.work_dir.join("duckdb_bench.py");
    std::fs::write(&script, DUCKDB_SCRIPT)?;
    let spec = o
        .work_dir
        .join(format!("duckdb-spec-{}.json", std::process::id()));
    let queries = queries()
        .into_iter()
        .map(|(name, sql)| serde_json::json!({ "name": name, "sql": sql }))
        .collect::<Vec<_>>();
    std::fs::write(
        &spec,
        serde_json::to_string_pretty(&serde_json::json!({
            "customers_csv": customers,
            "purchases_csv": purchases,
            "threads": o.duckdb_threads,
            "repeats": o.repeats,
            "queries": queries,
        }))?,
    )?;
    eprintln!(
        "duckdb: running {} (threads {})",
        script.display(),
        o.duckdb_threads
    );
    let out = Command::new(&py)
        .arg(&script)
        .arg(&spec)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("run the DuckDB script")?;
    let _ = std::fs::remove_file(&spec);
    if !out.status.success() {
        bail!("the DuckDB script failed ({})", out.status);
    }
    let d: DuckOut = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "DuckDB script output is not the expected JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    for (table, want) in [("customers", o.customers), ("purchases", o.purchases)] {
        let got = d.rows_loaded.get(table).copied().unwrap_or(0);
        anyhow::ensure!(got == want, "DuckDB loaded {got} {table}, expected {want}");
    }
    Ok(EngineRun {
        version: format!("DuckDB {}", d.duckdb_version),
        load_s: d.load_s.into_iter().collect(),
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

/// A Postgres error with the server's message (SQLSTATE, message, detail, hint).
fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
            if let Some(x) = d.detail() {
                s += &format!(" (detail: {x})");
            }
            if let Some(x) = d.hint() {
                s += &format!(" (hint: {x})");
            }
            s
        }
        None => format!("{e}"),
    }
}

fn pg_rows(c: &mut postgres::Client, sql: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).map_err(|e| pg_error(&e))? {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    Ok(out)
}

fn smrdb_version() -> String {
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

fn run_smrdb(o: &Options, customers: &Path, purchases: &Path) -> Result<EngineRun> {
    let bin = smrdb_binary()?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(&bin);
    cmd.args([
        "cluster",
        "--nodes",
        &o.nodes.to_string(),
        "--tstores",
        &o.tstores.to_string(),
    ])
    .args(["--fabric", &o.fabric, "--port", &port.to_string()])
    .stdin(Stdio::null())
    .stdout(Stdio::null());
    eprintln!(
        "smrdb: starting {} cluster ({}x{} on {})",
        bin.display(),
        o.nodes,
        o.tstores,
        o.fabric
    );
    let _cluster = Cluster(cmd.spawn().context("start smrdb cluster")?);
    let mut c = connect(port, Duration::from_secs(60))?;
    c.batch_execute(
        "DROP TABLE IF EXISTS purchases; DROP TABLE IF EXISTS customers; \
         CREATE TABLE customers (cust_id INT NOT NULL, name TEXT, is_new BOOLEAN, region INT); \
         CREATE TABLE purchases (purchase_id BIGINT NOT NULL, cust_id INT NOT NULL, month INT, \
                                 amount DOUBLE PRECISION, item INT)",
    )
    .map_err(|e| anyhow::anyhow!("smrdb: create tables: {}", pg_error(&e)))?;
    let mut load_s = Vec::new();
    for (table, path, want) in [
        ("customers", customers, o.customers),
        ("purchases", purchases, o.purchases),
    ] {
        let t = Instant::now();
        let n = c
            .execute(
                &format!(
                    "COPY {table} FROM '{}' WITH (FORMAT csv)",
                    path.display().to_string().replace('\'', "''")
                ),
                &[],
            )
            .map_err(|e| anyhow::anyhow!("smrdb: COPY {table}: {}", pg_error(&e)))?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(
            n == want,
            "smrdb: COPY {table} loaded {n} rows, expected {want}"
        );
        eprintln!("smrdb: loaded {n} {table} in {secs:.2} s");
        load_s.push((table.to_string(), secs));
    }
    let mut runs = Vec::new();
    for (name, sql) in queries() {
        let mut q = QueryRun {
            name: name.clone(),
            sql: sql.clone(),
            warmup_s: None,
            times_s: Vec::new(),
            rows: Vec::new(),
            error: None,
        };
        let t = Instant::now();
        match pg_rows(&mut c, &sql) {
            Err(e) => {
                eprintln!("smrdb: {name} failed: {e}");
                q.error = Some(e);
            }
            Ok(_) => {
                q.warmup_s = Some(t.elapsed().as_secs_f64());
                for _ in 0..o.repeats {
                    let t = Instant::now();
                    match pg_rows(&mut c, &sql) {
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
    let explain = queries().first().map(|(_, sql)| {
        match pg_rows(&mut c, &format!("EXPLAIN ANALYZE {sql}")) {
            Ok(rows) => rows
                .iter()
                .map(|r| r.join(" | "))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("error: {e}"),
        }
    });
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

/// Same value: equal text, equal booleans, or numbers within a relative 1e-9.
fn cells_agree(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    if let (Ok(x), Ok(y)) = (a.parse::<f64>(), b.parse::<f64>()) {
        return x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0);
    }
    matches!((parse_bool(a), parse_bool(b)), (Some(x), Some(y)) if x == y)
}

fn compare(s: &QueryRun, d: &QueryRun) -> Check {
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
    for (i, (a, b)) in s.rows.iter().zip(&d.rows).enumerate() {
        if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| !cells_agree(x, y)) {
            return check(
                "DIFFER",
                format!(
                    "row {i}: smrdb [{}] vs DuckDB [{}]",
                    a.join(", "),
                    b.join(", ")
                ),
            );
        }
    }
    check("agree", format!("{} rows", s.rows.len()))
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
    let (customers, purchases, generate_s, data_reused) = make_data(o)?;
    let loadavg_before = loadavg();
    let duckdb = if o.engines.contains(&Engine::Duckdb) {
        Some(run_duckdb(o, &customers, &purchases)?)
    } else {
        None
    };
    let smrdb = if o.engines.contains(&Engine::Smrdb) {
        Some(run_smrdb(o, &customers, &purchases)?)
    } else {
        None
    };
    let mut checks = Vec::new();
    if let (Some(s), Some(d)) = (&smrdb, &duckdb) {
        for (a, b) in s.queries.iter().zip(&d.queries) {
            checks.push(compare(a, b));
        }
    }
    let summary = summarize(smrdb.as_ref(), duckdb.as_ref());
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
            generate_s,
            data_reused,
            loadavg_before,
            loadavg_after: loadavg(),
        },
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

fn summarize(smrdb: Option<&EngineRun>, duckdb: Option<&EngineRun>) -> Vec<Summary> {
    queries()
        .into_iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let sq = smrdb.and_then(|x| x.queries.get(i)).filter(|q| ok(q));
            let dq = duckdb.and_then(|x| x.queries.get(i)).filter(|q| ok(q));
            let sm = sq.and_then(QueryRun::median_s);
            let dm = dq.and_then(QueryRun::median_s);
            Summary {
                query: name,
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
    for (i, (name, sql)) in queries().into_iter().enumerate() {
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
    fn data_is_deterministic_and_in_range() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_purchases(&mut a, 1000, 50, 7).unwrap();
        write_purchases(&mut b, 1000, 50, 7).unwrap();
        assert_eq!(a, b);
        for line in String::from_utf8(a).unwrap().lines() {
            let f: Vec<&str> = line.split(',').collect();
            let cust: u64 = f[1].parse().unwrap();
            let month: u64 = f[2].parse().unwrap();
            let amount: f64 = f[3].parse().unwrap();
            assert!((1..=50).contains(&cust) && (1..=12).contains(&month));
            assert!((1.0..=1000.0).contains(&amount));
        }
        let mut c = Vec::new();
        write_customers(&mut c, 10_000, 7).unwrap();
        let new = String::from_utf8(c)
            .unwrap()
            .lines()
            .filter(|l| l.contains(",true,"))
            .count();
        assert!((800..1200).contains(&new), "{new} new customers of 10000");
    }

    #[test]
    fn cells() {
        assert!(cells_agree("3", "3"));
        assert!(cells_agree("1234567.891", "1234567.8910000001"));
        assert!(!cells_agree("1234567.891", "1234567.9"));
        assert!(cells_agree("t", "true"));
        assert!(!cells_agree("abc", "abd"));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn compare_rows() {
        let run = |rows: &[&[&str]]| QueryRun {
            name: "Q".into(),
            sql: String::new(),
            warmup_s: Some(0.1),
            times_s: vec![0.1],
            rows: rows
                .iter()
                .map(|r| r.iter().map(|c| c.to_string()).collect())
                .collect(),
            error: None,
        };
        let a = run(&[&["1", "10", "224194.51"], &["2", "3", "0.5"]]);
        assert_eq!(compare(&a, &a).outcome, "agree");
        let b = run(&[&["1", "10", "224194.51000000002"], &["2", "3", "0.5"]]);
        assert_eq!(compare(&a, &b).outcome, "agree");
        let c = run(&[&["1", "10", "224194.51"], &["2", "4", "0.5"]]);
        assert_eq!(compare(&a, &c).outcome, "DIFFER");
        let d = run(&[&["1", "10", "224194.51"]]);
        assert_eq!(compare(&a, &d).outcome, "DIFFER");
        let mut e = run(&[]);
        e.error = Some("ERROR 0A000: not supported: joins".into());
        assert_eq!(compare(&e, &a).outcome, "not compared");
    }
}
