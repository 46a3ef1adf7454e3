//! Fuzz target `header`: the router's inbound path as a pure function.
//!
//! Every input is first decoded whole by `Header::decode` (any length): it must not
//! panic, and what it accepts must round-trip through `encode`. The input then drives a
//! receiving router's view of one sender's ring, exactly as `router/src/core.rs` checks
//! a message: framing (`Header::decode`), the per-connection sequence number, the
//! addresses (`header::validate` against a 3-node cluster map), the ring placement
//! (`RxRing::accept`), and releases (`RxRing::release`) that become credits.
//!
//! Input layout:
//!
//! ```text
//! byte 0   ring size = 64 * (1 + b) bytes (64 B .. 16 KiB)
//! byte 1   bit 0: chunks 64-byte aligned (the router's setting) or not; bit 1: the
//!          sender is the node at cluster index 1 or 2 (the receiver is index 0)
//! then ops, each an op byte and its operands:
//!   op % 4 == 0  raw: the next 72 bytes are a received message
//!   op % 4 == 1  fields: kind u8, version u8, src u32, dst u32, len u16, offset u64,
//!                end u64, seq delta i8: a header with a valid checksum
//!   op % 4 == 2  honest: len u16: the sender's own `TxRing` places the chunk; op >> 2
//!                perturbs the placement (0: none)
//!   op % 4 == 3  release: index u8 into the chunks consumers still hold
//! ```
//!
//! Oracles: an accepted chunk lies inside the ring, starts aligned, and overlaps no chunk
//! a consumer still holds; chunk ids count up from 0; released positions only grow; while
//! the receiver has seen only what an honest sender sent, every placement that sender's
//! `TxRing` makes is accepted and every credit the receiver returns is accepted by it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smrdb_router::header::{self, Header, Kind, FLAG_LAST, HEADER_LEN, VERSION};
use smrdb_router::ring::{RxRing, TxRing};
use smrdb_router::{Addr, ClusterMap, NodeSpec};

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (h, t) = self.0.split_first_chunk::<N>()?;
        self.0 = t;
        Some(*h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
}

fn map() -> ClusterMap {
    let spec = |id, tstores| NodeSpec {
        id,
        addr: String::new(),
        tstores,
    };
    // Tstores: node 10 has 0, node 11 has 1 and 2, node 12 none.
    ClusterMap::new(vec![spec(10, 1), spec(11, 2), spec(12, 0)]).expect("a valid map")
}

/// An independent statement of what `validate` must accept.
fn addresses_ok(h: &Header, from: usize, me: usize) -> bool {
    let tstores = [0..1u32, 1..3, 3..3];
    let ids = [10u32, 11, 12];
    let on = |a: Addr, i: usize| {
        (a.0 < 0x8000_0000 && tstores[i].contains(&a.0))
            || (a.0 >= 0x8000_0000 && a.0 < 0xFFFF_FFFE && a.0 & 0x7FFF_FFFF == ids[i])
    };
    h.kind == Kind::Credit || (on(h.src, from) && (h.dst.0 >= 0xFFFF_FFFE || on(h.dst, me)))
}

fn round_up(len: u64, align: u64) -> u64 {
    len.div_ceil(align) * align
}

struct Receiver {
    map: ClusterMap,
    from: usize,
    cap: u64,
    align: u64,
    rx: RxRing,
    seq: u64,
    /// Chunks consumers still hold: (id, ring offset, ring bytes).
    held: Vec<(u64, u64, u64)>,
    next_id: u64,
    released: u64,
    /// The honest sender's view, while the receiver has seen only its chunks.
    tx: TxRing,
    synced: bool,
}

impl Receiver {
    /// What the router does with one message; returns whether the chunk was accepted.
    fn on_message(&mut self, bytes: &[u8]) -> bool {
        let Ok(h) = Header::decode(bytes) else {
            return false;
        };
        assert_eq!(Header::decode(&h.encode()).ok(), Some(h));
        if h.seq != self.seq {
            return false;
        }
        self.seq += 1;
        let v = header::validate(&h, &self.map, 0, self.from);
        assert_eq!(v.is_ok(), addresses_ok(&h, self.from, 0), "{h:?}: {v:?}");
        if v.is_err() || h.kind != Kind::Data {
            return false;
        }
        let Ok((off, id)) = self.rx.accept(h.ring_offset, u64::from(h.len), h.ring_end) else {
            return false;
        };
        let bytes = round_up(u64::from(h.len), self.align);
        assert_eq!(off, h.ring_offset);
        assert!(
            off + bytes <= self.cap,
            "{h:?} outside a {}-byte ring",
            self.cap
        );
        assert_eq!(off % self.align, 0, "{h:?} unaligned");
        assert_eq!(id, self.next_id, "chunk ids count up");
        self.next_id += 1;
        if bytes > 0 {
            for &(hid, hoff, hlen) in &self.held {
                assert!(
                    hlen == 0 || off + bytes <= hoff || hoff + hlen <= off,
                    "{h:?} overlaps held chunk {hid} at [{hoff}, {})",
                    hoff + hlen
                );
            }
        }
        self.held.push((id, off, bytes));
        assert!(self.rx.in_use() <= self.cap && self.rx.high_water() <= self.cap);
        true
    }

