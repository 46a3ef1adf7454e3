//! Exchanges on a node: a stage's output encoded into the router's arena chunk by
//! chunk, arriving chunks decoded (in place in the ring, or copied out) into the
//! consumer's [`ExchangeQueue`], and the poll loop that drives stages on the calling
//! thread.
//!
//! A stage is a DataFusion stream pulled by a future ([`stage_future`]); each batch
//! it yields goes to its [`StageOutput`], which the owner's pump drains into arena
//! chunks ([`encode_chunk`]). A full output (the arena or the rings are full
//! downstream) makes the stage wait: memory between operator and network is
//! bounded.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::reader::StreamDecoder;
use arrow_ipc::writer::StreamWriter;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use smrdb_router::{ChunkRef, OutBuf, RouterError, RouterHandle};

use crate::proto::CHUNK_TRAILER;

/// Room for the IPC schema message and framing in a chunk.
const IPC_SLACK: usize = 8192;
/// Bytes a stage's output may hold before the stage waits for the pump.
pub const OUTPUT_BOUND: usize = 32 << 20;

// ------------------------------------------------------------------ outputs

#[derive(Debug, Default)]
struct OutInner {
    batches: VecDeque<RecordBatch>,
    bytes: usize,
    finished: bool,
    failed: bool,
    waker: Option<Waker>,
}

/// A stage's output on its way to an exchange: batches the stage produced and the
/// pump has not sent yet.
#[derive(Debug, Default)]
pub struct StageOutput {
    inner: Mutex<OutInner>,
}

impl StageOutput {
    /// An empty output.
    pub fn new() -> Arc<StageOutput> {
        Arc::new(StageOutput::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a batch.
    pub fn push(&self, b: RecordBatch) {
        if b.num_rows() == 0 {
            return;
        }
        let mut g = self.lock();
        g.bytes += batch_bytes(&b);
        g.batches.push_back(b);
    }

    /// The stage produced everything.
    pub fn finish(&self) {
        self.lock().finished = true;
    }

    /// The stage failed: what is queued is dropped and consumers get an ABORT.
    pub fn fail(&self) {
        let mut g = self.lock();
        g.failed = true;
        g.finished = true;
        g.batches.clear();
        g.bytes = 0;
    }

    /// Ready while the output holds less than [`OUTPUT_BOUND`].
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut g = self.lock();
        if g.bytes < OUTPUT_BOUND || g.failed {
            Poll::Ready(())
        } else {
            g.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// (finished, failed, anything queued).
    pub fn state(&self) -> (bool, bool, bool) {
        let g = self.lock();
        (g.finished, g.failed, !g.batches.is_empty())
    }

    /// Runs `f` on the queued batches (the pump encodes from the front and removes
    /// what it sent), then wakes a stage waiting for room.
    pub fn with_batches<T>(&self, f: impl FnOnce(&mut VecDeque<RecordBatch>) -> T) -> T {
        let mut g = self.lock();
        let r = f(&mut g.batches);
        g.bytes = g.batches.iter().map(batch_bytes).sum();
        if g.bytes < OUTPUT_BOUND {
            if let Some(w) = g.waker.take() {
                w.wake();
            }
        }
        r
    }
}

/// Bytes the rows of `b` occupy (its slice, not the whole underlying buffers).
pub fn batch_bytes(b: &RecordBatch) -> usize {
    b.columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// Pulls a stage's plan (partition 0) into `out`; the error, if any, is returned
/// (and `out` fails, so its consumers get an ABORT).
pub fn stage_future(
    plan: Arc<dyn ExecutionPlan>,
    ctx: Arc<TaskContext>,
    out: Arc<StageOutput>,
) -> Pin<Box<dyn Future<Output = datafusion::common::Result<()>> + Send>> {
    Box::pin(async move {
        let r = async {
            let mut s = plan.execute(0, ctx)?;
            while let Some(b) = s.next().await {
                let b = b?;
                futures::future::poll_fn(|cx| out.poll_room(cx)).await;
                out.push(b);
            }
            Ok(())
        }
        .await;
        match &r {
            Ok(()) => out.finish(),
            Err(_) => out.fail(),
        }
        r
    })
}

// ------------------------------------------------------------------ polling

/// A waker that raises a flag (and the owner's "something to do" flag).
struct Flag {
    me: AtomicBool,
    any: Arc<AtomicBool>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.me.store(true, Ordering::Release);
        self.any.store(true, Ordering::Release);
    }
}

/// A future polled on the owner's thread when woken.
pub struct Polled<T> {
    fut: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    flag: Arc<Flag>,
    waker: Waker,
}

impl<T> Polled<T> {
    /// Wraps `fut`; wakes raise `any`. It is polled at the first [`Polled::poll`].
    pub fn new(fut: Pin<Box<dyn Future<Output = T> + Send>>, any: Arc<AtomicBool>) -> Self {
        let flag = Arc::new(Flag {
            me: AtomicBool::new(true),
            any,
        });
        let waker = Waker::from(flag.clone());
        Polled {
            fut: Some(fut),
            flag,
            waker,
        }
    }

    /// Polls the future if it was woken; its output once, when it completes. A
    /// panic inside is caught and returned as `Err`.
    pub fn poll(&mut self) -> Option<Result<T, String>> {
        if self.fut.is_none() || !self.flag.me.swap(false, Ordering::AcqRel) {
            return None;
        }
        let fut = self.fut.as_mut()?;
        let mut cx = Context::from_waker(&self.waker);
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx))) {
            Ok(Poll::Pending) => None,
            Ok(Poll::Ready(v)) => {
                self.fut = None;
                Some(Ok(v))
            }
            Err(p) => {
                self.fut = None;
                Some(Err(format!(
                    "an operator panicked: {}",
                    smrdb_tstore::ipc::panic_text(&*p)
                )))
            }
        }
    }

