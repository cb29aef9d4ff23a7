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
//! The table is bounded: at most [`KEYS_MAX`] keys are tracked at once, and at
//! most [`KEYS_PER_SOURCE`] of them for one source (an IPv4 address, or an IPv6
//! /64), so that one source varying what it claims cannot take the whole table;
//! a refusal that would need another key past either bound is counted in one
//! overflow summary ("N more refusals from other sources"). The strings of a key
//! are capped by [`crate::auth::audit`] ([`STRING_MAX`] bytes). Memory is bounded
//! by `KEYS_MAX` entries whatever the number of sources.
//!
//! A refusal costs O(1): the table is swept by [`Refusals::flush`] from the
//! audit's one-second ticker, not on every refusal (a refusal of a key whose
//! window is over ends that window itself).
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
/// Most keys tracked at once for one source (see [`source_bucket`]).
pub const KEYS_PER_SOURCE: usize = 256;
/// Longest string of a key, in bytes (longer ones are truncated by the audit).
pub const STRING_MAX: usize = 128;

/// The source a per-source bound counts against: the IPv4 address, or the /64
/// of an IPv6 one (one host usually holds a whole /64).
pub fn source_bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
        },
    }
}

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
    per_source_max: usize,
    keys: HashMap<Key, Counted>,
    /// Keys tracked per [`source_bucket`].
    per_source: HashMap<IpAddr, usize>,
    overflow: Option<Counted>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals::new(WINDOW, KEYS_MAX)
    }
}

impl Refusals {
    pub fn new(window: Duration, keys_max: usize) -> Refusals {
        Refusals::with_per_source(window, keys_max, KEYS_PER_SOURCE)
    }

    /// A table of at most `keys_max` keys, `per_source_max` per source.
    pub fn with_per_source(window: Duration, keys_max: usize, per_source_max: usize) -> Refusals {
        Refusals {
            window,
            keys_max: keys_max.max(1),
            per_source_max: per_source_max.max(1),
            keys: HashMap::new(),
            per_source: HashMap::new(),
            overflow: None,
        }
    }

    fn forget_source(per_source: &mut HashMap<IpAddr, usize>, key: &Key) {
        if let Some(ip) = key.source {
            let b = source_bucket(ip);
            if let Some(n) = per_source.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    per_source.remove(&b);
                }
            }
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
    /// was only counted (a later [`Refusals::flush`] summarises it). O(1): only
    /// this key's window (and the overflow's) is looked at; when it is over, its
    /// summary is returned and this refusal starts the next window (recorded).
    pub fn refuse(&mut self, key: Key, now: Instant) -> (bool, Vec<Summary>) {
        let window = self.window;
        let over = |c: &Counted| now.saturating_duration_since(c.since) >= window;
        let mut done = Vec::new();
        if let Some(c) = self.overflow.filter(|c| over(c)) {
            self.overflow = None;
            done.push(Summary {
                key: None,
                count: c.more,
                window,
            });
        }
        if let Some(c) = self.keys.get_mut(&key) {
            if !over(c) {
                c.more += 1;
                return (false, done);
            }
            if c.more > 0 {
                done.push(Summary {
                    key: Some(key.clone()),
                    count: c.more,
                    window,
                });
            }
            *c = Counted {
                since: now,
                more: 0,
            };
            return (true, done);
        }
        let bucket = key.source.map(source_bucket);
        let source_full = bucket
            .is_some_and(|b| self.per_source.get(&b).copied().unwrap_or(0) >= self.per_source_max);
        if self.keys.len() >= self.keys_max || source_full {
            self.overflow
                .get_or_insert(Counted {
                    since: now,
                    more: 0,
                })
                .more += 1;
            return (false, done);
        }
        if let Some(b) = bucket {
            *self.per_source.entry(b).or_insert(0) += 1;
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
        let per_source = &mut self.per_source;
        self.keys.retain(|k, c| {
            if !over(c) {
                return true;
            }
            Refusals::forget_source(per_source, k);
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
    fn a_refusal_does_not_sweep_the_table_only_its_own_expired_window() {
        let t0 = Instant::now();
        let mut r = Refusals::new(Duration::from_secs(10), 8);
        r.refuse(key(1, "WhoAmI"), t0);
        r.refuse(key(1, "WhoAmI"), t0);
        // Another key's refusal leaves key 1 to the ticker's flush.
        let (rec, done) = r.refuse(key(2, "WhoAmI"), t0 + Duration::from_secs(12));
        assert!(rec);
        assert!(done.is_empty(), "{done:?}");
        assert_eq!(r.len(), 2);
        // Key 1's own next refusal ends its window and starts the next.
        let (rec, done) = r.refuse(key(1, "WhoAmI"), t0 + Duration::from_secs(12));
        assert!(rec);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].count, 1);
        assert_eq!(r.len(), 2);
        let done = r.flush(t0 + Duration::from_secs(22));
        assert!(done.is_empty(), "nothing more was counted: {done:?}");
        assert!(r.is_empty());
    }

    fn claimed(ip: IpAddr, who: usize) -> Key {
        Key {
            source: Some(ip),
            who: format!("anonymous (as agent a{who})"),
            call: "ReportEvents".into(),
            folder: String::new(),
            code: "UNAUTHENTICATED".into(),
        }
    }

    #[test]
    fn one_source_claiming_many_names_takes_at_most_its_share_of_the_table() {
        let t0 = Instant::now();
        let mut r = Refusals::with_per_source(Duration::from_secs(10), 100, 4);
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let mut recorded = 0;
        for i in 0..1000 {
            recorded += u32::from(r.refuse(claimed(attacker, i), t0).0);
        }
        assert_eq!(recorded, 4);
        assert_eq!(r.len(), 4);
        // Another source is still recorded in full.
        assert!(r.refuse(claimed("192.0.2.2".parse().unwrap(), 0), t0).0);
        // IPv6: one /64 is one source.
        let mut v6 = 0;
        for i in 0..100u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            v6 += u32::from(r.refuse(claimed(ip, 0), t0).0);
        }
        assert_eq!(v6, 4);
        assert!(
            r.refuse(claimed("2001:db8:1:3::1".parse().unwrap(), 0), t0)
                .0
        );
        // When the windows end, the per-source counts are freed too.
        let done = r.flush(t0 + Duration::from_secs(10));
        assert_eq!(done.len(), 1, "only the overflow counted more: {done:?}");
        assert_eq!(done[0].key, None);
        assert_eq!(done[0].count, 996 + 96);
        assert!(r.is_empty());
        assert!(
            r.refuse(claimed(attacker, 5000), t0 + Duration::from_secs(11))
                .0
        );
    }

    #[test]
    fn source_buckets() {
        let b = |s: &str| source_bucket(s.parse().unwrap()).to_string();
        assert_eq!(b("192.0.2.7"), "192.0.2.7");
        assert_eq!(b("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::");
        assert_eq!(b("::ffff:192.0.2.7"), "192.0.2.7");
    }
}
