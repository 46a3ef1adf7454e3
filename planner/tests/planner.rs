//! Planner tests: statements, bind errors and a differential test of distributed
//! execution (fragment on every slice + Finish) against a row-by-row reference.

use std::collections::HashMap;

use smrdb_planner::{plan_sql, Catalog, InsertSource, Plan, PlanError, QueryPlan};
use smrdb_tstore::{ColumnDef, DataType, Slice, TableSchema, Value};

struct Cat(HashMap<String, TableSchema>);
impl Catalog for Cat {
    fn table(&self, name: &str) -> Option<TableSchema> {
        self.0.get(name).cloned()
    }
}

fn schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("id", DataType::BigInt, false),
        ColumnDef::new("a", DataType::Int, true),
        ColumnDef::new("b", DataType::BigInt, true),
        ColumnDef::new("x", DataType::Double, true),
        ColumnDef::new("s", DataType::Text, true),
        ColumnDef::new("d", DataType::Date, true),
        ColumnDef::new("f", DataType::Boolean, true),
    ])
}

fn cat() -> Cat {
    let mut m = HashMap::new();
    m.insert("t".to_string(), schema());
    m.insert(
        "people".to_string(),
        TableSchema::new(vec![
            ColumnDef::new("name", DataType::Text, false),
            ColumnDef::new("age", DataType::Int, true),
        ]),
    );
    Cat(m)
}

fn one(sql: &str) -> Result<Plan, PlanError> {
    let mut v = plan_sql(sql, &cat())?;
    assert_eq!(v.len(), 1);
    Ok(v.remove(0))
}

fn query(sql: &str) -> QueryPlan {
    match one(sql) {
        Ok(Plan::Query(q)) => q,
        other => panic!("{sql}: {other:?}"),
    }
}

/// Splits rows round-robin over `n` slices and runs the plan distributed.
fn run(
    q: &QueryPlan,
    sch: &TableSchema,
    rows: &[Vec<Value>],
    n: usize,
    chunk: usize,
) -> Result<Vec<Vec<Value>>, PlanError> {
    let mut slices: Vec<Slice> = (0..n)
        .map(|_| Slice::with_chunk_rows(sch.clone(), chunk).unwrap())
        .collect();
    let mut parts: Vec<Vec<Vec<Value>>> = vec![vec![]; n];
    for (i, r) in rows.iter().enumerate() {
        parts[i % n].push(r.clone());
    }
    for (s, p) in slices.iter_mut().zip(&parts) {
        // Two inserts so that sealed chunks and an unsealed tail both occur.
        let h = p.len() / 2;
        s.insert(&p[..h]).unwrap();
        s.insert(&p[h..]).unwrap();
    }
    let mut gathered = Vec::new();
    for s in &slices {
        gathered.extend(s.execute(&q.fragment)?);
    }
    let out = q.finish.apply(gathered)?;
    assert_eq!(out.num_columns(), q.columns.len());
    for (f, (n, t)) in out.schema().fields().iter().zip(&q.columns) {
        assert_eq!(f.name(), n);
        assert_eq!(f.data_type(), &t.to_arrow());
    }
    Ok(smrdb_tstore::slice::batches_to_rows([&out])?)
}

#[test]
fn patent_example() {
    let q = query("SELECT * FROM people WHERE name = 'SMITH' AND age > 35");
    assert!(q.fragment.filter.is_some());
    let sch = cat().table("people").unwrap();
    let rows: Vec<Vec<Value>> = [
        ("SMITH", Some(40)),
        ("SMITH", Some(30)),
        ("JONES", Some(50)),
        ("SMITH", None),
        ("SMITH", Some(36)),
    ]
    .iter()
    .map(|(n, a)| {
        vec![
            Value::Text(n.to_string()),
            a.map(Value::Int).unwrap_or(Value::Null),
        ]
    })
    .collect();
    for n in 1..=3 {
        let mut got = run(&q, &sch, &rows, n, 2).unwrap();
        got.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            got,
            vec![
                vec![Value::Text("SMITH".into()), Value::Int(36)],
                vec![Value::Text("SMITH".into()), Value::Int(40)]
            ]
        );
    }
    assert_eq!(
        q.columns,
        vec![
            ("name".into(), DataType::Text),
            ("age".into(), DataType::Int)
        ]
    );
}

