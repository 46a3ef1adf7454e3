//! Parsing `COPY ... FROM` input into rows of a table, all or nothing: the first bad
//! line fails the whole COPY with its line number, before anything is loaded.
//!
//! Two formats: CSV (the `csv` crate; delimiter, quote, header and NULL string from the
//! statement) and Postgres' text format (tab-separated, `\N` for NULL, backslash
//! escapes), chosen when the quote character is 0 (the planner's encoding of it).
//! With a column list (`COPY t (c, a) FROM ...`) each record holds those columns and
//! the others are NULL.

use smrdb_tstore::{TableSchema, Value};

use crate::error::{store_sqlstate, Error, Result};

/// How the input is laid out (mirrors the planner's `CsvFormat`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    /// First line is a header to skip.
    pub header: bool,
    /// Field delimiter.
    pub delimiter: u8,
    /// The string that means NULL.
    pub null: String,
    /// Quote character (CSV).
    pub quote: u8,
    /// Postgres text format instead of CSV.
    pub text: bool,
    /// Table column of each field; `None` = all columns in table order.
    pub columns: Option<Vec<usize>>,
}

fn coerce(
    schema: &TableSchema,
    table: &str,
    line: u64,
    mapping: Option<&[usize]>,
    fields: Vec<Option<String>>,
) -> Result<Vec<Value>> {
    let want = mapping.map_or(schema.columns.len(), <[usize]>::len);
    if fields.len() != want {
        return Err(Error::sql(
            "22P04",
            format!(
                "COPY {table}, line {line}: expected {want} columns, got {}",
                fields.len()
            ),
        ));
    }
    let fields = match mapping {
        None => fields,
        Some(m) => {
            let mut full = vec![None; schema.columns.len()];
            for (f, &c) in fields.into_iter().zip(m) {
                if let Some(slot) = full.get_mut(c) {
                    *slot = f;
                }
            }
            full
        }
    };
    fields
        .into_iter()
        .zip(&schema.columns)
        .map(|(f, c)| match f {
            None if !c.nullable => Err(Error::sql(
                "23502",
                format!(
                    "COPY {table}, line {line}: null value in column \"{}\" violates not-null constraint",
                    c.name
                ),
            )),
            None => Ok(Value::Null),
            Some(s) => Value::Text(s).coerce_to(c.data_type).map_err(|e| {
                Error::sql(
                    store_sqlstate(&e),
                    format!("COPY {table}, line {line}, column {}: {e}", c.name),
                )
            }),
        })
        .collect()
}

fn unescape_text(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut it = field.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(o) => out.push(o),
            None => out.push('\\'),
        }
    }
    out
}

/// Parses `data` into rows of `schema`.
///
/// # Errors
/// SQLSTATE 22P04 (bad format), 22P02 (bad value), 23502 (NULL in a NOT NULL column),
/// each naming the line.
pub fn parse(
    data: &[u8],
    table: &str,
    schema: &TableSchema,
    f: &CopyFormat,
) -> Result<Vec<Vec<Value>>> {
    let mut rows = Vec::new();
    if f.text {
        let text = std::str::from_utf8(data)
            .map_err(|e| Error::sql("22021", format!("COPY {table}: input is not UTF-8: {e}")))?;
        let delim = f.delimiter as char;
        for (i, line) in text.lines().enumerate() {
            let line_no = i as u64 + 1;
            if (f.header && i == 0) || line == "\\." {
                continue;
            }
            let fields = line
                .split(delim)
                .map(|s| (s != f.null).then(|| unescape_text(s)))
                .collect();
            rows.push(coerce(
                schema,
                table,
                line_no,
                f.columns.as_deref(),
                fields,
            )?);
        }
        return Ok(rows);
    }
    let records = csv_records(data, f.delimiter, f.quote)
        .map_err(|(line, e)| Error::sql("22P04", format!("COPY {table}, line {line}: {e}")))?;
    for (k, (line, rec)) in records.into_iter().enumerate() {
        if k == 0 && f.header {
            continue;
        }
        if rec.len() == 1 && !rec[0].1 && rec[0].0 == "\\." {
            continue;
        }
        // As PostgreSQL: a field is NULL only when it matches the NULL string and no
        // part of it was quoted (`""` is an empty string, an empty field is NULL).
        let fields = rec
            .into_iter()
            .map(|(s, quoted)| (quoted || s != f.null).then_some(s))
            .collect();
        rows.push(coerce(schema, table, line, f.columns.as_deref(), fields)?);
    }
    Ok(rows)
}

/// A CSV field's text and whether any part of it was quoted.
type CsvField = (String, bool);

/// Records with the line each starts on, or the line and description of an error.
type CsvRecords = std::result::Result<Vec<(u64, Vec<CsvField>)>, (u64, String)>;

