//! Committing a batch larger than the backend's [`Limits`] as a sequence of
//! chunks that each fit, in order ([`commit_in_chunks`]). Every large writer
//! (the scheduler's flush, retention, a catalog deploy, an execution's
//! bundle) goes through it.
//!
//! Splitting gives up the atomicity of the whole batch, never its order: a
//! chunk is committed only after the one before it is durable, and a failure
//! stops at once (later chunks are never sent). A writer therefore puts last
//! what must not be durable before the rest — the scheduler its
//! acknowledgements (`s/<agent>`), so that a crash between chunks leaves
//! records that the agent's resent events re-apply idempotently; a catalog
//! deploy its version record, after the blobs it points to.
//!
//! A key written by an earlier chunk and met again later has its
//! precondition rewritten to what that chunk left (the revision it got, or
//! absent after a delete): the caller wrote the batch against the state
//! before it. Under bounded limits a key never appears twice in one chunk
//! (etcd refuses that); an unbounded backend takes the batch whole.
//! An operation too large for any commit on its own is refused before
//! anything is committed ([`StoreError::TooLarge`]).

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use super::kv::{Limits, Op, Precondition, Revision, Store, StoreError};

/// What a chunked commit did: the revision each chunk got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    /// `(end, revision)` per chunk, in order: the chunk holds the operations
    /// from the previous chunk's end up to `end` (exclusive).
    chunks: Vec<(usize, Revision)>,
}

impl Chunked {
    /// The revision of the chunk that held operation `index` of the batch.
    pub fn revision_of(&self, index: usize) -> Option<Revision> {
        self.chunks
            .iter()
            .find(|(end, _)| index < *end)
            .map(|(_, r)| *r)
    }

    /// The revision of the last chunk (the batch's, when it was not split).
    pub fn last(&self) -> Revision {
        self.chunks.last().map_or(0, |(_, r)| *r)
    }

    /// How many commits the batch took.
    pub fn commits(&self) -> usize {
        self.chunks.len()
    }

    /// One commit that held every operation up to `end`.
    pub fn single(end: usize, revision: Revision) -> Chunked {
        Chunked {
            chunks: vec![(end, revision)],
        }
    }
}

/// How `ops` is cut into chunks that each fit `limits` (one chunk, possibly
/// empty, when it fits whole). Pure, for testing.
pub fn plan(ops: &[Op], limits: Limits) -> Result<Vec<Range<usize>>, StoreError> {
    // An unbounded backend (the embedded one) applies a batch in order,
    // repeated keys included: nothing to look at (a flush of a million
    // children is not hashed once more).
    if limits == Limits::UNBOUNDED || (limits.admit(ops).is_ok() && !has_duplicate_keys(ops)) {
        return Ok(std::iter::once(0..ops.len()).collect());
    }
    let max_ops = limits.max_ops_per_commit.unwrap_or(usize::MAX).max(1);
    let max_bytes = limits.max_bytes_per_commit.unwrap_or(usize::MAX);
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    let mut keys: HashSet<&str> = HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        let size = Limits::batch_bytes(std::slice::from_ref(op));
        limits.admit(std::slice::from_ref(op))?;
        let full = i - start >= max_ops
            || bytes.saturating_add(size) > max_bytes
            || keys.contains(op.key());
        if full && i > start {
            chunks.push(start..i);
            start = i;
            bytes = 0;
            keys.clear();
        }
        bytes += size;
        keys.insert(op.key());
    }
    chunks.push(start..ops.len());
    Ok(chunks)
}

fn has_duplicate_keys(ops: &[Op]) -> bool {
    let mut keys = HashSet::with_capacity(ops.len());
    ops.iter().any(|op| !keys.insert(op.key()))
}

/// Commits `ops` in as many chunks as the store's limits need, in order,
/// each after the one before is durable. On an error, the chunks before it
/// are applied and the rest are not (see the module doc for the order a
/// caller must give).
pub async fn commit_in_chunks(store: &dyn Store, ops: Vec<Op>) -> Result<Chunked, StoreError> {
    let ranges = plan(&ops, store.limits())?;
    if ranges.len() == 1 {
        let end = ops.len();
        return Ok(Chunked::single(end, store.commit(ops).await?));
    }
    // What earlier chunks left of a key: Some(revision) written, None deleted.
    let mut left: HashMap<String, Option<Revision>> = HashMap::new();
    let mut deleted_prefixes: Vec<String> = Vec::new();
    let mut chunks = Vec::with_capacity(ranges.len());
    let mut ops = ops.into_iter();
    for range in ranges {
        let mut chunk: Vec<Op> = ops.by_ref().take(range.len()).collect();
        for op in &mut chunk {
            rebase(op, &left, &deleted_prefixes);
        }
        let revision = store.commit(chunk.clone()).await?;
        for op in chunk {
            match op {
                Op::Put { key, .. } => {
                    left.insert(key, Some(revision));
                }
                Op::Delete { key, .. } => {
                    left.insert(key, None);
                }
                Op::Check { .. } => {}
                Op::DeletePrefix { prefix } => {
                    left.retain(|k, _| !k.starts_with(&prefix));
                    deleted_prefixes.push(prefix);
                }
            }
        }
        chunks.push((range.end, revision));
    }
    Ok(Chunked { chunks })
}

