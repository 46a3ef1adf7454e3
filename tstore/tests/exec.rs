//! The Tstore's plan leaves and the plan codec: [`SliceScanExec`] over slices of
//! every size around the chunk and batch boundaries, [`ExchangeExec`] fed through an
//! [`ExchangeQueue`] (order, end, errors, `wait_complete`), [`MergePartitionsExec`],
//! plans with our leaves through `plan_to_bytes` / `plan_from_bytes`, and
//! [`PgConverter`]'s PostgreSQL arithmetic in decoded plans.
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{
    Array, ArrayRef, Decimal128Array, Float64Array, Int16Array, Int32Array, Int64Array, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use common::{run, run_partition, Rng};
use datafusion_common::ScalarValue;
use datafusion_expr::Operator;
use datafusion_physical_expr::expressions::{binary, col, lit, NegativeExpr};
use datafusion_physical_expr::PhysicalExpr;
use datafusion_physical_plan::display::DisplayableExecutionPlan;
use datafusion_physical_plan::filter::FilterExec;
use datafusion_physical_plan::projection::ProjectionExec;
use datafusion_physical_plan::union::UnionExec;
use datafusion_physical_plan::ExecutionPlan;
use futures::{StreamExt, TryStreamExt};
use smrdb_tstore::exec::codec::{expr_from_bytes, expr_to_bytes, plan_from_bytes, plan_to_bytes};
use smrdb_tstore::exec::{
    task_context, ExchangeExec, ExchangeQueue, MergePartitionsExec, SliceScanExec, TaskInputs,
    BATCH_ROWS,
};
use smrdb_tstore::{ColumnDef, RecordBatch, Slice, SqlType, TableSchema, DEFAULT_CHUNK_ROWS};

// ---------------------------------------------------------------------------------
// Helpers

/// `k BIGINT NOT NULL, s TEXT, x DOUBLE PRECISION`; row `i` is `(i, 's{i}' or NULL
/// every 4th, i / 2)`.
fn table_schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("k", SqlType::BigInt, false),
        ColumnDef::new("s", SqlType::Text, true),
        ColumnDef::new("x", SqlType::Double, true),
    ])
}

fn rows(schema: &SchemaRef, from: i64, to: i64) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(from..to)),
        Arc::new(StringArray::from_iter(
            (from..to).map(|i| (i % 4 != 0).then(|| format!("s{i}"))),
        )),
        Arc::new(Float64Array::from_iter_values(
            (from..to).map(|i| i as f64 / 2.0),
        )),
    ];
    RecordBatch::try_new(schema.clone(), cols).unwrap()
}

/// A slice of rows `0..n`, inserted in one batch or in random pieces.
fn slice_of(n: usize, chunk_rows: usize, pieces: bool, rng: &mut Rng) -> Slice {
    let mut s = Slice::with_chunk_rows(table_schema(), chunk_rows).unwrap();
    let schema = s.arrow_schema();
    let mut at = 0;
    while at < n {
        let len = if pieces {
            (rng.range(1, 3000) as usize).min(n - at)
        } else {
            n - at
        };
        s.append_batch(rows(&schema, at as i64, (at + len) as i64))
            .unwrap();
        at += len;
    }
    assert_eq!(s.row_count(), n);
    s
}

fn inputs(tables: &[(&str, &Slice)]) -> TaskInputs {
    let mut i = TaskInputs::new();
    for (name, s) in tables {
        i.add_table(*name, s.snapshot());
    }
    i
}

fn int64s(batches: &[RecordBatch], column: usize) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| {
            b.column(column)
                .as_primitive::<Int64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

fn scan(
    table: &str,
    alias: Option<&str>,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
) -> Arc<dyn ExecutionPlan> {
    Arc::new(
        SliceScanExec::try_new(
            table,
            alias.map(str::to_string),
            table_schema().to_arrow(),
            projection,
            limit,
            None,
        )
        .unwrap(),
    )
}

/// A one-column (`k BIGINT`) batch of `values`.
fn kbatch(values: &[i64]) -> RecordBatch {
    RecordBatch::try_new(kschema(), vec![Arc::new(Int64Array::from(values.to_vec()))]).unwrap()
}

fn kschema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]))
}

struct CountWakes(AtomicUsize);

