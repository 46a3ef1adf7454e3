//! Writes what the fuzz targets start from: the checked-in seed corpora of `header`,
//! `task_msg` and `fragment` (`fuzz/corpus/<target>/`: valid encodings made with the
//! real encoders, in each target's input layout; see the top of `fuzz_targets/*.rs`)
//! and the `sql` target's catalog (`fuzz/sql_catalog.sql`: every CREATE TABLE of
//! `tests/slt/*.slt`). The `sql` target's seeds are the statements of
//! `tests/slt/*.slt`, extracted by `fuzz/run.sh`.
//!
//! The `task_msg` and `fragment` seeds are made by the planner: a few queries (joins,
//! an outer join, aggregates, subqueries, a window, a union) over tables `t` (a column
//! of every type), `u` and `v` with rows and statistics, distributed for 2 nodes x 2
//! Tstores; their fragments, stage plans, and the expressions of an UPDATE and a
//! DELETE, in every request and reply of the task protocol, and exchange chunks.
//!
//! A corpus directory's files other than `regress_*` (inputs of fixed crashes) are
//! replaced. Rerun after a wire format, the planner or the slt corpus's tables change:
//! `cd fuzz && cargo run --example gen_corpus`.

#[path = "../fuzz_targets/common/seed_table.rs"]
mod seed_table;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::ScalarValue;
use smrdb_node::proto::{
    self, Body, ChunkTrailer, Reply, Request, SliceStats, StageReport, CHUNK_ABORT, CHUNK_LAST,
};
use smrdb_planner::frontend::{scalar_subqueries, substitute_scalar_subqueries};
use smrdb_planner::{Catalog, DistOptions, Plan, Planner};
use smrdb_router::header::{Header, Kind, FLAG_LAST};
use smrdb_router::ring::TxRing;
use smrdb_router::{Addr, PeerStats};
use smrdb_tstore::exec::codec;
use smrdb_tstore::exec::fragment::Place;
use smrdb_tstore::{
    coerce_batch, encode_batches, ColumnDef, Slice, SqlType, StmtWrite, TableSchema, TableStats,
};

const TASK: u64 = 42;

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("write a seed");
}

fn header_seeds(dir: &Path) {
    let data = Header {
        kind: Kind::Data,
        flags: FLAG_LAST,
        tag: 0x5401,
        src: Addr::controller(11),
        dst: Addr::tstore(0),
        query: 7,
        object: 1,
        chunk: 0,
        len: 100,
        ring_offset: 0,
        ring_end: 128,
        seq: 0,
    };
    write(dir, "raw_data", &data.encode());
    write(dir, "raw_credit", &Header::credit(4096, 3).encode());
    // Sessions: a 4 KiB ring (byte 0 = 63), 64-byte aligned, from cluster index 1
    // (byte 1 = 1) or 2 (byte 1 = 3).
    for (name, b1, lens) in [
        ("session_small", 1u8, &[100u16, 1000, 64, 0, 63][..]),
        (
            "session_wrap",
            1,
            &[1000, 2000, 1500, 900, 4000, 1, 4096][..],
        ),
        ("session_unaligned", 2, &[7, 13, 4000, 100][..]),
        ("session_node2", 3, &[64, 128, 256][..]),
    ] {
        let mut s = vec![63u8, b1];
        for (i, &len) in lens.iter().enumerate() {
            s.push(2); // honest op
            s.extend_from_slice(&len.to_le_bytes());
            if i % 2 == 1 {
                s.extend_from_slice(&[3, 0, 3, 0]); // release the oldest two
            }
        }
        write(dir, name, &s);
    }
    // Raw ops carrying headers an honest sender (ring 4 KiB, aligned, node index 1)
    // would send, and a fields op.
    let mut tx = TxRing::with_align(4096, 64);
    let mut s = vec![63u8, 1];
    for (seq, len) in [300u64, 3000, 500].into_iter().enumerate() {
        let Some(p) = tx.place(len) else { break };
        tx.commit(p);
        let h = Header {
            len: len as u32,
            ring_offset: p.offset,
            ring_end: p.end,
            seq: seq as u64,
            object: seq as u64,
            ..data
        };
        s.push(0);
        s.extend_from_slice(&h.encode());
        s.extend_from_slice(&[3, 0]);
        tx.credit(p.end).expect("credit");
    }
    s.push(1); // fields: kind, version, src, dst, len, offset, end, seq delta
    s.push(1);
    s.push(0);
    s.extend_from_slice(&Addr::controller(11).0.to_le_bytes());
    s.extend_from_slice(&Addr::ALL_TSTORES.0.to_le_bytes());
    s.extend_from_slice(&64u16.to_le_bytes());
    s.extend_from_slice(&(tx_tail(&tx) % 4096).to_le_bytes());
    s.extend_from_slice(&(tx_tail(&tx) + 64).to_le_bytes());
    s.push(0);
    write(dir, "session_raw", &s);
}

