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
/// the metadata runs past the message body).
///
/// # Errors
/// As above.
pub fn decode_batches(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
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

/// The message of a caught panic.
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<&str>()
        .copied()
        .or_else(|| p.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("the decoder panicked")
}
