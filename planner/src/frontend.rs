//! The front end: DataFusion parses and binds SQL against our catalog (a
//! [`ContextProvider`]), its optimizer rewrites the logical plan (subqueries
//! decorrelated into semi/anti/mark joins, CTEs inlined, filters and projections
//! pushed down, common conjuncts pulled out of ORs, constants folded), and its
//! physical planner turns it into one single-node physical plan whose leaves are
//! [`smrdb_tstore::exec::SliceScanExec`]s — which [`crate::distribute`] then cuts
//! into stages.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, DataFusionError, Result, TableReference};
use datafusion::config::ConfigOptions;
use datafusion::datasource::{provider_as_source, DefaultTableSource};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::SessionStateDefaults;
use datafusion::logical_expr::planner::{ContextProvider, ExprPlanner};
use datafusion::logical_expr::{
    AggregateUDF, Expr, HigherOrderUDF, LogicalPlan, ScalarUDF, SubqueryAlias, TableScan,
    TableSource, WindowUDF,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionConfig;
use datafusion::sql::planner::{ParserOptions, SqlToRel};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use smrdb_tstore::exec::BATCH_ROWS;

use crate::catalog::{as_slice_table, Catalog, SliceTable};
use crate::error::PlanError;

/// The SQL front end: one DataFusion session state, shared by every statement.
#[derive(Clone)]
pub struct Frontend {
    state: SessionState,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Frontend")
    }
}

/// The physical optimizer rules that make sense for a plan that will be cut into
/// stages: DataFusion's defaults without those that assume one process with
/// threads (partial+final aggregates combined, probe-side buffering, cooperative
/// tokio yielding) or scans that take pushed-down filters.
fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    use datafusion::physical_optimizer::*;
    vec![
        Arc::new(output_requirements::OutputRequirements::new_add_mode()),
        Arc::new(join_selection::JoinSelection::new()),
        Arc::new(limited_distinct_aggregation::LimitedDistinctAggregation::new()),
        Arc::new(ensure_requirements::EnsureRequirements::new()),
        Arc::new(update_aggr_exprs::OptimizeAggregateOrder::new()),
        Arc::new(projection_pushdown::ProjectionPushdown::new()),
        Arc::new(output_requirements::OutputRequirements::new_remove_mode()),
        Arc::new(topk_aggregation::TopKAggregation::new()),
        Arc::new(limit_pushdown_past_window::LimitPushPastWindows::new()),
        Arc::new(limit_pushdown::LimitPushdown::new()),
        Arc::new(projection_pushdown::ProjectionPushdown::new()),
        Arc::new(sanity_checker::SanityCheckPlan::new()),
    ]
}

