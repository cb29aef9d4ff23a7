//! Execution bundles by reference. An execution record keeps its bundle's
//! root name, the content hash of every file (path → hash) and the hash of
//! the whole bundle; the texts are blobs (`b/<sha256>`,
//! [`crate::catalog::blobs`]), stored once whoever uses them — a catalog
//! version, any number of executions and their sub-executions — so that a
//! record stays small however often it is rewritten.
//!
//! - [`refer`]: makes a new record point to its files (hashes, texts in memory).
//! - [`crate::catalog::blobs::write`]: stores the blobs before the record
//!   that references them, pinned until that record is durable.
//! - [`load`]: gives a record read from the store its texts: from the blobs,
//!   or, for a record written before bundles were stored by reference (the
//!   texts embedded in it), from the record itself — those are stored as
//!   blobs then, so that the record's next write may leave them out.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_package::content_hash;

use crate::catalog::blobs;
use crate::error::CoordinatorError;
use crate::records::ExecutionRecord;
use crate::store::Store;

/// Makes `rec` point to `files` (path → text): their hashes and the
/// bundle's, the texts in memory only.
pub fn refer(rec: &mut ExecutionRecord, files: BTreeMap<String, String>) {
    rec.file_hashes = files
        .iter()
        .map(|(p, t)| (p.clone(), content_hash(t)))
        .collect();
    rec.bundle_hash = blobs::bundle_hash(&rec.root, &rec.file_hashes);
    rec.files = BTreeMap::new();
    rec.texts = Some(Arc::new(files));
}

/// Gives `rec` (as read from the store) the texts of its bundle. A missing
/// blob is `CONTENT_NOT_FOUND` (the record cannot run again); a store
/// failure is the store's error.
pub async fn load(store: &dyn Store, rec: &mut ExecutionRecord) -> Result<(), CoordinatorError> {
    if rec.texts.is_some() {
        return Ok(());
    }
    if !rec.files.is_empty() {
        // Written before bundles were stored by reference: the texts become
        // blobs before the record may be written without them.
        let _pin = blobs::write(store, &rec.files).await?;
        let files = std::mem::take(&mut rec.files);
        refer(rec, files);
        return Ok(());
    }
    let mut texts = BTreeMap::new();
    for (path, hash) in &rec.file_hashes {
        let text = blobs::get(store, hash).await?.ok_or_else(|| {
            tracing::warn!(execution = %rec.id, path = %path, hash = %hash, "a file of the execution's bundle is missing from the store");
            CoordinatorError::ContentNotFound(hash.clone())
        })?;
        texts.insert(path.clone(), text);
    }
    rec.texts = Some(Arc::new(texts));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{BLOB_PREFIX, execution_key};
    use crate::scheduler_task::fixtures::{execution, files};
    use crate::store::fake::FakeStore;
    use crate::store::{Limits, Op, Precondition};

    #[tokio::test]
    async fn a_record_points_to_its_blobs_and_loads_its_texts_back() {
        let store = FakeStore::new();
        let (mut rec, _) = execution("e1", 3);
        let texts = std::mem::take(&mut rec.files);
        refer(&mut rec, texts.clone());
        let _pin = blobs::write(store.as_ref(), &texts).await.unwrap();
        let json = serde_json::to_vec(&rec).unwrap();
        let text = String::from_utf8_lossy(&json);
        assert!(
            !text.contains("exec=['true']"),
            "no text in the record: {text}"
        );
        let mut back: ExecutionRecord = serde_json::from_slice(&json).unwrap();
        assert!(back.bundle_files().is_empty());
        assert_eq!(back.file_hashes, rec.file_hashes);
        load(store.as_ref(), &mut back).await.unwrap();
        assert_eq!(back.bundle_files(), &texts);
        assert_eq!(store.range(BLOB_PREFIX).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn an_old_record_with_embedded_texts_is_read_and_its_texts_become_blobs() {
        let store = FakeStore::new();
        // As an earlier version wrote it: `files` holds the texts.
        let (old, _) = execution("e1", 3);
        let json = serde_json::to_vec(&old).unwrap();
        assert!(String::from_utf8_lossy(&json).contains("exec=['true']"));
        store
            .commit(vec![Op::Put {
                key: execution_key("e1"),
                value: json.clone(),
                pre: Precondition::Absent,
            }])
            .await
            .unwrap();
        let mut rec: ExecutionRecord = serde_json::from_slice(&json).unwrap();
        load(store.as_ref(), &mut rec).await.unwrap();
        assert_eq!(rec.bundle_files(), &files());
        assert!(rec.files.is_empty(), "the next write leaves the texts out");
        assert_eq!(rec.file_hashes.len(), 2);
        for hash in rec.file_hashes.values() {
            assert!(blobs::get(store.as_ref(), hash).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn an_old_store_recovers_and_its_record_is_rewritten_by_reference() {
        use crate::scheduler::SchedulerConfig;
        let store = FakeStore::new();
        let (old, _) = execution("e1", 3);
        store
            .commit(vec![Op::Put {
                key: execution_key("e1"),
                value: serde_json::to_vec(&old).unwrap(),
                pre: Precondition::Absent,
            }])
            .await
            .unwrap();
        let key = crate::secrets::SealingKey::from_bytes(&[7; 32]).unwrap();
        let mut s = crate::recovery::load(store.as_ref(), SchedulerConfig::default(), &key, 2)
            .await
            .unwrap();
        let view = s.execution_view("e1").expect("running after the restart");
        assert_eq!(view.summary.total, 3);
        // Its next write (here a cancel) leaves the texts out: they are blobs.
        s.cancel("e1", "enough", crate::clock::Now::read()).unwrap();
        let (ops, written) = s.flush();
        let chunks = crate::store::split::commit_in_chunks(store.as_ref(), ops)
            .await
            .unwrap();
        s.committed_chunks(written, &chunks);
        let json = store.value(&execution_key("e1")).unwrap();
        assert!(!String::from_utf8_lossy(&json).contains("exec=['true']"));
        let mut rec: ExecutionRecord = serde_json::from_slice(&json).unwrap();
        assert!(rec.cancel_requested);
        load(store.as_ref(), &mut rec).await.unwrap();
        assert_eq!(rec.bundle_files(), &files());
    }

    #[tokio::test]
    async fn a_missing_blob_and_a_file_larger_than_a_commit_are_refused() {
        let store = FakeStore::new();
        let (mut rec, _) = execution("e1", 3);
        let texts = std::mem::take(&mut rec.files);
        refer(&mut rec, texts.clone());
        let mut back: ExecutionRecord =
            serde_json::from_slice(&serde_json::to_vec(&rec).unwrap()).unwrap();
        let err = load(store.as_ref(), &mut back).await.unwrap_err();
        assert_eq!(err.code(), "CONTENT_NOT_FOUND", "{err}");

        store.set_limits(Limits {
            max_ops_per_commit: Some(128),
            max_bytes_per_commit: Some(100),
        });
        let big: BTreeMap<String, String> = [("big.toml".to_string(), "x".repeat(200))].into();
        let err = blobs::write(store.as_ref(), &big).await.unwrap_err();
        assert_eq!(err.code(), "BUNDLE_FILE_TOO_LARGE", "{err}");
        assert!(err.to_string().contains("big.toml"), "{err}");
        assert!(store.range(BLOB_PREFIX).await.unwrap().is_empty());
    }
}
