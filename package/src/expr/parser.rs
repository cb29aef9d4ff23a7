//! The recursive-descent parser of `when` expressions, with depth and
//! length limits.

use super::ast::{Expr, ExprError, MAX_EXPR_DEPTH, MAX_EXPR_LEN};
use super::lex::{Tok, err, lex};

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end_col: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end_col, |(_, c)| *c)
    }

    fn or(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.and(depth)?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            let right = self.and(depth)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut left = self.unary(depth)?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            let right = self.unary(depth)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<Expr, ExprError> {
        if depth >= MAX_EXPR_DEPTH {
            return err(
                self.col(),
                format!("expression nests deeper than {MAX_EXPR_DEPTH} levels"),
            );
        }
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary(depth + 1)?)));
        }
        let left = self.primary(depth)?;
        if let Some(Tok::Cmp(op)) = self.peek() {
            let (op, column) = (*op, self.col());
            self.pos += 1;
            let right = self.primary(depth)?;
            if let Some(Tok::Cmp(_)) = self.peek() {
                return err(
                    self.col(),
                    "comparisons do not chain: use parentheses and && instead",
                );
            }
            return Ok(Expr::Cmp {
                op,
                left: Box::new(left),
                right: Box::new(right),
                column,
            });
        }
        Ok(left)
    }

    fn primary(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let col = self.col();
        let Some((tok, _)) = self.toks.get(self.pos).cloned() else {
            return err(
                col,
                "expected a value, a reference or '(' but the expression ends",
            );
        };
        self.pos += 1;
        match tok {
            Tok::Lit(l) => Ok(Expr::Lit(l)),
            Tok::Ref(r) => Ok(Expr::Ref { r, column: col }),
            Tok::LParen => {
                if depth + 1 >= MAX_EXPR_DEPTH {
                    return err(
                        col,
                        format!("expression nests deeper than {MAX_EXPR_DEPTH} levels"),
                    );
                }
                let inner = self.or(depth + 1)?;
                if self.peek() != Some(&Tok::RParen) {
                    return err(self.col(), "expected ')'");
                }
                self.pos += 1;
                Ok(inner)
            }
            Tok::Not => {
                self.pos -= 1;
                self.unary(depth + 1)
            }
            other => err(
                col,
                format!(
                    "expected a value, a reference or '(', found {}",
                    describe(&other)
                ),
            ),
        }
    }
}

fn describe(t: &Tok) -> &'static str {
    match t {
        Tok::RParen => "')'",
        Tok::And => "'&&'",
        Tok::Or => "'||'",
        Tok::Cmp(_) => "a comparison operator",
        Tok::LParen => "'('",
        Tok::Not => "'!'",
        Tok::Lit(_) => "a value",
        Tok::Ref(_) => "a reference",
    }
}

/// Parses an expression.
pub fn parse(src: &str) -> Result<Expr, ExprError> {
    let len = src.chars().count();
    if len > MAX_EXPR_LEN {
        return err(
            MAX_EXPR_LEN + 1,
            format!("expression is longer than {MAX_EXPR_LEN} characters"),
        );
    }
    let toks = lex(src)?;
    if toks.is_empty() {
        return err(1, "empty expression");
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end_col: len + 1,
    };
    let e = p.or(0)?;
    if p.pos < p.toks.len() {
        return err(
            p.col(),
            format!(
                "unexpected {} after a complete expression",
                describe(&p.toks[p.pos].0)
            ),
        );
    }
    Ok(e)
}
