//! Column statistics a Tstore keeps for each of its slices, updated as rows are
//! written, and merged over the cluster into the primary's catalog: rows and bytes,
//! and per column the NULL count, the minimum and maximum, and a HyperLogLog sketch
//! of the distinct values (1024 one-byte registers; about 3 % standard error).
//!
//! Inserts update them incrementally; an UPDATE or DELETE recomputes them for the
//! slice (their minimum and maximum may shrink).

use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use datafusion_common::hash_utils::{create_hashes, HLL_RANDOM_STATE};
use datafusion_common::ScalarValue;
use datafusion_functions_aggregate_common::min_max::{max_batch, min_batch};
use serde::{Deserialize, Serialize};

/// log2 of the HyperLogLog registers.
const HLL_BITS: u32 = 10;
/// HyperLogLog registers.
pub const HLL_REGISTERS: usize = 1 << HLL_BITS;
/// Longest text value kept as a minimum or maximum (bytes).
const MAX_TEXT_STAT: usize = 256;

/// A minimum or maximum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StatValue {
    /// Any integer type, date (days), timestamp (µs) or boolean (0/1).
    Int(i64),
    /// REAL / DOUBLE PRECISION.
    Float(f64),
    /// NUMERIC, unscaled.
    Decimal(i128),
    /// Text.
    Text(String),
}

impl StatValue {
    /// From a scalar (`None` for NULL, NaN and values not worth keeping).
    pub fn from_scalar(s: &ScalarValue) -> Option<StatValue> {
        use ScalarValue as S;
        Some(match s {
            S::Int8(Some(v)) => StatValue::Int(i64::from(*v)),
            S::Int16(Some(v)) => StatValue::Int(i64::from(*v)),
            S::Int32(Some(v)) | S::Date32(Some(v)) => StatValue::Int(i64::from(*v)),
            S::Int64(Some(v)) | S::TimestampMicrosecond(Some(v), _) => StatValue::Int(*v),
            S::Boolean(Some(b)) => StatValue::Int(i64::from(*b)),
            S::Float32(Some(f)) if !f.is_nan() => StatValue::Float(f64::from(*f)),
            S::Float64(Some(f)) if !f.is_nan() => StatValue::Float(*f),
            S::Decimal128(Some(v), _, _) => StatValue::Decimal(*v),
            S::Utf8(Some(t)) if t.len() <= MAX_TEXT_STAT => StatValue::Text(t.clone()),
            _ => return None,
        })
    }

    /// As a scalar of type `t` (`None` when it does not fit the type).
    pub fn to_scalar(&self, t: &DataType) -> Option<ScalarValue> {
        use ScalarValue as S;
        Some(match (self, t) {
            (StatValue::Int(v), DataType::Int16) => S::Int16(Some(i16::try_from(*v).ok()?)),
            (StatValue::Int(v), DataType::Int32) => S::Int32(Some(i32::try_from(*v).ok()?)),
            (StatValue::Int(v), DataType::Int64) => S::Int64(Some(*v)),
            (StatValue::Int(v), DataType::Date32) => S::Date32(Some(i32::try_from(*v).ok()?)),
            (StatValue::Int(v), DataType::Timestamp(arrow_schema::TimeUnit::Microsecond, tz)) => {
                S::TimestampMicrosecond(Some(*v), tz.clone())
            }
            (StatValue::Int(v), DataType::Boolean) => S::Boolean(Some(*v != 0)),
            (StatValue::Float(f), DataType::Float32) => S::Float32(Some(*f as f32)),
            (StatValue::Float(f), DataType::Float64) => S::Float64(Some(*f)),
            (StatValue::Decimal(v), DataType::Decimal128(p, s)) => S::Decimal128(Some(*v), *p, *s),
            (StatValue::Text(x), DataType::Utf8) => S::Utf8(Some(x.clone())),
            _ => return None,
        })
    }

    fn less(&self, o: &StatValue) -> bool {
        match (self, o) {
            (StatValue::Int(a), StatValue::Int(b)) => a < b,
            (StatValue::Float(a), StatValue::Float(b)) => a < b,
            (StatValue::Decimal(a), StatValue::Decimal(b)) => a < b,
            (StatValue::Text(a), StatValue::Text(b)) => a < b,
            _ => false,
        }
    }
}

/// Statistics of one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// NULLs.
    pub nulls: u64,
    /// Smallest non-NULL value, if known.
    pub min: Option<StatValue>,
    /// Largest non-NULL value, if known.
    pub max: Option<StatValue>,
    /// HyperLogLog registers ([`HLL_REGISTERS`] bytes).
    pub hll: Vec<u8>,
}

impl Default for ColumnStats {
    fn default() -> Self {
        ColumnStats {
            nulls: 0,
            min: None,
            max: None,
            hll: vec![0; HLL_REGISTERS],
        }
    }
}

