//! Persistence of a Tstore's tables: every write survives close and reopen,
//! checkpoints, and a crash that tears the log's tail; UPDATE and DELETE replay by
//! row positions to exactly the rows they produced; statements of the primary's log
//! apply once; damaged logs are [`Error::Corrupt`]; the statistics always equal
//! statistics recomputed from the rows.
//!
//! The centre is `random_writes_match_a_model` (in the style of redb's `fuzz_redb`):
//! seeded random sequences of inserts, updates, deletes, statement writes,
//! checkpoints, reopens (with another chunk size) and torn-tail crashes, checked
//! after every step against a plain `Vec` of rows updated by the same logic.
mod common;

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Decimal128Type, Float64Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, Float64Array, Int64Array,
    StringArray,
};
use common::{no_panic, Rng, TempDir};
use datafusion_common::ScalarValue;
use datafusion_expr::Operator;
use datafusion_physical_expr::expressions::{binary, col, is_null, lit, not};
use datafusion_physical_expr::PhysicalExpr;
use smrdb_tstore::exec::codec::expr_to_bytes;
use smrdb_tstore::*;

const WAL_HEADER_LEN: u64 = 20;
/// Largest unscaled value of `NUMERIC(10,2)`.
const MAX_AMOUNT: i128 = 9_999_999_999;
/// `VARCHAR(8)`.
const NAME_LEN: usize = 8;

// ---------------------------------------------------------------------------------
// Rows and batches

/// A float compared by its bits (NaN equals NaN).
#[derive(Debug, Clone, Copy)]
struct F(f64);

impl PartialEq for F {
    fn eq(&self, o: &F) -> bool {
        self.0.to_bits() == o.0.to_bits()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    name: Option<String>,
    score: Option<F>,
    /// `NUMERIC(10,2)`, unscaled.
    amount: Option<i128>,
    day: Option<i32>,
    flag: Option<bool>,
}

fn row(i: i64) -> Row {
    Row {
        id: i,
        name: (i % 3 != 0).then(|| format!("n{i}")),
        score: Some(F(i as f64 / 4.0)),
        amount: Some(i128::from(i) * 101),
        day: (i % 5 != 0).then_some(18_000 + i as i32),
        flag: (i % 7 != 0).then_some(i % 2 == 0),
    }
}

fn schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("id", SqlType::BigInt, false),
        ColumnDef::new("name", SqlType::Varchar(Some(NAME_LEN as u32)), true),
        ColumnDef::new("score", SqlType::Double, true),
        ColumnDef::new(
            "amount",
            SqlType::Numeric {
                precision: 10,
                scale: 2,
            },
            true,
        ),
        ColumnDef::new("day", SqlType::Date, true),
        ColumnDef::new("flag", SqlType::Boolean, true),
    ])
}

fn arrow() -> arrow_schema::SchemaRef {
    schema().to_arrow()
}

fn batch(rows: &[Row]) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.name.clone()))),
        Arc::new(Float64Array::from_iter(
            rows.iter().map(|r| r.score.map(|f| f.0)),
        )),
        Arc::new(
            Decimal128Array::from_iter(rows.iter().map(|r| r.amount))
                .with_precision_and_scale(10, 2)
                .unwrap(),
        ),
        Arc::new(Date32Array::from_iter(rows.iter().map(|r| r.day))),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.flag))),
    ];
    RecordBatch::try_new(arrow(), cols).unwrap()
}

fn rows_of_batch(b: &RecordBatch) -> Vec<Row> {
    let id = b.column(0).as_primitive::<Int64Type>();
    let name = b.column(1).as_string::<i32>();
    let score = b.column(2).as_primitive::<Float64Type>();
    let amount = b.column(3).as_primitive::<Decimal128Type>();
    let day = b.column(4).as_primitive::<Date32Type>();
    let flag = b.column(5).as_boolean();
    (0..b.num_rows())
        .map(|i| Row {
            id: id.value(i),
            name: name.is_valid(i).then(|| name.value(i).to_string()),
            score: score.is_valid(i).then(|| F(score.value(i))),
            amount: amount.is_valid(i).then(|| amount.value(i)),
            day: day.is_valid(i).then(|| day.value(i)),
            flag: flag.is_valid(i).then(|| flag.value(i)),
        })
        .collect()
}

fn rows_of(s: &Store, table: &str) -> Vec<Row> {
    s.table(table)
        .unwrap_or_else(|| panic!("no table {table}"))
        .batches()
        .flat_map(rows_of_batch)
        .collect()
}

fn wal_len(dir: &TempDir) -> u64 {
    std::fs::metadata(dir.join("wal.log")).unwrap().len()
}

// ---------------------------------------------------------------------------------
// Expressions, each with the model's reading of it

fn e_col(name: &str) -> Arc<dyn PhysicalExpr> {
    col(name, &arrow()).unwrap()
}

fn e_bin(
    l: Arc<dyn PhysicalExpr>,
    op: Operator,
    r: Arc<dyn PhysicalExpr>,
) -> Arc<dyn PhysicalExpr> {
    binary(l, op, r, &arrow()).unwrap()
}

fn e_dec(v: i128) -> Arc<dyn PhysicalExpr> {
    lit(ScalarValue::Decimal128(Some(v), 10, 2))
}

/// A WHERE clause.
#[derive(Debug, Clone)]
enum Pred {
    All,
    /// `id % m = r`
    IdMod(i64, i64),
    /// `score > v` (NaN is greater than every number, as in PostgreSQL)
    ScoreGt(f64),
    /// `score IS NULL`
    ScoreNull,
    /// `flag`
    Flag,
    /// `name = s`
    NameEq(String),
    /// `amount < v`
    AmountLt(i128),
}

impl Pred {
    fn expr(&self) -> Option<Arc<dyn PhysicalExpr>> {
        Some(match self {
            Pred::All => return None,
            Pred::IdMod(m, r) => e_bin(
                e_bin(e_col("id"), Operator::Modulo, lit(*m)),
                Operator::Eq,
                lit(*r),
            ),
            Pred::ScoreGt(v) => e_bin(e_col("score"), Operator::Gt, lit(*v)),
            Pred::ScoreNull => is_null(e_col("score")).unwrap(),
            Pred::Flag => e_col("flag"),
            Pred::NameEq(s) => e_bin(e_col("name"), Operator::Eq, lit(s.as_str())),
            Pred::AmountLt(v) => e_bin(e_col("amount"), Operator::Lt, e_dec(*v)),
        })
    }

    fn holds(&self, r: &Row) -> bool {
        match self {
            Pred::All => true,
            Pred::IdMod(m, k) => r.id % m == *k,
            Pred::ScoreGt(v) => r.score.is_some_and(|s| s.0.is_nan() || s.0 > *v),
            Pred::ScoreNull => r.score.is_none(),
            Pred::Flag => r.flag == Some(true),
            Pred::NameEq(s) => r.name.as_deref() == Some(s.as_str()),
            Pred::AmountLt(v) => r.amount.is_some_and(|a| a < *v),
        }
    }