    /// True once the future has completed (or panicked).
    pub fn is_done(&self) -> bool {
        self.fut.is_none()
    }
}

// ------------------------------------------------------------------ decoding

/// Keeps a ring chunk alive for as long as Arrow buffers point into it, and counts
/// the bytes held so.
struct HeldChunk {
    _chunk: AssertUnwindSafe<ChunkRef>,
    len: usize,
    held: Arc<AtomicUsize>,
}

impl Drop for HeldChunk {
    fn drop(&mut self) {
        self.held.fetch_sub(self.len, Ordering::AcqRel);
    }
}

fn decode_stream(mut buf: Buffer) -> smrdb_tstore::Result<Vec<RecordBatch>> {
    // arrow's decoder panics on some malformed streams: a peer's bytes must not take
    // the thread down.
    std::panic::catch_unwind(AssertUnwindSafe(move || {
        let mut dec = StreamDecoder::new();
        let mut out = Vec::new();
        while !buf.is_empty() {
            if let Some(b) = dec
                .decode(&mut buf)
                .map_err(|e| smrdb_tstore::Error::Corrupt(format!("bad exchange chunk: {e}")))?
            {
                out.push(b);
            }
        }
        dec.finish()
            .map_err(|e| smrdb_tstore::Error::Corrupt(format!("truncated exchange chunk: {e}")))?;
        Ok(out)
    }))
    .unwrap_or_else(|p| {
        Err(smrdb_tstore::Error::Corrupt(format!(
            "bad exchange chunk: {}",
            smrdb_tstore::ipc::panic_text(&*p)
        )))
    })
}

/// Decodes the IPC stream at the start of `chunk` (`len` bytes) without copying: the
/// batches' buffers point into the chunk, which stays held (and counted in `held`)
/// until they are dropped.
///
/// # Errors
/// A malformed stream.
pub fn decode_in_place(
    chunk: &ChunkRef,
    len: usize,
    held: &Arc<AtomicUsize>,
) -> smrdb_tstore::Result<Vec<RecordBatch>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let bytes = chunk.bytes();
    if len > bytes.len() {
        return Err(smrdb_tstore::Error::Corrupt(
            "IPC length beyond the chunk".into(),
        ));
    }
    let ptr = NonNull::new(bytes.as_ptr() as *mut u8)
        .ok_or_else(|| smrdb_tstore::Error::Corrupt("null chunk".into()))?;
    held.fetch_add(len, Ordering::AcqRel);
    let owner = Arc::new(HeldChunk {
        _chunk: AssertUnwindSafe(chunk.clone()),
        len,
        held: held.clone(),
    });
    // SAFETY: `ptr` is valid for `len` bytes (checked above) for as long as a ChunkRef
    // to the chunk lives: the router does not reuse a chunk's space (nor lets a peer
    // write it) until every ChunkRef is dropped, and the Buffer owns one (HeldChunk).
    // Arrow only reads through it.
    let buf = unsafe { Buffer::from_custom_allocation(ptr, len, owner) };
    decode_stream(buf)
}

/// Decodes a copy of the IPC stream at the start of `bytes`.
///
/// # Errors
/// A malformed stream.
pub fn decode_copied(bytes: &[u8]) -> smrdb_tstore::Result<Vec<RecordBatch>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    decode_stream(Buffer::from(bytes.to_vec()))
}

// ------------------------------------------------------------------ encoding

