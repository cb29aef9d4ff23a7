//! The history checker of the fault tests (`ha_cluster`): one function that reads
//! an ended fan-out from `baton exec show --output json` and lists every way its
//! recorded history breaks the promises of a failover — nothing lost, nothing
//! recorded twice, nothing applied from a superseded attempt or a fenced leader.
//!
//! The fan-out's children write who ran them into their outputs
//! (`ran_on=$HOSTNAME`, `attempt=$BATON_ATTEMPT`, see [`child_cmd`]), so the
//! completion a record holds can be traced to the process that produced it: a
//! late completion of a superseded attempt, or one applied by a deposed leader
//! after its successor re-ran the child, shows up as outputs that disagree with
//! the record's attempt and agent.
//!
//! What [`check`] verifies, for an execution expected to hold `n` children of one
//! foreach task:
//!
//! - the listing is whole (`children_total` = `n` = listed, not truncated) and
//!   each index `0..n` appears exactly once, in a terminal state: one terminal
//!   record per child;
//! - each child's attempts add up: `attempt` ≥ 1, one placement per attempt
//!   (`attempt_agents`), the record's agent is its last attempt's;
//! - a succeeded child's outputs come from that last attempt on that agent;
//! - every extra attempt is explained by a recorded loss: Σ(attempt − 1) equals
//!   the summary's `lost_attempts` (the test packages never retry a failure);
//! - the execution's counts equal its children: `summary.children` per state,
//!   nothing pending or running, and `per_agent` successes per agent.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

/// States in which a child is over.
pub const TERMINAL_CHILD_STATES: [&str; 5] =
    ["succeeded", "failed", "cancelled", "timed_out", "lost"];

/// The child's command: sleeps `sleep_s`, then records the host (agent) and
/// attempt it ran as in its outputs. `sleep` must be in the agents' image
/// (`deploy/docker/stage.sh --with /usr/bin/sleep`).
pub fn child_cmd(sleep_s: &str) -> String {
    format!(
        "sleep {sleep_s}; echo \"ran_on=$HOSTNAME\" >> \"$BATON_OUTPUT\"; \
         echo \"attempt=$BATON_ATTEMPT\" >> \"$BATON_OUTPUT\""
    )
}

/// A history that passed: what the scenario may assert further.
#[derive(Debug, Clone, Default)]
pub struct Checked {
    /// Children that needed more than one attempt: index → agent of each attempt.
    pub retried: BTreeMap<u64, Vec<String>>,
    /// `summary.lost_attempts`.
    pub lost_attempts: u64,
    /// `summary.stale_events`: reports refused as from a superseded attempt.
    pub stale_events: u64,
    /// Succeeded children per agent.
    pub per_agent: BTreeMap<String, u64>,
}

fn u64_of(v: &Value, ptr: &str, errs: &mut Vec<String>) -> u64 {
    v.pointer(ptr).and_then(Value::as_u64).unwrap_or_else(|| {
        errs.push(format!("no unsigned integer at {ptr}"));
        0
    })
}

fn str_of<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