impl Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A waker that counts its wakes.
fn counting_waker() -> (Arc<CountWakes>, Waker) {
    let c = Arc::new(CountWakes(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}

type Polled = Poll<Option<datafusion_common::Result<RecordBatch>>>;

fn ks_of(p: Polled) -> Vec<i64> {
    match p {
        Poll::Ready(Some(Ok(b))) => int64s(&[b], 0),
        other => panic!("expected a batch, got {other:?}"),
    }
}

fn display(plan: &Arc<dyn ExecutionPlan>) -> String {
    DisplayableExecutionPlan::new(plan.as_ref())
        .indent(false)
        .to_string()
}

// ---------------------------------------------------------------------------------
// SliceScanExec

#[test]
fn slice_scan_returns_every_row_in_order_in_batches_of_at_most_batch_rows() {
    let mut rng = Rng::new(3);
    for (chunk_rows, pieces) in [
        (7, true),
        (DEFAULT_CHUNK_ROWS, false),
        (DEFAULT_CHUNK_ROWS, true),
    ] {
        for n in [0usize, 1, 6, 7, 8, 8191, 8192, 8193, 20_000] {
            let slice = slice_of(n, chunk_rows, pieces, &mut rng);
            for projection in [None, Some(vec![0]), Some(vec![2, 0]), Some(vec![])] {
                for limit in [
                    None,
                    Some(0),
                    Some(1),
                    Some(7),
                    Some(n / 2),
                    Some(n),
                    Some(n + 1),
                ] {
                    let what = format!(
                        "chunk_rows {chunk_rows} pieces {pieces} n {n} projection {projection:?} limit {limit:?}"
                    );
                    let plan = scan("t", None, projection.clone(), limit);
                    let out = run(&plan, inputs(&[("t", &slice)])).unwrap();
                    let want = n.min(limit.unwrap_or(usize::MAX));
                    let total: usize = out.iter().map(|b| b.num_rows()).sum();
                    assert_eq!(total, want, "{what}");
                    for b in &out {
                        assert!(
                            b.num_rows() >= 1 && b.num_rows() <= BATCH_ROWS,
                            "{what}: a batch of {} rows",
                            b.num_rows()
                        );
                        assert_eq!(b.schema(), plan.schema(), "{what}");
                    }
                    let expect: Vec<i64> = (0..want as i64).collect();
                    match projection.as_deref() {
                        None | Some([0]) => assert_eq!(int64s(&out, 0), expect, "{what}"),
                        Some([2, 0]) => {
                            assert_eq!(int64s(&out, 1), expect, "{what}");
                            let x: Vec<f64> = out
                                .iter()
                                .flat_map(|b| {
                                    b.column(0).as_primitive::<Float64Type>().values().to_vec()
                                })
                                .collect();
                            assert_eq!(
                                x,
                                expect.iter().map(|&k| k as f64 / 2.0).collect::<Vec<_>>()
                            );
                        }
                        _ => assert!(out.iter().all(|b| b.num_columns() == 0), "{what}"),
                    }
                    if projection.is_none() {
                        // The text column too: NULL every 4th row.
                        let s: Vec<Option<String>> = out
                            .iter()
                            .flat_map(|b| {
                                let c = b.column(1).as_string::<i32>();
                                (0..c.len())
                                    .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
                                    .collect::<Vec<_>>()
                            })
                            .collect();
                        let want: Vec<Option<String>> = expect
                            .iter()
                            .map(|i| (i % 4 != 0).then(|| format!("s{i}")))
                            .collect();
                        assert_eq!(s, want, "{what}");
                    }
                }
            }
        }
    }
}

#[test]
fn slice_scan_reads_the_snapshot_it_was_given() {
    // Expect: a scan reads the rows of the snapshot in its task inputs, not writes
    // made to the slice afterwards; a table the task does not hold is an error.
    let mut rng = Rng::new(1);
    let mut slice = slice_of(10, 4, true, &mut rng);
    let task = inputs(&[("t", &slice)]);
    slice.delete_rows(&[0, 1, 2]).unwrap();
    let out = run(&scan("t", None, None, None), task).unwrap();
    assert_eq!(int64s(&out, 0), (0..10).collect::<Vec<_>>());
    let out = run(&scan("t", None, None, None), inputs(&[("t", &slice)])).unwrap();
    assert_eq!(int64s(&out, 0), (3..10).collect::<Vec<_>>());

    let e = run(&scan("nope", None, None, None), inputs(&[("t", &slice)])).unwrap_err();
    assert!(e.to_string().contains("\"nope\" does not exist"), "{e}");
    let e = scan("t", None, None, None)
        .execute(0, task_context(None))
        .err()
        .unwrap();
    assert!(e.to_string().contains("TaskInputs"), "{e}");
    assert!(SliceScanExec::try_new(
        "t",
        None,
        table_schema().to_arrow(),
        Some(vec![3]),
        None,
        None
    )
    .is_err());
}

// ---------------------------------------------------------------------------------
// ExchangeExec and ExchangeQueue

fn exchange_inputs(id: u16, queues: &[Arc<ExchangeQueue>]) -> TaskInputs {
    let mut i = TaskInputs::new();
    for (p, q) in queues.iter().enumerate() {
        i.add_exchange(id, p, q.clone());
    }
    i
}

#[test]
fn exchange_yields_batches_in_arrival_order_and_ends_after_every_sender() {
    let q = ExchangeQueue::new(3, false);
    let plan = ExchangeExec::new(7, "broadcast", kschema(), 1, None);
    let ctx = task_context(Some(Arc::new(exchange_inputs(7, &[q.clone()]))));
    let mut stream = plan.execute(0, ctx).unwrap();
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    // Expect: nothing yet, and the first batch wakes the reader.
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    q.push(kbatch(&[1]));
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![1]);
    // Three senders interleaved: batches come out in arrival order.
    q.push(kbatch(&[10, 11])); // sender 1
    q.push(kbatch(&[20])); // sender 2
    q.push(kbatch(&[])); // empty: dropped
    q.finish_sender(); // sender 0 done
    q.push(kbatch(&[12])); // sender 1
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![10, 11]);
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![20]);
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![12]);
    // Expect: two senders are still out, so no end yet.
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    assert_eq!(q.senders_left(), 2);
    q.finish_sender();
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    assert!(!q.is_complete());
    let before = wakes.0.load(Ordering::SeqCst);
    q.finish_sender();
    assert!(q.is_complete());
    assert!(
        wakes.0.load(Ordering::SeqCst) > before,
        "the last finish wakes the reader"
    );
    assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));
    assert_eq!(q.rows(), 5);
}

