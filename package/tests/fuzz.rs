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

// ---------------------------------------------------------------- (a) bytes

const SEEDS: &[&str] = &[
    r#"name = "fanout"
description = "Process N shards"
[parameters.children]
type = "int"
default = 200
[parameters.work_s]
type = "string"
default = "0.05"
sensitive = true
[tasks.shards]
foreach = { range = { start = 1, end = "${params.children}" } }
child = "child.toml"
parallelism = 256
params = { shard = "${item}", work_s = "${params.work_s}" }
retry = { attempts = 1, lost_attempts = 3 }
"#,
    r#"name = "shard"
[parameters.shard]
type = "int"
required = true
[tasks.process]
exec = ["sh", "-c", "echo shard=$BATON_PARAM_SHARD >> $BATON_OUTPUT"]
env = { MODE = "fast", P = "${params.shard}" }
workdir = "/tmp/${params.shard}"
timeout_s = 300
[tasks.after]
noop = true
after = ["process"]
"#,
    "name='x'\n[parameters.regions]\ntype='string'\ndefault='eu, us'\n[parameters.on]\ntype='bool'\ndefault=true\n[tasks.a]\nforeach={param='regions'}\nchild='c.toml'\n[tasks.b]\nforeach={items=['a',1,true,2.5]}\nchild='c.toml'\nafter=['a']\n",
];

fn mutated_seed() -> impl Strategy<Value = Vec<u8>> {
    (
        select(SEEDS),
        vec(
            (
                any::<prop::sample::Index>(),
                vec(any::<u8>(), 0..8),
                0usize..8,
            ),
            1..6,
        ),
    )
        .prop_map(|(seed, edits)| {
            let mut bytes = seed.as_bytes().to_vec();
            for (at, insert, cut) in edits {
                let at = at.index(bytes.len() + 1);
                let end = (at + cut).min(bytes.len());
                bytes.splice(at..end, insert);
            }
            bytes
        })
}

// ------------------------------------------------------- (b) generated TOML

/// A TOML basic string holding exactly `s`.
fn q(s: &str) -> String {
    format!("\"{}\"", escape(s, false))
}

/// `s` escaped for a basic string; raw new lines kept for a multi-line one.
fn escape(s: &str, multi_line: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' if multi_line => out.push('\n'),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

/// A TOML key holding exactly `k`: bare when it can be.
fn key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        q(k)
    }
}

/// Mostly `good`, now and then `bad`: each generated package is wrong in at
/// most a place or two, so the checks after the TOML decoder are reached.
fn mostly<G, B>(good: G, bad: B) -> BoxedStrategy<String>
where
    G: Strategy<Value = String> + 'static,
    B: Strategy<Value = String> + 'static,
{
    prop_oneof![39 => good, 1 => bad].boxed()
}

/// With probability `p`, a `name = value` line.
fn field<S>(p: f64, name: &'static str, value: S) -> impl Strategy<Value = String>
where
    S: Strategy<Value = String> + 'static,
{
    prop::option::weighted(p, value).prop_map(move |v| match v {
        Some(v) => format!("{name} = {v}\n"),
        None => String::new(),
    })
}

const GOOD_NAMES: &[&str] = &["a", "b", "n", "s", "flag", "list", "x-y", "_", "A1", "t9"];
const ODD_NAMES: &[&str] = &[
    "",
    " ",
    "a b",
    "a.b",
    "é",
    "日本",
    "🦀",
    "\u{202e}rtl",
    "a\u{0}b",
    "${params.n}",
];

/// A parameter or task name: mostly valid, sometimes not, sometimes at the length limit.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => select(GOOD_NAMES).prop_map(str::to_string),
        1 => select(ODD_NAMES).prop_map(str::to_string),
        1 => (126usize..131).prop_map(|n| "a".repeat(n)),
    ]
}

const FRAGMENTS: &[&str] = &[
    "${params.n}",
    "${params.s}",
    "${params.flag}",
    "${params.list}",
    "${ params.n }",
    "${item}",
    "${ item }",
    "$${",
    "${",
    "}",
    "$",
    "$$",
    "${}",
    "${params.}",
    "${params.zz}",
    "${nope}",
    "${params.${item}}",
    "a",
    ",",
    " ",
    "\n",
    "\t",
    "'",
    "\"",
    "\\",
    "é",
    "日本",
    "🦀",
    "\u{202e}",
    "\u{0}",
    "\u{feff}",
    "\u{10ffff}",
];

