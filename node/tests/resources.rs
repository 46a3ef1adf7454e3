//! Resource limits end to end (issue 7, item 5): common memory smaller than a query's
//! data, a row too large for a chunk, memory settings that cannot work, intermediate
//! results over `smrdb.max_intermediate_mib`, and (in the Soft-RoCE VM) a `ulimit -l`
//! too low for the verbs fabric. Each must end in a clear error (SQLSTATE, a message
//! naming the limit and the setting that raises it) within a bounded time, without a
//! crash, and the next query on the same cluster must answer correctly.
//!
//! Real processes (`smrdb cluster`, `smrdb node`), killed by drop guards. Run in
//! release: `cargo test --release -p smrdb-node --test resources`. The `verbs_*` test
//! is `#[ignore]`d on hosts without an RDMA device; `soft-roce-setup/verbs-tests.sh`
//! runs it inside the VM.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use postgres::Client;
use smrdb_node::config::ClusterFile;
use smrdb_transport::FabricKind;

mod common;
use common::{connect, free_port, kill_pid, rows, BIN};

/// The last lines of every log file in `dir` (printed when a test fails).
fn dump_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
    {
        let log = std::fs::read_to_string(f).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("--- {} (last lines) ---", f.display());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// `smrdb cluster --nodes 2 --tstores 2 ARGS` in the background, logs in `dir`;
/// killed with its nodes on drop.
struct LocalCluster {
    child: Child,
    dir: PathBuf,
    node_pids: Vec<u32>,
    port: u16,
}

impl LocalCluster {
    fn start(dir: &Path, args: &[&str]) -> LocalCluster {
        let mut cmd = Command::new(BIN);
        cmd.args(["cluster", "--nodes", "2", "--tstores", "2"]);
        LocalCluster::start_with(cmd, dir, args, Duration::from_secs(60))
    }

    /// `CMD ARGS` (CMD: `smrdb cluster` with its shape, possibly through a wrapper) as
    /// [`LocalCluster::start`], waiting up to `wait` for it to be ready.
    fn start_with(mut cmd: Command, dir: &Path, args: &[&str], wait: Duration) -> LocalCluster {
        let port = free_port();
        let mut child = cmd
            .args(args)
            .args(["--port", &port.to_string()])
            .arg("--log-dir")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("cluster.log")).unwrap())
            .spawn()
            .expect("smrdb cluster starts");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line); // keep draining after the test stops listening
            }
        });
        let mut c = LocalCluster {
            child,
            dir: dir.to_path_buf(),
            node_pids: Vec::new(),
            port,
        };
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("the cluster prints its readiness");
            if let Some((_, pid)) = line
                .strip_prefix("node ")
                .and_then(|r| r.split_once(" pid "))
            {
                c.node_pids.push(pid.trim().parse().unwrap());
            }
            if line.starts_with("smrdb cluster ready") {
                break;
            }
        }
        c
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.dir);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &p in &self.node_pids {
            kill_pid(p);
        }
    }
}

/// Runs `cmd` to its end (stdin closed, stdout and stderr captured), killing it and
/// failing if it takes longer than `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> (Output, Duration) {
    let t0 = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the command starts");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => (out.expect("the command's output"), t0.elapsed()),
        Err(_) => {
            kill_pid(pid);
            panic!("{cmd:?} still running after {limit:?}");
        }
    }
}

/// `smrdb node` processes of one cluster file; killed on drop.
struct Nodes(Vec<Child>, PathBuf);

impl Nodes {
    fn start(cluster: &Path, n: u32, dir: &Path) -> Nodes {
        Nodes(
            (0..n)
                .map(|id| {
                    Command::new(BIN)
                        .arg("node")
                        .arg("--cluster")
                        .arg(cluster)
                        .args(["--id", &id.to_string()])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(std::fs::File::create(dir.join(format!("node-{id}.log"))).unwrap())
                        .spawn()
                        .expect("smrdb node starts")
                })
                .collect(),
            dir.to_path_buf(),
        )
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.1);
        }
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The one value of a one-row, one-column query.
fn value(c: &mut Client, sql: &str) -> String {
    let r = rows(c, sql);
    assert_eq!(r.len(), 1, "{sql}: {r:?}");
    r[0][0].clone().unwrap_or_default()
}

