//! Binding SQL expressions (sqlparser AST) to Tstore expressions over column indices.

use smrdb_tstore::expr::BinaryOp;
use smrdb_tstore::{parse_type, AggCall, AggFunc, ColumnDef, DataType, Expr, TableSchema, Value};
use sqlparser::ast::{self as ast, FunctionArg, FunctionArgExpr, FunctionArguments};

use crate::PlanError;

/// Normalises an identifier: unquoted names are lower-cased.
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

/// Converts a sqlparser type to ours.
pub(crate) fn sql_type(t: &ast::DataType) -> Result<DataType, PlanError> {
    let s = t.to_string();
    parse_type(&s).map_err(|_| PlanError::UndefinedType(s.to_lowercase()))
}

/// Maps a Tstore error raised while folding constants.
pub(crate) fn value_err(e: smrdb_tstore::Error) -> PlanError {
    PlanError::from(e)
}

/// One table of a FROM clause, as the binder sees it.
#[derive(Debug, Clone)]
pub(crate) struct ScopeTable {
    /// Table name.
    pub table: String,
    /// `AS alias`, if any (the table is then known only by its alias).
    pub alias: Option<String>,
    /// The table's columns.
    pub schema: TableSchema,
    /// Index of its first column in [`Scope::schema`].
    pub offset: usize,
    /// False while binding a `JOIN ... ON` condition that cannot see this table (a
    /// table joined later, or one of another FROM item).
    pub visible: bool,
}

impl ScopeTable {
    /// The name the query refers to it by: the alias, else the table name.
    pub(crate) fn name(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.table)
    }
}

/// The tables an expression is bound against (none, for SELECT without FROM).
///
/// Column indices are into [`Scope::schema`]: every table's columns, in FROM order
/// (the *full scope*). With one table that is the table's schema as is; with
/// several, columns are named `alias.column` (for messages and EXPLAIN).
#[derive(Debug, Clone)]
pub(crate) struct Scope {
    pub tables: Vec<ScopeTable>,
    pub schema: TableSchema,
}

impl Scope {
    pub(crate) fn empty() -> Self {
        Scope {
            tables: vec![],
            schema: TableSchema::new(vec![]),
        }
    }

    /// One table.
    pub(crate) fn single(table: String, alias: Option<String>, schema: TableSchema) -> Self {
        Scope {
            tables: vec![ScopeTable {
                table,
                alias,
                schema: schema.clone(),
                offset: 0,
                visible: true,
            }],
            schema,
        }
    }

    /// Several tables, in FROM order: (table, alias, schema).
    ///
    /// # Errors
    /// Two entries known by the same name (42712).
    pub(crate) fn multi(
        tables: Vec<(String, Option<String>, TableSchema)>,
    ) -> Result<Self, PlanError> {
        if let [(t, a, s)] = tables.as_slice() {
            return Ok(Scope::single(t.clone(), a.clone(), s.clone()));
        }
        let mut out: Vec<ScopeTable> = Vec::with_capacity(tables.len());
        let mut cols = Vec::new();
        for (table, alias, schema) in tables {
            let st = ScopeTable {
                table,
                alias,
                offset: cols.len(),
                schema,
                visible: true,
            };
            if out.iter().any(|o| o.name() == st.name()) {
                return Err(PlanError::InvalidReference {
                    code: "42712",
                    msg: format!("table name \"{}\" specified more than once", st.name()),
                });
            }
            for c in &st.schema.columns {
                cols.push(ColumnDef::new(
                    format!("{}.{}", st.name(), c.name),
                    c.data_type,
                    c.nullable,
                ));
            }
            out.push(st);
        }
        Ok(Scope {
            tables: out,
            schema: TableSchema::new(cols),
        })
    }

    /// The same scope where only the tables with `visible[i]` can be referenced
    /// (column indices unchanged).
    pub(crate) fn with_visible(&self, visible: &[bool]) -> Scope {
        let mut s = self.clone();
        for (t, v) in s.tables.iter_mut().zip(visible) {
            t.visible = *v;
        }
        s
    }

