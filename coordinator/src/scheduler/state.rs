//! The scheduler's state: [`Scheduler`] with its parts and what it routes
//! between them, and its tunables ([`SchedulerConfig`]). The `impl Scheduler`
//! blocks sit above it, one file per topic; this file imports only the
//! parts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::dispatcher::Dispatcher;
use super::exec_table::Executions;
use super::journal::Journal;
use super::model::ChildRef;
use super::quarantine::QuarantineConfig;
use super::registry::Registry;
use super::timers::Timers;
use crate::clock::Now;
use crate::metrics::{Latency, Stats};
#[cfg(test)]
use crate::{prepare::Plan, records::ExecutionRecord};

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

/// The scheduler state: its parts, and what it routes between them. Nothing
/// outside the scheduler reads or writes it but through its methods.
pub struct Scheduler {
    pub(super) config: SchedulerConfig,
    pub(super) epoch: u64,
    /// The agents and the revoked certificates.
    pub(super) registry: Registry,
    /// The running executions, by slot and by id.
    pub(super) execs: Executions,
    /// The pump's turns, placement memory, capacity generation and
    /// full agents.
    pub(super) dispatcher: Dispatcher,
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
    /// Set when an agent refused a dispatch as `STALE_EPOCH`: another
    /// coordinator led after this one, whose term is over (the loop stops).
    pub(super) deposed: Option<String>,
}

impl Scheduler {
    /// An empty scheduler with the given epoch (already raised by the caller).
    pub fn new(config: SchedulerConfig, epoch: u64) -> Self {
        Scheduler {
            config,
            epoch,
            registry: Default::default(),
            execs: Executions::default(),
            dispatcher: Dispatcher::default(),
            timers: Default::default(),
            journal: Journal::new(),
            stats: Stats::default(),
            latency: Latency::default(),
            secrets: None,
            parked_nested: BTreeMap::new(),
            parked_rows: Default::default(),
            unix_ms: 0,
            deposed: None,
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
        let e = self.execs.by_id(id)?;
        Some((&e.rec, &e.plan))
    }

    /// The key that seals sensitive parameters of the sub-executions it starts.
    pub fn set_secrets(&mut self, key: std::sync::Arc<crate::secrets::SealingKey>) {
        self.secrets = Some(key);
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Why this scheduler's term is over, if an agent said so (`STALE_EPOCH`:
    /// it has seen a later epoch). Nothing more may leave it: its loop stops
    /// and the coordinator campaigns again.
    pub fn deposed(&self) -> Option<&str> {
        self.deposed.as_deref()
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }
}
