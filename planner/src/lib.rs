//! SQL text -> bound plan -> distributed plan.
//!
//! [`plan_sql`] parses one or more statements (PostgreSQL dialect), binds them against
//! a [`Catalog`] and returns one [`Plan`] per statement. A single-table `SELECT`
//! becomes a [`QueryPlan`]: a [`Fragment`] that every Tstore runs on its slice (filter,
//! projection of only the needed expressions, or grouped partial aggregation) and a
//! [`Finish`] the primary runs over the gathered batches (merge + finalize of partial
//! aggregates, HAVING, final projection, DISTINCT, ORDER BY, OFFSET/LIMIT).
//!
//! A `SELECT` over 2 to 6 tables (`FROM a, b WHERE ...`, `[INNER] JOIN ... ON`,
//! `CROSS JOIN`, aliases, self-joins) is a *multi-set* query: its [`QueryPlan::join`]
//! is a [`JoinSpec`] (the pivot that stays in place, the join tables every Tstore
//! builds and sends, the join steps), and the fragment runs over the *combined row*
//! (the pivot's kept columns, then each join table's, in join order) instead of a
//! table. The join planner pushes one-table conditions into the inputs, takes `x = y`
//! between two tables as hash-join keys, places every other condition at the first
//! step that has its tables, keeps only the columns the query needs, picks the
//! largest join table as the pivot (from [`Catalog::row_count`], or as forced by the
//! `smrdb.pivot` setting) and orders the join tables so that each step has a key and
//! the largest one streams last. Outer, NATURAL and USING joins are not supported.
//!
//! `EXPLAIN [ANALYZE] SELECT ...` is [`Plan::Explain`]; [`explain_lines`] describes a
//! plan in readable lines (pivot and why, join tables, keys, what crosses the network,
//! the Tstore fragment, the primary's post-processing).
//!
//! The crate is pure: no threads, no I/O.
#![deny(missing_docs)]

mod bind;
mod ddl;
mod error;
mod explain;
mod finish;
mod join;
mod select;

use serde::{Deserialize, Serialize};
use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

pub use error::PlanError;
pub use explain::{explain_lines, explain_lines_for, render_expr, Broadcast};
pub use finish::{Finish, SortKey};
pub use join::{parse_bool_setting, OVERLAP_SETTING};
pub use smrdb_tstore::{
    DataType, Expr, Fragment, JoinInput, JoinSpec, JoinStep, PartialAgg, RecordBatch, TableSchema,
    Value,
};

/// What the planner knows about tables (the node implements it over its catalog).
pub trait Catalog {
    /// Schema of `name` (lower-cased), or None.
    fn table(&self, name: &str) -> Option<TableSchema>;
    /// Row count statistics, when known (the join planner's pivot choice uses them).
    fn row_count(&self, _name: &str) -> Option<u64> {
        None
    }
    /// A session setting (lower-cased name), e.g. `smrdb.pivot` to force the pivot
    /// (a table name or alias) for experiments.
    fn setting(&self, _name: &str) -> Option<String> {
        None
    }
}

/// A bound statement.
#[allow(clippy::large_enum_variant)] // the contract's shape (Query unboxed)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Plan {
    /// `CREATE TABLE`.
    CreateTable {
        /// Table name.
        name: String,
        /// Columns.
        schema: TableSchema,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
    },
    /// `DROP TABLE`.
    DropTable {
        /// Tables to drop.
        names: Vec<String>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// Rows already in table column order and coerced to the column types
    /// (omitted columns NULL; NOT NULL violations are errors here when visible).
    Insert {
        /// Target table.
        table: String,
        /// Where the rows come from.
        source: InsertSource,
    },
    /// `COPY t FROM ...` (the node reads the data).
    Copy {
        /// Target table.
        table: String,
        /// File or STDIN.
        source: CopySource,
        /// CSV options (and the column mapping, see [`CsvFormat::columns`]).
        format: CsvFormat,
    },
    /// `UPDATE t SET ... WHERE ...`; expressions over the table's columns.
    Update {
        /// Target table.
        table: String,
        /// (column index, new value expression over the old row).
        assignments: Vec<(usize, Expr)>,
        /// Rows to update (all when None).
        filter: Option<Expr>,
    },
    /// `DELETE FROM t WHERE ...`.
    Delete {
        /// Target table.
        table: String,
        /// Rows to delete (all when None).
        filter: Option<Expr>,
    },
    /// A distributed query (single-table, or multi-set when [`QueryPlan::join`] is set).
    Query(QueryPlan),
    /// `EXPLAIN [ANALYZE] query`.
    Explain {
        /// Run it and report what happened, too.
        analyze: bool,
        /// The query.
        query: Box<QueryPlan>,
    },
    /// SELECT without FROM, evaluated entirely by the planner.
    Values {
        /// Output columns.
        columns: Vec<(String, DataType)>,
        /// Rows, each value of its column's type (or NULL).
        rows: Vec<Vec<Value>>,
    },
    /// `SET name = value` / `SET name TO value`.
    Set {
        /// Lower-cased variable name.
        name: String,
        /// Value text (string literals unquoted).
        value: String,
    },
    /// `SHOW name`.
    Show {
        /// Lower-cased variable name.
        name: String,
    },
    /// BEGIN / COMMIT / ROLLBACK (no-ops, autocommit only).
    Transaction {
        /// `BEGIN`, `COMMIT` or `ROLLBACK`.
        kind: String,
    },
}

