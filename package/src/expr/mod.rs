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

mod ast;
mod eval;
mod lex;
mod parser;
#[cfg(test)]
mod tests;

pub use crate::reference::Ref;
use crate::reference::Scope;
pub use ast::{CmpOp, Expr, ExprError, Lit, MAX_EXPR_DEPTH, MAX_EXPR_LEN};
pub use parser::parse;

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
