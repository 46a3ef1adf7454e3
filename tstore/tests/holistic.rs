//! Holistic aggregates (COUNT / SUM / AVG (DISTINCT), mode, percentile_disc): random
//! data split across 1..4 "Tstores" (partial per part, merge, finalize) against a
//! direct single-pass computation, plus targeted cases.
mod common;

use std::cmp::Ordering;
use std::collections::BTreeMap;

use common::Rng;
use smrdb_tstore::slice::batches_to_rows;
use smrdb_tstore::*;

const N: Value = Value::Null;

fn schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("g", DataType::Int, true),
        ColumnDef::new("v", DataType::Int, true),
        ColumnDef::new("x", DataType::Double, true),
        ColumnDef::new("s", DataType::Text, true),
    ])
}

fn rand_rows(r: &mut Rng, n: usize) -> Vec<Vec<Value>> {
    const TEXTS: &[&str] = &["", "a", "ab", "b", "zz"];
    (0..n)
        .map(|_| {
            let null = |r: &mut Rng| r.chance(0.15);
            vec![
                if null(r) {
                    N
                } else {
                    Value::Int(r.below(4) as i32)
                },
                if null(r) {
                    N
                } else {
                    Value::Int(r.below(9) as i32 - 3)
                },
                if null(r) {
                    N
                } else {
                    Value::Double((r.below(7) as f64 - 3.0) * 0.5)
                },
                if null(r) {
                    N
                } else {
                    Value::Text(r.pick(TEXTS).to_string())
                },
            ]
        })
        .collect()
}

fn pct(f: f64, desc: bool) -> AggFunc {
    AggFunc::percentile_disc(f, desc).unwrap()
}

/// `SELECT g, count(*), sum(v), count(DISTINCT v), mode() WITHIN GROUP (ORDER BY v), ...`
fn mixed_aggs() -> Vec<AggCall> {
    let v = || Expr::col(1);
    let x = || Expr::col(2);
    let s = || Expr::col(3);
    vec![
        AggCall::count_star(),
        AggCall::new(AggFunc::Sum, v()),
        AggCall::new(AggFunc::CountDistinct, v()),
        AggCall::new(AggFunc::Mode { descending: false }, v()),
        AggCall::new(pct(0.0, false), v()),
        AggCall::new(pct(0.5, false), v()),
        AggCall::new(pct(1.0, false), v()),
        AggCall::new(pct(0.5, true), v()),
        AggCall::new(AggFunc::SumDistinct, v()),
        AggCall::new(AggFunc::AvgDistinct, x()),
        AggCall::new(AggFunc::Mode { descending: true }, s()),
        AggCall::new(AggFunc::CountDistinct, s()),
        AggCall::new(AggFunc::Avg, v()),
        AggCall::new(AggFunc::Max, x()),
        AggCall::new(pct(0.3, true), x()),
        AggCall::new(AggFunc::Count, v()),
        AggCall::new(AggFunc::SumDistinct, x()),
        AggCall::new(pct(0.75, false), s()),
    ]
}

fn cmp(a: &Value, b: &Value) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.sql_cmp(b).unwrap(),
    }
}

fn sum(vals: &[Value]) -> Value {
    match vals.first() {
        None => N,
        Some(Value::Double(_)) => Value::Double(vals.iter().map(|v| v.as_f64().unwrap()).sum()),
        Some(_) => Value::BigInt(vals.iter().map(|v| v.as_i64().unwrap()).sum()),
    }
}

