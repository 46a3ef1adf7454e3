//! The task protocol between the primary controller and the Tstores.
//!
//! Every message is one router *object* (cut into chunks by
//! [`smrdb_router::RouterHandle::send_bytes`] when it is larger than a chunk; the receiver
//! reassembles it per (sending node, object id) with a [`Reassembler`]) whose router
//! header carries tag [`TAG_TASK`] and the task id in its `query` field. The object's
//! bytes are a postcard-encoded [`Envelope`]:
//!
//! ```text
//! Envelope { version: u16 (= PROTO_VERSION), task: u64 (= header query id), body }
//! body = Request(..)   primary controller -> Tstore(s)
//!      | Reply(..)     Tstore -> the controller that sent the request
//! Request: CreateTable{name, schema} | DropTable{name}          (broadcast to ALL_TSTORES)
//!          Insert{table, Arrow IPC rows}                       (point-to-point, one per Tstore)
//!          Update{table, assignments, filter, dry_run} | Delete{table, filter}
//!          | Stages{fragment} | Stats                          (broadcast)
//!          Stmt{id, write: Insert | Update | Delete}           (a write of the primary's
//!                                                              statement log, either way)
//!          LastStmt                                            (broadcast, at start-up)
//! Reply:   Ack{count} | Error{sqlstate, message, echo}
//!          (Ack to LastStmt: count = the Tstore's last applied statement id)
//!          | Done{stages: [{stage, operators: [(rows, ns)], rows, bytes, chunks}]}
//!          | Stats{core, tables: [{name, rows, bytes, stats}], router: [per-peer counters]}
//! ```
//! Expressions (UPDATE, DELETE) are `datafusion-proto` bytes over the table's
//! columns; `fragment` is a postcard [`smrdb_tstore::exec::fragment::Fragment`].
//!
//! Every request gets exactly one reply from every Tstore it reached. [`decode`]
//! validates the version, the task id against the header, and every name and size,
//! and returns errors, never panics.
//!
//! ## Exchange chunks (tag [`TAG_XCHG`])
//!
//! While a `Stages` task runs, every stage's output goes to its exchange's consumers
//! (every Tstore for a broadcast, the primary's controller for a gather) as a sequence
//! of router chunks, each its own object, header query id = the task id, header src
//! = the sending Tstore (or the primary's controller). A chunk's bytes are an Arrow
//! IPC stream (schema + batches; empty when the chunk carries no rows) followed by a
//! 16-byte trailer, so the IPC stream starts at the chunk's (64-byte aligned) start
//! and is read in place:
//!
//! ```text
//! [ Arrow IPC stream ... | version u16 (= CHUNK_VERSION) | flags u16 | exchange u16 | 0 u16 | rows u64 ]
//! flags: bit 0 LAST (the sender's last chunk of this exchange), bit 1 ABORT (the sender
//!        failed; implies LAST; receivers fail the task)
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use smrdb_router::{Delivery, PeerStats};
use smrdb_tstore::{StmtWrite, TableSchema, TableStats};

use crate::error::{Error, Result};

/// Version of the task protocol (5: the query engine v2's stages and exchanges).
pub const PROTO_VERSION: u16 = 5;
/// Router header tag of task messages.
pub const TAG_TASK: u16 = 0x5401;
/// Router header tag of exchange chunks.
pub const TAG_XCHG: u16 = 0x5403;
/// Version of the exchange-chunk trailer.
pub const CHUNK_VERSION: u16 = 2;
/// Bytes of the exchange-chunk trailer.
pub const CHUNK_TRAILER: usize = 16;
/// Chunk flag: the sender's last chunk of this exchange.
pub const CHUNK_LAST: u16 = 1;
/// Chunk flag: the sender failed (implies [`CHUNK_LAST`]).
pub const CHUNK_ABORT: u16 = 2;
/// Most operators a stage report carries.
pub const MAX_OPERATORS: usize = 1 << 16;
/// Largest object a receiver reassembles (bytes).
pub const MAX_OBJECT: usize = 1 << 30;
/// Longest table name accepted.
pub const MAX_NAME: usize = 1024;

