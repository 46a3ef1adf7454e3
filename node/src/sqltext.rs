//! Statement text handling the planner does not do: splitting a query string into
//! statements (so each is planned against the catalog as left by the previous one)
//! and binding `$n` parameters of the extended protocol as literals.
//!
//! The scanner knows single-quoted strings (`''` and, after `E`, backslash escapes),
//! double-quoted identifiers, dollar-quoted strings, `--` and nested `/* */` comments.

use crate::error::{Error, Result};

#[derive(Debug, PartialEq)]
enum Tok {
    /// Ordinary text (including strings and comments), byte range.
    Text(usize, usize),
    /// `;` at byte offset.
    Semi,
    /// `$n`, byte range and n.
    Param(usize, usize, usize),
    /// Comment, byte range (kept separately to tell empty statements).
    Comment(usize, usize),
}

fn scan(sql: &str) -> Vec<Tok> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut text_start = 0;
    let flush = |out: &mut Vec<Tok>, s: usize, e: usize| {
        if e > s {
            out.push(Tok::Text(s, e));
        }
    };
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                let escapes = i > 0
                    && (b[i - 1] == b'E' || b[i - 1] == b'e')
                    && (i < 2 || !(b[i - 2].is_ascii_alphanumeric() || b[i - 2] == b'_'));
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
            }
            b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if i + 1 < b.len() && b[i + 1] == b'"' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                flush(&mut out, text_start, i);
                let s = i;
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                out.push(Tok::Comment(s, i));
                text_start = i;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                flush(&mut out, text_start, i);
                let s = i;
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                out.push(Tok::Comment(s, i.min(b.len())));
                text_start = i.min(b.len());
            }
            b';' => {
                flush(&mut out, text_start, i);
                out.push(Tok::Semi);
                i += 1;
                text_start = i;
            }
            b'$' => {
                let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                if !prev_ident && j > i + 1 {
                    flush(&mut out, text_start, i);
                    let n = sql[i + 1..j].parse().unwrap_or(usize::MAX);
                    out.push(Tok::Param(i, j, n));
                    i = j;
                    text_start = i;
                    continue;
                }
                // Dollar quote: $tag$ ... $tag$
                let mut k = i + 1;
                while k < b.len() && (b[k].is_ascii_alphanumeric() || b[k] == b'_') {
                    k += 1;
                }
                if !prev_ident
                    && k < b.len()
                    && b[k] == b'$'
                    && !b[i + 1..k].first().is_some_and(|c| c.is_ascii_digit())
                {
                    let tag = &sql[i..=k];
                    match sql[k + 1..].find(tag) {
                        Some(p) => i = k + 1 + p + tag.len(),
                        None => i = b.len(),
                    }
                } else {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    flush(&mut out, text_start, b.len());
    out
}

/// Splits a query string into its statements (trimmed; statements made only of
/// whitespace and comments are dropped).
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut stmts = Vec::new();
    let mut cur = String::new();
    let mut has_content = false;
    let push = |stmts: &mut Vec<String>, cur: &mut String, has: &mut bool| {
        if *has {
            stmts.push(cur.trim().to_string());
        }
        cur.clear();
        *has = false;
    };
    for t in scan(sql) {
        match t {
            Tok::Text(s, e) => {
                cur.push_str(&sql[s..e]);
                if !sql[s..e].trim().is_empty() {
                    has_content = true;
                }
            }
            Tok::Param(s, e, _) => {
                cur.push_str(&sql[s..e]);
                has_content = true;
            }
            Tok::Comment(s, e) => {
                cur.push_str(&sql[s..e]);
                if sql[s..e].starts_with("--") {
                    cur.push('\n');
                }
            }
            Tok::Semi => push(&mut stmts, &mut cur, &mut has_content),
        }
    }
    push(&mut stmts, &mut cur, &mut has_content);
    stmts
}

/// Highest `$n` in the text (0 when there is none).
pub fn count_params(sql: &str) -> usize {
    scan(sql)
        .iter()
        .filter_map(|t| match t {
            Tok::Param(_, _, n) => Some(*n),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Replaces every `$n` by `params[n-1]` (SQL literal text).
///
/// # Errors
/// SQLSTATE 42P02 when a parameter has no value.
pub fn bind_params(sql: &str, params: &[String]) -> Result<String> {
    let mut out = String::with_capacity(sql.len());
    for t in scan(sql) {
        match t {
            Tok::Text(s, e) | Tok::Comment(s, e) => {
                out.push_str(&sql[s..e]);
                if sql[s..e].starts_with("--") {
                    out.push('\n');
                }
            }
            Tok::Semi => out.push(';'),
            Tok::Param(_, _, n) => {
                let v = n
                    .checked_sub(1)
                    .and_then(|i| params.get(i))
                    .ok_or_else(|| Error::sql("42P02", format!("there is no parameter ${n}")))?;
                out.push(' ');
                out.push_str(v);
                out.push(' ');
            }
        }
    }
    Ok(out)
}

/// A string as a SQL literal (`'it''s'`).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_respecting_quotes_and_comments() {
        let s = split_statements(
            "CREATE TABLE t (a INT); INSERT INTO t VALUES (1); -- c;omment\n SELECT ';', \"a;b\" FROM t /* x; */ ;;  ",
        );
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0], "CREATE TABLE t (a INT)");
        assert!(s[2].contains("';'") && s[2].contains("\"a;b\""), "{s:?}");
        assert!(split_statements(" ; -- nothing\n").is_empty());
        assert_eq!(split_statements("select $$a;b$$; select 1").len(), 2);
        assert_eq!(split_statements("select E'a\\';b'").len(), 1);
    }

    #[test]
    fn binds_parameters() {
        let sql = "SELECT * FROM t WHERE a = $1 AND b = '$2' AND c = $2";
        assert_eq!(count_params(sql), 2);
        let b = bind_params(sql, &["5".into(), quote_literal("it's")]).unwrap();
        assert!(
            b.contains("a =  5 ") && b.contains("'$2'") && b.contains("'it''s'"),
            "{b}"
        );
        assert!(bind_params(sql, &["5".into()]).is_err());
        assert_eq!(count_params("select a$1 from t"), 0);
    }
}
