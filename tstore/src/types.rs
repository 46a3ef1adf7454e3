//! SQL column types with PostgreSQL's names, table schemas, and the coercion of
//! incoming batches (INSERT, COPY, UPDATE) to a table's types.
//!
//! | SQL type | Arrow storage |
//! |---|---|
//! | `SMALLINT` | `Int16` |
//! | `INTEGER` | `Int32` |
//! | `BIGINT` | `Int64` |
//! | `REAL` | `Float32` |
//! | `DOUBLE PRECISION` | `Float64` |
//! | `NUMERIC(p,s)` / `DECIMAL(p,s)` | `Decimal128(p,s)` (exact; `NUMERIC` alone is `(38,10)`) |
//! | `CHAR(n)`, `VARCHAR(n)`, `TEXT` | `Utf8` (the length is checked on write) |
//! | `DATE` | `Date32` |
//! | `TIMESTAMP` | `Timestamp(Microsecond, None)` |
//! | `BOOLEAN` | `Boolean` |
//!
//! `CHAR(n)` values are stored without trailing blanks, which PostgreSQL treats as
//! insignificant for `CHAR` (comparisons, `length`, casts to text); the Arrow field of
//! a `CHAR(n)` or `VARCHAR(n)` column carries its declared type in the metadata key
//! [`PG_TYPE_KEY`] so that the wire protocol can report it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::{DataType as ArrowType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Arrow field metadata key holding the declared PostgreSQL type of a `CHAR(n)` or
/// `VARCHAR(n)` column (`bpchar(10)`, `varchar(25)`).
pub const PG_TYPE_KEY: &str = "smrdb.pgtype";

/// Largest precision of `NUMERIC(p,s)` (Arrow `Decimal128`).
pub const MAX_NUMERIC_PRECISION: u8 = 38;

/// A column type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SqlType {
    /// `SMALLINT` (`INT2`).
    SmallInt,
    /// `INTEGER` (`INT`, `INT4`).
    Integer,
    /// `BIGINT` (`INT8`).
    BigInt,
    /// `REAL` (`FLOAT4`).
    Real,
    /// `DOUBLE PRECISION` (`FLOAT8`, `FLOAT`).
    Double,
    /// `NUMERIC(precision, scale)` / `DECIMAL(precision, scale)`.
    Numeric {
        /// Total digits, 1..=38.
        precision: u8,
        /// Digits after the point, 0..=precision.
        scale: i8,
    },
    /// `CHAR(n)` (`CHARACTER(n)`, `BPCHAR`).
    Char(u32),
    /// `VARCHAR(n)` (`CHARACTER VARYING(n)`); `None` is unbounded.
    Varchar(Option<u32>),
    /// `TEXT`.
    Text,
    /// `DATE`.
    Date,
    /// `TIMESTAMP` (without time zone), microseconds.
    Timestamp,
    /// `BOOLEAN`.
    Boolean,
}

impl SqlType {
    /// The Arrow type a column of this type is stored as.
    pub fn arrow(self) -> ArrowType {
        match self {
            SqlType::SmallInt => ArrowType::Int16,
            SqlType::Integer => ArrowType::Int32,
            SqlType::BigInt => ArrowType::Int64,
            SqlType::Real => ArrowType::Float32,
            SqlType::Double => ArrowType::Float64,
            SqlType::Numeric { precision, scale } => ArrowType::Decimal128(precision, scale),
            SqlType::Char(_) | SqlType::Varchar(_) | SqlType::Text => ArrowType::Utf8,
            SqlType::Date => ArrowType::Date32,
            SqlType::Timestamp => ArrowType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::Boolean => ArrowType::Boolean,
        }
    }