/// Checks the history of an ended execution (`exec show --output json`) that
/// should hold `n` children; `Err` lists every violation found.
pub fn check(show: &Value, n: usize) -> Result<Checked, Vec<String>> {
    let mut errs = Vec::new();
    let status = str_of(show, "/status");
    if !crate::harness::exec::TERMINAL_EXEC_STATES.contains(&status) {
        errs.push(format!("execution not ended: status {status:?}"));
    }
    let Some(children) = show.get("children").and_then(Value::as_array) else {
        return Err(vec!["no `children` array in exec show".to_owned()]);
    };
    if show.get("children_truncated").and_then(Value::as_bool) != Some(false) {
        errs.push("the child listing is truncated (or says nothing about it)".to_owned());
    }
    let total = u64_of(show, "/children_total", &mut errs);
    if total != n as u64 || children.len() != n {
        errs.push(format!(
            "expected {n} children: children_total {total}, listed {}",
            children.len()
        ));
    }

    let mut seen: BTreeSet<(String, u64)> = BTreeSet::new();
    let mut by_state: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_agent: BTreeMap<String, u64> = BTreeMap::new();
    let mut retried = BTreeMap::new();
    let mut extra_attempts = 0u64;
    for c in children {
        let task = str_of(c, "/task").to_owned();
        let Some(index) = c.get("index").and_then(Value::as_u64) else {
            errs.push(format!("child without an index: {c}"));
            continue;
        };
        let name = format!("{task}[{index}]");
        if !seen.insert((task.clone(), index)) {
            errs.push(format!("{name} has more than one record"));
        }
        if index >= n as u64 {
            errs.push(format!("{name} is outside 0..{n}"));
        }
        let state = str_of(c, "/state");
        *by_state.entry(state.to_owned()).or_default() += 1;
        if !TERMINAL_CHILD_STATES.contains(&state) {
            errs.push(format!("{name} has no terminal record: state {state:?}"));
        }
        let attempt = c.get("attempt").and_then(Value::as_u64).unwrap_or(0);
        let agents: Vec<String> = c
            .get("attempt_agents")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let agent = str_of(c, "/agent");
        if attempt == 0 {
            errs.push(format!("{name} has attempt 0"));
            continue;
        }
        extra_attempts += attempt - 1;
        if agents.len() as u64 != attempt {
            errs.push(format!(
                "{name}: attempt {attempt} but {} placements {agents:?}",
                agents.len()
            ));
        }
        if agents.last().map(String::as_str) != Some(agent) {
            errs.push(format!(
                "{name}: recorded agent {agent:?} is not its last attempt's ({agents:?})"
            ));
        }
        if attempt > 1 {
            retried.insert(index, agents.clone());
        }
        if state == "succeeded" {
            *per_agent.entry(agent.to_owned()).or_default() += 1;
            let ran_on = str_of(c, "/outputs/ran_on");
            let ran_attempt = str_of(c, "/outputs/attempt");
            if ran_on != agent || ran_attempt != attempt.to_string() {
                errs.push(format!(
                    "{name}: record says attempt {attempt} on {agent:?}, but its outputs \
                     came from attempt {ran_attempt:?} on {ran_on:?} (a superseded attempt's \
                     completion was applied)"
                ));
            }
        }
    }
    for i in 0..n as u64 {
        if !seen.iter().any(|(_, idx)| *idx == i) {
            errs.push(format!("child {i} is missing"));
        }
    }

    let count = |s: &str| by_state.get(s).copied().unwrap_or(0);
    let succeeded = u64_of(show, "/summary/children/succeeded", &mut errs);
    let failed = u64_of(show, "/summary/children/failed", &mut errs);
    let cancelled = u64_of(show, "/summary/children/cancelled", &mut errs);
    let pending = u64_of(show, "/summary/children/pending", &mut errs);
    let running = u64_of(show, "/summary/children/running", &mut errs);
    let summary_total = u64_of(show, "/summary/children/total", &mut errs);
    if summary_total != children.len() as u64 {
        errs.push(format!(
            "summary total {summary_total} != {} children listed",
            children.len()
        ));
    }
    if succeeded != count("succeeded") {
        errs.push(format!(
            "summary says {succeeded} succeeded, the children {}",
            count("succeeded")
        ));
    }
    let not_succeeded = children.len() as u64 - count("succeeded");
    if failed + cancelled != not_succeeded || pending != 0 || running != 0 {
        errs.push(format!(
            "summary failed {failed} + cancelled {cancelled}, pending {pending}, running \
             {running}: the children hold {not_succeeded} ended without success ({by_state:?})"
        ));
    }
    let summary_per_agent: BTreeMap<String, u64> = show
        .pointer("/summary/per_agent")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(a, v)| {
                    (
                        a.clone(),
                        v.get("succeeded").and_then(Value::as_u64).unwrap_or(0),
                    )
                })
                .filter(|(_, s)| *s > 0)
                .collect()
        })
        .unwrap_or_default();
    if summary_per_agent != per_agent {
        errs.push(format!(
            "summary per_agent successes {summary_per_agent:?} != the children's {per_agent:?}"
        ));
    }
    let lost_attempts = u64_of(show, "/summary/lost_attempts", &mut errs);
    if lost_attempts != extra_attempts {
        errs.push(format!(
            "the children made {extra_attempts} attempts beyond their first, but the summary \
             records {lost_attempts} lost attempts (an attempt without a recorded loss)"
        ));
    }
    let stale_events = u64_of(show, "/summary/stale_events", &mut errs);
    if errs.is_empty() {
        Ok(Checked {
            retried,
            lost_attempts,
            stale_events,
            per_agent,
        })
    } else {
        Err(errs)
    }
}

