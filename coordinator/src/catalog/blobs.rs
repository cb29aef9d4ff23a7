//! Package content: checking a deployed bundle, its hash, and the blobs that
//! hold each file's text once per content hash.
//!
//! A version's identity is the hash of its whole bundle ([`bundle_hash`]): the
//! root file's name and every file's path and content hash. Each file's text is
//! a blob (`b/<sha256 of the text>`), shared by every version and package that
//! holds the same text; agents fetch child packages by that hash.
//!
//! Executions point to blobs too ([`crate::bundles`]): their records keep
//! each file's hash, not its text.
//!
//! **Writing blobs** ([`fn@write`]): before the record that references them (a
//! version, an execution), in as many commits as the store's limits need; a
//! single file larger than one commit is refused (`BUNDLE_FILE_TOO_LARGE`).
//! The writer holds a [`Pin`] on their hashes until its record is durable.
//!
//! **Removing blobs** ([`sweep`]): a blob is deleted when no version, no
//! execution that may run (again) and no pin references it. The sweep reads
//! the blobs' revisions first, then the pins, then the records, and deletes
//! with the revision it read first: a writer that pinned after the sweep
//! read the pins has rewritten the blob since (its delete fails its
//! precondition and the next sweep looks again), and one that unpinned
//! before has its record durable, so the sweep sees it. Pins live in this
//! process: only the leading coordinator writes and sweeps.

use std::collections::{BTreeMap, BTreeSet};

use baton_package::{Package, TaskKind, content_hash};

use super::model::{BLOB_PREFIX, VERSION_PREFIX, VersionRecord, blob_key};
use crate::error::CoordinatorError;
use crate::records::{ExecutionRecord, ExecutionState};
use crate::store::split::commit_in_chunks;
use crate::store::{Op, Precondition, Store, StoreError};

/// Most files in a bundle a client may send.
pub const MAX_BUNDLE_FILES: usize = 256;
/// Most bytes (paths and texts) in a bundle a client may send.
pub const MAX_BUNDLE_BYTES: usize = 16 * 1024 * 1024;

/// Hashes pinned by writers whose referencing record is not durable yet
/// (hash → how many pins).
static PINNED: std::sync::Mutex<BTreeMap<String, usize>> = std::sync::Mutex::new(BTreeMap::new());

fn pinned() -> std::sync::MutexGuard<'static, BTreeMap<String, usize>> {
    PINNED.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps blobs from [`sweep`] while held (see the module doc).
#[must_use]
#[derive(Debug)]
pub struct Pin(Vec<String>);

impl Pin {
    /// Pins `hashes` until the pin is dropped.
    pub fn new(hashes: impl IntoIterator<Item = String>) -> Pin {
        let hashes: Vec<String> = hashes.into_iter().collect();
        let mut map = pinned();
        for h in &hashes {
            *map.entry(h.clone()).or_default() += 1;
        }
        Pin(hashes)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut map = pinned();
        for h in &self.0 {
            if let Some(n) = map.get_mut(h) {
                *n -= 1;
                if *n == 0 {
                    map.remove(h);
                }
            }
        }
    }
}

/// Stores the blobs of `files` (path → text), pinned, in as many commits as
/// the store's limits need; refuses a file larger than one commit before
/// writing anything. Keep the pin until the record that references them is
/// durable.
pub async fn write(
    store: &dyn Store,
    files: &BTreeMap<String, String>,
) -> Result<Pin, CoordinatorError> {
    if let Some(limit) = store.limits().max_bytes_per_commit {
        for (path, text) in files {
            let bytes = blob_key(&content_hash(text)).len() + text.len();
            if bytes > limit {
                return Err(CoordinatorError::BundleFileTooLarge {
                    path: path.clone(),
                    bytes,
                    limit,
                });
            }
        }
    }
    let pin = Pin::new(files.values().map(|t| content_hash(t)));
    commit_in_chunks(store, put_ops(files)).await?;
    Ok(pin)
}

