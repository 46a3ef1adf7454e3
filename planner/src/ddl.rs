//! DDL, DML and session statements.

use smrdb_tstore::{ColumnDef, DataType, Expr, TableSchema, Value};
use sqlparser::ast::{self as ast};

use crate::bind::{ident, object_name, sql_type, Binder, Scope};
use crate::select::plan_query;
use crate::{Catalog, CopySource, CsvFormat, InsertSource, Plan, PlanError};

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
                ast::ColumnOption::Unique {
                    is_primary: true, ..
                } => nullable = false,
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
    Ok((n, s))
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
            .ok_or_else(|| PlanError::UndefinedColumn(n.clone()))?;
        if out.contains(&i) {
            return Err(PlanError::DuplicateColumn(n));
        }
        out.push(i);
    }
    Ok(out)
}

fn coerce_value(v: &Value, c: &ColumnDef) -> Result<Value, PlanError> {
    let v = v.coerce_to(c.data_type).map_err(|e| match e {
        smrdb_tstore::Error::TypeMismatch(_) => PlanError::TypeMismatch(format!(
            "column \"{}\" is of type {} but expression is of type {}",
            c.name,
            c.data_type,
            v.data_type().map(|t| t.sql_name()).unwrap_or("NULL")
        )),
        e => PlanError::from(e),
    })?;
    if v.is_null() && !c.nullable {
        return Err(PlanError::NotNull(c.name.clone()));
    }
    Ok(v)
}

fn assignable(from: DataType, to: DataType) -> bool {
    from == to || (from.is_numeric() && to.is_numeric()) || from == DataType::Text
}

pub(crate) fn insert(ins: &ast::Insert, catalog: &dyn Catalog) -> Result<Plan, PlanError> {
    if ins.on.is_some()
        || ins.returning.is_some()
        || !ins.assignments.is_empty()
        || ins.partitioned.is_some()
        || ins.or.is_some()
        || ins.ignore
        || ins.replace_into
        || ins.overwrite
    {
        return Err(PlanError::Unsupported(
            "INSERT ... ON CONFLICT / RETURNING / SET".into(),
        ));
    }
    let name = match &ins.table {
        ast::TableObject::TableName(n) => n,
        other => return Err(PlanError::Unsupported(format!("INSERT INTO {other}"))),
    };
    let (table, schema) = table_of(catalog, name)?;
    let targets = target_columns(&schema, &ins.columns)?;
    let Some(src) = &ins.source else {
        return Err(PlanError::Unsupported(
            "INSERT without VALUES or SELECT".into(),
        ));
    };
    if let ast::SetExpr::Values(values) = src.body.as_ref() {
        if src.order_by.is_some() || src.limit_clause.is_some() || src.with.is_some() {
            return Err(PlanError::Unsupported(
                "VALUES with ORDER BY / LIMIT".into(),
            ));
        }
        let scope = Scope::empty();
        let mut rows = Vec::with_capacity(values.rows.len());
        for r in &values.rows {
            if r.len() > targets.len() {
                return Err(PlanError::Syntax(
                    "INSERT has more expressions than target columns".into(),
                ));
            }
            if r.len() < targets.len() && !ins.columns.is_empty() {
                return Err(PlanError::Syntax(
                    "INSERT has more target columns than expressions".into(),
                ));
            }
            let mut row = vec![Value::Null; schema.columns.len()];
            for (e, &c) in r.iter().zip(&targets) {
                if let ast::Expr::Identifier(i) = e {
                    if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") {
                        continue;
                    }
                }
                let x = Binder::new(&scope, "VALUES").bind(e)?;
                let v = x.eval_scalar()?;
                row[c] = coerce_value(&v, &schema.columns[c])?;
            }
            for (i, c) in schema.columns.iter().enumerate() {
                if row[i].is_null() && !c.nullable {
                    return Err(PlanError::NotNull(c.name.clone()));
                }
            }
            rows.push(row);
        }
        return Ok(Plan::Insert {
            table,
            source: InsertSource::Values(rows),
        });
    }
    let plan = plan_query(src, catalog)?;
    if plan.columns.len() > targets.len() {
        return Err(PlanError::Syntax(
            "INSERT has more expressions than target columns".into(),
        ));
    }
    if plan.columns.len() < targets.len() && !ins.columns.is_empty() {
        return Err(PlanError::Syntax(
            "INSERT has more target columns than expressions".into(),
        ));
    }
    let mut map = vec![None; schema.columns.len()];
    for (k, (&c, (_, t))) in targets.iter().zip(&plan.columns).enumerate() {
        let def = &schema.columns[c];
        if !assignable(*t, def.data_type) {
            return Err(PlanError::TypeMismatch(format!(
                "column \"{}\" is of type {} but expression is of type {t}",
                def.name, def.data_type
            )));
        }
        map[c] = Some(k);
    }
    if let Some(c) = schema
        .columns
        .iter()
        .zip(&map)
        .find(|(c, m)| !c.nullable && m.is_none())
    {
        return Err(PlanError::NotNull(c.0.name.clone()));
    }
    Ok(Plan::Insert {
        table,
        source: InsertSource::Query {
            plan: Box::new(plan),
            targets: map,
        },
    })
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

