//! Model → TOML → model: packages built with the builder from random parts
//! are written with `to_toml` and parsed back to an equal package.

use baton_package::{
    ChildrenOnCancel, ForeachOver, MaxFailures, On, Package, PackageBuilder, ParamBuilder,
    ParamType, RetryPolicy, TaskBuilder,
};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z ]{0,8}",
        1 => any::<String>().prop_map(|s| s.replace('$', "")),
        1 => Just("quote ' \" and \\ back\nslash".to_string()),
    ]
}

fn on() -> impl Strategy<Value = On> {
    prop_oneof![Just(On::Success), Just(On::Failure), Just(On::Completion)]
}

fn retry() -> impl Strategy<Value = RetryPolicy> {
    (1u32..5, 0u32..4, 0u64..100, any::<bool>()).prop_map(|(a, l, b, j)| RetryPolicy {
        attempts: a,
        lost_attempts: l,
        backoff_s: b,
        backoff_max_s: b * 4,
        jitter: j,
    })
}

/// One task `t{i}` of a random kind, after some earlier tasks.
fn task(i: usize) -> impl Strategy<Value = TaskBuilder> {
    let name = format!("t{i}");
    (
        0u8..5,
        text(),
        proptest::collection::vec((0..i.max(1), on()), 0..3),
        any::<bool>(),
        prop::option::of(retry()),
        prop::option::of(0u64..100_000),
        any::<bool>(),
    )
        .prop_map(move |(kind, txt, after, cof, retry, timeout, flag)| {
            let mut t = match kind {
                0 => TaskBuilder::exec(&name, ["prog", txt.as_str()]).env("K", &txt),
                1 => TaskBuilder::script(&name, format!("echo {txt:?}")).workdir("/tmp"),
                2 => {
                    let t = TaskBuilder::child(&name, "catalog:/etl/load").param("p", &txt);
                    if flag {
                        t.local()
                    } else {
                        t.require("zone", "eu")
                    }
                }
                3 => TaskBuilder::foreach(
                    &name,
                    if flag {
                        ForeachOver::Items(vec![txt.clone(), "b".into()])
                    } else {
                        ForeachOver::Range {
                            start: "1".into(),
                            end: "${params.n}".into(),
                        }
                    },
                    "child.toml",
                )
                .param("x", "${item}")
                .max_failures(if flag {
                    MaxFailures::All
                } else {
                    MaxFailures::Count(3)
                })
                .parallelism(7),
                // A noop cannot fail: a constraint on its failure is refused,
                // so noops appear only without successors' `on` to worry about.
                _ => TaskBuilder::exec(&name, ["true"]),
            };
            if i > 0 {
                let mut seen = Vec::new();
                for (j, on) in after {
                    if !seen.contains(&j) {
                        seen.push(j);
                        t = t.after_on(format!("t{j}"), on);
                    }
                }
            }
            if cof {
                t = t.continue_on_failure();
            }
            if let Some(r) = retry {
                t = t.retry(r);
            }
            if let Some(s) = timeout {
                t = t.timeout_s(s);
            }
            t.description(txt)
        })
}

fn package() -> impl Strategy<Value = Package> {
    (1usize..7, text(), any::<bool>())
        .prop_flat_map(|(n, desc, abandon)| {
            let tasks: Vec<_> = (0..n).map(task).collect();
            (tasks, Just(desc), Just(abandon), -1000.0f64..1000.0, text())
        })
        .prop_map(|(tasks, desc, abandon, f, s)| {
            let tasks = tasks.into_iter().chain([TaskBuilder::noop("last")]);
            let mut b = PackageBuilder::new("p")
                .description(desc)
                .param(ParamBuilder::new("n", ParamType::Int).default("3"))
                .param(ParamBuilder::new("f", ParamType::Float).default(f.to_string()))
                .param(
                    ParamBuilder::new("l", ParamType::List).default_list([s.clone(), "a,b".into()]),
                )
                .param(
                    ParamBuilder::new("s", ParamType::String)
                        .default(s)
                        .description("d"),
                )
                .param(ParamBuilder::new("pw", ParamType::Secret).required());
            if abandon {
                b = b.children_on_cancel(ChildrenOnCancel::Abandon);
            }
            for t in tasks {
                b = b.task(t);
            }
            b.build().unwrap()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..Default::default() })]

    #[test]
    fn model_to_toml_to_model(p in package()) {
        let text = p.to_toml();
        prop_assert_eq!(Package::parse("p.toml", &text).unwrap(), p, "{}", text);
    }
}
