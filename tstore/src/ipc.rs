//! Arrow IPC helpers for shipping batches (replies, log records, checkpoints).

use arrow_array::RecordBatch;

use crate::error::{Error, Result};

/// Encodes batches (of one schema) as one Arrow IPC stream; no batches is no bytes.
///
/// # Errors
/// Arrow's writer errors.
pub fn encode_batches(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut w = arrow_ipc::writer::StreamWriter::try_new(Vec::new(), &first.schema())?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    Ok(w.into_inner()?)
}

/// Decodes an Arrow IPC stream produced by [`encode_batches`].
///
/// The bytes may come from a peer: a malformed stream is an [`Error::Corrupt`], also
/// when arrow's reader panics on it (it does on some, e.g. a buffer whose length in
/// the metadata runs past the message body). The messages' framing is checked against
/// the bytes first: arrow's reader allocates a message's body at the length its
/// metadata claims before reading it, so a damaged length would ask for up to
/// terabytes.
///
/// # Errors
/// As above.
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    check_framing(bytes)?;
    std::panic::catch_unwind(|| {
        let r = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| Error::Corrupt(format!("bad IPC stream: {e}")))?;
        r.map(|b| b.map_err(|e| Error::Corrupt(format!("bad IPC batch: {e}"))))
            .collect()
    })
    .unwrap_or_else(|p| {
        Err(Error::Corrupt(format!(
            "bad IPC stream: {}",
            panic_text(&*p)
        )))
    })
}

/// Walks an IPC stream's messages (`[0xFFFFFFFF] <metadata length: i32 LE>
/// <flatbuffer Message> <body of Message.bodyLength bytes>`, up to an end marker or
/// the end of the bytes) and fails unless every metadata and body lies within `bytes`.
fn check_framing(bytes: &[u8]) -> Result<()> {
    let bad = |what: String| Error::Corrupt(format!("bad IPC stream: {what}"));
    let word = |at: usize| -> Result<u32> {
        bytes
            .get(at..at + 4)
            .map(|w| u32::from_le_bytes(w.try_into().expect("4 bytes")))
            .ok_or_else(|| bad(format!("truncated message header at byte {at}")))
    };
    let mut at = 0usize;
    while at < bytes.len() {
        let mut len = word(at)?;
        at += 4;
        if len == 0xFFFF_FFFF {
            len = word(at)?;
            at += 4;
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(
            i32::try_from(len)
                .map_err(|_| bad(format!("negative metadata length at byte {}", at - 4)))?,
        )
        .expect("a positive i32 fits usize");
        let meta = bytes.get(at..at.saturating_add(len)).ok_or_else(|| {
            bad(format!(
                "metadata of {len} bytes at byte {at} runs past the {} bytes",
                bytes.len()
            ))
        })?;
        let msg = arrow_ipc::root_as_message(meta)
            .map_err(|e| bad(format!("bad message metadata at byte {at}: {e}")))?;
        at += len;
        let body = usize::try_from(msg.bodyLength())
            .map_err(|_| bad(format!("negative body length at byte {at}")))?;
        if body > bytes.len() - at {
            return Err(bad(format!(
                "a body of {body} bytes at byte {at} runs past the {} bytes",
                bytes.len()
            )));
        }
        at += body;
    }
    Ok(())
}

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("the decoder panicked")
}
