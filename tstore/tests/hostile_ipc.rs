//! Bytes that come from a peer must never take a Tstore (or the primary's
//! statement) down: Arrow IPC streams (`decode_batches`: join-table chunks, query
//! results), plans and expressions (`exec::codec::plan_from_bytes`,
//! `expr_from_bytes`) and fragments (`exec::fragment::Fragment::decode`). Each is fed
//! truncations, bit flips and random bytes of real encodings: the answer is an error
//! (or, for damage the format cannot see, a valid value), never a panic.
//!
//! arrow-ipc's reader panics on some malformed streams, e.g. a buffer whose length in
//! the metadata runs past the message body (found by the `task_msg` fuzz target);
//! `decode_batches` turns that into `Error::Corrupt`.
mod common;

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use common::{no_panic, run, Rng};
use datafusion_expr::Operator;
use datafusion_physical_expr::expressions::{binary, col, is_null, lit, not};
use datafusion_physical_expr::PhysicalExpr;
use datafusion_physical_plan::filter::FilterExec;
use datafusion_physical_plan::projection::ProjectionExec;
use datafusion_physical_plan::union::UnionExec;
use datafusion_physical_plan::ExecutionPlan;
use smrdb_tstore::exec::codec::{expr_from_bytes, expr_to_bytes, plan_from_bytes, plan_to_bytes};
use smrdb_tstore::exec::fragment::{
    ExchangeKind, ExchangeSpec, Fragment, Place, StageSpec, FRAGMENT_VERSION,
};
use smrdb_tstore::exec::{
    task_context, ExchangeExec, ExchangeQueue, MergePartitionsExec, SliceScanExec, TaskInputs,
};
use smrdb_tstore::{
    decode_batches, encode_batches, ColumnDef, Error, RecordBatch, Slice, SqlType, TableSchema,
};

fn table_schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("id", SqlType::BigInt, false),
        ColumnDef::new("s", SqlType::Varchar(Some(10)), true),
        ColumnDef::new("x", SqlType::Double, true),
    ])
}

fn batch(schema: &SchemaRef, from: i64, to: i64) -> RecordBatch {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(from..to)),
        Arc::new(StringArray::from_iter_values(
            (from..to).map(|i| format!("row {i}")),
        )),
        Arc::new(Float64Array::from_iter(
            (from..to).map(|i| (i % 2 == 1).then_some(i as f64)),
        )),
    ];
    RecordBatch::try_new(schema.clone(), cols).unwrap()
}

