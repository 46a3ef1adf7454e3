//! Differential test of multi-set (join) queries: random joins over random tables on a
//! real cluster, checked against a single-threaded nested-loop reference in this file.
//!
//! The test starts `smrdb cluster --nodes 2 --tstores 2 --fabric shm --port P` (the
//! release binary, built by `cargo build --release -p smrdb-node`), creates four tables
//! `jd_t0..jd_t3 (k INT, k2 INT, t TEXT, v INT)` filled from a seeded PRNG (keys from a
//! small domain, so duplicates everywhere, and about 10% NULL keys), then runs random
//! queries from a small grammar:
//!
//! * 2 to 4 table references (a table may appear twice: a self-join), each joined to an
//!   earlier one (a chain, a star or any tree) by an equi-join on `k` or `k2` (sometimes
//!   both), written as `JOIN ... ON` or as `FROM a, b WHERE`; the smallest table is
//!   sometimes joined without a condition (`CROSS JOIN`);
//! * optional single-table filters (`a.v > 3`, `b.t = 'y'`, ...), in WHERE or in ON;
//! * an optional non-equi condition over two tables (`a.v < b.v`, ...);
//! * either aggregates (COUNT(*), COUNT/SUM/MIN/MAX of a column) with an optional
//!   GROUP BY of one column, or a projection of a few columns (sometimes DISTINCT).
//!
//! The reference evaluates the same query with SQL semantics (a comparison with NULL is
//! not true, NULL keys never match) and both answers are compared as sorted multisets
//! of rendered rows. On a mismatch the test prints the seed, the query number, the SQL
//! and both answers; every query is generated from `seed` and its number alone, so
//! `SMRDB_DIFF_SEED=<seed>` reproduces a run.
//!
//! Environment:
//! * `SMRDB_DIFF_SEED`: the seed (decimal or 0x hex; default a fixed value).
//! * `SMRDB_DIFF_QUERIES`: how many queries (default 150).
//! * `SMRDB_DIFF_SCALE`: multiplies the table sizes (default 1: 200-400 rows in all).
//! * `SMRDB_DIFF_NODES`, `SMRDB_DIFF_TSTORES`: the cluster's shape (default 2 x 2).
//! * `SMRDB_BIN`: path of the `smrdb` binary (default `target/release/smrdb`).
//! * `SMRDB_DIFF_DUMP=DIR`: no cluster; write the tables (`DIR/tables.sql`) and every
//!   query with the reference's answer (`DIR/queries.txt`: the SQL, then its rows,
//!   then an empty line) to check the reference itself against another engine.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls, SimpleQueryMessage};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_SEED: u64 = 0x005e_ed0f_1015;
const DEFAULT_QUERIES: usize = 150;
/// Projections whose reference answer is larger than this are drawn again.
const MAX_PROJECTED_ROWS: usize = 5_000;
/// Queries whose reference needs more intermediate rows (or pairs to compare) than
/// this are drawn again: the nested loops must stay fast.
const MAX_INTERMEDIATE_ROWS: usize = 200_000;
const MAX_COMPARISONS: usize = 20_000_000;
/// Mismatches printed in full (the rest are counted).
const MAX_REPORTED: usize = 10;

// ------------------------------------------------------------------ the cluster

