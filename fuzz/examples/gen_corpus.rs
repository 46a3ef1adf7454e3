//! Writes the checked-in seed corpora of the `header` and `task_msg` fuzz targets
//! (`fuzz/corpus/<target>/`): valid encodings made with the real encoders, in each
//! target's input layout (see the top of `fuzz_targets/*.rs`). The `sql` target's seeds
//! are the statements of `tests/slt/*.slt`, extracted by `fuzz/run.sh`.
//!
//! Rerun after a wire format changes: `cd fuzz && cargo run --example gen_corpus`.

use std::path::Path;

use smrdb_node::proto::{
    self, Body, JoinTrailer, Reply, Request, TableStats, JOIN_ABORT, JOIN_LAST,
};
use smrdb_planner::{plan_sql, Catalog, Plan, TableSchema};
use smrdb_router::header::{Header, Kind, FLAG_LAST};
use smrdb_router::ring::TxRing;
use smrdb_router::{Addr, PeerStats};
use smrdb_tstore::{encode_batches, ColumnDef, DataType, JoinStats, Slice, Value};

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

struct Cat(Vec<(String, TableSchema)>);

impl Catalog for Cat {
    fn table(&self, name: &str) -> Option<TableSchema> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.clone())
    }
}

fn schemas() -> Vec<(String, TableSchema)> {
    vec![
        (
            "t".into(),
            TableSchema::new(vec![
                ColumnDef::new("id", DataType::BigInt, false),
                ColumnDef::new("a", DataType::Int, true),
                ColumnDef::new("x", DataType::Double, true),
                ColumnDef::new("s", DataType::Text, true),
                ColumnDef::new("d", DataType::Date, true),
                ColumnDef::new("f", DataType::Boolean, true),
            ]),
        ),
        (
            "u".into(),
            TableSchema::new(vec![
                ColumnDef::new("id", DataType::BigInt, false),
                ColumnDef::new("t_id", DataType::BigInt, true),
                ColumnDef::new("name", DataType::Text, true),
            ]),
        ),
        (
            "v".into(),
            TableSchema::new(vec![
                ColumnDef::new("k", DataType::Int, true),
                ColumnDef::new("u_id", DataType::BigInt, true),
            ]),
        ),
    ]
}

fn task_msg_seeds(dir: &Path) {
    let cat = Cat(schemas());
    let t = cat.0[0].1.clone();
    let mut bodies: Vec<(String, Body)> = vec![
        (
            "create".into(),
            Body::Request(Request::CreateTable {
                name: "t".into(),
                schema: t.clone(),
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
                rows: vec![
                    vec![
                        Value::BigInt(1),
                        Value::Int(-5),
                        Value::Double(0.5),
                        Value::Text("x".into()),
                        Value::Date(19000),
                        Value::Bool(true),
                    ],
                    vec![
                        Value::BigInt(2),
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                        Value::Null,
                    ],
                ],
            }),
        ),
        ("stats".into(), Body::Request(Request::Stats)),
        ("ack".into(), Body::Reply(Reply::Ack { count: 3 })),
        (
            "error".into(),
            Body::Reply(Reply::Error {
                sqlstate: "42P01".into(),
                message: "no such table".into(),
            }),
        ),
        (
            "reply_stats".into(),
            Body::Reply(Reply::Stats {
                core: Some(1),
                tables: vec![TableStats {
                    name: "t".into(),
                    rows: 10,
                    bytes: 800,
                }],
                router: vec![PeerStats {
                    node: 1,
                    refused: 2,
                    ..PeerStats::default()
                }],
            }),
        ),
    ];
    let sqls = [
        ("query_filter", "SELECT id, s FROM t WHERE a > 3 AND s LIKE 'x%' ORDER BY id LIMIT 5"),
        ("query_agg", "SELECT s, count(*), sum(x), avg(a), min(d), max(id) FROM t GROUP BY s HAVING count(*) > 1"),
        ("query_distinct", "SELECT DISTINCT a % 3, -x * 2 FROM t WHERE f IS NOT NULL OR x BETWEEN 1 AND 2"),
        ("join2", "SELECT t.s, u.name FROM t JOIN u ON t.id = u.t_id WHERE t.a < 10"),
        ("join3", "SELECT count(*) FROM t, u, v WHERE t.id = u.t_id AND u.id = v.u_id AND v.k > 0"),
        ("update", "UPDATE t SET a = a + 1, s = 'y' WHERE id = 3"),
        ("delete", "DELETE FROM t WHERE d < DATE '2020-01-01'"),
    ];
    for (name, sql) in sqls {
        let plan = plan_sql(sql, &cat)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .remove(0);
        let body = match plan {
            Plan::Query(q) => match q.join {
                Some(spec) => Request::Join {
                    spec,
                    post: q.fragment,
                    timeout_ms: 30_000,
                },
                None => Request::Query {
                    fragment: q.fragment,
                },
            },
            Plan::Update {
                table,
                assignments,
                filter,
            } => Request::Update {
                table,
                assignments,
                filter,
            },
            Plan::Delete { table, filter } => Request::Delete { table, filter },
            other => panic!("{sql}: {other:?}"),
        };
        bodies.push((name.into(), Body::Request(body)));
    }
    let mut slice = Slice::new(t).expect("a slice");
    slice
        .insert(&[
            vec![
                Value::BigInt(1),
                Value::Int(2),
                Value::Double(1.5),
                Value::Text("a".into()),
                Value::Date(1),
                Value::Bool(false),
            ],
            vec![
                Value::BigInt(2),
                Value::Null,
                Value::Double(-0.0),
                Value::Text(String::new()),
                Value::Null,
                Value::Bool(true),
            ],
        ])
        .expect("insert");
    let batches: Vec<_> = slice.batches().cloned().collect();
    let ipc = encode_batches(&batches).expect("encode");
    bodies.push((
        "result".into(),
        Body::Reply(Reply::Result { ipc: ipc.clone() }),
    ));
    bodies.push((
        "reply_join".into(),
        Body::Reply(Reply::Join {
            ipc: ipc.clone(),
            stats: JoinStats {
                built_rows: vec![2, 0],
                received_rows: vec![4, 1],
                ..JoinStats::default()
            },
        }),
    ));
    let prefix = |sel: u8| {
        let mut p = TASK.to_le_bytes().to_vec();
        p.push(sel);
        p
    };
    for (name, body) in bodies {
        let mut b = prefix(0x83);
        b.extend_from_slice(&proto::encode(TASK, body).expect("encode"));
        write(dir, &format!("env_{name}"), &b);
    }
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    for (name, ipc, flags, jt, rows) in [
        ("chunk", &ipc[..], 0u16, 0u16, rows),
        ("chunk_last", &ipc[..], JOIN_LAST, 2, rows),
        ("chunk_empty_last", &[][..], JOIN_LAST, 1, 0),
        ("chunk_abort", &[][..], JOIN_ABORT | JOIN_LAST, 0, 0),
    ] {
        let mut b = prefix(0x83);
        b.extend_from_slice(ipc);
        b.extend_from_slice(&JoinTrailer { flags, jt, rows }.encode());
        write(dir, &format!("join_{name}"), &b);
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, f) in [
        ("header", header_seeds as fn(&Path)),
        ("task_msg", task_msg_seeds),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("corpus dir");
        f(&dir);
        let n = std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0);
        println!("{}: {n} seeds", dir.display());
    }
}
