//! Workloads: tables (as CSV files) and the queries to run over them, for smrdb and
//! for DuckDB alike.
//!
//! A [`Workload`] is what an experiment needs to run the same queries on both
//! engines: every table's CSV file, its `CREATE TABLE` for smrdb and for DuckDB, its
//! row count, and the queries in both dialects (usually the same text; where smrdb
//! needs a rewrite, DuckDB runs the original form, so the comparison of the answers
//! also checks the rewrite). Three generators:
//!
//! * [`example`]: the design's multi-set example, `customers` x `purchases` ("new
//!   customers who bought in July"), the data of `smrdb-bench query`.
//! * [`synthetic`]: a dimension and a fact table with a chosen filter selectivity on
//!   the dimension and a Zipf skew of the fact's foreign keys.
//! * [`tpch`]: TPC-H's 8 tables with every column, typed as the specification says,
//!   from the `tpchgen` crate (the official dbgen's data), and the 22 TPC-H queries in
//!   their standard form (`harness/tpch/q01.sql` .. `q22.sql`).
//!
//! Every generator writes into its own subdirectory of the directory it is given,
//! named after its main parameters, with a `params.json` beside the CSVs: the full
//! parameters (generator version included), the rows and bytes of every file. A later
//! call with the same parameters finds that manifest, checks the files are still there
//! with the recorded sizes and reuses them ([`Workload::reused`]); anything else is
//! regenerated (each file written to a temporary name and renamed into place, the
//! manifest written last).
//!
//! CSV: comma separated, no header, `\n` line ends; a text field is quoted (`"`,
//! doubled inside) when it is empty or holds a comma, a quote, a line break or
//! leading / trailing white space: what both smrdb's `COPY ... WITH (FORMAT csv)`
//! (PostgreSQL's rules: an unquoted empty field is NULL, a quoted one an empty
//! string) and DuckDB's `read_csv` (with `allow_quoted_nulls = false`) read back
//! exactly. No generator writes NULLs.
//!
//! [`load_smrdb`] loads a workload into a running smrdb through its Postgres front
//! end; the DuckDB side is `query_bench::run_duckdb`.

use std::fmt::{Display, Write as _};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};

use crate::measure::pg_error;

/// One table of a workload.
#[derive(Debug, Clone, Serialize)]
pub struct Table {
    /// Table name (the same in both engines).
    pub name: String,
    /// smrdb's `CREATE TABLE`.
    pub ddl: String,
    /// DuckDB's `CREATE TABLE` (same columns, same order, DuckDB's type names).
    pub duckdb_ddl: String,
    /// The CSV file (absolute path: smrdb's `COPY` reads it on the server side).
    pub csv: PathBuf,
    /// Rows in the CSV file.
    pub rows: u64,
}

/// One query of a workload.
#[derive(Debug, Clone, Serialize)]
pub struct Query {
    /// Short name (`Q3`, `S1 count` ...).
    pub name: String,
    /// What the query asks and any rewrite it needed for smrdb.
    pub description: String,
    /// The query as smrdb runs it.
    pub sql: String,
    /// The same query for DuckDB (identical to `sql` unless smrdb needed a rewrite, in
    /// which case this is the original form).
    pub duckdb_sql: String,
}

/// Tables and queries, ready to load and run.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Workload name (`example`, `synthetic`, `tpch`).
    pub name: String,
    /// The generator's parameters, as recorded in `params.json` (floats as text, so
    /// the comparison with a later call is exact).
    pub params: serde_json::Value,
    /// The tables, in load order.
    pub tables: Vec<Table>,
    /// The queries, in run order.
    pub queries: Vec<Query>,
    /// Seconds spent generating the CSVs (0 when reused).
    pub generate_s: f64,
    /// The CSVs were already there with the same parameters.
    pub reused: bool,
}

