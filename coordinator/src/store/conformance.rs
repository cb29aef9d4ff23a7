//! The backend-independent test suite every [`Store`] must pass.

use std::time::Duration;

use tokio_stream::StreamExt;

use super::kv::{Op, Precondition, Store, StoreError, WatchEvent, WatchStream};

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
    watch_from_a_revision(store).await;
    later_operations_on_a_key_win(store).await;
    check_is_a_precondition_without_a_write(store).await;
    delete_prefix_deletes_exactly_the_prefix(store).await;
    batches_over_the_limits_are_refused(store).await;
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
    let mut w = store.watch("w/", None);
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
    let first = next(&mut w).await;
    assert!(
        matches!(first, Some(Ok(WatchEvent::Put(ref kv))) if kv.key == "w/1" && kv.value == b"one")
    );
    let second = next(&mut w).await;
    assert!(matches!(second, Some(Ok(WatchEvent::Delete { ref key, .. })) if key == "w/1"));
}

/// The next item of a watch, within 5 s.
async fn next(w: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("a watch event within 5 s")
}

async fn watch_from_a_revision(store: &dyn Store) {
    let r1 = store
        .commit(vec![put("wf/a", "1", Precondition::Absent)])
        .await
        .unwrap();
    let r2 = store
        .commit(vec![put("wf/b", "2", Precondition::Absent)])
        .await
        .unwrap();
    // From the latest revision: exactly what comes after it.
    let mut w = store.watch("wf/", Some(r2));
    let r3 = store
        .commit(vec![Op::Delete {
            key: "wf/a".into(),
            pre: Precondition::Revision(r1),
        }])
        .await
        .unwrap();
    let ev = next(&mut w).await;
    assert!(
        matches!(ev, Some(Ok(WatchEvent::Delete { ref key, revision })) if key == "wf/a" && revision == r3),
        "{ev:?}"
    );
    // From an older revision: a backend with history replays what followed
    // it; one without says it cannot (Lagged) and ends.
    let mut w = store.watch("wf/", Some(r1));
    match next(&mut w).await {
        Some(Ok(WatchEvent::Put(kv))) => {
            assert_eq!((kv.key.as_str(), kv.mod_revision), ("wf/b", r2));
            let ev = next(&mut w).await;
            assert!(
                matches!(ev, Some(Ok(WatchEvent::Delete { ref key, revision })) if key == "wf/a" && revision == r3),
                "{ev:?}"
            );
        }
        Some(Err(e @ StoreError::Lagged(_))) => {
            assert!(e.retryable());
            assert!(next(&mut w).await.is_none(), "a watch ends after an error");
        }
        other => panic!("unexpected first item of a watch from {r1}: {other:?}"),
    }
}

/// Within one batch, operations apply in order: a later one on the same key
/// wins, and a put after a delete by prefix survives it.
async fn later_operations_on_a_key_win(store: &dyn Store) {
    store
        .commit(vec![
            put("seq/p/1", "old", Precondition::Any),
            put("seq/p/2", "old", Precondition::Any),
        ])
        .await
        .unwrap();
    let rev = store
        .commit(vec![
            put("seq/a", "1", Precondition::Absent),
            put("seq/a", "2", Precondition::Any),
            put("seq/b", "1", Precondition::Any),
            Op::Delete {
                key: "seq/b".into(),
                pre: Precondition::Any,
            },
            Op::DeletePrefix {
                prefix: "seq/p/".into(),
            },
            put("seq/p/2", "new", Precondition::Any),
        ])
        .await
        .unwrap();
    let got: Vec<(String, Vec<u8>, u64)> = store
        .range("seq/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect();
    assert_eq!(
        got,
        [
            ("seq/a".to_string(), b"2".to_vec(), rev),
            ("seq/p/2".to_string(), b"new".to_vec(), rev)
        ]
    );
}

async fn check_is_a_precondition_without_a_write(store: &dyn Store) {
    let r1 = store
        .commit(vec![put("chk/a", "1", Precondition::Absent)])
        .await
        .unwrap();
    // A check that holds lets the batch apply and leaves its key alone.
    let r2 = store
        .commit(vec![
            Op::Check {
                key: "chk/a".into(),
                pre: Precondition::Revision(r1),
            },
            Op::Check {
                key: "chk/none".into(),
                pre: Precondition::Absent,
            },
            put("chk/b", "1", Precondition::Any),
        ])
        .await
        .unwrap();
    let a = store.get("chk/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], r1));
    assert!(store.get("chk/none").await.unwrap().is_none());
    assert_eq!(store.get("chk/b").await.unwrap().unwrap().mod_revision, r2);
    // A check that fails refuses the whole batch, naming its key.
    let err = store
        .commit(vec![
            put("chk/c", "1", Precondition::Any),
            Op::Check {
                key: "chk/a".into(),
                pre: Precondition::Absent,
            },
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref key } if key == "chk/a"));
    assert!(store.get("chk/c").await.unwrap().is_none());
    let err = store
        .commit(vec![
            Op::Check {
                key: "chk/b".into(),
                pre: Precondition::Revision(r1),
            },
            put("chk/c", "1", Precondition::Any),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref key } if key == "chk/b"));
    assert!(store.get("chk/c").await.unwrap().is_none());
}

