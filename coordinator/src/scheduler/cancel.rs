//! Cancelling an execution: pending children end `cancelled` at once; children
//! on agents are asked to stop (`CancelJob`: SIGTERM, grace, SIGKILL on the
//! process group) and end `cancelled` when the agent reports — unless the
//! parent says `children_on_cancel = "abandon"`: then they run to their end,
//! their results are recorded, and the execution ends `cancelled` after them. Nothing is
//! dispatched or retried afterwards, and the request is persisted, so a
//! coordinator restart carries the cancellation on. The answer
//! ([`CancelOutcome`]) says what the request did — children cancelled before
//! they started, children asked to stop, or nothing because the execution had
//! already ended — so that a cancel of an execution whose children all waited
//! for capacity (it ends at once) is not taken for one that had ended.
//!
//! One child can be cancelled alone ([`Scheduler::cancel_child`]): the same steps for
//! that child only, with the request persisted on the child's record. Its task then
//! completes as it always does, with one child that did not succeed, so the
//! execution ends `failed` once that task's other children are done — the rule for
//! every child that does not succeed; the other children are not touched.

use std::fmt;

use tracing::info;

use super::child::{ChildState, End, Step};
use super::model::{ChildRef, Effect};
use super::state::Scheduler;
use crate::clock::Now;
use crate::domain::CancelSpec;
use crate::error::CoordinatorError;
use crate::records::{ExecutionState, Phase};

/// Where a cancel request left an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelState {
    /// Children on agents are stopping; it ends `cancelled` after them.
    Cancelling,
    /// It has ended in this state: `cancelled` when nothing was left
    /// running, or the state it had already ended in.
    Ended(ExecutionState),
}

impl CancelState {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelState::Cancelling => "cancelling",
            CancelState::Ended(state) => state.as_str(),
        }
    }
}

impl fmt::Display for CancelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a cancel request left one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildCancelState {
    /// Its agent is asked to stop it.
    Cancelling,
    /// It has ended in this phase: `cancelled` (it was pending), or the
    /// phase it had already ended in.
    Ended(Phase),
}

impl ChildCancelState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildCancelState::Cancelling => "cancelling",
            ChildCancelState::Ended(phase) => phase.as_str(),
        }
    }
}

impl fmt::Display for ChildCancelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request to cancel an execution did, so that the caller can say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelOutcome {
    pub state: CancelState,
    /// The execution had ended before the request: nothing changed.
    pub already_ended: bool,
    /// Pending children this request cancelled before they started.
    pub children_cancelled: u64,
    /// Children on agents this request asked to stop.
    pub children_stopping: u64,
}

impl CancelOutcome {
    /// The answer about an execution that had already ended in `state`.
    pub fn ended(state: ExecutionState) -> Self {
        CancelOutcome {
            state: CancelState::Ended(state),
            already_ended: true,
            children_cancelled: 0,
            children_stopping: 0,
        }
    }
}

impl Scheduler {
    /// Requests cancellation of a running execution and says what it did.
    pub fn cancel(
        &mut self,
        id: &str,
        reason: &str,
        now: Now,
    ) -> Result<CancelOutcome, CoordinatorError> {
        self.at(now);
        self.cancel_execution(id, reason)
    }

    /// [`Scheduler::cancel`] at the time of the input being handled (a
    /// sub-execution is cancelled within its parent's input).
    pub(super) fn cancel_execution(
        &mut self,
        id: &str,
        reason: &str,
    ) -> Result<CancelOutcome, CoordinatorError> {
        let slot = self
            .execs
            .slot_of(id)
            .ok_or_else(|| CoordinatorError::ExecutionNotFound(id.to_string()))?;
        let e = self
            .execs
            .get_mut(slot)
            .ok_or_else(|| CoordinatorError::ExecutionNotFound(id.to_string()))?;
        if e.rec.state.is_terminal() {
            // Ended, not yet evicted from memory: the request changes nothing.
            return Ok(CancelOutcome::ended(e.rec.state));
        }
        if !e.rec.cancel_requested {
            e.rec.cancel_requested = true;
            e.rec.reason = if reason.is_empty() {
                "cancelled".to_string()
            } else {
                format!("cancelled: {reason}")
            };
            e.touched = true;
            self.journal.exec(slot);
            info!(execution = %id, %reason, "execution cancel requested");
        }
        let (children_cancelled, children_stopping) = self.cancel_children(slot);
        self.advance(slot);
        let e = self
            .execs
            .get(slot)
            .ok_or_else(|| CoordinatorError::ExecutionNotFound(id.to_string()))?;
        Ok(CancelOutcome {
            state: if e.rec.state.is_terminal() {
                CancelState::Ended(e.rec.state)
            } else {
                CancelState::Cancelling
            },
            already_ended: false,
            children_cancelled,
            children_stopping,
        })
    }

