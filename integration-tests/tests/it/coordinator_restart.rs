//! Coordinator restart: SIGKILL the coordinator mid-execution, restart it on the
//! same data dir and port, and the execution must finish as if nothing happened.
//!
//! 150 children of 0.2–0.5 s run with parallelism 12 on three agents. When at least
//! 20 have succeeded the coordinator is killed (no graceful stop), left down until every
//! agent has noticed and has ended every job it had (agents keep running jobs and buffer
//! their events in their durable outboxes), then started again. The agents reconnect by themselves (they were given
//! the coordinator's URL), resend unacknowledged events, and the same execution id ends
//! `succeeded` with exactly 150 children, each recorded once. `baton run --wait` is not
//! used across the restart: the test polls `exec show`.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::harness::{AGENT_DEBUG, AgentOpts, Cluster, FanoutSpec, LogMark, field, wait_until};

const AGENTS: [&str; 3] = ["a1", "a2", "a3"];
const CHILDREN: usize = 150;
/// Sleeps 0.2, 0.3, 0.4 or 0.5 s depending on the item.
const CHILD_CMD: &str = "sleep 0.$((BATON_PARAM_SHARD % 4 + 2))";

/// Whether every job the agent accepted (its whole log) has ended.
fn idle(log: &LogMark) -> bool {
    let ids = |what: &str| -> BTreeSet<String> {
        log.matching(&[what])
            .iter()
            .filter_map(|l| field(l, "dispatch"))
            .map(str::to_owned)
            .collect()
    };
    ids("job accepted").is_subset(&ids("job finished"))
}

#[test]
fn execution_survives_coordinator_kill_and_restart() {
    let mut c = Cluster::new("coordinator_restart");
    c.start_coordinator();
    for name in AGENTS {
        // Shows `job accepted` and `job finished` (debug) with the dispatch id.
        let opts = AgentOpts::new(name, 4).log_targets(AGENT_DEBUG);
        c.start_agent_with(opts);
    }
    c.agents_ready(AGENTS.len());

    let spec = FanoutSpec::new(CHILDREN as u32, CHILD_CMD).parallelism(12);
    let parent = c.write_fanout("coordinator_restart", &spec);
    let id = c.start_run(&parent, &[]);

    let mut last = None;
    let ok = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let v = c.exec_show(&id);
        let done = v.count_state("succeeded");
        last = Some(v);
        done >= 20
    });
    let before = last.expect("polled at least once");
    assert!(
        ok,
        "fewer than 20 children done within 30 s: {}",
        before.brief()
    );
    assert!(
        !before.is_terminal(),
        "execution ended before the kill; the test would prove nothing: {}",
        before.brief()
    );

    let marks: Vec<_> = AGENTS.iter().map(|a| c.log_mark(a)).collect();
    c.coordinator().kill9();
    c.note(&format!("killed the coordinator at {}", before.brief()));
    // The outage is the point of the test: agents run on without a coordinator.
    // It lasts until every agent has seen it and has ended every job it had, the
    // events kept in its outbox.
    for mark in &marks {
        mark.wait_for(
            &["coordinator unreachable; will retry"],
            Duration::from_secs(10),
        );
    }
    let whole_logs: Vec<_> = AGENTS
        .iter()
        .map(|a| LogMark::at_start(a, &c.agent(a).stderr_path()))
        .collect();
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            whole_logs.iter().all(idle)
        }),
        "agents still running jobs 10 s into the outage"
    );
    let finished_meanwhile: usize = marks.iter().map(|m| m.count(&["job finished"])).sum();
    assert!(
        finished_meanwhile >= 1,
        "no job ended while the coordinator was down"
    );
    c.note(&format!(
        "{finished_meanwhile} jobs ended while the coordinator was down"
    ));
    let addr = c.coordinator().restart();
    c.note(&format!("coordinator restarted on {addr}"));

    let after = c.exec_show(&id);
    assert!(
        after.children.len() == CHILDREN,
        "after restart, exec show lists {} children instead of {CHILDREN}: {}",
        after.children.len(),
        after.brief()
    );
    c.agents_ready(AGENTS.len());

    let end = c.wait_exec_terminal(&id, Duration::from_secs(45));
    assert_eq!(end.status, "succeeded", "{:#}", end.raw);
    end.assert_all_succeeded_once(CHILDREN, &AGENTS);
    assert_eq!(end.summary_u64("/children/total"), CHILDREN as u64);
    assert_eq!(end.summary_u64("/children/succeeded"), CHILDREN as u64);
    assert_eq!(end.summary_u64("/children/failed"), 0);
    let per_agent_sum: u64 = end
        .raw
        .pointer("/summary/per_agent")
        .and_then(serde_json::Value::as_object)
        .unwrap_or_else(|| panic!("no summary.per_agent: {:#}", end.raw))
        .values()
        .map(|v| {
            v.get("succeeded")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(
        per_agent_sum, CHILDREN as u64,
        "per-agent successes count some child twice or miss one: {:#}",
        end.raw
    );
    c.finish(&[]);
}