/// Hash of a bundle: SHA-256 of `root\n` then `path\thash\n` per file, in path order.
pub fn bundle_hash(root: &str, file_hashes: &BTreeMap<String, String>) -> String {
    let mut text = format!("{root}\n");
    for (path, hash) in file_hashes {
        text.push_str(path);
        text.push('\t');
        text.push_str(hash);
        text.push('\n');
    }
    content_hash(&text)
}

/// A bundle that passed [`check_bundle`]: only the files the parent references.
#[derive(Debug, Clone)]
pub struct CheckedBundle {
    pub parent: Package,
    pub root: String,
    pub files: BTreeMap<String, String>,
    /// path → content hash.
    pub hashes: BTreeMap<String, String>,
    pub hash: String,
    pub bytes: u64,
}

/// Checks a bundle as a start would (without binding parameters, which are
/// given at run time): the parent parses and runs only foreach tasks, every
/// child it names is there and parses, and sensitive values stay hidden.
/// Files the parent does not reference are dropped.
pub fn check_bundle(
    root: &str,
    files: &BTreeMap<String, String>,
) -> Result<CheckedBundle, CoordinatorError> {
    check_bundle_counted(root, files, &mut 0)
}

/// [`check_bundle`], counting the child packages it parses in `parses`: each
/// file once, however many tasks name it (10,000 tasks naming one 8 MiB child
/// would otherwise cost 10,000 parses).
fn check_bundle_counted(
    root: &str,
    files: &BTreeMap<String, String>,
    parses: &mut u32,
) -> Result<CheckedBundle, CoordinatorError> {
    if root.is_empty() {
        return Err(CoordinatorError::InvalidRequest(
            "bundle root is empty".into(),
        ));
    }
    if files.len() > MAX_BUNDLE_FILES {
        return Err(CoordinatorError::InvalidRequest(format!(
            "bundle has {} files; the limit is {MAX_BUNDLE_FILES}",
            files.len()
        )));
    }
    let total: usize = files.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_BUNDLE_BYTES {
        return Err(CoordinatorError::InvalidRequest(format!(
            "bundle is {total} bytes; the limit is {MAX_BUNDLE_BYTES}"
        )));
    }
    let text = files.get(root).ok_or_else(|| {
        CoordinatorError::InvalidRequest(format!("the bundle has no root file '{root}'"))
    })?;
    let parent = Package::parse(root, text)?;
    parent.check_sensitive_use()?;
    let mut kept = BTreeMap::from([(root.to_string(), text.clone())]);
    let mut parsed: BTreeMap<&str, Package> = BTreeMap::new();
    for task in parent.task_order() {
        let child_path = match &task.kind {
            TaskKind::Foreach(fe) => &fe.child,
            TaskKind::Child(ct) => &ct.child,
            _ => continue,
        };
        let (stored_path, child_text) = files.get_key_value(child_path).ok_or_else(|| {
            CoordinatorError::InvalidRequest(format!(
                "task '{}' runs child package '{}', which is not in the bundle",
                task.name, child_path
            ))
        })?;
        let child = match parsed.entry(stored_path.as_str()) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                *parses += 1;
                let child = Package::parse(child_path, child_text)?;
                child.check_sensitive_use()?;
                kept.insert(child_path.clone(), child_text.clone());
                v.insert(child)
            }
        };
        match &task.kind {
            TaskKind::Foreach(fe) => fe.check_sensitive_flow(&task.name, &parent, child)?,
            TaskKind::Child(ct) => ct.check_sensitive_flow(&task.name, &parent, child)?,
            _ => {}
        }
    }
    let hashes: BTreeMap<String, String> = kept
        .iter()
        .map(|(p, t)| (p.clone(), content_hash(t)))
        .collect();
    Ok(CheckedBundle {
        hash: bundle_hash(root, &hashes),
        bytes: kept.values().map(|t| t.len() as u64).sum(),
        parent,
        root: root.to_string(),
        files: kept,
        hashes,
    })
}

/// Puts of the blobs of `files` (unconditional: a blob's content is its key).
pub fn put_ops(files: &BTreeMap<String, String>) -> Vec<Op> {
    let mut seen = BTreeSet::new();
    files
        .values()
        .filter_map(|text| {
            let hash = content_hash(text);
            seen.insert(hash.clone()).then(|| Op::Put {
                key: blob_key(&hash),
                value: text.as_bytes().to_vec(),
                pre: Precondition::Any,
            })
        })
        .collect()
}