/// One message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`PROTO_VERSION`].
    pub version: u16,
    /// Task id (also the router header's query id).
    pub task: u64,
    /// What it says.
    pub body: Body,
}

/// Request or reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Body {
    /// Primary controller -> Tstore.
    Request(Request),
    /// Tstore -> controller.
    Reply(Reply),
}

/// What the primary asks a Tstore to do.
#[allow(clippy::large_enum_variant)] // decoded once per task; boxing buys nothing
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Create a table (replacing a leftover slice of the same name: the primary's
    /// catalog is the authority on which tables exist).
    CreateTable {
        /// Table name.
        name: String,
        /// Its schema.
        schema: TableSchema,
    },
    /// Drop a table (absent is fine).
    DropTable {
        /// Table name.
        name: String,
    },
    /// Insert rows into this Tstore's slice.
    Insert {
        /// Table name.
        table: String,
        /// The rows (an Arrow IPC stream), already of the table's types.
        ipc: Vec<u8>,
    },
    /// Update this Tstore's rows.
    Update {
        /// Table name.
        table: String,
        /// (column index, new value expression as `datafusion-proto` bytes).
        assignments: Vec<(usize, Vec<u8>)>,
        /// Rows where this is TRUE are updated (all when absent).
        filter: Option<Vec<u8>>,
        /// Only evaluate (the all-or-nothing dry run); change nothing.
        dry_run: bool,
    },
    /// Delete this Tstore's rows.
    Delete {
        /// Table name.
        table: String,
        /// Rows where this is TRUE are deleted (all when absent).
        filter: Option<Vec<u8>>,
    },
    /// Run this Tstore's stages of a query: a postcard
    /// [`smrdb_tstore::exec::fragment::Fragment`].
    Stages {
        /// The fragment.
        fragment: Vec<u8>,
    },
    /// Report rows and bytes of every table.
    Stats,
    /// This Tstore's share of the primary's logged statement `id`: applied unless the
    /// Tstore already applied statement `id` or a later one (then `Ack { count: 0 }`).
    /// See `crate::redo`.
    Stmt {
        /// Statement id (increasing).
        id: u64,
        /// The write (rows already coerced by the primary).
        write: StmtWrite,
    },
    /// Report the last statement id applied ([`Request::Stmt`]) as `Ack { count }`.
    LastStmt,
}

/// A table slice's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceStats {
    /// Table name.
    pub name: String,
    /// Rows, bytes and column statistics of the slice.
    pub stats: TableStats,
}

/// What a Tstore measured running one stage (EXPLAIN ANALYZE).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    /// Stage id.
    pub stage: u16,
    /// Per operator, in display order: (rows produced, compute nanoseconds).
    pub operators: Vec<(u64, u64)>,
    /// Rows, bytes and chunks it sent to its exchange.
    pub sent: (u64, u64, u64),
}

/// A Tstore's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Done; `count` rows affected.
    Ack {
        /// Rows inserted, updated or deleted (0 for DDL).
        count: u64,
    },
    /// Failed.
    Error {
        /// SQLSTATE.
        sqlstate: String,
        /// Message.
        message: String,
        /// The failure was caused elsewhere (a peer aborted, a node was lost) and is
        /// reported by its cause too: the primary reports a cause first.
        echo: bool,
    },
    /// A `Stages` task finished on this Tstore.
    Done {
        /// One report per stage.
        stages: Vec<StageReport>,
    },
    /// Statistics.
    Stats {
        /// The core the Tstore is pinned to, if pinned.
        core: Option<u32>,
        /// One entry per table.
        tables: Vec<SliceStats>,
        /// The node's router counters, per remote peer.
        router: Vec<PeerStats>,
    },
}

