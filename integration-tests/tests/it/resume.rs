//! `baton exec resume`: a failed execution runs again from where it stopped,
//! after a coordinator restart, and only its children that did not succeed are
//! started again — counted by the processes the children themselves record.

use std::collections::BTreeMap;

use crate::harness::{AgentOpts, Cluster, FanoutSpec};

/// How many times each shard's process started, from the lines the children append.
fn starts(path: &std::path::Path) -> BTreeMap<u32, u32> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut n = BTreeMap::new();
    for line in text.lines() {
        *n.entry(line.trim().parse::<u32>().expect("a shard number"))
            .or_default() += 1;
    }
    n
}

#[test]
fn resume_reruns_only_what_did_not_succeed() {
    let mut c = Cluster::new("resume");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 4));
    c.start_agent_with(AgentOpts::new("a2", 4));
    c.agents_ready(2);

    // Shards 7..10 fail until the `fixed` file exists; every start is recorded.
    let log = c.root().join("starts.log");
    let fixed = c.root().join("fixed");
    let cmd = format!(
        "echo $BATON_PARAM_SHARD >> {log}; [ $BATON_PARAM_SHARD -le 6 ] || [ -e {fixed} ]",
        log = log.display(),
        fixed = fixed.display()
    );
    let pkg = c.write_fanout("resume", &FanoutSpec::new(10, &cmd).parallelism(4));
    let out = c.cli(&[
        "run",
        &pkg.display().to_string(),
        "--wait",
        "--output",
        "json",
    ]);
    out.expect_code(1);
    let first = out.json();
    let id = first["execution_id"].as_str().unwrap().to_owned();
    assert_eq!(first["status"], "failed", "{first}");
    assert_eq!(first["children"]["succeeded"], 6, "{first}");
    assert_eq!(first["children"]["failed"], 4, "{first}");

    // The execution is read back from the store: restart the coordinator first.
    c.coordinator().restart();
    c.agents_ready(2);

    std::fs::write(&fixed, b"").unwrap();
    let out = c.cli(&["exec", "resume", &id, "--wait", "--output", "json"]);
    out.expect_code(0);
    let resumed = out.json();
    assert_eq!(resumed["status"], "succeeded", "{resumed}");
    assert_eq!(resumed["execution_id"], id.as_str(), "the same execution");
    assert_eq!(resumed["rerun_children"], 4, "{resumed}");
    assert_eq!(resumed["resumes"], 1, "{resumed}");
    assert_eq!(resumed["children"]["succeeded"], 10, "{resumed}");
    assert_eq!(resumed["children"]["failed"], 0, "{resumed}");

    // Shards 1..6 ran once (their results were kept), 7..10 twice.
    let n = starts(&log);
    let expected: BTreeMap<u32, u32> = (1..=10).map(|s| (s, if s <= 6 { 1 } else { 2 })).collect();
    assert_eq!(n, expected, "process starts per shard");

    // The re-run children carry a new attempt number; the others keep theirs.
    let show = c.cli(&["exec", "show", &id, "--output", "json"]);
    show.expect_code(0);
    for child in show.json()["children"].as_array().unwrap() {
        let shard: u32 = child["item"].as_str().unwrap().parse().unwrap();
        let attempt = child["attempt"].as_u64().unwrap();
        assert_eq!(attempt, if shard <= 6 { 1 } else { 2 }, "{child}");
        assert_eq!(child["state"], "succeeded", "{child}");
    }

    // A succeeded execution has nothing to re-run; an unknown one is not found.
    let again = c.cli(&["exec", "resume", &id]);
    again.expect_code(2);
    assert!(
        again.stderr.contains("error[EXECUTION_NOT_RESUMABLE]")
            && again.stderr.contains("succeeded"),
        "{}",
        again.describe()
    );
    let unknown = c.cli(&["exec", "resume", "0123456789abcdef"]);
    assert!(
        unknown.stderr.contains("error[EXECUTION_NOT_FOUND]"),
        "{}",
        unknown.describe()
    );
    c.finish(&[]);
}

#[test]
fn a_cancelled_execution_resumes_and_a_running_one_is_refused() {
    let mut c = Cluster::new("resume-cancel");
    c.start_coordinator();
    c.start_agent_with(AgentOpts::new("a1", 2));
    c.agents_ready(1);

    let log = c.root().join("starts.log");
    let gate = c.root().join("gate");
    // Each child waits for the gate (bounded), so the execution is running when
    // it is cancelled and when a resume is attempted.
    let cmd = format!(
        "echo $BATON_PARAM_SHARD >> {log}; i=0; while [ ! -e {gate} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done",
        log = log.display(),
        gate = gate.display()
    );
    let pkg = c.write_fanout("resume-cancel", &FanoutSpec::new(4, &cmd).parallelism(2));
    let out = c.cli(&["run", &pkg.display().to_string(), "--output", "json"]);
    out.expect_code(0);
    let id = out.json()["execution_id"].as_str().unwrap().to_owned();
    assert!(
        crate::harness::wait_until(
            std::time::Duration::from_secs(20),
            std::time::Duration::from_millis(100),
            || starts(&log).len() == 2
        ),
        "two children never started"
    );
    let running = c.cli(&["exec", "resume", &id]);
    assert!(
        running.stderr.contains("error[EXECUTION_NOT_RESUMABLE]")
            && running.stderr.contains("running"),
        "{}",
        running.describe()
    );

    let out = c.cli(&["exec", "cancel", &id, "--wait", "--output", "json"]);
    out.expect_code(0);
    assert_eq!(out.json()["status"], "cancelled", "{}", out.describe());
    let before = starts(&log);
    assert_eq!(
        before.len(),
        2,
        "the two pending children never started: {before:?}"
    );

    std::fs::write(&gate, b"").unwrap();
    let out = c.cli(&["exec", "resume", &id, "--wait", "--output", "json"]);
    out.expect_code(0);
    let v = out.json();
    assert_eq!(v["status"], "succeeded", "{v}");
    assert_eq!(v["rerun_children"], 4, "all four were cancelled: {v}");
    let after = starts(&log);
    assert_eq!(after.len(), 4, "{after:?}");
    for (shard, n) in &after {
        let was = before.get(shard).copied().unwrap_or(0);
        assert_eq!(*n, was + 1, "shard {shard} ran once more on resume");
    }
    c.finish(&[]);
}
