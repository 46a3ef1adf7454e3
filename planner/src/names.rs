//! Repeated output names in a select list.
//!
//! PostgreSQL accepts `SELECT a, a FROM t` and `SELECT 1 AS x, 2 AS x` (two output
//! columns of the same name); DataFusion's planner insists on unique names. Before
//! binding, every repeat of an item's name in a select list gets a private alias: the
//! PostgreSQL name, [`MARK`], and the item's position. [`pg_column_name`] strips the
//! mark again, so clients see the names PostgreSQL gives.

use std::collections::HashSet;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Ident, ObjectNamePart, Query, SelectItem, SetExpr, Statement, VisitMut, VisitorMut,
};

/// Separates a column's PostgreSQL name from the suffix that made it unique.
pub const MARK: char = '\u{1}';

/// A column name as PostgreSQL gives it (without a uniqueness suffix).
pub fn pg_column_name(name: &str) -> &str {
    name.split(MARK).next().unwrap_or(name)
}

/// Gives every repeated name in each select list of `stmt` a unique private alias.
pub fn dedup_select_names(stmt: &mut Statement) {
    let _ = stmt.visit(&mut Dedup);
}

struct Dedup;

impl VisitorMut for Dedup {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        dedup_set_expr(&mut query.body);
        ControlFlow::Continue(())
    }
}

fn dedup_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::Select(s) => dedup_items(&mut s.projection),
        SetExpr::SetOperation { left, right, .. } => {
            dedup_set_expr(left);
            dedup_set_expr(right);
        }
        _ => {}
    }
}

/// An identifier as the planner normalizes it (unquoted: lower case).
fn normal(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// The name PostgreSQL gives an unnamed select-list expression.
fn pg_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => normal(i),
        Expr::CompoundIdentifier(is) => is.last().map(normal).unwrap_or_default(),
        Expr::Function(f) => match f.name.0.last() {
            Some(ObjectNamePart::Identifier(i)) => normal(i),
            _ => "?column?".into(),
        },
        Expr::Cast { expr, .. } | Expr::Nested(expr) => pg_name(expr),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        _ => "?column?".into(),
    }
}

/// An unnamed expression's output name as DataFusion forms it, roughly: its text,
/// without casts (DataFusion names `CAST(a AS INT)` as `a`).
fn key(e: &Expr) -> String {
    match e {
        Expr::Cast { expr, .. } | Expr::Nested(expr) => key(expr),
        _ => e.to_string().to_lowercase(),
    }
}

/// PostgreSQL's name of a scalar subquery's column: its select item's.
fn subquery_name(q: &Query) -> String {
    let SetExpr::Select(s) = &*q.body else {
        return "?column?".into();
    };
    match s.projection.first() {
        Some(SelectItem::UnnamedExpr(e)) => pg_name(e),
        Some(SelectItem::ExprWithAlias { alias, .. }) => normal(alias),
        _ => "?column?".into(),
    }
}

fn dedup_items(items: &mut [SelectItem]) {
    // Keys: an unnamed expression by its text (DataFusion names it by its text), an
    // alias by its name.
    let mut seen = HashSet::new();
    for (pos, item) in items.iter_mut().enumerate() {
        // A scalar subquery is named, as in PostgreSQL, after its column, and always
        // gets a private alias: unnamed, DataFusion names it after the subquery's
        // column, which is ambiguous beside an outer column of that name
        // (`SELECT id, (SELECT id FROM u) FROM t`).
        if let SelectItem::UnnamedExpr(e @ Expr::Subquery(_)) = item {
            let Expr::Subquery(q) = &*e else { continue };
            let alias = Ident::with_quote('"', format!("{}{MARK}{pos}", subquery_name(q)));
            *item = SelectItem::ExprWithAlias {
                expr: e.clone(),
                alias,
            };
            continue;
        }
        let (key, name) = match item {
            SelectItem::UnnamedExpr(e) => (format!("e:{}", key(e)), pg_name(e)),
            SelectItem::ExprWithAlias { alias, .. } => {
                (format!("a:{}", normal(alias)), normal(alias))
            }
            _ => continue,
        };
        if seen.insert(key) {
            continue;
        }
        let alias = Ident::with_quote('"', format!("{name}{MARK}{pos}"));
        if let SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } = item {
            let expr = expr.clone();
            *item = SelectItem::ExprWithAlias { expr, alias };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn dedup(sql: &str) -> String {
        let mut s = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        dedup_select_names(&mut s);
        s.to_string().replace(MARK, "#")
    }

    #[test]
    fn repeats_get_private_aliases_and_firsts_keep_their_names() {
        assert_eq!(
            dedup("SELECT a, A, count(*), count(*), 1 AS x, 2 AS x FROM t"),
            "SELECT a, A AS \"a#1\", count(*), count(*) AS \"count#3\", 1 AS x, 2 AS \"x#5\" FROM t"
        );
        // In subqueries and in every branch's own list; distinct names are untouched.
        assert_eq!(
            dedup("SELECT a, a FROM t UNION SELECT b, b FROM u"),
            "SELECT a, a AS \"a#1\" FROM t UNION SELECT b, b AS \"b#1\" FROM u"
        );
        assert_eq!(
            dedup("SELECT * FROM (SELECT b, b FROM u) s WHERE EXISTS (SELECT c, c + 1 FROM v)"),
            "SELECT * FROM (SELECT b, b AS \"b#1\" FROM u) s WHERE EXISTS (SELECT c, c + 1 FROM v)"
        );
        // A scalar subquery is named after its column, with a private alias.
        assert_eq!(
            dedup("SELECT id, (SELECT id FROM u), (SELECT max(x) AS m FROM v) FROM t"),
            "SELECT id, (SELECT id FROM u) AS \"id#1\", (SELECT max(x) AS m FROM v) AS \"m#2\" FROM t"
        );
        assert_eq!(pg_column_name("a\u{1}1"), "a");
        assert_eq!(pg_column_name("a"), "a");
    }
}
