//! Read models of executions: the summary that watchers see and the full view
//! with every child, built from memory or, for ended executions, from the store.

use std::collections::BTreeMap;

use super::{Exec, Scheduler};
use crate::records::{ChildRecord, ExecutionRecord, Phase};

/// Progress of one execution.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub execution_id: String,
    pub package: String,
    pub state: String,
    pub total: u64,
    pub pending: u64,
    pub running: u64,
    pub succeeded: u64,
    /// Failed, timed out or lost (cancelled children apart).
    pub failed: u64,
    pub cancelled: u64,
    pub lost_attempts: u64,
    pub stale_events: u64,
    /// agent → (succeeded, failed)
    pub per_agent: BTreeMap<String, (u64, u64)>,
    pub created_unix_ms: u64,
    pub finished_unix_ms: u64,
    pub reason: String,
    pub folder: String,
    /// Catalog path and version it was started from, if any.
    pub catalog: Option<(String, u32)>,
    pub resumes: u32,
    /// `ID task[index]` of the child a sub-execution runs as.
    pub parent: String,
    /// Why pending children wait, when known (in memory only).
    pub waiting: String,
}

/// An execution with every child job.
#[derive(Debug, Clone)]
pub struct ExecutionView {
    pub summary: Summary,
    pub children: Vec<ChildRecord>,
    /// In-memory reasons of waiting children (by position in `children`).
    pub waiting: Vec<String>,
    /// Every task of the parent: (name, state, reason), in task order.
    pub tasks: Vec<(String, String, String)>,
    /// Children of the execution; `children` may hold fewer (a limit).
    pub children_total: u64,
}

/// Which children a limited view shows: those that did not succeed first
/// (what a person looks for), then the others, each group in child order;
/// returns the positions to keep, in child order.
pub fn pick_children(phases: &[Phase], limit: usize) -> Vec<usize> {
    let mut keep: Vec<usize> = (0..phases.len())
        .filter(|&i| phases[i] != Phase::Succeeded)
        .take(limit)
        .collect();
    let room = limit.saturating_sub(keep.len());
    keep.extend(
        (0..phases.len())
            .filter(|&i| phases[i] == Phase::Succeeded)
            .take(room),
    );
    keep.sort_unstable();
    keep
}

/// Adds `n` children in `phase` to a summary's counts: the one rule that
/// every count (list, show, watch, the final counts of an ended execution)
/// follows, whether it comes from memory or from the stored children.
pub fn count_phase(s: &mut Summary, phase: Phase, n: u64) {
    s.total += n;
    match phase {
        Phase::Pending => s.pending += n,
        Phase::Succeeded => s.succeeded += n,
        Phase::Cancelled => s.cancelled += n,
        Phase::Failed | Phase::TimedOut | Phase::Lost => s.failed += n,
        Phase::Dispatching | Phase::Accepted | Phase::Running => s.running += n,
    }
}

/// Every phase, in the order of [`Phase`]'s discriminants.
const PHASES: [Phase; 9] = [
    Phase::Pending,
    Phase::Dispatching,
    Phase::Accepted,
    Phase::Running,
    Phase::Succeeded,
    Phase::Failed,
    Phase::Cancelled,
    Phase::TimedOut,
    Phase::Lost,
];

/// Adds one child to a summary's counts.
pub fn tally(s: &mut Summary, c: &ChildRecord) {
    s.lost_attempts += u64::from(c.lost);
    count_phase(s, c.phase, 1);
    if c.phase.is_terminal()
        && let Some(agent) = &c.agent
    {
        let e = s.per_agent.entry(agent.clone()).or_default();
        if c.phase == Phase::Succeeded {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
}

fn base(rec: &ExecutionRecord) -> Summary {
    Summary {
        execution_id: rec.id.clone(),
        package: rec.package.clone(),
        state: rec.state.as_str().to_string(),
        created_unix_ms: rec.created_unix_ms,
        finished_unix_ms: rec.finished_unix_ms,
        reason: rec.reason.clone(),
        stale_events: rec.stale_events,
        folder: rec.folder().to_string(),
        catalog: rec.catalog.as_ref().map(|c| (c.path.clone(), c.version)),
        resumes: rec.resumes,
        parent: rec
            .parent
            .as_ref()
            .map(|p| format!("{} {}[{}]", p.execution_id, p.task, p.index))
            .unwrap_or_default(),
        ..Summary::default()
    }
}

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
        if let Some(c) = run
            .queue
            .front()
            .and_then(|&i| run.children.get(i as usize))
            && !c.waiting_reason.is_empty()
        {
            return c.waiting_reason.clone();
        }
    }
    String::new()
}

/// The summary of an ended execution from its record alone (no per-agent counts).
pub fn summary_from_record(rec: &ExecutionRecord) -> Summary {
    let mut s = base(rec);
    if let Some(c) = rec.final_counts {
        s.total = c.total;
        s.succeeded = c.succeeded;
        s.failed = c.failed;
        s.cancelled = c.cancelled;
        s.lost_attempts = c.lost_attempts;
    }
    s
}

/// A view computed from stored records (an execution no longer in memory).
pub fn view_from_records(rec: &ExecutionRecord, children: Vec<ChildRecord>) -> ExecutionView {
    let mut s = base(rec);
    for c in &children {
        tally(&mut s, c);
    }
    let waiting = vec![String::new(); children.len()];
    let tasks = rec
        .task_states
        .iter()
        .map(|(n, st)| (n.clone(), st.clone(), String::new()))
        .collect();
    ExecutionView {
        children_total: children.len() as u64,
        summary: s,
        children,
        waiting,
        tasks,
    }
}

impl Scheduler {
    /// One child of an in-memory execution: `None` when the execution is not
    /// in memory, `Some(None)` when it has no such child (yet).
    pub fn child_record(&self, id: &str, task: &str, index: u32) -> Option<Option<ChildRecord>> {
        let e = self.execs.get(self.exec_ids.get(id)?)?;
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
        let e = self.execs.get(self.exec_ids.get(id)?)?;
        let all: Vec<&super::Child> = e.tasks.iter().flat_map(|t| &t.children).collect();
        let phases: Vec<Phase> = all.iter().map(|c| c.rec.phase).collect();
        let picked = if all.len() <= limit {
            (0..all.len()).collect()
        } else {
            pick_children(&phases, limit)
        };
        let children_total = all.len() as u64;
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
        })
    }

    /// A receiver of an in-memory execution's summaries.
    pub fn watch(&self, id: &str) -> Option<tokio::sync::watch::Receiver<Summary>> {
        let e = self.execs.get(self.exec_ids.get(id)?)?;
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
            if e.rec.state.is_terminal() && !self.journal.exec_is_dirty(*slot) {
                ended.push(*slot);
            }
        }
        for slot in ended {
            if let Some(e) = self.execs.remove(&slot) {
                self.exec_ids.remove(e.rec.id.as_str());
                self.exec_order.retain(|s| *s != slot);
                self.timers.forget_execution(slot);
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
