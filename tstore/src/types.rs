//! SQL data types, table schemas and literal values.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    /// 64-bit signed integer (`BIGINT`).
    BigInt,
    /// 32-bit signed integer (`INT`).
    Int,
    /// 64-bit float (`DOUBLE PRECISION`).
    Double,
    /// UTF-8 text.
    Text,
    /// Calendar date, days since 1970-01-01 (Arrow `Date32`).
    Date,
    /// Boolean.
    Boolean,
}

impl DataType {
    /// The Arrow type used to store this type.
    pub fn to_arrow(self) -> ArrowType {
        match self {
            DataType::BigInt => ArrowType::Int64,
            DataType::Int => ArrowType::Int32,
            DataType::Double => ArrowType::Float64,
            DataType::Text => ArrowType::Utf8,
            DataType::Date => ArrowType::Date32,
            DataType::Boolean => ArrowType::Boolean,
        }
    }

    /// The SQL type for an Arrow type, if it is one this crate uses.
    pub fn from_arrow(t: &ArrowType) -> Result<DataType> {
        Ok(match t {
            ArrowType::Int64 => DataType::BigInt,
            ArrowType::Int32 => DataType::Int,
            ArrowType::Float64 => DataType::Double,
            ArrowType::Utf8 => DataType::Text,
            ArrowType::Date32 => DataType::Date,
            ArrowType::Boolean => DataType::Boolean,
            other => {
                return Err(Error::TypeMismatch(format!(
                    "unsupported arrow type {other}"
                )))
            }
        })
    }

    /// True for `Int`, `BigInt` and `Double`.
    pub fn is_numeric(self) -> bool {
        matches!(self, DataType::Int | DataType::BigInt | DataType::Double)
    }

    /// Rank in the numeric promotion order int -> bigint -> double.
    fn numeric_rank(self) -> Option<u8> {
        match self {
            DataType::Int => Some(0),
            DataType::BigInt => Some(1),
            DataType::Double => Some(2),
            _ => None,
        }
    }

    /// Common type of two numeric types (int -> bigint -> double), `None` if either
    /// is not numeric.
    pub fn numeric_common(a: DataType, b: DataType) -> Option<DataType> {
        let (ra, rb) = (a.numeric_rank()?, b.numeric_rank()?);
        Some(if ra >= rb { a } else { b })
    }

    /// SQL spelling of the type.
    pub fn sql_name(self) -> &'static str {
        match self {
            DataType::BigInt => "BIGINT",
            DataType::Int => "INT",
            DataType::Double => "DOUBLE PRECISION",
            DataType::Text => "TEXT",
            DataType::Date => "DATE",
            DataType::Boolean => "BOOLEAN",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.sql_name())
    }
}

/// Parses a SQL type name (case-insensitive), e.g. `INTEGER`, `VARCHAR(20)`,
/// `DOUBLE PRECISION`, `CHARACTER VARYING(5)`.
pub fn parse_type(s: &str) -> Result<DataType> {
    let norm: String = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_uppercase();
    // Strip an optional "(n)" / "(n, m)" length suffix.
    let base = match norm.find('(') {
        Some(p) => {
            let inner = norm[p..].trim();
            let ok = inner.ends_with(')')
                && inner[1..inner.len() - 1]
                    .split(',')
                    .all(|d| !d.trim().is_empty() && d.trim().chars().all(|c| c.is_ascii_digit()));
            if !ok {
                return Err(Error::UnknownType(s.to_string()));
            }
            norm[..p].trim_end()
        }
        None => norm.as_str(),
    };
    let has_len = base.len() != norm.len();
    let t = match base {
        "INT" | "INTEGER" | "INT4" | "SMALLINT" | "INT2" if !has_len => DataType::Int,
        "BIGINT" | "INT8" if !has_len => DataType::BigInt,
        "REAL" | "FLOAT" | "FLOAT4" | "FLOAT8" | "DOUBLE" | "DOUBLE PRECISION" => DataType::Double,
        "TEXT" | "STRING" if !has_len => DataType::Text,
        "VARCHAR" | "CHAR" | "CHARACTER" | "CHARACTER VARYING" | "NVARCHAR" => DataType::Text,
        "DATE" if !has_len => DataType::Date,
        "BOOL" | "BOOLEAN" if !has_len => DataType::Boolean,
        _ => return Err(Error::UnknownType(s.to_string())),
    };
    Ok(t)
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// Column type.
    pub data_type: DataType,
    /// Whether NULL is allowed.
    pub nullable: bool,
}