/// Runs `sql`, which must fail: (SQLSTATE, message, how long it took).
fn fails(c: &mut Client, sql: &str) -> (String, String, Duration) {
    let t0 = Instant::now();
    let e = match c.simple_query(sql) {
        Ok(_) => panic!("{sql}: succeeded"),
        Err(e) => e,
    };
    let took = t0.elapsed();
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a database error: {e}"));
    (db.code().code().to_string(), db.message().to_string(), took)
}

/// The design's join workload: `jp` (4000 rows, k = i % 1000, v = i) and `jb` (30000
/// rows, k = i % 1500, a ~300-byte `pad` ending in i, w = i): about 9 MB of `jb`.
const PAD: usize = 300;

fn load_join_tables(c: &mut Client) {
    c.batch_execute("CREATE TABLE jp (k INT, v INT); CREATE TABLE jb (k INT, pad TEXT, w INT)")
        .unwrap();
    let vals: Vec<String> = (0..4000).map(|i| format!("({}, {i})", i % 1000)).collect();
    c.batch_execute(&format!("INSERT INTO jp VALUES {}", vals.join(",")))
        .unwrap();
    let pad = "x".repeat(PAD);
    for part in 0..6 {
        let vals: Vec<String> = (part * 5000..(part + 1) * 5000)
            .map(|i| format!("({}, '{pad}{i}', {i})", i % 1500))
            .collect();
        c.batch_execute(&format!("INSERT INTO jb VALUES {}", vals.join(",")))
            .unwrap();
    }
}

/// Every jp row (k < 1000) meets the 20 jb rows with its k.
const JOIN_COUNT: &str = "80000";
/// sum(jp.v) over the join: each v counted 20 times.
fn join_sum() -> String {
    ((0..4000i64).sum::<i64>() * 20).to_string()
}
/// The aggregate join; with `jp` as the pivot `jb` (with its pad) is the join table.
const AGG_JOIN: &str = "SELECT count(*), sum(jp.v), max(jb.pad) FROM jp JOIN jb ON jp.k = jb.k";
/// A join whose intermediate results are every joined row with its pad (~25 MB): the
/// primary gathers them all to sort. (The OFFSET makes every Tstore's top-k keep all
/// of its rows; with a LIMIT alone each Tstore would send only its first rows.)
const WIDE_JOIN: &str = "SELECT jp.v, jb.pad FROM jp JOIN jb ON jp.k = jb.k \
     ORDER BY jb.pad DESC, jp.v DESC LIMIT 2 OFFSET 79998";

fn check_agg_join(c: &mut Client) {
    let pad = "x".repeat(PAD);
    assert_eq!(
        rows(c, &format!("SET smrdb.pivot = 'jp'; {AGG_JOIN}")),
        vec![vec![
            Some(JOIN_COUNT.into()),
            Some(join_sum()),
            Some(format!("{pad}9999"))
        ]]
    );
}

fn check_wide_join(c: &mut Client) {
    // The last two of the 80000 joined rows: the smallest pad ends in 0 (jb row 0, k =
    // 0), joined with jp rows 3000, 2000, 1000 and 0.
    let pad = "x".repeat(PAD);
    assert_eq!(
        rows(c, &format!("SET smrdb.pivot = 'jp'; {WIDE_JOIN}")),
        vec![
            vec![Some("1000".into()), Some(format!("{pad}0"))],
            vec![Some("0".into()), Some(format!("{pad}0"))],
        ]
    );
}

/// The bytes EXPLAIN ANALYZE measured for the gathers to the primary: the sum of
/// `measured: R rows, X <unit> in N chunks` under each `#N gather, ...` exchange (sizes
/// are printed with one decimal: the sum is within 5% of a unit per gather).
fn gathered_bytes(c: &mut Client, query: &str) -> u64 {
    let plan: Vec<String> = rows(c, &format!("EXPLAIN ANALYZE {query}"))
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    let mut total = 0.0;
    let mut gathers = 0;
    for (i, l) in plan.iter().enumerate() {
        if !(l.starts_with("  #") && l.contains(" gather, ")) {
            continue;
        }
        gathers += 1;
        let m = plan[i + 1..]
            .iter()
            .take_while(|l| l.starts_with("     "))
            .find_map(|l| l.trim_start().strip_prefix("measured: "))
            .unwrap_or_else(|| panic!("no measured line under {l:?}: {plan:#?}"));
        // R rows, X UNIT in N chunks
        let w: Vec<&str> = m.split_whitespace().collect();
        let x: f64 = w[2].parse().unwrap_or_else(|_| panic!("{m}"));
        total += x * match w[3] {
            "B" => 1.0,
            "KiB" => 1024.0,
            "MiB" => 1048576.0,
            "GiB" => 1073741824.0,
            u => panic!("unit {u} in {m}"),
        };
    }
    assert!(gathers > 0, "no gather: {plan:#?}");
    total as u64
}

