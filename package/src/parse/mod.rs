//! TOML → [`Package`]: schema errors from the TOML decoder, then semantic checks
//! (task kinds, references, cycles, parameter defaults, expressions), each
//! with a position. Parameters are read in [`params`], tasks in [`tasks`], and
//! the checks across tasks live in [`refs`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::error::PackageError;
use crate::model::{ChildrenOnCancel, Package, valid_user_name};

mod ctx;
#[cfg(test)]
mod lang_tests;
mod params;
mod refs;
mod tasks;

use ctx::Ctx;
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

impl Package {
    /// Parses and validates a package; `origin` names the file in errors.
    /// Returns the first error; [`Package::check`] returns them all.
    pub fn parse(origin: &str, text: &str) -> Result<Package, PackageError> {
        Package::check(origin, text).map_err(|mut errors| errors.remove(0))
    }

    /// Parses and validates a package, returning every error found (never an
    /// empty list), in file order, each with its position. A TOML syntax
    /// error stops at once (there is nothing to check further); a schema
    /// error (a field the schema does not know, a wrong type) in one task or
    /// parameter hides neither those of the others nor the checks of what
    /// decoded (references, expressions, cycles).
    pub fn check(origin: &str, text: &str) -> Result<Package, Vec<PackageError>> {
        parse(origin, text)
    }

    /// Like [`Package::check`], but also returns what could be built when
    /// there are findings: the package without the tasks and parameters that
    /// have errors (`None` when the document did not decode), so that a
    /// caller can go on checking (the child packages its tasks name). Such a
    /// package is for more checks only, never to run.
    pub fn check_partial(origin: &str, text: &str) -> (Option<Package>, Vec<PackageError>) {
        parse_partial(origin, text)
    }
}

/// A TOML error as a `PACKAGE_PARSE` finding at its position.
fn parse_error(origin: &str, text: &str, e: &toml::de::Error) -> PackageError {
    let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
    PackageError::Parse {
        origin: origin.to_string(),
        line,
        column,
        message: e.message().trim().to_string(),
    }
}

/// Decodes the document. The decoder stops at its first schema error (a
/// field it does not know, a wrong type), so a document that has one is
/// decoded again table by table — the top level, each parameter, each task
/// — to report every such error at once; the tables that decode go on to
/// the semantic checks, and the names of those that do not are returned so
/// that no reference to them is reported as unknown. A TOML syntax error
/// stops at once: there is no structure to go on with.
fn decode(
    origin: &str,
    text: &str,
    errors: &mut Vec<PackageError>,
) -> Option<(RawPackage, Undecoded)> {
    let first = match toml::from_str::<RawPackage>(text) {
        Ok(raw) => return Some((raw, Undecoded::default())),
        Err(e) => e,
    };
    let give_up = |errors: &mut Vec<PackageError>| {
        errors.push(parse_error(origin, text, &first));
        None
    };
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return give_up(errors);
    };
    let span = doc.span();
    let mut rest = toml::de::DeTable::default();
    let (mut tasks, mut params) = (None, None);
    for (k, v) in doc.into_inner() {
        match k.get_ref().as_ref() {
            "tasks" => tasks = Some(v),
            "parameters" => params = Some(v),
            _ => {
                rest.insert(k, v);
            }
        }
    }
    // Each entry of `tasks` and `parameters` on its own (a table each).
    fn entries<'i, T: serde::de::DeserializeOwned>(
        table: Option<toml::Spanned<toml::de::DeValue<'i>>>,
        origin: &str,
        text: &str,
        errors: &mut Vec<PackageError>,
        failed: &mut Vec<String>,
    ) -> Option<BTreeMap<String, Spanned<T>>> {
        let mut out = BTreeMap::new();
        let Some(table) = table else {
            return Some(out);
        };
        let toml::de::DeValue::Table(table) = table.into_inner() else {
            return None;
        };
        for (k, v) in table {
            let name = k.get_ref().to_string();
            let de = toml::de::ValueDeserializer::from(v);
            match <Spanned<T> as serde::Deserialize>::deserialize(de) {
                Ok(t) => {
                    out.insert(name, t);
                }
                Err(e) => {
                    errors.push(parse_error(origin, text, &e));
                    failed.push(name);
                }
            }
        }
        Some(out)
    }
    let before = errors.len();
    let mut failed = Vec::new();
    let tasks = entries::<RawTask>(tasks, origin, text, errors, &mut failed);
    let mut failed_params = Vec::new();
    let parameters = entries::<RawParam>(params, origin, text, errors, &mut failed_params);
    let top = <RawPackage as serde::Deserialize>::deserialize(toml::de::Deserializer::from(
        Spanned::new(span, rest),
    ));
    let (Some(tasks), Some(parameters)) = (tasks, parameters) else {
        errors.truncate(before);
        return give_up(errors);
    };
    let mut raw = match top {
        Ok(raw) => raw,
        Err(e) => {
            errors.push(parse_error(origin, text, &e));
            return None;
        }
    };
    if errors.len() == before {
        // Decoded piece by piece after all: report what the decoder said.
        return give_up(errors);
    }
    raw.tasks = tasks;
    raw.parameters = parameters;
    Some((
        raw,
        Undecoded {
            tasks: failed,
            params: failed_params,
        },
    ))
}