    fn random(rng: &mut Rng) -> Pred {
        match rng.below(8) {
            0 => Pred::All,
            1 | 2 => {
                let m = rng.range(2, 7);
                Pred::IdMod(m, rng.range(0, m - 1))
            }
            3 => Pred::ScoreGt(rng.range(-500, 500) as f64),
            4 => Pred::ScoreNull,
            5 => Pred::Flag,
            6 => Pred::NameEq(rng.pick(NAMES).to_string()),
            _ => Pred::AmountLt(i128::from(rng.range(-50_000, 50_000))),
        }
    }
}

/// Why the model expects a write to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    TooLong,
    Overflow,
    NotNull,
    DivZero,
}

fn kind(e: &Error) -> Option<Kind> {
    Some(match e {
        Error::StringTooLong(_) => Kind::TooLong,
        Error::Overflow(_) => Kind::Overflow,
        Error::NullViolation(_) => Kind::NotNull,
        Error::DivisionByZero => Kind::DivZero,
        _ => return None,
    })
}

/// One `column = expression` of an UPDATE.
#[derive(Debug, Clone)]
enum Set {
    /// `score = score * f`
    ScoreTimes(f64),
    /// `name = name || s`
    NameAppend(&'static str),
    /// `name = v`
    NameTo(Option<&'static str>),
    /// `amount = amount + v`
    AmountPlus(i128),
    /// `id = id + k`
    IdPlus(i64),
    /// `id = id * k` (only through the statement path: checked there)
    IdTimes(i64),
    /// `id = id / 0`
    IdDiv0,
    /// `id = NULL`
    IdNull,
    /// `day = d`
    DayTo(Option<i32>),
    /// `flag = NOT flag`
    FlagNot,
}

/// Where an assignment fails: evaluating it (first) or storing its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Eval,
    Store,
}

fn check_name(v: Option<String>) -> Result<Option<String>, (Phase, Kind)> {
    match v {
        Some(s) if s.chars().count() > NAME_LEN => Err((Phase::Store, Kind::TooLong)),
        v => Ok(v),
    }
}

impl Set {
    fn column(&self) -> usize {
        match self {
            Set::ScoreTimes(_) => 2,
            Set::NameAppend(_) | Set::NameTo(_) => 1,
            Set::AmountPlus(_) => 3,
            Set::IdPlus(_) | Set::IdTimes(_) | Set::IdDiv0 | Set::IdNull => 0,
            Set::DayTo(_) => 4,
            Set::FlagNot => 5,
        }
    }

    fn expr(&self) -> Arc<dyn PhysicalExpr> {
        match self {
            Set::ScoreTimes(f) => e_bin(e_col("score"), Operator::Multiply, lit(*f)),
            Set::NameAppend(s) => e_bin(e_col("name"), Operator::StringConcat, lit(*s)),
            Set::NameTo(v) => lit(ScalarValue::Utf8(v.map(str::to_string))),
            Set::AmountPlus(v) => e_bin(e_col("amount"), Operator::Plus, e_dec(*v)),
            Set::IdPlus(k) => e_bin(e_col("id"), Operator::Plus, lit(*k)),
            Set::IdTimes(k) => e_bin(e_col("id"), Operator::Multiply, lit(*k)),
            Set::IdDiv0 => e_bin(e_col("id"), Operator::Divide, lit(0i64)),
            Set::IdNull => lit(ScalarValue::Int64(None)),
            Set::DayTo(d) => lit(ScalarValue::Date32(*d)),
            Set::FlagNot => not(e_col("flag")).unwrap(),
        }
    }

    /// Sets the column in `new` from the old row. `checked`: integer arithmetic
    /// fails on overflow (expressions decoded with PostgreSQL semantics) instead of
    /// wrapping (DataFusion's default for expressions built in place).
    fn apply(&self, old: &Row, new: &mut Row, checked: bool) -> Result<(), (Phase, Kind)> {
        let int = |v: Option<i64>, wrapped: i64| match (v, checked) {
            (Some(v), _) => Ok(v),
            (None, true) => Err((Phase::Eval, Kind::Overflow)),
            (None, false) => Ok(wrapped),
        };
        match self {
            Set::ScoreTimes(f) => new.score = old.score.map(|s| F(s.0 * f)),
            Set::NameAppend(s) => {
                new.name = check_name(old.name.as_ref().map(|n| format!("{n}{s}")))?
            }
            Set::NameTo(v) => new.name = check_name(v.map(str::to_string))?,
            Set::AmountPlus(v) => {
                new.amount = match old.amount.map(|a| a + v) {
                    Some(a) if a.abs() > MAX_AMOUNT => return Err((Phase::Store, Kind::Overflow)),
                    a => a,
                }
            }
            Set::IdPlus(k) => new.id = int(old.id.checked_add(*k), old.id.wrapping_add(*k))?,
            Set::IdTimes(k) => new.id = int(old.id.checked_mul(*k), old.id.wrapping_mul(*k))?,
            Set::IdDiv0 => return Err((Phase::Eval, Kind::DivZero)),
            Set::IdNull => return Err((Phase::Store, Kind::NotNull)),
            Set::DayTo(d) => new.day = *d,
            Set::FlagNot => new.flag = old.flag.map(|b| !b),
        }
        Ok(())
    }

