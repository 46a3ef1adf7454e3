//! The outgoing-buffer arena: the part of common memory where Tstores build what they
//! send (join-table chunks, results). A buffer's bytes are written once by its builder,
//! read in place by local consumers, and are the source of the RDMA WRITE to each
//! remote node; the range returns to the arena when the last of those is done.
//!
//! First-fit over an offset-ordered free list with coalescing; allocations are
//! [`ALIGN`]-byte aligned. Waiting for space is bounded by a timeout.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use smrdb_transport::Region;

use crate::RouterError;

/// Alignment of every allocation (a cache line).
pub const ALIGN: usize = 64;

/// The arena: `[base, base + len)` of the region.
pub struct Arena {
    region: Arc<Region>,
    len: usize,
    free: Mutex<FreeList>,
    freed: Condvar,
}

struct FreeList {
    /// offset -> length, non-adjacent, ordered.
    ranges: BTreeMap<usize, usize>,
    free_bytes: usize,
}

impl Arena {
    /// An arena over `[base, base + len)` of `region`.
    pub fn new(region: Arc<Region>, base: usize, len: usize) -> Arc<Arena> {
        let len = len - len % ALIGN;
        let mut ranges = BTreeMap::new();
        if len > 0 {
            ranges.insert(base, len);
        }
        Arc::new(Arena {
            region,
            len,
            free: Mutex::new(FreeList {
                ranges,
                free_bytes: len,
            }),
            freed: Condvar::new(),
        })
    }

    /// Bytes in the arena.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// Bytes free now.
    pub fn free_bytes(&self) -> usize {
        self.lock().free_bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreeList> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates `len` bytes (rounded up to [`ALIGN`]), waiting up to `timeout` for
    /// space to be released.
    ///
    /// # Errors
    /// [`RouterError::TooLarge`] when `len` can never fit; [`RouterError::Backpressure`]
    /// when the arena stays too full for `timeout`.
    pub fn alloc(
        self: &Arc<Self>,
        len: usize,
        timeout: Duration,
    ) -> Result<ArenaRange, RouterError> {
        let want = len.max(1).div_ceil(ALIGN) * ALIGN;
        if want > self.len {
            return Err(RouterError::TooLarge {
                len,
                max: self.len,
                what: "the outgoing arena",
            });
        }
        let deadline = Instant::now() + timeout;
        let mut fl = self.lock();
        loop {
            let found = fl
                .ranges
                .iter()
                .find(|(_, &l)| l >= want)
                .map(|(&o, &l)| (o, l));
            if let Some((off, l)) = found {
                fl.ranges.remove(&off);
                if l > want {
                    fl.ranges.insert(off + want, l - want);
                }
                fl.free_bytes -= want;
                return Ok(ArenaRange {
                    arena: self.clone(),
                    off,
                    cap: want,
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RouterError::Backpressure {
                    what: format!(
                        "the outgoing arena ({} of {} bytes free, {len} wanted)",
                        fl.free_bytes, self.len
                    ),
                    waited: timeout,
                });
            }
            fl = self
                .freed
                .wait_timeout(fl, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn release(&self, off: usize, len: usize) {
        let mut fl = self.lock();
        let mut start = off;
        let mut size = len;
        if let Some((&po, &pl)) = fl.ranges.range(..off).next_back() {
            debug_assert!(po + pl <= off, "double free in arena");
            if po + pl == off {
                fl.ranges.remove(&po);
                start = po;
                size += pl;
            }
        }
        if let Some(&nl) = fl.ranges.get(&(off + len)) {
            fl.ranges.remove(&(off + len));
            size += nl;
        }
        fl.ranges.insert(start, size);
        fl.free_bytes += len;
        drop(fl);
        self.freed.notify_all();
    }
}

/// An allocated range of the arena; returned to it on drop.
pub struct ArenaRange {
    arena: Arc<Arena>,
    off: usize,
    cap: usize,
}

impl ArenaRange {
    /// Offset in the region.
    pub fn offset(&self) -> usize {
        self.off
    }

    /// Allocated bytes (≥ what was asked).
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The region the range is in.
    pub fn region(&self) -> &Arc<Region> {
        &self.arena.region
    }
}

impl Drop for ArenaRange {
    fn drop(&mut self) {
        self.arena.release(self.off, self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arena(len: usize) -> Arc<Arena> {
        Arena::new(Arc::new(Region::anonymous(len + 4096).unwrap()), 4096, len)
    }

    #[test]
    fn allocates_aligned_disjoint_and_coalesces() {
        let a = arena(1 << 16);
        let x = a.alloc(1, Duration::ZERO).unwrap();
        let y = a.alloc(100, Duration::ZERO).unwrap();
        let z = a.alloc(64, Duration::ZERO).unwrap();
        assert_eq!((x.offset(), x.capacity()), (4096, 64));
        assert_eq!((y.offset(), y.capacity()), (4160, 128));
        assert_eq!(z.offset(), 4288);
        assert_eq!(a.free_bytes(), (1 << 16) - 256);
        drop(y);
        drop(x);
        // The two freed neighbours coalesced: a 192-byte request fits at the start.
        let w = a.alloc(192, Duration::ZERO).unwrap();
        assert_eq!(w.offset(), 4096);
        drop((w, z));
        assert_eq!(a.free_bytes(), 1 << 16);
        // Everything coalesced back into one range: the whole arena is allocatable.
        assert_eq!(
            a.alloc(1 << 16, Duration::ZERO).unwrap().capacity(),
            1 << 16
        );
    }

    #[test]
    fn full_arena_times_out_then_recovers() {
        let a = arena(4096);
        let all = a.alloc(4096, Duration::ZERO).unwrap();
        let t = Instant::now();
        let e = a.alloc(64, Duration::from_millis(100)).err().unwrap();
        assert!(matches!(e, RouterError::Backpressure { .. }), "{e}");
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert!(matches!(
            a.alloc(8192, Duration::ZERO),
            Err(RouterError::TooLarge { .. })
        ));
        // A waiter is woken by a release from another thread.
        let a2 = a.clone();
        let h =
            std::thread::spawn(move || a2.alloc(64, Duration::from_secs(10)).map(|r| r.offset()));
        std::thread::sleep(Duration::from_millis(50));
        drop(all);
        assert_eq!(h.join().unwrap().unwrap(), 4096);
    }

    #[test]
    fn random_alloc_free_never_overlaps() {
        let a = arena(1 << 14);
        let mut live: Vec<ArenaRange> = Vec::new();
        let mut seed = 12345u64;
        for _ in 0..5000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if seed >> 63 == 0 || live.is_empty() {
                if let Ok(r) = a.alloc(((seed >> 20) % 1500) as usize + 1, Duration::ZERO) {
                    for o in &live {
                        let disjoint = r.offset() + r.capacity() <= o.offset()
                            || o.offset() + o.capacity() <= r.offset();
                        assert!(disjoint, "overlap");
                    }
                    live.push(r);
                }
            } else {
                let i = (seed >> 33) as usize % live.len();
                live.swap_remove(i);
            }
        }
        live.clear();
        assert_eq!(a.free_bytes(), 1 << 14);
    }
}
