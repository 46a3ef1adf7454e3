//! Differential test of the distributed planner: random tables split round-robin over
//! the Tstores of random cluster shapes, random queries from a grammar (joins of 1
//! to 5 tables of every kind, semi and anti joins from [NOT] IN / [NOT] EXISTS,
//! correlated and uncorrelated scalar subqueries, aggregates with GROUP BY / HAVING
//! and COUNT(DISTINCT), DISTINCT, ORDER BY with LIMIT / OFFSET, set operations,
//! window functions, derived tables and CTEs), each planned, distributed and run by
//! the simulator (`common::simulate`), and compared with the same SQL run by
//! DataFusion in one process.
//!
//! Answers are compared as multisets of rendered rows, or in order when the query
//! orders by every output column (a LIMIT only ever follows such an ORDER BY).
//!
//! Reproducible: `SMRDB_DIFF_SEED` sets the first case's seed (each case prints
//! its own), `SMRDB_DIFF_CASES` the number of cases, `SMRDB_DIFF_QUERIES` the
//! queries per case. A mismatch prints the case seed, the shape and the SQL.
//! `SMRDB_DIFF_SQL` runs that one query on the tables of case `SMRDB_DIFF_SEED` on
//! every shape (`SMRDB_DIFF_PIVOT` forces a pivot) and prints both answers and the
//! plan. For triage, `SMRDB_DIFF_IGNORE` holds `;`-separated texts: a mismatch whose
//! report (SQL and message) contains one is counted, not failed.

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Decimal128Array, Int32Array, Int64Array, RecordBatch,
    StringArray,
};
use common::{env_u64, reference, render, run, Db, Rng};
use datafusion::prelude::SessionContext;
use smrdb_planner::{Broadcast, DistOptions, Planner};
use smrdb_tstore::{ColumnDef, SqlType, TableSchema};

// ------------------------------------------------------------------ data

/// The value class of a column or expression (what it may be compared with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int,
    Big,
    Num,
    Text,
    Date,
    Bool,
    /// AVG of integers (only ever an output).
    Float,
}

impl Ty {
    /// Values of the same class compare without casts that could fail.
    fn class(self) -> u8 {
        match self {
            Ty::Int | Ty::Big => 0,
            Ty::Num => 1,
            Ty::Text => 2,
            Ty::Date => 3,
            Ty::Bool => 4,
            Ty::Float => 5,
        }
    }
}

/// Every table's columns: a unique id, a join key with NULLs and duplicates, a
/// small-domain group key, a NUMERIC(10,2), text, a date and a boolean.
const COLUMNS: [(&str, Ty); 7] = [
    ("id", Ty::Big),
    ("k", Ty::Int),
    ("g", Ty::Big),
    ("n", Ty::Num),
    ("s", Ty::Text),
    ("d", Ty::Date),
    ("f", Ty::Bool),
];

const TEXTS: [&str; 8] = ["", "a", "ab", "abc", "b", "B", "zz", "a b"];
/// The first date of the generated data (days since 1970-01-01: 2023-12-09).
const DAY0: i32 = 19700;

fn schema() -> TableSchema {
    TableSchema::new(
        COLUMNS
            .iter()
            .map(|(n, t)| {
                let ty = match t {
                    Ty::Int => SqlType::Integer,
                    Ty::Big => SqlType::BigInt,
                    Ty::Num => SqlType::Numeric {
                        precision: 10,
                        scale: 2,
                    },
                    Ty::Text => SqlType::Text,
                    Ty::Date => SqlType::Date,
                    Ty::Bool | Ty::Float => SqlType::Boolean,
                };
                ColumnDef::new(*n, ty, *n != "id")
            })
            .collect(),
    )
}

/// `rows` random rows in batches of at most `batch` rows; join keys in
/// `-1..=keys`, each nullable column NULL with probability `nulls` %.
fn table(r: &mut Rng, rows: usize, keys: i64, nulls: usize, batch: usize) -> Vec<RecordBatch> {
    let s = schema().to_arrow();
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < rows || (rows == 0 && out.is_empty()) {
        let n = (rows - start).min(batch.max(1));
        let null = |r: &mut Rng| r.chance(nulls);
        let id: Vec<i64> = (start..start + n).map(|i| i as i64).collect();
        let k: Vec<Option<i32>> = (0..n)
            .map(|_| (!null(r)).then(|| r.range(-1, keys) as i32))
            .collect();
        let g: Vec<Option<i64>> = (0..n).map(|_| (!null(r)).then(|| r.range(0, 4))).collect();
        let num: Vec<Option<i128>> = (0..n)
            .map(|_| (!null(r)).then(|| i128::from(r.range(-8, 40) * 25)))
            .collect();
        let txt: Vec<Option<&str>> = (0..n)
            .map(|_| (!null(r)).then(|| *r.pick(&TEXTS)))
            .collect();
        let d: Vec<Option<i32>> = (0..n)
            .map(|_| (!null(r)).then(|| DAY0 + r.range(0, 10) as i32))
            .collect();
        let f: Vec<Option<bool>> = (0..n).map(|_| (!null(r)).then(|| r.chance(50))).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(id)),
            Arc::new(Int32Array::from(k)),
            Arc::new(Int64Array::from(g)),
            Arc::new(
                Decimal128Array::from(num)
                    .with_precision_and_scale(10, 2)
                    .unwrap(),
            ),
            Arc::new(StringArray::from(txt)),
            Arc::new(Date32Array::from(d)),
            Arc::new(BooleanArray::from(f)),
        ];
        out.push(RecordBatch::try_new(s.clone(), cols).unwrap());
        start += n;
        if rows == 0 {
            break;
        }
    }
    out
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
fn ymd(days: i32) -> String {
    // Howard Hinnant's civil_from_days.
    let z = i64::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

// ------------------------------------------------------------------ queries

/// A column (or expression) in scope: its SQL and class.
#[derive(Debug, Clone)]
struct Col {
    sql: String,
    ty: Ty,
}

/// What a FROM clause makes visible.
#[derive(Debug, Clone, Default)]
struct Scope {
    cols: Vec<Col>,
    /// Aliases of the base tables scanned directly by this FROM (pivot candidates).
    base: Vec<String>,
}

/// One generated query.
#[derive(Debug, Clone)]
struct Generated {
    sql: String,
    /// It orders by every output column: compare in order.
    ordered: bool,
    /// Every alias of a table scan (for `smrdb.pivot`).
    aliases: Vec<String>,
}

struct Gen<'a> {
    r: &'a mut Rng,
    tables: Vec<String>,
    next: usize,
    ctes: Vec<(String, String, Vec<Col>)>,
    aliases: Vec<String>,
    /// Allow bigger joins (small tables).
    max_tables: usize,
}

