//! Retention: finished executions are kept for a while, then pruned, so the
//! store does not grow without bound.
//!
//! An ended execution is pruned when it ended longer than `keep_for` ago, or
//! when more than `keep_count` ended executions are newer than it. Pruning
//! deletes its record (`e/<id>`) and every child record (`c/<id>/…`) in batches
//! that fit the store's limits (children before the record, so that a pass
//! cut short leaves a record that the next pass prunes again),
//! then asks the store to give the freed space back. Each pass also removes
//! the catalog's package texts that nothing uses any more
//! ([`crate::catalog::blobs::sweep`]). Running executions are
//! never touched. Ended executions live only in the store (the scheduler forgets
//! them when they end), so pruning needs nothing from the scheduler.
//!
//! Agents prune their own job directories (logs, outputs, rows) by age: see
//! `baton-agent`'s retention.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::error::CoordinatorError;
use crate::records::{ExecutionRecord, children_prefix, execution_key};
use crate::store::split::commit_in_chunks;
use crate::store::{Op, Precondition, Store};

/// How long and how many ended executions are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub keep_for: Duration,
    pub keep_count: usize,
    /// How often to look.
    pub every: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            keep_for: Duration::from_secs(7 * 86_400),
            keep_count: 10_000,
            every: Duration::from_secs(300),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Report {
    pub executions: usize,
    pub records: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Most deletions gathered before they are committed (in as many commits as
/// the store's limits need: [`commit_in_chunks`]).
const BATCH: usize = 5_000;

/// The ids of ended executions to prune, given `(id, finished_unix_ms)` of every
/// ended execution. Pure, for testing.
pub fn select(mut ended: Vec<(String, u64)>, policy: &Policy, now_ms: u64) -> Vec<String> {
    // Newest first.
    ended.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let horizon =
        now_ms.saturating_sub(u64::try_from(policy.keep_for.as_millis()).unwrap_or(u64::MAX));
    ended
        .into_iter()
        .enumerate()
        .filter(|(i, (_, finished))| *i >= policy.keep_count || *finished < horizon)
        .map(|(_, (id, _))| id)
        .collect()
}

/// One pruning pass.
pub async fn prune_once(
    store: &dyn Store,
    policy: &Policy,
    now_ms: u64,
) -> Result<Report, CoordinatorError> {
    let bytes_before = store.size_bytes();
    let ended: Vec<(String, u64)> = store
        .range(crate::keys::EXECUTION_PREFIX)
        .await?
        .into_iter()
        .filter_map(|kv| serde_json::from_slice::<ExecutionRecord>(&kv.value).ok())
        .filter(|r| r.state.is_terminal())
        .map(|r| (r.id, r.finished_unix_ms))
        .collect();
    let doomed = select(ended, policy, now_ms);
    let mut report = Report {
        executions: doomed.len(),
        bytes_before,
        ..Report::default()
    };
    // execution id → its quota usage record (`quota::usage_key`).
    let counted: std::collections::HashMap<String, String> = if doomed.is_empty() {
        Default::default()
    } else {
        store
            .range(crate::quota::USAGE_PREFIX)
            .await?
            .into_iter()
            .filter_map(|kv| {
                let id = crate::quota::usage_execution(&kv.key)?.to_string();
                Some((id, kv.key))
            })
            .collect()
    };
    let mut ops = Vec::new();
    for id in &doomed {
        for kv in store.range(&children_prefix(id)).await? {
            ops.push(Op::Delete {
                key: kv.key,
                pre: Precondition::Any,
            });
        }
        ops.push(Op::Delete {
            key: execution_key(id),
            pre: Precondition::Any,
        });
        // What the execution counted against its starter's quota: freed with it.
        if let Some(key) = counted.get(id) {
            ops.push(Op::Delete {
                key: key.clone(),
                pre: Precondition::Any,
            });
        }
        if ops.len() >= BATCH {
            report.records += ops.len();
            commit_in_chunks(store, std::mem::take(&mut ops)).await?;
        }
    }
    if !ops.is_empty() {
        report.records += ops.len();
        commit_in_chunks(store, ops).await?;
    }
    // Package texts of removed catalog packages whose last executions have
    // ended (a `package rm --force` keeps them while those run).
    report.records += crate::catalog::blobs::sweep(store).await?;
    if report.records > 0 {
        store.compact().await?;
    }
    report.bytes_after = store.size_bytes();
    Ok(report)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Prunes every `policy.every` until `shutdown`.
/// `history` is held during each pass (a resume holds it while it reads the
/// execution it brings back).
pub async fn run(
    store: Arc<dyn Store>,
    policy: Policy,
    history: Arc<tokio::sync::Mutex<()>>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(policy.every) => {}
        }
        let pass = {
            let _history = history.lock().await;
            prune_once(store.as_ref(), &policy, now_ms()).await
        };
        match pass {
            Ok(r) if r.executions > 0 => info!(
                executions = r.executions,
                records = r.records,
                bytes_before = r.bytes_before,
                bytes_after = r.bytes_after,
                "pruned ended executions"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning failed; will try again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(keep_for_s: u64, keep_count: usize) -> Policy {
        Policy {
            keep_for: Duration::from_secs(keep_for_s),
            keep_count,
            every: Duration::from_secs(1),
        }
    }

    #[test]
    fn keeps_the_newest_and_the_recent() {
        let ended = vec![
            ("a".to_string(), 1_000),
            ("b".to_string(), 50_000),
            ("c".to_string(), 99_000),
            ("d".to_string(), 100_000),
        ];
        // By age: older than 10 s at t=100 s.
        let mut got = select(ended.clone(), &policy(10, 100), 100_000);
        got.sort();
        assert_eq!(got, vec!["a", "b"]);
        // By count: keep the two newest.
        let mut got = select(ended.clone(), &policy(1_000, 2), 100_000);
        got.sort();
        assert_eq!(got, vec!["a", "b"]);
        // Keeping for 0 s prunes everything that ended before now; one that
        // ended this very millisecond waits for the next pass.
        assert_eq!(select(ended.clone(), &policy(0, 100), 100_001).len(), 4);
        assert_eq!(select(ended, &policy(0, 100), 100_000).len(), 3);
        assert!(select(Vec::new(), &policy(0, 0), 1).is_empty());
    }

    /// Pruning deletes every record of the pruned executions and the file shrinks.
    #[tokio::test]
    async fn pruning_shrinks_the_store() {
        use crate::records::{ExecutionState, child_key};
        use crate::store::embedded::EmbeddedStore;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let child = serde_json::json!({"task": "fan", "index": 0, "item": "x", "phase": "succeeded",
            "attempt": 1, "outputs": {"pad": "p".repeat(200)}});
        for e in 0..200u64 {
            let id = format!("{e:06}");
            let rec = serde_json::json!({"id": id, "package": "p", "root": "p.toml", "files": {},
                "params": {}, "state": "succeeded", "created_unix_ms": e, "finished_unix_ms": e});
            let mut ops = vec![Op::Put {
                key: execution_key(&id),
                value: rec.to_string().into_bytes(),
                pre: Precondition::Any,
            }];
            if e == 0 || e == 199 {
                ops.push(Op::Put {
                    key: crate::quota::usage_key("alice", &id),
                    value: br#"{"who":"alice","bytes":100}"#.to_vec(),
                    pre: Precondition::Any,
                });
            }
            for i in 0..50 {
                ops.push(Op::Put {
                    key: child_key(&id, "fan", i),
                    value: child.to_string().into_bytes(),
                    pre: Precondition::Any,
                });
            }
            store.commit(ops).await.unwrap();
        }
        let r: ExecutionRecord =
            serde_json::from_slice(&store.get("e/000000").await.unwrap().unwrap().value).unwrap();
        assert_eq!(
            r.state,
            ExecutionState::Succeeded,
            "the fixture is a real record"
        );
        let report = prune_once(&store, &policy(1_000_000, 10), 1_000)
            .await
            .unwrap();
        assert_eq!(report.executions, 190);
        assert_eq!(report.records, 190 * 51 + 1);
        assert!(report.bytes_after < report.bytes_before / 2, "{report:?}");
        assert_eq!(store.range("e/").await.unwrap().len(), 10);
        assert!(store.range("c/000000/").await.unwrap().is_empty());
        assert_eq!(
            store.range(crate::quota::USAGE_PREFIX).await.unwrap().len(),
            1,
            "the pruned executions' quota usage is freed, the kept one's is not"
        );
        assert_eq!(
            store.range("c/000199/").await.unwrap().len(),
            50,
            "the newest are kept whole"
        );
    }

    #[tokio::test]
    async fn a_pass_larger_than_the_store_takes_per_commit_is_split_to_fit() {
        use crate::records::child_key;
        use crate::store::{Limits, fake::FakeStore};
        let store = FakeStore::new();
        for e in 0..20u64 {
            let id = format!("{e:06}");
            let rec = serde_json::json!({"id": id, "package": "p", "root": "p.toml", "files": {},
                "params": {}, "state": "failed", "created_unix_ms": e, "finished_unix_ms": e});
            let mut ops = vec![Op::Put {
                key: execution_key(&id),
                value: rec.to_string().into_bytes(),
                pre: Precondition::Any,
            }];
            for i in 0..50 {
                ops.push(Op::Put {
                    key: child_key(&id, "fan", i),
                    value: b"{}".to_vec(),
                    pre: Precondition::Any,
                });
            }
            store.commit(ops).await.unwrap();
        }
        store.set_limits(Limits {
            max_ops_per_commit: Some(128),
            max_bytes_per_commit: Some(1536 * 1024),
        });
        let before = store.applied().len();
        let report = prune_once(store.as_ref(), &policy(1_000_000, 0), 1_000)
            .await
            .unwrap();
        assert_eq!((report.executions, report.records), (20, 20 * 51));
        let pass = &store.applied()[before..];
        assert!(
            pass.len() >= 8,
            "1,020 deletions in commits of 128: {}",
            pass.len()
        );
        assert!(pass.iter().all(|c| c.ops.len() <= 128));
        assert!(
            store
                .range(crate::keys::EXECUTION_PREFIX)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .range(crate::keys::CHILD_PREFIX)
                .await
                .unwrap()
                .is_empty()
        );
    }

    proptest::proptest! {
        /// Never prunes more than it must: everything kept is within both limits,
        /// everything pruned is beyond one of them.
        #[test]
        fn selection_is_exactly_the_policy(
            finished in proptest::collection::vec(0u64..1_000_000, 0..60),
            keep_count in 0usize..40,
            keep_for_s in 0u64..1_000,
        ) {
            let now = 1_000_000;
            let ended: Vec<(String, u64)> = finished.iter().enumerate().map(|(i, f)| (format!("{i:03}"), *f)).collect();
            let p = policy(keep_for_s, keep_count);
            let doomed: std::collections::BTreeSet<String> = select(ended.clone(), &p, now).into_iter().collect();
            let horizon = now - keep_for_s * 1000;
            for (id, f) in &ended {
                let newer = ended.iter().filter(|(i2, f2)| f2 > f || (f2 == f && i2 > id)).count();
                let must_go = *f < horizon || newer >= keep_count;
                proptest::prop_assert_eq!(doomed.contains(id), must_go, "{} finished {}", id, f);
            }
        }
    }
}
