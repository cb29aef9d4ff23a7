//! Generators of raw bytes (a), parameter overrides (c) and templates (d).

#![allow(clippy::wildcard_imports)]

use super::*;

// ---------------------------------------------------------------- (a) bytes

pub(crate) const SEEDS: &[&str] = &[
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

pub(crate) fn mutated_seed() -> impl Strategy<Value = Vec<u8>> {
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

// ------------------------------------------------------- (c) overrides

pub(crate) const PARAM_TYPES: &[ParamType] = &[
    ParamType::String,
    ParamType::Int,
    ParamType::Bool,
    ParamType::Float,
    ParamType::List,
    ParamType::Secret,
];
pub(crate) const REPEATED: &[&str] = &["9", "a", "é", "\u{fffd}", " "];
pub(crate) const OVERRIDE_VALUES: &[&str] = &[
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
pub(crate) const BOUND_TEMPLATES: &[&str] = &[
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
pub(crate) struct Decl {
    pub(crate) ty: ParamType,
    pub(crate) default: Option<String>,
    pub(crate) required: bool,
    pub(crate) sensitive: bool,
}

pub(crate) fn decl() -> impl Strategy<Value = (Decl, String)> {
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
pub(crate) fn declared() -> impl Strategy<Value = (BTreeMap<String, Decl>, String)> {
    btree_map("[a-zA-Z0-9_-]{1,12}", decl(), 0..6).prop_map(|decls| {
        let mut text = "name = \"p\"\n".to_string();
        for (name, (_, body)) in &decls {
            text.push_str(&format!("[parameters.{name}]\n{body}"));
        }
        let decls = decls.into_iter().map(|(k, (d, _))| (k, d)).collect();
        (decls, text)
    })
}

pub(crate) fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

pub(crate) fn override_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(OVERRIDE_VALUES).prop_map(str::to_string),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        2 => any::<String>(),
        2 => vec(any::<u8>(), 0..256).prop_map(lossy),
        1 => (0usize..100_000, select(REPEATED))
            .prop_map(|(n, c)| c.repeat(n)),
    ]
}

pub(crate) fn override_name(declared: Vec<String>) -> BoxedStrategy<String> {
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

pub(crate) fn package_and_overrides()
-> impl Strategy<Value = (BTreeMap<String, Decl>, String, BTreeMap<String, String>)> {
    declared().prop_flat_map(|(decls, text)| {
        let names: Vec<String> = decls.keys().cloned().collect();
        let overrides = btree_map(override_name(names), override_value(), 0..6);
        (Just(decls), Just(text), overrides)
    })
}

/// The binding rules, written out: the canonical value or the error code and name.
pub(crate) fn model_value(ty: ParamType, v: &str) -> Option<String> {
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

pub(crate) fn model_bind(
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

pub(crate) fn error_name(e: &PackageError) -> Option<&str> {
    match e {
        PackageError::UnknownParameter { name, .. }
        | PackageError::InvalidParameter { name, .. }
        | PackageError::MissingParameter { name } => Some(name),
        _ => None,
    }
}

// ------------------------------------------------------- (d) templates

/// Parameters every template is expanded against.
pub(crate) fn bound() -> &'static ParamValues {
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

pub(crate) const BOUND_NAMES: &[&str] =
    &["n", "s", "flag", "list", "empty", "max", "min", "secret"];

/// One piece of a template whose expansion is known in advance.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
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

pub(crate) fn seg() -> impl Strategy<Value = Seg> {
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
pub(crate) fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => template(),
        2 => any::<String>(),
        1 => vec(any::<u8>(), 0..64).prop_map(lossy),
    ]
}

pub(crate) fn any_template() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => template(),
        2 => any::<String>(),
        1 => "\\PC{0,200}",
        1 => vec(any::<u8>(), 0..512).prop_map(lossy),
        1 => (0usize..20_000, select(FRAGMENTS)).prop_map(|(n, f)| f.repeat(n)),
    ]
}

/// A range bound: an integer from the pool (as text, with spacing), or a template.
pub(crate) fn bound_text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(INTS).prop_map(str::to_string),
        1 => select(BAD_INTS).prop_map(str::to_string),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        1 => select(BOUND_TEMPLATES).prop_map(str::to_string),
        1 => any_template(),
    ]
}

pub(crate) fn foreach(over: ForeachOver) -> ForeachTask {
    ForeachTask {
        over,
        child: "c.toml".into(),
        parallelism: 1,
        params: BTreeMap::new(),
        retry: RetryPolicy::default(),
        max_failures: Default::default(),
        require: BTreeMap::new(),
        slots: 0,
    }
}
