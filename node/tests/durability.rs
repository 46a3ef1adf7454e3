//! Durability under kill -9: with `--data-dir`, a client runs a loop of writes while
//! the whole cluster (every node process, then the `smrdb cluster` parent) is killed
//! with SIGKILL at a random moment; the cluster is restarted on the same directory and
//! the table is compared with the log the client kept:
//!
//! * every acknowledged statement's effect is there (and nothing else);
//! * the one statement in flight at the kill (not acknowledged) is either fully applied
//!   or not at all: all rows of a multi-row INSERT batch or none, every row of a group
//!   incremented by an UPDATE or none, a whole group deleted or none.
//!
//! The writes: single-row INSERTs (one Tstore), multi-row INSERTs whose rows land on
//! every Tstore (one group, all rows tagged with the batch), `UPDATE t SET v = v + 1
//! WHERE grp = k` (rows of group k live on every Tstore), DELETE of a group or of one
//! row. The nodes are killed in a random order with a random gap of 0-3 ms, so a
//! statement can be cut between the Tstores of one node and the other's.
//!
//! Rounds: 20 by default (about a minute); `SMRDB_DURABILITY_ROUNDS=n` for longer runs,
//! `SMRDB_DURABILITY_SEED=s` to replay a run (the seed is printed). Run in release:
//! `cargo test --release -p smrdb-node --test durability -- --nocapture`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use postgres::Client;

mod common;
use common::{connect_within, free_port, BIN};

/// Tstores of the cluster (2 nodes x 2).
const TSTORES: usize = 4;

/// xorshift64*: enough randomness for timings and choices, replayable from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// Whether process `pid` is gone (or a zombie: dead, not yet reaped).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
    }
}

fn sigkill(pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-9")
        .args(pids.iter().map(|p| p.to_string()))
        .stderr(Stdio::null())
        .status();
}

/// `smrdb cluster --nodes 2 --tstores 2 --fabric shm --data-dir D`; killed on drop.
struct Cluster {
    parent: Child,
    node_pids: Vec<u32>,
    port: u16,
    log: PathBuf,
}

impl Cluster {
    fn start(data: &Path, round: usize) -> Cluster {
        let port = free_port();
        let log = data.with_file_name(format!("cluster-{round}.log"));
        let mut parent = Command::new(BIN)
            .args([
                "cluster",
                "--nodes",
                "2",
                "--tstores",
                "2",
                "--fabric",
                "shm",
            ])
            .args(["--port", &port.to_string()])
            .arg("--data-dir")
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("smrdb cluster starts");
        let out = parent.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut c = Cluster {
            parent,
            node_pids: Vec::new(),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                panic!("round {round}: the cluster did not start; {}", c.log_tail());
            };
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

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(30);
        format!("cluster log:\n{}", lines[from..].join("\n"))
    }

    /// SIGKILL to both nodes (random order, 0-3 ms apart), then to the parent; returns
    /// once all are dead.
    fn kill_all(&mut self, rng: &mut Rng) {
        let mut pids = self.node_pids.clone();
        if rng.next().is_multiple_of(2) {
            pids.reverse();
        }
        let gap = Duration::from_micros(rng.range(0, 3000));
        sigkill(&pids[..1]);
        std::thread::sleep(gap);
        sigkill(&pids[1..]);
        let _ = self.parent.kill();
        let _ = self.parent.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.node_pids.iter().all(|&p| dead(p)) {
            assert!(Instant::now() < deadline, "node processes survive SIGKILL");
            std::thread::sleep(Duration::from_millis(5));
        }
        self.node_pids.clear();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        sigkill(&self.node_pids);
        let _ = self.parent.kill();
        let _ = self.parent.wait();
    }
}

/// Connects within 30 s (a restart takes well under a second).
fn connect(port: u16) -> Client {
    connect_within(port, Duration::from_secs(30), String::new)
}

/// A row of `t`: (grp, v, tag) by id.
type State = BTreeMap<i64, (i32, i64, i32)>;

/// One write statement of the client's log.
#[derive(Debug, Clone)]
enum Op {
    /// One row, group 0.
    InsertOne { id: i64 },
    /// Rows `first..first+n` of a new group `grp` (tag = grp).
    InsertBatch { first: i64, n: i64, grp: i32 },
    /// `v = v + 1` for every row of the group.
    Update { grp: i32 },
    /// Every row of the group.
    DeleteGroup { grp: i32 },
    /// One row.
    DeleteOne { id: i64 },
}

impl Op {
    fn sql(&self) -> String {
        match self {
            Op::InsertOne { id } => format!("INSERT INTO t VALUES ({id}, 0, 0, 0)"),
            Op::InsertBatch { first, n, grp } => {
                let rows: Vec<String> = (*first..first + n)
                    .map(|id| format!("({id}, {grp}, 0, {grp})"))
                    .collect();
                format!("INSERT INTO t VALUES {}", rows.join(", "))
            }
            Op::Update { grp } => format!("UPDATE t SET v = v + 1 WHERE grp = {grp}"),
            Op::DeleteGroup { grp } => format!("DELETE FROM t WHERE grp = {grp}"),
            Op::DeleteOne { id } => format!("DELETE FROM t WHERE id = {id}"),
        }
    }

