//! Distributed aggregation: the per-Tstore partial half ([`PartialAgg::partial`]) and
//! the primary's [`PartialAgg::merge`] + [`PartialAgg::finalize`].
//!
//! # Ordinary aggregates
//!
//! COUNT, COUNT(*), SUM, MIN, MAX and AVG split: every Tstore ships one state row per
//! group and states merge. Partial state layout (one row per group): group columns
//! `g0..gk`, then per aggregate `i`: COUNT / COUNT(*) -> `a{i}_count` (BIGINT, not
//! null); SUM -> `a{i}_sum` (BIGINT for integer input, DOUBLE for DOUBLE; NULL if no
//! non-null input); MIN / MAX -> `a{i}_min` / `a{i}_max` (argument type); AVG ->
//! `a{i}_sum` and `a{i}_count`. Merging partials yields the same layout; `finalize`
//! turns it into `g0..gk, a0..an` with AVG as DOUBLE.
//!
//! # Holistic aggregates
//!
//! COUNT / SUM / AVG (DISTINCT e), `mode() WITHIN GROUP (ORDER BY e)` and
//! `percentile_disc(f) WITHIN GROUP (ORDER BY e)` cannot be computed from per-group
//! states. When a [`PartialAgg`] has any of them ([`PartialAgg::is_holistic`]), the
//! partial state groups by the *extended key*: the group keys followed by the distinct
//! argument expressions of the holistic aggregates ([`PartialAgg::distinct_args`],
//! identical expressions shared). Every Tstore thus ships per-value counts, not rows:
//!
//! `g0..gk, d0..dm`, the ordinary aggregates' state columns exactly as above (holistic
//! aggregates have none), then `weight` (BIGINT, not null: the number of rows of the
//! extended group) when a mode or percentile needs it (no `weight` column when the
//! holistic aggregates are only DISTINCT ones).
//!
//! `merge` merges by the extended key (ordinary states merge as usual, weights add)
//! and keeps that layout. `finalize` regroups by `g0..gk`: ordinary states merge
//! again, COUNT(DISTINCT) counts the distinct non-null `d` values of the group, SUM /
//! AVG(DISTINCT) sum them, mode picks the value with the largest total weight (ties:
//! the first value in the ORDER BY order, so the smallest for ASC), percentile_disc
//! walks the values in ORDER BY order to the first whose cumulative weight reaches
//! `ceil(f * total)` (PostgreSQL's rule; NULLs ignored, NULL without values). The
//! finalized layout is still `g0..gk, a0..an`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, RecordBatchOptions, UInt32Array,
};
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
    /// `COUNT(DISTINCT e)`: distinct non-null values (holistic).
    CountDistinct,
    /// `SUM(DISTINCT e)`: sum of the distinct non-null values, typed as `SUM`
    /// (holistic).
    SumDistinct,
    /// `AVG(DISTINCT e)`, DOUBLE (holistic).
    AvgDistinct,
    /// `mode() WITHIN GROUP (ORDER BY e [DESC])`: the most frequent non-null value;
    /// ties go to the first value in the ORDER BY order (holistic).
    Mode {
        /// `ORDER BY e DESC`.
        descending: bool,
    },
    /// `percentile_disc(f) WITHIN GROUP (ORDER BY e [DESC])`: the first non-null
    /// value, in the ORDER BY order, whose cumulative position reaches `f` of all
    /// non-null values (holistic). Build it with [`AggFunc::percentile_disc`].
    PercentileDisc {
        /// `f64::to_bits` of the fraction `f`, in `[0, 1]` (`-0.0` stored as `0.0`).
        fraction_bits: u64,
        /// `ORDER BY e DESC`.
        descending: bool,
    },
}

