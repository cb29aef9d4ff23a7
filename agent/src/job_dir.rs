//! A job's scratch directory: fresh and empty for every dispatch (mode 0700, owned
//! by the run-as user when there is one), and the check that a run-as user can
//! reach it through every directory above.
//!
//! **The pool.** Making a directory allocates an inode, and on ext4 with files
//! being deleted around it (retention, finished executions) finding a free inode
//! was most of what a short process cost the agent (`perf`: `mkdir` →
//! `find_inode_bit` → `recently_deleted`; 97 µs per mkdir here, and 159 µs more to
//! remove the directory later). A job that leaves its directory empty (it printed
//! nothing, wrote no output or rows) gives it back to a pool
//! (`jobs/.free/N`, at most [`POOL_MAX`]) and the next job's directory is that one,
//! renamed into place (no inode; 22 µs per rename). Only jobs without a run-as user
//! take part: a run-as job's directory belongs to that user. The pool is emptied
//! at start-up.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::run_as::RunAsUser;

/// Most empty directories kept for reuse.
pub const POOL_MAX: usize = 256;

/// Empty scratch directories of finished jobs, for the next jobs.
#[derive(Debug)]
pub struct DirPool {
    root: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

impl DirPool {
    /// The pool under `scratch_root` (`.free`), emptied.
    pub fn new(scratch_root: &Path) -> DirPool {
        let root = scratch_root.join(".free");
        let _ = std::fs::remove_dir_all(&root);
        DirPool {
            root,
            free: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    /// Directories in the pool now.
    pub fn pooled(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self) -> Option<PathBuf> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Takes `dir` of a finished job into the pool if it is empty, the agent's
    /// own with mode 0700, and the pool has room. True when taken: `dir` is gone.
    pub(crate) fn give_back(&self, dir: &Path) -> bool {
        if self.pooled() >= POOL_MAX {
            return false;
        }
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return false;
        };
        let ours = meta.is_dir()
            && meta.uid() == nix::unistd::geteuid().as_raw()
            && meta.mode() & 0o7777 == 0o700;
        let empty = || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        if !ours || !empty() {
            return false;
        }
        if std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.root)
            .is_err()
            && !self.root.is_dir()
        {
            return false;
        }
        let to = self
            .root
            .join(self.next.fetch_add(1, Ordering::Relaxed).to_string());
        if std::fs::rename(dir, &to).is_err() {
            return false;
        }
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(to);
        true
    }
}

/// Makes a fresh scratch directory (mode 0700; owned by the run-as user if any) and
/// checks that a run-as user can reach it. `Err` is the job's failure reason.
pub(crate) async fn prepare_dir(
    dir: &Path,
    run_as: Option<&RunAsUser>,
    pool: &std::sync::Arc<DirPool>,
) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let run_as = run_as.cloned();
    let pool = pool.clone();
    tokio::task::spawn_blocking(move || prepare_dir_blocking(&dir, run_as.as_ref(), &pool))
        .await
        .map_err(|e| format!("cannot prepare scratch directory: {e}"))?
}

fn prepare_dir_blocking(
    dir: &Path,
    run_as: Option<&RunAsUser>,
    pool: &DirPool,
) -> Result<(), String> {
    let failed =
        |e: std::io::Error| format!("cannot prepare scratch directory {}: {e}", dir.display());
    let parent = dir.parent().unwrap_or(Path::new("/"));
    // The execution's directory: others may pass through it to their own job
    // directory but not list it.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(parent)
        .map_err(failed)?;
    if run_as.is_none()
        && let Some(free) = pool.take()
    {
        // Fails when `dir` is there and not empty (left by an earlier boot):
        // then it is made the slow way below.
        if std::fs::rename(&free, dir).is_ok() {
            // Still empty (nothing that outlived its last job wrote into it),
            // and young: retention judges a directory by its modification
            // time, which a rename does not change.
            let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
            let touched = std::fs::File::open(dir).and_then(|f| {
                f.set_times(std::fs::FileTimes::new().set_modified(std::time::SystemTime::now()))
            });
            if empty && touched.is_ok() {
                return Ok(());
            }
        } else {
            let _ = std::fs::remove_dir(&free);
        }
    }
    let fresh = || std::fs::DirBuilder::new().mode(0o700).create(dir);
    match fresh() {
        Ok(()) => {}
        // A dispatch id runs at most once per boot; leftovers of an earlier boot
        // are stale. (`remove_dir_all` does not follow symbolic links a job left
        // there.) Tried only when the directory is there: on a path that does not
        // exist it costs more than the mkdir.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_dir_all(dir).map_err(failed)?;
            fresh().map_err(failed)?;
        }
        Err(e) => return Err(failed(e)),
    }
    let Some(user) = run_as else {
        return Ok(());
    };
    // Under a restrictive umask the execution's directory and `jobs/` lack o+x: add
    // it (they are the agent's own), then check the whole path for the user.
    for own in [parent].into_iter().chain(parent.parent()) {
        if let Ok(meta) = std::fs::metadata(own)
            && meta.mode() & 0o001 == 0
        {
            let mode = (meta.mode() & 0o7777) | 0o001;
            std::fs::set_permissions(own, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
        }
    }
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(failed)?;
    reachable_by(parent, user)
}