/// Encodes an envelope.
///
/// # Errors
/// [`Error::Protocol`] if serialisation fails.
pub fn encode(task: u64, body: Body) -> Result<Vec<u8>> {
    postcard::to_stdvec(&Envelope {
        version: PROTO_VERSION,
        task,
        body,
    })
    .map_err(|e| Error::Protocol(format!("encode: {e}")))
}

fn check_name(what: &str, n: &str) -> Result<()> {
    if n.is_empty() || n.len() > MAX_NAME {
        return Err(Error::Protocol(format!(
            "{what} name of {} bytes is out of range",
            n.len()
        )));
    }
    Ok(())
}

/// Decodes and validates an envelope that arrived with header query id `task`.
///
/// # Errors
/// [`Error::Protocol`] describing the first problem.
pub fn decode(bytes: &[u8], task: u64) -> Result<Envelope> {
    let env: Envelope =
        postcard::from_bytes(bytes).map_err(|e| Error::Protocol(format!("undecodable: {e}")))?;
    if env.version != PROTO_VERSION {
        return Err(Error::Protocol(format!(
            "version {} (this node speaks {PROTO_VERSION})",
            env.version
        )));
    }
    if env.task != task {
        return Err(Error::Protocol(format!(
            "task id {} differs from the header's {task}",
            env.task
        )));
    }
    match &env.body {
        Body::Request(r) => match r {
            Request::CreateTable { name, schema } => {
                check_name("table", name)?;
                if schema.columns.is_empty() {
                    return Err(Error::Protocol("a table without columns".into()));
                }
                for c in &schema.columns {
                    check_name("column", &c.name)?;
                }
            }
            Request::DropTable { name } => check_name("table", name)?,
            Request::Insert { table, .. } => check_name("table", table)?,
            Request::Update { table, .. } | Request::Delete { table, .. } => {
                check_name("table", table)?
            }
            Request::Stages { fragment } => {
                smrdb_tstore::exec::fragment::Fragment::decode(fragment)
                    .map_err(Error::Protocol)?;
            }
            Request::Stats | Request::LastStmt => {}
            Request::Stmt { write, .. } => match write {
                StmtWrite::Insert { table, .. } => check_name("table", table)?,
                StmtWrite::Update { table, .. } | StmtWrite::Delete { table, .. } => {
                    check_name("table", table)?
                }
            },
        },
        Body::Reply(r) => match r {
            Reply::Error { sqlstate, .. } => {
                if sqlstate.len() != 5 || !sqlstate.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Error::Protocol(format!("bad SQLSTATE {sqlstate:?}")));
                }
            }
            Reply::Done { stages } => {
                if stages.len() > smrdb_tstore::exec::fragment::MAX_STAGES
                    || stages.iter().any(|s| s.operators.len() > MAX_OPERATORS)
                {
                    return Err(Error::Protocol("stage reports out of range".into()));
                }
            }
            Reply::Stats { tables, .. } => {
                for t in tables {
                    check_name("table", &t.name)?;
                }
            }
            Reply::Ack { .. } => {}
        },
    }
    Ok(env)
}

/// The trailer of an exchange chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkTrailer {
    /// [`CHUNK_LAST`] / [`CHUNK_ABORT`].
    pub flags: u16,
    /// Exchange id.
    pub exchange: u16,
    /// Rows in the chunk.
    pub rows: u64,
}

