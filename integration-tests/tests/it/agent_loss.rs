//! Agent loss: SIGKILL an agent in the middle of a fan-out; nothing may be lost.
//!
//! Sixty ~1 s children run on three agents. As soon as the coordinator shows children
//! running on `a2`, the test kills `a2` with SIGKILL (no goodbye, no final events).
//! The coordinator must notice through the lease (TTL 2 s), mark `a2` lost, and re-run
//! its unfinished children elsewhere under new attempt numbers (`lost_attempts`
//! policy). The execution must still end `succeeded` with 60 children, each recorded
//! once; no child may be recorded as succeeded on `a2` unless it had already
//! succeeded there when `a2` died.
//!
//! "Already succeeded there when `a2` died" is the coordinator's view once the end
//! of `a2`'s event stream has reached it (its `completion stream closed` line, at
//! debug): everything `a2` sent before dying is then in the scheduler's queue, ahead
//! of the `exec show` that takes the reference snapshot.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{COORDINATOR_DEBUG, Cluster, FanoutSpec, log_level_with};

const AGENTS: [&str; 3] = ["a1", "a2", "a3"];
const VICTIM: &str = "a2";
const CHILDREN: usize = 60;

#[test]
fn killed_agent_children_are_rerun_elsewhere() {
    let mut c = Cluster::new("agent_loss");
    // Shows `completion stream closed agent=NAME` (debug).
    let log = log_level_with(COORDINATOR_DEBUG);
    c.start_coordinator_env(&[], vec![("BATON_LOG".to_owned(), log)]);
    for name in AGENTS {
        c.start_agent(name, 4);
    }
    c.agents_ready(AGENTS.len());

    let spec = FanoutSpec::new(CHILDREN as u32, "sleep 1").parallelism(12);
    let parent = c.write_fanout("agent_loss", &spec);
    let id = c.start_run(&parent, &[]);

    // Wait until the victim holds running children.
    let before = c.wait_exec(
        &id,
        &format!("a child running on {VICTIM}"),
        Duration::from_secs(20),
        |v| {
            v.children
                .iter()
                .any(|ch| ch.agent == VICTIM && ch.state == "running")
        },
    );
    let held_by_victim: BTreeSet<_> = before
        .children
        .iter()
        .filter(|ch| ch.agent == VICTIM && ch.is_occupying())
        .map(|ch| ch.key())
        .collect();

    let pid = c.agent(VICTIM).pid();
    let coordinator_log = c.log_mark("coordinator");
    c.agent(VICTIM).kill9();
    c.note(&format!(
        "killed {VICTIM} (pid {pid:?}); it held {held_by_victim:?}"
    ));
    // Events the victim sent just before dying may still be in flight to the
    // coordinator. The stream is read in order and each event queued to the
    // scheduler before the next is read, so once the coordinator has seen the
    // stream end, every one of them is ahead of the snapshot's `exec show`.
    coordinator_log.wait_for(
        &["completion stream closed", &format!("agent={VICTIM}")],
        Duration::from_secs(10),
    );
    let after_kill = c.exec_show(&id);
    let succeeded_on_victim_before_loss: BTreeSet<_> = after_kill
        .children
        .iter()
        .filter(|ch| ch.agent == VICTIM && ch.state == "succeeded")
        .map(|ch| ch.key())
        .collect();

    // The lease expires (TTL 2 s) and the registry says so.
    c.wait_agent_state(VICTIM, "lost", Duration::from_secs(15));

    let end = c.wait_exec_terminal(&id, Duration::from_secs(45));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    end.assert_all_succeeded_once(CHILDREN, &AGENTS);
    assert_eq!(end.summary_u64("/children/succeeded"), CHILDREN as u64);
    let lost_attempts = end.summary_u64("/lost_attempts");
    assert!(
        lost_attempts >= 1,
        "lost_attempts = 0 after killing {VICTIM}"
    );

    for ch in &end.children {
        if ch.agent == VICTIM {
            assert!(
                succeeded_on_victim_before_loss.contains(&ch.key()),
                "child {:?} is recorded as succeeded on {VICTIM}, which was dead by then: {ch:?}",
                ch.key()
            );
        }
    }
    let rerun: Vec<_> = end
        .children
        .iter()
        .filter(|ch| {
            ch.attempt >= 2 && ch.agent != VICTIM && ch.attempt_agents.iter().any(|a| a == VICTIM)
        })
        .collect();
    assert!(
        !rerun.is_empty(),
        "no child shows a re-run (attempt >= 2, attempt_agents containing {VICTIM}, \
         final agent elsewhere): {:#}",
        end.raw
    );
    for ch in &rerun {
        assert_eq!(
            ch.attempt_agents.last().map(String::as_str),
            Some(ch.agent.as_str()),
            "attempt_agents does not end with the agent of the last attempt: {ch:?}"
        );
    }
    // Every child the victim held and had not finished was re-run elsewhere.
    for key in held_by_victim.difference(&succeeded_on_victim_before_loss) {
        let ch = end
            .children
            .iter()
            .find(|ch| &ch.key() == key)
            .expect("child still listed");
        assert!(
            ch.agent != VICTIM && ch.attempt >= 2,
            "child {key:?} was on {VICTIM} at the kill but was not re-run: {ch:?}"
        );
    }
    c.finish(&[]);
}
