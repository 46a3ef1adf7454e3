//! EXPLAIN: a readable account of a [`QueryPlan`], one line per fact, and the
//! expression renderer it uses.
//!
//! For a multi-set query the lines name the pivot and why, the join order and why
//! each join table is where it is (the estimated rows of every candidate at its step,
//! `crate::join` module docs step 5), every join table (kept columns, pushed filter,
//! estimates, what crosses the network), each join step's keys and filter, the fragment every Tstore runs over the joined rows, and the primary's
//! post-processing. For a single-table query: the scan, filter, projection or partial
//! aggregation, and the post-processing.

use smrdb_tstore::expr::BinaryOp;
use smrdb_tstore::{AggCall, AggFunc, Expr, JoinInput, JoinSpec, PartialAgg, TableSchema};
use sqlparser::ast;

use crate::join::order_lines;
use crate::{PlanError, QueryPlan};

/// Binding strength of an expression's outermost operator (higher binds tighter).
fn prec(e: &Expr) -> u8 {
    match e {
        Expr::Binary { op, .. } => match op {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Eq
            | BinaryOp::NotEq
            | BinaryOp::Lt
            | BinaryOp::LtEq
            | BinaryOp::Gt
            | BinaryOp::GtEq => 4,
            BinaryOp::Add | BinaryOp::Sub => 5,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 6,
        },
        Expr::Not(_) => 3,
        Expr::IsNull { .. } | Expr::InList { .. } | Expr::Between { .. } | Expr::Like { .. } => 4,
        Expr::Negate(_) => 7,
        Expr::Column(_)
        | Expr::Literal(_)
        | Expr::Case { .. }
        | Expr::Cast { .. }
        | Expr::Coalesce(_)
        | Expr::NullIf(..) => 9,
    }
}

fn op_symbol(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "+",
        BinaryOp::Sub => "-",
        BinaryOp::Mul => "*",
        BinaryOp::Div => "/",
        BinaryOp::Mod => "%",
        BinaryOp::Eq => "=",
        BinaryOp::NotEq => "<>",
        BinaryOp::Lt => "<",
        BinaryOp::LtEq => "<=",
        BinaryOp::Gt => ">",
        BinaryOp::GtEq => ">=",
        BinaryOp::And => "AND",
        BinaryOp::Or => "OR",
    }
}

/// Renders `e` wrapped in parentheses when it binds looser than `min`.
fn operand(e: &Expr, names: &[String], min: u8) -> String {
    let s = render_expr(e, names);
    if prec(e) < min {
        format!("({s})")
    } else {
        s
    }
}

