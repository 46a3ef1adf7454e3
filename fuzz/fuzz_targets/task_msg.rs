//! Fuzz target `task_msg`: what a node does with the bytes of a task-protocol object or
//! an exchange chunk that arrived from a peer (`node/src/proto.rs`; the receiving halves
//! of `node/src/worker.rs` and `node/src/query.rs`).
//!
//! Input layout:
//!
//! ```text
//! bytes 0..8  the router header's query id (the task id the envelope must carry), LE
//! byte 8      bit 7: also decode the chunk's Arrow IPC stream both ways a node does
//!             (copied: `exchange::decode_copied`; in place: a `StreamDecoder` over a
//!             64-byte aligned copy of the chunk, as `exchange::decode_in_place` reads
//!             the ring); other bits unused
//! rest        the object's bytes
//! ```
//!
//! The rest is decoded as an envelope (`proto::decode`, which also validates a `Stages`
//! request's fragment) and as an exchange chunk (`ChunkTrailer::split`). Oracles: no
//! panic in our code, and none escaping arrow's decoder (see `common/panics.rs`); an
//! accepted envelope re-encodes, and decoding that gives the same bytes again; an
//! accepted trailer round-trips through `ChunkTrailer::encode`; the two IPC decoders
//! agree: both fail, or both decode the same valid batches (so the same verdict when
//! the Tstore compares their rows with the trailer's).
#![no_main]

#[path = "common/panics.rs"]
mod panics;

use std::panic::AssertUnwindSafe;

use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use datafusion::arrow::array::Array;
use libfuzzer_sys::fuzz_target;
use smrdb_node::exchange::decode_copied;
use smrdb_node::proto::{self, ChunkTrailer, CHUNK_TRAILER};
use smrdb_tstore::RecordBatch;

/// `exchange::decode_in_place` without a router: the same `StreamDecoder` loop (and
/// the same catch of arrow's panics) over a 64-byte aligned copy, as a chunk lies in
/// the ring.
fn decode_in_place(ipc: &[u8]) -> Result<Vec<RecordBatch>, String> {
    if ipc.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = Buffer::from_slice_ref(ipc);
    std::panic::catch_unwind(AssertUnwindSafe(move || {
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        while !buf.is_empty() {
            if let Some(b) = dec.decode(&mut buf).map_err(|e| e.to_string())? {
                out.push(b);
            }
        }
        dec.finish().map_err(|e| e.to_string())?;
        Ok(out)
    }))
    .unwrap_or_else(|_| Err("the decoder panicked".into()))
}

fuzz_target!(
    init: panics::install(),
    |data: &[u8]| run(data)
);

/// One input: see the layout at the top.
fn run(data: &[u8]) {
    let Some((head, rest)) = data.split_first_chunk::<9>() else {
        return;
    };
    let task = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    let sel = head[8];

    if let Ok(env) = proto::decode(rest, task) {
        assert_eq!(env.task, task);
        let again = proto::encode(env.task, env.body).expect("an accepted envelope encodes");
        let env2 = proto::decode(&again, task).expect("a re-encoded envelope decodes");
        let again2 = proto::encode(env2.task, env2.body).expect("encodes");
        assert_eq!(again, again2, "decode/encode is not stable");
    }

    if let Ok((ipc, tr)) = ChunkTrailer::split(rest) {
        assert_eq!(ipc.len() + CHUNK_TRAILER, rest.len());
        let back = [ipc, &tr.encode()[..]].concat();
        let (ipc2, tr2) = ChunkTrailer::split(&back).expect("a re-encoded trailer");
        assert_eq!((ipc, tr), (ipc2, tr2));
        if sel & 0x80 != 0 {
            let copied = decode_copied(ipc);
            let in_place = decode_in_place(ipc);
            match (&copied, &in_place) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "the two IPC decoders disagree");
                    // What the operators downstream get must be valid Arrow data.
                    for batch in a {
                        for c in batch.columns() {
                            if let Err(e) = c.to_data().validate_full() {
                                panic!("a decoded chunk holds invalid data: {e}");
                            }
                        }
                    }
                }
                (Err(_), Err(_)) => {}
                _ => panic!(
                    "the two IPC decoders disagree: copied {:?}, in place {:?}",
                    copied.map(|b| b.len()),
                    in_place.map(|b| b.len())
                ),
            }
        }
    }
}
