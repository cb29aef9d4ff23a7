//! Failure policies: retries with backoff, tolerated child failures, and what
//! happens to children when their execution is cancelled.

use std::time::Duration;

/// How often a task (or, for a `foreach`, each child) is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts for runs that fail (exit code, timeout); 1 = no retry.
    pub attempts: u32,
    /// Attempts for children whose agent was lost; these say nothing about the child.
    pub lost_attempts: u32,
    /// Delay before the second attempt, doubled for each further one.
    pub backoff_s: u64,
    /// The longest delay between attempts.
    pub backoff_max_s: u64,
    /// Spread each delay uniformly over `[delay / 2, delay]`, so that children
    /// that failed together do not retry together.
    pub jitter: bool,
}

/// Upper bound of `attempts` and `lost_attempts`.
pub const MAX_ATTEMPTS: u32 = 100;
/// Upper bound of `backoff_s` and `backoff_max_s` (one day).
pub const MAX_BACKOFF_S: u64 = 86_400;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            lost_attempts: 3,
            backoff_s: 0,
            backoff_max_s: 300,
            jitter: false,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `attempt + 1`, after attempt `attempt` (1-based)
    /// failed; `None` when no attempts are left. Deterministic for a given
    /// `seed` (the driver picks the seed, e.g. from the dispatch id).
    pub fn delay_after(&self, attempt: u32, seed: u64) -> Option<Duration> {
        if attempt == 0 || attempt >= self.attempts {
            return None;
        }
        let doublings = (attempt - 1).min(40);
        let base_ms = self
            .backoff_s
            .saturating_mul(1000)
            .saturating_mul(1u64 << doublings)
            .min(self.backoff_max_s.saturating_mul(1000));
        let ms = if self.jitter && base_ms > 0 {
            let r = splitmix64(seed ^ u64::from(attempt).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let half = base_ms / 2;
            half + r % (base_ms - half + 1)
        } else {
            base_ms
        };
        Some(Duration::from_millis(ms))
    }
}

/// A small, good-enough mixing function (SplitMix64) for deterministic jitter.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// How many failed children a `foreach` tolerates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MaxFailures {
    /// Up to this many children may fail (after their retries) and the foreach
    /// still succeeds; `Count(0)` (the default) fails it at the first failure
    /// and starts no further child.
    Count(u32),
    /// Run every child whatever fails (`"all"` or `-1`); the foreach fails at
    /// the end if any child failed.
    #[default]
    All,
}

impl MaxFailures {
    /// Whether the foreach may go on (start more children) with `failed` failures.
    pub fn keeps_going(self, failed: u64) -> bool {
        match self {
            MaxFailures::Count(n) => failed <= u64::from(n),
            MaxFailures::All => true,
        }
    }

    /// Whether a foreach whose children all ended, `failed` of them failed, succeeded.
    pub fn succeeded(self, failed: u64) -> bool {
        match self {
            MaxFailures::Count(n) => failed <= u64::from(n),
            MaxFailures::All => failed == 0,
        }
    }
}

/// What happens to running children when the execution that started them is
/// cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChildrenOnCancel {
    /// Cancel them too (the default): their process groups get SIGTERM, then SIGKILL.
    #[default]
    Cancel,
    /// Let them run to their end; their results are recorded but change nothing.
    Abandon,
}

impl ChildrenOnCancel {
    pub fn as_str(self) -> &'static str {
        match self {
            ChildrenOnCancel::Cancel => "cancel",
            ChildrenOnCancel::Abandon => "abandon",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_stops_after_the_last_attempt() {
        let p = RetryPolicy {
            attempts: 5,
            backoff_s: 2,
            backoff_max_s: 5,
            ..Default::default()
        };
        let d: Vec<_> = (1..=5).map(|a| p.delay_after(a, 7)).collect();
        assert_eq!(
            d,
            [
                Some(Duration::from_secs(2)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(5)),
                Some(Duration::from_secs(5)),
                None
            ]
        );
        assert_eq!(RetryPolicy::default().delay_after(1, 0), None);
    }

    #[test]
    fn jitter_is_deterministic_and_within_half_to_full() {
        let p = RetryPolicy {
            attempts: 100,
            backoff_s: 10,
            backoff_max_s: 10,
            jitter: true,
            ..Default::default()
        };
        for seed in 0..200u64 {
            let d = p.delay_after(3, seed).unwrap();
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(10));
            assert_eq!(Some(d), p.delay_after(3, seed));
        }
        let huge = RetryPolicy {
            attempts: 100,
            backoff_s: MAX_BACKOFF_S,
            backoff_max_s: MAX_BACKOFF_S,
            jitter: true,
            ..Default::default()
        };
        assert!(huge.delay_after(99, u64::MAX).is_some());
    }

    #[test]
    fn max_failures() {
        assert!(!MaxFailures::Count(0).keeps_going(1));
        assert!(MaxFailures::Count(2).succeeded(2));
        assert!(!MaxFailures::Count(2).succeeded(3));
        assert!(MaxFailures::All.keeps_going(1000));
        assert!(!MaxFailures::All.succeeded(1));
    }
}
