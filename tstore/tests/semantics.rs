//! Targeted semantics tests: NULL logic, LIKE, IN with NULL, CASE, CAST, errors,
//! atomic insert/update, IPC round trip.
use smrdb_tstore::slice::batches_to_rows;
use smrdb_tstore::*;

fn col(name: &str, t: DataType, nullable: bool) -> ColumnDef {
    ColumnDef::new(name, t, nullable)
}

fn table() -> Slice {
    let mut s = Slice::with_chunk_rows(
        TableSchema::new(vec![
            col("id", DataType::Int, false),
            col("x", DataType::Int, true),
            col("name", DataType::Text, true),
            col("price", DataType::Double, true),
            col("day", DataType::Date, true),
            col("ok", DataType::Boolean, true),
        ]),
        3,
    )
    .unwrap();
    let rows = vec![
        vec![
            Value::Int(1),
            Value::Int(10),
            "apple".into(),
            Value::Double(1.5),
            "2024-01-01".into(),
            Value::Bool(true),
        ],
        vec![
            Value::Int(2),
            Value::Int(0),
            "banana".into(),
            Value::Int(2),
            "2024-02-29".into(),
            Value::Bool(false),
        ],
        vec![
            Value::Int(3),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
        ],
        vec![
            Value::Int(4),
            Value::Int(-5),
            "a_b%c".into(),
            Value::Double(-0.5),
            "1999-12-31".into(),
            Value::Bool(true),
        ],
    ];
    assert_eq!(s.insert(&rows).unwrap(), 4);
    s
}

fn eval_col(s: &Slice, e: Expr) -> Result<Vec<Value>> {
    let f = Fragment {
        table: "t".into(),
        filter: None,
        projection: vec![e],
        partial_agg: None,
    };
    Ok(batches_to_rows(&s.execute(&f)?)?
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect())
}

fn ids(s: &Slice, filter: Expr) -> Vec<i32> {
    batches_to_rows(&s.scan(Some(&filter), Some(&[0])).unwrap())
        .unwrap()
        .into_iter()
        .map(|r| match r[0] {
            Value::Int(i) => i,
            _ => panic!(),
        })
        .collect()
}

const N: Value = Value::Null;
fn b(x: bool) -> Value {
    Value::Bool(x)
}

#[test]
fn three_valued_logic() {
    let s = table();
    // x > 0: T, F, NULL, F
    let p = Expr::col(1).gt(Expr::lit(0));
    assert_eq!(
        eval_col(&s, p.clone()).unwrap(),
        vec![b(true), b(false), N, b(false)]
    );
    assert_eq!(
        eval_col(&s, !p.clone()).unwrap(),
        vec![b(false), b(true), N, b(true)]
    );
    // NULL AND FALSE = FALSE, NULL AND TRUE = NULL, NULL OR TRUE = TRUE
    assert_eq!(
        eval_col(&s, p.clone().and(Expr::lit(false))).unwrap(),
        vec![b(false); 4]
    );
    assert_eq!(
        eval_col(&s, p.clone().and(Expr::lit(true))).unwrap(),
        vec![b(true), b(false), N, b(false)]
    );
    assert_eq!(
        eval_col(&s, p.clone().or(Expr::lit(true))).unwrap(),
        vec![b(true); 4]
    );
    assert_eq!(
        eval_col(&s, p.clone().or(Expr::lit(Value::Null))).unwrap(),
        vec![b(true), N, N, N]
    );
    assert_eq!(
        eval_col(&s, Expr::col(1).is_null()).unwrap(),
        vec![b(false), b(false), b(true), b(false)]
    );
    assert_eq!(
        eval_col(
            &s,
            Expr::IsNull {
                expr: Box::new(Expr::col(2)),
                negated: true
            }
        )
        .unwrap(),
        vec![b(true), b(true), b(false), b(true)]
    );
    // WHERE keeps only TRUE rows
    assert_eq!(ids(&s, !p.clone()), vec![2, 4]);
    assert_eq!(
        ids(&s, Expr::col(1).eq(Expr::lit(Value::Null))),
        Vec::<i32>::new()
    );
    // NULL arithmetic propagates
    assert_eq!(
        eval_col(&s, Expr::col(1).binary(BinaryOp::Add, Expr::lit(1))).unwrap(),
        vec![Value::Int(11), Value::Int(1), N, Value::Int(-4)]
    );
}