/// A `Write` into a fixed slice; fails when it is full.
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Write for SliceWriter<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + data.len();
        if end > self.buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "chunk full",
            ));
        }
        self.buf[self.pos..end].copy_from_slice(data);
        self.pos = end;
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encodes `batches` (one schema, at least one) as one IPC stream into `buf`; `None`
/// if it does not fit.
fn encode_into(batches: &[RecordBatch], buf: &mut [u8]) -> Option<usize> {
    let first = batches.first()?;
    let mut w = SliceWriter { buf, pos: 0 };
    {
        let mut sw = StreamWriter::try_new(&mut w, &first.schema()).ok()?;
        for b in batches {
            sw.write(b).ok()?;
        }
        sw.finish().ok()?;
    }
    Some(w.pos)
}

/// The outcome of encoding the next chunk of an output.
pub enum Enc {
    /// Encoded into the buffer: IPC length, whole batches taken from the front, then
    /// rows taken from the next batch (0: none), rows in all.
    Fit {
        /// The arena buffer.
        buf: OutBuf,
        /// IPC bytes at its start.
        len: usize,
        /// Whole batches used.
        whole: usize,
        /// Rows of the next batch used.
        partial: usize,
        /// Rows in the chunk.
        rows: usize,
    },
    /// No arena space now.
    Blocked,
    /// Not even one row fits a chunk.
    TooBig,
}

/// Encodes batches from the front of `batches` (all of one schema), as many whole ones
/// as fit and then a leading slice of the next, into one IPC stream written straight
/// into an arena buffer of at most `max` bytes, leaving room for the trailer.
///
/// # Errors
/// The router's allocation errors.
pub fn encode_chunk(
    router: &RouterHandle,
    batches: &VecDeque<RecordBatch>,
    max: usize,
) -> Result<Enc, RouterError> {
    /// IPC framing per batch message (flatbuffer header, padding), roughly.
    const PER_BATCH: usize = 512;
    let budget = max.saturating_sub(IPC_SLACK + CHUNK_TRAILER).max(1);
    let mut parts: Vec<RecordBatch> = Vec::new();
    let mut est = 0usize;
    let mut partial = 0usize;
    for b in batches {
        let bb = batch_bytes(b) + PER_BATCH;
        if est + bb <= budget {
            parts.push(b.clone());
            est += bb;
            continue;
        }
        let n = b.num_rows();
        let per_row = (batch_bytes(b) / n.max(1)).max(1);
        let rows = (budget.saturating_sub(est + PER_BATCH) / per_row).min(n);
        if rows > 0 && (parts.is_empty() || rows >= 1024) {
            parts.push(b.slice(0, rows));
            est += batch_bytes(&parts[parts.len() - 1]) + PER_BATCH;
            partial = rows;
        } else if parts.is_empty() {
            parts.push(b.slice(0, 1));
            est += batch_bytes(&parts[0]) + PER_BATCH;
            partial = 1;
        }
        break;
    }
    loop {
        let want = (est + est / 8 + IPC_SLACK + CHUNK_TRAILER)
            .min(max)
            .max(CHUNK_TRAILER + 64);
        let Some(mut buf) = router.try_alloc(want)? else {
            return Ok(Enc::Blocked);
        };
        let mut fit = encode_into(&parts, &mut buf.as_mut_slice()[..want - CHUNK_TRAILER]);
        if fit.is_none() && want < max {
            // The estimate was short: try the largest buffer before taking less.
            drop(buf);
            let Some(big) = router.try_alloc(max)? else {
                return Ok(Enc::Blocked);
            };
            buf = big;
            fit = encode_into(&parts, &mut buf.as_mut_slice()[..max - CHUNK_TRAILER]);
        }
        if let Some(len) = fit {
            let rows = parts.iter().map(|p| p.num_rows()).sum();
            let whole = parts.len() - usize::from(partial > 0);
            return Ok(Enc::Fit {
                buf,
                len,
                whole,
                partial,
                rows,
            });
        }
        drop(buf);
        // Take less: drop a partial slice or the last whole batch, else halve the rows.
        if parts.len() > 1 {
            parts.pop();
            partial = 0;
        } else {
            let n = parts[0].num_rows();
            if n == 1 {
                return Ok(Enc::TooBig);
            }
            let half = n.div_ceil(2);
            parts[0] = parts[0].slice(0, half);
            partial = half;
        }
        est = parts.iter().map(|p| batch_bytes(p) + PER_BATCH).sum();
    }
}

/// Removes what [`Enc::Fit`] took from the front of `batches`.
pub fn consume(batches: &mut VecDeque<RecordBatch>, whole: usize, partial: usize) {
    batches.drain(..whole.min(batches.len()));
    if partial > 0 {
        if let Some(b) = batches.front_mut() {
            *b = b.slice(partial, b.num_rows() - partial);
        }
    }
    while batches.front().is_some_and(|b| b.num_rows() == 0) {
        batches.pop_front();
    }
}

