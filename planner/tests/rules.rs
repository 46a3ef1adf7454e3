//! Rules of distribution, asserted on the structure of [`DistPlan`]s, each with the
//! answer of the distributed plan (run by the simulator over 2 nodes x 2 Tstores)
//! checked against DataFusion's single-process answer.

mod common;

use std::sync::Arc;

use arrow_array::{Int32Array, Int64Array, RecordBatch, StringArray};
use common::*;
use smrdb_planner::distribute::DistPlan;
use smrdb_planner::{DistOptions, Planner};
use smrdb_tstore::exec::fragment::{ExchangeKind, Place};
use smrdb_tstore::{ColumnDef, SqlType, TableSchema};

/// `fact` (2000 rows, keys 0..50) and `dim` (50 rows).
fn db() -> Db {
    let mut db = Db::new();
    let fact = TableSchema::new(vec![
        ColumnDef::new("k", SqlType::Integer, true),
        ColumnDef::new("v", SqlType::BigInt, true),
    ]);
    let b = RecordBatch::try_new(
        fact.to_arrow(),
        vec![
            Arc::new(Int32Array::from(
                (0..2000).map(|i| i % 50).collect::<Vec<_>>(),
            )),
            Arc::new(Int64Array::from(
                (0..2000).map(|i| i * 7 % 101).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    db.add_table("fact", fact, vec![b]);
    let dim = TableSchema::new(vec![
        ColumnDef::new("id", SqlType::Integer, true),
        ColumnDef::new("name", SqlType::Text, true),
    ]);
    let b = RecordBatch::try_new(
        dim.to_arrow(),
        vec![
            Arc::new(Int32Array::from((0..60).collect::<Vec<_>>())),
            Arc::new(StringArray::from(
                (0..60).map(|i| format!("n{}", i % 7)).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    db.add_table("dim", dim, vec![b]);
    db
}

fn opts() -> DistOptions {
    DistOptions {
        nodes: 2,
        tstores_per_node: 2,
        ..DistOptions::default()
    }
}

/// Plans `sql` with `opts`, checks the distributed answer against DataFusion's, and
/// returns the plan.
fn check(db: &Db, sql: &str, opts: &DistOptions) -> DistPlan {
    let p = Planner::new().unwrap();
    let got = run(&p, db, sql, opts).unwrap_or_else(|e| panic!("{sql}: {e}"));
    let want = reference(&db.reference_context(), sql).unwrap();
    let (mut g, mut w) = (render(&got.batches), render(&want.batches));
    if !sql.contains("ORDER BY") {
        g.sort();
        w.sort();
    }
    assert_eq!(g, w, "{sql}");
    dist_of(&p, db, sql, opts).unwrap().0
}

/// The stages that run on the Tstores and scan `alias`.
fn tstore_stages_scanning<'a>(
    d: &'a DistPlan,
    alias: &str,
) -> Vec<&'a smrdb_planner::distribute::Stage> {
    d.stages
        .iter()
        .filter(|s| s.place == Place::Tstores && scans(&s.plan).iter().any(|a| a == alias))
        .collect()
}

#[test]
fn an_aggregate_is_partial_on_the_tstores_and_final_on_the_primary() {
    let db = db();
    let d = check(
        &db,
        "SELECT COUNT(*), SUM(v) FROM fact WHERE k > 10",
        &opts(),
    );
    assert_eq!(d.exchanges.len(), 1, "{:?}", d.exchanges);
    assert_eq!(d.exchanges[0].kind, ExchangeKind::Gather);
    assert_eq!(d.exchanges[0].from, Place::Tstores);
    let ts = tstore_stages_scanning(&d, "fact");
    assert_eq!(ts.len(), 1);
    assert!(operators(&ts[0].plan).contains(&"AggregateExec".to_string()));
    let fin = operators(&d.result_stage().plan);
    assert!(fin.contains(&"AggregateExec".to_string()), "{fin:?}");
    assert!(fin.contains(&"ExchangeExec".to_string()), "{fin:?}");
}

#[test]
fn a_join_keeps_the_largest_table_in_place_and_broadcasts_the_other() {
    let db = db();
    let sql = "SELECT d.name, SUM(f.v) FROM fact f JOIN dim d ON f.k = d.id GROUP BY d.name";
    let d = check(&db, sql, &opts());
    let bcast: Vec<_> = d
        .exchanges
        .iter()
        .filter(|x| x.kind == ExchangeKind::Broadcast)
        .collect();
    assert_eq!(bcast.len(), 1, "{:?}", d.exchanges);
    // The broadcast's producer scans dim only; fact is scanned where it lies, by the
    // stage that joins.
    let producer = d
        .stages
        .iter()
        .find(|s| s.output == Some(bcast[0].id))
        .unwrap();
    assert_eq!(scans(&producer.plan), vec!["d".to_string()]);
    let joiner = tstore_stages_scanning(&d, "f");
    assert_eq!(joiner.len(), 1);
    let ops = operators(&joiner[0].plan);
    assert!(ops.contains(&"HashJoinExec".to_string()), "{ops:?}");
    assert!(ops.contains(&"ExchangeExec".to_string()), "{ops:?}");
    assert!(
        d.decisions.iter().any(|s| s.contains("pivot")),
        "{:?}",
        d.decisions
    );

    // A forced pivot turns it around: fact travels, dim stays.
    let forced = DistOptions {
        pivot: Some("d".into()),
        ..opts()
    };
    let d = check(&db, sql, &forced);
    let bcast: Vec<_> = d
        .exchanges
        .iter()
        .filter(|x| x.kind == ExchangeKind::Broadcast)
        .collect();
    assert_eq!(bcast.len(), 1);
    let producer = d
        .stages
        .iter()
        .find(|s| s.output == Some(bcast[0].id))
        .unwrap();
    assert_eq!(scans(&producer.plan), vec!["f".to_string()]);
}

#[test]
fn a_full_join_is_gathered_and_joined_on_the_primary() {
    let db = db();
    let d = check(
        &db,
        "SELECT f.k, d.id FROM fact f FULL JOIN dim d ON f.k = d.id WHERE f.v < 3 OR d.id > 55",
        &opts(),
    );
    assert!(
        d.exchanges.iter().all(|x| x.kind == ExchangeKind::Gather),
        "{:?}",
        d.exchanges
    );
    assert!(d.exchanges.len() >= 2);
    let fin = operators(&d.result_stage().plan);
    assert!(fin.iter().any(|o| o.contains("JoinExec")), "{fin:?}");
}

#[test]
fn order_by_limit_sorts_and_limits_on_the_tstores_and_merges_on_the_primary() {
    let db = db();
    let d = check(
        &db,
        "SELECT k, v FROM fact ORDER BY v DESC, k LIMIT 5",
        &opts(),
    );
    assert_eq!(d.exchanges.len(), 1);
    assert!(d.exchanges[0].sorted_streams);
    let ts = tstore_stages_scanning(&d, "fact");
    let ops = operators(&ts[0].plan);
    assert!(ops.iter().any(|o| o.starts_with("Sort")), "{ops:?}");
    let fin = operators(&d.result_stage().plan);
    assert!(
        fin.contains(&"SortPreservingMergeExec".to_string()),
        "{fin:?}"
    );
}

#[test]
fn a_query_without_tables_runs_on_the_primary_alone() {
    let db = db();
    let d = check(&db, "SELECT 1 + 2, 'x' || 'y'", &opts());
    assert!(d.primary_only());
    assert!(d.exchanges.is_empty());
}
