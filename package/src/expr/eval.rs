//! Evaluation of `when` expressions against a [`Scope`]: numeric, boolean
//! or text comparison, short-circuit logic.

use std::cmp::Ordering;

use super::ast::{CmpOp, Expr, ExprError, Lit};
use super::lex::err;
use crate::reference::Ref;
use crate::reference::Scope;

/// A value during evaluation: a literal, or the text a reference resolved to.
enum Val {
    Lit(Lit),
    Text(String),
}

enum Num {
    Int(i64),
    Float(f64),
}

impl Val {
    fn num(&self) -> Option<Num> {
        match self {
            Val::Lit(Lit::Int(i)) => Some(Num::Int(*i)),
            Val::Lit(Lit::Float(f)) => Some(Num::Float(*f)),
            Val::Lit(Lit::Str(s)) | Val::Text(s) => {
                let s = s.trim();
                if let Ok(i) = s.parse::<i64>() {
                    Some(Num::Int(i))
                } else {
                    s.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Num::Float)
                }
            }
            Val::Lit(Lit::Bool(_)) => None,
        }
    }

    fn boolean(&self) -> Option<bool> {
        match self {
            Val::Lit(Lit::Bool(b)) => Some(*b),
            Val::Text(s) => match s.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Val::Lit(Lit::Int(i)) => i.to_string(),
            Val::Lit(Lit::Float(f)) => f.to_string(),
            Val::Lit(Lit::Str(s)) | Val::Text(s) => s.clone(),
            Val::Lit(Lit::Bool(b)) => b.to_string(),
        }
    }
}

fn compare_nums(a: Num, b: Num) -> Ordering {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => x.cmp(&y),
        (Num::Int(x), Num::Float(y)) => (x as f64).total_cmp(&y),
        (Num::Float(x), Num::Int(y)) => x.total_cmp(&(y as f64)),
        (Num::Float(x), Num::Float(y)) => x.total_cmp(&y),
    }
}

impl Expr {
    /// Every reference in the expression, with its column.
    pub fn refs(&self) -> Vec<(&Ref, usize)> {
        let mut out = Vec::new();
        let mut stack = vec![self];
        while let Some(e) = stack.pop() {
            match e {
                Expr::Lit(_) => {}
                Expr::Ref { r, column } => out.push((r, *column)),
                Expr::Not(x) => stack.push(x),
                Expr::And(a, b) | Expr::Or(a, b) => {
                    stack.push(b);
                    stack.push(a);
                }
                Expr::Cmp { left, right, .. } => {
                    stack.push(right);
                    stack.push(left);
                }
            }
        }
        out
    }

    /// The value of a constant expression (no references), if it has one.
    pub fn constant(&self) -> Option<bool> {
        if !self.refs().is_empty() {
            return None;
        }
        let params = crate::ParamValues::default();
        self.eval(&Scope::new(&params, None)).ok()
    }

    /// Evaluates to a boolean; `&&` and `||` short-circuit.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<bool, ExprError> {
        match self {
            Expr::Not(e) => Ok(!e.eval(scope)?),
            Expr::And(a, b) => Ok(a.eval(scope)? && b.eval(scope)?),
            Expr::Or(a, b) => Ok(a.eval(scope)? || b.eval(scope)?),
            Expr::Cmp {
                op,
                left,
                right,
                column,
            } => {
                let (l, r) = (left.value(scope)?, right.value(scope)?);
                if let (Some(a), Some(b)) = (l.num(), r.num()) {
                    return Ok(op.holds(compare_nums(a, b)));
                }
                if let (Some(a), Some(b)) = (l.boolean(), r.boolean()) {
                    return match op {
                        CmpOp::Eq => Ok(a == b),
                        CmpOp::Ne => Ok(a != b),
                        _ => err(*column, "booleans compare only with == and !="),
                    };
                }
                Ok(op.holds(l.text().cmp(&r.text())))
            }
            Expr::Lit(_) | Expr::Ref { .. } => {
                let v = self.value(scope)?;
                v.boolean().ok_or_else(|| ExprError {
                    column: self.column(),
                    message: "expected a boolean (true or false) here".to_string(),
                })
            }
        }
    }

    fn column(&self) -> usize {
        match self {
            Expr::Ref { column, .. } | Expr::Cmp { column, .. } => *column,
            _ => 1,
        }
    }

    fn value(&self, scope: &Scope<'_>) -> Result<Val, ExprError> {
        match self {
            Expr::Lit(l) => Ok(Val::Lit(l.clone())),
            Expr::Ref { r, column } => scope.resolve(r).map(Val::Text).map_err(|m| ExprError {
                column: *column,
                message: m,
            }),
            other => Ok(Val::Lit(Lit::Bool(other.eval(scope)?))),
        }
    }
}
