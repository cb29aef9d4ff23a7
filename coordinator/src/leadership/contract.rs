//! The leadership contract: [`Term`] and the [`Leadership`] trait every
//! implementation (embedded, etcd) provides. A leaf of `leadership/`.

use tokio_util::sync::CancellationToken;

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
