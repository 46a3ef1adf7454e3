//! Ring accounting, kept apart from I/O so it can be tested exhaustively.
//!
//! Each sender owns one ring of `cap` bytes in each receiver's common memory. Both
//! sides count in *stream positions*: monotonic byte counts since the connection
//! started. A chunk occupies `[start, end)` of the stream and `[start % cap, end % cap)`
//! of the ring; a chunk never wraps: if it does not fit before the ring's end, the
//! sender skips to the next multiple of `cap` (the skipped bytes count as used until
//! the chunk after them is released).
//!
//! ```text
//!   ring (cap bytes, in the receiver's region, written only by this sender)
//!   +-----------+======chunk k======+====chunk k+1====+---------------+
//!   0         head%cap                            tail%cap          cap
//!   released <-+                     in use                    +-> free
//! ```
//!
//! Invariants: `head <= tail`, and a chunk `[start, end)` is written only when the ring
//! bytes it covers hold nothing unreleased: `end - cap <= head`, or everything sent is
//! released. The receiver checks the same against its own state and refuses any chunk
//! that breaks it, so a buggy or hostile sender cannot make it hand out overlapping
//! chunks.

use std::collections::VecDeque;

/// The sender's view of its ring at one receiver.
#[derive(Debug)]
pub struct TxRing {
    cap: u64,
    /// Chunks start at multiples of this (a power of two dividing `cap`).
    align: u64,
    /// Stream position after the last reserved chunk.
    tail: u64,
    /// Released position the receiver last reported (credits).
    head: u64,
    high_water: u64,
}

/// Where a chunk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// Offset in the ring.
    pub offset: u64,
    /// Stream position after the chunk.
    pub end: u64,
}

impl TxRing {
    /// A ring of `cap` bytes, nothing sent.
    pub fn new(cap: u64) -> TxRing {
        TxRing::with_align(cap, 1)
    }

    /// A ring of `cap` bytes whose chunks start at multiples of `align` (each chunk
    /// occupies its length rounded up to `align`). An `align` that is not a power of
    /// two dividing `cap` is taken as 1. The receiver must use the same alignment.
    pub fn with_align(cap: u64, align: u64) -> TxRing {
        TxRing {
            cap,
            align: checked_align(cap, align),
            tail: 0,
            head: 0,
            high_water: 0,
        }
    }

    /// Where `len` bytes would go, if the receiver has released enough. `len` must not
    /// exceed the ring.
    pub fn place(&self, len: u64) -> Option<Placement> {
        debug_assert!(len <= self.cap);
        let len = round_up(len, self.align);
        let pos = self.tail % self.cap;
        let start = if pos + len > self.cap {
            self.tail + (self.cap - pos)
        } else {
            self.tail
        };
        let end = start + len;
        // Writing stream [start, end) overwrites the ring bytes that held stream
        // [start - cap, end - cap): allowed when all of that is released, or when
        // nothing at all is unreleased (then the only overlap is with skipped padding
        // or with positions never written).
        (end.saturating_sub(self.cap) <= self.head || self.tail == self.head).then_some(Placement {
            offset: start % self.cap,
            end,
        })
    }

    /// Takes the placement `place` returned.
    pub fn commit(&mut self, p: Placement) {
        self.tail = p.end;
        self.high_water = self.high_water.max(self.in_use());
    }

    /// Applies a credit: the receiver has released everything before `released`.
    ///
    /// # Errors
    /// A description when the credit goes backwards or beyond what was sent.
    pub fn credit(&mut self, released: u64) -> Result<(), String> {
        if released < self.head || released > self.tail {
            return Err(format!(
                "credit to position {released} outside [{}, {}]",
                self.head, self.tail
            ));
        }
        self.head = released;
        Ok(())
    }

    /// Ring bytes in use (sent, not yet released; skipped padding included, capped at
    /// the ring size).
    pub fn in_use(&self) -> u64 {
        (self.tail - self.head).min(self.cap)
    }

    /// Highest `in_use` seen.
    pub fn high_water(&self) -> u64 {
        self.high_water
    }
}

fn checked_align(cap: u64, align: u64) -> u64 {
    if align.is_power_of_two() && cap.is_multiple_of(align) {
        align
    } else {
        1
    }
}

/// `len` rounded up to a multiple of `align` (a power of two); saturates.
fn round_up(len: u64, align: u64) -> u64 {
    len.checked_add(align - 1)
        .map_or(u64::MAX, |x| x & !(align - 1))
}

