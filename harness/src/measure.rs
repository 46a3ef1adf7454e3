//! What every query experiment measures: one warm-up, then timed runs of a statement
//! under given session settings, with the bytes the routers wrote for each run.
//!
//! [`time_query`] never panics and never fails: a statement that errors is recorded in
//! [`QueryTiming::error`] next to whatever was measured before it failed, so a report
//! can show it. The wire figures come from the router counters in the system table
//! `smrdb_router` (cumulative per node and peer), read before and after each timed run;
//! the reads themselves are not timed, and the traffic of one such read (calibrated
//! with two back-to-back reads) is subtracted, so [`QueryTiming::wire_bytes`] is the
//! statement's own traffic.

use std::time::Instant;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

/// One statement's measurements.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueryTiming {
    /// Short name of the query (for tables and plots).
    pub name: String,
    /// The SQL text.
    pub sql: String,
    /// Session settings in force while it ran (`SET name = 'value'`), in order.
    pub settings: Vec<(String, String)>,
    /// Wall time of the warm-up run, seconds (None when it did not complete).
    pub warmup_s: Option<f64>,
    /// Wall time of each completed timed run, seconds.
    pub times_s: Vec<f64>,
    /// Median of [`QueryTiming::times_s`].
    pub median_s: Option<f64>,
    /// The answer of the last completed run, as text (NULL as `NULL`).
    pub rows: Vec<Vec<String>>,
    /// Router `bytes_written` summed over every (node, peer) pair, as the delta over
    /// one timed run (median over the runs); None when the counters could not be read.
    pub wire_bytes: Option<u64>,
    /// Router `messages_sent` summed the same way (median over the runs).
    pub messages: Option<u64>,
    /// The first error: a failed SET, warm-up or timed run, a setting that could not
    /// be restored, or a stop request before anything ran.
    pub error: Option<String>,
}

/// Router counters summed over every (node, peer) row of `smrdb_router`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterTotals {
    /// Bytes RDMA-written (or copied / framed, by fabric) to peers.
    pub bytes_written: u64,
    /// WRITE operations posted.
    pub writes: u64,
    /// Pointer messages sent.
    pub messages_sent: u64,
}

impl RouterTotals {
    /// What changed since `earlier` (saturating: counters only grow, but a restarted
    /// cluster resets them).
    pub fn since(&self, earlier: &RouterTotals) -> RouterTotals {
        RouterTotals {
            bytes_written: self.bytes_written.saturating_sub(earlier.bytes_written),
            writes: self.writes.saturating_sub(earlier.writes),
            messages_sent: self.messages_sent.saturating_sub(earlier.messages_sent),
        }
    }
}

/// Reads and sums the router counters of every node.
///
/// # Errors
/// The query failing (a lost node, a server without `smrdb_router`) or an answer that
/// is not three numbers.
pub fn router_totals(c: &mut postgres::Client) -> Result<RouterTotals> {
    let sql = "SELECT sum(bytes_written), sum(writes), sum(messages_sent) FROM smrdb_router";
    let rows = pg_rows(c, sql).map_err(|e| anyhow!("reading the router counters: {e}"))?;
    // One node has no peers: no rows, or one row of NULL sums.
    let Some(row) = rows.first() else {
        return Ok(RouterTotals::default());
    };
    let num = |i: usize| -> Result<u64> {
        match row.get(i).map(String::as_str) {
            None => Err(anyhow!(
                "reading the router counters: expected 3 columns, got {}",
                row.len()
            )),
            Some("NULL") => Ok(0),
            Some(v) => v
                .parse::<u64>()
                .map_err(|_| anyhow!("reading the router counters: {v:?} is not a count")),
        }
    };
    Ok(RouterTotals {
        bytes_written: num(0)?,
        writes: num(1)?,
        messages_sent: num(2)?,
    })
}

/// The median (mean of the two middle values for an even count); None when empty.
pub fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The median of counts (the mean of the two middle values, rounded down, for an even
/// count).
fn median_u64(xs: &[u64]) -> Option<u64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        v[n / 2 - 1] / 2 + v[n / 2] / 2 + (v[n / 2 - 1] % 2 + v[n / 2] % 2) / 2
    })
}

