//! A job's scratch directory: made fresh for every dispatch (mode 0700, owned by
//! the run-as user when there is one), and the check that a run-as user can reach
//! it through every directory above.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::run_as::RunAsUser;

/// Makes a fresh scratch directory (mode 0700; owned by the run-as user if any) and
/// checks that a run-as user can reach it. `Err` is the job's failure reason.
pub(crate) async fn prepare_dir(dir: &Path, run_as: Option<&RunAsUser>) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let run_as = run_as.cloned();
    tokio::task::spawn_blocking(move || prepare_dir_blocking(&dir, run_as.as_ref()))
        .await
        .map_err(|e| format!("cannot prepare scratch directory: {e}"))?
}

fn prepare_dir_blocking(dir: &Path, run_as: Option<&RunAsUser>) -> Result<(), String> {
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