impl ChunkTrailer {
    /// The 16 trailer bytes.
    pub fn encode(&self) -> [u8; CHUNK_TRAILER] {
        let mut b = [0u8; CHUNK_TRAILER];
        b[0..2].copy_from_slice(&CHUNK_VERSION.to_le_bytes());
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..6].copy_from_slice(&self.exchange.to_le_bytes());
        b[8..16].copy_from_slice(&self.rows.to_le_bytes());
        b
    }

    /// Splits a chunk into its IPC bytes and trailer, validating the trailer.
    ///
    /// # Errors
    /// [`Error::Protocol`]: too short, wrong version, unknown flags.
    pub fn split(chunk: &[u8]) -> Result<(&[u8], ChunkTrailer)> {
        let Some(at) = chunk.len().checked_sub(CHUNK_TRAILER) else {
            return Err(Error::Protocol(format!(
                "exchange chunk of {} bytes has no trailer",
                chunk.len()
            )));
        };
        let t = &chunk[at..];
        let u16_at = |i: usize| u16::from_le_bytes([t[i], t[i + 1]]);
        let version = u16_at(0);
        if version != CHUNK_VERSION {
            return Err(Error::Protocol(format!(
                "exchange chunk version {version} (this node speaks {CHUNK_VERSION})"
            )));
        }
        let flags = u16_at(2);
        if flags & !(CHUNK_LAST | CHUNK_ABORT) != 0 || u16_at(6) != 0 {
            return Err(Error::Protocol(format!("exchange chunk flags {flags:#x}")));
        }
        let mut r = [0u8; 8];
        r.copy_from_slice(&t[8..16]);
        Ok((
            &chunk[..at],
            ChunkTrailer {
                flags,
                exchange: u16_at(4),
                rows: u64::from_le_bytes(r),
            },
        ))
    }
}

/// A complete object: who sent it and its bytes.
#[derive(Debug)]
pub struct Object {
    /// Sending node.
    pub from: u32,
    /// Sending consumer.
    pub src: smrdb_router::Addr,
    /// Header query id.
    pub query: u64,
    /// Header tag.
    pub tag: u16,
    /// The bytes.
    pub bytes: Vec<u8>,
}

struct Partial {
    next: u32,
    bytes: Vec<u8>,
    /// Too large: its remaining chunks are dropped.
    discard: bool,
}

/// Reassembles chunked objects per (sending node, object id). Chunk bytes are copied
/// out and the chunk dropped at once (releasing ring space).
///
/// An object may hold at most [`MAX_OBJECT`] bytes: the partial copy of a larger one is
/// freed and its remaining chunks are dropped as they arrive. When it is a Tstore's
/// reply, [`Reassembler::push`] hands out an [`Reply::Error`] (SQLSTATE 54000, naming
/// the size) in its place, so the task waiting for it fails at once instead of waiting
/// for its timeout.
pub struct Reassembler {
    partial: HashMap<(u32, u64), Partial>,
    max: usize,
}

impl Default for Reassembler {
    fn default() -> Self {
        Self::with_max(MAX_OBJECT)
    }
}

impl Reassembler {
    /// A fresh reassembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reassembler of objects of at most `max` bytes (tests; [`Reassembler::new`]
    /// takes [`MAX_OBJECT`]).
    pub fn with_max(max: usize) -> Self {
        Reassembler {
            partial: HashMap::new(),
            max,
        }
    }

    /// The stand-in for a Tstore's reply larger than the limit: an error reply to the
    /// same task.
    fn too_large(&self, d: &Delivery, tstore: u32) -> Result<Object> {
        let reply = Reply::Error {
            echo: false,
            sqlstate: "54000".into(),
            message: format!(
                "the reply of tstore {tstore} (node {}) to this statement is larger than {} MiB, \
                 the most one Tstore may return for one task; make the query return fewer rows \
                 or columns",
                d.from,
                self.max >> 20
            ),
        };
        Ok(Object {
            from: d.from,
            src: d.spec.src,
            query: d.spec.query,
            tag: d.spec.tag,
            bytes: encode(d.spec.query, Body::Reply(reply))?,
        })
    }

