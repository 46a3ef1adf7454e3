//! SQL text -> DataFusion logical plan -> DataFusion physical plan -> distributed plan.
//!
//! * [`frontend`]: DataFusion's SQL planner binds statements against our
//!   [`Catalog`] (a `ContextProvider`), its optimizer rewrites them, its physical
//!   planner makes one single-node plan whose leaves scan Tstore slices.
//! * [`reorder`]: joins ordered by estimated size ([`estimate`]), not by the FROM
//!   clause.
//! * [`distribute`]: that plan cut into stages joined by exchanges (gather,
//!   broadcast), with the pivot of every join and why.
//! * [`explain`]: EXPLAIN [ANALYZE] text.
//! * [`ddl`] and [`dml`]: CREATE/DROP/COPY/SET, and the parts of INSERT, UPDATE and
//!   DELETE the Tstores need.
//!
//! The crate is pure: no threads, no I/O.
#![deny(missing_docs)]

pub mod catalog;
pub mod ddl;
pub mod distribute;
pub mod dml;
mod error;
pub mod estimate;
pub mod explain;
pub mod frontend;
pub mod names;
mod pgtypes;
pub mod reorder;

use datafusion::common::DFSchemaRef;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::sql::sqlparser::ast::{self, Statement};
use serde::{Deserialize, Serialize};

pub use catalog::Catalog;
pub use distribute::{distribute, Broadcast, DistOptions, DistPlan, Exchange, Stage};
pub use error::PlanError;
pub use explain::{explain_lines, Analysis, OperatorMetrics};
pub use frontend::Frontend;
pub use smrdb_tstore::{SqlType, TableSchema};

/// `SET smrdb.overlap = on|off`: compare while receiving (the design), or wait for
/// whole join tables (the overlap experiment).
pub const OVERLAP_SETTING: &str = "smrdb.overlap";
/// `SET smrdb.pivot = 'alias'` forces the input that stays in place.
pub const PIVOT_SETTING: &str = "smrdb.pivot";

/// The value of a boolean setting as PostgreSQL spells booleans.
///
/// # Errors
/// 22023 for anything else.
pub fn parse_bool_setting(name: &str, value: &str) -> Result<bool, PlanError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" | "t" | "y" => Ok(true),
        "off" | "false" | "no" | "0" | "f" | "n" => Ok(false),
        _ => Err(PlanError::Other {
            code: "22023",
            msg: format!("parameter \"{name}\" requires a Boolean value, not '{value}'"),
        }),
    }
}

/// A query: its optimized logical plan (distributed by [`Planner::distribute`] once
/// its scalar subqueries have values).
#[derive(Debug, Clone)]
pub struct Query {
    /// The optimized plan.
    pub plan: LogicalPlan,
    /// The output columns' names as PostgreSQL gives them (`count`, `?column?`...).
    pub names: Vec<String>,
}

impl Query {
    /// Output Arrow fields (DataFusion's names).
    pub fn schema(&self) -> DFSchemaRef {
        self.plan.schema().clone()
    }

    /// The output schema with PostgreSQL's column names.
    pub fn arrow_schema(&self) -> arrow_schema::SchemaRef {
        let s = self.plan.schema().as_arrow();
        if self.names.len() != s.fields().len() {
            return std::sync::Arc::new(s.clone());
        }
        std::sync::Arc::new(arrow_schema::Schema::new_with_metadata(
            s.fields()
                .iter()
                .zip(&self.names)
                .map(|(f, n)| f.as_ref().clone().with_name(n))
                .collect::<Vec<_>>(),
            s.metadata().clone(),
        ))
    }
}

/// The name PostgreSQL gives a select-list expression's column.
fn pg_name(e: &Expr) -> String {
    match e {
        Expr::Alias(a) => names::pg_column_name(&a.name).to_string(),
        Expr::Column(c) => names::pg_column_name(&c.name).to_string(),
        Expr::Cast(c) => pg_name(&c.expr),
        Expr::TryCast(c) => pg_name(&c.expr),
        Expr::AggregateFunction(f) => f.func.name().to_string(),
        Expr::ScalarFunction(f) => f.func.name().to_string(),
        Expr::WindowFunction(w) => w.fun.name().to_string(),
        Expr::Case(_) => "case".into(),
        Expr::Exists(_) => "exists".into(),
        Expr::ScalarSubquery(s) => s
            .subquery
            .schema()
            .fields()
            .first()
            .map(|f| f.name().clone())
            .unwrap_or_else(|| "?column?".into()),
        _ => "?column?".into(),
    }
}