/// The receiver's view of one sender's ring.
#[derive(Debug)]
pub struct RxRing {
    cap: u64,
    /// As [`TxRing::with_align`].
    align: u64,
    /// Stream position after the last accepted chunk.
    next: u64,
    /// Everything before this is released (and credited back).
    head: u64,
    /// Accepted chunks not yet released up to `head`, in arrival order: (end, released).
    /// The front chunk's id is `front_id`; ids count accepted chunks from 0.
    chunks: VecDeque<(u64, bool)>,
    front_id: u64,
    high_water: u64,
}

impl RxRing {
    /// A ring of `cap` bytes, nothing received.
    pub fn new(cap: u64) -> RxRing {
        RxRing::with_align(cap, 1)
    }

    /// A ring of `cap` bytes whose chunks start at multiples of `align` (see
    /// [`TxRing::with_align`]).
    pub fn with_align(cap: u64, align: u64) -> RxRing {
        RxRing {
            cap,
            align: checked_align(cap, align),
            next: 0,
            head: 0,
            chunks: VecDeque::new(),
            front_id: 0,
            high_water: 0,
        }
    }

    /// Checks a DATA header's placement against everything received so far and, when
    /// it is sound, records the chunk. Returns the chunk's offset in the ring and its id
    /// (what [`RxRing::release`] takes).
    ///
    /// # Errors
    /// A description of what is wrong; nothing is recorded then.
    pub fn accept(&mut self, offset: u64, len: u64, end: u64) -> Result<(u64, u64), String> {
        let len = round_up(len, self.align);
        let start = end
            .checked_sub(len)
            .ok_or_else(|| format!("chunk end {end} before its length {len}"))?;
        if offset.checked_add(len).is_none_or(|e| e > self.cap) {
            return Err(format!(
                "chunk at ring offset {offset} + {len} bytes is outside the {}-byte ring",
                self.cap
            ));
        }
        if start < self.next {
            return Err(format!(
                "chunk starts at stream position {start}, before the end of the previous one ({})",
                self.next
            ));
        }
        if start != self.next {
            // The only allowed gap: skipping the ring's tail to wrap.
            let wrap = self.next + (self.cap - self.next % self.cap);
            if start != wrap || self.next % self.cap + len <= self.cap {
                return Err(format!(
                    "chunk starts at {start}, expected {} (or {wrap} after a wrap it needed)",
                    self.next
                ));
            }
        }
        if start % self.cap != offset {
            return Err(format!(
                "ring offset {offset} does not match stream position {start}"
            ));
        }
        if end.saturating_sub(self.cap) > self.head && self.next != self.head {
            return Err(format!(
                "chunk ending at {end} would overwrite unreleased bytes (released up to {})",
                self.head
            ));
        }
        self.next = end;
        self.chunks.push_back((end, false));
        self.high_water = self.high_water.max(self.in_use());
        Ok((offset, self.front_id + self.chunks.len() as u64 - 1))
    }

    /// Marks chunk `id` released; returns the new released position when it advanced
    /// (the credit to send). Unknown or repeated ids change nothing.
    pub fn release(&mut self, id: u64) -> Option<u64> {
        let i = usize::try_from(id.checked_sub(self.front_id)?).ok()?;
        self.chunks.get_mut(i)?.1 = true;
        let before = self.head;
        while let Some(&(e, true)) = self.chunks.front() {
            self.head = e;
            self.chunks.pop_front();
            self.front_id += 1;
        }
        (self.head != before).then_some(self.head)
    }

    /// Ring bytes accepted and not yet released (capped at the ring size).
    pub fn in_use(&self) -> u64 {
        (self.next - self.head).min(self.cap)
    }