    /// The table a full-scope column index belongs to.
    pub(crate) fn table_of(&self, col: usize) -> usize {
        self.tables
            .iter()
            .rposition(|t| t.offset <= col)
            .unwrap_or(0)
    }

    /// The table a qualifier (`q` in `q.col` or `q.*`) names.
    ///
    /// # Errors
    /// 42P01 when no visible table is known by that name.
    pub(crate) fn qualified(&self, q: &str) -> Result<usize, PlanError> {
        let err = |msg: String| PlanError::InvalidReference { code: "42P01", msg };
        if let Some(i) = self.tables.iter().position(|t| t.name() == q) {
            if self.tables[i].visible {
                return Ok(i);
            }
            return Err(err(format!(
                "invalid reference to FROM-clause entry for table \"{q}\""
            )));
        }
        if let Some(t) = self.tables.iter().find(|t| t.table == q) {
            return Err(err(format!(
                "invalid reference to FROM-clause entry for table \"{q}\" (perhaps you meant \
                 to reference the table alias \"{}\")",
                t.name()
            )));
        }
        Err(err(format!("missing FROM-clause entry for table \"{q}\"")))
    }
}

/// Children of an expression.
pub(crate) fn children(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Column(_) | Expr::Literal(_) => vec![],
        Expr::Binary { left, right, .. } => vec![left, right],
        Expr::Negate(x) | Expr::Not(x) => vec![x],
        Expr::IsNull { expr, .. } | Expr::InList { expr, .. } | Expr::Cast { expr, .. } => {
            vec![expr]
        }
        Expr::Between {
            expr, low, high, ..
        } => vec![expr, low, high],
        Expr::Like { expr, pattern, .. } => vec![expr, pattern],
        Expr::Case {
            when_then,
            else_expr,
        } => {
            let mut v: Vec<&Expr> = Vec::new();
            for (c, t) in when_then {
                v.push(c);
                v.push(t);
            }
            if let Some(e) = else_expr {
                v.push(e);
            }
            v
        }
        Expr::Coalesce(args) => args.iter().collect(),
        Expr::NullIf(a, b) => vec![a, b],
    }
}

/// Rebuilds `e` with every direct child replaced by `f(child)`.
pub(crate) fn map_children(
    e: Expr,
    f: &mut dyn FnMut(Expr) -> Result<Expr, PlanError>,
) -> Result<Expr, PlanError> {
    #[allow(clippy::boxed_local)]
    fn bx(
        f: &mut dyn FnMut(Expr) -> Result<Expr, PlanError>,
        x: Box<Expr>,
    ) -> Result<Box<Expr>, PlanError> {
        Ok(Box::new(f(*x)?))
    }
    macro_rules! b {
        ($x:expr) => {
            bx(&mut *f, $x)
        };
    }
    Ok(match e {
        Expr::Column(_) | Expr::Literal(_) => e,
        Expr::Binary { op, left, right } => Expr::Binary {
            op,
            left: b!(left)?,
            right: b!(right)?,
        },
        Expr::Negate(x) => Expr::Negate(b!(x)?),
        Expr::Not(x) => Expr::Not(b!(x)?),
        Expr::IsNull { expr, negated } => Expr::IsNull {
            expr: b!(expr)?,
            negated,
        },
        Expr::InList {
            expr,
            list,
            negated,
        } => Expr::InList {
            expr: b!(expr)?,
            list,
            negated,
        },
        Expr::Cast { expr, to } => Expr::Cast {
            expr: b!(expr)?,
            to,
        },
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => Expr::Between {
            expr: b!(expr)?,
            low: b!(low)?,
            high: b!(high)?,
            negated,
        },
        Expr::Like {
            expr,
            pattern,
            negated,
        } => Expr::Like {
            expr: b!(expr)?,
            pattern: b!(pattern)?,
            negated,
        },
        Expr::Case {
            when_then,
            else_expr,
        } => Expr::Case {
            when_then: when_then
                .into_iter()
                .map(|(c, t)| Ok((f(c)?, f(t)?)))
                .collect::<Result<_, PlanError>>()?,
            else_expr: match else_expr {
                Some(x) => Some(b!(x)?),
                None => None,
            },
        },
        Expr::Coalesce(args) => {
            Expr::Coalesce(args.into_iter().map(&mut *f).collect::<Result<_, _>>()?)
        }
        Expr::NullIf(x, y) => Expr::NullIf(b!(x)?, b!(y)?),
    })
}