impl Frontend {
    /// The front end with PostgreSQL's dialect and semantics where DataFusion lets us
    /// choose them: numeric literals are exact (`DECIMAL`), identifiers fold to
    /// lower case, NULLs sort last ascending, text is `Utf8`.
    ///
    /// # Errors
    /// A configuration key DataFusion does not know (a bug).
    pub fn new() -> Result<Frontend> {
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(BATCH_ROWS)
            .with_information_schema(false);
        {
            let o = config.options_mut();
            for (k, v) in [
                ("datafusion.sql_parser.dialect", "PostgreSQL"),
                ("datafusion.sql_parser.parse_float_as_decimal", "true"),
                (
                    "datafusion.sql_parser.map_string_types_to_utf8view",
                    "false",
                ),
                ("datafusion.sql_parser.enable_ident_normalization", "true"),
                ("datafusion.optimizer.prefer_hash_join", "true"),
                ("datafusion.optimizer.repartition_joins", "false"),
                ("datafusion.optimizer.repartition_aggregations", "false"),
                ("datafusion.optimizer.repartition_windows", "false"),
                ("datafusion.optimizer.repartition_sorts", "false"),
                (
                    "datafusion.optimizer.enable_dynamic_filter_pushdown",
                    "false",
                ),
                ("datafusion.execution.time_zone", "+00:00"),
            ] {
                o.set(k, v)?;
            }
        }
        let mut aggregates = smrdb_tstore::exec::functions::smrdb_aggregates();
        aggregates.extend(SessionStateDefaults::default_aggregate_functions());
        // DataFusion's logical rules, with our join ordering once filters are pushed
        // down (and before projections are pruned).
        let mut rules = datafusion::optimizer::Optimizer::new().rules;
        let at = rules
            .iter()
            .position(|r| r.name() == "push_down_filter")
            .map(|i| i + 1)
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(crate::reorder::JoinReorder));
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_aggregate_functions(aggregates)
            .with_optimizer_rules(rules)
            .with_physical_optimizer_rules(physical_rules())
            .build();
        Ok(Frontend { state })
    }

    /// The session state (functions, configuration).
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// Parses SQL text into statements (PostgreSQL dialect).
    ///
    /// # Errors
    /// [`PlanError::Syntax`].
    pub fn parse(sql: &str) -> Result<Vec<Statement>, PlanError> {
        match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
            Ok(s) => Ok(s),
            // `COPY ... FROM STDIN` arrives without its inline data: sqlparser wants the
            // data (terminated by `\.`) to follow, so supply an empty data section.
            Err(e) => {
                let t = sql.trim().trim_end_matches(';');
                if t.len() > 4
                    && t.as_bytes()[..4].eq_ignore_ascii_case(b"copy")
                    && !t.contains(';')
                {
                    Parser::parse_sql(&PostgreSqlDialect {}, &format!("{t};\n\\.\n"))
                        .map_err(|_| PlanError::Syntax(crate::error::clean(&e.to_string())))
                } else {
                    Err(PlanError::Syntax(crate::error::clean(&e.to_string())))
                }
            }
        }
    }

    fn parser_options(&self) -> ParserOptions {
        let o = &self.state.config().options().sql_parser;
        ParserOptions {
            parse_float_as_decimal: o.parse_float_as_decimal,
            enable_ident_normalization: o.enable_ident_normalization,
            support_varchar_with_length: o.support_varchar_with_length,
            enable_options_value_normalization: o.enable_options_value_normalization,
            collect_spans: o.collect_spans,
            map_string_types_to_utf8view: o.map_string_types_to_utf8view,
            default_null_ordering: o.default_null_ordering.as_str().into(),
        }
    }

    /// Binds a statement (a query, INSERT, UPDATE or DELETE) against `catalog`.
    ///
    /// # Errors
    /// Binding errors with their SQLSTATEs.
    pub fn bind(
        &self,
        mut stmt: Statement,
        catalog: &dyn Catalog,
    ) -> Result<LogicalPlan, PlanError> {
        crate::names::dedup_select_names(&mut stmt);
        reserved_table_names(&stmt)?;
        let cast_columns = cast_assignments(&stmt);
        let provider = Provider {
            state: &self.state,
            catalog,
        };
        let rel = SqlToRel::new_with_options(&provider, self.parser_options());
        let plan = rel.sql_statement_to_plan(stmt).map_err(PlanError::from)?;
        crate::pgtypes::check(&plan, &cast_columns)?;
        crate::pgtypes::integer_literals(plan)
    }

    /// Runs DataFusion's analyzer (type coercion) and logical optimizer.
    ///
    /// # Errors
    /// Analysis errors (types that do not fit) with their SQLSTATEs.
    pub fn optimize(&self, plan: &LogicalPlan) -> Result<LogicalPlan, PlanError> {
        self.state.optimize(plan).map_err(PlanError::from)
    }

    /// Runs only DataFusion's analyzer (type coercion): the shape of the plan stays as
    /// bound (UPDATE and DELETE).
    ///
    /// # Errors
    /// Types that do not fit, with their SQLSTATEs.
    pub fn analyze(&self, plan: &LogicalPlan) -> Result<LogicalPlan, PlanError> {
        self.state
            .analyzer()
            .execute_and_check(plan.clone(), self.state.config_options(), |_, _| {})
            .map_err(PlanError::from)
    }

    /// The single-node physical plan of an optimized logical plan: every table scan a
    /// [`smrdb_tstore::exec::SliceScanExec`] that knows the alias the query gives
    /// it.
    ///
    /// # Errors
    /// Plans DataFusion cannot run (as 0A000), other planning errors.
    pub fn physical(&self, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>, PlanError> {
        let plan = with_scan_aliases(plan.clone())?;
        let mut state = self.state.clone();
        state.mark_start_execution();
        let planner = DefaultPhysicalPlanner::default();
        futures::executor::block_on(planner.create_physical_plan(&plan, &state))
            .map_err(PlanError::from)
    }

    /// A physical expression over `schema` (UPDATE and DELETE), simplified first as
    /// the optimizer simplifies a query's (some functions, e.g. `coalesce`, only run
    /// in their simplified form).
    ///
    /// # Errors
    /// Expressions DataFusion cannot plan (subqueries).
    pub fn physical_expr(
        &self,
        e: &Expr,
        schema: &DFSchema,
    ) -> Result<Arc<dyn PhysicalExpr>, PlanError> {
        let ctx = datafusion::logical_expr::simplify::SimplifyContext::builder()
            .with_schema(Arc::new(schema.clone()))
            .with_config_options(self.state.config_options().clone())
            .with_current_time()
            .build();
        let e = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(ctx)
            .simplify(e.clone())?;
        self.state
            .create_physical_expr(e, schema)
            .map_err(PlanError::from)
    }
}

