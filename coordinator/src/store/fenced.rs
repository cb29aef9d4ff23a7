//! [`FencedStore`]: the store as a leader's term sees it. Every commit gets a
//! check of the term's fence key at the term's revision appended, so that a
//! commit made once another coordinator leads is refused by the store itself
//! — the scheduler, the catalog, auth, retention and the agent API are all
//! fenced without each of them remembering to be. A refused fence is
//! reported as [`StoreError::Fenced`] and ends the term (`Term::lost` is
//! cancelled); reads, watches and the rest pass through.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::kv::{
    BoxFuture, KeyValue, Limits, Op, Precondition, Revision, Store, StoreError, WatchStream,
};

/// What a term's commits check (a leadership's `Term`, as the store sees it).
#[derive(Debug, Clone)]
pub struct Fence {
    /// The term's epoch (for messages).
    pub epoch: u64,
    /// The key every commit checks ...
    pub fence_key: String,
    /// ... at exactly this revision.
    pub fence_revision: Revision,
    /// Cancelled when the term is over; cancelled here when a commit is fenced.
    pub lost: CancellationToken,
}

/// A store whose commits hold only while its term lasts.
pub struct FencedStore {
    inner: Arc<dyn Store>,
    term: Fence,
}

impl FencedStore {
    pub fn new(inner: Arc<dyn Store>, term: Fence) -> Self {
        FencedStore { inner, term }
    }

    /// The fence every commit checks.
    pub fn fence(&self) -> &Fence {
        &self.term
    }

    /// Ends the term and says why nothing was applied.
    fn fenced(&self) -> StoreError {
        self.term.lost.cancel();
        StoreError::Fenced(format!(
            "the term of epoch {} is over (its fence key '{}' moved: another coordinator leads)",
            self.term.epoch, self.term.fence_key
        ))
    }

    /// Whether the fence key still holds the term's revision (a read, made
    /// only after a conflict: a backend may not say which check failed).
    async fn fence_holds(&self) -> Result<bool, StoreError> {
        Ok(self
            .inner
            .get(&self.term.fence_key)
            .await?
            .is_some_and(|kv| kv.mod_revision == self.term.fence_revision))
    }

    /// A batch that would write the fence key itself is a programming error:
    /// the term's own write would fence it.
    fn touches_fence(&self, ops: &[Op]) -> bool {
        let fence = self.term.fence_key.as_str();
        ops.iter().any(|op| match op {
            Op::Put { key, .. } | Op::Delete { key, .. } => key == fence,
            Op::DeletePrefix { prefix } => fence.starts_with(prefix.as_str()),
            Op::Check { .. } => false,
        })
    }
}

