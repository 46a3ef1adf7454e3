//! Test helpers: a tiny PRNG and a row-by-row reference evaluator.
#![allow(dead_code, missing_docs)]

use std::cmp::Ordering;

use smrdb_tstore::{BinaryOp, DataType, Error, Expr, TableSchema, Value};

pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RefErr {
    DivZero,
    Overflow,
    Other,
}

pub fn classify(e: &Error) -> RefErr {
    match e {
        Error::DivisionByZero => RefErr::DivZero,
        Error::Overflow(_) => RefErr::Overflow,
        _ => RefErr::Other,
    }
}

fn num_rank(v: &Value) -> u8 {
    match v {
        Value::Int(_) => 0,
        Value::BigInt(_) => 1,
        _ => 2,
    }
}

fn arith(op: BinaryOp, a: &Value, b: &Value) -> Result<Value, RefErr> {
    if a.is_null() || b.is_null() {
        return Ok(Value::Null);
    }
    let rank = num_rank(a).max(num_rank(b));
    match rank {
        0 | 1 => {
            let (x, y) = (a.as_i64().unwrap(), b.as_i64().unwrap());
            let r = match op {
                BinaryOp::Add => x.checked_add(y),
                BinaryOp::Sub => x.checked_sub(y),
                BinaryOp::Mul => x.checked_mul(y),
                BinaryOp::Div => {
                    if y == 0 {
                        return Err(RefErr::DivZero);
                    }
                    x.checked_div(y)
                }
                BinaryOp::Mod => {
                    if y == 0 {
                        return Err(RefErr::DivZero);
                    }
                    Some(if y == -1 { 0 } else { x % y })
                }
                _ => unreachable!(),
            };
            let r = r.ok_or(RefErr::Overflow)?;
            if rank == 0 {
                if op == BinaryOp::Div && x == i32::MIN as i64 && y == -1 {
                    return Err(RefErr::Overflow);
                }
                i32::try_from(r)
                    .map(Value::Int)
                    .map_err(|_| RefErr::Overflow)
            } else {
                Ok(Value::BigInt(r))
            }
        }
        _ => {
            let (x, y) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            Ok(Value::Double(match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                BinaryOp::Div | BinaryOp::Mod if y == 0.0 => return Err(RefErr::DivZero),
                BinaryOp::Div => x / y,
                BinaryOp::Mod => x % y,
                _ => unreachable!(),
            }))
        }
    }
}

fn tri(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Null => None,
        other => panic!("not boolean: {other:?}"),
    }
}

fn b(o: Option<bool>) -> Value {
    o.map(Value::Bool).unwrap_or(Value::Null)
}

pub fn like(s: &[char], p: &[char]) -> bool {
    match p.first() {
        None => s.is_empty(),
        Some('%') => (0..=s.len()).any(|k| like(&s[k..], &p[1..])),
        Some('_') => !s.is_empty() && like(&s[1..], &p[1..]),
        Some('\\') if p.len() > 1 => s.first() == Some(&p[1]) && like(&s[1..], &p[2..]),
        Some(c) => s.first() == Some(c) && like(&s[1..], &p[1..]),
    }
}

/// Reference evaluation of one row (for the expression subset the tests generate).
pub fn eval(e: &Expr, row: &[Value], s: &TableSchema) -> Result<Value, RefErr> {
    let v = eval_inner(e, row, s)?;
    Ok(match e {
        Expr::Case { .. } | Expr::Coalesce(_) => v.coerce_to(e.data_type(s).unwrap()).unwrap(),
        _ => v,
    })
}

