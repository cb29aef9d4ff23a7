//! `when` expressions: a small, safe language for precedence constraints.
//!
//! ```text
//! expr    := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | cmp
//! cmp     := primary (("==" | "!=" | "<" | "<=" | ">" | ">=") primary)?
//! primary := "(" expr ")" | INT | FLOAT | STRING | "true" | "false" | "${" REF "}"
//! ```
//!
//! `REF` is a [`Ref`]: `params.X`, `tasks.T.outputs.K`, `tasks.T.state`.
//! Strings are quoted with `'` or `"` (`\` escapes the quote and itself).
//! A comparison is numeric when both sides read as numbers, boolean when both
//! read as `true`/`false`, otherwise it compares text. Expressions are parsed
//! when the package loads (errors carry the column inside the expression) and
//! evaluated by the engine; nothing in them can loop, call or allocate without
//! bound: at most [`MAX_EXPR_LEN`] characters and [`MAX_EXPR_DEPTH`] levels.

use std::cmp::Ordering;

mod eval;
mod lex;
mod parser;
#[cfg(test)]
mod tests;

pub use crate::reference::Ref;
use crate::reference::Scope;
pub use parser::parse;

/// The longest expression, in characters.
pub const MAX_EXPR_LEN: usize = 2048;
/// The deepest nesting of parentheses and `!`.
pub const MAX_EXPR_DEPTH: usize = 32;

/// A syntax or evaluation error; `column` counts characters from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for ExprError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

/// A literal value.
#[derive(Debug, Clone, PartialEq)]
pub enum Lit {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn holds(self, o: Ordering) -> bool {
        match self {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        }
    }
}

/// A parsed expression. `column` fields locate evaluation errors.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Lit(Lit),
    Ref {
        r: Ref,
        column: usize,
    },
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp {
        op: CmpOp,
        left: Box<Expr>,
        right: Box<Expr>,
        column: usize,
    },
}

/// A `when` condition: its source text (what `to_toml` writes back) and its tree.
#[derive(Debug, Clone)]
pub struct Condition {
    pub source: String,
    pub expr: Expr,
}

impl PartialEq for Condition {
    /// Two conditions are the same when their text is: the tree follows from it.
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Condition {
    pub fn parse(source: &str) -> Result<Condition, ExprError> {
        Ok(Condition {
            source: source.to_string(),
            expr: parse(source)?,
        })
    }

    /// Evaluates the condition against `scope`.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<bool, ExprError> {
        self.expr.eval(scope)
    }
}