impl AggFunc {
    /// `percentile_disc(fraction) WITHIN GROUP (ORDER BY e [DESC])`.
    ///
    /// # Errors
    /// [`Error::Overflow`] (SQLSTATE 22003) unless `0 <= fraction <= 1`.
    pub fn percentile_disc(fraction: f64, descending: bool) -> Result<AggFunc> {
        check_fraction(fraction)?;
        Ok(AggFunc::PercentileDisc {
            fraction_bits: (fraction + 0.0).to_bits(),
            descending,
        })
    }

    /// The fraction of a `PercentileDisc`.
    pub fn fraction(self) -> Option<f64> {
        match self {
            AggFunc::PercentileDisc { fraction_bits, .. } => Some(f64::from_bits(fraction_bits)),
            _ => None,
        }
    }

    /// True for aggregates that cannot be split into mergeable per-group states
    /// (DISTINCT, mode, percentile_disc); see the module docs.
    pub fn is_holistic(self) -> bool {
        matches!(
            self,
            AggFunc::CountDistinct
                | AggFunc::SumDistinct
                | AggFunc::AvgDistinct
                | AggFunc::Mode { .. }
                | AggFunc::PercentileDisc { .. }
        )
    }

    /// True for the holistic aggregates that need per-value row counts.
    fn needs_weight(self) -> bool {
        matches!(self, AggFunc::Mode { .. } | AggFunc::PercentileDisc { .. })
    }
}

fn check_fraction(f: f64) -> Result<()> {
    if (0.0..=1.0).contains(&f) {
        Ok(())
    } else {
        Err(Error::Overflow(format!(
            "percentile value {f} is not between 0 and 1"
        )))
    }
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

    /// Adds `n` rows; returns each row's group id.
    fn update(
        &mut self,
        keys: &[ArrayRef],
        inputs: &[Option<ArrayRef>],
        n: usize,
    ) -> Result<Vec<usize>> {
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
        Ok(gids)
    }

    /// Key columns, then one column per accumulator.
    fn finish_columns(self) -> Result<Vec<ArrayRef>> {
        let mut cols: Vec<ArrayRef> = match (&self.converter, &self.keys) {
            (Some(conv), Some(keys)) => conv.convert_rows(keys.iter())?,
            _ => Vec::new(),
        };
        for a in self.accs {
            cols.push(a.finish()?);
        }
        Ok(cols)
    }

    fn finish(self, schema: SchemaRef) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(schema, self.finish_columns()?)?)
    }
}

/// Types and holistic bindings of a [`PartialAgg`] over one input schema.
struct Layout {
    /// Group key types.
    keys: Vec<DataType>,
    /// Argument type per aggregate (`None` for COUNT(*)).
    args: Vec<Option<DataType>>,
    /// Distinct argument expressions of the holistic aggregates.
    dargs: Vec<Expr>,
    /// Their types.
    dtypes: Vec<DataType>,
}

fn sum_arrow_type(t: Option<DataType>) -> ArrowType {
    if t == Some(DataType::Double) {
        ArrowType::Float64
    } else {
        ArrowType::Int64
    }
}

impl PartialAgg {
    /// True if any aggregate is holistic (see the module docs): the partial state then
    /// groups by the extended key.
    pub fn is_holistic(&self) -> bool {
        self.aggs.iter().any(|a| a.func.is_holistic())
    }

    /// The distinct argument expressions of the holistic aggregates, in first-use
    /// order: the extra key columns `d0..dm` of the partial state.
    pub fn distinct_args(&self) -> Vec<Expr> {
        self.holistic_slots().0
    }

    /// Distinct holistic arguments, and per aggregate its index among them.
    fn holistic_slots(&self) -> (Vec<Expr>, Vec<Option<usize>>) {
        let mut dargs: Vec<Expr> = Vec::new();
        let mut slots = Vec::with_capacity(self.aggs.len());
        for a in &self.aggs {
            let slot = match (&a.arg, a.func.is_holistic()) {
                (Some(e), true) => Some(match dargs.iter().position(|d| d == e) {
                    Some(j) => j,
                    None => {
                        dargs.push(e.clone());
                        dargs.len() - 1
                    }
                }),
                _ => None,
            };
            slots.push(slot);
        }
        (dargs, slots)
    }