/// A template-ish string: fragments of the template grammar and unicode.
fn template() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![4 => select(FRAGMENTS).prop_map(str::to_string), 1 => any::<String>()],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

/// Integers TOML reads as i64. Pairs of these are either close together or
/// more than a million apart, so a generated range never expands to a million
/// items (slow) but does reach every limit.
const INTS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "7",
    "20",
    "-1",
    "-3",
    "+5",
    "-0",
    "1_0",
    "0x10",
    "0o17",
    "0b101",
    "100",
    "101",
    "2000000",
    "-2000000",
    "1000000000000",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775806",
    "-9223372036854775808",
    "-9223372036854775807",
];
/// Integers TOML refuses (or not integers at all).
const BAD_INTS: &[&str] = &[
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "99999999999999999999999999999999",
    "0xffffffffffffffff",
    "007",
    "1__0",
    "0x",
    "+0x1",
    "1e3",
];
const FLOATS: &[&str] = &[
    "1.5", "nan", "-inf", "inf", "1e400", "-1e-400", "0.0", "6.02e23",
];
const BOOLS: &[&str] = &["true", "false", "True", "yes"];
const DATES: &[&str] = &[
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "1979-05-27",
    "1979-05-27T07:32:00",
];
const OPENERS: &[&str] = &["[", "{a="];
/// The three real types first.
const TYPES: &[&str] = &[
    "string", "int", "bool", "float", "list", "secret", "", "Int", "string ",
];
const RANGE_TEMPLATES: &[&str] = &[
    "${params.n}",
    "${params.s}",
    "${params.flag}",
    "${item}",
    " 3 ",
    "x",
];

fn int_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(INTS).prop_map(str::to_string),
        1 => any::<i64>().prop_map(|i| i.to_string()),
    ]
}

fn bad_int() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(BAD_INTS).prop_map(str::to_string),
        1 => any::<u64>().prop_map(|i| i.to_string()),
    ]
}

fn bool_token() -> impl Strategy<Value = String> {
    select(&BOOLS[..2]).prop_map(str::to_string)
}

/// A string as TOML: escaped, literal, multi-line, or raw (maybe invalid).
fn str_token() -> impl Strategy<Value = String> {
    template().prop_flat_map(|s| {
        let literal = if s.contains(['\'', '\n', '\r']) || s.chars().any(char::is_control) {
            q(&s)
        } else {
            format!("'{s}'")
        };
        let multi = format!("\"\"\"{}\"\"\"", escape(&s, true));
        prop_oneof![
            60 => Just(q(&s)),
            20 => Just(literal),
            10 => Just(multi),
            1 => Just(format!("\"{s}\"")),
        ]
    })
}

/// Any TOML value, nested a little.
fn value_token() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        4 => str_token(),
        3 => int_token(),
        1 => bad_int(),
        1 => select(FLOATS).prop_map(str::to_string),
        1 => select(BOOLS).prop_map(str::to_string),
        1 => select(DATES).prop_map(str::to_string),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            vec((name(), inner), 0..4).prop_map(|kv| {
                let kv: Vec<String> = kv
                    .iter()
                    .map(|(k, v)| format!("{} = {v}", key(k)))
                    .collect();
                format!("{{ {} }}", kv.join(", "))
            }),
        ]
    })
}

/// Arrays or inline tables nested up to 300 deep (TOML stops at 80).
fn deep() -> impl Strategy<Value = String> {
    (0usize..300, select(OPENERS), value_token()).prop_map(|(depth, open, leaf)| {
        let close = if open == "[" { "]" } else { "}" };
        format!("{}{leaf}{}", open.repeat(depth), close.repeat(depth))
    })
}

fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![20 => value_token(), 1 => deep()]
}

/// An inline table of `name = value`.
fn inline_table<S>(value: S) -> impl Strategy<Value = String>
where
    S: Strategy<Value = String> + 'static,
{
    btree_map(name(), value, 0..4).prop_map(|kv| {
        let kv: Vec<String> = kv
            .iter()
            .map(|(k, v)| format!("{} = {v}", key(k)))
            .collect();
        format!("{{ {} }}", kv.join(", "))
    })
}

