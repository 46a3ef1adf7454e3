//! Rules of distribution, asserted on the structure of [`DistPlan`]s.

mod common;

use std::sync::Arc;

use arrow_array::{Int32Array, RecordBatch};
use common::*;
use smrdb_planner::{DistOptions, Planner};
use smrdb_tstore::{ColumnDef, SqlType, TableSchema};

fn db() -> Db {
    let mut db = Db::new();
    let schema = TableSchema::new(vec![ColumnDef::new("k", SqlType::Integer, true)]);
    let b = RecordBatch::try_new(
        schema.to_arrow(),
        vec![Arc::new(Int32Array::from((0..100).collect::<Vec<_>>()))],
    )
    .unwrap();
    db.add_table("t", schema, vec![b]);
    db
}

#[test]
fn smoke() {
    let db = db();
    let p = Planner::new().unwrap();
    let opts = DistOptions { nodes: 2, tstores_per_node: 2, ..DistOptions::default() };
    let a = run(&p, &db, "SELECT COUNT(*), SUM(k) FROM t WHERE k > 10", &opts).unwrap();
    let r = reference(&db.reference_context(), "SELECT COUNT(*), SUM(k) FROM t WHERE k > 10").unwrap();
    assert_eq!(render(&a.batches), render(&r.batches));
    println!("{:?}", render(&a.batches));
}