    /// True if the state carries the `weight` column.
    fn has_weight(&self) -> bool {
        self.aggs.iter().any(|a| a.func.needs_weight())
    }

    fn layout(&self, schema: &TableSchema) -> Result<Layout> {
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
                    let numeric = matches!(
                        f,
                        AggFunc::Sum | AggFunc::Avg | AggFunc::SumDistinct | AggFunc::AvgDistinct
                    );
                    if numeric {
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
                    if let Some(p) = f.fraction() {
                        check_fraction(p)?;
                    }
                    Some(t.unwrap_or(if numeric {
                        DataType::BigInt
                    } else {
                        DataType::Text
                    }))
                }
            };
            args.push(t);
        }
        let (dargs, slots) = self.holistic_slots();
        let mut dtypes = vec![DataType::Text; dargs.len()];
        for (s, t) in slots.iter().zip(&args) {
            if let (Some(j), Some(t)) = (s, t) {
                dtypes[*j] = *t;
            }
        }
        Ok(Layout {
            keys,
            args,
            dargs,
            dtypes,
        })
    }

    /// Schema of the partial (and merged) state batches for a table with `schema`.
    pub fn partial_schema(&self, schema: &TableSchema) -> Result<SchemaRef> {
        let l = self.layout(schema)?;
        let mut fields: Vec<Field> = l
            .keys
            .iter()
            .enumerate()
            .map(|(i, t)| Field::new(format!("g{i}"), t.to_arrow(), true))
            .collect();
        for (j, t) in l.dtypes.iter().enumerate() {
            fields.push(Field::new(format!("d{j}"), t.to_arrow(), true));
        }
        for (i, (a, t)) in self.aggs.iter().zip(&l.args).enumerate() {
            match a.func {
                AggFunc::Count | AggFunc::CountStar => {
                    fields.push(Field::new(format!("a{i}_count"), ArrowType::Int64, false))
                }
                AggFunc::Sum => {
                    fields.push(Field::new(format!("a{i}_sum"), sum_arrow_type(*t), true))
                }
                AggFunc::Min | AggFunc::Max => fields.push(Field::new(
                    format!(
                        "a{i}_{}",
                        if a.func == AggFunc::Min { "min" } else { "max" }
                    ),
                    t.unwrap_or(DataType::Text).to_arrow(),
                    true,
                )),
                AggFunc::Avg => {
                    fields.push(Field::new(format!("a{i}_sum"), sum_arrow_type(*t), true));
                    fields.push(Field::new(format!("a{i}_count"), ArrowType::Int64, false));
                }
                f if f.is_holistic() => {} // state is the extended key (and the weight)
                f => return Err(Error::Internal(format!("no state for {f:?}"))),
            }
        }
        if self.has_weight() {
            fields.push(Field::new("weight", ArrowType::Int64, false));
        }
        Ok(Arc::new(Schema::new(fields)))
    }

    /// Computes the partial aggregate of `batches` (rows of a table with `schema`,
    /// already filtered) as one state batch.
    pub fn partial(&self, schema: &TableSchema, batches: &[RecordBatch]) -> Result<RecordBatch> {
        let out_schema = self.partial_schema(schema)?;
        let l = self.layout(schema)?;
        let mut ops = Vec::new();
        for (a, t) in self.aggs.iter().zip(&l.args) {
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
                _ => {} // holistic: no state of its own
            }
        }
        let weight = self.has_weight();
        if weight {
            ops.push(Op::CountRows);
        }
        let key_types: Vec<DataType> = l.keys.iter().chain(&l.dtypes).copied().collect();
        let mut g = Grouper::new(&key_types, ops)?;
        for b in batches {
            let keys = self
                .group_by
                .iter()
                .chain(&l.dargs)
                .zip(&key_types)
                .map(|(e, t)| cast_array(e.eval(b)?, *t))
                .collect::<Result<Vec<_>>>()?;
            let mut inputs = Vec::new();
            for (a, t) in self.aggs.iter().zip(&l.args) {
                if a.func.is_holistic() {
                    continue;
                }
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
            if weight {
                inputs.push(None);
            }
            g.update(&keys, &inputs, b.num_rows())?;
        }
        g.finish(out_schema)
    }

    /// Merge operations for the ordinary aggregates' state columns of `schema`,
    /// starting at column `col`; returns them and the column after the last one.
    fn merge_ops(&self, schema: &Schema, mut col: usize) -> Result<(Vec<Op>, usize)> {
        let field_t = |i: usize| -> Result<DataType> {
            DataType::from_arrow(
                schema
                    .fields()
                    .get(i)
                    .ok_or_else(|| Error::Internal("partial schema too short".into()))?
                    .data_type(),
            )
        };
        let mut ops = Vec::new();
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
                _ => continue, // holistic: no state column
            }
            col += 1;
        }
        Ok((ops, col))
    }

    /// Types of the first `n` columns of `schema`.
    fn key_types(schema: &Schema, n: usize) -> Result<Vec<DataType>> {
        schema
            .fields()
            .iter()
            .take(n)
            .map(|f| DataType::from_arrow(f.data_type()))
            .collect::<Result<Vec<_>>>()
            .and_then(|v| {
                if v.len() == n {
                    Ok(v)
                } else {
                    Err(Error::Internal("partial schema too short".into()))
                }
            })
    }

    /// Combines partial state batches (from any number of Tstores, all with the
    /// [`PartialAgg::partial_schema`] layout) into one state batch of the same layout.
    pub fn merge(&self, partials: &[RecordBatch]) -> Result<RecordBatch> {
        let schema = partials
            .first()
            .ok_or_else(|| Error::Internal("merge of zero partial batches".into()))?
            .schema();
        let k = self.group_by.len() + self.holistic_slots().0.len();
        let keys_t = Self::key_types(&schema, k)?;
        let (mut ops, mut col) = self.merge_ops(&schema, k)?;
        if self.has_weight() {
            ops.push(Op::SumCount);
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
        let (dargs, slots) = self.holistic_slots();
        let m = dargs.len();
        if schema.fields().len() < k + m {
            return Err(Error::Internal("state too short".into()));
        }
        let mut fields: Vec<Field> = schema.fields()[..k]
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        let mut holistic: Vec<Option<ArrayRef>> = vec![None; self.aggs.len()];
        let (mut cols, states, nrows) = if m == 0 {
            (
                merged.columns()[..k].to_vec(),
                merged.columns()[k..].to_vec(),
                merged.num_rows(),
            )
        } else {
            // Regroup the extended groups by the real group keys.
            let keys_t = Self::key_types(&schema, k)?;
            let (ops, end) = self.merge_ops(&schema, k + m)?;
            let weight = if self.has_weight() {
                let w = merged
                    .columns()
                    .get(end)
                    .ok_or_else(|| Error::Internal("state without weight".into()))?;
                if w.data_type() != &ArrowType::Int64 {
                    return Err(Error::Internal("weight is not BIGINT".into()));
                }
                Some(w.as_primitive::<Int64Type>().clone())
            } else {
                None
            };
            let mut g = Grouper::new(&keys_t, ops)?;
            let inputs: Vec<Option<ArrayRef>> = merged.columns()[k + m..end]
                .iter()
                .cloned()
                .map(Some)
                .collect();
            let gids = g.update(&merged.columns()[..k], &inputs, merged.num_rows())?;
            let ngroups = g.ngroups;
            for (j, col) in merged.columns()[k..k + m].iter().enumerate() {
                let groups = value_runs(col, &gids, ngroups, weight.as_ref())?;
                for (i, a) in self.aggs.iter().enumerate() {
                    if slots[i] == Some(j) {
                        holistic[i] = Some(holistic_result(a.func, col, &groups)?);
                    }
                }
            }
            let mut all = g.finish_columns()?;
            let states = all.split_off(k);
            (all, states, ngroups)
        };
        let mut states = states.into_iter();
        let mut next_state = || {
            states
                .next()
                .ok_or_else(|| Error::Internal("state too short".into()))
        };
        for (i, a) in self.aggs.iter().enumerate() {
            let out: ArrayRef = if let Some(h) = holistic[i].take() {
                h
            } else if a.func == AggFunc::Avg {
                let sum = cast_array(next_state()?, DataType::Double)?;
                let sum = sum.as_primitive::<Float64Type>();
                let cnt = next_state()?;
                let cnt = cnt.as_primitive::<Int64Type>();
                Arc::new(
                    (0..sum.len())
                        .map(|r| {
                            (sum.is_valid(r) && cnt.value(r) > 0)
                                .then(|| sum.value(r) / cnt.value(r) as f64)
                        })
                        .collect::<Float64Array>(),
                )
            } else if a.func.is_holistic() {
                return Err(Error::Internal(format!("{:?} without argument", a.func)));
            } else {
                next_state()?
            };
            let nullable = !matches!(
                a.func,
                AggFunc::Count | AggFunc::CountStar | AggFunc::CountDistinct
            );
            fields.push(Field::new(
                format!("a{i}"),
                out.data_type().clone(),
                nullable,
            ));
            cols.push(out);
        }
        Ok(RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            cols,
            &RecordBatchOptions::new().with_row_count(Some(nrows)),
        )?)
    }

    /// `finalize(merge(partials))`.
    pub fn merge_finalize(&self, partials: &[RecordBatch]) -> Result<RecordBatch> {
        self.finalize(&self.merge(partials)?)
    }
}

