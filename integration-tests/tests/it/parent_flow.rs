//! The coordinator runs a parent package's control flow: a `script` task on an
//! agent writes outputs, a foreach's children read them, a summary `exec` task
//! reads the foreach's aggregated outputs, an on-failure handler and a `when`
//! that is false are skipped; then the failure path: a failing foreach runs its
//! on-failure handler, skips its on-success dependent, and fails the execution.

use std::path::Path;

use serde_json::Value;

use crate::harness::exec::task_states;
use crate::harness::fixtures::{file_lines, write_file};
use crate::harness::{AgentOpts, Cluster};

fn children_of<'a>(show: &'a Value, task: &str) -> Vec<&'a Value> {
    show["children"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["task"] == task)
        .collect()
}

fn child(marks: &Path) -> String {
    let m = marks.display();
    format!(
        r#"
name = "load"
[parameters.shard]
type = "int"
required = true
[parameters.date]
type = "string"
required = true
[parameters.fail_above]
type = "int"
default = 100
[tasks.load]
exec = ["sh", "-c", """
echo "shard=$BATON_PARAM_SHARD date=$BATON_PARAM_DATE" >> "{m}/load"
echo "rows=$((BATON_PARAM_SHARD * 10))" >> "$BATON_OUTPUT"
[ "$BATON_PARAM_SHARD" -le "$BATON_PARAM_FAIL_ABOVE" ]
"""]
"#
    )
}

fn parent(marks: &Path, fail_above: u32) -> String {
    let m = marks.display();
    format!(
        r#"
name = "etl"
[parameters.day]
type = "string"
default = "mon"

[tasks.extract]
script = "echo x >> {m}/extract; echo date=${{params.day}} >> $BATON_OUTPUT"

[tasks.shards]
foreach = {{ range = {{ start = 1, end = 4 }} }}
child = "child.toml"
params = {{ shard = "${{item}}", date = "${{tasks.extract.outputs.date}}", fail_above = "{fail_above}" }}
after = ["extract"]

[tasks.summary]
exec = ["sh", "-c", "echo total=$0 >> $BATON_OUTPUT; echo $0 >> {m}/summary", "${{tasks.shards.outputs.rows.sum}}"]
after = ["shards"]

[tasks.on_fail]
script = "echo x >> {m}/on_fail"
after = [{{ task = "shards", on = "failure" }}]

[tasks.weekend]
script = "echo x >> {m}/weekend"
after = ["extract"]
when = "${{tasks.extract.outputs.date}} == 'sat'"
"#
    )
}

