//! Holistic aggregates through the planner: COUNT / SUM / AVG (DISTINCT),
//! `mode() WITHIN GROUP (ORDER BY ...)` and `percentile_disc(f) WITHIN GROUP (...)`
//! bind, and the finished result (fragment on every slice, then `Finish::apply` over
//! the gathered partial states) matches a direct computation.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use smrdb_planner::{plan_sql, Catalog, Plan, PlanError, QueryPlan};
use smrdb_tstore::slice::batches_to_rows;
use smrdb_tstore::{AggFunc, ColumnDef, DataType, Slice, TableSchema, Value};

const N: Value = Value::Null;

struct Cat(HashMap<String, TableSchema>);
impl Catalog for Cat {
    fn table(&self, name: &str) -> Option<TableSchema> {
        self.0.get(name).cloned()
    }
}

fn schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("g", DataType::Int, true),
        ColumnDef::new("v", DataType::Int, true),
        ColumnDef::new("x", DataType::Double, true),
        ColumnDef::new("s", DataType::Text, true),
        ColumnDef::new("b", DataType::BigInt, true),
    ])
}

fn cat() -> Cat {
    Cat(HashMap::from([("t".to_string(), schema())]))
}

fn query(sql: &str) -> QueryPlan {
    match plan_sql(sql, &cat()).map(|mut v| v.remove(0)) {
        Ok(Plan::Query(q)) => q,
        other => panic!("{sql}: {other:?}"),
    }
}

fn err(sql: &str) -> PlanError {
    match plan_sql(sql, &cat()) {
        Ok(p) => panic!("{sql} planned: {p:?}"),
        Err(e) => e,
    }
}

/// A tiny xorshift PRNG.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn rand_rows(r: &mut Rng, n: usize) -> Vec<Vec<Value>> {
    const TEXTS: &[&str] = &["", "a", "ab", "b", "zz"];
    (0..n)
        .map(|_| {
            let null = |r: &mut Rng, v: Value| if r.below(7) == 0 { N } else { v };
            let g = Value::Int(r.below(3) as i32);
            let v = Value::Int(r.below(7) as i32 - 2);
            let x = Value::Double((r.below(5) as f64 - 2.0) * 0.5);
            let s = Value::Text(TEXTS[r.below(5) as usize].to_string());
            let b = Value::BigInt(r.below(4) as i64 * 1_000_000_007);
            vec![null(r, g), null(r, v), null(r, x), null(r, s), null(r, b)]
        })
        .collect()
}

/// Splits `rows` randomly over `parts` slices, runs the fragment on each and the
/// finish over the gathered batches (in a shuffled order).
fn run(q: &QueryPlan, rows: &[Vec<Value>], parts: usize, r: &mut Rng) -> Vec<Vec<Value>> {
    let mut slices: Vec<Slice> = (0..parts)
        .map(|_| Slice::with_chunk_rows(schema(), 4).unwrap())
        .collect();
    for row in rows {
        let p = r.below(parts as u64) as usize;
        slices[p].insert(std::slice::from_ref(row)).unwrap();
    }
    let mut gathered = Vec::new();
    for s in &slices {
        gathered.extend(s.execute(&q.fragment).unwrap());
    }
    if r.below(2) == 0 {
        gathered.reverse();
    }
    let out = q.finish.apply(gathered).unwrap();
    let types: Vec<DataType> = out
        .schema()
        .fields()
        .iter()
        .map(|f| DataType::from_arrow(f.data_type()).unwrap())
        .collect();
    let want: Vec<DataType> = q.columns.iter().map(|c| c.1).collect();
    assert_eq!(types, want);
    batches_to_rows([&out]).unwrap()
}

fn cmp(a: &Value, b: &Value) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a.sql_cmp(b).unwrap(),
    }
}

/// Non-null values of column `c`, ascending.
fn sorted(rows: &[&Vec<Value>], c: usize) -> Vec<Value> {
    let mut v: Vec<Value> = rows
        .iter()
        .map(|r| r[c].clone())
        .filter(|v| !v.is_null())
        .collect();
    v.sort_by(cmp);
    v
}

fn distinct(mut v: Vec<Value>) -> Vec<Value> {
    v.dedup_by(|a, b| cmp(a, b).is_eq());
    v
}

