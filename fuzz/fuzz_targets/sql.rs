//! Fuzz target `sql`: the SQL front end, parse + plan (`smrdb_planner::plan_sql`), and
//! the EXPLAIN rendering of every query plan, as the primary runs them on a client's
//! statement text.
//!
//! The input is the statement text (UTF-8; other inputs are skipped). The catalog holds
//! every table of the sqllogictest corpus (`fuzz/sql_catalog.sql`) with row counts, and
//! a `smrdb.pivot` setting picked from the input's length, so join planning and forced
//! pivots are reached. Oracle: no panic (the node turns a planner panic into an XX000
//! error, but a panic is still a bug), and what plans, renders.
#![no_main]

use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use smrdb_planner::{explain_lines, plan_sql, Catalog, InsertSource, Plan, TableSchema};

struct Cat<'a> {
    tables: &'a HashMap<String, TableSchema>,
    pivot: Option<&'static str>,
}

impl Catalog for Cat<'_> {
    fn table(&self, name: &str) -> Option<TableSchema> {
        self.tables.get(name).cloned()
    }
    fn row_count(&self, name: &str) -> Option<u64> {
        // Known for some tables, unknown for others.
        let h = name
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        (h % 3 != 0).then_some(h % 100_000)
    }
    fn setting(&self, name: &str) -> Option<String> {
        (name == "smrdb.pivot")
            .then(|| self.pivot.map(str::to_string))
            .flatten()
    }
}

fn tables() -> &'static HashMap<String, TableSchema> {
    static T: OnceLock<HashMap<String, TableSchema>> = OnceLock::new();
    T.get_or_init(|| {
        let none = HashMap::new();
        let empty = Cat {
            tables: &none,
            pivot: None,
        };
        let mut m = HashMap::new();
        for line in include_str!("../sql_catalog.sql").lines() {
            if line.starts_with("--") || line.trim().is_empty() {
                continue;
            }
            if let Ok(plans) = plan_sql(line, &empty) {
                for p in plans {
                    if let Plan::CreateTable { name, schema, .. } = p {
                        m.entry(name).or_insert(schema);
                    }
                }
            }
        }
        assert!(m.len() > 50, "the catalog plans: {} tables", m.len());
        m
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let pivots = [None, Some("auto"), Some("t"), Some("a"), Some("nonesuch")];
    let cat = Cat {
        tables: tables(),
        pivot: pivots[sql.len() % pivots.len()],
    };
    let Ok(plans) = plan_sql(sql, &cat) else {
        return;
    };
    for p in &plans {
        match p {
            Plan::Query(q) => {
                let _ = explain_lines(q);
            }
            Plan::Explain { query, .. } => {
                let _ = explain_lines(query);
            }
            Plan::Insert {
                source: InsertSource::Query { plan, .. },
                ..
            } => {
                let _ = explain_lines(plan);
            }
            _ => {}
        }
    }
});