#[test]
fn exchange_from_sender_threads_keeps_each_senders_order() {
    // Expect: four threads each push 300 batches then finish; the reader (blocked on
    // the stream, woken by the pushes) gets all of them, each sender's in order.
    const SENDERS: i64 = 4;
    const BATCHES: i64 = 300;
    let q = ExchangeQueue::new(SENDERS as usize, false);
    let plan = ExchangeExec::new(1, "gather", kschema(), 1, None);
    let ctx = task_context(Some(Arc::new(exchange_inputs(1, &[q.clone()]))));
    let stream = plan.execute(0, ctx).unwrap();
    let got = std::thread::scope(|sc| {
        for s in 0..SENDERS {
            let q = q.clone();
            sc.spawn(move || {
                for b in 0..BATCHES {
                    let n = (b % 3 + 1) as usize;
                    q.push(kbatch(&vec![s * 1_000_000 + b; n]));
                }
                q.finish_sender();
            });
        }
        futures::executor::block_on(stream.try_collect::<Vec<_>>()).unwrap()
    });
    assert_eq!(got.len() as i64, SENDERS * BATCHES);
    let mut next = vec![0i64; SENDERS as usize];
    for b in &got {
        let k = int64s(std::slice::from_ref(b), 0);
        let (s, seq) = (k[0] / 1_000_000, k[0] % 1_000_000);
        assert_eq!(seq, next[s as usize], "sender {s} out of order");
        assert_eq!(k.len() as i64, seq % 3 + 1);
        next[s as usize] += 1;
    }
    assert!(next.iter().all(|&n| n == BATCHES));
}

#[test]
fn exchange_errors_end_the_stream_and_reach_the_plan() {
    // Expect: a failed queue yields the error once (queued batches are dropped), then
    // ends; an operator above the exchange returns the error.
    let q = ExchangeQueue::new(2, false);
    q.push(kbatch(&[1, 2]));
    q.fail("node 2 was lost");
    q.fail("a later error");
    q.push(kbatch(&[3]));
    assert!(q.is_complete());
    let plan = ExchangeExec::new(3, "broadcast", kschema(), 1, None);
    let ctx = task_context(Some(Arc::new(exchange_inputs(3, &[q.clone()]))));
    let mut stream = plan.execute(0, ctx).unwrap();
    let (_, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    match stream.poll_next_unpin(&mut cx) {
        Poll::Ready(Some(Err(e))) => assert!(e.to_string().contains("node 2 was lost"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));

    let q = ExchangeQueue::new(1, false);
    q.push(kbatch(&[1, 2, 3]));
    q.fail("deadline passed");
    let schema = kschema();
    let exchange: Arc<dyn ExecutionPlan> =
        Arc::new(ExchangeExec::new(3, "broadcast", schema.clone(), 1, None));
    let pred = binary(col("k", &schema).unwrap(), Operator::Gt, lit(1i64), &schema).unwrap();
    let filter: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(pred, exchange).unwrap());
    let e = run(&filter, exchange_inputs(3, &[q])).unwrap_err();
    assert!(e.to_string().contains("deadline passed"), "{e}");

    // Expect: an exchange the task does not receive is an error, not a hang.
    let plan: Arc<dyn ExecutionPlan> =
        Arc::new(ExchangeExec::new(9, "broadcast", kschema(), 1, None));
    let e = run(&plan, exchange_inputs(3, &[ExchangeQueue::new(1, false)])).unwrap_err();
    assert!(e.to_string().contains("exchange 9"), "{e}");
}

#[test]
fn wait_complete_holds_every_batch_until_every_sender_finished() {
    let q = ExchangeQueue::new(2, true);
    let plan = ExchangeExec::new(2, "broadcast", kschema(), 1, None);
    let ctx = task_context(Some(Arc::new(exchange_inputs(2, &[q.clone()]))));
    let mut stream = plan.execute(0, ctx).unwrap();
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    q.push(kbatch(&[1]));
    q.push(kbatch(&[2]));
    // Expect: no wake-up and nothing handed out while a sender is out.
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    q.finish_sender();
    q.push(kbatch(&[3]));
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    q.finish_sender();
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "the last finish wakes the reader"
    );
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![1]);
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![2]);
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![3]);
    assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));
}

