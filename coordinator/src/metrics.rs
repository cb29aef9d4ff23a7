//! Latency metrics of the coordinator, in fixed memory.
//!
//! [`Histogram`] is a log-linear histogram (the HDR idea, small): values below 16
//! get a bucket each; above, every power of two is cut into 16 equal buckets, so a
//! bucket is never wider than 1/16 of its lower bound and a quantile read from it is
//! within ±3.2 % of the true value (the midpoint of a bucket is returned, clamped to
//! the observed min and max). It covers the whole `u64` range in 976 counters
//! (~8 KiB), whatever the number of samples — a limit on everything — and recording
//! is a few integer operations, cheap enough for the scheduler loop.
//!
//! Two histograms are kept by the scheduler ([`Latency`]): the StartJob round trip
//! (µs, measured around the RPC by `scheduler_task.rs`) and the time from the
//! dispatch of a child's attempt to the coordinator handling its finished event
//! (ms). [`Stats`] are the scheduler's counters; [`MetricsSnapshot`] holds both
//! with the scheduler's gauges (children by phase, agents by state), and
//! `Coordinator::metrics` returns one. The Prometheus endpoint
//! (`crate::prometheus`) reads histograms at fixed bounds with
//! [`Histogram::cumulative`] and adds those of successive leadership terms with
//! [`Histogram::merge`].

/// Sub-buckets per power of two (and the count of exact buckets at the bottom).
const SUB: u64 = 16;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// 16 exact buckets, then 16 per exponent from 4 to 63.
const BUCKETS: usize = ((64 - SUB_BITS + 1) as usize) * SUB as usize;

/// A log-linear histogram of `u64` values (see the module doc).
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: Box::new([0; BUCKETS]),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max())
            .finish()
    }
}

/// The bucket of a value.
fn bucket(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = msb - SUB_BITS;
    // (v >> shift) is in [SUB, 2 * SUB): its low bits pick the sub-bucket.
    ((shift as u64 + 1) * SUB + ((v >> shift) - SUB)) as usize
}

/// The smallest and largest value of a bucket.
fn bounds_of(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let low = (SUB + i % SUB) << shift;
    (low, low + ((1u64 << shift) - 1))
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Sum of the recorded values.
    pub fn sum(&self) -> u128 {
        self.sum
    }

    /// Adds the samples of `other` (the same buckets: exact).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// For each bound (increasing), the samples whose bucket lies wholly at or
    /// below it: exact for a bound that ends a bucket (every value below 16,
    /// and `2^k·m − 1` for m in 16..32), otherwise a sample up to 1/16 below
    /// the bound may be counted under the next one — never one above it.
    pub fn cumulative(&self, bounds: &[u64]) -> Vec<u64> {
        let mut out = Vec::with_capacity(bounds.len());
        let mut seen = 0u64;
        let mut i = 0usize;
        for &b in bounds {
            while i < BUCKETS && bounds_of(i).1 <= b {
                seen += self.counts[i];
                i += 1;
            }
            out.push(seen);
        }
        out
    }

    /// Largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the recorded values (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        self.sum as f64 / self.count as f64
    }

    /// The value below which a fraction `q` (0..=1) of the samples lie: the
    /// midpoint of the bucket holding the sample of rank ⌈q·count⌉, clamped to the
    /// observed range. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, hi) = bounds_of(i);
                return (lo + (hi - lo) / 2).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

/// The latency histograms the scheduler keeps.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// StartJob round trips the agent answered (accepted or rejected), in µs.
    pub accept_us: Histogram,
    /// Dispatch of an attempt → its finished event handled by the coordinator, in ms.
    pub completion_ms: Histogram,
}

/// Why an agent refused a dispatch, as the metrics name it: the agent's
/// `RejectCode` (its number is the index), then `wrong_agent` (the address
/// is served by another agent).
pub const REJECT_REASONS: [&str; 9] = [
    "unspecified",
    "at_capacity",
    "draining",
    "unknown_package",
    "invalid_request",
    "stale_epoch",
    "unauthorized",
    "run_as_denied",
    "wrong_agent",
];

/// The index in [`REJECT_REASONS`] of an agent's reject code (an unknown
/// code counts as `unspecified`).
pub fn reject_reason_index(code: i32) -> usize {
    usize::try_from(code)
        .ok()
        .filter(|&i| i < REJECT_REASONS.len() - 1)
        .unwrap_or(0)
}

/// The index of `wrong_agent` in [`REJECT_REASONS`].
pub const WRONG_AGENT: usize = REJECT_REASONS.len() - 1;

/// Child phases in the order of `records::Phase` (its `as usize`): the
/// labels of the children metrics.
pub const PHASES: [&str; 9] = [
    "pending",
    "dispatching",
    "accepted",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "lost",
];

/// Counters for metrics and tests, kept by the scheduler.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub stale_events: u64,
    pub duplicate_events: u64,
    pub agents_lost: u64,
    pub dispatches: u64,
    pub rejections: u64,
    /// Rejections by reason (indexed as [`REJECT_REASONS`]).
    pub rejections_by_reason: [u64; REJECT_REASONS.len()],
    /// Dispatches that got no answer (sent again later).
    pub dispatches_unanswered: u64,
    /// Children that reached an ended phase, by phase (indexed as [`PHASES`]).
    pub children_ended: [u64; PHASES.len()],
    /// Steps a child's state refused (a step out of an ended state, or one
    /// that makes no sense from where the child is): never taken, counted.
    pub refused_steps: u64,
    /// Tasks the pump and the flow looked at: a deterministic measure of
    /// the scheduler's work per event (its cost tests count it).
    pub task_checks: u64,
}

