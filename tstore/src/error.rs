//! The crate's error type.

use arrow_schema::ArrowError;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a Tstore.
///
/// User errors (bad data, bad queries) are separate variants from [`Error::Internal`],
/// which always indicates a bug.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Integer (or floating point) division or modulo by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// Arithmetic overflow (e.g. `INT` addition, `SUM` of `BIGINT`).
    #[error("numeric value out of range: {0}")]
    Overflow(String),
    /// Operand or value types do not fit together.
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    /// Column index or name does not exist.
    #[error("unknown column: {0}")]
    UnknownColumn(String),
    /// Table does not exist.
    #[error("unknown table: {0}")]
    UnknownTable(String),
    /// Table already exists.
    #[error("table already exists: {0}")]
    TableExists(String),
    /// NULL written to a NOT NULL column.
    #[error("null value in column \"{0}\" violates not-null constraint")]
    NullViolation(String),
    /// A text value longer than its column's `CHAR(n)` / `VARCHAR(n)`.
    #[error("{0}")]
    StringTooLong(String),
    /// A value (or cast) is invalid for its target type, e.g. `'abc'` as INT.
    #[error("invalid value: {0}")]
    InvalidValue(String),
    /// A row has the wrong number of values.
    #[error("wrong number of values: expected {expected}, got {got}")]
    Arity {
        /// Number of columns in the table.
        expected: usize,
        /// Number of values supplied.
        got: usize,
    },
    /// A type name that [`crate::parse_type`] does not know.
    #[error("unknown type: {0}")]
    UnknownType(String),
    /// Persistent state (log, checkpoint) is corrupt.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// I/O error from the persistence layer.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A bug: an invariant of this crate did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<datafusion_common::DataFusionError> for Error {
    fn from(e: datafusion_common::DataFusionError) -> Self {
        use datafusion_common::DataFusionError as D;
        match e {
            D::ArrowError(a, _) => Error::from(*a),
            D::Context(_, inner) => Error::from(*inner),
            D::Shared(s) => Error::Internal(s.to_string()),
            D::Internal(m) => Error::Internal(m),
            other => {
                let m = other.to_string();
                if m.contains("Divide by zero") || m.contains("division by zero") {
                    Error::DivisionByZero
                } else if m.contains("Overflow") || m.contains("overflow") {
                    Error::Overflow(m)
                } else {
                    Error::InvalidValue(m)
                }
            }
        }
    }
}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        match e {
            ArrowError::DivideByZero => Error::DivisionByZero,
            ArrowError::ArithmeticOverflow(m) => Error::Overflow(m),
            ArrowError::CastError(m) | ArrowError::ParseError(m) => Error::InvalidValue(m),
            ArrowError::InvalidArgumentError(m) => Error::InvalidValue(m),
            ArrowError::IoError(m, e) => Error::Io(std::io::Error::new(e.kind(), m)),
            other => Error::Internal(other.to_string()),
        }
    }
}
