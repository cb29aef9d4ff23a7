//! Generators of package TOML from the language's grammar (target b).

#![allow(clippy::wildcard_imports)]

use super::*;

// ------------------------------------------------------- (b) generated TOML

/// A TOML basic string holding exactly `s`.
pub(crate) fn q(s: &str) -> String {
    format!("\"{}\"", escape(s, false))
}

/// `s` escaped for a basic string; raw new lines kept for a multi-line one.
pub(crate) fn escape(s: &str, multi_line: bool) -> String {
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
pub(crate) fn key(k: &str) -> String {
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
pub(crate) fn mostly<G, B>(good: G, bad: B) -> BoxedStrategy<String>
where
    G: Strategy<Value = String> + 'static,
    B: Strategy<Value = String> + 'static,
{
    prop_oneof![39 => good, 1 => bad].boxed()
}

/// With probability `p`, a `name = value` line.
pub(crate) fn field<S>(p: f64, name: &'static str, value: S) -> impl Strategy<Value = String>
where
    S: Strategy<Value = String> + 'static,
{
    prop::option::weighted(p, value).prop_map(move |v| match v {
        Some(v) => format!("{name} = {v}\n"),
        None => String::new(),
    })
}

pub(crate) const GOOD_NAMES: &[&str] =
    &["a", "b", "n", "s", "flag", "list", "x-y", "_", "A1", "t9"];
pub(crate) const ODD_NAMES: &[&str] = &[
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
pub(crate) fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        40 => select(GOOD_NAMES).prop_map(str::to_string),
        1 => select(ODD_NAMES).prop_map(str::to_string),
        1 => (126usize..131).prop_map(|n| "a".repeat(n)),
    ]
}

pub(crate) const FRAGMENTS: &[&str] = &[
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
pub(crate) fn template() -> impl Strategy<Value = String> {
    vec(
        prop_oneof![4 => select(FRAGMENTS).prop_map(str::to_string), 1 => any::<String>()],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

/// Integers TOML reads as i64. Pairs of these are either close together or
/// more than a million apart, so a generated range never expands to a million
/// items (slow) but does reach every limit.
pub(crate) const INTS: &[&str] = &[
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
pub(crate) const BAD_INTS: &[&str] = &[
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
pub(crate) const FLOATS: &[&str] = &[
    "1.5", "nan", "-inf", "inf", "1e400", "-1e-400", "0.0", "6.02e23",
];
pub(crate) const BOOLS: &[&str] = &["true", "false", "True", "yes"];
pub(crate) const DATES: &[&str] = &[
    "1979-05-27T07:32:00Z",
    "07:32:00",
    "1979-05-27",
    "1979-05-27T07:32:00",
];
pub(crate) const OPENERS: &[&str] = &["[", "{a="];
/// The three real types first.
pub(crate) const TYPES: &[&str] = &[
    "string", "int", "bool", "float", "list", "secret", "", "Int", "string ",
];
pub(crate) const RANGE_TEMPLATES: &[&str] = &[
    "${params.n}",
    "${params.s}",
    "${params.flag}",
    "${item}",
    " 3 ",
    "x",
];

pub(crate) fn int_token() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(INTS).prop_map(str::to_string),
        1 => any::<i64>().prop_map(|i| i.to_string()),
    ]
}

pub(crate) fn bad_int() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(BAD_INTS).prop_map(str::to_string),
        1 => any::<u64>().prop_map(|i| i.to_string()),
    ]
}

pub(crate) fn bool_token() -> impl Strategy<Value = String> {
    select(&BOOLS[..2]).prop_map(str::to_string)
}

/// A string as TOML: escaped, literal, multi-line, or raw (maybe invalid).
pub(crate) fn str_token() -> impl Strategy<Value = String> {
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
pub(crate) fn value_token() -> impl Strategy<Value = String> {
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
pub(crate) fn deep() -> impl Strategy<Value = String> {
    (0usize..300, select(OPENERS), value_token()).prop_map(|(depth, open, leaf)| {
        let close = if open == "[" { "]" } else { "}" };
        format!("{}{leaf}{}", open.repeat(depth), close.repeat(depth))
    })
}

pub(crate) fn any_value() -> impl Strategy<Value = String> {
    prop_oneof![20 => value_token(), 1 => deep()]
}

/// An inline table of `name = value`.
pub(crate) fn inline_table<S>(value: S) -> impl Strategy<Value = String>
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

pub(crate) fn default_for(ty: &'static str) -> BoxedStrategy<String> {
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
pub(crate) fn param_body() -> impl Strategy<Value = String> {
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

pub(crate) fn range_bound() -> BoxedStrategy<String> {
    mostly(
        prop_oneof![
            2 => int_token(),
            1 => select(RANGE_TEMPLATES).prop_map(q),
        ],
        prop_oneof![bad_int(), any_value()],
    )
}

pub(crate) fn foreach_value() -> impl Strategy<Value = String> {
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

pub(crate) fn exec_fields() -> impl Strategy<Value = Vec<String>> {
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

pub(crate) fn foreach_fields() -> impl Strategy<Value = Vec<String>> {
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

pub(crate) fn script_fields() -> impl Strategy<Value = Vec<String>> {
    (
        mostly(str_token(), any_value()),
        field(0.3, "env", mostly(inline_table(str_token()), any_value())),
        field(0.2, "workdir", mostly(str_token(), any_value())),
        field(0.2, "retry", select(RETRIES).prop_map(str::to_string)),
    )
        .prop_map(|(sc, env, wd, r)| vec![format!("script = {sc}\n"), env, wd, r])
}

pub(crate) fn child_fields() -> impl Strategy<Value = Vec<String>> {
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

pub(crate) fn group_fields() -> impl Strategy<Value = Vec<String>> {
    mostly(
        vec(name(), 0..3).prop_map(|v| {
            let v: Vec<String> = v.iter().map(|n| q(n)).collect();
            format!("[{}]", v.join(", "))
        }),
        any_value(),
    )
    .prop_map(|g| vec![format!("group = {g}\n")])
}

pub(crate) const RETRIES: &[&str] = &[
    "{ attempts = 3 }",
    "{ attempts = 2, backoff_s = 5, backoff_max_s = 60, jitter = true }",
    "{ attempts = 0 }",
    "{ backoff_s = 100, backoff_max_s = 1 }",
    "{ backoff_s = 99999999 }",
    "{ attempts = 2, lost_attempts = 1 }",
];

/// Expression pieces: valid tokens, references to generated names, junk.
pub(crate) const EXPR_PIECES: &[&str] = &[
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

pub(crate) fn expr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => vec(select(EXPR_PIECES), 0..12).prop_map(|v| v.join(" ")),
        2 => vec(select(EXPR_PIECES), 0..12).prop_map(|v| v.concat()),
        1 => any::<String>(),
        1 => (0usize..100, select(&["(", "!", "(!"][..])).prop_map(|(n, f)| f.repeat(n) + "true"),
    ]
}

pub(crate) fn after_value() -> impl Strategy<Value = String> {
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
pub(crate) fn stray_field() -> impl Strategy<Value = String> {
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
pub(crate) fn task_fields() -> impl Strategy<Value = Vec<String>> {
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
pub(crate) fn package_text() -> impl Strategy<Value = String> {
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
