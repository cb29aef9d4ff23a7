//! A [`Store`] in memory for tests, with faults on demand: it can hold its
//! commits behind a gate the test opens, fail the next N commits, and it
//! records every commit it applied (revision, operations, when). It passes
//! the same `conformance` suite as the real backends, so that a test of the
//! scheduler's loop, of recovery or of the API exercises store semantics
//! (preconditions, atomic batches, revisions) that are the real ones.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, watch};

use super::kv::{
    BoxFuture, KeyValue, Limits, Op, Precondition, Revision, Store, StoreError, WatchEvent,
    WatchStream,
};

/// One commit the store applied.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    pub revision: Revision,
    pub ops: Vec<Op>,
    /// When it was applied (tokio's clock).
    pub at: tokio::time::Instant,
}

impl Commit {
    /// The keys this commit wrote or deleted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(Op::key)
    }
}

#[derive(Default)]
struct State {
    kv: BTreeMap<String, (Vec<u8>, Revision)>,
    revision: Revision,
    /// Commits still to fail on purpose.
    fail_next: usize,
    /// Commits still to refuse as `Unavailable` (after those that fail).
    unavailable_next: usize,
    /// Commits still to let through before the injected faults apply.
    faults_after: usize,
    /// What a commit may hold (unbounded unless a test says otherwise).
    limits: Limits,
    applied: Vec<Commit>,
}

/// The in-memory store with faults. Cheap to share through `Arc`.
pub(crate) struct FakeStore {
    state: Mutex<State>,
    /// True while commits wait for the test to open the gate.
    held: watch::Sender<bool>,
    /// Commits asked for (including failed and waiting ones).
    started: watch::Sender<usize>,
    /// Commits applied.
    applied: watch::Sender<usize>,
    events: broadcast::Sender<Arc<Vec<WatchEvent>>>,
}

impl Default for FakeStore {
    fn default() -> Self {
        FakeStore {
            state: Mutex::default(),
            held: watch::Sender::new(false),
            started: watch::Sender::new(0),
            applied: watch::Sender::new(0),
            events: broadcast::channel(1024).0,
        }
    }
}