// ------------------------------------------------------------------ sending

/// Where a [`OutChannel::pump`] left its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for arena space.
    Blocked,
    /// Everything queued is sent; the stage has not finished.
    Waiting,
    /// The last chunk is sent: the channel is done.
    Closed,
}

/// One stage output's way to its exchange's consumers: chunks of up to a router
/// chunk, each its own router object (tag `TAG_XCHG`), the last flagged LAST (or
/// ABORT when the stage failed).
#[derive(Debug)]
pub struct OutChannel {
    /// Task (header query id).
    pub task: u64,
    /// Exchange id.
    pub exchange: u16,
    /// The sender's address.
    pub me: smrdb_router::Addr,
    /// The consumers: `ALL_TSTORES` (broadcast) or the primary's controller (gather).
    pub dst: smrdb_router::Addr,
    /// The batches to send.
    pub output: Arc<StageOutput>,
    /// Rows, bytes and chunks sent so far.
    pub sent: (u64, u64, u64),
    /// The last chunk is sent.
    pub closed: bool,
    /// A row did not fit a chunk (the stage fails with 54000).
    pub too_big: bool,
}

impl OutChannel {
    /// A channel for `output`.
    pub fn new(
        task: u64,
        exchange: u16,
        me: smrdb_router::Addr,
        dst: smrdb_router::Addr,
        output: Arc<StageOutput>,
    ) -> OutChannel {
        OutChannel {
            task,
            exchange,
            me,
            dst,
            output,
            sent: (0, 0, 0),
            closed: false,
            too_big: false,
        }
    }

    fn send(
        &mut self,
        router: &RouterHandle,
        mut buf: OutBuf,
        len: usize,
        flags: u16,
        rows: usize,
    ) -> Result<(), RouterError> {
        let tr = crate::proto::ChunkTrailer {
            flags,
            exchange: self.exchange,
            rows: rows as u64,
        };
        buf.as_mut_slice()[len..len + CHUNK_TRAILER].copy_from_slice(&tr.encode());
        buf.set_len(len + CHUNK_TRAILER);
        let spec = smrdb_router::SendSpec {
            src: self.me,
            dst: self.dst,
            tag: crate::proto::TAG_XCHG,
            query: self.task,
            object: router.new_object_id(),
            chunk: 0,
            last: true,
        };
        self.sent.0 += rows as u64;
        self.sent.1 += (len + CHUNK_TRAILER) as u64;
        self.sent.2 += 1;
        match router.send(buf, spec) {
            Ok(_) => Ok(()),
            Err(RouterError::Shutdown) => Err(RouterError::Shutdown),
            Err(e) => {
                tracing::warn!("exchange {} of task {}: {e}", self.exchange, self.task);
                Ok(())
            }
        }
    }

    /// Sends what the arena takes now, without blocking.
    ///
    /// # Errors
    /// The router's errors that cannot be waited out (shutdown, a chunk larger than
    /// the arena).
    pub fn pump(&mut self, router: &RouterHandle) -> Result<Pumped, RouterError> {
        if self.closed {
            return Ok(Pumped::Closed);
        }
        let max = router.max_chunk();
        loop {
            let (finished, failed, queued) = self.output.state();
            if !queued {
                if !finished {
                    return Ok(Pumped::Waiting);
                }
                let Some(buf) = router.try_alloc(CHUNK_TRAILER)? else {
                    return Ok(Pumped::Blocked);
                };
                let flags = crate::proto::CHUNK_LAST
                    | if failed || self.too_big {
                        crate::proto::CHUNK_ABORT
                    } else {
                        0
                    };
                self.send(router, buf, 0, flags, 0)?;
                self.closed = true;
                return Ok(Pumped::Closed);
            }
            let enc = self.output.with_batches(|b| encode_chunk(router, b, max))?;
            match enc {
                Enc::Blocked => return Ok(Pumped::Blocked),
                Enc::TooBig => {
                    self.too_big = true;
                    self.output.fail();
                }
                Enc::Fit {
                    buf,
                    len,
                    whole,
                    partial,
                    rows,
                } => {
                    let more = self.output.with_batches(|b| {
                        consume(b, whole, partial);
                        !b.is_empty()
                    });
                    let (finished, failed, _) = self.output.state();
                    // The stage's last rows carry LAST themselves.
                    let last = !more && finished && !failed;
                    let flags = if last { crate::proto::CHUNK_LAST } else { 0 };
                    self.send(router, buf, len, flags, rows)?;
                    if last {
                        self.closed = true;
                        return Ok(Pumped::Closed);
                    }
                }
            }
        }
    }
}
