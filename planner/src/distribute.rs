//! Distribution: the single-node physical plan DataFusion made becomes a plan of
//! *stages* joined by *exchanges* over the router.
//!
//! Every subtree is, after its children are placed, in one of three states:
//! * **partitioned** — spread over the Tstores (each holds a disjoint part: a scan of
//!   its slices, or anything computed row by row from such parts);
//! * **single** — on the primary (after a gather);
//! * **constant** — the same everywhere (`VALUES`, no table at all): computed where
//!   its consumer runs.
//!
//! Operators are placed bottom-up:
//! * row-local operators (projection, filter, local limits) stay with their input;
//! * an aggregate over partitioned rows splits into a partial aggregate on every
//!   Tstore and the final one on the primary, joined by a **gather** (the partial
//!   states are the *secondary query*'s answer);
//! * a sort (or top-k) sorts on every Tstore; the primary merges the sorted streams;
//!   a limit takes `offset + limit` rows on every Tstore and the rest on the primary;
//! * a join of two partitioned inputs keeps one, the **pivot**, where it is and
//!   **broadcasts** the other (one copy per node; the patent's join table): the
//!   pivot is the input whose broadcast would move more bytes, unless the join type
//!   forbids it (the preserved side of an outer join is never broadcast; semi and
//!   anti joins keep their outer side) or `smrdb.pivot` forces it; a full outer
//!   join is gathered to the primary. The hash table is built on the smaller of the
//!   local pivot part and the whole broadcast input; built on the pivot, the
//!   broadcast chunks are probed as they arrive (compare-while-receiving);
//! * a join with a single input broadcasts that input from the primary; with a
//!   constant input, every Tstore computes it locally;
//! * a union of partitioned inputs stays partitioned; anything else that needs all
//!   rows at once (windows, unions with constants, unknown operators) is gathered.

use std::sync::Arc;

use arrow_schema::{DataType, SchemaRef};
use datafusion::common::stats::Precision;
use datafusion::common::{JoinType, Result as DfResult};
use datafusion::physical_expr::{LexOrdering, OrderingRequirements};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PartitionMode,
};
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::union::{InterleaveExec, UnionExec};
use datafusion::physical_plan::unnest::UnnestExec;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use smrdb_tstore::exec::fragment::{
    ExchangeKind, ExchangeSpec, Fragment, Place, StageSpec, FRAGMENT_VERSION,
};
use smrdb_tstore::exec::{ExchangeExec, MergePartitionsExec, SliceScanExec};

use crate::error::PlanError;

/// How the router sends a broadcast (the cluster's `router_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Broadcast {
    /// One copy per remote node, fanned out by pointer there (the design).
    #[default]
    PerNode,
    /// One copy per remote Tstore (`router_mode = "naive"`, the baseline).
    PerTstore,
}

/// What distribution needs to know of the cluster and the session.
#[derive(Debug, Clone)]
pub struct DistOptions {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Tstores per node (the average, when nodes differ).
    pub tstores_per_node: usize,
    /// Tstores in the cluster when nodes have different numbers of them (`None`:
    /// `nodes x tstores_per_node`).
    pub total_tstores: Option<usize>,
    /// How broadcasts travel.
    pub broadcast: Broadcast,
    /// `smrdb.pivot`: the alias (or table) that must stay in place, if any.
    pub pivot: Option<String>,
    /// `smrdb.overlap`: compare while receiving (`false` makes every broadcast input
    /// wait until it is complete, for the overlap experiment).
    pub overlap: bool,
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions {
            nodes: 1,
            tstores_per_node: 1,
            total_tstores: None,
            broadcast: Broadcast::PerNode,
            pivot: None,
            overlap: true,
        }
    }
}

impl DistOptions {
    /// Tstores in the cluster.
    pub fn tstores(&self) -> usize {
        self.total_tstores
            .unwrap_or(self.nodes * self.tstores_per_node)
            .max(1)
    }
}

