//! [`Fragment`]: the single-table secondary query a Tstore runs, and Arrow IPC
//! helpers for shipping its results.

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::agg::PartialAgg;
use crate::error::{Error, Result};
use crate::expr::{cast_array, true_mask, Expr};
use crate::slice::Slice;
use crate::types::{DataType, TableSchema};

/// A single-table query a Tstore runs over its slice: filter, then either project
/// or partially aggregate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fragment {
    /// Table name.
    pub table: String,
    /// Rows where this is TRUE are kept.
    pub filter: Option<Expr>,
    /// Output expressions over the table's columns; empty means all columns.
    /// Ignored when `partial_agg` is set.
    pub projection: Vec<Expr>,
    /// When set, the result is one partial-aggregate state batch.
    pub partial_agg: Option<PartialAgg>,
}

impl Slice {
    /// Output schema of a projection (column names kept for plain columns, `expr{k}`
    /// otherwise).
    pub fn projection_schema(&self, projection: &[Expr]) -> Result<SchemaRef> {
        projection_schema(self.schema(), projection)
    }

    /// Runs a fragment. With a partial aggregate the result is exactly one batch
    /// (possibly zero rows); otherwise the non-empty projected batches.
    pub fn execute(&self, f: &Fragment) -> Result<Vec<RecordBatch>> {
        let scanned = self.scan(f.filter.as_ref(), None)?;
        f.output(self.schema(), scanned)
    }
}

/// Output schema of a projection over rows of a table with `schema` (column names
/// kept for plain columns, `expr{k}` otherwise).
pub fn projection_schema(schema: &TableSchema, projection: &[Expr]) -> Result<SchemaRef> {
    let fields = projection
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let t = e.data_type(schema)?;
            Ok(match e {
                Expr::Column(i) => {
                    let c = schema.column(*i)?;
                    Field::new(&c.name, t.to_arrow(), c.nullable)
                }
                _ => Field::new(format!("expr{k}"), t.to_arrow(), true),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

/// Evaluates `projection` over `batch` into a batch of `out_schema` (from
/// [`projection_schema`]).
pub fn project_batch(
    batch: &RecordBatch,
    projection: &[Expr],
    out_schema: &SchemaRef,
) -> Result<RecordBatch> {
    let cols = projection
        .iter()
        .zip(out_schema.fields())
        .map(|(e, fl)| cast_array(e.eval(batch)?, DataType::from_arrow(fl.data_type())?))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        out_schema.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

impl Fragment {
    /// Runs this fragment over `batches`, rows of a table with `schema` (its `table`
    /// is ignored): the filter, then the partial aggregate (exactly one batch) or
    /// the projection (the non-empty batches). [`Slice::execute`] is this over the
    /// slice's batches.
    pub fn run_over(
        &self,
        schema: &TableSchema,
        batches: &[RecordBatch],
    ) -> Result<Vec<RecordBatch>> {
        let filtered = match &self.filter {
            None => batches
                .iter()
                .filter(|b| b.num_rows() > 0)
                .cloned()
                .collect(),
            Some(f) => {
                let cols: Vec<DataType> = schema.columns.iter().map(|c| c.data_type).collect();
                match f.infer(&cols)? {
                    None | Some(DataType::Boolean) => {}
                    Some(t) => {
                        return Err(Error::TypeMismatch(format!(
                            "argument of WHERE must be BOOLEAN, not {t}"
                        )))
                    }
                }
                let mut out = Vec::with_capacity(batches.len());
                for b in batches {
                    let m = true_mask(&f.eval_predicate(b)?);
                    let b = arrow_select::filter::filter_record_batch(b, &m)?;
                    if b.num_rows() > 0 {
                        out.push(b);
                    }
                }
                out
            }
        };
        self.output(schema, filtered)
    }

    /// The partial aggregate or projection of already filtered batches.
    fn output(&self, schema: &TableSchema, filtered: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
        if let Some(agg) = &self.partial_agg {
            return Ok(vec![agg.partial(schema, &filtered)?]);
        }
        if self.projection.is_empty() {
            return Ok(filtered);
        }
        let out_schema = projection_schema(schema, &self.projection)?;
        filtered
            .iter()
            .map(|b| project_batch(b, &self.projection, &out_schema))
            .collect()
    }
}

/// Encodes batches (all with the same schema) in the Arrow IPC stream format. No
/// batches encode to an empty buffer.
pub fn encode_batches(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &first.schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(w.into_inner()?)
}

/// Decodes an Arrow IPC stream produced by [`encode_batches`].
///
/// The bytes may come from a peer: a malformed stream is an [`Error::Corrupt`], also
/// when arrow's reader panics on it (it does on some, e.g. a buffer whose length in
/// the metadata runs past the message body).
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    std::panic::catch_unwind(|| {
        let r = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::Corrupt(format!("bad IPC stream: {e}")))?;
        r.map(|b| b.map_err(|e| Error::Corrupt(format!("bad IPC batch: {e}"))))
            .collect()
    })
    .unwrap_or_else(|p| {
        Err(Error::Corrupt(format!(
            "bad IPC stream: {}",
            panic_text(&*p)
        )))
    })
}

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("the decoder panicked")
}