    /// Highest `in_use` seen.
    pub fn high_water(&self) -> u64 {
        self.high_water
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_rings_keep_chunk_starts_aligned() {
        let mut tx = TxRing::with_align(1024, 64);
        let mut rx = RxRing::with_align(1024, 64);
        let mut ids = Vec::new();
        for len in [1u64, 100, 64, 700, 63, 129] {
            let p = loop {
                if let Some(p) = tx.place(len) {
                    break p;
                }
                // Release everything to make room.
                for id in ids.drain(..) {
                    if let Some(h) = rx.release(id) {
                        tx.credit(h).unwrap();
                    }
                }
            };
            assert_eq!(p.offset % 64, 0, "chunk of {len} at {}", p.offset);
            tx.commit(p);
            let (off, id) = rx.accept(p.offset, len, p.end).unwrap();
            assert_eq!(off, p.offset);
            ids.push(id);
        }
        // A receiver without the alignment refuses the sender's positions.
        let mut tx = TxRing::with_align(1024, 64);
        let mut plain = RxRing::new(1024);
        let a = tx.place(10).unwrap();
        tx.commit(a);
        plain.accept(a.offset, 10, a.end).unwrap_err();
        // An alignment that does not divide the ring is ignored.
        assert_eq!(TxRing::with_align(100, 64).place(60).unwrap().end, 60);
    }

    #[test]
    fn sender_wraps_and_waits_for_credit() {
        let mut tx = TxRing::new(100);
        let a = tx.place(60).unwrap();
        assert_eq!(a, Placement { offset: 0, end: 60 });
        tx.commit(a);
        // 50 bytes do not fit before the end (60+50 > 100) and wrapping would overwrite
        // unreleased bytes: no placement.
        assert_eq!(tx.place(50), None);
        tx.credit(60).unwrap();
        let b = tx.place(50).unwrap();
        assert_eq!(
            b,
            Placement {
                offset: 0,
                end: 150
            },
            "skips to the wrap"
        );
        tx.commit(b);
        assert_eq!(tx.in_use(), 90, "the skipped 40 bytes count until released");
        assert!(tx.credit(10).is_err(), "credit going backwards");
        assert!(tx.credit(151).is_err(), "credit beyond what was sent");
        assert_eq!(tx.high_water(), 90);
    }

    #[test]
    fn wrap_into_an_empty_ring_is_allowed() {
        // 40 bytes sent and released; 70 more do not fit before the end, and the
        // padding plus the chunk exceed the ring, but nothing is unreleased: placed at 0.
        let (mut tx, mut rx) = (TxRing::new(100), RxRing::new(100));
        let a = tx.place(40).unwrap();
        tx.commit(a);
        let (_, id) = rx.accept(a.offset, 40, a.end).unwrap();
        assert_eq!(tx.place(70), None, "40 bytes unreleased at ring [0, 40)");
        tx.credit(rx.release(id).unwrap()).unwrap();
        let b = tx.place(70).unwrap();
        assert_eq!(
            b,
            Placement {
                offset: 0,
                end: 170
            }
        );
        tx.commit(b);
        assert_eq!(rx.accept(0, 70, 170), Ok((0, 1)));
        assert_eq!(tx.in_use(), 100);
    }

    #[test]
    fn receiver_follows_sender() {
        let (mut tx, mut rx) = (TxRing::new(100), RxRing::new(100));
        let mut ends = Vec::new();
        let mut seed = 7u64;
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let len = (seed >> 40) % 101;
            match tx.place(len) {
                Some(p) => {
                    tx.commit(p);
                    let (off, id) = rx.accept(p.offset, len, p.end).unwrap();
                    assert_eq!(off, p.offset);
                    ends.push(id);
                }
                None => {
                    // Release the oldest (sometimes out of order) until it fits.
                    if ends.len() > 1 && seed & 1 == 1 {
                        let e = ends.remove(1);
                        assert_eq!(rx.release(e), None, "out-of-order release frees nothing");
                    }
                    let e = ends.remove(0);
                    if let Some(h) = rx.release(e) {
                        tx.credit(h).unwrap();
                    }
                }
            }
            assert!(tx.in_use() <= 100 && rx.in_use() <= 100);
        }
    }

    #[test]
    fn receiver_refuses_unsound_chunks() {
        // Each case: a header placement that must be refused, with what happens.
        let mut rx = RxRing::new(100);
        rx.accept(0, 60, 60).unwrap();
        // Expect: overlap with the previous chunk (stale position) refused.
        assert!(rx.accept(50, 10, 60).is_err());
        // Expect: a gap that is not a wrap refused.
        assert!(rx.accept(70, 10, 80).is_err());
        // Expect: out of the ring's bounds refused.
        assert!(rx.accept(95, 10, 105).is_err());
        // Expect: offset not matching the stream position refused.
        assert!(rx.accept(61, 10, 70).is_err());
        // Expect: end before length refused (no underflow).
        assert!(rx.accept(0, 10, 5).is_err());
        // Expect: overflow of offset + len refused.
        assert!(rx.accept(u64::MAX, 2, 100).is_err());
        // Expect: a wrap that would overwrite unreleased bytes refused.
        assert!(rx.accept(0, 50, 150).is_err());
        // Expect: a wrap that was not needed refused (10 bytes fit before the end).
        assert!(rx.accept(0, 10, 110).is_err());
        // And the ring still accepts the sound next chunks, zero-length ones included.
        assert_eq!(rx.accept(60, 40, 100), Ok((60, 1)));
        assert_eq!(rx.accept(0, 0, 100), Ok((0, 2)));
        // Releasing the zero-length chunk (same end as chunk 1) frees nothing: chunk 0
        // is still held.
        assert_eq!(rx.release(2), None);
        assert_eq!(rx.release(1), None);
        assert_eq!(rx.release(1), None, "a repeated release changes nothing");
        assert_eq!(rx.release(0), Some(100));
        assert_eq!(rx.release(99), None, "an unknown id changes nothing");
    }
}