/// One stage of a distributed plan.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Id (unique in the plan).
    pub id: u16,
    /// Where it runs.
    pub place: Place,
    /// Its DataFusion plan (leaves: slice scans and exchange inputs). One output
    /// partition.
    pub plan: Arc<dyn ExecutionPlan>,
    /// The exchange its output feeds; `None` for the final stage (the result).
    pub output: Option<u16>,
}

/// One exchange of a distributed plan.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// Id (unique in the plan).
    pub id: u16,
    /// Gather or broadcast.
    pub kind: ExchangeKind,
    /// Where its producer runs.
    pub from: Place,
    /// A consumer partition per producer (sorted runs).
    pub sorted_streams: bool,
    /// Consumers wait for every producer to finish.
    pub wait_complete: bool,
    /// The rows' schema.
    pub schema: SchemaRef,
    /// Estimated rows and bytes in all (all producers together), if known.
    pub est_rows: Option<usize>,
    /// Estimated bytes.
    pub est_bytes: Option<usize>,
    /// Why it is there (EXPLAIN).
    pub why: String,
}

impl Exchange {
    /// The wire description.
    pub fn spec(&self) -> ExchangeSpec {
        ExchangeSpec {
            id: self.id,
            kind: self.kind,
            from: self.from,
            sorted_streams: self.sorted_streams,
            wait_complete: self.wait_complete,
        }
    }
}

/// A query cut into stages.
#[derive(Debug, Clone)]
pub struct DistPlan {
    /// Stages in an order where every exchange's producer comes before its consumers;
    /// the last is the primary's final stage.
    pub stages: Vec<Stage>,
    /// Every exchange.
    pub exchanges: Vec<Exchange>,
    /// The decisions taken and why (EXPLAIN): pivots, build sides, gathers.
    pub decisions: Vec<String>,
    /// The tables scanned.
    pub tables: Vec<String>,
    /// The options it was made for.
    pub options: DistOptions,
}

impl DistPlan {
    /// The final stage (on the primary).
    pub fn result_stage(&self) -> &Stage {
        // `distribute` always ends with the final stage.
        &self.stages[self.stages.len() - 1]
    }

    /// The exchange `id`.
    pub fn exchange(&self, id: u16) -> Option<&Exchange> {
        self.exchanges.iter().find(|x| x.id == id)
    }

    /// True when nothing runs on the Tstores.
    pub fn primary_only(&self) -> bool {
        self.stages.iter().all(|s| s.place == Place::Primary)
    }

