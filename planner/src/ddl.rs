//! DDL and session statements: CREATE TABLE, DROP TABLE, COPY, SET.

use datafusion::sql::sqlparser::ast;
use smrdb_tstore::{ColumnDef, SqlType, TableSchema};

use crate::{Catalog, CopySource, CsvFormat, Plan, PlanError};

/// An identifier as PostgreSQL folds it: lower case unless quoted.
pub(crate) fn ident(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// The table name of an object name (`t`, `public.t`).
pub(crate) fn object_name(n: &ast::ObjectName) -> Result<String, PlanError> {
    let parts: Vec<String> =
        n.0.iter()
            .map(|p| match p {
                ast::ObjectNamePart::Identifier(i) => Ok(ident(i)),
                other => Err(PlanError::Unsupported(format!("object name {other}"))),
            })
            .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [t] => Ok(t.clone()),
        [s, t] if s == "public" => Ok(t.clone()),
        _ => Err(PlanError::Unsupported(format!("qualified name {n}"))),
    }
}

fn precision(p: u64, what: &str) -> Result<u32, PlanError> {
    u32::try_from(p).map_err(|_| PlanError::Other {
        code: "22023",
        msg: format!("{what} {p} is out of range"),
    })
}

fn char_len(l: &Option<ast::CharacterLength>, what: &str) -> Result<Option<u32>, PlanError> {
    match l {
        None => Ok(None),
        Some(ast::CharacterLength::IntegerLength { length, .. }) => {
            let n = precision(*length, what)?;
            if n == 0 || n > 10_485_760 {
                return Err(PlanError::Other {
                    code: "22023",
                    msg: format!("length for type {what} must be between 1 and 10485760"),
                });
            }
            Ok(Some(n))
        }
        Some(ast::CharacterLength::Max) => Ok(None),
    }
}

/// A column type of CREATE TABLE, with PostgreSQL's names.
///
/// # Errors
/// [`PlanError::UndefinedType`] for types that do not exist here, 22023 for bad
/// parameters.
pub fn sql_type(t: &ast::DataType) -> Result<SqlType, PlanError> {
    use ast::DataType as D;
    let numeric = |info: &ast::ExactNumberInfo| -> Result<SqlType, PlanError> {
        let (p, s) = match info {
            ast::ExactNumberInfo::None => (38, 10),
            ast::ExactNumberInfo::Precision(p) => (*p, 0),
            ast::ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s),
        };
        let bad = || {
            PlanError::Other {
            code: "22023",
            msg: format!(
                "NUMERIC precision {p} must be between 1 and {} and scale {s} between 0 and the precision",
                smrdb_tstore::types::MAX_NUMERIC_PRECISION
            ),
        }
        };
        let precision = u8::try_from(p).map_err(|_| bad())?;
        let scale = i8::try_from(s).map_err(|_| bad())?;
        SqlType::Numeric { precision, scale }
            .validate()
            .map_err(|_| bad())
    };
    Ok(match t {
        D::SmallInt(None) | D::Int2(None) => SqlType::SmallInt,
        D::Int(None) | D::Integer(None) | D::Int4(None) => SqlType::Integer,
        D::BigInt(None) | D::Int8(None) => SqlType::BigInt,
        D::Real | D::Float4 => SqlType::Real,
        D::Float(ast::ExactNumberInfo::Precision(p)) if *p <= 24 => SqlType::Real,
        D::Float(_) | D::Float8 | D::DoublePrecision | D::Double(ast::ExactNumberInfo::None) => {
            SqlType::Double
        }
        D::Numeric(i) | D::Decimal(i) | D::Dec(i) => numeric(i)?,
        D::Char(l) | D::Character(l) => SqlType::Char(char_len(l, "character")?.unwrap_or(1)),
        D::Varchar(l) | D::CharacterVarying(l) => SqlType::Varchar(char_len(l, "varchar")?),
        D::Text | D::String(None) => SqlType::Text,
        D::Date => SqlType::Date,
        D::Timestamp(
            None | Some(6),
            ast::TimezoneInfo::None | ast::TimezoneInfo::WithoutTimeZone,
        ) => SqlType::Timestamp,
        D::Bool | D::Boolean => SqlType::Boolean,
        D::Custom(n, args) if args.is_empty() => match n.to_string().to_lowercase().as_str() {
            "bpchar" => SqlType::Char(1),
            "int2" => SqlType::SmallInt,
            "int4" => SqlType::Integer,
            "int8" => SqlType::BigInt,
            "float4" => SqlType::Real,
            "float8" => SqlType::Double,
            "bool" => SqlType::Boolean,
            other => return Err(PlanError::UndefinedType(other.to_string())),
        },
        other => return Err(PlanError::UndefinedType(other.to_string().to_lowercase())),
    })
}