    /// Adds a chunk; returns the object when it is complete.
    ///
    /// # Errors
    /// [`Error::Protocol`] for an out-of-order chunk, or an object larger than the
    /// limit that is not a Tstore's reply (its partial copy is discarded; see the type's
    /// documentation for replies).
    pub fn push(&mut self, d: Delivery) -> Result<Option<Object>> {
        let key = (d.from, d.spec.object);
        let data = d.data.bytes();
        if d.spec.chunk == 0 && d.spec.last && data.len() <= self.max {
            let obj = Object {
                from: d.from,
                src: d.spec.src,
                query: d.spec.query,
                tag: d.spec.tag,
                bytes: data.to_vec(),
            };
            drop(d);
            return Ok(Some(obj));
        }
        let max = self.max;
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            next: 0,
            bytes: Vec::new(),
            discard: false,
        });
        if d.spec.chunk != p.next {
            let expected = p.next;
            self.partial.remove(&key);
            return Err(Error::Protocol(format!(
                "chunk {} of object {:#x} from node {} (expected chunk {expected})",
                d.spec.chunk, d.spec.object, d.from
            )));
        }
        p.next += 1;
        if p.discard {
            if d.spec.last {
                self.partial.remove(&key);
            }
            return Ok(None);
        }
        if p.bytes.len() + data.len() > max {
            let had = p.bytes.len() + data.len();
            p.bytes = Vec::new();
            p.discard = true;
            if d.spec.last {
                self.partial.remove(&key);
            }
            return match d.spec.src.as_tstore() {
                Some(t) => self.too_large(&d, t).map(Some),
                None => Err(Error::Protocol(format!(
                    "object {:#x} from node {} exceeds {max} bytes ({had} so far); dropped",
                    d.spec.object, d.from
                ))),
            };
        }
        p.bytes.extend_from_slice(data);
        if d.spec.last {
            let p = self.partial.remove(&key).unwrap_or(Partial {
                next: 0,
                bytes: Vec::new(),
                discard: false,
            });
            return Ok(Some(Object {
                from: d.from,
                src: d.spec.src,
                query: d.spec.query,
                tag: d.spec.tag,
                bytes: p.bytes,
            }));
        }
        Ok(None)
    }

    /// Forgets partial objects from a lost node.
    pub fn forget(&mut self, node: u32) {
        self.partial.retain(|(n, _), _| *n != node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smrdb_router::{Addr, Inbound, NodeSpec, Router, RouterConfig, SendSpec};
    use smrdb_transport::{FabricConfig, FabricKind};
    use smrdb_tstore::{ColumnDef, SqlType};

    #[test]
    fn oversized_replies_become_errors_and_their_rest_is_dropped() {
        // A one-node router on shm: real deliveries (chunk refs) to the controller.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let nodes = vec![NodeSpec {
            id: 0,
            addr: l.local_addr().unwrap().to_string(),
            tstores: 1,
        }];
        let cfg = RouterConfig::new(0, nodes, FabricConfig::new(FabricKind::Shm, b"s".to_vec()));
        let (router, inboxes) = Router::start::<smrdb_transport::shm::Shm>(cfg, l).unwrap();
        let h = router.handle();
        let deliver = |src: Addr, object: u64, chunk: u32, last: bool, len: usize| {
            let mut buf = h.alloc(len).unwrap();
            buf.as_mut_slice().fill(7);
            let spec = SendSpec {
                src,
                dst: Addr::controller(0),
                tag: TAG_TASK,
                query: 42,
                object,
                chunk,
                last,
            };
            h.send(buf, spec).unwrap();
            match inboxes[0].recv(std::time::Duration::from_secs(5)).unwrap() {
                Inbound::Data(d) => d,
                other => panic!("{other:?}"),
            }
        };
        let mut asm = Reassembler::with_max(100);
        let ts = Addr::tstore(0);
        // Expect: a reply object within the limit is reassembled.
        assert!(asm.push(deliver(ts, 1, 0, false, 60)).unwrap().is_none());
        let o = asm.push(deliver(ts, 1, 1, true, 40)).unwrap().unwrap();
        assert_eq!(o.bytes.len(), 100);
        // Expect: a reply that grows past the limit is replaced by an error reply to the
        // same task (54000, naming the Tstore and the limit) ...
        assert!(asm.push(deliver(ts, 2, 0, false, 60)).unwrap().is_none());
        let o = asm.push(deliver(ts, 2, 1, false, 60)).unwrap().unwrap();
        let env = decode(&o.bytes, 42).unwrap();
        match env.body {
            Body::Reply(Reply::Error {
                sqlstate, message, ..
            }) => {
                assert_eq!(sqlstate, "54000");
                assert!(message.contains("tstore 0"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // ... and its remaining chunks are dropped without errors, the last included.
        assert!(asm.push(deliver(ts, 2, 2, false, 60)).unwrap().is_none());
        assert!(asm.push(deliver(ts, 2, 3, true, 10)).unwrap().is_none());
        // Expect: a single chunk over the limit, likewise.
        let o = asm.push(deliver(ts, 3, 0, true, 101)).unwrap().unwrap();
        assert!(matches!(
            decode(&o.bytes, 42).unwrap().body,
            Body::Reply(Reply::Error { .. })
        ));
        // Expect: a request (from a controller) over the limit is an error once, its
        // rest dropped quietly.
        let c = Addr::controller(0);
        assert!(asm.push(deliver(c, 4, 0, false, 60)).unwrap().is_none());
        assert!(asm.push(deliver(c, 4, 1, false, 60)).is_err());
        assert!(asm.push(deliver(c, 4, 2, true, 60)).unwrap().is_none());
        // Nothing is left over: the next object from the same node is whole.
        assert!(asm.partial.is_empty());
        let o = asm.push(deliver(ts, 5, 0, true, 30)).unwrap().unwrap();
        assert_eq!(o.bytes, vec![7u8; 30]);
        drop(inboxes);
        router.shutdown();
    }

    #[test]
    fn round_trip_and_validation() {
        let schema = TableSchema::new(vec![ColumnDef::new("a", SqlType::Integer, true)]);
        let bodies = vec![
            Body::Request(Request::CreateTable {
                name: "t".into(),
                schema,
            }),
            Body::Request(Request::Insert {
                table: "t".into(),
                ipc: vec![1, 2, 3],
            }),
            Body::Request(Request::Stats),
            Body::Request(Request::Stmt {
                id: 7,
                write: StmtWrite::Insert {
                    table: "t".into(),
                    ipc: vec![4],
                },
            }),
            Body::Request(Request::Stmt {
                id: 8,
                write: StmtWrite::Delete {
                    table: "t".into(),
                    filter: None,
                },
            }),
            Body::Request(Request::LastStmt),
            Body::Reply(Reply::Ack { count: 3 }),
            Body::Reply(Reply::Done {
                stages: vec![StageReport {
                    stage: 1,
                    operators: vec![(5, 100)],
                    sent: (5, 640, 1),
                }],
            }),
            Body::Reply(Reply::Error {
                sqlstate: "42P01".into(),
                message: "no".into(),
                echo: false,
            }),
        ];
        for b in bodies {
            let bytes = encode(9, b.clone()).unwrap();
            let env = decode(&bytes, 9).unwrap();
            assert_eq!(env.body, b);
            assert!(decode(&bytes, 8).is_err(), "task mismatch");
            for cut in 0..bytes.len() {
                let _ = decode(&bytes[..cut], 9); // never panics
            }
        }
        let bad = encode(
            1,
            Body::Reply(Reply::Error {
                sqlstate: "bad".into(),
                message: String::new(),
                echo: false,
            }),
        )
        .unwrap();
        assert!(decode(&bad, 1).is_err());
        let mut v = encode(1, Body::Request(Request::Stats)).unwrap();
        v[0] = 7; // version
        assert!(decode(&v, 1).is_err());
        let empty = encode(
            1,
            Body::Request(Request::DropTable {
                name: String::new(),
            }),
        )
        .unwrap();
        assert!(decode(&empty, 1).is_err());
        let bad_fragment = encode(
            1,
            Body::Request(Request::Stages {
                fragment: vec![0, 1, 2],
            }),
        )
        .unwrap();
        assert!(decode(&bad_fragment, 1).is_err());
        // Garbage never panics.
        let mut x: u64 = 1;
        for _ in 0..2000 {
            let buf: Vec<u8> = (0..(x % 64) as usize)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&buf, 1);
        }
    }
}