    /// The SQL type of a query result column of Arrow type `t` (for `CREATE TABLE AS`
    /// style uses and tests); `None` for Arrow types no column can have.
    pub fn from_arrow(t: &ArrowType) -> Option<SqlType> {
        Some(match t {
            ArrowType::Int8 | ArrowType::Int16 | ArrowType::UInt8 => SqlType::SmallInt,
            ArrowType::Int32 | ArrowType::UInt16 => SqlType::Integer,
            ArrowType::Int64 | ArrowType::UInt32 => SqlType::BigInt,
            ArrowType::Float16 | ArrowType::Float32 => SqlType::Real,
            ArrowType::Float64 => SqlType::Double,
            ArrowType::Decimal128(p, s) => SqlType::Numeric {
                precision: *p,
                scale: *s,
            },
            ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View => SqlType::Text,
            ArrowType::Date32 => SqlType::Date,
            ArrowType::Timestamp(_, None) => SqlType::Timestamp,
            ArrowType::Boolean => SqlType::Boolean,
            _ => return None,
        })
    }

    /// Checks the type's parameters (`NUMERIC` precision and scale, lengths).
    ///
    /// # Errors
    /// [`Error::InvalidValue`] naming the bad parameter, as PostgreSQL words it.
    pub fn validate(self) -> Result<SqlType> {
        match self {
            SqlType::Numeric { precision, scale } => {
                if precision == 0 || precision > MAX_NUMERIC_PRECISION {
                    return Err(Error::InvalidValue(format!(
                        "NUMERIC precision {precision} must be between 1 and {MAX_NUMERIC_PRECISION}"
                    )));
                }
                if scale < 0 || scale as u8 > precision {
                    return Err(Error::InvalidValue(format!(
                        "NUMERIC scale {scale} must be between 0 and precision {precision}"
                    )));
                }
            }
            SqlType::Char(0) | SqlType::Varchar(Some(0)) => {
                return Err(Error::InvalidValue(format!(
                    "length for type {} must be at least 1",
                    if matches!(self, SqlType::Char(_)) {
                        "character"
                    } else {
                        "varchar"
                    }
                )))
            }
            _ => {}
        }
        Ok(self)
    }

    /// True for the integer, floating point and numeric types.
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            SqlType::SmallInt
                | SqlType::Integer
                | SqlType::BigInt
                | SqlType::Real
                | SqlType::Double
                | SqlType::Numeric { .. }
        )
    }

    /// The PostgreSQL name of a `CHAR(n)` / `VARCHAR(n)` (what [`PG_TYPE_KEY`]
    /// holds); `None` for the other types.
    pub fn pg_char_type(self) -> Option<String> {
        match self {
            SqlType::Char(n) => Some(format!("bpchar({n})")),
            SqlType::Varchar(Some(n)) => Some(format!("varchar({n})")),
            SqlType::Varchar(None) => Some("varchar".into()),
            _ => None,
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::SmallInt => f.write_str("SMALLINT"),
            SqlType::Integer => f.write_str("INTEGER"),
            SqlType::BigInt => f.write_str("BIGINT"),
            SqlType::Real => f.write_str("REAL"),
            SqlType::Double => f.write_str("DOUBLE PRECISION"),
            SqlType::Numeric { precision, scale } => write!(f, "NUMERIC({precision},{scale})"),
            SqlType::Char(n) => write!(f, "CHAR({n})"),
            SqlType::Varchar(Some(n)) => write!(f, "VARCHAR({n})"),
            SqlType::Varchar(None) => f.write_str("VARCHAR"),
            SqlType::Text => f.write_str("TEXT"),
            SqlType::Date => f.write_str("DATE"),
            SqlType::Timestamp => f.write_str("TIMESTAMP"),
            SqlType::Boolean => f.write_str("BOOLEAN"),
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name.
    pub name: String,
    /// Column type.
    pub ty: SqlType,
    /// Whether NULL is allowed.
    pub nullable: bool,
}

impl ColumnDef {
    /// A column definition.
    pub fn new(name: impl Into<String>, ty: SqlType, nullable: bool) -> Self {
        ColumnDef {
            name: name.into(),
            ty,
            nullable,
        }
    }

    /// The Arrow field of this column.
    pub fn field(&self) -> Field {
        let f = Field::new(&self.name, self.ty.arrow(), self.nullable);
        match self.ty.pg_char_type() {
            Some(t) => f.with_metadata(HashMap::from([(PG_TYPE_KEY.to_string(), t)])),
            None => f,
        }
    }
}

/// A table's schema: ordered columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableSchema {
    /// The columns, in storage order.
    pub columns: Vec<ColumnDef>,
}

