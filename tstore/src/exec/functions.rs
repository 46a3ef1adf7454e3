//! The functions every node knows: DataFusion's built-in scalar, aggregate and window
//! functions, and smrdb's own ordered-set aggregates `mode()` and `percentile_disc`.
//!
//! `mode() WITHIN GROUP (ORDER BY x)` and `percentile_disc(f) WITHIN GROUP (ORDER BY
//! x)` cannot be finished on a Tstore: each Tstore's partial state is the *secondary
//! query's* answer — every distinct `x` of its rows with its count — and the primary
//! merges the counts and picks the value (the most frequent, the smallest of a tie,
//! as PostgreSQL does; or the first value whose cumulative count reaches `f` of all).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::UInt64Type;
use arrow_array::{Array, ArrayRef, ListArray, UInt64Array};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, FieldRef};
use datafusion_common::{DataFusionError, Result, ScalarValue};
use datafusion_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion_expr::utils::format_state_name;
use datafusion_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ScalarUDF, Signature, Volatility, WindowUDF,
};
use datafusion_physical_expr::expressions::Literal;

/// The scalar, aggregate and window functions of a node, by name and alias.
#[derive(Debug, Clone, Default)]
pub struct Functions {
    /// Scalar functions.
    pub scalar: HashMap<String, Arc<ScalarUDF>>,
    /// Aggregate functions.
    pub aggregate: HashMap<String, Arc<AggregateUDF>>,
    /// Window functions.
    pub window: HashMap<String, Arc<WindowUDF>>,
}

impl Functions {
    /// DataFusion's defaults plus smrdb's own.
    pub fn all() -> Functions {
        let mut f = Functions::default();
        for u in datafusion_functions::all_default_functions() {
            for n in std::iter::once(u.name()).chain(u.aliases().iter().map(String::as_str)) {
                f.scalar.insert(n.to_string(), u.clone());
            }
        }
        for (name, u) in super::pgmath::udfs() {
            f.scalar.insert(name.to_string(), u);
        }
        for u in smrdb_aggregates()
            .into_iter()
            .chain(datafusion_functions_aggregate::all_default_aggregate_functions())
        {
            for n in std::iter::once(u.name()).chain(u.aliases().iter().map(String::as_str)) {
                f.aggregate
                    .entry(n.to_string())
                    .or_insert_with(|| u.clone());
            }
        }
        for u in datafusion_functions_window::all_default_window_functions() {
            for n in std::iter::once(u.name()).chain(u.aliases().iter().map(String::as_str)) {
                f.window.insert(n.to_string(), u.clone());
            }
        }
        f
    }
}

/// smrdb's own aggregates: `mode` and `percentile_disc`.
pub fn smrdb_aggregates() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(AggregateUDF::from(Counted::new(Kind::Mode))),
        Arc::new(AggregateUDF::from(Counted::new(Kind::PercentileDisc))),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Mode,
    PercentileDisc,
}

/// An ordered-set aggregate finished from per-value counts.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Counted {
    kind: Kind,
    signature: Signature,
}

