//! A batch of store operations as one etcd transaction: a compare per
//! precondition, the writes in the success branch, and in the failure branch
//! a keys-only read of every key with a precondition so that a refused
//! transaction names the key that failed (`Conflict`) without a second round
//! trip — the reads see the same state the compares saw.
//!
//! etcd refuses two writes of one key in a transaction, and a put inside a
//! range the same transaction deletes; a batch may hold both (operations
//! apply in order). So the writes are reduced to their final effect first:
//! the last write of a key wins, a write before a delete by prefix that
//! covers it is dropped, and a delete by prefix with later puts under it is
//! split into the ranges around them.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::store::kv::{Op, Precondition, StoreError};

/// Bytes of framing counted per operation of a request (tags, lengths,
/// revision fields), beyond its keys and values: an upper bound.
pub(crate) const OP_OVERHEAD_BYTES: usize = 32;

/// A transaction ready to send, and what is needed to read its failure.
pub(crate) struct Plan {
    pub txn: Txn,
    /// Every precondition, in the order of the batch.
    pub preconditions: Vec<(String, Precondition)>,
    /// The keys the failure branch reads, in its order.
    pub probed: Vec<String>,
    /// Operations of the largest branch (etcd's `--max-txn-ops` counts that).
    pub ops: usize,
    /// An upper bound of the request's size in bytes.
    pub bytes: usize,
}

/// The final write of a key.
enum Write {
    Put(Vec<u8>),
    Delete,
}

/// The end of the range of every key starting with `prefix` (etcd's rule:
/// the prefix with its last byte below 0xff raised by one; `\0` for all).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Plans `ops` with every key under `key_prefix`.
pub(crate) fn plan(ops: &[Op], key_prefix: &str) -> Result<Plan, StoreError> {
    let full = |k: &str| -> Vec<u8> { [key_prefix.as_bytes(), k.as_bytes()].concat() };
    let mut compares = Vec::new();
    let mut preconditions = Vec::new();
    let mut probed: Vec<String> = Vec::new();
    let mut bytes = 0;
    for (key, pre) in ops.iter().filter_map(Op::precondition) {
        let cmp = match pre {
            Precondition::Any => continue,
            // A missing key has create revision 0 in etcd's compares.
            Precondition::Absent => Compare::create_revision(full(key), CompareOp::Equal, 0),
            // No key ever has revision 0 (etcd would take it for "missing").
            Precondition::Revision(0) => return Err(StoreError::Conflict { key: key.into() }),
            Precondition::Revision(r) => {
                let r = i64::try_from(r).map_err(|_| StoreError::Conflict { key: key.into() })?;
                Compare::mod_revision(full(key), CompareOp::Equal, r)
            }
        };
        compares.push(cmp);
        bytes += key_prefix.len() + key.len() + OP_OVERHEAD_BYTES;
        preconditions.push((key.to_string(), pre));
        if !probed.iter().any(|p| p == key) {
            probed.push(key.to_string());
        }
    }
    // The final effect of the writes.
    let mut writes: BTreeMap<&str, Write> = BTreeMap::new();
    let mut prefixes: Vec<&str> = Vec::new();
    for op in ops {
        match op {
            Op::Put { key, value, .. } => {
                writes.insert(key, Write::Put(value.clone()));
            }
            Op::Delete { key, .. } => {
                writes.insert(key, Write::Delete);
            }
            Op::Check { .. } => {}
            Op::DeletePrefix { prefix } => {
                writes.retain(|k, _| !k.starts_with(prefix.as_str()));
                prefixes.push(prefix);
            }
        }
    }
    // A prefix inside another deletes nothing more.
    prefixes.sort_unstable();
    prefixes.dedup();
    let outer: Vec<&str> = prefixes
        .iter()
        .filter(|p| !prefixes.iter().any(|q| q != *p && p.starts_with(q)))
        .copied()
        .collect();
    let covering = |k: &str| outer.iter().find(|p| k.starts_with(**p)).copied();
    let mut success = Vec::new();
    for prefix in &outer {
        // Puts after the delete: the range is split around them.
        let mut start = full(prefix);
        let kept = writes
            .range(*prefix..)
            .take_while(|(k, _)| k.starts_with(*prefix))
            .filter(|(_, w)| matches!(w, Write::Put(_)));
        for (key, _) in kept {
            let end = full(key);
            if start < end {
                bytes += start.len() + end.len() + OP_OVERHEAD_BYTES;
                success.push(TxnOp::delete(
                    start,
                    Some(DeleteOptions::new().with_range(end.clone())),
                ));
            }
            start = [end.as_slice(), &[0]].concat();
        }
        let end = prefix_end(&full(prefix));
        bytes += start.len() + end.len() + OP_OVERHEAD_BYTES;
        success.push(TxnOp::delete(
            start,
            Some(DeleteOptions::new().with_range(end)),
        ));
    }
    for (key, write) in writes {
        match write {
            Write::Put(value) => {
                bytes += key_prefix.len() + key.len() + value.len() + OP_OVERHEAD_BYTES;
                success.push(TxnOp::put(full(key), value, None));
            }
            // Already deleted by the range.
            Write::Delete if covering(key).is_some() => {}
            Write::Delete => {
                bytes += key_prefix.len() + key.len() + OP_OVERHEAD_BYTES;
                success.push(TxnOp::delete(full(key), None));
            }
        }
    }
    let failure: Vec<TxnOp> = probed
        .iter()
        .map(|k| {
            bytes += key_prefix.len() + k.len() + OP_OVERHEAD_BYTES;
            TxnOp::get(full(k), Some(GetOptions::new().with_keys_only()))
        })
        .collect();
    let ops = compares.len().max(success.len()).max(failure.len());
    Ok(Plan {
        txn: Txn::new().when(compares).and_then(success).or_else(failure),
        preconditions,
        probed,
        ops,
        bytes,
    })
}