/// PostgreSQL's reserved words that sqlparser still takes for a table name
/// (`SELECT FROM WHERE` reads a table `where`); unquoted, PostgreSQL refuses them.
const RESERVED: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "default",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "intersect",
    "into",
    "leading",
    "limit",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "primary",
    "references",
    "returning",
    "select",
    "some",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "using",
    "when",
    "where",
    "window",
    "with",
];

/// 42601 for an unquoted reserved word used as a table name.
fn reserved_table_names(stmt: &Statement) -> Result<(), PlanError> {
    use datafusion::sql::sqlparser::ast::{visit_relations, ObjectNamePart};
    let found = visit_relations(stmt, |name| {
        match name.0.last() {
            Some(ObjectNamePart::Identifier(i))
                if i.quote_style.is_none()
                    && RESERVED.contains(&i.value.to_lowercase().as_str()) =>
            {
                return std::ops::ControlFlow::Break(i.value.clone());
            }
            _ => {}
        }
        std::ops::ControlFlow::Continue(())
    });
    match found {
        std::ops::ControlFlow::Break(w) => Err(PlanError::Syntax(format!(
            "syntax error at or near \"{w}\""
        ))),
        std::ops::ControlFlow::Continue(()) => Ok(()),
    }
}

/// The columns an UPDATE sets to an explicit `CAST(...)` or `::` (their type is the
/// user's choice, not an assignment cast).
fn cast_assignments(stmt: &Statement) -> std::collections::HashSet<String> {
    use datafusion::sql::sqlparser::ast::{AssignmentTarget, Expr as SqlExpr, ObjectNamePart};
    let Statement::Update(u) = stmt else {
        return Default::default();
    };
    u.assignments
        .iter()
        .filter(|a| matches!(a.value, SqlExpr::Cast { .. }))
        .filter_map(|a| match &a.target {
            AssignmentTarget::ColumnName(n) => match n.0.last() {
                Some(ObjectNamePart::Identifier(i)) if i.quote_style.is_some() => {
                    Some(i.value.clone())
                }
                Some(ObjectNamePart::Identifier(i)) => Some(i.value.to_lowercase()),
                _ => None,
            },
            AssignmentTarget::Tuple(_) => None,
        })
        .collect()
}

