//! What the planner's tests share: an in-memory catalog of tables ([`Db`]), an
//! in-process **simulator** that runs a [`DistPlan`] the way the cluster does (every
//! Tstore stage once per slice, the primary's stages once, each stage's output routed
//! to its exchange's consumers, every plan decoded from its wire bytes first), the
//! same SQL run single-node by DataFusion itself (the reference), and rows rendered
//! as text for comparison.
//!
//! No threads, no router: stages run in `dist.stages` order (producers before
//! consumers), each driven to its end on the calling thread. A stage that waits for
//! an input no earlier stage fed is reported as an error, not a hang.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use arrow_array::{Array, RecordBatch, UInt64Array};
use arrow_schema::{DataType, SchemaRef};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::MemTable;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use smrdb_planner::frontend::{scalar_subqueries, substitute_scalar_subqueries};
use smrdb_planner::{Catalog, DistOptions, DistPlan, Plan, PlanError, Planner, Query};
use smrdb_tstore::exec::fragment::{ExchangeKind, Fragment, Place};
use smrdb_tstore::exec::{
    codec, task_context, ExchangeQueue, MergePartitionsExec, TableSnapshot, TaskInputs,
};
use smrdb_tstore::{coerce_batch, Slice, TableSchema, TableStats};

// ------------------------------------------------------------------ random numbers

/// A small deterministic generator (SplitMix64): the tests' randomness is a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % ((hi - lo + 1) as u64)) as i64
    }

    /// True with probability `percent` %.
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// One element of `xs`.
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// A `u64` from the environment variable `name`, if set and valid.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

// ------------------------------------------------------------------ the catalog

/// One table: its schema, every row, and statistics over them.
#[derive(Debug, Clone)]
pub struct TestTable {
    /// Columns.
    pub schema: TableSchema,
    /// Every row, as the table's Arrow types.
    pub batches: Vec<RecordBatch>,
    /// Statistics of every row (as the Tstores' merged statistics would be).
    pub stats: TableStats,
}

impl TestTable {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// Tables held in memory, a [`Catalog`] for the planner; split over slices on demand.
#[derive(Debug)]
pub struct Db {
    tables: BTreeMap<String, TestTable>,
    /// Give the planner the tables' statistics (realistic pivot choices).
    pub with_stats: bool,
    /// Rows per sealed chunk of every slice.
    pub chunk_rows: usize,
    slices: RefCell<HashMap<usize, Arc<Vec<HashMap<String, TableSnapshot>>>>>,
}

impl Default for Db {
    fn default() -> Self {
        Db {
            tables: BTreeMap::new(),
            with_stats: true,
            chunk_rows: smrdb_tstore::DEFAULT_CHUNK_ROWS,
            slices: RefCell::new(HashMap::new()),
        }
    }
}

impl Db {
    /// No tables.
    pub fn new() -> Db {
        Db::default()
    }

    /// Adds table `name` with `rows` (coerced to the schema's types as an INSERT
    /// would) and statistics computed from them.
    ///
    /// # Panics
    /// Rows that do not fit the schema (a bug in the test).
    pub fn add_table(&mut self, name: &str, schema: TableSchema, rows: Vec<RecordBatch>) {
        let batches: Vec<RecordBatch> = rows
            .iter()
            .map(|b| coerce_batch(&schema, b).expect("rows fit their table"))
            .collect();
        let mut stats = TableStats::new(schema.columns.len());
        for b in &batches {
            stats.add(b);
        }
        self.add_table_with_stats(name, schema, batches, stats);
    }

    /// Adds table `name` with given statistics (a catalog built by hand).
    pub fn add_table_with_stats(
        &mut self,
        name: &str,
        schema: TableSchema,
        batches: Vec<RecordBatch>,
        stats: TableStats,
    ) {
        self.tables.insert(
            name.to_string(),
            TestTable {
                schema,
                batches,
                stats,
            },
        );
        self.slices.borrow_mut().clear();
    }

    /// The tables.
    pub fn tables(&self) -> &BTreeMap<String, TestTable> {
        &self.tables
    }

