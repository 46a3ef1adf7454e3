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
            Error::Router(_) | Error::Protocol(_) | Error::Config(_) => "XX000",
        }
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
        E::Arity { .. } => "42601",
        E::UnknownType(_) => "42704",
        E::Corrupt(_) => "XX001",
        E::Io(_) => "58030",
        _ => "XX000",
    }
}