impl Gen<'_> {
    fn alias(&mut self, prefix: &str) -> String {
        self.next += 1;
        let a = format!("{prefix}{}", self.next);
        self.aliases.push(a.clone());
        a
    }

    fn table(&mut self) -> String {
        let i = self.r.below(self.tables.len());
        self.tables[i].clone()
    }

    fn lit(&mut self, ty: Ty) -> String {
        match ty {
            Ty::Int | Ty::Big => self.r.range(-1, 9).to_string(),
            Ty::Num | Ty::Float => {
                let c = self.r.range(-8, 40) * 25;
                format!(
                    "{}{}.{:02}",
                    if c < 0 { "-" } else { "" },
                    c.abs() / 100,
                    c.abs() % 100
                )
            }
            Ty::Text => format!("'{}'", self.r.pick(&TEXTS)),
            Ty::Date => format!("DATE '{}'", ymd(DAY0 + self.r.range(-1, 11) as i32)),
            Ty::Bool => if self.r.chance(50) { "TRUE" } else { "FALSE" }.into(),
        }
    }

    fn col_of(&mut self, scope: &Scope, pred: impl Fn(Ty) -> bool) -> Option<Col> {
        let c: Vec<&Col> = scope.cols.iter().filter(|c| pred(c.ty)).collect();
        if c.is_empty() {
            None
        } else {
            Some(c[self.r.below(c.len())].clone())
        }
    }

    fn any_col(&mut self, scope: &Scope) -> Col {
        self.col_of(scope, |t| t != Ty::Float)
            .unwrap_or_else(|| scope.cols[0].clone())
    }

    /// A predicate over `scope`.
    fn pred(&mut self, scope: &Scope, depth: usize) -> String {
        let choice = if depth == 0 {
            self.r.below(9)
        } else {
            self.r.below(12)
        };
        match choice {
            0 | 1 => {
                let c = self.col_of(scope, |t| t != Ty::Bool && t != Ty::Float);
                let Some(c) = c else { return "TRUE".into() };
                let op = *self.r.pick(&["=", "<>", "<", "<=", ">", ">="]);
                format!("{} {op} {}", c.sql, self.lit(c.ty))
            }
            2 => {
                let c = self.any_col(scope);
                format!(
                    "{} IS {}NULL",
                    c.sql,
                    if self.r.chance(50) { "NOT " } else { "" }
                )
            }
            3 => {
                let c = self.col_of(scope, |t| {
                    matches!(t, Ty::Int | Ty::Big | Ty::Num | Ty::Date)
                });
                let Some(c) = c else { return "FALSE".into() };
                let (a, b) = (self.lit(c.ty), self.lit(c.ty));
                format!("{} BETWEEN {a} AND {b}", c.sql)
            }
            4 => {
                let c = self.col_of(scope, |t| t != Ty::Bool && t != Ty::Float);
                let Some(c) = c else { return "TRUE".into() };
                let mut items: Vec<String> =
                    (0..self.r.range(1, 3)).map(|_| self.lit(c.ty)).collect();
                let not = self.r.chance(40);
                if self.r.chance(20) {
                    items.push("NULL".into());
                }
                format!(
                    "{} {}IN ({})",
                    c.sql,
                    if not { "NOT " } else { "" },
                    items.join(", ")
                )
            }
            5 => {
                // Two columns of one class.
                let a = self.any_col(scope);
                let b = self.col_of(scope, |t| t.class() == a.ty.class());
                let b = b.unwrap_or_else(|| a.clone());
                let op = *self.r.pick(&["=", "<>", "<", ">="]);
                if a.ty == Ty::Bool {
                    format!("{} = {}", a.sql, b.sql)
                } else {
                    format!("{} {op} {}", a.sql, b.sql)
                }
            }
            6 => match self.col_of(scope, |t| t == Ty::Bool) {
                Some(c) => {
                    if self.r.chance(50) {
                        c.sql
                    } else {
                        format!("NOT {}", c.sql)
                    }
                }
                None => "TRUE".into(),
            },
            7 => match self.col_of(scope, |t| t == Ty::Text) {
                Some(c) => format!("{} LIKE '{}%'", c.sql, self.r.pick(&["a", "b", "", "z"])),
                None => "TRUE".into(),
            },
            8 => {
                let c = self.col_of(scope, |t| matches!(t, Ty::Int | Ty::Big | Ty::Num));
                let Some(c) = c else { return "TRUE".into() };
                let (l1, l2) = (self.lit(c.ty), self.lit(c.ty));
                format!("COALESCE({}, {l1}) > {l2}", c.sql)
            }
            9 => format!(
                "({} AND {})",
                self.pred(scope, depth - 1),
                self.pred(scope, depth - 1)
            ),
            10 => format!(
                "({} OR {})",
                self.pred(scope, depth - 1),
                self.pred(scope, depth - 1)
            ),
            _ => format!("NOT ({})", self.pred(scope, depth - 1)),
        }
    }

    /// A predicate with a subquery, correlated to `scope` or not.
    fn subquery_pred(&mut self, scope: &Scope) -> String {
        let t = self.table();
        let x = self.alias("x");
        let inner = Scope {
            cols: COLUMNS
                .iter()
                .map(|(n, ty)| Col {
                    sql: format!("{x}.{n}"),
                    ty: *ty,
                })
                .collect(),
            base: vec![x.clone()],
        };
        let outer_int = self.col_of(scope, |t| matches!(t, Ty::Int | Ty::Big));
        let extra = if self.r.chance(50) {
            format!(" AND {}", self.pred(&inner, 1))
        } else {
            String::new()
        };
        let inner_where = if self.r.chance(60) {
            format!(" WHERE {}", self.pred(&inner, 1))
        } else {
            String::new()
        };
        match (self.r.below(8), outer_int) {
            (0, Some(o)) => format!(
                "EXISTS (SELECT 1 FROM {t} {x} WHERE {x}.k = {}{extra})",
                o.sql
            ),
            (1, Some(o)) => {
                format!(
                    "NOT EXISTS (SELECT 1 FROM {t} {x} WHERE {x}.k = {}{extra})",
                    o.sql
                )
            }
            (2, _) | (0, None) => {
                let c = self.any_col(scope);
                let ic = inner
                    .cols
                    .iter()
                    .find(|i| i.ty.class() == c.ty.class())
                    .cloned()
                    .unwrap_or_else(|| inner.cols[1].clone());
                format!("{} IN (SELECT {} FROM {t} {x}{inner_where})", c.sql, ic.sql)
            }
            (3, _) | (1, None) => {
                // NOT IN: a NULL among the subquery's values makes it never TRUE.
                let c = self
                    .col_of(scope, |t| matches!(t, Ty::Int | Ty::Big | Ty::Text))
                    .unwrap_or_else(|| scope.cols[0].clone());
                let ic = if c.ty == Ty::Text { "s" } else { "k" };
                format!(
                    "{} NOT IN (SELECT {x}.{ic} FROM {t} {x}{inner_where})",
                    c.sql
                )
            }
            (4, Some(o)) => {
                // Correlated IN.
                let c = self
                    .col_of(scope, |t| matches!(t, Ty::Int | Ty::Big))
                    .unwrap_or(o.clone());
                format!(
                    "{} IN (SELECT {x}.k FROM {t} {x} WHERE {x}.g = {}{extra})",
                    c.sql, o.sql
                )
            }
            (5, Some(o)) => {
                // Correlated scalar aggregate.
                match self.col_of(scope, |t| t == Ty::Num) {
                    Some(n) => format!(
                        "{} > (SELECT AVG({x}.n) FROM {t} {x} WHERE {x}.k = {}{extra})",
                        n.sql, o.sql
                    ),
                    None => format!(
                        "(SELECT COUNT(*) FROM {t} {x} WHERE {x}.k = {}{extra}) > 1",
                        o.sql
                    ),
                }
            }
            (6, _) => {
                // Uncorrelated scalar subquery.
                let c = self
                    .col_of(scope, |t| {
                        matches!(t, Ty::Int | Ty::Big | Ty::Num | Ty::Date)
                    })
                    .unwrap_or_else(|| scope.cols[0].clone());
                let ic = inner
                    .cols
                    .iter()
                    .find(|i| i.ty == c.ty || (c.ty == Ty::Big && i.ty == Ty::Int))
                    .cloned()
                    .unwrap_or_else(|| inner.cols[1].clone());
                let agg = *self.r.pick(&["MAX", "MIN"]);
                let op = *self.r.pick(&["=", "<", ">=", "<>"]);
                format!(
                    "{} {op} (SELECT {agg}({}) FROM {t} {x}{inner_where})",
                    c.sql, ic.sql
                )
            }
            (_, o) => {
                // EXISTS inside OR (a mark join), or a count compared.
                let o = o.map(|o| o.sql).unwrap_or_else(|| "1".into());
                format!(
                    "({} OR EXISTS (SELECT 1 FROM {t} {x} WHERE {x}.k = {o}{extra}))",
                    self.pred(scope, 0)
                )
            }
        }
    }

    /// A base table, derived table or CTE reference, and what it shows.
    fn from_item(&mut self, allow_derived: bool) -> (String, Scope) {
        let kind = if allow_derived { self.r.below(10) } else { 0 };
        match kind {
            8 => {
                // Derived table: aggregated or filtered.
                let t = self.table();
                let a = self.alias("a");
                let y = self.alias("y");
                let ys = base_scope(&y);
                let (body, cols) = if self.r.chance(50) {
                    (
                        format!(
                            "SELECT {y}.k AS c0, COUNT(*) AS c1, SUM({y}.n) AS c2 FROM {t} {y}{} GROUP BY {y}.k",
                            self.opt_where(&ys)
                        ),
                        vec![("c0", Ty::Int), ("c1", Ty::Big), ("c2", Ty::Num)],
                    )
                } else {
                    (
                        format!(
                            "SELECT {y}.k AS c0, {y}.s AS c1, {y}.n AS c2, {y}.g AS c3 FROM {t} {y}{}",
                            self.opt_where(&ys)
                        ),
                        vec![("c0", Ty::Int), ("c1", Ty::Text), ("c2", Ty::Num), ("c3", Ty::Big)],
                    )
                };
                let scope = Scope {
                    cols: cols
                        .iter()
                        .map(|(c, ty)| Col {
                            sql: format!("{a}.{c}"),
                            ty: *ty,
                        })
                        .collect(),
                    base: vec![],
                };
                (format!("({body}) {a}"), scope)
            }
            9 => {
                // A CTE (new, or one defined already).
                if self.ctes.is_empty() || self.r.chance(50) {
                    let t = self.table();
                    let name = format!("w{}", self.ctes.len());
                    let y = self.alias("y");
                    let ys = base_scope(&y);
                    let (body, cols) = if self.r.chance(50) {
                        (
                            format!(
                                "SELECT {y}.g AS c0, MAX({y}.k) AS c1, COUNT(DISTINCT {y}.s) AS c2 FROM {t} {y}{} GROUP BY {y}.g",
                                self.opt_where(&ys)
                            ),
                            vec![
                                Col { sql: "c0".into(), ty: Ty::Big },
                                Col { sql: "c1".into(), ty: Ty::Int },
                                Col { sql: "c2".into(), ty: Ty::Big },
                            ],
                        )
                    } else {
                        (
                            format!(
                                "SELECT {y}.id AS c0, {y}.k AS c1, {y}.d AS c2 FROM {t} {y}{}",
                                self.opt_where(&ys)
                            ),
                            vec![
                                Col {
                                    sql: "c0".into(),
                                    ty: Ty::Big,
                                },
                                Col {
                                    sql: "c1".into(),
                                    ty: Ty::Int,
                                },
                                Col {
                                    sql: "c2".into(),
                                    ty: Ty::Date,
                                },
                            ],
                        )
                    };
                    self.ctes.push((name, body, cols));
                }
                let i = self.r.below(self.ctes.len());
                let (name, _, cols) = self.ctes[i].clone();
                let a = self.alias("a");
                let scope = Scope {
                    cols: cols
                        .iter()
                        .map(|c| Col {
                            sql: format!("{a}.{}", c.sql),
                            ty: c.ty,
                        })
                        .collect(),
                    base: vec![],
                };
                (format!("{name} {a}"), scope)
            }
            _ => {
                let t = self.table();
                let a = self.alias("a");
                let mut s = base_scope(&a);
                s.base.push(a.clone());
                (format!("{t} {a}"), s)
            }
        }
    }

    fn opt_where(&mut self, scope: &Scope) -> String {
        if self.r.chance(50) {
            format!(" WHERE {}", self.pred(scope, 1))
        } else {
            String::new()
        }
    }

    /// A FROM clause of 1..=max_tables items.
    fn from(&mut self) -> (String, Scope) {
        let n = match self.r.below(100) {
            0..=24 => 1,
            25..=59 => 2,
            60..=81 => 3,
            82..=93 => 4,
            _ => 5,
        }
        .min(self.max_tables);
        let (mut sql, mut scope) = self.from_item(true);
        for i in 1..n {
            let (item, s) = self.from_item(true);
            let jt = match self.r.below(100) {
                0..=44 => "JOIN",
                45..=64 => "LEFT JOIN",
                65..=77 => "RIGHT JOIN",
                78..=89 => "FULL JOIN",
                90..=94 if i == n - 1 && n <= 3 => "CROSS JOIN",
                _ => "JOIN",
            };
            if jt == "CROSS JOIN" {
                let _ = write!(sql, " CROSS JOIN {item}");
            } else {
                // An equality on a column of the same class (never booleans; the key
                // usually).
                let common: Vec<u8> = [0u8, 2, 3, 1]
                    .into_iter()
                    .filter(|c| {
                        scope.cols.iter().any(|x| x.ty.class() == *c)
                            && s.cols.iter().any(|x| x.ty.class() == *c)
                    })
                    .collect();
                let class = if common.contains(&0) && self.r.chance(75) {
                    Some(0)
                } else if common.is_empty() {
                    None
                } else {
                    Some(*self.r.pick(&common))
                };
                let mut on = match class {
                    Some(c) => {
                        let l = self.key_of(&scope, c);
                        let r = self.key_of(&s, c);
                        format!("{} = {}", l.sql, r.sql)
                    }
                    None => "TRUE".into(),
                };
                if self.r.chance(25) {
                    let both = Scope {
                        cols: scope.cols.iter().chain(&s.cols).cloned().collect(),
                        base: vec![],
                    };
                    let _ = write!(on, " AND {}", self.pred(&both, 0));
                }
                let _ = write!(sql, " {jt} {item} ON {on}");
            }
            scope.cols.extend(s.cols);
            scope.base.extend(s.base);
        }
        (sql, scope)
    }

    /// A column of class `class` of `scope`, a key column (`k`, `c0`, `c1`) more
    /// often than not.
    fn key_of(&mut self, scope: &Scope, class: u8) -> Col {
        let all: Vec<&Col> = scope
            .cols
            .iter()
            .filter(|c| c.ty.class() == class)
            .collect();
        let keys: Vec<&Col> = all
            .iter()
            .copied()
            .filter(|c| [".k", ".c0", ".c1"].iter().any(|k| c.sql.ends_with(k)))
            .collect();
        if !keys.is_empty() && self.r.chance(70) {
            keys[self.r.below(keys.len())].clone()
        } else {
            all[self.r.below(all.len())].clone()
        }
    }

    /// A non-aggregate expression over `scope`.
    fn expr(&mut self, scope: &Scope) -> Col {
        match self.r.below(10) {
            0 => {
                let Some(c) = self.col_of(scope, |t| matches!(t, Ty::Int | Ty::Big | Ty::Num))
                else {
                    return self.any_col(scope);
                };
                let l = self.lit(c.ty);
                Col {
                    sql: format!("{} + {l}", c.sql),
                    ty: if c.ty == Ty::Int { Ty::Big } else { c.ty },
                }
            }
            1 => {
                let c = self.any_col(scope);
                let l = self.lit(c.ty);
                Col {
                    sql: format!("COALESCE({}, {l})", c.sql),
                    ty: c.ty,
                }
            }
            2 => {
                let c = self.any_col(scope);
                let p = self.pred(scope, 0);
                let l = self.lit(c.ty);
                Col {
                    sql: format!("CASE WHEN {p} THEN {} ELSE {l} END", c.sql),
                    ty: c.ty,
                }
            }
            3 => match self.col_of(scope, |t| t == Ty::Text) {
                Some(c) => Col {
                    sql: format!("UPPER({})", c.sql),
                    ty: Ty::Text,
                },
                None => self.any_col(scope),
            },
            _ => self.any_col(scope),
        }
    }

    /// An aggregate over `scope`.
    fn agg(&mut self, scope: &Scope) -> Col {
        let c = self.any_col(scope);
        match self.r.below(9) {
            0 => Col {
                sql: "COUNT(*)".into(),
                ty: Ty::Big,
            },
            1 => Col {
                sql: format!("COUNT({})", c.sql),
                ty: Ty::Big,
            },
            2 => Col {
                sql: format!("COUNT(DISTINCT {})", c.sql),
                ty: Ty::Big,
            },
            3 | 4 => match self.col_of(scope, |t| matches!(t, Ty::Int | Ty::Big | Ty::Num)) {
                Some(n) => Col {
                    sql: format!("SUM({})", n.sql),
                    ty: if n.ty == Ty::Num { Ty::Num } else { Ty::Big },
                },
                None => Col {
                    sql: "COUNT(*)".into(),
                    ty: Ty::Big,
                },
            },
            5 => match self.col_of(scope, |t| matches!(t, Ty::Int | Ty::Big | Ty::Num)) {
                Some(n) => Col {
                    sql: format!("AVG({})", n.sql),
                    ty: if n.ty == Ty::Num { Ty::Num } else { Ty::Float },
                },
                None => Col {
                    sql: "COUNT(*)".into(),
                    ty: Ty::Big,
                },
            },
            6 => match self.col_of(scope, |t| matches!(t, Ty::Int | Ty::Big)) {
                Some(n) => Col {
                    sql: format!("SUM(DISTINCT {})", n.sql),
                    ty: Ty::Big,
                },
                None => Col {
                    sql: "COUNT(*)".into(),
                    ty: Ty::Big,
                },
            },
            7 => Col {
                sql: format!("MIN({})", c.sql),
                ty: c.ty,
            },
            _ => Col {
                sql: format!("MAX({})", c.sql),
                ty: c.ty,
            },
        }
    }

    /// A scalar subquery for a SELECT list, correlated to `scope` or not.
    fn scalar_subquery(&mut self, scope: &Scope) -> Col {
        let t = self.table();
        let x = self.alias("x");
        let o = self.col_of(scope, |t| matches!(t, Ty::Int | Ty::Big));
        match (self.r.below(4), o) {
            (0, Some(o)) => Col {
                sql: format!("(SELECT COUNT(*) FROM {t} {x} WHERE {x}.k = {})", o.sql),
                ty: Ty::Big,
            },
            (1, Some(o)) => Col {
                sql: format!("(SELECT MAX({x}.n) FROM {t} {x} WHERE {x}.g = {})", o.sql),
                ty: Ty::Num,
            },
            (2, _) => Col {
                sql: format!("(SELECT MIN({x}.s) FROM {t} {x} WHERE {x}.k > 2)"),
                ty: Ty::Text,
            },
            _ => Col {
                sql: format!(
                    "(SELECT {x}.k FROM {t} {x} WHERE {x}.id = {})",
                    self.r.range(0, 3)
                ),
                ty: Ty::Int,
            },
        }
    }

    fn where_clause(&mut self, scope: &Scope) -> String {
        let mut conj = Vec::new();
        if self.r.chance(60) {
            conj.push(self.pred(scope, 2));
        }
        if self.r.chance(30) {
            conj.push(self.subquery_pred(scope));
        }
        if conj.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conj.join(" AND "))
        }
    }

    /// ORDER BY every output column, and maybe LIMIT / OFFSET: (text, ordered).
    fn order(&mut self, width: usize) -> (String, bool) {
        if !self.r.chance(35) {
            return (String::new(), false);
        }
        let keys: Vec<String> = (1..=width)
            .map(|i| format!("{i}{}", if self.r.chance(30) { " DESC" } else { "" }))
            .collect();
        let mut s = format!(" ORDER BY {}", keys.join(", "));
        if self.r.chance(60) {
            let _ = write!(s, " LIMIT {}", self.r.range(0, 12));
            if self.r.chance(40) {
                let _ = write!(s, " OFFSET {}", self.r.range(0, 5));
            }
        }
        (s, true)
    }

    fn select_list(cols: &[Col]) -> String {
        cols.iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS c{i}", c.sql))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A SELECT of columns of the classes in `sig` (set operations).
    fn simple_select(&mut self, sig: &[Ty]) -> String {
        let (from, scope) = self.from();
        let cols: Vec<Col> = sig
            .iter()
            .map(|t| {
                self.col_of(&scope, |c| c.class() == t.class())
                    .unwrap_or(Col {
                        sql: "NULL".into(),
                        ty: *t,
                    })
            })
            .collect();
        let w = self.where_clause(&scope);
        format!("SELECT {} FROM {from}{w}", Self::select_list(&cols))
    }

    fn query(&mut self) -> Generated {
        let kind = self.r.below(100);
        let (body, width, ordered_ok) = match kind {
            // Plain SELECT, maybe DISTINCT, maybe a scalar subquery in the list.
            0..=29 => {
                let (from, scope) = self.from();
                let mut cols: Vec<Col> =
                    (0..self.r.range(1, 4)).map(|_| self.expr(&scope)).collect();
                if self.r.chance(15) {
                    cols.push(self.scalar_subquery(&scope));
                }
                let w = self.where_clause(&scope);
                let distinct = if self.r.chance(20) { "DISTINCT " } else { "" };
                (
                    format!(
                        "SELECT {distinct}{} FROM {from}{w}",
                        Self::select_list(&cols)
                    ),
                    cols.len(),
                    true,
                )
            }
            // Aggregates.
            30..=59 => {
                let (from, scope) = self.from();
                let groups: Vec<Col> = (0..self.r.range(0, 2))
                    .map(|_| self.any_col(&scope))
                    .collect();
                let mut cols = groups.clone();
                for _ in 0..self.r.range(1, 3) {
                    cols.push(self.agg(&scope));
                }
                let w = self.where_clause(&scope);
                let g = if groups.is_empty() {
                    String::new()
                } else {
                    format!(
                        " GROUP BY {}",
                        groups
                            .iter()
                            .map(|c| c.sql.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let h = if !groups.is_empty() && self.r.chance(30) {
                    format!(" HAVING COUNT(*) > {}", self.r.range(0, 2))
                } else {
                    String::new()
                };
                (
                    format!("SELECT {} FROM {from}{w}{g}{h}", Self::select_list(&cols)),
                    cols.len(),
                    true,
                )
            }
            // Set operations.
            60..=74 => {
                let sigs: [&[Ty]; 4] = [
                    &[Ty::Int],
                    &[Ty::Int, Ty::Text],
                    &[Ty::Big, Ty::Num],
                    &[Ty::Date, Ty::Int],
                ];
                let sig = *self.r.pick(&sigs);
                let op = *self.r.pick(&[
                    "UNION",
                    "UNION ALL",
                    "INTERSECT",
                    "EXCEPT",
                    "INTERSECT ALL",
                    "EXCEPT ALL",
                ]);
                let a = self.simple_select(sig);
                let b = self.simple_select(sig);
                (format!("{a} {op} {b}"), sig.len(), true)
            }
            // Window functions.
            75..=87 => {
                let (from, scope) = self.from();
                let single = scope.base.len() == 1
                    && !from.contains(" JOIN ")
                    && !from.starts_with('(')
                    && !from.starts_with('w');
                let part = self.any_col(&scope);
                let mut cols = vec![self.any_col(&scope)];
                let val = self.col_of(&scope, |t| matches!(t, Ty::Int | Ty::Big | Ty::Num));
                for _ in 0..self.r.range(1, 2) {
                    let over_order = self.any_col(&scope);
                    let c = match self.r.below(6) {
                        0 if single => Col {
                            sql: format!(
                                "ROW_NUMBER() OVER (PARTITION BY {} ORDER BY {}.id)",
                                part.sql, scope.base[0]
                            ),
                            ty: Ty::Big,
                        },
                        1 if single => Col {
                            sql: format!(
                                "LAG({}.k) OVER (ORDER BY {}.id)",
                                scope.base[0], scope.base[0]
                            ),
                            ty: Ty::Int,
                        },
                        2 => Col {
                            sql: format!("RANK() OVER (ORDER BY {})", over_order.sql),
                            ty: Ty::Big,
                        },
                        3 => Col {
                            sql: format!(
                                "DENSE_RANK() OVER (PARTITION BY {} ORDER BY {})",
                                part.sql, over_order.sql
                            ),
                            ty: Ty::Big,
                        },
                        4 => match &val {
                            Some(v) => Col {
                                sql: format!(
                                    "SUM({}) OVER (PARTITION BY {} ORDER BY {})",
                                    v.sql, part.sql, over_order.sql
                                ),
                                ty: if v.ty == Ty::Num { Ty::Num } else { Ty::Big },
                            },
                            None => Col {
                                sql: "COUNT(*) OVER ()".into(),
                                ty: Ty::Big,
                            },
                        },
                        _ => Col {
                            sql: format!("COUNT(*) OVER (PARTITION BY {})", part.sql),
                            ty: Ty::Big,
                        },
                    };
                    cols.push(c);
                }
                let w = self.where_clause(&scope);
                (
                    format!("SELECT {} FROM {from}{w}", Self::select_list(&cols)),
                    cols.len(),
                    true,
                )
            }
            // Grouped derived table joined back (a two-level aggregate).
            _ => {
                let (from, scope) = self.from();
                let key = self
                    .col_of(&scope, |t| matches!(t, Ty::Int | Ty::Big))
                    .unwrap_or_else(|| scope.cols[0].clone());
                let w = self.where_clause(&scope);
                let a = self.alias("a");
                let inner = format!(
                    "SELECT {} AS c0, COUNT(*) AS c1 FROM {from}{w} GROUP BY {}",
                    key.sql, key.sql
                );
                (
                    format!("SELECT {a}.c1 AS c0, COUNT(*) AS c1, MIN({a}.c0) AS c2 FROM ({inner}) {a} GROUP BY {a}.c1"),
                    3,
                    true,
                )
            }
        };
        let (order, ordered) = if ordered_ok {
            self.order(width)
        } else {
            (String::new(), false)
        };
        let with = if self.ctes.is_empty() {
            String::new()
        } else {
            format!(
                "WITH {} ",
                self.ctes
                    .iter()
                    .map(|(n, b, _)| format!("{n} AS ({b})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let sql = if order.is_empty() || !kind_is_setop(kind) {
            format!("{with}{body}{order}")
        } else {
            format!("{with}SELECT * FROM ({body}) u{order}")
        };
        Generated {
            sql,
            ordered,
            aliases: self.aliases.clone(),
        }
    }
}

fn kind_is_setop(kind: usize) -> bool {
    (60..=74).contains(&kind)
}

fn base_scope(a: &str) -> Scope {
    Scope {
        cols: COLUMNS
            .iter()
            .map(|(n, ty)| Col {
                sql: format!("{a}.{n}"),
                ty: *ty,
            })
            .collect(),
        base: vec![],
    }
}

// ------------------------------------------------------------------ running

/// The cluster shapes every query may run on: (nodes, Tstores per node).
const SHAPES: [(usize, usize); 4] = [(1, 1), (1, 2), (2, 2), (3, 2)];

#[derive(Debug, Default)]
struct Tally {
    queries: usize,
    runs: usize,
    both_failed: usize,
    rows: usize,
    mismatches: Vec<String>,
}

/// Runs `g` on the reference and on `configs` cluster configurations; mismatches go
/// to `tally`.
fn check(
    planner: &Planner,
    db: &Db,
    ctx: &SessionContext,
    g: &Generated,
    configs: &[DistOptions],
    seed: u64,
    tally: &mut Tally,
) {
    tally.queries += 1;
    if std::env::var_os("SMRDB_DIFF_VERBOSE").is_some() {
        println!("{}", g.sql);
    }
    let want = reference(ctx, &g.sql);
    for opts in configs {
        tally.runs += 1;
        let got = run(planner, db, &g.sql, opts);
        let shape = format!(
            "{}x{} pivot={:?} overlap={} stats={}",
            opts.nodes, opts.tstores_per_node, opts.pivot, opts.overlap, db.with_stats
        );
        let report =
            |what: String| format!("case seed {seed}, {shape}\n  SQL: {}\n  {what}", g.sql);
        match (&want, &got) {
            (Err(_), Err(_)) => tally.both_failed += 1,
            (Ok(w), Err(e)) => tally.mismatches.push(report(format!(
                "DataFusion answered {} rows; the distributed run failed: {} {e}",
                w.rows(),
                e.sqlstate()
            ))),
            (Err(e), Ok(a)) => tally.mismatches.push(report(format!(
                "DataFusion failed ({e}); the distributed run answered {} rows",
                a.rows()
            ))),
            (Ok(w), Ok(a)) => {
                let (mut wr, mut ar) = (render(&w.batches), render(&a.batches));
                tally.rows += ar.len();
                if !g.ordered {
                    wr.sort();
                    ar.sort();
                }
                if wr != ar {
                    let missing: Vec<&String> =
                        wr.iter().filter(|r| !ar.contains(r)).take(5).collect();
                    let extra: Vec<&String> =
                        ar.iter().filter(|r| !wr.contains(r)).take(5).collect();
                    tally.mismatches.push(report(format!(
                        "expected {} rows, got {}{}; missing {missing:?}; extra {extra:?}\n  expected head {:?}\n  got head {:?}",
                        wr.len(),
                        ar.len(),
                        if g.ordered { " (ordered)" } else { "" },
                        &wr[..wr.len().min(6)],
                        &ar[..ar.len().min(6)],
                    )));
                }
            }
        }
    }
}

/// `count` random configurations: shapes, a forced pivot sometimes, overlap on or
/// off.
fn configs(r: &mut Rng, aliases: &[String], count: usize) -> Vec<DistOptions> {
    (0..count)
        .map(|_| {
            let (nodes, tstores_per_node) = *r.pick(&SHAPES);
            DistOptions {
                nodes,
                tstores_per_node,
                broadcast: if r.chance(80) {
                    Broadcast::PerNode
                } else {
                    Broadcast::PerTstore
                },
                pivot: (r.chance(30) && !aliases.is_empty()).then(|| r.pick(aliases).clone()),
                overlap: r.chance(70),
                ..DistOptions::default()
            }
        })
        .collect()
}

/// Random tables `t0..t4` for one case.
fn random_db(r: &mut Rng) -> Db {
    let mut db = Db::new();
    db.with_stats = r.chance(85);
    if r.chance(30) {
        db.chunk_rows = *r.pick(&[1, 3, 7, 64]);
    }
    let nulls = *r.pick(&[0, 5, 15, 30]);
    for i in 0..5 {
        let rows = *r.pick(&[0, 1, 2, 3, 5, 8, 13, 20, 30, 40, 60]);
        let keys = (*r.pick(&[3, 8, 15, 30])).max(1);
        let batch = *r.pick(&[1, 4, 1000]);
        let data = table(r, rows, keys, nulls, batch);
        db.add_table(&format!("t{i}"), schema(), data);
    }
    db
}

fn finish(name: &str, tally: &Tally, t0: Instant) {
    println!(
        "{name}: {} queries, {} distributed runs, {} rows compared, {} failed on both sides, {:.1} s",
        tally.queries,
        tally.runs,
        tally.rows,
        tally.both_failed,
        t0.elapsed().as_secs_f64()
    );
    let ignore: Vec<String> = std::env::var("SMRDB_DIFF_IGNORE")
        .map(|v| {
            v.split(';')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    let (ignored, failed): (Vec<&String>, Vec<&String>) = tally
        .mismatches
        .iter()
        .partition(|m| ignore.iter().any(|i| m.contains(i.as_str())));
    if !ignored.is_empty() {
        println!("{} mismatches ignored (SMRDB_DIFF_IGNORE)", ignored.len());
    }
    if !failed.is_empty() {
        for m in &failed {
            println!("MISMATCH {m}\n");
        }
        panic!("{name}: {} mismatches (see above)", failed.len());
    }
}

#[test]
fn random_queries_match_datafusion() {
    let seed0 = env_u64("SMRDB_DIFF_SEED").unwrap_or(0x5EED_0001);
    let cases = env_u64("SMRDB_DIFF_CASES").unwrap_or(40);
    let per_case = env_u64("SMRDB_DIFF_QUERIES").unwrap_or(15) as usize;
    println!("SMRDB_DIFF_SEED={seed0} SMRDB_DIFF_CASES={cases} SMRDB_DIFF_QUERIES={per_case}");
    let planner = Planner::new().unwrap();
    if let Ok(sql) = std::env::var("SMRDB_DIFF_SQL") {
        return repro(&planner, seed0, &sql);
    }
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for c in 0..cases {
        let seed = seed0.wrapping_add(c);
        let mut r = Rng::new(seed);
        let db = random_db(&mut r);
        let ctx = db.reference_context();
        for _ in 0..per_case {
            let mut g = Gen {
                r: &mut r,
                tables: (0..5).map(|i| format!("t{i}")).collect(),
                next: 0,
                ctes: Vec::new(),
                aliases: Vec::new(),
                max_tables: 5,
            };
            let q = g.query();
            let cfg = configs(&mut r, &q.aliases, 2);
            check(&planner, &db, &ctx, &q, &cfg, seed, &mut tally);
        }
    }
    finish("random queries", &tally, t0);
}

/// `sql` on the tables of case `seed`, every shape: both answers and the plan.
fn repro(planner: &Planner, seed: u64, sql: &str) {
    let mut r = Rng::new(seed);
    let db = random_db(&mut r);
    for (name, t) in db.tables() {
        println!("-- {name}: {} rows", t.rows());
        for row in render(&t.batches) {
            println!("--   {row}");
        }
    }
    let want = reference(&db.reference_context(), sql).map(|a| render(&a.batches));
    println!("DataFusion: {want:?}");
    for &(nodes, tstores_per_node) in &SHAPES {
        let opts = DistOptions {
            nodes,
            tstores_per_node,
            pivot: std::env::var("SMRDB_DIFF_PIVOT").ok(),
            ..DistOptions::default()
        };
        let got = run(planner, &db, sql, &opts).map(|a| render(&a.batches));
        println!("{nodes}x{tstores_per_node}: {got:?}");
        if let Ok((d, subs)) = common::dist_of(planner, &db, sql, &opts) {
            for l in smrdb_planner::explain_lines(&d, &subs, None) {
                println!("    {l}");
            }
        }
    }
}

/// Tables whose slices hold around 8192 rows (a DataFusion batch) and chunk sizes
/// that split them unevenly: scans, joins, aggregates, sorts and windows across
/// batch boundaries.
#[test]
fn sizes_around_batch_boundaries() {
    let seed = env_u64("SMRDB_DIFF_SEED").unwrap_or(0x5EED_0002);
    println!("SMRDB_DIFF_SEED={seed}");
    let planner = Planner::new().unwrap();
    let t0 = Instant::now();
    let mut tally = Tally::default();
    let mut r = Rng::new(seed);
    for (rows, shape, chunk) in [
        (8191, (1, 1), 65536),
        (8192, (1, 1), 65536),
        (8193, (1, 1), 5000),
        (16384, (1, 2), 65536),
        (16385, (1, 2), 8192),
        (2 * 8192 * 2 + 3, (2, 2), 8191),
    ] {
        let mut db = Db::new();
        db.chunk_rows = chunk;
        db.add_table("big", schema(), table(&mut r, rows, rows as i64, 10, 3000));
        db.add_table("small", schema(), table(&mut r, 300, rows as i64, 10, 300));
        let ctx = db.reference_context();
        let queries = [
            "SELECT COUNT(*) AS c0, COUNT(k) AS c1, SUM(n) AS c2, MIN(s) AS c3, MAX(d) AS c4 FROM big",
            "SELECT g AS c0, COUNT(*) AS c1, COUNT(DISTINCT k) AS c2, AVG(n) AS c3 FROM big GROUP BY g",
            "SELECT b.id AS c0, s.id AS c1 FROM big b JOIN small s ON b.k = s.k",
            "SELECT b.id AS c0, s.id AS c1 FROM big b LEFT JOIN small s ON b.k = s.k WHERE b.id % 97 = 0",
            "SELECT COUNT(*) AS c0 FROM big b WHERE NOT EXISTS (SELECT 1 FROM small s WHERE s.k = b.k)",
            "SELECT COUNT(*) AS c0 FROM big b1 JOIN big b2 ON b1.id = b2.id",
            "SELECT id AS c0, k AS c1 FROM big ORDER BY 2, 1 LIMIT 20 OFFSET 8185",
            "SELECT id AS c0, n AS c1 FROM big ORDER BY 2 DESC, 1 LIMIT 10",
            "SELECT id AS c0, ROW_NUMBER() OVER (PARTITION BY g ORDER BY id) AS c1 FROM big",
            "SELECT DISTINCT k AS c0 FROM big",
            "SELECT k AS c0 FROM big UNION SELECT k FROM small",
            "SELECT k AS c0 FROM big EXCEPT ALL SELECT k FROM small",
        ];
        for sql in queries {
            let ordered = sql.contains("ORDER BY 2, 1") || sql.contains("ORDER BY 2 DESC, 1");
            let g = Generated {
                sql: sql.to_string(),
                ordered,
                aliases: vec![],
            };
            let cfg = [DistOptions {
                nodes: shape.0,
                tstores_per_node: shape.1,
                ..DistOptions::default()
            }];
            check(&planner, &db, &ctx, &g, &cfg, seed, &mut tally);
        }
    }
    finish("batch boundaries", &tally, t0);
}

/// Every query shape on empty tables and one-row tables, on every cluster shape.
#[test]
fn empty_and_single_row_tables() {
    let seed = env_u64("SMRDB_DIFF_SEED").unwrap_or(0x5EED_0003);
    println!("SMRDB_DIFF_SEED={seed}");
    let planner = Planner::new().unwrap();
    let t0 = Instant::now();
    let mut tally = Tally::default();
    for rows in [0usize, 1] {
        let mut r = Rng::new(seed + rows as u64);
        let mut db = Db::new();
        for i in 0..5 {
            db.add_table(&format!("t{i}"), schema(), table(&mut r, rows, 2, 0, 10));
        }
        let ctx = db.reference_context();
        for _ in 0..40 {
            let mut g = Gen {
                r: &mut r,
                tables: (0..5).map(|i| format!("t{i}")).collect(),
                next: 0,
                ctes: Vec::new(),
                aliases: Vec::new(),
                max_tables: 4,
            };
            let q = g.query();
            let cfg: Vec<DistOptions> = SHAPES
                .iter()
                .map(|&(nodes, tstores_per_node)| DistOptions {
                    nodes,
                    tstores_per_node,
                    ..DistOptions::default()
                })
                .collect();
            check(&planner, &db, &ctx, &q, &cfg, seed, &mut tally);
        }
    }
    finish("empty and one-row tables", &tally, t0);
}
