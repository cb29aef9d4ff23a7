//! Retention on the agent: the scratch directories of finished jobs (their
//! logs, outputs and rows) are removed once they are older than the agent's
//! `retain_for`, so its disk does not fill up. A job that still runs is never
//! touched, however old; nor are the records of running process groups
//! (`jobs/.running.log`). Age is the newest modification time of the directory and
//! the files directly in it (a job that writes its logs stays young).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::supervisor::Supervisor;

/// The newest modification time of `dir` and its direct entries.
fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = std::fs::symlink_metadata(dir).ok()?.modified().ok()?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(t);
            }
        }
    }
    Some(newest)
}

/// Removes the job directories under `root` (`root/<execution>/<job>`) older
/// than `keep_for` at `now`, except `running`; then execution directories left
/// empty and as old. Returns how many job directories it removed.
pub fn prune(
    root: &Path,
    keep_for: Duration,
    now: SystemTime,
    running: &HashSet<PathBuf>,
) -> usize {
    let Some(horizon) = now.checked_sub(keep_for) else {
        return 0;
    };
    let Ok(executions) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for exec in executions.flatten() {
        let exec_dir = exec.path();
        let is_dir = exec.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || exec.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(jobs) = std::fs::read_dir(&exec_dir) else {
            continue;
        };
        let mut left = 0;
        for job in jobs.flatten() {
            let dir = job.path();
            let old = newest_mtime(&dir).is_some_and(|t| t < horizon);
            if !old || running.contains(&dir) {
                left += 1;
                continue;
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => removed += 1,
                Err(e) => {
                    left += 1;
                    warn!(dir = %dir.display(), error = %e, "cannot remove an old job directory");
                }
            }
        }
        // An empty execution directory goes only once it is old too: one whose
        // jobs all left nothing (their directories went back to the pool) may
        // be about to get its next job's directory.
        if left == 0 && newest_mtime(&exec_dir).is_some_and(|t| t < horizon) {
            let _ = std::fs::remove_dir(&exec_dir);
        }
    }
    removed
}

/// Prunes every `every` until `stop`.
pub async fn run(
    supervisor: Arc<Supervisor>,
    root: PathBuf,
    keep_for: Duration,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let running = supervisor.running_dirs();
        let root = root.clone();
        match tokio::task::spawn_blocking(move || {
            prune(&root, keep_for, SystemTime::now(), &running)
        })
        .await
        {
            Ok(0) => debug!("no job directory old enough to prune"),
            Ok(n) => info!(removed = n, "pruned old job directories"),
            Err(e) => warn!(error = %e, "pruning task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_old_finished_jobs_only() {
        let root = tempfile::tempdir().unwrap();
        let mk = |exec: &str, job: &str| {
            let d = root.path().join(exec).join(job);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("stdout.log"), "x").unwrap();
            d
        };
        let done = mk("e1", "fan-0-1");
        let running = mk("e1", "fan-1-1");
        let other = mk("e2", "fan-0-1");
        std::fs::create_dir_all(root.path().join(".running")).unwrap();
        let later = SystemTime::now() + Duration::from_secs(3600);
        let keep: HashSet<PathBuf> = [running.clone()].into();
        // Nothing is old yet.
        assert_eq!(
            prune(root.path(), Duration::from_secs(7200), later, &keep),
            0
        );
        // An hour from now, with a 30-minute retention: all but the running job go.
        assert_eq!(
            prune(root.path(), Duration::from_secs(1800), later, &keep),
            2
        );
        assert!(!done.exists() && !other.exists());
        assert!(running.exists(), "a running job is never pruned");
        assert!(
            !root.path().join("e2").exists(),
            "an emptied execution dir goes too"
        );
        assert!(
            root.path().join(".running").exists(),
            "records of running groups stay"
        );
    }

    #[test]
    fn an_empty_execution_directory_stays_while_it_is_young() {
        let root = tempfile::tempdir().unwrap();
        // Its jobs' directories all went back to the pool: it is empty, and its
        // next job's directory may be made in it any moment.
        let exec = root.path().join("e1");
        std::fs::create_dir(&exec).unwrap();
        let keep = HashSet::new();
        prune(
            root.path(),
            Duration::from_secs(3),
            SystemTime::now(),
            &keep,
        );
        assert!(exec.exists());
        let later = SystemTime::now() + Duration::from_secs(60);
        prune(root.path(), Duration::from_secs(3), later, &keep);
        assert!(!exec.exists(), "gone once old");
    }
}