fn sum(v: &[Value]) -> Value {
    match v.first() {
        None => N,
        Some(Value::Double(_)) => Value::Double(v.iter().map(|x| x.as_f64().unwrap()).sum()),
        Some(_) => Value::BigInt(v.iter().map(|x| x.as_i64().unwrap()).sum()),
    }
}

fn avg(v: &[Value]) -> Value {
    match sum(v) {
        Value::Null => N,
        s => Value::Double(s.as_f64().unwrap() / v.len() as f64),
    }
}

/// Most frequent value; ties: the smallest (the largest with `desc`).
fn mode(v: &[Value], desc: bool) -> Value {
    let d = distinct(v.to_vec());
    let freq = |x: &Value| v.iter().filter(|y| cmp(x, y).is_eq()).count();
    let best = d.iter().map(freq).max();
    let mut c = d.iter().filter(|x| Some(freq(x)) == best);
    let pick = if desc { c.next_back() } else { c.next() };
    pick.cloned().unwrap_or(N)
}

/// The first value whose cumulative position fraction reaches `f`.
fn percentile_disc(v: &[Value], f: f64, desc: bool) -> Value {
    let mut v = v.to_vec();
    if desc {
        v.reverse();
    }
    let n = v.len();
    (1..=n)
        .find(|&k| k as f64 / n as f64 >= f)
        .map(|k| v[k - 1].clone())
        .unwrap_or(N)
}

/// Groups `rows` by column 0 (NULL first, as `ORDER BY g NULLS FIRST`).
fn by_g(rows: &[Vec<Value>]) -> Vec<(Value, Vec<&Vec<Value>>)> {
    let mut m: BTreeMap<Option<i64>, Vec<&Vec<Value>>> = BTreeMap::new();
    for r in rows {
        m.entry(r[0].as_i64()).or_default().push(r);
    }
    m.into_iter()
        .map(|(k, rs)| (k.map(|k| Value::Int(k as i32)).unwrap_or(N), rs))
        .collect()
}

const MIXED: &str = "SELECT g, count(*), sum(v), count(DISTINCT v), \
     mode() WITHIN GROUP (ORDER BY v), \
     percentile_disc(0.5) WITHIN GROUP (ORDER BY v), \
     percentile_disc(0) WITHIN GROUP (ORDER BY x DESC), \
     percentile_disc(1) WITHIN GROUP (ORDER BY s), \
     sum(DISTINCT v), avg(DISTINCT x), count(DISTINCT s), \
     mode() WITHIN GROUP (ORDER BY s DESC), sum(DISTINCT b), \
     percentile_disc(0.25) WITHIN GROUP (ORDER BY b DESC), avg(v), max(DISTINCT x) \
     FROM t GROUP BY g ORDER BY g NULLS FIRST";

fn mixed_expected(rows: &[Vec<Value>]) -> Vec<Vec<Value>> {
    by_g(rows)
        .into_iter()
        .map(|(g, rs)| {
            let v = sorted(&rs, 1);
            let x = sorted(&rs, 2);
            let s = sorted(&rs, 3);
            let b = sorted(&rs, 4);
            vec![
                g,
                Value::BigInt(rs.len() as i64),
                sum(&v),
                Value::BigInt(distinct(v.clone()).len() as i64),
                mode(&v, false),
                percentile_disc(&v, 0.5, false),
                percentile_disc(&x, 0.0, true),
                percentile_disc(&s, 1.0, false),
                sum(&distinct(v.clone())),
                avg(&distinct(x.clone())),
                Value::BigInt(distinct(s.clone()).len() as i64),
                mode(&s, true),
                sum(&distinct(b.clone())),
                percentile_disc(&b, 0.25, true),
                avg(&v),
                x.last().cloned().unwrap_or(N),
            ]
        })
        .collect()
}

