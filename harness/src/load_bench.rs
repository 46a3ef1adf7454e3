//! `smrdb-bench load`: COPY throughput into a real local cluster, the round-robin
//! balance it produced, and a few queries over the loaded table (the design's example
//! among them).
//!
//! It generates a CSV of `rows` people, starts `smrdb cluster` (the `smrdb` binary next
//! to this one), loads it with `COPY people FROM 'file' WITH (FORMAT csv)` through the
//! Postgres wire protocol, reads `smrdb_tstores`, runs the queries, and stops the
//! cluster.

use std::io::{BufWriter, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

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

/// A running `smrdb cluster`, stopped (SIGINT, then SIGKILL) when dropped.
pub(crate) struct Cluster(pub(crate) Child);

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: kill with a valid pid and signal has no memory-safety preconditions.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `smrdb` binary next to this one.
pub(crate) fn smrdb_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("smrdb");
    if !bin.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p smrdb-node`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Connects to the cluster's front end, retrying for `within`.
pub(crate) fn connect(port: u16, within: Duration) -> Result<postgres::Client> {
    let t = Instant::now();
    loop {
        match postgres::Client::connect(
            &format!("host=127.0.0.1 port={port} user=smrdb dbname=smrdb"),
            postgres::NoTls,
        ) {
            Ok(c) => return Ok(c),
            Err(e) if t.elapsed() > within => bail!("cluster did not accept connections: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn text_rows(c: &mut postgres::Client, sql: &str) -> Result<Vec<Vec<String>>> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).with_context(|| sql.to_string())? {
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

/// Runs the load experiment.
///
/// # Errors
/// A cluster that does not start, SQL errors.
pub fn run(o: &Options) -> Result<Report> {
    let tmp = std::env::temp_dir().join(format!("smrdb-load-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let csv = tmp.join("people.csv");
    write_csv(&csv, o.rows)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut cmd = Command::new(smrdb_binary()?);
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
    if let Some(d) = &o.data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    let _cluster = Cluster(cmd.spawn().context("start smrdb cluster")?);
    let mut c = connect(port, Duration::from_secs(60))?;
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
    let balance = text_rows(
        &mut c,
        "SELECT tstore, rows FROM smrdb_tstores WHERE \"table\" = 'people' ORDER BY tstore",
    )?;
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
        let rows = text_rows(&mut c, sql)?;
        queries.push(QueryResult {
            sql: sql.into(),
            rows,
            seconds: t.elapsed().as_secs_f64(),
        });
    }
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