/// Rings, arena and chunks far smaller than the data: join tables (9 MB, streamed, or
/// collected by every Tstore while the next one arrives) and intermediate results
/// (25 MB) pass through 1 MiB of each. The senders stall (the router counts it), never
/// fail, and the answers are exact.
#[test]
fn common_memory_smaller_than_the_data_streams_it() {
    let dir = tempfile::tempdir().unwrap();
    let cl = LocalCluster::start(
        dir.path(),
        &[
            "--fabric",
            "shm",
            "--ring-mib",
            "1",
            "--arena-mib",
            "1",
            "--chunk-kib",
            "256",
        ],
    );
    let mut c = connect(cl.port);
    load_join_tables(&mut c);
    assert_eq!(value(&mut c, "SELECT count(*) FROM jb"), "30000");
    let t0 = Instant::now();
    check_agg_join(&mut c);
    check_wide_join(&mut c);
    // Two 9 MB join tables: all of the first is held (copied out of the rings) until
    // it is complete, while the rings keep moving.
    let pad = "x".repeat(PAD);
    assert_eq!(
        rows(
            &mut c,
            "SET smrdb.pivot = 'jp'; SELECT count(*), max(b1.pad), min(b2.pad) \
             FROM jp JOIN jb b1 ON jp.k = b1.k JOIN jb b2 ON b1.w = b2.w"
        ),
        vec![vec![
            Some(JOIN_COUNT.into()),
            Some(format!("{pad}9999")),
            Some(format!("{pad}0"))
        ]]
    );
    let gathered = gathered_bytes(&mut c, WIDE_JOIN);
    assert!(
        gathered > 8 << 20,
        "the wide join gathered only {gathered} bytes: not larger than common memory"
    );
    // The rings ran full: senders waited for the receivers to release.
    let stalls: i64 = value(&mut c, "SELECT sum(stalls) FROM smrdb_router")
        .parse()
        .unwrap();
    assert!(stalls > 0, "no sender ever stalled on a 1 MiB ring");
    // Everything was released: the same queries again, then another one.
    check_agg_join(&mut c);
    check_wide_join(&mut c);
    assert_eq!(value(&mut c, "SELECT max(w) FROM jb WHERE k = 7"), "28507");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
}

/// A join-table row larger than a router chunk cannot be sent: the query fails at once
/// with 54000 naming the chunk size and `chunk_kib`, changes nothing, and the next
/// queries (the same one included, once the row is gone) answer.
#[test]
fn a_join_row_larger_than_a_chunk_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cl = LocalCluster::start(
        dir.path(),
        &[
            "--fabric",
            "shm",
            "--ring-mib",
            "1",
            "--arena-mib",
            "1",
            "--chunk-kib",
            "64",
        ],
    );
    let mut c = connect(cl.port);
    c.batch_execute("CREATE TABLE a (k INT, v INT); CREATE TABLE b (k INT, t TEXT)")
        .unwrap();
    let va: Vec<String> = (0..200).map(|i| format!("({}, {i})", i % 50)).collect();
    let vb: Vec<String> = (0..100).map(|i| format!("({i}, 'b{i}')")).collect();
    c.batch_execute(&format!(
        "INSERT INTO a VALUES {}; INSERT INTO b VALUES {}",
        va.join(","),
        vb.join(",")
    ))
    .unwrap();
    // One 100 KB text: fine to store and to scan, too large for a 64 KiB chunk.
    c.batch_execute(&format!(
        "INSERT INTO b VALUES (7, '{}')",
        "y".repeat(100_000)
    ))
    .unwrap();
    let q = "SET smrdb.pivot = 'a'; SELECT count(*), max(b.t) FROM a JOIN b ON a.k = b.k";
    for _ in 0..2 {
        let (state, msg, took) = fails(&mut c, q);
        assert_eq!(state, "54000", "{msg}");
        for w in [
            "larger than a router chunk (65536 bytes)",
            "chunk_kib",
            "--chunk-kib",
        ] {
            assert!(msg.contains(w), "{w:?} not in {msg}");
        }
        assert!(took < Duration::from_secs(10), "took {took:?}");
    }
    // Nothing changed, and queries that do not ship the big value work.
    assert_eq!(value(&mut c, "SELECT count(*) FROM b"), "101");
    assert_eq!(
        rows(
            &mut c,
            "SET smrdb.pivot = 'a'; SELECT count(*), sum(a.v) FROM a JOIN b ON a.k = b.k"
        ),
        // a.k in 0..50 meets b's k (one row each, two for k = 7): 4 a rows per k.
        vec![vec![
            Some("204".into()),
            Some(((0..200).sum::<i64>() + 7 + 57 + 107 + 157).to_string())
        ]]
    );
    assert_eq!(value(&mut c, "SELECT count(*) FROM b WHERE t > 'y'"), "1");
    // Without the row, the query that failed answers.
    c.batch_execute("DELETE FROM b WHERE t <> 'b7' AND k = 7")
        .unwrap();
    assert_eq!(
        rows(&mut c, q),
        vec![vec![Some("200".into()), Some("b9".into())]]
    );
}

