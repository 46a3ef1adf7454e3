//! Fuzz target `sql`: what the primary does with a client's statement text before
//! anything runs (`node/src/engine.rs`): parse, bind and optimize
//! (`Planner::plan_sql`); for every query (SELECT, EXPLAIN [ANALYZE], INSERT's
//! source) its scalar subqueries planned and replaced (by NULL, their values unknown
//! here: as plain EXPLAIN does), the query cut into stages (`Planner::distribute`),
//! EXPLAIN rendered (`explain_lines`), the Tstores' fragment built and encoded, and
//! every stage's plan decoded as its Tstore or the primary decodes it
//! (`codec::plan_from_bytes`); for UPDATE and DELETE the expressions serialized as the
//! engine sends them (`dml::write_exprs`) and decoded as a Tstore does.
//!
//! The input is the statement text (UTF-8; other inputs are skipped). The catalog holds
//! every table of the sqllogictest corpus (`fuzz/sql_catalog.sql`), two in three with
//! statistics (rows, NULLs, minimum and maximum, distinct values), and the system table
//! `smrdb_tstores`. The distribution options (nodes, Tstores per node, broadcast per
//! node or per Tstore, `smrdb.pivot`, `smrdb.overlap`) are picked from the input's
//! length, so every join strategy and forced pivots are reached.
//!
//! Inputs are planned on a thread with the node's planning stack (64 MiB), which
//! catches a statement's panic as the node does (an XX000 error). Oracles: no panic
//! (one in a dependency is a bug too, unless it is in [`KNOWN`]; see
//! `common/panics.rs`); what plans, distributes and renders; a stage plan the primary
//! encodes decodes, and so do UPDATE and DELETE expressions.
#![no_main]

#[path = "common/panics.rs"]
mod panics;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{DFSchemaRef, ScalarValue};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{EmptyRelation, Expr, LogicalPlan, LogicalPlanBuilder};
use libfuzzer_sys::fuzz_target;
use smrdb_planner::frontend::{scalar_subqueries, substitute_scalar_subqueries};
use smrdb_planner::{
    explain_lines, Broadcast, Catalog, DistOptions, DistPlan, Plan, PlanError, Planner, Query,
};
use smrdb_tstore::exec::fragment::{Fragment, Place};
use smrdb_tstore::exec::{codec, task_context, TaskInputs};
use smrdb_tstore::stats::HLL_REGISTERS;
use smrdb_tstore::{ColumnStats, SqlType, StatValue, TableSchema, TableStats};

/// Panics of dependencies that are known and tolerated, as (part of the file, part of
/// the message): each explained, and reported upstream, where it is listed.
const KNOWN: &[(&str, &str)] = &[];

/// The node's planning stack (`PLANNING_STACK` in `node/src/node.rs`).
const PLANNING_STACK: usize = 64 << 20;

type Tables = BTreeMap<String, (TableSchema, Option<TableStats>)>;

struct Cat<'a> {
    tables: &'a Tables,
}

impl Catalog for Cat<'_> {
    fn table(&self, name: &str) -> Option<(TableSchema, Option<TableStats>)> {
        self.tables.get(name).cloned()
    }
    fn system_table(&self, name: &str) -> Option<RecordBatch> {
        (name == "smrdb_tstores").then(system_batch)
    }
}

/// `smrdb_tstores` as `Engine::system_batch` builds it.
fn system_batch() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("node", DataType::Int32, false),
        Field::new("tstore", DataType::Int32, false),
        Field::new("core", DataType::Int32, true),
        Field::new("table", DataType::Utf8, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("bytes", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![0, 1])),
        Arc::new(Int32Array::from(vec![0, 1])),
        Arc::new(Int32Array::from(vec![Some(2), None])),
        Arc::new(StringArray::from(vec!["ag_nums", "ag_nums"])),
        Arc::new(Int64Array::from(vec![10, 0])),
        Arc::new(Int64Array::from(vec![4096, 0])),
    ];
    RecordBatch::try_new(schema, cols).expect("a valid batch")
}

