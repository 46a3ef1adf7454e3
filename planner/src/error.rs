//! The planner's error type, and PostgreSQL SQLSTATEs for DataFusion's errors.

use datafusion::common::{DataFusionError, SchemaError};

/// Everything that can go wrong while planning a statement (and, through
/// [`PlanError::from_datafusion`], while running one).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// Malformed SQL (42601).
    #[error("syntax error: {0}")]
    Syntax(String),
    /// Unknown table (42P01).
    #[error("relation \"{0}\" does not exist")]
    UndefinedTable(String),
    /// Unknown column (42703).
    #[error("{0}")]
    UndefinedColumn(String),
    /// Ambiguous column reference (42702).
    #[error("{0}")]
    AmbiguousColumn(String),
    /// Table already exists (42P07).
    #[error("relation \"{0}\" already exists")]
    DuplicateTable(String),
    /// Column named twice (42701).
    #[error("column \"{0}\" specified more than once")]
    DuplicateColumn(String),
    /// Unknown type name (42704).
    #[error("type \"{0}\" does not exist")]
    UndefinedType(String),
    /// Unknown function or operator for these argument types (42883).
    #[error("{0}")]
    UndefinedFunction(String),
    /// Operand types do not fit (42804).
    #[error("{0}")]
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
    #[error("{0}")]
    InvalidText(String),
    /// Numeric overflow (22003).
    #[error("{0}")]
    OutOfRange(String),
    /// A text value too long for its column (22001).
    #[error("{0}")]
    StringTooLong(String),
    /// NULL in a NOT NULL column (23502).
    #[error("null value in column \"{0}\" violates not-null constraint")]
    NotNull(String),
    /// A scalar subquery returned more than one row (21000).
    #[error("more than one row returned by a subquery used as an expression")]
    CardinalityViolation,
    /// Another SQLSTATE with its message (LIMIT/OFFSET, positions, settings...).
    #[error("{msg}")]
    Other {
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
            PlanError::AmbiguousColumn(_) => "42702",
            PlanError::DuplicateTable(_) => "42P07",
            PlanError::DuplicateColumn(_) => "42701",
            PlanError::UndefinedType(_) => "42704",
            PlanError::UndefinedFunction(_) => "42883",
            PlanError::TypeMismatch(_) => "42804",
            PlanError::Grouping(_) => "42803",
            PlanError::Unsupported(_) => "0A000",
            PlanError::DivisionByZero => "22012",
            PlanError::InvalidText(_) => "22P02",
            PlanError::OutOfRange(_) => "22003",
            PlanError::StringTooLong(_) => "22001",
            PlanError::NotNull(_) => "23502",
            PlanError::CardinalityViolation => "21000",
            PlanError::Other { code, .. } => code,
            PlanError::Internal(_) => "XX000",
        }
    }

    /// A DataFusion error (planning or execution) as the PostgreSQL error a client
    /// expects: the SQLSTATE from its kind, its message without DataFusion's prefixes
    /// and backtraces.
    pub fn from_datafusion(e: &DataFusionError) -> PlanError {
        match e {
            DataFusionError::External(x) => {
                if let Some(p) = x.downcast_ref::<PlanError>() {
                    return p.clone();
                }
                classify(&x.to_string())
            }
            DataFusionError::Context(_, inner) => PlanError::from_datafusion(inner),
            DataFusionError::Diagnostic(_, inner) => PlanError::from_datafusion(inner),
            DataFusionError::Shared(inner) => PlanError::from_datafusion(inner),
            DataFusionError::Collection(v) => match v.first() {
                Some(first) => PlanError::from_datafusion(first),
                None => PlanError::Internal("an empty error collection".into()),
            },
            DataFusionError::SQL(p, _) => PlanError::Syntax(clean(&p.to_string())),
            DataFusionError::SchemaError(s, _) => {
                match s.as_ref() {
                    SchemaError::FieldNotFound {
                        field,
                        valid_fields,
                    } => match &field.relation {
                        // A qualifier that names no relation in scope.
                        Some(q)
                            if !valid_fields.iter().any(|v| {
                                v.relation.as_ref().is_some_and(|r| r.table() == q.table())
                            }) =>
                        {
                            PlanError::Other {
                                code: "42P01",
                                msg: format!(
                                    "missing FROM-clause entry for table \"{}\"",
                                    q.table()
                                ),
                            }
                        }
                        _ => PlanError::UndefinedColumn(format!(
                            "column \"{}\" does not exist",
                            field.name()
                        )),
                    },
                    SchemaError::AmbiguousReference { field } => PlanError::AmbiguousColumn(
                        format!("column reference \"{}\" is ambiguous", field.name()),
                    ),
                    // Two relations of one FROM clause with the same name or alias.
                    SchemaError::DuplicateQualifiedField { qualifier, .. } => PlanError::Other {
                        code: "42712",
                        msg: format!(
                            "table name \"{}\" specified more than once",
                            qualifier.table()
                        ),
                    },
                    SchemaError::DuplicateUnqualifiedField { name } => {
                        PlanError::DuplicateColumn(name.to_string())
                    }
                }
            }
            DataFusionError::NotImplemented(m) => PlanError::Unsupported(clean(m)),
            DataFusionError::Internal(m) => PlanError::Internal(clean(m)),
            other => classify(&other.to_string()),
        }
    }
}

impl From<DataFusionError> for PlanError {
    fn from(e: DataFusionError) -> Self {
        PlanError::from_datafusion(&e)
    }
}

