//! TOML → [`Package`]: schema errors from the TOML decoder, then semantic checks
//! (task kinds, references, cycles, parameter defaults, expressions), each
//! with a position. Parameters are read in [`params`], tasks in [`tasks`], and
//! the checks across tasks live in [`refs`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::error::PackageError;
use crate::model::{ChildrenOnCancel, Package, valid_user_name};

#[cfg(test)]
mod lang_tests;
mod params;
mod refs;
mod tasks;

use params::RawParam;
pub(crate) use tasks::DEFAULT_PARALLELISM;
use tasks::RawTask;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    parameters: BTreeMap<String, Spanned<RawParam>>,
    #[serde(default)]
    tasks: BTreeMap<String, Spanned<RawTask>>,
    run_as: Option<Spanned<String>>,
    children_on_cancel: Option<Spanned<String>>,
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Where errors go: the file name and text (for positions), and every error
/// found so far.
pub(super) struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
    errors: Vec<PackageError>,
    /// Byte offsets where lines start, made at the first error: positions
    /// of many errors cost a binary search each, not a scan of the text.
    line_starts: std::cell::OnceCell<Vec<usize>>,
}

impl Ctx<'_> {
    /// 1-based line and column of a byte offset (as [`line_col`]).
    fn position(&self, offset: usize) -> (usize, usize) {
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

impl Package {
    /// Parses and validates a package; `origin` names the file in errors.
    /// Returns the first error; [`Package::check`] returns them all.
    pub fn parse(origin: &str, text: &str) -> Result<Package, PackageError> {
        Package::check(origin, text).map_err(|mut errors| errors.remove(0))
    }

    /// Parses and validates a package, returning every error found (never an
    /// empty list), in file order, each with its position. A TOML syntax or
    /// schema error stops at once: there is nothing to check further.
    pub fn check(origin: &str, text: &str) -> Result<Package, Vec<PackageError>> {
        parse(origin, text)
    }
}

fn parse(origin: &str, text: &str) -> Result<Package, Vec<PackageError>> {
    let raw: RawPackage = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
        vec![PackageError::Parse {
            origin: origin.to_string(),
            line,
            column,
            message: e.message().trim().to_string(),
        }]
    })?;
    if raw.tasks.len() > crate::model::MAX_TASKS {
        return Err(vec![PackageError::TooManyTasks {
            origin: origin.to_string(),
            tasks: raw.tasks.len(),
            limit: crate::model::MAX_TASKS,
        }]);
    }
    let mut cx = Ctx {
        origin,
        text,
        errors: Vec::new(),
        line_starts: Default::default(),
    };

    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty() {
        cx.report(raw.name.span().start, "package name must not be empty");
    }
    let run_as = match &raw.run_as {
        None => None,
        Some(user) if valid_user_name(user.get_ref()) => Some(user.get_ref().clone()),
        Some(user) => {
            cx.report(
                user.span().start,
                format!(
                    "run_as {:?} is not a user name: 1 to 32 characters, a letter or '_' first, \
                     then letters, digits, '_', '-' or '.'",
                    user.get_ref()
                ),
            );
            None
        }
    };
    let children_on_cancel = match raw
        .children_on_cancel
        .as_ref()
        .map(|s| s.get_ref().as_str())
    {
        None | Some("cancel") => ChildrenOnCancel::Cancel,
        Some("abandon") => ChildrenOnCancel::Abandon,
        Some(other) => {
            let at = raw
                .children_on_cancel
                .as_ref()
                .map_or(0, |s| s.span().start);
            cx.report(
                at,
                format!("children_on_cancel '{other}': expected \"cancel\" or \"abandon\""),
            );
            ChildrenOnCancel::Cancel
        }
    };

    let mut parameters = BTreeMap::new();
    for (pname, spanned) in &raw.parameters {
        if let Some(def) = params::parameter(&mut cx, pname, spanned) {
            parameters.insert(pname.clone(), def);
        }
    }
    let mut task_map = BTreeMap::new();
    for (tname, spanned) in &raw.tasks {
        if let Some(task) = tasks::task(&mut cx, tname, spanned) {
            task_map.insert(tname.clone(), task);
        }
    }
    let package = Package {
        name,
        description: raw.description,
        parameters,
        tasks: task_map,
        run_as,
        children_on_cancel,
    };
    if cx.errors.is_empty() {
        let spans: BTreeMap<&str, &Spanned<RawTask>> =
            raw.tasks.iter().map(|(k, v)| (k.as_str(), v)).collect();
        refs::check(&mut cx, &package, &spans);
    }
    if cx.errors.is_empty() {
        Ok(package)
    } else {
        let mut errors = cx.errors;
        errors.sort_by_key(|e| match e {
            PackageError::Invalid { line, column, .. } => (*line, *column),
            _ => (0, 0),
        });
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RetryPolicy, TaskKind};

    const PARENT: &str = r#"
