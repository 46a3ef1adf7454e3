//! The crate's error type.

use smrdb_router::RouterError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a node. [`Error::sqlstate`] gives the SQLSTATE a
/// client sees.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A statement error with an explicit SQLSTATE (from the planner, a Tstore, or the
    /// engine's own checks).
    #[error("{message}")]
    Sql {
        /// Five-character SQLSTATE.
        sqlstate: String,
        /// Human-readable message.
        message: String,
    },
    /// The cluster file or the command line is wrong.
    #[error("configuration: {0}")]
    Config(String),
    /// The router failed.
    #[error(transparent)]
    Router(#[from] RouterError),
    /// A local store failed.
    #[error(transparent)]
    Store(#[from] smrdb_tstore::Error),
    /// A task message failed validation.
    #[error("protocol: {0}")]
    Protocol(String),
    /// A node the statement needs is gone.
    #[error("node {node} is lost: {reason}")]
    NodeLost {
        /// The node.
        node: u32,
        /// What was seen.
        reason: String,
    },
    /// Replies did not arrive in time.
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// Seconds waited.
        secs: u64,
    },
    /// The catalog file is damaged or does not fit the cluster.
    #[error("catalog: {0}")]
    Catalog(String),
    /// Filesystem or socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A statement error with a SQLSTATE.
    pub fn sql(sqlstate: &str, message: impl Into<String>) -> Error {
        Error::Sql {
            sqlstate: sqlstate.to_string(),
            message: message.into(),
        }
    }

    /// The SQLSTATE a client sees for this error.
    pub fn sqlstate(&self) -> &str {
        match self {
            Error::Sql { sqlstate, .. } => sqlstate,
            Error::Store(e) => store_sqlstate(e),
            Error::NodeLost { .. } => "08006",
            Error::Timeout { .. } => "57014",
            Error::Io(_) => "58030",
            Error::Catalog(_) => "XX001",
            // Common memory (the outgoing arena, a receive ring) stayed full: out of
            // memory, as PostgreSQL's 53200. Something that can never fit: a limit.
            Error::Router(RouterError::Backpressure { .. }) => "53200",
            Error::Router(RouterError::TooLarge { .. }) => "54000",
            Error::Router(_) | Error::Protocol(_) | Error::Config(_) => "XX000",
        }
    }

    /// The message a client sees: the error and, when common memory was too small
    /// (the outgoing arena, a receive ring, a chunk), which setting raises it.
    pub fn client_message(&self) -> String {
        match self {
            Error::Router(e @ RouterError::Backpressure { what, .. }) => {
                with_hint(e.to_string(), memory_hint(what))
            }
            Error::Router(e @ RouterError::TooLarge { what, .. }) => {
                with_hint(e.to_string(), memory_hint(what))
            }
            e => e.to_string(),
        }
    }
}

/// How to raise the outgoing arena.
const ARENA_HINT: &str = "the outgoing arena is arena_mib in the cluster file \
    (smrdb cluster --arena-mib): raise it, or run fewer large statements at once";
/// How to raise a receive ring.
const RING_HINT: &str = "each receive ring is ring_mib in the cluster file \
    (smrdb cluster --ring-mib): raise it";
/// How to raise the chunk size (54000 errors name it).
pub const CHUNK_HINT: &str = "raise chunk_kib in the cluster file (smrdb cluster --chunk-kib; \
    at most ring_mib x 1024 and arena_mib x 1024)";

/// The setting that sizes the common memory named by a router error's `what`.
fn memory_hint(what: &str) -> Option<&'static str> {
    if what.contains("arena") {
        Some(ARENA_HINT)
    } else if what.contains("ring") {
        Some(RING_HINT)
    } else {
        None
    }
}

fn with_hint(message: String, hint: Option<&str>) -> String {
    match hint {
        Some(h) if !message.contains(h) => format!("{message}; {h}"),
        _ => message,
    }
}

/// `message` (a statement error, possibly a Tstore's) with the setting that raises the
/// limit it names, when it names a router chunk too small for a row; else unchanged.
pub fn resource_hint(message: &str) -> String {
    let hint = (message.contains("larger than a router chunk") && !message.contains("chunk_kib"))
        .then_some(CHUNK_HINT);
    with_hint(message.to_string(), hint)
}

impl From<datafusion::common::DataFusionError> for Error {
    fn from(e: datafusion::common::DataFusionError) -> Self {
        Error::from(smrdb_planner::PlanError::from_datafusion(&e))
    }
}

impl From<smrdb_planner::PlanError> for Error {
    fn from(e: smrdb_planner::PlanError) -> Self {
        Error::sql(e.sqlstate(), e.to_string())
    }
}

/// The SQLSTATE of a Tstore error.
pub fn store_sqlstate(e: &smrdb_tstore::Error) -> &'static str {
    use smrdb_tstore::Error as E;
    match e {
        E::DivisionByZero => "22012",
        E::Overflow(_) => "22003",
        E::TypeMismatch(_) => "42804",
        E::UnknownColumn(_) => "42703",
        E::UnknownTable(_) => "42P01",
        E::TableExists(_) => "42P07",
        E::NullViolation(_) => "23502",
        E::InvalidValue(_) => "22P02",
        E::StringTooLong(_) => "22001",
        E::Arity { .. } => "42601",
        E::UnknownType(_) => "42704",
        E::Corrupt(_) => "XX001",
        E::Io(_) => "58030",
        _ => "XX000",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn common_memory_errors_name_the_setting_that_raises_it() {
        // Real errors of a 4 KiB arena: a request larger than all of it, and one that
        // finds it full.
        let region = Arc::new(smrdb_transport::Region::anonymous(1 << 16).unwrap());
        let arena = smrdb_router::arena::Arena::new(region, 0, 4096);
        let never = Error::Router(arena.alloc(8192, Duration::ZERO).err().unwrap());
        let _held = arena.alloc(4096, Duration::ZERO).ok().unwrap();
        let full = Error::Router(arena.alloc(64, Duration::ZERO).err().unwrap());
        assert_eq!(never.sqlstate(), "54000");
        assert_eq!(full.sqlstate(), "53200");
        for e in [&never, &full] {
            let m = e.client_message();
            assert!(m.contains("outgoing arena"), "{m}");
            assert!(m.contains("arena_mib") && m.contains("--arena-mib"), "{m}");
        }
        // A ring that stays full (the router core's wording).
        let ring = Error::Router(RouterError::Backpressure {
            what: "the ring at node 1 (1048576 of 1048576 bytes still unreleased)".into(),
            waited: Duration::from_secs(60),
        });
        assert_eq!(ring.sqlstate(), "53200");
        let m = ring.client_message();
        assert!(m.contains("ring_mib") && m.contains("--ring-mib"), "{m}");
        // Other errors are shown as they are.
        let other = Error::Router(RouterError::Shutdown);
        assert_eq!(other.client_message(), other.to_string());
        assert_eq!(other.sqlstate(), "XX000");
        // A Tstore's "row larger than a chunk" gets the chunk_kib hint, once.
        let row = "a row of join table 0 is larger than a router chunk (65536 bytes)";
        let hinted = resource_hint(row);
        assert!(
            hinted.starts_with(row) && hinted.contains("--chunk-kib"),
            "{hinted}"
        );
        assert_eq!(resource_hint(&hinted), hinted);
        assert_eq!(resource_hint("division by zero"), "division by zero");
    }
}
