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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use baton_proto as pb;
use tracing::{info, warn};

use super::Scheduler;

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
}

impl Scheduler {
    /// Counts a child's end against (or for) the agent it ran on.
    pub(crate) fn note_child_end(&mut self, agent: &str, status: pb::JobStatus, now: Instant) {
        let cfg = self.config.quarantine;
        let unix_ms = self.unix_ms;
        if cfg.failures == 0 {
            return;
        }
        let live = self
            .registry
            .entries()
            .filter(|a| a.seen && !a.lost)
            .count();
        let quarantined = self
            .registry
            .entries()
            .filter(|a| a.quarantine.active(now))
            .count();
        let Some(a) = self.registry.get_mut(agent) else {
            return;
        };
        let q = &mut a.quarantine;
        match status {
            pb::JobStatus::Succeeded => {
                q.failed_at.clear();
                return;
            }
            pb::JobStatus::Failed | pb::JobStatus::TimedOut => {}
            pb::JobStatus::Cancelled | pb::JobStatus::Unspecified => return,
        }
        if q.active(now) {
            return; // a child that was running when the quarantine began
        }
        q.failed_at.push_back(now);
        while q
            .failed_at
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > cfg.window)
            || q.failed_at.len() > cfg.failures as usize
        {
            q.failed_at.pop_front();
        }
        if q.failed_at.len() < cfg.failures as usize {
            return;
        }
        if quarantined + 1 > live / 2 {
            warn!(
                agent,
                failures = cfg.failures,
                quarantined,
                live,
                "agent fails children quickly, but so many agents are quarantined already that the package is the likelier cause; not quarantining"
            );
            q.failed_at.clear();
            return;
        }
        let cooldown_ms = u64::try_from(cfg.cooldown.as_millis()).unwrap_or(u64::MAX);
        q.until = Some(now + cfg.cooldown);
        q.until_unix_ms = unix_ms.saturating_add(cooldown_ms);
        q.reason = format!(
            "{} children failed within {} s with no success in between; no new children for {} s",
            cfg.failures,
            cfg.window.as_secs(),
            cfg.cooldown.as_secs()
        );
        q.failed_at.clear();
        warn!(agent, reason = %q.reason, "agent quarantined");
    }

    /// Ends quarantines whose cool-down is over (call from `tick`).
    pub(crate) fn end_quarantines(&mut self, now: Instant) {
        let mut ended = false;
        for a in self.registry.entries_mut() {
            if a.quarantine.until.is_some_and(|t| now >= t) {
                a.quarantine = Quarantine::default();
                ended = true;
                info!(agent = %a.rec.name, "quarantine over; the agent takes children again");
            }
        }
        if ended {
            self.capacity_gen += 1;
        }
    }
}