impl Workload {
    /// The table named `name`.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

// ---------------------------------------------------------------------------------
// Generation plumbing

/// SplitMix64: small, fast, and the same on every platform.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for one stream of one seed.
    pub(crate) fn new(seed: u64, stream: u64) -> Self {
        Rng(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi` (`lo <= hi`).
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        let n = u128::from(hi - lo) + 1;
        lo + ((u128::from(self.next_u64()) * n) >> 64) as u64
    }

    /// Uniform in `[0, 1)`, 53 random bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Fills one table's CSV, returning the rows written.
type Fill<'a> = Box<dyn FnOnce(&mut dyn Write) -> Result<u64> + 'a>;

/// A table to materialize: name, smrdb DDL, DuckDB DDL, and the writer of its rows.
struct TableSpec<'a> {
    name: &'static str,
    ddl: String,
    duckdb_ddl: String,
    fill: Fill<'a>,
}

/// The manifest's name inside a workload's directory.
const MANIFEST: &str = "params.json";

/// Writes `path` through `fill` into a temporary file renamed into place on success.
fn write_file(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<u64>) -> Result<u64> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let result = (|| -> Result<u64> {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let rows = fill(&mut w)?;
        w.flush()?;
        drop(w);
        std::fs::rename(&tmp, path)?;
        Ok(rows)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("write {}", path.display()))
}

/// The recorded (rows, bytes) of `table` in a manifest, when its file is still there
/// with that size.
fn manifest_entry(manifest: &serde_json::Value, sub: &Path, table: &str) -> Option<(u64, u64)> {
    let e = manifest.get("tables")?.get(table)?;
    let rows = e.get("rows")?.as_u64()?;
    let bytes = e.get("bytes")?.as_u64()?;
    let len = std::fs::metadata(sub.join(format!("{table}.csv")))
        .ok()?
        .len();
    (len == bytes).then_some((rows, bytes))
}

/// Materializes `specs` as `dir/sub/<name>.csv` (reusing them when `dir/sub/params.json`
/// records the same `params` and every file is intact), and returns the tables, the
/// seconds spent generating and whether the files were reused.
fn materialize(
    dir: &Path,
    sub: &str,
    params: &serde_json::Value,
    specs: Vec<TableSpec<'_>>,
) -> Result<(Vec<Table>, f64, bool)> {
    let d = dir.join(sub);
    std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    let d = std::fs::canonicalize(&d).with_context(|| format!("resolve {}", d.display()))?;
    let manifest_path = d.join(MANIFEST);
    let manifest = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .filter(|m| m.get("params") == Some(params));
    if let Some(m) = &manifest {
        let entries: Option<Vec<(u64, u64)>> = specs
            .iter()
            .map(|s| manifest_entry(m, &d, s.name))
            .collect();
        if let Some(entries) = entries {
            let tables = specs
                .into_iter()
                .zip(entries)
                .map(|(s, (rows, _))| Table {
                    name: s.name.to_string(),
                    ddl: s.ddl,
                    duckdb_ddl: s.duckdb_ddl,
                    csv: d.join(format!("{}.csv", s.name)),
                    rows,
                })
                .collect();
            return Ok((tables, 0.0, true));
        }
    }
    // Invalidate first: a crash while regenerating must not leave a valid manifest.
    match std::fs::remove_file(&manifest_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("remove {}", manifest_path.display())),
    }
    let t = Instant::now();
    let mut tables = Vec::new();
    let mut recorded = serde_json::Map::new();
    for s in specs {
        let csv = d.join(format!("{}.csv", s.name));
        let rows = write_file(&csv, s.fill)?;
        let bytes = std::fs::metadata(&csv)?.len();
        recorded.insert(s.name.to_string(), json!({ "rows": rows, "bytes": bytes }));
        tables.push(Table {
            name: s.name.to_string(),
            ddl: s.ddl,
            duckdb_ddl: s.duckdb_ddl,
            csv,
            rows,
        });
    }
    let secs = t.elapsed().as_secs_f64();
    let m = json!({ "params": params, "tables": recorded });
    write_file(&manifest_path, |w| {
        serde_json::to_writer_pretty(&mut *w, &m)?;
        w.write_all(b"\n")?;
        Ok(0)
    })?;
    Ok((tables, secs, false))
}

/// One CSV record being assembled.
struct CsvRow {
    line: String,
    scratch: String,
    empty: bool,
}

impl CsvRow {
    fn new() -> Self {
        CsvRow {
            line: String::with_capacity(256),
            scratch: String::with_capacity(128),
            empty: true,
        }
    }

    fn sep(&mut self) {
        if !self.empty {
            self.line.push(',');
        }
        self.empty = false;
    }

    /// A field that never needs quoting (numbers, dates, booleans).
    fn raw(&mut self, v: impl Display) -> &mut Self {
        self.sep();
        // Writing into a String cannot fail.
        let _ = write!(self.line, "{v}");
        self
    }

    /// A text field, quoted when it must be.
    fn text(&mut self, v: impl Display) -> &mut Self {
        self.sep();
        self.scratch.clear();
        let _ = write!(self.scratch, "{v}");
        push_csv_text(&mut self.line, &self.scratch);
        self
    }

    /// Writes the record and starts the next one.
    fn end(&mut self, w: &mut dyn Write) -> std::io::Result<()> {
        self.line.push('\n');
        w.write_all(self.line.as_bytes())?;
        self.line.clear();
        self.empty = true;
        Ok(())
    }
}

/// Appends `s` as one CSV field: quoted (quotes doubled) when it is empty or holds a
/// delimiter, a quote, a line break or leading / trailing white space, as is
/// otherwise.
fn push_csv_text(out: &mut String, s: &str) {
    let needs = s.is_empty()
        || s.contains([',', '"', '\n', '\r'])
        || s.starts_with(char::is_whitespace)
        || s.ends_with(char::is_whitespace);
    if !needs {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

/// A float parameter as text: exact, and the same in the manifest every time.
fn ftext(x: f64) -> String {
    format!("{x}")
}

// ---------------------------------------------------------------------------------
// The design's example

/// Bumped whenever the example's data changes, so stale CSVs are not reused.
const EXAMPLE_VERSION: u32 = 1;
/// Regions are 1..=REGIONS.
const REGIONS: u64 = 20;
/// Items are 1..=ITEMS.
const ITEMS: u64 = 5000;

/// `cust_id` 1..=n, `name`, `is_new` (true for ~10%), `region` 1..=REGIONS.
fn write_customers(w: &mut dyn Write, n: u64, seed: u64) -> Result<u64> {
    let mut rng = Rng::new(seed, 1);
    for id in 1..=n {
        let is_new = rng.range(0, 9) == 0;
        let region = rng.range(1, REGIONS);
        writeln!(w, "{id},cust{id},{is_new},{region}")?;
    }
    Ok(n)
}

/// `purchase_id` 1..=n, `cust_id` uniform over 1..=customers, `month` 1..=12,
/// `amount` 1.00..=1000.00 (cents), `item` 1..=ITEMS.
fn write_purchases(w: &mut dyn Write, n: u64, customers: u64, seed: u64) -> Result<u64> {
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
    Ok(n)
}

/// The design's multi-set example: `customers(cust_id, name, is_new, region)` (~10%
/// new, 20 regions) and `purchases(purchase_id, cust_id, month, amount, item)`
/// (customers uniform, 12 months, amounts 1.00..=1000.00, 5000 items) from a
/// deterministic PRNG, and four queries over the join "new customers who bought in
/// July": a count, a GROUP BY region with a sum, a DISTINCT (region, item) with a
/// total ORDER BY and LIMIT, and a `count(DISTINCT)`.
///
/// # Errors
/// Empty tables, or the files cannot be written.
pub fn example(customers: u64, purchases: u64, seed: u64, dir: &Path) -> Result<Workload> {
    anyhow::ensure!(
        customers > 0 && purchases > 0,
        "the example needs at least one customer and one purchase"
    );
    let params = json!({
        "workload": "example",
        "version": EXAMPLE_VERSION,
        "customers": customers,
        "purchases": purchases,
        "seed": seed,
    });
    let specs = vec![
        TableSpec {
            name: "customers",
            ddl: "CREATE TABLE customers (cust_id INT NOT NULL, name TEXT, is_new BOOLEAN, \
                  region INT)"
                .into(),
            duckdb_ddl: "CREATE TABLE customers (cust_id INTEGER NOT NULL, name VARCHAR, \
                         is_new BOOLEAN, region INTEGER)"
                .into(),
            fill: Box::new(move |w| write_customers(w, customers, seed)),
        },
        TableSpec {
            name: "purchases",
            ddl: "CREATE TABLE purchases (purchase_id BIGINT NOT NULL, cust_id INT NOT NULL, \
                  month INT, amount DOUBLE PRECISION, item INT)"
                .into(),
            duckdb_ddl: "CREATE TABLE purchases (purchase_id BIGINT NOT NULL, \
                         cust_id INTEGER NOT NULL, month INTEGER, amount DOUBLE, item INTEGER)"
                .into(),
            fill: Box::new(move |w| write_purchases(w, purchases, customers, seed)),
        },
    ];
    let sub = format!("example-c{customers}-p{purchases}-s{seed}");
    let (tables, generate_s, reused) = materialize(dir, &sub, &params, specs)?;
    // The join every query shares: new customers who bought in July.
    let join = "FROM purchases p JOIN customers c ON p.cust_id = c.cust_id \
                WHERE c.is_new AND p.month = 7";
    let q = |name: &str, description: &str, sql: String| Query {
        name: name.into(),
        description: description.into(),
        duckdb_sql: sql.clone(),
        sql,
    };
    let queries = vec![
        q(
            "Q1 count",
            "purchases of new customers in July",
            format!("SELECT count(*) {join}"),
        ),
        q(
            "Q2 group by region",
            "the same join grouped by the customer's region, with the amount's sum",
            format!(
                "SELECT c.region, count(*), sum(p.amount) {join} GROUP BY c.region \
                 ORDER BY c.region"
            ),
        ),
        q(
            "Q3 distinct region, item",
            "distinct (region, item) pairs; unique after DISTINCT, so the order is total",
            format!("SELECT DISTINCT c.region, p.item {join} ORDER BY 1, 2 LIMIT 20"),
        ),
        q(
            "Q4 count distinct",
            "how many distinct customers the join holds",
            format!("SELECT count(DISTINCT p.cust_id) {join}"),
        ),
    ];
    Ok(Workload {
        name: "example".into(),
        params,
        tables,
        queries,
        generate_s,
        reused,
    })
}

// ---------------------------------------------------------------------------------
// Synthetic dimension x fact

/// Bumped whenever the synthetic data changes.
const SYNTHETIC_VERSION: u32 = 1;
/// `dim.flag` is uniform over `0..FLAG_SCALE`; the filter is `flag < threshold`.
const FLAG_SCALE: u64 = 1_000_000;
/// `dim.grp` is uniform over `0..GROUPS`.
const GROUPS: u64 = 100;
/// Length of `dim.pad`.
const PAD_LEN: usize = 16;
/// `fact.val` below this passes the fact-side filter of S3 (~10% of the rows, since
/// `val` is uniform over 0.01..=1000.00).
const FACT_VAL_CUT: u64 = 100;

/// Parameters of [`synthetic`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    /// Rows of `dim` (ids 1..=dim_rows).
    pub dim_rows: u64,
    /// Rows of `fact`.
    pub fact_rows: u64,
    /// Fraction of `dim` rows passing the queries' filter on `dim` (0..=1; exact in
    /// expectation to 1e-6, the flag's resolution).
    pub selectivity: f64,
    /// Zipf exponent of `fact.dim_id` over the dim ids (0 = uniform; id 1 is the most
    /// frequent, then 2 ...).
    pub skew: f64,
    /// PRNG seed.
    pub seed: u64,
}

/// Zipf's distribution over `1..=n` with exponent `s > 0` (`P(k)` proportional to
/// `k^-s`), sampled by rejection-inversion (W. Hörmann, G. Derflinger, "Rejection-
/// inversion to generate variates from monotone discrete distributions", 1996, as in
/// Apache Commons' `RejectionInversionZipfSampler`): O(1) memory and time per sample
/// whatever `n`, exact (no table, no truncation).
pub(crate) struct Zipf {
    n: f64,
    s: f64,
    h_x1: f64,
    h_n: f64,
    cut: f64,
}

/// `ln(1 + x) / x`, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - x * 0.25))
    }
}

/// `(e^x - 1) / x`, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x * (1.0 / 3.0) * (1.0 + x * 0.25))
    }
}

impl Zipf {
    /// Zipf over `1..=n` (`n >= 1`) with exponent `s` (finite, `> 0`).
    pub(crate) fn new(n: u64, s: f64) -> Self {
        let mut z = Zipf {
            n: n as f64,
            s,
            h_x1: 0.0,
            h_n: 0.0,
            cut: 0.0,
        };
        z.h_x1 = z.h_integral(1.5) - 1.0;
        z.h_n = z.h_integral(z.n + 0.5);
        z.cut = 2.0 - z.h_integral_inv(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// `x^-s`.
    fn h(&self, x: f64) -> f64 {
        (-self.s * x.ln()).exp()
    }

    /// An antiderivative of `h`.
    fn h_integral(&self, x: f64) -> f64 {
        let lx = x.ln();
        helper2((1.0 - self.s) * lx) * lx
    }

    /// The inverse of `h_integral`.
    fn h_integral_inv(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.s)).max(-1.0);
        (helper1(t) * x).exp()
    }

    /// One sample in `1..=n`.
    fn sample(&self, rng: &mut Rng) -> u64 {
        loop {
            let u = self.h_n + rng.unit() * (self.h_x1 - self.h_n);
            let x = self.h_integral_inv(u);
            let k = (x + 0.5).floor().clamp(1.0, self.n);
            if k - x <= self.cut || u >= self.h_integral(k + 0.5) - self.h(k) {
                return k as u64;
            }
        }
    }
}

/// The flag threshold of a selectivity: `dim.flag < threshold` passes
/// `threshold / FLAG_SCALE` of the rows in expectation.
fn flag_threshold(selectivity: f64) -> u64 {
    (selectivity * FLAG_SCALE as f64).round() as u64
}

/// `id` 1..=n, `flag` uniform over 0..FLAG_SCALE, `grp` uniform over 0..GROUPS, `pad`
/// 16 random lower-case letters.
fn write_dim(w: &mut dyn Write, n: u64, seed: u64) -> Result<u64> {
    let mut rng = Rng::new(seed, 3);
    let mut pad = String::with_capacity(PAD_LEN);
    for id in 1..=n {
        let flag = rng.range(0, FLAG_SCALE - 1);
        let grp = rng.range(0, GROUPS - 1);
        pad.clear();
        for _ in 0..PAD_LEN {
            pad.push(char::from(b'a' + rng.range(0, 25) as u8));
        }
        writeln!(w, "{id},{flag},{grp},{pad}")?;
    }
    Ok(n)
}

/// `id` 1..=o.fact_rows, `dim_id` Zipf(o.skew) over 1..=o.dim_rows (uniform when the
/// skew is 0), `val` uniform over 0.01..=1000.00 (cents).
fn write_fact(w: &mut dyn Write, o: &SyntheticOptions) -> Result<u64> {
    let mut keys = Rng::new(o.seed, 4);
    let mut vals = Rng::new(o.seed, 5);
    let zipf = (o.skew > 0.0).then(|| Zipf::new(o.dim_rows, o.skew));
    for id in 1..=o.fact_rows {
        let dim_id = match &zipf {
            Some(z) => z.sample(&mut keys),
            None => keys.range(1, o.dim_rows),
        };
        let cents = vals.range(1, 100_000);
        writeln!(w, "{id},{dim_id},{}.{:02}", cents / 100, cents % 100)?;
    }
    Ok(o.fact_rows)
}

/// A dimension `dim(id BIGINT NOT NULL, flag INT, grp INT, pad TEXT)` and a fact
/// `fact(id BIGINT NOT NULL, dim_id BIGINT, val DOUBLE PRECISION)` whose `dim_id`
/// follows Zipf's law with exponent `o.skew` (id 1 the most frequent; uniform when 0),
/// and three queries joining them on `fact.dim_id = dim.id` with the filter `dim.flag <
/// T`, which `o.selectivity` of the dim rows pass in expectation (flags are uniform
/// over 0..1,000,000, `T = round(selectivity * 1e6)`):
///
/// * `S1 count`: `count(*)` of the join;
/// * `S2 group by`: per `dim.grp` (100 groups), `count(*)` and `sum(fact.val)`;
/// * `S3 filtered fact`: also `fact.val < 100` (~10% of the fact rows), `count(*)`
///   and `sum(fact.val)`.
///
/// Under skew the fraction of *fact* rows passing depends on the flags the hottest
/// keys drew: the dim-side selectivity is exact in expectation, the fact-side one is
/// not.
///
/// # Errors
/// Empty tables, a selectivity outside 0..=1, a negative or non-finite skew, or the
/// files cannot be written.
pub fn synthetic(o: &SyntheticOptions, dir: &Path) -> Result<Workload> {
    anyhow::ensure!(
        o.dim_rows > 0 && o.fact_rows > 0,
        "synthetic: dim_rows and fact_rows must be positive"
    );
    anyhow::ensure!(
        o.selectivity.is_finite() && (0.0..=1.0).contains(&o.selectivity),
        "synthetic: selectivity must be within 0..=1, got {}",
        o.selectivity
    );
    anyhow::ensure!(
        o.skew.is_finite() && o.skew >= 0.0,
        "synthetic: skew must be a finite exponent >= 0, got {}",
        o.skew
    );
    let threshold = flag_threshold(o.selectivity);
    let params = json!({
        "workload": "synthetic",
        "version": SYNTHETIC_VERSION,
        "dim_rows": o.dim_rows,
        "fact_rows": o.fact_rows,
        "selectivity": ftext(o.selectivity),
        "flag_threshold": threshold,
        "flag_scale": FLAG_SCALE,
        "skew": ftext(o.skew),
        "seed": o.seed,
    });
    let (dim_rows, seed) = (o.dim_rows, o.seed);
    let specs = vec![
        TableSpec {
            name: "dim",
            ddl: "CREATE TABLE dim (id BIGINT NOT NULL, flag INT, grp INT, pad TEXT)".into(),
            duckdb_ddl: "CREATE TABLE dim (id BIGINT NOT NULL, flag INTEGER, grp INTEGER, \
                         pad VARCHAR)"
                .into(),
            fill: Box::new(move |w| write_dim(w, dim_rows, seed)),
        },
        TableSpec {
            name: "fact",
            ddl: "CREATE TABLE fact (id BIGINT NOT NULL, dim_id BIGINT, val DOUBLE PRECISION)"
                .into(),
            duckdb_ddl: "CREATE TABLE fact (id BIGINT NOT NULL, dim_id BIGINT, val DOUBLE)".into(),
            fill: Box::new(|w| write_fact(w, o)),
        },
    ];
    let sub = format!(
        "synthetic-d{}-f{}-sel{}-z{}-s{}",
        o.dim_rows,
        o.fact_rows,
        ftext(o.selectivity),
        ftext(o.skew),
        o.seed
    );
    let (tables, generate_s, reused) = materialize(dir, &sub, &params, specs)?;
    let join = format!("FROM fact f JOIN dim d ON f.dim_id = d.id WHERE d.flag < {threshold}");
    let q = |name: &str, description: String, sql: String| Query {
        name: name.into(),
        description,
        duckdb_sql: sql.clone(),
        sql,
    };
    let sel = ftext(o.selectivity);
    let queries = vec![
        q(
            "S1 count",
            format!("rows of the join whose dim row passes the filter (selectivity {sel})"),
            format!("SELECT count(*) {join}"),
        ),
        q(
            "S2 group by",
            format!("the same join per dim.grp ({GROUPS} groups), count and sum"),
            format!("SELECT d.grp, count(*), sum(f.val) {join} GROUP BY d.grp ORDER BY d.grp"),
        ),
        q(
            "S3 filtered fact",
            format!("the same join with the fact filtered too (val < {FACT_VAL_CUT}, ~10%)"),
            format!("SELECT count(*), sum(f.val) {join} AND f.val < {FACT_VAL_CUT}"),
        ),
    ];
    Ok(Workload {
        name: "synthetic".into(),
        params,
        tables,
        queries,
        generate_s,
        reused,
    })
}

// ---------------------------------------------------------------------------------
// TPC-H

/// Bumped whenever the TPC-H CSVs change (columns, formatting): 2 = all 8 tables with
/// every column of the specification.
const TPCH_VERSION: u32 = 2;

/// Writes every row of `rows` through `write`, returning the count.
fn tpch_rows<T>(
    w: &mut dyn Write,
    rows: impl Iterator<Item = T>,
    mut write: impl FnMut(&mut CsvRow, T),
) -> Result<u64> {
    let mut row = CsvRow::new();
    let mut n = 0;
    for r in rows {
        write(&mut row, r);
        row.end(w)?;
        n += 1;
    }
    Ok(n)
}

fn tpch_region(w: &mut dyn Write) -> Result<u64> {
    tpch_rows(w, RegionGenerator::default().iter(), |row, r| {
        row.raw(r.r_regionkey).text(r.r_name).text(r.r_comment);
    })
}

fn tpch_nation(w: &mut dyn Write) -> Result<u64> {
    tpch_rows(w, NationGenerator::default().iter(), |row, x| {
        row.raw(x.n_nationkey)
            .text(x.n_name)
            .raw(x.n_regionkey)
            .text(x.n_comment);
    })
}

fn tpch_supplier(w: &mut dyn Write, sf: f64) -> Result<u64> {
    tpch_rows(w, SupplierGenerator::new(sf, 1, 1).iter(), |row, s| {
        row.raw(s.s_suppkey)
            .text(s.s_name)
            .text(s.s_address)
            .raw(s.s_nationkey)
            .text(s.s_phone)
            .raw(s.s_acctbal)
            .text(&s.s_comment);
    })
}

fn tpch_customer(w: &mut dyn Write, sf: f64) -> Result<u64> {
    tpch_rows(w, CustomerGenerator::new(sf, 1, 1).iter(), |row, c| {
        row.raw(c.c_custkey)
            .text(c.c_name)
            .text(c.c_address)
            .raw(c.c_nationkey)
            .text(c.c_phone)
            .raw(c.c_acctbal)
            .text(c.c_mktsegment)
            .text(c.c_comment);
    })
}

fn tpch_part(w: &mut dyn Write, sf: f64) -> Result<u64> {
    tpch_rows(w, PartGenerator::new(sf, 1, 1).iter(), |row, p| {
        row.raw(p.p_partkey)
            .text(p.p_name)
            .text(p.p_mfgr)
            .text(p.p_brand)
            .text(p.p_type)
            .raw(p.p_size)
            .text(p.p_container)
            .raw(p.p_retailprice)
            .text(p.p_comment);
    })
}

fn tpch_partsupp(w: &mut dyn Write, sf: f64) -> Result<u64> {
    tpch_rows(w, PartSuppGenerator::new(sf, 1, 1).iter(), |row, ps| {
        row.raw(ps.ps_partkey)
            .raw(ps.ps_suppkey)
            .raw(ps.ps_availqty)
            .raw(ps.ps_supplycost)
            .text(ps.ps_comment);
    })
}

fn tpch_orders(w: &mut dyn Write, sf: f64) -> Result<u64> {
    tpch_rows(w, OrderGenerator::new(sf, 1, 1).iter(), |row, o| {
        row.raw(o.o_orderkey)
            .raw(o.o_custkey)
            .text(o.o_orderstatus)
            .raw(o.o_totalprice)
            .raw(o.o_orderdate)
            .text(o.o_orderpriority)
            .text(o.o_clerk)
            .raw(o.o_shippriority)
            .text(o.o_comment);
    })
}

fn tpch_lineitem(w: &mut dyn Write, sf: f64) -> Result<u64> {
    tpch_rows(w, LineItemGenerator::new(sf, 1, 1).iter(), |row, l| {
        row.raw(l.l_orderkey)
            .raw(l.l_partkey)
            .raw(l.l_suppkey)
            .raw(l.l_linenumber)
            .raw(l.l_quantity)
            .raw(l.l_extendedprice)
            .raw(l.l_discount)
            .raw(l.l_tax)
            .text(l.l_returnflag)
            .text(l.l_linestatus)
            .raw(l.l_shipdate)
            .raw(l.l_commitdate)
            .raw(l.l_receiptdate)
            .text(l.l_shipinstruct)
            .text(l.l_shipmode)
            .text(l.l_comment);
    })
}

/// A TPC-H table: name, columns as (name, type), writer. Both engines get the same
/// `CREATE TABLE` (the specification's types are standard SQL both accept).
fn tpch_spec<'a>(name: &'static str, cols: &[(&str, &str)], fill: Fill<'a>) -> TableSpec<'a> {
    let list = cols
        .iter()
        .map(|(c, t)| format!("{c} {t} NOT NULL"))
        .collect::<Vec<_>>()
        .join(", ");
    let ddl = format!("CREATE TABLE {name} ({list})");
    TableSpec {
        name,
        duckdb_ddl: ddl.clone(),
        ddl,
        fill,
    }
}

/// The type of an identifier column whose largest value is `max`: the spec's
/// "identifier" as dbgen's `dss.ddl` writes it (INTEGER), BIGINT only where INTEGER
/// would overflow (o_orderkey from SF ~358).
fn tpch_key(max: i64) -> &'static str {
    if max <= i64::from(i32::MAX) {
        "INTEGER"
    } else {
        "BIGINT"
    }
}

/// The specification's money and quantity type.
const DECIMAL: &str = "DECIMAL(15,2)";

/// The 22 TPC-H queries, `harness/tpch/q01.sql` .. `q22.sql`: the specification's text
/// with its validation substitution parameters, each file starting with a comment that
/// names the query and says what differs from the spec's text (Q1's interval
/// precision, Q15's view as a WITH clause, the LIMITs of Q2, Q3, Q10, Q18 and Q21).
pub const TPCH_QUERIES: [&str; 22] = [
    include_str!("../tpch/q01.sql"),
    include_str!("../tpch/q02.sql"),
    include_str!("../tpch/q03.sql"),
    include_str!("../tpch/q04.sql"),
    include_str!("../tpch/q05.sql"),
    include_str!("../tpch/q06.sql"),
    include_str!("../tpch/q07.sql"),
    include_str!("../tpch/q08.sql"),
    include_str!("../tpch/q09.sql"),
    include_str!("../tpch/q10.sql"),
    include_str!("../tpch/q11.sql"),
    include_str!("../tpch/q12.sql"),
    include_str!("../tpch/q13.sql"),
    include_str!("../tpch/q14.sql"),
    include_str!("../tpch/q15.sql"),
    include_str!("../tpch/q16.sql"),
    include_str!("../tpch/q17.sql"),
    include_str!("../tpch/q18.sql"),
    include_str!("../tpch/q19.sql"),
    include_str!("../tpch/q20.sql"),
    include_str!("../tpch/q21.sql"),
    include_str!("../tpch/q22.sql"),
];

/// The 22 queries as [`Query`]s named `Q1` .. `Q22`: the file's text (header comment
/// included, trailing white space dropped) for both engines; the description is the
/// header comment without its `-- ` markers.
fn tpch_queries() -> Vec<Query> {
    TPCH_QUERIES
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let name = format!("Q{}", i + 1);
            let mut header = text
                .lines()
                .map_while(|l| l.strip_prefix("--"))
                .map(str::trim);
            let title = header.next().unwrap_or_default();
            let title = title
                .strip_prefix(&format!("TPC-H {name}: "))
                .unwrap_or(title);
            let description = format!("{title}. {}", header.collect::<Vec<_>>().join(" "));
            let sql = text.trim_end().to_string();
            Query {
                name,
                description,
                duckdb_sql: sql.clone(),
                sql,
            }
        })
        .collect()
}