/// PostgreSQL's names of a bound query's output columns (from its outermost
/// projection), or its own names when there is none to read them from.
fn pg_names(plan: &LogicalPlan) -> Vec<String> {
    match plan {
        LogicalPlan::Projection(p) => p.expr.iter().map(pg_name).collect(),
        LogicalPlan::Sort(s) => pg_names(&s.input),
        LogicalPlan::Limit(l) => pg_names(&l.input),
        LogicalPlan::Distinct(d) => pg_names(d.input()),
        LogicalPlan::SubqueryAlias(_) | LogicalPlan::Union(_) | _ => plan
            .schema()
            .fields()
            .iter()
            .map(|f| names::pg_column_name(f.name()).to_string())
            .collect(),
    }
}

/// One planned statement.
#[derive(Debug, Clone)]
pub enum Plan {
    /// CREATE TABLE.
    CreateTable {
        /// Name.
        name: String,
        /// Columns.
        schema: TableSchema,
        /// IF NOT EXISTS.
        if_not_exists: bool,
    },
    /// DROP TABLE.
    DropTable {
        /// Names.
        names: Vec<String>,
        /// IF EXISTS.
        if_exists: bool,
    },
    /// A query.
    Query(Query),
    /// EXPLAIN [ANALYZE] of a query.
    Explain {
        /// Run it and report what it measured.
        analyze: bool,
        /// The query.
        query: Query,
    },
    /// INSERT: `query`'s rows, already of the table's column types and in its column
    /// order, go to the Tstores round-robin.
    Insert {
        /// Table.
        table: String,
        /// The rows to insert.
        query: Query,
    },
    /// COPY ... FROM.
    Copy {
        /// Table.
        table: String,
        /// File or STDIN.
        source: CopySource,
        /// CSV or text format details.
        format: CsvFormat,
    },
    /// UPDATE: `column = expression` where `filter` holds, expressions over the
    /// table's columns (`schema`).
    Update {
        /// Table.
        table: String,
        /// (column index, new value).
        assignments: Vec<(usize, Expr)>,
        /// WHERE.
        filter: Option<Expr>,
        /// The table's columns as the statement names them.
        schema: DFSchemaRef,
    },
    /// DELETE where `filter` holds.
    Delete {
        /// Table.
        table: String,
        /// WHERE.
        filter: Option<Expr>,
        /// The table's columns as the statement names them.
        schema: DFSchemaRef,
    },
    /// SET name = value.
    Set {
        /// Lower-case name.
        name: String,
        /// Value text.
        value: String,
    },
    /// SHOW name.
    Show {
        /// Name.
        name: String,
    },
    /// BEGIN / COMMIT / ROLLBACK (accepted; statements are not transactional).
    Transaction {
        /// The statement's first word.
        kind: String,
    },
}

/// Where COPY reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopySource {
    /// A server-side file.
    File(String),
    /// The client's COPY data.
    Stdin,
}

/// COPY's format (CSV, or PostgreSQL's text format with `quote` 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvFormat {
    /// A header line to skip.
    pub header: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// The text of NULL.
    pub null: String,
    /// Quote character (0: none, the text format).
    pub quote: u8,
    /// Target columns (all, in order, when `None`).
    pub columns: Option<Vec<usize>>,
}

/// The planner: a DataFusion front end and our distribution.
#[derive(Debug, Clone)]
pub struct Planner {
    fe: Frontend,
}

impl Planner {
    /// A planner.
    ///
    /// # Errors
    /// A DataFusion configuration error (a bug).
    pub fn new() -> Result<Planner, PlanError> {
        Ok(Planner {
            fe: Frontend::new()?,
        })
    }

    /// The front end.
    pub fn frontend(&self) -> &Frontend {
        &self.fe
    }