    /// The message the Tstores get: their stages, serialized.
    ///
    /// # Errors
    /// A plan node `datafusion-proto` cannot serialize.
    pub fn fragment(&self, timeout_ms: u64) -> Result<Fragment, PlanError> {
        let stages = self
            .stages
            .iter()
            .filter(|s| s.place == Place::Tstores)
            .map(|s| {
                Ok(StageSpec {
                    id: s.id,
                    output: s.output.ok_or_else(|| {
                        PlanError::Internal("a Tstore stage without output".into())
                    })?,
                    plan: smrdb_tstore::exec::codec::plan_to_bytes(s.plan.clone())?,
                })
            })
            .collect::<Result<Vec<_>, PlanError>>()?;
        Ok(Fragment {
            version: FRAGMENT_VERSION,
            exchanges: self.exchanges.iter().map(Exchange::spec).collect(),
            stages,
            tables: self.tables.clone(),
            timeout_ms,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dist {
    Part,
    Single,
    Const,
}

/// Estimated rows and bytes of a plan's output (DataFusion's statistics, from the
/// catalog's column statistics).
fn estimate(plan: &Arc<dyn ExecutionPlan>) -> (Option<usize>, Option<usize>) {
    let Ok(s) = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()) else {
        return (None, None);
    };
    let rows = match s.num_rows {
        Precision::Exact(n) | Precision::Inexact(n) => Some(n),
        Precision::Absent => None,
    };
    // Text columns by the bytes per row of the scanned column of that name, when its
    // table's statistics say (operators above scale rows, not bytes).
    let mut text = std::collections::HashMap::new();
    scan_text_widths(plan, &mut text);
    let schema = plan.schema();
    let width: usize = schema
        .fields()
        .iter()
        .map(|f| {
            let measured = if f.data_type().primitive_width().is_none() {
                text.get(f.name().as_str()).copied()
            } else {
                None
            };
            measured.unwrap_or_else(|| field_width(f.data_type()))
        })
        .sum::<usize>()
        .max(1);
    let bytes = rows.map(|r| r.saturating_mul(width));
    (rows, bytes)
}

/// Bytes per row of the variable-width columns of the slice scans under `plan`, by
/// column name, from their tables' statistics.
fn scan_text_widths(
    plan: &Arc<dyn ExecutionPlan>,
    out: &mut std::collections::HashMap<String, usize>,
) {
    if plan.is::<SliceScanExec>() {
        let Ok(s) = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()) else {
            return;
        };
        let n = match s.num_rows {
            Precision::Exact(n) | Precision::Inexact(n) if n > 0 => n,
            _ => return,
        };
        for (f, c) in plan.schema().fields().iter().zip(&s.column_statistics) {
            if let Precision::Exact(b) | Precision::Inexact(b) = c.byte_size {
                if f.data_type().primitive_width().is_none() {
                    out.insert(f.name().clone(), b / n);
                }
            }
        }
        return;
    }
    for c in plan.children() {
        scan_text_widths(c, out);
    }
}

/// Bytes a value of type `t` takes in Arrow, roughly (text of unknown length counted
/// as 24 bytes).
fn field_width(t: &DataType) -> usize {
    match t {
        DataType::Boolean | DataType::Int8 | DataType::UInt8 => 1,
        DataType::Int16 | DataType::UInt16 => 2,
        DataType::Int32 | DataType::UInt32 | DataType::Float32 | DataType::Date32 => 4,
        DataType::Decimal128(_, _) => 16,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 24,
        _ => 8,
    }
}

fn fmt_est(rows: Option<usize>, bytes: Option<usize>) -> String {
    match (rows, bytes) {
        (Some(r), Some(b)) => format!("~{r} rows, ~{}", human_bytes(b as u64)),
        _ => "size unknown".into(),
    }
}

/// `1.5 MiB` style.
pub fn human_bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < U.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", U[i])
    }
}

/// The aliases of the tables scanned under `plan`.
fn aliases(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(p: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
        if let Some(s) = p.downcast_ref::<SliceScanExec>() {
            out.push(s.alias().to_string());
        }
        for c in p.children() {
            walk(c, out);
        }
    }
    walk(plan, &mut out);
    out
}

fn tables(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
    if let Some(s) = plan.downcast_ref::<SliceScanExec>() {
        if !out.iter().any(|t| t == s.table()) {
            out.push(s.table().to_string());
        }
    }
    for c in plan.children() {
        tables(c, out);
    }
}

/// The side of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// The sides that may stay in place (be the pivot) for `jt`: the other one is
/// broadcast, so it must be neither preserved (outer joins) nor the outer side of a
/// semi or anti join.
fn pivot_candidates(jt: JoinType) -> &'static [Side] {
    match jt {
        JoinType::Inner => &[Side::Left, Side::Right],
        JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
            &[Side::Left]
        }
        JoinType::Right | JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
            &[Side::Right]
        }
        JoinType::Full => &[],
    }
}

struct Cutter {
    opts: DistOptions,
    stages: Vec<Stage>,
    exchanges: Vec<Exchange>,
    decisions: Vec<String>,
}