    fn release(&mut self, i: usize) {
        if self.held.is_empty() {
            // An unknown id changes nothing.
            assert_eq!(self.rx.release(self.next_id + i as u64), None);
            return;
        }
        let (id, _, _) = self.held.remove(i % self.held.len());
        if let Some(pos) = self.rx.release(id) {
            assert!(
                pos > self.released,
                "released position went from {} to {pos}",
                self.released
            );
            self.released = pos;
            if self.synced {
                self.tx
                    .credit(pos)
                    .unwrap_or_else(|e| panic!("an honest sender refused our credit: {e}"));
            }
        }
        assert_eq!(
            self.rx.release(id),
            None,
            "a repeated release changes nothing"
        );
    }
}

fn data_header(from_id: u32, len: u32, offset: u64, end: u64, seq: u64) -> Header {
    Header {
        kind: Kind::Data,
        flags: FLAG_LAST,
        tag: 1,
        src: Addr::controller(from_id),
        dst: Addr::tstore(0),
        query: 1,
        object: seq,
        chunk: 0,
        len,
        ring_offset: offset,
        ring_end: end,
        seq,
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::decode(data) {
        assert_eq!(Header::decode(&h.encode()).ok(), Some(h));
    }
    let mut inp = Input(data);
    let (Some(b0), Some(b1)) = (inp.u8(), inp.u8()) else {
        return;
    };
    let cap = 64 * (1 + u64::from(b0));
    let align = if b1 & 1 == 1 { 64 } else { 1 };
    let from = 1 + usize::from((b1 >> 1) & 1);
    let map = map();
    let from_id = map.nodes()[from].id;
    let mut r = Receiver {
        map,
        from,
        cap,
        align,
        rx: RxRing::with_align(cap, align),
        seq: 0,
        held: Vec::new(),
        next_id: 0,
        released: 0,
        tx: TxRing::with_align(cap, align),
        synced: true,
    };
    while let Some(op) = inp.u8() {
        match op % 4 {
            0 => {
                let Some(m) = inp.take::<HEADER_LEN>() else {
                    return;
                };
                if r.on_message(&m) {
                    r.synced = false;
                }
            }
            1 => {
                let (Some(kind), Some(version), Some(src), Some(dst)) =
                    (inp.u8(), inp.u8(), inp.u32(), inp.u32())
                else {
                    return;
                };
                let (Some(len), Some(offset), Some(end), Some(delta)) =
                    (inp.u16(), inp.u64(), inp.u64(), inp.u8())
                else {
                    return;
                };
                let mut h = data_header(from_id, u32::from(len), offset, end, 0);
                h.src = Addr(src);
                h.dst = Addr(dst);
                h.seq = r.seq.wrapping_add(delta as i8 as u64);
                let mut b = h.encode_as(if version < 0xf0 { VERSION } else { version });
                b[3] = kind % 4;
                let crc = crc32fast::hash(&b[..68]);
                b[68..72].copy_from_slice(&crc.to_le_bytes());
                if r.on_message(&b) {
                    r.synced = false;
                }
            }
            2 => {
                let Some(len) = inp.u16() else {
                    return;
                };
                let len = u64::from(len) % (cap + 1);
                let Some(p) = r.tx.place(len) else {
                    continue;
                };
                assert!(p.offset + round_up(len, align) <= cap && p.offset % align == 0);
                let (mut off, mut l, mut end) = (p.offset, len, p.end);
                match op >> 2 {
                    0 => {}
                    1 => off = off.wrapping_add(align),
                    2 => off = off.wrapping_sub(align),
                    3 => end = end.wrapping_add(align),
                    4 => end = end.wrapping_sub(align),
                    5 => l += align,
                    6 => l = l.saturating_sub(align),
                    7 => end = end.wrapping_add(cap),
                    8 => end = end.wrapping_sub(cap),
                    9 => off = cap,
                    k => end = end.wrapping_add(u64::from(k)),
                }
                let honest = (off, l, end) == (p.offset, len, p.end);
                let h = data_header(from_id, l as u32, off, end, r.seq);
                let accepted = r.on_message(&h.encode());
                if honest && r.synced {
                    assert!(
                        accepted,
                        "an honest placement {p:?} of {len} bytes was refused"
                    );
                    r.tx.commit(p);
                } else if accepted {
                    r.synced = false;
                }
            }
            _ => {
                let Some(i) = inp.u8() else {
                    return;
                };
                r.release(usize::from(i));
            }
        }
    }
});
