//! Planning SELECTs into a Tstore [`Fragment`] and a primary [`Finish`]: the FROM
//! clause (one table, or several for a multi-set query, handed on to
//! [`crate::join`]) and the SELECT machinery over it.

use smrdb_tstore::{AggCall, DataType, Expr, Fragment, PartialAgg, Value};
use sqlparser::ast::{self as ast, SelectItem, SetExpr, TableFactor};

use crate::bind::{has_columns, ident, map_children, object_name, Binder, Scope, ScopeTable};
use crate::finish::{Finish, SortKey};
use crate::{join, Catalog, Plan, PlanError, QueryPlan};

/// One SELECT list entry before binding.
enum Item<'q> {
    Ast(&'q ast::Expr),
    Col(usize),
}

fn output_name(e: &ast::Expr) -> String {
    use ast::Expr as A;
    match e {
        A::Identifier(i) => ident(i),
        A::CompoundIdentifier(p) => p.last().map(ident).unwrap_or_default(),
        A::Nested(x) => output_name(x),
        A::Cast { expr, .. } => match expr.as_ref() {
            A::Identifier(_) | A::CompoundIdentifier(_) => output_name(expr),
            _ => match expr.as_ref() {
                A::Value(_) => "?column?".into(),
                _ => output_name(expr),
            },
        },
        A::Function(f) => f
            .name
            .0
            .last()
            .map(|p| match p {
                ast::ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
                other => other.to_string(),
            })
            .unwrap_or_default(),
        A::Case { .. } => "case".into(),
        _ => "?column?".into(),
    }
}

fn check_query_shape(q: &ast::Query) -> Result<&ast::Select, PlanError> {
    if q.with.is_some() {
        return Err(PlanError::Unsupported(
            "WITH (common table expressions)".into(),
        ));
    }
    if q.fetch.is_some()
        || !q.locks.is_empty()
        || q.for_clause.is_some()
        || q.settings.is_some()
        || q.format_clause.is_some()
        || !q.pipe_operators.is_empty()
    {
        return Err(PlanError::Unsupported(
            "FETCH / FOR UPDATE / SETTINGS clauses".into(),
        ));
    }
    let s = match q.body.as_ref() {
        SetExpr::Select(s) => s,
        SetExpr::SetOperation { op, .. } => {
            return Err(PlanError::Unsupported(format!("set operation {op}")))
        }
        SetExpr::Query(_) => return Err(PlanError::Unsupported("parenthesized subquery".into())),
        SetExpr::Values(_) => return Err(PlanError::Unsupported("VALUES as a query".into())),
        other => return Err(PlanError::Unsupported(format!("query {other}"))),
    };
    if s.top.is_some()
        || s.into.is_some()
        || !s.lateral_views.is_empty()
        || s.prewhere.is_some()
        || !s.cluster_by.is_empty()
        || !s.distribute_by.is_empty()
        || !s.sort_by.is_empty()
        || s.qualify.is_some()
        || s.connect_by.is_some()
        || s.value_table_mode.is_some()
        || s.exclude.is_some()
    {
        return Err(PlanError::Unsupported(
            "non-PostgreSQL SELECT clauses".into(),
        ));
    }
    if !s.named_window.is_empty() {
        return Err(PlanError::Unsupported("WINDOW clause".into()));
    }
    if let Some(ast::Distinct::On(_)) = s.distinct {
        return Err(PlanError::Unsupported("DISTINCT ON".into()));
    }
    Ok(s)
}

/// LIMIT / OFFSET as constants.
fn limits(q: &ast::Query) -> Result<(u64, Option<u64>), PlanError> {
    let eval = |e: &ast::Expr, what: &str, code: &'static str| -> Result<Option<u64>, PlanError> {
        let scope = Scope::empty();
        let b = Binder::new(&scope, "LIMIT").bind(e)?;
        match b.eval_scalar()? {
            Value::Null => Ok(None),
            v => match v.as_i64() {
                Some(n) if n >= 0 => Ok(Some(n as u64)),
                Some(_) => Err(PlanError::InvalidReference {
                    code,
                    msg: format!("{what} must not be negative"),
                }),
                None => Err(PlanError::TypeMismatch(format!(
                    "argument of {what} must be an integer"
                ))),
            },
        }
    };
    match &q.limit_clause {
        None => Ok((0, None)),
        Some(ast::LimitClause::LimitOffset {
            limit,
            offset,
            limit_by,
        }) => {
            if !limit_by.is_empty() {
                return Err(PlanError::Unsupported("LIMIT BY".into()));
            }
            let l = match limit {
                Some(e) => eval(e, "LIMIT", "2201W")?,
                None => None,
            };
            let o = match offset {
                Some(o) => eval(&o.value, "OFFSET", "2201X")?.unwrap_or(0),
                None => 0,
            };
            Ok((o, l))
        }
        Some(ast::LimitClause::OffsetCommaLimit { .. }) => {
            Err(PlanError::Unsupported("LIMIT offset, count".into()))
        }
    }
}

