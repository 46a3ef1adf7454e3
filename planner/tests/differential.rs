//! Differential test: random tables split round-robin over 1..5 slices, random
//! queries planned and run distributed (fragment per slice + Finish), compared with
//! a row-by-row reference evaluator.

use std::cmp::Ordering;
use std::collections::HashMap;

use smrdb_planner::{plan_sql, Catalog, Plan};
use smrdb_tstore::{ColumnDef, DataType, Slice, TableSchema, Value};

struct Cat(TableSchema);
impl Catalog for Cat {
    fn table(&self, name: &str) -> Option<TableSchema> {
        (name == "t").then(|| self.0.clone())
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
    fn int(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
}

const COLS: [&str; 7] = ["id", "a", "b", "x", "s", "d", "f"];

fn schema() -> TableSchema {
    use DataType::*;
    let t = [BigInt, Int, BigInt, Double, Text, Date, Boolean];
    TableSchema::new(
        COLS.iter()
            .zip(t)
            .enumerate()
            .map(|(i, (n, t))| ColumnDef::new(*n, t, i != 0))
            .collect(),
    )
}

fn gen_row(r: &mut Rng, id: i64) -> Vec<Value> {
    let mut v = vec![Value::BigInt(id)];
    let null = |r: &mut Rng, v: Value| if r.chance(15) { Value::Null } else { v };
    let a = Value::Int(r.int(-5, 5) as i32);
    v.push(null(r, a));
    let b = Value::BigInt(r.int(-1000, 1000));
    v.push(null(r, b));
    let x = Value::Double(r.int(-40, 40) as f64 * 0.25);
    v.push(null(r, x));
    let s = Value::Text(["ab", "abc", "b", "SMITH", "", "xyz"][r.below(6) as usize].to_string());
    v.push(null(r, s));
    let d = Value::Date(19700 + r.int(0, 6) as i32);
    v.push(null(r, d));
    let f = Value::Bool(r.chance(50));
    v.push(null(r, f));
    v
}

/// A generated expression: SQL text and its reference evaluation.
#[derive(Clone)]
enum E {
    Col(usize),
    Lit(Value, String),
    Arith(char, Box<E>, Box<E>),
    Neg(Box<E>),
    Cmp(&'static str, Box<E>, Box<E>),
    And(Box<E>, Box<E>),
    Or(Box<E>, Box<E>),
    Not(Box<E>),
    IsNull(Box<E>, bool),
    In(Box<E>, Vec<E>, bool),
    Between(Box<E>, Box<E>, Box<E>),
    Like(Box<E>, String, bool),
    Case(Box<E>, Box<E>, Box<E>),
    Coalesce(Box<E>, Box<E>),
}

fn sql(e: &E) -> String {
    match e {
        E::Col(i) => COLS[*i].to_string(),
        E::Lit(_, s) => s.clone(),
        E::Arith(op, l, r) => format!("({} {op} {})", sql(l), sql(r)),
        E::Neg(x) => format!("(- {})", sql(x)),
        E::Cmp(op, l, r) => format!("({} {op} {})", sql(l), sql(r)),
        E::And(l, r) => format!("({} AND {})", sql(l), sql(r)),
        E::Or(l, r) => format!("({} OR {})", sql(l), sql(r)),
        E::Not(x) => format!("(NOT {})", sql(x)),
        E::IsNull(x, n) => format!("({} IS {}NULL)", sql(x), if *n { "NOT " } else { "" }),
        E::In(x, l, n) => format!(
            "({} {}IN ({}))",
            sql(x),
            if *n { "NOT " } else { "" },
            l.iter().map(sql).collect::<Vec<_>>().join(", ")
        ),
        E::Between(x, lo, hi) => format!("({} BETWEEN {} AND {})", sql(x), sql(lo), sql(hi)),
        E::Like(x, p, n) => format!("({} {}LIKE '{p}')", sql(x), if *n { "NOT " } else { "" }),
        E::Case(c, t, f) => format!("CASE WHEN {} THEN {} ELSE {} END", sql(c), sql(t), sql(f)),
        E::Coalesce(a, b) => format!("COALESCE({}, {})", sql(a), sql(b)),
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn cmp(a: &Value, b: &Value) -> Option<Ordering> {
    a.sql_cmp(b)
}

fn like(s: &str, p: &str) -> bool {
    let (s, p): (Vec<char>, Vec<char>) = (s.chars().collect(), p.chars().collect());
    fn m(s: &[char], p: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('%') => (0..=s.len()).any(|k| m(&s[k..], &p[1..])),
            Some('_') => !s.is_empty() && m(&s[1..], &p[1..]),
            Some(c) => s.first() == Some(c) && m(&s[1..], &p[1..]),
        }
    }
    m(&s, &p)
}

fn truth(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        _ => None,
    }
}

fn b3(o: Option<bool>) -> Value {
    o.map(Value::Bool).unwrap_or(Value::Null)
}

fn eval(e: &E, row: &[Value]) -> Value {
    match e {
        E::Col(i) => row[*i].clone(),
        E::Lit(v, _) => v.clone(),
        E::Arith(op, l, r) => {
            let (l, r) = (eval(l, row), eval(r, row));
            if l.is_null() || r.is_null() {
                return Value::Null;
            }
            if matches!(l, Value::Double(_)) || matches!(r, Value::Double(_)) {
                let (x, y) = (num(&l).unwrap(), num(&r).unwrap());
                return Value::Double(match op {
                    '+' => x + y,
                    '-' => x - y,
                    _ => x * y,
                });
            }
            let (x, y) = (l.as_i64().unwrap(), r.as_i64().unwrap());
            let z = match op {
                '+' => x + y,
                '-' => x - y,
                '*' => x * y,
                _ => x % y,
            };
            if matches!(l, Value::BigInt(_)) || matches!(r, Value::BigInt(_)) {
                Value::BigInt(z)
            } else {
                Value::Int(z as i32)
            }
        }
        E::Neg(x) => match eval(x, row) {
            Value::Int(v) => Value::Int(-v),
            Value::BigInt(v) => Value::BigInt(-v),
            Value::Double(v) => Value::Double(-v),
            v => v,
        },
        E::Cmp(op, l, r) => b3(cmp(&eval(l, row), &eval(r, row)).map(|o| match *op {
            "=" => o == Ordering::Equal,
            "<>" => o != Ordering::Equal,
            "<" => o == Ordering::Less,
            "<=" => o != Ordering::Greater,
            ">" => o == Ordering::Greater,
            _ => o != Ordering::Less,
        })),
        E::And(l, r) => match (truth(&eval(l, row)), truth(&eval(r, row))) {
            (Some(false), _) | (_, Some(false)) => Value::Bool(false),
            (Some(true), Some(true)) => Value::Bool(true),
            _ => Value::Null,
        },
        E::Or(l, r) => match (truth(&eval(l, row)), truth(&eval(r, row))) {
            (Some(true), _) | (_, Some(true)) => Value::Bool(true),
            (Some(false), Some(false)) => Value::Bool(false),
            _ => Value::Null,
        },
        E::Not(x) => b3(truth(&eval(x, row)).map(|b| !b)),
        E::IsNull(x, n) => Value::Bool(eval(x, row).is_null() != *n),
        E::In(x, l, n) => {
            let v = eval(x, row);
            let mut acc = Some(false);
            for i in l {
                match cmp(&v, &eval(i, row)) {
                    Some(Ordering::Equal) => {
                        acc = Some(true);
                        break;
                    }
                    None => acc = None,
                    _ => {}
                }
            }
            b3(acc.map(|b| b != *n))
        }
        E::Between(x, lo, hi) => {
            let v = eval(x, row);
            let ge = cmp(&v, &eval(lo, row)).map(|o| o != Ordering::Less);
            let le = cmp(&v, &eval(hi, row)).map(|o| o != Ordering::Greater);
            match (ge, le) {
                (Some(false), _) | (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Null,
            }
        }
        E::Like(x, p, n) => match eval(x, row) {
            Value::Text(s) => Value::Bool(like(&s, p) != *n),
            _ => Value::Null,
        },
        E::Case(c, t, f) => {
            if truth(&eval(c, row)) == Some(true) {
                eval(t, row)
            } else {
                eval(f, row)
            }
        }
        E::Coalesce(a, b) => {
            let v = eval(a, row);
            if v.is_null() {
                eval(b, row)
            } else {
                v
            }
        }
    }
}

fn lit_int(r: &mut Rng) -> E {
    let v = r.int(-6, 6);
    E::Lit(
        Value::Int(v as i32),
        if v < 0 {
            format!("({v})")
        } else {
            v.to_string()
        },
    )
}

fn gen_int(r: &mut Rng, depth: u32) -> E {
    if depth == 0 {
        return match r.below(3) {
            0 => E::Col(1),
            1 => E::Col(2),
            _ => lit_int(r),
        };
    }
    match r.below(8) {
        0 => E::Col(1),
        1 => E::Col(2),
        2 => E::Arith(
            ['+', '-', '*'][r.below(3) as usize],
            Box::new(gen_int(r, depth - 1)),
            Box::new(gen_int(r, depth - 1)),
        ),
        3 => E::Arith(
            '%',
            Box::new(gen_int(r, depth - 1)),
            Box::new(E::Lit(Value::Int(3), "3".into())),
        ),
        4 => E::Neg(Box::new(gen_int(r, depth - 1))),
        5 => E::Coalesce(Box::new(E::Col(1)), Box::new(lit_int(r))),
        6 => E::Case(
            Box::new(gen_bool(r, depth - 1)),
            Box::new(gen_int(r, depth - 1)),
            Box::new(gen_int(r, depth - 1)),
        ),
        _ => lit_int(r),
    }
}

fn gen_double(r: &mut Rng, depth: u32) -> E {
    match r.below(3) {
        0 => E::Col(3),
        1 => E::Arith(
            '*',
            Box::new(E::Col(3)),
            Box::new(E::Lit(Value::Double(0.5), "0.5".into())),
        ),
        _ => E::Arith(
            '+',
            Box::new(E::Col(3)),
            Box::new(gen_int(r, depth.saturating_sub(1))),
        ),
    }
}

fn lit_text(r: &mut Rng) -> E {
    let s = ["ab", "b", "SMITH", "", "zz"][r.below(5) as usize];
    E::Lit(Value::Text(s.into()), format!("'{s}'"))
}

fn lit_date(r: &mut Rng) -> E {
    let d = 19700 + r.int(-1, 7) as i32;
    E::Lit(
        Value::Date(d),
        format!("'{}'", smrdb_tstore::types::format_date(d)),
    )
}

fn gen_bool(r: &mut Rng, depth: u32) -> E {
    let ops = ["=", "<>", "<", "<=", ">", ">="];
    let op = ops[r.below(6) as usize];
    let d1 = depth.saturating_sub(1);
    match r.below(if depth == 0 { 6 } else { 12 }) {
        0 => E::Cmp(op, Box::new(gen_int(r, d1)), Box::new(gen_int(r, d1))),
        1 => E::Cmp(op, Box::new(E::Col(4)), Box::new(lit_text(r))),
        2 => E::Cmp(op, Box::new(E::Col(5)), Box::new(lit_date(r))),
        3 => E::Cmp(
            op,
            Box::new(gen_double(r, d1)),
            Box::new(E::Lit(Value::Double(1.25), "1.25".into())),
        ),
        4 => E::IsNull(Box::new(E::Col(r.below(7) as usize)), r.chance(50)),
        5 => E::Col(6),
        6 => E::And(Box::new(gen_bool(r, d1)), Box::new(gen_bool(r, d1))),
        7 => E::Or(Box::new(gen_bool(r, d1)), Box::new(gen_bool(r, d1))),
        8 => E::Not(Box::new(gen_bool(r, d1))),
        9 => {
            if r.chance(50) {
                E::In(
                    Box::new(E::Col(1)),
                    (0..1 + r.below(3)).map(|_| lit_int(r)).collect(),
                    r.chance(40),
                )
            } else {
                E::In(
                    Box::new(E::Col(4)),
                    (0..1 + r.below(3)).map(|_| lit_text(r)).collect(),
                    r.chance(40),
                )
            }
        }
        10 => E::Between(
            Box::new(gen_int(r, d1)),
            Box::new(lit_int(r)),
            Box::new(lit_int(r)),
        ),
        _ => E::Like(
            Box::new(E::Col(4)),
            ["a%", "%b%", "_", "%", "S_ITH"][r.below(5) as usize].into(),
            r.chance(30),
        ),
    }
}

fn gen_any(r: &mut Rng) -> E {
    match r.below(6) {
        0 | 1 => gen_int(r, 2),
        2 => gen_double(r, 1),
        3 => gen_bool(r, 1),
        4 => E::Coalesce(Box::new(E::Col(4)), Box::new(lit_text(r))),
        _ => E::Col(r.below(7) as usize),
    }
}

/// Canonical text of a value (numbers compared numerically with a tolerance of 1e-6).
fn canon(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Int(_) | Value::BigInt(_) | Value::Double(_) => {
            format!("n{:.6}", v.as_f64().unwrap() + 0.0)
        }
        Value::Text(s) => format!("s{s}"),
        Value::Date(d) => format!("d{d}"),
        Value::Bool(b) => format!("b{b}"),
    }
}

fn canon_row(r: &[Value]) -> String {
    r.iter().map(canon).collect::<Vec<_>>().join("|")
}

fn sort_cmp(a: &Value, b: &Value, desc: bool, nulls_first: bool) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => {
            if nulls_first {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        }
        (false, true) => {
            if nulls_first {
                Ordering::Greater
            } else {
                Ordering::Less
            }
        }
        _ => {
            let o = a.sql_cmp(b).unwrap();
            if desc {
                o.reverse()
            } else {
                o
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Agg {
    CountStar,
    Count(usize),
    Sum(usize),
    SumExpr,
    Min(usize),
    Max(usize),
    Avg(usize),
}

fn agg_sql(a: Agg) -> String {
    match a {
        Agg::CountStar => "COUNT(*)".into(),
        Agg::Count(c) => format!("COUNT({})", COLS[c]),
        Agg::Sum(c) => format!("SUM({})", COLS[c]),
        Agg::SumExpr => "SUM(a * 2 + b)".into(),
        Agg::Min(c) => format!("MIN({})", COLS[c]),
        Agg::Max(c) => format!("MAX({})", COLS[c]),
        Agg::Avg(c) => format!("AVG({})", COLS[c]),
    }
}

fn agg_eval(a: Agg, rows: &[&Vec<Value>]) -> Value {
    let vals = |c: usize| {
        rows.iter()
            .map(move |r| r[c].clone())
            .filter(|v| !v.is_null())
    };
    match a {
        Agg::CountStar => Value::BigInt(rows.len() as i64),
        Agg::Count(c) => Value::BigInt(vals(c).count() as i64),
        Agg::Sum(c) | Agg::Avg(c) => {
            let v: Vec<f64> = vals(c).map(|v| v.as_f64().unwrap()).collect();
            if v.is_empty() {
                Value::Null
            } else {
                let s: f64 = v.iter().sum();
                if matches!(a, Agg::Avg(_)) {
                    Value::Double(s / v.len() as f64)
                } else {
                    Value::Double(s)
                }
            }
        }
        Agg::SumExpr => {
            let v: Vec<i64> = rows
                .iter()
                .filter(|r| !r[1].is_null() && !r[2].is_null())
                .map(|r| r[1].as_i64().unwrap() * 2 + r[2].as_i64().unwrap())
                .collect();
            if v.is_empty() {
                Value::Null
            } else {
                Value::BigInt(v.iter().sum())
            }
        }
        Agg::Min(c) => vals(c)
            .min_by(|x, y| x.sql_cmp(y).unwrap())
            .unwrap_or(Value::Null),
        Agg::Max(c) => vals(c)
            .max_by(|x, y| x.sql_cmp(y).unwrap())
            .unwrap_or(Value::Null),
    }
}

struct Query {
    sql: String,
    /// Reference result before ORDER BY / LIMIT.
    rows: Vec<Vec<Value>>,
    order: Vec<(usize, bool, bool)>,
    offset: usize,
    limit: Option<usize>,
}

fn gen_query(r: &mut Rng, data: &[Vec<Value>]) -> Query {
    let filter = r.chance(70).then(|| gen_bool(r, 2));
    let kept: Vec<&Vec<Value>> = data
        .iter()
        .filter(|row| {
            filter
                .as_ref()
                .is_none_or(|f| truth(&eval(f, row)) == Some(true))
        })
        .collect();
    let where_sql = filter
        .as_ref()
        .map(|f| format!(" WHERE {}", sql(f)))
        .unwrap_or_default();
    let (mut sql_text, rows, ncols);
    if r.chance(45) {
        // Aggregate query.
        let keys: Vec<usize> = [1usize, 4, 5, 6]
            .into_iter()
            .filter(|_| r.chance(35))
            .collect();
        let key_mod = r.chance(20);
        let aggs: Vec<Agg> = (0..1 + r.below(3))
            .map(|_| match r.below(7) {
                0 => Agg::CountStar,
                1 => Agg::Count(r.below(7) as usize),
                2 => Agg::Sum([1, 2, 3][r.below(3) as usize]),
                3 => Agg::SumExpr,
                4 => Agg::Min(1 + r.below(6) as usize),
                5 => Agg::Max(1 + r.below(6) as usize),
                _ => Agg::Avg([1, 2, 3][r.below(3) as usize]),
            })
            .collect();
        let mut items: Vec<String> = keys.iter().map(|k| COLS[*k].to_string()).collect();
        if key_mod {
            items.push("a % 3 AS am".into());
        }
        items.extend(
            aggs.iter()
                .enumerate()
                .map(|(i, a)| format!("{} AS g{i}", agg_sql(*a))),
        );
        let nkeys = keys.len() + key_mod as usize;
        let group: Vec<String> = (0..nkeys)
            .map(|i| {
                if r.chance(50) {
                    (i + 1).to_string()
                } else if i < keys.len() {
                    COLS[keys[i]].into()
                } else {
                    "am".into()
                }
            })
            .collect();
        let having = r.chance(30).then(|| r.int(0, 3));
        sql_text = format!("SELECT {} FROM t{where_sql}", items.join(", "));
        if !group.is_empty() {
            sql_text += &format!(" GROUP BY {}", group.join(", "));
        }
        if let Some(h) = having {
            sql_text += &format!(" HAVING COUNT(*) > {h}");
        }
        let mut groups: Vec<(Vec<Value>, Vec<&Vec<Value>>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for row in &kept {
            let mut k: Vec<Value> = keys.iter().map(|c| row[*c].clone()).collect();
            if key_mod {
                k.push(match &row[1] {
                    Value::Int(v) => Value::Int(v % 3),
                    _ => Value::Null,
                });
            }
            let ck = canon_row(&k);
            let g = *index.entry(ck).or_insert_with(|| {
                groups.push((k.clone(), vec![]));
                groups.len() - 1
            });
            groups[g].1.push(row);
        }
        if nkeys == 0 {
            groups = vec![(vec![], kept.clone())];
        }
        rows = groups
            .iter()
            .filter(|(_, rs)| having.is_none_or(|h| rs.len() as i64 > h))
            .map(|(k, rs)| {
                let mut o = k.clone();
                o.extend(aggs.iter().map(|a| agg_eval(*a, rs)));
                o
            })
            .collect::<Vec<_>>();
        ncols = nkeys + aggs.len();
    } else {
        let distinct = r.chance(25);
        let exprs: Vec<E> = (0..1 + r.below(4)).map(|_| gen_any(r)).collect();
        let star = !distinct && r.chance(10);
        if star {
            sql_text = format!("SELECT * FROM t{where_sql}");
            rows = kept.iter().map(|r| (*r).clone()).collect();
            ncols = 7;
        } else {
            let items: Vec<String> = exprs
                .iter()
                .enumerate()
                .map(|(i, e)| format!("{} {}c{i}", sql(e), if r.chance(50) { "AS " } else { "" }))
                .collect();
            sql_text = format!(
                "SELECT {}{} FROM t{where_sql}",
                if distinct { "DISTINCT " } else { "" },
                items.join(", ")
            );
            let mut out: Vec<Vec<Value>> = kept
                .iter()
                .map(|row| exprs.iter().map(|e| eval(e, row)).collect())
                .collect();
            if distinct {
                let mut seen = std::collections::HashSet::new();
                out.retain(|r| seen.insert(canon_row(r)));
            }
            rows = out;
            ncols = exprs.len();
        }
    }
    let mut order = Vec::new();
    if r.chance(60) {
        let mut parts = Vec::new();
        for _ in 0..1 + r.below(3) {
            let c = r.below(ncols as u64) as usize;
            let desc = r.chance(50);
            let nf = match r.below(3) {
                0 => None,
                1 => Some(true),
                _ => Some(false),
            };
            parts.push(format!(
                "{}{}{}",
                c + 1,
                if desc {
                    " DESC"
                } else if r.chance(30) {
                    " ASC"
                } else {
                    ""
                },
                match nf {
                    None => "",
                    Some(true) => " NULLS FIRST",
                    Some(false) => " NULLS LAST",
                }
            ));
            order.push((c, desc, nf.unwrap_or(desc)));
        }
        sql_text += &format!(" ORDER BY {}", parts.join(", "));
    }
    let limit = r.chance(30).then(|| r.below(6) as usize);
    let offset = if r.chance(20) { r.below(4) as usize } else { 0 };
    if let Some(l) = limit {
        sql_text += &format!(" LIMIT {l}");
    }
    if offset > 0 {
        sql_text += &format!(" OFFSET {offset}");
    }
    Query {
        sql: sql_text,
        rows,
        order,
        offset,
        limit,
    }
}

fn run(
    plan: &smrdb_planner::QueryPlan,
    sch: &TableSchema,
    data: &[Vec<Value>],
    n: usize,
    chunk: usize,
) -> Vec<Vec<Value>> {
    let mut slices: Vec<Slice> = (0..n)
        .map(|_| Slice::with_chunk_rows(sch.clone(), chunk).unwrap())
        .collect();
    let mut parts: Vec<Vec<Vec<Value>>> = vec![vec![]; n];
    for (i, r) in data.iter().enumerate() {
        parts[i % n].push(r.clone());
    }
    for (s, p) in slices.iter_mut().zip(&parts) {
        let h = p.len() / 3;
        s.insert(&p[..h]).unwrap();
        s.insert(&p[h..]).unwrap();
    }
    let mut gathered = Vec::new();
    for s in &slices {
        gathered.extend(s.execute(&plan.fragment).unwrap());
    }
    let out = plan.finish.apply(gathered).unwrap();
    for (f, (name, t)) in out.schema().fields().iter().zip(&plan.columns) {
        assert_eq!((f.name(), f.data_type()), (name, &t.to_arrow()));
    }
    smrdb_tstore::slice::batches_to_rows([&out]).unwrap()
}

#[test]
fn differential() {
    let sch = schema();
    let cat = Cat(sch.clone());
    let mut r = Rng(0x9e3779b97f4a7c15);
    let mut checked = 0;
    for &size in &[0usize, 1, 2, 3, 7, 8, 9, 31, 64] {
        let data: Vec<Vec<Value>> = (0..size).map(|i| gen_row(&mut r, i as i64)).collect();
        for _ in 0..150 {
            let q = gen_query(&mut r, &data);
            let plan = match plan_sql(&q.sql, &cat) {
                Ok(mut p) => match p.remove(0) {
                    Plan::Query(p) => p,
                    other => panic!("{}: {other:?}", q.sql),
                },
                Err(e) => panic!("{}: {e}", q.sql),
            };
            let n = 1 + r.below(5) as usize;
            let chunk = 1 + r.below(4) as usize;
            let got = run(&plan, &sch, &data, n, chunk);
            let ctx = format!("{} (size {size}, {n} slices, chunk {chunk})", q.sql);
            // Every returned row is a reference row (as a multiset).
            let mut pool: HashMap<String, usize> = HashMap::new();
            for row in &q.rows {
                *pool.entry(canon_row(row)).or_default() += 1;
            }
            for row in &got {
                let c = pool
                    .get_mut(&canon_row(row))
                    .unwrap_or_else(|| panic!("{ctx}: unexpected row {row:?}\nref {:?}", q.rows));
                assert!(*c > 0, "{ctx}: extra row {row:?}");
                *c -= 1;
            }
            let total = q.rows.len();
            let expect_n = total
                .saturating_sub(q.offset)
                .min(q.limit.unwrap_or(usize::MAX));
            assert_eq!(got.len(), expect_n, "{ctx}: got {got:?}\nref {:?}", q.rows);
            // Order: the returned rows are sorted and their keys are the reference's.
            if !q.order.is_empty() {
                let ord = |a: &Vec<Value>, b: &Vec<Value>| {
                    q.order
                        .iter()
                        .map(|&(c, d, nf)| sort_cmp(&a[c], &b[c], d, nf))
                        .find(|o| *o != Ordering::Equal)
                        .unwrap_or(Ordering::Equal)
                };
                for w in got.windows(2) {
                    assert_ne!(
                        ord(&w[0], &w[1]),
                        Ordering::Greater,
                        "{ctx}: not sorted {got:?}"
                    );
                }
                let mut sorted = q.rows.clone();
                sorted.sort_by(ord);
                let keys = |rs: &[Vec<Value>]| {
                    rs.iter()
                        .map(|r| {
                            q.order
                                .iter()
                                .map(|&(c, _, _)| canon(&r[c]))
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                };
                let want: Vec<Vec<Value>> =
                    sorted.into_iter().skip(q.offset).take(expect_n).collect();
                assert_eq!(keys(&got), keys(&want), "{ctx}");
            }
            checked += 1;
        }
    }
    assert!(checked > 1300);
}