#[test]
fn projection_pushdown_and_agg_split() {
    let q = query("SELECT a + 1 AS y FROM t AS z WHERE z.s = 'q' ORDER BY y DESC LIMIT 3");
    assert_eq!(
        q.fragment.projection.len(),
        1,
        "only a+1 leaves the Tstores"
    );
    assert!(q.fragment.partial_agg.is_none());
    let q =
        query("SELECT s, SUM(a) / COUNT(*), AVG(x) FROM t GROUP BY 1 HAVING MAX(d) > '2024-01-01'");
    let agg = q.fragment.partial_agg.as_ref().unwrap();
    assert_eq!(agg.group_by.len(), 1);
    assert_eq!(agg.aggs.len(), 4);
    assert_eq!(q.columns[1].1, DataType::BigInt);
    assert_eq!(q.columns[2].1, DataType::Double);
    // DISTINCT is pre-aggregated per Tstore.
    let q = query("SELECT DISTINCT s FROM t");
    assert!(q.fragment.partial_agg.is_some());
}

#[test]
fn exact_avg_and_empty_inputs() {
    let sch = schema();
    let q = query("SELECT COUNT(*), SUM(a), AVG(a), MIN(s), MAX(d) FROM t");
    let got = run(&q, &sch, &[], 3, 2).unwrap();
    assert_eq!(
        got,
        vec![vec![
            Value::BigInt(0),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null
        ]]
    );
    let rows: Vec<Vec<Value>> = (0..7)
        .map(|i| {
            vec![
                Value::BigInt(i),
                Value::Int(i as i32),
                Value::Null,
                Value::Null,
                Value::Text(format!("s{i}")),
                Value::Date(i as i32),
                Value::Null,
            ]
        })
        .collect();
    let got = run(&q, &sch, &rows, 4, 1).unwrap();
    assert_eq!(
        got,
        vec![vec![
            Value::BigInt(7),
            Value::BigInt(21),
            Value::Double(3.0),
            Value::Text("s0".into()),
            Value::Date(6)
        ]]
    );
    // AVG over slices of different sizes is the global mean, not a mean of means.
    let q = query("SELECT AVG(a) FROM t WHERE a <> 0");
    let got = run(&q, &sch, &rows, 4, 1).unwrap();
    assert_eq!(got, vec![vec![Value::Double(3.5)]]);
    let q = query("SELECT a FROM t WHERE a > 100 ORDER BY a");
    assert!(run(&q, &sch, &rows, 2, 3).unwrap().is_empty());
}

