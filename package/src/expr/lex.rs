//! The lexer of `when` expressions: text → tokens with their columns.

use super::ast::{CmpOp, ExprError, Lit};
use crate::reference::Ref;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Lit(Lit),
    Ref(Ref),
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
}

pub(super) fn err<T>(column: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        column,
        message: message.into(),
    })
}

/// Splits `src` into tokens with their 1-based columns.
pub(super) fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        let next = chars.get(i + 1).copied();
        let two = |tok: Tok, out: &mut Vec<(Tok, usize)>| out.push((tok, col));
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push((Tok::LParen, col));
                i += 1;
            }
            ')' => {
                out.push((Tok::RParen, col));
                i += 1;
            }
            '&' if next == Some('&') => {
                two(Tok::And, &mut out);
                i += 2;
            }
            '|' if next == Some('|') => {
                two(Tok::Or, &mut out);
                i += 2;
            }
            '=' if next == Some('=') => {
                two(Tok::Cmp(CmpOp::Eq), &mut out);
                i += 2;
            }
            '!' if next == Some('=') => {
                two(Tok::Cmp(CmpOp::Ne), &mut out);
                i += 2;
            }
            '!' => {
                out.push((Tok::Not, col));
                i += 1;
            }
            '<' | '>' => {
                let eq = next == Some('=');
                let op = match (c, eq) {
                    ('<', false) => CmpOp::Lt,
                    ('<', true) => CmpOp::Le,
                    ('>', false) => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                out.push((Tok::Cmp(op), col));
                i += if eq { 2 } else { 1 };
            }
            '\'' | '"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return err(col, "unterminated string"),
                        Some('\\') => match chars.get(j + 1) {
                            Some(e @ ('\\' | '\'' | '"')) => {
                                s.push(*e);
                                j += 2;
                            }
                            _ => return err(j + 1, "expected \\\\, \\' or \\\" after '\\'"),
                        },
                        Some(q) if *q == c => break,
                        Some(other) => {
                            s.push(*other);
                            j += 1;
                        }
                    }
                }
                out.push((Tok::Lit(Lit::Str(s)), col));
                i = j + 1;
            }
            '$' if next == Some('{') => {
                let Some(end) = chars[i..].iter().position(|&c| c == '}') else {
                    return err(col, "unterminated '${'");
                };
                let inner: String = chars[i + 2..i + end].iter().collect();
                let r = Ref::parse(&inner).map_err(|m| ExprError {
                    column: col,
                    message: m,
                })?;
                out.push((Tok::Ref(r), col));
                i += end + 1;
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                let lit = if text.contains('.') {
                    match text.parse::<f64>() {
                        Ok(f) if f.is_finite() => Lit::Float(f),
                        _ => return err(col, format!("'{text}' is not a number")),
                    }
                } else {
                    match text.parse::<i64>() {
                        Ok(n) => Lit::Int(n),
                        Err(_) => return err(col, format!("integer '{text}' is out of range")),
                    }
                };
                out.push((Tok::Lit(lit), col));
                i = j;
            }
            c if c.is_ascii_alphabetic() => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                match word.as_str() {
                    "true" => out.push((Tok::Lit(Lit::Bool(true)), col)),
                    "false" => out.push((Tok::Lit(Lit::Bool(false)), col)),
                    _ => {
                        return err(
                            col,
                            format!(
                                "unexpected word '{word}': write a string in quotes, or a \
                                 reference as ${{params.NAME}}"
                            ),
                        );
                    }
                }
                i = j;
            }
            other => return err(col, format!("unexpected character '{other}'")),
        }
    }
    Ok(out)
}