#[test]
fn in_list_between_like() {
    let s = table();
    let inl = |list: Vec<Value>, negated| Expr::InList {
        expr: Box::new(Expr::col(1)),
        list,
        negated,
    };
    assert_eq!(
        eval_col(&s, inl(vec![Value::Int(10), Value::BigInt(-5)], false)).unwrap(),
        vec![b(true), b(false), N, b(true)]
    );
    // x IN (10, NULL): TRUE / NULL / NULL / NULL
    assert_eq!(
        eval_col(&s, inl(vec![Value::Int(10), N], false)).unwrap(),
        vec![b(true), N, N, N]
    );
    // x NOT IN (10, NULL): FALSE / NULL / NULL / NULL (never TRUE)
    assert_eq!(
        eval_col(&s, inl(vec![Value::Int(10), N], true)).unwrap(),
        vec![b(false), N, N, N]
    );
    assert_eq!(
        eval_col(&s, inl(vec![Value::Double(10.0)], true)).unwrap(),
        vec![b(false), b(true), N, b(true)]
    );
    let between = |lo: i32, hi: i32, negated| Expr::Between {
        expr: Box::new(Expr::col(1)),
        low: Box::new(Expr::lit(lo)),
        high: Box::new(Expr::lit(hi)),
        negated,
    };
    assert_eq!(ids(&s, between(0, 10, false)), vec![1, 2]);
    assert_eq!(ids(&s, between(0, 10, true)), vec![4]);
    let like = |p: &str, negated| Expr::Like {
        expr: Box::new(Expr::col(2)),
        pattern: Box::new(Expr::lit(p)),
        negated,
    };
    assert_eq!(ids(&s, like("%an%", false)), vec![2]);
    assert_eq!(ids(&s, like("a%", false)), vec![1, 4]);
    assert_eq!(ids(&s, like("_pple", false)), vec![1]);
    assert_eq!(ids(&s, like("a\\_b\\%c", false)), vec![4]);
    assert_eq!(ids(&s, like("a%", true)), vec![2]); // NULL name is neither
    assert_eq!(
        eval_col(&s, like("apple", false)).unwrap(),
        vec![b(true), b(false), N, b(false)]
    );
    // dates compare with dates
    assert_eq!(
        ids(
            &s,
            Expr::col(4).gt(Expr::lit(Value::date("2024-01-31").unwrap()))
        ),
        vec![2]
    );
}

