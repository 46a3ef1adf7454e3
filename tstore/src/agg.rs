//! Distributed aggregation: the per-Tstore partial half ([`PartialAgg::partial`]) and
//! the primary's [`PartialAgg::merge`] + [`PartialAgg::finalize`].
//!
//! Partial state layout (one row per group): group columns `g0..gk`, then per
//! aggregate `i`: COUNT / COUNT(*) -> `a{i}_count` (BIGINT, not null); SUM ->
//! `a{i}_sum` (BIGINT for integer input, DOUBLE for DOUBLE; NULL if no non-null
//! input); MIN / MAX -> `a{i}_min` / `a{i}_max` (argument type); AVG -> `a{i}_sum`
//! and `a{i}_count`. Merging partials yields the same layout; `finalize` turns it
//! into `g0..gk, a0..an` with AVG as DOUBLE.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch};
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::expr::{cast_array, normalize_floats, Expr};
use crate::types::{values_to_array, DataType, TableSchema, Value};

/// Aggregate functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AggFunc {
    /// `COUNT(e)`: non-null values.
    Count,
    /// `COUNT(*)`: rows.
    CountStar,
    /// `SUM(e)`; BIGINT for integers (overflow is an error), DOUBLE for doubles.
    Sum,
    /// `MIN(e)`.
    Min,
    /// `MAX(e)`.
    Max,
    /// `AVG(e)`, DOUBLE.
    Avg,
}

/// One aggregate call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggCall {
    /// The function.
    pub func: AggFunc,
    /// The argument (`None` only for `CountStar`).
    pub arg: Option<Expr>,
}

impl AggCall {
    /// `func(arg)`.
    pub fn new(func: AggFunc, arg: Expr) -> Self {
        AggCall {
            func,
            arg: Some(arg),
        }
    }
    /// `COUNT(*)`.
    pub fn count_star() -> Self {
        AggCall {
            func: AggFunc::CountStar,
            arg: None,
        }
    }
}

/// A grouped aggregation, split into per-Tstore partials and a final merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialAgg {
    /// Grouping expressions (over the table's columns).
    pub group_by: Vec<Expr>,
    /// Aggregates.
    pub aggs: Vec<AggCall>,
}

/// Merge-time operation on one input column.
#[derive(Debug, Clone, Copy)]
enum Op {
    CountRows,
    CountValid,
    SumCount,
    SumInt,
    SumFloat,
    Min(DataType),
    Max(DataType),
}

enum Acc {
    Count(Vec<i64>),
    SumI(Vec<Option<i64>>),
    SumF(Vec<Option<f64>>),
    Ext {
        max: bool,
        t: DataType,
        vals: Vec<Value>,
    },
}

