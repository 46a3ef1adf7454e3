//! Values on the Postgres wire, as PostgreSQL 15 sends and reads them.
//!
//! Results: [`pg_type`] gives the PostgreSQL type (OID, type modifier, width) of an
//! Arrow result column, [`text_value`] one value's text form and [`encode_rows`] whole
//! DataRow bodies in text or binary format (the formats of PostgreSQL's output and send
//! functions, with the server parameters smrdb reports: `DateStyle` `ISO, MDY`,
//! `IntervalStyle` `postgres`, `TimeZone` UTC, `bytea_output` hex).
//!
//! | Arrow type | PostgreSQL type |
//! | --- | --- |
//! | Int8, Int16, UInt8 | int2 (21) |
//! | Int32, UInt16 | int4 (23) |
//! | Int64, UInt32, UInt64 (above `i64::MAX`: error 22003) | int8 (20) |
//! | Float16, Float32 | float4 (700) |
//! | Float64 | float8 (701) |
//! | Decimal32/64/128/256(p, s) | numeric(p, s) (1700) |
//! | Utf8, LargeUtf8, Utf8View | text (25), or bpchar(n) (1042) / varchar(n) (1043) by the field's [`PGTYPE_KEY`] metadata |
//! | Binary, LargeBinary, BinaryView, FixedSizeBinary | bytea (17) |
//! | Date32 | date (1082) |
//! | Timestamp(_, None) | timestamp (1114) |
//! | Timestamp(_, Some(_)) | timestamptz (1184) |
//! | Interval(_) | interval (1186) |
//! | Boolean | bool (16) |
//! | Null | text (25), every value NULL |
//!
//! Any other Arrow type is an error 0A000 naming it.
//!
//! Parameters: [`param_literal`] turns a parameter of the extended protocol, in text or
//! binary format, into a typed SQL literal, with the parsers it uses ([`parse_int`],
//! [`parse_float`], [`parse_numeric`], [`numeric_from_binary`], [`parse_bool`],
//! [`parse_date`], [`parse_timestamp`], [`parse_interval`]).

use std::io::Write as _;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Decimal128Type, Decimal256Type, Decimal32Type, Decimal64Type, DecimalType,
    Float16Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    IntervalDayTimeType, IntervalMonthDayNanoType, IntervalYearMonthType, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrowPrimitiveType, RecordBatch};
use arrow_schema::{DataType as ArrowType, Field, IntervalUnit, TimeUnit};
use pgwire::api::Type;

use crate::error::{Error, Result};
use crate::sqltext::quote_literal as quote;

/// Days from 1970-01-01 to 2000-01-01 (the Postgres binary date epoch).
pub const PG_EPOCH_DAYS: i32 = 10_957;

/// Microseconds from 1970-01-01 to 2000-01-01 (the Postgres binary timestamp epoch).
pub const PG_EPOCH_MICROS: i64 = PG_EPOCH_DAYS as i64 * MICROS_PER_DAY;

/// The Arrow field metadata key naming the PostgreSQL type of a string column:
/// `bpchar(n)`, `varchar(n)`, `bpchar`, `varchar` or `text` (also spelled `char(n)`,
/// `character(n)`, `character varying(n)`; any case).
pub const PGTYPE_KEY: &str = "smrdb.pgtype";

const MICROS_PER_DAY: i64 = 86_400_000_000;
const MICROS_PER_HOUR: i64 = 3_600_000_000;
const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_SECOND: i64 = 1_000_000;

/// The first valid date, in days since 2000-01-01 (4714-11-24 BC, Julian day 0).
const PG_MIN_DATE: i64 = -2_451_545;
/// One past the last valid date, in days since 2000-01-01 (5874898-01-01).
const PG_END_DATE: i64 = 2_145_031_949;
/// The first valid timestamp, in microseconds since 2000-01-01 (4714-11-24 00:00 BC).
const PG_MIN_TIMESTAMP: i64 = -211_813_488_000_000_000;
/// One past the last valid timestamp, in microseconds since 2000-01-01 (294277-01-01).
const PG_END_TIMESTAMP: i64 = 9_223_371_331_200_000_000;

/// The largest `n` of `varchar(n)` / `bpchar(n)` (PostgreSQL's `MaxAttrSize`).
const MAX_CHAR_LEN: i32 = 10_485_760;

// ---------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------

/// The PostgreSQL type a result column is sent as: what RowDescription says of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// The type's OID (`pg_type.oid`), e.g. 1700 for numeric.
    pub oid: u32,
    /// The type modifier (`pg_attribute.atttypmod`): `((p << 16) | s) + 4` for
    /// numeric(p, s), `n + 4` for bpchar(n) / varchar(n), -1 for none.
    pub typmod: i32,
    /// The type's width (`pg_type.typlen`): bytes of a fixed-width type, -1 for a
    /// variable-width one.
    pub typlen: i16,
    /// The pgwire type.
    pub ty: Type,
}

impl PgType {
    /// `ty` with type modifier `typmod` (-1 for none), and its `typlen`.
    pub fn new(ty: Type, typmod: i32) -> PgType {
        let typlen = match ty.oid() {
            16 => 1,
            21 => 2,
            23 | 700 | 1082 => 4,
            20 | 701 | 1114 | 1184 => 8,
            1186 => 16,
            _ => -1,
        };
        PgType {
            oid: ty.oid(),
            typmod,
            typlen,
            ty,
        }
    }
}

fn unsupported(field: &Field) -> Error {
    Error::sql(
        "0A000",
        format!(
            "column \"{}\" has Arrow type {}, which has no PostgreSQL type",
            field.name(),
            field.data_type()
        ),
    )
}

/// The PostgreSQL type of a result column (see the module's table).
///
/// # Errors
/// 0A000 for an Arrow type without a PostgreSQL type (lists, structs, maps, unions,
/// times, durations, dictionaries, ...); XX000 for unreadable [`PGTYPE_KEY`] metadata.
pub fn pg_type(field: &Field) -> Result<PgType> {
    use ArrowType as A;
    Ok(match field.data_type() {
        A::Boolean => PgType::new(Type::BOOL, -1),
        A::Int8 | A::Int16 | A::UInt8 => PgType::new(Type::INT2, -1),
        A::Int32 | A::UInt16 => PgType::new(Type::INT4, -1),
        A::Int64 | A::UInt32 | A::UInt64 => PgType::new(Type::INT8, -1),
        A::Float16 | A::Float32 => PgType::new(Type::FLOAT4, -1),
        A::Float64 => PgType::new(Type::FLOAT8, -1),
        A::Decimal32(p, s) | A::Decimal64(p, s) | A::Decimal128(p, s) | A::Decimal256(p, s) => {
            // PostgreSQL's make_numeric_typmod (the scale's low 11 bits: PostgreSQL 15
            // allows a negative scale).
            let typmod = ((i32::from(*p) << 16) | (i32::from(*s) & 0x7ff)) + 4;
            PgType::new(Type::NUMERIC, typmod)
        }
        A::Utf8 | A::LargeUtf8 | A::Utf8View => match field.metadata().get(PGTYPE_KEY) {
            Some(v) => string_type(v)?,
            None => PgType::new(Type::TEXT, -1),
        },
        A::Null => PgType::new(Type::TEXT, -1),
        A::Binary | A::LargeBinary | A::BinaryView | A::FixedSizeBinary(_) => {
            PgType::new(Type::BYTEA, -1)
        }
        A::Date32 => PgType::new(Type::DATE, -1),
        A::Timestamp(_, None) => PgType::new(Type::TIMESTAMP, -1),
        A::Timestamp(_, Some(_)) => PgType::new(Type::TIMESTAMPTZ, -1),
        A::Interval(_) => PgType::new(Type::INTERVAL, -1),
        _ => return Err(unsupported(field)),
    })
}

/// The string type named by [`PGTYPE_KEY`] metadata.
fn string_type(v: &str) -> Result<PgType> {
    let bad = || {
        Error::sql(
            "XX000",
            format!("unknown PostgreSQL type {v:?} in field metadata {PGTYPE_KEY}"),
        )
    };
    let norm = v.trim().to_ascii_lowercase();
    let (name, len) = match norm.split_once('(') {
        Some((name, rest)) => {
            let n = rest.strip_suffix(')').ok_or_else(bad)?.trim();
            let n: i32 = n.parse().map_err(|_| bad())?;
            if !(1..=MAX_CHAR_LEN).contains(&n) {
                return Err(bad());
            }
            (name.trim().to_string(), Some(n))
        }
        None => (norm, None),
    };
    let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
    let ty = match name.as_str() {
        "bpchar" | "char" | "character" => Type::BPCHAR,
        "varchar" | "character varying" => Type::VARCHAR,
        "text" if len.is_none() => Type::TEXT,
        _ => return Err(bad()),
    };
    Ok(PgType::new(ty, len.map_or(-1, |n| n + 4)))
}

// ---------------------------------------------------------------------------------
// Encoding results
// ---------------------------------------------------------------------------------

/// Writes the value at a row of one column (never a NULL one).
type Put<'a> = Box<dyn Fn(usize, &mut Vec<u8>) -> Result<()> + 'a>;

fn timestamp_out_of_range() -> Error {
    Error::sql("22008", "timestamp out of range")
}

fn date_out_of_range() -> Error {
    Error::sql("22008", "date out of range")
}

/// The writer of `col`'s values as `ty`, in binary or text format.
fn encoder<'a>(col: &'a dyn Array, ty: &PgType, binary: bool) -> Result<Put<'a>> {
    use ArrowType as A;
    let width = ty.typlen;
    Ok(match col.data_type() {
        A::Null => Box::new(|_, _| Ok(())),
        A::Boolean => {
            let a = col.as_boolean();
            Box::new(move |i, out| {
                let v = a.value(i);
                if binary {
                    out.push(u8::from(v));
                } else {
                    out.push(if v { b't' } else { b'f' });
                }
                Ok(())
            })
        }
        A::Int8 => ints::<Int8Type>(col, width, binary),
        A::Int16 => ints::<Int16Type>(col, width, binary),
        A::Int32 => ints::<Int32Type>(col, width, binary),
        A::Int64 => ints::<Int64Type>(col, width, binary),
        A::UInt8 => ints::<UInt8Type>(col, width, binary),
        A::UInt16 => ints::<UInt16Type>(col, width, binary),
        A::UInt32 => ints::<UInt32Type>(col, width, binary),
        A::UInt64 => {
            let a = col.as_primitive::<UInt64Type>();
            Box::new(move |i, out| {
                let v = i64::try_from(a.value(i))
                    .map_err(|_| Error::sql("22003", "bigint out of range"))?;
                put_int(v, 8, binary, out);
                Ok(())
            })
        }
        A::Float16 => {
            let a = col.as_primitive::<Float16Type>();
            Box::new(move |i, out| {
                put_f32(a.value(i).to_f32(), binary, out);
                Ok(())
            })
        }
        A::Float32 => {
            let a = col.as_primitive::<Float32Type>();
            Box::new(move |i, out| {
                put_f32(a.value(i), binary, out);
                Ok(())
            })
        }
        A::Float64 => {
            let a = col.as_primitive::<Float64Type>();
            Box::new(move |i, out| {
                let v = a.value(i);
                if binary {
                    out.extend(v.to_bits().to_be_bytes());
                } else {
                    out.extend(format_f64(v).as_bytes());
                }
                Ok(())
            })
        }
        A::Decimal32(_, s) => decimals::<Decimal32Type>(col, *s, binary),
        A::Decimal64(_, s) => decimals::<Decimal64Type>(col, *s, binary),
        A::Decimal128(_, s) => decimals::<Decimal128Type>(col, *s, binary),
        A::Decimal256(_, s) => decimals::<Decimal256Type>(col, *s, binary),
        A::Utf8 => {
            let a = col.as_string::<i32>();
            strings(move |i| a.value(i), ty)
        }
        A::LargeUtf8 => {
            let a = col.as_string::<i64>();
            strings(move |i| a.value(i), ty)
        }
        A::Utf8View => {
            let a = col.as_string_view();
            strings(move |i| a.value(i), ty)
        }
        A::Binary => {
            let a = col.as_binary::<i32>();
            bytes(move |i| a.value(i), binary)
        }
        A::LargeBinary => {
            let a = col.as_binary::<i64>();
            bytes(move |i| a.value(i), binary)
        }
        A::BinaryView => {
            let a = col.as_binary_view();
            bytes(move |i| a.value(i), binary)
        }
        A::FixedSizeBinary(_) => {
            let a = col.as_fixed_size_binary();
            bytes(move |i| a.value(i), binary)
        }
        A::Date32 => {
            let a = col.as_primitive::<Date32Type>();
            Box::new(move |i, out| {
                let pg = i64::from(a.value(i)) - i64::from(PG_EPOCH_DAYS);
                if !(PG_MIN_DATE..PG_END_DATE).contains(&pg) {
                    return Err(date_out_of_range());
                }
                if binary {
                    out.extend((pg as i32).to_be_bytes());
                } else {
                    out.extend(format_date(a.value(i)).as_bytes());
                }
                Ok(())
            })
        }
        A::Timestamp(unit, tz) => {
            let tz = tz.is_some();
            let micros: Box<dyn Fn(usize) -> Option<i64> + 'a> = match unit {
                TimeUnit::Second => {
                    let a = col.as_primitive::<TimestampSecondType>();
                    Box::new(move |i| a.value(i).checked_mul(MICROS_PER_SECOND))
                }
                TimeUnit::Millisecond => {
                    let a = col.as_primitive::<TimestampMillisecondType>();
                    Box::new(move |i| a.value(i).checked_mul(1000))
                }
                TimeUnit::Microsecond => {
                    let a = col.as_primitive::<TimestampMicrosecondType>();
                    Box::new(move |i| Some(a.value(i)))
                }
                TimeUnit::Nanosecond => {
                    let a = col.as_primitive::<TimestampNanosecondType>();
                    Box::new(move |i| Some(nanos_to_micros(a.value(i))))
                }
            };
            Box::new(move |i, out| {
                let pg = micros(i)
                    .and_then(|us| us.checked_sub(PG_EPOCH_MICROS))
                    .filter(|pg| (PG_MIN_TIMESTAMP..PG_END_TIMESTAMP).contains(pg))
                    .ok_or_else(timestamp_out_of_range)?;
                if binary {
                    out.extend(pg.to_be_bytes());
                } else {
                    out.extend(format_timestamp(pg, tz).as_bytes());
                }
                Ok(())
            })
        }
        A::Interval(unit) => {
            let get: Box<dyn Fn(usize) -> PgInterval + 'a> = match unit {
                IntervalUnit::YearMonth => {
                    let a = col.as_primitive::<IntervalYearMonthType>();
                    Box::new(move |i| PgInterval {
                        months: a.value(i),
                        days: 0,
                        micros: 0,
                    })
                }
                IntervalUnit::DayTime => {
                    let a = col.as_primitive::<IntervalDayTimeType>();
                    Box::new(move |i| {
                        let v = a.value(i);
                        PgInterval {
                            months: 0,
                            days: v.days,
                            micros: i64::from(v.milliseconds) * 1000,
                        }
                    })
                }
                IntervalUnit::MonthDayNano => {
                    let a = col.as_primitive::<IntervalMonthDayNanoType>();
                    Box::new(move |i| {
                        let v = a.value(i);
                        PgInterval {
                            months: v.months,
                            days: v.days,
                            micros: nanos_to_micros(v.nanoseconds),
                        }
                    })
                }
            };
            Box::new(move |i, out| {
                let v = get(i);
                if binary {
                    out.extend(v.micros.to_be_bytes());
                    out.extend(v.days.to_be_bytes());
                    out.extend(v.months.to_be_bytes());
                } else {
                    out.extend(format_interval(v).as_bytes());
                }
                Ok(())
            })
        }
        other => {
            return Err(unsupported(&Field::new("?", other.clone(), true)));
        }
    })
}