impl Stats {
    /// Adds the counts of `other` (the counters of an earlier leadership term).
    pub fn add(&mut self, other: &Stats) {
        self.stale_events += other.stale_events;
        self.duplicate_events += other.duplicate_events;
        self.agents_lost += other.agents_lost;
        self.dispatches += other.dispatches;
        self.rejections += other.rejections;
        for (a, b) in self
            .rejections_by_reason
            .iter_mut()
            .zip(other.rejections_by_reason)
        {
            *a += b;
        }
        self.dispatches_unanswered += other.dispatches_unanswered;
        for (a, b) in self.children_ended.iter_mut().zip(other.children_ended) {
            *a += b;
        }
        self.refused_steps += other.refused_steps;
        self.task_checks += other.task_checks;
    }
}

/// Gauges of the scheduler: what it holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Children of running executions by phase (indexed as [`PHASES`]).
    pub children: [u64; PHASES.len()],
    pub executions_running: u64,
    /// Registered agents by state (`ready`, `lost`, ...), with their slots
    /// and the children they hold: (state, agents, slots, used).
    pub agents: Vec<(&'static str, u64, u64, u64)>,
    /// The epoch of the scheduler (its leadership term).
    pub epoch: u64,
}

/// What `Coordinator::metrics` returns.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub latency: Latency,
    pub stats: Stats,
    pub gauges: Gauges,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds_of(i);
            assert_eq!(lo, expected_low, "bucket {i}");
            assert!(hi >= lo);
            assert_eq!(bucket(lo), i);
            assert_eq!(bucket(hi), i);
            expected_low = hi.wrapping_add(1);
        }
        assert_eq!(bounds_of(BUCKETS - 1).1, u64::MAX);
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in [3, 3, 3, 7, 9] {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 3);
        assert_eq!(h.quantile(0.8), 7);
        assert_eq!(h.quantile(1.0), 9);
        assert_eq!(h.max(), 9);
        assert_eq!(h.count(), 5);
    }

    fn within(got: u64, want: u64, rel: f64) -> bool {
        (got as f64 - want as f64).abs() <= want as f64 * rel
    }

    #[test]
    fn p50_and_p99_of_a_uniform_range() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        let (p50, p99) = (h.quantile(0.5), h.quantile(0.99));
        assert!(within(p50, 5_000, 0.033), "p50 {p50}");
        assert!(within(p99, 9_900, 0.033), "p99 {p99}");
        assert!((h.mean() - 5_000.5).abs() < 1e-6);
    }

    #[test]
    fn p99_sees_a_slow_tail() {
        // 980 fast calls of ~200 µs and 20 slow ones of 50 ms: p50 is fast, p99 slow.
        let mut h = Histogram::default();
        for i in 0..980u64 {
            h.record(190 + i % 20);
        }
        for _ in 0..20 {
            h.record(50_000);
        }
        assert!(within(h.quantile(0.5), 200, 0.05), "{h:?}");
        assert_eq!(h.quantile(0.99), 50_000, "{h:?}");
        assert!(h.quantile(0.98) < 250, "{h:?}");
    }

    #[test]
    fn memory_does_not_grow_with_samples() {
        let mut h = Histogram::default();
        for v in 0..1_000_000u64 {
            h.record(v * 7919);
        }
        assert_eq!(h.count(), 1_000_000);
        assert_eq!(std::mem::size_of_val(&*h.counts), BUCKETS * 8);
        const { assert!(BUCKETS < 1_000) };
    }

    #[test]
    fn cumulative_counts_at_bounds() {
        let mut h = Histogram::default();
        for v in [1, 5, 5, 15, 100, 1_000, 1_000_000] {
            h.record(v);
        }
        // Exact below 16; 1023 ends a bucket (31·32 + 31); u64::MAX takes all.
        assert_eq!(h.cumulative(&[0, 5, 15, 1023, u64::MAX]), [0, 3, 4, 6, 7]);
        // 1000 lies inside the bucket 992..=1023: that sample is not counted
        // under 1000 (never one above a bound), but it is under 1023.
        assert_eq!(h.cumulative(&[999, 1000]), [5, 5]);
        let mut g = Histogram::default();
        g.record(2);
        g.merge(&h);
        assert_eq!(g.count(), 8);
        assert_eq!(g.sum(), h.sum() + 2);
        assert_eq!(g.cumulative(&[5]), [4]);
        assert_eq!(g.max(), 1_000_000);
    }

    #[test]
    fn reject_codes_map_to_reasons() {
        assert_eq!(REJECT_REASONS[reject_reason_index(1)], "at_capacity");
        assert_eq!(REJECT_REASONS[reject_reason_index(7)], "run_as_denied");
        assert_eq!(REJECT_REASONS[reject_reason_index(99)], "unspecified");
        assert_eq!(REJECT_REASONS[reject_reason_index(-1)], "unspecified");
        assert_eq!(REJECT_REASONS[WRONG_AGENT], "wrong_agent");
    }

    #[test]
    fn empty_histogram_reads_zero() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.99), 0);
        assert_eq!(h.max(), 0);
        assert_eq!(h.mean(), 0.0);
    }
}