/// Direct single-pass value of one aggregate over the rows of one group.
fn reference(a: &AggCall, rows: &[&Vec<Value>]) -> Value {
    let Some(arg) = &a.arg else {
        return Value::BigInt(rows.len() as i64);
    };
    let Expr::Column(c) = arg else { panic!() };
    let mut vals: Vec<Value> = rows
        .iter()
        .map(|r| r[*c].clone())
        .filter(|v| !v.is_null())
        .collect();
    vals.sort_by(cmp);
    let mut distinct = vals.clone();
    distinct.dedup_by(|a, b| cmp(a, b).is_eq());
    match a.func {
        AggFunc::Count => Value::BigInt(vals.len() as i64),
        AggFunc::Sum => sum(&vals),
        AggFunc::Avg => match sum(&vals) {
            Value::Null => N,
            s => Value::Double(s.as_f64().unwrap() / vals.len() as f64),
        },
        AggFunc::Max => vals.last().cloned().unwrap_or(N),
        AggFunc::Min => vals.first().cloned().unwrap_or(N),
        AggFunc::CountDistinct => Value::BigInt(distinct.len() as i64),
        AggFunc::SumDistinct => sum(&distinct),
        AggFunc::AvgDistinct => match sum(&distinct) {
            Value::Null => N,
            s => Value::Double(s.as_f64().unwrap() / distinct.len() as f64),
        },
        AggFunc::Mode { descending } => {
            let freq = |d: &Value| vals.iter().filter(|v| cmp(v, d).is_eq()).count();
            let best = distinct.iter().map(freq).max();
            let mut cands = distinct.iter().filter(|d| Some(freq(d)) == best);
            let pick = if descending {
                cands.next_back()
            } else {
                cands.next()
            };
            pick.cloned().unwrap_or(N)
        }
        AggFunc::PercentileDisc { descending, .. } => {
            if vals.is_empty() {
                return N;
            }
            if descending {
                vals.reverse();
            }
            let f = a.func.fraction().unwrap();
            // the first value whose cumulative position fraction reaches f
            let n = vals.len();
            let k = (1..=n).find(|&k| k as f64 / n as f64 >= f).unwrap();
            vals[k - 1].clone()
        }
        AggFunc::CountStar => Value::BigInt(rows.len() as i64),
    }
}

fn expected(pa: &PartialAgg, rows: &[Vec<Value>]) -> Vec<Vec<Value>> {
    let key = |r: &Vec<Value>| -> Vec<Option<String>> {
        // group keys are plain columns here; a sortable stand-in for the key values
        pa.group_by
            .iter()
            .map(|g| {
                let Expr::Column(c) = g else { panic!() };
                (!r[*c].is_null()).then(|| format!("{:?}", r[*c]))
            })
            .collect()
    };
    let mut groups: BTreeMap<Vec<Option<String>>, Vec<&Vec<Value>>> = BTreeMap::new();
    for r in rows {
        groups.entry(key(r)).or_default().push(r);
    }
    if pa.group_by.is_empty() && groups.is_empty() {
        groups.insert(vec![], vec![]);
    }
    let mut out: Vec<Vec<Value>> = groups
        .values()
        .map(|rs| {
            let mut row: Vec<Value> = pa
                .group_by
                .iter()
                .map(|g| {
                    let Expr::Column(c) = g else { panic!() };
                    rs[0][*c].clone()
                })
                .collect();
            row.extend(pa.aggs.iter().map(|a| reference(a, rs)));
            row
        })
        .collect();
    out.sort_by(|a, b| row_cmp(a, b));
    out
}

fn row_cmp(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| cmp(x, y))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

/// Splits `rows` randomly across `parts` slices and returns each part's partial state
/// (through IPC, like the real system).
fn partials(r: &mut Rng, pa: &PartialAgg, rows: &[Vec<Value>], parts: usize) -> Vec<RecordBatch> {
    let mut slices: Vec<Slice> = (0..parts)
        .map(|_| Slice::with_chunk_rows(schema(), 5).unwrap())
        .collect();
    for row in rows {
        let p = r.below(parts as u64) as usize;
        slices[p].insert(std::slice::from_ref(row)).unwrap();
    }
    let frag = Fragment {
        table: "t".into(),
        filter: None,
        projection: vec![],
        partial_agg: Some(pa.clone()),
    };
    slices
        .iter()
        .map(|s| {
            let mut b = s.execute(&frag).unwrap();
            assert_eq!(b.len(), 1);
            let state = b.remove(0);
            assert_eq!(state.schema(), pa.partial_schema(&schema()).unwrap());
            let mut back = decode_batches(&encode_batches(&[state]).unwrap()).unwrap();
            back.remove(0)
        })
        .collect()
}

fn finished(pa: &PartialAgg, parts: &[RecordBatch]) -> Vec<Vec<Value>> {
    let fin = pa.merge_finalize(parts).unwrap();
    let mut got = batches_to_rows([&fin]).unwrap();
    got.sort_by(|a, b| row_cmp(a, b));
    got
}

