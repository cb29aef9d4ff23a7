//! One execution in memory: its record, plan and engine, and a [`TaskRun`]
//! per task (its children, the queue of those waiting for an agent, its
//! counts). A leaf: the table of running executions (`exec_table.rs`) holds
//! them, the scheduler's topic files read and change them.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::child::Child;
use super::summary::Summary;
use super::task_watch::TaskWatch;
use crate::prepare::Plan;
use crate::records::{ExecutionRecord, Phase};
use crate::store::Revision;

/// Where a task is in its life as the flow drives it (`flow.rs`, `rows.rs`;
/// in memory only: a replay after a restart rebuilds it). It only moves
/// forward: not started, started (possibly waiting for rows first), ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
enum TaskLife {
    /// The engine has not started it.
    #[default]
    NotStarted,
    /// Started: its children exist, and it ends when they all have.
    Started,
    /// Started, a `rows` foreach waiting for the rows of the task it reads;
    /// `held`: rows that arrived while the coordinator had no room for their
    /// children (admission), kept here until there is.
    AwaitingRows { held: Option<Vec<String>> },
    /// Its end was reported to the engine.
    Ended,
}

/// One task of an execution in memory: its children, the queue of those
/// waiting for an agent, its counts and where it is in its life.
pub(crate) struct TaskRun {
    pub children: Vec<Child>,
    /// Children waiting for an agent, next first; filled only through
    /// [`Exec::enqueue`], which marks the task for the pump.
    queue: VecDeque<u32>,
    pub in_flight: u32,
    pub terminal: u32,
    pub failed: u32,
    life: TaskLife,
    /// The package its children run (made when it starts for a parent's
    /// `exec`/`script` task).
    pub package: Option<crate::prepare::ChildPackage>,
    /// Parameters of a single-child task, rendered when it started (for a
    /// parent's `exec`/`script` task: the sensitive ones its package reads).
    pub params: BTreeMap<String, String>,
    /// In memory only: why a started task makes no children yet.
    pub waiting: String,
}

impl TaskRun {
    /// A task not started yet, with room for `children` children.
    pub(crate) fn new(children: usize) -> TaskRun {
        TaskRun {
            children: Vec::with_capacity(children),
            queue: VecDeque::new(),
            in_flight: 0,
            terminal: 0,
            failed: 0,
            life: TaskLife::NotStarted,
            package: None,
            params: BTreeMap::new(),
            waiting: String::new(),
        }
    }

    /// The child next in line for an agent.
    pub(crate) fn next_queued(&self) -> Option<u32> {
        self.queue.front().copied()
    }

    pub(crate) fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Takes the child next in line off the queue.
    pub(crate) fn take_next_queued(&mut self) -> Option<u32> {
        self.queue.pop_front()
    }

    /// Takes child `ci` off the queue, wherever it is.
    pub(crate) fn unqueue(&mut self, ci: u32) {
        self.queue.retain(|&i| i != ci);
    }

    /// Empties the queue (nothing more is to be dispatched).
    pub(crate) fn clear_queue(&mut self) {
        self.queue.clear();
    }

    /// The engine started it (a task already started or ended stays so).
    pub(crate) fn start(&mut self) {
        if self.life == TaskLife::NotStarted {
            self.life = TaskLife::Started;
        }
    }

    /// Started and not ended: its children may be dispatched or stopped as
    /// the task's (a `rows` foreach waiting for its rows included).
    pub(crate) fn is_open(&self) -> bool {
        matches!(self.life, TaskLife::Started | TaskLife::AwaitingRows { .. })
    }

    /// Started, not ended, and not waiting for rows: it ends once all its
    /// children have.
    pub(crate) fn may_end(&self) -> bool {
        self.life == TaskLife::Started
    }

    /// Its end was reported to the engine (or it cannot start).
    pub(crate) fn end(&mut self) {
        self.life = TaskLife::Ended;
    }

    /// A started `rows` foreach asks for its rows and waits for them.
    pub(crate) fn await_rows(&mut self) {
        if self.life == TaskLife::Started {
            self.life = TaskLife::AwaitingRows { held: None };
        }
    }

    pub(crate) fn awaits_rows(&self) -> bool {
        matches!(self.life, TaskLife::AwaitingRows { .. })
    }

    /// Keeps rows that arrived while there was no room for their children.
    pub(crate) fn hold_rows(&mut self, rows: Vec<String>) {
        if let TaskLife::AwaitingRows { held } = &mut self.life {
            *held = Some(rows);
        }
    }

