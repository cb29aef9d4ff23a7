//! Cancellation: `baton exec cancel` on a fan-out of long-running children must
//! end every child's whole process group on every agent (checked by pid), cancel
//! what had not started, start nothing new, and end the execution `cancelled`.

use std::time::{Duration, Instant};

use nix::sys::signal::killpg;
use nix::unistd::Pid;

use crate::harness::{Cluster, FanoutSpec, wait_until};

const CHILDREN: usize = 40;
const PARALLELISM: u32 = 6;

/// Whether any process of the group `pgid` is alive.
fn group_alive(pgid: u64) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

#[test]
fn cancel_stops_every_process_group_and_starts_nothing_new() {
    let mut c = Cluster::new("cancel");
    c.start_coordinator();
    c.start_agent("a1", 3);
    c.start_agent("a2", 3);
    c.agents_ready(2);

    // `sleep 300 & wait` leaves a grandchild in the group: the whole group must go.
    let spec = FanoutSpec::new(CHILDREN as u32, "sleep 300 & wait").parallelism(PARALLELISM);
    let parent = c.write_fanout("cancel", &spec);
    let id = c.start_run(&parent, &[]);

    let mut running = Vec::new();
    let ok = wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        let v = c.exec_show(&id);
        running = v
            .children
            .iter()
            .filter(|ch| ch.state == "running" && ch.pid > 0)
            .cloned()
            .collect();
        running.len() == PARALLELISM as usize
    });
    assert!(
        ok,
        "never saw {PARALLELISM} children running with pids: {running:?}"
    );
    let pids: Vec<u64> = running.iter().map(|ch| ch.pid).collect();
    assert!(
        pids.iter().all(|p| group_alive(*p)),
        "children should be alive before the cancel"
    );

    let started = Instant::now();
    let out = c.cli_at(
        &c.coordinator_url(),
        &[
            "exec", "cancel", &id, "--reason", "test", "--wait", "--output", "json",
        ],
        Duration::from_secs(30),
    );
    out.expect_code(0);
    assert_eq!(out.json()["status"], "cancelled", "{}", out.describe());

    // Every process group is gone within the agents' grace (5 s) plus slack.
    let gone = wait_until(Duration::from_secs(8), Duration::from_millis(50), || {
        pids.iter().all(|p| !group_alive(*p))
    });
    let alive: Vec<_> = pids.iter().filter(|p| group_alive(**p)).collect();
    assert!(
        gone,
        "process groups still alive {:?} after {:?}",
        alive,
        started.elapsed()
    );

    let end = c.exec_show(&id);
    assert_eq!(end.status, "cancelled");
    assert_eq!(end.children.len(), CHILDREN);
    for ch in &end.children {
        assert_eq!(ch.state, "cancelled", "child not cancelled: {ch:?}");
        assert_eq!(
            ch.attempt, 1,
            "a cancelled execution retried a child: {ch:?}"
        );
    }
    let ever_started = end.children.iter().filter(|ch| ch.pid > 0).count();
    assert!(
        ever_started <= PARALLELISM as usize,
        "{ever_started} children started; nothing new may start after the cancel"
    );
    // Cancelling again changes nothing and says so.
    let again = c.cli(&["exec", "cancel", &id, "--output", "json"]);
    again.expect_code(0);
    assert_eq!(again.json()["status"], "cancelled");
    c.finish(&[]);
}

/// The scale: 200 long-running children running at once on two agents;
/// after the cancel every one of their process groups is gone within the grace.
#[test]
fn cancel_of_200_running_children_leaves_no_process() {
    const N: usize = 200;
    let mut c = Cluster::new("cancel200");
    // 200 processes starting on a loaded 2-core machine can delay a heartbeat
    // past the 2 s test lease; a lost agent's children would then be run
    // again elsewhere, which is not what this test is about.
    c.start_coordinator_with_lease(15_000);
    c.start_agent("a1", 100);
    c.start_agent("a2", 100);
    c.agents_ready(2);
    let spec = FanoutSpec::new(N as u32, "sleep 300 & wait").parallelism(N as u32);
    let parent = c.write_fanout("cancel200", &spec);
    let id = c.start_run(&parent, &[]);

    let mut pids = Vec::new();
    let ok = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let v = c.exec_show(&id);
        pids = v
            .children
            .iter()
            .filter(|ch| ch.state == "running" && ch.pid > 0)
            .map(|ch| ch.pid)
            .collect();
        pids.len() == N
    });
    assert!(ok, "only {} of {N} children running", pids.len());
    let agents: std::collections::BTreeSet<String> = c
        .exec_show(&id)
        .children
        .iter()
        .map(|ch| ch.agent.clone())
        .collect();
    assert_eq!(agents.len(), 2, "both agents run children: {agents:?}");

    let started = Instant::now();
    let out = c.cli_at(
        &c.coordinator_url(),
        &["exec", "cancel", &id, "--wait", "--output", "json"],
        Duration::from_secs(60),
    );
    out.expect_code(0);
    assert_eq!(out.json()["status"], "cancelled", "{}", out.describe());
    // SIGTERM ends `wait` at once; SIGKILL would follow after the 5 s grace.
    let gone = wait_until(Duration::from_secs(8), Duration::from_millis(50), || {
        pids.iter().all(|p| !group_alive(*p))
    });
    let alive = pids.iter().filter(|p| group_alive(**p)).count();
    assert!(
        gone,
        "{alive} of {N} process groups still alive {:?} after the cancel",
        started.elapsed()
    );
    let end = c.exec_show(&id);
    assert!(end.children.iter().all(|ch| ch.state == "cancelled"));
    c.finish(&[]);
}
