//! Multi-set queries: from the bound conditions of a join and the SELECT machinery's
//! plan over the full scope to a [`JoinSpec`] and a fragment over the combined row.
//!
//! Steps ([`plan_join`]):
//!
//! 1. Every `ON` condition and `WHERE` (bound over the *full scope*: all columns of
//!    all tables in FROM order) is split into conjuncts. A conjunct over one table is
//!    *pushed* into that table's [`JoinInput::filter`]; `x = y` where `x` uses only
//!    columns of one table and `y` only of another is an *equi-join key*; anything
//!    else over several tables is a *residual*, evaluated in the earliest
//!    [`JoinStep::filter`] where all its tables are joined. A conjunct without
//!    columns (`WHERE false`) is pushed into the pivot's filter; `TRUE` is dropped.
//! 2. Each input keeps only the columns the query still needs after its pushed
//!    filter: keys, residuals, and whatever the fragment (outputs, group keys,
//!    aggregate arguments, hidden sort keys) uses.
//! 3. Estimates: `Catalog::row_count` ([`DEFAULT_ROWS`] when unknown) times a
//!    selectivity guess per pushed conjunct ([`SEL_EQ`] for an equality,
//!    [`SEL_OTHER`] otherwise), times the bytes of the kept columns ([`type_width`]).
//! 4. Pivot: the table whose join table would be largest (it stays in place), unless
//!    the session setting `smrdb.pivot` names one (a FROM alias or table name).
//! 5. Join order: each next join table is one with a key to what is already joined
//!    (a cross product only when none has), the smallest first, and the largest join
//!    table last (it is the one streamed) unless that would need a cross product.
//! 6. Remapping. The *combined row* (the compact row) is the pivot's kept columns,
//!    then each join table's kept columns in `join_tables` order; within a table,
//!    kept columns are in table column order. Every full-scope column index `c` is
//!    mapped to its position in the combined row, and:
//!    * pushed filters are over the table's own columns (`c - table offset in FROM`);
//!    * step `i`'s `left_keys` and `filter` are over the combined row (they only
//!      use the pivot's and earlier join tables' columns, a prefix of it);
//!    * step `i`'s `right_keys` are over `join_tables[i]`'s kept columns (the
//!      combined index minus where that table's block starts);
//!    * the fragment (filter, projection, partial aggregate) and the finish's
//!      partial aggregate are over the combined row; [`crate::Finish::table_schema`]
//!      is the combined row's schema (`alias.column`, all nullable).
//!
//!    Both sides of a key have the same type: the narrower side of a numeric pair is
//!    cast to the common type (INT = BIGINT compares as BIGINT).

use std::collections::BTreeSet;

use smrdb_tstore::expr::BinaryOp;
use smrdb_tstore::{
    AggCall, ColumnDef, DataType, Expr, JoinInput, JoinSpec, JoinStep, PartialAgg, TableSchema,
    Value,
};

use crate::bind::{children, map_children, Scope};
use crate::{Catalog, PlanError, QueryPlan};

/// Rows assumed for a table without row-count statistics.
pub(crate) const DEFAULT_ROWS: u64 = 1000;
/// Selectivity guess of a pushed equality.
pub(crate) const SEL_EQ: f64 = 0.1;
/// Selectivity guess of any other pushed predicate.
pub(crate) const SEL_OTHER: f64 = 0.33;
/// The session setting that forces the pivot.
pub(crate) const PIVOT_SETTING: &str = "smrdb.pivot";
/// The session setting that turns compare-while-receiving off (`off`) for the
/// overlap experiment; `on` (the default) streams.
pub const OVERLAP_SETTING: &str = "smrdb.overlap";

/// The value of a boolean setting as PostgreSQL spells booleans.
///
/// # Errors
/// 22023 for anything else.
pub fn parse_bool_setting(name: &str, value: &str) -> Result<bool, PlanError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Ok(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Ok(false),
        _ => Err(PlanError::InvalidReference {
            code: "22023",
            msg: format!("parameter \"{name}\" requires a Boolean value, not '{value}'"),
        }),
    }
}