    /// Every table split round-robin, row by row, over `n` slices (as INSERT spreads
    /// rows over the Tstores), each slice a [`Slice`] sealing chunks of
    /// [`Db::chunk_rows`]; what a task on Tstore `i` sees is element `i`.
    pub fn snapshots(&self, n: usize) -> Arc<Vec<HashMap<String, TableSnapshot>>> {
        if let Some(s) = self.slices.borrow().get(&n) {
            return s.clone();
        }
        let mut out: Vec<HashMap<String, TableSnapshot>> = vec![HashMap::new(); n];
        for (name, t) in &self.tables {
            let mut slices: Vec<Slice> = (0..n)
                .map(|_| Slice::with_chunk_rows(t.schema.clone(), self.chunk_rows).unwrap())
                .collect();
            let mut cursor = 0usize;
            for b in &t.batches {
                for (i, slice) in slices.iter_mut().enumerate() {
                    let idx: Vec<u64> = (0..b.num_rows())
                        .filter(|r| (cursor + r) % n == i)
                        .map(|r| r as u64)
                        .collect();
                    if idx.is_empty() {
                        continue;
                    }
                    let part = take_record_batch(b, &UInt64Array::from(idx)).unwrap();
                    slice.append_batch(part).unwrap();
                }
                cursor += b.num_rows();
            }
            for (i, s) in slices.iter().enumerate() {
                out[i].insert(name.clone(), s.snapshot());
            }
        }
        let out = Arc::new(out);
        self.slices.borrow_mut().insert(n, out.clone());
        out
    }

    /// A DataFusion session with every table as a `MemTable` and the front end's SQL
    /// options: the single-node reference.
    pub fn reference_context(&self) -> SessionContext {
        let mut config = SessionConfig::new()
            .with_target_partitions(1)
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
                ("datafusion.execution.time_zone", "+00:00"),
                // DataFusion 55 pushes a hash join's build-side keys into the probe
                // side's scan even when the join must keep unmatched probe rows
                // (wrong answers for RIGHT / FULL joins); the front end turns it off
                // too.
                (
                    "datafusion.optimizer.enable_dynamic_filter_pushdown",
                    "false",
                ),
            ] {
                o.set(k, v).unwrap();
            }
        }
        let ctx = SessionContext::new_with_config(config);
        for (name, t) in &self.tables {
            let m = MemTable::try_new(t.schema.to_arrow(), vec![t.batches.clone()]).unwrap();
            ctx.register_table(name.as_str(), Arc::new(m)).unwrap();
        }
        ctx
    }
}

impl Catalog for Db {
    fn table(&self, name: &str) -> Option<(TableSchema, Option<TableStats>)> {
        self.tables
            .get(name)
            .map(|t| (t.schema.clone(), self.with_stats.then(|| t.stats.clone())))
    }
}

// ------------------------------------------------------------------ the simulator

/// A waker that only records that it was woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

fn df(e: datafusion::common::DataFusionError) -> PlanError {
    PlanError::from_datafusion(&e)
}

/// Runs partition 0 of `plan` to its end on this thread (as `block_on` would), but
/// a stream that is pending without having arranged a wake-up — it waits for an
/// exchange input no earlier stage fed — is an error instead of a hang.
pub fn drive(
    plan: &Arc<dyn ExecutionPlan>,
    ctx: Arc<datafusion::execution::TaskContext>,
) -> Result<Vec<RecordBatch>, PlanError> {
    let parts = plan.output_partitioning().partition_count();
    if parts != 1 {
        return Err(PlanError::Internal(format!(
            "a stage with {parts} output partitions"
        )));
    }
    let mut stream = plan.execute(0, ctx).map_err(df)?;
    let flag = Arc::new(Flag(AtomicBool::new(false)));
    let waker = Waker::from(flag.clone());
    let mut cx = Context::from_waker(&waker);
    let mut out = Vec::new();
    loop {
        match stream.poll_next_unpin(&mut cx) {
            Poll::Ready(Some(Ok(b))) => out.push(b),
            Poll::Ready(Some(Err(e))) => return Err(df(e)),
            Poll::Ready(None) => return Ok(out),
            Poll::Pending => {
                if !flag.0.swap(false, Ordering::AcqRel) {
                    return Err(PlanError::Internal(
                        "a stage is waiting for an input that no earlier stage fed".into(),
                    ));
                }
            }
        }
    }
}

/// What one simulated run moved, per exchange: (rows, batches) all producers sent.
pub type Moved = BTreeMap<u16, (usize, usize)>;