/// Splits CSV input into records of fields, keeping what the `csv` crate cannot
/// report: whether a field was quoted. Quoting follows PostgreSQL: a quote character
/// anywhere in a field toggles quoting, a doubled quote inside quotes is one quote
/// character, delimiters and newlines inside quotes are data. Records end at LF or
/// CRLF outside quotes. Returns each record with the line it starts on.
///
/// # Errors
/// The starting line and a description for an unterminated quoted field or input that
/// is not UTF-8.
fn csv_records(data: &[u8], delim: u8, quote: u8) -> CsvRecords {
    let text = |line: u64, b: Vec<u8>| {
        String::from_utf8(b).map_err(|e| (line, format!("input is not UTF-8: {e}")))
    };
    let mut out = Vec::new();
    let (mut i, mut line) = (0usize, 1u64);
    while i < data.len() {
        let first = line;
        let mut fields = Vec::new();
        let (mut field, mut quoted, mut in_quotes) = (Vec::new(), false, false);
        loop {
            let Some(&b) = data.get(i) else {
                if in_quotes {
                    return Err((first, "unterminated CSV quoted field".into()));
                }
                fields.push((text(first, std::mem::take(&mut field))?, quoted));
                break;
            };
            if in_quotes {
                if b == quote {
                    if data.get(i + 1) == Some(&quote) {
                        field.push(quote);
                        i += 2;
                    } else {
                        in_quotes = false;
                        i += 1;
                    }
                    continue;
                }
                if b == b'\n' {
                    line += 1;
                }
                field.push(b);
                i += 1;
                continue;
            }
            if quote != 0 && b == quote {
                in_quotes = true;
                quoted = true;
                i += 1;
            } else if b == delim {
                fields.push((text(first, std::mem::take(&mut field))?, quoted));
                quoted = false;
                i += 1;
            } else if b == b'\n' || (b == b'\r' && data.get(i + 1) == Some(&b'\n')) {
                i += if b == b'\r' { 2 } else { 1 };
                line += 1;
                fields.push((text(first, std::mem::take(&mut field))?, quoted));
                break;
            } else {
                field.push(b);
                i += 1;
            }
        }
        out.push((first, fields));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_records_keep_quoting() {
        let r = csv_records(
            b"a,\"\",,\"x,\"\"y\"\"\"\nline\r\n\"multi\nline\",z\n",
            b',',
            b'"',
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                (
                    1,
                    vec![
                        ("a".into(), false),
                        ("".into(), true),
                        ("".into(), false),
                        ("x,\"y\"".into(), true)
                    ]
                ),
                (2, vec![("line".into(), false)]),
                (3, vec![("multi\nline".into(), true), ("z".into(), false)]),
            ]
        );
        // Expect: an unterminated quote is an error naming the line it starts on.
        assert_eq!(
            csv_records(b"ok\n\"open,\nmore", b',', b'"').unwrap_err().0,
            2
        );
    }
    use smrdb_tstore::{ColumnDef, DataType};

    fn schema() -> TableSchema {
        TableSchema::new(vec![
            ColumnDef::new("id", DataType::Int, false),
            ColumnDef::new("name", DataType::Text, true),
            ColumnDef::new("d", DataType::Date, true),
        ])
    }

    #[test]
    fn csv_with_header_and_nulls() {
        let f = CopyFormat {
            header: true,
            delimiter: b',',
            null: String::new(),
            quote: b'"',
            text: false,
            columns: None,
        };
        let rows = parse(
            b"id,name,d\n1,\"a,b\",2024-01-02\n2,,\n",
            "t",
            &schema(),
            &f,
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][1], Value::Text("a,b".into()));
        assert_eq!(rows[1][1], Value::Null);
        let err = parse(
            b"id,name,d\n1,a,2024-01-02\nx,b,2024-01-02\n",
            "t",
            &schema(),
            &f,
        )
        .unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        assert_eq!(err.sqlstate(), "22P02");
        let err = parse(b"id,name,d\n1,a\n", "t", &schema(), &f).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse(b"id,name,d\n,a,\n", "t", &schema(), &f).unwrap_err();
        assert_eq!(err.sqlstate(), "23502");
    }

    #[test]
    fn text_format() {
        let f = CopyFormat {
            header: false,
            delimiter: b'\t',
            null: "\\N".into(),
            quote: b'"',
            text: true,
            columns: None,
        };
        let rows = parse(
            b"1\ta\\tb\t\\N\n2\t\\N\t2020-02-02\n\\.\n",
            "t",
            &schema(),
            &f,
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][1], Value::Text("a\tb".into()));
        assert_eq!(rows[1][1], Value::Null);
        let f = CopyFormat {
            columns: Some(vec![2, 0]),
            ..f
        };
        let rows = parse(b"2020-02-02\t5\n", "t", &schema(), &f).unwrap();
        assert_eq!(rows[0][0], Value::Int(5));
        assert_eq!(rows[0][1], Value::Null);
    }
}
