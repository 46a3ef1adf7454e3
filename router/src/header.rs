//! The router's message header: the small *pointer message* that follows every write
//! into a peer's ring, and the credit messages that come back.
//!
//! Fixed size, little-endian, versioned, protected by a CRC-32 of its first 68 bytes:
//!
//! ```text
//!  0 magic u16 = 0x4D53 ("SM")   2 version u8   3 kind u8 (1 DATA, 2 CREDIT)
//!  4 flags u16 (bit 0 LAST chunk of its object)   6 tag u16 (what the payload is; the application's)
//!  8 src u32 (address of the sending consumer)    12 dst u32 (address: a Tstore, a controller, or a broadcast)
//! 16 query u64        24 object u64 (sender-unique id of the object the chunk belongs to)
//! 32 chunk u32 (index of the chunk in its object)  36 len u32 (payload bytes)
//! 40 ring_offset u64 (where the payload starts in the receiver's ring for us)
//! 48 ring_end u64 (DATA: the sender's ring stream position after the payload, whose
//!                  length is rounded up to a multiple of 64 so every chunk starts 64-byte aligned;
//!                  CREDIT: the receiver's released position)
//! 56 seq u64 (per-connection message sequence, from 0)
//! 64 reserved u32     68 crc32 u32 (of bytes 0..68)
//! ```

use crate::{Addr, ClusterMap, RouterError};

/// Bytes of an encoded header.
pub const HEADER_LEN: usize = 72;
/// Header magic.
pub const MAGIC: u16 = 0x4D53;
/// Header version (2: ring chunks start at 64-byte multiples, see `ring_end`).
pub const VERSION: u8 = 2;
/// Flag: the last chunk of its object.
pub const FLAG_LAST: u16 = 1;

const _: () = assert!(
    HEADER_LEN <= smrdb_transport::MAX_MSG,
    "a header fits in one transport message"
);

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A chunk of payload was written into the receiver's ring.
    Data = 1,
    /// The receiver released ring space up to `ring_end`.
    Credit = 2,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Message kind.
    pub kind: Kind,
    /// Flags ([`FLAG_LAST`]).
    pub flags: u16,
    /// Application tag of the payload.
    pub tag: u16,
    /// Sending consumer.
    pub src: Addr,
    /// Destination consumer(s).
    pub dst: Addr,
    /// Query id.
    pub query: u64,
    /// Object id.
    pub object: u64,
    /// Chunk index within the object.
    pub chunk: u32,
    /// Payload length.
    pub len: u32,
    /// Payload offset in the receiver's ring.
    pub ring_offset: u64,
    /// Stream position after the payload (DATA) / released position (CREDIT).
    pub ring_end: u64,
    /// Per-connection sequence number.
    pub seq: u64,
}

