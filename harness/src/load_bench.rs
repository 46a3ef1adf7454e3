//! `smrdb-bench load`: COPY throughput into a real local cluster, the round-robin
//! balance it produced, and a few queries over the loaded table (the design's example
//! among them).
//!
//! It generates a CSV of `rows` people, starts `smrdb cluster` (the `smrdb` binary next
//! to this one), loads it with `COPY people FROM 'file' WITH (FORMAT csv)` through the
//! Postgres wire protocol, reads `smrdb_tstores`, runs the queries, and stops the
//! cluster.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::cluster::{Cluster, ClusterSpec};
use crate::measure::pg_rows;

/// Options of a load run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fabric name (shm, tcp, verbs).
    pub fabric: String,
    /// Nodes.
    pub nodes: u32,
    /// Tstores per node.
    pub tstores: u32,
    /// Rows to load.
    pub rows: u64,
    /// Data directory (durable writes) or none (volatile).
    pub data_dir: Option<PathBuf>,
}

/// One query and its answer.
#[derive(Debug, Serialize)]
pub struct QueryResult {
    /// The SQL.
    pub sql: String,
    /// Rows returned, as text.
    pub rows: Vec<Vec<String>>,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// What a load run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Fabric.
    pub fabric: String,
    /// Nodes.
    pub nodes: u32,
    /// Tstores per node.
    pub tstores: u32,
    /// Rows loaded.
    pub rows: u64,
    /// Whether writes were durable (a data dir).
    pub durable: bool,
    /// Wall time of the COPY, seconds.
    pub copy_s: f64,
    /// Rows per second.
    pub rows_per_s: f64,
    /// Rows per Tstore after the load, in Tstore id order.
    pub rows_per_tstore: Vec<u64>,
    /// Queries run after the load.
    pub queries: Vec<QueryResult>,
}

const NAMES: [&str; 8] = [
    "SMITH", "JONES", "LEE", "BROWN", "GARCIA", "MILLER", "DAVIS", "WILSON",
];

/// Writes the people CSV: id, name, age, score, day.
fn write_csv(path: &Path, rows: u64) -> Result<()> {
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    for i in 0..rows {
        writeln!(
            w,
            "{i},{},{},{:.3},2024-{:02}-{:02}",
            NAMES[(i % 8) as usize],
            18 + (i * 7) % 60,
            (i % 1000) as f64 / 7.0,
            1 + i % 12,
            1 + i % 28
        )?;
    }
    w.flush()?;
    Ok(())
}

/// Runs the load experiment.
///
/// # Errors
/// A cluster that does not start, SQL errors.
pub fn run(o: &Options) -> Result<Report> {
    let tmp = std::env::temp_dir().join(format!("smrdb-load-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let csv = tmp.join("people.csv");
    write_csv(&csv, o.rows)?;
    let mut spec = ClusterSpec::new(&o.fabric, o.nodes, o.tstores);
    spec.data_dir = o.data_dir.clone();
    let cluster = Cluster::start_local(&spec, &tmp.join("logs"))?;
    let mut c = cluster.client()?;
    c.batch_execute(
        "DROP TABLE IF EXISTS people; \
         CREATE TABLE people (id BIGINT, name TEXT, age INT, score DOUBLE PRECISION, day DATE)",
    )?;
    let t = Instant::now();
    let n = c.execute(
        &format!("COPY people FROM '{}' WITH (FORMAT csv)", csv.display()),
        &[],
    )?;
    let copy_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(n == o.rows, "COPY loaded {n} rows, expected {}", o.rows);
    let balance = pg_rows(
        &mut c,
        "SELECT tstore, rows FROM smrdb_tstores WHERE \"table\" = 'people' ORDER BY tstore",
    )
    .map_err(|e| anyhow::anyhow!("reading smrdb_tstores: {e}"))?;
    let rows_per_tstore = balance
        .iter()
        .map(|r| r[1].parse::<u64>().unwrap_or(0))
        .collect::<Vec<_>>();
    let mut queries = Vec::new();
    for sql in [
        "SELECT count(*) FROM people WHERE name = 'SMITH' AND age > 35",
        "SELECT name, count(*), avg(age), max(score) FROM people GROUP BY name ORDER BY name",
        "SELECT day, count(*) FROM people WHERE day BETWEEN DATE '2024-07-01' AND DATE '2024-07-05' GROUP BY day ORDER BY day",
    ] {
        let t = Instant::now();
        let rows = pg_rows(&mut c, sql).map_err(|e| anyhow::anyhow!("{sql}: {e}"))?;
        queries.push(QueryResult {
            sql: sql.into(),
            rows,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    drop(c);
    cluster.stop()?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(Report {
        fabric: o.fabric.clone(),
        nodes: o.nodes,
        tstores: o.tstores,
        rows: o.rows,
        durable: o.data_dir.is_some(),
        copy_s,
        rows_per_s: o.rows as f64 / copy_s,
        rows_per_tstore,
        queries,
    })
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut s = format!(
        "### load: {} rows into a {}x{} cluster on `{}` ({})\n\nCOPY: {:.2} s = {:.0} rows/s; rows per Tstore: {:?}\n\n",
        r.rows,
        r.nodes,
        r.tstores,
        r.fabric,
        if r.durable { "durable" } else { "in memory" },
        r.copy_s,
        r.rows_per_s,
        r.rows_per_tstore
    );
    for q in &r.queries {
        s += &format!("```sql\n{}\n```\n({:.3} s)\n\n", q.sql, q.seconds);
        for row in &q.rows {
            s += &format!("    {}\n", row.join(" | "));
        }
        s += "\n";
    }
    s
}