/// A Postgres error with the server's message (severity, SQLSTATE, message, detail,
/// hint), or the client-side error text.
pub fn pg_error(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
            if let Some(x) = d.detail() {
                s += &format!(" (detail: {x})");
            }
            if let Some(x) = d.hint() {
                s += &format!(" (hint: {x})");
            }
            s
        }
        None => format!("{e}"),
    }
}

/// Runs `sql` with the simple query protocol and returns every row as text (NULL as
/// `NULL`); the error is [`pg_error`]'s text.
///
/// # Errors
/// The statement failing.
pub fn pg_rows(c: &mut postgres::Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let mut out = Vec::new();
    for m in c.simple_query(sql).map_err(|e| pg_error(&e))? {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            );
        }
    }
    Ok(out)
}

/// `'text'` as an SQL string literal.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Whether `name` is safe to splice into `SET name = ...` / `SHOW name` (letters,
/// digits, `_` and `.`).
fn is_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The value a known smrdb setting has when nobody set it.
fn default_of(name: &str) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_str() {
        "smrdb.pivot" => Some("auto"),
        "smrdb.overlap" => Some("on"),
        _ => None,
    }
}

/// Sets each setting, remembering the value it had (`SHOW`, or the documented default
/// of `smrdb.pivot` / `smrdb.overlap` when SHOW fails). Returns what to restore, in
/// reverse order; on error, what was already changed is restored first.
fn apply_settings(
    c: &mut postgres::Client,
    settings: &[(&str, &str)],
) -> Result<Vec<(String, String)>, String> {
    let mut restore: Vec<(String, String)> = Vec::new();
    for (name, value) in settings {
        if !is_setting_name(name) {
            let _ = restore_settings(c, &restore);
            return Err(format!(
                "bad setting name {name:?}: letters, digits, '_' and '.' only"
            ));
        }
        let before = match pg_rows(c, &format!("SHOW {name}")) {
            Ok(rows) => rows.first().and_then(|r| r.first()).cloned(),
            Err(_) => None,
        }
        .or_else(|| default_of(name).map(str::to_string));
        if let Err(e) = pg_rows(c, &format!("SET {name} = {}", quote_literal(value))) {
            let _ = restore_settings(c, &restore);
            return Err(format!("SET {name} = {value:?}: {e}"));
        }
        // A setting the server could not SHOW and we know no default for stays set:
        // there is nothing to put back.
        if let Some(b) = before {
            restore.push((name.to_string(), b));
        }
    }
    restore.reverse();
    Ok(restore)
}

/// Puts settings back; the first failure is returned after trying them all.
fn restore_settings(c: &mut postgres::Client, restore: &[(String, String)]) -> Result<(), String> {
    let mut first = None;
    for (name, value) in restore {
        if let Err(e) = pg_rows(c, &format!("SET {name} = {}", quote_literal(value))) {
            first.get_or_insert(format!("could not restore {name} = {value:?}: {e}"));
        }
    }
    first.map_or(Ok(()), Err)
}

