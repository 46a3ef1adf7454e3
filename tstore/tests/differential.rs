//! Differential tests: slice operators vs a row-by-row reference evaluator.
mod common;

use common::*;
use smrdb_tstore::slice::batches_to_rows;
use smrdb_tstore::*;

const SIZES: &[usize] = &[0, 1, 6, 7, 8, 13, 14, 15, 40];
const CHUNK: usize = 7;
const TEXTS: &[&str] = &["", "a", "ab", "abc", "b", "ba", "xyz", "a_c"];

static SCHEMA: std::sync::LazyLock<TableSchema> = std::sync::LazyLock::new(schema);

fn schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("a", DataType::Int, true),
        ColumnDef::new("b", DataType::BigInt, true),
        ColumnDef::new("c", DataType::Double, true),
        ColumnDef::new("d", DataType::Text, true),
        ColumnDef::new("e", DataType::Date, true),
        ColumnDef::new("f", DataType::Boolean, true),
        ColumnDef::new("g", DataType::Int, false),
    ])
}

fn rand_value(r: &mut Rng, t: DataType, nullable: bool) -> Value {
    if nullable && r.chance(0.2) {
        return Value::Null;
    }
    match t {
        DataType::Int => Value::Int(r.below(11) as i32 - 5),
        DataType::BigInt => Value::BigInt(r.below(11) as i64 - 5),
        DataType::Double => Value::Double((r.below(17) as f64 - 8.0) * 0.25),
        DataType::Text => Value::Text(r.pick(TEXTS).to_string()),
        DataType::Date => Value::Date(18000 + r.below(5) as i32),
        DataType::Boolean => Value::Bool(r.chance(0.5)),
    }
}

fn rand_row(r: &mut Rng) -> Vec<Value> {
    schema()
        .columns
        .iter()
        .map(|c| rand_value(r, c.data_type, c.nullable))
        .collect()
}

fn num_lit(r: &mut Rng) -> Expr {
    match r.below(4) {
        0 => Expr::lit(Value::Int(r.below(7) as i32 - 3)),
        1 => Expr::lit(Value::BigInt(r.below(7) as i64 - 3)),
        2 => Expr::lit(Value::Double((r.below(9) as f64 - 4.0) * 0.5)),
        _ => Expr::lit(if r.chance(0.3) {
            Value::Null
        } else {
            Value::Int(r.below(3) as i32 + 1)
        }),
    }
}

fn gen_num(r: &mut Rng, depth: u32) -> Expr {
    if depth == 0 || r.chance(0.4) {
        return if r.chance(0.6) {
            Expr::col(*r.pick(&[0, 1, 2, 6]))
        } else {
            num_lit(r)
        };
    }
    let d = depth - 1;
    match r.below(10) {
        0..=3 => {
            let op = *r.pick(&[
                BinaryOp::Add,
                BinaryOp::Sub,
                BinaryOp::Mul,
                BinaryOp::Add,
                BinaryOp::Div,
                BinaryOp::Mod,
            ]);
            gen_num(r, d).binary(op, gen_num(r, d))
        }
        4 => Expr::Negate(Box::new(gen_num(r, d))),
        5 => Expr::Case {
            when_then: vec![(gen_bool(r, d), gen_num(r, d))],
            else_expr: if r.chance(0.7) {
                Some(Box::new(gen_num(r, d)))
            } else {
                None
            },
        },
        6 => Expr::Coalesce(vec![gen_num(r, d), gen_num(r, d)]),
        7 => Expr::NullIf(Box::new(gen_num(r, d)), Box::new(gen_num(r, d))),
        8 => gen_num(r, d).cast(*r.pick(&[DataType::Int, DataType::BigInt, DataType::Double])),
        _ => {
            // the classic guarded division
            let den = gen_num(r, d);
            Expr::Case {
                when_then: vec![(
                    den.clone().binary(BinaryOp::NotEq, Expr::lit(0)),
                    gen_num(r, d).binary(BinaryOp::Div, den),
                )],
                else_expr: None,
            }
        }
    }
}