/// Whether `user` (uid, primary gid; no supplementary groups) may search every
/// directory from `/` down to `dir`. `Err` names the first one it may not.
pub fn reachable_by(dir: &Path, user: &RunAsUser) -> Result<(), String> {
    for ancestor in dir.ancestors() {
        let meta = std::fs::metadata(ancestor)
            .map_err(|e| format!("cannot check {}: {e}", ancestor.display()))?;
        let mode = meta.mode();
        let search = if meta.uid() == user.uid {
            mode & 0o100
        } else if meta.gid() == user.gid {
            mode & 0o010
        } else {
            mode & 0o001
        };
        if search == 0 {
            return Err(format!(
                "run_as user {:?} cannot reach the job directory: {} (mode {:o}, owner uid {}) \
                 does not let it pass (the agent's data directory and every directory above \
                 it need search permission, e.g. `chmod o+x`)",
                user.name,
                ancestor.display(),
                mode & 0o7777,
                meta.uid()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_directories_are_reused_and_others_are_not() {
        let root = tempfile::tempdir().unwrap();
        let pool = DirPool::new(root.path());
        let job = |n: u32| root.path().join("e").join(format!("t-{n}-1"));
        prepare_dir_blocking(&job(1), None, &pool).unwrap();
        assert!(pool.give_back(&job(1)));
        assert!(!job(1).exists());
        assert_eq!(pool.pooled(), 1);

        // The next job's directory is the pooled one: fresh, empty, 0700, and
        // young (retention goes by modification time; a rename keeps it).
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
        let pooled = root.path().join(".free").join("0");
        std::fs::File::open(&pooled)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        prepare_dir_blocking(&job(2), None, &pool).unwrap();
        let age = std::fs::metadata(job(2))
            .unwrap()
            .modified()
            .unwrap()
            .elapsed();
        assert!(age.unwrap_or_default() < std::time::Duration::from_secs(60));
        assert_eq!(pool.pooled(), 0);
        let meta = std::fs::metadata(job(2)).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o700);
        assert_eq!(std::fs::read_dir(job(2)).unwrap().count(), 0);

        // Not empty, or not 0700 (the job changed it): kept where it is.
        std::fs::write(job(2).join("stdout.log"), "x").unwrap();
        assert!(!pool.give_back(&job(2)));
        prepare_dir_blocking(&job(3), None, &pool).unwrap();
        std::fs::set_permissions(job(3), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(!pool.give_back(&job(3)));
        assert!(job(2).exists() && job(3).exists());
        assert_eq!(pool.pooled(), 0);

        // A stale directory of an earlier boot in the way: made fresh anyway.
        prepare_dir_blocking(&job(4), None, &pool).unwrap();
        assert!(pool.give_back(&job(4)));
        std::fs::create_dir_all(job(5)).unwrap();
        std::fs::write(job(5).join("old"), "x").unwrap();
        prepare_dir_blocking(&job(5), None, &pool).unwrap();
        assert_eq!(std::fs::read_dir(job(5)).unwrap().count(), 0);

        // The pool is bounded, and emptied when the agent starts again.
        let many = 10..(10 + POOL_MAX as u32 + 5);
        for n in many.clone() {
            prepare_dir_blocking(&job(n), None, &pool).unwrap();
        }
        for n in many {
            pool.give_back(&job(n));
        }
        assert_eq!(pool.pooled(), POOL_MAX);
        let again = DirPool::new(root.path());
        assert_eq!(again.pooled(), 0);
        assert!(!root.path().join(".free").exists());
    }
}