impl Store for FencedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        self.inner.get(key)
    }

    fn range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        self.inner.range(prefix)
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        keep: Box<dyn FnMut(&KeyValue) -> bool + Send + 'static>,
    ) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        self.inner.scan(prefix, keep)
    }

    fn commit(&self, mut ops: Vec<Op>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        Box::pin(async move {
            if self.term.lost.is_cancelled() {
                return Err(self.fenced());
            }
            if self.touches_fence(&ops) {
                return Err(StoreError::Backend(format!(
                    "a leader's batch may not write its fence key '{}'",
                    self.term.fence_key
                )));
            }
            ops.push(Op::Check {
                key: self.term.fence_key.clone(),
                pre: Precondition::Revision(self.term.fence_revision),
            });
            match self.inner.commit(ops).await {
                Err(StoreError::Conflict { key }) if key == self.term.fence_key => {
                    Err(self.fenced())
                }
                Err(StoreError::Conflict { key }) => match self.fence_holds().await {
                    Ok(false) => Err(self.fenced()),
                    // The fence holds (or cannot be read now): the conflict is the batch's own.
                    Ok(true) | Err(_) => Err(StoreError::Conflict { key }),
                },
                other => other,
            }
        })
    }

    fn limits(&self) -> Limits {
        let inner = self.inner.limits();
        Limits {
            max_ops_per_commit: inner.max_ops_per_commit.map(|n| n.saturating_sub(1)),
            max_bytes_per_commit: inner
                .max_bytes_per_commit
                .map(|n| n.saturating_sub(self.term.fence_key.len())),
        }
    }

    fn watch(&self, prefix: &str, from: Option<Revision>) -> WatchStream {
        self.inner.watch(prefix, from)
    }

    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn compact(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.inner.compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fake::FakeStore;

    const FENCE: &str = "m/epoch";

    fn put(key: &str, pre: Precondition) -> Op {
        Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            pre,
        }
    }

    /// A store with the fence key written, and a term holding it.
    async fn fenced() -> (Arc<FakeStore>, FencedStore) {
        let store = FakeStore::new();
        let revision = store
            .commit(vec![put(FENCE, Precondition::Absent)])
            .await
            .unwrap();
        let term = Fence {
            epoch: 1,
            fence_key: FENCE.into(),
            fence_revision: revision,
            lost: CancellationToken::new(),
        };
        let fenced = FencedStore::new(store.clone(), term);
        (store, fenced)
    }

    /// Another writer moves the fence key (another coordinator took the lead).
    async fn move_fence(store: &FakeStore) {
        store
            .commit(vec![put(FENCE, Precondition::Any)])
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn every_commit_checks_the_fence_and_reads_pass_through() {
        let (store, fenced) = fenced().await;
        let rev = fenced
            .commit(vec![put("k", Precondition::Absent)])
            .await
            .unwrap();
        let commit = store.applied().pop().unwrap();
        assert_eq!(commit.revision, rev);
        assert_eq!(
            commit.ops.last(),
            Some(&Op::Check {
                key: FENCE.into(),
                pre: Precondition::Revision(fenced.fence().fence_revision),
            }),
            "the fence check is appended: {:?}",
            commit.ops
        );
        assert_eq!(fenced.get("k").await.unwrap().unwrap().mod_revision, rev);
        assert_eq!(fenced.range("k").await.unwrap().len(), 1);
        assert!(!fenced.fence().lost.is_cancelled());
    }

    #[tokio::test]
    async fn a_commit_after_the_fence_moved_is_fenced_applies_nothing_and_ends_the_term() {
        let (store, fenced) = fenced().await;
        move_fence(&store).await;
        let err = fenced
            .commit(vec![put("k", Precondition::Any)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        assert!(!err.retryable());
        assert!(store.value("k").is_none());
        assert!(fenced.fence().lost.is_cancelled(), "the term is over");
        // From now on nothing is even sent.
        let started = store.commits_started();
        let err = fenced.commit(vec![]).await.unwrap_err();
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        assert_eq!(store.commits_started(), started);
    }

    #[tokio::test]
    async fn a_conflict_elsewhere_is_fenced_when_the_fence_moved_too() {
        let (store, fenced) = fenced().await;
        fenced
            .commit(vec![put("k", Precondition::Absent)])
            .await
            .unwrap();
        // Its own conflict, the fence holding: a plain conflict.
        let err = fenced
            .commit(vec![put("k", Precondition::Absent)])
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict { key } if key == "k"),
            "{err}"
        );
        assert!(!fenced.fence().lost.is_cancelled());
        // The same conflict once the fence moved (the backend reports the
        // first failed check): fenced.
        move_fence(&store).await;
        let err = fenced
            .commit(vec![put("k", Precondition::Absent)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        assert!(fenced.fence().lost.is_cancelled());
    }

    #[tokio::test]
    async fn a_term_ended_elsewhere_commits_nothing() {
        let (store, fenced) = fenced().await;
        fenced.fence().lost.cancel(); // the lease ran out, or the leader resigned
        let started = store.commits_started();
        let err = fenced
            .commit(vec![put("k", Precondition::Any)])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Fenced(_)), "{err}");
        assert_eq!(store.commits_started(), started, "nothing was sent");
    }

    #[tokio::test]
    async fn writing_the_fence_key_itself_is_refused() {
        let (store, fenced) = fenced().await;
        for op in [
            put(FENCE, Precondition::Any),
            Op::DeletePrefix {
                prefix: "m/".into(),
            },
        ] {
            let err = fenced.commit(vec![op]).await.unwrap_err();
            assert!(matches!(err, StoreError::Backend(_)), "{err}");
        }
        assert!(store.value(FENCE).is_some());
    }

    #[tokio::test]
    async fn limits_leave_room_for_the_fence_check() {
        let (store, fenced) = fenced().await;
        assert_eq!(fenced.limits(), Limits::UNBOUNDED);
        store.set_limits(Limits {
            max_ops_per_commit: Some(8),
            max_bytes_per_commit: Some(256),
        });
        assert_eq!(
            fenced.limits(),
            Limits {
                max_ops_per_commit: Some(7),
                max_bytes_per_commit: Some(256 - FENCE.len()),
            }
        );
        // A batch at the reported limits fits with the check appended.
        let ops: Vec<Op> = (0..7)
            .map(|i| put(&format!("k{i}"), Precondition::Any))
            .collect();
        fenced.commit(ops).await.unwrap();
    }

    #[tokio::test]
    async fn a_fenced_store_passes_conformance() {
        let (_store, fenced) = fenced().await;
        crate::store::conformance::run_all(&fenced).await;
    }
}
