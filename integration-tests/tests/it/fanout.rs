//! Fan-out end to end: one parent spreads 500 short children over three agents.
//!
//! Checks the product's core promise on real processes: `baton run --wait` returns
//! when every child is done, with exit 0 and a truthful JSON summary; the work is
//! actually spread (every agent ran some); and `exec show` records each child exactly
//! once, succeeded, on one of the agents. And the other way round: failing children
//! make the run fail (exit 1) with their exit codes on record.

use std::time::Duration;

use crate::harness::exec::{assert_summary_all_succeeded, str_at, u64_at};
use crate::harness::{Cluster, FanoutSpec};

const AGENTS: [&str; 3] = ["a1", "a2", "a3"];
const CHILDREN: u32 = 500;

#[test]
fn fanout_500_children_over_three_agents() {
    let mut c = Cluster::new("fanout");
    c.start_coordinator();
    for name in AGENTS {
        c.start_agent(name, 4);
    }
    c.agents_ready(AGENTS.len());
    // The contract's agents list shape, beyond what the harness parses.
    let listing = c.cli(&["agents", "list", "--output", "json"]).json();
    for a in listing["items"].as_array().expect("agents array") {
        for key in [
            "name",
            "address",
            "state",
            "slots",
            "running",
            "labels",
            "last_heartbeat_unix_ms",
        ] {
            assert!(a.get(key).is_some(), "agents list entry lacks `{key}`: {a}");
        }
    }

    let parent = c.write_fanout("fanout", &FanoutSpec::new(10, "sleep 0.05"));
    let pkg = parent.display().to_string();
    let children = format!("children={CHILDREN}");
    let out = c.cli_at(
        &c.coordinator_url(),
        &["run", &pkg, "-p", &children, "--wait", "--output", "json"],
        Duration::from_secs(50),
    );
    out.expect_code(0);
    let summary = out.json();
    c.note(&format!("summary: {summary}"));

    let per_agent = assert_summary_all_succeeded(&summary, u64::from(CHILDREN));
    for name in AGENTS {
        let n = per_agent.get(name).copied().unwrap_or(0);
        assert!(n > 0, "agent {name} ran no child: per_agent={per_agent:?}");
    }
    assert_eq!(
        per_agent.len(),
        AGENTS.len(),
        "per_agent names agents that do not exist: {per_agent:?}"
    );

    let id = str_at(&summary, "/execution_id").to_owned();
    let view = c.exec_show(&id);
    assert_eq!(view.status, "succeeded", "{}", view.brief());
    view.assert_all_succeeded_once(CHILDREN as usize, &AGENTS);
    c.finish(&[]);
}

/// A run whose children fail ends `failed`: `baton run --wait` exits 1 and the
/// records keep each child's exit code (the results are truthful, not "started").
#[test]
fn failing_children_fail_the_run_with_exit_1() {
    let mut c = Cluster::new("fanout_failing");
    c.start_coordinator();
    c.start_agent("a1", 4);
    c.agents_ready(1);
    let parent = c.write_fanout("failing", &FanoutSpec::new(5, "exit 3"));
    let pkg = parent.display().to_string();
    let out = c.cli(&["run", &pkg, "--wait", "--output", "json"]);
    out.expect_code(1);
    let summary = out.json();
    assert_eq!(str_at(&summary, "/status"), "failed", "{summary:#}");
    assert_eq!(u64_at(&summary, "/children/failed"), 5, "{summary:#}");
    assert_eq!(u64_at(&summary, "/children/succeeded"), 0, "{summary:#}");
    let view = c.exec_show(str_at(&summary, "/execution_id"));
    assert_eq!(view.children.len(), 5, "{}", view.brief());
    for ch in view.raw["children"].as_array().expect("children") {
        assert_eq!(ch["state"], "failed", "{ch}");
        assert_eq!(ch["exit_code"], 3, "{ch}");
    }
    c.finish(&[]);
}
