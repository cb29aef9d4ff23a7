//! Scheduler unit tests of operator actions: cancelling an execution, cordon
//! and drain, and revoking an agent's certificate.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::domain::{AgentReport, Heartbeat, JobStatus, ReportBody};

use super::tests::{commit, finished, reg, sched, settle, start, summary};
use super::*;
use crate::records::{ExecutionState, Phase};
fn cancels(s: &mut Scheduler) -> usize {
    s.take_effects()
        .iter()
        .filter(|e| matches!(e, Effect::Cancel { .. }))
        .count()
}

#[test]
fn cancel_ends_pending_children_at_once_and_stops_running_ones() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    start(&mut s, 5);
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 2);
    for (agent, child, attempt, _) in &d {
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, now);
    }
    assert_eq!(
        s.cancel("e1", "operator", Now::read()).unwrap().state,
        CancelState::Cancelling
    );
    assert_eq!(cancels(&mut s), 2, "one CancelJob per running child");
    let sum = summary(&s);
    assert_eq!(
        (sum.pending, sum.running, sum.failed, sum.cancelled),
        (0, 2, 0, 3),
        "pending children cancelled at once"
    );
    assert!(
        settle(&mut s, now).is_empty(),
        "nothing is dispatched after a cancel"
    );
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Cancelled), now);
    s.agent_event("a", finished(2, &d[1].3, JobStatus::Cancelled), now);
    let v = s.execution_view("e1").unwrap();
    assert_eq!(v.summary.state, "cancelled");
    assert!(v.children.iter().all(|c| c.phase == Phase::Cancelled));
}

#[test]
fn cancel_does_not_retry_failed_or_lost_children() {
    let t0 = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", t0);
    reg(&mut s, "b", 1, "b1", t0);
    start(&mut s, 2);
    let d = settle(&mut s, t0);
    let rx = s.watch("e1").unwrap();
    s.cancel("e1", "", Now::read()).unwrap();
    // One child fails (policy would retry it), the other's agent is lost.
    let (fa, _, _, fid) = d[0].clone();
    s.agent_event(&fa, finished(1, &fid, JobStatus::Failed), t0);
    let other = if fa == "a" { "b" } else { "a" };
    let later = t0 + Duration::from_secs(6);
    reg(&mut s, &fa, 1, "b1", later);
    s.tick(later);
    assert!(s.registry.get(other).unwrap().lost);
    assert!(settle(&mut s, later).is_empty(), "no retry after a cancel");
    let last = rx.borrow().clone();
    assert_eq!(
        (last.state.as_str(), last.failed, last.cancelled),
        ("cancelled", 1, 1)
    );
}

#[test]
fn a_start_accepted_after_the_cancel_is_stopped_again() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    start(&mut s, 1);
    let d = settle(&mut s, now);
    s.cancel("e1", "", Now::read()).unwrap();
    assert_eq!(cancels(&mut s), 1);
    s.dispatch_result(d[0].1, "a", 1, DispatchOutcome::Accepted, now);
    assert_eq!(
        cancels(&mut s),
        1,
        "the late acceptance gets its own CancelJob"
    );
    assert_eq!(summary(&s).state, "running", "ends when the agent reports");
}

fn state_of(s: &Scheduler, name: &str) -> &'static str {
    s.agent_list()
        .into_iter()
        .find(|a| a.rec.name == name)
        .unwrap()
        .state
        .as_str()
}