#[test]
fn a_sorted_gather_has_a_partition_per_producer() {
    // Expect: partition i of a gather of sorted streams reads queue i only; a merge
    // over it reads all of them and ends when both producers are done.
    let q0 = ExchangeQueue::new(1, false);
    let q1 = ExchangeQueue::new(1, false);
    let plan: Arc<dyn ExecutionPlan> = Arc::new(ExchangeExec::new(5, "gather", kschema(), 2, None));
    assert_eq!(plan.properties().partitioning.partition_count(), 2);
    q0.push(kbatch(&[1, 3]));
    q1.push(kbatch(&[2, 4]));
    q1.push(kbatch(&[6]));
    q0.finish_sender();
    q1.finish_sender();
    let out = run_partition(&plan, 1, exchange_inputs(5, &[q0.clone(), q1.clone()])).unwrap();
    assert_eq!(int64s(&out, 0), vec![2, 4, 6]);

    let q0 = ExchangeQueue::new(1, false);
    let q1 = ExchangeQueue::new(1, false);
    let merge: Arc<dyn ExecutionPlan> = Arc::new(MergePartitionsExec::new(plan.clone()));
    let ctx = task_context(Some(Arc::new(exchange_inputs(
        5,
        &[q0.clone(), q1.clone()],
    ))));
    let mut stream = merge.execute(0, ctx).unwrap();
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    assert!(stream.poll_next_unpin(&mut cx).is_pending());
    q1.push(kbatch(&[2]));
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "partition 1 wakes the merge"
    );
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![2]);
    q1.finish_sender();
    assert!(
        stream.poll_next_unpin(&mut cx).is_pending(),
        "partition 0 is still open"
    );
    q0.push(kbatch(&[1]));
    q0.finish_sender();
    assert_eq!(ks_of(stream.poll_next_unpin(&mut cx)), vec![1]);
    assert!(matches!(stream.poll_next_unpin(&mut cx), Poll::Ready(None)));
    assert!(
        merge.execute(1, task_context(None)).is_err(),
        "one output partition"
    );
}

// ---------------------------------------------------------------------------------
// MergePartitionsExec over a union of scans

#[test]
fn merge_over_a_union_of_scans_gives_the_union() {
    let mut rng = Rng::new(9);
    let t = slice_of(9000, 7, true, &mut rng);
    let mut u = slice_of(50, 16, true, &mut rng);
    u.delete_rows(&[0, 10, 49]).unwrap();
    let empty = slice_of(0, 7, true, &mut rng);
    let schema = table_schema().to_arrow();
    let even = binary(
        binary(
            col("k", &schema).unwrap(),
            Operator::Modulo,
            lit(2i64),
            &schema,
        )
        .unwrap(),
        Operator::Eq,
        lit(0i64),
        &schema,
    )
    .unwrap();
    let filtered: Arc<dyn ExecutionPlan> =
        Arc::new(FilterExec::try_new(even, scan("t", Some("t2"), None, None)).unwrap());
    let union = UnionExec::try_new(vec![
        scan("t", None, None, None),
        scan("u", None, None, Some(20)),
        filtered,
        scan("e", None, None, None),
    ])
    .unwrap();
    assert_eq!(union.properties().partitioning.partition_count(), 4);
    let merge: Arc<dyn ExecutionPlan> = Arc::new(MergePartitionsExec::new(union));
    let out = run(&merge, inputs(&[("t", &t), ("u", &u), ("e", &empty)])).unwrap();
    let got = int64s(&out, 0);
    // Expect: the multiset union.
    let from_t = 0..9000i64;
    let from_u = (1..49i64).filter(|k| *k != 10).take(20);
    let from_f = (0..9000i64).filter(|k| k % 2 == 0);
    let mut want: Vec<i64> = from_t.chain(from_u).chain(from_f).collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    want.sort_unstable();
    assert_eq!(sorted, want);
    for b in &out {
        assert!(b.num_rows() <= BATCH_ROWS);
    }
}

// ---------------------------------------------------------------------------------
// Plans through bytes

/// MERGE(UNION(FILTER(scan t AS a [k, x] limit 5000), PROJECTION(scan u [k, x]),
/// exchange 4)) with every leaf of ours.
fn leafy_plan() -> Arc<dyn ExecutionPlan> {
    let t = scan("t", Some("a"), Some(vec![0, 2]), Some(5000));
    let ts = t.schema();
    let pred = binary(
        binary(col("k", &ts).unwrap(), Operator::Modulo, lit(3i64), &ts).unwrap(),
        Operator::Eq,
        lit(0i64),
        &ts,
    )
    .unwrap();
    let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(pred, t).unwrap());
    let u = scan("u", None, None, None);
    let us = u.schema();
    let proj: Arc<dyn ExecutionPlan> = Arc::new(
        ProjectionExec::try_new(
            vec![
                (
                    binary(col("k", &us).unwrap(), Operator::Plus, lit(100_000i64), &us).unwrap(),
                    "k".to_string(),
                ),
                (col("x", &us).unwrap(), "x".to_string()),
            ],
            u,
        )
        .unwrap(),
    );
    let xs = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ]));
    let exchange: Arc<dyn ExecutionPlan> = Arc::new(ExchangeExec::new(4, "broadcast", xs, 1, None));
    let union = UnionExec::try_new(vec![filtered, proj, exchange]).unwrap();
    Arc::new(MergePartitionsExec::new(union))
}