/// The stream position after what `tx` placed (its next placement's start when it fits).
fn tx_tail(tx: &TxRing) -> u64 {
    tx.place(0).map_or(0, |p| p.end)
}

// ------------------------------------------------------------------ tables

/// Tables with rows and the statistics the Tstores would report (as the planner's
/// tests' `Db`).
struct Db {
    tables: BTreeMap<String, (TableSchema, Vec<RecordBatch>, TableStats)>,
}

impl Catalog for Db {
    fn table(&self, name: &str) -> Option<(TableSchema, Option<TableStats>)> {
        self.tables
            .get(name)
            .map(|(s, _, st)| (s.clone(), Some(st.clone())))
    }
}

impl Db {
    /// Adds `name` with `rows` given as text (each value parsed as the column's type
    /// by `coerce_batch`, as COPY does).
    fn add(&mut self, name: &str, schema: TableSchema, rows: &[&[Option<&str>]]) {
        let fields: Vec<Field> = schema
            .columns
            .iter()
            .map(|c| Field::new(&c.name, DataType::Utf8, true))
            .collect();
        let cols: Vec<ArrayRef> = (0..schema.columns.len())
            .map(|i| {
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r[i]).collect::<Vec<_>>(),
                )) as ArrayRef
            })
            .collect();
        let text = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).expect("rows");
        let batch = coerce_batch(&schema, &text).expect("rows of the table's types");
        let mut slice = Slice::new(schema.clone()).expect("a slice");
        slice.append_batch(batch).expect("append");
        let batches: Vec<RecordBatch> = slice.batches().cloned().collect();
        let stats = slice.stats().clone();
        self.tables
            .insert(name.to_string(), (schema, batches, stats));
    }
}

fn db() -> Db {
    let mut db = Db {
        tables: BTreeMap::new(),
    };
    #[rustfmt::skip]
    let t: &[&[Option<&str>]] = &[
        &[Some("1"), Some("2"), Some("1"), Some("0.5"), Some("1.5"), Some("123.45"), Some("abc"), Some("x"), Some("x1"), Some("2024-01-31"), Some("2024-01-31 12:00:00"), Some("true")],
        &[Some("2"), None, Some("-2"), None, Some("-0"), Some("-0.01"), Some("a"), Some(""), Some(""), None, None, Some("false")],
        &[Some("3"), Some("5"), None, Some("-1e3"), None, None, None, None, None, Some("1999-12-31"), Some("1970-01-01 00:00:00.000001"), None],
        &[Some("4"), Some("-7"), Some("32767"), Some("3.25"), Some("2.25"), Some("99999999.99"), Some("zz"), Some("xyzzy"), Some("xy"), Some("2000-02-29"), Some("2000-02-29 23:59:59.5"), Some("true")],
        &[Some("5"), Some("12"), Some("5"), Some("7"), Some("10"), Some("1"), Some("b"), Some("b"), Some("b"), Some("2024-06-01"), Some("2024-06-01 00:00:00"), Some("false")],
        &[Some("6"), Some("3"), Some("6"), Some("0"), Some("3.5"), Some("2.50"), Some("x"), Some("x%"), Some("x"), Some("2020-01-01"), None, Some("true")],
    ];
    db.add("t", seed_table::seed_table(), t);
    let u = TableSchema::new(vec![
        ColumnDef::new("id", SqlType::BigInt, false),
        ColumnDef::new("t_id", SqlType::BigInt, true),
        ColumnDef::new("name", SqlType::Text, true),
    ]);
    #[rustfmt::skip]
    db.add("u", u, &[
        &[Some("10"), Some("1"), Some("a")],
        &[Some("11"), Some("1"), Some("b")],
        &[Some("12"), Some("4"), None],
        &[Some("13"), None, Some("d")],
    ]);
    let v = TableSchema::new(vec![
        ColumnDef::new("k", SqlType::Integer, true),
        ColumnDef::new("u_id", SqlType::BigInt, true),
    ]);
    #[rustfmt::skip]
    db.add("v", v, &[&[Some("1"), Some("10")], &[Some("-1"), Some("12")], &[None, Some("99")]]);
    db
}

// ------------------------------------------------------------------ planned seeds