impl TableSchema {
    /// A schema from column definitions.
    pub fn new(columns: Vec<ColumnDef>) -> Self {
        TableSchema { columns }
    }

    /// Index of the column called `name` (exact match).
    ///
    /// # Errors
    /// [`Error::UnknownColumn`].
    pub fn index_of(&self, name: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| Error::UnknownColumn(name.to_string()))
    }

    /// Column `i`.
    ///
    /// # Errors
    /// [`Error::UnknownColumn`].
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
                .map(ColumnDef::field)
                .collect::<Vec<_>>(),
        ))
    }

    /// Checks names (non-empty, distinct) and type parameters.
    ///
    /// # Errors
    /// [`Error::TypeMismatch`] for duplicate or missing columns, the type's error
    /// for bad parameters.
    pub fn validate(&self) -> Result<()> {
        if self.columns.is_empty() {
            return Err(Error::TypeMismatch(
                "a table needs at least one column".into(),
            ));
        }
        for (i, c) in self.columns.iter().enumerate() {
            if c.name.is_empty() {
                return Err(Error::TypeMismatch("a column without a name".into()));
            }
            if self.columns[..i].iter().any(|d| d.name == c.name) {
                return Err(Error::TypeMismatch(format!(
                    "column \"{}\" specified more than once",
                    c.name
                )));
            }
            c.ty.validate()?;
        }
        Ok(())
    }
}

/// Casts one incoming column to the column type `def` with PostgreSQL's rules for
/// storing a value: integers and numerics are range checked (22003), numerics are
/// rounded half away from zero to the column's scale, text is parsed as the type's
/// input syntax (22P02; booleans accept PostgreSQL's spellings `t`/`yes`/`on`/`1`...),
/// `CHAR(n)` / `VARCHAR(n)` values longer than `n` fail (22001) unless the excess is
/// blanks, which are cut (`CHAR` values are stored without trailing blanks), and NULL
/// in a NOT NULL column fails (23502).
///
/// # Errors
/// As above, naming the column.
pub fn coerce_column(def: &ColumnDef, col: &ArrayRef) -> Result<ArrayRef> {
    let target = def.ty.arrow();
    let out = if col.data_type() == &target {
        col.clone()
    } else if matches!(
        col.data_type(),
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View
    ) && def.ty == SqlType::Boolean
    {
        parse_bools(def, col)?
    } else {
        let opts = CastOptions {
            safe: false,
            ..Default::default()
        };
        cast_with_options(col, &target, &opts).map_err(|e| cast_error(def, col, e))?
    };
    if !def.nullable && out.null_count() > 0 {
        return Err(Error::NullViolation(def.name.clone()));
    }
    match def.ty {
        SqlType::Char(n) => limit_length(def, &out, n, true),
        SqlType::Varchar(Some(n)) => limit_length(def, &out, n, false),
        SqlType::Numeric { precision, .. } => {
            let d = out.as_primitive::<arrow_array::types::Decimal128Type>();
            d.validate_decimal_precision(precision).map_err(|_| {
                Error::Overflow(format!(
                    "a value of column \"{}\" does not fit {}",
                    def.name, def.ty
                ))
            })?;
            Ok(out)
        }
        _ => Ok(out),
    }
}

/// Casts every column of `batch` to `schema`'s types ([`coerce_column`]).
///
/// # Errors
/// [`Error::Arity`] for a batch of another width, else as [`coerce_column`].
pub fn coerce_batch(schema: &TableSchema, batch: &RecordBatch) -> Result<RecordBatch> {
    if batch.num_columns() != schema.columns.len() {
        return Err(Error::Arity {
            expected: schema.columns.len(),
            got: batch.num_columns(),
        });
    }
    let cols = schema
        .columns
        .iter()
        .zip(batch.columns())
        .map(|(d, c)| coerce_column(d, c))
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new_with_options(
        schema.to_arrow(),
        cols,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )?)
}

