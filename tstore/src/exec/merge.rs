//! [`MergePartitionsExec`]: every partition of its input as one stream, without
//! spawning tasks.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion_common::tree_node::TreeNodeRecursion;
use datafusion_common::{DataFusionError, Result};
use datafusion_execution::{RecordBatchStream, TaskContext};
use datafusion_physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion_physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion_physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::Stream;

/// Yields the batches of all of its input's partitions, polling the partitions in
/// turn on the calling thread; one output partition. Used where DataFusion would put
/// a `CoalescePartitionsExec` (which spawns a task per partition).
#[derive(Debug, Clone)]
pub struct MergePartitionsExec {
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
}

impl MergePartitionsExec {
    /// Merges `input`'s partitions.
    pub fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        let props = PlanProperties::new(
            EquivalenceProperties::new(input.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        MergePartitionsExec {
            input,
            props: Arc::new(props),
        }
    }

    /// The input.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for MergePartitionsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MergePartitionsExec: {} partitions",
            self.input.output_partitioning().partition_count()
        )
    }
}

impl ExecutionPlan for MergePartitionsExec {
    fn name(&self) -> &str {
        "MergePartitionsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([c]) => Ok(Arc::new(MergePartitionsExec::new(c))),
            Err(_) => Err(DataFusionError::Internal(
                "MergePartitionsExec takes one child".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "MergePartitionsExec has one partition, asked for {partition}"
            )));
        }
        let n = self.input.output_partitioning().partition_count();
        let streams = (0..n)
            .map(|p| self.input.execute(p, context.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::pin(Merged {
            schema: self.schema(),
            streams: streams.into_iter().map(Some).collect(),
            next: 0,
        }))
    }
}

struct Merged {
    schema: SchemaRef,
    streams: Vec<Option<SendableRecordBatchStream>>,
    next: usize,
}

impl Stream for Merged {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let n = self.streams.len();
        for k in 0..n {
            let i = (self.next + k) % n;
            let Some(s) = self.streams[i].as_mut() else {
                continue;
            };
            match s.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    self.next = (i + 1) % n;
                    return Poll::Ready(Some(item));
                }
                Poll::Ready(None) => self.streams[i] = None,
                Poll::Pending => {}
            }
        }
        if self.streams.iter().all(Option::is_none) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl RecordBatchStream for Merged {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
