//! Quarantine: an agent that fails many children quickly gets no new ones for
//! a while.
//!
//! An agent is quarantined when `failures` of its children end `failed` or
//! `timed_out` within `window`, with no success in between (a success clears
//! the count). It takes no new children for `cooldown`, then comes back with a
//! clean count. The decision needs time, so it lives here; placement sees only
//! `ready = false` and the reason.
//!
//! A package that fails everywhere must not empty the fleet: at most half of
//! the live agents (rounded down) are quarantined at once. Past that the
//! failures look like the package's, not the agents', and are only logged.
//!
//! This module is the per-agent count and the policy's tunables (a leaf: the
//! registry keeps one per agent); the decision over the fleet is the
//! scheduler's (`Scheduler::note_child_end` in `agents.rs`).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::domain::JobStatus;

/// Tunables (`baton coordinator --quarantine-failures/--quarantine-window/--quarantine-cooldown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuarantineConfig {
    /// Failures within `window`, with no success between, that quarantine an agent; 0 disables.
    pub failures: u32,
    pub window: Duration,
    /// How long a quarantined agent gets no new children.
    pub cooldown: Duration,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(300),
        }
    }
}

/// Per agent, in memory (a coordinator restart forgives every agent).
#[derive(Debug, Default, Clone)]
pub(crate) struct Quarantine {
    /// When recent children failed, oldest first (at most `failures` kept).
    failed_at: VecDeque<Instant>,
    until: Option<Instant>,
    until_unix_ms: u64,
    reason: String,
}

impl Quarantine {
    /// Whether the agent is quarantined at `now`.
    pub(crate) fn active(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now < t)
    }

    /// The reason, while quarantined (listings show it; it ends at `until_unix_ms`).
    pub(crate) fn reason(&self) -> Option<(&str, u64)> {
        self.until
            .is_some()
            .then_some((self.reason.as_str(), self.until_unix_ms))
    }

    /// Counts a child's end on this agent at `now`: a success clears the
    /// count, a failure or time-out adds to it. `true` when the agent has
    /// now failed `cfg.failures` children within `cfg.window` — a quarantine
    /// is due, if the fleet can spare the agent ([`Quarantine::begin`], or
    /// else [`Quarantine::forgive`]).
    pub(crate) fn note_end(
        &mut self,
        status: JobStatus,
        now: Instant,
        cfg: &QuarantineConfig,
    ) -> bool {
        match status {
            JobStatus::Succeeded => {
                self.failed_at.clear();
                return false;
            }
            JobStatus::Failed | JobStatus::TimedOut => {}
            JobStatus::Cancelled | JobStatus::Unspecified => return false,
        }
        if self.active(now) {
            return false; // a child that was running when the quarantine began
        }
        self.failed_at.push_back(now);
        while self
            .failed_at
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > cfg.window)
            || self.failed_at.len() > cfg.failures as usize
        {
            self.failed_at.pop_front();
        }
        self.failed_at.len() >= cfg.failures as usize
    }

    /// Forgets the failures counted (the fleet cannot spare the agent).
    pub(crate) fn forgive(&mut self) {
        self.failed_at.clear();
    }

    /// Quarantines the agent from `now` (`unix_ms` on the wall clock) for
    /// `cfg.cooldown`; returns the reason.
    pub(crate) fn begin(&mut self, now: Instant, unix_ms: u64, cfg: &QuarantineConfig) -> &str {
        let cooldown_ms = u64::try_from(cfg.cooldown.as_millis()).unwrap_or(u64::MAX);
        self.until = Some(now + cfg.cooldown);
        self.until_unix_ms = unix_ms.saturating_add(cooldown_ms);
        self.reason = format!(
            "{} children failed within {} s with no success in between; no new children for {} s",
            cfg.failures,
            cfg.window.as_secs(),
            cfg.cooldown.as_secs()
        );
        self.failed_at.clear();
        &self.reason
    }

    /// Whether its cool-down is over at `now`.
    pub(crate) fn is_over(&self, now: Instant) -> bool {
        self.until.is_some_and(|t| now >= t)
    }
}
