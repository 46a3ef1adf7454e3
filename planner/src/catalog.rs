//! The catalog as DataFusion sees it: every table a [`SliceTable`] (a
//! `TableProvider` whose scan is the Tstores' [`SliceScanExec`]), with the cluster's
//! column statistics.

use std::any::Any;
use std::sync::Arc;

use arrow_schema::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, Result, Statistics};
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use smrdb_tstore::exec::SliceScanExec;
use smrdb_tstore::{TableSchema, TableStats};

/// What the planner needs to know of the cluster's tables and the session.
pub trait Catalog {
    /// A table's schema and, when known, its statistics merged over the Tstores.
    fn table(&self, name: &str) -> Option<(TableSchema, Option<TableStats>)>;
    /// A system table's rows (`smrdb_tstores`, `smrdb_router`), computed when asked.
    fn system_table(&self, _name: &str) -> Option<arrow_array::RecordBatch> {
        None
    }
    /// A session setting (`smrdb.pivot`, `smrdb.overlap`...).
    fn setting(&self, _name: &str) -> Option<String> {
        None
    }
}

/// A table of the cluster: scanned in place by every Tstore.
#[derive(Debug, Clone)]
pub struct SliceTable {
    name: String,
    alias: Option<String>,
    schema: TableSchema,
    arrow: SchemaRef,
    stats: Option<Arc<Statistics>>,
}

/// DataFusion statistics of a table from the cluster's merged statistics. Every
/// figure is inexact (the Tstores' sketches, and writes may have happened since).
pub fn df_statistics(arrow: &SchemaRef, s: &TableStats) -> Statistics {
    // Bytes per column: fixed-width columns by their width; what the table's bytes
    // leave is shared by its variable-width (text) columns.
    let fixed = |t: &arrow_schema::DataType| match t {
        arrow_schema::DataType::Boolean => Some(1),
        t => t.primitive_width(),
    };
    let fixed_bytes: u64 = arrow
        .fields()
        .iter()
        .filter_map(|f| fixed(f.data_type()))
        .map(|w| w as u64 * s.rows)
        .sum();
    let varying = arrow
        .fields()
        .iter()
        .filter(|f| fixed(f.data_type()).is_none())
        .count() as u64;
    let varying_bytes = s.bytes.saturating_sub(fixed_bytes) / varying.max(1);
    let byte_size = |f: &arrow_schema::Field| match fixed(f.data_type()) {
        Some(w) => Precision::Inexact(w * s.rows as usize),
        None => Precision::Inexact(varying_bytes as usize),
    };
    let columns = arrow
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| match s.columns.get(i) {
            Some(c) => ColumnStatistics {
                null_count: Precision::Inexact(c.nulls as usize),
                max_value: c
                    .max
                    .as_ref()
                    .and_then(|v| v.to_scalar(f.data_type()))
                    .map(Precision::Inexact)
                    .unwrap_or(Precision::Absent),
                min_value: c
                    .min
                    .as_ref()
                    .and_then(|v| v.to_scalar(f.data_type()))
                    .map(Precision::Inexact)
                    .unwrap_or(Precision::Absent),
                sum_value: Precision::Absent,
                distinct_count: Precision::Inexact(
                    (c.distinct() as usize).min((s.rows - c.nulls.min(s.rows)) as usize),
                ),
                byte_size: byte_size(f),
            },
            None => ColumnStatistics::new_unknown(),
        })
        .collect();
    Statistics {
        num_rows: Precision::Inexact(s.rows as usize),
        total_byte_size: Precision::Inexact(s.bytes as usize),
        column_statistics: columns,
    }
}

impl SliceTable {
    /// The table `name`.
    pub fn new(name: impl Into<String>, schema: TableSchema, stats: Option<&TableStats>) -> Self {
        let arrow = schema.to_arrow();
        let stats = stats.map(|s| Arc::new(df_statistics(&arrow, s)));
        SliceTable {
            name: name.into(),
            alias: None,
            schema,
            arrow,
            stats,
        }
    }

    /// The same table known in the query as `alias`.
    pub fn with_alias(&self, alias: impl Into<String>) -> Self {
        SliceTable {
            alias: Some(alias.into()),
            ..self.clone()
        }
    }

    /// Table name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its SQL schema.
    pub fn table_schema(&self) -> &TableSchema {
        &self.schema
    }
}

#[async_trait]
impl TableProvider for SliceTable {
    fn schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SliceScanExec::try_new(
            self.name.clone(),
            self.alias.clone(),
            self.arrow.clone(),
            projection.cloned(),
            limit,
            self.stats.clone(),
        )?))
    }

    fn statistics(&self) -> Option<Statistics> {
        self.stats.as_ref().map(|s| s.as_ref().clone())
    }
}

/// `TableProvider` is `Any`: the `SliceTable` behind a provider, if it is one.
pub fn as_slice_table(p: &Arc<dyn TableProvider>) -> Option<&SliceTable> {
    let any: &dyn Any = p.as_ref();
    any.downcast_ref::<SliceTable>()
}