/// Plans a SELECT: a distributed query, or (without FROM) constant rows.
pub(crate) fn plan_query_or_values(
    q: &ast::Query,
    catalog: &dyn Catalog,
) -> Result<Plan, PlanError> {
    let s = check_query_shape(q)?;
    if s.from.is_empty() {
        return plan_values(q, s);
    }
    Ok(Plan::Query(plan_query(q, catalog)?))
}

fn plan_values(q: &ast::Query, s: &ast::Select) -> Result<Plan, PlanError> {
    if !matches!(&s.group_by, ast::GroupByExpr::Expressions(g, m) if g.is_empty() && m.is_empty())
        || s.having.is_some()
    {
        return Err(PlanError::Unsupported(
            "GROUP BY / HAVING without FROM".into(),
        ));
    }
    let scope = Scope::empty();
    let mut columns = Vec::new();
    let mut row = Vec::new();
    for item in &s.projection {
        let (e, name) = match item {
            SelectItem::UnnamedExpr(e) => (e, output_name(e)),
            SelectItem::ExprWithAlias { expr, alias } => (expr, ident(alias)),
            _ => {
                return Err(PlanError::Syntax(
                    "SELECT * with no tables specified is not valid".into(),
                ))
            }
        };
        let mut b = Binder::new(&scope, "SELECT");
        let x = b.bind(e)?;
        let t = b.ty(&x)?;
        let v = x.eval_scalar()?;
        let v = if v.is_null() { v } else { v.coerce_to(t)? };
        columns.push((name, t));
        row.push(v);
    }
    let mut keep = true;
    if let Some(w) = &s.selection {
        let x = Binder::new(&scope, "WHERE").bind(w)?;
        keep = x.eval_scalar()? == Value::Bool(true);
    }
    let (offset, limit) = limits(q)?;
    if offset > 0 || limit == Some(0) {
        keep = false;
    }
    Ok(Plan::Values {
        columns,
        rows: if keep { vec![row] } else { vec![] },
    })
}

fn bool_clause(b: &Binder<'_>, e: Expr, what: &str) -> Result<Expr, PlanError> {
    let e = match e {
        Expr::Literal(Value::Text(s)) => {
            Expr::Literal(Value::Text(s).coerce_to(DataType::Boolean)?)
        }
        e => e,
    };
    if !matches!(e, Expr::Literal(Value::Null)) && b.ty(&e)? != DataType::Boolean {
        return Err(PlanError::TypeMismatch(format!(
            "argument of {what} must be type boolean, not type {}",
            b.ty(&e)?
        )));
    }
    Ok(e)
}

/// Maps an expression over the extended scope (table columns, then aggregates) to
/// one over the finalized aggregate batch (group keys, then aggregates).
fn rewrite_agg(e: Expr, groups: &[Expr], scope: &Scope) -> Result<Expr, PlanError> {
    if let Some(i) = groups.iter().position(|g| *g == e) {
        return Ok(Expr::Column(i));
    }
    let ncols = scope.schema.columns.len();
    match e {
        Expr::Column(c) if c >= ncols => Ok(Expr::Column(groups.len() + c - ncols)),
        Expr::Column(c) => Err(PlanError::Grouping(format!(
            "column \"{}\" must appear in the GROUP BY clause or be used in an aggregate function",
            scope.schema.columns[c].name
        ))),
        other => map_children(other, &mut |x| rewrite_agg(x, groups, scope)),
    }
}

fn cast_to(e: Expr, t: DataType) -> Expr {
    Expr::Cast {
        expr: Box::new(e),
        to: t,
    }
}

/// At most this many tables in one FROM clause.
pub(crate) const MAX_TABLES: usize = 6;

/// A bound FROM clause.
struct FromClause<'q> {
    /// Every table, in FROM order.
    scope: Scope,
    /// Each `JOIN ... ON` condition, with the tables it may reference (those of its
    /// FROM item up to and including the joined table, as in PostgreSQL).
    ons: Vec<(&'q ast::Expr, Vec<bool>)>,
}

