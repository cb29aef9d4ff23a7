//! The embedded backend: one redb file, ACID and crash-safe, for a single coordinator.
//!
//! Each value is stored as 8 bytes of little-endian revision followed by the
//! payload. The current revision lives in a `meta` table and advances by one
//! per commit, inside the same write transaction, so a crash never leaves a
//! half-applied batch or a revision that was handed out twice.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use std::sync::atomic::{AtomicU64, Ordering};

use super::kv::{
    BoxFuture, KeyValue, Op, Precondition, Revision, Store, StoreError, WatchEvent, WatchStream,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";
/// redb's page cache. Its default (1 GiB) grows with the store file: a
/// million children's records made the coordinator's RSS 1.8 GB. Writes go
/// to the end of the key space of one execution and reads are rare (views of
/// ended executions), so a small cache costs little.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A [`Store`] over a redb file.
pub struct EmbeddedStore {
    /// Transactions share it; compaction takes it alone.
    db: Arc<RwLock<Database>>,
    path: std::path::PathBuf,
    events: tokio::sync::broadcast::Sender<Arc<Vec<WatchEvent>>>,
    /// The prefixes watched now: a commit makes events only for their keys.
    watched: Arc<Watched>,
    /// The last revision committed, raised before its changes are broadcast
    /// (a watch subscribes, then reads it).
    revision: Arc<AtomicU64>,
}

/// The prefixes of the watches open now, one entry per watch. A commit makes
/// watch events only for keys under one of them: the leader's watch of its
/// fence key must not make every commit copy its records into the broadcast
/// (a million children's records went through it, and stayed in memory until
/// the watcher had read them).
#[derive(Default)]
struct Watched(Mutex<Vec<String>>);

impl Watched {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The prefixes watched now (empty: nobody watches).
    fn prefixes(&self) -> Vec<String> {
        self.lock().clone()
    }
}

/// One watch's entry in [`Watched`], removed when the watch's stream is dropped.
struct WatchEntry {
    watched: Arc<Watched>,
    prefix: String,
}

impl WatchEntry {
    fn new(watched: &Arc<Watched>, prefix: &str) -> WatchEntry {
        watched.lock().push(prefix.to_string());
        WatchEntry {
            watched: watched.clone(),
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for WatchEntry {
    fn drop(&mut self) {
        let mut all = self.watched.lock();
        if let Some(i) = all.iter().position(|p| *p == self.prefix) {
            all.swap_remove(i);
        }
    }
}

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Backend(format!(
            "corrupt value for key '{key}'"
        )));
    }
    let mut rev = [0u8; 8];
    rev.copy_from_slice(&raw[..8]);
    Ok(KeyValue {
        key: key.to_string(),
        value: raw[8..].to_vec(),
        mod_revision: u64::from_le_bytes(rev),
    })
}

/// The revision a stored value starts with.
fn revision_of(key: &str, raw: &[u8]) -> Result<Revision, StoreError> {
    match raw.first_chunk::<8>() {
        Some(rev) => Ok(u64::from_le_bytes(*rev)),
        None => Err(StoreError::Backend(format!(
            "corrupt value for key '{key}'"
        ))),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file at `path`: a new file (and directory) is
    /// the process user's alone (0600 in 0700), whatever the umask.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(backend)?;
        }
        // redb initialises an empty file: made here so that it is born 0600.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(backend)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(backend)?;
        let revision = {
            let tx = db.begin_write().map_err(backend)?;
            tx.open_table(KV).map_err(backend)?;
            let revision = tx
                .open_table(META)
                .map_err(backend)?
                .get(REVISION_KEY)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            tx.commit().map_err(backend)?;
            revision
        };
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(EmbeddedStore {
            db: Arc::new(RwLock::new(db)),
            path: path.to_path_buf(),
            events,
            watched: Arc::default(),
            revision: Arc::new(AtomicU64::new(revision)),
        })
    }

    /// Applies a batch in one write transaction; returns its revision and,
    /// for each [`Op::DeletePrefix`] in order, the keys it deleted.
    fn commit_blocking(
        db: &Database,
        ops: &[Op],
    ) -> Result<(Revision, Vec<Vec<String>>), StoreError> {
        super::kv::check_batch(ops)?;
        let tx = db.begin_write().map_err(backend)?;
        let revision;
        let mut raw = Vec::new();
        let mut deleted = Vec::new();
        {
            let mut kv = tx.open_table(KV).map_err(backend)?;
            let mut meta = tx.open_table(META).map_err(backend)?;
            let current = meta
                .get(REVISION_KEY)
                .map_err(backend)?
                .map_or(0, |v| v.value());
            revision = current + 1;
            for op in ops {
                if let Some((key, pre)) = op.precondition().filter(|(_, p)| *p != Precondition::Any)
                {
                    // Only the revision prefix is read (no copy of the value).
                    let existing = match kv.get(key).map_err(backend)? {
                        Some(v) => Some(revision_of(key, v.value())?),
                        None => None,
                    };
                    let ok = match pre {
                        Precondition::Any => true,
                        Precondition::Absent => existing.is_none(),
                        Precondition::Revision(r) => existing == Some(r),
                    };
                    if !ok {
                        // Dropping `tx` without commit aborts the whole batch.
                        return Err(StoreError::Conflict {
                            key: key.to_string(),
                        });
                    }
                }
                match op {
                    Op::Put { key, value, .. } => {
                        raw.clear();
                        raw.extend_from_slice(&revision.to_le_bytes());
                        raw.extend_from_slice(value);
                        kv.insert(key.as_str(), raw.as_slice()).map_err(backend)?;
                    }
                    Op::Delete { key, .. } => {
                        kv.remove(key.as_str()).map_err(backend)?;
                    }
                    Op::Check { .. } => {}
                    Op::DeletePrefix { prefix } => {
                        let mut keys = Vec::new();
                        for entry in kv.range(prefix.as_str()..).map_err(backend)? {
                            let (k, _) = entry.map_err(backend)?;
                            if !k.value().starts_with(prefix.as_str()) {
                                break;
                            }
                            keys.push(k.value().to_string());
                        }
                        for key in &keys {
                            kv.remove(key.as_str()).map_err(backend)?;
                        }
                        deleted.push(keys);
                    }
                }
            }
            meta.insert(REVISION_KEY, revision).map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok((revision, deleted))
    }
}

impl Store for EmbeddedStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<KeyValue>, StoreError>> {
        let db = self.db.clone();
        let key = key.to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let db = db.read().unwrap_or_else(|p| p.into_inner());
                let tx = db.begin_read().map_err(backend)?;
                let kv = tx.open_table(KV).map_err(backend)?;
                match kv.get(key.as_str()).map_err(backend)? {
                    Some(v) => Ok(Some(decode(&key, v.value())?)),
                    None => Ok(None),
                }
            })
            .await
            .map_err(backend)?
        })
    }

    fn range<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        self.scan(prefix, Box::new(|_| true))
    }

    fn scan<'a>(
        &'a self,
        prefix: &'a str,
        mut keep: Box<dyn FnMut(&KeyValue) -> bool + Send + 'static>,
    ) -> BoxFuture<'a, Result<Vec<KeyValue>, StoreError>> {
        let db = self.db.clone();
        let prefix = prefix.to_string();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let db = db.read().unwrap_or_else(|p| p.into_inner());
                let tx = db.begin_read().map_err(backend)?;
                let kv = tx.open_table(KV).map_err(backend)?;
                let mut out = Vec::new();
                for entry in kv.range(prefix.as_str()..).map_err(backend)? {
                    let (k, v) = entry.map_err(backend)?;
                    let key = k.value();
                    if !key.starts_with(prefix.as_str()) {
                        break;
                    }
                    let pair = decode(key, v.value())?;
                    if keep(&pair) {
                        out.push(pair);
                    }
                }
                Ok(out)
            })
            .await
            .map_err(backend)?
        })
    }

    fn commit(&self, ops: Vec<Op>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let db = self.db.clone();
        let events = self.events.clone();
        let watched = self.watched.clone();
        let current = self.revision.clone();
        Box::pin(async move {
            let ((revision, deleted), ops) = tokio::task::spawn_blocking(move || {
                let db = db.read().unwrap_or_else(|p| p.into_inner());
                Self::commit_blocking(&db, &ops).map(|done| (done, ops))
            })
            .await
            .map_err(backend)??;
            current.fetch_max(revision, Ordering::SeqCst);
            // Watch events only for the keys someone watches (looked up
            // after the commit, so a watch opened while it ran still sees
            // it); they take the values over instead of copying them.
            let prefixes = watched.prefixes();
            let wanted = |key: &str| prefixes.iter().any(|p| key.starts_with(p.as_str()));
            if !prefixes.is_empty() {
                let mut deleted = deleted.into_iter();
                let mut evs = Vec::new();
                for op in ops {
                    match op {
                        Op::Put { key, value, .. } if wanted(&key) => {
                            evs.push(WatchEvent::Put(KeyValue {
                                key,
                                value,
                                mod_revision: revision,
                            }));
                        }
                        Op::Delete { key, .. } if wanted(&key) => {
                            evs.push(WatchEvent::Delete { key, revision });
                        }
                        Op::Put { .. } | Op::Delete { .. } | Op::Check { .. } => {}
                        Op::DeletePrefix { .. } => evs.extend(
                            deleted
                                .next()
                                .unwrap_or_default()
                                .into_iter()
                                .filter(|key| wanted(key))
                                .map(|key| WatchEvent::Delete { key, revision }),
                        ),
                    }
                }
                if evs.is_empty() {
                    return Ok(revision);
                }
                let _ = events.send(Arc::new(evs));
            }
            Ok(revision)
        })
    }

    /// Keeps no history: `from` behind the current revision yields
    /// [`StoreError::Lagged`] (see [`Store::watch`]).
    fn watch(&self, prefix: &str, from: Option<Revision>) -> WatchStream {
        // Registered before it subscribes: a commit that finds the prefix
        // sends, and a later one is received.
        let entry = WatchEntry::new(&self.watched, prefix);
        let rx = self.events.subscribe();
        let current = self.revision.load(Ordering::SeqCst);
        let stream = super::kv::broadcast_watch(prefix, rx, from, current);
        Box::pin(tokio_stream::StreamExt::map(stream, move |item| {
            let _open = &entry;
            item
        }))
    }

    fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    /// redb reuses freed pages but does not shrink its file by itself: after
    /// pruning, compaction gives the space back. Every other call waits meanwhile.
    fn compact(&self) -> BoxFuture<'_, Result<bool, StoreError>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut db = db.write().unwrap_or_else(|p| p.into_inner());
                db.compact().map_err(backend)
            })
            .await
            .map_err(backend)?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn embedded_store_passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        crate::store::conformance::run_all(&store).await;
    }

    /// A watch of one key (the leader's fence) makes no broadcast of the
    /// records committed beside it, and a dropped watch is forgotten.
    #[tokio::test]
    async fn commits_broadcast_only_the_keys_watched() {
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("store.redb")).unwrap();
        let put = |key: &str| Op::Put {
            key: key.into(),
            value: vec![7; 1024],
            pre: Precondition::Any,
        };
        let mut fence = store.watch("m/fence", None);
        assert_eq!(store.watched.prefixes(), vec!["m/fence".to_string()]);
        store
            .commit((0..100).map(|i| put(&format!("c/e/{i}"))).collect())
            .await
            .unwrap();
        assert_eq!(store.events.len(), 0, "no watched key: nothing broadcast");
        let rev = store
            .commit(vec![put("c/e/100"), put("m/fence")])
            .await
            .unwrap();
        assert_eq!(store.events.len(), 1, "the fence's put alone");
        match tokio::time::timeout(std::time::Duration::from_secs(5), fence.next()).await {
            Ok(Some(Ok(WatchEvent::Put(kv)))) => {
                assert_eq!((kv.key.as_str(), kv.mod_revision), ("m/fence", rev));
            }
            other => panic!("expected the fence's put, got {other:?}"),
        }
        drop(fence);
        assert!(
            store.watched.prefixes().is_empty(),
            "a dropped watch is forgotten"
        );
        store.commit(vec![put("m/fence")]).await.unwrap();
        assert_eq!(store.events.len(), 0, "nobody watches: nothing broadcast");
    }

    #[test]
    fn a_new_store_is_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data").join("coordinator.redb");
        let _store = EmbeddedStore::open(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let rev = {
            let store = EmbeddedStore::open(&path).unwrap();
            store
                .commit(vec![Op::Put {
                    key: "k".into(),
                    value: b"v".to_vec(),
                    pre: Precondition::Absent,
                }])
                .await
                .unwrap()
        };
        let store = EmbeddedStore::open(&path).unwrap();
        let kv = store.get("k").await.unwrap().unwrap();
        assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v"[..], rev));
        let next = store.commit(vec![]).await.unwrap();
        assert!(next > rev, "revisions keep increasing across reopen");
    }
}
