//! Leadership: which coordinator may write the store, and the fencing token
//! that proves it.
//!
//! A coordinator [`Leadership::campaign`]s until it leads, and gets a
//! [`Term`]: its epoch (strictly greater than every earlier term's, so agents
//! refuse dispatches of a deposed leader with `STALE_EPOCH`) and the key and
//! revision that every commit of the term checks, so that a commit made after
//! the term ended is refused by the store itself (`StoreError::Fenced`) rather
//! than by each writer remembering to ask. A term ends when `Term::lost` is
//! cancelled (lease expired, store unreachable for longer than the lease) or
//! when the coordinator resigns (a commit fenced, an agent said
//! `STALE_EPOCH`); the coordinator then drops its in-memory state and
//! campaigns again — it never exits for that.
//!
//! Two implementations: embedded (one node; the epoch taken with a
//! compare-and-set on `m/epoch`) and etcd (the election API on a lease; the
//! epoch is the leader key's creation revision).

use tokio_util::sync::CancellationToken;

pub mod etcd;

use crate::store::{BoxFuture, Revision, StoreError};

/// One uninterrupted period of leadership.
#[derive(Debug, Clone)]
pub struct Term {
    /// The fencing token: strictly greater than every earlier term's epoch.
    pub epoch: u64,
    /// The key every commit of this term checks ...
    pub fence_key: String,
    /// ... at exactly this revision (its last write when the term began).
    pub fence_revision: Revision,
    /// Cancelled when the term is over; writers and background work stop.
    pub lost: CancellationToken,
}

/// Campaigning for, holding and giving up leadership.
pub trait Leadership: Send + Sync + 'static {
    /// Waits until this coordinator leads, advertising `advertise` (the URL
    /// clients and agents should use) to the others, and returns the term.
    fn campaign<'a>(&'a self, advertise: &'a str) -> BoxFuture<'a, Result<Term, StoreError>>;
    /// The URL the current leader advertised, or `None` while none leads.
    fn leader(&self) -> BoxFuture<'_, Result<Option<String>, StoreError>>;
    /// Ends `term` now (a fenced commit, a `STALE_EPOCH` from an agent, a
    /// shutdown): `term.lost` is cancelled and another may lead.
    fn resign<'a>(&'a self, term: &'a Term) -> BoxFuture<'a, Result<(), StoreError>>;
}
