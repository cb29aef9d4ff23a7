//! TOML → [`Package`]: schema errors from the TOML decoder, then semantic checks
//! (task kinds, references, cycles, parameter defaults), each with a position.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use toml::Spanned;

use crate::error::PackageError;
use crate::model::{
    ExecTask, ForeachOver, ForeachTask, Package, ParamType, ParameterDef, RetryPolicy, Task,
    TaskKind, valid_user_name,
};
use crate::params::check_value;

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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawParam {
    #[serde(rename = "type")]
    ty: String,
    default: Option<toml::Value>,
    #[serde(default)]
    required: bool,
    #[serde(default)]
    sensitive: bool,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    #[serde(default)]
    description: String,
    #[serde(default)]
    after: Vec<String>,
    timeout_s: Option<u64>,
    exec: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    workdir: Option<String>,
    noop: Option<bool>,
    foreach: Option<RawForeach>,
    child: Option<String>,
    parallelism: Option<u32>,
    params: Option<BTreeMap<String, toml::Value>>,
    retry: Option<RawRetry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForeach {
    range: Option<RawRange>,
    items: Option<Vec<toml::Value>>,
    param: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    start: toml::Value,
    end: toml::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    attempts: Option<u32>,
    lost_attempts: Option<u32>,
}

/// Upper bound of `parallelism`, so a typo cannot ask for a billion slots.
const MAX_PARALLELISM: u32 = 100_000;
const DEFAULT_PARALLELISM: u32 = 64;

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Ctx<'a> {
    origin: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn invalid(&self, offset: usize, message: impl Into<String>) -> PackageError {
        let (line, column) = line_col(self.text, offset);
        PackageError::Invalid {
            origin: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        }
    }
}

/// A scalar TOML value as a template string; tables and arrays are refused.
fn scalar(v: &toml::Value) -> Option<String> {
    match v {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        _ => None,
    }
}