/// A table of the FROM clause: (table name, alias).
fn table_factor(tf: &TableFactor) -> Result<(String, Option<String>), PlanError> {
    match tf {
        TableFactor::Table {
            name,
            alias,
            args: None,
            with_hints,
            version: None,
            with_ordinality: false,
            partitions,
            json_path: None,
            sample: None,
            index_hints,
        } if with_hints.is_empty() && partitions.is_empty() && index_hints.is_empty() => {
            if let Some(a) = alias {
                if !a.columns.is_empty() {
                    return Err(PlanError::Unsupported("column aliases in FROM".into()));
                }
            }
            // `SELECT a FROM WHERE ...`: the parser takes an unquoted keyword as a
            // table name; PostgreSQL calls that a syntax error.
            if let [ast::ObjectNamePart::Identifier(i)] = name.0.as_slice() {
                const RESERVED: &[&str] = &[
                    "where", "group", "order", "having", "limit", "offset", "select", "from",
                    "union", "join", "on", "and", "or", "not",
                ];
                if i.quote_style.is_none() && RESERVED.contains(&i.value.to_lowercase().as_str()) {
                    return Err(PlanError::Syntax(format!(
                        "syntax error at or near \"{}\"",
                        i.value
                    )));
                }
            }
            Ok((object_name(name)?, alias.as_ref().map(|a| ident(&a.name))))
        }
        TableFactor::Derived { .. } => Err(PlanError::Unsupported("subqueries in FROM".into())),
        TableFactor::NestedJoin { .. } => {
            Err(PlanError::Unsupported("parenthesized joins in FROM".into()))
        }
        other => Err(PlanError::Unsupported(format!("FROM item {other}"))),
    }
}

/// Binds a FROM list: comma-separated items, each a table followed by inner joins
/// (`[INNER] JOIN ... ON`, `CROSS JOIN`). Outer, NATURAL and USING joins are not
/// supported.
fn bind_from<'q>(
    from: &'q [ast::TableWithJoins],
    catalog: &dyn Catalog,
) -> Result<FromClause<'q>, PlanError> {
    use ast::{JoinConstraint as C, JoinOperator as J};
    let mut names: Vec<(String, Option<String>)> = Vec::new();
    // (condition, first table of its FROM item, the table it joins)
    let mut ons: Vec<(&ast::Expr, usize, usize)> = Vec::new();
    for item in from {
        let first = names.len();
        names.push(table_factor(&item.relation)?);
        for j in &item.joins {
            if j.global {
                return Err(PlanError::Unsupported("GLOBAL JOIN".into()));
            }
            let (constraint, cross) = match &j.join_operator {
                J::Join(c) | J::Inner(c) => (c, false),
                J::CrossJoin(c) => (c, true),
                J::Left(_) | J::LeftOuter(_) => {
                    return Err(PlanError::Unsupported("LEFT [OUTER] JOIN".into()))
                }
                J::Right(_) | J::RightOuter(_) => {
                    return Err(PlanError::Unsupported("RIGHT [OUTER] JOIN".into()))
                }
                J::FullOuter(_) => return Err(PlanError::Unsupported("FULL [OUTER] JOIN".into())),
                other => {
                    let text = ast::Join {
                        relation: j.relation.clone(),
                        global: false,
                        join_operator: other.clone(),
                    }
                    .to_string();
                    let head: String = text
                        .split_whitespace()
                        .take_while(|w| !w.eq_ignore_ascii_case("join"))
                        .chain(["JOIN"])
                        .collect::<Vec<_>>()
                        .join(" ");
                    return Err(PlanError::Unsupported(head));
                }
            };
            names.push(table_factor(&j.relation)?);
            match constraint {
                C::On(e) if !cross => ons.push((e, first, names.len() - 1)),
                C::None if cross => {}
                C::None => {
                    return Err(PlanError::Syntax(
                        "syntax error: JOIN needs an ON condition".into(),
                    ))
                }
                C::Natural => return Err(PlanError::Unsupported("NATURAL JOIN".into())),
                C::Using(_) => return Err(PlanError::Unsupported("JOIN ... USING".into())),
                C::On(_) => {
                    return Err(PlanError::Syntax(
                        "syntax error: CROSS JOIN takes no ON condition".into(),
                    ))
                }
            }
        }
    }
    if names.len() > MAX_TABLES {
        return Err(PlanError::Unsupported(format!(
            "joins of more than {MAX_TABLES} tables ({} in FROM)",
            names.len()
        )));
    }
    let mut tables = Vec::with_capacity(names.len());
    for (table, alias) in names {
        let schema = catalog
            .table(&table)
            .ok_or_else(|| PlanError::UndefinedTable(table.clone()))?;
        tables.push((table, alias, schema));
    }
    let n = tables.len();
    let scope = Scope::multi(tables)?;
    let ons = ons
        .into_iter()
        .map(|(e, first, upto)| (e, (0..n).map(|i| first <= i && i <= upto).collect()))
        .collect();
    Ok(FromClause { scope, ons })
}