fn rebuild(
    p: &Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let required = p.required_input_ordering();
    let children = children
        .into_iter()
        .enumerate()
        .map(|(i, c)| match required.get(i).cloned().flatten() {
            Some(req @ OrderingRequirements::Hard(_)) => sorted_by(c, req.into_single().into()),
            _ => Ok(c),
        })
        .collect::<DfResult<Vec<_>>>()?;
    #[allow(deprecated)]
    p.clone().with_new_children(children)
}

/// `c`, sorted by `ordering` unless its rows already are. The order a child had in
/// DataFusion's plan may be lost once it is cut: a sort below a join whose probe side
/// keeps it, for example, is merged on the primary, broadcast, and the join's rows
/// are gathered again in arrival order.
fn sorted_by(c: Arc<dyn ExecutionPlan>, ordering: LexOrdering) -> DfResult<Arc<dyn ExecutionPlan>> {
    if c.equivalence_properties()
        .ordering_satisfy(ordering.iter().cloned())?
    {
        return Ok(c);
    }
    let parts = c.output_partitioning().partition_count() > 1;
    Ok(Arc::new(
        SortExec::new(ordering, c).with_preserve_partitioning(parts),
    ))
}

/// One partition: merges a multi-partition plan (a union's parts) in place.
fn one_partition(p: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if p.output_partitioning().partition_count() > 1 {
        Arc::new(MergePartitionsExec::new(p))
    } else {
        p
    }
}

impl Cutter {
    fn new_exchange(
        &mut self,
        producer: Arc<dyn ExecutionPlan>,
        from: Place,
        kind: ExchangeKind,
        sorted_streams: bool,
        why: String,
    ) -> Arc<dyn ExecutionPlan> {
        let id = self.exchanges.len() as u16;
        let producer = one_partition(producer);
        let (est_rows, est_bytes) = estimate(&producer);
        // The consumers see all producers' rows: the producer's (cluster-wide)
        // statistics describe the exchange, so joins above it are estimated too.
        let stats = StatisticsContext::new()
            .compute(producer.as_ref(), &StatisticsArgs::new())
            .ok();
        let schema = producer.schema();
        // A sorted stream's order, declared by the consumer so operators above a
        // merge of the streams see their input sorted.
        let ordering = if sorted_streams {
            producer.output_ordering().cloned()
        } else {
            None
        };
        let stage = self.stages.len() as u16;
        self.stages.push(Stage {
            id: stage,
            place: from,
            plan: producer,
            output: Some(id),
        });
        let wait_complete = kind == ExchangeKind::Broadcast && !self.opts.overlap;
        self.exchanges.push(Exchange {
            id,
            kind,
            from,
            sorted_streams,
            wait_complete,
            schema: schema.clone(),
            est_rows,
            est_bytes,
            why,
        });
        let partitions = if sorted_streams && from == Place::Tstores {
            self.opts.tstores()
        } else {
            1
        };
        Arc::new(
            ExchangeExec::new(id, kind.name(), schema, partitions, stats).with_ordering(ordering),
        )
    }

    /// Moves a partitioned subtree to the primary.
    fn gather(&mut self, p: Arc<dyn ExecutionPlan>, why: &str) -> Arc<dyn ExecutionPlan> {
        self.new_exchange(p, Place::Tstores, ExchangeKind::Gather, false, why.into())
    }

    /// Brings `p` (in state `d`) to the primary.
    fn to_single(
        &mut self,
        p: Arc<dyn ExecutionPlan>,
        d: Dist,
        why: &str,
    ) -> Arc<dyn ExecutionPlan> {
        match d {
            Dist::Part => self.gather(p, why),
            Dist::Single | Dist::Const => p,
        }
    }

