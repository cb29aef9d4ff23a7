//! The coordinator's metrics for the whole life of the process.
//!
//! A coordinator's scheduler, store handle and audit are rebuilt on each
//! leadership term; the `/metrics` endpoint is not. The [`Registry`] is made
//! once per process (by the CLI, which serves it) and handed to every term:
//! the term's feeder (`feed.rs`) publishes the scheduler's snapshot into it
//! about once a second, the measured store (`measured.rs`) records every
//! commit, and a scrape only reads it — a scrape never reaches the scheduler.
//!
//! Counters survive terms: when a term ends (or the next begins) its last
//! published counts are carried, so that `_total` series never go down in
//! one process. What a term counted after its last publish (under a second)
//! is not carried.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::auth::audit::Audit;
use crate::metrics::{Histogram, Latency, MetricsSnapshot, Stats};

/// Commits of the store, as the measured store saw them.
#[derive(Debug, Clone, Default)]
pub struct Commits {
    /// Duration of each commit that returned, in µs.
    pub duration_us: Histogram,
    /// Operations per commit.
    pub ops: Histogram,
    /// Bytes (keys and values) per commit.
    pub bytes: Histogram,
    /// Commits that returned an error.
    pub failed: u64,
}

/// What a scrape reads (see [`Registry::read`]).
#[derive(Debug, Clone, Default)]
pub struct State {
    /// Counters and histograms of ended terms.
    pub carried_stats: Stats,
    pub carried_latency: Latency,
    /// The current term's last snapshot (its counters since the term began).
    pub current: Option<MetricsSnapshot>,
    /// Whether this coordinator leads now, and its term's epoch.
    pub leader: bool,
    pub epoch: u64,
    /// Terms this process has led.
    pub terms: u64,
    pub commits: Commits,
    /// Bytes the store occupies (the backend's own figure), when known.
    pub store_size_bytes: Option<u64>,
}

impl State {
    /// Counters since the process started: carried terms and the current one.
    pub fn stats(&self) -> Stats {
        let mut s = self.carried_stats;
        if let Some(c) = &self.current {
            s.add(&c.stats);
        }
        s
    }

    /// Latency histograms since the process started.
    pub fn latency(&self) -> Latency {
        let mut l = self.carried_latency.clone();
        if let Some(c) = &self.current {
            l.accept_us.merge(&c.latency.accept_us);
            l.completion_ms.merge(&c.latency.completion_ms);
        }
        l
    }

    /// Ends the current term's contribution: its counts are carried.
    fn carry(&mut self) {
        if let Some(c) = self.current.take() {
            self.carried_stats.add(&c.stats);
            self.carried_latency.accept_us.merge(&c.latency.accept_us);
            self.carried_latency
                .completion_ms
                .merge(&c.latency.completion_ms);
        }
    }
}

/// The process-wide registry (see the module doc). Cheap to share: `Arc`.
#[derive(Default)]
pub struct Registry {
    state: Mutex<State>,
    /// The audit of the current term: refusals of the metrics endpoint go there.
    audit: Mutex<Option<Arc<Audit>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding it left plain numbers: still readable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A term began: what an earlier one published is carried. Returns the
    /// term's number, which its publications carry: a late word of an ended
    /// term (its feeder finishing after the next term began) is ignored.
    pub fn term_begins(&self, audit: Arc<Audit>) -> u64 {
        let mut s = self.lock();
        s.carry();
        s.leader = true;
        s.terms += 1;
        let term = s.terms;
        drop(s);
        *self.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(audit);
        term
    }

    /// Term `term` ended (lost, resigned or shut down).
    pub fn term_ends(&self, term: u64) {
        let mut s = self.lock();
        if s.terms != term {
            return;
        }
        s.carry();
        s.leader = false;
    }

    /// Term `term`'s scheduler snapshot.
    pub fn publish(&self, term: u64, snapshot: MetricsSnapshot) {
        let mut s = self.lock();
        if s.terms != term {
            return;
        }
        s.epoch = snapshot.gauges.epoch;
        s.current = Some(snapshot);
    }

    /// A commit returned after `took`, `ok` or not, with `ops` operations of `bytes` bytes.
    pub fn commit_done(&self, took: Duration, ops: usize, bytes: usize, ok: bool) {
        let mut s = self.lock();
        if ok {
            let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            s.commits.duration_us.record(us);
            s.commits.ops.record(ops as u64);
            s.commits.bytes.record(bytes as u64);
        } else {
            s.commits.failed += 1;
        }
    }

    pub fn set_store_size(&self, bytes: u64) {
        self.lock().store_size_bytes = Some(bytes);
    }

    /// A copy of what a scrape shows.
    pub fn read(&self) -> State {
        self.lock().clone()
    }

    /// A request to the metrics endpoint was refused (`code`: why, a fixed
    /// word): audited like every refusal of the coordinator, aggregated per
    /// source, when a term is running; otherwise only counted by the server.
    pub fn refused(&self, source: IpAddr, code: &str) {
        let audit = self.audit.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(audit) = audit {
            audit.denied_from(Some(source), "metrics client", "GET /metrics", "", code);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Gauges;

    fn snapshot(dispatches: u64, accept: &[u64], epoch: u64) -> MetricsSnapshot {
        let mut latency = Latency::default();
        for &v in accept {
            latency.accept_us.record(v);
        }
        MetricsSnapshot {
            latency,
            stats: Stats {
                dispatches,
                ..Stats::default()
            },
            gauges: Gauges {
                epoch,
                ..Gauges::default()
            },
        }
    }

    #[test]
    fn counters_survive_terms() {
        let r = Registry::default();
        let dir = tempfile::tempdir().unwrap();
        let audit = Arc::new(Audit::open(dir.path()).unwrap());
        let t1 = r.term_begins(audit.clone());
        r.publish(t1, snapshot(3, &[10, 20], 1));
        r.publish(t1, snapshot(5, &[10, 20, 30], 1));
        assert_eq!(r.read().stats().dispatches, 5);
        r.term_ends(t1);
        let s = r.read();
        assert!(!s.leader);
        assert_eq!(s.stats().dispatches, 5);
        let t2 = r.term_begins(audit);
        r.publish(t2, snapshot(2, &[40], 2));
        // A late word of the ended term changes nothing.
        r.publish(t1, snapshot(99, &[1], 1));
        r.term_ends(t1);
        assert!(r.read().leader);
        let s = r.read();
        assert!(s.leader);
        assert_eq!((s.terms, s.epoch), (2, 2));
        assert_eq!(s.stats().dispatches, 7);
        assert_eq!(s.latency().accept_us.count(), 4);
    }

    #[test]
    fn commits_are_recorded() {
        let r = Registry::default();
        r.commit_done(Duration::from_micros(800), 3, 120, true);
        r.commit_done(Duration::from_micros(900), 1, 10, false);
        let c = r.read().commits;
        assert_eq!(c.duration_us.count(), 1);
        assert_eq!(c.ops.sum(), 3);
        assert_eq!(c.bytes.sum(), 120);
        assert_eq!(c.failed, 1);
    }
}