impl Counted {
    fn new(kind: Kind) -> Self {
        Counted {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Counted {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Mode => "mode",
            Kind::PercentileDisc => "percentile_disc",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match (self.kind, arg_types) {
            (Kind::Mode, [t]) => Ok(vec![t.clone()]),
            (Kind::PercentileDisc, [t, f]) if f.is_numeric() || f.is_null() => {
                Ok(vec![t.clone(), DataType::Float64])
            }
            _ => Err(DataFusionError::Plan(format!(
                "{}() WITHIN GROUP (ORDER BY x) takes {}",
                self.name(),
                match self.kind {
                    Kind::Mode => "no argument",
                    Kind::PercentileDisc => "one numeric fraction",
                }
            ))),
        }
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Null))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let t = args.input_fields[0].data_type().clone();
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "values"),
                DataType::List(Arc::new(Field::new_list_field(t, true))),
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "counts"),
                DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true))),
                true,
            )),
        ])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let fraction = match self.kind {
            Kind::Mode => 0.0,
            Kind::PercentileDisc => {
                let f = args
                    .exprs
                    .get(1)
                    .and_then(|e| e.downcast_ref::<Literal>())
                    .map(|l| l.value().clone())
                    .ok_or_else(|| {
                        DataFusionError::Plan(
                            "the fraction of percentile_disc must be a constant".into(),
                        )
                    })?;
                let f = match f.cast_to(&DataType::Float64)? {
                    ScalarValue::Float64(Some(f)) => f,
                    _ => {
                        return Err(DataFusionError::Plan(
                            "the fraction of percentile_disc must not be NULL".into(),
                        ))
                    }
                };
                if !(0.0..=1.0).contains(&f) {
                    return Err(DataFusionError::Execution(format!(
                        "percentile value {f} is not between 0 and 1"
                    )));
                }
                f
            }
        };
        let descending = args
            .order_bys
            .first()
            .map(|s| s.options.descending)
            .unwrap_or(false);
        Ok(Box::new(CountAcc {
            kind: self.kind,
            fraction,
            descending,
            data_type: args.expr_fields[0].data_type().clone(),
            counts: HashMap::new(),
        }))
    }

    fn supports_within_group_clause(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct CountAcc {
    kind: Kind,
    fraction: f64,
    descending: bool,
    data_type: DataType,
    counts: HashMap<ScalarValue, u64>,
}

impl CountAcc {
    fn add(&mut self, values: &ArrayRef, counts: Option<&UInt64Array>) -> Result<()> {
        for i in 0..values.len() {
            if values.is_null(i) {
                continue;
            }
            let v = ScalarValue::try_from_array(values, i)?;
            let n = counts.map(|c| c.value(i)).unwrap_or(1);
            *self.counts.entry(v).or_insert(0) += n;
        }
        Ok(())
    }

    fn sorted(&self) -> Result<Vec<(&ScalarValue, u64)>> {
        let mut v: Vec<(&ScalarValue, u64)> = self.counts.iter().map(|(k, c)| (k, *c)).collect();
        let mut bad = None;
        v.sort_by(|a, b| {
            a.0.partial_cmp(b.0).unwrap_or_else(|| {
                bad = Some(());
                std::cmp::Ordering::Equal
            })
        });
        if bad.is_some() {
            return Err(DataFusionError::Internal(
                "incomparable values in an ordered-set aggregate".into(),
            ));
        }
        if self.descending {
            v.reverse();
        }
        Ok(v)
    }
}

impl Accumulator for CountAcc {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.add(&values[0], None)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let sorted = self.sorted()?;
        let null = ScalarValue::try_from(&self.data_type)?;
        Ok(match self.kind {
            Kind::Mode => {
                // The first (in the ordering) of the most frequent values.
                let mut best: Option<(&ScalarValue, u64)> = None;
                for (v, c) in sorted {
                    if best.is_none_or(|(_, b)| c > b) {
                        best = Some((v, c));
                    }
                }
                best.map(|(v, _)| v.clone()).unwrap_or(null)
            }
            Kind::PercentileDisc => {
                let total: u64 = sorted.iter().map(|(_, c)| c).sum();
                if total == 0 {
                    return Ok(null);
                }
                // The first value whose position (1-based) reaches fraction * total.
                let want = ((self.fraction * total as f64).ceil() as u64).max(1);
                let mut seen = 0;
                for (v, c) in sorted {
                    seen += c;
                    if seen >= want {
                        return Ok(v.clone());
                    }
                }
                null
            }
        })
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.counts.keys().map(|k| k.size() + 8).sum::<usize>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let (vals, counts): (Vec<ScalarValue>, Vec<u64>) =
            self.counts.drain().map(|(k, c)| (k, c)).unzip();
        let values = if vals.is_empty() {
            arrow_array::new_empty_array(&self.data_type)
        } else {
            ScalarValue::iter_to_array(vals)?
        };
        let list = |a: ArrayRef| -> ScalarValue {
            let field = Arc::new(Field::new_list_field(a.data_type().clone(), true));
            ScalarValue::List(Arc::new(ListArray::new(
                field,
                OffsetBuffer::from_lengths([a.len()]),
                a,
                None,
            )))
        };
        Ok(vec![
            list(values),
            list(Arc::new(UInt64Array::from(counts))),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let values = states[0].as_list::<i32>();
        let counts = states[1].as_list::<i32>();
        for i in 0..values.len() {
            if values.is_null(i) || counts.is_null(i) {
                continue;
            }
            let v = values.value(i);
            let c = counts.value(i);
            let c = c.as_primitive::<UInt64Type>();
            if v.len() != c.len() {
                return Err(DataFusionError::Execution(
                    "an ordered-set aggregate state with values and counts of different lengths"
                        .into(),
                ));
            }
            self.add(&v, Some(c))?;
        }
        Ok(())
    }
}
