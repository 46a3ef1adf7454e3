//! One Tstore: columnar slices of tables and the operator language a Tstore executes.
//!
//! * [`types`]: SQL data types ([`DataType`], [`parse_type`]), table schemas and
//!   [`Value`] literals with SQL comparison semantics.
//! * [`expr`]: bound scalar expressions ([`Expr`]) evaluated over Arrow record batches.
//! * [`slice`]: [`Slice`], one table's rows held by one Tstore, as Arrow chunks.
//! * [`agg`]: the per-Tstore half of a distributed aggregate ([`PartialAgg`]) and the
//!   primary's `merge` / `finalize`.
//! * [`fragment`]: [`Fragment`], the single-table secondary query a Tstore runs, and
//!   Arrow IPC helpers for shipping results.
//! * [`join`]: multi-set queries: join-table build and the streamed compare
//!   ([`JoinExec`]).
//! * [`store`]: [`Store`], many named slices with an optional write-ahead log and
//!   checkpoints.
//!
//! The crate knows nothing of the network or of SQL text.
#![deny(missing_docs)]

pub mod agg;
pub mod error;
pub mod expr;
pub mod fragment;
pub mod join;
pub mod slice;
pub mod store;
pub mod types;

pub use agg::{AggCall, AggFunc, PartialAgg};
pub use error::{Error, Result};
pub use expr::{BinaryOp, Expr};
pub use fragment::{decode_batches, encode_batches, Fragment};
pub use join::{JoinExec, JoinInput, JoinSpec, JoinStats, JoinStep};
pub use slice::{Slice, DEFAULT_CHUNK_ROWS};
pub use store::{StmtWrite, Store};
pub use types::{parse_type, ColumnDef, DataType, TableSchema, Value};

/// Re-export of the Arrow `RecordBatch` type used in this crate's API.
pub use arrow_array::RecordBatch;