/// Nanoseconds to microseconds, rounded to nearest (ties to even, as PostgreSQL rounds
/// fractional seconds).
fn nanos_to_micros(ns: i64) -> i64 {
    let (q, r) = (ns.div_euclid(1000), ns.rem_euclid(1000));
    if r > 500 || (r == 500 && q % 2 != 0) {
        q + 1
    } else {
        q
    }
}

fn put_int(v: i64, width: i16, binary: bool, out: &mut Vec<u8>) {
    if binary {
        // The value fits: the column's type was chosen wide enough.
        match width {
            2 => out.extend((v as i16).to_be_bytes()),
            4 => out.extend((v as i32).to_be_bytes()),
            _ => out.extend(v.to_be_bytes()),
        }
    } else {
        let _ = write!(out, "{v}");
    }
}

fn ints<'a, T>(col: &'a dyn Array, width: i16, binary: bool) -> Put<'a>
where
    T: ArrowPrimitiveType,
    T::Native: Into<i64>,
{
    let a = col.as_primitive::<T>();
    Box::new(move |i, out| {
        put_int(a.value(i).into(), width, binary, out);
        Ok(())
    })
}

fn put_f32(v: f32, binary: bool, out: &mut Vec<u8>) {
    if binary {
        out.extend(v.to_bits().to_be_bytes());
    } else {
        out.extend(format_f32(v).as_bytes());
    }
}

fn decimals<'a, T>(col: &'a dyn Array, scale: i8, binary: bool) -> Put<'a>
where
    T: DecimalType,
    T::Native: std::fmt::Display,
{
    let a = col.as_primitive::<T>();
    Box::new(move |i, out| {
        let s = a.value(i).to_string();
        let (neg, digits) = match s.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, s.as_str()),
        };
        if binary {
            numeric_send(neg, digits, scale, out);
        } else {
            numeric_text(neg, digits, scale, out);
        }
        Ok(())
    })
}

fn strings<'a>(get: impl Fn(usize) -> &'a str + 'a, ty: &PgType) -> Put<'a> {
    // bpchar(n) values are blank-padded to n characters, as PostgreSQL stores them.
    let pad = (ty.oid == Type::BPCHAR.oid() && ty.typmod >= 4).then(|| (ty.typmod - 4) as usize);
    Box::new(move |i, out| {
        let s = get(i);
        out.extend(s.as_bytes());
        if let Some(n) = pad {
            let len = s.chars().count();
            if len < n {
                out.resize(out.len() + (n - len), b' ');
            }
        }
        Ok(())
    })
}

fn bytes<'a>(get: impl Fn(usize) -> &'a [u8] + 'a, binary: bool) -> Put<'a> {
    Box::new(move |i, out| {
        let b = get(i);
        if binary {
            out.extend(b);
        } else {
            out.extend(b"\\x");
            out.extend(hex::encode(b).as_bytes());
        }
        Ok(())
    })
}

/// Text form of row `row` of `col` (None = NULL), as PostgreSQL prints the column's
/// type (see [`pg_type`]; without field metadata, so strings are text).
///
/// # Errors
/// The column's type has no PostgreSQL type (0A000), or the value does not fit it
/// (22003, 22008).
pub fn text_value(col: &dyn Array, row: usize) -> Result<Option<String>> {
    if col.logical_nulls().is_some_and(|n| n.is_null(row)) || col.data_type().is_null() {
        return Ok(None);
    }
    let ty = pg_type(&Field::new("?column?", col.data_type().clone(), true))?;
    let put = encoder(col, &ty, false)?;
    let mut out = Vec::new();
    put(row, &mut out)?;
    String::from_utf8(out)
        .map(Some)
        .map_err(|e| Error::sql("XX000", format!("non-UTF-8 text: {e}")))
}

