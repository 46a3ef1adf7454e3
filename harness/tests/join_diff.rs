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
//!   GROUP BY of one column (sometimes a HAVING), or a projection of a few columns
//!   (sometimes DISTINCT);
//! * in some queries LEFT / RIGHT / FULL joins (with `IS NULL` filters of the
//!   NULL-extended side), `[NOT] EXISTS` / `[NOT] IN` subqueries in WHERE (NULLs on
//!   either side), or the `UNION [ALL]` of two projections.
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
use std::collections::{BTreeMap, BTreeSet};
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

/// How table reference r (r >= 1) is joined to what comes before it. SQL joins
/// associate to the left: `a LEFT JOIN b ON .. JOIN c ON ..` is `(a LEFT JOIN b) JOIN c`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum JoinKind {
    /// `JOIN .. ON` (or `, t WHERE`); a cross product when it has no condition.
    Inner,
    Left,
    Right,
    Full,
}

impl JoinKind {
    fn sql(self) -> &'static str {
        match self {
            JoinKind::Inner => "JOIN",
            JoinKind::Left => "LEFT JOIN",
            JoinKind::Right => "RIGHT JOIN",
            JoinKind::Full => "FULL JOIN",
        }
    }
}

/// A condition of a subquery's own rows: `s.<col> <op> <literal>`.
#[derive(Clone, Debug)]
struct SubFilter {
    col: usize,
    op: Cmp,
    lit: Val,
}

/// A subquery predicate in WHERE over table `table` (alias `s`).
#[derive(Clone, Debug)]
enum Sub {
    /// `[NOT] EXISTS (SELECT 1 FROM table s WHERE s.col = outer [AND filter])`.
    Exists {
        negated: bool,
        table: usize,
        col: usize,
        outer: ColRef,
        filter: Option<SubFilter>,
    },
    /// `outer [NOT] IN (SELECT s.col FROM table s [WHERE filter])`.
    In {
        negated: bool,
        table: usize,
        col: usize,
        outer: ColRef,
        filter: Option<SubFilter>,
    },
}