fn hash(s: &str) -> u64 {
    s.bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
}

/// Made-up statistics for a table (none for one in three): a row count, and per
/// column NULLs, a minimum and maximum of its type and a distinct-value sketch.
fn stats(name: &str, schema: &TableSchema) -> Option<TableStats> {
    let h = hash(name);
    if h % 3 == 0 {
        return None;
    }
    let rows = h % 100_000;
    let columns = schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let k = h.rotate_left(i as u32 * 7);
            let hi = (rows as i64).max(1);
            let range = match c.ty {
                SqlType::SmallInt | SqlType::Integer | SqlType::BigInt => {
                    Some((StatValue::Int(-(k as i64 % 10)), StatValue::Int(hi)))
                }
                SqlType::Real | SqlType::Double => {
                    Some((StatValue::Float(-0.5), StatValue::Float(hi as f64 / 3.0)))
                }
                SqlType::Numeric { .. } => Some((StatValue::Decimal(0), StatValue::Decimal(99))),
                SqlType::Char(_) | SqlType::Varchar(_) | SqlType::Text => {
                    Some((StatValue::Text("a".into()), StatValue::Text("zz".into())))
                }
                SqlType::Date => Some((StatValue::Int(18_000), StatValue::Int(18_000 + hi))),
                SqlType::Timestamp => Some((
                    StatValue::Int(1_600_000_000_000_000),
                    StatValue::Int(1_600_000_000_000_000 + hi * 1_000_000),
                )),
                SqlType::Boolean => Some((StatValue::Int(0), StatValue::Int(1))),
            }
            .filter(|_| k % 5 != 0);
            // Linear counting: `set` registers of 1024 set, ~1024 ln(1024 / (1024 - set))
            // distinct values.
            let set = (k % (HLL_REGISTERS as u64 + 1)) as usize;
            let mut hll = vec![0u8; HLL_REGISTERS];
            hll[..set].fill(1 + (k % 4) as u8);
            let (min, max) = range.unzip();
            ColumnStats {
                nulls: if c.nullable { rows / (2 + k % 20) } else { 0 },
                min,
                max,
                hll,
            }
        })
        .collect();
    Some(TableStats {
        rows,
        bytes: rows * 8 * schema.columns.len() as u64,
        columns,
    })
}

fn planner() -> &'static Planner {
    static P: OnceLock<Planner> = OnceLock::new();
    P.get_or_init(|| Planner::new().expect("a planner"))
}

/// Every table of `fuzz/sql_catalog.sql` (the first of each name that plans).
fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let mut m = Tables::new();
        for line in include_str!("../sql_catalog.sql").lines() {
            if line.starts_with("--") || line.trim().is_empty() {
                continue;
            }
            let Ok(plans) = planner().plan_sql(line, &Cat { tables: &m }) else {
                continue;
            };
            for p in plans {
                if let Plan::CreateTable { name, schema, .. } = p {
                    let s = stats(&name, &schema);
                    m.entry(name).or_insert((schema, s));
                }
            }
        }
        assert!(m.len() > 100, "the catalog plans: {} tables", m.len());
        m
    })
}

/// The distribution options for an input of `len` bytes.
fn options(len: usize) -> DistOptions {
    let pivots = [None, Some("auto"), Some("t"), Some("a"), Some("nonesuch")];
    DistOptions {
        nodes: 1 + len % 3,
        tstores_per_node: 1 + (len / 3) % 2,
        broadcast: if (len / 6) % 2 == 0 {
            Broadcast::PerNode
        } else {
            Broadcast::PerTstore
        },
        // As `Engine::dist_options` reads `smrdb.pivot`.
        pivot: pivots[(len / 12) % pivots.len()]
            .filter(|v| !v.eq_ignore_ascii_case("auto"))
            .map(str::to_string),
        overlap: (len / 60) % 4 != 0,
        ..DistOptions::default()
    }
}