/// Per group, the distinct non-null values of `col` (a merged state's `d` column) in
/// ascending order, each as (a row holding the value, the value's total weight).
/// `gids[r]` is row `r`'s group; without `weight` every row weighs 1.
fn value_runs(
    col: &ArrayRef,
    gids: &[usize],
    ngroups: usize,
    weight: Option<&Int64Array>,
) -> Result<Vec<Vec<(usize, i64)>>> {
    let norm = normalize_floats(col.clone());
    let conv = RowConverter::new(vec![SortField::new(norm.data_type().clone())])?;
    let rows = conv.convert_columns(&[norm])?;
    let mut idx: Vec<usize> = (0..col.len()).filter(|&r| col.is_valid(r)).collect();
    idx.sort_unstable_by(|&a, &b| {
        gids[a]
            .cmp(&gids[b])
            .then_with(|| rows.row(a).cmp(&rows.row(b)))
    });
    let mut groups: Vec<Vec<(usize, i64)>> = vec![Vec::new(); ngroups];
    for r in idx {
        let w = weight.map_or(1, |w| w.value(r));
        let list = groups
            .get_mut(gids[r])
            .ok_or_else(|| Error::Internal("group id out of range".into()))?;
        match list.last_mut() {
            Some(last) if rows.row(last.0) == rows.row(r) => {
                last.1 = last
                    .1
                    .checked_add(w)
                    .ok_or_else(|| Error::Overflow("bigint out of range in weight".into()))?;
            }
            _ => list.push((r, w)),
        }
    }
    Ok(groups)
}