/// TPC-H at scale factor `sf` from the `tpchgen` crate (a port of the official dbgen:
/// the same rows): all 8 tables with every column, typed as the specification's DDL
/// (and dbgen's `dss.ddl`) says, in both engines: identifiers INTEGER (BIGINT where
/// the scale factor makes INTEGER overflow), money, quantities, discounts and taxes
/// DECIMAL(15,2), flags and codes CHAR(n), names and comments VARCHAR(n) or CHAR(n)
/// as the spec says, dates DATE, every column NOT NULL. Load order: region, nation,
/// supplier, customer, part, partsupp, orders, lineitem. Queries: the 22 of
/// [`TPCH_QUERIES`].
///
/// # Errors
/// A scale factor that is not a positive finite number, or the files cannot be written.
pub fn tpch(sf: f64, dir: &Path) -> Result<Workload> {
    if !(sf.is_finite() && sf > 0.0) {
        bail!("tpch: the scale factor must be a positive number, got {sf}");
    }
    anyhow::ensure!(
        CustomerGenerator::calculate_row_count(sf, 1, 1) > 0,
        "tpch: scale factor {sf} is too small (no customers)"
    );
    let params = json!({
        "workload": "tpch",
        "version": TPCH_VERSION,
        "generator": "tpchgen 2",
        "sf": ftext(sf),
    });
    let orderkey = tpch_key(OrderGenerator::make_order_key(
        OrderGenerator::calculate_row_count(sf, 1, 1),
    ));
    let partkey = tpch_key(PartGenerator::calculate_row_count(sf, 1, 1));
    let suppkey = tpch_key(SupplierGenerator::calculate_row_count(sf, 1, 1));
    let custkey = tpch_key(CustomerGenerator::calculate_row_count(sf, 1, 1));
    let specs = vec![
        tpch_spec(
            "region",
            &[
                ("r_regionkey", "INTEGER"),
                ("r_name", "CHAR(25)"),
                ("r_comment", "VARCHAR(152)"),
            ],
            Box::new(tpch_region),
        ),
        tpch_spec(
            "nation",
            &[
                ("n_nationkey", "INTEGER"),
                ("n_name", "CHAR(25)"),
                ("n_regionkey", "INTEGER"),
                ("n_comment", "VARCHAR(152)"),
            ],
            Box::new(tpch_nation),
        ),
        tpch_spec(
            "supplier",
            &[
                ("s_suppkey", suppkey),
                ("s_name", "CHAR(25)"),
                ("s_address", "VARCHAR(40)"),
                ("s_nationkey", "INTEGER"),
                ("s_phone", "CHAR(15)"),
                ("s_acctbal", DECIMAL),
                ("s_comment", "VARCHAR(101)"),
            ],
            Box::new(move |w| tpch_supplier(w, sf)),
        ),
        tpch_spec(
            "customer",
            &[
                ("c_custkey", custkey),
                ("c_name", "VARCHAR(25)"),
                ("c_address", "VARCHAR(40)"),
                ("c_nationkey", "INTEGER"),
                ("c_phone", "CHAR(15)"),
                ("c_acctbal", DECIMAL),
                ("c_mktsegment", "CHAR(10)"),
                ("c_comment", "VARCHAR(117)"),
            ],
            Box::new(move |w| tpch_customer(w, sf)),
        ),
        tpch_spec(
            "part",
            &[
                ("p_partkey", partkey),
                ("p_name", "VARCHAR(55)"),
                ("p_mfgr", "CHAR(25)"),
                ("p_brand", "CHAR(10)"),
                ("p_type", "VARCHAR(25)"),
                ("p_size", "INTEGER"),
                ("p_container", "CHAR(10)"),
                ("p_retailprice", DECIMAL),
                ("p_comment", "VARCHAR(23)"),
            ],
            Box::new(move |w| tpch_part(w, sf)),
        ),
        tpch_spec(
            "partsupp",
            &[
                ("ps_partkey", partkey),
                ("ps_suppkey", suppkey),
                ("ps_availqty", "INTEGER"),
                ("ps_supplycost", DECIMAL),
                ("ps_comment", "VARCHAR(199)"),
            ],
            Box::new(move |w| tpch_partsupp(w, sf)),
        ),
        tpch_spec(
            "orders",
            &[
                ("o_orderkey", orderkey),
                ("o_custkey", custkey),
                ("o_orderstatus", "CHAR(1)"),
                ("o_totalprice", DECIMAL),
                ("o_orderdate", "DATE"),
                ("o_orderpriority", "CHAR(15)"),
                ("o_clerk", "CHAR(15)"),
                ("o_shippriority", "INTEGER"),
                ("o_comment", "VARCHAR(79)"),
            ],
            Box::new(move |w| tpch_orders(w, sf)),
        ),
        tpch_spec(
            "lineitem",
            &[
                ("l_orderkey", orderkey),
                ("l_partkey", partkey),
                ("l_suppkey", suppkey),
                ("l_linenumber", "INTEGER"),
                ("l_quantity", DECIMAL),
                ("l_extendedprice", DECIMAL),
                ("l_discount", DECIMAL),
                ("l_tax", DECIMAL),
                ("l_returnflag", "CHAR(1)"),
                ("l_linestatus", "CHAR(1)"),
                ("l_shipdate", "DATE"),
                ("l_commitdate", "DATE"),
                ("l_receiptdate", "DATE"),
                ("l_shipinstruct", "CHAR(25)"),
                ("l_shipmode", "CHAR(10)"),
                ("l_comment", "VARCHAR(44)"),
            ],
            Box::new(move |w| tpch_lineitem(w, sf)),
        ),
    ];
    let sub = format!("tpch-sf{}", ftext(sf));
    let (tables, generate_s, reused) = materialize(dir, &sub, &params, specs)?;
    Ok(Workload {
        name: "tpch".into(),
        params,
        tables,
        queries: tpch_queries(),
        generate_s,
        reused,
    })
}

