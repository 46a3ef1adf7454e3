//! `smrdb_harness::cluster` and `smrdb_harness::measure` against real local clusters.
//!
//! Starts a 2 nodes x 2 Tstores `shm` cluster with the SMR router and then with the
//! naive one (the release `smrdb` binary, built by `cargo build --release -p
//! smrdb-node`, found from this test executable or `$SMRDB_BIN`), runs the same join
//! on both through [`time_query`], and checks the answer, that the routers counted
//! wire bytes, that naive broadcasts write more than SMR, that the node logs are in the
//! log directory, and that [`Cluster::stop`] leaves no process and no listener behind.

use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use smrdb_harness::cluster::{Cluster, ClusterSpec};
use smrdb_harness::measure::{pg_rows, router_totals, time_query, QueryTiming};
use smrdb_router::Mode;

/// Rows of `a` (keys 0..A_ROWS, each once).
const A_ROWS: u64 = 1000;
/// Rows of `b` (keys 0..500, each B_ROWS / 500 times).
const B_ROWS: u64 = 2000;
/// `SELECT count(*) FROM a JOIN b ON a.k = b.k`: every b row finds one a row.
const JOIN_COUNT: u64 = B_ROWS;
const JOIN: &str = "SELECT count(*) FROM a JOIN b ON a.k = b.k";

/// One cluster at a time (2-core machines).
static SERIAL: Mutex<()> = Mutex::new(());

fn insert(c: &mut postgres::Client, table: &str, rows: u64, key_mod: u64) {
    let values = (0..rows)
        .map(|i| format!("({}, {})", i % key_mod, i * 7))
        .collect::<Vec<_>>()
        .join(", ");
    pg_rows(c, &format!("INSERT INTO {table} VALUES {values}"))
        .unwrap_or_else(|e| panic!("insert into {table}: {e}"));
}

/// The pids `smrdb cluster` printed for its nodes (`node <id> pid <pid>`).
fn node_pids(log_dir: &Path) -> Vec<u32> {
    let log = std::fs::read_to_string(log_dir.join("cluster.log")).expect("cluster.log");
    log.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next(), w.next()) {
                (Some("node"), Some(_), Some("pid"), Some(p)) => p.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// Whether `pid` is a live smrdb process (not a recycled pid).
fn smrdb_alive(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("smrdb"))
        .unwrap_or(false)
}

/// Runs the join on a fresh 2x2 shm cluster with `mode`; returns its timing.
fn join_on(mode: Mode, log_dir: &Path) -> QueryTiming {
    let mut spec = ClusterSpec::new("shm", 2, 2);
    spec.router_mode = mode;
    let cluster = Cluster::start_local(&spec, log_dir).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(cluster.nodes(), 2);
    assert_eq!(cluster.tstores_total(), 4);
    assert_eq!(cluster.fabric(), "shm");
    assert_eq!(cluster.label(), spec.label());
    let primary = cluster.primary();

    let mut c = cluster.client().expect("client");
    pg_rows(
        &mut c,
        "CREATE TABLE a (k INT, v INT); CREATE TABLE b (k INT, w INT)",
    )
    .expect("create tables");
    insert(&mut c, "a", A_ROWS, A_ROWS);
    insert(&mut c, "b", B_ROWS, 500);
    let before = router_totals(&mut c).expect("router totals");

    let t = time_query(&mut c, "join", JOIN, &[], 3, &|| false);
    eprintln!("{}: {t:?}", spec.label());
    assert_eq!(t.error, None);
    assert_eq!(t.rows, vec![vec![JOIN_COUNT.to_string()]]);
    assert_eq!(t.times_s.len(), 3);
    assert!(t.warmup_s.is_some() && t.median_s.is_some());
    let wire = t.wire_bytes.expect("wire bytes");
    assert!(
        wire > 0,
        "no bytes crossed the network for a join on 2 nodes"
    );
    assert!(t.messages.is_some_and(|m| m > 0));
    let after = router_totals(&mut c).expect("router totals");
    assert!(after.bytes_written >= before.bytes_written + 2 * wire);

    // A forced pivot gives the same answer, and the setting is put back afterwards.
    let forced = time_query(&mut c, "join b", JOIN, &[("smrdb.pivot", "b")], 1, &|| {
        false
    });
    assert_eq!(forced.error, None);
    assert_eq!(forced.rows, t.rows);
    assert_eq!(forced.settings, vec![("smrdb.pivot".into(), "b".into())]);
    assert_eq!(
        pg_rows(&mut c, "SHOW smrdb.pivot").expect("show"),
        vec![vec!["auto".to_string()]]
    );
    // A failing statement is reported, not panicked on; a stop request skips runs.
    let bad = time_query(&mut c, "bad", "SELECT nope FROM a", &[], 2, &|| false);
    assert!(bad.error.is_some_and(|e| e.contains("nope")));
    let stopped = time_query(&mut c, "stopped", JOIN, &[], 5, &|| true);
    assert!(stopped.times_s.is_empty() && stopped.error.is_some());
    drop(c);

    for id in 0..2 {
        let log = log_dir.join(format!("node-{id}.log"));
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("ready"),
            "{} lacks the ready line",
            log.display()
        );
    }
    let pids = node_pids(log_dir);
    assert_eq!(pids.len(), 2, "node pids in cluster.log: {pids:?}");
    assert!(pids.iter().all(|&p| smrdb_alive(p)));

    cluster.stop().expect("clean stop");
    for p in pids {
        assert!(!smrdb_alive(p), "node process {p} outlived stop()");
    }
    assert!(
        TcpStream::connect_timeout(
            &primary.parse().expect("primary address"),
            Duration::from_secs(1)
        )
        .is_err(),
        "the primary still listens on {primary}"
    );
    t
}

#[test]
fn smr_and_naive_joins_on_local_clusters() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let smr = join_on(Mode::Smr, &dir.path().join("smr"));
    let naive = join_on(Mode::Naive, &dir.path().join("naive"));
    let (s, n) = (smr.wire_bytes.unwrap_or(0), naive.wire_bytes.unwrap_or(0));
    eprintln!("wire bytes per join: smr {s}, naive {n}");
    assert!(
        n > s,
        "naive broadcasts should write more than SMR (smr {s}, naive {n})"
    );
}

#[test]
fn dropping_a_cluster_stops_it() {
    let _one = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = Cluster::start_local(&ClusterSpec::new("shm", 2, 1), dir.path())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pids = node_pids(dir.path());
    assert_eq!(pids.len(), 2);
    drop(cluster);
    for p in pids {
        assert!(!smrdb_alive(p), "node process {p} outlived drop");
    }
}
