//! Storage quota per principal: one user cannot fill the coordinator's store.
//!
//! What a principal uses is the bytes of what it put in the store and that is
//! still there:
//!
//! - every package version it deployed (`VersionRecord::bytes`, the bundle's
//!   size; freed when the package is deleted), recorded with the version under
//!   [`VERSION_USAGE_PREFIX`]`<principal>/<package id>/<version>`, so that a
//!   check reads the principal's own keys, not every version of the catalog
//!   (a store written before these keys existed gets them once, at the first
//!   check after the upgrade);
//! - every execution it started that retention has not removed yet: the bundle
//!   and parameters the execution record keeps (recorded at start under
//!   [`USAGE_PREFIX`]`<principal>/<execution id>`, a small key that retention
//!   deletes with the execution).
//!
//! A start or deploy that would take the principal past the limit
//! (`--quota-bytes-per-principal`, default [`DEFAULT_QUOTA_BYTES`], 0: none) is
//! refused with `QUOTA_EXCEEDED`, naming what is used and the limit; other
//! principals are not affected. The check reads the principal's usage records
//! and version usage records (small), not the bundles.
//!
//! **Concurrent calls**: a start or deploy reserves its bytes in memory
//! ([`Quota::reserve`]) before it plans, and the check counts the bytes every
//! call of the principal in progress has reserved, so concurrent starts of one
//! principal cannot all pass. The reservation is released when the call fails
//! and, on success, only after the usage it became is stored (for a moment it
//! counts twice, never zero times). Reservations live in one coordinator's
//! memory (one coordinator per store).
//!
//! Not counted: children's records and outputs (bounded per child by the
//! agent's limits) and sub-executions, which run under their parent's start.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::auth::{Method, Principal};
use crate::catalog::model::{VERSION_PREFIX, VersionRecord};
use crate::error::CoordinatorError;
use crate::store::{Op, Precondition, Store};

/// Default quota: 1 GiB per principal.
pub const DEFAULT_QUOTA_BYTES: u64 = 1 << 30;
use crate::keys::VERSION_USAGE_INDEXED;
pub use crate::keys::{
    USAGE_PREFIX, VERSION_USAGE_PREFIX, usage_execution, usage_key, version_usage_key,
};

/// The put of the usage record of a version, committed with the version.
pub fn version_usage_put(package_id: &str, v: &VersionRecord) -> Result<Op, CoordinatorError> {
    Ok(Op::Put {
        key: version_usage_key(&v.deployed_by, package_id, v.version),
        value: serde_json::to_vec(&ExecutionUsage {
            who: v.deployed_by.clone(),
            bytes: v.bytes,
        })
        .map_err(|e| CoordinatorError::Store(format!("usage record: {e}")))?,
        pre: Precondition::Any,
    })
}

/// The delete of the usage record of a version, committed with its removal.
pub fn version_usage_delete(package_id: &str, v: &VersionRecord) -> Op {
    Op::Delete {
        key: version_usage_key(&v.deployed_by, package_id, v.version),
        pre: Precondition::Any,
    }
}

/// What an execution or a package version counts against its principal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ExecutionUsage {
    who: String,
    bytes: u64,
}

/// Bytes an execution record keeps of a bundle and its parameters.
pub fn bundle_bytes(
    root: &str,
    files: &BTreeMap<String, String>,
    params: &BTreeMap<String, String>,
) -> u64 {
    let sum = |m: &BTreeMap<String, String>| -> u64 {
        m.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
    };
    root.len() as u64 + sum(files) + sum(params)
}

/// What one principal uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub packages: u64,
    pub executions: u64,
}

impl Usage {
    pub fn total(&self) -> u64 {
        self.packages.saturating_add(self.executions)
    }
}

/// Bytes reserved per principal by the calls in progress.
type Reserved = Arc<std::sync::Mutex<BTreeMap<String, u64>>>;