/// Bytes per value of a type in a join table (a guess for TEXT).
pub(crate) fn type_width(t: DataType) -> u64 {
    match t {
        DataType::BigInt | DataType::Double => 8,
        DataType::Int | DataType::Date => 4,
        DataType::Boolean => 1,
        DataType::Text => 16,
    }
}

/// Splits an AND tree into its conjuncts (dropping literal TRUE).
fn conjuncts(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::Binary {
            op: BinaryOp::And,
            left,
            right,
        } => {
            conjuncts(*left, out);
            conjuncts(*right, out);
        }
        Expr::Literal(Value::Bool(true)) => {}
        e => out.push(e),
    }
}

/// `a AND b AND ...`, or None.
pub(crate) fn and_all(es: Vec<Expr>) -> Option<Expr> {
    es.into_iter().reduce(|a, b| a.and(b))
}

/// Adds every column index `e` refers to.
pub(crate) fn columns_of(e: &Expr, out: &mut BTreeSet<usize>) {
    if let Expr::Column(i) = e {
        out.insert(*i);
    }
    for c in children(e) {
        columns_of(c, out);
    }
}

/// Rewrites every column index with `f`.
pub(crate) fn remap(
    e: Expr,
    f: &dyn Fn(usize) -> Result<usize, PlanError>,
) -> Result<Expr, PlanError> {
    match e {
        Expr::Column(i) => Ok(Expr::Column(f(i)?)),
        other => map_children(other, &mut |x| remap(x, f)),
    }
}

fn remap_agg(
    a: PartialAgg,
    f: &dyn Fn(usize) -> Result<usize, PlanError>,
) -> Result<PartialAgg, PlanError> {
    Ok(PartialAgg {
        group_by: a
            .group_by
            .into_iter()
            .map(|e| remap(e, f))
            .collect::<Result<_, _>>()?,
        aggs: a
            .aggs
            .into_iter()
            .map(|c| {
                Ok(AggCall {
                    func: c.func,
                    arg: c.arg.map(|e| remap(e, f)).transpose()?,
                })
            })
            .collect::<Result<_, PlanError>>()?,
    })
}

/// Columns (full scope) a fragment reads.
fn fragment_columns(f: &smrdb_tstore::Fragment, out: &mut BTreeSet<usize>) {
    if let Some(e) = &f.filter {
        columns_of(e, out);
    }
    for e in &f.projection {
        columns_of(e, out);
    }
    if let Some(a) = &f.partial_agg {
        for e in &a.group_by {
            columns_of(e, out);
        }
        for c in &a.aggs {
            if let Some(e) = &c.arg {
                columns_of(e, out);
            }
        }
    }
}

/// An equi-join key between two tables: `left` uses only columns of table `a`,
/// `right` only of table `b` (full scope indices), both of the same type.
#[derive(Debug)]
struct EquiKey {
    a: usize,
    left: Expr,
    b: usize,
    right: Expr,
}

/// What the planner guesses about one input.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    /// `Catalog::row_count`, when known.
    known: Option<u64>,
    /// Rows after the pushed filter.
    rows: u64,
    /// Bytes of the kept columns of one row.
    row_bytes: u64,
}

impl Estimate {
    fn bytes(&self) -> u64 {
        self.rows.saturating_mul(self.row_bytes)
    }
    /// Ordering key: the larger join table is the larger (bytes, then rows).
    fn size(&self) -> (u64, u64) {
        (self.bytes(), self.rows)
    }
}

/// Selectivity guess of a pushed conjunct.
fn selectivity(e: &Expr) -> f64 {
    match e {
        Expr::Binary {
            op: BinaryOp::Eq, ..
        } => SEL_EQ,
        _ => SEL_OTHER,
    }
}

/// The tables (scope indices) an expression refers to.
fn tables_of(scope: &Scope, e: &Expr) -> BTreeSet<usize> {
    let mut cols = BTreeSet::new();
    columns_of(e, &mut cols);
    cols.into_iter().map(|c| scope.table_of(c)).collect()
}