    fn cut(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Dist), PlanError> {
        let any = plan;
        if any.downcast_ref::<SliceScanExec>().is_some() {
            return Ok((plan.clone(), Dist::Part));
        }
        let children = plan.children();
        if children.is_empty() {
            // VALUES, EmptyExec, placeholder rows, system tables: the same anywhere.
            return Ok((plan.clone(), Dist::Const));
        }
        if any.downcast_ref::<HashJoinExec>().is_some()
            || any.downcast_ref::<NestedLoopJoinExec>().is_some()
            || any.downcast_ref::<CrossJoinExec>().is_some()
        {
            return self.join(plan);
        }
        let mut placed = Vec::with_capacity(children.len());
        for c in &children {
            placed.push(self.cut(c)?);
        }
        if any.downcast_ref::<UnionExec>().is_some()
            || any.downcast_ref::<InterleaveExec>().is_some()
        {
            let all = |d: Dist| placed.iter().all(|(_, x)| *x == d);
            if all(Dist::Part) || all(Dist::Const) || all(Dist::Single) {
                let d = placed[0].1;
                let kids = placed.into_iter().map(|(p, _)| p).collect();
                return Ok((rebuild(plan, kids)?, d));
            }
            let kids = placed
                .into_iter()
                .map(|(p, d)| {
                    self.to_single(
                        p,
                        d,
                        "a union of distributed and local inputs runs on the primary",
                    )
                })
                .collect();
            return Ok((rebuild(plan, kids)?, Dist::Single));
        }
        // One child from here on.
        let (child, d) = match <[_; 1]>::try_from(placed) {
            Ok([c]) => c,
            Err(_) => {
                return Err(PlanError::Unsupported(format!(
                    "distributing {} with several inputs",
                    plan.name()
                )))
            }
        };
        if d != Dist::Part {
            let child = if any.downcast_ref::<CoalescePartitionsExec>().is_some() {
                return Ok((one_partition(child), d));
            } else {
                child
            };
            return Ok((rebuild(plan, vec![child])?, d));
        }
        // Partitioned input.
        if any.downcast_ref::<ProjectionExec>().is_some()
            || any.downcast_ref::<FilterExec>().is_some()
            || any.downcast_ref::<LocalLimitExec>().is_some()
            || any.downcast_ref::<UnnestExec>().is_some()
            || plan.name() == "CoalesceBatchesExec"
            || plan.name() == "CooperativeExec"
        {
            return Ok((rebuild(plan, vec![child])?, Dist::Part));
        }
        if any.downcast_ref::<CoalescePartitionsExec>().is_some()
            || any.downcast_ref::<RepartitionExec>().is_some()
        {
            // Local parts of one Tstore are merged in place; nothing moves.
            return Ok((one_partition(child), Dist::Part));
        }
        if let Some(agg) = any.downcast_ref::<AggregateExec>() {
            return self.aggregate(plan, agg, child);
        }
        if let Some(sort) = any.downcast_ref::<SortExec>() {
            let fetch = sort.fetch();
            let local = Arc::new(
                SortExec::new(sort.expr().clone(), one_partition(child)).with_fetch(fetch),
            );
            let why = match fetch {
                Some(k) => format!("top-{k} of every Tstore, merged on the primary"),
                None => "sorted runs of every Tstore, merged on the primary".into(),
            };
            let g = self.new_exchange(local, Place::Tstores, ExchangeKind::Gather, true, why);
            let merge = SortPreservingMergeExec::new(sort.expr().clone(), g).with_fetch(fetch);
            return Ok((Arc::new(merge), Dist::Single));
        }
        if let Some(spm) = any.downcast_ref::<SortPreservingMergeExec>() {
            let ordering: LexOrdering = spm.expr().clone();
            let local = Arc::new(
                SortExec::new(ordering.clone(), one_partition(child)).with_fetch(spm.fetch()),
            );
            let g = self.new_exchange(
                local,
                Place::Tstores,
                ExchangeKind::Gather,
                true,
                "sorted runs of every Tstore, merged on the primary".into(),
            );
            let merge = SortPreservingMergeExec::new(ordering, g).with_fetch(spm.fetch());
            return Ok((Arc::new(merge), Dist::Single));
        }
        if let Some(l) = any.downcast_ref::<GlobalLimitExec>() {
            let skip = l.skip();
            let local: Arc<dyn ExecutionPlan> = match l.fetch() {
                Some(f) => Arc::new(LocalLimitExec::new(one_partition(child), skip + f)),
                None => child,
            };
            let g = self.gather(
                local,
                "a limit: every Tstore's first rows, cut on the primary",
            );
            return Ok((
                Arc::new(GlobalLimitExec::new(g, skip, l.fetch())),
                Dist::Single,
            ));
        }
        // Windows and anything else that needs every row in one place.
        let g = self.gather(
            child,
            &format!("{} needs all rows in one place", plan.name()),
        );
        Ok((rebuild(plan, vec![g])?, Dist::Single))
    }

