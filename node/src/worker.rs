//! A Tstore thread: pinned to a core, owns one [`Store`], answers task requests.
//!
//! The thread reads its router inbox, reassembles each request object, runs it on its
//! store (a persistent store fsyncs its log before the call returns, so an `Ack`
//! means durable) and sends exactly one reply to the controller that asked.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use smrdb_router::{Addr, Inbound, Inbox, RouterError, RouterHandle};
use smrdb_tstore::{encode_batches, Store};

use crate::error::store_sqlstate;
use crate::proto::{self, Body, Reassembler, Reply, Request, TableStats, TAG_TASK};

/// What a Tstore thread needs.
pub struct Tstore {
    /// Cluster-wide Tstore id.
    pub id: u32,
    /// Its store.
    pub store: Store,
    /// Its inbox.
    pub inbox: Inbox,
    /// The router.
    pub router: RouterHandle,
    /// The core it is pinned to, if pinning worked.
    pub core: Option<u32>,
    /// Set to stop the thread.
    pub stop: Arc<AtomicBool>,
}

fn err_reply(e: &smrdb_tstore::Error) -> Reply {
    Reply::Error {
        sqlstate: store_sqlstate(e).to_string(),
        message: e.to_string(),
    }
}

impl Tstore {
    /// Runs one request on the store.
    pub fn execute(&mut self, req: Request) -> Reply {
        let st = &mut self.store;
        let ack = |r: smrdb_tstore::Result<usize>| match r {
            Ok(n) => Reply::Ack { count: n as u64 },
            Err(e) => err_reply(&e),
        };
        match req {
            Request::CreateTable { name, schema } => {
                // The primary's catalog decides what exists: a slice left over from
                // an interrupted CREATE/DROP is replaced.
                if st.table(&name).is_some() {
                    if let Err(e) = st.drop_table(&name) {
                        return err_reply(&e);
                    }
                }
                ack(st.create_table(&name, schema).map(|_| 0))
            }
            Request::DropTable { name } => {
                if st.table(&name).is_none() {
                    return Reply::Ack { count: 0 };
                }
                ack(st.drop_table(&name).map(|_| 0))
            }
            Request::Insert { table, rows } => ack(st.insert(&table, rows)),
            Request::Update {
                table,
                assignments,
                filter,
            } => ack(st.update(&table, assignments, filter)),
            Request::Delete { table, filter } => ack(st.delete(&table, filter)),
            Request::Query { fragment } => {
                match st.execute(&fragment).and_then(|b| encode_batches(&b)) {
                    Ok(ipc) => Reply::Result { ipc },
                    Err(e) => err_reply(&e),
                }
            }
            Request::Stats => Reply::Stats {
                core: self.core,
                tables: st
                    .table_names()
                    .into_iter()
                    .filter_map(|n| {
                        let s = st.table(&n)?;
                        Some(TableStats {
                            rows: s.row_count() as u64,
                            bytes: s.bytes() as u64,
                            name: n,
                        })
                    })
                    .collect(),
            },
        }
    }

    /// The thread's loop; returns when stopped or the router shuts down. Checkpoints
    /// a persistent store on the way out.
    pub fn run(mut self) {
        let me = Addr::tstore(self.id);
        let mut asm = Reassembler::new();
        loop {
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            let d = match self.inbox.recv(Duration::from_millis(200)) {
                Ok(Inbound::Data(d)) => d,
                Ok(Inbound::PeerLost { node, reason }) => {
                    tracing::warn!("tstore {}: node {node} lost: {reason}", self.id);
                    asm.forget(node);
                    continue;
                }
                Err(RouterError::Timeout { .. }) => continue,
                Err(_) => break,
            };
            if d.spec.tag != TAG_TASK {
                tracing::warn!(
                    "tstore {}: ignoring a message with tag {:#x}",
                    self.id,
                    d.spec.tag
                );
                continue;
            }
            let obj = match asm.push(d) {
                Ok(Some(o)) => o,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("tstore {}: {e}", self.id);
                    continue;
                }
            };
            if obj.src.as_controller().is_none() {
                tracing::warn!(
                    "tstore {}: request from {:?} refused (not a controller)",
                    self.id,
                    obj.src
                );
                continue;
            }
            let reply = match proto::decode(&obj.bytes, obj.query) {
                Ok(env) => match env.body {
                    Body::Request(r) => self.execute(r),
                    Body::Reply(_) => {
                        tracing::warn!("tstore {}: unexpected reply from {:?}", self.id, obj.src);
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!("tstore {}: bad request from {:?}: {e}", self.id, obj.src);
                    Reply::Error {
                        sqlstate: "08P01".into(),
                        message: format!("tstore {}: {e}", self.id),
                    }
                }
            };
            let (task, to) = (obj.query, obj.src);
            drop(obj);
            let bytes = match proto::encode(task, Body::Reply(reply)) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!("tstore {}: {e}", self.id);
                    continue;
                }
            };
            if let Err(e) = self.router.send_bytes(me, to, TAG_TASK, task, &bytes) {
                tracing::warn!(
                    "tstore {}: reply to {to:?} for task {task} failed: {e}",
                    self.id
                );
            }
        }
        if let Err(e) = self.store.checkpoint() {
            tracing::warn!("tstore {}: checkpoint at shutdown failed: {e}", self.id);
        }
    }
}