/// `l = r` between expressions of two different tables, with both sides brought to
/// a common type; None if `e` is not one.
fn equi_key(scope: &Scope, e: &Expr) -> Result<Option<EquiKey>, PlanError> {
    let Expr::Binary {
        op: BinaryOp::Eq,
        left,
        right,
    } = e
    else {
        return Ok(None);
    };
    let (tl, tr) = (tables_of(scope, left), tables_of(scope, right));
    let (Some(&a), Some(&b)) = (tl.first(), tr.first()) else {
        return Ok(None);
    };
    if tl.len() != 1 || tr.len() != 1 || a == b {
        return Ok(None);
    }
    let lt = left.data_type(&scope.schema)?;
    let rt = right.data_type(&scope.schema)?;
    let (mut l, mut r) = (left.as_ref().clone(), right.as_ref().clone());
    if lt != rt {
        let Some(common) = DataType::numeric_common(lt, rt) else {
            return Ok(None);
        };
        if lt != common {
            l = l.cast(common);
        }
        if rt != common {
            r = r.cast(common);
        }
    }
    Ok(Some(EquiKey {
        a,
        left: l,
        b,
        right: r,
    }))
}

/// How the query calls table `t` of the scope: `table` or `table alias`.
fn label(scope: &Scope, t: usize) -> String {
    let st = &scope.tables[t];
    match &st.alias {
        Some(a) if *a != st.table => format!("{} {a}", st.table),
        _ => st.table.clone(),
    }
}