/// `col`'s values at `rows` (NULL for `None`).
fn take_rows(col: &ArrayRef, rows: Vec<Option<usize>>) -> Result<ArrayRef> {
    let idx = rows
        .into_iter()
        .map(|r| {
            r.map(u32::try_from)
                .transpose()
                .map_err(|_| Error::Internal("state batch too large".into()))
        })
        .collect::<Result<UInt32Array>>()?;
    Ok(arrow_select::take::take(col.as_ref(), &idx, None)?)
}

/// The final column of holistic aggregate `f` over its argument's merged `d` column
/// `col`, given [`value_runs`] per group.
fn holistic_result(f: AggFunc, col: &ArrayRef, groups: &[Vec<(usize, i64)>]) -> Result<ArrayRef> {
    let overflow = || Error::Overflow("bigint out of range in SUM".into());
    Ok(match f {
        AggFunc::CountDistinct => Arc::new(
            groups
                .iter()
                .map(|g| g.len() as i64)
                .collect::<Int64Array>(),
        ),
        AggFunc::SumDistinct | AggFunc::AvgDistinct => {
            let avg = f == AggFunc::AvgDistinct;
            if col.data_type() == &ArrowType::Float64 {
                let v = col.as_primitive::<Float64Type>();
                Arc::new(
                    groups
                        .iter()
                        .map(|g| {
                            (!g.is_empty()).then(|| {
                                let s: f64 = g.iter().map(|&(r, _)| v.value(r)).sum();
                                if avg {
                                    s / g.len() as f64
                                } else {
                                    s
                                }
                            })
                        })
                        .collect::<Float64Array>(),
                )
            } else {
                let v = cast_array(col.clone(), DataType::BigInt)?;
                let v = v.as_primitive::<Int64Type>();
                if avg {
                    // i128: the average of BIGINTs never overflows
                    Arc::new(
                        groups
                            .iter()
                            .map(|g| {
                                (!g.is_empty()).then(|| {
                                    let s: i128 = g.iter().map(|&(r, _)| v.value(r) as i128).sum();
                                    s as f64 / g.len() as f64
                                })
                            })
                            .collect::<Float64Array>(),
                    )
                } else {
                    let mut out = Vec::with_capacity(groups.len());
                    for g in groups {
                        let mut s: Option<i64> = None;
                        for &(r, _) in g {
                            s = Some(
                                s.unwrap_or(0)
                                    .checked_add(v.value(r))
                                    .ok_or_else(overflow)?,
                            );
                        }
                        out.push(s);
                    }
                    Arc::new(Int64Array::from(out))
                }
            }
        }
        AggFunc::Mode { descending } => {
            let picks = groups
                .iter()
                .map(|g| {
                    let mut best: Option<(usize, i64)> = None;
                    for &(r, w) in g {
                        let better = match best {
                            None => true,
                            // values ascend: ASC keeps the first of equal weights,
                            // DESC the last
                            Some((_, bw)) => w > bw || (descending && w == bw),
                        };
                        if better {
                            best = Some((r, w));
                        }
                    }
                    best.map(|(r, _)| r)
                })
                .collect();
            take_rows(col, picks)?
        }
        AggFunc::PercentileDisc { descending, .. } => {
            let p = f.fraction().unwrap_or(0.0);
            let mut picks = Vec::with_capacity(groups.len());
            for g in groups {
                let total = g
                    .iter()
                    .try_fold(0i64, |a, &(_, w)| a.checked_add(w))
                    .ok_or_else(|| Error::Overflow("bigint out of range in weight".into()))?;
                if total == 0 {
                    picks.push(None);
                    continue;
                }
                // PostgreSQL: the row at position ceil(f * n) (1-based), the first for 0.
                let target = ((p * total as f64).ceil() as i64).max(1);
                let ordered: Box<dyn Iterator<Item = &(usize, i64)>> = if descending {
                    Box::new(g.iter().rev())
                } else {
                    Box::new(g.iter())
                };
                let mut cum = 0i64;
                let mut pick = None;
                for &(r, w) in ordered {
                    cum += w;
                    pick = Some(r);
                    if cum >= target {
                        break;
                    }
                }
                picks.push(pick);
            }
            take_rows(col, picks)?
        }
        f => return Err(Error::Internal(format!("{f:?} is not holistic"))),
    })
}