    fn random(rng: &mut Rng, checked: bool) -> Set {
        match rng.below(if checked { 12 } else { 11 }) {
            0 | 1 => Set::ScoreTimes(*rng.pick(&[2.5, -0.5, 3.0])),
            2 => Set::NameAppend(*rng.pick(&["é", "x", "日本"])),
            3 => Set::NameTo(*rng.pick(&[None, Some("upd"), Some("ééééééé"), Some("ninechars")])),
            4 | 5 => Set::AmountPlus(*rng.pick(&[125, -99_999, 1_000_000_000])),
            6 => Set::IdPlus(rng.range(1, 1000)),
            7 => Set::DayTo(rng.chance(0.2).then(|| rng.range(-5000, 30_000) as i32)),
            8 => Set::FlagNot,
            9 => {
                if rng.chance(0.5) {
                    Set::IdDiv0
                } else {
                    Set::IdNull
                }
            }
            10 => Set::DayTo(None),
            _ => Set::IdTimes(*rng.pick(&[2, 3, 1 << 40])),
        }
    }
}

/// The model's UPDATE: evaluates every assignment on the old rows; the first
/// assignment (in order) with a failing row decides the error, evaluation errors
/// before storing errors.
fn model_update(
    rows: &mut Vec<Row>,
    sets: &[Set],
    pred: &Pred,
    checked: bool,
) -> Result<usize, Kind> {
    let matched: Vec<usize> = (0..rows.len()).filter(|&i| pred.holds(&rows[i])).collect();
    let mut new = rows.clone();
    for s in sets {
        let mut err: Option<(Phase, Kind)> = None;
        for &i in &matched {
            if let Err(e) = s.apply(&rows[i], &mut new[i], checked) {
                err = Some(err.map_or(e, |f| f.min(e)));
            }
        }
        if let Some((_, k)) = err {
            return Err(k);
        }
    }
    *rows = new;
    Ok(matched.len())
}

fn model_delete(rows: &mut Vec<Row>, pred: &Pred) -> usize {
    let before = rows.len();
    rows.retain(|r| !pred.holds(r));
    before - rows.len()
}

const NAMES: &[&str] = &["a", "bb", "é", "日本", "xyz", "ééé", "abcdefg", "n1", "upd"];

// ---------------------------------------------------------------------------------
// Statistics recomputed from rows

/// A cell as the statistics see it: its min/max value (None for NULL and NaN) and a
/// key for counting distinct values.
fn stat_cells(rows: &[Row], c: usize) -> Vec<Option<(Option<StatValue>, String)>> {
    rows.iter()
        .map(|r| match c {
            0 => Some((Some(StatValue::Int(r.id)), r.id.to_string())),
            1 => r
                .name
                .as_ref()
                .map(|n| (Some(StatValue::Text(n.clone())), n.clone())),
            2 => r.score.map(|f| {
                if f.0.is_nan() {
                    (None, "NaN".to_string())
                } else {
                    (Some(StatValue::Float(f.0)), f.0.to_bits().to_string())
                }
            }),
            3 => r
                .amount
                .map(|a| (Some(StatValue::Decimal(a)), a.to_string())),
            4 => r
                .day
                .map(|d| (Some(StatValue::Int(i64::from(d))), d.to_string())),
            _ => r
                .flag
                .map(|b| (Some(StatValue::Int(i64::from(b))), b.to_string())),
        })
        .collect()
}

fn stat_less(a: &StatValue, b: &StatValue) -> bool {
    match (a, b) {
        (StatValue::Int(x), StatValue::Int(y)) => x < y,
        (StatValue::Float(x), StatValue::Float(y)) => x < y,
        (StatValue::Decimal(x), StatValue::Decimal(y)) => x < y,
        (StatValue::Text(x), StatValue::Text(y)) => x < y,
        _ => panic!("mixed stat values {a:?} {b:?}"),
    }
}

/// Asserts `s` equals the statistics of `rows`: row count, NULLs, minimum and maximum
/// exactly (NaN is no minimum or maximum), distinct values within 14.6 % (and within
/// 3 of small counts).
fn check_stats(s: &TableStats, rows: &[Row], what: &str) {
    check_stats_within(s, rows, what, 0.146);
}

/// [`check_stats`] with distinct values of more than 1000 within `rel` of exact.
fn check_stats_within(s: &TableStats, rows: &[Row], what: &str, rel: f64) {
    assert_eq!(s.rows, rows.len() as u64, "{what}: rows");
    assert_eq!(s.columns.len(), 6, "{what}: columns");
    for (c, cs) in s.columns.iter().enumerate() {
        let cells = stat_cells(rows, c);
        let nulls = cells.iter().filter(|x| x.is_none()).count() as u64;
        assert_eq!(cs.nulls, nulls, "{what}: nulls of column {c}");
        let values: Vec<&StatValue> = cells
            .iter()
            .flatten()
            .filter_map(|(v, _)| v.as_ref())
            .collect();
        let min = values
            .iter()
            .copied()
            .reduce(|a, b| if stat_less(b, a) { b } else { a });
        let max = values
            .iter()
            .copied()
            .reduce(|a, b| if stat_less(a, b) { b } else { a });
        assert_eq!(cs.min.as_ref(), min, "{what}: min of column {c}");
        assert_eq!(cs.max.as_ref(), max, "{what}: max of column {c}");
        let exact = cells
            .iter()
            .flatten()
            .map(|(_, k)| k)
            .collect::<HashSet<_>>()
            .len() as f64;
        let est = cs.distinct() as f64;
        // 1024 HyperLogLog registers: 3.25 % standard error. Thousands of checks of
        // a 10 % (3 sigma) bound cross it now and then (seed 1 of 150 x 300 steps:
        // 2709 for 2433), so the bound here is 4.5 sigma; a bias or a broken sketch
        // is far outside it.
        let tolerance = if exact > 1000.0 {
            rel * exact
        } else {
            (0.146 * exact).max(3.0)
        };
        assert!(
            (est - exact).abs() <= tolerance,
            "{what}: distinct of column {c}: estimate {est}, exact {exact}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Deterministic tests

/// A fixed workload over two tables (and one created and dropped).
fn workload(s: &mut Store) {
    s.create_table("a", schema()).unwrap();
    s.create_table("b", schema()).unwrap();
    assert_eq!(
        s.insert("a", batch(&(0..20).map(row).collect::<Vec<_>>()))
            .unwrap(),
        20
    );
    assert_eq!(
        s.insert("b", batch(&(100..105).map(row).collect::<Vec<_>>()))
            .unwrap(),
        5
    );
    // name = 'upd' WHERE id < 5
    let n = s
        .update(
            "a",
            &vec![(1, lit("upd"))],
            Some(&e_bin(e_col("id"), Operator::Lt, lit(5i64))),
        )
        .unwrap();
    assert_eq!(n, 5);
    // DELETE WHERE id > 15
    assert_eq!(
        s.delete("a", Some(&e_bin(e_col("id"), Operator::Gt, lit(15i64))))
            .unwrap(),
        4
    );
    s.set_meta("a", "rr", 42).unwrap();
    s.create_table("gone", schema()).unwrap();
    s.insert("gone", batch(&[row(1)])).unwrap();
    s.drop_table("gone").unwrap();
}

/// The rows `workload` leaves in table `a`.
fn workload_a() -> Vec<Row> {
    (0..16)
        .map(|i| {
            let mut r = row(i);
            if i < 5 {
                r.name = Some("upd".into());
            }
            r
        })
        .collect()
}

type Snapshot = Vec<(String, Vec<Row>, Option<u64>)>;

fn snapshot(s: &Store) -> Snapshot {
    s.table_names()
        .into_iter()
        .map(|t| {
            let rows = rows_of(s, &t);
            let m = s.meta(&t, "rr");
            (t, rows, m)
        })
        .collect()
}

#[test]
fn reopen_replays_every_kind_of_write() {
    let dir = TempDir::new("replay");
    let snap = {
        let mut s = Store::open_with_chunk_rows(dir.path(), 7).unwrap();
        workload(&mut s);
        let len = wal_len(&dir);
        // Expect: failed writes change nothing and are not logged.
        let div0 = vec![(0, e_bin(lit(1i64), Operator::Divide, lit(0i64)))];
        assert!(matches!(
            s.update("a", &div0, None),
            Err(Error::DivisionByZero)
        ));
        assert!(matches!(
            s.create_table("a", schema()),
            Err(Error::TableExists(_))
        ));
        assert!(matches!(
            s.insert("zzz", batch(&[row(1)])),
            Err(Error::UnknownTable(_))
        ));
        assert!(matches!(s.delete("zzz", None), Err(Error::UnknownTable(_))));
        assert!(matches!(s.drop_table("zzz"), Err(Error::UnknownTable(_))));
        // A batch of other types is refused (callers coerce first).
        let wrong = RecordBatch::try_from_iter([(
            "id",
            Arc::new(Int64Array::from(vec![1i64])) as ArrayRef,
        )])
        .unwrap();
        assert!(matches!(
            s.insert("a", wrong),
            Err(Error::Arity {
                expected: 6,
                got: 1
            })
        ));
        assert_eq!(wal_len(&dir), len, "failed writes are not logged");
        snapshot(&s)
    };
    assert_eq!(snap.len(), 2);
    assert_eq!(snap[0].1, workload_a());
    assert_eq!(snap[0].2, Some(42));
    assert_eq!(snap[1].1, (100..105).map(row).collect::<Vec<_>>());
    // Expect: the same rows after replay, whatever the chunk size.
    for chunk_rows in [1, 7, 1 << 16] {
        let s = Store::open_with_chunk_rows(dir.path(), chunk_rows).unwrap();
        assert_eq!(snapshot(&s), snap, "chunk_rows {chunk_rows}");
        check_stats(s.stats("a").unwrap(), &snap[0].1, "a after replay");
    }
}

#[test]
fn checkpoint_then_more_writes() {
    let dir = TempDir::new("ckpt");
    let snap = {
        let mut s = Store::open_with_chunk_rows(dir.path(), 7).unwrap();
        workload(&mut s);
        s.checkpoint().unwrap();
        assert_eq!(
            wal_len(&dir),
            WAL_HEADER_LEN,
            "a checkpoint starts an empty log"
        );
        s.insert("b", batch(&(200..230).map(row).collect::<Vec<_>>()))
            .unwrap();
        s.set_meta("b", "rr", 7).unwrap();
        assert_eq!(
            s.delete("a", Some(&e_bin(e_col("id"), Operator::Eq, lit(3i64))))
                .unwrap(),
            1
        );
        snapshot(&s)
    };
    {
        let mut s = Store::open_with_chunk_rows(dir.path(), 5).unwrap();
        assert_eq!(snapshot(&s), snap);
        assert_eq!(s.meta("b", "rr"), Some(7));
        s.checkpoint().unwrap();
        s.drop_table("a").unwrap();
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.table_names(), vec!["b".to_string()]);
    assert_eq!(rows_of(&s, "b"), snap[1].1);
    check_stats(s.stats("b").unwrap(), &snap[1].1, "b");
    // Expect: only the latest checkpoint's table files remain.
    let arrow_files = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".arrow")
        })
        .count();
    assert_eq!(arrow_files, 2);
}

#[test]
fn stale_log_after_checkpoint_crash_is_ignored() {
    // A crash after the manifest was written but before the log was reset: the
    // pre-checkpoint log is back. Expect: its generation is older, it does not replay.
    let dir = TempDir::new("stale");
    let snap = {
        let mut s = Store::open(dir.path()).unwrap();
        workload(&mut s);
        let old_log = std::fs::read(dir.join("wal.log")).unwrap();
        s.checkpoint().unwrap();
        let snap = snapshot(&s);
        drop(s);
        std::fs::write(dir.join("wal.log"), old_log).unwrap();
        snap
    };
    let mut s = Store::open(dir.path()).unwrap();
    assert_eq!(snapshot(&s), snap);
    s.insert("b", batch(&[row(7)])).unwrap();
    drop(s);
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.table("b").unwrap().row_count(), 6);
}