fn gen_text(r: &mut Rng) -> Expr {
    match r.below(4) {
        0 | 1 => Expr::col(3),
        2 => Expr::lit(r.pick(TEXTS).to_string().as_str()),
        _ => Expr::Coalesce(vec![Expr::col(3), Expr::lit("zz")]),
    }
}

fn gen_bool(r: &mut Rng, depth: u32) -> Expr {
    let d = depth.saturating_sub(1);
    let cmp = *r.pick(&[
        BinaryOp::Eq,
        BinaryOp::NotEq,
        BinaryOp::Lt,
        BinaryOp::LtEq,
        BinaryOp::Gt,
        BinaryOp::GtEq,
    ]);
    match r.below(if depth == 0 { 6 } else { 12 }) {
        0 | 1 => gen_num(r, d.min(1)).binary(cmp, gen_num(r, d.min(1))),
        2 => gen_text(r).binary(cmp, gen_text(r)),
        3 => Expr::col(4).binary(cmp, Expr::lit(Value::Date(18000 + r.below(5) as i32))),
        4 => Expr::col(5),
        5 => Expr::IsNull {
            expr: Box::new(Expr::col(r.below(7) as usize)),
            negated: r.chance(0.5),
        },
        6 => gen_bool(r, d).and(gen_bool(r, d)),
        7 => gen_bool(r, d).or(gen_bool(r, d)),
        8 => !gen_bool(r, d),
        9 => Expr::InList {
            expr: Box::new(Expr::col(*r.pick(&[0, 1, 6]))),
            list: (0..r.below(4))
                .map(|_| {
                    if r.chance(0.2) {
                        Value::Null
                    } else {
                        Value::Int(r.below(7) as i32 - 3)
                    }
                })
                .collect(),
            negated: r.chance(0.5),
        },
        10 => Expr::Between {
            expr: Box::new(gen_num(r, 0)),
            low: Box::new(num_lit(r)),
            high: Box::new(num_lit(r)),
            negated: r.chance(0.3),
        },
        _ => Expr::Like {
            expr: Box::new(Expr::col(3)),
            pattern: Box::new(Expr::lit(
                *r.pick(&["a%", "%b", "_", "%", "a_", "%a%", "", "a\\_c"]),
            )),
            negated: r.chance(0.3),
        },
    }
}

fn ref_filter(f: &Expr, rows: &[Vec<Value>]) -> Result<Vec<Vec<Value>>, RefErr> {
    let mut out = Vec::new();
    for row in rows {
        if eval(f, row, &SCHEMA)? == Value::Bool(true) {
            out.push(row.clone());
        }
    }
    Ok(out)
}

fn build(r: &mut Rng, n: usize, chunk: usize) -> (Slice, Vec<Vec<Value>>) {
    let mut s = Slice::with_chunk_rows(schema(), chunk).unwrap();
    let rows: Vec<Vec<Value>> = (0..n).map(|_| rand_row(r)).collect();
    let mut i = 0;
    while i < n {
        let k = (1 + r.below(9) as usize).min(n - i);
        assert_eq!(s.insert(&rows[i..i + k]).unwrap(), k);
        i += k;
    }
    assert_eq!(s.row_count(), n);
    assert_eq!(s.rows().unwrap(), rows);
    (s, rows)
}

