//! Parser tests for the language beyond the first subset: new task kinds,
//! constraints, expressions, references and what is refused, with positions.

use crate::model::{After, ChildRef, ForeachOver, MaxFailures, On, Package, ParamType, TaskKind};
use crate::policy::ChildrenOnCancel;

fn ok(text: &str) -> Package {
    Package::parse("f.toml", text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn err(text: &str) -> String {
    Package::parse("f.toml", text).unwrap_err().to_string()
}

#[test]
fn parses_every_kind_and_policy() {
    let p = ok(r#"
name = "etl"
children_on_cancel = "abandon"
[parameters.regions]
type = "list"
default = ["eu", "us"]
[parameters.pw]
type = "secret"
[tasks.extract]
script = "echo rows=3 >> $BATON_OUTPUT"
retry = { attempts = 3, backoff_s = 10, jitter = true }
timeout_s = 60
[tasks.shards]
foreach = { rows = "extract" }
child = "load.toml"
params = { id = "${item.id}", n = "${tasks.extract.outputs.rows}" }
max_failures = "all"
require = { zone = "eu" }
after = ["extract"]
[tasks.one]
child = "catalog:/etl/one"
local = true
after = [{ task = "shards", on = "completion" }]
when = "${tasks.shards.state} == 'failed' || ${tasks.extract.outputs.rows} > 2"
continue_on_failure = true
[tasks.post]
group = ["a", "b"]
after = [{ task = "one", on = "completion" }]
[tasks.a]
noop = true
[tasks.b]
exec = ["true"]
after = ["a"]
"#);
    assert_eq!(p.children_on_cancel, ChildrenOnCancel::Abandon);
    assert_eq!(p.parameters["regions"].ty, ParamType::List);
    assert!(p.parameters["pw"].sensitive);
    let extract = &p.tasks["extract"];
    assert_eq!(extract.retry.attempts, 3);
    assert_eq!(
        (extract.retry.backoff_s, extract.retry.backoff_max_s),
        (10, 300)
    );
    assert!(extract.retry.jitter);
    let TaskKind::Foreach(fe) = &p.tasks["shards"].kind else {
        panic!()
    };
    assert_eq!(fe.over, ForeachOver::Rows("extract".into()));
    assert_eq!(fe.max_failures, MaxFailures::All);
    let one = &p.tasks["one"];
    let TaskKind::Child(c) = &one.kind else {
        panic!()
    };
    assert_eq!(c.child_ref(), ChildRef::Catalog("/etl/one".into()));
    assert!(c.local && one.continue_on_failure && one.when.is_some());
    assert_eq!(
        one.after,
        [After {
            task: "shards".into(),
            on: On::Completion
        }]
    );
    assert_eq!(p.group_of("b"), Some("post"));
    let order: Vec<&str> = p.task_order().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(order, ["extract", "shards", "one", "post", "a", "b"]);
}

#[test]
fn expression_errors_point_inside_the_string() {
    let e = err("name='x'\n[tasks.a]\nnoop=true\nwhen = '1 == == 2'\n");
    assert!(e.starts_with("f.toml:4:14: "), "{e}");
    assert!(e.contains("`when`"), "{e}");
}

#[test]
fn references_are_checked_at_load() {
    for (task, want) in [
        (
            "exec=['echo', '${params.nope}']",
            "unknown parameter 'nope'",
        ),
        (
            "exec=['echo', '${item}']",
            "only defined in the `params` of a foreach",
        ),
        ("script='echo ${tasks.zz.outputs.k}'", "unknown task 'zz'"),
        ("script='echo ${tasks.b.outputs.k}'", "does not run before"),
        (
            "noop=true\nwhen='${tasks.b.state} == \"failed\"'",
            "does not run before",
        ),
        ("noop=true\nwhen='${params.zz}'", "unknown parameter 'zz'"),
        (
            "foreach={items=['a']}\nchild='c.toml'\nparams={x='${item.f}'}",
            "needs a foreach over `rows`",
        ),
        ("foreach={rows='b'}\nchild='c.toml'", "does not run before"),
        ("foreach={rows='zz'}\nchild='c.toml'", "unknown task 'zz'"),
        (
            "foreach={items=['${tasks.b.state}']}\nchild='c.toml'\nafter=['b']",
            "only ${params.NAME}",
        ),
        ("exec=['x']\nafter=['a']", "names itself"),
        ("exec=['x']\nafter=['b', 'b']", "twice"),
        ("exec=['x']\nafter=[{task='b', on='sometimes'}]", "`on` is"),
        (
            "exec=['x']\nafter=[{task='b', when='x'}]",
            "unknown field `when`",
        ),
        ("group=['a']", "lists itself"),
        ("group=['zz']", "unknown task 'zz'"),
        ("group=[]", "at least one member"),
        ("child='catalog:etl'", "catalog:/folder/name"),
        ("noop=true\nretry={attempts=2}", "cannot have `retry`"),
        ("exec=['x']\nparallelism=2", "belongs to a `foreach` task"),
        ("script='x'\nlocal=true", "belongs to a `child` task"),
        (
            "exec=['x']\nretry={backoff_s=10, backoff_max_s=5}",
            "backoff_max_s",
        ),
        (
            "foreach={items=[1]}\nchild='c.toml'\nmax_failures=-2",
            "max_failures",
        ),
    ] {
        let text = format!("name='x'\n[tasks.a]\n{task}\n[tasks.b]\nnoop=true\n");
        let e = err(&text);
        assert!(e.contains(want), "{task}: {e}");
        assert!(e.starts_with("f.toml:"), "{e}");
    }
    let e = err("name='x'\nchildren_on_cancel='keep'\n");
    assert!(e.contains("children_on_cancel"), "{e}");
}

#[test]
fn groups_and_cycles() {
    // A member running after its own group, or a group's successor inside it.
    let e = err("name='x'\n[tasks.g]\ngroup=['a']\n[tasks.a]\nnoop=true\nafter=['g']\n");
    assert!(e.contains("cycle"), "{e}");
    let e = err(
        "name='x'\n[tasks.g]\ngroup=['a']\n[tasks.a]\nnoop=true\nafter=['z']\n[tasks.z]\nnoop=true\nafter=['g']\n",
    );
    assert!(e.contains("cycle"), "{e}");
    let e = err("name='x'\n[tasks.g]\ngroup=['a']\n[tasks.h]\ngroup=['a']\n[tasks.a]\nnoop=true\n");
    assert!(e.contains("two groups"), "{e}");
}

#[test]
fn tasks_that_can_never_run_are_refused() {
    for (text, want) in [
        (
            "[tasks.a]\nnoop=true\nwhen='1 > 2'\n",
            "`when` is always false",
        ),
        (
            "[tasks.a]\nnoop=true\n[tasks.b]\nnoop=true\nafter=[{task='a',on='failure'}]\n",
            "a noop that cannot fail",
        ),
        (
            "[tasks.a]\nnoop=true\nwhen='false'\n[tasks.b]\nnoop=true\nafter=[{task='a',on='completion'}]\n",
            "after 'a', which never runs",
        ),
        (
            "[tasks.g]\ngroup=['m']\nwhen='!true'\n[tasks.m]\nnoop=true\n",
            "its group 'g' never runs",
        ),
    ] {
        let e = Package::check("f.toml", &format!("name='x'\n{text}")).unwrap_err();
        let all: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(all.iter().any(|m| m.contains(want)), "{text}: {all:?}");
    }
}

#[test]
fn check_returns_every_error_in_file_order() {
    let e = Package::check(
        "f.toml",
        "name='x'\n[parameters.p]\ntype='nope'\n[tasks.a]\nexec=[]\n[tasks.b]\nnoop=false\n",
    )
    .unwrap_err();
    let lines: Vec<String> = e.iter().map(|e| e.to_string()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("f.toml:2:"), "{lines:?}");
    assert!(lines[2].starts_with("f.toml:6:"), "{lines:?}");
}

#[test]
fn slots_are_asked_per_child_task_and_bounded() {
    let p = ok(r#"
name = "wide"
[tasks.one]
child = "c.toml"
slots = 4
[tasks.many]
foreach = { items = ["a", "b"] }
child = "c.toml"
slots = 2
[tasks.plain]
foreach = { items = ["a"] }
child = "c.toml"
"#);
    let slots = |t: &str| match &p.tasks[t].kind {
        TaskKind::Child(c) => c.slots,
        TaskKind::Foreach(f) => f.slots,
        _ => panic!(),
    };
    assert_eq!((slots("one"), slots("many"), slots("plain")), (4, 2, 0));
    // Written back as read.
    let again = ok(&p.to_toml());
    assert_eq!(again.tasks["many"], p.tasks["many"]);
    assert_eq!(again.tasks["plain"], p.tasks["plain"]);

    for bad in ["0", "1025"] {
        let e = err(&format!(
            "name='w'\n[tasks.t]\nchild='c.toml'\nslots={bad}\n"
        ));
        assert!(
            e.contains("slots (per child) must be between 1 and 1024"),
            "{e}"
        );
    }
    let e = err("name='w'\n[tasks.t]\nexec=['true']\nslots=2\n");
    assert!(e.contains("slots"), "{e}");
}