/// A conjunct of WHERE.
#[derive(Clone, Debug)]
enum Pred {
    Cmp(Cond),
    /// `col IS NULL` (`IS NOT NULL` when negated).
    IsNull {
        col: ColRef,
        negated: bool,
    },
    Sub(Sub),
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

/// `HAVING <agg> <op> <integer>`.
#[derive(Clone, Debug)]
struct Having {
    agg: Agg,
    op: Cmp,
    lit: i64,
}

#[derive(Clone, Debug)]
enum Select {
    Aggs {
        group_by: Option<ColRef>,
        aggs: Vec<Agg>,
        having: Option<Having>,
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
    /// How reference i (i >= 1) is joined; `kinds[0]` is not used.
    kinds: Vec<JoinKind>,
    /// Conditions that join reference i (i >= 1) to earlier ones: its ON clause (they
    /// name only references 0..=i).
    joins: Vec<Vec<Cond>>,
    /// Conjuncts of WHERE: filters, non-equi conditions, IS NULL, subqueries.
    wheres: Vec<Pred>,
    select: Select,
    /// JOIN ... ON (true) or FROM a, b WHERE (false; only when every join is inner).
    explicit: bool,
}

/// A statement: one query, or the UNION [ALL] of two with the same column types.
#[derive(Clone, Debug)]
enum Stmt {
    One(Query),
    Union {
        all: bool,
        left: Query,
        right: Query,
    },
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

fn sub_filter_sql(f: &SubFilter) -> String {
    format!("s.{} {} {}", COLS[f.col], f.op.sql(), f.lit.sql())
}

fn pred_sql(p: &Pred, tables: &[Table]) -> String {
    match p {
        Pred::Cmp(c) => cond_sql(c),
        Pred::IsNull { col, negated } => format!(
            "{} IS {}NULL",
            col_sql(*col),
            if *negated { "NOT " } else { "" }
        ),
        Pred::Sub(Sub::Exists {
            negated,
            table,
            col,
            outer,
            filter,
        }) => format!(
            "{}EXISTS (SELECT 1 FROM {} s WHERE s.{} = {}{})",
            if *negated { "NOT " } else { "" },
            tables[*table].name,
            COLS[*col],
            col_sql(*outer),
            filter
                .as_ref()
                .map(|f| format!(" AND {}", sub_filter_sql(f)))
                .unwrap_or_default()
        ),
        Pred::Sub(Sub::In {
            negated,
            table,
            col,
            outer,
            filter,
        }) => format!(
            "{} {}IN (SELECT s.{} FROM {} s{})",
            col_sql(*outer),
            if *negated { "NOT " } else { "" },
            COLS[*col],
            tables[*table].name,
            filter
                .as_ref()
                .map(|f| format!(" WHERE {}", sub_filter_sql(f)))
                .unwrap_or_default()
        ),
    }
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

/// The last table reference a WHERE conjunct names.
fn pred_max_ref(p: &Pred) -> usize {
    match p {
        Pred::Cmp(c) => cond_max_ref(c),
        Pred::IsNull { col, .. } => col.0,
        Pred::Sub(Sub::Exists { outer, .. } | Sub::In { outer, .. }) => outer.0,
    }
}

fn agg_sql(a: &Agg) -> String {
    match a.kind {
        AggKind::CountStar => "COUNT(*)".into(),
        AggKind::Count => format!("COUNT({})", col_sql(a.col)),
        AggKind::Sum => format!("SUM({})", col_sql(a.col)),
        AggKind::Min => format!("MIN({})", col_sql(a.col)),
        AggKind::Max => format!("MAX({})", col_sql(a.col)),
    }
}

impl Query {
    fn sql(&self, tables: &[Table]) -> String {
        let mut items: Vec<String> = match &self.select {
            Select::Aggs { group_by, aggs, .. } => group_by
                .iter()
                .map(|g| col_sql(*g))
                .chain(aggs.iter().map(agg_sql))
                .collect(),
            Select::Cols { cols, .. } => cols.iter().map(|c| col_sql(*c)).collect(),
        };
        // PostgreSQL accepts the same expression twice in a select list (two columns of
        // the same name); smrdb does not yet (it asks for an alias, SQLSTATE XX000:
        // reported). This test is about joins: repeated items get aliases.
        let mut seen = items.clone();
        seen.sort();
        seen.dedup();
        if seen.len() < items.len() {
            for (i, it) in items.iter_mut().enumerate() {
                *it = format!("{it} AS c{i}");
            }
        }
        let distinct = matches!(self.select, Select::Cols { distinct: true, .. });
        let mut sql = format!(
            "SELECT {}{} FROM ",
            if distinct { "DISTINCT " } else { "" },
            items.join(", ")
        );
        let mut wheres: Vec<String> = Vec::new();
        for (r, &t) in self.tables.iter().enumerate() {
            let name = &tables[t].name;
            if r == 0 {
                write!(sql, "{name} {}", alias(r)).unwrap();
            } else if self.explicit && self.joins[r].is_empty() {
                assert_eq!(self.kinds[r], JoinKind::Inner, "an outer join without ON");
                write!(sql, " CROSS JOIN {name} {}", alias(r)).unwrap();
            } else if self.explicit {
                let on: Vec<String> = self.joins[r].iter().map(cond_sql).collect();
                write!(
                    sql,
                    " {} {name} {} ON {}",
                    self.kinds[r].sql(),
                    alias(r),
                    on.join(" AND ")
                )
                .unwrap();
            } else {
                assert_eq!(self.kinds[r], JoinKind::Inner, "an outer join in FROM a, b");
                write!(sql, ", {name} {}", alias(r)).unwrap();
                wheres.extend(self.joins[r].iter().map(cond_sql));
            }
        }
        wheres.extend(self.wheres.iter().map(|p| pred_sql(p, tables)));
        if !wheres.is_empty() {
            write!(sql, " WHERE {}", wheres.join(" AND ")).unwrap();
        }
        if let Select::Aggs {
            group_by, having, ..
        } = &self.select
        {
            if let Some(g) = group_by {
                write!(sql, " GROUP BY {}", col_sql(*g)).unwrap();
            }
            if let Some(h) = having {
                write!(sql, " HAVING {} {} {}", agg_sql(&h.agg), h.op.sql(), h.lit).unwrap();
            }
        }
        sql
    }

    /// Whether every join is an inner join (or a cross product).
    fn inner_only(&self) -> bool {
        self.kinds.iter().all(|k| *k == JoinKind::Inner)
    }
}

impl Stmt {
    fn sql(&self, tables: &[Table]) -> String {
        match self {
            Stmt::One(q) => q.sql(tables),
            Stmt::Union { all, left, right } => format!(
                "{} UNION {}{}",
                left.sql(tables),
                if *all { "ALL " } else { "" },
                right.sql(tables)
            ),
        }
    }

    /// The query whose select list gives the statement's columns.
    fn first(&self) -> &Query {
        match self {
            Stmt::One(q) => q,
            Stmt::Union { left, .. } => left,
        }
    }
}

/// A one-table filter: (column, comparison, literal).
fn random_filter_parts(rng: &mut Rng) -> (usize, Cmp, Val) {
    match rng.below(6) {
        0 => (
            V,
            *rng.pick(&[Cmp::Gt, Cmp::GtEq]),
            Val::Int(rng.range(-40, 40)),
        ),
        1 => (V, Cmp::LtEq, Val::Int(rng.range(-40, 40))),
        2 => (T, Cmp::Eq, Val::Text(rng.pick(&TEXTS).to_string())),
        3 => (T, Cmp::NotEq, Val::Text(rng.pick(&TEXTS).to_string())),
        4 => (K2, Cmp::NotEq, Val::Int(rng.range(0, 3))),
        _ => (K, Cmp::Lt, Val::Int(rng.range(1, 8))),
    }
}

fn random_filter(rng: &mut Rng, r: usize) -> Cond {
    let (c, op, lit) = random_filter_parts(rng);
    Cond {
        left: Operand::Col((r, c)),
        op,
        right: Operand::Lit(lit),
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

/// A subquery predicate on a column of reference `0..n`.
fn random_sub(rng: &mut Rng, n: usize) -> Sub {
    let negated = rng.chance(50);
    let table = rng.below(NTABLES);
    let filter = rng.chance(50).then(|| {
        let (col, op, lit) = random_filter_parts(rng);
        SubFilter { col, op, lit }
    });
    // Same types on both sides: text with text, integers with integers.
    let (outer_col, col) = if rng.chance(20) {
        (T, T)
    } else {
        (*rng.pick(&[K, K2, V]), *rng.pick(&[K, K2]))
    };
    let outer = (rng.below(n), outer_col);
    if rng.chance(50) {
        Sub::Exists {
            negated,
            table,
            col,
            outer,
            filter,
        }
    } else {
        Sub::In {
            negated,
            table,
            col,
            outer,
            filter,
        }
    }
}

/// What a generated query may contain besides inner equi-joins.
#[derive(Clone, Copy, Debug, Default)]
struct Shape {
    /// LEFT/RIGHT/FULL joins (at least one).
    outer: bool,
    /// [NOT] EXISTS / [NOT] IN subqueries in WHERE (at least one).
    subqueries: bool,
    /// Aggregates with HAVING.
    having: bool,
    /// A projection of columns (for UNION), never aggregates.
    cols_only: bool,
}

fn random_query(rng: &mut Rng, shape: Shape) -> Query {
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
    // Outer joins: each join is LEFT, RIGHT, FULL or inner; at least one is outer.
    let mut kinds = vec![JoinKind::Inner; n];
    if shape.outer {
        for k in kinds.iter_mut().skip(1) {
            *k = *rng.pick(&[
                JoinKind::Left,
                JoinKind::Left,
                JoinKind::Right,
                JoinKind::Full,
                JoinKind::Inner,
            ]);
        }
        if kinds.iter().all(|k| *k == JoinKind::Inner) {
            let r = 1 + rng.below(n - 1);
            kinds[r] = *rng.pick(&[JoinKind::Left, JoinKind::Right, JoinKind::Full]);
        }
    }
    let shape_kind = rng.below(3); // 0 chain, 1 star, 2 random tree
    let mut joins: Vec<Vec<Cond>> = vec![Vec::new()];
    for (r, &table) in tables.iter().enumerate().skip(1) {
        let parent = match shape_kind {
            0 => r - 1,
            1 => 0,
            _ => rng.below(r),
        };
        if kinds[r] == JoinKind::Inner && table == NTABLES - 1 && rng.chance(25) {
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
        if kinds[r] != JoinKind::Inner {
            // In an outer join's ON a filter of the other side only restricts the
            // matches (no row is removed), and so does a non-equi condition.
            if rng.chance(20) {
                let side = rng.below(r);
                conds.push(random_filter(rng, side));
            }
            if rng.chance(15) {
                conds.push(random_non_equi(rng, parent, r));
            }
        }
        joins.push(conds);
    }
    let mut wheres = Vec::new();
    for r in 0..n {
        if rng.chance(30) {
            wheres.push(Pred::Cmp(random_filter(rng, r)));
        }
        if shape.outer && rng.chance(15) {
            // NULL-extended rows: `b.k IS NULL` keeps the unmatched (an anti join).
            wheres.push(Pred::IsNull {
                col: (r, *rng.pick(&[K, K2, V])),
                negated: rng.chance(40),
            });
        }
    }
    if rng.chance(30) {
        let a = rng.below(n);
        let b = (a + 1 + rng.below(n - 1)) % n;
        wheres.push(Pred::Cmp(random_non_equi(rng, a, b)));
    }
    if shape.subqueries {
        for _ in 0..rng.range(1, 2) {
            wheres.push(Pred::Sub(random_sub(rng, n)));
        }
    }
    let rand_col = |rng: &mut Rng, cols: &[usize]| -> ColRef { (rng.below(n), *rng.pick(cols)) };
    let random_agg = |rng: &mut Rng| {
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
    };
    let select = if !shape.cols_only && (shape.having || rng.chance(60)) {
        let group_by = if rng.chance(if shape.having { 85 } else { 50 }) {
            Some(rand_col(rng, &[K, K2, T]))
        } else {
            None
        };
        let m = rng.range(1, 3) as usize;
        let aggs = (0..m).map(|_| random_agg(rng)).collect();
        let having = shape.having.then(|| {
            // An aggregate of integers (maybe one not in the select list).
            let agg = loop {
                let a = random_agg(rng);
                if a.col.1 != T {
                    break a;
                }
            };
            let lit = match agg.kind {
                AggKind::CountStar | AggKind::Count => rng.range(0, 12),
                AggKind::Sum => rng.range(-60, 60),
                _ => rng.range(-30, 30),
            };
            let op = *rng.pick(&[Cmp::Gt, Cmp::GtEq, Cmp::Lt, Cmp::LtEq, Cmp::Eq, Cmp::NotEq]);
            Having { agg, op, lit }
        });
        Select::Aggs {
            group_by,
            aggs,
            having,
        }
    } else {
        let m = rng.range(1, 4) as usize;
        Select::Cols {
            distinct: rng.chance(20),
            cols: (0..m).map(|_| rand_col(rng, &[K, K2, T, V])).collect(),
        }
    };
    Query {
        tables,
        kinds,
        joins,
        wheres,
        select,
        // Outer joins need JOIN ... ON.
        explicit: shape.outer || rng.chance(60),
    }
}

fn random_shape(rng: &mut Rng) -> Shape {
    let mut s = Shape::default();
    match rng.below(100) {
        // inner joins only, as the test began
        0..=34 => {}
        35..=59 => s.outer = true,
        60..=79 => {
            s.subqueries = true;
            s.outer = rng.chance(30);
        }
        _ => {
            s.having = true;
            s.outer = rng.chance(30);
            s.subqueries = rng.chance(15);
        }
    }
    s
}

fn random_stmt(rng: &mut Rng) -> Stmt {
    if !rng.chance(12) {
        let shape = random_shape(rng);
        return Stmt::One(random_query(rng, shape));
    }
    // UNION [ALL] of two projections with the same column types.
    let mut shape = random_shape(rng);
    shape.having = false;
    shape.cols_only = true;
    let left = random_query(rng, shape);
    let mut shape = random_shape(rng);
    shape.having = false;
    shape.cols_only = true;
    let mut right = random_query(rng, shape);
    let Select::Cols { cols: lcols, .. } = &left.select else {
        unreachable!("cols_only")
    };
    let n = right.tables.len();
    let cols = lcols
        .iter()
        .map(|&(_, c)| {
            let c = if c == T { T } else { *rng.pick(&[K, K2, V]) };
            (rng.below(n), c)
        })
        .collect();
    right.select = Select::Cols {
        distinct: rng.chance(20),
        cols,
    };
    Stmt::Union {
        all: rng.chance(50),
        left,
        right,
    }
}

// ------------------------------------------------------------------ the reference

/// One combination of rows, a row index per table reference; None: the reference is
/// NULL-extended (an outer join found no match).
type Combo = Vec<Option<usize>>;

static NULL: Val = Val::Null;

fn col_val<'a>(tables: &'a [Table], q: &Query, combo: &[Option<usize>], (r, c): ColRef) -> &'a Val {
    match combo[r] {
        Some(i) => &tables[q.tables[r]].rows[i][c],
        None => &NULL,
    }
}

fn operand_val<'a>(
    o: &'a Operand,
    tables: &'a [Table],
    q: &Query,
    combo: &[Option<usize>],
) -> Cow<'a, Val> {
    match o {
        Operand::Col(c) => Cow::Borrowed(col_val(tables, q, combo, *c)),
        Operand::Sum(a, b) => Cow::Owned(
            match (col_val(tables, q, combo, *a), col_val(tables, q, combo, *b)) {
                (Val::Int(x), Val::Int(y)) => Val::Int(x + y),
                _ => Val::Null,
            },
        ),
        Operand::Lit(v) => Cow::Borrowed(v),
    }
}

fn cond_true(c: &Cond, tables: &[Table], q: &Query, combo: &[Option<usize>]) -> bool {
    let l = operand_val(&c.left, tables, q, combo);
    let r = operand_val(&c.right, tables, q, combo);
    c.op.eval(&l, &r) == Some(true)
}

/// The values a subquery yields: its column over the rows that pass its filter.
struct SubValues {
    /// The non-NULL values.
    values: BTreeSet<Val>,
    /// Whether a NULL is among them.
    null: bool,
    /// Whether there is any row at all.
    any: bool,
}

impl SubValues {
    fn of(tables: &[Table], table: usize, col: usize, filter: &Option<SubFilter>) -> SubValues {
        let mut s = SubValues {
            values: BTreeSet::new(),
            null: false,
            any: false,
        };
        for row in &tables[table].rows {
            if let Some(f) = filter {
                if f.op.eval(&row[f.col], &f.lit) != Some(true) {
                    continue;
                }
            }
            s.any = true;
            match &row[col] {
                Val::Null => s.null = true,
                v => {
                    s.values.insert(v.clone());
                }
            }
        }
        s
    }

