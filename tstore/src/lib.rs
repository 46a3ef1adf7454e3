//! One Tstore: columnar slices of tables, their persistence and statistics, and the
//! leaves through which DataFusion's physical operators read them.
//!
//! * [`types`]: SQL column types with PostgreSQL's names ([`SqlType`]), table
//!   schemas, and the coercion of incoming rows to a table's types.
//! * [`slice`]: [`Slice`], one table's rows held by one Tstore, as Arrow chunks.
//! * [`stats`]: per-column statistics kept as rows are written.
//! * [`store`]: [`Store`], many named slices with an optional write-ahead log and
//!   checkpoints.
//! * [`exec`]: the plan leaves ([`exec::SliceScanExec`], [`exec::ExchangeExec`]),
//!   the plan codec and the fragment a query's stages travel in.
//! * [`ipc`]: Arrow IPC helpers.
//!
//! The crate knows nothing of the network or of SQL text.
#![deny(missing_docs)]

pub mod error;
pub mod exec;
pub mod ipc;
pub mod slice;
pub mod stats;
pub mod store;
pub mod types;

pub use error::{Error, Result};
pub use ipc::{decode_batches, encode_batches};
pub use slice::{Slice, DEFAULT_CHUNK_ROWS};
pub use stats::{ColumnStats, StatValue, TableStats};
pub use store::{StmtWrite, Store};
pub use types::{coerce_batch, ColumnDef, SqlType, TableSchema};

/// Re-export of the Arrow `RecordBatch` type used in this crate's API.
pub use arrow_array::RecordBatch;
