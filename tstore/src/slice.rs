//! [`Slice`]: one table's rows held by one Tstore, as Arrow record-batch chunks.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use arrow_schema::SchemaRef;
use datafusion_physical_expr::PhysicalExpr;

use crate::error::{Error, Result};
use crate::exec::TableSnapshot;
use crate::stats::TableStats;
use crate::types::{coerce_column, TableSchema};

/// Default number of rows per sealed chunk.
pub const DEFAULT_CHUNK_ROWS: usize = 64 * 1024;

/// How many small unsealed batches may pile up before they are merged.
const MAX_TAIL_BATCHES: usize = 32;

/// One table's rows held by one Tstore: sealed chunks of `chunk_rows` rows plus a
/// tail of smaller, recently inserted batches, and the slice's [`TableStats`]. Every
/// operation is atomic: on error the slice is unchanged.
///
/// Rows have *positions*: their index in storage order (sealed chunks, then the
/// tail). UPDATE and DELETE are logged by position, so replaying the log needs no
/// expression evaluation.
#[derive(Debug, Clone)]
pub struct Slice {
    schema: TableSchema,
    arrow: SchemaRef,
    chunk_rows: usize,
    sealed: Vec<RecordBatch>,
    tail: Vec<RecordBatch>,
    tail_rows: usize,
    rows: usize,
    stats: TableStats,
}

fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    Ok(arrow_select::concat::concat_batches(schema, batches)?)
}