fn default_for(ty: &'static str) -> BoxedStrategy<String> {
    let good = match ty {
        "int" => int_token().boxed(),
        "bool" => bool_token().boxed(),
        "float" => select(FLOATS).prop_map(str::to_string).boxed(),
        "list" => vec(str_token(), 0..4)
            .prop_map(|v| format!("[{}]", v.join(", ")))
            .boxed(),
        _ => str_token().boxed(),
    };
    mostly(
        good,
        prop_oneof![
            int_token(),
            bad_int(),
            str_token(),
            bool_token(),
            any_value()
        ],
    )
}

/// The body of a `[parameters.NAME]` table.
fn param_body() -> impl Strategy<Value = String> {
    let ty = prop_oneof![18 => select(&TYPES[..6]), 2 => select(&TYPES[6..])];
    ty.prop_flat_map(|ty| {
        (
            mostly(Just(q(ty)), any_value()),
            field(0.6, "default", default_for(ty)),
            field(0.3, "required", mostly(bool_token(), any_value())),
            field(0.3, "sensitive", mostly(bool_token(), any_value())),
            field(0.2, "description", str_token()),
            field(0.02, "typo", any_value()),
        )
    })
    .prop_map(|(ty, d, r, s, desc, typo)| format!("type = {ty}\n{d}{r}{s}{desc}{typo}"))
}

fn range_bound() -> BoxedStrategy<String> {
    mostly(
        prop_oneof![
            2 => int_token(),
            1 => select(RANGE_TEMPLATES).prop_map(q),
        ],
        prop_oneof![bad_int(), any_value()],
    )
}

fn foreach_value() -> impl Strategy<Value = String> {
    let scalar = prop_oneof![
        4 => str_token(),
        2 => int_token(),
        1 => bool_token(),
        1 => select(FLOATS).prop_map(str::to_string),
    ];
    prop_oneof![
        8 => (range_bound(), range_bound())
            .prop_map(|(s, e)| format!("{{ range = {{ start = {s}, end = {e} }} }}")),
        5 => vec(mostly(scalar, any_value()), 0..6)
            .prop_map(|v| format!("{{ items = [{}] }}", v.join(", "))),
        4 => name().prop_map(|n| format!("{{ param = {} }}", q(&n))),
        1 => (range_bound(), name())
            .prop_map(|(s, p)| format!("{{ range = {{ start = {s}, end = {s} }}, param = {} }}", q(&p))),
        1 => Just("{}".to_string()),
        1 => any_value(),
    ]
}

fn exec_fields() -> impl Strategy<Value = Vec<String>> {
    (
        mostly(
            vec(str_token(), 1..4).prop_map(|argv| format!("[{}]", argv.join(", "))),
            prop_oneof![
                Just("[]".to_string()),
                Just("[\" \"]".to_string()),
                any_value()
            ],
        ),
        field(0.3, "env", mostly(inline_table(str_token()), any_value())),
        field(0.3, "workdir", mostly(str_token(), any_value())),
    )
        .prop_map(|(argv, env, workdir)| vec![format!("exec = {argv}\n"), env, workdir])
}

fn foreach_fields() -> impl Strategy<Value = Vec<String>> {
    let parallelism = mostly(
        prop_oneof![
            select(&["1", "2", "64", "256", "100000"][..]).prop_map(str::to_string),
            (1u32..=100_000).prop_map(|n| n.to_string()),
        ],
        select(&["0", "100001", "-1", "4294967296", "1.5", "'8'"][..]).prop_map(str::to_string),
    );
    let attempts = mostly(
        (1u32..=100).prop_map(|n| n.to_string()),
        select(&["0", "101", "-1", "4294967296"][..]).prop_map(str::to_string),
    );
    let lost = mostly(
        (0u32..=100).prop_map(|n| n.to_string()),
        select(&["101", "-1", "4294967296"][..]).prop_map(str::to_string),
    );
    let retry = (
        prop::option::weighted(0.8, attempts),
        prop::option::weighted(0.8, lost),
    )
        .prop_map(|(a, l)| {
            let kv: Vec<String> = [("attempts", a), ("lost_attempts", l)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k} = {v}")))
                .collect();
            format!("{{ {} }}", kv.join(", "))
        });
    (
        foreach_value(),
        mostly(
            str_token().prop_map(|s| format!("child = {s}\n")),
            Just(String::new()),
        ),
        field(0.4, "parallelism", parallelism),
        field(
            0.5,
            "params",
            mostly(inline_table(mostly(str_token(), any_value())), any_value()),
        ),
        field(0.3, "retry", mostly(retry, any_value())),
    )
        .prop_map(|(f, child, par, params, retry)| {
            vec![format!("foreach = {f}\n"), child, par, params, retry]
        })
}

