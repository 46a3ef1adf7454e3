//! Fuzz target `task_msg`: what a node does with the bytes of a task-protocol object or
//! a join-table chunk that arrived from a peer (`node/src/proto.rs`, the receiving half
//! of `node/src/worker.rs`).
//!
//! Input layout:
//!
//! ```text
//! bytes 0..8  the router header's query id (the task id the envelope must carry), LE
//! byte 8      bits 0-2: join tables of the receiving query (0..7);
//!             bit 7: also decode the chunk's Arrow IPC stream, both ways the worker
//!             does (copied: `decode_batches`; in place: a `StreamDecoder` over the
//!             chunk's bytes) and compare its rows with the trailer's
//! rest        the object's bytes
//! ```
//!
//! The rest is decoded as an envelope (`proto::decode`) and as a join-table chunk
//! (`JoinTrailer::split`). Oracles: no panic; an accepted envelope re-encodes, and
//! decoding that gives the same bytes again; an accepted trailer names a join table of
//! the query and round-trips through `JoinTrailer::encode`.
#![no_main]

use std::panic::AssertUnwindSafe;

use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use libfuzzer_sys::fuzz_target;
use smrdb_node::proto::{self, JoinTrailer, JOIN_TRAILER};

/// The worker's in-place decoding of a chunk (`decode_in_place` in
/// `node/src/worker.rs`, which catches arrow's panics the same way), over a copy.
fn decode_in_place(ipc: &[u8]) -> Result<usize, String> {
    let mut buf = Buffer::from_vec(ipc.to_vec());
    std::panic::catch_unwind(AssertUnwindSafe(move || {
        let mut dec = StreamDecoder::new();
        let mut rows = 0;
        while !buf.is_empty() {
            if let Some(b) = dec.decode(&mut buf).map_err(|e| e.to_string())? {
                rows += b.num_rows();
            }
        }
        dec.finish().map_err(|e| e.to_string())?;
        Ok(rows)
    }))
    .unwrap_or_else(|_| Err("the decoder panicked".into()))
}

fuzz_target!(
    init: {
        // libfuzzer-sys's panic hook aborts on every panic, even one the code under
        // test catches. The node catches arrow's IPC decoder's panics (a malformed
        // stream is an error), so only a panic that escapes must count: it still
        // aborts, in libfuzzer-sys's own catch_unwind around each input. Panics inside
        // arrow are not printed (the caught ones would flood the log).
        std::panic::set_hook(Box::new(|info| {
            if !info.location().is_some_and(|l| l.file().contains("/arrow-")) {
                eprintln!("{info}\n{}", std::backtrace::Backtrace::force_capture());
            }
        }));
    },
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

    let join_tables = usize::from(sel & 7);
    if let Ok((ipc, tr)) = JoinTrailer::split(rest, join_tables) {
        assert_eq!(ipc.len() + JOIN_TRAILER, rest.len());
        assert!(usize::from(tr.jt) < join_tables);
        let back = [ipc, &tr.encode()[..]].concat();
        let (_, tr2) = JoinTrailer::split(&back, join_tables).expect("a re-encoded trailer");
        assert_eq!(tr, tr2);
        if sel & 0x80 != 0 {
            let copied = smrdb_tstore::decode_batches(ipc)
                .map(|bs| bs.iter().map(|b| b.num_rows()).sum::<usize>());
            let in_place = if ipc.is_empty() {
                Ok(0)
            } else {
                decode_in_place(ipc)
            };
            // The worker then compares the rows with the trailer's (a mismatch fails the
            // task); both decoders must agree on what a valid stream holds.
            if let (Ok(a), Ok(b)) = (&copied, &in_place) {
                assert_eq!(a, b, "the two IPC decoders disagree");
            }
        }
    }
}
