//! A foreach over the rows of an earlier task: the rows stay on the agents
//! that ran that task's children, so the foreach starts by asking for them
//! ([`super::Effect::FetchRows`]) and makes its children when they arrive
//! (`rows_fetched`). A foreach that made no child records why on the
//! execution (`rows_outcomes`), so that a replay decides the same way; a
//! cancel does not wait for rows.

use std::collections::BTreeMap;

use baton_package::{TaskOutcome, TaskState};
use tracing::warn;

use super::flow::{expand, planned_shallow};
use super::{Exec, Scheduler};
use crate::prepare::Work;
use crate::records::{Phase, RowsOutcome};

/// A cancel does not wait for rows: a rows foreach still waiting ends
/// cancelled (a late answer is ignored).
pub(super) fn end_awaiting_rows(e: &mut Exec) -> bool {
    let mut changed = false;
    for ti in 0..e.tasks.len() {
        if !e.tasks[ti].awaiting_rows {
            continue;
        }
        e.tasks[ti].awaiting_rows = false;
        e.tasks[ti].ended = true;
        let name = e.plan.tasks[ti].name.clone();
        let _ = e
            .engine
            .finished(&name, TaskOutcome::Cancelled, BTreeMap::new());
        changed = true;
    }
    changed
}

impl Scheduler {
    /// Asks the agents that ran the source task of a rows foreach for its rows.
    pub(super) fn request_rows(&mut self, slot: u64, ti: usize) {
        let Some(e) = self.execs.get(&slot) else {
            return;
        };
        let Work::Foreach { fe, .. } = &e.plan.tasks[ti].work else {
            return;
        };
        let baton_package::ForeachOver::Rows(source) = &fe.over else {
            return;
        };
        let mut sources = Vec::new();
        let mut missing = None;
        if let Some(&si) = e.task_index.get(source.as_str()) {
            for c in &e.tasks[si as usize].children {
                // A child that kept no rows is not asked (its agent may have
                // reused its empty directory and forgotten it).
                if c.rec.phase != Phase::Succeeded || c.rec.rows == Some(0) {
                    continue;
                }
                let agent = c.rec.agent.clone().unwrap_or_default();
                match self.agents.get(&agent) {
                    Some(a) => sources.push((
                        agent,
                        a.rec.address.clone(),
                        baton_proto::DispatchId {
                            execution_id: e.rec.id.clone(),
                            task_path: c.rec.task.clone(),
                            item_index: c.rec.index,
                            attempt: c.rec.attempt,
                        },
                    )),
                    None => missing = Some(agent),
                }
            }
        }
        let id = e.rec.id.clone();
        let task = e.plan.tasks[ti].name.clone();
        match missing {
            Some(agent) => self.rows_fetched(
                &id,
                &task,
                Err(format!(
                    "the rows of task '{source}' are on agent '{agent}', which this coordinator \
                     does not know any more"
                )),
            ),
            None => self.effects.push(super::Effect::FetchRows {
                execution_id: id,
                task,
                sources,
            }),
        }
    }

    /// The rows a rows foreach waited for arrived (or could not be read).
    pub(crate) fn rows_fetched(
        &mut self,
        execution_id: &str,
        task: &str,
        rows: Result<Vec<String>, String>,
    ) {
        let Some(&slot) = self.exec_ids.get(execution_id) else {
            return;
        };
        let mut created = Vec::new();
        {
            let Some(e) = self.execs.get_mut(&slot) else {
                return;
            };
            let Some(&ti) = e.task_index.get(task) else {
                return;
            };
            let ti = ti as usize;
            if !e.tasks[ti].awaiting_rows || e.rec.state.is_terminal() {
                return;
            }
            e.tasks[ti].awaiting_rows = false;
            let mut outcome = None;
            if e.rec.cancel_requested {
                e.tasks[ti].ended = true;
                let _ = e
                    .engine
                    .finished(task, TaskOutcome::Cancelled, BTreeMap::new());
            } else {
                match rows {
                    Ok(rows) => {
                        let planned = planned_shallow(e, ti);
                        expand(e, slot, ti, &planned, &rows, &mut created);
                        if e.tasks[ti].children.is_empty() {
                            outcome = Some(match e.engine.state(task) {
                                Ok(TaskState::Succeeded) => RowsOutcome::Empty,
                                _ => RowsOutcome::Failed(
                                    e.engine.reason(task).unwrap_or("it failed").to_string(),
                                ),
                            });
                        }
                    }
                    Err(why) => {
                        warn!(execution = %execution_id, task, error = %why, "cannot read the rows a foreach runs over");
                        e.tasks[ti].ended = true;
                        let _ = e.engine.failed(task, why.clone());
                        outcome = Some(RowsOutcome::Failed(why));
                    }
                }
            }
            if let Some(o) = outcome {
                e.rec.rows_outcomes.insert(task.to_string(), o);
                e.touched = true;
                self.dirty_execs.insert(slot);
            }
        }
        for cref in created {
            self.dirty_children.insert(cref);
        }
        self.advance(slot);
    }
}