#[test]
fn scan_filter_project_differential() {
    let mut checked = (0, 0);
    for seed in 0..60u64 {
        let mut r = Rng::new(seed);
        for &n in SIZES {
            let (s, rows) = build(&mut r, n, CHUNK);
            assert_eq!(s.sealed_chunks(), n / CHUNK);
            for _ in 0..4 {
                let f = gen_bool(&mut r, 3);
                let expect = ref_filter(&f, &rows);
                let got = s.scan(Some(&f), None);
                match (expect, got) {
                    (Ok(e), Ok(g)) => {
                        assert_eq!(batches_to_rows(&g).unwrap(), e, "filter {f:?}");
                        checked.0 += 1;
                    }
                    (Err(e), Err(g)) => {
                        assert_eq!(e, classify(&g), "filter {f:?}: {g}");
                        checked.1 += 1;
                    }
                    (e, g) => panic!("filter {f:?}: reference {e:?} vs slice {g:?}"),
                }
                // projection of a numeric expression
                let p = gen_num(&mut r, 3);
                let t = p.data_type(s.schema()).unwrap();
                let frag = Fragment {
                    table: "t".into(),
                    filter: None,
                    projection: vec![p.clone(), Expr::col(6)],
                    partial_agg: None,
                };
                let expect: Result<Vec<Vec<Value>>, RefErr> = rows
                    .iter()
                    .map(|row| {
                        Ok(vec![
                            eval(&p, row, &SCHEMA)?.coerce_to(t).unwrap(),
                            row[6].clone(),
                        ])
                    })
                    .collect();
                match (expect, s.execute(&frag)) {
                    (Ok(e), Ok(g)) => {
                        assert_eq!(batches_to_rows(&g).unwrap(), e, "projection {p:?}")
                    }
                    (Err(e), Err(g)) => assert_eq!(e, classify(&g), "projection {p:?}: {g}"),
                    (e, g) => panic!("projection {p:?}: reference {e:?} vs slice {g:?}"),
                }
            }
        }
    }
    assert!(checked.0 > 1000 && checked.1 > 10, "{checked:?}");
}

#[test]
fn delete_update_differential() {
    for seed in 0..40u64 {
        let mut r = Rng::new(1000 + seed);
        for &n in SIZES {
            let (mut s, mut rows) = build(&mut r, n, CHUNK);
            for _ in 0..3 {
                let f = gen_bool(&mut r, 2);
                if r.chance(0.5) {
                    let before = s.rows().unwrap();
                    let keep: Result<Vec<bool>, RefErr> = rows
                        .iter()
                        .map(|row| Ok(eval(&f, row, &SCHEMA)? != Value::Bool(true)))
                        .collect();
                    match (keep, s.delete(Some(&f))) {
                        (Ok(keep), Ok(cnt)) => {
                            assert_eq!(cnt, keep.iter().filter(|k| !**k).count());
                            let mut it = keep.iter();
                            rows.retain(|_| *it.next().unwrap());
                        }
                        (Err(e), Err(g)) => {
                            assert_eq!(e, classify(&g));
                            assert_eq!(s.rows().unwrap(), before, "failed delete changed state");
                        }
                        (e, g) => panic!("delete {f:?}: {e:?} vs {g:?}"),
                    }
                } else {
                    // SET a = <num expr>, d = 'upd' WHERE f
                    let v = gen_num(&mut r, 2);
                    let assignments = vec![(0usize, v.clone()), (3usize, Expr::lit("upd"))];
                    let before = s.rows().unwrap();
                    let expect: Result<Vec<Vec<Value>>, RefErr> = rows
                        .iter()
                        .map(|row| {
                            if eval(&f, row, &SCHEMA)? == Value::Bool(true) {
                                let mut nr = row.clone();
                                nr[0] = eval(&v.clone().cast(DataType::Int), row, &SCHEMA)?;
                                nr[3] = Value::Text("upd".into());
                                Ok(nr)
                            } else {
                                Ok(row.clone())
                            }
                        })
                        .collect();
                    match (expect, s.update(&assignments, Some(&f))) {
                        (Ok(e), Ok(_)) => {
                            assert_eq!(s.rows().unwrap(), e, "update {v:?} where {f:?}");
                            rows = e
                        }
                        (Err(_), Err(_)) => {
                            assert_eq!(s.rows().unwrap(), before, "failed update changed state")
                        }
                        (e, g) => panic!("update {v:?} where {f:?}: {e:?} vs {g:?}"),
                    }
                }
                assert_eq!(s.rows().unwrap(), rows, "seed {seed} n {n} filter {f:?}");
                assert_eq!(s.row_count(), rows.len());
            }
            // Inserting after deletes/updates still works and keeps order.
            let extra: Vec<Vec<Value>> = (0..9).map(|_| rand_row(&mut r)).collect();
            s.insert(&extra).unwrap();
            rows.extend(extra);
            assert_eq!(s.rows().unwrap(), rows);
        }
    }
}