    /// Applies the statement to `s`; returns the rows it affects.
    fn apply(&self, s: &mut State) -> u64 {
        match *self {
            Op::InsertOne { id } => {
                s.insert(id, (0, 0, 0));
                1
            }
            Op::InsertBatch { first, n, grp } => {
                for id in first..first + n {
                    s.insert(id, (grp, 0, grp));
                }
                n as u64
            }
            Op::Update { grp } => {
                let mut k = 0;
                for r in s.values_mut().filter(|r| r.0 == grp) {
                    r.1 += 1;
                    k += 1;
                }
                k
            }
            Op::DeleteGroup { grp } => {
                let before = s.len();
                s.retain(|_, r| r.0 != grp);
                (before - s.len()) as u64
            }
            Op::DeleteOne { id } => u64::from(s.remove(&id).is_some()),
        }
    }

    /// Whether the statement can touch row `id` (as it is in `s` or as it would be).
    fn touches(&self, id: i64, s: &State) -> bool {
        match *self {
            Op::InsertOne { id: i } | Op::DeleteOne { id: i } => i == id,
            Op::InsertBatch { first, n, .. } => (first..first + n).contains(&id),
            Op::Update { grp } | Op::DeleteGroup { grp } => s.get(&id).is_some_and(|r| r.0 == grp),
        }
    }
}

/// What the client knows: the table as acknowledged statements left it.
struct Model {
    state: State,
    next_id: i64,
    next_grp: i32,
}

impl Model {
    fn groups(&self) -> Vec<i32> {
        let mut g: Vec<i32> = self
            .state
            .values()
            .map(|r| r.0)
            .filter(|&g| g != 0)
            .collect();
        g.dedup();
        g.sort_unstable();
        g.dedup();
        g
    }

    fn pick(&mut self, rng: &mut Rng) -> Op {
        let groups = self.groups();
        let roll = rng.range(0, 99);
        let batch = |m: &mut Model, rng: &mut Rng| {
            // At least one row per Tstore: consecutive rows go round-robin.
            let n = rng.range(TSTORES as u64, 2 * TSTORES as u64 + 1) as i64;
            let op = Op::InsertBatch {
                first: m.next_id,
                n,
                grp: m.next_grp,
            };
            m.next_id += n;
            m.next_grp += 1;
            op
        };
        if roll < 30 {
            let op = Op::InsertOne { id: self.next_id };
            self.next_id += 1;
            op
        } else if roll < 55 || groups.is_empty() {
            batch(self, rng)
        } else if roll < 85 {
            Op::Update {
                grp: groups[rng.range(0, groups.len() as u64 - 1) as usize],
            }
        } else if roll < 93 || self.state.is_empty() {
            Op::DeleteGroup {
                grp: groups[rng.range(0, groups.len() as u64 - 1) as usize],
            }
        } else {
            let ids: Vec<i64> = self.state.keys().copied().collect();
            Op::DeleteOne {
                id: ids[rng.range(0, ids.len() as u64 - 1) as usize],
            }
        }
    }
}

fn read_state(c: &mut Client) -> State {
    c.query("SELECT id, grp, v, tag FROM t", &[])
        .expect("the table answers after a restart")
        .iter()
        .map(|r| {
            (
                r.get::<_, i64>(0),
                (r.get::<_, i32>(1), r.get::<_, i64>(2), r.get::<_, i32>(3)),
            )
        })
        .collect()
}

/// How a round's check went.
enum Verdict {
    /// As acknowledged; the in-flight statement applied or not (None: there was none).
    Ok(Option<bool>),
    /// Acknowledged rows missing or wrong.
    Lost(String),
    /// The in-flight statement applied on some rows and not others.
    Half(String),
}

