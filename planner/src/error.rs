//! The planner's error type.

/// Everything that can go wrong while planning (or post-processing) a statement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Malformed SQL (42601).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// Unknown table (42P01).
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    /// Unknown column (42703).
    #[error("column \"{0}\" does not exist")]
    UndefinedColumn(String),
    /// Table already exists (42P07).
    #[error("relation \"{0}\" already exists")]
    DuplicateTable(String),
    /// Column named twice (42701).
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    /// Unknown type name (42704).
    #[error("type \"{0}\" does not exist")]
    UndefinedType(String),
    /// Operand types do not fit (42804).
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    /// Misuse of grouping / aggregates (42803).
    #[error("{0}")]
    Grouping(String),
    /// Valid SQL this engine does not support (0A000).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// Division by zero (22012).
    #[error("division by zero")]
    DivisionByZero,
    /// A value is invalid for its type (22P02).
    #[error("invalid input: {0}")]
    InvalidText(String),
    /// Numeric overflow (22003).
    #[error("numeric value out of range: {0}")]
    OutOfRange(String),
    /// NULL in a NOT NULL column (23502).
    #[error("null value in column \"{0}\" violates not-null constraint")]
    NotNull(String),
    /// Invalid LIMIT / OFFSET / ORDER BY position etc. (42P10 for positions, 2201W for limits).
    #[error("{msg}")]
    InvalidReference {
        /// SQLSTATE.
        code: &'static str,
        /// Message.
        msg: String,
    },
    /// A bug (XX000).
    #[error("internal error: {0}")]
    Internal(String),
}

impl PlanError {
    /// The SQLSTATE for the client.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            PlanError::Syntax(_) => "42601",
            PlanError::UndefinedTable(_) => "42P01",
            PlanError::UndefinedColumn(_) => "42703",
            PlanError::DuplicateTable(_) => "42P07",
            PlanError::DuplicateColumn(_) => "42701",
            PlanError::UndefinedType(_) => "42704",
            PlanError::TypeMismatch(_) => "42804",
            PlanError::Grouping(_) => "42803",
            PlanError::Unsupported(_) => "0A000",
            PlanError::DivisionByZero => "22012",
            PlanError::InvalidText(_) => "22P02",
            PlanError::OutOfRange(_) => "22003",
            PlanError::NotNull(_) => "23502",
            PlanError::InvalidReference { code, .. } => code,
            PlanError::Internal(_) => "XX000",
        }
    }
}

impl From<smrdb_tstore::Error> for PlanError {
    fn from(e: smrdb_tstore::Error) -> Self {
        use smrdb_tstore::Error as E;
        match e {
            E::DivisionByZero => PlanError::DivisionByZero,
            E::Overflow(m) => PlanError::OutOfRange(m),
            E::TypeMismatch(m) => PlanError::TypeMismatch(m),
            E::UnknownColumn(m) => PlanError::UndefinedColumn(m),
            E::UnknownTable(m) => PlanError::UndefinedTable(m),
            E::TableExists(m) => PlanError::DuplicateTable(m),
            E::NullViolation(m) => PlanError::NotNull(m),
            E::InvalidValue(m) => PlanError::InvalidText(m),
            E::Arity { expected, got } => PlanError::Syntax(format!(
                "wrong number of values: expected {expected}, got {got}"
            )),
            E::UnknownType(m) => PlanError::UndefinedType(m),
            other => PlanError::Internal(other.to_string()),
        }
    }
}

impl From<arrow_schema::ArrowError> for PlanError {
    fn from(e: arrow_schema::ArrowError) -> Self {
        PlanError::from(smrdb_tstore::Error::from(e))
    }
}