#[test]
fn cordoned_and_draining_agents_get_no_new_work_and_keep_it_across_restarts() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    reg(&mut s, "b", 2, "b1", now);
    s.set_admin("b", AdminAction::Cordon, Now::read()).unwrap();
    assert_eq!(state_of(&s, "b"), "cordoned");
    start(&mut s, 4);
    let d = settle(&mut s, now);
    assert!(
        d.iter().all(|x| x.0 == "a"),
        "nothing on a cordoned agent: {d:?}"
    );
    // The agent restarts (new boot): the operator's cordon stays.
    reg(&mut s, "b", 2, "b2", now);
    assert_eq!(state_of(&s, "b"), "cordoned");
    // Drain a, which runs two children: draining until they end, then drained.
    s.set_admin("a", AdminAction::Drain, Now::read()).unwrap();
    assert_eq!(state_of(&s, "a"), "draining");
    for (i, x) in d.iter().enumerate() {
        s.agent_event("a", finished(i as u64 + 1, &x.3, JobStatus::Succeeded), now);
    }
    assert_eq!(state_of(&s, "a"), "drained");
    assert!(settle(&mut s, now).is_empty(), "no agent takes work");
    s.set_admin("b", AdminAction::Uncordon, Now::read())
        .unwrap();
    assert_eq!(
        settle(&mut s, now).len(),
        2,
        "uncordoned: the waiting children run"
    );
    assert!(s.set_admin("zz", AdminAction::Cordon, Now::read()).is_err());
    assert_eq!(
        "explode".parse::<AdminAction>().unwrap_err().code(),
        "INVALID_REQUEST"
    );
}

#[test]
fn a_revoked_certificate_is_refused_and_its_children_run_elsewhere() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    reg(&mut s, "b", 1, "b1", now);
    start(&mut s, 2);
    let d = settle(&mut s, now);
    s.revoke("b", Now::read()).unwrap();
    assert_eq!(state_of(&s, "b"), "revoked");
    assert!(
        s.take_effects()
            .iter()
            .any(|e| matches!(e, Effect::ResetStream { agent } if agent == "b"))
    );
    // Its child runs again elsewhere once a frees up; b's late reports are ignored.
    let on_b = d.iter().find(|x| x.0 == "b").unwrap().3.clone();
    s.agent_event("b", finished(1, &on_b, JobStatus::Succeeded), now);
    assert_eq!(
        summary(&s).succeeded,
        0,
        "a revoked agent's report counts for nothing"
    );
    let again = Registration {
        name: "b".into(),
        address: "b:1".into(),
        labels: BTreeMap::new(),
        slots: 1,
        version: "t".into(),
        boot_id: "b2".into(),
        outbox_id: "ob-b".into(),
        cert_fingerprint: "fp-b".into(),
        weight: 1,
    };
    assert_eq!(
        s.register(again.clone(), now).unwrap_err().code(),
        "CERT_REVOKED",
        "the agent is told its certificate was revoked, so that it stops retrying"
    );
    assert_eq!(
        s.open_stream("b", "b1", "fp-b", now).unwrap_err().code(),
        "CERT_REVOKED"
    );
    // A new certificate for the same name is welcome.
    let renewed = Registration {
        cert_fingerprint: "fp-b-new".into(),
        ..again
    };
    assert!(s.register(renewed, now).is_ok());
    let ops = commit(&mut s);
    assert!(
        ops.iter().any(|op| op.key() == "v/fp-b"),
        "the revocation is persisted"
    );
}

#[test]
fn only_a_lost_agent_can_be_removed_and_its_records_go() {
    let t0 = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", t0);
    reg(&mut s, "b", 1, "b1", t0);
    let e = s
        .set_admin("a", AdminAction::Remove, Now::read())
        .unwrap_err();
    assert_eq!(e.code(), "AGENT_ALIVE");
    commit(&mut s);
    // "a" goes silent past its lease; "b" keeps heartbeating.
    let later = t0 + s.config().lease_ttl + Duration::from_millis(10);
    s.agent_event(
        "b",
        AgentReport {
            seq: 0,
            at_unix_ms: 0,
            body: Some(ReportBody::Heartbeat(Heartbeat {
                slots: 1,
                running: 0,
                load1: 0.0,
                draining: false,
            })),
        },
        later,
    );
    s.tick(later);
    s.set_admin("a", AdminAction::Remove, Now::read()).unwrap();
    assert_eq!(
        s.set_admin("a", AdminAction::Remove, Now::read())
            .unwrap_err()
            .code(),
        "AGENT_NOT_FOUND"
    );
    let ops = commit(&mut s);
    let deleted: Vec<&str> = ops
        .iter()
        .filter(|o| matches!(o, crate::store::Op::Delete { .. }))
        .map(|o| o.key())
        .collect();
    assert_eq!(deleted, vec!["a/a", "s/a"]);
    assert_eq!(
        s.set_admin("b", AdminAction::Remove, Now::read())
            .unwrap_err()
            .code(),
        "AGENT_ALIVE"
    );
}