/// Encodes every row of `batch` as the body of a Postgres DataRow message (per field:
/// `i32` length or -1 for NULL, then the bytes); `binary[c]` selects binary format for
/// column c (columns past its end are text). Each column is sent as its
/// [`pg_type`], from the batch schema's fields (so field metadata counts).
///
/// # Errors
/// A column without a PostgreSQL type (0A000); a value that does not fit its
/// PostgreSQL type (22003, 22008).
pub fn encode_rows(batch: &RecordBatch, binary: &[bool]) -> Result<Vec<Vec<u8>>> {
    let schema = batch.schema();
    let cols = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .enumerate()
        .map(|(c, (col, field))| {
            let ty = pg_type(field)?;
            let bin = binary.get(c).copied().unwrap_or(false);
            let nulls = if col.data_type().is_null() {
                None
            } else {
                Some(col.logical_nulls())
            };
            Ok((nulls, encoder(col.as_ref(), &ty, bin)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    for r in 0..batch.num_rows() {
        let mut out = Vec::with_capacity(16 * cols.len());
        for (nulls, put) in &cols {
            let null = match nulls {
                None => true, // a Null column
                Some(n) => n.as_ref().is_some_and(|n| n.is_null(r)),
            };
            if null {
                out.extend((-1i32).to_be_bytes());
                continue;
            }
            let at = out.len();
            out.extend(0i32.to_be_bytes());
            put(r, &mut out)?;
            let len = i32::try_from(out.len() - at - 4)
                .map_err(|_| Error::sql("54000", "value too large to send"))?;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        rows.push(out);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------
// Text forms
// ---------------------------------------------------------------------------------

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian; year 0 is
/// 1 BC).
pub fn civil_from_days(z: i32) -> (i64, u32, u32) {
    civil_from_days64(i64::from(z))
}

fn civil_from_days64(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a (year, month, day) (proleptic Gregorian; year 0 is 1 BC).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn year_text(y: i64) -> (i64, bool) {
    if y <= 0 {
        (1 - y, true)
    } else {
        (y, false)
    }
}

/// `YYYY-MM-DD` of a day count since 1970-01-01, `YYYY-MM-DD BC` for years up to 1 BC
/// (PostgreSQL's ISO DateStyle).
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days);
    let (y, bc) = year_text(y);
    format!("{y:04}-{m:02}-{d:02}{}", if bc { " BC" } else { "" })
}

/// Appends `SS[.ffffff]` (fraction only when non-zero, trailing zeros trimmed), as
/// PostgreSQL's AppendSeconds.
fn push_seconds(s: &mut String, sec: i64, micros: i64) {
    use std::fmt::Write as _;
    let _ = write!(s, "{sec:02}");
    if micros != 0 {
        let f = format!("{micros:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
}

/// `YYYY-MM-DD HH:MM:SS[.ffffff]` of microseconds since 2000-01-01 (PostgreSQL's ISO
/// output: fraction only when non-zero, trailing zeros trimmed; `+00` after the time
/// for timestamptz, whose text is in UTC; ` BC` for years up to 1 BC). PostgreSQL's
/// infinities are `i64::MIN` / `i64::MAX`.
pub fn format_timestamp(pg_micros: i64, with_tz: bool) -> String {
    match pg_micros {
        i64::MIN => return "-infinity".into(),
        i64::MAX => return "infinity".into(),
        _ => {}
    }
    let us = i128::from(pg_micros) + i128::from(PG_EPOCH_MICROS);
    let day = us.div_euclid(i128::from(MICROS_PER_DAY)) as i64;
    let t = us.rem_euclid(i128::from(MICROS_PER_DAY)) as i64;
    let (y, m, d) = civil_from_days64(day);
    let (y, bc) = year_text(y);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:",
        t / MICROS_PER_HOUR,
        t % MICROS_PER_HOUR / MICROS_PER_MINUTE
    );
    push_seconds(
        &mut s,
        t % MICROS_PER_MINUTE / MICROS_PER_SECOND,
        t % MICROS_PER_SECOND,
    );
    if with_tz {
        s.push_str("+00");
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

/// A PostgreSQL interval: months, days and microseconds, each signed on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PgInterval {
    /// Months (years are 12 months).
    pub months: i32,
    /// Days.
    pub days: i32,
    /// Microseconds.
    pub micros: i64,
}

/// An interval in PostgreSQL's `postgres` IntervalStyle (`1 year 2 mons 3 days
/// 04:05:06.5`, `-1 days`, `00:00:00`), as its EncodeInterval.
pub fn format_interval(v: PgInterval) -> String {
    use std::fmt::Write as _;
    let year = i64::from(v.months / 12);
    let mon = i64::from(v.months % 12);
    let mday = i64::from(v.days);
    let t = v.micros;
    let hour = t / MICROS_PER_HOUR;
    let min = t % MICROS_PER_HOUR / MICROS_PER_MINUTE;
    let sec = t % MICROS_PER_MINUTE / MICROS_PER_SECOND;
    let fsec = t % MICROS_PER_SECOND;
    let mut s = String::new();
    let mut is_zero = true;
    let mut is_before = false;
    for (value, unit) in [(year, "year"), (mon, "mon"), (mday, "day")] {
        if value == 0 {
            continue;
        }
        let _ = write!(
            s,
            "{}{}{value} {unit}{}",
            if is_zero { "" } else { " " },
            if is_before && value > 0 { "+" } else { "" },
            if value != 1 { "s" } else { "" }
        );
        is_before = value < 0;
        is_zero = false;
    }
    if is_zero || hour != 0 || min != 0 || sec != 0 || fsec != 0 {
        let minus = hour < 0 || min < 0 || sec < 0 || fsec < 0;
        let _ = write!(
            s,
            "{}{}{:02}:{:02}:",
            if is_zero { "" } else { " " },
            if minus {
                "-"
            } else if is_before {
                "+"
            } else {
                ""
            },
            hour.unsigned_abs(),
            min.unsigned_abs()
        );
        push_seconds(&mut s, sec.abs(), fsec.abs());
    }
    s
}

/// A float from Rust's shortest round-trip `{:e}` form, in PostgreSQL's layout: fixed
/// notation for decimal exponents in [-4, `max_exp`), else `d.ddde+XX` (at least two
/// exponent digits), as PostgreSQL's Ryu-based float4out / float8out.
fn float_text(sci: &str, max_exp: i32) -> String {
    let (neg, body) = match sci.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, sci),
    };
    let (mant, exp) = body.split_once('e').unwrap_or((body, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    let mut s = String::with_capacity(digits.len() + 8);
    if neg {
        s.push('-');
    }
    if exp < -4 || exp >= max_exp {
        s.push_str(&digits[..1]);
        if digits.len() > 1 {
            s.push('.');
            s.push_str(&digits[1..]);
        }
        s.push('e');
        s.push(if exp < 0 { '-' } else { '+' });
        s.push_str(&format!("{:02}", exp.unsigned_abs()));
    } else if exp < 0 {
        s.push_str("0.");
        for _ in 0..(-exp - 1) {
            s.push('0');
        }
        s.push_str(&digits);
    } else {
        let int = exp as usize + 1;
        if digits.len() <= int {
            s.push_str(&digits);
            for _ in digits.len()..int {
                s.push('0');
            }
        } else {
            s.push_str(&digits[..int]);
            s.push('.');
            s.push_str(&digits[int..]);
        }
    }
    s
}

/// A float8 as PostgreSQL 15 prints it: shortest round-trip digits, exponent form
/// (`1e+20`, `1e-05`) outside [1e-4, 1e15), `NaN`, `Infinity`, `-Infinity`, `-0`.
pub fn format_f64(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    float_text(&format!("{x:e}"), 15)
}

/// A float4 as PostgreSQL 15 prints it: the f32's own shortest round-trip digits
/// (`0.1`, not the f64's `0.10000000149011612`), exponent form outside [1e-4, 1e6)
/// (`1e+06`), `NaN`, `Infinity`, `-Infinity`, `-0`.
pub fn format_f32(x: f32) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    float_text(&format!("{x:e}"), 6)
}

/// Splits the decimal digits of an unscaled numeric (no sign, no leading zeros, `0`
/// for zero) into integer and fraction digits for `scale` (a negative scale appends
/// zeros).
fn split_digits(digits: &str, scale: i8) -> (String, String) {
    if scale <= 0 {
        let mut int = digits.to_string();
        if digits != "0" {
            int.extend(std::iter::repeat_n('0', usize::from(scale.unsigned_abs())));
        }
        return (int, String::new());
    }
    let s = scale as usize;
    if digits.len() > s {
        let (i, f) = digits.split_at(digits.len() - s);
        (i.to_string(), f.to_string())
    } else {
        let mut f = "0".repeat(s - digits.len());
        f.push_str(digits);
        ("0".to_string(), f)
    }
}

/// numeric text: exactly `scale` fraction digits (`-0.50`, `12.00`, `0`).
fn numeric_text(neg: bool, digits: &str, scale: i8, out: &mut Vec<u8>) {
    let (int, frac) = split_digits(digits, scale);
    if neg && digits.bytes().any(|b| b != b'0') {
        out.push(b'-');
    }
    out.extend(int.as_bytes());
    if !frac.is_empty() {
        out.push(b'.');
        out.extend(frac.as_bytes());
    }
}

/// numeric in PostgreSQL's binary format (numeric_send): ndigits, weight, sign, dscale
/// (each 16 bits), then the base-10000 digits without leading or trailing zero digits
/// (zero: no digits, weight 0, positive).
fn numeric_send(neg: bool, digits: &str, scale: i8, out: &mut Vec<u8>) {
    let (int, frac) = split_digits(digits, scale);
    let int = int.trim_start_matches('0');
    let group = |c: &[u8]| c.iter().fold(0u16, |a, b| a * 10 + u16::from(b - b'0'));
    let mut groups: Vec<u16> = Vec::with_capacity((int.len() + frac.len()) / 4 + 2);
    // Integer digits in groups of four from the point leftwards, fraction digits
    // rightwards (the last group zero-filled).
    let lead = int.len() % 4;
    if lead > 0 {
        groups.push(group(&int.as_bytes()[..lead]));
    }
    groups.extend(int.as_bytes()[lead..].chunks(4).map(group));
    let mut weight = groups.len() as i32 - 1;
    groups.extend(
        frac.as_bytes()
            .chunks(4)
            .map(|c| group(c) * 10u16.pow(4 - c.len() as u32)),
    );
    let first = groups.iter().position(|g| *g != 0);
    let (groups, sign) = match first {
        None => {
            weight = 0;
            (&groups[..0], 0u16)
        }
        Some(f) => {
            weight -= f as i32;
            let last = groups.iter().rposition(|g| *g != 0).unwrap_or(f);
            (&groups[f..=last], if neg { 0x4000 } else { 0 })
        }
    };
    out.extend((groups.len() as i16).to_be_bytes());
    out.extend((weight as i16).to_be_bytes());
    out.extend(sign.to_be_bytes());
    out.extend((scale.max(0) as u16).to_be_bytes());
    for g in groups {
        out.extend(g.to_be_bytes());
    }
}

// ---------------------------------------------------------------------------------
// Parameters
// ---------------------------------------------------------------------------------

fn invalid(ty: &str, s: &str) -> Error {
    Error::sql(
        "22P02",
        format!("invalid input syntax for type {ty}: \"{s}\""),
    )
}

/// PostgreSQL's error for malformed date, timestamp and interval input (22007).
fn invalid_datetime(ty: &str, s: &str) -> Error {
    Error::sql(
        "22007",
        format!("invalid input syntax for type {ty}: \"{s}\""),
    )
}

fn bad_binary(what: &str) -> Error {
    Error::sql(
        "22P03",
        format!("incorrect binary data format for type {what}"),
    )
}

/// Parses PostgreSQL integer input (surrounding whitespace, an optional sign, decimal
/// digits) for a `bits`-bit integer (16, 32 or 64).
///
/// # Errors
/// 22P02 for malformed input, 22003 for a value out of range.
pub fn parse_int(s: &str, bits: u32) -> Result<i64> {
    let name = match bits {
        16 => "smallint",
        32 => "integer",
        _ => "bigint",
    };
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(name, s));
    }
    let out_of_range = || {
        Error::sql(
            "22003",
            format!("value \"{s}\" is out of range for type {name}"),
        )
    };
    let v: i64 = t.parse().map_err(|_| out_of_range())?;
    let fits = match bits {
        16 => i16::try_from(v).is_ok(),
        32 => i32::try_from(v).is_ok(),
        _ => true,
    };
    if fits {
        Ok(v)
    } else {
        Err(out_of_range())
    }
}

/// Parses PostgreSQL float input (`1.5`, ` -2e-3 `, `NaN`, `Infinity`, `-inf`, ...) as
/// a float4 (`single`, rounded to f32) or float8.
///
/// # Errors
/// 22P02 for malformed input, 22003 for a value out of the type's range (overflow, or
/// a non-zero value that underflows to zero).
pub fn parse_float(s: &str, single: bool) -> Result<f64> {
    let name = if single { "real" } else { "double precision" };
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower = body.to_ascii_lowercase();
    let special = matches!(lower.as_str(), "nan" | "inf" | "infinity");
    if !special {
        // strtod's decimal syntax (Rust's parser also takes these, and more words).
        let (mant, exp) = match lower.split_once('e') {
            Some((m, e)) => (m, Some(e)),
            None => (lower.as_str(), None),
        };
        let (i, f) = mant.split_once('.').unwrap_or((mant, ""));
        let ok_mant = !(i.is_empty() && f.is_empty())
            && i.bytes().all(|b| b.is_ascii_digit())
            && f.bytes().all(|b| b.is_ascii_digit());
        let ok_exp = exp.is_none_or(|e| {
            let d = e.strip_prefix(['+', '-']).unwrap_or(e);
            !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
        });
        if !ok_mant || !ok_exp {
            return Err(invalid(name, s));
        }
    }
    let out_of_range = || Error::sql("22003", format!("\"{s}\" is out of range for type {name}"));
    let nonzero = !special
        && lower
            .split('e')
            .next()
            .is_some_and(|m| m.bytes().any(|b| (b'1'..=b'9').contains(&b)));
    let v: f64 = if single {
        f64::from(t.parse::<f32>().map_err(|_| invalid(name, s))?)
    } else {
        t.parse::<f64>().map_err(|_| invalid(name, s))?
    };
    if !special && (v.is_infinite() || (v == 0.0 && nonzero)) {
        return Err(out_of_range());
    }
    Ok(v)
}

/// Parses PostgreSQL numeric input (` -12.50 `, `1.5e3`, `.5`, `NaN`, `Infinity`) into
/// its canonical text: plain decimal notation with PostgreSQL's display scale
/// (`1.5e3` is `1500`, `1e-3` is `0.001`, `-0.00` is `0.00`), or `NaN`, `Infinity`,
/// `-Infinity`.
///
/// # Errors
/// 22P02 for malformed input; 22003 for a value beyond numeric's limits (131072
/// digits before the point, 16383 after it), as PostgreSQL.
pub fn parse_numeric(s: &str) -> Result<String> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = body.to_ascii_lowercase();
    match lower.as_str() {
        "nan" if body.len() == t.len() => return Ok("NaN".into()),
        "inf" | "infinity" => return Ok(if neg { "-Infinity" } else { "Infinity" }.into()),
        _ => {}
    }
    let overflow = || Error::sql("22003", "value overflows numeric format");
    let (mant, exp) = match lower.split_once('e') {
        Some((m, e)) => {
            let d = e.strip_prefix(['+', '-']).unwrap_or(e);
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("numeric", s));
            }
            (m, e.parse::<i64>().map_err(|_| overflow())?)
        }
        None => (lower.as_str(), 0),
    };
    let (i, f) = mant.split_once('.').unwrap_or((mant, ""));
    if (i.is_empty() && f.is_empty())
        || !i.bytes().all(|b| b.is_ascii_digit())
        || !f.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid("numeric", s));
    }
    // value = 0.(i f) x 10^(len(i) + exp); display scale = max(len(f) - exp, 0).
    let digits = format!("{i}{f}");
    let point = (i.len() as i64).saturating_add(exp); // digits before the point
    let dscale = (f.len() as i64).saturating_sub(exp).max(0);
    if dscale > 16_383 {
        return Err(overflow());
    }
    let first = digits.bytes().position(|b| b != b'0');
    if let Some(k) = first {
        if point - k as i64 > 131_072 {
            return Err(overflow());
        }
    }
    let digit = |k: i64| -> char {
        if k < 0 {
            '0'
        } else {
            digits
                .as_bytes()
                .get(k as usize)
                .map_or('0', |b| char::from(*b))
        }
    };
    let int: String = match first {
        Some(k) if (k as i64) < point => (k as i64..point).map(digit).collect(),
        _ => String::new(),
    };
    let frac: String = (point..point + dscale).map(digit).collect();
    // Every digit is shown (the display scale covers the fraction digits given).
    let zero = first.is_none();
    let mut out = String::new();
    if neg && !zero {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { &int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

/// Decodes PostgreSQL's binary numeric (numeric_recv) into its canonical text (see
/// [`parse_numeric`]; digits beyond the display scale are truncated away, as
/// PostgreSQL does).
///
/// # Errors
/// 22P03 for a malformed value.
pub fn numeric_from_binary(b: &[u8]) -> Result<String> {
    let bad = || bad_binary("numeric");
    let word = |k: usize| -> Result<u16> {
        b.get(2 * k..2 * k + 2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]))
            .ok_or_else(bad)
    };
    let ndigits = word(0)? as i16;
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = word(3)?;
    if ndigits < 0 || b.len() != 8 + 2 * ndigits as usize {
        return Err(bad());
    }
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => return Err(bad()),
    }
    if dscale > 0x3FFF {
        return Err(bad());
    }
    let mut groups = Vec::with_capacity(ndigits as usize);
    for k in 0..ndigits as usize {
        let g = word(4 + k)?;
        if g > 9999 {
            return Err(bad());
        }
        groups.push(g);
    }
    // Digit group k has base-10000 exponent weight - k.
    let group_at = |e: i64| -> u16 {
        let k = weight - e;
        if k < 0 || k >= groups.len() as i64 {
            0
        } else {
            groups[k as usize]
        }
    };
    let mut int = String::new();
    for e in (0..=weight.max(0)).rev() {
        let g = group_at(e);
        if int.is_empty() {
            if g != 0 || e == 0 {
                int.push_str(&g.to_string());
            }
        } else {
            int.push_str(&format!("{g:04}"));
        }
    }
    let mut frac = String::new();
    let mut e = -1;
    while frac.len() < usize::from(dscale) {
        frac.push_str(&format!("{:04}", group_at(e)));
        e -= 1;
    }
    frac.truncate(usize::from(dscale));
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    let mut out = String::new();
    if sign == 0x4000 && !zero {
        out.push('-');
    }
    out.push_str(&int);
    if !frac.is_empty() {
        out.push('.');
        out.push_str(&frac);
    }
    Ok(out)
}

/// Parses PostgreSQL boolean input: `t`, `true`, `yes`, `on`, `1` and `f`, `false`,
/// `no`, `off`, `0`, any case, any unambiguous prefix of the words, surrounding
/// whitespace allowed.
///
/// # Errors
/// 22P02 for anything else.
pub fn parse_bool(s: &str) -> Result<bool> {
    let t = s
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .to_ascii_lowercase();
    let prefix = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix("true", 1) || prefix("yes", 1) || prefix("on", 2) || t == "1" {
        Ok(true)
    } else if prefix("false", 1) || prefix("no", 1) || prefix("off", 2) || t == "0" {
        Ok(false)
    } else {
        Err(invalid("boolean", s))
    }
}

/// A parsed date: days since 1970-01-01, or one of PostgreSQL's infinities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgDate {
    /// `-infinity`.
    NegInfinity,
    /// Days since 1970-01-01.
    Days(i32),
    /// `infinity`.
    Infinity,
}