/// The quota over a store.
#[derive(Clone)]
pub struct Quota {
    store: Arc<dyn Store>,
    /// Bytes per principal; 0: no quota.
    limit_bytes: u64,
    reserved: Reserved,
    /// Every stored version has its usage record ([`Quota::index_versions`]).
    indexed: Arc<tokio::sync::OnceCell<()>>,
}

/// Bytes a start or deploy in progress counts against its principal until it
/// is dropped ([`Quota::reserve`]). Drop it once what it became is stored
/// ([`Quota::record_execution`], a deployed version), or on failure.
#[must_use]
#[derive(Debug)]
pub struct Reservation {
    /// None: nothing reserved (no quota, or the insecure principal).
    held: Option<(Reserved, String, u64)>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some((reserved, who, bytes)) = self.held.take() {
            let mut map = reserved.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&who) {
                *n = n.saturating_sub(bytes);
                if *n == 0 {
                    map.remove(&who);
                }
            }
        }
    }
}

impl std::fmt::Debug for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quota")
            .field("limit_bytes", &self.limit_bytes)
            .finish_non_exhaustive()
    }
}

impl Quota {
    pub fn new(store: Arc<dyn Store>, limit_bytes: u64) -> Quota {
        Quota {
            store,
            limit_bytes,
            reserved: Arc::default(),
            indexed: Arc::default(),
        }
    }

