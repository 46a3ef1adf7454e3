//! [`ExchangeExec`]: the consumer's end of an exchange.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion_common::tree_node::TreeNodeRecursion;
use datafusion_common::{Result, Statistics};
use datafusion_execution::{RecordBatchStream, TaskContext};
use datafusion_physical_expr::{EquivalenceProperties, LexOrdering, PhysicalExpr};
use datafusion_physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion_physical_plan::filter::FilterExec;
use datafusion_physical_plan::joins::HashJoinExec;
use datafusion_physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion_physical_plan::projection::ProjectionExec;
use datafusion_physical_plan::statistics::StatisticsArgs;
use datafusion_physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::Stream;

use super::{ExchangeQueue, TaskInputs};

/// The batches of exchange `id` as they arrive from its producers. With
/// `partitions` > 1 (a gather whose producers each send a sorted stream), partition
/// `i` is producer `i`'s stream, sorted by the exchange's `ordering`, which the plan
/// properties declare (so a merge above it, and a window above the merge, see their
/// input sorted); otherwise one partition interleaves every producer in arrival order.
#[derive(Debug, Clone)]
pub struct ExchangeExec {
    id: u16,
    /// `broadcast` or `gather` (EXPLAIN).
    kind: String,
    partitions: usize,
    /// The planner's estimate of what the exchange carries in all.
    stats: Option<Arc<Statistics>>,
    /// The order of every partition's rows (sorted streams only).
    ordering: Option<LexOrdering>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ExchangeExec {
    /// The consumer end of exchange `id` with `schema`.
    pub fn new(
        id: u16,
        kind: impl Into<String>,
        schema: SchemaRef,
        partitions: usize,
        stats: Option<Arc<Statistics>>,
    ) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        ExchangeExec {
            id,
            kind: kind.into(),
            partitions: partitions.max(1),
            stats,
            ordering: None,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// Declares that every partition's rows arrive sorted by `ordering` (its
    /// expressions over the exchange's schema).
    pub fn with_ordering(mut self, ordering: Option<LexOrdering>) -> Self {
        let schema = self.schema();
        let eq = match &ordering {
            Some(o) => EquivalenceProperties::new_with_orderings(schema, [o.clone()]),
            None => EquivalenceProperties::new(schema),
        };
        let props = PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(self.partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        self.ordering = ordering;
        self.props = Arc::new(props);
        self
    }

    /// The order of every partition's rows, when declared.
    pub fn ordering(&self) -> Option<&LexOrdering> {
        self.ordering.as_ref()
    }

    /// The exchange id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// `broadcast` or `gather`.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Output partitions.
    pub fn partitions(&self) -> usize {
        self.partitions
    }
}

impl DisplayAs for ExchangeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExchangeExec: {} #{}", self.kind, self.id)?;
        if self.partitions > 1 {
            write!(f, " ({} sorted streams)", self.partitions)?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ExchangeExec {
    fn name(&self) -> &str {
        "ExchangeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let queue = TaskInputs::of(&context)?.exchange(self.id, partition)?;
        Ok(Box::pin(QueueStream {
            schema: self.schema(),
            queue,
            metrics: BaselineMetrics::new(&self.metrics, partition),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(match &self.stats {
            Some(s) => s.clone(),
            None => Arc::new(Statistics::new_unknown(&self.schema())),
        })
    }
}

/// The exchanges of `plan` whose batches are probed as they arrive and then dropped:
/// the probe (right) input of a hash join, through filters and projections, whose
/// build side reads no exchange (so the probing starts without waiting for other
/// chunks). A consumer may keep these chunks in the receive ring (decoded in place).
/// Every other input holds its batches until something else has arrived (a hash
/// table's build side holds all of its own; a probe side waits for its build side's
/// exchange), and a ring, released in order, must not wait on that: the chunks it
/// waits for may be behind the held ones in the same ring.
pub fn probed_exchanges(plan: &Arc<dyn ExecutionPlan>) -> Vec<u16> {
    fn probe_leaf(p: &Arc<dyn ExecutionPlan>) -> Option<u16> {
        if let Some(x) = p.downcast_ref::<ExchangeExec>() {
            return Some(x.id());
        }
        if p.is::<FilterExec>()
            || p.is::<ProjectionExec>()
            || matches!(p.name(), "CoalesceBatchesExec" | "CooperativeExec")
        {
            return probe_leaf(p.children().first()?);
        }
        None
    }
    fn reads_exchange(p: &Arc<dyn ExecutionPlan>) -> bool {
        p.is::<ExchangeExec>() || p.children().into_iter().any(reads_exchange)
    }
    fn walk(p: &Arc<dyn ExecutionPlan>, out: &mut Vec<u16>) {
        if let Some(j) = p.downcast_ref::<HashJoinExec>() {
            if !reads_exchange(j.left()) {
                if let Some(id) = probe_leaf(j.right()) {
                    out.push(id);
                }
            }
        }
        for c in p.children() {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

struct QueueStream {
    schema: SchemaRef,
    queue: Arc<ExchangeQueue>,
    metrics: BaselineMetrics,
}

impl Stream for QueueStream {
    type Item = Result<RecordBatch>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let p = self.queue.poll_next(cx);
        if let Poll::Ready(Some(Ok(b))) = &p {
            self.metrics.record_output(b.num_rows());
        }
        if let Poll::Ready(None) = &p {
            self.metrics.done();
        }
        p
    }
}

impl RecordBatchStream for QueueStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
