//! The coordinator's metrics in the Prometheus text format: what the
//! [`Registry`](super::Registry) holds, under the names `docs/observability.md` lists. Units
//! are in the names (seconds, bytes); latency histograms are read at fixed
//! bounds from the fixed-memory histograms of `crate::metrics`.

use baton_proto::exposition::{Kind, Text};

use super::registry::State;
use crate::metrics::{Histogram, PHASES, REJECT_REASONS};

/// Upper bounds of the latency histograms, in µs (100 µs to 10 s).
const ACCEPT_BOUNDS_US: [u64; 15] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000,
];
/// Upper bounds of the completion histogram, in ms (10 ms to a day).
const COMPLETION_BOUNDS_MS: [u64; 16] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000, 900_000,
    3_600_000, 86_400_000,
];
const COMMIT_OPS_BOUNDS: [u64; 12] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 1_024, 4_096, 16_384];
const COMMIT_BYTES_BOUNDS: [u64; 10] = [
    256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216, 67_108_864,
];

/// One histogram of `h` read at `bounds` (in its unit), shown divided by `scale`.
fn histogram(t: &mut Text, name: &str, help: &str, h: &Histogram, bounds: &[u64], scale: f64) {
    let counts = h.cumulative(bounds);
    let buckets: Vec<(f64, u64)> = bounds
        .iter()
        .zip(counts)
        .map(|(&b, n)| (b as f64 / scale, n))
        .collect();
    t.family(name, Kind::Histogram, help).histogram(
        name,
        &[],
        &buckets,
        h.sum() as f64 / scale,
        h.count(),
    );
}