#[test]
fn statements() {
    match one("CREATE TABLE IF NOT EXISTS u (k BIGINT NOT NULL, v DOUBLE PRECISION, w VARCHAR(10), z int8, q real, c char(3), b bool, d DATE, e SMALLINT)").unwrap() {
        Plan::CreateTable { name, schema, if_not_exists } => {
            assert_eq!(name, "u");
            assert!(if_not_exists);
            let t: Vec<DataType> = schema.columns.iter().map(|c| c.data_type).collect();
            use DataType::*;
            assert_eq!(t, vec![BigInt, Double, Text, BigInt, Double, Text, Boolean, Date, Int]);
            assert!(!schema.columns[0].nullable && schema.columns[1].nullable);
        }
        p => panic!("{p:?}"),
    }
    match one("DROP TABLE IF EXISTS a, b").unwrap() {
        Plan::DropTable { names, if_exists } => assert_eq!(
            (names, if_exists),
            (vec!["a".to_string(), "b".to_string()], true)
        ),
        p => panic!("{p:?}"),
    }
    match one("INSERT INTO t (id, a, d, x, s, f) VALUES (1, -5, DATE '2024-02-29', 2, 'hi', true), (2, 1+2, '2024-01-01', -1.5, NULL, 'false')").unwrap() {
        Plan::Insert { table, source: InsertSource::Values(rows) } => {
            assert_eq!(table, "t");
            assert_eq!(rows[0], vec![Value::BigInt(1), Value::Int(-5), Value::Null, Value::Double(2.0), Value::Text("hi".into()), Value::date("2024-02-29").unwrap(), Value::Bool(true)]);
            assert_eq!(rows[1][1], Value::Int(3));
            assert_eq!(rows[1][3], Value::Double(-1.5));
            assert_eq!(rows[1][6], Value::Bool(false));
        }
        p => panic!("{p:?}"),
    }
    match one("INSERT INTO t (s, id) SELECT s, b FROM t WHERE a > 1").unwrap() {
        Plan::Insert {
            source: InsertSource::Query { targets, plan },
            ..
        } => {
            assert_eq!(
                targets,
                vec![Some(1), None, None, None, Some(0), None, None]
            );
            assert_eq!(plan.columns.len(), 2);
        }
        p => panic!("{p:?}"),
    }
    match one("COPY t (id, s) FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER '|', NULL 'NA')")
        .unwrap()
    {
        Plan::Copy {
            table,
            source,
            format,
        } => {
            assert_eq!(table, "t");
            assert_eq!(source, smrdb_planner::CopySource::Stdin);
            assert!(format.header);
            assert_eq!(
                (format.delimiter, format.null.as_str(), format.quote),
                (b'|', "NA", b'"')
            );
            assert_eq!(format.columns, Some(vec![0, 4]));
        }
        p => panic!("{p:?}"),
    }
    match one("COPY t FROM '/tmp/x.csv' WITH (FORMAT csv)").unwrap() {
        Plan::Copy { source, format, .. } => {
            assert_eq!(source, smrdb_planner::CopySource::File("/tmp/x.csv".into()));
            assert_eq!(
                (
                    format.header,
                    format.delimiter,
                    format.null.as_str(),
                    format.columns
                ),
                (false, b',', "", None)
            );
        }
        p => panic!("{p:?}"),
    }
    match one("UPDATE t SET a = a + 1, s = 'x', d = '2024-03-01' WHERE id = 3").unwrap() {
        Plan::Update {
            assignments,
            filter,
            ..
        } => {
            assert_eq!(assignments.len(), 3);
            assert_eq!(
                assignments[2].1,
                smrdb_tstore::Expr::Literal(Value::date("2024-03-01").unwrap())
            );
            assert!(filter.is_some());
        }
        p => panic!("{p:?}"),
    }
    assert!(matches!(
        one("DELETE FROM t WHERE f").unwrap(),
        Plan::Delete {
            filter: Some(_),
            ..
        }
    ));
    assert!(matches!(
        one("DELETE FROM t").unwrap(),
        Plan::Delete { filter: None, .. }
    ));
    match one("SET extra_float_digits = 3").unwrap() {
        Plan::Set { name, value } => {
            assert_eq!((name.as_str(), value.as_str()), ("extra_float_digits", "3"))
        }
        p => panic!("{p:?}"),
    }
    match one("SET application_name TO 'psql'").unwrap() {
        Plan::Set { name, value } => assert_eq!(
            (name.as_str(), value.as_str()),
            ("application_name", "psql")
        ),
        p => panic!("{p:?}"),
    }
    assert!(
        matches!(one("SHOW server_version").unwrap(), Plan::Show { name } if name == "server_version")
    );
    assert!(
        matches!(one("SHOW smrdb.overlap").unwrap(), Plan::Show { name } if name == "smrdb.overlap")
    );
    assert!(
        matches!(one("SHOW TRANSACTION ISOLATION LEVEL").unwrap(), Plan::Show { name } if name == "transaction_isolation")
    );
    for (s, k) in [
        ("BEGIN", "BEGIN"),
        ("COMMIT", "COMMIT"),
        ("ROLLBACK", "ROLLBACK"),
    ] {
        assert!(
            matches!(one(s).unwrap(), Plan::Transaction { kind } if kind == k),
            "{s}"
        );
    }
    match one("SELECT 1 + 2 AS three, 'a', NULL, 7 / 2.0, CAST('2024-01-05' AS DATE)").unwrap() {
        Plan::Values { columns, rows } => {
            assert_eq!(columns[0], ("three".to_string(), DataType::Int));
            assert_eq!(columns[2].1, DataType::Text);
            assert_eq!(
                rows,
                vec![vec![
                    Value::Int(3),
                    Value::Text("a".into()),
                    Value::Null,
                    Value::Double(3.5),
                    Value::date("2024-01-05").unwrap()
                ]]
            );
        }
        p => panic!("{p:?}"),
    }
    assert_eq!(
        plan_sql("BEGIN; SELECT 1; COMMIT", &cat()).unwrap().len(),
        3
    );
}

