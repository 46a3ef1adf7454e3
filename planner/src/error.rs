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
    // DataFusion's plea to report a bug, on errors that are the user's.
    let plea = "This issue was likely caused by a bug in DataFusion";
    let mut s = s.to_string();
    if let Some(i) = s.find(plea) {
        let end = s[i..]
            .find("/issues.")
            .map_or(s.len(), |j| i + j + "/issues.".len());
        s.replace_range(i..end, "");
    }
    s.trim().to_string()
}

/// "value "40000" is out of range for type smallint" for a cast of an integer string
/// to a type too narrow for it (Arrow says only that it cannot cast).
fn int_out_of_range(c: &str) -> Option<String> {
    let rest = c.strip_prefix("Cannot cast string '")?;
    let (value, rest) = rest.split_once('\'')?;
    let t = rest.strip_prefix(" to value of ")?.strip_suffix(" type")?;
    let name = match t {
        "Int16" => "smallint",
        "Int32" => "integer",
        "Int64" => "bigint",
        _ => return None,
    };
    value.trim().parse::<i128>().ok()?;
    Some(format!("value \"{value}\" is out of range for type {name}"))
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
    } else if l.contains("inconsistent data length across values list") {
        PlanError::Syntax(format!(
            "VALUES lists must all be the same length as the target columns ({c})"
        ))
    } else if l.contains("order by column out of bounds") {
        PlanError::Other {
            code: "42P10",
            msg: format!("ORDER BY position is not in select list ({c})"),
        }
    } else if l.contains("for select distinct, order by expressions") {
        PlanError::Other {
            code: "42P10",
            msg: "for SELECT DISTINCT, ORDER BY expressions must appear in select list".into(),
        }
    } else if l.contains("limit must be >= 0") || l.contains("offset must be >= 0") {
        PlanError::Other {
            code: "2201W",
            msg: format!("LIMIT must not be negative ({c})"),
        }
    } else if let Some(i) = l.find("no function matches the given name and argument types '") {
        // "sum(Utf8)": PostgreSQL's "function sum(text) does not exist".
        let from = i + "no function matches the given name and argument types '".len();
        let call = c[from..].split('\'').next().unwrap_or("");
        PlanError::UndefinedFunction(format!(
            "function {call} does not exist; you might need to add explicit type casts"
        ))
    } else if l.contains("cannot coerce arithmetic expression")
        || l.contains("cannot infer common argument type for comparison operation")
        || (l.contains("there isn't a common type to coerce") && l.contains("like expression"))
    {
        // PostgreSQL: "operator does not exist: integer + text".
        PlanError::UndefinedFunction(format!("operator does not exist ({c})"))
    } else if l.contains("more than one row") || l.contains("returned more than one row") {
        PlanError::CardinalityViolation
    } else if l.contains("cannot cast value") && l.contains("boolean") {
        let value = c.split('\'').nth(1).unwrap_or("");
        PlanError::InvalidText(format!(
            "invalid input syntax for type boolean: \"{value}\""
        ))
    } else if let Some(t) = int_out_of_range(&c) {
        PlanError::OutOfRange(t)
    } else if l.contains("cannot cast string")
        && (l.contains("date32") || l.contains("date64") || l.contains("timestamp"))
    {
        // PostgreSQL: a well-formed date with a field out of range is 22008, anything
        // else 22007.
        let value = c.split('\'').nth(1).unwrap_or("");
        let fields: Vec<&str> = value.split(['-', ' ', ':', 'T']).collect();
        let shaped = fields.len() >= 3
            && fields[..3]
                .iter()
                .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
        if shaped {
            PlanError::Other {
                code: "22008",
                msg: format!("date/time field value out of range: \"{value}\""),
            }
        } else {
            PlanError::Other {
                code: "22007",
                msg: format!("invalid input syntax for type date: \"{value}\""),
            }
        }
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
            ("Error during planning: Cannot infer common argument type for comparison operation Int32 = Boolean", "42883"),
            ("Error during planning: Cannot coerce arithmetic expression Int32 + Utf8 to valid types", "42883"),
            ("Error during planning: Inconsistent data length across values list: got 2 values in row 0 but expected 1", "42601"),
            ("Error during planning: Order by column out of bounds, specified: 5, max: 1", "42P10"),
            ("Error during planning: For SELECT DISTINCT, ORDER BY expressions er_t.id must appear in select list", "42P10"),
            ("Error during planning: LIMIT must be >= 0, '-1' was provided", "2201W"),
            ("Cast error: Cannot cast string 'notadate' to value of Date32 type", "22007"),
            ("Cast error: Cannot cast string '40000' to value of Int16 type", "22003"),
            ("Cast error: Cannot cast string 'x40' to value of Int16 type", "22P02"),
            ("Cast error: Cannot cast value 'maybe' to value of Boolean type", "22P02"),
            ("Cast error: Cannot cast string '2023-02-29' to value of Date32 type", "22008"),
        ];
        for (m, code) in cases {
            let e = classify(m);
            assert_eq!(e.sqlstate(), code, "{m} -> {e:?}");
        }
        let sum = "Error during planning: Function 'sum' failed to match any signature.\nThis issue was likely caused by a bug in DataFusion's code. Please help us to resolve this by filing a bug report in our issue tracker: https://github.com/apache/datafusion/issues. No function matches the given name and argument types 'sum(Utf8)'. You might need to add explicit type casts.";
        assert!(!clean(sum).contains("bug"), "{}", clean(sum));
        let e = classify(sum);
        assert_eq!(e.sqlstate(), "42883");
        assert!(
            e.to_string().contains("function sum(Utf8) does not exist"),
            "{e}"
        );
        assert_eq!(
            classify("Error during planning: table 'smrdb.public.nope' not found").to_string(),
            "relation \"nope\" does not exist"
        );
    }
}
