//! What every step of parsing shares: where errors go and how they get
//! their position ([`Ctx`]), and two checks of TOML values. A leaf of
//! `parse/`: the steps (`mod.rs`, `params.rs`, `tasks.rs`, `refs.rs`) use it.

use crate::error::PackageError;

/// Where errors go: the file name and text (for positions), and every error
/// found so far.
pub(super) struct Ctx<'a> {
    pub(super) origin: &'a str,
    pub(super) text: &'a str,
    pub(super) errors: Vec<PackageError>,
    /// Byte offsets where lines start, made at the first error: positions
    /// of many errors cost a binary search each, not a scan of the text.
    pub(super) line_starts: std::cell::OnceCell<Vec<usize>>,
}

impl Ctx<'_> {
    /// 1-based line and column of a byte offset (as [`super::line_col`]).
    pub(super) fn position(&self, offset: usize) -> (usize, usize) {
        let starts = self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(self.text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = starts.partition_point(|&s| s <= offset);
        let start = starts[line - 1];
        (line, self.text[start..offset].chars().count() + 1)
    }

    pub(super) fn invalid(&self, offset: usize, message: impl Into<String>) -> PackageError {
        let (line, column) = self.position(offset);
        PackageError::Invalid {
            origin: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        }
    }

    /// Records an error and goes on (so that `baton validate` shows them all).
    pub(super) fn report(&mut self, offset: usize, message: impl Into<String>) {
        let e = self.invalid(offset, message);
        self.errors.push(e);
    }

    /// The byte offset of character `column` (1-based) inside the TOML string
    /// that starts at `offset` (its opening quote or quotes).
    pub(super) fn offset_in_string(&self, offset: usize, column: usize) -> usize {
        let rest = self.text.get(offset..).unwrap_or("");
        let skip = if rest.starts_with("\"\"\"") || rest.starts_with("'''") {
            let after = &rest[3..];
            3 + usize::from(after.starts_with('\n')) + usize::from(after.starts_with("\r\n")) * 2
        } else {
            1
        };
        let body = rest.get(skip..).unwrap_or("");
        let inner: usize = body
            .chars()
            .take(column.saturating_sub(1))
            .map(char::len_utf8)
            .sum();
        offset + skip + inner
    }
}

/// A scalar TOML value as a template string; tables and arrays are refused.
pub(super) fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

pub(super) fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}
