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
//! * [`tpch`]: TPC-H's `customer`, `orders`, `lineitem`, `supplier`, `nation` and
//!   `region` from the `tpchgen` crate (the official dbgen's data), with TPC-H Q3, Q5,
//!   Q7, Q10 and Q12 in the SQL smrdb accepts.
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
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, RegionGenerator,
    SupplierGenerator,
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

/// Bumped whenever the TPC-H CSVs change (columns, formatting).
const TPCH_VERSION: u32 = 1;

/// `region(r_regionkey, r_name)`.
fn tpch_region(w: &mut dyn Write) -> Result<u64> {
    let mut row = CsvRow::new();
    let mut n = 0;
    for r in RegionGenerator::default().iter() {
        row.raw(r.r_regionkey).text(r.r_name).end(w)?;
        n += 1;
    }
    Ok(n)
}

/// `nation(n_nationkey, n_name, n_regionkey)`.
fn tpch_nation(w: &mut dyn Write) -> Result<u64> {
    let mut row = CsvRow::new();
    let mut n = 0;
    for x in NationGenerator::default().iter() {
        row.raw(x.n_nationkey)
            .text(x.n_name)
            .raw(x.n_regionkey)
            .end(w)?;
        n += 1;
    }
    Ok(n)
}

/// `supplier(s_suppkey, s_nationkey)`.
fn tpch_supplier(w: &mut dyn Write, sf: f64) -> Result<u64> {
    let mut row = CsvRow::new();
    let mut n = 0;
    for s in SupplierGenerator::new(sf, 1, 1).iter() {
        row.raw(s.s_suppkey).raw(s.s_nationkey).end(w)?;
        n += 1;
    }
    Ok(n)
}

/// Every column of `customer` (Q10 returns them all).
fn tpch_customer(w: &mut dyn Write, sf: f64) -> Result<u64> {
    let mut row = CsvRow::new();
    let mut n = 0;
    for c in CustomerGenerator::new(sf, 1, 1).iter() {
        row.raw(c.c_custkey)
            .text(c.c_name)
            .text(c.c_address)
            .raw(c.c_nationkey)
            .text(c.c_phone)
            .raw(c.c_acctbal)
            .text(c.c_mktsegment)
            .text(c.c_comment)
            .end(w)?;
        n += 1;
    }
    Ok(n)
}

/// `orders(o_orderkey, o_custkey, o_orderdate, o_orderpriority, o_shippriority)`.
fn tpch_orders(w: &mut dyn Write, sf: f64) -> Result<u64> {
    let mut row = CsvRow::new();
    let mut n = 0;
    for o in OrderGenerator::new(sf, 1, 1).iter() {
        row.raw(o.o_orderkey)
            .raw(o.o_custkey)
            .raw(o.o_orderdate)
            .text(o.o_orderpriority)
            .raw(o.o_shippriority)
            .end(w)?;
        n += 1;
    }
    Ok(n)
}

/// `lineitem(l_orderkey, l_suppkey, l_extendedprice, l_discount, l_returnflag,
/// l_shipdate, l_commitdate, l_receiptdate, l_shipmode)`.
fn tpch_lineitem(w: &mut dyn Write, sf: f64) -> Result<u64> {
    let mut row = CsvRow::new();
    let mut n = 0;
    for l in LineItemGenerator::new(sf, 1, 1).iter() {
        row.raw(l.l_orderkey)
            .raw(l.l_suppkey)
            .raw(l.l_extendedprice)
            .raw(l.l_discount)
            .text(l.l_returnflag)
            .raw(l.l_shipdate)
            .raw(l.l_commitdate)
            .raw(l.l_receiptdate)
            .text(l.l_shipmode)
            .end(w)?;
        n += 1;
    }
    Ok(n)
}