fn ref_aggregate(pa: &PartialAgg, rows: &[Vec<Value>]) -> Vec<Vec<Value>> {
    let mut keyed: Vec<(Vec<Value>, &Vec<Value>)> = rows
        .iter()
        .map(|row| {
            (
                pa.group_by
                    .iter()
                    .map(|g| eval(g, row, &SCHEMA).unwrap())
                    .collect(),
                row,
            )
        })
        .collect();
    keyed.sort_by(|a, b| row_cmp(&a.0, &b.0));
    let mut groups: Vec<(Vec<Value>, Vec<&Vec<Value>>)> = Vec::new();
    for (k, row) in keyed {
        match groups.last_mut() {
            Some((gk, rs)) if row_cmp(gk, &k).is_eq() => rs.push(row),
            _ => groups.push((k, vec![row])),
        }
    }
    if pa.group_by.is_empty() && groups.is_empty() {
        groups.push((vec![], vec![]));
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let mut out = k;
            for a in &pa.aggs {
                let vals: Vec<Value> = match &a.arg {
                    Some(e) => rs
                        .iter()
                        .map(|r| eval(e, r, &SCHEMA).unwrap())
                        .filter(|v| !v.is_null())
                        .collect(),
                    None => vec![],
                };
                let sum = || -> Value {
                    if vals.is_empty() {
                        return Value::Null;
                    }
                    if vals.iter().any(|v| matches!(v, Value::Double(_))) {
                        Value::Double(vals.iter().map(|v| v.as_f64().unwrap()).sum())
                    } else {
                        Value::BigInt(vals.iter().map(|v| v.as_i64().unwrap()).sum())
                    }
                };
                out.push(match a.func {
                    AggFunc::CountStar => Value::BigInt(rs.len() as i64),
                    AggFunc::Count => Value::BigInt(vals.len() as i64),
                    AggFunc::Sum => sum(),
                    AggFunc::Avg => match sum() {
                        Value::Null => Value::Null,
                        s => Value::Double(s.as_f64().unwrap() / vals.len() as f64),
                    },
                    AggFunc::Min => vals
                        .iter()
                        .cloned()
                        .min_by(total_cmp)
                        .unwrap_or(Value::Null),
                    AggFunc::Max => vals
                        .iter()
                        .cloned()
                        .max_by(total_cmp)
                        .unwrap_or(Value::Null),
                    f => ref_holistic(f, vals.clone()),
                });
            }
            out
        })
        .collect()
}

/// Reference holistic aggregate over the non-null argument values of one group.
fn ref_holistic(f: AggFunc, mut vals: Vec<Value>) -> Value {
    vals.sort_by(total_cmp);
    let mut distinct: Vec<(Value, i64)> = Vec::new();
    for v in vals.iter() {
        match distinct.last_mut() {
            Some((d, n)) if d.sql_eq(v) == Some(true) => *n += 1,
            _ => distinct.push((v.clone(), 1)),
        }
    }
    let dsum = || -> Value {
        if distinct.is_empty() {
            Value::Null
        } else if distinct.iter().any(|(v, _)| matches!(v, Value::Double(_))) {
            Value::Double(distinct.iter().map(|(v, _)| v.as_f64().unwrap()).sum())
        } else {
            Value::BigInt(distinct.iter().map(|(v, _)| v.as_i64().unwrap()).sum())
        }
    };
    match f {
        AggFunc::CountDistinct => Value::BigInt(distinct.len() as i64),
        AggFunc::SumDistinct => dsum(),
        AggFunc::AvgDistinct => match dsum() {
            Value::Null => Value::Null,
            s => Value::Double(s.as_f64().unwrap() / distinct.len() as f64),
        },
        AggFunc::Mode { descending } => {
            if descending {
                distinct.reverse();
            }
            let best = distinct.iter().map(|(_, n)| *n).max();
            distinct
                .into_iter()
                .find(|(_, n)| Some(*n) == best)
                .map(|(v, _)| v)
                .unwrap_or(Value::Null)
        }
        AggFunc::PercentileDisc { descending, .. } => {
            if vals.is_empty() {
                return Value::Null;
            }
            if descending {
                vals.reverse();
            }
            let p = f.fraction().unwrap();
            let pos = ((p * vals.len() as f64).ceil() as usize).max(1);
            vals[pos - 1].clone()
        }
        f => panic!("not holistic: {f:?}"),
    }
}