/// [`check`], panicking with every violation and a brief of the execution.
pub fn assert_history(show: &Value, n: usize, scenario: &str) -> Checked {
    match check(show, n) {
        Ok(c) => c,
        Err(errs) => panic!(
            "{scenario}: the recorded history is wrong ({} violations):\n  {}\nsummary: {}",
            errs.len(),
            errs.join("\n  "),
            show.get("summary").cloned().unwrap_or(Value::Null)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn child(index: u64, agents: &[&str], ran_on: &str, ran_attempt: u64) -> Value {
        json!({
            "task": "fan", "index": index, "state": "succeeded",
            "attempt": agents.len(), "agent": agents.last().copied().unwrap_or(""),
            "attempt_agents": agents,
            "outputs": {"ran_on": ran_on, "attempt": ran_attempt.to_string()},
        })
    }

    /// Three children: one re-ran on a-2 after a-1 was lost.
    fn good() -> Value {
        json!({
            "status": "succeeded", "children_total": 3, "children_truncated": false,
            "summary": {
                "children": {"total": 3, "succeeded": 3, "failed": 0, "cancelled": 0, "pending": 0, "running": 0},
                "per_agent": {"a-1": {"succeeded": 1, "failed": 0}, "a-2": {"succeeded": 2, "failed": 0}},
                "lost_attempts": 1, "stale_events": 1,
            },
            "children": [
                child(0, &["a-1"], "a-1", 1),
                child(1, &["a-1", "a-2"], "a-2", 2),
                child(2, &["a-2"], "a-2", 1),
            ],
        })
    }

    fn violations(v: &Value, n: usize) -> Vec<String> {
        check(v, n).expect_err("the checker should refuse this history")
    }

    #[test]
    fn a_consistent_history_passes_and_reports_the_retried_child() {
        let c = check(&good(), 3).expect("consistent");
        assert_eq!(c.retried.get(&1).map(Vec::len), Some(2));
        assert_eq!((c.lost_attempts, c.stale_events), (1, 1));
        assert_eq!(c.per_agent.get("a-2"), Some(&2));
    }

    #[test]
    fn a_child_recorded_twice_or_missing_is_refused() {
        let mut v = good();
        v["children"][2] = child(1, &["a-2"], "a-2", 1);
        let e = violations(&v, 3);
        assert!(
            e.iter()
                .any(|m| m.contains("fan[1] has more than one record")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("child 2 is missing")), "{e:?}");
    }

    #[test]
    fn a_completion_of_a_superseded_attempt_is_refused() {
        let mut v = good();
        // The record of child 1 holds what attempt 1 on a-1 wrote.
        v["children"][1] = child(1, &["a-1", "a-2"], "a-1", 1);
        let e = violations(&v, 3);
        assert!(e.iter().any(|m| m.contains("superseded attempt")), "{e:?}");
    }

    #[test]
    fn counts_that_disagree_with_the_children_are_refused() {
        let mut v = good();
        v["summary"]["children"]["succeeded"] = json!(4);
        v["summary"]["per_agent"]["a-1"]["succeeded"] = json!(2);
        let e = violations(&v, 3);
        assert!(
            e.iter().any(|m| m.contains("summary says 4 succeeded")),
            "{e:?}"
        );
        assert!(e.iter().any(|m| m.contains("per_agent")), "{e:?}");
    }

    #[test]
    fn an_attempt_without_a_recorded_loss_is_refused() {
        let mut v = good();
        v["summary"]["lost_attempts"] = json!(0);
        let e = violations(&v, 3);
        assert!(
            e.iter().any(|m| m.contains("without a recorded loss")),
            "{e:?}"
        );
    }

    #[test]
    fn a_child_still_running_or_placements_out_of_step_are_refused() {
        let mut v = good();
        v["children"][0]["state"] = json!("running");
        v["children"][2]["attempt"] = json!(2);
        let e = violations(&v, 3);
        assert!(
            e.iter()
                .any(|m| m.contains("fan[0] has no terminal record")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("fan[2]: attempt 2 but 1 placements")),
            "{e:?}"
        );
    }

    #[test]
    fn a_truncated_or_short_listing_is_refused() {
        let mut v = good();
        v["children_truncated"] = json!(true);
        let e = violations(&v, 4);
        assert!(e.iter().any(|m| m.contains("truncated")), "{e:?}");
        assert!(e.iter().any(|m| m.contains("expected 4 children")), "{e:?}");
    }
}