#[test]
fn torn_tail_is_ignored_and_later_writes_survive() {
    let dir = TempDir::new("torn");
    let (full, len_before_last) = {
        let mut s = Store::open(dir.path()).unwrap();
        workload(&mut s);
        let before = wal_len(&dir);
        // The last record: an UPDATE by positions.
        s.update(
            "a",
            &vec![(2, e_bin(e_col("score"), Operator::Multiply, lit(-2.0)))],
            Some(&e_bin(e_col("id"), Operator::Gt, lit(10i64))),
        )
        .unwrap();
        (snapshot(&s), before)
    };
    let before_last = {
        let mut s = Store::in_memory();
        workload(&mut s);
        snapshot(&s)
    };
    assert_ne!(full, before_last);
    let log = std::fs::read(dir.join("wal.log")).unwrap();
    let len = log.len() as u64;
    // Expect: every cut inside the last record gives the state before it; every new
    // write after reopening is durable.
    for cut in len_before_last..len {
        let d2 = TempDir::new("torn-cut");
        std::fs::write(d2.join("wal.log"), &log[..cut as usize]).unwrap();
        let mut s = Store::open(d2.path()).unwrap();
        assert_eq!(snapshot(&s), before_last, "cut at {cut}");
        assert_eq!(
            wal_len(&d2),
            len_before_last,
            "the torn tail is truncated away"
        );
        s.insert("b", batch(&[row(9)])).unwrap();
        drop(s);
        let s = Store::open(d2.path()).unwrap();
        let mut expect = before_last.clone();
        expect[1].1.push(row(9));
        assert_eq!(snapshot(&s), expect, "cut at {cut}");
    }
    // Expect: a zero-filled tail (preallocated block) is torn too.
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.join("wal.log"))
        .unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 64]).unwrap();
    drop(f);
    assert_eq!(snapshot(&Store::open(dir.path()).unwrap()), full);
    assert_eq!(wal_len(&dir), len);
    // Expect: the last record's payload zeroed in place (the length was written,
    // the data was not) is torn too.
    let mut zeroed = log.clone();
    for b in &mut zeroed[len_before_last as usize + 8..] {
        *b = 0;
    }
    std::fs::write(dir.join("wal.log"), &zeroed).unwrap();
    assert_eq!(snapshot(&Store::open(dir.path()).unwrap()), before_last);
}

/// Offsets of the records of a log.
fn record_offsets(log: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut off = WAL_HEADER_LEN as usize;
    while off + 8 <= log.len() {
        out.push(off);
        off += 8 + u32::from_le_bytes(log[off..off + 4].try_into().unwrap()) as usize;
    }
    out
}

/// A log record frame around `payload` (length, CRC-32, payload).
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_le_bytes().to_vec();
    v.extend(crc32fast::hash(payload).to_le_bytes());
    v.extend(payload);
    v
}

fn expect_corrupt(dir: &TempDir, log: &[u8], want: &str) {
    std::fs::write(dir.join("wal.log"), log).unwrap();
    match Store::open(dir.path()) {
        Err(Error::Corrupt(m)) => assert!(m.contains(want), "want {want:?}: {m}"),
        other => panic!("want Corrupt({want:?}), got {other:?}"),
    }
}

