//! End-to-end tests of what Postgres clients get from the primary: password
//! authentication (md5, SCRAM-SHA-256, trust), CancelRequest, `statement_timeout`,
//! and 32 concurrent clients running mixed reads and writes with every answer checked.
//!
//! Each test starts its own cluster (2 nodes x 2 Tstores on shm, `smrdb node`
//! processes killed on drop) and the tests run one at a time: the timing assertions
//! (a cancel answered within 1 s) and the throughput figure should not compete with
//! another test's cluster. Run in release (`cargo test --release -p smrdb-node --test
//! clients -- --nocapture` shows the throughput).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, SimpleQueryMessage};
use smrdb_node::auth::{md5_hash, ScramVerifier};
use smrdb_node::config::{AuthMethod, ClusterFile, User};
use smrdb_transport::FabricKind;

mod common;
use common::{free_port, rows, BIN};

/// One cluster at a time (see the module documentation).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// `smrdb node` processes of one cluster; killed on drop (logs shown on failure).
struct Cluster {
    nodes: Vec<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(auth: AuthMethod, users: Vec<User>) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let routers = [free_port(), free_port()];
        let mut cf = ClusterFile::local(
            FabricKind::Shm,
            2,
            2,
            port,
            &routers,
            "clients test secret".into(),
        );
        cf.primary.auth = auth;
        cf.primary.users = users;
        cf.validate().unwrap();
        let file = dir.path().join("cluster.toml");
        cf.save(&file).unwrap();
        let nodes = (0..2)
            .map(|id| {
                let log = std::fs::File::create(dir.path().join(format!("node-{id}.log"))).unwrap();
                Command::new(BIN)
                    .arg("node")
                    .arg("--cluster")
                    .arg(&file)
                    .args(["--id", &id.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("smrdb node starts")
            })
            .collect();
        let c = Cluster { nodes, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the primary never listened");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn conn_str(&self, user: &str, password: Option<&str>) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={user} dbname=smrdb connect_timeout=20",
            self.port
        );
        if let Some(p) = password {
            let p = p.replace('\\', "\\\\").replace('\'', "\\'");
            s.push_str(&format!(" password='{p}'"));
        }
        s
    }

    fn connect_as(&self, user: &str, password: Option<&str>) -> Result<Client, postgres::Error> {
        Client::connect(&self.conn_str(user, password), NoTls)
    }

    fn connect(&self) -> Client {
        self.connect_as("smrdb", None).expect("trust connection")
    }

    fn log(&self) -> String {
        (0..2)
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- node logs (last lines) ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        for c in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn db_error(e: &postgres::Error) -> (String, String, String) {
    match e.as_db_error() {
        Some(d) => (
            d.code().code().to_string(),
            d.severity().to_string(),
            d.message().to_string(),
        ),
        None => (format!("not a db error: {e}"), String::new(), String::new()),
    }
}

fn one(c: &mut Client, sql: &str) -> String {
    rows(c, sql)[0][0].clone().unwrap_or_default()
}

/// psql with a password, if psql is installed: (success, stdout + stderr).
fn psql(port: u16, user: &str, password: &str, sql: &str) -> Option<(bool, String)> {
    let out = Command::new("psql")
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname=smrdb connect_timeout=20"
        ))
        .args(["-X", "-tA", "-c", sql])
        .env("PGPASSWORD", password)
        .env_remove("PGSERVICE")
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

fn check_password_auth(method: AuthMethod) {
    // alice: a cleartext password in the cluster file; bob: the hashed form
    // PostgreSQL stores for the method.
    let bob_stored = match method {
        AuthMethod::Md5 => md5_hash("bob", "b0b's pw"),
        _ => ScramVerifier::derive("b0b's pw", b"0123456789abcdef", 4096).to_text(),
    };
    let cluster = Cluster::start(
        method,
        vec![
            User {
                name: "alice".into(),
                password: "correct horse battery".into(),
            },
            User {
                name: "bob".into(),
                password: bob_stored,
            },
        ],
    );
    for (user, pw) in [("alice", "correct horse battery"), ("bob", "b0b's pw")] {
        let mut c = cluster
            .connect_as(user, Some(pw))
            .unwrap_or_else(|e| panic!("{method}: {user} refused: {e}"));
        assert_eq!(one(&mut c, "SELECT 1"), "1");
    }
    // Wrong password, unknown user: the same FATAL 28P01, the connection closes.
    for (user, pw) in [
        ("alice", "wrong"),
        ("alice", "correct horse batter"),
        ("bob", "correct horse battery"),
        ("mallory", "correct horse battery"),
        ("smrdb", ""),
    ] {
        let e = match cluster.connect_as(user, Some(pw)) {
            Ok(_) => panic!("{method}: {user} accepted with a wrong password"),
            Err(e) => e,
        };
        let (code, severity, message) = db_error(&e);
        assert_eq!(code, "28P01", "{method}: {user}: {e}");
        assert_eq!(severity, "FATAL");
        assert_eq!(
            message,
            format!("password authentication failed for user \"{user}\"")
        );
    }
    // Without a password the client cannot even answer.
    assert!(cluster.connect_as("alice", None).is_err());
    // libpq (psql) agrees, when installed.
    if let Some((ok, out)) = psql(
        cluster.port,
        "alice",
        "correct horse battery",
        "SELECT 41 + 1",
    ) {
        assert!(ok, "{method}: psql: {out}");
        assert_eq!(out.trim(), "42");
        let (ok, out) = psql(cluster.port, "alice", "nope", "SELECT 1").unwrap();
        assert!(!ok);
        assert!(
            out.contains("password authentication failed for user \"alice\""),
            "{out}"
        );
    }
    // Nothing logs a password.
    let log = cluster.log();
    for secret in ["correct horse", "b0b's pw"] {
        assert!(!log.contains(secret), "a password reached the log");
    }
    assert!(log.contains("password authentication failed for user \"mallory\""));
}

#[test]
fn md5_password_authentication() {
    let _s = serial();
    check_password_auth(AuthMethod::Md5);
}

#[test]
fn scram_sha_256_password_authentication() {
    let _s = serial();
    check_password_auth(AuthMethod::ScramSha256);
}

/// Rows 0..n of one INT column, written as a file the primary COPYs from.
fn load(c: &mut Client, dir: &Path, table: &str, col: &str, n: u32) {
    let path: PathBuf = dir.join(format!("{table}.csv"));
    let text: String = (0..n).map(|i| format!("{i}\n")).collect();
    std::fs::write(&path, text).unwrap();
    c.batch_execute(&format!("CREATE TABLE {table} ({col} INT NOT NULL)"))
        .unwrap();
    let copied = c
        .execute(
            &format!("COPY {table} FROM '{}' (FORMAT csv)", path.display()),
            &[],
        )
        .unwrap();
    assert_eq!(copied, u64::from(n));
}

const N: u32 = 40_000;
/// A join of two N-row tables that keeps every Tstore busy for seconds.
const SLOW: &str = "SELECT count(*) FROM a, b WHERE (a.x * b.y) % 7 = 3";

/// What [`SLOW`] answers, by residues.
fn slow_answer() -> u64 {
    let mut by = [0u64; 7];
    for i in 0..u64::from(N) {
        by[(i % 7) as usize] += 1;
    }
    let mut n = 0;
    for (ra, ca) in by.iter().enumerate() {
        for (rb, cb) in by.iter().enumerate() {
            if (ra * rb) % 7 == 3 {
                n += ca * cb;
            }
        }
    }
    n
}

#[test]
fn cancel_and_statement_timeout() {
    let _s = serial();
    let cluster = Cluster::start(AuthMethod::Trust, Vec::new());
    // Trust accepts any user name without a password.
    let mut anyone = cluster.connect_as("whoever", None).unwrap();
    assert_eq!(one(&mut anyone, "SELECT 2"), "2");
    drop(anyone);

    let mut c = cluster.connect();
    load(&mut c, cluster.dir.path(), "a", "x", N);
    load(&mut c, cluster.dir.path(), "b", "y", N);

    // statement_timeout (simple protocol), PostgreSQL's value forms.
    assert_eq!(one(&mut c, "SHOW statement_timeout"), "0");
    c.batch_execute("SET statement_timeout = 2000").unwrap();
    assert_eq!(one(&mut c, "SHOW statement_timeout"), "2s");
    c.batch_execute("SET statement_timeout = '1s'").unwrap();
    assert_eq!(one(&mut c, "SHOW statement_timeout"), "1s");
    let bad = c
        .batch_execute("SET statement_timeout = 'soon'")
        .unwrap_err();
    assert_eq!(db_error(&bad).0, "22023");
    let t0 = Instant::now();
    let e = c.simple_query(SLOW).unwrap_err();
    let took = t0.elapsed();
    let (code, _, message) = db_error(&e);
    assert_eq!(code, "57014", "{e}");
    assert_eq!(message, "canceling statement due to statement timeout");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(2),
        "statement_timeout 1s fired after {took:?}"
    );
    println!("statement_timeout = 1s: 57014 after {took:?}");
    // Fast statements are unaffected; 0 turns it off.
    assert_eq!(one(&mut c, "SELECT 1"), "1");
    c.batch_execute("SET statement_timeout = 0").unwrap();
    assert_eq!(one(&mut c, "SHOW statement_timeout"), "0");

    // Cancel (extended protocol) 300 ms into the statement.
    let token = c.cancel_token();
    let runner = std::thread::spawn(move || {
        let r = c.query(SLOW, &[]);
        (c, r, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(300));
    let canceled_at = Instant::now();
    token.cancel_query(NoTls).unwrap();
    let (mut c, r, ended) = runner.join().unwrap();
    let e = r.expect_err("the statement was canceled");
    let (code, severity, message) = db_error(&e);
    assert_eq!(code, "57014", "{e}");
    assert_eq!(severity, "ERROR");
    assert_eq!(message, "canceling statement due to user request");
    let after = ended.saturating_duration_since(canceled_at);
    assert!(after < Duration::from_secs(1), "the cancel took {after:?}");
    println!("cancel: 57014 {after:?} after the CancelRequest");
    // The connection stays usable.
    assert_eq!(one(&mut c, "SELECT 1"), "1");

    // The abandoned tasks' late replies are dropped: these wait for the Tstores to
    // finish the abandoned joins, then get their own answers.
    assert_eq!(one(&mut c, "SELECT count(*) FROM a"), N.to_string());
    let sum: u64 = (0..u64::from(N)).sum();
    assert_eq!(one(&mut c, "SELECT sum(y) FROM b"), sum.to_string());
    // A cancel while idle is ignored (it does not hit the next statement).
    token.cancel_query(NoTls).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(one(&mut c, "SELECT count(*) FROM b"), N.to_string());

    // Uninterrupted, the statement runs for seconds and answers right.
    let t0 = Instant::now();
    let n = one(&mut c, SLOW);
    let full = t0.elapsed();
    assert_eq!(n, slow_answer().to_string());
    println!("the slow join uninterrupted: {full:?}");
    assert!(
        full > Duration::from_secs(2),
        "the slow join took only {full:?}: the cancel test proves little"
    );
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn command_rows(msgs: &[SimpleQueryMessage]) -> Option<u64> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::CommandComplete(n) => Some(*n),
        _ => None,
    })
}

/// One client's run: mixed statements against its own rows of `kv`, each answer
/// compared with the model the client keeps. Returns (statements, model, problems).
fn client_run(
    mut c: Client,
    me: i32,
    until: Instant,
) -> (u64, std::collections::BTreeMap<i32, i64>, Vec<String>) {
    let mut model: std::collections::BTreeMap<i32, i64> = Default::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (me as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
    let mut next_key = 0i32;
    let mut n = 0u64;
    let mut problems = Vec::new();
    fn check(problems: &mut Vec<String>, ok: bool, what: String) {
        if !ok {
            problems.push(what);
        }
    }
    while Instant::now() < until && problems.len() < 10 {
        let op = rng.below(100);
        // Mostly existing keys, sometimes one never inserted.
        let key_range = next_key as u64 + 2;
        let some_key = |rng: &mut Rng| rng.below(key_range) as i32;
        n += 1;
        match op {
            // INSERT (extended protocol).
            0..=29 => {
                let k = next_key;
                next_key += 1;
                let v = rng.below(1000) as i64 - 500;
                match c.execute(&format!("INSERT INTO kv VALUES ({me}, {k}, {v})"), &[]) {
                    Ok(r) => check(&mut problems, r == 1, format!("insert k={k}: {r} rows")),
                    Err(e) => check(&mut problems, false, format!("insert: {e}")),
                }
                model.insert(k, v);
            }
            // UPDATE one key (simple protocol).
            30..=49 => {
                let k = some_key(&mut rng);
                let d = rng.below(100) as i64 + 1;
                let sql = format!("UPDATE kv SET v = v + {d} WHERE c = {me} AND k = {k}");
                match c.simple_query(&sql) {
                    Ok(m) => {
                        let want = u64::from(model.contains_key(&k));
                        let got = command_rows(&m);
                        check(
                            &mut problems,
                            got == Some(want),
                            format!("{sql}: {got:?} rows, want {want}"),
                        );
                    }
                    Err(e) => check(&mut problems, false, format!("{sql}: {e}")),
                }
                if let Some(v) = model.get_mut(&k) {
                    *v += d;
                }
            }
            // DELETE one key (extended protocol).
            50..=59 => {
                let k = some_key(&mut rng);
                let sql = format!("DELETE FROM kv WHERE c = {me} AND k = {k}");
                let want = u64::from(model.remove(&k).is_some());
                match c.execute(&sql, &[]) {
                    Ok(r) => check(
                        &mut problems,
                        r == want,
                        format!("{sql}: {r} rows, want {want}"),
                    ),
                    Err(e) => check(&mut problems, false, format!("{sql}: {e}")),
                }
            }
            // count and sum of my rows (simple protocol, text).
            60..=84 => {
                let sql = format!("SELECT count(*), sum(v) FROM kv WHERE c = {me}");
                match c.simple_query(&sql) {
                    Ok(m) => {
                        let got: Vec<(Option<String>, Option<String>)> = m
                            .iter()
                            .filter_map(|m| match m {
                                SimpleQueryMessage::Row(r) => {
                                    Some((r.get(0).map(String::from), r.get(1).map(String::from)))
                                }
                                _ => None,
                            })
                            .collect();
                        let sum =
                            (!model.is_empty()).then(|| model.values().sum::<i64>().to_string());
                        let want = vec![(Some(model.len().to_string()), sum)];
                        check(
                            &mut problems,
                            got == want,
                            format!("{sql}: {got:?}, want {want:?}"),
                        );
                    }
                    Err(e) => check(&mut problems, false, format!("{sql}: {e}")),
                }
            }
            // One value by key (extended protocol, binary BIGINT).
            _ => {
                let k = some_key(&mut rng);
                let sql = format!("SELECT v FROM kv WHERE c = {me} AND k = {k}");
                match c.query(&sql, &[]) {
                    Ok(r) => {
                        let got: Vec<i64> = r.iter().map(|row| row.get(0)).collect();
                        let want: Vec<i64> = model.get(&k).copied().into_iter().collect();
                        check(
                            &mut problems,
                            got == want,
                            format!("{sql}: {got:?}, want {want:?}"),
                        );
                    }
                    Err(e) => check(&mut problems, false, format!("{sql}: {e}")),
                }
            }
        }
    }
    (n, model, problems)
}

#[test]
fn thirty_two_clients_mixed_reads_and_writes() {
    let _s = serial();
    const CLIENTS: i32 = 32;
    const RUN: Duration = Duration::from_secs(10);
    let cluster = Cluster::start(AuthMethod::Trust, Vec::new());
    let mut c = cluster.connect();
    c.batch_execute("CREATE TABLE kv (c INT NOT NULL, k INT NOT NULL, v BIGINT NOT NULL)")
        .unwrap();
    // Connect everyone first: the clock starts when all are in.
    let clients: Vec<Client> = (0..CLIENTS).map(|_| cluster.connect()).collect();
    let until = Instant::now() + RUN;
    let t0 = Instant::now();
    let results = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            let results = results.clone();
            std::thread::spawn(move || {
                let r = client_run(client, i as i32, until);
                results.lock().unwrap().push((i as i32, r));
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    let elapsed = t0.elapsed();
    let mut results = std::mem::take(&mut *results.lock().unwrap());
    results.sort_by_key(|r| r.0);
    let total: u64 = results.iter().map(|(_, (n, _, _))| n).sum();
    let problems: Vec<String> = results
        .iter()
        .flat_map(|(i, (_, _, p))| p.iter().map(move |p| format!("client {i}: {p}")))
        .collect();
    println!(
        "{CLIENTS} clients, mixed reads and writes: {total} statements in {:.1} s = {:.0} statements/s (min {} / max {} per client)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        results.iter().map(|(_, (n, _, _))| n).min().unwrap_or(&0),
        results.iter().map(|(_, (n, _, _))| n).max().unwrap_or(&0),
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        results.iter().all(|(_, (n, _, _))| *n > 0),
        "a client never ran"
    );
    // The table agrees with every client's model.
    let got = rows(
        &mut c,
        "SELECT c, count(*), sum(v) FROM kv GROUP BY c ORDER BY c",
    );
    let want: Vec<Vec<Option<String>>> = results
        .iter()
        .filter(|(_, (_, m, _))| !m.is_empty())
        .map(|(i, (_, m, _))| {
            vec![
                Some(i.to_string()),
                Some(m.len().to_string()),
                Some(m.values().sum::<i64>().to_string()),
            ]
        })
        .collect();
    assert_eq!(got, want);
}