fn diff(a: &State, b: &State) -> Vec<i64> {
    let mut ids: Vec<i64> = a.keys().chain(b.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    ids.retain(|id| a.get(id) != b.get(id));
    ids
}

fn check(model: &State, inflight: Option<&Op>, actual: &State) -> Verdict {
    if actual == model {
        return Verdict::Ok(inflight.map(|_| false));
    }
    let Some(op) = inflight else {
        let d = diff(model, actual);
        return Verdict::Lost(format!(
            "{} row(s) differ, e.g. ids {:?}",
            d.len(),
            &d[..d.len().min(8)]
        ));
    };
    let mut applied = model.clone();
    op.apply(&mut applied);
    if *actual == applied {
        return Verdict::Ok(Some(true));
    }
    let d = diff(model, actual);
    let show = |ids: &[i64]| -> String {
        ids.iter()
            .take(12)
            .map(|id| {
                format!(
                    "{id}: expected {:?} got {:?}",
                    model.get(id),
                    actual.get(id)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    if d.iter().all(|&id| op.touches(id, model)) {
        Verdict::Half(format!(
            "`{}`: {} of its rows changed: {}",
            op.sql(),
            d.len(),
            show(&d)
        ))
    } else {
        let bad: Vec<i64> = d.into_iter().filter(|&id| !op.touches(id, model)).collect();
        Verdict::Lost(format!(
            "{} row(s) outside the in-flight statement differ: {}",
            bad.len(),
            show(&bad)
        ))
    }
}

/// What one round's client did.
struct RoundLog {
    acked: Vec<Op>,
    inflight: Option<Op>,
}

/// Runs writes until one fails (the kill) or `stop` is set; every acknowledged
/// statement is applied to `state` and logged, the failed one is returned as in flight.
fn client_loop(port: u16, mut model: Model, seed: u64, stop: Arc<AtomicBool>) -> (Model, RoundLog) {
    let mut rng = Rng(seed | 1);
    let mut c = connect(port);
    let mut log = RoundLog {
        acked: Vec::new(),
        inflight: None,
    };
    while !stop.load(Ordering::Relaxed) {
        let op = model.pick(&mut rng);
        match c.execute(op.sql().as_str(), &[]) {
            Ok(n) => {
                let expect = op.apply(&mut model.state);
                assert_eq!(
                    n,
                    expect,
                    "`{}` acknowledged {n} rows, expected {expect}",
                    op.sql()
                );
                log.acked.push(op);
            }
            Err(_) => {
                log.inflight = Some(op);
                break;
            }
        }
    }
    (model, log)
}

#[test]
fn acknowledged_writes_survive_kill9_and_none_is_half_applied() {
    let rounds: usize = std::env::var("SMRDB_DURABILITY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("SMRDB_DURABILITY_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("durability: {rounds} rounds, seed {seed} (SMRDB_DURABILITY_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let started = Instant::now();

    let mut model = Model {
        state: State::new(),
        next_id: 1,
        next_grp: 1,
    };
    let mut inflight: Option<Op> = None;
    let (mut kills, mut acked_total, mut applied_inflight, mut dropped_inflight) = (0, 0, 0, 0);
    let mut rows_checked = 0usize;
    let mut redone = 0usize;
    let mut failures: Vec<String> = Vec::new();
    let mut restart_time = Duration::ZERO;
    for round in 0..=rounds {
        let t0 = Instant::now();
        let mut cluster = Cluster::start(&data, round);
        let mut c = connect_within(cluster.port, Duration::from_secs(30), || {
            format!("round {round}: {}", cluster.log_tail())
        });
        restart_time += t0.elapsed();
        if round == 0 {
            c.batch_execute(
                "CREATE TABLE t (id BIGINT NOT NULL, grp INT NOT NULL, v BIGINT NOT NULL, tag INT NOT NULL)",
            )
            .unwrap();
        } else {
            let actual = read_state(&mut c);
            rows_checked += actual.len();
            match check(&model.state, inflight.as_ref(), &actual) {
                Verdict::Ok(Some(true)) => applied_inflight += 1,
                Verdict::Ok(Some(false)) => dropped_inflight += 1,
                Verdict::Ok(None) => {}
                Verdict::Lost(m) => {
                    failures.push(format!("round {round}: acknowledged write lost: {m}"))
                }
                Verdict::Half(m) => {
                    failures.push(format!("round {round}: half-applied statement {m}"))
                }
            }
            // Go on from what is there (after a failure, the model cannot be trusted).
            model.state = actual;
        }
        drop(c);
        // What the primary's recovery did at this start (its log line).
        let log = std::fs::read_to_string(&cluster.log).unwrap_or_default();
        redone += log
            .lines()
            .filter_map(|l| l.split("statement log: completed ").nth(1))
            .filter_map(|r| r.split_whitespace().next()?.parse::<usize>().ok())
            .sum::<usize>();
        if round == rounds {
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let client = {
            let (port, stop, seed) = (cluster.port, stop.clone(), rng.next());
            let m = std::mem::replace(
                &mut model,
                Model {
                    state: State::new(),
                    next_id: 0,
                    next_grp: 0,
                },
            );
            std::thread::spawn(move || client_loop(port, m, seed, stop))
        };
        std::thread::sleep(Duration::from_millis(rng.range(50, 800)));
        cluster.kill_all(&mut rng);
        kills += 1;
        stop.store(true, Ordering::Relaxed);
        let (m, log) = client.join().expect("client thread");
        model = m;
        acked_total += log.acked.len();
        inflight = log.inflight;
    }
    let took = started.elapsed();
    println!(
        "durability: {rounds} rounds, {kills} kill -9 of the whole cluster survived, \
         {acked_total} acknowledged writes checked ({rows_checked} rows compared), \
         in-flight statements: {applied_inflight} applied, {dropped_inflight} not applied \
         ({redone} completed by the restart's recovery); {} failure(s); \
         {:.1} s ({:.1} s starting clusters)",
        failures.len(),
        took.as_secs_f64(),
        restart_time.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {rounds} rounds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