/// What the planner made of the seed statements.
#[derive(Default)]
struct Planned {
    /// (name, encoded fragment).
    fragments: Vec<(String, Vec<u8>)>,
    /// (name, a stage's plan bytes).
    plans: Vec<(String, Vec<u8>)>,
    /// (name, an UPDATE or DELETE expression).
    exprs: Vec<(String, Vec<u8>)>,
    /// The task requests of the UPDATE and DELETE.
    writes: Vec<(String, Request)>,
}

const QUERIES: &[(&str, &str)] = &[
    ("join2", "SELECT t.s, u.name FROM t JOIN u ON t.id = u.t_id WHERE t.a < 10"),
    ("join3", "SELECT count(*) FROM t, u, v WHERE t.id = u.t_id AND u.id = v.u_id AND v.k > 0"),
    ("outer", "SELECT t.id, u.name FROM t LEFT JOIN u ON t.id = u.t_id ORDER BY 1, 2"),
    ("agg", "SELECT s, count(*), sum(x), avg(a), min(d), max(n), count(DISTINCT c) FROM t GROUP BY s HAVING count(*) > 1"),
    ("sort", "SELECT id, vc, ts FROM t WHERE a > 3 AND s LIKE 'x%' ORDER BY id DESC LIMIT 5"),
    ("distinct", "SELECT DISTINCT a % 3, -x * 2, r + sm FROM t WHERE f IS NOT NULL OR x BETWEEN 1 AND 2"),
    ("in_subquery", "SELECT id FROM t WHERE id IN (SELECT t_id FROM u WHERE name <> 'b')"),
    ("not_exists", "SELECT name FROM u WHERE NOT EXISTS (SELECT 1 FROM v WHERE v.u_id = u.id)"),
    ("scalar_subquery", "SELECT id, n FROM t WHERE x > (SELECT avg(x) FROM t)"),
    ("union", "SELECT a FROM t UNION SELECT k FROM v"),
    ("window", "SELECT id, row_number() OVER (PARTITION BY s ORDER BY id), sum(a) OVER () FROM t"),
    ("dates", "SELECT d + INTERVAL '1 month', ts - INTERVAL '1 hour', extract(year FROM d) FROM t WHERE ts > TIMESTAMP '2000-01-01 00:00:00'"),
];

const WRITES: &[(&str, &str)] = &[
    ("update", "UPDATE t SET a = a * 2 + sm, s = upper(s) || vc, n = n / 3, ts = ts + INTERVAL '1 day' WHERE d < DATE '2024-01-01' AND f AND c LIKE 'a%' AND r > 0.5"),
    ("delete", "DELETE FROM t WHERE x IS NULL OR (n BETWEEN 1 AND 100 AND id % 2 = 0)"),
];

fn plan_seeds(db: &Db) -> Planned {
    let planner = Planner::new().expect("a planner");
    let opts = DistOptions {
        nodes: 2,
        tstores_per_node: 2,
        ..DistOptions::default()
    };
    let mut out = Planned::default();
    for (name, sql) in QUERIES {
        let Plan::Query(q) = planner
            .plan_sql(sql, db)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .remove(0)
        else {
            panic!("{sql}: not a query");
        };
        // Scalar subqueries: their own plans, and NULL in their place.
        let subs = scalar_subqueries(&q.plan);
        let values: Vec<ScalarValue> = subs
            .iter()
            .map(|s| ScalarValue::try_from(s.schema().field(0).data_type()).expect("NULL"))
            .collect();
        let plan = substitute_scalar_subqueries(q.plan.clone(), &subs, &values).expect("subst");
        let mut dists = Vec::new();
        for s in &subs {
            dists.push(planner.distribute(s, &opts).expect("distribute a subquery"));
        }
        dists.push(
            planner
                .distribute(&plan, &opts)
                .unwrap_or_else(|e| panic!("{sql}: {e}")),
        );
        for (i, dist) in dists.iter().enumerate() {
            let name = if i + 1 == dists.len() {
                name.to_string()
            } else {
                format!("{name}_sub{i}")
            };
            if !dist.primary_only() {
                let f = dist.fragment(30_000).expect("a fragment");
                for s in &f.stages {
                    out.plans
                        .push((format!("{name}_stage{}", s.id), s.plan.clone()));
                }
                out.fragments
                    .push((name.clone(), f.encode().expect("encode a fragment")));
            }
            for s in dist.stages.iter().filter(|s| s.place == Place::Primary) {
                let bytes = codec::plan_to_bytes(s.plan.clone()).expect("encode a plan");
                out.plans.push((format!("{name}_primary{}", s.id), bytes));
            }
        }
    }
    for (name, sql) in WRITES {
        let (table, assignments, filter) = match planner
            .plan_sql(sql, db)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .remove(0)
        {
            Plan::Update {
                table,
                assignments,
                filter,
                schema,
            } => {
                let (a, f) = smrdb_planner::dml::write_exprs(
                    planner.frontend(),
                    &schema,
                    &assignments,
                    filter.as_ref(),
                )
                .expect("write expressions");
                (table, a, f)
            }
            Plan::Delete {
                table,
                filter,
                schema,
            } => {
                let (a, f) = smrdb_planner::dml::write_exprs(
                    planner.frontend(),
                    &schema,
                    &[],
                    filter.as_ref(),
                )
                .expect("write expressions");
                (table, a, f)
            }
            other => panic!("{sql}: {other:?}"),
        };
        for (i, (_, e)) in assignments.iter().enumerate() {
            out.exprs.push((format!("{name}_set{i}"), e.clone()));
        }
        if let Some(f) = &filter {
            out.exprs.push((format!("{name}_where"), f.clone()));
        }
        let req = if assignments.is_empty() {
            Request::Delete { table, filter }
        } else {
            Request::Update {
                table,
                assignments,
                filter,
                dry_run: true,
            }
        };
        out.writes.push((name.to_string(), req));
    }
    out
}