/// Plans a SELECT with a FROM clause: one table, or a multi-set query (a join of
/// up to [`MAX_TABLES`] tables, see [`crate::join`]).
pub(crate) fn plan_query(q: &ast::Query, catalog: &dyn Catalog) -> Result<QueryPlan, PlanError> {
    let s = check_query_shape(q)?;
    if s.from.is_empty() {
        return Err(PlanError::Unsupported("SELECT without FROM here".into()));
    }
    let from = bind_from(&s.from, catalog)?;
    let scope = &from.scope;
    if scope.tables.len() == 1 {
        return plan_body(q, s, scope, true);
    }
    // Multi-set: every ON condition and WHERE over the full scope; the join planner
    // splits them into pushed filters, keys and residual filters.
    let mut conds = Vec::new();
    for (on, visible) in &from.ons {
        let sc = scope.with_visible(visible);
        let mut b = Binder::new(&sc, "JOIN conditions");
        let e = b.bind(on)?;
        conds.push(bool_clause(&b, e, "JOIN/ON")?);
    }
    if let Some(w) = &s.selection {
        let mut b = Binder::new(scope, "WHERE");
        let e = b.bind(w)?;
        conds.push(bool_clause(&b, e, "WHERE")?);
    }
    let body = plan_body(q, s, scope, false)?;
    join::plan_join(scope, conds, body, catalog)
}

