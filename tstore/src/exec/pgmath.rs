//! PostgreSQL's arithmetic, applied to every decoded expression
//! ([`super::codec::PgConverter`]): integer and numeric `+`, `-`, `*` and integer
//! negation fail on overflow (22003) instead of wrapping, a floating-point `/` or `%`
//! by zero fails (22012) instead of giving an infinity or NaN, and a floating-point
//! value cast to an integer rounds to the nearest, ties to even, instead of
//! truncating, and a timestamp cast to text has a space, not ISO's `T`, before its
//! time.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type};
use arrow_schema::{DataType, Schema};
use datafusion_common::config::ConfigOptions;
use datafusion_common::{DataFusionError, Result, ScalarValue};
use datafusion_expr::{
    ColumnarValue, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion_physical_expr::expressions::{BinaryExpr, CastExpr, Literal, NegativeExpr};
use datafusion_physical_expr::{PhysicalExpr, ScalarFunctionExpr};

/// Name of the function that passes a floating-point divisor through, or fails on a
/// zero: `x / pg_divisor(y)`.
pub const DIVISOR: &str = "pg_divisor";

/// Name of the function that rounds a floating-point value to the nearest integer,
/// ties to even (PostgreSQL's `rint`, which its float-to-integer casts use; Arrow's
/// cast truncates): `CAST(pg_rint(x) AS INTEGER)`.
pub const RINT: &str = "pg_rint";

/// PostgreSQL's text form of a timestamp (fractional seconds only when there are).
const PG_TIMESTAMP: &str = "%Y-%m-%d %H:%M:%S%.f";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Which {
    Divisor,
    Rint,
}

/// `pg_divisor(y)`: `y`, or the error "division by zero" if a value of `y` is zero;
/// `pg_rint(x)`: `x` rounded, ties to even. Both act on floating-point types and pass
/// other types unchanged.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PgScalar {
    which: Which,
    signature: Signature,
}

impl PgScalar {
    fn new(which: Which) -> Self {
        PgScalar {
            which,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

/// The functions as registered with every node: `(name, function)`.
pub fn udfs() -> Vec<(&'static str, Arc<ScalarUDF>)> {
    vec![(DIVISOR, udf(Which::Divisor)), (RINT, udf(Which::Rint))]
}

fn udf(which: Which) -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(PgScalar::new(which)))
}

fn division_by_zero() -> DataFusionError {
    DataFusionError::Execution("division by zero".into())
}

/// Whether a floating-point value of `v` is zero.
fn has_zero(v: &ColumnarValue) -> bool {
    match v {
        ColumnarValue::Scalar(ScalarValue::Float64(Some(x))) => *x == 0.0,
        ColumnarValue::Scalar(ScalarValue::Float32(Some(x))) => *x == 0.0,
        ColumnarValue::Scalar(_) => false,
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Float64 => a
                .as_primitive::<Float64Type>()
                .iter()
                .any(|x| x == Some(0.0)),
            DataType::Float32 => a
                .as_primitive::<Float32Type>()
                .iter()
                .any(|x| x == Some(0.0)),
            _ => false,
        },
    }
}

/// `v` rounded to the nearest integer, ties to even.
fn rint(v: &ColumnarValue) -> ColumnarValue {
    match v {
        ColumnarValue::Scalar(ScalarValue::Float64(x)) => {
            ColumnarValue::Scalar(ScalarValue::Float64(x.map(f64::round_ties_even)))
        }
        ColumnarValue::Scalar(ScalarValue::Float32(x)) => {
            ColumnarValue::Scalar(ScalarValue::Float32(x.map(f32::round_ties_even)))
        }
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Float64 => ColumnarValue::Array(Arc::new(
                a.as_primitive::<Float64Type>()
                    .unary::<_, Float64Type>(f64::round_ties_even),
            )),
            DataType::Float32 => ColumnarValue::Array(Arc::new(
                a.as_primitive::<Float32Type>()
                    .unary::<_, Float32Type>(f32::round_ties_even),
            )),
            _ => v.clone(),
        },
        other => other.clone(),
    }
}

