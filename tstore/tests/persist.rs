//! Persistence: log replay, checkpoints, torn tails, corruption.
mod common;

use std::fs::OpenOptions;

use common::temp_dir;
use smrdb_tstore::*;

fn schema() -> TableSchema {
    TableSchema::new(vec![
        ColumnDef::new("id", DataType::BigInt, false),
        ColumnDef::new("name", DataType::Text, true),
        ColumnDef::new("score", DataType::Double, true),
        ColumnDef::new("day", DataType::Date, true),
    ])
}

fn row(i: i64) -> Vec<Value> {
    vec![
        Value::BigInt(i),
        if i % 3 == 0 {
            Value::Null
        } else {
            Value::Text(format!("n{i}"))
        },
        Value::Double(i as f64 / 4.0),
        Value::Date(18000 + i as i32),
    ]
}

fn snapshot(s: &Store) -> Vec<(String, Vec<Vec<Value>>, Option<u64>)> {
    s.table_names()
        .into_iter()
        .map(|t| {
            let rows = s.table(&t).unwrap().rows().unwrap();
            let m = s.meta(&t, "rr");
            (t, rows, m)
        })
        .collect()
}

fn workload(s: &mut Store) {
    s.create_table("a", schema()).unwrap();
    s.create_table("b", schema()).unwrap();
    s.insert("a", (0..20).map(row).collect()).unwrap();
    s.insert("b", (100..105).map(row).collect()).unwrap();
    s.update(
        "a",
        vec![(1, Expr::lit("upd"))],
        Some(Expr::col(0).lt(Expr::lit(5i64))),
    )
    .unwrap();
    s.delete("a", Some(Expr::col(0).gt(Expr::lit(15i64))))
        .unwrap();
    s.set_meta("a", "rr", 42).unwrap();
    s.create_table("gone", schema()).unwrap();
    s.insert("gone", vec![row(1)]).unwrap();
    s.drop_table("gone").unwrap();
}