impl Acc {
    fn new(op: Op) -> Acc {
        match op {
            Op::CountRows | Op::CountValid | Op::SumCount => Acc::Count(Vec::new()),
            Op::SumInt => Acc::SumI(Vec::new()),
            Op::SumFloat => Acc::SumF(Vec::new()),
            Op::Min(t) => Acc::Ext {
                max: false,
                t,
                vals: Vec::new(),
            },
            Op::Max(t) => Acc::Ext {
                max: true,
                t,
                vals: Vec::new(),
            },
        }
    }
    fn grow(&mut self, n: usize) {
        match self {
            Acc::Count(v) => v.resize(n, 0),
            Acc::SumI(v) => v.resize(n, None),
            Acc::SumF(v) => v.resize(n, None),
            Acc::Ext { vals, .. } => vals.resize(n, Value::Null),
        }
    }
    fn update(&mut self, op: Op, arr: Option<&ArrayRef>, gids: &[usize]) -> Result<()> {
        let overflow = || Error::Overflow("bigint out of range in SUM/COUNT".into());
        match (self, op) {
            (Acc::Count(c), Op::CountRows) => gids.iter().for_each(|&g| c[g] += 1),
            (Acc::Count(c), Op::CountValid) => {
                let a = arr.ok_or_else(|| Error::Internal("COUNT without argument".into()))?;
                for (i, &g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        c[g] += 1;
                    }
                }
            }
            (Acc::Count(c), Op::SumCount) => {
                let a = arr
                    .ok_or_else(|| Error::Internal("merge without state".into()))?
                    .as_primitive::<Int64Type>();
                for (i, &g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        c[g] = c[g].checked_add(a.value(i)).ok_or_else(overflow)?;
                    }
                }
            }
            (Acc::SumI(s), Op::SumInt) => {
                let a = arr
                    .ok_or_else(|| Error::Internal("SUM without argument".into()))?
                    .as_primitive::<Int64Type>();
                for (i, &g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        let v = a.value(i);
                        s[g] = Some(match s[g] {
                            None => v,
                            Some(x) => x.checked_add(v).ok_or_else(overflow)?,
                        });
                    }
                }
            }
            (Acc::SumF(s), Op::SumFloat) => {
                let a = arr
                    .ok_or_else(|| Error::Internal("SUM without argument".into()))?
                    .as_primitive::<Float64Type>();
                for (i, &g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        s[g] = Some(s[g].unwrap_or(0.0) + a.value(i));
                    }
                }
            }
            (Acc::Ext { max, vals, .. }, Op::Min(_) | Op::Max(_)) => {
                let a = arr.ok_or_else(|| Error::Internal("MIN/MAX without argument".into()))?;
                for (i, &g) in gids.iter().enumerate() {
                    if a.is_valid(i) {
                        let v = Value::from_array(a, i)?;
                        let better = match vals[g].sql_cmp(&v) {
                            None => true, // current is NULL
                            Some(o) => {
                                (o == std::cmp::Ordering::Less) == *max
                                    && o != std::cmp::Ordering::Equal
                            }
                        };
                        if better {
                            vals[g] = v;
                        }
                    }
                }
            }
            _ => return Err(Error::Internal("accumulator / op mismatch".into())),
        }
        Ok(())
    }
    fn finish(self) -> Result<ArrayRef> {
        Ok(match self {
            Acc::Count(c) => Arc::new(Int64Array::from(c)),
            Acc::SumI(s) => Arc::new(Int64Array::from(s)),
            Acc::SumF(s) => Arc::new(Float64Array::from(s)),
            Acc::Ext { t, vals, .. } => values_to_array(t, vals.iter())?,
        })
    }
}

/// Hash grouping engine shared by partial aggregation and merge.
struct Grouper {
    converter: Option<RowConverter>,
    map: HashMap<Box<[u8]>, usize>,
    keys: Option<Rows>,
    ngroups: usize,
    ops: Vec<Op>,
    accs: Vec<Acc>,
}

impl Grouper {
    fn new(key_types: &[DataType], ops: Vec<Op>) -> Result<Self> {
        let mut g = Grouper {
            converter: None,
            map: HashMap::new(),
            keys: None,
            ngroups: 0,
            accs: ops.iter().map(|&o| Acc::new(o)).collect(),
            ops,
        };
        if key_types.is_empty() {
            g.ngroups = 1; // a global aggregate has exactly one group, even over no rows
            g.accs.iter_mut().for_each(|a| a.grow(1));
        } else {
            let conv = RowConverter::new(
                key_types
                    .iter()
                    .map(|t| SortField::new(t.to_arrow()))
                    .collect(),
            )?;
            g.keys = Some(conv.empty_rows(0, 0));
            g.converter = Some(conv);
        }
        Ok(g)
    }

    fn update(&mut self, keys: &[ArrayRef], inputs: &[Option<ArrayRef>], n: usize) -> Result<()> {
        let gids: Vec<usize> = match &self.converter {
            None => vec![0; n],
            Some(conv) => {
                let keys: Vec<ArrayRef> = keys.iter().cloned().map(normalize_floats).collect();
                let rows = conv.convert_columns(&keys)?;
                let store = self
                    .keys
                    .as_mut()
                    .ok_or_else(|| Error::Internal("no key store".into()))?;
                let mut gids = Vec::with_capacity(n);
                for r in rows.iter() {
                    let next = self.ngroups;
                    let g = *self.map.entry(r.as_ref().into()).or_insert_with(|| {
                        store.push(r);
                        next
                    });
                    if g == next {
                        self.ngroups += 1;
                    }
                    gids.push(g);
                }
                gids
            }
        };
        for acc in &mut self.accs {
            acc.grow(self.ngroups);
        }
        for ((acc, op), arr) in self.accs.iter_mut().zip(&self.ops).zip(inputs) {
            acc.update(*op, arr.as_ref(), &gids)?;
        }
        Ok(())
    }

