//! Fuzz targets for everything in a package that comes from outside: the TOML
//! text, run-time parameter overrides and templates.
//!
//! Nightly (and so cargo-fuzz) is not available, so these are proptest
//! properties. Each target runs `BATON_FUZZ_CASES` cases (default 2,000, so the
//! normal suite stays fast). The campaign recorded in `docs/security.md`:
//!
//! ```sh
//! BATON_FUZZ_CASES=1000000 CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true \
//!   CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true \
//!   cargo test --release -p baton-package --test fuzz
//! ```
//!
//! The targets:
//! - `parser_takes_arbitrary_bytes`: random bytes, and seed packages with bytes
//!   spliced in or cut out, (lossily) as text into the parser;
//! - `parser_takes_generated_packages`: TOML generated from the real grammar
//!   (tasks of every kind, parameters of every type, templates, unicode, huge
//!   numbers, deep nesting), then binding and foreach expansion of what parses;
//! - `binding_takes_arbitrary_overrides`: arbitrary overrides bound against a
//!   generated package, checked against a model of the binding rules;
//! - `interpolation_takes_arbitrary_templates` and `foreach_items_take_arbitrary_bounds`;
//! - `expressions_take_arbitrary_text`: `when` expressions into the parser
//!   and, when they parse, the evaluator.
//!
//! Every package that parses is also run through the [`Engine`] with
//! arbitrary outcomes, which must reach a package outcome.
//!
//! Every target checks the same contract: no panic, and every error carries one
//! of the stable codes of `docs/errors.md` that fits the operation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use baton_package::{
    Engine, ForeachOver, ForeachTask, Package, PackageError, ParamType, ParamValues, RetryPolicy,
    TaskKind, TaskOutcome, interpolate,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

const ORIGIN: &str = "fuzz.toml";
/// `baton_package::model::MAX_FOREACH_ITEMS` (not exported).
const MAX_ITEMS: usize = 1_000_000;

