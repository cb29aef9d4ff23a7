//! Nested fan-out: a child package that has its own foreach runs as a
//! sub-execution on the coordinator, whose children go to the agents; the
//! outer child ends with it and carries its outputs. Cancelling the parent
//! cancels the sub-executions and their processes.

use std::path::Path;
use std::time::Duration;

use crate::harness::fixtures::{file_lines, write_file};
use crate::harness::{AgentOpts, Cluster, wait_until};

/// parent → foreach region (a, b) → region.toml → foreach shard 1..3 → shard.toml.
fn write_packages(dir: &Path, shard_cmd: &str) {
    write_file(
        dir,
        "parent.toml",
        r#"
name = "world"
[tasks.regions]
foreach = { items = ["a", "b"] }
child = "region.toml"
params = { region = "${item}" }
"#,
    );
    write_file(
        dir,
        "region.toml",
        r#"
name = "region"
[parameters.region]
type = "string"
required = true
[tasks.shards]
foreach = { range = { start = 1, end = 3 } }
child = "shard.toml"
params = { region = "${params.region}", shard = "${item}" }
"#,
    );
    write_file(
        dir,
        "shard.toml",
        &format!(
            r#"
name = "shard"
[parameters.region]
type = "string"
required = true
[parameters.shard]
type = "int"
required = true
[tasks.work]
exec = ["sh", "-c", {}]
"#,
            serde_json::to_string(shard_cmd).unwrap()
        ),
    );
}

#[test]
fn a_child_that_fans_out_runs_as_a_sub_execution() {
    let mut c = Cluster::new("nested");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.start_agent_with(AgentOpts::new("a2", 4));
    c.agents_ready(2);
    let marks = c.root().join("marks");
    let dir = c.root().join("pkg");
    write_packages(
        &dir,
        &format!(
            "echo $BATON_PARAM_REGION-$BATON_PARAM_SHARD >> {}; echo rows=$BATON_PARAM_SHARD >> $BATON_OUTPUT",
            marks.display()
        ),
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
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["children"]["succeeded"], 2, "two regions: {v}");
    let mut got = file_lines(&marks);
    got.sort();
    assert_eq!(got, ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]);

    // Each region's child ran as an execution of its own and brought its outputs back.
    let id = v["execution_id"].as_str().unwrap().to_owned();
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    let show = show.json();
    for child in show["children"].as_array().unwrap() {
        assert_eq!(child["agent"], "@coordinator", "{child}");
        assert_eq!(child["outputs"]["rows.sum"], "6", "1+2+3: {child}");
        assert!(
            child["reason"].as_str().unwrap().starts_with("execution "),
            "{child}"
        );
    }
    let list = c.cli(&["exec", "list", "--output", "json"]);
    list.expect_code(0);
    let execs = list.json()["items"].as_array().unwrap().clone();
    assert_eq!(execs.len(), 3, "the parent and two sub-executions");
    let mut parents: Vec<String> = execs
        .iter()
        .filter_map(|e| e["parent"].as_str().map(str::to_owned))
        .collect();
    parents.sort();
    assert_eq!(
        parents,
        [format!("{id} regions[0]"), format!("{id} regions[1]")],
        "each sub-execution names the child it runs as"
    );
    c.finish(&[]);
}

#[test]
fn cancelling_the_parent_stops_the_nested_children() {
    let mut c = Cluster::new("nested_cancel");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 8));
    c.agents_ready(1);
    let marks = c.root().join("marks");
    let dir = c.root().join("pkg");
    write_packages(
        &dir,
        &format!("echo $$ >> {}; sleep 300 & wait", marks.display()),
    );
    let id = c.start_run(&dir.join("parent.toml"), &[]);
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            file_lines(&marks).len() == 6
        }),
        "six nested children never ran: {:?}",
        file_lines(&marks)
    );
    let out = c.cli(&["exec", "cancel", &id, "--wait", "--output", "json"]);
    out.expect_code(0);
    assert_eq!(out.json()["status"], "cancelled", "{}", out.describe());
    // Every shard's shell is gone (SIGTERM to its group; `wait` returns).
    let pids: Vec<i32> = file_lines(&marks)
        .iter()
        .map(|l| l.parse().unwrap())
        .collect();
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
            pids.iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists())
        }),
        "nested child processes still alive: {pids:?}"
    );
    let list = c.cli(&["exec", "list", "--output", "json"]);
    for e in list.json()["items"].as_array().unwrap() {
        assert_eq!(e["status"], "cancelled", "{e}");
    }
    c.finish(&[]);
}
