//! End-to-end tests with real processes: `smrdb cluster` (2 nodes x 2 Tstores) on shm
//! and tcp, SQL through the `postgres` crate (and `psql` when installed), and a
//! kill -9 / restart from the same data directory.
//!
//! Run in release (`cargo test --release -p smrdb-node`); every child process is
//! killed by a drop guard, even when a test fails.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use postgres::Client;
use smrdb_node::config::ClusterFile;
use smrdb_transport::FabricKind;

mod common;
use common::{connect, free_port, kill_pid, rows as text_rows, sqlstate, BIN};

/// `smrdb cluster` in the background; killed (with its nodes) on drop.
struct LocalCluster {
    child: Child,
    log: std::path::PathBuf,
    node_pids: Vec<u32>,
    port: u16,
}

impl LocalCluster {
    fn start(fabric: &str, data_dir: &Path) -> LocalCluster {
        LocalCluster::start_with(fabric, data_dir, &[])
    }

    /// As [`LocalCluster::start`], with more `smrdb cluster` arguments.
    fn start_with(fabric: &str, data_dir: &Path, extra: &[&str]) -> LocalCluster {
        let port = free_port();
        let mut child = Command::new(BIN)
            .args([
                "cluster",
                "--nodes",
                "2",
                "--tstores",
                "2",
                "--fabric",
                fabric,
            ])
            .args(extra)
            .args(["--port", &port.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(data_dir.join("cluster.log")).unwrap())
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
            log: data_dir.join("cluster.log"),
            node_pids: Vec::new(),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("cluster prints its readiness");
            if let Some(rest) = line.strip_prefix("node ") {
                if let Some((_, pid)) = rest.split_once(" pid ") {
                    c.node_pids.push(pid.trim().parse().unwrap());
                }
            }
            if line.starts_with("smrdb cluster ready") {
                break;
            }
        }
        assert_eq!(c.node_pids.len(), 2);
        c
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- cluster log (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for &p in &self.node_pids {
            kill_pid(p);
        }
    }
}

/// `smrdb node` processes started directly; killed -9 on drop.
struct Nodes(Vec<Child>);

impl Nodes {
    fn start(cluster: &Path, n: u32, data_dir: &Path) -> Nodes {
        Nodes(
            (0..n)
                .map(|id| {
                    Command::new(BIN)
                        .arg("node")
                        .arg("--cluster")
                        .arg(cluster)
                        .args(["--id", &id.to_string()])
                        .arg("--data-dir")
                        .arg(data_dir)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("smrdb node starts")
                })
                .collect(),
        )
    }