fn leafy_inputs(t: &Slice, u: &Slice) -> TaskInputs {
    let mut i = inputs(&[("t", t), ("u", u)]);
    let q = ExchangeQueue::new(2, false);
    let xs = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ]));
    for from in [-3i64, -1] {
        q.push(
            RecordBatch::try_new(
                xs.clone(),
                vec![
                    Arc::new(Int64Array::from(vec![from, from - 1])),
                    Arc::new(Float64Array::from(vec![None, Some(0.5)])),
                ],
            )
            .unwrap(),
        );
        q.finish_sender();
    }
    i.add_exchange(4, 0, q);
    i
}

#[test]
fn plans_with_our_leaves_survive_bytes() {
    let mut rng = Rng::new(5);
    let t = slice_of(9000, 7, true, &mut rng);
    let u = slice_of(30, 7, true, &mut rng);
    let plan = leafy_plan();
    let bytes = plan_to_bytes(plan.clone()).unwrap();
    let decoded = plan_from_bytes(&bytes, &task_context(None)).unwrap();
    // Expect: the same plan (names, aliases, projections, limits, exchange ids).
    assert_eq!(display(&decoded), display(&plan));
    let shown = display(&decoded);
    assert!(
        shown.contains("SliceScanExec: t AS a [k, x] limit=5000"),
        "{shown}"
    );
    assert!(shown.contains("ExchangeExec: broadcast #4"), "{shown}");
    assert_eq!(
        plan_to_bytes(decoded.clone()).unwrap(),
        bytes,
        "a stable encoding"
    );
    // Expect: the same rows, in the same order.
    let a = run(&plan, leafy_inputs(&t, &u)).unwrap();
    let b = run(&decoded, leafy_inputs(&t, &u)).unwrap();
    assert_eq!(a, b);
    let mut ks = int64s(&b, 0);
    ks.sort_unstable();
    let mut want: Vec<i64> = (0..5000).filter(|k| k % 3 == 0).collect();
    want.extend((0..30).map(|k| k + 100_000));
    want.extend([-4, -3, -2, -1]);
    want.sort_unstable();
    assert_eq!(ks, want);
}

#[test]
fn scans_keep_their_description_through_bytes() {
    for (alias, projection, limit) in [
        (None, None, None),
        (Some("x"), Some(vec![1]), Some(0)),
        (Some("t"), Some(vec![]), Some(usize::MAX)),
    ] {
        let plan = scan("t", alias, projection.clone(), limit);
        let back = plan_from_bytes(&plan_to_bytes(plan).unwrap(), &task_context(None)).unwrap();
        let s = back
            .downcast_ref::<SliceScanExec>()
            .expect("a SliceScanExec");
        assert_eq!(s.table(), "t");
        assert_eq!(s.alias_opt(), alias);
        assert_eq!(s.projection(), projection.as_deref());
        assert_eq!(s.limit(), limit);
        assert_eq!(s.table_schema(), &table_schema().to_arrow());
    }
}

/// Runs `f` on a thread with a Tstore's 64 MiB stack (DataFusion's codec recurses
/// over the plan, and so do its streams).
fn on_tstore_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// `depth` projections `k + 1 AS k` over a scan of `t`'s `k`, under one that also
/// computes `k + k + ... + k` (`terms` of them).
fn deep_plan(depth: usize, terms: usize) -> Arc<dyn ExecutionPlan> {
    let mut p = scan("t", None, Some(vec![0]), None);
    for _ in 0..depth {
        let s = p.schema();
        let e = binary(col("k", &s).unwrap(), Operator::Plus, lit(1i64), &s).unwrap();
        p = Arc::new(ProjectionExec::try_new(vec![(e, "k".to_string())], p).unwrap());
    }
    let s = p.schema();
    let mut sum = col("k", &s).unwrap();
    for _ in 1..terms {
        sum = binary(sum, Operator::Plus, col("k", &s).unwrap(), &s).unwrap();
    }
    let k = col("k", &s).unwrap();
    Arc::new(ProjectionExec::try_new(vec![(k, "k".into()), (sum, "sum".into())], p).unwrap())
}

#[test]
fn deep_plans_and_expressions_cross_in_pieces() {
    on_tstore_stack(|| {
        // 300 plan levels and a 100-term sum: several times prost's nesting limit of
        // 100, so both go as pieces.
        let mut rng = Rng::new(11);
        let t = slice_of(50, 7, true, &mut rng);
        let plan = deep_plan(300, 100);
        let bytes = plan_to_bytes(plan.clone()).unwrap();
        let decoded = plan_from_bytes(&bytes, &task_context(None)).unwrap();
        // Expect: the same plan, the same bytes again, and the rows (k + 300, and
        // 100 (k + 300)).
        assert_eq!(display(&decoded), display(&plan));
        assert_eq!(plan_to_bytes(decoded.clone()).unwrap(), bytes);
        let got = run(&decoded, inputs(&[("t", &t)])).unwrap();
        let mut pairs: Vec<(i64, i64)> = int64s(&got, 0).into_iter().zip(int64s(&got, 1)).collect();
        pairs.sort_unstable();
        let want: Vec<(i64, i64)> = (0..50).map(|k| (k + 300, 100 * (k + 300))).collect();
        assert_eq!(pairs, want);
        // A shallow plan is one message, as before: no piece in it.
        let shallow = plan_to_bytes(deep_plan(3, 3)).unwrap();
        let depth = |b: &[u8]| plan_from_bytes(b, &task_context(None)).map(|p| display(&p));
        assert_eq!(depth(&shallow).unwrap(), display(&deep_plan(3, 3)));
        assert!(bytes.len() > 300 * 10, "{} bytes", bytes.len());
    });
}

