//! `exec show` of a big execution: the coordinator sends at most the asked
//! number of children — those that did not succeed first — with counts over
//! all of them, read from the store without holding every child.

use crate::harness::{AgentOpts, Cluster, FanoutSpec};

#[test]
fn exec_show_sends_the_failures_first_and_counts_everything() {
    let mut c = Cluster::new("show_limit");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 16));
    c.agents_ready(1);
    // 300 children; shards divisible by 60 fail (5 of them).
    let spec = FanoutSpec::new(300, "[ $((BATON_PARAM_SHARD % 60)) -ne 0 ]").parallelism(16);
    let parent = c.write_fanout("big", &spec);
    let out = c.cli(&[
        "run",
        &parent.display().to_string(),
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(1);
    let id = out.json()["execution_id"].as_str().unwrap().to_owned();

    let show = c.cli(&["exec", "show", &id, "--children", "10", "--output", "json"]);
    show.expect_code(0);
    let v = show.json();
    let children = v["children"].as_array().unwrap();
    assert_eq!(children.len(), 10, "{v}");
    assert_eq!(v["children_total"], 300);
    assert_eq!(v["children_truncated"], true);
    let failed: Vec<&str> = children
        .iter()
        .filter(|ch| ch["state"] != "succeeded")
        .map(|ch| ch["item"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["60", "120", "180", "240", "300"], "{v}");
    assert_eq!(v["summary"]["children"]["total"], 300);
    assert_eq!(v["summary"]["children"]["failed"], 5);
    assert_eq!(v["summary"]["children"]["succeeded"], 295);

    // The human view says it shows a part.
    let human = c.cli(&["exec", "show", &id, "--children", "10"]);
    human.expect_code(0);
    assert!(
        human.stderr.contains("showing 10 of 300 children"),
        "{}",
        human.describe()
    );
    // Without a limit the default (10,000) holds them all.
    let all = c.cli(&["exec", "show", &id, "--output", "json"]);
    assert_eq!(all.json()["children"].as_array().unwrap().len(), 300);
    assert_eq!(all.json()["children_truncated"], false);
    c.finish(&[]);
}