/// Splits a trailing era word (`BC` / `AD`) off `s`.
fn strip_era(s: &str) -> (&str, bool) {
    let t = s.trim_end();
    let lower = t.to_ascii_lowercase();
    for (era, bc) in [("bc", true), ("ad", false)] {
        if lower.ends_with(era) && t.len() > 2 {
            let head = &t[..t.len() - 2];
            if head.ends_with(|c: char| c.is_ascii_whitespace() || c.is_ascii_digit()) {
                return (head.trim_end(), bc);
            }
        }
    }
    (t, false)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DD` (year of one or more digits) or `YYYYMMDD` into days since 1970, or
/// `None` if malformed; `Err` if a field is out of range.
fn iso_date(s: &str, bc: bool, input: &str) -> Result<Option<i64>> {
    let (y, m, d) = if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
        (&s[..4], &s[4..6], &s[6..]) // YYYYMMDD
    } else {
        let mut it = s.splitn(3, '-');
        let (Some(y), Some(m), Some(d)) = (it.next(), it.next(), it.next()) else {
            return Ok(None);
        };
        (y, m, d)
    };
    let num = |p: &str, max: usize| -> Option<i64> {
        (!p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let (Some(y), Some(m), Some(d)) = (num(y, 9), num(m, 2), num(d, 2)) else {
        return Ok(None);
    };
    let field_range = || {
        Error::sql(
            "22008",
            format!("date/time field value out of range: \"{input}\""),
        )
    };
    if y == 0 || !(1..=12).contains(&m) {
        return Err(field_range());
    }
    let y = if bc { 1 - y } else { y };
    if d < 1 || d > i64::from(days_in_month(y, m as u32)) {
        return Err(field_range());
    }
    Ok(Some(days_from_civil(y, m as u32, d as u32)))
}

/// Parses PostgreSQL date input in ISO form: `YYYY-MM-DD` or `YYYYMMDD`, optionally
/// followed by a time of day (ignored) and `BC` / `AD`; also `epoch`, `infinity`,
/// `-infinity`. (PostgreSQL reads more forms, such as `Jan 8 1999` or `1/8/1999`;
/// those are 22007 here.)
///
/// # Errors
/// 22P02 for another form, 22008 for a field or the date out of range.
pub fn parse_date(s: &str) -> Result<PgDate> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    match t.to_ascii_lowercase().as_str() {
        "epoch" => return Ok(PgDate::Days(0)),
        "infinity" | "+infinity" => return Ok(PgDate::Infinity),
        "-infinity" => return Ok(PgDate::NegInfinity),
        _ => {}
    }
    let (body, bc) = strip_era(t);
    let date = body
        .split(|c: char| c.is_ascii_whitespace() || c == 'T' || c == 't')
        .next()
        .unwrap_or("");
    let days = iso_date(date, bc, s)?.ok_or_else(|| invalid_datetime("date", s))?;
    if !(PG_MIN_DATE..PG_END_DATE).contains(&(days - i64::from(PG_EPOCH_DAYS))) {
        return Err(date_out_of_range());
    }
    Ok(PgDate::Days(days as i32))
}

/// Parses a fraction of a second (the digits after the point) into microseconds, as
/// PostgreSQL does (`rint(strtod("0.digits") * 1e6)`).
fn fraction_micros(digits: &str) -> Option<i64> {
    if digits.is_empty() {
        return Some(0);
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let f: f64 = format!("0.{digits}").parse().ok()?;
    Some((f * 1e6).round_ties_even() as i64)
}

/// `HH:MM[:SS[.ffffff]]` into microseconds; `None` if malformed, `Err` if a field is
/// out of range (hour 24 only as `24:00:00`, second 60 allowed, as PostgreSQL).
fn time_of_day(s: &str, input: &str) -> Result<Option<i64>> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Ok(None);
    }
    let num = |p: &str| -> Option<i64> {
        (!p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let (Some(h), Some(m)) = (num(parts[0]), num(parts[1])) else {
        return Ok(None);
    };
    let (sec, frac) = match parts.get(2) {
        None => (0, 0),
        Some(p) => {
            let (sec, f) = p.split_once('.').unwrap_or((p, ""));
            let (Some(sec), Some(f)) = (num(sec), fraction_micros(f)) else {
                return Ok(None);
            };
            (sec, f)
        }
    };
    if m > 59 || sec > 60 || h > 24 || (h == 24 && (m > 0 || sec > 0 || frac > 0)) {
        return Err(Error::sql(
            "22008",
            format!("date/time field value out of range: \"{input}\""),
        ));
    }
    Ok(Some(
        h * MICROS_PER_HOUR + m * MICROS_PER_MINUTE + sec * MICROS_PER_SECOND + frac,
    ))
}

/// A time zone offset east of UTC in seconds: `Z`, `UTC`, `GMT`, `+HH`, `+HH:MM`,
/// `+HHMM`, `+HH:MM:SS` (and `-`).
fn tz_offset(s: &str) -> Option<i64> {
    let l = s.to_ascii_lowercase();
    if matches!(l.as_str(), "z" | "utc" | "gmt" | "zulu" | "ut") {
        return Some(0);
    }
    let (neg, body) = match l.as_bytes().first()? {
        b'+' => (false, &l[1..]),
        b'-' => (true, &l[1..]),
        _ => return None,
    };
    let d2 = |p: &str| -> Option<i64> {
        (!p.is_empty() && p.len() <= 2 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let parts: Vec<&str> = body.split(':').collect();
    let (h, m, sec) = match parts.as_slice() {
        [hm] if hm.len() == 4 && hm.bytes().all(|b| b.is_ascii_digit()) => {
            (d2(&hm[..2])?, d2(&hm[2..])?, 0)
        }
        [h] => (d2(h)?, 0, 0),
        [h, m] => (d2(h)?, d2(m)?, 0),
        [h, m, s] => (d2(h)?, d2(m)?, d2(s)?),
        _ => return None,
    };
    if h > 15 || m > 59 || sec > 59 {
        return None;
    }
    let off = h * 3600 + m * 60 + sec;
    Some(if neg { -off } else { off })
}

/// Parses PostgreSQL timestamp input in ISO form, `YYYY-MM-DD[( |T)HH:MM[:SS[.f]]]`
/// (or `YYYYMMDD` for the date)
/// with an optional zone offset (`Z`, `UTC`, `+05`, `-03:30`, `+0530`) and `BC` / `AD`;
/// also `epoch`, `infinity`, `-infinity`. Returns microseconds since 2000-01-01
/// (`i64::MIN` / `i64::MAX` for the infinities). A timestamptz (`with_tz`) is moved to
/// UTC by its offset (none: the session's zone, UTC); a timestamp ignores the offset,
/// as PostgreSQL does. Fractions beyond microseconds are rounded.
///
/// # Errors
/// 22P02 for another form, 22008 for a field or the timestamp out of range.
pub fn parse_timestamp(s: &str, with_tz: bool) -> Result<i64> {
    let name = if with_tz {
        "timestamp with time zone"
    } else {
        "timestamp without time zone"
    };
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    match t.to_ascii_lowercase().as_str() {
        "epoch" => return Ok(-PG_EPOCH_MICROS),
        "infinity" | "+infinity" => return Ok(i64::MAX),
        "-infinity" => return Ok(i64::MIN),
        _ => {}
    }
    let (body, bc) = strip_era(t);
    // Date, then the time (after a space or T), then an optional zone.
    let split = body
        .find(|c: char| c.is_ascii_whitespace() || c == 'T' || c == 't')
        .unwrap_or(body.len());
    let (date, rest) = body.split_at(split);
    let rest = match rest.strip_prefix(['T', 't']) {
        Some("") => return Err(invalid_datetime(name, s)),
        Some(r) => r,
        None => rest.trim_start_matches(|c: char| c.is_ascii_whitespace()),
    };
    let days = iso_date(date, bc, s)?.ok_or_else(|| invalid_datetime(name, s))?;
    let (time, zone) = if rest.is_empty() {
        (0, 0)
    } else {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
            .unwrap_or(rest.len());
        let (tm, zone) = rest.split_at(end);
        let time = time_of_day(tm, s)?.ok_or_else(|| invalid_datetime(name, s))?;
        let zone = zone.trim();
        let off = if zone.is_empty() {
            0
        } else {
            tz_offset(zone).ok_or_else(|| invalid_datetime(name, s))?
        };
        (time, off)
    };
    let mut us = i128::from(days) * i128::from(MICROS_PER_DAY) + i128::from(time)
        - i128::from(PG_EPOCH_MICROS);
    if with_tz {
        us -= i128::from(zone) * i128::from(MICROS_PER_SECOND);
    }
    i64::try_from(us)
        .ok()
        .filter(|v| (PG_MIN_TIMESTAMP..PG_END_TIMESTAMP).contains(v))
        .ok_or_else(timestamp_out_of_range)
}

/// Interval fields, as PostgreSQL's `pg_itm_in` while it reads interval input.
#[derive(Default)]
struct Itm {
    years: i32,
    months: i32,
    days: i32,
    micros: i64,
}

/// A unit of interval input (PostgreSQL's DecodeUnits table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IvUnit {
    Micro,
    Milli,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
    Decade,
    Century,
    Millennium,
}

impl IvUnit {
    /// The unit named `word` (compared on its first 10 letters, as PostgreSQL).
    fn named(word: &str) -> Option<IvUnit> {
        let w = &word[..word.len().min(10)];
        Some(match w {
            "us" | "usec" | "usecs" | "usecond" | "useconds" | "microsecon" => IvUnit::Micro,
            "ms" | "msec" | "msecs" | "msecond" | "mseconds" | "millisecon" => IvUnit::Milli,
            "s" | "sec" | "secs" | "second" | "seconds" => IvUnit::Second,
            "m" | "min" | "mins" | "minute" | "minutes" => IvUnit::Minute,
            "h" | "hr" | "hrs" | "hour" | "hours" => IvUnit::Hour,
            "d" | "day" | "days" => IvUnit::Day,
            "w" | "week" | "weeks" => IvUnit::Week,
            "mon" | "mons" | "month" | "months" => IvUnit::Month,
            "y" | "yr" | "yrs" | "year" | "years" => IvUnit::Year,
            "dec" | "decs" | "decade" | "decades" => IvUnit::Decade,
            "c" | "cent" | "century" | "centuries" => IvUnit::Century,
            "mil" | "mils" | "millennia" | "millennium" => IvUnit::Millennium,
            _ => return None,
        })
    }

    /// The field bit a unit sets (a field given twice is an error).
    fn mask(self) -> u32 {
        1 << (self as u32)
    }
}

/// The bits of the seconds fields (a time `HH:MM:SS` sets these and hours, minutes).
const SECS_MASK: u32 =
    (1 << IvUnit::Second as u32) | (1 << IvUnit::Milli as u32) | (1 << IvUnit::Micro as u32);
const TIME_MASK: u32 = SECS_MASK | (1 << IvUnit::Minute as u32) | (1 << IvUnit::Hour as u32);

/// An interval input error: malformed (22007) or a field out of range (22015).
enum IvErr {
    Format,
    Overflow,
}

type IvResult<T = ()> = std::result::Result<T, IvErr>;

fn i32_of(v: i64) -> IvResult<i32> {
    i32::try_from(v).map_err(|_| IvErr::Overflow)
}

impl Itm {
    /// AdjustFractMicroseconds: `frac` of `scale` microseconds, rounded.
    fn fract_micros(&mut self, frac: f64, scale: i64) -> IvResult {
        if frac == 0.0 {
            return Ok(());
        }
        let f = frac * scale as f64;
        let whole = f as i64;
        let us = whole + (f - whole as f64).round_ties_even() as i64;
        self.micros = self.micros.checked_add(us).ok_or(IvErr::Overflow)?;
        Ok(())
    }
    /// AdjustMicroseconds: `val` + `frac` units of `scale` microseconds.
    fn micros(&mut self, val: i64, frac: f64, scale: i64) -> IvResult {
        let us = val.checked_mul(scale).ok_or(IvErr::Overflow)?;
        self.micros = self.micros.checked_add(us).ok_or(IvErr::Overflow)?;
        self.fract_micros(frac, scale)
    }
    /// AdjustFractDays: `frac` × `scale` days, whole days then microseconds.
    fn fract_days(&mut self, frac: f64, scale: i32) -> IvResult {
        if frac == 0.0 {
            return Ok(());
        }
        let f = frac * f64::from(scale);
        let extra = f as i32;
        self.days = self.days.checked_add(extra).ok_or(IvErr::Overflow)?;
        self.fract_micros(f - f64::from(extra), MICROS_PER_DAY)
    }
    /// AdjustDays.
    fn days(&mut self, val: i64, scale: i32) -> IvResult {
        let d = i32_of(val)?.checked_mul(scale).ok_or(IvErr::Overflow)?;
        self.days = self.days.checked_add(d).ok_or(IvErr::Overflow)?;
        Ok(())
    }
    /// AdjustYears and AdjustFractYears.
    fn years(&mut self, val: i64, frac: f64, scale: i32) -> IvResult {
        let y = i32_of(val)?.checked_mul(scale).ok_or(IvErr::Overflow)?;
        self.years = self.years.checked_add(y).ok_or(IvErr::Overflow)?;
        let extra = (frac * f64::from(scale) * 12.0).round_ties_even() as i32;
        self.months = self.months.checked_add(extra).ok_or(IvErr::Overflow)?;
        Ok(())
    }
    /// `val.frac` of `unit`.
    fn add(&mut self, unit: IvUnit, val: i64, frac: f64) -> IvResult {
        match unit {
            IvUnit::Micro => self.micros(val, frac, 1),
            IvUnit::Milli => self.micros(val, frac, 1000),
            IvUnit::Second => self.micros(val, frac, MICROS_PER_SECOND),
            IvUnit::Minute => self.micros(val, frac, MICROS_PER_MINUTE),
            IvUnit::Hour => self.micros(val, frac, MICROS_PER_HOUR),
            IvUnit::Day => {
                self.days(val, 1)?;
                self.fract_micros(frac, MICROS_PER_DAY)
            }
            IvUnit::Week => {
                self.days(val, 7)?;
                self.fract_days(frac, 7)
            }
            IvUnit::Month => {
                self.months = self
                    .months
                    .checked_add(i32_of(val)?)
                    .ok_or(IvErr::Overflow)?;
                self.fract_days(frac, 30)
            }
            IvUnit::Year => self.years(val, frac, 1),
            IvUnit::Decade => self.years(val, frac, 10),
            IvUnit::Century => self.years(val, frac, 100),
            IvUnit::Millennium => self.years(val, frac, 1000),
        }
    }
    /// `ago`: every field negated.
    fn negate(&mut self) -> IvResult {
        self.micros = self.micros.checked_neg().ok_or(IvErr::Overflow)?;
        self.days = self.days.checked_neg().ok_or(IvErr::Overflow)?;
        self.months = self.months.checked_neg().ok_or(IvErr::Overflow)?;
        self.years = self.years.checked_neg().ok_or(IvErr::Overflow)?;
        Ok(())
    }
}

/// A number of interval input: `[+-]digits[.digits]`, as PostgreSQL's strtoi64 then
/// ParseFraction (the fraction takes the number's sign).
fn iv_number(s: &str) -> IvResult<(i64, f64)> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (i, f) = body.split_once('.').unwrap_or((body, ""));
    if (i.is_empty() && !body.starts_with('.'))
        || !i.bytes().all(|b| b.is_ascii_digit())
        || !f.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(IvErr::Format);
    }
    let iv: i64 = if i.is_empty() {
        0
    } else {
        i.parse().map_err(|_| IvErr::Overflow)?
    };
    let fv: f64 = if f.is_empty() {
        0.0
    } else {
        format!("0.{f}").parse().map_err(|_| IvErr::Format)?
    };
    Ok(if neg { (-iv, -fv) } else { (iv, fv) })
}

/// A time field of interval input, `H:M[:S[.f]]` or `M:S.f` (unsigned), in
/// microseconds (PostgreSQL's DecodeTime).
fn iv_time(s: &str) -> IvResult<i64> {
    let int = |p: &str| -> IvResult<i64> {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IvErr::Format);
        }
        p.parse().map_err(|_| IvErr::Overflow)
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (h, m, sec, frac) = match parts.as_slice() {
        [h, m] => match m.split_once('.') {
            // mm:ss.fff
            Some((sec, f)) => (0, int(h)?, int(sec)?, f),
            None => (int(h)?, int(m)?, 0, ""),
        },
        [h, m, s] => {
            let (sec, f) = s.split_once('.').unwrap_or((s, ""));
            (int(h)?, int(m)?, int(sec)?, f)
        }
        _ => return Err(IvErr::Format),
    };
    let frac = fraction_micros(frac).ok_or(IvErr::Format)?;
    if m > 59 || sec > 60 || frac > MICROS_PER_SECOND {
        return Err(IvErr::Overflow);
    }
    h.checked_mul(MICROS_PER_HOUR)
        .and_then(|v| v.checked_add(m * MICROS_PER_MINUTE + sec * MICROS_PER_SECOND + frac))
        .ok_or(IvErr::Overflow)
}

/// The fields of interval input in PostgreSQL's words (ParseDateTime): numbers
/// (signed, with a fraction, or `Y-M`), times (with `:`), words; other punctuation
/// separates.
fn iv_fields(s: &str) -> IvResult<Vec<String>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut k = 0;
    let take = |k: &mut usize, ok: &dyn Fn(u8) -> bool| {
        while *k < b.len() && ok(b[*k]) {
            *k += 1;
        }
    };
    while k < b.len() {
        let c = b[k];
        let start = k;
        if c.is_ascii_whitespace() {
            k += 1;
            continue;
        } else if c.is_ascii_digit() || c == b'.' {
            take(&mut k, &|c| {
                c.is_ascii_digit() || c == b'.' || c == b':' || c == b'-'
            });
            out.push(s[start..k].to_string());
        } else if c == b'+' || c == b'-' {
            k += 1;
            take(&mut k, &|c| c.is_ascii_whitespace());
            if k >= b.len() || !(b[k].is_ascii_digit() || b[k] == b'.') {
                return Err(IvErr::Format);
            }
            let digits = k;
            take(&mut k, &|c| {
                c.is_ascii_digit() || c == b'.' || c == b':' || c == b'-'
            });
            out.push(format!("{}{}", char::from(c), &s[digits..k]));
        } else if c.is_ascii_alphabetic() {
            take(&mut k, &|c| c.is_ascii_alphabetic());
            out.push(s[start..k].to_string());
        } else if c.is_ascii_punctuation() {
            k += 1;
        } else {
            return Err(IvErr::Format);
        }
    }
    Ok(out)
}

/// PostgreSQL's DecodeInterval over `fields`, read right to left so units come before
/// their numbers.
fn decode_interval(fields: &[String]) -> IvResult<Itm> {
    /// What the next number (to the left) counts.
    #[derive(Clone, Copy)]
    enum Next {
        Default,
        Unit(IvUnit),
        Nothing,
    }
    let mut itm = Itm::default();
    let mut fmask = 0u32;
    let mut next = Next::Default;
    let mut ago = false;
    for f in fields.iter().rev() {
        let first = f.as_bytes()[0];
        let tmask;
        if first.is_ascii_alphabetic() {
            if f == "ago" {
                ago = true;
                next = Next::Nothing;
            } else {
                next = Next::Unit(IvUnit::named(f).ok_or(IvErr::Format)?);
            }
            continue;
        } else if f.contains(':') {
            let (neg, body) = match first {
                b'-' => (true, &f[1..]),
                b'+' => (false, &f[1..]),
                _ => (false, f.as_str()),
            };
            let us = iv_time(body)?;
            // As PostgreSQL: the time replaces the microseconds read so far.
            itm.micros = if neg { -us } else { us };
            tmask = TIME_MASK;
            next = Next::Unit(IvUnit::Day);
        } else {
            let unit = match next {
                Next::Default => IvUnit::Second,
                Next::Unit(u) => u,
                Next::Nothing => return Err(IvErr::Format),
            };
            let body = f.strip_prefix(['+', '-']).unwrap_or(f);
            if let Some((y, m)) = body.split_once('-') {
                // SQL "years-months".
                let y: i64 = iv_number(y).map(|(v, _)| v)?;
                let m: i64 = iv_number(m).map(|(v, _)| v)?;
                if !(0..12).contains(&m) || y < 0 {
                    return Err(IvErr::Overflow);
                }
                let v = y
                    .checked_mul(12)
                    .and_then(|v| v.checked_add(m))
                    .ok_or(IvErr::Overflow)?;
                itm.add(IvUnit::Month, if first == b'-' { -v } else { v }, 0.0)?;
                tmask = IvUnit::Month.mask();
            } else {
                let (val, frac) = iv_number(f)?;
                itm.add(unit, val, frac)?;
                tmask = if unit == IvUnit::Second && frac != 0.0 {
                    SECS_MASK
                } else {
                    unit.mask()
                };
                if unit == IvUnit::Hour {
                    next = Next::Unit(IvUnit::Day);
                }
            }
        }
        if tmask & fmask != 0 {
            return Err(IvErr::Format);
        }
        fmask |= tmask;
    }
    if fmask == 0 {
        return Err(IvErr::Format);
    }
    if ago {
        itm.negate()?;
    }
    Ok(itm)
}

/// ISO 8601 interval with designators: `P1Y2M3W4DT5H6M7.5S`.
fn decode_iso_interval(s: &str) -> IvResult<Itm> {
    let mut itm = Itm::default();
    let mut in_time = false;
    let mut rest = s.strip_prefix('p').ok_or(IvErr::Format)?;
    if rest.is_empty() {
        return Err(IvErr::Format);
    }
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('t') {
            if in_time {
                return Err(IvErr::Format);
            }
            in_time = true;
            rest = r;
            continue;
        }
        let end = rest
            .find(|c: char| c.is_ascii_alphabetic())
            .ok_or(IvErr::Format)?;
        let (val, frac) = iv_number(&rest[..end])?;
        let unit = match (in_time, &rest[end..end + 1]) {
            (false, "y") => IvUnit::Year,
            (false, "m") => IvUnit::Month,
            (false, "w") => IvUnit::Week,
            (false, "d") => IvUnit::Day,
            (true, "h") => IvUnit::Hour,
            (true, "m") => IvUnit::Minute,
            (true, "s") => IvUnit::Second,
            _ => return Err(IvErr::Format),
        };
        itm.add(unit, val, frac)?;
        rest = &rest[end + 1..];
    }
    Ok(itm)
}

/// Parses PostgreSQL interval input as PostgreSQL 15 reads it (DecodeInterval, with
/// IntervalStyle `postgres`): unit words (`1 year 2 mons 3 days`, `-1.5 hours`,
/// `3 weeks ago`, `@ 1 minute`, `1d 2h`), times (`04:05:06.5`, `-01:02`, `1:30.5` as
/// minutes and seconds), `Y-M` years and months, bare numbers (seconds; a number left
/// of a time or of hours is days), and ISO 8601 designators (`P1Y2M3DT4H5M6S`).
/// Fractional units spill into smaller ones (`1.5 years` is 1 year 6 mons,
/// `1.5 days` is 1 day 12:00:00); a field given twice is an error.
///
/// # Errors
/// 22007 for malformed input, 22015 for a field out of range, 22008 for an interval
/// out of range.
pub fn parse_interval(s: &str) -> Result<PgInterval> {
    let lower = s
        .trim_matches(|c: char| c.is_ascii_whitespace())
        .to_ascii_lowercase();
    let itm = match iv_fields(&lower).and_then(|f| decode_interval(&f)) {
        Err(IvErr::Format) if lower.starts_with('p') => decode_iso_interval(&lower),
        r => r,
    };
    let itm = itm.map_err(|e| match e {
        IvErr::Format => invalid_datetime("interval", s),
        IvErr::Overflow => Error::sql(
            "22015",
            format!("interval field value out of range: \"{s}\""),
        ),
    })?;
    let months = i64::from(itm.years) * 12 + i64::from(itm.months);
    Ok(PgInterval {
        months: i32::try_from(months).map_err(|_| Error::sql("22008", "interval out of range"))?,
        days: itm.days,
        micros: itm.micros,
    })
}

/// A bound parameter of the extended protocol (never NULL) as a typed SQL literal:
/// int2/int4/int8 `CAST('5' AS SMALLINT|INTEGER|BIGINT)`, float4/float8
/// `CAST('0.1' AS REAL|DOUBLE PRECISION)`, numeric `CAST('12.50' AS NUMERIC)`, bool
/// `TRUE` / `FALSE`, date `DATE '2024-01-01'`, timestamp `TIMESTAMP '2024-01-01
/// 12:00:00.5'`, timestamptz `CAST('2024-01-01 12:00:00+00' AS TIMESTAMPTZ)`, interval
/// `INTERVAL '14 months 3 days 14706.5 seconds'`, and text, varchar, bpchar and any
/// other type a quoted string. Values are checked and rewritten in canonical form, so
/// nothing of the client's text reaches the SQL except inside a quoted string.
///
/// # Errors
/// Text format: 22P02 for malformed input, 22003 / 22008 / 22015 for values out of
/// range, 22021 for text that is not UTF-8 or holds a NUL. Binary format: 22P03 for a
/// value of the wrong size or shape.
pub fn param_literal(ty: &Type, v: &[u8], binary: bool) -> Result<String> {
    let text = || -> Result<&str> {
        let s = std::str::from_utf8(v)
            .map_err(|_| Error::sql("22021", "invalid byte sequence for encoding \"UTF8\""))?;
        if s.contains('\0') {
            return Err(Error::sql(
                "22021",
                "invalid byte sequence for encoding \"UTF8\": 0x00",
            ));
        }
        Ok(s)
    };
    let fixed = |n: usize, name: &str| -> Result<&[u8]> {
        if v.len() == n {
            Ok(v)
        } else {
            Err(bad_binary(name))
        }
    };
    let cast = |s: &str, to: &str| format!("CAST({} AS {to})", quote(s));
    Ok(match *ty {
        Type::INT2 | Type::INT4 | Type::INT8 => {
            let (bits, name) = match *ty {
                Type::INT2 => (16, "SMALLINT"),
                Type::INT4 => (32, "INTEGER"),
                _ => (64, "BIGINT"),
            };
            let n = if binary {
                let b = fixed(bits / 8, &name.to_ascii_lowercase())?;
                match bits {
                    16 => i64::from(i16::from_be_bytes([b[0], b[1]])),
                    32 => i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])),
                    _ => i64::from_be_bytes(b.try_into().map_err(|_| bad_binary("bigint"))?),
                }
            } else {
                parse_int(text()?, bits as u32)?
            };
            cast(&n.to_string(), name)
        }
        Type::FLOAT4 => {
            let f = if binary {
                let b = fixed(4, "real")?;
                f32::from_be_bytes([b[0], b[1], b[2], b[3]])
            } else {
                parse_float(text()?, true)? as f32
            };
            cast(&format_f32(f), "REAL")
        }
        Type::FLOAT8 => {
            let f = if binary {
                let b = fixed(8, "double precision")?;
                f64::from_be_bytes(b.try_into().map_err(|_| bad_binary("double precision"))?)
            } else {
                parse_float(text()?, false)?
            };
            cast(&format_f64(f), "DOUBLE PRECISION")
        }
        Type::NUMERIC => {
            let n = if binary {
                numeric_from_binary(v)?
            } else {
                parse_numeric(text()?)?
            };
            cast(&n, "NUMERIC")
        }
        Type::BOOL => {
            let b = if binary {
                fixed(1, "boolean")?[0] != 0
            } else {
                parse_bool(text()?)?
            };
            if b { "TRUE" } else { "FALSE" }.into()
        }
        Type::DATE => {
            let d = if binary {
                let b = fixed(4, "date")?;
                match i32::from_be_bytes([b[0], b[1], b[2], b[3]]) {
                    i32::MIN => PgDate::NegInfinity,
                    i32::MAX => PgDate::Infinity,
                    d if (PG_MIN_DATE..PG_END_DATE).contains(&i64::from(d)) => {
                        PgDate::Days(d + PG_EPOCH_DAYS)
                    }
                    _ => return Err(date_out_of_range()),
                }
            } else {
                parse_date(text()?)?
            };
            let s = match d {
                PgDate::NegInfinity => "-infinity".to_string(),
                PgDate::Infinity => "infinity".to_string(),
                PgDate::Days(d) => format_date(d),
            };
            format!("DATE {}", quote(&s))
        }
        Type::TIMESTAMP | Type::TIMESTAMPTZ => {
            let tz = *ty == Type::TIMESTAMPTZ;
            let us = if binary {
                let b = fixed(8, "timestamp")?;
                let us = i64::from_be_bytes(b.try_into().map_err(|_| bad_binary("timestamp"))?);
                if us != i64::MIN
                    && us != i64::MAX
                    && !(PG_MIN_TIMESTAMP..PG_END_TIMESTAMP).contains(&us)
                {
                    return Err(timestamp_out_of_range());
                }
                us
            } else {
                parse_timestamp(text()?, tz)?
            };
            let s = format_timestamp(us, tz);
            if tz {
                cast(&s, "TIMESTAMPTZ")
            } else {
                format!("TIMESTAMP {}", quote(&s))
            }
        }
        Type::INTERVAL => {
            let iv = if binary {
                let b = fixed(16, "interval")?;
                PgInterval {
                    micros: i64::from_be_bytes(
                        b[..8].try_into().map_err(|_| bad_binary("interval"))?,
                    ),
                    days: i32::from_be_bytes([b[8], b[9], b[10], b[11]]),
                    months: i32::from_be_bytes([b[12], b[13], b[14], b[15]]),
                }
            } else {
                parse_interval(text()?)?
            };
            format!("INTERVAL {}", quote(&interval_literal(iv)))
        }
        _ => quote(text()?),
    })
}