/// Settings under which a node could never send a full chunk are refused at start,
/// naming both settings, before anything listens.
#[test]
fn memory_settings_that_cannot_work_are_refused() {
    let port = free_port();
    let (out, took) = run_bounded(
        Command::new(BIN)
            .args([
                "cluster",
                "--nodes",
                "2",
                "--tstores",
                "1",
                "--fabric",
                "shm",
            ])
            .args(["--ring-mib", "2", "--arena-mib", "1", "--chunk-kib", "2048"])
            .args(["--port", &port.to_string()]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in [
        "chunk_kib (2048 KiB) exceeds the outgoing arena (arena_mib = 1 MiB)",
        "--arena-mib",
        "--chunk-kib",
    ] {
        assert!(err.contains(w), "{w:?} not in {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // The same in a cluster file given to `smrdb node`.
    let dir = tempfile::tempdir().unwrap();
    let mut cf = ClusterFile::local(
        FabricKind::Shm,
        1,
        1,
        free_port(),
        &[free_port()],
        "s".into(),
    );
    cf.ring_mib = 4;
    cf.arena_mib = 2;
    cf.chunk_kib = 3072;
    let file = dir.path().join("cluster.toml");
    std::fs::write(&file, toml_of(&cf)).unwrap();
    let (out, _) = run_bounded(
        Command::new(BIN)
            .arg("node")
            .arg("--cluster")
            .arg(&file)
            .args(["--id", "0"]),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("chunk_kib (3072 KiB) exceeds the outgoing arena (arena_mib = 2 MiB)"),
        "{err}"
    );
}

/// The TOML of a cluster file, written without validating it (`ClusterFile::save`
/// would not refuse, but make the intent plain).
fn toml_of(cf: &ClusterFile) -> String {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    cf.save(&f).unwrap();
    std::fs::read_to_string(f).unwrap()
}

/// The value N of the `SET smrdb.max_intermediate_mib = N` a 53200 message suggests.
fn suggested_mib(msg: &str) -> u64 {
    let (_, rest) = msg
        .split_once("SET smrdb.max_intermediate_mib = ")
        .unwrap_or_else(|| panic!("no suggestion in {msg}"));
    rest.split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Intermediate results over `smrdb.max_intermediate_mib` fail the statement with
/// 53200 naming the size and the setting; a bad value is refused and changes nothing;
/// the suggested value makes the same statement answer; small results are not
/// affected.
#[test]
fn intermediate_results_over_the_limit_fail_with_53200() {
    let dir = tempfile::tempdir().unwrap();
    let cl = LocalCluster::start(dir.path(), &["--fabric", "shm"]);
    let mut c = connect(cl.port);
    load_join_tables(&mut c);
    c.batch_execute("CREATE TABLE pads (pad TEXT)").unwrap();
    assert_eq!(value(&mut c, "SHOW smrdb.max_intermediate_mib"), "1024");
    c.batch_execute("SET smrdb.max_intermediate_mib = 1")
        .unwrap();
    assert_eq!(value(&mut c, "SHOW smrdb.max_intermediate_mib"), "1");

    // A single-table query (the primary sorts 9 MB of pads), a join (25 MB of joined
    // rows), and an INSERT ... SELECT, which inserts nothing.
    // (The OFFSET keeps every row in the Tstores' top-k: all 9 MB reach the primary.)
    let single = "SELECT pad FROM jb ORDER BY pad DESC LIMIT 1 OFFSET 29999";
    let join = format!("SET smrdb.pivot = 'jp'; {WIDE_JOIN}");
    let insert = "INSERT INTO pads SELECT pad FROM jb";
    for q in [single, join.as_str(), insert] {
        let (state, msg, took) = fails(&mut c, q);
        assert_eq!(state, "53200", "{q}: {msg}");
        for w in [
            "out of memory for intermediate results: the ",
            "more than smrdb.max_intermediate_mib = 1 MiB (set in this session)",
            "max_intermediate_mib in the cluster file",
        ] {
            assert!(msg.contains(w), "{q}: {w:?} not in {msg}");
        }
        assert!(suggested_mib(&msg) > 1, "{msg}");
        assert!(took < Duration::from_secs(10), "{q}: took {took:?}");
    }
    assert_eq!(value(&mut c, "SELECT count(*) FROM pads"), "0");
    // Small intermediate results pass under the same limit.
    assert_eq!(value(&mut c, "SELECT count(*) FROM jb"), "30000");
    check_agg_join(&mut c);

    // Bad values are refused and leave the setting as it was.
    for bad in ["'lots'", "-1", "1.5", "1048577"] {
        let (state, msg, _) = fails(&mut c, &format!("SET smrdb.max_intermediate_mib = {bad}"));
        assert_eq!(state, "22023", "{bad}: {msg}");
        assert!(msg.contains("smrdb.max_intermediate_mib"), "{msg}");
    }
    assert_eq!(value(&mut c, "SHOW smrdb.max_intermediate_mib"), "1");

    // The suggested value is enough for the statement that failed.
    let (_, msg, _) = fails(&mut c, single);
    let need = suggested_mib(&msg);
    c.batch_execute(&format!("SET smrdb.max_intermediate_mib = {need}"))
        .unwrap();
    let pad = "x".repeat(PAD);
    assert_eq!(value(&mut c, single), format!("{pad}0"));
    // 0 turns the limit off; DEFAULT restores the cluster's.
    c.batch_execute("SET smrdb.max_intermediate_mib = 0")
        .unwrap();
    check_wide_join(&mut c);
    assert_eq!(
        rows(&mut c, &format!("{insert}; SELECT count(*) FROM pads")),
        vec![vec![Some("30000".into())]]
    );
    c.batch_execute("SET smrdb.max_intermediate_mib = DEFAULT")
        .unwrap();
    assert_eq!(value(&mut c, "SHOW smrdb.max_intermediate_mib"), "1024");
    check_wide_join(&mut c);
}

/// `max_intermediate_mib` in the cluster file is every session's default.
#[test]
fn cluster_file_sets_the_default_intermediate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let pg = free_port();
    let mut cf = ClusterFile::local(
        FabricKind::Shm,
        1,
        2,
        pg,
        &[free_port()],
        "limits test secret".into(),
    );
    cf.max_intermediate_mib = 2;
    let file = dir.path().join("cluster.toml");
    cf.save(&file).unwrap();
    assert!(std::fs::read_to_string(&file)
        .unwrap()
        .contains("max_intermediate_mib = 2"));
    let _nodes = Nodes::start(&file, 1, dir.path());
    let mut c = connect(pg);
    assert_eq!(value(&mut c, "SHOW smrdb.max_intermediate_mib"), "2");
    c.batch_execute("CREATE TABLE t (s TEXT)").unwrap();
    let s = "z".repeat(1000);
    let vals: Vec<String> = (0..4000).map(|i| format!("('{s}{i}')")).collect();
    c.batch_execute(&format!("INSERT INTO t VALUES {}", vals.join(",")))
        .unwrap();
    // The last of 4000 sorted rows (~4 MB, all gathered: the OFFSET keeps every row in
    // the Tstores' top-k): the largest text ends in 999.
    let q = "SELECT s FROM t ORDER BY s LIMIT 1 OFFSET 3999";
    let (state, msg, _) = fails(&mut c, q);
    assert_eq!(state, "53200", "{msg}");
    assert!(
        msg.contains("smrdb.max_intermediate_mib = 2 MiB (the cluster's default)"),
        "{msg}"
    );
    assert_eq!(value(&mut c, "SELECT count(*) FROM t"), "4000");
    c.batch_execute("SET smrdb.max_intermediate_mib = 8")
        .unwrap();
    assert_eq!(value(&mut c, q), format!("{s}999"));
}

// ------------------------------------------------------------------ verbs (VM)

fn verbs_device() -> Option<String> {
    let dev = std::env::var("SMRDB_VERBS_DEVICE")
        .ok()
        .filter(|d| !d.is_empty());
    if dev.is_none() {
        assert!(
            std::env::var("SMRDB_REQUIRE_VERBS").as_deref() != Ok("1"),
            "SMRDB_REQUIRE_VERBS=1 but SMRDB_VERBS_DEVICE is not set"
        );
        eprintln!(
            "skipped: no RDMA device (set SMRDB_VERBS_DEVICE, or run under soft-roce-setup/vm.sh)"
        );
    }
    dev
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        == Some("0")
}

/// A command that runs `smrdb ARGS...` under `ulimit -l KIB` and without the
/// capability that exempts a process from it (root keeps `CAP_IPC_LOCK` otherwise, as
/// in the VM): `setpriv` drops it from the bounding and inheritable sets.
fn under_memlock(kib: u64) -> Command {
    let script = format!("ulimit -l {kib} && exec \"$0\" \"$@\"");
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
            "--",
            "sh",
        ]);
        c
    } else {
        Command::new("sh")
    };
    cmd.args(["-c", &script, BIN]);
    cmd
}

/// On verbs, a `ulimit -l` below the common memory stops the node at start with a
/// message naming `ulimit -l`, the bytes needed and how to raise it (exit status 1, no
/// panic); with enough limit (and still without `CAP_IPC_LOCK`) the cluster serves.
#[test]
#[ignore = "needs an RDMA device: soft-roce-setup/verbs-tests.sh runs it in the Soft-RoCE VM"]
fn verbs_memlock_too_low_is_a_clear_error_and_enough_works() {
    let Some(dev) = verbs_device() else {
        return;
    };
    // 2 nodes: one 1 MiB ring + a 1 MiB arena = 2 MiB = 2048 KiB of common memory.
    let shape = [
        "--fabric",
        "verbs",
        "--device",
        &dev,
        "--ring-mib",
        "1",
        "--arena-mib",
        "1",
        "--chunk-kib",
        "256",
    ];
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let (out, took) = run_bounded(
        under_memlock(64)
            .args(["cluster", "--nodes", "2", "--tstores", "1"])
            .args(shape)
            .args(["--port", &port.to_string()]),
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    for w in [
        "locked-memory limit (ulimit -l) is 64 KiB (65536 bytes)",
        "needs at least 2048 KiB (2097152 bytes)",
        "`ulimit -l unlimited`",
        "exited during start-up",
    ] {
        assert!(err.contains(w), "{w:?} not in {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    eprintln!("refused in {took:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());

    // Enough limit: the same shape starts and answers.
    let mut cmd = under_memlock(16 << 10);
    cmd.args(["cluster", "--nodes", "2", "--tstores", "1"]);
    let cl = LocalCluster::start_with(cmd, dir.path(), &shape, Duration::from_secs(180));
    let mut c = connect(cl.port);
    c.batch_execute("CREATE TABLE a (k INT, v INT); CREATE TABLE b (k INT, w INT)")
        .unwrap();
    let va: Vec<String> = (0..1000).map(|i| format!("({}, {i})", i % 100)).collect();
    let vb: Vec<String> = (0..100).map(|i| format!("({i}, {})", i * 2)).collect();
    c.batch_execute(&format!(
        "INSERT INTO a VALUES {}; INSERT INTO b VALUES {}",
        va.join(","),
        vb.join(",")
    ))
    .unwrap();
    assert_eq!(
        rows(
            &mut c,
            "SELECT count(*), sum(a.v), sum(b.w) FROM a JOIN b ON a.k = b.k"
        ),
        vec![vec![
            Some("1000".into()),
            Some((0..1000i64).sum::<i64>().to_string()),
            Some(((0..1000i64).map(|i| (i % 100) * 2).sum::<i64>()).to_string())
        ]]
    );
}
