//! Node loss and readmission with real processes (issue 7, item 1): `smrdb node`
//! processes on shm with data directories, one killed with SIGKILL while a join and a
//! logged multi-Tstore INSERT run, then started again with the same data directory.
//!
//! Fault injection (`SMRDB_FAULTS` on the primary: every message to node 2 held
//! 400 ms) keeps the statements in flight long enough for the kill to land in them.
//!
//! Run in release (`cargo test --release -p smrdb-node --test node_loss`); every child
//! is killed by a drop guard, even when a test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postgres::Client;
use smrdb_node::config::ClusterFile;
use smrdb_transport::FabricKind;

mod common;
use common::{connect, free_port, try_rows as text_rows, BIN};

/// A cluster of `smrdb node` processes, each started (and restarted) on its own.
struct Cluster {
    file: PathBuf,
    data: Option<PathBuf>,
    logs: PathBuf,
    pg: u16,
    nodes: Vec<Option<Child>>,
}

impl Cluster {
    /// `n` nodes x 1 Tstore on shm; node 0 is the primary.
    fn new(dir: &Path, n: u32, durable: bool) -> Cluster {
        let pg = free_port();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let mut cf = ClusterFile::local(FabricKind::Shm, n, 1, pg, &ports, "node loss".into());
        cf.connect_timeout_s = 30;
        let file = dir.join("cluster.toml");
        cf.save(&file).unwrap();
        Cluster {
            file,
            data: durable.then(|| dir.join("data")),
            logs: dir.to_path_buf(),
            pg,
            nodes: (0..n).map(|_| None).collect(),
        }
    }

    fn log_of(&self, id: u32) -> PathBuf {
        self.logs.join(format!("node-{id}.log"))
    }

