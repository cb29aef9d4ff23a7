//! The store: a small key-value trait with compare-and-swap preconditions.
//!
//! Catalog, executions and the agent registry all persist through [`Store`].
//! Keys are UTF-8 paths (`e/<execution>`, `c/<execution>/<task>/<index>`);
//! every key carries the revision of its last write, and [`Store::commit`]
//! applies a batch atomically only if every precondition holds — the
//! mechanism that records a child's terminal state exactly once. A batch may
//! also check a key without writing it and delete a whole prefix; a backend
//! states its limits per commit, and its errors say whether a retry can help
//! ([`StoreError::retryable`]). A watch streams the changes under a prefix,
//! from a revision. Two backends: [`embedded::EmbeddedStore`] (redb, one file,
//! the default) and [`etcd::EtcdStore`] for HA coordinators; [`open`] opens
//! the one configured. Both pass the `conformance` suite. Tests
//! use `fake::FakeStore`: in memory, it passes the same suite and can hold,
//! fail and record commits (the faults the scheduler's loop must survive).
//! A batch larger than a backend's limits is committed in order, in chunks
//! that fit, by [`split::commit_in_chunks`].
//! A leader writes through [`fenced::FencedStore`], which makes every commit
//! of its term check the term's fence key.

use std::path::Path;
use std::sync::Arc;

use crate::error::CoordinatorError;

pub mod config;
pub mod embedded;
pub mod etcd;
pub mod fenced;
pub(crate) mod kv;
pub mod split;

#[cfg(test)]
pub(crate) mod conformance;
#[cfg(test)]
pub(crate) mod fake;

pub use config::{EtcdConfig, EtcdTls, StoreConfig};
pub use kv::{
    BoxFuture, KeyValue, Limits, Op, Precondition, Revision, Store, StoreError, WatchEvent,
    WatchStream, event_key, event_revision,
};

/// Opens the configured store: the embedded one in `data_dir`
/// (`coordinator.redb`), or etcd, connected and answering (retried for
/// `connect_patience`, then `STORE_UNAVAILABLE`).
pub async fn open(
    config: &StoreConfig,
    data_dir: &Path,
) -> Result<Arc<dyn Store>, CoordinatorError> {
    Ok(open_shared(config, data_dir).await?.0)
}

/// [`open`], with the etcd client the store uses (`None` for the embedded
/// store), for the leadership to share (`leadership::etcd::EtcdLeadership::new`).
pub async fn open_shared(
    config: &StoreConfig,
    data_dir: &Path,
) -> Result<(Arc<dyn Store>, Option<etcd::Etcd>), CoordinatorError> {
    match config {
        StoreConfig::Embedded => {
            let path = data_dir.join("coordinator.redb");
            let store = tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open(&path))
                .await
                .map_err(|e| CoordinatorError::Store(e.to_string()))??;
            Ok((Arc::new(store), None))
        }
        StoreConfig::Etcd(config) => {
            let client = etcd::connect(config).await?;
            let store = etcd::EtcdStore::new(client.clone());
            Ok((Arc::new(store), Some(client)))
        }
    }
}