fn cast_error(def: &ColumnDef, col: &ArrayRef, e: arrow_schema::ArrowError) -> Error {
    let msg = e.to_string();
    let from_text = matches!(
        col.data_type(),
        ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View
    );
    let out_of_range = msg.contains("too large")
        || msg.contains("too small")
        || msg.contains("overflow")
        || msg.contains("Overflow")
        || msg.contains("out of range")
        || (!from_text && msg.contains("Can't cast value"));
    if out_of_range {
        Error::Overflow(format!(
            "a value of column \"{}\" is out of range for type {}",
            def.name, def.ty
        ))
    } else if from_text {
        let bad = first_bad_text(col, &def.ty.arrow()).unwrap_or_default();
        Error::InvalidValue(format!(
            "invalid input syntax for type {}: \"{bad}\" (column \"{}\")",
            def.ty, def.name
        ))
    } else {
        Error::TypeMismatch(format!(
            "column \"{}\" is of type {} but the value is of type {}",
            def.name,
            def.ty,
            col.data_type()
        ))
    }
}

/// The first text value of `col` that does not cast to `target` (for messages).
fn first_bad_text(col: &ArrayRef, target: &ArrowType) -> Option<String> {
    let s = cast_with_options(col, &ArrowType::Utf8, &CastOptions::default()).ok()?;
    let s = s.as_string::<i32>();
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    (0..s.len()).find_map(|i| {
        if s.is_null(i) {
            return None;
        }
        let one: ArrayRef = Arc::new(StringArray::from(vec![s.value(i)]));
        cast_with_options(&one, target, &opts)
            .is_err()
            .then(|| s.value(i).to_string())
    })
}

fn parse_bools(def: &ColumnDef, col: &ArrayRef) -> Result<ArrayRef> {
    let s = cast_with_options(col, &ArrowType::Utf8, &CastOptions::default())?;
    let s = s.as_string::<i32>();
    let mut out = arrow_array::builder::BooleanBuilder::with_capacity(s.len());
    for i in 0..s.len() {
        if s.is_null(i) {
            out.append_null();
            continue;
        }
        let v = s.value(i);
        out.append_value(parse_bool(v).ok_or_else(|| {
            Error::InvalidValue(format!(
                "invalid input syntax for type boolean: \"{v}\" (column \"{}\")",
                def.name
            ))
        })?);
    }
    Ok(Arc::new(out.finish()))
}

/// Parses a boolean the way PostgreSQL does (`t`, `true`, `yes`, `on`, `1`, unique
/// prefixes of `true`/`false`/`yes`/`no`, case-insensitive, blanks around allowed).
pub fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim().to_ascii_lowercase();
    let prefix_of = |w: &str| !t.is_empty() && w.starts_with(t.as_str());
    if t == "1" || prefix_of("true") || prefix_of("yes") || (t.len() >= 2 && prefix_of("on")) {
        Some(true)
    } else if t == "0"
        || prefix_of("false")
        || prefix_of("no")
        || (t.len() >= 2 && prefix_of("off"))
    {
        Some(false)
    } else {
        None
    }
}

