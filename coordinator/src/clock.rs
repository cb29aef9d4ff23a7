//! The time of an input to the scheduler.
//!
//! The scheduler reads no clock: every input carries a [`Now`], read once by
//! the loop that feeds it ([`Now::read`]), so that its decisions are a
//! function of their inputs and its tests choose the time.

use std::ops::Add;
use std::time::{Duration, Instant};

/// A moment, on both clocks the scheduler needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic: leases, re-sends, retry backoffs, quarantines, latencies.
    pub instant: Instant,
    /// Wall clock, in unix milliseconds: what records and listings show.
    pub unix_ms: u64,
}

impl Now {
    /// Reads both clocks (the loop does, once per input).
    pub fn read() -> Now {
        Now {
            instant: Instant::now(),
            unix_ms: crate::records::now_unix_ms(),
        }
    }
}

impl Add<Duration> for Now {
    type Output = Now;

    /// The same moment `d` later on both clocks.
    fn add(self, d: Duration) -> Now {
        Now {
            instant: self.instant + d,
            unix_ms: self
                .unix_ms
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

impl std::ops::AddAssign<Duration> for Now {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_duration_moves_both_clocks() {
        let t0 = Now::read();
        let t1 = t0 + Duration::from_millis(1_500);
        assert_eq!(t1.instant - t0.instant, Duration::from_millis(1_500));
        assert_eq!(t1.unix_ms - t0.unix_ms, 1_500);
    }
}