/// Tasks and parameters whose tables did not decode (each reported).
#[derive(Default)]
struct Undecoded {
    tasks: Vec<String>,
    params: Vec<String>,
}

fn parse(origin: &str, text: &str) -> Result<Package, Vec<PackageError>> {
    match parse_partial(origin, text) {
        (Some(p), errors) if errors.is_empty() => Ok(p),
        (_, errors) => Err(errors),
    }
}

/// The package with what could be built (`None` when the document could
/// not be decoded), and every finding sorted by position.
fn parse_partial(origin: &str, text: &str) -> (Option<Package>, Vec<PackageError>) {
    let mut errors = Vec::new();
    let Some((raw, undecoded)) = decode(origin, text, &mut errors) else {
        return (None, errors);
    };
    let tasks = raw.tasks.len() + undecoded.tasks.len();
    if tasks > crate::model::MAX_TASKS {
        return (
            None,
            vec![PackageError::TooManyTasks {
                origin: origin.to_string(),
                tasks,
                limit: crate::model::MAX_TASKS,
            }],
        );
    }
    let mut cx = Ctx {
        origin,
        text,
        errors,
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
    // Names declared but not built (an error was reported for each): the
    // checks across tasks still run, with a stand-in for each, so that
    // every other finding is reported in the same run.
    let broken_params: Vec<String> = (raw.parameters.keys())
        .filter(|n| !parameters.contains_key(*n))
        .chain(undecoded.params.iter())
        .cloned()
        .collect();
    let broken_tasks: Vec<String> = (raw.tasks.keys())
        .filter(|n| !task_map.contains_key(*n))
        .chain(undecoded.tasks.iter())
        .cloned()
        .collect();
    let package = Package {
        name,
        description: raw.description,
        parameters,
        tasks: task_map,
        run_as,
        children_on_cancel,
    };
    let spans: BTreeMap<&str, &Spanned<RawTask>> =
        raw.tasks.iter().map(|(k, v)| (k.as_str(), v)).collect();
    if broken_tasks.is_empty() && broken_params.is_empty() {
        refs::check(&mut cx, &package, &spans);
    } else {
        refs::check(
            &mut cx,
            &with_stand_ins(&package, &broken_tasks, &broken_params),
            &spans,
        );
    }
    let mut errors = cx.errors;
    errors.sort_by_key(|e| match e {
        PackageError::Invalid { line, column, .. } | PackageError::Parse { line, column, .. } => {
            (*line, *column)
        }
        _ => (0, 0),
    });
    (Some(package), errors)
}

/// `p` with a stand-in for each task and parameter that could not be built:
/// references to them are not unknown. A task's stand-in is an empty group
/// (no constraints, no templates, it cannot be a `noop`), a parameter's a
/// string with no default.
fn with_stand_ins(p: &Package, tasks: &[String], params: &[String]) -> Package {
    use crate::model::{GroupTask, ParamType, ParameterDef, Task, TaskKind};
    let mut p = p.clone();
    for name in tasks {
        p.tasks.entry(name.clone()).or_insert_with(|| Task {
            name: name.clone(),
            description: String::new(),
            after: Vec::new(),
            when: None,
            timeout_s: None,
            retry: Default::default(),
            continue_on_failure: false,
            kind: TaskKind::Group(GroupTask {
                members: Vec::new(),
            }),
        });
    }
    for name in params {
        p.parameters
            .entry(name.clone())
            .or_insert_with(|| ParameterDef {
                name: name.clone(),
                ty: ParamType::String,
                default: None,
                required: false,
                sensitive: false,
                description: String::new(),
            });
    }
    p
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

    /// Every finding of every stage in one run: fields the schema does not
    /// know in two tasks (and a parameter), an unknown `after`, a `when`
    /// that does not parse, a cycle — and no false finding about the tasks
    /// that did not decode.
    #[test]
    fn every_finding_is_reported_at_once() {
        let text = "name = 'bad'\n\
            [parameters.day]\ntype = 'string'\ndefalt = 'x'\n\
            [tasks.one]\nexec = ['true']\nretries = 3\n\
            [tasks.two]\nscript = 'echo ${params.day}'\ntimeout = 10\n\
            [tasks.three]\nexec = ['true']\nafter = ['nobody', 'one']\n\
            [tasks.four]\nexec = ['true']\nwhen = 'params.x =='\nafter = ['two']\n\
            [tasks.five]\nexec = ['true']\nafter = ['six']\n\
            [tasks.six]\nexec = ['true']\nafter = ['five']\n";
        let errors = Package::check("f.toml", text).unwrap_err();
        let all: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for want in ["defalt", "retries", "timeout", "'nobody'", "when", "cycle"] {
            assert!(
                all.iter().any(|e| e.contains(want)),
                "no finding about {want}: {all:#?}"
            );
        }
        assert_eq!(all.len(), 6, "{all:#?}");
        assert!(
            all.iter().all(|e| !e.contains("unknown task 'one'")
                && !e.contains("unknown task 'two'")
                && !e.contains("unknown parameter")),
            "{all:#?}"
        );
        assert!(
            all[0].starts_with("f.toml:4:") && all[1].starts_with("f.toml:7:"),
            "in file order, with positions inside the tables that did not decode: {all:#?}"
        );
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