impl Header {
    /// A credit message.
    pub fn credit(released: u64, seq: u64) -> Header {
        Header {
            kind: Kind::Credit,
            flags: 0,
            tag: 0,
            src: Addr(0),
            dst: Addr(0),
            query: 0,
            object: 0,
            chunk: 0,
            len: 0,
            ring_offset: 0,
            ring_end: released,
            seq,
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        self.encode_as(VERSION)
    }

    /// Encodes with another version byte (protocol tests).
    #[doc(hidden)]
    pub fn encode_as(&self, version: u8) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
        b[2] = version;
        b[3] = self.kind as u8;
        b[4..6].copy_from_slice(&self.flags.to_le_bytes());
        b[6..8].copy_from_slice(&self.tag.to_le_bytes());
        b[8..12].copy_from_slice(&self.src.0.to_le_bytes());
        b[12..16].copy_from_slice(&self.dst.0.to_le_bytes());
        b[16..24].copy_from_slice(&self.query.to_le_bytes());
        b[24..32].copy_from_slice(&self.object.to_le_bytes());
        b[32..36].copy_from_slice(&self.chunk.to_le_bytes());
        b[36..40].copy_from_slice(&self.len.to_le_bytes());
        b[40..48].copy_from_slice(&self.ring_offset.to_le_bytes());
        b[48..56].copy_from_slice(&self.ring_end.to_le_bytes());
        b[56..64].copy_from_slice(&self.seq.to_le_bytes());
        let crc = crc32fast::hash(&b[..68]);
        b[68..72].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks the framing (length, magic, version, kind, checksum). The
    /// router checks the rest (sequence, ring bounds, addresses) against its state.
    ///
    /// # Errors
    /// [`RouterError::BadHeader`] naming the first thing wrong.
    pub fn decode(b: &[u8]) -> Result<Header, RouterError> {
        let bad = |what: String| RouterError::BadHeader(what);
        if b.len() != HEADER_LEN {
            return Err(bad(format!("{} bytes, expected {HEADER_LEN}", b.len())));
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u16_at(0) != MAGIC {
            return Err(bad(format!("magic {:#06x}", u16_at(0))));
        }
        if b[2] != VERSION {
            return Err(bad(format!("version {} (we speak {VERSION})", b[2])));
        }
        if crc32fast::hash(&b[..68]) != u32_at(68) {
            return Err(bad("checksum mismatch".into()));
        }
        let kind = match b[3] {
            1 => Kind::Data,
            2 => Kind::Credit,
            k => return Err(bad(format!("unknown kind {k}"))),
        };
        Ok(Header {
            kind,
            flags: u16_at(4),
            tag: u16_at(6),
            src: Addr(u32_at(8)),
            dst: Addr(u32_at(12)),
            query: u64_at(16),
            object: u64_at(24),
            chunk: u32_at(32),
            len: u32_at(36),
            ring_offset: u64_at(40),
            ring_end: u64_at(48),
            seq: u64_at(56),
        })
    }

    /// Whether this is the last chunk of its object.
    pub fn is_last(&self) -> bool {
        self.flags & FLAG_LAST != 0
    }
}

/// The checks of an inbound header that depend only on the cluster map, done by the
/// receiving router after [`Header::decode`] and the sequence check, before it consults
/// the ring ([`crate::ring::RxRing::accept`]): a DATA header's source must be a consumer
/// living on the sending node (the node at cluster index `from`), and its destination
/// must name a consumer on this node (the node at index `me`) or be a broadcast. A
/// CREDIT header carries no addresses and always passes.
///
/// Pure (no I/O, no state): the fuzz target `header` calls it on arbitrary headers.
///
/// # Errors
/// A description of the first thing wrong (also when `me` or `from` is not an index of
/// `map`, or both name the same node).
pub fn validate(h: &Header, map: &ClusterMap, me: usize, from: usize) -> Result<(), String> {
    let n = map.nodes().len();
    if me >= n || from >= n || me == from {
        return Err(format!(
            "node indexes {from} -> {me} do not name two nodes of a {n}-node cluster"
        ));
    }
    if h.kind != Kind::Data {
        return Ok(());
    }
    if !map.lives_on(h.src, from) {
        return Err(format!(
            "source {:?} does not live on node {}",
            h.src,
            map.nodes()[from].id
        ));
    }
    let here = match h.dst {
        Addr::ALL_TSTORES | Addr::ALL_CONTROLLERS => true,
        a => map.lives_on(a, me),
    };
    if !here {
        return Err(format!("destination {:?} is not on this node", h.dst));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kind: Kind::Data,
            flags: FLAG_LAST,
            tag: 7,
            src: Addr(3),
            dst: Addr::ALL_TSTORES,
            query: 0x1122_3344_5566_7788,
            object: 42,
            chunk: 9,
            len: 4096,
            ring_offset: 8192,
            ring_end: 1 << 40,
            seq: 5,
        }
    }

    #[test]
    fn round_trips() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
        let c = Header::credit(99, 3);
        assert_eq!(Header::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn layout_is_little_endian_and_fixed() {
        let b = sample().encode();
        assert_eq!(&b[0..2], &[0x53, 0x4D]);
        assert_eq!(b[2], VERSION);
        assert_eq!(b[3], 1);
        assert_eq!(&b[36..40], &4096u32.to_le_bytes());
        assert_eq!(&b[56..64], &5u64.to_le_bytes());
    }

    #[test]
    fn refuses_malformed_framing() {
        // Expect: each corruption is refused with a reason naming it.
        let good = sample().encode();
        let mut short = good.to_vec();
        short.pop();
        assert!(Header::decode(&short)
            .unwrap_err()
            .to_string()
            .contains("bytes"));
        let mut m = good;
        m[0] ^= 1;
        assert!(Header::decode(&m)
            .unwrap_err()
            .to_string()
            .contains("magic"));
        let v = sample().encode_as(VERSION + 1);
        assert!(Header::decode(&v)
            .unwrap_err()
            .to_string()
            .contains("version"));
        let mut k = good;
        k[3] = 9;
        let crc = crc32fast::hash(&k[..68]);
        k[68..72].copy_from_slice(&crc.to_le_bytes());
        assert!(Header::decode(&k).unwrap_err().to_string().contains("kind"));
        let mut c = good;
        c[20] ^= 0x40;
        assert!(Header::decode(&c)
            .unwrap_err()
            .to_string()
            .contains("checksum"));
    }
}
