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

pub use crate::reference::Ref;
use crate::reference::Scope;

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
    fn holds(self, o: Ordering) -> bool {
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

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(Lit),
    Ref(Ref),
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(CmpOp),
}

fn err<T>(column: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        column,
        message: message.into(),
    })
}

/// Splits `src` into tokens with their 1-based columns.
fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ExprError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn eval_with(src: &str, outputs: &crate::reference::Outputs) -> Result<bool, ExprError> {
        let pkg = crate::Package::parse(
            "p.toml",
            "name='p'\n[parameters.n]\ntype='int'\ndefault=5\n[parameters.env]\ntype='string'\ndefault='prod'\n[parameters.on]\ntype='bool'\ndefault=true\n",
        )
        .unwrap();
        let params = pkg.bind(&BTreeMap::new()).unwrap();
        let states = [("extract".to_string(), "succeeded".to_string())].into();
        let scope = Scope {
            params: &params,
            item: None,
            outputs,
            states: &states,
        };
        parse(src)?.eval(&scope)
    }

    fn eval(src: &str) -> Result<bool, ExprError> {
        let outputs = [(
            "extract".to_string(),
            [("rows".to_string(), "120".to_string())].into(),
        )]
        .into();
        eval_with(src, &outputs)
    }

    #[test]
    fn evaluates_the_language() {
        for (src, want) in [
            ("true", true),
            ("!false && true", true),
            ("${params.n} > 3", true),
            ("${params.n} == 5.0", true),
            ("${params.n} >= '10'", false),
            ("${params.env} == 'prod'", true),
            ("${params.env} != \"prod\" || ${params.on}", true),
            (
                "${tasks.extract.outputs.rows} > 100 && ${tasks.extract.state} == 'succeeded'",
                true,
            ),
            ("(1 < 2) == true", true),
            ("'abc' < 'abd'", true),
            ("-1.5 < -1", true),
            ("!(${params.n} < 3 || false)", true),
        ] {
            assert_eq!(eval(src), Ok(want), "{src}");
        }
    }

    #[test]
    fn errors_carry_the_column() {
        for (src, col, what) in [
            ("", 1, "empty"),
            ("1 ==", 5, "ends"),
            ("(true", 6, "')'"),
            ("true false", 6, "after a complete"),
            ("a == 1", 1, "unexpected word"),
            ("1 < 2 < 3", 7, "chain"),
            ("${params.n", 1, "unterminated"),
            ("${nope}", 1, "unknown reference"),
            ("'abc", 1, "unterminated string"),
            ("1 # 2", 3, "unexpected character"),
            ("99999999999999999999 > 1", 1, "out of range"),
        ] {
            let e = parse(src).unwrap_err();
            assert_eq!(e.column, col, "{src}: {e}");
            assert!(e.message.contains(what), "{src}: {e}");
        }
        let deep = format!("{}true{}", "(".repeat(40), ")".repeat(40));
        assert!(parse(&deep).unwrap_err().message.contains("deeper"));
        let nots = format!("{}true", "!".repeat(40));
        assert!(parse(&nots).unwrap_err().message.contains("deeper"));
        assert!(
            parse(&"1".repeat(5000))
                .unwrap_err()
                .message
                .contains("longer")
        );
    }

    #[test]
    fn evaluation_errors_name_the_reference() {
        let e = eval("${tasks.extract.outputs.zz} == 1").unwrap_err();
        assert_eq!(e.column, 1);
        assert!(e.message.contains("no output 'zz'"), "{e}");
        let e = eval("${params.env}").unwrap_err();
        assert!(e.message.contains("boolean"), "{e}");
        assert!(eval("true == 1 < 2").is_err());
        assert!(eval("true < false").is_err());
    }

    #[test]
    fn constants_fold() {
        assert_eq!(parse("1 > 2").unwrap().constant(), Some(false));
        assert_eq!(parse("${params.n} > 2").unwrap().constant(), None);
    }
}
