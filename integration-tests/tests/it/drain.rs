//! Fleet control: draining an agent during a fan-out lets the children it runs
//! finish there, gives it no new ones, and reports it `drained` when empty;
//! `uncordon` brings it back.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::harness::{Cluster, FanoutSpec, wait_until};

const CHILDREN: usize = 24;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[test]
fn drain_lets_running_children_finish_and_gives_no_new_work() {
    let mut c = Cluster::new("drain");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.start_agent("a2", 2);
    c.agents_ready(2);

    let spec = FanoutSpec::new(CHILDREN as u32, "sleep 0.6").parallelism(4);
    let parent = c.write_fanout("drain", &spec);
    let id = c.start_run(&parent, &[]);

    let mut held = Vec::new();
    let ok = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let v = c.exec_show(&id);
        held = v
            .children
            .iter()
            .filter(|ch| ch.agent == "a2" && ch.state == "running")
            .map(|ch| ch.key())
            .collect();
        !held.is_empty()
    });
    assert!(ok, "a2 never ran a child");

    let drained_at = now_ms();
    let out = c.cli(&["agents", "drain", "a2", "--wait"]);
    out.expect_code(0);
    assert!(
        out.stdout.trim_end().ends_with("agent a2: drained"),
        "{}",
        out.describe()
    );

    let end = c.wait_exec_terminal(&id, Duration::from_secs(60));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    end.assert_all_succeeded_once(CHILDREN, &["a1", "a2"]);
    for ch in &end.children {
        if held.contains(&ch.key()) {
            assert_eq!(
                ch.agent, "a2",
                "a child running at the drain was moved: {ch:?}"
            );
            assert_eq!(
                ch.attempt, 1,
                "a child running at the drain was restarted: {ch:?}"
            );
        } else if ch.agent == "a2" {
            assert!(
                ch.started_unix_ms <= drained_at,
                "a2 started a child after it was drained: {ch:?}"
            );
        }
    }
    let a2 = c
        .agents_list()
        .into_iter()
        .find(|a| a.name == "a2")
        .expect("a2 listed");
    assert_eq!(a2.state, "drained");

    let out = c.cli(&["agents", "uncordon", "a2", "--output", "json"]);
    out.expect_code(0);
    assert_eq!(out.json()["agent"], "a2", "{}", out.describe());
    assert_eq!(out.json()["state"], "ready", "{}", out.describe());
    let a2 = c
        .agents_list()
        .into_iter()
        .find(|a| a.name == "a2")
        .expect("a2 listed");
    assert_eq!(a2.state, "ready");
    c.cli(&["agents", "drain", "nobody"]).expect_code(2);
    c.finish(&[]);
}

/// `agents rm` forgets a lost agent and refuses a live one.
#[test]
fn a_lost_agent_can_be_removed_a_live_one_cannot() {
    let mut c = Cluster::new("agents_rm");
    c.start_coordinator();
    c.start_agent("a1", 1);
    c.start_agent("a2", 1);
    c.agents_ready(2);
    let out = c.cli(&["agents", "rm", "a1"]);
    assert!(
        out.stderr.contains("error[AGENT_ALIVE]"),
        "{}",
        out.describe()
    );
    c.agent("a2").kill9();
    assert!(
        crate::harness::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            c.agents_list()
                .iter()
                .any(|a| a.name == "a2" && a.state == "lost")
        }),
        "a2 never lost"
    );
    let out = c.cli(&["agents", "rm", "a2", "--output", "json"]);
    out.expect_code(0);
    assert_eq!(out.json()["state"], "removed", "{}", out.describe());
    let names: Vec<String> = c.agents_list().into_iter().map(|a| a.name).collect();
    assert_eq!(names, vec!["a1".to_string()]);
    let out = c.cli(&["agents", "rm", "a2"]);
    assert!(
        out.stderr.contains("error[AGENT_NOT_FOUND]"),
        "{}",
        out.describe()
    );
    // Gone for good: a coordinator restart does not bring the record back.
    c.coordinator().restart();
    let names: Vec<String> = c.agents_list().into_iter().map(|a| a.name).collect();
    assert!(!names.contains(&"a2".to_string()), "{names:?}");
    c.finish(&[]);
}
