//! Multi-set (join) planning: name resolution, pushdown, keys, residuals, pivot
//! choice, join order, column pruning, EXPLAIN; and the planned queries run by a
//! small reference interpreter of the join contract (`smrdb_tstore::join` module
//! docs: filter + project each input, join step by step on the combined row, post
//! fragment, gather, finish) against results computed with DuckDB (the same data and
//! queries as `tests/slt/join_basic.slt`).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::Schema;
use smrdb_planner::{
    explain_lines, explain_lines_for, plan_sql, render_expr, Broadcast, Catalog, Plan, PlanError,
    QueryPlan,
};
use smrdb_tstore::slice::batches_to_rows;
use smrdb_tstore::{ColumnDef, DataType, Expr, JoinSpec, Slice, TableSchema, Value};

#[derive(Default)]
struct Cat {
    tables: HashMap<String, TableSchema>,
    rows: HashMap<String, u64>,
    settings: HashMap<String, String>,
}

impl Catalog for Cat {
    fn table(&self, name: &str) -> Option<TableSchema> {
        self.tables.get(name).cloned()
    }
    fn row_count(&self, name: &str) -> Option<u64> {
        self.rows.get(name).copied()
    }
    fn setting(&self, name: &str) -> Option<String> {
        self.settings.get(name).cloned()
    }
}

/// All columns nullable.
fn schema(cols: &[(&str, DataType)]) -> TableSchema {
    TableSchema::new(
        cols.iter()
            .map(|(n, t)| ColumnDef::new(*n, *t, true))
            .collect(),
    )
}

fn cat() -> Cat {
    use DataType::*;
    let mut c = Cat::default();
    let mut add = |n: &str, cols: &[(&str, DataType)]| {
        c.tables.insert(n.to_string(), schema(cols));
    };
    add(
        "emp",
        &[
            ("id", Int),
            ("name", Text),
            ("dept", Int),
            ("salary", Int),
            ("mgr", Int),
        ],
    );
    add("dept", &[("id", Int), ("dname", Text), ("loc", Text)]);
    add(
        "proj",
        &[
            ("pid", Int),
            ("dept", BigInt),
            ("title", Text),
            ("budget", Int),
        ],
    );
    add("none", &[("id", Int), ("x", Int)]);
    add(
        "purchases",
        &[("cust", BigInt), ("amount", Double), ("day", Date)],
    );
    add(
        "customers",
        &[("id", BigInt), ("name", Text), ("region", Text)],
    );
    for i in 1..=7 {
        add(&format!("t{i}"), &[("k", Int), ("v", Int), ("w", Text)]);
    }
    c
}

fn with_rows(mut c: Cat, rows: &[(&str, u64)]) -> Cat {
    for (t, n) in rows {
        c.rows.insert(t.to_string(), *n);
    }
    c
}

fn with_pivot(mut c: Cat, v: &str) -> Cat {
    c.settings.insert("smrdb.pivot".into(), v.into());
    c
}

fn plan_in(c: &Cat, sql: &str) -> Result<Plan, PlanError> {
    let mut v = plan_sql(sql, c)?;
    assert_eq!(v.len(), 1);
    Ok(v.remove(0))
}

fn query_in(c: &Cat, sql: &str) -> QueryPlan {
    match plan_in(c, sql) {
        Ok(Plan::Query(q)) => q,
        other => panic!("{sql}: {other:?}"),
    }
}

fn spec(q: &QueryPlan) -> &JoinSpec {
    q.join.as_ref().expect("a join")
}

fn col(i: usize) -> Expr {
    Expr::Column(i)
}

fn err_in(c: &Cat, sql: &str) -> PlanError {
    match plan_in(c, sql) {
        Ok(p) => panic!("{sql} planned: {p:?}"),
        Err(e) => e,
    }
}

// ------------------------------------------------------------------ reference run

fn emp_rows() -> Vec<Vec<Value>> {
    let n = Value::Null;
    let r = |id: i32, name: &str, dept: Value, sal: Value, mgr: Value| {
        vec![Value::Int(id), Value::Text(name.into()), dept, sal, mgr]
    };
    let i = Value::Int;
    vec![
        r(1, "ann", i(10), i(100), n.clone()),
        r(2, "bob", i(10), i(80), i(1)),
        r(3, "cid", i(20), i(90), i(1)),
        r(4, "dan", i(20), i(60), i(3)),
        r(5, "eve", i(30), i(75), i(1)),
        r(6, "fay", n.clone(), i(50), i(2)),
        r(7, "gus", i(40), i(65), i(3)),
        r(8, "hal", i(10), i(80), i(2)),
        r(9, "ivy", i(20), n.clone(), i(3)),
        r(10, "jon", i(30), i(70), i(5)),
    ]
}

fn dept_rows() -> Vec<Vec<Value>> {
    let t = |s: &str| Value::Text(s.into());
    vec![
        vec![Value::Int(10), t("eng"), t("sf")],
        vec![Value::Int(20), t("ops"), t("ny")],
        vec![Value::Int(30), t("hr"), t("sf")],
        vec![Value::Int(50), t("legal"), t("ny")],
        vec![Value::Null, t("nodept"), t("la")],
    ]
}

fn proj_rows() -> Vec<Vec<Value>> {
    let r = |pid: i32, dept: Option<i64>, title: &str, budget: i32| {
        vec![
            Value::Int(pid),
            dept.map(Value::BigInt).unwrap_or(Value::Null),
            Value::Text(title.into()),
            Value::Int(budget),
        ]
    };
    vec![
        r(100, Some(10), "alpha", 90),
        r(101, Some(10), "beta", 70),
        r(102, Some(20), "gamma", 85),
        r(103, Some(30), "delta", 60),
        r(104, Some(60), "omega", 10),
        r(105, None, "zeta", 50),
        r(106, Some(20), "eta", 95),
    ]
}

fn data() -> HashMap<String, Vec<Vec<Value>>> {
    let mut m = HashMap::new();
    m.insert("emp".to_string(), emp_rows());
    m.insert("dept".to_string(), dept_rows());
    m.insert("proj".to_string(), proj_rows());
    m.insert("none".to_string(), vec![]);
    m
}

/// Rows as batches of `schema` (zero columns: one batch carrying the row count).
fn batches(schema: &TableSchema, rows: &[Vec<Value>]) -> Vec<RecordBatch> {
    if schema.columns.is_empty() {
        let b = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(rows.len())),
        )
        .unwrap();
        return vec![b];
    }
    let mut s = Slice::with_chunk_rows(schema.clone(), 3).unwrap();
    s.insert(rows).unwrap();
    s.batches().cloned().collect()
}

/// Rows of `rows` (over `schema`) where `pred` is TRUE.
fn keep(schema: &TableSchema, rows: Vec<Vec<Value>>, pred: Option<&Expr>) -> Vec<Vec<Value>> {
    let Some(p) = pred else { return rows };
    if rows.is_empty() {
        return rows;
    }
    let mut s = Slice::with_chunk_rows(schema.clone(), 3).unwrap();
    s.insert(&rows).unwrap();
    batches_to_rows(&s.scan(Some(p), None).unwrap()).unwrap()
}