/// Cancelling an execution whose children all wait for capacity ends it at
/// once: the answer says so (it did not "already end"), and the children
/// count as cancelled, not failed.
#[test]
fn cancelling_children_that_wait_for_capacity_says_what_it_did() {
    let now = Now::read();
    let mut s = sched();
    start(&mut s, 3);
    assert!(settle(&mut s, now).is_empty(), "no agent: nothing runs");
    let before = s.watch("e1").unwrap().borrow().clone();
    assert_eq!(before.pending, 3);
    assert!(
        !before.waiting.is_empty(),
        "watchers see why children wait: {before:?}"
    );
    let out = s.cancel("e1", "operator", Now::read()).unwrap();
    assert_eq!(
        out,
        super::CancelOutcome {
            state: CancelState::Ended(ExecutionState::Cancelled),
            already_ended: false,
            children_cancelled: 3,
            children_stopping: 0,
        }
    );
    let sum = summary(&s);
    assert_eq!(
        (sum.state.as_str(), sum.failed, sum.cancelled, sum.total),
        ("cancelled", 0, 3, 3)
    );
    assert!(sum.waiting.is_empty(), "nothing waits any more: {sum:?}");
    let again = s.cancel("e1", "operator", Now::read()).unwrap();
    assert_eq!(
        again,
        super::CancelOutcome::ended(ExecutionState::Cancelled)
    );
}

/// A heartbeat's load that is not a finite non-negative number (NaN, infinity,
/// negative: a broken or hostile agent) is taken as unknown (0), not kept
/// for placement and the fleet view.
#[test]
fn a_heartbeat_load_that_is_not_a_number_counts_as_unknown() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    for (sent, kept) in [
        (1.5, 1.5),
        (f64::NAN, 0.0),
        (f64::INFINITY, 0.0),
        (-3.0, 0.0),
    ] {
        s.agent_event(
            "a",
            AgentReport {
                seq: 0,
                at_unix_ms: 0,
                body: Some(ReportBody::Heartbeat(Heartbeat {
                    slots: 2,
                    running: 0,
                    load1: sent,
                    draining: false,
                })),
            },
            now,
        );
        let view = s.agent_views(now.instant);
        assert_eq!(view[0].load1.to_bits(), f64::to_bits(kept), "sent {sent}");
    }
}

/// A page of an in-memory execution's children: in child order, from the
/// offset, of one phase when asked, with the count of all that match.
#[test]
fn a_children_page_is_cut_from_the_children_in_order() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    let id = start(&mut s, 10);
    let all = s.children_page(&id, 0, 100, "").unwrap();
    assert_eq!(all.total, 10);
    assert_eq!(all.children.len(), 10);
    let page = s.children_page(&id, 4, 3, "").unwrap();
    assert_eq!(page.total, 10);
    let idx: Vec<u32> = page.children.iter().map(|(c, _)| c.index).collect();
    assert_eq!(idx, [4, 5, 6]);
    let view = s.execution_view(&id).unwrap();
    let pending = view
        .children
        .iter()
        .filter(|c| c.phase.as_str() == "pending")
        .count() as u64;
    let only = s.children_page(&id, 0, 100, "pending").unwrap();
    assert_eq!(only.total, pending);
    assert!(
        only.children
            .iter()
            .all(|(c, _)| c.phase.as_str() == "pending")
    );
    assert!(s.children_page("nope", 0, 10, "").is_none());
}
