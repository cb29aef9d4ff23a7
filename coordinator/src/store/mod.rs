//! The store: a small key-value trait with compare-and-swap preconditions.
//!
//! Catalog, executions and the agent registry all persist through [`Store`].
//! Keys are UTF-8 paths (`e/<execution>`, `c/<execution>/<task>/<index>`);
//! every key carries the revision of its last write, and [`Store::commit`]
//! applies a batch atomically only if every precondition holds — the
//! mechanism that records a child's terminal state exactly once. A batch may
//! also check a key without writing it and delete a whole prefix; a backend
//! states its limits per commit, and its errors say whether a retry can help
//! ([`StoreError::retryable`]). Two backends
//! are planned: [`embedded::EmbeddedStore`] (redb, one file, the default) and
//! etcd for HA coordinators; both must pass the `conformance` suite. Tests
//! use `fake::FakeStore`: in memory, it passes the same suite and can hold,
//! fail and record commits (the faults the scheduler's loop must survive).
//! A batch larger than a backend's limits is committed in order, in chunks
//! that fit, by [`split::commit_in_chunks`].
//! A leader writes through [`fenced::FencedStore`], which makes every commit
//! of its term check the term's fence key.

pub mod config;
pub mod embedded;
pub mod fenced;
mod kv;
pub mod split;

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod fake;

pub use config::{EtcdConfig, EtcdTls, StoreConfig};
pub use kv::{
    BoxFuture, KeyValue, Limits, Op, Precondition, Revision, Store, StoreError, Watch, WatchEvent,
};