/// NULL of a subquery's type (its value, not run here).
fn null_of(plan: &LogicalPlan) -> Result<ScalarValue, PlanError> {
    Ok(ScalarValue::try_from(plan.schema().field(0).data_type())?)
}

/// `Engine::with_subqueries` with NULL for every value: the plan with its scalar
/// subqueries replaced, and their distributed plans.
fn with_subqueries(
    plan: &LogicalPlan,
    opts: &DistOptions,
) -> Result<(LogicalPlan, Vec<DistPlan>), PlanError> {
    let subs = scalar_subqueries(plan);
    if subs.is_empty() {
        return Ok((plan.clone(), Vec::new()));
    }
    let mut values = Vec::with_capacity(subs.len());
    let mut dists = Vec::new();
    for sq in &subs {
        let (sp, inner) = with_subqueries(sq, opts)?;
        dists.extend(inner);
        dists.push(planner().distribute(&sp, opts)?);
        values.push(null_of(&sp)?);
    }
    Ok((
        substitute_scalar_subqueries(plan.clone(), &subs, &values)?,
        dists,
    ))
}

/// A query as the engine runs it (`Engine::run_query`, or `Engine::explain` without
/// ANALYZE, which plans the subqueries without substituting theirs): distributed,
/// rendered, and its stages encoded and decoded.
fn query(q: &Query, explain_only: bool, opts: &DistOptions) -> Result<(), PlanError> {
    let _ = q.arrow_schema();
    let (plan, subs) = if explain_only {
        let subs = scalar_subqueries(&q.plan);
        let mut dists = Vec::new();
        let mut values = Vec::new();
        for s in &subs {
            dists.push(planner().distribute(s, opts)?);
            values.push(null_of(s)?);
        }
        (
            substitute_scalar_subqueries(q.plan.clone(), &subs, &values)?,
            dists,
        )
    } else {
        with_subqueries(&q.plan, opts)?
    };
    let dist = planner().distribute(&plan, opts)?;
    let lines = explain_lines(&dist, &subs, None);
    assert!(!lines.is_empty());
    for d in subs.iter().chain([&dist]) {
        stages(d)?;
    }
    Ok(())
}

/// The fragment the Tstores get and every stage's plan, decoded where it runs.
fn stages(dist: &DistPlan) -> Result<(), PlanError> {
    static CTX: OnceLock<Arc<TaskContext>> = OnceLock::new();
    let tstore = CTX.get_or_init(|| task_context(Some(Arc::new(TaskInputs::new()))));
    if !dist.primary_only() {
        let frag = dist.fragment(60_000)?;
        let bytes = frag.encode().map_err(PlanError::Internal)?;
        let back = Fragment::decode(&bytes)
            .unwrap_or_else(|e| panic!("the primary's fragment does not decode: {e}"));
        assert_eq!(back, frag);
        for s in &frag.stages {
            if let Err(e) = codec::plan_from_bytes(&s.plan, tstore) {
                panic!("stage {} does not decode on a Tstore: {e}", s.id);
            }
        }
    }
    for s in dist.stages.iter().filter(|s| s.place == Place::Primary) {
        let bytes = codec::plan_to_bytes(s.plan.clone())?;
        if let Err(e) = codec::plan_from_bytes(&bytes, tstore) {
            panic!("the primary's stage {} does not decode: {e}", s.id);
        }
    }
    Ok(())
}