#[test]
fn damaged_logs_are_corrupt() {
    let dir = TempDir::new("corrupt");
    {
        let mut s = Store::open(dir.path()).unwrap();
        workload(&mut s);
    }
    let good = std::fs::read(dir.join("wal.log")).unwrap();
    let offs = record_offsets(&good);
    assert_eq!(offs.len(), 10);
    // Expect: a flipped bit in any byte of a record that is not the last is corruption.
    for &off in &offs[..offs.len() - 1] {
        for at in [off, off + 4, off + 8, off + 9] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            std::fs::write(dir.join("wal.log"), &bad).unwrap();
            assert!(
                matches!(Store::open(dir.path()), Err(Error::Corrupt(_))),
                "bit flip at {at} (record at {off})"
            );
        }
    }
    let mut bad = good.clone();
    bad[offs[2] + 10] ^= 0x5a;
    expect_corrupt(&dir, &bad, "checksum");
    // Expect: a damaged header.
    let mut bad = good.clone();
    bad[0] = b'X';
    expect_corrupt(&dir, &bad, "header");
    expect_corrupt(&dir, &good[..10], "header");
    // Expect: a record with a good checksum that is not a log record.
    let mut bad = good[..offs[1]].to_vec();
    bad.extend(frame(&[200, 1, 2, 3]));
    bad.extend(&good[offs[1]..]);
    expect_corrupt(&dir, &bad, "cannot be decoded");
    // Expect: a well-formed record that cannot be applied (DELETE of row position
    // 100 of table "a", which has 20 rows then): replay fails, the store refuses.
    // postcard: variant 3 (Delete), "a", [100].
    let mut bad = good[..offs[3]].to_vec();
    bad.extend(frame(&[3, 1, b'a', 1, 100]));
    expect_corrupt(&dir, &bad, "replay");
    // Expect: the same record with a good position replays (the encoding is right).
    let mut ok = good[..offs[3]].to_vec();
    ok.extend(frame(&[3, 1, b'a', 1, 19]));
    std::fs::write(dir.join("wal.log"), &ok).unwrap();
    assert_eq!(
        Store::open(dir.path())
            .unwrap()
            .table("a")
            .unwrap()
            .row_count(),
        19
    );
    // Expect: a log from a generation after the checkpoint's.
    let mut bad = good.clone();
    bad[12] = 5;
    expect_corrupt(&dir, &bad, "generation");
}

#[test]
fn a_log_of_version_1_is_refused_with_a_clear_error() {
    let dir = TempDir::new("v1");
    let mut log = b"SMRDBWAL".to_vec();
    log.extend(1u32.to_le_bytes());
    log.extend(0u64.to_le_bytes());
    std::fs::write(dir.join("wal.log"), &log).unwrap();
    match Store::open(dir.path()) {
        Err(Error::Corrupt(m)) => assert!(m.contains("unsupported log version 1"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Expect: the file is left alone (not truncated, not rewritten).
    assert_eq!(std::fs::read(dir.join("wal.log")).unwrap(), log);
}

#[test]
fn damaged_manifests_are_corrupt() {
    let dir = TempDir::new("manifest");
    {
        let mut s = Store::open(dir.path()).unwrap();
        workload(&mut s);
        s.checkpoint().unwrap();
    }
    let good = std::fs::read_to_string(dir.join("MANIFEST.json")).unwrap();
    std::fs::write(dir.join("MANIFEST.json"), &good[..good.len() / 2]).unwrap();
    assert!(matches!(Store::open(dir.path()), Err(Error::Corrupt(m)) if m.contains("manifest")));
    let v1 = good.replacen("\"version\": 2", "\"version\": 1", 1);
    assert_ne!(v1, good);
    std::fs::write(dir.join("MANIFEST.json"), &v1).unwrap();
    assert!(
        matches!(Store::open(dir.path()), Err(Error::Corrupt(m)) if m.contains("manifest version 1"))
    );
    std::fs::write(dir.join("MANIFEST.json"), &good).unwrap();
    assert_eq!(
        Store::open(dir.path()).unwrap().table_names(),
        vec!["a", "b"]
    );
}

/// A checkpointed store of one table; returns the path of its table file.
fn checkpointed(dir: &TempDir) -> std::path::PathBuf {
    {
        let mut s = Store::open(dir.path()).unwrap();
        workload(&mut s);
        s.checkpoint().unwrap();
    }
    std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "arrow"))
        .unwrap()
}

#[test]
fn truncated_checkpoint_files_are_errors() {
    let dir = TempDir::new("ckpt-cut");
    let file = checkpointed(&dir);
    let good = std::fs::read(&file).unwrap();
    // Expect: every proper prefix of a table file fails to open (no panic).
    for cut in 0..good.len() {
        std::fs::write(&file, &good[..cut]).unwrap();
        match no_panic(|| Store::open(dir.path())) {
            Ok(Ok(_)) => panic!("a checkpoint file cut at {cut} opens"),
            Ok(Err(_)) => {}
            Err(p) => panic!("cut at {cut}: panic {p}"),
        }
    }
    std::fs::write(&file, &good).unwrap();
    assert_eq!(
        rows_of(&Store::open(dir.path()).unwrap(), "a"),
        workload_a()
    );
}

#[test]
#[ignore = "bug: Store::open reads checkpoint files with arrow's FileReader, which panics on \
            some damaged buffer lengths and aborts the process (out of memory) on a damaged \
            block length in the footer; run with --ignored"]
fn damaged_checkpoint_files_are_errors_not_panics() {
    // Arrow IPC files carry no checksum: a changed byte may go unnoticed, but opening
    // must return (Ok or an error), never panic or abort.
    let dir = TempDir::new("ckpt-damage");
    let file = checkpointed(&dir);
    let good = std::fs::read(&file).unwrap();
    let mut panics = Vec::new();
    for at in 0..good.len() {
        for v in [0x00u8, 0xff, good[at] ^ 0x01] {
            let mut bad = good.clone();
            bad[at] = v;
            std::fs::write(&file, &bad).unwrap();
            if let Err(p) = no_panic(|| Store::open(dir.path())) {
                panics.push(format!("byte {at} = {v:#x}: {p}"));
            }
        }
    }
    assert!(
        panics.is_empty(),
        "{} panics: {:?}",
        panics.len(),
        &panics[..panics.len().min(5)]
    );
}

#[test]
fn volatile_store_works_without_disk() {
    let mut s = Store::in_memory_with_chunk_rows(4);
    workload(&mut s);
    assert!(s.dir().is_none());
    s.checkpoint().unwrap();
    assert_eq!(rows_of(&s, "a"), workload_a());
    assert_eq!(s.meta("a", "rr"), Some(42));
    assert_eq!(s.meta("a", "other"), None);
    check_stats(s.stats("a").unwrap(), &workload_a(), "volatile a");
}

fn stmt_update(sets: &[Set], pred: &Pred, table: &str) -> StmtWrite {
    StmtWrite::Update {
        table: table.into(),
        assignments: sets
            .iter()
            .map(|s| (s.column(), expr_to_bytes(&s.expr()).unwrap()))
            .collect(),
        filter: pred.expr().map(|e| expr_to_bytes(&e).unwrap()),
    }
}

fn stmt_delete(pred: &Pred, table: &str) -> StmtWrite {
    StmtWrite::Delete {
        table: table.into(),
        filter: pred.expr().map(|e| expr_to_bytes(&e).unwrap()),
    }
}

fn stmt_insert(rows: &[Row], table: &str) -> StmtWrite {
    StmtWrite::Insert {
        table: table.into(),
        ipc: encode_batches(&[batch(rows)]).unwrap(),
    }
}

#[test]
fn statement_writes_apply_once_and_their_ids_survive_reopen_and_checkpoint() {
    let dir = TempDir::new("stmt");
    {
        let mut s = Store::open_with_chunk_rows(dir.path(), 7).unwrap();
        assert_eq!(s.last_stmt(), 0);
        s.create_table("a", schema()).unwrap();
        let ins = |ids: std::ops::Range<i64>| stmt_insert(&ids.map(row).collect::<Vec<_>>(), "a");
        assert_eq!(s.write_stmt(3, ins(0..4)).unwrap(), Some(4));
        // Expect: re-sent after a crash, skipped; also an older id.
        let len = wal_len(&dir);
        assert_eq!(s.write_stmt(3, ins(0..4)).unwrap(), None);
        assert_eq!(s.write_stmt(2, ins(10..12)).unwrap(), None);
        assert_eq!(wal_len(&dir), len, "a skipped statement is not logged");
        assert_eq!(s.last_stmt(), 3);
        // Expect: a failed statement write changes nothing and records no id.
        assert!(matches!(
            s.write_stmt(5, stmt_update(&[Set::IdDiv0], &Pred::All, "a")),
            Err(Error::DivisionByZero)
        ));
        assert!(matches!(
            s.write_stmt(
                5,
                stmt_update(&[Set::IdTimes(1 << 62)], &Pred::IdMod(4, 3), "a")
            ),
            Err(Error::Overflow(_))
        ));
        assert!(matches!(
            s.write_stmt(5, stmt_update(&[Set::IdPlus(1)], &Pred::All, "zzz")),
            Err(Error::UnknownTable(_))
        ));
        let garbage = StmtWrite::Update {
            table: "a".into(),
            assignments: vec![(0, vec![0xff, 0xff, 0xff])],
            filter: None,
        };
        assert!(matches!(s.write_stmt(5, garbage), Err(Error::Corrupt(_))));
        assert_eq!(s.last_stmt(), 3);
        assert_eq!(wal_len(&dir), len, "failed statements are not logged");
        // name = 'u' WHERE id < 2 (as bytes, decoded over the table's schema)
        let upd = StmtWrite::Update {
            table: "a".into(),
            assignments: vec![(1, expr_to_bytes(&lit("u")).unwrap())],
            filter: Some(expr_to_bytes(&e_bin(e_col("id"), Operator::Lt, lit(2i64))).unwrap()),
        };
        assert_eq!(s.write_stmt(5, upd).unwrap(), Some(2));
        // Expect: plain writes do not move the statement id.
        s.insert("a", batch(&[row(50)])).unwrap();
        assert_eq!(s.last_stmt(), 5);
    }
    {
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.last_stmt(), 5, "replayed from the log");
        let names: Vec<_> = rows_of(&s, "a").into_iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            vec![
                Some("u".into()),
                Some("u".into()),
                Some("n2".into()),
                None,
                Some("n50".into())
            ]
        );
        s.checkpoint().unwrap();
        let del = stmt_delete(&Pred::IdMod(50, 0), "a");
        assert_eq!(s.write_stmt(6, del.clone()).unwrap(), Some(2));
        s.checkpoint().unwrap();
        assert_eq!(s.write_stmt(6, del).unwrap(), None);
    }
    let s = Store::open(dir.path()).unwrap();
    assert_eq!(s.last_stmt(), 6, "kept by the checkpoint's manifest");
    assert_eq!(
        rows_of(&s, "a").iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[test]
fn update_is_atomic_over_every_chunk() {
    // Expect: an UPDATE whose last matching row fails (in the last chunk) changes no
    // row of any chunk; one that succeeds changes them all.
    let mut s = Store::in_memory_with_chunk_rows(3);
    s.create_table("t", schema()).unwrap();
    let mut rows: Vec<Row> = (0..10).map(row).collect();
    rows[9].amount = Some(MAX_AMOUNT - 100);
    s.insert("t", batch(&rows)).unwrap();
    let sets = [Set::ScoreTimes(2.5), Set::AmountPlus(125)];
    let exprs: Vec<_> = sets.iter().map(|x| (x.column(), x.expr())).collect();
    assert!(matches!(
        s.update("t", &exprs, None),
        Err(Error::Overflow(_))
    ));
    assert_eq!(rows_of(&s, "t"), rows);
    let pred = Pred::AmountLt(1_000_000);
    assert_eq!(s.update("t", &exprs, pred.expr().as_ref()).unwrap(), 9);
    assert_eq!(model_update(&mut rows, &sets, &pred, false), Ok(9));
    assert_eq!(rows_of(&s, "t"), rows);
    check_stats(s.stats("t").unwrap(), &rows, "t");
}

#[test]
#[ignore = "bug: ColumnStats::add takes a chunk's maximum with arrow's max (NaN is the \
            largest) and drops NaN, so the chunk's larger numbers never reach the maximum"]
