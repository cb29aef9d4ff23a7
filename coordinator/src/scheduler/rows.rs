//! A foreach over the rows of an earlier task: the rows stay on the agents
//! that ran that task's children, so the foreach starts by asking for them
//! ([`super::Effect::FetchRows`]) and makes its children when they arrive
//! (`rows_fetched`), once the coordinator has room for them (admission:
//! until then the rows wait in the task). A foreach that made no child records why on the
//! execution (`rows_outcomes`), so that a replay decides the same way; a
//! cancel does not wait for rows.

use std::collections::BTreeMap;

use baton_package::{TaskOutcome, TaskState};
use tracing::{info, warn};

use super::admission::Room;
use super::flow::{expand, planned_shallow};
use super::state::Scheduler;
use crate::clock::Now;
use crate::prepare::Work;
use crate::records::{Phase, RowsOutcome};

impl Scheduler {
    /// Asks the agents that ran the source task of a rows foreach for its
    /// rows; `Err` says why they cannot be asked (the caller fails the
    /// foreach with it, [`Scheduler::take_rows`]).
    pub(super) fn request_rows(&mut self, slot: u64, ti: usize) -> Result<(), String> {
        let Some(e) = self.execs.get(slot) else {
            return Ok(());
        };
        let Work::Foreach { fe, .. } = &e.plan.tasks[ti].work else {
            return Ok(());
        };
        let baton_package::ForeachOver::Rows(source) = &fe.over else {
            return Ok(());
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
                let agent = c.rec.agent.as_deref().unwrap_or_default().to_string();
                match self.registry.get(&agent) {
                    Some(a) => {
                        sources.push((agent, a.rec.address.clone(), c.dispatch_id(&e.rec.id)))
                    }
                    None => missing = Some(agent),
                }
            }
        }
        if let Some(agent) = missing {
            return Err(format!(
                "the rows of task '{source}' are on agent '{agent}', which this coordinator \
                 does not know any more"
            ));
        }
        let id = e.rec.id.clone();
        let task = e.plan.tasks[ti].name.clone();
        self.journal.effect(super::model::Effect::FetchRows {
            execution_id: id,
            task,
            sources,
        });
        Ok(())
    }

    /// The rows a rows foreach waited for arrived (or could not be read).
    /// Its children are made only when the coordinator has room for them
    /// (admission, [`Room`]): otherwise the rows wait in the task.
    pub(crate) fn rows_fetched(
        &mut self,
        execution_id: &str,
        task: &str,
        rows: Result<Vec<String>, String>,
        now: Now,
    ) {
        self.at(now);
        self.rows_arrived(execution_id, task, rows);
    }

    /// [`Scheduler::rows_fetched`] at the time of the input being handled.
    fn rows_arrived(&mut self, execution_id: &str, task: &str, rows: Result<Vec<String>, String>) {
        let Some(slot) = self.execs.slot_of(execution_id) else {
            return;
        };
        let Some(ti) = self
            .execs
            .get(slot)
            .and_then(|e| e.task_index.get(task).copied())
        else {
            return;
        };
        if self.take_rows(slot, usize::from(ti), rows) {
            self.advance(slot);
        }
    }

    /// What the rows of a rows foreach that waits for them come to: its
    /// children, a wait for room (the rows are held), or its failure. Does
    /// not move the execution on (the caller does); `false` when the task
    /// was not waiting for rows or they are held.
    pub(super) fn take_rows(
        &mut self,
        slot: u64,
        ti: usize,
        rows: Result<Vec<String>, String>,
    ) -> bool {
        let Some((execution_id, task, cancelling)) = self.execs.get(slot).and_then(|e| {
            let live = e.tasks[ti].awaits_rows() && !e.rec.state.is_terminal();
            let names = (e.rec.id.clone(), e.plan.tasks[ti].name.clone());
            live.then_some((names.0, names.1, e.rec.cancel_requested))
        }) else {
            return false;
        };
        let task = task.as_str();
        // What the rows come to: children to make, or why the foreach fails.
        let limit = baton_package::MAX_FOREACH_ITEMS;
        let rows = match rows {
            // More items than a foreach may have: that limit is the reason,
            // not the coordinator's room for children.
            Ok(rows)
                if !cancelling && rows.iter().filter(|r| !r.trim().is_empty()).count() > limit =>
            {
                let why = format!(
                    "the rows of the task it reads are more than a foreach's limit of {limit} items"
                );
                warn!(execution = %execution_id, task, "{why}");
                Err(why)
            }
            Ok(rows) if !cancelling => match self.room_for(rows.len() as u64) {
                Room::Fits => Ok(rows),
                Room::Wait(why) => {
                    if let Some(run) = self.execs.get_mut(slot).map(|e| &mut e.tasks[ti]) {
                        if run.waiting.is_empty() {
                            info!(execution = %execution_id, task, "{why}");
                        }
                        run.hold_rows(rows);
                        run.waiting = why;
                        self.parked_rows.insert((slot, ti as u16));
                        if let Some(e) = self.execs.get_mut(slot) {
                            e.touched = true;
                        }
                    }
                    return false;
                }
                Room::Never(why) => {
                    let why = format!("cannot make this foreach's children: {why}");
                    warn!(execution = %execution_id, task, "{why}");
                    Err(why)
                }
            },
            Ok(rows) => Ok(rows),
            Err(why) => {
                warn!(execution = %execution_id, task, error = %why, "cannot read the rows a foreach runs over");
                Err(why)
            }
        };
        self.parked_rows.remove(&(slot, ti as u16));
        let mut created = Vec::new();
        {
            let Some(e) = self.execs.get_mut(slot) else {
                return false;
            };
            e.tasks[ti].rows_done();
            e.tasks[ti].waiting.clear();
            e.watch.may_end(ti);
            let mut outcome = None;
            if cancelling {
                e.tasks[ti].end();
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
                        e.tasks[ti].end();
                        let _ = e.engine.failed(task, why.clone());
                        outcome = Some(RowsOutcome::Failed(why));
                    }
                }
            }
            if let Some(o) = outcome {
                e.rec.rows_outcomes.insert(task.to_string(), o);
                e.touched = true;
                self.journal.exec(slot);
            }
        }
        for cref in created {
            self.journal.child(cref);
        }
        true
    }

    /// Tries again the rows foreach tasks that hold rows for want of room.
    pub(super) fn retry_parked_rows(&mut self) {
        if self.parked_rows.is_empty() {
            return;
        }
        for (slot, ti) in std::mem::take(&mut self.parked_rows) {
            let Some(e) = self.execs.get_mut(slot) else {
                continue;
            };
            let Some(rows) = e.tasks[ti as usize].take_held_rows() else {
                continue;
            };
            let (id, task) = (e.rec.id.clone(), e.plan.tasks[ti as usize].name.clone());
            self.rows_arrived(&id, &task, Ok(rows));
        }
    }
}