fn shift(e: &Expr, by: usize) -> Expr {
    match e {
        Expr::Column(i) => Expr::Column(i + by),
        Expr::Cast { expr, to } => Expr::Cast {
            expr: Box::new(shift(expr, by)),
            to: *to,
        },
        Expr::Binary { op, left, right } => Expr::Binary {
            op: *op,
            left: Box::new(shift(left, by)),
            right: Box::new(shift(right, by)),
        },
        other => other.clone(),
    }
}

/// Runs a multi-set plan the way the contract describes, with the pivot spread over
/// `tstores` slices (join tables whole on every Tstore).
fn run_join(
    q: &QueryPlan,
    data: &HashMap<String, Vec<Vec<Value>>>,
    tstores: usize,
) -> Vec<Vec<Value>> {
    let spec = spec(q);
    assert_eq!(q.input_schemas.len(), spec.join_tables.len() + 1);
    assert_eq!(spec.steps.len(), spec.join_tables.len());
    let combined = &q.finish.table_schema;
    let input = |k: usize| {
        let inp = if k == 0 {
            &spec.pivot
        } else {
            &spec.join_tables[k - 1]
        };
        let sch = &q.input_schemas[k];
        let rows = keep(sch, data[&inp.table].clone(), inp.filter.as_ref());
        rows.into_iter()
            .map(|r| {
                inp.columns
                    .iter()
                    .map(|&c| r[c].clone())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let jts: Vec<Vec<Vec<Value>>> = (1..=spec.join_tables.len()).map(input).collect();
    let pivot = input(0);
    let mut gathered = Vec::new();
    for ts in 0..tstores {
        let mut rows: Vec<Vec<Value>> = pivot
            .iter()
            .enumerate()
            .filter(|(i, _)| i % tstores == ts)
            .map(|(_, r)| r.clone())
            .collect();
        let mut width = spec.pivot.columns.len();
        for (i, step) in spec.steps.iter().enumerate() {
            let jt_w = spec.join_tables[i].columns.len();
            let sch = TableSchema::new(combined.columns[..width + jt_w].to_vec());
            let left_sch = TableSchema::new(combined.columns[..width].to_vec());
            let right_sch = TableSchema::new(combined.columns[width..width + jt_w].to_vec());
            assert_eq!(step.left_keys.len(), step.right_keys.len());
            let mut pred = step.filter.clone();
            for (l, r) in step.left_keys.iter().zip(&step.right_keys) {
                assert_eq!(
                    l.data_type(&left_sch).unwrap(),
                    r.data_type(&right_sch).unwrap(),
                    "key types of step {i}"
                );
                let eq = l.clone().eq(shift(r, width));
                pred = Some(match pred {
                    Some(p) => eq.and(p),
                    None => eq,
                });
            }
            let mut cross = Vec::new();
            for a in &rows {
                for b in &jts[i] {
                    let mut r = a.clone();
                    r.extend(b.iter().cloned());
                    cross.push(r);
                }
            }
            rows = keep(&sch, cross, pred.as_ref());
            width += jt_w;
        }
        assert_eq!(width, combined.columns.len());
        let bs = batches(combined, &rows);
        gathered.extend(q.fragment.run_over(combined, &bs).unwrap());
    }
    let out = q.finish.apply(gathered).unwrap();
    batches_to_rows(&[out]).unwrap()
}

fn show(v: &Value) -> String {
    match v {
        Value::Text(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Runs `sql` and compares with `expected` (rows of space-separated values; sorted
/// unless `ordered`).
fn check(c: &Cat, sql: &str, ordered: bool, expected: &[&str]) {
    let q = query_in(c, sql);
    for tstores in [1, 3] {
        let mut got: Vec<String> = run_join(&q, &data(), tstores)
            .iter()
            .map(|r| r.iter().map(show).collect::<Vec<_>>().join(" "))
            .collect();
        let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        if !ordered {
            got.sort();
            want.sort();
        }
        assert_eq!(got, want, "{sql} ({tstores} Tstores)\nplan: {q:#?}");
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn name_resolution_errors() {
    let c = cat();
    let cases: &[(&str, &str, &str)] = &[
        (
            "SELECT id FROM emp e JOIN dept d ON e.dept = d.id",
            "42702",
            "column reference \"id\" is ambiguous",
        ),
        (
            "SELECT e.name FROM emp e JOIN dept d ON dept = id",
            "42702",
            "\"id\"",
        ),
        (
            "SELECT name FROM emp a JOIN emp b ON a.mgr = b.id",
            "42702",
            "\"name\"",
        ),
        (
            "SELECT e.name FROM emp e JOIN dept d ON e.dept = d.id ORDER BY id",
            "42702",
            "id",
        ),
        (
            "SELECT COUNT(*) FROM emp e JOIN dept d ON e.dept = d.id GROUP BY id",
            "42702",
            "id",
        ),
        (
            "SELECT e.id FROM emp e, proj p WHERE e.dept = p.dept AND dept > 10",
            "42702",
            "dept",
        ),
        (
            "SELECT * FROM emp e JOIN dept d ON e.dept = d.id ORDER BY id",
            "42702",
            "ORDER BY \"id\" is ambiguous",
        ),
        (
            "SELECT x.name FROM emp e JOIN dept d ON e.dept = d.id",
            "42P01",
            "missing FROM-clause entry for table \"x\"",
        ),
        (
            "SELECT e.name FROM emp e JOIN dept d ON e.dept = z.id",
            "42P01",
            "missing FROM-clause entry for table \"z\"",
        ),
        (
            "SELECT x.* FROM emp e JOIN dept d ON e.dept = d.id",
            "42P01",
            "missing FROM-clause entry for table \"x\"",
        ),
        // An aliased table is known only by its alias.
        (
            "SELECT emp.name FROM emp e JOIN dept d ON e.dept = d.id",
            "42P01",
            "alias \"e\"",
        ),
        // An ON condition sees only the tables joined so far in its FROM item.
        (
            "SELECT 1 FROM emp e JOIN dept d ON e.dept = p.dept JOIN proj p ON p.dept = d.id",
            "42P01",
            "invalid reference to FROM-clause entry for table \"p\"",
        ),
        (
            "SELECT 1 FROM emp e, dept d JOIN proj p ON p.dept = e.dept",
            "42P01",
            "\"e\"",
        ),
        (
            "SELECT e.name FROM emp e JOIN nope n ON e.id = n.id",
            "42P01",
            "nope",
        ),
        (
            "SELECT e.nope FROM emp e JOIN dept d ON e.dept = d.id",
            "42703",
            "e.nope",
        ),
        (
            "SELECT e.dname FROM emp e JOIN dept d ON e.dept = d.id",
            "42703",
            "dname",
        ),
        (
            "SELECT zz FROM emp e JOIN dept d ON e.dept = d.id",
            "42703",
            "zz",
        ),
        (
            "SELECT 1 FROM emp e JOIN dept e ON e.dept = e.id",
            "42712",
            "table name \"e\" specified more than once",
        ),
        ("SELECT COUNT(*) FROM emp, emp", "42712", "\"emp\""),
        ("SELECT COUNT(*) FROM emp x, dept X", "42712", "\"x\""),
        (
            "SELECT 1 FROM emp a JOIN dept d ON a.dept = d.id JOIN proj a ON a.dept = d.id",
            "42712",
            "\"a\"",
        ),
        (
            "SELECT 1 FROM emp e LEFT JOIN dept d ON e.dept = d.id",
            "0A000",
            "LEFT",
        ),
        (
            "SELECT 1 FROM emp e LEFT OUTER JOIN dept d ON e.dept = d.id",
            "0A000",
            "LEFT",
        ),
        (
            "SELECT 1 FROM emp e RIGHT JOIN dept d ON e.dept = d.id",
            "0A000",
            "RIGHT",
        ),
        (
            "SELECT 1 FROM emp e FULL OUTER JOIN dept d ON e.dept = d.id",
            "0A000",
            "FULL",
        ),
        ("SELECT 1 FROM emp NATURAL JOIN dept", "0A000", "NATURAL"),
        (
            "SELECT 1 FROM emp e JOIN dept d USING (id)",
            "0A000",
            "USING",
        ),
        (
            "SELECT 1 FROM (emp e JOIN dept d ON e.dept = d.id)",
            "0A000",
            "parenthesized",
        ),
        (
            "SELECT e.id FROM emp e JOIN dept d ON e.name = d.id",
            "42804",
            "",
        ),
        (
            "SELECT e.id FROM emp e JOIN dept d ON e.dept",
            "42804",
            "JOIN/ON",
        ),
        (
            "SELECT e.id FROM emp e JOIN dept d ON COUNT(*) = e.dept",
            "42803",
            "JOIN",
        ),
    ];
    for (sql, state, needle) in cases {
        let e = err_in(&c, sql);
        assert_eq!(e.sqlstate(), *state, "{sql}: {e}");
        assert!(e.to_string().contains(needle), "{sql}: {e} lacks {needle}");
    }
}

#[test]
fn single_table_queries_are_not_joins() {
    let c = cat();
    let q = query_in(&c, "SELECT e.name FROM emp e WHERE e.salary > 1");
    assert!(q.join.is_none());
    assert!(q.input_schemas.is_empty());
    assert_eq!(q.finish.table_schema, c.tables["emp"]);
    // Qualified names resolve against the alias, unknown qualifiers are 42P01.
    let e = err_in(&c, "SELECT emp.name FROM emp e");
    assert_eq!(e.sqlstate(), "42P01", "{e}");
}

#[test]
fn pushdown_lands_in_the_right_input_with_table_indices() {
    let c = with_rows(cat(), &[("emp", 10_000), ("dept", 10)]);
    let q = query_in(
        &c,
        "SELECT e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id \
         WHERE e.salary >= 75 AND d.loc = 'sf'",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.table, "emp");
    assert_eq!(s.pivot.alias, "e");
    // salary is emp column 3, loc is dept column 2: the table's own indices.
    assert_eq!(
        s.pivot.filter,
        Some(col(3).binary(smrdb_tstore::BinaryOp::GtEq, Expr::lit(75)))
    );
    assert_eq!(s.join_tables[0].table, "dept");
    assert_eq!(s.join_tables[0].filter, Some(col(2).eq(Expr::lit("sf"))));
    // Pushed predicates' columns are not kept: e.name, e.dept | d.id, d.dname.
    assert_eq!(s.pivot.columns, vec![1, 2]);
    assert_eq!(s.join_tables[0].columns, vec![0, 1]);
    let names: Vec<&str> = q
        .finish
        .table_schema
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["e.name", "e.dept", "d.id", "d.dname"]);
    assert_eq!(s.steps[0].left_keys, vec![col(1)]);
    assert_eq!(s.steps[0].right_keys, vec![col(0)]);
    assert_eq!(s.steps[0].filter, None);
    assert_eq!(q.fragment.table, "emp");
    assert_eq!(q.table, "emp");
    assert_eq!(q.fragment.filter, None);
    assert_eq!(q.fragment.projection, vec![col(0), col(3)]);
    // Estimates: 10000 x 0.33 rows of 16 + 4 bytes; 10 x 0.1 -> 1 row of 4 + 16 bytes.
    assert_eq!((s.pivot.est_rows, s.pivot.est_bytes), (3300, 66_000));
    assert_eq!(
        (s.join_tables[0].est_rows, s.join_tables[0].est_bytes),
        (1, 20)
    );
    // A condition over one table written in ON is pushed down the same way.
    let q2 = query_in(
        &c,
        "SELECT e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id AND d.loc = 'sf' \
         AND e.salary >= 75",
    );
    assert_eq!(q2.join, q.join);
    // A constant condition goes to the pivot; TRUE disappears.
    let q3 = query_in(
        &c,
        "SELECT e.name FROM emp e JOIN dept d ON true WHERE 1 = 2",
    );
    assert_eq!(spec(&q3).pivot.filter, Some(Expr::lit(1).eq(Expr::lit(2))));
    assert_eq!(spec(&q3).join_tables[0].filter, None);
}

#[test]
fn equi_keys_from_on_and_where() {
    let c = with_rows(cat(), &[("emp", 1000), ("dept", 10), ("proj", 50)]);
    let on = query_in(
        &c,
        "SELECT e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id",
    );
    let wh = query_in(
        &c,
        "SELECT e.name, d.dname FROM emp e, dept d WHERE e.dept = d.id",
    );
    let rev = query_in(
        &c,
        "SELECT e.name, d.dname FROM emp e INNER JOIN dept d ON d.id = e.dept",
    );
    let cross = query_in(
        &c,
        "SELECT e.name, d.dname FROM emp e CROSS JOIN dept d WHERE d.id = e.dept",
    );
    assert_eq!(on.join, wh.join);
    assert_eq!(on.join, rev.join);
    assert_eq!(on.join, cross.join);
    assert_eq!(on.fragment, wh.fragment);
    // INT = BIGINT: the INT side is cast, both sides are BIGINT.
    let q = query_in(
        &c,
        "SELECT e.id, p.title FROM emp e JOIN proj p ON e.dept = p.dept",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.table, "emp");
    assert_eq!(s.pivot.columns, vec![0, 2]);
    assert_eq!(s.join_tables[0].columns, vec![1, 2]);
    assert_eq!(s.steps[0].left_keys, vec![col(1).cast(DataType::BigInt)]);
    assert_eq!(s.steps[0].right_keys, vec![col(0)]);
    // Two keys between the same tables, and keys that are expressions.
    let q = query_in(
        &c,
        "SELECT a.id FROM emp a JOIN emp b ON a.dept = b.dept AND a.salary + 1 = b.salary",
    );
    let s = spec(&q);
    assert_eq!(s.steps[0].left_keys.len(), 2);
    assert_eq!(s.steps[0].filter, None);
    // `a.x = a.y` is a filter of one table, `a.x = b.y + a.z` a residual.
    let q = query_in(
        &c,
        "SELECT a.id FROM emp a JOIN emp b ON a.dept = a.mgr AND a.id = b.id + a.salary",
    );
    let s = spec(&q);
    assert!(s.steps[0].left_keys.is_empty());
    assert!(s.steps[0].filter.is_some());
    assert_eq!(
        s.pivot.filter.is_some() as u8 + s.join_tables[0].filter.is_some() as u8,
        1
    );
}

#[test]
fn residual_conditions_go_to_the_first_step_that_has_their_tables() {
    let c = with_rows(cat(), &[("emp", 100_000), ("dept", 10), ("proj", 500)]);
    let q = query_in(
        &c,
        "SELECT e.name, p.title FROM emp e JOIN dept d ON e.dept = d.id \
         JOIN proj p ON p.dept = d.id AND e.salary < p.budget \
         WHERE e.salary > 70 OR d.loc = 'ny'",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.alias, "e");
    let order: Vec<&str> = s.join_tables.iter().map(|j| j.alias.as_str()).collect();
    // p is only connected through d.
    assert_eq!(order, ["d", "p"]);
    let names: Vec<String> = q
        .finish
        .table_schema
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(
        names,
        ["e.name", "e.dept", "e.salary", "d.id", "d.loc", "p.dept", "p.title", "p.budget"]
    );
    let f0 = s.steps[0].filter.as_ref().map(|f| render_expr(f, &names));
    assert_eq!(f0.as_deref(), Some("e.salary > 70 OR d.loc = 'ny'"));
    let f1 = s.steps[1].filter.as_ref().map(|f| render_expr(f, &names));
    assert_eq!(f1.as_deref(), Some("e.salary < p.budget"));
    // Step 2's key: d.id (combined 3) cast to BIGINT = p.dept (p's kept column 0).
    assert_eq!(s.steps[1].left_keys, vec![col(3).cast(DataType::BigInt)]);
    assert_eq!(s.steps[1].right_keys, vec![col(0)]);
}

#[test]
fn pivot_is_the_largest_join_table() {
    let base = || cat();
    let sql = "SELECT c.name, SUM(p.amount) FROM purchases p JOIN customers c ON p.cust = c.id \
               GROUP BY c.name";
    let c = with_rows(base(), &[("purchases", 10_000_000), ("customers", 100_000)]);
    let q = query_in(&c, sql);
    let s = spec(&q);
    assert_eq!(s.pivot.table, "purchases");
    assert_eq!(q.table, "purchases");
    assert_eq!(
        s.pivot_reason,
        "largest join table: purchases p est. 10000000 rows x 16 B"
    );
    assert_eq!(s.join_tables[0].est_rows, 100_000);
    assert_eq!(s.join_tables[0].est_bytes, 100_000 * 24);
    // The other way round.
    let c = with_rows(base(), &[("purchases", 1000), ("customers", 100_000)]);
    assert_eq!(spec(&query_in(&c, sql)).pivot.table, "customers");
    // Pushed filters shrink the estimate: 10M x 0.1 x 0.33 = 330000 rows x 16 B is
    // smaller than 1M customers x 24 B.
    let c = with_rows(
        base(),
        &[("purchases", 10_000_000), ("customers", 1_000_000)],
    );
    let q = query_in(
        &c,
        "SELECT c.name, p.amount FROM purchases p JOIN customers c ON p.cust = c.id \
         WHERE p.amount = 5 AND p.day > DATE '2024-01-01'",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.table, "customers");
    assert_eq!(s.join_tables[0].est_rows, 330_000);
    // Without statistics, 1000 rows are assumed; the wider rows win.
    let q = query_in(&base(), sql);
    assert_eq!(spec(&q).pivot.table, "customers");
    assert!(
        spec(&q).pivot_reason.contains("1000 assumed"),
        "{}",
        spec(&q).pivot_reason
    );
}

#[test]
fn forced_pivot_via_setting() {
    let c = with_rows(cat(), &[("emp", 1_000_000), ("dept", 10)]);
    let sql = "SELECT e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id";
    assert_eq!(spec(&query_in(&c, sql)).pivot.alias, "e");
    for v in ["d", "D", "dept", " d "] {
        let c = with_pivot(with_rows(cat(), &[("emp", 1_000_000), ("dept", 10)]), v);
        let q = query_in(&c, sql);
        let s = spec(&q);
        assert_eq!(s.pivot.alias, "d", "{v}");
        assert_eq!(q.table, "dept");
        assert_eq!(
            s.pivot_reason,
            format!("forced by SET smrdb.pivot = '{}'", v.trim())
        );
        // The combined row now starts with d's columns.
        assert_eq!(q.finish.table_schema.columns[0].name, "d.id");
    }
    // Empty / auto: the automatic choice.
    for v in ["", "auto"] {
        let c = with_pivot(with_rows(cat(), &[("emp", 1_000_000), ("dept", 10)]), v);
        assert_eq!(spec(&query_in(&c, sql)).pivot.alias, "e");
    }
    let c = with_pivot(cat(), "zz");
    let e = err_in(&c, sql);
    assert_eq!(e.sqlstate(), "22023", "{e}");
    assert!(
        e.to_string().contains("zz") && e.to_string().contains("e, d"),
        "{e}"
    );
    // A self-join: the table name is ambiguous, the aliases are not.
    let self_join = "SELECT e.name FROM emp e JOIN emp m ON e.mgr = m.id";
    let e = err_in(&with_pivot(cat(), "emp"), self_join);
    assert_eq!(e.sqlstate(), "22023", "{e}");
    let q = query_in(&with_pivot(cat(), "m"), self_join);
    assert_eq!(spec(&q).pivot.alias, "m");
    // Single-table queries ignore it.
    let q = query_in(&c, "SELECT name FROM emp");
    assert!(q.join.is_none());
}

#[test]
fn self_join() {
    let c = cat();
    let q = query_in(
        &c,
        "SELECT e.name, m.name FROM emp e JOIN emp m ON e.mgr = m.id",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.table, "emp");
    assert_eq!(s.join_tables[0].table, "emp");
    let mut aliases = vec![s.pivot.alias.clone(), s.join_tables[0].alias.clone()];
    aliases.sort();
    assert_eq!(aliases, ["e", "m"]);
    assert_eq!(q.columns.len(), 2);
    assert_eq!(q.columns[0].0, "name");
    check(
        &c,
        "SELECT e.name, m.name FROM emp e JOIN emp m ON e.mgr = m.id ORDER BY e.id",
        true,
        &[
            "bob ann", "cid ann", "dan cid", "eve ann", "fay bob", "gus cid", "hal bob", "ivy cid",
            "jon eve",
        ],
    );
    check(
        &c,
        "SELECT e.name, m.name, mm.name FROM emp e JOIN emp m ON e.mgr = m.id \
         JOIN emp mm ON m.mgr = mm.id ORDER BY e.id",
        true,
        &[
            "dan cid ann",
            "fay bob ann",
            "gus cid ann",
            "hal bob ann",
            "ivy cid ann",
            "jon eve ann",
        ],
    );
}

#[test]
fn cross_join() {
    let c = with_rows(cat(), &[("emp", 10), ("dept", 5)]);
    let q = query_in(&c, "SELECT COUNT(*) FROM emp CROSS JOIN dept");
    let s = spec(&q);
    assert!(s.steps[0].left_keys.is_empty() && s.steps[0].right_keys.is_empty());
    // Nothing but the row count is needed.
    assert!(s.pivot.columns.is_empty() && s.join_tables[0].columns.is_empty());
    assert!(q.finish.table_schema.columns.is_empty());
    check(
        &c,
        "SELECT COUNT(*) FROM emp CROSS JOIN dept",
        true,
        &["50"],
    );
    check(&c, "SELECT COUNT(*) FROM emp, dept, proj", true, &["350"]);
    check(
        &c,
        "SELECT COUNT(*) FROM emp e JOIN dept d ON true",
        true,
        &["50"],
    );
    check(
        &c,
        "SELECT e.id, d.dname FROM emp e, dept d WHERE e.id <= 2",
        false,
        &[
            "1 eng", "1 hr", "1 legal", "1 nodept", "1 ops", "2 eng", "2 hr", "2 legal",
            "2 nodept", "2 ops",
        ],
    );
    check(
        &c,
        "SELECT e.id, n.x FROM none n CROSS JOIN emp e",
        true,
        &[],
    );
}

#[test]
fn three_table_chain() {
    let c = with_rows(cat(), &[("emp", 10), ("dept", 5), ("proj", 7)]);
    let q = query_in(
        &c,
        "SELECT e.name, d.dname, p.title FROM proj p, emp e, dept d \
         WHERE e.dept = d.id AND p.dept = e.dept AND p.budget < 80",
    );
    let s = spec(&q);
    assert_eq!(s.join_tables.len(), 2);
    // Every step has a key (no cross product).
    assert!(s.steps.iter().all(|st| !st.left_keys.is_empty()));
    check(
        &c,
        "SELECT e.name, d.dname, p.title FROM proj p, emp e, dept d \
         WHERE e.dept = d.id AND p.dept = e.dept AND p.budget < 80",
        false,
        &[
            "ann eng beta",
            "bob eng beta",
            "eve hr delta",
            "hal eng beta",
            "jon hr delta",
        ],
    );
    check(
        &c,
        "SELECT e.name, d.dname, p.title FROM emp e JOIN dept d ON e.dept = d.id \
         JOIN proj p ON p.dept = d.id WHERE e.salary >= 80",
        false,
        &[
            "ann eng alpha",
            "ann eng beta",
            "bob eng alpha",
            "bob eng beta",
            "cid ops eta",
            "cid ops gamma",
            "hal eng alpha",
            "hal eng beta",
        ],
    );
    check(
        &c,
        "SELECT d.*, p.*, e.id FROM dept d, proj p, emp e \
         WHERE d.id = p.dept AND p.dept = e.dept AND e.salary >= 90",
        false,
        &[
            "10 eng sf 100 10 alpha 90 1",
            "10 eng sf 101 10 beta 70 1",
            "20 ops ny 102 20 gamma 85 3",
            "20 ops ny 106 20 eta 95 3",
        ],
    );
}

#[test]
fn join_order_connects_and_streams_the_largest_last() {
    // Star around the pivot, every key taken to be a foreign key into the join table:
    // est. 1M rows after every step, so ties: the smaller join table first, and the
    // largest one streams last.
    let c = with_rows(
        cat(),
        &[("t1", 1_000_000), ("t2", 50_000), ("t3", 10), ("t4", 200)],
    );
    let q = query_in(
        &c,
        "SELECT t1.v, t2.v, t3.v, t4.v FROM t2, t3, t1, t4 \
         WHERE t1.k = t2.k AND t1.k = t3.k AND t1.k = t4.k",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.table, "t1");
    let order: Vec<&str> = s.join_tables.iter().map(|j| j.table.as_str()).collect();
    assert_eq!(order, ["t3", "t4", "t2"]);
    // A chain t1 - t2 - t3 where t2 is the largest join table: it cannot be last
    // without a cross product, so it comes first.
    let c = with_rows(cat(), &[("t1", 1_000_000), ("t2", 50_000), ("t3", 10)]);
    let q = query_in(
        &c,
        "SELECT t1.v FROM t1 JOIN t2 ON t1.k = t2.k JOIN t3 ON t2.v = t3.v",
    );
    let order: Vec<&str> = spec(&q)
        .join_tables
        .iter()
        .map(|j| j.table.as_str())
        .collect();
    assert_eq!(order, ["t2", "t3"]);
    assert!(spec(&q).steps.iter().all(|st| st.left_keys.len() == 1));
    // Two components: a cross product only where unavoidable.
    let q = query_in(&c, "SELECT t1.v FROM t1, t2, t3 WHERE t2.k = t3.k");
    let s = spec(&q);
    let keys: Vec<usize> = s.steps.iter().map(|st| st.left_keys.len()).collect();
    assert_eq!(keys, [0, 1]);
}

#[test]
fn six_table_chain_and_seven_is_an_error() {
    let c = with_rows(
        cat(),
        &[
            ("t1", 10),
            ("t2", 20),
            ("t3", 30),
            ("t4", 1_000_000),
            ("t5", 50),
            ("t6", 60),
        ],
    );
    let q = query_in(
        &c,
        "SELECT t1.w, t6.w FROM t1 JOIN t2 ON t1.k = t2.k JOIN t3 ON t2.k = t3.k \
         JOIN t4 ON t3.k = t4.k JOIN t5 ON t4.k = t5.k JOIN t6 ON t5.k = t6.k \
         WHERE t3.v > 0",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.table, "t4");
    assert_eq!(s.join_tables.len(), 5);
    assert_eq!(s.steps.len(), 5);
    // Each step joins a table with a key to what is already joined.
    let mut joined = vec!["t4".to_string()];
    let chain = ["t1", "t2", "t3", "t4", "t5", "t6"];
    for (jt, st) in s.join_tables.iter().zip(&s.steps) {
        assert_eq!(st.left_keys.len(), 1, "{}", jt.table);
        let i = chain.iter().position(|t| *t == jt.table).unwrap();
        let neighbours = [i.checked_sub(1), Some(i + 1)];
        assert!(
            neighbours
                .iter()
                .flatten()
                .filter_map(|&n| chain.get(n))
                .any(|n| joined.iter().any(|j| j == n)),
            "{} joined before a neighbour",
            jt.table
        );
        joined.push(jt.table.clone());
    }
    // t3.v > 0 is pushed into t3; t3.v is not kept.
    let t3 = s.join_tables.iter().find(|j| j.table == "t3").unwrap();
    assert_eq!(t3.filter, Some(col(1).gt(Expr::lit(0))));
    assert_eq!(t3.columns, vec![0]);
    // Only k (and w of t1 and t6) is kept anywhere.
    for jt in std::iter::once(&s.pivot).chain(&s.join_tables) {
        let want: Vec<usize> = if jt.table == "t1" || jt.table == "t6" {
            vec![0, 2]
        } else {
            vec![0]
        };
        assert_eq!(jt.columns, want, "{}", jt.table);
    }
    let e = err_in(
        &c,
        "SELECT 1 FROM t1, t2, t3, t4, t5, t6, t7 WHERE t1.k = t2.k",
    );
    assert_eq!(e.sqlstate(), "0A000", "{e}");
    assert!(e.to_string().contains("more than 6 tables"), "{e}");
}

#[test]
fn column_pruning() {
    let c = with_rows(cat(), &[("emp", 1000), ("dept", 10), ("proj", 10)]);
    let q = query_in(
        &c,
        "SELECT e.name FROM emp e JOIN dept d ON e.dept = d.id WHERE d.loc = 'ny'",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.columns, vec![1, 2]); // name, dept
    assert_eq!(s.join_tables[0].columns, vec![0]); // id only: loc is pushed
                                                   // GROUP BY / aggregate arguments / ORDER BY keys are kept.
    let q = query_in(
        &c,
        "SELECT d.dname, SUM(e.salary) FROM emp e JOIN dept d ON e.dept = d.id \
         GROUP BY d.dname HAVING COUNT(*) > 1 ORDER BY 1",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.columns, vec![2, 3]); // dept, salary
    assert_eq!(s.join_tables[0].columns, vec![0, 1]); // id, dname
    let agg = q.fragment.partial_agg.as_ref().unwrap();
    assert_eq!(agg.group_by, vec![col(3)]);
    assert_eq!(agg.aggs[0].arg, Some(col(1))); // SUM(e.salary)
    assert_eq!(q.finish.agg.as_ref(), Some(agg));
    let q = query_in(
        &c,
        "SELECT e.name FROM emp e JOIN dept d ON e.dept = d.id ORDER BY d.loc, e.mgr",
    );
    let s = spec(&q);
    assert_eq!(s.pivot.columns, vec![1, 2, 4]);
    assert_eq!(s.join_tables[0].columns, vec![0, 2]);
}

#[test]
fn join_results_match_expected() {
    let c = with_rows(cat(), &[("emp", 10), ("dept", 5), ("proj", 7)]);
    let basic = [
        "1 ann eng",
        "2 bob eng",
        "3 cid ops",
        "4 dan ops",
        "5 eve hr",
        "8 hal eng",
        "9 ivy ops",
        "10 jon hr",
    ];
    for sql in [
        "SELECT e.id, e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id ORDER BY e.id",
        "SELECT emp.id, emp.name, dept.dname FROM emp INNER JOIN dept ON dept.id = emp.dept \
         ORDER BY emp.id",
        "SELECT e.id, e.name, d.dname FROM emp e, dept d WHERE e.dept = d.id ORDER BY e.id",
    ] {
        check(&c, sql, true, &basic);
        check(&with_pivot(cat(), "dept"), sql, true, &basic);
    }
    check(
        &c,
        "SELECT * FROM emp e JOIN dept d ON e.dept = d.id ORDER BY e.id",
        true,
        &[
            "1 ann 10 100 NULL 10 eng sf",
            "2 bob 10 80 1 10 eng sf",
            "3 cid 20 90 1 20 ops ny",
            "4 dan 20 60 3 20 ops ny",
            "5 eve 30 75 1 30 hr sf",
            "8 hal 10 80 2 10 eng sf",
            "9 ivy 20 NULL 3 20 ops ny",
            "10 jon 30 70 5 30 hr sf",
        ],
    );
    check(
        &c,
        "SELECT d.*, e.name FROM emp e JOIN dept d ON e.dept = d.id WHERE e.id < 4 ORDER BY e.id",
        true,
        &["10 eng sf ann", "10 eng sf bob", "20 ops ny cid"],
    );
    check(
        &c,
        "SELECT name, dname, loc FROM emp e JOIN dept d ON dept = d.id",
        false,
        &[
            "ann eng sf",
            "bob eng sf",
            "cid ops ny",
            "dan ops ny",
            "eve hr sf",
            "hal eng sf",
            "ivy ops ny",
            "jon hr sf",
        ],
    );
    check(
        &c,
        "SELECT e.id, p.title FROM emp e JOIN proj p ON e.dept = p.dept WHERE e.salary > 75",
        false,
        &[
            "1 alpha", "1 beta", "2 alpha", "2 beta", "3 eta", "3 gamma", "8 alpha", "8 beta",
        ],
    );
    check(
        &c,
        "SELECT e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id \
         WHERE e.salary >= 60 AND d.loc = 'ny' AND e.name <> 'cid'",
        false,
        &["dan ops"],
    );
    check(
        &c,
        "SELECT e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id AND d.dname LIKE '%s'",
        false,
        &["cid ops", "dan ops", "ivy ops"],
    );
    check(
        &c,
        "SELECT e.name, d.dname FROM emp e JOIN dept d ON e.dept = d.id \
         WHERE e.salary > 70 OR d.loc = 'ny'",
        false,
        &[
            "ann eng", "bob eng", "cid ops", "dan ops", "eve hr", "hal eng", "ivy ops",
        ],
    );
    check(
        &c,
        "SELECT e.name, p.title, e.salary, p.budget FROM emp e JOIN proj p \
         ON e.dept = p.dept AND e.salary < p.budget",
        false,
        &[
            "bob alpha 80 90",
            "cid eta 90 95",
            "dan eta 60 95",
            "dan gamma 60 85",
            "hal alpha 80 90",
        ],
    );
    check(
        &c,
        "SELECT e.name, p.title, e.salary - p.budget FROM emp e JOIN proj p ON e.dept = p.dept \
         WHERE e.salary <> p.budget AND e.id + p.pid > 105",
        false,
        &[
            "cid eta -5",
            "dan eta -35",
            "dan gamma -25",
            "eve delta 15",
            "hal alpha -10",
            "hal beta 10",
            "jon delta 10",
        ],
    );
    check(
        &c,
        "SELECT e.id * 1000 + p.pid, e.salary + p.budget, \
         CASE WHEN e.salary > p.budget THEN 'more' ELSE 'less' END \
         FROM emp e JOIN proj p ON e.dept = p.dept WHERE e.dept = 10",
        false,
        &[
            "1100 190 more",
            "1101 170 more",
            "2100 170 less",
            "2101 150 more",
            "8100 170 less",
            "8101 150 more",
        ],
    );
    check(
        &c,
        "SELECT a.id, b.id, b.name FROM emp a JOIN emp b ON a.dept = b.dept \
         AND a.salary = b.salary WHERE a.id < b.id",
        false,
        &["2 8 hal"],
    );
    check(
        &c,
        "SELECT e.name, e.salary, m.salary FROM emp e, emp m \
         WHERE e.mgr = m.id AND e.salary + 20 >= m.salary ORDER BY e.name",
        true,
        &["bob 80 100", "cid 90 100", "hal 80 80", "jon 70 75"],
    );
    check(
        &c,
        "SELECT e.id, d.dname FROM emp e JOIN dept d ON e.salary = d.id",
        true,
        &["6 legal"],
    );
    check(
        &c,
        "SELECT COUNT(*), SUM(e.salary), MAX(d.dname) FROM emp e JOIN dept d \
         ON e.dept = d.id AND e.salary > d.id * 10",
        true,
        &["0 NULL NULL"],
    );
    check(
        &c,
        "SELECT COUNT(*) FROM emp e JOIN dept d ON e.dept = d.id \
         WHERE d.id IS NULL OR e.dept IS NULL",
        true,
        &["0"],
    );
    // Aggregates, HAVING, DISTINCT, ORDER BY and LIMIT over a join.
    check(
        &c,
        "SELECT d.dname, COUNT(*), SUM(e.salary) FROM emp e JOIN dept d ON e.dept = d.id \
         GROUP BY d.dname HAVING COUNT(*) > 2 ORDER BY d.dname",
        true,
        &["eng 3 260", "ops 3 150"],
    );
    check(
        &c,
        "SELECT DISTINCT d.loc FROM emp e JOIN dept d ON e.dept = d.id ORDER BY 1 DESC",
        true,
        &["sf", "ny"],
    );
    check(
        &c,
        "SELECT e.name, p.title FROM emp e JOIN proj p ON e.dept = p.dept \
         ORDER BY p.budget DESC, e.id LIMIT 3 OFFSET 1",
        true,
        &["dan eta", "ivy eta", "ann alpha"],
    );
}

#[test]
fn explain_lines_mention_pivot_join_tables_and_post_processing() {
    let c = with_rows(cat(), &[("emp", 10_000), ("dept", 10)]);
    let sql = "SELECT d.dname, COUNT(*) FROM emp e JOIN dept d ON e.dept = d.id \
               WHERE d.loc = 'sf' AND e.salary > 10 GROUP BY d.dname ORDER BY 2 DESC LIMIT 3";
    let plan = plan_in(&c, &format!("EXPLAIN {sql}")).unwrap();
    let Plan::Explain { analyze, query } = plan else {
        panic!("{plan:?}")
    };
    assert!(!analyze);
    let lines = explain_lines(&query);
    let text = lines.join("\n");
    for needle in [
        "pivot emp e",
        "largest join table: emp e est. 3300 rows x 4 B",
        "filter (pushed down, applied before anything leaves the Tstore): e.salary > 10",
        "Join table 1: dept d",
        "filter (pushed down, applied before anything leaves the Tstore): d.loc = 'sf'",
        "kept columns: d.id, d.dname",
        "est. 1 rows, 20 B",
        "join table d: every Tstore sends its slice's rows to every Tstore: one copy per remote node",
        "Step 1: join d: hash join on e.dept = d.id",
        "partial aggregation: group by d.dname; aggregates count(*)",
        "merge the partial states and finalize",
        "ORDER BY count(*) DESC",
        "LIMIT 3",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // On a naive cluster the same plan says the join table goes to every remote
    // Tstore; nothing else changes.
    let naive = explain_lines_for(&query, Broadcast::PerTstore);
    assert_eq!(naive.len(), lines.len());
    let differ: Vec<(&String, &String)> =
        lines.iter().zip(&naive).filter(|(a, b)| a != b).collect();
    assert_eq!(differ.len(), 1, "{differ:#?}");
    assert!(
        differ[0]
            .1
            .ends_with("one copy per remote Tstore, as the naive router mode sends (local Tstores read it in place)"),
        "{differ:#?}"
    );
    match plan_in(&c, &format!("EXPLAIN ANALYZE {sql}")).unwrap() {
        Plan::Explain { analyze, .. } => assert!(analyze),
        p => panic!("{p:?}"),
    }
    match plan_in(&c, &format!("EXPLAIN (ANALYZE) {sql}")).unwrap() {
        Plan::Explain { analyze, .. } => assert!(analyze),
        p => panic!("{p:?}"),
    }
    // Residual filters and cross products are named.
    let q = query_in(
        &c,
        "SELECT e.name FROM emp e, dept d WHERE e.salary > d.id OR d.loc = 'x'",
    );
    let text = explain_lines(&q).join("\n");
    assert!(text.contains("cross product"), "{text}");
    assert!(
        text.contains("filter after the step: e.salary > d.id OR d.loc = 'x'"),
        "{text}"
    );
    // A single-table query.
    let q = query_in(
        &c,
        "SELECT name, salary * 2 AS s2 FROM emp WHERE dept = 10 ORDER BY 2",
    );
    let text = explain_lines(&q).join("\n");
    for needle in [
        "Single-set query: every Tstore scans its slice of emp",
        "filter: dept = 10",
        "projection: name, salary * 2",
        "output: name, (salary * 2) AS s2",
        "ORDER BY (salary * 2)",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // EXPLAIN of anything else is not supported.
    let e = err_in(&c, "EXPLAIN INSERT INTO none VALUES (1, 2)");
    assert_eq!(e.sqlstate(), "0A000", "{e}");
    let e = err_in(&c, "EXPLAIN SELECT 1");
    assert_eq!(e.sqlstate(), "0A000", "{e}");
}

#[test]
fn render_expr_parenthesizes_only_where_needed() {
    let names: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    use smrdb_tstore::BinaryOp::*;
    let e = col(0).binary(Add, col(1)).binary(Mul, col(2));
    assert_eq!(render_expr(&e, &names), "(a + b) * c");
    let e = col(0).binary(Sub, col(1).binary(Sub, col(2)));
    assert_eq!(render_expr(&e, &names), "a - (b - c)");
    let e = col(0)
        .gt(Expr::lit(1))
        .and(col(1).is_null().or(col(2).eq(Expr::lit("x"))));
    assert_eq!(render_expr(&e, &names), "a > 1 AND (b IS NULL OR c = 'x')");
    let e = !(col(0).lt(col(9)));
    assert_eq!(render_expr(&e, &names), "NOT (a < #9)");
}

// ------------------------------------------------------------------ TPC-H shapes

/// The TPC-H tables as the harness loads them (`harness/src/workload.rs` `tpch`),
/// with the row counts of scale factor `sf`.
fn tpch_cat(sf: f64) -> Cat {
    use DataType::*;
    let mut c = Cat::default();
    let mut add = |n: &str, rows: f64, cols: &[(&str, DataType)]| {
        c.tables.insert(n.to_string(), schema(cols));
        c.rows.insert(n.to_string(), rows.round() as u64);
    };
    add("region", 5.0, &[("r_regionkey", BigInt), ("r_name", Text)]);
    add(
        "nation",
        25.0,
        &[
            ("n_nationkey", BigInt),
            ("n_name", Text),
            ("n_regionkey", BigInt),
        ],
    );
    add(
        "supplier",
        10_000.0 * sf,
        &[("s_suppkey", BigInt), ("s_nationkey", BigInt)],
    );
    add(
        "customer",
        150_000.0 * sf,
        &[
            ("c_custkey", BigInt),
            ("c_name", Text),
            ("c_address", Text),
            ("c_nationkey", BigInt),
            ("c_phone", Text),
            ("c_acctbal", Double),
            ("c_mktsegment", Text),
            ("c_comment", Text),
        ],
    );
    add(
        "orders",
        1_500_000.0 * sf,
        &[
            ("o_orderkey", BigInt),
            ("o_custkey", BigInt),
            ("o_orderdate", Date),
            ("o_orderpriority", Text),
            ("o_shippriority", Int),
        ],
    );
    add(
        "lineitem",
        6_000_000.0 * sf,
        &[
            ("l_orderkey", BigInt),
            ("l_suppkey", BigInt),
            ("l_extendedprice", Double),
            ("l_discount", Double),
            ("l_returnflag", Text),
            ("l_shipdate", Date),
            ("l_commitdate", Date),
            ("l_receiptdate", Date),
            ("l_shipmode", Text),
        ],
    );
    c
}

const TPCH_Q3: &str = "SELECT l_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, \
     o_orderdate, o_shippriority FROM customer, orders, lineitem \
     WHERE c_mktsegment = 'BUILDING' AND c_custkey = o_custkey AND l_orderkey = o_orderkey \
     AND o_orderdate < DATE '1995-03-15' AND l_shipdate > DATE '1995-03-15' \
     GROUP BY l_orderkey, o_orderdate, o_shippriority ORDER BY revenue DESC, o_orderdate LIMIT 10";

const TPCH_Q5: &str = "SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue \
     FROM customer, orders, lineitem, supplier, nation, region \
     WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey AND l_suppkey = s_suppkey \
     AND c_nationkey = s_nationkey AND s_nationkey = n_nationkey \
     AND n_regionkey = r_regionkey AND r_name = 'ASIA' \
     AND o_orderdate >= DATE '1994-01-01' AND o_orderdate < DATE '1995-01-01' \
     GROUP BY n_name ORDER BY revenue DESC";

const TPCH_Q7: &str = "SELECT n1.n_name AS supp_nation, n2.n_name AS cust_nation, \
     CASE WHEN l_shipdate < DATE '1996-01-01' THEN 1995 ELSE 1996 END AS l_year, \
     sum(l_extendedprice * (1 - l_discount)) AS revenue \
     FROM supplier, lineitem, orders, customer, nation n1, nation n2 \
     WHERE s_suppkey = l_suppkey AND o_orderkey = l_orderkey AND c_custkey = o_custkey \
     AND s_nationkey = n1.n_nationkey AND c_nationkey = n2.n_nationkey \
     AND ((n1.n_name = 'FRANCE' AND n2.n_name = 'GERMANY') \
     OR (n1.n_name = 'GERMANY' AND n2.n_name = 'FRANCE')) \
     AND l_shipdate BETWEEN DATE '1995-01-01' AND DATE '1996-12-31' \
     GROUP BY supp_nation, cust_nation, l_year ORDER BY supp_nation, cust_nation, l_year";

const TPCH_Q10: &str =
    "SELECT c_custkey, c_name, sum(l_extendedprice * (1 - l_discount)) AS revenue, \
     c_acctbal, n_name, c_address, c_phone, c_comment \
     FROM customer, orders, lineitem, nation \
     WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey \
     AND o_orderdate >= DATE '1993-10-01' AND o_orderdate < DATE '1994-01-01' \
     AND l_returnflag = 'R' AND c_nationkey = n_nationkey \
     GROUP BY c_custkey, c_name, c_acctbal, c_phone, n_name, c_address, c_comment \
     ORDER BY revenue DESC LIMIT 20";

/// The pivot's alias, then the join tables' in join order.
fn tpch_order(sf: f64, sql: &str) -> Vec<String> {
    let q = query_in(&tpch_cat(sf), sql);
    let s = spec(&q);
    std::iter::once(&s.pivot)
        .chain(&s.join_tables)
        .map(|j| j.alias.clone())
        .collect()
}

#[test]
fn tpch_join_orders() {
    // Orders before customer in Q5: customer joined before orders would come in through
    // `c_nationkey = s_nationkey` alone, a join on a column that is no key of customer
    // (every lineitem row meets every customer of its supplier's nation).
    for sf in [0.01, 0.1, 1.0, 10.0] {
        for (name, sql, want) in [
            ("Q3", TPCH_Q3, &["lineitem", "orders", "customer"][..]),
            (
                "Q5",
                TPCH_Q5,
                &[
                    "lineitem", "orders", "supplier", "customer", "nation", "region",
                ][..],
            ),
            (
                "Q7",
                TPCH_Q7,
                &["lineitem", "supplier", "n1", "orders", "customer", "n2"][..],
            ),
            (
                "Q10",
                TPCH_Q10,
                &["lineitem", "orders", "customer", "nation"][..],
            ),
        ] {
            assert_eq!(tpch_order(sf, sql), want, "{name} at SF {sf}");
            // Every step has a key.
            let q = query_in(&tpch_cat(sf), sql);
            assert!(
                spec(&q).steps.iter().all(|st| !st.left_keys.is_empty()),
                "{name} at SF {sf}"
            );
        }
    }
    // Q5's customer step has both keys: c_custkey = o_custkey and the nation.
    let q = query_in(&tpch_cat(0.1), TPCH_Q5);
    assert_eq!(spec(&q).steps[2].left_keys.len(), 2);
}

#[test]
fn tpch_q5_explain_says_why_each_table_is_where_it_is() {
    let q = query_in(&tpch_cat(0.1), TPCH_Q5);
    let lines = explain_lines(&q);
    let text = lines.join("\n");
    for needle in [
        // The pivot line is unchanged (one line: harness/src/paper.rs reads it).
        "Pivot lineitem: stays in place, every Tstore compares its own slice (largest join \
         table: lineitem est. 600000 rows x 32 B)\n",
        "Join order: orders, supplier, customer, nation, region (",
        "the largest join table, orders, is not last: with it last, the steps before the \
         streamed one would materialize est. 3120000 rows)",
        // 600000 x 16335 / min(6M, 1.5M) x 10 rows.
        "Join table 1: orders: every Tstore builds it from its slice\n  why here: key to \
         lineitem; est. 65340 rows after the step; candidates (est. rows after): orders \
         65340, supplier 600000\n",
        "supplier 65340, customer 65340 (a tie: the smaller join table first)",
        "why here: key to orders, supplier; est. 65 rows after the step; candidates (est. \
         rows after): customer 65, nation 65340",
        "why here: last, streamed: key to nation; est. 13 rows after the step",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // One "why here" line per join table, right under its header.
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("Join table ") {
            assert!(lines[i + 1].starts_with("  why here: "), "{}", lines[i + 1]);
        }
    }
    // A quoted alias with a newline does not break the one line per join table.
    let c = with_rows(cat(), &[("t1", 1_000_000), ("t2", 100_000), ("t3", 10)]);
    let q = query_in(
        &c,
        "SELECT 1 FROM t1, t2 \"x\ny\", t3 WHERE t1.k = \"x\ny\".k AND t1.k = t3.k",
    );
    let lines = explain_lines(&q);
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("  why here: "))
            .count(),
        2,
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("Join order: t3, t2 x y (")));
    // Two tables: nothing to explain, the pivot's reason alone.
    let c = with_rows(cat(), &[("emp", 10_000), ("dept", 10)]);
    let q = query_in(&c, "SELECT d.dname FROM emp e JOIN dept d ON e.dept = d.id");
    let text = explain_lines(&q).join("\n");
    assert!(
        !text.contains("why here") && !text.contains("Join order"),
        "{text}"
    );
}

#[test]
fn the_largest_join_table_streams_last_unless_that_materializes_more() {
    let sql = "SELECT t1.v FROM t1, t2, t3 WHERE t1.k = t2.k AND t1.k = t3.k";
    let order = |c: &Cat, sql: &str| -> Vec<String> {
        spec(&query_in(c, sql))
            .join_tables
            .iter()
            .map(|j| j.table.clone())
            .collect()
    };
    // Both key joins keep t1's rows (est. 1M after each step), whatever the order:
    // the largest join table, t2, streams last.
    let c = with_rows(cat(), &[("t1", 1_000_000), ("t2", 100_000), ("t3", 10)]);
    assert_eq!(order(&c, sql), ["t3", "t2"]);
    let text = explain_lines(&query_in(&c, sql)).join("\n");
    assert!(
        text.contains("the largest join table, t2, is last"),
        "{text}"
    );
    // A filter on t2 makes its step shrink the rows to est. 100000 (1M x 10000 /
    // 100000); joining t3 first would materialize 1M rows. t2 (still the largest
    // join table) comes first and t3 streams.
    let filtered = format!("{sql} AND t2.v = 1");
    assert_eq!(order(&c, &filtered), ["t2", "t3"]);
    let text = explain_lines(&query_in(&c, &filtered)).join("\n");
    assert!(
        text.contains(
            "est. 100000 rows materialized before the last one streams; the largest join \
             table, t2, is not last: with it last, the steps before the streamed one would \
             materialize est. 1000000 rows"
        ),
        "{text}"
    );
}