    /// Starts node `id` (its log is appended to), with `faults` as `SMRDB_FAULTS`.
    fn start(&mut self, id: u32, faults: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_of(id))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("node")
            .arg("--cluster")
            .arg(&self.file)
            .args(["--id", &id.to_string()])
            .env("SMRDB_FAULTS", faults)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(d) = &self.data {
            cmd.arg("--data-dir").arg(d);
        }
        self.nodes[id as usize] = Some(cmd.spawn().expect("smrdb node starts"));
    }

    fn kill9(&mut self, id: u32) {
        if let Some(mut c) = self.nodes[id as usize].take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// Whether node `id` still runs.
    fn running(&mut self, id: u32) -> bool {
        match &mut self.nodes[id as usize] {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    fn log(&self, id: u32) -> String {
        std::fs::read_to_string(self.log_of(id)).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for id in 0..self.nodes.len() as u32 {
                let log = self.log(id);
                let tail: Vec<&str> = log.lines().rev().take(25).collect();
                eprintln!("--- node {id} log (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for id in 0..self.nodes.len() as u32 {
            self.kill9(id);
        }
    }
}

/// (SQLSTATE, message) of a database error.
fn db_error(e: &postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(d) => (d.code().code().to_string(), d.message().to_string()),
        None => (format!("not a db error: {e}"), String::new()),
    }
}

/// Runs `sql` until it succeeds (a readmission in progress) or `limit` passes.
fn until_ok(c: &mut Client, sql: &str, limit: Duration) -> Vec<Vec<Option<String>>> {
    let deadline = Instant::now() + limit;
    loop {
        match text_rows(c, sql) {
            Ok(r) => return r,
            Err(e) => {
                let (code, msg) = db_error(&e);
                assert!(
                    Instant::now() < deadline,
                    "{sql}: still failing after {limit:?}: {code} {msg}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

const JOIN: &str =
    "SELECT a.g, count(*), sum(b.v) FROM a JOIN b ON a.g = b.g GROUP BY a.g ORDER BY a.g";
const SCAN: &str = "SELECT count(*), sum(x) FROM a";

/// Tables a (x, g) and b (g, v): 60 rows each, g in 0..6.
fn load(c: &mut Client) {
    c.batch_execute("CREATE TABLE a (x INT NOT NULL, g INT NOT NULL)")
        .unwrap();
    c.batch_execute("CREATE TABLE b (g INT NOT NULL, v INT NOT NULL)")
        .unwrap();
    let a: Vec<String> = (0..60).map(|i| format!("({i}, {})", i % 6)).collect();
    let b: Vec<String> = (0..60).map(|i| format!("({}, {i})", i % 6)).collect();
    c.batch_execute(&format!("INSERT INTO a VALUES {}", a.join(",")))
        .unwrap();
    c.batch_execute(&format!("INSERT INTO b VALUES {}", b.join(",")))
        .unwrap();
}

/// The join's answer computed here: for each g, 10 x 10 pairs, sum(v) over them.
fn expected_join() -> Vec<Vec<Option<String>>> {
    (0..6)
        .map(|g| {
            let sum_v: i64 = (0..60).filter(|i| i % 6 == g).sum::<i64>() * 10;
            vec![
                Some(g.to_string()),
                Some("100".to_string()),
                Some(sum_v.to_string()),
            ]
        })
        .collect()
}

/// A secondary killed during a join and during a logged INSERT: both fail within
/// 5 s naming it; the primary and node 1 keep serving; node 2 restarted with its data
/// directory is readmitted, the cut INSERT is completed (not half-applied), and every
/// answer is as before.
#[test]
fn secondary_killed_mid_join_is_readmitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = Cluster::new(dir.path(), 3, true);
    // Every message from the primary to node 2 is held 400 ms.
    cl.start(0, "delay_ms=400,peers=2");
    cl.start(1, "");
    cl.start(2, "");
    let mut c = connect(cl.pg);
    load(&mut c);
    assert_eq!(text_rows(&mut c, JOIN).unwrap(), expected_join());
    let scan_before = text_rows(&mut c, SCAN).unwrap();
    assert_eq!(
        scan_before,
        vec![vec![Some("60".into()), Some("1770".into())]]
    );

    // Kill -9 node 2 while a join and a 3-Tstore INSERT are in flight.
    let pg = cl.pg;
    let join = std::thread::spawn(move || {
        let mut c = connect(pg);
        let r = text_rows(&mut c, JOIN).map(|_| ());
        (r, Instant::now())
    });
    let insert = std::thread::spawn(move || {
        let mut c = connect(pg);
        let r = c.batch_execute("INSERT INTO a VALUES (100, 0), (101, 1), (102, 2)");
        (r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(250));
    let killed = Instant::now();
    cl.kill9(2);
    for (what, h) in [("join", join), ("insert", insert)] {
        let (r, at) = h.join().unwrap();
        let e = r
            .err()
            .unwrap_or_else(|| panic!("the {what} succeeded without node 2"));
        let (code, msg) = db_error(&e);
        assert_eq!(code, "08006", "{what}: {msg}");
        assert!(msg.contains("node 2"), "{what}: {msg}");
        let took = at.saturating_duration_since(killed);
        eprintln!("{what} failed {took:?} after the kill: {msg}");
        assert!(
            took < Duration::from_secs(5),
            "{what} failed {took:?} after the kill"
        );
    }

    // The primary keeps serving: sessions work, statements that need node 2 fail
    // at once naming it, and say how to recover.
    assert_eq!(
        text_rows(&mut c, "SELECT 1").unwrap(),
        vec![vec![Some("1".into())]]
    );
    let t = Instant::now();
    let e = text_rows(&mut c, SCAN).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, "08006");
    assert!(msg.contains("node 2") && msg.contains("readmits"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let e = c
        .batch_execute("INSERT INTO a VALUES (200, 0), (201, 1), (202, 2)")
        .unwrap_err();
    assert_eq!(db_error(&e).0, "08006");
    assert!(cl.running(0) && cl.running(1), "a survivor exited");

    // Node 2 comes back with its data directory: readmitted, same answers; the cut
    // INSERT was completed on every Tstore (3 rows more, one per Tstore), the refused
    // one applied nowhere.
    let restarted = Instant::now();
    cl.start(2, "");
    let scan_after = until_ok(&mut c, SCAN, Duration::from_secs(30));
    eprintln!(
        "node 2 serving again {:?} after its restart",
        restarted.elapsed()
    );
    assert_eq!(
        scan_after,
        vec![vec![Some("63".into()), Some((1770 + 303).to_string())]]
    );
    let per_tstore = text_rows(
        &mut c,
        "SELECT tstore, rows FROM smrdb_tstores WHERE \"table\" = 'a' ORDER BY tstore",
    )
    .unwrap();
    assert_eq!(
        per_tstore,
        (0..3)
            .map(|t| vec![Some(t.to_string()), Some("21".into())])
            .collect::<Vec<_>>()
    );
    // The join's answer: the three new rows of a add one pair each with g = 0, 1, 2.
    let mut want = expected_join();
    for (g, row) in want.iter_mut().enumerate().take(3) {
        row[1] = Some("110".into());
        let extra: i64 = (0..60).filter(|i| i % 6 == g as i64).sum();
        let base: i64 = row[2].as_ref().unwrap().parse().unwrap();
        row[2] = Some((base + extra).to_string());
    }
    assert_eq!(text_rows(&mut c, JOIN).unwrap(), want);
    // Writes work again, and the router counted the readmission on both survivors.
    c.batch_execute("INSERT INTO a VALUES (300, 3), (301, 4), (302, 5)")
        .unwrap();
    assert_eq!(
        text_rows(&mut c, "SELECT count(*) FROM a").unwrap(),
        vec![vec![Some("66".into())]]
    );
    assert_eq!(
        text_rows(
            &mut c,
            "SELECT node, reconnects FROM smrdb_router WHERE peer = 2 ORDER BY node"
        )
        .unwrap(),
        vec![
            vec![Some("0".into()), Some("1".into())],
            vec![Some("1".into()), Some("1".into())]
        ]
    );
    assert!(
        cl.log(0).contains("cut by the loss of node 2"),
        "the primary did not complete the cut INSERT itself"
    );
}

/// The primary killed: the secondaries notice, keep running and wait; the primary
/// restarted with its data directory finds them, and answers as before.
#[test]
fn killed_primary_is_waited_for_and_readmitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = Cluster::new(dir.path(), 3, true);
    for id in 0..3 {
        cl.start(id, "");
    }
    let mut c = connect(cl.pg);
    load(&mut c);
    let before = text_rows(&mut c, JOIN).unwrap();
    assert_eq!(before, expected_join());
    drop(c);

    cl.kill9(0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        cl.running(1) && cl.running(2),
        "a secondary exited without its primary"
    );
    for id in [1, 2] {
        let log = cl.log(id);
        assert!(
            log.contains("the primary (node 0) is lost") && log.contains("waiting for it"),
            "node {id} did not notice the primary's loss:\n{log}"
        );
    }

    let restarted = Instant::now();
    cl.start(0, "");
    let mut c = connect(cl.pg);
    assert_eq!(until_ok(&mut c, JOIN, Duration::from_secs(30)), before);
    eprintln!(
        "the primary served the join {:?} after its restart",
        restarted.elapsed()
    );
    assert_eq!(
        text_rows(&mut c, SCAN).unwrap(),
        vec![vec![Some("60".into()), Some("1770".into())]]
    );
    c.batch_execute("INSERT INTO a VALUES (100, 0), (101, 1), (102, 2)")
        .unwrap();
    assert_eq!(
        text_rows(&mut c, "SELECT count(*) FROM a").unwrap(),
        vec![vec![Some("63".into())]]
    );
    for id in [1, 2] {
        assert!(
            cl.log(id).contains("the primary (node 0) is back"),
            "node {id} did not log the primary's return"
        );
    }
}

/// A volatile node (no data directory) that comes back has lost its slices: it is
/// not readmitted, and statements keep failing with an error that says why.
#[test]
fn node_back_without_its_data_is_not_readmitted() {
    let dir = tempfile::tempdir().unwrap();
    let mut cl = Cluster::new(dir.path(), 2, false);
    cl.start(0, "");
    cl.start(1, "");
    let mut c = connect(cl.pg);
    load(&mut c);
    cl.kill9(1);
    let t = Instant::now();
    loop {
        match text_rows(&mut c, SCAN) {
            Err(e) => {
                assert_eq!(db_error(&e).0, "08006");
                break;
            }
            Ok(_) => assert!(t.elapsed() < Duration::from_secs(5), "no loss noticed"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cl.start(1, "");
    let deadline = Instant::now() + Duration::from_secs(30);
    let msg = loop {
        let e = text_rows(&mut c, SCAN).expect_err("a node without its data was readmitted");
        let (code, msg) = db_error(&e);
        assert_eq!(code, "08006", "{msg}");
        if msg.contains("without its data") {
            break msg;
        }
        assert!(Instant::now() < deadline, "never refused: {msg}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(msg.contains("node 1") && msg.contains("table a"), "{msg}");
    assert_eq!(
        text_rows(&mut c, "SELECT 1").unwrap(),
        vec![vec![Some("1".into())]]
    );
}

/// `smrdb cluster --restart`: the supervisor starts a killed node again (a secondary,
/// then the primary) with its data directory, and the cluster answers as before.
#[test]
fn cluster_restart_brings_killed_nodes_back() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let pg = free_port();
    let mut child = Command::new(BIN)
        .args([
            "cluster",
            "--nodes",
            "3",
            "--tstores",
            "1",
            "--fabric",
            "shm",
        ])
        .args(["--port", &pg.to_string(), "--restart"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("cluster.log")).unwrap())
        .spawn()
        .expect("smrdb cluster starts");
    struct Guard(Child, std::sync::Arc<std::sync::Mutex<Vec<u32>>>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            for &p in self.1.lock().unwrap().iter() {
                let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
            }
        }
    }
    let out = child.stdout.take().unwrap();
    let pids = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let guard = Guard(child, pids.clone());
    // Latest pid per node, from "node K pid P" lines (printed again at a restart).
    let latest = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    {
        let (pids, latest) = (pids.clone(), latest.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some((node, pid)) = line
                    .strip_prefix("node ")
                    .and_then(|r| r.split_once(" pid "))
                {
                    let (node, pid): (u32, u32) =
                        (node.parse().unwrap(), pid.trim().parse().unwrap());
                    pids.lock().unwrap().push(pid);
                    latest.lock().unwrap().insert(node, pid);
                }
            }
        });
    }
    let mut c = connect(pg);
    load(&mut c);
    assert_eq!(text_rows(&mut c, JOIN).unwrap(), expected_join());
    for victim in [1u32, 0] {
        let pid = latest.lock().unwrap()[&victim];
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while latest.lock().unwrap()[&victim] == pid {
            assert!(Instant::now() < deadline, "node {victim} was not restarted");
            std::thread::sleep(Duration::from_millis(50));
        }
        if victim == 0 {
            c = connect(pg);
        }
        assert_eq!(
            until_ok(&mut c, JOIN, Duration::from_secs(30)),
            expected_join(),
            "after node {victim} was killed and restarted"
        );
    }
    c.batch_execute("INSERT INTO a VALUES (100, 0), (101, 1), (102, 2)")
        .unwrap();
    assert_eq!(
        text_rows(&mut c, SCAN).unwrap(),
        vec![vec![Some("63".into()), Some((1770 + 303).to_string())]]
    );
    let log = std::fs::read_to_string(dir.path().join("cluster.log")).unwrap_or_default();
    assert!(
        log.contains("node 1 exited") && log.contains("restarting it"),
        "{log}"
    );
    drop(guard);
}
