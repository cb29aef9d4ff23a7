//! The agent's Prometheus metrics (`baton agent --metrics-listen`): how it
//! answered `StartJob` (counted by the supervisor as it decides), and, read
//! at scrape time from a source `crate::run` attaches, its slots, the jobs it
//! holds, whether it drains, and the events of its completion stream not yet
//! acknowledged by the coordinator. The HTTP endpoint is the CLI's.
//!
//! A leaf: it knows neither the supervisor nor the outbox, only the numbers
//! they give it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_proto::RejectCode;
use baton_proto::exposition::{Kind, Text};

/// What the agent holds now, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Jobs it may hold (`--slots` plus `--queue`).
    pub slots: u64,
    /// Jobs it holds (running or queued for a slot).
    pub used: u64,
    pub draining: bool,
    /// Events of the completion stream not acknowledged by the coordinator.
    pub unacked_events: u64,
    /// Jobs started since the agent started.
    pub jobs_started: u64,
}

type Source = Box<dyn Fn() -> Gauges + Send + Sync>;

/// `StartJob` answers: `accepted`, then each reject code by its number.
const RESULTS: [&str; 9] = [
    "accepted",
    "unspecified",
    "at_capacity",
    "draining",
    "unknown_package",
    "invalid_request",
    "stale_epoch",
    "unauthorized",
    "run_as_denied",
];

/// The agent's metrics (see the module doc).
#[derive(Default)]
pub struct AgentMetrics {
    decisions: [AtomicU64; RESULTS.len()],
    source: Mutex<Option<Source>>,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentMetrics").finish_non_exhaustive()
    }
}

impl AgentMetrics {
    /// A `StartJob` decision: accepted (`None`) or rejected with `code`.
    pub fn decided(&self, rejected: Option<RejectCode>) {
        let i = match rejected {
            None => 0,
            Some(code) => usize::try_from(code as i32)
                .ok()
                .filter(|&c| c + 1 < RESULTS.len())
                .map_or(1, |c| c + 1),
        };
        self.decisions[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Where the gauges are read from (the running agent).
    pub fn attach(&self, source: impl Fn() -> Gauges + Send + Sync + 'static) {
        *self.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(source));
    }

    fn gauges(&self) -> Gauges {
        let source = self.source.lock().unwrap_or_else(|p| p.into_inner());
        source.as_ref().map(|f| f()).unwrap_or_default()
    }

    /// The agent's metrics in the Prometheus text format.
    pub fn render(&self) -> Text {
        let g = self.gauges();
        let mut t = Text::new();
        t.single(
            "baton_agent_slots",
            Kind::Gauge,
            "Jobs this agent may hold (--slots plus --queue).",
            g.slots as f64,
        );
        t.single(
            "baton_agent_slots_used",
            Kind::Gauge,
            "Jobs this agent holds (running, or accepted and waiting for a slot).",
            g.used as f64,
        );
        t.single(
            "baton_agent_slots_free",
            Kind::Gauge,
            "Slots that hold no job.",
            g.slots.saturating_sub(g.used) as f64,
        );
        t.single(
            "baton_agent_draining",
            Kind::Gauge,
            "1 while the agent drains (takes no new job).",
            f64::from(u8::from(g.draining)),
        );
        t.single(
            "baton_agent_completion_unacknowledged_events",
            Kind::Gauge,
            "Events of the completion stream (durable in the outbox) the coordinator has not acknowledged.",
            g.unacked_events as f64,
        );
        t.single(
            "baton_agent_jobs_started_total",
            Kind::Counter,
            "Jobs started since the agent started.",
            g.jobs_started as f64,
        );
        t.family(
            "baton_agent_start_requests_total",
            Kind::Counter,
            "StartJob requests by answer: accepted, or the reason of the rejection.",
        );
        for (result, n) in RESULTS.iter().zip(&self.decisions) {
            t.sample(
                "baton_agent_start_requests_total",
                &[("result", result)],
                n.load(Ordering::Relaxed) as f64,
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_and_gauges_are_rendered() {
        let m = AgentMetrics::default();
        m.decided(None);
        m.decided(None);
        m.decided(Some(RejectCode::AtCapacity));
        m.decided(Some(RejectCode::RunAsDenied));
        m.attach(|| Gauges {
            slots: 4,
            used: 1,
            draining: false,
            unacked_events: 3,
            jobs_started: 2,
        });
        let text = m.render().finish();
        for line in [
            "baton_agent_start_requests_total{result=\"accepted\"} 2",
            "baton_agent_start_requests_total{result=\"at_capacity\"} 1",
            "baton_agent_start_requests_total{result=\"run_as_denied\"} 1",
            "baton_agent_slots_free 3",
            "baton_agent_completion_unacknowledged_events 3",
            "baton_agent_jobs_started_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }

    #[test]
    fn unattached_gauges_read_zero() {
        let text = AgentMetrics::default().render().finish();
        assert!(text.lines().any(|l| l == "baton_agent_slots 0"));
    }
}
