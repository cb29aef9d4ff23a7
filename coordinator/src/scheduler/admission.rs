//! Admission: whether a new execution may start. The coordinator keeps every
//! unfinished child in memory (about 1 KB each, `docs/benchmarks.md`), so
//! the total of children not yet finished over all running executions is
//! bounded (`--max-pending-children`). A start that would pass the bound is
//! refused as busy with a retry-after hint; an execution that alone is larger
//! than the bound can never start and gets a different error.
//!
//! Executions also grow while they run: a child whose package fans out
//! starts a sub-execution, and a rows foreach makes its children from the
//! rows it reads. That work is held to the same bound ([`Room`]): it waits
//! for room (visible as the child's or the task's waiting reason) and fails
//! only when it can never fit.

use super::Scheduler;
use crate::error::CoordinatorError;
use crate::prepare::Plan;

impl Scheduler {
    /// Children of running executions that have not reached a terminal phase.
    pub fn pending_children(&self) -> u64 {
        self.execs
            .values()
            .filter(|e| !e.rec.state.is_terminal())
            .map(|e| {
                e.tasks
                    .iter()
                    .map(|t| (t.children.len() as u64).saturating_sub(u64::from(t.terminal)))
                    .sum::<u64>()
            })
            .sum()
    }

    /// Refuses a plan that does not fit under `max_pending_children` now
    /// (busy, retry later) or ever (too large).
    pub fn admit(&self, plan: &Plan) -> Result<(), CoordinatorError> {
        let limit = self.config.max_pending_children;
        if limit == 0 {
            return Ok(());
        }
        let adding: u64 = plan.tasks.iter().map(|t| t.items.len() as u64).sum();
        if adding > limit {
            return Err(CoordinatorError::TooLarge { adding, limit });
        }
        let pending = self.pending_children();
        if pending.saturating_add(adding) > limit {
            return Err(CoordinatorError::Busy {
                pending,
                adding,
                limit,
                retry_after_s: self.config.busy_retry_after.as_secs().max(1),
            });
        }
        Ok(())
    }
}

/// Whether work that grows a running execution — a sub-execution's children
/// or the children a rows foreach makes from its rows — may be made now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Room {
    Fits,
    /// Not now: it waits until enough children finish (the reason says why).
    Wait(String),
    /// Never: it alone passes the bound, or nothing else runs that could make room.
    Never(String),
}

impl Scheduler {
    /// Whether `adding` children may join the running executions now. The
    /// bound is the same as for a start ([`Scheduler::admit`]) but a growing
    /// execution is not refused at once: its work waits for room (children
    /// that finish make it). It fails only when it can never fit: alone above
    /// the bound, or when no unfinished child can make progress (each waits
    /// behind a sub-execution that waits for room), so that no room would
    /// ever come. `asking` is the task whose next child asks (it waits too).
    pub(crate) fn room_for(&mut self, adding: u64, asking: Option<(u64, usize)>) -> Room {
        let limit = self.config.max_pending_children;
        if limit == 0 {
            return Room::Fits;
        }
        if adding > limit {
            return Room::Never(format!(
                "it would add {adding} children and the coordinator takes at most {limit} \
                 unfinished children (--max-pending-children)"
            ));
        }
        let pending = self.pending_children();
        if pending.saturating_add(adding) <= limit {
            return Room::Fits;
        }
        if self.progressing_children(asking) == 0 {
            return Room::Never(format!(
                "it would add {adding} children beside {pending} unfinished ones that all wait \
                 for room themselves; the limit is {limit} (--max-pending-children)"
            ));
        }
        Room::Wait(format!(
            "waits for room: the coordinator holds {pending} unfinished children and this adds \
             {adding}; the limit is {limit} (--max-pending-children)"
        ))
    }

    /// Unfinished children that may still end (and so make room): all of a
    /// task's, or only those in flight when the task's next child is a
    /// sub-execution waiting for room (the rest of its queue waits behind it).
    fn progressing_children(&mut self, asking: Option<(u64, usize)>) -> u64 {
        let execs = &self.execs;
        self.parked_nested.retain(|c, _| {
            execs
                .get(&c.exec)
                .and_then(|e| e.tasks.get(c.task as usize))
                .and_then(|t| t.children.get(c.child as usize))
                .is_some_and(|ch| ch.rec.phase == crate::records::Phase::Pending)
        });
        let mut progressing = 0u64;
        for (&slot, e) in &self.execs {
            if e.rec.state.is_terminal() {
                continue;
            }
            for (ti, t) in e.tasks.iter().enumerate() {
                let unfinished = (t.children.len() as u64).saturating_sub(u64::from(t.terminal));
                let blocked = asking == Some((slot, ti))
                    || t.queue.front().is_some_and(|&child| {
                        self.parked_nested.contains_key(&super::ChildRef {
                            exec: slot,
                            task: ti as u16,
                            child,
                        })
                    });
                progressing += if blocked {
                    u64::from(t.in_flight)
                } else {
                    unfinished
                };
            }
        }
        progressing
    }
}