#[test]
fn holistic_split_matches_single_pass() {
    for seed in 0..30u64 {
        let mut r = Rng::new(900 + seed);
        let n = *r.pick(&[0usize, 1, 2, 5, 17, 60, 200]);
        let rows = rand_rows(&mut r, n);
        for group_by in [vec![], vec![Expr::col(0)], vec![Expr::col(0), Expr::col(3)]] {
            let pa = PartialAgg {
                group_by,
                aggs: mixed_aggs(),
            };
            let want = expected(&pa, &rows);
            for parts in 1..=4 {
                let ps = partials(&mut r, &pa, &rows, parts);
                assert_eq!(
                    finished(&pa, &ps),
                    want,
                    "seed {seed} n {n} parts {parts} {:?}",
                    pa.group_by
                );
                // merging in two levels (merge of merges) changes nothing
                let (a, b) = ps.split_at(parts / 2);
                let mut two = Vec::new();
                for half in [a, b] {
                    if !half.is_empty() {
                        two.push(pa.merge(half).unwrap());
                    }
                }
                assert_eq!(finished(&pa, &two), want, "seed {seed} two-level");
            }
        }
    }
}

#[test]
fn holistic_single_aggregates_random() {
    // one holistic aggregate at a time (the state layout differs: no weight for
    // DISTINCT-only, one shared argument column, ...)
    let mut r = Rng::new(77);
    for (i, a) in mixed_aggs().into_iter().enumerate() {
        for n in [0usize, 3, 40] {
            let rows = rand_rows(&mut r, n);
            for group_by in [vec![], vec![Expr::col(0)]] {
                let pa = PartialAgg {
                    group_by,
                    aggs: vec![a.clone()],
                };
                let want = expected(&pa, &rows);
                for parts in 1..=4 {
                    let ps = partials(&mut r, &pa, &rows, parts);
                    assert_eq!(finished(&pa, &ps), want, "agg {i} {a:?} n {n}");
                }
            }
        }
    }
}

fn ints(vals: &[Option<i32>]) -> Vec<Vec<Value>> {
    vals.iter()
        .map(|v| vec![Value::Int(1), v.map(Value::Int).unwrap_or(N), N, N])
        .collect()
}

fn run(aggs: Vec<AggCall>, rows: &[Vec<Value>], parts: usize) -> Vec<Vec<Value>> {
    let pa = PartialAgg {
        group_by: vec![],
        aggs,
    };
    let ps = partials(&mut Rng::new(parts as u64), &pa, rows, parts);
    finished(&pa, &ps)
}

#[test]
fn mode_ties_pick_the_first_in_order() {
    // 5 and 2 and 9 appear twice each, 7 once: ASC picks 2, DESC picks 9
    let rows = ints(&[
        Some(5),
        Some(9),
        None,
        Some(2),
        Some(7),
        Some(5),
        Some(9),
        Some(2),
        None,
        None,
    ]);
    for parts in 1..=4 {
        assert_eq!(
            run(
                vec![
                    AggCall::new(AggFunc::Mode { descending: false }, Expr::col(1)),
                    AggCall::new(AggFunc::Mode { descending: true }, Expr::col(1)),
                ],
                &rows,
                parts
            ),
            vec![vec![Value::Int(2), Value::Int(9)]]
        );
    }
    // a clear winner spread across parts
    let rows = ints(&[Some(3), Some(1), Some(3), Some(2), Some(3), Some(1)]);
    for parts in 1..=4 {
        assert_eq!(
            run(
                vec![AggCall::new(
                    AggFunc::Mode { descending: false },
                    Expr::col(1)
                )],
                &rows,
                parts
            ),
            vec![vec![Value::Int(3)]]
        );
    }
}

