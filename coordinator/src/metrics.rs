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
//! (ms). [`Stats`] are the scheduler's counters; [`MetricsSnapshot`] holds both,
//! and `Coordinator::metrics` returns one.

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
fn bounds(i: usize) -> (u64, u64) {
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
                let (lo, hi) = bounds(i);
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

/// Counters for metrics and tests, kept by the scheduler.
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

/// What `Coordinator::metrics` returns.
#[derive(Debug, Clone)]
pub struct MetricsSnapshot {
    pub latency: Latency,
    pub stats: Stats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_u64() {
        let mut expected_low = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds(i);
            assert_eq!(lo, expected_low, "bucket {i}");
            assert!(hi >= lo);
            assert_eq!(bucket(lo), i);
            assert_eq!(bucket(hi), i);
            expected_low = hi.wrapping_add(1);
        }
        assert_eq!(bounds(BUCKETS - 1).1, u64::MAX);
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
    fn empty_histogram_reads_zero() {
        let h = Histogram::default();
        assert_eq!(h.quantile(0.99), 0);
        assert_eq!(h.max(), 0);
        assert_eq!(h.mean(), 0.0);
    }
}
