//! Retention: ended executions are pruned by count (and age) on the coordinator,
//! the store file shrinks, and agents remove old job directories.

use std::path::Path;
use std::time::Duration;

use crate::harness::{AgentOpts, Cluster, FanoutSpec, wait_until};

fn job_dirs(jobs: &Path) -> usize {
    std::fs::read_dir(jobs).map_or(0, |d| {
        d.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

fn listed(c: &Cluster) -> Vec<String> {
    let out = c.cli(&["exec", "list", "--limit", "1000", "--output", "json"]);
    out.expect_code(0);
    out.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["execution_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn history_is_pruned_and_the_store_shrinks() {
    let mut c = Cluster::new("retention");
    c.start_coordinator_with(&["--prune-every", "1s"]);
    let mut opts = AgentOpts::new("a1", 8);
    opts.extra_args = vec!["--retain-for".into(), "3s".into()];
    c.start_agent_with(opts);
    c.agents_ready(1);

    // Children with some output, so that each execution weighs in the store.
    let cmd = "printf 'pad=%0300d\\n' 0 >> \"$BATON_OUTPUT\"";
    let pkg = c.write_fanout("retain", &FanoutSpec::new(60, cmd).parallelism(8));
    let pkg = pkg.display().to_string();
    let mut ids = Vec::new();
    for _ in 0..12 {
        let out = c.cli(&["run", &pkg, "--wait", "--output", "json"]);
        out.expect_code(0);
        ids.push(out.json()["execution_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(listed(&c).len(), 12);
    let store = c.root().join("coordinator/data/coordinator.redb");
    let before = std::fs::metadata(&store).unwrap().len();

    // Keep two: the coordinator prunes ten executions with all their children.
    c.coordinator().push_args(&["--retain-count", "2"]);
    c.coordinator().restart();
    assert!(
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(200),
            || listed(&c).len() == 2
        ),
        "history was not pruned to 2: {:?}",
        listed(&c)
    );
    let kept = listed(&c);
    assert!(
        kept.contains(&ids[11]) && kept.contains(&ids[10]),
        "the newest are kept: {kept:?}"
    );
    let gone = c.cli(&["exec", "show", &ids[0]]);
    assert!(
        gone.stderr.contains("error[EXECUTION_NOT_FOUND]"),
        "{}",
        gone.describe()
    );
    let after = std::fs::metadata(&store).unwrap().len();
    assert!(
        after < before,
        "the store did not shrink: {before} bytes before pruning, {after} after"
    );
    c.note(&format!(
        "store: {before} bytes with 12 executions, {after} after pruning to 2"
    ));

    // The agent removes job directories older than its 3 s retention.
    let jobs = c.root().join("a1/data/jobs");
    assert!(
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(250),
            || job_dirs(&jobs) == 0
        ),
        "{} execution directories left on the agent",
        job_dirs(&jobs)
    );
    c.finish(&[]);
}
