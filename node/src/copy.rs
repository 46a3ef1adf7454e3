//! Parsing `COPY ... FROM` input into rows of a table, all or nothing: the first bad
//! line fails the whole COPY with its line number, before anything is loaded.
//!
//! Two formats: CSV (the `csv` crate; delimiter, quote, header and NULL string from the
//! statement) and Postgres' text format (tab-separated, `\N` for NULL, backslash
//! escapes), chosen when the quote character is 0 (the planner's encoding of it).
//! With a column list (`COPY t (c, a) FROM ...`) each record holds those columns and
//! the others are NULL.

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use smrdb_tstore::types::coerce_column;
use smrdb_tstore::TableSchema;

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

/// Fields of the input, column by column, with the line of every row.
struct Columns {
    cols: Vec<Vec<Option<String>>>,
    lines: Vec<u64>,
}

impl Columns {
    fn push(
        &mut self,
        table: &str,
        line: u64,
        mapping: Option<&[usize]>,
        fields: Vec<Option<String>>,
    ) -> Result<()> {
        let want = mapping.map_or(self.cols.len(), <[usize]>::len);
        if fields.len() != want {
            return Err(Error::sql(
                "22P04",
                format!(
                    "COPY {table}, line {line}: expected {want} columns, got {}",
                    fields.len()
                ),
            ));
        }
        match mapping {
            None => {
                for (c, f) in self.cols.iter_mut().zip(fields) {
                    c.push(f);
                }
            }
            Some(m) => {
                let mut full = vec![None; self.cols.len()];
                for (f, &c) in fields.into_iter().zip(m) {
                    if let Some(slot) = full.get_mut(c) {
                        *slot = f;
                    }
                }
                for (c, f) in self.cols.iter_mut().zip(full) {
                    c.push(f);
                }
            }
        }
        self.lines.push(line);
        Ok(())
    }

    /// The rows as a batch of `schema`'s types; an error names the line and column.
    fn finish(self, table: &str, schema: &TableSchema) -> Result<RecordBatch> {
        let mut arrays = Vec::with_capacity(self.cols.len());
        for (vals, def) in self.cols.into_iter().zip(&schema.columns) {
            let text: ArrayRef = Arc::new(StringArray::from(vals));
            match coerce_column(def, &text) {
                Ok(a) => arrays.push(a),
                Err(e) => {
                    // The first row that fails on its own names the line.
                    let line = (0..text.len())
                        .find(|&i| coerce_column(def, &text.slice(i, 1)).is_err())
                        .map(|i| self.lines[i])
                        .unwrap_or(0);
                    return Err(Error::sql(
                        store_sqlstate(&e),
                        format!("COPY {table}, line {line}, column {}: {e}", def.name),
                    ));
                }
            }
        }
        RecordBatch::try_new_with_options(
            schema.to_arrow(),
            arrays,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(self.lines.len())),
        )
        .map_err(|e| Error::sql("XX000", e.to_string()))
    }
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

/// Parses `data` into rows of `schema` (coerced with PostgreSQL's input rules).
///
/// # Errors
/// SQLSTATE 22P04 (bad format), 22P02 (bad value), 22001 / 22003 (too long, out of
/// range), 23502 (NULL in a NOT NULL column), each naming the line.
pub fn parse(
    data: &[u8],
    table: &str,
    schema: &TableSchema,
    f: &CopyFormat,
) -> Result<RecordBatch> {
    let mut cols = Columns {
        cols: vec![Vec::new(); schema.columns.len()],
        lines: Vec::new(),
    };
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
            cols.push(table, line_no, f.columns.as_deref(), fields)?;
        }
        return cols.finish(table, schema);
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
        cols.push(table, line, f.columns.as_deref(), fields)?;
    }
    cols.finish(table, schema)
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
    use arrow_array::cast::AsArray;
    use arrow_array::Array;
    use smrdb_tstore::{ColumnDef, SqlType};

    fn schema() -> TableSchema {
        TableSchema::new(vec![
            ColumnDef::new("id", SqlType::Integer, false),
            ColumnDef::new("name", SqlType::Text, true),
            ColumnDef::new("d", SqlType::Date, true),
        ])
    }

    fn text(b: &RecordBatch, c: usize, r: usize) -> Option<String> {
        let a = b.column(c).as_string::<i32>();
        (!a.is_null(r)).then(|| a.value(r).to_string())
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
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(text(&rows, 1, 0).as_deref(), Some("a,b"));
        assert_eq!(text(&rows, 1, 1), None);
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
        assert_eq!(rows.num_rows(), 2);
        assert_eq!(text(&rows, 1, 0).as_deref(), Some("a\tb"));
        assert_eq!(text(&rows, 1, 1), None);
        let f = CopyFormat {
            columns: Some(vec![2, 0]),
            ..f
        };
        let rows = parse(b"2020-02-02\t5\n", "t", &schema(), &f).unwrap();
        assert_eq!(
            rows.column(0)
                .as_primitive::<arrow_array::types::Int32Type>()
                .value(0),
            5
        );
        assert_eq!(text(&rows, 1, 0), None);
    }
}
