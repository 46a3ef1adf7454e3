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
