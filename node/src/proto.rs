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
//!          Insert{table, rows}                                 (point-to-point, one per Tstore)
//!          Update{table, assignments, filter} | Delete{table, filter} | Query{fragment}
//!          | Stats                                             (broadcast)
//! Reply:   Ack{count} | Error{sqlstate, message} | Result{Arrow IPC stream}
//!          | Stats{core, tables: [{name, rows, bytes}]}
//! ```
//!
//! Every request gets exactly one reply from every Tstore it reached. [`decode`]
//! validates the version, the task id against the header, and every name and size,
//! and returns errors, never panics.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use smrdb_router::Delivery;
use smrdb_tstore::{Expr, Fragment, TableSchema, Value};

use crate::error::{Error, Result};

/// Version of the task protocol.
pub const PROTO_VERSION: u16 = 1;
/// Router header tag of task messages.
pub const TAG_TASK: u16 = 0x5401;
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
        /// Rows in table column order, already coerced by the primary.
        rows: Vec<Vec<Value>>,
    },
    /// Update this Tstore's rows.
    Update {
        /// Table name.
        table: String,
        /// (column index, new value expression).
        assignments: Vec<(usize, Expr)>,
        /// Rows where this is TRUE are updated (all when absent).
        filter: Option<Expr>,
    },
    /// Delete this Tstore's rows.
    Delete {
        /// Table name.
        table: String,
        /// Rows where this is TRUE are deleted (all when absent).
        filter: Option<Expr>,
    },
    /// Run a fragment on this Tstore's slice.
    Query {
        /// The secondary query.
        fragment: Fragment,
    },
    /// Report rows and bytes of every table.
    Stats,
}

/// Row and byte counts of one table slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStats {
    /// Table name.
    pub name: String,
    /// Rows in the slice.
    pub rows: u64,
    /// Bytes of Arrow data.
    pub bytes: u64,
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
    },
    /// Query result: an Arrow IPC stream (empty = no batches).
    Result {
        /// The encoded batches.
        ipc: Vec<u8>,
    },
    /// Statistics.
    Stats {
        /// The core the Tstore is pinned to, if pinned.
        core: Option<u32>,
        /// One entry per table.
        tables: Vec<TableStats>,
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
            Request::Insert { table, rows } => {
                check_name("table", table)?;
                if let Some(first) = rows.first() {
                    if rows.iter().any(|r| r.len() != first.len()) {
                        return Err(Error::Protocol("rows of different widths".into()));
                    }
                }
            }
            Request::Update { table, .. } | Request::Delete { table, .. } => {
                check_name("table", table)?
            }
            Request::Query { fragment } => check_name("table", &fragment.table)?,
            Request::Stats => {}
        },
        Body::Reply(r) => match r {
            Reply::Error { sqlstate, .. } => {
                if sqlstate.len() != 5 || !sqlstate.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return Err(Error::Protocol(format!("bad SQLSTATE {sqlstate:?}")));
                }
            }
            Reply::Stats { tables, .. } => {
                for t in tables {
                    check_name("table", &t.name)?;
                }
            }
            Reply::Ack { .. } | Reply::Result { .. } => {}
        },
    }
    Ok(env)
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
}

/// Reassembles chunked objects per (sending node, object id). Chunk bytes are copied
/// out and the chunk dropped at once (releasing ring space).
#[derive(Default)]
pub struct Reassembler {
    partial: HashMap<(u32, u64), Partial>,
}

impl Reassembler {
    /// A fresh reassembler.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a chunk; returns the object when it is complete.
    ///
    /// # Errors
    /// [`Error::Protocol`] for an out-of-order chunk or an object larger than
    /// [`MAX_OBJECT`] (the partial object is discarded).
    pub fn push(&mut self, d: Delivery) -> Result<Option<Object>> {
        let key = (d.from, d.spec.object);
        let data = d.data.bytes();
        if d.spec.chunk == 0 && d.spec.last {
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
        let p = self.partial.entry(key).or_insert_with(|| Partial {
            next: 0,
            bytes: Vec::new(),
        });
        if d.spec.chunk != p.next {
            let expected = p.next;
            self.partial.remove(&key);
            return Err(Error::Protocol(format!(
                "chunk {} of object {:#x} from node {} (expected chunk {expected})",
                d.spec.chunk, d.spec.object, d.from
            )));
        }
        if p.bytes.len() + data.len() > MAX_OBJECT {
            self.partial.remove(&key);
            return Err(Error::Protocol(format!(
                "object {:#x} from node {} exceeds {MAX_OBJECT} bytes",
                d.spec.object, d.from
            )));
        }
        p.bytes.extend_from_slice(data);
        p.next += 1;
        if d.spec.last {
            let p = self.partial.remove(&key).unwrap_or(Partial {
                next: 0,
                bytes: Vec::new(),
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
    use smrdb_tstore::{ColumnDef, DataType};

    #[test]
    fn round_trip_and_validation() {
        let schema = TableSchema::new(vec![ColumnDef::new("a", DataType::Int, true)]);
        let bodies = vec![
            Body::Request(Request::CreateTable {
                name: "t".into(),
                schema,
            }),
            Body::Request(Request::Insert {
                table: "t".into(),
                rows: vec![vec![Value::Int(1)], vec![Value::Null]],
            }),
            Body::Request(Request::Stats),
            Body::Reply(Reply::Ack { count: 3 }),
            Body::Reply(Reply::Result { ipc: vec![1, 2, 3] }),
            Body::Reply(Reply::Error {
                sqlstate: "42P01".into(),
                message: "no".into(),
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