/// An interval as unit words both PostgreSQL and Arrow's interval parser read:
/// `14 months 3 days 14706.5 seconds` (zero parts left out; `0 seconds` for zero).
pub fn interval_literal(v: PgInterval) -> String {
    let mut parts = Vec::new();
    if v.months != 0 {
        parts.push(format!("{} months", v.months));
    }
    if v.days != 0 {
        parts.push(format!("{} days", v.days));
    }
    if v.micros != 0 || parts.is_empty() {
        let sign = if v.micros < 0 { "-" } else { "" };
        let a = v.micros.unsigned_abs();
        let whole = a / 1_000_000;
        let frac = a % 1_000_000;
        let mut s = format!("{sign}{whole}");
        if frac != 0 {
            s.push('.');
            s.push_str(format!("{frac:06}").trim_end_matches('0'));
        }
        parts.push(format!("{s} seconds"));
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use arrow_array::types::*;
    use arrow_array::*;
    use arrow_buffer::{i256, IntervalDayTime, IntervalMonthDayNano};
    use arrow_schema::Schema;
    use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
    use postgres_types::FromSql;
    use rust_decimal::Decimal;

    use super::*;

    /// PostgreSQL 15's answers for result values (node/testdata/check_pg.py checks
    /// them against a server).
    const PG_VALUES: &str = include_str!("../testdata/pg_values.tsv");
    /// Parameters and the literals made of them (checked likewise).
    const PG_PARAMS: &str = include_str!("../testdata/pg_params.tsv");

    /// A small deterministic generator (splitmix64).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn range(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next() % (hi - lo + 1) as u64) as i64
        }
        fn i128(&mut self) -> i128 {
            ((self.next() as i128) << 64) | self.next() as i128
        }
    }

    /// One column of `array` named `v`, with `meta` as its smrdb.pgtype.
    fn batch(array: ArrayRef, meta: Option<&str>) -> RecordBatch {
        let mut field = Field::new("v", array.data_type().clone(), true);
        if let Some(m) = meta {
            field = field.with_metadata(HashMap::from([(PGTYPE_KEY.to_string(), m.to_string())]));
        }
        RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![array]).unwrap()
    }

    /// The values of one-column DataRow bodies (None = NULL).
    fn cells(rows: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
        rows.iter()
            .map(|r| {
                let n = i32::from_be_bytes(r[..4].try_into().unwrap());
                if n < 0 {
                    assert_eq!(r.len(), 4);
                    None
                } else {
                    assert_eq!(r.len(), 4 + n as usize);
                    Some(r[4..].to_vec())
                }
            })
            .collect()
    }

    /// (text, binary) of every row of a one-column batch.
    fn both(b: &RecordBatch) -> Vec<(Option<String>, Option<Vec<u8>>)> {
        let text = cells(&encode_rows(b, &[false]).unwrap());
        let bin = cells(&encode_rows(b, &[true]).unwrap());
        text.into_iter()
            .map(|t| t.map(|t| String::from_utf8(t).unwrap()))
            .zip(bin)
            .collect()
    }

    fn one(b: &RecordBatch) -> (String, Vec<u8>) {
        let (t, v) = both(b).pop().unwrap();
        (t.unwrap(), v.unwrap())
    }

    fn sqlstate(e: &Error) -> &str {
        e.sqlstate()
    }

    /// The Arrow array of a pg_values.tsv row.
    fn array_of(kind: &str, v: &str) -> ArrayRef {
        let dec = |k: &str| -> (u8, i8) {
            let (p, s) = k
                .split_once('(')
                .unwrap()
                .1
                .trim_end_matches(')')
                .split_once(',')
                .unwrap();
            (p.parse().unwrap(), s.parse().unwrap())
        };
        let ts_unit = |k: &str| k.rsplit('_').next().unwrap().to_string();
        let hex = |v: &str| hex::decode(v).unwrap();
        let nums = |v: &str| -> Vec<i64> { v.split(',').map(|x| x.parse().unwrap()).collect() };
        match kind {
            "bool" => Arc::new(BooleanArray::from(vec![v == "t"])),
            "i8" => Arc::new(Int8Array::from(vec![v.parse::<i8>().unwrap()])),
            "i16" => Arc::new(Int16Array::from(vec![v.parse::<i16>().unwrap()])),
            "i32" => Arc::new(Int32Array::from(vec![v.parse::<i32>().unwrap()])),
            "i64" => Arc::new(Int64Array::from(vec![v.parse::<i64>().unwrap()])),
            "u8" => Arc::new(UInt8Array::from(vec![v.parse::<u8>().unwrap()])),
            "u16" => Arc::new(UInt16Array::from(vec![v.parse::<u16>().unwrap()])),
            "u32" => Arc::new(UInt32Array::from(vec![v.parse::<u32>().unwrap()])),
            "u64" => Arc::new(UInt64Array::from(vec![v.parse::<u64>().unwrap()])),
            "f16" => Arc::new(Float16Array::from(vec![half::f16::from_f64(
                v.parse().unwrap(),
            )])),
            "f32" => Arc::new(Float32Array::from(vec![v.parse::<f32>().unwrap()])),
            "f64" => Arc::new(Float64Array::from(vec![v.parse::<f64>().unwrap()])),
            k if k.starts_with("dec32") => {
                let (p, s) = dec(k);
                Arc::new(
                    Decimal32Array::from(vec![v.parse::<i32>().unwrap()])
                        .with_precision_and_scale(p, s)
                        .unwrap(),
                )
            }
            k if k.starts_with("dec64") => {
                let (p, s) = dec(k);
                Arc::new(
                    Decimal64Array::from(vec![v.parse::<i64>().unwrap()])
                        .with_precision_and_scale(p, s)
                        .unwrap(),
                )
            }
            k if k.starts_with("dec128") => {
                let (p, s) = dec(k);
                Arc::new(
                    Decimal128Array::from(vec![v.parse::<i128>().unwrap()])
                        .with_precision_and_scale(p, s)
                        .unwrap(),
                )
            }
            k if k.starts_with("dec256") => {
                let (p, s) = dec(k);
                Arc::new(
                    Decimal256Array::from(vec![i256::from_string(v).unwrap()])
                        .with_precision_and_scale(p, s)
                        .unwrap(),
                )
            }
            "utf8" => Arc::new(StringArray::from(vec![v])),
            "largeutf8" => Arc::new(LargeStringArray::from(vec![v])),
            "utf8view" => Arc::new(StringViewArray::from(vec![v])),
            "binary" => Arc::new(BinaryArray::from_vec(vec![&hex(v)])),
            "largebinary" => Arc::new(LargeBinaryArray::from_vec(vec![&hex(v)])),
            "binaryview" => Arc::new(BinaryViewArray::from_iter_values([hex(v)])),
            "fixedbinary" => {
                Arc::new(FixedSizeBinaryArray::try_from_iter(std::iter::once(hex(v))).unwrap())
            }
            "date32" => Arc::new(Date32Array::from(vec![v.parse::<i32>().unwrap()])),
            k if k.starts_with("ts") => {
                let n: i64 = v.parse().unwrap();
                let tz = k.starts_with("tstz").then_some("UTC");
                let a: ArrayRef = match ts_unit(k).as_str() {
                    "s" => Arc::new(TimestampSecondArray::from(vec![n]).with_timezone_opt(tz)),
                    "ms" => {
                        Arc::new(TimestampMillisecondArray::from(vec![n]).with_timezone_opt(tz))
                    }
                    "us" => {
                        Arc::new(TimestampMicrosecondArray::from(vec![n]).with_timezone_opt(tz))
                    }
                    _ => Arc::new(TimestampNanosecondArray::from(vec![n]).with_timezone_opt(tz)),
                };
                a
            }
            "iv_mdn" => {
                let n = nums(v);
                Arc::new(IntervalMonthDayNanoArray::from(vec![
                    IntervalMonthDayNano::new(n[0] as i32, n[1] as i32, n[2]),
                ]))
            }
            "iv_ym" => Arc::new(IntervalYearMonthArray::from(vec![v
                .parse::<i32>()
                .unwrap()])),
            "iv_dt" => {
                let n = nums(v);
                Arc::new(IntervalDayTimeArray::from(vec![IntervalDayTime::new(
                    n[0] as i32,
                    n[1] as i32,
                )]))
            }
            other => panic!("unknown kind {other}"),
        }
    }

    #[test]
    fn postgres_text_and_binary_of_each_arrow_type() {
        let mut n = 0;
        for line in PG_VALUES.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            let [kind, value, sql, oid, typmod, typlen, text, bin] = f[..] else {
                panic!("bad line {line:?}");
            };
            let (kind, any_typmod) = match kind.strip_suffix('*') {
                Some(k) => (k, true),
                None => (kind, false),
            };
            let (kind, meta) = match kind.split_once('[') {
                Some((k, m)) => (k, Some(m.trim_end_matches(']'))),
                None => (kind, None),
            };
            let b = batch(array_of(kind, value), meta);
            let t = pg_type(b.schema().field(0)).unwrap();
            let what = format!("{kind} {value} ({sql})");
            assert_eq!(t.oid.to_string(), oid, "{what}");
            assert_eq!(t.ty.oid(), t.oid, "{what}");
            assert_eq!(t.typlen.to_string(), typlen, "{what}");
            if !any_typmod {
                assert_eq!(t.typmod.to_string(), typmod, "{what}");
            }
            let (got_text, got_bin) = one(&b);
            assert_eq!(got_text, text, "{what}");
            assert_eq!(hex::encode(&got_bin), bin, "{what}");
            if meta.is_none() {
                assert_eq!(text_value(b.column(0), 0).unwrap().as_deref(), Some(text));
            }
            n += 1;
        }
        assert!(n > 150, "{n} cases");
    }

    #[test]
    fn parameters_become_typed_literals() {
        let mut n = 0;
        for line in PG_PARAMS.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let [ty, format, value, expect] = line.split('\t').collect::<Vec<_>>()[..] else {
                panic!("bad line {line:?}");
            };
            let t = match ty {
                "int2" => Type::INT2,
                "int4" => Type::INT4,
                "int8" => Type::INT8,
                "float4" => Type::FLOAT4,
                "float8" => Type::FLOAT8,
                "numeric" => Type::NUMERIC,
                "bool" => Type::BOOL,
                "date" => Type::DATE,
                "timestamp" => Type::TIMESTAMP,
                "timestamptz" => Type::TIMESTAMPTZ,
                "interval" => Type::INTERVAL,
                "text" => Type::TEXT,
                "varchar" => Type::VARCHAR,
                "bpchar" => Type::BPCHAR,
                other => panic!("unknown type {other}"),
            };
            let binary = format == "binary";
            let bytes = if binary {
                hex::decode(value).unwrap_or_else(|_| vec![0; 3]) // odd hex: malformed
            } else {
                value.as_bytes().to_vec()
            };
            let got = param_literal(&t, &bytes, binary);
            match expect.strip_prefix("ERROR ") {
                Some(code) => match got {
                    Err(e) => assert_eq!(sqlstate(&e), code, "{ty} {format} {value:?}: {e}"),
                    Ok(l) => panic!("{ty} {format} {value:?}: {l}, expected {code}"),
                },
                None => assert_eq!(
                    got.unwrap_or_else(|e| panic!("{ty} {format} {value:?}: {e}")),
                    expect,
                    "{ty} {format} {value:?}"
                ),
            }
            n += 1;
        }
        assert!(n > 200, "{n} cases");
    }

    /// Decodes the binary value with the client's own FromSql.
    fn from_sql<'a, T: FromSql<'a>>(t: &PgType, b: &'a [u8]) -> T {
        assert!(T::accepts(&t.ty), "{:?}", t.ty);
        T::from_sql(&t.ty, b).unwrap()
    }

    #[test]
    fn integers_and_floats_round_trip_through_postgres_types() {
        let mut r = Rng(1);
        let mut i16s: Vec<i16> = vec![0, 1, -1, i16::MAX, i16::MIN];
        let mut i32s: Vec<i32> = vec![0, 1, -1, i32::MAX, i32::MIN];
        let mut i64s: Vec<i64> = vec![0, 1, -1, i64::MAX, i64::MIN];
        let mut f32s: Vec<f32> = vec![0.0, -0.0, 0.1, 1e6, 1e-45, f32::MAX, f32::MIN_POSITIVE];
        let mut f64s: Vec<f64> = vec![0.0, -0.0, 0.1, 1e15, 5e-324, f64::MAX, f64::MIN_POSITIVE];
        for _ in 0..2000 {
            i16s.push(r.next() as i16);
            i32s.push(r.next() as i32);
            i64s.push(r.next() as i64);
            let b32 = r.next() as u32;
            if f32::from_bits(b32).is_finite() {
                f32s.push(f32::from_bits(b32));
            }
            let b64 = r.next();
            if f64::from_bits(b64).is_finite() {
                f64s.push(f64::from_bits(b64));
            }
            // Decimal-looking floats too.
            f64s.push(r.range(-1_000_000, 1_000_000) as f64 / 100.0);
            f32s.push(r.range(-1_000_000, 1_000_000) as f32 / 1000.0);
        }
        macro_rules! check {
            ($arr:expr, $vals:expr, $t:ty) => {{
                let b = batch(Arc::new($arr), None);
                let t = pg_type(b.schema().field(0)).unwrap();
                for ((text, bin), v) in both(&b).into_iter().zip($vals.iter()) {
                    let (text, bin) = (text.unwrap(), bin.unwrap());
                    let back: $t = from_sql(&t, &bin);
                    assert_eq!(back.to_bits_or_self(), v.to_bits_or_self(), "{v:?}");
                    let parsed: $t = text.parse().unwrap();
                    assert_eq!(
                        parsed.to_bits_or_self(),
                        v.to_bits_or_self(),
                        "{v:?} {text}"
                    );
                }
            }};
        }
        check!(Int16Array::from(i16s.clone()), i16s, i16);
        check!(Int32Array::from(i32s.clone()), i32s, i32);
        check!(Int64Array::from(i64s.clone()), i64s, i64);
        check!(Float32Array::from(f32s.clone()), f32s, f32);
        check!(Float64Array::from(f64s.clone()), f64s, f64);
        // Narrow and unsigned Arrow integers widen to the narrowest PostgreSQL type.
        let u8s: Vec<u8> = (0..=255).collect();
        let b = batch(Arc::new(UInt8Array::from(u8s.clone())), None);
        let t = pg_type(b.schema().field(0)).unwrap();
        for ((_, bin), v) in both(&b).into_iter().zip(&u8s) {
            assert_eq!(from_sql::<i16>(&t, &bin.unwrap()), i16::from(*v));
        }
        let u32s: Vec<u32> = (0..500).map(|_| r.next() as u32).collect();
        let b = batch(Arc::new(UInt32Array::from(u32s.clone())), None);
        let t = pg_type(b.schema().field(0)).unwrap();
        for ((_, bin), v) in both(&b).into_iter().zip(&u32s) {
            assert_eq!(from_sql::<i64>(&t, &bin.unwrap()), i64::from(*v));
        }
        // Float16 as its exact float4.
        let h: Vec<half::f16> = (0..2000u16)
            .map(|_| half::f16::from_bits(r.next() as u16))
            .filter(|h| h.is_finite())
            .collect();
        let b = batch(Arc::new(Float16Array::from(h.clone())), None);
        let t = pg_type(b.schema().field(0)).unwrap();
        for ((text, bin), v) in both(&b).into_iter().zip(&h) {
            assert_eq!(from_sql::<f32>(&t, &bin.unwrap()), v.to_f32());
            assert_eq!(text.unwrap().parse::<f32>().unwrap(), v.to_f32());
        }
    }

    /// Bit-exact comparison for floats (NaN, -0), plain equality otherwise.
    trait BitsOrSelf {
        type Out: PartialEq + std::fmt::Debug;
        fn to_bits_or_self(&self) -> Self::Out;
    }
    macro_rules! bits_self {
        ($($t:ty),*) => {$(impl BitsOrSelf for $t {
            type Out = $t;
            fn to_bits_or_self(&self) -> $t { *self }
        })*};
    }
    bits_self!(i16, i32, i64);
    impl BitsOrSelf for f32 {
        type Out = u32;
        fn to_bits_or_self(&self) -> u32 {
            self.to_bits()
        }
    }
    impl BitsOrSelf for f64 {
        type Out = u64;
        fn to_bits_or_self(&self) -> u64 {
            self.to_bits()
        }
    }

    #[test]
    fn float_text_is_shortest_round_trip() {
        assert_eq!(format_f32(0.1), "0.1");
        assert_eq!(format_f32(1e6), "1e+06");
        assert_eq!(format_f32(123_456.0), "123456");
        assert_eq!(format_f32(f32::NAN), "NaN");
        assert_eq!(format_f32(-0.0), "-0");
        assert_eq!(format_f64(0.1), "0.1");
        assert_eq!(format_f64(f64::from(0.1f32)), "0.10000000149011612");
        assert_eq!(format_f64(1.5), "1.5");
        assert_eq!(format_f64(3.0), "3");
        assert_eq!(format_f64(1e20), "1e+20");
        assert_eq!(format_f64(1.25e-5), "1.25e-05");
        assert_eq!(format_f64(1e100), "1e+100");
        assert_eq!(format_f64(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(format_f64(999_999_999_999_999.9), "999999999999999.9");
        assert_eq!(format_f64(9_999_999_999_999_998.0), "9.999999999999998e+15");
    }

    #[test]
    fn numerics_round_trip_through_rust_decimal() {
        // rust_decimal holds 96-bit mantissas, scales 0..=28.
        let mut r = Rng(2);
        let max96 = (1i128 << 96) - 1;
        let mut cases: Vec<(i128, i8)> = vec![
            (0, 0),
            (0, 18),
            (1, 18),
            (-1, 18),
            (max96, 0),
            (-max96, 0),
            (max96, 28),
            (-max96, 18),
            (10_000, 0),
            (10_000, 4),
            (-5, 3),
            (123_456_789, 28),
            (99_990_000, 4),
        ];
        for _ in 0..5000 {
            let bits = r.range(0, 96) as u32;
            let v = if bits == 0 {
                0
            } else {
                r.i128() & ((1i128 << bits) - 1)
            };
            let v = if r.next().is_multiple_of(2) { v } else { -v };
            cases.push((v, r.range(0, 28) as i8));
            // Round numbers (trailing zero digit groups).
            let p = 10i128.pow(r.range(0, 20) as u32);
            cases.push((r.range(-99_999, 99_999) as i128 * p, r.range(0, 18) as i8));
        }
        for (v, s) in cases {
            let a = Decimal128Array::from(vec![v])
                .with_precision_and_scale(38, s)
                .unwrap();
            let b = batch(Arc::new(a), None);
            let t = pg_type(b.schema().field(0)).unwrap();
            let (text, bin) = one(&b);
            let want = Decimal::from_i128_with_scale(v, s as u32);
            let got: Decimal = from_sql(&t, &bin);
            assert_eq!(got, want, "{v} scale {s}");
            assert_eq!(got.scale(), s as u32, "{v} scale {s}");
            assert_eq!(text, want.to_string(), "{v} scale {s}");
            assert_eq!(numeric_from_binary(&bin).unwrap(), text);
            assert_eq!(parse_numeric(&text).unwrap(), text);
        }
    }

    #[test]
    fn numerics_round_trip_over_the_whole_decimal128_range() {
        // Beyond rust_decimal: our own numeric_recv, and the text's digits.
        let mut r = Rng(3);
        let mut cases: Vec<(i128, i8)> = vec![
            (i128::MAX, 0),
            (i128::MIN, 0),
            (i128::MAX, 38),
            (i128::MIN, 38),
            (i128::MIN + 1, 20),
            (10i128.pow(38) - 1, 0),
            (-(10i128.pow(38) - 1), 38),
            (1, 38),
            (5, -5),
            (-123, -10),
        ];
        for _ in 0..5000 {
            cases.push((r.i128() >> r.range(0, 126), r.range(-10, 38) as i8));
        }
        for (v, s) in cases {
            let a = Decimal128Array::from(vec![v])
                .with_precision_and_scale(38, s)
                .unwrap();
            let b = batch(Arc::new(a), None);
            let (text, bin) = one(&b);
            // The text is the unscaled digits with the point s from the right.
            let digits: String = text.chars().filter(|c| c.is_ascii_digit()).collect();
            let frac = text.split_once('.').map_or(0, |(_, f)| f.len());
            assert_eq!(frac, s.max(0) as usize, "{v} {s}: {text}");
            let unscaled: u128 = if s >= 0 {
                digits.parse().unwrap()
            } else {
                let d = &digits[..digits.len() - if v == 0 { 0 } else { (-s) as usize }];
                d.parse().unwrap()
            };
            assert_eq!(unscaled, v.unsigned_abs(), "{v} {s}: {text}");
            assert_eq!(text.starts_with('-'), v < 0, "{v} {s}: {text}");
            assert_eq!(numeric_from_binary(&bin).unwrap(), text, "{v} {s}");
            // numeric_send's invariants: no leading/trailing zero groups.
            let nd = i16::from_be_bytes([bin[0], bin[1]]) as usize;
            assert_eq!(bin.len(), 8 + 2 * nd);
            if nd > 0 {
                assert_ne!(&bin[8..10], &[0, 0]);
                assert_ne!(&bin[bin.len() - 2..], &[0, 0]);
            } else {
                assert_eq!(&bin[2..6], &[0, 0, 0, 0]); // weight 0, positive
            }
        }
        // Decimal256 too.
        for v in [i256::MAX, i256::MIN, i256::from_i128(-1), i256::ZERO] {
            let a = Decimal256Array::from(vec![v])
                .with_precision_and_scale(76, 30)
                .unwrap();
            let (text, bin) = one(&batch(Arc::new(a), None));
            assert_eq!(numeric_from_binary(&bin).unwrap(), text);
        }
    }

    #[test]
    fn dates_and_timestamps_round_trip_through_chrono() {
        let mut r = Rng(4);
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        // chrono's range is about ±262000 years.
        let mut days: Vec<i32> = vec![0, -1, 10_957, -719_162, -719_163, -719_528, 19_782];
        for _ in 0..3000 {
            days.push(r.range(-2_440_588, 95_000_000) as i32);
            days.push(r.range(-800_000, 3_000_000) as i32);
        }
        let b = batch(Arc::new(Date32Array::from(days.clone())), None);
        let t = pg_type(b.schema().field(0)).unwrap();
        for ((text, bin), d) in both(&b).into_iter().zip(&days) {
            let (text, bin) = (text.unwrap(), bin.unwrap());
            let want = epoch + chrono::Duration::days(i64::from(*d));
            assert_eq!(from_sql::<NaiveDate>(&t, &bin), want, "{d}");
            assert_eq!(parse_date(&text).unwrap(), PgDate::Days(*d), "{text}");
            if (1..=9999).contains(&chrono::Datelike::year(&want)) {
                assert_eq!(text, want.format("%Y-%m-%d").to_string());
            }
        }
        let mut us: Vec<i64> = vec![0, -1, 1, PG_EPOCH_MICROS, i64::MAX, -62_135_596_800_000_001];
        for _ in 0..3000 {
            us.push(r.range(PG_MIN_TIMESTAMP + PG_EPOCH_MICROS, i64::MAX));
            us.push(r.range(-62_135_596_800, 253_402_300_799) * 1_000_000);
            us.push(r.range(-62_135_596_800_000_000, 253_402_300_799_999_999));
        }
        for tz in [None, Some("UTC")] {
            let a = TimestampMicrosecondArray::from(us.clone()).with_timezone_opt(tz);
            let b = batch(Arc::new(a), None);
            let t = pg_type(b.schema().field(0)).unwrap();
            for ((text, bin), u) in both(&b).into_iter().zip(&us) {
                let (text, bin) = (text.unwrap(), bin.unwrap());
                let back = parse_timestamp(&text, tz.is_some()).unwrap();
                assert_eq!(back, u - PG_EPOCH_MICROS, "{text}");
                let Some(want) = DateTime::from_timestamp_micros(*u) else {
                    continue; // beyond chrono's years
                };
                if tz.is_some() {
                    assert_eq!(from_sql::<DateTime<Utc>>(&t, &bin), want, "{u}");
                } else {
                    assert_eq!(from_sql::<NaiveDateTime>(&t, &bin), want.naive_utc(), "{u}");
                }
                let year = chrono::Datelike::year(&want);
                if (1..=9999).contains(&year) {
                    let s = want.naive_utc().format("%Y-%m-%d %H:%M:%S%.f").to_string();
                    let s = if s.contains('.') {
                        s.trim_end_matches('0').trim_end_matches('.').to_string()
                    } else {
                        s
                    };
                    let s = if tz.is_some() { format!("{s}+00") } else { s };
                    assert_eq!(text, s);
                }
            }
        }
    }

    #[test]
    fn intervals_round_trip() {
        let mut r = Rng(5);
        let mut ivs = vec![
            IntervalMonthDayNano::new(0, 0, 0),
            IntervalMonthDayNano::new(i32::MAX, i32::MAX, i64::MAX / 1000 * 1000),
            IntervalMonthDayNano::new(i32::MIN, i32::MIN, i64::MIN / 1000 * 1000),
            IntervalMonthDayNano::new(-1, 1, -1000),
        ];
        for _ in 0..3000 {
            let months = match r.next() % 3 {
                0 => 0,
                1 => r.range(-30, 30) as i32,
                _ => r.next() as i32,
            };
            let days = match r.next() % 3 {
                0 => 0,
                1 => r.range(-40, 40) as i32,
                _ => r.next() as i32,
            };
            let nanos = match r.next() % 4 {
                0 => 0,
                1 => r.range(-86_400, 86_400) * 1_000_000_000,
                2 => r.range(-1_000_000_000_000, 1_000_000_000_000) * 1000,
                _ => (r.next() as i64) / 1000 * 1000,
            };
            ivs.push(IntervalMonthDayNano::new(months, days, nanos));
        }
        let b = batch(Arc::new(IntervalMonthDayNanoArray::from(ivs.clone())), None);
        for ((text, bin), v) in both(&b).into_iter().zip(&ivs) {
            let (text, bin) = (text.unwrap(), bin.unwrap());
            let want = PgInterval {
                months: v.months,
                days: v.days,
                micros: v.nanoseconds / 1000,
            };
            assert_eq!(bin.len(), 16);
            assert_eq!(
                i64::from_be_bytes(bin[..8].try_into().unwrap()),
                want.micros
            );
            assert_eq!(
                i32::from_be_bytes(bin[8..12].try_into().unwrap()),
                want.days
            );
            assert_eq!(
                i32::from_be_bytes(bin[12..].try_into().unwrap()),
                want.months
            );
            assert_eq!(parse_interval(&text).unwrap(), want, "{text}");
            // And the literal made of it reads back the same.
            let lit = interval_literal(want);
            assert_eq!(parse_interval(&lit).unwrap(), want, "{lit}");
        }
    }

    #[test]
    fn strings_and_bytes_round_trip() {
        let mut r = Rng(6);
        let pool = [
            'a', 'Z', ' ', '\'', '\\', 'é', 'ß', '✓', '𝄞', '\n', '\t', '0',
        ];
        let strings: Vec<String> = (0..500)
            .map(|_| {
                (0..r.range(0, 40))
                    .map(|_| pool[r.range(0, pool.len() as i64 - 1) as usize])
                    .collect()
            })
            .collect();
        for meta in [None, Some("varchar(100)"), Some("text")] {
            let b = batch(Arc::new(StringArray::from(strings.clone())), meta);
            let t = pg_type(b.schema().field(0)).unwrap();
            for ((text, bin), s) in both(&b).into_iter().zip(&strings) {
                assert_eq!(from_sql::<String>(&t, &bin.unwrap()), *s);
                assert_eq!(text.unwrap(), *s);
            }
        }
        // bpchar(n): padded to n characters.
        let b = batch(
            Arc::new(StringViewArray::from(vec!["é", "abcdef"])),
            Some("BPCHAR(4)"),
        );
        let t = pg_type(b.schema().field(0)).unwrap();
        assert_eq!((t.oid, t.typmod), (1042, 8));
        let got: Vec<String> = both(&b)
            .into_iter()
            .map(|(_, bin)| from_sql::<String>(&t, &bin.unwrap()))
            .collect();
        assert_eq!(got, ["é   ", "abcdef"]);
        let blobs: Vec<Vec<u8>> = (0..200)
            .map(|_| (0..r.range(0, 50)).map(|_| r.next() as u8).collect())
            .collect();
        let b = batch(Arc::new(BinaryArray::from_iter_values(blobs.iter())), None);
        let t = pg_type(b.schema().field(0)).unwrap();
        for ((text, bin), v) in both(&b).into_iter().zip(&blobs) {
            assert_eq!(from_sql::<Vec<u8>>(&t, &bin.unwrap()), *v);
            assert_eq!(text.unwrap(), format!("\\x{}", hex::encode(v)));
        }
        let b = batch(Arc::new(BooleanArray::from(vec![true, false])), None);
        let t = pg_type(b.schema().field(0)).unwrap();
        let got: Vec<(String, bool)> = both(&b)
            .into_iter()
            .map(|(s, bin)| (s.unwrap(), from_sql::<bool>(&t, &bin.unwrap())))
            .collect();
        assert_eq!(got, [("t".to_string(), true), ("f".to_string(), false)]);
    }

    #[test]
    fn nulls_and_null_columns() {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![Some(1), None])),
            Arc::new(NullArray::new(2)),
            Arc::new(StringArray::from(vec![None, Some("x")])),
            Arc::new(
                Decimal128Array::from(vec![None, Some(5)])
                    .with_precision_and_scale(3, 1)
                    .unwrap(),
            ),
            Arc::new(IntervalMonthDayNanoArray::from(vec![None, None])),
        ];
        let fields: Vec<Field> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        assert_eq!(pg_type(&fields[1]).unwrap().oid, 25);
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
        for binary in [false, true] {
            let rows = encode_rows(&b, &[binary; 5]).unwrap();
            let null = (-1i32).to_be_bytes();
            let mut want0 = Vec::new();
            if binary {
                want0.extend(4i32.to_be_bytes());
                want0.extend(1i32.to_be_bytes());
            } else {
                want0.extend(1i32.to_be_bytes());
                want0.push(b'1');
            }
            want0.extend(null.repeat(4));
            assert_eq!(rows[0], want0, "binary {binary}");
            let mut want1 = null.repeat(2);
            want1.extend(1i32.to_be_bytes());
            want1.push(b'x');
            if binary {
                // numeric 0.5: one digit 5000, weight -1, dscale 1.
                want1.extend(10i32.to_be_bytes());
                want1.extend([0, 1, 0xff, 0xff, 0, 0, 0, 1, 0x13, 0x88]);
            } else {
                want1.extend(3i32.to_be_bytes());
                want1.extend(b"0.5");
            }
            want1.extend(null);
            assert_eq!(rows[1], want1, "binary {binary}");
        }
        assert_eq!(text_value(b.column(1).as_ref(), 0).unwrap(), None);
        assert_eq!(text_value(b.column(0).as_ref(), 1).unwrap(), None);
        assert_eq!(
            text_value(b.column(0).as_ref(), 0).unwrap().as_deref(),
            Some("1")
        );
    }

    #[test]
    fn values_postgres_cannot_hold_are_errors() {
        let b = batch(Arc::new(UInt64Array::from(vec![1u64 << 63])), None);
        let e = encode_rows(&b, &[false]).unwrap_err();
        assert_eq!(sqlstate(&e), "22003");
        let b = batch(
            Arc::new(TimestampMicrosecondArray::from(vec![i64::MIN])),
            None,
        );
        assert_eq!(sqlstate(&encode_rows(&b, &[true]).unwrap_err()), "22008");
        let b = batch(
            Arc::new(TimestampSecondArray::from(vec![i64::MAX / 2])),
            None,
        );
        assert_eq!(sqlstate(&encode_rows(&b, &[false]).unwrap_err()), "22008");
        let b = batch(Arc::new(Date32Array::from(vec![i32::MAX])), None);
        assert_eq!(sqlstate(&encode_rows(&b, &[false]).unwrap_err()), "22008");
        let b = batch(Arc::new(Date32Array::from(vec![-2_440_589])), None); // 4714-11-23 BC
        assert_eq!(sqlstate(&encode_rows(&b, &[true]).unwrap_err()), "22008");
        // No PostgreSQL type: 0A000 naming the Arrow type.
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)])]);
        let b = batch(Arc::new(list), None);
        let e = pg_type(b.schema().field(0)).unwrap_err();
        assert_eq!(sqlstate(&e), "0A000");
        assert!(e.to_string().contains("List("), "{e}");
        assert_eq!(sqlstate(&encode_rows(&b, &[false]).unwrap_err()), "0A000");
        let e = text_value(b.column(0).as_ref(), 0).unwrap_err();
        assert_eq!(sqlstate(&e), "0A000");
        let t = Field::new("t", ArrowType::Time64(TimeUnit::Microsecond), true);
        assert_eq!(sqlstate(&pg_type(&t).unwrap_err()), "0A000");
        // Unreadable metadata.
        for m in ["bpchar(0)", "varchar(x)", "int4", "text(5)", "bpchar(5"] {
            let b = batch(Arc::new(StringArray::from(vec!["a"])), Some(m));
            assert_eq!(
                sqlstate(&pg_type(b.schema().field(0)).unwrap_err()),
                "XX000",
                "{m}"
            );
        }
    }

    #[test]
    fn timestamp_units_and_rounding() {
        // Nanoseconds round to the nearest microsecond, ties to even.
        for (ns, us) in [
            (1500, 2),
            (2500, 2),
            (-1500, -2),
            (-500, 0),
            (499, 0),
            (501, 1),
        ] {
            assert_eq!(nanos_to_micros(ns), us, "{ns}");
        }
        let b = batch(
            Arc::new(TimestampNanosecondArray::from(vec![
                1_704_110_400_000_002_500,
            ])),
            None,
        );
        assert_eq!(one(&b).0, "2024-01-01 12:00:00.000002");
        // Every unit gives the same instant.
        let s = 1_704_110_400i64;
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(TimestampSecondArray::from(vec![s])),
            Arc::new(TimestampMillisecondArray::from(vec![s * 1000])),
            Arc::new(TimestampMicrosecondArray::from(vec![s * 1_000_000])),
            Arc::new(TimestampNanosecondArray::from(vec![s * 1_000_000_000])),
        ];
        for a in arrays {
            assert_eq!(one(&batch(a, None)).0, "2024-01-01 12:00:00");
        }
        // A timestamptz's text is in UTC, whatever zone the Arrow type names.
        let a = TimestampMicrosecondArray::from(vec![s * 1_000_000]).with_timezone("+05:00");
        let b = batch(Arc::new(a), None);
        assert_eq!(pg_type(b.schema().field(0)).unwrap().oid, 1184);
        assert_eq!(one(&b).0, "2024-01-01 12:00:00+00");
    }

    #[test]
    fn parameter_parsers_round_trip() {
        let mut r = Rng(7);
        for _ in 0..3000 {
            // Numeric text in, canonical text out, stable.
            let v = r.i128() >> r.range(0, 126);
            let s = r.range(0, 30) as i8;
            let mut out = Vec::new();
            numeric_text(v < 0, &v.unsigned_abs().to_string(), s, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(parse_numeric(&text).unwrap(), text);
            let mut bin = Vec::new();
            numeric_send(v < 0, &v.unsigned_abs().to_string(), s, &mut bin);
            assert_eq!(numeric_from_binary(&bin).unwrap(), text);
            let lit = param_literal(&Type::NUMERIC, &bin, true).unwrap();
            assert_eq!(lit, format!("CAST('{text}' AS NUMERIC)"));
            // Dates and timestamps through their binary parameter form.
            let d = r.range(PG_MIN_DATE, PG_END_DATE - 1) as i32;
            let lit = param_literal(&Type::DATE, &d.to_be_bytes(), true).unwrap();
            let text = format_date(d + PG_EPOCH_DAYS);
            assert_eq!(lit, format!("DATE '{text}'"));
            assert_eq!(parse_date(&text).unwrap(), PgDate::Days(d + PG_EPOCH_DAYS));
            let us = r.range(PG_MIN_TIMESTAMP, PG_END_TIMESTAMP - 1);
            let lit = param_literal(&Type::TIMESTAMP, &us.to_be_bytes(), true).unwrap();
            let text = format_timestamp(us, false);
            assert_eq!(lit, format!("TIMESTAMP '{text}'"));
            assert_eq!(parse_timestamp(&text, false).unwrap(), us);
            // Floats: binary and text parameters agree.
            let f = f64::from_bits(r.next());
            if f.is_finite() {
                let a = param_literal(&Type::FLOAT8, &f.to_bits().to_be_bytes(), true).unwrap();
                let b = param_literal(&Type::FLOAT8, format_f64(f).as_bytes(), false).unwrap();
                assert_eq!(a, b);
            }
        }
    }
}