// ------------------------------------------------------------------ targets

/// Removes every seed but the `regress_*` ones.
fn clear(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("corpus dir").flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("regress_") {
            std::fs::remove_file(e.path()).expect("remove a stale seed");
        }
    }
}

fn task_msg_seeds(dir: &Path, db: &Db, planned: &Planned) {
    let (schema, batches, stats) = &db.tables["t"];
    let ipc = encode_batches(batches).expect("encode");
    let mut bodies: Vec<(String, Body)> = vec![
        (
            "create".into(),
            Body::Request(Request::CreateTable {
                name: "t".into(),
                schema: schema.clone(),
            }),
        ),
        (
            "drop".into(),
            Body::Request(Request::DropTable { name: "t".into() }),
        ),
        (
            "insert".into(),
            Body::Request(Request::Insert {
                table: "t".into(),
                ipc: ipc.clone(),
            }),
        ),
        ("stats".into(), Body::Request(Request::Stats)),
        ("last_stmt".into(), Body::Request(Request::LastStmt)),
        (
            "stmt_insert".into(),
            Body::Request(Request::Stmt {
                id: 7,
                write: StmtWrite::Insert {
                    table: "t".into(),
                    ipc: ipc.clone(),
                },
            }),
        ),
        ("ack".into(), Body::Reply(Reply::Ack { count: 3 })),
        (
            "error".into(),
            Body::Reply(Reply::Error {
                sqlstate: "42P01".into(),
                message: "relation \"t\" does not exist".into(),
                echo: false,
            }),
        ),
        (
            "error_echo".into(),
            Body::Reply(Reply::Error {
                sqlstate: "57014".into(),
                message: "the query was aborted by tstore 1 (see its error)".into(),
                echo: true,
            }),
        ),
        (
            "done".into(),
            Body::Reply(Reply::Done {
                stages: vec![
                    StageReport {
                        stage: 0,
                        operators: vec![(6, 1200), (3, 800)],
                        sent: (3, 640, 1),
                    },
                    StageReport {
                        stage: 2,
                        operators: vec![(1, 50)],
                        sent: (1, 128, 1),
                    },
                ],
            }),
        ),
        (
            "reply_stats".into(),
            Body::Reply(Reply::Stats {
                core: Some(1),
                tables: vec![SliceStats {
                    name: "t".into(),
                    stats: stats.clone(),
                }],
                router: vec![PeerStats {
                    node: 1,
                    refused: 2,
                    bytes_written: 4096,
                    messages_sent: 3,
                    ..PeerStats::default()
                }],
            }),
        ),
    ];
    for (name, req) in &planned.writes {
        bodies.push((name.clone(), Body::Request(req.clone())));
        let write = match req.clone() {
            Request::Update {
                table,
                assignments,
                filter,
                ..
            } => StmtWrite::Update {
                table,
                assignments,
                filter,
            },
            Request::Delete { table, filter } => StmtWrite::Delete { table, filter },
            other => panic!("{other:?}"),
        };
        bodies.push((
            format!("stmt_{name}"),
            Body::Request(Request::Stmt { id: 8, write }),
        ));
    }
    for (name, f) in &planned.fragments {
        bodies.push((
            format!("stages_{name}"),
            Body::Request(Request::Stages {
                fragment: f.clone(),
            }),
        ));
    }
    let prefix = |sel: u8| {
        let mut p = TASK.to_le_bytes().to_vec();
        p.push(sel);
        p
    };
    for (name, body) in bodies {
        let mut b = prefix(0);
        b.extend_from_slice(&proto::encode(TASK, body).expect("encode"));
        write(dir, &format!("env_{name}"), &b);
    }
    // Exchange chunks as a stage's output leaves a Tstore: the IPC stream
    // (`exchange::encode_chunk` writes the same stream into the arena) and the trailer.
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let two = encode_batches(&[batches[0].slice(0, 2), batches[0].slice(2, 3)]).expect("encode");
    for (name, ipc, flags, exchange, rows) in [
        ("chunk", &ipc[..], 0u16, 0u16, rows),
        ("chunk_last", &ipc[..], CHUNK_LAST, 2, rows),
        ("chunk_two_batches", &two[..], 0, 1, 5),
        ("chunk_rows_differ", &ipc[..], 0, 0, rows + 1),
        ("chunk_empty_last", &[][..], CHUNK_LAST, 1, 0),
        ("chunk_abort", &[][..], CHUNK_ABORT | CHUNK_LAST, 0, 0),
    ] {
        let mut b = prefix(0x80);
        b.extend_from_slice(ipc);
        b.extend_from_slice(
            &ChunkTrailer {
                flags,
                exchange,
                rows,
            }
            .encode(),
        );
        write(dir, &name.to_string(), &b);
    }
}