    /// The rows held for want of room, taken to be tried again (the task
    /// still waits for rows).
    pub(crate) fn take_held_rows(&mut self) -> Option<Vec<String>> {
        match &mut self.life {
            TaskLife::AwaitingRows { held } => held.take(),
            _ => None,
        }
    }

    /// How many rows are held for want of room.
    pub(crate) fn held_rows(&self) -> Option<u64> {
        match &self.life {
            TaskLife::AwaitingRows { held } => held.as_ref().map(|r| r.len() as u64),
            _ => None,
        }
    }

    /// The rows arrived (or will not): the task no longer waits for them.
    pub(crate) fn rows_done(&mut self) {
        if self.awaits_rows() {
            self.life = TaskLife::Started;
        }
    }
}

/// An execution in memory: its record, plan and engine, and a [`TaskRun`]
/// per task.
pub(crate) struct Exec {
    pub rec: ExecutionRecord,
    pub version: Option<Revision>,
    pub plan: Plan,
    /// Which task runs when: the package engine, driven by `flow.rs`.
    pub engine: baton_package::Engine,
    pub tasks: Vec<TaskRun>,
    pub task_index: HashMap<String, u16>,
    pub phase_counts: [u64; 9],
    pub lost_attempts: u64,
    pub per_agent: BTreeMap<String, (u64, u64)>,
    pub summary: tokio::sync::watch::Sender<Summary>,
    pub touched: bool,
    /// Which tasks to look at, so that the work per event does not grow with
    /// the number of tasks (a 10,000-task package costs the same per child
    /// as a one-task one).
    pub watch: TaskWatch,
}

impl Exec {
    /// Puts child `ci` of task `ti` in its task's queue (`front`: it was
    /// next in line) and marks the task for the pump ([`TaskWatch`]): a
    /// queued child is always looked at.
    pub(crate) fn enqueue(&mut self, ti: usize, ci: u32, front: bool) {
        let q = &mut self.tasks[ti].queue;
        if front {
            q.push_front(ci);
        } else {
            q.push_back(ci);
        }
        self.watch.queued(ti);
    }

    /// Queues the task's children `children`, in order, after any queued.
    pub(crate) fn enqueue_all(&mut self, ti: usize, children: std::ops::Range<u32>) {
        self.tasks[ti].queue.extend(children);
        self.watch.queued(ti);
    }

    /// The run's `--max-in-flight` children are on agents (read from the
    /// phase counters, not a sweep of the tasks).
    pub(crate) fn at_in_flight_cap(&self) -> bool {
        let cap = self.rec.placement.max_in_flight;
        let on_agent: u64 = [Phase::Dispatching, Phase::Accepted, Phase::Running]
            .iter()
            .map(|&p| self.phase_counts[p as usize])
            .sum();
        cap > 0 && on_agent >= u64::from(cap)
    }

    /// Agent slots each child of task `ti` occupies: the package's `slots`
    /// for that task, else the run's `--slots-per-child` (default 1).
    pub(crate) fn slots_of(&self, ti: usize) -> u32 {
        match self.plan.tasks.get(ti).map_or(0, |t| t.slots) {
            0 => self.rec.placement.slots(),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_life_only_moves_forward() {
        let mut t = TaskRun::new(0);
        assert!(!t.is_open() && !t.may_end());
        t.await_rows();
        assert!(!t.awaits_rows(), "a task not started waits for no rows");
        t.start();
        assert!(t.is_open() && t.may_end());
        t.await_rows();
        assert!(t.is_open() && t.awaits_rows() && !t.may_end());
        t.start();
        assert!(t.awaits_rows(), "starting again changes nothing");
        t.hold_rows(vec!["a".into(), "b".into()]);
        assert_eq!(t.held_rows(), Some(2));
        assert_eq!(t.take_held_rows(), Some(vec!["a".into(), "b".into()]));
        assert!(
            t.awaits_rows(),
            "rows taken to be tried again: it still waits"
        );
        t.hold_rows(vec!["c".into()]);
        t.rows_done();
        assert!(t.may_end() && t.held_rows().is_none());
        t.end();
        assert!(!t.is_open() && !t.may_end());
        t.start();
        t.hold_rows(vec!["d".into()]);
        assert!(
            !t.is_open() && t.held_rows().is_none(),
            "an ended task stays ended"
        );
    }
}