/// The text of the blob `hash`, if stored.
pub async fn get(store: &dyn Store, hash: &str) -> Result<Option<String>, CoordinatorError> {
    let Some(kv) = store.get(&blob_key(hash)).await? else {
        return Ok(None);
    };
    String::from_utf8(kv.value)
        .map(Some)
        .map_err(|_| CoordinatorError::Store(format!("blob {hash} is not UTF-8")))
}

/// The texts of a version's files, from their blobs.
pub async fn files_of(
    store: &dyn Store,
    v: &VersionRecord,
) -> Result<BTreeMap<String, String>, CoordinatorError> {
    let mut out = BTreeMap::new();
    for (path, hash) in &v.files {
        let text = get(store, hash).await?.ok_or_else(|| {
            CoordinatorError::Store(format!(
                "the content of '{path}' ({hash}) of version {} is missing from the store",
                v.version
            ))
        })?;
        out.insert(path.clone(), text);
    }
    Ok(out)
}

/// The content hashes the executions that may run use: running ones, and
/// failed or cancelled ones (`baton exec resume` plans them again). Records
/// written before bundles were stored by reference embed their texts.
pub fn running_hashes(executions: &[ExecutionRecord]) -> BTreeSet<String> {
    executions
        .iter()
        .filter(|e| e.state != ExecutionState::Succeeded)
        .flat_map(|e| {
            e.file_hashes
                .values()
                .cloned()
                .chain(e.files.values().map(|t| content_hash(t)))
        })
        .collect()
}

/// Deletes blobs referenced by no version, no execution that may run and no
/// pin; returns
/// how many. See the module doc for why this is safe against concurrent writers.
pub async fn sweep(store: &dyn Store) -> Result<usize, CoordinatorError> {
    // Revisions first, references second (the order matters).
    let blobs: Vec<(String, u64)> = store
        .range(BLOB_PREFIX)
        .await?
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect();
    let mut used: BTreeSet<String> = pinned().keys().cloned().collect();
    for kv in store.range(VERSION_PREFIX).await? {
        let v: VersionRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| CoordinatorError::Store(format!("corrupt record '{}': {e}", kv.key)))?;
        used.extend(v.files.into_values());
    }
    let executions: Vec<ExecutionRecord> = store
        .range(crate::keys::EXECUTION_PREFIX)
        .await?
        .into_iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    used.extend(running_hashes(&executions));
    let mut removed = 0;
    for (key, rev) in blobs {
        if used.contains(&key[BLOB_PREFIX.len()..]) {
            continue;
        }
        let op = Op::Delete {
            key,
            pre: Precondition::Revision(rev),
        };
        match store.commit(vec![op]).await {
            Ok(_) => removed += 1,
            Err(StoreError::Conflict { .. }) => {} // gained a reference: kept
            Err(e) => return Err(e.into()),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_named_by_many_tasks_is_parsed_once() {
        let mut root = "name='p'\n".to_string();
        for t in 0..1000 {
            root.push_str(&format!("[tasks.t{t}]\nchild='c.toml'\n"));
        }
        root.push_str("[tasks.other]\nchild='d.toml'\n");
        let files: BTreeMap<String, String> = [
            ("p.toml".to_string(), root),
            (
                "c.toml".to_string(),
                "name='c'\n[tasks.run]\nexec=['true']\n".to_string(),
            ),
            (
                "d.toml".to_string(),
                "name='d'\n[tasks.run]\nexec=['true']\n".to_string(),
            ),
            ("unused.toml".to_string(), "name='u'\n".to_string()),
        ]
        .into();
        let mut parses = 0;
        let b = check_bundle_counted("p.toml", &files, &mut parses).unwrap();
        assert_eq!(parses, 2, "c.toml and d.toml, once each");
        assert_eq!(
            b.files.keys().collect::<Vec<_>>(),
            ["c.toml", "d.toml", "p.toml"],
            "files no task names are dropped"
        );
    }
}