fn fragment_seeds(dir: &Path, planned: &Planned) {
    let seed = |sel: u8, bytes: &[u8]| [&[sel][..], bytes].concat();
    for (i, (name, f)) in planned.fragments.iter().enumerate() {
        // Alternately decoded with and without task inputs.
        let sel = if i % 2 == 0 { 0x80 } else { 0 };
        write(dir, &format!("frag_{name}"), &seed(sel, f));
    }
    for (i, (name, p)) in planned.plans.iter().enumerate() {
        let sel = if i % 2 == 0 { 0x81 } else { 1 };
        write(dir, &format!("plan_{name}"), &seed(sel, p));
    }
    for (name, e) in &planned.exprs {
        write(dir, &format!("expr_{name}"), &seed(2, e));
    }
}

/// `fuzz/sql_catalog.sql`: every CREATE TABLE of `tests/slt/*.slt` (statements found
/// as `fuzz/run.sh` finds the seed statements), one per line.
fn sql_catalog(root: &Path) -> String {
    let mut files: Vec<_> = std::fs::read_dir(root.join("tests/slt"))
        .expect("tests/slt")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    let mut out = String::from(
        "-- Tables the sql fuzz target's catalog knows: every CREATE TABLE of tests/slt/*.slt (the\n\
         -- first one of each name that plans wins; the invalid ones are skipped), so the seed\n\
         -- statements taken from the same corpus bind. One statement per line. Written by\n\
         -- `cd fuzz && cargo run --example gen_corpus`.\n",
    );
    for f in files {
        let text = std::fs::read_to_string(&f).expect("an slt file");
        let mut stmt: Option<Vec<&str>> = None;
        let mut flush = |stmt: &mut Option<Vec<&str>>| {
            if let Some(lines) = stmt.take() {
                let s = lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
                let s = s.trim().trim_end_matches(';').trim_end();
                if s.to_ascii_uppercase().starts_with("CREATE TABLE") {
                    out.push_str(s);
                    out.push('\n');
                }
            }
        };
        for line in text.lines() {
            let record = line
                .strip_prefix("statement")
                .or_else(|| line.strip_prefix("query"))
                .is_some_and(|r| r.is_empty() || r.starts_with(' '));
            if record {
                flush(&mut stmt);
                stmt = Some(Vec::new());
            } else if let Some(lines) = &mut stmt {
                if line.starts_with("----") || line.trim().is_empty() {
                    flush(&mut stmt);
                } else {
                    lines.push(line);
                }
            }
        }
        flush(&mut stmt);
    }
    out
}

fn main() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let catalog = sql_catalog(fuzz.parent().expect("the repository"));
    std::fs::write(fuzz.join("sql_catalog.sql"), &catalog).expect("write the catalog");
    println!(
        "{}: {} tables",
        fuzz.join("sql_catalog.sql").display(),
        catalog.lines().filter(|l| !l.starts_with("--")).count()
    );
    let db = db();
    let planned = plan_seeds(&db);
    let root = fuzz.join("corpus");
    for target in ["header", "task_msg", "fragment"] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        clear(&dir);
        match target {
            "header" => header_seeds(&dir),
            "task_msg" => task_msg_seeds(&dir, &db, &planned),
            _ => fragment_seeds(&dir, &planned),
        }
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        println!("{}: {n} seeds", dir.display());
    }
}