/// An IPC stream of two batches (5 rows).
fn stream() -> Vec<u8> {
    let schema = table_schema().to_arrow();
    encode_batches(&[batch(&schema, 0, 3), batch(&schema, 3, 5)]).unwrap()
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

// ---------------------------------------------------------------------------------
// decode_batches

/// The byte ranges of `bytes` (an IPC stream) that hold a message's body length.
fn body_length_fields(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 8 <= bytes.len() && bytes[off..off + 4] == [0xff; 4] {
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let meta = &bytes[off + 8..off + 8 + len];
        let m = arrow_ipc::root_as_message(meta).unwrap();
        let body = m.bodyLength() as usize;
        let pattern = (body as u64).to_le_bytes();
        let at = (0..meta.len() - 7)
            .step_by(8)
            .find(|&i| meta[i..i + 8] == pattern)
            .expect("the body length in the message");
        out.push(off + 8 + at..off + 16 + at);
        off += 8 + len + body;
    }
    out
}

/// Sets every byte of a valid stream, but those in `skip`, to each of a few values;
/// returns the number of errors.
fn corrupt_every_byte(good: &[u8], skip: &[std::ops::Range<usize>]) -> usize {
    let mut errors = 0;
    for i in 0..good.len() {
        if skip.iter().any(|r| r.contains(&i)) {
            continue;
        }
        for v in [
            0x00u8,
            0x01,
            0x40,
            0x7f,
            0x80,
            0xff,
            good[i].wrapping_add(1),
        ] {
            let mut bad = good.to_vec();
            bad[i] = v;
            match no_panic(|| decode_batches(&bad)) {
                Ok(Ok(_)) => {}
                Ok(Err(Error::Corrupt(_))) => errors += 1,
                Ok(Err(e)) => panic!("byte {i} = {v:#x}: not a Corrupt error: {e}"),
                Err(p) => panic!("byte {i} = {v:#x}: panic {p}"),
            }
        }
    }
    errors
}

#[test]
fn every_single_byte_corruption_is_an_error_or_a_valid_stream() {
    // Expect: for every byte of a valid stream set to each of a few values, decoding
    // returns (Ok for the corruptions arrow cannot see, Corrupt otherwise) and never
    // panics; many corruptions are seen. The body lengths are left alone here (see
    // the next test).
    let good = stream();
    assert_eq!(rows(&decode_batches(&good).unwrap()), 5);
    let skip = body_length_fields(&good);
    assert_eq!(skip.len(), 3, "schema and two batches");
    let errors = corrupt_every_byte(&good, &skip);
    assert!(errors > good.len(), "{errors} errors");
}

#[test]
fn a_damaged_body_length_is_an_error() {
    // E.g. byte 5 of the first batch's body length set to 1: 1 TiB.
    let good = stream();
    let skip = body_length_fields(&good);
    for r in &skip {
        for at in r.clone() {
            let mut bad = good.clone();
            bad[at] = 0x01;
            assert!(no_panic(|| decode_batches(&bad)).is_ok(), "byte {at}");
        }
    }
    assert!(corrupt_every_byte(&good, &[]) > good.len());
}

#[test]
fn truncations_are_errors_or_fewer_rows() {
    // Expect: every proper prefix of a stream is an error or a prefix of its batches.
    let good = stream();
    let whole = decode_batches(&good).unwrap();
    for cut in 1..good.len() {
        match no_panic(|| decode_batches(&good[..cut])) {
            Ok(Ok(bs)) => {
                assert!(bs.len() <= whole.len(), "cut {cut}");
                assert_eq!(bs[..], whole[..bs.len()], "cut {cut}");
            }
            Ok(Err(e)) => assert!(matches!(e, Error::Corrupt(_)), "cut {cut}: {e}"),
            Err(p) => panic!("cut {cut}: panic {p}"),
        }
    }
    assert!(decode_batches(&[]).unwrap().is_empty());
}

#[test]
fn random_bytes_are_not_a_stream() {
    let mut rng = Rng::new(11);
    for k in 0..2000 {
        let n = rng.range(1, 400) as usize;
        let mut bytes = rng.bytes(n);
        if k % 2 == 0 && n >= 8 {
            // A valid continuation marker, so the reader looks at the rest.
            bytes[..4].copy_from_slice(&[0xff; 4]);
        }
        match no_panic(|| decode_batches(&bytes)) {
            Ok(r) => assert!(matches!(r, Err(Error::Corrupt(_))), "{bytes:?}: {r:?}"),
            Err(p) => panic!("{bytes:?}: panic {p}"),
        }
    }
}

// ---------------------------------------------------------------------------------
// Plans and expressions

fn scan(
    table: &str,
    projection: Option<Vec<usize>>,
    limit: Option<usize>,
) -> Arc<dyn ExecutionPlan> {
    Arc::new(
        SliceScanExec::try_new(
            table,
            Some(format!("{table}_alias")),
            table_schema().to_arrow(),
            projection,
            limit,
            None,
        )
        .unwrap(),
    )
}

fn xschema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("x", DataType::Float64, true),
    ]))
}

/// MERGE(UNION(FILTER(scan t [id, x]), PROJECTION(scan u), exchange 2)).
fn sample_plan() -> Arc<dyn ExecutionPlan> {
    let t = scan("t", Some(vec![0, 2]), Some(100));
    let ts = t.schema();
    let pred = binary(
        binary(col("id", &ts).unwrap(), Operator::Modulo, lit(3i64), &ts).unwrap(),
        Operator::Eq,
        lit(0i64),
        &ts,
    )
    .unwrap();
    let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(pred, t).unwrap());
    let u = scan("u", None, None);
    let us = u.schema();
    let proj: Arc<dyn ExecutionPlan> = Arc::new(
        ProjectionExec::try_new(
            vec![
                (
                    binary(col("id", &us).unwrap(), Operator::Multiply, lit(2i64), &us).unwrap(),
                    "id".to_string(),
                ),
                (col("x", &us).unwrap(), "x".to_string()),
            ],
            u,
        )
        .unwrap(),
    );
    let exchange: Arc<dyn ExecutionPlan> =
        Arc::new(ExchangeExec::new(2, "broadcast", xschema(), 1, None));
    let union = UnionExec::try_new(vec![filtered, proj, exchange]).unwrap();
    Arc::new(MergePartitionsExec::new(union))
}