/// The rows of `batch` where `pred` is TRUE (NULL is not TRUE).
pub fn eval_predicate(pred: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<BooleanArray> {
    let v = pred.evaluate(batch)?.into_array(batch.num_rows())?;
    let Some(b) = v.as_boolean_opt() else {
        return Err(Error::TypeMismatch(format!(
            "argument of WHERE must be type boolean, not {}",
            v.data_type()
        )));
    };
    Ok(match b.nulls() {
        Some(n) if n.null_count() > 0 => BooleanArray::new(b.values() & n.inner(), None),
        _ => b.clone(),
    })
}

impl Slice {
    /// An empty slice with the default chunk size.
    ///
    /// # Errors
    /// A schema that [`TableSchema::validate`] refuses.
    pub fn new(schema: TableSchema) -> Result<Self> {
        Self::with_chunk_rows(schema, DEFAULT_CHUNK_ROWS)
    }

    /// An empty slice sealing chunks of `chunk_rows` rows (tests use small values).
    ///
    /// # Errors
    /// A schema that [`TableSchema::validate`] refuses.
    pub fn with_chunk_rows(schema: TableSchema, chunk_rows: usize) -> Result<Self> {
        schema.validate()?;
        let arrow = schema.to_arrow();
        let stats = TableStats::new(schema.columns.len());
        Ok(Slice {
            schema,
            arrow,
            chunk_rows: chunk_rows.max(1),
            sealed: Vec::new(),
            tail: Vec::new(),
            tail_rows: 0,
            rows: 0,
            stats,
        })
    }

    /// The table schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The Arrow schema of the slice's batches.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Rows per sealed chunk.
    pub fn chunk_rows(&self) -> usize {
        self.chunk_rows
    }

    /// Number of rows.
    pub fn row_count(&self) -> usize {
        self.rows
    }

    /// Bytes of Arrow data held.
    pub fn bytes(&self) -> usize {
        self.batches().map(|b| b.get_array_memory_size()).sum()
    }

    /// The chunks in storage order.
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.sealed.iter().chain(self.tail.iter())
    }

    /// Number of sealed chunks.
    pub fn sealed_chunks(&self) -> usize {
        self.sealed.len()
    }

    /// The slice's statistics.
    pub fn stats(&self) -> &TableStats {
        &self.stats
    }

    /// The rows as they are now, for a query (shares the chunks).
    pub fn snapshot(&self) -> TableSnapshot {
        TableSnapshot {
            schema: self.arrow.clone(),
            batches: Arc::new(self.batches().cloned().collect()),
        }
    }

    /// Appends a batch whose columns have this table's types (callers coerce with
    /// [`crate::types::coerce_batch`]). NOT NULL is enforced. Returns the rows added.
    ///
    /// # Errors
    /// A batch of another width or other types, NULL in a NOT NULL column.
    pub fn append_batch(&mut self, batch: RecordBatch) -> Result<usize> {
        if batch.num_columns() != self.schema.columns.len() {
            return Err(Error::Arity {
                expected: self.schema.columns.len(),
                got: batch.num_columns(),
            });
        }
        for (a, c) in batch.columns().iter().zip(&self.schema.columns) {
            if a.data_type() != &c.ty.arrow() {
                return Err(Error::TypeMismatch(format!(
                    "column \"{}\" is {} but the batch has {}",
                    c.name,
                    c.ty,
                    a.data_type()
                )));
            }
            if !c.nullable && a.null_count() > 0 {
                return Err(Error::NullViolation(c.name.clone()));
            }
        }
        let n = batch.num_rows();
        if n == 0 {
            return Ok(0);
        }
        let batch = RecordBatch::try_new(self.arrow.clone(), batch.columns().to_vec())?;
        let mut tail = self.tail.clone();
        tail.push(batch.clone());
        let tail_rows = self.tail_rows + n;
        let mut sealed = Vec::new();
        if tail_rows >= self.chunk_rows {
            let all = concat(&self.arrow, &tail)?;
            let mut off = 0;
            while all.num_rows() - off >= self.chunk_rows {
                sealed.push(concat(&self.arrow, &[all.slice(off, self.chunk_rows)])?);
                off += self.chunk_rows;
            }
            tail = if off < all.num_rows() {
                vec![concat(
                    &self.arrow,
                    &[all.slice(off, all.num_rows() - off)],
                )?]
            } else {
                vec![]
            };
        } else if tail.len() > MAX_TAIL_BATCHES {
            tail = vec![concat(&self.arrow, &tail)?];
        }
        // Commit (nothing below can fail).
        self.sealed.extend(sealed);
        self.tail_rows = tail.iter().map(|b| b.num_rows()).sum();
        self.tail = tail;
        self.rows += n;
        self.stats.add(&batch);
        Ok(n)
    }

    /// Positions of the rows where `pred` is TRUE (all rows when `None`), ascending.
    ///
    /// # Errors
    /// The predicate's evaluation errors; a predicate that is not boolean.
    pub fn matching(&self, pred: Option<&Arc<dyn PhysicalExpr>>) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut base = 0u64;
        for b in self.batches() {
            match pred {
                None => out.extend(base..base + b.num_rows() as u64),
                Some(p) => {
                    let m = eval_predicate(p, b)?;
                    out.extend(m.values().set_indices().map(|i| base + i as u64));
                }
            }
            base += b.num_rows() as u64;
        }
        Ok(out)
    }

    /// The rows at `positions` (ascending), as one batch.
    ///
    /// # Errors
    /// A position past the end.
    pub fn rows_at(&self, positions: &[u64]) -> Result<RecordBatch> {
        if positions.last().is_some_and(|&p| p >= self.rows as u64) {
            return Err(Error::Corrupt(format!(
                "row position {} of a slice of {} rows",
                positions[positions.len() - 1],
                self.rows
            )));
        }
        let all = concat(&self.arrow, &self.batches().cloned().collect::<Vec<_>>())?;
        let idx = UInt64Array::from(positions.to_vec());
        Ok(arrow_select::take::take_record_batch(&all, &idx)?)
    }

    /// Evaluates `assignments` (column index, expression over the table's row) on the
    /// rows at `positions` and casts each result to its column's type with the rules
    /// of [`coerce_column`]. Returns the assigned columns, in assignment order, and
    /// their new values.
    ///
    /// # Errors
    /// Evaluation and coercion errors; an unknown or repeated column.
    pub fn evaluate_update(
        &self,
        positions: &[u64],
        assignments: &[(usize, Arc<dyn PhysicalExpr>)],
    ) -> Result<(Vec<usize>, RecordBatch)> {
        let mut columns = Vec::with_capacity(assignments.len());
        for (k, (c, _)) in assignments.iter().enumerate() {
            let def = self.schema.column(*c)?;
            if assignments[..k].iter().any(|(d, _)| d == c) {
                return Err(Error::TypeMismatch(format!(
                    "multiple assignments to same column \"{}\"",
                    def.name
                )));
            }
            columns.push(*c);
        }
        let rows = self.rows_at(positions)?;
        let values = assignments
            .iter()
            .map(|(c, e)| {
                let v = e.evaluate(&rows)?.into_array(rows.num_rows())?;
                coerce_column(&self.schema.columns[*c], &v)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let fields: Vec<_> = columns
            .iter()
            .map(|&c| self.schema.columns[c].field())
            .collect();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(arrow_schema::Schema::new(fields)),
            values,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(rows.num_rows())),
        )?;
        Ok((columns, batch))
    }

    /// Applies `f` to every chunk with the positions of its first row and commits the
    /// results only if all succeed; recomputes the statistics.
    fn rewrite(
        &mut self,
        mut f: impl FnMut(u64, &RecordBatch) -> Result<Option<RecordBatch>>,
    ) -> Result<()> {
        let mut base = 0u64;
        let mut process = |batches: &[RecordBatch]| -> Result<Vec<RecordBatch>> {
            let mut out = Vec::with_capacity(batches.len());
            for b in batches {
                match f(base, b)? {
                    None => out.push(b.clone()),
                    Some(nb) if nb.num_rows() > 0 => out.push(nb),
                    Some(_) => {}
                }
                base += b.num_rows() as u64;
            }
            Ok(out)
        };
        let sealed = process(&self.sealed)?;
        let tail = process(&self.tail)?;
        self.sealed = sealed;
        self.tail_rows = tail.iter().map(|b| b.num_rows()).sum();
        self.tail = tail;
        self.rows = self.batches().map(|b| b.num_rows()).sum();
        let mut stats = TableStats::new(self.schema.columns.len());
        for b in self.batches() {
            stats.add(b);
        }
        self.stats = stats;
        Ok(())
    }

    fn check_positions(&self, positions: &[u64]) -> Result<()> {
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Corrupt("row positions out of order".into()));
        }
        if positions.last().is_some_and(|&p| p >= self.rows as u64) {
            return Err(Error::Corrupt(format!(
                "row position past the {} rows of the slice",
                self.rows
            )));
        }
        Ok(())
    }

    /// Deletes the rows at `positions` (ascending). Returns how many.
    ///
    /// # Errors
    /// Positions out of order or past the end.
    pub fn delete_rows(&mut self, positions: &[u64]) -> Result<usize> {
        self.check_positions(positions)?;
        if positions.is_empty() {
            return Ok(0);
        }
        let mut next = 0usize;
        self.rewrite(|base, b| {
            let end = base + b.num_rows() as u64;
            let start = next;
            while next < positions.len() && positions[next] < end {
                next += 1;
            }
            if start == next {
                return Ok(None);
            }
            let mut keep = vec![true; b.num_rows()];
            for &p in &positions[start..next] {
                keep[(p - base) as usize] = false;
            }
            Ok(Some(arrow_select::filter::filter_record_batch(
                b,
                &BooleanArray::from(keep),
            )?))
        })?;
        Ok(positions.len())
    }

    /// Sets `columns` of the rows at `positions` (ascending) to `values` (one row per
    /// position, one column per entry of `columns`, of the columns' types). Returns
    /// how many rows.
    ///
    /// # Errors
    /// Positions out of order or past the end, values of the wrong shape or type,
    /// NULL into a NOT NULL column.
    pub fn update_rows(
        &mut self,
        positions: &[u64],
        columns: &[usize],
        values: &RecordBatch,
    ) -> Result<usize> {
        self.check_positions(positions)?;
        if values.num_rows() != positions.len() || values.num_columns() != columns.len() {
            return Err(Error::Corrupt(format!(
                "an update of {} positions with {} rows of {} columns for {} columns",
                positions.len(),
                values.num_rows(),
                values.num_columns(),
                columns.len()
            )));
        }
        for (k, &c) in columns.iter().enumerate() {
            let def = self.schema.column(c)?;
            let v = values.column(k);
            if v.data_type() != &def.ty.arrow() {
                return Err(Error::TypeMismatch(format!(
                    "new values of column \"{}\" are {}, not {}",
                    def.name,
                    v.data_type(),
                    def.ty
                )));
            }
            if !def.nullable && v.null_count() > 0 {
                return Err(Error::NullViolation(def.name.clone()));
            }
        }
        if positions.is_empty() {
            return Ok(0);
        }
        let arrow = self.arrow.clone();
        let mut next = 0usize;
        self.rewrite(|base, b| {
            let end = base + b.num_rows() as u64;
            let start = next;
            while next < positions.len() && positions[next] < end {
                next += 1;
            }
            if start == next {
                return Ok(None);
            }
            // (source, row): source 0 = the old chunk, 1 = the new values.
            let mut slots: Vec<(usize, usize)> = (0..b.num_rows()).map(|i| (0, i)).collect();
            for (k, &p) in positions[start..next].iter().enumerate() {
                slots[(p - base) as usize] = (1, start + k);
            }
            let mut cols: Vec<ArrayRef> = b.columns().to_vec();
            for (k, &c) in columns.iter().enumerate() {
                cols[c] = arrow_select::interleave::interleave(
                    &[b.column(c).as_ref(), values.column(k).as_ref()],
                    &slots,
                )?;
            }
            Ok(Some(RecordBatch::try_new(arrow.clone(), cols)?))
        })?;
        Ok(positions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ColumnDef, SqlType};
    use arrow_array::{Int32Array, StringArray};
    use datafusion_expr::Operator;
    use datafusion_physical_expr::expressions::{binary, col, lit};

    fn slice() -> Slice {
        let schema = TableSchema::new(vec![
            ColumnDef::new("a", SqlType::Integer, false),
            ColumnDef::new("s", SqlType::Varchar(Some(3)), true),
        ]);
        let mut s = Slice::with_chunk_rows(schema, 4).unwrap();
        for k in 0..3 {
            let b = RecordBatch::try_new(
                s.arrow_schema(),
                vec![
                    Arc::new(Int32Array::from((k * 3..k * 3 + 3).collect::<Vec<_>>())),
                    Arc::new(StringArray::from(vec![Some("x"), None, Some("yy")])),
                ],
            )
            .unwrap();
            s.append_batch(b).unwrap();
        }
        s
    }

    fn a_values(s: &Slice) -> Vec<i32> {
        s.batches()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<arrow_array::types::Int32Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn positions_survive_chunking_and_delete_update_by_position() {
        let mut s = slice();
        assert_eq!(s.row_count(), 9);
        assert_eq!(s.sealed_chunks(), 2);
        let schema = s.arrow_schema();
        // a % 2 = 0
        let even = binary(
            binary(
                col("a", &schema).unwrap(),
                Operator::Modulo,
                lit(2),
                &schema,
            )
            .unwrap(),
            Operator::Eq,
            lit(0),
            &schema,
        )
        .unwrap();
        let pos = s.matching(Some(&even)).unwrap();
        assert_eq!(pos, vec![0, 2, 4, 6, 8]);
        // a = a * 10 on the even rows
        let times = binary(
            col("a", &schema).unwrap(),
            Operator::Multiply,
            lit(10),
            &schema,
        )
        .unwrap();
        let (cols, vals) = s.evaluate_update(&pos, &[(0, times)]).unwrap();
        assert_eq!(s.update_rows(&pos, &cols, &vals).unwrap(), 5);
        assert_eq!(a_values(&s), vec![0, 1, 20, 3, 40, 5, 60, 7, 80]);
        assert_eq!(s.delete_rows(&[1, 3, 8]).unwrap(), 3);
        assert_eq!(a_values(&s), vec![0, 20, 40, 5, 60, 7]);
        assert_eq!(s.stats().rows, 6);
        // Bad positions change nothing.
        assert!(s.delete_rows(&[2, 1]).is_err());
        assert!(s.delete_rows(&[6]).is_err());
        assert_eq!(s.row_count(), 6);
        // NULL into NOT NULL and too-long text fail without a change.
        let too_long = lit("abcd");
        assert!(s.evaluate_update(&[0], &[(1, too_long)]).is_err());
        assert_eq!(a_values(&s), vec![0, 20, 40, 5, 60, 7]);
    }
}