/// Renders a bound expression as SQL-like text, naming `Column(i)` by `names[i]`
/// (`#i` when `names` is too short). Parentheses appear only where precedence needs
/// them; literals are SQL literals (`'text'`, `DATE '2024-01-01'`, `NULL`).
pub fn render_expr(e: &Expr, names: &[String]) -> String {
    let r = |x: &Expr| render_expr(x, names);
    match e {
        Expr::Column(i) => names.get(*i).cloned().unwrap_or_else(|| format!("#{i}")),
        Expr::Literal(v) => v.to_string(),
        Expr::Binary { op, left, right } => {
            let p = prec(e);
            // AND / OR are associative; arithmetic and comparisons are left-associative.
            let rmin = if matches!(op, BinaryOp::And | BinaryOp::Or) {
                p
            } else {
                p + 1
            };
            format!(
                "{} {} {}",
                operand(left, names, p),
                op_symbol(*op),
                operand(right, names, rmin)
            )
        }
        Expr::Negate(x) => format!("-{}", operand(x, names, 8)),
        Expr::Not(x) => format!("NOT {}", operand(x, names, 5)),
        Expr::IsNull { expr, negated } => format!(
            "{} IS {}NULL",
            operand(expr, names, 5),
            if *negated { "NOT " } else { "" }
        ),
        Expr::InList {
            expr,
            list,
            negated,
        } => format!(
            "{} {}IN ({})",
            operand(expr, names, 5),
            if *negated { "NOT " } else { "" },
            list.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => format!(
            "{} {}BETWEEN {} AND {}",
            operand(expr, names, 5),
            if *negated { "NOT " } else { "" },
            operand(low, names, 5),
            operand(high, names, 5)
        ),
        Expr::Like {
            expr,
            pattern,
            negated,
        } => format!(
            "{} {}LIKE {}",
            operand(expr, names, 5),
            if *negated { "NOT " } else { "" },
            operand(pattern, names, 5)
        ),
        Expr::Case {
            when_then,
            else_expr,
        } => {
            let mut s = String::from("CASE");
            for (c, v) in when_then {
                s.push_str(&format!(" WHEN {} THEN {}", r(c), r(v)));
            }
            if let Some(x) = else_expr {
                s.push_str(&format!(" ELSE {}", r(x)));
            }
            s.push_str(" END");
            s
        }
        Expr::Cast { expr, to } => format!("CAST({} AS {})", r(expr), to.sql_name()),
        Expr::Coalesce(args) => format!(
            "COALESCE({})",
            args.iter().map(r).collect::<Vec<_>>().join(", ")
        ),
        Expr::NullIf(a, b) => format!("NULLIF({}, {})", r(a), r(b)),
    }
}

/// Renders an aggregate call (`count(*)`, `sum(e.salary)`, `count(DISTINCT x)`, ...).
fn render_agg(c: &AggCall, names: &[String]) -> String {
    let arg = c
        .arg
        .as_ref()
        .map(|e| render_expr(e, names))
        .unwrap_or_default();
    let within = |f: &str, descending: bool| {
        format!(
            "{f} WITHIN GROUP (ORDER BY {arg}{})",
            if descending { " DESC" } else { "" }
        )
    };
    match c.func {
        AggFunc::Count => format!("count({arg})"),
        AggFunc::CountStar => "count(*)".into(),
        AggFunc::Sum => format!("sum({arg})"),
        AggFunc::Min => format!("min({arg})"),
        AggFunc::Max => format!("max({arg})"),
        AggFunc::Avg => format!("avg({arg})"),
        AggFunc::CountDistinct => format!("count(DISTINCT {arg})"),
        AggFunc::SumDistinct => format!("sum(DISTINCT {arg})"),
        AggFunc::AvgDistinct => format!("avg(DISTINCT {arg})"),
        AggFunc::Mode { descending } => within("mode()", descending),
        AggFunc::PercentileDisc {
            fraction_bits,
            descending,
        } => within(
            &format!("percentile_disc({})", f64::from_bits(fraction_bits)),
            descending,
        ),
    }
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    let v: Vec<String> = items.into_iter().collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// Wraps a rendered expression in parentheses when it is used as a column name of a
/// later stage and is not atomic.
fn as_name(e: &Expr, s: String) -> String {
    if prec(e) >= 9 {
        s
    } else {
        format!("({s})")
    }
}

fn agg_text(a: &PartialAgg, names: &[String]) -> String {
    let mut s = String::new();
    if !a.group_by.is_empty() {
        s.push_str(&format!(
            "group by {}",
            list(a.group_by.iter().map(|e| render_expr(e, names)))
        ));
    }
    if !a.aggs.is_empty() {
        if !s.is_empty() {
            s.push_str("; ");
        }
        s.push_str(&format!(
            "aggregates {}",
            list(a.aggs.iter().map(|c| render_agg(c, names)))
        ));
    }
    if s.is_empty() {
        s.push_str("one group, no aggregates");
    }
    s
}

/// How EXPLAIN names an input: `table` or `table alias`.
fn input_label(i: &JoinInput) -> String {
    if i.alias == i.table {
        i.table.clone()
    } else {
        format!("{} {}", i.table, i.alias)
    }
}

fn qualified_names(alias: &str, schema: Option<&TableSchema>, n: usize) -> Vec<String> {
    match schema {
        Some(s) => s
            .columns
            .iter()
            .map(|c| format!("{alias}.{}", c.name))
            .collect(),
        None => (0..n).map(|i| format!("{alias}.#{i}")).collect(),
    }
}

fn input_lines(
    out: &mut Vec<String>,
    i: &JoinInput,
    schema: Option<&TableSchema>,
    compact: &[String],
    start: usize,
) {
    let width = i.columns.iter().max().map(|m| m + 1).unwrap_or(0);
    let names = qualified_names(&i.alias, schema, width);
    out.push(format!(
        "  filter (pushed down, applied before anything leaves the Tstore): {}",
        i.filter
            .as_ref()
            .map(|f| render_expr(f, &names))
            .unwrap_or_else(|| "none".into())
    ));
    out.push(format!(
        "  kept columns: {}",
        list(compact[start..start + i.columns.len()].iter().cloned())
    ));
    out.push(format!("  est. {} rows, {} B", i.est_rows, i.est_bytes));
}

/// How the cluster's routers carry a broadcast (a join table) to remote Tstores: what
/// EXPLAIN says crosses the network. The planner does not depend on the router; the
/// node maps its router mode to this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Broadcast {
    /// One copy per remote node, fanned out there by pointer (the shared memory
    /// router, the design).
    #[default]
    PerNode,
    /// One copy per remote Tstore (the naive baseline).
    PerTstore,
}

fn join_lines(
    out: &mut Vec<String>,
    q: &QueryPlan,
    spec: &JoinSpec,
    compact: &[String],
    broadcast: Broadcast,
) {
    let n = spec.join_tables.len() + 1;
    let pivot_reason = &spec.pivot_reason;
    let order = order_lines(&spec.order_reasons, spec.join_tables.len());
    out.push(format!(
        "Multi-set query: {n} tables, pivot {}",
        input_label(&spec.pivot)
    ));
    out.push(format!(
        "Pivot {}: stays in place, every Tstore compares its own slice ({pivot_reason})",
        input_label(&spec.pivot),
    ));
    input_lines(out, &spec.pivot, q.input_schemas.first(), compact, 0);
    if let Some((summary, _)) = &order {
        out.push(format!("Join order: {summary}"));
    }
    let mut start = spec.pivot.columns.len();
    let mut starts = Vec::new();
    let last = spec.join_tables.len().saturating_sub(1);
    for (k, jt) in spec.join_tables.iter().enumerate() {
        starts.push(start);
        out.push(format!(
            "Join table {}: {}: every Tstore builds it from its slice",
            k + 1,
            input_label(jt)
        ));
        if let Some(why) = order.as_ref().and_then(|(_, why)| why.get(k)) {
            out.push(format!("  why here: {why}"));
        }
        input_lines(out, jt, q.input_schemas.get(k + 1), compact, start);
        let copies = match broadcast {
            Broadcast::PerNode => "one copy per remote node",
            Broadcast::PerTstore => "one copy per remote Tstore, as the naive router mode sends",
        };
        out.push(format!(
            "  network: join table {}: every Tstore sends its slice's rows to every Tstore: \
             {copies} (local Tstores read it in place)",
            jt.alias
        ));
        out.push(if k == last && !spec.overlap {
            "  collected (SET smrdb.overlap = off): every chunk is copied out of the ring \
             and compared only once the whole table is in"
                .to_string()
        } else if k == last {
            "  streamed: each arriving chunk is compared at once, never waiting for the \
             whole table"
                .to_string()
        } else {
            "  collected: kept until complete, then joined before the last join table \
             streams"
                .to_string()
        });
        start += jt.columns.len();
    }
    for (k, (step, jt)) in spec.steps.iter().zip(&spec.join_tables).enumerate() {
        let s = starts.get(k).copied().unwrap_or(0);
        let right = &compact[s.min(compact.len())..];
        let how = if step.left_keys.is_empty() {
            "cross product (no equi-join key)".to_string()
        } else {
            format!(
                "hash join on {}",
                step.left_keys
                    .iter()
                    .zip(&step.right_keys)
                    .map(|(l, r)| format!(
                        "{} = {}",
                        render_expr(l, compact),
                        render_expr(r, right)
                    ))
                    .collect::<Vec<_>>()
                    .join(" AND ")
            )
        };
        out.push(format!("Step {}: join {}: {how}", k + 1, jt.alias));
        if let Some(f) = &step.filter {
            out.push(format!(
                "  filter after the step: {}",
                render_expr(f, compact)
            ));
        }
    }
}

/// The stage-1 column names of the finish (gathered batch): group keys then
/// aggregates, or the fragment's projection.
fn stage1_names(q: &QueryPlan, input: &[String]) -> Vec<String> {
    match &q.finish.agg {
        Some(a) => a
            .group_by
            .iter()
            .map(|e| as_name(e, render_expr(e, input)))
            .chain(a.aggs.iter().map(|c| render_agg(c, input)))
            .collect(),
        None if q.fragment.projection.is_empty() => input.to_vec(),
        None => q
            .fragment
            .projection
            .iter()
            .map(|e| as_name(e, render_expr(e, input)))
            .collect(),
    }
}

/// One line per fact of the plan (see the module docs); what `EXPLAIN` prints on a
/// cluster of shared memory routers ([`Broadcast::PerNode`]).
pub fn explain_lines(q: &QueryPlan) -> Vec<String> {
    explain_lines_for(q, Broadcast::PerNode)
}

/// As [`explain_lines`], for a cluster whose routers carry broadcasts as `broadcast`.
pub fn explain_lines_for(q: &QueryPlan, broadcast: Broadcast) -> Vec<String> {
    let mut out = Vec::new();
    let input: Vec<String> = q
        .finish
        .table_schema
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    match &q.join {
        Some(spec) => {
            join_lines(&mut out, q, spec, &input, broadcast);
            out.push(format!(
                "Tstore fragment over the joined rows ({}):",
                list(input.iter().cloned())
            ));
        }
        None => out.push(format!(
            "Single-set query: every Tstore scans its slice of {} in place",
            q.table
        )),
    }
    let f = &q.fragment;
    if let Some(e) = &f.filter {
        out.push(format!("  filter: {}", render_expr(e, &input)));
    }
    match &f.partial_agg {
        Some(a) if a.aggs.is_empty() && q.finish.agg.is_some() && q.finish.having.is_none() => {
            out.push(format!(
                "  partial DISTINCT / grouping: {}",
                agg_text(a, &input)
            ));
        }
        Some(a) => out.push(format!("  partial aggregation: {}", agg_text(a, &input))),
        None if f.projection.is_empty() => out.push("  projection: all columns".into()),
        None => out.push(format!(
            "  projection: {}",
            list(f.projection.iter().map(|e| render_expr(e, &input)))
        )),
    }
    out.push(match &f.partial_agg {
        Some(_) => "  result: one partial aggregate state batch per Tstore".into(),
        None => "  result: the projected rows".into(),
    });

    // The primary.
    let fin = &q.finish;
    let stage1 = stage1_names(q, &input);
    out.push("Primary: gathers every Tstore's result".into());
    if let Some(a) = &fin.agg {
        out.push(format!(
            "  merge the partial states and finalize: {}",
            agg_text(a, &input)
        ));
    }
    if let Some(h) = &fin.having {
        out.push(format!("  HAVING: {}", render_expr(h, &stage1)));
    }
    let strip = |e: &Expr| match e {
        Expr::Cast { expr, .. } => render_expr(expr, &stage1),
        e => render_expr(e, &stage1),
    };
    out.push(format!(
        "  output: {}",
        list(fin.exprs.iter().zip(&fin.columns).map(|(e, (name, _))| {
            let s = strip(e);
            if s == *name {
                s
            } else {
                format!("{s} AS {name}")
            }
        }))
    ));
    if fin.distinct {
        out.push("  DISTINCT".into());
    }
    if !fin.order_by.is_empty() {
        out.push(format!(
            "  ORDER BY {}",
            list(fin.order_by.iter().map(|k| {
                let e = fin
                    .exprs
                    .get(k.column)
                    .map(&strip)
                    .unwrap_or_else(|| format!("#{}", k.column));
                format!(
                    "{e}{}{}",
                    if k.descending { " DESC" } else { "" },
                    match (k.descending, k.nulls_first) {
                        (false, true) => " NULLS FIRST",
                        (true, false) => " NULLS LAST",
                        _ => "",
                    }
                )
            }))
        ));
    }
    if fin.offset > 0 {
        out.push(format!("  OFFSET {}", fin.offset));
    }
    if let Some(l) = fin.limit {
        out.push(format!("  LIMIT {l}"));
    }
    out
}

/// `EXPLAIN (ANALYZE [bool], VERBOSE [bool], ...)`: whether ANALYZE is on.
///
/// # Errors
/// Options other than ANALYZE, VERBOSE, COSTS, TIMING, SUMMARY and BUFFERS, or a
/// non-boolean argument.
pub(crate) fn analyze_option(options: Option<&[ast::UtilityOption]>) -> Result<bool, PlanError> {
    let mut analyze = false;
    for o in options.unwrap_or_default() {
        let name = o.name.value.to_lowercase();
        let on = match &o.arg {
            None => true,
            Some(ast::Expr::Value(v)) => match &v.value {
                ast::Value::Boolean(b) => *b,
                ast::Value::Number(n, _) if n == "0" || n == "1" => n == "1",
                ast::Value::SingleQuotedString(s) => matches!(s.as_str(), "on" | "true"),
                other => {
                    return Err(PlanError::Syntax(format!(
                        "{name} requires a Boolean value, not {other}"
                    )))
                }
            },
            Some(ast::Expr::Identifier(i)) => match i.value.to_lowercase().as_str() {
                "on" | "true" => true,
                "off" | "false" => false,
                other => {
                    return Err(PlanError::Syntax(format!(
                        "{name} requires a Boolean value, not {other}"
                    )))
                }
            },
            Some(other) => {
                return Err(PlanError::Syntax(format!(
                    "{name} requires a Boolean value, not {other}"
                )))
            }
        };
        match name.as_str() {
            "analyze" => analyze = on,
            "verbose" | "costs" | "timing" | "summary" | "buffers" => {}
            other => return Err(PlanError::Unsupported(format!("EXPLAIN option {other}"))),
        }
    }
    Ok(analyze)
}