    fn kill9(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn tstore_rows(c: &mut Client, table: &str) -> Vec<i64> {
    c.query(
        "SELECT tstore, rows FROM smrdb_tstores WHERE \"table\" = $1 ORDER BY tstore",
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|r| r.get::<_, i64>(1))
    .collect()
}

fn sql_suite(fabric: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cl = LocalCluster::start(fabric, dir.path());
    let mut c = connect(cl.port);

    // DDL and inserts (extended protocol: counts come from the command tags).
    assert_eq!(
        c.execute(
            "CREATE TABLE t (id INT NOT NULL, name TEXT, score DOUBLE PRECISION, d DATE, ok BOOLEAN, big BIGINT)",
            &[]
        )
        .unwrap(),
        0
    );
    let n = c
        .execute(
            "INSERT INTO t VALUES (1, 'one', 1.5, '2024-01-02', true, 10000000000), \
             (2, 'two', NULL, NULL, false, 2), (3, NULL, -3.25, '1999-12-31', NULL, NULL)",
            &[],
        )
        .unwrap();
    assert_eq!(n, 3);
    for i in 4..=10 {
        let n = c
            .execute(
                &format!("INSERT INTO t (id, name, score) VALUES ({i}, 'n{i}', {i}.0)"),
                &[],
            )
            .unwrap();
        assert_eq!(n, 1);
    }

    // Typed results (binary format through the extended protocol).
    let rows = c
        .query(
            "SELECT id, name, score, ok, big FROM t WHERE id <= 3 ORDER BY id",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    assert_eq!(rows[0].get::<_, Option<String>>(1).as_deref(), Some("one"));
    assert_eq!(rows[0].get::<_, Option<f64>>(2), Some(1.5));
    assert_eq!(rows[0].get::<_, Option<bool>>(3), Some(true));
    assert_eq!(rows[0].get::<_, Option<i64>>(4), Some(10_000_000_000));
    assert_eq!(rows[1].get::<_, Option<f64>>(2), None);
    assert_eq!(rows[2].get::<_, Option<String>>(1), None);
    // Column types on the wire.
    let types: Vec<String> = rows[0]
        .columns()
        .iter()
        .map(|c| c.type_().name().to_string())
        .collect();
    assert_eq!(types, ["int4", "text", "float8", "bool", "int8"]);
    // Text format (simple protocol), dates included.
    assert_eq!(
        text_rows(&mut c, "SELECT id, d, ok FROM t WHERE id <= 3 ORDER BY id"),
        vec![
            vec![
                Some("1".into()),
                Some("2024-01-02".into()),
                Some("t".into())
            ],
            vec![Some("2".into()), None, Some("f".into())],
            vec![Some("3".into()), Some("1999-12-31".into()), None],
        ]
    );
    // A typed parameter.
    let st = c
        .prepare_typed(
            "SELECT name FROM t WHERE id = $1",
            &[postgres::types::Type::INT4],
        )
        .unwrap();
    let r = c.query(&st, &[&7i32]).unwrap();
    assert_eq!(r[0].get::<_, String>(0), "n7");

    // Aggregates.
    let r = c.query("SELECT count(*), sum(id) FROM t", &[]).unwrap();
    assert_eq!(r[0].get::<_, i64>(0), 10);
    assert_eq!(r[0].get::<_, i64>(1), 55);

    // UPDATE / DELETE counts (broadcast, summed over Tstores).
    assert_eq!(
        c.execute("UPDATE t SET score = score * 2 WHERE id > 5", &[])
            .unwrap(),
        5
    );
    let r = c.query("SELECT score FROM t WHERE id = 10", &[]).unwrap();
    assert_eq!(r[0].get::<_, f64>(0), 20.0);
    assert_eq!(c.execute("DELETE FROM t WHERE id > 8", &[]).unwrap(), 2);
    assert_eq!(c.query("SELECT id FROM t", &[]).unwrap().len(), 8);

    // Errors carry SQLSTATEs and leave the session usable.
    let e = c.query("SELECT * FROM nope", &[]).unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    let e = c.batch_execute("SELEC 1").unwrap_err();
    assert_eq!(sqlstate(&e), "42601");
    let e = c.batch_execute("SELECT nosuch FROM t").unwrap_err();
    assert_eq!(sqlstate(&e), "42703");
    let e = c.batch_execute("CREATE TABLE t (a INT)").unwrap_err();
    assert_eq!(sqlstate(&e), "42P07");
    let e = c
        .batch_execute("INSERT INTO t (id) VALUES (NULL)")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23502");
    let e = c
        .batch_execute("INSERT INTO t (id) VALUES ('abc')")
        .unwrap_err();
    assert!(["22P02", "42804"].contains(&sqlstate(&e).as_str()), "{e}");
    assert_eq!(
        c.query("SELECT count(*) FROM t", &[]).unwrap()[0].get::<_, i64>(0),
        8
    );

    // COPY FROM STDIN (CSV).
    {
        let mut w = c
            .copy_in("COPY t (id, name) FROM STDIN WITH (FORMAT csv)")
            .unwrap();
        w.write_all(b"20,twenty\n21,\"twenty, one\"\n22,\n")
            .unwrap();
        assert_eq!(w.finish().unwrap(), 3);
    }
    let r = c.query("SELECT name FROM t WHERE id = 21", &[]).unwrap();
    assert_eq!(r[0].get::<_, String>(0), "twenty, one");
    // COPY FROM STDIN (text format).
    {
        let mut w = c.copy_in("COPY t (id, name) FROM STDIN").unwrap();
        w.write_all(b"23\ttab\\there\n24\t\\N\n").unwrap();
        assert_eq!(w.finish().unwrap(), 2);
    }
    assert_eq!(
        text_rows(&mut c, "SELECT name FROM t WHERE id >= 23 ORDER BY id"),
        vec![vec![Some("tab\there".into())], vec![None]]
    );

    // COPY FROM a file with a header; a malformed line rejects the whole file.
    let good = dir.path().join("good.csv");
    std::fs::write(&good, "id,name\n30,a\n31,b\n32,c\n").unwrap();
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "id,name\n40,a\n4x,b\n42,c\n").unwrap();
    let n = c
        .execute(
            &format!(
                "COPY t (id, name) FROM '{}' WITH (FORMAT csv, HEADER)",
                good.display()
            ),
            &[],
        )
        .unwrap();
    assert_eq!(n, 3);
    let e = c
        .batch_execute(&format!(
            "COPY t (id, name) FROM '{}' WITH (FORMAT csv, HEADER)",
            bad.display()
        ))
        .unwrap_err();
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("line 3"), "{msg}");
    assert_eq!(
        c.query("SELECT id FROM t WHERE id >= 40", &[])
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        c.query("SELECT count(*) FROM t", &[]).unwrap()[0].get::<_, i64>(0),
        16
    );

    // INSERT ... SELECT.
    c.batch_execute("CREATE TABLE u (id BIGINT, label TEXT)")
        .unwrap();
    assert_eq!(
        c.execute("INSERT INTO u SELECT id, name FROM t WHERE id >= 30", &[])
            .unwrap(),
        3
    );

    // Round-robin balance over the 4 Tstores, visible in smrdb_tstores.
    c.batch_execute("CREATE TABLE bal (k INT)").unwrap();
    for i in 0..10 {
        c.execute(&format!("INSERT INTO bal VALUES ({i})"), &[])
            .unwrap();
    }
    let per = tstore_rows(&mut c, "bal");
    assert_eq!(per.len(), 4, "{per:?}");
    assert_eq!(per.iter().sum::<i64>(), 10);
    assert!(
        per.iter().max().unwrap() - per.iter().min().unwrap() <= 1,
        "{per:?}"
    );
    // A bulk insert continues the round robin: one message per Tstore.
    let values: Vec<String> = (0..13).map(|i| format!("({i})")).collect();
    c.execute(&format!("INSERT INTO bal VALUES {}", values.join(",")), &[])
        .unwrap();
    let per = tstore_rows(&mut c, "bal");
    assert_eq!(per.iter().sum::<i64>(), 23);
    assert!(
        per.iter().max().unwrap() - per.iter().min().unwrap() <= 1,
        "{per:?}"
    );
    let nodes = c
        .query("SELECT DISTINCT node FROM smrdb_tstores ORDER BY node", &[])
        .unwrap();
    assert_eq!(nodes.len(), 2);

    // DROP TABLE reaches every Tstore.
    c.batch_execute("DROP TABLE u").unwrap();
    assert!(tstore_rows(&mut c, "u").is_empty());
    let e = c.batch_execute("SELECT * FROM u").unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");

    // psql, when installed: command tags and aligned output.
    if Command::new("psql").arg("--version").output().is_ok() {
        let psql = |args: &[&str]| -> String {
            let out = Command::new("psql")
                .args([
                    "-X",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &cl.port.to_string(),
                    "-U",
                    "smrdb",
                    "smrdb",
                ])
                .args(args)
                .output()
                .expect("psql runs");
            assert!(
                out.status.success(),
                "psql {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        };
        let out = psql(&[
            "-c",
            "CREATE TABLE p (a INT, b TEXT)",
            "-c",
            "INSERT INTO p VALUES (1, 'x'), (2, 'y')",
            "-c",
            "UPDATE p SET b = 'z' WHERE a = 2",
            "-c",
            "DELETE FROM p WHERE a = 1",
        ]);
        assert_eq!(out, "CREATE TABLE\nINSERT 0 2\nUPDATE 1\nDELETE 1\n");
        assert_eq!(psql(&["-At", "-c", "SELECT a, b FROM p"]), "2|z\n");
        let out = psql(&["-c", "SELECT a, b FROM p"]);
        assert!(out.contains(" a | b \n---+---\n 2 | z\n(1 row)"), "{out}");
    } else {
        // CI installs postgresql-client (soft-roce-setup/deps.sh): never skip there.
        assert!(
            std::env::var("CI").is_err(),
            "psql is not installed but CI is set: the psql session test must run"
        );
        eprintln!("psql not installed: psql checks skipped");
    }
}

#[test]
fn sql_on_shm() {
    sql_suite("shm");
}

#[test]
fn sql_on_tcp() {
    sql_suite("tcp");
}

#[test]
fn restart_after_kill9_gives_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let pg = free_port();
    let ports = [free_port(), free_port()];
    let cf = ClusterFile::local(
        FabricKind::Shm,
        2,
        2,
        pg,
        &ports,
        "restart test secret".into(),
    );
    let file = dir.path().join("cluster.toml");
    cf.save(&file).unwrap();
    let data = dir.path().join("data");

    let queries = [
        "SELECT count(*), sum(k), min(s), max(s) FROM r",
        "SELECT k, s FROM r WHERE k % 7 = 0 ORDER BY k",
    ];
    let (before, balance) = {
        let mut nodes = Nodes::start(&file, 2, &data);
        let mut c = connect(pg);
        c.batch_execute("CREATE TABLE r (k INT NOT NULL, s TEXT)")
            .unwrap();
        let vals: Vec<String> = (0..50).map(|i| format!("({i}, 's{i}')")).collect();
        c.execute(&format!("INSERT INTO r VALUES {}", vals.join(",")), &[])
            .unwrap();
        for i in 50..55 {
            c.execute(&format!("INSERT INTO r VALUES ({i}, 's{i}')"), &[])
                .unwrap();
        }
        c.execute("UPDATE r SET s = 'upd' WHERE k < 5", &[])
            .unwrap();
        c.execute("DELETE FROM r WHERE k >= 53", &[]).unwrap();
        let before: Vec<_> = queries.iter().map(|q| text_rows(&mut c, q)).collect();
        let balance = tstore_rows(&mut c, "r");
        drop(c);
        nodes.kill9();
        (before, balance)
    };
    assert_eq!(before[0][0][0].as_deref(), Some("53"));

    let _nodes = Nodes::start(&file, 2, &data);
    let mut c = connect(pg);
    let after: Vec<_> = queries.iter().map(|q| text_rows(&mut c, q)).collect();
    assert_eq!(before, after);
    assert_eq!(tstore_rows(&mut c, "r"), balance);
    // The round-robin cursor survived: the next 4 rows land one per Tstore.
    for i in 100..104 {
        c.execute(&format!("INSERT INTO r VALUES ({i}, 'x')"), &[])
            .unwrap();
    }
    let now = tstore_rows(&mut c, "r");
    let grown: Vec<i64> = now.iter().zip(&balance).map(|(a, b)| a - b).collect();
    assert_eq!(grown, [1, 1, 1, 1]);
}

#[test]
fn lost_node_fails_statements_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cl = LocalCluster::start("tcp", dir.path());
    let mut c = connect(cl.port);
    c.batch_execute("CREATE TABLE a (x INT)").unwrap();
    c.batch_execute("INSERT INTO a VALUES (1), (2), (3), (4)")
        .unwrap();
    kill_pid(cl.node_pids[1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let e = loop {
        match c.query("SELECT count(*) FROM a", &[]) {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "queries keep succeeding without node 1"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    let db = e.as_db_error().expect("a database error");
    assert_eq!(db.code().code(), "08006");
    assert!(db.message().contains("node 1"), "{}", db.message());
    // The session (and the primary) keep working for what needs no Tstore.
    assert_eq!(text_rows(&mut c, "SELECT 1"), vec![vec![Some("1".into())]]);
    // Rows bound for node 1's Tstores cannot be written.
    let e = c
        .batch_execute("INSERT INTO a VALUES (5), (6), (7), (8)")
        .unwrap_err();
    assert_eq!(sqlstate(&e), "08006");
}

/// A size as EXPLAIN prints it (`123 B`, `4.5 MiB`): (bytes, how far the exact value
/// can be from it). Sizes from 1 KiB up are printed with one decimal, so the exact value
/// is within half a unit of the last digit.
fn explain_size(s: &str) -> (f64, f64) {
    let (num, unit) = s
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("not a size: {s:?}"));
    let x: f64 = num.parse().unwrap_or_else(|_| panic!("not a size: {s:?}"));
    let scale = match unit {
        "B" => return (x, 0.0),
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => panic!("unit of {s:?}"),
    };
    (x * scale, 0.05 * scale)
}

/// Every (node, peer) -> (bytes_written, messages_sent) of `smrdb_router`: exact router
/// counters, read before and after a statement to see what it moved.
fn router_counters(c: &mut Client) -> std::collections::BTreeMap<(u32, u32), (u64, u64)> {
    text_rows(
        c,
        "SELECT node, peer, bytes_written, messages_sent FROM smrdb_router",
    )
    .into_iter()
    .map(|r| {
        let n = |i: usize| r[i].as_deref().unwrap().parse::<u64>().unwrap();
        ((n(0) as u32, n(1) as u32), (n(2), n(3)))
    })
    .collect()
}

/// The exchange of EXPLAIN whose line contains `header`: its id, that line and the
/// indented lines under it.
fn exchange_lines<'a>(plan: &'a [String], header: &str) -> (u16, Vec<&'a str>) {
    let at = plan
        .iter()
        .position(|l| l.starts_with("  #") && l.contains(header))
        .unwrap_or_else(|| panic!("no exchange {header:?} in {plan:#?}"));
    let id = plan[at][3..]
        .split_whitespace()
        .next()
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no exchange id in {:?}", plan[at]));
    let mut lines = vec![plan[at].as_str()];
    lines.extend(
        plan[at + 1..]
            .iter()
            .take_while(|l| l.starts_with("     "))
            .map(String::as_str),
    );
    (id, lines)
}

/// A 9 MB join table crosses the network as the router mode says: one copy of each
/// node's share to every other node (smr), or one per remote Tstore (naive). The exact
/// router counters around EXPLAIN ANALYZE match the bytes the broadcast exchange
/// measured (times the copies), EXPLAIN's own per-pair figures agree with them, and
/// its expectation per node pair (from the catalog's statistics) is close to them.
fn join_counts(fabric: &str, mode: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cl = LocalCluster::start_with(fabric, dir.path(), &["--router-mode", mode]);
    // Remote Tstores a join table is copied to, per remote node.
    let copies: f64 = if mode == "naive" { 2.0 } else { 1.0 };
    let mut c = connect(cl.port);
    c.batch_execute("CREATE TABLE jp (k INT, v INT); CREATE TABLE jb (k INT, pad TEXT, w INT)")
        .unwrap();
    // jp: 4000 rows, k = i % 1000; jb: 30000 rows with ~300-byte text (about 9 MB, so
    // every Tstore's join table spans several 1 MiB chunks), k = i % 1500.
    let mut sql = String::from("INSERT INTO jp VALUES ");
    for i in 0..4000 {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(&format!("({}, {i})", i % 1000));
    }
    c.batch_execute(&sql).unwrap();
    let pad = "x".repeat(300);
    for chunk in 0..6 {
        let mut sql = String::from("INSERT INTO jb VALUES ");
        for j in 0..5000 {
            let i = chunk * 5000 + j;
            if j > 0 {
                sql.push(',');
            }
            sql.push_str(&format!("({}, '{pad}{i}', {i})", i % 1500));
        }
        c.batch_execute(&sql).unwrap();
    }
    // Expected answer, computed here: for each jp row (k < 1000), jb rows with that k:
    // i in 0..30000 with i % 1500 == k: 20 rows.
    let expect_count: i64 = 4000 * 20;
    let expect_sum: i64 = (0..4000i64).map(|i| i * 20).sum();
    // max(jb.pad) keeps the text column in the join table (about 9 MB cluster-wide).
    let q = "SELECT count(*), sum(jp.v), max(jb.pad) FROM jp JOIN jb ON jp.k = jb.k";
    let r = text_rows(&mut c, &format!("SET smrdb.pivot = 'jp'; {q}"));
    assert_eq!(
        r,
        vec![vec![
            Some(expect_count.to_string()),
            Some(expect_sum.to_string()),
            Some(format!("{pad}9999")),
        ]]
    );
    // EXPLAIN ANALYZE with jp forced as the pivot (the SET above holds for the
    // session): jb (9 MB) is the join table. The router counters are read around it.
    let before = router_counters(&mut c);
    let plan: Vec<String> = text_rows(&mut c, &format!("EXPLAIN ANALYZE {q}"))
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    let after = router_counters(&mut c);
    let router = if mode == "naive" {
        "broadcast one copy per remote Tstore (naive router)"
    } else {
        "broadcast one copy per node (shared memory router)"
    };
    assert!(
        plan[0].starts_with("Distributed plan: 2 nodes x 2 Tstores") && plan[0].contains(router),
        "{plan:#?}"
    );
    assert!(
        plan.iter().any(|l| l.starts_with("  - ")
            && l.contains("pivot [jp] stays in place (forced by smrdb.pivot); [jb] is broadcast")),
        "{plan:#?}"
    );
    let (id, x) = exchange_lines(
        &plan,
        "broadcast, every Tstore to every Tstore: join table [jb]",
    );
    // What the broadcast's producers sent: every jb row once, each Tstore's share
    // (about 2.3 MB) in several 1 MiB chunks.
    let measured = x
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("measured: "))
        .unwrap_or_else(|| panic!("no measured line for #{id}: {plan:#?}"));
    let w: Vec<&str> = measured.split_whitespace().collect();
    // R rows, X UNIT in N chunks
    assert_eq!((w[1], w[4], w[6]), ("rows,", "in", "chunks"), "{measured}");
    assert_eq!(w[0], "30000", "{plan:#?}");
    let (sent, sent_err) = explain_size(&format!("{} {}", w[2], w[3]));
    let chunks: u64 = w[5].parse().unwrap();
    assert!(
        chunks >= 2 * 4,
        "{chunks} chunks for 4 Tstores' ~2.3 MB: {plan:#?}"
    );
    assert!(sent > 8.0 * 1024.0 * 1024.0, "{plan:#?}");
    // Every Tstore received the whole join table exactly once.
    assert!(
        plan.iter()
            .any(|l| l.contains(&format!("ExchangeExec: broadcast #{id}  [rows=120000,"))),
        "{plan:#?}"
    );
    // Expected per pair: each node's half of the table, `copies` times. The router
    // counters also count a few small task messages (the request, replies, the gather
    // of 4 partial aggregates, statistics): at most 64 KiB. With smr never one copy per
    // remote Tstore (that would be twice the bytes).
    let share = sent / 2.0 * copies;
    let share_err = sent_err / 2.0 * copies;
    let pairs = [(0u32, 1u32), (1, 0)];
    let mut total_msgs = 0;
    let mut counted = Vec::new();
    for (a, b) in pairs {
        let (b0, m0) = before.get(&(a, b)).copied().unwrap_or_default();
        let (b1, m1) = after[&(a, b)];
        let (bytes, msgs) = ((b1 - b0) as f64, m1 - m0);
        total_msgs += msgs;
        assert!(
            bytes >= share - share_err && bytes <= share + share_err + 65536.0,
            "node {a} -> {b}: {bytes} bytes written for {share} join-table bytes \
             ({copies} copies of half of {sent} bytes)\n{plan:#?}"
        );
        // Each of the node's 2 Tstores sends at least 2 chunks, `copies` times.
        assert!(
            msgs as f64 >= 2.0 * 2.0 * copies,
            "node {a} -> {b}: {msgs} messages\n{plan:#?}"
        );
        // EXPLAIN's own per-pair figure (measured inside the statement).
        let line = plan
            .iter()
            .find_map(|l| l.strip_prefix(&format!("  node {a} -> node {b}: ")))
            .unwrap_or_else(|| panic!("no measured {a}->{b}: {plan:#?}"));
        let (shown, shown_err) = explain_size(line);
        assert!(
            shown <= bytes + shown_err && shown >= bytes - 65536.0 - shown_err,
            "node {a} -> {b}: EXPLAIN says {line}, the routers counted {bytes} bytes\n{plan:#?}"
        );
        counted.push((a, b, bytes));
    }
    // Every chunk crossed to the other node `copies` times.
    assert!(
        total_msgs as f64 >= chunks as f64 * copies,
        "{total_msgs} messages for {chunks} chunks\n{plan:#?}"
    );
    // What EXPLAIN expected before running (from the catalog's statistics), per node
    // pair and with the router's copies: within 50% of what the routers counted.
    let expected = x
        .iter()
        .find_map(|l| l.trim_start().strip_prefix("expected per node pair: "))
        .unwrap_or_else(|| panic!("no expectation for #{id}: {plan:#?}"));
    let wording = if mode == "naive" {
        "(each node's share to every other node, 2 copies (one per remote Tstore))"
    } else {
        "(each node's share to every other node, one copy per node)"
    };
    let (size, why) = expected.split_at(expected.find(" (").unwrap());
    assert_eq!(why.trim(), wording, "{plan:#?}");
    let (est, _) = explain_size(size);
    for (a, b, bytes) in counted {
        assert!(
            est >= bytes / 1.5 && est <= bytes * 1.5,
            "node {a} -> {b}: EXPLAIN expected {size} per node pair, the routers counted \
             {bytes} bytes\n{plan:#?}"
        );
    }
}

#[test]
fn join_tables_cross_the_network_once_per_remote_node_shm() {
    join_counts("shm", "smr");
}

#[test]
fn join_tables_cross_the_network_once_per_remote_node_tcp() {
    join_counts("tcp", "smr");
}

#[test]
fn naive_router_mode_sends_and_explains_one_copy_per_remote_tstore() {
    join_counts("shm", "naive");
}
