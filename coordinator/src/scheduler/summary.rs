//! Read models of executions: the summary that watchers see and the full view
//! with every child, and the one rule that counts children into them, from
//! memory or from stored records. A leaf: it knows records, not the scheduler.

use std::collections::BTreeMap;

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
    /// Every child counted per task and phase (not only those in `children`).
    pub task_counts: TaskCounts,
}

/// A page of an execution's children with their waiting reasons, and how
/// many children matched the request in all.
#[derive(Debug, Clone, Default)]
pub struct ChildrenPage {
    pub children: Vec<(ChildRecord, String)>,
    pub total: u64,
}

/// Children per task, then per phase (`Phase::as_str`).
pub type TaskCounts = BTreeMap<String, BTreeMap<&'static str, u64>>;

/// Counts `c` into `counts`.
pub fn count_task(counts: &mut TaskCounts, c: &ChildRecord) {
    if let Some(per_phase) = counts.get_mut(c.task.as_str()) {
        *per_phase.entry(c.phase.as_str()).or_default() += 1;
    } else {
        counts.insert(c.task.to_string(), BTreeMap::from([(c.phase.as_str(), 1)]));
    }
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
pub(super) const PHASES: [Phase; 9] = [
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
        let e = s.per_agent.entry(agent.to_string()).or_default();
        if c.phase == Phase::Succeeded {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
}

pub(super) fn base(rec: &ExecutionRecord) -> Summary {
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
    let mut task_counts = TaskCounts::new();
    for c in &children {
        tally(&mut s, c);
        count_task(&mut task_counts, c);
    }
    let waiting = vec![String::new(); children.len()];
    let tasks = rec
        .task_states
        .iter()
        .map(|(n, st)| (n.clone(), st.clone(), String::new()))
        .collect();
    ExecutionView {
        task_counts,
        children_total: children.len() as u64,
        summary: s,
        children,
        waiting,
        tasks,
    }
}