fn script_fields() -> impl Strategy<Value = Vec<String>> {
    (
        mostly(str_token(), any_value()),
        field(0.3, "env", mostly(inline_table(str_token()), any_value())),
        field(0.2, "workdir", mostly(str_token(), any_value())),
        field(0.2, "retry", select(RETRIES).prop_map(str::to_string)),
    )
        .prop_map(|(sc, env, wd, r)| vec![format!("script = {sc}\n"), env, wd, r])
}

fn child_fields() -> impl Strategy<Value = Vec<String>> {
    (
        prop_oneof![
            3 => str_token(),
            1 => select(&["'catalog:/etl/load'", "'catalog:x'", "'catalog:/'"][..])
                .prop_map(str::to_string),
        ],
        field(
            0.4,
            "params",
            mostly(inline_table(str_token()), any_value()),
        ),
        field(
            0.2,
            "require",
            mostly(inline_table(str_token()), any_value()),
        ),
        field(0.2, "local", mostly(bool_token(), any_value())),
        field(0.2, "retry", select(RETRIES).prop_map(str::to_string)),
    )
        .prop_map(|(c, p, req, l, r)| vec![format!("child = {c}\n"), p, req, l, r])
}

fn group_fields() -> impl Strategy<Value = Vec<String>> {
    mostly(
        vec(name(), 0..3).prop_map(|v| {
            let v: Vec<String> = v.iter().map(|n| q(n)).collect();
            format!("[{}]", v.join(", "))
        }),
        any_value(),
    )
    .prop_map(|g| vec![format!("group = {g}\n")])
}

const RETRIES: &[&str] = &[
    "{ attempts = 3 }",
    "{ attempts = 2, backoff_s = 5, backoff_max_s = 60, jitter = true }",
    "{ attempts = 0 }",
    "{ backoff_s = 100, backoff_max_s = 1 }",
    "{ backoff_s = 99999999 }",
    "{ attempts = 2, lost_attempts = 1 }",
];

/// Expression pieces: valid tokens, references to generated names, junk.
const EXPR_PIECES: &[&str] = &[
    "true",
    "false",
    "1",
    "-2",
    "3.5",
    "'x'",
    "\"y\"",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "&&",
    "||",
    "!",
    "(",
    ")",
    "${params.n}",
    "${params.a}",
    "${params.flag}",
    "${tasks.a.state}",
    "${tasks.b.outputs.k}",
    "${tasks.zz.state}",
    "${item}",
    "${nope}",
    "${params.",
    "'",
    "\\",
    "#",
    "é",
    "99999999999999999999",
    "1.2.3",
];

fn expr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => vec(select(EXPR_PIECES), 0..12).prop_map(|v| v.join(" ")),
        2 => vec(select(EXPR_PIECES), 0..12).prop_map(|v| v.concat()),
        1 => any::<String>(),
        1 => (0usize..100, select(&["(", "!", "(!"][..])).prop_map(|(n, f)| f.repeat(n) + "true"),
    ]
}

fn after_value() -> impl Strategy<Value = String> {
    let one = prop_oneof![
        3 => name().prop_map(|n| q(&n)),
        2 => (name(), select(&["success", "failure", "completion", "never"][..]))
            .prop_map(|(n, on)| format!("{{ task = {}, on = {} }}", q(&n), q(on))),
        1 => name().prop_map(|n| format!("{{ task = {}, typo = 1 }}", q(&n))),
    ];
    mostly(
        vec(one, 0..3).prop_map(|v| format!("[{}]", v.join(", "))),
        any_value(),
    )
}

/// A field of another kind of task (or none): each kind refuses the others'.
fn stray_field() -> impl Strategy<Value = String> {
    prop_oneof![
        150 => Just(String::new()),
        1 => str_token().prop_map(|s| format!("child = {s}\n")),
        1 => Just("parallelism = 4\n".to_string()),
        1 => Just("params = { a = '1' }\n".to_string()),
        1 => Just("retry = { attempts = 2 }\n".to_string()),
        1 => Just("env = { A = 'b' }\n".to_string()),
        1 => str_token().prop_map(|s| format!("workdir = {s}\n")),
        1 => Just("exec = ['true']\n".to_string()),
        1 => Just("noop = true\n".to_string()),
        1 => Just("foreach = { items = [1] }\n".to_string()),
        1 => any_value().prop_map(|v| format!("typo = {v}\n")),
    ]
}