/// The conflict of a refused transaction: the first precondition, in batch
/// order, that the failure branch's reads show does not hold.
pub(crate) fn conflict(plan: &Plan, responses: &[TxnOpResponse]) -> StoreError {
    let mut revisions: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    for (key, resp) in plan.probed.iter().zip(responses) {
        if let TxnOpResponse::Get(get) = resp {
            let rev = get
                .kvs()
                .first()
                .and_then(|kv| u64::try_from(kv.mod_revision()).ok());
            revisions.insert(key, rev);
        }
    }
    let failed = plan.preconditions.iter().find(|(key, pre)| {
        let Some(existing) = revisions.get(key.as_str()) else {
            return false;
        };
        match pre {
            Precondition::Any => false,
            Precondition::Absent => existing.is_some(),
            Precondition::Revision(r) => *existing != Some(*r),
        }
    });
    // The reads see what the compares saw, so one fails; the first
    // precondition stands in should etcd ever answer otherwise.
    let key = failed
        .or(plan.preconditions.first())
        .map(|(k, _)| k.clone())
        .unwrap_or_default();
    StoreError::Conflict { key }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, pre: Precondition) -> Op {
        Op::Put {
            key: key.into(),
            value: b"v".to_vec(),
            pre,
        }
    }

    #[test]
    fn prefix_ends_follow_etcd() {
        assert_eq!(prefix_end(b"/b/e/"), b"/b/e0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }

    #[test]
    fn branches_count_compares_writes_and_probes() {
        let ops = vec![
            put("a", Precondition::Absent),
            put("a", Precondition::Any),
            Op::Check {
                key: "f".into(),
                pre: Precondition::Revision(7),
            },
            Op::Delete {
                key: "d".into(),
                pre: Precondition::Revision(3),
            },
            put("b", Precondition::Any),
        ];
        let p = plan(&ops, "/x/").unwrap();
        // 3 compares; writes a, d, b; probes a, f, d.
        assert_eq!(p.ops, 3);
        assert_eq!(p.probed, ["a", "f", "d"]);
        assert_eq!(p.preconditions.len(), 3);
        assert!(p.bytes >= 3 * ("/x/".len() + 1 + OP_OVERHEAD_BYTES));
    }

    #[test]
    fn a_put_after_a_delete_by_prefix_splits_its_range() {
        let ops = vec![
            put("p/0", Precondition::Any),
            Op::DeletePrefix {
                prefix: "p/".into(),
            },
            Op::DeletePrefix {
                prefix: "p/x/".into(),
            },
            put("p/1", Precondition::Any),
            put("p/3", Precondition::Any),
            Op::Delete {
                key: "p/9".into(),
                pre: Precondition::Any,
            },
        ];
        let p = plan(&ops, "/x/").unwrap();
        // Ranges [p/, p/1), [p/1\0, p/3), [p/3\0, p0); puts p/1, p/3; the
        // put of p/0, the inner prefix and the delete of p/9 are dropped.
        assert_eq!(p.ops, 5);
    }

    #[test]
    fn revision_zero_never_holds() {
        let err = plan(&[put("k", Precondition::Revision(0))], "/x/").err();
        assert!(matches!(err, Some(StoreError::Conflict { ref key }) if key == "k"));
    }
}