/// True if `e` refers to any column.
pub(crate) fn has_columns(e: &Expr) -> bool {
    matches!(e, Expr::Column(_)) || children(e).into_iter().any(has_columns)
}

/// Result type of an aggregate over an argument of type `t`.
fn agg_type(f: AggFunc, t: Option<DataType>) -> Result<DataType, PlanError> {
    Ok(match f {
        AggFunc::Count | AggFunc::CountStar | AggFunc::CountDistinct => DataType::BigInt,
        AggFunc::Sum | AggFunc::Avg | AggFunc::SumDistinct | AggFunc::AvgDistinct => {
            let avg = matches!(f, AggFunc::Avg | AggFunc::AvgDistinct);
            let t = t.unwrap_or(DataType::BigInt);
            if !t.is_numeric() {
                return Err(PlanError::TypeMismatch(format!(
                    "function {}({}) does not exist",
                    if avg { "avg" } else { "sum" },
                    t.sql_name().to_lowercase()
                )));
            }
            if avg || t == DataType::Double {
                DataType::Double
            } else {
                DataType::BigInt
            }
        }
        // mode / percentile_disc return one of the (ORDER BY) argument's values
        AggFunc::Min | AggFunc::Max | AggFunc::Mode { .. } | AggFunc::PercentileDisc { .. } => {
            t.unwrap_or(DataType::Text)
        }
    })
}

/// Binds expressions against a [`Scope`]. Aggregates (when allowed) are collected in
/// `aggs` and bound as `Column(ncols + j)` (the "extended" scope: table columns
/// followed by aggregate results).
pub(crate) struct Binder<'a> {
    pub scope: &'a Scope,
    /// `None`: aggregates are not allowed here; the string names the clause.
    pub aggs: Option<&'a mut Vec<(AggCall, DataType)>>,
    pub clause: &'static str,
}

impl<'a> Binder<'a> {
    pub(crate) fn new(scope: &'a Scope, clause: &'static str) -> Self {
        Binder {
            scope,
            aggs: None,
            clause,
        }
    }

    pub(crate) fn with_aggs(
        scope: &'a Scope,
        aggs: &'a mut Vec<(AggCall, DataType)>,
        clause: &'static str,
    ) -> Self {
        Binder {
            scope,
            aggs: Some(aggs),
            clause,
        }
    }

    /// Schema of the extended scope.
    pub(crate) fn ext_schema(&self) -> TableSchema {
        let mut cols = self.scope.schema.columns.clone();
        if let Some(aggs) = &self.aggs {
            for (j, (_, t)) in aggs.iter().enumerate() {
                cols.push(ColumnDef::new(format!("agg{j}"), *t, true));
            }
        }
        TableSchema::new(cols)
    }

    /// Type of a bound expression (TEXT for an untyped NULL); checks operand types.
    pub(crate) fn ty(&self, e: &Expr) -> Result<DataType, PlanError> {
        Ok(e.data_type(&self.ext_schema())?)
    }