    fn aggregate(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
        agg: &AggregateExec,
        child: Arc<dyn ExecutionPlan>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Dist), PlanError> {
        match agg.mode() {
            AggregateMode::Partial | AggregateMode::PartialReduce => {
                Ok((rebuild(plan, vec![one_partition(child)])?, Dist::Part))
            }
            AggregateMode::Final | AggregateMode::FinalPartitioned => {
                let g = self.gather(
                    child,
                    "partial aggregates of every Tstore, merged on the primary",
                );
                let fin = AggregateExec::try_new(
                    AggregateMode::Final,
                    agg.group_expr().clone(),
                    agg.aggr_expr().to_vec(),
                    agg.filter_expr().to_vec(),
                    g,
                    agg.input_schema(),
                )?;
                Ok((Arc::new(fin), Dist::Single))
            }
            AggregateMode::Single | AggregateMode::SinglePartitioned => {
                let partial = AggregateExec::try_new(
                    AggregateMode::Partial,
                    agg.group_expr().clone(),
                    agg.aggr_expr().to_vec(),
                    agg.filter_expr().to_vec(),
                    one_partition(child),
                    agg.input_schema(),
                )?;
                let aggr = partial.aggr_expr().to_vec();
                let final_groups = partial.group_expr().as_final();
                let g = self.gather(
                    Arc::new(partial),
                    "partial aggregates of every Tstore, merged on the primary",
                );
                let fin = AggregateExec::try_new(
                    AggregateMode::Final,
                    final_groups,
                    aggr,
                    agg.filter_expr().to_vec(),
                    g,
                    agg.input_schema(),
                )?;
                Ok((Arc::new(fin), Dist::Single))
            }
        }
    }

