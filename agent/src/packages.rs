//! The agent's package cache: package texts by content hash, fetched from the
//! coordinator (`CoordinatorService.FetchPackage`) when a `StartJob` comes
//! without content, as catalog packages do.
//!
//! Files live in `<data-dir>/packages/<sha256>.toml`, written through a temp
//! file and a rename, and are verified against their name on every read (a
//! file that does not match is deleted and fetched again). At most
//! [`CACHE_ENTRIES_MAX`] files are kept; the least recently used go first.
//! Concurrent fetches of one hash are made once: the others wait for it.
//!
//! How fetching fits admission's promise to answer at once is described in
//! [`crate::supervisor`]: a job whose package is not cached is accepted and
//! fetches in its runner task.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use baton_proto::FetchPackageRequest;
use tracing::{debug, info, warn};

use crate::tls::LiveTls;
use crate::transport;

/// Package files kept in the cache.
pub const CACHE_ENTRIES_MAX: usize = 256;
/// Largest package text accepted from the coordinator.
pub const FETCH_BYTES_MAX: usize = 32 * 1024 * 1024;
/// Budget of one fetch attempt (connect and transfer).
pub const FETCH_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts before a job fails for want of its package.
pub const FETCH_ATTEMPTS: u32 = 3;

/// Whether `hash` is 64 lower-case hex digits (it becomes a file name).
pub fn valid_hash(hash: &str) -> bool {
    hash.len() == 64 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where to fetch from.
struct Source {
    coordinator_url: String,
    tls: Option<Arc<LiveTls>>,
}

/// Package texts by content hash.
pub struct PackageCache {
    dir: PathBuf,
    source: OnceLock<Source>,
    /// One lock per hash being fetched.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for PackageCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackageCache({})", self.dir.display())
    }
}

