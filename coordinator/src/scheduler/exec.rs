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

/// One task of an execution in memory: its children, the queue of those
/// waiting for an agent, and its counts.
pub(crate) struct TaskRun {
    pub children: Vec<Child>,
    pub queue: VecDeque<u32>,
    pub in_flight: u32,
    pub terminal: u32,
    pub failed: u32,
    /// The engine started this task: its children exist (`flow.rs`).
    pub started: bool,
    /// Its end was reported to the engine.
    pub ended: bool,
    /// The package its children run (made when it starts for a parent's
    /// `exec`/`script` task).
    pub package: Option<crate::prepare::ChildPackage>,
    /// Parameters of a single-child task, rendered when it started (for a
    /// parent's `exec`/`script` task: the sensitive ones its package reads).
    pub params: BTreeMap<String, String>,
    /// A `rows` foreach waits for the rows of the task it reads.
    pub awaiting_rows: bool,
    /// Rows that arrived while the coordinator had no room for their
    /// children (admission): they wait here, `awaiting_rows` stays set.
    pub held_rows: Option<Vec<String>>,
    /// In memory only: why a started task makes no children yet.
    pub waiting: String,
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