    fn join(
        &mut self,
        plan: &Arc<dyn ExecutionPlan>,
    ) -> Result<(Arc<dyn ExecutionPlan>, Dist), PlanError> {
        let any = plan;
        let jt = if let Some(h) = any.downcast_ref::<HashJoinExec>() {
            *h.join_type()
        } else if let Some(n) = any.downcast_ref::<NestedLoopJoinExec>() {
            *n.join_type()
        } else {
            JoinType::Inner
        };
        let children = plan.children();
        let (l, dl) = self.cut(children[0])?;
        let (r, dr) = self.cut(children[1])?;
        let allowed = pivot_candidates(jt);
        use Dist::*;
        match (dl, dr) {
            (Part, Part) => {
                let forced = self.opts.pivot.as_ref().and_then(|p| {
                    let p = p.to_lowercase();
                    if aliases(&l).iter().any(|a| a.to_lowercase() == p) {
                        Some(Side::Left)
                    } else if aliases(&r).iter().any(|a| a.to_lowercase() == p) {
                        Some(Side::Right)
                    } else {
                        None
                    }
                });
                let (lr, lb) = estimate(&l);
                let (rr, rb) = estimate(&r);
                let pivot = match (allowed, forced) {
                    ([], _) => None,
                    ([only], _) => Some(*only),
                    (_, Some(f)) => Some(f),
                    _ => Some(if lb.unwrap_or(0) >= rb.unwrap_or(0) {
                        Side::Left
                    } else {
                        Side::Right
                    }),
                };
                let name_of = |p: &Arc<dyn ExecutionPlan>| {
                    let a = aliases(p);
                    if a.is_empty() {
                        "(no table)".to_string()
                    } else {
                        a.join(", ")
                    }
                };
                let Some(pivot) = pivot else {
                    self.decisions.push(format!(
                        "{jt} join of [{}] and [{}]: both sides are preserved, so neither can be \
                         broadcast; both are gathered and joined on the primary",
                        name_of(&l),
                        name_of(&r)
                    ));
                    let l = self.gather(l, "a full outer join runs on the primary");
                    let r = self.gather(r, "a full outer join runs on the primary");
                    return Ok((rebuild(plan, vec![l, r])?, Single));
                };
                let (stay, moving, stay_est, move_est) = match pivot {
                    Side::Left => (&l, &r, (lr, lb), (rr, rb)),
                    Side::Right => (&r, &l, (rr, rb), (lr, lb)),
                };
                let reason = if allowed.len() == 1 {
                    format!("the {jt} join keeps its outer side in place")
                } else if forced.is_some() {
                    "forced by smrdb.pivot".to_string()
                } else {
                    format!(
                        "its broadcast would move more ({} vs {})",
                        fmt_est(stay_est.0, stay_est.1),
                        fmt_est(move_est.0, move_est.1)
                    )
                };
                self.decisions.push(format!(
                    "{jt} join: pivot [{}] stays in place ({reason}); [{}] is broadcast",
                    name_of(stay),
                    name_of(moving)
                ));
                let moving_rows = move_est.0;
                let why = format!(
                    "join table [{}] for the {jt} join with [{}]",
                    name_of(moving),
                    name_of(stay)
                );
                let x = self.new_exchange(
                    moving.clone(),
                    Place::Tstores,
                    ExchangeKind::Broadcast,
                    false,
                    why,
                );
                let stay = one_partition(stay.clone());
                let (nl, nr) = match pivot {
                    Side::Left => (stay, x),
                    Side::Right => (x, stay),
                };
                let joined = rebuild(plan, vec![nl, nr])?;
                // Build on the smaller of the local pivot part and the whole broadcast.
                let local_rows = stay_est.0.map(|r| r / self.opts.tstores());
                let build_on_pivot =
                    matches!((local_rows, moving_rows), (Some(a), Some(b)) if a < b);
                let joined = self.choose_build(joined, pivot, build_on_pivot)?;
                Ok((joined, Part))
            }
            (Part, Const) | (Const, Part) => {
                let const_side = if dl == Const { Side::Left } else { Side::Right };
                let part_side = if dl == Part { Side::Left } else { Side::Right };
                if allowed.contains(&part_side) {
                    // Every Tstore computes the constant side itself.
                    let (l, r) = (one_partition(l), one_partition(r));
                    self.decisions.push(format!(
                        "{jt} join: the constant {} input is computed on every Tstore",
                        if const_side == Side::Left {
                            "left"
                        } else {
                            "right"
                        }
                    ));
                    Ok((rebuild(plan, vec![l, r])?, Part))
                } else {
                    let (l, r) = (
                        self.to_single(l, dl, "joined with a constant input on the primary"),
                        self.to_single(r, dr, "joined with a constant input on the primary"),
                    );
                    Ok((rebuild(plan, vec![l, r])?, Single))
                }
            }
            (Part, Single) | (Single, Part) => {
                let part_side = if dl == Part { Side::Left } else { Side::Right };
                if allowed.contains(&part_side) {
                    self.decisions.push(format!(
                        "{jt} join: a result of the primary is broadcast to the Tstores"
                    ));
                    let why = "a result of the primary, broadcast for a join".to_string();
                    let (l, r) = if dl == Single {
                        (
                            self.new_exchange(
                                l,
                                Place::Primary,
                                ExchangeKind::Broadcast,
                                false,
                                why,
                            ),
                            one_partition(r),
                        )
                    } else {
                        (
                            one_partition(l),
                            self.new_exchange(
                                r,
                                Place::Primary,
                                ExchangeKind::Broadcast,
                                false,
                                why,
                            ),
                        )
                    };
                    Ok((rebuild(plan, vec![l, r])?, Part))
                } else {
                    let why = "joined on the primary with a result of the primary";
                    let (l, r) = (self.to_single(l, dl, why), self.to_single(r, dr, why));
                    Ok((rebuild(plan, vec![l, r])?, Single))
                }
            }
            (Const, Const) => Ok((rebuild(plan, vec![l, r])?, Const)),
            _ => {
                let why = "joined on the primary";
                let (l, r) = (self.to_single(l, dl, why), self.to_single(r, dr, why));
                Ok((rebuild(plan, vec![l, r])?, Single))
            }
        }
    }

