//! [`Slice`]: one table's rows held by one Tstore, as Arrow record-batch chunks.

use arrow_array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow_schema::SchemaRef;

use crate::error::{Error, Result};
use crate::expr::{true_mask, Expr};
use crate::types::{values_to_array, DataType, TableSchema, Value};

/// Default number of rows per sealed chunk.
pub const DEFAULT_CHUNK_ROWS: usize = 64 * 1024;

/// How many small unsealed batches may pile up before they are merged.
const MAX_TAIL_BATCHES: usize = 32;

/// One table's rows held by one Tstore: sealed chunks of `chunk_rows` rows plus a
/// tail of smaller, recently inserted batches. Every operation is atomic: on error
/// the slice is unchanged.
#[derive(Debug, Clone)]
pub struct Slice {
    schema: TableSchema,
    arrow: SchemaRef,
    chunk_rows: usize,
    sealed: Vec<RecordBatch>,
    tail: Vec<RecordBatch>,
    tail_rows: usize,
    rows: usize,
}

fn concat(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<RecordBatch> {
    Ok(arrow_select::concat::concat_batches(schema, batches)?)
}

impl Slice {
    /// An empty slice with the default chunk size.
    pub fn new(schema: TableSchema) -> Result<Self> {
        Self::with_chunk_rows(schema, DEFAULT_CHUNK_ROWS)
    }

    /// An empty slice sealing chunks of `chunk_rows` rows (tests use small values).
    pub fn with_chunk_rows(schema: TableSchema, chunk_rows: usize) -> Result<Self> {
        if schema.columns.is_empty() {
            return Err(Error::TypeMismatch(
                "a table needs at least one column".into(),
            ));
        }
        for (i, c) in schema.columns.iter().enumerate() {
            if schema.columns[..i].iter().any(|d| d.name == c.name) {
                return Err(Error::TypeMismatch(format!(
                    "column \"{}\" specified more than once",
                    c.name
                )));
            }
        }
        let arrow = schema.to_arrow();
        Ok(Slice {
            schema,
            arrow,
            chunk_rows: chunk_rows.max(1),
            sealed: Vec::new(),
            tail: Vec::new(),
            tail_rows: 0,
            rows: 0,
        })
    }

    /// The table schema.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// The Arrow schema of the batches this slice holds and scans return.
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

    /// Memory footprint of the stored Arrow data in bytes.
    pub fn bytes(&self) -> usize {
        self.batches().map(|b| b.get_array_memory_size()).sum()
    }

    /// All stored batches (sealed chunks first, then the unsealed tail).
    pub fn batches(&self) -> impl Iterator<Item = &RecordBatch> {
        self.sealed.iter().chain(self.tail.iter())
    }

    /// Number of sealed chunks (for tests and statistics).
    pub fn sealed_chunks(&self) -> usize {
        self.sealed.len()
    }

    /// All rows as values, in storage order (for tests and debugging).
    pub fn rows(&self) -> Result<Vec<Vec<Value>>> {
        batches_to_rows(self.batches())
    }

    /// Inserts rows. Values are validated and coerced to the column types (see
    /// [`Value::coerce_to`]); NOT NULL is enforced. Any bad value fails the whole
    /// insert with no change. Returns the number of rows inserted.
    pub fn insert(&mut self, rows: &[Vec<Value>]) -> Result<usize> {
        if rows.is_empty() {
            return Ok(0);
        }
        let ncol = self.schema.columns.len();
        let mut cols: Vec<Vec<Value>> = vec![Vec::with_capacity(rows.len()); ncol];
        for row in rows {
            if row.len() != ncol {
                return Err(Error::Arity {
                    expected: ncol,
                    got: row.len(),
                });
            }
            for ((v, c), out) in row.iter().zip(&self.schema.columns).zip(cols.iter_mut()) {
                let v = v.coerce_to(c.data_type)?;
                if v.is_null() && !c.nullable {
                    return Err(Error::NullViolation(c.name.clone()));
                }
                out.push(v);
            }
        }
        let arrays = cols
            .iter()
            .zip(&self.schema.columns)
            .map(|(vals, c)| values_to_array(c.data_type, vals.iter()))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(self.arrow.clone(), arrays)?;
        self.append_batch(batch)
    }

    /// Appends a batch whose columns have exactly this table's types (e.g. one read
    /// back from a checkpoint). NOT NULL is enforced. Returns the number of rows.
    pub fn append_batch(&mut self, batch: RecordBatch) -> Result<usize> {
        if batch.num_columns() != self.schema.columns.len() {
            return Err(Error::Arity {
                expected: self.schema.columns.len(),
                got: batch.num_columns(),
            });
        }
        for (a, c) in batch.columns().iter().zip(&self.schema.columns) {
            if a.data_type() != &c.data_type.to_arrow() {
                return Err(Error::TypeMismatch(format!(
                    "column \"{}\" is {} but the batch has {}",
                    c.name,
                    c.data_type,
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
        tail.push(batch);
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
        Ok(n)
    }

    fn check_predicate(&self, filter: Option<&Expr>) -> Result<()> {
        if let Some(f) = filter {
            let cols: Vec<DataType> = self.schema.columns.iter().map(|c| c.data_type).collect();
            match f.infer(&cols)? {
                None | Some(DataType::Boolean) => {}
                Some(t) => {
                    return Err(Error::TypeMismatch(format!(
                        "argument of WHERE must be BOOLEAN, not {t}"
                    )))
                }
            }
        }
        Ok(())
    }

    fn mask(filter: Option<&Expr>, batch: &RecordBatch) -> Result<BooleanArray> {
        Ok(match filter {
            Some(f) => true_mask(&f.eval_predicate(batch)?),
            None => BooleanArray::from(vec![true; batch.num_rows()]),
        })
    }

    /// Applies `f` to every stored batch and commits the results only if all succeed.
    fn rewrite(
        &mut self,
        mut f: impl FnMut(&RecordBatch) -> Result<(Option<RecordBatch>, usize)>,
    ) -> Result<usize> {
        let mut count = 0;
        let mut process = |batches: &[RecordBatch]| -> Result<Vec<RecordBatch>> {
            let mut out = Vec::with_capacity(batches.len());
            for b in batches {
                let (nb, c) = f(b)?;
                count += c;
                match nb {
                    None => out.push(b.clone()),
                    Some(nb) if nb.num_rows() > 0 => out.push(nb),
                    Some(_) => {}
                }
            }
            Ok(out)
        };
        let sealed = process(&self.sealed)?;
        let tail = process(&self.tail)?;
        self.sealed = sealed;
        self.tail_rows = tail.iter().map(|b| b.num_rows()).sum();
        self.tail = tail;
        self.rows = self.batches().map(|b| b.num_rows()).sum();
        Ok(count)
    }

    /// Deletes the rows where `filter` is TRUE (all rows when `None`). Returns the
    /// number of rows deleted.
    pub fn delete(&mut self, filter: Option<&Expr>) -> Result<usize> {
        self.check_predicate(filter)?;
        self.rewrite(|b| {
            let m = Self::mask(filter, b)?;
            let hit = m.true_count();
            if hit == 0 {
                return Ok((None, 0));
            }
            let keep = arrow_arith::boolean::not(&m)?;
            Ok((
                Some(arrow_select::filter::filter_record_batch(b, &keep)?),
                hit,
            ))
        })
    }

    /// Sets `column = expr` (expressions over the old row) on the rows where
    /// `filter` is TRUE. Atomic: any error (type mismatch, division by zero, NULL
    /// into NOT NULL, overflow) leaves the slice unchanged. Expressions are evaluated
    /// only on the matching rows. Returns the number of rows updated.
    pub fn update(
        &mut self,
        assignments: &[(usize, Expr)],
        filter: Option<&Expr>,
    ) -> Result<usize> {
        self.check_predicate(filter)?;
        let cols: Vec<DataType> = self.schema.columns.iter().map(|c| c.data_type).collect();
        for (k, (c, e)) in assignments.iter().enumerate() {
            let def = self.schema.column(*c)?;
            if assignments[..k].iter().any(|(d, _)| d == c) {
                return Err(Error::TypeMismatch(format!(
                    "multiple assignments to column \"{}\"",
                    def.name
                )));
            }
            if let Some(t) = e.infer(&cols)? {
                if t != def.data_type && !(t.is_numeric() && def.data_type.is_numeric()) {
                    return Err(Error::TypeMismatch(format!(
                        "column \"{}\" is of type {} but expression is of type {t}",
                        def.name, def.data_type
                    )));
                }
            }
        }
        let schema = self.schema.clone();
        let arrow = self.arrow.clone();
        self.rewrite(|b| {
            let m = Self::mask(filter, b)?;
            let hit = m.true_count();
            if hit == 0 || assignments.is_empty() {
                return Ok((None, hit));
            }
            let sub = arrow_select::filter::filter_record_batch(b, &m)?;
            let mut columns: Vec<ArrayRef> = b.columns().to_vec();
            let mut slots = Vec::with_capacity(b.num_rows());
            let mut p = 0;
            for i in 0..b.num_rows() {
                if m.value(i) {
                    slots.push((1, p));
                    p += 1;
                } else {
                    slots.push((0, i));
                }
            }
            for (c, e) in assignments {
                let def = &schema.columns[*c];
                let v = e.eval(&sub)?;
                let v = crate::expr::cast_array(v, def.data_type)?;
                if !def.nullable && v.null_count() > 0 {
                    return Err(Error::NullViolation(def.name.clone()));
                }
                let old = &b.columns()[*c];
                columns[*c] = if hit == b.num_rows() {
                    v
                } else {
                    arrow_select::interleave::interleave(&[old.as_ref(), v.as_ref()], &slots)?
                };
            }
            Ok((Some(RecordBatch::try_new(arrow.clone(), columns)?), hit))
        })
    }

    /// Returns the rows where `filter` is TRUE, with the columns in `projection`
    /// (all columns when `None`). Empty result batches are omitted.
    pub fn scan(
        &self,
        filter: Option<&Expr>,
        projection: Option<&[usize]>,
    ) -> Result<Vec<RecordBatch>> {
        self.check_predicate(filter)?;
        if let Some(p) = projection {
            for &i in p {
                self.schema.column(i)?;
            }
        }
        let mut out = Vec::new();
        for b in self.batches() {
            let b = match filter {
                Some(_) => arrow_select::filter::filter_record_batch(b, &Self::mask(filter, b)?)?,
                None => b.clone(),
            };
            if b.num_rows() == 0 {
                continue;
            }
            out.push(match projection {
                Some(p) => b.project(p)?,
                None => b,
            });
        }
        Ok(out)
    }
}

/// Converts batches to rows of values (for tests, debugging and small results).
pub fn batches_to_rows<'a>(
    batches: impl IntoIterator<Item = &'a RecordBatch>,
) -> Result<Vec<Vec<Value>>> {
    let mut rows = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            rows.push(
                b.columns()
                    .iter()
                    .map(|c| Value::from_array(c, i))
                    .collect::<Result<Vec<_>>>()?,
            );
        }
    }
    Ok(rows)
}