impl ScalarUDFImpl for PgScalar {
    fn name(&self) -> &str {
        match self.which {
            Which::Divisor => DIVISOR,
            Which::Rint => RINT,
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t] => Ok(t.clone()),
            _ => Err(DataFusionError::Plan(format!(
                "{} takes one argument",
                self.name()
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [v] = args.args.as_slice() else {
            return Err(DataFusionError::Plan(format!(
                "{} takes one argument",
                self.name()
            )));
        };
        match self.which {
            Which::Divisor if has_zero(v) => Err(division_by_zero()),
            Which::Divisor => Ok(v.clone()),
            Which::Rint => Ok(rint(v)),
        }
    }
}

/// Whether `e` is a call of `name`.
fn is_call(e: &Arc<dyn PhysicalExpr>, name: &str) -> bool {
    e.downcast_ref::<ScalarFunctionExpr>()
        .is_some_and(|f| f.name() == name)
}

/// `name(arg)` over `schema`.
fn call(
    which: Which,
    arg: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(Arc::new(ScalarFunctionExpr::try_new(
        udf(which),
        vec![arg],
        schema,
        Arc::new(ConfigOptions::default()),
    )?))
}

fn is_float(t: &DataType) -> bool {
    matches!(t, DataType::Float32 | DataType::Float64)
}

/// Applies PostgreSQL's arithmetic to one decoded expression (its children were
/// decoded, and so treated, first).
pub(crate) fn pg_semantics(
    e: Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Arc<dyn PhysicalExpr>> {
    if let Some(n) = e.downcast_ref::<NegativeExpr>() {
        // -x as 0 - x, which fails on the smallest integer instead of wrapping.
        let t = n.arg().data_type(schema)?;
        if t.is_signed_integer() {
            let zero: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::new_zero(&t)?));
            return Ok(Arc::new(
                BinaryExpr::new(zero, Operator::Minus, n.arg().clone()).with_fail_on_overflow(true),
            ));
        }
        return Ok(e);
    }
    if let Some(c) = e.downcast_ref::<CastExpr>() {
        // A timestamp as text reads as PostgreSQL writes it: a space, not ISO's 'T',
        // between date and time.
        if c.cast_type() == &DataType::Utf8
            && matches!(c.expr().data_type(schema)?, DataType::Timestamp(_, None))
            && c.cast_options().format_options.timestamp_format() != Some(PG_TIMESTAMP)
        {
            let mut options = c.cast_options().clone();
            options.format_options = options
                .format_options
                .with_timestamp_format(Some(PG_TIMESTAMP));
            return Ok(Arc::new(CastExpr::new_with_target_field(
                c.expr().clone(),
                c.target_field().clone(),
                Some(options),
            )));
        }
        // Float to integer rounds (ties to even) instead of truncating.
        if c.cast_type().is_integer()
            && is_float(&c.expr().data_type(schema)?)
            && !is_call(c.expr(), RINT)
        {
            let arg = call(Which::Rint, c.expr().clone(), schema)?;
            return Ok(Arc::new(CastExpr::new_with_target_field(
                arg,
                c.target_field().clone(),
                Some(c.cast_options().clone()),
            )));
        }
        return Ok(e);
    }
    let Some(b) = e.downcast_ref::<BinaryExpr>() else {
        return Ok(e);
    };
    let t = b.left().data_type(schema)?;
    match b.op() {
        Operator::Plus | Operator::Minus | Operator::Multiply
            if t.is_integer() || t.is_decimal() =>
        {
            Ok(Arc::new(
                BinaryExpr::new(b.left().clone(), *b.op(), b.right().clone())
                    .with_fail_on_overflow(true),
            ))
        }
        Operator::Divide | Operator::Modulo
            if is_float(&b.right().data_type(schema)?) && !is_call(b.right(), DIVISOR) =>
        {
            let d = call(Which::Divisor, b.right().clone(), schema)?;
            Ok(Arc::new(BinaryExpr::new(b.left().clone(), *b.op(), d)))
        }
        _ => Ok(e),
    }
}
