//! [`Finish`]: the primary's post-processing of the gathered fragment results.

use std::collections::HashSet;
use std::sync::Arc;

use arrow_array::{new_empty_array, ArrayRef, RecordBatch, RecordBatchOptions, UInt32Array};
use arrow_ord::sort::{lexsort_to_indices, SortColumn, SortOptions};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use smrdb_tstore::{DataType, Expr, PartialAgg, TableSchema};

use crate::PlanError;

/// One ORDER BY key of the post-processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKey {
    /// Index into [`Finish::exprs`].
    pub column: usize,
    /// DESC.
    pub descending: bool,
    /// NULLS FIRST (PostgreSQL default: true for DESC, false for ASC).
    pub nulls_first: bool,
}

/// The primary's post-processing of gathered batches.
///
/// Stage 1 is the gathered data: with [`Finish::agg`] set, the partial states are
/// merged and finalized into one batch (group columns `g0..gk`, then one column per
/// aggregate); otherwise the gathered batches (the fragment's projection) are
/// concatenated. Then: `having` filters stage-1 rows, `exprs` are evaluated over
/// them (the output columns first, then hidden sort keys), DISTINCT applies to the
/// output columns, rows are sorted by `order_by`, and OFFSET / LIMIT cut the result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finish {
    /// Partial aggregation whose states the Tstores return, if any.
    pub agg: Option<PartialAgg>,
    /// The scanned table's schema (to build an empty state when nothing was gathered).
    pub table_schema: TableSchema,
    /// HAVING, over the stage-1 batch.
    pub having: Option<Expr>,
    /// Expressions over the stage-1 batch: `columns.len()` outputs, then sort keys.
    pub exprs: Vec<Expr>,
    /// SELECT DISTINCT still to be applied on the primary.
    pub distinct: bool,
    /// ORDER BY keys (indices into `exprs`).
    pub order_by: Vec<SortKey>,
    /// OFFSET.
    pub offset: u64,
    /// LIMIT.
    pub limit: Option<u64>,
    /// Output names and types.
    pub columns: Vec<(String, DataType)>,
}

impl Finish {
    /// The Arrow schema of the result.
    pub fn output_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|(n, t)| Field::new(n, t.to_arrow(), true))
                .collect::<Vec<_>>(),
        ))
    }

    fn empty(&self) -> Result<RecordBatch, PlanError> {
        let schema = self.output_schema();
        let cols: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|(_, t)| new_empty_array(&t.to_arrow()))
            .collect();
        Ok(RecordBatch::try_new_with_options(
            schema,
            cols,
            &RecordBatchOptions::new().with_row_count(Some(0)),
        )?)
    }

    /// Runs post-processing (merge + finalize partial aggregates, HAVING, final
    /// projection, DISTINCT, ORDER BY with NULLS FIRST/LAST, OFFSET/LIMIT) over the
    /// batches gathered from every Tstore (any number, possibly zero, in any order).
    /// Returns the result with exactly `columns` (names and types).
    pub fn apply(&self, gathered: Vec<RecordBatch>) -> Result<RecordBatch, PlanError> {
        // Stage 1.
        let mut batch = match &self.agg {
            Some(agg) => {
                let parts = if gathered.is_empty() {
                    vec![agg.partial(&self.table_schema, &[])?]
                } else {
                    gathered
                };
                agg.merge_finalize(&parts)?
            }
            None => {
                let Some(first) = gathered.first() else {
                    return self.empty();
                };
                if gathered.len() == 1 {
                    first.clone()
                } else {
                    arrow_select::concat::concat_batches(&first.schema(), &gathered)?
                }
            }
        };
        // HAVING.
        if let Some(h) = &self.having {
            let mask = h.eval_predicate(&batch)?;
            batch = arrow_select::filter::filter_record_batch(&batch, &mask)?;
        }
        let n = batch.num_rows();
        if n == 0 {
            return self.empty();
        }
        // Projection (outputs + sort keys).
        let mut cols: Vec<ArrayRef> = self
            .exprs
            .iter()
            .map(|e| e.eval(&batch))
            .collect::<Result<_, _>>()?;
        let nout = self.columns.len();
        // DISTINCT on the output columns (keeps the first occurrence).
        if self.distinct {
            let conv = RowConverter::new(
                cols[..nout]
                    .iter()
                    .map(|a| SortField::new(a.data_type().clone()))
                    .collect(),
            )?;
            let rows = conv.convert_columns(&cols[..nout])?;
            let mut seen = HashSet::with_capacity(n);
            let keep: Vec<u32> = (0..n)
                .filter(|&i| seen.insert(rows.row(i).as_ref().to_vec()))
                .map(|i| i as u32)
                .collect();
            if keep.len() < n {
                cols = take_all(&cols, &UInt32Array::from(keep))?;
            }
        }
        let rows = cols.first().map(|c| c.len()).unwrap_or(0);
        let offset = (self.offset as usize).min(rows);
        let end = match self.limit {
            Some(l) => offset.saturating_add(l as usize).min(rows),
            None => rows,
        };
        // ORDER BY (partial sort when LIMIT is known).
        if !self.order_by.is_empty() && end > offset {
            let keys: Vec<SortColumn> = self
                .order_by
                .iter()
                .map(|k| SortColumn {
                    values: cols[k.column].clone(),
                    options: Some(SortOptions {
                        descending: k.descending,
                        nulls_first: k.nulls_first,
                    }),
                })
                .collect();
            let fetch = (end < rows).then_some(end);
            let idx = lexsort_to_indices(&keys, fetch)?;
            let idx = idx.slice(offset, end - offset);
            cols = take_all(&cols[..nout], &idx)?;
        } else {
            cols = cols[..nout]
                .iter()
                .map(|c| c.slice(offset, end - offset))
                .collect();
        }
        cols.truncate(nout);
        Ok(RecordBatch::try_new_with_options(
            self.output_schema(),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(end - offset)),
        )?)
    }
}

fn take_all(cols: &[ArrayRef], idx: &UInt32Array) -> Result<Vec<ArrayRef>, PlanError> {
    cols.iter()
        .map(|c| Ok(arrow_select::take::take(c.as_ref(), idx, None)?))
        .collect()
}