    /// Resolves `name` or `qual.name` against the scope: a qualified name in the
    /// table the qualifier names, an unqualified one in every visible table (42702 when
    /// several have it).
    fn column(&self, qual: Option<&[ast::Ident]>, name: &ast::Ident) -> Result<Expr, PlanError> {
        let n = ident(name);
        let scope = self.scope;
        if let Some(q) = qual {
            let q = ident(
                q.last()
                    .ok_or_else(|| PlanError::Internal("empty".into()))?,
            );
            let t = &scope.tables[scope.qualified(&q)?];
            return t
                .schema
                .columns
                .iter()
                .position(|c| c.name == n)
                .map(|i| Expr::Column(t.offset + i))
                .ok_or_else(|| {
                    PlanError::UndefinedColumn(if scope.tables.len() > 1 {
                        format!("{q}.{n}")
                    } else {
                        n.clone()
                    })
                });
        }
        let mut found = None;
        for t in scope.tables.iter().filter(|t| t.visible) {
            if let Some(i) = t.schema.columns.iter().position(|c| c.name == n) {
                if found.is_some() {
                    return Err(PlanError::InvalidReference {
                        code: "42702",
                        msg: format!("column reference \"{n}\" is ambiguous"),
                    });
                }
                found = Some(t.offset + i);
            }
        }
        found.map(Expr::Column).ok_or(PlanError::UndefinedColumn(n))
    }

    /// Coerces a TEXT literal to `t` (plan-time cast of an "unknown" literal); a NULL
    /// literal takes type `t` too (`1 / NULL` is an INT, as in PostgreSQL).
    fn coerce_lit(e: Expr, t: DataType) -> Result<Expr, PlanError> {
        match e {
            Expr::Literal(Value::Null) if t != DataType::Text => Ok(Expr::Cast {
                expr: Box::new(Expr::Literal(Value::Null)),
                to: t,
            }),
            Expr::Literal(Value::Text(s)) if t != DataType::Text => Ok(Expr::Literal(
                Value::Text(s).coerce_to(t).map_err(|e| match e {
                    smrdb_tstore::Error::TypeMismatch(m) => PlanError::InvalidText(m),
                    e => value_err(e),
                })?,
            )),
            e => Ok(e),
        }
    }

    fn is_unknown_lit(e: &Expr) -> bool {
        matches!(
            e,
            Expr::Literal(Value::Text(_)) | Expr::Literal(Value::Null)
        )
    }

    /// Makes string and NULL literals on one side take the other side's type.
    fn harmonize(&self, l: Expr, r: Expr) -> Result<(Expr, Expr), PlanError> {
        if Self::is_unknown_lit(&l) && !Self::is_unknown_lit(&r) {
            let t = self.ty(&r)?;
            return Ok((Self::coerce_lit(l, t)?, r));
        }
        if Self::is_unknown_lit(&r) && !Self::is_unknown_lit(&l) {
            let t = self.ty(&l)?;
            return Ok((l, Self::coerce_lit(r, t)?));
        }
        Ok((l, r))
    }

    /// Coerces string literals among `es` to the type of the first other expression.
    fn harmonize_all(&self, es: Vec<Expr>) -> Result<Vec<Expr>, PlanError> {
        let target = es.iter().find(|e| !Self::is_unknown_lit(e));
        let Some(target) = target else { return Ok(es) };
        let t = self.ty(target)?;
        es.into_iter().map(|e| Self::coerce_lit(e, t)).collect()
    }

    /// Folds a column-free expression to a literal (surfacing errors at plan time).
    fn fold(e: Expr) -> Result<Expr, PlanError> {
        if has_columns(&e) {
            return Ok(e);
        }
        let v = e.eval_scalar()?;
        if v.is_null() {
            // Keep the type: a bare NULL literal would be TEXT.
            let t = e.data_type(&smrdb_tstore::TableSchema { columns: vec![] })?;
            if t != DataType::Text {
                return Ok(Expr::Cast {
                    expr: Box::new(Expr::Literal(Value::Null)),
                    to: t,
                });
            }
        }
        Ok(Expr::Literal(v))
    }