#[test]
fn outputs_flow_from_task_to_task_and_constraints_skip() {
    let mut c = Cluster::new("parent_flow");
    c.start_coordinator();
    let marks = c.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.agents_ready(1);

    let dir = c.root().join("pkg-ok");
    write_file(&dir, "child.toml", &child(&marks));
    write_file(&dir, "parent.toml", &parent(&marks, 100));
    let out = c.cli(&[
        "run",
        &dir.join("parent.toml").display().to_string(),
        "-p",
        "day=tue",
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(0);
    let id = out.json()["execution_id"].as_str().unwrap().to_owned();
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    let show = show.json();
    let states = task_states(&show);
    assert_eq!(states["extract"], "succeeded", "{states:?}");
    assert_eq!(states["shards"], "succeeded", "{states:?}");
    assert_eq!(states["summary"], "succeeded", "{states:?}");
    assert_eq!(states["on_fail"], "skipped", "{states:?}");
    assert_eq!(states["weekend"], "skipped", "when is false: {states:?}");

    // extract's output reached every child's parameters.
    let mut loads = file_lines(&marks.join("load"));
    loads.sort();
    assert_eq!(
        loads,
        (1..=4)
            .map(|s| format!("shard={s} date=tue"))
            .collect::<Vec<_>>()
    );
    // The foreach's summed outputs reached the summary task: 10+20+30+40.
    assert_eq!(file_lines(&marks.join("summary")), ["100"]);
    let summary = children_of(&show, "summary");
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["outputs"]["total"], "100", "{}", summary[0]);
    // Each task ran once; skipped ones never started a process.
    assert_eq!(file_lines(&marks.join("extract")).len(), 1);
    assert!(!marks.join("on_fail").exists() && !marks.join("weekend").exists());
    assert!(children_of(&show, "on_fail").is_empty());

    // The human tree names every task with its state.
    let human = c.cli(&["exec", "show", &id]);
    human.expect_code(0);
    assert!(
        human.stdout.contains("task weekend skipped"),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("task shards succeeded (4 children"),
        "{}",
        human.stdout
    );
    c.finish(&[]);
}

#[test]
fn a_failed_foreach_runs_its_failure_handler_and_fails_the_run() {
    let mut c = Cluster::new("parent_flow_fail");
    c.start_coordinator();
    let marks = c.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.agents_ready(1);

    let dir = c.root().join("pkg-fail");
    write_file(&dir, "child.toml", &child(&marks));
    // Shards 3 and 4 fail.
    write_file(&dir, "parent.toml", &parent(&marks, 2));
    let out = c.cli(&[
        "run",
        &dir.join("parent.toml").display().to_string(),
        "-p",
        "day=sat",
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(1);
    let v = out.json();
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("2 of 4 children of task 'shards' did not succeed"),
        "{v}"
    );
    let id = v["execution_id"].as_str().unwrap().to_owned();
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    let states = task_states(&show.json());
    assert_eq!(states["shards"], "failed", "{states:?}");
    assert_eq!(states["on_fail"], "succeeded", "{states:?}");
    assert_eq!(states["summary"], "skipped", "{states:?}");
    assert_eq!(
        states["weekend"], "succeeded",
        "when is true on saturdays: {states:?}"
    );
    assert_eq!(file_lines(&marks.join("on_fail")).len(), 1);
    assert!(!marks.join("summary").exists(), "summary never ran");
    c.finish(&[]);
}

#[test]
fn rows_of_one_task_feed_a_later_foreach() {
    let mut c = Cluster::new("parent_rows");
    c.start_coordinator();
    let marks = c.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.start_agent_with(AgentOpts::new("a2", 4));
    c.agents_ready(2);
    let m = marks.display();
    let dir = c.root().join("pkg-rows");
    write_file(
        &dir,
        "region.toml",
        &format!(
            r#"
name = "region"
[parameters.region]
type = "string"
required = true
[parameters.size]
type = "int"
required = true
[tasks.load]
exec = ["sh", "-c", "echo $BATON_PARAM_REGION=$BATON_PARAM_SIZE >> {m}/regions"]
"#
        ),
    );
    write_file(
        &dir,
        "parent.toml",
        r#"
name = "by-rows"
[tasks.list]
script = """
printf '{"region":"eu","size":3}\n{"region":"us","size":5}\n{"region":"ap","size":1}\n' >> "$BATON_ROWS"
"""
[tasks.regions]
foreach = { rows = "list" }
child = "region.toml"
params = { region = "${item.region}", size = "${item.size}" }
after = ["list"]
"#,
    );
    let out = c.cli(&[
        "run",
        &dir.join("parent.toml").display().to_string(),
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(0);
    let v = out.json();
    let id = v["execution_id"].as_str().unwrap().to_owned();
    let rows = c.cli(&["exec", "rows", &id, "--child", "list", "--format", "json"]);
    assert_eq!(rows.stdout.lines().count(), 3, "{}", rows.describe());
    assert_eq!(
        v["children"]["succeeded"], 4,
        "one list + three regions: {v}"
    );
    let mut got = file_lines(&marks.join("regions"));
    got.sort();
    assert_eq!(got, ["ap=1", "eu=3", "us=5"]);
    c.finish(&[]);
}

#[test]
fn abandoned_children_run_to_their_end_after_a_cancel() {
    let mut c = Cluster::new("parent_abandon");
    c.start_coordinator();
    let marks = c.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.agents_ready(1);
    let m = marks.display();
    let dir = c.root().join("pkg-abandon");
    // Each child marks its start, waits for the gate (bounded), marks its end.
    write_file(
        &dir,
        "child.toml",
        &format!(
            r#"
name = "slow"
[parameters.shard]
type = "int"
required = true
[tasks.work]
exec = ["sh", "-c", "echo $BATON_PARAM_SHARD >> {m}/started; i=0; while [ ! -e {m}/gate ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; echo $BATON_PARAM_SHARD >> {m}/ended"]
"#
        ),
    );
    write_file(
        &dir,
        "parent.toml",
        r#"
name = "abandon"
children_on_cancel = "abandon"
[tasks.fan]
foreach = { range = { start = 1, end = 4 } }
child = "child.toml"
params = { shard = "${item}" }
parallelism = 2
"#,
    );
    let id = c.start_run(&dir.join("parent.toml"), &[]);
    assert!(
        crate::harness::wait_until(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(100),
            || file_lines(&marks.join("started")).len() == 2
        ),
        "two children never started"
    );
    let coordinator_log = c.log_mark("coordinator");
    let out = c.cli(&["exec", "cancel", &id, "--output", "json"]);
    out.expect_code(0);
    assert_eq!(out.json()["status"], "cancelling", "{}", out.describe());
    // The running children are not stopped: they end when the gate opens. The
    // coordinator decided so when it answered (no stop asked of any agent) ...
    assert_eq!(out.json()["children_stopping"], 0, "{}", out.describe());
    assert_eq!(out.json()["children_cancelled"], 2, "{}", out.describe());
    coordinator_log.wait_for(
        &["children=2", "running children are abandoned, not stopped"],
        std::time::Duration::from_secs(10),
    );
    // ... and they are still on their agent.
    let view = c.exec_show(&id);
    let on_agent = view.children.iter().filter(|ch| ch.is_occupying()).count();
    assert_eq!(on_agent, 2, "{}", view.brief());
    assert!(
        file_lines(&marks.join("ended")).is_empty(),
        "nothing ended yet"
    );
    std::fs::write(marks.join("gate"), b"").unwrap();
    let view = c.wait_exec_terminal(&id, std::time::Duration::from_secs(30));
    assert_eq!(view.status, "cancelled");
    let mut ended = file_lines(&marks.join("ended"));
    ended.sort();
    let mut started = file_lines(&marks.join("started"));
    started.sort();
    assert_eq!(ended, started, "both running children ran to their end");
    assert_eq!(started.len(), 2, "the two pending ones never started");
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    let kids = children_of(&show.json(), "fan")
        .iter()
        .map(|c| c["state"].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(
        kids.iter().filter(|s| *s == "succeeded").count(),
        2,
        "{kids:?}"
    );
    assert_eq!(
        kids.iter().filter(|s| *s == "cancelled").count(),
        2,
        "{kids:?}"
    );
    c.finish(&[]);
}
