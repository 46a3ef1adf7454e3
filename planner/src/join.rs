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
//! 5. Join order: greedy on estimated rows ([`OrderModel`]). Starting from the
//!    pivot's estimated rows, each next join table is, among the tables with an
//!    equi-join key to what is already joined (all remaining ones, a cross product,
//!    only when none has), the one whose step is estimated to produce the fewest
//!    rows; a tie goes to the smaller join table (then FROM order). Without
//!    distinct-value statistics an equi-join key between `t` and a joined table `u`
//!    is taken to be a foreign key into a key of the *smaller* of the two tables (as
//!    in System R, `1 / max(distinct values)` with distinct values at most the rows,
//!    and the smaller side's values containing the larger's):
//!
//!    `rows after = rows so far x t's est. rows / min(rows of t, rows of u)`,
//!
//!    the division once per joined table `u` that `t` has keys to (however many key
//!    columns), with table row counts before pushed filters, times the selectivity
//!    guess of each residual condition the step completes. A key join through a
//!    filtered table shrinks the rows, a join into a lookup table keeps them, and a
//!    join on a column that is no key of the larger table (TPC-H Q5's
//!    `c_nationkey = s_nationkey` when customer would come before orders) multiplies
//!    them: it comes after the key joins that avoid that.
//!
//!    The *last* join table is streamed: its chunks are compared as they arrive,
//!    never held whole. The ones before it are collected and joined with the pivot
//!    when complete, so every step but the last materializes its rows on every
//!    Tstore. Streaming the largest join table saves holding it and overlaps its
//!    transfer with comparing, so the order is also planned holding the largest join
//!    table back for last (it is taken earlier only when nothing else has a key), and
//!    that order is used when it materializes no more estimated rows (the sum over
//!    every step but the last) than the plain greedy one. Otherwise the greedy order
//!    stands and a smaller table streams: in Q5, orders last would bring customer in
//!    through the nation key, millions of rows where orders first keeps a few
//!    thousand. EXPLAIN says under each join table why it is where it is (every
//!    candidate's estimate at its step): those lines travel in
//!    [`JoinSpec::order_reasons`].
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
    /// Rows of the table before the pushed filter (`known`, else [`DEFAULT_ROWS`]).
    table_rows: u64,
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

/// Step 5 (module docs): the join order, from the estimates and the key graph.
struct OrderModel<'a> {
    est: &'a [Estimate],
    /// How the query calls each table.
    labels: Vec<String>,
    /// The tables each table has an equi-join key to.
    linked: Vec<BTreeSet<usize>>,
    /// Each residual condition's tables and selectivity guess.
    residuals: Vec<(BTreeSet<usize>, f64)>,
}

/// One planned join order.
struct Order {
    /// The join tables, in order.
    tables: Vec<usize>,
    /// Estimated rows after each step.
    after: Vec<u64>,
    /// Why each join table is where it is (EXPLAIN).
    why: Vec<String>,
}

impl Order {
    /// Estimated rows the steps before the streamed one materialize.
    fn materialized(&self) -> u64 {
        let k = self.after.len().saturating_sub(1);
        self.after[..k]
            .iter()
            .fold(0u64, |sum, &r| sum.saturating_add(r))
    }
}

