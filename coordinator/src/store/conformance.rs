//! The backend-independent test suite every [`Store`] must pass.

use super::kv::{Op, Precondition, Store, StoreError, WatchEvent};

fn put(key: &str, value: &str, pre: Precondition) -> Op {
    Op::Put {
        key: key.to_string(),
        value: value.as_bytes().to_vec(),
        pre,
    }
}

/// Runs every conformance check against `store`, which must be empty.
pub(crate) async fn run_all(store: &dyn Store) {
    cas_semantics(store).await;
    batches_are_atomic(store).await;
    range_is_by_prefix_in_order(store).await;
    watch_sees_later_commits(store).await;
}

async fn cas_semantics(store: &dyn Store) {
    let r1 = store
        .commit(vec![put("cas/a", "1", Precondition::Absent)])
        .await
        .unwrap();
    // Absent fails once the key exists.
    let err = store
        .commit(vec![put("cas/a", "2", Precondition::Absent)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref key } if key == "cas/a"));
    // Revision must match exactly: a second writer with the same expectation loses.
    let r2 = store
        .commit(vec![put("cas/a", "2", Precondition::Revision(r1))])
        .await
        .unwrap();
    assert!(r2 > r1);
    let lost = store
        .commit(vec![put("cas/a", "3", Precondition::Revision(r1))])
        .await;
    assert!(matches!(lost, Err(StoreError::Conflict { .. })));
    let kv = store.get("cas/a").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"2"[..], r2));
    // Delete with a precondition.
    let bad = store
        .commit(vec![Op::Delete {
            key: "cas/a".into(),
            pre: Precondition::Revision(r1),
        }])
        .await;
    assert!(bad.is_err());
    store
        .commit(vec![Op::Delete {
            key: "cas/a".into(),
            pre: Precondition::Revision(r2),
        }])
        .await
        .unwrap();
    assert!(store.get("cas/a").await.unwrap().is_none());
}

async fn batches_are_atomic(store: &dyn Store) {
    store
        .commit(vec![put("atom/x", "1", Precondition::Absent)])
        .await
        .unwrap();
    let err = store
        .commit(vec![
            put("atom/y", "1", Precondition::Absent),
            put("atom/x", "2", Precondition::Absent), // fails
        ])
        .await;
    assert!(err.is_err());
    assert!(
        store.get("atom/y").await.unwrap().is_none(),
        "failed batch applied partly"
    );
    assert_eq!(store.get("atom/x").await.unwrap().unwrap().value, b"1");
}

async fn range_is_by_prefix_in_order(store: &dyn Store) {
    store
        .commit(vec![
            put("rng/b", "b", Precondition::Any),
            put("rng/a", "a", Precondition::Any),
            put("rngx", "no", Precondition::Any),
            put("rng/c/d", "cd", Precondition::Any),
        ])
        .await
        .unwrap();
    let keys: Vec<String> = store
        .range("rng/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["rng/a", "rng/b", "rng/c/d"]);
}

async fn watch_sees_later_commits(store: &dyn Store) {
    let mut w = store.watch("w/");
    store
        .commit(vec![
            put("other", "x", Precondition::Any),
            put("w/1", "one", Precondition::Any),
        ])
        .await
        .unwrap();
    store
        .commit(vec![Op::Delete {
            key: "w/1".into(),
            pre: Precondition::Any,
        }])
        .await
        .unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert!(
        matches!(first, Some(Ok(WatchEvent::Put(ref kv))) if kv.key == "w/1" && kv.value == b"one")
    );
    let second = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
        .await
        .unwrap();
    assert!(matches!(second, Some(Ok(WatchEvent::Delete { ref key, .. })) if key == "w/1"));
}