fn nan_does_not_hide_larger_values_from_the_maximum() {
    let mut s = Store::in_memory();
    s.create_table("t", schema()).unwrap();
    let mut rows = vec![row(4)]; // score 1.0
    s.insert("t", batch(&rows)).unwrap();
    let mut more = vec![row(8), row(28)]; // scores 2.0, 7.0
    more[0].score = Some(F(f64::NAN));
    s.insert("t", batch(&more)).unwrap();
    rows.extend(more);
    // Expect: the maximum of the numbers, 7.0 (NaN is no maximum); it is 1.0.
    assert_eq!(
        s.stats("t").unwrap().columns[2].max,
        Some(StatValue::Float(7.0))
    );
    check_stats(s.stats("t").unwrap(), &rows, "t");
}

#[test]
fn statistics_follow_every_kind_of_write() {
    // Expect: after each write, and after a reopen from a checkpoint plus a log,
    // the statistics are those of the rows; distinct counts of more than 1000
    // values within 10 %.
    let dir = TempDir::new("stats");
    let mut s = Store::open_with_chunk_rows(dir.path(), 1000).unwrap();
    s.create_table("t", schema()).unwrap();
    let mut rows: Vec<Row> = Vec::new();
    let mut rng = Rng::new(7);
    for k in 0..3 {
        let more: Vec<Row> = (0..1500)
            .map(|i| {
                let mut r = row(k * 1500 + i);
                r.score = Some(F(rng.range(-4000, 4000) as f64 / 8.0));
                r.day = (i % 11 != 0).then(|| rng.range(0, 20_000) as i32);
                r
            })
            .collect();
        s.insert("t", batch(&more)).unwrap();
        rows.extend(more);
        check_stats_within(s.stats("t").unwrap(), &rows, &format!("insert {k}"), 0.1);
    }
    s.checkpoint().unwrap();
    let sets = [
        Set::ScoreTimes(-0.5),
        Set::AmountPlus(-99_999),
        Set::NameTo(None),
    ];
    let exprs: Vec<_> = sets.iter().map(|x| (x.column(), x.expr())).collect();
    let pred = Pred::IdMod(3, 1);
    let n = s.update("t", &exprs, pred.expr().as_ref()).unwrap();
    assert_eq!(model_update(&mut rows, &sets, &pred, false), Ok(n));
    check_stats_within(s.stats("t").unwrap(), &rows, "update", 0.1);
    let pred = Pred::ScoreGt(100.0);
    let n = s.delete("t", pred.expr().as_ref()).unwrap();
    assert_eq!(model_delete(&mut rows, &pred), n);
    check_stats_within(s.stats("t").unwrap(), &rows, "delete", 0.1);
    drop(s);
    let s = Store::open_with_chunk_rows(dir.path(), 7).unwrap();
    assert_eq!(rows_of(&s, "t"), rows);
    check_stats_within(s.stats("t").unwrap(), &rows, "reopen", 0.1);
}

