//! Cardinality estimates over logical plans, from the catalog's column statistics:
//! rows of a subtree, distinct values of a column, selectivity of a predicate. Used
//! to order joins ([`crate::reorder`]); rough on purpose (the classic System R
//! assumptions: independence, uniformity within [min, max], containment of join
//! keys).

use datafusion::common::stats::Precision;
use datafusion::common::{Column, ScalarValue, Statistics};
use datafusion::datasource::DefaultTableSource;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator};

use crate::catalog::as_slice_table;

/// Rows assumed for a relation nothing is known about.
const UNKNOWN_ROWS: f64 = 1000.0;
/// Selectivity of a predicate nothing is known about.
const UNKNOWN_SELECTIVITY: f64 = 0.25;

fn precision(p: &Precision<usize>) -> Option<f64> {
    match p {
        Precision::Exact(n) | Precision::Inexact(n) => Some(*n as f64),
        Precision::Absent => None,
    }
}

/// The statistics of a table scan's table (all its columns), if known.
fn scan_stats(plan: &LogicalPlan) -> Option<(Statistics, &datafusion::logical_expr::TableScan)> {
    let LogicalPlan::TableScan(scan) = plan else {
        return None;
    };
    let src = scan.source.downcast_ref::<DefaultTableSource>()?;
    let table = as_slice_table(&src.table_provider)?;
    let stats = datafusion::catalog::TableProvider::statistics(table)?;
    Some((stats, scan))
}

/// A numeric position of a scalar on a line (for range selectivity).
fn as_f64(v: &ScalarValue) -> Option<f64> {
    use ScalarValue as S;
    Some(match v {
        S::Int8(Some(x)) => *x as f64,
        S::Int16(Some(x)) => *x as f64,
        S::Int32(Some(x)) | S::Date32(Some(x)) => *x as f64,
        S::Int64(Some(x)) | S::TimestampMicrosecond(Some(x), _) => *x as f64,
        S::UInt32(Some(x)) => *x as f64,
        S::UInt64(Some(x)) => *x as f64,
        S::Float32(Some(x)) => *x as f64,
        S::Float64(Some(x)) => *x,
        S::Decimal128(Some(x), _, s) => *x as f64 / 10f64.powi(i32::from(*s)),
        _ => return None,
    })
}

/// What is known of one column of a relation.
#[derive(Debug, Clone, Default)]
pub struct ColumnEstimate {
    /// Distinct non-NULL values.
    pub ndv: Option<f64>,
    /// Smallest and largest values as numbers (numeric and date columns).
    pub range: Option<(f64, f64)>,
    /// Fraction of NULLs.
    pub null_fraction: f64,
}

/// Estimates for `column` of `plan` (whose estimated rows, [`rows`], are `rows`: the
/// distinct count is capped by them), traced to a table scan through projections,
/// aliases, filters and joins.
pub fn column(plan: &LogicalPlan, column: &Column, rows: f64) -> ColumnEstimate {
    let mut e = column_inner(plan, column).unwrap_or_default();
    e.ndv = e.ndv.map(|n| n.min(rows).max(1.0));
    e
}

/// [`column`] without the cap by `plan`'s estimated rows.
fn uncapped(plan: &LogicalPlan, column: &Column) -> ColumnEstimate {
    column_inner(plan, column).unwrap_or_default()
}

fn column_inner(plan: &LogicalPlan, col: &Column) -> Option<ColumnEstimate> {
    match plan {
        LogicalPlan::TableScan(_) => {
            let (stats, scan) = scan_stats(plan)?;
            let schema = scan.source.schema();
            let i = schema.index_of(&col.name).ok()?;
            let c = stats.column_statistics.get(i)?;
            let rows = precision(&stats.num_rows).unwrap_or(UNKNOWN_ROWS).max(1.0);
            let range = match (&c.min_value, &c.max_value) {
                (
                    Precision::Exact(a) | Precision::Inexact(a),
                    Precision::Exact(b) | Precision::Inexact(b),
                ) => Some((as_f64(a)?, as_f64(b)?)),
                _ => None,
            };
            Some(ColumnEstimate {
                ndv: precision(&c.distinct_count),
                range,
                null_fraction: precision(&c.null_count).unwrap_or(0.0) / rows,
            })
        }
        LogicalPlan::SubqueryAlias(a) => {
            column_inner(&a.input, &Column::new_unqualified(col.name.clone()))
        }
        LogicalPlan::Projection(p) => {
            let i = p.schema.index_of_column(col).ok()?;
            match p.expr.get(i)? {
                Expr::Column(c) => column_inner(&p.input, c),
                Expr::Alias(a) => match a.expr.as_ref() {
                    Expr::Column(c) => column_inner(&p.input, c),
                    _ => None,
                },
                _ => None,
            }
        }
        LogicalPlan::Filter(f) => column_inner(&f.input, col),
        LogicalPlan::Sort(s) => column_inner(&s.input, col),
        LogicalPlan::Limit(l) => column_inner(&l.input, col),
        LogicalPlan::Join(j) => {
            if j.left.schema().has_column(col) {
                column_inner(&j.left, col)
            } else {
                column_inner(&j.right, col)
            }
        }
        LogicalPlan::Aggregate(a) => {
            let c = a.input.schema().has_column(col).then(|| col.clone())?;
            column_inner(&a.input, &c)
        }
        _ => None,
    }
}