async fn delete_prefix_deletes_exactly_the_prefix(store: &dyn Store) {
    let before = store
        .commit(vec![
            put("dp/1/a", "x", Precondition::Any),
            put("dp/1/b/c", "x", Precondition::Any),
            put("dp/10/a", "sibling", Precondition::Any),
            put("dp/1", "parent", Precondition::Any),
        ])
        .await
        .unwrap();
    let mut w = store.watch("dp/", None);
    let rev = store
        .commit(vec![
            Op::DeletePrefix {
                prefix: "dp/1/".into(),
            },
            put("dp/2", "new", Precondition::Absent),
        ])
        .await
        .unwrap();
    assert_eq!(rev, before + 1, "one batch moves the revision once");
    let keys: Vec<String> = store
        .range("dp/")
        .await
        .unwrap()
        .into_iter()
        .map(|kv| kv.key)
        .collect();
    assert_eq!(keys, ["dp/1", "dp/10/a", "dp/2"]);
    assert_eq!(store.get("dp/2").await.unwrap().unwrap().mod_revision, rev);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ev = next(&mut w).await;
        match ev {
            Some(Ok(WatchEvent::Delete { key, revision })) => seen.push((key, revision)),
            Some(Ok(WatchEvent::Put(kv))) => seen.push((kv.key, kv.mod_revision)),
            other => panic!("unexpected watch event {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("dp/1/a".to_string(), rev),
            ("dp/1/b/c".to_string(), rev),
            ("dp/2".to_string(), rev)
        ]
    );
    // Nothing under the prefix, a precondition elsewhere failing: nothing applies.
    let err = store
        .commit(vec![
            Op::DeletePrefix {
                prefix: "dp/10/".into(),
            },
            put("dp/2", "again", Precondition::Absent),
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { ref key } if key == "dp/2"));
    assert!(store.get("dp/10/a").await.unwrap().is_some());
    // An empty prefix range is no error.
    store
        .commit(vec![Op::DeletePrefix {
            prefix: "dp/none/".into(),
        }])
        .await
        .unwrap();
    // An empty prefix (every key) is refused, and nothing of its batch applies.
    let err = store
        .commit(vec![
            put("dp/3", "x", Precondition::Any),
            Op::DeletePrefix {
                prefix: String::new(),
            },
        ])
        .await
        .unwrap_err();
    assert!(!err.retryable(), "{err}");
    assert!(store.get("dp/3").await.unwrap().is_none());
    assert!(store.get("dp/10/a").await.unwrap().is_some());
}

/// Only for a backend with limits: a batch at a limit applies, one over it is
/// refused whole with `TooLarge`.
async fn batches_over_the_limits_are_refused(store: &dyn Store) {
    let limits = store.limits();
    if let Some(max) = limits.max_ops_per_commit {
        let batch = |n: usize| -> Vec<Op> {
            (0..n)
                .map(|i| put(&format!("lim/o{i}"), "", Precondition::Any))
                .collect()
        };
        let at = batch(max);
        if limits.admit(&at).is_ok() {
            store.commit(at).await.unwrap();
        }
        let over = batch(max + 1);
        let err = store.commit(over).await.unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { ops, limits: l, .. } if ops == max + 1 && l == limits),
            "{err}"
        );
        assert!(store.get(&format!("lim/o{max}")).await.unwrap().is_none());
    }
    if let Some(max) = limits.max_bytes_per_commit {
        let key = "lim/b";
        let fits = "x".repeat(max - key.len());
        store
            .commit(vec![put(key, &fits, Precondition::Any)])
            .await
            .unwrap();
        let over = "y".repeat(max - key.len() + 1);
        let err = store
            .commit(vec![put(key, &over, Precondition::Any)])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooLarge { ops: 1, bytes, .. } if bytes == max + 1),
            "{err}"
        );
        assert_eq!(
            store.get(key).await.unwrap().unwrap().value,
            fits.as_bytes()
        );
    }
}