    /// `x = ANY (values)` as PostgreSQL evaluates it: true when some value equals x;
    /// false when there is no row, or when no comparison is true or unknown; unknown
    /// (None) when x is NULL (and there are rows), or when x matches nothing and a
    /// value is NULL.
    fn any_eq(&self, x: &Val) -> Option<bool> {
        if !self.any {
            return Some(false);
        }
        if matches!(x, Val::Null) {
            return None;
        }
        if self.values.contains(x) {
            Some(true)
        } else if self.null {
            None
        } else {
            Some(false)
        }
    }
}

/// A WHERE conjunct with the subquery values it needs, computed once per query.
enum Check<'a> {
    Cmp(&'a Cond),
    IsNull(ColRef, bool),
    /// EXISTS with `s.col = outer`: true iff outer is not NULL and among the values.
    Exists {
        negated: bool,
        outer: ColRef,
        values: SubValues,
    },
    /// `outer [NOT] IN (...)`: NOT IN is true only where IN is false.
    In {
        negated: bool,
        outer: ColRef,
        values: SubValues,
    },
}

impl Check<'_> {
    fn of<'a>(p: &'a Pred, tables: &[Table]) -> Check<'a> {
        match p {
            Pred::Cmp(c) => Check::Cmp(c),
            Pred::IsNull { col, negated } => Check::IsNull(*col, *negated),
            Pred::Sub(Sub::Exists {
                negated,
                table,
                col,
                outer,
                filter,
            }) => Check::Exists {
                negated: *negated,
                outer: *outer,
                values: SubValues::of(tables, *table, *col, filter),
            },
            Pred::Sub(Sub::In {
                negated,
                table,
                col,
                outer,
                filter,
            }) => Check::In {
                negated: *negated,
                outer: *outer,
                values: SubValues::of(tables, *table, *col, filter),
            },
        }
    }