#[test]
fn deep_expressions_cross_in_pieces() {
    let s = kschema();
    let mut e = col("k", &s).unwrap();
    for i in 0..250i64 {
        e = binary(e, Operator::Minus, lit(i), &s).unwrap();
    }
    let bytes = expr_to_bytes(&e).unwrap();
    let back = on_tstore_stack(move || {
        let schema = Schema::new(vec![Field::new("k", DataType::Int64, false)]);
        expr_from_bytes(&bytes, &schema).map(|e| e.to_string())
    })
    .unwrap();
    assert_eq!(back, e.to_string());
}

#[test]
fn plans_nested_past_the_piece_limit_are_refused() {
    on_tstore_stack(|| {
        // 40 pieces of 16 levels: more than MAX_PIECE_NESTING (32).
        let bytes = plan_to_bytes(deep_plan(40 * 16, 1)).unwrap();
        let e = plan_from_bytes(&bytes, &task_context(None)).unwrap_err();
        assert!(e.to_string().contains("nested deeper than 32"), "{e}");
        // At the limit: decodes.
        let bytes = plan_to_bytes(deep_plan(32 * 16, 1)).unwrap();
        assert!(plan_from_bytes(&bytes, &task_context(None)).is_ok());
    });
}

// ---------------------------------------------------------------------------------
// PgConverter: PostgreSQL arithmetic in decoded plans

/// A slice with one column `a` of `ty` holding `values`.
fn one_column(ty: SqlType, values: ArrayRef) -> Slice {
    let mut s = Slice::new(TableSchema::new(vec![ColumnDef::new("a", ty, true)])).unwrap();
    let b = RecordBatch::try_new(s.arrow_schema(), vec![values]).unwrap();
    s.append_batch(b).unwrap();
    s
}

/// `SELECT <expr(a)> FROM t`, as built and after bytes.
fn project(
    slice: &Slice,
    expr: impl Fn(&SchemaRef) -> Arc<dyn PhysicalExpr>,
) -> (Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>) {
    let s = Arc::new(
        SliceScanExec::try_new("t", None, slice.arrow_schema(), None, None, None).unwrap(),
    ) as Arc<dyn ExecutionPlan>;
    let e = expr(&s.schema());
    let plan: Arc<dyn ExecutionPlan> =
        Arc::new(ProjectionExec::try_new(vec![(e, "r".to_string())], s).unwrap());
    let decoded =
        plan_from_bytes(&plan_to_bytes(plan.clone()).unwrap(), &task_context(None)).unwrap();
    (plan, decoded)
}

fn a_op(op: Operator, v: ScalarValue) -> impl Fn(&SchemaRef) -> Arc<dyn PhysicalExpr> {
    move |s| binary(col("a", s).unwrap(), op, lit(v.clone()), s).unwrap()
}

fn overflows(r: datafusion_common::Result<Vec<RecordBatch>>) -> bool {
    matches!(r, Err(e) if e.to_string().to_lowercase().contains("overflow"))
}

#[test]
fn decoded_float_division_by_zero_fails() {
    let one_over =
        |s: &SchemaRef| binary(lit(1.0f64), Operator::Divide, col("a", s).unwrap(), s).unwrap();
    let t = one_column(
        SqlType::Double,
        Arc::new(Float64Array::from(vec![Some(1.5), Some(0.0), None])),
    );
    let (built, decoded) = project(&t, one_over);
    // (Built in place, DataFusion gives infinity; the decoded plan is what runs.)
    let inf = run(&built, inputs(&[("t", &t)])).unwrap();
    assert!(inf[0]
        .column(0)
        .as_primitive::<Float64Type>()
        .value(1)
        .is_infinite());
    let r = run(&decoded, inputs(&[("t", &t)]));
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("division by zero")),
        "{r:?}"
    );
    let r = run(
        &project(&t, a_op(Operator::Modulo, ScalarValue::Float64(Some(0.0)))).1,
        inputs(&[("t", &t)]),
    );
    assert!(
        matches!(&r, Err(e) if e.to_string().contains("division by zero")),
        "{r:?}"
    );
    // Without a zero divisor: the quotients, NULL for NULL.
    let t = one_column(
        SqlType::Double,
        Arc::new(Float64Array::from(vec![Some(4.0), None])),
    );
    let (_, decoded) = project(&t, one_over);
    let got = run(&decoded, inputs(&[("t", &t)])).unwrap();
    let col = got[0].column(0).as_primitive::<Float64Type>();
    assert_eq!((col.value(0), col.is_null(1)), (0.25, true));
    // Decoding again does not wrap the divisor twice.
    let again = plan_from_bytes(
        &plan_to_bytes(decoded.clone()).unwrap(),
        &task_context(None),
    )
    .unwrap();
    assert_eq!(display(&again), display(&decoded));
}