    /// Binds a scalar expression.
    pub(crate) fn bind(&mut self, e: &ast::Expr) -> Result<Expr, PlanError> {
        use ast::Expr as A;
        Ok(match e {
            A::Identifier(i) => self.column(None, i)?,
            A::CompoundIdentifier(parts) if parts.len() >= 2 && parts.len() <= 3 => {
                let (q, c) = parts.split_at(parts.len() - 1);
                self.column(Some(q), &c[0])?
            }
            A::Nested(x) => self.bind(x)?,
            A::Value(v) => Expr::Literal(literal(&v.value)?),
            A::TypedString(ts) => {
                let t = sql_type(&ts.data_type)?;
                let s = match &ts.value.value {
                    ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => {
                        s.clone()
                    }
                    other => return Err(PlanError::Unsupported(format!("typed literal {other}"))),
                };
                Self::coerce_lit(Expr::Literal(Value::Text(s)), t)?
            }
            A::UnaryOp { op, expr } => match op {
                ast::UnaryOperator::Plus => self.bind(expr)?,
                ast::UnaryOperator::Minus => {
                    if let A::Value(v) = expr.as_ref() {
                        if let ast::Value::Number(n, _) = &v.value {
                            return number(&format!("-{n}")).map(Expr::Literal);
                        }
                    }
                    let x = self.bind(expr)?;
                    let t = self.ty(&x)?;
                    if !t.is_numeric() && !matches!(x, Expr::Literal(Value::Null)) {
                        return Err(PlanError::TypeMismatch(format!(
                            "operator does not exist: - {t}"
                        )));
                    }
                    Self::fold(Expr::Negate(Box::new(x)))?
                }
                ast::UnaryOperator::Not => {
                    let x = self.bind(expr)?;
                    let x = Self::coerce_lit(x, DataType::Boolean)?;
                    Expr::Not(Box::new(x))
                }
                other => return Err(PlanError::Unsupported(format!("operator {other}"))),
            },
            A::BinaryOp { left, op, right } => {
                use ast::BinaryOperator as B;
                let bop = match op {
                    B::Plus => BinaryOp::Add,
                    B::Minus => BinaryOp::Sub,
                    B::Multiply => BinaryOp::Mul,
                    B::Divide => BinaryOp::Div,
                    B::Modulo => BinaryOp::Mod,
                    B::Eq => BinaryOp::Eq,
                    B::NotEq => BinaryOp::NotEq,
                    B::Lt => BinaryOp::Lt,
                    B::LtEq => BinaryOp::LtEq,
                    B::Gt => BinaryOp::Gt,
                    B::GtEq => BinaryOp::GtEq,
                    B::And => BinaryOp::And,
                    B::Or => BinaryOp::Or,
                    other => return Err(PlanError::Unsupported(format!("operator {other}"))),
                };
                let (l, r) = (self.bind(left)?, self.bind(right)?);
                let (l, r) = if matches!(bop, BinaryOp::And | BinaryOp::Or) {
                    (
                        Self::coerce_lit(l, DataType::Boolean)?,
                        Self::coerce_lit(r, DataType::Boolean)?,
                    )
                } else {
                    self.harmonize(l, r)?
                };
                let out = l.binary(bop, r);
                self.ty(&out)?;
                if bop.is_arithmetic() {
                    Self::fold(out)?
                } else {
                    out
                }
            }
            A::IsNull(x) => Expr::IsNull {
                expr: Box::new(self.bind(x)?),
                negated: false,
            },
            A::IsNotNull(x) => Expr::IsNull {
                expr: Box::new(self.bind(x)?),
                negated: true,
            },
            A::InList {
                expr,
                list,
                negated,
            } => {
                let x = self.bind(expr)?;
                let t = if Self::is_unknown_lit(&x) {
                    None
                } else {
                    Some(self.ty(&x)?)
                };
                let mut vals = Vec::with_capacity(list.len());
                for item in list {
                    let b = self.bind(item)?;
                    if has_columns(&b) {
                        return Err(PlanError::Unsupported(
                            "IN list items that are not constants".into(),
                        ));
                    }
                    let b = match t {
                        Some(t) => Self::coerce_lit(b, t)?,
                        None => b,
                    };
                    vals.push(b.eval_scalar()?);
                }
                let out = Expr::InList {
                    expr: Box::new(x),
                    list: vals,
                    negated: *negated,
                };
                self.ty(&out)?;
                out
            }
            A::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.bind(expr)?;
                let lo = self.bind(low)?;
                let hi = self.bind(high)?;
                let (x, lo) = self.harmonize(x, lo)?;
                let (x, hi) = self.harmonize(x, hi)?;
                let out = Expr::Between {
                    expr: Box::new(x),
                    low: Box::new(lo),
                    high: Box::new(hi),
                    negated: *negated,
                };
                self.ty(&out)?;
                out
            }
            A::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => {
                let out = Expr::Like {
                    expr: Box::new(self.bind(expr)?),
                    pattern: Box::new(self.bind(pattern)?),
                    negated: *negated,
                };
                self.ty(&out)?;
                out
            }
            A::Cast {
                kind: ast::CastKind::Cast | ast::CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => {
                let to = sql_type(data_type)?;
                let x = self.bind(expr)?;
                if let Expr::Literal(Value::Text(_)) = x {
                    Self::coerce_lit(x, to)?
                } else {
                    let out = Expr::Cast {
                        expr: Box::new(x),
                        to,
                    };
                    self.ty(&out)?;
                    Self::fold(out)?
                }
            }
            A::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let op = match operand {
                    Some(o) => Some(self.bind(o)?),
                    None => None,
                };
                let mut conds = Vec::new();
                let mut results = Vec::new();
                for cw in conditions {
                    let c = self.bind(&cw.condition)?;
                    let c = match &op {
                        Some(o) => {
                            let (o, c) = self.harmonize(o.clone(), c)?;
                            o.eq(c)
                        }
                        None => Self::coerce_lit(c, DataType::Boolean)?,
                    };
                    conds.push(c);
                    results.push(self.bind(&cw.result)?);
                }
                let has_else = else_result.is_some();
                if let Some(e) = else_result {
                    results.push(self.bind(e)?);
                }
                let mut results = self.harmonize_all(results)?;
                let else_expr = if has_else {
                    results.pop().map(Box::new)
                } else {
                    None
                };
                let out = Expr::Case {
                    when_then: conds.into_iter().zip(results).collect(),
                    else_expr,
                };
                self.ty(&out)?;
                out
            }
            A::Function(f) => self.function(f)?,
            A::Subquery(_) | A::InSubquery { .. } | A::Exists { .. } => {
                return Err(PlanError::Unsupported("subqueries".into()))
            }
            other => {
                return Err(PlanError::Unsupported(format!("expression {other}")));
            }
        })
    }

    fn function(&mut self, f: &ast::Function) -> Result<Expr, PlanError> {
        let name = f
            .name
            .0
            .last()
            .map(|p| match p {
                ast::ObjectNamePart::Identifier(i) => i.value.to_lowercase(),
                other => other.to_string(),
            })
            .unwrap_or_default();
        if f.over.is_some() {
            return Err(PlanError::Unsupported(format!("window function {name}")));
        }
        if f.filter.is_some() || f.null_treatment.is_some() {
            return Err(PlanError::Unsupported(format!(
                "{name}(...) FILTER / IGNORE NULLS"
            )));
        }
        // Ordered-set aggregates: `name(direct args) WITHIN GROUP (ORDER BY key)`.
        let ordered_set = matches!(
            name.as_str(),
            "mode" | "percentile_disc" | "percentile_cont"
        );
        // an ordered-set aggregate needs WITHIN GROUP, nothing else may have it
        if ordered_set == f.within_group.is_empty() {
            return Err(PlanError::InvalidReference {
                code: "42809",
                msg: if ordered_set {
                    format!("WITHIN GROUP is required for ordered-set aggregate {name}")
                } else {
                    format!(
                        "{name} is not an ordered-set aggregate, so it cannot have WITHIN GROUP"
                    )
                },
            });
        }
        let (args, distinct) = match &f.args {
            FunctionArguments::None => (vec![], false),
            FunctionArguments::List(l) => {
                if !l.clauses.is_empty() {
                    return Err(PlanError::Unsupported(format!("clauses in {name}(...)")));
                }
                (
                    l.args.iter().collect::<Vec<_>>(),
                    matches!(
                        l.duplicate_treatment,
                        Some(ast::DuplicateTreatment::Distinct)
                    ),
                )
            }
            FunctionArguments::Subquery(_) => {
                return Err(PlanError::Unsupported("subqueries".into()))
            }
        };
        let pick = |plain: AggFunc, dist: AggFunc| Some(if distinct { dist } else { plain });
        let mut agg = match name.as_str() {
            "count" => pick(AggFunc::Count, AggFunc::CountDistinct),
            "sum" => pick(AggFunc::Sum, AggFunc::SumDistinct),
            "avg" => pick(AggFunc::Avg, AggFunc::AvgDistinct),
            // DISTINCT does not change MIN / MAX
            "min" => Some(AggFunc::Min),
            "max" => Some(AggFunc::Max),
            _ => None,
        };
        if distinct && ordered_set {
            return Err(PlanError::Syntax(
                "cannot use DISTINCT with WITHIN GROUP".into(),
            ));
        }
        if distinct && agg.is_none() {
            return Err(PlanError::Unsupported(format!("{name}(DISTINCT ...)")));
        }
        let mut exprs = Vec::new();
        let mut star = false;
        for a in &args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => exprs.push(e),
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" => star = true,
                other => {
                    return Err(PlanError::Unsupported(format!(
                        "argument {other} of {name}"
                    )))
                }
            }
        }
        if star && distinct {
            return Err(PlanError::Syntax(format!(
                "{name}(DISTINCT *) is not valid"
            )));
        }
        // The aggregated argument: the WITHIN GROUP key of an ordered-set aggregate
        // (its parenthesized arguments are direct, per-call constants).
        let mut within: Option<&ast::Expr> = None;
        if ordered_set {
            if self.aggs.is_none() {
                return Err(PlanError::Grouping(format!(
                    "aggregate functions are not allowed in {}",
                    self.clause
                )));
            }
            let key = match f.within_group.as_slice() {
                [k] if k.with_fill.is_none() => k,
                _ => {
                    return Err(PlanError::TypeMismatch(format!(
                        "function {name} takes exactly one WITHIN GROUP (ORDER BY ...) key"
                    )))
                }
            };
            let descending = key.options.asc == Some(false);
            within = Some(&key.expr);
            agg = Some(match (name.as_str(), exprs.as_slice(), star) {
                ("mode", [], false) => AggFunc::Mode { descending },
                ("percentile_disc", [fe], false) => {
                    let mut inner = Binder::new(self.scope, "aggregate function arguments");
                    let fb = inner.bind(fe)?;
                    if has_columns(&fb) {
                        return Err(PlanError::Unsupported(format!(
                            "{name} with a fraction that is not a constant"
                        )));
                    }
                    let fv = match fb.eval_scalar()? {
                        Value::Null => {
                            return Err(PlanError::Unsupported(format!(
                                "{name} with a NULL fraction"
                            )))
                        }
                        v @ Value::Text(_) => {
                            v.coerce_to(DataType::Double).map_err(|e| match e {
                                smrdb_tstore::Error::TypeMismatch(m) => PlanError::InvalidText(m),
                                e => value_err(e),
                            })?
                        }
                        v => v,
                    };
                    let Some(fraction) = fv.as_f64() else {
                        return Err(PlanError::TypeMismatch(format!(
                            "function {name}({}) does not exist",
                            inner.ty(&fb)?.sql_name().to_lowercase()
                        )));
                    };
                    AggFunc::percentile_disc(fraction, descending)?
                }
                ("percentile_cont", _, _) => {
                    return Err(PlanError::Unsupported(format!("function {name}")))
                }
                _ => {
                    return Err(PlanError::TypeMismatch(format!(
                        "function {name} takes {} direct argument{}",
                        if name == "mode" { "no" } else { "exactly one" },
                        if name == "mode" { "s" } else { "" }
                    )))
                }
            });
        }
        if let Some(func) = agg {
            let clause = self.clause;
            let Some(aggs) = self.aggs.as_deref_mut() else {
                return Err(PlanError::Grouping(format!(
                    "aggregate functions are not allowed in {clause}"
                )));
            };
            let arg_ast = match within {
                Some(k) => Some(k),
                None if star && exprs.is_empty() => None,
                None if exprs.len() == 1 && !star => Some(exprs[0]),
                None => {
                    return Err(PlanError::TypeMismatch(format!(
                        "function {name} takes exactly one argument"
                    )))
                }
            };
            let (call, arg_t) = if let Some(arg_ast) = arg_ast {
                let mut inner = Binder::new(self.scope, "aggregate function arguments");
                let mut arg = inner.bind(arg_ast)?;
                // An untyped NULL argument: give it a concrete type.
                if matches!(arg, Expr::Literal(Value::Null)) {
                    arg = arg.cast(
                        if matches!(
                            func,
                            AggFunc::Sum
                                | AggFunc::Avg
                                | AggFunc::SumDistinct
                                | AggFunc::AvgDistinct
                        ) {
                            DataType::BigInt
                        } else {
                            DataType::Text
                        },
                    );
                }
                let t = inner.ty(&arg)?;
                (AggCall::new(func, arg), Some(t))
            } else {
                (AggCall::count_star(), None)
            };
            let rt = agg_type(func, arg_t)?;
            let ncols = self.scope.schema.columns.len();
            let j = match aggs.iter().position(|(c, _)| *c == call) {
                Some(j) => j,
                None => {
                    aggs.push((call, rt));
                    aggs.len() - 1
                }
            };
            return Ok(Expr::Column(ncols + j));
        }
        match name.as_str() {
            "coalesce" if !exprs.is_empty() => {
                let bound = exprs
                    .iter()
                    .map(|e| self.bind(e))
                    .collect::<Result<Vec<_>, _>>()?;
                let out = Expr::Coalesce(self.harmonize_all(bound)?);
                self.ty(&out)?;
                Ok(out)
            }
            "nullif" if exprs.len() == 2 => {
                let (a, b) = (self.bind(exprs[0])?, self.bind(exprs[1])?);
                let (a, b) = self.harmonize(a, b)?;
                let out = Expr::NullIf(Box::new(a), Box::new(b));
                self.ty(&out)?;
                Ok(out)
            }
            _ => Err(PlanError::Unsupported(format!("function {name}"))),
        }
    }
}

/// A numeric literal: INT if it fits, else BIGINT, else DOUBLE.
fn number(s: &str) -> Result<Value, PlanError> {
    if let Ok(v) = s.parse::<i32>() {
        return Ok(Value::Int(v));
    }
    if let Ok(v) = s.parse::<i64>() {
        return Ok(Value::BigInt(v));
    }
    s.parse::<f64>()
        .map(Value::Double)
        .map_err(|_| PlanError::Syntax(format!("invalid number {s}")))
}

/// A literal value.
pub(crate) fn literal(v: &ast::Value) -> Result<Value, PlanError> {
    use ast::Value as V;
    Ok(match v {
        V::Number(n, _) => number(n)?,
        V::SingleQuotedString(s)
        | V::EscapedStringLiteral(s)
        | V::DoubleQuotedString(s)
        | V::UnicodeStringLiteral(s)
        | V::NationalStringLiteral(s) => Value::Text(s.clone()),
        V::DollarQuotedString(d) => Value::Text(d.value.clone()),
        V::Boolean(b) => Value::Bool(*b),
        V::Null => Value::Null,
        other => return Err(PlanError::Unsupported(format!("literal {other}"))),
    })
}
