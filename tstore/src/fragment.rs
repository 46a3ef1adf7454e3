//! [`Fragment`]: the single-table secondary query a Tstore runs, and Arrow IPC
//! helpers for shipping its results.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::agg::PartialAgg;
use crate::error::{Error, Result};
use crate::expr::{cast_array, Expr};
use crate::slice::Slice;
use crate::types::DataType;

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
        let schema = self.schema();
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

    /// Runs a fragment. With a partial aggregate the result is exactly one batch
    /// (possibly zero rows); otherwise the non-empty projected batches.
    pub fn execute(&self, f: &Fragment) -> Result<Vec<RecordBatch>> {
        let scanned = self.scan(f.filter.as_ref(), None)?;
        if let Some(agg) = &f.partial_agg {
            return Ok(vec![agg.partial(self.schema(), &scanned)?]);
        }
        if f.projection.is_empty() {
            return Ok(scanned);
        }
        let out_schema = self.projection_schema(&f.projection)?;
        scanned
            .iter()
            .map(|b| {
                let cols = f
                    .projection
                    .iter()
                    .zip(out_schema.fields())
                    .map(|(e, fl)| cast_array(e.eval(b)?, DataType::from_arrow(fl.data_type())?))
                    .collect::<Result<Vec<_>>>()?;
                Ok(RecordBatch::try_new(out_schema.clone(), cols)?)
            })
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
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let r = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
        .map_err(|e| Error::Corrupt(format!("bad IPC stream: {e}")))?;
    r.map(|b| b.map_err(|e| Error::Corrupt(format!("bad IPC batch: {e}"))))
        .collect()
}
