//! Scheduler unit tests of cancelling one child (`CancelChild`).

use std::time::Duration;

use crate::domain::JobStatus;

use super::tests::{finished, reg, sched, settle, start, summary};
use super::*;
use crate::records::Phase;

/// The `CancelJob` effects taken from the scheduler, as (task, index, reason).
fn cancels(s: &mut Scheduler) -> Vec<(String, u32, String)> {
    s.take_effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Cancel { spec, .. } => {
                let id = spec.dispatch_id;
                Some((id.task_path, id.item_index, spec.reason))
            }
            _ => None,
        })
        .collect()
}

fn phase(s: &Scheduler, index: u32) -> Phase {
    s.execution_view("e1")
        .unwrap()
        .children
        .iter()
        .find(|c| c.index == index)
        .unwrap()
        .phase
}

#[test]
fn a_pending_child_is_cancelled_at_once_and_never_started() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    start(&mut s, 3);
    let d = settle(&mut s, now);
    assert_eq!(d.len(), 1, "one slot");
    let running = d[0].1.child;
    let pending = (0..3).find(|i| *i != running).unwrap();
    assert_eq!(
        s.cancel_child("e1", "fan", pending, "not today", Now::read())
            .unwrap(),
        ChildCancelState::Ended(Phase::Cancelled)
    );
    assert!(cancels(&mut s).is_empty(), "nothing runs on an agent");
    let c = s.execution_view("e1").unwrap().children[pending as usize].clone();
    assert_eq!(
        (c.phase, c.reason.as_str(), c.cancel_requested),
        (Phase::Cancelled, "cancelled: not today", true)
    );
    // The others carry on; the cancelled one is never dispatched.
    s.agent_event("a", finished(1, &d[0].3, JobStatus::Succeeded), now);
    let next = settle(&mut s, now);
    assert_eq!(next.len(), 1);
    assert_ne!(next[0].1.child, pending);
    s.agent_event("a", finished(2, &next[0].3, JobStatus::Succeeded), now);
    // The task has a child that did not succeed: the execution fails, as for any
    // such child, once the others are done.
    let v = s.execution_view("e1").unwrap();
    assert_eq!(
        (
            v.summary.state.as_str(),
            v.summary.succeeded,
            v.summary.cancelled
        ),
        ("failed", 2, 1)
    );
    assert!(v.summary.reason.contains("1 of 3 children"), "{v:?}");
}

#[test]
fn a_running_child_is_stopped_on_its_agent_alone_and_not_retried() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 3, "b1", now);
    start(&mut s, 3);
    let d = settle(&mut s, now);
    for (agent, child, attempt, _) in &d {
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, now);
    }
    let (_, target, _, id) = d[1].clone();
    let i = target.child;
    assert_eq!(
        s.cancel_child("e1", "fan", i, "", Now::read()).unwrap(),
        ChildCancelState::Cancelling
    );
    assert_eq!(
        cancels(&mut s),
        [("fan".to_string(), i, "cancelled by request".to_string())],
        "one CancelJob, for that child only"
    );
    assert_eq!(
        s.cancel_child("e1", "fan", i, "", Now::read()).unwrap(),
        ChildCancelState::Cancelling,
        "asking again is harmless"
    );
    let _ = cancels(&mut s);
    // The agent ends it (the retry policy allows 2 attempts: none is made).
    s.agent_event("a", finished(1, &id, JobStatus::Cancelled), now);
    assert!(settle(&mut s, now).is_empty(), "no retry");
    let c = s.execution_view("e1").unwrap().children[i as usize].clone();
    assert_eq!(
        (c.phase, c.attempt, c.reason.as_str()),
        (Phase::Cancelled, 1, "cancelled by request")
    );
    assert_eq!(summary(&s).state, "running", "the siblings still run");
    assert_eq!(
        s.cancel_child("e1", "fan", i, "", Now::read()).unwrap(),
        ChildCancelState::Ended(Phase::Cancelled),
        "an ended child says how it ended"
    );
}

#[test]
fn a_cancelled_child_that_fails_or_is_lost_is_not_retried() {
    let t0 = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", t0);
    reg(&mut s, "b", 1, "b1", t0);
    start(&mut s, 2);
    let d = settle(&mut s, t0);
    assert_eq!(d.len(), 2);
    for (agent, child, attempt, _) in &d {
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, t0);
        s.cancel_child("e1", "fan", child.child, "", Now::read())
            .unwrap();
    }
    // One exits with a failure before the signal lands; the other's agent is lost.
    let (fa, fc, _, fid) = d[0].clone();
    s.agent_event(&fa, finished(1, &fid, JobStatus::Failed), t0);
    let later = t0 + Duration::from_secs(6);
    reg(&mut s, &fa, 1, "b1", later);
    s.tick(later);
    assert_eq!(phase(&s, fc.child), Phase::Failed);
    assert_eq!(phase(&s, d[1].1.child), Phase::Cancelled);
    assert!(settle(&mut s, later).is_empty(), "neither is retried");
}

#[test]
fn a_child_accepted_after_its_cancel_is_stopped_again() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    start(&mut s, 2);
    let d = settle(&mut s, now);
    let (agent, child, attempt, _) = d[0].clone();
    assert_eq!(
        s.cancel_child("e1", "fan", child.child, "", Now::read())
            .unwrap(),
        ChildCancelState::Cancelling
    );
    assert_eq!(cancels(&mut s).len(), 1);
    s.dispatch_result(child, &agent, attempt, DispatchOutcome::Accepted, now);
    assert_eq!(cancels(&mut s).len(), 1, "the late acceptance is stopped");
    // A dispatch that never answered ends cancelled without running.
    let (agent, child, attempt, _) = d[1].clone();
    s.cancel_child("e1", "fan", child.child, "", Now::read())
        .unwrap();
    s.dispatch_result(
        child,
        &agent,
        attempt,
        DispatchOutcome::Unknown("timeout".into()),
        now,
    );
    assert_eq!(phase(&s, child.child), Phase::Cancelled);
}

#[test]
fn a_restart_asks_again_to_stop_children_cancelled_alone() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 2, "b1", now);
    start(&mut s, 2);
    let d = settle(&mut s, now);
    for (agent, child, attempt, _) in &d {
        s.dispatch_result(*child, agent, *attempt, DispatchOutcome::Accepted, now);
    }
    s.cancel_child("e1", "fan", d[0].1.child, "", Now::read())
        .unwrap();
    let _ = cancels(&mut s);
    // What recovery does for an execution that is not cancelled as a whole.
    let slot = d[0].1.exec;
    s.restop_cancelled_children(slot);
    let again = cancels(&mut s);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, d[0].1.child);
}

#[test]
fn unknown_children_and_executions_are_named() {
    let now = Now::read();
    let mut s = sched();
    reg(&mut s, "a", 1, "b1", now);
    start(&mut s, 2);
    let e = s.cancel_child("e1", "fan", 7, "", Now::read()).unwrap_err();
    assert_eq!(e.code(), "CHILD_NOT_FOUND");
    assert!(e.to_string().contains("no child fan[7]"), "{e}");
    assert!(
        e.to_string().ends_with("its children are fan[0]..fan[1]"),
        "{e}"
    );
    assert_eq!(
        s.cancel_child("e1", "nope", 0, "", Now::read())
            .unwrap_err()
            .code(),
        "CHILD_NOT_FOUND"
    );
    assert_eq!(
        s.cancel_child("e9", "fan", 0, "", Now::read())
            .unwrap_err()
            .code(),
        "EXECUTION_NOT_FOUND"
    );
}