/// Runs `dist` over `slices` (element `i`: what Tstore `i` holds) as the cluster
/// does; returns the final stage's batches and what every exchange carried.
///
/// * The Tstore stages are the ones in `dist.fragment(..)` (encoded, decoded and
///   validated as the wire format), each decoded with `plan_from_bytes` in its
///   Tstore's task context and run once per Tstore; the primary's stages go through
///   `plan_to_bytes`/`plan_from_bytes` as the primary runs them.
/// * Broadcast from the Tstores: every Tstore's queue (senders = Tstores) gets every
///   producer's batches. Broadcast from the primary: every Tstore's queue (one
///   sender) gets the primary's batches. Gather: the primary's one queue (senders =
///   Tstores), or with `sorted_streams` one queue per producer Tstore.
///
/// # Errors
/// The first stage's error, with its SQLSTATE.
pub fn simulate(
    dist: &DistPlan,
    slices: &[HashMap<String, TableSnapshot>],
) -> Result<(Vec<RecordBatch>, Moved), PlanError> {
    let n = dist.options.tstores();
    if slices.len() != n {
        return Err(PlanError::Internal(format!(
            "{} slices for {n} Tstores",
            slices.len()
        )));
    }
    let frag = dist.fragment(60_000)?;
    let frag = Fragment::decode(&frag.encode().map_err(PlanError::Internal)?)
        .map_err(PlanError::Internal)?;
    frag.validate().map_err(PlanError::Internal)?;

    // Every Tstore's task inputs: its slices of the fragment's tables and a queue per
    // broadcast it consumes.
    let mut tstore_inputs: Vec<TaskInputs> = Vec::with_capacity(n);
    let mut broadcast_queues: HashMap<u16, Vec<Arc<ExchangeQueue>>> = HashMap::new();
    for slice in slices {
        let mut inputs = TaskInputs::new();
        for t in &frag.tables {
            let snap = slice
                .get(t)
                .ok_or_else(|| PlanError::UndefinedTable(t.clone()))?;
            inputs.add_table(t.clone(), snap.clone());
        }
        for x in frag.tstore_inputs() {
            let senders = match x.from {
                Place::Tstores => n,
                Place::Primary => 1,
            };
            let q = ExchangeQueue::new(senders, x.wait_complete);
            inputs.add_exchange(x.id, 0, q.clone());
            broadcast_queues.entry(x.id).or_default().push(q);
        }
        tstore_inputs.push(inputs);
    }
    // The primary's inputs: every gather.
    let mut primary_inputs = TaskInputs::new();
    let mut gather_queues: HashMap<u16, Vec<Arc<ExchangeQueue>>> = HashMap::new();
    for x in dist
        .exchanges
        .iter()
        .filter(|x| x.kind == ExchangeKind::Gather)
    {
        if x.from != Place::Tstores {
            return Err(PlanError::Internal(format!(
                "exchange #{} gathers from the primary",
                x.id
            )));
        }
        let queues: Vec<Arc<ExchangeQueue>> = if x.sorted_streams {
            (0..n).map(|_| ExchangeQueue::new(1, false)).collect()
        } else {
            vec![ExchangeQueue::new(n, false)]
        };
        for (p, q) in queues.iter().enumerate() {
            primary_inputs.add_exchange(x.id, p, q.clone());
        }
        gather_queues.insert(x.id, queues);
    }
    let tstore_ctx: Vec<_> = tstore_inputs
        .into_iter()
        .map(|i| task_context(Some(Arc::new(i))))
        .collect();
    let primary_ctx = task_context(Some(Arc::new(primary_inputs)));

    let mut moved = Moved::new();
    let mut result = None;
    let last = dist.result_stage().id;
    for stage in &dist.stages {
        // (producer Tstore or None for the primary, its batches)
        let mut outputs: Vec<(Option<usize>, Vec<RecordBatch>)> = Vec::new();
        match stage.place {
            Place::Tstores => {
                let spec = frag
                    .stages
                    .iter()
                    .find(|s| s.id == stage.id)
                    .ok_or_else(|| {
                        PlanError::Internal(format!("stage {} is not in the fragment", stage.id))
                    })?;
                for (t, ctx) in tstore_ctx.iter().enumerate() {
                    let plan = codec::plan_from_bytes(&spec.plan, ctx).map_err(df)?;
                    outputs.push((Some(t), drive(&plan, ctx.clone())?));
                }
            }
            Place::Primary => {
                let bytes = codec::plan_to_bytes(stage.plan.clone()).map_err(df)?;
                let plan = codec::plan_from_bytes(&bytes, &primary_ctx).map_err(df)?;
                outputs.push((None, drive(&plan, primary_ctx.clone())?));
            }
        }
        let Some(xid) = stage.output else {
            if stage.id != last {
                return Err(PlanError::Internal(format!(
                    "stage {} has no output but is not the last",
                    stage.id
                )));
            }
            result = Some(outputs.pop().map(|(_, b)| b).unwrap_or_default());
            continue;
        };
        let x = dist
            .exchange(xid)
            .ok_or_else(|| PlanError::Internal(format!("no exchange #{xid}")))?;
        if x.from != stage.place {
            return Err(PlanError::Internal(format!(
                "stage {} feeds exchange #{xid}, whose producer is elsewhere",
                stage.id
            )));
        }
        for (producer, batches) in outputs {
            let e = moved.entry(xid).or_default();
            e.0 += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
            e.1 += batches.len();
            let targets: Vec<Arc<ExchangeQueue>> = match x.kind {
                ExchangeKind::Broadcast => broadcast_queues.get(&xid).cloned().unwrap_or_default(),
                ExchangeKind::Gather => {
                    let qs = &gather_queues[&xid];
                    if x.sorted_streams {
                        vec![qs[producer.unwrap_or(0)].clone()]
                    } else {
                        vec![qs[0].clone()]
                    }
                }
            };
            for q in &targets {
                for b in &batches {
                    q.push(b.clone());
                }
                q.finish_sender();
            }
        }
    }
    match result {
        Some(r) => Ok((r, moved)),
        None => Err(PlanError::Internal("no final stage".into())),
    }
}