impl From<smrdb_tstore::Error> for PlanError {
    fn from(e: smrdb_tstore::Error) -> Self {
        use smrdb_tstore::Error as T;
        match e {
            T::DivisionByZero => PlanError::DivisionByZero,
            T::Overflow(m) => PlanError::OutOfRange(m),
            T::TypeMismatch(m) => PlanError::TypeMismatch(m),
            T::UnknownColumn(m) => {
                PlanError::UndefinedColumn(format!("column \"{m}\" does not exist"))
            }
            T::UnknownTable(t) => PlanError::UndefinedTable(t),
            T::TableExists(t) => PlanError::DuplicateTable(t),
            T::NullViolation(c) => PlanError::NotNull(c),
            T::StringTooLong(m) => PlanError::StringTooLong(m),
            T::InvalidValue(m) => classify(&m),
            T::Arity { expected, got } => PlanError::Syntax(format!(
                "INSERT has {got} expressions for {expected} columns"
            )),
            other => PlanError::Internal(other.to_string()),
        }
    }
}

/// A message without DataFusion's "Error during planning:" style prefixes and
/// trailing backtraces.
pub fn clean(m: &str) -> String {
    let mut s = m.trim();
    for p in [
        "Error during planning: ",
        "Execution error: ",
        "External error: ",
        "Arrow error: ",
        "This feature is not implemented: ",
        "Optimizer rule",
        "Schema error: ",
        "SQL error: ",
        "Invalid argument error: ",
        "Compute error: ",
        "Cast error: ",
        "Parser error: ",
        "ParserError(\"",
        "Internal error: ",
    ] {
        while let Some(r) = s.strip_prefix(p) {
            s = r.trim_start();
        }
    }
    let s = s.split("\n\nbacktrace").next().unwrap_or(s);
    let s = s.trim_end_matches("\")");
    s.trim().to_string()
}

/// The SQLSTATE class of an error message (execution errors of operators and
/// casts, planning errors that carry no structure).
fn classify(m: &str) -> PlanError {
    let c = clean(m);
    let l = c.to_ascii_lowercase();
    if l.contains("divide by zero") || l.contains("division by zero") {
        PlanError::DivisionByZero
    } else if l.contains("declared as non-nullable but contains null values") {
        PlanError::Other {
            code: "23502",
            msg: format!("null value violates a not-null constraint ({c})"),
        }
    } else if l.contains("invalid qualifier") {
        PlanError::Other {
            code: "42P01",
            msg: format!("missing FROM-clause entry ({c})"),
        }
    } else if l.contains("non-boolean predicate") {
        PlanError::TypeMismatch(format!("argument of WHERE must be type boolean ({c})"))
    } else if l.contains("overflow")
        || l.contains("too small to store")
        || l.contains("out of range")
        || l.contains("too large to store")
        || l.contains("is too large")
        || l.contains("can't cast value")
    {
        PlanError::OutOfRange(c)
    } else if l.contains("more than one row") || l.contains("returned more than one row") {
        PlanError::CardinalityViolation
    } else if l.contains("cannot cast string")
        || l.contains("cannot parse")
        || l.contains("invalid input syntax")
        || l.contains("parser error")
        || l.contains("error parsing")
        || l.contains("invalid digit")
    {
        PlanError::InvalidText(c)
    } else if l.contains("table") && l.contains("not found") {
        PlanError::UndefinedTable(
            c.split('\'')
                .nth(1)
                .unwrap_or(&c)
                .rsplit('.')
                .next()
                .unwrap_or(&c)
                .to_string(),
        )
    } else if l.contains("no field named") || l.contains("column") && l.contains("not found") {
        PlanError::UndefinedColumn(c)
    } else if l.contains("must appear in the group by")
        || l.contains("projection references non-aggregate values")
        || l.contains("aggregate function calls cannot be nested")
        || l.contains("aggregate functions are not allowed")
    {
        PlanError::Grouping(c)
    } else if l.contains("invalid function")
        || l.contains("no function matches")
        || l.contains("unknown function")
        || l.contains("does not support")
        || l.contains("failed to coerce arguments")
        || l.contains("function '")
    {
        PlanError::UndefinedFunction(c)
    } else if l.contains("cannot infer common")
        || l.contains("cannot coerce")
        || l.contains("there isn't a common type")
        || l.contains("no coercion")
        || l.contains("cannot be cast")
        || l.contains("unsupported cast")
        || l.contains("type coercion")
        || l.contains("must be boolean")
        || l.contains("expected a boolean")
    {
        PlanError::TypeMismatch(c)
    } else if l.contains("not supported")
        || l.contains("unsupported")
        || l.contains("not implemented")
    {
        PlanError::Unsupported(c)
    } else if l.contains("union queries have different number of columns")
        || l.contains("each union query must have the same number")
        || l.contains("different number of columns")
    {
        PlanError::Syntax(c)
    } else {
        PlanError::Other {
            code: "XX000",
            msg: c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datafusion_messages_map_to_sqlstates() {
        let cases = [
            ("Arrow error: Divide by zero error", "22012"),
            ("Arrow error: Compute error: Overflow happened on: 2147483647 + 1", "22003"),
            ("Arrow error: Cast error: Cannot cast string 'x' to value of Int32 type", "22P02"),
            ("Error during planning: table 'smrdb.public.nope' not found", "42P01"),
            ("Schema error: No field named nope.", "42703"),
            ("This feature is not implemented: Unsupported ast node", "0A000"),
            ("Error during planning: Cannot infer common argument type for comparison operation Int32 = Boolean", "42804"),
        ];
        for (m, code) in cases {
            let e = classify(m);
            assert_eq!(e.sqlstate(), code, "{m} -> {e:?}");
        }
        assert_eq!(
            classify("Error during planning: table 'smrdb.public.nope' not found").to_string(),
            "relation \"nope\" does not exist"
        );
    }
}