#[test]
fn case_coalesce_nullif_cast() {
    let s = table();
    // CASE WHEN x <> 0 THEN 100 / x ELSE -1 END: no division by zero
    let case = Expr::Case {
        when_then: vec![(
            Expr::col(1).binary(BinaryOp::NotEq, Expr::lit(0)),
            Expr::lit(100).binary(BinaryOp::Div, Expr::col(1)),
        )],
        else_expr: Some(Box::new(Expr::lit(-1))),
    };
    assert_eq!(
        eval_col(&s, case).unwrap(),
        vec![
            Value::Int(10),
            Value::Int(-1),
            Value::Int(-1),
            Value::Int(-20)
        ]
    );
    // mixed branch types promote to double; no ELSE gives NULL
    let case = Expr::Case {
        when_then: vec![
            (Expr::col(0).eq(Expr::lit(1)), Expr::lit(1)),
            (Expr::col(0).eq(Expr::lit(2)), Expr::lit(2.5)),
        ],
        else_expr: None,
    };
    assert_eq!(
        eval_col(&s, case).unwrap(),
        vec![Value::Double(1.0), Value::Double(2.5), N, N]
    );
    assert_eq!(
        eval_col(&s, Expr::Coalesce(vec![Expr::col(2), Expr::lit("none")])).unwrap(),
        vec![
            "apple".into(),
            "banana".into(),
            "none".into(),
            "a_b%c".into()
        ]
    );
    // COALESCE evaluates later arguments only where needed
    assert_eq!(
        eval_col(
            &s,
            Expr::Coalesce(vec![
                Expr::col(0),
                Expr::lit(1).binary(BinaryOp::Div, Expr::lit(0))
            ])
        )
        .unwrap(),
        vec![Value::Int(1), Value::Int(2), Value::Int(3), Value::Int(4)]
    );
    assert_eq!(
        eval_col(
            &s,
            Expr::NullIf(Box::new(Expr::col(1)), Box::new(Expr::lit(0)))
        )
        .unwrap(),
        vec![Value::Int(10), N, N, Value::Int(-5)]
    );
    assert_eq!(
        eval_col(&s, Expr::col(1).cast(DataType::Text)).unwrap(),
        vec!["10".into(), "0".into(), N, "-5".into()]
    );
    assert_eq!(
        eval_col(&s, Expr::col(4).cast(DataType::Text)).unwrap(),
        vec![
            "2024-01-01".into(),
            "2024-02-29".into(),
            N,
            "1999-12-31".into()
        ]
    );
    assert_eq!(
        eval_col(&s, Expr::col(3).cast(DataType::Int)).unwrap(),
        // Ties round to even, as PostgreSQL's rint: 1.5 -> 2, -0.5 -> 0.
        vec![Value::Int(2), Value::Int(2), N, Value::Int(0)]
    );
    assert_eq!(
        Expr::lit("42")
            .cast(DataType::BigInt)
            .eval_scalar()
            .unwrap(),
        Value::BigInt(42)
    );
    assert_eq!(
        Expr::lit("2020-02-02")
            .cast(DataType::Date)
            .eval_scalar()
            .unwrap(),
        Value::date("2020-02-02").unwrap()
    );
    assert_eq!(
        Expr::lit("t")
            .cast(DataType::Boolean)
            .eval_scalar()
            .unwrap(),
        Value::Bool(true)
    );
    // bad casts are errors
    assert!(matches!(
        eval_col(&s, Expr::col(2).cast(DataType::Int)),
        Err(Error::InvalidValue(_))
    ));
    assert!(matches!(
        Expr::lit("2020-13-01").cast(DataType::Date).eval_scalar(),
        Err(Error::InvalidValue(_))
    ));
    assert!(matches!(
        Expr::lit(1e12).cast(DataType::Int).eval_scalar(),
        Err(Error::Overflow(_))
    ));
    assert!(matches!(
        Expr::lit(5_000_000_000i64)
            .cast(DataType::Int)
            .eval_scalar(),
        Err(Error::Overflow(_))
    ));
    assert!(matches!(
        Expr::col(4).cast(DataType::Int).data_type(s.schema()),
        Err(Error::TypeMismatch(_))
    ));
}