fn cases() -> u32 {
    match std::env::var("BATON_FUZZ_CASES") {
        Ok(v) => v
            .replace(['_', ','], "")
            .parse()
            .expect("BATON_FUZZ_CASES must be a number of cases"),
        Err(_) => 2_000,
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Found failures become unit tests; nothing is written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- checks

/// A parser error: one of the two parse codes, a position inside the text.
fn check_parse_error(e: &PackageError, text: &str) -> Result<(), TestCaseError> {
    let shown = e.to_string();
    match e {
        PackageError::Parse {
            origin,
            line,
            column,
            message,
        }
        | PackageError::Invalid {
            origin,
            line,
            column,
            message,
        } => {
            prop_assert!(matches!(e.code(), "PACKAGE_PARSE" | "PACKAGE_INVALID"));
            prop_assert_eq!(origin, ORIGIN);
            prop_assert!(*line >= 1 && *column >= 1, "{}", shown);
            prop_assert!(*line <= text.matches('\n').count() + 1, "{}", shown);
            prop_assert!(!message.trim().is_empty(), "{:?}", e);
        }
        other => prop_assert!(false, "parse gave a non-parse error: {:?}", other),
    }
    Ok(())
}

/// What `parse` promises about a package it accepts.
fn check_package(p: &Package) -> Result<(), TestCaseError> {
    prop_assert!(!p.name.is_empty() && p.name.trim() == p.name);
    let order = p.task_order();
    prop_assert_eq!(order.len(), p.tasks.len());
    let mut seen = BTreeSet::new();
    for t in order {
        for dep in t.after_names() {
            prop_assert!(seen.contains(dep), "{} before {}", t.name, dep);
        }
        seen.insert(t.name.as_str());
        match &t.kind {
            TaskKind::Exec(e) => prop_assert!(!e.argv.is_empty() && !e.argv[0].trim().is_empty()),
            TaskKind::Foreach(fe) => {
                prop_assert!((1..=100_000).contains(&fe.parallelism));
                prop_assert!((1..=100).contains(&fe.retry.attempts));
                prop_assert!(fe.retry.lost_attempts <= 100);
                prop_assert!(!fe.child.trim().is_empty());
                if let ForeachOver::Param(name) = &fe.over {
                    prop_assert!(p.parameters.contains_key(name));
                }
            }
            TaskKind::Script(sc) => prop_assert!(!sc.script.trim().is_empty()),
            TaskKind::Child(c) => prop_assert!(!c.child.trim().is_empty()),
            TaskKind::Group(g) => {
                prop_assert!(!g.members.is_empty());
                for m in &g.members {
                    prop_assert!(p.tasks.contains_key(m));
                    prop_assert_eq!(p.group_of(m), Some(t.name.as_str()));
                }
            }
            TaskKind::Noop => {}
        }
    }
    for (name, def) in &p.parameters {
        prop_assert_eq!(name, &def.name);
        if let Some(d) = &def.default {
            match def.ty {
                ParamType::String | ParamType::Secret => {}
                ParamType::Int => prop_assert_eq!(&d.parse::<i64>().unwrap().to_string(), d),
                ParamType::Bool => prop_assert!(d == "true" || d == "false"),
                ParamType::Float => prop_assert!(d.parse::<f64>().unwrap().is_finite()),
                ParamType::List => prop_assert!(serde_json::from_str::<Vec<String>>(d).is_ok()),
            }
        }
        prop_assert!(def.ty != ParamType::Secret || def.sensitive);
    }
    Ok(())
}

fn check_template_error(e: &PackageError) -> Result<(), TestCaseError> {
    prop_assert_eq!(e.code(), "TEMPLATE_INVALID", "{:?}", e);
    let _ = e.to_string();
    Ok(())
}

/// Everything a run does with a parsed package: bind (defaults, then a value
/// for every required parameter without one), expand each foreach, expand
/// every template. Errors only with their operation's codes.
fn exercise(p: &Package) -> Result<(), TestCaseError> {
    let values = match p.bind(&BTreeMap::new()) {
        Ok(v) => v,
        Err(e) => {
            prop_assert_eq!(e.code(), "PARAM_REQUIRED", "{:?}", e);
            let fill: BTreeMap<String, String> = p
                .parameters
                .values()
                .filter(|d| d.default.is_none())
                .map(|d| {
                    let v = match d.ty {
                        ParamType::String | ParamType::Secret => "a, b,,c",
                        ParamType::Int => "3",
                        ParamType::Bool => "yes",
                        ParamType::Float => "2.5",
                        ParamType::List => "a, b,,c",
                    };
                    (d.name.clone(), v.to_string())
                })
                .collect();
            match p.bind(&fill) {
                Ok(v) => v,
                Err(e) => return Err(TestCaseError::fail(format!("bind: {e:?}"))),
            }
        }
    };
    for task in p.tasks.values() {
        match &task.kind {
            TaskKind::Foreach(fe) => {
                let items = match fe.items(&values) {
                    Ok(items) => items,
                    Err(e) => {
                        check_template_error(&e)?;
                        vec!["x".to_string()]
                    }
                };
                prop_assert!(items.len() <= MAX_ITEMS);
                for item in items.iter().take(3) {
                    for t in fe.params.values() {
                        if let Err(e) = interpolate(t, &values, Some(item)) {
                            check_template_error(&e)?;
                        }
                    }
                }
            }
            TaskKind::Exec(ex) => {
                let templates = ex.argv.iter().chain(ex.env.values()).chain(&ex.workdir);
                for t in templates {
                    if let Err(e) = interpolate(t, &values, None) {
                        check_template_error(&e)?;
                    }
                }
            }
            TaskKind::Script(sc) => {
                let templates = std::iter::once(&sc.script)
                    .chain(sc.env.values())
                    .chain(&sc.workdir);
                for t in templates {
                    if let Err(e) = interpolate(t, &values, None) {
                        check_template_error(&e)?;
                    }
                }
            }
            TaskKind::Child(c) => {
                for t in c.params.values() {
                    if let Err(e) = interpolate(t, &values, None) {
                        check_template_error(&e)?;
                    }
                }
            }
            TaskKind::Group(_) | TaskKind::Noop => {}
        }
    }
    // The engine runs whatever parses: every task ends in one terminal state.
    let mut engine = Engine::new(p, values);
    for _ in 0..=2 * p.tasks.len() {
        let ready = engine.ready();
        if ready.is_empty() {
            break;
        }
        for t in ready {
            engine
                .started(&t)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let outcome = if t.len() % 2 == 0 {
                TaskOutcome::Succeeded
            } else {
                TaskOutcome::Failed
            };
            engine
                .finished(&t, outcome, BTreeMap::new())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
    }
    prop_assert!(engine.outcome().is_some(), "{:?}", engine.snapshot());
    Ok(())
}

fn parse_and_check(text: &str) -> Result<(), TestCaseError> {
    match Package::parse(ORIGIN, text) {
        Ok(p) => {
            check_package(&p)?;
            // What parses, written back, parses to the same package.
            let text = p.to_toml();
            match Package::parse(ORIGIN, &text) {
                Ok(again) => prop_assert_eq!(&again, &p, "{}", text),
                Err(e) => return Err(TestCaseError::fail(format!("to_toml: {e}\n{text}"))),
            }
            exercise(&p)
        }
        Err(e) => check_parse_error(&e, text),
    }
}

mod gen_inputs;
mod gen_packages;
use gen_inputs::*;
use gen_packages::*;

// ------------------------------------------------------- the targets

proptest! {
    #![proptest_config(config())]

    /// (a) Random bytes and mutated packages never panic the parser; every
    /// error is PACKAGE_PARSE or PACKAGE_INVALID with a position in the text.
    #[test]
    fn parser_takes_arbitrary_bytes(
        bytes in prop_oneof![vec(any::<u8>(), 0..2048), mutated_seed()],
    ) {
        parse_and_check(&lossy(bytes))?;
    }

    /// (b) TOML generated from the package grammar never panics the parser,
    /// and what parses binds and expands with only the documented errors.
    #[test]
    fn parser_takes_generated_packages(text in package_text()) {
        parse_and_check(&text)?;
    }

    /// (c) Arbitrary overrides bound against a package: no panic, and exactly
    /// the outcome of the binding rules (the same error code and name, or the
    /// same canonical values, with sensitive ones redacted in `Debug`).
    #[test]
    fn binding_takes_arbitrary_overrides(
        (decls, text, overrides) in package_and_overrides(),
    ) {
        let p = match Package::parse(ORIGIN, &text) {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("valid package refused: {e}\n{text}"))),
        };
        for (name, d) in &decls {
            prop_assert_eq!(&p.parameters[name].default, &d.default);
        }
        match (p.bind(&overrides), model_bind(&decls, &overrides)) {
            (Ok(values), Ok(expected)) => {
                prop_assert_eq!(values.to_map(), expected);
                let mut shown = BTreeMap::new();
                for (name, d) in &decls {
                    prop_assert_eq!(values.is_sensitive(name), d.sensitive);
                    let v = if d.sensitive { "<redacted>" } else { values.get(name).unwrap() };
                    shown.insert(name.as_str(), v);
                }
                prop_assert_eq!(format!("{values:?}"), format!("{shown:?}"));
            }
            (Err(e), Err((code, name))) => {
                prop_assert_eq!(e.code(), code, "{:?}", e);
                prop_assert_eq!(error_name(&e), Some(name.as_str()));
                let _ = e.to_string();
            }
            (got, expected) => {
                return Err(TestCaseError::fail(format!("bind gave {got:?}, rules say {expected:?}")));
            }
        }
    }

    /// (d) Arbitrary templates never panic; errors are TEMPLATE_INVALID and
    /// name the template; text without `$` comes back unchanged.
    #[test]
    fn interpolation_takes_arbitrary_templates(
        t in any_template(),
        item in prop::option::of(short_text()),
    ) {
        match interpolate(&t, bound(), item.as_deref()) {
            Ok(out) => {
                if !t.contains('$') {
                    prop_assert_eq!(out, t);
                }
            }
            Err(e) => {
                check_template_error(&e)?;
                let PackageError::Template { template, .. } = &e else { unreachable!() };
                prop_assert_eq!(template, &t);
            }
        }
    }

    /// (d) Templates built from known pieces expand to exactly the expected text.
    #[test]
    fn interpolation_matches_its_definition(segs in vec(seg(), 0..12), item in short_text()) {
        let (mut t, mut expected) = (String::new(), String::new());
        for s in &segs {
            match s {
                Seg::Text(x) => { t.push_str(x); expected.push_str(x); }
                Seg::Param(n, sp) => {
                    t.push_str(&if *sp { format!("${{ params.{n} }}") } else { format!("${{params.{n}}}") });
                    expected.push_str(bound().get(n).unwrap());
                }
                Seg::Item(sp) => {
                    t.push_str(if *sp { "${ item }" } else { "${item}" });
                    expected.push_str(&item);
                }
                Seg::Escape => { t.push_str("$${"); expected.push_str("${"); }
                Seg::Dollar(c) => {
                    t.push('$');
                    t.push(*c);
                    expected.push('$');
                    expected.push(*c);
                }
            }
        }
        prop_assert_eq!(interpolate(&t, bound(), Some(&item)).unwrap(), expected);
    }

    /// (d) Foreach expansion over arbitrary bounds, lists and parameters: no
    /// panic, never more than the limit, and integer ranges of the right length.
    #[test]
    fn foreach_items_take_arbitrary_bounds(
        start in bound_text(),
        end in bound_text(),
        items in vec(any_template(), 0..8),
        param in prop_oneof![select(BOUND_NAMES).prop_map(str::to_string), any::<String>()],
    ) {
        let range = foreach(ForeachOver::Range { start: start.clone(), end: end.clone() });
        match range.items(bound()) {
            Ok(got) => {
                prop_assert!(got.len() <= MAX_ITEMS);
                if let (Ok(a), Ok(b)) = (start.trim().parse::<i64>(), end.trim().parse::<i64>()) {
                    let n = if b < a { 0 } else { i128::from(b) - i128::from(a) + 1 };
                    prop_assert_eq!(got.len() as i128, n);
                    if n > 0 {
                        prop_assert_eq!(got.first().unwrap(), &a.to_string());
                        prop_assert_eq!(got.last().unwrap(), &b.to_string());
                    }
                }
            }
            Err(e) => {
                check_template_error(&e)?;
                if let (Ok(a), Ok(b)) = (start.trim().parse::<i64>(), end.trim().parse::<i64>()) {
                    prop_assert!(i128::from(b) - i128::from(a) + 1 > MAX_ITEMS as i128, "{:?}", e);
                }
            }
        }
        match foreach(ForeachOver::Items(items)).items(bound()) {
            Ok(got) => prop_assert!(got.len() <= MAX_ITEMS),
            Err(e) => check_template_error(&e)?,
        }
        let got = foreach(ForeachOver::Param(param)).items(bound()).unwrap();
        prop_assert!(got.iter().all(|i| !i.is_empty() && i.trim() == i));
    }
}

proptest! {
    #![proptest_config(config())]

    /// (e) Arbitrary text into the `when` expression parser: no panic, errors
    /// point inside the text (or just past its end), and what parses
    /// evaluates (to a value or an error with a column) without panicking.
    #[test]
    fn expressions_take_arbitrary_text(src in expr_text()) {
        let len = src.chars().count();
        match baton_package::expr::parse(&src) {
            Ok(e) => {
                let outputs = [("b".to_string(), [("k".to_string(), "7".to_string())].into())].into();
                let states = [("a".to_string(), "succeeded".to_string())].into();
                let scope = baton_package::Scope {
                    params: bound(),
                    item: None,
                    outputs: &outputs,
                    states: &states,
                };
                if let Err(err) = e.eval(&scope) {
                    prop_assert!(err.column >= 1 && err.column <= len + 1, "{:?}", err);
                }
            }
            Err(err) => {
                prop_assert!(err.column >= 1 && err.column <= len + 1, "{}: {:?}", src, err);
                prop_assert!(!err.message.is_empty());
            }
        }
    }
}

/// Found by `foreach_items_take_arbitrary_bounds`: the widest range used to
/// overflow while counting its items (a panic in debug builds; in release the
/// count wrapped to 0 and the whole i64 range was expanded).
#[test]
fn widest_range_is_refused_not_overflowed() {
    let r = foreach(ForeachOver::Range {
        start: "-9223372036854775808".into(),
        end: "9223372036854775807".into(),
    });
    let e = r.items(bound()).unwrap_err();
    assert_eq!(e.code(), "TEMPLATE_INVALID");
    let r = foreach(ForeachOver::Range {
        start: "${params.min}".into(),
        end: "${params.max}".into(),
    });
    assert_eq!(r.items(bound()).unwrap_err().code(), "TEMPLATE_INVALID");
}