fn single_table(t: &ast::TableWithJoins) -> Result<(String, Option<String>), PlanError> {
    if !t.joins.is_empty() {
        return Err(PlanError::Unsupported("joins in UPDATE / DELETE".into()));
    }
    match &t.relation {
        ast::TableFactor::Table { name, alias, .. } => {
            Ok((object_name(name)?, alias.as_ref().map(|a| ident(&a.name))))
        }
        other => Err(PlanError::Unsupported(format!("target {other}"))),
    }
}

fn scope_for(catalog: &dyn Catalog, t: &ast::TableWithJoins) -> Result<(String, Scope), PlanError> {
    let (name, alias) = single_table(t)?;
    let schema = catalog
        .table(&name)
        .ok_or_else(|| PlanError::UndefinedTable(name.clone()))?;
    Ok((name.clone(), Scope::single(name, alias, schema)))
}

fn where_clause(scope: &Scope, w: Option<&ast::Expr>) -> Result<Option<Expr>, PlanError> {
    let Some(w) = w else { return Ok(None) };
    let mut b = Binder::new(scope, "WHERE");
    let e = b.bind(w)?;
    let t = b.ty(&e)?;
    if t != DataType::Boolean && !matches!(e, Expr::Literal(Value::Null)) {
        return Err(PlanError::TypeMismatch(format!(
            "argument of WHERE must be type boolean, not type {t}"
        )));
    }
    Ok(Some(e))
}

pub(crate) fn update(
    table: &ast::TableWithJoins,
    assignments: &[ast::Assignment],
    selection: Option<&ast::Expr>,
    catalog: &dyn Catalog,
) -> Result<Plan, PlanError> {
    let (name, scope) = scope_for(catalog, table)?;
    let mut out: Vec<(usize, Expr)> = Vec::new();
    for a in assignments {
        let col = match &a.target {
            ast::AssignmentTarget::ColumnName(n) => {
                n.0.last()
                    .and_then(|p| match p {
                        ast::ObjectNamePart::Identifier(i) => Some(ident(i)),
                        _ => None,
                    })
                    .ok_or_else(|| PlanError::Unsupported(format!("assignment to {n}")))?
            }
            ast::AssignmentTarget::Tuple(_) => {
                return Err(PlanError::Unsupported("tuple assignment".into()))
            }
        };
        let i = scope
            .schema
            .columns
            .iter()
            .position(|c| c.name == col)
            .ok_or_else(|| PlanError::UndefinedColumn(col.clone()))?;
        if out.iter().any(|(j, _)| *j == i) {
            return Err(PlanError::Syntax(format!(
                "multiple assignments to same column \"{col}\""
            )));
        }
        let def = &scope.schema.columns[i];
        let mut b = Binder::new(&scope, "UPDATE");
        let e = b.bind(&a.value)?;
        let e = match e {
            Expr::Literal(v) => Expr::Literal(coerce_value(&v, def)?),
            e => {
                let t = b.ty(&e)?;
                if !(t == def.data_type || (t.is_numeric() && def.data_type.is_numeric())) {
                    return Err(PlanError::TypeMismatch(format!(
                        "column \"{}\" is of type {} but expression is of type {t}",
                        def.name, def.data_type
                    )));
                }
                e
            }
        };
        out.push((i, e));
    }
    let filter = where_clause(&scope, selection)?;
    Ok(Plan::Update {
        table: name,
        assignments: out,
        filter,
    })
}

pub(crate) fn delete(d: &ast::Delete, catalog: &dyn Catalog) -> Result<Plan, PlanError> {
    if !d.tables.is_empty()
        || d.using.is_some()
        || d.returning.is_some()
        || !d.order_by.is_empty()
        || d.limit.is_some()
    {
        return Err(PlanError::Unsupported(
            "DELETE ... USING / RETURNING / LIMIT".into(),
        ));
    }
    let from = match &d.from {
        ast::FromTable::WithFromKeyword(f) | ast::FromTable::WithoutKeyword(f) => f,
    };
    let [t] = from.as_slice() else {
        return Err(PlanError::Unsupported("DELETE from several tables".into()));
    };
    let (name, scope) = scope_for(catalog, t)?;
    let filter = where_clause(&scope, d.selection.as_ref())?;
    Ok(Plan::Delete {
        table: name,
        filter,
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