    /// Puts the hash table of a broadcast join on the pivot (`build_on_pivot`: the
    /// broadcast chunks are then probed as they arrive) or on the broadcast input.
    fn choose_build(
        &mut self,
        joined: Arc<dyn ExecutionPlan>,
        pivot: Side,
        build_on_pivot: bool,
    ) -> Result<Arc<dyn ExecutionPlan>, PlanError> {
        // DataFusion builds on the left input.
        let pivot_is_build = pivot == Side::Left;
        if pivot_is_build == build_on_pivot {
            self.note_build(build_on_pivot);
            return Ok(joined);
        }
        let any = &joined;
        let swapped = if let Some(h) = any.downcast_ref::<HashJoinExec>() {
            // A null-aware anti join (NOT IN) exists only as LeftAnti: it keeps its sides.
            if h.null_aware {
                None
            } else {
                Some(h.swap_inputs(PartitionMode::CollectLeft)?)
            }
        } else if let Some(n) = any.downcast_ref::<NestedLoopJoinExec>() {
            Some(n.swap_inputs()?)
        } else if let Some(c) = any.downcast_ref::<CrossJoinExec>() {
            Some(c.swap_inputs()?)
        } else {
            None
        };
        match swapped {
            Some(s) => {
                self.note_build(build_on_pivot);
                Ok(s)
            }
            None => {
                self.note_build(pivot_is_build);
                Ok(joined)
            }
        }
    }

    fn note_build(&mut self, on_pivot: bool) {
        if let Some(last) = self.decisions.last_mut() {
            last.push_str(if on_pivot {
                "; the hash table is built on the local pivot part and the join table is \
                 probed chunk by chunk as it arrives"
            } else {
                "; the hash table is built on the whole join table and the pivot part is \
                 probed against it"
            });
        }
    }
}

/// Cuts `plan` (DataFusion's single-node physical plan) into stages.
///
/// # Errors
/// Plans that cannot be distributed (a bug or an unsupported operator shape).
pub fn distribute(
    plan: &Arc<dyn ExecutionPlan>,
    opts: &DistOptions,
) -> Result<DistPlan, PlanError> {
    let mut c = Cutter {
        opts: opts.clone(),
        stages: Vec::new(),
        exchanges: Vec::new(),
        decisions: Vec::new(),
    };
    let (root, d) = c.cut(plan)?;
    let root = match d {
        Dist::Part => c.gather(root, "the result"),
        Dist::Single | Dist::Const => root,
    };
    let root = one_partition(root);
    // The result in the order DataFusion's plan gives it (ORDER BY).
    let root = match plan.output_ordering() {
        Some(o) => sorted_by(root, o.clone())?,
        None => root,
    };
    let mut t = Vec::new();
    tables(plan, &mut t);
    let id = c.stages.len() as u16;
    c.stages.push(Stage {
        id,
        place: Place::Primary,
        plan: root,
        output: None,
    });
    Ok(DistPlan {
        stages: c.stages,
        exchanges: c.exchanges,
        decisions: c.decisions,
        tables: t,
        options: opts.clone(),
    })
}