/// Estimated rows of `plan`'s output.
pub fn rows(plan: &LogicalPlan) -> f64 {
    let r = match plan {
        LogicalPlan::TableScan(scan) => {
            let base = scan_stats(plan)
                .and_then(|(s, _)| precision(&s.num_rows))
                .unwrap_or(UNKNOWN_ROWS);
            let sel: f64 = scan.filters.iter().map(|f| selectivity(plan, f)).product();
            let r = base * sel;
            match scan.fetch {
                Some(n) => r.min(n as f64),
                None => r,
            }
        }
        LogicalPlan::Filter(f) => rows(&f.input) * selectivity(&f.input, &f.predicate),
        LogicalPlan::Projection(p) => rows(&p.input),
        LogicalPlan::SubqueryAlias(a) => rows(&a.input),
        LogicalPlan::Sort(s) => {
            let r = rows(&s.input);
            s.fetch.map(|f| r.min(f as f64)).unwrap_or(r)
        }
        LogicalPlan::Limit(l) => {
            let r = rows(&l.input);
            match l.fetch.as_deref() {
                Some(Expr::Literal(ScalarValue::Int64(Some(n)), _)) => r.min(*n as f64),
                _ => r,
            }
        }
        LogicalPlan::Aggregate(a) => {
            let input = rows(&a.input);
            if a.group_expr.is_empty() {
                1.0
            } else {
                let mut groups = 1.0f64;
                for g in &a.group_expr {
                    let ndv = match g {
                        Expr::Column(c) => column(&a.input, c, input).ndv,
                        _ => None,
                    };
                    groups *= ndv.unwrap_or(input / 10.0).max(1.0);
                }
                groups.min(input)
            }
        }
        LogicalPlan::Distinct(d) => rows(d.input()) / 2.0,
        LogicalPlan::Union(u) => u.inputs.iter().map(|i| rows(i)).sum(),
        LogicalPlan::Join(j) => {
            let l = rows(&j.left);
            let r = rows(&j.right);
            let inner = join_rows(&j.left, &j.right, &j.on, l, r)
                * j.filter
                    .as_ref()
                    .map(|f| selectivity(plan, f))
                    .unwrap_or(1.0);
            match j.join_type {
                JoinType::Inner => inner,
                JoinType::Left => inner.max(l),
                JoinType::Right => inner.max(r),
                JoinType::Full => inner.max(l).max(r),
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => l * 0.5,
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => r * 0.5,
            }
        }
        LogicalPlan::Values(v) => v.values.len() as f64,
        LogicalPlan::EmptyRelation(e) => {
            if e.produce_one_row {
                1.0
            } else {
                0.0
            }
        }
        LogicalPlan::Window(w) => rows(&w.input),
        other => other
            .inputs()
            .first()
            .map(|i| rows(i))
            .unwrap_or(UNKNOWN_ROWS),
    };
    r.max(1.0)
}

/// Estimated rows of an equi-join of `l` (`lrows`) and `r` (`rrows`) on `on`: the
/// product divided by the larger distinct count of the most selective key.
pub fn join_rows(
    l: &LogicalPlan,
    r: &LogicalPlan,
    on: &[(Expr, Expr)],
    lrows: f64,
    rrows: f64,
) -> f64 {
    let mut div = 1.0f64;
    for (a, b) in on {
        let ndv = |p: &LogicalPlan, e: &Expr, n: f64| match e {
            Expr::Column(c) => column(p, c, n).ndv.unwrap_or(n),
            _ => n,
        };
        // Either side of the pair may belong to either input.
        let in_left = |e: &Expr| e.column_refs().iter().all(|c| l.schema().has_column(c));
        let (na, nb) = if in_left(a) {
            (ndv(l, a, lrows), ndv(r, b, rrows))
        } else {
            (ndv(r, a, rrows), ndv(l, b, lrows))
        };
        div = div.max(na.max(nb));
    }
    if on.is_empty() {
        lrows * rrows
    } else {
        (lrows * rrows / div.max(1.0)).max(1.0)
    }
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        _ => None,
    }
}