impl FakeStore {
    pub fn new() -> Arc<FakeStore> {
        Arc::new(FakeStore::default())
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commits from now on wait (unapplied) until [`Self::release_commits`].
    pub fn hold_commits(&self) {
        self.held.send_replace(true);
    }

    /// Lets waiting and later commits through.
    pub fn release_commits(&self) {
        self.held.send_replace(false);
    }

    /// The next `n` commits fail as a backend failure, applying nothing.
    pub fn fail_next_commits(&self, n: usize) {
        self.state().fail_next = n;
    }

    /// The next `n` commits (after any [`Self::fail_next_commits`]) are
    /// refused as `Unavailable`, applying nothing, as a backend without quorum.
    pub fn unavailable_next_commits(&self, n: usize) {
        self.state().unavailable_next = n;
    }

    /// The injected faults ([`Self::fail_next_commits`],
    /// [`Self::unavailable_next_commits`]) apply only after the next `n`
    /// commits went through (e.g. past the blob writes of a start, to its
    /// execution's commit by the scheduler).
    pub fn faults_after_commits(&self, n: usize) {
        self.state().faults_after = n;
    }

    /// Refuses, from now on, commits over `limits` (as a replicated backend would).
    pub fn set_limits(&self, limits: Limits) {
        self.state().limits = limits;
    }

    /// How many commits were asked for so far (applied, failed or waiting).
    pub fn commits_started(&self) -> usize {
        *self.started.borrow()
    }

    /// Waits until at least `n` commits were asked for.
    pub async fn wait_commits_started(&self, n: usize) {
        let mut rx = self.started.subscribe();
        // The sender lives in `self`: this cannot fail while `self` lives.
        let _ = rx.wait_for(|s| *s >= n).await;
    }

    /// Waits until at least `n` commits were applied.
    pub async fn wait_applied(&self, n: usize) {
        let mut rx = self.applied.subscribe();
        // The sender lives in `self`: this cannot fail while `self` lives.
        let _ = rx.wait_for(|a| *a >= n).await;
    }

    /// Every commit applied so far, in order.
    pub fn applied(&self) -> Vec<Commit> {
        self.state().applied.clone()
    }

    /// The applied commit that first wrote or deleted `key`, if any.
    pub fn first_commit_of(&self, key: &str) -> Option<Commit> {
        self.state()
            .applied
            .iter()
            .find(|c| c.keys().any(|k| k == key))
            .cloned()
    }

    /// The current value of `key` (without the async trait call).
    pub fn value(&self, key: &str) -> Option<Vec<u8>> {
        self.state().kv.get(key).map(|(v, _)| v.clone())
    }

    /// Applies `ops` if every precondition holds.
    fn apply(&self, ops: Vec<Op>) -> Result<Revision, StoreError> {
        super::kv::check_batch(&ops)?;
        let mut st = self.state();
        st.limits.admit(&ops)?;
        for (key, pre) in ops.iter().filter_map(Op::precondition) {
            let existing = st.kv.get(key).map(|(_, r)| *r);
            let ok = match pre {
                Precondition::Any => true,
                Precondition::Absent => existing.is_none(),
                Precondition::Revision(r) => existing == Some(r),
            };
            if !ok {
                return Err(StoreError::Conflict {
                    key: key.to_string(),
                });
            }
        }
        st.revision += 1;
        let revision = st.revision;
        let mut evs = Vec::with_capacity(ops.len());
        for op in &ops {
            match op {
                Op::Put { key, value, .. } => {
                    st.kv.insert(key.clone(), (value.clone(), revision));
                    evs.push(WatchEvent::Put(KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        mod_revision: revision,
                    }));
                }
                Op::Delete { key, .. } => {
                    st.kv.remove(key);
                    evs.push(WatchEvent::Delete {
                        key: key.clone(),
                        revision,
                    });
                }
                Op::Check { .. } => {}
                Op::DeletePrefix { prefix } => {
                    let keys: Vec<String> = st
                        .kv
                        .range(prefix.clone()..)
                        .take_while(|(k, _)| k.starts_with(prefix.as_str()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        st.kv.remove(&key);
                        evs.push(WatchEvent::Delete { key, revision });
                    }
                }
            }
        }
        st.applied.push(Commit {
            revision,
            ops,
            at: tokio::time::Instant::now(),
        });
        // Sent under the lock: watchers see batches in revision order.
        let _ = self.events.send(Arc::new(evs));
        self.applied.send_replace(st.applied.len());
        Ok(revision)
    }
}

impl Store for FakeStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        let found = self.state().kv.get(key).map(|(value, rev)| KeyValue {
            key: key.to_string(),
            value: value.clone(),
            mod_revision: *rev,
        });
        Box::pin(async move { Ok(found) })
    }

    fn range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        let found = self
            .state()
            .kv
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (value, rev))| KeyValue {
                key: k.clone(),
                value: value.clone(),
                mod_revision: *rev,
            })
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        self.started.send_modify(|n| *n += 1);
        let fail = {
            let mut st = self.state();
            if st.faults_after > 0 && (st.fail_next > 0 || st.unavailable_next > 0) {
                st.faults_after -= 1;
                None
            } else if st.fail_next > 0 {
                st.fail_next -= 1;
                Some(StoreError::Backend("injected commit failure".into()))
            } else if st.unavailable_next > 0 {
                st.unavailable_next -= 1;
                Some(StoreError::Unavailable("injected: no quorum".into()))
            } else {
                None
            }
        };
        let mut held = self.held.subscribe();
        Box::pin(async move {
            // The sender lives in `self`: this cannot fail while `self` lives.
            let _ = held.wait_for(|h| !*h).await;
            if let Some(e) = fail {
                return Err(e);
            }
            self.apply(ops)
        })
    }

    fn limits(&self) -> Limits {
        self.state().limits
    }

    /// Keeps no history: `from` behind the current revision yields
    /// [`StoreError::Lagged`] (see [`Store::watch`]).
    fn watch(&self, prefix: &str, from: Option<Revision>) -> WatchStream {
        // Under the lock: commits broadcast under it too, so `current` is exact.
        let st = self.state();
        let rx = self.events.subscribe();
        super::kv::broadcast_watch(prefix, rx, from, st.revision)
    }

    fn size_bytes(&self) -> u64 {
        self.state()
            .kv
            .iter()
            .map(|(k, (v, _))| (k.len() + v.len()) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn put(key: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            pre: Precondition::Any,
        }
    }

    #[tokio::test]
    async fn fake_store_passes_conformance() {
        let store = FakeStore::new();
        crate::store::conformance::run_all(store.as_ref()).await;
    }

    #[tokio::test]
    async fn fake_store_with_limits_passes_conformance() {
        let store = FakeStore::new();
        store.set_limits(Limits {
            max_ops_per_commit: Some(8),
            max_bytes_per_commit: Some(256),
        });
        crate::store::conformance::run_all(store.as_ref()).await;
    }

    #[tokio::test]
    async fn a_held_commit_applies_nothing_until_released() {
        let store = FakeStore::new();
        store.hold_commits();
        let commit = store.commit(vec![put("k")]);
        let mut commit = std::pin::pin!(commit);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut commit)
                .await
                .is_err(),
            "a held commit does not complete"
        );
        assert_eq!(store.commits_started(), 1);
        assert!(store.value("k").is_none() && store.applied().is_empty());
        store.release_commits();
        let rev = commit.await.unwrap();
        assert_eq!(store.first_commit_of("k").map(|c| c.revision), Some(rev));
    }

    #[tokio::test]
    async fn failed_commits_apply_nothing_and_later_ones_do() {
        let store = FakeStore::new();
        store.fail_next_commits(2);
        for _ in 0..2 {
            let err = store.commit(vec![put("k")]).await.unwrap_err();
            assert!(matches!(err, StoreError::Backend(_)), "{err}");
            assert!(!err.retryable());
        }
        assert!(store.value("k").is_none());
        store.commit(vec![put("k")]).await.unwrap();
        assert_eq!(store.value("k").as_deref(), Some(&b"v"[..]));
        assert_eq!((store.commits_started(), store.applied().len()), (3, 1));
    }

    #[tokio::test]
    async fn unavailable_commits_are_retryable_and_apply_nothing() {
        let store = FakeStore::new();
        store.fail_next_commits(1);
        store.unavailable_next_commits(2);
        let first = store.commit(vec![put("k")]).await.unwrap_err();
        assert!(matches!(first, StoreError::Backend(_)), "{first}");
        for _ in 0..2 {
            let err = store.commit(vec![put("k")]).await.unwrap_err();
            assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
            assert!(err.retryable());
        }
        assert!(store.value("k").is_none() && store.applied().is_empty());
        store.commit(vec![put("k")]).await.unwrap();
        assert_eq!(store.value("k").as_deref(), Some(&b"v"[..]));
    }
}
