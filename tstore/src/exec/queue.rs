//! The hand-off between a Tstore's event loop and an [`super::ExchangeExec`] stream:
//! batches decoded from arriving chunks are pushed here (in arrival order) and the
//! stream pops them, waking the task that polls it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use arrow_array::RecordBatch;
use datafusion_common::{DataFusionError, Result};

#[derive(Debug, Default)]
struct Inner {
    batches: VecDeque<RecordBatch>,
    /// Senders whose last chunk has not arrived.
    senders_left: usize,
    /// Set when a sender failed or the task was abandoned: the stream ends with it.
    error: Option<String>,
    /// The stream yields nothing before every sender has finished (`smrdb.overlap =
    /// off`, for the overlap experiment).
    wait_complete: bool,
    waker: Option<Waker>,
    /// Rows and batches pushed (EXPLAIN ANALYZE).
    rows: u64,
    pushed: u64,
}

/// One exchange input (one partition of it) on one consumer.
#[derive(Debug, Default)]
pub struct ExchangeQueue {
    inner: Mutex<Inner>,
}

impl ExchangeQueue {
    /// A queue that ends once `senders` senders have each called
    /// [`ExchangeQueue::finish_sender`]. With `wait_complete`, nothing is handed out
    /// before that.
    pub fn new(senders: usize, wait_complete: bool) -> Arc<ExchangeQueue> {
        Arc::new(ExchangeQueue {
            inner: Mutex::new(Inner {
                senders_left: senders,
                wait_complete,
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake(g: &mut Inner) {
        if let Some(w) = g.waker.take() {
            w.wake();
        }
    }

    /// Adds a batch (empty batches are dropped).
    pub fn push(&self, b: RecordBatch) {
        if b.num_rows() == 0 {
            return;
        }
        let mut g = self.lock();
        g.rows += b.num_rows() as u64;
        g.pushed += 1;
        g.batches.push_back(b);
        if !g.wait_complete || g.senders_left == 0 {
            Self::wake(&mut g);
        }
    }

    /// One sender has sent everything.
    pub fn finish_sender(&self) {
        let mut g = self.lock();
        g.senders_left = g.senders_left.saturating_sub(1);
        if g.senders_left == 0 {
            Self::wake(&mut g);
        }
    }

    /// Ends the stream with an error (a sender failed, a peer was lost, a deadline
    /// passed). The first error wins; queued batches are dropped.
    pub fn fail(&self, message: impl Into<String>) {
        let mut g = self.lock();
        if g.error.is_none() {
            g.error = Some(message.into());
        }
        g.batches.clear();
        Self::wake(&mut g);
    }

    /// True once every sender has finished (or the queue failed).
    pub fn is_complete(&self) -> bool {
        let g = self.lock();
        g.senders_left == 0 || g.error.is_some()
    }

    /// Senders still expected.
    pub fn senders_left(&self) -> usize {
        self.lock().senders_left
    }

    /// Rows pushed so far.
    pub fn rows(&self) -> u64 {
        self.lock().rows
    }

    /// The next batch, the end (`None`), an error, or pending (the waker is kept).
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<RecordBatch>>> {
        let mut g = self.lock();
        if let Some(e) = &g.error {
            let e = e.clone();
            // Report once, then end.
            g.error = Some(String::new());
            if e.is_empty() {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(Err(DataFusionError::Execution(e))));
        }
        if !g.wait_complete || g.senders_left == 0 {
            if let Some(b) = g.batches.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if g.senders_left == 0 {
                return Poll::Ready(None);
            }
        }
        g.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Int32Array;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn batch(n: i32) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "a",
            Arc::new(Int32Array::from((0..n).collect::<Vec<_>>())) as _,
        )])
        .unwrap()
    }

    #[test]
    fn batches_flow_in_order_and_the_end_needs_every_sender() {
        let q = ExchangeQueue::new(2, false);
        let w = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(w.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(q.poll_next(&mut cx).is_pending());
        q.push(batch(3));
        assert_eq!(w.0.load(Ordering::Relaxed), 1, "a push wakes the reader");
        q.push(batch(0)); // dropped
        q.push(batch(2));
        let rows: Vec<usize> = (0..2)
            .map(|_| match q.poll_next(&mut cx) {
                Poll::Ready(Some(Ok(b))) => b.num_rows(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(rows, vec![3, 2]);
        q.finish_sender();
        assert!(q.poll_next(&mut cx).is_pending(), "one sender still out");
        q.finish_sender();
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(None)));
        assert_eq!(q.rows(), 5);
    }

    #[test]
    fn wait_complete_holds_everything_back_and_errors_end_the_stream() {
        let q = ExchangeQueue::new(1, true);
        let w = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(w.clone());
        let mut cx = Context::from_waker(&waker);
        q.push(batch(1));
        assert!(q.poll_next(&mut cx).is_pending());
        q.finish_sender();
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(None)));

        let q = ExchangeQueue::new(3, false);
        q.push(batch(4));
        q.fail("node 2 was lost");
        q.fail("later error");
        match q.poll_next(&mut cx) {
            Poll::Ready(Some(Err(e))) => assert!(e.to_string().contains("node 2")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(None)));
    }
}