/// Gives every scan under an alias (`FROM lineitem l1`) a table that knows it, so
/// the scan, EXPLAIN and `SET smrdb.pivot` can name it.
fn with_scan_aliases(plan: LogicalPlan) -> Result<LogicalPlan, PlanError> {
    plan.transform_up_with_subqueries(|p| {
        let LogicalPlan::SubqueryAlias(SubqueryAlias { input, alias, .. }) = &p else {
            return Ok(Transformed::no(p));
        };
        let LogicalPlan::TableScan(scan) = input.as_ref() else {
            return Ok(Transformed::no(p));
        };
        let Some(src) = scan.source.downcast_ref::<DefaultTableSource>() else {
            return Ok(Transformed::no(p));
        };
        let Some(t) = as_slice_table(&src.table_provider) else {
            return Ok(Transformed::no(p));
        };
        let aliased: Arc<dyn TableProvider> = Arc::new(t.with_alias(alias.table()));
        let new_scan = LogicalPlan::TableScan(TableScan {
            source: provider_as_source(aliased),
            ..scan.clone()
        });
        Ok(Transformed::yes(LogicalPlan::SubqueryAlias(
            SubqueryAlias::try_new(Arc::new(new_scan), alias.clone())?,
        )))
    })
    .map(|t| t.data)
    .map_err(PlanError::from)
}

/// Our catalog as DataFusion's binder sees it.
struct Provider<'a> {
    state: &'a SessionState,
    catalog: &'a dyn Catalog,
}

/// The table a reference names: bare, or in the schema `public`.
fn table_name(r: &TableReference) -> Option<&str> {
    match r {
        TableReference::Bare { table } => Some(table),
        TableReference::Partial { schema, table } if schema.as_ref() == "public" => Some(table),
        TableReference::Full { schema, table, .. } if schema.as_ref() == "public" => Some(table),
        _ => None,
    }
}

impl ContextProvider for Provider<'_> {
    fn get_table_source(&self, name: TableReference) -> Result<Arc<dyn TableSource>> {
        let undefined = || {
            DataFusionError::External(Box::new(PlanError::UndefinedTable(
                name.table().to_string(),
            )))
        };
        let t = table_name(&name).ok_or_else(undefined)?;
        if let Some(batch) = self.catalog.system_table(t) {
            let m = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
            return Ok(provider_as_source(Arc::new(m)));
        }
        let (schema, stats) = self.catalog.table(t).ok_or_else(undefined)?;
        Ok(provider_as_source(Arc::new(SliceTable::new(
            t,
            schema,
            stats.as_ref(),
        ))))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<arrow_schema::DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        self.state.scalar_functions().keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state
            .higher_order_functions()
            .keys()
            .cloned()
            .collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}

/// Uncorrelated scalar subqueries in `plan` (DataFusion leaves them as expressions):
/// each runs first as a query of its own, and its value replaces it
/// ([`substitute_scalar_subqueries`]).
pub fn scalar_subqueries(plan: &LogicalPlan) -> Vec<LogicalPlan> {
    let mut out: Vec<LogicalPlan> = Vec::new();
    let _ = plan.apply_with_subqueries(|p| {
        p.apply_expressions(|e| {
            e.apply(|x| {
                if let Expr::ScalarSubquery(s) = x {
                    if s.outer_ref_columns.is_empty()
                        && !out.iter().any(|o| o == s.subquery.as_ref())
                    {
                        out.push(s.subquery.as_ref().clone());
                    }
                }
                Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
            })
        })
    });
    out
}

/// `plan` with every uncorrelated scalar subquery `subqueries[i]` replaced by
/// `values[i]`.
///
/// # Errors
/// Rewriting errors (a bug).
pub fn substitute_scalar_subqueries(
    plan: LogicalPlan,
    subqueries: &[LogicalPlan],
    values: &[datafusion::common::ScalarValue],
) -> Result<LogicalPlan, PlanError> {
    let map: HashMap<&LogicalPlan, &datafusion::common::ScalarValue> =
        subqueries.iter().zip(values).collect();
    plan.transform_up_with_subqueries(|p| {
        p.map_expressions(|e| {
            e.transform_up(|x| match &x {
                Expr::ScalarSubquery(s) => match map.get(s.subquery.as_ref()) {
                    Some(v) => Ok(Transformed::yes(Expr::Literal((*v).clone(), None))),
                    None => Ok(Transformed::no(x)),
                },
                _ => Ok(Transformed::no(x)),
            })
        })
    })
    .map(|t| t.data)
    .map_err(PlanError::from)
}