#[test]
fn holistic_aggregates_bind() {
    let q = query(MIXED);
    let types: Vec<DataType> = q.columns.iter().map(|c| c.1).collect();
    use DataType::*;
    assert_eq!(
        types,
        [
            Int, BigInt, BigInt, BigInt, Int, Int, Double, Text, BigInt, Double, BigInt, Text,
            BigInt, BigInt, Double, Double
        ]
    );
    let names: Vec<&str> = q.columns.iter().map(|c| c.0.as_str()).collect();
    assert_eq!(names[3..6], ["count", "mode", "percentile_disc"]);
    let agg = q.fragment.partial_agg.as_ref().unwrap();
    let funcs: Vec<AggFunc> = agg.aggs.iter().map(|a| a.func).collect();
    assert_eq!(
        funcs,
        [
            AggFunc::CountStar,
            AggFunc::Sum,
            AggFunc::CountDistinct,
            AggFunc::Mode { descending: false },
            AggFunc::percentile_disc(0.5, false).unwrap(),
            AggFunc::percentile_disc(0.0, true).unwrap(),
            AggFunc::percentile_disc(1.0, false).unwrap(),
            AggFunc::SumDistinct,
            AggFunc::AvgDistinct,
            AggFunc::CountDistinct,
            AggFunc::Mode { descending: true },
            AggFunc::SumDistinct,
            AggFunc::percentile_disc(0.25, true).unwrap(),
            AggFunc::Avg,
            AggFunc::Max,
        ]
    );
    assert!(agg.is_holistic());
    // v, x, s, b: one extended-key column per distinct argument
    assert_eq!(agg.distinct_args().len(), 4);
    // the same call twice is one aggregate; fraction spellings agree
    let q = query(
        "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY v), \
         percentile_disc('0.5') WITHIN GROUP (ORDER BY v) + 1, \
         percentile_disc(1) WITHIN GROUP (ORDER BY v), \
         count(DISTINCT v), count(DISTINCT v) * 2 FROM t",
    );
    let agg = q.fragment.partial_agg.unwrap();
    assert_eq!(agg.aggs.len(), 3);
    assert_eq!(
        agg.aggs[1].func,
        AggFunc::percentile_disc(1.0, false).unwrap()
    );
}

#[test]
fn holistic_finish_over_partials() {
    let q = query(MIXED);
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    for n in [0usize, 1, 2, 9, 40, 150] {
        for round in 0..3 {
            let rows = rand_rows(&mut r, n);
            let want = mixed_expected(&rows);
            for parts in 1..=4 {
                assert_eq!(
                    run(&q, &rows, parts, &mut r),
                    want,
                    "n {n} round {round} parts {parts}"
                );
            }
        }
    }
}

#[test]
fn holistic_in_having_order_by_and_expressions() {
    let q = query(
        "SELECT g, count(DISTINCT v) * 10 AS c, mode() WITHIN GROUP (ORDER BY v) + 100 \
         FROM t GROUP BY g \
         HAVING count(DISTINCT v) > 1 AND percentile_disc(0.5) WITHIN GROUP (ORDER BY v) >= 0 \
         ORDER BY percentile_disc(0.5) WITHIN GROUP (ORDER BY v) DESC, g NULLS FIRST LIMIT 2",
    );
    let mut r = Rng(12345);
    for n in [0usize, 5, 30, 100] {
        let rows = rand_rows(&mut r, n);
        let mut want: Vec<(Value, Vec<Value>)> = by_g(&rows)
            .into_iter()
            .filter_map(|(g, rs)| {
                let v = sorted(&rs, 1);
                let cd = distinct(v.clone()).len() as i64;
                let p = percentile_disc(&v, 0.5, false);
                let keep = cd > 1 && p.as_i64().is_some_and(|p| p >= 0);
                keep.then(|| {
                    let m = mode(&v, false).as_i64().map(|m| Value::Int(m as i32 + 100));
                    (p, vec![g, Value::BigInt(cd * 10), m.unwrap_or(N)])
                })
            })
            .collect();
        // stable sort keeps the g NULLS FIRST order among equal percentiles
        want.sort_by(|a, b| cmp(&b.0, &a.0));
        let want: Vec<Vec<Value>> = want.into_iter().take(2).map(|w| w.1).collect();
        for parts in 1..=3 {
            assert_eq!(run(&q, &rows, parts, &mut r), want, "n {n} parts {parts}");
        }
    }
}