fn smrdb_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SMRDB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // deps/ -> <profile>/ -> target/
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    target.join("release").join("smrdb")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// A running `smrdb cluster`, stopped (SIGTERM to its process group, SIGKILL after a
/// grace period) when dropped, also when the test panics.
struct Cluster {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start(bin: &Path, nodes: u64, tstores: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("cluster.log");
        let out = fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let port = free_port();
        let child = Command::new(bin)
            .args(["cluster", "--fabric", "shm"])
            .args(["--nodes", &nodes.to_string()])
            .args(["--tstores", &tstores.to_string()])
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group: Drop can signal the cluster and every node it spawned.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        eprintln!(
            "[join_diff] started smrdb cluster pid {} on port {port} (log {})",
            child.id(),
            log.display()
        );
        Cluster {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn log_tail(&self) -> String {
        let s = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    fn conn_string(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=smrdb dbname=smrdb connect_timeout=10",
            self.port
        )
    }

    /// Retries connecting (and a trivial query) until the primary answers.
    fn connect_when_ready(&mut self) -> Client {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "smrdb cluster exited early ({status}); log tail:\n{}",
                    self.log_tail()
                );
            }
            match Client::connect(&self.conn_string(), NoTls) {
                Ok(mut c) => match c.simple_query("SELECT 1") {
                    Ok(_) => return c,
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "smrdb cluster not ready after {READY_TIMEOUT:?} (last error: {last}); log tail:\n{}",
            self.log_tail()
        );
    }

    fn signal_group(&self, sig: libc::c_int) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created
        // (process_group(0) made the child its leader); no memory is involved.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal_group(libc::SIGTERM);
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("[join_diff] cluster did not stop after SIGTERM; SIGKILL");
            }
        }
        // Whatever is left of the group (nodes the cluster spawned) goes now.
        self.signal_group(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ PRNG

/// SplitMix64: small, seedable, good enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p` percent.
    fn chance(&mut self, p: u64) -> bool {
        self.next_u64() % 100 < p
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

// ------------------------------------------------------------------ data

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Val {
    Null,
    Int(i64),
    Text(String),
}

impl Val {
    fn render(&self) -> String {
        match self {
            Val::Null => "NULL".into(),
            Val::Int(i) => i.to_string(),
            Val::Text(s) => format!("{s:?}"),
        }
    }

    fn sql(&self) -> String {
        match self {
            Val::Null => "NULL".into(),
            Val::Int(i) => i.to_string(),
            Val::Text(s) => format!("'{s}'"),
        }
    }
}

/// Columns of every table: `k INT, k2 INT, t TEXT, v INT`.
const COLS: [&str; 4] = ["k", "k2", "t", "v"];
const K: usize = 0;
const K2: usize = 1;
const T: usize = 2;
const V: usize = 3;
const TEXTS: [&str; 5] = ["x", "y", "z", "xy", ""];
const NTABLES: usize = 4;

struct Table {
    name: String,
    rows: Vec<Vec<Val>>,
}

fn make_tables(seed: u64, scale: usize) -> Vec<Table> {
    let mut rng = Rng::new(seed ^ 0xdead_beef);
    // Row counts: one larger table, smaller ones (chains of 4 stay small).
    let sizes = [(150, 260), (40, 110), (15, 45), (4, 20)];
    (0..NTABLES)
        .map(|i| {
            let n = rng.range(sizes[i].0, sizes[i].1) as usize * scale;
            let kdom = rng.range(4, 9);
            let rows = (0..n)
                .map(|_| {
                    let k = if rng.chance(10) {
                        Val::Null
                    } else {
                        Val::Int(rng.range(0, kdom))
                    };
                    let k2 = if rng.chance(10) {
                        Val::Null
                    } else {
                        Val::Int(rng.range(0, 3))
                    };
                    let t = if rng.chance(8) {
                        Val::Null
                    } else {
                        Val::Text(rng.pick(&TEXTS).to_string())
                    };
                    let v = if rng.chance(6) {
                        Val::Null
                    } else {
                        Val::Int(rng.range(-50, 50))
                    };
                    vec![k, k2, t, v]
                })
                .collect();
            Table {
                name: format!("jd_t{i}"),
                rows,
            }
        })
        .collect()
}

// ------------------------------------------------------------------ queries

/// A column of one table reference: (reference index, column index).
type ColRef = (usize, usize);

#[derive(Clone, Copy, Debug)]
enum Cmp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl Cmp {
    fn sql(self) -> &'static str {
        match self {
            Cmp::Eq => "=",
            Cmp::NotEq => "<>",
            Cmp::Lt => "<",
            Cmp::LtEq => "<=",
            Cmp::Gt => ">",
            Cmp::GtEq => ">=",
        }
    }

    /// SQL comparison: None (unknown) when either side is NULL.
    fn eval(self, a: &Val, b: &Val) -> Option<bool> {
        if matches!(a, Val::Null) || matches!(b, Val::Null) {
            return None;
        }
        let o = a.cmp(b);
        Some(match self {
            Cmp::Eq => o.is_eq(),
            Cmp::NotEq => o.is_ne(),
            Cmp::Lt => o.is_lt(),
            Cmp::LtEq => o.is_le(),
            Cmp::Gt => o.is_gt(),
            Cmp::GtEq => o.is_ge(),
        })
    }
}

/// One side of a comparison.
#[derive(Clone, Debug)]
enum Operand {
    Col(ColRef),
    /// `a + b` of two integer columns.
    Sum(ColRef, ColRef),
    Lit(Val),
}

#[derive(Clone, Debug)]
struct Cond {
    left: Operand,
    op: Cmp,
    right: Operand,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum AggKind {
    CountStar,
    Count,
    Sum,
    Min,
    Max,
}

#[derive(Clone, Debug)]
struct Agg {
    kind: AggKind,
    col: ColRef,
}

#[derive(Clone, Debug)]
enum Select {
    Aggs {
        group_by: Option<ColRef>,
        aggs: Vec<Agg>,
    },
    Cols {
        distinct: bool,
        cols: Vec<ColRef>,
    },
}

#[derive(Clone, Debug)]
struct Query {
    /// Table index of every reference (aliases r0, r1, ...).
    tables: Vec<usize>,
    /// Conditions that join reference i (i >= 1) to earlier ones: its ON clause.
    joins: Vec<Vec<Cond>>,
    /// Single-table filters and non-equi conditions placed in WHERE.
    wheres: Vec<Cond>,
    select: Select,
    /// JOIN ... ON (true) or FROM a, b WHERE (false).
    explicit: bool,
}

fn alias(r: usize) -> String {
    format!("r{r}")
}

fn col_sql((r, c): ColRef) -> String {
    format!("{}.{}", alias(r), COLS[c])
}

fn operand_sql(o: &Operand) -> String {
    match o {
        Operand::Col(c) => col_sql(*c),
        Operand::Sum(a, b) => format!("{} + {}", col_sql(*a), col_sql(*b)),
        Operand::Lit(v) => v.sql(),
    }
}

fn cond_sql(c: &Cond) -> String {
    format!(
        "{} {} {}",
        operand_sql(&c.left),
        c.op.sql(),
        operand_sql(&c.right)
    )
}

fn operand_refs(o: &Operand) -> Vec<usize> {
    match o {
        Operand::Col(c) => vec![c.0],
        Operand::Sum(a, b) => vec![a.0, b.0],
        Operand::Lit(_) => vec![],
    }
}

fn cond_max_ref(c: &Cond) -> usize {
    operand_refs(&c.left)
        .into_iter()
        .chain(operand_refs(&c.right))
        .max()
        .unwrap_or(0)
}

impl Query {
    fn sql(&self, tables: &[Table]) -> String {
        let select = match &self.select {
            Select::Aggs { group_by, aggs } => {
                let mut items: Vec<String> = Vec::new();
                if let Some(g) = group_by {
                    items.push(col_sql(*g));
                }
                for a in aggs {
                    items.push(match a.kind {
                        AggKind::CountStar => "COUNT(*)".into(),
                        AggKind::Count => format!("COUNT({})", col_sql(a.col)),
                        AggKind::Sum => format!("SUM({})", col_sql(a.col)),
                        AggKind::Min => format!("MIN({})", col_sql(a.col)),
                        AggKind::Max => format!("MAX({})", col_sql(a.col)),
                    });
                }
                items.join(", ")
            }
            Select::Cols { distinct, cols } => format!(
                "{}{}",
                if *distinct { "DISTINCT " } else { "" },
                cols.iter()
                    .map(|c| col_sql(*c))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut sql = format!("SELECT {select} FROM ");
        let mut wheres: Vec<String> = Vec::new();
        for (r, &t) in self.tables.iter().enumerate() {
            let name = &tables[t].name;
            if r == 0 {
                write!(sql, "{name} {}", alias(r)).unwrap();
            } else if self.explicit && self.joins[r].is_empty() {
                write!(sql, " CROSS JOIN {name} {}", alias(r)).unwrap();
            } else if self.explicit {
                let on: Vec<String> = self.joins[r].iter().map(cond_sql).collect();
                write!(sql, " JOIN {name} {} ON {}", alias(r), on.join(" AND ")).unwrap();
            } else {
                write!(sql, ", {name} {}", alias(r)).unwrap();
                wheres.extend(self.joins[r].iter().map(cond_sql));
            }
        }
        wheres.extend(self.wheres.iter().map(cond_sql));
        if !wheres.is_empty() {
            write!(sql, " WHERE {}", wheres.join(" AND ")).unwrap();
        }
        if let Select::Aggs {
            group_by: Some(g), ..
        } = &self.select
        {
            write!(sql, " GROUP BY {}", col_sql(*g)).unwrap();
        }
        sql
    }
}

fn random_filter(rng: &mut Rng, r: usize) -> Cond {
    match rng.below(6) {
        0 => Cond {
            left: Operand::Col((r, V)),
            op: *rng.pick(&[Cmp::Gt, Cmp::GtEq]),
            right: Operand::Lit(Val::Int(rng.range(-40, 40))),
        },
        1 => Cond {
            left: Operand::Col((r, V)),
            op: Cmp::LtEq,
            right: Operand::Lit(Val::Int(rng.range(-40, 40))),
        },
        2 => Cond {
            left: Operand::Col((r, T)),
            op: Cmp::Eq,
            right: Operand::Lit(Val::Text(rng.pick(&TEXTS).to_string())),
        },
        3 => Cond {
            left: Operand::Col((r, T)),
            op: Cmp::NotEq,
            right: Operand::Lit(Val::Text(rng.pick(&TEXTS).to_string())),
        },
        4 => Cond {
            left: Operand::Col((r, K2)),
            op: Cmp::NotEq,
            right: Operand::Lit(Val::Int(rng.range(0, 3))),
        },
        _ => Cond {
            left: Operand::Col((r, K)),
            op: Cmp::Lt,
            right: Operand::Lit(Val::Int(rng.range(1, 8))),
        },
    }
}

fn random_non_equi(rng: &mut Rng, a: usize, b: usize) -> Cond {
    match rng.below(4) {
        0 => Cond {
            left: Operand::Col((a, V)),
            op: *rng.pick(&[Cmp::Lt, Cmp::Gt, Cmp::LtEq]),
            right: Operand::Col((b, V)),
        },
        1 => Cond {
            left: Operand::Sum((a, V), (b, V)),
            op: Cmp::Gt,
            right: Operand::Lit(Val::Int(rng.range(-30, 30))),
        },
        2 => Cond {
            left: Operand::Col((a, T)),
            op: Cmp::NotEq,
            right: Operand::Col((b, T)),
        },
        _ => Cond {
            left: Operand::Col((a, K)),
            op: Cmp::LtEq,
            right: Operand::Col((b, K2)),
        },
    }
}

fn random_query(rng: &mut Rng) -> Query {
    let n = rng.range(2, 4) as usize;
    let mut tables: Vec<usize> = Vec::new();
    for _ in 0..n {
        // Mostly distinct tables; sometimes a table twice (a self-join).
        let t = loop {
            let t = rng.below(NTABLES);
            if !tables.contains(&t) || rng.chance(15) {
                break t;
            }
        };
        tables.push(t);
    }
    let shape = rng.below(3); // 0 chain, 1 star, 2 random tree
    let mut joins: Vec<Vec<Cond>> = vec![Vec::new()];
    for (r, &table) in tables.iter().enumerate().skip(1) {
        let parent = match shape {
            0 => r - 1,
            1 => 0,
            _ => rng.below(r),
        };
        if table == NTABLES - 1 && rng.chance(25) {
            // the smallest table without a join condition: a cross product
            joins.push(Vec::new());
            continue;
        }
        let key = |rng: &mut Rng| if rng.chance(70) { K } else { K2 };
        let mut conds = vec![Cond {
            left: Operand::Col((parent, key(rng))),
            op: Cmp::Eq,
            right: Operand::Col((r, key(rng))),
        }];
        if rng.chance(12) {
            // a second key column
            conds.push(Cond {
                left: Operand::Col((r, K2)),
                op: Cmp::Eq,
                right: Operand::Col((parent, K2)),
            });
        }
        if rng.chance(15) {
            // a one-table filter written in ON
            conds.push(random_filter(rng, r));
        }
        joins.push(conds);
    }
    let mut wheres = Vec::new();
    for r in 0..n {
        if rng.chance(30) {
            wheres.push(random_filter(rng, r));
        }
    }
    if rng.chance(30) {
        let a = rng.below(n);
        let b = (a + 1 + rng.below(n - 1)) % n;
        wheres.push(random_non_equi(rng, a, b));
    }
    let rand_col = |rng: &mut Rng, cols: &[usize]| -> ColRef { (rng.below(n), *rng.pick(cols)) };
    let select = if rng.chance(60) {
        let group_by = if rng.chance(50) {
            Some(rand_col(rng, &[K, K2, T]))
        } else {
            None
        };
        let m = rng.range(1, 3) as usize;
        let aggs = (0..m)
            .map(|_| {
                let kind = *rng.pick(&[
                    AggKind::CountStar,
                    AggKind::Count,
                    AggKind::Sum,
                    AggKind::Min,
                    AggKind::Max,
                ]);
                let col = match kind {
                    AggKind::Sum => rand_col(rng, &[V, K]),
                    AggKind::Min | AggKind::Max => rand_col(rng, &[V, T, K]),
                    _ => rand_col(rng, &[K, T, V]),
                };
                Agg { kind, col }
            })
            .collect();
        Select::Aggs { group_by, aggs }
    } else {
        let m = rng.range(1, 4) as usize;
        Select::Cols {
            distinct: rng.chance(20),
            cols: (0..m).map(|_| rand_col(rng, &[K, K2, T, V])).collect(),
        }
    };
    Query {
        tables,
        joins,
        wheres,
        select,
        explicit: rng.chance(60),
    }
}

// ------------------------------------------------------------------ the reference

fn operand_val<'a>(
    o: &'a Operand,
    tables: &'a [Table],
    q: &Query,
    combo: &[usize],
) -> Cow<'a, Val> {
    let get = |(r, c): ColRef| &tables[q.tables[r]].rows[combo[r]][c];
    match o {
        Operand::Col(c) => Cow::Borrowed(get(*c)),
        Operand::Sum(a, b) => Cow::Owned(match (get(*a), get(*b)) {
            (Val::Int(x), Val::Int(y)) => Val::Int(x + y),
            _ => Val::Null,
        }),
        Operand::Lit(v) => Cow::Borrowed(v),
    }
}

fn cond_true(c: &Cond, tables: &[Table], q: &Query, combo: &[usize]) -> bool {
    let l = operand_val(&c.left, tables, q, combo);
    let r = operand_val(&c.right, tables, q, combo);
    c.op.eval(&l, &r) == Some(true)
}

/// Nested loops: reference r is added to every partial combination, keeping those for
/// which every condition whose references are all bound holds. None when the query is
/// too big for this (see [`MAX_INTERMEDIATE_ROWS`]).
fn reference_rows(tables: &[Table], q: &Query) -> Option<Vec<Vec<usize>>> {
    let all: Vec<&Cond> = q.joins.iter().flatten().chain(q.wheres.iter()).collect();
    let mut combos: Vec<Vec<usize>> = vec![Vec::new()];
    for r in 0..q.tables.len() {
        let conds: Vec<&Cond> = all
            .iter()
            .copied()
            .filter(|c| cond_max_ref(c) == r)
            .collect();
        let nrows = tables[q.tables[r]].rows.len();
        if combos.len().saturating_mul(nrows) > MAX_COMPARISONS {
            return None;
        }
        let mut next = Vec::new();
        for combo in &combos {
            let mut c2 = combo.clone();
            c2.push(0);
            for i in 0..nrows {
                c2[r] = i;
                if conds.iter().all(|c| cond_true(c, tables, q, &c2)) {
                    next.push(c2.clone());
                }
            }
        }
        if next.len() > MAX_INTERMEDIATE_ROWS {
            return None;
        }
        combos = next;
    }
    Some(combos)
}

fn agg_value(a: &Agg, vals: &[Val]) -> Val {
    let non_null = vals.iter().filter(|v| !matches!(v, Val::Null));
    match a.kind {
        AggKind::CountStar => Val::Int(vals.len() as i64),
        AggKind::Count => Val::Int(non_null.count() as i64),
        AggKind::Sum => {
            let xs: Vec<i64> = non_null
                .map(|v| match v {
                    Val::Int(i) => *i,
                    other => panic!("SUM of {other:?}"),
                })
                .collect();
            if xs.is_empty() {
                Val::Null
            } else {
                Val::Int(xs.iter().sum())
            }
        }
        AggKind::Min => non_null.min().cloned().unwrap_or(Val::Null),
        AggKind::Max => non_null.max().cloned().unwrap_or(Val::Null),
    }
}

/// The expected answer, rendered and sorted (None: too big to compute here).
fn reference(tables: &[Table], q: &Query) -> Option<Vec<String>> {
    let combos = reference_rows(tables, q)?;
    let get = |combo: &[usize], (r, c): ColRef| tables[q.tables[r]].rows[combo[r]][c].clone();
    let mut out: Vec<String> = match &q.select {
        Select::Cols { distinct, cols } => {
            let mut rows: Vec<String> = combos
                .iter()
                .map(|combo| {
                    cols.iter()
                        .map(|c| get(combo, *c).render())
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect();
            if *distinct {
                rows.sort();
                rows.dedup();
            }
            rows
        }
        Select::Aggs { group_by, aggs } => {
            let mut groups: BTreeMap<Val, Vec<&Vec<usize>>> = BTreeMap::new();
            match group_by {
                Some(g) => {
                    for combo in &combos {
                        groups.entry(get(combo, *g)).or_default().push(combo);
                    }
                }
                // One group, even over no rows.
                None => {
                    groups.insert(Val::Null, combos.iter().collect());
                }
            }
            groups
                .iter()
                .map(|(key, members)| {
                    let mut cells = Vec::new();
                    if group_by.is_some() {
                        cells.push(key.render());
                    }
                    for a in aggs {
                        let vals: Vec<Val> = members.iter().map(|m| get(m, a.col)).collect();
                        cells.push(agg_value(a, &vals).render());
                    }
                    cells.join("|")
                })
                .collect()
        }
    };
    out.sort();
    Some(out)
}

// ------------------------------------------------------------------ smrdb

/// The answer of smrdb (simple protocol, text results), rendered like [`Val::render`]
/// and sorted. `text_cols[i]`: column i is TEXT (else an integer).
fn actual(client: &mut Client, sql: &str, text_cols: &[bool]) -> Result<Vec<String>, String> {
    let msgs = client
        .simple_query(sql)
        .map_err(|e| match e.as_db_error() {
            Some(d) => format!("{} (SQLSTATE {})", d.message(), d.code().code()),
            None => e.to_string(),
        })?;
    let mut rows = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            if r.len() != text_cols.len() {
                return Err(format!("{} columns, expected {}", r.len(), text_cols.len()));
            }
            let cells: Vec<String> = (0..r.len())
                .map(|i| match r.get(i) {
                    None => "NULL".to_string(),
                    Some(s) if text_cols[i] => format!("{s:?}"),
                    Some(s) => s.to_string(),
                })
                .collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    Ok(rows)
}

fn text_columns(q: &Query) -> Vec<bool> {
    match &q.select {
        Select::Cols { cols, .. } => cols.iter().map(|c| c.1 == T).collect(),
        Select::Aggs { group_by, aggs } => group_by
            .iter()
            .map(|g| g.1 == T)
            .chain(
                aggs.iter()
                    .map(|a| matches!(a.kind, AggKind::Min | AggKind::Max) && a.col.1 == T),
            )
            .collect(),
    }
}

fn load(client: &mut Client, tables: &[Table]) {
    for t in tables {
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {0}; CREATE TABLE {0} (k INT, k2 INT, t TEXT, v INT)",
                t.name
            ))
            .unwrap_or_else(|e| panic!("create {}: {e}", t.name));
        for chunk in t.rows.chunks(100) {
            let values: Vec<String> = chunk
                .iter()
                .map(|row| {
                    format!(
                        "({})",
                        row.iter().map(Val::sql).collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            client
                .batch_execute(&format!(
                    "INSERT INTO {} VALUES {}",
                    t.name,
                    values.join(", ")
                ))
                .unwrap_or_else(|e| panic!("insert into {}: {e}", t.name));
        }
        // The load itself, checked without a join.
        let n = client
            .simple_query(&format!("SELECT COUNT(*) FROM {}", t.name))
            .expect("count")
            .into_iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            });
        assert_eq!(
            n.as_deref(),
            Some(t.rows.len().to_string().as_str()),
            "{} row count",
            t.name
        );
    }
}

/// The `qi`-th query of a run and its expected answer.
fn query_and_expected(seed: u64, qi: usize, tables: &[Table]) -> (Query, Vec<String>) {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (qi as u64 + 1));
    loop {
        let q = random_query(&mut rng);
        match reference(tables, &q) {
            Some(e) if matches!(q.select, Select::Aggs { .. }) || e.len() <= MAX_PROJECTED_ROWS => {
                return (q, e)
            }
            _ => {}
        }
    }
}

/// `SMRDB_DIFF_DUMP`: the tables and the queries with their expected answers.
fn dump(dir: &Path, seed: u64, nqueries: usize, tables: &[Table]) {
    fs::create_dir_all(dir).expect("dump dir");
    let mut sql = String::new();
    for t in tables {
        writeln!(
            sql,
            "CREATE TABLE {} (k INT, k2 INT, t TEXT, v INT);",
            t.name
        )
        .unwrap();
        for row in &t.rows {
            let vals: Vec<String> = row.iter().map(Val::sql).collect();
            writeln!(sql, "INSERT INTO {} VALUES ({});", t.name, vals.join(", ")).unwrap();
        }
    }
    fs::write(dir.join("tables.sql"), sql).expect("write tables.sql");
    let mut out = String::new();
    for qi in 0..nqueries {
        let (q, expected) = query_and_expected(seed, qi, tables);
        writeln!(out, "{}", q.sql(tables)).unwrap();
        for r in &expected {
            writeln!(out, "{r}").unwrap();
        }
        writeln!(out).unwrap();
    }
    fs::write(dir.join("queries.txt"), out).expect("write queries.txt");
    eprintln!("[join_diff] seed {seed:#x}: dumped to {}", dir.display());
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v}: {e}")))
}

fn show(rows: &[String]) -> String {
    const MAX: usize = 30;
    let mut s: String = rows
        .iter()
        .take(MAX)
        .map(|r| format!("    {r}\n"))
        .collect();
    if rows.len() > MAX {
        writeln!(s, "    ... ({} rows in all)", rows.len()).unwrap();
    }
    if rows.is_empty() {
        s.push_str("    (no rows)\n");
    }
    s
}

/// Rows in `a` and not in `b` (both sorted), as a multiset difference.
fn minus(a: &[String], b: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() {
        if j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if j < b.len() && b[j] < a[i] {
            j += 1;
        } else {
            out.push(a[i].clone());
            i += 1;
        }
    }
    out
}

#[test]
fn join_differential() {
    let seed = env_u64("SMRDB_DIFF_SEED").unwrap_or(DEFAULT_SEED);
    let nqueries = env_u64("SMRDB_DIFF_QUERIES").map_or(DEFAULT_QUERIES, |n| n as usize);
    let bin = smrdb_binary();
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --release -p smrdb-node` \
         (or point SMRDB_BIN at a smrdb binary)",
        bin.display()
    );
    let scale = env_u64("SMRDB_DIFF_SCALE").unwrap_or(1).max(1) as usize;
    let nodes = env_u64("SMRDB_DIFF_NODES").unwrap_or(2);
    let tstores = env_u64("SMRDB_DIFF_TSTORES").unwrap_or(2);
    eprintln!(
        "[join_diff] seed {seed:#x} ({seed}), {nqueries} queries, scale {scale}, \
         {nodes} nodes x {tstores} Tstores"
    );

    let tables = make_tables(seed, scale);
    if let Ok(dir) = std::env::var("SMRDB_DIFF_DUMP") {
        dump(Path::new(&dir), seed, nqueries, &tables);
        return;
    }
    let mut cluster = Cluster::start(&bin, nodes, tstores);
    let mut client = cluster.connect_when_ready();
    let started = Instant::now();
    load(&mut client, &tables);
    eprintln!(
        "[join_diff] loaded {} rows into {} tables ({:.1?})",
        tables.iter().map(|t| t.rows.len()).sum::<usize>(),
        tables.len(),
        started.elapsed()
    );

    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    let mut expected_rows = 0usize;
    for qi in 0..nqueries {
        let (q, expected) = query_and_expected(seed, qi, &tables);
        expected_rows += expected.len();
        let sql = q.sql(&tables);
        match actual(&mut client, &sql, &text_columns(&q)) {
            Ok(got) if got == expected => {}
            Ok(got) => {
                let mut m = format!(
                    "seed {seed:#x} query #{qi}: wrong answer\n  SQL: {sql}\n  expected ({} rows):\n{}  smrdb ({} rows):\n{}",
                    expected.len(),
                    show(&expected),
                    got.len(),
                    show(&got)
                );
                write!(
                    m,
                    "  missing from smrdb:\n{}  extra in smrdb:\n{}",
                    show(&minus(&expected, &got)),
                    show(&minus(&got, &expected))
                )
                .unwrap();
                failures.push(m);
            }
            Err(e) => failures.push(format!(
                "seed {seed:#x} query #{qi}: error {e}\n  SQL: {sql}\n  expected ({} rows):\n{}",
                expected.len(),
                show(&expected)
            )),
        }
        if matches!(cluster.child.try_wait(), Ok(Some(_))) {
            failures.push(format!(
                "seed {seed:#x} query #{qi}: the cluster died\n  SQL: {sql}"
            ));
            break;
        }
    }
    eprintln!(
        "[join_diff] {nqueries} queries ({expected_rows} expected rows) in {:.1?}, {} failed",
        started.elapsed(),
        failures.len()
    );
    if !failures.is_empty() {
        let tail = cluster.log_tail();
        drop(client);
        drop(cluster);
        let shown: Vec<&String> = failures.iter().take(MAX_REPORTED).collect();
        panic!(
            "{} of {nqueries} join queries failed (seed {seed:#x}; rerun with SMRDB_DIFF_SEED={seed} SMRDB_DIFF_QUERIES={nqueries} SMRDB_DIFF_SCALE={scale} SMRDB_DIFF_NODES={nodes} SMRDB_DIFF_TSTORES={tstores}):\n{}{}\n--- cluster log tail ---\n{tail}",
            failures.len(),
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            if failures.len() > MAX_REPORTED {
                format!("\n... and {} more", failures.len() - MAX_REPORTED)
            } else {
                String::new()
            }
        );
    }
}
