//! Views of the executions in memory: their summaries, published to watchers
//! as they change, and their full views, both counted by the rules of
//! `summary.rs`; ended executions are forgotten here once durable.

use super::child::Child;
use super::exec::Exec;
use super::state::Scheduler;
use super::summary::{
    ChildrenPage, ExecutionView, PHASES, Summary, base, count_phase, pick_children,
};
use crate::records::{ChildRecord, Phase};

/// The summary of an execution in memory.
pub(super) fn summary_of(e: &Exec) -> Summary {
    let mut s = base(&e.rec);
    for p in PHASES {
        count_phase(&mut s, p, e.phase_counts[p as usize]);
    }
    s.lost_attempts = e.lost_attempts;
    s.per_agent = e.per_agent.clone();
    s.per_agent.retain(|k, _| !k.is_empty());
    if !e.rec.state.is_terminal() {
        s.waiting = waiting_reason(e);
    }
    s
}

/// Why the execution's pending children wait: the reason of the first task
/// whose next child (the head of its queue) could not be placed, or that
/// holds rows for want of room. Looks at one child per task, not at every
/// child (an execution may have a million).
fn waiting_reason(e: &Exec) -> String {
    for run in &e.tasks {
        if !run.waiting.is_empty() {
            return run.waiting.clone();
        }
        if let Some(c) = run.next_queued().and_then(|i| run.children.get(i as usize))
            && !c.waiting_reason.is_empty()
        {
            return c.waiting_reason.clone();
        }
    }
    String::new()
}

impl Scheduler {
    /// One child of an in-memory execution: `None` when the execution is not
    /// in memory, `Some(None)` when it has no such child (yet).
    pub fn child_record(&self, id: &str, task: &str, index: u32) -> Option<Option<ChildRecord>> {
        let e = self.execs.by_id(id)?;
        let found = e
            .task_index
            .get(task)
            .and_then(|&t| e.tasks[t as usize].children.get(index as usize))
            .map(|c| c.rec.clone());
        Some(found)
    }

    /// The live view of an execution, if it is in memory.
    pub fn execution_view(&self, id: &str) -> Option<ExecutionView> {
        self.execution_view_limited(id, usize::MAX)
    }

    /// The live view with at most `limit` children ([`pick_children`]).
    pub fn execution_view_limited(&self, id: &str, limit: usize) -> Option<ExecutionView> {
        let e = self.execs.by_id(id)?;
        let all: Vec<&Child> = e.tasks.iter().flat_map(|t| &t.children).collect();
        let phases: Vec<Phase> = all.iter().map(|c| c.rec.phase).collect();
        let picked = if all.len() <= limit {
            (0..all.len()).collect()
        } else {
            pick_children(&phases, limit)
        };
        let children_total = all.len() as u64;
        let mut task_counts = super::summary::TaskCounts::new();
        for c in &all {
            super::summary::count_task(&mut task_counts, &c.rec);
        }
        let mut children = Vec::with_capacity(picked.len());
        let mut waiting = Vec::with_capacity(picked.len());
        for i in picked {
            children.push(all[i].rec.clone());
            waiting.push(all[i].waiting_reason.clone());
        }
        let tasks = e
            .engine
            .package()
            .task_order()
            .iter()
            .map(|t| {
                let state = e
                    .engine
                    .state(&t.name)
                    .map_or("unknown", |s| s.as_str())
                    .to_string();
                let mut reason = e.engine.reason(&t.name).unwrap_or_default().to_string();
                if reason.is_empty() {
                    // A rows foreach holding its rows until there is room.
                    if let Some(&ti) = e.task_index.get(&t.name) {
                        reason.clone_from(&e.tasks[ti as usize].waiting);
                    }
                }
                (t.name.clone(), state, reason)
            })
            .collect();
        Some(ExecutionView {
            summary: summary_of(e),
            children,
            waiting,
            tasks,
            children_total,
            task_counts,
        })
    }

    /// A page of an in-memory execution's children in child order (of one
    /// phase when `phase` is not empty), each with its waiting reason, and how
    /// many match: only the page is cloned, whatever the execution's size.
    pub fn children_page(
        &self,
        id: &str,
        offset: usize,
        limit: usize,
        phase: &str,
    ) -> Option<ChildrenPage> {
        let e = self.execs.by_id(id)?;
        let mut page = ChildrenPage::default();
        let mut matching = 0usize;
        for c in e.tasks.iter().flat_map(|t| &t.children) {
            if !phase.is_empty() && c.rec.phase.as_str() != phase {
                continue;
            }
            if matching >= offset && page.children.len() < limit {
                page.children
                    .push((c.rec.clone(), c.waiting_reason.clone()));
            }
            matching += 1;
        }
        page.total = matching as u64;
        Some(page)
    }

    /// A receiver of an in-memory execution's summaries.
    pub fn watch(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Summary>> {
        let e = self.execs.by_id(id)?;
        Some(e.summary.subscribe())
    }

    /// Publishes summaries of changed executions and forgets ended ones (their
    /// records are durable by now; readers go to the store).
    pub(crate) fn publish_and_evict(&mut self) {
        let mut ended = Vec::new();
        for (slot, e) in self.execs.iter_mut() {
            if e.touched {
                e.touched = false;
                e.summary.send_replace(summary_of(e));
            }
            if e.rec.state.is_terminal() && !self.journal.exec_is_dirty(slot) {
                ended.push(slot);
            }
        }
        for slot in ended {
            if self.execs.remove(slot).is_some() {
                self.timers.forget_execution(slot);
                self.dispatcher.forget_execution(slot);
                self.parked_nested.retain(|c, _| c.exec != slot);
                self.parked_rows.retain(|(s, _)| *s != slot);
                self.registry.forget_execution(slot);
            }
        }
    }

    /// Number of executions in memory (running).
    pub fn running_executions(&self) -> usize {
        self.execs.len()
    }
}