impl PackageCache {
    /// A cache in `dir` (created on the first write), without a source yet.
    pub fn new(dir: PathBuf) -> PackageCache {
        PackageCache {
            dir,
            source: OnceLock::new(),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// Where to fetch missing packages from (set once, when the agent starts).
    pub fn set_source(&self, coordinator_url: String, tls: Option<Arc<LiveTls>>) {
        let _ = self.source.set(Source {
            coordinator_url,
            tls,
        });
    }

    pub fn can_fetch(&self) -> bool {
        self.source.get().is_some()
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.toml"))
    }

    /// The cached text of `hash`, verified; `None` if absent or damaged.
    pub fn cached(&self, hash: &str) -> Option<String> {
        if !valid_hash(hash) {
            return None;
        }
        let path = self.path(hash);
        let text = std::fs::read_to_string(&path).ok()?;
        if baton_package::content_hash(&text) != hash {
            warn!(path = %path.display(), "cached package does not match its hash; removed");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // Most recently used: pruning removes the oldest first.
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(text)
    }

    /// The text of `hash`: from the cache, or fetched from the coordinator
    /// (verified, then cached). The error says why, for the job's reason.
    pub async fn get(&self, hash: &str) -> Result<String, String> {
        if !valid_hash(hash) {
            return Err(format!("'{hash}' is not a content hash"));
        }
        let lock = self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(hash.to_string())
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = lock.lock().await;
            match self.cached(hash) {
                Some(text) => Ok(text),
                None => self.fetch(hash).await,
            }
        };
        self.fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(hash);
        result
    }

    async fn fetch(&self, hash: &str) -> Result<String, String> {
        let source = self
            .source
            .get()
            .ok_or("this agent has no coordinator to fetch packages from")?;
        let mut last = String::new();
        for attempt in 1..=FETCH_ATTEMPTS {
            match tokio::time::timeout(FETCH_ATTEMPT_TIMEOUT, fetch_once(source, hash)).await {
                Ok(Ok(bytes)) => {
                    let text = String::from_utf8(bytes).map_err(|_| {
                        "the coordinator sent content that is not UTF-8".to_string()
                    })?;
                    let actual = baton_package::content_hash(&text);
                    if actual != hash {
                        return Err(format!(
                            "the coordinator sent content whose hash is {actual}"
                        ));
                    }
                    if let Err(e) = self.store(hash, &text) {
                        warn!(error = %e, dir = %self.dir.display(), "cannot cache a fetched package");
                    }
                    info!(%hash, bytes = text.len(), "package fetched");
                    return Ok(text);
                }
                Ok(Err(status)) => {
                    let permanent = matches!(
                        status.code(),
                        tonic::Code::NotFound
                            | tonic::Code::InvalidArgument
                            | tonic::Code::PermissionDenied
                            | tonic::Code::Unauthenticated
                    );
                    last = format!("{:?}: {}", status.code(), status.message());
                    if permanent {
                        break;
                    }
                }
                Err(_) => last = format!("no answer within {FETCH_ATTEMPT_TIMEOUT:?}"),
            }
            debug!(%hash, attempt, error = %last, "package fetch failed");
            if attempt < FETCH_ATTEMPTS {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
        }
        Err(last)
    }

    /// Writes `text` as the file of `hash` (temp file, rename), then prunes.
    fn store(&self, hash: &str, text: &str) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        // The agent's alone, as the rest of its data directory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        let tmp = self.dir.join(format!(".{hash}.{}.tmp", std::process::id()));
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?
            .write_all(text.as_bytes())?;
        std::fs::rename(&tmp, self.path(hash))?;
        prune(&self.dir, CACHE_ENTRIES_MAX)
    }
}

async fn fetch_once(source: &Source, hash: &str) -> Result<Vec<u8>, tonic::Status> {
    let tls = source.tls.as_ref().map(|t| t.current());
    let client = transport::connect_coordinator(&source.coordinator_url, tls.as_ref())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let reply = client
        .max_decoding_message_size(FETCH_BYTES_MAX)
        .fetch_package(FetchPackageRequest {
            content_hash: hash.to_string(),
        })
        .await?;
    Ok(reply.into_inner().content)
}

/// Removes the least recently used package files past `keep`.
fn prune(dir: &Path, keep: usize) -> std::io::Result<()> {
    let mut files: Vec<(SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".toml"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return Ok(());
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_verifies_prunes_and_refuses_odd_names() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackageCache::new(dir.path().join("packages"));
        let text = "name = 'c'\n";
        let hash = baton_package::content_hash(text);
        assert_eq!(cache.cached(&hash), None);
        cache.store(&hash, text).unwrap();
        assert_eq!(cache.cached(&hash).as_deref(), Some(text));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("packages")), 0o700);
            assert_eq!(mode(&cache.path(&hash)), 0o600);
        }

        // A damaged file is dropped, not used.
        std::fs::write(cache.path(&hash), "name = 'evil'\n").unwrap();
        assert_eq!(cache.cached(&hash), None);
        assert!(!cache.path(&hash).exists());

        assert_eq!(cache.cached("../../etc/passwd"), None);
        assert!(!valid_hash(&"A".repeat(64)));

        for i in 0..5 {
            let t = format!("name = 'p{i}'\n");
            cache.store(&baton_package::content_hash(&t), &t).unwrap();
        }
        prune(&dir.path().join("packages"), 3).unwrap();
        let left = std::fs::read_dir(dir.path().join("packages"))
            .unwrap()
            .count();
        assert_eq!(left, 3);
    }

    #[tokio::test]
    async fn without_a_source_a_missing_package_fails_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let cache = PackageCache::new(dir.path().to_path_buf());
        assert!(!cache.can_fetch());
        let e = cache.get(&"0".repeat(64)).await.unwrap_err();
        assert!(e.contains("no coordinator"), "{e}");
        let e = cache.get("nope").await.unwrap_err();
        assert!(e.contains("not a content hash"), "{e}");
    }
}
