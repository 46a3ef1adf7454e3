//! Bound scalar expressions and their vectorised evaluation over Arrow batches.
//!
//! Expressions refer to columns by index into the schema of the batch they are
//! evaluated on (for a [`crate::Slice`]: the table's columns). Semantics follow SQL
//! (PostgreSQL where it matters): three-valued logic, NULL-propagating operators,
//! numeric promotion int -> bigint -> double, errors (not NULL, not panics) for
//! division by zero, overflow and bad casts.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{
    new_empty_array, new_null_array, Array, ArrayRef, BooleanArray, Float64Array, NullArray,
    RecordBatch, StringArray, UInt32Array,
};
use arrow_cast::cast::{cast_with_options, CastOptions};
use arrow_schema::DataType as ArrowType;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::types::{values_to_array, DataType, TableSchema, Value};

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/` (integer division for integers)
    Div,
    /// `%`
    Mod,
    /// `=`
    Eq,
    /// `<>`
    NotEq,
    /// `<`
    Lt,
    /// `<=`
    LtEq,
    /// `>`
    Gt,
    /// `>=`
    GtEq,
    /// `AND` (three-valued)
    And,
    /// `OR` (three-valued)
    Or,
}

impl BinaryOp {
    fn symbol(self) -> &'static str {
        use BinaryOp::*;
        match self {
            Add => "+",
            Sub => "-",
            Mul => "*",
            Div => "/",
            Mod => "%",
            Eq => "=",
            NotEq => "<>",
            Lt => "<",
            LtEq => "<=",
            Gt => ">",
            GtEq => ">=",
            And => "AND",
            Or => "OR",
        }
    }

    /// True for `+ - * / %`.
    pub fn is_arithmetic(self) -> bool {
        matches!(
            self,
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod
        )
    }

    /// True for `= <> < <= > >=`.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq
                | BinaryOp::NotEq
                | BinaryOp::Lt
                | BinaryOp::LtEq
                | BinaryOp::Gt
                | BinaryOp::GtEq
        )
    }
}

/// A scalar expression bound to column indices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Expr {
    /// Column by index.
    Column(usize),
    /// Constant.
    Literal(Value),
    /// `left op right`.
    Binary {
        /// Operator.
        op: BinaryOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// Unary minus.
    Negate(Box<Expr>),
    /// `NOT e` (three-valued).
    Not(Box<Expr>),
    /// `e IS NULL` / `e IS NOT NULL`.
    IsNull {
        /// Operand.
        expr: Box<Expr>,
        /// `IS NOT NULL` when true.
        negated: bool,
    },
    /// `e IN (v1, v2, ...)` / `NOT IN`, with SQL NULL semantics.
    InList {
        /// Operand.
        expr: Box<Expr>,
        /// Literal list.
        list: Vec<Value>,
        /// `NOT IN` when true.
        negated: bool,
    },
    /// `e BETWEEN low AND high` (inclusive) / `NOT BETWEEN`.
    Between {
        /// Operand.
        expr: Box<Expr>,
        /// Lower bound.
        low: Box<Expr>,
        /// Upper bound.
        high: Box<Expr>,
        /// `NOT BETWEEN` when true.
        negated: bool,
    },
    /// `e LIKE pattern` / `NOT LIKE` (`%`, `_`, backslash escapes).
    Like {
        /// Operand (text).
        expr: Box<Expr>,
        /// Pattern (text).
        pattern: Box<Expr>,
        /// `NOT LIKE` when true.
        negated: bool,
    },
    /// `CASE WHEN c1 THEN v1 ... ELSE e END`. Branches are evaluated only on the rows
    /// that select them, so `CASE WHEN b <> 0 THEN a / b END` never divides by zero.
    Case {
        /// (condition, value) pairs, first true condition wins.
        when_then: Vec<(Expr, Expr)>,
        /// `ELSE` value; NULL when absent.
        else_expr: Option<Box<Expr>>,
    },
    /// `CAST(e AS t)`; invalid values are errors.
    Cast {
        /// Operand.
        expr: Box<Expr>,
        /// Target type.
        to: DataType,
    },
    /// `COALESCE(a, b, ...)`; later arguments are evaluated only where needed.
    Coalesce(Vec<Expr>),
    /// `NULLIF(a, b)`.
    NullIf(Box<Expr>, Box<Expr>),
}

// ---------------------------------------------------------------- constructors

impl Expr {
    /// Column `i`.
    pub fn col(i: usize) -> Expr {
        Expr::Column(i)
    }
    /// Literal.
    pub fn lit(v: impl Into<Value>) -> Expr {
        Expr::Literal(v.into())
    }
    /// `self op other`.
    pub fn binary(self, op: BinaryOp, other: Expr) -> Expr {
        Expr::Binary {
            op,
            left: Box::new(self),
            right: Box::new(other),
        }
    }
    /// `self = other`.
    pub fn eq(self, other: Expr) -> Expr {
        self.binary(BinaryOp::Eq, other)
    }
    /// `self < other`.
    pub fn lt(self, other: Expr) -> Expr {
        self.binary(BinaryOp::Lt, other)
    }
    /// `self > other`.
    pub fn gt(self, other: Expr) -> Expr {
        self.binary(BinaryOp::Gt, other)
    }
    /// `self AND other`.
    pub fn and(self, other: Expr) -> Expr {
        self.binary(BinaryOp::And, other)
    }
    /// `self OR other`.
    pub fn or(self, other: Expr) -> Expr {
        self.binary(BinaryOp::Or, other)
    }
    /// `self IS NULL`.
    pub fn is_null(self) -> Expr {
        Expr::IsNull {
            expr: Box::new(self),
            negated: false,
        }
    }
    /// `CAST(self AS to)`.
    pub fn cast(self, to: DataType) -> Expr {
        Expr::Cast {
            expr: Box::new(self),
            to,
        }
    }
}

impl std::ops::Not for Expr {
    type Output = Expr;
    /// `NOT self`.
    fn not(self) -> Expr {
        Expr::Not(Box::new(self))
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::BigInt(v)
    }
}
impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::Double(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_string())
    }
}

// ---------------------------------------------------------------- type checking

type Ty = Option<DataType>; // None: the type of an untyped NULL literal

fn ty_name(t: Ty) -> &'static str {
    t.map(|t| t.sql_name()).unwrap_or("NULL")
}

/// Type both sides are compared / combined in; `Err` if incomparable.
fn comparable(a: Ty, b: Ty, what: &str) -> Result<Ty> {
    match (a, b) {
        (None, x) | (x, None) => Ok(x),
        (Some(x), Some(y)) if x == y => Ok(Some(x)),
        (Some(x), Some(y)) => DataType::numeric_common(x, y)
            .map(Some)
            .ok_or_else(|| Error::TypeMismatch(format!("{what}: cannot compare {x} with {y}"))),
    }
}

/// Common result type of CASE / COALESCE branches.
fn unify(types: impl IntoIterator<Item = Ty>, what: &str) -> Result<Ty> {
    let mut acc: Ty = None;
    for t in types {
        acc = match (acc, t) {
            (None, x) | (x, None) => x,
            (Some(x), Some(y)) if x == y => Some(x),
            (Some(x), Some(y)) => Some(DataType::numeric_common(x, y).ok_or_else(|| {
                Error::TypeMismatch(format!("{what} types {x} and {y} cannot be matched"))
            })?),
        }
    }
    Ok(acc)
}

/// Whether `CAST(from AS to)` is allowed.
pub fn can_cast(from: DataType, to: DataType) -> bool {
    use DataType::*;
    from == to
        || (from.is_numeric() && to.is_numeric())
        || from == Text
        || to == Text
        || matches!(
            (from, to),
            (Boolean, Int | BigInt) | (Int | BigInt, Boolean)
        )
}

impl Expr {
    /// The result type of this expression over a table with `schema`; checks every
    /// operand type. A bare NULL literal has type TEXT (as in PostgreSQL).
    pub fn data_type(&self, schema: &TableSchema) -> Result<DataType> {
        let cols: Vec<DataType> = schema.columns.iter().map(|c| c.data_type).collect();
        Ok(self.infer(&cols)?.unwrap_or(DataType::Text))
    }

    /// Type inference over column types; `None` for untyped NULL.
    pub(crate) fn infer(&self, cols: &[DataType]) -> Result<Ty> {
        let bool_operand = |t: Ty, what: &str| -> Result<()> {
            match t {
                None | Some(DataType::Boolean) => Ok(()),
                Some(t) => Err(Error::TypeMismatch(format!(
                    "argument of {what} must be BOOLEAN, not {t}"
                ))),
            }
        };
        Ok(match self {
            Expr::Column(i) => Some(
                *cols
                    .get(*i)
                    .ok_or_else(|| Error::UnknownColumn(format!("#{i}")))?,
            ),
            Expr::Literal(v) => v.data_type(),
            Expr::Binary { op, left, right } => {
                let (l, r) = (left.infer(cols)?, right.infer(cols)?);
                if op.is_arithmetic() {
                    for t in [l, r].into_iter().flatten() {
                        if !t.is_numeric() {
                            return Err(Error::TypeMismatch(format!(
                                "operator {} cannot be applied to {} and {}",
                                op.symbol(),
                                ty_name(l),
                                ty_name(r)
                            )));
                        }
                    }
                    comparable(l, r, op.symbol())?
                } else if op.is_comparison() {
                    comparable(l, r, op.symbol())?;
                    Some(DataType::Boolean)
                } else {
                    bool_operand(l, op.symbol())?;
                    bool_operand(r, op.symbol())?;
                    Some(DataType::Boolean)
                }
            }
            Expr::Negate(e) => {
                let t = e.infer(cols)?;
                if let Some(t) = t {
                    if !t.is_numeric() {
                        return Err(Error::TypeMismatch(format!(
                            "unary minus cannot be applied to {t}"
                        )));
                    }
                }
                t
            }
            Expr::Not(e) => {
                bool_operand(e.infer(cols)?, "NOT")?;
                Some(DataType::Boolean)
            }
            Expr::IsNull { expr, .. } => {
                expr.infer(cols)?;
                Some(DataType::Boolean)
            }
            Expr::InList { expr, list, .. } => {
                let t = expr.infer(cols)?;
                for v in list {
                    comparable(t, v.data_type(), "IN")?;
                }
                Some(DataType::Boolean)
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                let t = expr.infer(cols)?;
                comparable(t, low.infer(cols)?, "BETWEEN")?;
                comparable(t, high.infer(cols)?, "BETWEEN")?;
                Some(DataType::Boolean)
            }
            Expr::Like { expr, pattern, .. } => {
                for t in [expr.infer(cols)?, pattern.infer(cols)?]
                    .into_iter()
                    .flatten()
                {
                    if t != DataType::Text {
                        return Err(Error::TypeMismatch(format!(
                            "LIKE requires TEXT operands, not {t}"
                        )));
                    }
                }
                Some(DataType::Boolean)
            }
            Expr::Case {
                when_then,
                else_expr,
            } => {
                let mut types = Vec::with_capacity(when_then.len() + 1);
                for (c, v) in when_then {
                    bool_operand(c.infer(cols)?, "CASE WHEN")?;
                    types.push(v.infer(cols)?);
                }
                if let Some(e) = else_expr {
                    types.push(e.infer(cols)?);
                }
                unify(types, "CASE")?
            }
            Expr::Cast { expr, to } => {
                if let Some(from) = expr.infer(cols)? {
                    if !can_cast(from, *to) {
                        return Err(Error::TypeMismatch(format!("cannot cast {from} to {to}")));
                    }
                }
                Some(*to)
            }
            Expr::Coalesce(args) => {
                if args.is_empty() {
                    return Err(Error::TypeMismatch(
                        "COALESCE needs at least one argument".into(),
                    ));
                }
                unify(
                    args.iter()
                        .map(|a| a.infer(cols))
                        .collect::<Result<Vec<_>>>()?,
                    "COALESCE",
                )?
            }
            Expr::NullIf(a, b) => {
                let t = a.infer(cols)?;
                comparable(t, b.infer(cols)?, "NULLIF")?;
                t
            }
        })
    }
}

// ---------------------------------------------------------------- evaluation

fn arrow_ty(t: Ty) -> ArrowType {
    t.map(|t| t.to_arrow()).unwrap_or(ArrowType::Null)
}

fn batch_types(batch: &RecordBatch) -> Result<Vec<DataType>> {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| DataType::from_arrow(f.data_type()))
        .collect()
}

/// Casts `a` to `t` (numeric widening / Null -> anything); errors on failure.
fn cast_to(a: &ArrayRef, t: &ArrowType) -> Result<ArrayRef> {
    if a.data_type() == t {
        return Ok(a.clone());
    }
    if a.data_type() == &ArrowType::Null {
        return Ok(new_null_array(t, a.len()));
    }
    Ok(cast_with_options(
        a,
        t,
        &CastOptions {
            safe: false,
            ..Default::default()
        },
    )?)
}

fn opt_ty(a: &dyn Array) -> Result<Ty> {
    match a.data_type() {
        ArrowType::Null => Ok(None),
        t => DataType::from_arrow(t).map(Some),
    }
}

/// Brings two arrays to their common type.
fn coerce_pair(l: ArrayRef, r: ArrayRef, what: &str) -> Result<(ArrayRef, ArrayRef, Ty)> {
    let t = comparable(opt_ty(&l)?, opt_ty(&r)?, what)?;
    let at = arrow_ty(t);
    Ok((cast_to(&l, &at)?, cast_to(&r, &at)?, t))
}

/// -0.0 -> 0.0 so that comparisons and grouping treat them alike.
pub(crate) fn normalize_floats(a: ArrayRef) -> ArrayRef {
    if a.data_type() == &ArrowType::Float64 {
        let f: Float64Array = a
            .as_primitive::<Float64Type>()
            .unary(crate::types::norm_f64);
        Arc::new(f)
    } else {
        a
    }
}

fn to_bool(a: ArrayRef, what: &str) -> Result<BooleanArray> {
    match a.data_type() {
        ArrowType::Boolean => Ok(a.as_boolean().clone()),
        ArrowType::Null => Ok(BooleanArray::new_null(a.len())),
        t => Err(Error::TypeMismatch(format!(
            "argument of {what} must be BOOLEAN, not {t}"
        ))),
    }
}

/// Rows where `b` is TRUE (NULL counts as false).
pub(crate) fn true_mask(b: &BooleanArray) -> BooleanArray {
    match b.nulls() {
        None => b.clone(),
        Some(n) => BooleanArray::new(b.values() & n.inner(), None),
    }
}

fn compare(op: BinaryOp, l: ArrayRef, r: ArrayRef) -> Result<BooleanArray> {
    use arrow_ord::cmp;
    let (l, r, t) = coerce_pair(l, r, op.symbol())?;
    if t.is_none() {
        return Ok(BooleanArray::new_null(l.len()));
    }
    let (l, r) = (normalize_floats(l), normalize_floats(r));
    Ok(match op {
        BinaryOp::Eq => cmp::eq(&l, &r)?,
        BinaryOp::NotEq => cmp::neq(&l, &r)?,
        BinaryOp::Lt => cmp::lt(&l, &r)?,
        BinaryOp::LtEq => cmp::lt_eq(&l, &r)?,
        BinaryOp::Gt => cmp::gt(&l, &r)?,
        BinaryOp::GtEq => cmp::gt_eq(&l, &r)?,
        _ => return Err(Error::Internal(format!("{op:?} is not a comparison"))),
    })
}

fn arithmetic(op: BinaryOp, l: ArrayRef, r: ArrayRef) -> Result<ArrayRef> {
    use arrow_arith::numeric;
    let (l, r, t) = coerce_pair(l, r, op.symbol())?;
    match t {
        None => return Ok(Arc::new(NullArray::new(l.len()))),
        Some(t) if !t.is_numeric() => {
            return Err(Error::TypeMismatch(format!(
                "operator {} cannot be applied to {t}",
                op.symbol()
            )))
        }
        _ => {}
    }
    if matches!(op, BinaryOp::Div | BinaryOp::Mod) && l.data_type() == &ArrowType::Float64 {
        // IEEE would give inf/NaN; SQL raises an error (only where both are non-null).
        let (lf, rf) = (
            l.as_primitive::<Float64Type>(),
            r.as_primitive::<Float64Type>(),
        );
        if (0..rf.len()).any(|i| rf.is_valid(i) && lf.is_valid(i) && rf.value(i) == 0.0) {
            return Err(Error::DivisionByZero);
        }
    }
    Ok(match op {
        BinaryOp::Add => numeric::add(&l, &r)?,
        BinaryOp::Sub => numeric::sub(&l, &r)?,
        BinaryOp::Mul => numeric::mul(&l, &r)?,
        BinaryOp::Div => numeric::div(&l, &r)?,
        BinaryOp::Mod => numeric::rem(&l, &r)?,
        _ => return Err(Error::Internal(format!("{op:?} is not arithmetic"))),
    })
}

/// Row-index helpers for lazily evaluated branches (CASE, COALESCE).
struct Scatter {
    arrays: Vec<ArrayRef>,
    slots: Vec<(usize, usize)>,
}

impl Scatter {
    fn new(n: usize) -> Self {
        Scatter {
            arrays: Vec::new(),
            slots: vec![(usize::MAX, 0); n],
        }
    }
    /// Rows `rows` (global indices) take their values from `arr` (one per row).
    fn assign(&mut self, rows: &[u32], arr: ArrayRef) {
        let bi = self.arrays.len();
        for (p, &g) in rows.iter().enumerate() {
            self.slots[g as usize] = (bi, p);
        }
        self.arrays.push(arr);
    }
    fn finish(self, t: Ty) -> Result<ArrayRef> {
        let at = arrow_ty(t);
        let n = self.slots.len();
        if self.arrays.is_empty() {
            return Ok(if n == 0 {
                new_empty_array(&at)
            } else {
                new_null_array(&at, n)
            });
        }
        let arrays = self
            .arrays
            .iter()
            .map(|a| cast_to(a, &at))
            .collect::<Result<Vec<_>>>()?;
        if arrays.len() == 1
            && arrays[0].len() == n
            && self.slots.iter().enumerate().all(|(i, s)| s.1 == i)
        {
            return Ok(arrays[0].clone());
        }
        if at == ArrowType::Null {
            return Ok(Arc::new(NullArray::new(n)));
        }
        let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        if self.slots.iter().any(|s| s.0 == usize::MAX) {
            return Err(Error::Internal("unassigned row in CASE/COALESCE".into()));
        }
        Ok(arrow_select::interleave::interleave(&refs, &self.slots)?)
    }
}

fn take_rows(batch: &RecordBatch, rows: &[u32]) -> Result<RecordBatch> {
    if rows.len() == batch.num_rows() && rows.iter().enumerate().all(|(i, &r)| r as usize == i) {
        return Ok(batch.clone());
    }
    Ok(arrow_select::take::take_record_batch(
        batch,
        &UInt32Array::from(rows.to_vec()),
    )?)
}

fn text_cast(a: &ArrayRef, to: DataType) -> Result<ArrayRef> {
    let s = a.as_string::<i32>();
    let vals: Vec<Value> = s
        .iter()
        .map(|o| match o {
            None => Ok(Value::Null),
            Some(x) => Value::Text(x.to_string())
                .coerce_to(to)
                .map_err(|e| match e {
                    Error::TypeMismatch(m) => Error::InvalidValue(m),
                    e => e,
                }),
        })
        .collect::<Result<_>>()?;
    values_to_array(to, vals.iter())
}

pub(crate) fn cast_array(a: ArrayRef, to: DataType) -> Result<ArrayRef> {
    let from = match opt_ty(&a)? {
        None => return Ok(new_null_array(&to.to_arrow(), a.len())),
        Some(f) => f,
    };
    if from == to {
        return Ok(a);
    }
    if !can_cast(from, to) {
        return Err(Error::TypeMismatch(format!("cannot cast {from} to {to}")));
    }
    match (from, to) {
        (DataType::Text, _) => text_cast(&a, to),
        (_, DataType::Text) => {
            let s: StringArray = (0..a.len())
                .map(|i| {
                    Value::from_array(&a, i).map(|v| match v {
                        Value::Null => None,
                        Value::Text(s) => Some(s),
                        Value::Date(d) => Some(crate::types::format_date(d)),
                        Value::Bool(b) => Some(if b { "true" } else { "false" }.to_string()),
                        other => Some(other.to_string()),
                    })
                })
                .collect::<Result<_>>()?;
            Ok(Arc::new(s))
        }
        (DataType::Double, DataType::Int | DataType::BigInt) => {
            // PostgreSQL rounds to the nearest integer, ties to even (rint), rather
            // than truncating: -4.5 -> -4, 2.5 -> 2, 3.5 -> 4.
            let r: Float64Array = a.as_primitive::<Float64Type>().unary(f64::round_ties_even);
            let r: ArrayRef = Arc::new(r);
            cast_to(&r, &to.to_arrow())
                .map_err(|_| Error::Overflow(format!("value out of range for {to}")))
        }
        (DataType::BigInt, DataType::Int) => cast_to(&a, &to.to_arrow())
            .map_err(|_| Error::Overflow(format!("value out of range for {to}"))),
        _ => cast_to(&a, &to.to_arrow()),
    }
}

impl Expr {
    /// Evaluates the expression over every row of `batch`, whose columns the
    /// expression's column indices refer to.
    pub fn eval(&self, batch: &RecordBatch) -> Result<ArrayRef> {
        let n = batch.num_rows();
        Ok(match self {
            Expr::Column(i) => batch
                .columns()
                .get(*i)
                .cloned()
                .ok_or_else(|| Error::UnknownColumn(format!("#{i}")))?,
            Expr::Literal(v) => v.to_array(n, None),
            Expr::Binary { op, left, right } => {
                let (l, r) = (left.eval(batch)?, right.eval(batch)?);
                match op {
                    BinaryOp::And | BinaryOp::Or => {
                        let (l, r) = (to_bool(l, op.symbol())?, to_bool(r, op.symbol())?);
                        Arc::new(if *op == BinaryOp::And {
                            arrow_arith::boolean::and_kleene(&l, &r)?
                        } else {
                            arrow_arith::boolean::or_kleene(&l, &r)?
                        })
                    }
                    op if op.is_comparison() => Arc::new(compare(*op, l, r)?),
                    op => arithmetic(*op, l, r)?,
                }
            }
            Expr::Negate(e) => {
                let a = e.eval(batch)?;
                match opt_ty(&a)? {
                    None => a,
                    Some(t) if t.is_numeric() => arrow_arith::numeric::neg(&a)?,
                    Some(t) => {
                        return Err(Error::TypeMismatch(format!(
                            "unary minus cannot be applied to {t}"
                        )))
                    }
                }
            }
            Expr::Not(e) => Arc::new(arrow_arith::boolean::not(&to_bool(e.eval(batch)?, "NOT")?)?),
            Expr::IsNull { expr, negated } => {
                let a = expr.eval(batch)?;
                Arc::new(if *negated {
                    arrow_arith::boolean::is_not_null(&a)?
                } else {
                    arrow_arith::boolean::is_null(&a)?
                })
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let a = expr.eval(batch)?;
                let mut acc = BooleanArray::from(vec![false; n]);
                for v in list {
                    let m = compare(BinaryOp::Eq, a.clone(), v.to_array(n, None))?;
                    acc = arrow_arith::boolean::or_kleene(&acc, &m)?;
                }
                if list.is_empty() {
                    // `x IN ()` is false for every x (including NULL).
                } else if a.data_type() == &ArrowType::Null {
                    acc = BooleanArray::new_null(n);
                }
                Arc::new(if *negated {
                    arrow_arith::boolean::not(&acc)?
                } else {
                    acc
                })
            }
            Expr::Between {
                expr,
                low,
                high,
                negated,
            } => {
                let a = expr.eval(batch)?;
                let ge = compare(BinaryOp::GtEq, a.clone(), low.eval(batch)?)?;
                let le = compare(BinaryOp::LtEq, a, high.eval(batch)?)?;
                let b = arrow_arith::boolean::and_kleene(&ge, &le)?;
                Arc::new(if *negated {
                    arrow_arith::boolean::not(&b)?
                } else {
                    b
                })
            }
            Expr::Like {
                expr,
                pattern,
                negated,
            } => {
                let a = cast_to(&expr.eval(batch)?, &ArrowType::Utf8)?;
                let p = cast_to(&pattern.eval(batch)?, &ArrowType::Utf8)?;
                for (x, what) in [(&a, "LIKE operand"), (&p, "LIKE pattern")] {
                    if x.data_type() != &ArrowType::Utf8 {
                        return Err(Error::TypeMismatch(format!("{what} must be TEXT")));
                    }
                }
                Arc::new(if *negated {
                    arrow_string::like::nlike(&a, &p)?
                } else {
                    arrow_string::like::like(&a, &p)?
                })
            }
            Expr::Case {
                when_then,
                else_expr,
            } => {
                let t = self.infer(&batch_types(batch)?)?;
                let mut out = Scatter::new(n);
                let mut remaining: Vec<u32> = (0..n as u32).collect();
                for (cond, val) in when_then {
                    if remaining.is_empty() {
                        break;
                    }
                    let sub = take_rows(batch, &remaining)?;
                    let c = to_bool(cond.eval(&sub)?, "CASE WHEN")?;
                    let (mut hit, mut rest) = (Vec::new(), Vec::new());
                    for (k, &g) in remaining.iter().enumerate() {
                        if c.is_valid(k) && c.value(k) {
                            hit.push(g)
                        } else {
                            rest.push(g)
                        }
                    }
                    if !hit.is_empty() {
                        let arr = val.eval(&take_rows(batch, &hit)?)?;
                        out.assign(&hit, arr);
                    }
                    remaining = rest;
                }
                if !remaining.is_empty() {
                    let arr = match else_expr {
                        Some(e) => e.eval(&take_rows(batch, &remaining)?)?,
                        None => Arc::new(NullArray::new(remaining.len())),
                    };
                    out.assign(&remaining, arr);
                }
                out.finish(t)?
            }
            Expr::Cast { expr, to } => cast_array(expr.eval(batch)?, *to)?,
            Expr::Coalesce(args) => {
                let t = self.infer(&batch_types(batch)?)?;
                let mut out = Scatter::new(n);
                let mut remaining: Vec<u32> = (0..n as u32).collect();
                for (k, arg) in args.iter().enumerate() {
                    if remaining.is_empty() {
                        break;
                    }
                    let arr = arg.eval(&take_rows(batch, &remaining)?)?;
                    if k + 1 == args.len() {
                        out.assign(&remaining, arr);
                        remaining.clear();
                        break;
                    }
                    let (mut hit, mut hit_pos, mut rest) = (Vec::new(), Vec::new(), Vec::new());
                    let valid = arr.logical_nulls();
                    for (p, &g) in remaining.iter().enumerate() {
                        if valid.as_ref().is_none_or(|v| v.is_valid(p)) {
                            hit.push(g);
                            hit_pos.push(p as u32);
                        } else {
                            rest.push(g);
                        }
                    }
                    if !hit.is_empty() {
                        let vals =
                            arrow_select::take::take(&arr, &UInt32Array::from(hit_pos), None)?;
                        out.assign(&hit, vals);
                    }
                    remaining = rest;
                }
                out.finish(t)?
            }
            Expr::NullIf(a, b) => {
                let av = a.eval(batch)?;
                let eq = compare(BinaryOp::Eq, av.clone(), b.eval(batch)?)?;
                if av.data_type() == &ArrowType::Null {
                    av
                } else {
                    arrow_select::nullif::nullif(&av, &true_mask(&eq))?
                }
            }
        })
    }

    /// Evaluates a predicate: the boolean result (NULL where unknown).
    pub fn eval_predicate(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        to_bool(self.eval(batch)?, "WHERE")
    }

    /// Evaluates a single-row expression over literal values (no columns).
    pub fn eval_scalar(&self) -> Result<Value> {
        let schema = Arc::new(arrow_schema::Schema::empty());
        let batch = RecordBatch::try_new_with_options(
            schema,
            vec![],
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(1)),
        )?;
        let a = self.eval(&batch)?;
        Value::from_array(&a, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(e: Expr) -> Result<Value> {
        e.eval_scalar()
    }

    #[test]
    fn scalar_basics() {
        assert_eq!(
            s(Expr::lit(7).binary(BinaryOp::Div, Expr::lit(2))).unwrap(),
            Value::Int(3)
        );
        assert_eq!(
            s(Expr::lit(7).binary(BinaryOp::Mod, Expr::lit(-2))).unwrap(),
            Value::Int(1)
        );
        assert_eq!(
            s(Expr::lit(7).binary(BinaryOp::Add, Expr::lit(2i64))).unwrap(),
            Value::BigInt(9)
        );
        assert_eq!(
            s(Expr::lit(1).binary(BinaryOp::Div, Expr::lit(2.0))).unwrap(),
            Value::Double(0.5)
        );
        assert!(matches!(
            s(Expr::lit(1).binary(BinaryOp::Div, Expr::lit(0))),
            Err(Error::DivisionByZero)
        ));
        assert!(matches!(
            s(Expr::lit(1.0).binary(BinaryOp::Div, Expr::lit(0.0))),
            Err(Error::DivisionByZero)
        ));
        assert!(matches!(
            s(Expr::lit(1).binary(BinaryOp::Mod, Expr::lit(0))),
            Err(Error::DivisionByZero)
        ));
        assert_eq!(
            s(Expr::lit(Value::Null).binary(BinaryOp::Div, Expr::lit(0))).unwrap(),
            Value::Null
        );
        assert!(matches!(
            s(Expr::lit(i32::MAX).binary(BinaryOp::Add, Expr::lit(1))),
            Err(Error::Overflow(_))
        ));
        assert_eq!(
            s(Expr::Negate(Box::new(Expr::lit(5)))).unwrap(),
            Value::Int(-5)
        );
        assert!(matches!(
            s(Expr::lit("a").binary(BinaryOp::Add, Expr::lit(1))),
            Err(Error::TypeMismatch(_))
        ));
    }
}
