//! The scheduler: every decision of the coordinator, as a plain struct.
//!
//! Callers feed it inputs — registrations, agent events, dispatch outcomes,
//! ticks, start requests — each with the time the loop read ([`Now`]), and it
//! answers with state changes to persist (`Scheduler::flush`) and effects to
//! perform once they are durable ([`Effect`]). It does no IO and reads no
//! clock, so its logic is unit-tested directly; `scheduler_task.rs` owns the
//! loop around it.
//!
//! It is composed of parts with private state, and routes between them: the
//! registry of agents and revoked certificates (`registry.rs`), each child's
//! state and its one transition function (`child.rs`), the flow of a parent
//! package (`flow.rs`), the dispatcher's pump and timers (`dispatch.rs`,
//! `timers.rs`) and the journal of records to write and effects to perform
//! (`journal.rs`). `docs/ARCHITECTURE.md` (*The scheduler*) follows a child
//! through them.
//!
//! Intent versus observed: a child's state says what the coordinator wants
//! (attempt N on agent X, [`ChildState::Dispatching`]) and what it has learnt
//! (accepted, running, ended). Reports are fenced by (agent, attempt):
//! anything else is stale, ignored and counted.

mod admission;
mod agents;
mod cancel;
mod child;
mod dispatch;
mod executions;
pub(crate) mod flow;
mod ids;
mod journal;
mod model;
mod nested;
mod quarantine;
mod registry;
mod resume;
mod rows;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_admission;
#[cfg(test)]
mod tests_cancel_child;
#[cfg(test)]
mod tests_fairness;
#[cfg(test)]
mod tests_flow;
#[cfg(test)]
mod tests_ops;
mod timers;
mod view;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

pub use crate::clock::Now;
use crate::metrics::Latency;
use crate::prepare::Plan;
use crate::records::{ExecutionRecord, Phase};
use crate::store::Revision;

pub use agents::{AdminAction, AgentState, AgentSummary, Registration};
pub use cancel::{CancelOutcome, CancelState, ChildCancelState};
pub(crate) use child::Child;
pub use child::{COORDINATOR, ChildState, End, Refused, Step};
pub use ids::{AgentId, DispatchId, ExecutionId};
pub use model::{ChildRef, DispatchOutcome, Effect};
pub use quarantine::QuarantineConfig;
pub(crate) use registry::AgentEntry;
pub use resume::refusal as resume_refusal;
pub use view::{
    ExecutionView, Summary, pick_children, summary_from_record, tally, view_from_records,
};

/// Default of `--max-pending-children`: about 1 GB of coordinator memory at
/// the ~1 KB per child measured in `docs/benchmarks.md` (1M children).
pub const DEFAULT_MAX_PENDING_CHILDREN: u64 = 1_000_000;

/// Tunables of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// An agent silent for this long is lost.
    pub lease_ttl: Duration,
    pub heartbeat_interval: Duration,
    /// Delay before re-sending a dispatch whose outcome is unknown.
    pub dispatch_retry: Duration,
    /// How long an agent that answered "at capacity" gets no new dispatch
    /// (cut short by any event that frees a slot).
    pub full_backoff: Duration,
    /// Strategy of executions that name none (`baton coordinator --placement`).
    pub default_strategy: crate::placement::Strategy,
    /// When an agent that fails children quickly is quarantined.
    pub quarantine: QuarantineConfig,
    /// Most children not yet finished, over all running executions; a start
    /// that would pass it is refused as busy (0: no limit).
    pub max_pending_children: u64,
    /// The retry-after hint of a busy refusal.
    pub busy_retry_after: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_ttl: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(1),
            dispatch_retry: Duration::from_millis(500),
            full_backoff: Duration::from_millis(500),
            default_strategy: Default::default(),
            quarantine: QuarantineConfig::default(),
            max_pending_children: DEFAULT_MAX_PENDING_CHILDREN,
            busy_retry_after: Duration::from_secs(30),
        }
    }
}

/// What a flush wrote, so that versions can be updated after the commit.
#[derive(Debug)]
pub(crate) enum Written {
    Child(ChildRef),
    Exec(u64),
    Agent(String),
    Seq(String),
    Epoch,
}

/// Counters for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub stale_events: u64,
    pub duplicate_events: u64,
    pub agents_lost: u64,
    pub dispatches: u64,
    pub rejections: u64,
    /// Steps a child's state refused (a step out of an ended state, or one
    /// that makes no sense from where the child is): never taken, counted.
    pub refused_steps: u64,
    /// Tasks the pump and the flow looked at: a deterministic measure of
    /// the scheduler's work per event (its cost tests count it).
    pub task_checks: u64,
}

