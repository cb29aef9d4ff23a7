//! The README's ETL example (`examples/etl`) end to end on real agents:
//! extract writes rows and outputs, a foreach loads one shard per row on the
//! agents labelled role=loader, the summary reads both tasks' outputs, and the
//! database password reaches the children without showing anywhere.

use crate::harness::{AgentOpts, Cluster};

#[test]
fn the_etl_example_runs_end_to_end() {
    let mut c = Cluster::new("etl_example");
    c.start_coordinator();
    for name in ["l1", "l2"] {
        let mut opts = AgentOpts::new(name, 4);
        opts.extra_args = vec!["--label".into(), "role=loader".into()];
        c.start_agent_with(opts);
    }
    c.agents_ready(2);
    let parent = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/etl/parent.toml")
        .display()
        .to_string();
    let secret = "pw-3d9f1c";
    let out = c.cli(&[
        "run",
        &parent,
        "-p",
        "day=2026-11-30",
        "-p",
        &format!("db_password={secret}"),
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(0);
    let v = out.json();
    assert_eq!(v["status"], "succeeded", "{v}");
    // extract, three loads, summary.
    assert_eq!(v["children"]["succeeded"], 5, "{v}");
    let id = v["execution_id"].as_str().unwrap().to_owned();
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    assert!(
        !show.stdout.contains(secret),
        "the password leaked into exec show"
    );
    let show = show.json();
    let children = show["children"].as_array().unwrap();
    let loads: Vec<_> = children.iter().filter(|c| c["task"] == "load").collect();
    assert_eq!(loads.len(), 3);
    for l in &loads {
        let agent = l["agent"].as_str().unwrap();
        assert!(agent == "l1" || agent == "l2", "{l}");
    }
    let summary = children
        .iter()
        .find(|c| c["task"] == "summary")
        .expect("the summary ran");
    assert_eq!(
        summary["outputs"]["summary"], "2026-11-30: 600 rows in 3 shards",
        "{summary}"
    );
    let states = crate::harness::exec::task_states(&show);
    assert_eq!(states["alert"], "skipped", "{states:?}");
    // The rows of one load, streamed from its agent through the coordinator.
    let rows = c.cli(&[
        "exec", "rows", &id, "--child", "load[0]", "--format", "json",
    ]);
    rows.expect_code(0);
    assert!(rows.stdout.contains("\"loaded\""), "{}", rows.describe());
    c.finish(&[]);
}