fn gen_agg(r: &mut Rng) -> PartialAgg {
    let group_by: Vec<Expr> = (0..r.below(3))
        .map(|_| match r.below(5) {
            0 => Expr::col(0),
            1 => Expr::col(3),
            2 => Expr::col(5),
            3 => Expr::col(4),
            _ => Expr::col(6).binary(BinaryOp::Mod, Expr::lit(3)),
        })
        .collect();
    let aggs = (0..1 + r.below(4))
        .map(|_| match r.below(9) {
            6 => AggCall::new(
                *r.pick(&[
                    AggFunc::CountDistinct,
                    AggFunc::SumDistinct,
                    AggFunc::AvgDistinct,
                ]),
                Expr::col(*r.pick(&[0, 1, 2, 6])),
            ),
            7 => AggCall::new(
                AggFunc::Mode {
                    descending: r.chance(0.5),
                },
                Expr::col(r.below(7) as usize),
            ),
            8 => AggCall::new(
                AggFunc::percentile_disc(*r.pick(&[0.0, 0.1, 0.25, 0.5, 0.7, 1.0]), r.chance(0.5))
                    .unwrap(),
                Expr::col(r.below(7) as usize),
            ),
            0 => AggCall::count_star(),
            1 => AggCall::new(AggFunc::Count, Expr::col(r.below(7) as usize)),
            2 => AggCall::new(AggFunc::Sum, Expr::col(*r.pick(&[0, 1, 2, 6]))),
            3 => AggCall::new(AggFunc::Avg, Expr::col(*r.pick(&[0, 1, 2, 6]))),
            4 => AggCall::new(AggFunc::Min, Expr::col(r.below(7) as usize)),
            _ => AggCall::new(AggFunc::Max, Expr::col(r.below(7) as usize)),
        })
        .collect();
    PartialAgg { group_by, aggs }
}

#[test]
fn partial_aggregate_split_merge_differential() {
    for seed in 0..40u64 {
        let mut r = Rng::new(5000 + seed);
        for &n in SIZES {
            let rows: Vec<Vec<Value>> = (0..n).map(|_| rand_row(&mut r)).collect();
            for _ in 0..3 {
                let pa = gen_agg(&mut r);
                let filter = if r.chance(0.5) {
                    Some(gen_bool(&mut r, 1))
                } else {
                    None
                };
                let filtered = match &filter {
                    Some(f) => match ref_filter(f, &rows) {
                        Ok(x) => x,
                        Err(_) => continue,
                    },
                    None => rows.clone(),
                };
                let mut expect = ref_aggregate(&pa, &filtered);
                expect.sort_by(|a, b| row_cmp(a, b));
                let frag = Fragment {
                    table: "t".into(),
                    filter: filter.clone(),
                    projection: vec![],
                    partial_agg: Some(pa.clone()),
                };
                for k in 1..=5usize {
                    let mut slices: Vec<Slice> = (0..k)
                        .map(|_| Slice::with_chunk_rows(schema(), CHUNK).unwrap())
                        .collect();
                    for (i, row) in rows.iter().enumerate() {
                        slices[i % k].insert(std::slice::from_ref(row)).unwrap();
                    }
                    // ship partials through IPC like the real system
                    let partials: Vec<RecordBatch> = slices
                        .iter()
                        .flat_map(|s| {
                            decode_batches(&encode_batches(&s.execute(&frag).unwrap()).unwrap())
                                .unwrap()
                        })
                        .collect();
                    assert_eq!(partials.len(), k);
                    let fin = pa.merge_finalize(&partials).unwrap();
                    let mut got = batches_to_rows([&fin]).unwrap();
                    got.sort_by(|a, b| row_cmp(a, b));
                    assert_eq!(got, expect, "agg {pa:?} filter {filter:?} n={n} k={k}");
                }
            }
        }
    }
}
