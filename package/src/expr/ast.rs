//! The tree of a `when` expression, its limits and its error: what the
//! lexer, the parser and the evaluator beside it share. A leaf of `expr/`.

use std::cmp::Ordering;

use crate::reference::Ref;

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
