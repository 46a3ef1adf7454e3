//! The Tstore's leaves of DataFusion physical plans, and the format a stage of a
//! distributed plan travels in.
//!
//! A stage of a distributed query is a DataFusion [`ExecutionPlan`] whose leaves are
//! ours:
//! * [`SliceScanExec`]: this Tstore's slice of a table, read in place (the Arrow
//!   chunks of the [`crate::Store`], sliced into batches; no copy);
//! * [`ExchangeExec`]: the batches of an exchange from an earlier stage (a broadcast
//!   join table, a gather on the primary), decoded from the router's ring as they
//!   arrive and handed over through an [`ExchangeQueue`];
//! * [`MergePartitionsExec`]: all partitions of its input as one stream, polled in
//!   turn on the calling thread (DataFusion's `CoalescePartitionsExec` spawns a task
//!   per partition; a Tstore is one pinned thread).
//!
//! What those leaves read comes through the [`TaskContext`]'s session config as a
//! [`TaskInputs`] extension: table snapshots and the exchange queues of the task.
//! [`codec::SmrdbCodec`] serializes the leaves for `datafusion-proto`;
//! [`fragment`] is the versioned message that carries a query's stages to a node.

pub mod codec;
pub mod fragment;
pub mod functions;
pub mod pgmath;
pub mod queue;

mod exchange;
mod merge;
mod scan;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion_common::{DataFusionError, Result};
use datafusion_execution::config::SessionConfig;
use datafusion_execution::runtime_env::RuntimeEnv;
use datafusion_execution::TaskContext;

pub use exchange::{probed_exchanges, ExchangeExec};
pub use merge::MergePartitionsExec;
pub use queue::ExchangeQueue;
pub use scan::SliceScanExec;

/// Rows per batch handed to DataFusion's operators.
pub const BATCH_ROWS: usize = 8192;

/// A table's rows at the start of a task: the Arrow chunks (shared, not copied).
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    /// The table's Arrow schema.
    pub schema: SchemaRef,
    /// Its chunks in storage order.
    pub batches: Arc<Vec<RecordBatch>>,
}

/// What the leaves of one task's plans read: table snapshots and exchange queues.
/// Installed in the task's [`TaskContext`] as a session-config extension.
#[derive(Debug, Default)]
pub struct TaskInputs {
    tables: HashMap<String, TableSnapshot>,
    exchanges: HashMap<(u16, usize), Arc<ExchangeQueue>>,
}

impl TaskInputs {
    /// Empty inputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a table snapshot.
    pub fn add_table(&mut self, name: impl Into<String>, snap: TableSnapshot) {
        self.tables.insert(name.into(), snap);
    }

    /// Adds the queue of partition `partition` of exchange `exchange`.
    pub fn add_exchange(&mut self, exchange: u16, partition: usize, q: Arc<ExchangeQueue>) {
        self.exchanges.insert((exchange, partition), q);
    }

    /// The snapshot of `table`.
    ///
    /// # Errors
    /// An execution error when the task has no such table (a fragment that names a
    /// table this node does not hold).
    pub fn table(&self, table: &str) -> Result<&TableSnapshot> {
        self.tables.get(table).ok_or_else(|| {
            DataFusionError::Execution(format!(
                "relation \"{table}\" does not exist on this Tstore"
            ))
        })
    }

    /// The queue of an exchange partition.
    ///
    /// # Errors
    /// An execution error when the task does not receive that exchange.
    pub fn exchange(&self, exchange: u16, partition: usize) -> Result<Arc<ExchangeQueue>> {
        self.exchanges
            .get(&(exchange, partition))
            .cloned()
            .ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "exchange {exchange} partition {partition} is not an input of this task"
                ))
            })
    }

    /// The inputs installed in `ctx`.
    ///
    /// # Errors
    /// An internal error when the context carries none (a plan run outside a task).
    pub fn of(ctx: &TaskContext) -> Result<Arc<TaskInputs>> {
        ctx.session_config()
            .get_extension::<TaskInputs>()
            .ok_or_else(|| DataFusionError::Internal("a task context without TaskInputs".into()))
    }
}

/// The functions every node knows ([`functions::Functions::all`]), built once.
pub fn functions() -> &'static functions::Functions {
    static F: OnceLock<functions::Functions> = OnceLock::new();
    F.get_or_init(functions::Functions::all)
}

/// A task context with every function and, when given, the task's inputs.
pub fn task_context(inputs: Option<Arc<TaskInputs>>) -> Arc<TaskContext> {
    let mut config = SessionConfig::new().with_batch_size(BATCH_ROWS);
    if let Some(i) = inputs {
        config = config.with_extension(i);
    }
    let f = functions();
    Arc::new(TaskContext::new(
        None,
        "smrdb".to_string(),
        config,
        f.scalar.clone(),
        HashMap::new(),
        f.aggregate.clone(),
        f.window.clone(),
        Arc::new(RuntimeEnv::default()),
    ))
}
