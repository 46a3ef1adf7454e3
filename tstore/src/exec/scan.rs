//! [`SliceScanExec`]: this Tstore's slice of a table, read in place.

use std::fmt;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion_common::tree_node::TreeNodeRecursion;
use datafusion_common::{Result, Statistics};
use datafusion_execution::TaskContext;
use datafusion_physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion_physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion_physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion_physical_plan::statistics::StatisticsArgs;
use datafusion_physical_plan::stream::RecordBatchStreamAdapter;
use datafusion_physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};

use super::{TaskInputs, BATCH_ROWS};

/// Scans the Tstore's slice of `table`: its chunks, projected to `projection`, cut
/// into batches of at most [`BATCH_ROWS`] rows (zero-copy slices), at most `limit`
/// rows. One partition.
#[derive(Debug, Clone)]
pub struct SliceScanExec {
    table: String,
    alias: Option<String>,
    /// The table's full schema.
    table_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
    /// Whole-table estimate (all Tstores) for the planner; unknown after decoding.
    stats: Option<Arc<Statistics>>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SliceScanExec {
    /// A scan of `table` (whose full schema is `table_schema`), known in the query as
    /// `alias`.
    ///
    /// # Errors
    /// A projection index outside the schema.
    pub fn try_new(
        table: impl Into<String>,
        alias: Option<String>,
        table_schema: SchemaRef,
        projection: Option<Vec<usize>>,
        limit: Option<usize>,
        stats: Option<Arc<Statistics>>,
    ) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(table_schema.project(p)?),
            None => table_schema.clone(),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let stats = match (&stats, &projection) {
            (Some(s), Some(p)) => Some(Arc::new(s.as_ref().clone().project(Some(p)))),
            _ => stats,
        };
        Ok(SliceScanExec {
            table: table.into(),
            alias,
            table_schema,
            projection,
            limit,
            stats,
            props: Arc::new(props),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    /// The table scanned.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The name the query gives it (its alias, or the table name).
    pub fn alias(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.table)
    }

    /// The alias as written, if any.
    pub fn alias_opt(&self) -> Option<&str> {
        self.alias.as_deref()
    }

    /// The table's full schema.
    pub fn table_schema(&self) -> &SchemaRef {
        &self.table_schema
    }

    /// The columns read.
    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }

    /// The row limit.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }
}

impl DisplayAs for SliceScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SliceScanExec: {}", self.table)?;
        if let Some(a) = &self.alias {
            if a != &self.table {
                write!(f, " AS {a}")?;
            }
        }
        let schema = self.schema();
        let cols: Vec<&str> = schema.fields().iter().map(|c| c.name().as_str()).collect();
        write!(f, " [{}]", cols.join(", "))?;
        if let Some(l) = self.limit {
            write!(f, " limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SliceScanExec {
    fn name(&self) -> &str {
        "SliceScanExec"
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
        let inputs = TaskInputs::of(&context)?;
        let snap = inputs.table(&self.table)?;
        let chunks = snap.batches.clone();
        let projection = self.projection.clone();
        let mut left = self.limit.unwrap_or(usize::MAX);
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let mut chunk = 0usize;
        let mut offset = 0usize;
        let iter = std::iter::from_fn(move || -> Option<Result<RecordBatch>> {
            while chunk < chunks.len() && left > 0 {
                let c = &chunks[chunk];
                if offset >= c.num_rows() {
                    chunk += 1;
                    offset = 0;
                    continue;
                }
                let n = (c.num_rows() - offset).min(BATCH_ROWS).min(left);
                let b = c.slice(offset, n);
                offset += n;
                left -= n;
                let b = match &projection {
                    Some(p) => match b.project(p) {
                        Ok(b) => b,
                        Err(e) => return Some(Err(e.into())),
                    },
                    None => b,
                };
                baseline.record_output(b.num_rows());
                return Some(Ok(b));
            }
            baseline.done();
            None
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            futures::stream::iter(iter),
        )))
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