/// `(id % 3 = 0 AND NOT s IS NULL) OR x * 2.5 > 1.0`
fn sample_expr(schema: &Schema) -> Arc<dyn PhysicalExpr> {
    let b = |l, op, r| binary(l, op, r, schema).unwrap();
    let c = |n: &str| col(n, schema).unwrap();
    b(
        b(
            b(
                b(c("id"), Operator::Modulo, lit(3i64)),
                Operator::Eq,
                lit(0i64),
            ),
            Operator::And,
            not(is_null(c("s")).unwrap()).unwrap(),
        ),
        Operator::Or,
        b(
            b(c("x"), Operator::Multiply, lit(2.5)),
            Operator::Gt,
            lit(1.0),
        ),
    )
}

fn sample_inputs(t: &Slice) -> TaskInputs {
    let mut i = TaskInputs::new();
    i.add_table("t", t.snapshot());
    i.add_table("u", t.snapshot());
    let q = ExchangeQueue::new(1, false);
    q.push(
        RecordBatch::try_new(
            xschema(),
            vec![
                Arc::new(Int64Array::from(vec![-1i64])),
                Arc::new(Float64Array::from(vec![0.5])),
            ],
        )
        .unwrap(),
    );
    q.finish_sender();
    i.add_exchange(2, 0, q);
    i
}

fn sample_slice() -> Slice {
    let mut s = Slice::with_chunk_rows(table_schema(), 4).unwrap();
    s.append_batch(batch(&s.arrow_schema(), 0, 10)).unwrap();
    s
}

/// Damaged versions of `good`: every proper prefix, every single bit flipped, and
/// `random` buffers of random bytes.
fn damaged(good: &[u8], random: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for cut in 0..good.len() {
        out.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut b = good.to_vec();
            b[at] ^= 1 << bit;
            out.push((format!("bit {bit} of byte {at} flipped"), b));
        }
    }
    let mut rng = Rng::new(seed);
    for k in 0..random {
        let n = rng.range(1, 2 * good.len() as i64) as usize;
        out.push((format!("random buffer {k}"), rng.bytes(n)));
    }
    out
}

#[test]
fn damaged_plans_are_errors_never_panics() {
    let plan = sample_plan();
    let good = plan_to_bytes(plan.clone()).unwrap();
    let ctx = task_context(None);
    let slice = sample_slice();
    let want = run(&plan, sample_inputs(&slice)).unwrap();
    assert_eq!(rows(&want), 4 + 10 + 1);
    let (mut errors, mut decoded, mut ran_panics) = (0, 0, Vec::new());
    for (what, bytes) in damaged(&good, 2000, 1) {
        match no_panic(|| plan_from_bytes(&bytes, &ctx)) {
            Err(p) => panic!("{what}: panic {p}"),
            Ok(Err(_)) => errors += 1,
            Ok(Ok(p)) => {
                // Expect: truncations and random buffers never decode.
                assert!(what.starts_with("bit"), "{what} decodes");
                decoded += 1;
                // A flip the format cannot see gives another valid plan; running it
                // may fail, but must not panic.
                if let Err(e) = no_panic(|| run(&p, sample_inputs(&slice))) {
                    ran_panics.push(format!("{what}: {e}"));
                }
            }
        }
    }
    assert!(
        errors > 0 && decoded > 0,
        "{errors} errors, {decoded} decoded"
    );
    assert!(
        ran_panics.is_empty(),
        "{} decoded plans panic when run, e.g. {:?}",
        ran_panics.len(),
        &ran_panics[..ran_panics.len().min(3)]
    );
}

