//! An agent runs a child package's tasks through the engine: independent tasks at
//! once, a `script` task's outputs interpolated into a dependent `exec` task's argv
//! (`${tasks.X.outputs.K}`), a `continue_on_failure` task whose on-failure handler
//! runs and whose on-success dependent is skipped; the child's outputs (the union
//! of its tasks') reach `exec show`. A second run where a task fails without
//! tolerance fails its child with that task's reason.

use std::path::Path;

use serde_json::Value;

use crate::harness::fixtures::{file_lines, write_file};
use crate::harness::{AgentOpts, Cluster};

fn child(marks: &Path, flaky_tolerated: bool) -> String {
    let m = marks.display();
    format!(
        r#"
name = "dag"
[parameters.shard]
type = "int"
required = true

[tasks.produce]
script = """
date +%s%N > {m}/produce.start.$BATON_PARAM_SHARD
sleep 0.5
echo greeting=hello-$BATON_PARAM_SHARD >> $BATON_OUTPUT
date +%s%N > {m}/produce.end.$BATON_PARAM_SHARD
"""

[tasks.side]
script = """
date +%s%N > {m}/side.start.$BATON_PARAM_SHARD
sleep 0.5
date +%s%N > {m}/side.end.$BATON_PARAM_SHARD
"""

[tasks.consume]
exec = ["sh", "-c", "echo got=$1 >> $BATON_OUTPUT; echo $1 >> {m}/consume.$BATON_PARAM_SHARD", "sh", "${{tasks.produce.outputs.greeting}}"]
after = ["produce"]

[tasks.flaky]
script = "echo x >> {m}/flaky.$BATON_PARAM_SHARD; exit 1"
retry = {{ attempts = 2 }}
continue_on_failure = {flaky_tolerated}

[tasks.handler]
script = "echo x >> {m}/handler.$BATON_PARAM_SHARD; echo handled=yes >> $BATON_OUTPUT"
after = [{{ task = "flaky", on = "failure" }}]

[tasks.never]
script = "echo x >> {m}/never.$BATON_PARAM_SHARD"
after = ["flaky"]
"#
    )
}

const PARENT: &str = r#"
name = "fan"
[tasks.fan]
foreach = { items = ["1", "2"] }
child = "child.toml"
params = { shard = "${item}" }
"#;

fn stamp(marks: &Path, file: &str) -> u128 {
    let text = std::fs::read_to_string(marks.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file}: {text:?}: {e}"))
}

fn run(c: &Cluster, dir: &Path) -> (Option<i32>, Value) {
    let out = c.cli(&[
        "run",
        &dir.join("parent.toml").display().to_string(),
        "--wait",
        "--output",
        "json",
    ]);
    let id = out.json()["execution_id"].as_str().unwrap().to_owned();
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    (out.code, show.json())
}

#[test]
fn a_child_package_runs_as_a_dag_on_its_agent() {
    let mut c = Cluster::new("child_dag");
    c.start_coordinator();
    let marks = c.root().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.agents_ready(1);

    let dir = c.root().join("pkg");
    write_file(&dir, "child.toml", &child(&marks, true));
    write_file(&dir, "parent.toml", PARENT);
    let (code, show) = run(&c, &dir);
    assert_eq!(code, Some(0), "{show:#}");
    assert_eq!(show["status"], "succeeded", "{show:#}");
    let children = show["children"].as_array().unwrap();
    assert_eq!(children.len(), 2, "{show:#}");
    for ch in children {
        assert_eq!(ch["state"], "succeeded", "{ch}");
        let shard = ch["index"].as_u64().unwrap() + 1;
        let outputs = &ch["outputs"];
        // The union of the tasks' outputs; produce's reached consume's argv.
        assert_eq!(outputs["greeting"], format!("hello-{shard}"), "{ch}");
        assert_eq!(outputs["got"], format!("hello-{shard}"), "{ch}");
        assert_eq!(outputs["handled"], "yes", "{ch}");

        // produce and side ran at once, as independent tasks do.
        let s = |f: &str| stamp(&marks, &format!("{f}.{shard}"));
        assert!(
            s("produce.start") < s("side.end") && s("side.start") < s("produce.end"),
            "independent tasks of shard {shard} did not overlap"
        );
        assert_eq!(file_lines(&marks.join(format!("consume.{shard}"))).len(), 1);
        assert_eq!(
            file_lines(&marks.join(format!("flaky.{shard}"))).len(),
            2,
            "two attempts of flaky"
        );
        assert_eq!(file_lines(&marks.join(format!("handler.{shard}"))).len(), 1);
        assert!(
            !marks.join(format!("never.{shard}")).exists(),
            "an on-success dependent of a failed task ran"
        );
    }

    // Without tolerance the same failure fails the child, with flaky's reason,
    // after its handler ran.
    let dir = c.root().join("pkg-fail");
    let marks_fail = c.root().join("marks-fail");
    std::fs::create_dir_all(&marks_fail).unwrap();
    write_file(&dir, "child.toml", &child(&marks_fail, false));
    write_file(&dir, "parent.toml", PARENT);
    let (code, show) = run(&c, &dir);
    assert_eq!(code, Some(1), "{show:#}");
    assert_eq!(show["status"], "failed", "{show:#}");
    let text = show.to_string();
    assert!(text.contains("task flaky exited with code 1"), "{show:#}");
    assert_eq!(file_lines(&marks_fail.join("handler.1")).len(), 1);
    assert!(!marks_fail.join("never.1").exists());
    c.finish(&[]);
}