#[test]
fn decoded_integer_arithmetic_fails_on_overflow() {
    // INTEGER: 2147483647 + 1, -2147483648 - 1, 1073741824 * 2.
    let t = one_column(
        SqlType::Integer,
        Arc::new(Int32Array::from(vec![Some(2_147_483_647), None])),
    );
    let (built, decoded) = project(&t, a_op(Operator::Plus, ScalarValue::Int32(Some(1))));
    // (Built in place, DataFusion wraps; the decoded plan is what every stage runs.)
    let wrapped = run(&built, inputs(&[("t", &t)])).unwrap();
    assert_eq!(
        wrapped[0]
            .column(0)
            .as_primitive::<arrow_array::types::Int32Type>()
            .value(0),
        i32::MIN
    );
    assert!(
        overflows(run(&decoded, inputs(&[("t", &t)]))),
        "INT + overflows"
    );
    let t = one_column(SqlType::Integer, Arc::new(Int32Array::from(vec![i32::MIN])));
    let (_, d) = project(&t, a_op(Operator::Minus, ScalarValue::Int32(Some(1))));
    assert!(overflows(run(&d, inputs(&[("t", &t)]))), "INT - overflows");
    let t = one_column(SqlType::Integer, Arc::new(Int32Array::from(vec![1 << 30])));
    let (_, d) = project(&t, a_op(Operator::Multiply, ScalarValue::Int32(Some(2))));
    assert!(overflows(run(&d, inputs(&[("t", &t)]))), "INT * overflows");
    // SMALLINT and BIGINT.
    let t = one_column(
        SqlType::SmallInt,
        Arc::new(Int16Array::from(vec![i16::MAX])),
    );
    let (_, d) = project(&t, a_op(Operator::Plus, ScalarValue::Int16(Some(1))));
    assert!(
        overflows(run(&d, inputs(&[("t", &t)]))),
        "SMALLINT + overflows"
    );
    let t = one_column(
        SqlType::BigInt,
        Arc::new(Int64Array::from(vec![i64::MAX / 2 + 1])),
    );
    let (_, d) = project(&t, a_op(Operator::Multiply, ScalarValue::Int64(Some(2))));
    assert!(
        overflows(run(&d, inputs(&[("t", &t)]))),
        "BIGINT * overflows"
    );
    // Expect: in range, the same values as ever (NULL stays NULL).
    let t = one_column(
        SqlType::Integer,
        Arc::new(Int32Array::from(vec![Some(2_147_483_646), None, Some(-5)])),
    );
    let (_, d) = project(&t, a_op(Operator::Plus, ScalarValue::Int32(Some(1))));
    let out = run(&d, inputs(&[("t", &t)])).unwrap();
    let r = out[0]
        .column(0)
        .as_primitive::<arrow_array::types::Int32Type>();
    assert_eq!(
        r.iter().collect::<Vec<_>>(),
        vec![Some(i32::MAX), None, Some(-4)]
    );
}

#[test]
fn decoded_nested_and_filter_arithmetic_fails_on_overflow() {
    // (a * 2) - 1 where a * 2 overflows; WHERE a + 1 > 0.
    let t = one_column(
        SqlType::Integer,
        Arc::new(Int32Array::from(vec![0, i32::MAX])),
    );
    let (_, d) = project(&t, |s| {
        let twice = binary(col("a", s).unwrap(), Operator::Multiply, lit(2i32), s).unwrap();
        binary(twice, Operator::Minus, lit(1i32), s).unwrap()
    });
    assert!(overflows(run(&d, inputs(&[("t", &t)]))));
    let s = Arc::new(SliceScanExec::try_new("t", None, t.arrow_schema(), None, None, None).unwrap())
        as Arc<dyn ExecutionPlan>;
    let schema = s.schema();
    let pred = binary(
        binary(
            col("a", &schema).unwrap(),
            Operator::Plus,
            lit(1i32),
            &schema,
        )
        .unwrap(),
        Operator::Gt,
        lit(0i32),
        &schema,
    )
    .unwrap();
    let plan: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(pred, s).unwrap());
    let decoded = plan_from_bytes(&plan_to_bytes(plan).unwrap(), &task_context(None)).unwrap();
    assert!(overflows(run(&decoded, inputs(&[("t", &t)]))));
    // The same through expr_from_bytes (UPDATE / DELETE expressions).
    let e = binary(
        col("a", &schema).unwrap(),
        Operator::Plus,
        lit(1i32),
        &schema,
    )
    .unwrap();
    let back = expr_from_bytes(&expr_to_bytes(&e).unwrap(), &schema).unwrap();
    let batch = t.batches().next().unwrap().clone();
    assert!(back.evaluate(&batch).is_err());
    assert!(e.evaluate(&batch).is_ok(), "built in place, it wraps");
}