/// The fields of one task.
fn task_fields() -> impl Strategy<Value = Vec<String>> {
    let kind = prop_oneof![
        8 => exec_fields(),
        8 => foreach_fields(),
        4 => script_fields(),
        3 => child_fields(),
        2 => group_fields(),
        2 => mostly(Just("true".to_string()), prop_oneof![Just("false".to_string()), any_value()])
            .prop_map(|b| vec![format!("noop = {b}\n")]),
        1 => Just(Vec::new()),
    ];
    let after = after_value();
    let timeout = mostly(
        prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            select(&["0", "9223372036854775807"][..]).prop_map(str::to_string),
        ],
        prop_oneof![bad_int(), Just("-1".to_string()), any_value()],
    );
    (
        kind,
        field(0.4, "after", after),
        field(0.2, "timeout_s", timeout),
        field(0.1, "description", str_token()),
        stray_field(),
        field(
            0.2,
            "when",
            mostly(expr_text().prop_map(|e| q(&e)), any_value()),
        ),
        field(
            0.1,
            "continue_on_failure",
            mostly(bool_token(), any_value()),
        ),
    )
        .prop_map(|(mut fields, after, timeout, desc, stray, when, cof)| {
            fields.extend([after, timeout, desc, stray, when, cof]);
            fields.retain(|f| !f.is_empty());
            fields
        })
}

/// A whole package: root keys, `[parameters.*]`, `[tasks.*]` (some written as
/// dotted keys under `[tasks]`), and now and then a stray table.
fn package_text() -> impl Strategy<Value = String> {
    (
        mostly(
            prop_oneof![4 => select(GOOD_NAMES).prop_map(q), 1 => str_token()]
                .prop_map(|s| format!("name = {s}\n")),
            prop_oneof![
                any_value().prop_map(|v| format!("name = {v}\n")),
                Just(String::new())
            ],
        ),
        field(0.3, "description", str_token()),
        field(0.05, "run_as", str_token()),
        btree_map(name(), param_body(), 0..4),
        btree_map(name(), (task_fields(), prop::bool::weighted(0.2)), 0..5),
        prop_oneof![
            30 => Just(String::new()),
            1 => any_value().prop_map(|v| format!("[extra]\nx = {v}\n")),
            1 => deep().prop_map(|v| format!("[parameters.d]\ntype = 'int'\ndefault = {v}\n")),
            1 => Just("[tasks.a]\nnoop = true\n".to_string()),
            1 => Just("[[tasks.b]]\nnoop = true\n".to_string()),
        ],
    )
        .prop_map(|(name, desc, run_as, params, tasks, tail)| {
            let mut text = format!("{name}{desc}{run_as}");
            for (p, body) in &params {
                text.push_str(&format!("[parameters.{}]\n{body}", key(p)));
            }
            let mut dotted = String::new();
            for (t, (fields, as_dotted)) in &tasks {
                if *as_dotted {
                    for f in fields {
                        dotted.push_str(&format!("{}.{f}", key(t)));
                    }
                } else {
                    text.push_str(&format!("[tasks.{}]\n{}", key(t), fields.concat()));
                }
            }
            if !dotted.is_empty() {
                text.push_str(&format!("[tasks]\n{dotted}"));
            }
            text.push_str(&tail);
            text
        })
}

// ------------------------------------------------------- (c) overrides

const PARAM_TYPES: &[ParamType] = &[
    ParamType::String,
    ParamType::Int,
    ParamType::Bool,
    ParamType::Float,
    ParamType::List,
    ParamType::Secret,
];
const REPEATED: &[&str] = &["9", "a", "é", "\u{fffd}", " "];
const OVERRIDE_VALUES: &[&str] = &[
    "42",
    " 42 ",
    "+5",
    "-0",
    "0x10",
    "1e3",
    "1_000",
    "",
    " ",
    "4\u{0}2",
    "１２",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "true",
    "false",
    "yes",
    "no",
    "1",
    "0",
    " true\n",
    "TRUE",
    "True",
    "on",
    "off",
    "\u{fffd}",
    "a, b,,c",
    "${params.n}",
    "$${item}",
];
const BOUND_TEMPLATES: &[&str] = &[
    "${params.n}",
    "${params.max}",
    "${params.min}",
    "${params.s}",
    "${params.empty}",
    "${item}",
    " 3 ",
    " -9223372036854775808",
    "",
    "1.0",
    "${params.n}0",
];