fn eval_inner(e: &Expr, row: &[Value], s: &TableSchema) -> Result<Value, RefErr> {
    Ok(match e {
        Expr::Column(i) => row[*i].clone(),
        Expr::Literal(v) => v.clone(),
        Expr::Binary { op, left, right } => {
            let (l, r) = (eval(left, row, s)?, eval(right, row, s)?);
            match op {
                BinaryOp::And => b(match (tri(&l), tri(&r)) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }),
                BinaryOp::Or => b(match (tri(&l), tri(&r)) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }),
                op if op.is_comparison() => b(l.sql_cmp(&r).map(|o| match op {
                    BinaryOp::Eq => o == Ordering::Equal,
                    BinaryOp::NotEq => o != Ordering::Equal,
                    BinaryOp::Lt => o == Ordering::Less,
                    BinaryOp::LtEq => o != Ordering::Greater,
                    BinaryOp::Gt => o == Ordering::Greater,
                    BinaryOp::GtEq => o != Ordering::Less,
                    _ => unreachable!(),
                })),
                op => arith(*op, &l, &r)?,
            }
        }
        Expr::Negate(x) => match eval(x, row, s)? {
            Value::Int(v) => Value::Int(v.checked_neg().ok_or(RefErr::Overflow)?),
            Value::BigInt(v) => Value::BigInt(v.checked_neg().ok_or(RefErr::Overflow)?),
            Value::Double(v) => Value::Double(-v),
            v => v,
        },
        Expr::Not(x) => b(tri(&eval(x, row, s)?).map(|v| !v)),
        Expr::IsNull { expr, negated } => Value::Bool(eval(expr, row, s)?.is_null() != *negated),
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let v = eval(expr, row, s)?;
            let mut acc = Some(false);
            for x in list {
                acc = match (acc, v.sql_eq(x)) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                };
            }
            b(acc.map(|a| a != *negated))
        }
        Expr::Between {
            expr,
            low,
            high,
            negated,
        } => {
            let v = eval(expr, row, s)?;
            let (lo, hi) = (eval(low, row, s)?, eval(high, row, s)?);
            let ge = v.sql_cmp(&lo).map(|o| o != Ordering::Less);
            let le = v.sql_cmp(&hi).map(|o| o != Ordering::Greater);
            let r = match (ge, le) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            };
            b(r.map(|x| x != *negated))
        }
        Expr::Like {
            expr,
            pattern,
            negated,
        } => match (eval(expr, row, s)?, eval(pattern, row, s)?) {
            (Value::Text(s), Value::Text(p)) => {
                let s: Vec<char> = s.chars().collect();
                let p: Vec<char> = p.chars().collect();
                Value::Bool(like(&s, &p) != *negated)
            }
            _ => Value::Null,
        },
        Expr::Case {
            when_then,
            else_expr,
        } => {
            for (c, v) in when_then {
                if tri(&eval(c, row, s)?) == Some(true) {
                    return eval(v, row, s);
                }
            }
            match else_expr {
                Some(e) => eval(e, row, s)?,
                None => Value::Null,
            }
        }
        Expr::Coalesce(args) => {
            for a in args {
                let v = eval(a, row, s)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            Value::Null
        }
        Expr::NullIf(a, bb) => {
            let (x, y) = (eval(a, row, s)?, eval(bb, row, s)?);
            if x.sql_eq(&y) == Some(true) {
                Value::Null
            } else {
                x
            }
        }
        Expr::Cast { expr, to } => {
            let v = eval(expr, row, s)?;
            match (&v, to) {
                (Value::Double(d), DataType::Int | DataType::BigInt) => {
                    Value::BigInt(d.round_ties_even() as i64)
                        .coerce_to(*to)
                        .map_err(|_| RefErr::Overflow)?
                }
                _ => v.coerce_to(*to).map_err(|_| RefErr::Other)?,
            }
        }
    })
}

/// Total order on values for sorting test output (NULL first).
pub fn total_cmp(a: &Value, b: &Value) -> Ordering {
    match (a.is_null(), b.is_null()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => a
            .sql_cmp(b)
            .unwrap_or_else(|| format!("{a:?}").cmp(&format!("{b:?}"))),
    }
}

pub fn row_cmp(a: &[Value], b: &[Value]) -> Ordering {
    a.iter()
        .zip(b)
        .map(|(x, y)| total_cmp(x, y))
        .find(|o| *o != Ordering::Equal)
        .unwrap_or(Ordering::Equal)
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("smrdb-tstore-{}-{}", name, std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