impl ColumnDef {
    /// A column definition.
    pub fn new(name: impl Into<String>, data_type: DataType, nullable: bool) -> Self {
        ColumnDef {
            name: name.into(),
            data_type,
            nullable,
        }
    }
}

/// A table's schema: ordered columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The columns, in storage order. Expressions refer to them by index.
    pub columns: Vec<ColumnDef>,
}

impl TableSchema {
    /// A schema from column definitions.
    pub fn new(columns: Vec<ColumnDef>) -> Self {
        TableSchema { columns }
    }

    /// Index of the column called `name` (exact match).
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Error::UnknownColumn(name.to_string()))
    }

    /// Column `i`, or [`Error::UnknownColumn`].
    pub fn column(&self, i: usize) -> Result<&ColumnDef> {
        self.columns
            .get(i)
            .ok_or_else(|| Error::UnknownColumn(format!("#{i}")))
    }

    /// The Arrow schema of this table's batches.
    pub fn to_arrow(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.to_arrow(), c.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// The table schema described by an Arrow schema.
    pub fn from_arrow(schema: &Schema) -> Result<Self> {
        Ok(TableSchema {
            columns: schema
                .fields()
                .iter()
                .map(|f| {
                    Ok(ColumnDef::new(
                        f.name(),
                        DataType::from_arrow(f.data_type())?,
                        f.is_nullable(),
                    ))
                })
                .collect::<Result<_>>()?,
        })
    }
}

/// A single SQL value: a literal in an expression, or a field of an inserted row.
///
/// `PartialEq` is structural (used by tests and serde round trips); SQL comparison is
/// [`Value::sql_cmp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL (untyped).
    Null,
    /// 32-bit integer.
    Int(i32),
    /// 64-bit integer.
    BigInt(i64),
    /// 64-bit float.
    Double(f64),
    /// Text.
    Text(String),
    /// Date as days since 1970-01-01.
    Date(i32),
    /// Boolean.
    Bool(bool),
}

/// Normalises -0.0 to 0.0 so that SQL equality treats them alike; NaN sorts above
/// every other value and equals itself (PostgreSQL semantics).
pub(crate) fn norm_f64(x: f64) -> f64 {
    x + 0.0
}

impl Value {
    /// The value's type; `None` for NULL.
    pub fn data_type(&self) -> Option<DataType> {
        Some(match self {
            Value::Null => return None,
            Value::Int(_) => DataType::Int,
            Value::BigInt(_) => DataType::BigInt,
            Value::Double(_) => DataType::Double,
            Value::Text(_) => DataType::Text,
            Value::Date(_) => DataType::Date,
            Value::Bool(_) => DataType::Boolean,
        })
    }

    /// True for NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A date value from `YYYY-MM-DD`.
    pub fn date(s: &str) -> Result<Value> {
        Ok(Value::Date(parse_date(s)?))
    }