fn err(sql: &str) -> PlanError {
    match plan_sql(sql, &cat()) {
        Ok(p) => panic!("{sql} planned: {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("SELECT * FROM nope", "42P01", "nope"),
        ("SELECT zz FROM t", "42703", "zz"),
        ("SELECT q.a FROM t", "42P01", "q"),
        ("SELECT a FROM t WHERE s = 1", "42804", ""),
        ("SELECT a + s FROM t", "42804", ""),
        ("SELECT a FROM t WHERE a", "42804", ""),
        ("SELECT SUM(s) FROM t", "42804", ""),
        ("SELECT a FROM t WHERE d = 'notadate'", "22P02", ""),
        ("CREATE TABLE u (a blob)", "42704", "blob"),
        ("CREATE TABLE t (a INT)", "42P07", "t"),
        ("CREATE TABLE u (a INT, a INT)", "42701", "a"),
        ("SELECT a FROM t LEFT JOIN people ON true", "0A000", "LEFT"),
        ("SELECT a FROM t NATURAL JOIN people", "0A000", "NATURAL"),
        (
            "SELECT a FROM t WHERE a IN (SELECT a FROM t)",
            "0A000",
            "subquer",
        ),
        (
            "SELECT COUNT(a) FILTER (WHERE a > 1) FROM t",
            "0A000",
            "FILTER",
        ),
        ("SELECT ROW_NUMBER() OVER () FROM t", "0A000", "window"),
        ("SELECT a FROM t UNION SELECT a FROM t", "0A000", "UNION"),
        ("SELECT lower(s) FROM t", "0A000", "lower"),
        ("SELEC a FROM t", "42601", ""),
        ("SELECT a FROM t WHERE", "42601", ""),
        ("SELECT a, COUNT(*) FROM t", "42803", "a"),
        ("SELECT s FROM t GROUP BY a", "42803", "s"),
        ("SELECT a FROM t WHERE COUNT(*) > 1", "42803", "WHERE"),
        ("SELECT SUM(COUNT(*)) FROM t", "42803", ""),
        ("SELECT a FROM t ORDER BY 5", "42P10", ""),
        ("SELECT DISTINCT a FROM t ORDER BY b", "42P10", ""),
        ("SELECT a FROM t LIMIT -1", "2201W", ""),
        ("INSERT INTO nope VALUES (1)", "42P01", "nope"),
        ("INSERT INTO t (id, zz) VALUES (1, 2)", "42703", "zz"),
        ("INSERT INTO t (id) VALUES (1, 2)", "42601", ""),
        ("INSERT INTO t (id, a) VALUES (1)", "42601", ""),
        ("INSERT INTO t (id, a) VALUES (NULL, 1)", "23502", "id"),
        ("INSERT INTO t (a) VALUES (1)", "23502", "id"),
        ("INSERT INTO t (id, a) VALUES (1, 'abc')", "22P02", ""),
        ("INSERT INTO t (id, a) VALUES (1, true)", "42804", ""),
        ("INSERT INTO t (id, a) VALUES (1, 3000000000)", "22003", ""),
        (
            "INSERT INTO t (id, d) VALUES (1, '2023-02-29')",
            "22P02",
            "",
        ),
        ("INSERT INTO t (id, a) VALUES (1, 1/0)", "22012", ""),
        ("INSERT INTO t (id, f) SELECT id, a FROM t", "42804", ""),
        ("UPDATE t SET zz = 1", "42703", "zz"),
        ("UPDATE t SET a = s", "42804", ""),
        ("UPDATE t SET id = NULL", "23502", "id"),
        ("DROP TABLE nope", "42P01", "nope"),
        ("DELETE FROM nope", "42P01", "nope"),
        ("SELECT 1/0", "22012", ""),
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
    // Execution-time errors map the same way.
    let e: PlanError = smrdb_tstore::Error::DivisionByZero.into();
    assert_eq!(e.sqlstate(), "22012");
}

#[test]
fn null_literal_takes_the_other_operands_type() {
    // Expect: `1 / NULL` is an INT column holding NULL, as in PostgreSQL (not TEXT).
    match one("SELECT 1 / NULL AS x").unwrap() {
        Plan::Values { columns, rows } => {
            assert_eq!(columns, vec![("x".to_string(), DataType::Int)]);
            assert_eq!(rows, vec![vec![Value::Null]]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn keyword_after_from_is_a_syntax_error() {
    // Expect: 42601, not "relation where does not exist".
    let e = one("SELECT a FROM WHERE a > 1").unwrap_err();
    assert_eq!(e.sqlstate(), "42601", "{e}");
    // A quoted identifier may be called that.
    let e = one("SELECT a FROM \"where\"").unwrap_err();
    assert_eq!(e.sqlstate(), "42P01", "{e}");
}