// ---------------------------------------------------------------------------------
// Loading into smrdb

/// `COPY`s the CSV of `t` into the smrdb table `t.name` (`WITH (FORMAT csv)`, a file
/// the server reads), checking that it loaded the rows the file holds; the seconds it
/// took.
fn copy_into(c: &mut postgres::Client, t: &Table) -> Result<f64> {
    let sql = format!(
        "COPY {} FROM '{}' WITH (FORMAT csv)",
        t.name,
        t.csv.display().to_string().replace('\'', "''")
    );
    let start = Instant::now();
    let n = c
        .execute(&sql, &[])
        .map_err(|e| anyhow::anyhow!("smrdb: COPY {}: {}", t.name, pg_error(&e)))?;
    let secs = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        n == t.rows,
        "smrdb: COPY {} loaded {n} rows, the file holds {}",
        t.name,
        t.rows
    );
    eprintln!("smrdb: loaded {n} {} in {secs:.2} s", t.name);
    Ok(secs)
}

/// Loads `w` into the smrdb behind `c`: drops the workload's tables (in reverse order)
/// when they exist, creates them, and `COPY`s every CSV (`WITH (FORMAT csv)`, a file
/// the server reads), checking that each `COPY` loaded the rows the file holds.
/// Returns the seconds each `COPY` took, per table in load order.
///
/// # Errors
/// An SQL error (with the server's message) or a row count that differs.
pub fn load_smrdb(c: &mut postgres::Client, w: &Workload) -> Result<Vec<(String, f64)>> {
    for t in w.tables.iter().rev() {
        c.batch_execute(&format!("DROP TABLE IF EXISTS {}", t.name))
            .map_err(|e| anyhow::anyhow!("smrdb: drop {}: {}", t.name, pg_error(&e)))?;
    }
    for t in &w.tables {
        c.batch_execute(&t.ddl)
            .map_err(|e| anyhow::anyhow!("smrdb: create {}: {}", t.name, pg_error(&e)))?;
    }
    let mut out = Vec::with_capacity(w.tables.len());
    for t in &w.tables {
        out.push((t.name.clone(), copy_into(c, t)?));
    }
    Ok(out)
}

