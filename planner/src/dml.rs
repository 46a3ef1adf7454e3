//! INSERT, UPDATE and DELETE: DataFusion binds them (and coerces the values to the
//! table's types); we take the source query of an INSERT, and the filter and
//! assignments of an UPDATE or DELETE as expressions over the table's columns.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::{DmlStatement, Expr, LogicalPlan, WriteOp};

use crate::error::PlanError;
use crate::frontend::Frontend;
use crate::{Plan, Query};

/// The table name of a DML target.
fn target(d: &DmlStatement) -> String {
    d.table_name.table().to_string()
}

/// Fails on subqueries other than uncorrelated scalar ones (which the engine
/// evaluates first): the WHERE of an UPDATE or DELETE runs on each Tstore's slice.
fn check_no_subquery(e: &Expr, what: &str) -> Result<(), PlanError> {
    let mut bad = false;
    e.apply(|x| {
        match x {
            Expr::ScalarSubquery(s) if s.outer_ref_columns.is_empty() => {}
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_) => bad = true,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if bad {
        return Err(PlanError::Unsupported(format!(
            "IN / EXISTS / correlated subqueries in the {what} of UPDATE or DELETE"
        )));
    }
    Ok(())
}

/// The scan under a DML input: its schema (the table's columns, qualified as the
/// statement names them).
fn scan_schema(p: &LogicalPlan) -> Result<DFSchemaRef, PlanError> {
    match p {
        LogicalPlan::TableScan(s) if s.projection.is_none() => Ok(s.projected_schema.clone()),
        LogicalPlan::SubqueryAlias(a) => match a.input.as_ref() {
            LogicalPlan::TableScan(s) if s.projection.is_none() => Ok(a.schema.clone()),
            _ => Err(PlanError::Unsupported("this UPDATE / DELETE target".into())),
        },
        _ => Err(PlanError::Unsupported(
            "UPDATE ... FROM and DELETE ... USING".into(),
        )),
    }
}

/// Splits `Filter(pred)? (scan)` into the predicate and the scan's schema.
fn filter_and_scan(p: &LogicalPlan) -> Result<(Option<Expr>, DFSchemaRef), PlanError> {
    match p {
        LogicalPlan::Filter(f) => {
            check_no_subquery(&f.predicate, "WHERE")?;
            Ok((Some(f.predicate.clone()), scan_schema(&f.input)?))
        }
        other => Ok((None, scan_schema(other)?)),
    }
}

/// The plan of a bound DML statement.
pub(crate) fn plan_dml(fe: &Frontend, dml: &DmlStatement) -> Result<Plan, PlanError> {
    let table = target(dml);
    match dml.op {
        WriteOp::Insert(_) => {
            let input = fe.optimize(&dml.input)?;
            Ok(Plan::Insert {
                table,
                query: Query {
                    names: Vec::new(),
                    plan: input,
                },
            })
        }
        WriteOp::Delete => {
            let analyzed = fe.analyze(&LogicalPlan::Dml(dml.clone()))?;
            let LogicalPlan::Dml(d) = analyzed else {
                return Err(PlanError::Internal("DELETE lost its shape".into()));
            };
            let (filter, schema) = filter_and_scan(&d.input)?;
            Ok(Plan::Delete {
                table,
                filter,
                schema,
            })
        }
        WriteOp::Update => {
            let analyzed = fe.analyze(&LogicalPlan::Dml(dml.clone()))?;
            let LogicalPlan::Dml(d) = analyzed else {
                return Err(PlanError::Internal("UPDATE lost its shape".into()));
            };
            let LogicalPlan::Projection(p) = d.input.as_ref() else {
                return Err(PlanError::Internal("UPDATE without its projection".into()));
            };
            let (filter, schema) = filter_and_scan(&p.input)?;
            let mut assignments = Vec::new();
            for (i, e) in p.expr.iter().enumerate() {
                let inner = match e {
                    Expr::Alias(a) => a.expr.as_ref(),
                    other => other,
                };
                // Columns left as they are come back as themselves.
                if let Expr::Column(c) = inner {
                    if schema.index_of_column(c).ok() == Some(i) {
                        continue;
                    }
                }
                check_no_subquery(inner, "SET list")?;
                assignments.push((i, inner.clone()));
            }
            Ok(Plan::Update {
                table,
                assignments,
                filter,
                schema,
            })
        }
        _ => Err(PlanError::Unsupported(format!("{}", dml.op))),
    }
}

/// The physical expressions of an UPDATE or DELETE, as `datafusion-proto` bytes over
/// the table's columns.
///
/// # Errors
/// Expressions DataFusion cannot plan or serialize.
pub fn write_exprs(
    fe: &Frontend,
    schema: &DFSchemaRef,
    assignments: &[(usize, Expr)],
    filter: Option<&Expr>,
) -> Result<(Vec<(usize, Vec<u8>)>, Option<Vec<u8>>), PlanError> {
    let enc = |e: &Expr| -> Result<Vec<u8>, PlanError> {
        let p = fe.physical_expr(e, schema)?;
        Ok(smrdb_tstore::exec::codec::expr_to_bytes(&p)?)
    };
    let a = assignments
        .iter()
        .map(|(i, e)| Ok((*i, enc(e)?)))
        .collect::<Result<Vec<_>, PlanError>>()?;
    let f = filter.map(enc).transpose()?;
    Ok((a, f))
}