pub(crate) fn create_table(
    ct: &ast::CreateTable,
    catalog: &dyn Catalog,
) -> Result<Plan, PlanError> {
    if ct.query.is_some() {
        return Err(PlanError::Unsupported("CREATE TABLE AS".into()));
    }
    if !ct.constraints.is_empty() {
        return Err(PlanError::Unsupported("table constraints".into()));
    }
    let name = object_name(&ct.name)?;
    if ct.columns.is_empty() {
        return Err(PlanError::Unsupported("tables without columns".into()));
    }
    let mut cols: Vec<ColumnDef> = Vec::new();
    for c in &ct.columns {
        let n = ident(&c.name);
        if cols.iter().any(|d| d.name == n) {
            return Err(PlanError::DuplicateColumn(n));
        }
        let t = sql_type(&c.data_type)?;
        let mut nullable = true;
        for o in &c.options {
            match &o.option {
                ast::ColumnOption::Null => nullable = true,
                ast::ColumnOption::NotNull => nullable = false,
                // PRIMARY KEY is accepted as NOT NULL (uniqueness is not enforced).
                ast::ColumnOption::PrimaryKey(_) => nullable = false,
                other => return Err(PlanError::Unsupported(format!("column option {other}"))),
            }
        }
        cols.push(ColumnDef::new(n, t, nullable));
    }
    if catalog.table(&name).is_some() && !ct.if_not_exists {
        return Err(PlanError::DuplicateTable(name));
    }
    Ok(Plan::CreateTable {
        name,
        schema: TableSchema::new(cols),
        if_not_exists: ct.if_not_exists,
    })
}

pub(crate) fn drop_table(
    object_type: ast::ObjectType,
    if_exists: bool,
    names: &[ast::ObjectName],
    catalog: &dyn Catalog,
) -> Result<Plan, PlanError> {
    if object_type != ast::ObjectType::Table {
        return Err(PlanError::Unsupported(format!("DROP {object_type}")));
    }
    let names = names
        .iter()
        .map(object_name)
        .collect::<Result<Vec<_>, _>>()?;
    if !if_exists {
        if let Some(n) = names.iter().find(|n| catalog.table(n).is_none()) {
            return Err(PlanError::UndefinedTable(n.clone()));
        }
    }
    Ok(Plan::DropTable { names, if_exists })
}

fn table_of(
    catalog: &dyn Catalog,
    name: &ast::ObjectName,
) -> Result<(String, TableSchema), PlanError> {
    let n = object_name(name)?;
    let s = catalog
        .table(&n)
        .ok_or_else(|| PlanError::UndefinedTable(n.clone()))?;
    Ok((n, s.0))
}

/// Column indices of an explicit column list (all columns when empty).
fn target_columns(schema: &TableSchema, cols: &[ast::Ident]) -> Result<Vec<usize>, PlanError> {
    if cols.is_empty() {
        return Ok((0..schema.columns.len()).collect());
    }
    let mut out: Vec<usize> = Vec::new();
    for c in cols {
        let n = ident(c);
        let i = schema
            .columns
            .iter()
            .position(|d| d.name == n)
            .ok_or_else(|| PlanError::UndefinedColumn(format!("column \"{n}\" does not exist")))?;
        if out.contains(&i) {
            return Err(PlanError::DuplicateColumn(n));
        }
        out.push(i);
    }
    Ok(out)
}