#[test]
fn reopen_replays_log() {
    let dir = temp_dir("replay");
    let snap = {
        let mut s = Store::open_with_chunk_rows(&dir, 7).unwrap();
        workload(&mut s);
        // failed writes are not logged
        assert!(s
            .update(
                "a",
                vec![(0, Expr::lit(1i64).binary(BinaryOp::Div, Expr::lit(0i64)))],
                None
            )
            .is_err());
        assert!(matches!(
            s.create_table("a", schema()),
            Err(Error::TableExists(_))
        ));
        assert!(matches!(
            s.insert("zzz", vec![row(1)]),
            Err(Error::UnknownTable(_))
        ));
        snapshot(&s)
    };
    assert_eq!(snap[0].1.len(), 16);
    assert_eq!(snap[0].1[0][1], Value::Text("upd".into()));
    assert_eq!(snap[0].2, Some(42));
    assert_eq!(snap.len(), 2);
    let s = Store::open_with_chunk_rows(&dir, 7).unwrap();
    assert_eq!(snapshot(&s), snap);
    // execute through the store
    let f = Fragment {
        table: "b".into(),
        filter: Some(Expr::col(0).gt(Expr::lit(102i64))),
        projection: vec![Expr::col(0)],
        partial_agg: None,
    };
    let got = smrdb_tstore::slice::batches_to_rows(&s.execute(&f).unwrap()).unwrap();
    assert_eq!(
        got,
        vec![vec![Value::BigInt(103)], vec![Value::BigInt(104)]]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoint_then_more_writes() {
    let dir = temp_dir("ckpt");
    let snap = {
        let mut s = Store::open_with_chunk_rows(&dir, 7).unwrap();
        workload(&mut s);
        s.checkpoint().unwrap();
        let wal_len = std::fs::metadata(dir.join("wal.log")).unwrap().len();
        assert_eq!(wal_len, 20);
        s.insert("b", (200..230).map(row).collect()).unwrap();
        s.set_meta("b", "rr", 7).unwrap();
        s.delete("a", Some(Expr::col(0).eq(Expr::lit(3i64))))
            .unwrap();
        snapshot(&s)
    };
    {
        let mut s = Store::open_with_chunk_rows(&dir, 7).unwrap();
        assert_eq!(snapshot(&s), snap);
        assert_eq!(s.meta("b", "rr"), Some(7));
        // second checkpoint, then drop a table, reopen
        s.checkpoint().unwrap();
        s.drop_table("a").unwrap();
    }
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.table_names(), vec!["b".to_string()]);
    assert_eq!(s.table("b").unwrap().rows().unwrap(), snap[1].1);
    // only the latest checkpoint's table files remain
    let arrow_files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".arrow")
        })
        .count();
    assert_eq!(arrow_files, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn stale_log_after_checkpoint_crash_is_ignored() {
    // Simulate a crash after the manifest was written but before the log was reset:
    // put the pre-checkpoint log back. Its generation is older, so it must not replay.
    let dir = temp_dir("stale");
    let snap = {
        let mut s = Store::open(&dir).unwrap();
        workload(&mut s);
        let old_log = std::fs::read(dir.join("wal.log")).unwrap();
        s.checkpoint().unwrap();
        let snap = snapshot(&s);
        drop(s);
        std::fs::write(dir.join("wal.log"), old_log).unwrap();
        snap
    };
    let mut s = Store::open(&dir).unwrap();
    assert_eq!(snapshot(&s), snap);
    s.insert("b", vec![row(7)]).unwrap();
    drop(s);
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.table("b").unwrap().row_count(), 6);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn torn_tail_is_ignored_and_later_writes_survive() {
    let dir = temp_dir("torn");
    let full = {
        let mut s = Store::open(&dir).unwrap();
        workload(&mut s);
        snapshot(&s)
    };
    let before_last = {
        // the state before the final record (drop_table "gone")
        let mut s = Store::in_memory();
        workload(&mut s);
        let mut snap = snapshot(&s);
        let mut t = Store::in_memory();
        t.create_table("gone", schema()).unwrap();
        t.insert("gone", vec![row(1)]).unwrap();
        snap.push((
            "gone".into(),
            t.table("gone").unwrap().rows().unwrap(),
            None,
        ));
        snap.sort_by(|a, b| a.0.cmp(&b.0));
        snap
    };
    let log = dir.join("wal.log");
    let len = std::fs::metadata(&log).unwrap().len();
    for cut in [1u64, 3, 8] {
        let d2 = temp_dir(&format!("torn{cut}"));
        std::fs::create_dir_all(&d2).unwrap();
        std::fs::copy(&log, d2.join("wal.log")).unwrap();
        OpenOptions::new()
            .write(true)
            .open(d2.join("wal.log"))
            .unwrap()
            .set_len(len - cut)
            .unwrap();
        let mut s = Store::open(&d2).unwrap();
        assert_eq!(snapshot(&s), before_last, "cut {cut}");
        // new writes after a torn tail are durable
        s.drop_table("gone").unwrap();
        s.insert("b", vec![row(9)]).unwrap();
        drop(s);
        let s = Store::open(&d2).unwrap();
        let mut expect = full.clone();
        expect[1].1.push(row(9));
        assert_eq!(snapshot(&s), expect, "cut {cut}");
        let _ = std::fs::remove_dir_all(&d2);
    }
    // zero-filled tail (e.g. preallocated block) is also treated as torn
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, &[0u8; 64]).unwrap();
    drop(f);
    assert_eq!(snapshot(&Store::open(&dir).unwrap()), full);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn corrupted_middle_record_is_an_error() {
    let dir = temp_dir("corrupt");
    {
        let mut s = Store::open(&dir).unwrap();
        workload(&mut s);
    }
    let log = dir.join("wal.log");
    let mut bytes = std::fs::read(&log).unwrap();
    // flip a byte in the payload of the 3rd record
    let mut off = 20usize;
    for _ in 0..2 {
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
    }
    bytes[off + 10] ^= 0x5a;
    std::fs::write(&log, &bytes).unwrap();
    match Store::open(&dir) {
        Err(Error::Corrupt(m)) => assert!(m.contains("checksum"), "{m}"),
        other => panic!("expected corruption error, got {other:?}"),
    }
    // damaged header
    bytes[0] = b'X';
    std::fs::write(&log, &bytes).unwrap();
    assert!(matches!(Store::open(&dir), Err(Error::Corrupt(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn volatile_store_works_without_disk() {
    let mut s = Store::in_memory_with_chunk_rows(4);
    workload(&mut s);
    assert!(s.dir().is_none());
    s.checkpoint().unwrap();
    assert_eq!(s.table("a").unwrap().row_count(), 16);
    assert_eq!(s.meta("a", "rr"), Some(42));
    assert_eq!(s.meta("a", "other"), None);
}

#[test]
fn statement_writes_apply_once_and_their_ids_survive_reopen_and_checkpoint() {
    let dir = temp_dir("stmt");
    {
        let mut s = Store::open_with_chunk_rows(&dir, 7).unwrap();
        assert_eq!(s.last_stmt(), 0);
        s.create_table("a", schema()).unwrap();
        let ins = |ids: std::ops::Range<i64>| StmtWrite::Insert {
            table: "a".into(),
            rows: ids.map(row).collect(),
        };
        assert_eq!(s.write_stmt(3, ins(0..4)).unwrap(), Some(4));
        // Re-sent after a crash: skipped, also for an older id.
        assert_eq!(s.write_stmt(3, ins(0..4)).unwrap(), None);
        assert_eq!(s.write_stmt(2, ins(10..12)).unwrap(), None);
        assert_eq!(s.last_stmt(), 3);
        // A failed statement write changes nothing and records no id.
        let bad = StmtWrite::Update {
            table: "a".into(),
            assignments: vec![(0, Expr::lit(1i64).binary(BinaryOp::Div, Expr::lit(0i64)))],
            filter: None,
        };
        assert!(s.write_stmt(5, bad).is_err());
        assert_eq!(s.last_stmt(), 3);
        let upd = StmtWrite::Update {
            table: "a".into(),
            assignments: vec![(1, Expr::lit("u"))],
            filter: Some(Expr::col(0).lt(Expr::lit(2i64))),
        };
        assert_eq!(s.write_stmt(5, upd).unwrap(), Some(2));
        // Plain writes do not move the statement id.
        s.insert("a", vec![row(50)]).unwrap();
        assert_eq!(s.last_stmt(), 5);
    }
    {
        let mut s = Store::open(&dir).unwrap();
        assert_eq!(s.last_stmt(), 5, "replayed from the log");
        assert_eq!(s.table("a").unwrap().row_count(), 5);
        s.checkpoint().unwrap();
        let del = StmtWrite::Delete {
            table: "a".into(),
            filter: Some(Expr::col(0).eq(Expr::lit(50i64))),
        };
        assert_eq!(s.write_stmt(6, del.clone()).unwrap(), Some(1));
        s.checkpoint().unwrap();
        assert_eq!(s.write_stmt(6, del).unwrap(), None);
    }
    let s = Store::open(&dir).unwrap();
    assert_eq!(s.last_stmt(), 6, "kept by the checkpoint's manifest");
    assert_eq!(s.table("a").unwrap().row_count(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
