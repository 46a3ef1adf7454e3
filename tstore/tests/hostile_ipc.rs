//! Arrow IPC bytes from a peer (join-table chunks, query results) are decoded by
//! `decode_batches`: a malformed stream must be an error, never a panic that takes the
//! Tstore (or the primary's statement) down. arrow-ipc's reader panics on some, e.g. a
//! buffer whose length in the metadata runs past the message body (found by the
//! `task_msg` fuzz target); `decode_batches` turns that into `Error::Corrupt`.

use smrdb_tstore::{
    decode_batches, encode_batches, ColumnDef, DataType, Error, Slice, TableSchema, Value,
};

fn stream() -> Vec<u8> {
    let schema = TableSchema::new(vec![
        ColumnDef::new("id", DataType::BigInt, false),
        ColumnDef::new("s", DataType::Text, true),
        ColumnDef::new("x", DataType::Double, true),
    ]);
    let mut slice = Slice::new(schema).unwrap();
    let rows: Vec<Vec<Value>> = (0..5)
        .map(|i| {
            vec![
                Value::BigInt(i),
                Value::Text(format!("row {i}")),
                if i % 2 == 0 {
                    Value::Null
                } else {
                    Value::Double(i as f64)
                },
            ]
        })
        .collect();
    slice.insert(&rows).unwrap();
    let batches: Vec<_> = slice.batches().cloned().collect();
    encode_batches(&batches).unwrap()
}

#[test]
fn every_single_byte_corruption_is_an_error_or_a_valid_stream() {
    // Expect: for every byte of a valid stream set to each of a few values, decoding
    // returns (Ok for the corruptions arrow cannot see, Corrupt otherwise) and never
    // panics; at least some corruptions are seen.
    let good = stream();
    assert_eq!(
        decode_batches(&good)
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum::<usize>(),
        5
    );
    let mut errors = 0;
    for i in 0..good.len() {
        for v in [
            0x00u8,
            0x01,
            0x40,
            0x7f,
            0x80,
            0xff,
            good[i].wrapping_add(1),
        ] {
            let mut bad = good.clone();
            bad[i] = v;
            match decode_batches(&bad) {
                Ok(_) => {}
                Err(Error::Corrupt(_)) => errors += 1,
                Err(e) => panic!("byte {i} = {v:#x}: not a Corrupt error: {e}"),
            }
        }
    }
    assert!(errors > 0);
}

#[test]
fn truncations_are_errors() {
    // Expect: every proper prefix of a stream is an error or decodes to fewer rows.
    let good = stream();
    for cut in 1..good.len() {
        if let Ok(bs) = decode_batches(&good[..cut]) {
            assert!(bs.iter().map(|b| b.num_rows()).sum::<usize>() <= 5);
        }
    }
}
