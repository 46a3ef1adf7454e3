//! PostgreSQL's type rules where DataFusion's coercion is looser, checked on the bound
//! plan before DataFusion coerces it:
//! - an operator between a text expression and a number, a boolean or a date:
//!   PostgreSQL has no such operator (42883); DataFusion would cast the text and fail
//!   row by row, or compare as text;
//! - CASE branches, or UNION columns, of different kinds (42804);
//! - an INSERT or UPDATE value whose type has no assignment cast to its column's type,
//!   such as a boolean into an integer or a text into a number (42804).
//!
//! A string literal has PostgreSQL's unknown type: it takes the type of what it meets
//! (`d = '2024-01-01'`, `INSERT ... VALUES ('5')` into an integer), so it passes here
//! and a malformed one fails as a value (22P02, 22007).

use std::collections::HashSet;

use arrow_schema::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{
    BinaryExpr, Case, Expr, ExprSchemable, LogicalPlan, Operator, WriteOp,
};
use smrdb_tstore::SqlType;

use crate::error::PlanError;

/// The kinds PostgreSQL keeps apart.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Text,
    Number,
    Bool,
    Time,
    /// Intervals, NULL, nested types: not checked here.
    Other,
}

fn kind(t: &DataType) -> Kind {
    use DataType as T;
    match t {
        T::Utf8 | T::LargeUtf8 | T::Utf8View => Kind::Text,
        T::Int8
        | T::Int16
        | T::Int32
        | T::Int64
        | T::UInt8
        | T::UInt16
        | T::UInt32
        | T::UInt64
        | T::Float16
        | T::Float32
        | T::Float64
        | T::Decimal32(..)
        | T::Decimal64(..)
        | T::Decimal128(..)
        | T::Decimal256(..) => Kind::Number,
        T::Boolean => Kind::Bool,
        T::Date32 | T::Date64 | T::Timestamp(..) => Kind::Time,
        _ => Kind::Other,
    }
}

/// PostgreSQL's name of a type, for messages.
fn pg_name(t: &DataType) -> String {
    SqlType::from_arrow(t).map_or_else(|| t.to_string(), |s| s.to_string().to_lowercase())
}

/// A string literal (PostgreSQL's `unknown`), possibly under an alias.
fn is_string_literal(e: &Expr) -> bool {
    match e {
        Expr::Alias(a) => is_string_literal(&a.expr),
        Expr::Literal(v, _) => matches!(
            v,
            ScalarValue::Utf8(_) | ScalarValue::LargeUtf8(_) | ScalarValue::Utf8View(_)
        ),
        _ => false,
    }
}

/// PostgreSQL's operator symbol.
fn symbol(op: &Operator) -> Option<&'static str> {
    Some(match op {
        Operator::Eq => "=",
        Operator::NotEq => "<>",
        Operator::Lt => "<",
        Operator::LtEq => "<=",
        Operator::Gt => ">",
        Operator::GtEq => ">=",
        Operator::IsDistinctFrom => "IS DISTINCT FROM",
        Operator::IsNotDistinctFrom => "IS NOT DISTINCT FROM",
        Operator::Plus => "+",
        Operator::Minus => "-",
        Operator::Multiply => "*",
        Operator::Divide => "/",
        Operator::Modulo => "%",
        _ => return None,
    })
}