/// The coordinator's metrics (process metrics are added by the server).
pub fn render(s: &State) -> Text {
    let mut t = Text::new();
    let stats = s.stats();
    let latency = s.latency();
    t.single(
        "baton_coordinator_leader",
        Kind::Gauge,
        "1 while this coordinator leads (its scheduler runs), 0 otherwise.",
        f64::from(u8::from(s.leader)),
    );
    t.single(
        "baton_coordinator_epoch",
        Kind::Gauge,
        "Epoch (fencing token) of the last leadership term of this coordinator.",
        s.epoch as f64,
    );
    t.single(
        "baton_coordinator_leadership_terms_total",
        Kind::Counter,
        "Leadership terms this process has begun.",
        s.terms as f64,
    );
    let gauges = s
        .current
        .as_ref()
        .map(|c| c.gauges.clone())
        .unwrap_or_default();
    t.single(
        "baton_executions_running",
        Kind::Gauge,
        "Executions running now.",
        gauges.executions_running as f64,
    );
    t.family(
        "baton_children",
        Kind::Gauge,
        "Children of running executions, by state.",
    );
    for (state, n) in PHASES.iter().zip(gauges.children) {
        t.sample("baton_children", &[("state", state)], n as f64);
    }
    t.family(
        "baton_children_ended_total",
        Kind::Counter,
        "Children that ended, by how (succeeded, failed, cancelled, timed_out, lost).",
    );
    for (state, n) in PHASES.iter().zip(stats.children_ended).skip(4) {
        t.sample("baton_children_ended_total", &[("state", state)], n as f64);
    }
    t.single(
        "baton_dispatches_total",
        Kind::Counter,
        "Child attempts sent to an agent (StartJob), re-sends apart.",
        stats.dispatches as f64,
    );
    t.family(
        "baton_dispatch_rejections_total",
        Kind::Counter,
        "Dispatches an agent refused, by reason.",
    );
    for (reason, n) in REJECT_REASONS.iter().zip(stats.rejections_by_reason) {
        t.sample(
            "baton_dispatch_rejections_total",
            &[("reason", reason)],
            n as f64,
        );
    }
    t.single(
        "baton_dispatches_unanswered_total",
        Kind::Counter,
        "Dispatches that got no answer (connection refused, timeout) and are sent again.",
        stats.dispatches_unanswered as f64,
    );
    histogram(
        &mut t,
        "baton_dispatch_accept_duration_seconds",
        "StartJob round trips an agent answered (accepted or rejected).",
        &latency.accept_us,
        &ACCEPT_BOUNDS_US,
        1e6,
    );
    histogram(
        &mut t,
        "baton_child_completion_duration_seconds",
        "From the dispatch of a child's attempt to the coordinator handling its end.",
        &latency.completion_ms,
        &COMPLETION_BOUNDS_MS,
        1e3,
    );
    t.family("baton_agents", Kind::Gauge, "Registered agents, by state.");
    for (state, n, _, _) in &gauges.agents {
        t.sample("baton_agents", &[("state", state)], *n as f64);
    }
    t.family(
        "baton_fleet_slots",
        Kind::Gauge,
        "Slots of the registered agents (their --slots plus --queue), by agent state.",
    );
    for (state, _, slots, _) in &gauges.agents {
        t.sample("baton_fleet_slots", &[("state", state)], *slots as f64);
    }
    t.family(
        "baton_fleet_slots_used",
        Kind::Gauge,
        "Children dispatched to, accepted by or running on the agents, by agent state.",
    );
    for (state, _, _, used) in &gauges.agents {
        t.sample("baton_fleet_slots_used", &[("state", state)], *used as f64);
    }
    t.family(
        "baton_fleet_slots_free",
        Kind::Gauge,
        "Slots of the agents that hold no child, by agent state.",
    );
    for (state, _, slots, used) in &gauges.agents {
        let free = slots.saturating_sub(*used);
        t.sample("baton_fleet_slots_free", &[("state", state)], free as f64);
    }
    t.single(
        "baton_agents_lost_total",
        Kind::Counter,
        "Times an agent was declared lost (silent past its lease).",
        stats.agents_lost as f64,
    );
    t.single(
        "baton_completion_events_stale_total",
        Kind::Counter,
        "Agent events about an attempt that is no longer current (ignored).",
        stats.stale_events as f64,
    );
    t.single(
        "baton_completion_events_duplicate_total",
        Kind::Counter,
        "Agent events received again (already handled; acknowledged only).",
        stats.duplicate_events as f64,
    );
    t.single(
        "baton_scheduler_refused_steps_total",
        Kind::Counter,
        "State changes of a child the scheduler refused (a bug if it grows).",
        stats.refused_steps as f64,
    );
    histogram(
        &mut t,
        "baton_store_commit_duration_seconds",
        "Store commits that returned (every writer: scheduler, auth, catalog).",
        &s.commits.duration_us,
        &ACCEPT_BOUNDS_US,
        1e6,
    );
    histogram(
        &mut t,
        "baton_store_commit_operations",
        "Operations per store commit.",
        &s.commits.ops,
        &COMMIT_OPS_BOUNDS,
        1.0,
    );
    histogram(
        &mut t,
        "baton_store_commit_bytes",
        "Bytes (keys and values) per store commit.",
        &s.commits.bytes,
        &COMMIT_BYTES_BOUNDS,
        1.0,
    );
    t.single(
        "baton_store_commits_failed_total",
        Kind::Counter,
        "Store commits that failed (conflict, fenced, unavailable, too large, backend).",
        s.commits.failed as f64,
    );
    if let Some(bytes) = s.store_size_bytes {
        t.single(
            "baton_store_size_bytes",
            Kind::Gauge,
            "Bytes the store occupies (the embedded store's file).",
            bytes as f64,
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Gauges, Latency, MetricsSnapshot, Stats};

    #[test]
    fn renders_counts_and_histograms() {
        let mut stats = Stats::default();
        stats.children_ended[4] = 7;
        stats.rejections_by_reason[1] = 2;
        let mut latency = Latency::default();
        for us in [150, 900, 20_000] {
            latency.accept_us.record(us);
        }
        let s = State {
            current: Some(MetricsSnapshot {
                latency,
                stats,
                gauges: Gauges {
                    children: [1, 0, 0, 2, 7, 0, 0, 0, 0],
                    executions_running: 1,
                    agents: vec![("ready", 2, 8, 3)],
                    epoch: 4,
                },
            }),
            leader: true,
            ..State::default()
        };
        let text = render(&s).finish();
        for line in [
            "baton_coordinator_leader 1",
            "baton_children{state=\"running\"} 2",
            "baton_children_ended_total{state=\"succeeded\"} 7",
            "baton_dispatch_rejections_total{reason=\"at_capacity\"} 2",
            "baton_dispatch_accept_duration_seconds_bucket{le=\"0.001\"} 2",
            "baton_dispatch_accept_duration_seconds_bucket{le=\"+Inf\"} 3",
            "baton_dispatch_accept_duration_seconds_count 3",
            "baton_fleet_slots_free{state=\"ready\"} 5",
            "baton_agents{state=\"ready\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // Only ended states are counted as ended.
        assert!(!text.contains("baton_children_ended_total{state=\"pending\"}"));
        assert!(!text.contains("baton_store_size_bytes"));
    }
}