impl OrderModel<'_> {
    /// Estimated rows after joining `t` onto `joined` (`so_far` rows): see the module
    /// docs, step 5.
    fn rows_after(&self, joined: &[usize], so_far: u64, t: usize) -> u64 {
        let rows = self.est[t].rows;
        if so_far == 0 || rows == 0 {
            return 0;
        }
        let mut x = so_far as f64 * rows as f64;
        for &u in joined {
            if self.linked[t].contains(&u) {
                let key_side = self.est[t].table_rows.min(self.est[u].table_rows);
                x /= key_side.max(1) as f64;
            }
        }
        for (ts, sel) in &self.residuals {
            if ts.contains(&t) && ts.iter().all(|u| *u == t || joined.contains(u)) {
                x *= sel;
            }
        }
        // `as` saturates.
        (x.round() as u64).max(1)
    }

    /// The greedy order from `pivot`. `hold` is not taken while another candidate
    /// has a key to what is joined.
    fn greedy(&self, pivot: usize, hold: Option<usize>) -> Order {
        let mut remaining: Vec<usize> = (0..self.est.len()).filter(|&t| t != pivot).collect();
        let mut joined = vec![pivot];
        let mut so_far = self.est[pivot].rows;
        let mut o = Order {
            tables: Vec::new(),
            after: Vec::new(),
            why: Vec::new(),
        };
        while !remaining.is_empty() {
            let links = |t: usize| -> Vec<usize> {
                joined
                    .iter()
                    .copied()
                    .filter(|u| self.linked[t].contains(u))
                    .collect()
            };
            let mut pool: Vec<usize> = remaining
                .iter()
                .copied()
                .filter(|&t| !links(t).is_empty())
                .collect();
            let cross = pool.is_empty();
            if cross {
                pool = remaining.clone();
            }
            let held = hold.filter(|h| pool.len() > 1 && pool.contains(h));
            // (table, est. rows after), best first: fewest rows, then the smaller join
            // table, then FROM order (the sort is stable).
            let mut cands: Vec<(usize, u64)> = pool
                .iter()
                .map(|&t| (t, self.rows_after(&joined, so_far, t)))
                .collect();
            cands.sort_by_key(|&(t, r)| (Some(t) == held, r, self.est[t].size()));
            let (t, rows) = cands[0];
            let mut why = if cross {
                "no remaining table has a key to what is joined: cross product".to_string()
            } else {
                let to: Vec<String> = links(t).iter().map(|&u| self.labels[u].clone()).collect();
                format!("key to {}", to.join(", "))
            };
            why.push_str(&format!("; est. {rows} rows after the step"));
            if cands.len() > 1 {
                let (next, next_rows) = cands[1];
                let tie = if next_rows != rows || Some(next) == held {
                    ""
                } else if self.est[next].size() == self.est[t].size() {
                    " (a tie: FROM order)"
                } else {
                    " (a tie: the smaller join table first)"
                };
                why.push_str(&format!(
                    "; candidates (est. rows after): {}{}",
                    cands
                        .iter()
                        .map(|&(c, r)| format!(
                            "{} {r}{}",
                            self.labels[c],
                            if Some(c) == held {
                                " (held back for last)"
                            } else {
                                ""
                            }
                        ))
                        .collect::<Vec<_>>()
                        .join(", "),
                    tie
                ));
            } else if remaining.len() > 1 {
                why.push_str("; the only table with a key to what is joined");
            }
            o.tables.push(t);
            o.after.push(rows);
            o.why.push(why);
            joined.push(t);
            so_far = rows;
            remaining.retain(|&u| u != t);
        }
        o
    }

    /// The greedy order, or the one holding the largest join table back for last when
    /// that materializes no more estimated rows; and EXPLAIN's lines for it: a
    /// summary, then one per join table ([`order_lines`]); none for one join table.
    fn choose(&self, pivot: usize) -> (Vec<usize>, Vec<String>) {
        let mut largest: Option<usize> = None;
        for t in (0..self.est.len()).filter(|&t| t != pivot) {
            if largest.is_none_or(|l| self.est[t].size() > self.est[l].size()) {
                largest = Some(t);
            }
        }
        let Some(l) = largest else {
            return (Vec::new(), Vec::new());
        };
        let name = &self.labels[l];
        let plain = self.greedy(pivot, None);
        if plain.tables.len() == 1 {
            // Nothing to explain.
            return (plain.tables, Vec::new());
        }
        let (mut o, note) = if plain.tables.last() == Some(&l) {
            (plain, format!("the largest join table, {name}, is last"))
        } else {
            let held = self.greedy(pivot, Some(l));
            if held.tables.last() != Some(&l) {
                (
                    plain,
                    format!(
                        "the largest join table, {name}, cannot be last without a cross \
                         product"
                    ),
                )
            } else if held.materialized() <= plain.materialized() {
                let note = format!(
                    "the largest join table, {name}, held back for last (the greedy order \
                     would materialize est. {} rows)",
                    plain.materialized()
                );
                (held, note)
            } else {
                let note = format!(
                    "the largest join table, {name}, is not last: with it last, the steps \
                     before the streamed one would materialize est. {} rows",
                    held.materialized()
                );
                (plain, note)
            }
        };
        if let Some(last) = o.why.last_mut() {
            *last = format!("last, streamed: {last}");
        }
        let summary = format!(
            "{} (each next one, of those with a key to what is joined, the one whose step \
             makes the fewest est. rows; est. {} rows materialized before the last one \
             streams; {note})",
            o.tables
                .iter()
                .map(|&t| self.labels[t].clone())
                .collect::<Vec<_>>()
                .join(", "),
            o.materialized()
        );
        let lines = std::iter::once(summary).chain(o.why.drain(..)).collect();
        (o.tables, lines)
    }
}

/// [`JoinSpec::order_reasons`] as [`plan_join`] writes them: a summary of the join
/// order and one line per join table saying why it is where it is (`k` join tables);
/// None when absent or malformed.
pub(crate) fn order_lines(reasons: &[String], k: usize) -> Option<(&str, Vec<&str>)> {
    match reasons.split_first() {
        Some((summary, why)) if why.len() == k => {
            Some((summary.as_str(), why.iter().map(String::as_str).collect()))
        }
        _ => None,
    }
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
                table_rows: known.unwrap_or(DEFAULT_ROWS),
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
    let model = OrderModel {
        est: &est,
        labels: (0..n).map(|t| label(scope, t)).collect(),
        linked: (0..n)
            .map(|t| {
                keys.iter()
                    .filter_map(|k| match (k.a == t, k.b == t) {
                        (true, _) => Some(k.b),
                        (_, true) => Some(k.a),
                        _ => None,
                    })
                    .collect()
            })
            .collect(),
        residuals: residuals
            .iter()
            .map(|(ts, e)| (ts.clone(), selectivity(e)))
            .collect(),
    };
    let (order, order_text) = model.choose(pivot);
    // One line each (a quoted alias may hold a newline).
    let order_reasons: Vec<String> = order_text
        .into_iter()
        .map(|l| l.replace(['\n', '\r'], " "))
        .collect();
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
        order_reasons,
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