    /// SQL comparison: `None` if either side is NULL or the types are not comparable.
    /// Numbers compare across Int/BigInt/Double.
    pub fn sql_cmp(&self, other: &Value) -> Option<Ordering> {
        use Value::*;
        match (self, other) {
            (Null, _) | (_, Null) => None,
            (Int(a), Int(b)) => Some(a.cmp(b)),
            (Int(_) | BigInt(_), Int(_) | BigInt(_)) => Some(self.as_i64()?.cmp(&other.as_i64()?)),
            (Int(_) | BigInt(_) | Double(_), Int(_) | BigInt(_) | Double(_)) => {
                Some(norm_f64(self.as_f64()?).total_cmp(&norm_f64(other.as_f64()?)))
            }
            (Text(a), Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Date(a), Date(b)) => Some(a.cmp(b)),
            (Bool(a), Bool(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// SQL `=`: `None` (unknown) if either side is NULL.
    pub fn sql_eq(&self, other: &Value) -> Option<bool> {
        self.sql_cmp(other).map(|o| o == Ordering::Equal)
    }

    /// Integer value widened to i64.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v as i64),
            Value::BigInt(v) => Some(*v),
            _ => None,
        }
    }

    /// Numeric value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(v) => Some(*v as f64),
            Value::BigInt(v) => Some(*v as f64),
            Value::Double(v) => Some(*v),
            _ => None,
        }
    }

    /// Coerces a value for storing in a column of type `t` (the INSERT rules):
    /// integers widen or narrow with range checks, integers become doubles, integral
    /// doubles become integers, text is parsed into numbers, dates (`YYYY-MM-DD`) and
    /// booleans. NULL stays NULL (nullability is checked by the caller).
    pub fn coerce_to(&self, t: DataType) -> Result<Value> {
        use Value as V;
        let mismatch = || {
            Error::TypeMismatch(format!(
                "cannot store {} value {self} in a {t} column",
                self.data_type().map(|d| d.sql_name()).unwrap_or("NULL")
            ))
        };
        Ok(match (self, t) {
            (V::Null, _) => V::Null,
            (V::Int(v), DataType::Int) => V::Int(*v),
            (V::Int(v), DataType::BigInt) => V::BigInt(*v as i64),
            (V::Int(v), DataType::Double) => V::Double(*v as f64),
            (V::BigInt(v), DataType::Int) => V::Int(
                i32::try_from(*v)
                    .map_err(|_| Error::Overflow(format!("{v} out of range for INT")))?,
            ),
            (V::BigInt(v), DataType::BigInt) => V::BigInt(*v),
            (V::BigInt(v), DataType::Double) => V::Double(*v as f64),
            (V::Double(v), DataType::Double) => V::Double(*v),
            (V::Double(v), DataType::Int | DataType::BigInt) => {
                if v.fract() != 0.0 || !v.is_finite() {
                    return Err(Error::InvalidValue(format!("{v} is not an integer")));
                }
                if *v < -9.223372036854776e18 || *v >= 9.223372036854776e18 {
                    return Err(Error::Overflow(format!("{v} out of range for {t}")));
                }
                V::BigInt(*v as i64).coerce_to(t)?
            }
            (V::Text(s), DataType::Text) => V::Text(s.clone()),
            (V::Text(s), DataType::Date) => V::Date(parse_date(s)?),
            (V::Text(s), DataType::Int) => V::Int(s.trim().parse().map_err(|_| {
                Error::InvalidValue(format!("invalid input syntax for type INT: {s:?}"))
            })?),
            (V::Text(s), DataType::BigInt) => V::BigInt(s.trim().parse().map_err(|_| {
                Error::InvalidValue(format!("invalid input syntax for type BIGINT: {s:?}"))
            })?),
            (V::Text(s), DataType::Double) => V::Double(s.trim().parse().map_err(|_| {
                Error::InvalidValue(format!("invalid input syntax for type DOUBLE: {s:?}"))
            })?),
            (V::Text(s), DataType::Boolean) => V::Bool(parse_bool(s)?),
            (V::Date(d), DataType::Date) => V::Date(*d),
            (V::Bool(b), DataType::Boolean) => V::Bool(*b),
            _ => return Err(mismatch()),
        })
    }