/// Rewrites the precondition of `op` when an earlier chunk changed its key.
fn rebase(op: &mut Op, left: &HashMap<String, Option<Revision>>, deleted: &[String]) {
    let (key, pre) = match op {
        Op::Put { key, pre, .. } | Op::Delete { key, pre } | Op::Check { key, pre } => (key, pre),
        Op::DeletePrefix { .. } => return,
    };
    if *pre == Precondition::Any {
        return;
    }
    match left.get(key.as_str()) {
        Some(Some(rev)) => *pre = Precondition::Revision(*rev),
        Some(None) => *pre = Precondition::Absent,
        None if deleted.iter().any(|p| key.starts_with(p.as_str())) => *pre = Precondition::Absent,
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fake::FakeStore;

    fn put(key: &str, pre: Precondition) -> Op {
        Op::Put {
            key: key.into(),
            value: vec![b'x'; 10],
            pre,
        }
    }

    fn limits(ops: usize, bytes: usize) -> Limits {
        Limits {
            max_ops_per_commit: Some(ops),
            max_bytes_per_commit: Some(bytes),
        }
    }

    #[test]
    fn a_batch_that_fits_is_one_chunk_and_a_larger_one_is_cut_by_ops_and_bytes() {
        let ops: Vec<Op> = (0..10)
            .map(|i| put(&format!("k{i}"), Precondition::Any))
            .collect();
        let whole = |ops: &[Op], l: Limits| {
            let chunks = plan(ops, l).unwrap();
            chunks.len() == 1 && chunks[0] == (0..ops.len())
        };
        assert!(whole(&ops, Limits::UNBOUNDED));
        assert!(whole(&[], limits(1, 1)));
        assert_eq!(plan(&ops, limits(4, 10_000)).unwrap(), [0..4, 4..8, 8..10]);
        // 12 bytes an operation: 3 fit in 40.
        assert_eq!(
            plan(&ops, limits(100, 40)).unwrap(),
            [0..3, 3..6, 6..9, 9..10]
        );
    }

    #[test]
    fn a_key_is_never_twice_in_one_chunk_and_an_op_too_large_alone_is_refused() {
        let ops = vec![
            put("a", Precondition::Any),
            put("b", Precondition::Any),
            put("a", Precondition::Any),
        ];
        assert_eq!(plan(&ops, limits(100, 10_000)).unwrap(), [0..2, 2..3]);
        let big = vec![put("a", Precondition::Any), put("huge", Precondition::Any)];
        let err = plan(&big, limits(10, 13)).unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { ops: 1, .. }), "{err}");
    }

    #[tokio::test]
    async fn chunks_commit_in_order_and_later_preconditions_use_earlier_revisions() {
        let store = FakeStore::new();
        let r0 = store
            .commit(vec![put("a", Precondition::Any)])
            .await
            .unwrap();
        store.set_limits(limits(2, 10_000));
        // Written against the state before the batch: `a` at r0, `b` absent.
        let ops = vec![
            put("a", Precondition::Revision(r0)),
            put("b", Precondition::Absent),
            put("c", Precondition::Any),
            put("b", Precondition::Absent),
            Op::Check {
                key: "a".into(),
                pre: Precondition::Revision(r0),
            },
        ];
        let done = commit_in_chunks(store.as_ref(), ops).await.unwrap();
        assert_eq!(done.commits(), 3);
        let applied = store.applied();
        let revs: Vec<Revision> = applied[1..].iter().map(|c| c.revision).collect();
        assert_eq!(done.revision_of(0), Some(revs[0]));
        assert_eq!(done.revision_of(2), Some(revs[1]));
        assert_eq!(done.revision_of(4), Some(revs[2]));
        assert_eq!(done.last(), revs[2]);
        let pres = |i: usize| -> Vec<(String, Precondition)> {
            applied[i]
                .ops
                .iter()
                .filter_map(Op::precondition)
                .map(|(k, p)| (k.to_string(), p))
                .collect()
        };
        assert_eq!(
            pres(2),
            [
                ("c".to_string(), Precondition::Any),
                ("b".to_string(), Precondition::Revision(revs[0]))
            ]
        );
        assert_eq!(
            pres(3),
            [("a".to_string(), Precondition::Revision(revs[0]))]
        );
    }

    #[tokio::test]
    async fn a_failure_stops_at_its_chunk_and_sends_nothing_after() {
        let store = FakeStore::new();
        store
            .commit(vec![put("k2", Precondition::Any)])
            .await
            .unwrap();
        store.set_limits(limits(2, 10_000));
        let ops: Vec<Op> = (0..6)
            .map(|i| put(&format!("k{i}"), Precondition::Absent))
            .collect();
        // The first chunk applies, the second is refused (k2 exists).
        let err = commit_in_chunks(store.as_ref(), ops).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Conflict { ref key } if key == "k2"),
            "{err}"
        );
        assert_eq!(store.commits_started(), 3, "nothing after the failed chunk");
        assert!(store.value("k0").is_some() && store.value("k1").is_some());
        assert!(store.value("k3").is_none() && store.value("k4").is_none());
    }
}