name = "fanout"
[parameters.children]
type = "int"
default = 10
[tasks.fan]
foreach = { range = { start = 1, end = "${params.children}" } }
child = "child.toml"
parallelism = 4
params = { shard = "${item}" }
"#;

    #[test]
    fn parses_a_parent() {
        let p = Package::parse("p.toml", PARENT).unwrap();
        assert_eq!(p.name, "fanout");
        let TaskKind::Foreach(fe) = &p.tasks["fan"].kind else {
            panic!("not a foreach")
        };
        assert_eq!(fe.parallelism, 4);
        assert_eq!(fe.child, "child.toml");
        assert_eq!(fe.retry, RetryPolicy::default());
        assert_eq!(p.parameters["children"].default.as_deref(), Some("10"));
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = Package::parse("bad.toml", "name = \"x\"\n[tasks.a\nexec = []\n").unwrap_err();
        assert_eq!(err.code(), "PACKAGE_PARSE");
        let PackageError::Parse { line, origin, .. } = &err else {
            panic!()
        };
        assert_eq!(origin, "bad.toml");
        assert_eq!(*line, 2);
    }

    #[test]
    fn unknown_field_is_a_parse_error_at_its_line() {
        let err =
            Package::parse("f.toml", "name = \"x\"\n[tasks.a]\nexecc = [\"true\"]\n").unwrap_err();
        let PackageError::Parse { line, message, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*line, 3, "{message}");
        assert!(message.contains("execc"), "{message}");
    }

    #[test]
    fn task_needs_exactly_one_kind() {
        let err = Package::parse("f.toml", "name = \"x\"\n[tasks.a]\nafter = []\n").unwrap_err();
        assert_eq!(err.code(), "PACKAGE_INVALID");
        assert!(err.to_string().contains("exactly one of"), "{err}");
        assert!(err.to_string().starts_with("f.toml:2:"), "{err}");
    }

    #[test]
    fn noop_task_parses() {
        let p = Package::parse(
            "f.toml",
            "name='x'\n[tasks.a]\nnoop = true\n[tasks.b]\nexec=['true']\nafter=['a']\n",
        )
        .unwrap();
        assert_eq!(p.tasks["a"].kind, TaskKind::Noop);
        let names: Vec<_> = p.task_order().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["a", "b"]);
    }

    #[test]
    fn noop_is_exclusive_and_takes_no_other_fields() {
        for (toml, expect) in [
            ("noop = true\nexec = ['true']", "exactly one of"),
            (
                "noop = true\nforeach = { items = [1] }\nchild = 'c.toml'",
                "exactly one of",
            ),
            ("noop = false", "can only be `true`"),
            ("noop = true\nenv = { A = 'b' }", "cannot have `env`"),
            ("noop = true\nchild = 'c.toml'", "exactly one of"),
            ("noop = true\nparallelism = 3", "cannot have `parallelism`"),
        ] {
            let text = format!("name='x'\n[tasks.a]\n{toml}\n");
            let e = Package::parse("f.toml", &text).unwrap_err();
            assert_eq!(e.code(), "PACKAGE_INVALID", "{toml}: {e}");
            assert!(e.to_string().contains(expect), "{toml}: {e}");
        }
    }

    #[test]
    fn unknown_after_and_cycles_are_rejected() {
        let e = Package::parse(
            "f.toml",
            "name='x'\n[tasks.a]\nexec=['true']\nafter=['zz']\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown task 'zz'"), "{e}");
        let e = Package::parse(
            "f.toml",
            "name='x'\n[tasks.a]\nexec=['true']\nafter=['b']\n[tasks.b]\nexec=['true']\nafter=['a']\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn bad_default_type_is_rejected() {
        let e = Package::parse(
            "f.toml",
            "name='x'\n[parameters.n]\ntype='int'\ndefault='abc'\n",
        )
        .unwrap_err();
        assert_eq!(e.code(), "PACKAGE_INVALID");
        assert!(e.to_string().contains("integer"), "{e}");
    }

    #[test]
    fn task_order_follows_after_then_name() {
        let p = Package::parse(
            "f.toml",
            "name='x'\n[tasks.c]\nexec=['true']\n[tasks.b]\nexec=['true']\nafter=['c']\n[tasks.a]\nexec=['true']\nafter=['b']\n",
        )
        .unwrap();
        let names: Vec<_> = p.task_order().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["c", "b", "a"]);
    }

    #[test]
    fn run_as_is_optional_and_must_be_a_user_name() {
        let p = Package::parse("f.toml", "name='x'\n[tasks.a]\nexec=['true']\n").unwrap();
        assert_eq!(p.run_as, None);
        for ok in ["etl", "_svc", "a.b-c_9", &"u".repeat(32)] {
            let text = format!("name='x'\nrun_as = '{ok}'\n[tasks.a]\nexec=['true']\n");
            assert_eq!(
                Package::parse("f.toml", &text).unwrap().run_as.as_deref(),
                Some(ok)
            );
        }
        for bad in [
            "",
            "0",
            "1000",
            "-x",
            "a b",
            "a:b",
            "a/b",
            "é",
            &"u".repeat(33),
        ] {
            let text = format!("name='x'\nrun_as = {bad:?}\n[tasks.a]\nexec=['true']\n");
            let e = Package::parse("f.toml", &text).unwrap_err();
            assert_eq!(e.code(), "PACKAGE_INVALID", "{bad:?}: {e}");
            assert!(e.to_string().starts_with("f.toml:2:"), "{bad:?}: {e}");
            assert!(e.to_string().contains("run_as"), "{bad:?}: {e}");
        }
        let e = Package::parse("f.toml", "name='x'\nrun_as = 0\n").unwrap_err();
        assert_eq!(e.code(), "PACKAGE_PARSE", "{e}");
    }

    #[test]
    fn line_col_counts_from_one() {
        let text = "ab\ncdé\n\nx";
        let cx = Ctx {
            origin: "t",
            text,
            errors: Vec::new(),
            line_starts: Default::default(),
        };
        for offset in 0..=text.len() + 2 {
            assert_eq!(cx.position(offset), line_col(text, offset), "at {offset}");
        }
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    proptest::proptest! {
        /// Arbitrary input never panics the parser; errors always carry a code.
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            if let Err(e) = Package::parse("fuzz.toml", &s) {
                proptest::prop_assert!(!e.code().is_empty());
            }
        }
    }
}