/// UPDATE and DELETE: `Engine::write_exprs` (subqueries replaced), then the Tstore's
/// `Store::decode_exprs` over the table's columns.
fn write(
    table: &str,
    schema: &DFSchemaRef,
    assignments: &[(usize, Expr)],
    filter: Option<&Expr>,
    opts: &DistOptions,
) -> Result<(), PlanError> {
    let mut exprs: Vec<Expr> = assignments.iter().map(|(_, e)| e.clone()).collect();
    exprs.extend(filter.cloned());
    let empty = LogicalPlan::EmptyRelation(EmptyRelation {
        produce_one_row: true,
        schema: schema.clone(),
    });
    let holder = LogicalPlanBuilder::from(empty)
        .project(
            exprs
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, e)| e.alias(format!("e{i}"))),
        )?
        .build()?;
    let (holder, dists) = with_subqueries(&holder, opts)?;
    for d in &dists {
        stages(d)?;
    }
    let LogicalPlan::Projection(p) = holder else {
        panic!("subquery substitution lost its shape");
    };
    let mut exprs: Vec<Expr> = p
        .expr
        .into_iter()
        .map(|e| match e {
            Expr::Alias(a) => *a.expr,
            other => other,
        })
        .collect();
    let filter = if filter.is_some() { exprs.pop() } else { None };
    let assignments: Vec<(usize, Expr)> = assignments.iter().map(|(i, _)| *i).zip(exprs).collect();
    let (a, f) = smrdb_planner::dml::write_exprs(
        planner().frontend(),
        schema,
        &assignments,
        filter.as_ref(),
    )?;
    let arrow = tables()
        .get(table)
        .map(|(s, _)| s.to_arrow())
        .unwrap_or_else(|| panic!("UPDATE or DELETE of {table}, which is not in the catalog"));
    for bytes in a.iter().map(|(_, e)| e).chain(f.as_ref()) {
        if let Err(e) = codec::expr_from_bytes(bytes, &arrow) {
            panic!("an expression of {table} does not decode on a Tstore: {e}");
        }
    }
    Ok(())
}

/// One statement text, as the primary plans it.
fn statement(sql: &str) {
    let opts = options(sql.len());
    let cat = Cat { tables: tables() };
    let Ok(plans) = planner().plan_sql(sql, &cat) else {
        return;
    };
    for p in &plans {
        // Errors are answers; only panics and the asserts count.
        let _ = match p {
            Plan::Query(q) => query(q, false, &opts),
            Plan::Explain { analyze, query: q } => query(q, !analyze, &opts),
            Plan::Insert { query: q, .. } => query(q, false, &opts),
            Plan::Update {
                table,
                assignments,
                filter,
                schema,
            } => write(table, schema, assignments, filter.as_ref(), &opts),
            Plan::Delete {
                table,
                filter,
                schema,
            } => write(table, schema, &[], filter.as_ref(), &opts),
            _ => Ok(()),
        };
    }
}

/// The planning thread: one for the whole run (a thread per input would pay for a
/// fresh 64 MiB stack and its shadow memory every time), with the node's stack size;
/// like a blocking-pool thread of the node's runtime it catches each statement's panic
/// and lives on. Answers whether the statement panicked.
fn plan_on_thread(sql: String) -> bool {
    type Ends = (Sender<String>, Receiver<bool>);
    static THREAD: OnceLock<Mutex<Ends>> = OnceLock::new();
    let ends = THREAD.get_or_init(|| {
        let (to, inputs) = channel::<String>();
        let (done, answers) = channel::<bool>();
        std::thread::Builder::new()
            .name("planning".into())
            .stack_size(PLANNING_STACK)
            .spawn(move || {
                for sql in inputs {
                    let panicked =
                        std::panic::catch_unwind(AssertUnwindSafe(|| statement(&sql))).is_err();
                    if done.send(panicked).is_err() {
                        return;
                    }
                }
            })
            .expect("a planning thread");
        Mutex::new((to, answers))
    });
    let ends = ends.lock().unwrap_or_else(|e| e.into_inner());
    ends.0.send(sql).expect("the planning thread is alive");
    ends.1.recv().expect("the planning thread answers")
}

fuzz_target!(
    init: {
        panics::install();
        tables();
    },
    |data: &[u8]| {
        let Ok(sql) = std::str::from_utf8(data) else {
            return;
        };
        if plan_on_thread(sql.to_string()) {
            // A panic in a dependency (ours abort at once): the node would answer
            // XX000.
            let Some(p) = panics::take_last() else {
                panic!("the planning thread panicked without a record");
            };
            if !KNOWN
                .iter()
                .any(|(file, msg)| p.location.contains(file) && p.message.contains(msg))
            {
                panics::fail(p);
            }
        }
    }
);