#[test]
fn type_errors() {
    let s = table();
    let e = Expr::col(2).eq(Expr::lit(1));
    match e.data_type(s.schema()) {
        Err(Error::TypeMismatch(m)) => assert!(m.contains("TEXT") && m.contains("INT"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        s.scan(Some(&e), None),
        Err(Error::TypeMismatch(_))
    ));
    assert!(matches!(
        s.scan(Some(&Expr::col(1)), None),
        Err(Error::TypeMismatch(_))
    ));
    assert!(matches!(
        s.scan(Some(&Expr::col(9).is_null()), None),
        Err(Error::UnknownColumn(_))
    ));
    assert!(matches!(
        s.scan(None, Some(&[7])),
        Err(Error::UnknownColumn(_))
    ));
    assert!(matches!(
        Expr::col(5).and(Expr::col(1)).data_type(s.schema()),
        Err(Error::TypeMismatch(_))
    ));
    assert_eq!(
        Expr::col(1)
            .binary(BinaryOp::Mul, Expr::col(3))
            .data_type(s.schema())
            .unwrap(),
        DataType::Double
    );
    assert_eq!(
        Expr::col(1)
            .binary(BinaryOp::Mul, Expr::lit(2i64))
            .data_type(s.schema())
            .unwrap(),
        DataType::BigInt
    );
    assert_eq!(s.schema().index_of("price").unwrap(), 3);
    assert!(matches!(
        s.schema().index_of("nope"),
        Err(Error::UnknownColumn(_))
    ));
}

#[test]
fn division_by_zero_is_an_error_and_update_is_atomic() {
    let mut s = table();
    let before = s.rows().unwrap();
    assert!(matches!(
        eval_col(&s, Expr::lit(1).binary(BinaryOp::Div, Expr::col(1))),
        Err(Error::DivisionByZero)
    ));
    assert!(matches!(
        s.scan(
            Some(
                &Expr::col(0)
                    .binary(BinaryOp::Mod, Expr::col(1))
                    .eq(Expr::lit(0))
            ),
            None
        ),
        Err(Error::DivisionByZero)
    ));
    // SET x = 100 / x over all rows: row 2 has x = 0 -> error, nothing changes
    let r = s.update(
        &[
            (1, Expr::lit(100).binary(BinaryOp::Div, Expr::col(1))),
            (2, Expr::lit("changed")),
        ],
        None,
    );
    assert!(matches!(r, Err(Error::DivisionByZero)), "{r:?}");
    assert_eq!(s.rows().unwrap(), before);
    // same, restricted by WHERE x <> 0: works
    let n = s
        .update(
            &[(1, Expr::lit(100).binary(BinaryOp::Div, Expr::col(1)))],
            Some(&Expr::col(1).binary(BinaryOp::NotEq, Expr::lit(0))),
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(
        eval_col(&s, Expr::col(1)).unwrap(),
        vec![Value::Int(10), Value::Int(0), N, Value::Int(-20)]
    );
    // NOT NULL violation and type mismatch abort
    let before = s.rows().unwrap();
    assert!(matches!(
        s.update(&[(0, Expr::lit(Value::Null))], None),
        Err(Error::NullViolation(_))
    ));
    assert!(matches!(
        s.update(&[(0, Expr::lit("x"))], None),
        Err(Error::TypeMismatch(_))
    ));
    assert!(matches!(
        s.update(&[(0, Expr::lit(i64::MAX))], None),
        Err(Error::Overflow(_))
    ));
    assert_eq!(s.rows().unwrap(), before);
    // update using old values of several columns; double -> int assignment rounds
    assert_eq!(
        s.update(
            &[(1, Expr::col(0).binary(BinaryOp::Mul, Expr::lit(2.25)))],
            Some(&Expr::col(0).gt(Expr::lit(2)))
        )
        .unwrap(),
        2
    );
    assert_eq!(
        eval_col(&s, Expr::col(1)).unwrap(),
        vec![Value::Int(10), Value::Int(0), Value::Int(7), Value::Int(9)]
    );
    assert_eq!(s.delete(Some(&Expr::col(2).is_null())).unwrap(), 1);
    assert_eq!(s.row_count(), 3);
    assert_eq!(s.delete(None).unwrap(), 3);
    assert_eq!(s.row_count(), 0);
    assert!(s.scan(None, None).unwrap().is_empty());
}

#[test]
fn insert_validation_is_atomic() {
    let mut s = table();
    let before = s.rows().unwrap();
    let good = vec![
        Value::Int(9),
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
        Value::Null,
    ];
    type Check = fn(&Error) -> bool;
    let cases: Vec<(Vec<Value>, Check)> = vec![
        (vec![Value::Null, N, N, N, N, N], |e| {
            matches!(e, Error::NullViolation(_))
        }),
        (vec![Value::Int(1), "x".into(), N, N, N, N], |e| {
            matches!(e, Error::InvalidValue(_))
        }),
        (vec![Value::Int(1), N, N, N, "2023-02-30".into(), N], |e| {
            matches!(e, Error::InvalidValue(_))
        }),
        (vec![Value::Int(1), N, N, N, N, Value::Int(1)], |e| {
            matches!(e, Error::TypeMismatch(_))
        }),
        (vec![Value::BigInt(1 << 33), N, N, N, N, N], |e| {
            matches!(e, Error::Overflow(_))
        }),
        (vec![Value::Int(1)], |e| {
            matches!(
                e,
                Error::Arity {
                    expected: 6,
                    got: 1
                }
            )
        }),
    ];
    for (bad, check) in cases {
        let err = s.insert(&[good.clone(), bad.clone()]).unwrap_err();
        assert!(check(&err), "{bad:?}: {err}");
        assert_eq!(s.rows().unwrap(), before);
    }
    // coercions: int -> double, text -> date / int, bigint -> int
    s.insert(&[vec![
        Value::BigInt(5),
        "7".into(),
        "z".into(),
        Value::Int(3),
        "2000-01-01".into(),
        "false".into(),
    ]])
    .unwrap();
    assert_eq!(
        s.rows().unwrap().last().unwrap(),
        &vec![
            Value::Int(5),
            Value::Int(7),
            "z".into(),
            Value::Double(3.0),
            Value::date("2000-01-01").unwrap(),
            Value::Bool(false)
        ]
    );
    assert!(s.bytes() > 0);
}

#[test]
fn chunks_seal_at_chunk_size() {
    let schema = TableSchema::new(vec![col("v", DataType::BigInt, false)]);
    let mut s = Slice::with_chunk_rows(schema, 7).unwrap();
    for i in 0..100i64 {
        s.insert(&[vec![Value::BigInt(i)]]).unwrap();
    }
    assert_eq!(s.row_count(), 100);
    assert_eq!(s.sealed_chunks(), 14);
    assert!(s.batches().take(14).all(|b| b.num_rows() == 7));
    let got: Vec<Value> = s
        .rows()
        .unwrap()
        .into_iter()
        .map(|mut r| r.remove(0))
        .collect();
    assert_eq!(got, (0..100).map(Value::BigInt).collect::<Vec<_>>());
}

#[test]
fn ipc_and_serde_round_trip() {
    let s = table();
    let batches = s.scan(None, None).unwrap();
    let bytes = encode_batches(&batches).unwrap();
    let back = decode_batches(&bytes).unwrap();
    assert_eq!(batches_to_rows(&back).unwrap(), s.rows().unwrap());
    assert!(decode_batches(&encode_batches(&[]).unwrap())
        .unwrap()
        .is_empty());
    assert!(matches!(
        decode_batches(&bytes[..bytes.len() / 2]),
        Err(Error::Corrupt(_))
    ));
    let frag = Fragment {
        table: "t".into(),
        filter: Some(Expr::col(1).gt(Expr::lit(0)).and(!Expr::col(2).is_null())),
        projection: vec![
            Expr::col(0),
            Expr::Case {
                when_then: vec![(Expr::col(5), Expr::lit(1.5))],
                else_expr: None,
            },
        ],
        partial_agg: Some(PartialAgg {
            group_by: vec![Expr::col(5)],
            aggs: vec![
                AggCall::count_star(),
                AggCall::new(AggFunc::Avg, Expr::col(3)),
            ],
        }),
    };
    let json = serde_json::to_string(&frag).unwrap();
    let back: Fragment = serde_json::from_str(&json).unwrap();
    assert_eq!(back, frag);
}

#[test]
fn global_aggregate_over_empty_and_overflow() {
    let schema = TableSchema::new(vec![col("v", DataType::BigInt, true)]);
    let mut s = Slice::new(schema).unwrap();
    let pa = PartialAgg {
        group_by: vec![],
        aggs: vec![
            AggCall::count_star(),
            AggCall::new(AggFunc::Sum, Expr::col(0)),
            AggCall::new(AggFunc::Avg, Expr::col(0)),
            AggCall::new(AggFunc::Max, Expr::col(0)),
        ],
    };
    let f = Fragment {
        table: "t".into(),
        filter: None,
        projection: vec![],
        partial_agg: Some(pa.clone()),
    };
    let fin = pa
        .merge_finalize(&[
            s.execute(&f).unwrap().remove(0),
            s.execute(&f).unwrap().remove(0),
        ])
        .unwrap();
    assert_eq!(
        batches_to_rows([&fin]).unwrap(),
        vec![vec![Value::BigInt(0), N, N, N]]
    );
    s.insert(&[vec![Value::BigInt(i64::MAX)], vec![Value::BigInt(1)]])
        .unwrap();
    assert!(matches!(s.execute(&f), Err(Error::Overflow(_))));
    // overflow detected at merge time too
    let mut a = Slice::new(s.schema().clone()).unwrap();
    a.insert(&[vec![Value::BigInt(i64::MAX)]]).unwrap();
    let p = a.execute(&f).unwrap().remove(0);
    assert!(matches!(pa.merge(&[p.clone(), p]), Err(Error::Overflow(_))));
}