#[test]
fn percentile_disc_points() {
    // 1..=10 with NULLs and a duplicate-free order
    let mut vals: Vec<Option<i32>> = (1..=10).rev().map(Some).collect();
    vals.push(None);
    vals.insert(3, None);
    let rows = ints(&vals);
    let cases: &[(f64, bool, i32)] = &[
        (0.0, false, 1),
        (0.5, false, 5),
        (0.51, false, 6),
        (1.0, false, 10),
        (0.1, false, 1),
        (0.11, false, 2),
        (0.0, true, 10),
        (0.5, true, 6),
        (1.0, true, 1),
    ];
    for parts in 1..=4 {
        let aggs = cases
            .iter()
            .map(|&(f, d, _)| AggCall::new(pct(f, d), Expr::col(1)))
            .collect();
        assert_eq!(
            run(aggs, &rows, parts),
            vec![cases.iter().map(|c| Value::Int(c.2)).collect::<Vec<_>>()],
            "parts {parts}"
        );
    }
    // duplicates: 1,1,1,2 -> 0.75 is 1, 0.76 is 2
    let rows = ints(&[Some(1), Some(2), Some(1), Some(1)]);
    for parts in 1..=4 {
        assert_eq!(
            run(
                vec![
                    AggCall::new(pct(0.75, false), Expr::col(1)),
                    AggCall::new(pct(0.76, false), Expr::col(1)),
                    AggCall::new(pct(0.25, true), Expr::col(1)),
                    AggCall::new(pct(0.26, true), Expr::col(1)),
                ],
                &rows,
                parts
            ),
            vec![vec![
                Value::Int(1),
                Value::Int(2),
                Value::Int(2),
                Value::Int(1)
            ]]
        );
    }
}

#[test]
fn holistic_over_empty_and_all_null_input() {
    let aggs = vec![
        AggCall::count_star(),
        AggCall::new(AggFunc::CountDistinct, Expr::col(1)),
        AggCall::new(AggFunc::SumDistinct, Expr::col(1)),
        AggCall::new(AggFunc::AvgDistinct, Expr::col(1)),
        AggCall::new(AggFunc::Mode { descending: false }, Expr::col(1)),
        AggCall::new(pct(0.5, false), Expr::col(1)),
        AggCall::new(AggFunc::Sum, Expr::col(1)),
    ];
    let pa = PartialAgg {
        group_by: vec![],
        aggs: aggs.clone(),
    };
    // what the primary does when nothing was gathered
    let empty = pa.partial(&schema(), &[]).unwrap();
    assert_eq!(empty.schema(), pa.partial_schema(&schema()).unwrap());
    let fin = pa.merge_finalize(&[empty]).unwrap();
    assert_eq!(
        batches_to_rows([&fin]).unwrap(),
        vec![vec![Value::BigInt(0), Value::BigInt(0), N, N, N, N, N]]
    );
    let fin_schema = fin.schema();
    let types: Vec<_> = fin_schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    use arrow_schema::DataType as A;
    assert_eq!(
        types,
        vec![
            A::Int64,
            A::Int64,
            A::Int64,
            A::Float64,
            A::Int32,
            A::Int32,
            A::Int64
        ]
    );
    // only NULL arguments
    for parts in 1..=3 {
        assert_eq!(
            run(aggs.clone(), &ints(&[None, None, None]), parts),
            vec![vec![Value::BigInt(3), Value::BigInt(0), N, N, N, N, N]]
        );
    }
    // grouped over nothing: no rows
    let pa = PartialAgg {
        group_by: vec![Expr::col(0)],
        aggs,
    };
    let fin = pa
        .merge_finalize(&[pa.partial(&schema(), &[]).unwrap()])
        .unwrap();
    assert_eq!(fin.num_rows(), 0);
    assert_eq!(fin.num_columns(), 8);
}

#[test]
fn holistic_state_layout() {
    let pa = PartialAgg {
        group_by: vec![Expr::col(0)],
        aggs: vec![
            AggCall::count_star(),
            AggCall::new(AggFunc::CountDistinct, Expr::col(1)),
            AggCall::new(AggFunc::Avg, Expr::col(2)),
            AggCall::new(AggFunc::Mode { descending: false }, Expr::col(3)),
            AggCall::new(pct(0.5, false), Expr::col(1)),
        ],
    };
    assert!(pa.is_holistic());
    assert_eq!(pa.distinct_args(), vec![Expr::col(1), Expr::col(3)]);
    let s = pa.partial_schema(&schema()).unwrap();
    let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["g0", "d0", "d1", "a0_count", "a2_sum", "a2_count", "weight"]
    );
    // DISTINCT only: no weight column
    let pa2 = PartialAgg {
        group_by: vec![],
        aggs: vec![
            AggCall::new(AggFunc::SumDistinct, Expr::col(1)),
            AggCall::new(AggFunc::CountDistinct, Expr::col(1)),
        ],
    };
    let s = pa2.partial_schema(&schema()).unwrap();
    let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["d0"]);
    // per-value counts: the merged state has one row per (g, v, s) present
    let rows: Vec<Vec<Value>> = (0..100)
        .map(|i| {
            vec![
                Value::Int(i % 2),
                Value::Int(i % 3),
                Value::Double(1.0),
                Value::Text("k".into()),
            ]
        })
        .collect();
    let ps = partials(&mut Rng::new(3), &pa, &rows, 3);
    let merged = pa.merge(&ps).unwrap();
    assert_eq!(merged.num_rows(), 6);
    let w = merged.column(6);
    let total: i64 = w
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap()
        .values()
        .iter()
        .sum();
    assert_eq!(total, 100);
    // serde of the plan keeps the fraction exactly
    let json = serde_json::to_string(&pa).unwrap();
    assert_eq!(serde_json::from_str::<PartialAgg>(&json).unwrap(), pa);
}

