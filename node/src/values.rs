//! Result values for the Postgres wire: type OIDs, text and binary encodings of Arrow
//! columns, and the date arithmetic both need.

use arrow_array::cast::AsArray;
use arrow_array::types::{Date32Type, Float64Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType as ArrowType;

use crate::error::{Error, Result};

/// Days from 1970-01-01 to 2000-01-01 (the Postgres binary date epoch).
pub const PG_EPOCH_DAYS: i32 = 10_957;

/// Postgres type OID of an Arrow column type.
pub fn pg_oid(t: &ArrowType) -> u32 {
    match t {
        ArrowType::Int16 => 21,
        ArrowType::Int32 => 23,
        ArrowType::Int64 | ArrowType::UInt32 | ArrowType::UInt64 => 20,
        ArrowType::Float32 => 700,
        ArrowType::Float64 => 701,
        ArrowType::Decimal128(_, _) => 1700,
        ArrowType::Date32 => 1082,
        ArrowType::Timestamp(_, None) => 1114,
        ArrowType::Boolean => 16,
        _ => 25,
    }
}

/// (year, month, day) of a day count since 1970-01-01 (proleptic Gregorian).
pub fn civil_from_days(z: i32) -> (i64, u32, u32) {
    let z = i64::from(z) + 719_468;
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

/// `YYYY-MM-DD` of a day count since 1970-01-01.
pub fn format_date(days: i32) -> String {
    let (y, m, d) = civil_from_days(days);
    if y <= 0 {
        format!("{:04}-{m:02}-{d:02} BC", 1 - y)
    } else {
        format!("{y:04}-{m:02}-{d:02}")
    }
}

/// A float in Postgres' text style: shortest round-trip digits, exponent form
/// (`1e+20`, `1e-05`) outside [1e-4, 1e15), `NaN`, `Infinity`, `-Infinity`.
pub fn format_f64(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = x.abs();
    if a != 0.0 && !(1e-4..1e15).contains(&a) {
        let s = format!("{x:e}");
        if let Some((m, e)) = s.split_once('e') {
            let exp: i32 = e.parse().unwrap_or(0);
            let sign = if exp < 0 { '-' } else { '+' };
            return format!("{m}e{sign}{:02}", exp.abs());
        }
        s
    } else {
        format!("{x}")
    }
}

/// Text form of row `i` of `col` (None = NULL).
pub fn text_value(col: &dyn Array, i: usize) -> Result<Option<String>> {
    if col.is_null(i) {
        return Ok(None);
    }
    Ok(Some(match col.data_type() {
        ArrowType::Int32 => col.as_primitive::<Int32Type>().value(i).to_string(),
        ArrowType::Int64 => col.as_primitive::<Int64Type>().value(i).to_string(),
        ArrowType::Float64 => format_f64(col.as_primitive::<Float64Type>().value(i)),
        ArrowType::Utf8 => col.as_string::<i32>().value(i).to_string(),
        ArrowType::Date32 => format_date(col.as_primitive::<Date32Type>().value(i)),
        ArrowType::Boolean => if col.as_boolean().value(i) { "t" } else { "f" }.to_string(),
        other => {
            return Err(Error::sql(
                "XX000",
                format!("cannot send a column of arrow type {other}"),
            ))
        }
    }))
}

/// Appends the Postgres binary form of row `i` of `col` (NULL excluded).
fn binary_value(col: &dyn Array, i: usize, out: &mut Vec<u8>) -> Result<()> {
    match col.data_type() {
        ArrowType::Int32 => out.extend(col.as_primitive::<Int32Type>().value(i).to_be_bytes()),
        ArrowType::Int64 => out.extend(col.as_primitive::<Int64Type>().value(i).to_be_bytes()),
        ArrowType::Float64 => out.extend(
            col.as_primitive::<Float64Type>()
                .value(i)
                .to_bits()
                .to_be_bytes(),
        ),
        ArrowType::Utf8 => out.extend(col.as_string::<i32>().value(i).as_bytes()),
        ArrowType::Date32 => out.extend(
            col.as_primitive::<Date32Type>()
                .value(i)
                .wrapping_sub(PG_EPOCH_DAYS)
                .to_be_bytes(),
        ),
        ArrowType::Boolean => out.push(u8::from(col.as_boolean().value(i))),
        other => {
            return Err(Error::sql(
                "XX000",
                format!("cannot send a column of arrow type {other}"),
            ))
        }
    }
    Ok(())
}

/// Encodes every row of `batch` as the body of a Postgres DataRow message (per field:
/// `i32` length or -1, then the bytes); `binary[c]` selects binary format for column c.
pub fn encode_rows(batch: &RecordBatch, binary: &[bool]) -> Result<Vec<Vec<u8>>> {
    let mut rows = Vec::with_capacity(batch.num_rows());
    let cols = batch.columns();
    for r in 0..batch.num_rows() {
        let mut out = Vec::with_capacity(16 * cols.len());
        for (c, col) in cols.iter().enumerate() {
            if col.is_null(r) {
                out.extend((-1i32).to_be_bytes());
                continue;
            }
            let at = out.len();
            out.extend(0i32.to_be_bytes());
            if binary.get(c).copied().unwrap_or(false) {
                binary_value(col.as_ref(), r, &mut out)?;
            } else if let Some(s) = text_value(col.as_ref(), r)? {
                out.extend(s.as_bytes());
            }
            let len = (out.len() - at - 4) as i32;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        rows.push(out);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_floats() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(PG_EPOCH_DAYS), "2000-01-01");
        assert_eq!(format_date(19_782), "2024-02-29");
        assert_eq!(format_date(-1), "1969-12-31");
        assert_eq!(format_f64(1.5), "1.5");
        assert_eq!(format_f64(3.0), "3");
        assert_eq!(format_f64(1e20), "1e+20");
        assert_eq!(format_f64(1.25e-5), "1.25e-05");
        assert_eq!(format_f64(f64::NEG_INFINITY), "-Infinity");
    }
}
