//! # smrdb-node: the node process
//!
//! One `smrdb node` process runs one node of a cluster: the shared memory router
//! ([`smrdb_router`]), one controller thread and T Tstore threads (each pinned to a core
//! and owning a [`smrdb_tstore::Store`]). The *primary* node also runs the catalog, the
//! statement engine and the Postgres wire-protocol front end.
//!
//! * [`config`]: the cluster file (TOML or JSON).
//! * [`proto`]: the task protocol between the primary controller and the Tstores.
//! * [`worker`]: a Tstore thread.
//! * [`dispatch`]: the primary controller: sends tasks, gathers exactly one reply per
//!   Tstore, fails a task when a node is lost.
//! * [`catalog`]: table schemas and round-robin cursors, persisted on the primary.
//! * [`redo`]: the primary's statement log, which makes writes that span several
//!   Tstores all or nothing across a crash.
//! * [`engine`]: executes planned statements ([`smrdb_planner::Plan`]).
//! * [`query`]: a distributed query on the primary: the fragment to the Tstores, the
//!   primary's own stages, gathers, EXPLAIN ANALYZE's measurements.
//! * [`exchange`]: stage outputs to router chunks and back, and the poll loop that
//!   drives stages on a node's own threads.
//! * [`copy`]: CSV / text parsing for `COPY`.
//! * [`auth`]: password authentication of Postgres clients (md5, SCRAM-SHA-256).
//! * [`pg`]: the Postgres front end (simple and extended query protocols, COPY FROM
//!   STDIN) on `pgwire`.
//! * [`node`]: wiring it all into a running node.
//! * [`sqltext`]: splitting statement strings and binding `$n` parameters.
//! * [`values`]: Arrow results to Postgres text and binary values.
#![deny(missing_docs)]

pub mod auth;
pub mod catalog;
pub mod config;
pub mod copy;
pub mod dispatch;
pub mod engine;
mod error;
pub mod exchange;
pub mod node;
pub mod pg;
pub mod proto;
pub mod query;
pub mod redo;
pub mod sqltext;
pub mod values;
pub mod worker;

pub use error::{Error, Result};