#[test]
fn holistic_global_over_nothing() {
    let q = query(
        "SELECT count(*), count(DISTINCT v), sum(DISTINCT v), avg(DISTINCT x), \
         mode() WITHIN GROUP (ORDER BY s), percentile_disc(0.5) WITHIN GROUP (ORDER BY v) \
         FROM t",
    );
    let want = vec![vec![Value::BigInt(0), Value::BigInt(0), N, N, N, N]];
    // empty slices
    assert_eq!(run(&q, &[], 2, &mut Rng(7)), want);
    // nothing gathered at all: the primary builds the empty state itself
    let out = q.finish.apply(vec![]).unwrap();
    assert_eq!(batches_to_rows([&out]).unwrap(), want);
    // all-NULL arguments
    let rows = vec![vec![N, N, N, N, N]; 5];
    assert_eq!(
        run(&q, &rows, 3, &mut Rng(8)),
        vec![vec![Value::BigInt(5), Value::BigInt(0), N, N, N, N]]
    );
    // grouped over nothing: no rows
    let q = query("SELECT g, count(DISTINCT v) FROM t GROUP BY g");
    assert_eq!(q.finish.apply(vec![]).unwrap().num_rows(), 0);
}

#[test]
fn holistic_bind_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("SELECT mode(v) FROM t", "42809", "WITHIN GROUP is required"),
        (
            "SELECT percentile_disc(0.5) FROM t",
            "42809",
            "WITHIN GROUP is required",
        ),
        (
            "SELECT count(v) WITHIN GROUP (ORDER BY v) FROM t",
            "42809",
            "not an ordered-set aggregate",
        ),
        (
            "SELECT percentile_disc(1.5) WITHIN GROUP (ORDER BY v) FROM t",
            "22003",
            "percentile value 1.5 is not between 0 and 1",
        ),
        (
            "SELECT percentile_disc(-0.5) WITHIN GROUP (ORDER BY v) FROM t",
            "22003",
            "is not between 0 and 1",
        ),
        (
            "SELECT percentile_disc(v) WITHIN GROUP (ORDER BY v) FROM t",
            "0A000",
            "not a constant",
        ),
        (
            "SELECT percentile_disc(NULL) WITHIN GROUP (ORDER BY v) FROM t",
            "0A000",
            "NULL fraction",
        ),
        (
            "SELECT percentile_disc('abc') WITHIN GROUP (ORDER BY v) FROM t",
            "22P02",
            "",
        ),
        (
            "SELECT percentile_disc(true) WITHIN GROUP (ORDER BY v) FROM t",
            "42804",
            "percentile_disc(boolean)",
        ),
        (
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY v, g) FROM t",
            "42804",
            "one WITHIN GROUP",
        ),
        (
            "SELECT mode(1) WITHIN GROUP (ORDER BY v) FROM t",
            "42804",
            "no direct arguments",
        ),
        (
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM t",
            "0A000",
            "percentile_cont",
        ),
        ("SELECT sum(DISTINCT s) FROM t", "42804", "sum(text)"),
        ("SELECT avg(DISTINCT s) FROM t", "42804", "avg(text)"),
        (
            "SELECT count(DISTINCT count(v)) FROM t",
            "42803",
            "aggregate",
        ),
        (
            "SELECT mode() WITHIN GROUP (ORDER BY count(v)) FROM t",
            "42803",
            "aggregate",
        ),
        (
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY v) FROM t \
             WHERE mode() WITHIN GROUP (ORDER BY v) > 1",
            "42803",
            "WHERE",
        ),
        (
            "SELECT count(DISTINCT v) FROM t WHERE count(DISTINCT v) > 1",
            "42803",
            "WHERE",
        ),
        ("SELECT coalesce(DISTINCT v) FROM t", "0A000", "DISTINCT"),
        ("SELECT v, count(DISTINCT x) FROM t", "42803", "v"),
    ];
    for (sql, state, needle) in cases {
        let e = err(sql);
        assert_eq!(e.sqlstate(), *state, "{sql}: {e}");
        assert!(
            e.to_string()
                .to_lowercase()
                .contains(&needle.to_lowercase()),
            "{sql}: {e} lacks {needle}"
        );
    }
    // MIN / MAX (DISTINCT) are plain MIN / MAX
    let q = query("SELECT min(DISTINCT v), max(DISTINCT s) FROM t");
    let agg = q.fragment.partial_agg.unwrap();
    assert_eq!(agg.aggs[0].func, AggFunc::Min);
    assert_eq!(agg.aggs[1].func, AggFunc::Max);
    assert!(!agg.is_holistic());
}