    /// The value at row `i` of an Arrow array of one of this crate's types.
    pub fn from_array(array: &dyn Array, i: usize) -> Result<Value> {
        if array.is_null(i) {
            return Ok(Value::Null);
        }
        Ok(match array.data_type() {
            ArrowType::Int32 => Value::Int(array.as_primitive::<Int32Type>().value(i)),
            ArrowType::Int64 => Value::BigInt(array.as_primitive::<Int64Type>().value(i)),
            ArrowType::Float64 => Value::Double(array.as_primitive::<Float64Type>().value(i)),
            ArrowType::Utf8 => Value::Text(array.as_string::<i32>().value(i).to_string()),
            ArrowType::Date32 => Value::Date(array.as_primitive::<Date32Type>().value(i)),
            ArrowType::Boolean => Value::Bool(array.as_boolean().value(i)),
            ArrowType::Null => Value::Null,
            other => return Err(Error::Internal(format!("unsupported arrow type {other}"))),
        })
    }

    /// An Arrow array of `n` copies of this value; NULL becomes an array of `t`
    /// (or Arrow's Null type when `t` is `None`).
    pub fn to_array(&self, n: usize, t: Option<DataType>) -> ArrayRef {
        use arrow_array::*;
        match self {
            Value::Null => match t {
                Some(t) => arrow_array::new_null_array(&t.to_arrow(), n),
                None => Arc::new(NullArray::new(n)),
            },
            Value::Int(v) => Arc::new(Int32Array::from_value(*v, n)),
            Value::BigInt(v) => Arc::new(Int64Array::from_value(*v, n)),
            Value::Double(v) => Arc::new(Float64Array::from_value(*v, n)),
            Value::Text(s) => Arc::new(StringArray::from_iter_values(std::iter::repeat_n(s, n))),
            Value::Date(d) => Arc::new(Date32Array::from_value(*d, n)),
            Value::Bool(b) => Arc::new(BooleanArray::from(vec![*b; n])),
        }
    }
}

