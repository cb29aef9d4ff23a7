//! The scheduler's state: [`Scheduler`] with its parts and what it routes
//! between them, the executions it holds in memory ([`Exec`], a [`TaskRun`]
//! per task) and its tunables ([`SchedulerConfig`]). The `impl Scheduler`
//! blocks sit above it, one file per topic; this file imports only the leaf
//! parts.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::child::Child;
use super::ids::ExecutionId;
use super::journal::Journal;
use super::model::ChildRef;
use super::quarantine::QuarantineConfig;
use super::registry::Registry;
use super::summary::Summary;
use super::task_watch::TaskWatch;
use super::timers::Timers;
use crate::clock::Now;
use crate::metrics::{Latency, Stats};
use crate::prepare::Plan;
use crate::records::{ExecutionRecord, Phase};
use crate::store::Revision;

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

/// What placement remembers per task between children: the round-robin
/// cursor and, for spread, how many children went to each label value.
#[derive(Debug, Default)]
pub(crate) struct PlaceMemory {
    pub cursor: Option<String>,
    pub spread: BTreeMap<String, u64>,
}

/// One task of an execution in memory: its children, the queue of those
/// waiting for an agent, and its counts.
pub(crate) struct TaskRun {
    pub children: Vec<Child>,
    pub queue: VecDeque<u32>,
    pub in_flight: u32,
    pub terminal: u32,
    pub failed: u32,
    /// Round-robin cursor and spread counts of this task (in memory only).
    pub place: PlaceMemory,
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

/// The scheduler state: its parts, and what it routes between them. Nothing
/// outside the scheduler reads or writes it but through its methods.
pub struct Scheduler {
    pub(super) config: SchedulerConfig,
    pub(super) epoch: u64,
    /// The agents and the revoked certificates.
    pub(super) registry: Registry,
    pub(super) execs: HashMap<u64, Exec>,
    pub(super) exec_ids: HashMap<ExecutionId, u64>,
    pub(super) exec_order: VecDeque<u64>,
    pub(super) next_slot: u64,
    /// Bumped whenever capacity may have appeared; clears soft exclusions.
    pub(super) capacity_gen: u64,
    /// Dispatches to send again and retries waiting for their backoff.
    pub(super) timers: Timers,
    /// Records to write and effects to perform once they are durable.
    pub(super) journal: Journal,
    pub stats: Stats,
    /// Latency histograms (fixed memory); the scheduler task records accept times.
    pub latency: Latency,
    /// Seals sensitive parameters of sub-executions (nested fan-out).
    pub(super) secrets: Option<std::sync::Arc<crate::secrets::SealingKey>>,
    /// Children whose sub-execution waits for room, with how many children
    /// it would add (admission; in memory only).
    pub(super) parked_nested: BTreeMap<ChildRef, u64>,
    /// Rows foreach tasks (execution slot, task) holding rows until there is room.
    pub(super) parked_rows: BTreeSet<(u64, u16)>,
    /// Wall-clock time of the input being handled, in unix ms (from the
    /// [`Now`] every input method takes): the times records show. The
    /// scheduler reads no clock.
    pub(super) unix_ms: u64,
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
            journal: Journal::new(),
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
}
