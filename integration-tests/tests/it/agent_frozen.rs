//! A frozen agent: SIGSTOP an agent past its lease while its children run, then
//! SIGCONT it. The coordinator gives its attempts up and runs them again
//! elsewhere; when the agent comes back, its old attempts — still running, since
//! a frozen agent's children are not frozen — must be stopped, not left to hold
//! its slots and run a second time beside their new attempts.

use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::harness::{Cluster, FanoutSpec, wait_until};

fn group_alive(pgid: u64) -> bool {
    killpg(Pid::from_raw(pgid as i32), None).is_ok()
}

#[test]
fn an_agent_back_from_a_freeze_stops_the_attempts_given_up_meanwhile() {
    let mut c = Cluster::new("agent_frozen");
    c.start_coordinator();
    c.start_agent("a1", 2);
    c.agents_ready(1);
    let spec = FanoutSpec::new(2, "sleep 120 & wait").parallelism(2);
    let parent = c.write_fanout("agent_frozen", &spec);
    let id = c.start_run(&parent, &[]);
    let running = c.wait_exec(
        &id,
        "both children running on a1",
        Duration::from_secs(30),
        |v| {
            v.children
                .iter()
                .filter(|ch| ch.agent == "a1" && ch.state == "running" && ch.pid > 0)
                .count()
                == 2
        },
    );
    let old: Vec<u64> = running.children.iter().map(|ch| ch.pid).collect();

    // A second agent to take the children over, then a1 frozen past its lease.
    c.start_agent("a2", 2);
    c.agents_ready(2);
    let frozen = i32::try_from(c.agent("a1").pid().expect("a1 runs")).expect("pid fits");
    let coordinator = c.log_mark("coordinator");
    kill(Pid::from_raw(frozen), Signal::SIGSTOP).expect("SIGSTOP a1");
    coordinator.wait_for(
        &["agent lost: no heartbeat within the lease", "agent=a1"],
        Duration::from_secs(20),
    );
    c.wait_exec(
        &id,
        "both children re-run on a2",
        Duration::from_secs(30),
        |v| {
            v.children
                .iter()
                .filter(|ch| ch.agent == "a2" && ch.state == "running" && ch.attempt == 2)
                .count()
                == 2
        },
    );
    assert!(
        old.iter().all(|p| group_alive(*p)),
        "a frozen agent's children run on while it is frozen"
    );

    kill(Pid::from_raw(frozen), Signal::SIGCONT).expect("SIGCONT a1");
    coordinator.wait_for(
        &[
            "asking the agent that came back to stop",
            "agent=a1",
            "attempts=2",
        ],
        Duration::from_secs(20),
    );
    // The agent's grace before SIGKILL is 5 s.
    let gone = wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        old.iter().all(|p| !group_alive(*p))
    });
    assert!(
        gone,
        "the given-up attempts' process groups {old:?} still run on a1"
    );

    // The new attempts were not touched, and each child is recorded once.
    let now = c.exec_show(&id);
    assert_eq!(now.children.len(), 2);
    for ch in &now.children {
        assert_eq!(
            (ch.agent.as_str(), ch.state.as_str(), ch.attempt),
            ("a2", "running", 2),
            "{ch:?}"
        );
        assert!(group_alive(ch.pid), "the new attempt on a2 runs on: {ch:?}");
    }
    let out = c.cli(&["exec", "cancel", &id, "--wait", "--output", "json"]);
    out.expect_code(0);
    c.finish(&[]);
}