/// Builds an Arrow array of type `t` from values that already have exactly type `t`
/// (or are NULL).
pub(crate) fn values_to_array<'a>(
    t: DataType,
    values: impl ExactSizeIterator<Item = &'a Value>,
) -> Result<ArrayRef> {
    let n = values.len();
    let wrong = |v: &Value| Error::Internal(format!("value {v:?} is not of type {t}"));
    macro_rules! build {
        ($builder:expr, $variant:ident, |$x:ident| $conv:expr) => {{
            let mut b = $builder;
            for v in values {
                match v {
                    Value::Null => b.append_null(),
                    Value::$variant($x) => b.append_value($conv),
                    other => return Err(wrong(other)),
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match t {
        DataType::Int => build!(Int32Builder::with_capacity(n), Int, |x| *x),
        DataType::BigInt => build!(Int64Builder::with_capacity(n), BigInt, |x| *x),
        DataType::Double => build!(Float64Builder::with_capacity(n), Double, |x| *x),
        DataType::Text => build!(StringBuilder::with_capacity(n, n * 8), Text, |x| x.as_str()),
        DataType::Date => build!(Date32Builder::with_capacity(n), Date, |x| *x),
        DataType::Boolean => build!(BooleanBuilder::with_capacity(n), Bool, |x| *x),
    })
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(v) => write!(f, "{v}"),
            Value::BigInt(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::Text(s) => write!(f, "'{}'", s.replace('\'', "''")),
            Value::Date(d) => write!(f, "DATE '{}'", format_date(*d)),
            Value::Bool(b) => f.write_str(if *b { "TRUE" } else { "FALSE" }),
        }
    }
}

/// Parses a boolean the way PostgreSQL does (`t`, `true`, `yes`, `on`, `1`, ...).
pub(crate) fn parse_bool(s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "t" | "true" | "y" | "yes" | "on" | "1" => Ok(true),
        "f" | "false" | "n" | "no" | "off" | "0" => Ok(false),
        _ => Err(Error::InvalidValue(format!(
            "invalid input syntax for type BOOLEAN: {s:?}"
        ))),
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// (year, month, day) of a day number (days since 1970-01-01).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `YYYY-MM-DD` (validating month and day) into days since 1970-01-01.
pub fn parse_date(s: &str) -> Result<i32> {
    let bad = || Error::InvalidValue(format!("invalid input syntax for type DATE: {s:?}"));
    let t = s.trim();
    let mut parts = t.splitn(3, '-');
    let (y, m, d) = (
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
        parts.next().ok_or_else(bad)?,
    );
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if !digits(y) || !digits(m) || !digits(d) || y.len() > 6 || m.len() > 2 || d.len() > 2 {
        return Err(bad());
    }
    let (y, m, d): (i64, u32, u32) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mdays = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d == 0 || d > mdays[m as usize - 1] {
        return Err(bad());
    }
    i32::try_from(days_from_civil(y, m, d)).map_err(|_| bad())
}

/// Formats days since 1970-01-01 as `YYYY-MM-DD`.
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_types() {
        for (s, t) in [
            ("int", DataType::Int),
            ("INTEGER", DataType::Int),
            ("int4", DataType::Int),
            ("SmallInt", DataType::Int),
            ("int8", DataType::BigInt),
            ("BIGINT", DataType::BigInt),
            ("real", DataType::Double),
            ("float", DataType::Double),
            ("FLOAT8", DataType::Double),
            ("double", DataType::Double),
            ("double   precision", DataType::Double),
            ("text", DataType::Text),
            ("varchar", DataType::Text),
            ("VARCHAR(20)", DataType::Text),
            ("char(3)", DataType::Text),
            ("character varying(5)", DataType::Text),
            ("string", DataType::Text),
            ("date", DataType::Date),
            ("bool", DataType::Boolean),
            ("BOOLEAN", DataType::Boolean),
        ] {
            assert_eq!(parse_type(s).unwrap(), t, "{s}");
        }
        for s in ["blob", "varchar(", "varchar(x)", "int(3)", "", "date(1)"] {
            assert!(matches!(parse_type(s), Err(Error::UnknownType(_))), "{s}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-01").unwrap(), 0);
        assert_eq!(parse_date("2000-03-01").unwrap(), 11017);
        assert_eq!(parse_date("1969-12-31").unwrap(), -1);
        assert!(parse_date("2001-02-29").is_err());
        assert!(parse_date("2000-02-29").is_ok());
        assert!(parse_date("2000-13-01").is_err());
        assert!(parse_date("hello").is_err());
        for d in [-600_000, -1, 0, 1, 11017, 20000, 2_000_000] {
            assert_eq!(parse_date(&format_date(d)).unwrap(), d);
        }
    }

    #[test]
    fn value_semantics() {
        assert_eq!(
            Value::Int(3).sql_cmp(&Value::BigInt(3)),
            Some(Ordering::Equal)
        );
        assert_eq!(
            Value::Int(3).sql_cmp(&Value::Double(3.5)),
            Some(Ordering::Less)
        );
        assert_eq!(Value::Double(-0.0).sql_eq(&Value::Double(0.0)), Some(true));
        assert_eq!(Value::Null.sql_eq(&Value::Null), None);
        assert_eq!(Value::Text("a".into()).sql_cmp(&Value::Int(1)), None);
        assert_eq!(
            Value::Int(5).coerce_to(DataType::Double).unwrap(),
            Value::Double(5.0)
        );
        assert_eq!(
            Value::Text("2024-02-29".into())
                .coerce_to(DataType::Date)
                .unwrap(),
            Value::Date(parse_date("2024-02-29").unwrap())
        );
        assert!(matches!(
            Value::BigInt(1 << 40).coerce_to(DataType::Int),
            Err(Error::Overflow(_))
        ));
        assert!(matches!(
            Value::Double(1.5).coerce_to(DataType::Int),
            Err(Error::InvalidValue(_))
        ));
        assert!(matches!(
            Value::Bool(true).coerce_to(DataType::Int),
            Err(Error::TypeMismatch(_))
        ));
        assert_eq!(
            Value::Text("yes".into())
                .coerce_to(DataType::Boolean)
                .unwrap(),
            Value::Bool(true)
        );
    }
}