pub(crate) fn copy(
    source: &ast::CopySource,
    to: bool,
    target: &ast::CopyTarget,
    options: &[ast::CopyOption],
    legacy: &[ast::CopyLegacyOption],
    catalog: &dyn Catalog,
) -> Result<Plan, PlanError> {
    if to {
        return Err(PlanError::Unsupported("COPY ... TO".into()));
    }
    let (name, columns) = match source {
        ast::CopySource::Table {
            table_name,
            columns,
        } => (table_name, columns),
        ast::CopySource::Query(_) => return Err(PlanError::Unsupported("COPY (query)".into())),
    };
    let (table, schema) = table_of(catalog, name)?;
    let cols = if columns.is_empty() {
        None
    } else {
        Some(target_columns(&schema, columns)?)
    };
    let src = match target {
        ast::CopyTarget::Stdin => CopySource::Stdin,
        ast::CopyTarget::File { filename } => CopySource::File(filename.clone()),
        other => return Err(PlanError::Unsupported(format!("COPY FROM {other}"))),
    };
    // PostgreSQL's default is the text format: tab-separated, \N for NULL, no quoting.
    let mut csv = false;
    let (mut header, mut delim, mut null, mut quote) = (false, None, None, None);
    let byte = |c: char| -> Result<u8, PlanError> {
        u8::try_from(c as u32)
            .map_err(|_| PlanError::Unsupported("non-ASCII COPY delimiter or quote".into()))
    };
    for o in options {
        match o {
            ast::CopyOption::Format(f) => match f.value.to_lowercase().as_str() {
                "csv" => csv = true,
                "text" => csv = false,
                other => return Err(PlanError::Unsupported(format!("COPY format {other}"))),
            },
            ast::CopyOption::Header(h) => header = *h,
            ast::CopyOption::Delimiter(c) => delim = Some(byte(*c)?),
            ast::CopyOption::Null(s) => null = Some(s.clone()),
            ast::CopyOption::Quote(c) => quote = Some(byte(*c)?),
            other => return Err(PlanError::Unsupported(format!("COPY option {other}"))),
        }
    }
    for o in legacy {
        match o {
            ast::CopyLegacyOption::Csv(opts) => {
                csv = true;
                for c in opts {
                    match c {
                        ast::CopyLegacyCsvOption::Header => header = true,
                        ast::CopyLegacyCsvOption::Quote(q) => quote = Some(byte(*q)?),
                        other => {
                            return Err(PlanError::Unsupported(format!("COPY option {other}")))
                        }
                    }
                }
            }
            ast::CopyLegacyOption::Header => header = true,
            ast::CopyLegacyOption::Delimiter(c) => delim = Some(byte(*c)?),
            ast::CopyLegacyOption::Null(s) => null = Some(s.clone()),
            other => return Err(PlanError::Unsupported(format!("COPY option {other}"))),
        }
    }
    let format = CsvFormat {
        header,
        delimiter: delim.unwrap_or(if csv { b',' } else { b'\t' }),
        null: null.unwrap_or_else(|| if csv { String::new() } else { "\\N".into() }),
        quote: if csv { quote.unwrap_or(b'"') } else { 0 },
        columns: cols,
    };
    Ok(Plan::Copy {
        table,
        source: src,
        format,
    })
}

fn set_value(e: &ast::Expr) -> String {
    match e {
        ast::Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
            other => other.to_string(),
        },
        ast::Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

pub(crate) fn set(s: &ast::Set) -> Result<Plan, PlanError> {
    match s {
        ast::Set::SingleAssignment {
            variable, values, ..
        } => Ok(Plan::Set {
            name: variable.to_string().to_lowercase(),
            value: values.iter().map(set_value).collect::<Vec<_>>().join(", "),
        }),
        ast::Set::SetTimeZone { value, .. } => Ok(Plan::Set {
            name: "timezone".into(),
            value: set_value(value),
        }),
        ast::Set::SetNames { charset_name, .. } => Ok(Plan::Set {
            name: "client_encoding".into(),
            value: charset_name.value.clone(),
        }),
        other => Err(PlanError::Unsupported(format!("{other}"))),
    }
}