    /// Whether the conjunct is true (unknown is not) for `combo`.
    fn holds(&self, tables: &[Table], q: &Query, combo: &[Option<usize>]) -> bool {
        match self {
            Check::Cmp(c) => cond_true(c, tables, q, combo),
            Check::IsNull(col, negated) => {
                matches!(col_val(tables, q, combo, *col), Val::Null) != *negated
            }
            Check::Exists {
                negated,
                outer,
                values,
            } => {
                let x = col_val(tables, q, combo, *outer);
                let exists = !matches!(x, Val::Null) && values.values.contains(x);
                exists != *negated
            }
            Check::In {
                negated,
                outer,
                values,
            } => {
                let r = values.any_eq(col_val(tables, q, combo, *outer));
                r.map(|b| b != *negated) == Some(true)
            }
        }
    }
}

/// Joins in FROM order with nested loops: reference r is joined to every combination
/// so far with its ON conditions (an outer join adds the NULL-extended rows: each
/// combination that matched nothing for LEFT/FULL, each row of r that matched nothing
/// for RIGHT/FULL); then WHERE. When every join is inner, every condition is applied
/// as soon as its references are bound (the same answer, far fewer combinations). None
/// when the query is too big for this (see [`MAX_INTERMEDIATE_ROWS`]).
fn reference_rows(tables: &[Table], q: &Query) -> Option<Vec<Combo>> {
    let checks: Vec<(usize, Check)> = q
        .wheres
        .iter()
        .map(|p| (pred_max_ref(p), Check::of(p, tables)))
        .collect();
    let early = q.inner_only();
    let mut combos: Vec<Combo> = vec![Vec::new()];
    for r in 0..q.tables.len() {
        let on: Vec<&Cond> = if early {
            q.joins
                .iter()
                .flatten()
                .filter(|c| cond_max_ref(c) == r)
                .collect()
        } else {
            q.joins[r].iter().collect()
        };
        let wheres: Vec<&Check> = checks
            .iter()
            .filter(|(m, _)| early && *m == r)
            .map(|(_, c)| c)
            .collect();
        let kind = q.kinds[r];
        let nrows = tables[q.tables[r]].rows.len();
        if combos.len().saturating_mul(nrows) > MAX_COMPARISONS {
            return None;
        }
        let mut next = Vec::new();
        let mut matched = vec![false; nrows];
        for combo in &combos {
            let mut c2 = combo.clone();
            c2.push(None);
            let mut any = false;
            for (i, m) in matched.iter_mut().enumerate() {
                c2[r] = Some(i);
                if on.iter().all(|c| cond_true(c, tables, q, &c2)) {
                    any = true;
                    *m = true;
                    if wheres.iter().all(|w| w.holds(tables, q, &c2)) {
                        next.push(c2.clone());
                    }
                }
            }
            if !any && matches!(kind, JoinKind::Left | JoinKind::Full) {
                c2[r] = None;
                next.push(c2);
            }
        }
        if matches!(kind, JoinKind::Right | JoinKind::Full) {
            for (i, _) in matched.iter().enumerate().filter(|(_, m)| !**m) {
                let mut c2 = vec![None; r];
                c2.push(Some(i));
                next.push(c2);
            }
        }
        if next.len() > MAX_INTERMEDIATE_ROWS {
            return None;
        }
        combos = next;
    }
    if !early {
        combos.retain(|combo| checks.iter().all(|(_, c)| c.holds(tables, q, combo)));
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

/// The expected rows of one query, rendered, unsorted (None: too big to compute here).
fn reference_query(tables: &[Table], q: &Query) -> Option<Vec<String>> {
    let combos = reference_rows(tables, q)?;
    let get = |combo: &[Option<usize>], c: ColRef| col_val(tables, q, combo, c).clone();
    Some(match &q.select {
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
        Select::Aggs {
            group_by,
            aggs,
            having,
        } => {
            let mut groups: BTreeMap<Val, Vec<&Combo>> = BTreeMap::new();
            match group_by {
                // NULL keys form one group.
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
            let value = |members: &[&Combo], a: &Agg| {
                let vals: Vec<Val> = members.iter().map(|m| get(m, a.col)).collect();
                agg_value(a, &vals)
            };
            groups
                .iter()
                .filter(|(_, members)| match having {
                    None => true,
                    Some(h) => h.op.eval(&value(members, &h.agg), &Val::Int(h.lit)) == Some(true),
                })
                .map(|(key, members)| {
                    let mut cells = Vec::new();
                    if group_by.is_some() {
                        cells.push(key.render());
                    }
                    for a in aggs {
                        cells.push(value(members, a).render());
                    }
                    cells.join("|")
                })
                .collect()
        }
    })
}

/// The expected answer, rendered and sorted (None: too big to compute here).
fn reference(tables: &[Table], s: &Stmt) -> Option<Vec<String>> {
    let mut out = match s {
        Stmt::One(q) => reference_query(tables, q)?,
        Stmt::Union { all, left, right } => {
            let mut rows = reference_query(tables, left)?;
            rows.extend(reference_query(tables, right)?);
            if !*all {
                // UNION removes duplicates (rows with NULLs in the same places are
                // duplicates too).
                rows.sort();
                rows.dedup();
            }
            rows
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

fn text_columns(s: &Stmt) -> Vec<bool> {
    match &s.first().select {
        Select::Cols { cols, .. } => cols.iter().map(|c| c.1 == T).collect(),
        Select::Aggs { group_by, aggs, .. } => group_by
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

/// The `qi`-th statement of a run and its expected answer.
fn query_and_expected(seed: u64, qi: usize, tables: &[Table]) -> (Stmt, Vec<String>) {
    let mut rng = Rng::new(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (qi as u64 + 1));
    loop {
        let s = random_stmt(&mut rng);
        let aggs = matches!(
            s,
            Stmt::One(Query {
                select: Select::Aggs { .. },
                ..
            })
        );
        match reference(tables, &s) {
            Some(e) if aggs || e.len() <= MAX_PROJECTED_ROWS => return (s, e),
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