    /// Plans every statement of `sql`.
    ///
    /// # Errors
    /// The first statement's error, with its SQLSTATE.
    pub fn plan_sql(&self, sql: &str, catalog: &dyn Catalog) -> Result<Vec<Plan>, PlanError> {
        Frontend::parse(sql)?
            .into_iter()
            .map(|s| self.plan_statement(s, catalog))
            .collect()
    }

    fn query(&self, stmt: Statement, catalog: &dyn Catalog) -> Result<Query, PlanError> {
        let bound = self.fe.bind(stmt, catalog)?;
        Ok(Query {
            names: pg_names(&bound),
            plan: self.fe.optimize(&bound)?,
        })
    }

    fn plan_statement(&self, stmt: Statement, catalog: &dyn Catalog) -> Result<Plan, PlanError> {
        match stmt {
            Statement::Query(_) => Ok(Plan::Query(self.query(stmt, catalog)?)),
            Statement::Explain {
                describe_alias,
                analyze,
                query_plan,
                estimate,
                statement,
                format,
                options,
                ..
            } => {
                if describe_alias != ast::DescribeAlias::Explain
                    || query_plan
                    || estimate
                    || format.is_some()
                {
                    return Err(PlanError::Unsupported(
                        "only EXPLAIN [ANALYZE] [VERBOSE] is supported".into(),
                    ));
                }
                let analyze = analyze || analyze_option(options.as_deref())?;
                match *statement {
                    s @ Statement::Query(_) => Ok(Plan::Explain {
                        analyze,
                        query: self.query(s, catalog)?,
                    }),
                    _ => Err(PlanError::Unsupported(
                        "EXPLAIN of anything but a query".into(),
                    )),
                }
            }
            Statement::CreateTable(ct) => ddl::create_table(&ct, catalog),
            Statement::Drop {
                object_type,
                if_exists,
                names,
                ..
            } => ddl::drop_table(object_type, if_exists, &names, catalog),
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => ddl::copy(&source, to, &target, &options, &legacy_options, catalog),
            s @ (Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_)) => {
                match self.fe.bind(s, catalog)? {
                    LogicalPlan::Dml(d) => dml::plan_dml(&self.fe, &d),
                    other => Err(PlanError::Internal(format!(
                        "a write bound to {}",
                        other.display()
                    ))),
                }
            }
            Statement::Set(s) => ddl::set(&s),
            Statement::ShowVariable { variable } => {
                // sqlparser splits `smrdb.overlap` and `TRANSACTION ISOLATION LEVEL`
                // alike into words; PostgreSQL's multi-word names map to their settings.
                let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
                let words: Vec<&str> = words.iter().map(String::as_str).collect();
                let name = match words.as_slice() {
                    ["time", "zone"] => "timezone".to_string(),
                    ["transaction", "isolation", "level"] => "transaction_isolation".to_string(),
                    w => w.join("."),
                };
                Ok(Plan::Show { name })
            }
            Statement::StartTransaction { statements, .. } if statements.is_empty() => {
                Ok(Plan::Transaction {
                    kind: "BEGIN".into(),
                })
            }
            Statement::Commit { end: false, .. } => Ok(Plan::Transaction {
                kind: "COMMIT".into(),
            }),
            Statement::Rollback {
                savepoint: None, ..
            } => Ok(Plan::Transaction {
                kind: "ROLLBACK".into(),
            }),
            other => {
                let text = other.to_string();
                let head: String = text
                    .split_whitespace()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                Err(PlanError::Unsupported(format!("statement {head}")))
            }
        }
    }

    /// Distributes a query whose scalar subqueries have been replaced by their values
    /// ([`frontend::substitute_scalar_subqueries`]).
    ///
    /// # Errors
    /// Planning errors with their SQLSTATEs.
    pub fn distribute(
        &self,
        plan: &LogicalPlan,
        opts: &DistOptions,
    ) -> Result<DistPlan, PlanError> {
        let physical = self.fe.physical(plan)?;
        distribute(&physical, opts)
    }
}

/// `EXPLAIN (ANALYZE [bool], VERBOSE [bool], ...)`: whether ANALYZE is on.
///
/// # Errors
/// Options other than ANALYZE, VERBOSE, COSTS, TIMING, SUMMARY and BUFFERS, or a
/// non-boolean argument.
fn analyze_option(options: Option<&[ast::UtilityOption]>) -> Result<bool, PlanError> {
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