    /// Gives every stored version without one its usage record (a store from
    /// before they existed), once. Each is written only if its version is
    /// still there unchanged (re-put in the same commit with its revision as
    /// precondition): a package deleted meanwhile leaves no record behind.
    async fn index_versions(&self) -> Result<(), CoordinatorError> {
        if self.store.get(VERSION_USAGE_INDEXED).await?.is_some() {
            return Ok(());
        }
        for kv in self.store.range(VERSION_PREFIX).await? {
            let Ok(v) = serde_json::from_slice::<VersionRecord>(&kv.value) else {
                continue;
            };
            let Some((package_id, _)) = kv.key[VERSION_PREFIX.len()..].split_once('/') else {
                continue;
            };
            let ops = vec![
                Op::Put {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    pre: Precondition::Revision(kv.mod_revision),
                },
                version_usage_put(package_id, &v)?,
            ];
            match self.store.commit(ops).await {
                Ok(_) | Err(crate::store::StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.store
            .commit(vec![Op::Put {
                key: VERSION_USAGE_INDEXED.to_string(),
                value: b"1".to_vec(),
                pre: Precondition::Any,
            }])
            .await?;
        Ok(())
    }

    /// Bytes reserved by `who`'s calls in progress.
    fn reserved_by(&self, who: &str) -> u64 {
        let map = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
        map.get(who).copied().unwrap_or(0)
    }

    /// [`Self::check`] that also holds the `adding` bytes for `who` until the
    /// returned reservation is dropped: concurrent calls of one principal
    /// count each other. The bytes are reserved before the stored usage is
    /// read, so of two racing calls at least the later sees both.
    pub async fn reserve(
        &self,
        who: &Principal,
        adding: u64,
    ) -> Result<Reservation, CoordinatorError> {
        if self.limit_bytes == 0 || who.method == Method::Insecure {
            return Ok(Reservation { held: None });
        }
        {
            let mut map = self.reserved.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(who.name.clone()).or_default();
            *n = n.saturating_add(adding);
        }
        let reservation = Reservation {
            held: Some((self.reserved.clone(), who.name.clone(), adding)),
        };
        let stored = self.usage(&who.name).await?.total();
        // Other calls in progress: all reserved but this one's.
        let others = self.reserved_by(&who.name).saturating_sub(adding);
        let used = stored.saturating_add(others);
        if used.saturating_add(adding) > self.limit_bytes {
            return Err(CoordinatorError::QuotaExceeded {
                principal: who.name.clone(),
                used,
                adding,
                limit: self.limit_bytes,
            });
        }
        Ok(reservation)
    }

    /// What `who` uses now.
    pub async fn usage(&self, who: &str) -> Result<Usage, CoordinatorError> {
        let mut u = Usage::default();
        for kv in self.store.range(&format!("{USAGE_PREFIX}{who}/")).await? {
            if let Ok(e) = serde_json::from_slice::<ExecutionUsage>(&kv.value)
                && e.who == who
            {
                u.executions = u.executions.saturating_add(e.bytes);
            }
        }
        self.indexed
            .get_or_try_init(|| self.index_versions())
            .await?;
        for kv in self
            .store
            .range(&format!("{VERSION_USAGE_PREFIX}{who}/"))
            .await?
        {
            if let Ok(v) = serde_json::from_slice::<ExecutionUsage>(&kv.value)
                && v.who == who
            {
                u.packages = u.packages.saturating_add(v.bytes);
            }
        }
        Ok(u)
    }

    /// Refuses with `QUOTA_EXCEEDED` when `adding` more bytes would take `who`
    /// past the limit (counting what its calls in progress reserved), without
    /// reserving them. The insecure principal (plaintext on loopback,
    /// everyone) is not limited.
    pub async fn check(&self, who: &Principal, adding: u64) -> Result<(), CoordinatorError> {
        self.reserve(who, adding).await.map(drop)
    }

    /// Records that execution `id`, started by `who`, keeps `bytes`. Called once
    /// the execution is durable: a failure here does not undo the start (which
    /// the caller was told about), it is logged and the execution goes uncounted.
    pub async fn record_execution(&self, id: &str, who: &Principal, bytes: u64) {
        if let Err(e) = self.put_usage(id, who, bytes).await {
            tracing::warn!(execution = id, principal = %who, error = %e, "cannot record the execution's quota usage");
        }
    }

    async fn put_usage(
        &self,
        id: &str,
        who: &Principal,
        bytes: u64,
    ) -> Result<(), CoordinatorError> {
        let value = serde_json::to_vec(&ExecutionUsage {
            who: who.name.clone(),
            bytes,
        })
        .map_err(|e| CoordinatorError::Store(format!("usage record: {e}")))?;
        self.store
            .commit(vec![Op::Put {
                key: usage_key(&who.name, id),
                value,
                pre: Precondition::Any,
            }])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    fn principal(name: &str) -> Principal {
        Principal {
            name: name.into(),
            method: Method::Certificate,
        }
    }

    fn version(who: &str, bytes: u64) -> Vec<u8> {
        serde_json::to_vec(&VersionRecord {
            version: 1,
            hash: "h".into(),
            root: "p.toml".into(),
            files: BTreeMap::new(),
            package_name: "p".into(),
            parameters: Vec::new(),
            bytes,
            deployed_unix_ms: 0,
            deployed_by: who.into(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_principal_over_quota_is_refused_while_another_is_not_and_retention_frees() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let q = Quota::new(store.clone(), 1_000);
        let (alice, bob) = (principal("alice"), principal("bob"));
        store
            .commit(vec![Op::Put {
                key: format!("{VERSION_PREFIX}pkg1/0000000001"),
                value: version("alice", 600),
                pre: Precondition::Any,
            }])
            .await
            .unwrap();
        q.record_execution("e1", &alice, 300).await;
        assert_eq!(usage_execution(&usage_key("alice", "e1")), Some("e1"));
        assert_eq!(
            q.usage("alice").await.unwrap(),
            Usage {
                packages: 600,
                executions: 300
            }
        );
        q.check(&alice, 100).await.unwrap();
        let e = q.check(&alice, 101).await.unwrap_err();
        assert_eq!(e.code(), "QUOTA_EXCEEDED");
        let text = e.to_string();
        assert!(
            text.contains("alice uses 900 bytes") && text.contains("limit is 1000"),
            "{text}"
        );
        q.check(&bob, 1_000).await.unwrap();
        // Retention removes the execution with its usage record: freed.
        store
            .commit(vec![Op::Delete {
                key: usage_key("alice", "e1"),
                pre: Precondition::Any,
            }])
            .await
            .unwrap();
        q.check(&alice, 400).await.unwrap();
        // No quota, and the insecure principal, are never refused.
        Quota::new(store.clone(), 0)
            .check(&alice, u64::MAX)
            .await
            .unwrap();
        let insecure = Principal {
            name: "insecure".into(),
            method: Method::Insecure,
        };
        q.check(&insecure, u64::MAX).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_calls_of_one_principal_count_each_others_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let q = Quota::new(store.clone(), 1_000);
        let (alice, bob) = (principal("alice"), principal("bob"));
        let first = q.reserve(&alice, 600).await.unwrap();
        // A second start while the first plans: 600 + 600 > 1000.
        let e = q.reserve(&alice, 600).await.unwrap_err();
        assert_eq!(e.code(), "QUOTA_EXCEEDED");
        assert!(e.to_string().contains("alice uses 600 bytes"), "{e}");
        assert_eq!(q.reserved_by("alice"), 600, "a refused call holds nothing");
        // Another principal is not affected.
        let _bob = q.reserve(&bob, 1_000).await.unwrap();
        // The first one succeeds: its usage is stored, then it is released.
        q.record_execution("e1", &alice, 600).await;
        drop(first);
        assert_eq!(q.reserved_by("alice"), 0);
        assert!(
            q.reserve(&alice, 600).await.is_err(),
            "now stored, still counted"
        );
        // A call that fails releases its bytes.
        let failed = q.reserve(&alice, 400).await.unwrap();
        drop(failed);
        let _again = q.reserve(&alice, 400).await.unwrap();
        // No quota, and the insecure principal: nothing reserved.
        let insecure = Principal {
            name: "insecure".into(),
            method: Method::Insecure,
        };
        let _r = q.reserve(&insecure, u64::MAX).await.unwrap();
        assert_eq!(q.reserved_by("insecure"), 0);
    }

    #[tokio::test]
    async fn version_usage_is_read_from_the_principals_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        // A store from before the usage records: one version of alice's.
        let old_key = format!("{VERSION_PREFIX}pkg1/0000000001");
        store
            .commit(vec![Op::Put {
                key: old_key.clone(),
                value: version("alice", 600),
                pre: Precondition::Any,
            }])
            .await
            .unwrap();
        let q = Quota::new(store.clone(), 1_000);
        assert_eq!(
            q.usage("alice").await.unwrap().packages,
            600,
            "indexed once"
        );
        assert_eq!(q.usage("bob").await.unwrap().packages, 0);
        let usage_key = version_usage_key("alice", "pkg1", 1);
        assert!(store.get(&usage_key).await.unwrap().is_some());
        // From now on only the usage records are read: a deploy writes one
        // with its version, a removal deletes it with the version.
        let mut v: VersionRecord = serde_json::from_slice(&version("bob", 300)).unwrap();
        v.version = 2;
        store
            .commit(vec![
                Op::Put {
                    key: format!("{VERSION_PREFIX}pkg2/0000000002"),
                    value: serde_json::to_vec(&v).unwrap(),
                    pre: Precondition::Any,
                },
                version_usage_put("pkg2", &v).unwrap(),
            ])
            .await
            .unwrap();
        assert_eq!(q.usage("bob").await.unwrap().packages, 300);
        let alice_v: VersionRecord = serde_json::from_slice(&version("alice", 600)).unwrap();
        store
            .commit(vec![
                Op::Delete {
                    key: old_key,
                    pre: Precondition::Any,
                },
                version_usage_delete("pkg1", &alice_v),
            ])
            .await
            .unwrap();
        assert_eq!(q.usage("alice").await.unwrap().packages, 0, "freed");
        // Another coordinator over the same store does not index again.
        let again = Quota::new(store.clone(), 1_000);
        assert_eq!(again.usage("bob").await.unwrap().packages, 300);
        assert_eq!(again.usage("alice").await.unwrap().packages, 0);
    }
}