/// Times `sql`: applies `settings` (`SET name = 'value'`, each restored afterwards to
/// the value `SHOW` gave before), runs it once as a warm-up, then up to `repeats` timed
/// runs, reading the router counters around each (not timed). `should_stop` is asked
/// before the warm-up and before every timed run, so a stop request (Ctrl-C) cuts a
/// long experiment short and keeps what was measured. Never panics: errors go into
/// [`QueryTiming::error`].
pub fn time_query(
    c: &mut postgres::Client,
    name: &str,
    sql: &str,
    settings: &[(&str, &str)],
    repeats: usize,
    should_stop: &dyn Fn() -> bool,
) -> QueryTiming {
    let mut t = QueryTiming {
        name: name.to_string(),
        sql: sql.to_string(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        warmup_s: None,
        times_s: Vec::new(),
        median_s: None,
        rows: Vec::new(),
        wire_bytes: None,
        messages: None,
        error: None,
    };
    if should_stop() {
        t.error = Some("not run: stop requested".into());
        return t;
    }
    let restore = match apply_settings(c, settings) {
        Ok(r) => r,
        Err(e) => {
            t.error = Some(e);
            return t;
        }
    };
    run_timed(c, sql, repeats, should_stop, &mut t);
    if let Err(e) = restore_settings(c, &restore) {
        t.error.get_or_insert(e);
    }
    t.median_s = median(&t.times_s);
    t
}

/// The warm-up and the timed runs of [`time_query`], filling `t`.
fn run_timed(
    c: &mut postgres::Client,
    sql: &str,
    repeats: usize,
    should_stop: &dyn Fn() -> bool,
    t: &mut QueryTiming,
) {
    let start = Instant::now();
    match pg_rows(c, sql) {
        Ok(rows) => {
            t.warmup_s = Some(start.elapsed().as_secs_f64());
            t.rows = rows;
        }
        Err(e) => {
            t.error = Some(format!("warm-up: {e}"));
            return;
        }
    }
    // The traffic of one counter read (its request and replies cross the network
    // too), measured by two back-to-back reads; subtracted from every run's delta.
    let overhead = match (router_totals(c), router_totals(c)) {
        (Ok(a), Ok(b)) => Some(b.since(&a)),
        _ => None,
    };
    let mut wire = Vec::new();
    let mut msgs = Vec::new();
    let mut counters_ok = overhead.is_some();
    for _ in 0..repeats {
        if should_stop() {
            break;
        }
        let before = if counters_ok {
            router_totals(c).ok()
        } else {
            None
        };
        let start = Instant::now();
        let rows = pg_rows(c, sql);
        let secs = start.elapsed().as_secs_f64();
        match rows {
            Ok(rows) => {
                t.times_s.push(secs);
                t.rows = rows;
            }
            Err(e) => {
                t.error = Some(format!("timed run {}: {e}", t.times_s.len() + 1));
                break;
            }
        }
        let after = if counters_ok {
            router_totals(c).ok()
        } else {
            None
        };
        match (before, after, overhead) {
            (Some(b), Some(a), Some(o)) => {
                let d = a.since(&b).since(&o);
                wire.push(d.bytes_written);
                msgs.push(d.messages_sent);
            }
            _ => counters_ok = false,
        }
    }
    if counters_ok {
        t.wire_bytes = median_u64(&wire);
        t.messages = median_u64(&msgs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median_u64(&[]), None);
        assert_eq!(median_u64(&[5, 1, 9]), Some(5));
        assert_eq!(median_u64(&[1, 2]), Some(1));
        assert_eq!(median_u64(&[3, 5]), Some(4));
        assert_eq!(median_u64(&[u64::MAX, u64::MAX]), Some(u64::MAX));
    }

    #[test]
    fn totals_subtract_without_wrapping() {
        let a = RouterTotals {
            bytes_written: 10,
            writes: 2,
            messages_sent: 3,
        };
        let b = RouterTotals {
            bytes_written: 25,
            writes: 1,
            messages_sent: 7,
        };
        assert_eq!(
            b.since(&a),
            RouterTotals {
                bytes_written: 15,
                writes: 0,
                messages_sent: 4
            }
        );
    }

    #[test]
    fn settings_are_quoted_and_checked() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert!(is_setting_name("smrdb.pivot"));
        assert!(!is_setting_name("x; DROP TABLE t"));
        assert!(!is_setting_name(""));
        assert_eq!(default_of("SMRDB.PIVOT"), Some("auto"));
        assert_eq!(default_of("smrdb.overlap"), Some("on"));
        assert_eq!(default_of("work_mem"), None);
    }

    #[test]
    fn timing_serializes() {
        let t = QueryTiming {
            name: "q".into(),
            sql: "SELECT 1".into(),
            settings: vec![("smrdb.pivot".into(), "a".into())],
            warmup_s: Some(0.1),
            times_s: vec![0.1, 0.2],
            median_s: Some(0.15),
            rows: vec![vec!["1".into()]],
            wire_bytes: Some(10),
            messages: None,
            error: None,
        };
        let j = serde_json::to_string(&t).unwrap();
        let back: QueryTiming = serde_json::from_str(&j).unwrap();
        assert_eq!(back.settings, t.settings);
        assert_eq!(back.wire_bytes, Some(10));
    }
}