/// Parse and validate a package. `origin` names the file in error messages.
pub(crate) fn parse(origin: &str, text: &str) -> Result<Package, PackageError> {
    let raw: RawPackage = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
        PackageError::Parse {
            origin: origin.to_string(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;
    let cx = Ctx { origin, text };

    let name = raw.name.get_ref().trim().to_string();
    if name.is_empty() {
        return Err(cx.invalid(raw.name.span().start, "package name must not be empty"));
    }

    let run_as = match &raw.run_as {
        None => None,
        Some(user) if valid_user_name(user.get_ref()) => Some(user.get_ref().clone()),
        Some(user) => {
            return Err(cx.invalid(
                user.span().start,
                format!(
                    "run_as {:?} is not a user name: 1 to 32 characters, a letter or '_' first, \
                     then letters, digits, '_', '-' or '.'",
                    user.get_ref()
                ),
            ));
        }
    };

    let mut parameters = BTreeMap::new();
    for (pname, spanned) in &raw.parameters {
        let at = spanned.span().start;
        let p = spanned.get_ref();
        if !valid_ident(pname) {
            return Err(cx.invalid(
                at,
                format!("parameter name '{pname}': use letters, digits, '_' or '-'"),
            ));
        }
        let ty = match p.ty.as_str() {
            "string" => ParamType::String,
            "int" => ParamType::Int,
            "bool" => ParamType::Bool,
            other => {
                return Err(cx.invalid(
                    at,
                    format!(
                        "parameter '{pname}': unknown type '{other}', expected string, int or bool"
                    ),
                ));
            }
        };
        let default = match &p.default {
            None => None,
            Some(v) => {
                let s = scalar(v).ok_or_else(|| {
                    cx.invalid(at, format!("parameter '{pname}': default must be a scalar"))
                })?;
                let s = check_value(pname, ty, &s).map_err(|e| cx.invalid(at, e.to_string()))?;
                Some(s)
            }
        };
        parameters.insert(
            pname.clone(),
            ParameterDef {
                name: pname.clone(),
                ty,
                default,
                required: p.required,
                sensitive: p.sensitive,
                description: p.description.clone(),
            },
        );
    }

    let mut tasks = BTreeMap::new();
    for (tname, spanned) in &raw.tasks {
        let at = spanned.span().start;
        let t = spanned.get_ref();
        if !valid_ident(tname) {
            return Err(cx.invalid(
                at,
                format!("task name '{tname}': use letters, digits, '_' or '-'"),
            ));
        }
        let _ = &t.description;
        let kind = match (&t.exec, &t.foreach, t.noop) {
            (Some(argv), None, None) => {
                if argv.is_empty() || argv[0].trim().is_empty() {
                    return Err(cx.invalid(
                        at,
                        format!("task '{tname}': `exec` needs a program: [\"prog\", \"arg\", ...]"),
                    ));
                }
                refuse_fields(&cx, at, &foreach_fields(t), |field| {
                    format!("task '{tname}': `{field}` belongs to a `foreach` task")
                })?;
                TaskKind::Exec(ExecTask {
                    argv: argv.clone(),
                    env: t.env.clone().unwrap_or_default(),
                    workdir: t.workdir.clone(),
                })
            }
            (None, Some(fe), None) => TaskKind::Foreach(foreach_task(&cx, at, tname, t, fe)?),
            (None, None, Some(_)) => noop_task(&cx, at, tname, t)?,
            _ => {
                return Err(cx.invalid(
                    at,
                    format!("task '{tname}': expected exactly one of `exec`, `foreach` or `noop`"),
                ));
            }
        };
        tasks.insert(
            tname.clone(),
            Task {
                name: tname.clone(),
                after: t.after.clone(),
                timeout_s: t.timeout_s,
                kind,
            },
        );
    }

    // References and cycles.
    for (tname, spanned) in &raw.tasks {
        for dep in &spanned.get_ref().after {
            if !tasks.contains_key(dep) {
                return Err(cx.invalid(
                    spanned.span().start,
                    format!("task '{tname}': `after` names unknown task '{dep}'"),
                ));
            }
        }
    }
    let package = Package {
        name,
        description: raw.description,
        parameters,
        tasks,
        run_as,
    };
    if package.task_order().len() != package.tasks.len() {
        let ordered: BTreeSet<&str> = package
            .task_order()
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        let stuck: Vec<&str> = package
            .tasks
            .keys()
            .map(String::as_str)
            .filter(|n| !ordered.contains(n))
            .collect();
        let at = raw.tasks.get(stuck[0]).map_or(0, |s| s.span().start);
        return Err(cx.invalid(
            at,
            format!("tasks form a cycle through `after`: {}", stuck.join(", ")),
        ));
    }
    // Parameter references in foreach.param must exist.
    for (tname, task) in &package.tasks {
        if let TaskKind::Foreach(fe) = &task.kind
            && let ForeachOver::Param(p) = &fe.over
            && !package.parameters.contains_key(p)
        {
            let at = raw.tasks.get(tname).map_or(0, |s| s.span().start);
            return Err(cx.invalid(
                at,
                format!("task '{tname}': foreach over unknown parameter '{p}'"),
            ));
        }
    }
    Ok(package)
}

fn foreach_task(
    cx: &Ctx<'_>,
    at: usize,
    tname: &str,
    t: &RawTask,
    fe: &RawForeach,
) -> Result<ForeachTask, PackageError> {
    let over = match (&fe.range, &fe.items, &fe.param) {
        (Some(r), None, None) => {
            let start = scalar(&r.start);
            let end = scalar(&r.end);
            match (start, end) {
                (Some(start), Some(end)) => ForeachOver::Range { start, end },
                _ => {
                    return Err(cx.invalid(
                        at,
                        format!(
                            "task '{tname}': range start and end must be integers or templates"
                        ),
                    ));
                }
            }
        }
        (None, Some(items), None) => {
            let mut out = Vec::with_capacity(items.len());
            for v in items {
                out.push(scalar(v).ok_or_else(|| {
                    cx.invalid(at, format!("task '{tname}': foreach items must be scalars"))
                })?);
            }
            ForeachOver::Items(out)
        }
        (None, None, Some(p)) => ForeachOver::Param(p.clone()),
        _ => {
            return Err(cx.invalid(
                at,
                format!("task '{tname}': foreach needs exactly one of `range`, `items`, `param`"),
            ));
        }
    };
    let child = t.child.clone().unwrap_or_default();
    if child.trim().is_empty() {
        return Err(cx.invalid(
            at,
            format!("task '{tname}': a foreach needs `child = \"path/to/child.toml\"`"),
        ));
    }
    let parallelism = t.parallelism.unwrap_or(DEFAULT_PARALLELISM);
    if parallelism == 0 || parallelism > MAX_PARALLELISM {
        return Err(cx.invalid(
            at,
            format!("task '{tname}': parallelism must be between 1 and {MAX_PARALLELISM}"),
        ));
    }
    let mut params = BTreeMap::new();
    for (k, v) in t.params.iter().flatten() {
        let s = scalar(v).ok_or_else(|| {
            cx.invalid(
                at,
                format!("task '{tname}': param '{k}' must be a scalar or template"),
            )
        })?;
        params.insert(k.clone(), s);
    }
    let mut retry = RetryPolicy::default();
    if let Some(r) = &t.retry {
        if let Some(a) = r.attempts {
            retry.attempts = a;
        }
        if let Some(a) = r.lost_attempts {
            retry.lost_attempts = a;
        }
        if retry.attempts == 0 || retry.attempts > 100 || retry.lost_attempts > 100 {
            return Err(cx.invalid(
                at,
                format!("task '{tname}': retry attempts must be 1..=100, lost_attempts 0..=100"),
            ));
        }
    }
    if t.exec.is_some() || t.env.is_some() || t.workdir.is_some() {
        return Err(cx.invalid(
            at,
            format!("task '{tname}': a foreach cannot have exec/env/workdir"),
        ));
    }
    Ok(ForeachTask {
        over,
        child,
        parallelism,
        params,
        retry,
    })
}

/// `noop = true`: a step that succeeds at once. It takes no other kind's fields.
fn noop_task(cx: &Ctx<'_>, at: usize, tname: &str, t: &RawTask) -> Result<TaskKind, PackageError> {
    if t.noop != Some(true) {
        return Err(cx.invalid(
            at,
            format!("task '{tname}': `noop` can only be `true` (remove it to give the task another kind)"),
        ));
    }
    let mut fields = vec![("env", t.env.is_some()), ("workdir", t.workdir.is_some())];
    fields.extend(foreach_fields(t));
    refuse_fields(cx, at, &fields, |field| {
        format!("task '{tname}': a `noop` task cannot have `{field}`")
    })?;
    Ok(TaskKind::Noop)
}

/// The fields only a `foreach` task may have, and whether each is set.
fn foreach_fields(t: &RawTask) -> [(&'static str, bool); 4] {
    [
        ("child", t.child.is_some()),
        ("parallelism", t.parallelism.is_some()),
        ("params", t.params.is_some()),
        ("retry", t.retry.is_some()),
    ]
}

/// Fails at the first field that is set but does not belong to the task's kind.
fn refuse_fields(
    cx: &Ctx<'_>,
    at: usize,
    fields: &[(&'static str, bool)],
    message: impl Fn(&str) -> String,
) -> Result<(), PackageError> {
    match fields.iter().find(|(_, present)| *present) {
        Some((field, _)) => Err(cx.invalid(at, message(field))),
        None => Ok(()),
    }
}

fn valid_ident(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let p = parse("p.toml", PARENT).unwrap();
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
        let err = parse("bad.toml", "name = \"x\"\n[tasks.a\nexec = []\n").unwrap_err();
        assert_eq!(err.code(), "PACKAGE_PARSE");
        let PackageError::Parse { line, origin, .. } = &err else {
            panic!()
        };
        assert_eq!(origin, "bad.toml");
        assert_eq!(*line, 2);
    }

    #[test]
    fn unknown_field_is_a_parse_error_at_its_line() {
        let err = parse("f.toml", "name = \"x\"\n[tasks.a]\nexecc = [\"true\"]\n").unwrap_err();
        let PackageError::Parse { line, message, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*line, 3, "{message}");
        assert!(message.contains("execc"), "{message}");
    }

    #[test]
    fn task_needs_exactly_one_kind() {
        let err = parse("f.toml", "name = \"x\"\n[tasks.a]\nafter = []\n").unwrap_err();
        assert_eq!(err.code(), "PACKAGE_INVALID");
        assert!(err.to_string().contains("exactly one of"), "{err}");
        assert!(err.to_string().starts_with("f.toml:2:"), "{err}");
    }

    #[test]
    fn noop_task_parses() {
        let p = parse(
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
            ("noop = true\nchild = 'c.toml'", "cannot have `child`"),
            ("noop = true\nparallelism = 3", "cannot have `parallelism`"),
        ] {
            let text = format!("name='x'\n[tasks.a]\n{toml}\n");
            let e = parse("f.toml", &text).unwrap_err();
            assert_eq!(e.code(), "PACKAGE_INVALID", "{toml}: {e}");
            assert!(e.to_string().contains(expect), "{toml}: {e}");
        }
    }

    #[test]
    fn unknown_after_and_cycles_are_rejected() {
        let e = parse(
            "f.toml",
            "name='x'\n[tasks.a]\nexec=['true']\nafter=['zz']\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown task 'zz'"), "{e}");
        let e = parse(
            "f.toml",
            "name='x'\n[tasks.a]\nexec=['true']\nafter=['b']\n[tasks.b]\nexec=['true']\nafter=['a']\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("cycle"), "{e}");
    }

    #[test]
    fn bad_default_type_is_rejected() {
        let e = parse(
            "f.toml",
            "name='x'\n[parameters.n]\ntype='int'\ndefault='abc'\n",
        )
        .unwrap_err();
        assert_eq!(e.code(), "PACKAGE_INVALID");
        assert!(e.to_string().contains("integer"), "{e}");
    }

    #[test]
    fn task_order_follows_after_then_name() {
        let p = parse(
            "f.toml",
            "name='x'\n[tasks.c]\nexec=['true']\n[tasks.b]\nexec=['true']\nafter=['c']\n[tasks.a]\nexec=['true']\nafter=['b']\n",
        )
        .unwrap();
        let names: Vec<_> = p.task_order().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["c", "b", "a"]);
    }

    #[test]
    fn run_as_is_optional_and_must_be_a_user_name() {
        let p = parse("f.toml", "name='x'\n[tasks.a]\nexec=['true']\n").unwrap();
        assert_eq!(p.run_as, None);
        for ok in ["etl", "_svc", "a.b-c_9", &"u".repeat(32)] {
            let text = format!("name='x'\nrun_as = '{ok}'\n[tasks.a]\nexec=['true']\n");
            assert_eq!(parse("f.toml", &text).unwrap().run_as.as_deref(), Some(ok));
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
            let e = parse("f.toml", &text).unwrap_err();
            assert_eq!(e.code(), "PACKAGE_INVALID", "{bad:?}: {e}");
            assert!(e.to_string().starts_with("f.toml:2:"), "{bad:?}: {e}");
            assert!(e.to_string().contains("run_as"), "{bad:?}: {e}");
        }
        let e = parse("f.toml", "name='x'\nrun_as = 0\n").unwrap_err();
        assert_eq!(e.code(), "PACKAGE_PARSE", "{e}");
    }

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    proptest::proptest! {
        /// Arbitrary input never panics the parser; errors always carry a code.
        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            if let Err(e) = parse("fuzz.toml", &s) {
                proptest::prop_assert!(!e.code().is_empty());
            }
        }
    }
}