/// A parameter the generated package declares (always valid).
#[derive(Debug, Clone)]
struct Decl {
    ty: ParamType,
    default: Option<String>,
    required: bool,
    sensitive: bool,
}

fn decl() -> impl Strategy<Value = (Decl, String)> {
    let ty = select(PARAM_TYPES);
    (
        ty,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<i64>(),
        any::<bool>(),
        ".*",
    )
        .prop_map(|(ty, has_default, required, sensitive, i, b, s)| {
            let (default, token) = match ty {
                ParamType::String | ParamType::Secret => (s.clone(), q(&s)),
                ParamType::Int => (i.to_string(), i.to_string()),
                ParamType::Bool => (b.to_string(), b.to_string()),
                ParamType::Float => {
                    let f = (i % 100_000) as f64 + 0.25;
                    (f.to_string(), format!("{f:?}"))
                }
                ParamType::List => {
                    let items = vec!["a,b".to_string(), s.clone()];
                    (
                        serde_json::to_string(&items).unwrap(),
                        format!("['a,b', {}]", q(&s)),
                    )
                }
            };
            let d = Decl {
                ty,
                default: has_default.then_some(default),
                required,
                sensitive: sensitive || ty == ParamType::Secret,
            };
            let text = format!(
                "type = {}\n{}required = {required}\nsensitive = {sensitive}\n",
                q(ty.as_str()),
                if has_default {
                    format!("default = {token}\n")
                } else {
                    String::new()
                },
            );
            (d, text)
        })
}

/// Text of a package declaring `decls`, and the package.
fn declared() -> impl Strategy<Value = (BTreeMap<String, Decl>, String)> {
    btree_map("[a-zA-Z0-9_-]{1,12}", decl(), 0..6).prop_map(|decls| {
        let mut text = "name = \"p\"\n".to_string();
        for (name, (_, body)) in &decls {
            text.push_str(&format!("[parameters.{name}]\n{body}"));
        }
        let decls = decls.into_iter().map(|(k, (d, _))| (k, d)).collect();
        (decls, text)
    })
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

fn override_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(OVERRIDE_VALUES).prop_map(str::to_string),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        2 => any::<String>(),
        2 => vec(any::<u8>(), 0..256).prop_map(lossy),
        1 => (0usize..100_000, select(REPEATED))
            .prop_map(|(n, c)| c.repeat(n)),
    ]
}

fn override_name(declared: Vec<String>) -> BoxedStrategy<String> {
    let other = prop_oneof![
        2 => "[a-zA-Z0-9_-]{1,12}",
        1 => any::<String>(),
        1 => vec(any::<u8>(), 0..64).prop_map(lossy),
        1 => (0usize..10_000).prop_map(|n| "p".repeat(n)),
    ];
    if declared.is_empty() {
        other.boxed()
    } else {
        prop_oneof![3 => select(declared), 1 => other].boxed()
    }
}

fn package_and_overrides()
-> impl Strategy<Value = (BTreeMap<String, Decl>, String, BTreeMap<String, String>)> {
    declared().prop_flat_map(|(decls, text)| {
        let names: Vec<String> = decls.keys().cloned().collect();
        let overrides = btree_map(override_name(names), override_value(), 0..6);
        (Just(decls), Just(text), overrides)
    })
}

/// The binding rules, written out: the canonical value or the error code and name.
fn model_value(ty: ParamType, v: &str) -> Option<String> {
    match ty {
        ParamType::String | ParamType::Secret => Some(v.to_string()),
        ParamType::Int => v.trim().parse::<i64>().ok().map(|i| i.to_string()),
        ParamType::Float => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(|f| if f == 0.0 { 0.0f64 } else { f }.to_string()),
        ParamType::List => {
            let items: Vec<String> = if v.trim_start().starts_with('[') {
                serde_json::from_str(v).ok()?
            } else {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            };
            serde_json::to_string(&items).ok()
        }
        ParamType::Bool => match v.trim() {
            "true" | "1" | "yes" => Some("true".into()),
            "false" | "0" | "no" => Some("false".into()),
            _ => None,
        },
    }
}