// ---------------------------------------------------------------------------------
// The model-based random test

#[derive(Debug, Clone, PartialEq, Default)]
struct TableModel {
    rows: Vec<Row>,
    meta: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Model {
    tables: BTreeMap<String, TableModel>,
    last_stmt: u64,
}

struct Run {
    seed: u64,
    rng: Rng,
    dir: TempDir,
    store: Store,
    model: Model,
    /// (log length after a write, the model then), since the last checkpoint or open.
    history: Vec<(u64, Model)>,
    next_id: i64,
    next_stmt: u64,
    trace: Vec<String>,
}

const TABLES: &[&str] = &["t", "u"];
const CHUNK_ROWS: &[usize] = &[2, 7, 64, 1000];

impl Run {
    fn new(seed: u64) -> Run {
        let mut rng = Rng::new(seed);
        let dir = TempDir::new("model");
        let chunk = *rng.pick(CHUNK_ROWS);
        let mut store = Store::open_with_chunk_rows(dir.path(), chunk).unwrap();
        let mut model = Model::default();
        for t in TABLES {
            store.create_table(t, schema()).unwrap();
            model.tables.insert(t.to_string(), TableModel::default());
        }
        let history = vec![(wal_len(&dir), model.clone())];
        Run {
            seed,
            rng,
            dir,
            store,
            model,
            history,
            next_id: 0,
            next_stmt: 1,
            trace: vec![format!("open chunk_rows={chunk}")],
        }
    }

    fn context(&self) -> String {
        let from = self.trace.len().saturating_sub(12);
        format!(
            "seed {} step {}; last steps:\n  {}",
            self.seed,
            self.trace.len(),
            self.trace[from..].join("\n  ")
        )
    }

    fn gen_row(&mut self) -> Row {
        let r = &mut self.rng;
        let id = if r.chance(0.9) {
            self.next_id += 1;
            self.next_id
        } else {
            r.range(-50, 50)
        };
        let name = if r.chance(0.2) {
            None
        } else if r.chance(0.5) {
            Some(r.pick(NAMES).to_string())
        } else {
            Some(format!("n{}", r.below(3000)))
        };
        // No NaN: a NaN hides larger values of its chunk from the statistics'
        // maximum (see `nan_does_not_hide_larger_values_from_the_maximum`).
        let score = if r.chance(0.15) {
            None
        } else if r.chance(0.03) && std::env::var_os("SMRDB_PERSIST_NAN").is_some() {
            Some(F(f64::NAN))
        } else {
            Some(F(r.range(-2000, 2000) as f64 / 4.0))
        };
        let amount = if r.chance(0.15) {
            None
        } else if r.chance(0.05) {
            Some(MAX_AMOUNT - i128::from(r.range(0, 1000)))
        } else if r.chance(0.02) {
            Some(-MAX_AMOUNT + i128::from(r.range(0, 1000)))
        } else {
            Some(i128::from(r.range(-100_000, 100_000)))
        };
        let day = (!r.chance(0.15)).then(|| r.range(-1000, 30_000) as i32);
        let flag = (!r.chance(0.2)).then(|| r.chance(0.5));
        Row {
            id,
            name,
            score,
            amount,
            day,
            flag,
        }
    }

    /// Checks the store against the model: tables, rows in order, counters,
    /// statement id, statistics.
    fn check(&self) {
        let ctx = self.context();
        assert_eq!(
            self.store.table_names(),
            self.model.tables.keys().cloned().collect::<Vec<_>>(),
            "{ctx}"
        );
        assert_eq!(self.store.last_stmt(), self.model.last_stmt, "{ctx}");
        for (name, t) in &self.model.tables {
            let got = rows_of(&self.store, name);
            if got != t.rows {
                let first = got.iter().zip(&t.rows).position(|(a, b)| a != b);
                panic!(
                    "{ctx}\ntable {name}: {} rows, model {}; first difference at {first:?}: {:?} vs {:?}",
                    got.len(),
                    t.rows.len(),
                    first.map(|i| &got[i]),
                    first.map(|i| &t.rows[i])
                );
            }
            for (k, v) in &t.meta {
                assert_eq!(self.store.meta(name, k), Some(*v), "{ctx}");
            }
            check_stats(
                self.store.stats(name).unwrap(),
                &t.rows,
                &format!("{ctx}\ntable {name}"),
            );
        }
    }

    /// After a successful logged write.
    fn logged(&mut self) {
        self.history.push((wal_len(&self.dir), self.model.clone()));
    }

    fn expect_result(&mut self, got: Result<usize>, want: Result<usize, Kind>, len_before: u64) {
        let ctx = self.context();
        match (got, want) {
            (Ok(n), Ok(m)) => {
                assert_eq!(n, m, "{ctx}");
                self.logged();
            }
            (Err(e), Err(k)) => {
                assert_eq!(kind(&e), Some(k), "{ctx}\nerror: {e}");
                assert_eq!(
                    wal_len(&self.dir),
                    len_before,
                    "{ctx}\na failed write is logged"
                );
            }
            (got, want) => panic!("{ctx}\ngot {got:?}, model says {want:?}"),
        }
    }

    /// A table that exists (a crash may have lost the re-creation of "u").
    fn table(&mut self) -> String {
        let names: Vec<String> = self.model.tables.keys().cloned().collect();
        self.rng.pick(&names).clone()
    }