/// Checks `plan` (as bound, not yet coerced) and its subqueries. `cast_columns`: the
/// columns an UPDATE sets to an explicit `CAST(...)` (whose type the user chose).
///
/// # Errors
/// 42883 for an operator PostgreSQL does not have, 42804 for CASE branches or an
/// assignment of kinds that do not meet.
pub fn check(plan: &LogicalPlan, cast_columns: &HashSet<String>) -> Result<(), PlanError> {
    // A PlanError travels through DataFusion's visitors as an External error and
    // comes back out as itself (PlanError::from).
    let external = |e: PlanError| DataFusionError::External(Box::new(e));
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Dml(d) = node {
            let target = d.target.schema();
            check_assignments(&d.op, &d.input, target.as_ref(), cast_columns).map_err(external)?;
            return Ok(TreeNodeRecursion::Continue);
        }
        if let LogicalPlan::Union(u) = node {
            check_union(&u.inputs).map_err(external)?;
        }
        let schema = input_schema(node);
        node.apply_expressions(|e| {
            e.apply(|x| {
                check_expr(x, &schema).map_err(external)?;
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })
    .map(|_| ())
    .map_err(PlanError::from)
}

/// 42804 if a column of a UNION's inputs mixes kinds (PostgreSQL does not turn an
/// INTEGER into TEXT to match); a string literal or NULL matches any.
fn check_union(inputs: &[std::sync::Arc<LogicalPlan>]) -> Result<(), PlanError> {
    let Some(first) = inputs.first() else {
        return Ok(());
    };
    for i in 0..first.schema().fields().len() {
        let mut seen: Option<DataType> = None;
        for input in inputs {
            let Some(f) = input.schema().fields().get(i) else {
                continue;
            };
            let t = f.data_type();
            if kind(t) == Kind::Other || unknown_column(input, i) {
                continue;
            }
            match &seen {
                Some(t0) if kind(t0) != kind(t) => {
                    return Err(PlanError::TypeMismatch(format!(
                        "UNION types {} and {} cannot be matched",
                        pg_name(t0),
                        pg_name(t)
                    )));
                }
                Some(_) => {}
                None => seen = Some(t.clone()),
            }
        }
    }
    Ok(())
}

/// The schema a node's expressions see: its inputs' together.
fn input_schema(node: &LogicalPlan) -> DFSchema {
    let mut schema = DFSchema::empty();
    for i in node.inputs() {
        schema.merge(i.schema());
    }
    schema
}

/// The type of `e`, if it can be known here (a correlated column of an outer query
/// cannot: it is checked with that query).
fn type_of(e: &Expr, schema: &DFSchema) -> Option<DataType> {
    e.get_type(schema).ok()
}

fn check_expr(e: &Expr, schema: &DFSchema) -> Result<(), PlanError> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let Some(sym) = symbol(op) else {
                return Ok(());
            };
            let (Some(l), Some(r)) = (type_of(left, schema), type_of(right, schema)) else {
                return Ok(());
            };
            let (kl, kr) = (kind(&l), kind(&r));
            // A string literal in arithmetic takes the number's type: one that is
            // not a number fails as PostgreSQL's input of that type does.
            let arithmetic = matches!(
                op,
                Operator::Plus
                    | Operator::Minus
                    | Operator::Multiply
                    | Operator::Divide
                    | Operator::Modulo
            );
            for (lit, other, k_other) in [(left, &r, kr), (right, &l, kl)] {
                if arithmetic && k_other == Kind::Number {
                    if let Expr::Literal(v, _) = lit.as_ref() {
                        if let Some(text) = v.try_as_str().flatten() {
                            if text.trim().parse::<f64>().is_err() {
                                return Err(PlanError::InvalidText(format!(
                                    "invalid input syntax for type {}: \"{text}\"",
                                    pg_name(other)
                                )));
                            }
                        }
                    }
                }
            }
            let text_meets_other = |k_text: Kind, k_other: Kind, text_side: &Expr| {
                k_text == Kind::Text
                    && matches!(k_other, Kind::Number | Kind::Bool | Kind::Time)
                    && !is_string_literal(text_side)
            };
            if text_meets_other(kl, kr, left) || text_meets_other(kr, kl, right) {
                return Err(PlanError::UndefinedFunction(format!(
                    "operator does not exist: {} {sym} {}; you might need to add explicit type casts",
                    pg_name(&l),
                    pg_name(&r)
                )));
            }
            Ok(())
        }
        Expr::Case(Case {
            when_then_expr,
            else_expr,
            ..
        }) => {
            let branches = when_then_expr
                .iter()
                .map(|(_, t)| t.as_ref())
                .chain(else_expr.as_deref());
            let mut seen: Option<(Kind, DataType)> = None;
            for b in branches {
                if is_string_literal(b) {
                    continue;
                }
                let Some(t) = type_of(b, schema) else {
                    continue;
                };
                let k = kind(&t);
                if k == Kind::Other {
                    continue;
                }
                match &seen {
                    None => seen = Some((k, t)),
                    Some((k0, t0)) if *k0 != k => {
                        return Err(PlanError::TypeMismatch(format!(
                            "CASE types {} and {} cannot be matched",
                            pg_name(t0),
                            pg_name(&t)
                        )));
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Whether PostgreSQL assigns a value of kind `from` to a column of kind `to`
/// (an assignment cast exists): within a kind, numbers among themselves, and
/// anything into text.
fn assignable(from: Kind, to: Kind) -> bool {
    from == to || to == Kind::Text || from == Kind::Other || to == Kind::Other
}

/// The source expression of output column `i` of an INSERT's input, if it is a
/// string literal in every row (then it is of unknown type).
fn unknown_column(input: &LogicalPlan, i: usize) -> bool {
    match input {
        LogicalPlan::Values(v) => v.values.iter().all(|row| {
            row.get(i).is_some_and(|e| {
                is_string_literal(e) || matches!(e, Expr::Literal(ScalarValue::Null, _))
            })
        }),
        LogicalPlan::Projection(p) => p.expr.get(i).is_some_and(is_string_literal),
        LogicalPlan::SubqueryAlias(s) => unknown_column(&s.input, i),
        _ => false,
    }
}

fn check_assignments(
    op: &WriteOp,
    input: &LogicalPlan,
    target: &arrow_schema::Schema,
    cast_columns: &HashSet<String>,
) -> Result<(), PlanError> {
    let LogicalPlan::Projection(p) = input else {
        return Ok(());
    };
    if !matches!(op, WriteOp::Insert(_) | WriteOp::Update) {
        return Ok(());
    }
    for (i, e) in p.expr.iter().enumerate() {
        let Some(field) = target.fields().get(i) else {
            continue;
        };
        let e = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        // INSERT ... VALUES: the rows' values as written (the VALUES list takes the
        // columns' types as its schema; its values are cast later).
        if let (LogicalPlan::Values(v), Expr::Column(col)) = (p.input.as_ref(), e) {
            let Ok(j) = p.input.schema().index_of_column(col) else {
                continue;
            };
            for row in &v.values {
                // The planner casts the values to the columns' types already.
                let value = match row.get(j) {
                    Some(Expr::Cast(c)) => c.expr.as_ref(),
                    Some(v) => v,
                    None => continue,
                };
                if is_string_literal(value) {
                    continue;
                }
                let Some(from) = type_of(value, &DFSchema::empty()) else {
                    continue;
                };
                mismatch(field, &from)?;
            }
            continue;
        }
        // The planner casts each value to its column's type; what is under that cast
        // is the value as written.
        let Expr::Cast(c) = e else {
            continue;
        };
        if c.field.data_type() != field.data_type() {
            continue;
        }
        let value = c.expr.as_ref();
        let unknown = match (op, value) {
            (WriteOp::Insert(_), Expr::Column(col)) => p
                .input
                .schema()
                .index_of_column(col)
                .is_ok_and(|j| unknown_column(&p.input, j)),
            (WriteOp::Update, _) if cast_columns.contains(field.name()) => true,
            (_, v) => is_string_literal(v),
        };
        if unknown {
            continue;
        }
        let Some(from) = type_of(value, p.input.schema()) else {
            continue;
        };
        mismatch(field, &from)?;
    }
    Ok(())
}

/// 42804 if a value of type `from` has no assignment cast to `field`'s type.
fn mismatch(field: &arrow_schema::Field, from: &DataType) -> Result<(), PlanError> {
    if assignable(kind(from), kind(field.data_type())) {
        return Ok(());
    }
    Err(PlanError::TypeMismatch(format!(
        "column \"{}\" is of type {} but expression is of type {}; you will need to rewrite or cast the expression",
        field.name(),
        pg_name(field.data_type()),
        pg_name(from)
    )))
}

/// PostgreSQL's type for an integer literal in arithmetic, set before DataFusion
/// coerces: one that fits INTEGER is an INTEGER next to a SMALLINT or INTEGER operand
/// (DataFusion makes every integer literal a BIGINT, so `i * 2` on an INTEGER column
/// would compute in BIGINT and never overflow as PostgreSQL's does). Rewritten
/// expressions keep their names (the nodes above refer to them by name); nodes whose
/// expressions change get their schemas recomputed.
///
/// # Errors
/// A plan whose schema cannot be recomputed (a bug).
pub fn integer_literals(plan: LogicalPlan) -> Result<LogicalPlan, PlanError> {
    plan.transform_up_with_subqueries(|node| {
        if node.inputs().is_empty() {
            return Ok(Transformed::no(node));
        }
        let schema = input_schema(&node);
        let names = NamePreserver::new(&node);
        let t = node.map_expressions(|e| {
            let saved = names.save(&e);
            Ok(e.transform_up(|x| narrow(x, &schema))?
                .update_data(|e| saved.restore(e)))
        })?;
        if t.transformed {
            t.map_data(|n| n.recompute_schema())
        } else {
            Ok(t)
        }
    })
    .map(|t| t.data)
    .map_err(PlanError::from)
}

fn narrow(e: Expr, schema: &DFSchema) -> datafusion::common::Result<Transformed<Expr>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else {
        return Ok(Transformed::no(e));
    };
    if !matches!(
        op,
        Operator::Plus | Operator::Minus | Operator::Multiply | Operator::Divide | Operator::Modulo
    ) {
        return Ok(Transformed::no(e));
    }
    let int32 = |lit: &Expr, other: &Expr| -> Option<Expr> {
        let Expr::Literal(ScalarValue::Int64(Some(v)), m) = lit else {
            return None;
        };
        let t = type_of(other, schema)?;
        if !matches!(t, DataType::Int8 | DataType::Int16 | DataType::Int32) {
            return None;
        }
        let v = i32::try_from(*v).ok()?;
        Some(Expr::Literal(ScalarValue::Int32(Some(v)), m.clone()))
    };
    let (l, r) = match (int32(right, left), int32(left, right)) {
        (Some(r), _) => ((**left).clone(), r),
        (None, Some(l)) => (l, (**right).clone()),
        (None, None) => return Ok(Transformed::no(e)),
    };
    Ok(Transformed::yes(Expr::BinaryExpr(BinaryExpr::new(
        Box::new(l),
        *op,
        Box::new(r),
    ))))
}