fn model_bind(
    decls: &BTreeMap<String, Decl>,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, (&'static str, String)> {
    if let Some(name) = overrides.keys().find(|n| !decls.contains_key(*n)) {
        return Err(("PARAM_UNKNOWN", name.clone()));
    }
    let mut out = BTreeMap::new();
    for (name, d) in decls {
        let v = match (overrides.get(name), &d.default) {
            (Some(v), _) => model_value(d.ty, v).ok_or_else(|| ("PARAM_INVALID", name.clone()))?,
            (None, Some(def)) => def.clone(),
            (None, None) if d.required => return Err(("PARAM_REQUIRED", name.clone())),
            (None, None) if d.ty == ParamType::List => "[]".to_string(),
            (None, None) => String::new(),
        };
        out.insert(name.clone(), v);
    }
    Ok(out)
}

fn error_name(e: &PackageError) -> Option<&str> {
    match e {
        PackageError::UnknownParameter { name, .. }
        | PackageError::InvalidParameter { name, .. }
        | PackageError::MissingParameter { name } => Some(name),
        _ => None,
    }
}

// ------------------------------------------------------- (d) templates

/// Parameters every template is expanded against.
fn bound() -> &'static ParamValues {
    static VALUES: OnceLock<ParamValues> = OnceLock::new();
    VALUES.get_or_init(|| {
        let p = Package::parse(
            "p.toml",
            r#"name = "p"
[parameters.n]
type = "int"
default = 3
[parameters.s]
type = "string"
default = "a, b,,c ${params.n} $"
[parameters.flag]
type = "bool"
default = true
[parameters.list]
type = "string"
default = "x,y"
[parameters.empty]
type = "string"
[parameters.max]
type = "int"
default = 9223372036854775807
[parameters.min]
type = "int"
default = -9223372036854775808
[parameters.secret]
type = "string"
default = "s3cret"
sensitive = true
"#,
        )
        .unwrap();
        p.bind(&BTreeMap::new()).unwrap()
    })
}

const BOUND_NAMES: &[&str] = &["n", "s", "flag", "list", "empty", "max", "min", "secret"];

/// One piece of a template whose expansion is known in advance.
#[derive(Debug, Clone)]
enum Seg {
    /// Text without `$`.
    Text(String),
    /// `${params.NAME}` of a bound parameter, with optional spaces inside.
    Param(&'static str, bool),
    /// `${item}`.
    Item(bool),
    /// `$${`, a literal `${`.
    Escape,
    /// A lone `$` followed by one character that is neither `$` nor `{`.
    Dollar(char),
}

fn seg() -> impl Strategy<Value = Seg> {
    prop_oneof![
        3 => "[^$]{0,12}".prop_map(Seg::Text),
        2 => (select(BOUND_NAMES), any::<bool>()).prop_map(|(n, sp)| Seg::Param(n, sp)),
        1 => any::<bool>().prop_map(Seg::Item),
        1 => Just(Seg::Escape),
        1 => any::<char>()
            .prop_filter("not $ or {", |c| *c != '$' && *c != '{')
            .prop_map(Seg::Dollar),
    ]
}

/// An item or a parameter value: short, so that a template repeating
/// `${item}` thousands of times does not turn each case into a copy of
/// gigabytes (the output is as long as the template times the item).
fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => template(),
        2 => any::<String>(),
        1 => vec(any::<u8>(), 0..64).prop_map(lossy),
    ]
}

fn any_template() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => template(),
        2 => any::<String>(),
        1 => "\\PC{0,200}",
        1 => vec(any::<u8>(), 0..512).prop_map(lossy),
        1 => (0usize..20_000, select(FRAGMENTS)).prop_map(|(n, f)| f.repeat(n)),
    ]
}

/// A range bound: an integer from the pool (as text, with spacing), or a template.
fn bound_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(INTS).prop_map(str::to_string),
        1 => select(BAD_INTS).prop_map(str::to_string),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        1 => select(BOUND_TEMPLATES).prop_map(str::to_string),
        1 => any_template(),
    ]
}

fn foreach(over: ForeachOver) -> ForeachTask {
    ForeachTask {
        over,
        child: "c.toml".into(),
        parallelism: 1,
        params: BTreeMap::new(),
        retry: RetryPolicy::default(),
        max_failures: Default::default(),
        require: BTreeMap::new(),
    }
}

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