#[test]
fn percentile_fraction_must_be_between_0_and_1() {
    for f in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        match AggFunc::percentile_disc(f, false) {
            Err(Error::Overflow(m)) => assert!(m.contains("is not between 0 and 1"), "{m}"),
            other => panic!("{f}: {other:?}"),
        }
    }
    assert_eq!(pct(-0.0, false), pct(0.0, false));
    assert_eq!(pct(0.25, true).fraction(), Some(0.25));
    // a hand-made out-of-range fraction is caught when the state is built
    let pa = PartialAgg {
        group_by: vec![],
        aggs: vec![AggCall::new(
            AggFunc::PercentileDisc {
                fraction_bits: 2.0f64.to_bits(),
                descending: false,
            },
            Expr::col(1),
        )],
    };
    assert!(matches!(
        pa.partial_schema(&schema()),
        Err(Error::Overflow(_))
    ));
}

#[test]
fn sum_distinct_types_and_overflow() {
    let schema = TableSchema::new(vec![ColumnDef::new("b", DataType::BigInt, true)]);
    let pa = PartialAgg {
        group_by: vec![],
        aggs: vec![
            AggCall::new(AggFunc::SumDistinct, Expr::col(0)),
            AggCall::new(AggFunc::AvgDistinct, Expr::col(0)),
        ],
    };
    let mut s = Slice::new(schema.clone()).unwrap();
    s.insert(&[
        vec![Value::BigInt(i64::MAX)],
        vec![Value::BigInt(i64::MAX)],
        vec![Value::BigInt(-1)],
    ])
    .unwrap();
    let p = pa.partial(&schema, &s.scan(None, None).unwrap()).unwrap();
    let fin = pa.merge_finalize(&[p]).unwrap();
    // duplicates do not overflow; AVG never does
    assert_eq!(
        batches_to_rows([&fin]).unwrap(),
        vec![vec![
            Value::BigInt(i64::MAX - 1),
            Value::Double((i64::MAX as f64 - 1.0) / 2.0)
        ]]
    );
    s.insert(&[vec![Value::BigInt(1)], vec![Value::BigInt(2)]])
        .unwrap();
    let p = pa.partial(&schema, &s.scan(None, None).unwrap()).unwrap();
    assert!(matches!(pa.merge_finalize(&[p]), Err(Error::Overflow(_))));
    // SUM / AVG (DISTINCT) of text is a type error
    let bad = PartialAgg {
        group_by: vec![],
        aggs: vec![AggCall::new(AggFunc::SumDistinct, Expr::col(3))],
    };
    assert!(matches!(
        bad.partial_schema(&self::schema()),
        Err(Error::TypeMismatch(_))
    ));
}

#[test]
fn distinct_doubles_treat_signed_zeros_alike() {
    let rows: Vec<Vec<Value>> = [0.0, -0.0, 0.5, 0.5, -0.0]
        .iter()
        .map(|&x| vec![N, N, Value::Double(x), N])
        .collect();
    for parts in 1..=3 {
        let got = run(
            vec![
                AggCall::new(AggFunc::CountDistinct, Expr::col(2)),
                AggCall::new(AggFunc::SumDistinct, Expr::col(2)),
                AggCall::new(AggFunc::Mode { descending: false }, Expr::col(2)),
            ],
            &rows,
            parts,
        );
        assert_eq!(
            got,
            vec![vec![
                Value::BigInt(2),
                Value::Double(0.5),
                Value::Double(0.0)
            ]]
        );
    }
}