/// The SELECT machinery over a scope (one table, or the full scope of a join):
/// SELECT list, WHERE (when `bind_where`), GROUP BY, aggregates, HAVING, ORDER BY,
/// DISTINCT, LIMIT/OFFSET -> a fragment over the scope's columns and a finish.
fn plan_body(
    q: &ast::Query,
    s: &ast::Select,
    scope: &Scope,
    bind_where: bool,
) -> Result<QueryPlan, PlanError> {
    let table = scope
        .tables
        .first()
        .map(|t| t.table.clone())
        .unwrap_or_default();

    // SELECT list.
    let mut items: Vec<(Item<'_>, String)> = Vec::new();
    for it in &s.projection {
        match it {
            SelectItem::UnnamedExpr(e) => items.push((Item::Ast(e), output_name(e))),
            SelectItem::ExprWithAlias { expr, alias } => {
                items.push((Item::Ast(expr), ident(alias)))
            }
            SelectItem::Wildcard(opts) | SelectItem::QualifiedWildcard(_, opts) => {
                if opts.opt_ilike.is_some()
                    || opts.opt_exclude.is_some()
                    || opts.opt_except.is_some()
                    || opts.opt_replace.is_some()
                    || opts.opt_rename.is_some()
                {
                    return Err(PlanError::Unsupported("wildcard options".into()));
                }
                let tables: Vec<&ScopeTable> = match it {
                    SelectItem::QualifiedWildcard(kind, _) => {
                        let q = match kind {
                            ast::SelectItemQualifiedWildcardKind::ObjectName(n) => object_name(n)?,
                            ast::SelectItemQualifiedWildcardKind::Expr(e) => {
                                return Err(PlanError::Unsupported(format!("{e}.*")))
                            }
                        };
                        vec![&scope.tables[scope.qualified(&q)?]]
                    }
                    _ => scope.tables.iter().collect(),
                };
                for t in tables {
                    for (i, c) in t.schema.columns.iter().enumerate() {
                        items.push((Item::Col(t.offset + i), c.name.clone()));
                    }
                }
            }
        }
    }

    // WHERE.
    let filter = match &s.selection {
        Some(w) if bind_where => {
            let mut b = Binder::new(scope, "WHERE");
            let e = b.bind(w)?;
            Some(bool_clause(&b, e, "WHERE")?)
        }
        _ => None,
    };

    // GROUP BY (ordinals and output aliases allowed).
    let group_asts: Vec<&ast::Expr> = match &s.group_by {
        ast::GroupByExpr::Expressions(g, m) if m.is_empty() => g.iter().collect(),
        _ => {
            return Err(PlanError::Unsupported(
                "GROUP BY ALL / ROLLUP / CUBE".into(),
            ))
        }
    };
    let mut groups: Vec<Expr> = Vec::new();
    for g in group_asts {
        let resolved: Result<Expr, PlanError> = (|| {
            if let ast::Expr::Value(v) = g {
                if let ast::Value::Number(n, _) = &v.value {
                    let k: usize = n.parse().unwrap_or(0);
                    if k == 0 || k > items.len() {
                        return Err(PlanError::InvalidReference {
                            code: "42P10",
                            msg: format!("GROUP BY position {n} is not in select list"),
                        });
                    }
                    return match &items[k - 1].0 {
                        Item::Col(i) => Ok(Expr::Column(*i)),
                        Item::Ast(e) => Binder::new(scope, "GROUP BY").bind(e),
                    };
                }
            }
            match Binder::new(scope, "GROUP BY").bind(g) {
                Err(PlanError::UndefinedColumn(c)) => {
                    // An output alias?
                    if let ast::Expr::Identifier(i) = g {
                        let n = ident(i);
                        if let Some((Item::Ast(e), _)) = items.iter().find(|(_, name)| *name == n) {
                            return Binder::new(scope, "GROUP BY").bind(e);
                        }
                    }
                    Err(PlanError::UndefinedColumn(c))
                }
                r => r,
            }
        })();
        let e = resolved?;
        if !groups.contains(&e) {
            groups.push(e);
        }
    }

    // Outputs, HAVING and ORDER BY over the extended scope.
    let mut aggs: Vec<(AggCall, DataType)> = Vec::new();
    let mut outputs: Vec<Expr> = Vec::new();
    for (it, _) in &items {
        outputs.push(match it {
            Item::Col(i) => Expr::Column(*i),
            Item::Ast(e) => Binder::with_aggs(scope, &mut aggs, "SELECT").bind(e)?,
        });
    }
    let having = match &s.having {
        Some(h) => {
            let mut b = Binder::with_aggs(scope, &mut aggs, "HAVING");
            let e = b.bind(h)?;
            Some(bool_clause(&b, e, "HAVING")?)
        }
        None => None,
    };
    // Order keys: Ok(output index) or Err(hidden expression).
    let mut order: Vec<(Result<usize, Expr>, bool, bool)> = Vec::new();
    if let Some(ob) = &q.order_by {
        let exprs = match &ob.kind {
            ast::OrderByKind::Expressions(e) => e,
            ast::OrderByKind::All(_) => return Err(PlanError::Unsupported("ORDER BY ALL".into())),
        };
        if ob.interpolate.is_some() {
            return Err(PlanError::Unsupported("ORDER BY INTERPOLATE".into()));
        }
        for o in exprs {
            if o.with_fill.is_some() {
                return Err(PlanError::Unsupported("WITH FILL".into()));
            }
            let desc = o.options.asc == Some(false);
            let nulls_first = o.options.nulls_first.unwrap_or(desc);
            let target: Result<usize, Expr> = match &o.expr {
                ast::Expr::Value(v) if matches!(v.value, ast::Value::Number(..)) => {
                    let ast::Value::Number(n, _) = &v.value else {
                        unreachable!()
                    };
                    let k: usize = n.parse().unwrap_or(0);
                    if k == 0 || k > items.len() {
                        return Err(PlanError::InvalidReference {
                            code: "42P10",
                            msg: format!("ORDER BY position {n} is not in select list"),
                        });
                    }
                    Ok(k - 1)
                }
                ast::Expr::Identifier(i) if items.iter().any(|(_, name)| *name == ident(i)) => {
                    let n = ident(i);
                    let ks: Vec<usize> = (0..items.len()).filter(|&k| items[k].1 == n).collect();
                    if ks.iter().any(|&k| outputs[k] != outputs[ks[0]]) {
                        // `SELECT * FROM a, b ORDER BY id` with an `id` in each.
                        return Err(PlanError::InvalidReference {
                            code: "42702",
                            msg: format!("ORDER BY \"{n}\" is ambiguous"),
                        });
                    }
                    Ok(ks[0])
                }
                e => {
                    let x = Binder::with_aggs(scope, &mut aggs, "ORDER BY").bind(e)?;
                    match outputs.iter().position(|o| *o == x) {
                        Some(k) => Ok(k),
                        None => Err(x),
                    }
                }
            };
            order.push((target, desc, nulls_first));
        }
    }
    let distinct = matches!(s.distinct, Some(ast::Distinct::Distinct));
    if distinct && order.iter().any(|(t, _, _)| t.is_err()) {
        return Err(PlanError::InvalidReference {
            code: "42P10",
            msg: "for SELECT DISTINCT, ORDER BY expressions must appear in select list".into(),
        });
    }
    let (offset, limit) = limits(q)?;

    // Types over the extended scope.
    let tb = Binder {
        scope,
        aggs: Some(&mut aggs),
        clause: "SELECT",
    };
    let types: Vec<DataType> = outputs.iter().map(|e| tb.ty(e)).collect::<Result<_, _>>()?;
    let columns: Vec<(String, DataType)> = items
        .iter()
        .map(|(_, n)| n.clone())
        .zip(types.iter().copied())
        .collect();
    let agg_mode = !groups.is_empty() || !aggs.is_empty() || having.is_some();

    let mut hidden: Vec<Expr> = Vec::new();
    let mut keys: Vec<SortKey> = Vec::new();
    let nout = outputs.len();
    let mut key_exprs = Vec::new();
    for (t, desc, nf) in order {
        let column = match t {
            Ok(k) => k,
            Err(x) => {
                key_exprs.push(x);
                nout + key_exprs.len() - 1
            }
        };
        keys.push(SortKey {
            column,
            descending: desc,
            nulls_first: nf,
        });
    }

    let fragment;
    let finish;
    if agg_mode {
        let agg = PartialAgg {
            group_by: groups.clone(),
            aggs: aggs.iter().map(|(c, _)| c.clone()).collect(),
        };
        let mut exprs = Vec::new();
        for (o, t) in outputs.into_iter().zip(&types) {
            exprs.push(cast_to(rewrite_agg(o, &groups, scope)?, *t));
        }
        for k in key_exprs {
            hidden.push(rewrite_agg(k, &groups, scope)?);
        }
        exprs.extend(hidden);
        let having = match having {
            Some(h) => Some(rewrite_agg(h, &groups, scope)?),
            None => None,
        };
        fragment = Fragment {
            table: table.clone(),
            filter,
            projection: vec![],
            partial_agg: Some(agg.clone()),
        };
        finish = Finish {
            agg: Some(agg),
            table_schema: scope.schema.clone(),
            having,
            exprs,
            distinct,
            order_by: keys,
            offset,
            limit,
            columns: columns.clone(),
        };
    } else {
        // Row-wise expressions are computed on the Tstores; only they leave.
        let mut needed: Vec<Expr> = Vec::new();
        let mut pos = |e: Expr| -> usize {
            match needed.iter().position(|n| *n == e) {
                Some(p) => p,
                None => {
                    needed.push(e);
                    needed.len() - 1
                }
            }
        };
        let out_idx: Vec<usize> = outputs.into_iter().map(&mut pos).collect();
        let key_idx: Vec<usize> = key_exprs.into_iter().map(&mut pos).collect();
        let mut exprs: Vec<Expr> = out_idx
            .iter()
            .zip(&types)
            .map(|(&i, &t)| cast_to(Expr::Column(i), t))
            .collect();
        exprs.extend(key_idx.iter().map(|&i| Expr::Column(i)));
        // Constant sort keys do not order anything.
        keys.retain(|k| k.column < nout || has_columns(&needed[key_idx[k.column - nout]]));
        if distinct {
            // Pre-distinct on every Tstore (a GROUP BY on the outputs without
            // aggregates); the merge of the partial states is the final DISTINCT.
            let agg = PartialAgg {
                group_by: needed,
                aggs: vec![],
            };
            fragment = Fragment {
                table: table.clone(),
                filter,
                projection: vec![],
                partial_agg: Some(agg.clone()),
            };
            finish = Finish {
                agg: Some(agg),
                table_schema: scope.schema.clone(),
                having: None,
                exprs,
                distinct: false,
                order_by: keys,
                offset,
                limit,
                columns: columns.clone(),
            };
        } else {
            fragment = Fragment {
                table: table.clone(),
                filter,
                projection: needed,
                partial_agg: None,
            };
            finish = Finish {
                agg: None,
                table_schema: scope.schema.clone(),
                having: None,
                exprs,
                distinct: false,
                order_by: keys,
                offset,
                limit,
                columns: columns.clone(),
            };
        }
    }
    Ok(QueryPlan {
        table,
        join: None,
        fragment,
        finish,
        columns,
        input_schemas: vec![],
    })
}
