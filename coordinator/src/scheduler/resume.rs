//! Resuming an ended execution (`baton exec resume`): the execution runs again
//! from where it stopped. Every child that did not succeed (failed, timed out,
//! cancelled, lost) goes back to `pending` under a new attempt number, with its
//! retry budget renewed; succeeded children keep their results and are never
//! started again; tasks after the one that stopped run as they would have.
//!
//! The caller (the API) reads the ended execution and its children from the
//! store and plans its bundle again; the scheduler checks that it is resumable,
//! rewrites the records (compare-and-swap on the revisions that were read, so a
//! concurrent writer makes the commit fail rather than be overwritten) and
//! restores it as a running execution.

use tracing::info;

use super::state::Scheduler;
use crate::clock::Now;
use crate::error::CoordinatorError;
use crate::prepare::Plan;
use crate::records::{ChildRecord, ExecutionRecord, ExecutionState, Phase};

/// Why an execution in `state` cannot be resumed, if it cannot.
pub fn refusal(state: ExecutionState) -> Option<&'static str> {
    match state {
        ExecutionState::Failed | ExecutionState::Cancelled => None,
        ExecutionState::Succeeded => Some("it succeeded; there is nothing to re-run"),
        ExecutionState::Running => Some("it is still running"),
    }
}

/// Resets one child of a resumed execution; `true` when it will run again.
pub fn reset_child(c: &mut ChildRecord) -> bool {
    if !c.phase.is_terminal() || c.phase == Phase::Succeeded {
        return false;
    }
    c.phase = Phase::Pending;
    // A new attempt number: late reports about the old one are stale, and the
    // agent sees a new dispatch id (its idempotency does not replay the old end).
    c.attempt += 1;
    c.agent = None;
    c.failures = 0;
    c.lost = 0;
    c.exit_code = None;
    c.reason = String::new();
    c.outputs.clear();
    c.started_unix_ms = 0;
    c.finished_unix_ms = 0;
    c.pid = 0;
    c.rows = None;
    c.cancel_requested = false;
    true
}

impl Scheduler {
    /// Makes an ended execution run again; returns how many children will run.
    /// `rec` and `stored` are the records as read, with their revisions.
    pub fn resume(
        &mut self,
        mut rec: ExecutionRecord,
        version: u64,
        plan: Plan,
        stored: Vec<(ChildRecord, u64)>,
        now: Now,
    ) -> Result<u64, CoordinatorError> {
        if let Some(slot) = self.execs.slot_of(rec.id.as_str()) {
            let ending = self
                .execs
                .get(slot)
                .is_some_and(|e| e.rec.state.is_terminal());
            let why = if ending {
                "it is ending right now; try again in a moment"
            } else {
                "it is still running"
            };
            return Err(CoordinatorError::NotResumable {
                id: rec.id,
                why: why.into(),
            });
        }
        if let Some(why) = refusal(rec.state) {
            return Err(CoordinatorError::NotResumable {
                id: rec.id,
                why: why.into(),
            });
        }
        let mut again = 0u64;
        let mut reset = Vec::new();
        let children: Vec<(ChildRecord, u64)> = stored
            .into_iter()
            .map(|(mut c, v)| {
                if reset_child(&mut c) {
                    again += 1;
                    reset.push((c.task.clone(), c.index));
                }
                (c, v)
            })
            .collect();
        rec.state = ExecutionState::Running;
        rec.cancel_requested = false;
        rec.reason = String::new();
        rec.finished_unix_ms = 0;
        rec.final_counts = None;
        rec.resumes += 1;
        // The re-run is a span of its own, under the first run's.
        rec.trace = rec
            .trace
            .as_ref()
            .and_then(|t| t.resumed(rec.resumes, now.unix_ms));
        rec.task_states.clear();
        // Rows that could not be read are read again; "there were none" stands.
        rec.rows_outcomes
            .retain(|_, o| *o == crate::records::RowsOutcome::Empty);
        info!(execution = %rec.id, resumes = rec.resumes, children = again, "execution resumed");
        let id = rec.id.clone();
        self.restore_execution(rec, version, plan, children, now);
        // Write the execution and every reset child (CAS on the revisions read).
        let Some(slot) = self.execs.slot_of(id.as_str()) else {
            return Ok(again);
        };
        self.journal.exec(slot);
        let Some(e) = self.execs.get(slot) else {
            return Ok(again);
        };
        let mut dirty = Vec::with_capacity(reset.len());
        for (task, index) in reset {
            if let Some(&t) = e.task_index.get(task.as_str()) {
                dirty.push(super::model::ChildRef {
                    exec: slot,
                    task: t,
                    child: index,
                });
            }
        }
        for c in dirty {
            self.journal.child(c);
        }
        if let Some(e) = self.execs.get_mut(slot) {
            e.touched = true;
        }
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn child(phase: Phase) -> ChildRecord {
        ChildRecord {
            task: "fan".into(),
            index: 0,
            item: "1".into(),
            phase,
            attempt: 2,
            agent: Some("a1".into()),
            attempt_agents: vec!["a1".into(), "a1".into()],
            failures: 2,
            lost: 1,
            exit_code: Some(3),
            reason: "exit 3".into(),
            outputs: BTreeMap::from([("k".into(), "v".into())]),
            started_unix_ms: 5,
            finished_unix_ms: 6,
            pid: 77,
            cancel_requested: true,
            rows: Some(3),
        }
    }

    #[test]
    fn only_children_that_did_not_succeed_run_again() {
        for p in [
            Phase::Failed,
            Phase::TimedOut,
            Phase::Cancelled,
            Phase::Lost,
        ] {
            let mut c = child(p);
            assert!(reset_child(&mut c), "{p:?}");
            assert_eq!(c.phase, Phase::Pending);
            assert_eq!(c.attempt, 3, "a new attempt number fences the old one");
            assert_eq!((c.failures, c.lost), (0, 0), "the retry budget is renewed");
            assert!(c.outputs.is_empty() && c.exit_code.is_none() && !c.cancel_requested);
            assert_eq!(c.rows, None);
            assert_eq!(c.attempt_agents.len(), 2, "the history of attempts stays");
        }
        let mut ok = child(Phase::Succeeded);
        assert!(!reset_child(&mut ok));
        assert_eq!(
            ok,
            child(Phase::Succeeded),
            "a succeeded child is untouched"
        );
        for p in [
            Phase::Pending,
            Phase::Dispatching,
            Phase::Accepted,
            Phase::Running,
        ] {
            let mut c = child(p);
            assert!(!reset_child(&mut c));
        }
    }

    #[test]
    fn only_failed_and_cancelled_executions_resume() {
        assert!(refusal(ExecutionState::Failed).is_none());
        assert!(refusal(ExecutionState::Cancelled).is_none());
        assert!(refusal(ExecutionState::Succeeded).is_some());
        assert!(refusal(ExecutionState::Running).is_some());
    }
}