/// [`load_smrdb`] that goes on past a table that fails: every table is dropped,
/// created and filled as far as it goes. Returns the seconds of each `COPY` that
/// loaded its file, and the error of every table that failed (drop, create, `COPY`
/// or row count), in load order.
pub fn load_smrdb_each(
    c: &mut postgres::Client,
    w: &Workload,
) -> (Vec<(String, f64)>, Vec<String>) {
    let mut errors = Vec::new();
    for t in w.tables.iter().rev() {
        if let Err(e) = c.batch_execute(&format!("DROP TABLE IF EXISTS {}", t.name)) {
            errors.push(format!("smrdb: drop {}: {}", t.name, pg_error(&e)));
        }
    }
    let mut out = Vec::with_capacity(w.tables.len());
    for t in &w.tables {
        if let Err(e) = c.batch_execute(&t.ddl) {
            errors.push(format!("smrdb: create {}: {}", t.name, pg_error(&e)));
            continue;
        }
        match copy_into(c, t) {
            Ok(secs) => out.push((t.name.clone(), secs)),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses CSV the way smrdb's COPY does (PostgreSQL's rules): a quote toggles
    /// quoting, a doubled quote inside quotes is one quote, delimiters inside quotes
    /// are data. Returns each record's fields.
    fn parse_csv(text: &str) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for line in text.lines() {
            let mut fields = Vec::new();
            let mut field = String::new();
            let mut in_quotes = false;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (in_quotes, c) {
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    (_, '"') => in_quotes = !in_quotes,
                    (false, ',') => fields.push(std::mem::take(&mut field)),
                    (_, c) => field.push(c),
                }
            }
            assert!(!in_quotes, "unterminated quote in {line:?}");
            fields.push(field);
            out.push(fields);
        }
        out
    }

    fn files(w: &Workload) -> Vec<Vec<u8>> {
        w.tables
            .iter()
            .map(|t| std::fs::read(&t.csv).unwrap())
            .collect()
    }

    fn lines(t: &Table) -> usize {
        std::fs::read_to_string(&t.csv).unwrap().lines().count()
    }

    #[test]
    fn example_is_deterministic_and_in_range() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let wa = example(10_000, 1000, 7, a.path()).unwrap();
        let wb = example(10_000, 1000, 7, b.path()).unwrap();
        assert_eq!(files(&wa), files(&wb));
        assert!(!wa.reused);
        assert_eq!(wa.queries.len(), 4);
        let purchases = std::fs::read_to_string(&wa.table("purchases").unwrap().csv).unwrap();
        for f in parse_csv(&purchases) {
            let cust: u64 = f[1].parse().unwrap();
            let month: u64 = f[2].parse().unwrap();
            let amount: f64 = f[3].parse().unwrap();
            assert!((1..=10_000).contains(&cust) && (1..=12).contains(&month));
            assert!((1.0..=1000.0).contains(&amount));
        }
        let customers = std::fs::read_to_string(&wa.table("customers").unwrap().csv).unwrap();
        let new = parse_csv(&customers)
            .iter()
            .filter(|f| f[2] == "true")
            .count();
        assert!((800..1200).contains(&new), "{new} new customers of 10000");
        // Reused as is on a second call; regenerated for other parameters.
        let again = example(10_000, 1000, 7, a.path()).unwrap();
        assert!(again.reused && again.generate_s == 0.0);
        assert_eq!(again.table("purchases").unwrap().rows, 1000);
        let other = example(10_000, 1000, 8, a.path()).unwrap();
        assert!(!other.reused);
        assert_ne!(files(&other), files(&wa));
    }

    #[test]
    fn reuse_notices_a_damaged_file() {
        let d = tempfile::tempdir().unwrap();
        let w = example(100, 100, 1, d.path()).unwrap();
        let purchases = &w.table("purchases").unwrap().csv;
        std::fs::write(purchases, "1,1,1,1.00,1\n").unwrap();
        let again = example(100, 100, 1, d.path()).unwrap();
        assert!(!again.reused);
        assert_eq!(lines(again.table("purchases").unwrap()), 100);
        assert_eq!(files(&again), files(&w));
    }

    fn opts(skew: f64, selectivity: f64, seed: u64) -> SyntheticOptions {
        SyntheticOptions {
            dim_rows: 1000,
            fact_rows: 100_000,
            selectivity,
            skew,
            seed,
        }
    }

    /// Counts of each dim id among the fact rows (index 0 unused).
    fn key_counts(w: &Workload, dim_rows: usize) -> Vec<u64> {
        let fact = std::fs::read_to_string(&w.table("fact").unwrap().csv).unwrap();
        let mut counts = vec![0u64; dim_rows + 1];
        for f in parse_csv(&fact) {
            let k: usize = f[1].parse().unwrap();
            assert!((1..=dim_rows).contains(&k), "key {k} out of range");
            counts[k] += 1;
        }
        counts
    }

    #[test]
    fn synthetic_is_deterministic_with_row_counts() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let wa = synthetic(&opts(1.2, 0.25, 3), a.path()).unwrap();
        let wb = synthetic(&opts(1.2, 0.25, 3), b.path()).unwrap();
        assert_eq!(files(&wa), files(&wb));
        let wc = synthetic(&opts(1.2, 0.25, 4), b.path()).unwrap();
        assert_ne!(files(&wa), files(&wc));
        for w in [&wa, &wc] {
            assert_eq!(w.table("dim").unwrap().rows, 1000);
            assert_eq!(lines(w.table("dim").unwrap()), 1000);
            assert_eq!(w.table("fact").unwrap().rows, 100_000);
            assert_eq!(lines(w.table("fact").unwrap()), 100_000);
            assert_eq!(w.queries.len(), 3);
            assert!(w.queries.iter().all(|q| q.sql.contains("d.flag < 250000")));
        }
        assert!(synthetic(&opts(-1.0, 0.5, 1), a.path()).is_err());
        assert!(synthetic(&opts(0.0, 1.5, 1), a.path()).is_err());
        assert!(synthetic(&opts(f64::NAN, 0.5, 1), a.path()).is_err());
    }

    #[test]
    fn zipf_skew_matches_the_formula() {
        let d = tempfile::tempdir().unwrap();
        let (n, draws) = (1000usize, 100_000f64);
        let s = 1.2;
        let w = synthetic(&opts(s, 0.5, 11), d.path()).unwrap();
        let counts = key_counts(&w, n);
        let h: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
        for k in [1usize, 2, 3, 10, 100] {
            let p = (k as f64).powf(-s) / h;
            let got = counts[k] as f64 / draws;
            // 5 standard deviations of a binomial proportion.
            let tol = 5.0 * (p * (1.0 - p) / draws).sqrt();
            assert!(
                (got - p).abs() <= tol,
                "key {k}: share {got}, expected {p} +- {tol}"
            );
        }
        // The hottest key gets far more than a uniform 1/n.
        assert!(counts[1] as f64 / draws > 100.0 / n as f64);
        // Uniform when the skew is 0: the top key stays near 1/n.
        let u = synthetic(&opts(0.0, 0.5, 11), d.path()).unwrap();
        let max = key_counts(&u, n).into_iter().max().unwrap() as f64 / draws;
        let p = 1.0 / n as f64;
        assert!(
            max < p + 6.0 * (p / draws).sqrt(),
            "uniform max share {max}"
        );
    }

    #[test]
    fn zipf_sampler_handles_edge_exponents() {
        let mut rng = Rng::new(1, 1);
        for (n, s) in [
            (1u64, 1.2),
            (2, 1.0),
            (5, 0.5),
            (1_000_000, 3.0),
            (10, 40.0),
        ] {
            let z = Zipf::new(n, s);
            for _ in 0..1000 {
                let k = z.sample(&mut rng);
                assert!((1..=n).contains(&k), "n={n} s={s}: {k}");
            }
        }
        // s = 1 (the harmonic case, through the helpers' series) over 1..=2:
        // P(1) = 2/3.
        let z = Zipf::new(2, 1.0);
        let ones = (0..60_000).filter(|_| z.sample(&mut rng) == 1).count() as f64;
        assert!((ones / 60_000.0 - 2.0 / 3.0).abs() < 0.01, "{ones}");
    }

    #[test]
    fn selectivity_is_close_to_the_target() {
        let d = tempfile::tempdir().unwrap();
        for sel in [0.01, 0.1, 0.5, 0.9] {
            let o = SyntheticOptions {
                dim_rows: 50_000,
                fact_rows: 1,
                selectivity: sel,
                skew: 0.0,
                seed: 5,
            };
            let w = synthetic(&o, d.path()).unwrap();
            let dim = std::fs::read_to_string(&w.table("dim").unwrap().csv).unwrap();
            let t = flag_threshold(sel);
            let pass = parse_csv(&dim)
                .iter()
                .filter(|f| f[1].parse::<u64>().unwrap() < t)
                .count() as f64
                / 50_000.0;
            let tol = 5.0 * (sel * (1.0 - sel) / 50_000.0).sqrt();
            assert!(
                (pass - sel).abs() <= tol,
                "selectivity {sel}: {pass} pass (+- {tol})"
            );
        }
        assert_eq!(flag_threshold(0.0), 0);
        assert_eq!(flag_threshold(1.0), FLAG_SCALE);
    }

    /// (name, type) of every column of a `CREATE TABLE name (c t NOT NULL, ...)`.
    fn ddl_columns(ddl: &str) -> Vec<(String, String)> {
        let inner = &ddl[ddl.find('(').unwrap() + 1..ddl.rfind(')').unwrap()];
        // Split at the commas between columns, not those of DECIMAL(15,2).
        let mut cols = Vec::new();
        let (mut depth, mut from) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    cols.push(&inner[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        cols.push(&inner[from..]);
        cols.iter()
            .map(|c| {
                let c = c.trim().trim_end_matches("NOT NULL").trim();
                let (name, ty) = c.split_once(' ').unwrap();
                (name.to_string(), ty.trim().to_string())
            })
            .collect()
    }

    #[test]
    fn tpch_sf_001_has_the_spec_cardinalities_columns_and_types() {
        let d = tempfile::tempdir().unwrap();
        let w = tpch(0.01, d.path()).unwrap();
        let rows = |t: &str| w.table(t).unwrap().rows;
        let names: Vec<&str> = w.tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "region", "nation", "supplier", "customer", "part", "partsupp", "orders",
                "lineitem"
            ]
        );
        assert_eq!(rows("region"), 5);
        assert_eq!(rows("nation"), 25);
        assert_eq!(rows("supplier"), 100);
        assert_eq!(rows("customer"), 1500);
        assert_eq!(rows("part"), 2000);
        assert_eq!(rows("partsupp"), 8000);
        assert_eq!(rows("orders"), 15_000);
        // 1..=7 lines per order, 4 on average.
        assert!(
            (55_000..65_000).contains(&rows("lineitem")),
            "{}",
            rows("lineitem")
        );
        // Every column of the spec (TPC-H 1.4.1), in its order, with its type.
        let want: &[(&str, &[(&str, &str)])] = &[
            (
                "region",
                &[
                    ("r_regionkey", "INTEGER"),
                    ("r_name", "CHAR(25)"),
                    ("r_comment", "VARCHAR(152)"),
                ],
            ),
            (
                "nation",
                &[
                    ("n_nationkey", "INTEGER"),
                    ("n_name", "CHAR(25)"),
                    ("n_regionkey", "INTEGER"),
                    ("n_comment", "VARCHAR(152)"),
                ],
            ),
            (
                "supplier",
                &[
                    ("s_suppkey", "INTEGER"),
                    ("s_name", "CHAR(25)"),
                    ("s_address", "VARCHAR(40)"),
                    ("s_nationkey", "INTEGER"),
                    ("s_phone", "CHAR(15)"),
                    ("s_acctbal", "DECIMAL(15,2)"),
                    ("s_comment", "VARCHAR(101)"),
                ],
            ),
            (
                "customer",
                &[
                    ("c_custkey", "INTEGER"),
                    ("c_name", "VARCHAR(25)"),
                    ("c_address", "VARCHAR(40)"),
                    ("c_nationkey", "INTEGER"),
                    ("c_phone", "CHAR(15)"),
                    ("c_acctbal", "DECIMAL(15,2)"),
                    ("c_mktsegment", "CHAR(10)"),
                    ("c_comment", "VARCHAR(117)"),
                ],
            ),
            (
                "part",
                &[
                    ("p_partkey", "INTEGER"),
                    ("p_name", "VARCHAR(55)"),
                    ("p_mfgr", "CHAR(25)"),
                    ("p_brand", "CHAR(10)"),
                    ("p_type", "VARCHAR(25)"),
                    ("p_size", "INTEGER"),
                    ("p_container", "CHAR(10)"),
                    ("p_retailprice", "DECIMAL(15,2)"),
                    ("p_comment", "VARCHAR(23)"),
                ],
            ),
            (
                "partsupp",
                &[
                    ("ps_partkey", "INTEGER"),
                    ("ps_suppkey", "INTEGER"),
                    ("ps_availqty", "INTEGER"),
                    ("ps_supplycost", "DECIMAL(15,2)"),
                    ("ps_comment", "VARCHAR(199)"),
                ],
            ),
            (
                "orders",
                &[
                    ("o_orderkey", "INTEGER"),
                    ("o_custkey", "INTEGER"),
                    ("o_orderstatus", "CHAR(1)"),
                    ("o_totalprice", "DECIMAL(15,2)"),
                    ("o_orderdate", "DATE"),
                    ("o_orderpriority", "CHAR(15)"),
                    ("o_clerk", "CHAR(15)"),
                    ("o_shippriority", "INTEGER"),
                    ("o_comment", "VARCHAR(79)"),
                ],
            ),
            (
                "lineitem",
                &[
                    ("l_orderkey", "INTEGER"),
                    ("l_partkey", "INTEGER"),
                    ("l_suppkey", "INTEGER"),
                    ("l_linenumber", "INTEGER"),
                    ("l_quantity", "DECIMAL(15,2)"),
                    ("l_extendedprice", "DECIMAL(15,2)"),
                    ("l_discount", "DECIMAL(15,2)"),
                    ("l_tax", "DECIMAL(15,2)"),
                    ("l_returnflag", "CHAR(1)"),
                    ("l_linestatus", "CHAR(1)"),
                    ("l_shipdate", "DATE"),
                    ("l_commitdate", "DATE"),
                    ("l_receiptdate", "DATE"),
                    ("l_shipinstruct", "CHAR(25)"),
                    ("l_shipmode", "CHAR(10)"),
                    ("l_comment", "VARCHAR(44)"),
                ],
            ),
        ];
        for (name, cols) in want {
            let t = w.table(name).unwrap();
            let got = ddl_columns(&t.ddl);
            let want: Vec<(String, String)> = cols
                .iter()
                .map(|(c, ty)| (c.to_string(), ty.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(
                t.ddl, t.duckdb_ddl,
                "{name}: both engines get the spec's DDL"
            );
            assert_eq!(lines(t) as u64, t.rows, "{name}");
            // Every field parses back; VARCHAR(n) / CHAR(n) values fit; DECIMAL(15,2)
            // values have at most 2 decimals; dates are YYYY-MM-DD.
            let text = std::fs::read_to_string(&t.csv).unwrap();
            for f in parse_csv(&text) {
                assert_eq!(f.len(), got.len(), "{name}: {f:?}");
                for (v, (c, ty)) in f.iter().zip(&got) {
                    if let Some(n) = ty
                        .strip_prefix("VARCHAR(")
                        .or_else(|| ty.strip_prefix("CHAR("))
                    {
                        let n: usize = n.trim_end_matches(')').parse().unwrap();
                        assert!(v.chars().count() <= n, "{c} {ty}: {v:?}");
                    } else if ty == "DECIMAL(15,2)" {
                        let x: f64 = v.parse().unwrap();
                        assert!(x.abs() < 1e13, "{c}: {v}");
                        assert!(
                            v.split_once('.').is_none_or(|(_, d)| d.len() <= 2),
                            "{c}: {v}"
                        );
                    } else if ty == "DATE" {
                        assert!(v.len() == 10 && v.as_bytes()[4] == b'-', "{c}: {v}");
                    } else {
                        v.parse::<i32>().unwrap_or_else(|_| panic!("{c}: {v}"));
                    }
                }
            }
        }
        // Comments with commas exist and come back whole.
        let customer = std::fs::read_to_string(&w.table("customer").unwrap().csv).unwrap();
        let parsed = parse_csv(&customer);
        assert!(parsed.iter().any(|f| f[7].contains(',')));
        let first = CustomerGenerator::new(0.01, 1, 1).iter().next().unwrap();
        assert_eq!(parsed[0][7], first.c_comment);
        assert_eq!(parsed[0][2], first.c_address.to_string());
        // Deterministic, and reused.
        let e = tempfile::tempdir().unwrap();
        assert_eq!(files(&w), files(&tpch(0.01, e.path()).unwrap()));
        assert!(tpch(0.01, d.path()).unwrap().reused);
        assert!(tpch(0.0, d.path()).is_err());
        assert!(tpch(f64::INFINITY, d.path()).is_err());
    }

    #[test]
    fn tpch_keys_widen_only_where_integer_overflows() {
        assert_eq!(tpch_key(i64::from(i32::MAX)), "INTEGER");
        assert_eq!(tpch_key(i64::from(i32::MAX) + 1), "BIGINT");
        // o_orderkey is sparse (4x the orders): INTEGER up to SF ~357.
        let max =
            |sf: f64| OrderGenerator::make_order_key(OrderGenerator::calculate_row_count(sf, 1, 1));
        assert_eq!(tpch_key(max(300.0)), "INTEGER");
        assert_eq!(tpch_key(max(1000.0)), "BIGINT");
    }

    /// Words of `sql` outside string literals and comments, lower case.
    fn words(sql: &str) -> Vec<String> {
        let mut out = Vec::new();
        for line in sql.lines() {
            let line = line.split("--").next().unwrap_or_default();
            let mut in_str = false;
            let mut word = String::new();
            for c in line.chars().chain([' ']) {
                if c == '\'' {
                    in_str = !in_str;
                }
                if !in_str && (c.is_ascii_alphanumeric() || c == '_') {
                    word.push(c.to_ascii_lowercase());
                } else if !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
            }
        }
        out
    }

    #[test]
    fn tpch_queries_use_only_columns_and_tables_the_data_has() {
        let d = tempfile::tempdir().unwrap();
        let w = tpch(0.01, d.path()).unwrap();
        assert_eq!(w.queries.len(), 22);
        let mut columns = std::collections::BTreeSet::new();
        for t in &w.tables {
            for (c, _) in ddl_columns(&t.ddl) {
                columns.insert(c);
            }
        }
        let tables: Vec<&str> = w.tables.iter().map(|t| t.name.as_str()).collect();
        // Output aliases and derived-table column names of the spec's text that look
        // like columns.
        let aliases = ["l_year", "o_year", "c_count", "c_orders"];
        let prefixes = ["r_", "n_", "s_", "c_", "p_", "ps_", "o_", "l_"];
        let mut used = std::collections::BTreeSet::new();
        for (i, q) in w.queries.iter().enumerate() {
            assert_eq!(q.name, format!("Q{}", i + 1));
            assert_eq!(
                q.sql, q.duckdb_sql,
                "{}: both engines get the same text",
                q.name
            );
            let head = format!("-- TPC-H Q{}: ", i + 1);
            assert!(q.sql.starts_with(&head), "{}: {:?}", q.name, &q.sql[..40]);
            assert!(!q.description.is_empty() && !q.description.starts_with("TPC-H"));
            let ws = words(&q.sql);
            for word in &ws {
                if prefixes.iter().any(|p| word.starts_with(p)) && !aliases.contains(&word.as_str())
                {
                    assert!(columns.contains(word), "{}: no column {word}", q.name);
                    used.insert(word.clone());
                }
            }
            // The tables after FROM (or after a comma in a FROM list) exist: every word
            // that names a table of TPC-H is one of ours.
            for t in [
                "part", "supplier", "partsupp", "customer", "orders", "lineitem", "nation",
                "region",
            ] {
                if ws.iter().any(|x| x == t) {
                    assert!(tables.contains(&t));
                }
            }
        }
        // Nearly every column is used by some query (the comments of part, partsupp,
        // nation, region and lineitem, and a few more, are not).
        assert!(used.len() > 40, "{} columns used", used.len());
        // Q15 is one statement with a WITH clause, no view.
        assert!(w.queries[14].sql.contains("with revenue0"));
        assert!(!w.queries[14].sql.to_lowercase().contains("create view"));
        // The LIMITs of the spec's row counts.
        for (q, n) in [(2, 100), (3, 10), (10, 20), (18, 100), (21, 100)] {
            assert!(
                w.queries[q - 1].sql.contains(&format!("limit\n\t{n};")),
                "Q{q}"
            );
        }
        // Validation parameters only: no qgen placeholder is left.
        for q in &w.queries {
            let body: String = q.sql.lines().filter(|l| !l.starts_with("--")).collect();
            assert!(!body.contains("':") && !body.contains(" :"), "{}", q.name);
        }
    }

    #[test]
    fn csv_quoting_round_trips() {
        let cases = [
            "plain",
            "final deposits, carefully",
            "say \"hi\", then leave",
            "",
            " leading space",
            "trailing space ",
            "two\nlines",
        ];
        let mut row = CsvRow::new();
        let mut out = Vec::new();
        row.raw(1);
        for c in cases.iter().filter(|c| !c.contains('\n')) {
            row.text(c);
        }
        row.end(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let parsed = parse_csv(&text);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0][0], "1");
        let want: Vec<&str> = cases
            .iter()
            .copied()
            .filter(|c| !c.contains('\n'))
            .collect();
        assert_eq!(parsed[0][1..], want[..]);
        // An empty text is quoted (an unquoted empty field would be NULL).
        assert!(text.contains(",\"\","));
        // Line breaks are quoted too (a record then spans lines).
        let mut s = String::new();
        push_csv_text(&mut s, "two\nlines");
        assert_eq!(s, "\"two\nlines\"");
    }
}