impl ColumnStats {
    /// Adds a column of values.
    pub fn add(&mut self, col: &ArrayRef) {
        self.nulls += col.null_count() as u64;
        if col.null_count() == col.len() {
            return;
        }
        if let Some(v) = min_batch(col)
            .ok()
            .as_ref()
            .and_then(StatValue::from_scalar)
        {
            if self.min.as_ref().is_none_or(|m| v.less(m)) {
                self.min = Some(v);
            }
        }
        if let Some(v) = max_batch(col)
            .ok()
            .as_ref()
            .and_then(StatValue::from_scalar)
        {
            if self.max.as_ref().is_none_or(|m| m.less(&v)) {
                self.max = Some(v);
            }
        }
        let mut hashes = vec![0u64; col.len()];
        if create_hashes([col], &HLL_RANDOM_STATE, &mut hashes).is_err() {
            return;
        }
        if self.hll.len() != HLL_REGISTERS {
            self.hll = vec![0; HLL_REGISTERS];
        }
        for (i, h) in hashes.iter().enumerate() {
            if col.is_null(i) {
                continue;
            }
            let reg = (h >> (64 - HLL_BITS)) as usize;
            let rank = ((h << HLL_BITS) | (1 << (HLL_BITS - 1))).leading_zeros() as u8 + 1;
            if rank > self.hll[reg] {
                self.hll[reg] = rank;
            }
        }
    }

    /// Merges another Tstore's statistics of the same column.
    pub fn merge(&mut self, o: &ColumnStats) {
        self.nulls += o.nulls;
        if let Some(v) = &o.min {
            if self.min.as_ref().is_none_or(|m| v.less(m)) {
                self.min = Some(v.clone());
            }
        }
        if let Some(v) = &o.max {
            if self.max.as_ref().is_none_or(|m| m.less(v)) {
                self.max = Some(v.clone());
            }
        }
        if self.hll.len() != HLL_REGISTERS {
            self.hll = vec![0; HLL_REGISTERS];
        }
        for (a, b) in self.hll.iter_mut().zip(&o.hll) {
            *a = (*a).max(*b);
        }
    }

    /// Estimated distinct non-NULL values (HyperLogLog with linear counting for small
    /// cardinalities).
    pub fn distinct(&self) -> u64 {
        let m = HLL_REGISTERS as f64;
        let zeros = self.hll.iter().filter(|&&r| r == 0).count();
        let sum: f64 = self.hll.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let est = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        est.round() as u64
    }
}

/// Statistics of one table slice (or, merged, of the whole table).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableStats {
    /// Rows.
    pub rows: u64,
    /// Bytes of Arrow data (the rows' own, not the capacity of shared buffers).
    pub bytes: u64,
    /// One entry per column.
    pub columns: Vec<ColumnStats>,
}

impl TableStats {
    /// Empty statistics of a table of `columns` columns.
    pub fn new(columns: usize) -> TableStats {
        TableStats {
            rows: 0,
            bytes: 0,
            columns: vec![ColumnStats::default(); columns],
        }
    }

    /// Adds a batch of the table.
    pub fn add(&mut self, b: &RecordBatch) {
        if self.columns.len() != b.num_columns() {
            self.columns = vec![ColumnStats::default(); b.num_columns()];
        }
        self.rows += b.num_rows() as u64;
        // The bytes of the rows themselves: a batch sliced out of a larger one (rows
        // spread round-robin) shares its buffers, which `get_array_memory_size` would
        // count whole.
        self.bytes += b
            .columns()
            .iter()
            .map(|c| {
                c.to_data()
                    .get_slice_memory_size()
                    .unwrap_or_else(|_| c.get_array_memory_size())
            })
            .sum::<usize>() as u64;
        for (c, s) in b.columns().iter().zip(self.columns.iter_mut()) {
            s.add(c);
        }
    }

    /// Merges another slice's statistics.
    pub fn merge(&mut self, o: &TableStats) {
        if self.columns.len() != o.columns.len() {
            if self.rows == 0 {
                self.columns = vec![ColumnStats::default(); o.columns.len()];
            } else {
                return;
            }
        }
        self.rows += o.rows;
        self.bytes += o.bytes;
        for (a, b) in self.columns.iter_mut().zip(&o.columns) {
            a.merge(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn distinct_estimates_merge_across_slices() {
        let mut a = ColumnStats::default();
        let mut b = ColumnStats::default();
        // 0..50_000 on one slice, 25_000..75_000 on another: 75_000 distinct.
        a.add(&(Arc::new(Int64Array::from_iter_values(0..50_000)) as ArrayRef));
        b.add(&(Arc::new(Int64Array::from_iter_values(25_000..75_000)) as ArrayRef));
        a.merge(&b);
        let d = a.distinct() as f64;
        assert!((d - 75_000.0).abs() / 75_000.0 < 0.1, "{d}");
        assert_eq!(a.min, Some(StatValue::Int(0)));
        assert_eq!(a.max, Some(StatValue::Int(74_999)));
        // Small cardinalities are near exact (linear counting).
        let mut s = ColumnStats::default();
        let col: ArrayRef = Arc::new(StringArray::from(vec![
            Some("x"),
            None,
            Some("y"),
            Some("x"),
            Some("z"),
        ]));
        s.add(&col);
        assert_eq!(s.distinct(), 3);
        assert_eq!(s.nulls, 1);
        assert_eq!(s.min, Some(StatValue::Text("x".into())));
        assert_eq!(
            s.max.unwrap().to_scalar(&DataType::Utf8),
            Some(ScalarValue::Utf8(Some("z".into())))
        );
    }
}