/// Rows of an INSERT.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum InsertSource {
    /// Literal rows, in table column order, coerced to the column types.
    Values(Vec<Vec<Value>>),
    /// INSERT ... SELECT: run the query, then map its columns to the target:
    /// `targets[i]` = index in the query output for table column i, or None (NULL).
    /// The query's output types may differ from the table's (numeric widening or
    /// narrowing, TEXT to anything): coerce each value with [`Value::coerce_to`].
    Query {
        /// The query.
        plan: Box<QueryPlan>,
        /// Source column per table column.
        targets: Vec<Option<usize>>,
    },
}

/// Where COPY reads from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CopySource {
    /// A server-side file.
    File(String),
    /// The client's COPY data stream.
    Stdin,
}

/// CSV options of a COPY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvFormat {
    /// First line is a header to skip.
    pub header: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// The string that stands for NULL.
    pub null: String,
    /// Quote character (0: no quoting, PostgreSQL's text format).
    pub quote: u8,
    /// Addition to the contract: `COPY t (c2, c0) ...` — for each field of a record,
    /// the table column index it goes to; `None` means all columns in table order.
    /// Columns not listed are NULL.
    pub columns: Option<Vec<usize>>,
}

/// A SELECT, distributed: every Tstore runs `fragment` on its slice (the secondary
/// query); the primary gathers the result batches and runs `finish`.
///
/// A multi-set query also has [`QueryPlan::join`]: every Tstore first builds its join
/// tables and compares its pivot slice with every Tstore's join tables; `fragment`
/// then runs over the combined row (see [`smrdb_tstore::join`]) instead of a table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryPlan {
    /// Table name (the pivot's, for a multi-set query).
    pub table: String,
    /// The join, for a multi-set query.
    pub join: Option<JoinSpec>,
    /// The secondary query every Tstore runs.
    pub fragment: Fragment,
    /// The primary's post-processing.
    pub finish: Finish,
    /// Output column names and types, in order.
    pub columns: Vec<(String, DataType)>,
    /// For a multi-set query, the table schema of each join input: the pivot's, then
    /// the join tables' in [`JoinSpec::join_tables`] order (what
    /// [`smrdb_tstore::join::combined_schema`] takes; EXPLAIN names the columns of
    /// pushed filters with them). Empty for a single-table query.
    pub input_schemas: Vec<TableSchema>,
}

/// Parses and binds one or more `;`-separated statements.
pub fn plan_sql(sql: &str, catalog: &dyn Catalog) -> Result<Vec<Plan>, PlanError> {
    let stmts = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        // `COPY ... FROM STDIN` arrives without its inline data: sqlparser wants the
        // data (terminated by `\.`) to follow, so supply an empty data section.
        Err(e) => {
            let t = sql.trim().trim_end_matches(';');
            // Bytes, not `t[..4]`: byte 4 may fall inside a multi-byte character.
            if t.len() > 4 && t.as_bytes()[..4].eq_ignore_ascii_case(b"copy") && !t.contains(';') {
                Parser::parse_sql(&PostgreSqlDialect {}, &format!("{t};\n\\.\n"))
                    .map_err(|_| PlanError::Syntax(e.to_string()))?
            } else {
                return Err(PlanError::Syntax(e.to_string()));
            }
        }
    };
    stmts.iter().map(|s| plan_statement(s, catalog)).collect()
}

fn plan_statement(stmt: &Statement, catalog: &dyn Catalog) -> Result<Plan, PlanError> {
    match stmt {
        Statement::Query(q) => select::plan_query_or_values(q, catalog),
        Statement::Explain {
            describe_alias,
            analyze,
            verbose: _,
            query_plan,
            estimate,
            statement,
            format,
            options,
        } => {
            if *describe_alias != sqlparser::ast::DescribeAlias::Explain
                || *query_plan
                || *estimate
                || format.is_some()
            {
                return Err(PlanError::Unsupported(
                    "only EXPLAIN [ANALYZE] [VERBOSE] is supported".into(),
                ));
            }
            let analyze = *analyze || explain::analyze_option(options.as_deref())?;
            match statement.as_ref() {
                Statement::Query(q) => Ok(Plan::Explain {
                    analyze,
                    query: Box::new(select::plan_query(q, catalog)?),
                }),
                _ => Err(PlanError::Unsupported(
                    "EXPLAIN of anything but a SELECT with FROM".into(),
                )),
            }
        }
        Statement::CreateTable(ct) => ddl::create_table(ct, catalog),
        Statement::Drop {
            object_type,
            if_exists,
            names,
            ..
        } => ddl::drop_table(*object_type, *if_exists, names, catalog),
        Statement::Insert(ins) => ddl::insert(ins, catalog),
        Statement::Copy {
            source,
            to,
            target,
            options,
            legacy_options,
            ..
        } => ddl::copy(source, *to, target, options, legacy_options, catalog),
        Statement::Update {
            table,
            assignments,
            from,
            selection,
            returning,
            ..
        } => {
            if from.is_some() || returning.is_some() {
                return Err(PlanError::Unsupported("UPDATE ... FROM / RETURNING".into()));
            }
            ddl::update(table, assignments, selection.as_ref(), catalog)
        }
        Statement::Delete(d) => ddl::delete(d, catalog),
        Statement::Set(s) => ddl::set(s),
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