    fn step(&mut self) {
        let len_before = wal_len(&self.dir);
        let p = self.rng.below(100);
        match p {
            0..=21 => {
                let table = self.table();
                let n = match self.rng.below(10) {
                    0 => 0,
                    1 => 1500,
                    _ => self.rng.below(40) as usize,
                };
                let rows: Vec<Row> = (0..n).map(|_| self.gen_row()).collect();
                let stmt = self.rng.chance(0.4);
                self.trace
                    .push(format!("insert {n} rows into {table} (stmt {stmt})"));
                if stmt {
                    let id = self.next_stmt;
                    self.next_stmt += 1;
                    let got = self.store.write_stmt(id, stmt_insert(&rows, &table));
                    assert_eq!(got.unwrap(), Some(n), "{}", self.context());
                    self.model.last_stmt = id;
                    self.model.tables.get_mut(&table).unwrap().rows.extend(rows);
                    self.logged();
                } else {
                    let got = self.store.insert(&table, batch(&rows)).unwrap();
                    assert_eq!(got, n, "{}", self.context());
                    self.model.tables.get_mut(&table).unwrap().rows.extend(rows);
                    if n > 0 {
                        self.logged();
                    }
                }
            }
            22..=56 => {
                let table = self.table();
                let stmt = self.rng.chance(0.5);
                let pred = Pred::random(&mut self.rng);
                let mut sets: Vec<Set> = Vec::new();
                for _ in 0..self.rng.range(1, 3) {
                    let s = Set::random(&mut self.rng, stmt);
                    if sets.iter().all(|t| t.column() != s.column()) {
                        sets.push(s);
                    }
                }
                self.trace.push(format!(
                    "update {table} set {sets:?} where {pred:?} (stmt {stmt})"
                ));
                let mut rows = self.model.tables[&table].rows.clone();
                let want = model_update(&mut rows, &sets, &pred, stmt);
                let got = if stmt {
                    let id = self.next_stmt;
                    let got = self.store.write_stmt(id, stmt_update(&sets, &pred, &table));
                    if want.is_ok() {
                        self.next_stmt += 1;
                        self.model.last_stmt = id;
                    }
                    got.map(|n| n.expect("a new statement id is applied"))
                } else {
                    let exprs: Vec<_> = sets.iter().map(|s| (s.column(), s.expr())).collect();
                    self.store.update(&table, &exprs, pred.expr().as_ref())
                };
                if want.is_ok() {
                    self.model.tables.get_mut(&table).unwrap().rows = rows;
                }
                self.expect_result(got, want, len_before);
            }
            57..=71 => {
                let table = self.table();
                let stmt = self.rng.chance(0.5);
                let mut pred = Pred::random(&mut self.rng);
                if matches!(pred, Pred::All) && self.rng.chance(0.7) {
                    pred = Pred::IdMod(3, 1);
                }
                self.trace
                    .push(format!("delete from {table} where {pred:?} (stmt {stmt})"));
                let want =
                    model_delete(&mut self.model.tables.get_mut(&table).unwrap().rows, &pred);
                let got = if stmt {
                    let id = self.next_stmt;
                    self.next_stmt += 1;
                    self.model.last_stmt = id;
                    self.store
                        .write_stmt(id, stmt_delete(&pred, &table))
                        .map(|n| n.expect("a new statement id is applied"))
                } else {
                    self.store.delete(&table, pred.expr().as_ref())
                };
                self.expect_result(got, Ok(want), len_before);
            }
            72..=74 => {
                let table = self.table();
                let v = self.rng.below(1000);
                self.trace.push(format!("set_meta {table} rr={v}"));
                self.store.set_meta(&table, "rr", v).unwrap();
                self.model
                    .tables
                    .get_mut(&table)
                    .unwrap()
                    .meta
                    .insert("rr".into(), v);
                self.logged();
            }
            75..=78 => {
                // Expect: a re-sent statement (id at or below the last) is skipped.
                if self.model.last_stmt > 0 {
                    let id = self.rng.range(1, self.model.last_stmt as i64) as u64;
                    let table = self.table();
                    self.trace.push(format!("re-send statement {id}"));
                    let w = match self.rng.below(3) {
                        0 => stmt_insert(&[row(1)], &table),
                        1 => stmt_delete(&Pred::All, &table),
                        _ => stmt_update(&[Set::IdNull], &Pred::All, &table),
                    };
                    assert_eq!(
                        self.store.write_stmt(id, w).unwrap(),
                        None,
                        "{}",
                        self.context()
                    );
                    assert_eq!(wal_len(&self.dir), len_before);
                }
            }
            79..=83 => {
                self.trace.push("checkpoint".into());
                self.store.checkpoint().unwrap();
                assert_eq!(wal_len(&self.dir), WAL_HEADER_LEN);
                self.history = vec![(WAL_HEADER_LEN, self.model.clone())];
            }
            84..=88 => self.reopen(None),
            89..=95 => self.crash(),
            _ => {
                // Drop and re-create "u".
                self.trace.push("drop and create u".into());
                if self.model.tables.contains_key("u") {
                    self.store.drop_table("u").unwrap();
                    self.model.tables.remove("u");
                    self.logged();
                    self.check();
                }
                self.store.create_table("u", schema()).unwrap();
                self.model.tables.insert("u".into(), TableModel::default());
                self.logged();
            }
        }
        self.check();
    }

    /// Closes and opens the store (with a random chunk size); `expect` is the state
    /// the log should give (default: the model).
    fn reopen(&mut self, expect: Option<(u64, Model)>) {
        let chunk = *self.rng.pick(CHUNK_ROWS);
        self.trace.push(format!("reopen chunk_rows={chunk}"));
        let store = Store::open_with_chunk_rows(self.dir.path(), chunk);
        self.store = store.unwrap_or_else(|e| panic!("{}\nreopen: {e}", self.context()));
        if let Some((len, model)) = expect {
            assert_eq!(
                wal_len(&self.dir),
                len,
                "{}\nthe torn tail is cut",
                self.context()
            );
            self.model = model;
        }
        self.history = vec![(wal_len(&self.dir), self.model.clone())];
    }

    /// A crash that tears the log's tail: cut at a random length, or at a record's
    /// end followed by zeros, or the last record's payload zeroed in place. The store
    /// must open at the last whole write before the damage.
    fn crash(&mut self) {
        // Drop the open store (its log file) before touching the file.
        self.store = Store::in_memory();
        let path = self.dir.join("wal.log");
        let original = std::fs::read(&path).unwrap();
        let mut log = original.clone();
        let len = log.len() as u64;
        let (mode, cut) = match self.rng.below(3) {
            // (Cuts before the last open or checkpoint lose writes the history no
            // longer knows.)
            0 => (
                0,
                self.rng.range(self.history[0].0 as i64, len as i64) as u64,
            ),
            1 => {
                let (l, _) = self.history[self.rng.below(self.history.len() as u64) as usize];
                (1, l)
            }
            _ => (2, len),
        };
        match mode {
            0 => log.truncate(cut as usize),
            1 => {
                log.truncate(cut as usize);
                log.extend(vec![0u8; self.rng.range(1, 300) as usize]);
            }
            _ => {
                // Zero the payload of the last record, if there is one.
                if self.history.len() > 1 {
                    let start = self.history[self.history.len() - 2].0 as usize + 8;
                    let from = self.rng.range(start as i64, len as i64 - 1) as usize;
                    for b in &mut log[from..] {
                        *b = 0;
                    }
                }
            }
        }
        std::fs::write(&path, &log).unwrap();
        let valid = if mode == 2 && self.history.len() > 1 && log != original {
            self.history[self.history.len() - 2].0
        } else {
            cut.min(len)
        };
        let expect = self
            .history
            .iter()
            .rev()
            .find(|(l, _)| *l <= valid)
            .cloned()
            .unwrap();
        self.trace.push(format!(
            "crash mode {mode}: log of {len} bytes cut to {cut}; state of log length {}",
            expect.0
        ));
        self.reopen(Some(expect));
    }
}

#[test]
fn random_writes_match_a_model() {
    let seeds: u64 = std::env::var("SMRDB_PERSIST_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let steps: usize = std::env::var("SMRDB_PERSIST_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    for seed in 0..seeds {
        let mut run = Run::new(seed);
        run.check();
        for _ in 0..steps {
            run.step();
        }
        // Expect: whatever the last step was, a clean reopen gives the same state.
        run.reopen(None);
        run.check();
    }
}
