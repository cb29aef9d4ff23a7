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
//! for room (visible as the child's or the task's waiting reason), goes
//! before new starts while it waits, and fails only when it can never fit.

use super::state::Scheduler;
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
    /// (busy, retry later) or ever (too large). Work of running executions
    /// that waits for room counts as pending: it goes first.
    pub fn admit(&mut self, plan: &Plan) -> Result<(), CoordinatorError> {
        let limit = self.config.max_pending_children;
        if limit == 0 {
            return Ok(());
        }
        let adding: u64 = plan.tasks.iter().map(|t| t.items.len() as u64).sum();
        if adding > limit {
            return Err(CoordinatorError::TooLarge { adding, limit });
        }
        let pending = self
            .pending_children()
            .saturating_add(self.waiting_demand());
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

    /// Children that work waiting for room would add (sub-executions and
    /// rows foreach tasks held back by [`Scheduler::room_for`]).
    fn waiting_demand(&mut self) -> u64 {
        let execs = &self.execs;
        self.parked_nested.retain(|c, _| {
            execs
                .child(*c)
                .is_some_and(|ch| ch.rec.phase == crate::records::Phase::Pending)
        });
        let nested: u64 = self.parked_nested.values().sum();
        let rows: u64 = self
            .parked_rows
            .iter()
            .filter_map(|(slot, ti)| {
                let t = self.execs.get(*slot)?.tasks.get(*ti as usize)?;
                t.held_rows()
            })
            .sum();
        nested.saturating_add(rows)
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
    /// the bound, or when no unfinished child can end before it does (each
    /// runs a sub-execution, or waits to start one), so that no room would
    /// ever come.
    pub(crate) fn room_for(&mut self, adding: u64) -> Room {
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
        if self.progressing_children() == 0 {
            return Room::Never(format!(
                "it would add {adding} children beside {pending} unfinished ones, none of \
                 which can end before it does; the limit is {limit} (--max-pending-children)"
            ));
        }
        Room::Wait(format!(
            "waits for room: the coordinator holds {pending} unfinished children and this adds \
             {adding}; the limit is {limit} (--max-pending-children)"
        ))
    }

    /// Unfinished children that will end by themselves and so make room: those
    /// of tasks whose children run on agents. A child that runs a
    /// sub-execution ends only when its sub-execution does (whose own children
    /// are counted where they are), and one waiting to start one needs room.
    fn progressing_children(&self) -> u64 {
        self.execs
            .values()
            .filter(|e| !e.rec.state.is_terminal())
            .flat_map(|e| &e.tasks)
            .filter(|t| !t.package.as_ref().is_some_and(|p| p.fans_out))
            .map(|t| (t.children.len() as u64).saturating_sub(u64::from(t.terminal)))
            .sum()
    }
}