pub(crate) struct TaskRun {
    pub children: Vec<Child>,
    pub queue: VecDeque<u32>,
    pub in_flight: u32,
    pub terminal: u32,
    pub failed: u32,
    /// Round-robin cursor and spread counts of this task (in memory only).
    pub place: dispatch::PlaceMemory,
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

/// The tasks of an execution worth looking at (in memory only). Marks are
/// cheap and may be stale: a reader checks the task's state and drops a
/// mark that no longer holds.
#[derive(Debug, Default)]
pub(crate) struct TaskWatch {
    /// Tasks that may have ended (a child became terminal, the task
    /// started, rows arrived) or gone past `max_failures`.
    ending: std::collections::BTreeSet<u16>,
    /// Every task is to be looked at (a new or restored execution).
    all: bool,
    /// Per task: which kind of placement its children need (same labels
    /// and slots, same kind), so that one finding no room stands for all.
    kinds: Vec<u32>,
    /// Tasks that may have a child waiting in their queue, by kind.
    queued: BTreeMap<u32, std::collections::BTreeSet<u16>>,
}

impl TaskWatch {
    /// A watch that looks at every task once; `kinds` as above.
    pub(crate) fn new(kinds: Vec<u32>) -> TaskWatch {
        TaskWatch {
            all: true,
            kinds,
            ..Default::default()
        }
    }

    pub(crate) fn may_end(&mut self, ti: usize) {
        self.ending.insert(ti as u16);
    }

    pub(crate) fn queued(&mut self, ti: usize) {
        let kind = self.kinds.get(ti).copied().unwrap_or(0);
        self.queued.entry(kind).or_default().insert(ti as u16);
    }

    /// The tasks to check for an end now (`tasks`: how many there are).
    pub(crate) fn take_ending(&mut self, tasks: usize) -> Vec<usize> {
        if std::mem::take(&mut self.all) {
            self.ending.clear();
            return (0..tasks).collect();
        }
        std::mem::take(&mut self.ending)
            .into_iter()
            .map(usize::from)
            .collect()
    }

    /// The kinds with a task queued, the kind of the first queued task first.
    pub(crate) fn queued_kinds(&self) -> Vec<u32> {
        let mut firsts: Vec<(u16, u32)> = self
            .queued
            .iter()
            .filter_map(|(&k, set)| set.first().map(|&t| (t, k)))
            .collect();
        firsts.sort_unstable();
        firsts.into_iter().map(|(_, k)| k).collect()
    }

    /// The queued task of `kind` after `after` (the first with `None`).
    pub(crate) fn next_queued(&self, kind: u32, after: Option<usize>) -> Option<usize> {
        let set = self.queued.get(&kind)?;
        let next = match after {
            None => set.first(),
            Some(t) => set.range(t as u16 + 1..).next(),
        };
        next.map(|&t| usize::from(t))
    }

    /// The task has no child waiting any more.
    pub(crate) fn unqueue(&mut self, ti: usize) {
        let kind = self.kinds.get(ti).copied().unwrap_or(0);
        if let Some(set) = self.queued.get_mut(&kind) {
            set.remove(&(ti as u16));
            if set.is_empty() {
                self.queued.remove(&kind);
            }
        }
    }
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

/// The scheduler state: its parts, and what it routes between them. Nothing
/// outside the scheduler reads or writes it but through its methods.
pub struct Scheduler {
    config: SchedulerConfig,
    epoch: u64,
    /// The agents and the revoked certificates.
    registry: registry::Registry,
    execs: HashMap<u64, Exec>,
    exec_ids: HashMap<ExecutionId, u64>,
    exec_order: VecDeque<u64>,
    next_slot: u64,
    /// Bumped whenever capacity may have appeared; clears soft exclusions.
    capacity_gen: u64,
    /// Dispatches to send again and retries waiting for their backoff.
    timers: timers::Timers,
    /// Records to write and effects to perform once they are durable.
    journal: journal::Journal,
    pub stats: Stats,
    /// Latency histograms (fixed memory); the scheduler task records accept times.
    pub latency: Latency,
    /// Seals sensitive parameters of sub-executions (nested fan-out).
    secrets: Option<std::sync::Arc<crate::secrets::SealingKey>>,
    /// Children whose sub-execution waits for room, with how many children
    /// it would add (admission; in memory only).
    parked_nested: BTreeMap<ChildRef, u64>,
    /// Rows foreach tasks (execution slot, task) holding rows until there is room.
    parked_rows: std::collections::BTreeSet<(u64, u16)>,
    /// Wall-clock time of the input being handled, in unix ms (from the
    /// [`Now`] every input method takes): the times records show. The
    /// scheduler reads no clock.
    unix_ms: u64,
}

impl Scheduler {
    /// An empty scheduler with the given epoch (already raised by the caller).
    pub fn new(config: SchedulerConfig, epoch: u64) -> Self {
        Scheduler {
            config,
            epoch,
            registry: Default::default(),
            execs: HashMap::new(),
            exec_ids: HashMap::new(),
            exec_order: VecDeque::new(),
            next_slot: 1,
            capacity_gen: 0,
            timers: Default::default(),
            journal: journal::Journal::new(),
            stats: Stats::default(),
            latency: Latency::default(),
            secrets: None,
            parked_nested: BTreeMap::new(),
            parked_rows: Default::default(),
            unix_ms: 0,
        }
    }