// ------------------------------------------------------------------ whole queries

/// An answer: its columns and rows.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Output schema.
    pub schema: SchemaRef,
    /// Rows.
    pub batches: Vec<RecordBatch>,
}

impl Answer {
    /// Rows in all.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// The one query of `sql`, planned (bound and optimized) against `db`.
///
/// # Errors
/// Planning errors; anything but exactly one query is [`PlanError::Internal`].
pub fn plan_query(planner: &Planner, db: &Db, sql: &str) -> Result<Query, PlanError> {
    let mut plans = planner.plan_sql(sql, db)?;
    match (plans.pop(), plans.is_empty()) {
        (Some(Plan::Query(q)), true) => Ok(q),
        (Some(Plan::Explain { query, .. }), true) => Ok(query),
        _ => Err(PlanError::Internal(format!("not one query: {sql}"))),
    }
}

/// `plan` with its uncorrelated scalar subqueries replaced by their values, each
/// planned with `opts` and run by the simulator first (as the engine does: more
/// than one row is 21000, none is NULL); also returns their distributed plans.
///
/// # Errors
/// As [`simulate`].
pub fn with_subqueries(
    planner: &Planner,
    db: &Db,
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
        let (sp, inner) = with_subqueries(planner, db, sq, opts)?;
        let dist = planner.distribute(&sp, opts)?;
        let (batches, _) = simulate(&dist, &db.snapshots(opts.tstores()))?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        if rows > 1 {
            return Err(PlanError::CardinalityViolation);
        }
        let field = sp.schema().field(0).clone();
        let v = match batches.iter().find(|b| b.num_rows() > 0) {
            Some(b) => ScalarValue::try_from_array(b.column(0), 0)?,
            None => ScalarValue::try_from(field.data_type())?,
        };
        values.push(v);
        dists.extend(inner);
        dists.push(dist);
    }
    Ok((
        substitute_scalar_subqueries(plan.clone(), &subs, &values)?,
        dists,
    ))
}

/// The distributed plan of `sql` (scalar subqueries planned, not run: NULL in their
/// place, as plain EXPLAIN does) and the plans of those subqueries.
///
/// # Errors
/// Planning errors.
pub fn dist_of(
    planner: &Planner,
    db: &Db,
    sql: &str,
    opts: &DistOptions,
) -> Result<(DistPlan, Vec<DistPlan>), PlanError> {
    let q = plan_query(planner, db, sql)?;
    let subs = scalar_subqueries(&q.plan);
    let mut dists = Vec::new();
    let mut values = Vec::new();
    for s in &subs {
        dists.push(planner.distribute(s, opts)?);
        values.push(ScalarValue::try_from(s.schema().field(0).data_type())?);
    }
    let plan = substitute_scalar_subqueries(q.plan.clone(), &subs, &values)?;
    Ok((planner.distribute(&plan, opts)?, dists))
}

