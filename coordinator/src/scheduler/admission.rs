//! Admission: whether a new execution may start. The coordinator keeps every
//! unfinished child in memory (about 1 KB each, `docs/benchmarks.md`), so
//! the total of children not yet finished over all running executions is
//! bounded (`--max-pending-children`). A start that would pass the bound is
//! refused as busy with a retry-after hint; an execution that alone is larger
//! than the bound can never start and gets a different error.

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