    fn finish(self, schema: SchemaRef) -> Result<RecordBatch> {
        let mut cols: Vec<ArrayRef> = match (&self.converter, &self.keys) {
            (Some(conv), Some(keys)) => conv.convert_rows(keys.iter())?,
            _ => Vec::new(),
        };
        for a in self.accs {
            cols.push(a.finish()?);
        }
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

impl PartialAgg {
    fn types(&self, schema: &TableSchema) -> Result<(Vec<DataType>, Vec<Option<DataType>>)> {
        let cols: Vec<DataType> = schema.columns.iter().map(|c| c.data_type).collect();
        let keys = self
            .group_by
            .iter()
            .map(|e| Ok(e.infer(&cols)?.unwrap_or(DataType::Text)))
            .collect::<Result<Vec<_>>>()?;
        let mut args = Vec::new();
        for a in &self.aggs {
            let t = match (&a.arg, a.func) {
                (None, AggFunc::CountStar) => None,
                (Some(_), AggFunc::CountStar) => {
                    return Err(Error::TypeMismatch("COUNT(*) takes no argument".into()))
                }
                (None, f) => return Err(Error::TypeMismatch(format!("{f:?} needs an argument"))),
                (Some(e), f) => {
                    let t = e.infer(&cols)?;
                    if matches!(f, AggFunc::Sum | AggFunc::Avg) {
                        match t {
                            Some(t) if t.is_numeric() => {}
                            None => {}
                            Some(t) => {
                                return Err(Error::TypeMismatch(format!(
                                    "{f:?} of {t} is not supported"
                                )))
                            }
                        }
                    }
                    Some(t.unwrap_or(match f {
                        AggFunc::Sum | AggFunc::Avg => DataType::BigInt,
                        _ => DataType::Text,
                    }))
                }
            };
            args.push(t);
        }
        Ok((keys, args))
    }

    /// Schema of the partial (and merged) state batches for a table with `schema`.
    pub fn partial_schema(&self, schema: &TableSchema) -> Result<SchemaRef> {
        let (keys, args) = self.types(schema)?;
        let mut fields: Vec<Field> = keys
            .iter()
            .enumerate()
            .map(|(i, t)| Field::new(format!("g{i}"), t.to_arrow(), true))
            .collect();
        for (i, (a, t)) in self.aggs.iter().zip(&args).enumerate() {
            let sum_t = |t: &Option<DataType>| {
                if *t == Some(DataType::Double) {
                    ArrowType::Float64
                } else {
                    ArrowType::Int64
                }
            };
            match a.func {
                AggFunc::Count | AggFunc::CountStar => {
                    fields.push(Field::new(format!("a{i}_count"), ArrowType::Int64, false))
                }
                AggFunc::Sum => fields.push(Field::new(format!("a{i}_sum"), sum_t(t), true)),
                AggFunc::Min | AggFunc::Max => fields.push(Field::new(
                    format!(
                        "a{i}_{}",
                        if a.func == AggFunc::Min { "min" } else { "max" }
                    ),
                    t.unwrap_or(DataType::Text).to_arrow(),
                    true,
                )),
                AggFunc::Avg => {
                    fields.push(Field::new(format!("a{i}_sum"), sum_t(t), true));
                    fields.push(Field::new(format!("a{i}_count"), ArrowType::Int64, false));
                }
            }
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Computes the partial aggregate of `batches` (rows of a table with `schema`,
    /// already filtered) as one state batch.
    pub fn partial(&self, schema: &TableSchema, batches: &[RecordBatch]) -> Result<RecordBatch> {
        let out_schema = self.partial_schema(schema)?;
        let (keys_t, args_t) = self.types(schema)?;
        let mut ops = Vec::new();
        for (a, t) in self.aggs.iter().zip(&args_t) {
            let sum = if *t == Some(DataType::Double) {
                Op::SumFloat
            } else {
                Op::SumInt
            };
            match a.func {
                AggFunc::Count => ops.push(Op::CountValid),
                AggFunc::CountStar => ops.push(Op::CountRows),
                AggFunc::Sum => ops.push(sum),
                AggFunc::Min => ops.push(Op::Min(t.unwrap_or(DataType::Text))),
                AggFunc::Max => ops.push(Op::Max(t.unwrap_or(DataType::Text))),
                AggFunc::Avg => {
                    ops.push(sum);
                    ops.push(Op::CountValid);
                }
            }
        }
        let mut g = Grouper::new(&keys_t, ops)?;
        for b in batches {
            let keys = self
                .group_by
                .iter()
                .zip(&keys_t)
                .map(|(e, t)| cast_array(e.eval(b)?, *t))
                .collect::<Result<Vec<_>>>()?;
            let mut inputs = Vec::new();
            for (a, t) in self.aggs.iter().zip(&args_t) {
                let v = match (&a.arg, t) {
                    (Some(e), Some(t)) => {
                        let v = cast_array(e.eval(b)?, *t)?;
                        Some(
                            if matches!(a.func, AggFunc::Sum | AggFunc::Avg)
                                && *t != DataType::Double
                            {
                                cast_array(v, DataType::BigInt)?
                            } else {
                                v
                            },
                        )
                    }
                    _ => None,
                };
                if a.func == AggFunc::Avg {
                    inputs.push(v.clone());
                }
                inputs.push(v);
            }
            g.update(&keys, &inputs, b.num_rows())?;
        }
        g.finish(out_schema)
    }

    /// Combines partial state batches (from any number of Tstores, all with the
    /// [`PartialAgg::partial_schema`] layout) into one state batch of the same layout.
    pub fn merge(&self, partials: &[RecordBatch]) -> Result<RecordBatch> {
        let schema = partials
            .first()
            .ok_or_else(|| Error::Internal("merge of zero partial batches".into()))?
            .schema();
        let k = self.group_by.len();
        let field_t = |i: usize| -> Result<DataType> {
            DataType::from_arrow(
                schema
                    .fields()
                    .get(i)
                    .ok_or_else(|| Error::Internal("partial schema too short".into()))?
                    .data_type(),
            )
        };
        let keys_t = (0..k).map(field_t).collect::<Result<Vec<_>>>()?;
        let mut ops = Vec::new();
        let mut col = k;
        for a in &self.aggs {
            let sum = |c: usize| -> Result<Op> {
                Ok(if field_t(c)? == DataType::Double {
                    Op::SumFloat
                } else {
                    Op::SumInt
                })
            };
            match a.func {
                AggFunc::Count | AggFunc::CountStar => ops.push(Op::SumCount),
                AggFunc::Sum => ops.push(sum(col)?),
                AggFunc::Min => ops.push(Op::Min(field_t(col)?)),
                AggFunc::Max => ops.push(Op::Max(field_t(col)?)),
                AggFunc::Avg => {
                    ops.push(sum(col)?);
                    ops.push(Op::SumCount);
                    col += 1;
                }
            }
            col += 1;
        }
        if col != schema.fields().len() {
            return Err(Error::Internal(format!(
                "partial batch has {} columns, expected {col}",
                schema.fields().len()
            )));
        }
        let mut g = Grouper::new(&keys_t, ops)?;
        for b in partials {
            if b.schema().fields() != schema.fields() {
                return Err(Error::Internal(
                    "partial batches with different schemas".into(),
                ));
            }
            let cols = b.columns();
            g.update(
                &cols[..k],
                &cols[k..].iter().cloned().map(Some).collect::<Vec<_>>(),
                b.num_rows(),
            )?;
        }
        g.finish(schema)
    }

    /// Final values from a merged state batch: group columns `g0..gk`, then one
    /// column `a{i}` per aggregate.
    pub fn finalize(&self, merged: &RecordBatch) -> Result<RecordBatch> {
        let k = self.group_by.len();
        let schema = merged.schema();
        let mut fields: Vec<Field> = schema.fields()[..k]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut cols: Vec<ArrayRef> = merged.columns()[..k].to_vec();
        let mut c = k;
        for (i, a) in self.aggs.iter().enumerate() {
            let arr = merged
                .columns()
                .get(c)
                .ok_or_else(|| Error::Internal("state too short".into()))?
                .clone();
            let out: ArrayRef = if a.func == AggFunc::Avg {
                let cnt = merged
                    .columns()
                    .get(c + 1)
                    .ok_or_else(|| Error::Internal("state too short".into()))?;
                let cnt = cnt.as_primitive::<Int64Type>();
                let sum = cast_array(arr, DataType::Double)?;
                let sum = sum.as_primitive::<Float64Type>();
                c += 1;
                Arc::new(
                    (0..merged.num_rows())
                        .map(|r| {
                            (sum.is_valid(r) && cnt.value(r) > 0)
                                .then(|| sum.value(r) / cnt.value(r) as f64)
                        })
                        .collect::<Float64Array>(),
                )
            } else {
                arr
            };
            c += 1;
            let nullable = !matches!(a.func, AggFunc::Count | AggFunc::CountStar);
            fields.push(Field::new(
                format!("a{i}"),
                out.data_type().clone(),
                nullable,
            ));
            cols.push(out);
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
    }

    /// `finalize(merge(partials))`.
    pub fn merge_finalize(&self, partials: &[RecordBatch]) -> Result<RecordBatch> {
        self.finalize(&self.merge(partials)?)
    }
}