    /// Takes the time of an input (every input method calls it first).
    pub(crate) fn at(&mut self, now: Now) -> Instant {
        self.unix_ms = now.unix_ms;
        now.instant
    }

    /// A certificate of `agent` revoked before this coordinator started (read
    /// from the store: it is refused as those revoked since are).
    pub(crate) fn restore_revoked(&mut self, fingerprint: String, agent: &str) {
        self.registry.revoke_fingerprint(fingerprint, agent);
    }

    /// A running execution's record and plan (for tests outside the scheduler).
    #[cfg(test)]
    pub(crate) fn running_execution(&self, id: &str) -> Option<(&ExecutionRecord, &Plan)> {
        let e = self.execs.get(self.exec_ids.get(id)?)?;
        Some((&e.rec, &e.plan))
    }

    /// The key that seals sensitive parameters of the sub-executions it starts.
    pub fn set_secrets(&mut self, key: std::sync::Arc<crate::secrets::SealingKey>) {
        self.secrets = Some(key);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub(crate) fn alloc_slot(&mut self) -> u64 {
        let s = self.next_slot;
        self.next_slot += 1;
        s
    }

    /// The store operations that make memory durable, and what they cover.
    pub(crate) fn flush(&mut self) -> (Vec<crate::store::Op>, Vec<Written>) {
        use crate::records::*;
        use crate::store::{Op, Precondition};
        fn pre(v: Option<Revision>) -> Precondition {
            v.map_or(Precondition::Absent, Precondition::Revision)
        }
        let mut ops = Vec::new();
        let mut written = Vec::new();
        let dirty = self.journal.take_dirty();
        if dirty.epoch {
            ops.push(Op::Put {
                key: EPOCH_KEY.to_string(),
                value: self.epoch.to_string().into_bytes(),
                pre: Precondition::Any,
            });
            written.push(Written::Epoch);
        }
        for fp in dirty.revoked {
            let name = self
                .registry
                .revoked_owner(&fp)
                .unwrap_or_default()
                .to_string();
            ops.push(Op::Put {
                key: revoked_key(&fp),
                value: name.into_bytes(),
                pre: Precondition::Any,
            });
        }
        for name in dirty.removed_agents {
            for key in [agent_key(&name), seq_key(&name)] {
                ops.push(Op::Delete {
                    key,
                    pre: Precondition::Any,
                });
            }
        }
        for name in dirty.agents {
            if let Some(a) = self.registry.get(&name) {
                ops.push(Op::Put {
                    key: agent_key(&name),
                    value: serde_json::to_vec(&a.rec).unwrap_or_default(),
                    pre: pre(a.version),
                });
                written.push(Written::Agent(name));
            }
        }
        for name in dirty.seqs {
            if let Some(a) = self.registry.get(&name) {
                ops.push(Op::Put {
                    key: seq_key(&name),
                    value: serde_json::to_vec(&a.seq).unwrap_or_default(),
                    pre: pre(a.seq_version),
                });
                written.push(Written::Seq(name));
            }
        }
        for slot in dirty.execs {
            if let Some(e) = self.execs.get(&slot) {
                ops.push(Op::Put {
                    key: execution_key(&e.rec.id),
                    value: serde_json::to_vec(&e.rec).unwrap_or_default(),
                    pre: pre(e.version),
                });
                written.push(Written::Exec(slot));
            }
        }
        for cref in dirty.children {
            if let Some(e) = self.execs.get(&cref.exec) {
                let c = &e.tasks[cref.task as usize].children[cref.child as usize];
                ops.push(Op::Put {
                    key: child_key(&e.rec.id, &c.rec.task, c.rec.index),
                    value: serde_json::to_vec(&c.rec).unwrap_or_default(),
                    pre: pre(c.version),
                });
                written.push(Written::Child(cref));
            }
        }
        (ops, written)
    }

    /// Records the revision of a successful commit, publishes summaries of the
    /// executions that changed, and forgets executions that have ended.
    pub(crate) fn committed(&mut self, written: Vec<Written>, revision: Revision) {
        for w in written {
            match w {
                Written::Child(c) => {
                    if let Some(e) = self.execs.get_mut(&c.exec) {
                        e.tasks[c.task as usize].children[c.child as usize].version =
                            Some(revision);
                    }
                }
                Written::Exec(slot) => {
                    if let Some(e) = self.execs.get_mut(&slot) {
                        e.version = Some(revision);
                    }
                }
                Written::Agent(n) => {
                    if let Some(a) = self.registry.get_mut(&n) {
                        a.version = Some(revision);
                    }
                }
                Written::Seq(n) => {
                    if let Some(a) = self.registry.get_mut(&n) {
                        a.seq_version = Some(revision);
                    }
                }
                Written::Epoch => {}
            }
        }
        self.publish_and_evict();
    }

    /// Effects to perform now that the last flush is durable (acks last).
    pub fn take_effects(&mut self) -> Vec<Effect> {
        self.journal.take_effects()
    }

    pub(crate) fn has_dirty(&self) -> bool {
        self.journal.has_dirty()
    }
}