/// The table `smrdb.pivot = value` names: an alias / table name as the query calls
/// it, else the table name of exactly one entry.
fn forced_pivot(scope: &Scope, value: &str) -> Result<usize, PlanError> {
    let lower = value.to_lowercase();
    let by = |f: &dyn Fn(&crate::bind::ScopeTable) -> bool| -> Vec<usize> {
        (0..scope.tables.len())
            .filter(|&t| f(&scope.tables[t]))
            .collect()
    };
    for found in [
        by(&|t| t.name() == value),
        by(&|t| t.name() == lower),
        by(&|t| t.table == value || t.table == lower),
    ] {
        match found.as_slice() {
            [] => continue,
            [t] => return Ok(*t),
            _ => {
                return Err(PlanError::InvalidReference {
                    code: "22023",
                    msg: format!(
                        "{PIVOT_SETTING} = '{value}' is ambiguous in this query: set it to \
                         one of the aliases {}",
                        found
                            .iter()
                            .map(|&t| scope.tables[t].name().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
            }
        }
    }
    Err(PlanError::InvalidReference {
        code: "22023",
        msg: format!(
            "{PIVOT_SETTING} = '{value}' names no table of this query (its tables: {}; \
             SET {PIVOT_SETTING} = '' to choose automatically)",
            scope
                .tables
                .iter()
                .map(|t| t.name().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

/// Turns the SELECT machinery's plan over the full scope (`body`: fragment and finish
/// over all columns of all tables, no filter) and the bound join conditions (`conds`:
/// every ON condition and WHERE) into a multi-set [`QueryPlan`]. See the module docs.
pub(crate) fn plan_join(
    scope: &Scope,
    conds: Vec<Expr>,
    body: QueryPlan,
    catalog: &dyn Catalog,
) -> Result<QueryPlan, PlanError> {
    let n = scope.tables.len();
    let mut cs = Vec::new();
    for c in conds {
        conjuncts(c, &mut cs);
    }

    // 1. Pushed filters, keys, residuals.
    let mut pushed: Vec<Vec<Expr>> = vec![Vec::new(); n];
    let mut constant: Vec<Expr> = Vec::new();
    let mut keys: Vec<EquiKey> = Vec::new();
    let mut residuals: Vec<(BTreeSet<usize>, Expr)> = Vec::new();
    for c in cs {
        let ts = tables_of(scope, &c);
        match ts.iter().collect::<Vec<_>>().as_slice() {
            [] => constant.push(c),
            [t] => pushed[**t].push(c),
            _ => match equi_key(scope, &c)? {
                Some(k) => keys.push(k),
                None => residuals.push((ts, c)),
            },
        }
    }

    // 2. Kept columns (table-local indices, ascending).
    let mut used = BTreeSet::new();
    fragment_columns(&body.fragment, &mut used);
    for (_, e) in &residuals {
        columns_of(e, &mut used);
    }
    for k in &keys {
        columns_of(&k.left, &mut used);
        columns_of(&k.right, &mut used);
    }
    let kept: Vec<Vec<usize>> = scope
        .tables
        .iter()
        .map(|t| {
            used.iter()
                .filter(|&&c| c >= t.offset && c < t.offset + t.schema.columns.len())
                .map(|&c| c - t.offset)
                .collect()
        })
        .collect();

    // 3. Estimates.
    let est: Vec<Estimate> = (0..n)
        .map(|t| {
            let st = &scope.tables[t];
            let known = catalog.row_count(&st.table);
            let rows = known.unwrap_or(DEFAULT_ROWS);
            let sel: f64 = pushed[t].iter().map(selectivity).product();
            let rows = if rows == 0 {
                0
            } else {
                ((rows as f64 * sel).round() as u64).max(1)
            };
            let row_bytes = kept[t]
                .iter()
                .map(|&i| type_width(st.schema.columns[i].data_type))
                .sum();
            Estimate {
                known,
                rows,
                row_bytes,
            }
        })
        .collect();

    // 4. Pivot.
    let forced = catalog
        .setting(PIVOT_SETTING)
        .map(|v| v.trim().to_string())
        .filter(|v| {
            !v.is_empty() && !v.eq_ignore_ascii_case("auto") && !v.eq_ignore_ascii_case("default")
        });
    let (pivot, pivot_reason) = match forced {
        Some(v) => (
            forced_pivot(scope, &v)?,
            format!("forced by SET {PIVOT_SETTING} = '{v}'"),
        ),
        None => {
            let mut p = 0;
            for t in 1..n {
                if est[t].size() > est[p].size() {
                    p = t;
                }
            }
            let e = est[p];
            (
                p,
                format!(
                    "largest join table: {} est. {} rows x {} B{}",
                    label(scope, p),
                    e.rows,
                    e.row_bytes,
                    if e.known.is_none() {
                        format!(" (no row count: {DEFAULT_ROWS} assumed)")
                    } else {
                        String::new()
                    }
                ),
            )
        }
    };

    // 5. Join order.
    let mut remaining: Vec<usize> = (0..n).filter(|&t| t != pivot).collect();
    let mut largest = remaining.first().copied();
    for &t in &remaining {
        if let Some(l) = largest {
            if est[t].size() > est[l].size() {
                largest = Some(t);
            }
        }
    }
    let mut joined = vec![pivot];
    let mut order: Vec<usize> = Vec::new();
    while !remaining.is_empty() {
        let connects = |t: usize| {
            keys.iter()
                .any(|k| (k.a == t && joined.contains(&k.b)) || (k.b == t && joined.contains(&k.a)))
        };
        let mut pool: Vec<usize> = remaining.iter().copied().filter(|&t| connects(t)).collect();
        if pool.is_empty() {
            pool = remaining.clone();
        }
        if pool.len() > 1 {
            pool.retain(|&t| Some(t) != largest);
        }
        let mut pick = pool[0];
        for &t in &pool[1..] {
            if est[t].size() < est[pick].size() {
                pick = t;
            }
        }
        order.push(pick);
        joined.push(pick);
        remaining.retain(|&t| t != pick);
    }
    // Position in the combined row: the pivot 0, join_tables[i] i + 1.
    let seq: Vec<usize> = std::iter::once(pivot)
        .chain(order.iter().copied())
        .collect();
    let mut pos = vec![0; n];
    for (p, &t) in seq.iter().enumerate() {
        pos[t] = p;
    }

    // 6. The combined (compact) row.
    let mut map: Vec<Option<usize>> = vec![None; scope.schema.columns.len()];
    let mut block = vec![0; n];
    let mut cols = Vec::new();
    for &t in &seq {
        let st = &scope.tables[t];
        block[t] = cols.len();
        for &i in &kept[t] {
            map[st.offset + i] = Some(cols.len());
            let c = &st.schema.columns[i];
            cols.push(ColumnDef::new(
                format!("{}.{}", st.name(), c.name),
                c.data_type,
                true,
            ));
        }
    }
    let compact = |c: usize| -> Result<usize, PlanError> {
        map.get(c).copied().flatten().ok_or_else(|| {
            PlanError::Internal(format!("join: column {c} is not kept in the combined row"))
        })
    };

    let input = |t: usize, extra: Vec<Expr>| -> Result<JoinInput, PlanError> {
        let st = &scope.tables[t];
        let local = |c: usize| -> Result<usize, PlanError> {
            c.checked_sub(st.offset)
                .filter(|&i| i < st.schema.columns.len())
                .ok_or_else(|| PlanError::Internal(format!("join: column {c} outside its table")))
        };
        let mut fs = pushed[t]
            .iter()
            .map(|e| remap(e.clone(), &local))
            .collect::<Result<Vec<_>, _>>()?;
        fs.extend(extra);
        Ok(JoinInput {
            table: st.table.clone(),
            alias: st.name().to_string(),
            filter: and_all(fs),
            columns: kept[t].clone(),
            est_rows: est[t].rows,
            est_bytes: est[t].bytes(),
        })
    };

    let mut steps = Vec::with_capacity(order.len());
    for (i, &t) in order.iter().enumerate() {
        let mut left_keys = Vec::new();
        let mut right_keys = Vec::new();
        for k in &keys {
            let (this, other) = if k.b == t && pos[k.a] <= i {
                (&k.right, &k.left)
            } else if k.a == t && pos[k.b] <= i {
                (&k.left, &k.right)
            } else {
                continue;
            };
            left_keys.push(remap(other.clone(), &compact)?);
            let start = block[t];
            right_keys.push(remap(this.clone(), &|c| Ok(compact(c)? - start))?);
        }
        let filter = residuals
            .iter()
            .filter(|(ts, _)| ts.iter().map(|&u| pos[u]).max() == Some(i + 1))
            .map(|(_, e)| remap(e.clone(), &compact))
            .collect::<Result<Vec<_>, _>>()?;
        steps.push(JoinStep {
            left_keys,
            right_keys,
            filter: and_all(filter),
        });
    }

    let spec = JoinSpec {
        pivot: input(pivot, constant)?,
        join_tables: order
            .iter()
            .map(|&t| input(t, vec![]))
            .collect::<Result<_, _>>()?,
        steps,
        pivot_reason,
        overlap: match catalog.setting(OVERLAP_SETTING) {
            Some(v) => parse_bool_setting(OVERLAP_SETTING, &v)?,
            None => true,
        },
    };

    // The SELECT machinery's fragment and finish, onto the combined row.
    let table = scope.tables[pivot].table.clone();
    let mut fragment = body.fragment;
    fragment.table = table.clone();
    fragment.filter = fragment.filter.map(|e| remap(e, &compact)).transpose()?;
    fragment.projection = fragment
        .projection
        .into_iter()
        .map(|e| remap(e, &compact))
        .collect::<Result<_, _>>()?;
    fragment.partial_agg = fragment
        .partial_agg
        .map(|a| remap_agg(a, &compact))
        .transpose()?;
    let mut finish = body.finish;
    finish.agg = finish.agg.map(|a| remap_agg(a, &compact)).transpose()?;
    finish.table_schema = TableSchema::new(cols);
    Ok(QueryPlan {
        table,
        join: Some(spec),
        fragment,
        finish,
        columns: body.columns,
        input_schemas: seq
            .iter()
            .map(|&t| scope.tables[t].schema.clone())
            .collect(),
    })
}