    /// Cancels what is pending and asks agents to stop what runs; returns
    /// how many children it cancelled and how many it asked to stop.
    pub(crate) fn cancel_children(&mut self, slot: u64) -> (u64, u64) {
        let Some(e) = self.execs.get_mut(slot) else {
            return (0, 0);
        };
        let abandon = e.plan.parent.children_on_cancel == baton_package::ChildrenOnCancel::Abandon;
        let mut pending = Vec::new();
        let mut on_agent = Vec::new();
        for (t, task) in e.tasks.iter_mut().enumerate() {
            task.clear_queue();
            for (i, c) in task.children.iter().enumerate() {
                let cref = ChildRef {
                    exec: slot,
                    task: t as u16,
                    child: i as u32,
                };
                match c.rec.phase {
                    Phase::Pending => pending.push(cref),
                    p if p.is_on_agent() => on_agent.push(cref),
                    _ => {}
                }
            }
        }
        let cancelled = pending.len() as u64;
        for cref in pending {
            if let Some(c) = self.child_mut(cref) {
                c.rec.reason = "execution cancelled before the child started".to_string();
            }
            self.set_state(cref, Step::End(End::Cancelled));
        }
        if abandon {
            // `children_on_cancel = "abandon"`: running children finish on
            // their own; the execution records them and ends `cancelled`.
            info!(
                children = on_agent.len(),
                "execution cancelled; its running children are abandoned, not stopped"
            );
            return (cancelled, 0);
        }
        let stopping = on_agent.len() as u64;
        for cref in on_agent {
            self.request_stop(cref);
        }
        (cancelled, stopping)
    }

    /// Cancels one child of a running execution; returns the child's state after
    /// the request: `cancelled` (it was pending), `cancelling` (its agent is asked
    /// to stop it) or the terminal state it already had.
    pub fn cancel_child(
        &mut self,
        id: &str,
        task: &str,
        index: u32,
        reason: &str,
        now: Now,
    ) -> Result<ChildCancelState, CoordinatorError> {
        self.at(now);
        let slot = self
            .execs
            .slot_of(id)
            .ok_or_else(|| CoordinatorError::ExecutionNotFound(id.to_string()))?;
        let e = self
            .execs
            .get_mut(slot)
            .ok_or_else(|| CoordinatorError::ExecutionNotFound(id.to_string()))?;
        let have: Vec<String> = (e.plan.tasks.iter().zip(&e.tasks))
            .filter(|(_, run)| !run.children.is_empty())
            .map(|(t, run)| match run.children.len() {
                1 => format!("{}[0]", t.name),
                n => format!("{}[0]..{}[{}]", t.name, t.name, n - 1),
            })
            .collect();
        let no_child = || {
            CoordinatorError::ChildNotFound(format!(
                "execution {id} has no child {task}[{index}]; its children are {}",
                have.join(", ")
            ))
        };
        let t = *e.task_index.get(task).ok_or_else(no_child)?;
        let run = &mut e.tasks[t as usize];
        let c = run.children.get_mut(index as usize).ok_or_else(no_child)?;
        let phase = c.rec.phase;
        if phase.is_terminal() {
            return Ok(ChildCancelState::Ended(phase));
        }
        let cref = ChildRef {
            exec: slot,
            task: t,
            child: index,
        };
        if !c.rec.cancel_requested {
            c.rec.cancel_requested = true;
            c.rec.reason = if reason.is_empty() {
                "cancelled by request".to_string()
            } else {
                format!("cancelled: {reason}")
            };
            self.journal.child(cref);
            info!(execution = %id, child = %format!("{task}[{index}]"), %reason, "child cancel requested");
        }
        if phase == Phase::Pending {
            run.unqueue(index);
            self.set_state(cref, Step::End(End::Cancelled));
            self.advance(slot);
            return Ok(ChildCancelState::Ended(Phase::Cancelled));
        }
        self.request_stop(cref);
        Ok(ChildCancelState::Cancelling)
    }

    /// After a restart: asks again to stop the children cancelled one by one
    /// that are still on their agents (the first `CancelJob` may have been lost).
    pub(crate) fn restop_cancelled_children(&mut self, slot: u64) {
        let Some(e) = self.execs.get(slot) else {
            return;
        };
        let mut again = Vec::new();
        for (t, task) in e.tasks.iter().enumerate() {
            for (i, c) in task.children.iter().enumerate() {
                if c.rec.cancel_requested && matches!(c.rec.phase, Phase::Accepted | Phase::Running)
                {
                    again.push(ChildRef {
                        exec: slot,
                        task: t as u16,
                        child: i as u32,
                    });
                }
            }
        }
        for cref in again {
            self.request_stop(cref);
        }
    }

    /// Emits a `CancelJob` for a child's current attempt on its agent.
    pub(crate) fn request_stop(&mut self, cref: ChildRef) {
        let Some(e) = self.execs.get(cref.exec) else {
            return;
        };
        let c = &e.tasks[cref.task as usize].children[cref.child as usize];
        if matches!(c.state(), ChildState::SubExecution { .. }) {
            let reason = if c.rec.cancel_requested {
                c.rec.reason.clone()
            } else {
                e.rec.reason.clone()
            };
            self.cancel_nested(cref, &reason);
            return;
        }
        let Some(agent) = c.state().agent().map(|a| a.to_string()) else {
            return;
        };
        let Some(a) = self.registry.get(&agent) else {
            return;
        };
        let spec = CancelSpec {
            dispatch_id: c.dispatch_id(&e.rec.id),
            reason: if c.rec.cancel_requested {
                c.rec.reason.clone()
            } else {
                e.rec.reason.clone()
            },
        };
        let address = a.rec.address.clone();
        self.journal.effect(Effect::Cancel {
            agent,
            address,
            spec,
        });
    }

    /// Whether `cref` is being cancelled, alone or with its execution.
    pub(crate) fn cancelling(&self, cref: ChildRef) -> bool {
        self.execs.get(cref.exec).is_some_and(|e| {
            e.rec.cancel_requested
                || e.tasks[cref.task as usize].children[cref.child as usize]
                    .rec
                    .cancel_requested
        })
    }
}