/// Plans `sql`, distributes it with `opts` and runs it in the simulator over `db`
/// split across `opts.tstores()` slices.
///
/// # Errors
/// Planning and execution errors, with their SQLSTATEs.
pub fn run(planner: &Planner, db: &Db, sql: &str, opts: &DistOptions) -> Result<Answer, PlanError> {
    let q = plan_query(planner, db, sql)?;
    let (plan, _) = with_subqueries(planner, db, &q.plan, opts)?;
    let dist = planner.distribute(&plan, opts)?;
    let (batches, _) = simulate(&dist, &db.snapshots(opts.tstores()))?;
    Ok(Answer {
        schema: Arc::new(q.schema().as_arrow().clone()),
        batches,
    })
}

/// A plan DataFusion made for one process, made runnable on this thread: its
/// `CoalescePartitionsExec`s (which spawn a task per partition) become
/// [`MergePartitionsExec`]s.
fn without_spawning(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let plan = plan
        .transform_up(|p| {
            let Some(c) = p.downcast_ref::<CoalescePartitionsExec>() else {
                return Ok(Transformed::no(p));
            };
            let merged: Arc<dyn ExecutionPlan> =
                Arc::new(MergePartitionsExec::new(c.input().clone()));
            Ok(Transformed::yes(match c.fetch() {
                Some(f) => Arc::new(GlobalLimitExec::new(merged, 0, Some(f))),
                None => merged,
            }))
        })
        .map(|t| t.data)
        .expect("rewriting a plan");
    if plan.output_partitioning().partition_count() > 1 {
        Arc::new(MergePartitionsExec::new(plan))
    } else {
        plan
    }
}

/// `sql` run single-node by DataFusion itself over `ctx` (see
/// [`Db::reference_context`]).
///
/// # Errors
/// DataFusion's error as text.
pub fn reference(ctx: &SessionContext, sql: &str) -> Result<Answer, String> {
    futures::executor::block_on(async {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let plan = df.create_physical_plan().await.map_err(|e| e.to_string())?;
        let plan = without_spawning(plan);
        if std::env::var_os("SMRDB_SHOW_REF_PLAN").is_some() {
            println!(
                "{}",
                datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
            );
        }
        let batches = drive(&plan, ctx.task_ctx()).map_err(|e| e.to_string())?;
        Ok(Answer { schema, batches })
    })
}

// ------------------------------------------------------------------ rendering

/// One value as text: NULL as `NULL`, floats to 9 significant digits (sums in
/// another order differ in the last bits), everything else as Arrow displays it.
fn cell(col: &dyn Array, fmt: &ArrayFormatter<'_>, row: usize) -> String {
    if col.is_null(row) {
        return "NULL".into();
    }
    match col.data_type() {
        DataType::Float32 | DataType::Float64 => {
            let v: f64 = fmt.value(row).to_string().parse().unwrap_or(f64::NAN);
            if v == 0.0 {
                "0".into()
            } else {
                format!("{v:.8e}")
            }
        }
        _ => fmt.value(row).to_string(),
    }
}

/// Every row as one line of `|`-separated values, in order.
pub fn render(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default();
    let mut out = Vec::new();
    for b in batches {
        let fmts: Vec<ArrayFormatter<'_>> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .zip(&fmts)
                .map(|(c, f)| cell(c.as_ref(), f, r))
                .collect();
            out.push(cells.join("|"));
        }
    }
    out
}

// ------------------------------------------------------------------ plan inspection

/// Names of every operator of `plan`, pre-order.
pub fn operators(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let mut out = vec![plan.name().to_string()];
    for c in plan.children() {
        out.extend(operators(c));
    }
    out
}

/// The aliases of the slice scans under `plan`.
pub fn scans(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(s) = plan.downcast_ref::<smrdb_tstore::exec::SliceScanExec>() {
        out.push(s.alias().to_string());
    }
    for c in plan.children() {
        out.extend(scans(c));
    }
    out
}