/// Enforces a `CHAR(n)` / `VARCHAR(n)` length: a longer value fails unless the excess
/// is blanks, which are cut; `CHAR` values also lose their trailing blanks.
fn limit_length(def: &ColumnDef, col: &ArrayRef, n: u32, is_char: bool) -> Result<ArrayRef> {
    let s = col.as_string::<i32>();
    let n = n as usize;
    let needs_change = (0..s.len()).any(|i| {
        if s.is_null(i) {
            return false;
        }
        let v = s.value(i);
        (is_char && v.ends_with(' ')) || v.len() > n && v.chars().count() > n
    });
    if !needs_change {
        return Ok(col.clone());
    }
    let mut out = arrow_array::builder::StringBuilder::with_capacity(s.len(), s.values().len());
    for i in 0..s.len() {
        if s.is_null(i) {
            out.append_null();
            continue;
        }
        let v = s.value(i);
        let mut kept = v;
        if v.chars().count() > n {
            let cut: usize = v.char_indices().nth(n).map(|(b, _)| b).unwrap_or(v.len());
            if v[cut..].bytes().any(|b| b != b' ') {
                return Err(Error::StringTooLong(format!(
                    "value too long for type {} (column \"{}\")",
                    if is_char {
                        format!("character({n})")
                    } else {
                        format!("character varying({n})")
                    },
                    def.name
                )));
            }
            kept = &v[..cut];
        }
        if is_char {
            kept = kept.trim_end_matches(' ');
        }
        out.append_value(kept);
    }
    Ok(Arc::new(out.finish()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Int64Array, StringArray};

    fn text(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    #[test]
    fn text_input_is_parsed_with_postgres_rules() {
        let b = ColumnDef::new("b", SqlType::Boolean, true);
        let got = coerce_column(&b, &text(&[Some("t"), Some(" YES "), Some("off"), None])).unwrap();
        let got = got.as_boolean();
        assert!(got.value(0) && got.value(1) && !got.value(2) && got.is_null(3));
        assert!(coerce_column(&b, &text(&[Some("maybe")])).is_err());

        let d = ColumnDef::new(
            "d",
            SqlType::Numeric {
                precision: 5,
                scale: 2,
            },
            true,
        );
        let got = coerce_column(&d, &text(&[Some("1.005"), Some("-2.5")])).unwrap();
        let got = got.as_primitive::<arrow_array::types::Decimal128Type>();
        assert_eq!(got.value(1), -250);
        assert!(matches!(
            coerce_column(&d, &text(&[Some("12345.6")])),
            Err(Error::Overflow(_))
        ));
        let i = ColumnDef::new("i", SqlType::Integer, true);
        assert!(matches!(
            coerce_column(&i, &text(&[Some("x1")])),
            Err(Error::InvalidValue(m)) if m.contains("\"x1\"")
        ));
        let big: ArrayRef = Arc::new(Int64Array::from(vec![1i64 << 40]));
        assert!(matches!(coerce_column(&i, &big), Err(Error::Overflow(_))));
    }

    #[test]
    fn char_lengths_and_not_null() {
        let c = ColumnDef::new("c", SqlType::Char(3), false);
        let got = coerce_column(&c, &text(&[Some("ab "), Some("abc   ")])).unwrap();
        let got = got.as_string::<i32>();
        assert_eq!((got.value(0), got.value(1)), ("ab", "abc"));
        assert!(matches!(
            coerce_column(&c, &text(&[Some("abcd")])),
            Err(Error::StringTooLong(_))
        ));
        assert!(matches!(
            coerce_column(&c, &text(&[None])),
            Err(Error::NullViolation(_))
        ));
        let v = ColumnDef::new("v", SqlType::Varchar(Some(2)), true);
        let got = coerce_column(&v, &text(&[Some("é "), Some("xy  ")])).unwrap();
        assert_eq!(got.as_string::<i32>().value(1), "xy");
        assert!(coerce_column(&v, &text(&[Some("éèà")])).is_err());
    }

    #[test]
    fn numeric_overflow_is_out_of_range_on_both_sides() {
        // Expect: 22003 for a value too large and for one too small (arrow words the
        // two differently).
        let d = ColumnDef::new(
            "d",
            SqlType::Numeric {
                precision: 5,
                scale: 2,
            },
            true,
        );
        for v in [100_000i128, -100_000] {
            let wide: ArrayRef = Arc::new(
                arrow_array::Decimal128Array::from(vec![v])
                    .with_precision_and_scale(6, 2)
                    .unwrap(),
            );
            assert!(
                matches!(coerce_column(&d, &wide), Err(Error::Overflow(_))),
                "{v}"
            );
        }
        for v in ["999.995", "-999.995"] {
            assert!(
                matches!(
                    coerce_column(&d, &text(&[Some(v)])),
                    Err(Error::Overflow(_))
                ),
                "{v}"
            );
        }
    }

    #[test]
    fn booleans_parse_like_postgres() {
        for s in ["t", "tr", "TRUE", "y", "yes", "on", "1"] {
            assert_eq!(parse_bool(s), Some(true), "{s}");
        }
        for s in ["f", "fal", "no", "n", "off", "0"] {
            assert_eq!(parse_bool(s), Some(false), "{s}");
        }
        for s in ["", "o", "2", "nope"] {
            assert_eq!(parse_bool(s), None, "{s}");
        }
    }
}