#[test]
fn decoded_decimal_arithmetic_fails_on_overflow() {
    let dec = |v: Vec<i128>| -> ArrayRef {
        Arc::new(
            Decimal128Array::from(v)
                .with_precision_and_scale(38, 0)
                .unwrap(),
        )
    };
    let ty = SqlType::Numeric {
        precision: 38,
        scale: 0,
    };
    let max = 10i128.pow(38) - 1;
    // a * a = 10^40, a + a = 2 * (10^38 - 1): beyond 128 bits.
    let t = one_column(ty, dec(vec![10i128.pow(20)]));
    let (_, d) = project(&t, |s| {
        binary(
            col("a", s).unwrap(),
            Operator::Multiply,
            col("a", s).unwrap(),
            s,
        )
        .unwrap()
    });
    assert!(
        overflows(run(&d, inputs(&[("t", &t)]))),
        "NUMERIC * overflows"
    );
    let t = one_column(ty, dec(vec![max]));
    let (_, d) = project(&t, |s| {
        binary(
            col("a", s).unwrap(),
            Operator::Plus,
            col("a", s).unwrap(),
            s,
        )
        .unwrap()
    });
    assert!(
        overflows(run(&d, inputs(&[("t", &t)]))),
        "NUMERIC + overflows"
    );
    let t = one_column(ty, dec(vec![-max]));
    let (_, d) = project(&t, |s| {
        binary(
            col("a", s).unwrap(),
            Operator::Minus,
            col("a", s).unwrap().clone(),
            s,
        )
        .unwrap()
    });
    // -max - (-max) = 0: no overflow.
    let out = run(&d, inputs(&[("t", &t)])).unwrap();
    assert_eq!(
        out[0]
            .column(0)
            .as_primitive::<arrow_array::types::Decimal128Type>()
            .value(0),
        0
    );
    let (_, d) = project(&t, |s| {
        let twice = binary(
            col("a", s).unwrap(),
            Operator::Plus,
            col("a", s).unwrap(),
            s,
        )
        .unwrap();
        binary(
            twice,
            Operator::Minus,
            lit(ScalarValue::Decimal128(Some(1), 38, 0)),
            s,
        )
        .unwrap()
    });
    assert!(
        overflows(run(&d, inputs(&[("t", &t)]))),
        "NUMERIC - overflows"
    );
}

#[test]
fn decoded_float_to_integer_casts_round_ties_to_even() {
    use datafusion_physical_expr::expressions::CastExpr;
    let to_int = |s: &SchemaRef| -> Arc<dyn PhysicalExpr> {
        Arc::new(CastExpr::new(col("a", s).unwrap(), DataType::Int32, None))
    };
    let t = one_column(
        SqlType::Double,
        Arc::new(Float64Array::from(vec![
            Some(2.5),
            Some(3.5),
            Some(-2.5),
            Some(2.75),
            None,
        ])),
    );
    let (built, decoded) = project(&t, to_int);
    let ints = |r: Vec<RecordBatch>| -> Vec<Option<i32>> {
        r[0].column(0)
            .as_primitive::<arrow_array::types::Int32Type>()
            .iter()
            .collect()
    };
    // Built in place, Arrow truncates; decoded, PostgreSQL's rint.
    assert_eq!(
        ints(run(&built, inputs(&[("t", &t)])).unwrap()),
        vec![Some(2), Some(3), Some(-2), Some(2), None]
    );
    assert_eq!(
        ints(run(&decoded, inputs(&[("t", &t)])).unwrap()),
        vec![Some(2), Some(4), Some(-2), Some(3), None]
    );
    // Decoding again does not round twice.
    let again = plan_from_bytes(
        &plan_to_bytes(decoded.clone()).unwrap(),
        &task_context(None),
    )
    .unwrap();
    assert_eq!(display(&again), display(&decoded));
}

#[test]
fn decoded_float_arithmetic_is_unaffected() {
    let t = one_column(
        SqlType::Double,
        Arc::new(Float64Array::from(vec![f64::MAX, -f64::MAX, f64::NAN, 1.5])),
    );
    let (_, d) = project(
        &t,
        a_op(Operator::Multiply, ScalarValue::Float64(Some(2.0))),
    );
    let out = run(&d, inputs(&[("t", &t)])).unwrap();
    let r = out[0].column(0).as_primitive::<Float64Type>();
    assert_eq!(r.value(0), f64::INFINITY);
    assert_eq!(r.value(1), f64::NEG_INFINITY);
    assert!(r.value(2).is_nan());
    assert_eq!(r.value(3), 3.0);
    let (_, d) = project(&t, a_op(Operator::Plus, ScalarValue::Float64(Some(1.0))));
    let out = run(&d, inputs(&[("t", &t)])).unwrap();
    assert_eq!(out[0].column(0).as_primitive::<Float64Type>().value(3), 2.5);
}

#[test]
fn decoded_negation_of_the_smallest_integer_fails() {
    let t = one_column(SqlType::Integer, Arc::new(Int32Array::from(vec![i32::MIN])));
    let (_, d) = project(&t, |s| Arc::new(NegativeExpr::new(col("a", s).unwrap())));
    assert!(overflows(run(&d, inputs(&[("t", &t)]))));
}