#[test]
fn damaged_expressions_are_errors_never_panics() {
    let schema = table_schema().to_arrow();
    let e = sample_expr(&schema);
    let good = expr_to_bytes(&e).unwrap();
    let b = batch(&schema, 0, 10);
    let want = e.evaluate(&b).unwrap().into_array(10).unwrap();
    let back = expr_from_bytes(&good, &schema).unwrap();
    assert_eq!(&back.evaluate(&b).unwrap().into_array(10).unwrap(), &want);
    let (mut errors, mut decoded, mut eval_panics) = (0, 0, Vec::new());
    for (what, bytes) in damaged(&good, 2000, 2) {
        match no_panic(|| expr_from_bytes(&bytes, &schema)) {
            Err(p) => panic!("{what}: panic {p}"),
            Ok(Err(e)) => {
                assert!(matches!(e, Error::Corrupt(_)), "{what}: {e}");
                errors += 1;
            }
            Ok(Ok(x)) => {
                assert!(
                    what.starts_with("bit") || what.starts_with("cut"),
                    "{what} decodes"
                );
                decoded += 1;
                if let Err(p) = no_panic(|| x.evaluate(&b).map(|v| v.into_array(10))) {
                    eval_panics.push(format!("{what}: {p}"));
                }
            }
        }
    }
    assert!(
        errors > 0 && decoded > 0,
        "{errors} errors, {decoded} decoded"
    );
    assert!(
        eval_panics.is_empty(),
        "{} decoded expressions panic when evaluated, e.g. {:?}",
        eval_panics.len(),
        &eval_panics[..eval_panics.len().min(3)]
    );
    // Expect: an expression over columns the schema does not have is refused.
    let narrow = Schema::new(vec![Field::new("id", DataType::Int64, false)]);
    assert!(matches!(
        expr_from_bytes(&good, &narrow),
        Err(Error::Corrupt(_))
    ));
    let retyped = Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("s", DataType::Utf8, true),
        Field::new("x", DataType::Utf8, true),
    ]);
    let r = no_panic(|| expr_from_bytes(&good, &retyped).map(|x| x.evaluate(&b).is_ok()));
    assert!(
        r.is_ok(),
        "an expression over a schema of other types: panic"
    );
}

#[test]
fn damaged_fragments_are_errors_never_panics() {
    let plan = plan_to_bytes(sample_plan()).unwrap();
    let f = Fragment {
        version: FRAGMENT_VERSION,
        exchanges: vec![
            ExchangeSpec {
                id: 0,
                kind: ExchangeKind::Broadcast,
                from: Place::Primary,
                sorted_streams: false,
                wait_complete: true,
            },
            ExchangeSpec {
                id: 1,
                kind: ExchangeKind::Gather,
                from: Place::Tstores,
                sorted_streams: true,
                wait_complete: false,
            },
            ExchangeSpec {
                id: 2,
                kind: ExchangeKind::Broadcast,
                from: Place::Tstores,
                sorted_streams: false,
                wait_complete: false,
            },
        ],
        stages: vec![
            StageSpec {
                id: 0,
                output: 2,
                plan: plan.clone(),
            },
            StageSpec {
                id: 1,
                output: 1,
                plan,
            },
        ],
        tables: vec!["t".into(), "u".into()],
        timeout_ms: 30_000,
    };
    let good = f.encode().unwrap();
    assert_eq!(Fragment::decode(&good).unwrap(), f);
    let ctx = task_context(None);
    let (mut errors, mut decoded) = (0, 0);
    for (what, bytes) in damaged(&good, 3000, 3) {
        match no_panic(|| Fragment::decode(&bytes)) {
            Err(p) => panic!("{what}: panic {p}"),
            Ok(Err(_)) => errors += 1,
            Ok(Ok(g)) => {
                // Expect: a fragment that decodes is a valid one; its plans decode to
                // plans or errors.
                assert!(what.starts_with("bit"), "{what} decodes");
                assert_eq!(g.validate(), Ok(()));
                decoded += 1;
                for s in &g.stages {
                    assert!(
                        no_panic(|| plan_from_bytes(&s.plan, &ctx)).is_ok(),
                        "{what}"
                    );
                }
            }
        }
    }
    assert!(
        errors > 0 && decoded > 0,
        "{errors} errors, {decoded} decoded"
    );
}