/// A TPC-H table: name, columns as (name, smrdb type, DuckDB type), writer.
fn tpch_spec<'a>(name: &'static str, cols: &[(&str, &str, &str)], fill: Fill<'a>) -> TableSpec<'a> {
    let list = |duck: bool| {
        cols.iter()
            .map(|(c, s, d)| format!("{c} {} NOT NULL", if duck { d } else { s }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    TableSpec {
        name,
        ddl: format!("CREATE TABLE {name} ({})", list(false)),
        duckdb_ddl: format!("CREATE TABLE {name} ({})", list(true)),
        fill,
    }
}

/// Key columns: BIGINT in both engines (o_orderkey passes 2^31 from SF ~350).
const KEY: (&str, &str) = ("BIGINT", "BIGINT");
/// Money and fractions (TPC-H's DECIMAL(15,2)), as DOUBLE PRECISION.
const MONEY: (&str, &str) = ("DOUBLE PRECISION", "DOUBLE");
/// Strings.
const TEXT: (&str, &str) = ("TEXT", "VARCHAR");
/// Dates.
const DATE: (&str, &str) = ("DATE", "DATE");
/// 32-bit integers.
const INT: (&str, &str) = ("INT", "INTEGER");

/// TPC-H's Q3 (shipping priority), Q5 (local supplier volume), Q7 (volume shipping),
/// Q10 (returned items) and Q12 (shipping modes) with the specification's default
/// substitution parameters, in the SQL smrdb accepts.
fn tpch_queries() -> Vec<Query> {
    let revenue = "sum(l_extendedprice * (1 - l_discount)) AS revenue";
    let same = |name: &str, description: &str, sql: String| Query {
        name: name.into(),
        description: description.into(),
        duckdb_sql: sql.clone(),
        sql,
    };
    let q3 = format!(
        "SELECT l_orderkey, {revenue}, o_orderdate, o_shippriority \
         FROM customer, orders, lineitem \
         WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey AND l_orderkey = o_orderkey \
         AND o_orderdate < DATE '1995-03-15' AND l_shipdate > DATE '1995-03-15' \
         GROUP BY l_orderkey, o_orderdate, o_shippriority \
         ORDER BY revenue DESC, o_orderdate LIMIT 10"
    );
    let q5 = |end: &str| {
        format!(
            "SELECT n_name, {revenue} \
             FROM customer, orders, lineitem, supplier, nation, region \
             WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND l_suppkey = s_suppkey \
             AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey \
             AND n_regionkey = r_regionkey AND r_name = 'ASIA' \
             AND o_orderdate >= DATE '1994-01-01' AND o_orderdate < {end} \
             GROUP BY n_name ORDER BY revenue DESC"
        )
    };
    let q7 = |year: &str| {
        format!(
            "SELECT n1.n_name AS supp_nation, n2.n_name AS cust_nation, {year} AS l_year, \
             sum(l_extendedprice * (1 - l_discount)) AS revenue \
             FROM supplier, lineitem, orders, customer, nation n1, nation n2 \
             WHERE s_suppkey = l_suppkey AND o_orderkey = l_orderkey AND c_custkey = o_custkey \
             AND s_nationkey = n1.n_nationkey AND c_nationkey = n2.n_nationkey \
             AND ((n1.n_name = 'FRANCE' AND n2.n_name = 'GERMANY') \
             OR (n1.n_name = 'GERMANY' AND n2.n_name = 'FRANCE')) \
             AND l_shipdate BETWEEN DATE '1995-01-01' AND DATE '1996-12-31' \
             GROUP BY supp_nation, cust_nation, l_year \
             ORDER BY supp_nation, cust_nation, l_year"
        )
    };
    let q10 = |end: &str| {
        format!(
            "SELECT c_custkey, c_name, {revenue}, c_acctbal, n_name, c_address, c_phone, \
             c_comment \
             FROM customer, orders, lineitem, nation \
             WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey \
             AND o_orderdate >= DATE '1993-10-01' AND o_orderdate < {end} \
             AND l_returnflag = 'R' AND c_nationkey = n_nationkey \
             GROUP BY c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment \
             ORDER BY revenue DESC LIMIT 20"
        )
    };
    let q12 = |end: &str| {
        format!(
            "SELECT l_shipmode, \
             sum(CASE WHEN o_orderpriority = '1-URGENT' OR o_orderpriority = '2-HIGH' \
             THEN 1 ELSE 0 END) AS high_line_count, \
             sum(CASE WHEN o_orderpriority <> '1-URGENT' AND o_orderpriority <> '2-HIGH' \
             THEN 1 ELSE 0 END) AS low_line_count \
             FROM orders, lineitem \
             WHERE o_orderkey = l_orderkey AND l_shipmode IN ('MAIL', 'SHIP') \
             AND l_commitdate < l_receiptdate AND l_shipdate < l_commitdate \
             AND l_receiptdate >= DATE '1994-01-01' AND l_receiptdate < {end} \
             GROUP BY l_shipmode ORDER BY l_shipmode"
        )
    };
    vec![
        same(
            "Q3",
            "shipping priority: the 10 unshipped orders of segment BUILDING with the \
             highest revenue on 1995-03-15 (3 tables)",
            q3,
        ),
        Query {
            name: "Q5".into(),
            description: "local supplier volume: revenue per nation of region ASIA in 1994 \
                          through customers and suppliers of the same nation (6 tables, a \
                          cyclic join graph); smrdb has no date + interval arithmetic, so the \
                          end date is the literal DATE '1995-01-01' (DuckDB runs the \
                          spec's DATE '1994-01-01' + INTERVAL '1' YEAR)"
                .into(),
            sql: q5("DATE '1995-01-01'"),
            duckdb_sql: q5("DATE '1994-01-01' + INTERVAL '1' YEAR"),
        },
        Query {
            name: "Q7".into(),
            description: "volume shipping between FRANCE and GERMANY per year, 1995-1996 \
                          (6 tables, nation twice); smrdb has neither subqueries nor \
                          EXTRACT: the spec's derived table is inlined and the year is \
                          CASE WHEN l_shipdate < DATE '1996-01-01' THEN 1995 ELSE 1996 END, \
                          exact under the BETWEEN filter (DuckDB runs \
                          extract(year FROM l_shipdate))"
                .into(),
            sql: q7("CASE WHEN l_shipdate < DATE '1996-01-01' THEN 1995 ELSE 1996 END"),
            duckdb_sql: q7("extract(year FROM l_shipdate)"),
        },
        Query {
            name: "Q10".into(),
            description: "returned items: the 20 customers with the highest revenue lost to \
                          returns in 1993-Q4 (4 tables); end date as a literal (DuckDB: \
                          DATE '1993-10-01' + INTERVAL '3' MONTH)"
                .into(),
            sql: q10("DATE '1994-01-01'"),
            duckdb_sql: q10("DATE '1993-10-01' + INTERVAL '3' MONTH"),
        },
        Query {
            name: "Q12".into(),
            description: "shipping modes and order priority: late MAIL / SHIP lines received \
                          in 1994, high vs low priority (2 tables, sum(CASE)); end date as a \
                          literal (DuckDB: DATE '1994-01-01' + INTERVAL '1' YEAR)"
                .into(),
            sql: q12("DATE '1995-01-01'"),
            duckdb_sql: q12("DATE '1994-01-01' + INTERVAL '1' YEAR"),
        },
    ]
}

/// TPC-H at scale factor `sf` from the `tpchgen` crate (a port of the official dbgen:
/// the same rows), six tables with only the columns the queries read, fewer columns
/// being a faster load and less memory in both engines:
///
/// * `region(r_regionkey, r_name)`, `nation(n_nationkey, n_name, n_regionkey)`;
/// * `supplier(s_suppkey, s_nationkey)`;
/// * `customer`: all 8 columns (Q10 returns name, address, phone, comment);
/// * `orders(o_orderkey, o_custkey, o_orderdate, o_orderpriority, o_shippriority)`;
/// * `lineitem(l_orderkey, l_suppkey, l_extendedprice, l_discount, l_returnflag,
///   l_shipdate, l_commitdate, l_receiptdate, l_shipmode)`.
///
/// Keys are BIGINT, money and discounts DOUBLE PRECISION (the spec's DECIMAL(15,2);
/// sums then differ in the last bits between engines), dates DATE, strings TEXT, every
/// column NOT NULL. Queries: Q3, Q5, Q7, Q10 and Q12 with the specification's default
/// substitution parameters, rewritten where smrdb lacks a feature (see each
/// [`Query::description`]).
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
    let specs = vec![
        tpch_spec(
            "region",
            &[("r_regionkey", KEY.0, KEY.1), ("r_name", TEXT.0, TEXT.1)],
            Box::new(tpch_region),
        ),
        tpch_spec(
            "nation",
            &[
                ("n_nationkey", KEY.0, KEY.1),
                ("n_name", TEXT.0, TEXT.1),
                ("n_regionkey", KEY.0, KEY.1),
            ],
            Box::new(tpch_nation),
        ),
        tpch_spec(
            "supplier",
            &[("s_suppkey", KEY.0, KEY.1), ("s_nationkey", KEY.0, KEY.1)],
            Box::new(move |w| tpch_supplier(w, sf)),
        ),
        tpch_spec(
            "customer",
            &[
                ("c_custkey", KEY.0, KEY.1),
                ("c_name", TEXT.0, TEXT.1),
                ("c_address", TEXT.0, TEXT.1),
                ("c_nationkey", KEY.0, KEY.1),
                ("c_phone", TEXT.0, TEXT.1),
                ("c_acctbal", MONEY.0, MONEY.1),
                ("c_mktsegment", TEXT.0, TEXT.1),
                ("c_comment", TEXT.0, TEXT.1),
            ],
            Box::new(move |w| tpch_customer(w, sf)),
        ),
        tpch_spec(
            "orders",
            &[
                ("o_orderkey", KEY.0, KEY.1),
                ("o_custkey", KEY.0, KEY.1),
                ("o_orderdate", DATE.0, DATE.1),
                ("o_orderpriority", TEXT.0, TEXT.1),
                ("o_shippriority", INT.0, INT.1),
            ],
            Box::new(move |w| tpch_orders(w, sf)),
        ),
        tpch_spec(
            "lineitem",
            &[
                ("l_orderkey", KEY.0, KEY.1),
                ("l_suppkey", KEY.0, KEY.1),
                ("l_extendedprice", MONEY.0, MONEY.1),
                ("l_discount", MONEY.0, MONEY.1),
                ("l_returnflag", TEXT.0, TEXT.1),
                ("l_shipdate", DATE.0, DATE.1),
                ("l_commitdate", DATE.0, DATE.1),
                ("l_receiptdate", DATE.0, DATE.1),
                ("l_shipmode", TEXT.0, TEXT.1),
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
        out.push((t.name.clone(), secs));
    }
    Ok(out)
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

    #[test]
    fn tpch_sf_001_has_the_spec_cardinalities() {
        let d = tempfile::tempdir().unwrap();
        let w = tpch(0.01, d.path()).unwrap();
        let rows = |t: &str| w.table(t).unwrap().rows;
        assert_eq!(rows("customer"), 1500);
        assert_eq!(rows("orders"), 15_000);
        assert_eq!(rows("nation"), 25);
        assert_eq!(rows("region"), 5);
        assert_eq!(rows("supplier"), 100);
        // 1..=7 lines per order, 4 on average.
        assert!(
            (55_000..65_000).contains(&rows("lineitem")),
            "{}",
            rows("lineitem")
        );
        let cols = |t: &str| t.split('(').nth(1).unwrap().split(',').count();
        for t in &w.tables {
            assert_eq!(lines(t) as u64, t.rows, "{}", t.name);
            assert_eq!(cols(&t.ddl), cols(&t.duckdb_ddl), "{}", t.name);
            let text = std::fs::read_to_string(&t.csv).unwrap();
            for f in parse_csv(&text) {
                assert_eq!(f.len(), cols(&t.ddl), "{}: {f:?}", t.name);
            }
        }
        // Comments with commas exist and come back whole.
        let customer = std::fs::read_to_string(&w.table("customer").unwrap().csv).unwrap();
        let parsed = parse_csv(&customer);
        assert!(parsed.iter().any(|f| f[7].contains(',')));
        let first = CustomerGenerator::new(0.01, 1, 1).iter().next().unwrap();
        assert_eq!(parsed[0][7], first.c_comment);
        assert_eq!(parsed[0][2], first.c_address.to_string());
        let orders = std::fs::read_to_string(&w.table("orders").unwrap().csv).unwrap();
        let o = parse_csv(&orders);
        assert!(
            o[0][2].len() == 10 && o[0][2].as_bytes()[4] == b'-',
            "{:?}",
            o[0]
        );
        // Deterministic, and reused.
        let e = tempfile::tempdir().unwrap();
        assert_eq!(files(&w), files(&tpch(0.01, e.path()).unwrap()));
        assert!(tpch(0.01, d.path()).unwrap().reused);
        assert!(tpch(0.0, d.path()).is_err());
        assert!(tpch(f64::INFINITY, d.path()).is_err());
        assert_eq!(w.queries.len(), 5);
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