fn col_of(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        Expr::Cast(c) => col_of(&c.expr),
        Expr::TryCast(c) => col_of(&c.expr),
        _ => None,
    }
}

/// Fraction of `plan`'s rows for which `e` holds.
///
/// Reads column estimates uncapped by `plan`'s rows: `rows(plan)` may itself ask for
/// this selectivity (a join's filter, a scan's pushed filters).

pub fn selectivity(plan: &LogicalPlan, e: &Expr) -> f64 {
    let s = match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => selectivity(plan, left) * selectivity(plan, right),
            Operator::Or => {
                let (a, b) = (selectivity(plan, left), selectivity(plan, right));
                a + b - a * b
            }
            Operator::Eq | Operator::NotEq => {
                let eq = match (col_of(left), col_of(right), literal(left), literal(right)) {
                    (Some(c), _, _, Some(_)) | (_, Some(c), Some(_), _) => uncapped(plan, c)
                        .ndv
                        .map(|n| 1.0 / n.max(1.0))
                        .unwrap_or(0.1),
                    (Some(a), Some(b), _, _) => {
                        let n = uncapped(plan, a)
                            .ndv
                            .unwrap_or(10.0)
                            .max(uncapped(plan, b).ndv.unwrap_or(10.0));
                        1.0 / n.max(1.0)
                    }
                    _ => 0.1,
                };
                if *op == Operator::Eq {
                    eq
                } else {
                    1.0 - eq
                }
            }
            Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                range_selectivity(plan, left, *op, right).unwrap_or(1.0 / 3.0)
            }
            Operator::LikeMatch | Operator::ILikeMatch => 0.1,
            Operator::NotLikeMatch | Operator::NotILikeMatch => 0.9,
            _ => UNKNOWN_SELECTIVITY,
        },
        Expr::Not(x) => 1.0 - selectivity(plan, x),
        Expr::Like(l) => {
            if l.negated {
                0.9
            } else {
                0.1
            }
        }
        Expr::Between(b) => {
            let lo = range_selectivity(plan, &b.expr, Operator::GtEq, &b.low);
            let hi = range_selectivity(plan, &b.expr, Operator::LtEq, &b.high);
            let s = match (lo, hi) {
                (Some(a), Some(b)) => (a + b - 1.0).max(0.0),
                _ => 0.25,
            };
            if b.negated {
                1.0 - s
            } else {
                s
            }
        }
        Expr::InList(l) => {
            let one = match col_of(&l.expr) {
                Some(c) => uncapped(plan, c)
                    .ndv
                    .map(|n| 1.0 / n.max(1.0))
                    .unwrap_or(0.1),
                None => 0.1,
            };
            let s = (one * l.list.len() as f64).min(1.0);
            if l.negated {
                1.0 - s
            } else {
                s
            }
        }
        Expr::IsNull(x) => col_of(x)
            .map(|c| uncapped(plan, c).null_fraction)
            .unwrap_or(0.1),
        Expr::IsNotNull(x) => col_of(x)
            .map(|c| 1.0 - uncapped(plan, c).null_fraction)
            .unwrap_or(0.9),
        Expr::Literal(ScalarValue::Boolean(Some(true)), _) => 1.0,
        Expr::Literal(ScalarValue::Boolean(Some(false)), _) => 0.0,
        _ => UNKNOWN_SELECTIVITY,
    };
    s.clamp(0.0, 1.0)
}

/// `col op literal` (either order) from the column's range; `None` when unknown.
fn range_selectivity(plan: &LogicalPlan, left: &Expr, op: Operator, right: &Expr) -> Option<f64> {
    let (c, v, op) = match (col_of(left), literal(right), col_of(right), literal(left)) {
        (Some(c), Some(v), _, _) => (c, v, op),
        (_, _, Some(c), Some(v)) => (c, v, op.swap()?),
        _ => return None,
    };
    let (lo, hi) = uncapped(plan, c).range?;
    let x = as_f64(v)?;
    if hi <= lo {
        return Some(0.5);
    }
    let below = ((x - lo) / (hi - lo)).clamp(0.0, 1.0);
    Some(match op {
        Operator::Lt | Operator::LtEq => below,
        Operator::Gt | Operator::GtEq => 1.0 - below,
        _ => return None,
    })
}
