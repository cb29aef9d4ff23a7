//! Refusals aggregated per source, so that anyone who can reach the port cannot
//! fill the coordinator's disk with audit lines and warnings.
//!
//! A refusal is keyed by the caller's source address (the peer IP, when the gRPC
//! edge knows it), who it claimed to be, the call, the folder and the code. The first refusal
//! of a key is recorded in full (an audit line and a WARN); the next ones within
//! [`WINDOW`] are only counted, and when the window ends one summary says "N more
//! refusals from IP in the last 10 s". A key's window starts with its first
//! refusal, so each key costs at most two lines per window, whatever the rate.
//!
//! The table is bounded: at most [`KEYS_MAX`] keys are tracked at once; a refusal
//! that would need another (a spray of source addresses) is counted in one
//! overflow summary ("N more refusals from other sources"). Memory is bounded by
//! `KEYS_MAX` entries whatever the number of sources.
//!
//! Pure logic with the clock passed in; [`crate::auth::audit`] owns the table and
//! writes what it says.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long refusals of one key are counted before a summary.
pub const WINDOW: Duration = Duration::from_secs(10);
/// Most keys tracked at once.
pub const KEYS_MAX: usize = 4096;

/// What identifies a stream of like refusals.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub source: Option<IpAddr>,
    pub who: String,
    pub call: String,
    pub folder: String,
    pub code: String,
}

/// Refusals of one key (or of the overflow) that were counted, not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// `None`: the overflow (sources past [`KEYS_MAX`]).
    pub key: Option<Key>,
    pub count: u64,
    /// Length of the window the count covers.
    pub window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct Counted {
    since: Instant,
    more: u64,
}

/// The bounded table (see the module doc).
#[derive(Debug)]
pub struct Refusals {
    window: Duration,
    keys_max: usize,
    keys: HashMap<Key, Counted>,
    overflow: Option<Counted>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::new(WINDOW, KEYS_MAX)
    }
}

impl Refusals {
    pub fn new(window: Duration, keys_max: usize) -> Refusals {
        Refusals {
            window,
            keys_max: keys_max.max(1),
            keys: HashMap::new(),
            overflow: None,
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// A refusal at `now`: true when it is to be recorded in full, false when it
    /// was only counted (a later [`Refusals::flush`] summarises it). Summaries of
    /// windows that ended are returned first (a refusal of an expired key starts
    /// its next window and is recorded).
    pub fn refuse(&mut self, key: Key, now: Instant) -> (bool, Vec<Summary>) {
        let done = self.flush(now);
        if let Some(c) = self.keys.get_mut(&key) {
            c.more += 1;
            return (false, done);
        }
        if self.keys.len() >= self.keys_max {
            self.overflow
                .get_or_insert(Counted {
                    since: now,
                    more: 0,
                })
                .more += 1;
            return (false, done);
        }
        self.keys.insert(
            key,
            Counted {
                since: now,
                more: 0,
            },
        );
        (true, done)
    }

    /// Ends the windows that are over at `now`: their keys are forgotten and the
    /// ones that counted refusals become summaries.
    pub fn flush(&mut self, now: Instant) -> Vec<Summary> {
        let window = self.window;
        let over = |c: &Counted| now.saturating_duration_since(c.since) >= window;
        let mut out = Vec::new();
        self.keys.retain(|k, c| {
            if !over(c) {
                return true;
            }
            if c.more > 0 {
                out.push(Summary {
                    key: Some(k.clone()),
                    count: c.more,
                    window,
                });
            }
            false
        });
        if let Some(c) = self.overflow.filter(|c| over(c)) {
            self.overflow = None;
            out.push(Summary {
                key: None,
                count: c.more,
                window,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: u8, call: &str) -> Key {
        Key {
            source: Some(IpAddr::from([10, 0, 0, ip])),
            who: "anonymous".into(),
            call: call.into(),
            folder: String::new(),
            code: "UNAUTHENTICATED".into(),
        }
    }

    #[test]
    fn the_first_refusal_is_recorded_the_rest_summarised_once_per_window() {
        let t0 = Instant::now();
        let mut r = Refusals::new(Duration::from_secs(10), 16);
        let (rec, done) = r.refuse(key(1, "WhoAmI"), t0);
        assert!(rec && done.is_empty());
        let mut recorded = 1;
        for i in 1..1000u64 {
            let (rec, done) = r.refuse(key(1, "WhoAmI"), t0 + Duration::from_millis(i));
            recorded += u64::from(rec);
            assert!(done.is_empty());
        }
        assert_eq!(recorded, 1);
        // Another call of the same source is its own stream.
        assert!(r.refuse(key(1, "ListFolders"), t0).0);
        assert!(r.flush(t0 + Duration::from_secs(9)).is_empty());
        let done = r.flush(t0 + Duration::from_secs(10));
        assert_eq!(
            done,
            vec![Summary {
                key: Some(key(1, "WhoAmI")),
                count: 999,
                window: Duration::from_secs(10)
            }],
            "ListFolders counted nothing more: no summary"
        );
        assert!(r.is_empty());
        // The next window starts with a recorded refusal.
        assert!(r.refuse(key(1, "WhoAmI"), t0 + Duration::from_secs(11)).0);
    }

    #[test]
    fn a_spray_of_sources_costs_bounded_memory_and_one_overflow_summary() {
        let t0 = Instant::now();
        let mut r = Refusals::new(Duration::from_secs(10), 8);
        let mut recorded = 0;
        for ip in 0..=255u8 {
            recorded += u32::from(r.refuse(key(ip, "WhoAmI"), t0).0);
        }
        assert_eq!(recorded, 8);
        assert_eq!(r.len(), 8);
        let done = r.flush(t0 + Duration::from_secs(10));
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(done[0].key, None);
        assert_eq!(done[0].count, 248);
    }

    #[test]
    fn expired_windows_are_summarised_by_the_next_refusal_of_any_key() {
        let t0 = Instant::now();
        let mut r = Refusals::new(Duration::from_secs(10), 8);
        r.refuse(key(1, "WhoAmI"), t0);
        r.refuse(key(1, "WhoAmI"), t0);
        let (rec, done) = r.refuse(key(2, "WhoAmI"), t0 + Duration::from_secs(12));
        assert!(rec);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].count, 1);
    }
}
